//! `pgopt demo`: an embedded throwaway PostgreSQL, the "saas" sample data, a workload,
//! and a summary of what was measured; then it waits for Ctrl-C so you can look around.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pgopt_embedded::Postgres;
use pgopt_sample::{
    Dataset, LoadOptions, LoadPhase, LoadProgress, WorkloadOptions, WorkloadReport,
};

use crate::config::{Bounded, DemoConfig, HumanDuration, Scale};

/// Flags override the `[demo]` section of the config.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Sample data size: 1.0 is about one million rows [default: 0.05]
    #[arg(long, value_parser = parse_scale)]
    scale: Option<f64>,
    /// How long the workload runs, e.g. 10s or 2m [default: 10s]
    #[arg(long)]
    duration: Option<HumanDuration>,
    /// Concurrent workload connections, 1 to 256 [default: 4]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    clients: Option<u32>,
    /// Seed of the data generator and the workload [default: 42]
    #[arg(long)]
    seed: Option<u64>,
    /// Port for the embedded PostgreSQL [default: a free one]
    #[arg(long)]
    port: Option<u16>,
    /// Streaming replicas to start; pgopt sends reads to them [default: 0]
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=4))]
    replicas: Option<u32>,
    /// Exit after the summary instead of waiting for Ctrl-C.
    #[arg(long)]
    no_wait: bool,
}

fn parse_scale(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .parse()
        .map_err(|_| format!("expected a number, found {text:?}"))?;
    if v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err("expected a scale above 0 and at most 100 (1.0 is about one million rows)".into())
    }
}

pub async fn run(config: &DemoConfig, args: DemoArgs) -> anyhow::Result<()> {
    let settings = DemoConfig {
        scale: args.scale.map(Scale).unwrap_or(config.scale),
        duration: args.duration.unwrap_or(config.duration),
        clients: args.clients.map(Bounded).unwrap_or(config.clients),
        seed: args.seed.unwrap_or(config.seed),
        port: args.port.unwrap_or(config.port),
        replicas: args.replicas.map(Bounded).unwrap_or(config.replicas),
    };
    let no_wait = args.no_wait;
    tokio::select! {
        result = demo(settings, no_wait) => result,
        _ = crate::shutdown_signal() => {
            err!("\nInterrupted; stopping the embedded PostgreSQL.");
            Ok(())
        }
    }
}

