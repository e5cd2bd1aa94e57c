//! The statistics store: sharded entries, recording, bounded memory and
//! snapshots.

use std::cell::Cell;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::entry::{Entry, FingerprintStats, MetricsRow, QueryStats};
pub use crate::entry::{Route, Sample};
use crate::error::InsightError;
use crate::names::Names;
use crate::params::ParamMode;
use crate::params::ParamRef;
use crate::time::unix_millis;

/// Distinct database and user names interned; later ones share `<other>`.
const MAX_NAMES: usize = 4096;

/// Settings of [`Insight`] (`[insight]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InsightConfig {
    /// Most (fingerprint, database, user) entries kept, like
    /// `pg_stat_statements.max`.
    pub max_fingerprints: usize,
    /// How a record picks its shard: `thread` (each thread its own shard,
    /// no cache lines shared between cores; a key seen by several threads
    /// has one entry per shard, merged on read) or `fingerprint` (one entry
    /// per key; threads recording the same fingerprint share a lock).
    pub sharding: Sharding,
    /// Mutex-guarded shards; 0 picks 2 × the available cores (4..=64) for
    /// `thread`, 4 × (8..=64) for `fingerprint`.
    pub shards: usize,
    /// Significant digits of the latency histograms (1..=5). Each entry's
    /// histogram holds 2^(⌈log2(2·10^d)⌉-1) u32 counters per power of two of
    /// its largest latency: with a 100 ms maximum about 5.6 KB at 2 digits
    /// (1% precision) and 32 KB at 3 (0.1%) — 28 MB against 160 MB for 5000
    /// entries. See [`Insight::histogram_bytes`].
    pub histogram_sigfig: u8,
    /// Share of `max_fingerprints` evicted when full, in percent (1..=50),
    /// taken from the recording thread's shard (split evenly over shards).
    pub evict_percent: u32,
    /// Parameter sets kept per entry.
    pub param_samples: usize,
    /// How sampled parameters are stored: `off`, `redacted` or `full`.
    pub params: ParamMode,
}

impl Default for InsightConfig {
    fn default() -> Self {
        InsightConfig {
            max_fingerprints: 5000,
            sharding: Sharding::Thread,
            shards: 0,
            histogram_sigfig: 2,
            evict_percent: 5,
            param_samples: 3,
            params: ParamMode::Redacted,
        }
    }
}

impl InsightConfig {
    fn validate(&self) -> Result<(), InsightError> {
        let invalid = |key, value: String, expected| {
            Err(InsightError::InvalidConfig {
                key,
                value,
                expected,
            })
        };
        if self.max_fingerprints == 0 {
            return invalid("max_fingerprints", "0".into(), "at least 1");
        }
        if !(1..=5).contains(&self.histogram_sigfig) {
            return invalid(
                "histogram_sigfig",
                self.histogram_sigfig.to_string(),
                "1 to 5",
            );
        }
        if !(1..=50).contains(&self.evict_percent) {
            return invalid("evict_percent", self.evict_percent.to_string(), "1 to 50");
        }
        if self.shards > 1024 {
            return invalid("shards", self.shards.to_string(), "0 (auto) to 1024");
        }
        Ok(())
    }
}

/// See [`InsightConfig::sharding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharding {
    Thread,
    Fingerprint,
}

/// Sort order of [`Insight::top`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderBy {
    TotalTime,
    Calls,
    Mean,
    P99,
    Errors,
}

/// Interned (database, user) of one client session. Cheap to copy; build
/// [`StatKey`]s from it per statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionHandle {
    database: u32,
    user: u32,
}

impl SessionHandle {
    pub fn key(&self, fingerprint: u64) -> StatKey {
        StatKey {
            fingerprint,
            database: self.database,
            user: self.user,
        }
    }
}

/// (fingerprint, database id, user id): what statistics are kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatKey {
    pub fingerprint: u64,
    database: u32,
    user: u32,
}

/// Store-wide counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsightStatus {
    pub entries: usize,
    pub max_fingerprints: usize,
    /// Entries dropped to stay within `max_fingerprints` since the last reset.
    pub evictions: u64,
    pub shards: usize,
    pub interned_names: usize,
}

