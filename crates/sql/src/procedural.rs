//! What procedural code — a DO block's body, a function's source — may do to the
//! session's settings, read from its text: the settings it names when it sets them
//! (`SET search_path …`, `set_config('app.tenant', …, false)`, `EXECUTE format('SET
//! search_path = %I', …)`), or "any" when the name is built at run time. And the words
//! it names, to follow the functions it calls.

use std::collections::BTreeSet;

use crate::lexer::{Lexer, TokenKind};

/// The settings procedural code may change for the session (not those SET LOCAL or
/// `set_config(…, true)` change, undone at the transaction's end).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsSet {
    /// A setting named at run time (or in a way not read here) may change: any may.
    pub any: bool,
    /// The settings named, lower-cased as PostgreSQL folds them (`search_path`,
    /// `app.tenant`; `role` and `session_authorization` for SET ROLE and SET SESSION
    /// AUTHORIZATION).
    pub names: BTreeSet<String>,
}

impl SettingsSet {
    /// Notes [`SESSION_STATE`] when code `lower` may leave state on the session.
    fn note_session_state(&mut self, lower: &str) {
        if leaves_session_state(lower) {
            self.names.insert(SESSION_STATE.to_string());
        }
    }

    /// Nothing is set.
    pub fn is_empty(&self) -> bool {
        !self.any && self.names.is_empty()
    }

    /// Adds what `other` sets; whether that changed anything.
    pub fn merge(&mut self, other: &SettingsSet) -> bool {
        let mut changed = other.any && !self.any;
        self.any |= other.any;
        for name in &other.names {
            changed |= self.names.insert(name.clone());
        }
        changed
    }

    /// The names to read back: [`crate::ANY_SETTING`] for "any", then the names.
    pub fn reread(&self) -> Vec<String> {
        let any = self.any.then(|| crate::ANY_SETTING.to_string());
        any.into_iter().chain(self.names.iter().cloned()).collect()
    }

    /// With "any", the role and the session authorization too, which pg_settings does
    /// not list (a name built at run time may be either).
    fn with_identity(mut self) -> SettingsSet {
        if self.any {
            self.name("role");
            self.name("session_authorization");
        }
        self
    }

    fn name(&mut self, name: &str) {
        self.names.insert(name.to_string());
    }
}

/// The settings `SET`, `RESET`, `SET ROLE`… in `text` (lower-cased, beginning with
/// `set` or `reset`) may change; `None` when it changes none for the session (SET
/// LOCAL, SET CONSTRAINTS, SET TRANSACTION, SET SEED).
fn set_statement(text: &str) -> Option<SettingsSet> {
    let mut words = text
        .split(|c: char| c.is_ascii_whitespace() || matches!(c, '=' | ';'))
        .filter(|w| !w.is_empty());
    let mut set = SettingsSet::default();
    let verb = words.next()?;
    let (mut first, mut second) = (words.next(), words.next());
    // SET SESSION name is SET name (TIME ZONE, SCHEMA… too).
    if verb == "set"
        && first == Some("session")
        && !matches!(second, Some("characteristics" | "authorization"))
    {
        (first, second) = (second, words.next());
    }
    let name = match (verb, first) {
        (_, None) => None,
        ("set", Some("local" | "constraints" | "transaction" | "seed")) => return None,
        (_, Some("session")) => match second {
            Some("characteristics") => {
                for name in [
                    "default_transaction_isolation",
                    "default_transaction_read_only",
                    "default_transaction_deferrable",
                ] {
                    set.name(name);
                }
                return Some(set);
            }
            Some("authorization") => {
                set.name("session_authorization");
                set.name("role");
                return Some(set);
            }
            // (RESET SESSION AUTHORIZATION only.)
            _ => None,
        },
        ("reset", Some("all")) => None,
        (_, Some("time")) => Some("timezone"),
        ("set", Some("names")) => Some("client_encoding"),
        ("set", Some("schema")) => Some("search_path"),
        ("set", Some("xml")) => Some("xmloption"),
        (_, Some(name)) => Some(name),
    };
    // A name that is not plainly one (quoted, a `%I` format() fills in, cut off by a
    // `||`): any.
    let plain = |name: &str| {
        !name.is_empty()
            && name.split('.').all(|part| {
                part.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$'
                    })
            })
    };
    match name {
        Some(name) if plain(name) => set.name(name),
        _ => set.any = true,
    }
    Some(set)
}

