//! Session state in transaction mode. A client's settings — its start-up parameters
//! (search_path, DateStyle, TimeZone, application_name, `options=-c …`), the SET
//! statements it runs and what its `set_config(…, false)` calls set (read back from
//! the server) — follow it onto whichever server connection it is lent: each server
//! connection remembers which settings pgopt applied to it, and on checkout the
//! difference is applied before the client's first message. State that cannot follow
//! a client (LISTEN, session advisory locks, temporary tables, SQL PREPARE, cursors
//! WITH HOLD, set_config naming its setting by a parameter or an expression) is
//! refused with an error that names the feature; a set_config naming it by a column
//! of pg_settings (pg_dump) has every setting the session set read back.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use pgopt_sql::{Analysis, SessionEffect, StatementKind};

/// How a setting is applied on a server connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Setting {
    /// A start-up parameter: `set_config(name, value, false)`.
    Value(String),
    /// The client's own `SET …` statement, replayed as it was written.
    Statement(String),
}

/// Settings that change no query's rows or their text: names, timeouts, what is
/// logged. (Not `client_min_messages`: a reply holds the notices it lets through, and a
/// hit replays them.) A query that reads one (`current_setting`, SHOW) depends
/// on the session and is never cached.
pub const RESULT_NEUTRAL: &[&str] = &[
    "application_name",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_timeout",
    "log_min_duration_statement",
    "log_statement",
    "log_min_messages",
    "log_min_error_statement",
];

/// Settings PostgreSQL reports (ParameterStatus) that shape results, whose server
/// defaults (postgresql.conf, ALTER SYSTEM, ALTER DATABASE or ROLE … SET) a client
/// that sets none reads: their values on the pool's server connections are part of
/// the cache's key (see [`Defaults`]), lower case.
pub const KEYED_DEFAULTS: [&str; 4] = [
    "timezone",
    "datestyle",
    "intervalstyle",
    "standard_conforming_strings",
];

/// Settings that shape results PostgreSQL does not report, whose server defaults a
/// client that sets none reads as well: with the cache on, a server connection's
/// values are read once it logs in (see [`Defaults::unreported_query`]) and their digest
/// is part of the cache's key. Without it, an `ALTER DATABASE … SET search_path` made
/// directly had the connections made after it served what those made before read.
pub const UNREPORTED_DEFAULTS: [&str; 18] = [
    "role",
    "search_path",
    "extra_float_digits",
    "bytea_output",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "default_text_search_config",
    "transform_null_equals",
    "xmlbinary",
    "xmloption",
    "row_security",
    "array_nulls",
    "timezone_abbreviations",
    "quote_all_identifiers",
    "client_min_messages",
    "escape_string_warning",
    "gin_fuzzy_search_limit",
];

/// A server connection's own values of [`KEYED_DEFAULTS`] (those it reported at
/// login, or since, when a reload changed one), the digest of its values of
/// [`UNREPORTED_DEFAULTS`] when they were read, and their hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    hash: u64,
    values: [String; 4],
    /// SHA-256 of the values of [`UNREPORTED_DEFAULTS`], its first half (all zero:
    /// not read).
    unreported: [u8; 16],
}

impl Defaults {
    /// Reads [`UNREPORTED_DEFAULTS`] on a server connection, in order, in one row,
    /// and after them `default_transaction_isolation` (not in the digest: it does
    /// not shape a statement's result, but a replica refuses SERIALIZABLE). In a
    /// READ COMMITTED block: a session SERIALIZABLE by default on a replica can't run
    /// a SELECT of its own.
    pub fn unreported_query() -> &'static str {
        static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        QUERY.get_or_init(|| {
            let calls: Vec<String> = UNREPORTED_DEFAULTS
                .iter()
                .chain(&["default_transaction_isolation"])
                .map(|name| format!("pg_catalog.current_setting('{name}', true)"))
                .collect();
            format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT {}; COMMIT",
                calls.join(", ")
            )
        })
    }

    /// The values among a login's ParameterStatus `params`.
    pub fn from_params(params: &[(String, String)]) -> Defaults {
        let mut defaults = Defaults::default();
        for (name, value) in params {
            defaults.set(name, value);
        }
        defaults
    }

    /// Takes `row`, the answer to [`Defaults::unreported_query`] (`None`: a setting
    /// this server does not have).
    pub fn set_unreported(&mut self, row: &[Option<String>]) {
        use sha2::Digest;
        let mut digest = sha2::Sha256::new();
        for (name, value) in UNREPORTED_DEFAULTS.iter().zip(row) {
            digest.update(name.as_bytes());
            match value {
                Some(value) => {
                    digest.update(b"=");
                    digest.update(value.as_bytes());
                }
                None => digest.update(b"-"),
            }
            digest.update(b"\0");
        }
        self.unreported.copy_from_slice(&digest.finalize()[..16]);
        self.rehash();
    }

    /// The digest of the values of [`UNREPORTED_DEFAULTS`] (all zero: not read).
    pub fn unreported(&self) -> &[u8; 16] {
        &self.unreported
    }

    /// Takes `value` as the default of `name`, if one of [`KEYED_DEFAULTS`]; whether
    /// that changed it.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        let Some(i) = KEYED_DEFAULTS
            .iter()
            .position(|k| k.eq_ignore_ascii_case(name))
        else {
            return false;
        };
        if self.values[i] == value {
            return false;
        }
        self.values[i] = value.to_string();
        self.rehash();
        true
    }

    fn rehash(&mut self) {
        let mut hasher = std::hash::DefaultHasher::new();
        self.values.hash(&mut hasher);
        self.unreported.hash(&mut hasher);
        self.hash = hasher.finish();
    }

    /// 0 when none is known.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Name and value of each.
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        KEYED_DEFAULTS
            .iter()
            .zip(&self.values)
            .map(|(n, v)| (*n, v.as_str()))
    }
}

/// The settings one client expects, by lower-case parameter name.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    startup: BTreeMap<String, Setting>,
    /// How PostgreSQL reported a start-up value once applied (`Asia/Tokyo` for
    /// `asia/tokyo`, `ISO, MDY` for `iso`): what a RESET back to it reports.
    shown: BTreeMap<String, String>,
    current: BTreeMap<String, Setting>,
    /// A hash of `current`; equal versions mean equal settings (0: none).
    version: u64,
}

/// What a server connection has had applied (its part of [`Settings`]).
#[derive(Debug, Clone, Default)]
pub struct Applied {
    map: BTreeMap<String, Setting>,
    version: u64,
    /// A query applying settings failed here: `map` may hold a value the server
    /// refused (it is only logged), so it is not trusted to apply values inside a
    /// transaction block (see [`Settings::syncs_without_a_query`]).
    pub refused: bool,
}

/// How `SET SESSION CHARACTERISTICS AS TRANSACTION …` is tracked (its statement, under
/// PostgreSQL's name for it, lower-cased), and the settings it sets. The relay then
/// reads those back, which takes its place (see `Relay::resync_settings`).
pub const CHARACTERISTICS: &str = "session characteristics";
pub const CHARACTERISTICS_SET: [&str; 3] = [
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_transaction_deferrable",
];

/// Settings whose value is a list of quoted items (PostgreSQL's GUC_LIST_QUOTE):
/// `SET name TO 'a, b'` would make it one item.
const LIST_QUOTE: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
];

/// The settings PostgreSQL's RESET ALL leaves alone (GUC_NO_RESET_ALL) that a
/// session keeps: the role and the session authorization (a change of which sets the
/// role to `none`). The three of the transaction itself last no longer than it.
const ROLE: &str = "role";
const AUTHORIZATION: &str = "session_authorization";
const NOT_RESET_BY_ALL: [&str; 2] = [ROLE, AUTHORIZATION];

/// Settings whose start-up value PostgreSQL takes at login but a SET can't apply
/// as it does: `temp_tablespaces` (a tablespace that does not exist is skipped from
/// a client's start-up, an error from a SET; the server then keeps its own value,
/// which uses no such tablespace either), and those of connection start only (a SET
/// gets 55P02; a pooled connection can't take them). A failure to apply one is no
/// reason to end the session: it is logged.
const UNCHECKED_AT_LOGIN: &[&str] = &[
    "temp_tablespaces",
    "log_connections",
    "log_disconnections",
    "ignore_system_indexes",
    "post_auth_delay",
    "jit_debugging_support",
    "jit_profiling_support",
];

/// Whether a statement [`Settings::sync`] sent applies a start-up value PostgreSQL
/// checks at login (see [`UNCHECKED_AT_LOGIN`]): its failure refuses the session. (A
/// RESET of what another client left is pgopt's own: not the client's value.)
pub fn checked_at_login(statement: &str) -> bool {
    if statement.starts_with("RESET ") {
        return false;
    }
    !UNCHECKED_AT_LOGIN.iter().any(|name| {
        // (`set_statement`'s two forms: the name quoted, or a literal.)
        statement
            .strip_prefix("SET \"")
            .and_then(|rest| rest.strip_prefix(name))
            .is_some_and(|rest| rest.starts_with("\" TO "))
            || statement
                .strip_prefix("SELECT pg_catalog.set_config('")
                .is_some_and(|rest| rest.starts_with(name) && rest[name.len()..].starts_with('\''))
    })
}

