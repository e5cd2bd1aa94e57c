//! A throwaway PostgreSQL server: `initdb` into a temporary directory, a free port,
//! settings for tests, stopped by PID on drop.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::binaries::PgBinaries;
use crate::process::{self, RunAs, TempRoot};
use crate::Error;

const SUPERUSER: &str = "postgres";
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// PostgreSQL itself SIGKILLs children 5 s into an immediate shutdown; wait longer
/// so the postmaster reaps them before we would kill it (and orphan them).
const SIGQUIT_GRACE: Duration = Duration::from_secs(12);
/// How many fresh ports to try when another process grabs the one we picked.
const PORT_ATTEMPTS: usize = 5;

/// How clients connecting over TCP authenticate (`pg_hba.conf` host lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAuth {
    Trust,
    Md5,
    ScramSha256,
}

impl HostAuth {
    fn as_initdb(self) -> &'static str {
        match self {
            HostAuth::Trust => "trust",
            HostAuth::Md5 => "md5",
            HostAuth::ScramSha256 => "scram-sha-256",
        }
    }
}

/// Options for [`Postgres`]; [`Postgres::start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct PostgresBuilder {
    port: Option<u16>,
    settings: Vec<(String, String)>,
    password: Option<String>,
    host_auth: HostAuth,
    preload: bool,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Default for PostgresBuilder {
    fn default() -> Self {
        PostgresBuilder {
            port: None,
            settings: Vec::new(),
            password: None,
            host_auth: HostAuth::Trust,
            preload: true,
            tls: None,
        }
    }
}

impl PostgresBuilder {
    /// Listen on this port instead of a free one; fails with [`Error::PortInUse`] if taken.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// A `postgresql.conf` setting, e.g. `("max_connections", "300")`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Password of the `postgres` superuser, required over TCP with `auth`.
    pub fn password(mut self, password: impl Into<String>, auth: HostAuth) -> Self {
        self.password = Some(password.into());
        self.host_auth = auth;
        self
    }

    /// Serve TLS (`ssl = on`) with this PEM certificate and private key, copied into
    /// the data directory with the ownership and mode PostgreSQL insists on.
    pub fn tls(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert_file.into(), key_file.into()));
        self
    }

    /// Preload pg_stat_statements, hypopg and pg_qualstats where installed (default on).
    pub fn preload_extensions(mut self, on: bool) -> Self {
        self.preload = on;
        self
    }

    /// Starts the server (initdb, then postgres) on a blocking thread.
    pub async fn start(self) -> Result<Postgres, Error> {
        tokio::task::spawn_blocking(move || self.start_blocking())
            .await
            .map_err(|e| Error::Join(e.to_string()))?
    }

    /// Starts the server from synchronous code.
    pub fn start_blocking(self) -> Result<Postgres, Error> {
        let bins = PgBinaries::find()?;
        if let Some(port) = self.port {
            process::ensure_port_free(port)?;
        }
        let run_as = RunAs::for_postgres()?;
        let mut root = TempRoot::new("pg", run_as)?;
        root.keep_if_requested();
        let data_dir = root.path().join("data");
        let socket_dir = root.subdir("sock", run_as)?;
        initdb(&bins, run_as, &root, &data_dir, &self)?;
        if let Some((cert, key)) = &self.tls {
            install_tls_files(run_as, &data_dir, cert, key)?;
        }
        append_conf(&data_dir, &conf_lines(&bins, &self))?;
        let mut pg = Postgres {
            child: None,
            bins,
            run_as,
            data_dir,
            socket_dir,
            log_path: root.path().join("server.log"),
            port: self.port.unwrap_or(0),
            password: self.password.clone(),
            root,
        };
        pg.spawn_on_some_port(self.port.is_none())?;
        if let (HostAuth::Md5, Some(password)) = (self.host_auth, &self.password) {
            // initdb stores the password as SCRAM, and PostgreSQL then answers an `md5`
            // pg_hba line with SCRAM; store an md5 hash so md5 is what clients get.
            pg.psql(&format!(
                "SET password_encryption = 'md5'; ALTER ROLE {SUPERUSER} PASSWORD '{}'",
                password.replace('\'', "''")
            ))?;
        }
        tracing::debug!(port = pg.port, dir = %pg.root.path().display(), "embedded PostgreSQL started");
        Ok(pg)
    }
}

