//! `pgopt`: one binary for the proxy, the advisor, operations and the demo.

/// `println!` that never panics: a stdout nobody reads any more (`pgopt … | head`, a
/// log collector gone) drops the line instead of taking pgopt down.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A command's whole output (a config, a report): written and flushed, and a failure
/// is the command's — but for a reader that left (`| head`), which ends it quietly.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing the output"))
        }
        _ => Ok(()),
    }
}

/// `eprintln!`, as [`out!`].
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod advise;
mod auth_file;
mod config;
mod demo;
mod from_pgbouncer;
mod logging;
mod proxy;
mod top;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// pgopt makes an existing PostgreSQL faster and safer without changing the application:
/// a pooling, routing, caching and observing proxy, an index advisor verified by the
/// planner, and the operations kit around them — each figure it reports is measured.
#[derive(Debug, Parser)]
#[command(name = "pgopt", version, about, long_about = None)]
#[command(after_help = "Start with `pgopt demo`: it runs everything on a throwaway PostgreSQL.")]
struct Cli {
    /// Config file (TOML). Default: ./pgopt.toml when it exists, else built-in defaults.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "PGOPT_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run pgopt on an embedded throwaway PostgreSQL with sample data and a workload.
    Demo(demo::DemoArgs),
    /// PostgreSQL proxy: pooling, replica routing, query insight, result cache.
    Proxy(proxy::ProxyArgs),
    /// Live view of the busiest query shapes through a running pgopt proxy.
    Top(top::TopArgs),
    /// Health checks of a database: findings with evidence and the SQL that fixes them.
    Advise(advise::AdviseArgs),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file; errors read FILE:LINE: key.path: what was expected.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the effective configuration (file, then environment overrides) as TOML.
    Print,
    /// Convert a PgBouncer pgbouncer.ini into a pgopt.toml (on stdout); what is not
    /// carried over is listed on stderr with its line.
    FromPgbouncer {
        /// The pgbouncer.ini to read.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            err!("pgopt: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Config(ConfigCommand::Check { file }) = &cli.command {
        return Ok(check_config(file));
    }
    if let Command::Config(ConfigCommand::FromPgbouncer { file }) = &cli.command {
        let converted =
            from_pgbouncer::convert(&file.display().to_string()).map_err(|e| anyhow::anyhow!(e))?;
        for note in &converted.notes {
            err!("note: {note}");
        }
        emit(&converted.toml)?;
        return Ok(ExitCode::SUCCESS);
    }
    let file = cli.config.clone().or_else(|| {
        let default = PathBuf::from("pgopt.toml");
        default.is_file().then_some(default)
    });
    let loaded = config::load(file.as_deref(), &config::env_overrides()?)?;
    logging::init(&loaded.config.logging);
    if let Some(path) = &loaded.file {
        tracing::debug!(file = %path.display(), overrides = ?loaded.env_overrides, "config loaded");
    }
    match cli.command {
        Command::Demo(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(demo::run(&loaded.config.demo, args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Proxy(args) => {
            // Single-threaded: `proxy.workers` beyond the first run sessions on threads
            // of their own (see the proxy crate's `workers.rs`).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(proxy::run(&loaded, args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Top(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(top::run(args, loaded.config.proxy.listen.port()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Advise(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(advise::run(args, &loaded.config.advise))
        }
        Command::Config(ConfigCommand::Print) => {
            emit(&toml::to_string_pretty(&loaded.config)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { .. } | ConfigCommand::FromPgbouncer { .. }) => {
            unreachable!("handled above")
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    // The files the config names are checked too (the hba rules, the users file, TLS
    // certificates), and the environment's overrides applied, as the proxy does.
    let checked = config::env_overrides()
        .and_then(|overrides| config::load(Some(file), &overrides))
        .map_err(|e| e.to_string())
        .and_then(|loaded| {
            let located = |e: anyhow::Error| config::at_line(Some(file), &format!("{e:#}"));
            proxy::check_files(&loaded.config).map_err(located)?;
            let proxy = &loaded.config.proxy;
            if !proxy.upstream.is_empty() || !proxy.databases.is_empty() {
                proxy::build(&loaded.config, Default::default()).map_err(located)?;
            }
            Ok(())
        });
    match checked {
        Ok(()) => {
            out!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            err!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
