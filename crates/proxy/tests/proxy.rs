//! The proxy with real clients (tokio-postgres, psql, pgbench) against a real PostgreSQL.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{code, config_for, connect, message, pgbench_init, raw_login, read_until, run, start};
use pgopt_embedded::{HostAuth, Postgres};
use pgopt_proxy::{ClientAuth, PoolMode, Proxy, User};
use tokio_postgres::NoTls;

#[tokio::test]
async fn transaction_mode_serves_many_clients_on_few_server_connections() {
    let pg = Postgres::start().await.unwrap();
    pg.connect("postgres")
        .await
        .unwrap()
        .batch_execute("CREATE TABLE hits (client int, n int)")
        .await
        .unwrap();
    let proxy = Proxy::start(config_for(&pg, PoolMode::Transaction, 2))
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for c in 0..20 {
        let client = connect(&proxy, "postgres", None).await.unwrap();
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                client
                    .batch_execute(&format!(
                        "BEGIN; INSERT INTO hits VALUES ({c}, {n}); COMMIT"
                    ))
                    .await
                    .unwrap();
                let rows = client.simple_query("SELECT 1").await.unwrap();
                assert!(!rows.is_empty());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let direct = pg.connect("postgres").await.unwrap();
    let count: i64 = direct
        .query_one("SELECT count(*) FROM hits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 200);
    let backends = pgopt_backends(&direct).await;
    assert!(
        backends <= 2,
        "{backends} server connections for a pool of 2"
    );
}

#[tokio::test]
async fn extended_protocol_with_parameters_and_rows() {
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    for i in 0..50i32 {
        let row = client
            .query_one("SELECT $1::int + 1, $2::text", &[&i, &"x"])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        assert_eq!(row.get::<_, &str>(1), "x");
    }
    let rows = client
        .query("SELECT g FROM generate_series(1, 10000) g", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 10000);
}

#[tokio::test]
async fn an_error_inside_a_transaction_and_the_rollback_after_it() {
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let err = client
        .batch_execute("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("42P01"));
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), Some("25P02"), "the transaction is aborted");
    client.batch_execute("ROLLBACK").await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn transaction_mode_keeps_a_transaction_on_one_server_connection() {
    let (_pg, proxy) = start(PoolMode::Transaction, 2).await;
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let pid_a1: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // b runs meanwhile: it must get the other connection.
    let pid_b: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let pid_a2: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(pid_a1, pid_a2);
    assert_ne!(pid_a1, pid_b);
}

#[tokio::test]
async fn session_mode_keeps_settings_and_resets_them_for_the_next_client() {
    let (_pg, proxy) = start(PoolMode::Session, 1).await;
    let a = connect(&proxy, "postgres", None).await.unwrap();
    a.batch_execute("SET application_name = 'client-a'")
        .await
        .unwrap();
    let name: String = a
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "client-a");
    drop(a);
    // The one server connection comes back after DISCARD ALL.
    let b = connect(&proxy, "postgres", None).await.unwrap();
    let name: String = b
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "pgopt", "session state leaked to the next client");
    drop(b);
    // SET … TO DEFAULT goes back to the client's start-up value, as RESET does.
    let c = connect_with_options(&proxy, "-c work_mem=7MB").await;
    for sql in ["SET work_mem TO DEFAULT", "RESET work_mem"] {
        c.batch_execute("SET work_mem = '3MB'").await.unwrap();
        c.batch_execute(sql).await.unwrap();
        assert_eq!(show(&c, "work_mem").await, "7MB", "{sql}");
    }
}

#[tokio::test]
async fn scram_and_md5_logins_and_a_wrong_password() {
    let pg = Postgres::builder()
        .password("serverpw", HostAuth::ScramSha256)
        .start()
        .await
        .unwrap();
    for auth in [ClientAuth::ScramSha256, ClientAuth::Md5] {
        let mut config = config_for(&pg, PoolMode::Transaction, 2);
        config.client_auth = auth;
        config.users = vec![User::new("postgres", "clientpw")];
        let proxy = Proxy::start(config).await.unwrap();
        let ok = connect(&proxy, "postgres", Some("clientpw")).await.unwrap();
        ok.batch_execute("SELECT 1").await.unwrap();
        let err = connect(&proxy, "postgres", Some("wrong"))
            .await
            .expect_err("wrong password accepted");
        assert_eq!(code(&err), Some("28P01"), "{auth:?}: {err}");
        let err = connect(&proxy, "nobody", Some("clientpw"))
            .await
            .expect_err("unknown user accepted");
        assert_eq!(code(&err), Some("28P01"), "{auth:?}: {err}");
    }
}

#[tokio::test]
async fn an_unknown_database_is_3d000() {
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.local_addr().port())
        .user("postgres")
        .dbname("nope");
    let Err(err) = config.connect(NoTls).await else {
        panic!("unknown database accepted");
    };
    assert_eq!(code(&err), Some("3D000"));
}

#[tokio::test]
async fn a_dead_server_gives_clients_08006_and_the_proxy_recovers() {
    let mut pg = Postgres::start().await.unwrap();
    let proxy = Proxy::start(config_for(&pg, PoolMode::Transaction, 2))
        .await
        .unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    pg.stop();
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert!(
        matches!(code(&err), Some("08006") | Some("57P01")) || err.is_closed(),
        "{err}"
    );
    // A new client learns it at login or, when the pool knows the server's parameters
    // already, at its first query: either way as 08006, not a dropped socket.
    let err = match connect(&proxy, "postgres", None).await {
        Err(e) => e,
        Ok(c) => c.batch_execute("SELECT 1").await.unwrap_err(),
    };
    assert_eq!(code(&err), Some("08006"), "{err}");
    pg.restart().unwrap();
    // Within the circuit breaker's backoff clients still hear 08006 at once; the pool
    // probes the server in the background and recovers on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let attempt = match connect(&proxy, "postgres", None).await {
            Ok(c) => c.batch_execute("SELECT 1").await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(code(&e), Some("08006"), "{e}");
                assert!(std::time::Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// `SELECT pg_sleep(20)` through `client`, cancelled with its cancel token once the
/// server runs it: 57014, well before the sleep would end.
async fn sleep_is_cancelled(pg: &Postgres, client: &tokio_postgres::Client) {
    let token = client.cancel_token();
    let watcher = pg.connect("postgres").await.unwrap();
    let canceller = tokio::spawn(async move {
        common::wait_until_running(&watcher, "SELECT pg_sleep(20)").await;
        token.cancel_query(NoTls).await.unwrap();
    });
    let started = std::time::Instant::now();
    let err = client
        .batch_execute("SELECT pg_sleep(20)")
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert_eq!(code(&err), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn cancel_reaches_the_running_query() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    sleep_is_cancelled(&pg, &client).await;
    client.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_client_waiting_too_long_for_a_server_gets_57014() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 1);
    config.query_wait_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(config).await.unwrap();
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = connect(&proxy, "postgres", None).await.unwrap();
    let err = waiter.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), Some("57014"), "{err}");
    holder.batch_execute("COMMIT").await.unwrap();
}

/// As in PgBouncer, a `query_wait_timeout`, `server_connect_timeout` or
/// `server_idle_timeout` of 0 is no limit (a converted PgBouncer config has them), not
/// a wait that ends at once.
#[tokio::test]
async fn timeouts_of_zero_are_no_limit() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 1);
    config.query_wait_timeout = Duration::ZERO;
    config.server_connect_timeout = Duration::ZERO;
    config.server_idle_timeout = Duration::ZERO;
    let proxy = Proxy::start(config).await.unwrap();
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = connect(&proxy, "postgres", None).await.unwrap();
    let waiting = tokio::spawn(async move { waiter.batch_execute("SELECT 1").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    holder.batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap().unwrap();
    // The idle connection is not closed for its idle time either.
    let pid = "SELECT pg_backend_pid()";
    let before: i32 = holder.query_one(pid, &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after: i32 = holder.query_one(pid, &[]).await.unwrap().get(0);
    assert_eq!(before, after);
}

/// A client asking for protocol 3.2 with a protocol option hears, as from PostgreSQL,
/// NegotiateProtocolVersion (3.0, the option not recognised), then logs in on 3.0.
#[tokio::test]
async fn a_newer_minor_protocol_is_negotiated_down_to_3_0() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let body = b"\0\x03\0\x02user\0postgres\0database\0app\0_pq_.foo\0bar\0\0";
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    raw.write_all(&startup).await.unwrap();
    let mut head = [0u8; 5];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'v', "NegotiateProtocolVersion first");
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut rest = vec![0u8; len - 4];
    raw.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest[..8], &[0, 0, 0, 0, 0, 0, 0, 1], "3.0, one option");
    assert_eq!(&rest[8..], b"_pq_.foo\0");
    // The login goes on, and the option is not taken for a setting.
    read_until(&mut raw, b'Z').await;
    raw.write_all(&message(b'Q', b"SELECT 1\0")).await.unwrap();
    let types = read_until(&mut raw, b'Z').await;
    assert!(!types.contains(&b'E'), "{types:?}");
}

#[tokio::test]
async fn a_malformed_message_closes_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_pg, proxy) = start(PoolMode::Transaction, 2).await;
    let good = connect(&proxy, "postgres", None).await.unwrap();

    let mut raw = raw_login(&proxy).await;
    raw.write_all(b"Q\0\0\0\x02garbage").await.unwrap(); // length below 4
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
        .await
        .expect("connection not closed");
    assert_eq!(rest.first(), Some(&b'E'), "an ErrorResponse before closing");

    // A statement name that is not UTF-8 (a LATIN1 client's é; its query text goes
    // through, see prepared.rs): the error says why.
    let mut raw = raw_login(&proxy).await;
    raw.write_all(&message(b'Q', b"SET client_encoding = 'LATIN1'\0"))
        .await
        .unwrap();
    read_until(&mut raw, b'Z').await;
    raw.write_all(&message(b'P', b"caf\xe9\0SELECT 1\0\0\0"))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
        .await
        .expect("connection not closed");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("must be ASCII"), "{text}");

    good.batch_execute("SELECT 1").await.unwrap();
}

/// Extended-protocol messages answered through a Flush, with no Sync yet, leave the
/// server in an implicit transaction: the connection stays with its client until the
/// Sync, and a client that leaves before it has its connection closed (the server rolls
/// back). Released earlier, the next client's statement on it would commit the first
/// one's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_without_sync_keeps_its_connection_and_its_write_is_rolled_back_if_the_client_leaves(
) {
    use tokio::io::AsyncWriteExt;
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql("CREATE TABLE t (a int)").unwrap();
    let insert = |sync: bool| {
        common::run_unnamed("INSERT INTO t VALUES (1)", if sync { b'S' } else { b'H' })
    };
    let port = proxy.local_addr().port();
    let count = || {
        tokio::spawn(async move {
            let client = common::connect_port(port, "postgres").await.unwrap();
            common::value(&client, "SELECT count(*) FROM t").await
        })
    };
    for leave in [true, false] {
        let mut raw = raw_login(&proxy).await;
        raw.write_all(&insert(false)).await.unwrap();
        assert_eq!(read_until(&mut raw, b'C').await, b"12C");
        // (A simple query pgopt answers itself ends the batch as PostgreSQL would: see
        // a_query_pgopt_answers_itself_ends_an_unsynced_batch_as_postgresql_would.)
        // The pool's one connection is in the open batch: another client waits.
        let other = count();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !other.is_finished(),
            "another client got the connection mid-batch"
        );
        if leave {
            drop(raw);
            assert_eq!(
                other.await.unwrap(),
                "0",
                "the departed client's write committed"
            );
        } else {
            raw.write_all(&message(b'S', b"")).await.unwrap();
            assert_eq!(read_until(&mut raw, b'Z').await, b"Z");
            assert_eq!(other.await.unwrap(), "1");
            // And the connection went back to the pool at the Sync's ReadyForQuery.
            raw.write_all(&insert(true)).await.unwrap();
            assert_eq!(read_until(&mut raw, b'Z').await, b"12CZ");
            assert_eq!(count().await.unwrap(), "2");
        }
    }
}

