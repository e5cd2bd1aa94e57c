//! The hot path: an analysis cache keyed by the literal-stripped statement
//! text, so `… WHERE aid = 5` and `… WHERE aid = 7` share one entry and
//! pg_query runs only on a miss.
//!
//! Sharded `RwLock<HashMap>`s keyed by a 64-bit hash of the key; the entry
//! keeps the key bytes and is compared on every hit, so a hash collision is
//! a miss, never a wrong answer. Bounded: when a shard is full, entries not
//! used since the last sweep go (second chance); if that frees too little,
//! the shard is cleared.
//!
//! In front of it, each thread keeps its own copies of the analyses it used
//! lately: a hit there takes no lock and touches nothing another thread writes
//! (the `Arc`'s count included: the proxy's threads serving one query shape
//! would otherwise pass the same cache lines back and forth on every
//! statement, measured at about 300 ns per statement with two threads).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use parking_lot::{Mutex, RwLock};

use crate::analysis::{analyze_with, Analysis, AnalysisConfig};
use crate::error::SqlError;
use crate::strip::Stripped;

/// Sizing and verdict configuration of an [`Analyzer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyzerConfig {
    /// Most entries kept (distinct statement shapes), across all shards.
    pub capacity: usize,
    /// Number of independently locked shards (rounded up to a power of two).
    pub shards: usize,
    /// Function allow-lists for the verdicts.
    pub analysis: AnalysisConfig,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        AnalyzerConfig {
            capacity: 10_000,
            shards: 16,
            analysis: AnalysisConfig::default(),
        }
    }
}

/// Counters of an [`Analyzer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnalyzerStats {
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
}

type CachedResult = Result<Arc<Analysis>, SqlError>;

struct Entry {
    key: Box<[u8]>,
    result: CachedResult,
    used: AtomicBool,
}

/// The map is keyed by the already-computed hash; this hasher passes it on.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, Entry, BuildHasherDefault<PassThrough>>;

#[repr(align(128))]
struct Shard {
    map: RwLock<Map>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Cached statement analysis, shared by all connections (`Send + Sync`).
pub struct Analyzer {
    shards: Box<[Shard]>,
    shard_bits: u32,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
    config: AnalysisConfig,
    /// Tells the threads' own copies apart (see [`Local`]): this analyzer, and
    /// how many times it was cleared.
    id: u64,
    clears: AtomicU64,
    /// Each thread's count of hits on its own copies (written by that thread
    /// alone).
    local_hits: Mutex<Vec<(ThreadId, Arc<AtomicU64>)>>,
}

/// Analyses a thread used lately, its own copies, for one analyzer.
#[derive(Default)]
struct Local {
    owner: (u64, u64),
    map: HashMap<u64, (Box<[u8]>, CachedResult), BuildHasherDefault<PassThrough>>,
    hits: Option<Arc<AtomicU64>>,
    /// The text last analysed on this thread and its analysis: the proxy asks about
    /// one statement several times in a row (the cache, its write tracking, insight),
    /// and an equal text needs no stripping.
    last: Option<(String, CachedResult)>,
}

/// Texts up to this long are kept as the thread's last one (a bulk INSERT's too: its
/// analysis is not cached, and each of the proxy's questions would strip it again).
const LAST_MAX_LEN: usize = 16 << 20;

/// Analyses of longer keys (a bulk INSERT's, with a placeholder per value) are not
/// kept: such statements are analysed shortened (see `reduce.rs`) each time.
const KEPT_KEY_MAX: usize = 16 * 1024;

/// A thread's stripping buffer that grew past this for a long text is let go.
const STRIPPED_KEPT: usize = 1 << 20;

/// Analyses a thread keeps its own copies of; past this it starts again.
const LOCAL_CAPACITY: usize = 2048;

// From 1: a thread's `Local` starts owned by (0, 0), no analyzer.
static NEXT_ANALYZER: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static STRIPPED: RefCell<Stripped> = RefCell::new(Stripped::new());
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

impl Default for Analyzer {
    fn default() -> Self {
        Self::new(AnalyzerConfig::default())
    }
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzer")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Analyzer {
    pub fn new(config: AnalyzerConfig) -> Self {
        let shards = config.shards.clamp(1, 1024).next_power_of_two();
        let per_shard = config.capacity.div_ceil(shards).max(1);
        Analyzer {
            shards: (0..shards)
                .map(|_| Shard {
                    map: RwLock::new(Map::default()),
                    hits: AtomicU64::new(0),
                    misses: AtomicU64::new(0),
                })
                .collect(),
            shard_bits: shards.trailing_zeros(),
            per_shard,
            hasher: foldhash::fast::RandomState::default(),
            config: config.analysis,
            id: NEXT_ANALYZER.fetch_add(1, Ordering::Relaxed),
            clears: AtomicU64::new(0),
            local_hits: Mutex::new(Vec::new()),
        }
    }

