//! The result cache in the proxy (DESIGN.md §4): which statements are cached, under
//! which key, with which tags, and what a write invalidates. The storage, versions and
//! single flight are `pgopt-cache`'s; the relay (`relay.rs`) serves hits, captures
//! fills and invalidates at each transaction's end.
//!
//! What is cached: a simple-protocol query alone in its batch, outside any
//! transaction, in transaction pool mode without replicas, whose analysis says
//! cacheable (a read-only SELECT, nothing volatile or session-dependent, no locking
//! clause, no `pgopt:nocache` hint) and whose every relation is in `cache.tables`.
//! Tags are table names without their schema, so a write to `a.t` invalidates reads
//! of `b.t` too: more misses, never a stale row. Every entry also carries [`ALL`],
//! which writes whose tables are unknown (DDL, functions, COPY…) bump.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::views::{n, t, Kind, Table};
use pgopt_cache::{FillTicket, Flight, Key, KeyBuilder, L1Config, ResultCache};
use pgopt_sql::Analysis;

/// The tag every entry carries; bumping it invalidates everything.
pub const ALL: &str = "*";

/// `[cache]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub enabled: bool,
    /// Tables whose reads may be cached (`name` or `schema.name`; the schema is not
    /// told apart). A statement is cached only when it reads nothing else.
    pub tables: Vec<String>,
    /// How long an entry lives at most (writes through pgopt end it sooner).
    pub ttl: Duration,
    /// Bytes of entries held in memory at most.
    pub max_bytes: u64,
    /// Larger results are not stored.
    pub max_result_bytes: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: false,
            tables: Vec::new(),
            ttl: Duration::from_secs(60),
            max_bytes: 64 << 20,
            max_result_bytes: 1 << 20,
        }
    }
}

/// What the cache has done since start.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Fills stored, and fills not stored (a table changed meanwhile, too large, an
    /// error or notice in the reply).
    pub stored: AtomicU64,
    pub not_stored: AtomicU64,
    /// Transactions whose writes bumped table versions.
    pub invalidations: AtomicU64,
}

/// The proxy's cache: shared by every session.
pub struct ProxyCache {
    pub cache: ResultCache,
    pub settings: CacheSettings,
    tables: HashSet<String>,
    pub counters: CacheCounters,
}

impl ProxyCache {
    pub fn new(settings: &CacheSettings) -> Option<ProxyCache> {
        if !settings.enabled {
            return None;
        }
        Some(ProxyCache {
            cache: ResultCache::new(L1Config {
                max_bytes: settings.max_bytes,
                ..L1Config::default()
            }),
            tables: settings.tables.iter().map(|t| tag(t).to_string()).collect(),
            settings: settings.clone(),
            counters: CacheCounters::default(),
        })
    }

    /// The tags of a statement whose result may be cached, else `None`.
    pub fn tags(&self, analysis: &Analysis) -> Option<Vec<String>> {
        if !analysis.cacheable() || analysis.tables_read.is_empty() {
            return None;
        }
        let mut tags = Vec::with_capacity(analysis.tables_read.len() + 1);
        tags.push(ALL.to_string());
        for table in &analysis.tables_read {
            let t = tag(table);
            if !self.tables.contains(t) {
                return None;
            }
            tags.push(t.to_string());
        }
        Some(tags)
    }

    /// Ends the entries of `tables` (all entries for [`ALL`]).
    pub fn invalidate(&self, tables: &[String]) {
        if tables.is_empty() {
            return;
        }
        self.cache.invalidate(tables);
        self.counters.invalidations.fetch_add(1, Relaxed);
    }

    /// `CACHE FLUSH [table]`.
    pub fn flush(&self, table: Option<&str>) {
        match table {
            Some(t) => self.invalidate(&[tag(t).to_string()]),
            None => {
                self.invalidate(&[ALL.to_string()]);
                self.cache.l1.clear();
            }
        }
    }
}

