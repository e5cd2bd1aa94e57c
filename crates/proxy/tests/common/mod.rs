//! What the proxy's integration tests share: a real PostgreSQL, a proxy in front of it
//! (database `app`), and tokio-postgres clients of the proxy.

#![allow(dead_code)]

use std::process::Command;

use pgopt_embedded::Postgres;
use pgopt_proxy::{Config, Database, PoolMode, Proxy};
use tokio_postgres::NoTls;

/// Proxy settings for `pg` with database `app` → `postgres`. Sessions alternate
/// between the test's runtime and a session thread of the proxy's own, as `pgopt
/// proxy` runs them (one runtime per core): every test covers both.
pub fn config_for(pg: &Postgres, mode: PoolMode, pool_size: usize) -> Config {
    let mut config = config_for_port(pg.port(), mode, pool_size);
    config.databases[0].password = pg.password().map(str::to_string);
    config
}

/// [`config_for`] for the server at 127.0.0.1:`port`, which takes no password.
pub fn config_for_port(port: u16, mode: PoolMode, pool_size: usize) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        pool_mode: mode,
        default_pool_size: pool_size,
        workers: 2,
        databases: vec![Database {
            name: "app".into(),
            host: "127.0.0.1".into(),
            port,
            dbname: "postgres".into(),
            user: None,
            password: None,
            more_hosts: Default::default(),
            replicas: Vec::new(),
            pool: Default::default(),
        }],
        ..Config::default()
    }
}

/// A fresh PostgreSQL and a proxy in front of it.
pub async fn start(mode: PoolMode, pool_size: usize) -> (Postgres, Proxy) {
    let pg = Postgres::start().await.unwrap();
    let proxy = Proxy::start(config_for(&pg, mode, pool_size))
        .await
        .unwrap();
    (pg, proxy)
}

/// A proxy in transaction mode (pool of 2) with the admin console for `postgres` and
/// the HTTP endpoint on a free port; `tweak` changes the config first.
pub async fn start_with(pg: &Postgres, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut config = config_for(pg, PoolMode::Transaction, 2);
    config.admin_users = vec!["postgres".into()];
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    tweak(&mut config);
    Proxy::start(config).await.unwrap()
}

pub async fn connect(
    proxy: &Proxy,
    user: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let port = proxy.local_addr().port();
    client_at("127.0.0.1", port, user, "app", password).await
}

/// A tokio-postgres client of `db` at `host:port` (its connection driven on a task).
pub async fn client_at(
    host: &str,
    port: u16,
    user: &str,
    db: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config.host(host).port(port).user(user).dbname(db);
    if let Some(pw) = password {
        config.password(pw);
    }
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A client of the proxy listening on `port`, database `app`, no password.
pub async fn connect_port(
    port: u16,
    user: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname("app")
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// SQLSTATE of a server error.
pub fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// Runs a command to success and returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pgbench -i` at scale 1 directly on the server.
pub fn pgbench_init(pg: &Postgres) {
    run(Command::new(pg.binaries().program("pgbench")).args([
        "-i",
        "-q",
        "-s",
        "1",
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port().to_string(),
        "-U",
        "postgres",
        "postgres",
    ]));
}

/// A client of the admin console (database `pgopt`) as `postgres`.
pub async fn admin(proxy: &Proxy) -> tokio_postgres::Client {
    let port = proxy.local_addr().port();
    client_at("127.0.0.1", port, "postgres", "pgopt", None)
        .await
        .unwrap()
}

/// Rows of an admin SHOW as column-name → value maps.
pub async fn show(
    admin: &tokio_postgres::Client,
    what: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let mut rows = Vec::new();
    for m in admin.simple_query(&format!("SHOW {what}")).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            let map = row
                .columns()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name().to_string(), row.get(i).unwrap_or("").to_string()))
                .collect();
            rows.push(map);
        }
    }
    rows
}

