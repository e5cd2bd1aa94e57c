//! `pgopt advise URL`: the health checks and the index advisor of `pgopt-advisor`
//! against a live database, as a terminal report, JSON or Markdown; a non-zero exit for
//! CI at `--fail-on`; `--migration FILE` and `--apply` for the recommended indexes.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use pgopt_advisor::{
    health_checks, human_size, recommend_indexes, workload_from_pg_stat_statements,
    workload_from_sql, Finding, IndexOptions, IndexReport, Severity, Thresholds, WorkloadStatement,
};

#[derive(Debug, Args)]
pub struct AdviseArgs {
    /// The database: postgres://USER[:PASSWORD]@HOST:PORT/DB
    url: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Exit with status 1 when a finding is at least this severe (for CI).
    #[arg(long, value_enum, default_value_t = FailOn::Never)]
    fail_on: FailOn,
    /// Run only the health checks or only the index advisor.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Index advisor workload: a file of SQL statements separated by `;` [default: the
    /// top statements of pg_stat_statements].
    #[arg(long, value_name = "FILE", conflicts_with = "insight")]
    workload: Option<std::path::PathBuf>,
    /// Index advisor workload: the query shapes a running pgopt proxy has seen, from
    /// its admin console, e.g. postgres://postgres@127.0.0.1:6432/pgopt
    #[arg(long, value_name = "URL")]
    insight: Option<String>,
    /// Statements taken from pg_stat_statements or the proxy (by total time).
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Storage budget for the recommended indexes, e.g. 500MB.
    #[arg(long, value_parser = parse_size)]
    budget: Option<i64>,
    /// At most this many recommended indexes.
    #[arg(long, default_value_t = 10)]
    max_indexes: usize,
    /// An index must lower the weighted workload cost by this share to be recommended.
    #[arg(long, default_value_t = 0.002)]
    min_improvement: f64,
    /// Write the recommended indexes as a migration (CREATE INDEX CONCURRENTLY IF NOT EXISTS).
    #[arg(long, value_name = "FILE")]
    migration: Option<std::path::PathBuf>,
    /// Build the recommended indexes now (CONCURRENTLY, with lock_timeout, progress shown).
    #[arg(long)]
    apply: bool,
    /// Also drop the indexes the workload never uses (in the migration, and with --apply).
    #[arg(long)]
    drop_unused: bool,
    /// lock_timeout for --apply.
    #[arg(long, default_value = "5s")]
    lock_timeout: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FailOn {
    Never,
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Checks,
    Indexes,
}

/// `500MB`, `1.5GB`, `800kB`, `4096` (bytes); units are powers of 1024 as in PostgreSQL.
fn parse_size(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 500MB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1024.0,
        "mb" | "m" => 1024.0 * 1024.0,
        "gb" | "g" => 1024.0 * 1024.0 * 1024.0,
        "tb" | "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("{s:?}: unknown unit (B, kB, MB, GB, TB)")),
    };
    Ok((n * mult) as i64)
}

async fn connect(url: &str, what: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::from_str(url)
        .with_context(|| format!("{what} URL: expected postgres://USER@HOST:PORT/DB"))?;
    config
        .application_name("pgopt-advise")
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to the {what}"))?;
    tokio::spawn(conn);
    Ok(client)
}