/// A cursor outside a transaction block, as node-postgres' pg-cursor reads one: Execute
/// with a row limit and a Flush, PortalSuspended, and again, the Sync only at the end.
/// The portal lives in the server's implicit transaction: another client's statement
/// must not run on that connection in between (it would end the transaction and the
/// portal with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_read_in_steps_before_its_sync_keeps_its_connection() {
    use tokio::io::AsyncWriteExt;
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let port = proxy.local_addr().port();
    let mut raw = raw_login(&proxy).await;
    let execute_one = || {
        let mut m = message(b'E', b"\0\0\0\0\x01");
        m.extend(message(b'H', b""));
        m
    };
    let mut open = message(b'P', b"\0SELECT generate_series(1, 3)\0\0\0");
    open.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    open.extend(execute_one());
    raw.write_all(&open).await.unwrap();
    assert_eq!(read_until(&mut raw, b's').await, b"12Ds");
    // Another client comes meanwhile: it waits for the Sync.
    let other = tokio::spawn(async move {
        let client = common::connect_port(port, "postgres").await.unwrap();
        common::value(&client, "SELECT 42").await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw.write_all(&execute_one()).await.unwrap();
    assert_eq!(
        read_until(&mut raw, b's').await,
        b"Ds",
        "the portal is gone"
    );
    let mut rest = message(b'E', b"\0\0\0\0\0");
    rest.extend(message(b'S', b""));
    raw.write_all(&rest).await.unwrap();
    assert_eq!(read_until(&mut raw, b'Z').await, b"DCZ");
    assert_eq!(other.await.unwrap(), "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_multi_statement_copy_in_and_out_and_large_objects() {
    let (pg, proxy) = start(PoolMode::Transaction, 2).await;
    let port = proxy.local_addr().port().to_string();
    let psql = pg.binaries().program("psql");
    let base = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "-d",
        "app",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
    ];
    let out = run(Command::new(&psql).args(base).args([
        "-At",
        "-c",
        "CREATE TABLE c (id int, note text); SELECT 'made'",
    ]));
    assert_eq!(out.trim(), "made");
    let mut child = Command::new(&psql)
        .args(base)
        .args(["-c", "COPY c FROM STDIN"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..5000 {
            writeln!(stdin, "{i}\tnote {i}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
    let out = run(Command::new(&psql)
        .args(base)
        .args(["-c", "COPY (SELECT * FROM c ORDER BY id) TO STDOUT"]));
    assert_eq!(out.lines().count(), 5000);
    assert_eq!(out.lines().last(), Some("4999\tnote 4999"));

    // Large objects: libpq's lo_* calls are FunctionCall messages, in a transaction
    // psql opens around them.
    let dir = std::env::temp_dir().join(format!("pgopt-lo-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, back) = (dir.join("in"), dir.join("out"));
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let out = run(Command::new(&psql)
        .args(base)
        .args(["-c", &format!("\\lo_import '{}'", file.display())])
        .args(["-c", "\\echo :LASTOID"]));
    let oid = out.trim().to_string();
    assert!(oid.parse::<u32>().is_ok_and(|oid| oid > 0), "{out}");
    run(Command::new(&psql)
        .args(base)
        .args(["-c", &format!("\\lo_export {oid} '{}'", back.display())]));
    assert!(
        std::fs::read(&back).unwrap() == bytes,
        "the large object differs"
    );
    run(Command::new(&psql)
        .args(base)
        .args(["-c", &format!("\\lo_unlink {oid}")]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_and_extended_through_the_proxy() {
    let (pg, proxy) = start(PoolMode::Transaction, 4).await;
    pgbench_init(&pg);
    let pgbench = pg.binaries().program("pgbench");
    let port = proxy.local_addr().port().to_string();
    for mode in ["simple", "extended"] {
        let out = run(Command::new(&pgbench).args([
            "-n",
            "-c",
            "8",
            "-j",
            "2",
            "-t",
            "200",
            "-M",
            mode,
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "app",
        ]));
        assert!(
            out.contains("number of transactions actually processed: 1600/1600"),
            "{mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
    }
}

/// `transaction_isolation` or `transaction_deferrable` as a start-up value:
/// PostgreSQL refuses the login (25001), and so does pgopt. Before, pgopt took the
/// client and applied it to none of its transactions.
#[tokio::test]
async fn transaction_isolation_at_start_up_is_refused_as_postgresql_refuses_it() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    for options in [
        "-c transaction_isolation=serializable",
        "-c transaction_deferrable=on",
    ] {
        let login = |port: u16, dbname: &'static str| async move {
            tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user("postgres")
                .dbname(dbname)
                .options(options)
                .connect(tokio_postgres::NoTls)
                .await
                .map(|_| ())
                .unwrap_err()
        };
        let direct = login(pg.port(), "postgres").await;
        let through = login(proxy.local_addr().port(), "app").await;
        for err in [&direct, &through] {
            assert_eq!(common::code(err), Some("25001"), "{err}");
            assert_eq!(err.as_db_error().unwrap().severity(), "FATAL");
        }
        assert_eq!(
            through.as_db_error().unwrap().message(),
            direct.as_db_error().unwrap().message()
        );
    }
    // The session characteristic is a start-up value PostgreSQL takes.
    let client =
        connect_with_options(&proxy, "-c default_transaction_isolation=serializable").await;
    assert_eq!(show(&client, "transaction_isolation").await, "serializable");
}

async fn connect_with_options(proxy: &Proxy, options: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.local_addr().port())
        .user("postgres")
        .dbname("app")
        .options(options)
        .application_name("opts-test")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A start-up value the server refuses (a bad value, a name it does not know, a
/// setting the user may not change) ends the session at the client's first request,
/// with the server's error, before the request runs: PostgreSQL refuses the login
/// itself. Before, pgopt logged the refusal and ran the session without the value.
#[tokio::test]
async fn a_start_up_value_the_server_refuses_ends_the_session_before_its_request_runs() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql("CREATE TABLE ran (n int); CREATE ROLE plain LOGIN")
        .unwrap();
    let options = [
        ("-c statement_timeout=abc", "postgres", "22023"),
        ("-c no_such_setting=1", "postgres", "42704"),
        ("-c default_tablespace=nosuch", "postgres", "22023"),
        ("-c max_connections=5", "postgres", "55P02"),
        ("-c log_statement=all", "plain", "42501"),
    ];
    // (Each twice: the server connection a value was refused on is closed with the
    // session, not lent again with a record that claims the value, which would spare
    // the next client the SET.)
    for (options, user, code) in options.into_iter().flat_map(|o| [o, o]) {
        let direct = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(pg.port())
            .user(user)
            .dbname("postgres")
            .options(options)
            .connect(tokio_postgres::NoTls)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(common::code(&direct), Some(code), "{options}: {direct}");
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(proxy.local_addr().port())
            .user(user)
            .dbname("app")
            .options(options)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let err = client
            .batch_execute("INSERT INTO ran VALUES (1)")
            .await
            .unwrap_err();
        assert_eq!(common::code(&err), Some(code), "{options}: {err}");
        let db = err.as_db_error().unwrap();
        assert_eq!(db.severity(), "FATAL", "{options}: {err}");
        assert_eq!(db.message(), direct.as_db_error().unwrap().message());
        assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    }
    // What PostgreSQL takes at login, though no SET can apply it there (a setting of
    // connection start only) or its SET would fail (a tablespace that does not exist,
    // which a start-up value may name): the session goes on without it, as before.
    for options in ["-c log_disconnections=on", "-c temp_tablespaces=nosuch"] {
        let direct = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(pg.port())
            .user("postgres")
            .dbname("postgres")
            .options(options)
            .connect(tokio_postgres::NoTls)
            .await;
        assert!(direct.is_ok(), "{options}");
        let client = connect_with_options(&proxy, options).await;
        assert_eq!(
            show(&client, "server_version_num").await.len(),
            6,
            "{options}"
        );
    }
    // Nothing ran, and the server connection serves the next client as it should.
    let next = connect(&proxy, "postgres", None).await.unwrap();
    let ran: i64 = next
        .query_one("SELECT count(*) FROM ran", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ran, 0);
    assert_eq!(show(&next, "statement_timeout").await, "0");
    // A value the server takes holds no request back for long: the client runs.
    let fine = connect_with_options(&proxy, "-c statement_timeout=5s").await;
    assert_eq!(show(&fine, "statement_timeout").await, "5s");
}

/// A notice the server gives pgopt's own query bringing a connection to a client's
/// settings (DEBUG messages of the RESET of `client_min_messages`, after a client
/// that set it to debug5 at start-up) is pgopt's: the client does not see it (before,
/// it came ahead of the answer to its first query).
#[tokio::test]
async fn notices_of_pgopts_own_settings_queries_stay_with_pgopt() {
    use tokio::io::AsyncWriteExt;
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let chatty = connect_with_options(&proxy, "-c client_min_messages=debug5").await;
    chatty.batch_execute("SELECT 1").await.unwrap();
    let mut raw = common::raw_login(&proxy).await;
    raw.write_all(&common::message(b'Q', b"SELECT 1\0"))
        .await
        .unwrap();
    let reply = common::read_until(&mut raw, b'Z').await;
    assert!(
        reply.ends_with(b"TDCZ") && !reply.contains(&b'N'),
        "{reply:?}"
    );
}

async fn show(client: &tokio_postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn transaction_mode_carries_startup_options_and_sets_across_server_connections() {
    // One server connection shared by three clients with different settings.
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let a = connect_with_options(&proxy, "-c search_path=alpha,public -c work_mem=7MB").await;
    let b = connect_with_options(&proxy, "-c search_path=beta").await;
    let plain = connect(&proxy, "postgres", None).await.unwrap();
    for _ in 0..3 {
        assert_eq!(show(&a, "search_path").await, "alpha,public");
        assert_eq!(show(&a, "work_mem").await, "7MB");
        assert_eq!(show(&b, "search_path").await, "beta");
        assert_eq!(show(&b, "work_mem").await, "4MB");
        assert_eq!(show(&plain, "search_path").await, "\"$user\", public");
        assert_eq!(show(&a, "application_name").await, "opts-test");
    }
    // Options split as PostgreSQL splits them: a backslash keeps the next character.
    let escaped = connect_with_options(&proxy, r"-c search_path=x\,\ y -c work_mem=5MB").await;
    assert_eq!(show(&escaped, "search_path").await, "x, y");
    assert_eq!(show(&escaped, "work_mem").await, "5MB");
    drop(escaped);
    // A SET outside a transaction follows its client only.
    b.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    assert_eq!(show(&plain, "statement_timeout").await, "0");
    assert_eq!(show(&b, "statement_timeout").await, "1234ms");
    // A failed SET changes nothing.
    assert!(b
        .batch_execute("SET statement_timeout = 'soon'")
        .await
        .is_err());
    assert_eq!(show(&a, "statement_timeout").await, "0");
    assert_eq!(show(&b, "statement_timeout").await, "1234ms");
    // RESET goes back to the start-up value; RESET ALL to all of them.
    a.batch_execute("SET search_path = public").await.unwrap();
    assert_eq!(show(&plain, "search_path").await, "\"$user\", public");
    assert_eq!(show(&a, "search_path").await, "public");
    a.batch_execute("RESET search_path").await.unwrap();
    assert_eq!(show(&b, "search_path").await, "beta");
    assert_eq!(show(&a, "search_path").await, "alpha,public");
    // SET … TO DEFAULT is a RESET, simple or extended (it was replayed as a SET of the
    // server's default).
    for (set, default) in [
        ("SET work_mem TO DEFAULT", "SET work_mem = DEFAULT"),
        ("SET SESSION work_mem = DEFAULT", "SET work_mem TO DEFAULT"),
    ] {
        a.batch_execute("SET work_mem = '3MB'").await.unwrap();
        a.batch_execute(set).await.unwrap();
        assert_eq!(show(&plain, "work_mem").await, "4MB");
        assert_eq!(show(&a, "work_mem").await, "7MB", "{set}");
        a.batch_execute("SET work_mem = '3MB'").await.unwrap();
        a.execute(default, &[]).await.unwrap();
        assert_eq!(show(&b, "work_mem").await, "4MB");
        assert_eq!(show(&a, "work_mem").await, "7MB", "{default}");
    }
    b.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(show(&a, "work_mem").await, "7MB");
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&b, "search_path").await, "beta");
    // A SET inside a transaction that rolls back is undone, as PostgreSQL undoes it;
    // one that commits stays. Simple and extended protocol alike.
    for commit in [false, true] {
        b.batch_execute("BEGIN").await.unwrap();
        b.batch_execute("SET work_mem = '9MB'").await.unwrap();
        b.execute("SET statement_timeout = '4321ms'", &[])
            .await
            .unwrap();
        assert_eq!(show(&b, "work_mem").await, "9MB");
        b.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .await
            .unwrap();
        let (work_mem, timeout) = if commit {
            ("9MB", "4321ms")
        } else {
            ("4MB", "0")
        };
        for _ in 0..2 {
            // Across server connections: the client's settings are what it expects.
            assert_eq!(show(&a, "work_mem").await, "7MB");
            assert_eq!(show(&b, "work_mem").await, work_mem, "commit {commit}");
            assert_eq!(
                show(&b, "statement_timeout").await,
                timeout,
                "commit {commit}"
            );
        }
    }
    // ROLLBACK TO SAVEPOINT undoes only the SETs made after the savepoint; what stays
    // follows the client, and nothing of it reaches the others on that connection.
    for sql in [
        "BEGIN",
        "SET work_mem = '11MB'",
        "SAVEPOINT s",
        "SET work_mem = '12MB'",
        "SET statement_timeout = '999ms'",
        "ROLLBACK TO SAVEPOINT s",
    ] {
        b.batch_execute(sql).await.unwrap();
    }
    assert_eq!(show(&b, "work_mem").await, "11MB");
    assert_eq!(show(&b, "statement_timeout").await, "4321ms");
    b.batch_execute("COMMIT").await.unwrap();
    for _ in 0..2 {
        assert_eq!(show(&b, "work_mem").await, "11MB");
        assert_eq!(show(&b, "statement_timeout").await, "4321ms");
        assert_eq!(show(&a, "work_mem").await, "7MB");
        assert_eq!(show(&plain, "work_mem").await, "4MB");
        assert_eq!(show(&plain, "statement_timeout").await, "0");
    }
    // A whole ROLLBACK after a ROLLBACK TO still restores the start of the transaction.
    for sql in [
        "BEGIN",
        "SAVEPOINT s",
        "SET work_mem = '13MB'",
        "ROLLBACK TO s",
        "SET work_mem = '14MB'",
        "ROLLBACK",
    ] {
        b.batch_execute(sql).await.unwrap();
    }
    for _ in 0..2 {
        assert_eq!(show(&b, "work_mem").await, "11MB");
        assert_eq!(show(&a, "work_mem").await, "7MB");
    }
}

/// `set_config(…, false)` (asyncpg runs one to turn jit off while it reads types)
/// follows its client as a SET does: read back from the server once it ran, whatever
/// value it computed, by a simple query or by each execution of a prepared
/// statement; undone by a rollback; never seen by another client of the connection.
#[tokio::test]
async fn set_config_for_the_session_follows_its_client() {
    // One server connection the two clients take turns on.
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    let user = "SELECT coalesce(current_setting('app.user', true), '')";
    a.query(
        "SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new",
        &[],
    )
    .await
    .unwrap();
    for _ in 0..2 {
        assert_eq!(show(&b, "jit").await, "on");
        assert_eq!(show(&a, "jit").await, "off");
    }
    // A value bound to a prepared statement, run twice.
    let set_user = a
        .prepare("SELECT set_config('app.user', $1, false)")
        .await
        .unwrap();
    for name in ["alice", "bob"] {
        a.query(&set_user, &[&name]).await.unwrap();
        assert_eq!(common::value(&b, user).await, "");
        assert_eq!(common::value(&a, user).await, name);
    }
    // In a transaction block: undone by ROLLBACK, kept by COMMIT.
    for (end, want) in [("ROLLBACK", "bob"), ("COMMIT", "carol")] {
        a.batch_execute("BEGIN; SELECT set_config('app.user', 'carol', false)")
            .await
            .unwrap();
        assert_eq!(common::value(&a, user).await, "carol");
        a.batch_execute(end).await.unwrap();
        assert_eq!(common::value(&b, user).await, "", "{end}");
        assert_eq!(common::value(&a, user).await, want, "{end}");
    }
    // A SET of it after: the SET's value.
    a.batch_execute("SET jit = on").await.unwrap();
    assert_eq!(show(&b, "jit").await, "on");
    assert_eq!(show(&a, "jit").await, "on");
    // A setting named by a parameter can't be known (a custom one is in no view):
    // refused by name.
    let e = a
        .query("SELECT set_config($1, 'x', false)", &[&"app.user"])
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert!(db.message().contains("set_config"), "{db:?}");
    assert_eq!(common::value(&a, user).await, "carol");
    // Named by a column of pg_settings (pg_dump's way since 15.8): every setting the
    // session set is read back.
    a.batch_execute(
        "SELECT set_config(name, '3', false) FROM pg_settings WHERE name = 'extra_float_digits'",
    )
    .await
    .unwrap();
    for _ in 0..2 {
        assert_eq!(show(&b, "extra_float_digits").await, "1");
        assert_eq!(show(&a, "extra_float_digits").await, "3");
    }
    // One that resets a setting the client had SET (to its default: no longer the
    // session's), and one in a block (read once the block has ended).
    a.batch_execute("SET work_mem = '64MB'").await.unwrap();
    a.batch_execute(
        "SELECT set_config(name, NULL, false) FROM pg_settings WHERE name = 'work_mem'",
    )
    .await
    .unwrap();
    a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    a.batch_execute(
        "SELECT set_config(name, '2', false) FROM pg_settings WHERE name = 'extra_float_digits'",
    )
    .await
    .unwrap();
    assert_eq!(show(&a, "extra_float_digits").await, "2");
    a.batch_execute("COMMIT").await.unwrap();
    for _ in 0..2 {
        assert_eq!(show(&b, "extra_float_digits").await, "1");
        assert_eq!(show(&a, "extra_float_digits").await, "2");
        assert_eq!(show(&a, "work_mem").await, "4MB");
        assert_eq!(show(&b, "work_mem").await, "4MB");
    }
    // An UPDATE of pg_settings sets through the view's rule: read back too.
    a.batch_execute("UPDATE pg_settings SET setting = '0' WHERE name = 'extra_float_digits'")
        .await
        .unwrap();
    assert_eq!(show(&b, "extra_float_digits").await, "1");
    assert_eq!(show(&a, "extra_float_digits").await, "0");
    // A temporary table named pg_settings comes first on search_path: what it names
    // (a custom setting pg_settings does not list) can't be read back, so the
    // connection is closed rather than lent to another client.
    a.batch_execute(
        "BEGIN; CREATE TEMP TABLE pg_settings (name text) ON COMMIT DROP;
         INSERT INTO pg_settings VALUES ('app.tenant')",
    )
    .await
    .unwrap();
    a.batch_execute("SELECT set_config(name, '42', false) FROM pg_settings")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let tenant = "SELECT coalesce(current_setting('app.tenant', true), '')";
    assert_eq!(common::value(&b, tenant).await, "");
    a.batch_execute("RESET extra_float_digits").await.unwrap();
    // A name PostgreSQL does not know, undone by ROLLBACK TO SAVEPOINT: read back in
    // a savepoint of pgopt's, the client's block goes on.
    a.batch_execute("BEGIN; SAVEPOINT s").await.unwrap();
    let e = a
        .batch_execute("SELECT set_config('statment_timeout', '1s', false)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("42704"), "{e}");
    a.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    assert_eq!(common::value(&a, "SELECT 41 + 1").await, "42");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(common::value(&a, user).await, "carol");
}

/// pg_dump (15.8 and later set a setting named by a column of pg_settings) with
/// parallel workers, and pg_restore, through transaction mode.
#[tokio::test]
async fn pg_dump_and_pg_restore_run_through_transaction_mode() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 4);
    let mut restored = config.databases[0].clone();
    restored.name = "restored".into();
    restored.dbname = "restored".into();
    config.databases.push(restored);
    let proxy = Proxy::start(config).await.unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute(
            "CREATE TABLE a AS SELECT g AS id FROM generate_series(1, 1000) g;
             CREATE TABLE b AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    pg.create_database("restored").await.unwrap();
    let dir = common::temp_dir("pg-dump").join("dump");
    let port = proxy.local_addr().port().to_string();
    let mut dump = Command::new(pg.binaries().program("pg_dump"));
    dump.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "-Fd",
        "-j",
        "2",
        "-f",
    ])
    .arg(&dir)
    .arg("app");
    let mut restore = Command::new(pg.binaries().program("pg_restore"));
    restore
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-j",
            "2",
            "-d",
            "restored",
        ])
        .arg(&dir);
    tokio::task::spawn_blocking(move || {
        run(&mut dump);
        run(&mut restore);
    })
    .await
    .unwrap();
    // pg_dump's SQL PREPAREs (in its transaction) are gone from the connections.
    let client = connect(&proxy, "postgres", None).await.unwrap();
    for _ in 0..8 {
        let left = common::value(
            &client,
            "SELECT count(*) FROM pg_prepared_statements WHERE from_sql",
        )
        .await;
        assert_eq!(left, "0");
    }
    // SQL PREPARE lasts as long as its block; outside one it is refused.
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    client
        .batch_execute("PREPARE two AS SELECT 2")
        .await
        .unwrap();
    assert_eq!(common::value(&client, "EXECUTE two").await, "2");
    client.batch_execute("COMMIT").await.unwrap();
    let e = client.batch_execute("EXECUTE two").await.unwrap_err();
    assert_eq!(code(&e), Some("26000"), "{e}");
    let e = client
        .batch_execute("PREPARE two AS SELECT 2")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("0A000"), "{e}");
    let copy = pg.connect("restored").await.unwrap();
    let counts: (i64, i64) = {
        let row = copy
            .query_one(
                "SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(counts, (1000, 500));
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

/// SET and RESET among several statements of one query (a block sent whole, the
/// reset asyncpg's pool sends at each release) follow their client: SETs read back
/// once the query ran, RESETs kept when nothing in it failed — as PostgreSQL, which
/// undoes them all with the failed query's implicit transaction.
#[tokio::test]
async fn set_and_reset_among_several_statements_follow_their_client() {
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let a = connect_with_options(&proxy, "-c search_path=alpha,public -c work_mem=7MB").await;
    let b = connect(&proxy, "postgres", None).await.unwrap();
    let check = |a_want: [&'static str; 3]| {
        let (a, b) = (&a, &b);
        async move {
            for _ in 0..2 {
                assert_eq!(show(b, "work_mem").await, "4MB");
                assert_eq!(show(b, "statement_timeout").await, "0");
                let got = [
                    show(a, "work_mem").await,
                    show(a, "search_path").await,
                    show(a, "statement_timeout").await,
                ];
                assert_eq!(got, a_want);
            }
        }
    };
    a.batch_execute("BEGIN; SET work_mem = '9MB'; SET statement_timeout = '5s'; COMMIT")
        .await
        .unwrap();
    check(["9MB", "alpha,public", "5s"]).await;
    // Undone with the query that failed.
    let e = a
        .batch_execute("SET work_mem = '10MB'; RESET statement_timeout; SELECT 1/0")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("22012"));
    check(["9MB", "alpha,public", "5s"]).await;
    a.batch_execute("SET search_path = public").await.unwrap();
    a.batch_execute("RESET search_path; SET work_mem = '11MB'")
        .await
        .unwrap();
    check(["11MB", "alpha,public", "5s"]).await;
    // asyncpg's reset: back to the start-up values.
    a.batch_execute("SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;")
        .await
        .unwrap();
    check(["7MB", "alpha,public", "0"]).await;
    // Rolled back with its block.
    a.batch_execute("SET work_mem = '13MB'").await.unwrap();
    a.batch_execute("BEGIN; RESET ALL").await.unwrap();
    a.batch_execute("SET work_mem = '12MB'").await.unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    check(["13MB", "alpha,public", "0"]).await;
    // Two such queries pipelined: each one's RESETs kept at its own ReadyForQuery.
    a.batch_execute("SET search_path = public").await.unwrap();
    let (first, second) = tokio::join!(
        a.batch_execute("RESET work_mem; SELECT 1"),
        a.batch_execute("RESET search_path; SELECT 2"),
    );
    first.unwrap();
    second.unwrap();
    check(["7MB", "alpha,public", "0"]).await;
    // SET SESSION CHARACTERISTICS among others: read back as the settings it sets.
    a.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; SELECT 1")
        .await
        .unwrap();
    for _ in 0..2 {
        b.batch_execute("CREATE TEMP TABLE scratch (x int) ON COMMIT DROP")
            .await
            .unwrap();
        assert_eq!(show(&a, "default_transaction_read_only").await, "on");
    }
    a.batch_execute("RESET default_transaction_read_only")
        .await
        .unwrap();
}

/// What is read back after a query inside a REPEATABLE READ block is read without
/// taking the block's snapshot: the client's first query still takes it.
#[tokio::test]
async fn a_read_back_leaves_a_repeatable_read_snapshot_to_the_first_query() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute("CREATE TABLE seen (x int)")
        .await
        .unwrap();
    let a = connect(&proxy, "postgres", None).await.unwrap();
    a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SET work_mem = '8MB'")
        .await
        .unwrap();
    direct
        .batch_execute("INSERT INTO seen VALUES (1)")
        .await
        .unwrap();
    let n: i64 = a
        .query_one("SELECT count(*) FROM seen", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the snapshot is the first query's");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(show(&a, "work_mem").await, "8MB");
}

#[tokio::test]
async fn transaction_mode_refuses_session_state_by_name_and_stays_usable() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    refuses_session_state(&proxy).await;
    // Without query insight the session check finds these from their words alone
    // (with it, from insight's analysis of the statement).
    let mut config = config_for(&pg, PoolMode::Transaction, 1);
    config.insight.enabled = false;
    let without_insight = Proxy::start(config).await.unwrap();
    refuses_session_state(&without_insight).await;
    // Session mode refuses nothing.
    let (_pg2, session) = start(PoolMode::Session, 1).await;
    let s = connect(&session, "postgres", None).await.unwrap();
    s.batch_execute("LISTEN jobs; CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
}

/// Session state transaction mode can't carry is refused by name, the client goes on,
/// and what it can carry (SET, transaction-scoped locks and temp tables) is let through.
async fn refuses_session_state(proxy: &Proxy) {
    let client = connect(proxy, "postgres", None).await.unwrap();
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS serials (id serial PRIMARY KEY, v int)")
        .await
        .unwrap();
    for (sql, feature) in [
        ("LISTEN jobs", "LISTEN"),
        ("SELECT pg_advisory_lock(7)", "pg_advisory_lock"),
        ("CREATE TEMP TABLE scratch (x int)", "Temporary table"),
        // Named into the temporary schema, it is as temporary.
        ("CREATE TABLE pg_temp.secrets (v text)", "Temporary table"),
        ("PREPARE p AS SELECT 1", "PREPARE"),
        ("SET work_mem = '8MB'; RESET work_mem", "several statements"),
        // The sequence values of a connection's session are those of its last client
        // unless this one called nextval there since its checkout.
        ("SELECT lastval()", "lastval()"),
        ("SELECT currval('serials_id_seq')", "lastval()/currval()"),
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db.code().code(), "0A000", "{sql}");
        assert!(db.message().contains(feature), "{sql}: {}", db.message());
        client.batch_execute("SELECT 1").await.unwrap();
    }
    // Extended protocol: refused at Parse, the connection goes on.
    let err = client.prepare("LISTEN jobs").await.unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    // lastval() after an INSERT in a transaction of its own: refused, whichever way.
    client
        .execute("INSERT INTO serials (v) VALUES (1)", &[])
        .await
        .unwrap();
    let err = client.query_one("SELECT lastval()", &[]).await.unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    // In the transaction (or the query) that called nextval, it reads its own value.
    let id = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap()
    };
    let inserted = id(client
        .simple_query("INSERT INTO serials (v) VALUES (2) RETURNING id")
        .await
        .unwrap());
    let both = id(client
        .simple_query("INSERT INTO serials (v) VALUES (3); SELECT lastval()")
        .await
        .unwrap());
    assert_eq!(
        both.parse::<i64>().unwrap(),
        inserted.parse::<i64>().unwrap() + 1
    );
    client.batch_execute("BEGIN").await.unwrap();
    let row = client
        .query_one("INSERT INTO serials (v) VALUES (4) RETURNING id", &[])
        .await
        .unwrap();
    let in_block: i32 = row.get(0);
    let current: i64 = client
        .query_one("SELECT currval('serials_id_seq')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, i64::from(in_block));
    client.batch_execute("COMMIT").await.unwrap();
    // BEGIN calls no nextval, sent alone or with the read; nor does a write that only
    // reads the sequence.
    client.batch_execute("BEGIN").await.unwrap();
    let err = client.batch_execute("SELECT lastval()").await.unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();
    let err = client
        .batch_execute("BEGIN; SELECT lastval(); COMMIT")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();
    let err = client
        .batch_execute("INSERT INTO serials (v) SELECT currval('serials_id_seq')")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    // A statement prepared ahead is judged where it runs.
    let read = client
        .prepare("SELECT currval('serials_id_seq')")
        .await
        .unwrap();
    let err = client.query_one(&read, &[]).await.unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    client.batch_execute("BEGIN").await.unwrap();
    let row = client
        .query_one("INSERT INTO serials (v) VALUES (5) RETURNING id", &[])
        .await
        .unwrap();
    let current: i64 = client.query_one(&read, &[]).await.unwrap().get(0);
    assert_eq!(current, i64::from(row.get::<_, i32>(0)));
    client.batch_execute("COMMIT").await.unwrap();
    let n: i32 = client.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 42);
    // What transaction mode can carry is allowed.
    client
        .batch_execute(
            "BEGIN; SELECT pg_advisory_xact_lock(7); \
             CREATE TEMP TABLE t (x int) ON COMMIT DROP; SET LOCAL work_mem = '8MB'; COMMIT",
        )
        .await
        .unwrap();
    client.batch_execute("SET work_mem = '9MB'").await.unwrap();
    let row = client.query_one("SHOW work_mem", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "9MB");
}

/// The server connections pgopt has open.
async fn pgopt_backends(direct: &tokio_postgres::Client) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgopt'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Counts the server connections pgopt has running a statement, sampled `times`.
async fn most_active_at_once(direct: &tokio_postgres::Client, times: usize) -> i64 {
    let mut most = 0;
    for _ in 0..times {
        let active: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'pgopt' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        most = most.max(active);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    most
}

#[tokio::test]
async fn a_saturated_pool_shrinks_on_reload_while_clients_keep_it_busy() {
    // Connections coming back while clients wait are handed straight to them: a
    // smaller pool after RELOAD must still take its slots back meanwhile.
    let pg = Postgres::start().await.unwrap();
    let proxy = Proxy::start(config_for(&pg, PoolMode::Transaction, 4))
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let client = connect(&proxy, "postgres", None).await.unwrap();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.simple_query("SELECT pg_sleep(0.005)").await.unwrap();
                done += 1;
            }
            done
        }));
    }
    let direct = pg.connect("postgres").await.unwrap();
    let before = most_active_at_once(&direct, 30).await;
    assert!(before > 2, "the pool of 4 is busy: {before} at most");

    proxy
        .handle()
        .apply(config_for(&pg, PoolMode::Transaction, 2))
        .expect("reload");
    // The shrink takes two slots as they come back, at once under this load.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = most_active_at_once(&direct, 60).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        assert!(t.await.unwrap() > 0, "every client got served");
    }
    assert!(
        after <= 2,
        "{after} connections busy at once after shrinking to 2"
    );
    // The connections past the new size close (PgBouncer's "too many servers in the
    // pool"), not only at server_idle_timeout.
    let open = || async {
        common::value(
            &direct,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgopt'",
        )
        .await
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while open().await.parse::<u32>().unwrap() > 2 {
        assert!(
            Instant::now() < deadline,
            "{} open after shrinking to 2",
            open().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn clients_that_stop_waiting_leave_the_connection_to_the_next_one() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 1);
    config.query_wait_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(config).await.unwrap();
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let client = connect(&proxy, "postgres", None).await.unwrap();
        waiters.push(tokio::spawn(async move {
            client.simple_query("SELECT 1").await.map(|_| ())
        }));
    }
    for w in waiters {
        let err = w.await.unwrap().expect_err("no connection for 300 ms");
        assert_eq!(code(&err), Some("57014"), "{err}");
    }
    holder.batch_execute("COMMIT").await.unwrap();
    // The connection went back to the pool, not to a client that left: the next
    // client gets that same server connection at once.
    let next = connect(&proxy, "postgres", None).await.unwrap();
    let started = std::time::Instant::now();
    let again: i32 = next
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, pid);
    assert!(started.elapsed() < Duration::from_millis(250));
}

