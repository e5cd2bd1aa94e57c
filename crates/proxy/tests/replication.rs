//! Replication connections through pgopt (`replication=true` / `database` in the
//! start-up packet): PostgreSQL's own tools and a logical subscription, against a
//! real server, with the proxy in transaction mode (replication clients are not
//! pooled whatever the mode).

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{admin, certificate, message, run, show, start_with, temp_dir};
use pgopt_embedded::Postgres;
use pgopt_proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A libpq conninfo for the proxy, database `app`, user postgres, plus `more`.
fn conninfo(proxy: &Proxy, more: &str) -> String {
    let port = proxy.local_addr().port();
    format!("host=127.0.0.1 port={port} user=postgres dbname=app {more}")
}

fn tool(pg: &Postgres, name: &str) -> Command {
    Command::new(pg.binaries().program(name))
}

/// Runs a tool to success and returns its stdout, off the test's runtime (which
/// serves some of the proxy's sessions).
async fn run_tool(mut cmd: Command) -> String {
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap()
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first column of `sql`'s one row, a count.
async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until [`count`] of `sql` is `n`.
async fn wait_for_count(what: &str, client: &tokio_postgres::Client, sql: &str, n: i64) {
    wait_for(what, async || count(client, sql).await == n).await;
}

/// A raw client logged in with `params` (name, value pairs beside the user), and the
/// messages of its login up to ReadyForQuery.
async fn raw_connect(proxy: &Proxy, params: &[(&str, &str)]) -> (TcpStream, Vec<(u8, Vec<u8>)>) {
    let mut body = b"\0\x03\0\0user\0postgres\0".to_vec();
    for (name, value) in params {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    let mut raw = TcpStream::connect(proxy.local_addr()).await.unwrap();
    raw.write_all(&startup).await.unwrap();
    let login = read_messages(&mut raw, b"ZE").await;
    (raw, login)
}

/// Messages (type, body) up to and including the first of a type in `last`.
async fn read_messages(raw: &mut TcpStream, last: &[u8]) -> Vec<(u8, Vec<u8>)> {
    read_messages_n(raw, last, 1).await
}

/// [`read_messages`] up to the `n`-th message of a type in `last`.
async fn read_messages_n(raw: &mut TcpStream, last: &[u8], mut n: usize) -> Vec<(u8, Vec<u8>)> {
    let (mut bytes, mut messages) = (Vec::new(), Vec::new());
    loop {
        while bytes.len() >= 5 {
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            if bytes.len() < 1 + len {
                break;
            }
            let tag = bytes[0];
            messages.push((tag, bytes[5..1 + len].to_vec()));
            bytes.drain(..1 + len);
            if last.contains(&tag) {
                n -= 1;
                if n == 0 {
                    return messages;
                }
            }
        }
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(20), raw.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("nothing in 20 s after {messages:?}"))
            .unwrap();
        assert!(n > 0, "closed after {messages:?}");
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// An ErrorResponse's field `field` (`C` the SQLSTATE, `M` the message).
fn error_field(body: &[u8], field: u8) -> String {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&field))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', format!("{sql}\0").as_bytes())
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 30 s");
}

#[tokio::test]
async fn pg_basebackup_and_pg_receivewal_stream_through_the_proxy() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute(
            "CREATE TABLE kept (id int); INSERT INTO kept SELECT generate_series(1, 1000)",
        )
        .await
        .unwrap();

    // A base backup with its WAL streamed beside it (two replication connections),
    // checked by pg_verifybackup. PostgreSQL 15's tools send database "replication":
    // the proxy's one database takes it.
    let backup = temp_dir("replication-basebackup").join("data");
    let mut basebackup = tool(&pg, "pg_basebackup");
    basebackup
        .args(["-d", &conninfo(&proxy, "application_name=bb")])
        .arg("-D")
        .arg(&backup)
        .args(["-X", "stream", "-c", "fast", "--no-sync"]);
    run_tool(basebackup).await;
    assert!(backup.join("PG_VERSION").exists());
    let mut verify = tool(&pg, "pg_verifybackup");
    verify.arg(&backup);
    run_tool(verify).await;

    // WAL to a slot, up to a position.
    direct
        .batch_execute("SELECT pg_create_physical_replication_slot('rw', true); INSERT INTO kept SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    let end: String = direct
        .query_one("SELECT (pg_switch_wal() + 0)::text", &[])
        .await
        .unwrap()
        .get(0);
    let wal = temp_dir("replication-receivewal");
    let mut receivewal = tool(&pg, "pg_receivewal");
    receivewal
        .args(["-d", &conninfo(&proxy, "")])
        .arg("-D")
        .arg(&wal)
        .args(["-S", "rw", "--no-loop", "--no-sync"])
        .arg(format!("--endpos={end}"));
    run_tool(receivewal).await;
    let files = std::fs::read_dir(&wal).unwrap().count();
    assert!(files > 0, "pg_receivewal wrote nothing");
    // Both ends went away with the tools: no client, no server connection is left.
    let console = admin(&proxy).await;
    wait_for("the pairs closed", async || {
        show(&console, "SERVERS")
            .await
            .iter()
            .all(|s| s["replication"] == "none")
    })
    .await;
    let _ = std::fs::remove_dir_all(backup.parent().unwrap());
    let _ = std::fs::remove_dir_all(&wal);
}

#[tokio::test]
async fn a_synchronous_standby_streams_through_the_proxy_under_its_own_name() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let port = proxy.local_addr().port();
    // Its base backup and its walreceiver both go through the proxy (pg_basebackup
    // -R writes the proxy into primary_conninfo).
    let standby = Postgres::start_replica_via(&pg, port, Some("standby1"))
        .await
        .unwrap();
    let primary = pg.connect("postgres").await.unwrap();
    primary
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
        .await
        .unwrap();
    primary
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    wait_for_count(
        "the standby streaming as synchronous",
        &primary,
        "SELECT count(*) FROM pg_stat_replication
                  WHERE application_name = 'standby1' AND sync_state = 'sync'",
        1,
    )
    .await;
    // A commit that waits for the standby to apply it: under any other name than
    // its own, it would wait for ever.
    let commit = primary.batch_execute(
        "SET synchronous_commit = remote_apply;
         CREATE TABLE applied (id int);
         INSERT INTO applied VALUES (1)",
    );
    tokio::time::timeout(Duration::from_secs(30), commit)
        .await
        .expect("the synchronous standby confirmed nothing")
        .unwrap();
    let on_standby = standby.connect("postgres").await.unwrap();
    let n = count(&on_standby, "SELECT count(*) FROM applied").await;
    assert_eq!(n, 1);
    let clients = show(&admin(&proxy).await, "CLIENTS").await;
    assert!(
        clients.iter().any(|c| c["replication"] == "physical"
            && c["application_name"] == "standby1"
            && c["database"] == "app"),
        "{clients:?}"
    );
    // Synchronous replication off again before the standby goes.
    primary
        .batch_execute("ALTER SYSTEM RESET synchronous_standby_names")
        .await
        .unwrap();
    primary
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_logical_subscription_and_pg_recvlogical_replicate_through_the_proxy() {
    let pg = Postgres::builder()
        .setting("wal_level", "logical")
        .start()
        .await
        .unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let source = pg.connect("postgres").await.unwrap();
    source
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items VALUES (1, 'one');
             CREATE PUBLICATION pub FOR TABLE items",
        )
        .await
        .unwrap();
    for (slot, plugin) in [("sub", "pgoutput"), ("decoded", "test_decoding")] {
        source
            .execute(
                "SELECT pg_create_logical_replication_slot($1, $2)",
                &[&slot, &plugin],
            )
            .await
            .unwrap();
    }

    // A logical replication connection takes SQL and the walsender's commands, with
    // the client's own start-up parameters.
    let psql = |sql: &str| {
        let mut psql = tool(&pg, "psql");
        psql.args(["-X", "-At", "-d"])
            .arg(conninfo(
                &proxy,
                "replication=database application_name=walker options='-c work_mem=7MB'",
            ))
            .args(["-c", sql]);
        run_tool(psql)
    };
    assert_eq!(psql("SHOW application_name").await.trim(), "walker");
    assert_eq!(psql("SHOW work_mem").await.trim(), "7MB");
    assert!(psql("IDENTIFY_SYSTEM").await.contains('|'));

    // A subscription in another database of the same server, connected through the
    // proxy: the initial copy, then changes as they commit.
    let target = pg.create_database("copy").await.unwrap();
    target
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    target
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub WITH (slot_name = sub, create_slot = false)",
            conninfo(&proxy, "")
        ))
        .await
        .unwrap();
    let copied = async |n: i64| count(&target, "SELECT count(*) FROM items").await == n;
    wait_for("the initial copy", async || copied(1).await).await;
    source
        .batch_execute("INSERT INTO items VALUES (2, 'two'), (3, 'three')")
        .await
        .unwrap();
    wait_for("the change", async || copied(3).await).await;
    // The walsender has the subscription's own application_name, and the proxy
    // lists the pair as logical replication.
    let named = count(
        &source,
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'sub'",
    )
    .await;
    assert_eq!(named, 1);
    let console = admin(&proxy).await;
    let clients = show(&console, "CLIENTS").await;
    assert!(
        clients
            .iter()
            .any(|c| c["replication"] == "logical" && c["application_name"] == "sub"),
        "{clients:?}"
    );
    let servers = show(&console, "SERVERS").await;
    assert!(
        servers
            .iter()
            .any(|s| s["replication"] == "logical" && s["close_needed"] == "0"),
        "{servers:?}"
    );
    target
        .batch_execute("ALTER SUBSCRIPTION sub DISABLE")
        .await
        .unwrap();

    // pg_recvlogical, up to a position.
    // (Committed and flushed, the server's synchronous_commit being off: a walsender
    // decodes only flushed WAL. The row after it only moves the end on.)
    source
        .batch_execute(
            "SET synchronous_commit = on;
             INSERT INTO items VALUES (4, 'four');
             INSERT INTO items VALUES (5, 'five')",
        )
        .await
        .unwrap();
    let end: String = source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let mut recvlogical = tool(&pg, "pg_recvlogical");
    recvlogical
        .args(["-d", &conninfo(&proxy, ""), "-S", "decoded", "--start"])
        .args(["-f", "-", "--no-loop"])
        .arg(format!("--endpos={end}"));
    let decoded = run_tool(recvlogical).await;
    assert!(
        decoded.contains("table public.items: INSERT: id[integer]:4 v[text]:'four'"),
        "{decoded}"
    );
}

