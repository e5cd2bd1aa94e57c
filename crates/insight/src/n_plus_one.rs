//! N+1 detection: the same fingerprint executed many times inside one
//! transaction, or in a short burst from one session outside transactions.
//!
//! Each client session owns an [`NPlusOneSession`] with a fixed table of
//! [`SLOTS`] fingerprints, so per-statement work is a scan of at most 16
//! slots and nothing is shared until a finding is made. A fingerprint keeps
//! its slot while it repeats; when the table is full the slot with the fewest
//! calls (least recently seen on ties) is reused, so a loop interleaved with
//! up to 15 other distinct statements per iteration is still counted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::InsightError;
use crate::time::unix_millis;

/// Fingerprints tracked at once per session.
pub const SLOTS: usize = 16;

/// Settings of [`NPlusOneDetector`] (`[insight.n_plus_one]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NPlusOneConfig {
    pub enabled: bool,
    /// Executions of one fingerprint that make a finding (2..=1000).
    pub threshold: u32,
    /// Outside a transaction, `threshold` executions within this many
    /// milliseconds make a finding.
    pub window_ms: u64,
    /// Findings kept in memory (most recent).
    pub keep_last: usize,
}

impl Default for NPlusOneConfig {
    fn default() -> Self {
        NPlusOneConfig {
            enabled: true,
            threshold: 10,
            window_ms: 100,
            keep_last: 100,
        }
    }
}

/// Who ran the statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub database: String,
    pub user: String,
    pub address: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NPlusOneKind {
    /// Repeated inside one transaction.
    Transaction,
    /// Repeated within the window outside a transaction.
    Burst,
}

/// A reported N+1 pattern. `count` and `last_unix_ms` keep growing while the
/// same transaction (or burst) goes on repeating the statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NPlusOneFinding {
    pub id: u64,
    pub kind: NPlusOneKind,
    /// 16 hex digits.
    pub fingerprint: String,
    pub query: String,
    pub count: u64,
    pub database: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    pub first_unix_ms: u64,
    pub last_unix_ms: u64,
}

struct LiveFinding {
    id: u64,
    kind: NPlusOneKind,
    fingerprint: u64,
    query: Arc<str>,
    client: Arc<ClientInfo>,
    first_ms: u64,
    count: AtomicU64,
    last_ms: AtomicU64,
}

impl LiveFinding {
    fn view(&self) -> NPlusOneFinding {
        NPlusOneFinding {
            id: self.id,
            kind: self.kind,
            fingerprint: crate::fingerprint_hex(self.fingerprint),
            query: self.query.to_string(),
            count: self.count.load(Ordering::Relaxed),
            database: self.client.database.clone(),
            user: self.client.user.clone(),
            client_addr: self.client.address.map(|a| a.to_string()),
            first_unix_ms: self.first_ms,
            last_unix_ms: self.last_ms.load(Ordering::Relaxed),
        }
    }
}

/// The settings held in atomics: every statement reads them, and a lock (even a
/// read lock) would be a cache line that every worker thread writes.
struct LiveConfig {
    enabled: AtomicBool,
    threshold: AtomicU32,
    window_ms: AtomicU64,
    keep_last: AtomicUsize,
}

impl LiveConfig {
    fn new(config: &NPlusOneConfig) -> Self {
        let live = LiveConfig {
            enabled: AtomicBool::new(false),
            threshold: AtomicU32::new(0),
            window_ms: AtomicU64::new(0),
            keep_last: AtomicUsize::new(0),
        };
        live.store(config);
        live
    }

    /// A RELOAD: each value changes on its own; a statement that reads some old and
    /// some new values counts by a mix of both settings, once.
    fn store(&self, config: &NPlusOneConfig) {
        self.threshold.store(config.threshold, Ordering::Relaxed);
        self.window_ms.store(config.window_ms, Ordering::Relaxed);
        self.keep_last.store(config.keep_last, Ordering::Relaxed);
        self.enabled.store(config.enabled, Ordering::Relaxed);
    }
}