struct Shard {
    map: HashMap<StatKey, Entry, foldhash::fast::RandomState>,
}

impl Shard {
    /// Drops up to `n` entries with the lowest total time (oldest first on
    /// ties); returns how many.
    fn evict(&mut self, n: usize) -> usize {
        let n = n.min(self.map.len());
        if n == 0 {
            return 0;
        }
        let mut costs: Vec<(u64, u64, StatKey)> = self
            .map
            .iter()
            .map(|(k, e)| (e.total_ns, e.last_ms, *k))
            .collect();
        if n < costs.len() {
            costs.select_nth_unstable_by_key(n - 1, |&(total, last, _)| (total, last));
        }
        for (_, _, key) in &costs[..n] {
            self.map.remove(key);
        }
        n
    }
}

/// Cache-line aligned so neighbouring shard locks do not false-share.
#[repr(align(128))]
struct Padded<T>(T);

/// A small number per thread, handed out on a thread's first record.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SLOT.with(|slot| {
        let mut v = slot.get();
        if v == usize::MAX {
            v = NEXT.fetch_add(1, Ordering::Relaxed);
            slot.set(v);
        }
        v
    })
}

/// Per-fingerprint statistics of everything the proxy executed.
///
/// Share it with `Arc<Insight>`; all methods take `&self`.
pub struct Insight {
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// Entries in all shards, counted before insertion (a reservation).
    entries: AtomicUsize,
    evictions: AtomicU64,
    names: Names,
    config: InsightConfig,
    evict_batch: usize,
}

impl Insight {
    pub fn new(config: InsightConfig) -> Result<Self, InsightError> {
        config.validate()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = match (config.shards, config.sharding) {
            (0, Sharding::Thread) => (cores * 2).clamp(4, 64),
            (0, Sharding::Fingerprint) => (cores * 4).clamp(8, 64),
            (n, _) => n,
        };
        let batch = (config.max_fingerprints * config.evict_percent as usize).div_ceil(100);
        let evict_batch = batch.div_ceil(n).max(1);
        let shards = (0..n)
            .map(|_| {
                Padded(Mutex::new(Shard {
                    map: HashMap::with_hasher(foldhash::fast::RandomState::default()),
                }))
            })
            .collect();
        Ok(Insight {
            shards,
            entries: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            names: Names::new(MAX_NAMES),
            config,
            evict_batch,
        })
    }

    pub fn config(&self) -> &InsightConfig {
        &self.config
    }

    /// Interns the session's names; call once per client session (or once
    /// per (database, user) pair) and keep the handle.
    pub fn session(&self, database: &str, user: &str) -> SessionHandle {
        SessionHandle {
            database: self.names.intern(database),
            user: self.names.intern(user),
        }
    }

