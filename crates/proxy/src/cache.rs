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

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::fence::{FenceToken, Fences};
use crate::views::{n, t, Kind, Table};
use pgopt_cache::{
    push_part, FillTicket, Flight, L1Config, L2Counters, RedisConfig, ResultCache, Source,
    TableStats, L2,
};
use pgopt_sql::{Analysis, SessionEffect, StatementKind};
use pgopt_wire::frontend::{Bind, Describe, Execute, Parse};
use pgopt_wire::{Frame, Target};

/// The tag every entry carries; bumping it invalidates everything (the same as the
/// library's, so they share Redis).
pub use pgopt_cache::ALL;

/// Tables counted one by one (SHOW CACHE TABLES); reads of more share one `(other)`
/// row.
pub const MAX_TABLES: usize = 1_000;

/// `[cache]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub enabled: bool,
    /// Tables whose reads may be cached (`name` or `schema.name`; the schema is not
    /// told apart). A statement is cached only when it reads nothing else.
    pub tables: Vec<String>,
    /// Cache every cacheable read of listed tables. Off: only statements opted in
    /// by a `/* pgopt:cache */` hint or listed in `fingerprints`.
    pub auto: bool,
    /// Query shapes (SHOW QUERIES' fingerprints) cached whatever tables they read
    /// (still only read-only, non-volatile statements on cacheable relations).
    pub fingerprints: Vec<u64>,
    /// How long an entry lives at most (writes through pgopt end it sooner).
    pub ttl: Duration,
    /// A shorter or longer `ttl` for reads of some tables (the shortest of a
    /// statement's tables applies; a hint's `ttl=` comes first).
    pub table_ttl: Vec<(String, Duration)>,
    /// Bytes of entries held in memory at most.
    pub max_bytes: u64,
    /// Larger results are not stored.
    pub max_result_bytes: usize,
    /// Follow each database's committed changes on a logical replication stream
    /// (`wal_level = logical`; see `wal.rs`), so writes that bypass pgopt invalidate
    /// too, within the stream's lag.
    pub wal_listener: bool,
    /// The login the listener uses (it needs the REPLICATION attribute, and to create
    /// `publication` unless it exists): the database's configured user if unset.
    pub wal_user: Option<String>,
    /// The listener's password; if unset, the database's configured password when
    /// the listener logs in as the database's user, else none.
    pub wal_password: Option<String>,
    pub publication: String,
    /// With the listener on: how far behind its stream may fall before nothing is
    /// served or stored until it catches up (fail closed), timed by probes written
    /// into the WAL every quarter of it (at most every second; see `wal::Lag`).
    /// Zero: not watched. PostgreSQL 14 and later.
    pub wal_max_lag: Duration,
    /// Hear schema changes made directly on the server at once (see `ddl_watch.rs`):
    /// an event trigger, made with the listener's login (a superuser), notifies a
    /// connection of pgopt's.
    pub ddl_listener: bool,
    /// `[cache.redis]`: L2 and invalidations shared with other pgopt instances.
    pub redis: Option<RedisConfig>,
    /// The share of hits run again on PostgreSQL (on a connection of
    /// pgopt's own, in the background) and compared row by row: a built-in proof that
    /// what is served is what PostgreSQL has (0 = off).
    pub verify_fraction: f64,
    /// How long a write whose client left mid-statement is waited for (its
    /// connection held) before it is canceled; its tables are invalidated when it
    /// ends, everything if the cancel did not end it either.
    pub departed_write_timeout: Duration,
    /// How long a catalog read of what writes reach, and of who may read what, is
    /// trusted: schema and privilege changes made directly (with no `ddl_listener`,
    /// and role changes, which fire no event trigger) are seen within this long.
    pub catalog_refresh: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: false,
            tables: Vec::new(),
            auto: true,
            fingerprints: Vec::new(),
            ttl: Duration::from_secs(60),
            table_ttl: Vec::new(),
            max_bytes: 64 << 20,
            max_result_bytes: 1 << 20,
            wal_listener: false,
            wal_user: None,
            wal_password: None,
            publication: "pgopt_cache".into(),
            wal_max_lag: Duration::from_secs(5),
            ddl_listener: false,
            redis: None,
            verify_fraction: 0.0,
            departed_write_timeout: Duration::from_secs(60),
            catalog_refresh: DEPS_MAX_AGE,
        }
    }
}

/// What the cache has done since start.
#[derive(Debug)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Fills stored, and fills not stored (a table changed meanwhile, too large, an
    /// error or notice in the reply).
    pub stored: AtomicU64,
    pub not_stored: AtomicU64,
    /// Transactions whose writes bumped table versions.
    pub invalidations: AtomicU64,
    /// The replication listener: commits it invalidated for, how late (from commit to
    /// invalidation, in ms), and its state.
    pub wal_commits: AtomicU64,
    pub wal_staleness: Buckets,
    /// Each database's listener state, once it has one (SHOW CACHE's `wal`).
    pub wal_states: Mutex<std::collections::BTreeMap<String, String>>,
    /// With the listener on: listeners started (one per database) and those streaming
    /// now. Until every one streams, writes that bypass pgopt could go unseen, so
    /// nothing is served or stored (for any database: entries are not told apart).
    pub wal_listeners: std::sync::atomic::AtomicUsize,
    pub wal_streaming: std::sync::atomic::AtomicUsize,
    /// Streams that started and ended every value (here and, with Redis, shared),
    /// and those another instance's stream vouched for (see `wal::MARKER_PREFIX`).
    pub wal_gap_flushes: AtomicU64,
    pub wal_gaps_covered: AtomicU64,
    /// Each database's stream lag (ms) as its probes last timed it (see
    /// `wal::Lag::lag`), and the times a stream fell over `wal_max_lag` behind.
    pub wal_lags: Mutex<std::collections::BTreeMap<String, u64>>,
    pub wal_lag_stops: AtomicU64,
    /// The schema change listeners: each database's state (SHOW CACHE's `ddl`), and
    /// the changes heard.
    pub ddl_states: Mutex<std::collections::BTreeMap<String, String>>,
    pub ddl_changes: AtomicU64,
    /// pgopt's own time on a hit (µs): from the lookup to the reply written.
    pub hit_time: Buckets,
    /// Hits run again on PostgreSQL: the same rows, other rows, and runs that prove
    /// nothing (a write to the tables came in between, or the run failed).
    pub verified: AtomicU64,
    pub mismatches: AtomicU64,
    pub inconclusive: AtomicU64,
    verifying: AtomicU64,
}

impl CacheCounters {
    pub fn set_ddl_state(&self, database: &str, state: &str) {
        let mut states = self.ddl_states.lock().unwrap_or_else(|p| p.into_inner());
        states.insert(database.to_string(), state.to_string());
    }
}

impl Default for CacheCounters {
    fn default() -> Self {
        CacheCounters {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            inconclusive: AtomicU64::new(0),
            verifying: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            not_stored: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            wal_commits: AtomicU64::new(0),
            wal_staleness: Buckets::new(&STALENESS_MS),
            wal_states: Mutex::default(),
            wal_listeners: std::sync::atomic::AtomicUsize::new(0),
            wal_streaming: std::sync::atomic::AtomicUsize::new(0),
            wal_gap_flushes: AtomicU64::new(0),
            wal_gaps_covered: AtomicU64::new(0),
            wal_lags: Mutex::default(),
            wal_lag_stops: AtomicU64::new(0),
            ddl_states: Mutex::default(),
            ddl_changes: AtomicU64::new(0),
            hit_time: Buckets::new(&HIT_US),
        }
    }
}

/// Upper bounds (ms) of the staleness buckets of writes seen on the replication stream.
pub const STALENESS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];
/// Upper bounds (µs) of the hit-time buckets.
/// (A hit's time runs until its reply is written: a client slow to read stretches it,
/// hence the bounds up to a second.)
pub const HIT_US: [u64; 18] = [
    2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 5000, 10_000, 50_000, 100_000,
    1_000_000,
];

