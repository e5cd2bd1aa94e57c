//! Transaction mode: the functions (and procedures) whose run may change the session's
//! settings — `SET search_path` or `set_config('app.tenant', …, false)` in a body, or a
//! call of such a function, or an aggregate's — read from the database's catalog, and
//! the relations whose use runs one (a trigger, a view, a column default, a policy, a
//! check constraint, an index expression; a view over such a relation, a parent of one,
//! a table whose foreign keys cascade into one).
//!
//! PostgreSQL reports only a few settings' changes (ParameterStatus); a `search_path`
//! a function sets would stay on the server connection for the next client, and out of
//! the caller's cache key. A statement that calls such a function has the settings it
//! may set read back after it (see `session_state::judge`), as a SET's are.
//!
//! The catalog is read on a connection of pgopt's own to the primary (so no client's
//! settings, nor a replica's lag, shape the read): a session with none read yet waits
//! for it, and so does every session after a CREATE of a function, procedure, trigger,
//! view, rule or policy through pgopt; reads once per [`MAX_AGE`] run in the
//! background while the last one stays in use. Every body is read (and the calls
//! followed in memory) only when a digest of the functions and of what depends on them
//! has moved. A database is known by its server and name there, whatever name its
//! clients use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use pgopt_sql::{Analysis, SettingsSet};

use crate::pool::{Pool, Room};
use crate::shared::Shared;

/// How long a read of the catalog is used; a function created without pgopt (or by
/// other DDL than CREATE) is seen within this time.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// How long after a failed read the next is tried.
const RETRY: Duration = Duration::from_secs(5);
/// How long the query may run, beyond the connect.
const QUERY_TIME: Duration = Duration::from_secs(10);

/// How long a [`read`] through `pool` may take: a connect (each server of a host list
/// in turn), then [`QUERY_TIME`].
pub fn read_budget(pool: &Pool) -> Duration {
    let connect = pool.limits().round_trip();
    pool.target.connect_budget(connect) + connect + QUERY_TIME
}

/// The database's user functions as procedural code: (oid, name, language, body). A
/// body written as SQL-standard `BEGIN ATOMIC` is read as the names of the functions it
/// calls, an aggregate's as those of its own (transition, final…) functions.
const FUNCTIONS: &str = "\
WITH src AS ( \
  SELECT p.oid, p.proname, l.lanname, \
    CASE WHEN p.prokind = 'a' THEN \
      (SELECT pg_catalog.string_agg(q.proname, ' ') FROM pg_catalog.pg_depend d \
        JOIN pg_catalog.pg_proc q ON q.oid = d.refobjid \
        WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid \
        AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass) \
    WHEN pg_catalog.to_jsonb(p) ->> 'prosqlbody' IS NOT NULL THEN \
      (SELECT pg_catalog.string_agg(q.proname, ' ') FROM pg_catalog.regexp_matches( \
          pg_catalog.to_jsonb(p) ->> 'prosqlbody', \
          ':(funcid|opfuncid|aggfnoid|winfnoid) ([0-9]+)', 'g') m \
        JOIN pg_catalog.pg_proc q ON q.oid = m[2]::pg_catalog.oid) \
    ELSE p.prosrc END AS body \
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
  WHERE p.oid >= 16384 AND (l.lanname NOT IN ('c', 'internal') OR p.prokind = 'a')) \
SELECT 'f', s.proname, s.lanname, s.body, s.oid::pg_catalog.text FROM src s";

/// The relations whose use runs one of the functions `oids`, as `('r', relation,
/// function, kind)`: kind `a` when reading it may (a view's query, a policy), `w`
/// when only a write does (a trigger, a rule ON INSERT/UPDATE/DELETE, a column default,
/// a check constraint, an index expression); and those that reach such a relation — a view
/// over it (the same kind), its parent, a table whose foreign keys cascade into it
/// (`w`).
fn relations_query(oids: &str) -> String {
    format!(
        "\
WITH RECURSIVE rels AS ( \
  SELECT DISTINCT r.oid, c.proname, CASE d.classid \
      WHEN 'pg_catalog.pg_policy'::pg_catalog.regclass THEN 'a' \
      WHEN 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN \
        (SELECT CASE x.ev_type WHEN '1' THEN 'a' ELSE 'w' END \
          FROM pg_catalog.pg_rewrite x WHERE x.oid = d.objid) \
      ELSE 'w' END AS kind FROM pg_catalog.pg_depend d \
    JOIN pg_catalog.pg_proc c ON c.oid = d.refobjid \
    JOIN pg_catalog.pg_class r ON r.oid = CASE d.classid \
      WHEN 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN \
        (SELECT x.tgrelid FROM pg_catalog.pg_trigger x WHERE x.oid = d.objid) \
      WHEN 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN \
        (SELECT x.ev_class FROM pg_catalog.pg_rewrite x WHERE x.oid = d.objid) \
      WHEN 'pg_catalog.pg_attrdef'::pg_catalog.regclass THEN \
        (SELECT x.adrelid FROM pg_catalog.pg_attrdef x WHERE x.oid = d.objid) \
      WHEN 'pg_catalog.pg_policy'::pg_catalog.regclass THEN \
        (SELECT x.polrelid FROM pg_catalog.pg_policy x WHERE x.oid = d.objid) \
      WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN \
        (SELECT x.conrelid FROM pg_catalog.pg_constraint x WHERE x.oid = d.objid) \
      WHEN 'pg_catalog.pg_class'::pg_catalog.regclass THEN \
        (SELECT x.indrelid FROM pg_catalog.pg_index x WHERE x.indexrelid = d.objid) \
      END \
    WHERE d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
    AND d.refobjid = ANY (ARRAY[{oids}]::pg_catalog.oid[])), \
reach AS ( \
  SELECT r.oid, r.proname, r.kind FROM rels r \
  UNION \
  SELECT x.next, reach.proname, x.kind FROM reach CROSS JOIN LATERAL ( \
    SELECT i.inhparent AS next, 'w'::pg_catalog.text AS kind FROM pg_catalog.pg_inherits i \
      WHERE i.inhrelid = reach.oid \
    UNION ALL \
    SELECT w.ev_class, reach.kind FROM pg_catalog.pg_depend d \
      JOIN pg_catalog.pg_rewrite w ON w.oid = d.objid \
      WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
      AND d.refobjid = reach.oid AND w.ev_class <> reach.oid \
    UNION ALL \
    SELECT k.confrelid, 'w' FROM pg_catalog.pg_constraint k \
      WHERE k.conrelid = reach.oid AND k.contype = 'f' \
      AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))) x) \
