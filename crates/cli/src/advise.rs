//! `pgopt advise URL`: the health checks of `pgopt-advisor` against a live database,
//! as a terminal report, JSON or Markdown; a non-zero exit for CI at `--fail-on`.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use pgopt_advisor::{health_checks, Finding, Severity, Thresholds};

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

pub async fn run(args: AdviseArgs, thresholds: &Thresholds) -> anyhow::Result<ExitCode> {
    let mut config = tokio_postgres::Config::from_str(&args.url)
        .with_context(|| "the database URL: expected postgres://USER@HOST:PORT/DB".to_string())?;
    config
        .application_name("pgopt-advise")
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the database")?;
    tokio::spawn(conn);
    let findings = health_checks(&client, thresholds).await?;
    let report = match args.format {
        OutputFormat::Text => text(&findings),
        OutputFormat::Json => serde_json::to_string_pretty(&findings)? + "\n",
        OutputFormat::Markdown => markdown(&findings),
    };
    print!("{report}");
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