    /// This thread's copy of the analysis of `key`, counted as a hit.
    fn local_hit(&self, owner: (u64, u64), hash: u64, key: &[u8]) -> Option<CachedResult> {
        LOCAL.with(|local| {
            let local = local.try_borrow().ok()?;
            if local.owner != owner {
                return None;
            }
            let (kept, result) = local.map.get(&hash)?;
            if **kept != *key {
                return None;
            }
            if let Some(hits) = &local.hits {
                hits.fetch_add(1, Ordering::Relaxed);
            }
            Some(result.clone())
        })
    }

    /// Keeps this thread's own copy of `result` and returns it. `owner`: this
    /// analyzer and its clears before the lookup (a result found before a `clear()`
    /// is not kept as if after it).
    fn keep_local(
        &self,
        owner: (u64, u64),
        hash: u64,
        key: &[u8],
        result: &CachedResult,
    ) -> CachedResult {
        let copy = match result {
            Ok(analysis) => Ok(Arc::new(Analysis::clone(analysis))),
            Err(e) => Err(e.clone()),
        };
        if self.clears.load(Ordering::Relaxed) != owner.1 {
            return copy; // cleared meanwhile: not kept
        }
        LOCAL.with(|local| {
            let Ok(mut local) = local.try_borrow_mut() else {
                return;
            };
            if local.owner != owner {
                local.map.clear();
                local.last = None;
                local.owner = owner;
                local.hits = Some(self.hits_of_this_thread());
            }
            if local.map.len() >= LOCAL_CAPACITY {
                local.map.clear();
            }
            local.map.insert(hash, (key.into(), copy.clone()));
        });
        copy
    }

    fn hits_of_this_thread(&self) -> Arc<AtomicU64> {
        let me = std::thread::current().id();
        let mut all = self.local_hits.lock();
        if let Some((_, hits)) = all.iter().find(|(t, _)| *t == me) {
            return hits.clone();
        }
        let hits = Arc::new(AtomicU64::new(0));
        all.push((me, hits.clone()));
        hits
    }

    /// The analysis of `sql`, from the cache when a statement of the same
    /// shape (up to literal values) was analysed before.
    pub fn analyze(&self, sql: &str) -> Result<Arc<Analysis>, SqlError> {
        let owner = (self.id, self.clears.load(Ordering::Relaxed));
        if let Some(result) = self.last_hit(owner, sql) {
            return result;
        }
        let result = STRIPPED.with(|cell| match cell.try_borrow_mut() {
            Ok(mut stripped) => {
                let result = self.analyze_stripped(sql, &mut stripped);
                if sql.len() > STRIPPED_KEPT {
                    *stripped = Stripped::new();
                }
                result
            }
            Err(_) => self.analyze_stripped(sql, &mut Stripped::new()),
        });
        if sql.len() <= LAST_MAX_LEN {
            LOCAL.with(|local| {
                let Ok(mut local) = local.try_borrow_mut() else {
                    return;
                };
                // Kept under the owner the lookup was made for (a clear meanwhile:
                // not kept).
                if local.owner == owner && self.clears.load(Ordering::Relaxed) == owner.1 {
                    let mut text = local.last.take().map(|(t, _)| t).unwrap_or_default();
                    if text.capacity() > STRIPPED_KEPT && sql.len() <= STRIPPED_KEPT {
                        text = String::new(); // a long one's buffer is let go
                    }
                    text.clear();
                    text.push_str(sql);
                    local.last = Some((text, result.clone()));
                }
            });
        }
        result
    }

    /// The analysis of `sql` when it is the text this thread analysed last (for this
    /// analyzer, not cleared since), counted as a hit.
    fn last_hit(&self, owner: (u64, u64), sql: &str) -> Option<CachedResult> {
        LOCAL.with(|local| {
            let local = local.try_borrow().ok()?;
            if local.owner != owner {
                return None;
            }
            let (text, result) = local.last.as_ref()?;
            if text != sql {
                return None;
            }
            if let Some(hits) = &local.hits {
                hits.fetch_add(1, Ordering::Relaxed);
            }
            Some(result.clone())
        })
    }

