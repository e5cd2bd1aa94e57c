//! Result cache (DESIGN.md §4, issue 6): entries keyed by everything that can change a
//! result, stored with the versions of the tables they read, valid only while those
//! versions stand.
//!
//! This crate knows nothing of sockets or the wire protocol: a value is opaque bytes
//! (the proxy stores the exact reply PostgreSQL sent), a table is a name the caller
//! resolved. What it guarantees:
//!
//! - **No collisions:** [`Key`]s are looked up by hash but compared in full.
//! - **No stale fill:** a fill takes the versions of its tables *before* the query runs
//!   ([`ResultCache::begin_fill`]); a write committed meanwhile bumps a version and the
//!   entry is born invalid ([`Versions`]).
//! - **Bounded memory:** L1 holds at most `max_bytes`, with TinyLFU admission and
//!   per-entry TTL with jitter ([moka]).
//! - **One trip per key:** concurrent misses on one key wait for the first one's fill
//!   ([`Flights`]); a failed or abandoned fill lets the waiters through, never caches an
//!   error.
//! - **Per-table counters:** hits, misses, fills, evictions and invalidations of each
//!   table an entry depends on ([`TableStats`]), for a bounded number of tables.

mod flight;
mod key;
mod l1;
mod l2;
mod resp;
mod shared;
mod tables;
mod versions;

pub use flight::{Flight, Flights, Joined};
pub use key::{push_part, Key, KeyBuf, KeyBuilder, KeyRef};
pub use l1::{Hit, L1Config, L1Stats, L1};
pub use l2::{Found, L2Counters, RedisConfig, RemoteWrites, L2};
pub use shared::{read_through, FromRedis, SharedCache, ALL};
pub use tables::{Source, TableCounters, TableRow, TableSet, TableStats, OTHER};
pub use versions::{Snapshot, Versions};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// A fill in progress: the table versions taken before the query ran.
#[derive(Debug)]
pub struct FillTicket {
    key: Key,
    snapshot: Snapshot,
    tables: TableSet,
}

impl FillTicket {
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The versions taken before the query ran.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The counters of the tables the fill reads.
    pub fn tables(&self) -> &TableSet {
        &self.tables
    }
}

/// L1 plus table versions: what the proxy and the library use.
pub struct ResultCache {
    pub l1: L1,
    pub versions: Arc<Versions>,
    /// What was done for each table (see [`TableStats`]).
    pub tables: Arc<TableStats>,
    pub flights: Flights,
    /// How long a caller waits for another's fill of the same key before it runs
    /// its own (the leader may hang).
    pub flight_timeout: Duration,
}

impl ResultCache {
    pub fn new(config: L1Config) -> ResultCache {
        ResultCache::with_tables(config, TableStats::default())
    }

    /// A cache whose per-table counters are `tables` (its cap, its tag for every
    /// table).
    pub fn with_tables(config: L1Config, tables: TableStats) -> ResultCache {
        ResultCache {
            l1: L1::new(config),
            versions: Arc::new(Versions::default()),
            tables: Arc::new(tables),
            flights: Flights::default(),
            flight_timeout: Duration::from_secs(5),
        }
    }

    /// The value under `key`, if present, unexpired and filled at the current
    /// versions of every table it read.
    pub fn get(&self, key: &Key) -> Option<Bytes> {
        self.l1.get(key, &self.versions)
    }

    /// [`ResultCache::get`], with the counters of the entry's tables (nothing is
    /// counted per table here: the caller counts the hit).
    pub fn lookup(&self, key: KeyRef<'_>) -> Option<Hit> {
        self.l1.lookup(key, &self.versions)
    }

    /// Starts filling `key` from a query over `tables`: call before the query runs.
    pub fn begin_fill<S: AsRef<str>>(&self, key: Key, tables: &[S]) -> FillTicket {
        FillTicket {
            snapshot: self.versions.snapshot(tables),
            tables: self.tables.resolve(tables),
            key,
        }
    }

    /// Stores the result of a fill; `false` when a table changed since
    /// [`ResultCache::begin_fill`] (nothing is stored: it may be stale).
    pub fn complete_fill(&self, ticket: FillTicket, value: Bytes, ttl: Duration) -> bool {
        if !self.versions.is_current(&ticket.snapshot) {
            return false;
        }
        self.l1
            .insert(ticket.key, ticket.snapshot, value, ttl, ticket.tables);
        true
    }

    /// A write to `tables` committed: every entry that read one of them is invalid
    /// from now on. Counted per table as a [`Source::Local`] invalidation.
    pub fn invalidate<S: AsRef<str>>(&self, tables: &[S]) {
        self.invalidate_from(tables, Source::Local);
    }

    /// [`ResultCache::invalidate`], counted per table as coming from `source`.
    pub fn invalidate_from<S: AsRef<str>>(&self, tables: &[S], source: Source) {
        self.versions.bump(tables);
        self.tables.invalidated(tables, source, &self.versions);
    }

    /// [`ResultCache::complete_fill`], counted per table as stored or not.
    pub fn complete_fill_counted(&self, ticket: FillTicket, value: Bytes, ttl: Duration) -> bool {
        let tables = ticket.tables.clone();
        let stored = self.complete_fill(ticket, value, ttl);
        if stored {
            tables.stored();
        } else {
            tables.not_stored();
        }
        stored
    }

    /// The library form (DESIGN.md §11), in memory only (with Redis, shared between
    /// processes: [`SharedCache`]): the value under `key`, else `fill`'s, stored
    /// for `ttl` and tagged with `tags` (invalidate them with
    /// [`ResultCache::invalidate`]). Concurrent callers for one key run `fill` once;
    /// an error is returned to its caller only, never stored.
    pub async fn get_or_set<S, F, Fut, E>(
        &self,
        key: Key,
        tags: &[S],
        ttl: Duration,
        fill: F,
    ) -> Result<Bytes, E>
    where
        S: AsRef<str>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        loop {
            if let Some(hit) = self.lookup(key.view()) {
                hit.tables.hit();
                return Ok(hit.value);
            }
            match self.flights.join(&key) {
                Joined::Leader(flight) => {
                    let ticket = self.begin_fill(key, tags);
                    ticket.tables.miss();
                    let value = fill().await?;
                    self.complete_fill_counted(ticket, value.clone(), ttl);
                    drop(flight); // wakes the waiters
                    return Ok(value);
                }
                Joined::Waiter(wait) => {
                    // The leader's fill (or its failure) ends the wait; look again.
                    if tokio::time::timeout(self.flight_timeout, wait)
                        .await
                        .is_err()
                    {
                        // The leader hangs: fill for this caller.
                        let ticket = self.begin_fill(key, tags);
                        ticket.tables.miss();
                        let value = fill().await?;
                        self.complete_fill_counted(ticket, value.clone(), ttl);
                        return Ok(value);
                    }
                }
            }
        }
    }
}
