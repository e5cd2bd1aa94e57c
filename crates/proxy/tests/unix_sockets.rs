//! Unix-domain sockets on both sides: clients (psql, tokio-postgres) connecting to
//! `unix_socket_dir`, the socket file's life (permissions, a stale file replaced, a
//! live one refused, removed at the end), and servers reached through their socket
//! directory — queries, cancels, dead connections found in the pool.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use common::{admin, code, config_for, show, temp_dir};
use pgopt_embedded::Postgres;
use pgopt_proxy::{Config, PoolMode, Proxy};
use tokio_postgres::NoTls;

fn with_socket(pg: &Postgres, dir: &std::path::Path, port: u16) -> Config {
    let mut config = config_for(pg, PoolMode::Transaction, 2);
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.unix_socket_dir = Some(dir.to_str().unwrap().to_string());
    config.admin_users = vec!["postgres".into()];
    config
}

/// Runs `pg_sleep(30)` on `client` and cancels it: the statement ends with 57014
/// (`watcher`, a direct client, sees it running first).
async fn cancel_a_sleep(client: tokio_postgres::Client, watcher: &tokio_postgres::Client) {
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    common::wait_until_running(watcher, "SELECT pg_sleep(30)").await;
    token.cancel_query(NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the cancel ended the statement")
        .unwrap()
        .unwrap_err();
    assert_eq!(code(&e), Some("57014"), "{e}");
}

/// A tokio-postgres client of database `db` on the socket in `dir`.
async fn connect_unix(dir: &std::path::Path, port: u16, db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(dir)
        .port(port)
        .user("postgres")
        .dbname(db)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A group (name, id) other than this process's, that it may give a file: any, for
/// root; else one of its supplementary groups. From /etc/group.
fn other_group() -> Option<(String, u32)> {
    // SAFETY: plain queries of this process's ids.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: `groups` has room for the count given.
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    groups.truncate(usize::try_from(n).unwrap_or(0));
    let file = std::fs::read_to_string("/etc/group").ok()?;
    file.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let gid: u32 = fields.nth(1)?.parse().ok()?;
        let usable = gid != egid && (euid == 0 || groups.contains(&gid));
        (usable && !name.is_empty()).then(|| (name.to_string(), gid))
    })
}

