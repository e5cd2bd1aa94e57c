//! Several databases behind one proxy, each with its own pool settings, against a real
//! PostgreSQL.

use std::time::Duration;

mod common;

use common::{admin, code, config_for, show};
use pgopt_embedded::Postgres;
use pgopt_proxy::{Database, DatabasePool, PoolMode, Proxy};
use tokio_postgres::NoTls;

/// A database clients call `name`, on `pg`'s database `dbname`.
fn database(pg: &Postgres, name: &str, dbname: &str, pool: DatabasePool) -> Database {
    Database {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: pg.port(),
        dbname: dbname.into(),
        user: None,
        password: pg.password().map(str::to_string),
        more_hosts: Default::default(),
        replicas: Vec::new(),
        pool,
    }
}

/// A client of the proxy's database `db` as `postgres`.
async fn connect_to(
    proxy: &Proxy,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_as(proxy, "postgres", db).await
}

/// A client of the proxy's database `db` as `user`.
async fn connect_as(
    proxy: &Proxy,
    user: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.local_addr().port())
        .user(user)
        .dbname(db)
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Why `user` gets no server connection for `db` (refused at log-in in session mode,
/// at the first query in transaction mode).
async fn refusal(proxy: &Proxy, user: &str, db: &str) -> tokio_postgres::Error {
    let tried = async {
        let client = connect_as(proxy, user, db).await?;
        client.simple_query("SELECT 1").await
    };
    tried.await.expect_err("a server connection was made")
}

/// The SHOW `what` row whose `key` column is `value`.
async fn row_of(
    console: &tokio_postgres::Client,
    what: &str,
    key: &str,
    value: &str,
) -> std::collections::HashMap<String, String> {
    show(console, what)
        .await
        .into_iter()
        .find(|r| r[key] == value)
        .unwrap_or_else(|| panic!("no SHOW {what} row with {key} = {value}"))
}

#[tokio::test]
async fn each_database_pools_with_its_own_mode_and_size() {
    let pg = Postgres::start().await.unwrap();
    // Proxy-wide: transaction mode, 4 connections per pool.
    let mut config = config_for(&pg, PoolMode::Transaction, 4);
    config.admin_users = vec!["postgres".into()];
    let session_of_one = DatabasePool {
        mode: Some(PoolMode::Session),
        size: Some(1),
        ..DatabasePool::default()
    };
    config.databases = vec![
        database(&pg, "sess", "postgres", session_of_one),
        database(&pg, "txn", "postgres", DatabasePool::default()),
    ];
    let proxy = Proxy::start(config).await.unwrap();
    let console = admin(&proxy).await;

    // `sess` is in session mode: a temporary table outlives its transaction (transaction
    // mode refuses to create one).
    let first = connect_to(&proxy, "sess").await.unwrap();
    first
        .batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
        .await
        .unwrap();
    first
        .batch_execute("BEGIN; INSERT INTO scratch VALUES (2); COMMIT")
        .await
        .unwrap();
    let rows: i64 = first
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);

    // `sess` has one server connection, held by `first` while it is connected (even
    // idle): a second client waits for it...
    let second = connect_to(&proxy, "sess").await.unwrap();
    let waiting = tokio::spawn(async move {
        let n: i32 = second.query_one("SELECT 7", &[]).await?.get(0);
        Ok::<_, tokio_postgres::Error>((second, n))
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pool = row_of(&console, "POOLS", "database", "sess").await;
        if pool["cl_waiting"] == "1" {
            assert_eq!(pool["sv_active"], "1", "{pool:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nobody waits: {pool:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second client got a second server connection"
    );
    // ...until the first one leaves.
    drop(first);
    let (second, n) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the second client still waits after the first left")
        .unwrap()
        .unwrap();
    assert_eq!(n, 7);
    // Its session is fresh: the first client's temporary table went with DISCARD ALL.
    let err = second
        .batch_execute("SELECT * FROM scratch")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("42P01"), "{err}");

    // `txn` keeps the proxy-wide settings: transaction mode refuses a temporary table,
    // and two clients hold transactions at once.
    let a = connect_to(&proxy, "txn").await.unwrap();
    let err = a
        .batch_execute("CREATE TEMP TABLE t (x int)")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    let b = connect_to(&proxy, "txn").await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), b.batch_execute("BEGIN; SELECT 1"))
        .await
        .expect("txn's pool has more than one connection")
        .unwrap();

    // The admin console shows each pool's own mode and size.
    let sess = row_of(&console, "POOLS", "database", "sess").await;
    assert_eq!((&*sess["pool_mode"], &*sess["pool_size"]), ("session", "1"));
    let txn = row_of(&console, "POOLS", "database", "txn").await;
    assert_eq!(
        (&*txn["pool_mode"], &*txn["pool_size"]),
        ("transaction", "4")
    );
    assert_eq!(txn["sv_active"], "2");
    let sess = row_of(&console, "DATABASES", "name", "sess").await;
    assert_eq!((&*sess["pool_mode"], &*sess["pool_size"]), ("session", "1"));
    let txn = row_of(&console, "DATABASES", "name", "txn").await;
    assert_eq!(
        (&*txn["pool_mode"], &*txn["pool_size"]),
        ("transaction", "4")
    );
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    drop(second);
}