/// A client that sent a query while it waited for a server connection (the pool
/// busy, or PAUSEd) and then left: its query never runs, in either pool mode, as with
/// PgBouncer. Before, it ran once a connection came free: an application that gave
/// up and retried elsewhere wrote twice.
#[tokio::test]
async fn a_query_whose_client_left_while_it_waited_never_runs() {
    use tokio::io::AsyncWriteExt;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let pg = Postgres::start().await.unwrap();
        pg.psql("CREATE TABLE ran (n int)").unwrap();
        let mut config = config_for(&pg, mode, 1);
        config.admin_users = vec!["postgres".into()];
        let proxy = Proxy::start(config).await.unwrap();
        let admin = common::admin(&proxy).await;
        let ran = "SELECT count(*) FROM ran";
        for paused in [false, true] {
            let mut holder = Some(connect(&proxy, "postgres", None).await.unwrap());
            let ends = async |holder: &mut Option<tokio_postgres::Client>| {
                let holder = holder.take().unwrap();
                holder.batch_execute("COMMIT").await.unwrap();
            };
            let begin = holder.as_ref().unwrap().batch_execute("BEGIN").await;
            begin.unwrap();
            let mut raws = Vec::new();
            for _ in 0..3 {
                raws.push(raw_login(&proxy).await);
            }
            if paused {
                // (The holder's transaction ends first: PAUSE waits for it.)
                ends(&mut holder).await;
                // (In session mode it holds its connection until it has gone.)
                tokio::time::sleep(Duration::from_millis(200)).await;
                admin.batch_execute("PAUSE").await.unwrap();
            }
            for raw in &mut raws {
                let insert = message(b'Q', b"INSERT INTO ran VALUES (1)\0");
                raw.write_all(&insert).await.unwrap();
            }
            let waiting = |rows: Vec<std::collections::HashMap<String, String>>| {
                rows.iter()
                    .map(|r| r["cl_waiting"].parse::<u64>().unwrap())
                    .sum::<u64>()
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while waiting(common::show(&admin, "POOLS").await) < 3 {
                assert!(
                    Instant::now() < deadline,
                    "{mode:?}: the clients never waited"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(raws);
            // Without a pause the connection comes free at once: the clients' leaving
            // may not be seen by the event loop yet when it is handed to them.
            if !paused {
                ends(&mut holder).await;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while waiting(common::show(&admin, "POOLS").await) > 0 {
                assert!(
                    Instant::now() < deadline,
                    "{mode:?}: the clients that left still wait"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if paused {
                admin.batch_execute("RESUME").await.unwrap();
            }
            let next = connect(&proxy, "postgres", None).await.unwrap();
            assert_eq!(
                common::value(&next, ran).await,
                "0",
                "{mode:?}, paused {paused}"
            );
        }
    }
}

#[tokio::test]
async fn waits_timing_out_while_connections_are_handed_over_leak_no_slot() {
    // Clients give up (query_wait_timeout) at all moments, some just as a connection
    // is handed to them: afterwards every slot is still there, and no more.
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.query_wait_timeout = Duration::from_millis(30);
    let proxy = Proxy::start(config).await.unwrap();
    // The pool's first client checks the server at login (a checkout, which the 30 ms
    // wait would cut short on a loaded machine): done once before.
    connect(&proxy, "postgres", None).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    let port = proxy.local_addr().port();
    for _ in 0..30 {
        tasks.push(tokio::spawn(async move {
            let (mut served, mut timed_out) = (0u32, 0u32);
            let mut client = common::connect_port(port, "postgres").await.unwrap();
            while std::time::Instant::now() < deadline {
                match client.simple_query("SELECT pg_sleep(0.01)").await {
                    Ok(_) => served += 1,
                    // The wait's end closes the client's connection, as PgBouncer's.
                    Err(e) if code(&e) == Some("57014") => {
                        timed_out += 1;
                        client = common::connect_port(port, "postgres").await.unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            (served, timed_out)
        }));
    }
    let (mut served, mut timed_out) = (0, 0);
    for t in tasks {
        let (s, t) = t.await.unwrap();
        served += s;
        timed_out += t;
    }
    assert!(
        served > 0 && timed_out > 0,
        "{served} served, {timed_out} timed out"
    );
    // Both slots are free: two transactions at once, at once.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let c = connect(&proxy, "postgres", None).await.unwrap();
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        holders.push(c);
    }
    // And no third: a client waits, then times out.
    let third = connect(&proxy, "postgres", None).await.unwrap();
    let err = third.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), Some("57014"), "{err}");
    let direct = pg.connect("postgres").await.unwrap();
    let backends = pgopt_backends(&direct).await;
    assert!(
        backends <= 2,
        "{backends} server connections for a pool of 2"
    );
}

#[tokio::test]
async fn a_query_the_server_skipped_after_an_unsynced_error_keeps_the_connection_to_its_sync() {
    // After an error in Parse/Bind/Execute with no Sync yet, PostgreSQL discards every
    // message up to the next Sync, a simple Query too. The connection must stay with
    // that client until its Sync: given to another, it would swallow its queries.
    // The Query comes with the failing batch, or after its error was read.
    use tokio::io::AsyncWriteExt;
    let pg = Postgres::start().await.unwrap();
    let proxy = Proxy::start(config_for(&pg, PoolMode::Transaction, 1))
        .await
        .unwrap();
    for burst in [true, false] {
        let mut raw = raw_login(&proxy).await;
        let mut batch = common::run_unnamed("SELECT 1/0", b'H');
        let query = common::message(b'Q', b"SELECT 2\0");
        if burst {
            batch.extend(&query);
        }
        raw.write_all(&batch).await.unwrap();
        // (1/0 is folded when the statement is planned, at Bind.)
        assert_eq!(read_until(&mut raw, b'E').await, b"1E");
        if !burst {
            raw.write_all(&query).await.unwrap();
        }

        let other = connect(&proxy, "postgres", None).await.unwrap();
        let waiting = tokio::spawn(async move {
            let rows = other.simple_query("SELECT 3").await;
            rows.map(|r| {
                r.iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => {
                            row.get(0).map(String::from)
                        }
                        _ => None,
                    })
                    .unwrap_or_default()
            })
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "burst {burst}: the other client waits for the connection"
        );
        // The Sync ends the skipping: one ReadyForQuery, as PostgreSQL sends.
        raw.write_all(&common::message(b'S', b"")).await.unwrap();
        assert_eq!(read_until(&mut raw, b'Z').await, b"Z", "burst {burst}");
        let served = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the other client is served once the Sync went through")
            .unwrap()
            .unwrap();
        assert_eq!(served, "3");
    }
}

/// Parse, Bind, Execute and Flush inserting `v` into `marks`: no Sync.
fn insert_batch(v: &str) -> Vec<u8> {
    common::run_unnamed(&format!("INSERT INTO marks VALUES ('{v}')"), b'H')
}

/// Inserts `v` into `marks` with no Sync: the server holds the insert in an implicit
/// transaction.
async fn insert_without_sync(raw: &mut tokio::net::TcpStream, v: &str) {
    use tokio::io::AsyncWriteExt;
    raw.write_all(&insert_batch(v)).await.unwrap();
    assert_eq!(read_until(raw, b'C').await, b"12C");
}

/// A PostgreSQL with table `marks (v text)`, a direct client, and a transaction-mode
/// proxy of one server connection (with the HTTP endpoint).
async fn marks_proxy() -> (Postgres, tokio_postgres::Client, Proxy) {
    let pg = Postgres::start().await.unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute("CREATE TABLE marks (v text)")
        .await
        .unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 1);
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let proxy = Proxy::start(config).await.unwrap();
    (pg, direct, proxy)
}

/// How many rows of `marks` hold `v`, read directly on PostgreSQL.
async fn marks_with(direct: &tokio_postgres::Client, v: &str) -> i64 {
    direct
        .query_one("SELECT count(*) FROM marks WHERE v = $1", &[&v])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_query_pgopt_answers_itself_ends_an_unsynced_batch_as_postgresql_would() {
    // PostgreSQL runs a simple query in the implicit transaction of the unsynced
    // statements before it, and ends that transaction with the query: committed if
    // the query succeeds, rolled back if it fails. pgopt's own answers do the same.
    use tokio::io::AsyncWriteExt;
    let (_pg, direct, proxy) = marks_proxy().await;
    let count = |v: &'static str| marks_with(&direct, v);

    // Refused (a session feature transaction mode can't carry): rolled back.
    let mut raw = raw_login(&proxy).await;
    insert_without_sync(&mut raw, "refused").await;
    raw.write_all(&common::message(b'Q', b"LISTEN somewhere\0"))
        .await
        .unwrap();
    assert_eq!(read_until(&mut raw, b'Z').await, b"EZ");
    raw.write_all(&common::message(b'Q', b"SELECT 1\0"))
        .await
        .unwrap();
    assert_eq!(read_until(&mut raw, b'Z').await, b"TDCZ");
    // (Left open, the next statement to reach the server would have committed it.)
    assert_eq!(
        count("refused").await,
        0,
        "rolled back with the failed query"
    );
    drop(raw);

    // DEALLOCATE of the client's own statement, answered by pgopt: committed.
    let mut raw = raw_login(&proxy).await;
    common::prepare_s1(&mut raw).await;
    insert_without_sync(&mut raw, "kept").await;
    raw.write_all(&common::message(b'Q', b"DEALLOCATE s1\0"))
        .await
        .unwrap();
    assert_eq!(read_until(&mut raw, b'Z').await, b"CZ");
    assert_eq!(count("kept").await, 1, "committed with the query");
    drop(raw);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count("kept").await, 1, "and stays so once the client left");

    // A Parse pgopt refuses in the batch fails the batch, as an error in it would:
    // nothing of it commits at its Sync.
    let mut raw = raw_login(&proxy).await;
    insert_without_sync(&mut raw, "failed").await;
    raw.write_all(&common::run_unnamed("LISTEN somewhere", b'S'))
        .await
        .unwrap();
    assert_eq!(read_until(&mut raw, b'Z').await, b"EZ");
    raw.write_all(&common::message(b'Q', b"SELECT 1\0"))
        .await
        .unwrap();
    assert_eq!(read_until(&mut raw, b'Z').await, b"TDCZ");
    assert_eq!(count("failed").await, 0, "rolled back with the batch");
}

#[tokio::test]
async fn a_query_pgopt_would_answer_behind_a_failed_unsynced_batch_is_discarded() {
    // PostgreSQL discards a simple query sent behind an unsynced batch that fails, up
    // to the Sync: the DEALLOCATE does not happen, the LISTEN gets no refusal. And
    // without a Flush the server answers nothing before it reads the query: pgopt,
    // which must see how the batch ended before it answers, must not wait for ever.
    use tokio::io::AsyncWriteExt;
    let (_pg, direct, proxy) = marks_proxy().await;
    for query in ["DEALLOCATE s1", "LISTEN somewhere"] {
        let mut raw = raw_login(&proxy).await;
        common::prepare_s1(&mut raw).await;
        let mut burst = common::run_unnamed("SELECT 1/0", b'H');
        burst.extend(common::message(b'Q', format!("{query}\0").as_bytes()));
        raw.write_all(&burst).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        raw.write_all(&common::message(b'S', b"")).await.unwrap();
        // (1/0 is folded when the statement is planned, at Bind.)
        assert_eq!(read_until(&mut raw, b'Z').await, b"1EZ", "{query}");
        let mut run = common::message(b'B', b"\0s1\0\0\0\0\0\0\0");
        run.extend(common::message(b'E', b"\0\0\0\0\0"));
        run.extend(common::message(b'S', b""));
        raw.write_all(&run).await.unwrap();
        assert_eq!(read_until(&mut raw, b'Z').await, b"2DCZ", "{query}: s1");
    }
    // No Flush, no error: the insert and the DEALLOCATE commit together.
    let mut raw = raw_login(&proxy).await;
    common::prepare_s1(&mut raw).await;
    let mut burst = common::run_unnamed("INSERT INTO marks VALUES ('unflushed')", b'S');
    burst.truncate(burst.len() - 5);
    burst.extend(common::message(b'Q', b"DEALLOCATE s1\0"));
    raw.write_all(&burst).await.unwrap();
    assert_eq!(read_until(&mut raw, b'Z').await, b"12CCZ");
    let n = marks_with(&direct, "unflushed").await;
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_commit_failing_at_the_end_pgopt_gives_a_batch_is_the_clients_error() {
    // A DEALLOCATE behind an unsynced batch commits the batch, as PostgreSQL's would;
    // when that commit fails (a deferred foreign key here) the client gets the error
    // and a ReadyForQuery, with no CommandComplete, and the error is counted.
    use tokio::io::AsyncWriteExt;
    let (_pg, direct, proxy) = marks_proxy().await;
    direct
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (pid int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
        )
        .await
        .unwrap();
    let mut raw = raw_login(&proxy).await;
    common::prepare_s1(&mut raw).await;
    raw.write_all(&common::run_unnamed("INSERT INTO child VALUES (7)", b'H'))
        .await
        .unwrap();
    assert_eq!(read_until(&mut raw, b'C').await, b"12C");
    raw.write_all(&common::message(b'Q', b"DEALLOCATE s1\0"))
        .await
        .unwrap();
    assert_eq!(read_until(&mut raw, b'Z').await, b"EZ");
    // Deallocated all the same (PostgreSQL's statements are not transactional).
    let mut run = common::message(b'B', b"\0s1\0\0\0\0\0\0\0");
    run.extend(common::message(b'S', b""));
    raw.write_all(&run).await.unwrap();
    assert_eq!(read_until(&mut raw, b'Z').await, b"EZ", "s1 is gone");
    let n: i64 = direct
        .query_one("SELECT count(*) FROM child", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let metrics = common::http_get(proxy.admin_addr().unwrap(), "/metrics").await;
    assert!(
        metrics.contains("pgopt_errors_total{database=\"app\",user=\"postgres\",class=\"23\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_statement_pgopt_refuses_in_a_transaction_block_fails_the_block() {
    // As any error in a block would in PostgreSQL: the statements after it get 25P02
    // and COMMIT rolls back, whether the refusal was a simple query or a Parse.
    let (_pg, direct, proxy) = marks_proxy().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    for (v, refused) in [("simple", true), ("parse", false)] {
        client.batch_execute("BEGIN").await.unwrap();
        client
            .execute("INSERT INTO marks VALUES ($1)", &[&v])
            .await
            .unwrap();
        let refusal = if refused {
            client.batch_execute("LISTEN somewhere").await.unwrap_err()
        } else {
            client.prepare("LISTEN somewhere").await.unwrap_err()
        };
        let message = refusal.as_db_error().map(|e| e.message()).unwrap_or("");
        assert!(message.contains("LISTEN"), "{refusal:?}");
        let after = client.batch_execute("SELECT 1").await.unwrap_err();
        assert_eq!(
            after.code(),
            Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION),
            "{v}: the block went on after the refusal: {after}"
        );
        client.batch_execute("COMMIT").await.unwrap();
        let n = marks_with(&direct, v).await;
        assert_eq!(n, 0, "{v}: COMMIT committed a block that had failed");
    }
    // And the connection is sound for the next statement.
    assert_eq!(common::value(&client, "SELECT 7").await, "7");
}

#[tokio::test]
async fn a_refusal_pipelined_behind_its_begin_fails_the_block() {
    // All in one write, as a pipelining client sends it: the block's BEGIN is not
    // answered yet when pgopt refuses the LISTEN, and the block must fail all the same.
    use tokio::io::AsyncWriteExt;
    let (_pg, direct, proxy) = marks_proxy().await;
    let mut raw = raw_login(&proxy).await;
    let mut pipeline = common::run_unnamed("BEGIN", b'S');
    pipeline.truncate(pipeline.len() - 5);
    for sql in [
        "INSERT INTO marks VALUES ('piped')",
        "LISTEN somewhere",
        "COMMIT",
    ] {
        pipeline.extend(common::run_unnamed(sql, b'S'));
    }
    raw.write_all(&pipeline).await.unwrap();
    assert_eq!(
        common::read_until_nth(&mut raw, b'Z', 3).await,
        b"12C12CZEZ12CZ"
    );
    let n = marks_with(&direct, "piped").await;
    assert_eq!(n, 0, "COMMIT committed a block a refusal had failed");
}

#[tokio::test]
async fn a_deallocate_sent_into_a_copy_does_not_stall_the_session() {
    // A client breaking the protocol (a simple query in the middle of COPY FROM
    // STDIN) must not leave pgopt waiting for an answer the server will not give
    // before the copy's data, which sits behind the query.
    use tokio::io::AsyncWriteExt;
    let (_pg, _direct, proxy) = marks_proxy().await;
    let mut raw = raw_login(&proxy).await;
    common::prepare_s1(&mut raw).await;
    raw.write_all(&common::run_unnamed("COPY marks FROM STDIN", b'H'))
        .await
        .unwrap();
    assert_eq!(read_until(&mut raw, b'G').await, b"12G");
    let mut rest = common::message(b'Q', b"DEALLOCATE s1\0");
    rest.extend(common::message(b'd', b"copied\n"));
    rest.extend(common::message(b'c', b""));
    rest.extend(common::message(b'S', b""));
    raw.write_all(&rest).await.unwrap();
    let reply = read_until(&mut raw, b'Z').await;
    assert_eq!(reply.first(), Some(&b'C'), "{reply:?}");
    raw.write_all(&common::message(b'Q', b"SELECT 1\0"))
        .await
        .unwrap();
    let reply = read_until(&mut raw, b'Z').await;
    assert!(reply.ends_with(b"TDCZ"), "{reply:?}");
}

#[tokio::test]
async fn a_set_pipelined_after_pgopt_ends_a_batch_is_kept_with_its_client() {
    // The ReadyForQuery of the Sync pgopt sends to end an unsynced batch (before its
    // own answer to DEALLOCATE) is counted before the SET that follows: the SET is
    // the client's, and the next client on that connection does not inherit it.
    use tokio::io::AsyncWriteExt;
    let (_pg, _direct, proxy) = marks_proxy().await;
    let mut raw = raw_login(&proxy).await;
    common::prepare_s1(&mut raw).await;
    let mut pipeline = insert_batch("x");
    pipeline.extend(common::message(b'Q', b"DEALLOCATE s1\0"));
    pipeline.extend(common::message(b'Q', b"SET search_path = elsewhere\0"));
    raw.write_all(&pipeline).await.unwrap();
    assert_eq!(common::read_until_nth(&mut raw, b'Z', 2).await, b"12CCZCZ");
    drop(raw);
    let next = connect(&proxy, "postgres", None).await.unwrap();
    let path = common::value(&next, "SHOW search_path").await;
    assert_eq!(
        path, "\"$user\", public",
        "the departed client's SET leaked"
    );
}

/// The timer column of each established IPv4 TCP socket whose local port is `local`
/// or whose remote port is `remote` (`/proc/net/tcp`: 02 is a keepalive timer).
fn socket_timers(local: Option<u16>, remote: Option<u16>) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (l, r, state, timer) = (port(f[1]), port(f[2]), f[3], f[5]);
            let wanted = local == Some(l) || remote == Some(r);
            (state == "01" && wanted).then(|| timer.split(':').next().unwrap().to_string())
        })
        .collect()
}

#[tokio::test]
async fn client_and_server_sockets_have_tcp_keepalive_unless_it_is_off() {
    let pg = Postgres::start().await.unwrap();
    for on in [true, false] {
        let mut config = config_for(&pg, PoolMode::Session, 1);
        config.tcp_keepalive = on.then_some(pgopt_proxy::Keepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(5),
            count: 3,
            ..Default::default()
        });
        let proxy = Proxy::start(config).await.unwrap();
        let client = connect(&proxy, "postgres", None).await.unwrap();
        assert_eq!(common::value(&client, "SELECT 1").await, "1");
        // (Right after a write a socket may show its retransmit timer, 01, instead.)
        let settled = |local, remote| async move {
            for _ in 0..40 {
                let timers = socket_timers(local, remote);
                if !timers.iter().any(|t| t == "01") {
                    return timers;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            socket_timers(local, remote)
        };
        let clients = settled(Some(proxy.local_addr().port()), None).await;
        let servers = settled(None, Some(pg.port())).await;
        assert_eq!(clients.len(), 1, "{clients:?}");
        assert_eq!(servers.len(), 1, "{servers:?}");
        let expected = if on { "02" } else { "00" };
        assert_eq!(clients[0], expected, "the client's socket, keepalive {on}");
        assert_eq!(servers[0], expected, "the server's socket, keepalive {on}");
        drop(client);
        proxy.handle().shutdown();
        proxy.wait().await;
    }
}

#[tokio::test]
async fn listen_also_takes_clients_on_more_addresses() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    // Port 0: the first address's port, whatever it was given.
    config.listen_also = vec!["127.0.0.2:0".parse().unwrap()];
    let proxy = Proxy::start(config).await.unwrap();
    let port = proxy.local_addr().port();
    for host in ["127.0.0.1", "127.0.0.2"] {
        let client = common::client_at(host, port, "postgres", "app", None)
            .await
            .unwrap_or_else(|e| panic!("{host}:{port}: {e}"));
        let row = client.query_one("SELECT 6 * 7", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42, "{host}");
    }
    // A stopped proxy stops accepting on every address.
    proxy.handle().shutdown();
    tokio::time::timeout(Duration::from_secs(10), proxy.wait())
        .await
        .unwrap();
    for host in ["127.0.0.1", "127.0.0.2"] {
        let refused = tokio::net::TcpStream::connect((host, port)).await;
        assert!(refused.is_err(), "{host}:{port} still accepts");
    }
}

#[tokio::test]
async fn listen_also_takes_the_ipv6_wildcard_beside_the_ipv4_one() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 on this host: not checked");
        return;
    }
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    // Without IPV6_V6ONLY the second would find the port taken.
    config.listen = "0.0.0.0:0".parse().unwrap();
    config.listen_also = vec!["[::]:0".parse().unwrap()];
    let proxy = Proxy::start(config).await.unwrap();
    let port = proxy.local_addr().port();
    for host in ["127.0.0.1", "::1"] {
        let client = common::client_at(host, port, "postgres", "app", None)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        client.simple_query("SELECT 1").await.unwrap();
    }
}

/// A client over `max_client_conn` is refused after its start-up packet, as
/// PostgreSQL refuses one over max_connections: libpq, which asks for TLS first
/// (sslmode=prefer), shows the reason — an answer to its SSLRequest would read "server
/// sent an error response during SSL exchange". And a cancel still gets through.
#[tokio::test]
async fn over_max_client_conn_psql_reads_why_and_a_cancel_gets_through() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.max_client_conn = 1;
    config.admin_users = vec!["postgres".into()];
    let proxy = Proxy::start(config).await.unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();

    let psql = pg.binaries().program("psql");
    let target = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app sslmode=prefer",
        proxy.local_addr().port()
    );
    // (Off the runtime: the proxy serves on it too.)
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&psql)
            .arg(target)
            .args(["-X", "-c", "SELECT 1"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no more connections allowed (max_client_conn)"),
        "{stderr}"
    );

    // The admin console still lets an operator in, as PgBouncer's does.
    let admin = common::admin(&proxy).await;
    let pools = admin.simple_query("SHOW POOLS").await.unwrap();
    assert!(pools.len() > 1, "{pools:?}");

    // The one client's query is cancelled over a connection max_client_conn has no
    // room for.
    sleep_is_cancelled(&pg, &client).await;
}

