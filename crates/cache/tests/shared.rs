//! The library cache with Redis: two processes' worth of `SharedCache` on one real
//! Redis server share values, and an invalidation through one reaches the other
//! before it returns.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgopt_cache::{Key, KeyBuilder, L1Config, RedisConfig, SharedCache};
use pgopt_embedded::Redis;

const TTL: Duration = Duration::from_secs(60);

fn key(text: &str) -> Key {
    KeyBuilder::new().part(b'q', text.as_bytes()).finish()
}

async fn start(redis: &Redis) -> SharedCache {
    let cache = SharedCache::start(
        L1Config::default(),
        RedisConfig {
            url: redis.url(),
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
    cache
        .get_or_set(
            key("SELECT * FROM projects"),
            &["projects"],
            TTL,
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
