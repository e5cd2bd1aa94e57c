//! Client compatibility through the real `pgopt proxy` binary and a real PostgreSQL:
//! psycopg 3 (scripts/compat/check.py, once with the libpq its wheel bundles and once
//! over the system's older libpq), node-postgres (scripts/compat/check.js) and asyncpg
//! (scripts/compat/check_asyncpg.py, with checks of its own) run the same checks in
//! each proxy configuration; and a ~200 MB result streams through the proxy in bounded
//! memory, also to a client that pipelines a big query behind it.
//!
//! The drivers are installed once by scripts/compat/install.sh (a virtualenv under
//! target/compat-venv, node_modules under scripts/compat), which needs PyPI and npm
//! the first time. The proxies run with `tls_mode = "prefer"` and a self-signed
//! certificate, and the TLS check runs (`PGOPT_COMPAT_TLS=1`).

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgopt_embedded::{HostAuth, Postgres};

const DB: &str = "compat";
const USER: &str = "compat_app";
const PASSWORD: &str = "compat-Pw.42";
const POOL_SIZE: usize = 2;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs scripts/compat/install.sh once per test process; the script itself takes a
/// file lock, so parallel test processes install one at a time.
fn install_drivers() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        let script = repo_root().join("scripts/compat/install.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}):\n{}{}",
                script.display(),
                out.status,
                text(&out.stdout),
                text(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A PostgreSQL whose TCP logins use SCRAM, with user `USER` owning database `DB`.
fn postgres_with_app_user() -> Postgres {
    let pg = Postgres::builder()
        .password("compat-super", HostAuth::ScramSha256)
        .preload_extensions(false)
        .start_blocking()
        .expect("starting PostgreSQL");
    pg.psql(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"))
        .unwrap();
    pg.psql(&format!("CREATE DATABASE {DB} OWNER {USER}"))
        .unwrap();
    pg
}

/// One proxy configuration.
struct Setup<'a> {
    name: &'a str,
    /// `proxy.upstream`: without a user, the proxy logs in to the server as the
    /// client's user with that user's password from `[[proxy.users]]`.
    upstream: String,
    mode: &'a str,
    auth: &'a str,
    users: &'a [(&'a str, &'a str)],
}

/// A `pgopt proxy` child process; killed (and its files removed) on drop.
struct ProxyProcess {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl ProxyProcess {
    fn start(setup: &Setup) -> ProxyProcess {
        let dir = std::env::temp_dir().join(format!(
            "pgopt-compat-{}-{}",
            std::process::id(),
            setup.name
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = pgopt_embedded::free_port().unwrap();
        let mut toml = format!(
            "[logging]\nlevel = \"info\"\n\n[proxy]\nlisten = \"127.0.0.1:{port}\"\n\
             upstream = \"{}\"\npool_mode = \"{}\"\ndefault_pool_size = {POOL_SIZE}\n\
             auth = \"{}\"\nquery_wait_timeout = \"30s\"\n",
            setup.upstream, setup.mode, setup.auth
        );
        // TLS for clients that ask (the tls check connects with sslmode=require).
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        let openssl = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("running openssl");
        assert!(openssl.status.success(), "{}", text(&openssl.stderr));
        toml.push_str(&format!(
            "tls_mode = \"prefer\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ));
        for (name, password) in setup.users {
            toml.push_str(&format!(
                "\n[[proxy.users]]\nname = \"{name}\"\npassword = \"{password}\"\n"
            ));
        }
        let config = dir.join("pgopt.toml");
        std::fs::write(&config, toml).unwrap();
        // A file, not a pipe: nobody drains a pipe while the checks run.
        let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgopt"))
            .arg("--config")
            .arg(&config)
            .arg("proxy")
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting pgopt proxy");
        let mut proxy = ProxyProcess { child, port, dir };
        proxy.wait_until_accepting();
        proxy
    }

    fn wait_until_accepting(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgopt proxy exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgopt proxy does not accept on {addr} after 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The proxy's output, its last 200 lines.
    fn log(&self) -> String {
        let all = std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(200)..].join("\n")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, Clone, Copy)]
enum Driver {
    /// psycopg 3 with the libpq its binary wheel bundles (18 today).
    Psycopg,
    NodePostgres,
    /// psycopg 3's pure-Python implementation over the system's libpq (Debian's 15):
    /// older libpq, so other paths (`DEALLOCATE name`, PQcancel).
    PsycopgSystemLibpq,
    /// asyncpg: its own protocol code; prepares everything, reads types from pg_type
    /// after `set_config('jit', 'off', false)`, resets pooled connections with one
    /// query of several statements.
    Asyncpg,
}

impl Driver {
    /// Checks only this driver runs (the others report them skipped).
    fn own_checks(self) -> &'static [&'static str] {
        match self {
            Driver::Psycopg | Driver::PsycopgSystemLibpq => {
                &["statement_cache", "deallocate", "encoding"]
            }
            Driver::NodePostgres => &[],
            Driver::Asyncpg => &["types", "pool_reset", "cursor"],
        }
    }

    fn command(self) -> Command {
        let root = repo_root();
        match self {
            Driver::Psycopg | Driver::PsycopgSystemLibpq => {
                let mut cmd = Command::new(root.join("target/compat-venv/bin/python"));
                cmd.arg(root.join("scripts/compat/check.py"));
                let implementation = match self {
                    Driver::PsycopgSystemLibpq => "python",
                    _ => "binary",
                };
                cmd.env("PSYCOPG_IMPL", implementation);
                cmd
            }
            Driver::NodePostgres => {
                let mut cmd = Command::new("node");
                cmd.arg(root.join("scripts/compat/check.js"));
                cmd
            }
            Driver::Asyncpg => {
                let mut cmd = Command::new(root.join("target/compat-venv/bin/python"));
                cmd.arg(root.join("scripts/compat/check_asyncpg.py"));
                cmd
            }
        }
    }
}

/// Runs one driver's checks against the proxy.
fn run_checks(driver: Driver, proxy: &ProxyProcess, setup: &Setup) -> Output {
    driver
        .command()
        .env("PGOPT_COMPAT_HOST", "127.0.0.1")
        .env("PGOPT_COMPAT_PORT", proxy.port.to_string())
        .env("PGOPT_COMPAT_DB", DB)
        .env("PGOPT_COMPAT_USER", USER)
        .env("PGOPT_COMPAT_PASSWORD", PASSWORD)
        .env("PGOPT_COMPAT_MODE", setup.mode)
        .env("PGOPT_COMPAT_AUTH", setup.auth)
        .env("PGOPT_COMPAT_POOL_SIZE", POOL_SIZE.to_string())
        .env("PGOPT_COMPAT_VERBOSE", "1")
        .env("PGOPT_COMPAT_TLS", "1")
        .env_remove("PGOPT_COMPAT_CHECKS")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running the {driver:?} checks: {e}"))
}

/// Every driver's checks through a proxy set up this way: each must exit 0 and report
/// `ok` for every check in `want_ok` and its own.
fn every_driver_passes(mode: &str, auth: &str, want_ok: &[&str]) {
    install_drivers();
    let pg = postgres_with_app_user();
    let setup = Setup {
        name: &format!("{mode}-{auth}"),
        upstream: format!("postgres://127.0.0.1:{}/{DB}", pg.port()),
        mode,
        auth,
        users: &[(USER, PASSWORD)],
    };
    let proxy = ProxyProcess::start(&setup);
    let mut failures = Vec::new();
    let mut report = String::new();
    // The system-libpq run last: what it breaks must not hide the others' results.
    for driver in [
        Driver::Psycopg,
        Driver::NodePostgres,
        Driver::Asyncpg,
        Driver::PsycopgSystemLibpq,
    ] {
        let started = Instant::now();
        let out = run_checks(driver, &proxy, &setup);
        let stdout = text(&out.stdout);
        report.push_str(&format!(
            "--- {driver:?} ({}, {:.1} s)\n{stdout}{}",
            out.status,
            started.elapsed().as_secs_f64(),
            text(&out.stderr)
        ));
        if !out.status.success() {
            failures.push(format!("{driver:?} exited with {}", out.status));
        }
        for check in want_ok.iter().chain(driver.own_checks()) {
            let ok = format!("ok {check}");
            if !stdout
                .lines()
                .any(|l| l == ok || l.starts_with(&format!("{ok}:")))
            {
                failures.push(format!("{driver:?}: no `{ok}` line"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{report}--- pgopt proxy log\n{}",
        failures.join("\n"),
        proxy.log()
    );
}

/// (`tls`: with SCRAM, psycopg's libpq requires channel binding, and node-postgres
/// binds when offered.)
const EVERY_MODE: [&str; 7] = [
    "multi_statement",
    "prepared",
    "copy",
    "cancel",
    "tx_error",
    "auth",
    "tls",
];

/// Transaction mode also re-prepares statements after a schema change.
fn transaction_mode_checks() -> Vec<&'static str> {
    let mut want = EVERY_MODE.to_vec();
    want.push("schema_change");
    want
}

#[test]
fn client_drivers_in_transaction_mode_with_scram() {
    every_driver_passes("transaction", "scram-sha-256", &transaction_mode_checks());
}

#[test]
fn client_drivers_in_transaction_mode_with_md5() {
    every_driver_passes("transaction", "md5", &transaction_mode_checks());
}

#[test]
fn client_drivers_in_session_mode_with_listen_notify() {
    let mut want: Vec<&str> = EVERY_MODE.to_vec();
    want.push("listen_notify");
    every_driver_passes("session", "scram-sha-256", &want);
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    memory(pid, "VmHWM:")
}

/// A process's `/proc/PID/status` figure `field` (in kB there), in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"));
    kb * 1024
}

const ROWS: u64 = 200_000;
const ROW_LEN: u64 = 1000;
/// Bytes of output for ROWS lines of ROW_LEN 'x' and a newline: 200,200,000.
const RESULT_BYTES: u64 = ROWS * (ROW_LEN + 1);
/// The proxy relays whole messages in batches through per-connection buffers of tens
/// of kilobytes (they grow only to the largest single message, here a 1 kB row), and
/// stops reading the server while the client does not read. Its peak measured here
/// (debug build, 2 cores) is about 9 MB, the same before and after relaying 2 x 200 MB.
/// 32 MB leaves 3x room for the runtime's and the allocator's slack on bigger
/// machines, while buffering even a sixth of one result would cross it.
const PEAK_RSS_BOUND: u64 = 32 * 1024 * 1024;

/// Reads `psql`'s output as it comes, checks it is ROWS lines of ROW_LEN 'x', and
/// stops reading for `pause` after the first 10 MB: a slow client.
fn read_rows(psql: &mut Child, pause: Duration) -> Result<(), String> {
    let mut stdout = psql.stdout.take().unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let (mut total, mut column, mut lines) = (0u64, 0u64, 0u64);
    let mut paused = pause.is_zero();
    loop {
        let n = stdout.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            match b {
                b'x' if column < ROW_LEN => column += 1,
                b'\n' if column == ROW_LEN => {
                    column = 0;
                    lines += 1;
                }
                _ => return Err(format!("unexpected byte {b:#04x} at offset {total}")),
            }
            total += 1;
        }
        if !paused && total > 10 << 20 {
            std::thread::sleep(pause);
            paused = true;
        }
    }
    if total != RESULT_BYTES || lines != ROWS {
        return Err(format!(
            "{total} bytes in {lines} lines, expected {RESULT_BYTES} in {ROWS}"
        ));
    }
    Ok(())
}

#[test]
fn a_200_mb_result_streams_through_the_proxy_in_bounded_memory() {
    let pg = plain_postgres();
    let proxy = trust_proxy(&pg, "stream", "transaction");
    let psql = |sql: &str| {
        let mut cmd = Command::new(pg.binaries().program("psql"));
        cmd.args(["-h", "127.0.0.1", "-p", &proxy.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-X", "-A", "-t", "-q"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let rows = format!("SELECT repeat('x', {ROW_LEN}) FROM generate_series(1, {ROWS})");
    let baseline = peak_rss(proxy.pid());
    // COPY OUT, read by a client that stops for 3 s: the proxy must stop reading the
    // server rather than buffer what the client does not take.
    // A big SELECT: psql reads its rows as fast as they come.
    for (what, sql, pause) in [
        (
            "COPY TO STDOUT",
            format!("COPY ({rows}) TO STDOUT"),
            Duration::from_secs(3),
        ),
        ("SELECT", rows.clone(), Duration::ZERO),
    ] {
        let started = Instant::now();
        let mut child = psql(&sql);
        let read = read_rows(&mut child, pause);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success() && read.is_ok(),
            "{what}: psql {status}, {read:?}\n{stderr}\n--- pgopt proxy log\n{}",
            proxy.log()
        );
        eprintln!(
            "{what}: {RESULT_BYTES} bytes through the proxy in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let peak = peak_rss(proxy.pid());
    eprintln!(
        "pgopt proxy peak RSS: {:.1} MB before, {:.1} MB after 2 x {} MB",
        baseline as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        RESULT_BYTES / 1_000_000
    );
    assert!(
        peak < PEAK_RSS_BOUND,
        "pgopt proxy peak RSS {peak} bytes (before: {baseline}), bound {PEAK_RSS_BOUND}"
    );
    // Last, as it needs room for its own big query.
    let started = Instant::now();
    let pipelined = pipeline_behind_a_big_result(proxy.port, &rows);
    assert!(
        pipelined.is_ok(),
        "pipelined: {pipelined:?}\n--- pgopt proxy log\n{}",
        proxy.log()
    );
    let peak = peak_rss(proxy.pid());
    eprintln!(
        "pipelined: {RESULT_BYTES} bytes through the proxy in {:.1} s; peak RSS {:.1} MB",
        started.elapsed().as_secs_f64(),
        peak as f64 / 1048576.0
    );
    let bound = PEAK_RSS_BOUND + 3 * BIG_QUERY_LEN as u64;
    assert!(
        peak < bound,
        "pgopt proxy peak RSS {peak} bytes after the pipelined case, bound {bound}"
    );
}

/// The query sent behind the big result: larger than what the sockets between the
/// proxy and PostgreSQL hold (about 4 MB of send buffer and 128 kB of receive buffer
/// here), so the proxy's write of it waits while PostgreSQL still sends the result.
const BIG_QUERY_LEN: usize = 24 << 20;

/// Appends a protocol message.
fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

/// A session of user postgres through the proxy at `port`, logged in (trust): the
/// stream to write to, and a reader of it.
fn log_in(port: u16) -> Result<(TcpStream, BufReader<TcpStream>), String> {
    let io = |e: std::io::Error| e.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(io)?;
    let params = b"user\0postgres\0database\0postgres\0\0";
    let mut startup = Vec::new();
    startup.extend_from_slice(&(8 + params.len() as u32).to_be_bytes());
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    startup.extend_from_slice(params);
    stream.write_all(&startup).map_err(io)?;
    let mut rd = BufReader::with_capacity(256 * 1024, stream.try_clone().map_err(io)?);
    loop {
        match read_message(&mut rd).map_err(io)? {
            (b'Z', _) => return Ok((stream, rd)),
            (b'E', body) => return Err(format!("login: {}", text(&body))),
            _ => {}
        }
    }
}

/// Reads one message: its tag and body.
fn read_message(rd: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    rd.read_exact(&mut header)?;
    let len = u32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    rd.read_exact(&mut body)?;
    Ok((header[0], body))
}

/// A client that pipelines `rows_sql` and a BIG_QUERY_LEN query behind it, reading
/// while it writes (as libpq's pipeline mode does). PostgreSQL sends the whole result
/// before it reads the second query: the proxy, still writing that query, must relay
/// the result to the client as it comes rather than hold it.
fn pipeline_behind_a_big_result(port: u16, rows_sql: &str) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let (stream, mut rd) = log_in(port)?;
    let mut batch = Vec::with_capacity(BIG_QUERY_LEN + 1024);
    message(&mut batch, b'Q', format!("{rows_sql}\0").as_bytes());
    let padding = "y".repeat(BIG_QUERY_LEN);
    message(
        &mut batch,
        b'Q',
        format!("SELECT length('{padding}')\0").as_bytes(),
    );
    drop(padding);
    let mut wr = stream;
    let writer = std::thread::spawn(move || wr.write_all(&batch).map(|()| wr));
    let (mut rows, mut readies, mut length) = (0u64, 0, None);
    while readies < 2 {
        match read_message(&mut rd).map_err(io)? {
            (b'D', body) if readies == 0 => {
                if body.len() != 2 + 4 + ROW_LEN as usize {
                    return Err(format!("a row of {} bytes", body.len()));
                }
                rows += 1;
            }
            (b'D', body) => length = Some(text(&body[6..])),
            (b'Z', _) => readies += 1,
            (b'E', body) => return Err(format!("error: {}", text(&body))),
            _ => {}
        }
    }
    let mut wr = writer.join().unwrap().map_err(io)?;
    let _ = wr.write_all(b"X\0\0\0\x04");
    let want = BIG_QUERY_LEN.to_string();
    if rows != ROWS || length.as_deref() != Some(want.as_str()) {
        return Err(format!(
            "{rows} rows (expected {ROWS}), length {length:?} (expected {want})"
        ));
    }
    Ok(())
}

#[test]
fn a_large_row_goes_through_either_way_as_it_arrives() {
    // A row from the server, in a simple query's result, an extended one's and a COPY
    // TO's, and a value to it in a COPY FROM and in two Binds: passed on as its bytes
    // come, so the proxy's peak memory stays about where it was (PgBouncer's way), in
    // both pool modes.
    let pg = plain_postgres();
    for mode in ["transaction", "session"] {
        let proxy = trust_proxy(&pg, "rows", mode);
        let (mut wr, mut rd) = log_in(proxy.port).unwrap();
        let mut create = Vec::new();
        message(
            &mut create,
            b'Q',
            b"DROP TABLE IF EXISTS copied; CREATE TABLE copied (v text)\0",
        );
        round_trip(&mut wr, &mut rd, &create).unwrap();
        let peak_before = peak_rss(proxy.pid());
        let sql = format!("SELECT repeat('x', {BIG_MESSAGE})");
        let mut simple = Vec::new();
        message(&mut simple, b'Q', format!("{sql}\0").as_bytes());
        let mut extended = Vec::new();
        message(&mut extended, b'P', format!("\0{sql}\0\0\0").as_bytes());
        message(&mut extended, b'B', b"\0\0\0\0\0\0\0\0");
        message(&mut extended, b'E', b"\0\0\0\0\0");
        message(&mut extended, b'S', b"");
        let mut copy = Vec::new();
        message(
            &mut copy,
            b'Q',
            format!("COPY ({sql}) TO STDOUT\0").as_bytes(),
        );
        // A value to the server in a Bind: of a statement prepared before, and of
        // the unnamed one in the same batch.
        let mut prepare = Vec::new();
        message(&mut prepare, b'P', b"big\0SELECT length($1::text)\0\0\0");
        message(&mut prepare, b'S', b"");
        let mut bind = b"\0big\0\0\0\0\x01".to_vec();
        bind.extend_from_slice(&(BIG_MESSAGE as u32).to_be_bytes());
        bind.resize(bind.len() + BIG_MESSAGE, b'v');
        bind.extend_from_slice(b"\0\0");
        let mut named = Vec::new();
        message(&mut named, b'B', &bind);
        message(&mut named, b'E', b"\0\0\0\0\0");
        message(&mut named, b'S', b"");
        let mut unnamed = Vec::new();
        message(&mut unnamed, b'P', b"\0SELECT length($1::text)\0\0\0");
        bind.remove(1);
        bind.remove(1);
        bind.remove(1);
        message(&mut unnamed, b'B', &bind);
        drop(bind);
        message(&mut unnamed, b'E', b"\0\0\0\0\0");
        message(&mut unnamed, b'S', b"");
        let length = BIG_MESSAGE.to_string();
        for (what, batch, want) in [
            ("simple", simple, format!("{BIG_MESSAGE} bytes")),
            ("extended", extended, format!("{BIG_MESSAGE} bytes")),
            // (The row and its newline.)
            ("COPY", copy, format!("{} bytes copied", BIG_MESSAGE + 1)),
            ("Parse", prepare, String::new()),
            ("named Bind", named, length.clone()),
            ("unnamed Bind", unnamed, length),
        ] {
            let got = round_trip(&mut wr, &mut rd, &batch);
            assert_eq!(
                got.as_deref(),
                Ok(want.as_str()),
                "{mode}, {what}:\n{}",
                proxy.log()
            );
        }
        // COPY FROM STDIN: a CopyData of one row, once the server asked for data.
        let mut start = Vec::new();
        message(&mut start, b'Q', b"COPY copied FROM STDIN\0");
        wr.write_all(&start).unwrap();
        let (tag, body) = read_message(&mut rd).unwrap();
        assert_eq!(tag, b'G', "{mode}: {}", text(&body));
        let mut row = vec![b'z'; BIG_MESSAGE + 1];
        row[BIG_MESSAGE] = b'\n';
        let mut data = Vec::new();
        message(&mut data, b'd', &row);
        drop(row);
        message(&mut data, b'c', b"");
        assert_eq!(
            round_trip(&mut wr, &mut rd, &data).as_deref(),
            Ok(""),
            "{mode}"
        );
        drop(data);
        let mut check = Vec::new();
        let sql = "SELECT length(v) FROM copied WHERE v ~ '^z+$'\0";
        message(&mut check, b'Q', sql.as_bytes());
        let want = BIG_MESSAGE.to_string();
        assert_eq!(
            round_trip(&mut wr, &mut rd, &check).as_deref(),
            Ok(want.as_str())
        );
        let peak = peak_rss(proxy.pid());
        eprintln!(
            "{mode}: pgopt proxy peak RSS {:.1} MB before, {:.1} MB after 6 values of {} MB",
            peak_before as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            BIG_MESSAGE >> 20,
        );
        let bound = peak_before + (BIG_MESSAGE / 8) as u64;
        assert!(peak < bound, "{mode}: peak RSS {peak} bytes, bound {bound}");
        let _ = wr.write_all(b"X\0\0\0\x04");
    }
}

#[test]
fn a_server_lost_part_way_through_a_row_closes_the_client_without_a_stray_error() {
    // The client has had part of a row when its server backend ends: an error now
    // would read as the row's bytes, so pgopt closes the connection without one.
    let pg = plain_postgres();
    for mode in ["transaction", "session"] {
        let proxy = trust_proxy(&pg, "lost", mode);
        let (mut wr, mut rd) = log_in(proxy.port).unwrap();
        wr.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut query = Vec::new();
        let sql = format!("SELECT repeat('x', {BIG_MESSAGE}) AS row_part_way\0");
        message(&mut query, b'Q', sql.as_bytes());
        wr.write_all(&query).unwrap();
        assert_eq!(read_message(&mut rd).unwrap().0, b'T');
        let mut head = [0u8; 11];
        rd.read_exact(&mut head).unwrap();
        assert_eq!(head[0], b'D', "{mode}");
        let mut part = vec![0u8; 1 << 20];
        rd.read_exact(&mut part).unwrap();
        pg.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE query LIKE '%row_part_way%' AND pid <> pg_backend_pid()",
        )
        .unwrap();
        // The rest that came before the end, then the end: nothing but the row's bytes.
        let mut rest = Vec::new();
        let _ = rd.read_to_end(&mut rest);
        part.extend_from_slice(&rest);
        assert!(
            part.len() < BIG_MESSAGE,
            "{mode}: the whole row came ({} bytes)",
            part.len()
        );
        let stray = part.iter().position(|&b| b != b'x');
        assert_eq!(stray, None, "{mode}: {} bytes of the row", part.len());
    }
}

/// A PostgreSQL without preloaded extensions, for the proxy tests below.
fn plain_postgres() -> Postgres {
    Postgres::builder()
        .preload_extensions(false)
        .start_blocking()
        .expect("starting PostgreSQL")
}

/// The pgopt binary in pool mode `mode`, trusting every client, in front of `pg`.
fn trust_proxy(pg: &Postgres, name: &str, mode: &str) -> ProxyProcess {
    ProxyProcess::start(&Setup {
        name,
        upstream: pg.url("postgres"),
        mode,
        auth: "trust",
        users: &[],
    })
}

/// One message larger than anything else a session sends or gets.
const BIG_MESSAGE: usize = 64 << 20;

/// Sends `batch` and reads up to its ReadyForQuery: the first column of the last
/// DataRow, as text (its length when longer than 20 bytes).
fn round_trip(wr: &mut TcpStream, rd: &mut impl Read, batch: &[u8]) -> Result<String, String> {
    let io = |e: std::io::Error| e.to_string();
    wr.write_all(batch).map_err(io)?;
    let mut value = String::new();
    loop {
        match read_message(rd).map_err(io)? {
            (b'D', body) if body.len() > 26 => value = format!("{} bytes", body.len() - 6),
            (b'D', body) => value = text(&body[6..]),
            (b'd', body) => value = format!("{} bytes copied", body.len()),
            (b'Z', _) => return Ok(value),
            (b'E', body) => return Err(format!("error: {}", text(&body))),
            _ => {}
        }
    }
}

#[test]
fn one_large_message_costs_about_its_size_and_is_not_kept() {
    // A bulk value in a query's text, in a Bind, and in a row back: the proxy holds a
    // whole message at a time (read whole, then queued for the server as it came, not
    // copied), then gives the room back, also while the client stays connected
    // (session mode: connected to the same server connection for life).
    let pg = plain_postgres();
    for mode in ["transaction", "session"] {
        let proxy = trust_proxy(&pg, "large", mode);
        let (mut wr, mut rd) = log_in(proxy.port).unwrap();
        let (rss_before, peak_before) = (memory(proxy.pid(), "VmRSS:"), peak_rss(proxy.pid()));
        let value = "y".repeat(BIG_MESSAGE);
        let mut query = Vec::new();
        message(
            &mut query,
            b'Q',
            format!("SELECT length('{value}')\0").as_bytes(),
        );
        let mut bind_body = b"\0\0\0\0\0\x01".to_vec();
        bind_body.extend_from_slice(&(BIG_MESSAGE as u32).to_be_bytes());
        bind_body.extend_from_slice(value.as_bytes());
        bind_body.extend_from_slice(b"\0\0");
        drop(value);
        let mut extended = Vec::new();
        message(&mut extended, b'P', b"\0SELECT length($1::text)\0\0\0");
        message(&mut extended, b'B', &bind_body);
        drop(bind_body);
        message(&mut extended, b'E', b"\0\0\0\0\0");
        message(&mut extended, b'S', b"");
        let mut row = Vec::new();
        let sql = format!("SELECT repeat('x', {BIG_MESSAGE})\0");
        message(&mut row, b'Q', sql.as_bytes());
        let want = BIG_MESSAGE.to_string();
        for (what, batch, want) in [
            ("query text", query, want.clone()),
            ("Bind", extended, want),
            ("row", row, format!("{BIG_MESSAGE} bytes")),
        ] {
            let got = round_trip(&mut wr, &mut rd, &batch);
            assert_eq!(
                got.as_deref(),
                Ok(want.as_str()),
                "{mode}, {what}:\n{}",
                proxy.log()
            );
        }
        // (pgopt's upkeep after the ReadyForQuery; glibc gives a freed large block,
        // mapped on its own, back at once.)
        std::thread::sleep(Duration::from_millis(200));
        let (rss, peak) = (memory(proxy.pid(), "VmRSS:"), peak_rss(proxy.pid()));
        eprintln!(
            "{mode}: pgopt proxy RSS {:.1} MB before, {:.1} MB after 3 x {} MB messages \
             (peak {:.1} MB, {:.1} MB before)",
            rss_before as f64 / 1048576.0,
            rss as f64 / 1048576.0,
            BIG_MESSAGE >> 20,
            peak as f64 / 1048576.0,
            peak_before as f64 / 1048576.0,
        );
        assert!(
            rss < rss_before + (BIG_MESSAGE / 4) as u64,
            "{mode}: RSS {rss} bytes after, {rss_before} before"
        );
        let bound = peak_before + (BIG_MESSAGE * 3 / 2) as u64;
        assert!(peak < bound, "{mode}: peak RSS {peak} bytes, bound {bound}");
        let _ = wr.write_all(b"X\0\0\0\x04");
    }
}
