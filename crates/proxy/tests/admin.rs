//! The admin console, /metrics, PAUSE/RESUME, RELOAD, graceful shutdown and the pool
//! behaviours an operator relies on, against a real PostgreSQL and real clients.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{admin, code, config_for, connect, http_get, run, show, start_with};
use pgopt_embedded::Postgres;
use pgopt_proxy::{PoolMode, Proxy};
use tokio_postgres::NoTls;

fn message(e: &tokio_postgres::Error) -> &str {
    e.as_db_error().map_or("", |d| d.message())
}

fn num(row: &HashMap<String, String>, col: &str) -> u64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {:?}", row[col]))
}

#[tokio::test]
async fn show_views_report_what_clients_did() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    // First: the statement's Close (sent in the background when it drops) is then
    // done before the simple queries behind it, so no server is lent when we look.
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..25 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let _ = client.batch_execute("SELECT * FROM no_such_table").await;
    // The error returns before its ReadyForQuery; a query behind it waits for that.
    client.simple_query("SELECT 1").await.unwrap();

    let admin = admin(&proxy).await;
    let pools = show(&admin, "POOLS").await;
    assert_eq!(pools.len(), 1, "{pools:?}");
    let pool = &pools[0];
    assert_eq!(
        (pool["database"].as_str(), pool["user"].as_str()),
        ("app", "postgres")
    );
    assert_eq!(pool["pool_mode"], "transaction");
    assert_eq!(num(pool, "cl_active"), 1);
    assert_eq!(num(pool, "cl_waiting"), 0);
    assert_eq!(
        num(pool, "sv_active"),
        0,
        "transaction mode: released between queries"
    );
    assert!(num(pool, "sv_idle") >= 1);

    let stats = show(&admin, "STATS").await;
    let app = stats.iter().find(|r| r["database"] == "app").unwrap();
    // 25 + 1 + 1 query cycles, plus the first client's login check.
    assert!(num(app, "total_query_count") >= 27, "{app:?}");
    assert!(num(app, "total_xact_count") >= 27, "{app:?}");
    assert!(num(app, "total_received") > 0 && num(app, "total_sent") > 0);
    // PgBouncer's other views of the same figures (no query ran since).
    let totals = show(&admin, "STATS_TOTALS").await;
    let app_totals = totals.iter().find(|r| r["database"] == "app").unwrap();
    for (short, long) in [
        ("xact_count", "total_xact_count"),
        ("query_count", "total_query_count"),
        ("bytes_received", "total_received"),
        ("bytes_sent", "total_sent"),
    ] {
        assert_eq!(num(app_totals, short), num(app, long), "{short}");
    }
    let averages = show(&admin, "STATS_AVERAGES").await;
    assert!(
        averages.iter().any(|r| r["database"] == "app"),
        "{averages:?}"
    );
    let all: HashMap<String, String> = show(&admin, "TOTALS")
        .await
        .into_iter()
        .map(|r| (r["name"].clone(), r["value"].clone()))
        .collect();
    let every_db: u64 = stats.iter().map(|r| num(r, "total_query_count")).sum();
    assert_eq!(num(&all, "total_query_count"), every_db, "{all:?}");
    let users = show(&admin, "USERS").await;
    assert!(users.iter().any(|u| u["name"] == "postgres"), "{users:?}");

    let servers = show(&admin, "SERVERS").await;
    assert!(
        servers.iter().any(|s| s["remote_pid"] == pid.to_string()),
        "pid {pid} not in {servers:?}"
    );
    let clients = show(&admin, "CLIENTS").await;
    let states: Vec<_> = clients
        .iter()
        .map(|c| (c["database"].as_str(), c["state"].as_str()))
        .collect();
    assert!(states.contains(&("app", "idle")), "{states:?}");
    assert!(states.contains(&("pgopt", "idle")), "{states:?}");

    let config = show(&admin, "CONFIG").await;
    let size = config
        .iter()
        .find(|r| r["key"] == "default_pool_size")
        .unwrap();
    assert_eq!(
        (size["value"].as_str(), size["default"].as_str()),
        ("2", "20")
    );
    assert_eq!(show(&admin, "DATABASES").await[0]["name"], "app");
    assert!(show(&admin, "VERSION").await[0]["version"].starts_with("pgopt "));

    let err = admin.simple_query("SHOW NOTHING").await.unwrap_err();
    assert_eq!(code(&err), Some("42601"));
    let err = admin.simple_query("DROP TABLE x").await.unwrap_err();
    assert_eq!(code(&err), Some("42601"));
    // Still usable after errors; extended protocol is refused, not fatal.
    let lists = show(&admin, "LISTS").await;
    let names: Vec<&str> = lists.iter().map(|r| r["list"].as_str()).collect();
    for name in [
        "databases",
        "users",
        "pools",
        "used_clients",
        "login_clients",
        "used_servers",
    ] {
        assert!(
            names.contains(&name),
            "PgBouncer's {name} in SHOW LISTS: {names:?}"
        );
    }
    // Its users are SHOW USERS' (with trust logins, none configured).
    let users = lists.iter().find(|r| r["list"] == "users").unwrap();
    assert_eq!(
        users["items"],
        show(&admin, "USERS").await.len().to_string(),
        "{lists:?}"
    );
    let err = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    assert!(!show(&admin, "HELP").await.is_empty());

    // /metrics agrees, and counts the failed query by SQLSTATE class.
    let metrics = http_get(proxy.admin_addr().unwrap(), "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    let queries = metrics
        .lines()
        .find(|l| l.starts_with("pgopt_queries_total{database=\"app\",user=\"postgres\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let n: u64 = queries.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 27, "{queries}");
    assert!(
        metrics.contains("pgopt_errors_total{database=\"app\",user=\"postgres\",class=\"42\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "pgopt_client_wait_seconds_bucket{database=\"app\",user=\"postgres\",le=\"+Inf\"}"
    ));
    assert!(http_get(proxy.admin_addr().unwrap(), "/nope")
        .await
        .starts_with("HTTP/1.1 404"));
}

/// Bad input on the console is answered as PostgreSQL answers it: text that is not
/// UTF-8 is an error and the session goes on; a function call gets its error and a
/// ReadyForQuery (a client would wait for it); a malformed message ends the session
/// with the reason.
#[tokio::test]
async fn the_console_answers_bad_input_as_postgresql_does() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let body = b"\0\x03\0\0user\0postgres\0database\0pgopt\0\0";
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    raw.write_all(&startup).await.unwrap();
    common::read_until(&mut raw, b'Z').await;
    raw.write_all(&common::message(b'Q', b"SHOW \xff\xfe\0"))
        .await
        .unwrap();
    assert_eq!(common::read_until(&mut raw, b'Z').await, b"EZ");
    raw.write_all(&common::message(b'F', b"\0\0\0\x01\0\0\0\0\0\0"))
        .await
        .unwrap();
    assert_eq!(common::read_until(&mut raw, b'Z').await, b"EZ");
    raw.write_all(&common::message(b'Q', b"SHOW POOLS\0"))
        .await
        .unwrap();
    let reply = common::read_until(&mut raw, b'Z').await;
    assert_eq!(reply.last(), Some(&b'Z'));
    assert!(!reply.contains(&b'E'), "{reply:?}");
    // A Flush, and COPY messages outside a COPY, are passed over as PostgreSQL does
    // (before, each was an error with no ReadyForQuery); an extended-protocol batch
    // gets one error, what follows up to its Sync (a query too) is passed over, and the
    // Sync gets a ReadyForQuery.
    let mut batch = common::message(b'H', b"");
    batch.extend(common::message(b'd', b"x"));
    batch.extend(common::message(b'c', b""));
    batch.extend(common::message(b'f', b"no\0"));
    batch.extend(common::message(b'P', b"\0SHOW POOLS\0\0\0"));
    batch.extend(common::message(b'H', b""));
    batch.extend(common::message(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(common::message(b'Q', b"SHOW POOLS\0"));
    batch.extend(common::message(b'S', b""));
    batch.extend(common::message(b'Q', b"SHOW VERSION\0"));
    raw.write_all(&batch).await.unwrap();
    assert_eq!(common::read_until_nth(&mut raw, b'Z', 2).await, b"EZTDCZ");
    // No terminator, or a message type no frontend sends (also while the rest of a
    // failed extended-protocol batch is passed over): a FATAL, then the connection
    // closes.
    let mut skipping = common::message(b'P', b"\0SHOW POOLS\0\0\0");
    skipping.extend(common::message(b'z', b""));
    for (bad, what) in [
        (common::message(b'Q', b"SHOW POOLS"), "terminator"),
        (skipping, "invalid frontend message type 122"),
        (
            common::message(b'z', b""),
            "invalid frontend message type 122",
        ),
    ] {
        let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .unwrap();
        raw.write_all(&startup).await.unwrap();
        common::read_until(&mut raw, b'Z').await;
        raw.write_all(&bad).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest.first(), Some(&b'E'), "{rest:?}");
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("FATAL") && text.contains(what), "{text}");
    }
}

#[tokio::test]
async fn only_admin_users_get_the_console_and_psql_can_use_it() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.admin_users = vec!["boss".into()]).await;
    let err = connect_db(&proxy, "postgres", "pgopt").await.unwrap_err();
    assert_eq!(code(&err), Some("42501"), "{err}");
    let mut psql = Command::new(pg.binaries().program("psql"));
    psql.args([
        "-X",
        "-h",
        "127.0.0.1",
        "-p",
        &proxy.local_addr().port().to_string(),
        "-U",
        "boss",
        "-d",
        "pgopt",
        "-c",
        "SHOW POOLS",
        "-c",
        "SHOW HELP",
    ]);
    // Off the runtime thread: the proxy under test serves psql on it.
    let out = tokio::task::spawn_blocking(move || run(&mut psql))
        .await
        .unwrap();
    assert!(out.contains("cl_active") && out.contains("PAUSE"), "{out}");
}