/// A fixed-bucket histogram, lock-free: a count per upper bound, and one past the last.
#[derive(Debug)]
pub struct Buckets {
    bounds: &'static [u64],
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Buckets {
    pub fn new(bounds: &'static [u64]) -> Buckets {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// The upper bounds, without the last bucket's (unbounded) one.
    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// The count of each bucket (one more than the bounds) and the sum of the values.
    pub fn counts(&self) -> (Vec<u64>, u64) {
        let counts = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        (counts, self.sum.load(Relaxed))
    }

    pub fn record(&self, value: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// The bucket bound under which `share` (0..1) of the samples fall (`None`: no
    /// samples; `u64::MAX`: past the last bound).
    pub fn quantile_bound(&self, share: f64) -> Option<u64> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen as f64 >= total as f64 * share {
                return Some(self.bounds.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// The proxy's cache: shared by every session.
pub struct ProxyCache {
    pub cache: ResultCache,
    pub settings: CacheSettings,
    tables: foldhash::HashSet<String>,
    pub counters: CacheCounters,
    /// Redis, when configured: L2 and the invalidation bus between instances.
    pub l2: Option<Arc<L2>>,
    /// Per database: what the catalog says writes reach (see [`Deps`]), and a count
    /// of schema changes (a read of the catalog that began before one is discarded).
    deps: Mutex<(foldhash::HashMap<String, DepsState>, u64)>,
    /// The generation in `deps`, readable without its lock (each fill's completion
    /// checks it).
    deps_generation: AtomicU64,
    /// [`SCHEMA`]'s version when last looked at, and the versions' bump count then
    /// (see [`ProxyCache::follow_schema_tag`]).
    schema_seen: AtomicU64,
    bumps_seen: AtomicU64,
    /// What else a schema change another instance made calls for (the functions that
    /// may set settings are read again: see `function_settings.rs`).
    schema_hook: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Per database, what may write unseen (see [`Writers`]), as the latest read of
    /// its catalog found it (kept while it is read again), and a count of changes
    /// (0: nothing was ever found), for sessions to keep a copy of their database's
    /// (see [`ProxyCache::writers`]).
    writers: Mutex<foldhash::HashMap<String, Arc<Writers>>>,
    writers_changes: AtomicU64,
    /// The catalog query for [`Deps`]: [`DEPS_QUERY`], with the replication
    /// listener's coverage when it is on.
    deps_query: String,
    /// Per database, the tables of `cache.tables` last reported as never cached (a
    /// warning is logged when this changes).
    uncached_warned: Mutex<foldhash::HashMap<String, Vec<(String, String)>>>,
    /// Per database and login (what a login's read prints differs: role settings, a
    /// policy's expression by the search_path), the privileges and the unreported
    /// defaults its last catalog read found (see [`Deps::privileges`],
    /// [`Deps::defaults`]).
    catalog_seen: Mutex<foldhash::HashMap<(String, String), CatalogSeen>>,
    /// What a fill that ran on a replica must have replayed to be stored (see
    /// `fence.rs`).
    pub fences: Arc<Fences>,
    /// With the listener on: the databases a listener follows, each with its servers
    /// and database (`ServerTarget::describe`), as at start. Only their clients are
    /// served (see [`ProxyCache::follows`]).
    followed: Mutex<std::collections::HashMap<String, String>>,
}

/// Whether an object found in both catalog reads allows other reads now (see
/// [`privileges`]).
fn privileges_moved(
    before: &foldhash::HashMap<String, String>,
    now: &foldhash::HashMap<String, String>,
) -> bool {
    now.iter()
        .any(|(object, allows)| before.get(object).is_some_and(|was| was != allows))
}

/// What a login's last catalog read found of who may read what and of a new session's
/// unreported defaults (see [`Deps::privileges`], [`Deps::defaults`]).
#[derive(Debug)]
struct CatalogSeen {
    privileges: foldhash::HashMap<String, String>,
    defaults: String,
}

/// What a catalog read found changed since the last (see [`ProxyCache::set_deps`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DepsNews {
    pub privileges: bool,
    pub defaults: bool,
}

/// A database's [`Deps`]: being read, read (until a schema change or
/// [`DEPS_MAX_AGE`]), or failed (tried again after a while).
enum DepsState {
    /// Since then: a read that never finished (its session went) is given up after
    /// [`DEPS_MAX_AGE`].
    Loading(Instant),
    Ready(Arc<Deps>, Instant),
    Failed(Instant),
}

/// How long the catalog's dependencies are trusted by default
/// ([`CacheSettings::catalog_refresh`]): schema changes that bypass pgopt (a new view,
/// trigger or foreign key) are seen within this long.
pub const DEPS_MAX_AGE: Duration = Duration::from_secs(30);
const DEPS_RETRY: Duration = Duration::from_secs(5);

/// A tag no entry carries, published with a schema change through pgopt (and with a
/// CACHE FLUSH): its version moving — a message from another instance, or a flush
/// because messages may have been lost — has the dependency map read again, as after
/// a schema change through this instance (a trigger or partition another instance
/// made changes what a write here reaches).
const SCHEMA: &str = "*schema";

/// What a write to a table reaches beyond the table, from the catalog: views read
/// their base tables; foreign keys with ON DELETE/UPDATE CASCADE, SET NULL or SET
/// DEFAULT change the referencing table; partitions and inheritance children are read
/// through their parents and the other way round; a trigger or a rule can write
/// anything. Names are without schema (names in different schemas are merged: more
/// invalidation, never less).
#[derive(Debug, Default)]
pub struct Deps {
    /// Every table, view, materialized view and foreign table.
    relations: foldhash::HashSet<String>,
    /// Who may read what, per object (see [`privileges`]).
    privileges: foldhash::HashMap<String, String>,
    /// A new session's defaults of the settings PostgreSQL does not report.
    defaults: String,
    /// View → the relations its query reads.
    view_reads: foldhash::HashMap<String, Vec<String>>,
    /// Referenced table → tables a write to it may change through a foreign key.
    cascades: foldhash::HashMap<String, Vec<String>>,
    /// Parent → children, and child → parents.
    children: foldhash::HashMap<String, Vec<String>>,
    parents: foldhash::HashMap<String, Vec<String>>,
    /// Tables with user triggers or rules, or whose column defaults or checks call a
    /// user function, and foreign tables (a foreign server may be this one, written
    /// through a connection of its own): a write to one may write anything.
    unbounded: foldhash::HashSet<String>,
    /// Relations not cached: row-level security (policies may read other tables, and
    /// differ per role), views calling user functions, temporary tables (one name,
    /// another table per session), unlogged and foreign tables (their writes are not
    /// in the WAL, or not on this server). Also views whose stored query reads a
    /// system relation (catalogs change with no write pgopt sees, and since
    /// PostgreSQL 15 a view's dependencies on pinned catalogs such as `pg_class` are
    /// not even recorded in `pg_depend`), calls a built-in function that is not
    /// immutable (`now()`, `random()`, the statistics functions) — but for the stable
    /// date, format and JSON functions whose results depend only on settings, which
    /// the key holds (`date_trunc`, `to_char`, the time zone casts, `format`,
    /// `to_json`, …; not `timetz(time)`, which reads the date) — or converts text to a
    /// date or time at run time (`txt::date`, where 'today' reads the clock), or uses
    /// `CURRENT_DATE` and its kind, or `TABLESAMPLE`: found in the view's rule
    /// (`pg_rewrite.ev_action`), which names every relation and function by OID.
    /// With why, for the log (see [`Deps::uncached_listed`]).
    uncacheable: foldhash::HashMap<String, String>,
    /// Names of functions (lower case) defined outside the system schemas that are not
    /// immutable: a call of one by a built-in's name (`length`, `lower`) may run the
    /// user's function (search_path, an argument type only it takes), which may write
    /// or read anything: not cached (see [`Deps::calls_user_function`]).
    user_functions: foldhash::HashSet<String>,
    /// Views whose query calls a volatile user function (or reads such a view): a
    /// read of one may write anything that function writes.
    writing_views: foldhash::HashSet<String>,
    /// What calls a user function that is not immutable without naming it: the
    /// symbols of such operators, and the names of types a cast to which, or a domain
    /// whose check, calls one. A statement whose text has one is not cached, and,
    /// when the function is volatile, may write anything (see [`calls_hidden`]).
    /// Tables with a column of such a domain (volatile) are `unbounded`.
    hidden_calls: Vec<String>,
    /// Those of `hidden_calls` whose function is volatile (a stable one may not
    /// write).
    hidden_writers: Vec<String>,
    /// Names every column of which is of a date or time type (arrays of one too): a
    /// statement converting a column to a date or time is cached only when its name
    /// is one of these (see `Analysis::datetime_casts`).
    datetime_columns: foldhash::HashSet<String>,
    /// Event triggers of the database's own (not pgopt's) are enabled: see
    /// [`Writers`].
    event_triggers: bool,
    /// The schema generation the catalog was read in (see [`ProxyCache::set_deps`]):
    /// a fill tagged from this map is stored only while it is current.
    pub generation: u64,
}

/// For [`DEPS_QUERY`]: `p`, the function a dependency `d` calls: the one it names,
/// or an operator's.
macro_rules! called {
    () => {
        "LEFT JOIN pg_catalog.pg_operator co \
    ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND co.oid = d.refobjid \
  JOIN pg_catalog.pg_proc p ON p.oid = CASE \
    WHEN d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.refobjid \
    ELSE co.oprcode::pg_catalog.oid END "
    };
}

/// For [`DEPS_QUERY`], before its first row: `dom (oid, vol)`, types whose values may
/// be made or checked by a function that is not immutable, and that function's
/// volatility (`s` for a built-in, which writes no table): domains whose check calls
/// one (by name or by operator; `now()`, `nextval()`…), types an implicit or
/// assignment cast of the user's makes with one (an INSERT of another type's value
/// calls it), and what holds one — a domain over it, an array of it, a composite type
/// (a table's row too) with a field of it.
macro_rules! checked_types {
    () => {
        concat!(
            "WITH RECURSIVE dom(oid, vol) AS ( \
  SELECT k.contypid, CASE WHEN p.oid >= 16384 THEN p.provolatile::pg_catalog.text ELSE 's' END \
  FROM pg_catalog.pg_constraint k \
  JOIN pg_catalog.pg_depend d ON d.objid = k.oid ",
            called!(),
            "\
  WHERE k.contypid <> 0 AND d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass \
  AND p.provolatile <> 'i' \
  UNION \
  SELECT c.casttarget, p.provolatile::pg_catalog.text FROM pg_catalog.pg_cast c \
  JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc \
  WHERE c.castcontext IN ('a', 'i') AND p.oid >= 16384 AND p.provolatile <> 'i' \
  UNION \
  SELECT t.oid, dom.vol FROM dom \
  LEFT JOIN pg_catalog.pg_attribute f ON f.atttypid = dom.oid AND f.attnum > 0 \
  JOIN pg_catalog.pg_type t ON t.typbasetype = dom.oid \
    OR t.typelem = dom.oid AND t.typcategory = 'A' \
    OR t.typtype = 'c' AND t.typrelid = f.attrelid \
) "
        )
    };
}

/// For [`DEPS_QUERY`]: `v`, the views whose query depends on type `x.oid` (a
/// conversion to it), from `dom x`.
macro_rules! views_of_checked_types {
    () => {
        "FROM pg_catalog.pg_depend d \
  JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
  JOIN pg_catalog.pg_class v ON v.oid = r.ev_class \
  JOIN dom x ON x.oid = d.refobjid \
  WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
  AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass AND v.relkind = 'v' "
    };
}

/// For [`DEPS_QUERY`]: `c` and `p`, the relations with a column of a type of the
/// user's that an implicit cast converts with `p`, a function of the user's that is
/// not immutable: a read of one may call it unseen (`x + 1` of a column of it).
macro_rules! implicitly_converted {
    () => {
        "FROM pg_catalog.pg_attribute a \
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
  JOIN pg_catalog.pg_cast k ON k.castsource = a.atttypid \
  JOIN pg_catalog.pg_proc p ON p.oid = k.castfunc \
  WHERE k.castcontext = 'i' AND a.atttypid >= 16384 AND p.oid >= 16384 \
  AND p.provolatile <> 'i' AND a.attnum > 0 AND NOT a.attisdropped \
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
    };
}

/// [`DEPS_QUERY`]'s last rows. 'g': a digest of a new session's values of the settings
/// PostgreSQL does not report (`session_state::UNREPORTED_DEFAULTS`), which ALTER
/// SYSTEM and a reload change on pooled connections silently (see
/// [`ProxyCache::set_deps`]). 'p': who may read what, per object — a role's attributes
/// and memberships; a relation's owner, options (a view's `security_invoker`…),
/// privileges, its columns', its row security and policies (temporary ones left out);
/// a schema's owner and privileges; a user function's owner, SECURITY DEFINER and
/// privileges. (A policy's expression is printed as the reading login's search_path
/// shows it: compared per database and login.) A
/// change made directly (GRANT or REVOKE of a role, ALTER ROLE … BYPASSRLS, a REVOKE
/// with no `ddl_listener`) is seen at the next read (see [`ProxyCache::set_deps`]);
/// objects made or dropped since are not compared (what a new one allows was read by
/// no entry).
macro_rules! privileges {
    () => {
        " \
UNION ALL \
SELECT 'p', 'c' || c.oid::pg_catalog.text, pg_catalog.concat_ws(':', \
  c.relowner::pg_catalog.text, coalesce(c.reloptions::pg_catalog.text, ''), \
  coalesce(c.relacl::pg_catalog.text, ''), c.relrowsecurity::pg_catalog.text, \
  c.relforcerowsecurity::pg_catalog.text, \
  coalesce((SELECT pg_catalog.string_agg(a.attnum::pg_catalog.text || '=' || \
    a.attacl::pg_catalog.text, ',' ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
    WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL), ''), \
  coalesce((SELECT pg_catalog.string_agg(o.polname::pg_catalog.text || '=' || \
    o.polpermissive::pg_catalog.text || o.polcmd::pg_catalog.text || \
    o.polroles::pg_catalog.text || coalesce(pg_catalog.pg_get_expr(o.polqual, o.polrelid), ''), \
    ',' ORDER BY o.polname) FROM pg_catalog.pg_policy o WHERE o.polrelid = c.oid), '')) \
  FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
  AND c.relpersistence <> 't' \
UNION ALL \
SELECT 'p', 'u' || r.oid::pg_catalog.text, pg_catalog.concat_ws(':', r.rolsuper::pg_catalog.text, \
  r.rolinherit::pg_catalog.text, r.rolbypassrls::pg_catalog.text, \
  coalesce((SELECT pg_catalog.string_agg(m.roleid::pg_catalog.text, ',' ORDER BY m.roleid) \
    FROM pg_catalog.pg_auth_members m WHERE m.member = r.oid), '')) FROM pg_catalog.pg_roles r \
UNION ALL \
SELECT 'p', 'n' || n.oid::pg_catalog.text, n.nspowner::pg_catalog.text || ':' || \
  coalesce(n.nspacl::pg_catalog.text, '') FROM pg_catalog.pg_namespace n \
UNION ALL \
SELECT 'p', 'f' || p.oid::pg_catalog.text, p.proowner::pg_catalog.text || ':' || \
  p.prosecdef::pg_catalog.text || ':' || coalesce(p.proacl::pg_catalog.text, '') \
  FROM pg_catalog.pg_proc p WHERE p.oid >= 16384 \
UNION ALL \
SELECT 'g', '', pg_catalog.string_agg(s.name || '=' || s.setting, ',' ORDER BY s.name) \
  FROM pg_catalog.pg_settings s WHERE pg_catalog.lower(s.name) IN ( \
  'role', 'search_path', 'extra_float_digits', 'bytea_output', 'lc_monetary', 'lc_numeric', 'lc_time', \
  'default_text_search_config', 'transform_null_equals', 'xmlbinary', 'xmloption', \
  'row_security', 'array_nulls', 'timezone_abbreviations', 'quote_all_identifiers', \
  'client_min_messages', 'escape_string_warning', 'gin_fuzzy_search_limit')"
    };
}

/// One round trip for [`Deps`]: (what, a, b) rows (for `s`, b says why).
pub const DEPS_QUERY: &str = concat!(
    checked_types!(),
    "\
SELECT 'r', c.relname, ''::pg_catalog.text FROM pg_catalog.pg_class c \
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
UNION ALL \
SELECT DISTINCT 'v', v.relname, t.relname FROM pg_catalog.pg_depend d \
  JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
  JOIN pg_catalog.pg_class v ON v.oid = r.ev_class \
  JOIN pg_catalog.pg_class t ON t.oid = d.refobjid \
  WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
  AND v.relkind = 'v' AND t.oid <> v.oid \
UNION ALL \
SELECT DISTINCT 'c', p.relname, c.relname FROM pg_catalog.pg_constraint k \
  JOIN pg_catalog.pg_class c ON c.oid = k.conrelid \
  JOIN pg_catalog.pg_class p ON p.oid = k.confrelid \
  WHERE k.contype = 'f' AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd')) \
UNION ALL \
SELECT 'i', p.relname, c.relname FROM pg_catalog.pg_inherits i \
  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
  JOIN pg_catalog.pg_class p ON p.oid = i.inhparent \
UNION ALL \
SELECT DISTINCT 't', c.relname, '' FROM pg_catalog.pg_trigger t \
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal \
UNION ALL \
SELECT DISTINCT 't', c.relname, '' FROM pg_catalog.pg_rewrite r \
  JOIN pg_catalog.pg_class c ON c.oid = r.ev_class WHERE c.relkind <> 'v' AND r.rulename <> '_RETURN' \
UNION ALL \
SELECT 't', c.relname, '' FROM pg_catalog.pg_class c WHERE c.relkind = 'f' \
UNION ALL \
SELECT DISTINCT 't', c.relname, '' FROM pg_catalog.pg_depend d \
  LEFT JOIN pg_catalog.pg_attrdef ad \
    ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND ad.oid = d.objid \
  LEFT JOIN pg_catalog.pg_constraint k \
    ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND k.oid = d.objid \
  JOIN pg_catalog.pg_class c ON c.oid = coalesce(ad.adrelid, k.conrelid) \
  ",
    called!(),
    "\
  WHERE p.oid >= 16384 AND d.refobjid >= 16384 \
UNION ALL \
SELECT 'd', a.attname, '' FROM pg_catalog.pg_attribute a \
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
  LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' \
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
  GROUP BY a.attname \
  HAVING pg_catalog.bool_and(coalesce(t.typcategory = 'D' OR e.typcategory = 'D', false)) \
UNION ALL \
SELECT 's', c.relname, CASE WHEN c.relrowsecurity THEN 'it has row-level security' \
    WHEN c.relpersistence = 't' THEN 'it is a temporary table' \
    WHEN c.relpersistence = 'u' THEN 'it is unlogged' ELSE 'it is a foreign table' END \
  FROM pg_catalog.pg_class c \
  WHERE c.relrowsecurity OR c.relpersistence IN ('t', 'u') OR c.relkind = 'f' \
UNION ALL \
SELECT DISTINCT 'f', p.proname, '' FROM pg_catalog.pg_proc p \
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND (p.provolatile <> 'i' \
    OR p.prokind = 'a' AND EXISTS (SELECT 1 FROM pg_catalog.pg_aggregate g \
      JOIN pg_catalog.pg_proc f ON f.oid IN (g.aggtransfn, g.aggfinalfn, g.aggcombinefn, \
        g.aggserialfn, g.aggdeserialfn, g.aggmtransfn, g.aggminvtransfn, g.aggmfinalfn) \
      WHERE g.aggfnoid = p.oid AND f.provolatile <> 'i')) \
UNION ALL \
SELECT DISTINCT 'h', o.oprname, p.provolatile::pg_catalog.text FROM pg_catalog.pg_operator o \
  JOIN pg_catalog.pg_operator x ON x.oid IN (o.oid, o.oprcom, o.oprnegate) \
  JOIN pg_catalog.pg_proc p ON p.oid = x.oprcode \
  WHERE x.oid >= 16384 AND p.provolatile <> 'i' \
UNION ALL \
SELECT DISTINCT 'h', o.oprname, p.provolatile::pg_catalog.text FROM pg_catalog.pg_amproc m \
  JOIN pg_catalog.pg_proc p ON p.oid = m.amproc \
  JOIN pg_catalog.pg_amop ao ON ao.amopfamily = m.amprocfamily \
  JOIN pg_catalog.pg_operator o ON o.oid = ao.amopopr \
  WHERE p.oid >= 16384 AND p.provolatile <> 'i' \
UNION ALL \
SELECT DISTINCT 'h', t.typname, p.provolatile::pg_catalog.text FROM pg_catalog.pg_cast c \
  JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc \
  JOIN pg_catalog.pg_type t ON t.oid = c.casttarget \
  WHERE p.oid >= 16384 AND p.provolatile <> 'i' \
UNION ALL \
SELECT DISTINCT 'h', t.typname, x.vol FROM dom x \
  JOIN pg_catalog.pg_type t ON t.oid = x.oid \
UNION ALL \
SELECT DISTINCT 't', c.relname, '' FROM pg_catalog.pg_attribute a \
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
  JOIN dom x ON x.oid = a.atttypid \
  WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') AND x.vol = 'v' \
UNION ALL \
SELECT DISTINCT 's', v.relname, \
  'the view converts to a type whose check calls a function that is not immutable' \
  ",
    views_of_checked_types!(),
    "\
UNION ALL \
SELECT DISTINCT 'w', v.relname, '' ",
    views_of_checked_types!(),
    "\
  AND x.vol = 'v' \
UNION ALL \
SELECT DISTINCT 's', c.relname, \
  'a column''s type converts implicitly with a user function that is not immutable' ",
    implicitly_converted!(),
    "\
UNION ALL \
SELECT DISTINCT 'w', c.relname, '' ",
    implicitly_converted!(),
    "\
  AND p.provolatile = 'v' \
UNION ALL \
SELECT DISTINCT 'w', v.relname, '' FROM pg_catalog.pg_depend d \
  JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
  JOIN pg_catalog.pg_class v ON v.oid = r.ev_class \
  ",
    called!(),
    "\
  WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND p.oid >= 16384 \
  AND d.refobjid >= 16384 AND p.provolatile = 'v' AND v.relkind = 'v' \
UNION ALL \
SELECT DISTINCT 's', v.relname, 'the view calls a user function' FROM pg_catalog.pg_depend d \
  JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
  JOIN pg_catalog.pg_class v ON v.oid = r.ev_class \
  ",
    called!(),
    "\
  WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND p.oid >= 16384 \
  AND d.refobjid >= 16384 \
UNION ALL \
SELECT DISTINCT 's', v.relname, \
  'the view reads a catalog, calls a built-in function that is neither immutable nor one of \
the stable date, format and JSON functions pgopt allows, or samples' \
  FROM pg_catalog.pg_rewrite r \
  JOIN pg_catalog.pg_class v ON v.oid = r.ev_class \
  CROSS JOIN LATERAL pg_catalog.regexp_matches(r.ev_action::pg_catalog.text, \
    ':(relid|funcid|opfuncid|aggfnoid|winfnoid) ([0-9]+)|[{](SQLVALUEFUNCTION|TABLESAMPLECLAUSE) \
|:resulttype (1082|1083|1114|1184|1266) :resultcollid ', 'g') m \
  WHERE v.relkind = 'v' AND v.oid >= 16384 AND (m[3] IS NOT NULL OR m[4] IS NOT NULL \
    OR m[1] = 'relid' AND m[2]::pg_catalog.oid BETWEEN 1 AND 16383 \
    OR m[1] <> 'relid' AND m[2]::pg_catalog.oid IN \
      (SELECT p.oid FROM pg_catalog.pg_proc p WHERE p.provolatile <> 'i' \
        AND NOT (p.provolatile = 's' AND p.oid < 16384 AND (p.proname IN (\
          'date_trunc', 'date_part', 'extract', 'to_char', 'to_date', 'to_timestamp', \
          'timezone', 'date', 'timestamp', 'timestamptz', 'time', \
          'generate_series', 'timestamptz_pl_interval', 'timestamptz_mi_interval', \
          'interval_pl_timestamptz', 'format', 'concat', 'concat_ws', 'to_json', \
          'to_jsonb', 'row_to_json', 'array_to_json', 'json_build_object', \
          'jsonb_build_object', 'json_build_array', 'jsonb_build_array', 'json_agg', \
          'jsonb_agg', 'json_object_agg', 'jsonb_object_agg') \
          OR p.proname ~ '^(date|timestamp|timestamptz)_(eq|ne|lt|le|gt|ge|cmp)_(date|timestamp|timestamptz)$')))) \
UNION ALL \
SELECT 'e', e.evtname, '' FROM pg_catalog.pg_event_trigger e \
  WHERE e.evtenabled <> 'D' AND e.evtname NOT IN ('pgopt_ddl', 'pgopt_ddl_drop')",
    privileges!()
);

/// With the replication listener on ([`CacheSettings::wal_listener`]), what
/// [`DEPS_QUERY`] adds: tables and materialized views whose changes the listener's
/// `publication` does not carry — not in it, neither directly nor through a partition
/// root published for them; published with a row filter (an update outside it is not
/// streamed); or the publication leaves out inserts, updates, deletes or TRUNCATE (or
/// does not exist). A materialized view is never in a publication: a `REFRESH` that
/// bypasses pgopt is not streamed. ('u' rows; reads of these, and of their parents and
/// views over them, are not cached: a write that bypasses pgopt would go unseen.)
fn uncovered_query(publication: &str) -> String {
    let name = crate::session_state::quote_literal(publication);
    format!(
        " UNION ALL \
SELECT DISTINCT 'u', c.relname, '' FROM pg_catalog.pg_class c \
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
  WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p' \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
  AND NOT EXISTS (SELECT 1 FROM ( \
      SELECT l.oid AS leaf, l.oid AS rel FROM pg_catalog.pg_class l WHERE l.relkind IN ('r', 'm') \
      UNION ALL SELECT l.oid, x.relid FROM pg_catalog.pg_class l \
        CROSS JOIN LATERAL pg_catalog.pg_partition_ancestors(l.oid) x \
        WHERE l.relkind = 'r' AND l.relispartition) a \
    JOIN (SELECT pc.oid FROM pg_catalog.pg_publication p \
      JOIN pg_catalog.pg_publication_tables pt ON pt.pubname = p.pubname \
      JOIN pg_catalog.pg_namespace pn ON pn.nspname = pt.schemaname \
      JOIN pg_catalog.pg_class pc ON pc.relnamespace = pn.oid AND pc.relname = pt.tablename \
      WHERE p.pubname = {name} AND p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate \
      AND (pg_catalog.to_jsonb(pt) ->> 'rowfilter') IS NULL) covered ON covered.oid = a.rel \
    WHERE a.leaf = c.oid)"
    )
}

impl Deps {
    /// From [`DEPS_QUERY`]'s rows (and [`uncovered_query`]'s).
    pub fn from_rows(rows: &[Vec<Option<String>>]) -> Deps {
        let mut deps = Deps::default();
        let mut uncovered = Vec::new();
        for row in rows {
            let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let (what, a, b) = (field(0), field(1), field(2));
            match what.as_str() {
                "r" => {
                    deps.relations.insert(a);
                }
                "p" => {
                    deps.privileges.insert(a, b);
                }
                // (In the third column: the second is of type name, 63 bytes at most.)
                "g" => deps.defaults = b,
                "v" => deps.view_reads.entry(a).or_default().push(b),
                "c" => deps.cascades.entry(a).or_default().push(b),
                "i" => {
                    deps.children.entry(a.clone()).or_default().push(b.clone());
                    deps.parents.entry(b).or_default().push(a);
                }
                "t" => {
                    deps.unbounded.insert(a);
                }
                "s" => {
                    // One reason, whatever the rows' order (for a log line that
                    // changes only when the catalog does).
                    let why = deps.uncacheable.entry(a).or_insert_with(|| b.clone());
                    if b < *why {
                        *why = b;
                    }
                }
                "u" => uncovered.push(a),
                "w" => {
                    deps.writing_views.insert(a);
                }
                "h" => {
                    let a = a.to_ascii_lowercase();
                    // (Only a volatile function may write.)
                    if b == "v" && !deps.hidden_writers.contains(&a) {
                        deps.hidden_writers.push(a.clone());
                    }
                    if !deps.hidden_calls.contains(&a) {
                        deps.hidden_calls.push(a);
                    }
                }
                "f" => {
                    deps.user_functions.insert(a.to_lowercase());
                }
                "d" => {
                    deps.datetime_columns.insert(a);
                }
                "e" => deps.event_triggers = true,
                _ => {}
            }
        }
        // (In one order whatever the rows': equal lists compare equal.)
        deps.hidden_calls.sort();
        deps.hidden_writers.sort();
        // A view over a view that may write may write too.
        loop {
            let more: Vec<String> = deps
                .view_reads
                .iter()
                .filter(|(v, reads)| {
                    !deps.writing_views.contains(*v)
                        && reads.iter().any(|r| deps.writing_views.contains(r))
                })
                .map(|(v, _)| v.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            deps.writing_views.extend(more);
        }
        // A parent's reads include its children's rows.
        let mut todo: Vec<(String, &str)> = uncovered
            .into_iter()
            .map(|t| {
                (
                    t,
                    "the replication listener's publication does not carry all its changes",
                )
            })
            .collect();
        let mut seen = foldhash::HashSet::default();
        while let Some((r, why)) = todo.pop() {
            if seen.insert(r.clone()) {
                todo.extend(deps.parents.get(&r).into_iter().flatten().map(|p| {
                    let why = "the replication listener's publication does not carry all \
                        changes of a partition or child of it";
                    (p.clone(), why)
                }));
                deps.uncacheable.entry(r).or_insert_with(|| why.to_string());
            }
        }
        deps
    }

    /// Which of `listed` (`cache.tables`) are never cached, and why, sorted: for a
    /// warning when the catalog is read (a table or view named there that is never
    /// cached is a configuration the DBA should hear about). A view is reported for
    /// the first relation it reads that is not cached.
    pub fn uncached_listed<'a>(
        &self,
        listed: impl Iterator<Item = &'a str>,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = listed
            .filter_map(|t| {
                let mut todo = vec![t];
                let mut seen = Vec::new();
                while let Some(r) = todo.pop() {
                    if let Some(why) = self.uncacheable.get(r) {
                        let why = if r == t {
                            why.clone()
                        } else {
                            format!("it reads {r}: {why}")
                        };
                        return Some((t.to_string(), why));
                    }
                    if !seen.contains(&r) {
                        seen.push(r);
                        todo.extend(
                            self.view_reads
                                .get(r)
                                .into_iter()
                                .flatten()
                                .map(String::as_str),
                        );
                    }
                }
                None
            })
            .collect();
        out.sort();
        out
    }

    /// Whether a statement calling `functions` (as written, see
    /// `Analysis::functions`) may call a user function the analysis took for a
    /// built-in: one of that name exists, and the call does not name `pg_catalog`.
    fn calls_user_function(&self, functions: &[String]) -> bool {
        !self.user_functions.is_empty()
            && functions.iter().any(|f| {
                let f = f.to_ascii_lowercase();
                match f.rsplit_once('.') {
                    Some((schema, _)) if schema.trim_matches('"') == "pg_catalog" => false,
                    Some((_, name)) => self.user_functions.contains(name.trim_matches('"')),
                    None => self.user_functions.contains(f.trim_matches('"')),
                }
            })
    }

    /// Whether every column named `name` is of a date or time type.
    fn datetime_column(&self, name: &str) -> bool {
        self.datetime_columns.contains(name)
    }

    /// The tags of a read of `relation`: itself, and for a view every relation it
    /// reads (views of views too). `None` for a relation the catalog doesn't have.
    fn read_tags(&self, relation: &str, into: &mut Vec<String>) -> Option<()> {
        if !self.relations.contains(relation) {
            return None;
        }
        let mut todo = vec![relation.to_string()];
        while let Some(r) = todo.pop() {
            // What a view reads must be known (and cacheable) too.
            if self.uncacheable.contains_key(&r) || !self.relations.contains(&r) {
                return None;
            }
            if into.contains(&r) {
                continue;
            }
            if let Some(reads) = self.view_reads.get(&r) {
                todo.extend(reads.iter().cloned());
            }
            into.push(r);
        }
        Some(())
    }

    /// What a write to `tables` may change: the tables, what cascades reach, parents
    /// and children, a view's base tables (views themselves need no tag: reads of a
    /// view carry its base tables' tags); [`ALL`] when a trigger or rule is involved.
    /// (Inheritance is followed both ways from every table reached: a partition's
    /// siblings are invalidated too — more misses, and correct with multiple
    /// inheritance.)
    /// `effects`: follow cascades and triggers too (a write seen on the replication
    /// stream already lists every table its triggers and cascades changed).
    fn reach(&self, tables: &[String], effects: bool) -> Vec<String> {
        // Names borrowed until the end: one copy of each tag reached.
        let mut out: Vec<&str> = Vec::with_capacity(tables.len());
        let mut todo: Vec<&str> = tables.iter().map(String::as_str).collect();
        while let Some(t) = todo.pop() {
            // A relation the catalog didn't have when it was read (created or
            // attached since, outside pgopt): what it reaches is unknown.
            if t == ALL || (effects && self.unbounded.contains(t)) || !self.relations.contains(t) {
                return vec![ALL.to_string()];
            }
            if out.contains(&t) {
                continue;
            }
            // A write into a view writes its base tables.
            for next in [&self.view_reads, &self.parents, &self.children] {
                todo.extend(next.get(t).into_iter().flatten().map(String::as_str));
            }
            if effects {
                todo.extend(
                    self.cascades
                        .get(t)
                        .into_iter()
                        .flatten()
                        .map(String::as_str),
                );
            }
            out.push(t);
        }
        out.into_iter().map(str::to_string).collect()
    }
}

impl ProxyCache {
    /// The cache `settings` ask for (`None` when off). Connecting to Redis begins in
    /// the background (call within a Tokio runtime); a bad Redis URL is an error.
    pub fn new(settings: &CacheSettings) -> Result<Option<ProxyCache>, String> {
        if !settings.enabled {
            return Ok(None);
        }
        let cache = ResultCache::with_tables(
            L1Config {
                max_bytes: settings.max_bytes,
                ..L1Config::default()
            },
            TableStats::new(MAX_TABLES, Some(ALL)),
        );
        // Tracked from the start: other instances' messages move its version.
        cache.versions.snapshot(&[SCHEMA]);
        let l2 = match &settings.redis {
            None => None,
            Some(redis) => {
                // Invalidations may have been missed: every entry carries ALL.
                let (versions, tables) = (cache.versions.clone(), cache.tables.clone());
                let flush = Arc::new(move || {
                    versions.bump(&[ALL, SCHEMA]);
                    tables.invalidated(&[ALL], Source::Bus, &versions);
                });
                Some(
                    L2::start(
                        redis.clone(),
                        cache.versions.clone(),
                        cache.tables.clone(),
                        flush,
                    )
                    .map_err(|e| format!("cache.redis.url: {e}"))?,
                )
            }
        };
        Ok(Some(ProxyCache {
            cache,
            l2,
            tables: settings.tables.iter().map(|t| tag(t).to_string()).collect(),
            settings: settings.clone(),
            counters: CacheCounters::default(),
            deps: Mutex::new((Default::default(), 0)),
            deps_generation: AtomicU64::new(0),
            schema_seen: AtomicU64::new(0),
            bumps_seen: AtomicU64::new(0),
            schema_hook: std::sync::OnceLock::new(),
            writers: Mutex::default(),
            writers_changes: AtomicU64::new(0),
            uncached_warned: Mutex::default(),
            catalog_seen: Mutex::default(),
            // (JIT would compile the long query, on its own connection, each time: a
            // quarter of a second to seconds, for a read of 50 ms.)
            deps_query: match settings.wal_listener {
                true => format!(
                    "SET jit = off; {DEPS_QUERY}{}",
                    uncovered_query(&settings.publication)
                ),
                false => format!("SET jit = off; {DEPS_QUERY}"),
            },
            fences: Arc::new(Fences::default()),
            followed: Mutex::default(),
        }))
    }

    /// A listener follows `db` (see `follow_wal`).
    pub fn follow(&self, db: &crate::config::Database) {
        self.followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(db.name.clone(), servers_of(db));
    }

    /// Whether writes that bypass pgopt to `database` on `target` are followed (always
    /// with the listener off): not for a database reached through `*`, added by a
    /// RELOAD, moved by one to other servers, or never cached (no listener then).
    pub fn follows(&self, database: &str, target: &crate::server::ServerTarget) -> bool {
        !self.settings.wal_listener
            || self
                .followed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(database)
                .is_some_and(|servers| *servers == target.describe())
    }

    /// The query that reads a database's [`Deps`].
    pub fn deps_query(&self) -> &str {
        &self.deps_query
    }

    /// Whether requests may be answered and filled now: not while the replication
    /// listener, when on, is not streaming.
    /// With Redis, not while the invalidation channel is down either.
    pub fn serving(&self) -> bool {
        (!self.settings.wal_listener || {
            let listeners = self.counters.wal_listeners.load(Relaxed);
            listeners > 0 && self.counters.wal_streaming.load(Relaxed) == listeners
        }) && self.l2.as_ref().is_none_or(|l2| l2.serving())
    }

    /// `database`'s dependencies when known and fresh. Otherwise `None`, with a
    /// ticket when the caller should read them (nobody else is): pass it back to
    /// [`ProxyCache::set_deps`].
    /// `now`: the caller's clock (see `Relay::clock`), read before the lock: another
    /// session may have stored a later moment (hence saturating).
    pub fn deps(&self, database: &str, now: Instant) -> (Option<Arc<Deps>>, Option<u64>) {
        self.follow_schema_tag();
        let mut guard = self.deps.lock().unwrap_or_else(|p| p.into_inner());
        let (map, generation) = &mut *guard;
        match map.get(database) {
            Some(DepsState::Ready(deps, at))
                if now.saturating_duration_since(*at) < self.settings.catalog_refresh =>
            {
                (Some(deps.clone()), None)
            }
            Some(DepsState::Loading(at)) if now.saturating_duration_since(*at) < DEPS_MAX_AGE => {
                (None, None)
            }
            Some(DepsState::Failed(at)) if now.saturating_duration_since(*at) < DEPS_RETRY => {
                (None, None)
            }
            _ => {
                map.insert(database.to_string(), DepsState::Loading(now));
                (None, Some(*generation))
            }
        }
    }

    /// Another instance changed the schema ([`SCHEMA`]'s version moved): the
    /// dependencies are read again, and what [`ProxyCache::on_schema_elsewhere`]
    /// asked for runs. (Only once some version moved since the last look: most calls
    /// read one counter.) Each lookup calls it, and each checkout of a server
    /// connection.
    pub fn follow_schema_tag(&self) {
        let versions = &self.cache.versions;
        let bumps = versions.bumps.load(Relaxed);
        if self.bumps_seen.swap(bumps, Relaxed) == bumps {
            return;
        }
        let schema = versions.get(SCHEMA);
        if self.schema_seen.swap(schema, Relaxed) != schema {
            self.schema_changed();
            if let Some(hook) = self.schema_hook.get() {
                hook();
            }
        }
    }

    /// Runs `hook` after each schema change another instance made (see
    /// [`ProxyCache::follow_schema_tag`]); set once.
    pub fn on_schema_elsewhere(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = self.schema_hook.set(hook);
    }

    /// The outcome of reading `database`'s dependencies with `ticket`, as `login`;
    /// dropped when the schema changed since the read began. What changed since the
    /// last read: privileges (then every entry must end: see
    /// [`ProxyCache::privileges_changed`]), and a new session's defaults of settings
    /// PostgreSQL does not report (then the database's pooled connections, which may
    /// have taken them silently, are replaced: new ones read them for the key).
    pub fn set_deps(
        &self,
        (database, login): (&str, &str),
        ticket: u64,
        deps: Option<Deps>,
    ) -> DepsNews {
        let mut news = DepsNews::default();
        let mut deps = deps;
        if let Some(d) = &mut deps {
            self.warn_uncached(database, d);
            let now = CatalogSeen {
                privileges: std::mem::take(&mut d.privileges),
                defaults: std::mem::take(&mut d.defaults),
            };
            let mut seen = self.catalog_seen.lock().unwrap_or_else(|p| p.into_inner());
            let key = (database.to_string(), login.to_string());
            if let Some(before) = seen.get(&key) {
                news = DepsNews {
                    privileges: privileges_moved(&before.privileges, &now.privileges),
                    defaults: before.defaults != now.defaults,
                };
            }
            seen.insert(key, now);
            let writers = Writers {
                views: d.writing_views.clone(),
                hidden: d.hidden_writers.clone(),
                event_triggers: d.event_triggers,
            };
            let mut known = self.writers.lock().unwrap_or_else(|p| p.into_inner());
            let changed = match known.get(database) {
                Some(known) => **known != writers,
                None => !writers.is_empty(),
            };
            if changed {
                known.insert(database.to_string(), Arc::new(writers));
                self.writers_changes.fetch_add(1, Relaxed);
            }
        }
        let state = match deps {
            Some(mut d) => {
                d.generation = ticket;
                DepsState::Ready(Arc::new(d), Instant::now())
            }
            None => DepsState::Failed(Instant::now()),
        };
        let mut guard = self.deps.lock().unwrap_or_else(|p| p.into_inner());
        let (map, generation) = &mut *guard;
        if *generation == ticket {
            map.insert(database.to_string(), state);
        }
        news
    }

    /// A catalog read found privileges changed (made directly: through pgopt a GRANT
    /// or REVOKE ends everything at its commit): every entry ends, here and on the
    /// instances sharing Redis, as who may read what is in no entry's tags.
    pub fn privileges_changed(self: &Arc<Self>, database: &str) {
        tracing::info!(
            %database,
            "privileges changed (roles, grants or row security, made directly): the cache's entries end"
        );
        let tags = vec![ALL.to_string()];
        self.bump(&tags, Source::Local);
        self.cache.l1.clear();
        self.publish_later(tags);
    }

    /// Logs the tables of `cache.tables` that `database`'s catalog says are never
    /// cached, with why, when that list changed since the last read.
    fn warn_uncached(&self, database: &str, deps: &Deps) {
        let uncached = deps.uncached_listed(self.tables.iter().map(String::as_str));
        let mut warned = self
            .uncached_warned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if warned.get(database) == Some(&uncached) {
            return;
        }
        for (table, why) in &uncached {
            tracing::warn!(
                %database,
                %table,
                "listed in cache.tables but never cached: {why}"
            );
        }
        warned.insert(database.to_string(), uncached);
    }

    /// `database`'s dependencies when read (however old), without asking for a read:
    /// after [`ProxyCache::set_deps`], whose result a schema change may have dropped.
    pub fn ready_deps(&self, database: &str) -> Option<Arc<Deps>> {
        let guard = self.deps.lock().unwrap_or_else(|p| p.into_inner());
        match guard.0.get(database) {
            Some(DepsState::Ready(deps, _)) => Some(deps.clone()),
            _ => None,
        }
    }

    /// The schema generation now: a fill whose tags came from a map of another one is
    /// not stored.
    pub fn deps_generation(&self) -> u64 {
        self.deps_generation.load(Relaxed)
    }

    /// How many times what may write unseen changed, in any database (0: nothing
    /// was ever found): a session's copy of its database's is good while this stays.
    pub fn writers_changes(&self) -> u64 {
        self.writers_changes.load(Relaxed)
    }

    /// What in `database` may write unseen (see [`Writers`]).
    pub fn writers(&self, database: &str) -> Option<Arc<Writers>> {
        let writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        writers.get(database).filter(|w| !w.is_empty()).cloned()
    }

    /// The schema may have changed: the dependencies are read again before anything
    /// more is cached (a read is cached only with fresh dependencies).
    pub fn schema_changed(&self) {
        let mut guard = self.deps.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.clear();
        guard.1 += 1;
        self.deps_generation.store(guard.1, Relaxed);
    }

    /// The tags and TTL of a statement whose result may be cached, else `None`. It
    /// must be opted in — a `pgopt:cache` hint, a listed fingerprint, or (`auto`) every
    /// relation it reads listed — and every relation must be known to the catalog and
    /// cacheable; a view is tagged with what it reads.
    pub fn tags(&self, analysis: &Analysis, deps: &Deps) -> Option<(Vec<String>, Duration)> {
        // A user function may read tables the text doesn't name (or write).
        if !analysis.cacheable()
            || analysis.tables_read.is_empty()
            || analysis.user_functions
            || deps.calls_user_function(&analysis.functions)
            || calls_hidden(&deps.hidden_calls, analysis)
        {
            return None;
        }
        // A text column converted to a date or time: 'now' in it reads the clock.
        if !analysis
            .datetime_casts
            .iter()
            .all(|c| deps.datetime_column(c))
        {
            return None;
        }
        let hint = analysis.hints.cache.as_ref();
        let opted_in = hint.is_some() || self.settings.fingerprints.contains(&analysis.fingerprint);
        let mut tags = vec![ALL.to_string()];
        let mut ttl = self.settings.ttl;
        for table in &analysis.tables_read {
            let t = tag(table);
            let listed = self.settings.auto && self.tables.contains(t);
            if !(opted_in || listed) {
                return None;
            }
            deps.read_tags(t, &mut tags)?;
        }
        // The shortest of every table read, through views too.
        for (name, table_ttl) in &self.settings.table_ttl {
            if tags.iter().any(|t| t == tag(name)) {
                ttl = ttl.min(*table_ttl);
            }
        }
        if let Some(hinted) = hint.and_then(|h| h.ttl) {
            // A client's hint: at most a day.
            ttl = hinted.min(Duration::from_secs(86_400));
        }
        Some((tags, ttl))
    }

    /// A transaction that wrote `writes` ended: the entries of those tables, and of
    /// what the writes reach through the catalog, end (all entries when the catalog
    /// is not known or a trigger is involved).
    /// Returns the tags bumped when Redis is shared (none without it): other instances
    /// learn them from [`ProxyCache::publish`];
    /// and the write's fence, pending until the commit's WAL position is known (see
    /// `fence.rs`: taken before the bump; dropped unresolved, it waits for the
    /// primary's next health check).
    /// (`fence`: the key of the database's server, see `fence::key`.)
    pub fn invalidate(
        &self,
        database: &str,
        fence: &str,
        writes: PendingWrites,
    ) -> (Vec<String>, Option<FenceToken>) {
        if writes.tables.is_empty() {
            return (Vec::new(), None);
        }
        let mut tags = self.reach(database, &writes.tables, true);
        if writes.ddl && self.l2.is_some() {
            tags.push(SCHEMA.to_string());
        }
        let publish = if self.l2.is_some() {
            tags.clone()
        } else {
            Vec::new()
        };
        let fence = self.fences.begin(fence, tags);
        self.bump(fence.tags(), Source::Local);
        if writes.schema {
            self.schema_changed();
        }
        (publish, Some(fence))
    }

    /// Tells every instance sharing Redis that `tags` were written (their versions in
    /// Redis move on): a no-op without Redis. When Redis is not reached the tags are
    /// owed and told once it is back.
    pub async fn publish(&self, tags: &[String]) {
        let Some(l2) = &self.l2 else { return };
        match l2.publish(tags).await {
            Some(versions) => self
                .cache
                .versions
                .observe(versions.iter().map(|(t, v)| (t.as_str(), *v))),
            // A value read from Redis while this publish was out may have gone into
            // L1 at the bumped versions: bumped again (lookups are misses until the
            // tables are paid). Not counted again: the commit was.
            None => self.cache.versions.bump(tags),
        }
    }

    /// A cacheable request of `tags` goes to the server because the cache can't serve
    /// now (Redis or the replication listener down): a miss, in the totals and per
    /// table, so the hit ratio shows the outage.
    pub fn bypassed(&self, tags: &[String]) {
        self.counters.misses.fetch_add(1, Relaxed);
        self.cache.tables.resolve(tags).miss();
    }

    /// [`ProxyCache::publish`] in the background (no client waits for it).
    pub fn publish_later(self: &Arc<Self>, tags: Vec<String>) {
        if self.l2.is_some() && !tags.is_empty() {
            let cache = self.clone();
            tokio::spawn(async move { cache.publish(&tags).await });
        }
    }

    /// The tags a write to `tables` reaches through `database`'s catalog (see
    /// [`Deps::reach`]); everything when the catalog is not known.
    fn reach(&self, database: &str, tables: &[String], effects: bool) -> Vec<String> {
        let deps = self.deps.lock().unwrap_or_else(|p| p.into_inner());
        match deps.0.get(database) {
            Some(DepsState::Ready(deps, _)) => deps.reach(tables, effects),
            _ => vec![ALL.to_string()],
        }
    }

    /// A transaction committed on the server, seen on the replication stream: what it
    /// changed (triggers and cascades included) ends its entries, here and, through
    /// Redis' versions, in L2 (whose values the local bump alone leaves valid: an L1
    /// miss would find the old result there until its TTL) and on instances that
    /// follow no stream. (Each instance that follows one publishes it too.)
    pub fn invalidate_committed(
        self: &Arc<Self>,
        database: &str,
        fence: &str,
        committed: &crate::wal::Committed,
    ) {
        let tables: Vec<String> = committed
            .tables
            .iter()
            .map(|t| tag(t).to_string())
            .collect();
        let tags = self.reach(database, &tables, false);
        // Before the bump: a replica's fill that sees it must have replayed the commit.
        self.fences.advance(fence, &tags, committed.end_lsn);
        self.bump(&tags, Source::Stream);
        self.publish_later(tags);
        let now = pgopt_wire::replication::pg_epoch_micros(std::time::SystemTime::now());
        let late_ms = (now - committed.commit_time).max(0) as u64 / 1000;
        let c = &self.counters;
        c.wal_staleness.record(late_ms);
        c.wal_commits.fetch_add(1, Relaxed);
    }

    /// Ends the entries of `tags`, counted in SHOW CACHE and per table as from `source`.
    fn bump(&self, tags: &[String], source: Source) {
        self.cache.invalidate_from(tags, source);
        self.counters.invalidations.fetch_add(1, Relaxed);
    }

    /// A schema change made directly on `database`'s server (heard by `ddl_watch.rs`):
    /// it may change what any read returns or any write reaches, so every entry ends
    /// and the dependencies are read again before anything more is cached; a
    /// replica's fill waits for a primary position read after now. (Local only:
    /// each instance hears it; local versions ahead of Redis keep L2 from serving.)
    /// `publish`: Redis' versions move on too, so an L1 miss finds no value from
    /// before the change in L2 (for a change heard; not when the listener merely
    /// (re)connects, which would flush every instance sharing Redis each time).
    pub fn schema_changed_elsewhere(self: &Arc<Self>, fence: &str, publish: bool) {
        self.fences.unresolved_all(fence);
        self.schema_changed();
        self.cache.l1.clear();
        self.bump(&[ALL.to_string()], Source::Stream);
        if publish {
            self.publish_later(vec![ALL.to_string(), SCHEMA.to_string()]);
        }
    }

    /// `CACHE FLUSH [table]`, on every instance sharing Redis.
    pub fn flush(self: &Arc<Self>, table: Option<&str>) {
        let mut tags = vec![table.map_or(ALL, tag).to_string()];
        if table.is_none() {
            tags.push(SCHEMA.to_string());
        }
        self.bump(&tags, Source::Local);
        if table.is_none() {
            self.cache.l1.clear();
            self.schema_changed();
        }
        self.publish_later(tags);
    }
}

/// Redis as the cache sees it: `off`, `up` (commands and the invalidation channel, and
/// this instance's lease held: it serves), `lagging` (connected, but its last heartbeat
/// did not come back within the lease: nothing served until one does), `no-channel`
/// (commands only: nothing served), or `down`.
pub fn redis_state(cache: &ProxyCache) -> &'static str {
    match &cache.l2 {
        None => "off",
        Some(l2) => match (
            l2.counters.up.load(Relaxed),
            l2.counters.bus_up.load(Relaxed),
        ) {
            (true, true) if l2.serving() => "up",
            (true, true) => "lagging",
            (true, false) => "no-channel",
            (false, _) => "down",
        },
    }
}

/// A hit to run again on PostgreSQL (see [`CacheSettings::verify_fraction`]).
pub struct Verify {
    pub sql: String,
    /// Extended protocol: the statement (a Parse: text and parameter types) and the
    /// Bind's values part (parameter formats and values, result formats), run again as
    /// the unnamed statement and portal.
    pub extended: Option<(Bytes, Vec<u8>)>,
    /// A LIMIT or DISTINCT ON may pick other rows on a re-run: then other rows
    /// prove nothing.
    pub picks_rows: bool,
    /// The client's settings, as SET statements.
    pub settings: Vec<String>,
    pub value: Bytes,
    /// The versions the served entry was current at.
    pub snapshot: pgopt_cache::Snapshot,
}

/// At most this many hits are being run again at once (more are not sampled).
const VERIFYING_MAX: u64 = 2;

/// One of the verifier's slots, given back on drop (also if its task is cancelled).
pub struct VerifySlot(Arc<ProxyCache>);

impl Drop for VerifySlot {
    fn drop(&mut self) {
        self.0.counters.verifying.fetch_sub(1, Relaxed);
    }
}

impl ProxyCache {
    /// Whether hit number `n` (counting from 1) is one to run again: then a slot
    /// among the [`VERIFYING_MAX`] is taken, given back when the guard drops.
    pub fn sample_hit(self: &Arc<Self>, n: u64) -> Option<VerifySlot> {
        let f = self.settings.verify_fraction;
        if f <= 0.0 {
            return None;
        }
        let every = (1.0 / f.min(1.0)).round().max(1.0) as u64;
        if !n.is_multiple_of(every) {
            return None;
        }
        self.counters
            .verifying
            .fetch_update(Relaxed, Relaxed, |v| (v < VERIFYING_MAX).then_some(v + 1))
            .ok()?;
        Some(VerifySlot(self.clone()))
    }

