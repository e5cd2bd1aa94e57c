//! Statement analysis for the proxy's hot path (see DESIGN.md §2–§4).
//!
//! - [`analyze`] runs PostgreSQL's parser (pg_query) and returns an
//!   [`Analysis`]: fingerprint, normalized text, statement kinds, tables read
//!   and written, functions, and the read-only / volatile / locking /
//!   session-effect verdicts plus `pgopt:` comment hints. Tens of µs.
//! - [`Analyzer`] caches analyses by the literal-stripped text
//!   ([`strip_literals`]), so statements differing only in literal values
//!   share one entry; a hit costs a scan of the text and a hash lookup.
//!
//! Unparsable text is an [`SqlError`], never a panic; callers treat it as
//! "not read-only, route to the primary".

mod analysis;
mod analyzer;
mod error;
mod functions;
mod hints;
mod lexer;
mod procedural;
mod reduce;
mod strip;

pub use analysis::{
    analyze, analyze_with, set_config_names, Analysis, AnalysisConfig, SessionEffect,
    StatementKind, ANY_SETTING, SHORTENED,
};
pub use analyzer::{Analyzer, AnalyzerConfig, AnalyzerStats};
pub use error::SqlError;
pub use functions::{is_clock_word, reads_clock, reads_clock_bytes};
pub use hints::{parse_hints, CacheHint, Hints};
pub use procedural::{
    body_words, leaves_session_state, settings_set_by, settings_set_by_other, SettingsSet,
    SESSION_STATE,
};
pub use strip::{parameter_spans, strip_literals, Stripped};
