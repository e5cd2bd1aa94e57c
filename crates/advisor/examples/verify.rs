//! Verifies the index advisor by real execution on the "saas" sample, side by side with
//! pg_qualstats' index advisor on an identical copy of the database:
//!
//! ```text
//! cargo run --release -p pgopt-advisor --example verify -- [scale] [seconds] [clients]
//! ```
//!
//! 1. Loads the sample (primary keys and foreign keys only) into `saas`, copies it to
//!    `saas_q`.
//! 2. Runs the workload on `saas` (pg_stat_statements records it), asks pgopt's advisor
//!    for the top 20 statements, builds what it recommends, runs the workload again.
//! 3. Runs the workload on `saas_q` (pg_qualstats records its predicates), builds what
//!    `pg_qualstats_index_advisor()` recommends, runs the workload again.
//! 4. Prints per-query mean latency before and after for both, the indexes and sizes.

use std::time::{Duration, Instant};

use pgopt_advisor::{recommend_indexes, workload_from_pg_stat_statements, IndexOptions};
use pgopt_embedded::Postgres;
use pgopt_sample::{LoadOptions, WorkloadOptions, WorkloadReport};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

async fn workload(pg: &Postgres, db: &str, opts: &WorkloadOptions) -> Result<WorkloadReport> {
    let report = pgopt_sample::run(pg.config(db), opts).await?;
    if let Some((name, message)) = report.first_error() {
        return Err(format!("{db}: query {name} failed: {message}").into());
    }
    Ok(report)
}

async fn build(client: &tokio_postgres::Client, indexes: &[String]) -> Result<i64> {
    for sql in indexes {
        client.batch_execute(sql).await?;
    }
    client.batch_execute("ANALYZE").await?;
    Ok(client
        .query_one(
            "SELECT coalesce(sum(pg_relation_size(indexrelid)), 0)::int8 FROM pg_index i
               JOIN pg_class c ON c.oid = i.indexrelid
              WHERE c.relnamespace = 'public'::regnamespace
                AND NOT i.indisprimary AND NOT i.indisunique",
            &[],
        )
        .await?
        .get(0))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let scale: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(0.2);
    let secs: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let clients: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);

    let pg = Postgres::builder()
        .setting(
            "shared_preload_libraries",
            "pg_stat_statements,pg_qualstats",
        )
        .setting("pg_qualstats.sample_rate", "1")
        .start()
        .await?;
    let client = pg.create_database("saas").await?;
    let load = pgopt_sample::load(&client, &LoadOptions { scale, seed: 42 }, &mut |_| {}).await?;
    println!(
        "saas sample at scale {scale}: {} rows loaded in {:.1} s",
        load.total_rows,
        load.elapsed.as_secs_f64()
    );
    drop(client);
    let admin = pg.connect("postgres").await?;
    admin
        .batch_execute("CREATE DATABASE saas_q TEMPLATE saas")
        .await?;
    let ours = pg.connect("saas").await?;
    ours.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await?;
    let theirs = pg.connect("saas_q").await?;
    theirs
        .batch_execute("CREATE EXTENSION pg_qualstats")
        .await?;

    let opts = WorkloadOptions {
        clients,
        duration: Duration::from_secs(secs),
        seed: 42,
        scale,
        max_queries: None,
    };

    // pgopt.
    ours.batch_execute("SELECT pg_stat_statements_reset()")
        .await?;
    let before = workload(&pg, "saas", &opts).await?;
    let started = Instant::now();
    let statements = workload_from_pg_stat_statements(&ours, 20).await?;
    let advice = recommend_indexes(
        &ours,
        &statements,
        &IndexOptions::default(),
        &mut |_, _, _| {},
    )
    .await?;
    let advise_secs = started.elapsed().as_secs_f64();
    let pgopt_indexes: Vec<String> = advice
        .recommendations
        .iter()
        .map(|r| r.definition.replace(" CONCURRENTLY", ""))
        .collect();
    let pgopt_bytes = build(&ours, &pgopt_indexes).await?;
    let after = workload(&pg, "saas", &opts).await?;

    // pg_qualstats.
    theirs.batch_execute("SELECT pg_qualstats_reset()").await?;
    let q_before = workload(&pg, "saas_q", &opts).await?;
    let advice_json: serde_json::Value = theirs
        .query_one(
            "SELECT pg_qualstats_index_advisor(min_filter => 50)::text",
            &[],
        )
        .await
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)))??;
    let q_indexes: Vec<String> = advice_json["indexes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let q_bytes = build(&theirs, &q_indexes).await?;
    let q_after = workload(&pg, "saas_q", &opts).await?;

    println!(
        "\nworkload: {clients} clients × {secs} s per run; pgopt's advisor took {advise_secs:.1} s \
         for {} statements",
        statements.len()
    );
    println!(
        "\npgopt advise ({} indexes, {:.1} MB):",
        pgopt_indexes.len(),
        pgopt_bytes as f64 / 1048576.0
    );
    for i in &pgopt_indexes {
        println!("  {i}");
    }
    println!(
        "\npg_qualstats_index_advisor ({} indexes, {:.1} MB):",
        q_indexes.len(),
        q_bytes as f64 / 1048576.0
    );
    for i in &q_indexes {
        println!("  {i}");
    }
    println!(
        "\n{:<26} {:>7} {:>11} {:>11} {:>11} {:>11}",
        "query", "", "pgopt before", "pgopt after", "pgqs before", "pgqs after"
    );
    println!(
        "{:<26} {:>7} {:>11} {:>11} {:>11} {:>11}",
        "", "", "mean ms", "mean ms", "mean ms", "mean ms"
    );
    for q in &before.queries {
        let mean = |r: &WorkloadReport| {
            r.query(&q.name)
                .filter(|x| x.calls > 0)
                .map(|x| format!("{:.2}", x.mean_us / 1e3))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<26} {:>7} {:>11} {:>11} {:>11} {:>11}",
            q.name,
            q.group,
            mean(&before),
            mean(&after),
            mean(&q_before),
            mean(&q_after)
        );
    }
    let total_ms = |r: &WorkloadReport| {
        r.queries
            .iter()
            .map(|q| q.mean_us * q.calls as f64)
            .sum::<f64>()
            / 1e3
    };
    println!(
        "\nthroughput (queries/s): pgopt {:.0} → {:.0} ({:.2}×); pg_qualstats {:.0} → {:.0} ({:.2}×)",
        before.qps,
        after.qps,
        after.qps / before.qps,
        q_before.qps,
        q_after.qps,
        q_after.qps / q_before.qps
    );
    println!(
        "mean latency over all calls (ms): pgopt {:.2} → {:.2}; pg_qualstats {:.2} → {:.2}",
        total_ms(&before) / before.total_calls.max(1) as f64,
        total_ms(&after) / after.total_calls.max(1) as f64,
        total_ms(&q_before) / q_before.total_calls.max(1) as f64,
        total_ms(&q_after) / q_after.total_calls.max(1) as f64,
    );
    Ok(())
}