    /// Records one executed statement now. `normalized` is called only when
    /// the key is new (under the shard lock: keep it cheap, e.g. clone an
    /// `Arc<str>` or return a `&str`).
    pub fn record<F, T>(&self, key: &StatKey, sample: &Sample<'_>, normalized: F)
    where
        F: FnOnce() -> T,
        T: Into<Arc<str>>,
    {
        self.record_at(key, sample, normalized, unix_millis(SystemTime::now()));
    }

    /// [`Insight::record`] with the wall-clock time given in unix
    /// milliseconds.
    pub fn record_at<F, T>(&self, key: &StatKey, sample: &Sample<'_>, normalized: F, now_ms: u64)
    where
        F: FnOnce() -> T,
        T: Into<Arc<str>>,
    {
        self.record_at_lazy(key, sample, || None, normalized, now_ms);
    }

    /// [`Insight::record_at`] for a statement whose parameters take work to decode:
    /// `params` runs (under the shard lock, so keep it short) only when the entry
    /// keeps a sample of this call — its first calls and then at powers of two — and
    /// `sample.params` is `None`.
    pub fn record_at_lazy<'p, F, T, P>(
        &self,
        key: &StatKey,
        sample: &Sample<'_>,
        params: P,
        normalized: F,
        now_ms: u64,
    ) where
        F: FnOnce() -> T,
        T: Into<Arc<str>>,
        P: FnOnce() -> Option<Vec<ParamRef<'p>>>,
    {
        let (mode, samples) = (self.config.params, self.config.param_samples);
        let add = |entry: &mut Entry| {
            if sample.params.is_none() && entry.wants_params(mode, samples) {
                let owned = params();
                let with = Sample {
                    params: owned.as_deref(),
                    ..*sample
                };
                entry.add(&with, now_ms, mode, samples);
            } else {
                entry.add(sample, now_ms, mode, samples);
            }
        };
        let idx = self.shard_index(key.fingerprint);
        let mut shard = self.shards[idx].0.lock();
        if let Some(entry) = shard.map.get_mut(key) {
            add(entry);
            return;
        }
        // A new entry: reserve room first, evicting a batch when full.
        if self.entries.fetch_add(1, Ordering::Relaxed) >= self.config.max_fingerprints {
            let removed = shard.evict(self.evict_batch);
            self.forget(removed, true);
            if removed == 0 {
                // This shard is empty: evict from the largest one, never
                // holding two shard locks at once.
                drop(shard);
                self.evict_from_largest();
                shard = self.shards[idx].0.lock();
                if let Some(entry) = shard.map.get_mut(key) {
                    self.forget(1, false);
                    add(entry);
                    return;
                }
            }
        }
        let mut entry = Entry::new(normalized().into(), self.new_histogram(), now_ms);
        add(&mut entry);
        shard.map.insert(*key, entry);
    }

    fn forget(&self, removed: usize, evicted: bool) {
        if removed > 0 {
            self.entries.fetch_sub(removed, Ordering::Relaxed);
            if evicted {
                self.evictions.fetch_add(removed as u64, Ordering::Relaxed);
            }
        }
    }

    fn evict_from_largest(&self) {
        let largest = (0..self.shards.len()).max_by_key(|&i| self.shards[i].0.lock().map.len());
        if let Some(i) = largest {
            let removed = self.shards[i].0.lock().evict(self.evict_batch);
            self.forget(removed, true);
        }
    }

    fn new_histogram(&self) -> Histogram<u32> {
        // Validated sigfig (1..=5) cannot fail; 1 is always valid.
        Histogram::new(self.config.histogram_sigfig)
            .or_else(|_| Histogram::new(1))
            .unwrap_or_else(|_| unreachable!("sigfig 1 is valid"))
    }

    fn shard_index(&self, fingerprint: u64) -> usize {
        match self.config.sharding {
            Sharding::Thread => thread_slot() % self.shards.len(),
            Sharding::Fingerprint => {
                // Fibonacci mix, then multiply-shift range reduction.
                let mixed = fingerprint.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                ((u128::from(mixed) * self.shards.len() as u128) >> 64) as usize
            }
        }
    }

    /// Number of (fingerprint, database, user) entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn status(&self) -> InsightStatus {
        InsightStatus {
            entries: self.len(),
            max_fingerprints: self.config.max_fingerprints,
            evictions: self.evictions.load(Ordering::Relaxed),
            shards: self.shards.len(),
            interned_names: self.names.len(),
        }
    }