#[tokio::test]
async fn replication_clients_are_refused_as_postgresql_refuses_them_and_cancel_and_kill_reach_them()
{
    let pg = Postgres::start().await.unwrap();
    let rules = "host replication walker 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n";
    let proxy = start_with(&pg, |c| {
        c.hba = Some(std::sync::Arc::new(
            pgopt_proxy::hba::Hba::parse(rules).unwrap(),
        ));
        // Two databases: a physical connection must name one.
        let mut other = c.databases[0].clone();
        other.name = "other".into();
        c.databases.push(other);
    })
    .await;
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute("CREATE ROLE walker LOGIN REPLICATION; CREATE ROLE plain LOGIN")
        .await
        .unwrap();

    // pgopt's own refusals.
    let port = proxy.local_addr().port();
    let psql = |user: &str, db: &str, replication: &str| {
        let mut psql = tool(&pg, "psql");
        psql.args(["-X", "-At", "-c", "IDENTIFY_SYSTEM", "-d"])
            .arg(format!(
                "host=127.0.0.1 port={port} user={user} dbname={db} replication={replication}"
            ));
        psql
    };
    let refused = async |cmd: Command| {
        let out = output(cmd).await;
        assert!(!out.status.success());
        stderr(&out)
    };
    // pgopt's own refusals, then the server's: (user, database, replication, what
    // the error says — one of).
    let cases: [(&str, &str, &str, &[&str]); 5] = [
        ("postgres", "app", "sometimes", &["invalid value for parameter \"replication\""]),
        ("postgres", "pgopt", "database", &["admin console takes no replication connections"]),
        // Physical replication matches the `replication` rule alone.
        (
            "postgres",
            "app",
            "true",
            &["no auth_hba_file entry for replication connection from host \"127.0.0.1\", user \"postgres\""],
        ),
        // Two databases: a physical connection must name one.
        ("walker", "replication", "true", &["a physical replication connection goes to the database it names"]),
        // A role without REPLICATION (PostgreSQL 16 and later say it otherwise).
        ("plain", "app", "database", &["replication role", "permission denied to start WAL sender"]),
    ];
    for (user, db, replication, wants) in cases {
        let e = refused(psql(user, db, replication)).await;
        assert!(
            wants.iter().any(|w| e.contains(w)),
            "{user} {db} {replication}: {e}"
        );
    }
    let ok = run_tool(psql("walker", "other", "true")).await;
    assert!(ok.contains('|'), "{ok}");

    // A cancel reaches the walsender's query.
    let (mut raw, login) =
        raw_connect(&proxy, &[("database", "app"), ("replication", "database")]).await;
    let key = login
        .iter()
        .find(|(tag, _)| *tag == b'K')
        .map(|(_, body)| body.clone())
        .expect("BackendKeyData");
    raw.write_all(&query("SELECT pg_sleep(30)")).await.unwrap();
    wait_for_count(
        "the walsender's query running",
        &direct,
        "SELECT count(*) FROM pg_stat_activity
                  WHERE backend_type = 'walsender' AND query = 'SELECT pg_sleep(30)'",
        1,
    )
    .await;
    let mut cancel = 16i32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&80877102i32.to_be_bytes());
    cancel.extend_from_slice(&key);
    TcpStream::connect(proxy.local_addr())
        .await
        .unwrap()
        .write_all(&cancel)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let reply = read_messages(&mut raw, b"Z").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let error = reply
        .iter()
        .find(|(tag, _)| *tag == b'E')
        .expect("an error");
    assert_eq!(error_field(&error.1, b'C'), "57014");

    // The views show both ends; KILL ends the pair with 57P01.
    raw.write_all(&query("IDENTIFY_SYSTEM")).await.unwrap();
    read_messages(&mut raw, b"Z").await;
    let console = admin(&proxy).await;
    let clients = show(&console, "CLIENTS").await;
    let client = clients
        .iter()
        .find(|c| c["replication"] == "logical")
        .unwrap_or_else(|| panic!("{clients:?}"));
    let servers = show(&console, "SERVERS").await;
    assert!(
        servers
            .iter()
            .any(|s| s["replication"] == "logical" && s["link"] == client["id"]),
        "{servers:?}"
    );
    console.simple_query("KILL app").await.unwrap();
    let reply = read_messages(&mut raw, b"E").await;
    let error = &reply.last().unwrap().1;
    assert_eq!(error_field(error, b'C'), "57P01");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "{rest:?}");
    console.simple_query("RESUME app").await.unwrap();
}