#[tokio::test]
async fn reload_applies_a_databases_own_pool_settings() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 4);
    config.admin_users = vec!["postgres".into()];
    config.databases = vec![database(&pg, "one", "postgres", DatabasePool::default())];
    let proxy = Proxy::start(config.clone()).await.unwrap();
    let console = admin(&proxy).await;
    let client = connect_to(&proxy, "one").await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(
        row_of(&console, "POOLS", "database", "one").await["pool_size"],
        "4"
    );

    // Its own size: the pool is resized in place.
    config.databases[0].pool.size = Some(2);
    config.databases[0].pool.min_size = Some(1);
    let reloaded = config.clone();
    proxy.handle().set_reloader(move || Ok(reloaded.clone()));
    console.simple_query("RELOAD").await.unwrap();
    let pool = row_of(&console, "POOLS", "database", "one").await;
    assert_eq!(
        (&*pool["pool_size"], &*pool["pool_mode"]),
        ("2", "transaction")
    );
    let db = row_of(&console, "DATABASES", "name", "one").await;
    assert_eq!((&*db["pool_size"], &*db["min_pool_size"]), ("2", "1"));

    // Its own mode: new clients get a session-mode pool.
    config.databases[0].pool.mode = Some(PoolMode::Session);
    let reloaded = config.clone();
    proxy.handle().set_reloader(move || Ok(reloaded.clone()));
    console.simple_query("RELOAD").await.unwrap();
    let client = connect_to(&proxy, "one").await.unwrap();
    client
        .batch_execute("CREATE TEMP TABLE kept (x int)")
        .await
        .unwrap();
    assert_eq!(
        row_of(&console, "POOLS", "database", "one").await["pool_mode"],
        "session"
    );
}

