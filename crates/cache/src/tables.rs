//! Per-table counters: what the cache did for each table it has dealt with (lookups,
//! fills, evictions, invalidations), bounded in memory.
//!
//! A table gets a row the first time a fill or lookup names it ([`TableStats::resolve`]),
//! up to a cap; past it, new tables share one `(other)` row. The hot path stays cheap:
//! a lookup's tables are resolved once, under a read lock, into a [`TableSet`] that the
//! fill ticket and then the L1 entry carry, so a hit, a stored fill or an eviction
//! counts with relaxed atomics and no lookup by name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use crate::versions::Versions;

/// The row shared by tables past the cap.
pub const OTHER: &str = "(other)";

/// Tables given a row of their own by default.
pub const DEFAULT_MAX_TABLES: usize = 1_000;

/// Where an invalidation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A write this process saw commit (or a flush asked of it).
    Local,
    /// Another instance's message on the invalidation bus (or a flush because the bus
    /// may have lost one).
    Bus,
    /// A change feed the caller follows (the proxy's logical replication listener).
    Stream,
}

/// One table's counters.
#[derive(Debug, Default)]
pub struct TableCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Fills stored, and fills not stored (a table changed meanwhile, too large…).
    pub stored: AtomicU64,
    pub not_stored: AtomicU64,
    /// Entries dropped for space (or turned away by admission when L1 is full).
    pub evictions: AtomicU64,
    /// Entries whose TTL ran out.
    pub expirations: AtomicU64,
    /// Invalidations by [`Source`]: local, bus, stream.
    pub invalidations: [AtomicU64; 3],
}

impl TableCounters {
    fn invalidated(&self, source: Source) {
        self.invalidations[source as usize].fetch_add(1, Relaxed);
    }
}

/// The counters of the tables one statement (one entry) depends on, each once.
#[derive(Debug, Clone, Default)]
pub struct TableSet(Arc<[Arc<TableCounters>]>);

impl TableSet {
    fn each(&self, f: impl Fn(&TableCounters) -> &AtomicU64) {
        for c in self.0.iter() {
            f(c).fetch_add(1, Relaxed);
        }
    }

    pub fn hit(&self) {
        self.each(|c| &c.hits)
    }

    pub fn miss(&self) {
        self.each(|c| &c.misses)
    }

    pub fn stored(&self) {
        self.each(|c| &c.stored)
    }

    pub fn not_stored(&self) {
        self.each(|c| &c.not_stored)
    }

    pub(crate) fn evicted(&self) {
        self.each(|c| &c.evictions)
    }

    pub(crate) fn expired(&self) {
        self.each(|c| &c.expirations)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One table's figures at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRow {
    /// The table's name as the caller gives it, or [`OTHER`].
    pub table: String,
    pub hits: u64,
    pub misses: u64,
    pub stored: u64,
    pub not_stored: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Invalidations by [`Source`]: local, bus, stream.
    pub invalidations: [u64; 3],
}

impl TableRow {
    /// Lookups of the table: how busy it is.
    pub fn lookups(&self) -> u64 {
        self.hits + self.misses
    }

    pub fn invalidations_total(&self) -> u64 {
        self.invalidations.iter().sum()
    }
}

/// Counters per table, for at most `max` tables plus [`OTHER`].
#[derive(Debug)]
pub struct TableStats {
    rows: RwLock<HashMap<String, Arc<TableCounters>>>,
    other: Arc<TableCounters>,
    max: usize,
    /// A tag that stands for every table (the proxy's `*`): it gets no row, and its
    /// invalidation counts for every row.
    everything: Option<String>,
}

impl Default for TableStats {
    fn default() -> Self {
        TableStats::new(DEFAULT_MAX_TABLES, None)
    }
}

impl TableStats {
    pub fn new(max: usize, everything: Option<&str>) -> TableStats {
        TableStats {
            rows: RwLock::default(),
            other: Arc::default(),
            max,
            everything: everything.map(str::to_string),
        }
    }

    fn is_everything(&self, table: &str) -> bool {
        self.everything.as_deref() == Some(table)
    }