#[tokio::test]
async fn a_base_backup_streams_over_tls_on_both_sides() {
    let dir = temp_dir("replication-tls");
    let (cert, key) = certificate(&dir);
    let pg = Postgres::builder().tls(&cert, &key).start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.client_tls = pgopt_proxy::ClientTls {
            mode: pgopt_proxy::TlsMode::Require,
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
            ca_file: None,
            ..Default::default()
        };
        c.server_tls = pgopt_proxy::ServerTls {
            mode: pgopt_proxy::ServerTlsMode::Require,
            ..Default::default()
        };
    })
    .await;
    let direct = pg.connect("postgres").await.unwrap();
    // Some data, for a backup of more than a few packets.
    direct
        .batch_execute("CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 20000) g")
        .await
        .unwrap();
    let backup = dir.join("data");
    let mut basebackup = tool(&pg, "pg_basebackup");
    basebackup
        .args(["-d", &conninfo(&proxy, "sslmode=require")])
        .arg("-D")
        .arg(&backup)
        .args(["-X", "stream", "-c", "fast", "--no-sync"]);
    run_tool(basebackup).await;
    let mut verify = tool(&pg, "pg_verifybackup");
    verify.arg(&backup);
    run_tool(verify).await;
    // Both walsenders were reached over TLS.
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_replication_client_waits_out_a_pause_and_a_second_replication_value_is_refused() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let (mut twice, login) = raw_connect(
        &proxy,
        &[
            ("database", "app"),
            ("replication", "true"),
            ("replication", "false"),
        ],
    )
    .await;
    let (tag, body) = login.last().unwrap();
    assert_eq!(*tag, b'E');
    assert_eq!(error_field(body, b'C'), "08P01");
    let mut rest = Vec::new();
    let _ = twice.read_to_end(&mut rest).await;

    let console = admin(&proxy).await;
    console.simple_query("PAUSE app").await.unwrap();
    let connecting = tokio::spawn({
        let addr = proxy.local_addr();
        async move {
            let mut raw = TcpStream::connect(addr).await.unwrap();
            let body = b"\0\x03\0\0user\0postgres\0database\0app\0replication\0database\0\0";
            let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
            startup.extend_from_slice(body);
            raw.write_all(&startup).await.unwrap();
            read_messages(&mut raw, b"ZE").await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!connecting.is_finished(), "logged in while paused");
    console.simple_query("RESUME app").await.unwrap();
    let login = connecting.await.unwrap();
    assert_eq!(login.last().unwrap().0, b'Z', "{login:?}");
}

/// A server with table `items` (1, 'old'), a proxy caching it, and a direct client.
async fn cached_items() -> (Postgres, Proxy, tokio_postgres::Client) {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = pgopt_proxy::CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            ..Default::default()
        };
    })
    .await;
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'old')",
        )
        .await
        .unwrap();
    (pg, proxy, direct)
}