#[tokio::test]
async fn stats_users_may_look_but_not_act() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.admin_users = vec!["boss".into()];
        c.stats_users = vec!["watcher".into()];
    })
    .await;
    let watcher = connect_db(&proxy, "watcher", "pgopt").await.unwrap();
    for view in ["POOLS", "STATS", "QUERIES", "CONFIG"] {
        watcher
            .simple_query(&format!("SHOW {view}"))
            .await
            .unwrap_or_else(|e| panic!("SHOW {view}: {e}"));
    }
    for command in [
        "RELOAD",
        "PAUSE",
        "RESUME",
        "SHUTDOWN",
        "RESET QUERIES",
        "CACHE FLUSH",
    ] {
        let e = watcher.simple_query(command).await.unwrap_err();
        assert_eq!(code(&e), Some("42501"), "{command}: {e}");
        let message = e.as_db_error().unwrap().message().to_string();
        assert!(message.contains("proxy.stats_users"), "{message}");
    }
    // Still up and serving after all that was refused.
    let app = connect_db(&proxy, "postgres", "app").await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    let boss = connect_db(&proxy, "boss", "pgopt").await.unwrap();
    boss.simple_query("RESET QUERIES").await.unwrap();
    let e = connect_db(&proxy, "postgres", "pgopt").await.unwrap_err();
    assert_eq!(code(&e), Some("42501"), "{e}");
}

async fn connect_db(
    proxy: &Proxy,
    user: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_port_db(proxy.local_addr().port(), user, db).await
}

/// Asserts that `task` (a client waiting for a server connection) is still waiting
/// after a while.
/// Until SHOW POOLS counts `n` clients waiting for a server connection (10 s at most;
/// the proxy's admin_users must hold postgres).
async fn until_waiting(proxy: &Proxy, n: u64) {
    let console = admin(proxy).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pools = show(&console, "POOLS").await;
        let waiting: u64 = pools
            .iter()
            .map(|p| p["cl_waiting"].parse::<u64>().unwrap())
            .sum();
        if waiting >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} never waiting: {pools:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>, why_not: &str) {
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!task.is_finished(), "{why_not}");
}

/// What `task` (a client that was waiting) returns, within 5 s.
async fn finished<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap()
}

/// [`connect_db`] by port (for a task that does not borrow the proxy).
async fn connect_port_db(
    port: u16,
    user: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(db)
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test]
async fn pause_waits_for_transactions_and_resume_lets_queries_run() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    // A database is paused (0 or 1, as PgBouncer shows it) before it has a pool too;
    // as in PgBouncer, what is paused can't be paused again, nor resumed twice.
    let early = admin(&proxy).await;
    let paused = |rows: Vec<std::collections::HashMap<String, String>>| {
        let app = rows.iter().find(|r| r["name"] == "app").cloned().unwrap();
        app["paused"].clone()
    };
    assert_eq!(paused(show(&early, "DATABASES").await), "0");
    early.simple_query("PAUSE").await.unwrap();
    assert_eq!(paused(show(&early, "DATABASES").await), "1");
    let again = early.simple_query("PAUSE").await.unwrap_err();
    assert_eq!(code(&again), Some("55000"), "{again}");
    early.simple_query("RESUME").await.unwrap();
    assert_eq!(paused(show(&early, "DATABASES").await), "0");
    for resume in ["RESUME", "RESUME app"] {
        let err = early.simple_query(resume).await.unwrap_err();
        assert_eq!(code(&err), Some("55000"), "{resume}: {err}");
    }
    // As PgBouncer's, a PAUSE of everything and one of a database are apart: each
    // RESUME undoes its own, and says which other stands (before, RESUME undid both
    // and RESUME app undid the PAUSE of everything for app).
    early.simple_query("PAUSE app").await.unwrap();
    early.simple_query("PAUSE").await.unwrap();
    early.simple_query("RESUME").await.unwrap();
    assert_eq!(paused(show(&early, "DATABASES").await), "1");
    let err = early.simple_query("RESUME").await.unwrap_err();
    assert!(
        format!("{err:?}").contains("paused databases: app"),
        "{err:?}"
    );
    early.simple_query("RESUME app").await.unwrap();
    early.simple_query("PAUSE").await.unwrap();
    let err = early.simple_query("RESUME app").await.unwrap_err();
    assert_eq!(code(&err), Some("55000"), "{err}");
    assert!(format!("{err:?}").contains("all of pgopt is"), "{err:?}");
    assert_eq!(paused(show(&early, "DATABASES").await), "1");
    early.simple_query("PAUSE app").await.unwrap();
    early.simple_query("RESUME app").await.unwrap();
    assert_eq!(paused(show(&early, "DATABASES").await), "1");
    early.simple_query("RESUME").await.unwrap();
    assert_eq!(paused(show(&early, "DATABASES").await), "0");
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let console = admin(&proxy).await;
    let pause = tokio::spawn(async move {
        console.simple_query("PAUSE app").await.unwrap();
        console
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned with a transaction open"
    );
    a.batch_execute("COMMIT").await.unwrap();
    let console = tokio::time::timeout(Duration::from_secs(10), pause)
        .await
        .expect("PAUSE ends once the transaction does")
        .unwrap();
    let pools = show(&console, "POOLS").await;
    assert_eq!(pools[0]["paused"], "yes");
    let err = console.simple_query("PAUSE app").await.unwrap_err();
    assert_eq!(code(&err), Some("55000"), "{err}");
    assert_eq!(
        num(&pools[0], "sv_idle"),
        0,
        "PAUSE closes server connections"
    );

    // While paused, a query waits; RESUME lets it through.
    let waiting = tokio::spawn(async move { b.simple_query("SELECT 2").await.map(|_| ()) });
    still_waiting(&waiting, "a query ran while paused").await;
    assert_eq!(num(&show(&console, "POOLS").await[0], "cl_waiting"), 1);
    console.simple_query("RESUME app").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("RESUME releases the waiting query")
        .unwrap()
        .unwrap();
    let err = console.simple_query("PAUSE nosuchdb").await.unwrap_err();
    assert_eq!(code(&err), Some("3D000"));

    // A RESUME from another console while a PAUSE waits for a transaction: that PAUSE
    // ends with an error, not as if it were done (before, it said PAUSE).
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pausing = tokio::spawn(async move { console.simple_query("PAUSE").await.map(|_| ()) });
    still_waiting(&pausing, "PAUSE returned with a transaction open").await;
    admin(&proxy).await.simple_query("RESUME").await.unwrap();
    let paused = tokio::time::timeout(Duration::from_secs(10), pausing)
        .await
        .expect("the RESUME ends the PAUSE's wait")
        .unwrap();
    let err = paused.unwrap_err();
    assert_eq!(code(&err), Some("55000"), "{err}");
    a.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn reload_applies_new_limits_and_users() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let console = admin(&proxy).await;
    let err = console.simple_query("RELOAD").await.unwrap_err();
    assert!(message(&err).contains("without a config file"), "{err}");

    let mut new = config_for(&pg, PoolMode::Transaction, 5);
    new.admin_users = vec!["postgres".into()];
    new.query_wait_timeout = Duration::from_millis(1234);
    let handle = proxy.handle();
    let reloaded = new.clone();
    handle.set_reloader(move || Ok(reloaded.clone()));
    console.simple_query("RELOAD").await.unwrap();
    let config = show(&console, "CONFIG").await;
    let get = |k: &str| config.iter().find(|r| r["key"] == k).unwrap()["value"].clone();
    assert_eq!(get("default_pool_size"), "5");
    assert_eq!(get("query_wait_timeout"), "1234ms");
    // The existing pool took the new size: 5 clients in transactions at once.
    let mut clients = Vec::new();
    for _ in 0..5 {
        let c = connect(&proxy, "postgres", None).await.unwrap();
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        clients.push(c);
    }
    assert_eq!(num(&show(&console, "POOLS").await[0], "sv_active"), 5);
    // A failed reload keeps the running config.
    handle.set_reloader(|| Err("pgopt.toml:3: proxy.pool_mode: bad".into()));
    let err = console.simple_query("RELOAD").await.unwrap_err();
    assert!(message(&err).contains("pgopt.toml:3"), "{err}");
    assert_eq!(
        show(&console, "CONFIG")
            .await
            .iter()
            .find(|r| r["key"] == "default_pool_size")
            .unwrap()["value"],
        "5"
    );
}

