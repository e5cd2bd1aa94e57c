//! The cache's guarantees, without a server: keys never collide, a write committed
//! during a fill leaves its result unstored, memory stays bounded, one fill per key.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pgopt_cache::{Key, KeyBuilder, L1Config, ResultCache};

fn key(sql: &str) -> Key {
    KeyBuilder::new()
        .part(b'd', b"app")
        .part(b'r', b"alice")
        .part(b'q', sql.as_bytes())
        .finish()
}

const TTL: Duration = Duration::from_secs(60);

fn cache() -> ResultCache {
    ResultCache::new(L1Config::default())
}

#[test]
fn a_fill_is_served_until_a_table_it_read_is_written() {
    let c = cache();
    let k = key("SELECT * FROM a JOIN b USING (id)");
    let ticket = c.begin_fill(k.clone(), &["public.a", "public.b"]);
    assert!(c.complete_fill(ticket, Bytes::from_static(b"rows"), TTL));
    assert_eq!(c.get(&k).as_deref(), Some(&b"rows"[..]));
    let other = key("SELECT * FROM c");
    let ticket = c.begin_fill(other.clone(), &["public.c"]);
    c.complete_fill(ticket, Bytes::from_static(b"c rows"), TTL);

    c.invalidate(&["public.b"]);
    assert_eq!(c.get(&k), None, "b changed");
    assert!(c.get(&other).is_some(), "c did not");
    assert_eq!(c.l1.stats().stale, 1);
}

#[test]
fn a_write_committed_during_a_fill_leaves_its_result_unstored() {
    let c = cache();
    let k = key("SELECT * FROM slow_view");
    // Versions are taken before the query runs…
    let ticket = c.begin_fill(k.clone(), &["public.t"]);
    // …a write commits while it runs…
    c.invalidate(&["public.t"]);
    // …so its (possibly old) result is not kept.
    assert!(!c.complete_fill(ticket, Bytes::from_static(b"old"), TTL));
    assert_eq!(c.get(&k), None);
}

#[test]
fn two_keys_in_one_bucket_never_share_an_entry() {
    let c = cache();
    let a = key("SELECT 1").with_hash(42);
    let b = key("SELECT 2").with_hash(42);
    let ticket = c.begin_fill(a.clone(), &["t"]);
    c.complete_fill(ticket, Bytes::from_static(b"one"), TTL);
    assert_eq!(c.get(&b), None, "b's lookup finds a's entry and refuses it");
    assert_eq!(c.get(&a).as_deref(), Some(&b"one"[..]));
}

#[test]
fn entries_expire_after_their_ttl() {
    let c = cache();
    let k = key("SELECT now_ish()");
    let ticket = c.begin_fill(k.clone(), &["t"]);
    c.complete_fill(ticket, Bytes::from_static(b"x"), Duration::from_millis(50));
    assert!(c.get(&k).is_some());
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(c.get(&k), None);
}

#[test]
fn memory_stays_within_max_bytes() {
    let c = ResultCache::new(L1Config {
        max_bytes: 1 << 20,
        ..L1Config::default()
    });
    let value = Bytes::from(vec![7u8; 10_000]);
    for i in 0..2_000 {
        let k = key(&format!("SELECT * FROM t WHERE id = {i}"));
        let ticket = c.begin_fill(k, &["t"]);
        c.complete_fill(ticket, value.clone(), TTL);
    }
    let stats = c.l1.stats();
    assert!(stats.bytes <= 1 << 20, "{stats:?}");
    assert!(stats.entries < 2_000, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_one_key_make_one_fill() {
    let c = Arc::new(cache());
    let fills = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, fills) = (c.clone(), fills.clone());
        tasks.push(tokio::spawn(async move {
            c.get_or_set(key("SELECT hot"), &["t"], TTL, || async {
                fills.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, String>(Bytes::from_static(b"hot rows"))
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Bytes::from_static(b"hot rows"));
    }
    assert_eq!(fills.load(Ordering::SeqCst), 1);
    assert!(c.flights.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_is_not_cached_and_the_waiters_fill_again() {
    let c = Arc::new(cache());
    let fills = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, fills) = (c.clone(), fills.clone());
        tasks.push(tokio::spawn(async move {
            c.get_or_set(key("SELECT flaky"), &["t"], TTL, || async {
                let n = fills.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                if n == 0 {
                    Err("server gone".to_string())
                } else {
                    Ok(Bytes::from_static(b"fine"))
                }
            })
            .await
        }));
    }
    let results: Vec<_> = futures_join(tasks).await;
    let errors = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(
        errors, 1,
        "only the failed leader sees its error: {results:?}"
    );
    assert_eq!(
        fills.load(Ordering::SeqCst),
        2,
        "one failed fill, one good one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_stop_waiting_for_a_hung_leader() {
    let mut c = cache();
    c.flight_timeout = Duration::from_millis(100);
    let c = Arc::new(c);
    let leader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_set(key("SELECT stuck"), &["t"], TTL, || async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, String>(Bytes::new())
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = std::time::Instant::now();
    let got = c
        .get_or_set(key("SELECT stuck"), &["t"], TTL, || async {
            Ok::<_, String>(Bytes::from_static(b"own"))
        })
        .await
        .unwrap();
    assert_eq!(got, Bytes::from_static(b"own"));
    assert!(started.elapsed() < Duration::from_secs(2));
    leader.abort();
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn get_or_set_and_evictions_count_per_table() {
    // Smaller than any entry: whatever is stored is dropped for space.
    let tiny = ResultCache::new(L1Config {
        max_bytes: 1,
        ..L1Config::default()
    });
    let c = cache();
    for cache in [&c, &tiny] {
        for _ in 0..3 {
            let got = cache
                .get_or_set(key("SELECT * FROM t JOIN u"), &["t", "u"], TTL, || async {
                    Ok::<_, ()>(Bytes::from_static(b"rows"))
                })
                .await;
            assert_eq!(got.as_deref(), Ok(&b"rows"[..]));
            // Evictions happen in moka's maintenance: now, not at some later write.
            cache.l1.run_pending_tasks();
        }
        cache.invalidate(&["u"]);
        cache.l1.run_pending_tasks();
    }
    let figures = |cache: &ResultCache| {
        cache
            .tables
            .rows()
            .iter()
            .map(|r| (r.table.clone(), [r.hits, r.misses, r.stored, r.evictions]))
            .collect::<Vec<_>>()
    };
    let both = |f: [u64; 4]| vec![("t".to_string(), f), ("u".to_string(), f)];
    assert_eq!(figures(&c), both([2, 1, 1, 0]));
    assert_eq!(figures(&tiny), both([0, 3, 3, 3]));
    assert_eq!(c.tables.rows()[1].invalidations, [1, 0, 0]);
    assert_eq!(c.tables.rows()[0].invalidations, [0, 0, 0]);
}
