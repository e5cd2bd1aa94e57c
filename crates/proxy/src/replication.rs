//! Replication connections: a client whose start-up packet says `replication=true`
//! (physical: pg_basebackup, pg_receivewal, a standby's `primary_conninfo`) or
//! `replication=database` (logical: pg_recvlogical, a subscription's `CONNECTION`).
//!
//! As PgBouncer 1.23 does, each gets a server connection of its own, opened with the
//! client's start-up parameters (`application_name`, which `synchronous_standby_names`
//! names standbys by; `options`) and paired with the client for life: the bytes pass
//! both ways untouched (the walsender's commands and COPY BOTH are not pooled or
//! read), and when either side closes, so does the other. The pair is not pooled: a
//! walsender takes one of the server's `max_wal_senders` places, not one of
//! `max_connections`, so it is counted in `max_client_conn` but not in the pool's size
//! or `max_db_connections`. SHOW CLIENTS and SHOW SERVERS list both ends, with a
//! `replication` column; a CancelRequest reaches the walsender; KILL and a shutdown
//! past `shutdown_timeout` end the pair (a drain waits for it, as for a transaction).
//!
//! A logical walsender runs SQL too (simple protocol only). With the result cache on,
//! its Queries are read as they pass, and their writes end the entries they reach as
//! an ordinary client's do (`CacheWatch`); a walsender whose client left with writes
//! in flight finishes them before they are invalidated, and only then closes.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use pgopt_wire::frontend::Query;
use pgopt_wire::sqlstate;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cache::{PendingWrites, ProxyCache};
use crate::io::{send_fatal, write_all};
use crate::net::ClientStream;
use crate::pool::{CheckoutError, Pool};
use crate::session::{checkout_error, login_reply, new_cancel_key, CancelSlot, Startup};
use crate::shared::{Lifecycle, Shared};
use crate::stats::{unix_us_now, ClientInfo, ClientState};
use crate::ProxyError;

/// What a start-up packet's `replication` parameter asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Replication {
    /// A normal connection (no `replication`, or a false value).
    None = 0,
    /// `replication=true`: a physical walsender, for any database.
    Physical = 1,
    /// `replication=database`: a logical walsender of the database asked for.
    Logical = 2,
}

impl Replication {
    /// Read as PostgreSQL reads it: `database`, or a boolean (`true`, `on`, `yes`,
    /// `1` and their unique prefixes, any case); anything else is refused with its
    /// SQLSTATE and message. So is a second `replication` (PostgreSQL would take the
    /// last, pgopt's rules and the server could read different ones).
    pub fn of(params: &[(String, String)]) -> Result<Replication, (&'static str, String)> {
        let mut given = params.iter().filter(|(name, _)| name == "replication");
        let Some((_, value)) = given.next() else {
            return Ok(Replication::None);
        };
        if given.next().is_some() {
            let message = "parameter \"replication\" given more than once".to_string();
            return Err((sqlstate::PROTOCOL_VIOLATION, message));
        }
        if value == "database" {
            return Ok(Replication::Logical);
        }
        match parse_bool(value) {
            Some(true) => Ok(Replication::Physical),
            Some(false) => Ok(Replication::None),
            None => Err((sqlstate::INVALID_PARAMETER_VALUE, format!(
                "invalid value for parameter \"replication\": \"{value}\" (valid values are \"false\", 0, \"true\", 1, \"database\")"
            ))),
        }
    }

    /// What the server is sent for it.
    fn value(self) -> &'static str {
        match self {
            Replication::Logical => "database",
            _ => "true",
        }
    }

    /// As the views show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Replication::None => "none",
            Replication::Physical => "physical",
            Replication::Logical => "logical",
        }
    }

    fn from_u8(v: u8) -> Replication {
        match v {
            1 => Replication::Physical,
            2 => Replication::Logical,
            _ => Replication::None,
        }
    }
}

