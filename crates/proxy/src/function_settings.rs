//! Transaction mode: the functions (and procedures) whose run may change the session's
//! settings — `SET search_path` or `set_config('app.tenant', …, false)` in a body, or a
//! call of such a function — read from the database's catalog, and the relations whose
//! use runs one (a trigger, a view, a column default, a policy, a check constraint; a
//! view over such a relation, a parent of one).
//!
//! PostgreSQL reports only a few settings' changes (ParameterStatus); a `search_path`
//! a function sets would stay on the server connection for the next client, and out of
//! the caller's cache key. A statement that calls such a function has the settings it
//! may set read back after it (see `session_state::judge`), as a SET's are.
//!
//! The catalog is read on a connection of pgopt's own to the primary (so no client's
//! settings, nor a replica's lag, shape the read): a session's first checkout waits
//! for it; later reads, once per [`MAX_AGE`] per database and after a CREATE of a
//! function, procedure, trigger, view, rule or policy through pgopt, run in the
//! background while the last one stays in use.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use pgopt_sql::{Analysis, SettingsSet};

use crate::pool::{Pool, Room};

/// How long a read of the catalog is used; a function created without pgopt (or by
/// other DDL than CREATE) is seen within this time.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// How long after a failed read the next is tried.
const RETRY: Duration = Duration::from_secs(5);
/// How long the query may run, beyond the connect.
const QUERY_TIME: Duration = Duration::from_secs(10);

/// Functions (by name) whose source may set settings, and every function that names
/// one of them, transitively; the relations depending on any of them, and the views
/// and parents that reach those. Bodies written as SQL-standard `BEGIN ATOMIC` are
/// read as the names of the functions they call. (No backslash in it: its text means
/// the same whatever `standard_conforming_strings` says. What the rows mean: see
/// [`FunctionSettings::from_rows`].)
pub const QUERY: &str = "\
WITH RECURSIVE src AS ( \
  SELECT p.oid, p.proname, l.lanname, \
    CASE WHEN pg_catalog.to_jsonb(p) ->> 'prosqlbody' IS NOT NULL THEN \
      (SELECT pg_catalog.string_agg(q.proname, ' ') FROM pg_catalog.regexp_matches( \
          pg_catalog.to_jsonb(p) ->> 'prosqlbody', \
          ':(funcid|opfuncid|aggfnoid|winfnoid) ([0-9]+)', 'g') m \
        JOIN pg_catalog.pg_proc q ON q.oid = m[2]::pg_catalog.oid) \
    ELSE p.prosrc END AS body \
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
  WHERE p.oid >= 16384 AND l.lanname NOT IN ('c', 'internal')), \
cand AS ( \
  SELECT s.oid, s.proname FROM src s \
    WHERE s.body ~* '(set_config|pg_settings|(^|[^a-z0-9_$])(set|reset)([^a-z0-9_$]|$))' \
  UNION \
  SELECT s.oid, s.proname FROM src s JOIN cand c \
    ON pg_catalog.strpos(pg_catalog.lower(s.body), pg_catalog.lower(c.proname)) > 0), \
rels AS ( \
  SELECT DISTINCT r.oid, c.proname FROM pg_catalog.pg_depend d \
    JOIN cand c ON c.oid = d.refobjid \
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
      END \
    WHERE d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass), \
reach AS ( \
  SELECT DISTINCT r.oid, r.oid AS root FROM rels r \
  UNION \
  SELECT x.next, reach.root FROM reach CROSS JOIN LATERAL ( \
    SELECT i.inhparent AS next FROM pg_catalog.pg_inherits i WHERE i.inhrelid = reach.oid \
    UNION ALL \
    SELECT w.ev_class FROM pg_catalog.pg_depend d \
      JOIN pg_catalog.pg_rewrite w ON w.oid = d.objid \
      WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
      AND d.refobjid = reach.oid AND w.ev_class <> reach.oid) x) \
SELECT 'f', s.proname, s.lanname, s.body FROM src s WHERE s.oid IN (SELECT c.oid FROM cand c) \
UNION ALL \
SELECT 'r', r.relname, c.proname, '' FROM rels c JOIN pg_catalog.pg_class r ON r.oid = c.oid \
UNION ALL \
SELECT DISTINCT 'e', a.relname, b.relname, '' FROM reach \
  JOIN pg_catalog.pg_class a ON a.oid = reach.oid \
  JOIN pg_catalog.pg_class b ON b.oid = reach.root \
  WHERE reach.oid <> reach.root";

