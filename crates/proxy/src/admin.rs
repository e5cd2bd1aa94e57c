//! The admin console: a client that connects to the virtual database `pgopt` gets
//! SHOW views, RELOAD, PAUSE, RESUME and SHUTDOWN over the simple query protocol.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgopt_wire::backend::{
    BackendKeyData, CommandComplete, DataRow, FieldDescription, ParameterStatus, ReadyForQuery,
    RowDescription,
};
use pgopt_wire::frontend::Query;
use pgopt_wire::{
    split_frame, sqlstate, DecodeError, EncodeError, ErrorBuilder, Format, List, Severity,
    TransactionStatus,
};
use tokio::io::AsyncReadExt;

use crate::config::SetError;
use crate::insight_views;
use crate::io::{send_fatal, write_all_bounded};
use crate::net::ClientStream;
use crate::shared::{Lifecycle, Shared};
use crate::stats::ClientInfo;
use crate::views::{self, Kind, Table};
use crate::ProxyError;

/// Who is on the console: an admin user, or a stats user who may only look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    Stats(String),
}

/// What an admin command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(String),
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    Shutdown,
    /// RESET QUERIES: query insight starts over (statistics, slow log, N+1 findings).
    ResetQueries,
    /// CACHE FLUSH [table]: result cache entries end (of one table, or all).
    CacheFlush(Option<String>),
    /// RECONNECT [db]: server connections close and new ones are opened.
    Reconnect(Option<String>),
    /// WAIT_CLOSE [db]: returns once every server connection a RECONNECT or KILL
    /// marked (SHOW SERVERS' `close_needed`) has closed.
    WaitClose(Option<String>),
    /// KILL db: its clients and server connections are closed; it stays paused.
    Kill(String),
    /// DISABLE db / ENABLE db: new clients of it are refused / taken again.
    Disable(String),
    Enable(String),
    /// SET key = value: one setting changed until the next RELOAD (PgBouncer's).
    Set(String, String),
    /// An empty query string.
    Empty,
}

impl Command {
    /// The database a command names, which must be a configured one.
    fn database(&self) -> Option<&str> {
        match self {
            Command::Pause(db)
            | Command::Resume(db)
            | Command::Reconnect(db)
            | Command::WaitClose(db) => db.as_deref(),
            Command::Kill(db) | Command::Disable(db) | Command::Enable(db) => Some(db),
            _ => None,
        }
    }
}

