//! Log output to stderr, as text or JSON lines; `RUST_LOG` overrides the configured level.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogLevel, LoggingConfig};

pub fn init(config: &LoggingConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // The binary reports progress itself; libraries speak up at debug and trace.
        let libraries = match config.level {
            LogLevel::Debug | LogLevel::Trace => config.level.as_str(),
            _ => "warn",
        };
        EnvFilter::new(format!(
            "warn,pgopt={},pgopt_embedded={libraries},pgopt_sample={libraries}",
            config.level.as_str()
        ))
    });
    // Colours only on a terminal: a log file or journal gets plain lines, as
    // PgBouncer's (NO_COLOR turns them off on a terminal too).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        // A stderr nobody reads any more drops the line: reporting that on stderr
        // (the default) would panic.
        .log_internal_errors(false);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