/// RESET and RESET ALL inside a transaction block: undone by its ROLLBACK (also to a
/// savepoint), kept by its COMMIT, and only ever its client's.
#[tokio::test]
async fn reset_inside_a_transaction_block_is_undone_by_its_rollback() {
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    for (sql, want) in [
        (&["BEGIN", "RESET work_mem", "ROLLBACK"][..], "2MB"),
        (&["BEGIN", "RESET ALL", "ROLLBACK"][..], "2MB"),
        (
            &[
                "BEGIN",
                "SAVEPOINT s",
                "RESET work_mem",
                "ROLLBACK TO SAVEPOINT s",
                "COMMIT",
            ][..],
            "2MB",
        ),
        (
            &[
                "BEGIN",
                "SAVEPOINT s",
                "RESET ALL",
                "ROLLBACK TO SAVEPOINT s",
                "COMMIT",
            ][..],
            "2MB",
        ),
        (&["BEGIN", "RESET work_mem", "COMMIT"][..], "4MB"),
        (&["BEGIN", "RESET ALL", "COMMIT"][..], "4MB"),
        (
            &["BEGIN", "RESET work_mem", "SELECT 1/0", "ROLLBACK"][..],
            "2MB",
        ),
    ] {
        a.batch_execute("SET work_mem = '2MB'").await.unwrap();
        for s in sql {
            let _ = a.batch_execute(s).await;
        }
        // (One server connection: each SHOW gives it the other client's settings.)
        for _ in 0..2 {
            assert_eq!(show(&a, "work_mem").await, want, "{sql:?}");
            assert_eq!(show(&other, "work_mem").await, "4MB", "{sql:?}");
        }
    }
}

