//! Replica routing against a real primary and real streaming replicas (`pg_basebackup
//! -R` from `embedded`): where statements land is read from `pg_is_in_recovery()` in
//! their own results.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{admin, code, connect, show, start_with, value};
use pgopt_embedded::Postgres;
use pgopt_proxy::{Config, Proxy, ReadYourWrites, Replica};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Routing with quick health checks, so tests don't wait long for a state change.
fn with_replicas(config: &mut Config, replicas: &[&Postgres]) {
    config.databases[0].replicas = replicas
        .iter()
        .map(|r| Replica {
            host: "127.0.0.1".into(),
            port: r.port(),
            weight: 1,
        })
        .collect();
    config.routing.check_interval = Duration::from_millis(100);
    config.default_pool_size = 8;
}

async fn replica_rows(proxy: &Proxy) -> Vec<HashMap<String, String>> {
    show(&admin(proxy).await, "REPLICAS").await
}

/// Waits (up to 20 s) until every replica row of SHOW REPLICAS is in `state`.
async fn wait_for_state(proxy: &Proxy, state: &str) {
    wait_for(proxy, "replica", state).await
}

/// Waits (up to 20 s) until every `role` row of SHOW REPLICAS is in `state`.
async fn wait_for(proxy: &Proxy, role: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = replica_rows(proxy).await;
        let nodes: Vec<_> = rows.iter().filter(|r| r["role"] == role).collect();
        if !nodes.is_empty() && nodes.iter().all(|r| r["state"] == state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{role} never reached state {state}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A primary with a table `items` and a sequence, one streaming replica that has
/// replayed them, and a proxy that routes to it (replica up).
async fn primary_and_replica(tweak: impl FnOnce(&mut Config)) -> (Postgres, Postgres, Proxy) {
    let primary = Postgres::start().await.unwrap();
    primary
        .psql("CREATE TABLE items (id int PRIMARY KEY, v text); CREATE SEQUENCE s;")
        .unwrap();
    let replica = Postgres::start_replica(&primary).await.unwrap();
    let proxy = start_with(&primary, |c| {
        with_replicas(c, &[&replica]);
        tweak(c);
    })
    .await;
    // The checker starts with the first client's login.
    let client = connect(&proxy, "postgres", None).await.unwrap();
    value(&client, "SELECT 1").await;
    wait_for_state(&proxy, "up").await;
    (primary, replica, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_everything_else_to_the_primary() {
    let (_primary, _replica, proxy) = primary_and_replica(|_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let on_replica = "t";
    let on_primary = "f";

    // Simple and extended protocol reads.
    assert_eq!(
        value(&client, "SELECT pg_is_in_recovery()").await,
        on_replica
    );
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery() FROM (SELECT $1::int) x",
            &[&1i32],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "an extended-protocol read");
    let named = client.prepare("SELECT pg_is_in_recovery()").await.unwrap();
    for _ in 0..3 {
        let row = client.query_one(&named, &[]).await.unwrap();
        assert!(row.get::<_, bool>(0), "a prepared read, run again");
    }

    // Writes, locking reads, side-effecting functions, hints: the primary.
    for (sql, why) in [
        (
            "INSERT INTO items VALUES (1, 'a') RETURNING pg_is_in_recovery()",
            "a write",
        ),
        (
            "SELECT pg_is_in_recovery() FROM items FOR UPDATE",
            "FOR UPDATE",
        ),
        (
            "SELECT pg_is_in_recovery() FROM items FOR SHARE",
            "FOR SHARE",
        ),
        ("SELECT pg_is_in_recovery(), nextval('s')", "nextval"),
        (
            "SELECT pg_is_in_recovery(), pg_advisory_xact_lock(1)",
            "an advisory lock",
        ),
        (
            "/* pgopt:primary */ SELECT pg_is_in_recovery()",
            "the primary hint",
        ),
        (
            "WITH d AS (DELETE FROM items WHERE id = -1 RETURNING 1) SELECT pg_is_in_recovery()",
            "a writable CTE",
        ),
    ] {
        assert_eq!(value(&client, sql).await, on_primary, "{why}: {sql}");
    }
    let row = client
        .query_one("SELECT pg_is_in_recovery(), nextval('s')", &[])
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "nextval over the extended protocol");

    // A read-only transaction may run on a replica as a whole; any other transaction
    // stays on the primary, reads included. (A new client: this one's reads follow its
    // writes to the primary until the replica has replayed them.)
    let mut client = connect(&proxy, "postgres", None).await.unwrap();
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .unwrap();
    let row = tx
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "BEGIN READ ONLY runs on the replica");
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let row = tx
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "a read-write transaction's read");
    tx.commit().await.unwrap();

    // What the parser refuses goes to the primary (whose error the client gets).
    let rows = replica_rows(&proxy).await;
    let writes_before: u64 = rows[0]["writes"].parse().unwrap();
    let e = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(code(&e), Some("42601"));
    let rows = replica_rows(&proxy).await;
    assert_eq!(rows[0]["role"], "primary");
    assert_eq!(
        rows[0]["writes"].parse::<u64>().unwrap(),
        writes_before + 1,
        "the unparsable statement went to the primary: {rows:?}"
    );
    assert!(rows[1]["reads"].parse::<u64>().unwrap() >= 6, "{rows:?}");

    // Query insight counts each shape's calls per server.
    let queries = show(&admin(&proxy).await, "QUERIES").await;
    // A shape by its text after any leading comment (the hinted text shares a
    // fingerprint with the plain one, and which of them a shape shows depends on which
    // came first).
    let shape = |text: &str| {
        queries
            .iter()
            .find(|q| {
                let query = q["query"].as_str();
                let body = query.split_once("*/").map_or(query, |(_, rest)| rest);
                body.trim_start() == text
            })
            .unwrap_or_else(|| panic!("{text} in {queries:?}"))["routed"]
            .clone()
    };
    // On the replica: the simple read, three prepared runs, the read-only transaction;
    // on the primary: the hinted one and the read-write transaction's.
    assert_eq!(shape("SELECT pg_is_in_recovery()"), "primary=2 replica1=5");
    assert!(shape("SELECT pg_is_in_recovery() FROM items FOR UPDATE").starts_with("primary="));

    // The same figures over HTTP and in Prometheus.
    let addr = proxy.admin_addr().unwrap();
    let api = common::http_get(addr, "/api/replicas").await;
    assert!(
        api.contains("\"role\":\"replica\"") && api.contains("\"state\":\"up\""),
        "{api}"
    );
    let metrics = common::http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("pgopt_replica_up{database=\"app\",replica=\"127.0.0.1:"),
        "{metrics}"
    );
    assert!(metrics.contains("pgopt_primary_transactions_total{database=\"app\",kind=\"write\"}"));
    // The replica's pool counts the transactions that ran there.
    let replica_transactions: u64 = metrics
        .lines()
        .find(|l| l.starts_with("pgopt_transactions_total{") && l.contains(",replica=\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(replica_transactions >= 5, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_right_after_a_write_sees_the_write() {
    let (_primary, _replica, proxy) = primary_and_replica(|_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    for i in 0..200 {
        client
            .execute("INSERT INTO items VALUES ($1, 'x')", &[&i])
            .await
            .unwrap();
        let n: i64 = client
            .query_one("SELECT count(*) FROM items WHERE id = $1", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "row {i} read right after its insert");
        // Another client's reads are not held back by this client's writes.
        value(&other, "SELECT 1").await;
    }
    let rows = replica_rows(&proxy).await;
    let replica_reads: u64 = rows[1]["reads"].parse().unwrap();
    assert!(
        replica_reads >= 100,
        "the other client's reads went to the replica: {rows:?}"
    );
    // Once the replica has replayed the writes, the writer's reads go there too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_are_routed_each_on_its_own() {
    let (_primary, _replica, proxy) = primary_and_replica(|_| {}).await;

    // Simple protocol: a read and a write sent together (tokio-postgres pipelines
    // what is in flight at once). The write must not follow the read to the replica.
    // The read is slow, so the write is sure to arrive while it runs.
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let (read, write, read_again) = tokio::join!(
        client.simple_query("SELECT pg_is_in_recovery() FROM pg_sleep(0.2)"),
        client.simple_query("INSERT INTO items VALUES (100, 'p') RETURNING pg_is_in_recovery()"),
        client.simple_query("SELECT count(*) FROM items WHERE id = 100"),
    );
    let first = |r: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>| {
        let messages = r.unwrap_or_else(|e| panic!("{e:?} {:?}", e.as_db_error()));
        messages
            .into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap().to_string()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(first(read), "t", "the first read on the replica");
    assert_eq!(first(write), "f", "the pipelined write on the primary");
    assert_eq!(first(read_again), "1", "the read after it sees the write");

    // Extended protocol, prepared statements: Bind/Execute/Sync batches in flight.
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = client
        .prepare("SELECT pg_is_in_recovery() FROM pg_sleep(0.05)")
        .await
        .unwrap();
    let write = client
        .prepare("INSERT INTO items VALUES ($1, 'p') RETURNING pg_is_in_recovery()")
        .await
        .unwrap();
    for round in 0..5 {
        let id = 200 + round;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let (r, w) = tokio::join!(
            client.query_one(&read, &[]),
            client.query_one(&write, &params)
        );
        let w = w.unwrap_or_else(|e| panic!("round {round}: {e:?} {:?}", e.as_db_error()));
        assert!(
            !w.get::<_, bool>(0),
            "round {round}: the write on the primary"
        );
        r.unwrap();
    }

    // A read-only transaction sent in one go stays together on the replica.
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let (begin, read, commit) = tokio::join!(
        client.simple_query("BEGIN READ ONLY"),
        client.simple_query("SELECT pg_is_in_recovery() FROM pg_sleep(0.1)"),
        client.simple_query("COMMIT"),
    );
    begin.unwrap();
    commit.unwrap();
    assert_eq!(first(read), "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_pipelined_behind_a_read_on_the_primary_holds_reads_back() {
    // Window mode makes the write's effect on routing visible: reads stay on the
    // primary for the window after the client's last write.
    let window = Duration::from_secs(2);
    let (_primary, _replica, proxy) = primary_and_replica(|c| {
        c.routing.read_your_writes = ReadYourWrites::Window;
        c.routing.read_your_writes_window = window;
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    client
        .simple_query("INSERT INTO items VALUES (1, 'w')")
        .await
        .unwrap();
    let first_write = Instant::now();
    tokio::time::sleep(window * 6 / 10).await;
    // Inside the window: the read goes to the primary as a read, the write behind it
    // in the same connection must start a new window.
    let (read, write) = tokio::join!(
        client.simple_query("SELECT pg_is_in_recovery()"),
        client.simple_query("INSERT INTO items VALUES (2, 'w')"),
    );
    read.unwrap();
    write.unwrap();
    let second_write = Instant::now();
    // Past the first write's window, inside the second's.
    tokio::time::sleep(
        (first_write + window + window / 5).saturating_duration_since(Instant::now()),
    )
    .await;
    assert!(
        second_write.elapsed() < window,
        "the test ran too slowly to judge"
    );
    assert_eq!(
        value(&client, "SELECT pg_is_in_recovery()").await,
        "f",
        "the pipelined write kept reads on the primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_mode_keeps_reads_on_the_primary_for_the_window() {
    let (_primary, _replica, proxy) = primary_and_replica(|c| {
        c.routing.read_your_writes = ReadYourWrites::Window;
        c.routing.read_your_writes_window = Duration::from_millis(700);
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");
    client
        .simple_query("INSERT INTO items VALUES (1, 'w')")
        .await
        .unwrap();
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "f");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");
}

/// With replay paused on the replica and `write` run on the primary, the replica is
/// "lagging" (its SHOW REPLICAS row passing `check`) and reads go to the primary;
/// replay resumed, it is back in the rotation.
async fn lag_takes_the_replica_out_until_it_catches_up(
    tweak: impl FnOnce(&mut Config),
    write: &str,
    check: impl Fn(&HashMap<String, String>) -> bool,
) {
    let (primary, replica, proxy) = primary_and_replica(tweak).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    replica.psql("SELECT pg_wal_replay_pause()").unwrap();
    primary.psql(write).unwrap();
    wait_for_state(&proxy, "lagging").await;
    let rows = replica_rows(&proxy).await;
    assert!(check(&rows[1]), "{rows:?}");
    assert_eq!(
        value(&client, "SELECT pg_is_in_recovery()").await,
        "f",
        "reads go to the primary while the only replica lags"
    );
    replica.psql("SELECT pg_wal_replay_resume()").unwrap();
    wait_for_state(&proxy, "up").await;
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");
}

fn field(row: &HashMap<String, String>, key: &str) -> u64 {
    row[key].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_leaves_the_rotation_and_comes_back() {
    lag_takes_the_replica_out_until_it_catches_up(
        |c| c.routing.max_lag_bytes = 64 * 1024,
        "INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g",
        |row| field(row, "lag_bytes") > 64 * 1024,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_by_time_leaves_the_rotation() {
    // Only the time limit can trip: the byte limit is out of reach.
    lag_takes_the_replica_out_until_it_catches_up(
        |c| {
            c.routing.max_lag_bytes = u64::MAX;
            c.routing.max_lag = Duration::from_millis(500);
        },
        "INSERT INTO items VALUES (1, 'x')",
        |row| field(row, "lag_ms") > 500 && field(row, "lag_bytes") < 1024 * 1024,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_under_read_load_fails_no_reads_and_rejoins() {
    let (_primary, mut replica, proxy) = primary_and_replica(|_| {}).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = connect(&proxy, "postgres", None).await.unwrap();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client
                    .query_one("SELECT count(*) FROM items WHERE id > $1", &[&0i32])
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        let db = e.as_db_error();
                        failed.push(format!(
                            "{e}: {:?} {:?}",
                            db.map(|d| d.code().code().to_string()),
                            db.map(|d| d.message().to_string())
                        ));
                        break; // a failed connection ends this client
                    }
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Killed (no clean shutdown) under load, then started again.
    let _replica = tokio::task::spawn_blocking(move || {
        replica.kill();
        std::thread::sleep(Duration::from_millis(500));
        replica.restart().unwrap();
        replica
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total_ok = 0;
    for t in tasks {
        let (ok, failed) = t.await.unwrap();
        assert!(
            failed.is_empty(),
            "reads failed when the replica died: {failed:?}"
        );
        total_ok += ok;
    }
    assert!(total_ok > 0);
    wait_for_state(&proxy, "up").await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");
}

/// A primary and replica, a client whose read ran on the replica, then the primary
/// stopped (returned, so its files stay until the test ends).
async fn primary_stopped_under_a_reader(
    tweak: impl FnOnce(&mut Config),
) -> (Postgres, Postgres, Proxy, Client) {
    let (mut primary, replica, proxy) = primary_and_replica(tweak).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");
    let primary = tokio::task::spawn_blocking(move || {
        primary.stop();
        primary
    })
    .await
    .unwrap();
    (primary, replica, proxy, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_down_reads_go_on_and_writes_fail_at_once() {
    let (primary, _replica, proxy, client) = primary_stopped_under_a_reader(|_| {}).await;

    let started = Instant::now();
    let e = client
        .simple_query("INSERT INTO items VALUES (7, 'x')")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("25006"), "{e:?}");
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(message.contains("primary server is down"), "{message}");
    // Extended protocol too, and the session survives both.
    let e = client
        .execute("INSERT INTO items VALUES ($1, 'x')", &[&8i32])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("25006"), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "writes fail fast"
    );
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // Pipelined: each statement gets its own answer, in order.
    let (w1, r, w2) = tokio::join!(
        client.simple_query("INSERT INTO items VALUES (9, 'x')"),
        client.simple_query("SELECT pg_is_in_recovery()"),
        client.simple_query("INSERT INTO items VALUES (10, 'x')"),
    );
    assert_eq!(code(&w1.unwrap_err()), Some("25006"));
    assert_eq!(code(&w2.unwrap_err()), Some("25006"));
    assert!(r
        .unwrap()
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some("t"))));
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");

    // New clients log in and read.
    let fresh = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&fresh, "SELECT pg_is_in_recovery()").await, "t");
    wait_for(&proxy, "primary", "down").await;
    drop(primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_before_its_sync_leaves_no_skipping_once_the_primary_is_down() {
    // A refused Parse (a session feature) leaves the rest of its batch unrun up to its
    // Sync. When that Sync comes after the primary went down, it gets pgopt's own
    // ReadyForQuery, and the next batch, a read, still runs on the replica.
    use tokio::io::AsyncWriteExt;
    let (mut primary, _replica, proxy) = primary_and_replica(|_| {}).await;
    let mut raw = common::raw_login(&proxy).await;
    raw.write_all(&common::run_unnamed("LISTEN somewhere", b'H'))
        .await
        .unwrap();
    assert_eq!(common::read_until(&mut raw, b'E').await, b"E");
    let primary = tokio::task::spawn_blocking(move || {
        primary.stop();
        primary
    })
    .await
    .unwrap();
    wait_for(&proxy, "primary", "down").await;
    // The rest of the batch: a Bind and Execute of the statement that was refused.
    let mut rest = common::message(b'B', b"\0\0\0\0\0\0\0\0");
    rest.extend(common::message(b'E', b"\0\0\0\0\0"));
    rest.extend(common::message(b'S', b""));
    raw.write_all(&rest).await.unwrap();
    assert_eq!(common::read_until(&mut raw, b'Z').await, b"Z");
    raw.write_all(&common::message(b'Q', b"SELECT pg_is_in_recovery()\0"))
        .await
        .unwrap();
    assert_eq!(
        common::read_until(&mut raw, b'Z').await,
        b"TDCZ",
        "the read after the refused batch"
    );
    drop(primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_added_by_reload_take_new_reads_and_session_mode_stays_on_the_primary() {
    let primary = Postgres::start().await.unwrap();
    let replica = Postgres::start_replica(&primary).await.unwrap();
    let mut config = common::config_for(&primary, pgopt_proxy::PoolMode::Transaction, 4);
    config.admin_users = vec!["postgres".into()];
    let proxy = Proxy::start(config.clone()).await.unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "f");

    with_replicas(&mut config, &[&replica]);
    proxy.handle().apply(config.clone()).unwrap();
    let fresh = connect(&proxy, "postgres", None).await.unwrap();
    value(&fresh, "SELECT 1").await;
    wait_for_state(&proxy, "up").await;
    assert_eq!(value(&fresh, "SELECT pg_is_in_recovery()").await, "t");
    // A client connected before reads there too.
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");

    // Session mode: a session's state lives on one server, the primary.
    config.pool_mode = pgopt_proxy::PoolMode::Session;
    proxy.handle().apply(config).unwrap();
    let session = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&session, "SELECT pg_is_in_recovery()").await, "f");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_dying_after_rows_were_sent_gives_the_client_a_proper_error() {
    let (_primary, replica, proxy) = primary_and_replica(|_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    // Rows first (more than PostgreSQL's 8 kB output buffer, so they are sent), then a
    // long wait during which the replica dies.
    let sql = "SELECT x, pg_is_in_recovery() FROM (SELECT g AS x FROM generate_series(1, 20000) g \
               UNION ALL SELECT 0 FROM pg_sleep(30)) s";
    let stream = client
        .query_raw(sql, std::iter::empty::<i32>())
        .await
        .unwrap();
    tokio::pin!(stream);
    use futures_util::StreamExt;
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.get::<_, bool>(1), "the read runs on the replica");
    let mut replica = replica;
    let replica = tokio::task::spawn_blocking(move || {
        replica.kill();
        replica
    });
    let started = Instant::now();
    let error = loop {
        match stream.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error"),
        }
    };
    assert!(started.elapsed() < Duration::from_secs(10));
    let code = code(&error).map(str::to_string);
    assert!(
        matches!(code.as_deref(), Some("08006" | "57P01")),
        "{error:?}"
    );
    drop(replica.await.unwrap());
    // The client's connection is gone; a new one reads from the primary meanwhile.
    let fresh = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&fresh, "SELECT pg_is_in_recovery()").await, "f");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reads_when_primary_down_off_reads_fail_with_the_primary() {
    let (primary, _replica, proxy, client) = primary_stopped_under_a_reader(|c| {
        c.routing.reads_when_primary_down = false;
    })
    .await;
    wait_for(&proxy, "primary", "down").await;
    let e = client
        .simple_query("SELECT pg_is_in_recovery()")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("08006"), "{e:?}");
    // A new client logs in on the pool's known parameters, as with PgBouncer, and
    // its first read fails the same way.
    let fresh = connect(&proxy, "postgres", None).await.unwrap();
    let e = fresh.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), Some("08006"), "{e:?}");
    drop(primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_not_in_recovery_is_kept_out_of_the_rotation() {
    // The "replica" is a second, independent primary: pg_is_in_recovery() is false.
    let primary = Postgres::start().await.unwrap();
    let other = Postgres::start().await.unwrap();
    let proxy = start_with(&primary, |c| with_replicas(c, &[&other])).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    value(&client, "SELECT 1").await;
    wait_for_state(&proxy, "not_in_recovery").await;
    for _ in 0..5 {
        assert_eq!(
            value(&client, "SELECT current_setting('port')").await,
            primary.port().to_string()
        );
    }
}

/// `(reads, failovers)` of each replica row of SHOW REPLICAS, and the primary's reads.
async fn read_counts(proxy: &Proxy) -> (Vec<(u64, u64)>, u64) {
    let rows = replica_rows(proxy).await;
    let replicas = rows
        .iter()
        .filter(|r| r["role"] == "replica")
        .map(|r| (field(r, "reads"), field(r, "failovers")))
        .collect();
    let primary = rows.iter().find(|r| r["role"] == "primary").unwrap();
    (replicas, field(primary, "reads"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_reads_and_one_dying_fails_over_to_the_other() {
    let primary = Postgres::start().await.unwrap();
    primary
        .psql("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .unwrap();
    let first = Postgres::start_replica(&primary).await.unwrap();
    let second = Postgres::start_replica(&primary).await.unwrap();
    let proxy = start_with(&primary, |c| with_replicas(c, &[&first, &second])).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    value(&client, "SELECT 1").await;
    wait_for_state(&proxy, "up").await;

    // Eight clients whose reads take 200 ms: least-outstanding keeps about four on
    // each replica at any moment.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = connect(&proxy, "postgres", None).await.unwrap();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let read = client
                    .query_one(
                        "SELECT pg_is_in_recovery() FROM pg_sleep(0.2) WHERE $1 > 0",
                        &[&1i32],
                    )
                    .await;
                match read {
                    Ok(row) => assert!(row.get::<_, bool>(0), "a read left the replicas"),
                    Err(e) => {
                        failed.push(format!("{e} {:?}", code(&e)));
                        break;
                    }
                }
            }
            failed
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // (The first login's SELECT 1 ran on the primary, before any replica was up.)
    let (before, primary_before) = read_counts(&proxy).await;
    assert!(
        before.iter().all(|&(reads, _)| reads > 0),
        "both replicas take reads: {before:?}"
    );
    let mut first = first;
    let first = tokio::task::spawn_blocking(move || {
        first.kill();
        first
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let failed = t.await.unwrap();
        assert!(failed.is_empty(), "reads failed: {failed:?}");
    }
    let (after, primary_reads) = read_counts(&proxy).await;
    assert!(
        after[0].1 > 0,
        "reads in flight on the dead replica ran again: {after:?}"
    );
    assert!(after[1].0 > before[1].0, "{before:?} {after:?}");
    assert_eq!(
        primary_reads, primary_before,
        "the retries went to the other replica"
    );
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_functions_run_on_a_replica_only_when_listed_as_safe() {
    let primary = Postgres::start().await.unwrap();
    primary
        .psql(
            "CREATE FUNCTION listed() RETURNS bool LANGUAGE sql AS 'SELECT pg_is_in_recovery()';
             CREATE FUNCTION unlisted() RETURNS bool LANGUAGE sql AS 'SELECT pg_is_in_recovery()';",
        )
        .unwrap();
    let replica = Postgres::start_replica(&primary).await.unwrap();
    let proxy = start_with(&primary, |c| {
        with_replicas(c, &[&replica]);
        // As the SQL writes the name: `public.listed` would not cover `listed()`,
        // which search_path could resolve to another schema.
        c.routing.safe_functions = vec!["listed".into()];
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    value(&client, "SELECT 1").await;
    wait_for_state(&proxy, "up").await;
    assert_eq!(value(&client, "SELECT listed()").await, "t");
    assert_eq!(value(&client, "SELECT unlisted()").await, "f");
    let row = client
        .query_one("SELECT listed(), unlisted() WHERE $1 > 0", &[&1i32])
        .await
        .unwrap();
    assert!(
        !row.get::<_, bool>(0),
        "one unlisted function keeps it on the primary"
    );
}

/// A proxy in transaction mode (its config, to change and apply again) routing to
/// `replicas`, up, and a client that has logged in.
async fn reloadable(
    primary: &Postgres,
    replicas: &[&Postgres],
    tweak: impl FnOnce(&mut Config),
) -> (Config, Proxy, Client) {
    let mut config = common::config_for(primary, pgopt_proxy::PoolMode::Transaction, 4);
    config.admin_users = vec!["postgres".into()];
    with_replicas(&mut config, replicas);
    tweak(&mut config);
    let proxy = Proxy::start(config.clone()).await.unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    value(&client, "SELECT 1").await;
    wait_for_state(&proxy, "up").await;
    (config, proxy, client)
}

/// A replica a RELOAD takes out of the database's list is not read from again by
/// clients connected before it (their reads go to the primary), and they stay
/// connected: the primary did not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_removed_by_reload_is_not_read_from_by_clients_connected_before() {
    let primary = Postgres::start().await.unwrap();
    let replica = Postgres::start_replica(&primary).await.unwrap();
    let (mut config, proxy, client) = reloadable(&primary, &[&replica], |_| {}).await;
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");
    config.databases[0].replicas.clear();
    proxy.handle().apply(config).unwrap();
    for _ in 0..3 {
        assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "f");
    }
}

/// `X/Y` (a WAL position as PostgreSQL shows it) as one number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A RELOAD that moves the primary to another server and keeps the replica list: the
/// health checker reads the new primary's WAL position, not the old one's through the
/// connection it kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_follows_a_primary_a_reload_moved() {
    let primary = Postgres::start().await.unwrap();
    // Far ahead of a new server's WAL position.
    primary
        .psql(
            "CREATE TABLE big AS SELECT g, repeat('x', 200) AS v FROM generate_series(1, 100000) g",
        )
        .unwrap();
    let replica = Postgres::start_replica(&primary).await.unwrap();
    let other = Postgres::start().await.unwrap();
    let (mut config, proxy, client) = reloadable(&primary, &[&replica], |_| {}).await;
    config.databases[0].port = other.port();
    proxy.handle().apply(config).unwrap();
    // The client moves to the new primary's pool, which the checker then logs in with.
    value(&client, "SELECT 1").await;
    let direct = other.connect("postgres").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = replica_rows(&proxy).await;
        let shown = rows.iter().find(|r| r["role"] == "primary").unwrap()["replay_lsn"].clone();
        let now = value(&direct, "SELECT pg_current_wal_lsn()::text").await;
        if lsn(&shown) <= lsn(&now) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the checker still reads the old primary: {shown} against {now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A RELOAD that adds a replica, and gives one still listed a new weight, keeps what
/// is known of the ones still listed: reads go on to a replica at once, not to the
/// primary until the new list is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_still_listed_after_a_reload_take_reads_at_once() {
    let primary = Postgres::start().await.unwrap();
    let first = Postgres::start_replica(&primary).await.unwrap();
    let second = Postgres::start_replica(&primary).await.unwrap();
    // Checks far apart: a read right after the RELOAD comes before the next one.
    let slow = |c: &mut Config| c.routing.check_interval = Duration::from_secs(30);
    let (mut config, proxy, client) = reloadable(&primary, &[&first], slow).await;
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");
    with_replicas(&mut config, &[&first, &second]);
    config.routing.check_interval = Duration::from_secs(30);
    // A new weight for the one still listed keeps what is known of it too.
    config.databases[0].replicas[0].weight = 3;
    proxy.handle().apply(config).unwrap();
    assert_eq!(value(&client, "SELECT pg_is_in_recovery()").await, "t");
}

/// A client whose transactions are SERIALIZABLE by default (a start-up value, SET,
/// SET SESSION CHARACTERISTICS or set_config) reads on the primary, as one that
/// begins `ISOLATION LEVEL SERIALIZABLE` does: a replica refuses such a transaction.
/// Before, every read of such a client failed with 0A000 ("cannot use serializable
/// mode in a hot standby").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_serializable_by_default_reads_on_the_primary() {
    let (_primary, _replica, proxy) = primary_and_replica(|_| {}).await;
    let recovery = "SELECT pg_is_in_recovery()";
    let plain = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(
        value(&plain, recovery).await,
        "t",
        "reads go to the replica"
    );
    let (started, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.local_addr().port())
        .user("postgres")
        .dbname("app")
        .options("-c default_transaction_isolation=serializable")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(value(&started, recovery).await, "f");
    assert_eq!(
        value(&started, "SHOW transaction_isolation").await,
        "serializable"
    );
    for set in [
        "SET default_transaction_isolation = 'serializable'",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SELECT set_config('default_transaction_isolation', 'serializable', false)",
    ] {
        let client = connect(&proxy, "postgres", None).await.unwrap();
        client.batch_execute(set).await.unwrap();
        assert_eq!(value(&client, recovery).await, "f", "{set}");
        assert_eq!(
            value(&client, "SELECT count(*) FROM items").await,
            "0",
            "{set}"
        );
        client
            .batch_execute("SET default_transaction_isolation = 'read committed'")
            .await
            .unwrap();
        assert_eq!(value(&client, recovery).await, "t", "{set}, then back");
    }
}

/// Sessions the server itself makes SERIALIZABLE by default (`ALTER ROLE … SET
/// default_transaction_isolation`, which the replica has too, as a catalog row) read
/// on the primary: pgopt reads each server connection's default isolation at login.
/// Before, every read of such a user went to the replica and failed with 0A000
/// ("cannot use serializable mode in a hot standby"). A client that sets another
/// isolation for itself reads on the replica again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_serializable_by_the_servers_default_read_on_the_primary() {
    let (primary, replica, proxy) = primary_and_replica(|_| {}).await;
    primary
        .psql(
            "CREATE ROLE reader LOGIN; GRANT SELECT ON items TO reader; \
             ALTER ROLE reader SET default_transaction_isolation = 'serializable'",
        )
        .unwrap();
    let direct = common::client_at("127.0.0.1", replica.port(), "postgres", "postgres", None)
        .await
        .unwrap();
    let replayed = "SELECT count(*) FROM pg_db_role_setting s \
                    JOIN pg_roles r ON r.oid = s.setrole WHERE rolname = 'reader'";
    let deadline = Instant::now() + Duration::from_secs(20);
    while value(&direct, replayed).await != "1" {
        assert!(
            Instant::now() < deadline,
            "the replica never replayed the role"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovery = "SELECT pg_is_in_recovery()";
    // The routing checker logs in with the newest client's login: once its
    // connection to the replica is gone, it checks as the reader.
    let first = connect(&proxy, "reader", None).await.unwrap();
    assert_eq!(value(&first, recovery).await, "f");
    value(
        &direct,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'pgopt' AND usename = 'postgres'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let reader = connect(&proxy, "reader", None).await.unwrap();
        assert_eq!(value(&reader, recovery).await, "f");
        assert_eq!(value(&reader, "SELECT count(*) FROM items").await, "0");
        assert_eq!(
            value(&reader, "SHOW transaction_isolation").await,
            "serializable"
        );
        reader
            .batch_execute("SET default_transaction_isolation = 'read committed'")
            .await
            .unwrap();
        // (Once the replica has replayed what the primary had when the SET ran there:
        // read-your-writes.)
        let deadline = Instant::now() + Duration::from_secs(10);
        while value(&reader, recovery).await != "t" {
            assert!(
                Instant::now() < deadline,
                "its own isolation: still on the primary {:?}",
                replica_rows(&proxy).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(value(&reader, "SELECT count(*) FROM items").await, "0");
        reader
            .batch_execute("RESET default_transaction_isolation")
            .await
            .unwrap();
        assert_eq!(value(&reader, recovery).await, "f", "the role's again");
    }
    // Other users still read on the replica.
    let plain = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&plain, recovery).await, "t");
    let rows = replica_rows(&proxy).await;
    assert!(rows.iter().all(|r| r["state"] == "up"), "{rows:?}");

    // The primary's own config (not replicated): its sessions are SERIALIZABLE, the
    // replica's are not. A client gets the primary's transactions, as it would
    // connecting there.
    primary
        .psql("CREATE ROLE third LOGIN; GRANT SELECT ON items TO third")
        .unwrap();
    primary
        .psql("ALTER SYSTEM SET default_transaction_isolation = 'serializable'")
        .unwrap();
    primary.psql("SELECT pg_reload_conf()").unwrap();
    let third = connect(&proxy, "third", None).await.unwrap();
    assert_eq!(value(&third, recovery).await, "f");
    assert_eq!(
        value(&third, "SHOW transaction_isolation").await,
        "serializable"
    );
}

/// Sends `signal` (`-STOP`, `-CONT`) to `pg`'s postmaster and every process it forked.
fn signal_all(pg: &Postgres, signal: &str) {
    let pid = pg.pid().expect("the server runs").to_string();
    let _ = std::process::Command::new("pkill")
        .args([signal, "-P", &pid])
        .status();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A replica that stops answering (frozen: every process of it stopped, its sockets
/// open) leaves the rotation once its check has gone unanswered for a second, and
/// holds up no other node's checks: another replica that falls behind leaves the
/// rotation in about `max_lag`. Before, each round waited for the frozen one's check
/// to time out (15 s here), which kept it and the other in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_holds_up_no_other_nodes_checks() {
    let primary = Postgres::start().await.unwrap();
    primary.psql("CREATE TABLE items (id int)").unwrap();
    let frozen = Postgres::start_replica(&primary).await.unwrap();
    let lagging = Postgres::start_replica(&primary).await.unwrap();
    let proxy = start_with(&primary, |c| {
        with_replicas(c, &[&frozen, &lagging]);
        c.routing.max_lag = Duration::from_secs(1);
        c.server_connect_timeout = Duration::from_secs(15);
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    value(&client, "SELECT 1").await;
    wait_for_state(&proxy, "up").await;
    signal_all(&frozen, "-STOP");
    lagging.psql("SELECT pg_wal_replay_pause()").unwrap();
    primary.psql("INSERT INTO items VALUES (1)").unwrap();
    let state = |rows: &[HashMap<String, String>], pg: &Postgres| {
        let port = pg.port().to_string();
        let row = rows.iter().find(|r| r["port"] == port);
        row.map(|r| r["state"].clone()).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let result = loop {
        let rows = replica_rows(&proxy).await;
        if state(&rows, &lagging) == "lagging" && state(&rows, &frozen) == "down" {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(rows);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    signal_all(&frozen, "-CONT");
    lagging.psql("SELECT pg_wal_replay_resume()").unwrap();
    result.unwrap_or_else(|rows| panic!("the replicas stayed in: {rows:?}"));
}

/// A RELOAD that changes only a replica's weight (or the list) keeps the primary's
/// counts of transactions: counters never go back. Before, they restarted at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primarys_counts_go_on_across_a_reload_of_the_replicas() {
    let primary = Postgres::start().await.unwrap();
    primary.psql("CREATE TABLE items (id int)").unwrap();
    let replica = Postgres::start_replica(&primary).await.unwrap();
    let mut config = common::config_for(&primary, pgopt_proxy::PoolMode::Transaction, 4);
    config.admin_users = vec!["postgres".into()];
    with_replicas(&mut config, &[&replica]);
    let proxy = Proxy::start(config.clone()).await.unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    value(&client, "SELECT 1").await;
    wait_for_state(&proxy, "up").await;
    for i in 0..3 {
        client
            .batch_execute(&format!("INSERT INTO items VALUES ({i})"))
            .await
            .unwrap();
    }
    let writes = async || -> u64 {
        let rows = replica_rows(&proxy).await;
        let primary = rows.iter().find(|r| r["role"] == "primary").unwrap();
        primary["writes"].parse().unwrap()
    };
    let before = writes().await;
    assert!(before >= 3, "{before}");
    config.databases[0].replicas[0].weight = 2;
    proxy.handle().apply(config).unwrap();
    assert!(writes().await >= before);
}

/// SHOW POOLS counts a client once: in the replica's row while it waits for, or holds,
/// one of the replica's connections, else in its own pool's; and each row's maxwait is
/// that node's. Before, a client waiting for a replica counted as active on the
/// primary's row too (14 clients for 8), and every row had the same maxwait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_counts_clients_of_replicas_once() {
    let (_primary, _replica, proxy) = primary_and_replica(|c| c.default_pool_size = 2).await;
    let port = proxy.local_addr().port();
    let mut sleepers = Vec::new();
    for _ in 0..8 {
        sleepers.push(tokio::spawn(async move {
            let client = common::connect_port(port, "postgres").await.unwrap();
            value(&client, "SELECT pg_sleep(1)").await;
        }));
    }
    let admin = admin(&proxy).await;
    let of = |row: &HashMap<String, String>, column: &str| -> u64 { row[column].parse().unwrap() };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pools = show(&admin, "POOLS").await;
        let app: Vec<_> = pools.iter().filter(|r| r["database"] == "app").collect();
        let replica = app.iter().find(|r| r["node"] != "primary");
        if let Some(replica) = replica.filter(|r| of(r, "cl_waiting") == 6) {
            let total: u64 = app
                .iter()
                .map(|r| of(r, "cl_active") + of(r, "cl_waiting"))
                .sum();
            assert_eq!(total, 8, "{pools:?}");
            assert_eq!(of(replica, "cl_active"), 2, "{pools:?}");
            // Each node's longest wait is its own.
            let primary = app.iter().find(|r| r["node"] == "primary").unwrap();
            assert_eq!(
                of(primary, "maxwait") + of(primary, "maxwait_us"),
                0,
                "{pools:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{pools:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for sleeper in sleepers {
        sleeper.await.unwrap();
    }
}
