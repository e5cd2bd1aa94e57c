//! Recording and snapshots of `Insight`, through the public API.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use pgopt_insight::{
    Insight, InsightConfig, OrderBy, ParamMode, ParamRef, QueryStats, Route, Sample, Sharding,
};

const MODES: [Sharding; 2] = [Sharding::Thread, Sharding::Fingerprint];

fn insight(config: InsightConfig) -> Insight {
    Insight::new(config).unwrap_or_else(|e| panic!("config: {e}"))
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// Expected HDR error bound for a value recorded in µs at `sigfig` digits.
fn hdr_close(actual_ms: f64, expected_us: u64, sigfig: u8) -> bool {
    let expected_ms = expected_us as f64 / 1000.0;
    let tolerance = expected_ms * 2.0 * 10f64.powi(-i32::from(sigfig)) + 0.001;
    (actual_ms - expected_ms).abs() <= tolerance
}

#[test]
fn totals_add_up_across_threads_and_shards() {
    for sharding in MODES {
        totals_add_up(sharding, 0);
        totals_add_up(sharding, 3);
    }
}

fn totals_add_up(sharding: Sharding, shards: usize) {
    let store = Arc::new(insight(InsightConfig {
        sharding,
        shards,
        ..InsightConfig::default()
    }));
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 10_000;
    const FPS: u64 = 37;
    thread::scope(|scope| {
        for t in 0..THREADS {
            let store = &store;
            scope.spawn(move || {
                // Two users, so each fingerprint has two (db, user) entries.
                let h = store.session("app", if t % 2 == 0 { "alice" } else { "bob" });
                for i in 0..PER_THREAD {
                    let fp = 1000 + (i % FPS);
                    let mut s = Sample::new(us(100 + i % 7), 3);
                    if i % 10 == 0 {
                        s.error = Some(*b"23505");
                        s.rows = 0;
                    }
                    s.cache_hit = i % 4 == 0;
                    s.route = Some(if i % 3 == 0 {
                        Route::Primary
                    } else {
                        Route::Replica(1)
                    });
                    store.record(&h.key(fp), &s, || format!("SELECT {fp}"));
                }
            });
        }
    });

    let snap = store.snapshot();
    assert_eq!(snap.len(), FPS as usize);
    assert_eq!(store.snapshot_by_client().len(), 2 * FPS as usize);
    let one = store.get(1000).unwrap_or_else(|| panic!("fp 1000"));
    assert_eq!(one.by_client.len(), 2);
    assert_eq!(
        one.total.calls,
        one.by_client.iter().map(|c| c.calls).sum::<u64>()
    );
    let calls: u64 = snap.iter().map(|s| s.calls).sum();
    let errors: u64 = snap.iter().map(|s| s.errors).sum();
    let rows: u64 = snap.iter().map(|s| s.rows).sum();
    let hits: u64 = snap.iter().map(|s| s.cache_hits).sum();
    let total = THREADS * PER_THREAD;
    assert_eq!(calls, total);
    assert_eq!(errors, total / 10);
    assert_eq!(rows, (total - total / 10) * 3);
    assert_eq!(hits, total / 4);
    let primary: u64 = snap
        .iter()
        .flat_map(|s| &s.routed)
        .filter(|r| r.route == Route::Primary)
        .map(|r| r.count)
        .sum();
    let replica: u64 = snap
        .iter()
        .flat_map(|s| &s.routed)
        .filter(|r| r.route == Route::Replica(1))
        .map(|r| r.count)
        .sum();
    assert_eq!(primary, THREADS * PER_THREAD.div_ceil(3));
    assert_eq!(primary + replica, total);
    for s in &snap {
        assert_eq!(s.errors_by_code.len(), 1);
        assert_eq!(s.errors_by_code[0].sqlstate, "23505");
        assert_eq!(s.errors_by_code[0].count, s.errors);
        assert_eq!(s.query, format!("SELECT {}", s.fingerprint));
        assert_eq!(s.min_time_ms, 0.1);
        assert_eq!(s.max_time_ms, 0.106);
    }
}

#[test]
fn percentiles_follow_a_known_distribution() {
    for sigfig in [2u8, 3] {
        let store = insight(InsightConfig {
            histogram_sigfig: sigfig,
            ..InsightConfig::default()
        });
        let a = store.session("app", "alice");
        let b = store.session("app", "bob");
        // 1..=10_000 µs once each, split between two users: the merged
        // histogram is the uniform distribution.
        for v in 1..=10_000u64 {
            let h = if v % 2 == 0 { a } else { b };
            store.record(&h.key(7), &Sample::new(us(v), 1), || "SELECT 1");
        }
        let stats = store
            .get(7)
            .unwrap_or_else(|| panic!("fingerprint 7 recorded"));
        let t = &stats.total;
        assert_eq!(t.calls, 10_000);
        assert!(
            hdr_close(t.p50_ms, 5_000, sigfig),
            "p50 {} @{sigfig}",
            t.p50_ms
        );
        assert!(
            hdr_close(t.p95_ms, 9_500, sigfig),
            "p95 {} @{sigfig}",
            t.p95_ms
        );
        assert!(
            hdr_close(t.p99_ms, 9_900, sigfig),
            "p99 {} @{sigfig}",
            t.p99_ms
        );
        assert!(hdr_close(t.p999_ms, 9_990, sigfig), "p99.9 {}", t.p999_ms);
        assert_eq!(t.min_time_ms, 0.001);
        assert_eq!(t.max_time_ms, 10.0);
        assert!((t.mean_time_ms - 5.0005).abs() < 1e-9);
        assert!((t.total_time_ms - 50_005.0).abs() < 1e-6);

        assert_eq!(stats.by_client.len(), 2);
        assert_eq!(stats.by_client[0].user.as_deref(), Some("alice"));
        assert_eq!(stats.by_client[0].database.as_deref(), Some("app"));
        assert_eq!(stats.by_client[0].min_time_ms, 0.002);
        assert_eq!(stats.by_client[1].user.as_deref(), Some("bob"));
        assert_eq!(stats.by_client[1].max_time_ms, 9.999);
        assert_eq!(stats.by_client[0].calls + stats.by_client[1].calls, 10_000);
    }
}

#[test]
fn skewed_latencies_give_skewed_percentiles() {
    let store = insight(InsightConfig::default());
    let h = store.session("db", "u");
    // 98% at 1 ms, 2% at 250 ms: p50 1 ms, p95 1 ms, p99 250 ms.
    for i in 0..10_000u64 {
        let d = if i % 50 == 0 { 250_000 } else { 1_000 };
        store.record(&h.key(1), &Sample::new(us(d), 0), || "q");
    }
    // Over an hour is clamped in the histogram, kept exactly in max/total.
    store.record(
        &h.key(1),
        &Sample::new(Duration::from_secs(7200), 0),
        || "q",
    );
    let s = &store.snapshot()[0];
    assert!(hdr_close(s.p50_ms, 1_000, 2));
    assert!(hdr_close(s.p95_ms, 1_000, 2));
    assert!(hdr_close(s.p99_ms, 250_000, 2), "p99 {}", s.p99_ms);
    assert_eq!(s.max_time_ms, 7_200_000.0);
    assert!(s.p999_ms <= 3_600_000.0 * 1.01);
}

#[test]
fn memory_is_bounded_and_eviction_keeps_the_costly() {
    for sharding in MODES {
        bounded_keeping_the_costly(sharding);
    }
}

fn bounded_keeping_the_costly(sharding: Sharding) {
    let store = insight(InsightConfig {
        max_fingerprints: 5000,
        sharding,
        ..InsightConfig::default()
    });
    let h = store.session("app", "app");
    // 100 heavy fingerprints first, so they are old when eviction starts.
    for fp in 0..100u64 {
        store.record(
            &h.key(fp),
            &Sample::new(Duration::from_millis(500), 1),
            || "heavy",
        );
    }
    for fp in 100..100_100u64 {
        store.record(&h.key(fp), &Sample::new(us(1 + fp % 50), 1), || "light");
        if fp % 1000 == 0 {
            assert!(store.len() <= 5000, "{} entries", store.len());
        }
    }
    let status = store.status();
    assert!(status.entries <= 5000);
    assert!(
        status.entries >= 4500,
        "eviction freed too much: {status:?}"
    );
    assert_eq!(status.evictions, 100_100 - status.entries as u64);
    let snap = store.snapshot();
    assert_eq!(snap.len(), status.entries);
    let heavy = snap.iter().filter(|s| s.query == "heavy").count();
    assert_eq!(heavy, 100, "every heavy fingerprint survives");
    let top = store.top(100, OrderBy::TotalTime);
    assert!(top.iter().all(|s| s.query == "heavy"));
}

#[test]
fn tiny_capacity_still_bounded() {
    let store = insight(InsightConfig {
        max_fingerprints: 3,
        shards: 8,
        ..InsightConfig::default()
    });
    let h = store.session("a", "b");
    for fp in 0..1000u64 {
        store.record(&h.key(fp), &Sample::new(us(fp), 1), || "q");
        assert!(store.len() <= 3);
    }
    assert_eq!(store.status().evictions, 997);
}

#[test]
fn concurrent_inserts_stay_bounded() {
    for sharding in MODES {
        let store = insight(InsightConfig {
            max_fingerprints: 500,
            sharding,
            ..InsightConfig::default()
        });
        thread::scope(|scope| {
            for t in 0..8u64 {
                let store = &store;
                scope.spawn(move || {
                    let h = store.session("app", "app");
                    for i in 0..5_000u64 {
                        let fp = t * 1_000_000 + i;
                        store.record(&h.key(fp), &Sample::new(us(1 + i % 9), 1), || "q");
                    }
                });
            }
        });
        let status = store.status();
        assert!(status.entries <= 500, "{status:?}");
        assert_eq!(
            status.evictions + status.entries as u64,
            40_000,
            "{status:?}"
        );
        let calls: u64 = store.snapshot().iter().map(|s| s.calls).sum();
        assert_eq!(calls, status.entries as u64);
    }
}

#[test]
fn reset_clears_everything_and_one_fingerprint() {
    let store = insight(InsightConfig::default());
    let a = store.session("app", "alice");
    let b = store.session("app", "bob");
    for fp in 1..=10u64 {
        store.record(&a.key(fp), &Sample::new(us(10), 1), || "q");
        store.record(&b.key(fp), &Sample::new(us(10), 1), || "q");
    }
    assert_eq!(store.len(), 20);
    assert_eq!(store.reset_fingerprint(3), 2);
    assert_eq!(store.reset_fingerprint(3), 0);
    assert!(store.get(3).is_none());
    assert_eq!(store.len(), 18);
    store.reset();
    assert!(store.is_empty());
    assert!(store.snapshot().is_empty());
    assert_eq!(store.status().evictions, 0);
    // Handles stay valid after a reset.
    store.record(&a.key(1), &Sample::new(us(10), 1), || "q");
    assert_eq!(store.snapshot().len(), 1);
}

#[test]
fn text_is_taken_once_at_first_sight() {
    let store = insight(InsightConfig::default());
    let h = store.session("app", "app");
    let mut calls = 0;
    for _ in 0..5 {
        store.record(&h.key(9), &Sample::new(us(1), 0), || {
            calls += 1;
            "SELECT * FROM t WHERE id = $1"
        });
    }
    assert_eq!(calls, 1);
    assert_eq!(store.snapshot()[0].query, "SELECT * FROM t WHERE id = $1");
}

#[test]
fn first_and_last_seen_track_the_clock() {
    let store = insight(InsightConfig::default());
    let h = store.session("app", "app");
    store.record_at(&h.key(1), &Sample::new(us(1), 0), || "q", 5_000);
    store.record_at(&h.key(1), &Sample::new(us(1), 0), || "q", 9_000);
    store.record_at(&h.key(1), &Sample::new(us(1), 0), || "q", 7_000);
    let s = &store.snapshot()[0];
    assert_eq!((s.first_seen_unix_ms, s.last_seen_unix_ms), (5_000, 9_000));
}

#[test]
fn top_orders_by_each_criterion() {
    let store = insight(InsightConfig::default());
    let h = store.session("app", "app");
    // fp 1: many fast calls; fp 2: few slow; fp 3: errors.
    for _ in 0..100 {
        store.record(&h.key(1), &Sample::new(us(100), 1), || "fast");
    }
    for _ in 0..3 {
        store.record(
            &h.key(2),
            &Sample::new(Duration::from_millis(50), 1),
            || "slow",
        );
    }
    for _ in 0..5 {
        let s = Sample {
            error: Some(*b"40001"),
            ..Sample::new(us(20), 0)
        };
        store.record(&h.key(3), &s, || "failing");
    }
    let first = |o| store.top(1, o)[0].fingerprint;
    assert_eq!(first(OrderBy::TotalTime), 2);
    assert_eq!(first(OrderBy::Calls), 1);
    assert_eq!(first(OrderBy::Mean), 2);
    assert_eq!(first(OrderBy::P99), 2);
    assert_eq!(first(OrderBy::Errors), 3);
    assert_eq!(store.top(10, OrderBy::Calls).len(), 3);

    let metrics = store.top_n_for_metrics(2);
    assert_eq!(metrics.len(), 2);
    assert_eq!(metrics[0].fingerprint, "0000000000000002");
    assert!((metrics[0].total_time_seconds - 0.15).abs() < 1e-9);
}

#[test]
fn error_codes_are_bounded() {
    let store = insight(InsightConfig::default());
    let h = store.session("app", "app");
    for i in 0..20u8 {
        let code = [b'2', b'2', b'0', b'0', b'A' + i];
        let s = Sample {
            error: Some(code),
            ..Sample::new(us(1), 0)
        };
        store.record(&h.key(1), &s, || "q");
    }
    let s = &store.snapshot()[0];
    assert_eq!(s.errors, 20);
    assert_eq!(s.errors_by_code.len(), 9);
    assert_eq!(s.errors_by_code.iter().map(|e| e.count).sum::<u64>(), 20);
    assert!(s
        .errors_by_code
        .iter()
        .any(|e| e.sqlstate == "other" && e.count == 12));
}

fn sampled_params(mode: ParamMode) -> Vec<Vec<String>> {
    let store = insight(InsightConfig {
        params: mode,
        param_samples: 2,
        ..InsightConfig::default()
    });
    let h = store.session("app", "app");
    for i in 0..10 {
        let value = format!("user{i}@example.com");
        let params = [ParamRef::text(&value)];
        let s = Sample {
            params: Some(&params),
            ..Sample::new(us(5), 1)
        };
        store.record(&h.key(1), &s, || "SELECT * FROM u WHERE email = $1");
    }
    store.snapshot().remove(0).sample_params
}

#[test]
fn parameters_are_sampled_per_mode() {
    let redacted = sampled_params(ParamMode::Redacted);
    assert_eq!(redacted.len(), 2);
    assert!(redacted.iter().all(|p| p == &["<text 17 bytes>"]));
    let full = sampled_params(ParamMode::Full);
    assert_eq!(full.len(), 2);
    assert!(full.iter().all(|p| p[0].ends_with("@example.com")));
    // Refreshed at calls 2^k: not only the first two values.
    assert_ne!(full, [["user0@example.com"], ["user1@example.com"]]);
    assert!(sampled_params(ParamMode::Off).is_empty());
}

#[test]
fn lazy_parameters_are_decoded_only_for_the_calls_that_keep_them() {
    let store = insight(InsightConfig {
        params: ParamMode::Full,
        param_samples: 3,
        ..InsightConfig::default()
    });
    let h = store.session("app", "app");
    let values: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
    let mut decoded = Vec::new();
    for (i, value) in values.iter().enumerate() {
        store.record_at_lazy(
            &h.key(1),
            &Sample::new(us(5), 1),
            || {
                decoded.push(i + 1);
                Some(vec![ParamRef::text(value)])
            },
            || "SELECT $1",
            0,
        );
    }
    // The first three calls, then calls 4, 8, 16, 32 and 64 (refreshes).
    assert_eq!(decoded, [1, 2, 3, 4, 8, 16, 32, 64]);
    let kept = store.snapshot().remove(0).sample_params;
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.contains(&vec!["v63".to_string()]), "{kept:?}");
    // Off: never decoded.
    let off = insight(InsightConfig {
        params: ParamMode::Off,
        ..InsightConfig::default()
    });
    let mut calls = 0;
    for _ in 0..10 {
        off.record_at_lazy(
            &h.key(1),
            &Sample::new(us(5), 1),
            || {
                calls += 1;
                None
            },
            || "SELECT $1",
            0,
        );
    }
    assert_eq!(calls, 0);
}