/// Waits (up to 20 s) until SHOW CACHE's row satisfies `ok`, and returns it.
#[allow(dead_code)] // not every test binary uses it
pub async fn wait_for_cache(
    proxy: &Proxy,
    what: &str,
    ok: impl Fn(&std::collections::HashMap<String, String>) -> bool,
) -> std::collections::HashMap<String, String> {
    let admin = admin(proxy).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let row = show(&admin, "CACHE").await.remove(0);
        if ok(&row) {
            return row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {what}: {row:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The whole HTTP response (head and body) to `GET path`.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

/// Waits until the server shows a statement starting with `query` running (a cancel
/// sent before would find nothing to cancel), however loaded the machine.
pub async fn wait_until_running(watcher: &tokio_postgres::Client, query: &str) {
    loop {
        let running: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND starts_with(query, $1)",
                &[&query],
            )
            .await
            .unwrap()
            .get(0);
        if running > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits (up to 20 s) until a statement whose text matches `pattern` (ILIKE) waits
/// on a lock. Through `pg_stat_get_activity`, not the view, which joins pg_authid (a
/// test may hold that locked). `watcher` must be outside a transaction block: one
/// reads the activity once per transaction.
pub async fn wait_until_waiting_on_lock(watcher: &tokio_postgres::Client, pattern: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no statement like {pattern:?} waited on a lock"
        );
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_get_activity(NULL) \
                 WHERE wait_event_type = 'Lock' AND query ILIKE $1",
                &[&pattern],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The first column of the first row of a simple query, as text.
pub async fn value(client: &tokio_postgres::Client, sql: &str) -> String {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            return row.get(0).unwrap_or("").to_string();
        }
    }
    panic!("{sql}: no row");
}

/// A numeric column of a SHOW row.
pub fn counter(row: &std::collections::HashMap<String, String>, name: &str) -> u64 {
    row[name]
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {row:?}"))
}

/// A client of bare bytes, logged in to database `app` as postgres (trust), after its
/// ReadyForQuery.
pub async fn raw_login(proxy: &Proxy) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    raw.write_all(&startup_message()).await.unwrap();
    read_until(&mut raw, b'Z').await;
    raw
}

/// A StartupMessage (protocol 3.0) for user `postgres` and database `app`.
pub fn startup_message() -> Vec<u8> {
    let body = b"\0\x03\0\0user\0postgres\0database\0app\0\0";
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    startup
}

/// The types of the messages `raw` receives up to and including the first of type
/// `last` (they may come in more than one read).
pub async fn read_until(raw: &mut tokio::net::TcpStream, last: u8) -> Vec<u8> {
    read_until_nth(raw, last, 1).await
}

/// [`read_until`] the `n`-th message of type `last` (those before it may come in the
/// same read, and would be lost between two calls).
pub async fn read_until_nth(raw: &mut tokio::net::TcpStream, last: u8, n: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let (mut reply, mut at, mut types, mut seen) = (Vec::new(), 0, Vec::new(), 0);
    loop {
        if let Some(head) = reply.get(at..at + 5) {
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if reply.len() >= at + 1 + len {
                types.push(head[0]);
                if head[0] == last {
                    seen += 1;
                }
                if seen == n {
                    return types;
                }
                at += 1 + len;
                continue;
            }
        }
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), raw.read(&mut buf));
        let n = read
            .await
            .unwrap_or_else(|_| panic!("no {:?} in 10 s, after {types:?}", last as char))
            .unwrap();
        assert!(n > 0, "closed before {:?}", last as char);
        reply.extend_from_slice(&buf[..n]);
    }
}

/// A protocol message: type, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A raw client that ran `BEGIN` and `UPDATE items SET v = '<v>' WHERE id = 1`, then
/// sent COMMIT as Parse, Bind, Execute and Flush: no Sync.
pub async fn commit_without_sync(proxy: &Proxy, v: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut raw = raw_login(proxy).await;
    let update = format!("UPDATE items SET v = '{v}' WHERE id = 1\0");
    for sql in [&b"BEGIN\0"[..], update.as_bytes()] {
        raw.write_all(&message(b'Q', sql)).await.unwrap();
        read_until(&mut raw, b'Z').await;
    }
    raw.write_all(&run_unnamed("COMMIT", b'H')).await.unwrap();
    raw
}

/// Parse, Bind and Execute of `sql` as the unnamed statement and portal, then `end`:
/// `b'H'` (Flush, no Sync) or `b'S'` (Sync).
pub fn run_unnamed(sql: &str, end: u8) -> Vec<u8> {
    let mut batch = message(b'P', format!("\0{sql}\0\0\0").as_bytes());
    batch.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(message(b'E', b"\0\0\0\0\0"));
    batch.extend(message(end, b""));
    batch
}

/// Prepares statement `s1` (`SELECT 1`) for the raw client.
pub async fn prepare_s1(raw: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut prepare = message(b'P', b"s1\0SELECT 1\0\0\0");
    prepare.extend(message(b'S', b""));
    raw.write_all(&prepare).await.unwrap();
    assert_eq!(read_until(raw, b'Z').await, b"1Z");
}

/// A fresh, empty directory for one test's files (certificates, sockets, rules).
#[allow(dead_code)] // not every test binary uses it
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgopt-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate and key for localhost, made with the openssl tool.
pub fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    (cert, key)
}