#[tokio::test]
async fn shutdown_lets_open_transactions_finish_and_refuses_new_clients() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.shutdown_timeout = Duration::from_secs(20)).await;
    let table = pg.connect("postgres").await.unwrap();
    table
        .batch_execute("CREATE TABLE drained (n int)")
        .await
        .unwrap();
    let busy = connect(&proxy, "postgres", None).await.unwrap();
    let idle = connect(&proxy, "postgres", None).await.unwrap();
    busy.batch_execute("BEGIN; INSERT INTO drained VALUES (1)")
        .await
        .unwrap();
    admin(&proxy).await.simple_query("SHUTDOWN").await.unwrap();

    // The idle client is closed with 57P01; new clients are refused.
    let err = idle.simple_query("SELECT 1").await.unwrap_err();
    assert!(code(&err) == Some("57P01") || err.is_closed(), "{err}");
    assert!(connect(&proxy, "postgres", None).await.is_err());
    // The open transaction finishes and commits.
    busy.batch_execute("INSERT INTO drained VALUES (2); COMMIT")
        .await
        .unwrap();
    let err = busy.simple_query("SELECT 1").await.unwrap_err();
    assert!(code(&err) == Some("57P01") || err.is_closed(), "{err}");
    tokio::time::timeout(Duration::from_secs(10), proxy.wait())
        .await
        .expect("the proxy stops once its clients are gone");
    let n: i64 = table
        .query_one("SELECT count(*) FROM drained", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn shutdown_timeout_closes_a_transaction_that_never_ends() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.shutdown_timeout = Duration::from_millis(300)).await;
    let stuck = connect(&proxy, "postgres", None).await.unwrap();
    stuck.batch_execute("BEGIN").await.unwrap();
    let started = Instant::now();
    proxy.handle().shutdown();
    tokio::time::timeout(Duration::from_secs(10), proxy.wait())
        .await
        .expect("shutdown_timeout bounds the drain");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(stuck.simple_query("SELECT 1").await.is_err());
}

#[tokio::test]
async fn a_client_idle_in_transaction_is_closed_and_its_server_freed() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 1);
    config.idle_transaction_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(config).await.unwrap();
    let leaky = connect(&proxy, "postgres", None).await.unwrap();
    leaky.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // The only server connection is held; another client gets it once the leak is cut.
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let started = Instant::now();
    other.simple_query("SELECT 2").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    let err = leaky.simple_query("SELECT 1").await.unwrap_err();
    assert!(code(&err) == Some("25P03") || err.is_closed(), "{err}");
    // A transaction that keeps talking is not cut.
    other.batch_execute("BEGIN").await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        other.simple_query("SELECT 1").await.unwrap();
    }
    other.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn a_reserve_connection_serves_a_client_that_waited() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 1);
    config.reserve_pool_size = 1;
    config.reserve_pool_timeout = Duration::from_millis(200);
    config.query_wait_timeout = Duration::from_secs(5);
    let proxy = Proxy::start(config).await.unwrap();
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let started = Instant::now();
    other.simple_query("SELECT 2").await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test]
