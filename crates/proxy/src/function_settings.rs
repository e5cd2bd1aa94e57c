//! Transaction mode: the functions (and procedures) whose run may change the session's
//! settings — `SET search_path` or `set_config('app.tenant', …, false)` in a body, or a
//! call of such a function — read from the database's catalog, and the relations whose
//! use runs one (a trigger, a view, a column default, a policy, a check constraint).
//!
//! PostgreSQL reports only a few settings' changes (ParameterStatus); a `search_path`
//! a function sets would stay on the server connection for the next client, and out of
//! the caller's cache key. A statement that calls such a function has the settings it
//! may set read back after it (see `session_state::judge`), as a SET's are.
//!
//! The catalog is read on a server connection a client has just been lent, before its
//! first message goes out, once per [`MAX_AGE`] per database, and again after a CREATE
//! that went through pgopt has committed.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgopt_sql::{Analysis, SettingsSet};

/// How long a read of the catalog is used; a function created without pgopt (or by
/// other DDL than CREATE) is seen within this time.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// How long after a failed read the next is tried.
const RETRY: Duration = Duration::from_secs(5);

/// Functions (by name) whose source may set settings, and every function that names
/// one of them, transitively; the relations depending on any of them. Bodies written as
/// SQL-standard `BEGIN ATOMIC` are read as the names of the functions they call.
/// (What the rows mean: see [`FunctionSettings::from_rows`].)
pub const QUERY: &str = "\
WITH RECURSIVE src AS ( \
  SELECT p.oid, p.proname, l.lanname, \
    CASE WHEN pg_catalog.to_jsonb(p) ->> 'prosqlbody' IS NOT NULL THEN \
      (SELECT pg_catalog.string_agg(q.proname, ' ') FROM pg_catalog.regexp_matches( \
          pg_catalog.to_jsonb(p) ->> 'prosqlbody', ':funcid ([0-9]+)', 'g') m \
        JOIN pg_catalog.pg_proc q ON q.oid = m[1]::pg_catalog.oid) \
    ELSE p.prosrc END AS body \
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
  WHERE p.oid >= 16384 AND l.lanname NOT IN ('c', 'internal')), \
cand AS ( \
  SELECT s.oid, s.proname FROM src s \
    WHERE s.body ~* '(set_config|pg_settings|\\m(set|reset)\\M)' \
  UNION \
  SELECT s.oid, s.proname FROM src s JOIN cand c \
    ON pg_catalog.strpos(pg_catalog.lower(s.body), pg_catalog.lower(c.proname)) > 0) \
SELECT 'f', s.proname, s.lanname, s.body FROM src s WHERE s.oid IN (SELECT c.oid FROM cand c) \
UNION ALL \
SELECT DISTINCT 'r', r.relname, c.proname, '' FROM pg_catalog.pg_depend d \
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
  WHERE d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass";

/// One database's functions and relations whose use may change settings.
#[derive(Debug, Default)]
pub struct FunctionSettings {
    /// By name, lower-cased (overloads and schemas merged).
    functions: HashMap<String, SettingsSet>,
    /// By name, lower-cased.
    relations: HashMap<String, SettingsSet>,
    /// Both kinds of name, for [`FunctionSettings::mentioned`].
    words: Vec<memchr::memmem::Finder<'static>>,
    /// When read, and the store's generation then.
    read_at: Option<Instant>,
    generation: u64,
}

impl FunctionSettings {
    /// From [`QUERY`]'s rows: `('f', name, language, body)` for each candidate function
    /// (one whose body may set a setting, or names a candidate), `('r', relation,
    /// function, '')` for each relation a candidate is used by. A candidate is kept when
    /// its body sets a setting or names a kept function (followed to a fixed point).
    pub fn from_rows(rows: &[Vec<Option<String>>]) -> FunctionSettings {
        let mut sets: HashMap<String, SettingsSet> = HashMap::new();
        let mut calls: Vec<(String, BTreeSet<String>)> = Vec::new();
        let mut uses: Vec<(String, String)> = Vec::new();
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
        let words = sets
            .keys()
            .chain(relations.keys())
            .map(|name| memchr::memmem::Finder::new(name.as_bytes()).into_owned())
            .collect();
        FunctionSettings {
            functions: sets,
            relations,
            words,
            read_at: None,
            generation: 0,
        }
    }