/// A connection's [`Replication`], for the views (set once it is known).
#[derive(Debug, Default)]
pub struct ReplicationCell(AtomicU8);

impl ReplicationCell {
    pub fn set(&self, kind: Replication) {
        self.0.store(kind as u8, Relaxed);
    }

    pub fn get(&self) -> Replication {
        Replication::from_u8(self.0.load(Relaxed))
    }
}

/// PostgreSQL's `parse_bool`: a whole word or a unique prefix of one, any case.
pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    let v = value.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || v == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || v == "0" {
        Some(false)
    } else {
        None
    }
}

/// Serves a logged-in replication client: opens its server connection, tells it the
/// server's start-up answers (with a cancel key of pgopt's), then passes bytes both
/// ways until one side closes.
pub async fn serve(
    mut stream: ClientStream,
    buf: BytesMut,
    shared: &Arc<Shared>,
    info: &Arc<ClientInfo>,
    pool: &Arc<Pool>,
    startup: &Startup,
    kind: Replication,
) -> Result<(), ProxyError> {
    info.replication.set(kind);
    info.set_state(ClientState::Waiting, unix_us_now());
    // The client's own parameters for the walsender, its `replication` as read here.
    let mut extra: Vec<(&str, &str)> = startup
        .params
        .iter()
        .filter(|(k, _)| k != "replication")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    extra.push(("replication", kind.value()));
    let connecting = async {
        tokio::select! {
            r = pool.connect_dedicated(&extra) => Some(r),
            () = info.until_killed() => None,
        }
    };
    let Some(connected) = connecting.await else {
        send_fatal(&mut stream, sqlstate::ADMIN_SHUTDOWN, ended_why(shared)).await;
        return Ok(());
    };
    let conn = match connected {
        Ok(conn) => conn,
        Err(e) => {
            // Before AuthenticationOk, as PostgreSQL refuses a login: the server's own
            // refusal (no pg_hba.conf entry for replication, no REPLICATION role…).
            let (code, message) = match e {
                CheckoutError::Connect(ProxyError::Refused { code, message, .. }) => {
                    (code, message)
                }
                e => {
                    let (code, message) = checkout_error(pool, e);
                    (code.to_string(), message)
                }
            };
            pool.stats.record_error(code.as_bytes());
            send_fatal(&mut stream, &code, &message).await;
            return Ok(());
        }
    };
    // A shutdown or KILL may have come while it waited or connected.
    if shared.lifecycle_now() != Lifecycle::Running || info.killed() {
        send_fatal(&mut stream, sqlstate::ADMIN_SHUTDOWN, ended_why(shared)).await;
        return Ok(());
    }
    conn.info.replication.set(kind);
    conn.info.set_link(info.id, unix_us_now());
    pool.servers.add(&conn.info);
    info.set_link(conn.info.id);
    info.set_state(ClientState::Active, unix_us_now());

    let key = new_cancel_key()?;
    let cancel_slot: CancelSlot = Arc::new(crate::session::CancelTarget {
        route: Mutex::new(Some(conn.cancel.clone())),
        ..Default::default()
    });
    shared.register_cancel(key, &cancel_slot);
    // SQL on a logical walsender may write: the cache hears of it.
    let watch = shared
        .cache
        .clone()
        .filter(|_| kind == Replication::Logical)
        .map(|cache| CacheWatch {
            cache,
            database: &pool.database,
            fence: pool.fence_key.clone(),
            analyzer: &shared.analyzer,
            pending: Mutex::default(),
            outstanding: AtomicUsize::new(0),
        });
    let result = relay(stream, buf, shared, info, conn, key, watch).await;
    shared.unregister_cancel(key);
    result
}