/// The inside of a string or dollar-quoted token's text (quotes doubled inside a
/// string left as they are).
fn string_inside(token: &str) -> &str {
    if let Some(rest) = token.strip_prefix('$') {
        // `$tag$…$tag$`
        let tag_len = rest.find('$').map_or(0, |i| i + 2);
        let inner_end = token.len().saturating_sub(tag_len).max(tag_len);
        return token.get(tag_len..inner_end).unwrap_or("");
    }
    let start = token.find('\'').map_or(token.len(), |i| i + 1);
    let end = if token.len() > start && token.ends_with('\'') {
        token.len() - 1
    } else {
        token.len()
    };
    token.get(start..end).unwrap_or("")
}

/// What procedural code `body` (PL/pgSQL, SQL) may change of the session's settings:
/// - a SET or RESET that begins one of its statements (after `;`, BEGIN, THEN, ELSE
///   or LOOP), not SET LOCAL, SET CONSTRAINTS or SET TRANSACTION, nor an UPDATE's or an
///   ALTER's SET;
/// - what a string that EXECUTE runs, `format()` or `concat()` fills in, or is
///   assigned to a variable (`:=`, `=`) sets, read as code (its name when written in
///   the string, else any); the settings a SET beginning any other string names;
/// - `set_config(name, value, is_local)` unless `is_local` is the literal `true`: the
///   name when a string literal, else any;
/// - `pg_settings` named (an UPDATE of it sets settings), or `set_config` named in
///   any other way: any.
///
/// With "any", `role` and `session_authorization` are added (pg_settings lists
/// neither). Comments are left out.
pub fn settings_set_by(body: &str) -> SettingsSet {
    let lower = body.to_ascii_lowercase();
    let mut set = scan(&lower, 0).with_identity();
    set.note_session_state(&lower);
    set
}

/// The name under which a [`SettingsSet`] says its code may leave state on the
/// session other than settings (see [`leaves_session_state`]): no setting's (it has
/// spaces).
pub const SESSION_STATE: &str = "pgopt session state";

/// Whether code (lower-cased; its strings, which `EXECUTE` may run, included) may
/// leave state on the session that outlives the transaction, other than settings: a
/// temporary table, view, sequence or function (`TEMP`, `TEMPORARY`, `pg_temp`), a
/// session-level advisory lock, LISTEN, a cursor `WITH HOLD`, an SQL `PREPARE`, a
/// named dblink connection — or any of them through dynamic SQL (`EXECUTE q`). By its
/// words alone: a false alarm only costs a check.
pub fn leaves_session_state(lower: &str) -> bool {
    const WORDS: [&str; 12] = [
        // Dynamic SQL: what it runs is not in the text.
        "execute",
        "temp",
        "temporary",
        "pg_temp",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "listen",
        "hold",
        "prepare",
        "dblink_connect",
    ];
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
    WORDS.iter().any(|word| {
        lower.match_indices(word).any(|(at, _)| {
            let after = lower[at + word.len()..].chars().next();
            // (`pg_temp_3`, a backend's own temporary schema, too.)
            let after_ok = !ident(after)
                || *word == "pg_temp" && lower[at + word.len()..].starts_with('_')
                || *word == "dblink_connect";
            !ident(lower[..at].chars().next_back()) && after_ok
        })
    })
}

/// How deep strings inside strings are read (`EXECUTE 'EXECUTE ''SET …'''`).
const MAX_DEPTH: usize = 4;

/// Words that may come before an `=` that compares rather than assigns.
const NOT_ASSIGNED: &[&str] = &[
    "if", "elsif", "while", "when", "until", "return", "case", "and", "or", "not", "perform",
    "select", "where", "exit", "continue", "assert", "raise",
];