/// How a setting is applied: SET takes no snapshot (a sync inside a REPEATABLE READ
/// transaction, after a RESET, must not fix its snapshot early); a list whose items
/// are quoted (search_path…) would be one item to SET: set_config, which takes one,
/// but for `in_block`, where its items are SET one by one (see [`list_items`]; the
/// same list, though SHOW then spaces it as PostgreSQL writes a SET list).
fn set_statement(name: &str, setting: &Setting, in_block: bool) -> String {
    match setting {
        Setting::Value(v) if !LIST_QUOTE.contains(&name) => {
            format!("SET {} TO {}", quote_ident(name), quote_literal(v))
        }
        Setting::Value(v) if in_block && list_items(v).is_some() => {
            let items = list_items(v).unwrap_or_default();
            let items: Vec<String> = items.iter().map(|i| quote_literal(i)).collect();
            format!("SET {} TO {}", quote_ident(name), items.join(", "))
        }
        Setting::Value(v) => format!(
            "SELECT pg_catalog.set_config({}, {}, false)",
            quote_literal(name),
            quote_literal(v)
        ),
        Setting::Statement(s) => s.clone(),
    }
}

/// The items of a list setting's value as PostgreSQL reads them
/// (`SplitIdentifierString`): separated by commas, an unquoted one lower-cased, a
/// double-quoted one as it is (`""` a quote). Each, SET as a string, is quoted again
/// as an identifier where it needs it: the same list. `None` for an empty or
/// malformed one (set_config takes it as it is).
fn list_items(value: &str) -> Option<Vec<String>> {
    let mut items = Vec::new();
    let mut rest = value.trim_start();
    loop {
        let item;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') if quoted[i + 1..].starts_with('"') => {
                        out.push('"');
                        chars.next();
                    }
                    (i, '"') => break i + 1,
                    (_, c) => out.push(c),
                }
            };
            item = out;
            rest = &quoted[end..];
        } else {
            let end = rest
                .find(|c: char| c == ',' || c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            item = rest[..end].to_ascii_lowercase();
            rest = &rest[end..];
        }
        if item.is_empty() {
            return None;
        }
        items.push(item);
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(next) => rest = next.trim_start(),
            None if rest.is_empty() => return Some(items),
            None => return None,
        }
    }
}

/// The value a `SET [SESSION] name {TO | =} value` or `SET NAMES value` statement
/// gives: its first word after the name, unquoted ('' for one pgopt can't read).
fn statement_value(statement: &str) -> &str {
    statement_value_of(statement, &["client_encoding", "names"])
}

/// The value a `SET` of one of `keys` gives (`SET k TO 'v'`, `SET k = v`), or `""`.
fn statement_value_of<'a>(statement: &'a str, keys: &[&str]) -> &'a str {
    let lower = statement.to_ascii_lowercase();
    let Some(at) = keys
        .iter()
        .find_map(|key| lower.find(key).map(|i| i + key.len()))
    else {
        return "";
    };
    let rest = statement[at..].trim_start();
    let rest = match rest.get(..2) {
        Some(to) if to.eq_ignore_ascii_case("to") => &rest[2..],
        _ => rest.strip_prefix('=').unwrap_or(rest),
    }
    .trim_start();
    match rest.strip_prefix(['\'', '"']) {
        Some(quoted) => quoted.split(['\'', '"']).next().unwrap_or(""),
        None => rest
            .split(|c: char| c.is_whitespace() || c == ';')
            .next()
            .unwrap_or(""),
    }
}

/// Start-up parameters the proxy handles itself, never replayed.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

