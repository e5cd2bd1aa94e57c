//! The slow-query log: threshold, one JSON line per entry, parameter modes.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use parking_lot::Mutex;
use pgopt_insight::{ParamMode, ParamRef, SlowEntry, SlowLog, SlowLogConfig, SlowStatement};

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn log(mode: ParamMode) -> (SlowLog, Shared) {
    let out = Shared::default();
    let log = SlowLog::new(SlowLogConfig {
        threshold_ms: 100,
        params: mode,
        keep_last: 3,
        ..SlowLogConfig::default()
    })
    .with_writer(Box::new(out.clone()));
    (log, out)
}

fn statement<'a>(ms: u64, params: &'a [ParamRef<'a>]) -> SlowStatement<'a> {
    SlowStatement {
        fingerprint: 0x00ab_cdef_0123_4567,
        query: "SELECT * FROM users WHERE email = $1",
        duration: Duration::from_millis(ms),
        rows: 1,
        database: "app",
        user: "alice",
        client_addr: "10.0.0.7:51234".parse::<SocketAddr>().ok(),
        params,
        error: None,
        at: UNIX_EPOCH + Duration::from_millis(1_735_632_930_042),
    }
}

const PARAMS: [ParamRef<'static>; 1] = [ParamRef {
    value: Some(b"bob@example.org"),
    format: pgopt_insight::ParamFormat::Text,
    type_oid: 0,
}];

#[test]
fn threshold_is_respected_and_each_entry_is_one_json_line() {
    let (log, out) = log(ParamMode::Redacted);
    assert!(!log.maybe_log(&statement(99, &PARAMS)));
    assert!(log.maybe_log(&statement(100, &PARAMS)));
    assert!(log.maybe_log(&statement(2500, &PARAMS)));
    assert!(!log.is_slow(Duration::from_millis(5)));
    let lines = out.lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(log.logged(), 2);
    let entries: Vec<SlowEntry> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let e = &entries[1];
    assert_eq!(e.fingerprint, "00abcdef01234567");
    assert_eq!(e.query, "SELECT * FROM users WHERE email = $1");
    assert_eq!(e.duration_ms, 2500.0);
    assert_eq!(e.rows, 1);
    assert_eq!((e.database.as_str(), e.user.as_str()), ("app", "alice"));
    assert_eq!(e.client_addr.as_deref(), Some("10.0.0.7:51234"));
    assert_eq!(e.timestamp, "2024-12-31T08:15:30.042Z");
    assert_eq!(e.unix_ms, 1_735_632_930_042);
    // Redacted by default.
    assert_eq!(
        e.params.as_deref(),
        Some(&["<text 15 bytes>".to_owned()][..])
    );
    assert!(!lines[1].contains("bob@example.org"));
}

#[test]
fn full_mode_shows_values_and_off_mode_omits_them() {
    let (full, out) = log(ParamMode::Full);
    full.maybe_log(&statement(200, &PARAMS));
    let line = &out.lines()[0];
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    assert_eq!(v["params"][0], "bob@example.org");

    let (off, out) = log(ParamMode::Off);
    off.maybe_log(&statement(200, &PARAMS));
    let v: serde_json::Value = serde_json::from_str(&out.lines()[0]).unwrap_or_default();
    assert!(v.get("params").is_none(), "{v}");
    assert!(!out.lines()[0].contains("bob@example.org"));
}

#[test]
fn default_mode_is_redacted() {
    assert_eq!(SlowLogConfig::default().params, ParamMode::Redacted);
}

#[test]
fn ring_keeps_the_last_entries_newest_first() {
    let (log, _out) = log(ParamMode::Redacted);
    for ms in [101, 102, 103, 104, 105] {
        log.maybe_log(&statement(ms, &[]));
    }
    let recent = log.recent(10);
    let durations: Vec<f64> = recent.iter().map(|e| e.duration_ms).collect();
    assert_eq!(durations, [105.0, 104.0, 103.0]);
    assert_eq!(log.recent(1).len(), 1);
    log.clear();
    assert!(log.recent(10).is_empty());
    assert_eq!(log.logged(), 5);
}

#[test]
fn disabled_log_logs_nothing_and_errors_carry_sqlstate() {
    let disabled = SlowLog::new(SlowLogConfig {
        enabled: false,
        threshold_ms: 0,
        ..SlowLogConfig::default()
    });
    assert!(!disabled.maybe_log(&statement(10_000, &[])));

    let (log, out) = log(ParamMode::Redacted);
    let mut s = statement(150, &[]);
    s.error = Some(*b"57014");
    s.client_addr = None;
    log.maybe_log(&s);
    let v: serde_json::Value = serde_json::from_str(&out.lines()[0]).unwrap_or_default();
    assert_eq!(v["sqlstate"], "57014");
    assert!(v.get("client_addr").is_none());
}

struct Failing;

impl Write for Failing {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk full"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_errors_are_counted_not_fatal() {
    let log = SlowLog::new(SlowLogConfig::default()).with_writer(Box::new(Failing));
    assert!(log.maybe_log(&statement(5000, &[])));
    assert!(log.maybe_log(&statement(5000, &[])));
    assert_eq!(log.write_errors(), 2);
    assert_eq!(log.recent(5).len(), 2);
}
