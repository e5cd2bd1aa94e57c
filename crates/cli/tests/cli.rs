//! The `pgopt` binary as a user runs it.

use std::process::{Command, Output};

fn pgopt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(args)
        .env_remove("PGOPT_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("running pgopt")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One bigint from the database.
fn scalar(pg: &pgopt_embedded::Postgres, sql: &str) -> i64 {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let db = pg.connect("postgres").await.unwrap();
        db.query_one(sql, &[]).await.unwrap().get(0)
    })
}

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("pgopt-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn help_lists_the_commands() {
    let out = pgopt(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in [
        "demo",
        "proxy",
        "top",
        "advise",
        "config",
        "--config",
        "--version",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    let out = pgopt(&["--version"]);
    assert_eq!(
        text(&out.stdout).trim(),
        format!("pgopt {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_check_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pgopt.example.toml");
    let out = pgopt(&["config", "check", example]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).ends_with(": ok\n"));
}

#[test]
fn config_check_names_file_line_and_key() {
    let path = temp_file(
        "bad.toml",
        "[logging]\nlevel = \"info\"\n\n[demo]\nclients = 0\n",
    );
    let out = pgopt(&["config", "check", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{}:5: demo.clients: expected an integer from 1 to 256, found 0\n",
            path.display()
        )
    );
}

/// `config check` refuses what `pgopt proxy` refuses, with the file and line:
/// checks made after parsing (a database named twice), TLS files, and the
/// environment's overrides. Before, it printed some of these without a location and
/// passed the others, which the proxy then refused at start.
#[test]
fn config_check_refuses_what_the_proxy_refuses_with_its_line() {
    let upstream = "upstream = \"postgres://app@127.0.0.1:5432/app\"\n";
    let cases = [
        (
            "[[proxy.databases]]\nname = \"a\"\n{u}[[proxy.databases]]\nname = \"a\"\n{u}",
            ":4: proxy.databases[1]: a database named \"a\" is already configured",
        ),
        (
            "[proxy]\n{u}tls_mode = \"require\"\n",
            ":3: proxy.tls_mode: TLS: TLS to clients needs a certificate file",
        ),
        (
            "[proxy]\n{u}tls_mode = \"require\"\ntls_cert_file = \"/nonexistent/c.pem\"\n\
             tls_key_file = \"/nonexistent/k.pem\"\n",
            ":3: proxy.tls_mode: TLS: reading certificates from /nonexistent/c.pem",
        ),
        (
            "[proxy]\n{u}server_tls_mode = \"verify-full\"\n",
            ":3: proxy.server_tls_mode: TLS: server_tls_mode VerifyFull needs a CA file",
        ),
        (
            "[proxy]\n{u}auth = \"cert\"\n",
            ":3: proxy.auth: configuration: the cert method and the clientcert option need TLS",
        ),
        (
            "[proxy]\n{u}auth = \"md5\"\nusers = [ { name = \"a\", password = \"SCRAM-SHA-256$x\" } ]\n",
            ":4: proxy.users: authentication: invalid stored password",
        ),
    ];
    for (i, (config, want)) in cases.into_iter().enumerate() {
        let path = temp_file(
            &format!("refused{i}.toml"),
            &config.replace("{u}", upstream),
        );
        let out = pgopt(&["config", "check", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(out.status.code(), Some(1), "{config}");
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!("{}{want}", path.display())),
            "{err}"
        );
    }
    let path = temp_file("overridden.toml", &format!("[proxy]\n{upstream}"));
    let out = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["config", "check", path.to_str().unwrap()])
        .env("PGOPT_PROXY__DEFAULT_POOL_SIZE", "many")
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "environment variable PGOPT_PROXY__DEFAULT_POOL_SIZE: proxy.default_pool_size"
        ),
        "{err}"
    );
}

#[test]
fn a_bad_config_stops_any_command_with_one_line() {
    let path = temp_file("typo.toml", "[demo]\nscael = 1\n");
    let out = pgopt(&["--config", path.to_str().unwrap(), "demo", "--no-wait"]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2: demo.scael: unknown key `scael`",
            path.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_bad_environment_override_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["config", "print"])
        .env("PGOPT_DEMO__DURATION", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "environment variable PGOPT_DEMO__DURATION: demo.duration: expected a duration"
        ),
        "{err}"
    );
}

#[test]
fn a_non_utf8_environment_value_is_an_error_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["config", "print"])
        .env("PGOPT_DEMO__SEED", std::ffi::OsStr::from_bytes(b"\xff\xfe"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "environment variable PGOPT_DEMO__SEED: demo.seed: the value is not valid UTF-8"
        ),
        "{err}"
    );
}