/// Parses one admin command: case-insensitive keywords, an optional trailing `;`.
pub fn parse(sql: &str) -> Result<Command, String> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = sql.split_whitespace().collect();
    let upper = |i: usize| words.get(i).map(|w| w.to_ascii_uppercase());
    let name = |i: usize| words.get(i).map(|w| w.trim_matches('"').to_string());
    let command = match upper(0).as_deref() {
        None => Command::Empty,
        Some("SHOW") if words.len() == 2 => Command::Show(words[1].to_ascii_lowercase()),
        Some("SHOW")
            if words.len() == 3
                && upper(1).as_deref() == Some("CACHE")
                && upper(2).as_deref() == Some("TABLES") =>
        {
            Command::Show("cache tables".into())
        }
        Some("RELOAD") if words.len() == 1 => Command::Reload,
        Some("PAUSE") if words.len() <= 2 => Command::Pause(name(1)),
        Some("RESUME") if words.len() <= 2 => Command::Resume(name(1)),
        Some("SHUTDOWN") if words.len() == 1 => Command::Shutdown,
        Some("RECONNECT") if words.len() <= 2 => Command::Reconnect(name(1)),
        Some("WAIT_CLOSE") if words.len() <= 2 => Command::WaitClose(name(1)),
        Some(verb @ ("KILL" | "DISABLE" | "ENABLE"))
            if words.len() == 2 && name(1).is_some_and(|n| !n.is_empty()) =>
        {
            let db = name(1).unwrap_or_default();
            match verb {
                "KILL" => Command::Kill(db),
                "DISABLE" => Command::Disable(db),
                _ => Command::Enable(db),
            }
        }
        Some("CACHE") if upper(1).as_deref() == Some("FLUSH") && words.len() <= 3 => {
            Command::CacheFlush(name(2))
        }
        Some("RESET") if upper(1).as_deref() == Some("QUERIES") && words.len() == 2 => {
            Command::ResetQueries
        }
        Some("SET") => parse_set(sql)?,
        _ => {
            return Err(format!(
                "unknown admin command: {sql:?}; try SHOW HELP ({})",
                views::HELP
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    Ok(command)
}

/// `SET key = value` or `SET key TO value`; the value may be single-quoted.
fn parse_set(sql: &str) -> Result<Command, String> {
    let form = "expected SET key = value";
    let rest = sql[3..].trim_start();
    // `key TO value` when the word after the key is TO, else `key = value`.
    let to = rest
        .split_once(char::is_whitespace)
        .and_then(|(key, after)| {
            let after = after.trim_start();
            let value = after.get(..2).filter(|w| w.eq_ignore_ascii_case("to"))?;
            let value = &after[value.len()..];
            value
                .starts_with(char::is_whitespace)
                .then(|| (key, value.trim()))
        });
    let (key, value) = match to {
        Some(pair) => pair,
        None => {
            let (key, value) = rest.split_once('=').ok_or(form)?;
            (key.trim(), value.trim())
        }
    };
    let value = match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(quoted) => quoted.replace("''", "'"),
        None => value.to_string(),
    };
    if key.is_empty() || key.contains(char::is_whitespace) || value.is_empty() {
        return Err(format!("{form}, found {sql:?}"));
    }
    Ok(Command::Set(key.to_string(), value))
}

/// Serves one admin client until it leaves.
pub async fn serve(
    mut stream: ClientStream,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    info: Arc<ClientInfo>,
    role: Role,
) -> Result<(), ProxyError> {
    let max_len = shared.config().max_message_len;
    let mut out = BytesMut::with_capacity(1024);
    let version = format!("15.0 (pgopt {})", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgopt"),
    ] {
        ParameterStatus { name, value }.encode(&mut out)?;
    }
    BackendKeyData {
        process_id: 0,
        secret_key: 0,
    }
    .encode(&mut out);
    ready(&mut out);
    let mut lifecycle = shared.lifecycle();
    // Extended-protocol messages are refused once, then skipped up to Sync.
    let mut skipping = false;
    loop {
        if !out.is_empty() {
            // Given up when the session is killed (a shutdown past its timeout) while
            // the client does not read.
            write_all_bounded(&mut stream, &out, &info, None).await?;
            out.clear();
        }
        let frame = loop {
            match split_frame(&mut buf, max_len) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(source) => {
                    send_fatal(
                        &mut stream,
                        sqlstate::PROTOCOL_VIOLATION,
                        &source.to_string(),
                    )
                    .await;
                    return Err(ProxyError::Decode {
                        peer: "client",
                        source,
                    });
                }
            }
            tokio::select! {
                read = stream.read_buf(&mut buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return Ok(());
                    }
                }
                _ = lifecycle.changed() => {
                    if *lifecycle.borrow_and_update() >= Lifecycle::Draining {
                        send_fatal(&mut stream, sqlstate::ADMIN_SHUTDOWN, "pgopt is shutting down")
                            .await;
                        return Ok(());
                    }
                }
            }
        };
        match frame.tag() {
            b'X' => return Ok(()),
            b'S' => {
                skipping = false;
                ready(&mut out);
            }
            // As PostgreSQL after an error in an extended-protocol batch: everything
            // up to its Sync is passed over (but a type no frontend sends, below).
            b'Q' | b'F' | b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'd' | b'c' | b'f'
                if skipping => {}
            b'Q' => {
                let sql = match Query::decode(frame.body()) {
                    Ok(q) => q.sql,
                    // As PostgreSQL: text that is not UTF-8 is an error, and the
                    // session goes on.
                    Err(DecodeError::InvalidUtf8 { .. }) => {
                        error(
                            &mut out,
                            sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
                            "invalid byte sequence for encoding \"UTF8\" (the admin console reads UTF-8)",
                        )?;
                        ready(&mut out);
                        continue;
                    }
                    // A malformed message ends the session, with the reason.
                    Err(source) => {
                        send_fatal(
                            &mut stream,
                            sqlstate::PROTOCOL_VIOLATION,
                            &source.to_string(),
                        )
                        .await;
                        return Err(ProxyError::Decode {
                            peer: "client",
                            source,
                        });
                    }
                };
                match parse(sql) {
                    // A stats user may look (SHOW) but not act.
                    Ok(command) => match &role {
                        Role::Stats(user)
                            if !matches!(command, Command::Show(_) | Command::Empty) =>
                        {
                            let message = format!(
                                "user \"{user}\" may only run SHOW commands (proxy.stats_users); \
                                 the others need proxy.admin_users"
                            );
                            error(&mut out, sqlstate::INSUFFICIENT_PRIVILEGE, &message)?;
                        }
                        _ => run(&shared, command, &mut out).await?,
                    },
                    Err(message) => error(&mut out, sqlstate::SYNTAX_ERROR, &message)?,
                }
                ready(&mut out);
            }
            // A function call is answered as a query is: with a ReadyForQuery.
            b'F' => {
                error(
                    &mut out,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the pgopt admin console runs no functions: send its commands as simple queries",
                )?;
                ready(&mut out);
            }
            // As PostgreSQL: a Flush has nothing to flush here, and COPY messages
            // outside a COPY are ignored.
            b'H' | b'd' | b'c' | b'f' => {}
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                skipping = true;
                error(
                    &mut out,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the pgopt admin console speaks only the simple query protocol",
                )?;
            }
            // What no frontend sends ends the session, as on PostgreSQL.
            tag => {
                let message = format!("invalid frontend message type {tag}");
                send_fatal(&mut stream, sqlstate::PROTOCOL_VIOLATION, &message).await;
                return Ok(());
            }
        }
    }
}