async fn min_pool_size_opens_connections_in_the_background() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 5);
    config.min_pool_size = 3;
    let proxy = Proxy::start(config).await.unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let watcher = pg.connect("postgres").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgopt'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} server connections, want 3");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_load_fails_only_in_flight_work() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let mut pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.default_pool_size = 4).await;
    let port = proxy.local_addr().port();
    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    // Workers that ran queries successfully after the restart.
    let recovered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, restarted, recovered) = (stop.clone(), restarted.clone(), recovered.clone());
        workers.push(tokio::spawn(async move {
            let mut streak = 0u32;
            let mut counted = false;
            let mut client = None;
            while !stop.load(SeqCst) {
                if client.is_none() {
                    client = common::connect_port(port, "postgres").await.ok();
                }
                let Some(c) = &client else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                match c.simple_query("SELECT 1").await {
                    Ok(_) => {
                        streak += 1;
                        if restarted.load(SeqCst) && streak >= 3 && !counted {
                            counted = true;
                            recovered.fetch_add(1, SeqCst);
                        }
                    }
                    Err(e) => {
                        // Only a proper error for work in flight, never another kind.
                        assert!(
                            matches!(code(&e), Some("08006" | "57P01")) || e.is_closed(),
                            "unexpected error: {e}"
                        );
                        streak = 0;
                        client = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.restart().unwrap();
    restarted.store(true, SeqCst);
    // The pool recovers on its own: backoff and background probe, however loaded the
    // machine is (the bound only keeps a broken build from hanging).
    let deadline = Instant::now() + Duration::from_secs(60);
    while recovered.load(SeqCst) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(recovered.load(SeqCst), 4, "workers that recovered");
    let console = admin(&proxy).await;
    let pools = show(&console, "POOLS").await;
    assert_eq!(pools[0]["server_down"], "no");
}

#[tokio::test]
async fn shutdown_answers_clients_waiting_for_a_server_at_once() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.default_pool_size = 1;
        c.shutdown_timeout = Duration::from_secs(30);
    })
    .await;
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = connect(&proxy, "postgres", None).await.unwrap();
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 1").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    proxy.handle().shutdown();
    let err = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting client is answered, not left for query_wait_timeout")
        .unwrap()
        .unwrap_err();
    assert!(code(&err) == Some("57P01") || err.is_closed(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The open transaction still finishes.
    holder.batch_execute("SELECT 1; COMMIT").await.unwrap();
}

/// `SELECT pg_backend_pid()` through `client`.
async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn reconnect_replaces_idle_connections_now_and_lent_ones_when_released() {
    let pg = Postgres::start().await.unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let lent = backend_pid(&b).await;
    let idle = backend_pid(&a).await;
    assert_ne!(idle, lent);

    let console = admin(&proxy).await;
    console.simple_query("RECONNECT app").await.unwrap();
    // The transaction goes on on its connection.
    assert_eq!(backend_pid(&b).await, lent);
    b.batch_execute("COMMIT").await.unwrap();
    for client in [&a, &b] {
        let pid = backend_pid(client).await;
        assert!(
            pid != idle && pid != lent,
            "{pid} was opened before RECONNECT"
        );
    }
    // The old ones are closed, not only set aside.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&vec![idle, lent]],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} old backends still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = console
        .simple_query("RECONNECT nosuchdb")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("3D000"));
}

#[tokio::test]
async fn kill_disconnects_the_databases_clients_and_holds_new_ones_until_resume() {
    let pg = Postgres::start().await.unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute("CREATE TABLE kept (v int)")
        .await
        .unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let idle = connect(&proxy, "postgres", None).await.unwrap();
    idle.batch_execute("SELECT 1").await.unwrap();
    let in_tx = connect(&proxy, "postgres", None).await.unwrap();
    in_tx
        .batch_execute("BEGIN; INSERT INTO kept VALUES (1)")
        .await
        .unwrap();

    // The pool's other connection is taken too: a third client waits for one.
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = connect(&proxy, "postgres", None).await.unwrap();
    let waiting = tokio::spawn(async move { waiter.batch_execute("SELECT 1").await });
    still_waiting(&waiting, "the wait ended").await;

    let console = admin(&proxy).await;
    console.simple_query("KILL app").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("a client waiting for a server connection is killed at once")
        .unwrap()
        .unwrap_err();
    assert!(e.is_closed() || code(&e) == Some("57P01"), "{e:?}");
    for client in [&idle, &in_tx] {
        let e = client.batch_execute("SELECT 1").await.unwrap_err();
        assert!(
            e.is_closed() || code(&e) == Some("57P01"),
            "a killed client went on: {e:?}"
        );
    }
    let n: i64 = direct
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the killed transaction committed");

    // New clients log in, and wait for RESUME.
    let fresh = connect(&proxy, "postgres", None).await.unwrap();
    let waiting = tokio::spawn(async move { common::value(&fresh, "SELECT 7").await });
    still_waiting(&waiting, "a query ran on a killed database").await;
    console.simple_query("RESUME app").await.unwrap();
    let seven = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("RESUME lets it run")
        .unwrap();
    assert_eq!(seven, "7");
    let err = console.simple_query("KILL").await.unwrap_err();
    assert_eq!(code(&err), Some("42601"));
}

#[tokio::test]
async fn disable_refuses_new_clients_and_enable_takes_them_again() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let before = connect(&proxy, "postgres", None).await.unwrap();
    let console = admin(&proxy).await;
    console.simple_query("DISABLE app").await.unwrap();
    let e = connect(&proxy, "postgres", None).await.unwrap_err();
    assert_eq!(code(&e), Some("55000"), "{e:?}");
    assert!(message(&e).contains("DISABLE"), "{e:?}");
    assert_eq!(common::value(&before, "SELECT 1").await, "1");
    let app =
        |rows: Vec<HashMap<String, String>>| rows.into_iter().find(|r| r["name"] == "app").unwrap();
    assert_eq!(app(show(&console, "DATABASES").await)["disabled"], "1");
    console.simple_query("ENABLE app").await.unwrap();
    assert_eq!(app(show(&console, "DATABASES").await)["disabled"], "0");
    let after = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(common::value(&after, "SELECT 2").await, "2");
}

#[tokio::test]
async fn client_idle_timeout_closes_clients_idle_outside_a_transaction() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.client_idle_timeout = Duration::from_millis(400)).await;
    let idle = connect(&proxy, "postgres", None).await.unwrap();
    let in_tx = connect(&proxy, "postgres", None).await.unwrap();
    let busy = connect(&proxy, "postgres", None).await.unwrap();
    idle.batch_execute("SELECT 1").await.unwrap();
    in_tx.batch_execute("BEGIN; SELECT 1").await.unwrap();
    for _ in 0..10 {
        busy.batch_execute("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 1 s on: the idle client is gone; the one in a transaction and the busy one stay.
    let e = idle.batch_execute("SELECT 1").await.unwrap_err();
    assert!(e.is_closed() || code(&e) == Some("57P05"), "{e:?}");
    in_tx.batch_execute("SELECT 2; COMMIT").await.unwrap();
    busy.batch_execute("SELECT 3").await.unwrap();
    let config = show(&admin(&proxy).await, "CONFIG").await;
    let row = config
        .iter()
        .find(|r| r["key"] == "client_idle_timeout")
        .unwrap();
    assert_eq!(row["value"], "400ms");
}

/// Server backends of `user` connected to the proxy's database.
async fn backends_of(direct: &tokio_postgres::Client, user: &str) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = 'postgres' \
             AND pid <> pg_backend_pid()",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn max_db_connections_caps_every_users_pools_together() {
    let pg = Postgres::start().await.unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute("CREATE ROLE other LOGIN SUPERUSER")
        .await
        .unwrap();
    let proxy = start_with(&pg, |c| {
        c.max_db_connections = 2;
        c.default_pool_size = 2;
    })
    .await;
    let a1 = connect(&proxy, "postgres", None).await.unwrap();
    let a2 = connect(&proxy, "postgres", None).await.unwrap();
    a1.batch_execute("BEGIN; SELECT 1").await.unwrap();
    a2.batch_execute("BEGIN; SELECT 1").await.unwrap();

    // The database is at its two: another user's query waits, though its pool is empty.
    // (Its login waits too: its pool's first connection brings the server's
    // parameters.)
    let port = proxy.local_addr().port();
    let waiting = tokio::spawn(async move {
        let b = common::connect_port(port, "other").await.unwrap();
        let seven = common::value(&b, "SELECT 7").await;
        (b, seven)
    });
    still_waiting(&waiting, "a third server connection was opened").await;
    assert_eq!(backends_of(&direct, "other").await, 0);

    // A transaction ends: its connection goes idle, and is closed to make room.
    a1.batch_execute("COMMIT").await.unwrap();
    let (b, seven) = finished(waiting, "room was made for the waiting user").await;
    assert_eq!(seven, "7");
    assert_eq!(common::value(&b, "SELECT 8").await, "8");
    assert!(
        backends_of(&direct, "postgres").await + backends_of(&direct, "other").await <= 2,
        "more than max_db_connections open"
    );
    a2.batch_execute("COMMIT").await.unwrap();
    let databases = show(&admin(&proxy).await, "DATABASES").await;
    let app = databases.iter().find(|r| r["name"] == "app").unwrap();
    assert_eq!(app["max_connections"], "2");
}

#[tokio::test]
async fn at_max_db_connections_a_waiter_takes_its_own_pools_connection_once_idle() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.max_db_connections = 2;
        c.default_pool_size = 4;
    })
    .await;
    let a1 = connect(&proxy, "postgres", None).await.unwrap();
    let a2 = connect(&proxy, "postgres", None).await.unwrap();
    a1.batch_execute("BEGIN; SELECT 1").await.unwrap();
    a2.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // The pool has slots left, the database no room: the third waits for room.
    let a3 = connect(&proxy, "postgres", None).await.unwrap();
    let waiting = tokio::spawn(async move { common::value(&a3, "SELECT 9").await });
    still_waiting(&waiting, "a third server connection was opened").await;
    // It is a waiting client with no server connection, in SHOW POOLS as in SHOW
    // CLIENTS and SHOW SERVERS.
    let pools = show(&admin(&proxy).await, "POOLS").await;
    let pool = pools.iter().find(|p| p["database"] == "app").unwrap();
    assert_eq!(
        (
            &*pool["cl_active"],
            &*pool["cl_waiting"],
            &*pool["sv_active"]
        ),
        ("2", "1", "2"),
        "{pool:?}"
    );
    a1.batch_execute("COMMIT").await.unwrap();
    let nine = finished(waiting, "the waiter took the connection that went idle").await;
    assert_eq!(nine, "9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_a_long_statement_and_ends_its_session() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.query_timeout = Duration::from_millis(1000);
        c.default_pool_size = 1;
    })
    .await;
    let direct = pg.connect("postgres").await.unwrap();
    let slow = connect(&proxy, "postgres", None).await.unwrap();
    let started = Instant::now();
    let e = slow.batch_execute("SELECT pg_sleep(30)").await.unwrap_err();
    assert!(code(&e) == Some("57014") || e.is_closed(), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{started:?}");
    assert!(
        slow.batch_execute("SELECT 1").await.is_err(),
        "the session ended"
    );
    // The statement stopped on the server (canceled, its connection closed).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sleeping: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' \
                 AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if sleeping == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the statement still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The only server slot is free again; requests pipelined one after another each
    // get the whole time (together they run longer than it).
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let sleep = "SELECT pg_sleep(0.5)::text";
    let (a, b, c) = tokio::join!(
        other.query(sleep, &[]),
        other.query(sleep, &[]),
        other.query(sleep, &[])
    );
    for r in [a, b, c] {
        r.unwrap();
    }
    // Time between requests, idle, does not count.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    other.batch_execute("SELECT 1").await.unwrap();
    // Nor does a batch the client has not synced escape it.
    let mut raw = common::raw_login(&proxy).await;
    {
        use tokio::io::AsyncWriteExt;
        raw.write_all(&common::run_unnamed("SELECT pg_sleep(30)", b'H'))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let got = common::read_until(&mut raw, b'E').await;
    assert_eq!(got.last(), Some(&b'E'), "{got:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{started:?}");
    // Nor a client that stopped reading a big result: its server connection comes
    // free (the pool has one).
    let mut stuck = common::raw_login(&proxy).await;
    {
        use tokio::io::AsyncWriteExt;
        let query = b"SELECT repeat('x', 100000) FROM generate_series(1, 2000)\0";
        stuck
            .write_all(&common::message(b'Q', query))
            .await
            .unwrap();
    }
    // Its answer has begun (it holds the server), then it stops reading.
    common::read_until(&mut stuck, b'T').await;
    let next = tokio::time::timeout(Duration::from_secs(8), common::value(&other, "SELECT 4"))
        .await
        .expect("the session of a client that does not read still holds the server");
    assert_eq!(next, "4");
    drop(stuck);
    let config = show(&admin(&proxy).await, "CONFIG").await;
    let row = config.iter().find(|r| r["key"] == "query_timeout").unwrap();
    assert_eq!(row["value"], "1000ms");
}

#[tokio::test]
async fn max_user_connections_caps_a_users_pools_across_databases() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.default_pool_size = 2;
        let mut second = c.databases[0].clone();
        second.name = "app2".into();
        second.pool.max_db_connections = Some(5);
        c.databases.push(second);
        // The user's own limit (none proxy-wide).
        let mut user = pgopt_proxy::User::new("postgres", "unused");
        user.max_user_connections = Some(2);
        c.users = vec![user];
    })
    .await;
    let a1 = connect_db(&proxy, "postgres", "app").await.unwrap();
    let a2 = connect_db(&proxy, "postgres", "app").await.unwrap();
    a1.batch_execute("BEGIN; SELECT 1").await.unwrap();
    a2.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let console = admin(&proxy).await;
    let user_row = |rows: Vec<HashMap<String, String>>| {
        rows.into_iter().find(|r| r["name"] == "postgres").unwrap()
    };
    let row = user_row(show(&console, "USERS").await);
    assert_eq!(row["max_user_connections"], "2");
    assert_eq!(row["current_connections"], "2");

    // The user is at its two: its query on the other database waits, though that
    // database's pool is empty and the database has room. (Its login waits too: its
    // pool's first connection brings the server's parameters.)
    let port = proxy.local_addr().port();
    let waiting = tokio::spawn(async move {
        let b = connect_port_db(port, "postgres", "app2").await.unwrap();
        let seven = common::value(&b, "SELECT 7").await;
        (b, seven)
    });
    still_waiting(&waiting, "a third server connection was opened").await;
    // A transaction ends: its connection goes idle, and is closed to make room.
    a1.batch_execute("COMMIT").await.unwrap();
    let (b, seven) = finished(waiting, "room was made for the other database's pool").await;
    assert_eq!(seven, "7");
    assert_eq!(common::value(&b, "SELECT 8").await, "8");
    let row = user_row(show(&console, "USERS").await);
    assert_eq!(row["current_connections"], "2", "{row:?}");
    a2.batch_execute("COMMIT").await.unwrap();
    let databases = show(&console, "DATABASES").await;
    let max = |name: &str| {
        databases.iter().find(|r| r["name"] == name).unwrap()["max_connections"].clone()
    };
    assert_eq!(
        (max("app"), max("app2")),
        ("0".to_string(), "5".to_string())
    );
    let config = show(&console, "CONFIG").await;
    let row = config
        .iter()
        .find(|r| r["key"] == "max_user_connections")
        .unwrap();
    assert_eq!(row["value"], "0");
}