async fn demo(settings: DemoConfig, no_wait: bool) -> anyhow::Result<()> {
    err!("Starting an embedded PostgreSQL…");
    let mut builder = Postgres::builder();
    if settings.replicas.get() > 0 {
        // Commits flushed and streamed at once, as in production (the throwaway
        // default, off, holds WAL back up to 200 ms: replicas would seem to lag).
        builder = builder.setting("synchronous_commit", "on");
    }
    if settings.port != 0 {
        builder = builder.port(settings.port);
    }
    let pg = builder
        .start()
        .await
        .context("starting the embedded PostgreSQL")?;
    out!(
        "PostgreSQL {} on 127.0.0.1:{} (files in {}, deleted on exit)",
        pg.binaries().major,
        pg.port(),
        pg.data_dir().display()
    );

    let client = pg
        .create_database("saas")
        .await
        .context("creating database saas")?;
    let load_opts = LoadOptions {
        scale: settings.scale.0,
        seed: settings.seed,
    };
    let total: u64 = pgopt_sample::plan(load_opts.scale)
        .iter()
        .map(|(_, n)| *n)
        .sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "Loading \"saas\" {bar:30} {human_pos}/{human_len} rows {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let load = pgopt_sample::load(&client, &load_opts, &mut |p: LoadProgress| {
        bar.set_position(p.rows_done_total);
        let step = match p.phase {
            LoadPhase::Schema => "creating tables",
            LoadPhase::Copy => "copying",
            LoadPhase::PrimaryKeys => "primary key of",
            LoadPhase::ForeignKeys => "foreign keys of",
            LoadPhase::Analyze => "analyzing",
        };
        bar.set_message(format!("{step} {}", p.table));
    })
    .await
    .context("loading the saas sample")?;
    bar.finish_and_clear();
    out!(
        "Loaded {} rows into {} tables in {:.1} s (scale {}, seed {})",
        thousands(load.total_rows),
        load.rows_per_table.len(),
        load.elapsed.as_secs_f64(),
        settings.scale.0,
        settings.seed
    );

    let workload_opts = WorkloadOptions {
        clients: settings.clients.get() as usize,
        duration: settings.duration.0,
        seed: settings.seed,
        scale: settings.scale.0,
        max_queries: None,
    };
    let direct = run_workload(pg.config("saas"), &workload_opts, "direct to PostgreSQL").await?;

    let mut replicas = Vec::new();
    for _ in 0..settings.replicas.get() {
        err!("Starting a streaming replica (pg_basebackup)…");
        let replica = Postgres::start_replica(&pg)
            .await
            .context("starting a streaming replica")?;
        out!(
            "Replica on 127.0.0.1:{} (streaming from the primary)",
            replica.port()
        );
        replicas.push(replica);
    }

    // The same workload through pgopt: transaction pooling, half as many server
    // connections as clients.
    let pool_size = (workload_opts.clients / 2).max(1);
    let proxy = pgopt_proxy::Proxy::start(pgopt_proxy::Config {
        admin_listen: Some("127.0.0.1:0".parse()?),
        ..proxy_config(&pg, pool_size, &replicas)?
    })
    .await
    .context("starting the pgopt proxy")?;
    let mut through = tokio_postgres::Config::new();
    through
        .host("127.0.0.1")
        .port(proxy.local_addr().port())
        .user(pg.user())
        .dbname("saas")
        .application_name("pgopt-demo");
    let proxied = run_workload(through.clone(), &workload_opts, "through pgopt").await?;
    let n_plus_one_top_up = match top_up_n_plus_one(&proxy, &through, &workload_opts).await {
        Ok(runs) => runs,
        Err(e) => {
            err!("(running the workload's N+1 pattern once more failed: {e:#})");
            0
        }
    };

    // Once more through a pgopt with the result cache on every sample table (no
    // replicas: the cache serves transaction-mode sessions that don't route).
    let cached_proxy = pgopt_proxy::Proxy::start(pgopt_proxy::Config {
        cache: pgopt_proxy::CacheSettings {
            enabled: true,
            tables: load
                .rows_per_table
                .iter()
                .map(|(t, _)| t.to_string())
                .collect(),
            ..pgopt_proxy::CacheSettings::default()
        },
        ..proxy_config(&pg, pool_size, &[])?
    })
    .await
    .context("starting the pgopt proxy with the result cache")?;
    let mut through_cache = tokio_postgres::Config::new();
    through_cache
        .host("127.0.0.1")
        .port(cached_proxy.local_addr().port())
        .user(pg.user())
        .dbname("saas")
        .application_name("pgopt-demo");
    let cached = run_workload(
        through_cache,
        &workload_opts,
        "through pgopt with the result cache",
    )
    .await?;

    print_report("Workload", &direct, &workload_opts);
    out!(
        "Through pgopt proxy: {} clients on {pool_size} server connections (transaction pooling)",
        workload_opts.clients
    );
    print_report("Through pgopt", &proxied, &workload_opts);
    print_comparison("pgopt", &direct, &proxied);
    print_report(
        "Through pgopt with the result cache",
        &cached,
        &workload_opts,
    );
    print_comparison("pgopt with the result cache", &direct, &cached);
    if let Err(e) = print_cache_figures(&cached_proxy, pg.user()).await {
        out!("(cache figures unavailable: {e:#})");
    }
    if let Err(e) = print_pool_figures(&proxy, pg.user()).await {
        out!("(pool figures unavailable: {e:#})");
    }
    if !replicas.is_empty() {
        if let Err(e) = print_replica_split(&proxy, pg.user()).await {
            out!("(replica figures unavailable: {e:#})");
        }
    }
    if n_plus_one_top_up > 0 {
        out!(
            "\n(The run through pgopt ended before the workload's N+1 pattern came up; it was run \
             {n_plus_one_top_up} more time(s) through pgopt after the measurement.)"
        );
    }
    if let Err(e) = print_query_insight(&proxy, pg.user()).await {
        out!("(query insight unavailable: {e:#})");
    }

    out!("\nConnect:  {}", pg.psql_command("saas"));
    out!(
        "Through pgopt:  psql -h 127.0.0.1 -p {} -U postgres saas",
        proxy.local_addr().port()
    );
    out!(
        "Admin:    psql -h 127.0.0.1 -p {} -U {} pgopt   (SHOW QUERIES, SHOW NPLUS1, SHOW POOLS, SHOW HELP)",
        proxy.local_addr().port(),
        pg.user()
    );
    if let Some(addr) = proxy.admin_addr() {
        out!("Metrics:  http://{addr}/metrics");
        out!("Insight:  http://{addr}/api/queries   (also /api/slow, /api/nplus1)");
    }
    out!("URL:      {}", pg.url("saas"));
    if no_wait {
        return Ok(());
    }
    out!("Press Ctrl-C to stop; the database is deleted on exit.");
    std::future::pending::<()>().await;
    Ok(())
}