async fn run(shared: &Arc<Shared>, command: Command, out: &mut BytesMut) -> Result<(), ProxyError> {
    if let Some(e) = unknown_db(shared, command.database()) {
        return Ok(error(out, sqlstate::INVALID_CATALOG_NAME, &e)?);
    }
    match command {
        Command::Empty => {
            out.extend_from_slice(b"I\0\0\0\x04"); // EmptyQueryResponse
        }
        Command::Show(what) => {
            let table = match what.as_str() {
                "pools" => views::pools(shared),
                "clients" => views::clients(shared),
                "servers" => views::servers(shared),
                "stats" => views::stats(shared),
                "stats_totals" => views::stats_half(shared, false),
                "stats_averages" => views::stats_half(shared, true),
                "totals" => views::totals(shared),
                "users" => views::users(shared),
                "databases" => views::databases(shared),
                "config" => views::config(shared),
                "lists" => views::lists(shared),
                "version" => views::version(),
                "state" => views::state(shared),
                "help" => views::help(),
                "queries" => insight_views::queries(shared),
                "slow" => insight_views::slow(shared),
                "nplus1" => insight_views::n_plus_one(shared),
                "plans" => insight_views::plans(shared),
                "replicas" => views::replicas(shared),
                "cache" => crate::cache::view(shared.cache.as_deref()),
                "cache tables" => crate::cache_views::tables(shared.cache.as_deref()),
                other => {
                    let message =
                        format!("SHOW {other}: no such view; SHOW HELP lists the admin commands");
                    return Ok(error(out, sqlstate::SYNTAX_ERROR, &message)?);
                }
            };
            encode_table(&table, out)?;
            complete(out, "SHOW")?;
        }
        Command::CacheFlush(table) => match &shared.cache {
            Some(cache) => {
                cache.flush(table.as_deref());
                complete(out, "CACHE FLUSH")?;
            }
            None => error(
                out,
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "CACHE FLUSH: the result cache is off ([cache] enabled = false)",
            )?,
        },
        Command::ResetQueries => {
            if let Some(insight) = &shared.insight {
                insight.store.reset();
                insight.slow.clear();
                insight.n_plus_one.clear();
            }
            complete(out, "RESET")?;
        }
        Command::Set(key, value) => {
            // As RELOAD applies a config (off the event loop: users' passwords are
            // hashed again); the next RELOAD reads the file and undoes it.
            let set = shared.clone();
            let (k, v) = (key.clone(), value.clone());
            let applied = tokio::task::spawn_blocking(move || set.set(&k, &v))
                .await
                .unwrap_or_else(|e| Err(SetError::Failed(e.to_string())));
            let (code, message) = match applied {
                Ok(()) => {
                    tracing::info!(%key, %value, "SET on the admin console");
                    return Ok(complete(out, "SET")?);
                }
                // A setting SHOW CONFIG lists that SET does not change: what does,
                // by its `changeable` column.
                Err(SetError::Unknown(m)) => match views::changeable(&key) {
                    Some(reload) => (
                        sqlstate::CANT_CHANGE_RUNTIME_PARAM,
                        format!(
                            "parameter \"{key}\" cannot be changed with SET: it takes {}",
                            if reload {
                                "the config file and RELOAD"
                            } else {
                                "a restart"
                            }
                        ),
                    ),
                    None => (sqlstate::UNDEFINED_OBJECT, m),
                },
                Err(SetError::Invalid(m)) => (sqlstate::INVALID_PARAMETER_VALUE, m),
                Err(SetError::Failed(m)) => (
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("SET: {m}"),
                ),
            };
            error(out, code, &message)?;
        }
        Command::Reload => {
            // Off the event loop, which other sessions share: reading the file,
            // hashing the users' passwords.
            let shared = shared.clone();
            let reloaded = tokio::task::spawn_blocking(move || shared.reload())
                .await
                .unwrap_or_else(|e| Err(format!("the reload stopped: {e}")));
            match reloaded {
                Ok(()) => complete(out, "RELOAD")?,
                Err(e) => error(out, sqlstate::CONNECTION_EXCEPTION, &format!("RELOAD: {e}"))?,
            }
        }
        // As PgBouncer, a PAUSE of what is paused, or a RESUME of what is not, is an
        // error (a script that pauses twice would else resume once and think it done).
        Command::Pause(db)
            if db
                .as_deref()
                .map_or(shared.paused_all(), |d| shared.is_db_paused(d)) =>
        {
            let message = match db {
                Some(db) => format!("database {db} is already paused"),
                None => "pgopt is already paused".into(),
            };
            error(out, sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, &message)?;
        }
        Command::Pause(db) => {
            if pause(shared, db.as_deref()).await {
                complete(out, "PAUSE")?;
            } else {
                // A script that took this for done would go on as if nothing ran.
                error(
                    out,
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "PAUSE: a RESUME came before every server connection was back: nothing is paused",
                )?;
            }
        }
        // As PgBouncer's, a PAUSE of everything and one of a database are apart: each
        // RESUME undoes its own (the message says which other stands).
        Command::Resume(db)
            if !db
                .as_deref()
                .map_or(shared.paused_all(), |d| shared.is_db_paused(d)) =>
        {
            let message = match db {
                Some(db) if shared.paused_all() => format!(
                    "database {db} is not paused itself: all of pgopt is (RESUME without a database)"
                ),
                Some(db) => format!("database {db} is not paused"),
                None => match shared.paused_dbs().as_slice() {
                    [] => "pgopt is not paused".into(),
                    dbs => format!(
                        "pgopt is not paused as a whole; paused databases: {} (RESUME <database>)",
                        dbs.join(", ")
                    ),
                },
            };
            error(out, sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, &message)?;
        }
        Command::Resume(db) => {
            shared.set_paused(db.as_deref(), false);
            complete(out, "RESUME")?;
        }
        Command::Shutdown => {
            shared.shutdown();
            complete(out, "SHUTDOWN")?;
        }
        Command::Reconnect(db) => {
            shared.reconnect(db.as_deref());
            complete(out, "RECONNECT")?;
        }
        Command::WaitClose(db) => {
            // As PgBouncer's: as long as it takes (a client holding its connection in
            // a transaction holds this up too).
            let mut stopping = false;
            while shared.closing(db.as_deref()) > 0 {
                // A shutdown ends the wait (it closes everything anyway).
                if shared.lifecycle_now() != crate::shared::Lifecycle::Running {
                    stopping = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            if stopping {
                error(
                    out,
                    sqlstate::CANNOT_CONNECT_NOW,
                    "WAIT_CLOSE: pgopt is shutting down",
                )?;
            } else {
                complete(out, "WAIT_CLOSE")?;
            }
        }
        Command::Kill(db) => {
            shared.kill(&db);
            complete(out, "KILL")?;
        }
        Command::Disable(ref db) | Command::Enable(ref db) => {
            let disable = matches!(command, Command::Disable(_));
            shared.set_disabled(db, disable);
            complete(out, if disable { "DISABLE" } else { "ENABLE" })?;
        }
    }
    Ok(())
}

fn unknown_db(shared: &Shared, db: Option<&str>) -> Option<String> {
    let db = db?;
    let known = shared.config().database(db).is_some();
    (!known).then(|| format!("database \"{db}\" does not exist"))
}

/// PAUSE: new transactions wait; returns once every lent server connection is back,
/// then closes the idle ones (as PgBouncer does). `false`: a RESUME ended it first.
async fn pause(shared: &Shared, db: Option<&str>) -> bool {
    shared.set_paused(db, true);
    let mine = |p: &&Arc<crate::pool::Pool>| db.is_none_or(|d| p.database == d);
    loop {
        let pools = shared.live_pools();
        // RESUME from another console ends the wait.
        let still = db.map_or(shared.paused_all(), |d| shared.is_db_paused(d));
        if !still {
            return false;
        }
        if !pools.iter().filter(mine).any(|p| p.busy()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for pool in shared.live_pools().iter().filter(mine) {
        pool.close_idle();
    }
    true
}

fn encode_table(table: &Table, out: &mut BytesMut) -> Result<(), EncodeError> {
    let fields: Vec<FieldDescription> = table
        .columns
        .iter()
        .map(|(name, kind)| FieldDescription {
            name,
            table_oid: 0,
            column_id: 0,
            type_oid: match kind {
                Kind::Text => 25,
                Kind::Int => 20,
                Kind::Float => 701,
            },
            type_size: match kind {
                Kind::Text => -1,
                Kind::Int | Kind::Float => 8,
            },
            type_modifier: -1,
            format: Format::Text,
        })
        .collect();
    RowDescription {
        fields: List::from(fields.as_slice()),
    }
    .encode(out)?;
    for row in &table.rows {
        let values: Vec<Option<&[u8]>> = row
            .iter()
            .map(|v| v.as_deref().map(str::as_bytes))
            .collect();
        DataRow {
            values: List::from(values.as_slice()),
        }
        .encode(out)?;
    }
    Ok(())
}

fn complete(out: &mut BytesMut, tag: &str) -> Result<(), EncodeError> {
    CommandComplete { tag }.encode(out)
}

fn error(out: &mut BytesMut, code: &str, message: &str) -> Result<(), EncodeError> {
    ErrorBuilder::new(Severity::Error, code, message).encode_error(out)
}

fn ready(out: &mut BytesMut) {
    ReadyForQuery {
        status: TransactionStatus::Idle,
    }
    .encode(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_loosely_and_reject_the_unknown() {
        assert_eq!(parse("show pools;"), Ok(Command::Show("pools".into())));
        assert_eq!(parse("  SHOW   Stats "), Ok(Command::Show("stats".into())));
        assert_eq!(parse("PAUSE"), Ok(Command::Pause(None)));
        assert_eq!(parse("pause app"), Ok(Command::Pause(Some("app".into()))));
        assert_eq!(
            parse("RESUME \"app\";"),
            Ok(Command::Resume(Some("app".into())))
        );
        assert_eq!(parse("reload"), Ok(Command::Reload));
        assert_eq!(parse("SHUTDOWN;"), Ok(Command::Shutdown));
        assert_eq!(parse(" ; "), Ok(Command::Empty));
        assert_eq!(parse("reconnect"), Ok(Command::Reconnect(None)));
        assert_eq!(
            parse("RECONNECT app"),
            Ok(Command::Reconnect(Some("app".into())))
        );
        assert_eq!(parse("kill app;"), Ok(Command::Kill("app".into())));
        assert!(parse("KILL").is_err());
        assert_eq!(parse("DISABLE app"), Ok(Command::Disable("app".into())));
        assert_eq!(parse("enable \"app\""), Ok(Command::Enable("app".into())));
        assert!(parse("ENABLE").is_err());
        assert!(parse("KILL \"\"").is_err());
        let e = parse("DROP TABLE x").unwrap_err();
        assert!(e.contains("SHOW HELP"), "{e}");
        assert!(parse("SHOW").is_err());
        assert!(parse("PAUSE a b").is_err());
        let set = |k: &str, v: &str| Ok(Command::Set(k.into(), v.into()));
        assert_eq!(
            parse("SET default_pool_size = 50;"),
            set("default_pool_size", "50")
        );
        assert_eq!(
            parse("set query_timeout to '2s'"),
            set("query_timeout", "2s")
        );
        assert_eq!(
            parse("SET pool_mode='session'"),
            set("pool_mode", "session")
        );
        assert_eq!(parse("SET x = 'it''s'"), set("x", "it's"));
        assert_eq!(parse("SET x TO 'a=b'"), set("x", "a=b"));
        for bad in ["SET", "SET x", "SET x =", "SET x TOy", "SET a b = 1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
