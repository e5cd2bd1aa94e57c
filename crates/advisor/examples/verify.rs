//! Verifies the index advisor by real execution, side by side with pg_qualstats' index
//! advisor on an identical copy of the database, on the "saas" sample or on TPC-H:
//!
//! ```text
//! cargo run --release -p pgopt-advisor --example verify -- [scale] [seconds] [clients]
//! cargo run --release -p pgopt-advisor --example verify -- tpch [scale factor] [timeout s]
//! ```
//!
//! The TPC-H data comes from `tpchgen-cli` (`cargo install tpchgen-cli`); the schema has
//! primary keys only; each of the 22 queries runs once per pass with a statement timeout,
//! and pgopt's workload is the query file itself.
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

/// pgopt's advice for `workload`: the report, the definitions to build (plain CREATE
/// INDEX: nothing else runs meanwhile) and the seconds it took.
async fn pgopt_advice(
    client: &tokio_postgres::Client,
    workload: &[pgopt_advisor::WorkloadStatement],
) -> Result<(pgopt_advisor::IndexReport, Vec<String>, f64)> {
    let started = Instant::now();
    let advice = recommend_indexes(
        client,
        workload,
        &IndexOptions::default(),
        &mut |_, _, _| {},
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let indexes = advice
        .recommendations
        .iter()
        .map(|r| r.definition.replace(" CONCURRENTLY", ""))
        .collect();
    Ok((advice, indexes, secs))
}

/// `pg_qualstats_index_advisor(args)`'s indexes, each once (it lists one per predicate
/// occurrence).
async fn qualstats_advice(client: &tokio_postgres::Client, args: &str) -> Result<Vec<String>> {
    let row = client
        .query_one(
            &format!("SELECT pg_qualstats_index_advisor({args})::text"),
            &[],
        )
        .await?;
    let json: serde_json::Value = serde_json::from_str(row.get::<_, &str>(0))?;
    let mut indexes: Vec<String> = json["indexes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    indexes.sort();
    indexes.dedup();
    Ok(indexes)
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("tpch") {
        return tpch().await;
    }
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
    let statements = workload_from_pg_stat_statements(&ours, 20).await?;
    let (_, pgopt_indexes, advise_secs) = pgopt_advice(&ours, &statements).await?;
    let pgopt_bytes = build(&ours, &pgopt_indexes).await?;
    let after = workload(&pg, "saas", &opts).await?;

    // pg_qualstats.
    theirs.batch_execute("SELECT pg_qualstats_reset()").await?;
    let q_before = workload(&pg, "saas_q", &opts).await?;
    let q_indexes = qualstats_advice(&theirs, "min_filter => 50").await?;
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

const TPCH_SCHEMA: &str = include_str!("tpch/schema.sql");
const TPCH_QUERIES: &str = include_str!("tpch/queries.sql");
const TPCH_TABLES: &[&str] = &[
    "region", "nation", "part", "supplier", "partsupp", "customer", "orders", "lineitem",
];

/// Each query once, in order; its time in seconds, or None when it hit the timeout.
async fn tpch_pass(db: &tokio_postgres::Client, queries: &[String]) -> Result<Vec<Option<f64>>> {
    let mut out = Vec::new();
    for q in queries {
        let started = Instant::now();
        match db.simple_query(q).await {
            Ok(_) => out.push(Some(started.elapsed().as_secs_f64())),
            Err(e) if e.code().is_some_and(|c| c.code() == "57014") => out.push(None),
            Err(e) => return Err(format!("{q}: {e:?}").into()),
        }
    }
    Ok(out)
}

async fn tpch() -> Result<()> {
    let mut args = std::env::args().skip(2);
    let sf: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1.0);
    let timeout: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(60);

    let dir = std::env::temp_dir().join(format!("pgopt-tpch-{sf}"));
    if !dir.join("lineitem.tbl").exists() && !dir.join("lineitem.csv").exists() {
        std::fs::create_dir_all(&dir)?;
        let started = Instant::now();
        let status = std::process::Command::new("tpchgen-cli")
            .args(["-s", &sf.to_string(), "--output-dir"])
            .arg(&dir)
            .status()
            .map_err(|e| format!("running tpchgen-cli (cargo install tpchgen-cli): {e}"))?;
        if !status.success() {
            return Err("tpchgen-cli failed".into());
        }
        println!(
            "generated TPC-H SF {sf} in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }

    let pg = Postgres::builder()
        .setting("shared_preload_libraries", "pg_qualstats")
        .setting("pg_qualstats.sample_rate", "1")
        .setting("shared_buffers", "1GB")
        .setting("work_mem", "64MB")
        .setting("max_parallel_workers_per_gather", "2")
        .start()
        .await?;
    let db = pg.create_database("tpch").await?;
    db.batch_execute(TPCH_SCHEMA).await?;
    let started = Instant::now();
    for t in TPCH_TABLES {
        let file = dir.join(format!("{t}.tbl"));
        // tpchgen-cli's .tbl rows end with a '|': read each as text with a trailing
        // empty column dropped by a staging table would cost a copy; instead strip it.
        let data = std::fs::read_to_string(&file)?;
        let sink = db
            .copy_in(&format!(
                "COPY {t} FROM STDIN WITH (FORMAT csv, DELIMITER '|')"
            ))
            .await?;
        use futures_util::SinkExt;
        let mut sink = Box::pin(sink);
        let mut buf = String::with_capacity(1 << 20);
        for line in data.lines() {
            buf.push_str(line.strip_suffix('|').unwrap_or(line));
            buf.push('\n');
            if buf.len() > (1 << 20) {
                sink.send(bytes::Bytes::from(std::mem::take(&mut buf)))
                    .await?;
            }
        }
        sink.send(bytes::Bytes::from(buf)).await?;
        sink.as_mut().finish().await?;
    }
    db.batch_execute("VACUUM ANALYZE").await?;
    println!(
        "loaded TPC-H SF {sf} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    drop(db);
    pg.connect("postgres")
        .await?
        .batch_execute("CREATE DATABASE tpch_q TEMPLATE tpch")
        .await?;

    let queries: Vec<String> = pgopt_advisor::workload_from_sql(TPCH_QUERIES)
        .into_iter()
        .map(|w| w.text)
        .collect();
    assert_eq!(queries.len(), 22, "22 TPC-H queries");
    let set_timeout = format!("SET statement_timeout = '{timeout}s'");

    // pgopt: the queries themselves are the workload.
    let ours = pg.connect("tpch").await?;
    ours.batch_execute(&set_timeout).await?;
    let before = tpch_pass(&ours, &queries).await?;
    ours.batch_execute("RESET statement_timeout").await?;
    let (advice, pgopt_indexes, advise_secs) =
        pgopt_advice(&ours, &pgopt_advisor::workload_from_sql(TPCH_QUERIES)).await?;
    let started = Instant::now();
    let pgopt_bytes = build(&ours, &pgopt_indexes).await?;
    let pgopt_build = started.elapsed().as_secs_f64();
    ours.batch_execute(&set_timeout).await?;
    let after = tpch_pass(&ours, &queries).await?;

    // pg_qualstats: learns from the first pass.
    let theirs = pg.connect("tpch_q").await?;
    theirs
        .batch_execute("CREATE EXTENSION pg_qualstats")
        .await?;
    theirs.batch_execute(&set_timeout).await?;
    let q_before = tpch_pass(&theirs, &queries).await?;
    theirs.batch_execute("RESET statement_timeout").await?;
    let q_indexes = qualstats_advice(&theirs, "").await?;
    let started = Instant::now();
    let q_bytes = build(&theirs, &q_indexes).await?;
    let q_build = started.elapsed().as_secs_f64();
    theirs.batch_execute(&set_timeout).await?;
    let q_after = tpch_pass(&theirs, &queries).await?;

    println!(
        "\nTPC-H SF {sf}, each query once per pass, statement_timeout {timeout} s; \
         pgopt's advisor took {advise_secs:.1} s for 22 statements"
    );
    println!(
        "\npgopt advise ({} indexes, {:.1} MB, built in {pgopt_build:.0} s):",
        pgopt_indexes.len(),
        pgopt_bytes as f64 / 1048576.0
    );
    for i in &pgopt_indexes {
        println!("  {i}");
    }
    for (i, s) in advice.statements.iter().enumerate() {
        match (&s.skipped, s.cost_before, s.cost_after) {
            (Some(why), _, _) => println!("  Q{}: skipped: {why}", i + 1),
            (None, Some(b), Some(a)) => println!("  Q{}: planner cost {b:.0} → {a:.0}", i + 1),
            _ => {}
        }
    }
    println!(
        "\npg_qualstats_index_advisor ({} indexes, {:.1} MB, built in {q_build:.0} s):",
        q_indexes.len(),
        q_bytes as f64 / 1048576.0
    );
    for i in &q_indexes {
        println!("  {i}");
    }
    let cell = |t: Option<f64>| match t {
        Some(t) => format!("{t:.2}"),
        None => format!(">{timeout}"),
    };
    println!(
        "\n{:<5} {:>13} {:>13} {:>13} {:>13}   (seconds)",
        "query", "pgopt before", "pgopt after", "pgqs before", "pgqs after"
    );
    for i in 0..queries.len() {
        println!(
            "Q{:<4} {:>13} {:>13} {:>13} {:>13}",
            i + 1,
            cell(before[i]),
            cell(after[i]),
            cell(q_before[i]),
            cell(q_after[i])
        );
    }
    let total = |v: &[Option<f64>]| v.iter().map(|t| t.unwrap_or(timeout as f64)).sum::<f64>();
    let timeouts = |v: &[Option<f64>]| v.iter().filter(|t| t.is_none()).count();
    println!(
        "total (a timeout counts as {timeout} s): pgopt {:.1} → {:.1} s ({} → {} timeouts); \
         pg_qualstats {:.1} → {:.1} s ({} → {} timeouts)",
        total(&before),
        total(&after),
        timeouts(&before),
        timeouts(&after),
        total(&q_before),
        total(&q_after),
        timeouts(&q_before),
        timeouts(&q_after)
    );
    Ok(())
}