SELECT DISTINCT 'r', c.relname, reach.proname, reach.kind FROM reach \
  JOIN pg_catalog.pg_class c ON c.oid = reach.oid"
    )
}

/// At most this many rounds of relations are read (a trigger's function that writes
/// a table whose trigger's function writes another…).
const MAX_ROUNDS: usize = 8;

/// A digest of the user functions' catalog rows (a CREATE OR REPLACE, a rename, a
/// DROP each change it), of what depends on them (a trigger, a policy…), of the user
/// rules and views, the inheritance and the foreign keys: while it stays, what was found
/// in the bodies stands (a function that names a relation is found by what the
/// relation runs). (SHA-256, not MD5, which a server in FIPS mode refuses.)
const FUNCTIONS_DIGEST: &str = "\
SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to( \
  coalesce((SELECT pg_catalog.string_agg(p.oid::pg_catalog.text || ':' || \
    p.xmin::pg_catalog.text, ',' ORDER BY p.oid) FROM pg_catalog.pg_proc p \
    WHERE p.oid >= 16384), '') || '|' || \
  coalesce((SELECT pg_catalog.string_agg(d.classid::pg_catalog.text || ':' || \
    d.objid::pg_catalog.text || ':' || d.refobjid::pg_catalog.text, ',' \
    ORDER BY d.classid, d.objid, d.refobjid) FROM pg_catalog.pg_depend d \
    WHERE d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
    AND d.refobjid >= 16384), '') || '|' || \
  coalesce((SELECT pg_catalog.string_agg(r.oid::pg_catalog.text, ',' ORDER BY r.oid) \
    FROM pg_catalog.pg_rewrite r WHERE r.oid >= 16384), '') || '|' || \
  coalesce((SELECT pg_catalog.string_agg(i.inhrelid::pg_catalog.text || ':' || \
    i.inhparent::pg_catalog.text, ',' ORDER BY i.inhrelid, i.inhparent) \
    FROM pg_catalog.pg_inherits i), '') || '|' || \
  coalesce((SELECT pg_catalog.string_agg(k.oid::pg_catalog.text, ',' ORDER BY k.oid) \
    FROM pg_catalog.pg_constraint k WHERE k.contype = 'f'), ''), 'UTF8')), 'hex')";

