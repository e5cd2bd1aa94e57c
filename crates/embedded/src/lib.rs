//! Start and stop throwaway servers: PostgreSQL (with a streaming replica) and Redis.
//!
//! Every server gets its own temporary directory and a free loopback port, so many
//! tests can run in parallel. A server is stopped by its PID when its handle is
//! dropped — also when the owning test panics — and its directory is removed.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let pg = pgopt_embedded::Postgres::start().await?;
//! let client = pg.connect("postgres").await?;
//! client.simple_query("SELECT 1").await?;
//! # Ok(()) }
//! ```

mod binaries;
mod error;
mod postgres;
mod process;
mod redis;

pub use binaries::PgBinaries;
pub use error::Error;
pub use postgres::{HostAuth, Postgres, PostgresBuilder};
pub use process::free_port;
pub use redis::Redis;
