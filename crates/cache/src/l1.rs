//! L1: in-process, bounded in bytes, TinyLFU admission and per-entry TTL with jitter
//! (moka). An entry holds its full key, the table versions it was filled at, and the
//! value.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::Expiry;

use crate::key::{Key, KeyRef};
use crate::tables::TableSet;
use crate::versions::{Snapshot, Versions};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct L1Config {
    /// Bytes of keys and values held at most.
    pub max_bytes: u64,
    /// TTLs are shortened by up to this share, at random, so entries filled together
    /// don't all expire together.
    pub ttl_jitter: f64,
}

impl Default for L1Config {
    fn default() -> Self {
        L1Config {
            max_bytes: 64 << 20,
            ttl_jitter: 0.1,
        }
    }
}

struct Entry {
    key: Arc<[u8]>,
    snapshot: Snapshot,
    value: Bytes,
    ttl: Duration,
    /// The per-table counters of the tables it read (evictions count there).
    tables: TableSet,
}

/// An entry found current: its value and its tables' counters.
#[derive(Debug, Clone)]
pub struct Hit {
    pub value: Bytes,
    pub tables: TableSet,
}

/// Bookkeeping bytes counted per entry on top of its key and value.
const ENTRY_OVERHEAD: usize = 96;

struct ByTtl;

impl Expiry<u64, Arc<Entry>> for ByTtl {
    fn expire_after_create(&self, _: &u64, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    evictions: AtomicU64,
}

/// What L1 holds and has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1Stats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    /// Lookups that found an entry a later write had made invalid.
    pub stale: u64,
    /// Entries dropped for space.
    pub evictions: u64,
}

pub struct L1 {
    // foldhash: the key is already a hash; SipHash over it again cost 100 instructions
    // a lookup.
    cache: moka::sync::Cache<u64, Arc<Entry>, foldhash::fast::RandomState>,
    counters: Arc<Counters>,
    jitter: f64,
}

impl L1 {
    pub fn new(config: L1Config) -> L1 {
        let counters = Arc::new(Counters::default());
        let evicted = counters.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_, e: &Arc<Entry>| {
                u32::try_from(e.key.len() + e.value.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(ByTtl)
            // Invalidated entries (Explicit) and replaced ones are not counted.
            .eviction_listener(move |_, entry: Arc<Entry>, cause| match cause {
                RemovalCause::Size => {
                    evicted.evictions.fetch_add(1, Relaxed);
                    entry.tables.evicted();
                }
                RemovalCause::Expired => entry.tables.expired(),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        L1 {
            cache,
            counters,
            jitter: config.ttl_jitter.clamp(0.0, 0.9),
        }
    }

    /// The value of `key` if held, unexpired and current at `versions`.
    pub fn get(&self, key: &Key, versions: &Versions) -> Option<Bytes> {
        self.lookup(key.view(), versions).map(|hit| hit.value)
    }

    /// [`L1::get`], with the counters of the entry's tables.
    pub fn lookup(&self, key: KeyRef<'_>, versions: &Versions) -> Option<Hit> {
        let found = self
            .cache
            .get(&key.hash())
            .filter(|e| *e.key == *key.bytes());
        let Some(entry) = found else {
            self.counters.misses.fetch_add(1, Relaxed);
            return None;
        };
        if !versions.is_current(&entry.snapshot) {
            self.cache.invalidate(&key.hash());
            self.counters.stale.fetch_add(1, Relaxed);
            self.counters.misses.fetch_add(1, Relaxed);
            return None;
        }
        self.counters.hits.fetch_add(1, Relaxed);
        Some(Hit {
            value: entry.value.clone(),
            tables: entry.tables.clone(),
        })
    }

    /// Stores `value` for `ttl` (less up to the jitter); admission may still turn it
    /// away when L1 is full of more popular entries. `tables`: the counters its
    /// eviction or expiry counts in.
    pub fn insert(
        &self,
        key: Key,
        snapshot: Snapshot,
        value: Bytes,
        ttl: Duration,
        tables: TableSet,
    ) {
        let ttl = ttl.mul_f64(1.0 - self.jitter * unit_random(key.hash()));
        let entry = Entry {
            key: key.bytes().into(),
            snapshot,
            value,
            ttl,
            tables,
        };
        self.cache.insert(key.hash(), Arc::new(entry));
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Runs moka's pending maintenance (evictions and expiries are counted then).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    pub fn stats(&self) -> L1Stats {
        self.cache.run_pending_tasks();
        L1Stats {
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
            hits: self.counters.hits.load(Relaxed),
            misses: self.counters.misses.load(Relaxed),
            stale: self.counters.stale.load(Relaxed),
            evictions: self.counters.evictions.load(Relaxed),
        }
    }
}

/// A number in [0, 1) from a key's hash and the clock (jitter, not security).
fn unit_random(seed: u64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let mut x = seed ^ nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}