    /// Bytes held by latency histograms right now (the bulk of the store).
    pub fn histogram_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.0.lock()
                    .map
                    .values()
                    .map(Entry::histogram_bytes)
                    .sum::<usize>()
            })
            .sum()
    }

    /// Clears all statistics and the eviction count.
    pub fn reset(&self) {
        for s in self.shards.iter() {
            let mut s = s.0.lock();
            let removed = s.map.len();
            s.map.clear();
            self.forget(removed, false);
        }
        self.evictions.store(0, Ordering::Relaxed);
    }

    /// Removes every entry of `fingerprint`; returns how many (database,
    /// user) entries there were.
    pub fn reset_fingerprint(&self, fingerprint: u64) -> usize {
        let mut keys = HashSet::new();
        for s in self.shards.iter() {
            let mut s = s.0.lock();
            let before = s.map.len();
            s.map.retain(|k, _| {
                let keep = k.fingerprint != fingerprint;
                if !keep {
                    keys.insert(*k);
                }
                keep
            });
            self.forget(before - s.map.len(), false);
        }
        keys.len()
    }

    /// Copies the entries passing `filter` under each shard's lock, one
    /// shard at a time, merging a key found in several shards.
    fn collect(&self, filter: impl Fn(&StatKey) -> bool) -> HashMap<StatKey, Entry> {
        let mut out: HashMap<StatKey, Entry> = HashMap::new();
        let samples = self.config.param_samples;
        for s in self.shards.iter() {
            let copies: Vec<(StatKey, Entry)> = {
                let s = s.0.lock();
                s.map
                    .iter()
                    .filter(|(k, _)| filter(k))
                    .map(|(k, e)| (*k, e.clone()))
                    .collect()
            };
            for (k, e) in copies {
                match out.entry(k) {
                    MapEntry::Occupied(mut o) => o.get_mut().merge(&e, samples),
                    MapEntry::Vacant(v) => {
                        v.insert(e);
                    }
                }
            }
        }
        out
    }

    fn client_stats(&self, key: &StatKey, entry: &Entry) -> QueryStats {
        let (db, user) = (self.names.name(key.database), self.names.name(key.user));
        entry.to_stats(key.fingerprint, Some(&db), Some(&user))
    }

    /// One row per fingerprint, merged over databases and users, unordered.
    pub fn snapshot(&self) -> Vec<QueryStats> {
        let mut merged: HashMap<u64, Entry> = HashMap::new();
        for (key, entry) in self.collect(|_| true) {
            match merged.entry(key.fingerprint) {
                MapEntry::Occupied(mut o) => o.get_mut().merge(&entry, self.config.param_samples),
                MapEntry::Vacant(v) => {
                    v.insert(entry);
                }
            }
        }
        merged
            .into_iter()
            .map(|(fp, e)| e.to_stats(fp, None, None))
            .collect()
    }

    /// One row per (fingerprint, database, user), unordered.
    pub fn snapshot_by_client(&self) -> Vec<QueryStats> {
        self.collect(|_| true)
            .iter()
            .map(|(k, e)| self.client_stats(k, e))
            .collect()
    }

    /// The `n` fingerprints ranking highest by `order_by` (descending).
    pub fn top(&self, n: usize, order_by: OrderBy) -> Vec<QueryStats> {
        let mut rows = self.snapshot();
        let key = |s: &QueryStats| -> f64 {
            match order_by {
                OrderBy::TotalTime => s.total_time_ms,
                OrderBy::Calls => s.calls as f64,
                OrderBy::Mean => s.mean_time_ms,
                OrderBy::P99 => s.p99_ms,
                OrderBy::Errors => s.errors as f64,
            }
        };
        rows.sort_by(|a, b| {
            key(b)
                .total_cmp(&key(a))
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        rows.truncate(n);
        rows
    }

    /// One fingerprint: the merged total and the per-(database, user) rows
    /// (sorted by database, then user).
    pub fn get(&self, fingerprint: u64) -> Option<FingerprintStats> {
        let entries = self.collect(|k| k.fingerprint == fingerprint);
        let mut iter = entries.values();
        let mut total = iter.next()?.clone();
        for e in iter {
            total.merge(e, self.config.param_samples);
        }
        let mut by_client: Vec<QueryStats> = entries
            .iter()
            .map(|(k, e)| self.client_stats(k, e))
            .collect();
        by_client.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        Some(FingerprintStats {
            total: total.to_stats(fingerprint, None, None),
            by_client,
        })
    }

    /// The top `n` fingerprints by total time, labelled only by fingerprint
    /// hex, for a Prometheus exporter (bounded label set).
    pub fn top_n_for_metrics(&self, n: usize) -> Vec<MetricsRow> {
        self.top(n, OrderBy::TotalTime)
            .into_iter()
            .map(|s| MetricsRow {
                fingerprint: crate::fingerprint_hex(s.fingerprint),
                calls: s.calls,
                errors: s.errors,
                rows: s.rows,
                cache_hits: s.cache_hits,
                total_time_seconds: s.total_time_ms / 1000.0,
                p50_seconds: s.p50_ms / 1000.0,
                p99_seconds: s.p99_ms / 1000.0,
            })
            .collect()
    }
}
