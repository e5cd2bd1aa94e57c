/// Why a throwaway server could not be started or used. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found in {searched}; \
         install them with `apt-get install postgresql-15` or point PGOPT_PG_BINDIR at their directory"
    )]
    PostgresNotFound { searched: String },
    #[error("`{program}` not found on PATH; install it with `apt-get install {package}`")]
    ProgramNotFound {
        program: &'static str,
        package: &'static str,
    },
    #[error("port {port} on 127.0.0.1 is already in use; choose another port or let pgopt pick a free one")]
    PortInUse { port: u16 },
    #[error(
        "running as root and no unprivileged user to run PostgreSQL as: there is no `postgres` \
         user and creating one failed ({reason}); create one with `useradd --system postgres`"
    )]
    NoServerUser { reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
    #[error("{what} did not become ready within {seconds} s; last log lines:\n{log_tail}")]
    StartTimeout {
        what: String,
        seconds: u64,
        log_tail: String,
    },
    #[error("{what} exited during start-up ({status}); last log lines:\n{log_tail}")]
    ExitedEarly {
        what: String,
        status: String,
        log_tail: String,
    },
    #[error("connecting to the embedded PostgreSQL on port {port}: {source}")]
    Connect {
        port: u16,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what}: {source}")]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("background task failed: {0}")]
    Join(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