async fn relay(
    mut stream: ClientStream,
    buf: BytesMut,
    shared: &Shared,
    info: &ClientInfo,
    conn: crate::server::ServerConn,
    key: pgopt_wire::startup::CancelRequest,
    watch: Option<CacheWatch<'_>>,
) -> Result<(), ProxyError> {
    let params = conn.params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let mut out = login_reply(params, key, conn.status)?;
    // What the server sent beyond its start-up answers (nothing, unless asked).
    out.extend_from_slice(&conn.read_buf);
    let boundary = Boundary::default();
    boundary.framer().advance(&conn.read_buf, b"", |_, _, _| {});
    write_all(&mut stream, &out).await?;

    let cancel = conn.cancel.clone();
    let conn_info = conn.info.clone();
    let mut server = conn.stream;
    let mut up_framer = Framer::default();
    if !buf.is_empty() {
        // What the client sent right behind its start-up packet.
        if let Some(watch) = &watch {
            up_framer.advance(&buf, WATCHED, |tag, body, _| watch.note(tag, body));
        }
        let sent = async {
            server.write_all(&buf).await?;
            server.flush().await
        };
        if let Err(e) = sent.await {
            if let Some(watch) = &watch {
                watch.settle(false).await;
            }
            return Err(ProxyError::server_io(e));
        }
    }
    let (mut client_read, mut client_write) = tokio::io::split(stream);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let (ended, server_closed) = {
        let up = async {
            let _ = pump_up(
                &mut client_read,
                &mut server_write,
                up_framer,
                watch.as_ref(),
            )
            .await;
            // The client is gone or said Terminate: the walsender ends too.
            let _ = server_write.shutdown().await;
            std::future::pending::<()>().await
        };
        let down = pump_down(
            &mut server_read,
            &mut client_write,
            &boundary,
            watch.as_ref(),
        );
        tokio::select! {
            () = up => (false, false),
            r = down => (false, r.is_ok()),
            () = until_ended(shared, info) => (true, false),
        }
    };
    let server = server_read.unsplit(server_write);
    match &watch {
        // Writes in flight on a walsender still running: they are invalidated once it
        // has finished them (in the background: the session ends now; the walsender
        // ends once it has answered, or been canceled).
        Some(watch) if !server_closed && watch.in_flight() => {
            let framer = boundary.framer().clone();
            watch.settle_departed(server, framer, cancel, conn_info.clone());
        }
        // The walsender goes first: a KILL frees its place whatever the client does.
        Some(watch) => {
            drop(server);
            // A write whose end was not seen may have committed: its entries end too.
            watch.settle(false).await;
        }
        None => drop(server),
    }
    let mut client = client_read.unsplit(client_write);
    if ended && boundary.between() {
        send_fatal(&mut client, sqlstate::ADMIN_SHUTDOWN, ended_why(shared)).await;
    }
    // (Bounded: a client that reads nothing would hold a TLS close for ever.)
    let _ = tokio::time::timeout(CLOSE_WAIT, client.shutdown()).await;
    Ok(())
}

/// How long a client's connection may take to close.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The most of one client query kept for the cache's look at it (beyond it, the
/// query counts as a write to everything).
const MAX_KEPT_QUERY: usize = 1 << 20;

/// Why a pair ends: the shutdown, or else a KILL (the messages other sessions give).
fn ended_why(shared: &Shared) -> &'static str {
    if shared.lifecycle_now() >= Lifecycle::Draining {
        crate::relay::SHUTTING_DOWN
    } else {
        crate::relay::KILLED
    }
}

/// Client to server: copies until the client ends or either side fails; with a
/// `watch`, each Query is noted for the cache before it goes.
async fn pump_up<R, W>(
    from: &mut R,
    to: &mut W,
    mut framer: Framer,
    watch: Option<&CacheWatch<'_>>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if let Some(watch) = watch {
            framer.advance(&buf[..n], WATCHED, |tag, body, _| watch.note(tag, body));
        }
        to.write_all(&buf[..n]).await?;
        // TLS holds written bytes until flushed.
        to.flush().await?;
    }
}