/// RESET inside a transaction block goes back to the client's start-up value, as on
/// PostgreSQL, not to the pooled connection's own; without taking the transaction's
/// snapshot. A client whose start-up value a server refused gets no re-application
/// inside a block (it would fail the block). A list (search_path) too: before, the
/// block went on with the server's own search_path, and read another schema's table.
#[tokio::test]
async fn reset_inside_a_block_goes_back_to_the_clients_start_up_values() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql(
        "CREATE SCHEMA \"App\"; CREATE TABLE \"App\".marker (v text); \
         INSERT INTO \"App\".marker VALUES ('app'); \
         CREATE TABLE public.marker (v text); INSERT INTO public.marker VALUES ('public')",
    )
    .unwrap();
    let a =
        connect_with_options(&proxy, "-c DateStyle=SQL,DMY -c search_path=\"App\",public").await;
    for reset in ["RESET application_name", "RESET ALL", "RESET search_path"] {
        a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .unwrap();
        a.batch_execute("SET application_name = 'other'")
            .await
            .unwrap();
        a.batch_execute("SET DateStyle = 'ISO, MDY'").await.unwrap();
        a.batch_execute("SET search_path = public").await.unwrap();
        a.batch_execute(reset).await.unwrap();
        if reset != "RESET search_path" {
            assert_eq!(show(&a, "application_name").await, "opts-test", "{reset}");
        }
        if reset == "RESET ALL" {
            assert_eq!(show(&a, "DateStyle").await, "SQL, DMY");
        }
        // No query ran yet as far as the transaction knows: no snapshot taken.
        a.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .await
            .unwrap();
        if reset != "RESET application_name" {
            let marker = a.query_one("SELECT v FROM marker", &[]).await.unwrap();
            assert_eq!(marker.get::<_, String>(0), "app", "{reset}");
        }
        a.batch_execute("COMMIT").await.unwrap();
    }
}

/// SET TRANSACTION SNAPSHOT lasts as long as its transaction: it is not carried to
/// the client's later transactions (where it would fail) nor taken off other clients.
/// SET ROLE and SET SESSION AUTHORIZATION follow their client as PostgreSQL keeps
/// them: RESET ALL leaves both (they are not reset by it), a session authorization
/// resets the role, and a role set after it is replayed after it.
#[tokio::test]
async fn role_and_session_authorization_survive_reset_all_and_replay_in_order() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql("CREATE ROLE r1; CREATE ROLE r2; GRANT r1 TO r2")
        .unwrap();
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    let is = |u: &str, s: &str| (u.to_string(), s.to_string());
    a.batch_execute("SET ROLE r1").await.unwrap();
    a.batch_execute("RESET ALL").await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            users(&a).await,
            is("r1", "postgres"),
            "RESET ALL keeps the role"
        );
        assert_eq!(users(&b).await, is("postgres", "postgres"));
    }
    // Among several statements: read back, the role with the authorization.
    a.batch_execute("SET SESSION AUTHORIZATION r2; SET ROLE r1")
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(users(&a).await, is("r1", "r2"));
        assert_eq!(users(&b).await, is("postgres", "postgres"));
    }
    a.batch_execute("SET SESSION AUTHORIZATION r2; SELECT 1")
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(users(&a).await, is("r2", "r2"), "the role was reset");
        assert_eq!(users(&b).await, is("postgres", "postgres"));
    }
    a.batch_execute("RESET SESSION AUTHORIZATION")
        .await
        .unwrap();
    a.batch_execute("SET SESSION AUTHORIZATION r2")
        .await
        .unwrap();
    assert_eq!(
        users(&a).await,
        is("r2", "r2"),
        "a session authorization resets the role"
    );
    assert_eq!(users(&b).await, is("postgres", "postgres"));
    assert_eq!(users(&a).await, is("r2", "r2"));
    a.batch_execute("SET ROLE r1").await.unwrap();
    for _ in 0..2 {
        assert_eq!(users(&b).await, is("postgres", "postgres"));
        assert_eq!(
            users(&a).await,
            is("r1", "r2"),
            "the role replays after the authorization"
        );
    }
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(users(&b).await, is("postgres", "postgres"));
    assert_eq!(users(&a).await, is("r1", "r2"));
    a.batch_execute("RESET SESSION AUTHORIZATION")
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(users(&a).await, is("postgres", "postgres"));
        assert_eq!(users(&b).await, is("postgres", "postgres"));
    }
    // A superuser-only setting made before the authorization changed: replayed, and
    // undone for the next client, as the login user (r2 may not set it).
    a.batch_execute("SET log_min_duration_statement = 123")
        .await
        .unwrap();
    a.batch_execute("SET SESSION AUTHORIZATION r2")
        .await
        .unwrap();
    a.batch_execute("SET ROLE r1").await.unwrap();
    for _ in 0..2 {
        assert_eq!(show(&b, "log_min_duration_statement").await, "-1");
        assert_eq!(users(&b).await, is("postgres", "postgres"));
        assert_eq!(show(&a, "log_min_duration_statement").await, "123ms");
        assert_eq!(users(&a).await, is("r1", "r2"));
    }
    a.batch_execute("RESET SESSION AUTHORIZATION")
        .await
        .unwrap();
    a.batch_execute("RESET log_min_duration_statement")
        .await
        .unwrap();
    // A RESET inside a block leaves the block's SET LOCAL ROLE alone.
    let d = connect_with_options(&proxy, "-c work_mem=7MB").await;
    for sql in [
        "SET ROLE r1",
        "BEGIN",
        "SET LOCAL ROLE r2",
        "RESET work_mem",
    ] {
        d.batch_execute(sql).await.unwrap();
    }
    assert_eq!(users(&d).await, is("r2", "postgres"));
    d.batch_execute("COMMIT").await.unwrap();
    assert_eq!(users(&d).await, is("r1", "postgres"));
    assert_eq!(show(&d, "work_mem").await, "7MB");
    d.batch_execute("RESET ROLE").await.unwrap();
    // A role among the start-up options: RESET ALL leaves a SET ROLE NONE after it.
    let c = connect_with_options(&proxy, "-c role=r1").await;
    assert_eq!(users(&c).await, is("r1", "postgres"));
    assert_eq!(users(&b).await, is("postgres", "postgres"));
    c.batch_execute("SET ROLE NONE").await.unwrap();
    c.batch_execute("RESET ALL").await.unwrap();
    for _ in 0..2 {
        assert_eq!(users(&b).await, is("postgres", "postgres"));
        assert_eq!(users(&c).await, is("postgres", "postgres"));
    }
    // DISCARD ALL goes back to the start-up role, as on PostgreSQL.
    c.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(users(&b).await, is("postgres", "postgres"));
    assert_eq!(users(&c).await, is("r1", "postgres"));
}

/// A client's current and session user.
async fn users(c: &tokio_postgres::Client) -> (String, String) {
    let row = c
        .query_one("SELECT current_user::text, session_user::text", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn set_transaction_snapshot_ends_with_its_transaction() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    let exporter = pg.connect("postgres").await.unwrap();
    exporter
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let snapshot: String = exporter
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    a.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    // (One server connection: each query gives it the other client's settings.)
    for _ in 0..2 {
        assert_eq!(show(&a, "work_mem").await, "4MB");
        assert_eq!(show(&other, "work_mem").await, "4MB");
    }
    // Nothing was replayed or reset: either fails on the server.
    let log = std::fs::read_to_string(pg.log_path()).unwrap();
    assert!(!log.contains("ERROR"), "{log}");
}

/// SET SESSION CHARACTERISTICS and a SET or RESET of a setting it sets: the later
/// one wins, as on PostgreSQL, also on the client's next server connection.
#[tokio::test]
async fn session_characteristics_and_a_set_of_the_same_setting_keep_their_order() {
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let characteristics = "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE";
    for (sql, want) in [
        (
            [
                characteristics,
                "SET default_transaction_isolation = 'repeatable read'",
            ],
            "repeatable read",
        ),
        (
            [
                "SET default_transaction_isolation = 'repeatable read'",
                characteristics,
            ],
            "serializable",
        ),
        (
            [characteristics, "RESET default_transaction_isolation"],
            "read committed",
        ),
        (["BEGIN", characteristics], "serializable"),
    ] {
        for s in sql {
            a.batch_execute(s).await.unwrap();
        }
        if sql[0] == "BEGIN" {
            a.batch_execute("COMMIT").await.unwrap();
        }
        // (One server connection: each SHOW gives it the other client's settings.)
        for _ in 0..2 {
            assert_eq!(
                show(&a, "default_transaction_isolation").await,
                want,
                "{sql:?}"
            );
            assert_eq!(
                show(&other, "default_transaction_isolation").await,
                "read committed"
            );
        }
        a.batch_execute("RESET ALL").await.unwrap();
    }
    // By the extended protocol (pgjdbc's setTransactionIsolation) too: the connection
    // lent to the others is put back to their isolation level.
    a.execute(characteristics, &[]).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            show(&a, "default_transaction_isolation").await,
            "serializable"
        );
        assert_eq!(
            show(&other, "default_transaction_isolation").await,
            "read committed"
        );
    }
}

/// Read back inside a transaction after ROLLBACK TO SAVEPOINT, a setting shows its
/// SET LOCAL value; the session's own comes back at COMMIT, and that is what the
/// client keeps.
#[tokio::test]
async fn a_set_local_seen_after_rollback_to_savepoint_ends_with_its_transaction() {
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    a.batch_execute("SET work_mem = '2MB'").await.unwrap();
    for local in [
        "SET LOCAL work_mem = '1MB'",
        "SELECT set_config('work_mem', '1MB', true)",
    ] {
        for sql in [
            "BEGIN",
            local,
            "SAVEPOINT s",
            "SET work_mem = '3MB'",
            "ROLLBACK TO SAVEPOINT s",
        ] {
            a.batch_execute(sql).await.unwrap();
        }
        assert_eq!(show(&a, "work_mem").await, "1MB", "{local}: inside");
        // Ended by a COMMIT alone, or with the next transaction begun in the same
        // query, and that one rolled back.
        let ends: &[&str] = if local.starts_with("SET") {
            &["COMMIT"]
        } else {
            &["COMMIT; BEGIN", "ROLLBACK"]
        };
        for end in ends {
            a.batch_execute(end).await.unwrap();
        }
        // (One server connection: each SHOW gives it the other client's settings.)
        for _ in 0..2 {
            assert_eq!(show(&a, "work_mem").await, "2MB", "{local}");
            assert_eq!(show(&other, "work_mem").await, "4MB", "{local}");
        }
    }
}