/// The cached row's value, read through the proxy by `reader`.
async fn read_item(reader: &tokio_postgres::Client) -> String {
    reader
        .query_one("SELECT v FROM items WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn sql_writes_on_a_logical_replication_connection_end_cached_entries() {
    let (_pg, proxy, direct) = cached_items().await;
    let reader = common::connect(&proxy, "postgres", None).await.unwrap();
    let read = async || read_item(&reader).await;
    // Cached: a write that bypasses pgopt is not seen.
    assert_eq!(read().await, "old");
    direct
        .batch_execute("UPDATE items SET v = 'bypassed' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(read().await, "old", "the read was not cached");

    // A write through a logical walsender's SQL session, in a transaction block:
    // its entries end when it commits, before the writer hears it did.
    let (mut raw, _) =
        raw_connect(&proxy, &[("database", "app"), ("replication", "database")]).await;
    raw.write_all(&query("IDENTIFY_SYSTEM")).await.unwrap();
    read_messages(&mut raw, b"Z").await;
    raw.write_all(&query("BEGIN; UPDATE items SET v = 'new' WHERE id = 1"))
        .await
        .unwrap();
    read_messages(&mut raw, b"Z").await;
    assert_eq!(read().await, "old", "not committed yet");
    raw.write_all(&query("COMMIT")).await.unwrap();
    read_messages(&mut raw, b"Z").await;
    assert_eq!(read().await, "new");
    // A COMMIT in the middle of a Query: its writes' entries end there, not when the
    // statements after it are done.
    assert_eq!(read().await, "new");
    // (The big row makes the server send what it has before the pg_sleep.)
    raw.write_all(&query(
        "BEGIN; UPDATE items SET v = 'mid' WHERE id = 1; COMMIT;
         SELECT repeat('x', 100000); SELECT pg_sleep(2)",
    ))
    .await
    .unwrap();
    read_messages_n(&mut raw, b"C", 3).await;
    assert_eq!(read().await, "mid");
}

#[tokio::test]
async fn pipelined_and_departed_writes_on_a_logical_replication_connection_end_cached_entries_once_they_commit(
) {
    let (_pg, proxy, _direct) = cached_items().await;
    let reader = common::connect(&proxy, "postgres", None).await.unwrap();
    let read = async || read_item(&reader).await;
    let replication = [("database", "app"), ("replication", "database")];

    // Two messages in one write, each answered with a ReadyForQuery: a Query, or a
    // Sync (a driver trying the extended protocol), then a slow write. The first
    // one's end is not the write's.
    let (mut raw, _) = raw_connect(&proxy, &replication).await;
    let mut before = "old";
    for (first, value) in [(query("SELECT 1"), "piped"), (message(b'S', b""), "synced")] {
        let mut both = first;
        both.extend(query(&format!(
            "UPDATE items SET v = '{value}' FROM pg_sleep(1) WHERE id = 1"
        )));
        raw.write_all(&both).await.unwrap();
        read_messages(&mut raw, b"Z").await;
        // Filled while the UPDATE runs: the row before it, rightly then.
        assert_eq!(read().await, before);
        read_messages(&mut raw, b"Z").await;
        assert_eq!(read().await, value);
        before = value;
    }

    // A client KILLed while its write runs: the walsender finishes it, and its
    // entries end once it has.
    raw.write_all(&query(
        "UPDATE items SET v = 'departed' FROM pg_sleep(1) WHERE id = 1",
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let console = admin(&proxy).await;
    console.simple_query("KILL app").await.unwrap();
    console.simple_query("RESUME app").await.unwrap();
    // (KILL ended the reader too.)
    let reader = common::connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(
        read_item(&reader).await,
        "synced",
        "filled before the commit"
    );
    wait_for("the departed write's entries ended", async || {
        read_item(&reader).await == "departed"
    })
    .await;
}