struct Shared {
    config: LiveConfig,
    findings: Mutex<VecDeque<Arc<LiveFinding>>>,
    total: AtomicU64,
}

fn check(config: &NPlusOneConfig) -> Result<(), InsightError> {
    if !(2..=1000).contains(&config.threshold) {
        return Err(InsightError::InvalidConfig {
            key: "n_plus_one.threshold",
            value: config.threshold.to_string(),
            expected: "2 to 1000",
        });
    }
    Ok(())
}

/// Collects findings from all sessions. Cheap to clone (shared state).
#[derive(Clone)]
pub struct NPlusOneDetector {
    shared: Arc<Shared>,
}

impl NPlusOneDetector {
    pub fn new(config: NPlusOneConfig) -> Result<Self, InsightError> {
        check(&config)?;
        Ok(NPlusOneDetector {
            shared: Arc::new(Shared {
                config: LiveConfig::new(&config),
                findings: Mutex::new(VecDeque::new()),
                total: AtomicU64::new(0),
            }),
        })
    }

    /// Takes new settings (RELOAD); sessions use them from their next statement.
    pub fn set_config(&self, config: NPlusOneConfig) -> Result<(), InsightError> {
        check(&config)?;
        self.shared.config.store(&config);
        Ok(())
    }

    /// Per-session state; create one per client session.
    pub fn session(&self, client: ClientInfo) -> NPlusOneSession {
        NPlusOneSession {
            shared: Arc::clone(&self.shared),
            client: Arc::new(client),
            slots: Vec::new(),
            in_transaction: false,
            seq: 0,
        }
    }

    /// Kept findings, newest first.
    pub fn findings(&self) -> Vec<NPlusOneFinding> {
        self.shared
            .findings
            .lock()
            .iter()
            .rev()
            .map(|f| f.view())
            .collect()
    }

    /// Findings made since start (including ones no longer kept).
    pub fn total_findings(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Forgets kept findings (the total stays).
    pub fn clear(&self) {
        self.shared.findings.lock().clear();
    }
}

struct Slot {
    fingerprint: u64,
    /// Executions in this transaction or burst.
    count: u64,
    first_ms: u64,
    last_ms: u64,
    /// Session-local sequence number of the last execution (LRU tie-break).
    last_seq: u64,
    /// Outside transactions: the last `threshold` execution times, circular.
    times: Vec<u64>,
    head: usize,
    live: Option<Arc<LiveFinding>>,
}

impl Slot {
    fn restart(&mut self, fingerprint: u64, now_ms: u64) {
        self.fingerprint = fingerprint;
        self.count = 0;
        self.first_ms = now_ms;
        self.last_ms = now_ms;
        self.times.clear();
        self.head = 0;
        self.live = None;
    }

    /// Records an execution time in the ring of `cap` and returns the oldest
    /// time in the ring once it is full.
    fn push_time(&mut self, now_ms: u64, cap: usize) -> Option<u64> {
        if self.times.len() > cap || (self.times.len() < cap && self.head != 0) {
            // A RELOAD changed the threshold: a ring of another size starts over (a full
            // ring that wrapped can't simply grow in place).
            self.times.clear();
            self.head = 0;
        }
        if self.times.len() < cap {
            self.times.push(now_ms);
        } else {
            self.times[self.head] = now_ms;
            self.head += 1;
            if self.head == cap {
                self.head = 0;
            }
        }
        (self.times.len() == cap).then(|| self.times[self.head])
    }
}

/// One client session's view: feed it every executed statement.
pub struct NPlusOneSession {
    shared: Arc<Shared>,
    client: Arc<ClientInfo>,
    slots: Vec<Slot>,
    in_transaction: bool,
    seq: u64,
}

impl NPlusOneSession {
    /// Feeds one executed statement. `query` (the normalized text) is called
    /// only when a finding is made. Returns true when this statement made a
    /// new finding.
    pub fn observe<F, T>(
        &mut self,
        fingerprint: u64,
        in_transaction: bool,
        at: SystemTime,
        query: F,
    ) -> bool
    where
        F: FnOnce() -> T,
        T: Into<Arc<str>>,
    {
        self.observe_ms(fingerprint, in_transaction, unix_millis(at), query)
    }