fn initdb(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    root: &TempRoot,
    data_dir: &Path,
    opts: &PostgresBuilder,
) -> Result<(), Error> {
    let mut cmd = Command::new(bins.program("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
        .arg("--auth-local=trust")
        .arg(format!("--auth-host={}", opts.host_auth.as_initdb()));
    if let Some(password) = &opts.password {
        let pwfile = root.path().join("pwfile");
        std::fs::write(&pwfile, password)
            .map_err(|e| Error::io(format!("writing {}", pwfile.display()), e))?;
        if let Some(user) = run_as {
            user.chown(&pwfile)?;
        }
        cmd.arg(format!("--pwfile={}", pwfile.display()));
    }
    cmd.env("LC_ALL", "C");
    if let Some(user) = run_as {
        user.apply(&mut cmd);
    }
    process::run(cmd, "initdb")
}

/// Copies the certificate and key to `server.crt` / `server.key` in the data directory,
/// owned by the server's user, the key readable by it alone.
fn install_tls_files(
    run_as: Option<RunAs>,
    data_dir: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    for (from, name, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
        let to = data_dir.join(name);
        std::fs::copy(from, &to)
            .map_err(|e| Error::io(format!("copy {} to {}", from.display(), to.display()), e))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("chmod {}", to.display()), e))?;
        if let Some(user) = run_as {
            user.chown(&to)?;
        }
    }
    Ok(())
}

