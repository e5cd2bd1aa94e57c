//! Query insight: per-fingerprint statistics, latency histograms, the
//! slow-query log and N+1 detection.
//!
//! Plain data structures with a snapshot API. This crate knows nothing of
//! sockets, the proxy or SQL parsing: callers pass a fingerprint (`u64`) and
//! the normalized statement text they already computed.
//!
//! - [`Insight`] records one [`Sample`] per executed statement, keyed by
//!   [`StatKey`] = (fingerprint, database, user). Names are interned once per
//!   client session ([`Insight::session`] → [`SessionHandle`]) so recording
//!   an already-known key does not allocate. Entries live in mutex-guarded
//!   shards, by default one per recording thread (no cache line shared
//!   between cores), merged by [`Insight::snapshot`]; at `max_fingerprints`
//!   entries a batch with the lowest total time is evicted.
//! - [`SlowLog`] writes one JSON line per statement over a threshold and keeps
//!   the last few in memory.
//! - [`NPlusOneDetector`] reports the same fingerprint executed many times in
//!   one transaction or in a short burst from one session.

mod entry;
mod error;
mod n_plus_one;
mod names;
mod params;
mod slow_log;
mod store;
mod time;

pub use entry::{ErrorCount, FingerprintStats, MetricsRow, QueryStats, RouteCount};
pub use error::InsightError;
pub use n_plus_one::{
    ClientInfo, NPlusOneConfig, NPlusOneDetector, NPlusOneFinding, NPlusOneKind, NPlusOneSession,
};
pub use params::{ParamFormat, ParamMode, ParamRef};
pub use slow_log::{SlowEntry, SlowLog, SlowLogConfig, SlowStatement};
pub use store::{
    Insight, InsightConfig, InsightStatus, OrderBy, Route, Sample, SessionHandle, Sharding, StatKey,
};
pub use time::{format_rfc3339_millis, unix_millis};

/// A fingerprint as the 16-digit lower-case hex string used in logs, APIs and
/// metric labels.
pub fn fingerprint_hex(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}