    /// [`NPlusOneSession::observe`] with the time in unix milliseconds.
    pub fn observe_ms<F, T>(
        &mut self,
        fingerprint: u64,
        in_transaction: bool,
        now_ms: u64,
        query: F,
    ) -> bool
    where
        F: FnOnce() -> T,
        T: Into<Arc<str>>,
    {
        let config = &self.shared.config;
        if !config.enabled.load(Ordering::Relaxed) {
            return false;
        }
        let threshold = config.threshold.load(Ordering::Relaxed);
        let window_ms = config.window_ms.load(Ordering::Relaxed);
        if in_transaction != self.in_transaction {
            self.slots.clear();
            self.in_transaction = in_transaction;
        }
        self.seq += 1;
        let seq = self.seq;
        let idx = self.slot_for(fingerprint, now_ms, window_ms);
        let slot = &mut self.slots[idx];
        if !in_transaction && slot.count > 0 && now_ms.saturating_sub(slot.last_ms) > window_ms {
            // The previous burst of this fingerprint is over.
            slot.restart(fingerprint, now_ms);
        }
        slot.count += 1;
        slot.last_ms = now_ms;
        slot.last_seq = seq;
        let oldest = if in_transaction {
            None
        } else {
            slot.push_time(now_ms, threshold as usize)
        };
        if let Some(live) = &slot.live {
            live.count.fetch_add(1, Ordering::Relaxed);
            live.last_ms.fetch_max(now_ms, Ordering::Relaxed);
            return false;
        }
        let found = if in_transaction {
            (slot.count >= u64::from(threshold)).then_some((
                NPlusOneKind::Transaction,
                slot.first_ms,
                slot.count,
            ))
        } else {
            oldest
                .filter(|&t| now_ms.saturating_sub(t) <= window_ms)
                .map(|t| (NPlusOneKind::Burst, t, u64::from(threshold)))
        };
        let Some((kind, first_ms, count)) = found else {
            return false;
        };
        let live = Arc::new(LiveFinding {
            id: self.shared.total.fetch_add(1, Ordering::Relaxed) + 1,
            kind,
            fingerprint,
            query: query().into(),
            client: Arc::clone(&self.client),
            first_ms,
            count: AtomicU64::new(count),
            last_ms: AtomicU64::new(now_ms),
        });
        slot.live = Some(Arc::clone(&live));
        let keep_last = self.shared.config.keep_last.load(Ordering::Relaxed);
        if keep_last > 0 {
            let mut findings = self.shared.findings.lock();
            // `while`: a RELOAD may have lowered keep_last.
            while findings.len() >= keep_last {
                findings.pop_front();
            }
            findings.push_back(live);
        }
        true
    }

    /// The caller saw the transaction end (e.g. ReadyForQuery 'I' after a
    /// COMMIT): the next transaction starts counting from zero even if no
    /// statement runs outside a transaction in between.
    pub fn end_transaction(&mut self) {
        if self.in_transaction {
            self.slots.clear();
            self.in_transaction = false;
        }
    }

    fn slot_for(&mut self, fingerprint: u64, now_ms: u64, window_ms: u64) -> usize {
        if let Some(i) = self.slots.iter().position(|s| s.fingerprint == fingerprint) {
            return i;
        }
        if self.slots.len() < SLOTS {
            self.slots.push(Slot {
                fingerprint,
                count: 0,
                first_ms: now_ms,
                last_ms: now_ms,
                last_seq: 0,
                times: Vec::new(),
                head: 0,
                live: None,
            });
            return self.slots.len() - 1;
        }
        let in_txn = self.in_transaction;
        // Reuse an expired burst slot first, else the fewest calls, least
        // recently used.
        let victim = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| {
                let expired = !in_txn && now_ms.saturating_sub(s.last_ms) > window_ms;
                (!expired, s.count, s.last_seq)
            })
            .map_or(0, |(i, _)| i);
        self.slots[victim].restart(fingerprint, now_ms);
        victim
    }
}