/// Server to client: copies until the server ends or either side fails, following
/// where the bytes stand in its messages (see [`Boundary`]); with a `watch`, the
/// writes of a transaction end their cache entries before the last byte of the
/// ReadyForQuery that ends it goes.
async fn pump_down<R, W>(
    from: &mut R,
    to: &mut W,
    boundary: &Boundary,
    watch: Option<&CacheWatch<'_>>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Vec::new();
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        events.clear();
        let keep: &[u8] = if watch.is_some() { b"ZC" } else { b"" };
        boundary
            .framer()
            .advance(&buf[..n], keep, |tag, body, end| {
                events.push((end - 1, Event::of(tag, body)));
            });
        boundary.writing(true);
        let mut at = 0;
        for (k, &(cut, event)) in events.iter().enumerate() {
            let Some(watch) = watch else { break };
            // (A COMMIT whose idle ReadyForQuery came with it: that one settles.)
            if event == Event::Commit && events.get(k + 1).map(|e| e.1) == Some(Event::Ready(b'I'))
            {
                continue;
            }
            let Some(keep) = watch.ends(event) else {
                continue;
            };
            // Up to the message's last byte: the client hears it once the cache has.
            to.write_all(&buf[at..cut]).await?;
            to.flush().await?;
            watch.settle(keep).await;
            at = cut;
        }
        to.write_all(&buf[at..n]).await?;
        to.flush().await?;
        boundary.writing(false);
    }
}

/// A server message that may end a transaction, for the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// ReadyForQuery, with its transaction status.
    Ready(u8),
    /// CommandComplete of a COMMIT (also inside a query of several statements).
    Commit,
    Other,
}

impl Event {
    fn of(tag: u8, body: Option<&[u8]>) -> Event {
        match (tag, body) {
            (b'Z', Some([status])) => Event::Ready(*status),
            (b'Z', _) => Event::Ready(0),
            (b'C', Some(body)) if body.starts_with(b"COMMIT") => Event::Commit,
            _ => Event::Other,
        }
    }
}

/// Returns once the client is KILLed or the shutdown's time is up.
async fn until_ended(shared: &Shared, info: &ClientInfo) {
    loop {
        let woken = info.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if info.killed() || shared.lifecycle_now() >= Lifecycle::Closing {
            return;
        }
        woken.await;
    }
}

/// The result cache's part in a logical replication client's SQL: a walsender of
/// `replication=database` runs SQL too (simple protocol only), and its writes end
/// the cache entries they reach as any client's do, when their transaction ends
/// (a rollback too) and before the client hears it did.
struct CacheWatch<'a> {
    cache: Arc<ProxyCache>,
    database: &'a str,
    /// The key of the database's server (see `fence::key`).
    fence: String,
    analyzer: &'a pgopt_sql::Analyzer,
    pending: Mutex<PendingWrites>,
    /// Queries sent whose ReadyForQuery has not come back.
    outstanding: AtomicUsize,
}