#[tokio::test]
async fn a_users_own_pool_mode_wins_over_its_databases() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        let mut user = pgopt_proxy::User::new("postgres", "unused");
        user.pool_mode = Some(PoolMode::Session);
        c.users = vec![user];
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    // LISTEN is refused in transaction mode; this user's pool is in session mode.
    client.batch_execute("LISTEN ready").await.unwrap();
    let console = admin(&proxy).await;
    let users = show(&console, "USERS").await;
    let row = users.iter().find(|r| r["name"] == "postgres").unwrap();
    assert_eq!(row["pool_mode"], "session");
    let pools = show(&console, "POOLS").await;
    let pool = pools.iter().find(|r| r["user"] == "postgres").unwrap();
    assert_eq!(pool["pool_mode"], "session");
}

#[tokio::test]
async fn a_reload_raising_max_db_connections_lets_a_waiter_through_at_once() {
    let pg = Postgres::start().await.unwrap();
    let tweak = |c: &mut pgopt_proxy::Config| {
        c.max_db_connections = 1;
        c.default_pool_size = 2;
    };
    let proxy = start_with(&pg, tweak).await;
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let second = connect(&proxy, "postgres", None).await.unwrap();
    let waiting = tokio::spawn(async move { common::value(&second, "SELECT 2").await });
    still_waiting(&waiting, "a second server connection was opened").await;

    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.admin_users = vec!["postgres".into()];
    tweak(&mut config);
    config.max_db_connections = 2;
    let handle = proxy.handle();
    handle.set_reloader(move || Ok(config.clone()));
    handle.reload().unwrap();
    let two = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the waiter saw the new limit")
        .unwrap();
    assert_eq!(two, "2");
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn reconnect_reaches_a_pool_a_reload_replaced_that_a_client_still_uses() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let a = connect(&proxy, "postgres", None).await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let before = backend_pid(&a).await;
    // A new password: the pool is replaced; `a` stays on the old one.
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.admin_users = vec!["postgres".into()];
    config.databases[0].password = Some("unused".into());
    let handle = proxy.handle();
    handle.set_reloader(move || Ok(config.clone()));
    handle.reload().unwrap();
    admin(&proxy)
        .await
        .simple_query("RECONNECT app")
        .await
        .unwrap();
    assert_eq!(backend_pid(&a).await, before, "the transaction goes on");
    a.batch_execute("COMMIT").await.unwrap();
    // Its next transaction, on the old pool, gets a new connection there.
    assert_ne!(
        backend_pid(&a).await,
        before,
        "a connection opened before RECONNECT was used again"
    );
}

/// RELOADs `proxy` with `config` (postgres an admin user).
fn reload_with(proxy: &Proxy, mut config: pgopt_proxy::Config) {
    config.admin_users = vec!["postgres".into()];
    let handle = proxy.handle();
    handle.set_reloader(move || Ok(config.clone()));
    handle.reload().unwrap();
}

/// A database paused (or disabled), taken out by a RELOAD and put back by the next,
/// starts afresh: its clients are not held for a RESUME nobody can give it meanwhile.
#[tokio::test]
async fn a_database_removed_and_added_again_is_neither_paused_nor_disabled() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let console = admin(&proxy).await;
    console.simple_query("PAUSE app").await.unwrap();
    console.simple_query("DISABLE app").await.unwrap();
    let mut without = config_for(&pg, PoolMode::Transaction, 2);
    without.databases[0].name = "elsewhere".into();
    reload_with(&proxy, without);
    reload_with(&proxy, config_for(&pg, PoolMode::Transaction, 2));
    let databases = show(&console, "DATABASES").await;
    let app = databases.iter().find(|r| r["name"] == "app").unwrap();
    assert_eq!((&*app["paused"], &*app["disabled"]), ("0", "0"), "{app:?}");
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let ran = tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1"));
    assert!(ran.await.expect("still paused").is_ok());
}

/// A client of `proxy` in a task of its own, and the port of the server its `SHOW
/// port` ran on (it may wait for a connection first).
fn show_port_later(proxy: &Proxy) -> tokio::task::JoinHandle<(tokio_postgres::Client, String)> {
    let port = proxy.local_addr().port();
    tokio::spawn(async move {
        let client = common::connect_port(port, "postgres").await.unwrap();
        let port = common::value(&client, "SHOW port").await;
        (client, port)
    })
}

/// The port of the server `client`'s statement runs on.
async fn server_port(client: &tokio_postgres::Client) -> String {
    common::value(client, "SHOW port").await
}