    /// Whether `sql` may name one of the functions or relations (a cheap pass before
    /// a statement is analysed, as `session_state::may_affect_session` is).
    pub fn mentioned(&self, sql: &[u8]) -> bool {
        if self.words.is_empty() {
            return false;
        }
        let lower = sql.to_ascii_lowercase();
        let ident = |b: Option<&u8>| {
            b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b >= 0x80)
        };
        self.words.iter().any(|w| {
            w.find_iter(&lower).any(|at| {
                let end = at + w.needle().len();
                !ident(at.checked_sub(1).and_then(|i| lower.get(i))) && !ident(lower.get(end))
            })
        })
    }

    /// What a statement may set through the functions it calls and the relations it
    /// uses (a DO block: the functions its body names), as names to read back.
    pub fn reread(&self, analysis: &Analysis, sql: &str) -> Vec<String> {
        if self.words.is_empty() {
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
    /// A read under way (since then), or failed (then): the last good one meanwhile.
    Loading(Instant, Option<Arc<FunctionSettings>>),
    Failed(Instant, Option<Arc<FunctionSettings>>),
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
    /// again at its next use.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Relaxed);
    }

    /// What to use for `database` at `now`, and whether the caller is to read the
    /// catalog (then [`Store::set`] with the ticket, the generation it began in).
    pub fn get(
        &self,
        database: &str,
        now: Instant,
    ) -> (Option<Arc<FunctionSettings>>, Option<u64>) {
        let generation = self.generation();
        let mut map = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        let last = match map.remove(database) {
            Some(State::Ready(f)) if f.fresh(now, generation) => {
                map.insert(database.to_string(), State::Ready(f.clone()));
                return (Some(f), None);
            }
            Some(State::Loading(at, last)) if now.saturating_duration_since(at) < MAX_AGE => {
                map.insert(database.to_string(), State::Loading(at, last.clone()));
                return (last, None);
            }
            Some(State::Failed(at, last)) if now.saturating_duration_since(at) < RETRY => {
                map.insert(database.to_string(), State::Failed(at, last.clone()));
                return (last, None);
            }
            Some(State::Ready(f)) => Some(f),
            Some(State::Loading(_, last) | State::Failed(_, last)) => last,
            None => None,
        };
        map.insert(database.to_string(), State::Loading(now, last.clone()));
        (last, Some(generation))
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
            Some(State::Loading(_, last) | State::Failed(_, last)) => last,
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
            State::Loading(_, last) | State::Failed(_, last) => last.clone(),
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
    fn the_store_reads_once_until_stale_or_changed() {
        let store = Store::default();
        let now = Instant::now();
        let (none, ticket) = store.get("db", now);
        assert!(none.is_none());
        let ticket = ticket.expect("the first use reads");
        // Others meanwhile: nothing yet, no second read.
        assert_eq!(store.get("db", now).1, None);
        let read = store.set("db", ticket, Some(FunctionSettings::default()), now);
        assert!(read.is_some());
        assert!(matches!(store.get("db", now), (Some(_), None)));
        // Stale by age, and by a schema change.
        assert!(store.get("db", now + MAX_AGE).1.is_some());
        let ticket = store.get("db", now + MAX_AGE * 3).1.unwrap();
        store.set("db", ticket, None, now + MAX_AGE * 3);
        let (last, again) = store.get("db", now + MAX_AGE * 3);
        assert!(
            last.is_some() && again.is_none(),
            "a failed read keeps the last one"
        );
        let later = now + MAX_AGE * 3 + RETRY;
        let ticket = store.get("db", later).1.unwrap();
        store.set("db", ticket, Some(FunctionSettings::default()), later);
        store.changed();
        assert!(store.get("db", later).1.is_some());
    }
}