    /// As [`analyze`](Self::analyze), stripping into the caller's buffer so
    /// the literal values of this call stay available
    /// ([`Stripped::literal_values`]).
    pub fn analyze_stripped(
        &self,
        sql: &str,
        stripped: &mut Stripped,
    ) -> Result<Arc<Analysis>, SqlError> {
        stripped.strip(sql);
        let key = stripped.key();
        let hash = self.hasher.hash_one(key);
        let owner = (self.id, self.clears.load(Ordering::Relaxed));
        if let Some(result) = self.local_hit(owner, hash, key) {
            return result;
        }
        let shard = &self.shards[self.shard_index(hash)];
        {
            let map = shard.map.read();
            if let Some(entry) = map.get(&hash) {
                if *entry.key == *key {
                    if !entry.used.load(Ordering::Relaxed) {
                        entry.used.store(true, Ordering::Relaxed);
                    }
                    shard.hits.fetch_add(1, Ordering::Relaxed);
                    let result = entry.result.clone();
                    drop(map);
                    return self.keep_local(owner, hash, key, &result);
                }
            }
        }
        shard.misses.fetch_add(1, Ordering::Relaxed);
        let result = analyze_with(sql, &self.config).map(Arc::new);
        if key.len() > KEPT_KEY_MAX {
            // (Kept, such keys could fill the memory: the cache counts entries.)
            return result;
        }
        let mut map = shard.map.write();
        if map.len() >= self.per_shard && !map.contains_key(&hash) {
            map.retain(|_, e| e.used.swap(false, Ordering::Relaxed));
            if map.len() > self.per_shard * 3 / 4 {
                map.clear();
            }
        }
        map.insert(
            hash,
            Entry {
                key: key.into(),
                result: result.clone(),
                used: AtomicBool::new(false),
            },
        );
        drop(map);
        self.keep_local(owner, hash, key, &result)
    }

    fn shard_index(&self, hash: u64) -> usize {
        // Middle bits: hashbrown uses the low bits for the bucket and the top
        // seven for its tags, so neither should be constant within a shard.
        ((hash >> 32) as usize) & ((1usize << self.shard_bits) - 1)
    }

    /// Entries, hits and misses so far.
    pub fn stats(&self) -> AnalyzerStats {
        let mut stats = AnalyzerStats::default();
        for shard in self.shards.iter() {
            stats.entries += shard.map.read().len();
            stats.hits += shard.hits.load(Ordering::Relaxed);
            stats.misses += shard.misses.load(Ordering::Relaxed);
        }
        for (_, hits) in self.local_hits.lock().iter() {
            stats.hits += hits.load(Ordering::Relaxed);
        }
        stats
    }

    /// Drops every cached analysis (e.g. after the function allow-list
    /// changed, build a new `Analyzer` instead).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            shard.map.write().clear();
        }
        // The threads' copies go too (each at its next lookup).
        self.clears.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_variants_share_one_entry() {
        let analyzer = Analyzer::default();
        let a = analyzer
            .analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
            .unwrap();
        let b = analyzer
            .analyze("select abalance from pgbench_accounts where aid = 2")
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let stats = analyzer.stats();
        assert_eq!((stats.entries, stats.hits, stats.misses), (1, 1, 1));
    }

    #[test]
    fn a_clock_word_is_not_the_shape_of_a_plain_date() {
        let analyzer = Analyzer::default();
        for (plain, clock) in [
            (
                "WHERE at < '2020-01-01'::timestamptz",
                "WHERE at < 'now'::timestamptz",
            ),
            (
                "WHERE at < E'2020-01-01'::date",
                "WHERE at < E' Today'::date",
            ),
            (
                "WHERE at < $$2020-01-01$$::date",
                "WHERE at < $d$tomorrow$d$::date",
            ),
            (
                "WHERE day IN ('2020-01-01', '2020-01-02')",
                "WHERE day IN ('yesterday', 'today')",
            ),
            // Escapes, padding, arrays and ranges (review findings).
            (
                "WHERE at < E'2020-01-01'::date",
                r"WHERE at < E'\x6eow'::date",
            ),
            (
                "WHERE at < E'2020-01-01'::date",
                r"WHERE at < E'\156\u006Fw'::date",
            ),
            (
                "WHERE at < U&'2020-01-01'::date",
                r"WHERE at < U&'\006Eow'::date",
            ),
            (
                "WHERE at < '2020-01-01'::date",
                "WHERE at < '          now                    '::date",
            ),
            (
                "WHERE at = ANY('{2020-01-01}'::date[])",
                "WHERE at = ANY('{2020-01-01,now}'::date[])",
            ),
            (
                "WHERE at <@ '[2020-01-01,)'::daterange",
                "WHERE at <@ '[today,)'::daterange",
            ),
            (
                "WHERE at < '2020-01-01 10:00'::timestamp",
                "WHERE at < 'today 10:00'::timestamp",
            ),
            (
                "WHERE at < '10:00 2020-01-01'",
                "WHERE at < '10:00 tomorrow'",
            ),
            (
                "WHERE day = '2020-01-01'::date",
                "WHERE day = 'today+1'::date",
            ),
            ("WHERE at < E'2020-01-01'::date", r"WHERE at < E'\556ow'::date"),
            ("WHERE at < E'2020-01-01'::date", r"WHERE at < E'\013now'::date"),
            (
                "WHERE at < '2020-01-01'::timestamp",
                "WHERE at < 'today                                                                    12:00'::timestamp",
            ),
            (
                "WHERE at = ANY('{\"2020-01-01\"}'::date[])",
                r#"WHERE at = ANY('{"n\ow"}'::date[])"#,
            ),
        ] {
            let plain = format!("SELECT count(*) FROM events {plain}");
            let clock = format!("SELECT count(*) FROM events {clock}");
            assert!(!analyzer.analyze(&plain).unwrap().volatile, "{plain}");
            assert!(analyzer.analyze(&clock).unwrap().volatile, "{clock}");
        }
    }