impl CacheWatch<'_> {
    fn pending_writes(&self) -> std::sync::MutexGuard<'_, PendingWrites> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client message about to go that the server answers with a ReadyForQuery
    /// (see [`WATCHED`]); a Query's writes are noted (`None`: too long to keep, a
    /// write to everything).
    fn note(&self, tag: u8, body: Option<&[u8]>) {
        self.outstanding.fetch_add(1, Relaxed);
        if tag != b'Q' {
            return;
        }
        let mut pending = self.pending_writes();
        match body.map(Query::decode) {
            Some(Ok(query)) if is_replication_command(query.sql) => {}
            Some(Ok(query)) => pending.note(self.analyzer.analyze(query.sql).ok().as_deref()),
            _ => pending.note(None),
        }
    }

    /// Whether `event` ends writes: `Some(keep)`, `keep` when they stay noted (Queries
    /// still in flight may run them, or more, later: pipelined ones are noted before
    /// they run).
    fn ends(&self, event: Event) -> Option<bool> {
        let keep = match event {
            Event::Ready(status) => {
                let left = self.outstanding.load(Relaxed).saturating_sub(1);
                self.outstanding.store(left, Relaxed);
                if status != b'I' {
                    return None;
                }
                left > 0
            }
            // The writes before it committed; those after it have yet to.
            Event::Commit => true,
            Event::Other => return None,
        };
        (!self.pending_writes().is_empty()).then_some(keep)
    }

    /// Queries that may write are still in flight.
    fn in_flight(&self) -> bool {
        self.outstanding.load(Relaxed) > 0 && !self.pending_writes().is_empty()
    }

    /// The entries the writes noted reach end, here and in every instance sharing
    /// Redis (`keep`: the writes stay noted).
    async fn settle(&self, keep: bool) {
        let writes = {
            let mut pending = self.pending_writes();
            if keep {
                pending.clone()
            } else {
                pending.take()
            }
        };
        if writes.is_empty() {
            return;
        }
        let (tags, _fence) = self.cache.invalidate(self.database, &self.fence, writes);
        // Told to the other instances in a task of its own: it goes on if this
        // session is cut off meanwhile (a KILL), and the client waits for it.
        let cache = self.cache.clone();
        let _ = tokio::spawn(async move { cache.publish(&tags).await }).await;
    }

    /// The client is gone (or KILLed) with Queries that may write in flight: the
    /// walsender is sent nothing more and finishes what it has; once it has answered
    /// them, or closed, their writes are invalidated, as a departed client's are on
    /// a pooled connection. Past `cache.departed_write_timeout` the statement is
    /// canceled; one that runs on even so has everything invalidated.
    /// (`listed`: the walsender stays in SHOW SERVERS meanwhile.)
    fn settle_departed(
        &self,
        mut server: crate::net::PgStream,
        mut framer: Framer,
        cancel: Arc<crate::server::CancelRoute>,
        listed: Arc<crate::stats::ServerInfo>,
    ) {
        let mut writes = self.pending_writes().take();
        let mut owed = self.outstanding.load(Relaxed);
        let cache = self.cache.clone();
        let database = self.database.to_string();
        let fence = self.fence.clone();
        let wait = cache.settings.departed_write_timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLOSE_WAIT, server.shutdown()).await;
            let mut buf = vec![0u8; 64 * 1024];
            let mut deadline = tokio::time::Instant::now() + wait;
            // As `relay::settle_writes`: once one statement was canceled, each one
            // after it is too; one that outlives three cancels ends the wait.
            let mut strikes = 0;
            while owed > 0 {
                match tokio::time::timeout_at(deadline, server.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        let before = owed;
                        framer.advance(&buf[..n], b"Z", |tag, _, _| {
                            if tag == b'Z' {
                                owed = owed.saturating_sub(1);
                            }
                        });
                        if strikes > 0 && owed > 0 && owed < before {
                            strikes = 1;
                            crate::server::send_cancel(&cancel, DEPARTED_CANCEL_GRACE).await;
                            deadline = tokio::time::Instant::now() + DEPARTED_CANCEL_GRACE;
                        }
                    }
                    // Closed: whatever committed has.
                    Ok(_) => break,
                    Err(_) if strikes < DEPARTED_CANCEL_STRIKES => {
                        strikes += 1;
                        crate::server::send_cancel(&cancel, DEPARTED_CANCEL_GRACE).await;
                        deadline = tokio::time::Instant::now() + DEPARTED_CANCEL_GRACE;
                    }
                    Err(_) => {
                        tracing::warn!(
                            "a departed replication client's statement did not end when canceled: every cached result is invalidated"
                        );
                        writes.note_unknown();
                        break;
                    }
                }
            }
            drop(server);
            drop(listed);
            let (tags, _fence) = cache.invalidate(&database, &fence, writes);
            cache.publish(&tags).await;
        });
    }
}