/// Reads `database`'s functions that may change settings on a connection of pgopt's
/// own through `pool` (the primary's), within [`read_budget`]: every user function's
/// body (unless the functions are as `last` found them: then only those it found),
/// then the relations that run the functions found; `None` (logged) when that fails.
pub async fn read(
    pool: &Pool,
    database: &str,
    last: Option<&FunctionSettings>,
) -> Option<FunctionSettings> {
    let limits = pool.limits();
    let budget = read_budget(pool);
    let read = async {
        let mut conn = pool
            .connect_out_of_band(Room::Wait)
            .await
            .map_err(|e| e.to_string())?;
        // (A role's or the database's own timeouts must not cut it short.)
        let max_len = limits.max_message_len;
        conn.simple_query("SET statement_timeout = 0; SET lock_timeout = 0", max_len)
            .await?;
        let digest = conn
            .simple_query(FUNCTIONS_DIGEST, max_len)
            .await?
            .pop()
            .and_then(|mut row| row.pop().flatten())
            .unwrap_or_default();
        let rows = match last.filter(|l| l.digest == digest) {
            Some(last) => last.found.to_vec(),
            None => conn.simple_query(FUNCTIONS, max_len).await?,
        };
        // The relations of the functions found, then of those found through them (a
        // trigger's function that writes a table whose trigger sets something…).
        let mut all = rows;
        let mut queried: std::collections::HashSet<String> = Default::default();
        let mut read = FunctionSettings::from_rows(&all);
        for _ in 0..MAX_ROUNDS {
            let oids: Vec<String> = all
                .iter()
                .filter(|row| read.finds(row))
                .map(|row| field(row, 4).to_string())
                .filter(|oid| !queried.contains(oid))
                .collect();
            if oids.is_empty() {
                break;
            }
            let relations = conn
                .simple_query(&relations_query(&oids.join(",")), max_len)
                .await?;
            queried.extend(oids);
            all.extend(relations);
            read = FunctionSettings::from_rows(&all);
        }
        // The functions found, kept for the next read while they stay as they are.
        all.retain(|row| read.finds(row));
        read.digest = digest;
        read.found = all.into();
        Ok::<_, String>(read)
    };
    match tokio::time::timeout(budget, read).await {
        Ok(Ok(read)) => Some(read),
        outcome => {
            let error = match outcome {
                Ok(Err(e)) => e,
                _ => format!("no answer in {} ms", budget.as_millis()),
            };
            tracing::warn!(%database, %error, "reading which functions may change settings failed; trying again in a while");
            None
        }
    }
}

/// Whether `sql` may change what runs a function, or the names callers use: a CREATE
/// of a function, procedure, aggregate, trigger, view, rule or policy (or a
/// replacement), of a table that is a partition, inherits, or has defaults, checks or
/// foreign keys, not a temporary one; an ALTER of a function, procedure, aggregate,
/// table, view or policy (a rename, a new default, ATTACH PARTITION…).
pub fn creates_callers(sql: &str) -> bool {
    sql.split(';').any(|statement| {
        let lower = statement.trim_start().to_ascii_lowercase();
        let mut words = lower.split_ascii_whitespace();
        match words.next() {
            Some("create") => {
                let mut table = false;
                let found = words
                    .by_ref()
                    .take(4)
                    .take_while(|w| !matches!(*w, "temp" | "temporary"))
                    .any(|w| {
                        table |= w == "table";
                        matches!(
                            w,
                            "function"
                                | "procedure"
                                | "aggregate"
                                | "trigger"
                                | "view"
                                | "rule"
                                | "policy"
                                | "replace"
                        )
                    });
                found
                    || table
                        && lower.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| {
                            matches!(
                                w,
                                "partition" | "inherits" | "default" | "check" | "references"
                            )
                        })
            }
            Some("alter") => matches!(
                words.next(),
                Some(
                    "function"
                        | "procedure"
                        | "routine"
                        | "aggregate"
                        | "table"
                        | "view"
                        | "materialized"
                        | "policy"
                )
            ),
            _ => false,
        }
    })
}

/// Field `i` of a catalog row ("" when null or missing).
fn field(row: &[Option<String>], i: usize) -> &str {
    row.get(i).and_then(Option::as_deref).unwrap_or("")
}

/// One database's functions and relations whose use may change settings.
#[derive(Debug, Default)]
pub struct FunctionSettings {
    /// By name, lower-cased (overloads and schemas merged).
    functions: HashMap<String, SettingsSet>,
    /// Relations by name, lower-cased: those reading runs a function of (a view, a
    /// policy), and those writing does (those too, and a trigger, a default…).
    read_relations: HashMap<String, SettingsSet>,
    written_relations: HashMap<String, SettingsSet>,
    /// Both kinds of name, for [`FunctionSettings::mentioned`] (`None` when there
    /// are none).
    words: Option<aho_corasick::AhoCorasick>,
    /// What was found, hashed: two reads that found the same share it.
    pub signature: u64,
    /// [`FUNCTIONS_DIGEST`] when read, and the rows of the functions found then.
    digest: String,
    found: Arc<[Vec<Option<String>>]>,
    /// When read, and the store's generation then.
    read_at: Option<Instant>,
    generation: u64,
}