impl Settings {
    /// The names of the settings the client has (start-up values and SETs).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.current.keys().map(String::as_str)
    }

    /// What a client's text means beyond ASCII, for statement ids (see
    /// `statements::statement_id`): 0 for UTF8, else a hash of the name of its
    /// `client_encoding` (`default`: the server's, when the client set none). (Two
    /// spellings of one encoding only share less.)
    pub fn encoding_salt(&self, default: &str) -> u64 {
        let letters = self.encoding_name(default);
        if letters == "utf8" || letters == "unicode" {
            return 0;
        }
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&letters, &mut hasher);
        std::hash::Hasher::finish(&hasher) | 1
    }

    /// After `change`, the settings to read back from the server: when it set the
    /// client's encoding, those whose recorded text is beyond ASCII (written in the
    /// old encoding, a replay under the new one would change or refuse them).
    pub fn encoding_dependents(&self, change: &Change) -> Vec<String> {
        // (Not a RESET: the server goes back to its own defaults first, and the client's
        // start-up values are applied again after any read-back.)
        let encoding =
            matches!(change, Change::Set(name) if name.eq_ignore_ascii_case("client_encoding"));
        if !encoding {
            return Vec::new();
        }
        self.current
            .iter()
            .filter(|(name, setting)| {
                let (Setting::Value(text) | Setting::Statement(text)) = setting;
                *name != "client_encoding" && !text.is_ascii()
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The client's `client_encoding` (`default` when it set none), lower case, its
    /// letters and digits only: from a start-up value, or the value a `SET
    /// client_encoding …` or `SET NAMES …` statement gives.
    pub fn encoding_name(&self, default: &str) -> String {
        let written = match self.current.get("client_encoding") {
            None => default,
            Some(Setting::Value(v)) => v,
            Some(Setting::Statement(s)) => statement_value(s),
        };
        written
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    }

    /// The settings a client's StartupMessage asks for.
    pub fn from_startup(params: &[(String, String)]) -> Settings {
        let mut startup = BTreeMap::new();
        for (name, value) in params {
            let name = name.to_ascii_lowercase();
            if name == "options" {
                for (k, v) in parse_options(value) {
                    startup.insert(k, Setting::Value(v));
                }
            } else if !NOT_SETTINGS.contains(&name.as_str()) {
                startup.insert(name, Setting::Value(value.clone()));
            }
        }
        let mut s = Settings {
            current: startup.clone(),
            startup,
            shown: BTreeMap::new(),
            version: 0,
        };
        s.rehash();
        s
    }

    fn rehash(&mut self) {
        self.version = version_of(&self.current);
    }

    /// The server confirmed `change` (its CommandComplete came): the client's settings
    /// and what the server has both follow.
    pub fn confirm(&mut self, change: &Change, statement: &str, server: &mut Applied) {
        match change {
            Change::Set(name) => {
                self.set(name, statement);
                // The server had this client's settings (synced at checkout) plus this.
                server.map = self.current.clone();
                server.version = self.version;
            }
            Change::Reset(name) => {
                self.reset(name);
                let name = name.to_ascii_lowercase();
                server.map.remove(&name);
                if name == AUTHORIZATION {
                    server.map.remove(ROLE);
                    if let Some(role) = self.current.get(ROLE) {
                        server.map.insert(ROLE.to_string(), role.clone());
                    }
                }
                server.version = version_of(&server.map);
            }
            Change::ResetAll => {
                self.reset_all();
                server.reset_all();
            }
        }
    }

    /// A change of the session authorization (SET or RESET) also sets the role to
    /// `none`: what RESET role then goes back to stays the start-up value.
    fn authorization_changed(&mut self) {
        if self.startup.contains_key(ROLE) {
            self.current
                .insert(ROLE.to_string(), Setting::Value("none".into()));
        } else {
            self.current.remove(ROLE);
        }
    }

    /// A successful `SET name …` (its statement text).
    pub fn set(&mut self, name: &str, statement: &str) {
        let name = name.to_ascii_lowercase();
        if name == AUTHORIZATION {
            self.authorization_changed();
        }
        self.current
            .insert(name, Setting::Statement(statement.to_string()));
        self.rehash();
    }

    /// A successful `RESET name`: back to the start-up value, if any.
    pub fn reset(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        if name == AUTHORIZATION {
            self.authorization_changed();
        }
        match self.startup.get(&name) {
            Some(v) => self.current.insert(name, v.clone()),
            None => self.current.remove(&name),
        };
        self.rehash();
    }

    /// Names whose setting differs between `self` and `other`.
    pub fn changed_since(&self, other: &Settings) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for name in self.current.keys().chain(other.current.keys()) {
            if self.current.get(name) != other.current.get(name) && !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// The server's own value of a setting, as read back (`None`: it no longer exists,
    /// a custom setting created inside a rolled-back savepoint). Both the client's
    /// settings and what `server` has follow it.
    pub fn adopt(&mut self, name: &str, value: Option<String>, server: &mut Applied) {
        match value {
            Some(v) => {
                self.current
                    .insert(name.to_string(), Setting::Value(v.clone()));
                server.map.insert(name.to_string(), Setting::Value(v));
            }
            None => {
                self.current.remove(name);
                server.map.remove(name);
            }
        }
        self.rehash();
        server.version = version_of(&server.map);
    }

    /// RESET ALL: back to the start-up parameters, but for the role and the session
    /// authorization, which PostgreSQL's RESET ALL leaves as they are.
    pub fn reset_all(&mut self) {
        let mut current = self.startup.clone();
        for name in NOT_RESET_BY_ALL {
            match self.current.get(name) {
                Some(v) => current.insert(name.to_string(), v.clone()),
                None => current.remove(name),
            };
        }
        self.current = current;
        self.rehash();
    }

    /// DISCARD ALL: back to the start-up parameters, the role and the session
    /// authorization included.
    pub fn discard_all(&mut self) {
        self.current = self.startup.clone();
        self.rehash();
    }

    /// Whether [`Settings::sync`] can take `server` to these settings inside a
    /// transaction block: with SET and RESET alone (no `SELECT set_config(…)`, which
    /// takes a snapshot: a transaction's first, in REPEATABLE READ, must stay its
    /// client's first query's), none of the three settings of the transaction itself
    /// (PostgreSQL's RESET ALL leaves them, and refuses them after the first
    /// snapshot), and on a connection where no settings query failed, with no role or
    /// session authorization on either side.
    pub fn syncs_without_a_query(&self, server: &Applied) -> bool {
        const OF_THE_TRANSACTION: [&str; 3] = [
            "transaction_isolation",
            "transaction_read_only",
            "transaction_deferrable",
        ];
        let plain = |name: &String, setting: Option<&Setting>| {
            let list = matches!(setting, Some(Setting::Value(v)) if list_items(v).is_none())
                && LIST_QUOTE.contains(&name.as_str());
            !(list || OF_THE_TRANSACTION.contains(&name.as_str()))
        };
        // (A role or session authorization: the sync would undo and set it again at
        // session level, over a SET LOCAL ROLE of the block.)
        let identity = |map: &BTreeMap<String, Setting>| {
            NOT_RESET_BY_ALL.iter().any(|name| map.contains_key(*name))
        };
        !server.refused
            && !identity(&server.map)
            && !identity(&self.current)
            && self.current.iter().all(|(name, setting)| {
                server.map.get(name) == Some(setting) || plain(name, Some(setting))
            })
            && server
                .map
                .keys()
                .all(|name| self.current.contains_key(name) || plain(name, None))
    }

    /// The statements that make `server` match these settings (none when it does),
    /// and the server's new state. RESETs come first. The session authorization and
    /// the role come last, in that order (a change of the first sets the role to
    /// none), and any the server has are undone before other settings change:
    /// PostgreSQL checks a setting's privileges against the current user, and a
    /// superuser-only one (`log_statement`…) would be refused under a client's role.
    pub fn sync(&self, server: &mut Applied) -> Vec<String> {
        self.sync_identity_last(server, false).0
    }

    /// [`Settings::sync`], and the index of its first statement that sets the session
    /// authorization or role (the length when none does). `in_block`: inside a
    /// transaction block, where no statement may take a snapshot (see
    /// [`Settings::syncs_without_a_query`]).
    pub fn sync_identity_last(&self, server: &mut Applied, in_block: bool) -> (Vec<String>, usize) {
        if server.version == self.version {
            return (Vec::new(), 0);
        }
        let identity = |name: &str| NOT_RESET_BY_ALL.contains(&name);
        let mut have = std::borrow::Cow::Borrowed(&server.map);
        let mut statements = Vec::new();
        let others_differ = self
            .current
            .iter()
            .filter(|(name, _)| !identity(name))
            .any(|(name, setting)| have.get(name) != Some(setting))
            || have
                .keys()
                .any(|name| !identity(name) && !self.current.contains_key(name));
        if others_differ && NOT_RESET_BY_ALL.iter().any(|n| have.contains_key(*n)) {
            let have = have.to_mut();
            // (RESET of the authorization sets the role to none too.)
            if have.remove(AUTHORIZATION).is_some() {
                statements.push(format!("RESET {}", quote_ident(AUTHORIZATION)));
                have.remove(ROLE);
            } else if have.remove(ROLE).is_some() {
                statements.push(format!("RESET {}", quote_ident(ROLE)));
            }
        }
        for name in have.keys() {
            if !identity(name) && !self.current.contains_key(name) {
                statements.push(format!("RESET {}", quote_ident(name)));
            }
        }
        // The client's encoding first: the server reads each query's text in the
        // encoding set when it arrives, and other values may be beyond ASCII.
        const ENCODING: &str = "client_encoding";
        let encoding = self.current.get_key_value(ENCODING);
        let others = self.current.iter().filter(|(name, _)| *name != ENCODING);
        // Lists SET item by item: the server's value is spaced as PostgreSQL writes a
        // SET list (`a, b`), not as the client wrote it; outside a block it is set
        // again as written.
        let mut spaced = Vec::new();
        for (name, setting) in encoding.into_iter().chain(others) {
            if !identity(name) && have.get(name) != Some(setting) {
                let statement = set_statement(name, setting, in_block);
                if matches!(setting, Setting::Value(_))
                    && LIST_QUOTE.contains(&name.as_str())
                    && statement.starts_with("SET ")
                {
                    spaced.push((name.clone(), statement.clone()));
                }
                statements.push(statement);
            }
        }
        let identity_from = statements.len();
        let reauthorized = have.get(AUTHORIZATION) != self.current.get(AUTHORIZATION);
        if reauthorized {
            statements.push(match self.current.get(AUTHORIZATION) {
                Some(setting) => set_statement(AUTHORIZATION, setting, in_block),
                None => format!("RESET {}", quote_ident(AUTHORIZATION)),
            });
        }
        match self.current.get(ROLE) {
            Some(role) if reauthorized || have.get(ROLE) != Some(role) => {
                statements.push(set_statement(ROLE, role, in_block));
            }
            None if !reauthorized && have.contains_key(ROLE) => {
                statements.push(format!("RESET {}", quote_ident(ROLE)));
            }
            _ => {}
        }
        server.map = self.current.clone();
        server.version = self.version;
        if !spaced.is_empty() {
            for (name, statement) in spaced {
                server.map.insert(name, Setting::Statement(statement));
            }
            server.version = version_of(&server.map);
        }
        (statements, identity_from)
    }

    /// Equal versions, equal settings.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The statements that give a fresh server connection these settings.
    pub fn statements(&self) -> Vec<String> {
        self.sync(&mut Applied::default())
    }

    /// [`Settings::statements`] without the settings no query's result depends on
    /// (see [`RESULT_NEUTRAL`]): what the result cache's key holds, so clients that
    /// differ only in them (psql and an application, by `application_name`) share
    /// entries.
    pub fn key_statements(&self) -> Vec<String> {
        let mut shaping = self.clone();
        shaping
            .current
            .retain(|name, _| !RESULT_NEUTRAL.contains(&name.as_str()));
        shaping.rehash();
        shaping.statements()
    }

    /// The client's value of `name` now when it is its start-up value (as after a
    /// RESET): what PostgreSQL would report it has, as it reported it when applied.
    pub fn current_startup_value(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        match (self.current.get(&name), self.startup.get(&name)) {
            (Some(Setting::Value(v)), Some(Setting::Value(s))) if v == s => {
                Some(self.shown.get(&name).map_or(v.as_str(), String::as_str))
            }
            _ => None,
        }
    }

    /// Whether the client's transactions are SERIALIZABLE unless they say otherwise
    /// (its `default_transaction_isolation`, set at start-up, by SET, SET SESSION
    /// CHARACTERISTICS or set_config, read back): a replica refuses them. `None`
    /// when the client set none (or set DEFAULT): the server's default holds.
    pub fn serializable_by_default(&self) -> Option<bool> {
        let value = self.current_value("default_transaction_isolation")?.trim();
        let value = value.trim_matches('\'');
        if value.eq_ignore_ascii_case("default") {
            return None;
        }
        Some(value.eq_ignore_ascii_case("serializable"))
    }

    /// The client's own value of `name` (lower case): a start-up or read-back value,
    /// or what its SET statement gives.
    fn current_value(&self, name: &str) -> Option<&str> {
        match self.current.get(name)? {
            Setting::Value(v) => Some(v),
            Setting::Statement(s) => Some(statement_value_of(s, &[name])),
        }
    }

    /// The client's own `statement_timeout` (a start-up value or a SET), when it set
    /// one PostgreSQL reads as a time (milliseconds without a unit); `None` for 0
    /// (off), none or DEFAULT.
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        let value = self.current_value("statement_timeout")?.trim();
        let split = value
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(value.len());
        let number: f64 = value[..split].parse().ok()?;
        let ms = match value[split..].trim().to_ascii_lowercase().as_str() {
            "" | "ms" => 1.0,
            "us" => 0.001,
            "s" => 1_000.0,
            "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return None,
        };
        let ms = number * ms;
        // (A number too large for a Duration: none, not a panic.)
        (ms >= 1.0)
            .then(|| std::time::Duration::try_from_secs_f64(ms / 1000.0).ok())
            .flatten()
    }

    /// The server reported `value` for `name` while pgopt applied this client's
    /// settings: when that is its start-up value, how PostgreSQL writes it.
    /// The value as the client wrote it when this is the first report of it, spelt
    /// otherwise (for the pool to remember: see [`Settings::spell_startup`]).
    pub fn note_shown(&mut self, name: &str, value: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        if let (Some(Setting::Value(v)), Some(Setting::Value(s))) =
            (self.current.get(&name), self.startup.get(&name))
        {
            if v == s && !self.shown.contains_key(&name) {
                let written = (value != s).then(|| s.clone());
                self.shown.insert(name, value.to_string());
                return written;
            }
        }
        None
    }

    /// Start-up values a client gave for `name` (to overlay ParameterStatus).
    pub fn startup_value(&self, name: &str) -> Option<&str> {
        match self.startup.get(&name.to_ascii_lowercase()) {
            Some(Setting::Value(v)) => Some(v),
            _ => None,
        }
    }

    /// How PostgreSQL writes the client's start-up values: DateStyle and
    /// IntervalStyle read here (`iso` is `ISO, MDY` over a server whose default is
    /// `ISO, MDY`), given the server's own values (`server`, its login's
    /// ParameterStatus), others as `known` (name, value as written) says a server
    /// reported them to an earlier client (`asia/tokyo` is `Asia/Tokyo`): what the
    /// client is told at login, as PostgreSQL tells it. (Applying a value the server
    /// connection already has draws no ParameterStatus to learn it from; a driver may
    /// need PostgreSQL's spelling: psycopg to read dates, or to know the time zone.)
    /// A value not known stays as written.
    pub fn spell_startup(
        &mut self,
        server: &[(String, String)],
        known: impl Fn(&str, &str) -> Option<String>,
    ) {
        for (name, setting) in &self.startup {
            if let Setting::Value(raw) = setting {
                if let Some(spelt) = known(name, raw) {
                    self.shown.insert(name.clone(), spelt);
                }
            }
        }
        let server_value = |name: &str| {
            server
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        for name in ["datestyle", "intervalstyle"] {
            let Some(Setting::Value(raw)) = self.startup.get(name) else {
                continue;
            };
            let spelt = match name {
                "datestyle" => server_value(name).and_then(|now| datestyle_spelt(raw, now)),
                _ => intervalstyle_spelt(raw),
            };
            if let Some(spelt) = spelt {
                self.shown.insert(name.to_string(), spelt);
            }
        }
    }
}

/// PostgreSQL's DateStyle after `value` is applied over `now` (its `check_datestyle`:
/// a style and an order, each kept from `now` when not named; GERMAN implies DMY
/// unless an order is named). `None` for what is not read here (DEFAULT, a typo).
fn datestyle_spelt(value: &str, now: &str) -> Option<String> {
    let (mut style, mut order) = now.split_once(", ")?;
    let mut ordered = false;
    for token in value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        let token = token.to_ascii_uppercase();
        match token.as_str() {
            "ISO" => style = "ISO",
            "SQL" => style = "SQL",
            "POSTGRES" => style = "Postgres",
            "GERMAN" => {
                style = "German";
                if !ordered {
                    order = "DMY";
                }
            }
            "YMD" => (order, ordered) = ("YMD", true),
            "DMY" | "EURO" | "EUROPEAN" => (order, ordered) = ("DMY", true),
            "MDY" | "US" | "NONEURO" | "NONEUROPEAN" => (order, ordered) = ("MDY", true),
            _ => return None,
        }
    }
    Some(format!("{style}, {order}"))
}

/// PostgreSQL's IntervalStyle for `value` (its names, in lower case).
fn intervalstyle_spelt(value: &str) -> Option<String> {
    let lower = value.trim().to_ascii_lowercase();
    ["postgres", "postgres_verbose", "sql_standard", "iso_8601"]
        .contains(&lower.as_str())
        .then_some(lower)
}

impl Applied {
    /// The names of the settings pgopt applied to the connection.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// After DISCARD ALL on the server: nothing applied any more.
    pub fn clear(&mut self) {
        self.map.clear();
        self.version = 0;
        self.refused = false;
    }

    /// After RESET ALL on the server: what it leaves (see [`Settings::reset_all`]).
    pub fn reset_all(&mut self) {
        self.map
            .retain(|name, _| NOT_RESET_BY_ALL.contains(&name.as_str()));
        self.version = version_of(&self.map);
        self.refused &= !self.map.is_empty();
    }
}

/// The words of the `options` start-up parameter as PostgreSQL splits them
/// (`pg_split_opts`): at white space, where a backslash takes the next character as
/// it is (`-c application_name=my\ app`, `search_path=a\,b`).
fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_ascii_whitespace()) {
            match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                }
                c => word.push(c),
            }
        }
        words.push(word);
    }
}