#[test]
fn snapshot_serializes_and_round_trips() {
    let store = insight(InsightConfig::default());
    let h = store.session("app", "alice");
    let s = Sample {
        route: Some(Route::Replica(0)),
        ..Sample::new(us(1500), 2)
    };
    store.record(&h.key(0xdead_beef), &s, || "SELECT $1");
    let json = serde_json::to_value(store.snapshot_by_client()).unwrap_or_default();
    assert_eq!(json[0]["fingerprint"], "00000000deadbeef");
    assert_eq!(json[0]["user"], "alice");
    assert_eq!(json[0]["routed"][0]["route"]["replica"], 0);
    let back: Vec<QueryStats> = serde_json::from_value(json).unwrap_or_default();
    assert_eq!(back, store.snapshot_by_client());
}

#[test]
fn invalid_config_is_rejected_with_the_key() {
    for config in [
        InsightConfig {
            max_fingerprints: 0,
            ..InsightConfig::default()
        },
        InsightConfig {
            histogram_sigfig: 6,
            ..InsightConfig::default()
        },
        InsightConfig {
            evict_percent: 0,
            ..InsightConfig::default()
        },
    ] {
        let err = Insight::new(config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("invalid insight setting"), "{err}");
    }
}

#[test]
fn histogram_memory_per_entry() {
    // Documents the figure behind the `histogram_sigfig` default.
    for (sigfig, max_bytes) in [(2u8, 8 * 1024), (3, 40 * 1024)] {
        let store = insight(InsightConfig {
            histogram_sigfig: sigfig,
            ..InsightConfig::default()
        });
        let h = store.session("a", "b");
        store.record(&h.key(1), &Sample::new(us(50), 0), || "q");
        store.record(
            &h.key(1),
            &Sample::new(Duration::from_millis(100), 0),
            || "q",
        );
        let bytes = store.histogram_bytes();
        assert!(bytes <= max_bytes, "sigfig {sigfig}: {bytes} bytes");
        eprintln!("sigfig {sigfig}: {bytes} histogram bytes for a 100 ms max");
    }
}