    /// Runs a served hit again on `conn` and compares the rows; waits a little
    /// before judging, so a write through pgopt that committed meanwhile has been
    /// invalidated (the sample then proves nothing).
    pub async fn verify(
        &self,
        conn: Result<crate::server::ServerConn, String>,
        hit: Verify,
        max_len: u32,
    ) {
        let c = &self.counters;
        let fresh = async {
            let mut conn = conn?;
            for set in &hit.settings {
                conn.simple_query(set, max_len).await?;
            }
            // The server gives up too, not just this wait.
            conn.simple_query("SET statement_timeout = '10s'", max_len)
                .await?;
            match &hit.extended {
                None => conn.simple_query(&hit.sql, max_len).await,
                Some((statement, bind)) => {
                    let batch = extended_again(statement, bind)?;
                    let result = conn.query(&batch, max_len).await?;
                    match result.error {
                        Some(e) => Err(e),
                        None => Ok(result.rows),
                    }
                }
            }
        };
        let fresh = tokio::time::timeout(Duration::from_secs(11), fresh).await;
        // Long enough for a write through pgopt (on any instance) that committed
        // meanwhile to have been invalidated: the sample then proves nothing.
        let settle = self
            .l2
            .as_ref()
            .map_or(Duration::ZERO, |l2| l2.config().timeout);
        tokio::time::sleep(Duration::from_millis(100) + settle).await;
        let outcome = match fresh {
            Ok(Ok(mut rows)) if self.cache.versions.is_current(&hit.snapshot) => {
                // As sets of rows: without ORDER BY a run may return them in another
                // order (a synchronized scan starts mid-table).
                let mut stored = stored_rows(&hit.value);
                rows.sort_unstable();
                stored.sort_unstable();
                if rows == stored {
                    &c.verified
                } else if hit.picks_rows {
                    &c.inconclusive
                } else {
                    tracing::warn!(sql = %hit.sql, "a result served from the cache differs from PostgreSQL's");
                    &c.mismatches
                }
            }
            _ => &c.inconclusive,
        };
        outcome.fetch_add(1, Relaxed);
    }
}

/// A hit's extended-protocol request run again on pgopt's own connection, as the
/// unnamed statement and portal: Parse (from `statement`, a Parse message), Bind (its
/// values part `bind`), Execute of every row, Sync.
fn extended_again(statement: &[u8], bind: &[u8]) -> Result<Vec<u8>, String> {
    let parse = statement
        .get(5..)
        .and_then(|body| Parse::decode(body).ok())
        .ok_or("the statement is not a Parse")?;
    let mut out = BytesMut::new();
    let unnamed = Parse { name: "", ..parse };
    unnamed.encode(&mut out).map_err(|e| e.to_string())?;
    // Bind: portal and statement unnamed, then the values part as the client sent it.
    let len = u32::try_from(4 + 2 + bind.len()).map_err(|e| e.to_string())?;
    out.extend_from_slice(b"B");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b"\0\0");
    out.extend_from_slice(bind);
    pgopt_wire::frontend::Execute {
        portal: "",
        max_rows: 0,
    }
    .encode(&mut out)
    .map_err(|e| e.to_string())?;
    out.extend_from_slice(b"S\0\0\0\x04");
    Ok(out.to_vec())
}