#[test]
fn config_print_shows_environment_overrides() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["config", "print"])
        .env("PGOPT_DEMO__SEED", "1234")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("seed = 1234"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn advise_recommends_indexes_writes_a_migration_and_applies_only_when_asked() {
    let pg = pgopt_embedded::Postgres::builder()
        .start_blocking()
        .unwrap();
    let url = pg.url("postgres");
    pg.psql(
        "CREATE TABLE events (id int PRIMARY KEY, account int, kind text, at timestamptz);
         INSERT INTO events SELECT i, i % 300, 'k' || (i % 7), now() - i * interval '1 minute'
           FROM generate_series(1, 60000) i;
         ANALYZE events;",
    )
    .unwrap();
    let workload = temp_file(
        "workload.sql",
        "SELECT id, at FROM events WHERE account = 12 ORDER BY at DESC LIMIT 20;\n\
         SELECT count(*) FROM events WHERE account = 40 AND kind = 'k3';\n",
    );
    let migration = std::env::temp_dir().join(format!("pgopt-cli-{}-m.sql", std::process::id()));
    let indexes =
        "SELECT count(*) FROM pg_index WHERE indrelid = 'events'::regclass AND indisvalid";
    let count = |pg: &pgopt_embedded::Postgres| scalar(pg, indexes);
    let before = count(&pg);
    let out = pgopt(&[
        "advise",
        &url,
        "--only",
        "indexes",
        "--workload",
        workload.to_str().unwrap(),
        "--migration",
        migration.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("CREATE INDEX CONCURRENTLY IF NOT EXISTS events_account_at_idx ON public.events (account, at)"),
        "{stdout}"
    );
    assert!(stdout.contains("Workload cost "), "{stdout}");
    let file = std::fs::read_to_string(&migration).unwrap();
    assert!(file.contains("-- events_account_at_idx (~"), "{file}");
    assert!(
        file.contains("--   SELECT id, at FROM events WHERE account = 12"),
        "{file}"
    );
    // Nothing built without --apply.
    assert_eq!(count(&pg), before);

    // The migration runs as written, with psql -f (autocommit).
    let psql = std::process::Command::new(pg.binaries().program("psql"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&migration)
        .arg(&url)
        .output()
        .unwrap();
    assert!(psql.status.success(), "{}", text(&psql.stderr));
    assert!(count(&pg) > before);
    pg.psql("DROP INDEX events_account_at_idx").unwrap();

    // --apply builds them, valid, and a second run has nothing left to propose.
    let out = pgopt(&[
        "advise",
        &url,
        "--only",
        "indexes",
        "--workload",
        workload.to_str().unwrap(),
        "--apply",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("done: CREATE INDEX CONCURRENTLY"));
    assert!(count(&pg) > before);
    let out = pgopt(&[
        "advise",
        &url,
        "--only",
        "indexes",
        "--workload",
        workload.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["indexes"]["recommendations"].as_array().map(Vec::len),
        Some(0),
        "{json:#}"
    );

    // Asked for explicitly, a missing workload is an error.
    let out = pgopt(&["advise", &url, "--only", "indexes"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pg_stat_statements is not installed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn advise_reports_findings_and_fails_ci_on_critical_ones() {
    let pg = pgopt_embedded::Postgres::builder()
        .start_blocking()
        .unwrap();
    let url = pg.url("postgres");
    let out = pgopt(&["advise", &url, "--fail-on", "critical"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("No findings: "),
        "{}",
        text(&out.stdout)
    );

    pg.psql("CREATE SEQUENCE almost_out MAXVALUE 100; SELECT setval('almost_out', 99); CREATE TABLE nopk (x int)")
        .unwrap();
    let out = pgopt(&["advise", &url, "--fail-on", "critical"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("[critical] sequence_near_max: public.almost_out"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[warning] no_primary_key: public.nopk"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fix: ALTER SEQUENCE public.almost_out"),
        "{stdout}"
    );
    // Warnings alone pass a critical gate; JSON for machines.
    pg.psql("DROP SEQUENCE almost_out").unwrap();
    let out = pgopt(&["advise", &url, "--fail-on", "critical", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("\"check\": \"no_primary_key\""),
        "{}",
        text(&out.stdout)
    );
    let out = pgopt(&[
        "advise",
        &url,
        "--fail-on",
        "warning",
        "--format",
        "markdown",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("| warning | no_primary_key | public.nopk |"));

    let out = pgopt(&["advise", "postgres://nobody@127.0.0.1:1/x"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("connecting to the database"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn demo_reports_a_port_clash_in_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = pgopt(&["demo", "--port", &port, "--no-wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pgopt: error: starting the embedded PostgreSQL: port"),
        "{err}"
    );
    assert!(
        last.contains(&port) && last.contains("already in use"),
        "{err}"
    );
}

#[test]
fn demo_without_postgres_binaries_says_what_to_install() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["demo", "--no-wait"])
        .env("PGOPT_PG_BINDIR", "/nonexistent/bin")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("apt-get install postgresql-15"), "{err}");
}

#[test]
fn demo_rejects_bad_flags() {
    let out = pgopt(&["demo", "--scale", "0", "--no-wait"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("expected a scale above 0"));
    let out = pgopt(&["demo", "--duration", "ages", "--no-wait"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("expected a duration"));
}

#[test]
fn demo_runs_end_to_end_on_a_real_postgres() {
    let out = pgopt(&[
        "demo",
        "--scale",
        "0.01",
        "--duration",
        "2s",
        "--clients",
        "2",
        "--replicas",
        "1",
        "--no-wait",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("Loaded "), "{stdout}");
    assert!(stdout.contains("psql -h 127.0.0.1 -p "), "{stdout}");
    let workload = stdout
        .lines()
        .find(|l| l.starts_with("Workload:"))
        .expect("a workload line");
    // "Workload: 2 clients for 2.0 s: 1,234 queries (617/s), 0 errors"
    let queries: u64 = workload
        .split(": ")
        .nth(2)
        .and_then(|s| s.split_whitespace().next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .expect("a query count");
    assert!(queries > 0, "{workload}");
    assert!(workload.ends_with(" 0 errors"), "{workload}");
    // The same workload through the pgopt proxy (transaction pooling, prepared statements).
    let proxied = stdout
        .lines()
        .find(|l| l.starts_with("Through pgopt: "))
        .expect("a line for the run through pgopt");
    assert!(proxied.ends_with(" 0 errors"), "{proxied}");
    assert!(
        stdout.contains("pgopt / direct, this run: throughput"),
        "{stdout}"
    );
    // With a replica the workload's reads are split (SHOW REPLICAS).
    let replica = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("replica "))
        .expect("a replica line in the read/write split");
    let reads: u64 = replica
        .split("reads")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a read count");
    assert!(reads > 0, "{replica}");
    assert!(stdout.contains("p99 ms"), "{stdout}");
    // Query insight: the busiest shapes with their percentiles, and the N+1 count (the
    // sample workload has one: a user lookup per task of a list).
    assert!(
        stdout.contains("Busiest query shapes through pgopt"),
        "{stdout}"
    );
    assert!(stdout.contains("SELECT "), "{stdout}");
    let findings: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("N+1 findings (SHOW NPLUS1): "))
        .and_then(|n| n.trim().parse().ok())
        .expect("an N+1 findings line");
    assert!(findings >= 1, "{stdout}");
    // "  18 × SELECT id, name, email FROM users WHERE id = $1 (transaction) from …"
    let finding = stdout
        .lines()
        .find(|l| l.contains(" × SELECT id, name, email FROM users WHERE id = $1"))
        .expect("the per-task user lookup as a finding");
    assert!(finding.contains("(transaction)"), "{finding}");
    let count: u64 = finding
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a finding's count");
    assert!(count >= 10, "{finding}");
    // A third run through pgopt with the result cache, and what the cache did.
    let cached = stdout
        .lines()
        .find(|l| l.starts_with("Through pgopt with the result cache: "))
        .expect("a line for the run with the cache");
    assert!(cached.ends_with(" 0 errors"), "{cached}");
    let cache = stdout
        .lines()
        .find(|l| l.starts_with("Result cache (SHOW CACHE): hit ratio "))
        .expect("the cache's figures");
    let hits: u64 = cache
        .split(", ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a hit count");
    assert!(hits > 0, "{cache}");
}

#[test]
fn ctrl_c_stops_the_demo_and_deletes_its_database() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    /// Kills the demo if an assertion fails first, so it never waits for Ctrl-C forever.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_pgopt"))
            .args([
                "demo",
                "--scale",
                "0.01",
                "--duration",
                "1s",
                "--clients",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut data_dir = None;
    let mut waiting = false;
    for line in BufReader::new(child.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // "PostgreSQL 15 on 127.0.0.1:PORT (files in DIR, deleted on exit)"
        if let Some(rest) = line.split("(files in ").nth(1) {
            data_dir = rest
                .strip_suffix(", deleted on exit)")
                .map(std::path::PathBuf::from);
        }
        if line.starts_with("Press Ctrl-C") {
            waiting = true;
            break;
        }
    }
    assert!(waiting, "the demo never reached its waiting state");
    let data_dir = data_dir.expect("the demo prints where its files are");
    assert!(data_dir.exists());
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGINT) };
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!data_dir.exists(), "{} left behind", data_dir.display());
}

#[test]
fn proxy_without_an_upstream_says_how_to_give_one() {
    let out = pgopt(&["proxy"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no upstream server: give --upstream postgres://"),
        "{err}"
    );
    let out = pgopt(&["proxy", "--upstream", "mysql://x/y"]);
    assert!(
        text(&out.stderr).contains("proxy.upstream: expected postgres://"),
        "{}",
        text(&out.stderr)
    );
}

/// `psql -XAtc SQL` through a proxy on `port` to database `db`, retried for up to 20 s
/// while the proxy starts.
fn psql_through(pg: &pgopt_embedded::Postgres, port: u16, db: &str, sql: &str) -> Output {
    let psql = pg.binaries().program("psql");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = Command::new(&psql)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", db, "-XAtc", sql])
            .output()
            .unwrap();
        let starting = text(&out.stderr).contains("Connection refused");
        if !starting || std::time::Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn proxy_quick_start_pools_a_real_server() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = runtime.block_on(pgopt_embedded::Postgres::start()).unwrap();
    let port = pgopt_embedded::free_port().unwrap();
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--upstream",
            &pg.url("postgres"),
            "--pool-mode",
            "transaction",
            "--pool-size",
            "2",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = psql_through(
        &pg,
        port,
        "postgres",
        "SELECT current_setting('application_name') || ' ' || \
         (SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid())",
    );
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(proxy.id() as libc::pid_t, libc::SIGTERM) };
    let status = proxy.wait().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The client's application_name follows it onto the proxy's server connection.
    assert_eq!(text(&out.stdout).trim(), "psql client backend");
    assert!(status.success(), "{status}");
}

#[test]
fn proxy_over_unix_sockets_both_ways() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = runtime.block_on(pgopt_embedded::Postgres::start()).unwrap();
    let port = pgopt_embedded::free_port().unwrap();
    let dir = std::env::temp_dir().join(format!("pgopt-cli-{}-sock", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The server through its socket directory, as libpq takes it in a URL.
    let upstream = format!(
        "postgres://postgres@/postgres?host={}&port={}",
        pg.socket_dir().display(),
        pg.port()
    );
    let proxy = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &upstream])
        .env("PGOPT_PROXY__UNIX_SOCKET_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _proxy = Killed(proxy);
    let socket = dir.join(format!(".s.PGSQL.{port}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        socket.exists(),
        "the proxy made no socket at {}",
        socket.display()
    );
    let out = Command::new(pg.binaries().program("psql"))
        .arg("-h")
        .arg(&dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-XAtc",
        ])
        .arg("SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "t");
    drop(_proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn proxy_names_the_line_of_a_bad_hba_file() {
    let rules = temp_file("hba.conf", "local all all peer\nhost all all all ident\n");
    let config = temp_file(
        "hba.toml",
        &format!(
            "[proxy]\nauth = \"hba\"\nauth_hba_file = \"{}\"\n",
            rules.display()
        ),
    );
    let upstream = ["--upstream", "postgres://app@127.0.0.1:1/app"];
    let out = pgopt(&[
        "--config",
        config.to_str().unwrap(),
        "proxy",
        upstream[0],
        upstream[1],
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let at = format!("{}:2: method \"ident\" is not supported", rules.display());
    assert!(err.contains(&at), "{err}");
    // `pgopt config check` reads the rules too.
    let out = pgopt(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&at), "{}", text(&out.stderr));
    let without = temp_file("hba-none.toml", "[proxy]\nauth = \"hba\"\n");
    let out = pgopt(&[
        "--config",
        without.to_str().unwrap(),
        "proxy",
        upstream[0],
        upstream[1],
    ]);
    let err = text(&out.stderr);
    // Named with the file and line of the key.
    let at = format!(
        "{}:2: proxy.auth: \"hba\" needs a file of rules",
        without.display()
    );
    assert!(err.contains(&at), "{err}");
    for path in [rules, config, without] {
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn proxy_logs_each_login_and_why_each_client_went() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = runtime.block_on(pgopt_embedded::Postgres::start()).unwrap();
    let port = pgopt_embedded::free_port().unwrap();
    let log =
        std::env::temp_dir().join(format!("pgopt-cli-{}-connections.log", std::process::id()));
    let proxy = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &pg.url("postgres")])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let proxy = Killed(proxy);
    let out = psql_through(&pg, port, "postgres", "SELECT 1");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = psql_through(&pg, port, "nope", "SELECT 1");
    assert!(!out.status.success());
    let wanted = [
        "login",
        "closing because: client close request",
        "closing because: database \"nope\" does not exist",
    ];
    let logged = |lines: &str, what: &str| {
        (lines.lines()).any(|l| l.contains("pgopt::connections") && l.contains(what))
    };
    // The proxy writes each line as its client goes (up to 10 s on a busy machine).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines = loop {
        let lines = std::fs::read_to_string(&log).unwrap();
        if wanted.iter().all(|w| logged(&lines, w)) || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(proxy);
    std::fs::remove_file(&log).unwrap();
    for what in wanted {
        assert!(logged(&lines, what), "no {what:?} in:\n{lines}");
    }
    // A log file gets plain text, no terminal colour codes.
    assert!(
        !lines.contains('\x1b'),
        "colour codes in a log file:\n{lines}"
    );
}

/// Kills a child process when dropped (an assertion failing first included).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn top_and_advise_read_the_query_shapes_of_a_running_proxy() {
    let pg = pgopt_embedded::Postgres::builder()
        .start_blocking()
        .unwrap();
    let port = pgopt_embedded::free_port().unwrap().to_string();
    let _proxy = Killed(
        Command::new(env!("CARGO_BIN_EXE_pgopt"))
            .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", &pg.url("postgres")])
            .env_remove("PGOPT_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let psql = |sql: &str| {
        Command::new(pg.binaries().program("psql"))
            .args([
                "-XAtq",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !psql("SELECT 1").status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for i in 0..5 {
        let out = psql(&format!(
            "SELECT count(*) FROM pg_class WHERE relpages > {i}"
        ));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = pgopt(&["top", "--port", &port, "--once"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("pgopt top — 127.0.0.1:"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("FROM pg_class WHERE relpages > $1"))
        .unwrap_or_else(|| panic!("no pg_class shape:\n{stdout}"));
    assert_eq!(line.split_whitespace().nth(1), Some("5"), "{line}");

    // The advisor takes the proxy's shapes as its workload.
    pg.psql(
        "CREATE TABLE events (id int PRIMARY KEY, account int);
         INSERT INTO events SELECT i, i % 500 FROM generate_series(1, 50000) i;
         ANALYZE events;",
    )
    .unwrap();
    for i in 0..5 {
        let out = psql(&format!("SELECT id FROM events WHERE account = {i}"));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = pgopt(&[
        "advise",
        &pg.url("postgres"),
        "--only",
        "indexes",
        "--insight",
        &format!("postgres://postgres@127.0.0.1:{port}/pgopt"),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("events_account_idx ON public.events (account)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("×5  SELECT id FROM events WHERE account = $1"),
        "{stdout}"
    );
}

#[test]
fn proxy_serves_each_database_of_the_config_from_its_own_upstream() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = runtime.block_on(pgopt_embedded::Postgres::start()).unwrap();
    pg.psql("CREATE DATABASE reports").unwrap();
    let port = pgopt_embedded::free_port().unwrap();
    let config = temp_file(
        "databases.toml",
        &format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"{}\"\ndefault_pool_size = 2\n\n\
             [[proxy.databases]]\nname = \"rep\"\nupstream = \"{}\"\npool_mode = \"session\"\npool_size = 3\n",
            pg.url("postgres"),
            pg.url("reports")
        ),
    );
    let _proxy = Killed(
        Command::new(env!("CARGO_BIN_EXE_pgopt"))
            .args(["--config", config.to_str().unwrap(), "proxy"])
            .env_remove("RUST_LOG")
            // The single-threaded event loop (the quick start test has one per core).
            .env("PGOPT_PROXY__WORKERS", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    for (db, expected) in [("postgres", "postgres"), ("rep", "reports")] {
        let out = psql_through(&pg, port, db, "SELECT current_database()");
        assert!(out.status.success(), "{db}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), expected);
    }
    // `rep` pools with its own mode and size, `postgres` with the proxy-wide ones.
    let out = psql_through(&pg, port, "pgopt", "SHOW DATABASES");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let databases = text(&out.stdout);
    let row = |name: &str| -> Vec<String> {
        databases
            .lines()
            .map(|l| l.split('|').map(str::to_string).collect::<Vec<_>>())
            .find(|cols| cols[0] == name)
            .unwrap_or_else(|| panic!("no {name} in SHOW DATABASES:\n{databases}"))
    };
    // name|host|port|database|force_user|pool_size|min_pool_size|reserve_pool|pool_mode|…
    assert_eq!(
        (&*row("rep")[5], &*row("rep")[8]),
        ("3", "session"),
        "{databases}"
    );
    assert_eq!(
        (&*row("postgres")[5], &*row("postgres")[8]),
        ("2", "transaction"),
        "{databases}"
    );
    // SHOW CONFIG's defaults are what `pgopt proxy` takes for what the file leaves out.
    let out = psql_through(&pg, port, "pgopt", "SHOW CONFIG");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    // (admin_users: left out, the upstream's user, which the file sets.)
    let set_here = ["listen", "default_pool_size", "workers", "admin_users"];
    for line in shown.lines() {
        let cols: Vec<&str> = line.split('|').collect();
        if let [key, value, default, _] = cols[..] {
            if !set_here.contains(&key) {
                assert_eq!(value, default, "SHOW CONFIG {key}:\n{shown}");
            }
        }
    }
    let out = psql_through(&pg, port, "reports", "SELECT 1");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("database \"reports\" does not exist"),
        "only the configured names are served: {}",
        text(&out.stderr)
    );

    // A name given twice is refused at start, naming the entry.
    let twice = temp_file(
        "databases-twice.toml",
        &format!(
            "[proxy]\nupstream = \"{}\"\n\n[[proxy.databases]]\nupstream = \"{}\"\n",
            pg.url("postgres"),
            pg.url("postgres")
        ),
    );
    let out = pgopt(&["--config", twice.to_str().unwrap(), "proxy"]);
    assert_eq!(out.status.code(), Some(1));
    let at = format!(
        "{}:4: proxy.databases[0]: a database named \"postgres\" is already configured",
        twice.display()
    );
    assert!(text(&out.stderr).contains(&at), "{}", text(&out.stderr));
    // A user listed twice too.
    let users_twice = temp_file(
        "users-twice.toml",
        &format!(
            "[proxy]\nupstream = \"{}\"\n\n[[proxy.users]]\nname = \"u\"\npassword = \"a\"\n\n\
             [[proxy.users]]\nname = \"u\"\npassword = \"b\"\n",
            pg.url("postgres")
        ),
    );
    let out = pgopt(&["--config", users_twice.to_str().unwrap(), "proxy"]);
    assert_eq!(out.status.code(), Some(1));
    let at = format!(
        "{}:8: proxy.users[1]: user \"u\" is already listed",
        users_twice.display()
    );
    assert!(text(&out.stderr).contains(&at), "{}", text(&out.stderr));
    std::fs::remove_file(&users_twice).unwrap();
    // The admin console's name is refused too, and replicas need a database.
    let admin = temp_file(
        "databases-admin.toml",
        &format!(
            "[[proxy.databases]]\nname = \"pgopt\"\nupstream = \"{}\"\n",
            pg.url("postgres")
        ),
    );
    let out = pgopt(&["--config", admin.to_str().unwrap(), "proxy"]);
    assert!(
        text(&out.stderr).contains("proxy.databases[0]: the name \"pgopt\" is the admin console's"),
        "{}",
        text(&out.stderr)
    );
    // The fallback database takes the client's database name, and no replicas.
    let fallback = temp_file(
        "databases-fallback.toml",
        &format!(
            "[[proxy.databases]]\nname = \"*\"\nupstream = \"{}\"\n",
            pg.url("postgres")
        ),
    );
    let out = pgopt(&["--config", fallback.to_str().unwrap(), "proxy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "proxy.databases[0].upstream: the fallback database \"*\" serves each client the \
             database of the name it asked for; leave the database out of the URL"
        ),
        "{}",
        text(&out.stderr)
    );
    let fallback_replicas = temp_file(
        "databases-fallback-replicas.toml",
        "[[proxy.databases]]\nname = \"*\"\nupstream = \"postgres://app@127.0.0.1:5432\"\n\
         replicas = [{ host = \"127.0.0.1\", port = 5433 }]\n",
    );
    let out = pgopt(&["--config", fallback_replicas.to_str().unwrap(), "proxy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "proxy.databases[0].replicas: the fallback database \"*\" cannot have replicas"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = pgopt(&["proxy", "--replica", "127.0.0.1:5432"]);
    assert!(
        text(&out.stderr).contains("replicas without proxy.upstream"),
        "{}",
        text(&out.stderr)
    );
    for file in [config, twice, admin, fallback, fallback_replicas] {
        let _ = std::fs::remove_file(file);
    }
}

/// psql through the proxy at `port` as `user` with `password`; its output or error.
fn psql_as(
    pg: &pgopt_embedded::Postgres,
    port: u16,
    user: &str,
    password: &str,
) -> Result<String, String> {
    let out = Command::new(pg.binaries().program("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(["-d", "postgres", "-XAtc", "SELECT 42"])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(text(&out.stdout).trim().to_string())
    } else {
        Err(text(&out.stderr))
    }
}

#[test]
fn proxy_takes_pgbouncers_auth_file_and_rereads_it_on_sighup() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = runtime.block_on(pgopt_embedded::Postgres::start()).unwrap();
    // bob's entry is an md5 hash, as PgBouncer users generate them from pg_shadow.
    let bob_md5: String = runtime.block_on(async {
        let db = pg.connect("postgres").await.unwrap();
        let row = db
            .query_one("SELECT 'md5' || md5('bob-secret' || 'bob')", &[])
            .await
            .unwrap();
        row.get(0)
    });
    let users = temp_file(
        "userlist.txt",
        &format!("; from pg_shadow\n\"alice\" \"alice-secret\"\n\"bob\" \"{bob_md5}\"\n"),
    );
    let config = temp_file(
        "auth-file.toml",
        &format!(
            "[proxy]\nauth = \"md5\"\nauth_file = \"{}\"\n",
            users.display()
        ),
    );
    let port = pgopt_embedded::free_port().unwrap();
    let upstream = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
    let proxy = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["--config", config.to_str().unwrap()])
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &upstream])
        .env_remove("PGOPT_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = proxy.id();
    let _proxy = Killed(proxy);
    // Until it listens, then each user of the file with its password.
    let until = |what: &str, check: &dyn Fn() -> Result<String, String>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match check() {
                Ok(out) => return out,
                Err(e) if std::time::Instant::now() > deadline => panic!("{what}: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    };
    let alice = until("alice logs in", &|| {
        psql_as(&pg, port, "alice", "alice-secret")
    });
    assert_eq!(alice, "42");
    assert_eq!(psql_as(&pg, port, "bob", "bob-secret").unwrap(), "42");
    let wrong = psql_as(&pg, port, "alice", "bob-secret").unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    let unknown = psql_as(&pg, port, "carol", "carol-secret").unwrap_err();
    assert!(
        unknown.contains("password authentication failed"),
        "{unknown}"
    );

    // A user added to the file logs in after SIGHUP, as with PgBouncer.
    std::fs::write(
        &users,
        format!("\"alice\" \"alice-secret\"\n\"bob\" \"{bob_md5}\"\n\"carol\" \"carol-secret\"\n"),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let carol = until("carol logs in after SIGHUP", &|| {
        psql_as(&pg, port, "carol", "carol-secret")
    });
    assert_eq!(carol, "42");
    drop(_proxy);

    // A broken line is named, by the proxy and by `pgopt config check`.
    std::fs::write(&users, "\"alice\" \"alice-secret\"\nbob secret\n").unwrap();
    let at = format!(
        "{}:2: the user name must be in double quotes",
        users.display()
    );
    let out = pgopt(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&at), "{}", text(&out.stderr));
    let out = pgopt(&[
        "--config",
        config.to_str().unwrap(),
        "proxy",
        "--upstream",
        &upstream,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&at), "{}", text(&out.stderr));
    // A user in the file and in [[proxy.users]] is ambiguous: refused.
    std::fs::write(&users, "\"alice\" \"alice-secret\"\n").unwrap();
    let both = temp_file(
        "auth-file-both.toml",
        &format!(
            "[proxy]\nauth_file = \"{}\"\n[[proxy.users]]\nname = \"alice\"\npassword = \"x\"\n",
            users.display()
        ),
    );
    let out = pgopt(&["config", "check", both.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("user \"alice\" has a password in [[proxy.users]] too"),
        "{err}"
    );
    for path in [users, config, both] {
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn a_pgbouncer_ini_converts_to_a_config_that_serves_its_users() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = runtime.block_on(pgopt_embedded::Postgres::start()).unwrap();
    let port = pgopt_embedded::free_port().unwrap();
    let users = temp_file("pgb-userlist.txt", "\"alice\" \"alice-secret\"\n");
    let ini = temp_file(
        "pgbouncer.ini",
        &format!(
            "; a PgBouncer deployment's file\n\
             [databases]\n\
             app = host=127.0.0.1 port={pg_port} dbname=postgres user=postgres pool_size=5\n\
             \"odd name\" = host=127.0.0.1 port={pg_port} dbname=postgres user=postgres\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = md5\n\
             auth_file = {users}\n\
             pool_mode = transaction\n\
             max_client_conn = 100\n\
             query_wait_timeout = 2.5\n\
             admin_users = alice\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = /var/log/pgbouncer/pgbouncer.log\n\
             \n\
             [users]\n\
             alice = max_user_connections=3\n",
            pg_port = pg.port(),
            users = users.display()
        ),
    );
    let out = pgopt(&["config", "from-pgbouncer", ini.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let converted = text(&out.stdout);
    assert!(
        converted.contains(&format!("listen = \"127.0.0.1:{port}\"")),
        "{converted}"
    );
    assert!(
        converted.contains("query_wait_timeout = \"2500ms\""),
        "{converted}"
    );
    // What is not carried over is said, with its line.
    let notes = text(&out.stderr);
    let at = |line: usize, key: &str| format!("{}:{line}: {key}: not carried over", ini.display());
    assert!(
        notes.contains(&at(16, "ignore_startup_parameters")),
        "{notes}"
    );
    assert!(notes.contains(&at(17, "logfile")), "{notes}");
    let config = temp_file("from-pgbouncer.toml", &converted);
    let check = pgopt(&["config", "check", config.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check.stderr));

    // The converted config serves the user list's users, and the admin console.
    let proxy = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["--config", config.to_str().unwrap(), "proxy"])
        .env_remove("PGOPT_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _proxy = Killed(proxy);
    let psql = |db: &str, sql: &str| {
        let out = Command::new(pg.binaries().program("psql"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "alice"])
            .args(["-d", db, "-XAtc", sql])
            .env("PGPASSWORD", "alice-secret")
            .output()
            .unwrap();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(text(&out.stderr))
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let answer = loop {
        match psql("app", "SELECT current_user") {
            Ok(out) => break out,
            Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    assert_eq!(answer.trim(), "postgres");
    assert_eq!(psql("odd name", "SELECT 1").unwrap().trim(), "1");
    let databases = psql("pgopt", "SHOW DATABASES").unwrap();
    assert!(databases.contains("odd name"), "{databases}");
    let users_view = psql("pgopt", "SHOW USERS").unwrap();
    assert!(
        users_view
            .lines()
            .any(|l| l.starts_with("alice|") && l.contains("|3|")),
        "{users_view}"
    );
    drop(_proxy);
    for path in [users, ini, config] {
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn config_check_names_the_line_of_a_bad_ident_file() {
    let maps = temp_file("ident.conf", "web www-data app\nweb /^(.*)$ \\1\n");
    let config = temp_file(
        "ident.toml",
        &format!("[proxy]\nauth_ident_file = \"{}\"\n", maps.display()),
    );
    let out = pgopt(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let at = format!("{}:2: regular expressions", maps.display());
    assert!(err.contains(&at), "{err}");
    std::fs::write(&maps, "web www-data app\n").unwrap();
    let out = pgopt(&["config", "check", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // An hba rule naming a map the file lacks: check says so, as the start would.
    let rules = temp_file(
        "ident-hba.conf",
        "local all all peer map=web\nlocal all all peer map=other\n",
    );
    std::fs::write(
        &config,
        format!(
            "[proxy]\nauth = \"hba\"\nauth_hba_file = \"{}\"\nauth_ident_file = \"{}\"\n",
            rules.display(),
            maps.display()
        ),
    )
    .unwrap();
    let out = pgopt(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let at = format!(
        "{}:2: map \"other\" is not in proxy.auth_ident_file",
        rules.display()
    );
    assert!(err.contains(&at), "{err}");
    for path in [maps, config, rules] {
        std::fs::remove_file(path).unwrap();
    }
}

/// `pgopt proxy` whose stdout and stderr are pipes nobody reads any more (`pgopt proxy
/// | head -1`, a log collector gone) keeps serving, and stops on SIGTERM: a line it
/// cannot write is dropped, never a panic that leaves the process hung.
#[test]
fn proxy_with_its_output_closed_serves_and_stops_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = runtime.block_on(pgopt_embedded::Postgres::start()).unwrap();
    let port = pgopt_embedded::free_port().unwrap();
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &pg.url("postgres")])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads them: every write from now on fails with EPIPE.
    drop(proxy.stdout.take());
    drop(proxy.stderr.take());
    for _ in 0..2 {
        let out = psql_through(&pg, port, "postgres", "SELECT 41 + 1");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "42");
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(proxy.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = proxy.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = proxy.kill();
            panic!("pgopt proxy did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// A command whose whole purpose is its output fails when the output can't be written
/// (a full disk), and says so; a reader that left (`| head`) ends it quietly.
#[test]
fn config_print_to_a_full_disk_fails_and_to_a_closed_pipe_ends_quietly() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["config", "print"])
        .env_remove("PGOPT_CONFIG")
        .stdout(full)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("writing the output"),
        "{}",
        text(&out.stderr)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["config", "print"])
        .env_remove("PGOPT_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

/// A user name with a line break, refused by the hba rules before any password: the
/// log line of the refusal keeps it on one line (escaped), so a client can't forge a
/// line of the log (a fake login) with its name.
#[test]
fn a_refused_name_with_a_line_break_forges_no_log_line() {
    use std::io::{Read, Write};
    let rules = temp_file("forge.hba", "host app all 127.0.0.1/32 trust\n");
    let config = temp_file(
        "forge.toml",
        &format!(
            "[proxy]\nauth = \"hba\"\nauth_hba_file = \"{}\"\n",
            rules.display()
        ),
    );
    let (proxy, port, log) = logged_proxy(&config, "forge");
    let forged = "FORGED pgopt::connections: login user=\"postgres\"";
    let user = format!("x\n{forged}");
    let body = format!("\0\x03\0\0user\0{user}\0database\0nodb\0\0");
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body.as_bytes());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    stream.write_all(&startup).unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    let lines = log_until(&log, |lines| lines.contains("no auth_hba_file entry"));
    drop(proxy);
    for path in [rules, config, log] {
        let _ = std::fs::remove_file(path);
    }
    assert!(lines.contains("no auth_hba_file entry"), "{lines}");
    assert!(
        !lines.lines().any(|l| l.starts_with("FORGED")),
        "a forged line:\n{lines}"
    );
}

/// Redis that can't be reached (nothing listens) is a warning in the log at the
/// default level, naming why: the shared cache serves nothing meanwhile. Before, the
/// failures were logged at debug only, and a wrong password turned the cache off
/// unseen.
#[test]
fn a_redis_that_cannot_be_reached_is_a_warning() {
    let redis_port = pgopt_embedded::free_port().unwrap();
    let config = temp_file(
        "redis-down.toml",
        &format!(
            "[cache]\nenabled = true\ntables = [\"t\"]\n\n[cache.redis]\nurl = \"redis://127.0.0.1:{redis_port}\"\n"
        ),
    );
    let (proxy, _, log) = logged_proxy(&config, "redis");
    let warned = |lines: &str| {
        lines
            .lines()
            .any(|l| l.contains("WARN") && l.contains("connecting to Redis failed"))
    };
    let lines = log_until(&log, warned);
    drop(proxy);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&config);
    assert!(warned(&lines), "{lines}");
}

/// `pgopt proxy` with `config`, on a free port, in front of a server that isn't there,
/// its log (stderr) written to a file named for `what`: the process (killed when
/// dropped), its port and the log's path.
fn logged_proxy(config: &std::path::Path, what: &str) -> (Killed, u16, std::path::PathBuf) {
    let port = pgopt_embedded::free_port().unwrap();
    let log = std::env::temp_dir().join(format!("pgopt-cli-{}-{what}.log", std::process::id()));
    let proxy = Command::new(env!("CARGO_BIN_EXE_pgopt"))
        .args(["--config", config.to_str().unwrap()])
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", "postgres://app@127.0.0.1:1/app"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Killed(proxy), port, log)
}

/// The log at `path` once `done` says so of it, or after 10 s.
fn log_until(path: &std::path::Path, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines = std::fs::read_to_string(path).unwrap();
        if done(&lines) || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
