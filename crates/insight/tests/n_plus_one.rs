//! N+1 detection with injected timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgopt_insight::{ClientInfo, NPlusOneConfig, NPlusOneDetector, NPlusOneKind, NPlusOneSession};

const T0: u64 = 1_700_000_000_000;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(T0 + ms)
}

fn detector() -> NPlusOneDetector {
    // The window these tests were written for (the default is shorter).
    NPlusOneDetector::new(NPlusOneConfig {
        keep_last: 5,
        window_ms: 1000,
        ..NPlusOneConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn session(d: &NPlusOneDetector) -> NPlusOneSession {
    d.session(ClientInfo {
        database: "shop".into(),
        user: "web".into(),
        address: "192.0.2.10:40000".parse().ok(),
    })
}

fn text(fp: u64) -> String {
    format!("SELECT * FROM items WHERE id = $1 /* {fp} */")
}

#[test]
fn loop_in_a_transaction_is_one_finding_with_the_full_count() {
    let d = detector();
    let mut s = session(&d);
    s.observe(1, false, at(0), || "BEGIN");
    let mut made = 0;
    for i in 0..50 {
        if s.observe(42, true, at(i), || text(42)) {
            made += 1;
        }
    }
    s.observe(2, false, at(60), || "COMMIT");
    assert_eq!(made, 1, "deduplicated within the transaction");
    let f = d.findings();
    assert_eq!(f.len(), 1);
    let f = &f[0];
    assert_eq!(f.kind, NPlusOneKind::Transaction);
    assert_eq!(f.count, 50);
    assert_eq!(f.fingerprint, "000000000000002a");
    assert_eq!(f.query, text(42));
    assert_eq!((f.database.as_str(), f.user.as_str()), ("shop", "web"));
    assert_eq!(f.client_addr.as_deref(), Some("192.0.2.10:40000"));
    assert_eq!((f.first_unix_ms, f.last_unix_ms), (T0, T0 + 49));
    assert_eq!(d.total_findings(), 1);
}

#[test]
fn interleaved_loop_is_found() {
    let d = detector();
    let mut s = session(&d);
    // for order in orders { select items; insert log with a distinct shape }
    for i in 0..50u64 {
        s.observe(42, true, at(i), || text(42));
        s.observe(10_000 + i, true, at(i), || text(10_000 + i));
        if i % 3 == 0 {
            s.observe(7, true, at(i), || text(7));
        }
    }
    let f = d.findings();
    assert_eq!(f.len(), 2, "{f:?}");
    let items = f.iter().find(|f| f.fingerprint == "000000000000002a");
    assert_eq!(items.map(|f| f.count), Some(50));
    // fp 7 ran 17 times: also over the threshold of 10.
    assert!(f
        .iter()
        .any(|f| f.fingerprint == "0000000000000007" && f.count == 17));
}

#[test]
fn different_queries_are_not_flagged() {
    let d = detector();
    let mut s = session(&d);
    for i in 0..50u64 {
        s.observe(i, true, at(i), || text(i));
    }
    for i in 0..50u64 {
        s.observe(100 + i, false, at(1000 + i), || text(i));
    }
    assert!(d.findings().is_empty());
    assert_eq!(d.total_findings(), 0);
}

#[test]
fn below_threshold_in_a_transaction_is_not_flagged() {
    let d = detector();
    let mut s = session(&d);
    for i in 0..9 {
        s.observe(42, true, at(i), || text(42));
    }
    assert!(d.findings().is_empty());
    // The tenth makes it.
    assert!(s.observe(42, true, at(9), || text(42)));
    assert_eq!(d.findings()[0].count, 10);
}

#[test]
fn each_transaction_is_its_own_finding() {
    let d = detector();
    let mut s = session(&d);
    for txn in 0..3u64 {
        for i in 0..12 {
            s.observe(42, true, at(txn * 100 + i), || text(42));
        }
        s.end_transaction();
    }
    let f = d.findings();
    assert_eq!(f.len(), 3);
    assert!(f.iter().all(|f| f.count == 12));
    // Newest first, distinct ids.
    assert!(f[0].id > f[1].id && f[1].id > f[2].id);
    // Back-to-back transactions without end_transaction() would merge; the
    // statement outside a transaction also separates them.
    let mut s = session(&d);
    for i in 0..6 {
        s.observe(43, true, at(i), || text(43));
    }
    s.observe(1, false, at(7), || "SELECT 1");
    for i in 0..6 {
        s.observe(43, true, at(10 + i), || text(43));
    }
    assert_eq!(
        d.total_findings(),
        3,
        "6 + 6 in two transactions is no finding"
    );
}

#[test]
fn rapid_burst_outside_a_transaction_is_found() {
    let d = detector();
    let mut s = session(&d);
    for i in 0..30u64 {
        s.observe(42, false, at(i * 20), || text(42));
    }
    let f = d.findings();
    assert_eq!(f.len(), 1, "one finding per burst");
    assert_eq!(f[0].kind, NPlusOneKind::Burst);
    assert_eq!(f[0].count, 30);
    assert_eq!(f[0].first_unix_ms, T0);
    assert_eq!(f[0].last_unix_ms, T0 + 29 * 20);
}

#[test]
fn same_count_spread_beyond_the_window_is_not_found() {
    let d = detector();
    let mut s = session(&d);
    // 30 executions, 150 ms apart: never 10 within one second.
    for i in 0..30u64 {
        s.observe(42, false, at(i * 150), || text(42));
    }
    assert!(d.findings().is_empty());
    // Exactly 10 within 1000 ms (first to last) is a finding.
    let mut s = session(&d);
    for i in 0..10u64 {
        s.observe(43, false, at(10_000 + i * 111), || text(43));
    }
    assert_eq!(d.findings().len(), 1);
}

#[test]
fn burst_across_a_window_boundary_is_found() {
    let d = detector();
    let mut s = session(&d);
    // A lone execution, then a burst of 10 straddling one second later.
    s.observe(42, false, at(0), || text(42));
    for i in 0..10u64 {
        s.observe(42, false, at(950 + i * 10), || text(42));
    }
    assert_eq!(d.findings().len(), 1);
}

#[test]
fn bursts_separated_by_a_pause_are_separate_findings() {
    let d = detector();
    let mut s = session(&d);
    for burst in 0..2u64 {
        for i in 0..10u64 {
            s.observe(42, false, at(burst * 5000 + i), || text(42));
        }
    }
    assert_eq!(d.total_findings(), 2);
}

#[test]
fn findings_are_bounded_to_the_most_recent() {
    let d = detector();
    for fp in 0..8u64 {
        let mut s = session(&d);
        for i in 0..10 {
            s.observe(fp, true, at(i), || text(fp));
        }
    }
    let f = d.findings();
    assert_eq!(f.len(), 5);
    assert_eq!(d.total_findings(), 8);
    assert_eq!(f[0].fingerprint, "0000000000000007");
    d.clear();
    assert!(d.findings().is_empty());
}

#[test]
fn sessions_are_independent() {
    let d = detector();
    let mut a = session(&d);
    let mut b = session(&d);
    for i in 0..9 {
        a.observe(42, true, at(i), || text(42));
        b.observe(42, true, at(i), || text(42));
    }
    assert!(
        d.findings().is_empty(),
        "9 + 9 in two sessions is no finding"
    );
}

#[test]
fn invalid_threshold_is_rejected() {
    let err = NPlusOneDetector::new(NPlusOneConfig {
        threshold: 1,
        ..NPlusOneConfig::default()
    });
    assert!(err.is_err());
}

#[test]
fn a_reload_takes_effect_in_running_sessions() {
    let d = detector();
    let mut s = session(&d);
    // A burst of 12 under threshold 20: nothing yet.
    d.set_config(NPlusOneConfig {
        threshold: 20,
        keep_last: 5,
        window_ms: 1000,
        ..NPlusOneConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..12 {
        assert!(!s.observe(42, false, at(i), || text(42)));
    }
    // Threshold lowered mid-burst: the session's ring of times is longer than the
    // new threshold; the next executions still count by the new one.
    d.set_config(NPlusOneConfig {
        threshold: 3,
        keep_last: 5,
        window_ms: 1000,
        ..NPlusOneConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let made = (12..15)
        .filter(|&i| s.observe(42, false, at(i), || text(42)))
        .count();
    assert_eq!(made, 1, "threshold 3 finds the burst within 3 executions");
    // More findings than a lowered keep_last: only the newest are kept.
    for fp in 100..106u64 {
        let mut s = session(&d);
        for i in 0..3 {
            s.observe(fp, true, at(i), || text(fp));
        }
    }
    assert_eq!(d.findings().len(), 5);
    d.set_config(NPlusOneConfig {
        threshold: 3,
        keep_last: 2,
        window_ms: 1000,
        ..NPlusOneConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut s = session(&d);
    for i in 0..3 {
        s.observe(200, true, at(i), || text(200));
    }
    let kept = d.findings();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[0].fingerprint, format!("{:016x}", 200));
    // Turned off: nothing counts.
    d.set_config(NPlusOneConfig {
        enabled: false,
        ..NPlusOneConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut s = session(&d);
    assert!((0..50).all(|i| !s.observe(300, true, at(i), || text(300))));
}
