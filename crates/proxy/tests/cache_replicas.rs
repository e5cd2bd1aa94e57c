//! The result cache with replica routing, against a real primary and a real streaming
//! replica: a miss runs on the replica, and its result is stored only when the replica
//! had every write its table versions reflect. Replay is paused on the replica to make
//! it lag; what reads return shows whether a stale result was stored. With Redis, the
//! writes counted include other pgopt instances'.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{admin, connect, counter, show, start_with, value, wait_for_cache};
use pgopt_embedded::{Postgres, Redis};
use pgopt_proxy::{CacheSettings, Proxy, RedisConfig, Replica};

async fn cache_row(proxy: &Proxy) -> HashMap<String, String> {
    show(&admin(proxy).await, "CACHE").await.remove(0)
}

/// SHOW REPLICAS's row of the (only) replica.
async fn replica_row(proxy: &Proxy) -> HashMap<String, String> {
    show(&admin(proxy).await, "REPLICAS")
        .await
        .into_iter()
        .find(|r| r["role"] == "replica")
        .expect("a replica row")
}

/// Waits (up to 20 s) until the replica's SHOW REPLICAS row passes `ok`.
async fn wait_for_replica(
    proxy: &Proxy,
    what: &str,
    ok: impl Fn(&HashMap<String, String>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = replica_row(proxy).await;
        if ok(&row) {
            return;
        }
        assert!(Instant::now() < deadline, "replica never {what}: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A primary with `items` (cached), one streaming replica that stays in the rotation
/// however far behind it is (so a lagging replica still serves reads), and a proxy
/// with the cache on.
async fn primary_replica_and_cache() -> (Postgres, Postgres, Proxy) {
    primary_replica_and_cache_with(false).await
}

/// [`primary_replica_and_cache`], with the cache's replication listener on when
/// `wal_listener` (its stream is running on return).
async fn primary_replica_and_cache_with(wal_listener: bool) -> (Postgres, Postgres, Proxy) {
    let mut builder = Postgres::builder();
    if wal_listener {
        builder = builder.setting("wal_level", "logical");
    }
    let primary = builder.start().await.unwrap();
    primary
        .psql(
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'old');",
        )
        .unwrap();
    let replica = Postgres::start_replica(&primary).await.unwrap();
    let proxy = cached_proxy(&primary, &replica, wal_listener, None).await;
    (primary, replica, proxy)
}

/// A proxy caching `items` of `primary`, reading from `replica` however far behind it
/// is, sharing `redis` when given (its replica is up on return, and the listener's
/// stream and Redis too when asked for).
async fn cached_proxy(
    primary: &Postgres,
    replica: &Postgres,
    wal_listener: bool,
    redis: Option<&Redis>,
) -> Proxy {
    let proxy = start_with(primary, |c| {
        c.databases[0].replicas = vec![Replica {
            host: "127.0.0.1".into(),
            port: replica.port(),
            weight: 1,
        }];
        c.routing.check_interval = Duration::from_millis(100);
        c.routing.max_lag_bytes = u64::MAX;
        c.routing.max_lag = Duration::from_secs(3600);
        c.default_pool_size = 8;
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            wal_listener,
            redis: redis.map(|redis| RedisConfig {
                url: redis.url(),
                hmac_key: Some(b"test key".to_vec()),
                timeout: Duration::from_millis(500),
                ..RedisConfig::default()
            }),
            ..CacheSettings::default()
        };
    })
    .await;
    // The checker starts with the first client's login.
    let client = connect(&proxy, "postgres", None).await.unwrap();
    value(&client, "SELECT 1").await;
    wait_for_replica(&proxy, "up", |r| r["state"] == "up").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while wal_listener && cache_row(&proxy).await["wal"] != "streaming" {
        assert!(Instant::now() < deadline, "{:?}", cache_row(&proxy).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if redis.is_some() {
        wait_for_cache(&proxy, "redis up", |r| r["redis"] == "up").await;
    }
    proxy
}

/// A primary with `items`, a streaming replica, a Redis and `n` proxies sharing it.
async fn replica_and_redis(n: usize) -> (Postgres, Postgres, Redis, Vec<Proxy>) {
    let primary = Postgres::start().await.unwrap();
    primary
        .psql(
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'old');",
        )
        .unwrap();
    let replica = Postgres::start_replica(&primary).await.unwrap();
    let redis = Redis::start().await.unwrap();
    let mut proxies = Vec::new();
    for _ in 0..n {
        proxies.push(cached_proxy(&primary, &replica, false, Some(&redis)).await);
    }
    (primary, replica, redis, proxies)
}

/// Reads `READ` through `client` of `proxy` until a fill of it is stored (the first
/// fills of a table may not be: its versions in Redis are not known delivered yet),
/// up to 10 s. Returns what it read.
async fn read_until_stored(proxy: &Proxy, client: &tokio_postgres::Client) -> String {
    let stored = counter(&cache_row(proxy).await, "stored");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = value(client, READ).await;
        let row = cache_row(proxy).await;
        if counter(&row, "stored") > stored {
            return v;
        }
        assert!(Instant::now() < deadline, "never stored: {row:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A WAL position in PostgreSQL's text form (`16/B374D848`).
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("an LSN: {text:?}"));
    let part = |p: &str| u64::from_str_radix(p, 16).unwrap_or_else(|_| panic!("an LSN: {text:?}"));
    (part(hi) << 32) | part(lo)
}

const READ: &str = "SELECT v FROM items WHERE id = 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_from_a_replica_is_served_from_the_cache() {
    let (_primary, _replica, proxy) = primary_replica_and_cache().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let before = cache_row(&proxy).await;
    let replica_reads = counter(&replica_row(&proxy).await, "reads");
    assert_eq!(value(&client, READ).await, "old");
    assert_eq!(
        counter(&replica_row(&proxy).await, "reads"),
        replica_reads + 1,
        "the miss ran on the replica"
    );
    for _ in 0..5 {
        assert_eq!(value(&client, READ).await, "old");
    }
    let after = cache_row(&proxy).await;
    assert_eq!(
        counter(&after, "stored"),
        counter(&before, "stored") + 1,
        "{after:?}"
    );
    assert_eq!(
        counter(&after, "hits"),
        counter(&before, "hits") + 5,
        "{after:?}"
    );
    assert_eq!(
        counter(&replica_row(&proxy).await, "reads"),
        replica_reads + 1,
        "hits need no server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_a_lagging_replica_is_not_stored_and_the_writer_reads_its_write() {
    let (_primary, replica, proxy) = primary_replica_and_cache().await;
    let writer = connect(&proxy, "postgres", None).await.unwrap();
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    // Cached from the replica first.
    assert_eq!(value(&reader, READ).await, "old");
    assert_eq!(value(&reader, READ).await, "old");

    replica.psql("SELECT pg_wal_replay_pause()").unwrap();
    writer
        .simple_query("UPDATE items SET v = 'new' WHERE id = 1")
        .await
        .unwrap();
    let before = cache_row(&proxy).await;
    let replica_reads = counter(&replica_row(&proxy).await, "reads");
    // Another session (no read-your-writes) may read the old row from the lagging
    // replica: routing's documented lag. It must not be stored.
    for _ in 0..2 {
        assert_eq!(value(&reader, READ).await, "old", "the replica lags");
    }
    let after = cache_row(&proxy).await;
    let replica_reads_after = counter(&replica_row(&proxy).await, "reads");

    // The writer reads its write (read-your-writes sends it to the primary), by a
    // statement of its own: its fill must not decide what the reader gets next.
    let own = "SELECT v FROM items WHERE id = 1 AND v IS NOT NULL";
    assert_eq!(value(&writer, own).await, "new", "the writer's own read");

    // Where the write ended on the primary (the WAL writer may not have flushed it
    // yet: the replica's lag in bytes can read 0 before it has the write).
    let written = lsn(&value(
        &writer,
        "/* pgopt:primary */ SELECT pg_current_wal_insert_lsn()::text",
    )
    .await);
    replica.psql("SELECT pg_wal_replay_resume()").unwrap();
    wait_for_replica(&proxy, "caught up", |r| lsn(&r["replay_lsn"]) >= written).await;
    for _ in 0..3 {
        assert_eq!(
            value(&reader, READ).await,
            "new",
            "once the replica caught up the reader sees the write (no stale entry)"
        );
    }
    assert_eq!(value(&writer, READ).await, "new");
    // Checked last, so that a stale entry fails the reads above first.
    assert_eq!(
        replica_reads_after,
        replica_reads + 2,
        "both reads ran on the lagging replica"
    );
    assert_eq!(
        counter(&after, "stored"),
        counter(&before, "stored"),
        "{after:?}"
    );
    assert_eq!(
        counter(&after, "not_stored"),
        counter(&before, "not_stored") + 2,
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_bypasses_pgopt_seen_by_the_listener_fences_a_lagging_replica() {
    let (primary, replica, proxy) = primary_replica_and_cache_with(true).await;
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let direct = primary.connect("postgres").await.unwrap();
    assert_eq!(value(&reader, READ).await, "old");

    replica.psql("SELECT pg_wal_replay_pause()").unwrap();
    let commits = counter(&cache_row(&proxy).await, "wal_commits");
    direct
        .batch_execute("UPDATE items SET v = 'direct' WHERE id = 1")
        .await
        .unwrap();
    let row = direct
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap();
    let written = lsn(row.get(0));
    // The listener has seen the commit and ended the entry.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&cache_row(&proxy).await, "wal_commits") == commits {
        assert!(Instant::now() < deadline, "{:?}", cache_row(&proxy).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = cache_row(&proxy).await;
    // The lagging replica still has the old row: it is read, but not stored.
    assert_eq!(value(&reader, READ).await, "old", "the replica lags");
    let after = cache_row(&proxy).await;

    replica.psql("SELECT pg_wal_replay_resume()").unwrap();
    wait_for_replica(&proxy, "caught up", |r| lsn(&r["replay_lsn"]) >= written).await;
    for _ in 0..3 {
        assert_eq!(
            value(&reader, READ).await,
            "direct",
            "once the replica caught up the reader sees the write (no stale entry)"
        );
    }
    assert_eq!(
        counter(&after, "not_stored"),
        counter(&before, "not_stored") + 1,
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_fill_from_a_replica_is_stored_and_shared() {
    let (_primary, _replica, _redis, proxies) = replica_and_redis(2).await;
    let (a, b) = (&proxies[0], &proxies[1]);
    let client = connect(a, "postgres", None).await.unwrap();
    let replica_reads = counter(&replica_row(a).await, "reads");
    assert_eq!(read_until_stored(a, &client).await, "old");
    let filled = counter(&replica_row(a).await, "reads");
    assert!(filled > replica_reads, "the misses ran on the replica");
    wait_for_cache(a, "stored in Redis", |r| counter(r, "l2_stored") > 0).await;
    let before = cache_row(a).await;
    for _ in 0..5 {
        assert_eq!(value(&client, READ).await, "old");
    }
    let after = cache_row(a).await;
    assert_eq!(
        counter(&after, "hits"),
        counter(&before, "hits") + 5,
        "{after:?}"
    );
    assert_eq!(
        counter(&replica_row(a).await, "reads"),
        filled,
        "hits need no server"
    );
    // The other instance gets it from Redis, without a server.
    let other = connect(b, "postgres", None).await.unwrap();
    let b_reads = counter(&replica_row(b).await, "reads");
    assert_eq!(value(&other, READ).await, "old");
    let row = cache_row(b).await;
    assert_eq!(counter(&row, "l2_hits"), 1, "{row:?}");
    assert_eq!(counter(&replica_row(b).await, "reads"), b_reads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_another_instances_write_fences_a_lagging_replica() {
    let (_primary, replica, _redis, proxies) = replica_and_redis(2).await;
    let (a, b) = (&proxies[0], &proxies[1]);
    let reader = connect(a, "postgres", None).await.unwrap();
    let writer = connect(b, "postgres", None).await.unwrap();
    // Cached through A from the replica first: A's fills are stored.
    assert_eq!(read_until_stored(a, &reader).await, "old");

    replica.psql("SELECT pg_wal_replay_pause()").unwrap();
    writer
        .simple_query("UPDATE items SET v = 'new' WHERE id = 1")
        .await
        .unwrap();
    let written = lsn(&value(
        &writer,
        "/* pgopt:primary */ SELECT pg_current_wal_insert_lsn()::text",
    )
    .await);
    // Past A's next primary check, which has the write's position: what A stores
    // from the replica now, it would keep once the replica has caught up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cache_row(a).await;
    let replica_reads = counter(&replica_row(a).await, "reads");
    for _ in 0..3 {
        assert_eq!(value(&reader, READ).await, "old", "the replica lags");
    }
    let after = cache_row(a).await;
    let replica_reads_after = counter(&replica_row(a).await, "reads");

    replica.psql("SELECT pg_wal_replay_resume()").unwrap();
    wait_for_replica(a, "caught up", |r| lsn(&r["replay_lsn"]) >= written).await;
    for _ in 0..3 {
        assert_eq!(
            value(&reader, READ).await,
            "new",
            "once the replica caught up A's reader sees B's write (no stale entry)"
        );
    }
    // And, past A's next check of the primary, its fills are stored again: reads
    // become hits.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hits = counter(&cache_row(a).await, "hits");
        assert_eq!(value(&reader, READ).await, "new");
        if counter(&cache_row(a).await, "hits") > hits {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", cache_row(a).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Checked last, so that a stale entry fails the reads above first.
    assert_eq!(
        replica_reads_after,
        replica_reads + 3,
        "the reads ran on the lagging replica"
    );
    assert_eq!(
        counter(&after, "stored"),
        counter(&before, "stored"),
        "{after:?}"
    );
    assert_eq!(
        counter(&after, "not_stored"),
        counter(&before, "not_stored") + 3,
        "{after:?}"
    );
}

/// A write through another database entry of pgopt that reaches the same server
/// database (here one without replicas) fences the lagging replica's fills as a write
/// through the same entry does: the old row read there is not stored, and once the
/// replica caught up the write is read. Before, fences were kept per entry, and the
/// stale fill was served until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_another_entry_of_the_same_database_fences_a_lagging_replica() {
    let primary = Postgres::start().await.unwrap();
    primary
        .psql(
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'old');",
        )
        .unwrap();
    let replica = Postgres::start_replica(&primary).await.unwrap();
    let proxy = start_with(&primary, |c| {
        let mut admin_db = c.databases[0].clone();
        admin_db.name = "admin".into();
        c.databases[0].replicas = vec![Replica {
            host: "127.0.0.1".into(),
            port: replica.port(),
            weight: 1,
        }];
        c.databases.push(admin_db);
        c.routing.check_interval = Duration::from_millis(100);
        c.routing.max_lag_bytes = u64::MAX;
        c.routing.max_lag = Duration::from_secs(3600);
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            ..CacheSettings::default()
        };
    })
    .await;
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    value(&reader, "SELECT 1").await;
    wait_for_replica(&proxy, "up", |r| r["state"] == "up").await;
    let port = proxy.local_addr().port();
    let writer = common::client_at("127.0.0.1", port, "postgres", "admin", None)
        .await
        .unwrap();
    assert_eq!(value(&reader, READ).await, "old");
    assert_eq!(value(&reader, READ).await, "old");

    replica.psql("SELECT pg_wal_replay_pause()").unwrap();
    writer
        .batch_execute("UPDATE items SET v = 'new' WHERE id = 1")
        .await
        .unwrap();
    let before = cache_row(&proxy).await;
    assert_eq!(value(&reader, READ).await, "old", "the replica lags");
    let after = cache_row(&proxy).await;
    let written = lsn(&value(&writer, "SELECT pg_current_wal_insert_lsn()::text").await);
    replica.psql("SELECT pg_wal_replay_resume()").unwrap();
    wait_for_replica(&proxy, "caught up", |r| lsn(&r["replay_lsn"]) >= written).await;
    for _ in 0..3 {
        assert_eq!(value(&reader, READ).await, "new", "no stale entry");
    }
    assert_eq!(
        counter(&after, "stored"),
        counter(&before, "stored"),
        "{after:?}"
    );
}