pub async fn run(args: AdviseArgs, thresholds: &Thresholds) -> anyhow::Result<ExitCode> {
    let client = connect(&args.url, "database").await?;
    let findings = if args.only != Some(Part::Indexes) {
        health_checks(&client, thresholds).await?
    } else {
        Vec::new()
    };
    // The index advisor runs by default when it has a workload and HypoPG; asked for
    // explicitly (--only indexes, --workload, --insight, --apply, --migration), not
    // being able to run is an error.
    let explicit = args.only == Some(Part::Indexes)
        || args.workload.is_some()
        || args.insight.is_some()
        || args.apply
        || args.migration.is_some();
    let indexes = if args.only != Some(Part::Checks) {
        match index_advice(&client, &args).await {
            Ok(r) => Ok(r),
            Err(e) if explicit => return Err(e),
            Err(e) => Err(format!("{e:#}")),
        }
    } else {
        Err(String::new())
    };
    if let (Ok(report), Some(path)) = (&indexes, &args.migration) {
        std::fs::write(path, migration(report, args.drop_unused))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let show_checks = args.only != Some(Part::Indexes);
    let out = match args.format {
        OutputFormat::Text => {
            let mut out = if show_checks {
                text(&findings)
            } else {
                String::new()
            };
            match &indexes {
                Ok(r) => out.push_str(&index_text(r)),
                Err(why) if !why.is_empty() => {
                    out.push_str(&format!("\nIndex advisor not run: {why}\n"))
                }
                Err(_) => {}
            }
            out
        }
        OutputFormat::Json => {
            let value = serde_json::json!({
                "findings": findings,
                "indexes": indexes.as_ref().ok(),
                "indexes_not_run": indexes.as_ref().err().filter(|w| !w.is_empty()),
            });
            serde_json::to_string_pretty(&value)? + "\n"
        }
        OutputFormat::Markdown => {
            let mut out = if show_checks {
                markdown(&findings)
            } else {
                String::new()
            };
            if let Ok(r) = &indexes {
                out.push_str(&index_markdown(r));
            }
            out
        }
    };
    crate::emit(&out)?;
    if let (Ok(report), true) = (&indexes, args.apply) {
        apply(&client, report, &args).await?;
    }
    let limit = match args.fail_on {
        FailOn::Never => return Ok(ExitCode::SUCCESS),
        FailOn::Info => Severity::Info,
        FailOn::Warning => Severity::Warning,
        FailOn::Critical => Severity::Critical,
    };
    Ok(if findings.iter().any(|f| f.severity >= limit) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The workload, then the advisor, with a progress bar on a terminal.
async fn index_advice(
    client: &tokio_postgres::Client,
    args: &AdviseArgs,
) -> anyhow::Result<IndexReport> {
    let workload = if let Some(path) = &args.workload {
        let sql = std::fs::read_to_string(path)
            .with_context(|| format!("reading the workload {}", path.display()))?;
        workload_from_sql(&sql)
    } else if let Some(url) = &args.insight {
        insight_workload(client, url, args.top).await?
    } else {
        workload_from_pg_stat_statements(client, args.top as i64).await?
    };
    if workload.is_empty() {
        anyhow::bail!("the workload is empty");
    }
    let options = IndexOptions {
        budget_bytes: args.budget,
        max_indexes: args.max_indexes,
        min_improvement: args.min_improvement,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg:24} [{bar:30}] {pos}/{len}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut progress = |phase: &str, done: usize, total: usize| {
        bar.set_message(phase.to_owned());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let report = recommend_indexes(client, &workload, &options, &mut progress).await;
    bar.finish_and_clear();
    Ok(report?)
}

/// Query shapes from a pgopt proxy's admin console, for this database.
async fn insight_workload(
    db: &tokio_postgres::Client,
    url: &str,
    top: usize,
) -> anyhow::Result<Vec<WorkloadStatement>> {
    let database: String = db.query_one("SELECT current_database()", &[]).await?.get(0);
    let admin = connect(url, "pgopt admin console").await?;
    let mut shapes = crate::top::fetch(&admin).await?;
    // SHOW QUERIES merges a shape over databases (database empty): statements on tables
    // this database lacks are skipped by the advisor.
    shapes.retain(|s| s.database.is_empty() || s.database == database);
    shapes.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    Ok(shapes
        .into_iter()
        .take(top)
        .map(|s| WorkloadStatement {
            text: s.query,
            weight: s.calls as f64,
        })
        .collect())
}

fn change(before: f64, after: f64) -> String {
    if before > 0.0 {
        format!("{:+.0}%", (after - before) / before * 100.0)
    } else {
        "n/a".into()
    }
}

fn one_line(sql: &str, max: usize) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

fn index_text(r: &IndexReport) -> String {
    let mut out = String::from("\nIndex advisor\n");
    for w in &r.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    if r.recommendations.is_empty() {
        out.push_str("  No index to recommend for this workload.\n");
    }
    for (i, rec) in r.recommendations.iter().enumerate() {
        out.push_str(&format!("  {}. {};\n", i + 1, rec.definition));
        let cost = match rec.cost_after {
            Some(a) => format!(
                "cost {:.0} → {a:.0} ({})",
                rec.cost_before,
                change(rec.cost_before, a)
            ),
            None => "not verified: HypoPG cannot simulate GIN indexes".into(),
        };
        out.push_str(&format!(
            "     ~{} · helps {} statement{} · {cost}\n",
            human_size(rec.bytes),
            rec.statements.len(),
            if rec.statements.len() == 1 { "" } else { "s" }
        ));
        for old in &rec.supersedes {
            out.push_str(&format!(
                "     makes {old} redundant: DROP INDEX CONCURRENTLY IF EXISTS {old}; once built\n"
            ));
        }
    }
    out.push_str("\n  Statements (planner cost of one run, before → after):\n");
    for s in &r.statements {
        let line = one_line(&s.text, 90);
        match (&s.skipped, s.cost_before, s.cost_after) {
            (Some(why), _, _) => out.push_str(&format!("    skipped ({why}): {line}\n")),
            (None, Some(b), Some(a)) => out.push_str(&format!(
                "    {b:>10.1} → {a:>10.1} {:>6}  ×{}  {line}\n",
                change(b, a),
                s.weight
            )),
            _ => {}
        }
    }
    if !r.unused.is_empty() {
        out.push_str("\n  Indexes no statement of the workload uses:\n");
        for u in &r.unused {
            out.push_str(&format!(
                "    {} ({}): {}\n",
                u.name,
                human_size(u.bytes),
                u.definition
            ));
        }
    }
    out.push_str(&format!(
        "\n  Workload cost {:.0} → {:.0} ({})\n",
        r.cost_before,
        r.cost_after,
        change(r.cost_before, r.cost_after)
    ));
    out
}

fn index_markdown(r: &IndexReport) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::from(
        "\n| index | size | statements | cost before | cost after |\n|---|---|---|---|---|\n",
    );
    for rec in &r.recommendations {
        out.push_str(&format!(
            "| `{}` | {} | {} | {:.0} | {} |\n",
            cell(&rec.definition),
            human_size(rec.bytes),
            rec.statements.len(),
            rec.cost_before,
            rec.cost_after
                .map(|a| format!("{a:.0}"))
                .unwrap_or_else(|| "not verified (GIN)".into())
        ));
    }
    out
}

/// The migration file: one CREATE INDEX CONCURRENTLY per recommendation, with why.
fn migration(r: &IndexReport, drop_unused: bool) -> String {
    let mut out = String::from(
        "-- Indexes recommended by pgopt advise. CREATE/DROP INDEX CONCURRENTLY cannot run\n\
         -- inside a transaction block: run this file in autocommit mode (psql -f).\n\
         SET lock_timeout = '5s';\n",
    );
    for rec in &r.recommendations {
        out.push_str(&format!("\n-- {} (~{}): ", rec.name, human_size(rec.bytes)));
        match rec.cost_after {
            Some(a) => out.push_str(&format!(
                "planner cost of the statements it serves {:.0} -> {a:.0} ({}).\n",
                rec.cost_before,
                change(rec.cost_before, a)
            )),
            None => out.push_str("GIN, not verified by HypoPG; serves:\n"),
        }
        for &i in rec.statements.iter().take(5) {
            out.push_str(&format!("--   {}\n", one_line(&r.statements[i].text, 100)));
        }
        out.push_str(&format!("{};\n", rec.definition));
        for old in &rec.supersedes {
            out.push_str(&format!(
                "-- {old} leads it and is then redundant; after checking nothing else needs it:\n\
                 -- DROP INDEX CONCURRENTLY IF EXISTS {old};\n"
            ));
        }
    }
    for u in &r.unused {
        out.push_str(&format!(
            "\n-- {} ({}) is used by no statement of the workload.\n",
            u.name,
            human_size(u.bytes)
        ));
        if drop_unused {
            out.push_str(&format!("{};\n", u.drop));
        } else {
            out.push_str(&format!("-- {};\n", u.drop));
        }
    }
    out
}

/// Builds the recommendations (and drops unused indexes with --drop-unused), showing
/// pg_stat_progress_create_index. A failed CONCURRENTLY build leaves an invalid index,
/// which is dropped again.
async fn apply(
    client: &tokio_postgres::Client,
    r: &IndexReport,
    args: &AdviseArgs,
) -> anyhow::Result<()> {
    let watcher = connect(&args.url, "database").await?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{}'",
            args.lock_timeout.replace('\'', "")
        ))
        .await
        .context("lock_timeout")?;
    let mut statements: Vec<(String, String)> = r
        .recommendations
        .iter()
        .map(|x| (x.name.clone(), x.definition.clone()))
        .collect();
    if args.drop_unused {
        statements.extend(r.unused.iter().map(|u| (u.name.clone(), u.drop.clone())));
    }
    for (name, sql) in statements {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:50} [{bar:30}] {pos}%")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_message(name.clone());
        let work = client.batch_execute(&sql);
        tokio::pin!(work);
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if let Ok(Some(row)) = watcher
                        .query_opt(
                            "SELECT CASE WHEN blocks_total > 0 THEN 100 * blocks_done / blocks_total
                                         WHEN tuples_total > 0 THEN 100 * tuples_done / tuples_total
                                         ELSE 0 END::int8, phase
                               FROM pg_stat_progress_create_index WHERE pid = $1",
                            &[&pid],
                        )
                        .await
                    {
                        bar.set_position(row.get::<_, i64>(0).clamp(0, 100) as u64);
                        bar.set_message(format!("{name}: {}", row.get::<_, String>(1)));
                    }
                }
            }
        };
        bar.finish_and_clear();
        match result {
            Ok(()) => err!("done: {sql}"),
            Err(e) => {
                let message = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string());
                if sql.starts_with("CREATE") {
                    // An interrupted CONCURRENTLY build leaves an INVALID index.
                    let schema = r
                        .recommendations
                        .iter()
                        .find(|x| x.name == name)
                        .map(|x| x.table.split('.').next().unwrap_or("public").to_owned())
                        .unwrap_or_else(|| "public".into());
                    let _ = client
                        .batch_execute(&format!(
                            "DROP INDEX CONCURRENTLY IF EXISTS {schema}.{}",
                            pgopt_advisor::quote_ident(&name)
                        ))
                        .await;
                }
                anyhow::bail!("{sql}: {message}");
            }
        }
    }
    Ok(())
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

fn text(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return format!(
            "No findings: {} health checks passed.\n",
            pgopt_advisor::CHECKS.len()
        );
    }
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!(
            "[{}] {}: {}\n    {}\n    why: {}\n",
            severity(f.severity),
            f.check,
            f.object,
            f.evidence,
            f.why
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("    fix: {fix}\n"));
        }
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    out.push_str(&format!(
        "\n{} findings: {} critical, {} warning, {} info\n",
        findings.len(),
        count(Severity::Critical),
        count(Severity::Warning),
        count(Severity::Info)
    ));
    out
}

fn markdown(findings: &[Finding]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out =
        String::from("| severity | check | object | evidence | fix |\n|---|---|---|---|---|\n");
    for f in findings {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            severity(f.severity),
            f.check,
            cell(&f.object),
            cell(&f.evidence),
            f.fix
                .as_deref()
                .map(|x| format!("`{}`", cell(x)))
                .unwrap_or_default()
        ));
    }
    out
}