/// A proxy for the demo's database `saas`: transaction pooling, `pool_size` server
/// connections, the given replicas, the admin console for the demo's user.
fn proxy_config(
    pg: &Postgres,
    pool_size: usize,
    replicas: &[Postgres],
) -> anyhow::Result<pgopt_proxy::Config> {
    Ok(pgopt_proxy::Config {
        listen: "127.0.0.1:0".parse()?,
        pool_mode: pgopt_proxy::PoolMode::Transaction,
        default_pool_size: pool_size,
        databases: vec![pgopt_proxy::Database {
            name: "saas".into(),
            host: "127.0.0.1".into(),
            port: pg.port(),
            dbname: "saas".into(),
            user: None,
            password: None,
            more_hosts: Default::default(),
            replicas: replicas
                .iter()
                .map(|r| pgopt_proxy::Replica {
                    host: "127.0.0.1".into(),
                    port: r.port(),
                    weight: 1,
                })
                .collect(),
            pool: Default::default(),
        }],
        admin_users: vec![pg.user().to_string()],
        ..pgopt_proxy::Config::default()
    })
}

/// A client of the proxy's admin console.
async fn admin_console(
    proxy: &pgopt_proxy::Proxy,
    user: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let (admin, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.local_addr().port())
        .user(user)
        .dbname(pgopt_proxy::ADMIN_DATABASE)
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the admin console")?;
    tokio::spawn(conn);
    Ok(admin)
}

/// The rows of an admin console SHOW.
async fn show(
    admin: &tokio_postgres::Client,
    what: &str,
) -> anyhow::Result<Vec<tokio_postgres::SimpleQueryRow>> {
    Ok(admin
        .simple_query(&format!("SHOW {what}"))
        .await?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect())
}

/// A column of an admin console row, as text ("" when NULL or missing).
fn cell(row: &tokio_postgres::SimpleQueryRow, column: &str) -> String {
    row.try_get(column)
        .ok()
        .flatten()
        .unwrap_or_default()
        .to_string()
}

/// The query shapes the proxy saw, busiest first, and the N+1 loops it found.
async fn print_query_insight(proxy: &pgopt_proxy::Proxy, user: &str) -> anyhow::Result<()> {
    let admin = admin_console(proxy, user).await?;
    let queries = show(&admin, "QUERIES").await?;
    out!("\nBusiest query shapes through pgopt (SHOW QUERIES, by total time):");
    out!(
        "  {:>7} {:>8} {:>8} {:>8} {:>9}  query",
        "calls",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "total ms"
    );
    for r in queries.iter().take(8) {
        let mut query = cell(r, "query")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if query.chars().count() > 70 {
            query = query.chars().take(69).collect::<String>() + "…";
        }
        out!(
            "  {:>7} {:>8} {:>8} {:>8} {:>9.0}  {query}",
            cell(r, "calls"),
            cell(r, "p50_ms"),
            cell(r, "p95_ms"),
            cell(r, "p99_ms"),
            cell(r, "total_ms").parse::<f64>().unwrap_or(0.0),
        );
    }
    let mut findings = show(&admin, "NPLUS1").await?;
    out!("N+1 findings (SHOW NPLUS1): {}", findings.len());
    // Loops inside a transaction first (the classic N+1), newest first within each kind.
    findings.sort_by_key(|f| cell(f, "kind") != "transaction");
    for f in findings.iter().take(3) {
        out!(
            "  {} × {} ({}) from {}",
            cell(f, "count"),
            cell(f, "query"),
            cell(f, "kind"),
            cell(f, "client_addr"),
        );
    }
    Ok(())
}