/// [`settings_set_by`] of lower-cased code, `depth` strings in.
fn scan(lower: &str, depth: usize) -> SettingsSet {
    let tokens = crate::lexer::significant(lower);
    let text = |i: usize| &lower[tokens[i].start..tokens[i].end];
    let before = |i: usize, n: usize| if i < n { ";" } else { text(i - n) };
    let boundary =
        |word: &str| matches!(word, ";" | "begin" | "then" | "else" | "loop" | "declare");
    let mut set = SettingsSet::default();
    for (i, token) in tokens.iter().enumerate() {
        match token.kind {
            TokenKind::Word => match text(i) {
                "set" | "reset" if boundary(before(i, 1)) => {
                    // The statement's text, up to its `;`.
                    let end = tokens[i..]
                        .iter()
                        .find(|t| t.kind == TokenKind::Punct && &lower[t.start..t.end] == ";")
                        .map_or(lower.len(), |t| t.start);
                    if let Some(s) = set_statement(&lower[token.start..end]) {
                        set.merge(&s);
                    }
                }
                "set_config" => match set_config_call(&tokens, lower, i) {
                    Some(Some(name)) => set.name(&name),
                    Some(None) => {}
                    None => set.any = true,
                },
                "pg_settings" => set.any = true,
                _ => {}
            },
            TokenKind::String | TokenKind::DollarString if depth < MAX_DEPTH => {
                // A string is SQL that may run: what it sets is read as code. Where it
                // plainly runs (EXECUTE, format() or concat() fills it in, it is
                // assigned: `:=`, or `=` after a variable's name) all of it counts;
                // elsewhere only the settings a SET it begins with names (a message
                // saying 'reset' is no RESET; a string after `||` begins nothing).
                // (A quote doubled in a string is one in the code it holds.)
                let inside = match token.kind {
                    TokenKind::String => string_inside(text(i)).replace("''", "'"),
                    _ => string_inside(text(i)).to_string(),
                };
                let inner = scan(&inside, depth + 1);
                let assigned = before(i, 1) == "="
                    && (before(i, 2) == ":"
                        || i >= 2
                            && tokens[i - 2].kind == TokenKind::Word
                            && boundary(before(i, 3))
                            && !NOT_ASSIGNED.contains(&text(i - 2)));
                let runs = match before(i, 1) {
                    "execute" => true,
                    "(" => matches!(before(i, 2), "format" | "concat"),
                    _ => assigned,
                };
                if runs {
                    set.merge(&inner);
                } else if inside.trim_start().starts_with("set ") && before(i, 1) != "|" {
                    set.names.extend(inner.names);
                }
            }
            _ => {}
        }
    }
    set
}

/// The call of `set_config` at token `i`: `Some(Some(name))` when its name is a string
/// literal and `is_local` is not the literal `true`, `Some(None)` when it is (a local
/// setting), `None` when the name can't be read (or it is not a call).
fn set_config_call(
    tokens: &[crate::lexer::Token],
    lower: &str,
    i: usize,
) -> Option<Option<String>> {
    let text = |t: &crate::lexer::Token| &lower[t.start..t.end];
    if tokens.get(i + 1).map(text) != Some("(") {
        return None;
    }
    // The arguments, split at the commas outside parentheses.
    let mut args: Vec<Vec<&crate::lexer::Token>> = vec![Vec::new()];
    let mut depth = 0;
    for t in &tokens[i + 2..] {
        match text(t) {
            "(" => depth += 1,
            ")" if depth == 0 => break,
            ")" => depth -= 1,
            "," if depth == 0 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if let Some(arg) = args.last_mut() {
            arg.push(t);
        }
    }
    let [name, _, is_local] = args.as_slice() else {
        return None;
    };
    if is_local.len() == 1 && text(is_local[0]) == "true" {
        return Some(None);
    }
    match name.as_slice() {
        [t] if t.kind == TokenKind::String && text(t).starts_with('\'') => {
            let name = string_inside(text(t));
            set_statement(&format!("set {name}"))
                .filter(|s| !s.any)
                .map(|_| Some(name.to_string()))
        }
        _ => None,
    }
}

/// What code in another language (PL/Python, PL/Perl…) may change of the session's
/// settings, read roughly: a string that begins with SET or RESET (`plpy.execute("SET
/// search_path TO a")`), or `set_config` or `pg_settings` named (any).
pub fn settings_set_by_other(body: &str) -> SettingsSet {
    let lower = body.to_ascii_lowercase();
    let mut set = SettingsSet::default();
    set.note_session_state(&lower);
    if lower.contains("set_config") || lower.contains("pg_settings") {
        set.any = true;
    }
    for phrase in lower.split(['\'', '"', '`']).skip(1) {
        let phrase = phrase.trim_start();
        let starts = |word: &str| {
            phrase
                .strip_prefix(word)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_whitespace()))
        };
        if starts("set") || starts("reset") {
            if let Some(s) = set_statement(phrase) {
                set.merge(&s);
            }
        }
    }
    set.with_identity()
}