    /// The counters of `tables` (each once; the "everything" tag left out), giving
    /// new tables a row while there is room, else [`OTHER`]'s.
    pub fn resolve<S: AsRef<str>>(&self, tables: &[S]) -> TableSet {
        let mut set: Vec<Arc<TableCounters>> = Vec::with_capacity(tables.len());
        let mut push = |c: &Arc<TableCounters>| {
            if !set.iter().any(|x| Arc::ptr_eq(x, c)) {
                set.push(c.clone());
            }
        };
        let mut missing = false;
        {
            let rows = self.rows.read().unwrap_or_else(|p| p.into_inner());
            for t in tables.iter().map(AsRef::as_ref) {
                if self.is_everything(t) {
                    continue;
                }
                match rows.get(t) {
                    Some(c) => push(c),
                    None => missing = true,
                }
            }
        }
        if missing {
            // A table seen for the first time: once per table (or while full).
            let mut rows = self.rows.write().unwrap_or_else(|p| p.into_inner());
            for t in tables.iter().map(AsRef::as_ref) {
                if self.is_everything(t) {
                    continue;
                }
                // Inserted by another thread since the read: counted all the same.
                if let Some(c) = rows.get(t) {
                    push(c);
                    continue;
                }
                if rows.len() < self.max {
                    let c = Arc::new(TableCounters::default());
                    rows.insert(t.to_string(), c.clone());
                    push(&c);
                } else {
                    push(&self.other);
                }
            }
        }
        TableSet(set.into())
    }

    /// `tables` were invalidated: each row counts it once — every row for the
    /// "everything" tag. A table without a row counts in [`OTHER`] when the rows are
    /// full and `versions` tracks it (entries depend on it); otherwise the cache has
    /// not dealt with it and nothing counts.
    pub fn invalidated<S: AsRef<str>>(&self, tables: &[S], source: Source, versions: &Versions) {
        let rows = self.rows.read().unwrap_or_else(|p| p.into_inner());
        if tables.iter().any(|t| self.is_everything(t.as_ref())) {
            // Everything: each row once, the named tables included.
            for c in rows.values() {
                c.invalidated(source);
            }
            if rows.len() >= self.max {
                self.other.invalidated(source);
            }
            return;
        }
        let mut other = false;
        for t in tables.iter().map(AsRef::as_ref) {
            match rows.get(t) {
                Some(c) => c.invalidated(source),
                None => other |= rows.len() >= self.max && versions.tracks(t),
            }
        }
        if other {
            self.other.invalidated(source);
        }
    }

    /// Every row, by table name, [`OTHER`] last when it has counted anything.
    pub fn rows(&self) -> Vec<TableRow> {
        let row = |table: &str, c: &TableCounters| TableRow {
            table: table.to_string(),
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            stored: c.stored.load(Relaxed),
            not_stored: c.not_stored.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            expirations: c.expirations.load(Relaxed),
            invalidations: [0, 1, 2].map(|i| c.invalidations[i].load(Relaxed)),
        };
        let mut out: Vec<TableRow> = {
            let rows = self.rows.read().unwrap_or_else(|p| p.into_inner());
            rows.iter().map(|(t, c)| row(t, c)).collect()
        };
        out.sort_unstable_by(|a, b| a.table.cmp(&b.table));
        let other = row(OTHER, &self.other);
        if other != row(OTHER, &TableCounters::default()) {
            out.push(other);
        }
        out
    }

    /// The `n` busiest rows (most lookups, then most invalidations, then by name).
    pub fn busiest(&self, n: usize) -> Vec<TableRow> {
        let mut rows = self.rows();
        rows.sort_by(|a, b| {
            b.lookups()
                .cmp(&a.lookups())
                .then(b.invalidations_total().cmp(&a.invalidations_total()))
                .then_with(|| a.table.cmp(&b.table))
        });
        rows.truncate(n);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_past_the_cap_share_one_row_and_everything_counts_for_all() {
        let stats = TableStats::new(2, Some("*"));
        let versions = Versions::default();
        let ab = stats.resolve(&["*", "a", "b", "a"]);
        assert_eq!(ab.len(), 2, "each table once, no row for *");
        ab.hit();
        ab.hit();
        let cd = stats.resolve(&["c", "d"]);
        assert_eq!(cd.len(), 1, "c and d share (other)");
        cd.miss();
        versions.snapshot(&["c"]);
        stats.invalidated(&["a", "c", "d", "zz"], Source::Local, &versions);
        stats.invalidated(&["*"], Source::Stream, &versions);
        // Named tables and everything in one commit: each row once.
        stats.invalidated(&["a", "*"], Source::Bus, &versions);
        let rows = stats.rows();
        let names: Vec<&str> = rows.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(names, ["a", "b", OTHER]);
        assert_eq!((rows[0].hits, rows[0].invalidations), (2, [1, 1, 1]));
        assert_eq!((rows[1].hits, rows[1].invalidations), (2, [0, 1, 1]));
        // c is tracked (once, though c and d were both named), d and zz are not.
        assert_eq!((rows[2].misses, rows[2].invalidations), (1, [1, 1, 1]));
        // As busy as b, more often invalidated.
        assert_eq!(stats.busiest(1)[0].table, "a");
    }
}