    #[test]
    fn threads_keep_their_own_copies_and_clear_reaches_them() {
        let analyzer = Analyzer::default();
        let sql = "SELECT v FROM t WHERE id = 1";
        let a = analyzer.analyze(sql).unwrap();
        let b = analyzer.analyze(sql).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = std::thread::scope(|s| {
            s.spawn(|| {
                let x = analyzer.analyze(sql).unwrap();
                let y = analyzer.analyze(sql).unwrap();
                assert!(Arc::ptr_eq(&x, &y));
                x
            })
            .join()
            .unwrap()
        });
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(*a, *other);
        let stats = analyzer.stats();
        assert_eq!((stats.entries, stats.hits, stats.misses), (1, 3, 1));
        analyzer.clear();
        analyzer.analyze(sql).unwrap();
        assert_eq!(analyzer.stats().misses, 2);
    }

    #[test]
    fn the_same_text_again_is_the_last_analysis_until_a_clear() {
        let analyzer = Analyzer::default();
        let other = Analyzer::default();
        let sql = "UPDATE t SET v = v + 1 WHERE id = 7";
        let a = analyzer.analyze(sql).unwrap();
        let b = analyzer.analyze(sql).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(analyzer.stats().hits, 1, "a repeat counts as a hit");
        // Another analyzer's last text on this thread is not this one's.
        let c = other.analyze(sql).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(other.stats().misses, 1);
        // Back to the first: its shared entry, a fresh copy of this thread's own.
        let d = analyzer.analyze(sql).unwrap();
        assert_eq!(*a, *d);
        let e = analyzer.analyze(sql).unwrap();
        assert!(Arc::ptr_eq(&d, &e));
        assert_eq!(analyzer.stats().hits, 3);
        analyzer.clear();
        let f = analyzer.analyze(sql).unwrap();
        assert!(!Arc::ptr_eq(&e, &f), "cleared: analysed again");
        assert_eq!(analyzer.stats().misses, 2);
        // An error is remembered too, and a different text is not the last one.
        assert!(analyzer.analyze("SELEC oops").is_err());
        assert!(analyzer.analyze("SELEC oops").is_err());
        assert!(analyzer.analyze("SELECT 1").is_ok());
    }

    #[test]
    fn different_shapes_get_different_entries() {
        let analyzer = Analyzer::default();
        let a = analyzer.analyze("SELECT * FROM t WHERE a = 1").unwrap();
        let b = analyzer
            .analyze("SELECT * FROM t WHERE a = 1 FOR UPDATE")
            .unwrap();
        assert!(a.read_only);
        assert!(!b.read_only);
        assert_eq!(analyzer.stats().entries, 2);
    }

    #[test]
    fn errors_are_cached_too() {
        let analyzer = Analyzer::default();
        assert!(analyzer.analyze("SELEC 1").is_err());
        assert!(analyzer.analyze("SELEC 2").is_err());
        assert_eq!(analyzer.stats().hits, 1);
    }

    #[test]
    fn stays_bounded() {
        let analyzer = Analyzer::new(AnalyzerConfig {
            capacity: 64,
            shards: 4,
            ..AnalyzerConfig::default()
        });
        for i in 0..1000 {
            analyzer
                .analyze(&format!("SELECT c{i} FROM t WHERE a = 1"))
                .unwrap();
        }
        assert!(analyzer.stats().entries <= 64);
    }

    #[test]
    fn literal_values_of_the_call_are_available() {
        let analyzer = Analyzer::default();
        let mut stripped = Stripped::new();
        let sql = "SELECT * FROM t WHERE a = 42 AND b = 'x'";
        analyzer.analyze_stripped(sql, &mut stripped).unwrap();
        assert_eq!(
            stripped.literal_values(sql).collect::<Vec<_>>(),
            vec!["42", "'x'"]
        );
    }

    #[test]
    fn shared_across_threads() {
        let analyzer = Arc::new(Analyzer::default());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let analyzer = Arc::clone(&analyzer);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let a = analyzer
                            .analyze(&format!("SELECT * FROM t{} WHERE id = {i}", t % 2))
                            .unwrap();
                        assert!(a.read_only);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(analyzer.stats().entries, 2);
    }
}