/// `SET SESSION CHARACTERISTICS` (default_transaction_isolation and its two siblings)
/// read back after ROLLBACK TO SAVEPOINT by the settings it sets: it stays its
/// client's, and never reaches another client on the same server connection.
#[tokio::test]
async fn session_characteristics_survive_a_rollback_to_savepoint_and_stay_their_clients() {
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    a.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .unwrap();
    for sql in [
        "BEGIN",
        "SAVEPOINT s",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "ROLLBACK TO SAVEPOINT s",
        "COMMIT",
    ] {
        a.batch_execute(sql).await.unwrap();
    }
    for _ in 0..2 {
        assert_eq!(
            show(&a, "default_transaction_isolation").await,
            "serializable"
        );
        assert_eq!(show(&a, "default_transaction_read_only").await, "off");
        assert_eq!(
            show(&other, "default_transaction_isolation").await,
            "read committed"
        );
    }
    // Kept past the savepoint: it stays.
    for sql in [
        "BEGIN",
        "SAVEPOINT s",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SAVEPOINT t",
        "SET work_mem = '5MB'",
        "ROLLBACK TO SAVEPOINT t",
        "COMMIT",
    ] {
        a.batch_execute(sql).await.unwrap();
    }
    for _ in 0..2 {
        assert_eq!(show(&a, "default_transaction_read_only").await, "on");
        assert_eq!(
            show(&a, "default_transaction_isolation").await,
            "serializable"
        );
        assert_eq!(show(&other, "default_transaction_read_only").await, "off");
        assert_eq!(
            show(&other, "default_transaction_isolation").await,
            "read committed"
        );
    }
}

/// The rest of a COPY's data, sent after the COPY failed (psql streams it before it
/// reads the error), is ignored as PostgreSQL ignores it: without a server connection
/// it waits for none (it used to wait for one, and with a busy pool time out).
#[tokio::test]
async fn copy_data_after_a_failed_copy_waits_for_no_server_connection() {
    use tokio::io::AsyncWriteExt;
    let pg = Postgres::start().await.unwrap();
    pg.psql("CREATE TABLE c (id int)").unwrap();
    let proxy = common::start_with(&pg, |c| {
        c.default_pool_size = 1;
        c.query_wait_timeout = Duration::from_millis(300);
    })
    .await;
    let mut raw = common::raw_login(&proxy).await;
    raw.write_all(&common::message(b'Q', b"COPY c FROM STDIN\0"))
        .await
        .unwrap();
    common::read_until(&mut raw, b'G').await;
    raw.write_all(&common::message(b'd', b"not a number\n"))
        .await
        .unwrap();
    let types = common::read_until(&mut raw, b'Z').await;
    assert!(types.contains(&b'E'), "{types:?}");
    // Another client holds the only server connection meanwhile.
    let b = connect(&proxy, "postgres", None).await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.extend(common::message(b'd', b"1\n"));
    }
    rest.extend(common::message(b'c', b""));
    raw.write_all(&rest).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    b.batch_execute("COMMIT").await.unwrap();
    raw.write_all(&common::message(b'Q', b"SELECT 1\0"))
        .await
        .unwrap();
    let types = common::read_until(&mut raw, b'Z').await;
    assert_eq!(types, b"TDCZ", "the client goes on");
}

#[tokio::test]
async fn a_server_message_over_max_message_len_ends_the_client_with_a_reason() {
    let pg = Postgres::start().await.unwrap();
    let proxy = common::start_with(&pg, |c| {
        c.max_message_len = 64 * 1024;
        c.default_pool_size = 1;
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let rows = "SELECT n, repeat('x', n) FROM unnest(ARRAY[10, 100000]) n";
    let e = client.simple_query(rows).await.unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
    assert_eq!(db.code().code(), "08P01", "{db:?}");
    assert!(db.message().contains("max_message_len"), "{db:?}");
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    // The connection that was cut mid-message is gone, not lent: the next client
    // (with the pool's only one) runs.
    let next = connect(&proxy, "postgres", None).await.unwrap();
    let row = next.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// A function that sets a setting PostgreSQL does not report (`search_path`, a custom
/// one) — in its body, through a function it calls, in a trigger — changes the
/// caller's session: pgopt reads its catalog for such functions and reads the settings
/// back after a call, so the caller keeps them and the next client of the connection
/// does not get them. A setting the body names is read back on the same connection;
/// one named at run time has every setting read back and the connection closed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_a_function_changes_follow_its_caller_only() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql(
        "CREATE SCHEMA tenant_1; CREATE SCHEMA tenant_2; \
         CREATE FUNCTION set_tenant(t text) RETURNS void LANGUAGE plpgsql AS $$BEGIN \
           EXECUTE format('SET search_path = %I, public', t); \
           PERFORM set_config('app.tenant', t, false); END$$; \
         CREATE FUNCTION enter(t text) RETURNS int LANGUAGE sql AS \
           $$ SELECT set_tenant(t); SELECT 1 $$; \
         CREATE PROCEDURE enter_proc(t text) LANGUAGE plpgsql AS \
           $$BEGIN PERFORM enter(t); END$$; \
         CREATE TABLE audit (id int); \
         CREATE FUNCTION audit_trg() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN SET lock_timeout = '7s'; RETURN NEW; END$$; \
         CREATE TRIGGER audit_t BEFORE INSERT ON audit \
           FOR EACH ROW EXECUTE FUNCTION audit_trg(); \
         CREATE FUNCTION set_any(n text, v text) RETURNS void LANGUAGE plpgsql AS \
           $$BEGIN EXECUTE format('SET %I = %L', n, v); END$$; \
         CREATE FUNCTION \"Enter\"(t text) RETURNS int LANGUAGE sql \
           BEGIN ATOMIC SELECT enter(t); END; \
         CREATE VIEW entered AS SELECT enter('tenant_2') AS x; \
         CREATE VIEW entered_too AS SELECT * FROM entered; \
         CREATE TABLE parted (id int) PARTITION BY RANGE (id); \
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10); \
         CREATE FUNCTION parted_trg() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN SET idle_in_transaction_session_timeout = '8s'; RETURN NEW; END$$; \
         CREATE TRIGGER parted_1_t BEFORE INSERT ON parted_1 \
           FOR EACH ROW EXECUTE FUNCTION parted_trg(); \
         CREATE FUNCTION later() RETURNS void LANGUAGE sql AS 'SELECT 1'; \
         CREATE FUNCTION pick(acc text, v text) RETURNS text LANGUAGE plpgsql AS \
           $$BEGIN PERFORM set_config('app.picked', v, false); RETURN v; END$$; \
         CREATE AGGREGATE last_picked(text) (SFUNC = pick, STYPE = text); \
         CREATE TABLE orders (id int PRIMARY KEY); \
         CREATE TABLE lines (order_id int REFERENCES orders ON DELETE CASCADE); \
         CREATE FUNCTION lines_trg() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN PERFORM set_config('app.deleted', 'yes', false); RETURN OLD; END$$; \
         CREATE TRIGGER lines_t BEFORE DELETE ON lines \
           FOR EACH ROW EXECUTE FUNCTION lines_trg(); \
         INSERT INTO orders VALUES (1); INSERT INTO lines VALUES (1); \
         CREATE FUNCTION log_it() RETURNS void LANGUAGE sql AS \
           $$ INSERT INTO audit VALUES (2) $$; \
         CREATE TABLE booked (id int); \
         CREATE FUNCTION booked_trg() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN INSERT INTO audit VALUES (NEW.id); RETURN NEW; END$$; \
         CREATE TRIGGER booked_t AFTER INSERT ON booked \
           FOR EACH ROW EXECUTE FUNCTION booked_trg(); \
         CREATE TABLE late (id int); \
         CREATE FUNCTION write_late() RETURNS void LANGUAGE sql AS \
           $$ INSERT INTO late VALUES (1) $$",
    )
    .unwrap();
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    let setting = async |c: &tokio_postgres::Client, name: &str| -> String {
        let sql = format!("SELECT coalesce(current_setting('{name}', true), '')");
        c.query_one(&sql, &[]).await.unwrap().get(0)
    };
    let b_path = setting(&b, "search_path").await;
    let pid = async |c: &tokio_postgres::Client| -> i32 {
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    };
    let first_pid = pid(&a).await;
    for (call, tenant) in [
        ("SELECT set_tenant('tenant_1')", "tenant_1"),
        ("SELECT enter('tenant_2')", "tenant_2"),
        ("CALL enter_proc('tenant_1')", "tenant_1"),
        ("BEGIN; SELECT 1 FROM enter('tenant_2'); COMMIT", "tenant_2"),
        ("SELECT public.SET_TENANT('tenant_1')", "tenant_1"),
        ("SELECT \"Enter\"('tenant_2')", "tenant_2"),
        ("SELECT * FROM entered_too", "tenant_2"),
        (
            "DO $$BEGIN PERFORM set_tenant('tenant_1'); END$$",
            "tenant_1",
        ),
    ] {
        a.batch_execute(call).await.unwrap();
        assert_eq!(setting(&b, "search_path").await, b_path, "{call}");
        assert_eq!(setting(&b, "app.tenant").await, "", "{call}");
        let a_path = setting(&a, "search_path").await;
        assert!(a_path.starts_with(tenant), "{call}: {a_path}");
        assert_eq!(setting(&a, "app.tenant").await, tenant, "{call}");
    }
    // Through the extended protocol, a named statement run twice.
    let statement = a.prepare("SELECT set_tenant($1)").await.unwrap();
    for tenant in ["tenant_2", "tenant_1"] {
        a.execute(&statement, &[&tenant]).await.unwrap();
        assert_eq!(setting(&b, "search_path").await, b_path, "{tenant}");
        assert!(setting(&a, "search_path").await.starts_with(tenant));
    }
    // A trigger's function; a partition's, the statement naming its parent.
    a.batch_execute("INSERT INTO audit VALUES (1)")
        .await
        .unwrap();
    assert_ne!(setting(&b, "lock_timeout").await, "7s");
    assert_eq!(setting(&a, "lock_timeout").await, "7s");
    // A function that writes that table (a.'s lock_timeout set back first).
    a.batch_execute("SET lock_timeout = 0").await.unwrap();
    a.batch_execute("SELECT log_it()").await.unwrap();
    assert_ne!(setting(&b, "lock_timeout").await, "7s");
    assert_eq!(setting(&a, "lock_timeout").await, "7s");
    a.batch_execute("INSERT INTO parted VALUES (1)")
        .await
        .unwrap();
    let idle = "idle_in_transaction_session_timeout";
    assert_ne!(setting(&b, idle).await, "8s");
    assert_eq!(setting(&a, idle).await, "8s");
    // An aggregate's transition function; a trigger a foreign key's cascade fires.
    a.batch_execute("SELECT last_picked(v) FROM (VALUES ('p')) t (v)")
        .await
        .unwrap();
    assert_eq!(setting(&b, "app.picked").await, "");
    assert_eq!(setting(&a, "app.picked").await, "p");
    a.batch_execute("DELETE FROM orders WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(setting(&b, "app.deleted").await, "");
    assert_eq!(setting(&a, "app.deleted").await, "yes");
    // A statement prepared before its function set anything: judged again once the
    // function is replaced (through pgopt).
    let later = a.prepare("SELECT later()").await.unwrap();
    a.execute(&later, &[]).await.unwrap();
    a.batch_execute(
        "CREATE OR REPLACE FUNCTION public.later() RETURNS void LANGUAGE plpgsql AS \
         $$BEGIN SET search_path = tenant_2, public; END$$",
    )
    .await
    .unwrap();
    a.execute(&later, &[]).await.unwrap();
    assert_eq!(setting(&b, "search_path").await, b_path);
    let a_path = setting(&a, "search_path").await;
    assert!(a_path.starts_with("tenant_2"), "{a_path}");
    // Names read back: the pool's one connection stayed.
    assert_eq!(pid(&b).await, first_pid);
    // A function created through pgopt is seen at once.
    a.batch_execute(
        "CREATE FUNCTION slow_down() RETURNS void LANGUAGE plpgsql AS \
         $$BEGIN SET statement_timeout = '9s'; END$$",
    )
    .await
    .unwrap();
    a.batch_execute("SELECT slow_down()").await.unwrap();
    assert_ne!(setting(&b, "statement_timeout").await, "9s");
    assert_eq!(setting(&a, "statement_timeout").await, "9s");
    // A function renamed through pgopt is known by its new name at once.
    a.batch_execute("SET statement_timeout = 0; ALTER FUNCTION slow_down() RENAME TO slower")
        .await
        .unwrap();
    a.batch_execute("SELECT slower()").await.unwrap();
    assert_ne!(setting(&b, "statement_timeout").await, "9s");
    assert_eq!(setting(&a, "statement_timeout").await, "9s");
    // A trigger whose function writes a table whose trigger sets something.
    a.batch_execute("SET lock_timeout = 0").await.unwrap();
    a.batch_execute("INSERT INTO booked VALUES (3)")
        .await
        .unwrap();
    assert_ne!(setting(&b, "lock_timeout").await, "7s");
    assert_eq!(setting(&a, "lock_timeout").await, "7s");
    // A trigger created (through pgopt) after the functions were read: a function
    // writing its table, found at once.
    a.batch_execute("SET lock_timeout = 0").await.unwrap();
    a.batch_execute(
        "CREATE TRIGGER late_t BEFORE INSERT ON late FOR EACH ROW EXECUTE FUNCTION audit_trg()",
    )
    .await
    .unwrap();
    a.batch_execute("SELECT write_late()").await.unwrap();
    assert_ne!(setting(&b, "lock_timeout").await, "7s");
    assert_eq!(setting(&a, "lock_timeout").await, "7s");
    // A setting named at run time: every setting is read back.
    a.batch_execute("SELECT set_any('work_mem', '7MB')")
        .await
        .unwrap();
    assert_ne!(setting(&b, "work_mem").await, "7MB");
    assert_eq!(setting(&a, "work_mem").await, "7MB");
    assert!(setting(&a, "search_path").await.starts_with("tenant_2"));
    // The role so named, which pg_settings does not list, follows its caller too.
    pg.psql("CREATE ROLE tenant_role").unwrap();
    a.batch_execute("SELECT set_any('role', 'tenant_role')")
        .await
        .unwrap();
    let user = "SELECT current_user::text";
    let who = async |c: &tokio_postgres::Client| -> String {
        c.query_one(user, &[]).await.unwrap().get(0)
    };
    assert_eq!(who(&b).await, "postgres");
    assert_eq!(who(&a).await, "tenant_role");
    // SET SESSION SCHEMA in a DO block is search_path's.
    a.batch_execute("DO $$BEGIN SET SESSION SCHEMA 'tenant_1'; END$$")
        .await
        .unwrap();
    assert_eq!(setting(&b, "search_path").await, b_path);
    assert_eq!(setting(&a, "search_path").await, "tenant_1");
}

/// A function or DO block that calls `set_config(…, false)` on a setting PostgreSQL
/// reports (TimeZone, DateStyle…) changes the caller's session, which pgopt did not
/// see in the text: the server's ParameterStatus has it read back, so the caller keeps
/// it on other server connections and the next client of this one does not get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_setting_a_function_changes_follows_its_caller_only() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql(
        "CREATE FUNCTION sneaky_tz() RETURNS void LANGUAGE sql AS \
         $$ SELECT set_config('TimeZone', 'Asia/Tokyo', false) $$",
    )
    .unwrap();
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    let show = async |c: &tokio_postgres::Client| -> String {
        c.query_one("SELECT current_setting('TimeZone')", &[])
            .await
            .unwrap()
            .get(0)
    };
    let before = show(&b).await;
    assert_ne!(before, "Asia/Tokyo");
    a.simple_query("SELECT sneaky_tz()").await.unwrap();
    assert_eq!(show(&b).await, before, "the next client of the connection");
    assert_eq!(show(&a).await, "Asia/Tokyo", "the caller keeps it");
    // SET LOCAL lasts its transaction only.
    a.batch_execute("BEGIN; SET LOCAL TimeZone = 'America/New_York'; COMMIT")
        .await
        .unwrap();
    assert_eq!(show(&a).await, "Asia/Tokyo", "after SET LOCAL");
    assert_eq!(show(&b).await, before, "after SET LOCAL");
    a.batch_execute("DO $$BEGIN PERFORM set_config('DateStyle', 'German', false); END$$")
        .await
        .unwrap();
    let style = "SELECT current_setting('DateStyle')";
    let b_style: String = b.query_one(style, &[]).await.unwrap().get(0);
    assert!(!b_style.contains("German"), "{b_style}");
    let a_style: String = a.query_one(style, &[]).await.unwrap().get(0);
    assert!(a_style.contains("German"), "{a_style}");
    // standard_conforming_strings too (the cache reads backslashes by it).
    let scs = "SELECT current_setting('standard_conforming_strings')";
    a.batch_execute(
        "DO $$BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END$$",
    )
    .await
    .unwrap();
    assert_eq!(
        b.query_one(scs, &[]).await.unwrap().get::<_, String>(0),
        "on"
    );
    assert_eq!(
        a.query_one(scs, &[]).await.unwrap().get::<_, String>(0),
        "off"
    );
    // search_path, which PostgreSQL does not report: a DO block that may set a setting
    // has the session's read back (whatever DO came before it).
    a.batch_execute("DO $$BEGIN PERFORM 1; END$$")
        .await
        .unwrap();
    let path = "SELECT current_setting('search_path')";
    let b_path: String = b.query_one(path, &[]).await.unwrap().get(0);
    for body in [
        "PERFORM set_config('search_path', 'tenant_1, public', false)",
        "SET search_path TO tenant_2, public",
    ] {
        a.batch_execute(&format!("DO $$BEGIN {body}; END$$"))
            .await
            .unwrap();
        assert_eq!(
            b.query_one(path, &[]).await.unwrap().get::<_, String>(0),
            b_path
        );
        let a_path: String = a.query_one(path, &[]).await.unwrap().get(0);
        assert!(a_path.starts_with("tenant_"), "{body}: {a_path}");
    }
    // The role, which pg_settings does not list either.
    pg.psql("CREATE ROLE app_ro").unwrap();
    a.batch_execute("DO $$BEGIN SET ROLE app_ro; END$$")
        .await
        .unwrap();
    let user = "SELECT current_user::text";
    assert_eq!(
        b.query_one(user, &[]).await.unwrap().get::<_, String>(0),
        "postgres"
    );
    assert_eq!(
        a.query_one(user, &[]).await.unwrap().get::<_, String>(0),
        "app_ro"
    );
}