/// A RELOAD that moves a database to another server (a failover): a transaction-mode
/// client finishes the transaction under way on the old server, then runs its next one
/// on the new server with its settings and prepared statements, as PgBouncer's do; one
/// waiting for a connection of the old pool moves at once. A session-mode client,
/// whose session lives on the old server, and clients of a database whose pool mode
/// changed or that is gone are closed before their next transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_a_database_moves_its_clients_after_their_transaction() {
    let pg = Postgres::start().await.unwrap();
    let other = Postgres::start().await.unwrap();
    for server in [&pg, &other] {
        let port = server.port();
        server
            .psql(&format!(
                "CREATE TABLE t (port int); INSERT INTO t VALUES ({port})"
            ))
            .unwrap();
    }
    let proxy = start_with(&pg, |_| {}).await;
    let reload = |config| reload_with(&proxy, config);
    // A new password alone: the clients stay on their pool.
    let stays = connect(&proxy, "postgres", None).await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.databases[0].password = Some("unused".into());
    reload(config);
    assert_eq!(server_port(&stays).await, pg.port().to_string());
    // Moved to the other server: a transaction under way ends where it began.
    let moved = connect(&proxy, "postgres", None).await.unwrap();
    moved
        .batch_execute("SET application_name = 'mover'")
        .await
        .unwrap();
    let statement = moved.prepare("SELECT port FROM t").await.unwrap();
    for _ in 0..40 {
        moved.batch_execute("SELECT 1").await.unwrap();
    }
    let xacts = || async {
        let stats = show(&admin(&proxy).await, "STATS").await;
        let app = stats.iter().find(|r| r["database"] == "app").unwrap();
        num(app, "total_xact_count")
    };
    let xacts_before = xacts().await;
    assert!(xacts_before >= 40, "{xacts_before}");
    moved.batch_execute("BEGIN").await.unwrap();
    assert_eq!(server_port(&moved).await, pg.port().to_string());
    reload(config_for(&other, PoolMode::Transaction, 1));
    assert_eq!(server_port(&moved).await, pg.port().to_string());
    // The other server's only connection is held: a client's wait there is seen.
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    assert_eq!(server_port(&holder).await, other.port().to_string());
    moved.batch_execute("COMMIT").await.unwrap();
    let waiting = show_port_later(&proxy);
    until_waiting(&proxy, 1).await;
    // Back to the first server: the client waiting on the other's pool moves too.
    reload(config_for(&pg, PoolMode::Transaction, 2));
    let (_waiter, waited) = finished(waiting, "the waiter never moved to the new pool").await;
    assert_eq!(waited, pg.port().to_string());
    for client in [&moved, &stays] {
        assert_eq!(server_port(client).await, pg.port().to_string());
    }
    // Its settings and prepared statement went with it.
    assert_eq!(
        common::value(&moved, "SHOW application_name").await,
        "mover"
    );
    let rows = moved.query(&statement, &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), i32::from(pg.port()));
    // SHOW POOLS counts the clients where they are now (the holder is still in its
    // transaction on the other server).
    let pools = show(&admin(&proxy).await, "POOLS").await;
    let app = pools
        .iter()
        .find(|p| p["database"] == "app" && p["user"] == "postgres")
        .unwrap();
    assert_eq!(
        num(app, "cl_active") + num(app, "cl_waiting"),
        3,
        "{pools:?}"
    );
    // SHOW STATS' totals go on across the pools.
    let xacts_after = xacts().await;
    assert!(
        xacts_after > xacts_before,
        "{xacts_after} after {xacts_before}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(server_port(&holder).await, pg.port().to_string());
    // Another pool mode: closed.
    reload(config_for(&pg, PoolMode::Session, 2));
    let e = moved.batch_execute("SELECT 1").await.unwrap_err();
    let db = e.as_db_error().expect("a FATAL before the close");
    assert_eq!(db.code().code(), "57P01", "{db:?}");
    assert!(db.message().contains("RELOAD changed database"), "{db:?}");
    // A session-mode client moved to another server: closed before its next
    // transaction (its session is on the old one).
    let session = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(server_port(&session).await, pg.port().to_string());
    reload(config_for(&other, PoolMode::Session, 2));
    let e = session.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), Some("57P01"), "{e:?}");
    // Removed: closed all the same.
    let last = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(server_port(&last).await, other.port().to_string());
    let mut config = config_for(&other, PoolMode::Session, 2);
    config.databases[0].name = "elsewhere".into();
    reload(config);
    let e = last.batch_execute("SELECT 1").await.unwrap_err();
    let db = e.as_db_error().expect("a FATAL before the close");
    assert!(db.message().contains("RELOAD removed database"), "{db:?}");
}

/// Idle clients follow a RELOAD that moves their database at once, not at their next
/// request: SHOW POOLS counts them on the new pool, which opens its minimum on the new
/// server. In session mode a client still waiting for its first server connection
/// moves too (it has no session on the old server yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_and_session_clients_not_yet_served_follow_a_move_at_once() {
    let pg = Postgres::start().await.unwrap();
    let other = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.admin_users = vec!["postgres".into()]).await;
    let reload = |config| reload_with(&proxy, config);
    let idle = [
        connect(&proxy, "postgres", None).await.unwrap(),
        connect(&proxy, "postgres", None).await.unwrap(),
    ];
    for client in &idle {
        client.batch_execute("SELECT 1").await.unwrap();
    }
    let mut config = config_for(&other, PoolMode::Transaction, 2);
    config.min_pool_size = 2;
    reload(config);
    let console = admin(&proxy).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pools = show(&console, "POOLS").await;
        let app = pools.iter().find(|p| p["database"] == "app");
        let followed = app.is_some_and(|p| {
            num(p, "cl_active") + num(p, "cl_waiting") == 2
                && num(p, "sv_idle") + num(p, "sv_used") >= 2
        });
        if followed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle clients did not follow: {pools:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for client in &idle {
        assert_eq!(server_port(client).await, other.port().to_string());
    }
    // Session mode, one connection: a client holds it; another waits for it.
    reload(config_for(&other, PoolMode::Session, 1));
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(server_port(&holder).await, other.port().to_string());
    let waiting = show_port_later(&proxy);
    until_waiting(&proxy, 1).await;
    reload(config_for(&pg, PoolMode::Session, 1));
    let (_waiter, waited) = finished(waiting, "the waiter never moved").await;
    assert_eq!(waited, pg.port().to_string());
    // The holder's session lives on the old server: closed before its next query.
    let e = holder.batch_execute("SELECT 1").await.unwrap_err();
    assert!(code(&e) == Some("57P01") || e.is_closed(), "{e:?}");
}

/// A client a RELOAD moved to another server whose table has another shape: its
/// statement prepared on the first server gets PostgreSQL's "cached plan must not
/// change result type", not rows in a shape it would misread; prepared again, it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_clients_statement_whose_shape_differs_there_is_refused() {
    let pg = Postgres::start().await.unwrap();
    let other = Postgres::start().await.unwrap();
    pg.psql("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .unwrap();
    other
        .psql("CREATE TABLE t (a int, b text); INSERT INTO t VALUES (2, 'x')")
        .unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let statement = client.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(client.query(&statement, &[]).await.unwrap()[0].len(), 1);
    let mut config = config_for(&other, PoolMode::Transaction, 2);
    config.admin_users = vec!["postgres".into()];
    let handle = proxy.handle();
    handle.set_reloader(move || Ok(config.clone()));
    handle.reload().unwrap();
    let e = client.query(&statement, &[]).await.unwrap_err();
    assert_eq!(code(&e), Some("0A000"), "{e:?}");
    let statement = client.prepare("SELECT * FROM t").await.unwrap();
    let rows = client.query(&statement, &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_a_session_blocked_on_a_client_that_stopped_reading() {
    use tokio::io::AsyncWriteExt;
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.default_pool_size = 1;
        c.query_wait_timeout = Duration::from_secs(60);
    })
    .await;
    // A big result the client never reads: pgopt blocks writing it.
    let mut stuck = common::raw_login(&proxy).await;
    let query = b"SELECT repeat('x', 100000) FROM generate_series(1, 2000)\0";
    stuck
        .write_all(&common::message(b'Q', query))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let console = admin(&proxy).await;
    console.simple_query("KILL app").await.unwrap();
    console.simple_query("RESUME app").await.unwrap();
    // The pool's only connection comes free (closed): another client gets one.
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let one = tokio::time::timeout(Duration::from_secs(5), common::value(&other, "SELECT 1"))
        .await
        .expect("the blocked session still holds the server connection");
    assert_eq!(one, "1");
    drop(stuck);
}

#[tokio::test]
async fn max_user_connections_counts_a_databases_forced_user() {
    let pg = Postgres::start().await.unwrap();
    pg.psql("CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN")
        .unwrap();
    let proxy = start_with(&pg, |c| {
        // Every client logs in to the server as postgres, whose own limit is 1.
        c.databases[0].user = Some("postgres".into());
        let mut user = pgopt_proxy::User::new("postgres", "unused");
        user.max_user_connections = Some(1);
        c.users = vec![user];
    })
    .await;
    let alice = connect(&proxy, "alice", None).await.unwrap();
    alice.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let port = proxy.local_addr().port();
    let waiting = tokio::spawn(async move {
        let bob = common::connect_port(port, "bob").await.unwrap();
        common::value(&bob, "SELECT 3").await
    });
    still_waiting(&waiting, "a second connection as postgres was opened").await;
    alice.batch_execute("COMMIT").await.unwrap();
    let three = finished(waiting, "room was made").await;
    assert_eq!(three, "3");
    let users = show(&admin(&proxy).await, "USERS").await;
    let row = users.iter().find(|r| r["name"] == "postgres").unwrap();
    assert_eq!(row["max_user_connections"], "1");
}

/// A database that forces a user has one pool, that user's, whatever users its
/// clients log in as (as PgBouncer pools them): `pool_size` bounds the server
/// connections of all of them. Before, each client user had a pool of its own.
#[tokio::test]
async fn clients_of_a_database_that_forces_a_user_share_its_pool() {
    let pg = Postgres::start().await.unwrap();
    pg.psql("CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN")
        .unwrap();
    let proxy = start_with(&pg, |c| {
        c.databases[0].user = Some("postgres".into());
        c.default_pool_size = 1;
    })
    .await;
    let alice = connect(&proxy, "alice", None).await.unwrap();
    alice.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let port = proxy.local_addr().port();
    let waiting = tokio::spawn(async move {
        let bob = common::connect_port(port, "bob").await.unwrap();
        common::value(&bob, "SELECT current_user").await
    });
    still_waiting(&waiting, "a second server connection was opened for bob").await;
    let pools = show(&admin(&proxy).await, "POOLS").await;
    let app: Vec<_> = pools.iter().filter(|r| r["database"] == "app").collect();
    assert_eq!(app.len(), 1, "{pools:?}");
    assert_eq!(app[0]["user"], "postgres");
    assert_eq!(app[0]["cl_waiting"], "1", "{pools:?}");
    alice.batch_execute("COMMIT").await.unwrap();
    assert_eq!(finished(waiting, "room was made").await, "postgres");
}

