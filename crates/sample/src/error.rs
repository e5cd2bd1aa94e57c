//! The crate's error type. Variants carry what failed (which table, which query,
//! which step); the tokio-postgres error is the `source`, so `{:#}` in anyhow or
//! walking `source()` shows the server's message.

/// What went wrong while loading the sample or running its workload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("scale {scale} is out of range: expected a number above 0 and at most {max}")]
    InvalidScale { scale: f64, max: f64 },

    #[error("invalid workload options: {reason}")]
    InvalidOptions { reason: String },

    #[error(
        "the sample tables already exist in this database ({}); drop them first \
         (pgopt_sample::drop_schema) or load into an empty database",
        tables.join(", ")
    )]
    AlreadyExists { tables: Vec<String> },

    /// A schema statement (CREATE, ALTER, ANALYZE, setval, BEGIN/COMMIT) failed.
    #[error("{step} failed")]
    Schema {
        step: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("COPY into table {table} failed after {rows_sent} rows")]
    Copy {
        table: &'static str,
        rows_sent: u64,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("COPY into table {table} stored {stored} rows, expected {expected}")]
    RowCount {
        table: &'static str,
        stored: u64,
        expected: u64,
    },

    #[error("the data generator for table {table} stopped: {reason}")]
    Generator { table: &'static str, reason: String },

    #[error("preparing workload query {query} failed")]
    Prepare {
        query: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("workload query {query} failed")]
    Query {
        query: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("no workload query is named {name:?}")]
    UnknownQuery { name: String },

    #[error("none of the {clients} workload connections could connect")]
    Connect {
        clients: usize,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("a workload client task ended abnormally: {reason}")]
    Client { reason: String },
}

/// A tokio-postgres error in one line for reports: the server's message, SQLSTATE
/// and detail when the server sent one (its `Display` alone says only "db error"),
/// else the error and its causes.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(error);
            while let Some(e) = cause {
                text.push_str(": ");
                text.push_str(&e.to_string());
                cause = e.source();
            }
            text
        }
    }
}