/// A client's `SET ROLE` is applied on every server connection it gets; when that
/// fails (the role was dropped since, or is missing on the server a RELOAD moved the
/// database to), the client's request does not run as the login user: the session
/// ends with the server's error, and nothing of the request ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_can_no_longer_be_set_ends_the_session_before_its_request_runs() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql(
        "CREATE ROLE tenant; CREATE TABLE written (who text); \
         GRANT INSERT, SELECT ON written TO tenant",
    )
    .unwrap();
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    let who = "SELECT current_user::text";
    a.batch_execute("SET ROLE tenant").await.unwrap();
    // The pool's one connection goes to b (its role reset), then back to a, whose
    // role is set again before its request, extended protocol or simple.
    assert_eq!(
        b.query_one(who, &[]).await.unwrap().get::<_, String>(0),
        "postgres"
    );
    assert_eq!(
        a.query_one(who, &[]).await.unwrap().get::<_, String>(0),
        "tenant"
    );
    assert_eq!(
        b.query_one(who, &[]).await.unwrap().get::<_, String>(0),
        "postgres"
    );
    a.batch_execute("INSERT INTO written VALUES (current_user)")
        .await
        .unwrap();
    // The role goes away; b has the connection last.
    assert_eq!(
        b.query_one(who, &[]).await.unwrap().get::<_, String>(0),
        "postgres"
    );
    pg.psql("REVOKE ALL ON written FROM tenant; DROP ROLE tenant")
        .unwrap();
    let e = a
        .batch_execute("INSERT INTO written VALUES (current_user)")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("an error from pgopt");
    assert!(db.message().contains("role"), "{db:?}");
    assert!(a.is_closed() || a.batch_execute("SELECT 1").await.is_err());
    let rows = pg.connect("postgres").await.unwrap();
    let written: Vec<String> = rows
        .query("SELECT who FROM written", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(written, ["tenant"], "the request ran as another role");
    // The pool goes on for others.
    assert_eq!(
        b.query_one(who, &[]).await.unwrap().get::<_, String>(0),
        "postgres"
    );
}

/// A cancel that arrives while pgopt applies the client's settings on a server
/// connection, its request not yet running, waits for them: the settings are applied
/// and the cancel reaches the request. (It used to cancel pgopt's SET, and the request
/// then ran without the client's value: under another client's search_path, say.)
#[tokio::test]
async fn a_cancel_while_pgopt_applies_the_clients_settings_reaches_its_request() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    // A fresh server connection looks the configuration up in pg_ts_config: pgopt's
    // SET of the client's value waits there while the lock is held.
    let locker = pg.connect("postgres").await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK pg_ts_config IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.local_addr().port())
        .user("postgres")
        .dbname("app")
        .options("-c default_text_search_config=simple");
    let (client, conn) = config.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let token = client.cancel_token();
    let request = tokio::spawn(async move {
        let answer = client
            .simple_query("SELECT current_setting('default_text_search_config'), pg_sleep(5)")
            .await
            .map(|messages| {
                messages.into_iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                    _ => None,
                })
            });
        (client, answer)
    });
    // (Watched from outside the locker's transaction, whose view of the activity
    // would stay as it first read it.)
    let watcher = pg.connect("postgres").await.unwrap();
    common::wait_until_waiting_on_lock(&watcher, "%default_text_search_config%").await;
    token.cancel_query(NoTls).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    locker.batch_execute("COMMIT").await.unwrap();
    let (client, answer) = request.await.unwrap();
    match answer {
        Err(e) => assert_eq!(code(&e), Some("57014"), "{e}"),
        Ok(value) => panic!("the request ran, with default_text_search_config {value:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(
        common::value(&client, "SHOW default_text_search_config").await,
        "pg_catalog.simple"
    );
}