#[tokio::test]
async fn a_client_waiting_for_its_users_room_holds_none_of_its_databases() {
    let pg = Postgres::start().await.unwrap();
    pg.psql("CREATE ROLE alice LOGIN").unwrap();
    let proxy = start_with(&pg, |c| {
        c.max_db_connections = 1;
        let mut second = c.databases[0].clone();
        second.name = "app2".into();
        c.databases.push(second);
        let mut user = pgopt_proxy::User::new("postgres", "unused");
        user.max_user_connections = Some(1);
        c.users = vec![user];
    })
    .await;
    // postgres is at its one connection, on app.
    let a = connect_db(&proxy, "postgres", "app").await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // postgres on app2 waits for room of its own...
    let port = proxy.local_addr().port();
    let waiting = tokio::spawn(async move {
        let b = connect_port_db(port, "postgres", "app2").await.unwrap();
        common::value(&b, "SELECT 2").await
    });
    still_waiting(&waiting, "the wait ended").await;
    // ...without taking app2's only place from another user.
    let alice = tokio::time::timeout(Duration::from_secs(3), async {
        let alice = connect_db(&proxy, "alice", "app2").await.unwrap();
        common::value(&alice, "SELECT 3").await
    })
    .await
    .expect("app2's place was held by a client waiting for its user's room");
    assert_eq!(alice, "3");
    a.batch_execute("COMMIT").await.unwrap();
    let two = finished(waiting, "room was made for postgres on app2").await;
    assert_eq!(two, "2");
}

#[tokio::test]
async fn a_reload_applies_session_timeouts_to_clients_already_connected() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let leaky = connect(&proxy, "postgres", None).await.unwrap();
    leaky.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.admin_users = vec!["postgres".into()];
    config.idle_transaction_timeout = Duration::from_millis(300);
    let handle = proxy.handle();
    handle.set_reloader(move || Ok(config.clone()));
    handle.reload().unwrap();
    // Waiting with no timer when the RELOAD came, the session now has one.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let e = leaky.simple_query("SELECT 1").await.unwrap_err();
    assert!(code(&e) == Some("25P03") || e.is_closed(), "{e:?}");
}

#[tokio::test]
async fn shutdown_tells_a_client_waiting_on_a_pool_a_reload_replaced_at_once() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.default_pool_size = 1;
        c.shutdown_timeout = Duration::from_secs(20);
        c.admin_users = vec!["postgres".into()];
    })
    .await;
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    let waiter = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiting = tokio::spawn(async move { waiter.batch_execute("SELECT 2").await });
    until_waiting(&proxy, 1).await;
    // The pool is replaced for a new password: the holder's transaction goes on on
    // the old one, and the waiter waits there still.
    let mut config = config_for(&pg, PoolMode::Transaction, 1);
    config.admin_users = vec!["postgres".into()];
    config.databases[0].password = Some("unused".into());
    let handle = proxy.handle();
    handle.set_reloader(move || Ok(config.clone()));
    handle.reload().unwrap();
    still_waiting(&waiting, "the old pool's only connection is held").await;
    proxy.handle().shutdown();
    let e = finished(waiting, "the waiter heard of the shutdown")
        .await
        .unwrap_err();
    assert!(code(&e) == Some("57P01") || e.is_closed(), "{e:?}");
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_session_blocked_on_a_client_that_stopped_reading() {
    use tokio::io::AsyncWriteExt;
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.shutdown_timeout = Duration::from_millis(300)).await;
    let watcher = pg.connect("postgres").await.unwrap();
    // A big result the client never reads: pgopt blocks writing it.
    let mut stuck = common::raw_login(&proxy).await;
    let query = "SELECT repeat('x', 100000) FROM generate_series(1, 2000)";
    let mut text = query.as_bytes().to_vec();
    text.push(0);
    stuck
        .write_all(&common::message(b'Q', &text))
        .await
        .unwrap();
    common::wait_until_running(&watcher, query).await;
    proxy.handle().shutdown();
    tokio::time::timeout(Duration::from_secs(10), proxy.wait())
        .await
        .expect("the shutdown ends");
    // The session gave up its write, and with it the server connection.
    let backends = async {
        loop {
            let n = common::value(
                &watcher,
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .await;
            if n == "0" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), backends)
        .await
        .expect("the blocked session still holds its server connection");
    drop(stuck);
}

#[tokio::test]
async fn set_changes_a_setting_until_the_next_reload() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let console = admin(&proxy).await;
    let setting = |config: &[HashMap<String, String>], key: &str| {
        config.iter().find(|r| r["key"] == key).unwrap()["value"].clone()
    };
    console
        .simple_query("SET query_wait_timeout = '1500ms'")
        .await
        .unwrap();
    console
        .simple_query("set pool_mode to session")
        .await
        .unwrap();
    console
        .simple_query("SET max_client_conn = 2")
        .await
        .unwrap();
    let config = show(&console, "CONFIG").await;
    assert_eq!(setting(&config, "query_wait_timeout"), "1500ms");
    assert_eq!(setting(&config, "pool_mode"), "session");
    assert_eq!(setting(&config, "max_client_conn"), "2");
    // In effect: the console and one more client fill max_client_conn.
    let one = connect(&proxy, "postgres", None).await.unwrap();
    let refused = connect(&proxy, "postgres", None).await.unwrap_err();
    assert_eq!(code(&refused), Some("53300"), "{refused}");
    drop(one);

    // Refusals say why, with PostgreSQL's codes, and change nothing.
    for (sql, want, says) in [
        ("SET no_such_thing = 1", "42704", "unrecognized"),
        ("SET listen = '0.0.0.0:1'", "55P02", "a restart"),
        ("SET workers = 2", "55P02", "a restart"),
        (
            "SET tls_mode = require",
            "55P02",
            "the config file and RELOAD",
        ),
        ("SET auth = md5", "55P02", "the config file and RELOAD"),
        ("SET default_pool_size = 0", "22023", "a whole number"),
        ("SET query_timeout = 'soon'", "22023", "a duration"),
    ] {
        let e = console.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), Some(want), "{sql}: {e}");
        let message = e.as_db_error().map(|d| d.message().to_string());
        assert!(
            message.as_deref().unwrap_or("").contains(says),
            "{sql}: {e}"
        );
    }
    assert_eq!(
        setting(&show(&console, "CONFIG").await, "max_client_conn"),
        "2"
    );

    // The next RELOAD reads the config again: the SETs are gone. A setting only a
    // restart changes is shown as in effect, not as the file now has it.
    let listening = setting(&show(&console, "CONFIG").await, "listen");
    let mut file = config_for(&pg, PoolMode::Transaction, 2);
    file.admin_users = vec!["postgres".into()];
    file.listen = "127.0.0.1:1".parse().unwrap();
    proxy.handle().set_reloader(move || Ok(file.clone()));
    console.simple_query("RELOAD").await.unwrap();
    let config = show(&console, "CONFIG").await;
    assert_eq!(setting(&config, "pool_mode"), "transaction");
    assert_eq!(setting(&config, "max_client_conn"), "1000");
    assert_eq!(setting(&config, "listen"), listening);
}

#[tokio::test]
async fn application_name_add_host_tells_the_server_where_a_client_is() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.application_name_add_host = true).await;
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.local_addr().port())
        .user("postgres")
        .dbname("app")
        .application_name("billing")
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let name = common::value(&client, "SELECT current_setting('application_name')").await;
    assert!(name.starts_with("billing - 127.0.0.1:"), "{name}");
    let port: u16 = name.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(
        port,
        proxy.local_addr().port(),
        "the client's port, not pgopt's"
    );
}

/// The columns (or, for SHOW LISTS, the rows) Prometheus' pgbouncer_exporter reads, by
/// the name it reads them.
const EXPORTER_READS: &[(&str, &[&str])] = &[
    (
        "DATABASES",
        &[
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "reserve_pool",
            "pool_mode",
            "max_connections",
            "current_connections",
            "paused",
            "disabled",
        ],
    ),
    (
        "STATS_TOTALS",
        &[
            "database",
            "query_count",
            "query_time",
            "bytes_received",
            "bytes_sent",
            "wait_time",
            "xact_count",
            "xact_time",
        ],
    ),
    (
        "POOLS",
        &[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "sv_active",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
        ],
    ),
];