impl FunctionSettings {
    /// From [`read`]'s rows: `('f', name, language, body, oid)` for each user function,
    /// `('r', relation, function, kind)` for each relation a function is used by (see
    /// [`relations_query`]; an empty kind is `a`). A function is found when its body
    /// sets a setting, names a function found (its callers take on what it sets,
    /// through any depth of calls), or names a relation whose writes run one.
    pub fn from_rows(rows: &[Vec<Option<String>>]) -> FunctionSettings {
        // Every function's name, an index each (overloads and schemas share one).
        let mut index: HashMap<String, usize> = HashMap::new();
        for row in rows.iter().filter(|row| field(row, 0) == "f") {
            let count = index.len();
            index
                .entry(field(row, 1).to_ascii_lowercase())
                .or_insert(count);
        }
        let mut sets = vec![SettingsSet::default(); index.len()];
        // Callee → callers.
        let mut callers: Vec<Vec<usize>> = vec![Vec::new(); index.len()];
        let mut uses: Vec<(String, String, bool)> = Vec::new();
        for row in rows.iter().filter(|row| field(row, 0) == "r") {
            let read = matches!(field(row, 3), "a" | "");
            uses.push((
                field(row, 1).to_ascii_lowercase(),
                field(row, 2).to_ascii_lowercase(),
                read,
            ));
        }
        let used: std::collections::HashSet<&str> = uses
            .iter()
            .map(|(relation, _, _)| relation.as_str())
            .collect();
        // Functions that name a relation a function is used by.
        let mut naming: Vec<(usize, String)> = Vec::new();
        for row in rows.iter().filter(|row| field(row, 0) == "f") {
            let (language, body) = (field(row, 2), field(row, 3));
            let me = index[&field(row, 1).to_ascii_lowercase()];
            let set = match language {
                "plpgsql" | "sql" => pgopt_sql::settings_set_by(body),
                _ => pgopt_sql::settings_set_by_other(body),
            };
            sets[me].merge(&set);
            for word in pgopt_sql::body_words(body) {
                if let Some(&callee) = index.get(&word) {
                    if callee != me {
                        callers[callee].push(me);
                    }
                }
                if used.contains(word.as_str()) {
                    naming.push((me, word));
                }
            }
        }
        // What a function may set reaches its callers, theirs, and so on.
        let propagate = |sets: &mut Vec<SettingsSet>, mut work: Vec<usize>| {
            while let Some(callee) = work.pop() {
                let set = sets[callee].clone();
                for &caller in &callers[callee] {
                    if sets[caller].merge(&set) {
                        work.push(caller);
                    }
                }
            }
        };
        let seeds = (0..sets.len()).filter(|&i| !sets[i].is_empty()).collect();
        propagate(&mut sets, seeds);
        let relations = |sets: &Vec<SettingsSet>, reads: bool| {
            let mut map: HashMap<String, SettingsSet> = HashMap::new();
            for (relation, function, read) in &uses {
                let set = index.get(function).map(|&i| &sets[i]);
                if let Some(set) = set.filter(|set| !set.is_empty() && (*read || !reads)) {
                    map.entry(relation.clone()).or_default().merge(set);
                }
            }
            map
        };
        // A function that names a relation whose writes run one (an INSERT into a
        // table whose trigger sets something) may too: it, and its callers.
        let written = relations(&sets, false);
        let mut seeds = Vec::new();
        for (me, relation) in &naming {
            if let Some(set) = written.get(relation) {
                if sets[*me].merge(set) {
                    seeds.push(*me);
                }
            }
        }
        propagate(&mut sets, seeds);
        let (read_relations, written_relations) = (relations(&sets, true), relations(&sets, false));
        let functions: HashMap<String, SettingsSet> = index
            .into_iter()
            .map(|(name, i)| (name, std::mem::take(&mut sets[i])))
            .filter(|(_, set)| !set.is_empty())
            .collect();
        let names: Vec<&String> = functions.keys().chain(written_relations.keys()).collect();
        let words = (!names.is_empty())
            .then(|| {
                aho_corasick::AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(names)
                    .ok()
            })
            .flatten();
        let signature = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::hash::DefaultHasher::new();
            for map in [&functions, &read_relations, &written_relations] {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                for (name, set) in entries {
                    (name, set.any, &set.names).hash(&mut hasher);
                }
                0xffu8.hash(&mut hasher);
            }
            hasher.finish()
        };
        FunctionSettings {
            functions,
            read_relations,
            written_relations,
            words,
            signature,
            digest: String::new(),
            found: Arc::new([]),
            read_at: None,
            generation: 0,
        }
    }

    /// Whether `row` is a function's (see [`FunctionSettings::from_rows`]) that this
    /// read found.
    fn finds(&self, row: &[Option<String>]) -> bool {
        field(row, 0) == "f"
            && self
                .functions
                .contains_key(&field(row, 1).to_ascii_lowercase())
    }

    /// Whether `sql` may name one of the functions or relations (a cheap pass before
    /// a statement is analysed, as `session_state::may_affect_session` is).
    pub fn mentioned(&self, sql: &[u8]) -> bool {
        let Some(words) = &self.words else {
            return false;
        };
        let ident = |b: Option<&u8>| {
            b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b >= 0x80)
        };
        // (Overlapping: a name inside a longer one must not hide the other.)
        words.find_overlapping_iter(sql).any(|m| {
            let before = m.start().checked_sub(1).and_then(|i| sql.get(i));
            !ident(before) && !ident(sql.get(m.end()))
        })
    }

    /// What a statement may set through the functions it calls and the relations it
    /// uses (a DO block: the functions its body names), as names to read back.
    #[inline]
    pub fn reread(&self, analysis: &Analysis, sql: &str) -> Vec<String> {
        if self.words.is_none() {
            return Vec::new();
        }
        self.reread_found(analysis, sql)
    }

    fn reread_found(&self, analysis: &Analysis, sql: &str) -> Vec<String> {
        let last = |name: &str| name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
        let mut set = SettingsSet::default();
        for function in &analysis.functions {
            if let Some(s) = self.functions.get(&last(function)) {
                set.merge(s);
            }
        }
        // (Reading runs a view's functions, a policy's; writing a trigger's too.)
        let reads = analysis
            .tables_read
            .iter()
            .map(|r| (r, &self.read_relations));
        let writes = analysis
            .tables_written
            .iter()
            .map(|r| (r, &self.written_relations));
        for (relation, map) in reads.chain(writes) {
            if let Some(s) = map.get(&last(relation)) {
                set.merge(s);
            }
        }
        if crate::session_state::is_do(analysis, sql) {
            for word in pgopt_sql::body_words(sql) {
                if let Some(s) = self.functions.get(&word) {
                    set.merge(s);
                }
            }
        }
        set.reread()
    }

    /// Whether this read is still to be used at `now` with the store at `generation`.
    pub fn fresh(&self, now: Instant, generation: u64) -> bool {
        self.fresh_until(generation)
            .is_some_and(|until| now < until)
    }

    /// Until when this read is to be used while the store stays at `generation`.
    pub fn fresh_until(&self, generation: u64) -> Option<Instant> {
        self.read_at
            .filter(|_| self.generation == generation)
            .map(|at| at + MAX_AGE)
    }
}