/// How long a departed replication client's canceled statement has to end, and how
/// many cancels it gets.
const DEPARTED_CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
const DEPARTED_CANCEL_STRIKES: u32 = 3;

/// The client messages a walsender answers with a ReadyForQuery: a Query, a Sync
/// (also the one that ends an extended-protocol batch it refused), a FunctionCall
/// (refused).
const WATCHED: &[u8] = b"QSF";

/// Whether `sql` is a command of the replication protocol (the walsender reads the
/// whole text as one when its first word is one), not SQL.
fn is_replication_command(sql: &str) -> bool {
    const COMMANDS: [&str; 9] = [
        "IDENTIFY_SYSTEM",
        "START_REPLICATION",
        "CREATE_REPLICATION_SLOT",
        "DROP_REPLICATION_SLOT",
        "ALTER_REPLICATION_SLOT",
        "READ_REPLICATION_SLOT",
        "TIMELINE_HISTORY",
        "BASE_BACKUP",
        "UPLOAD_MANIFEST",
    ];
    let sql = sql.trim_start();
    let word_end = sql
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(sql.len());
    let word = &sql[..word_end];
    // (As PostgreSQL's replication scanner: upper case only; anything else is SQL.)
    COMMANDS.contains(&word)
}

/// Where the bytes passed to the client stand: pgopt's own FATAL may go only between
/// two of the server's messages, never inside one.
#[derive(Default)]
struct Boundary {
    framer: Mutex<Framer>,
    /// A write to the client is under way (cut off, it ended anywhere).
    writing: AtomicBool,
}

impl Boundary {
    fn framer(&self) -> std::sync::MutexGuard<'_, Framer> {
        self.framer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writing(&self, on: bool) {
        self.writing.store(on, Relaxed);
    }

    fn between(&self) -> bool {
        !self.writing.load(Relaxed) && self.framer().between()
    }
}

/// Follows a stream of protocol messages as its bytes pass, in pieces of any size,
/// and hands over the whole bodies of the message types asked for.
#[derive(Default, Clone)]
struct Framer {
    /// Bytes of the current message's body still to come.
    left: usize,
    /// The next header's bytes seen so far (a header may arrive in pieces).
    head: [u8; 5],
    have: usize,
    /// The current message's type and body so far, when it is one kept.
    kept: Option<(u8, Vec<u8>)>,
    /// The kept body went past [`MAX_KEPT_QUERY`].
    overflow: bool,
}

impl Framer {
    /// Walks `bytes`: for each message of a type in `keep` that ends in them,
    /// `done(type, body, end)`, `end` being where it ends in `bytes` and the body
    /// `None` when it was too long to keep.
    fn advance(
        &mut self,
        bytes: &[u8],
        keep: &[u8],
        mut done: impl FnMut(u8, Option<&[u8]>, usize),
    ) {
        let mut i = 0;
        while i < bytes.len() {
            if self.left > 0 {
                let k = self.left.min(bytes.len() - i);
                if let Some((_, body)) = &mut self.kept {
                    if body.len() + k <= MAX_KEPT_QUERY {
                        body.extend_from_slice(&bytes[i..i + k]);
                    } else {
                        self.overflow = true;
                    }
                }
                self.left -= k;
                i += k;
                if self.left == 0 {
                    self.finish(i, &mut done);
                }
                continue;
            }
            let k = (5 - self.have).min(bytes.len() - i);
            self.head[self.have..self.have + k].copy_from_slice(&bytes[i..i + k]);
            self.have += k;
            i += k;
            if self.have == 5 {
                self.have = 0;
                let head = self.head;
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                self.left = len.saturating_sub(4);
                self.kept = keep.contains(&head[0]).then(|| (head[0], Vec::new()));
                self.overflow = false;
                if self.left == 0 {
                    self.finish(i, &mut done);
                }
            }
        }
    }