#[tokio::test]
async fn pgbouncers_admin_database_name_serves_monitoring_made_for_pgbouncer() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.server_check_delay = Duration::from_millis(300)).await;
    // Some traffic, so every view has rows.
    let app = connect(&proxy, "postgres", None).await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    let port = proxy.local_addr().port();
    let console = common::client_at("127.0.0.1", port, "postgres", "pgbouncer", None)
        .await
        .unwrap();
    for (view, columns) in EXPORTER_READS {
        let rows = show(&console, view).await;
        assert!(!rows.is_empty(), "SHOW {view}: no rows");
        for column in *columns {
            assert!(
                rows[0].contains_key(*column),
                "SHOW {view} has no {column}: {rows:?}"
            );
        }
    }
    // Gauges the exporter parses as numbers.
    for row in show(&console, "DATABASES").await {
        for column in ["paused", "disabled", "pool_size", "current_connections"] {
            assert!(row[column].parse::<f64>().is_ok(), "{column}: {row:?}");
        }
    }
    // The server connection, idle past server_check_delay, is sv_used (a check comes
    // before its next client), no longer sv_idle.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pools = show(&console, "POOLS").await;
    let pool = pools.iter().find(|p| p["database"] == "app").unwrap();
    assert_eq!(
        (&*pool["sv_idle"], &*pool["sv_used"]),
        ("0", "1"),
        "{pool:?}"
    );
    app.simple_query("SELECT 1").await.unwrap();
    let pools = show(&console, "POOLS").await;
    let pool = pools.iter().find(|p| p["database"] == "app").unwrap();
    assert_eq!(
        (&*pool["sv_idle"], &*pool["sv_used"]),
        ("1", "0"),
        "{pool:?}"
    );

    // SHOW LISTS: two columns, a number in the second, the lists it knows by name.
    let lists = show(&console, "LISTS").await;
    assert!(lists.iter().all(|r| r.len() == 2), "{lists:?}");
    for list in [
        "databases",
        "users",
        "pools",
        "used_clients",
        "free_servers",
        "used_servers",
    ] {
        let row = lists.iter().find(|r| r.values().any(|v| v == list));
        let row = row.unwrap_or_else(|| panic!("SHOW LISTS has no {list}: {lists:?}"));
        assert!(row.values().any(|v| v.parse::<f64>().is_ok()), "{row:?}");
    }
    // SHOW CONFIG: key, value, default, changeable; max_client_conn a number.
    let config = show(&console, "CONFIG").await;
    assert!(config.iter().all(|r| r.len() == 4), "{:?}", config[0]);
    let max = config
        .iter()
        .find(|r| r["key"] == "max_client_conn")
        .unwrap();
    assert!(max["value"].parse::<f64>().is_ok(), "{max:?}");
    for (key, value) in [
        ("tls_channel_binding", "true"),
        ("server_channel_binding", "prefer"),
    ] {
        let row = config.iter().find(|r| r["key"] == key);
        assert_eq!(row.map(|r| r["value"].as_str()), Some(value), "{key}");
    }
    // SHOW STATE follows PAUSE and RESUME of everything.
    let state = |rows: Vec<HashMap<String, String>>| {
        rows.iter()
            .map(|r| format!("{}={}", r["key"], r["value"]))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let running = "active=yes paused=no suspended=no";
    assert_eq!(state(show(&console, "STATE").await), running);
    console.simple_query("PAUSE").await.unwrap();
    let paused = "active=no paused=yes suspended=no";
    assert_eq!(state(show(&console, "STATE").await), paused);
    console.simple_query("RESUME").await.unwrap();
    assert_eq!(state(show(&console, "STATE").await), running);
    drop(console);

    // A database entry of that name is a database, not the console.
    let mut config = common::config_for(&pg, PoolMode::Transaction, 2);
    config.databases[0].name = "pgbouncer".into();
    let proxy = Proxy::start(config).await.unwrap();
    let port = proxy.local_addr().port();
    let db = common::client_at("127.0.0.1", port, "postgres", "pgbouncer", None)
        .await
        .unwrap();
    let row = db.query_one("SELECT 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
}

#[tokio::test]
async fn wait_close_returns_once_the_connections_reconnect_marked_have_closed() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let console = admin(&proxy).await;
    // Nothing marked: at once.
    tokio::time::timeout(Duration::from_secs(5), console.simple_query("WAIT_CLOSE"))
        .await
        .expect("WAIT_CLOSE with nothing to close returned")
        .unwrap();
    console.simple_query("RECONNECT app").await.unwrap();
    let servers = show(&console, "SERVERS").await;
    assert!(
        servers.iter().any(|s| s["close_needed"] == "1"),
        "{servers:?}"
    );
    // The held connection is marked: WAIT_CLOSE waits for its transaction to end.
    let other = admin(&proxy).await;
    let waiting = tokio::spawn(async move { other.simple_query("WAIT_CLOSE app").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "WAIT_CLOSE returned with a marked connection open"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("WAIT_CLOSE returned once the connection closed")
        .unwrap()
        .unwrap();
    let servers = show(&console, "SERVERS").await;
    assert!(
        servers.iter().all(|s| s["close_needed"] == "0"),
        "{servers:?}"
    );
    // A RELOAD that moves the database to another server: the old server's
    // connections end with the last session on them, and WAIT_CLOSE waits for that.
    drop(holder);
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut moved = common::config_for(&pg, PoolMode::Transaction, 2);
    moved.admin_users = vec!["postgres".into()];
    moved.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    moved.databases[0].dbname = "template1".into();
    proxy.handle().apply(moved).unwrap();
    let servers = show(&console, "SERVERS").await;
    assert!(
        servers.iter().any(|s| s["close_needed"] == "1"),
        "{servers:?}"
    );
    let other = admin(&proxy).await;
    let waiting = tokio::spawn(async move { other.simple_query("WAIT_CLOSE").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "WAIT_CLOSE returned with the old server's connection open"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    drop(holder);
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("WAIT_CLOSE returned once the old server's connection closed")
        .unwrap()
        .unwrap();

    // A database not configured is refused, as for RECONNECT.
    let e = console
        .simple_query("WAIT_CLOSE nosuchdb")
        .await
        .unwrap_err();
    let message = e.as_db_error().map(|d| d.message().to_string());
    assert!(message.unwrap_or_default().contains("nosuchdb"), "{e:?}");
}

/// The server backends one client's six transactions ran on, in order, in
/// transaction mode with three idle connections.
async fn backends_of_six(client: &tokio_postgres::Client) -> Vec<i32> {
    let mut pids = Vec::new();
    for _ in 0..6 {
        let row = client.query_one("SELECT pg_backend_pid()", &[]).await;
        pids.push(row.unwrap().get(0));
    }
    pids
}

#[tokio::test]
async fn server_round_robin_reuses_the_connection_idle_longest() {
    let pg = Postgres::start().await.unwrap();
    // One thread: every connection is the session thread's own.
    let proxy = start_with(&pg, |c| {
        c.workers = 1;
        c.default_pool_size = 3;
    })
    .await;
    let console = admin(&proxy).await;
    // Three connections open at once, then idle.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = connect(&proxy, "postgres", None).await.unwrap();
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        clients.push(c);
    }
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }
    // By default the one used last comes back each time.
    let pids = backends_of_six(&clients[0]).await;
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    console
        .simple_query("SET server_round_robin = 1")
        .await
        .unwrap();
    // Round robin: the one idle longest, so each of the three in turn.
    let pids = backends_of_six(&clients[0]).await;
    let distinct: std::collections::HashSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
    assert_eq!(pids[..3], pids[3..], "{pids:?}");
    let config = show(&console, "CONFIG").await;
    let row = config
        .iter()
        .find(|r| r["key"] == "server_round_robin")
        .unwrap();
    assert_eq!(row["value"], "on");
}

/// A cancel request from a client waiting for a server connection (the pool is busy)
/// fails its request with 57014 at once, as PostgreSQL cancels a statement waiting on
/// a lock; the statement never runs, and the client goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_waiting_for_a_connection_fails_the_request_which_never_runs() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.default_pool_size = 1;
        c.query_wait_timeout = Duration::from_secs(60);
        c.admin_users = vec!["postgres".into()];
    })
    .await;
    let holder = connect(&proxy, "postgres", None).await.unwrap();
    holder
        .batch_execute("CREATE TABLE marks (v int); BEGIN; SELECT 1")
        .await
        .unwrap();
    let waiter = connect(&proxy, "postgres", None).await.unwrap();
    let token = waiter.cancel_token();
    let waiter = std::sync::Arc::new(waiter);
    let w = waiter.clone();
    let waiting =
        tokio::spawn(async move { w.batch_execute("INSERT INTO marks VALUES (1)").await });
    until_waiting(&proxy, 1).await;
    token.cancel_query(NoTls).await.unwrap();
    let e = finished(waiting, "the cancel ended the wait")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("57014"), "{e:?}");
    holder.batch_execute("COMMIT").await.unwrap();
    let n: i64 = waiter
        .query_one("SELECT count(*) FROM marks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the canceled INSERT ran");
}