#[derive(Default)]
enum State {
    /// None read yet.
    #[default]
    Empty,
    Ready(Arc<FunctionSettings>),
    /// A read under way since then, the last good one meanwhile; `done` changes (its
    /// sender is dropped) when the read ends, or is given up. `failing`: the read
    /// before it failed (no session waits for this one).
    Loading {
        since: Instant,
        last: Option<Arc<FunctionSettings>>,
        done: watch::Receiver<()>,
        failing: bool,
    },
    /// The last read failed then: the last good one until it is tried again.
    Failed(Instant, Option<Arc<FunctionSettings>>),
}

/// One database's reads, and its generation, which moves on at a schema change.
#[derive(Default)]
struct Database {
    state: State,
    generation: Arc<AtomicU64>,
}

/// What a session is to do for a database's [`FunctionSettings`] (see [`Store::get`]).
pub enum Access {
    /// Use this one: fresh, or the last good one while a failed read waits to be tried
    /// again (`None`: none yet).
    Use(Option<Arc<FunctionSettings>>),
    /// Read the catalog (then [`Store::set`] with `ticket`, the generation the read
    /// began in, and drop `done`: sessions waiting for it look again); `last` meanwhile.
    /// `failing`: the read before failed (whoever needs a fresh one does not wait).
    Read {
        ticket: u64,
        done: watch::Sender<()>,
        last: Option<Arc<FunctionSettings>>,
        failing: bool,
    },
    /// Another session reads it: wait for `done` to change when `last` won't do (and
    /// the read before did not fail).
    Wait {
        done: watch::Receiver<()>,
        last: Option<Arc<FunctionSettings>>,
        failing: bool,
    },
}

/// The [`Store`]'s key for database `dbname` on server `host:port`.
pub fn store_key(host: &str, port: u16, dbname: &str) -> String {
    format!("{host}:{port}/{dbname}")
}

/// A session's side of its database's reads (see [`Store`]): the read it uses, and until
/// when that stands without a look at the store.
#[derive(Default)]
pub struct Followed {
    /// The read in use (`None`: none yet, or none could be made).
    pub current: Option<Arc<FunctionSettings>>,
    /// The store's key for the database: its server and name there (two names for one
    /// database share what a schema change through either moved).
    key: String,
    /// The database's generation, looked up once, and its value when `current` was
    /// taken; until when `current` is fresh then.
    generation: Option<Arc<AtomicU64>>,
    seen: u64,
    until: Option<Instant>,
}

impl Followed {
    /// Whether the read in use stands at `now` (the usual case: two compares and a
    /// load).
    #[inline]
    pub fn fresh(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| until > now)
            && self
                .generation
                .as_ref()
                .is_some_and(|g| g.load(Relaxed) == self.seen)
    }

    /// A schema change (a CREATE through pgopt committed) in this session's database.
    pub fn changed(&self, store: &Store) {
        store.changed(&self.key);
    }

    /// Brings the read in use up to date for a session of `pool` at `clock` (moved on
    /// past any wait): one session reads the catalog; one whose read is from before a
    /// schema change (or that has none) waits for that read — unless the read before it
    /// failed — the others use the last read meanwhile, while it runs in the
    /// background. A wait lasts a read's time at most.
    pub async fn refresh(&mut self, shared: &Arc<Shared>, pool: &Arc<Pool>, clock: &mut Instant) {
        let store = &shared.function_settings;
        if self.key.is_empty() {
            let target = &pool.target;
            self.key = store_key(&target.host, target.port, &target.dbname);
        }
        let key = self.key.clone();
        let generation = self
            .generation
            .get_or_insert_with(|| store.generation(&key))
            .clone();
        let deadline = Instant::now() + read_budget(pool);
        loop {
            let now = generation.load(Relaxed);
            if self.current.as_ref().is_some_and(|f| f.fresh(*clock, now)) {
                break;
            }
            match store.get(&key, *clock) {
                Access::Use(f) => {
                    self.current = f;
                    break;
                }
                Access::Read {
                    ticket,
                    done,
                    last,
                    failing,
                } => {
                    let wait = !failing && !store.current(&key, last.as_ref());
                    self.current.clone_from(&last);
                    let (pool, shared, key) = (pool.clone(), shared.clone(), key.clone());
                    // (What the last read found in the bodies is kept only within its
                    // generation.)
                    let kept = last.filter(|_| !wait);
                    let read = async move {
                        let read = read(&pool, &key, kept.as_deref()).await;
                        let read = shared
                            .function_settings
                            .set(&key, ticket, read, Instant::now());
                        drop(done);
                        read
                    };
                    if !wait {
                        tokio::spawn(read);
                        break;
                    }
                    self.current = read.await;
                    *clock = Instant::now();
                    // (A schema change while it read: again, within the wait's time.)
                    if ticket == generation.load(Relaxed) || *clock >= deadline {
                        break;
                    }
                }
                Access::Wait {
                    mut done,
                    last,
                    failing,
                } => {
                    let wait = !failing && !store.current(&key, last.as_ref());
                    self.current = last;
                    if !wait || Instant::now() >= deadline {
                        break;
                    }
                    let _ = tokio::time::timeout_at(deadline.into(), done.changed()).await;
                    *clock = Instant::now();
                }
            }
        }
        self.seen = generation.load(Relaxed);
        self.until = self.current.as_ref().and_then(|f| f.fresh_until(self.seen));
    }
}