/// The workload's N+1 pattern, as the sample app runs it.
const N_PLUS_ONE_QUERY: &str = "project_tasks_n_plus_one";

/// The workload runs its N+1 pattern (a list of tasks, then a user lookup per task)
/// for 2% of its queries, drawn at random: a short run or a starved machine may end
/// before it comes up. Then it runs here through `proxy` (at most 10 times, each for
/// another project) until SHOW NPLUS1 has a finding of a loop in a transaction, so
/// the summary has one to show (a burst of autocommit queries is another kind).
/// Returns how many times it ran (0: the workload had made such a finding already).
async fn top_up_n_plus_one(
    proxy: &pgopt_proxy::Proxy,
    through: &tokio_postgres::Config,
    opts: &WorkloadOptions,
) -> anyhow::Result<u32> {
    let user = through.get_user().unwrap_or_default();
    let admin = admin_console(proxy, user).await?;
    let found = |rows: Vec<tokio_postgres::SimpleQueryRow>| {
        rows.iter().any(|f| cell(f, "kind") == "transaction")
    };
    if found(show(&admin, "NPLUS1").await?) {
        return Ok(0);
    }
    let (client, conn) = through
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting through pgopt")?;
    tokio::spawn(conn);
    let (scale, seed) = (opts.scale, opts.seed);
    let dataset =
        tokio::task::spawn_blocking(move || std::sync::Arc::new(Dataset::new(scale, seed))).await?;
    let mut session = pgopt_sample::Session::new(client, dataset, seed);
    let mut runs = 0;
    while runs < 10 {
        runs += 1;
        session.execute_named(N_PLUS_ONE_QUERY).await?;
        if found(show(&admin, "NPLUS1").await?) {
            break;
        }
    }
    Ok(runs)
}

/// Where the workload's transactions ran (SHOW REPLICAS).
async fn print_replica_split(proxy: &pgopt_proxy::Proxy, user: &str) -> anyhow::Result<()> {
    let admin = admin_console(proxy, user).await?;
    let rows = show(&admin, "REPLICAS").await?;
    out!("Read/write split (SHOW REPLICAS):");
    for r in &rows {
        out!(
            "  {:<8} {}:{:<6} {:<8} reads {:>8}  writes {:>7}  lag {} bytes / {} ms",
            cell(r, "role"),
            cell(r, "host"),
            cell(r, "port"),
            cell(r, "state"),
            cell(r, "reads"),
            cell(r, "writes"),
            cell(r, "lag_bytes"),
            cell(r, "lag_ms"),
        );
    }
    Ok(())
}