fn conf_lines(bins: &PgBinaries, opts: &PostgresBuilder) -> Vec<(String, String)> {
    let mut lines: Vec<(String, String)> = [
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("shared_buffers", "64MB"),
        ("max_connections", "200"),
        ("logging_collector", "off"),
        ("log_min_messages", "warning"),
        ("wal_level", "replica"),
        ("max_wal_senders", "10"),
        ("hot_standby", "on"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if opts.preload {
        let libs: Vec<&str> = ["pg_stat_statements", "hypopg", "pg_qualstats"]
            .into_iter()
            .filter(|lib| bins.has_library(lib))
            .collect();
        if !libs.is_empty() {
            lines.push(("shared_preload_libraries".into(), libs.join(",")));
        }
    }
    if opts.tls.is_some() {
        lines.push(("ssl".into(), "on".into()));
    }
    lines.extend(opts.settings.iter().cloned());
    lines
}

fn append_conf(data_dir: &Path, settings: &[(String, String)]) -> Result<(), Error> {
    let path = data_dir.join("postgresql.conf");
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut text = String::from("\n# pgopt embedded settings\n");
    for (name, value) in settings {
        text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// A running throwaway PostgreSQL server. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    bins: PgBinaries,
    run_as: Option<RunAs>,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    password: Option<String>,
    // Last: removed after the server has stopped.
    root: TempRoot,
}

impl Postgres {
    /// Starts a server with the default options (trust auth, a free port).
    pub async fn start() -> Result<Postgres, Error> {
        PostgresBuilder::default().start().await
    }

    pub fn builder() -> PostgresBuilder {
        PostgresBuilder::default()
    }

    /// Starts a streaming replica of `primary` (`pg_basebackup -R`) on another port.
    pub async fn start_replica(primary: &Postgres) -> Result<Postgres, Error> {
        Self::start_replica_via(primary, primary.port, None).await
    }

    /// [`Postgres::start_replica`] whose base backup and streaming go through
    /// 127.0.0.1:`port` (a proxy in front of `primary`), under `application_name`
    /// (what `synchronous_standby_names` knows it by) when given.
    pub async fn start_replica_via(
        primary: &Postgres,
        port: u16,
        application_name: Option<&str>,
    ) -> Result<Postgres, Error> {
        let (bins, run_as, password) = (
            primary.bins.clone(),
            primary.run_as,
            primary.password.clone(),
        );
        let mut conninfo = format!("host=127.0.0.1 port={port} user={SUPERUSER}");
        if let Some(name) = application_name {
            conninfo.push_str(&format!(" application_name={name}"));
        }
        tokio::task::spawn_blocking(move || {
            Self::replica_blocking(bins, run_as, &conninfo, port, password)
        })
        .await
        .map_err(|e| Error::Join(e.to_string()))?
    }

    fn replica_blocking(
        bins: PgBinaries,
        run_as: Option<RunAs>,
        conninfo: &str,
        primary_port: u16,
        password: Option<String>,
    ) -> Result<Postgres, Error> {
        let mut root = TempRoot::new("pg-replica", run_as)?;
        root.keep_if_requested();
        let data_dir = root.path().join("data");
        let socket_dir = root.subdir("sock", run_as)?;
        let mut cmd = Command::new(bins.program("pg_basebackup"));
        cmd.args(["-d", conninfo, "-D"]).arg(&data_dir).args([
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        ]);
        if let Some(pw) = &password {
            cmd.env("PGPASSWORD", pw);
        }
        if let Some(user) = run_as {
            user.apply(&mut cmd);
        }
        process::run(cmd, "pg_basebackup")?;
        let mut pg = Postgres {
            child: None,
            bins,
            run_as,
            data_dir,
            socket_dir,
            log_path: root.path().join("server.log"),
            port: 0,
            password,
            root,
        };
        pg.spawn_on_some_port(true)?;
        tracing::debug!(port = pg.port, primary_port, "embedded replica started");
        Ok(pg)
    }

    fn spawn_on_some_port(&mut self, pick_free: bool) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if pick_free {
                self.port = process::free_port()?;
            }
            match self.spawn() {
                Err(Error::ExitedEarly { log_tail, .. })
                    if pick_free
                        && attempt < PORT_ATTEMPTS
                        && log_tail.contains("could not bind") =>
                {
                    tracing::debug!(port = self.port, "port taken meanwhile; trying another");
                    continue;
                }
                Err(Error::ExitedEarly { log_tail, .. })
                    if !pick_free && log_tail.contains("could not bind") =>
                {
                    return Err(Error::PortInUse { port: self.port });
                }
                other => return other,
            }
        }
    }

    fn spawn(&mut self) -> Result<(), Error> {
        // A fresh log per start, so a failure is diagnosed from this attempt's lines.
        let log = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.log_path)
            .map_err(|e| Error::io(format!("opening {}", self.log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log file handle", e))?;
        let mut cmd = Command::new(self.bins.program("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.socket_dir.display()
            ))
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some(user) = self.run_as {
            user.apply(&mut cmd);
        }
        // A stale pid file from a killed server would make the readiness check lie.
        let _ = std::fs::remove_file(self.data_dir.join("postmaster.pid"));
        let mut child = cmd.spawn().map_err(|e| {
            Error::io(
                format!("starting {}", self.bins.program("postgres").display()),
                e,
            )
        })?;
        let pid_file = self.data_dir.join("postmaster.pid");
        let ready = process::wait_ready(
            &mut child,
            &format!("PostgreSQL on port {}", self.port),
            &self.log_path,
            START_TIMEOUT,
            || postmaster_ready(&pid_file),
        );
        if let Err(e) = ready {
            process::stop_child(&mut child, libc::SIGQUIT, SIGQUIT_GRACE);
            return Err(e);
        }
        self.child = Some(child);
        Ok(())
    }

    /// Runs SQL as the superuser over the private unix socket with `psql`.
    pub fn psql(&self, sql: &str) -> Result<(), Error> {
        let mut cmd = Command::new(self.bins.program("psql"));
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
            ])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        process::run(cmd, "psql")
    }

    /// Stops the server (fast shutdown) but keeps its files, so [`Postgres::restart`] works.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, libc::SIGINT, Duration::from_secs(15));
        }
    }

    /// Kills the server without a clean shutdown (immediate mode), keeping its files.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, libc::SIGQUIT, SIGQUIT_GRACE);
        }
    }

    /// Stops the server if it runs, then starts it again on the same port and data
    /// directory. Blocks until it accepts connections.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.spawn()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// PID of the postmaster, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        SUPERUSER
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// `postgres://postgres[:password]@127.0.0.1:PORT/DB`
    pub fn url(&self, db: &str) -> String {
        match &self.password {
            Some(pw) => format!("postgres://{SUPERUSER}:{pw}@127.0.0.1:{}/{db}", self.port),
            None => format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// The `psql` command line that connects to `db`.
    pub fn psql_command(&self, db: &str) -> String {
        format!("psql -h 127.0.0.1 -p {} -U {SUPERUSER} {db}", self.port)
    }

    /// Connection settings for tokio-postgres.
    pub fn config(&self, db: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .dbname(db)
            .application_name("pgopt-embedded");
        if let Some(pw) = &self.password {
            config.password(pw);
        }
        config
    }

    /// Connects to `db`; the connection task runs on the current tokio runtime.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, Error> {
        let (client, conn) = self
            .config(db)
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| Error::Connect {
                port: self.port,
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "embedded connection closed");
            }
        });
        Ok(client)
    }

    /// Creates database `name` (so each test can have its own) and returns a client of it.
    pub async fn create_database(&self, name: &str) -> Result<tokio_postgres::Client, Error> {
        let admin = self.connect("postgres").await?;
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        admin
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
            .map_err(|source| Error::Sql {
                what: format!("CREATE DATABASE {quoted}"),
                source,
            })?;
        self.connect(name).await
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown: the files are deleted anyway, no checkpoint needed.
        self.kill();
    }
}

/// Line 8 of `postmaster.pid` is the postmaster's status; "ready" once it accepts connections.
fn postmaster_ready(pid_file: &Path) -> bool {
    std::fs::read_to_string(pid_file)
        .map(|text| text.lines().nth(7).map(str::trim) == Some("ready"))
        .unwrap_or(false)
}
