//! The library cache with Redis: two processes' worth of `SharedCache` on one real
//! Redis server share values, and an invalidation through one reaches the other
//! before it returns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgopt_cache::{Key, KeyBuilder, L1Config, RedisConfig, SharedCache};
use pgopt_embedded::Redis;

const TTL: Duration = Duration::from_secs(60);

fn key(text: &str) -> Key {
    KeyBuilder::new().part(b'q', text.as_bytes()).finish()
}

async fn start(redis: &Redis) -> SharedCache {
    start_at(redis.url()).await
}

async fn start_at(url: String) -> SharedCache {
    let cache = SharedCache::start(
        L1Config::default(),
        RedisConfig {
            url,
            hmac_key: Some(b"test key".to_vec()),
            ..RedisConfig::default()
        },
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.serving() {
        assert!(Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cache
}

/// `cache.get_or_set` of the one key, counting fills; the value is `value`.
async fn get(cache: &SharedCache, fills: &AtomicUsize, value: &'static str) -> Bytes {
    get_for(cache, fills, value, TTL).await
}

/// [`get`], stored for `ttl`.
async fn get_for(
    cache: &SharedCache,
    fills: &AtomicUsize,
    value: &'static str,
    ttl: Duration,
) -> Bytes {
    cache
        .get_or_set(
            key("SELECT * FROM projects"),
            &["projects"],
            ttl,
            || async {
                fills.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(Bytes::from_static(value.as_bytes()))
            },
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_caches_share_values_and_invalidations_through_redis() {
    let redis = Redis::start().await.unwrap();
    let (a, b) = (start(&redis).await, start(&redis).await);
    let fills = AtomicUsize::new(0);

    // A fills; B reads A's value from Redis; both then from memory.
    assert_eq!(get(&a, &fills, "v1").await, "v1");
    assert_eq!(get(&b, &fills, "other").await, "v1");
    assert_eq!(get(&a, &fills, "other").await, "v1");
    assert_eq!(get(&b, &fills, "other").await, "v1");
    assert_eq!(fills.load(Ordering::SeqCst), 1);
    assert_eq!(b.l2.counters.hits.load(Ordering::Relaxed), 1);

    // Invalidated through A: once that returns, B fills anew, and A reads B's value.
    for round in 2..6 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        writer.invalidate(&["projects"]).await;
        let fresh: &'static str = Box::leak(format!("v{round}").into_boxed_str());
        assert_eq!(get(reader, &fills, fresh).await, fresh, "round {round}");
        assert_eq!(get(writer, &fills, "other").await, fresh, "round {round}");
        assert_eq!(fills.load(Ordering::SeqCst), round, "round {round}");
    }
    // Another tag's invalidation leaves the value alone.
    a.invalidate(&["users"]).await;
    assert_eq!(get(&b, &fills, "other").await, "v5");
    assert_eq!(fills.load(Ordering::SeqCst), 5);

    // A closes: B, once it heard it, need not wait out its silence to serve on.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.l2.peer_count() == 0 {
        assert!(Instant::now() < deadline, "A was never heard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.l2.peer_count() > 0 {
        assert!(Instant::now() < deadline, "the goodbye never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(b.serving());
    assert_eq!(get(&b, &fills, "other").await, "v5");
    assert_eq!(fills.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_every_call_fills_and_nothing_fails() {
    let mut redis = Redis::start().await.unwrap();
    let a = start(&redis).await;
    let fills = AtomicUsize::new(0);
    assert_eq!(get(&a, &fills, "v1").await, "v1");
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.serving() {
        assert!(Instant::now() < deadline, "the channel never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not served from memory either: invalidations could be missed now.
    assert_eq!(get(&a, &fills, "v2").await, "v2");
    assert_eq!(get(&a, &fills, "v3").await, "v3");
    a.invalidate(&["projects"]).await;
    assert_eq!(fills.load(Ordering::SeqCst), 3);
}

/// A TCP forwarder to `target` that can be frozen: while `frozen`, nothing passes in
/// either direction and the connections stay open — a network partition as the
/// cut-off side sees it.
async fn forwarder(target: u16, frozen: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, frozen.clone()));
            tokio::spawn(pump(sr, cw, frozen.clone()));
        }
    });
    port
}

async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_cut_off_from_redis_stops_serving_before_a_writer_returns() {
    let redis = Redis::start().await.unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let port = forwarder(redis.port(), frozen.clone()).await;
    let a = start(&redis).await;
    let b = start_at(format!("redis://127.0.0.1:{port}")).await;
    let fills = AtomicUsize::new(0);
    assert_eq!(get(&b, &fills, "v1").await, "v1");
    assert_eq!(get(&a, &fills, "other").await, "v1");
    assert_eq!(fills.load(Ordering::SeqCst), 1);

    // B's link to Redis freezes (its connections stay open: Redis still counts it as
    // a subscriber), then A invalidates: B never confirms, and A returns only once
    // B's lease is over.
    frozen.store(true, Ordering::SeqCst);
    let (waits, waited_us) = (
        a.l2.counters.ack_waits.load(Ordering::Relaxed),
        a.l2.counters.ack_wait_us.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    a.invalidate(&["projects"]).await;
    let blocked = started.elapsed();
    assert!(a.l2.counters.ack_timeouts.load(Ordering::Relaxed) >= 1);
    // The wait is counted: at least the lease (800 ms with a 100 ms timeout), at most
    // the time the call took.
    assert_eq!(a.l2.counters.ack_waits.load(Ordering::Relaxed), waits + 1);
    let waited = a.l2.counters.ack_wait_us.load(Ordering::Relaxed) - waited_us;
    assert!(
        (600_000..=blocked.as_micros() as u64).contains(&waited),
        "waited {waited} µs, blocked {blocked:?}"
    );
    // B no longer serves its stale copy: it fills (and Redis can't be asked).
    assert!(
        !b.serving(),
        "B still serving {:?} after A's write",
        started.elapsed()
    );
    assert_eq!(get(&b, &fills, "v2").await, "v2");
    frozen.store(false, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_back_in_time_never_validates_a_stale_value() {
    let redis = Redis::start().await.unwrap();
    let (a, b) = (start(&redis).await, start(&redis).await);
    let fills = AtomicUsize::new(0);
    assert_eq!(get(&a, &fills, "v1").await, "v1");
    assert_eq!(get(&b, &fills, "other").await, "v1");
    // Another value at the same version, stored by A.
    a.get_or_set(
        key("SELECT count(*) FROM projects"),
        &["projects"],
        TTL,
        || async { Ok::<_, ()>(Bytes::from_static(b"stale")) },
    )
    .await
    .unwrap();
    // The version in Redis the value "v1" was stored at.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let version_key = "pgopt:{pgopt}v:projects";
    let at: u64 = redis::cmd("GET")
        .arg(version_key)
        .query_async(&mut conn)
        .await
        .unwrap();

    // A write through A; then Redis loses it, as a failover to a replica that had not
    // replicated the increment would: the version is back where "v1" was stored.
    a.invalidate(&["projects"]).await;
    let () = redis::cmd("SET")
        .arg(version_key)
        .arg(at)
        .query_async(&mut conn)
        .await
        .unwrap();
    // B saw the newer version: "v1", though it matches Redis again, is refused.
    assert_eq!(get(&b, &fills, "v2").await, "v2");
    assert_eq!(fills.load(Ordering::SeqCst), 2);
    assert_eq!(b.l2.counters.stale.load(Ordering::Relaxed), 1);
    assert_eq!(
        b.l2.counters.hits.load(Ordering::Relaxed),
        1,
        "the refused one is no hit"
    );
    // …and B moves Redis past it: other values stored at the old version (the one
    // under another key here) no longer match, even for a process that never saw the
    // newer version.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: u64 = redis::cmd("GET")
            .arg(version_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if now > at + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "still at {now} (was {at})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = start(&redis).await;
    let value = c
        .get_or_set(
            key("SELECT count(*) FROM projects"),
            &["projects"],
            TTL,
            || async { Ok::<_, ()>(Bytes::from_static(b"fresh")) },
        )
        .await
        .unwrap();
    assert_eq!(value, "fresh");
}

/// pgopt's own Redis client (a plain `redis://` URL) logs in as a user, selects the
/// database the URL names, and loads its scripts again when Redis forgot them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_a_database_and_forgotten_scripts() {
    let redis = Redis::start().await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">s@cret pass", "~*", "&*", "+@all"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = format!("redis://app:s%40cret%20pass@127.0.0.1:{}/3", redis.port());
    let (a, b) = (start_at(url.clone()).await, start_at(url).await);
    let fills = AtomicUsize::new(0);
    assert_eq!(get(&a, &fills, "v1").await, "v1");
    assert_eq!(get(&b, &fills, "other").await, "v1", "shared through Redis");
    // The keys are in database 3, not 0.
    let in_db0: Vec<String> = redis::cmd("KEYS")
        .arg("pgopt:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(in_db0.is_empty(), "{in_db0:?}");
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    a.invalidate(&["projects"]).await;
    assert_eq!(get(&b, &fills, "v2").await, "v2", "the write reached B");
    assert_eq!(fills.load(Ordering::SeqCst), 2);
    assert_eq!(a.l2.counters.publish_failures.load(Ordering::Relaxed), 0);

    // A wrong password: never serving, every call fills, nothing fails.
    let wrong = format!("redis://app:nope@127.0.0.1:{}/3", redis.port());
    let c = SharedCache::start(
        L1Config::default(),
        RedisConfig {
            url: wrong,
            ..RedisConfig::default()
        },
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!c.serving());
    assert_eq!(get(&c, &fills, "v3").await, "v3");
    assert_eq!(get(&c, &fills, "v4").await, "v4");
}

/// A value of several MB (written by a task of its own on pgopt's Redis connection)
/// goes through Redis whole, and small calls behind it still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_value_is_shared_whole() {
    let redis = Redis::start().await.unwrap();
    let (a, b) = (start(&redis).await, start(&redis).await);
    // Incompressible: lz4 leaves it at its size.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let big: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let big = Bytes::from(big);
    let fill = |v: Bytes| move || async move { Ok::<_, ()>(v) };
    let k = || key("SELECT * FROM big");
    assert_eq!(
        a.get_or_set(k(), &["big"], TTL, fill(big.clone()))
            .await
            .unwrap(),
        big
    );
    let got = b
        .get_or_set(k(), &["big"], TTL, fill(Bytes::from_static(b"refilled")))
        .await
        .unwrap();
    assert!(got == big, "B read another value ({} bytes)", got.len());
    let fills = AtomicUsize::new(0);
    assert_eq!(get(&a, &fills, "small").await, "small");
    assert_eq!(get(&b, &fills, "other").await, "small");
}

/// A value read from Redis lives in memory no longer than it had left in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_from_redis_lives_no_longer_in_memory_than_it_had_left_there() {
    let redis = Redis::start().await.unwrap();
    let (a, b) = (start(&redis).await, start(&redis).await);
    let fills = AtomicUsize::new(0);
    // A stores it for 3 s; B, which would keep it a minute, reads it from Redis.
    assert_eq!(
        get_for(&a, &fills, "v1", Duration::from_secs(3)).await,
        "v1"
    );
    assert_eq!(get(&b, &fills, "other").await, "v1");
    assert_eq!(get(&b, &fills, "other").await, "v1", "from memory");
    assert_eq!(fills.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(
        get(&b, &fills, "v2").await,
        "v2",
        "gone from memory and Redis"
    );
    assert_eq!(fills.load(Ordering::SeqCst), 2);
}