/// What the proxy's own admin console says about the run: SHOW STATS and SHOW SERVERS.
async fn print_pool_figures(proxy: &pgopt_proxy::Proxy, user: &str) -> anyhow::Result<()> {
    let admin = admin_console(proxy, user).await?;
    let stats = show(&admin, "STATS").await?;
    let servers = show(&admin, "SERVERS").await?.len();
    let num = |r: &tokio_postgres::SimpleQueryRow, col: &str| -> u64 {
        r.try_get(col)
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    for r in stats.iter().filter(|r| r.get("database") == Some("saas")) {
        let xacts = num(r, "total_xact_count");
        let wait = num(r, "total_wait_time");
        out!(
            "Pool (SHOW STATS): {} transactions, {} queries, {:.1} MB out; clients waited {} µs \
             for a server on average; {servers} server connections open (SHOW SERVERS)",
            xacts,
            num(r, "total_query_count"),
            num(r, "total_sent") as f64 / 1e6,
            wait.checked_div(xacts).unwrap_or(0),
        );
    }
    Ok(())
}

async fn run_workload(
    target: tokio_postgres::Config,
    opts: &WorkloadOptions,
    label: &str,
) -> anyhow::Result<WorkloadReport> {
    let bar = ProgressBar::new(opts.duration.as_millis() as u64).with_style(
        ProgressStyle::with_template("Workload {msg} {bar:30} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{label}, {} clients", opts.clients));
    let started = Instant::now();
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bar.set_position(started.elapsed().as_millis() as u64);
            }
        })
    };
    let report = pgopt_sample::run(target, opts).await;
    ticker.abort();
    bar.finish_and_clear();
    report.with_context(|| format!("running the saas workload {label}"))
}

fn print_report(title: &str, report: &WorkloadReport, opts: &WorkloadOptions) {
    let secs = report.elapsed.as_secs_f64();
    out!(
        "{title}: {} clients for {:.1} s: {} queries ({:.0}/s), {} errors",
        opts.clients,
        secs,
        thousands(report.total_calls),
        report.total_calls as f64 / secs.max(1e-9),
        report.total_errors
    );
    out!(
        "\n  {:<12} {:>9} {:>7} {:>9} {:>9} {:>9}",
        "query group",
        "queries",
        "errors",
        "p50 ms",
        "p95 ms",
        "p99 ms"
    );
    for g in &report.groups {
        out!(
            "  {:<12} {:>9} {:>7} {:>9.2} {:>9.2} {:>9.2}",
            g.group,
            thousands(g.calls),
            g.errors,
            g.p50_us as f64 / 1000.0,
            g.p95_us as f64 / 1000.0,
            g.p99_us as f64 / 1000.0
        );
    }
    if let Some((name, message)) = report.first_error() {
        out!("\n  first error ({name}): {message}");
    }
    out!();
}

/// What the result cache did in the third run: SHOW CACHE.
async fn print_cache_figures(proxy: &pgopt_proxy::Proxy, user: &str) -> anyhow::Result<()> {
    let admin = admin_console(proxy, user).await?;
    let rows = show(&admin, "CACHE").await?;
    let Some(row) = rows.first() else {
        return Ok(());
    };
    out!(
        "Result cache (SHOW CACHE): hit ratio {}, {} hits, {} misses, {} invalidating transactions, {} entries; pgopt's time on a hit p50 {}, p99 {}\n",
        cell(row, "hit_ratio"),
        cell(row, "hits"),
        cell(row, "misses"),
        cell(row, "invalidations"),
        cell(row, "entries"),
        hit_bound(row, "hit_p50_us"),
        hit_bound(row, "hit_p99_us"),
    );
    Ok(())
}

/// A hit-time quantile of SHOW CACHE: its bucket's bound; NULL is no hits, or past the
/// last bound.
fn hit_bound(row: &tokio_postgres::SimpleQueryRow, column: &str) -> String {
    match cell(row, column).as_str() {
        "" if cell(row, "hits") == "0" => "n/a".into(),
        "" => "over 1 s".into(),
        us => format!("<= {us} us"),
    }
}

/// Throughput and median latency through `what` relative to direct, measured in this run.
fn print_comparison(what: &str, direct: &WorkloadReport, proxied: &WorkloadReport) {
    let qps = |r: &WorkloadReport| r.total_calls as f64 / r.elapsed.as_secs_f64().max(1e-9);
    out!(
        "{what} / direct, this run: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x (replicas, if any, share this machine's cores)\n",
        qps(proxied) / qps(direct).max(1e-9),
        proxied.p50_us as f64 / (direct.p50_us as f64).max(1.0),
        proxied.p99_us as f64 / (direct.p99_us as f64).max(1.0),
    );
}

/// 1234567 → "1,234,567"
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separates() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }
}