#[tokio::test]
async fn clients_connect_over_the_unix_socket_and_its_file_goes_with_the_proxy() {
    let dir = temp_dir("clients");
    let pg = Postgres::start().await.unwrap();
    let port = pgopt_embedded::free_port().unwrap();
    let mut config = with_socket(&pg, &dir, port);
    config.unix_socket_mode = 0o700;
    let path = dir.join(format!(".s.PGSQL.{port}"));

    // A group that does not exist stops the start, naming it.
    let mut unknown = config.clone();
    unknown.unix_socket_group = Some("pgopt-no-such-group".into());
    let e = Proxy::start(unknown)
        .await
        .err()
        .expect("started")
        .to_string();
    assert!(
        e.contains("unix_socket_group \"pgopt-no-such-group\": no such group"),
        "{e}"
    );
    assert!(!path.exists(), "a socket file was left");

    // The socket is given the group asked for, by name.
    let group = other_group();
    config.unix_socket_group = group.as_ref().map(|(name, _)| name.clone());
    let proxy = Proxy::start(config).await.unwrap();
    assert_eq!(proxy.unix_socket(), Some(path.as_path()));
    let meta = std::fs::metadata(&path).unwrap();
    let mode = meta.permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    match &group {
        Some((name, gid)) => assert_eq!(meta.gid(), *gid, "group {name}"),
        None => eprintln!("no group other than our own to give the socket: not checked"),
    }

    // psql finds it as it finds PostgreSQL's: a host that is a directory.
    let psql = pg.binaries().program("psql");
    let mut cmd = Command::new(psql);
    cmd.arg("-XAt")
        .arg("-h")
        .arg(&dir)
        .arg("-p")
        .arg(port.to_string());
    cmd.args(["-U", "postgres", "-d", "app"]);
    cmd.args(["-c", "SELECT count(*) FROM generate_series(1, 1000)"]);
    // Off the runtime thread: the proxy under test runs on it.
    let out = tokio::task::spawn_blocking(move || common::run(&mut cmd))
        .await
        .unwrap();
    assert_eq!(out.trim(), "1000");

    // tokio-postgres: queries, then a cancel of a running statement, which reaches
    // the proxy over the same socket.
    let client = connect_unix(&dir, port, "app").await;
    let row = client
        .query_one("SELECT $1::int + 1", &[&41])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let watcher = pg.connect("postgres").await.unwrap();
    cancel_a_sleep(client, &watcher).await;

    // The admin console over the socket shows its clients as PgBouncer does.
    let other = connect_unix(&dir, port, "app").await;
    let console = connect_unix(&dir, port, "pgopt").await;
    let clients = show(&console, "CLIENTS").await;
    let unix: Vec<_> = clients.iter().filter(|c| c["addr"] == "unix").collect();
    assert!(unix.len() >= 2, "{clients:?}");
    assert!(
        unix.iter().all(|c| c["port"] == port.to_string()),
        "{unix:?}"
    );
    // The kernel names the process at the other end of a socket: this one.
    let me = std::process::id().to_string();
    assert!(unix.iter().all(|c| c["remote_pid"] == me), "{unix:?}");
    let config = show(&console, "CONFIG").await;
    let setting = |key: &str| config.iter().find(|r| r["key"] == key).unwrap()["value"].clone();
    assert_eq!(setting("unix_socket_dir"), dir.to_str().unwrap());
    assert_eq!(setting("unix_socket_mode"), "0700");
    if let Some((name, _)) = &group {
        assert_eq!(&setting("unix_socket_group"), name);
    }
    // TCP clients still come in with their address.
    let tcp = admin(&proxy).await;
    let clients = show(&tcp, "CLIENTS").await;
    assert!(
        clients.iter().any(|c| c["addr"] == "127.0.0.1"),
        "{clients:?}"
    );
    let tcp_rows = clients.iter().filter(|c| c["addr"] == "127.0.0.1");
    assert!(
        tcp_rows.clone().all(|c| c["remote_pid"] == "0"),
        "{clients:?}"
    );

    drop((console, tcp, other));
    drop(proxy);
    assert!(!path.exists(), "the socket file outlived the proxy");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_and_a_live_or_foreign_one_refused() {
    let dir = temp_dir("stale");
    let pg = Postgres::start().await.unwrap();
    let port = pgopt_embedded::free_port().unwrap();
    let path = dir.join(format!(".s.PGSQL.{port}"));

    // Something accepts on it: another server's socket is left alone.
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let e = Proxy::start(with_socket(&pg, &dir, port))
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("another server is listening on"),
        "{e}"
    );
    assert!(path.exists());
    // Also with so_reuseport: no pgopt answers on the TCP address, so the socket is
    // some other server's (a PostgreSQL listening on its socket alone), not taken.
    let mut reuse = with_socket(&pg, &dir, port);
    reuse.so_reuseport = true;
    let e = Proxy::start(reuse).await.err().unwrap();
    assert!(
        e.to_string().contains("another server is listening on"),
        "{e}"
    );

    // Left behind by a server that is gone: replaced.
    drop(live);
    let proxy = Proxy::start(with_socket(&pg, &dir, port)).await.unwrap();
    let client = connect_unix(&dir, port, "app").await;
    assert_eq!(common::value(&client, "SELECT 7").await, "7");
    drop(client);
    // Another server took the path over meanwhile (a restart beside a draining one):
    // the proxy going away leaves its socket alone.
    std::fs::remove_file(&path).unwrap();
    let successor = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(proxy);
    assert!(path.exists(), "the successor's socket was removed");
    drop(successor);
    std::fs::remove_file(&path).unwrap();

    // Not a socket at all: never removed.
    std::fs::write(&path, "precious").unwrap();
    let e = loop {
        // (The dropped proxy's TCP listener closes once its task is dropped.)
        let e = Proxy::start(with_socket(&pg, &dir, port))
            .await
            .err()
            .unwrap();
        if !e.to_string().contains("Address already in use") {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(e.to_string().contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_server_is_reached_through_its_socket_directory() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.databases[0].host = pg.socket_dir().to_str().unwrap().to_string();
    config.admin_users = vec!["postgres".into()];
    let proxy = Proxy::start(config).await.unwrap();

    // Several clients over the two connections, on both session threads.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(common::connect(&proxy, "postgres", None).await.unwrap());
    }
    for round in 0..5 {
        for (i, client) in clients.iter().enumerate() {
            let row = client
                .query_one("SELECT $1::int * 10", &[&(i as i32 + round)])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i32>(0), (i as i32 + round) * 10);
        }
    }
    let console = admin(&proxy).await;
    let servers = show(&console, "SERVERS").await;
    assert!(!servers.is_empty());
    for s in &servers {
        assert_eq!(s["addr"], "unix", "{servers:?}");
        assert_eq!(s["port"], pg.port().to_string(), "{servers:?}");
    }
    // PostgreSQL says so too: its backends have no client address.
    let over_unix = common::value(
        &clients[0],
        "SELECT (client_addr IS NULL)::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(over_unix, "true");

    // A cancel is forwarded to the server over its socket.
    let client = clients.pop().unwrap();
    let watcher = pg.connect("postgres").await.unwrap();
    cancel_a_sleep(client, &watcher).await;

    // Idle pooled connections whose backends were terminated are found dead (a FATAL
    // waits on the socket) and replaced before a client gets them.
    let killed = common::value(
        &watcher,
        "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND client_addr IS NULL",
    )
    .await;
    assert_ne!(killed, "0");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for client in &clients {
        assert_eq!(common::value(client, "SELECT 1").await, "1");
    }
}

#[tokio::test]
async fn with_so_reuseport_a_new_proxy_starts_beside_the_old_and_takes_its_clients() {
    let dir = temp_dir("reuseport");
    let pg = Postgres::start().await.unwrap();
    let port = pgopt_embedded::free_port().unwrap();
    let mut config = with_socket(&pg, &dir, port);
    config.so_reuseport = true;
    // Each its own /metrics (port 0: no two alike), to tell which one a client reached.
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let old = Proxy::start(config.clone()).await.unwrap();
    let path = old.unix_socket().unwrap().to_path_buf();
    // Without the option the address is taken, as before.
    let mut plain = config.clone();
    plain.so_reuseport = false;
    let e = Proxy::start(plain)
        .await
        .err()
        .expect("started")
        .to_string();
    assert!(e.to_lowercase().contains("in use"), "{e}");
    // With it the new one starts beside the old one, on the TCP port and the socket.
    let new = Proxy::start(config).await.unwrap();
    assert_eq!(new.unix_socket(), Some(path.as_path()));
    let query = |client: tokio_postgres::Client| async move {
        let row = client.query_one("SELECT 1 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2);
    };
    let tcp = || async {
        common::client_at("127.0.0.1", port, "postgres", "app", None)
            .await
            .unwrap()
    };
    for _ in 0..10 {
        query(tcp().await).await;
    }
    // A client of the old one in a transaction: the old one drains it.
    let accepted = |proxy: &Proxy| {
        let addr = proxy.admin_addr().unwrap();
        async move {
            let metrics = common::http_get(addr, "/metrics").await;
            let line = metrics
                .lines()
                .find(|l| l.starts_with("pgopt_client_connections_accepted_total"))
                .map(str::to_string);
            let value = line.as_deref().and_then(|l| l.split_whitespace().last());
            value.and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        }
    };
    let mut held = None;
    for _ in 0..50 {
        let before = accepted(&old).await;
        let client = tcp().await;
        if accepted(&old).await > before {
            held = Some(client);
            break;
        }
    }
    let held = held.expect("the kernel sent no client to the old proxy in 50 connections");
    held.batch_execute("BEGIN; SELECT 1").await.unwrap();
    old.handle().shutdown();
    // Stopped accepting: every new client reaches the new one, over TCP and the socket.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..10 {
        query(tcp().await).await;
    }
    query(connect_unix(&dir, port, "app").await).await;
    // The old one's transaction finishes, then it stops.
    held.batch_execute("COMMIT").await.unwrap();
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), old.wait())
        .await
        .expect("the old proxy drained");
    drop(old);
    // The old one left the new one's socket file in place.
    assert!(path.exists(), "the old proxy removed the new one's socket");
    query(connect_unix(&dir, port, "app").await).await;
    drop(new);
    assert!(!path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
