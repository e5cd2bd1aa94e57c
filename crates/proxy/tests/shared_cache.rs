//! The result cache shared by two pgopt instances through a real Redis: values in L2,
//! invalidations on the bus, and what happens when Redis goes away or lies. As in
//! `cache.rs`, rows changed directly on PostgreSQL show what is served from a cache.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{admin, connect, counter, show, start_with, value, wait_for_cache};
use pgopt_embedded::{Postgres, Redis};
use pgopt_proxy::{CacheSettings, Proxy, RedisConfig};
use tokio_postgres::Client;

async fn cache_row(proxy: &Proxy) -> HashMap<String, String> {
    show(&admin(proxy).await, "CACHE").await.remove(0)
}

/// A proxy caching `items`, sharing `redis` (with an HMAC key).
async fn instance(pg: &Postgres, redis: &Redis) -> Proxy {
    instance_with(pg, redis, |_| {}).await
}

/// [`instance`], its cache settings changed by `tweak`.
async fn instance_with(
    pg: &Postgres,
    redis: &Redis,
    tweak: impl FnOnce(&mut CacheSettings),
) -> Proxy {
    instance_configured(pg, redis, |_| {}, tweak).await
}

/// [`instance_with`], its proxy config changed by `configure` first.
async fn instance_configured(
    pg: &Postgres,
    redis: &Redis,
    configure: impl FnOnce(&mut pgopt_proxy::Config),
    tweak: impl FnOnce(&mut CacheSettings),
) -> Proxy {
    let proxy = start_with(pg, |c| {
        configure(c);
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            redis: Some(RedisConfig {
                url: redis.url(),
                hmac_key: Some(b"test key".to_vec()),
                timeout: Duration::from_millis(500),
                ..RedisConfig::default()
            }),
            ..CacheSettings::default()
        };
        tweak(&mut c.cache);
    })
    .await;
    wait_for_redis(&proxy, "up").await;
    proxy
}

/// Waits (up to 20 s) until SHOW CACHE's `redis` column reads `state`.
async fn wait_for_redis(proxy: &Proxy, state: &str) {
    wait_for_cache(proxy, &format!("redis {state}"), |r| r["redis"] == state).await;
}

/// PostgreSQL with a table `items` (1 'a', 2 'b').
async fn items_db() -> Postgres {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a'), (2, 'b');",
    )
    .unwrap();
    pg
}

async fn setup() -> (Postgres, Redis) {
    (items_db().await, Redis::start().await.unwrap())
}

/// Reads `READ` through `client` of `proxy` (item 1 is 'a') until its result is in
/// Redis, then changes the row behind pgopt's back: a read that still says 'a' was
/// served from a cache.
async fn fill_then_change_behind(pg: &Postgres, proxy: &Proxy, client: &Client) {
    assert_eq!(value(client, READ).await, "a");
    wait_for_cache(proxy, "stored in Redis", |r| counter(r, "l2_stored") > 0).await;
    pg.psql("UPDATE items SET v = 'behind' WHERE id = 1")
        .unwrap();
}

