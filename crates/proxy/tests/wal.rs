//! The logical replication listener against a real PostgreSQL (wal_level = logical):
//! writes made directly on the server — and what their triggers and foreign-key
//! cascades change — arrive as committed table sets, in commit order; a rolled-back
//! transaction sends nothing.

use std::time::Duration;

use pgopt_embedded::Postgres;
use pgopt_proxy::wal::{emit_probe, ensure_publication, listen, Heard, WalEvent, WalSource};
use tokio::sync::mpsc;

/// The next event within 10 s.
async fn event(rx: &mut mpsc::Receiver<WalEvent>) -> WalEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("the listener is running")
}

/// The next commit's tables.
async fn next(rx: &mut mpsc::Receiver<WalEvent>) -> Vec<String> {
    match event(rx).await {
        WalEvent::Committed(committed) => committed.tables,
        other => panic!("{other:?} instead of a commit"),
    }
}

/// The server's `postgres` database, as the superuser.
fn source_for(pg: &Postgres) -> WalSource {
    WalSource {
        host: "127.0.0.1".into(),
        port: pg.port(),
        dbname: "postgres".into(),
        user: "postgres".into(),
        password: pg.password().map(str::to_string),
        connect_timeout: Duration::from_secs(5),
        keepalive: None,
        more_hosts: Default::default(),
        tls: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_arrive_with_every_table_they_touched() {
    let pg = Postgres::builder()
        .setting("wal_level", "logical")
        .start()
        .await
        .unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE CASCADE);
             CREATE TABLE items (id int PRIMARY KEY, v text);
             CREATE TABLE audit (id serial PRIMARY KEY, at timestamptz DEFAULT now(), what text);
             CREATE FUNCTION log_item() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO audit (what) VALUES ('item ' || NEW.id); RETURN NEW; END $$;
             CREATE TRIGGER items_audit AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION log_item();
             INSERT INTO parent VALUES (1), (2);
             INSERT INTO child VALUES (10, 1), (20, 2);",
        )
        .await
        .unwrap();
    let source = source_for(&pg);
    ensure_publication(&source, "pgopt").await.unwrap();
    ensure_publication(&source, "pgopt").await.unwrap(); // again: already there
    let (tx, mut rx) = mpsc::channel(16);
    let prober = source.clone();
    let listener = tokio::spawn(async move {
        listen(&source, "pgopt", "pgopt_test", true, &Heard::default(), tx).await
    });
    // The stream starts with the marker written after the slot's start, which comes
    // back in the stream; others' messages with another prefix do not.
    let WalEvent::Started {
        marker: Some((marker, at)),
        probes: true,
        server,
    } = event(&mut rx).await
    else {
        panic!("no start marker first");
    };
    assert_eq!(marker, "pgopt\npgopt_test");
    assert_eq!(event(&mut rx).await, WalEvent::Marker(marker, at));
    // Changes count from the slot's creation: wait until it streams.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let active: bool = direct
            .query_one(
                "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'pgopt_test'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if active {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never became active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A trigger's write arrives with the statement's.
    direct
        .batch_execute(
            "SELECT pg_logical_emit_message(false, 'other', 'x'); \
             INSERT INTO items VALUES (1, 'a')",
        )
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, ["public.audit", "public.items"]);
    // The listener's own probes come back with their number; another slot's do not.
    let mut conn = None;
    emit_probe(&prober, &mut conn, &server, "pgopt_other", 1)
        .await
        .unwrap();
    emit_probe(&prober, &mut conn, &server, "pgopt_test", 7)
        .await
        .unwrap();
    assert_eq!(event(&mut rx).await, WalEvent::Probe(7));
    // A probe connection that reaches another server than the stream's writes nothing.
    let mut elsewhere = None;
    let refused = emit_probe(&prober, &mut elsewhere, "192.0.2.1:5432", "pgopt_test", 8)
        .await
        .unwrap_err();
    assert!(refused.contains("not the stream's server"), "{refused}");
    assert!(elsewhere.is_none());
    // A rolled-back transaction sends nothing; the next commit comes next.
    direct
        .batch_execute("BEGIN; UPDATE items SET v = 'rolled back'; ROLLBACK;")
        .await
        .unwrap();
    // A cascade's deletes arrive with the parent's.
    direct
        .execute("DELETE FROM parent WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, ["public.child", "public.parent"]);
    // TRUNCATE, and a write in a function called by a SELECT.
    direct
        .batch_execute("TRUNCATE items CASCADE")
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, ["public.items"]);
    direct
        .batch_execute(
            "CREATE FUNCTION touch() RETURNS int LANGUAGE sql AS $$ UPDATE parent SET id = id RETURNING 1 $$;
             SELECT touch();",
        )
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, ["public.parent"]);

    drop(rx);
    let ended = tokio::time::timeout(Duration::from_secs(15), listener).await;
    assert!(ended.is_ok(), "the listener stops when nobody listens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_publication_that_would_block_updates_on_tables_without_replica_identity() {
    let pg = Postgres::start().await.unwrap();
    pg.psql("CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE nokey (v int);")
        .unwrap();
    let source = source_for(&pg);
    let e = ensure_publication(&source, "pgopt").await.unwrap_err();
    assert!(e.to_string().contains("nokey"), "{e}");
    assert!(!e.to_string().contains("keyed,"), "{e}");
    // Updates still work: nothing was created.
    pg.psql("INSERT INTO nokey VALUES (1); UPDATE nokey SET v = 2")
        .unwrap();
    pg.psql("ALTER TABLE nokey REPLICA IDENTITY FULL").unwrap();
    ensure_publication(&source, "pgopt").await.unwrap();
    pg.psql("UPDATE nokey SET v = 3").unwrap();
}