/// The same for the client's role, whose request waits for the role to be set: the
/// cancel waits for the role and then reaches the request, and the session goes on
/// with its role. (It used to cancel pgopt's SET ROLE, and the session was ended
/// rather than run as another role.)
#[tokio::test]
async fn a_cancel_while_pgopt_sets_the_clients_role_reaches_its_request() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql("CREATE ROLE tenant").unwrap();
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    a.batch_execute("SET ROLE tenant").await.unwrap();
    // The pool's one connection goes to b (its role reset): a's next request has its
    // role set again first.
    assert_eq!(common::value(&b, "SELECT current_user").await, "postgres");
    // A change to the role makes the server look it up again in pg_authid, which the
    // lock holds back. (Logins need pg_authid too: connected before.)
    let watcher = pg.connect("postgres").await.unwrap();
    let locker = pg.connect("postgres").await.unwrap();
    locker
        .batch_execute("ALTER ROLE tenant CONNECTION LIMIT 10")
        .await
        .unwrap();
    locker
        .batch_execute("BEGIN; LOCK pg_authid IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let token = a.cancel_token();
    let request = tokio::spawn(async move {
        let answer = a.batch_execute("SELECT pg_sleep(5)").await;
        (a, answer)
    });
    common::wait_until_waiting_on_lock(&watcher, "SET%role%").await;
    token.cancel_query(NoTls).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    locker.batch_execute("COMMIT").await.unwrap();
    let (a, answer) = request.await.unwrap();
    let e = answer.expect_err("the request was not cancelled");
    assert_eq!(code(&e), Some("57014"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(common::value(&a, "SELECT current_user").await, "tenant");
}

/// What a client of [`raw_login_with_startup_values`] reads with
/// [`START_UP_VALUES`]: its start-up values.
const START_UP: &str = "myapp Asia/Tokyo s1";
const START_UP_VALUES: &str = "SELECT current_setting('application_name') || ' ' || \
                               current_setting('TimeZone') || ' ' || current_setting('search_path')";

/// A raw client of `app` with start-up values (`application_name` myapp, TimeZone
/// Asia/Tokyo and search_path s1 through `options`).
async fn raw_login_with_startup_values(proxy: &Proxy) -> tokio::net::TcpStream {
    raw_login_with_options(proxy, "-c TimeZone=Asia/Tokyo -c search_path=s1").await
}

/// A raw client of `app` (`application_name` myapp) with start-up `options`.
async fn raw_login_with_options(proxy: &Proxy, options: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let body = format!(
        "\0\x03\0\0user\0postgres\0database\0app\0application_name\0myapp\0\
         options\0{options}\0\0"
    );
    let body = body.as_bytes();
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    raw.write_all(&startup).await.unwrap();
    read_until(&mut raw, b'Z').await;
    raw
}

/// The first column of the first row `sql` (a simple query) gives the raw client.
async fn raw_value(raw: &mut tokio::net::TcpStream, sql: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(&message(b'Q', format!("{sql}\0").as_bytes()))
        .await
        .unwrap();
    let mut reply = Vec::new();
    let mut value = None;
    loop {
        let mut at = 0;
        while let Some(head) = reply.get(at..at + 5) {
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let Some(body) = reply.get(at + 5..at + 1 + len) else {
                break;
            };
            match head[0] {
                b'D' if value.is_none() => {
                    let n = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
                    value = Some(String::from_utf8(body[6..6 + n].to_vec()).unwrap());
                }
                b'E' => panic!("{sql}: {}", String::from_utf8_lossy(body)),
                b'Z' => return value.expect("a row"),
                _ => {}
            }
            at += 1 + len;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed");
        reply.extend_from_slice(&buf[..n]);
    }
}

/// RESET ALL among other statements of a query (asyncpg's pool sends `SELECT
/// pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` at each release), or
/// after SETs in one extended-protocol batch, takes the client back to its start-up
/// values, as in PostgreSQL; the server connection's own defaults, which it reports
/// or a SET's read-back would give, never become the client's.
#[tokio::test]
async fn reset_all_among_statements_or_in_a_batch_gives_back_the_start_up_values() {
    use tokio::io::AsyncWriteExt;
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql("CREATE SCHEMA s1; CREATE SCHEMA s2").unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let mut raw = raw_login_with_startup_values(&proxy).await;
    let (values, start_up) = (START_UP_VALUES, START_UP);
    assert_eq!(raw_value(&mut raw, values).await, start_up);
    for reset in [
        "SELECT 1; RESET ALL",
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
    ] {
        assert_eq!(
            raw_value(&mut raw, "SET TimeZone = 'UTC'; SHOW TimeZone").await,
            "UTC"
        );
        raw_value(&mut raw, &format!("{reset}; SELECT 1")).await;
        assert_eq!(raw_value(&mut raw, values).await, start_up, "{reset}");
        // The next client of the connection gets its own values, and this one its.
        other.batch_execute("SELECT 1").await.unwrap();
        assert_eq!(raw_value(&mut raw, values).await, start_up, "{reset}");
    }
    // One batch, one Sync: SETs, then RESET ALL.
    let mut batch = Vec::new();
    for sql in [
        "SET application_name = 'tmp'",
        "SET search_path = s2",
        "SET TimeZone = 'UTC'",
        "RESET ALL",
    ] {
        batch.extend(run_unnamed_without_end(sql));
    }
    batch.extend(message(b'S', b""));
    raw.write_all(&batch).await.unwrap();
    read_until(&mut raw, b'Z').await;
    assert_eq!(raw_value(&mut raw, values).await, start_up);
    other.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(raw_value(&mut raw, values).await, start_up);
    // A RESET alone in a batch, its portal described (as JDBC and pgx send it), also
    // as a fresh client's first request.
    for (i, reset) in ["RESET ALL", "RESET TimeZone", "SET TimeZone TO DEFAULT"]
        .iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        if i < 3 {
            raw_value(&mut raw, "SET TimeZone = 'UTC'; SELECT 1").await;
        } else {
            raw = raw_login_with_startup_values(&proxy).await;
        }
        let mut batch = common::message(b'P', format!("\0{reset}\0\0\0").as_bytes());
        batch.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        batch.extend(message(b'D', b"P\0"));
        batch.extend(message(b'E', b"\0\0\0\0\0"));
        batch.extend(message(b'S', b""));
        raw.write_all(&batch).await.unwrap();
        read_until(&mut raw, b'Z').await;
        assert_eq!(raw_value(&mut raw, values).await, start_up, "{reset}");
        other.batch_execute("SELECT 1").await.unwrap();
        assert_eq!(raw_value(&mut raw, values).await, start_up, "{reset}");
    }
}

/// Session state a DO block or a function leaves (a temporary table, a session
/// advisory lock…), which pgopt refuses as a statement of its own but can't see in
/// code: the connection then stays with its client, which may use the state in its
/// next transactions as on PostgreSQL; no other client sees it or waits on it, and the
/// connection closes when the client leaves. Before, the next client of the connection
/// read the first one's temporary table, and the lock was held for good. Code that
/// leaves nothing (a transaction-level lock) keeps pooling as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_left_by_code_keeps_the_connection_with_its_client() {
    let (pg, proxy) = start(PoolMode::Transaction, 2).await;
    pg.psql(
        "CREATE FUNCTION lock_it(k bigint) RETURNS void LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM pg_advisory_lock(k); END $$; \
         CREATE FUNCTION lock_briefly(k bigint) RETURNS void LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM pg_advisory_xact_lock(k); END $$; \
         CREATE FUNCTION run_sql(q text) RETURNS void LANGUAGE plpgsql AS \
           $$ BEGIN EXECUTE q; END $$",
    )
    .unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    let pid = "SELECT pg_backend_pid()::text";
    for (i, made) in [
        "DO $$ BEGIN CREATE TEMP TABLE secrets (v text); \
         INSERT INTO secrets VALUES ('mine'); END $$",
        "SELECT lock_it(4242)",
        "DO $$ BEGIN EXECUTE 'DECLARE c CURSOR WITH HOLD FOR SELECT 1'; END $$",
        // Dynamic SQL: what it runs is not in the function's text.
        "SELECT run_sql('SELECT pg_advisory_lock(4242)')",
    ]
    .into_iter()
    .enumerate()
    {
        let a = connect(&proxy, "postgres", None).await.unwrap();
        let b = connect(&proxy, "postgres", None).await.unwrap();
        a.batch_execute(made).await.unwrap();
        let mine = common::value(&a, pid).await;
        for _ in 0..3 {
            assert_eq!(common::value(&a, pid).await, mine, "{made}");
            assert_ne!(common::value(&b, pid).await, mine, "{made}");
        }
        if i == 0 {
            assert_eq!(common::value(&a, "SELECT v FROM secrets").await, "mine");
            let err = b.batch_execute("SELECT v FROM secrets").await.unwrap_err();
            assert_eq!(code(&err), Some("42P01"), "{err}");
        }
        drop(a);
        // Its connection closes, and what it held with it.
        let gone = format!("SELECT count(*)::text FROM pg_stat_activity WHERE pid = {mine}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while common::value(&direct, &gone).await != "0" {
            assert!(Instant::now() < deadline, "{made}: its connection stayed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let free = "SELECT pg_try_advisory_lock(4242)::text";
        assert_eq!(common::value(&direct, free).await, "true");
        direct
            .batch_execute("SELECT pg_advisory_unlock_all()")
            .await
            .unwrap();
    }
    // A function that may leave state, and leaves none (a transaction-level lock):
    // its client holds no connection after it. (Holding one, the other two clients'
    // blocks would not both get one of the two.)
    let a = connect(&proxy, "postgres", None).await.unwrap();
    a.batch_execute("SELECT lock_briefly(1)").await.unwrap();
    let (b, c) = (
        connect(&proxy, "postgres", None).await.unwrap(),
        connect(&proxy, "postgres", None).await.unwrap(),
    );
    for client in [&b, &c] {
        tokio::time::timeout(Duration::from_secs(5), client.batch_execute("BEGIN"))
            .await
            .expect("a connection for each block")
            .unwrap();
    }
}

/// A driver's pipeline (psycopg's, asyncpg's): statements after a RESET in the same
/// batch, or in a batch sent before its answer came, run with the client's start-up
/// values, as on PostgreSQL. Before, they ran with the server's own defaults (the
/// start-up values were applied again only once the pipeline was answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_pipelined_after_a_reset_run_with_the_start_up_values() {
    use tokio::io::AsyncWriteExt;
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql("CREATE SCHEMA s1").unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let mut raw = raw_login_with_startup_values(&proxy).await;
    let (values, start_up) = (START_UP_VALUES, START_UP);
    let sync = || message(b'S', b"");
    let cat = |parts: &[Vec<u8>]| parts.concat();
    let set = run_unnamed_without_end("SET TimeZone = 'UTC'");
    let reset_all = run_unnamed_without_end("RESET ALL");
    let reset_one = run_unnamed_without_end("RESET search_path");
    let read = run_unnamed_without_end(values);
    // The unnamed statement (RESET ALL) bound and run again, then the read.
    let again = cat(&[
        message(b'B', b"\0\0\0\0\0\0\0\0"),
        message(b'E', b"\0\0\0\0\0"),
    ]);
    let path = run_unnamed_without_end("SET search_path = public");
    for (i, pipeline) in [
        cat(&[set.clone(), reset_all.clone(), read.clone(), sync()]),
        cat(&[set.clone(), reset_all.clone(), sync(), read.clone(), sync()]),
        cat(&[path.clone(), reset_one, read.clone(), sync()]),
        cat(&[set.clone(), reset_all.clone(), again, read.clone(), sync()]),
        // In a block.
        cat(&[
            run_unnamed_without_end("BEGIN"),
            path,
            reset_all,
            read.clone(),
            run_unnamed_without_end("COMMIT"),
            sync(),
        ]),
    ]
    .into_iter()
    .enumerate()
    {
        raw.write_all(&pipeline).await.unwrap();
        let syncs = pipeline.windows(5).filter(|m| m == b"S\0\0\0\x04").count();
        let rows = raw_rows(&mut raw, syncs).await;
        assert_eq!(rows, [start_up], "pipeline {i}");
        assert_eq!(raw_value(&mut raw, values).await, start_up, "pipeline {i}");
        // The next client of the connection gets its own values, and this one its.
        let theirs = common::value(&other, "SHOW search_path").await;
        assert_eq!(theirs, "\"$user\", public", "pipeline {i}");
        assert_eq!(raw_value(&mut raw, values).await, start_up, "pipeline {i}");
    }
}

/// A client's start-up DateStyle, IntervalStyle and TimeZone are reported as
/// PostgreSQL spells them (`ISO, MDY` for `iso`): the first two at login, as
/// PostgreSQL does, a time zone's name (which only the server spells) before the
/// answer to the first such client's first query, and at later ones' login. Before,
/// a client kept its own spelling: psycopg refused to read a date ("unexpected
/// DateStyle: iso"), or took `asia/tokyo` for an unknown zone.
#[tokio::test]
async fn start_up_values_are_reported_as_postgresql_spells_them() {
    use tokio::io::AsyncWriteExt;
    let pg = Postgres::start().await.unwrap();
    // (With the cache on, the settings are applied by a query of pgopt's own, ahead
    // of the client's: what it draws is what the client must hear.)
    let proxy = common::start_with(&pg, |c| {
        c.pool_mode = PoolMode::Transaction;
        c.cache.enabled = true;
        c.cache.tables = vec!["items".into()];
    })
    .await;
    let options = "-c DateStyle=iso -c IntervalStyle=ISO_8601 -c TimeZone=asia/tokyo";
    let reported = async |port: u16, database: &str| {
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let body =
            format!("\0\x03\0\0user\0postgres\0database\0{database}\0options\0{options}\0\0");
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(body.as_bytes());
        raw.write_all(&startup).await.unwrap();
        let statuses = |messages: Vec<(u8, Vec<u8>)>| {
            messages
                .into_iter()
                .filter(|(tag, _)| *tag == b'S')
                .map(|(_, body)| {
                    let text = String::from_utf8(body).unwrap();
                    let mut fields = text.split('\0').map(str::to_string);
                    (fields.next().unwrap(), fields.next().unwrap())
                })
                .collect::<std::collections::HashMap<_, _>>()
        };
        let login = statuses(raw_messages(&mut raw, 1).await);
        raw.write_all(&message(b'Q', b"SELECT 1\0")).await.unwrap();
        let mut after = login.clone();
        after.extend(statuses(raw_messages(&mut raw, 1).await));
        (login, after)
    };
    let (direct_login, direct_after) = reported(pg.port(), "postgres").await;
    let (login, after) = reported(proxy.local_addr().port(), "app").await;
    assert_eq!(direct_login["DateStyle"], "ISO, MDY");
    for name in ["DateStyle", "IntervalStyle"] {
        assert_eq!(login[name], direct_login[name], "{name} at login");
    }
    for name in ["DateStyle", "IntervalStyle", "TimeZone"] {
        assert_eq!(after[name], direct_after[name], "{name}");
    }
    // A later client with the same values is told PostgreSQL's spelling at login,
    // though its server connection has them already (nothing is reported to it).
    let (login, after) = reported(proxy.local_addr().port(), "app").await;
    for name in ["DateStyle", "IntervalStyle", "TimeZone"] {
        assert_eq!(login[name], direct_login[name], "{name} at a later login");
        assert_eq!(after[name], direct_after[name], "{name} later");
    }
}

/// What a RESET reports (ParameterStatus) is the client's start-up value it goes back
/// to, as PostgreSQL reports it, not the server connection's own default. Before, a
/// driver heard `Etc/UTC` and `pgopt` after RESET ALL, and kept them (psycopg's
/// `info.timezone`) until the start-up values were set again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_reports_the_start_up_values() {
    use tokio::io::AsyncWriteExt;
    let (_pg, proxy) = start(PoolMode::Transaction, 1).await;
    // (As PostgreSQL writes it: `Asia/Tokyo`.)
    let mut raw = raw_login_with_options(&proxy, "-c TimeZone=asia/tokyo").await;
    for reset in ["RESET ALL", "RESET TimeZone", "SET TimeZone TO DEFAULT"] {
        raw_value(
            &mut raw,
            "SET TimeZone = 'UTC'; SET application_name = 'x'; SELECT 1",
        )
        .await;
        raw.write_all(&message(b'Q', format!("{reset}\0").as_bytes()))
            .await
            .unwrap();
        // The ParameterStatus messages up to the ReadyForQuery.
        let reported: Vec<(String, String)> = raw_messages(&mut raw, 1)
            .await
            .into_iter()
            .filter(|(tag, _)| *tag == b'S')
            .map(|(_, body)| {
                let text = String::from_utf8(body).unwrap();
                let mut fields = text.split('\0').map(str::to_string);
                (fields.next().unwrap(), fields.next().unwrap())
            })
            .collect();
        let of = |name: &str| {
            reported
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(of("TimeZone").as_deref(), Some("Asia/Tokyo"), "{reset}");
        if reset == "RESET ALL" {
            assert_eq!(of("application_name").as_deref(), Some("myapp"));
        }
        let values = "SELECT current_setting('TimeZone')";
        assert_eq!(raw_value(&mut raw, values).await, "Asia/Tokyo", "{reset}");
    }
}

/// A RESET (or SET) in an extended-protocol batch that then fails is undone with the
/// batch's implicit transaction, as on PostgreSQL: the client keeps the value it had,
/// and the next client of the connection does not get it. Before, pgopt took the RESET
/// as done: the client's SET stayed on the connection for the next client, and the
/// client itself was told its start-up value. And DISCARD ALL after a RESET, each in
/// its own batch, sent together: it runs (before, the start-up values set again went
/// into its batch, where PostgreSQL refuses DISCARD ALL with 25001).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_a_failed_batch_is_undone_with_it() {
    use tokio::io::AsyncWriteExt;
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql("CREATE SCHEMA s1; CREATE SCHEMA s2").unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let mut raw = raw_login_with_startup_values(&proxy).await;
    let sync = || message(b'S', b"");
    let fail = run_unnamed_without_end("SELECT 1/0");
    for (set, change, show, want) in [
        ("SET work_mem = '9MB'", "RESET work_mem", "work_mem", "9MB"),
        (
            "SET work_mem = '9MB'",
            "SET work_mem TO DEFAULT",
            "work_mem",
            "9MB",
        ),
        ("SET work_mem = '9MB'", "RESET ALL", "work_mem", "9MB"),
        (
            "SET search_path = s2",
            "RESET search_path",
            "search_path",
            "s2",
        ),
        (
            "SET work_mem = '5MB'",
            "SET work_mem = '6MB'",
            "work_mem",
            "5MB",
        ),
    ] {
        raw_value(&mut raw, &format!("{set}; SELECT 1")).await;
        let batch = [run_unnamed_without_end(change), fail.clone(), sync()].concat();
        raw.write_all(&batch).await.unwrap();
        read_until(&mut raw, b'Z').await;
        let sql = format!("SELECT current_setting('{show}')");
        assert_eq!(raw_value(&mut raw, &sql).await, want, "{change}");
        // The other client of the one connection has its own.
        let theirs = common::value(&other, "SHOW work_mem").await;
        assert_eq!(theirs, "4MB", "{change}");
        assert_eq!(raw_value(&mut raw, &sql).await, want, "{change}");
        raw_value(&mut raw, "RESET ALL; SELECT 1").await;
    }
    // RESET, then DISCARD ALL: two batches, one write.
    let batch = [
        run_unnamed_without_end("RESET TimeZone"),
        sync(),
        run_unnamed_without_end("DISCARD ALL"),
        sync(),
    ]
    .concat();
    raw.write_all(&batch).await.unwrap();
    assert_eq!(raw_rows(&mut raw, 2).await, Vec::<String>::new());
    let values = "SELECT current_setting('TimeZone')";
    assert_eq!(raw_value(&mut raw, values).await, "Asia/Tokyo");
}

/// The messages (type, body) the raw client receives up to its `readies`-th
/// ReadyForQuery.
async fn raw_messages(raw: &mut tokio::net::TcpStream, mut readies: usize) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let (mut reply, mut at, mut messages) = (Vec::new(), 0, Vec::new());
    loop {
        while let Some(head) = reply.get(at..at + 5) {
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let Some(body) = reply.get(at + 5..at + 1 + len) else {
                break;
            };
            messages.push((head[0], body.to_vec()));
            at += 1 + len;
            if head[0] == b'Z' {
                readies -= 1;
                if readies == 0 {
                    return messages;
                }
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
            .await
            .expect("a reply in 10 s")
            .unwrap();
        assert!(n > 0, "closed");
        reply.extend_from_slice(&buf[..n]);
    }
}

/// The first column of each DataRow the raw client receives up to its `readies`-th
/// ReadyForQuery (an ErrorResponse fails the test).
async fn raw_rows(raw: &mut tokio::net::TcpStream, readies: usize) -> Vec<String> {
    let mut rows = Vec::new();
    for (tag, body) in raw_messages(raw, readies).await {
        match tag {
            b'D' => {
                let n = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
                rows.push(String::from_utf8(body[6..6 + n].to_vec()).unwrap());
            }
            b'E' => panic!("{}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    rows
}

/// Parse, Bind and Execute of `sql` as the unnamed statement and portal.
fn run_unnamed_without_end(sql: &str) -> Vec<u8> {
    let mut batch = message(b'P', format!("\0{sql}\0\0\0").as_bytes());
    batch.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(message(b'E', b"\0\0\0\0\0"));
    batch
}

/// A prepared SET run again (Bind and Execute, no new Parse) after another change:
/// what it sets is read back after each run, so the client keeps it on its next
/// server connection and the next client of this one does not get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_set_run_again_is_followed_each_time() {
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    pg.psql("CREATE ROLE tenant").unwrap();
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    let who = "SELECT current_user::text";
    let set = a.prepare("SET ROLE tenant").await.unwrap();
    let reset = a.prepare("RESET ROLE").await.unwrap();
    let path = a.prepare("SET search_path = pg_catalog").await.unwrap();
    let unpath = a.prepare("RESET search_path").await.unwrap();
    for statement in [&set, &reset, &set, &path, &unpath, &path] {
        a.execute(statement, &[]).await.unwrap();
    }
    assert_eq!(
        b.query_one(who, &[]).await.unwrap().get::<_, String>(0),
        "postgres"
    );
    assert_ne!(common::value(&b, "SHOW search_path").await, "pg_catalog");
    assert_eq!(
        a.query_one(who, &[]).await.unwrap().get::<_, String>(0),
        "tenant"
    );
    assert_eq!(common::value(&a, "SHOW search_path").await, "pg_catalog");
    for statement in [&reset, &unpath] {
        a.execute(statement, &[]).await.unwrap();
    }
    assert_eq!(
        a.query_one(who, &[]).await.unwrap().get::<_, String>(0),
        "postgres"
    );
    assert_ne!(common::value(&a, "SHOW search_path").await, "pg_catalog");
    // set_config, and SET SESSION AUTHORIZATION, the same way.
    let config = a
        .prepare("SELECT set_config('role', 'tenant', false)")
        .await
        .unwrap();
    let auth = a.prepare("SET SESSION AUTHORIZATION tenant").await.unwrap();
    let unauth = a.prepare("RESET SESSION AUTHORIZATION").await.unwrap();
    let as_whom = async |c: &tokio_postgres::Client| -> String {
        c.query_one(who, &[]).await.unwrap().get(0)
    };
    for statement in [&config, &reset, &config] {
        a.execute(statement, &[]).await.unwrap();
    }
    assert_eq!(as_whom(&b).await, "postgres");
    assert_eq!(as_whom(&a).await, "tenant");
    for statement in [&reset, &auth, &unauth, &auth] {
        a.execute(statement, &[]).await.unwrap();
    }
    assert_eq!(as_whom(&b).await, "postgres");
    assert_eq!(as_whom(&a).await, "tenant");
}

/// A server connection whose backend an administrator terminates mid-transaction:
/// the client hears PostgreSQL's FATAL (57P01) and the connection closes, as without
/// pgopt. Before, pgopt's own 08006 came after it.
#[tokio::test]
async fn a_terminated_backend_gives_the_client_postgresqls_fatal_alone() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (pg, proxy) = start(PoolMode::Transaction, 1).await;
    let mut raw = raw_login(&proxy).await;
    raw.write_all(&message(b'Q', b"BEGIN\0")).await.unwrap();
    read_until(&mut raw, b'Z').await;
    pg.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'pgopt' AND state = 'idle in transaction'",
    )
    .unwrap();
    let mut reply = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the connection closed");
    let mut codes = Vec::new();
    let mut at = 0;
    while let Some(head) = reply.get(at..at + 5) {
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let body = &reply[at + 5..at + 1 + len];
        if head[0] == b'E' {
            let fields = String::from_utf8_lossy(body).into_owned();
            let code = fields
                .split('\0')
                .find_map(|f| f.strip_prefix('C').map(str::to_string));
            codes.push(code.unwrap_or_default());
        }
        at += 1 + len;
    }
    assert_eq!(codes, ["57P01"]);
}