    fn finish(&mut self, end: usize, done: &mut impl FnMut(u8, Option<&[u8]>, usize)) {
        if let Some((tag, body)) = self.kept.take() {
            done(tag, (!self.overflow).then_some(body.as_slice()), end);
        }
    }

    fn between(&self) -> bool {
        self.left == 0 && self.have == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(value: &str) -> Result<Replication, (&'static str, String)> {
        Replication::of(&[("replication".to_string(), value.to_string())])
    }

    #[test]
    fn replication_values_read_as_postgresql_reads_them() {
        assert_eq!(Replication::of(&[]), Ok(Replication::None));
        assert_eq!(of("database"), Ok(Replication::Logical));
        for yes in ["true", "TRUE", "t", "tr", "yes", "y", "on", "ON", "1"] {
            assert_eq!(of(yes), Ok(Replication::Physical), "{yes}");
        }
        for no in ["false", "f", "no", "n", "off", "of", "0"] {
            assert_eq!(of(no), Ok(Replication::None), "{no}");
        }
        let twice = [("replication", "true"), ("replication", "false")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(Replication::of(&twice).unwrap_err().0, "08P01");
        for bad in ["", "o", "Database", "2", "truth", "database "] {
            let (code, e) = of(bad).unwrap_err();
            assert_eq!(code, "22023");
            assert!(
                e.contains("invalid value for parameter \"replication\""),
                "{e}"
            );
        }
    }

    #[test]
    fn the_framer_follows_messages_cut_anywhere_and_hands_over_those_kept() {
        // A CopyData of 3 bytes, a ReadyForQuery, a Query: every split point.
        let mut bytes = vec![b'd', 0, 0, 0, 7, 1, 2, 3, b'Z', 0, 0, 0, 5, b'I'];
        bytes.extend_from_slice(&[b'Q', 0, 0, 0, 13]);
        bytes.extend_from_slice(b"SELECT 1\0");
        for cut in 0..=bytes.len() {
            let mut framer = Framer::default();
            let mut seen = Vec::new();
            let mut between = Vec::new();
            for (offset, part) in [(0, &bytes[..cut]), (cut, &bytes[cut..])] {
                framer.advance(part, b"ZQ", |tag, body, end| {
                    seen.push((tag, body.map(<[u8]>::to_vec), offset + end));
                });
                between.push(framer.between());
            }
            assert_eq!(
                seen,
                vec![
                    (b'Z', Some(b"I".to_vec()), 14),
                    (b'Q', Some(b"SELECT 1\0".to_vec()), bytes.len()),
                ],
                "cut at {cut}"
            );
            let at_a_boundary = [0, 8, 14, bytes.len()].contains(&cut);
            assert_eq!(between, [at_a_boundary, true], "cut at {cut}");
        }
        // A body too long to keep is handed over as None.
        let mut framer = Framer::default();
        let len = (MAX_KEPT_QUERY + 5) as u32;
        let mut long = vec![b'Q'];
        long.extend_from_slice(&len.to_be_bytes());
        long.resize(1 + len as usize, b'x');
        let mut got = Vec::new();
        framer.advance(&long, b"Q", |_, body, _| got.push(body.is_none()));
        assert_eq!(got, [true]);
    }

    #[test]
    fn replication_commands_are_told_from_sql() {
        for command in [
            "IDENTIFY_SYSTEM",
            "  START_REPLICATION SLOT s LOGICAL 0/0",
            "CREATE_REPLICATION_SLOT x LOGICAL pgoutput",
            "BASE_BACKUP (CHECKPOINT 'fast')",
        ] {
            assert!(is_replication_command(command), "{command}");
        }
        for sql in [
            "SELECT 1",
            "SHOW work_mem",
            "UPDATE t SET x = 1",
            "IDENTIFY",
            "",
        ] {
            assert!(!is_replication_command(sql), "{sql}");
        }
    }
}