/// A fast shutdown of the server ends while the listener streams: the listener
/// confirms, from the keepalives, the WAL it had nothing to hear of (a checkpoint's,
/// another database's), which a walsender waits for before it stops. Before, only the
/// last commit's end was confirmed, and PostgreSQL stayed "shutting down", refusing
/// every connection, until pgopt went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_shuts_down_while_the_listener_streams() {
    let mut pg = Postgres::builder()
        .setting("wal_level", "logical")
        .start()
        .await
        .unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    direct.batch_execute("CREATE DATABASE other").await.unwrap();
    let source = source_for(&pg);
    ensure_publication(&source, "pgopt").await.unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let listener = tokio::spawn(async move {
        listen(&source, "pgopt", "pgopt_stop", true, &Heard::default(), tx).await
    });
    assert!(matches!(event(&mut rx).await, WalEvent::Started { .. }));
    assert!(matches!(event(&mut rx).await, WalEvent::Marker(..)));
    direct
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, ["public.items"]);
    // WAL past the last commit it hears of.
    let other = pg.connect("other").await.unwrap();
    other
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1); CHECKPOINT")
        .await
        .unwrap();
    drop((direct, other));
    // (Status updates go every few seconds, and on the walsender's request.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    // The listener hears that its stream ended.
    let ended = tokio::time::timeout(Duration::from_secs(10), listener).await;
    assert!(matches!(ended, Ok(Ok(Err(_)))), "{ended:?}");
    drop(pg);
}

/// Instances starting together each make sure the publication exists: none fails
/// because another created it between its check and its CREATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_creating_the_publication_at_once_all_succeed() {
    let pg = Postgres::builder()
        .setting("wal_level", "logical")
        .start()
        .await
        .unwrap();
    let source = source_for(&pg);
    let direct = pg.connect("postgres").await.unwrap();
    for round in 0..30 {
        let name = format!("pgopt_race_{round}");
        let racers: Vec<_> = (0..16)
            .map(|_| {
                let (source, name) = (source.clone(), name.clone());
                tokio::spawn(async move { ensure_publication(&source, &name).await })
            })
            .collect();
        for racer in racers {
            racer.await.unwrap().unwrap();
        }
        let made: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_publication WHERE pubname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(made, 1);
    }
}