/// Sends `redis-server` signal `name` (`-STOP`, `-CONT`).
fn signal(redis: &Redis, name: &str) {
    let pid = redis.pid().expect("redis runs").to_string();
    let status = std::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn redis_client(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

const READ: &str = "SELECT v FROM items WHERE id = 1";

/// `rounds` writes, through `a` and `b` in turn: the other's next read has each
/// (with `writer_too`, the writer's own next read as well).
async fn alternate_writes(
    a: &tokio_postgres::Client,
    b: &tokio_postgres::Client,
    rounds: usize,
    prefix: &str,
    writer_too: bool,
) {
    for i in 0..rounds {
        let (writer, reader) = if i % 2 == 0 { (a, b) } else { (b, a) };
        assert_eq!(value(reader, READ).await, value(writer, READ).await);
        writer
            .batch_execute(&format!("UPDATE items SET v = '{prefix}{i}' WHERE id = 1"))
            .await
            .unwrap();
        assert_eq!(
            value(reader, READ).await,
            format!("{prefix}{i}"),
            "round {i}"
        );
        if writer_too {
            assert_eq!(
                value(writer, READ).await,
                format!("{prefix}{i}"),
                "round {i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_instance_is_seen_by_the_next_read_through_the_other() {
    let (pg, redis) = setup().await;
    let a_proxy = instance(&pg, &redis).await;
    let b_proxy = instance(&pg, &redis).await;
    let a = connect(&a_proxy, "postgres", None).await.unwrap();
    let b = connect(&b_proxy, "postgres", None).await.unwrap();
    // Heartbeats first (every 200 ms): an instance's first write must follow its own
    // heartbeats in order, or every instance flushes (bus_flushes, checked below).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A fills L1 and Redis; B's first read comes from Redis.
    fill_then_change_behind(&pg, &a_proxy, &a).await;
    assert_eq!(value(&b, READ).await, "a", "B served A's result from Redis");
    assert_eq!(value(&b, READ).await, "a", "and then from its own L1");
    let row = cache_row(&b_proxy).await;
    assert_eq!(counter(&row, "l2_hits"), 1, "{row:?}");
    assert_eq!(counter(&row, "hits"), 2, "{row:?}");

    // Writes through either instance: the other's next read has them, every time.
    alternate_writes(&a, &b, 40, "v", true).await;
    // A transaction's write reaches the other instance at commit, not before.
    a.batch_execute("BEGIN; UPDATE items SET v = 'tx' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&b, READ).await, "v39");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(value(&b, READ).await, "tx");
    // CACHE FLUSH through one instance flushes the other.
    value(&b, READ).await;
    pg.psql("UPDATE items SET v = 'flushed' WHERE id = 1")
        .unwrap();
    assert_eq!(value(&b, READ).await, "tx");
    admin(&a_proxy)
        .await
        .simple_query("CACHE FLUSH items")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&b, READ).await != "flushed" {
        assert!(Instant::now() < deadline, "B never heard of the flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let row = cache_row(&b_proxy).await;
    assert!(counter(&row, "bus_messages") >= 20, "{row:?}");
    assert_eq!(counter(&row, "bus_flushes"), 0, "{row:?}");
    // Per table: each instance counts its own commits as local invalidations and the
    // other's (21 writes and a CACHE FLUSH by A, 20 writes by B) as bus ones.
    for (proxy, local, bus) in [(&a_proxy, 22, 20), (&b_proxy, 20, 22)] {
        let tables = show(&admin(proxy).await, "CACHE TABLES").await;
        assert_eq!(tables.len(), 1, "{tables:?}");
        let items = &tables[0];
        assert_eq!(items["table"], "items");
        assert_eq!(counter(items, "local_invalidations"), local, "{tables:?}");
        assert_eq!(counter(items, "bus_invalidations"), bus, "{tables:?}");
    }
    assert_eq!(counter(&row, "l2_rejected"), 0, "{row:?}");
    // Each instance's sequence began at a random number, not 1 (about 20 writes
    // each): a sequence restarted after Redis lost it can't meet late confirmations
    // of its old numbers.
    let mut r = redis_client(&redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*seq:*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in keys {
        let seq: u64 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert!(seq > 1000, "{key}: {seq}");
    }
}

/// A COMMIT answered through a Flush, with no Sync yet: PostgreSQL has committed, so
/// the other instance learns of it before the writer hears the CommandComplete, not
/// at its ReadyForQuery.
/// Two instances whose database of one name goes to different server databases (or
/// logs in as different server users) on one Redis: neither is served the other's
/// rows. The key holds the server, database and login a result came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_whose_database_goes_elsewhere_share_no_entries() {
    let (pg, redis) = setup().await;
    pg.psql("CREATE DATABASE other").unwrap();
    let other = pg.connect("other").await.unwrap();
    other
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'z')",
        )
        .await
        .unwrap();
    let a = instance(&pg, &redis).await;
    let b = instance_configured(
        &pg,
        &redis,
        |c| c.databases[0].dbname = "other".into(),
        |_| {},
    )
    .await;
    let read = "SELECT v FROM items WHERE id = 1";
    let through_a = connect(&a, "postgres", None).await.unwrap();
    for _ in 0..2 {
        assert_eq!(value(&through_a, read).await, "a");
    }
    wait_for_cache(&a, "stored", |r| counter(r, "stored") > 0).await;
    let through_b = connect(&b, "postgres", None).await.unwrap();
    for _ in 0..2 {
        assert_eq!(value(&through_b, read).await, "z", "another database's row");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_before_any_sync_reaches_the_other_instance_at_once() {
    let (pg, redis) = setup().await;
    let (a, b) = (instance(&pg, &redis).await, instance(&pg, &redis).await);
    let reader = connect(&b, "postgres", None).await.unwrap();
    assert_eq!(value(&reader, READ).await, "a");
    assert_eq!(value(&reader, READ).await, "a");
    assert!(counter(&cache_row(&b).await, "hits") >= 1);
    let mut raw = common::commit_without_sync(&a, "new").await;
    assert_eq!(common::read_until(&mut raw, b'C').await, b"12C");
    let deadline = Instant::now() + Duration::from_secs(2);
    while value(&reader, READ).await != "new" {
        assert!(Instant::now() < deadline, "{:?}", cache_row(&b).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_versions_and_forged_values_in_redis_are_misses() {
    let (pg, redis) = setup().await;
    let a_proxy = instance(&pg, &redis).await;
    let a = connect(&a_proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&a, READ).await, "a");
    let mut r = redis_client(&redis).await;
    let entries = |r: &mut redis::aio::MultiplexedConnection| {
        let mut r = r.clone();
        async move {
            let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
                .arg("pgopt:{pgopt}e:*")
                .query_async(&mut r)
                .await
                .unwrap();
            keys
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while entries(&mut r).await.is_empty() {
        assert!(Instant::now() < deadline, "nothing stored in Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.psql("UPDATE items SET v = 'fresh' WHERE id = 1")
        .unwrap();

    // The version counters are lost (a failover to a replica that missed them): a new
    // instance finds the entry but not its versions, so it is a miss.
    let versions: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("pgopt:{pgopt}v:*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!versions.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&versions)
        .query_async(&mut r)
        .await
        .unwrap();
    let b_proxy = instance(&pg, &redis).await;
    let b = connect(&b_proxy, "postgres", None).await.unwrap();
    assert_eq!(
        value(&b, READ).await,
        "fresh",
        "an entry without its versions"
    );
    let row = cache_row(&b_proxy).await;
    assert_eq!(counter(&row, "l2_hits"), 0, "{row:?}");
    assert_eq!(counter(&row, "l2_stale"), 1, "{row:?}");

    // Every stored value is tampered with: refused by the HMAC, never served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = entries(&mut r).await;
        let mut stored = Vec::new();
        for k in &keys {
            let v: Vec<u8> = redis::cmd("GET").arg(k).query_async(&mut r).await.unwrap();
            stored.push(v);
        }
        // B's fill of 'fresh' is stored at the current versions.
        if keys.len() == 1 && stored[0].windows(5).any(|w| w == b"fresh") {
            let mut forged = stored.remove(0);
            let at = forged.windows(5).position(|w| w == b"fresh").unwrap();
            forged[at..at + 5].copy_from_slice(b"FORGE");
            let _: () = redis::cmd("SET")
                .arg(&keys[0])
                .arg(forged)
                .query_async(&mut r)
                .await
                .unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "B's value never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c_proxy = instance(&pg, &redis).await;
    let c = connect(&c_proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&c, READ).await, "fresh", "not the forged value");
    let row = cache_row(&c_proxy).await;
    assert_eq!(counter(&row, "l2_rejected"), 1, "{row:?}");
    assert_eq!(counter(&row, "l2_hits"), 0, "{row:?}");
}

/// A commit that could not be announced (Redis stopped answering) is acknowledged only
/// once every instance that lost Redis too has stopped serving: right after it, the
/// other instance's memory no longer answers with the old row. (Redis is paused, not
/// killed: a closed connection would tell the other instance at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_redis_never_heard_of_waits_out_the_other_instances_leases() {
    let (pg, redis) = setup().await;
    let a_proxy = instance(&pg, &redis).await;
    let b_proxy = instance(&pg, &redis).await;
    let a = connect(&a_proxy, "postgres", None).await.unwrap();
    let b = connect(&b_proxy, "postgres", None).await.unwrap();
    for _ in 0..3 {
        assert_eq!(value(&b, READ).await, "a");
    }
    assert!(counter(&cache_row(&b_proxy).await, "hits") >= 1);
    signal(&redis, "-STOP");
    let wrote = a
        .batch_execute("UPDATE items SET v = 'unannounced' WHERE id = 1")
        .await;
    let read = value(&b, READ).await;
    signal(&redis, "-CONT");
    wrote.unwrap();
    assert_eq!(read, "unannounced");
    assert!(counter(&cache_row(&a_proxy).await, "publish_failures") >= 1);
}

/// A commit whose script Redis refuses (here out of memory: `maxmemory` reached
/// under `noeviction`) is no more announced than one it never heard: its writer
/// waits until the other instance, hearing no more beats from it, has stopped
/// serving. Once Redis takes writes again the commit is counted and both serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_redis_refuses_waits_out_the_other_instances_leases() {
    let (pg, redis) = setup().await;
    let a_proxy = instance(&pg, &redis).await;
    let b_proxy = instance(&pg, &redis).await;
    for proxy in [&a_proxy, &b_proxy] {
        wait_for_cache(proxy, "the other instance heard", |r| {
            counter(r, "redis_peers") == 1
        })
        .await;
    }
    let a = connect(&a_proxy, "postgres", None).await.unwrap();
    let b = connect(&b_proxy, "postgres", None).await.unwrap();
    served_from_the_cache(&b_proxy, &b).await;
    let mut r = redis_client(&redis).await;
    let config = |key: &'static str, value: &'static str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg(key).arg(value);
        cmd
    };
    let _: () = config("maxmemory-policy", "noeviction")
        .query_async(&mut r)
        .await
        .unwrap();
    let _: () = config("maxmemory", "1").query_async(&mut r).await.unwrap();
    a.batch_execute("UPDATE items SET v = 'refused' WHERE id = 1")
        .await
        .unwrap();
    let read = value(&b, READ).await;
    let _: () = config("maxmemory", "0").query_async(&mut r).await.unwrap();
    assert_eq!(read, "refused");
    assert!(counter(&cache_row(&a_proxy).await, "publish_failures") >= 1);
    // Counted once Redis takes writes again: each instance serves the new row.
    for (proxy, client) in [(&a_proxy, &a), (&b_proxy, &b)] {
        let hits = counter(&cache_row(proxy).await, "hits");
        let deadline = Instant::now() + Duration::from_secs(20);
        while counter(&cache_row(proxy).await, "hits") == hits {
            assert!(Instant::now() < deadline, "{:?}", cache_row(proxy).await);
            assert_eq!(value(client, READ).await, "refused");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Deployments on two databases of one Redis, with the same prefix, are apart: pub/sub
/// ignores databases, so each database has its own channel and neither takes the
/// other's heartbeats for a peer's (nor its versions for the tables it caches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_on_two_redis_databases_do_not_hear_each_other() {
    let (pg, redis) = setup().await;
    let on = |db: u32| {
        let url = format!("{}/{db}", redis.url());
        move |c: &mut CacheSettings| {
            if let Some(r) = c.redis.as_mut() {
                r.url = url;
            }
        }
    };
    let one = [
        instance_with(&pg, &redis, on(1)).await,
        instance_with(&pg, &redis, on(1)).await,
    ];
    let two = instance_with(&pg, &redis, on(2)).await;
    for proxy in &one {
        wait_for_cache(proxy, "the other instance on db 1 heard", |r| {
            counter(r, "redis_peers") == 1
        })
        .await;
    }
    // Many heartbeats later, still one peer each, and none for db 2's instance.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for proxy in &one {
        assert_eq!(counter(&cache_row(proxy).await, "redis_peers"), 1);
    }
    let row = cache_row(&two).await;
    assert_eq!(counter(&row, "redis_peers"), 0, "{row:?}");
    // Each database still carries its own invalidations.
    let writer = connect(&one[0], "postgres", None).await.unwrap();
    let reader = connect(&one[1], "postgres", None).await.unwrap();
    alternate_writes(&writer, &reader, 2, "db1-", true).await;
}

/// A value Redis refuses to store (here its ACL user may not SET values; out of
/// memory is another cause) is a miss next time, not a failure of the connection: pgopt does not
/// drop and rebuild the connection every other call shares for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_redis_refuses_to_store_keeps_the_connection() {
    let (pg, redis) = setup().await;
    let mut r = redis_client(&redis).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nostore")
        // Everything but a SET of a value (an `e:` key); the scripts' SETs are allowed.
        .arg(&[
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-set",
            "(+set ~pgopt:{pgopt}[^e]*)",
        ])
        .query_async(&mut r)
        .await
        .unwrap();
    let url = format!("redis://nostore:pw@127.0.0.1:{}", redis.port());
    let proxy = instance_with(&pg, &redis, |c| c.redis.as_mut().unwrap().url = url).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let connections = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    let mut info = redis::cmd("INFO");
    info.arg("stats");
    let before = connections(info.query_async(&mut r).await.unwrap());
    // Fills of two rows, each a value Redis refuses.
    for id in [1, 2] {
        client
            .query(&format!("SELECT v FROM items WHERE id = {id}"), &[])
            .await
            .unwrap();
    }
    wait_for_cache(&proxy, "two stores refused", |row| {
        counter(row, "redis_errors") >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = connections(info.query_async(&mut r).await.unwrap());
    let row = cache_row(&proxy).await;
    assert_eq!(counter(&row, "l2_stored"), 0, "{row:?}");
    assert_eq!(row["redis"], "up", "{row:?}");
    assert_eq!(after, before, "pgopt connected to Redis again: {row:?}");
}

/// A Redis that takes connections but answers nothing (paused) is not taken for one
/// that is back: pgopt connects again only once Redis answers, so it stays down, and
/// writes stop waiting for it once the other instances' leases are over (each waited
/// out the call's timeout before, about a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_not_taken_for_one_that_is_back() {
    let (pg, redis) = setup().await;
    let proxy = instance(&pg, &redis).await;
    let a = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&a, READ).await, "a");
    signal(&redis, "-STOP");
    a.batch_execute("UPDATE items SET v = 'unannounced' WHERE id = 1")
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let row = cache_row(&proxy).await;
        assert_eq!(row["redis"], "down", "{row:?}");
        a.batch_execute("UPDATE items SET v = 'x' WHERE id = 2")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&redis, "-CONT");
    wait_for_redis(&proxy, "up").await;
    assert_eq!(value(&a, READ).await, "unannounced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_queries_go_to_postgresql_and_nothing_stale_is_served_after() {
    let (pg, mut redis) = setup().await;
    let a_proxy = instance(&pg, &redis).await;
    let b_proxy = instance(&pg, &redis).await;
    let a = connect(&a_proxy, "postgres", None).await.unwrap();
    let b = connect(&b_proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&a, READ).await, "a");
    assert_eq!(value(&b, READ).await, "a");

    // Readers through both instances while Redis is killed: not one query fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for proxy in [&a_proxy, &b_proxy] {
        for _ in 0..2 {
            let client = connect(proxy, "postgres", None).await.unwrap();
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    client.simple_query(READ).await.expect("a read failed");
                    n += 1;
                }
                n
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop();
    wait_for_redis(&a_proxy, "down").await;
    wait_for_redis(&b_proxy, "down").await;
    // Redis down: PostgreSQL answers (rows changed behind pgopt show it).
    pg.psql("UPDATE items SET v = 'direct' WHERE id = 1")
        .unwrap();
    assert_eq!(value(&a, READ).await, "direct");
    assert_eq!(value(&b, READ).await, "direct");
    // A write through A while Redis is down is owed to the others.
    a.batch_execute("UPDATE items SET v = 'while down' WHERE id = 1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.expect("a reader failed") > 0);
    }
    assert!(counter(&cache_row(&a_proxy).await, "publish_failures") >= 1);
    // Reads the cache can't serve count as misses, in the totals and per table, so
    // the hit ratio shows the outage.
    let misses = |row: &HashMap<String, String>| counter(row, "misses");
    let table_misses = async || {
        let tables = show(&admin(&a_proxy).await, "CACHE TABLES").await;
        counter(&tables[0], "misses")
    };
    let (before, table_before) = (misses(&cache_row(&a_proxy).await), table_misses().await);
    for _ in 0..3 {
        value(&a, READ).await;
    }
    assert_eq!(misses(&cache_row(&a_proxy).await), before + 3);
    assert_eq!(table_misses().await, table_before + 3);

    redis.restart().unwrap();
    wait_for_redis(&a_proxy, "up").await;
    wait_for_redis(&b_proxy, "up").await;
    assert_eq!(value(&b, READ).await, "while down");
    assert_eq!(value(&b, READ).await, "while down");
    assert_eq!(value(&a, READ).await, "while down");
    let row = cache_row(&b_proxy).await;
    assert!(counter(&row, "bus_flushes") >= 1, "{row:?}");
    // And the cache works again: a read through B is served from it (a write behind
    // pgopt's back doesn't show). A's invalidation owed for its write while Redis was
    // down may land after B filled again, and end that entry: then B fills once more.
    let mut served = false;
    for i in 0..20 {
        let before = value(&b, READ).await;
        pg.psql(&format!("UPDATE items SET v = 'behind {i}' WHERE id = 1"))
            .unwrap();
        if value(&b, READ).await == before {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "B never served from its cache again");
}

/// A `redis-server` with TLS only and a password, stopped on drop.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn tls_redis() -> TlsRedis {
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("pgopt-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A CA, and a certificate for localhost it signed.
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=pgopt-test-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out req.csr",
        "x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out cert.pem",
    ] {
        let ok = Command::new("openssl")
            .args(args.split(' '))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl {args}");
    }
    // Another test's server may take the free port before this one binds it: then
    // this one exits, and starts again on another.
    let mut attempt = 0;
    let (child, port) = loop {
        attempt += 1;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("redis-{attempt}.log"));
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem"])
            .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
            .args([
                "--requirepass",
                "secret",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--logfile")
            .arg(&log)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(attempt < 5, "redis-server exited: {status}");
                break false;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                break true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server never ready: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        if ready {
            break (child, port);
        }
    };
    TlsRedis {
        child,
        port,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_password_and_a_wrong_password() {
    let pg = items_db().await;
    let redis = tls_redis();
    let start = |password: &'static str| {
        let url = format!("rediss://:{password}@localhost:{}", redis.port);
        let ca_file = Some(redis._dir.join("ca.pem"));
        start_with(&pg, move |c| {
            c.cache = CacheSettings {
                enabled: true,
                tables: vec!["items".into()],
                redis: Some(RedisConfig {
                    url,
                    ca_file,
                    timeout: Duration::from_millis(500),
                    ..RedisConfig::default()
                }),
                ..CacheSettings::default()
            };
        })
    };
    let a_proxy = start("secret").await;
    let b_proxy = start("secret").await;
    wait_for_redis(&a_proxy, "up").await;
    wait_for_redis(&b_proxy, "up").await;
    let a = connect(&a_proxy, "postgres", None).await.unwrap();
    let b = connect(&b_proxy, "postgres", None).await.unwrap();
    fill_then_change_behind(&pg, &a_proxy, &a).await;
    assert_eq!(value(&b, READ).await, "a", "from Redis over TLS");
    a.batch_execute("UPDATE items SET v = 'new' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&b, READ).await, "new");

    // A wrong password: Redis stays down for that instance, its queries work.
    let c_proxy = start("wrong").await;
    let c = connect(&c_proxy, "postgres", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(value(&c, READ).await, "new");
    let row = cache_row(&c_proxy).await;
    assert_ne!(row["redis"], "up", "{row:?}");
    assert!(counter(&row, "redis_errors") > 0, "{row:?}");
}

/// Three `redis-server`s forming one Redis Cluster (masters only), stopped on drop.
struct RedisCluster {
    /// Stopped when dropped.
    _nodes: Vec<Redis>,
    ports: Vec<u16>,
}

impl RedisCluster {
    /// The node URLs, comma-separated, as `[cache.redis] url` takes them: the node
    /// that owns pgopt's keys (the `{pgopt}` hash tag's slot) last, so a client that
    /// took the first URL for a single server would be sent elsewhere (MOVED), and
    /// the subscriber (on the first node) hears messages published on another.
    fn url(&self) -> String {
        let owner = self.owner();
        let mut ports = self.ports.clone();
        let last = ports.len() - 1;
        ports.swap(owner, last);
        let urls: Vec<String> = ports
            .iter()
            // Host names: the subscriber finds its node by resolving them.
            .map(|p| format!("redis://localhost:{p}"))
            .collect();
        urls.join(",")
    }

    /// Moves the `{pgopt}` slot, keys and all, from node `from` to node `to`, as a
    /// resharding does (`redis-cli --cluster reshard`, by hand for the one slot).
    fn move_bus_slot(&self, from: usize, to: usize) {
        let id = |i: usize| {
            redis_cli(self.ports[i], &["cluster", "myid"])
                .trim()
                .to_string()
        };
        let (source, target) = (id(from), id(to));
        let slot = redis_cli(self.ports[from], &["cluster", "keyslot", "{pgopt}"]);
        let slot = slot.trim();
        redis_cli(
            self.ports[to],
            &["cluster", "setslot", slot, "importing", &source],
        );
        redis_cli(
            self.ports[from],
            &["cluster", "setslot", slot, "migrating", &target],
        );
        let port = self.ports[to].to_string();
        loop {
            let keys = redis_cli(self.ports[from], &["cluster", "getkeysinslot", slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "keys"];
            migrate.extend(keys);
            let out = redis_cli(self.ports[from], &migrate);
            assert!(out.contains("OK") || out.contains("NOKEY"), "{out}");
        }
        // The new owner first, then the old one, then the rest.
        let mut order = vec![to, from];
        order.extend((0..self.ports.len()).filter(|i| *i != to && *i != from));
        for i in order {
            redis_cli(
                self.ports[i],
                &["cluster", "setslot", slot, "node", &target],
            );
        }
    }

    /// The index of the node that owns the `{pgopt}` slot.
    fn owner(&self) -> usize {
        redis_cli(self.ports[0], &["-c", "set", "{pgopt}probe", "1"]);
        let owner = self
            .ports
            .iter()
            // Other nodes answer MOVED.
            .position(|&p| redis_cli(p, &["exists", "{pgopt}probe"]).trim() == "1")
            .expect("one node holds the probe");
        redis_cli(self.ports[0], &["-c", "del", "{pgopt}probe"]);
        owner
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn redis_cluster() -> RedisCluster {
    let nodes: Vec<Redis> = (0..3)
        .map(|_| Redis::start_cluster_node_blocking().unwrap())
        .collect();
    let cluster = RedisCluster {
        ports: nodes.iter().map(|n| n.port()).collect(),
        _nodes: nodes,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let nodes: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(nodes.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    let created = redis_cli(cluster.ports[0], &create);
    assert!(created.contains("All 16384 slots covered"), "{created}");
    for &port in &cluster.ports {
        while !redis_cli(port, &["cluster", "info"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "the cluster never formed");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_results_and_invalidations_through_a_redis_cluster() {
    let pg = items_db().await;
    let cluster = redis_cluster();
    let start = || {
        let url = cluster.url();
        start_with(&pg, move |c| {
            c.cache = CacheSettings {
                enabled: true,
                tables: vec!["items".into()],
                redis: Some(RedisConfig {
                    url,
                    cluster: true,
                    hmac_key: Some(b"test key".to_vec()),
                    timeout: Duration::from_millis(500),
                    ..RedisConfig::default()
                }),
                ..CacheSettings::default()
            };
        })
    };
    let (a_proxy, b_proxy) = (start().await, start().await);
    wait_for_redis(&a_proxy, "up").await;
    wait_for_redis(&b_proxy, "up").await;
    let a = connect(&a_proxy, "postgres", None).await.unwrap();
    let b = connect(&b_proxy, "postgres", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await; // heartbeats first
                                                           // Both listen on the node that owns pgopt's slot, where the bus's scripts run: a
                                                           // PUBLISH there counts them, so a writer waits for both confirmations (elsewhere
                                                           // they would hear the message, later, uncounted).
    let owner = cluster.ports[cluster.owner()];
    let subscribers = redis_cli(owner, &["pubsub", "numsub", "pgopt:invalidations"]);
    assert_eq!(subscribers.lines().nth(1), Some("2"), "{subscribers}");

    // A's result reaches B through the cluster.
    fill_then_change_behind(&pg, &a_proxy, &a).await;
    assert_eq!(value(&b, READ).await, "a", "B served A's result from Redis");
    assert_eq!(counter(&cache_row(&b_proxy).await, "l2_hits"), 1);
    // Writes through either instance: the other's next read has them.
    alternate_writes(&a, &b, 20, "v", false).await;
    for proxy in [&a_proxy, &b_proxy] {
        let row = cache_row(proxy).await;
        assert!(counter(&row, "bus_messages") >= 10, "{row:?}");
        assert_eq!(counter(&row, "bus_flushes"), 0, "{row:?}");
        assert_eq!(counter(&row, "ack_timeouts"), 0, "{row:?}");
        assert_eq!(counter(&row, "redis_errors"), 0, "{row:?}");
    }
    // Every key shares the {pgopt} hash tag: all of them on the one node that owns
    // its slot.
    let holding: Vec<u16> = cluster
        .ports
        .iter()
        .copied()
        .filter(|&p| redis_cli(p, &["dbsize"]).trim() != "0")
        .collect();
    assert_eq!(holding.len(), 1, "keys on {holding:?}");

    // The slot moves to another master (a resharding): within an owner check or two
    // both instances listen there, and a write through one is seen through the other.
    let from = cluster.owner();
    let to = (from + 1) % cluster.ports.len();
    cluster.move_bus_slot(from, to);
    assert_eq!(cluster.owner(), to);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let subscribers = redis_cli(
            cluster.ports[to],
            &["pubsub", "numsub", "pgopt:invalidations"],
        );
        if subscribers.lines().nth(1) == Some("2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not subscribed on the new owner: {subscribers}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_redis(&a_proxy, "up").await;
    wait_for_redis(&b_proxy, "up").await;
    alternate_writes(&a, &b, 10, "moved", false).await;
}

/// PostgreSQL (`wal_level = logical`, [`items_db`]'s table), Redis, an instance
/// following the replication stream (streaming) and one that does not.
async fn listening_and_deaf() -> (Postgres, Redis, Proxy, Proxy) {
    let pg = Postgres::builder()
        .setting("wal_level", "logical")
        .start()
        .await
        .unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a'), (2, 'b');",
    )
    .unwrap();
    let redis = Redis::start().await.unwrap();
    let listening = instance_with(&pg, &redis, |c| c.wal_listener = true).await;
    wait_for_cache(&listening, "streaming", |r| r["wal"] == "streaming").await;
    let deaf = instance(&pg, &redis).await;
    (pg, redis, listening, deaf)
}

/// A write made directly on PostgreSQL while the listener's stream is down is never
/// heard: when the stream starts again everything ends, in Redis too, so no instance
/// goes on serving a value the gap may have changed (from L2, or from an instance
/// without a stream's L1 — until its TTL, before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_the_listeners_gap_ends_every_value_in_redis_once_it_is_back() {
    let (pg, _redis, listening, deaf) = listening_and_deaf().await;
    let (a, b) = (
        connect(&listening, "postgres", None).await.unwrap(),
        connect(&deaf, "postgres", None).await.unwrap(),
    );
    assert_eq!(value(&b, READ).await, "a");
    wait_for_cache(&deaf, "stored in Redis", |r| counter(r, "l2_stored") > 0).await;
    assert_eq!(value(&b, READ).await, "a");
    // The stream ends (its temporary slot with it); a write in the gap.
    let (direct, conn) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let slots = async || -> i64 {
        let sql = "SELECT count(*) FROM pg_replication_slots";
        direct.query_one(sql, &[]).await.unwrap().get(0)
    };
    direct
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE backend_type = 'walsender'",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while slots().await > 0 {
        assert!(Instant::now() < deadline, "the slot stays");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    direct
        .batch_execute("UPDATE items SET v = 'gap' WHERE id = 1")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while slots().await == 0 {
        assert!(Instant::now() < deadline, "no stream again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_cache(&listening, "streaming again", |r| r["wal"] == "streaming").await;
    for (client, who) in [(&b, "the instance without a stream"), (&a, "the listener")] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while value(client, READ).await != "gap" {
            assert!(Instant::now() < deadline, "{who} serves the old value");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Two instances with streams: when one's stream ends and starts again, the other's,
/// up throughout, heard every commit in the gap and reaches the start marker written
/// into the WAL; what Redis and the other instances hold stays (a rolling restart no
/// longer empties the shared cache once per instance). A write in the gap still ends
/// its value everywhere, heard on the other stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gap_another_instances_stream_covered_keeps_what_redis_holds() {
    let (pg, redis, first, deaf) = listening_and_deaf().await;
    let second = instance_with(&pg, &redis, |c| c.wal_listener = true).await;
    wait_for_cache(&second, "streaming", |r| r["wal"] == "streaming").await;
    let gaps = async || {
        let (mut flushes, mut covered) = (0, 0);
        for proxy in [&first, &second] {
            let row = cache_row(proxy).await;
            flushes += counter(&row, "wal_gap_flushes");
            covered += counter(&row, "wal_gaps_covered");
        }
        (flushes, covered)
    };
    let (flushes, covered) = gaps().await;
    let reader = connect(&deaf, "postgres", None).await.unwrap();
    assert_eq!(value(&reader, READ).await, "a");
    wait_for_cache(&deaf, "stored in Redis", |r| counter(r, "l2_stored") > 0).await;
    let (direct, conn) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let active = async || -> i64 {
        let sql = "SELECT count(*) FROM pg_replication_slots WHERE active";
        direct.query_one(sql, &[]).await.unwrap().get(0)
    };
    assert_eq!(active().await, 2);
    // One stream ends and starts again, then the other (each instance's slots are
    // named by its start, `<start>_<attempt>`); a write in the second gap.
    let mut expected = (flushes, covered);
    let mut restarted = String::from("none");
    for write in ["", "UPDATE items SET v = 'gap' WHERE id = 1"] {
        let before = cache_row(&deaf).await;
        let slot: String = direct
            .query_one(
                "SELECT slot_name::text FROM pg_replication_slots \
                 WHERE active AND slot_name NOT LIKE $1 || '%' ORDER BY slot_name LIMIT 1",
                &[&restarted],
            )
            .await
            .unwrap()
            .get(0);
        restarted = slot.rsplit_once('_').unwrap().0.to_string();
        direct
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}'; {write}"
            ))
            .await
            .unwrap();
        expected.1 += 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        while gaps().await != expected {
            assert!(
                Instant::now() < deadline,
                "no start vouched for: {:?}, expected {expected:?}",
                gaps().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if write.is_empty() {
            // The value in Redis and the deaf instance's copy stayed.
            assert_eq!(value(&reader, READ).await, "a");
            let after = cache_row(&deaf).await;
            assert_eq!(
                counter(&after, "hits"),
                counter(&before, "hits") + 1,
                "{after:?}"
            );
        } else {
            // The write in the gap, heard on the other stream, ends its value
            // everywhere.
            let deadline = Instant::now() + Duration::from_secs(10);
            while value(&reader, READ).await != "gap" {
                assert!(
                    Instant::now() < deadline,
                    "the write in the gap was not heard"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A write made directly on PostgreSQL, heard on the replication stream, ends the
/// value in Redis too: neither the instance that heard it nor one that follows no
/// stream goes on serving the old result from L2 (until its TTL, before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_bypasses_pgopt_heard_on_the_stream_ends_its_value_in_redis() {
    let (pg, _redis, listening, deaf) = listening_and_deaf().await;
    let (a, b) = (
        connect(&listening, "postgres", None).await.unwrap(),
        connect(&deaf, "postgres", None).await.unwrap(),
    );
    fill_then_change_behind(&pg, &listening, &a).await;
    for (client, who) in [(&b, "the instance without a stream"), (&a, "the listener")] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while value(client, READ).await != "behind" {
            assert!(Instant::now() < deadline, "{who} serves the old value");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads `READ` through `b` until it gives 'behind' (set directly on PostgreSQL after
/// `b` cached the row, 10 s at most): `b` has heard of the schema change another
/// instance made since, which ended every entry.
async fn heard_behind(b: &Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(b, READ).await != "behind" {
        assert!(
            Instant::now() < deadline,
            "B never heard of the schema change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A schema change through one instance (here a trigger that writes another cached
/// table) reaches the other's dependency map with its invalidation: the other's next
/// write follows the trigger, as the writer's does. Before, the other went on with
/// its old map for up to 30 s, and entries of the trigger's table outlived the write
/// on both instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_through_one_instance_reaches_the_others_dependency_map() {
    let (pg, redis) = setup().await;
    pg.psql("CREATE TABLE log (id int)").unwrap();
    let tables = |c: &mut CacheSettings| c.tables = vec!["items".into(), "log".into()];
    let a_proxy = instance_with(&pg, &redis, tables).await;
    let b_proxy = instance_with(&pg, &redis, tables).await;
    let a = connect(&a_proxy, "postgres", None).await.unwrap();
    let b = connect(&b_proxy, "postgres", None).await.unwrap();
    // Heartbeats first (see the test above).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let logged = "SELECT count(*) FROM log";
    for client in [&a, &b] {
        for _ in 0..2 {
            assert_eq!(value(client, logged).await, "0");
        }
    }
    assert_eq!(value(&b, READ).await, "a");
    pg.psql("UPDATE items SET v = 'behind' WHERE id = 1")
        .unwrap();
    a.batch_execute(
        "CREATE FUNCTION logged() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO log VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER logged AFTER UPDATE ON items
           FOR EACH ROW EXECUTE FUNCTION logged()",
    )
    .await
    .unwrap();
    heard_behind(&b).await;
    for client in [&a, &b] {
        assert_eq!(value(client, logged).await, "0");
    }
    b.batch_execute("UPDATE items SET v = 'c' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&b, logged).await, "1", "through the writer");
    assert_eq!(value(&a, logged).await, "1", "through the other instance");
}

/// A function that sets a setting, created through one instance, is known to the
/// other at once: a call through it has the setting read back, and the next client
/// of the server connection does not inherit it. Before, the other went on with its
/// old list of such functions for up to 30 s, and the setting leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_sets_a_setting_made_through_one_instance_is_followed_by_the_other() {
    let (pg, redis) = setup().await;
    let a_proxy = instance(&pg, &redis).await;
    let b_proxy = instance_configured(&pg, &redis, |c| c.default_pool_size = 1, |_| {}).await;
    let a = connect(&a_proxy, "postgres", None).await.unwrap();
    let b = connect(&b_proxy, "postgres", None).await.unwrap();
    let next = connect(&b_proxy, "postgres", None).await.unwrap();
    // Heartbeats first (see the first test).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(value(&b, READ).await, "a");
    pg.psql("UPDATE items SET v = 'behind' WHERE id = 1")
        .unwrap();
    a.batch_execute(
        "CREATE FUNCTION elsewhere() RETURNS void LANGUAGE plpgsql AS
           $$ BEGIN PERFORM set_config('search_path', 'elsewhere', false); END $$",
    )
    .await
    .unwrap();
    heard_behind(&b).await;
    b.batch_execute("SELECT elsewhere()").await.unwrap();
    assert_eq!(value(&b, "SHOW search_path").await, "elsewhere");
    assert_eq!(value(&next, "SHOW search_path").await, "\"$user\", public");
}

/// Makes Redis ACL user `user` (password `<user>-pw`) that may use every command but
/// the dangerous ones, on keys and channels starting with `prefix` only.
async fn tenant_user(r: &mut redis::aio::MultiplexedConnection, user: &str, prefix: &str) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg("on")
        .arg(format!(">{user}-pw"))
        .arg(format!("~{prefix}*"))
        .arg(format!("&{prefix}*"))
        .arg("+@all")
        .arg("-@dangerous")
        .query_async(r)
        .await
        .unwrap();
}

/// An instance of tenant `user`: Redis as that ACL user, its keys and channel under
/// `prefix`, its values signed with `hmac`.
async fn tenant(pg: &Postgres, redis: &Redis, user: &str, prefix: &str, hmac: &[u8]) -> Proxy {
    let url = format!("redis://{user}:{user}-pw@127.0.0.1:{}", redis.port());
    instance_with(pg, redis, |c| {
        let r = c.redis.as_mut().unwrap();
        r.url = url;
        r.prefix = prefix.to_string();
        r.hmac_key = Some(hmac.to_vec());
    })
    .await
}

/// #66: tenants sharing one Redis, each with its own key prefix and its own ACL user
/// limited to that prefix's keys and channels (`~prefix*`, `&prefix*`), over one
/// database, so that only the prefix tells their entries apart. Tenant A's two
/// instances share their entries (an L2 hit) and invalidations (a write through one
/// is read through the other at once); tenant B, whose user can't reach A's keys or
/// channel, takes nothing of A's (its read has the row changed behind, not A's
/// entry), caches and sees its own writes; neither instance's user was ever refused
/// (ACL LOG empty, no Redis errors), every key and channel is under one of the two
/// prefixes, and the ACL does refuse a tenant the other's keys and channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_with_their_own_prefix_and_acl_user_share_nothing_and_each_works() {
    let (pg, redis) = setup().await;
    let mut r = redis_client(&redis).await;
    tenant_user(&mut r, "tenant_a", "ta:").await;
    tenant_user(&mut r, "tenant_b", "tb:").await;
    let a1_proxy = tenant(&pg, &redis, "tenant_a", "ta:", b"test key").await;
    let a2_proxy = tenant(&pg, &redis, "tenant_a", "ta:", b"test key").await;
    let b_proxy = tenant(&pg, &redis, "tenant_b", "tb:", b"test key").await;
    let a1 = connect(&a1_proxy, "postgres", None).await.unwrap();
    let a2 = connect(&a2_proxy, "postgres", None).await.unwrap();
    let b = connect(&b_proxy, "postgres", None).await.unwrap();

    // A1 fills Redis; the row changes behind pgopt's back.
    fill_then_change_behind(&pg, &a1_proxy, &a1).await;
    // A2, the same tenant: A1's entry, from Redis.
    assert_eq!(value(&a2, READ).await, "a", "tenant A's entry");
    assert_eq!(counter(&cache_row(&a2_proxy).await, "l2_hits"), 1);
    // B: not A's entry, though the key is A's but for the prefix.
    assert_eq!(value(&b, READ).await, "behind", "tenant A's entry for B");
    assert_eq!(value(&b, READ).await, "behind");
    let row = cache_row(&b_proxy).await;
    assert_eq!(counter(&row, "l2_hits"), 0, "{row:?}");
    assert_eq!(counter(&row, "hits"), 1, "B caches: {row:?}");
    // Each tenant's writes reach its own instances.
    a2.batch_execute("UPDATE items SET v = 'by a2' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&a1, READ).await, "by a2", "A2's write through A1");
    b.batch_execute("UPDATE items SET v = 'by b' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&b, READ).await, "by b", "B's own write");
    assert_eq!(value(&b, READ).await, "by b");
    assert_eq!(value(&a2, "SELECT v FROM items WHERE id = 2").await, "b");

    // Every key and channel is one tenant's.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.starts_with("ta:")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("tb:")), "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("ta:") || k.starts_with("tb:")),
        "{keys:?}"
    );
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut r)
        .await
        .unwrap();
    for bus in ["ta:invalidations", "tb:invalidations"] {
        assert!(channels.iter().any(|c| c == bus), "{channels:?}");
    }
    assert!(
        channels
            .iter()
            .all(|c| c.starts_with("ta:") || c.starts_with("tb:")),
        "{channels:?}"
    );
    // Nothing either instance asked was refused, and Redis never failed them.
    let refused: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    for proxy in [&a1_proxy, &a2_proxy, &b_proxy] {
        let row = cache_row(proxy).await;
        assert_eq!(counter(&row, "redis_errors"), 0, "{row:?}");
        assert_eq!(row["redis"], "up", "{row:?}");
    }
    // And the ACL holds: tenant A's user can't read B's keys nor publish on B's
    // channel.
    let as_a = redis::Client::open(format!(
        "redis://tenant_a:tenant_a-pw@127.0.0.1:{}",
        redis.port()
    ))
    .unwrap();
    let mut as_a = as_a.get_multiplexed_async_connection().await.unwrap();
    let b_key = keys.iter().find(|k| k.starts_with("tb:")).unwrap();
    let e = redis::cmd("GET")
        .arg(b_key)
        .query_async::<redis::Value>(&mut as_a)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("NOPERM"), "{e}");
    let e = redis::cmd("PUBLISH")
        .arg("tb:invalidations")
        .arg("x")
        .query_async::<redis::Value>(&mut as_a)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("NOPERM"), "{e}");
}

/// #66: an instance whose ACL user may not use the key prefix it is configured with
/// (tenant B's user, tenant A's prefix) gets no entry, version or channel of A's: it
/// never serves from the cache — every read has PostgreSQL's row of the moment, a
/// row changed behind pgopt's back too — SHOW CACHE says why (`no-channel`, Redis
/// errors), and it leaves nothing in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_acl_user_cannot_reach_its_prefix_reads_postgresql() {
    let (pg, redis) = setup().await;
    let mut r = redis_client(&redis).await;
    tenant_user(&mut r, "tenant_b", "tb:").await;
    let url = format!("redis://tenant_b:tenant_b-pw@127.0.0.1:{}", redis.port());
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            redis: Some(RedisConfig {
                url,
                prefix: "ta:".into(),
                hmac_key: Some(b"test key".to_vec()),
                timeout: Duration::from_millis(500),
                ..RedisConfig::default()
            }),
            ..CacheSettings::default()
        };
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    for _ in 0..3 {
        assert_eq!(value(&client, READ).await, "a");
    }
    pg.psql("UPDATE items SET v = 'behind' WHERE id = 1")
        .unwrap();
    assert_eq!(value(&client, READ).await, "behind");
    client
        .batch_execute("UPDATE items SET v = 'through' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&client, READ).await, "through");
    let row = cache_row(&proxy).await;
    assert_eq!(row["redis"], "no-channel", "{row:?}");
    assert!(counter(&row, "redis_errors") > 0, "{row:?}");
    assert_eq!(counter(&row, "hits"), 0, "{row:?}");
    assert_eq!(counter(&row, "l2_stored"), 0, "{row:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// #66, #67: tenant A's values and versions copied under another tenant's prefix
/// (what someone who may write that tenant's keys could plant) are refused: by the
/// other tenant's own HMAC key, and also when both share one (each prefix signs with
/// a key of its own derived from it). The other tenant's read is PostgreSQL's row, not
/// A's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_values_planted_under_a_prefix_are_refused_by_its_hmac_key() {
    let (pg, redis) = setup().await;
    let mut r = redis_client(&redis).await;
    tenant_user(&mut r, "tenant_a", "ta:").await;
    let a_proxy = tenant(&pg, &redis, "tenant_a", "ta:", b"key of a").await;
    let a = connect(&a_proxy, "postgres", None).await.unwrap();
    fill_then_change_behind(&pg, &a_proxy, &a).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ta:{pgopt}[ev]:*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.contains("}e:")), "{keys:?}");
    let others: [(&str, &str, &[u8]); 2] = [
        ("tenant_b", "tb:", b"key of b"),
        ("tenant_c", "tc:", b"key of a"),
    ];
    for (user, prefix, hmac_key) in others {
        tenant_user(&mut r, user, prefix).await;
        // A's entries and versions, copied under this tenant's prefix.
        for key in &keys {
            let v: Vec<u8> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut r)
                .await
                .unwrap();
            let planted = format!("{prefix}{}", &key["ta:".len()..]);
            let _: () = redis::cmd("SET")
                .arg(planted)
                .arg(v)
                .query_async(&mut r)
                .await
                .unwrap();
        }
        let other_proxy = tenant(&pg, &redis, user, prefix, hmac_key).await;
        let other = connect(&other_proxy, "postgres", None).await.unwrap();
        assert_eq!(
            value(&other, READ).await,
            "behind",
            "tenant A's value served to {user}"
        );
        let row = cache_row(&other_proxy).await;
        assert_eq!(counter(&row, "l2_hits"), 0, "{user}: {row:?}");
        assert_eq!(counter(&row, "l2_rejected"), 1, "{user}: {row:?}");
    }
}

/// A TCP forwarder to `redis` the test can freeze: bytes stop flowing both ways while
/// the connections stay open, as when a network partition cuts one instance off.
struct Forwarder {
    url: String,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn forwarder(redis: &Redis) -> Forwarder {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let frozen = std::sync::Arc::new(AtomicBool::new(false));
    let (to, held) = (redis.port(), frozen.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut into) in [(cr, sw), (sr, cw)] {
                let held = held.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        while held.load(SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if into.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    Forwarder { url, frozen }
}

/// Reads item 1 ('a') through `reader`, a client of `proxy`, until one is served from
/// its cache (within 10 s).
async fn served_from_the_cache(proxy: &Proxy, reader: &Client) {
    assert_eq!(value(reader, READ).await, "a");
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&cache_row(proxy).await, "hits") == 0 {
        assert!(Instant::now() < deadline, "never served from the cache");
        assert_eq!(value(reader, READ).await, "a");
    }
}

/// Two instances on `redis`, the first reaching it through a [`forwarder`].
async fn one_behind_a_forwarder(pg: &Postgres, redis: &Redis) -> (Forwarder, Proxy, Proxy) {
    let cut = forwarder(redis).await;
    let a = instance_with(pg, redis, |c| {
        if let Some(r) = c.redis.as_mut() {
            r.url = cut.url.clone();
        }
    })
    .await;
    let b = instance(pg, redis).await;
    (cut, a, b)
}

/// #57: an instance cut off from Redis while the others still reach it. Its commit
/// cannot be announced; the others stop serving once it has gone quiet (before its
/// writer hears the commit ended), and serve again once it is back and has announced
/// what it wrote — or, for an instance that ends, once it says goodbye.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_redis_keeps_the_others_from_serving_its_writes_stale() {
    let (pg, redis) = setup().await;
    let (cut, a, b) = one_behind_a_forwarder(&pg, &redis).await;
    // Each has heard the other (one never heard from is not waited for).
    for proxy in [&a, &b] {
        wait_for_cache(proxy, "the other instance heard", |r| {
            counter(r, "redis_peers") == 1
        })
        .await;
    }
    let (writer, reader) = (
        connect(&a, "postgres", None).await.unwrap(),
        connect(&b, "postgres", None).await.unwrap(),
    );
    // B serves item 1 from its cache.
    served_from_the_cache(&b, &reader).await;

    cut.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    writer
        .batch_execute("UPDATE items SET v = 'unannounced' WHERE id = 1")
        .await
        .unwrap();
    // The writer heard its commit ended: B has stopped serving by now.
    assert_eq!(value(&reader, READ).await, "unannounced");
    let hits = counter(&cache_row(&b).await, "hits");
    for _ in 0..3 {
        assert_eq!(value(&reader, READ).await, "unannounced");
    }
    let row = cache_row(&b).await;
    assert_eq!(
        counter(&row, "hits"),
        hits,
        "B served while A was cut off: {row:?}"
    );

    // A is back: it announces what it owes, and B serves again.
    cut.frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for_redis(&a, "up").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(&cache_row(&b).await, "hits") == hits {
        assert!(
            Instant::now() < deadline,
            "B never served again: {:?}",
            cache_row(&b).await
        );
        assert_eq!(value(&reader, READ).await, "unannounced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An instance that shuts down says goodbye: B goes on serving.
    let stopping = a.handle();
    stopping.shutdown();
    a.wait().await;
    let hits = counter(&cache_row(&b).await, "hits");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(value(&reader, READ).await, "unannounced");
    assert_eq!(
        counter(&cache_row(&b).await, "hits"),
        hits + 1,
        "{:?}",
        cache_row(&b).await
    );
}

/// #57: an instance that goes quiet for good without a goodbye (it crashed, or stays
/// cut off) is given up after 10 s: the others serve again, every value ended first,
/// since it may have committed a write it never announced (here one made directly on
/// PostgreSQL stands for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_quiet_for_good_is_given_up_and_what_it_may_have_written_ends() {
    let (pg, redis) = setup().await;
    let (cut, a, b) = one_behind_a_forwarder(&pg, &redis).await;
    wait_for_cache(&b, "A heard", |r| counter(r, "redis_peers") == 1).await;
    let reader = connect(&b, "postgres", None).await.unwrap();
    served_from_the_cache(&b, &reader).await;
    cut.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    pg.psql("UPDATE items SET v = 'never announced' WHERE id = 1")
        .unwrap();
    wait_for_cache(&b, "A given up", |r| counter(r, "redis_peers") == 0).await;
    let hits = counter(&cache_row(&b).await, "hits");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(value(&reader, READ).await, "never announced");
        if counter(&cache_row(&b).await, "hits") > hits {
            break;
        }
        assert!(Instant::now() < deadline, "B never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(a);
}

/// #59: the invalidation channel's connection dropped (CLIENT KILL TYPE pubsub) while
/// another instance writes: the instance that missed the message serves nothing
/// while unsubscribed and empties its memory when subscribed again, so it reads the
/// write, never its old entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_misses_no_write() {
    let (pg, redis) = setup().await;
    let (a, b) = (instance(&pg, &redis).await, instance(&pg, &redis).await);
    let (writer, reader) = (
        connect(&a, "postgres", None).await.unwrap(),
        connect(&b, "postgres", None).await.unwrap(),
    );
    served_from_the_cache(&b, &reader).await;
    let flushes = counter(&cache_row(&b).await, "bus_flushes");
    let mut r = redis_client(&redis).await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut r)
        .await
        .unwrap();
    writer
        .batch_execute("UPDATE items SET v = 'while dropped' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&reader, READ).await, "while dropped");
    wait_for_redis(&b, "up").await;
    assert_eq!(value(&reader, READ).await, "while dropped");
    assert!(counter(&cache_row(&b).await, "bus_flushes") > flushes);
}
