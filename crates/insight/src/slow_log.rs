//! The slow-query log: one JSON line per statement over a threshold, to a
//! writer or to `tracing`, plus the last few in memory for `SHOW SLOW` and
//! `/api/slow`.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::params::{render_params, ParamMode, ParamRef};
use crate::time::{format_rfc3339_millis, unix_millis};

/// Settings of [`SlowLog`] (`[insight.slow_log]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowLogConfig {
    pub enabled: bool,
    /// Statements taking at least this long are logged; 0 logs all.
    pub threshold_ms: u64,
    /// How parameters appear: `off`, `redacted` (type and length) or `full`.
    pub params: ParamMode,
    /// Entries kept in memory.
    pub keep_last: usize,
    /// Query text longer than this is cut (at a character boundary).
    pub max_query_bytes: usize,
}

impl Default for SlowLogConfig {
    fn default() -> Self {
        SlowLogConfig {
            enabled: true,
            threshold_ms: 1000,
            params: ParamMode::Redacted,
            keep_last: 100,
            max_query_bytes: 8192,
        }
    }
}

/// A finished statement, offered to [`SlowLog::maybe_log`].
#[derive(Debug, Clone, Copy)]
pub struct SlowStatement<'a> {
    pub fingerprint: u64,
    /// Normalized text.
    pub query: &'a str,
    pub duration: Duration,
    pub rows: u64,
    pub database: &'a str,
    pub user: &'a str,
    pub client_addr: Option<SocketAddr>,
    pub params: &'a [ParamRef<'a>],
    pub error: Option<[u8; 5]>,
    /// When the statement finished.
    pub at: SystemTime,
}

/// One logged statement; also the JSON line written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowEntry {
    /// RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    pub unix_ms: u64,
    /// 16 hex digits.
    pub fingerprint: String,
    pub query: String,
    pub duration_ms: f64,
    pub rows: u64,
    pub database: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// Absent when parameters are `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<String>>,
}

enum Sink {
    Memory,
    Writer(Mutex<Box<dyn Write + Send>>),
    Tracing,
}

/// Slow-statement log. Share it with `Arc<SlowLog>`.
pub struct SlowLog {
    config: RwLock<SlowLogConfig>,
    /// The hot path's copy of the threshold in µs; `u64::MAX` when disabled.
    threshold_us: AtomicU64,
    sink: Sink,
    recent: Mutex<VecDeque<SlowEntry>>,
    logged: AtomicU64,
    write_errors: AtomicU64,
}

fn threshold_us(config: &SlowLogConfig) -> u64 {
    if config.enabled {
        config.threshold_ms.saturating_mul(1000).min(u64::MAX - 1)
    } else {
        u64::MAX
    }
}

impl SlowLog {
    /// A log that only keeps entries in memory.
    pub fn new(config: SlowLogConfig) -> Self {
        SlowLog {
            recent: Mutex::new(VecDeque::with_capacity(config.keep_last.min(1024))),
            threshold_us: AtomicU64::new(threshold_us(&config)),
            config: RwLock::new(config),
            sink: Sink::Memory,
            logged: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        }
    }

    /// Also writes each entry as one JSON line to `writer` (a file, stderr).
    pub fn with_writer(mut self, writer: Box<dyn Write + Send>) -> Self {
        self.sink = Sink::Writer(Mutex::new(writer));
        self
    }

    /// Also emits each entry as a `tracing` event (target `pgopt::slow_query`,
    /// level WARN, field `entry` holding the JSON line).
    pub fn with_tracing(mut self) -> Self {
        self.sink = Sink::Tracing;
        self
    }

    pub fn config(&self) -> SlowLogConfig {
        self.config.read().clone()
    }

    /// Takes new settings (RELOAD); kept entries stay, trimmed to `keep_last`.
    pub fn set_config(&self, config: SlowLogConfig) {
        let keep = config.keep_last;
        self.threshold_us
            .store(threshold_us(&config), Ordering::Relaxed);
        *self.config.write() = config;
        let mut recent = self.recent.lock();
        while recent.len() > keep {
            recent.pop_front();
        }
    }

    /// Whether a statement of this duration would be logged; cheap, for the
    /// hot path to skip building a [`SlowStatement`].
    pub fn is_slow(&self, duration: Duration) -> bool {
        let threshold = self.threshold_us.load(Ordering::Relaxed);
        threshold != u64::MAX && duration.as_micros() >= u128::from(threshold)
    }

    /// Logs `stmt` if it is slow; returns whether it was.
    pub fn maybe_log(&self, stmt: &SlowStatement<'_>) -> bool {
        if !self.is_slow(stmt.duration) {
            return false;
        }
        let entry = self.entry(stmt);
        match &self.sink {
            Sink::Memory => {}
            Sink::Writer(writer) => match serde_json::to_vec(&entry) {
                Ok(mut line) => {
                    line.push(b'\n');
                    let mut w = writer.lock();
                    if let Err(e) = w.write_all(&line).and_then(|()| w.flush()) {
                        if self.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!(error = %e, "writing the slow-query log failed");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "serializing a slow-query entry failed"),
            },
            Sink::Tracing => {
                if let Ok(line) = serde_json::to_string(&entry) {
                    tracing::warn!(target: "pgopt::slow_query", entry = %line, "slow query");
                }
            }
        }
        self.logged.fetch_add(1, Ordering::Relaxed);
        let keep_last = self.config.read().keep_last;
        if keep_last > 0 {
            let mut recent = self.recent.lock();
            if recent.len() >= keep_last {
                recent.pop_front();
            }
            recent.push_back(entry);
        }
        true
    }

    fn entry(&self, stmt: &SlowStatement<'_>) -> SlowEntry {
        let config = self.config();
        let unix_ms = unix_millis(stmt.at);
        SlowEntry {
            timestamp: format_rfc3339_millis(unix_ms),
            unix_ms,
            fingerprint: crate::fingerprint_hex(stmt.fingerprint),
            query: cut_at_char_boundary(stmt.query, config.max_query_bytes),
            duration_ms: stmt.duration.as_secs_f64() * 1000.0,
            rows: stmt.rows,
            database: stmt.database.to_owned(),
            user: stmt.user.to_owned(),
            client_addr: stmt.client_addr.map(|a| a.to_string()),
            sqlstate: stmt.error.map(|c| String::from_utf8_lossy(&c).into_owned()),
            params: render_params(stmt.params, config.params),
        }
    }

    /// The last `n` logged entries, newest first.
    pub fn recent(&self, n: usize) -> Vec<SlowEntry> {
        self.recent.lock().iter().rev().take(n).cloned().collect()
    }

    /// Statements logged since start.
    pub fn logged(&self) -> u64 {
        self.logged.load(Ordering::Relaxed)
    }

    /// Lines the writer refused.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// Forgets the in-memory entries.
    pub fn clear(&self) {
        self.recent.lock().clear();
    }
}

fn cut_at_char_boundary(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_char_boundary() {
        assert_eq!(cut_at_char_boundary("héllo", 2), "h…");
        assert_eq!(cut_at_char_boundary("héllo", 3), "hé…");
        assert_eq!(cut_at_char_boundary("abc", 3), "abc");
    }
}