/// SHOW CACHE: what the result cache holds and has done (one row; none when the
/// cache is off).
pub fn view(cache: Option<&ProxyCache>) -> Table {
    let mut table = Table::new(&[
        ("entries", Kind::Int),
        ("bytes", Kind::Int),
        ("max_bytes", Kind::Int),
        ("hits", Kind::Int),
        ("misses", Kind::Int),
        ("hit_ratio", Kind::Float),
        ("stored", Kind::Int),
        ("not_stored", Kind::Int),
        ("stale", Kind::Int),
        ("evictions", Kind::Int),
        ("invalidations", Kind::Int),
        ("tables", Kind::Text),
    ]);
    let Some(cache) = cache else {
        return table;
    };
    let l1 = cache.cache.l1.stats();
    let c = &cache.counters;
    let (hits, misses) = (c.hits.load(Relaxed), c.misses.load(Relaxed));
    let ratio = if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    };
    table.push(vec![
        n(l1.entries),
        n(l1.bytes),
        n(cache.settings.max_bytes),
        n(hits),
        n(misses),
        t(format!("{ratio:.3}")),
        n(c.stored.load(Relaxed)),
        n(c.not_stored.load(Relaxed)),
        n(l1.stale),
        n(l1.evictions),
        n(c.invalidations.load(Relaxed)),
        t(cache.settings.tables.join(",")),
    ]);
    table
}

/// The key of a simple query: who asks (database, user), the settings that shape
/// results (every SET the client made, start-up options included, as the statements
/// that would apply them), and the exact text.
pub fn key(database: &str, user: &str, settings: &[String], sql: &[u8]) -> Key {
    let mut builder = KeyBuilder::new()
        .part(b'd', database.as_bytes())
        .part(b'u', user.as_bytes())
        .part(b'n', &(settings.len() as u64).to_be_bytes());
    for statement in settings {
        builder = builder.part(b's', statement.as_bytes());
    }
    builder.part(b'q', sql).finish()
}

/// A table's tag: its name without the schema.
fn tag(table: &str) -> &str {
    table.rsplit('.').next().unwrap_or(table)
}

/// What the writes of the current transaction will invalidate when it ends.
#[derive(Debug, Default)]
pub struct PendingWrites {
    tables: Vec<String>,
}

impl PendingWrites {
    /// Notes a statement that will run: nothing for a read, its tables for a write
    /// whose tables are known, everything otherwise (or for text the parser refuses).
    pub fn note(&mut self, analysis: Option<&Analysis>) {
        match analysis {
            Some(a) if a.read_only => {}
            Some(a) if !a.tables_written.is_empty() && !a.unknown_writes => {
                for table in &a.tables_written {
                    let t = tag(table);
                    if !self.tables.iter().any(|x| x == t) {
                        self.tables.push(t.to_string());
                    }
                }
            }
            _ => self.note_unknown(),
        }
    }

    /// A write whose tables are unknown (a function call).
    pub fn note_unknown(&mut self) {
        if !self.tables.iter().any(|x| x == ALL) {
            self.tables.push(ALL.to_string());
        }
    }

    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.tables)
    }
}

/// A miss being filled: the table versions taken before the query went to the
/// server, the reply so far, and the single-flight slot (waiters wake when it drops).
pub struct Fill {
    pub ticket: FillTicket,
    pub reply: BytesMut,
    pub _flight: Option<Flight>,
}

/// What one server message does to a fill: `Some(reply)` at its ReadyForQuery (idle)
/// when everything before it could be stored.
pub enum Capture {
    Going,
    Abandon,
    Done(Bytes),
}

impl Fill {
    /// Takes one server message of the reply (`frame`: tag, length and body).
    pub fn capture(&mut self, frame: &[u8], max: usize) -> Capture {
        match frame[0] {
            b'T' | b'D' | b'C' => {
                self.reply.extend_from_slice(frame);
                if self.reply.len() > max {
                    Capture::Abandon
                } else {
                    Capture::Going
                }
            }
            b'Z' if frame.get(5) == Some(&b'I') => {
                Capture::Done(std::mem::take(&mut self.reply).freeze())
            }
            // An error, a notice, a parameter change, COPY…: not a plain result.
            _ => Capture::Abandon,
        }
    }
}