/// The listeners' state: one database's as it is, several as `db: state, …`.
fn listeners_shown(states: &Mutex<std::collections::BTreeMap<String, String>>, on: bool) -> String {
    let states = states.lock().unwrap_or_else(|p| p.into_inner());
    match states.len() {
        0 if on => "starting".into(),
        0 => "off".into(),
        1 => states.values().next().cloned().unwrap_or_default(),
        _ => states
            .iter()
            .map(|(db, state)| format!("{db}: {state}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The largest of the streams' lags (ms) as their probes last timed them, if any did.
pub fn wal_lag(c: &CacheCounters) -> Option<u64> {
    let lags = c.wal_lags.lock().unwrap_or_else(|p| p.into_inner());
    lags.values().copied().max()
}

/// How many rows a stored reply holds.
pub fn row_count(value: &[u8]) -> u64 {
    let mut at = value
        .get(..4)
        .map(|n| 4 + u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .unwrap_or(value.len());
    let mut rows = 0;
    while let Some(header) = value.get(at..at.saturating_add(5)) {
        if header[0] == b'D' {
            rows += 1;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        at = at.saturating_add(1).saturating_add(len);
    }
    rows
}

/// The rows of a stored reply (text values, as the simple protocol sends them).
fn stored_rows(value: &[u8]) -> Vec<Vec<Option<String>>> {
    let split = value
        .get(..4)
        .map(|n| 4 + u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .unwrap_or(0)
        .min(value.len());
    let mut buf = BytesMut::from(&value[split..]);
    let mut rows = Vec::new();
    while let Ok(Some(frame)) = pgopt_wire::split_frame(&mut buf, u32::MAX) {
        if let Ok(pgopt_wire::backend::BackendMessage::DataRow(row)) = frame.backend() {
            rows.push(
                row.values
                    .iter()
                    .map(|v| v.map(|b| pgopt_wire::text::escape(b).into_owned()))
                    .collect(),
            );
        }
    }
    rows
}

/// A quantile's bucket bound as SHOW CACHE shows it: NULL with no samples, and past the
/// last bound (`u64::MAX`), where no bound is known (the Prometheus histogram counts those
/// in its `+Inf` bucket).
fn bound_cell(bound: Option<u64>) -> Option<String> {
    bound.filter(|&b| b != u64::MAX).map(|b| b.to_string())
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
        ("hit_p50_us", Kind::Int),
        ("hit_p99_us", Kind::Int),
        ("wal", Kind::Text),
        ("wal_commits", Kind::Int),
        ("wal_p99_ms", Kind::Int),
        ("wal_gap_flushes", Kind::Int),
        ("wal_gaps_covered", Kind::Int),
        ("wal_lag_ms", Kind::Int),
        ("wal_lag_stops", Kind::Int),
        ("ddl", Kind::Text),
        ("ddl_changes", Kind::Int),
        ("redis", Kind::Text),
        ("redis_peers", Kind::Int),
        ("l2_hits", Kind::Int),
        ("l2_misses", Kind::Int),
        ("l2_stored", Kind::Int),
        ("l2_stale", Kind::Int),
        ("l2_rejected", Kind::Int),
        ("redis_errors", Kind::Int),
        ("publish_failures", Kind::Int),
        ("ack_timeouts", Kind::Int),
        ("ack_wait_ms", Kind::Int),
        ("verified", Kind::Int),
        ("mismatches", Kind::Int),
        ("inconclusive", Kind::Int),
        ("bus_messages", Kind::Int),
        ("bus_flushes", Kind::Int),
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
    let mut row = vec![
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
        bound_cell(c.hit_time.quantile_bound(0.5)),
        bound_cell(c.hit_time.quantile_bound(0.99)),
        t(listeners_shown(&c.wal_states, cache.settings.wal_listener)),
        n(c.wal_commits.load(Relaxed)),
        bound_cell(c.wal_staleness.quantile_bound(0.99)),
        n(c.wal_gap_flushes.load(Relaxed)),
        n(c.wal_gaps_covered.load(Relaxed)),
        wal_lag(c).map(|ms| ms.to_string()),
        n(c.wal_lag_stops.load(Relaxed)),
        t(listeners_shown(&c.ddl_states, cache.settings.ddl_listener)),
        n(c.ddl_changes.load(Relaxed)),
    ];
    let l2 = cache.l2.as_ref().map(|l2| &l2.counters);
    row.push(t(redis_state(cache)));
    row.push(n(cache.l2.as_ref().map_or(0, |l2| l2.peer_count() as u64)));
    let count = |f: fn(&L2Counters) -> &AtomicU64| n(l2.map_or(0, |c| f(c).load(Relaxed)));
    row.extend([
        count(|c| &c.hits),
        count(|c| &c.misses),
        count(|c| &c.stored),
        count(|c| &c.stale),
        count(|c| &c.rejected),
        count(|c| &c.errors),
        count(|c| &c.publish_failures),
        count(|c| &c.ack_timeouts),
        n(l2.map_or(0, |c| c.ack_wait_us.load(Relaxed) / 1000)),
        n(c.verified.load(Relaxed)),
        n(c.mismatches.load(Relaxed)),
        n(c.inconclusive.load(Relaxed)),
        count(|c| &c.messages),
        count(|c| &c.flushes),
        t(cache.settings.tables.join(",")),
    ]);
    table.push(row);
    table
}

/// How a cached request came, and so what its reply holds besides the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A simple Query: RowDescription, rows, CommandComplete.
    Simple,
    /// An extended-protocol batch `[Parse] Bind [Describe] Execute Sync`: its
    /// ParseComplete (when `parse`), BindComplete, the Describe's answer (`describe`:
    /// `b'P'` a portal's RowDescription, `b'S'` a statement's ParameterDescription and
    /// RowDescription, 0 none), rows, CommandComplete.
    Extended { parse: bool, describe: u8 },
}

/// A request the cache may answer.
pub struct Request<'a> {
    pub sql: &'a str,
    /// Extended protocol: the statement as a Parse message (text and parameter
    /// types), and the Bind body past its names (parameter formats and values,
    /// result formats).
    pub statement: Option<Bytes>,
    pub bind: &'a [u8],
    pub shape: Shape,
}

/// The key of a request: who asks (database, user), where the answer comes from (the
/// server or host list, server database and login: instances sharing Redis may send
/// one database name elsewhere, or log in as another user, and a RELOAD may move it),
/// the settings that shape results (every SET the client made, start-up options
/// included, as the statements that would apply them, and the server's own defaults
/// of those it reports, and a digest of those it does not: see
/// `session_state::Defaults`), and the exact request: text,
/// parameter types, values and formats, and its shape. This is the first half, the
/// parts a session's keys share while its settings and pool stay (see
/// [`pgopt_cache::KeyBuf`]); [`key_request`] the second.
pub fn key_prefix(
    bytes: &mut Vec<u8>,
    (database, user): (&str, &str),
    server: &crate::server::ServerTarget,
    settings: &[String],
    defaults: &crate::session_state::Defaults,
) {
    push_part(bytes, b'd', Some(database.as_bytes()));
    push_part(bytes, b'u', Some(user.as_bytes()));
    push_part(bytes, b'h', Some(server.servers().as_bytes()));
    push_part(bytes, b'b', Some(server.dbname.as_bytes()));
    push_part(bytes, b'l', Some(server.user.as_bytes()));
    push_part(bytes, b'n', Some(&(settings.len() as u64).to_be_bytes()));
    for statement in settings {
        push_part(bytes, b's', Some(statement.as_bytes()));
    }
    for (_, value) in defaults.values() {
        push_part(bytes, b'D', Some(value.as_bytes()));
    }
    push_part(bytes, b'U', Some(defaults.unreported()));
}

/// Whether a Bind's values part (formats, values, result formats) holds a value such
/// as 'now', 'today' or '{now}' ([`pgopt_sql::reads_clock`]): bound to a date/time
/// parameter, it reads the clock when the statement runs. Unreadable: `false` (the Bind fails
/// on the server anyway).
pub fn binds_clock_word(bind: &[u8]) -> bool {
    let i16_at = |at: usize| {
        bind.get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
    };
    let Some(formats) = i16_at(0) else {
        return false;
    };
    let mut at = 2 + 2 * formats.max(0) as usize;
    let Some(values) = i16_at(at) else {
        return false;
    };
    at += 2;
    for _ in 0..values.max(0) {
        let Some(len) = bind.get(at..at + 4) else {
            return false;
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len <= 0 {
            continue;
        }
        let len = len as usize;
        let Some(value) = bind.get(at..at + len) else {
            return false;
        };
        if pgopt_sql::reads_clock_bytes(value) {
            return true;
        }
        at += len;
    }
    false
}

/// The parts of a request's key that are the request's (see [`key_prefix`]).
pub fn key_request(bytes: &mut Vec<u8>, request: &Request<'_>) {
    let shape = match request.shape {
        Shape::Simple => [b'q', 0],
        Shape::Extended { describe, .. } => [b'x', describe],
    };
    push_part(bytes, b'k', Some(&shape));
    push_part(bytes, b'q', Some(request.sql.as_bytes()));
    push_part(bytes, b'p', request.statement.as_deref());
    push_part(bytes, b'b', Some(request.bind));
}

/// The extended-protocol batch starting with `first` (a Parse or Bind), when it is
/// one the cache may answer: `[Parse] Bind [Describe] Execute(all rows) Sync` with
/// the Sync the last message in `rest`, the Describe of the bound portal or
/// statement. Returns the Parse, the Bind, its values part, and what is described
/// (see [`Shape::Extended`]).
pub fn extended_batch<'a>(
    first: &'a Frame,
    rest: &'a [u8],
    max_len: u32,
) -> Option<(Option<Parse<'a>>, Bind<'a>, &'a [u8], u8)> {
    let mut frames: Vec<(u8, &'a [u8])> = vec![(first.tag(), first.body())];
    let mut pos = 0;
    while pos < rest.len() {
        let header = pgopt_wire::peek_header(&rest[pos..], max_len).ok()??;
        let end = pos + header.frame_len();
        if end > rest.len() {
            return None;
        }
        frames.push((header.tag, &rest[pos + 5..end]));
        pos = end;
    }
    let mut frames = frames.into_iter().peekable();
    let parse = match frames.peek() {
        Some((b'P', body)) => {
            let parse = Parse::decode(body).ok()?;
            // (Text with characters pgopt escapes bytes as would not be written back
            // as it came: see `pgopt_wire::text`.)
            if pgopt_wire::text::is_escaped(parse.query) {
                return None;
            }
            frames.next();
            Some(parse)
        }
        _ => None,
    };
    let (b'B', bind_body) = frames.next()? else {
        return None;
    };
    let bind = Bind::decode(bind_body).ok()?;
    if parse.as_ref().is_some_and(|p| p.name != bind.statement) {
        return None;
    }
    let names = bind.portal.len() + bind.statement.len() + 2;
    let values = bind_body.get(names..)?;
    let mut describe = 0;
    if let Some((b'D', body)) = frames.peek() {
        describe = match Describe::decode(body).ok()? {
            d if d.target == Target::Portal && d.name == bind.portal => b'P',
            d if d.target == Target::Statement && d.name == bind.statement => b'S',
            _ => return None,
        };
        frames.next();
    }
    let (b'E', body) = frames.next()? else {
        return None;
    };
    let execute = Execute::decode(body).ok()?;
    if execute.portal != bind.portal || execute.max_rows != 0 {
        return None;
    }
    let (b'S', _) = frames.next()? else {
        return None;
    };
    frames
        .next()
        .is_none()
        .then_some((parse, bind, values, describe))
}

/// Whether `buf` starts with part of a batch [`extended_batch`] may take — `[Parse]
/// Bind [Describe] Execute Sync` — whose Sync is not here yet: its first message
/// whole, and every message here in that order. The server answers nothing of it
/// before its Sync, so the relay waits for the rest before it looks the batch up.
pub fn batch_partly_here(buf: &[u8], max_len: u32) -> bool {
    // Where each message may come: Parse, Bind, Describe, Execute.
    let mut at = 0;
    let mut pos = 0;
    let mut whole = 0;
    let mut parsed: Option<&[u8]> = None;
    loop {
        let header = match pgopt_wire::peek_header(&buf[pos..], max_len) {
            Ok(Some(header)) => header,
            // Part of a header: more to come.
            Ok(None) => break,
            // A malformed one: the relay reports it, without waiting.
            Err(_) => return false,
        };
        let step = match header.tag {
            b'P' if at == 0 => 1,
            b'B' if at <= 1 => 2,
            b'D' if at == 2 => 3,
            b'E' if (2..=3).contains(&at) => 4,
            _ => return false, // a Sync, or no batch the cache takes
        };
        let end = pos + header.frame_len();
        at = step;
        if end > buf.len() {
            break;
        }
        // The statement a Parse names, and the one the Bind after it binds: the
        // same, or no batch the cache takes (which may be a COPY's).
        fn name(body: &[u8], skip: usize) -> Option<&[u8]> {
            body.split(|&b| b == 0).nth(skip)
        }
        let body = &buf[pos + 5..end];
        match header.tag {
            b'P' => parsed = Some(body),
            b'B' => {
                if let Some(parse) = parsed {
                    if name(parse, 0) != name(body, 1) {
                        return false;
                    }
                }
            }
            _ => {}
        }
        whole += 1;
        pos = end;
    }
    whole > 0
}

/// A stored reply: the RowDescription part, then the rows and CommandComplete.
fn stored(description: &[u8], rows: &[u8]) -> Bytes {
    let mut value = BytesMut::with_capacity(4 + description.len() + rows.len());
    value.extend_from_slice(&(description.len() as u32).to_be_bytes());
    value.extend_from_slice(description);
    value.extend_from_slice(rows);
    value.freeze()
}

/// Writes the reply PostgreSQL would send for a request of `shape` whose result is
/// `value`, up to and including ReadyForQuery (idle).
pub fn reply(shape: Shape, value: &[u8], out: &mut BytesMut) {
    let split = value
        .get(..4)
        .map(|n| 4 + u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .unwrap_or(0)
        .min(value.len());
    let (description, rows) = (&value[4.min(split)..split], &value[split..]);
    match shape {
        Shape::Simple => out.extend_from_slice(description),
        Shape::Extended { parse, describe } => {
            if parse {
                out.extend_from_slice(b"1\0\0\0\x04");
            }
            out.extend_from_slice(b"2\0\0\0\x04");
            if describe != 0 {
                out.extend_from_slice(description);
            }
        }
    }
    out.extend_from_slice(rows);
    out.extend_from_slice(b"Z\0\0\0\x05I");
}

/// What in a database may write tables a statement does not name, unseen by its
/// text: views that call a volatile user function, and operators, casts and domains
/// that call one (see `Deps`'s `writing_views` and `hidden_calls`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Writers {
    views: foldhash::HashSet<String>,
    hidden: Vec<String>,
    /// The database has event triggers of its own (not pgopt's): DDL runs their
    /// functions, which may write anything (an audit log of DDL).
    event_triggers: bool,
}

impl Writers {
    fn is_empty(&self) -> bool {
        self.views.is_empty() && self.hidden.is_empty() && !self.event_triggers
    }

    /// Whether a statement (`analysis`) may write through one of them.
    pub fn reached_by(&self, analysis: &Analysis) -> bool {
        (self.event_triggers
            && (analysis.maintenance || analysis.kinds.contains(&StatementKind::Ddl)))
            || reads_one_of(&self.views, &analysis.tables_read)
            || calls_hidden(&self.hidden, analysis)
    }
}

/// Whether a statement (`analysis`) may call one of `hidden` (see `Deps`'s
/// `hidden_calls`): an operator it calls, its syntax's too (`=` for IN…), by
/// symbol; a type it casts to, or calls by name as a function (`t(x)`); any type,
/// when it fills a row of a type it names as a value (`jsonb_populate_record(t, …)`,
/// a table's row type). (By name only: a user `+` for one type keeps every
/// statement adding anything out.)
pub fn calls_hidden(hidden: &[String], analysis: &Analysis) -> bool {
    const FILLS_ROWS: [&str; 5] = [
        "json_populate_record",
        "json_populate_recordset",
        "jsonb_populate_record",
        "jsonb_populate_recordset",
        "populate_record",
    ];
    if hidden.is_empty() {
        return false;
    }
    let is_type = |h: &String| h.starts_with(|c: char| c.is_alphanumeric() || c == '_');
    analysis.operators.iter().any(|o| hidden.contains(o))
        || analysis.type_names.iter().any(|t| hidden.contains(t))
        || analysis.functions.iter().any(|f| {
            let f = f.rsplit('.').next().unwrap_or(f).trim_matches('"');
            hidden.iter().any(|h| h.eq_ignore_ascii_case(f))
                || FILLS_ROWS.iter().any(|r| r.eq_ignore_ascii_case(f))
                    && hidden.iter().any(is_type)
        })
}

/// Whether `tables` (as a statement names them) include one of `views`.
pub fn reads_one_of(views: &foldhash::HashSet<String>, tables: &[String]) -> bool {
    !views.is_empty() && tables.iter().any(|t| views.contains(tag(t)))
}

/// A table's tag: its name without the schema.
fn tag(table: &str) -> &str {
    // Bytes, not `rsplit`: this runs for every table every write names.
    match table.bytes().rposition(|b| b == b'.') {
        Some(dot) => &table[dot + 1..],
        None => table,
    }
}

/// `t` into `tags`, unless there already.
fn add_tag(tags: &mut Vec<String>, t: &str) {
    if !tags.iter().any(|x| x == t) {
        tags.push(t.to_string());
    }
}

/// What the writes of the current transaction will invalidate when it ends.
#[derive(Debug, Default, Clone)]
pub struct PendingWrites {
    tables: Vec<String>,
    /// DDL or something that may run it (CALL, DO…): the catalog is read again.
    schema: bool,
    /// DDL itself (or text the parser refuses): other instances sharing Redis read
    /// their catalogs again too ([`SCHEMA`]). (Not for a CALL or DO, which an
    /// application may run all the time; their DDL reaches others within 30 s.)
    ddl: bool,
}

impl PendingWrites {
    /// Notes a statement that will run: nothing for a read (or BEGIN, SET, a locking
    /// read…), its tables for a write whose tables are known, everything for a
    /// write that may reach tables it doesn't name (or text the parser refuses).
    pub fn note(&mut self, analysis: Option<&Analysis>) {
        let Some(a) = analysis else {
            // Text the parser refuses may be DDL all the same.
            self.schema = true;
            self.ddl = true;
            self.note_unknown();
            return;
        };
        // (An index made or dropped, CLUSTER…: no query's result changes.)
        if a.read_only || a.maintenance {
            return;
        }
        // DDL, or something that may run it (DO, CALL…): the catalog is read again.
        self.ddl |= a.kinds.contains(&StatementKind::Ddl);
        self.schema |= a
            .kinds
            .iter()
            .any(|k| *k == StatementKind::Ddl || (*k == StatementKind::Other && a.unknown_writes));
        if a.unknown_writes {
            self.note_unknown();
            return;
        }
        for table in &a.tables_written {
            add_tag(&mut self.tables, tag(table));
        }
    }

    /// [`note`](Self::note) on server connection `conn`, whose SQL-prepared statements
    /// (`sql`, `None` when no connection is lent) it follows: a lone PREPARE runs
    /// nothing and is only learnt, and an EXECUTE of a statement learnt is noted as
    /// that statement's writes rather than as a write to everything.
    pub fn note_sql(&mut self, analysis: Option<&Analysis>, sql: Option<&mut SqlStatements>) {
        let Some(sql) = sql else {
            return self.note(analysis);
        };
        let Some(a) = analysis else {
            // Text the parser refuses may PREPARE all the same.
            sql.go_blind();
            return self.note(None);
        };
        match sql.follow(a) {
            Followed::Prepare => {}
            Followed::Execute(tables) => {
                for t in tables {
                    add_tag(&mut self.tables, t);
                }
            }
            Followed::Other => self.note(Some(a)),
        }
    }

    /// A write whose tables are unknown (a function call).
    pub fn note_unknown(&mut self) {
        add_tag(&mut self.tables, ALL);
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    pub fn take(&mut self) -> PendingWrites {
        std::mem::take(self)
    }
}

/// The SQL-prepared statements (`PREPARE name AS …`) of one server connection, by
/// name: the tables each may write, so an EXECUTE of one (pg_dump runs its queries
/// so) is noted as that statement's writes rather than as a write to everything.
///
/// What is known of a name only ever grows while the connection may still hold it:
/// a PREPARE of a name the server has already fails and leaves the first in place
/// (one a Parse prepared too: EXECUTE runs protocol statements, which are taken to
/// write anything),
/// and a DEALLOCATE may fail too, so a name prepared again adds its writes to those
/// known, and one prepared in a text of several statements is taken to write
/// anything. That holds only while every PREPARE the connection ran passed here: once
/// something may have run SQL pgopt does not see (a user function, DO, CALL, an
/// EXECUTE of a statement not followed, a FunctionCall, text the parser refuses) the
/// connection is blind, and every EXECUTE is a write to everything again. Only a
/// connection whose SQL-prepared statements are known gone while nothing is in flight
/// (a block's deallocated, the connection reset) starts afresh. (A PREPARE run by a
/// trigger, a rule, or a function a view or a column default calls is not seen.)
#[derive(Debug, Default)]
pub struct SqlStatements {
    by_name: foldhash::HashMap<String, SqlWrites>,
    blind: bool,
}

#[derive(Debug, Default)]
struct SqlWrites {
    /// Tags of the tables it writes.
    tables: Vec<String>,
    /// It may write tables its text does not name, or run SQL (a user function).
    unknown: bool,
}

/// Names followed per connection, and tables per name, before the connection is blind
/// (a name is written as anything).
const MAX_SQL_STATEMENTS: usize = 256;
const MAX_SQL_TABLES: usize = 64;

/// What [`SqlStatements::follow`] makes of a text about to run.
enum Followed<'a> {
    /// One PREPARE alone: it runs nothing.
    Prepare,
    /// One EXECUTE of a statement followed: it writes these tables.
    Execute(&'a [String]),
    /// Anything else: as the text says.
    Other,
}

impl SqlStatements {
    fn follow(&mut self, a: &Analysis) -> Followed<'_> {
        if self.blind {
            return Followed::Other;
        }
        let prepared = a.session_effects.iter().filter_map(|e| match e {
            SessionEffect::Prepare { name } => Some(name),
            _ => None,
        });
        let lone = a.kinds.len() == 1 && a.session_effects.len() == 1;
        let mut prepares = false;
        for name in prepared {
            prepares = true;
            if self.by_name.len() >= MAX_SQL_STATEMENTS && !self.by_name.contains_key(name) {
                self.blind = true;
                return Followed::Other;
            }
            let writes = self.by_name.entry(name.clone()).or_default();
            writes.unknown |= !lone || a.unknown_writes || a.user_functions;
            for t in &a.tables_written {
                add_tag(&mut writes.tables, tag(t));
            }
            writes.unknown |= writes.tables.len() > MAX_SQL_TABLES;
        }
        if prepares && lone {
            return Followed::Prepare;
        }
        if let Some(name) = &a.executes {
            // (pgopt's own names, `pgopt_…`, are protocol statements: not followed.)
            match self
                .by_name
                .get(name)
                .filter(|_| !name.starts_with("pgopt_"))
            {
                Some(w) if !w.unknown && !a.user_functions => return Followed::Execute(&w.tables),
                // Its statement may run SQL unseen.
                _ => self.blind = true,
            }
        }
        // A user function, DO, CALL, an EXECUTE inside another statement…
        self.blind |= a.user_functions || a.unknown_writes;
        Followed::Other
    }

    /// A statement prepared through the protocol (a Parse with a name, as it reaches the
    /// server): EXECUTE runs those too, and their writes are not followed here.
    pub fn prepared_by_protocol(&mut self, name: &str) {
        if name.is_empty() {
            return;
        }
        if self.by_name.len() >= MAX_SQL_STATEMENTS && !self.by_name.contains_key(name) {
            self.blind = true;
            return;
        }
        self.by_name.entry(name.to_string()).or_default().unknown = true;
    }

    /// Something ran that pgopt can't read (a FunctionCall, a Bind of a statement
    /// whose text is unknown, text the parser refuses): it may have PREPAREd.
    pub fn go_blind(&mut self) {
        self.blind = true;
    }

    /// Every SQL-prepared statement of the connection is gone, and nothing is in
    /// flight.
    pub fn clear(&mut self) {
        self.by_name.clear();
        self.blind = false;
    }
}

/// A miss being filled: the table versions taken before the query went to the
/// server, the reply so far, and the single-flight slot (waiters wake when it drops).
pub struct Fill {
    pub ticket: FillTicket,
    /// How long the result is kept.
    pub ttl: Duration,
    pub description: BytesMut,
    pub rows: BytesMut,
    pub _flight: Option<Flight>,
    /// Where the query runs: `None` on the primary, else the replica's replay position
    /// observed before it ran (a lower bound).
    pub replica_replayed: Option<u64>,
    /// The generation of the dependency map its tags came from.
    pub deps_generation: u64,
    /// The hash of the server defaults its key holds: a connection with others
    /// stores nothing (see `session_state::Defaults`).
    pub defaults: u64,
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
        let part = match frame[0] {
            // Answered from the request's shape on a hit.
            b'1' | b'2' => return Capture::Going,
            b't' | b'T' if self.rows.is_empty() => &mut self.description,
            b'D' | b'C' => &mut self.rows,
            b'Z' if frame.get(5) == Some(&b'I') => {
                return Capture::Done(stored(&self.description, &self.rows));
            }
            // An error, a notice, NoData, a parameter change, COPY…: not a plain result.
            _ => return Capture::Abandon,
        };
        part.extend_from_slice(frame);
        if !self.fits(0, max) {
            Capture::Abandon
        } else {
            Capture::Going
        }
    }
}

impl Fill {
    /// Whether `len` more bytes of rows keep the result within `max`.
    pub fn fits(&self, len: usize, max: usize) -> bool {
        self.description.len() + self.rows.len() + len <= max
    }

    pub fn new(
        ticket: FillTicket,
        ttl: Duration,
        flight: Option<Flight>,
        deps_generation: u64,
        defaults: u64,
    ) -> Fill {
        Fill {
            ticket,
            ttl,
            description: BytesMut::new(),
            rows: BytesMut::new(),
            _flight: flight,
            replica_replayed: None,
            deps_generation,
            defaults,
        }
    }
}

/// The replication listener's user and password: `wal_user` (else the database's
/// user) with `wal_password`, else with the database's password only when that user
/// is the database's own (another role's password is not the upstream's).
pub(crate) fn wal_login(
    settings: &CacheSettings,
    db: &crate::config::Database,
) -> (String, Option<String>) {
    let own = db.user.clone().unwrap_or_else(|| "postgres".into());
    let user = settings.wal_user.clone().unwrap_or_else(|| own.clone());
    let password = match &settings.wal_password {
        Some(p) => Some(p.clone()),
        None if user == own => db.password.clone(),
        None => None,
    };
    (user, password)
}

/// Follows `db`'s committed changes for the cache (see [`CacheSettings::wal_listener`]):
/// creates the publication if missing, listens on a temporary slot, and invalidates
/// what each commit changed. Whenever the stream (re)starts everything is invalidated
/// (commits before it were not seen), on every instance sharing Redis too. On failure it waits (1 s, doubling up to 30 s)
/// and starts again; it ends when the proxy stops.
pub async fn follow_wal(
    cache: Arc<ProxyCache>,
    db: crate::config::Database,
    connect: ListenerConnect,
    mut lifecycle: tokio::sync::watch::Receiver<crate::shared::Lifecycle>,
) {
    use crate::wal::{ensure_publication, listen, Lag, WalEvent, WalSource};
    use std::sync::atomic::AtomicBool;
    let (user, password) = wal_login(&cache.settings, &db);
    let mut source = WalSource {
        host: db.host.clone(),
        port: db.port,
        more_hosts: db.more_hosts.in_order(),
        dbname: db.dbname.clone(),
        user,
        password,
        connect_timeout: connect.connect_timeout,
        keepalive: connect.keepalive,
        tls: None,
    };
    let publication = cache.settings.publication.clone();
    // Unique per process start, database and attempt (an old walsender may hold the
    // previous attempt's slot until it notices its connection is gone).
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let base: String = format!("pgopt_{:x}_{}_{}", started, std::process::id(), db.name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(52)
        .collect();
    let mut attempt = 0u32;
    let fence = crate::fence::key_of_database(&db);
    let set_state = |state: String| {
        cache
            .counters
            .wal_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(db.name.clone(), state);
    };
    let backoff = ListenerBackoff::new();
    // Whether this listener counts in `wal_streaming`: streaming, and not lagging.
    let counted = AtomicBool::new(false);
    let count = |on: bool| {
        if counted.swap(on, Relaxed) != on {
            if on {
                cache.counters.wal_streaming.fetch_add(1, Relaxed);
            } else {
                cache.counters.wal_streaming.fetch_sub(1, Relaxed);
            }
        }
    };
    let max_lag = cache.settings.wal_max_lag;
    // A stream silent this long starts again (on whichever server answers first).
    let restart_after = max_lag.saturating_mul(3).max(Duration::from_secs(5));
    // A probe not written within this long is given up (its connection closed).
    let probe_timeout = max_lag.max(Duration::from_secs(1));
    // When a stop for lag was last logged as a warning.
    let loud: Mutex<Option<Instant>> = Mutex::new(None);
    let servers = servers_of(&db);
    loop {
        // A RELOAD moved or removed the database: it is not cached any more (see
        // `ProxyCache::follows`), and this stream, of its old servers, must not hold up
        // the others'.
        if (connect.current)(&db.name).as_deref() != Some(servers.as_str()) {
            cache.counters.wal_listeners.fetch_sub(1, Relaxed);
            cache
                .counters
                .wal_states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&db.name);
            tracing::warn!(
                database = %db.name,
                "a RELOAD moved or removed this database: its replication listener stops, and it is not cached until pgopt restarts"
            );
            return;
        }
        set_state("connecting".into());
        source.tls = (connect.tls)();
        attempt += 1;
        let slot = format!("{base}_{attempt}");
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        // With Redis, a start marker another instance's stream may vouch for.
        let markers = cache.l2.is_some();
        // Once the stream started with probes, what they tell of it; and when the
        // stream last sent anything.
        let lag: Mutex<Option<LagState>> = Mutex::new(None);
        let heard = crate::wal::Heard::default();
        // Judges the lag at `now`: over `max_lag`, nothing is served until it is back
        // under. Returns why the stream should start again, when it has sent nothing
        // for so long, though asked for replies, that it looks stuck (a server that
        // hangs, a stalled connection). (Probes that fail only keep the cache off.)
        let judge = |now: Instant| -> Option<String> {
            let mut guard = lag.lock().unwrap_or_else(|p| p.into_inner());
            let state = guard.as_mut()?;
            let late = u64::try_from(state.watch.lag(now).as_millis()).unwrap_or(u64::MAX);
            cache
                .counters
                .wal_lags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(db.name.clone(), late);
            let unheard = state.watch.unheard(now);
            let over = unheard > max_lag;
            let was = std::mem::replace(&mut state.behind, over);
            let failing = state.failing.clone();
            drop(guard);
            let unheard_ms = u64::try_from(unheard.as_millis()).unwrap_or(u64::MAX);
            if over {
                set_state(match &failing {
                    Some(error) => format!(
                        "lagging: commits of the last {unheard_ms} ms may be unheard (writing probes fails: {error})"
                    ),
                    None => format!("lagging: commits of the last {unheard_ms} ms may be unheard"),
                });
            }
            match (was, over) {
                (false, true) => {
                    count(false);
                    cache.counters.wal_lag_stops.fetch_add(1, Relaxed);
                    // (At most a warning a minute: a stream near the bound flaps.)
                    let mut warned = loud.lock().unwrap_or_else(|p| p.into_inner());
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        *warned = Some(Instant::now());
                        tracing::warn!(
                            database = %db.name,
                            unheard_ms,
                            max_lag_ms = max_lag.as_millis() as u64,
                            "the cache's replication stream is further behind than cache.wal_max_lag: nothing is served from the cache until it catches up (SHOW CACHE's wal_lag_stops counts each time)"
                        );
                    }
                }
                (true, false) => {
                    count(true);
                    set_state("streaming".into());
                    tracing::debug!(database = %db.name, lag_ms = late, "the cache's replication stream caught up");
                }
                _ => {}
            }
            let silent = heard.silent();
            (over && silent > restart_after).then(|| {
                format!(
                    "the replication stream sent nothing for {} ms: starting it again",
                    silent.as_millis()
                )
            })
        };
        // Writes a probe at each tick (a quarter of `max_lag`, at most a second) once
        // the stream started, the next once the last is written, and judges the lag
        // at each tick meanwhile (a server that hangs holds a probe). Ends, with why,
        // when the stream should start again.
        let probe = async {
            if max_lag.is_zero() {
                return std::future::pending::<String>().await;
            }
            let every = (max_lag / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut conn = None;
            loop {
                tick.tick().await;
                let now = Instant::now();
                if let Some(restart) = judge(now) {
                    return restart;
                }
                let sent = lag
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                    .map(|state| (state.watch.send(now), state.server.clone()));
                let Some((seq, server)) = sent else {
                    continue;
                };
                let written = {
                    let emitting = tokio::time::timeout(
                        probe_timeout,
                        crate::wal::emit_probe(&source, &mut conn, &server, &slot, seq),
                    );
                    tokio::pin!(emitting);
                    loop {
                        tokio::select! {
                            written = &mut emitting => break written,
                            _ = tick.tick() => if let Some(restart) = judge(Instant::now()) {
                                return restart;
                            },
                        }
                    }
                };
                let failing = match written {
                    Ok(written) => written.err(),
                    Err(_) => {
                        // (Its connection may be mid-query: a new one next time.)
                        conn = None;
                        Some(format!("no answer within {} ms", probe_timeout.as_millis()))
                    }
                };
                let mut guard = lag.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(state) = guard.as_mut().filter(|s| s.failing != failing) {
                    // (Each new reason once: not each probe.)
                    if let Some(error) = &failing {
                        tracing::warn!(
                            database = %db.name,
                            %error,
                            "writing a probe to time the cache's replication stream failed: once it is cache.wal_max_lag behind, nothing is served from the cache"
                        );
                    }
                    state.failing = failing;
                }
            }
        };
        let run = async {
            ensure_publication(&source, &publication).await?;
            listen(&source, &publication, &slot, markers, &heard, tx).await
        };
        let consume = async {
            // This stream's own start marker. (Markers come after `Started`, whose
            // flush or vouch made every commit before the stream's position heard:
            // another's marker may be vouched for from then on.)
            let mut own = None;
            while let Some(event) = rx.recv().await {
                match event {
                    WalEvent::Started {
                        marker,
                        probes,
                        server,
                    } => {
                        // Commits before the stream were not seen here: replicas'
                        // fills wait for a primary position read after now, and this
                        // instance's entries end (nothing is served meanwhile).
                        cache.fences.unresolved_all(&fence);
                        cache.bump(&[ALL.to_string()], Source::Stream);
                        // Nor by the instances sharing Redis, unless one's stream was
                        // up throughout and has reached the marker: else L2's values
                        // and theirs end too, as with a commit heard on the stream.
                        let vouched = match (&marker, &cache.l2) {
                            (Some((marker, lsn)), Some(l2)) => {
                                marker_reached(l2, marker, *lsn).await
                            }
                            _ => false,
                        };
                        if vouched {
                            cache.counters.wal_gaps_covered.fetch_add(1, Relaxed);
                            tracing::info!(
                                database = %db.name,
                                "replication stream started: another instance's stream heard every commit before it, so what Redis holds stays"
                            );
                        } else {
                            cache.counters.wal_gap_flushes.fetch_add(1, Relaxed);
                            cache.publish(&[ALL.to_string()]).await;
                        }
                        own = marker;
                        if probes && !max_lag.is_zero() {
                            *lag.lock().unwrap_or_else(|p| p.into_inner()) = Some(LagState {
                                watch: Lag::new(Instant::now()),
                                behind: false,
                                server,
                                failing: None,
                            });
                        }
                        count(true);
                        set_state("streaming".into());
                    }
                    WalEvent::Probe(seq) => {
                        let now = Instant::now();
                        if let Some(state) = lag.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
                        {
                            state.watch.back(seq, now);
                        }
                        // (A restart is the probes' to start.)
                        let _ = judge(now);
                    }
                    WalEvent::Committed(committed) => {
                        backoff.reset();
                        cache.invalidate_committed(&db.name, &fence, &committed);
                    }
                    // (Only for a stream of the same publication: another may not carry
                    // the same tables.)
                    WalEvent::Marker(marker, lsn)
                        if own.as_ref().map(|(m, _)| m) != Some(&marker)
                            && marker.rsplit_once('\n').map(|(p, _)| p)
                                == Some(publication.as_str()) =>
                    {
                        if let Some(l2) = cache.l2.clone() {
                            tokio::spawn(async move { l2.reach_stream_marker(&marker, lsn).await });
                        }
                    }
                    WalEvent::Marker(..) => {}
                }
            }
        };
        let outcome = tokio::select! {
            (result, ()) = async { tokio::join!(run, consume) } => result.map_err(|e| e.to_string()),
            restart = probe => Err(restart),
            () = until_stopped(&mut lifecycle) => return,
        };
        count(false);
        cache
            .counters
            .wal_lags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&db.name);
        let error = match outcome {
            Ok(()) => "the replication stream ended".to_string(),
            Err(e) => e,
        };
        tracing::warn!(
            database = %db.name,
            %error,
            retry_in_ms = backoff.next_ms(),
            "the cache's replication listener stopped; writes that bypass pgopt are not seen until it is back"
        );
        set_state(format!("down: {error}"));
        backoff.wait().await;
    }
}

/// A listener's stream as its probes tell it (see `follow_wal`).
struct LagState {
    watch: crate::wal::Lag,
    /// Further behind than `wal_max_lag`: nothing is served.
    behind: bool,
    /// The server the stream is on: probes are written there.
    server: String,
    /// Why writing probes fails, while it does.
    failing: Option<String>,
}

/// How long a listener whose stream starts waits for another instance's stream to
/// reach its start marker before it ends every value shared in Redis.
const MARKER_WAIT: Duration = Duration::from_secs(1);

/// Whether another instance's stream reached `marker`, written at `lsn`, within
/// [`MARKER_WAIT`].
async fn marker_reached(l2: &L2, marker: &str, lsn: u64) -> bool {
    let deadline = tokio::time::Instant::now() + MARKER_WAIT;
    loop {
        if l2.stream_marker_reached(marker, lsn).await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How the cache's listeners reach their database's server: as the pools do, with
/// server TLS read anew at each attempt (a RELOAD's reaches them when they next
/// connect), and with a host list tried in order, staying on the one that answers.
#[derive(Clone)]
pub(crate) struct ListenerConnect {
    pub connect_timeout: Duration,
    pub keepalive: Option<crate::config::Keepalive>,
    pub tls: Arc<dyn Fn() -> Option<crate::server_tls::ServerTlsConnector> + Send + Sync>,
    /// A database's servers and database as the config has them now (see
    /// [`servers_of`]); `None` once a RELOAD removed it.
    pub current: Arc<CurrentServers>,
}

/// See [`ListenerConnect::current`].
pub(crate) type CurrentServers = dyn Fn(&str) -> Option<String> + Send + Sync;

/// A configured database's servers and database, as `ServerTarget::describe` gives a
/// pool's.
pub(crate) fn servers_of(db: &crate::config::Database) -> String {
    format!("{}/{}", db.servers_text(), db.dbname)
}

/// The wait of a listener (the replication stream's, the schema changes') between
/// its attempts to connect: from 1 s, doubled after each failure up to 30 s, back to
/// 1 s once an attempt got going. In ms, atomic: the attempt that resets it runs while
/// the loop holds it.
pub(crate) struct ListenerBackoff(AtomicU64);

impl ListenerBackoff {
    const FIRST_MS: u64 = 1_000;
    const MAX_MS: u64 = 30_000;

    pub(crate) fn new() -> Self {
        ListenerBackoff(AtomicU64::new(Self::FIRST_MS))
    }

    /// The attempt got going: the next failure waits the shortest time again.
    pub(crate) fn reset(&self) {
        self.0.store(Self::FIRST_MS, Relaxed);
    }

    /// How long the next wait is, in ms (for the warning that announces it).
    pub(crate) fn next_ms(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Waits, and doubles the next wait.
    pub(crate) async fn wait(&self) {
        let wait = self.next_ms();
        tokio::time::sleep(Duration::from_millis(wait)).await;
        self.0.store((wait * 2).min(Self::MAX_MS), Relaxed);
    }
}

/// Returns once the proxy has stopped (a listener's loop ends then).
pub(crate) async fn until_stopped(
    lifecycle: &mut tokio::sync::watch::Receiver<crate::shared::Lifecycle>,
) {
    let _ = lifecycle
        .wait_for(|s| *s >= crate::shared::Lifecycle::Stopped)
        .await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn hidden_calls_are_found_as_operators_and_casts() {
        let hidden = |names: &[&str], sql: &str| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            super::calls_hidden(&names, &pgopt_sql::analyze(sql).unwrap())
        };
        assert!(hidden(&["##>"], "SELECT 1 ##> 2"));
        assert!(hidden(&["="], "SELECT * FROM t WHERE a = $1"));
        assert!(hidden(&["="], "SELECT * FROM t WHERE a IN ($1, $2)"));
        assert!(hidden(&["<="], "SELECT * FROM t WHERE a BETWEEN $1 AND $2"));
        assert!(!hidden(
            &["="],
            "SELECT * FROM t WHERE a <= $1 AND b >= $2 AND c != $3"
        ));
        assert!(!hidden(&["-"], "SELECT 1 -- a comment"));
        assert!(!hidden(&["-"], "SELECT '-' /* - */"));
        assert!(hidden(&["email"], "SELECT $1::email"));
        assert!(hidden(&["email"], "SELECT x:: public.Email FROM t"));
        assert!(hidden(&["email"], "SELECT x::\"email\" FROM t"));
        assert!(hidden(&["email"], "SELECT CAST(x AS email) FROM t"));
        assert!(hidden(&["email"], "SELECT public.email(x) FROM t"));
        assert!(!hidden(
            &["email"],
            "SELECT email FROM users WHERE email = $1"
        ));
        assert!(!hidden(
            &["email"],
            "SELECT x AS email, $1::email_address FROM t"
        ));
        assert!(!hidden(&[], "SELECT $1::email"));
    }

    #[test]
    fn batches_partly_here_are_waited_for_only_when_the_cache_may_take_them() {
        let m = |tag: u8, body: &[u8]| {
            let mut v = vec![tag];
            v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            v.extend_from_slice(body);
            v
        };
        let parse = m(b'P', b"s1\0SELECT 1\0\0\0");
        let bind = |statement: &[u8]| {
            let mut body = b"\0".to_vec();
            body.extend_from_slice(statement);
            body.extend_from_slice(b"\0\0\0\0\0\0\0");
            m(b'B', &body)
        };
        let describe = m(b'D', b"P\0");
        let execute = m(b'E', b"\0\0\0\0\0");
        let sync = m(b'S', b"");
        let cat = |parts: &[&[u8]]| parts.concat();
        let here = |buf: &[u8]| super::batch_partly_here(buf, 1 << 20);
        // Prefixes of [Parse] Bind [Describe] Execute, the last message whole or not.
        assert!(here(&parse));
        assert!(here(&cat(&[&parse, &bind(b"s1")])));
        assert!(here(&cat(&[&parse, &bind(b"s1"), &describe, &execute])));
        assert!(here(&cat(&[&bind(b"s1"), &execute[..3]])));
        assert!(here(&cat(&[&parse, &bind(b"s1"), &execute, &sync[..2]])));
        // Whole, nothing here, another shape, or a Bind of another statement.
        assert!(!here(&cat(&[&parse, &bind(b"s1"), &execute, &sync])));
        assert!(!here(b""));
        assert!(!here(&parse[..4]));
        assert!(!here(&cat(&[&parse, &sync])));
        assert!(!here(&cat(&[&bind(b"s1"), &execute, &execute])));
        assert!(!here(&cat(&[&parse, &bind(b"s2")])));
        assert!(!here(&cat(&[&describe, &execute])));
        // A malformed header after a whole message: no wait (the relay reports it).
        assert!(!here(&cat(&[&parse, b"B\0\0\0\x01"])));
    }

    use super::*;

    /// The tables `texts`, run one by one on one connection, note for the cache.
    fn noted(sql: &mut SqlStatements, texts: &[&str]) -> Vec<String> {
        let mut writes = PendingWrites::default();
        for text in texts {
            let analysis = pgopt_sql::analyze(text).unwrap();
            writes.note_sql(Some(&analysis), Some(sql));
        }
        let mut tables = writes.tables;
        tables.sort();
        tables
    }

    #[test]
    fn an_execute_writes_what_its_prepare_names_while_every_prepare_is_seen() {
        let mut sql = SqlStatements::default();
        let prepare = [
            "PREPARE r AS SELECT * FROM a",
            "PREPARE w AS UPDATE b SET x = 1",
        ];
        assert!(
            noted(&mut sql, &prepare).is_empty(),
            "a PREPARE runs nothing"
        );
        assert!(noted(&mut sql, &["EXECUTE r"]).is_empty());
        assert_eq!(noted(&mut sql, &["EXECUTE w"]), ["b"]);
        // Prepared again (it fails while the first stands): both.
        assert!(noted(&mut sql, &["PREPARE w AS DELETE FROM public.c"]).is_empty());
        assert_eq!(noted(&mut sql, &["EXECUTE w"]), ["b", "c"]);
        // DEALLOCATE ALL or DISCARD ALL may fail, or be followed by a PREPARE pipelined
        // behind it: nothing is forgotten.
        let again = ["DEALLOCATE ALL", "DISCARD ALL", "PREPARE r AS SELECT 1"];
        assert!(noted(&mut sql, &again).is_empty());
        assert_eq!(noted(&mut sql, &["EXECUTE w"]), ["b", "c"]);
        // Inside another statement, or beside one: anything.
        for text in [
            "EXPLAIN ANALYZE EXECUTE r",
            "CREATE TABLE t AS EXECUTE r",
            "EXECUTE r; SELECT 1",
        ] {
            assert!(
                noted(&mut sql, &[text]).contains(&ALL.to_string()),
                "{text}"
            );
        }
        // Unknown writes in the statement, or an argument: anything.
        for text in ["EXECUTE m", "EXECUTE f", "EXECUTE nobody"] {
            let mut sql = SqlStatements::default();
            noted(
                &mut sql,
                &["PREPARE m AS SELECT 1; SELECT 2", "PREPARE f AS SELECT f()"],
            );
            assert_eq!(noted(&mut sql, &[text]), [ALL], "{text}");
            // …and it may have PREPAREd unseen: the connection is blind.
            noted(&mut sql, &["PREPARE r AS SELECT 1"]);
            assert_eq!(noted(&mut sql, &["EXECUTE r"]), [ALL], "after {text}");
        }
        let mut sql = SqlStatements::default();
        assert_eq!(noted(&mut sql, &["EXECUTE r(nextval('s'))"]), [ALL]);
        for blinding in [
            "DO $$ BEGIN END $$",
            "CALL p()",
            "SELECT g()",
            "SELECT lo_restock(1)",
            "EXECUTE nobody",
        ] {
            let mut sql = SqlStatements::default();
            noted(&mut sql, &[blinding, "PREPARE r AS SELECT 1"]);
            assert_eq!(noted(&mut sql, &["EXECUTE r"]), [ALL], "after {blinding}");
            // Until the connection's statements are known gone.
            sql.clear();
            noted(&mut sql, &["PREPARE r AS SELECT 1"]);
            assert!(noted(&mut sql, &["EXECUTE r"]).is_empty());
        }
        // pgopt's own names are protocol statements; a Parse's name is not followed.
        let mut sql = SqlStatements::default();
        noted(&mut sql, &["PREPARE pgopt_1 AS SELECT 1"]);
        assert_eq!(noted(&mut sql, &["EXECUTE pgopt_1"]), [ALL]);
        let mut sql = SqlStatements::default();
        sql.prepared_by_protocol("s1");
        noted(&mut sql, &["PREPARE s1 AS SELECT 1"]);
        assert_eq!(noted(&mut sql, &["EXECUTE s1"]), [ALL]);
        // Text the parser refuses, or a FunctionCall, may PREPARE too.
        let mut sql = SqlStatements::default();
        let mut writes = PendingWrites::default();
        writes.note_sql(None, Some(&mut sql));
        noted(&mut sql, &["PREPARE r AS SELECT 1"]);
        assert_eq!(noted(&mut sql, &["EXECUTE r"]), [ALL]);
        let mut sql = SqlStatements::default();
        sql.go_blind();
        noted(&mut sql, &["PREPARE r AS SELECT 1"]);
        assert_eq!(noted(&mut sql, &["EXECUTE r"]), [ALL]);
        // Side-effecting built-ins run no SQL.
        let mut sql = SqlStatements::default();
        noted(&mut sql, &["SELECT nextval('s')", "PREPARE r AS SELECT 1"]);
        assert!(noted(&mut sql, &["EXECUTE r"]).is_empty());
    }

    /// A Bind's values part: no formats (all text), `values`, no result formats.
    fn bind_values(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = vec![0, 0];
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&[0, 0]);
        b
    }

    #[test]
    fn a_bound_clock_word_alone_or_in_an_array_or_range_reads_the_clock() {
        for clock in [
            "now",
            " Today ",
            "today 10:00",
            "{2020-01-01,now}",
            "[yesterday,)",
        ] {
            assert!(
                binds_clock_word(&bind_values(&[Some("1"), None, Some(clock)])),
                "{clock}"
            );
        }
        for plain in ["2020-01-01", "snow", "knowledge", "{2020-01-01}", ""] {
            assert!(
                !binds_clock_word(&bind_values(&[Some(plain), None])),
                "{plain}"
            );
        }
    }

    #[tokio::test]
    async fn a_catalog_read_dropped_or_never_finished_does_not_stop_caching() {
        let settings = CacheSettings {
            enabled: true,
            tables: vec!["t".into()],
            ..CacheSettings::default()
        };
        let cache = ProxyCache::new(&settings).unwrap().unwrap();
        let now = Instant::now();
        let ticket = cache.deps("app", now).1.expect("the first lookup reads");
        // A schema change while it was read: its result is dropped, and nobody is
        // left marked as reading.
        cache.schema_changed();
        cache.set_deps(("app", "u"), ticket, Some(Deps::default()));
        assert!(cache.ready_deps("app").is_none());
        let ticket = cache
            .deps("app", now)
            .1
            .expect("the next lookup reads again");
        cache.set_deps(("app", "u"), ticket, Some(Deps::default()));
        assert_eq!(cache.ready_deps("app").map(|d| d.generation), Some(ticket));
        // A read whose session went before it finished is given up in time.
        cache.schema_changed();
        assert!(cache.deps("app", now).1.is_some());
        assert_eq!(cache.deps("app", now).1, None, "one read at a time");
        assert!(cache.deps("app", now + DEPS_MAX_AGE).1.is_some());
    }

    /// The catalog query with the listener's coverage, on a real PostgreSQL: each
    /// listed relation that is never cached is reported with why.
    #[tokio::test]
    async fn listed_tables_never_cached_are_reported_with_why() {
        let pg = pgopt_embedded::Postgres::builder()
            .setting("wal_level", "logical")
            .start()
            .await
            .unwrap();
        pg.psql(
            "CREATE TABLE items (id int PRIMARY KEY);
             CREATE TABLE secret (id int); ALTER TABLE secret ENABLE ROW LEVEL SECURITY;
             CREATE UNLOGGED TABLE scratch (id int);
             CREATE TABLE other (id int PRIMARY KEY);
             CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
             CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
             CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10) TO (20);
             CREATE FUNCTION twice(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 2 * $1';
             CREATE VIEW v_items AS SELECT id FROM items;
             CREATE VIEW v_secret AS SELECT id FROM v_items UNION ALL SELECT id FROM secret;
             CREATE VIEW v_clock AS SELECT id, now() AS at FROM items;
             CREATE VIEW v_user_fn AS SELECT twice(id) FROM items;
             CREATE PUBLICATION pgopt_cache FOR TABLE items, secret, parted_1;",
        )
        .unwrap();
        let (client, conn) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let query = format!("{DEPS_QUERY}{}", uncovered_query("pgopt_cache"));
        let rows: Vec<Vec<Option<String>>> = client
            .simple_query(&query)
            .await
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect();
        let deps = Deps::from_rows(&rows);
        let listed = [
            "items",
            "secret",
            "scratch",
            "other",
            "parted",
            "parted_1",
            "parted_2",
            "v_items",
            "v_secret",
            "v_clock",
            "v_user_fn",
            "missing",
        ];
        let uncached = deps.uncached_listed(listed.into_iter());
        let publication = "the replication listener's publication does not carry all its changes";
        let expected = [
            ("other", publication.to_string()),
            (
                "parted",
                "the replication listener's publication does not carry all changes of a \
                 partition or child of it"
                    .to_string(),
            ),
            ("parted_2", publication.to_string()),
            ("scratch", "it is unlogged".to_string()),
            ("secret", "it has row-level security".to_string()),
            (
                "v_clock",
                "the view reads a catalog, calls a built-in function that is neither \
                 immutable nor one of the stable date, format and JSON functions pgopt \
                 allows, or samples"
                    .to_string(),
            ),
            (
                "v_secret",
                "it reads secret: it has row-level security".to_string(),
            ),
            ("v_user_fn", "the view calls a user function".to_string()),
        ]
        .map(|(t, why)| (t.to_string(), why));
        assert_eq!(uncached, expected);
    }

    #[test]
    fn the_listener_uses_the_upstreams_password_only_for_the_upstreams_user() {
        let db = crate::config::Database {
            name: "app".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            dbname: "app".into(),
            user: Some("owner".into()),
            password: Some("ownerpw".into()),
            more_hosts: Default::default(),
            replicas: Vec::new(),
            pool: Default::default(),
        };
        let login = |user: Option<&str>, password: Option<&str>| {
            let settings = CacheSettings {
                wal_user: user.map(str::to_string),
                wal_password: password.map(str::to_string),
                ..CacheSettings::default()
            };
            wal_login(&settings, &db)
        };
        let pair = |u: &str, p: Option<&str>| (u.to_string(), p.map(str::to_string));
        assert_eq!(login(None, None), pair("owner", Some("ownerpw")));
        assert_eq!(login(Some("owner"), None), pair("owner", Some("ownerpw")));
        assert_eq!(login(Some("walreader"), None), pair("walreader", None));
        assert_eq!(
            login(Some("walreader"), Some("walpw")),
            pair("walreader", Some("walpw"))
        );
        assert_eq!(login(None, Some("other")), pair("owner", Some("other")));
    }

    #[test]
    fn bucket_quantiles_are_the_bound_of_the_bucket_they_fall_in() {
        let b = Buckets::new(&HIT_US);
        assert_eq!(b.quantile_bound(0.5), None);
        for v in [1, 3, 3, 3, 40, 40, 40, 40, 40, 9000] {
            b.record(v);
        }
        assert_eq!(b.quantile_bound(0.4), Some(5));
        assert_eq!(b.quantile_bound(0.5), Some(50));
        assert_eq!(b.quantile_bound(0.99), Some(10_000));
        assert_eq!(bound_cell(b.quantile_bound(0.99)).as_deref(), Some("10000"));
        b.record(2_000_000);
        b.record(2_000_000);
        assert_eq!(b.quantile_bound(0.99), Some(u64::MAX));
        // Past the last bound SHOW CACHE shows NULL, not u64::MAX.
        assert_eq!(bound_cell(b.quantile_bound(0.99)), None);
    }

    #[test]
    fn a_stored_reply_is_sent_back_in_the_shape_of_the_request() {
        let t = b"T\0\0\0\x06\0\0";
        let rows = b"D\0\0\0\x06\0\0C\0\0\0\x0dSELECT 1\0";
        let value = stored(t, rows);
        let mut out = BytesMut::new();
        reply(Shape::Simple, &value, &mut out);
        assert_eq!(&out[..], [&t[..], &rows[..], b"Z\0\0\0\x05I"].concat());
        out.clear();
        reply(
            Shape::Extended {
                parse: true,
                describe: 0,
            },
            &value,
            &mut out,
        );
        let expected = [&b"1\0\0\0\x042\0\0\0\x04"[..], &rows[..], b"Z\0\0\0\x05I"].concat();
        assert_eq!(&out[..], expected);
    }

    #[test]
    fn privileges_move_only_for_objects_read_both_times() {
        let map = |pairs: &[(&str, &str)]| -> foldhash::HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let before = map(&[
            ("c1", "{a=r/o}:false:false::"),
            ("u2", "false:true:false:3"),
        ]);
        // The same, plus an object made since and one dropped: nothing moved.
        let later = map(&[("c1", "{a=r/o}:false:false::"), ("c9", "{}:false:false::")]);
        assert!(!privileges_moved(&before, &later));
        // A role's membership taken away.
        let revoked = map(&[("c1", "{a=r/o}:false:false::"), ("u2", "false:true:false:")]);
        assert!(privileges_moved(&before, &revoked));
        // A relation's privileges.
        let granted = map(&[("c1", "{a=r/o,b=r/o}:false:false::")]);
        assert!(privileges_moved(&before, &granted));
    }
}
