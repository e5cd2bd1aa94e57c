//! Loads the sample into an embedded PostgreSQL and runs the workload, printing
//! the load time and per-query latencies:
//!
//! ```text
//! cargo run --release -p pgopt-sample --example saas -- [scale] [seconds] [clients]
//! ```

use std::time::Duration;

use pgopt_embedded::Postgres;
use pgopt_sample::{LoadOptions, WorkloadOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let scale: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(0.1);
    let secs: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let clients: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);

    let pg = Postgres::start().await?;
    let client = pg.create_database("saas").await?;
    let opts = LoadOptions { scale, seed: 42 };
    let report = pgopt_sample::load(&client, &opts, &mut |_| {}).await?;
    println!(
        "loaded {} rows ({:.1} MB of COPY text) in {:.1} s: copy {:.1} s, keys {:.1} s, analyze {:.1} s",
        report.total_rows,
        report.copy_bytes as f64 / 1e6,
        report.elapsed.as_secs_f64(),
        report.copy_elapsed.as_secs_f64(),
        report.keys_elapsed.as_secs_f64(),
        report.analyze_elapsed.as_secs_f64()
    );
    for (table, rows) in &report.rows_per_table {
        println!("  {table:<14} {rows:>9}");
    }

    let opts = WorkloadOptions {
        clients,
        duration: Duration::from_secs(secs),
        seed: 42,
        scale,
        max_queries: None,
    };
    let report = pgopt_sample::run(pg.config("saas"), &opts).await?;
    println!(
        "\nworkload: {} clients, {:.1} s, {} calls ({:.0}/s), {} errors",
        report.clients,
        report.elapsed.as_secs_f64(),
        report.total_calls,
        report.qps,
        report.total_errors
    );
    println!(
        "  {:<26} {:<10} {:>7} {:>6} {:>9} {:>9} {:>9}",
        "query", "group", "calls", "errors", "p50 ms", "p95 ms", "max ms"
    );
    for q in &report.queries {
        println!(
            "  {:<26} {:<10} {:>7} {:>6} {:>9.2} {:>9.2} {:>9.2}",
            q.name,
            q.group,
            q.calls,
            q.errors,
            q.p50_us as f64 / 1e3,
            q.p95_us as f64 / 1e3,
            q.max_us as f64 / 1e3
        );
    }
    if let Some((name, message)) = report.first_error() {
        println!("first error ({name}): {message}");
    }
    Ok(())
}