/// `(current_database(), inet_server_port())` as a client of the proxy sees them.
async fn whereabouts(client: &tokio_postgres::Client) -> (String, i32) {
    let row = client
        .query_one("SELECT current_database()::text, inet_server_port()", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn the_fallback_database_serves_unlisted_names_from_its_server() {
    let listed = Postgres::start().await.unwrap();
    let other = Postgres::start().await.unwrap();
    // Databases only `other` has, and two names the proxy must not send there.
    for name in ["alpha", "beta", "app", "pgopt"] {
        other.create_database(name).await.unwrap();
    }
    let mut config = config_for(&listed, PoolMode::Transaction, 4);
    config.admin_users = vec!["postgres".into()];
    config.server_idle_timeout = Duration::from_secs(1);
    let fallback_pool = DatabasePool {
        mode: Some(PoolMode::Session),
        size: Some(3),
        ..DatabasePool::default()
    };
    // Its dbname is not used: each client gets the database of its own name.
    config
        .databases
        .push(database(&other, "*", "unused", fallback_pool));
    let proxy = Proxy::start(config.clone()).await.unwrap();
    let other_port = i32::from(other.port());

    let alpha = connect_to(&proxy, "alpha").await.unwrap();
    assert_eq!(whereabouts(&alpha).await, ("alpha".into(), other_port));
    let beta = connect_to(&proxy, "beta").await.unwrap();
    assert_eq!(whereabouts(&beta).await, ("beta".into(), other_port));
    // A listed name keeps its own server, although `other` has a database of that name.
    let app = connect_to(&proxy, "app").await.unwrap();
    assert_eq!(
        whereabouts(&app).await,
        ("postgres".into(), i32::from(listed.port()))
    );
    // The admin console keeps its name.
    let console = admin(&proxy).await;
    let pools = show(&console, "POOLS").await;
    let fallback: Vec<_> = pools
        .iter()
        .filter(|p| p["database"] == "alpha" || p["database"] == "beta")
        .collect();
    assert_eq!(fallback.len(), 2, "{pools:?}");
    for pool in fallback {
        // The `*` entry's own pool settings.
        assert_eq!((&*pool["pool_mode"], &*pool["pool_size"]), ("session", "3"));
    }
    let databases = show(&console, "DATABASES").await;
    let row = |name: &str| {
        databases
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in SHOW DATABASES: {databases:?}"))
    };
    assert_eq!(row("alpha")["database"], "alpha");
    assert_eq!(row("alpha")["port"], other.port().to_string());
    assert_eq!(row("*")["database"], "");
    assert_eq!(row("app")["port"], listed.port().to_string());

    // A name the server lacks is the server's 3D000.
    let err = connect_to(&proxy, "nosuch").await.unwrap_err();
    assert_eq!(code(&err), Some("3D000"), "{err}");

    // The fallback's pools go once unused (here: their idle connections time out).
    drop((alpha, beta));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let names: Vec<String> = show(&console, "POOLS")
            .await
            .into_iter()
            .map(|p| p["database"].clone())
            .collect();
        if names == ["app"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fallback's pools stay: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And come back on demand.
    let alpha = connect_to(&proxy, "alpha").await.unwrap();
    assert_eq!(whereabouts(&alpha).await, ("alpha".into(), other_port));

    // The fallback cannot have replicas.
    config.databases[1].replicas = vec![pgopt_proxy::Replica {
        host: "127.0.0.1".into(),
        port: other.port(),
        weight: 1,
    }];
    let err = Proxy::start(config).await.err().expect("replicas refused");
    assert!(err.to_string().contains("cannot have replicas"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wal_listener_on_databases_reached_through_the_fallback_are_not_cached() {
    let logical = || Postgres::builder().setting("wal_level", "logical").start();
    let (listed, other) = (logical().await.unwrap(), logical().await.unwrap());
    other.create_database("alpha").await.unwrap();
    let items =
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');";
    listed.psql(items).unwrap();
    let alpha_direct = other.connect("alpha").await.unwrap();
    alpha_direct.batch_execute(items).await.unwrap();
    let mut config = config_for(&listed, PoolMode::Transaction, 4);
    config.admin_users = vec!["postgres".into()];
    config
        .databases
        .push(database(&other, "*", "unused", DatabasePool::default()));
    config.cache = pgopt_proxy::CacheSettings {
        enabled: true,
        tables: vec!["items".into()],
        wal_listener: true,
        ..pgopt_proxy::CacheSettings::default()
    };
    let proxy = Proxy::start(config).await.unwrap();
    let console = admin(&proxy).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while show(&console, "CACHE").await[0]["wal"] != "streaming" {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener never streamed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = "SELECT v FROM items WHERE id = 1";
    // The listed database is cached (a change behind pgopt's back is not seen at once)…
    let app = connect_to(&proxy, "app").await.unwrap();
    assert_eq!(common::value(&app, read).await, "a");
    assert_eq!(common::value(&app, read).await, "a");
    let hits = |rows: Vec<std::collections::HashMap<String, String>>| -> u64 {
        rows[0]["hits"].parse().unwrap()
    };
    assert_eq!(hits(show(&console, "CACHE").await), 1);
    // … the fallback's is not: no listener follows its writes.
    let alpha = connect_to(&proxy, "alpha").await.unwrap();
    assert_eq!(common::value(&alpha, read).await, "a");
    alpha_direct
        .batch_execute("UPDATE items SET v = 'behind' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(common::value(&alpha, read).await, "behind");
    assert_eq!(hits(show(&console, "CACHE").await), 1);
}

/// The server ports of `n` clients of `db` held at once (session mode: each on its own
/// server connection).
async fn ports_of_clients(proxy: &Proxy, db: &str, n: usize) -> Vec<i32> {
    let mut clients = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n {
        let client = connect_to(proxy, db).await.unwrap();
        ports.push(whereabouts(&client).await.1);
        clients.push(client);
    }
    ports
}

#[tokio::test]
async fn a_host_list_spreads_connections_and_skips_a_server_that_is_down() {
    let mut a = Postgres::start().await.unwrap();
    let b = Postgres::start().await.unwrap();
    let (pa, pb) = (a.port() as i32, b.port() as i32);
    // A role for a pool made after a RELOAD, on both servers.
    for pg in [&a, &b] {
        pg.psql("CREATE ROLE later LOGIN").unwrap();
    }
    // The config as a file would give it: each call makes its host lists anew.
    let (a_port, b_port) = (a.port(), b.port());
    let make_config = move || {
        let mut config = common::config_for_port(a_port, PoolMode::Session, 8);
        config.admin_users = vec!["postgres".into()];
        // A host that failed is tried after the others this long (see the restart).
        config.server_login_retry = Duration::from_millis(300);
        let listed = |name: &str, dbname: &str, round_robin: bool| Database {
            name: name.into(),
            dbname: dbname.into(),
            more_hosts: pgopt_proxy::MoreHosts::new(
                vec![("127.0.0.1".into(), b_port)],
                round_robin,
            ),
            ..config.databases[0].clone()
        };
        config.databases = vec![
            listed("spread", "postgres", true),
            listed("failover", "postgres", false),
            listed("missing", "no_such_db", true),
        ];
        config
    };
    let proxy = Proxy::start(make_config()).await.unwrap();
    proxy.handle().set_reloader(move || Ok(make_config()));
    let console = admin(&proxy).await;
    let row = row_of(&console, "DATABASES", "name", "spread").await;
    assert_eq!(row["host"], format!("127.0.0.1,127.0.0.1:{pb}"), "{row:?}");

    // Round robin: each new server connection starts at the next host.
    let ports = ports_of_clients(&proxy, "spread", 4).await;
    assert_eq!(ports, vec![pa, pb, pa, pb]);
    // The other policy stays on the first host while it answers.
    assert_eq!(ports_of_clients(&proxy, "failover", 3).await, vec![pa; 3]);

    // A login refused for a reason of one server's own (28000: its pg_hba.conf, or a
    // role only some servers have) tries the next; the client hears both.
    let e = refusal(&proxy, "ghost", "spread").await;
    let said = e.as_db_error().unwrap().message().to_string();
    assert!(said.contains("\"ghost\" does not exist (28000)"), "{said}");
    for port in [pa, pb] {
        assert!(said.contains(&format!(":{port}/")), "{said}");
    }
    // A database no server has: each is asked (a standby may lag behind), and the
    // client hears 3D000.
    let e = refusal(&proxy, "postgres", "missing").await;
    assert_eq!(code(&e), Some("3D000"), "{e}");
    let said = e.as_db_error().unwrap().message();
    assert!(said.contains("no_such_db"), "{said}");
    for port in [pa, pb] {
        assert!(said.contains(&format!(":{port}/")), "{said}");
    }

    // With the first server down, every client is served by the second, under either
    // policy, and nobody sees an error.
    a.stop();
    assert_eq!(ports_of_clients(&proxy, "spread", 4).await, vec![pb; 4]);
    assert_eq!(ports_of_clients(&proxy, "failover", 3).await, vec![pb; 3]);
    // Back up: round robin uses it again; the failover policy stays where it worked.
    // (Twice as many clients as before: half reuse the idle connections, half need new
    // ones.)
    a.restart().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let ports = ports_of_clients(&proxy, "spread", 8).await;
    assert_eq!(ports.iter().filter(|p| **p == pa).count(), 2, "{ports:?}");
    assert_eq!(ports_of_clients(&proxy, "failover", 6).await, vec![pb; 6]);
    // A RELOAD that leaves the list as it was keeps its turn: a pool made after it
    // (another user's) starts where the others are.
    console.simple_query("RELOAD").await.unwrap();
    let later = connect_as(&proxy, "later", "failover").await.unwrap();
    assert_eq!(whereabouts(&later).await.1, pb);
}

#[tokio::test]
async fn read_write_passes_over_a_standby_in_a_host_list() {
    let primary = Postgres::start().await.unwrap();
    primary
        .psql("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a')")
        .unwrap();
    let standby = Postgres::start_replica(&primary).await.unwrap();
    let (pp, ps) = (primary.port() as i32, standby.port() as i32);
    // A database whose transactions are read-only by default, on either server.
    primary.psql("CREATE DATABASE ro").unwrap();
    primary
        .psql("ALTER DATABASE ro SET default_transaction_read_only = on")
        .unwrap();
    // Replayed on the standby before the proxy starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while standby.connect("ro").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "ro never replayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The standby first, then the primary.
    let on = |name: &str, dbname: &str, more: Vec<(String, u16)>, read_write: bool| Database {
        more_hosts: pgopt_proxy::MoreHosts::new(more, true).with_read_write(read_write),
        ..database(&standby, name, dbname, DatabasePool::default())
    };
    let listed = |name: &str, more, read_write| on(name, "postgres", more, read_write);
    let both = || vec![("127.0.0.1".to_string(), primary.port())];
    let mut config = config_for(&standby, PoolMode::Session, 8);
    // The cache serves transaction-mode pools: one each for `any` and `rw`.
    let in_transaction_mode = |mut db: Database| {
        db.name.push_str("_txn");
        db.pool.mode = Some(PoolMode::Transaction);
        db
    };
    config.databases = vec![
        listed("any", both(), false),
        listed("rw", both(), true),
        listed("rw_standby_alone", Vec::new(), true),
        on("rw_read_only_db", "ro", both(), true),
        in_transaction_mode(listed("any", both(), false)),
        in_transaction_mode(listed("rw", both(), true)),
    ];
    config.admin_users = vec!["postgres".into()];
    config.cache = pgopt_proxy::CacheSettings {
        enabled: true,
        tables: vec!["items".into()],
        ..Default::default()
    };
    let proxy = Proxy::start(config).await.unwrap();
    // Any server will do: round robin reaches both.
    assert_eq!(ports_of_clients(&proxy, "any", 2).await, vec![ps, pp]);
    // Read-write: the standby counts as failed, every connection is the primary's.
    assert_eq!(ports_of_clients(&proxy, "rw", 3).await, vec![pp; 3]);
    // A standby alone is an error that says why.
    let e = refusal(&proxy, "postgres", "rw_standby_alone").await;
    let said = e.as_db_error().unwrap().message();
    assert!(said.contains("takes no writes (a standby)"), "{said}");
    // As libpq: read-only by default is no better, primary or not.
    let e = refusal(&proxy, "postgres", "rw_read_only_db").await;
    let said = e.as_db_error().unwrap().message();
    // The cache: not for a list that may reach a standby (a fill there could be
    // behind), as usual for a read-write one.
    let console = admin(&proxy).await;
    for (db, hits) in [("any_txn", 0), ("rw_txn", 2)] {
        let before = common::counter(&show(&console, "CACHE").await[0], "hits");
        let client = connect_to(&proxy, db).await.unwrap();
        for _ in 0..3 {
            client
                .query_one("SELECT v FROM items WHERE id = 1", &[])
                .await
                .unwrap();
        }
        let after = common::counter(&show(&console, "CACHE").await[0], "hits");
        assert_eq!(after - before, hits, "{db}");
    }
    assert!(
        said.contains(&format!(":{pp}/ro: takes no writes")),
        "{said}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_not_tried_on_every_host() {
    use pgopt_embedded::HostAuth;
    let with_password = || {
        Postgres::builder()
            .password("right", HostAuth::ScramSha256)
            .start()
    };
    let (a, b) = (
        with_password().await.unwrap(),
        with_password().await.unwrap(),
    );
    let mut config = config_for(&a, PoolMode::Transaction, 2);
    config.databases[0].password = Some("wrong".into());
    config.databases[0].more_hosts =
        pgopt_proxy::MoreHosts::new(vec![("127.0.0.1".into(), b.port())], true);
    let proxy = Proxy::start(config).await.unwrap();
    let e = refusal(&proxy, "postgres", "app").await;
    let said = e.as_db_error().unwrap().message();
    assert!(said.contains("(28P01)"), "{said}");
    assert!(!said.contains(&format!(":{}/", b.port())), "{said}");
}

#[tokio::test]
async fn a_host_that_failed_is_tried_after_the_others_for_a_while() {
    let pg = Postgres::start().await.unwrap();
    // A "server" that accepts and never answers: each try costs a connect timeout.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = tries.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    let mut config = config_for(&pg, PoolMode::Session, 8);
    config.admin_users = vec!["postgres".into()];
    config.server_connect_timeout = Duration::from_millis(300);
    config.databases = vec![Database {
        port: hung_port,
        more_hosts: pgopt_proxy::MoreHosts::new(vec![("127.0.0.1".into(), pg.port())], true),
        ..database(&pg, "app", "postgres", DatabasePool::default())
    }];
    let proxy = Proxy::start(config).await.unwrap();
    // Round robin starts every other connection at the hung host: it is tried once,
    // then only after the server that answers.
    let live = pg.port() as i32;
    assert_eq!(ports_of_clients(&proxy, "app", 4).await, vec![live; 4]);
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    // With server_login_retry 0 (SET, as RELOAD applies it) nothing is set aside: of
    // two more connections (six clients, four reuse the idle ones) one starts there.
    let console = admin(&proxy).await;
    console
        .simple_query("SET server_login_retry = 0")
        .await
        .unwrap();
    assert_eq!(ports_of_clients(&proxy, "app", 6).await, vec![live; 6]);
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 2);
}