/// How long a [`read`] through `pool` may take: a connect (each server of a host list
/// in turn), then [`QUERY_TIME`].
pub fn read_budget(pool: &Pool) -> Duration {
    let connect = pool.limits().connect_timeout;
    pool.target.connect_budget(connect) + connect + QUERY_TIME
}

/// Reads `database`'s [`QUERY`] on a connection of pgopt's own through `pool` (the
/// primary's), within the pool's connect budget and [`QUERY_TIME`]; `None` (logged)
/// when that fails.
pub async fn read(pool: &Pool, database: &str) -> Option<FunctionSettings> {
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
        conn.simple_query(QUERY, max_len).await
    };
    match tokio::time::timeout(budget, read).await {
        Ok(Ok(rows)) => Some(FunctionSettings::from_rows(&rows)),
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

/// Whether `sql` may CREATE something that runs a function: a function or procedure,
/// a trigger, a view, a rule or a policy (or replaces one); not a temporary one.
pub fn creates_callers(sql: &str) -> bool {
    sql.split(';').any(|statement| {
        let lower = statement.trim_start().to_ascii_lowercase();
        let mut words = lower.split_ascii_whitespace();
        if words.next() != Some("create") {
            return false;
        }
        words
            .take(4)
            .take_while(|w| !matches!(*w, "temp" | "temporary"))
            .any(|w| {
                matches!(
                    w,
                    "function" | "procedure" | "trigger" | "view" | "rule" | "policy" | "replace"
                )
            })
    })
}

/// One database's functions and relations whose use may change settings.
#[derive(Debug, Default)]
pub struct FunctionSettings {
    /// By name, lower-cased (overloads and schemas merged).
    functions: HashMap<String, SettingsSet>,
    /// By name, lower-cased.
    relations: HashMap<String, SettingsSet>,
    /// Both kinds of name, for [`FunctionSettings::mentioned`] (`None` when there
    /// are none).
    words: Option<aho_corasick::AhoCorasick>,
    /// What was found, hashed: two reads that found the same share it.
    pub signature: u64,
    /// When read, and the store's generation then.
    read_at: Option<Instant>,
    generation: u64,
}

impl FunctionSettings {
    /// From [`QUERY`]'s rows: `('f', name, language, body)` for each candidate function
    /// (one whose body may set a setting, or names a candidate), `('r', relation,
    /// function, '')` for each relation a candidate is used by, `('e', relation, other,
    /// '')` for each view over such a relation (or over such a view) and each parent of
    /// one. A candidate is kept when its body sets a setting or names a kept function
    /// (followed to a fixed point).
    pub fn from_rows(rows: &[Vec<Option<String>>]) -> FunctionSettings {
        let mut sets: HashMap<String, SettingsSet> = HashMap::new();
        let mut calls: Vec<(String, BTreeSet<String>)> = Vec::new();
        let mut uses: Vec<(String, String)> = Vec::new();
        let mut reaches: Vec<(String, String)> = Vec::new();
        for row in rows {
            let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            match field(0).as_str() {
                "f" => {
                    let (name, language, body) =
                        (field(1).to_ascii_lowercase(), field(2), field(3));
                    let set = match language.as_str() {
                        "plpgsql" | "sql" => pgopt_sql::settings_set_by(&body),
                        _ => pgopt_sql::settings_set_by_other(&body),
                    };
                    sets.entry(name.clone()).or_default().merge(&set);
                    calls.push((name, pgopt_sql::body_words(&body)));
                }
                "r" => uses.push((field(1).to_ascii_lowercase(), field(2).to_ascii_lowercase())),
                "e" => reaches.push((field(1).to_ascii_lowercase(), field(2).to_ascii_lowercase())),
                _ => {}
            }
        }
        // Callers take on what their callees may set.
        loop {
            let mut changed = false;
            for (name, words) in &calls {
                let mut gained = SettingsSet::default();
                for word in words.iter().filter(|w| *w != name) {
                    if let Some(set) = sets.get(word) {
                        gained.merge(set);
                    }
                }
                if !gained.is_empty() {
                    changed |= sets.entry(name.clone()).or_default().merge(&gained);
                }
            }
            if !changed {
                break;
            }
        }
        sets.retain(|_, set| !set.is_empty());
        let mut relations: HashMap<String, SettingsSet> = HashMap::new();
        for (relation, function) in uses {
            if let Some(set) = sets.get(&function) {
                relations.entry(relation).or_default().merge(set);
            }
        }
        for (relation, root) in reaches {
            if let Some(set) = relations.get(&root).cloned() {
                relations.entry(relation).or_default().merge(&set);
            }
        }
        let names: Vec<&String> = sets.keys().chain(relations.keys()).collect();
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
            for map in [&sets, &relations] {
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
            functions: sets,
            relations,
            words,
            signature,
            read_at: None,
            generation: 0,
        }
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
    pub fn reread(&self, analysis: &Analysis, sql: &str) -> Vec<String> {
        if self.words.is_none() {
            return Vec::new();
        }
        let last = |name: &str| name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
        let mut set = SettingsSet::default();
        for function in &analysis.functions {
            if let Some(s) = self.functions.get(&last(function)) {
                set.merge(s);
            }
        }
        for relation in analysis.tables_read.iter().chain(&analysis.tables_written) {
            if let Some(s) = self.relations.get(&last(relation)) {
                set.merge(s);
            }
        }
        if crate::session_state::statement_starts_with(sql.as_bytes(), b"do") {
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
        self.generation == generation
            && self
                .read_at
                .is_some_and(|at| now.saturating_duration_since(at) < MAX_AGE)
    }
}

enum State {
    Ready(Arc<FunctionSettings>),
    /// A read under way since then, the last good one meanwhile; `done` changes (its
    /// sender is dropped) when the read ends, or is given up.
    Loading {
        since: Instant,
        last: Option<Arc<FunctionSettings>>,
        done: watch::Receiver<()>,
    },
    /// The last read failed then: the last good one until it is tried again.
    Failed(Instant, Option<Arc<FunctionSettings>>),
}

/// What a session is to do for a database's [`FunctionSettings`] (see [`Store::get`]).
pub enum Access {
    /// Use this one: fresh, or the last good one while a failed read waits to be tried
    /// again (`None`: none yet).
    Use(Option<Arc<FunctionSettings>>),
    /// Read the catalog (then [`Store::set`] with `ticket`, the generation the read
    /// began in, and drop `done`: sessions waiting for it look again); `last` meanwhile.
    Read {
        ticket: u64,
        done: watch::Sender<()>,
        last: Option<Arc<FunctionSettings>>,
    },
    /// Another session reads it: wait for `done` to change when `last` won't do.
    Wait {
        done: watch::Receiver<()>,
        last: Option<Arc<FunctionSettings>>,
    },
}

/// Every database's [`FunctionSettings`], shared by the sessions.
#[derive(Default)]
pub struct Store {
    databases: Mutex<HashMap<String, State>>,
    /// Moves on when a schema change may have changed what a read found.
    generation: AtomicU64,
}

impl Store {
    /// The generation now (see [`FunctionSettings::fresh`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// A schema change (a CREATE through pgopt committed): every database's is read
    /// again at its next use, and no session uses one read before.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Relaxed);
    }

    /// Whether `f` was read in the current generation (else a schema change since
    /// may have changed what it would find).
    pub fn current(&self, f: Option<&Arc<FunctionSettings>>) -> bool {
        f.is_some_and(|f| f.generation == self.generation())
    }

    /// What to do for `database` at `now`.
    pub fn get(&self, database: &str, now: Instant) -> Access {
        let generation = self.generation();
        let mut map = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        let last = match map.remove(database) {
            Some(State::Ready(f)) if f.fresh(now, generation) => {
                map.insert(database.to_string(), State::Ready(f.clone()));
                return Access::Use(Some(f));
            }
            // (A read given up — its session went — is no read under way.)
            Some(State::Loading { since, last, done })
                if now.saturating_duration_since(since) < MAX_AGE && done.has_changed().is_ok() =>
            {
                let wait = Access::Wait {
                    done: done.clone(),
                    last: last.clone(),
                };
                map.insert(database.to_string(), State::Loading { since, last, done });
                return wait;
            }
            Some(State::Failed(at, last)) if now.saturating_duration_since(at) < RETRY => {
                map.insert(database.to_string(), State::Failed(at, last.clone()));
                return Access::Use(last);
            }
            Some(State::Ready(f)) => Some(f),
            Some(State::Loading { last, .. } | State::Failed(_, last)) => last,
            None => None,
        };
        let (sender, receiver) = watch::channel(());
        map.insert(
            database.to_string(),
            State::Loading {
                since: now,
                last: last.clone(),
                done: receiver,
            },
        );
        Access::Read {
            ticket: generation,
            done: sender,
            last,
        }
    }

    /// The outcome of a read with `ticket` (see [`Store::get`]): what to use now.
    pub fn set(
        &self,
        database: &str,
        ticket: u64,
        read: Option<FunctionSettings>,
        now: Instant,
    ) -> Option<Arc<FunctionSettings>> {
        let mut map = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        let last = match map.remove(database) {
            Some(State::Ready(f)) => Some(f),
            Some(State::Loading { last, .. } | State::Failed(_, last)) => last,
            None => None,
        };
        let state = match read {
            Some(mut f) => {
                f.read_at = Some(now);
                f.generation = ticket;
                State::Ready(Arc::new(f))
            }
            None => State::Failed(now, last),
        };
        let current = match &state {
            State::Ready(f) => Some(f.clone()),
            State::Loading { last, .. } | State::Failed(_, last) => last.clone(),
        };
        map.insert(database.to_string(), state);
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(parts: &[&str]) -> Vec<Option<String>> {
        parts.iter().map(|p| Some(p.to_string())).collect()
    }

    fn reread(f: &FunctionSettings, sql: &str) -> Vec<String> {
        f.reread(&pgopt_sql::analyze(sql).unwrap(), sql)
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
            row(&["f", "upd", "plpgsql", "BEGIN UPDATE t SET v = 'a'; END"]),
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
            row(&["r", "t", "trg", ""]),
            row(&["r", "tv", "outer_fn", ""]),
            row(&["r", "u", "upd", ""]),
        ]);
        assert_eq!(reread(&f, "SELECT set_tenant('a')"), ["search_path"]);
        assert_eq!(reread(&f, "SELECT app.OUTERMOST()"), ["search_path"]);
        assert_eq!(reread(&f, "CALL outer_fn()"), ["search_path"]);
        assert_eq!(
            reread(&f, "SELECT upd_caller(), upd()"),
            Vec::<String>::new()
        );
        assert_eq!(reread(&f, "INSERT INTO t VALUES (1)"), ["app.last"]);
        assert_eq!(
            reread(&f, "SELECT * FROM public.tv JOIN u USING (x)"),
            ["search_path"]
        );
        assert_eq!(reread(&f, "SELECT dyn()"), ["*"]);
        assert_eq!(
            reread(&f, "DO $$BEGIN PERFORM set_tenant('a'); END$$"),
            ["search_path"]
        );
        assert!(f.mentioned(b"select SET_TENANT(1)"));
        assert!(f.mentioned(b"insert into T values (1)"));
        assert!(!f.mentioned(b"select upd()"));
        assert!(f.mentioned(b"select * from \"t\""));
        assert!(!FunctionSettings::from_rows(&[]).mentioned(b"select 1"));
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
        ] {
            assert!(creates_callers(yes), "{yes}");
        }
        for no in [
            "CREATE TABLE t (id int)",
            "CREATE INDEX ON t (id)",
            "CREATE TEMP VIEW v AS SELECT 1",
            "CREATE TEMPORARY TABLE trigger_log (id int)",
            "SELECT 'create function'",
        ] {
            assert!(!creates_callers(no), "{no}");
        }
    }

    #[test]
    fn the_store_reads_once_until_stale_or_changed() {
        let store = Store::default();
        let now = Instant::now();
        let read = |store: &Store, at: Instant| match store.get("db", at) {
            Access::Read { ticket, done, last } => Some((ticket, done, last)),
            _ => None,
        };
        let (ticket, done, last) = read(&store, now).expect("the first use reads");
        assert!(last.is_none());
        // Others meanwhile wait for it.
        let Access::Wait { done: waiting, .. } = store.get("db", now) else {
            panic!("a second read");
        };
        let read_now = store.set("db", ticket, Some(FunctionSettings::default()), now);
        assert!(read_now.is_some() && store.current(read_now.as_ref()));
        drop(done);
        assert!(waiting.has_changed().is_err(), "the waiters are told");
        assert!(matches!(store.get("db", now), Access::Use(Some(_))));
        // Stale by age: one session reads, the others wait or use the last read.
        let (ticket, done, last) = read(&store, now + MAX_AGE).unwrap();
        assert!(last.is_some());
        assert!(matches!(
            store.get("db", now + MAX_AGE),
            Access::Wait { last: Some(_), .. }
        ));
        // A read given up (its session went): the next session reads.
        drop(done);
        let (_, _, _) = read(&store, now + MAX_AGE).expect("read again");
        // A failed read keeps the last one until it is tried again.
        store.set("db", ticket, None, now + MAX_AGE);
        assert!(matches!(
            store.get("db", now + MAX_AGE),
            Access::Use(Some(_))
        ));
        let later = now + MAX_AGE + RETRY;
        let (ticket, _done, _) = read(&store, later).unwrap();
        let read_now = store.set("db", ticket, Some(FunctionSettings::default()), later);
        // A schema change: the last read is no longer current, and is read again.
        store.changed();
        assert!(!store.current(read_now.as_ref()));
        assert!(read(&store, later).is_some());
    }
}