/// `-c name=value` and `--name=value` pairs of the `options` start-up parameter.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let words = split_options(options);
    let mut words = words.iter().map(String::as_str);
    while let Some(w) = words.next() {
        let pair = if w == "-c" {
            words.next()
        } else if let Some(rest) = w.strip_prefix("-c") {
            Some(rest)
        } else {
            w.strip_prefix("--")
        };
        if let Some((k, v)) = pair.and_then(|p| p.split_once('=')) {
            out.push((k.replace('-', "_").to_ascii_lowercase(), v.to_string()));
        }
    }
    out
}

fn version_of(map: &BTreeMap<String, Setting>) -> u64 {
    if map.is_empty() {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    map.hash(&mut h);
    h.finish() | 1
}

pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// What transaction mode does with a statement's session effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing session-level: relay as is.
    Relay,
    /// Tracked settings change, applied once the server confirms it.
    Track(Change),
    /// Settings changed where their statement's CommandComplete can't confirm them:
    /// by `set_config(name, …, false)`, or by SETs and RESETs among several
    /// statements of one query (which all fail together when one fails).
    AfterRun {
        /// Read back from the server once the query has run (whatever it did), and
        /// then followed as a SET is.
        reread: Vec<String>,
        /// RESETs (by name, or ALL) confirmed at the query's ReadyForQuery when it
        /// met no error.
        resets: Vec<Change>,
    },
    /// Refused: the message names the feature and what to do instead.
    Refuse(String),
    /// SQL PREPARE: let through inside a transaction block, where the connection stays
    /// with the client (pg_dump prepares and executes within its one transaction),
    /// and deallocated when the block ends; refused outside one with the message.
    InBlockOnly(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Set(String),
    Reset(String),
    ResetAll,
}

impl Change {
    /// Whether this RESET takes setting `name` (lower case) back to its start-up value.
    /// (Not the "every setting" of a read-back: ALL leaves the role.)
    pub fn resets(&self, name: &str) -> bool {
        match self {
            Change::Set(_) => false,
            Change::Reset(reset) => reset.eq_ignore_ascii_case(name),
            Change::ResetAll => !NOT_RESET_BY_ALL.contains(&name) && name != pgopt_sql::ANY_SETTING,
        }
    }
}

/// Decides what to do with a statement in transaction mode from its analysis. `hidden`:
/// what the functions it calls may set (see `function_settings.rs`), read back after it.
pub fn judge(analysis: &Analysis, sql: &str, hidden: &[String]) -> Verdict {
    let single = analysis.kinds.len() <= 1;
    let mut changes = Vec::new();
    let mut discard = false;
    let mut reread = hidden.to_vec();
    // An UPDATE of pg_settings sets what it names (its rule calls set_config): read
    // back as a set_config named by its column is.
    // (By its last part: a name may carry the database and schema before it.)
    let writes_settings = analysis.tables_written.iter().any(|t| {
        t.rsplit('.')
            .next()
            .is_some_and(|rel| rel.eq_ignore_ascii_case("pg_settings"))
    });
    if writes_settings {
        reread.push(pgopt_sql::ANY_SETTING.to_string());
    }
    // A DO block runs its body here, which the analysis (shared by texts that differ
    // in literals, the body one of them) does not read: one that may set a setting has
    // every setting the session set read back.
    if is_do(analysis, sql) {
        if let Some(names) = pgopt_sql::set_config_names(sql) {
            // (Any other name is read back too: a set_config outside the body adds
            // its own.)
            reread.extend(names);
        }
        // (A temporary table, an advisory lock… its body may make: checked for.)
        if pgopt_sql::leaves_session_state(&sql.to_ascii_lowercase()) {
            reread.push(pgopt_sql::SESSION_STATE.to_string());
        }
    }
    for effect in &analysis.session_effects {
        let refusal = |feature: &str, instead: &str| {
            format!(
                "{feature} is not supported in transaction pooling mode: the state would stay \
                 on a server connection other clients use. {instead}"
            )
        };
        let refuse = |feature: &str, instead: &str| Verdict::Refuse(refusal(feature, instead));
        match effect {
            SessionEffect::Listen { .. } => {
                return refuse(
                    "LISTEN",
                    "Use a pool in session mode (pool_mode = \"session\") for LISTEN/NOTIFY.",
                )
            }
            SessionEffect::AdvisoryLock => {
                return refuse(
                    "A session-level advisory lock (pg_advisory_lock)",
                    "Use pg_advisory_xact_lock inside a transaction, or a session-mode pool.",
                )
            }
            // (One created ON COMMIT DROP is no effect: the analysis leaves it out.)
            SessionEffect::TempObject { name } => return refuse(
                &format!("Temporary table {name}"),
                "Create it with ON COMMIT DROP inside a transaction, or use a session-mode pool.",
            ),
            // A PREPARE alone, whose statement has no session effect of its own (each
            // EXECUTE would have it unseen): let through in a block. Beside anything
            // else, refused.
            SessionEffect::Prepare { name }
                if !single || analysis.session_effects.len() > 1 || writes_settings =>
            {
                return refuse(
                    &format!("SQL PREPARE ({name}) among other statements or session effects"),
                    "Run the PREPARE alone, inside a transaction block (it lasts until the \
                     block ends), or use your driver's prepared statements (protocol-level), \
                     which pgopt keeps across server connections.",
                )
            }
            SessionEffect::Prepare { name } => {
                return Verdict::InBlockOnly(refusal(
                    &format!("SQL PREPARE ({name}) outside a transaction block"),
                    "Inside a block it lasts until the block ends. Use your driver's prepared \
                     statements (protocol-level), which pgopt keeps across server connections.",
                ));
            }
            SessionEffect::HoldCursor { name } => {
                return refuse(
                    &format!("DECLARE {name} CURSOR WITH HOLD"),
                    "Use a cursor without HOLD inside a transaction, or a session-mode pool.",
                )
            }
            // (A call naming its setting by a column of pg_settings gives ANY_SETTING:
            // every setting the session changed is read back.)
            SessionEffect::SetConfig => match pgopt_sql::set_config_names(sql) {
                Some(names) => reread.extend(names),
                None => {
                    return refuse(
                        "set_config(…, …, false) naming its setting other than by a string \
                         literal (or a column of pg_settings)",
                        "Name the setting with a literal, pass is_local = true inside a \
                         transaction (or use SET LOCAL), or run SET as its own statement, which \
                         pgopt carries across server connections.",
                    )
                }
            },
            SessionEffect::Set { name } => changes.push(Change::Set(name.clone())),
            SessionEffect::Reset { name } => changes.push(Change::Reset(name.clone())),
            SessionEffect::ResetAll => changes.push(Change::ResetAll),
            // DISCARD other than ALL changes no settings; the tag check sorts that out.
            SessionEffect::Discard => {
                discard = true;
                changes.push(Change::ResetAll);
            }
            SessionEffect::Unlisten { .. } | SessionEffect::Deallocate { .. } => {}
        }
    }
    // Names as PostgreSQL folds them (a quoted name keeps its case in the tree; the
    // relay matches names exactly).
    for name in &mut reread {
        name.make_ascii_lowercase();
    }
    // A session authorization (set_config's too) resets the role.
    let reread_role = |reread: &mut Vec<String>| {
        if reread.iter().any(|n| n == AUTHORIZATION) && !reread.iter().any(|n| n == ROLE) {
            reread.push(ROLE.to_string());
        }
    };
    reread_role(&mut reread);
    if single && (changes.is_empty() || changes.len() == 1 && reread.is_empty()) {
        return match changes.pop() {
            None if !reread.is_empty() => Verdict::AfterRun {
                reread,
                resets: Vec::new(),
            },
            None => Verdict::Relay,
            Some(c) => Verdict::Track(c),
        };
    }
    // Several statements: SETs are read back, RESETs confirmed if nothing failed —
    // unless which came first matters (a name both SET and RESET, RESET ALL and a
    // SET), which the effects don't say; DISCARD ALL can't run among others anyway.
    if discard {
        return several_refused();
    }
    let mut resets = Vec::new();
    for change in changes {
        match change {
            Change::Set(name) => reread.push(name.to_ascii_lowercase()),
            reset => resets.push(reset),
        }
    }
    reread_role(&mut reread);
    let any = reread.iter().any(|n| n == pgopt_sql::ANY_SETTING);
    let clash = resets.iter().any(|r| match r {
        Change::Reset(name) => any || reread.iter().any(|n| n.eq_ignore_ascii_case(name)),
        _ => !reread.is_empty(),
    });
    // A RESET is kept when the query met no error: only so when nothing in the query
    // but a leading BEGIN or the like ends a transaction (a ROLLBACK after it undoes
    // it, an error after a COMMIT leaves it).
    let ends_inside = analysis
        .kinds
        .iter()
        .skip(1)
        .any(|k| *k == StatementKind::Transaction);
    if clash || !resets.is_empty() && ends_inside {
        return several_refused();
    }
    Verdict::AfterRun { reread, resets }
}

fn several_refused() -> Verdict {
    Verdict::Refuse(
        "DISCARD, a SET and a RESET of the same setting, or RESET with COMMIT, ROLLBACK or \
         SAVEPOINT after it, in a query with several statements is not supported in \
         transaction pooling mode: send it as a statement of its own, which pgopt carries \
         across server connections"
            .into(),
    )
}

/// Whether `sql` (analysed as `analysis`) may hold a DO block: one of its statements is
/// of kind "other" (the text is scanned only then) and begins with DO.
pub fn is_do(analysis: &Analysis, sql: &str) -> bool {
    analysis.kinds.contains(&StatementKind::Other) && statement_starts_with(sql.as_bytes(), b"do")
}

/// Whether a statement of `sql` begins with `word` (a `;` inside a literal may give a
/// false alarm).
pub fn statement_starts_with(sql: &[u8], word: &[u8]) -> bool {
    sql.split(|&b| b == b';')
        .any(|piece| starts_word(skip_blanks_and_comments(piece), word))
}

/// A cheap pass that says whether a statement may have session effects at all, so
/// only those pay for a parse: a statement starting with SET, RESET, LISTEN, PREPARE,
/// DECLARE, CREATE, DISCARD or DO, or text mentioning advisory locks, set_config,
/// pg_settings, TEMP, lastval or currval; or one starting with ALTER or DROP, which
/// may change prepared statements' shapes (see [`may_change_shapes`]).
pub fn may_affect_session(sql: &[u8]) -> bool {
    // Every statement's first word (a `;` inside a literal only adds a false alarm):
    // SET, RESET, LISTEN, PREPARE, DECLARE, CREATE or DISCARD.
    let mut start = 0;
    loop {
        let first = skip_blanks_and_comments(&sql[start..]);
        let leading: &[&[u8]] = match first.first().map(u8::to_ascii_lowercase) {
            Some(b's') => &[b"set"],
            Some(b'r') => &[b"reset"],
            Some(b'l') => &[b"listen"],
            Some(b'p') => &[b"prepare"],
            Some(b'd') => &[b"declare", b"discard", b"do", b"drop"],
            Some(b'c') => &[b"create"],
            Some(b'a') => &[b"alter"],
            _ => &[],
        };
        if leading.iter().any(|w| starts_word(first, w)) {
            return true;
        }
        match memchr::memchr(b';', &sql[start..]) {
            Some(at) => start += at + 1,
            None => break,
        }
    }
    // Words anywhere, found from their rare bytes (SIMD scans) rather than byte by byte:
    // `advisory_lock`, `set_config` and `reload_conf` from their `_`, `temp` (TEMP, TEMPORARY, pg_temp)
    // from its `p`.
    let before_is = |at: usize, word: &[u8]| {
        at >= word.len() && sql[at - word.len()..at].eq_ignore_ascii_case(word)
    };
    let after_is = |at: usize, word: &[u8]| {
        sql.get(at + 1..at + 1 + word.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(word))
    };
    // One scan for `_` and `&`: a Unicode-escaped name (U&"…") may spell any of them.
    memchr::memchr2_iter(b'_', b'&', sql).any(|at| match sql[at] {
        b'&' => before_is(at, b"u"),
        _ => {
            (before_is(at, b"advisory") && after_is(at, b"lock"))
                || (before_is(at, b"set") && after_is(at, b"config"))
                || (before_is(at, b"reload") && after_is(at, b"conf"))
                || (before_is(at, b"pg") && after_is(at, b"settings"))
        }
    }) || memchr::memchr2_iter(b'p', b'P', sql).any(|at| before_is(at, b"tem"))
        || memchr::memchr2_iter(b'v', b'V', sql)
            .any(|at| (before_is(at, b"last") || before_is(at, b"curr")) && after_is(at, b"al"))
}

/// Whether `analysis` calls `lastval()` or `currval()`, which read the sequence values
/// the server session's own `nextval` calls left: in transaction mode, those of whichever
/// client had the connection last, unless this one advanced them since its checkout.
pub fn reads_session_sequences(analysis: &Analysis) -> bool {
    analysis.functions.iter().any(|f| {
        matches!(
            f.as_str(),
            "lastval" | "currval" | "pg_catalog.lastval" | "pg_catalog.currval"
        )
    })
}

/// Whether `analysis` may call nextval (or setval): a statement that writes, runs DDL
/// or something else (CALL, DO, EXECUTE…), a call of nextval or setval, or of a function
/// pgopt does not know. A transaction's control, SET, RESET, SHOW and EXPLAIN (taken so
/// even with ANALYZE: a refusal too many, never one too few) do not,
/// nor does a SELECT of known functions only (whatever else the query holds: `BEGIN;
/// SELECT lastval()` advances nothing).
pub fn may_advance_sequences(analysis: &Analysis) -> bool {
    analysis.unknown_writes
        || analysis.kinds.iter().any(|k| {
            !matches!(
                k,
                StatementKind::Select
                    | StatementKind::Transaction
                    | StatementKind::Set
                    | StatementKind::Reset
                    | StatementKind::Show
                    | StatementKind::Explain
            )
        })
        || analysis.functions.iter().any(|f| {
            matches!(
                f.as_str(),
                "nextval" | "setval" | "pg_catalog.nextval" | "pg_catalog.setval"
            )
        })
}

/// A statement that surely calls no nextval, from its first word (for text not
/// analysed): BEGIN, START, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE, SET, RESET,
/// SHOW, alone.
pub fn cannot_advance(sql: &[u8]) -> bool {
    let first = skip_blanks_and_comments(sql);
    let word_end = first
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(first.len());
    let (word, rest) = first.split_at(word_end);
    let one_statement = memchr::memchr(b';', rest).is_none_or(|at| {
        rest[at + 1..]
            .iter()
            .all(|b| b.is_ascii_whitespace() || *b == 0)
    });
    one_statement
        && [
            &b"begin"[..],
            b"start",
            b"commit",
            b"end",
            b"rollback",
            b"savepoint",
            b"release",
            b"set",
            b"reset",
            b"show",
        ]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

/// What a statement does with the session's sequences, for the `lastval()`/`currval()`
/// check: worked out once per statement text (a named statement keeps it).
#[derive(Debug, Clone, Copy)]
pub struct SequenceUse {
    /// It reads them ([`reads_session_sequences`]).
    pub reads: bool,
    /// It may advance them ([`may_advance_sequences`]).
    pub advances: bool,
    /// It is several statements (a read after an advance among them is its own).
    pub several: bool,
}

impl SequenceUse {
    pub fn of(analysis: &Analysis) -> SequenceUse {
        SequenceUse {
            reads: reads_session_sequences(analysis),
            advances: may_advance_sequences(analysis),
            several: analysis.kinds.len() > 1,
        }
    }

    /// Refused as the first thing on a connection: it reads sequence values that no
    /// statement of its own may have set.
    pub fn refused_first(self) -> bool {
        self.reads && !(self.advances && self.several)
    }
}

/// The refusal of a `lastval()`/`currval()` that would read another client's sequence
/// values (see [`reads_session_sequences`]).
pub fn sequence_refusal() -> String {
    "lastval()/currval() outside the transaction that called nextval is not supported in \
     transaction pooling mode: the server connection may be another client's last, and \
     its session's sequence values that client's. Read the value in the same transaction \
     or query as the INSERT or nextval (INSERT … RETURNING id is the usual way), or use a \
     session-mode pool."
        .into()
}

/// `text` from its first byte that is not white space, `(`, or inside a comment.
fn skip_blanks_and_comments(mut text: &[u8]) -> &[u8] {
    loop {
        match text {
            [b, rest @ ..] if b.is_ascii_whitespace() || *b == b'(' => text = rest,
            [b'/', b'*', rest @ ..] => match memchr::memmem::find(rest, b"*/") {
                Some(end) => text = &rest[end + 2..],
                None => return &[],
            },
            // PostgreSQL ends a line comment at either.
            [b'-', b'-', rest @ ..] => match memchr::memchr2(b'\n', b'\r', rest) {
                Some(end) => text = &rest[end + 1..],
                None => return &[],
            },
            _ => return text,
        }
    }
}

/// Whether a statement of `sql` may change what prepared statements take or give (a
/// table's or a type's columns, a view's, a function's result, what a name resolves
/// to): an ALTER or DROP of a table, view, type, domain, function, schema, extension…,
/// or a CREATE OR REPLACE (a `;` inside a literal may give a false alarm). Not one of
/// a sequence, index, role, trigger, policy or publication, which jobs run often
/// (partition maintenance) and which change no statement's shape.
pub fn may_change_shapes(sql: &[u8]) -> bool {
    /// What an ALTER or DROP may name that changes shapes or names.
    const SHAPING: [&[u8]; 16] = [
        b"table",
        b"view",
        b"materialized",
        b"foreign",
        b"type",
        b"domain",
        b"function",
        b"procedure",
        b"routine",
        b"aggregate",
        b"operator",
        b"cast",
        b"schema",
        b"extension",
        b"rule",
        b"collation",
    ];
    sql.split(|&b| b == b';').any(|piece| {
        let first = skip_blanks_and_comments(piece);
        let verb = if starts_word(first, b"alter") {
            b"alter".len()
        } else if starts_word(first, b"drop") {
            b"drop".len()
        } else if starts_word(first, b"create") {
            let or = skip_blanks_and_comments(&first[b"create".len()..]);
            return starts_word(or, b"or")
                && starts_word(skip_blanks_and_comments(&or[2..]), b"replace");
        } else {
            return false;
        };
        let object = skip_blanks_and_comments(&first[verb..]);
        SHAPING.iter().any(|word| starts_word(object, word))
    })
}

/// Whether a statement of `sql` (`analysis` its analysis) may change the server's
/// defaults of settings: ALTER DATABASE, ROLE or USER … SET or RESET (for sessions
/// that begin after it), ALTER SYSTEM (at the next reload), or a call of
/// `pg_reload_conf`. (A `;` or a word inside a literal may give a false alarm.) The
/// text is looked at only when a statement is of a kind those are (`Other`; `Ddl`
/// for an ALTER the parser names otherwise): not for every SELECT.
pub fn alters_defaults(sql: &[u8], analysis: &Analysis) -> bool {
    let utility = analysis
        .kinds
        .iter()
        .any(|k| matches!(k, StatementKind::Ddl | StatementKind::Other));
    let sql: &[u8] = if utility { sql } else { b"" };
    let functions = &analysis.functions;
    let alters = |piece: &[u8]| {
        let first = skip_blanks_and_comments(piece);
        if !starts_word(first, b"alter") {
            return false;
        }
        let object = skip_blanks_and_comments(&first[b"alter".len()..]);
        starts_word(object, b"system")
            || ([b"database".as_slice(), b"role", b"user"]
                .iter()
                .any(|w| starts_word(object, w))
                && object
                    .split(|b| !b.is_ascii_alphanumeric() && *b != b'_')
                    .any(|w| w.eq_ignore_ascii_case(b"set") || w.eq_ignore_ascii_case(b"reset")))
    };
    sql.split(|&b| b == b';').any(alters)
        || functions
            .iter()
            .any(|f| f.rsplit('.').next() == Some("pg_reload_conf"))
}

fn starts_word(text: &[u8], word: &[u8]) -> bool {
    text.len() >= word.len()
        && text[..word.len()].eq_ignore_ascii_case(word)
        && text
            .get(word.len())
            .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_a_set_statement_names() {
        for (statement, value) in [
            ("SET client_encoding TO 'LATIN1' -- was utf8", "LATIN1"),
            ("set session client_encoding = \"KOI8R\"", "KOI8R"),
            ("SET NAMES latin1;", "latin1"),
            ("SET client_encoding=utf8", "utf8"),
        ] {
            assert_eq!(statement_value(statement), value, "{statement}");
        }
        let settings = Settings::from_startup(&[("client_encoding".into(), "UTF-8".into())]);
        assert_eq!(settings.encoding_salt("LATIN1"), 0);
        let settings = Settings::from_startup(&[]);
        assert_eq!(settings.encoding_salt("UTF8"), 0);
        assert_ne!(settings.encoding_salt("LATIN1"), 0);
    }

    #[test]
    fn only_transaction_control_set_and_show_alone_surely_advance_no_sequence() {
        for sql in [
            "BEGIN",
            "begin isolation level serializable;",
            " COMMIT\0",
            "SET x = 1",
        ] {
            assert!(cannot_advance(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "SELECT nextval('s')",
            "BEGIN; INSERT INTO t VALUES (1)",
            "settle",
            "",
        ] {
            assert!(!cannot_advance(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn options_split_as_postgresql_splits_them() {
        assert_eq!(
            parse_options(r"-c application_name=my\ app --search-path=a\,b -cwork_mem=7MB"),
            vec![
                ("application_name".to_string(), "my app".to_string()),
                ("search_path".to_string(), r"a,b".to_string()),
                ("work_mem".to_string(), "7MB".to_string()),
            ]
        );
        assert_eq!(
            parse_options("  -c  x.y=a\\\\b\t-c x.z=\\"),
            vec![
                ("x.y".to_string(), r"a\b".to_string()),
                ("x.z".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn list_values_split_as_postgresql_splits_them() {
        let items = |v: &str| list_items(v).map(|i| i.join("|"));
        assert_eq!(items(r#""$user", public"#).as_deref(), Some("$user|public"));
        assert_eq!(items(r#" A ,"B""c",d"#).as_deref(), Some(r#"a|B"c|d"#));
        for malformed in ["", " ", "a b", "a,,b", "a,", r#""a"#, r#""""#] {
            assert_eq!(items(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn a_list_setting_is_synced_by_a_query_and_the_others_by_set_alone() {
        let startup = |name: &str, value: &str| (name.to_string(), value.to_string());
        let plain = Settings::from_startup(&[startup("application_name", "x")]);
        assert!(plain.syncs_without_a_query(&Applied::default()));
        // A list: set_config outside a block, its items SET one by one in one.
        let list = Settings::from_startup(&[startup("search_path", "\"$user\", App,b")]);
        assert!(list.syncs_without_a_query(&Applied::default()));
        assert!(list.sync(&mut Applied::default())[0].starts_with("SELECT pg_catalog.set_config"));
        let mut server = Applied::default();
        assert_eq!(
            list.sync_identity_last(&mut server, true).0,
            [r#"SET "search_path" TO '$user', 'app', 'b'"#]
        );
        // Set again as written once out of the block.
        assert!(list.sync(&mut server)[0].starts_with("SELECT pg_catalog.set_config"));
        assert!(list.sync(&mut server).is_empty());
        // One PostgreSQL would not split (set_config takes it as it is).
        let list = Settings::from_startup(&[startup("search_path", "a b")]);
        let mut server = Applied::default();
        assert!(!list.syncs_without_a_query(&server));
        assert!(list.sync(&mut server)[0].starts_with("SELECT pg_catalog.set_config"));
        assert!(list.syncs_without_a_query(&server), "nothing left to apply");
        let of_the_transaction = Settings::from_startup(&[startup("transaction_read_only", "on")]);
        assert!(!of_the_transaction.syncs_without_a_query(&Applied::default()));
        let mut refused = Applied::default();
        plain.sync(&mut refused);
        assert!(plain.syncs_without_a_query(&refused));
        refused.refused = true;
        assert!(
            !plain.syncs_without_a_query(&refused),
            "a record not to trust"
        );
    }

    fn judged(sql: &str) -> Verdict {
        judge(&pgopt_sql::analyze(sql).unwrap(), sql, &[])
    }

    #[test]
    fn an_update_of_pg_settings_is_read_back_as_any_setting() {
        for sql in [
            "UPDATE pg_settings SET setting = '1GB' WHERE name = 'work_mem'",
            "UPDATE postgres.pg_catalog.pg_settings SET setting = '1GB' WHERE name = 'work_mem'",
        ] {
            assert!(may_affect_session(sql.as_bytes()), "{sql}");
            assert_eq!(
                judged(sql),
                Verdict::AfterRun {
                    reread: vec![pgopt_sql::ANY_SETTING.to_string()],
                    resets: Vec::new(),
                },
                "{sql}"
            );
        }
        // Spelled with escapes: not passed over by the prefilter.
        assert!(may_affect_session(
            br#"UPDATE U&"pg\005fsettings" SET setting = 'x'"#
        ));
        // Beside a RESET of a name: which came first is not known.
        match judged("UPDATE pg_settings SET setting = 'off' WHERE name = 'jit'; RESET jit") {
            Verdict::Refuse(m) => assert!(m.contains("several statements"), "{m}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn start_up_values_postgresql_checks_at_login() {
        let value = |name: &str| set_statement(name, &Setting::Value("x".into()), false);
        for name in UNCHECKED_AT_LOGIN {
            assert!(!checked_at_login(&value(name)), "{name}");
        }
        for name in [
            "statement_timeout",
            "search_path",
            "default_tablespaces_x",
            "role",
        ] {
            assert!(checked_at_login(&value(name)), "{name}");
        }
        assert!(!checked_at_login("RESET \"log_disconnections\""));
    }

    #[test]
    fn statements_that_may_change_shapes() {
        for sql in [
            "ALTER TABLE t ADD COLUMN z int",
            "BEGIN; drop view v",
            "/* m */ CREATE OR REPLACE VIEW v AS SELECT 1",
            "create  or\n replace function f() returns int language sql as 'select 1'",
            "ALTER TYPE mood ADD VALUE 'meh'",
            "DROP EXTENSION hstore CASCADE",
            "alter materialized view m rename to n",
        ] {
            assert!(may_change_shapes(sql.as_bytes()), "{sql}");
            assert!(may_affect_session(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "CREATE TABLE t (a int)",
            "CREATE ORDINARY",
            "SELECT 'alter'",
            "TRUNCATE t",
            "UPDATE t SET dropped = true",
            "ALTER SEQUENCE s RESTART",
            "DROP INDEX i",
            "ALTER ROLE r SET work_mem = '1MB'",
            "DROP TRIGGER t ON x",
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO r",
        ] {
            assert!(!may_change_shapes(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn statements_that_may_alter_defaults() {
        let analyzer = pgopt_sql::Analyzer::default();
        let alters = |sql: &str| alters_defaults(sql.as_bytes(), &analyzer.analyze(sql).unwrap());
        for sql in [
            "ALTER DATABASE app SET TimeZone = 'UTC'",
            "alter role r in database app reset all",
            "BEGIN; /* x */ ALTER USER u SET search_path = a",
            "ALTER SYSTEM SET bytea_output = 'escape'",
        ] {
            assert!(alters(sql), "{sql}");
            assert!(may_affect_session(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "ALTER ROLE r PASSWORD 'x'",
            "ALTER DATABASE app RENAME TO b",
            "SELECT 'alter system'",
            "ALTER TABLE t SET (fillfactor = 70)",
        ] {
            assert!(!alters(sql), "{sql}");
        }
        let sql = "SELECT pg_catalog.pg_reload_conf()";
        assert!(may_affect_session(sql.as_bytes()));
        assert!(alters(sql));
    }

    #[test]
    fn datestyle_and_intervalstyle_are_spelt_as_postgresql_spells_them() {
        assert_eq!(
            datestyle_spelt("iso", "ISO, MDY").as_deref(),
            Some("ISO, MDY")
        );
        assert_eq!(
            datestyle_spelt("sql, dmy", "ISO, MDY").as_deref(),
            Some("SQL, DMY")
        );
        assert_eq!(
            datestyle_spelt("euro", "Postgres, MDY").as_deref(),
            Some("Postgres, DMY")
        );
        assert_eq!(
            datestyle_spelt("German", "ISO, MDY").as_deref(),
            Some("German, DMY")
        );
        assert_eq!(
            datestyle_spelt("ymd German", "ISO, MDY").as_deref(),
            Some("German, YMD")
        );
        assert_eq!(datestyle_spelt("default", "ISO, MDY"), None);
        assert_eq!(datestyle_spelt("isoo", "ISO, MDY"), None);
        assert_eq!(intervalstyle_spelt("ISO_8601").as_deref(), Some("iso_8601"));
        assert_eq!(intervalstyle_spelt("iso"), None);
    }

    #[test]
    fn statement_timeout_is_read_in_postgresqls_units() {
        let of = |statement: &str| {
            let mut settings = Settings::from_startup(&[]);
            settings.set("statement_timeout", statement);
            settings.statement_timeout()
        };
        let ms = std::time::Duration::from_millis;
        assert_eq!(of("SET statement_timeout = '300ms'"), Some(ms(300)));
        assert_eq!(of("set statement_timeout to 1500"), Some(ms(1500)));
        assert_eq!(of("SET statement_timeout = '2s'"), Some(ms(2000)));
        assert_eq!(
            of("SET SESSION statement_timeout TO '1 min'"),
            Some(ms(60_000))
        );
        assert_eq!(of("SET statement_timeout = 0"), None);
        assert_eq!(of("SET statement_timeout TO DEFAULT"), None);
        assert_eq!(
            of("SET statement_timeout = '99999999999999999999999999d'"),
            None
        );
        let startup = Settings::from_startup(&[(
            "options".to_string(),
            "-c statement_timeout=5s".to_string(),
        )]);
        assert_eq!(startup.statement_timeout(), Some(ms(5000)));
    }

    #[test]
    fn defaults_follow_the_keyed_settings_only() {
        let params = |tz: &str| {
            vec![
                ("TimeZone".to_string(), tz.to_string()),
                ("application_name".to_string(), "x".to_string()),
            ]
        };
        let utc = Defaults::from_params(&params("UTC"));
        assert_ne!(utc.hash(), 0);
        assert_eq!(utc, Defaults::from_params(&params("UTC")));
        let mut moved = utc.clone();
        assert!(!moved.set("application_name", "y"));
        assert!(moved.set("timezone", "Asia/Tokyo"));
        assert_ne!(moved.hash(), utc.hash());
        assert_eq!(moved, Defaults::from_params(&params("Asia/Tokyo")));
        // The settings PostgreSQL does not report: their digest.
        let row = |path: &str| {
            let mut row = vec![Some("x".to_string()); UNREPORTED_DEFAULTS.len()];
            row[0] = Some(path.to_string());
            row
        };
        let mut read = utc.clone();
        read.set_unreported(&row("public"));
        assert_ne!(read.hash(), utc.hash());
        assert_ne!(read.unreported(), utc.unreported());
        let mut again = utc.clone();
        again.set_unreported(&row("public"));
        assert_eq!(again, read);
        again.set_unreported(&row("elsewhere, public"));
        assert_ne!(again.hash(), read.hash());
        assert_eq!(utc.unreported(), &[0; 16]);
    }

    #[test]
    fn the_unreported_defaults_query_reads_each_in_order() {
        let query = Defaults::unreported_query();
        let mut at = 0;
        for name in UNREPORTED_DEFAULTS {
            let call = format!("current_setting('{name}', true)");
            let found = query[at..].find(&call).unwrap_or_else(|| panic!("{name}"));
            at += found + call.len();
        }
        // Then the default isolation, for routing (not in the digest).
        assert!(query[at..].contains("current_setting('default_transaction_isolation', true)"));
        assert_eq!(
            query.matches("current_setting").count(),
            UNREPORTED_DEFAULTS.len() + 1
        );
        // The catalog read's digest of them too.
        for name in UNREPORTED_DEFAULTS {
            assert!(
                crate::cache::DEPS_QUERY.contains(&format!("'{name}'")),
                "{name}"
            );
        }
    }

    #[test]
    fn the_prefilter_catches_session_statements_and_skips_plain_ones() {
        for sql in [
            "SET search_path = x",
            "  set TIME ZONE 'UTC'",
            "/* app */ SET x.y = 1",
            "BEGIN; SET foo = 1",
            "LISTEN chan",
            "SELECT pg_advisory_lock(1)",
            "SELECT set_config('a.b', '1', false)",
            "CREATE TEMP TABLE t (x int)",
            "SELECT 1 INTO TEMPORARY t",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "RESET ALL",
            "DISCARD ALL",
            "-- a comment\nSET search_path = x",
            "-- a comment\rSET search_path = x",
            "SELECT 1; /* c */ -- d\n ( reset all )",
            "SELECT pg_try_advisory_lock(7)",
            "SELECT PG_ADVISORY_LOCK_SHARED(7)",
            "SELECT pg_catalog.SET_CONFIG('a.b', '1', false)",
            "CREATE TABLE pg_temp.t (x int)",
            "select 1 into temp t",
            "SELECT lastval()",
            "select CURRVAL('s')",
        ] {
            assert!(may_affect_session(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "UPDATE t SET x = 1 WHERE id = 2",
            "SELECT * FROM settings",
            "INSERT INTO resets VALUES (1)",
            "",
            "/* unterminated",
            "-- only a comment",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT x_config, set_y FROM p_p _",
            "SELECT emp, p FROM tem",
        ] {
            assert!(!may_affect_session(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn verdicts_name_the_feature() {
        assert_eq!(judged("SELECT 1"), Verdict::Relay);
        assert_eq!(judged("SET LOCAL x.y = 1"), Verdict::Relay);
        assert_eq!(
            judged("SET search_path TO a, b"),
            Verdict::Track(Change::Set("search_path".into()))
        );
        assert_eq!(judged("RESET ALL"), Verdict::Track(Change::ResetAll));
        assert_eq!(
            judged("RESET search_path"),
            Verdict::Track(Change::Reset("search_path".into()))
        );
        for (sql, word) in [
            ("LISTEN chan", "LISTEN"),
            ("SELECT pg_advisory_lock(42)", "pg_advisory_lock"),
            ("CREATE TEMP TABLE t (x int)", "Temporary table"),
            (
                "CREATE TEMP TABLE t (x int) -- on commit drop",
                "Temporary table",
            ),
            (
                "CREATE TEMP TABLE a (x int); CREATE TEMP TABLE b (x int) ON COMMIT DROP",
                "Temporary table a",
            ),
            ("SELECT 1 AS x INTO TEMP t", "Temporary table"),
            ("PREPARE p AS SELECT 1", "PREPARE"),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD"),
            ("PREPARE p AS SELECT 1; SET search_path = x", "PREPARE"),
            (
                "PREPARE p AS SELECT 1; DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                "PREPARE",
            ),
            (
                "PREPARE p AS SELECT set_config('app.tenant', '42', false)",
                "session effects",
            ),
            (
                "PREPARE p AS UPDATE pg_settings SET setting = $1 WHERE name = 'work_mem'",
                "session effects",
            ),
            ("SELECT set_config($1, '1', false)", "set_config"),
            ("SET a.b = 1; RESET a.b", "several statements"),
            ("SET a.b = 1; RESET ALL", "several statements"),
            ("DISCARD ALL; SELECT 1", "several statements"),
            ("BEGIN; RESET work_mem; ROLLBACK", "several statements"),
            ("RESET ALL; COMMIT; SELECT 1/0", "several statements"),
        ] {
            match judged(sql) {
                Verdict::Refuse(m) => assert!(m.contains(word), "{sql}: {m}"),
                // (Let through in a transaction block.)
                Verdict::InBlockOnly(m) if sql == "PREPARE p AS SELECT 1" => {
                    assert!(m.contains("outside a transaction block"), "{sql}: {m}")
                }
                v => panic!("{sql}: {v:?}"),
            }
        }
        assert_eq!(
            judged("CREATE TEMP TABLE t (x int) ON COMMIT DROP"),
            Verdict::Relay
        );
        assert_eq!(
            judged("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1 AS x"),
            Verdict::Relay
        );
        assert_eq!(judged("SELECT pg_advisory_xact_lock(1)"), Verdict::Relay);
        // set_config by name: read back. Names differing only in literals share an
        // analysis; the verdict is the text's own.
        let after = |reread: &[&str], resets: Vec<Change>| Verdict::AfterRun {
            reread: reread.iter().map(|s| s.to_string()).collect(),
            resets,
        };
        assert_eq!(
            judged("SELECT set_config('a.b', '1', false)"),
            after(&["a.b"], vec![])
        );
        assert_eq!(
            judged("SELECT set_config('JIT', 'off', false); SELECT set_config('a.b', '1', false)"),
            after(&["a.b", "jit"], vec![])
        );
        assert_eq!(
            judged("SELECT set_config('a.b', '1', true)"),
            Verdict::Relay
        );
        // SET and RESET among several statements: read back, or confirmed once all ran.
        assert_eq!(
            judged("BEGIN; SET work_mem = '8MB'; COMMIT"),
            after(&["work_mem"], vec![])
        );
        // asyncpg's reset at the release of a pooled connection.
        assert_eq!(
            judged("SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;"),
            after(&[], vec![Change::ResetAll])
        );
        assert_eq!(
            judged("RESET search_path; SET work_mem = '8MB'"),
            after(&["work_mem"], vec![Change::Reset("search_path".into())])
        );
        assert_eq!(
            judged("BEGIN; RESET search_path"),
            after(&[], vec![Change::Reset("search_path".into())])
        );
        assert_eq!(
            judged("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; SET \"App.User\" = 'a'"),
            after(&["app.user", "session characteristics"], vec![])
        );
        assert_eq!(
            judged("SELECT set_config('session_authorization', 'r2', false)"),
            after(&["session_authorization", "role"], vec![])
        );
    }

    #[test]
    fn sync_applies_differences_only() {
        let params = vec![
            ("application_name".to_string(), "app".to_string()),
            (
                "options".to_string(),
                "-c search_path=s1 --statement-timeout=5s".to_string(),
            ),
        ];
        let mut client = Settings::from_startup(&params);
        let mut server = Applied::default();
        let first = client.sync(&mut server);
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first
            .iter()
            .any(|s| s == "SET \"statement_timeout\" TO '5s'"));
        assert!(
            first
                .iter()
                .any(|s| s.contains("set_config('search_path', 's1'")),
            "a quoted list is set with set_config: {first:?}"
        );
        assert!(client.sync(&mut server).is_empty(), "in sync");
        client.set("TimeZone", "SET TIME ZONE 'UTC'");
        assert_eq!(client.sync(&mut server), vec!["SET TIME ZONE 'UTC'"]);
        // Another client with no settings resets what this one left.
        let other = Settings::from_startup(&[]);
        let resets = other.sync(&mut server);
        assert_eq!(resets.len(), 4);
        assert!(resets.iter().all(|s| s.starts_with("RESET ")), "{resets:?}");
        client.reset_all();
        assert_eq!(client.sync(&mut server).len(), 3);
        assert_eq!(quote_literal("it's"), "'it''s'");
        // The session authorization goes before the role (it sets the role to none),
        // and RESET ALL keeps both.
        client.set("session_authorization", "SET SESSION AUTHORIZATION r2");
        client.set("role", "SET ROLE r1");
        let mut fresh = Applied::default();
        let statements = client.sync(&mut fresh);
        let at = |s: &str| statements.iter().position(|x| x == s).unwrap();
        assert!(
            at("SET SESSION AUTHORIZATION r2") < at("SET ROLE r1"),
            "{statements:?}"
        );
        client.reset_all();
        fresh.reset_all();
        // The other settings change as the login user: its authorization and role
        // are undone first, and set again last.
        let again = client.sync(&mut fresh);
        assert_eq!(again[0], "RESET \"session_authorization\"", "{again:?}");
        assert_eq!(
            again[again.len() - 2..],
            ["SET SESSION AUTHORIZATION r2", "SET ROLE r1"]
        );
        assert!(client.sync(&mut fresh).is_empty());
        // A new session authorization drops the role, on both sides.
        client.set("session_authorization", "SET SESSION AUTHORIZATION r3");
        client.set("role", "SET ROLE r1");
        assert_eq!(
            client.sync(&mut fresh),
            vec!["SET SESSION AUTHORIZATION r3", "SET ROLE r1"]
        );
    }
}
