//! `pgopt advise`: what a DBA checks by hand, as findings with evidence and the SQL that
//! fixes them (health checks, `checks.rs`). The index advisor verified by hypothetical
//! indexes comes next (issue 5).

mod checks;

pub use checks::{health_checks, Finding, Severity, Thresholds, CHECKS};

/// Why the advisor could not finish.
#[derive(Debug, thiserror::Error)]
pub enum AdvisorError {
    #[error("check {check}: {source}")]
    Query {
        check: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}
