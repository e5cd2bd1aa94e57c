//! `pgopt advise`: what a DBA checks by hand, as findings with evidence and the SQL that
//! fixes them (health checks, `checks.rs`); and an index advisor that reads the workload's
//! parse trees for candidates and verifies them with hypothetical indexes (`index/`).

mod checks;
mod index;

pub use checks::{health_checks, human_size, Finding, Severity, Thresholds, CHECKS};
pub use index::{
    quote_ident, recommend_indexes, workload_from_pg_stat_statements, workload_from_sql,
    IndexOptions, IndexReport, Progress, Recommendation, StatementReport, UnusedIndex,
    WorkloadStatement,
};

/// Why the advisor could not finish.
#[derive(Debug, thiserror::Error)]
pub enum AdvisorError {
    #[error("check {check}: {source}")]
    Query {
        check: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "HypoPG is not installed on the database server: install the package \
         postgresql-{major}-hypopg there (apt-get install postgresql-{major}-hypopg), \
         then run pgopt advise again"
    )]
    HypoPgMissing { major: i32 },
    #[error(
        "CREATE EXTENSION hypopg failed: {message}. A superuser can run it once in this \
         database, or run pgopt advise as a superuser (it then rolls the extension back \
         when it is done)"
    )]
    HypoPgCreate { message: String },
    #[error("no workload: {reason}")]
    NoWorkload { reason: String },
}