/// Every database's [`FunctionSettings`], shared by the sessions.
#[derive(Default)]
pub struct Store {
    databases: Mutex<HashMap<String, Database>>,
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Database>> {
        self.databases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `database`'s generation (see [`FunctionSettings::fresh`]), which a session keeps
    /// to tell at a glance whether its read is still current.
    pub fn generation(&self, database: &str) -> Arc<AtomicU64> {
        let mut map = self.lock();
        let db = map.entry(database.to_string()).or_default();
        db.generation.clone()
    }

    /// A schema change in `database` (a CREATE through pgopt committed): its functions
    /// are read again at the next use, and a session whose read is from before waits
    /// for that read.
    pub fn changed(&self, database: &str) {
        self.generation(database).fetch_add(1, Relaxed);
    }

    /// A schema change in some database (another pgopt instance made it): every
    /// database's functions are read again at their next use.
    pub fn changed_all(&self) {
        for db in self.lock().values() {
            db.generation.fetch_add(1, Relaxed);
        }
    }

    /// Whether `f` was read in `database`'s current generation (else a schema change
    /// since may have changed what it would find).
    pub fn current(&self, database: &str, f: Option<&Arc<FunctionSettings>>) -> bool {
        let generation = self.generation(database).load(Relaxed);
        f.is_some_and(|f| f.generation == generation)
    }

    /// What to do for `database` at `now`.
    pub fn get(&self, database: &str, now: Instant) -> Access {
        let mut map = self.lock();
        let db = map.entry(database.to_string()).or_default();
        let generation = db.generation.load(Relaxed);
        let (last, failing) = match std::mem::take(&mut db.state) {
            State::Ready(f) if f.fresh(now, generation) => {
                db.state = State::Ready(f.clone());
                return Access::Use(Some(f));
            }
            // (A read given up — its session went — is no read under way.)
            State::Loading {
                since,
                last,
                done,
                failing,
            } if now.saturating_duration_since(since) < MAX_AGE && done.has_changed().is_ok() => {
                let wait = Access::Wait {
                    done: done.clone(),
                    last: last.clone(),
                    failing,
                };
                db.state = State::Loading {
                    since,
                    last,
                    done,
                    failing,
                };
                return wait;
            }
            State::Failed(at, last) if now.saturating_duration_since(at) < RETRY => {
                db.state = State::Failed(at, last.clone());
                return Access::Use(last);
            }
            State::Ready(f) => (Some(f), false),
            State::Loading { last, failing, .. } => (last, failing),
            State::Failed(_, last) => (last, true),
            State::Empty => (None, false),
        };
        let (sender, receiver) = watch::channel(());
        db.state = State::Loading {
            since: now,
            last: last.clone(),
            done: receiver,
            failing,
        };
        Access::Read {
            ticket: generation,
            done: sender,
            last,
            failing,
        }
    }

    /// The outcome of a read with `ticket` (see [`Store::get`]): what to use now. (A
    /// read older than the one stored, which began in an earlier generation, is
    /// dropped.)
    pub fn set(
        &self,
        database: &str,
        ticket: u64,
        read: Option<FunctionSettings>,
        now: Instant,
    ) -> Option<Arc<FunctionSettings>> {
        let mut map = self.lock();
        let db = map.get_mut(database)?;
        let last = match std::mem::take(&mut db.state) {
            State::Ready(f) => Some(f),
            State::Loading { last, .. } | State::Failed(_, last) => last,
            State::Empty => None,
        };
        if let Some(newer) = last.as_ref().filter(|f| f.generation > ticket) {
            let newer = newer.clone();
            db.state = State::Ready(newer.clone());
            return Some(newer);
        }
        db.state = match read {
            Some(mut f) => {
                f.read_at = Some(now);
                f.generation = ticket;
                State::Ready(Arc::new(f))
            }
            None => State::Failed(now, last),
        };
        match &db.state {
            State::Ready(f) => Some(f.clone()),
            State::Failed(_, last) | State::Loading { last, .. } => last.clone(),
            State::Empty => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(parts: &[&str]) -> Vec<Option<String>> {
        parts.iter().map(|p| Some(p.to_string())).collect()
    }

    /// The settings `sql` may set through `f` (not whether it may leave other state).
    fn reread(f: &FunctionSettings, sql: &str) -> Vec<String> {
        let mut names = f.reread(&pgopt_sql::analyze(sql).unwrap(), sql);
        names.retain(|n| n != pgopt_sql::SESSION_STATE);
        names
    }

    #[test]
    fn callers_of_setting_functions_and_their_relations_are_followed() {
        let f = FunctionSettings::from_rows(&[
            row(&[
                "f",
                "set_tenant",
                "plpgsql",
                "BEGIN EXECUTE format('SET search_path = %I', t); END",
            ]),
            row(&["f", "outer_fn", "sql", "SELECT set_tenant('x'); SELECT 1"]),
            row(&["f", "Outermost", "plpgsql", "BEGIN PERFORM outer_fn(); END"]),
            row(&["f", "upd", "plpgsql", "BEGIN UPDATE audit SET v = 'a'; END"]),
            row(&["f", "upd_caller", "plpgsql", "BEGIN PERFORM upd(); END"]),
            row(&[
                "f",
                "trg",
                "plpgsql",
                "BEGIN PERFORM set_config('app.last', 'x', false); RETURN NEW; END",
            ]),
            row(&[
                "f",
                "dyn",
                "plpython3u",
                "plpy.execute('SET ' + name + ' = 1')",
            ]),
            row(&["f", "plain", "sql", "SELECT 1"]),
            row(&["r", "audit", "trg", "w"]),
            row(&["r", "tv", "outer_fn", "a"]),
            row(&["r", "tv2", "outer_fn", "a"]),
            row(&["r", "t_parent", "trg", "w"]),
        ]);
        assert_eq!(reread(&f, "SELECT set_tenant('a')"), ["search_path"]);
        // Dynamic SQL may leave other state too (a temporary table…): checked for, as
        // in its callers.
        let sql = "SELECT app.OUTERMOST()";
        let names = f.reread(&pgopt_sql::analyze(sql).unwrap(), sql);
        assert!(names.iter().any(|n| n == pgopt_sql::SESSION_STATE));
        assert_eq!(reread(&f, "SELECT app.OUTERMOST()"), ["search_path"]);
        assert_eq!(reread(&f, "CALL outer_fn()"), ["search_path"]);
        // A write to a table whose trigger sets something, in a function: it and its
        // callers; reading the table runs no trigger.
        assert_eq!(reread(&f, "SELECT upd_caller()"), ["app.last"]);
        assert_eq!(reread(&f, "INSERT INTO audit VALUES (1)"), ["app.last"]);
        assert_eq!(reread(&f, "DELETE FROM t_parent"), ["app.last"]);
        assert!(reread(&f, "SELECT * FROM audit JOIN t_parent USING (id)").is_empty());
        assert!(reread(&f, "SELECT plain()").is_empty());
        assert_eq!(
            reread(&f, "SELECT * FROM public.tv JOIN tv2 USING (x)"),
            ["search_path"]
        );
        assert_eq!(
            reread(&f, "SELECT dyn()"),
            ["*", "role", "session_authorization"]
        );
        assert_eq!(
            reread(&f, "DO $$BEGIN PERFORM set_tenant('a'); END$$"),
            ["search_path"]
        );
        assert!(f.mentioned(b"select SET_TENANT(1)"));
        assert!(f.mentioned(b"insert into AUDIT values (1)"));
        assert!(!f.mentioned(b"select plain()"));
        assert!(f.mentioned(b"select * from \"audit\""));
        assert!(!FunctionSettings::from_rows(&[]).mentioned(b"select 1"));
    }

    #[test]
    fn a_deep_chain_of_callers_and_a_cycle_are_followed() {
        let mut rows = vec![row(&[
            "f",
            "c0",
            "plpgsql",
            "BEGIN SET search_path = t; END",
        ])];
        for i in 1..2000 {
            let body = format!("BEGIN PERFORM c{}(); END", i - 1);
            rows.push(row(&["f", &format!("c{i}"), "plpgsql", &body]));
        }
        // A cycle that sets nothing, and one that calls into the chain.
        rows.push(row(&[
            "f",
            "x",
            "plpgsql",
            "BEGIN UPDATE t SET v = 1; PERFORM y(); END",
        ]));
        rows.push(row(&["f", "y", "plpgsql", "BEGIN PERFORM x(); END"]));
        rows.push(row(&["f", "p", "plpgsql", "BEGIN PERFORM q(); END"]));
        rows.push(row(&[
            "f",
            "q",
            "plpgsql",
            "BEGIN PERFORM p(); PERFORM c1999(); END",
        ]));
        let f = FunctionSettings::from_rows(&rows);
        assert_eq!(reread(&f, "SELECT c1999()"), ["search_path"]);
        assert_eq!(reread(&f, "SELECT p()"), ["search_path"]);
        assert!(reread(&f, "SELECT x()").is_empty());
    }

    #[test]
    fn creates_of_what_runs_functions() {
        for yes in [
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "create or replace view v as select 1",
            "BEGIN; CREATE TRIGGER t BEFORE INSERT ON x EXECUTE FUNCTION f(); COMMIT",
            "CREATE CONSTRAINT TRIGGER t AFTER INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()",
            "CREATE RECURSIVE VIEW v (n) AS SELECT 1",
            "CREATE POLICY p ON t USING (true)",
            "CREATE MATERIALIZED VIEW m AS SELECT 1",
            "CREATE AGGREGATE a (int) (SFUNC = f, STYPE = int)",
            "CREATE TABLE p_2 PARTITION OF p FOR VALUES FROM (10) TO (20)",
            "CREATE TABLE t (id int DEFAULT f())",
            "CREATE UNLOGGED TABLE t (id int CHECK (f(id)))",
            "CREATE TABLE t (id int REFERENCES u ON DELETE CASCADE)",
            "ALTER FUNCTION f() RENAME TO g",
            "alter procedure p() set schema s",
            "ALTER TABLE p ATTACH PARTITION p_3 FOR VALUES FROM (20) TO (30)",
            "ALTER TABLE t ALTER COLUMN id SET DEFAULT f()",
            "ALTER POLICY p ON t USING (f())",
        ] {
            assert!(creates_callers(yes), "{yes}");
        }
        for no in [
            "CREATE TABLE t (id int)",
            "CREATE INDEX ON t (id)",
            "CREATE TEMP VIEW v AS SELECT 1",
            "CREATE TEMPORARY TABLE trigger_log (id int CHECK (id > 0))",
            "SELECT 'create function'",
            "ALTER ROLE r SET search_path = x",
            "ALTER SYSTEM SET work_mem = '8MB'",
        ] {
            assert!(!creates_callers(no), "{no}");
        }
    }

    #[test]
    fn the_store_reads_once_until_stale_or_changed() {
        let store = Store::default();
        let now = Instant::now();
        let read = |store: &Store, at: Instant| match store.get("db", at) {
            Access::Read {
                ticket,
                done,
                last,
                failing,
            } => Some((ticket, done, last, failing)),
            _ => None,
        };
        let (ticket, done, last, failing) = read(&store, now).expect("the first use reads");
        assert!(last.is_none() && !failing);
        // Others meanwhile wait for it.
        let Access::Wait { done: waiting, .. } = store.get("db", now) else {
            panic!("a second read");
        };
        let read_now = store.set("db", ticket, Some(FunctionSettings::default()), now);
        assert!(read_now.is_some() && store.current("db", read_now.as_ref()));
        drop(done);
        assert!(waiting.has_changed().is_err(), "the waiters are told");
        assert!(matches!(store.get("db", now), Access::Use(Some(_))));
        // Stale by age: one session reads, the others wait or use the last read.
        let (ticket, done, last, _) = read(&store, now + MAX_AGE).unwrap();
        assert!(last.is_some());
        assert!(matches!(
            store.get("db", now + MAX_AGE),
            Access::Wait { last: Some(_), .. }
        ));
        // A read given up (its session went): the next session reads.
        drop(done);
        let (_, _, _, _) = read(&store, now + MAX_AGE).expect("read again");
        // A failed read keeps the last one until it is tried again, and no session
        // waits for the read after it.
        store.set("db", ticket, None, now + MAX_AGE);
        assert!(matches!(
            store.get("db", now + MAX_AGE),
            Access::Use(Some(_))
        ));
        let later = now + MAX_AGE + RETRY;
        let (ticket, _done, _, failing) = read(&store, later).unwrap();
        assert!(failing);
        assert!(matches!(
            store.get("db", later),
            Access::Wait { failing: true, .. }
        ));
        let read_now = store.set("db", ticket, Some(FunctionSettings::default()), later);
        // A schema change: the last read is no longer current, and is read again;
        // another database's stays.
        let (other, _done, _, _) = match store.get("other", later) {
            Access::Read {
                ticket,
                done,
                last,
                failing,
            } => (ticket, done, last, failing),
            _ => panic!("other reads"),
        };
        let other_read = store.set("other", other, Some(FunctionSettings::default()), later);
        store.changed("db");
        assert!(!store.current("db", read_now.as_ref()));
        assert!(store.current("other", other_read.as_ref()));
        let (newer, _done, _, _) = read(&store, later).unwrap();
        store.set("db", newer, Some(FunctionSettings::default()), later);
        // A read begun before the change, ending after: dropped.
        let kept = store.set("db", ticket, Some(FunctionSettings::default()), later);
        assert!(store.current("db", kept.as_ref()));
    }
}