/// The words `body` names — identifiers, quoted or not, and the words of its strings,
/// all lower-cased (ASCII letters, as PostgreSQL folds names) — to find the functions
/// it calls (`PERFORM set_tenant(…)`, `EXECUTE 'SELECT set_tenant(…)'`), a superset.
pub fn body_words(body: &str) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    for token in Lexer::new(body) {
        let text = &body[token.start..token.end];
        match token.kind {
            TokenKind::Word | TokenKind::String | TokenKind::DollarString => {
                let parts = text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'));
                words.extend(parts.filter(|w| !w.is_empty()).map(str::to_ascii_lowercase));
            }
            TokenKind::QuotedIdent => {
                let inner = text.trim_start_matches(['u', 'U', '&']).trim_matches('"');
                words.insert(inner.replace("\"\"", "\"").to_ascii_lowercase());
            }
            _ => {}
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings a body sets (not whether it may leave other state).
    fn names(body: &str) -> (bool, Vec<String>) {
        let set = settings_set_by(body);
        let names = set.names.into_iter().filter(|n| n != SESSION_STATE);
        (set.any, names.collect())
    }

    #[test]
    fn code_that_may_leave_session_state_is_found_by_its_words() {
        for body in [
            "BEGIN CREATE TEMP TABLE t (x int); END",
            "BEGIN CREATE TEMPORARY VIEW v AS SELECT 1; END",
            "BEGIN CREATE TABLE pg_temp.t (x int); END",
            "BEGIN CREATE TABLE pg_temp_3.t (x int); END",
            "BEGIN PERFORM pg_advisory_lock(1); END",
            "SELECT pg_try_advisory_lock_shared(1)",
            "BEGIN LISTEN jobs; END",
            "BEGIN EXECUTE 'DECLARE c CURSOR WITH HOLD FOR SELECT 1'; END",
            "BEGIN EXECUTE q; END",
            "PERFORM dblink_connect('c', 'dbname=x')",
        ] {
            assert!(
                settings_set_by(body).names.contains(SESSION_STATE),
                "{body}"
            );
        }
        for body in [
            "BEGIN PERFORM pg_advisory_xact_lock(1); END",
            "SELECT temperature, holder, listener FROM readings",
            "BEGIN UPDATE t SET x = 1; END",
        ] {
            assert!(
                !settings_set_by(body).names.contains(SESSION_STATE),
                "{body}"
            );
        }
    }

    #[test]
    fn named_settings_are_read_from_the_code() {
        let named = |body: &str, want: &[&str]| {
            assert_eq!(
                names(body),
                (false, want.iter().map(|s| s.to_string()).collect()),
                "{body}"
            );
        };
        named("BEGIN SET search_path TO t; END", &["search_path"]);
        named("BEGIN SET search_path=t; END", &["search_path"]);
        named("BEGIN SET SESSION app.tenant = '5'; END", &["app.tenant"]);
        named("BEGIN SET SESSION SCHEMA 'tenant_1'; END", &["search_path"]);
        named("BEGIN SET SESSION TIME ZONE 'UTC'; END", &["timezone"]);
        named("BEGIN SET SESSION XML OPTION DOCUMENT; END", &["xmloption"]);
        named("BEGIN IF x THEN RESET timezone; END IF; END", &["timezone"]);
        named("BEGIN SET TIME ZONE 'UTC'; END", &["timezone"]);
        named("BEGIN SET ROLE app_ro; END", &["role"]);
        named(
            "BEGIN SET SESSION AUTHORIZATION alice; END",
            &["role", "session_authorization"],
        );
        named(
            "BEGIN EXECUTE format('SET search_path = %I, public', t); END",
            &["search_path"],
        );
        named(
            "BEGIN EXECUTE 'SET search_path TO ' || quote_ident(t); END",
            &["search_path"],
        );
        named(
            "BEGIN q := 'RESET lock_timeout'; EXECUTE q; END",
            &["lock_timeout"],
        );
        named(
            "BEGIN PERFORM set_config('app.tenant', t::text, false); END",
            &["app.tenant"],
        );
        named(
            "SELECT pg_catalog.set_config('search_path', $1, false)",
            &["search_path"],
        );
        named("BEGIN PERFORM set_config('search_path', t, true); END", &[]);
        named(
            "BEGIN SET LOCAL lock_timeout = '1s'; SET CONSTRAINTS ALL DEFERRED; END",
            &[],
        );
        named("BEGIN UPDATE t SET v = 1; END", &[]);
        named("BEGIN ALTER TABLE t ALTER COLUMN v SET DEFAULT 1; END", &[]);
        named(
            "BEGIN IF status = 'reset' THEN RAISE NOTICE 'reset done'; END IF; END",
            &[],
        );
        named(
            "BEGIN EXECUTE 'UPDATE ' || quote_ident(t) || ' SET v = 1'; END",
            &[],
        );
        named("BEGIN -- set search_path\n PERFORM 1; END", &[]);
        named(
            "BEGIN EXECUTE 'SET search_path = a; SET app.tenant = ''1'''; END",
            &["app.tenant", "search_path"],
        );
        named(
            "DECLARE q text := 'SET work_mem = 1'; BEGIN EXECUTE q; END",
            &["work_mem"],
        );
        named("BEGIN q = 'RESET work_mem'; EXECUTE q; END", &["work_mem"]);
        named(
            "DECLARE q text = 'SET work_mem TO 1'; BEGIN EXECUTE q; END",
            &["work_mem"],
        );
        named("BEGIN IF q = 'reset' THEN PERFORM 1; END IF; END", &[]);
        named("BEGIN EXECUTE 'EXECUTE ''SET jit = off'''; END", &["jit"]);
        named(
            "BEGIN EXECUTE 'SELECT set_config(''search_path'', ''x'', false)'; END",
            &["search_path"],
        );
    }

    #[test]
    fn settings_named_at_run_time_are_any() {
        for body in [
            "BEGIN EXECUTE format('SET %I = %L', name, value); END",
            "BEGIN EXECUTE 'SET ' || quote_ident(name) || ' = 1'; END",
            "BEGIN PERFORM set_config(name, value, false); END",
            "BEGIN UPDATE pg_settings SET setting = 't' WHERE name = 'search_path'; END",
            "BEGIN RESET ALL; END",
            "BEGIN EXECUTE 'SELECT set_config(' || quote_literal(n) || ', ''x'', false)'; END",
            "BEGIN SET \"search_path\" TO t; END",
            "BEGIN EXECUTE concat('SET ', n, ' = 1'); END",
            "BEGIN q := 'SET ' || quote_ident(n) || ' = 1'; EXECUTE q; END",
        ] {
            assert!(names(body).0, "{body}");
        }
        // The role and the session authorization, which pg_settings does not list: read
        // back too.
        let (any, names) = names("BEGIN EXECUTE format('SET %I TO %L', n, v); END");
        assert!(any);
        assert_eq!(names, ["role", "session_authorization"]);
    }

    #[test]
    fn other_languages_are_read_roughly() {
        let set = settings_set_by_other("plpy.execute(\"SET search_path TO %s\" % t)\nx = set()");
        assert_eq!(
            (set.any, set.names.into_iter().collect::<Vec<_>>()),
            // (Its dynamic SQL may leave other state too.)
            (
                false,
                vec![SESSION_STATE.to_string(), "search_path".to_string()]
            )
        );
        assert!(settings_set_by_other("$dbh->do(q{SELECT set_config($n, $v, false)})").any);
        assert!(settings_set_by_other("return set([1, 2])").is_empty());
    }

    #[test]
    fn words_of_code_and_strings() {
        let words = body_words("BEGIN PERFORM App.Set_Tenant(t); EXECUTE 'SELECT other_fn()'; PERFORM \"Mixed\"(); END");
        for w in ["set_tenant", "app", "other_fn", "mixed", "perform"] {
            assert!(words.contains(w), "{w}: {words:?}");
        }
    }

    #[test]
    fn odd_bodies_never_panic() {
        for body in [
            "",
            "'",
            "$$",
            "$a$",
            "set",
            "set_config(",
            "set_config('x'",
            "é'é",
            "EXECUTE 'é",
        ] {
            let _ = settings_set_by(body);
            let _ = settings_set_by_other(body);
            let _ = body_words(body);
        }
    }
}
