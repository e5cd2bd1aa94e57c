//! The "saas" sample: the schema, a deterministic data generator and the workload
//! of a multi-tenant project-management app, used by `pgopt demo`, the tests and the
//! benchmarks.
//!
//! - [`load`] creates the tables (organizations, users, teams, team_members,
//!   projects, tasks, comments, messages, files and a monthly-partitioned audit_log)
//!   and streams generated rows into them with COPY; scale 1.0 is about a million
//!   rows. Only primary keys are indexed: the advisor is meant to find the rest.
//! - [`Dataset`] is the generator itself: the same seed and scale give
//!   byte-identical rows, on any machine, forever (the data's clock is fixed to the
//!   12 months before 2026-11-01, see [`DATA_END_UNIX`]).
//! - [`run`] drives [`queries`] (dashboards, filters, full-text search, reports,
//!   writes and one N+1 pattern) from concurrent connections and reports latency
//!   percentiles per query and group.
//!
//! ```no_run
//! # async fn f(client: tokio_postgres::Client, config: tokio_postgres::Config)
//! # -> Result<(), pgopt_sample::Error> {
//! use pgopt_sample::{LoadOptions, WorkloadOptions};
//! let opts = LoadOptions { scale: 0.05, seed: 42 };
//! let loaded = pgopt_sample::load(&client, &opts, &mut |_| {}).await?;
//! let report = pgopt_sample::run(config, &WorkloadOptions { scale: 0.05, ..Default::default() }).await?;
//! println!("{} rows, {:.0} queries/s", loaded.total_rows, report.qps);
//! # Ok(()) }
//! ```

mod calendar;
mod copy_text;
mod error;
mod generate;
mod layout;
mod load;
mod param;
mod report;
mod rng;
mod runner;
mod schema;
mod session;
mod vocabulary;
mod workload;

pub use calendar::{DATA_END_UNIX, DATA_START_UNIX};
pub use error::Error;
pub use generate::{Chunk, Chunks, Dataset};
pub use load::{
    drop_schema, existing_tables, load, plan, LoadOptions, LoadPhase, LoadProgress, LoadReport,
    MAX_SCALE,
};
pub use report::{GroupReport, QueryReport, WorkloadReport};
pub use runner::{run, WorkloadOptions};
pub use schema::{
    audit_partitions_sql, foreign_keys_sql, primary_keys_sql, schema_sql, Table, FOREIGN_KEYS,
    TABLES_SQL,
};
pub use session::Session;
pub use workload::{queries, query, search_words, QueryKind, QuerySpec};
