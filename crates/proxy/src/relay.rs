//! The relay between a logged-in client and the server connection it is lent. Messages
//! pass as raw bytes; the proxy reads only their types, plus the statement names of
//! Parse/Bind/Describe/Close in transaction mode (see [`crate::statements`]). An
//! [`Expected`] queue tracks the responses owed, so the server connection goes back to
//! the pool exactly when a transaction ends (transaction mode) or the client leaves.

use std::borrow::Cow;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use pgopt_sql::StatementKind;
use pgopt_wire::backend::{CommandComplete, ParameterStatus};
use pgopt_wire::frontend::{Bind, BindHead, Close, Describe, Execute, Parse, Query};
use pgopt_wire::{
    peek_header, split_frame, sqlstate, DecodeError, ErrorBuilder, Frame, Severity, Target,
    TransactionStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cache::{Capture, Fill, PendingWrites, ProxyCache, Shape};
use crate::config::{PoolMode, ReadYourWrites};
use crate::fence::FenceToken;
use crate::io::{send_fatal, write_all_bounded};
use crate::net::{ClientStream, PgStream};
use crate::observe::Tracker;
use crate::parses::Bound;
use crate::pool::{Checkout, CheckoutError, Description, Pool};
use crate::replan::{batch_describes_portal, is_plan_invalidated, plan_changed_error, Replay};
use crate::routing::Routes;
use crate::session::{checkout_error, fail_checkout, CancelSlot, Membership};
use crate::session_state::{
    self, may_affect_session, quote_ident, quote_literal, Applied, Change, SequenceUse, Settings,
    Verdict as SessionVerdict,
};
use crate::shared::{Lifecycle, Shared};
use crate::statements::{
    deallocate_stand_in, deallocate_target, ends_transaction, stand_in_target, statement_id,
    surely_ends_transaction, ClientStatements, Expected, Prepared, Request, Settled, Step, Verdict,
    IN_FAILED_TRANSACTION,
};
use crate::stats::{error_code, error_field, ClientInfo, ClientState};
use crate::ProxyError;

/// See [`Relay::cache_tags`].
struct TagsMemo {
    analysis: Arc<pgopt_sql::Analysis>,
    deps: std::sync::Weak<crate::cache::Deps>,
    cache: Arc<ProxyCache>,
    tags: Option<Arc<(Vec<String>, Duration)>>,
}

/// What came of asking for a server connection.
enum Lending {
    Lent,
    /// No server for this batch; an ErrorResponse is queued and the session goes on.
    Refused,
    /// The client was sent a FATAL error: the session is over.
    Closed,
}

/// Largest read batch kept for a failover to another node.
const MAX_FAILOVER_BYTES: usize = 64 * 1024;

/// The FATAL message of a session ended by KILL.
pub(crate) const KILLED: &str = "terminating connection due to administrator command (KILL)";
pub(crate) const SHUTTING_DOWN: &str = "terminating connection: pgopt is shutting down";

/// Room for reading from a server (a big result streams through it).
const SERVER_READ_BUF: usize = 16 * 1024;
/// A server connection's read buffer above this size is dropped when it goes back to
/// the pool (the next checkout starts a new one of `SERVER_READ_BUF`), and, while it
/// is lent, once it has held more than this and is empty again.
const KEPT_READ_BUF: usize = 8 * SERVER_READ_BUF;

/// A client's read buffer that held more than this (one large message), or a write
/// buffer that grew past it, is replaced once empty (see [`shed`] and the end of
/// `Relay::handle_client`). Also the largest request the cache looks up (its key
/// copies the text and values).
const KEPT_CLIENT_BUF: usize = 256 * 1024;

/// A client message this long or longer goes to the server as it came, not copied
/// into `to_server` (see [`Relay::queue_frame`]).
const DIRECT_FRAME: usize = 64 * 1024;

/// A row from the server this long or longer (a DataRow, or CopyData of a COPY TO)
/// is passed to the client as its bytes arrive, not held whole (see
/// `Relay::passing`): a 1 GB value costs a read buffer, not a gigabyte. Unless the
/// cache may store it (it is held whole then, up to `cache.max_result_bytes`).
const PASS_FRAME: usize = 64 * 1024;

/// How far into a large Bind its two names are looked for (PostgreSQL's names are at
/// most 63 bytes): one whose names run longer is held whole.
const MAX_BIND_NAMES: usize = 1024;

/// What a client buffer given back starts again with.
const CLIENT_BUF: usize = 8 * 1024;

/// Room made at a time for a large message as it arrives (see [`reserve_message`]).
const MESSAGE_STEP: usize = 1 << 20;

/// `buf`, once empty, replaced when it grew past [`KEPT_CLIENT_BUF`]: a client that
/// once sent a 200 MB value would otherwise keep that much of pgopt's memory for its
/// session's life. For a buffer written from its start and cleared, never advanced
/// (what waits for the server, the reply buffer): its capacity is its allocation. (A
/// read buffer, advanced as messages are taken, is replaced by its reader when it held
/// more than that.)
#[inline]
fn shed(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEPT_CLIENT_BUF {
        *buf = BytesMut::with_capacity(CLIENT_BUF);
    }
}

/// Room for more of the message whose start `buf` holds: as much again as has arrived
/// (at least [`MESSAGE_STEP`]), asked for no further than its end — growth in big
/// steps rather than from a few kilobytes, and never all at once: that would let a
/// header alone (a length up to `max_message_len`) claim it. (The buffer may round a
/// step up to twice its capacity; only what arrives is written, and resident.)
#[inline]
fn reserve_message(buf: &mut BytesMut, max_len: u32) {
    if buf.len() < 5 {
        return;
    }
    if let Ok(Some(header)) = peek_header(buf, max_len) {
        let rest = header.frame_len().saturating_sub(buf.len());
        let spare = buf.capacity() - buf.len();
        if rest > spare {
            buf.reserve(rest.min(buf.len().max(MESSAGE_STEP)));
        }
    }
}

/// An ErrorResponse or NoticeResponse that says the server is ending the connection:
/// FATAL or PANIC, or a shutdown SQLSTATE (`57P01`-`57P03`; an immediate shutdown
/// sends a WARNING with `57P01` before it closes).
fn is_going_away(body: &[u8]) -> bool {
    let severity = error_field(body, b'V').or_else(|| error_field(body, b'S'));
    matches!(severity, Some(b"FATAL" | b"PANIC"))
        || matches!(error_code(body), Some(b"57P01" | b"57P02" | b"57P03"))
}

/// A large Bind passed through (see [`Relay::bind_stand_in`]).
struct BindPass {
    /// What had come of it: its head and the start of its values.
    original: Bytes,
    /// The values that had come (a slice of `original`), and the length of them all.
    values: Bytes,
    values_len: usize,
    /// Its bytes still to come.
    left: usize,
}

pub struct Relay {
    client: ClientStream,
    /// Client bytes not yet handled: at most a partial message.
    cbuf: BytesMut,
    /// Server bytes not yet handled: at most a partial message, or the start of the
    /// rest of one being passed through (see `passing`).
    sbuf: BytesMut,
    /// Bytes still to come of a large row (DataRow or CopyData) that goes to the
    /// client as it arrives instead of being held whole (see [`PASS_FRAME`]): the next
    /// `passing` server bytes are the rest of it, relayed (or dropped, when its verdict
    /// was to drop it) as they come. The client is part way through a message
    /// meanwhile: pgopt writes nothing of its own to it.
    passing: usize,
    pass_relay: bool,
    /// The same the other way: bytes still to come of a client's large CopyData or
    /// Bind, sent to the server as they arrive (see [`Relay::start_copy_pass`],
    /// [`Relay::bind_stand_in`]); `cbuf` starts with the rest of it. Dropped instead
    /// (`client_pass_drop`) where a whole one would be: without a server, or after an
    /// error in its batch.
    client_passing: usize,
    client_pass_drop: bool,
    /// The last of a client message passed through is queued: once sent, what waited
    /// for the connection to be idle (which it could not be meanwhile) runs.
    copy_passed: bool,
    /// A large Bind part way here, routed by a stand-in of its head (see
    /// [`Relay::bind_stand_in`]) until the stand-in is queued, which queues this.
    bind_pass: Option<BindPass>,
    /// Messages for the client when some are dropped or made up.
    out: BytesMut,
    to_server: BytesMut,
    /// Client messages of [`DIRECT_FRAME`] bytes or more queued for the server as they
    /// came (a renamed Bind's values after its head), not copied into `to_server`:
    /// each with the length of `to_server` it follows (see [`Relay::queue_frame`]).
    to_server_direct: Vec<(usize, Bytes)>,
    /// A [`Relay::forward`] is under way (what is added to `to_server` meanwhile goes
    /// out with it).
    forwarding: bool,
    server: Option<Checkout>,
    expected: Expected,
    statements: ClientStatements,
    /// The server connection lent has the client's unnamed statement (it was parsed
    /// or prepared again there since the checkout).
    unnamed_here: bool,
    /// Since the checkout, this client sent the server connection lent something that
    /// may have called nextval (anything not judged read-only): only then may
    /// `lastval()`/`currval()` run, which read the session's sequence values.
    sequence_here: bool,
    /// The session reads a backslash in a `'…'` string as an escape
    /// (`standard_conforming_strings` off, as the server last reported it): pgopt's
    /// parser does not, so text with a backslash is not read for the cache.
    backslash_escapes: bool,
    /// A change of the client's settings was confirmed, whose batch ends at the
    /// `tracked_readies`-th ReadyForQuery to come (of the client's batches, not
    /// pgopt's own queries): the ParameterStatus the server reports before that one
    /// is its (see [`Relay::note_reported_setting`]). (A count, not a flag: a batch
    /// sent before the one before it was answered has its changes confirmed early.)
    tracked_readies: usize,
    /// The values of [`FOLLOWED`] settings the server last reported to this client
    /// (at login, the ones it was shown), and as they were at its last idle
    /// ReadyForQuery; whether one changed since with no change pgopt followed.
    reported: Vec<(String, String)>,
    idle_reported: Vec<(String, String)>,
    untracked_report: bool,
    reported_moved: bool,
    /// [`Relay::encoding`] of the client's settings, and their version.
    encoding_memo: Option<(u64, Encoding)>,
    /// The server's `client_encoding` for a client that sets none.
    default_encoding: String,
    /// The client parsed a `DEALLOCATE` of its own statements, sent as a stand-in
    /// (see `statements::deallocate_stand_in`): its Binds are looked at.
    stand_ins: bool,
    /// Portals bound to a `DEALLOCATE` stand-in, with what each deallocates (`None`:
    /// ALL), for their Executes. (One a transaction's end dropped stays listed: its
    /// Execute gets the server's 34000, which undoes the change.)
    stand_in_portals: Vec<(String, Option<String>)>,
    /// A failover is routing a batch again on another server: its Parses may name
    /// what its first run already did.
    rerouting: bool,
    /// A portal was executed in a failed transaction and its batch is not answered
    /// yet: it may have ended the transaction, and the last ReadyForQuery's status be
    /// stale.
    ending_in_flight: bool,
    /// A portal was executed in the batch still open (no Sync since): it may have
    /// begun a transaction block that `status` doesn't show yet.
    executed_unsynced: bool,
    /// A RESET (or DISCARD ALL) was confirmed: the server has its own defaults where
    /// the client expects its start-up values, until they are applied again.
    settings_behind: bool,
    /// An Execute went to the server since `settings_behind` was set (the RESET's, as
    /// a rule): the client's next statement, even in the same batch, must run with
    /// the start-up values again (see `Relay::sync_settings_in_batch`).
    reset_executed: bool,
    /// A query applying this client's settings failed on a server connection (a
    /// start-up value the server refuses): they are then not applied again inside a
    /// transaction block, where a failure would fail the client's block.
    settings_refused: bool,
    /// [`Relay::sync_settings`] sent a statement setting the client's session
    /// authorization or role; at a checkout, the client's request then waits for its
    /// answer (`identity_pending`, see [`Relay::held_back`]).
    identity_injected: bool,
    identity_pending: bool,
    /// The client's start-up values were applied on a server connection once (see
    /// [`Relay::sync_settings`]).
    startup_checked: bool,
    /// The client has had a server connection (in session mode, its session lives
    /// there from then on).
    lent_once: bool,
    /// Setting the client's session authorization or role failed (the role was
    /// dropped, or is not on the server a RELOAD moved the database to): the session
    /// ends rather than run as another role. Or a start-up value the client gave was
    /// refused the first time it was applied: the session ends, as PostgreSQL
    /// refuses the login. (SQLSTATE, message, whether it was the role.)
    identity_refused: Option<(String, String, bool)>,
    status: TransactionStatus,
    /// Transaction mode: statement names are rewritten so they work on any server.
    rewrite: bool,
    max_len: u32,
    mode: PoolMode,
    idle_transaction_timeout: Duration,
    client_idle_timeout: Duration,
    query_timeout: Duration,
    /// [`Shared::timeouts_version`] the three timeouts above were read at.
    timeouts_version: u64,
    /// With `query_timeout`: since when the server has owed an answer, and
    /// [`Relay::readies`] then (one more restarts the clock).
    query_since: Option<(Instant, u64)>,
    /// ReadyForQuery messages received from servers so far.
    readies: u64,
    /// When `query_timeout` runs out for the request in flight: a write to a client
    /// that does not read is given up then.
    query_until: Option<Instant>,
    pool: Arc<Pool>,
    cancel: CancelSlot,
    info: Arc<ClientInfo>,
    /// Draining: the session ends as soon as no transaction is open.
    closing: bool,
    /// Bytes since the last ReadyForQuery, added to the pool's totals there.
    received: u64,
    sent: u64,
    /// When the current query cycle and transaction began.
    query_start: Option<Instant>,
    /// When the bytes being handled came in (from the client or the server): one clock
    /// read per read, and every timestamp taken while they are handled is this one.
    clock: Instant,
    xact_start: Option<Instant>,
    /// The client's settings, carried onto every server connection it gets.
    settings: Settings,
    /// A SET/RESET/DISCARD sent, to be recorded when the server confirms it.
    /// (change, statement, ReadyForQuerys still due before its own).
    pending_change: Option<(Change, String, usize)>,
    /// RESETs among several statements of a query sent: recorded at its ReadyForQuery
    /// if no error came (see [`SessionVerdict::AfterRun`]). (resets, ReadyForQuerys
    /// still due before its own, whether an error came.)
    pending_resets: Vec<(Vec<Change>, usize, bool)>,
    /// A Parse was refused: messages up to the next Sync are dropped.
    skipping: bool,
    /// No server could take a batch (routing, primary down): its messages are dropped
    /// up to its Sync, which pgopt answers.
    discarding: bool,
    /// The server is in COPY FROM STDIN (or COPY BOTH): it answers nothing more
    /// before the client's CopyDone or CopyFail.
    copy_in: bool,
    /// The settings before the open transaction's first SET, restored if it rolls back.
    tx_snapshot: Option<(Settings, Applied)>,
    /// `tx_snapshot` was taken for a change in an extended-protocol batch outside a
    /// known block, with the ReadyForQuerys owed before that batch's: the batch's
    /// implicit transaction, which an error in it rolls back (`batch_failed`), undoes
    /// the change as a ROLLBACK would.
    batch_snapshot: Option<usize>,
    batch_failed: bool,
    /// A ROLLBACK came since the last ReadyForQuery: the whole transaction (restore the
    /// snapshot) or, when still in a transaction, ROLLBACK TO SAVEPOINT.
    rolled_back: bool,
    /// Settings a ROLLBACK TO SAVEPOINT may have undone: read back from the server as
    /// soon as nothing is in flight.
    resync: Vec<String>,
    /// Names read back after a query (see [`SessionVerdict::AfterRun`]): outside a
    /// transaction block with `current_setting(name, true)`, which a name PostgreSQL
    /// does not know (the statement failed) does not fail; inside one (where a SELECT
    /// would take the transaction's snapshot) with SHOW, as others are.
    read_back_leniently: Vec<String>,
    /// Statements (by id) whose run may set what pgopt reads back — `set_config(…,
    /// false)`, SET SESSION CHARACTERISTICS: after each Bind of one, it is.
    read_back_statements: foldhash::HashMap<u64, Arc<[String]>>,
    /// Named statements (by id) that may change prepared statements' shapes (an
    /// ALTER, a DROP…): each Bind of one is a schema change (see
    /// [`Relay::schema_changed`]), as its Parse was.
    schema_changers: foldhash::HashSet<u64>,
    /// What may write unseen in this database, as of a count of its changes (see
    /// [`Relay::note_sql_writes`]).
    writers: (u64, Option<Arc<crate::cache::Writers>>),
    /// The client's named statements (by id) that RESET a setting (or all): confirmed
    /// again at each Bind, as at their Parse.
    resets_at_binds: foldhash::HashMap<u64, Change>,
    /// The same for the client's unnamed statement (until its next Parse or simple
    /// query): asyncpg without a statement cache parses in one batch, binds in the
    /// next.
    unnamed_read_back: Option<Arc<[String]>>,
    /// The RESET the client's unnamed statement runs, if it is one (until its next
    /// Parse or simple query): confirmed again at each Bind, as a named one's.
    unnamed_reset: Option<Change>,
    /// Names to read back are there because a query may have set them (see
    /// [`Relay::reread`]).
    reread_changes: bool,
    /// The ParameterDescription of a statement being described, until its
    /// RowDescription or NoData says whether it returns rows (see
    /// [`Relay::note_description`]).
    described: Option<Bytes>,
    /// Settings read back inside the open transaction: read again once it commits.
    /// Inside it the server shows a SET LOCAL's (or `set_config(…, true)`'s) value,
    /// which its end takes away, for the session's own.
    reread_at_end: Vec<String>,
    /// Transaction mode: the database's functions whose run may change settings (see
    /// `function_settings.rs`), as last read; refreshed before a checkout when stale.
    function_settings: crate::function_settings::Followed,
    /// A CREATE ran in the open transaction: once it ends, the functions are read again.
    creates: bool,
    /// A statement that may change shapes ran in the open transaction (see
    /// [`Relay::schema_changed`]).
    changed_schema: bool,
    /// The [`FunctionSettings::signature`](crate::function_settings::FunctionSettings)
    /// the client's named statements were last judged against.
    statements_judged: u64,
    /// The current batch's client messages, kept in case it must run again after a
    /// schema change (see `replan.rs`); `replayed`: this is its second run.
    replay: Option<Replay>,
    /// The statements that give a server connection this client's settings, with the
    /// settings' version they were rendered at (see [`Relay::settings_statements`]).
    settings_sql: Option<(u64, Arc<[String]>)>,
    /// Cache keys are built here: the database, user and settings part is written
    /// again only when the settings change.
    key_buf: pgopt_cache::KeyBuf,
    /// The hash of the server defaults `key_buf`'s prefix holds.
    key_defaults: u64,
    /// The cache's verdict on the last statement looked up: its tags and TTL (or not
    /// cacheable), for that analysis, catalog and cache (see [`Relay::cache_tags`]).
    tags_memo: Option<TagsMemo>,
    /// The buffer of the last batch kept that way, reused for the next one.
    replay_spare: BytesMut,
    replayed: bool,
    /// The batch kept began with a Describe of a statement: its ParameterDescription
    /// is held (`held_t`) until the server says whether the copy described is stale,
    /// so a run again sends the client only the fresh one.
    hold_first_t: bool,
    held_t: Option<Bytes>,
    /// A server message of the batch kept was relayed: it can't run again (the
    /// client would get that answer twice).
    replay_relayed: bool,
    /// A statement just prepared again on this connection, described to compare its
    /// result shape with what clients were told, before the client's Bind of it goes
    /// on (see [`Relay::check_shape_first`]).
    shape_checking: Option<u64>,
    /// A client's statement whose plan was invalidated since it learned its shape,
    /// described afresh to see whether its shape is back to what the client was told
    /// (the schema change rolled back, or undone): then it runs, as on PostgreSQL.
    recheck: Option<Recheck>,
    /// A failed first run's responses are dropped up to its ReadyForQuery; then the
    /// batch in `rerun` goes to the server again.
    dropping: bool,
    /// Extended-protocol messages went to the server since the last Sync (or simple
    /// query): the server holds an implicit transaction open until the Sync, so the
    /// connection is not idle, whatever has been answered (a Flush gets answers
    /// without ending it). Released then, another client's statement would commit
    /// this one's writes.
    open_batch: bool,
    rerun: Option<BytesMut>,
    /// Query insight for this session, unless disabled.
    tracker: Option<Tracker>,
    /// Replica routing (see `routing.rs`), when the database has replicas.
    routes: Option<Routes>,
    /// [`Shared::routes_version`] `routes` were made at: a RELOAD that changed a
    /// database's replicas makes them again before the next checkout.
    routes_seen: u64,
    /// The client's place among its pool's clients, and what it logged in with, for a
    /// move to another pool (see [`Relay::follow_reload`]).
    membership: Membership,
    /// Read-your-writes: the client's last write, by WAL position and by time.
    ryw: ReadYourWritesState,
    /// The client messages of a read on a replica, kept until the client has been sent
    /// anything: if the replica dies first, they run again on another node.
    failover: Option<BytesMut>,
    /// Client messages wait in `cbuf` until the server has answered what runs before
    /// them (a batch behind a replica read, or behind a batch running again).
    paused: bool,
    /// The result cache (see `cache.rs`): every session notes its writes; only
    /// transaction-mode sessions are served from it. With replicas, a miss that ran
    /// on one is stored only if the replica had every write its versions reflect
    /// (see `fence.rs`).
    cache: Option<Arc<ProxyCache>>,
    serve_cache: bool,
    /// This client's ended writes whose commit position is not known yet: resolved
    /// with the position read once the connection is idle (see [`Relay::after_write`]).
    fence_tokens: Vec<FenceToken>,
    /// The client ran SQL PREPARE in the current transaction block (see
    /// `deallocate_sql`).
    sql_prepared: bool,
    /// The client ran code that may leave state on the session pgopt does not see (a
    /// DO block, or a function, trigger… whose body may make a temporary table, take
    /// an advisory lock…): the connection is checked once idle (see
    /// `check_session_state`).
    state_check: bool,
    /// Reported settings of `session_state::KEYED_DEFAULTS` the client has no value
    /// of its own for that changed with no change pgopt followed: a reload of the
    /// server's configuration may have changed their defaults (see
    /// [`Relay::check_defaults`]).
    defaults_check: Vec<String>,
    /// The transaction ran something that may change the server's defaults of
    /// settings (`session_state::alters_defaults`): once it ends, every pool's server
    /// connections are replaced and the cache flushed.
    defaults_altered: bool,
    /// It did: the connection stays with the client, which it now belongs to, until
    /// the client leaves (it then closes).
    pinned: bool,
    /// The server told the client why it ends the session (a FATAL ErrorResponse, as
    /// when an administrator terminates the backend): once the connection closes,
    /// the client has heard why, and pgopt adds no error of its own.
    fatal_relayed: bool,
    /// Tags this client's commits bumped, for the instances sharing Redis: told
    /// before the client hears the transaction ended.
    to_publish: Vec<String>,
    /// A miss whose reply is being captured.
    filling: Option<Fill>,
    /// The client's login and database (they don't change in a session).
    login_user: String,
    database: String,
    /// What the open transaction's writes invalidate when it ends.
    writes: PendingWrites,
    /// Session mode: what each of the client's statement names holds, for the writes
    /// of its Binds, and what the Parse being routed holds (taken in once it goes to
    /// the server, as a `Step::Parse` its answer settles). (Transaction mode reads the
    /// statement registry.)
    parses: crate::parses::SessionParses,
    parse_noted: Option<(String, crate::parses::Held)>,
    shared: Arc<Shared>,
}

/// What the cache did with a query.
enum CacheLookup {
    Served,
    Fill(Fill),
    Pass,
    /// The client canceled its request while it waited for another session's fill of
    /// its key: it fails with 57014, as a statement waiting on a lock does.
    Canceled,
}

/// Where the current transaction runs and what the client wrote, for routing.
#[derive(Default)]
struct ReadYourWritesState {
    /// The replica the current transaction runs on; `None`: the primary.
    replica: Option<usize>,
    /// The transaction on the primary may have written.
    wrote: bool,
    /// A write committed: its WAL position is read before the connection goes back.
    commit_pending: bool,
    /// Reads go only to replicas replayed up to here.
    min_lsn: u64,
    /// Reads go to the primary until then.
    primary_until: Option<Instant>,
    /// A batch (a simple query, or messages up to a Sync) has ended on this server
    /// connection: the next message starts another, judged on its own.
    batch_ended: bool,
}

impl Relay {
    pub fn new(
        client: ClientStream,
        cbuf: BytesMut,
        (pool, routes, membership): (Arc<Pool>, Option<Routes>, Membership),
        shared: Arc<Shared>,
        cancel: CancelSlot,
        info: Arc<ClientInfo>,
        settings: Settings,
    ) -> Relay {
        // Before the config: a RELOAD in between is read again at the first request.
        let timeouts_version = shared.timeouts_version.load(SeqCst);
        let routes_seen = shared.routes_version.load(SeqCst);
        let config = shared.config();
        let cache = shared.cache.clone();
        let serve_cache = serves_cache(&shared, &pool);
        let (login_user, database, _) = info.identity();
        // What the client was shown at login of the settings whose changes the server
        // reports (see `note_reported_setting`): the server's, or its own start-up
        // value.
        let params = pool.params().unwrap_or_default();
        let reported: Vec<(String, String)> = params
            .iter()
            .filter(|(name, _)| FOLLOWED.contains(&name.to_ascii_lowercase().as_str()))
            .map(|(name, v)| {
                let shown = settings.startup_value(name).unwrap_or(v);
                (name.to_ascii_lowercase(), shown.to_string())
            })
            .collect();
        let shown = |name: &str| {
            reported
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let conforming = settings
            .startup_value(STANDARD_CONFORMING_STRINGS)
            .map(str::to_string)
            .or_else(|| shown(STANDARD_CONFORMING_STRINGS))
            .unwrap_or_else(|| "on".into());
        let default_encoding = params
            .iter()
            .find(|(name, _)| name == "client_encoding")
            .map_or_else(|| "UTF8".into(), |(_, v)| v.clone());
        let tracker = shared
            .insight
            .as_ref()
            .filter(|state| state.recording())
            .map(|state| Tracker::new(state.clone(), &database, &login_user, info.addr.tcp()));
        Relay {
            client,
            cbuf,
            // Taken from the server connection while one is lent (see `attach`).
            sbuf: BytesMut::new(),
            passing: 0,
            pass_relay: false,
            client_passing: 0,
            client_pass_drop: false,
            copy_passed: false,
            bind_pass: None,
            forwarding: false,
            out: BytesMut::new(),
            to_server: BytesMut::new(),
            to_server_direct: Vec::new(),
            server: None,
            expected: Expected::default(),
            statements: ClientStatements::default(),
            unnamed_here: false,
            sequence_here: false,
            stand_ins: false,
            stand_in_portals: Vec::new(),
            encoding_memo: None,
            tracked_readies: 0,
            idle_reported: reported.clone(),
            reported,
            untracked_report: false,
            reported_moved: false,
            default_encoding,
            backslash_escapes: crate::replication::parse_bool(conforming.trim()) != Some(true),
            rerouting: false,
            ending_in_flight: false,
            executed_unsynced: false,
            settings_behind: false,
            reset_executed: false,
            settings_refused: false,
            identity_injected: false,
            identity_pending: false,
            lent_once: false,
            identity_refused: None,
            startup_checked: false,
            status: TransactionStatus::Idle,
            rewrite: pool.mode == PoolMode::Transaction,
            mode: pool.mode,
            max_len: config.max_message_len,
            idle_transaction_timeout: config.idle_transaction_timeout,
            client_idle_timeout: config.client_idle_timeout,
            query_timeout: config.query_timeout,
            timeouts_version,
            query_since: None,
            readies: 0,
            query_until: None,
            pool,
            cancel,
            info,
            closing: shared.lifecycle_now() >= Lifecycle::Draining,
            received: 0,
            sent: 0,
            query_start: None,
            clock: Instant::now(),
            xact_start: None,
            settings,
            pending_change: None,
            pending_resets: Vec::new(),
            skipping: false,
            discarding: false,
            copy_in: false,
            tx_snapshot: None,
            batch_snapshot: None,
            batch_failed: false,
            rolled_back: false,
            resync: Vec::new(),
            read_back_leniently: Vec::new(),
            read_back_statements: Default::default(),
            schema_changers: Default::default(),
            writers: (0, None),
            resets_at_binds: Default::default(),
            unnamed_read_back: None,
            unnamed_reset: None,
            reread_changes: false,
            described: None,
            reread_at_end: Vec::new(),
            function_settings: Default::default(),
            creates: false,
            changed_schema: false,
            statements_judged: 0,
            replay: None,
            settings_sql: None,
            key_buf: pgopt_cache::KeyBuf::default(),
            key_defaults: 0,
            tags_memo: None,
            replay_spare: BytesMut::new(),
            replayed: false,
            hold_first_t: false,
            held_t: None,
            replay_relayed: false,
            shape_checking: None,
            recheck: None,
            dropping: false,
            open_batch: false,
            rerun: None,
            tracker,
            routes,
            routes_seen,
            membership,
            ryw: ReadYourWritesState::default(),
            failover: None,
            paused: false,
            cache,
            serve_cache,
            fence_tokens: Vec::new(),
            sql_prepared: false,
            state_check: false,
            defaults_check: Vec::new(),
            defaults_altered: false,
            fatal_relayed: false,
            pinned: false,
            to_publish: Vec::new(),
            filling: None,
            login_user,
            database,
            writes: PendingWrites::default(),
            parses: Default::default(),
            parse_noted: None,
            shared,
        }
    }

    pub async fn run(mut self) -> Result<(), ProxyError> {
        match self.serve().await {
            Ok(()) => {
                self.finish();
                Ok(())
            }
            Err(e) => {
                // The connection closes; what is in flight may still commit.
                self.let_go();
                Err(e)
            }
        }
    }

    async fn serve(&mut self) -> Result<(), ProxyError> {
        // The client may have sent queries right behind its start-up messages.
        let mut go_on = self.cbuf.is_empty() || self.handle_client().await?;
        // Woken by a shutdown; registered once, not per message (a shared watch
        // channel polled on every loop is a lock all sessions contend for).
        let info = self.info.clone();
        let wake = info.wake.notified();
        tokio::pin!(wake);
        while go_on {
            if self.identity_refused.is_some() {
                let (code, why, role) = self.identity_refused.take().unwrap_or_default();
                let message = if role {
                    format!(
                        "pgopt could not set this session's role on a server connection ({why}): \
                         the session ends rather than run as another role"
                    )
                } else {
                    // As PostgreSQL's FATAL at the login.
                    why
                };
                tracing::warn!(
                    client = %self.info.addr,
                    %code,
                    "the server refused the session's role or a start-up value: the session ends: {message}"
                );
                self.close(&code, &message).await;
                self.let_go();
                break;
            }
            if self.paused
                && (self.server.is_none() || !(self.held_back() || self.own_answer_waits()))
            {
                // What held the client's messages back is over.
                self.paused = false;
                self.identity_pending = false;
                self.arm_query_timer();
                go_on = self.handle_client().await?;
                // (A cancel deferred while it was held back goes now.)
                self.settings_answered();
                continue;
            }
            if self.closing && self.server_idle() {
                self.close(sqlstate::ADMIN_SHUTDOWN, "pgopt is shutting down")
                    .await;
                break;
            }
            if self.shared.timeouts_version.load(Relaxed) != self.timeouts_version {
                self.read_timeouts();
            }
            let has_server = self.server.is_some();
            // (Also a client that stopped part way through a CopyData after the server
            // ended the COPY: it holds the connection, owed nothing. While something
            // is owed, query_timeout bounds a client part way through a message passed
            // on, as it bounds the request.)
            let idle_in_transaction = has_server
                && !self.idle_transaction_timeout.is_zero()
                && (self.status != TransactionStatus::Idle
                    || self.open_batch
                    || self.client_passes())
                && self.expected.is_empty();
            // As PgBouncer's: not a client holding a server connection (session mode).
            let idle_client = !has_server
                && !self.client_idle_timeout.is_zero()
                && self.server_idle()
                && self.cbuf.is_empty();
            let query_deadline = self.arm_query_timer();
            let timeout = if idle_in_transaction {
                Some(self.idle_transaction_timeout)
            } else if idle_client {
                Some(self.client_idle_timeout)
            } else {
                None
            };
            let idle_timer = async {
                match (timeout, query_deadline) {
                    (Some(timeout), _) => tokio::time::sleep(timeout).await,
                    (None, Some(at)) => tokio::time::sleep_until(at.into()).await,
                    (None, None) => std::future::pending().await,
                }
            };
            // Room for the rest of a large message either side is part way through
            // (a row passed through needs only a read's worth).
            if self.passing > 0 {
                self.sbuf.reserve(SERVER_READ_BUF);
            } else {
                reserve_message(&mut self.sbuf, self.max_len);
            }
            if self.client_passing > 0 {
                self.cbuf.reserve(DIRECT_FRAME);
            } else {
                reserve_message(&mut self.cbuf, self.max_len);
            }
            // Biased: no random branch order (a thread-local RNG draw per message);
            // the server's bytes first, which the client's next request waits on anyway.
            tokio::select! {
                biased;
                read = read_server(&mut self.server, &mut self.sbuf), if has_server => {
                    match read {
                        Ok(n) if n > 0 => {
                            self.sent += n as u64;
                            self.handle_server().await?;
                            self.maybe_release();
                        }
                        _ if self.failover.is_some() => {
                            self.fail_over().await?;
                            self.maybe_release();
                        }
                        _ => {
                            self.server_lost().await;
                            return Ok(());
                        }
                    }
                }
                // A paused client's messages are buffered only up to a bound.
                read = self.client.read_buf(&mut self.cbuf),
                    if !self.paused || self.cbuf.len() < MAX_FAILOVER_BYTES => {
                    if let Ok(n) = read {
                        self.received += n as u64;
                    }
                    go_on = matches!(read, Ok(n) if n > 0) && self.handle_client().await?;
                }
                () = idle_timer => {
                    if idle_in_transaction {
                        self.idle_transaction_expired().await;
                    } else if timeout.is_none() {
                        self.query_timed_out().await;
                    } else {
                        let message = format!(
                            "terminating connection due to idle-session timeout (client_idle_timeout = {} ms)",
                            self.client_idle_timeout.as_millis()
                        );
                        self.close(sqlstate::IDLE_SESSION_TIMEOUT, &message).await;
                    }
                    return Ok(());
                }
                () = &mut wake => {
                    wake.set(info.wake.notified());
                    let state = self.shared.lifecycle_now();
                    if state >= Lifecycle::Closing || info.killed() {
                        self.close(sqlstate::ADMIN_SHUTDOWN, self.killed_why()).await;
                        break;
                    }
                    self.closing = state >= Lifecycle::Draining;
                    // A RELOAD moved the database or changed its replicas: an idle
                    // client follows now, so SHOW POOLS counts it where it is and the
                    // new pool opens its minimum (one that can't move is closed at its
                    // next request).
                    if self.server.is_none() && self.expected.is_empty() {
                        if self.retired() {
                            self.follow_reload();
                        }
                        self.follow_routes();
                    }
                }
            }
        }
        Ok(())
    }

    /// Why a killed session ends: the admin console's KILL, or a shutdown past its
    /// timeout (which kills every session left).
    fn killed_why(&self) -> &'static str {
        if self.shared.lifecycle_now() >= Lifecycle::Closing {
            SHUTTING_DOWN
        } else {
            KILLED
        }
    }

    /// Ends the session with a FATAL error; a server connection mid-transaction closes.
    async fn close(&mut self, code: &str, message: &str) {
        self.pool.stats.record_error(code.as_bytes());
        self.send_fatal(code, message).await;
    }

    /// Sends the client a FATAL error, unless it is part way through a row (see
    /// `passing`), where an error would read as the row's bytes: it is only logged
    /// then, and the connection closes.
    async fn send_fatal(&mut self, code: &str, message: &str) {
        if self.passing > 0 && self.pass_relay {
            tracing::info!(
                client = %self.info.addr,
                code,
                "closing a client part way through a row: {message}"
            );
            return;
        }
        send_fatal(&mut self.client, code, message).await;
    }

    /// Until when a write to the client may wait for it to read: the deadline of the
    /// request whose answer it carries; none for pgopt's own answers with no server
    /// connection held (a cache hit).
    fn write_deadline(&self) -> Option<Instant> {
        self.query_until.filter(|_| self.server.is_some())
    }

    /// A RELOAD changed a session timeout: the new values, from now on.
    fn read_timeouts(&mut self) {
        self.timeouts_version = self.shared.timeouts_version.load(SeqCst);
        let config = self.shared.config();
        self.idle_transaction_timeout = config.idle_transaction_timeout;
        self.client_idle_timeout = config.client_idle_timeout;
        self.query_timeout = config.query_timeout;
    }

    /// `query_until` for what runs next: the deadline of the request the server works
    /// on (see [`Relay::query_deadline`]), none without a server connection (the next
    /// request, on whatever connection, starts its own clock).
    fn arm_query_timer(&mut self) -> Option<Instant> {
        self.query_until = if self.server.is_some() && !self.query_timeout.is_zero() {
            self.query_deadline()
        } else {
            self.query_since = None;
            None
        };
        self.query_until
    }

    /// With `query_timeout`, while the server owes answers (an unsynced batch's too):
    /// when the request it works on runs past it. A ReadyForQuery ends a request, so
    /// each one in a pipeline gets the whole time from when the one before it ended.
    fn query_deadline(&mut self) -> Option<Instant> {
        if self.expected.is_empty() {
            self.query_since = None;
            return None;
        }
        let since = match self.query_since {
            Some((since, readies)) if readies == self.readies => since,
            _ => Instant::now(),
        };
        self.query_since = Some((since, self.readies));
        Some(since + self.query_timeout)
    }

    /// Logs a session ended by a timeout, with who it was.
    fn warn_timed_out(&self, timeout: Duration, what: &'static str) {
        let (user, db, app) = self.info.identity();
        tracing::warn!(
            client = %self.info.addr,
            %user,
            %db,
            application_name = %app,
            timeout_ms = timeout.as_millis() as u64,
            "{what}"
        );
    }

    /// The server worked on a request for longer than `query_timeout`: the statement
    /// is canceled, and the session ends (its server connection closes as the client's
    /// does, in `finish`), as in PgBouncer: for a server or network in trouble.
    async fn query_timed_out(&mut self) {
        self.warn_timed_out(
            self.query_timeout,
            "a query ran past query_timeout: canceling it and closing the session",
        );
        if let Some(server) = &self.server {
            let cancel = server.conn.cancel.clone();
            tokio::spawn(async move {
                crate::server::send_cancel(&cancel, CANCEL_GRACE).await;
            });
        }
        let message = format!(
            "terminating connection: query ran longer than {} ms (query_timeout)",
            self.query_timeout.as_millis()
        );
        self.close(sqlstate::QUERY_CANCELED, &message).await;
    }

    /// The client held a transaction open without a word for `idle_transaction_timeout`:
    /// a leaked connection. It is told why, and its server connection is closed (the
    /// server rolls the transaction back) so the pool gets the slot back.
    async fn idle_transaction_expired(&mut self) {
        self.warn_timed_out(
            self.idle_transaction_timeout,
            "closing a client idle in transaction (leaked connection?)",
        );
        let message = format!(
            "terminating connection: idle in transaction for longer than {} ms (idle_transaction_timeout)",
            self.idle_transaction_timeout.as_millis()
        );
        // The server connection closes first (the server rolls back), so the slot is
        // free even if this client never reads its error.
        self.server = None;
        self.unlink();
        self.close(sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT, &message)
            .await;
    }

    /// Handles the whole messages in `cbuf`. `Ok(false)`: the session is over.
    async fn handle_client(&mut self) -> Result<bool, ProxyError> {
        self.clock = Instant::now();
        let grown = self.cbuf.len() > KEPT_CLIENT_BUF;
        let mut terminate = false;
        if self.expected.is_empty() {
            self.follow_insight();
        }
        // When a request was answered from the cache: since when (its lookup).
        let mut served_from_cache: Option<Instant> = None;
        if self.client_passing > 0 {
            self.pass_client_bytes();
        }
        loop {
            if self.bind_pass.is_some() {
                self.settle_bind_pass();
            }
            if self.client_passing > 0 {
                break;
            }
            // COPY data after the COPY ended (it failed: the client sends the rest
            // before it reads the error): PostgreSQL ignores it, and so does pgopt
            // without a server — no checkout, no wait for routing, for it.
            if self.server.is_none() && matches!(self.cbuf.first(), Some(b'd' | b'c' | b'f')) {
                match split_frame(&mut self.cbuf, self.max_len) {
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        if self.cbuf.first() == Some(&b'd') {
                            self.start_copy_pass();
                        }
                        break;
                    }
                    Err(e) => return Err(self.client_protocol_error(e).await),
                }
            }
            // Routing judges a transaction by its first batch: wait until it is all
            // here (bounded, so a client can't make pgopt buffer without end).
            if self.server.is_none()
                && self.routes.is_some()
                && !self.discarding
                && self.cbuf.len() < MAX_FAILOVER_BYTES
                && !crate::routing::batch_visible(&self.cbuf, self.max_len)
            {
                break;
            }
            // The cache looks an extended-protocol read up as a whole batch: wait until
            // it is all here (a long query may come in pieces).
            if self.server.is_none() && self.serve_cache && !self.discarding && self.batch_comes() {
                break;
            }
            if self.server.is_some() && self.own_answer_waits() {
                // The server holds its answers to a batch without a Flush: one is sent,
                // as PostgreSQL would flush them once it reads the query.
                frame_into(&mut self.to_server, b'H', &[]);
                self.paused = true;
                break;
            }
            if self.server.is_some() && self.held_back() {
                self.paused = true;
                break;
            }
            if self.server.is_some() && self.batch_incomplete() {
                break;
            }
            let frame = match split_frame(&mut self.cbuf, self.max_len) {
                Ok(Some(frame)) => frame,
                // Part way here: a large CopyData or Bind goes on as it comes.
                Ok(None) => match self.pass_partial() {
                    Some(frame) => frame,
                    None => break,
                },
                Err(e) => return Err(self.client_protocol_error(e).await),
            };
            if frame.tag() == b'X' {
                terminate = true;
                break;
            }
            if self.discarding || self.skipping && self.server.is_none() {
                // The rest of a batch no server could take, or of one whose refused
                // first message left no server: nothing of it runs (no server is
                // taken for it), and its Sync gets a ReadyForQuery from pgopt.
                if frame.tag() == b'S' {
                    self.discarding = false;
                    self.skipping = false;
                    self.expected.push(Step::Ready);
                }
                continue;
            }
            // Session mode keeps its connection between transactions: a client of a pool
            // a RELOAD retired is closed before its next one there.
            if !self.rewrite
                && self.lent_once
                && self.status == TransactionStatus::Idle
                && self.expected.is_empty()
                && !self.open_batch
                && self.retired()
            {
                self.close_retired().await;
                return Ok(false);
            }
            if self.server.is_none() {
                // A transaction-mode client of a pool a RELOAD retired moves to the new
                // one first (or is closed): its cache verdict and routes are the new
                // pool's.
                if self.retired() && !self.follow_reload() {
                    self.close_retired().await;
                    return Ok(false);
                }
                // (A fill lives only here: nothing to drop for a batch's later messages.)
                let mut fill = None;
                if self.serve_cache
                    && matches!(frame.tag(), b'Q' | b'P' | b'B')
                    && self.bind_pass.is_none()
                {
                    // Timed from the read (see `clock`).
                    let started = self.clock;
                    match self.look_up_cache(&frame).await {
                        CacheLookup::Served => {
                            // Timed up to the reply's write, below.
                            served_from_cache.get_or_insert(started);
                            continue;
                        }
                        CacheLookup::Fill(f) => fill = Some(f),
                        CacheLookup::Pass => {}
                        // Answered with its error, as a refused checkout is.
                        CacheLookup::Canceled => {
                            match frame.tag() {
                                b'Q' | b'F' | b'S' => self.expected.push(Step::Ready),
                                _ => self.discarding = true,
                            }
                            continue;
                        }
                    }
                }
                match self.checkout(&frame).await {
                    Lending::Lent => {
                        self.filling = fill;
                        self.note_fill_route();
                        if std::mem::take(&mut self.identity_injected) {
                            self.hold_for_identity(&frame);
                            break;
                        }
                    }
                    Lending::Closed => return Ok(false),
                    Lending::Refused => {
                        match frame.tag() {
                            b'Q' | b'F' | b'S' => self.expected.push(Step::Ready),
                            _ => self.discarding = true,
                        }
                        continue;
                    }
                }
            } else if self.ryw.batch_ended && self.routes.is_some() && !self.ryw.wrote {
                // A later batch on the primary, pipelined behind a read or in the same
                // transaction: a write in it must hold the client's next reads back.
                self.ryw.wrote = !crate::routing::read_only_batch(
                    &frame,
                    &self.cbuf,
                    self.max_len,
                    &self.shared.analyzer,
                    |name| self.statements.query_of(name),
                );
            }
            if frame.tag() == b'B' && self.check_shape_first(&frame) {
                // The Bind waits for the answer.
                self.put_back(&frame);
                break;
            }
            if self.query_start.is_none() {
                let now = self.clock;
                self.query_start = Some(now);
                self.xact_start.get_or_insert(now);
            }
            // Settings applied again after a RESET: a role among them is known to be set
            // before the request runs (see `identity_pending`).
            if self.settings_behind {
                self.sync_settings_if_behind();
                if self.settings_behind && self.reset_executed && matches!(frame.tag(), b'P' | b'B')
                {
                    self.sync_settings_in_batch();
                }
                if std::mem::take(&mut self.identity_injected) {
                    self.hold_for_identity(&frame);
                    break;
                }
            }
            let standing_in = self.bind_pass.is_some();
            if let Err(e) = self.route(&frame) {
                return Err(self.client_protocol_error(e).await);
            }
            self.reset_executed |= self.settings_behind && frame.tag() == b'E';
            if standing_in && !self.replay.as_ref().is_some_and(Replay::is_complete) {
                // (It kept the stand-in: the batch can't run again.)
                self.replay = None;
            }
        }
        if self.bind_pass.is_some() {
            self.settle_bind_pass();
        }
        if !self.nothing_outgoing() {
            self.forward().await?;
        }
        // Answers the proxy owes right now (nothing before them is pending).
        // A read that may fail over keeps them until the server answers (see
        // `handle_server`), so a second run can't repeat them.
        if self.failover.is_none() || self.expected.server_readies() == 0 {
            self.answer_owed();
        }
        // (Not while a row passes through: they follow it, from `handle_server`.)
        if !self.out.is_empty() && self.passing == 0 {
            self.failover = None; // the client has been told something
            let until = self.write_deadline();
            write_all_bounded(&mut self.client, &self.out, &self.info, until).await?;
            self.out.clear();
        }
        if let (Some(started), Some(cache)) = (served_from_cache, &self.cache) {
            cache
                .counters
                .hit_time
                .record(started.elapsed().as_micros() as u64);
        }
        if !self.sbuf.is_empty() {
            self.handle_server().await?;
        }
        // Everything may have been answered here without the server.
        self.maybe_release();
        // A read buffer that held a large message: replaced once empty (frames split
        // from it keep the allocation only while they live).
        if grown && self.cbuf.is_empty() {
            self.cbuf = BytesMut::with_capacity(CLIENT_BUF);
        }
        shed(&mut self.out);
        Ok(!terminate)
    }

    /// A simple query the cache may answer: served when there is a valid entry (after
    /// waiting for another session's fill of the same key), else a fill to capture.
    /// Only a query alone in its batch, with nothing owed before it and no
    /// transaction open, is considered.
    async fn look_up_cache(&mut self, frame: &Frame) -> CacheLookup {
        let Some(cache) = self.cache.clone() else {
            return CacheLookup::Pass;
        };
        let started = self.clock;
        let backslashes_differ = self.backslash_escapes || self.encoding().ascii_trails;
        // (A request larger than KEPT_CLIENT_BUF, a bulk value, is not: its key would
        // copy it, and the key's buffer keep the room.)
        // (Not serving — Redis or the replication listener down — is found once the
        // request is known cacheable: counted as a miss, as it goes to the server.)
        if !self.expected.is_empty()
            || self.status != TransactionStatus::Idle
            || self.skipping
            || frame.as_bytes().len() > KEPT_CLIENT_BUF
            || backslashes_differ && (frame.tag() != b'Q' || escapes_differ(true, frame.body()))
        {
            return CacheLookup::Pass;
        }
        let epoch = self.pool.plan_epoch();
        let salt = self.encoding_salt();
        // The request, owned: its text, statement, bind values, shape, and the named
        // statement its Parse gives the client.
        let (sql, statement, bind, shape, prepares) = match frame.tag() {
            b'Q' if self.cbuf.is_empty() => match Query::decode(frame.body()) {
                // (Text with characters pgopt escapes bytes as: see `pgopt_wire::text`.)
                Ok(q) if !pgopt_wire::text::is_escaped(q.sql) => {
                    (Cow::Borrowed(q.sql), None, Vec::new(), Shape::Simple, None)
                }
                _ => return CacheLookup::Pass,
            },
            b'P' | b'B' => {
                let Some((parse, bind, values, describe)) =
                    crate::cache::extended_batch(frame, &self.cbuf, self.max_len)
                else {
                    return CacheLookup::Pass;
                };
                let prepared = match &parse {
                    Some(p) => match Prepared::from_parse(p, salt) {
                        Ok(prepared) => Arc::new(prepared),
                        Err(_) => return CacheLookup::Pass,
                    },
                    // A statement whose result shape may have changed: the server's way
                    // (its shape check, or its error). So is one whose shape no server
                    // gave since the last schema change through pgopt: the client's
                    // description of it may be old, and a fill or a hit would give it
                    // rows in the new shape.
                    None => match self.statements.get_mut(bind.statement) {
                        Some(s)
                            if s.epoch == epoch
                                && self.pool.knows_current_description(s.prepared.id) =>
                        {
                            s.prepared.clone()
                        }
                        _ => return CacheLookup::Pass,
                    },
                };
                // (Measured before the statement's text is copied: a bulk one is not.)
                if prepared.parse.len() + values.len() > KEPT_CLIENT_BUF {
                    return CacheLookup::Pass;
                }
                let Some(sql) = prepared
                    .parse
                    .get(5..)
                    .and_then(|body| Parse::decode(body).ok())
                    .map(|p| Cow::<str>::Owned(p.query.to_string()))
                else {
                    return CacheLookup::Pass;
                };
                // A Parse of a name the client has: PostgreSQL's 42P05, from the server.
                if parse
                    .as_ref()
                    .is_some_and(|p| self.statements.taken(p.name))
                {
                    return CacheLookup::Pass;
                }
                let prepares = parse.as_ref().map(|p| {
                    (
                        p.name.to_string(),
                        prepared.clone(),
                        frame.as_bytes().clone(),
                    )
                });
                let shape = Shape::Extended {
                    parse: parse.is_some(),
                    describe,
                };
                (
                    sql,
                    Some(prepared.parse.clone()),
                    values.to_vec(),
                    shape,
                    prepares,
                )
            }
            _ => return CacheLookup::Pass,
        };
        let Ok(analysis) = self.shared.analyzer.analyze(&sql) else {
            return CacheLookup::Pass;
        };
        let database = &self.database;
        let deps = match cache.deps(database, self.clock) {
            (Some(deps), _) => deps,
            // Read the catalog first (one round trip, now and then); meanwhile
            // other sessions go past the cache.
            (None, Some(ticket)) => {
                let deps = self.read_deps(&cache, ticket).await;
                // What follows is timed from the end of a wait (see `clock`).
                self.clock = Instant::now();
                match deps {
                    Some(deps) => deps,
                    None => return CacheLookup::Pass,
                }
            }
            (None, None) => return CacheLookup::Pass,
        };
        let Some(tagged) = self.cache_tags(&cache, &analysis, &deps) else {
            return CacheLookup::Pass;
        };
        let (tags, ttl) = (&tagged.0, tagged.1);
        // A value 'now' or 'today' bound to a date/time parameter reads the clock.
        if crate::cache::binds_clock_word(&bind) {
            return CacheLookup::Pass;
        }
        if !cache.serving() {
            cache.bypassed(tags);
            return CacheLookup::Pass;
        }
        let request = crate::cache::Request {
            sql: &sql,
            statement,
            bind: &bind,
            shape,
        };
        // (The two hashes' combination: a change of either needs a new prefix.)
        let version = self.settings.version() ^ self.pool.defaults_hash().rotate_left(1);
        if self.key_buf.needs_prefix(version) {
            let settings = self.settings.key_statements();
            let (database, user) = (&self.database, &self.login_user);
            let server = &self.pool.target;
            let defaults = self.pool.defaults();
            self.key_defaults = defaults.hash();
            self.key_buf.set_prefix(version, |b| {
                crate::cache::key_prefix(b, (database, user), server, &settings, &defaults)
            });
        }
        self.key_buf
            .build(|b| crate::cache::key_request(b, &request));
        let mut flight = None;
        // The key owned, from the first miss on.
        let mut owned = None;
        for look in 0..2 {
            // Versions no later than the hit's: what the verifier checks against
            // (only taken when it is on: this is every lookup's path).
            let served_at =
                (cache.settings.verify_fraction > 0.0).then(|| cache.cache.versions.snapshot(tags));
            if let Some(hit) = cache.cache.lookup(self.key_buf.key()) {
                hit.tables.hit();
                let hit = hit.value;
                self.serve_hit(&cache, &hit, shape, prepares, epoch);
                self.note_hit(&analysis, started, &hit);
                let request = (&sql[..], request.statement.as_ref(), &bind[..]);
                self.maybe_verify(&cache, request, &analysis, served_at, &hit);
                return CacheLookup::Served;
            }
            if look > 0 {
                break;
            }
            match cache
                .cache
                .flights
                .join(owned.insert(self.key_buf.key().to_key()))
            {
                pgopt_cache::Joined::Leader(f) => {
                    flight = Some(f);
                    break;
                }
                // Another session is filling this key: its result, unless it is slow,
                // or the client cancels its request meanwhile.
                pgopt_cache::Joined::Waiter(wait) => {
                    // The client's statement_timeout bounds the wait, as it bounds the
                    // statement in PostgreSQL (the server's own is not known here:
                    // past `flight_timeout` the statement runs, and it applies).
                    let flight_timeout = cache.cache.flight_timeout;
                    let statement_timeout = self
                        .settings
                        .statement_timeout()
                        .filter(|t| *t < flight_timeout);
                    let ended = tokio::select! {
                        waited = tokio::time::timeout(statement_timeout.unwrap_or(flight_timeout), wait) => {
                            (waited.is_err() && statement_timeout.is_some())
                                .then_some("canceling statement due to statement timeout")
                        }
                        () = self.cancel.waiting.notified() => Some("canceling statement due to user request"),
                    };
                    self.clock = Instant::now();
                    if let Some(message) = ended {
                        let code = sqlstate::QUERY_CANCELED;
                        self.pool.stats.record_error(code.as_bytes());
                        if let Some(error) = error_response(code, message) {
                            self.expected.push_error(error);
                            return CacheLookup::Canceled;
                        }
                    }
                    // The lease may have run out while it waited.
                    if !cache.serving() {
                        return CacheLookup::Pass;
                    }
                }
            }
        }
        let key = owned.unwrap_or_else(|| self.key_buf.key().to_key());
        if let Some(l2) = &cache.l2 {
            // One round trip: the tables' versions in Redis, and a value stored at them.
            let found = pgopt_cache::read_through(&cache.cache, l2, key, tags, ttl).await;
            self.clock = Instant::now();
            let Some(found) = found else {
                // Redis is not reachable: PostgreSQL answers, nothing is stored.
                cache.bypassed(tags);
                return CacheLookup::Pass;
            };
            let ticket = found.ticket;
            if let Some(value) = found.value {
                ticket.tables().hit();
                self.serve_hit(&cache, &value, shape, prepares, epoch);
                self.note_hit(&analysis, started, &value);
                // (Without `current` the versions moved during the round trip: no
                // claim.)
                let request = (&sql[..], request.statement.as_ref(), &bind[..]);
                self.maybe_verify(&cache, request, &analysis, found.current, &value);
                return CacheLookup::Served;
            }
            cache.counters.misses.fetch_add(1, Relaxed);
            ticket.tables().miss();
            let defaults = self.key_defaults;
            return CacheLookup::Fill(Fill::new(ticket, ttl, flight, deps.generation, defaults));
        }
        cache.counters.misses.fetch_add(1, Relaxed);
        let ticket = cache.cache.begin_fill(key, tags);
        ticket.tables().miss();
        let defaults = self.key_defaults;
        CacheLookup::Fill(Fill::new(ticket, ttl, flight, deps.generation, defaults))
    }

    /// [`Settings::statements`], rendered again only when the settings changed (equal
    /// versions, equal settings): every cache lookup's key holds them.
    fn settings_statements(&mut self) -> Arc<[String]> {
        let version = self.settings.version();
        match &self.settings_sql {
            Some((v, statements)) if *v == version => statements.clone(),
            _ => {
                let statements: Arc<[String]> = self.settings.statements().into();
                self.settings_sql = Some((version, statements.clone()));
                statements
            }
        }
    }

    /// [`ProxyCache::tags`] for this analysis, kept while the same statement shape
    /// (the same analysis), catalog read and cache come back: a repeated shape costs
    /// no allocation. (Equal pointers are the same values: the memo holds them, the
    /// catalog read weakly, so an idle session doesn't keep an old catalog's maps;
    /// either way their addresses are not reused.)
    fn cache_tags(
        &mut self,
        cache: &Arc<ProxyCache>,
        analysis: &Arc<pgopt_sql::Analysis>,
        deps: &Arc<crate::cache::Deps>,
    ) -> Option<Arc<(Vec<String>, Duration)>> {
        if let Some(memo) = &self.tags_memo {
            if Arc::ptr_eq(&memo.analysis, analysis)
                && std::ptr::eq(memo.deps.as_ptr(), Arc::as_ptr(deps))
                && Arc::ptr_eq(&memo.cache, cache)
            {
                return memo.tags.clone();
            }
        }
        let tags = cache.tags(analysis, deps).map(Arc::new);
        self.tags_memo = Some(TagsMemo {
            analysis: analysis.clone(),
            deps: Arc::downgrade(deps),
            cache: cache.clone(),
            tags: tags.clone(),
        });
        tags
    }

    /// Query insight counts a hit as a call of its shape.
    fn note_hit(&mut self, analysis: &pgopt_sql::Analysis, started: Instant, hit: &[u8]) {
        if let Some(tracker) = self.tracker.as_mut() {
            let rows = crate::cache::row_count(hit);
            tracker.cache_hit(analysis, started.elapsed(), rows);
        }
    }

    /// Runs a sampled hit again on PostgreSQL in the background (see
    /// `cache.verify_fraction`). `request`: its text, and in the extended protocol its
    /// statement (a Parse) and Bind values part.
    fn maybe_verify(
        &self,
        cache: &Arc<ProxyCache>,
        (sql, statement, bind): (&str, Option<&Bytes>, &[u8]),
        analysis: &pgopt_sql::Analysis,
        snapshot: Option<pgopt_cache::Snapshot>,
        hit: &Bytes,
    ) {
        let n = cache.counters.hits.load(Relaxed);
        let Some(snapshot) = snapshot else {
            return;
        };
        let Some(slot) = cache.sample_hit(n) else {
            return;
        };
        let verify = crate::cache::Verify {
            sql: sql.to_string(),
            extended: statement.map(|s| (s.clone(), bind.to_vec())),
            picks_rows: analysis.picks_rows,
            settings: self.settings.statements(),
            value: hit.clone(),
            snapshot,
        };
        let (cache, pool, max_len) = (cache.clone(), self.pool.clone(), self.max_len);
        tokio::spawn(async move {
            let _slot = slot;
            let conn = pool
                .connect_out_of_band(crate::pool::Room::Spare)
                .await
                .map_err(|e| e.to_string());
            cache.verify(conn, verify, max_len).await;
        });
    }

    /// Answers the request (and the rest of its batch) with a stored reply.
    fn serve_hit(
        &mut self,
        cache: &ProxyCache,
        hit: &[u8],
        shape: Shape,
        prepares: Option<(String, Arc<Prepared>, Bytes)>,
        epoch: u64,
    ) {
        cache.counters.hits.fetch_add(1, Relaxed);
        // What the request did to the client's statements, as the server would have:
        // a Parse names one (the unnamed one too), a simple query drops the unnamed.
        let unnamed = match prepares {
            Some((name, _, parse)) if name.is_empty() => {
                Some(self.statements.parse_unnamed(&parse, false))
            }
            Some((name, prepared, _)) => {
                self.statements.insert(&name, prepared, epoch);
                None
            }
            None if matches!(shape, Shape::Simple) && self.statements.unnamed().is_some() => {
                Some(self.statements.close_unnamed())
            }
            None => None,
        };
        if let Some(change) = unnamed {
            // Nothing was owed (see `look_up_cache`): it takes effect now.
            self.statements.settle(change, Settled::Happened);
            self.unnamed_here = false;
        }
        self.cbuf.clear();
        crate::cache::reply(shape, hit, &mut self.out);
        let stats = &self.pool.stats;
        stats.queries.fetch_add(1, Relaxed);
        stats.xacts.fetch_add(1, Relaxed);
    }

    /// One server message of a fill's reply; at its ReadyForQuery the reply is stored
    /// (unless a write to its tables committed since the fill began).
    fn capture(&mut self, range: std::ops::Range<usize>) {
        let (Some(fill), Some(cache)) = (self.filling.as_mut(), self.cache.as_ref()) else {
            return;
        };
        let counters = &cache.counters;
        match fill.capture(&self.sbuf[range], cache.settings.max_result_bytes) {
            Capture::Going => {}
            Capture::Abandon => self.abandon_fill(),
            Capture::Done(reply) => {
                let Some(fill) = self.filling.take() else {
                    return;
                };
                if let Some(replayed) = fill.replica_replayed {
                    // Run on a replica: stored only if it had every write through
                    // pgopt (or seen by the listener) that the versions reflect, and
                    // with Redis every other instance's (see `fence.rs`).
                    let primary = self
                        .routes
                        .as_ref()
                        .and_then(|r| r.router.primary_checked());
                    let snapshot = fill.ticket.snapshot();
                    let remote = cache
                        .l2
                        .as_ref()
                        .map(|l2| l2.remote_writes(snapshot.remote()));
                    let covered = match remote {
                        // A version whose bus message has not arrived yet.
                        Some(None) => false,
                        remote => cache.fences.covers(
                            &self.pool.fence_key,
                            snapshot.tables(),
                            replayed,
                            primary,
                            remote.flatten().as_ref(),
                        ),
                    };
                    if !covered {
                        fill.ticket.tables().not_stored();
                        counters.not_stored.fetch_add(1, Relaxed);
                        return;
                    }
                }
                // Its tags came from a dependency map a schema change has replaced since
                // (a view that reads other tables now would be tagged wrong); or it ran
                // on a connection whose server defaults are not its key's (older or
                // newer than the pool's newest), or that a RECONNECT marked as old (an
                // ALTER DATABASE … SET through pgopt: its defaults may be the old ones).
                let server = self.server.as_ref().map(|s| &s.conn);
                if fill.deps_generation != cache.deps_generation()
                    || server.is_none_or(|conn| {
                        conn.defaults.hash() != fill.defaults || !self.pool.is_current(conn)
                    })
                {
                    fill.ticket.tables().not_stored();
                    counters.not_stored.fetch_add(1, Relaxed);
                    return;
                }
                let ttl = fill.ttl;
                // For L2: the key and the Redis versions read before the query ran.
                // Not a replica's fill on Redis Cluster: while this instance listens on
                // a node that lost the bus's slot, a message may be lost unnoticed
                // until the writer's next heartbeat (which flushes L1, not Redis).
                let on_replica = fill.replica_replayed.is_some();
                let l2 = cache
                    .l2
                    .clone()
                    .filter(|l2| !(on_replica && l2.config().cluster));
                let shared = l2.map(|l2| {
                    let ticket = &fill.ticket;
                    let versions: Vec<(String, u64)> = ticket
                        .snapshot()
                        .remote()
                        .map(|(t, v)| (t.to_string(), v))
                        .collect();
                    (l2, ticket.key().clone(), versions)
                });
                // (Not once the lease ran out while it filled: a commit this instance
                // did not hear of may have been acknowledged meanwhile.)
                if !cache.serving() {
                    fill.ticket.tables().not_stored();
                    counters.not_stored.fetch_add(1, Relaxed);
                    return;
                }
                if cache
                    .cache
                    .complete_fill_counted(fill.ticket, reply.clone(), ttl)
                {
                    counters.stored.fetch_add(1, Relaxed);
                    if let Some((l2, key, versions)) = shared {
                        tokio::spawn(async move {
                            let versions: Vec<(&str, u64)> =
                                versions.iter().map(|(t, v)| (t.as_str(), *v)).collect();
                            l2.store(&key, &versions, &reply, ttl).await;
                        });
                    }
                } else {
                    counters.not_stored.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// The result being captured for the cache is not stored.
    fn abandon_fill(&mut self) {
        if let (Some(fill), Some(cache)) = (self.filling.take(), &self.cache) {
            fill.ticket.tables().not_stored();
            cache.counters.not_stored.fetch_add(1, Relaxed);
        }
    }

    /// Whether a large row part way here goes to the client as it arrives (see
    /// `passing`): a DataRow or a COPY's CopyData of [`PASS_FRAME`] or more that the
    /// cache would not store anyway.
    fn may_pass(&mut self, tag: u8, len: usize) -> bool {
        if !matches!(tag, b'D' | b'd') || len < PASS_FRAME || self.held_t.is_some() {
            return false;
        }
        if let (Some(fill), Some(cache)) = (&self.filling, &self.cache) {
            if tag == b'D' && fill.fits(len, cache.settings.max_result_bytes) {
                return false; // held whole, to be stored
            }
            self.abandon_fill();
        }
        true
    }

    /// The message `cbuf` starts with is part way here: a large CopyData starts
    /// passing (`None`: the loop stops), a large Bind gives its stand-in.
    #[cold]
    fn pass_partial(&mut self) -> Option<Frame> {
        match self.cbuf.first() {
            Some(b'd') => {
                self.start_copy_pass();
                None
            }
            Some(b'B') => self.bind_stand_in(),
            _ => None,
        }
    }

    /// A Bind of [`KEPT_CLIENT_BUF`] or more (past what the cache looks up) part way
    /// here, its two names in: it is routed by a stand-in, a Bind of the same names
    /// with no values, and goes to the server as it came (renamed in transaction
    /// mode), its values as they arrive (see `client_passing`), instead of being held
    /// whole. Not where the values or what follows the Bind are read: in a failed
    /// transaction (answered from the statement's description), for a statement whose
    /// result shape may have changed (the client's Describe after it is looked for),
    /// in a COPY, while a batch runs again.
    #[cold]
    fn bind_stand_in(&mut self) -> Option<Frame> {
        let len = match pgopt_wire::peek_header(&self.cbuf, self.max_len) {
            Ok(Some(h)) if h.frame_len() >= KEPT_CLIENT_BUF => h.frame_len(),
            _ => return None,
        };
        // (With replicas: the batch behind it must be seen to route it; `checkout`
        // and the read-your-writes check read it.)
        if len <= self.cbuf.len()
            || self.routes.is_some()
            || self.status == TransactionStatus::Failed
            || self.copy_in
            || self.dropping
            || self.shape_checking.is_some()
        {
            return None;
        }
        // The two names, looked for in the first bytes only (a read at a time must not
        // scan again what came before).
        let body = &self.cbuf[5..self.cbuf.len().min(5 + MAX_BIND_NAMES)];
        let portal_end = body.iter().position(|&b| b == 0)?;
        let statement_end = portal_end + 1 + body[portal_end + 1..].iter().position(|&b| b == 0)?;
        let portal = std::str::from_utf8(&body[..portal_end]).ok()?;
        let statement = std::str::from_utf8(&body[portal_end + 1..statement_end]).ok()?;
        if self.rewrite && !statement.is_empty() {
            let epoch = self.pool.plan_epoch();
            if let Some(s) = self.statements.get_mut(statement) {
                if s.epoch != epoch && self.pool.invalidated_since(s.prepared.id, s.epoch) {
                    return None;
                }
            }
        }
        let mut stand_in = BytesMut::new();
        if !bind_head(&mut stand_in, portal, statement, 6) {
            return None;
        }
        let head = stand_in.len();
        // No parameter formats, no values, no result formats.
        stand_in.extend_from_slice(&[0; 6]);
        let frame = Frame::from_bytes(stand_in.freeze(), self.max_len).ok()?;
        let original = self.cbuf.split().freeze();
        self.bind_pass = Some(BindPass {
            values: original.slice(head..),
            values_len: len - head,
            left: len - original.len(),
            original,
        });
        // Too large to keep for a failover (nor, below, for a run again).
        self.failover = None;
        Some(frame)
    }

    /// [`Relay::queue_frame`] of a Bind's stand-in: the Bind as it came.
    #[cold]
    fn queue_stand_in(&mut self, frame: &Frame) {
        if let Ok(bind) = BindHead::decode(frame.body()) {
            self.queue_bind_pass(bind.portal, bind.statement);
        }
    }

    /// Queues the Bind passed through under `portal` and `statement` (the server's
    /// name): its head anew, then its values as they came and as they come. `false`
    /// when its length can't be written (the Int32 it is).
    fn queue_bind_pass(&mut self, portal: &str, statement: &str) -> bool {
        let Some(pass) = self.bind_pass.take() else {
            return false;
        };
        if !bind_head(&mut self.to_server, portal, statement, pass.values_len) {
            self.bind_pass = Some(pass);
            return false;
        }
        self.to_server_direct
            .push((self.to_server.len(), pass.values));
        self.client_passing = pass.left;
        self.client_pass_drop = false;
        true
    }

    /// A Bind passed through that its stand-in's routing did not queue (skipped after
    /// an error, refused, answered by pgopt): the rest of it is dropped as it comes.
    #[cold]
    fn settle_bind_pass(&mut self) {
        if let Some(pass) = self.bind_pass.take() {
            self.client_passing = pass.left;
            self.client_pass_drop = true;
        }
    }

    /// A large CopyData part way here (of [`PASS_FRAME`] or more): what came of it
    /// goes to the server at once, and the rest as it arrives (see
    /// [`Relay::pass_client_bytes`]), so a 1 GB row is not held whole; or is dropped as
    /// it comes where a whole one would be. Its routing is a whole one's: nothing to
    /// note, a write for read-your-writes, and too large to keep for a run again or a
    /// failover.
    #[cold]
    fn start_copy_pass(&mut self) {
        let len = match pgopt_wire::peek_header(&self.cbuf, self.max_len) {
            Ok(Some(h)) if h.frame_len() >= PASS_FRAME => h.frame_len(),
            _ => return,
        };
        if len <= self.cbuf.len() {
            return; // here whole: handled as such
        }
        // Where a whole one would be dropped: without a server (the COPY ended:
        // PostgreSQL ignores what follows), or skipped to the Sync after an error.
        let drop = self.server.is_none() || self.skipping || self.discarding;
        if !drop {
            // What `handle_client` and `route` do for a whole one. (After the COPY
            // failed, the server reads it whole, then drops it.)
            if self.ryw.batch_ended && self.routes.is_some() {
                // Not a read-only batch: its writes hold the client's reads back.
                self.ryw.wrote = true;
            }
            self.sync_settings_if_behind();
            self.ryw.batch_ended = false;
            self.failover = None;
            if !self.replay.as_ref().is_some_and(Replay::is_complete) {
                self.replay = None;
            }
        }
        self.client_passing = len;
        self.client_pass_drop = drop;
        self.pass_client_bytes();
    }

    /// The server ended the COPY (an error) part way through a CopyData it now reads
    /// only to drop, and owes nothing: rather than hold the connection until the
    /// client sends the rest (it may never), transaction mode closes it and drops
    /// the rest as it comes, as PostgreSQL would.
    #[cold]
    fn end_copy_pass_early(&mut self) {
        // (Not while something waits to be read from this connection once idle: the
        // settings a statement set, the WAL position after a write.)
        if !self.client_passes()
            || self.forwarding
            || !self.between_requests()
            || !self.resync.is_empty()
            || self.ryw.commit_pending
            || !self.fence_tokens.is_empty()
        {
            return;
        }
        self.client_pass_drop = true;
        self.copy_passed = false;
        // (Its SQL prepared statements go with it.)
        self.sql_prepared = false;
        self.server = None;
        self.unlink();
    }

    /// Queues for the server (or drops) what has come of a client message passed
    /// through (a CopyData or a Bind).
    fn pass_client_bytes(&mut self) {
        let n = self.client_passing.min(self.cbuf.len());
        if n == 0 {
            return;
        }
        self.client_passing -= n;
        if self.client_pass_drop {
            self.cbuf.advance(n);
        } else {
            let piece = self.cbuf.split_to(n).freeze();
            self.to_server_direct.push((self.to_server.len(), piece));
            // Its forward then does what waited for the connection to be idle.
            self.copy_passed = self.client_passing == 0;
        }
    }

    /// [`Relay::note_writes`] of SQL that is not UTF-8 (escaped, see
    /// `pgopt_wire::text`): a read is nothing; anything else writes everything (its
    /// names, escaped, are not the catalog's), and the connection's SQL-prepared
    /// statements are unknown. The analysis of a read, for its Binds.
    fn note_unreadable_writes(&mut self, sql: &str) -> Option<Arc<pgopt_sql::Analysis>> {
        // (In an encoding whose characters may end in `\`, an E'' string may end
        // elsewhere than pgopt reads: text with a `\` is not trusted.)
        let trusted = !self.encoding().ascii_trails || !sql.contains('\\');
        let analysis = self.shared.analyzer.analyze(sql).ok().filter(|_| trusted);
        match analysis {
            Some(a) if a.read_only => Some(a),
            _ => {
                self.note_unknown_sql();
                None
            }
        }
    }

    /// SQL pgopt can't read runs: it may write anything, and the connection's
    /// SQL-prepared statements are unknown.
    fn note_unknown_sql(&mut self) {
        if let Some(sql) = sql_statements(&mut self.server) {
            sql.go_blind();
        }
        self.writes.note(None);
    }

    /// Notes what a statement (`analysis`) may write, for the cache: what its text
    /// names (see `PendingWrites::note_sql`), and everything when it reads a view
    /// calling a volatile user function, or uses an operator, cast or domain that
    /// calls one (see `cache::Writers`), as that function may write anything.
    fn note_sql_writes(&mut self, analysis: Option<&pgopt_sql::Analysis>) {
        self.writes
            .note_sql(analysis, sql_statements(&mut self.server));
        let (Some(cache), Some(a)) = (&self.cache, analysis) else {
            return;
        };
        // (No lock: the session's copy of its database's, while none changed.)
        let changes = cache.writers_changes();
        if changes == 0 {
            return;
        }
        if self.writers.0 != changes {
            self.writers = (changes, cache.writers(&self.database));
        }
        if self.writers.1.as_ref().is_some_and(|w| w.reached_by(a)) {
            self.writes.note_unknown();
        }
    }

    /// Whether `cbuf` holds the start of a batch the cache may serve, whose Sync is
    /// still to come (see [`crate::cache::batch_partly_here`]), and which is no COPY
    /// (whose server answers its Execute before the Sync, and whose client may wait
    /// for that).
    fn batch_comes(&self) -> bool {
        if self.cbuf.len() >= KEPT_CLIENT_BUF
            || !crate::cache::batch_partly_here(&self.cbuf, self.max_len)
        {
            return false;
        }
        // (Its first message is whole here.)
        let body = &self.cbuf[5..];
        let mut fields = body.split(|&b| b == 0);
        let query = match self.cbuf[0] {
            // A Parse: its name, then its text.
            b'P' => fields.nth(1),
            // A Bind: its portal, then its statement's name.
            _ => fields
                .nth(1)
                .and_then(|name| std::str::from_utf8(name).ok())
                .and_then(|name| self.statements.query_of(name))
                .map(str::as_bytes),
        };
        query.is_some_and(|q| !session_state::statement_starts_with(q, b"copy"))
    }

    /// Session mode: keeps what a Parse of `name` was read to run, for its Binds once
    /// the server has answered it (see `SessionParses`). (In transaction mode the
    /// statement registry knows what each name holds.)
    fn keep_parsed(&mut self, name: &str, analysis: Option<Arc<pgopt_sql::Analysis>>) {
        if !self.rewrite {
            self.parse_noted = Some((name.to_string(), analysis));
        }
    }

    /// Transaction mode: what a Bind of the client's unnamed statement may run (see
    /// `ClientStatements::unnamed_candidates`). When the client has none, anything
    /// (pgopt closes the server's first, and the Bind fails). `backslashes_differ`: as
    /// in `note_writes`.
    fn unnamed_bound(&self, backslashes_differ: bool) -> Bound {
        let analyze = |parse: &bytes::Bytes| {
            let parse = Parse::decode(parse.get(5..)?).ok()?;
            if escapes_differ(backslashes_differ, parse.query.as_bytes()) {
                return None;
            }
            self.shared.analyzer.analyze(parse.query).ok()
        };
        let mut candidates = self.statements.unnamed_candidates().map(analyze);
        match candidates.next() {
            Some(first) => Bound {
                first,
                more: candidates.collect(),
            },
            None => Bound::default(),
        }
    }

    /// Notes what a client message about to run may write, for the cache.
    fn note_writes(&mut self, frame: &Frame) {
        // (A `\` may also end an SJIS-like character, and so a string elsewhere.)
        let backslashes_differ = self.backslash_escapes || self.encoding().ascii_trails;
        let analyzer = &self.shared.analyzer;
        if matches!(frame.tag(), b'Q' | b'P') && escapes_differ(backslashes_differ, frame.body()) {
            // Its strings may hide what it runs.
            self.note_unknown_sql();
            let mut owned = String::new();
            if let Ok(parse) = Parse::decode_escaped(frame.body(), &mut owned) {
                self.keep_parsed(parse.name, None);
            }
            return;
        }
        match frame.tag() {
            b'Q' => match Query::decode(frame.body()) {
                Ok(query) => {
                    let analysis = analyzer.analyze(query.sql).ok();
                    self.note_sql_writes(analysis.as_deref());
                }
                Err(_) => {
                    let mut owned = String::new();
                    let query = Query::decode_escaped(frame.body(), &mut owned);
                    let sql = query.map(|q| q.sql).unwrap_or_default();
                    self.note_unreadable_writes(sql);
                }
            },
            b'P' => match Parse::decode(frame.body()) {
                Ok(parse) => {
                    // (In transaction mode the server's name is pgopt's, `pgopt_…`.)
                    if !self.rewrite {
                        if let Some(sql) = sql_statements(&mut self.server) {
                            sql.prepared_by_protocol(parse.name);
                        }
                    }
                    let analysis = analyzer.analyze(parse.query).ok();
                    self.note_sql_writes(analysis.as_deref());
                    self.keep_parsed(parse.name, analysis);
                }
                Err(_) => {
                    let mut owned = String::new();
                    if let Ok(parse) = Parse::decode_escaped(frame.body(), &mut owned) {
                        let analysis = self.note_unreadable_writes(parse.query);
                        self.keep_parsed(parse.name, analysis);
                    } else {
                        self.writes.note(None);
                    }
                }
            },
            b'B' => {
                // What the name holds once the server has answered its Parses: one
                // refused (a name the client has, 42P05) or skipped (after an error
                // earlier in its batch) leaves the name as it was. The text as sent
                // would read a write as a read.
                let bound = match Bind::decode(frame.body()) {
                    Ok(bind) if self.rewrite && bind.statement.is_empty() => {
                        self.unnamed_bound(backslashes_differ)
                    }
                    Ok(bind) if self.rewrite => Bound {
                        first: self
                            .statements
                            .query_of(bind.statement)
                            .filter(|sql| !escapes_differ(backslashes_differ, sql.as_bytes()))
                            .and_then(|sql| analyzer.analyze(sql).ok()),
                        more: Vec::new(),
                    },
                    Ok(bind) => self.parses.bound(bind.statement),
                    Err(_) => Bound::default(),
                };
                for held in std::iter::once(bound.first).chain(bound.more) {
                    match held {
                        Some(a) => self.note_sql_writes(Some(&a)),
                        None => {
                            if let Some(sql) = sql_statements(&mut self.server) {
                                sql.go_blind();
                            }
                            self.writes.note_unknown();
                        }
                    }
                }
            }
            b'S' if !self.rewrite => self.parses.sync(),
            b'F' => {
                if let Some(sql) = sql_statements(&mut self.server) {
                    sql.go_blind();
                }
                self.writes.note_unknown();
            }
            b'C' => {
                if let Ok(close) = Close::decode(frame.body()) {
                    if close.target == Target::Statement && !self.rewrite {
                        self.parses.close(close.name);
                    }
                }
            }
            _ => {}
        }
    }

    /// The client is gone (or broke the protocol) while its server connection is busy:
    /// the connection closes. A statement in flight may still commit writes (the
    /// server finishes it before it notices), so when the cache has writes pending
    /// they are invalidated only once the server has answered, or closed.
    fn let_go(&mut self) {
        // Commits already invalidated here but not yet told to other instances.
        self.publish_later();
        let in_flight = self.expected.all_server_readies();
        match (self.cache.clone(), self.server.take()) {
            // An open batch's Execute may commit (a COMMIT, or a write in a
            // transaction block) with no Sync to come: settled too, up to the server's
            // end of the stream.
            (Some(cache), Some(checkout))
                if (in_flight > 0 || self.open_batch) && !self.writes.is_empty() =>
            {
                let database = self.database.clone();
                let fence_key = self.pool.fence_key.clone();
                let writes = self.writes.take();
                let buf = std::mem::take(&mut self.sbuf);
                let wait = cache.settings.departed_write_timeout;
                let until_end = self.open_batch;
                let skip = std::mem::take(&mut self.passing);
                let settle = settle_writes(
                    checkout,
                    (buf, skip),
                    in_flight,
                    until_end,
                    self.max_len,
                    wait,
                );
                tokio::spawn(async move {
                    let mut writes = writes;
                    if !settle.await {
                        writes.note_unknown();
                    }
                    // Its fence is dropped unresolved: the position is not read here.
                    let (tags, _fence) = cache.invalidate(&database, &fence_key, writes);
                    cache.publish(&tags).await;
                });
            }
            (_, checkout) => {
                drop(checkout);
                self.invalidate_writes();
                self.publish_later();
            }
        }
    }

    /// The transaction's writes are over: the entries that read their tables end.
    /// Other instances learn of it from [`Relay::publish`] or [`Relay::publish_later`].
    fn invalidate_writes(&mut self) {
        if let Some(cache) = self.cache.as_ref().filter(|_| !self.writes.is_empty()) {
            let key = &self.pool.fence_key;
            let (tags, fence) = cache.invalidate(&self.database, key, self.writes.take());
            self.to_publish.extend(tags);
            self.fence_tokens.extend(fence);
        }
    }

    /// [`Relay::invalidate_writes`], the writes staying noted: what was sent after them
    /// may still commit them (or more) later.
    fn invalidate_kept_writes(&mut self) {
        if let Some(cache) = self.cache.as_ref().filter(|_| !self.writes.is_empty()) {
            let key = &self.pool.fence_key;
            let (tags, fence) = cache.invalidate(&self.database, key, self.writes.clone());
            self.to_publish.extend(tags);
            self.fence_tokens.extend(fence);
        }
    }

    /// Tells the instances sharing Redis what this client's commits wrote, before the
    /// client hears the transaction ended.
    async fn publish(&mut self) {
        if let Some((cache, tags)) = self.take_publish() {
            cache.publish(&tags).await;
        }
    }

    /// [`Relay::publish`] in the background: nobody waits (the client is gone, or
    /// learns of a failure).
    fn publish_later(&mut self) {
        if let Some((cache, tags)) = self.take_publish() {
            cache.publish_later(tags);
        }
    }

    /// The tags to publish, each once, if there are any (and a cache).
    fn take_publish(&mut self) -> Option<(Arc<ProxyCache>, Vec<String>)> {
        let cache = self.cache.clone().filter(|_| !self.to_publish.is_empty())?;
        let mut tags = std::mem::take(&mut self.to_publish);
        tags.sort_unstable();
        tags.dedup();
        Some((cache, tags))
    }

    /// Reads what writes reach from the catalog (see `cache::Deps`), on a connection
    /// of pgopt's own, bounded in time.
    async fn read_deps(&self, cache: &ProxyCache, ticket: u64) -> Option<Arc<crate::cache::Deps>> {
        let (pool, database) = (&self.pool, &self.database);
        let read = async {
            let mut conn = pool
                .connect_out_of_band(crate::pool::Room::Wait)
                .await
                .map_err(|e| e.to_string())?;
            conn.simple_query(cache.deps_query(), self.max_len).await
        };
        // A connect (each server of a host list in turn), then the query.
        let connect_timeout = pool.limits().round_trip();
        let timeout = pool.target.connect_budget(connect_timeout) + connect_timeout;
        let deps = match tokio::time::timeout(timeout, read).await {
            Ok(Ok(rows)) => Some(crate::cache::Deps::from_rows(&rows)),
            outcome => {
                let error = match outcome {
                    Ok(Err(e)) => e,
                    _ => format!("no answer in {} ms", timeout.as_millis()),
                };
                tracing::warn!(
                    %database,
                    %error,
                    "reading the catalog for the result cache failed; not caching for now"
                );
                None
            }
        };
        let news = cache.set_deps((database, &pool.target.user), ticket, deps);
        if news.privileges {
            if let Some(cache) = &self.cache {
                cache.privileges_changed(database);
            }
        }
        if news.defaults {
            tracing::info!(
                %database,
                "the server's defaults of settings results depend on changed (made directly): \
                 the pools' connections are replaced"
            );
            self.shared.reconnect(Some(database));
        }
        // (Not `deps`: when a schema change dropped this read, that would mark it
        // loading again with no one to read it.)
        cache.ready_deps(database)
    }

    /// Whether the client's next message must wait, on a server connection already
    /// lent, until the server has answered what runs before it: a batch that runs
    /// again goes before anything after it; on a replica, a batch after a read waits
    /// for the read's end (it may not be a read: it is judged when the connection is
    /// back, unless a read-only transaction holds it). (A query pgopt answers itself
    /// waits too: [`Relay::own_answer_waits`], looked at first, as it sends a Flush.)
    fn held_back(&self) -> bool {
        if self.dropping || self.rerun.is_some() || self.shape_checking.is_some() {
            return true;
        }
        if self.identity_pending && self.expected.head_is_injected_query() {
            return true;
        }
        if self.unnamed_use_waits() {
            return true;
        }
        self.ryw.batch_ended && self.ryw.replica.is_some() && self.expected.server_readies() > 0
    }

    /// Transaction mode: whether the next message (a Bind or a Describe) uses the
    /// client's unnamed statement while a Parse of it, sent over another client's in
    /// an earlier batch, is still unanswered. It waits for the answer. Should the
    /// server skip that Parse (an error before it in its batch), the name keeps the
    /// client's statement from before, which is then prepared here again and runs, as
    /// PostgreSQL runs it; sent at once, pgopt could only prepare the newer text again
    /// (it can't let the server's unnamed statement run: it may be another client's).
    fn unnamed_use_waits(&self) -> bool {
        // (Not while skipping to the Sync after a refusal: the message is dropped.)
        if !self.rewrite || self.skipping || self.expected.is_empty() {
            return false;
        }
        let uses_unnamed = match self.cbuf.first() {
            // A Bind: its portal's name, then an empty statement name.
            Some(b'B') => {
                self.cbuf
                    .get(5..)
                    .and_then(|body| memchr::memchr(0, body).and_then(|end| body.get(end + 1)))
                    == Some(&0)
            }
            // A Describe of the unnamed statement.
            Some(b'D') => self.cbuf.get(5..7) == Some(b"S\0"),
            _ => false,
        };
        uses_unnamed && self.statements.unnamed_may_be_foreign()
    }

    /// Whether the next message is a simple query pgopt would answer itself (see
    /// [`Relay::answers_itself`]) behind an unsynced batch the server has not answered
    /// yet. It waits: after an error in the batch PostgreSQL would discard the query
    /// (see `skipping`), which is known only once the error is in.
    fn own_answer_waits(&self) -> bool {
        if !(self.open_batch && self.rewrite)
            || self.copy_in
            || self.expected.is_empty()
            || self.cbuf.first() != Some(&b'Q')
        {
            return false;
        }
        match peek_header(&self.cbuf, self.max_len) {
            Ok(Some(h)) if h.frame_len() <= self.cbuf.len() => {
                self.answers_itself(&self.cbuf[5..h.frame_len()])
            }
            _ => false,
        }
    }

    /// Whether pgopt answers simple query `body` itself: a DEALLOCATE of the client's
    /// own statements ([`Relay::deallocate_locally`]) or a refusal (`judge_session`).
    /// Nothing is decided here.
    fn answers_itself(&self, body: &[u8]) -> bool {
        let mut owned = String::new();
        let Ok(query) = Query::decode_escaped(body, &mut owned) else {
            return false;
        };
        match deallocate_target(query.sql) {
            Some(None) => return true,
            Some(Some(name)) => return self.statements.contains(&name),
            None => {}
        }
        self.worth_judging(body)
            && self
                .shared
                .analyzer
                .analyze(query.sql)
                .is_ok_and(|analysis| {
                    match session_state::judge(
                        &analysis,
                        query.sql,
                        &self.hidden_settings(&analysis, query.sql),
                    ) {
                        SessionVerdict::Refuse(_) => true,
                        SessionVerdict::InBlockOnly(_) => {
                            self.status != TransactionStatus::InTransaction
                        }
                        _ => false,
                    }
                })
    }

    /// On the primary, a batch after a read that is not all here yet: it is judged for
    /// writes (see `read_only_batch`) once it is, as a transaction's first batch is.
    fn batch_incomplete(&self) -> bool {
        self.ryw.batch_ended
            && self.routes.is_some()
            && self.ryw.replica.is_none()
            && !self.ryw.wrote
            && self.cbuf.len() < MAX_FAILOVER_BYTES
            && !crate::routing::batch_visible(&self.cbuf, self.max_len)
    }

    /// Queues one client message for the server, rewriting statement names when needed.
    fn route(&mut self, frame: &Frame) -> Result<(), DecodeError> {
        self.sync_settings_if_behind();
        let queued = (self.to_server.len(), self.to_server_direct.len());
        let routed = self.route_frame(frame);
        if matches!(frame.tag(), b'S' | b'Q') {
            self.statements.end_batch();
        }
        // Only what reaches the server opens or ends its implicit transaction (a
        // message pgopt answers, refuses or skips does neither). Flush, Close and COPY
        // messages do neither either.
        if (self.to_server.len(), self.to_server_direct.len()) != queued {
            // In a failed transaction only COMMIT or ROLLBACK runs (anything else fails,
            // and the rest of the batch is skipped): a portal executed, or a simple
            // query, may end it before its ReadyForQuery says so.
            // (Also with a Sync or query in flight: the transaction may fail by then.)
            if matches!(frame.tag(), b'E' | b'Q')
                && (self.status == TransactionStatus::Failed
                    || self.expected.all_server_readies() > 0)
            {
                self.ending_in_flight = true;
            }
            match frame.tag() {
                b'P' | b'B' | b'D' | b'E' => self.open_batch = true,
                b'S' | b'Q' | b'F' => self.open_batch = false,
                _ => {}
            }
            self.executed_unsynced =
                self.open_batch && (self.executed_unsynced || frame.tag() == b'E');
        }
        routed
    }

    fn route_frame(&mut self, frame: &Frame) -> Result<(), DecodeError> {
        self.ryw.batch_ended = matches!(frame.tag(), b'Q' | b'S');
        if self.cache.is_some() {
            self.note_writes(frame);
        }
        if let Some(batch) = self.failover.as_mut() {
            // A statement closed earlier in the batch is gone from the bookkeeping: a
            // second run could not bind or describe it.
            let after_close =
                matches!(frame.tag(), b'B' | b'D') && holds_close(batch, self.max_len);
            // (Measured before the copy: a large message is not copied only to go.)
            if batch.len() + frame.as_bytes().len() > MAX_FAILOVER_BYTES || after_close {
                self.failover = None;
            } else {
                batch.extend_from_slice(frame.as_bytes());
            }
        }
        if self.skipping {
            // After a refused Parse, as the server would after an error: nothing up to
            // Sync runs. The Sync goes on (a bare one gets a ReadyForQuery back).
            if frame.tag() != b'S' {
                return Ok(());
            }
            self.skipping = false;
        }
        if let Some(replay) = self.replay.as_mut() {
            if !replay.record(frame) {
                self.replay = None;
            }
        }
        if self.tracker.is_some() {
            self.track_client(frame)?;
        }
        // A Parse is decoded once, for the tracker, the session check and the
        // statement names (`route_named`); a simple query's text once, for the
        // session check and the tracker.
        let mut parsed = None;
        let mut decoded_sql = None;
        // (Text that is not UTF-8, escaped: see `pgopt_wire::text`.)
        let mut escaped = String::new();
        let request = match frame.tag() {
            b'P' if self.rewrite => {
                let parse = Parse::decode_escaped(frame.body(), &mut escaped)?;
                parsed = Some(parse);
                if parse.name.is_empty() {
                    self.unnamed_read_back = None;
                    self.unnamed_reset = None;
                }
                if let Some(tracker) = self.tracker.as_mut() {
                    tracker.on_parse(&self.shared.analyzer, &parse);
                }
                let refusal = if self.worth_judging(parse.query.as_bytes()) {
                    self.judge_session(parse.query, Some(&parse))
                } else {
                    // (Not looked at: it may call nextval when it runs.)
                    self.sequence_here |= parse.name.is_empty()
                        && !session_state::cannot_advance(parse.query.as_bytes());
                    None
                };
                if let Some(refusal) = refusal {
                    self.refuse_batch(Some(refusal));
                    return Ok(());
                }
                Request::Parse
            }
            b'P' => Request::Parse,
            b'B' => Request::Bind,
            b'D' => Request::Describe,
            b'C' => Request::Close,
            b'E' => Request::Execute,
            b'S' => {
                if !self.stand_in_portals.is_empty() {
                    self.end_stand_in_portals(true);
                }
                Request::Sync
            }
            b'Q' if self.rewrite => {
                // PostgreSQL drops the unnamed statement at any simple query (pgopt may
                // answer this one itself: the server's is closed before a later use).
                self.unnamed_here = false;
                self.unnamed_read_back = None;
                self.unnamed_reset = None;
                if self.statements.unnamed().is_some() {
                    let change = self.statements.close_unnamed();
                    self.expected.push(Step::Mark { change });
                }
                if !self.stand_in_portals.is_empty() {
                    self.end_stand_in_portals(false);
                }
                if self.deallocate_locally(frame.body()) {
                    return Ok(());
                }
                if self.worth_judging(frame.body()) {
                    let query = Query::decode_escaped(frame.body(), &mut escaped)?;
                    decoded_sql = Some(query.sql);
                    if let Some(refusal) = self.judge_session(query.sql, None) {
                        self.end_open_batch(false);
                        self.expected.push_error(refusal);
                        self.expected.push(Step::Ready);
                        return Ok(());
                    }
                } else {
                    self.sequence_here |= !session_state::cannot_advance(frame.body());
                }
                Request::Query
            }
            // Session mode: a RESET is followed too (see `settings_behind`), and a SET
            // that may be one (SET x TO DEFAULT, SET TIME ZONE LOCAL).
            b'Q' if starts_with_word(frame.body(), b"reset") || may_set_default(frame.body()) => {
                // Only followed: nothing is refused in session mode, and a message it
                // can't read goes to the server as it came.
                if let Ok(query) = Query::decode_escaped(frame.body(), &mut escaped) {
                    decoded_sql = Some(query.sql);
                    self.follow_reset(query.sql);
                }
                Request::Query
            }
            b'Q' | b'F' => Request::Query,
            // Flush and COPY data/done/fail: no response of their own.
            b'H' | b'd' | b'c' | b'f' => {
                self.queue_frame(frame);
                return Ok(());
            }
            // Anything else has no place here: the session ends with 08P01.
            tag => {
                return Err(DecodeError::UnknownTag {
                    tag: pgopt_wire::Tag(tag),
                    direction: pgopt_wire::Direction::Frontend,
                })
            }
        };
        if self.rewrite && self.route_named(request, frame, parsed)? {
            return Ok(());
        }
        self.queue_frame(frame);
        // (Session mode, with the cache: a Parse whose answer settles what its name
        // holds. One noted that went no further, skipped, changes no name.)
        let step = match self.parse_noted.take() {
            Some((name, held)) if request == Request::Parse => Step::Parse {
                prepared: None,
                change: self.parses.parse(name, held),
            },
            _ => Step::Server {
                request,
                prepared: None,
            },
        };
        self.expected.push(step);
        if let Some(tracker) = self.tracker.as_mut() {
            // Statements that reach the server: their completions come back.
            match (request, frame.tag()) {
                (Request::Execute, _) => {
                    tracker.on_execute(Execute::decode(frame.body())?.portal, self.clock)
                }
                (Request::Query, b'Q') => {
                    let mut owned = String::new();
                    let sql = match decoded_sql {
                        Some(sql) => sql,
                        None => Query::decode_escaped(frame.body(), &mut owned)?.sql,
                    };
                    tracker.on_query(&self.shared.analyzer, sql, self.clock)
                }
                (Request::Query, _) => tracker.on_function_call(self.clock),
                (Request::Sync, _) => tracker.on_sync(),
                _ => {}
            }
        }
        Ok(())
    }

    /// A RELOAD paused or resumed query insight: the session starts or stops recording,
    /// only with nothing in flight (no statement is half tracked). A tracker started
    /// now learns the named statements the client prepared before (transaction mode
    /// keeps them) and, when a server is held, its settings and route; in session
    /// mode, statements prepared before are not recorded until prepared again.
    fn follow_insight(&mut self) {
        let Some(state) = self.shared.insight.as_ref() else {
            return;
        };
        match (state.recording(), self.tracker.is_some()) {
            (true, false) => {
                let mut tracker = Tracker::new(
                    state.clone(),
                    &self.database,
                    &self.login_user,
                    self.info.addr.tcp(),
                );
                for (name, parse) in self.statements.parses() {
                    tracker.on_parse(&self.shared.analyzer, &Parse { name, ..parse });
                }
                self.tracker = Some(tracker);
                if self.server.is_some() {
                    self.tell_tracker(); // else at the next checkout
                }
            }
            (false, true) => self.tracker = None,
            _ => {}
        }
    }

    /// Query insight learns where the transaction runs and the client's settings
    /// (plan captures apply them: search_path…), once a server is held.
    fn tell_tracker(&mut self) {
        let Some(tracker) = self.tracker.as_mut() else {
            return;
        };
        let version = self.settings.version();
        if tracker.settings.0 != version {
            let statements = self.settings_statements();
            if let Some(tracker) = self.tracker.as_mut() {
                tracker.settings = (version, statements);
            }
        }
        let Some(tracker) = self.tracker.as_mut() else {
            return;
        };
        if self.routes.is_some() {
            tracker.route = Some(match self.ryw.replica {
                Some(i) => pgopt_insight::Route::Replica(i as u16),
                None => pgopt_insight::Route::Primary,
            });
        }
    }

    /// Query insight: statement names and portals as the client uses them. In
    /// transaction mode the relay decodes Parse and Bind itself and tells the tracker
    /// there (`route`, `route_named`).
    fn track_client(&mut self, frame: &Frame) -> Result<(), DecodeError> {
        let Some(tracker) = self.tracker.as_mut() else {
            return Ok(());
        };
        match frame.tag() {
            b'P' | b'B' if self.rewrite => {}
            b'P' => {
                let mut owned = String::new();
                let parse = Parse::decode_escaped(frame.body(), &mut owned)?;
                tracker.on_parse(&self.shared.analyzer, &parse);
            }
            b'B' => {
                let bind = BindHead::decode(frame.body())?;
                let whole = self.bind_pass.is_none().then(|| &frame.as_bytes()[..]);
                tracker.on_bind(bind.portal, bind.statement, whole);
            }
            b'C' => {
                let close = Close::decode(frame.body())?;
                tracker.on_close(close.target == Target::Statement, close.name);
            }
            _ => {}
        }
        Ok(())
    }

    /// Transaction mode: named statements. `Ok(true)` when the message was handled here.
    /// `parse`: the frame decoded, when it is a Parse.
    fn route_named(
        &mut self,
        request: Request,
        frame: &Frame,
        parse: Option<Parse<'_>>,
    ) -> Result<bool, DecodeError> {
        let body = frame.body();
        let mut escaped = String::new();
        match request {
            Request::Parse => {
                let parse = match parse {
                    Some(parse) => parse,
                    None => Parse::decode_escaped(body, &mut escaped)?,
                };
                // (A cheap look first: every Parse comes here.)
                let first = parse.query.trim_ascii_start().as_bytes().first();
                if first.map(u8::to_ascii_lowercase) == Some(b'd') {
                    if let Some(stand_in) = self.deallocate_stand_in(&parse) {
                        let parse = Parse::decode(stand_in.body())?;
                        return self.route_parse(&stand_in, parse);
                    }
                }
                self.route_parse(frame, parse)
            }
            Request::Bind => {
                // Only the names are read; the parameters go on as bytes.
                let bind = BindHead::decode(body)?;
                if self.stand_ins {
                    self.note_stand_in_portal(&bind);
                }
                if let Some(tracker) = self.tracker.as_mut() {
                    let whole = self.bind_pass.is_none().then(|| &frame.as_bytes()[..]);
                    tracker.on_bind(bind.portal, bind.statement, whole);
                }
                if bind.statement.is_empty() {
                    if let Some(names) = self.unnamed_read_back.clone() {
                        self.reread(&names);
                    }
                    if let Some(change) = self.unnamed_reset.clone() {
                        self.reset_bound(&change);
                    }
                    if let Some(id) = self.unnamed_lacking_in_failed() {
                        let parse = self.statements.unnamed().cloned().unwrap_or_default();
                        if self.bind_in_failed(id, "", &parse, bind.rest) {
                            return Ok(true);
                        }
                    }
                    self.ensure_unnamed();
                }
                let Some((prepared, outdated)) = self.client_statement(bind.statement) else {
                    return Ok(false);
                };
                if !self.read_back_statements.is_empty() {
                    self.reread_bound(prepared.id);
                }
                if !self.resets_at_binds.is_empty() {
                    if let Some(change) = self.resets_at_binds.get(&prepared.id).cloned() {
                        self.reset_bound(&change);
                    }
                }
                if let Some(error) = self.sequences_at_bind(&prepared, bind.statement.is_empty()) {
                    self.refuse_batch(Some(error));
                    return Ok(true);
                }
                if self.status == TransactionStatus::Failed
                    && self.lacks_outside_end(&prepared)
                    && self.bind_in_failed(prepared.id, bind.statement, &prepared.parse, bind.rest)
                {
                    return Ok(true);
                }
                // (In a failed transaction PostgreSQL refuses the Bind before it
                // checks the plan: the server answers.)
                if outdated && !self.surely_failed() {
                    // Its result shape changed since the client learned it: fine when
                    // the client asks for the portal's description, else PostgreSQL's
                    // own error until it prepares the statement again.
                    if self.replayed
                        || batch_describes_portal(&self.cbuf, self.max_len)
                        || self.shape_is_back(prepared.id)
                    {
                        let epoch = self.pool.plan_epoch();
                        self.statements.refresh(bind.statement, epoch);
                    } else {
                        let error = plan_changed_error();
                        if error.is_some() {
                            self.pool
                                .stats
                                .record_error(sqlstate::FEATURE_NOT_SUPPORTED.as_bytes());
                        }
                        self.refuse_batch(error);
                        return Ok(true);
                    }
                }
                if let Some(error) = self.encoding_changed(&prepared, bind.statement) {
                    self.refuse_batch(Some(error));
                    return Ok(true);
                }
                // A batch that starts here is kept, in case this server's plan of the
                // statement turns out to be stale and the batch must run again.
                self.keep_for_replay(frame);
                self.ensure_prepared(&prepared);
                if !self.queue_renamed_bind(&bind, &prepared.server_name, frame) {
                    return Ok(false);
                }
                self.expected.push(Step::Bind {
                    statement: prepared.id,
                });
                if !self.schema_changers.is_empty() && self.schema_changers.contains(&prepared.id) {
                    // (Its own copy too: prepared afresh behind it.)
                    self.schema_changed();
                }
                Ok(true)
            }
            Request::Describe => {
                let describe = Describe::decode(body)?;
                if describe.target != Target::Statement {
                    return Ok(false);
                }
                if describe.name.is_empty() {
                    // (An unnamed statement's description is not learnt: its texts
                    // may be many. One a named statement shares is used.)
                    let id = self.unnamed_lacking_in_failed();
                    if let Some(id) = id.filter(|_| self.surely_failed()) {
                        if self.describe_in_failed(id) {
                            return Ok(true);
                        }
                    }
                    self.ensure_unnamed();
                    return Ok(false);
                }
                let Some((prepared, _)) = self.client_statement(describe.name) else {
                    return Ok(false);
                };
                if self.lacking_in_failed(&prepared) && self.describe_in_failed(prepared.id) {
                    return Ok(true);
                }
                if self.describe_in_block(&prepared, describe.name) {
                    return Ok(true);
                }
                if let Some(error) = self.encoding_changed(&prepared, describe.name) {
                    self.refuse_batch(Some(error));
                    return Ok(true);
                }
                // A batch that starts here is kept: the server's copy may be another
                // client's from before a schema change, which PostgreSQL would not
                // have for a statement just parsed (see `replan.rs`).
                self.keep_for_replay(frame);
                // (No Describe of pgopt's after it: the client's teaches the same.)
                self.prepare_here(&prepared);
                // The client learns the statement's current shape.
                self.statements
                    .refresh(describe.name, self.pool.plan_epoch());
                let rewritten = Describe {
                    target: Target::Statement,
                    name: &prepared.server_name,
                };
                if rewritten.encode(&mut self.to_server).is_err() {
                    return Ok(false);
                }
                self.expected.push(Step::DescribeStatement {
                    statement: prepared.id,
                    serial: self.statements.serial(describe.name),
                });
                Ok(true)
            }
            Request::Close => {
                let close = Close::decode(body)?;
                if close.target == Target::Portal && !self.stand_in_portals.is_empty() {
                    self.stand_in_portals
                        .retain(|(portal, _)| portal != close.name);
                }
                if close.target == Target::Statement && close.name.is_empty() {
                    let change = self.statements.close_unnamed();
                    self.to_server.extend_from_slice(frame.as_bytes());
                    self.expected.push(Step::CloseUnnamed { change });
                    return Ok(true);
                }
                if close.target != Target::Statement || close.name.is_empty() {
                    return Ok(false);
                }
                // The server keeps its copy for other clients; the name is the client's.
                let change = self.statements.close(close.name);
                self.expected.push(Step::Answer { tag: b'3', change });
                Ok(true)
            }
            Request::Execute if !self.stand_in_portals.is_empty() => self.execute_stand_in(frame),
            _ => Ok(false),
        }
    }

    /// [`Relay::route_named`] of a Parse (`frame`, decoded as `parse`).
    #[inline(always)]
    fn route_parse(&mut self, frame: &Frame, parse: Parse<'_>) -> Result<bool, DecodeError> {
        if parse.name.is_empty() {
            let change = self
                .statements
                .parse_unnamed(frame.as_bytes(), !self.unnamed_here);
            self.unnamed_here = true;
            self.queue_frame(frame);
            self.expected.push(Step::Parse {
                prepared: None,
                change,
            });
            return Ok(true);
        }
        let Ok(prepared) = Prepared::from_parse(&parse, self.encoding_salt()) else {
            return Ok(false);
        };
        // PostgreSQL's checks come after its parser's: a syntax error wins.
        let parses = |relay: &Self| relay.shared.analyzer.analyze(parse.query).is_ok();
        // The status is the last ReadyForQuery's: sure only with nothing in
        // flight and no batch open (a ROLLBACK may have run since).
        let failed = self.status == TransactionStatus::Failed;
        let surely_failed = failed && self.expected.is_empty() && !self.open_batch;
        let ends = ends_transaction(parse.query);
        let refusal = if surely_failed && !ends && parses(self) {
            // PostgreSQL refuses it before anything else (the server may have
            // the statement already, and pgopt would answer it).
            Some(in_failed_transaction_error())
        } else if !self.rerouting && self.statements.taken(parse.name) && parses(self) {
            // Whether the transaction is still failed (25P02) or a COMMIT or
            // ROLLBACK in flight ended it (42P05) only the server knows: a Parse
            // under the server name of the statement the name stands for, once
            // the server has it, gets the server's answer, which then names the
            // client's statement.
            if failed && !ends && self.ending_in_flight && self.ask_server(&parse) {
                return Ok(true);
            }
            // The batch fails as it would there (in a failed transaction, with
            // PostgreSQL's first complaint). A batch pgopt runs again on
            // another server after a failover prepares its names again.
            self.fail_open_batch();
            Some(if failed && !ends && !self.ending_in_flight {
                in_failed_transaction_error()
            } else {
                duplicate_statement_error(parse.name)
            })
        } else {
            None
        };
        if let Some(error) = refusal {
            if let Some(error) = error {
                self.expected.push_error(error);
            }
            self.skipping = true;
            return Ok(true);
        }
        let prepared = Arc::new(prepared);
        let id = prepared.id;
        let on_server = self.server_conn().prepared.contains(&id);
        if on_server {
            self.server_conn().prepared.touch(id);
        }
        let epoch = self.pool.plan_epoch();
        let change = self.statements.prepare(parse.name, prepared.clone(), epoch);
        if on_server && failed && !ends && !self.ending_in_flight {
            // PostgreSQL refuses it in a failed transaction: the server says
            // so (25P02 comes before its "already exists"). Nothing to forget
            // when it does: the server keeps its statement.
            self.to_server.extend_from_slice(&prepared.parse);
            self.expected.push(Step::Parse {
                prepared: None,
                change,
            });
        } else if on_server
            && (self.in_block()
                || self.executed_unsynced
                || failed && !surely_ends_transaction(parse.query))
        {
            // The server has it, but its answer is the server's to give: in a
            // block (maybe begun by a portal executed earlier in this batch)
            // PostgreSQL's Parse takes the transaction's first snapshot (SET
            // TRANSACTION ISOLATION LEVEL is refused after it), and in a failed
            // one it is refused unless it ends the transaction (a comment
            // first: the server judges) or a COMMIT or ROLLBACK in flight ended
            // it. Parsed under a name of pgopt's and closed at once.
            self.probe_parse(&parse, change);
        } else {
            if on_server {
                // Prepared afresh, as PostgreSQL plans a fresh Parse: the
                // connection's copy may be from before a schema change made outside
                // pgopt, whose Bind would fail with "cached plan must not change
                // result type", which no statement just parsed gets. (Marked stale:
                // `send_parse` closes it first, pipelined.)
                let server = self.server_conn();
                server.prepared.remove(&id);
                server.mark_stale(id);
            }
            self.send_parse(
                &prepared,
                Step::Parse {
                    prepared: Some(id),
                    change,
                },
            );
            self.learn_description(&prepared);
        }
        Ok(true)
    }

    /// What the client's `client_encoding` adds to its statements' ids (see
    /// `statements::statement_id`), worked out again only when its settings change.
    fn encoding_salt(&mut self) -> u64 {
        self.encoding().salt
    }

    /// The client's encoding as pgopt reads it, worked out again only when its
    /// settings change.
    fn encoding(&mut self) -> Encoding {
        let version = self.settings.version();
        match self.encoding_memo {
            Some((v, encoding)) if v == version => encoding,
            _ => {
                let encoding = self.encoding_now();
                self.encoding_memo = Some((version, encoding));
                encoding
            }
        }
    }

    /// A statement whose text, beyond ASCII, was parsed under another client_encoding
    /// than the client's now, and which the server connection lacks: PostgreSQL's
    /// keeps its meaning, and pgopt can't prepare it again so. The error (0A000).
    fn encoding_changed(&mut self, prepared: &Prepared, name: &str) -> Option<Bytes> {
        let parsed_under = prepared.encoding?;
        if parsed_under == self.encoding_salt()
            || self.server_conn().prepared.contains(&prepared.id)
        {
            return None;
        }
        let message = format!(
            "prepared statement \"{name}\" was prepared under another client_encoding: \
             pgopt cannot prepare it again on another server connection as PostgreSQL \
             keeps it; prepare it again"
        );
        error_response(sqlstate::FEATURE_NOT_SUPPORTED, &message)
    }

    /// [`Relay::encoding`], worked out now.
    fn encoding_now(&self) -> Encoding {
        let default = &self.default_encoding;
        let name = self.settings.encoding_name(default);
        Encoding {
            salt: self.settings.encoding_salt(default),
            ascii_trails: ASCII_TRAILS.contains(&name.as_str()),
        }
    }

    /// A client's Parse of `DEALLOCATE name`, one of its statements, or of
    /// `DEALLOCATE ALL`, as its stand-in's Parse (see
    /// `statements::deallocate_stand_in`); `None` for any other.
    #[cold]
    fn deallocate_stand_in(&mut self, parse: &Parse<'_>) -> Option<Frame> {
        if !starts_with_word(parse.query.as_bytes(), b"deallocate") {
            return None;
        }
        let target = deallocate_target(parse.query)?;
        // (Another name is the server's to refuse, or a block's PREPARE.)
        if target
            .as_ref()
            .is_some_and(|n| !self.statements.contains(n))
        {
            return None;
        }
        if target.is_none() && self.sql_prepared {
            // A block's SQL PREPAREs go too: DEALLOCATE ALL goes as it came, and the
            // client's names change at its Execute as a stand-in's do.
            self.stand_ins = true;
            return None;
        }
        let text = deallocate_stand_in(target.as_deref());
        let mut buf = BytesMut::new();
        Parse {
            name: parse.name,
            query: &text,
            param_types: parse.param_types,
        }
        .encode(&mut buf)
        .ok()?;
        let frame = Frame::from_bytes(buf.freeze(), self.max_len).ok()?;
        self.stand_ins = true;
        Some(frame)
    }

    /// A Bind, once the client has parsed a `DEALLOCATE` stand-in: a portal of one is
    /// listed with what it deallocates, any other forgotten.
    fn note_stand_in_portal(&mut self, bind: &BindHead<'_>) {
        // (A DEALLOCATE ALL sent as it came deallocates the client's names too. Either
        // begins with a `d`, looked at before the text is decoded: every Bind comes
        // here.)
        let target_of = |parse: &Bytes| {
            let query = crate::statements::query_bytes(parse)?;
            if !matches!(query.trim_ascii_start().first(), Some(b'd' | b'D')) {
                return None;
            }
            let q = Parse::decode(parse.get(5..)?).ok()?.query;
            stand_in_target(q).or_else(|| deallocate_target(q).filter(Option::is_none))
        };
        let target = if bind.statement.is_empty() {
            self.statements.unnamed().and_then(target_of)
        } else {
            self.statements.parse_of(bind.statement).and_then(target_of)
        };
        self.stand_in_portals
            .retain(|(portal, _)| portal != bind.portal);
        if let Some(target) = target {
            self.stand_in_portals
                .push((bind.portal.to_string(), target));
        }
    }

    /// Portals a Sync or simple query ends (`sync`: a Sync): the unnamed one at a
    /// simple query, every one when no transaction block may be open (its implicit
    /// transaction ends). A stand-in's listed as one after that may be another
    /// portal (a cursor DECLAREd under its name).
    fn end_stand_in_portals(&mut self, sync: bool) {
        if !self.in_block() {
            self.stand_in_portals.clear();
        } else if !sync {
            self.stand_in_portals
                .retain(|(portal, _)| !portal.is_empty());
        }
    }

    /// The client's Execute of a portal: of a `DEALLOCATE` stand-in, the client's
    /// names change here, as PostgreSQL's do when it runs it, and the server runs the
    /// stand-in, whose answer settles the change. A name the client no longer has (it
    /// closed it after the Parse) is PostgreSQL's 26000.
    fn execute_stand_in(&mut self, frame: &Frame) -> Result<bool, DecodeError> {
        let execute = Execute::decode(frame.body())?;
        let Some((_, target)) = self
            .stand_in_portals
            .iter()
            .find(|(p, _)| p == execute.portal)
        else {
            return Ok(false);
        };
        let all = target.is_none();
        let target = target.clone();
        let Some(change) = self.statements.deallocate(target.as_deref()) else {
            let name = target.unwrap_or_default();
            let message = format!("prepared statement \"{name}\" does not exist");
            self.refuse_batch(error_response(
                sqlstate::INVALID_SQL_STATEMENT_NAME,
                &message,
            ));
            return Ok(true);
        };
        if let Some(tracker) = self.tracker.as_mut() {
            tracker.on_execute(execute.portal, self.clock);
        }
        self.queue_frame(frame);
        self.expected.push(Step::Deallocate { all, change });
        Ok(true)
    }

    /// A Parse of a name the client has, in a transaction a COMMIT or ROLLBACK in
    /// flight may have ended: the client's query is sent under the server name of the
    /// statement the name stands for (prepared there first if needed). A failed
    /// transaction refuses it first (it is no COMMIT or ROLLBACK: 25P02), else the name
    /// is taken (42P05, which names the client's statement). (The existing statement's
    /// own text may be one a failed transaction takes: not it, then.) `false` when it
    /// could not be sent.
    fn ask_server(&mut self, parse: &Parse<'_>) -> bool {
        let Some(existing) = self
            .statements
            .get_mut(parse.name)
            .map(|s| s.prepared.clone())
        else {
            return false;
        };
        if !self.server_conn().prepared.contains(&existing.id) {
            let injected = Step::Injected {
                prepared: existing.id,
            };
            self.send_parse(&existing, injected);
        }
        let probe = Parse {
            name: &existing.server_name,
            query: parse.query,
            param_types: parse.param_types,
        };
        if probe.encode(&mut self.to_server).is_err() {
            return false;
        }
        self.expected.push(Step::Server {
            request: Request::Parse,
            prepared: None,
        });
        true
    }

    /// The client's name changes [`Expected`] settled: those that did not happen are
    /// undone.
    #[inline]
    fn settle_names(&mut self) {
        if !self.expected.has_news() {
            return;
        }
        for (change, settled) in self.expected.drain_settled() {
            if self.rewrite {
                self.statements.settle(change, settled);
            } else {
                self.parses.settle(change, settled);
            }
        }
        if self.expected.take_unnamed_unsure() {
            self.unnamed_here = false;
        }
        // The server skipped pgopt's Close of a stale statement (and so the Parse
        // after it, forgotten): closed and prepared again at its next use.
        for id in self.expected.take_still_stale() {
            if let Some(server) = self.server.as_mut() {
                server.conn.mark_stale(id);
            }
        }
        for (id, mark) in self.expected.take_closed() {
            if let Some(server) = self.server.as_mut() {
                server.conn.closed(id, mark);
            }
        }
    }

    /// The client uses its unnamed statement: prepared again first when this server
    /// connection may not have it (the client parsed it before a Sync, and another
    /// connection was lent since). When the client has none, the server's (another
    /// client's, or pgopt's) is closed first, so the server answers 26000 as
    /// PostgreSQL would, and runs nothing of someone else's.
    fn ensure_unnamed(&mut self) {
        // (A Parse of it in a batch still in flight, sent over another client's, may
        // yet be skipped: sent again. Should that Parse fail on its own, the client
        // hears its error again where PostgreSQL would say 26000; should it be
        // skipped, the client's latest statement runs where PostgreSQL would run the
        // one before: neither runs another client's.)
        if self.unnamed_here && !self.statements.unnamed_may_be_foreign() {
            return;
        }
        match self.statements.unnamed() {
            Some(parse) => {
                self.to_server.extend_from_slice(parse);
                self.expected.push(Step::InjectedUnnamed);
            }
            None => {
                let close = Close {
                    target: Target::Statement,
                    name: "",
                };
                if close.encode(&mut self.to_server).is_err() {
                    return;
                }
                self.expected.push(Step::InjectedClose {
                    stale: None,
                    mark: 0,
                });
            }
        }
        self.unnamed_here = true;
    }

    /// Answers the proxy owes at the head of [`Expected`], now that everything
    /// before them is done.
    #[inline]
    fn answer_owed(&mut self) {
        if !self.expected.owes_answer() {
            return;
        }
        let statements = &mut self.statements;
        self.expected
            .answer_ready(&mut self.out, self.status, |id, applied| {
                statements.settle(id, applied)
            });
    }

    /// Transaction mode: `DEALLOCATE name` of one of the client's statements, or
    /// `DEALLOCATE ALL`, forgets the client's names and is answered here; the server
    /// keeps its `pgopt_…` statements for other clients.
    /// Whether it took effect is settled when it is answered: the transaction may
    /// fail before then (the client need not wait for a ReadyForQuery first).
    fn deallocate_locally(&mut self, body: &[u8]) -> bool {
        // In a failed transaction the server's 25P02 is the right answer.
        if self.status == TransactionStatus::Failed && self.expected.is_empty() {
            return false;
        }
        if !starts_with_word(body, b"deallocate") {
            return false;
        }
        let Ok(query) = Query::decode(body) else {
            return false;
        };
        let (all, id) = match deallocate_target(query.sql) {
            Some(None) => (true, self.statements.deallocate(None)),
            Some(Some(name)) => (false, self.statements.deallocate(Some(&name))),
            None => return false,
        };
        let Some(id) = id else { return false };
        self.end_open_batch(true);
        // In a transaction block DEALLOCATE is a statement like any other: it takes
        // the transaction's first snapshot, after which SET TRANSACTION ISOLATION
        // LEVEL is refused. A query that takes it too, its answers dropped.
        // (Not into a COPY: the server would take it for a protocol violation.)
        if self.in_block()
            && !self.copy_in
            && self.server.is_some()
            && (Query { sql: "SELECT" })
                .encode(&mut self.to_server)
                .is_ok()
        {
            self.expected.push(Step::InjectedQuery {
                identity: false,
                first: false,
            });
            self.unnamed_here = false;
        }
        self.expected.push(Step::Deallocated { all, id });
        true
    }

    /// A message pgopt refuses in an extended-protocol batch: the batch fails there
    /// (see [`Relay::fail_open_batch`]) with `error`, and, as after a server's
    /// error, nothing more of it goes on until the client's Sync.
    fn refuse_batch(&mut self, error: Option<Bytes>) {
        if let Some(error) = error {
            self.fail_open_batch();
            self.expected.push_error(error);
        }
        self.skipping = true;
    }

    /// A simple query pgopt answers itself ends what the server holds open of an
    /// unsynced batch as the query would have: a success commits its implicit
    /// transaction (a Sync), a refusal fails it (a statement that raises an error,
    /// then a Sync: rolled back, or a transaction block left failed, as PostgreSQL
    /// does for a query that fails). A refusal fails an open transaction block too.
    /// The server's answers are not the client's; a server skipping after an earlier
    /// error stops at the Sync.
    fn end_open_batch(&mut self, success: bool) {
        if !(self.open_batch || !success && self.in_block()) || self.server.is_none() {
            return;
        }
        if !success {
            self.queue_failing_statement();
        }
        frame_into(&mut self.to_server, b'S', &[]);
        // Its ReadyForQuery is observed (see `handle_server`): insight expects it.
        if let Some(tracker) = self.tracker.as_mut() {
            tracker.on_sync();
        }
        // A commit failing at the Sync (a deferred constraint, a serialization
        // failure) is the client's to hear.
        self.expected.push(Step::InjectedSync {
            relay_errors: success,
        });
        self.open_batch = false;
        self.executed_unsynced = false;
    }

    /// A Parse pgopt refuses in a batch whose earlier messages reached the server, or
    /// in a transaction block, fails the server's transaction too, as the error of a
    /// statement there would: nothing the batch or block did commits.
    fn fail_open_batch(&mut self) {
        if (self.open_batch || self.in_block()) && self.server.is_some() {
            self.queue_failing_statement();
            self.expected.push(Step::InjectedFailure);
        }
    }

    /// Whether the server is, or may be by the time it gets there, in a transaction
    /// block that has not failed: a statement pgopt refuses fails it, as an error
    /// there would (PostgreSQL then answers 25P02 to all but the end of the block,
    /// and COMMIT rolls back). `status` is the last ReadyForQuery's: with statements
    /// still in flight (a pipelined `BEGIN`) the block may be open all the same. (A
    /// failing statement outside a block fails nothing of the client's.)
    fn in_block(&self) -> bool {
        self.status == TransactionStatus::InTransaction || self.expected.observed_readies() > 0
    }

    /// An Execute of a portal that does not exist, named for why (the server's log
    /// says so): it fails as a statement's error would, and touches neither the
    /// unnamed statement nor the unnamed portal, which the client may still use.
    fn queue_failing_statement(&mut self) {
        const PORTAL: &[u8] = b"pgopt refused a statement of this unsynced batch\0";
        let mut execute = Vec::with_capacity(PORTAL.len() + 4);
        execute.extend_from_slice(PORTAL);
        execute.extend_from_slice(&[0, 0, 0, 0]); // all rows
        frame_into(&mut self.to_server, b'E', &execute);
    }

    /// Transaction mode: what a statement does to session state. A refusal comes back
    /// as an encoded ErrorResponse; a settings change is tracked — for a simple query
    /// once the server confirms it, for a Parse at once.
    /// Callers run the cheap `may_affect_session` pass first.
    /// Whether [`Relay::judge_session`] should look at `sql`: with query insight on,
    /// always (insight analyses the statement anyway, and the analyzer keeps its last
    /// text, so the judgement's analysis is shared); else when the word scan
    /// ([`session_state::may_affect_session`]) finds a statement that may change
    /// session state.
    fn worth_judging(&self, sql: &[u8]) -> bool {
        self.tracker.is_some()
            || may_affect_session(sql)
            || self
                .function_settings
                .current
                .as_ref()
                .is_some_and(|f| f.mentioned(sql))
    }

    /// What a statement may set through the functions it calls (see
    /// `function_settings.rs`), to read back after it.
    fn hidden_settings(&self, analysis: &pgopt_sql::Analysis, sql: &str) -> Vec<String> {
        match &self.function_settings.current {
            Some(f) => f.reread(analysis, sql),
            None => Vec::new(),
        }
    }

    /// When the functions that may change settings are not those the client's named
    /// statements were judged against (each at its Parse): what each may set through
    /// them is found again, and read back after its Binds from now on. (A name found
    /// before stays: reading it back costs a round trip, never a wrong value.)
    fn rejudge_statements(&mut self) {
        let Some(functions) = self.function_settings.current.clone() else {
            return;
        };
        if std::mem::replace(&mut self.statements_judged, functions.signature)
            == functions.signature
        {
            return;
        }
        let mut found = Vec::new();
        for (id, sql) in self.statements.texts() {
            if !functions.mentioned(sql.as_bytes()) {
                continue;
            }
            if let Ok(analysis) = self.shared.analyzer.analyze(&sql) {
                let names = functions.reread(&analysis, &sql);
                if !names.is_empty() {
                    found.push((id, names));
                }
            }
        }
        for (id, names) in found {
            let mut all: Vec<String> = self
                .read_back_statements
                .get(&id)
                .map(|known| known.to_vec())
                .unwrap_or_default();
            for name in names {
                if !all.contains(&name) {
                    all.push(name);
                }
            }
            self.read_back_statements.insert(id, all.into());
        }
    }

    fn judge_session(&mut self, sql: &str, parse: Option<&Parse<'_>>) -> Option<Bytes> {
        let simple = parse.is_none();
        // A named statement runs at its Binds, judged there (`sequences_at_bind`).
        let runs_now = parse.is_none_or(|p| p.name.is_empty());
        let Ok(analysis) = self.shared.analyzer.analyze(sql) else {
            if pgopt_wire::text::is_escaped(sql) && self.encoding().ascii_trails {
                // PostgreSQL reads it otherwise: what it does to the session is unknown.
                return self.refusal(&multibyte_refusal());
            }
            self.sequence_here |= runs_now;
            return None;
        };
        if runs_now && !self.sequence_here {
            if let Some(refusal) = self.judge_sequences(SequenceUse::of(&analysis)) {
                return Some(refusal);
            }
        }
        // A CREATE of a function, trigger, view…: the catalog is read again once it ended.
        let ddl = analysis.kinds.contains(&StatementKind::Ddl);
        self.creates |= ddl && crate::function_settings::creates_callers(sql);
        self.defaults_altered |= session_state::alters_defaults(sql.as_bytes(), &analysis);
        if ddl && session_state::may_change_shapes(sql.as_bytes()) {
            self.schema_changed();
            if let Some(parse) = parse.filter(|p| !p.name.is_empty()) {
                let id = statement_id(parse, self.encoding_salt());
                self.schema_changers.insert(id);
            }
        }
        let hidden = self.hidden_settings(&analysis, sql);
        match session_state::judge(&analysis, sql, &hidden) {
            SessionVerdict::Relay => None,
            SessionVerdict::AfterRun { reread, resets } => {
                // Read back after this batch (a simple query runs it; a Parse may be
                // executed in it), and after every batch that binds the statement.
                self.reread(&reread);
                if let Some(parse) = parse {
                    self.read_back_at_binds(parse, reread);
                } else if !resets.is_empty() {
                    // (What was queued before them is read back no more: see
                    // `drop_read_backs_reset_by`; what a later batch queues is.)
                    for reset in &resets {
                        self.drop_read_backs_reset_by(reset);
                    }
                    let before = self.expected.observed_readies();
                    self.pending_resets.push((resets, before, false));
                }
                None
            }
            SessionVerdict::Track(change) => {
                if simple {
                    // (As for the RESETs among several statements, above.)
                    self.drop_read_backs_reset_by(&change);
                    // Its CommandComplete comes after the ReadyForQuerys owed before it
                    // (those of Syncs pgopt sent to end a batch too: they are observed).
                    let before = self.expected.observed_readies();
                    self.pending_change = Some((change, sql.to_string(), before));
                } else if self.server.is_some() {
                    self.keep_before_batch_change();
                    let server = self.server.as_mut()?;
                    let applied = &mut server.conn.applied;
                    self.settings.confirm(&change, sql, applied);
                    self.settings_behind |= !matches!(change, Change::Set(_));
                    self.tracked_until_ready();
                    self.drop_read_backs_reset_by(&change);
                    let dependents = self.settings.encoding_dependents(&change);
                    if !dependents.is_empty() {
                        self.reread(&dependents);
                    }
                    // A client may run it again later (Bind and Execute with no new
                    // Parse), after another change: a SET is read back after each batch
                    // that binds it; a RESET is confirmed again at each Bind (the
                    // server's RESET gives its own default, where the client's start-up
                    // value is applied again).
                    match (parse, &change) {
                        (Some(parse), _) if sets_characteristics(&change) => {
                            let names = vec![session_state::CHARACTERISTICS.to_string()];
                            self.read_back_at_binds(parse, names);
                        }
                        (Some(parse), Change::Set(name)) => {
                            self.read_back_at_binds(parse, vec![name.clone()]);
                        }
                        (Some(parse), Change::Reset(_) | Change::ResetAll)
                            if parse.name.is_empty() =>
                        {
                            self.unnamed_reset = Some(change.clone());
                        }
                        (Some(parse), Change::Reset(_) | Change::ResetAll) => {
                            let id = statement_id(parse, self.encoding_salt());
                            self.resets_at_binds.insert(id, change.clone());
                        }
                        _ => {}
                    }
                }
                None
            }
            // A block's PREPARE: deallocated once the block ends (`deallocate_sql`).
            SessionVerdict::InBlockOnly(_)
                if simple && self.status == TransactionStatus::InTransaction =>
            {
                self.sql_prepared = true;
                None
            }
            SessionVerdict::Refuse(message) | SessionVerdict::InBlockOnly(message) => {
                self.refusal(&message)
            }
        }
    }

    /// The client is changing the schema: statements are prepared afresh on every
    /// server connection of the pool before their next use, on this one from the
    /// statement after this (see `Pool::schema_changed`).
    /// Again once the transaction that made it ends (`changed_schema`): connections
    /// checked out meanwhile prepared their statements against the schema before it.
    fn schema_changed(&mut self) {
        self.pool.schema_changed();
        self.changed_schema = true;
        if let Some(server) = self.server.as_mut() {
            server.conn.schema_changed();
        }
    }

    /// lastval()/currval() as the first thing on a connection (nothing before it since
    /// the checkout, nor beside it in a query of several statements, may have called
    /// nextval) would read the sequence values another client left in the server's
    /// session: refused. Else notes whether the statement may call nextval.
    fn judge_sequences(&mut self, used: SequenceUse) -> Option<Bytes> {
        if used.refused_first() {
            return self.refusal(&session_state::sequence_refusal());
        }
        self.sequence_here = used.advances;
        None
    }

    /// [`Relay::judge_sequences`] for a Bind of a client's named statement, the first
    /// message of a transaction that runs it (its Parse was not judged so: it runs here).
    fn sequences_at_bind(&mut self, prepared: &Prepared, unnamed: bool) -> Option<Bytes> {
        // (The unnamed statement was judged at its Parse.)
        if self.sequence_here || unnamed {
            return None;
        }
        let analyzer = &self.shared.analyzer;
        let used = *prepared.sequences.get_or_init(|| {
            let analysis = analyzer.analyze(&prepared.text()?).ok()?;
            Some(SequenceUse::of(&analysis))
        });
        match used {
            Some(used) => self.judge_sequences(used),
            None => {
                self.sequence_here = true;
                None
            }
        }
    }

    /// A session feature transaction mode can't carry, refused (0A000).
    fn refusal(&mut self, message: &str) -> Option<Bytes> {
        let error = error_response(sqlstate::FEATURE_NOT_SUPPORTED, message)?;
        self.pool
            .stats
            .record_error(sqlstate::FEATURE_NOT_SUPPORTED.as_bytes());
        Some(error)
    }

    /// A query's ReadyForQuery: the RESETs among its statements are kept if it met no
    /// error (see [`SessionVerdict::AfterRun`]); those of queries behind it wait.
    fn confirm_resets(&mut self) {
        let mut pending = std::mem::take(&mut self.pending_resets);
        pending.retain_mut(|(resets, due, failed)| {
            if *due > 0 {
                *due -= 1;
                return true;
            }
            if let Some(server) = self.server.as_mut().filter(|_| !*failed) {
                let applied = &mut server.conn.applied;
                for reset in resets.iter() {
                    keep_before_change(&mut self.tx_snapshot, self.status, &self.settings, applied);
                    self.settings.confirm(reset, "", applied);
                }
                self.settings_behind = true;
            }
            false
        });
        self.pending_resets = pending;
    }

    /// Settings a query may have set (see [`SessionVerdict::AfterRun`]): read back
    /// from the server once nothing is in flight (see [`Relay::resync_settings`]).
    fn reread(&mut self, names: &[String]) {
        for name in names {
            if name == pgopt_sql::SESSION_STATE {
                // Not a setting: what the connection holds is checked instead.
                self.state_check = true;
                continue;
            }
            self.reread_changes = true;
            if !self.read_back_leniently.contains(name) {
                self.read_back_leniently.push(name.clone());
            }
            if !self.resync.contains(name) {
                self.resync.push(name.clone());
            }
        }
    }

    /// A RESET took the server back to its own defaults, not the client's start-up
    /// values: those are applied again before the client's next statement, as
    /// PostgreSQL's RESET goes back to them.
    fn sync_settings_if_behind(&mut self) {
        if self.settings_behind
            && !self.open_batch
            && !self.copy_in
            && !self.skipping
            && self.expected.all_server_readies() == 0
            && self.may_sync_settings_now()
        {
            self.settings_behind = false;
            self.sync_settings();
        }
    }

    /// A RESET ran (or was sent) in a batch whose later statements are on their way:
    /// waiting for the server's answer to apply the start-up values again
    /// ([`Relay::sync_settings_if_behind`]) would let them run with the server's own
    /// defaults (a driver's pipeline: RESET ALL, then a query, then Sync). They are
    /// applied here, in the batch, as SET statements of the unnamed statement (a
    /// simple query would end the batch's transaction), whose answers are dropped —
    /// when SETs alone do it (see [`Settings::syncs_without_a_query`]) and the server
    /// has not refused one of the client's values. Between two batches (the answers
    /// of the one before still owed), as the simple queries of a sync: a SET in the
    /// next batch's implicit transaction would make it a pipeline's, where PostgreSQL
    /// refuses DISCARD ALL (25001).
    fn sync_settings_in_batch(&mut self) {
        self.reset_executed = false;
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if self.skipping
            || self.copy_in
            || self.settings_refused
            || self.status == TransactionStatus::Failed
            || !self.settings.syncs_without_a_query(&server.conn.applied)
        {
            return;
        }
        if !self.open_batch {
            self.settings_behind = false;
            self.sync_settings();
            return;
        }
        let (statements, _) = self
            .settings
            .sync_identity_last(&mut server.conn.applied, true);
        for sql in &statements {
            let mut parse = Vec::with_capacity(sql.len() + 4);
            parse.push(0);
            parse.extend_from_slice(sql.as_bytes());
            parse.extend_from_slice(&[0, 0, 0]);
            frame_into(&mut self.to_server, b'P', &parse);
            // Unnamed portal and statement, no parameters, text results.
            frame_into(&mut self.to_server, b'B', &[0, 0, 0, 0, 0, 0, 0, 0]);
            frame_into(&mut self.to_server, b'E', &[0, 0, 0, 0, 0]);
            self.expected.push(Step::InjectedStatement);
        }
        if !statements.is_empty() {
            // The client's unnamed statement is prepared again before its next use.
            self.unnamed_here = false;
        }
        self.settings_behind = false;
    }

    /// Before a Bind of a client's statement this server connection lacks, whose
    /// result shape clients were told: the statement is prepared here and described
    /// (with a Flush), and the Bind waits for the answer. A shape other than the one
    /// told (a schema change no server reported yet: a connection opened since
    /// prepares it fresh, without PostgreSQL's "cached plan must not change result
    /// type") invalidates the statement, so the Bind gets that error as PostgreSQL
    /// would give it, instead of rows the client would read in the old shape.
    /// Whether the Bind waits.
    fn check_shape_first(&mut self, frame: &Frame) -> bool {
        if !self.rewrite
            || self.server.is_none()
            || self.filling.is_some()
            || self.shape_checking.is_some()
            || self.skipping
            || self.copy_in
            || self.dropping
            || self.status == TransactionStatus::Failed
        {
            return false;
        }
        let Ok(bind) = BindHead::decode(frame.body()) else {
            return false;
        };
        if bind.statement.is_empty() {
            return false;
        }
        let Some((id, learnt)) = self
            .statements
            .get_mut(bind.statement)
            .map(|s| (s.prepared.id, s.epoch))
        else {
            return false;
        };
        if self.rechecking(id) {
            // Answered: the Bind goes on, to take the verdict.
            return false;
        }
        let told = if learnt == self.pool.plan_epoch() {
            None
        } else {
            self.told_if_outdated(id, learnt)
        };
        if told.is_some() {
            // Described afresh: a copy this connection has may be from before.
            if self.server_conn().prepared.remove(&id) {
                self.server_conn().mark_stale(id);
            }
        } else if self.server_conn().prepared.contains(&id)
            // (The description is looked up, under a lock, only for a statement this
            // connection lacks: once per statement and connection.)
            || self.pool.description(id).and_then(|d| d.rows).is_none()
        {
            return false;
        }
        let Some(prepared) = self
            .statements
            .get_mut(bind.statement)
            .map(|s| s.prepared.clone())
        else {
            return false;
        };
        // (Refused at the Bind: see `Relay::encoding_changed`.)
        if prepared
            .encoding
            .is_some_and(|parsed_under| parsed_under != self.encoding_salt())
        {
            return false;
        }
        // (Under the client's settings, as the Bind would have been.)
        self.sync_settings_if_behind();
        self.prepare_here(&prepared);
        let describe = Describe {
            target: Target::Statement,
            name: &prepared.server_name,
        };
        if describe.encode(&mut self.to_server).is_err() {
            return false;
        }
        self.expected.push(Step::InjectedDescribe {
            statement: prepared.id,
        });
        frame_into(&mut self.to_server, b'H', &[]);
        // The client's batch goes on from here (its Sync ends it): the connection is
        // not idle meanwhile.
        self.open_batch = true;
        self.shape_checking = Some(prepared.id);
        self.recheck = told.map(|told| Recheck {
            id: prepared.id,
            told,
            same: None,
        });
        true
    }

    /// What a client's statement `id`, which learnt its shape at plan epoch `learnt`,
    /// was told of it, when a schema change invalidated its plan since (and what it
    /// was told is known), and its Bind would otherwise get "cached plan must not
    /// change result type".
    fn told_if_outdated(&self, id: u64, learnt: u64) -> Option<Description> {
        if !self.pool.invalidated_since(id, learnt) {
            return None;
        }
        let told = self
            .pool
            .description_at(id, learnt)
            .filter(|told| !told.returns_rows || told.rows.is_some())?;
        // (Its Bind learns the new shape anyway.)
        let learns = self.replayed || batch_describes_portal(&self.cbuf, self.max_len);
        (!learns).then_some(told)
    }

    /// Whether statement `id` is described afresh (see [`Relay::recheck`]).
    fn rechecking(&self, id: u64) -> bool {
        self.recheck.as_ref().is_some_and(|r| r.id == id)
    }

    /// Whether statement `id`, described afresh before its Bind (see
    /// [`Relay::check_shape_first`]), has the shape its client was told again.
    fn shape_is_back(&mut self, id: u64) -> bool {
        matches!(self.recheck.take(), Some(r) if r.id == id && r.same == Some(true))
    }

    /// Statement `parse` may set `names`: read back after each batch that binds it.
    fn read_back_at_binds(&mut self, parse: &Parse<'_>, names: Vec<String>) {
        if parse.name.is_empty() {
            self.unnamed_read_back = Some(names.into());
        } else {
            let id = statement_id(parse, self.encoding_salt());
            self.read_back_statements.insert(id, names.into());
        }
    }

    /// A Bind of a statement that runs RESET `change` (see `resets_at_binds` and
    /// `unnamed_reset`): confirmed again.
    fn reset_bound(&mut self, change: &Change) {
        self.keep_before_batch_change();
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let applied = &mut server.conn.applied;
        self.settings.confirm(change, "", applied);
        self.settings_behind = true;
        self.tracked_until_ready();
        self.drop_read_backs_reset_by(change);
    }

    /// Before a change a client's Parse or Bind confirms (an extended-protocol SET or
    /// RESET, which the server runs later): what to go back to if its transaction rolls
    /// back — a block's ROLLBACK, or, outside one, an error in the batch, which rolls
    /// back its implicit transaction (see `batch_snapshot`).
    fn keep_before_batch_change(&mut self) {
        let Some(server) = self.server.as_ref() else {
            return;
        };
        if self.tx_snapshot.is_none() {
            self.tx_snapshot = Some((self.settings.clone(), server.conn.applied.clone()));
            self.batch_snapshot =
                (self.status == TransactionStatus::Idle).then(|| self.expected.observed_readies());
        }
    }

    /// A RESET sent: what it resets, queued to be read back before it, is read back no
    /// more (see `resync`). Once it ran the server has its own default there, the
    /// client its start-up value, applied again before its next statement; a read-back
    /// would take the server's for the client's (a SET then RESET ALL in one batch: the
    /// client's application_name became "pgopt" for good). Read-backs a batch sent after
    /// it queues stand.
    fn drop_read_backs_reset_by(&mut self, change: &Change) {
        self.resync.retain(|name| !change.resets(name));
    }

    /// Whether a RESET of the query the server runs now takes `name` back to the
    /// client's start-up value: the server's report of its own default then is no
    /// change of the client's (see [`Relay::note_reported_setting`]).
    fn reset_running(&self, name: &str) -> bool {
        self.pending_resets
            .iter()
            .any(|(resets, due, _)| *due == 0 && resets.iter().any(|r| r.resets(name)))
    }

    /// A Bind of statement `id`: what it may set (see `read_back_statements`), if
    /// anything, is read back.
    fn reread_bound(&mut self, id: u64) {
        if let Some(names) = self.read_back_statements.get(&id).cloned() {
            self.reread(&names);
        }
    }

    /// Session mode: a RESET the client sent is tracked as transaction mode tracks it
    /// (confirmed by its CommandComplete), so its start-up values are applied again
    /// after it; anything else is left alone.
    fn follow_reset(&mut self, sql: &str) {
        let Ok(analysis) = self.shared.analyzer.analyze(sql) else {
            return;
        };
        if let SessionVerdict::Track(change) = session_state::judge(&analysis, sql, &[]) {
            let before = self.expected.observed_readies();
            self.pending_change = Some((change, sql.to_string(), before));
        }
    }

    /// Whether the client's settings may be applied again now, after a RESET: outside
    /// a transaction block; inside one (not failed), only when no value of the client's
    /// was ever refused (it is only logged, as at checkout: inside the block it would
    /// fail the client's block) and plain SET and RESET do it (no snapshot taken).
    fn may_sync_settings_now(&self) -> bool {
        let Some(server) = self.server.as_ref() else {
            return false;
        };
        match self.status {
            TransactionStatus::Idle => true,
            TransactionStatus::InTransaction => {
                !self.settings_refused && self.settings.syncs_without_a_query(&server.conn.applied)
            }
            TransactionStatus::Failed => false,
        }
    }

    /// Brings the server connection just lent to the client's settings (start-up
    /// parameters and SETs), with queries whose responses the client never sees.
    fn sync_settings(&mut self) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let in_block = self.status != TransactionStatus::Idle;
        let (statements, identity_from) = self
            .settings
            .sync_identity_last(&mut server.conn.applied, in_block);
        // The client's start-up values, applied for the first time, are held as its
        // role is: PostgreSQL refuses a login with a value it refuses.
        let first = !std::mem::replace(&mut self.startup_checked, true);
        let mut sent = false;
        for (i, sql) in statements.iter().enumerate() {
            if (Query { sql }).encode(&mut self.to_server).is_ok() {
                let identity = i >= identity_from;
                let first = first && session_state::checked_at_login(sql);
                self.expected.push(Step::InjectedQuery { identity, first });
                self.identity_injected |= identity || first;
                // A simple query: the server's unnamed statement is gone.
                self.unnamed_here = false;
                sent = true;
            }
        }
        if sent {
            // The client's cancels wait for them (see `CancelTarget::setting_up`).
            // (Nothing is written to the server before this returns.)
            let _route = lock(&self.cancel.route);
            self.cancel.setting_up.store(true, Relaxed);
        }
    }

    /// The client's named statement, and whether its result shape changed since the
    /// client learned it (a schema change invalidated it since).
    fn client_statement(&mut self, name: &str) -> Option<(Arc<Prepared>, bool)> {
        if name.is_empty() {
            return None;
        }
        let epoch = self.pool.plan_epoch();
        let statement = self.statements.get_mut(name)?;
        let mut outdated = false;
        if statement.epoch != epoch {
            outdated = self
                .pool
                .invalidated_since(statement.prepared.id, statement.epoch);
            if !outdated {
                statement.epoch = epoch;
            }
        }
        Some((statement.prepared.clone(), outdated))
    }

    /// A client's Parse of a statement the server connection has, sent under a name of
    /// pgopt's and closed at once: its ParseComplete or error is the client's answer
    /// (see where it is called).
    fn probe_parse(&mut self, parse: &Parse<'_>, change: u64) {
        const PROBE: &str = "pgopt_probe";
        let probe = Parse {
            name: PROBE,
            query: parse.query,
            param_types: parse.param_types,
        };
        let close = Close {
            target: Target::Statement,
            name: PROBE,
        };
        let mut sent = BytesMut::new();
        if probe.encode(&mut sent).is_err() || close.encode(&mut sent).is_err() {
            self.expected.push(Step::Answer { tag: b'1', change });
            return;
        }
        self.to_server.extend_from_slice(&sent);
        self.expected.push(Step::ProbeParse { change });
        self.expected.push(Step::ProbeClose);
    }

    /// Whether a Describe or Bind of `prepared` is one for [`Relay::describe_in_failed`]
    /// or [`Relay::bind_in_failed`]: the transaction surely failed, this server
    /// connection lacks the statement, and it is no COMMIT or ROLLBACK (which a failed
    /// transaction prepares).
    fn lacking_in_failed(&mut self, prepared: &Prepared) -> bool {
        self.surely_failed() && self.lacks_outside_end(prepared)
    }

    /// This server connection lacks `prepared`, and it is no COMMIT or ROLLBACK.
    fn lacks_outside_end(&mut self, prepared: &Prepared) -> bool {
        !self.server_conn().prepared.contains(&prepared.id)
            && !prepared.text().is_none_or(|text| ends_transaction(&text))
    }

    /// The client's unnamed statement (if pgopt has its Parse), when the server lacks
    /// it, the last ReadyForQuery said the transaction failed (whether it surely still
    /// is, see [`Relay::surely_failed`]), and it is no COMMIT or ROLLBACK: its id.
    fn unnamed_lacking_in_failed(&self) -> Option<u64> {
        if self.unnamed_here || self.status != TransactionStatus::Failed {
            return None;
        }
        let frame = self.statements.unnamed()?;
        let parse = Parse::decode(frame.get(5..)?).ok()?;
        let salt = self.encoding_now().salt;
        (!ends_transaction(parse.query)).then(|| statement_id(&parse, salt))
    }

    /// The server's transaction is failed, and nothing in flight may end it (a portal
    /// executed, or a simple query: a COMMIT or ROLLBACK; what else is in flight, a
    /// Sync or a Describe, leaves a failed transaction failed).
    fn surely_failed(&self) -> bool {
        self.status == TransactionStatus::Failed && !self.ending_in_flight
    }

    /// A Describe of statement `id`, which this server connection lacks, in a failed
    /// transaction, where it can't be prepared: answered as PostgreSQL answers it,
    /// from what a server said of the statement before — its ParameterDescription and
    /// NoData, or 25P02 when it returns rows. `false`: left to the server (its
    /// description is not known; the server refuses the Parse pgopt sends first).
    /// (Callers check [`Relay::lacking_in_failed`] first.)
    fn describe_in_failed(&mut self, id: u64) -> bool {
        let Some(description) = self.pool.description(id) else {
            return false;
        };
        if description.returns_rows {
            if let Some(error) = in_failed_transaction_error() {
                self.expected.push_error(error);
            }
            self.skipping = true;
        } else if let Some(reply) = described_reply(&description) {
            self.expected.push_reply(reply);
        }
        true
    }

    /// A Describe of a client's statement this server connection lacks, in a
    /// transaction block (maybe): answered from what a server said of it, as PostgreSQL
    /// describes a statement without taking a snapshot — a Parse of pgopt's would take
    /// the block's first one (SET TRANSACTION ISOLATION LEVEL is refused after it).
    /// `false` when its description is not known, or the connection has it.
    fn describe_in_block(&mut self, prepared: &Prepared, name: &str) -> bool {
        // (Not with a batch in flight, which may fail the block: PostgreSQL would
        // then refuse the Describe. Nor after a schema change in the block, which
        // took its snapshot anyway: what a server said may be the old shape.)
        if self.status != TransactionStatus::InTransaction
            || self.changed_schema
            || self.expected.all_server_readies() > 0
            || self.server_conn().prepared.contains(&prepared.id)
        {
            return false;
        }
        let Some(reply) = self
            .pool
            .current_description(prepared.id)
            .and_then(|d| described_reply(&d))
        else {
            return false;
        };
        self.expected.push_reply(reply);
        self.statements.refresh(name, self.pool.plan_epoch());
        true
    }

    /// A Bind of statement `id` (the client's `name`), as [`Relay::describe_in_failed`]:
    /// PostgreSQL checks the count of its parameters (`rest`: the Bind after the
    /// names) first, then refuses it with 25P02. The count wanted is the one a server
    /// described, else the one its Parse message (`parse`) gives. When a COMMIT or
    /// ROLLBACK in flight may have ended the transaction, only wrong counts are
    /// answered: they fail the Bind whether it ended or not (and the batch with it).
    /// `false`: left to the server.
    fn bind_in_failed(&mut self, id: u64, name: &str, parse: &[u8], rest: &[u8]) -> bool {
        let surely = self.surely_failed();
        let wanted = match self.pool.description(id) {
            Some(description) => description.param_count(),
            // Else the count its Parse gives (no Describe needed).
            None => match param_count(parse) {
                Some(count) => count,
                None => return false,
            },
        };
        let count = |at: usize| {
            rest.get(at..at + 2)
                .map(|n| usize::from(u16::from_be_bytes([n[0], n[1]])))
        };
        let Some(formats) = count(0) else {
            return false;
        };
        let Some(params) = count(2 + 2 * formats) else {
            return false;
        };
        let error = if formats > 1 && formats != params {
            let message =
                format!("bind message has {formats} parameter formats but {params} parameters");
            error_response(sqlstate::PROTOCOL_VIOLATION, &message)
        } else if params != wanted {
            let message = format!(
                "bind message supplies {params} parameters, but prepared statement \"{name}\" requires {wanted}"
            );
            error_response(sqlstate::PROTOCOL_VIOLATION, &message)
        } else if surely {
            in_failed_transaction_error()
        } else {
            return false;
        };
        if !surely {
            self.fail_open_batch();
        }
        if let Some(error) = error {
            self.expected.push_error(error);
        }
        self.skipping = true;
        true
    }

    /// A server's answer to a client's Describe of statement `id` (its
    /// ParameterDescription, then RowDescription or NoData), kept for
    /// [`Relay::describe_in_failed`] once per plan epoch.
    fn note_description(&mut self, id: u64, tag: u8, body: std::ops::Range<usize>) {
        if let Some(recheck) = self.recheck.as_mut().filter(|r| r.id == id && tag != b't') {
            recheck.same = Some(same_shape(&recheck.told, tag, &self.sbuf[body.clone()]));
        }
        if tag == b't' {
            // (Learnt afresh when described afresh, its shape may be back, or when
            // what is known is from before a schema change.)
            let learn = self.rechecking(id) || !self.pool.knows_current_description(id);
            self.described = learn.then(|| Bytes::copy_from_slice(&self.sbuf[body]));
        } else if let Some(params) = self.described.take() {
            // (Against what clients were told, if known.)
            self.compare_shape(id, tag, body.clone());
            let rows = (tag == b'T').then(|| Bytes::copy_from_slice(&self.sbuf[body]));
            self.pool.remember_description(id, params, rows);
        } else {
            self.compare_shape(id, tag, body);
        }
        if tag != b't' {
            if let Some(serial) = self.expected.head_client_describes() {
                // The client's statement learns its shape as it is now (a Describe of
                // pgopt's before it may have found a change).
                self.statements
                    .refresh_serial(serial, self.pool.plan_epoch());
            }
        }
    }

    /// A server described statement `id` (`tag` 'T' or 'n'), whose description the
    /// pool knew: a fresh copy of it (a connection opened since a schema change has no
    /// old plan to refuse) in another result shape than clients were told means they
    /// are told so, as PostgreSQL's "cached plan must not change result type" tells
    /// them. (A shape pgopt does not know — a RowDescription too long to keep, or none
    /// any more — is no verdict.)
    fn compare_shape(&mut self, id: u64, tag: u8, body: std::ops::Range<usize>) {
        let Some(told) = self.pool.description(id) else {
            return;
        };
        if same_shape(&told, tag, &self.sbuf[body]) {
            return;
        }
        tracing::info!(
            client = %self.info.addr,
            "a prepared statement's result type changed (schema change), seen describing it: its clients are told so"
        );
        // (A client's Describe this answers learns the new shape: `note_description`.)
        self.plan_invalidated(id);
    }

    /// Prepares `prepared` on the current server first when it lacks it (and learns
    /// its description, when unknown).
    fn ensure_prepared(&mut self, prepared: &Prepared) {
        if self.prepare_here(prepared) {
            self.learn_description(prepared);
        } else if self.serve_cache {
            // The cache serves a Bind of it only once its current shape is known
            // (see `look_up_cache`): one a schema change, or the pool's forgetting,
            // left unknown is learnt again here.
            self.learn_description(prepared);
        }
    }

    /// Prepares `prepared` on the current server when it lacks it; whether it did.
    fn prepare_here(&mut self, prepared: &Prepared) -> bool {
        if self.server_conn().prepared.contains(&prepared.id) {
            self.server_conn().prepared.touch(prepared.id);
            return false;
        }
        self.send_parse(
            prepared,
            Step::Injected {
                prepared: prepared.id,
            },
        );
        true
    }

    /// Asks the server to describe `prepared`, just sent, when its description is not
    /// known (once per statement and plan epoch, for [`Relay::describe_in_failed`]).
    fn learn_description(&mut self, prepared: &Prepared) {
        if self.status == TransactionStatus::Failed
            || self.pool.knows_current_description(prepared.id)
        {
            return;
        }
        let describe = Describe {
            target: Target::Statement,
            name: &prepared.server_name,
        };
        if describe.encode(&mut self.to_server).is_ok() {
            self.expected.push(Step::InjectedDescribe {
                statement: prepared.id,
            });
        }
    }

    /// Sends `prepared`'s Parse, expecting `step`; a stale copy on the server (its plan
    /// invalidated by a schema change) is closed first.
    fn send_parse(&mut self, prepared: &Prepared, step: Step) {
        let max = self.shared.config().max_prepared_statements;
        // Past the limit, the statements unused longest are closed first (the limit
        // may be passed while this checkout uses more). Each counts as stale until the
        // server confirms its Close: one prepared again before then (a batch pipelined
        // behind, the Close skipped after an error) is closed again first.
        while let Some(victim) = self.server_conn().prepared.evict(max) {
            self.server_conn().mark_stale(victim);
            let mark = self.server_conn().stale_mark();
            let name = crate::statements::server_name(victim);
            let close = Close {
                target: Target::Statement,
                name: &name,
            };
            if close.encode(&mut self.to_server).is_ok() {
                self.expected.push(Step::InjectedClose {
                    stale: Some(victim),
                    mark,
                });
            }
        }
        let server = self.server_conn();
        server.prepared.insert(prepared.id);
        if server.unmark_stale(prepared.id) {
            let mark = server.stale_mark();
            let close = Close {
                target: Target::Statement,
                name: &prepared.server_name,
            };
            if close.encode(&mut self.to_server).is_ok() {
                self.expected.push(Step::InjectedClose {
                    stale: Some(prepared.id),
                    mark,
                });
            }
        }
        self.to_server.extend_from_slice(&prepared.parse);
        self.expected.push(step);
    }

    /// A server said a statement's result type changed: the pool and this connection
    /// prepare it again before its next use.
    /// Starts keeping a batch at `frame` (a Bind, or a Describe of a statement) in
    /// case it must run again (see `replan.rs`): outside a transaction, with nothing
    /// before it in flight, and not on its second run.
    fn keep_for_replay(&mut self, frame: &Frame) {
        if self.replay.is_none()
            && !self.replayed
            && !self.open_batch
            && self.status == TransactionStatus::Idle
            && self.expected.server_readies() == 0
        {
            let mut replay = Replay::with_buffer(std::mem::take(&mut self.replay_spare));
            if replay.record(frame) {
                self.replay = Some(replay);
                self.replay_relayed = false;
                self.hold_first_t = frame.tag() == b'D';
            }
        }
    }

    /// The batch kept for a run again is over (or its connection gone).
    fn forget_replay_state(&mut self) {
        self.hold_first_t = false;
        self.held_t = None;
        self.replay_relayed = false;
    }

    fn plan_invalidated(&mut self, id: u64) {
        self.pool.invalidate_plan(id);
        if let Some(server) = self.server.as_mut() {
            self.pool.refresh_plans(&mut server.conn);
        }
    }

    /// Runs a batch again whose first run failed on an invalidated plan (its responses
    /// were dropped): the statement is prepared again on the way.
    async fn run_again(&mut self, mut batch: BytesMut) -> Result<(), ProxyError> {
        tracing::info!(
            client = %self.info.addr,
            "a prepared statement's result type changed (schema change): prepared again and run again"
        );
        self.replayed = true;
        self.failover = None; // the re-run's messages are not a batch to fail over
        while let Ok(Some(frame)) = split_frame(&mut batch, self.max_len) {
            if let Err(e) = self.route(&frame) {
                return Err(self.client_protocol_error(e).await);
            }
        }
        self.forward().await?;
        self.handle_pumped().await
    }

    /// Handles what the server answered while a batch run again (or on another node)
    /// was being written: it may be all the answers, with nothing more to read.
    async fn handle_pumped(&mut self) -> Result<(), ProxyError> {
        if self.sbuf.is_empty() || self.forwarding {
            return Ok(());
        }
        Box::pin(self.handle_server()).await
    }

    fn server_conn(&mut self) -> &mut crate::server::ServerConn {
        &mut self
            .server
            .as_mut()
            .expect("a server is checked out before messages are routed")
            .conn
    }

    /// A ParameterStatus from the server (its body in `sbuf`): the session reads
    /// backslashes as `standard_conforming_strings` says; and in transaction mode a
    /// [`FOLLOWED`] setting's value is noted, and whether it changed with no change
    /// pgopt followed (a function or DO block calling `set_config(…, false)`, or SET
    /// LOCAL, which its transaction's end undoes): see [`Relay::reported_at_idle`].
    fn note_reported_setting(&mut self, body: std::ops::Range<usize>) {
        let Some((name, value)) = status_fields(&self.sbuf[body]) else {
            return;
        };
        if name == STANDARD_CONFORMING_STRINGS.as_bytes() {
            self.backslash_escapes = value != b"on";
        }
        if !self.rewrite {
            return;
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if !FOLLOWED.contains(&name.as_str()) {
            return;
        }
        let value = pgopt_wire::text::escape(value).into_owned();
        let reset = self.reset_running(&name);
        match self.reported.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) if *v == value => return,
            Some((_, v)) => *v = value,
            None => self.reported.push((name, value)),
        }
        self.reported_moved = true;
        self.untracked_report |= self.tracked_readies == 0
            && self.pending_change.is_none()
            && !self.expected.head_is_pgopts()
            && !reset;
    }

    /// A change of the client's settings was confirmed: what the server reports up to
    /// the end of the batch being sent (the next ReadyForQuery owed after those owed
    /// now) is the change's (see `tracked_readies`).
    fn tracked_until_ready(&mut self) {
        let through = self.expected.observed_readies() + 1;
        self.tracked_readies = self.tracked_readies.max(through);
    }

    /// A ParameterStatus (`body`) pgopt's own settings query drew: how PostgreSQL
    /// writes a start-up value it applied (see `Settings::note_shown`).
    fn note_shown(&mut self, body: std::ops::Range<usize>) {
        let Some((name, value)) = status_fields(&self.sbuf[body]) else {
            return;
        };
        if let Ok(name) = std::str::from_utf8(name) {
            let value = pgopt_wire::text::escape(value);
            if let Some(written) = self.settings.note_shown(name, &value) {
                self.pool.note_spelling(name, &written, &value);
            }
        }
    }

    /// A ParameterStatus (`body`) of a setting the client has its start-up value of,
    /// re-encoded with that value, when the server's differs.
    fn reported_as_start_up(&self, body: std::ops::Range<usize>) -> Option<BytesMut> {
        let (name, value) = status_fields(&self.sbuf[body])?;
        let name = std::str::from_utf8(name).ok()?;
        let start_up = self.settings.current_startup_value(name)?;
        let start_up = pgopt_wire::text::unescape(start_up);
        if *start_up == *value {
            return None;
        }
        let value = std::str::from_utf8(&start_up).ok()?;
        let mut message = BytesMut::new();
        ParameterStatus { name, value }.encode(&mut message).ok()?;
        Some(message)
    }

    /// An idle ReadyForQuery: a [`FOLLOWED`] setting whose value differs from the last
    /// idle one after a change pgopt did not follow is read back, so the client's
    /// settings (and the cache's key) hold it and the next client of the connection
    /// does not inherit it. (Settings PostgreSQL does not report, `search_path` among
    /// them, are not seen so.)
    #[inline]
    fn reported_at_idle(&mut self) {
        // (`reported` moved on since the last idle one: the usual case is not.)
        if !std::mem::take(&mut self.reported_moved) {
            return;
        }
        if std::mem::take(&mut self.untracked_report) {
            let changed: Vec<String> = self
                .reported
                .iter()
                .filter(|r| !self.idle_reported.contains(r))
                .map(|(name, _)| name.clone())
                .collect();
            if self.cache.is_some() {
                for name in &changed {
                    if session_state::KEYED_DEFAULTS.contains(&name.as_str())
                        && !self.settings.names().any(|n| n == name)
                        && !self.defaults_check.contains(name)
                    {
                        self.defaults_check.push(name.clone());
                    }
                }
            }
            self.reread(&changed);
        }
        if self.reported != self.idle_reported {
            self.idle_reported.clone_from(&self.reported);
        }
    }

    /// Relays the whole messages in `sbuf` to the client, dropping and adding the ones
    /// the statement bookkeeping says; without any, the bytes go out as they came.
    async fn handle_server(&mut self) -> Result<(), ProxyError> {
        self.clock = Instant::now();
        let grown = self.sbuf.len() > KEPT_READ_BUF;
        let mut pos = 0;
        // Bytes before `copied` are in `out` (or dropped); `edited` once anything was.
        let mut copied = 0;
        let mut edited = !self.out.is_empty();
        // pgopt's own answers held back while a row is part way to the client.
        let mut held = None;
        if self.passing > 0 {
            // The rest of a row passed through (see `passing`) comes first.
            let n = self.passing.min(self.sbuf.len());
            self.passing -= n;
            if !self.pass_relay {
                copied = n; // dropped
                edited = true;
            } else if self.passing > 0 {
                // Still part way: nothing of pgopt's goes out (`sbuf` holds no more).
                if edited {
                    held = Some(self.out.split());
                    edited = false;
                }
            } else {
                // Its end: what follows, answers included, goes after it.
                let answers = self.out.split();
                self.out.extend_from_slice(&self.sbuf[..n]);
                self.out.unsplit(answers);
                copied = n;
                edited = true;
            }
            pos = n;
        }
        // Where the server's messages start.
        let first = pos;
        // A message pgopt can't relay (longer than max_message_len): what came before
        // it goes out, then the client is told, and the connection closes.
        let mut unrelayable = None;
        loop {
            let header = match peek_header(&self.sbuf[pos..], self.max_len) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(source) => {
                    unrelayable = Some(source);
                    break;
                }
            };
            let end = pos + header.frame_len();
            // A large row, part way here: passed through as it comes (see `passing`).
            let partial = end > self.sbuf.len();
            if partial && !self.may_pass(header.tag, header.frame_len()) {
                break;
            }
            if pos == first {
                // Answers held back for the server's first message (a possible
                // failover) go before it.
                self.answer_owed();
                edited |= !self.out.is_empty();
            }
            if matches!(header.tag, b'E' | b'N')
                && self.failover.is_some()
                && is_going_away(&self.sbuf[pos + 5..end])
            {
                // The replica is going away before the client saw a thing.
                return self.fail_over().await;
            }
            match header.tag {
                b'Z' => {
                    self.copy_in = false;
                    if !self.expected.head_is_injected_query() {
                        self.tracked_readies = self.tracked_readies.saturating_sub(1);
                    }
                    if self.sbuf.get(pos + 5) == Some(&b'I') {
                        self.reported_at_idle();
                    }
                    self.readies = self.readies.wrapping_add(1);
                    if self.ending_in_flight
                        && self.expected.all_server_readies() <= 1
                        && !self.open_batch
                    {
                        self.ending_in_flight = false;
                    }
                    // (A verdict the batch's Bind did not take is not one for later.)
                    if self.shape_checking.is_none() {
                        self.recheck = None;
                    }
                    self.status = match self.sbuf.get(pos + 5) {
                        Some(b'T') => TransactionStatus::InTransaction,
                        Some(b'E') => TransactionStatus::Failed,
                        _ => TransactionStatus::Idle,
                    };
                }
                b'G' | b'W' => {
                    self.copy_in = true;
                    // (A Sync sent behind the COPY's Execute, before the client knew:
                    // PostgreSQL ignores it.)
                    let syncs = self.expected.copy_in_began();
                    if let Some(tracker) = self.tracker.as_mut() {
                        tracker.copy_in_began(syncs);
                    }
                }
                b'C' | b'E' => self.copy_in = false,
                b'S' => {
                    if self.rewrite && self.expected.head_is_pgopts() {
                        self.note_shown(pos + 5..end);
                    }
                    self.note_reported_setting(pos + 5..end);
                }
                _ => {}
            }
            let verdict = match self.replan(header.tag, pos + 5..end) {
                Some(verdict) => verdict,
                None => {
                    let execute_failed = header.tag == b'E'
                        && self.expected.head_request() == Some(Request::Execute);
                    // The ReadyForQuery of a Sync pgopt sent to end a client's batch
                    // ends the client's transaction: its bookkeeping runs (the cache's
                    // invalidation, read-your-writes, insight), though the client does
                    // not see it.
                    let injected_sync = self.expected.head_is_injected_sync();
                    let injected_failure = self.expected.head_is_injected_failure();
                    if matches!(header.tag, b't' | b'T' | b'n') {
                        if let Some(id) = self.expected.head_describes() {
                            self.note_description(id, header.tag, pos + 5..end);
                        }
                    }
                    let verdict = self
                        .expected
                        .on_server_message(header.tag, lacks(&mut self.server));
                    if let Some(id) = self.shape_checking {
                        // Answered, or skipped after an error in its batch: the Bind
                        // goes on (to meet the server's error, if any).
                        if !self.expected.owes_injected_describe(id) {
                            self.shape_checking = None;
                        }
                    }
                    self.settle_names();
                    if self.expected.take_server_awaits_sync() {
                        // As the server: nothing but a Sync from the client goes on
                        // (it would be discarded, and answered with nothing).
                        self.open_batch = true;
                        self.skipping = true;
                    }
                    let seen = match (injected_sync, header.tag) {
                        (true, b'Z') => Verdict::Relay,
                        // A commit failing at it: counted as the client's error.
                        (true, b'E') => verdict,
                        (true, _) => Verdict::Drop,
                        _ => verdict,
                    };
                    if matches!(header.tag, b'C' | b'E' | b'Z')
                        && !(injected_sync && seen == Verdict::Drop)
                        && !injected_failure
                    {
                        self.observe(header.tag, pos + 5..end, seen);
                    }
                    if let Some(tracker) = self.tracker.as_mut() {
                        if seen == Verdict::Relay
                            && matches!(header.tag, b'C' | b'I' | b's' | b'E' | b'Z')
                        {
                            let idle = self.status == TransactionStatus::Idle;
                            let body = &self.sbuf[pos + 5..end];
                            tracker.on_server(header.tag, body, execute_failed, !idle, self.clock);
                            if header.tag == b'Z' && idle {
                                tracker.end_transaction();
                            }
                        }
                    }
                    verdict
                }
            };
            if header.tag != b't' || self.held_t.is_none() {
                if let Some(t) = self.held_t.take() {
                    // The Describe's answer goes on: its ParameterDescription first.
                    if verdict == Verdict::Relay {
                        self.out.extend_from_slice(&self.sbuf[copied..pos]);
                        self.out.extend_from_slice(&t);
                        copied = pos;
                        edited = true;
                    }
                }
            }
            if verdict == Verdict::Relay
                && header.tag == b'S'
                && self.settings_behind
                && !partial
                && self.rewrite
            {
                // A RESET took the server to its own default, which it reports: the
                // client hears its start-up value, as PostgreSQL's RESET reports it
                // (pgopt sets it again before the client's next statement).
                if let Some(reported) = self.reported_as_start_up(pos + 5..end) {
                    self.out.extend_from_slice(&self.sbuf[copied..pos]);
                    self.out.extend_from_slice(&reported);
                    copied = end;
                    edited = true;
                }
            }
            if verdict == Verdict::Relay && self.replay.is_some() {
                self.replay_relayed = true;
            }
            if verdict == Verdict::Relay && self.filling.is_some() {
                self.capture(pos..end);
            }
            if partial {
                // (Not a message any of the bookkeeping above reads.)
                let have = self.sbuf.len();
                if verdict == Verdict::Drop {
                    self.out.extend_from_slice(&self.sbuf[copied..pos]);
                    copied = have;
                    edited = true;
                }
                self.passing = end - have;
                self.pass_relay = verdict == Verdict::Relay;
                pos = have;
                break;
            }
            if verdict == Verdict::Relay && header.tag == b'E' && self.rewrite {
                // The client's statement names, not the servers'.
                if let Some(renamed) = self
                    .statements
                    .error_in_client_names(&self.sbuf[pos + 5..end])
                {
                    self.out.extend_from_slice(&self.sbuf[copied..pos]);
                    self.out.extend_from_slice(&renamed);
                    copied = end;
                    edited = true;
                }
            }
            if header.tag == b'C' {
                if let Some(all) = self.expected.take_renamed() {
                    // A DEALLOCATE's stand-in ran: the client hears DEALLOCATE's tag.
                    let tag = if all { "DEALLOCATE ALL" } else { "DEALLOCATE" };
                    self.out.extend_from_slice(&self.sbuf[copied..pos]);
                    // (A short fixed tag: encoding cannot fail.)
                    let _ = CommandComplete { tag }.encode(&mut self.out);
                    copied = end;
                    edited = true;
                }
            }
            if verdict == Verdict::Drop {
                self.out.extend_from_slice(&self.sbuf[copied..pos]);
                copied = end;
                edited = true;
            }
            let before = self.out.len();
            self.answer_owed();
            if self.out.len() != before {
                // Answers go after this message: move it in front of them.
                let answers = self.out.split_off(before);
                self.out.extend_from_slice(&self.sbuf[copied..end]);
                self.out.extend_from_slice(&answers);
                copied = end;
                edited = true;
            }
            pos = end;
        }
        // Once the client has been sent anything, a read can't run again.
        let to_client = if edited {
            self.out.len() + (pos - copied)
        } else {
            pos
        };
        if to_client > 0 {
            self.failover = None;
        }
        if self.identity_refused.is_some() {
            // The client's role could not be set: nothing that ran without it reaches
            // the client (a read run again elsewhere; the session ends, in `serve`).
            self.sbuf.clear();
            self.out.clear();
            return Ok(());
        }
        // Other instances hear of this batch's commits before the client does.
        self.publish().await;
        let result = if !edited {
            let until = self.write_deadline();
            write_all_bounded(&mut self.client, &self.sbuf[..pos], &self.info, until).await
        } else {
            self.out.extend_from_slice(&self.sbuf[copied..pos]);
            let until = self.write_deadline();
            let r = write_all_bounded(&mut self.client, &self.out, &self.info, until).await;
            self.out.clear();
            r
        };
        self.sbuf.advance(pos);
        if let Some(held) = held {
            self.out.unsplit(held);
        }
        // One grown for a large message is not kept while the connection stays lent
        // (a session-mode client holds it for life).
        if grown && self.sbuf.is_empty() {
            self.sbuf = BytesMut::with_capacity(SERVER_READ_BUF);
        }
        shed(&mut self.out);
        result?;
        if let Some(source) = unrelayable {
            return Err(self.server_protocol_error(source).await);
        }
        if self.dropping && !self.nothing_outgoing() {
            // The Sync that ends a batch to run again (see `replan`).
            self.forward().await?;
        }
        if let Some(batch) = self.rerun.take() {
            self.run_again(batch).await?;
        }
        self.settle_when_idle().await;
        Ok(())
    }

    /// What waits for nothing to be in flight: settings read back, a block's SQL
    /// prepared statements deallocated, then the commit's bookkeeping.
    async fn settle_when_idle(&mut self) {
        // Nothing to settle (the usual case): each step would return at once, but only
        // after its future was made and polled.
        if self.resync.is_empty()
            && self.defaults_check.is_empty()
            && !self.sql_prepared
            && !self.state_check
            && !self.ryw.commit_pending
            && self.fence_tokens.is_empty()
        {
            return;
        }
        self.resync_settings().await;
        self.check_defaults().await;
        self.deallocate_sql().await;
        self.check_session_state().await;
        self.after_write().await;
    }

    /// Settings of `session_state::KEYED_DEFAULTS` changed with no change the client
    /// made that pgopt followed, and the client has no value of its own for them
    /// (`defaults_check`): those the session has not set (a reload of the server's
    /// configuration changed them, not a function calling set_config) are the
    /// connection's defaults now, and the pool's (see `Pool::defaults_seen`), so
    /// entries made under the old ones are not served; the client does not keep them as
    /// values of its own (read back meanwhile), and follows the server's defaults on.
    async fn check_defaults(&mut self) {
        if self.defaults_check.is_empty() || !self.server_idle() {
            return;
        }
        let names = std::mem::take(&mut self.defaults_check);
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let listed: Vec<String> = names.iter().map(|n| quote_literal(n)).collect();
        let sql = format!(
            "SELECT pg_catalog.lower(name) FROM pg_catalog.pg_settings \
             WHERE source <> 'session' AND pg_catalog.lower(name) IN ({})",
            listed.join(", ")
        );
        // A simple query: the server's unnamed statement is gone.
        self.unnamed_here = false;
        match server.conn.simple_query(&sql, self.max_len).await {
            Ok(rows) => {
                for name in rows.into_iter().filter_map(|mut row| row.pop().flatten()) {
                    let Some((_, value)) = self.reported.iter().find(|(n, _)| *n == name) else {
                        continue;
                    };
                    server.conn.defaults.set(&name, value);
                    self.settings.adopt(&name, None, &mut server.conn.applied);
                }
                if self.pool.defaults_seen(&server.conn.defaults) {
                    tracing::info!(
                        database = %self.database,
                        "the server's defaults of settings results depend on changed (a reload \
                         of its configuration): the cache's entries made under the old ones \
                         are not served"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the server's defaults failed; closing the server connection");
                self.server_lost().await;
            }
        }
    }

    /// After a transaction that ran code which may leave state on the session (see
    /// `state_check`): a temporary relation or function, a session advisory lock, a
    /// cursor WITH HOLD, an SQL-prepared statement or a LISTEN the connection holds
    /// now is the client's, as in session pooling — other clients must neither see
    /// it nor be blocked by it, and this one may use it in its next transaction. The
    /// connection then stays with the client, and closes when it leaves. (Refused
    /// when written as a statement of its own; this is what a DO block, a function
    /// or a trigger did.) If the check fails the connection closes.
    async fn check_session_state(&mut self) {
        const LEFT: &str = "SELECT pg_catalog.concat_ws(', ', \
            CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class \
              WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
              OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc \
              WHERE pronamespace = pg_catalog.pg_my_temp_schema()) \
              THEN 'temporary objects' END, \
            CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' \
              AND pid = pg_catalog.pg_backend_pid()) THEN 'session advisory locks' END, \
            CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable) \
              THEN 'cursors WITH HOLD' END, \
            CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements \
              WHERE from_sql) THEN 'SQL-prepared statements' END, \
            CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()) \
              THEN 'LISTEN' END)";
        if !self.state_check || self.pinned || !self.rewrite || !self.server_idle() {
            return;
        }
        let Some(server) = self.server.as_mut() else {
            self.state_check = false;
            return;
        };
        self.state_check = false;
        // A simple query: the server's unnamed statement is gone.
        self.unnamed_here = false;
        match server.conn.simple_query(LEFT, self.max_len).await {
            Ok(rows) => {
                let left = rows
                    .into_iter()
                    .next()
                    .and_then(|mut row| row.pop().flatten())
                    .unwrap_or_default();
                if !left.is_empty() {
                    self.pinned = true;
                    server.close_at_release();
                    tracing::warn!(
                        client = %self.info.addr,
                        state = %left,
                        "code the client ran (a DO block, a function or trigger) left state on its \
                         server connection that transaction pooling can't carry: the client \
                         keeps that connection until it leaves, which then closes"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "checking a server connection for session state failed; closing it");
                self.server_lost().await;
            }
        }
    }

    /// Read-your-writes: once a transaction on the primary that may have written has
    /// ended and the connection is idle, notes where the client's later reads may go —
    /// replicas replayed past the primary's WAL position now, or none for a while.
    /// The same position resolves the cache's fences of the client's writes (see
    /// `fence.rs`); without replicas to route to they are dropped unresolved (resolved
    /// by the primary's next health check, if the database gets replicas).
    async fn after_write(&mut self) {
        if !self.server_idle() || (!self.ryw.commit_pending && self.fence_tokens.is_empty()) {
            return;
        }
        let wrote = std::mem::take(&mut self.ryw.commit_pending);
        let fenced = std::mem::take(&mut self.fence_tokens);
        let Some(routes) = &self.routes else {
            return;
        };
        if self.ryw.replica.is_some() {
            // A read on a replica the cache counted as a possible write (a function
            // in `routing.safe_functions`): no position to read there.
            return;
        }
        let settings = &routes.router.settings;
        let window = Instant::now() + settings.read_your_writes_window;
        let routing_wants_lsn = wrote
            && match settings.read_your_writes {
                ReadYourWrites::Off => false,
                ReadYourWrites::Window => {
                    self.ryw.primary_until = Some(window);
                    false
                }
                ReadYourWrites::Lsn => true,
            };
        if !routing_wants_lsn && fenced.is_empty() {
            return;
        }
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let timeout = self.pool.limits().round_trip();
        match crate::routing::commit_lsn(&mut server.conn, self.max_len, timeout).await {
            Ok(lsn) => {
                if routing_wants_lsn {
                    self.ryw.min_lsn = self.ryw.min_lsn.max(lsn);
                }
                for fence in fenced {
                    fence.resolve(lsn);
                }
            }
            Err(e) => {
                if routing_wants_lsn {
                    tracing::warn!(
                        error = %e,
                        "reading the WAL position after a write failed; reads stay on the primary for read_your_writes_window"
                    );
                    self.ryw.primary_until = Some(window);
                } else {
                    tracing::warn!(error = %e, "reading the WAL position after a write failed");
                }
                // Its state is unknown: closed, not pooled.
                self.server = None;
                self.unlink();
            }
        }
    }

    /// A fill's query is about to run: where (a replica's replay position now is a
    /// lower bound of what the query will see).
    fn note_fill_route(&mut self) {
        let replayed = match (self.ryw.replica, &self.routes) {
            (Some(i), Some(routes)) => Some(routes.router.replicas[i].replay_lsn.load(Relaxed)),
            _ => None,
        };
        if let Some(fill) = self.filling.as_mut() {
            fill.replica_replayed = replayed;
        }
    }

    /// A transaction block in which the client ran SQL PREPARE has ended: the
    /// statements SQL prepared on the connection are deallocated before it goes back
    /// to the pool (another client's PREPARE of the name would fail, or its EXECUTE run
    /// this one's). If that fails the connection closes.
    async fn deallocate_sql(&mut self) {
        if !self.sql_prepared || !self.server_idle() {
            return;
        }
        let Some(server) = self.server.as_mut() else {
            return;
        };
        self.sql_prepared = false;
        // A simple query: the server's unnamed statement is gone.
        self.unnamed_here = false;
        let listed = "SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql";
        let mut done = server.conn.simple_query(listed, self.max_len).await;
        if let Ok(rows) = &done {
            let names: Vec<String> = rows
                .iter()
                .filter_map(|row| row.first().cloned().flatten())
                .collect();
            for name in names {
                let sql = format!("DEALLOCATE {}", quote_ident(&name));
                done = server.conn.simple_query(&sql, self.max_len).await;
                if done.is_err() {
                    break;
                }
            }
        }
        match done {
            Ok(_) => server.conn.sql_prepared.clear(),
            Err(e) => {
                tracing::warn!(error = %e, "deallocating a block's SQL prepared statements failed; closing the server connection");
                self.server_lost().await;
            }
        }
    }

    /// After ROLLBACK TO SAVEPOINT undid SETs: once nothing is in flight (and the
    /// transaction is not in a failed state), reads the affected settings back from the
    /// server, so the client and the connection's bookkeeping hold what PostgreSQL has.
    /// If that fails the connection's state is unknown, so it is closed.
    async fn resync_settings(&mut self) {
        if self.resync.is_empty()
            || !self.expected.is_empty()
            || !self.nothing_outgoing()
            || !self.sbuf.is_empty()
            || self.passing > 0
            || self.client_passes()
            || self.open_batch
            || self.dropping
            || self.status == TransactionStatus::Failed
        {
            return;
        }
        let Some(server) = self.server.as_mut() else {
            self.resync.clear();
            return;
        };
        let mut names = std::mem::take(&mut self.resync);
        // Every setting the session set (a set_config naming its setting by a column of
        // pg_settings) is read from pg_settings, a SELECT: in a block it would take a
        // REPEATABLE READ transaction's snapshot before the client's first query, so it
        // waits until the block has ended (the connection stays with the client until
        // then, and the block's end does not undo a setting made before it).
        let any = names.iter().position(|n| n == pgopt_sql::ANY_SETTING);
        if let Some(i) = any.filter(|_| self.status != TransactionStatus::Idle) {
            names.swap_remove(i);
            self.resync.push(pgopt_sql::ANY_SETTING.to_string());
            if names.is_empty() {
                return;
            }
        }
        // SET SESSION CHARACTERISTICS is tracked by its statement, under a name no
        // setting has: it is read back as the three settings it sets (else the
        // connection would keep them unknown to pgopt, for the next client).
        if let Some(i) = names
            .iter()
            .position(|n| n == session_state::CHARACTERISTICS)
        {
            names.swap_remove(i);
            self.settings.adopt(
                session_state::CHARACTERISTICS,
                None,
                &mut server.conn.applied,
            );
            for name in session_state::CHARACTERISTICS_SET {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
        // A simple query: the server's unnamed statement is gone.
        self.unnamed_here = false;
        // A set_config naming its setting by a column of pg_settings (outside a block,
        // see above): every setting the session set is read back, and every one the
        // client or the connection had (the query may have reset one to its default).
        // Not the three SET TRANSACTION sets, which outlive a transaction in pg_settings
        // but are not the session's.
        if let Some(i) = names.iter().position(|n| n == pgopt_sql::ANY_SETTING) {
            names.swap_remove(i);
            let known: Vec<String> = self
                .settings
                .names()
                .chain(server.conn.applied.names())
                .filter(|n| !n.contains(' ') && *n != "seed")
                .map(str::to_string)
                .collect();
            for name in known {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            // The query read a `pg_settings` pgopt can't be sure was the catalog's (a
            // temporary table of that name comes first on search_path): a custom
            // setting it named, which pg_settings does not list, would go unseen. The
            // client's own settings are read back here; the connection is not lent
            // again.
            server.close_at_release();
            let sql = "SELECT name FROM pg_catalog.pg_settings WHERE source = 'session' \
                       AND name NOT IN ('transaction_isolation', 'transaction_read_only', \
                       'transaction_deferrable', 'seed')";
            match server.conn.simple_query(sql, self.max_len).await {
                Ok(rows) => {
                    for name in rows.into_iter().filter_map(|mut row| row.pop().flatten()) {
                        let name = name.to_ascii_lowercase();
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the session's settings failed; closing the server connection");
                    self.server_lost().await;
                    return;
                }
            }
        }
        // SHOW takes no snapshot, so a REPEATABLE READ transaction's first snapshot
        // stays the client's first query's, as without pgopt; any other name (a custom
        // setting, which may not exist) is read with current_setting(…, true).
        let mut values = Vec::with_capacity(names.len());
        for name in &names {
            // (A name that is not a plain identifier — a dot — is not one SHOW takes.)
            let lenient = self.read_back_leniently.contains(name);
            let in_block = self.status != TransactionStatus::Idle;
            let plain = name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && (!lenient || in_block);
            let sql = if !plain {
                format!(
                    "SELECT pg_catalog.current_setting({}, true)",
                    quote_literal(name)
                )
            } else {
                format!("SHOW {}", quote_ident(name))
            };
            // A name a query may have failed to set (one PostgreSQL does not know),
            // inside a block: SHOW in a savepoint of pgopt's, whose error is undone
            // (the block goes on, the name has no value).
            let read = if plain && lenient && in_block {
                read_in_savepoint(&mut server.conn, &sql, self.max_len).await
            } else {
                server.conn.simple_query(&sql, self.max_len).await
            };
            match read {
                Ok(rows) if rows.is_empty() && plain && lenient && in_block => values.push(None),
                Ok(mut rows) if rows.len() == 1 && rows[0].len() == 1 => {
                    values.push(rows[0].pop().flatten());
                }
                other => {
                    tracing::warn!(
                        ?other,
                        "reading settings back failed; closing the server connection"
                    );
                    self.server_lost().await;
                    return;
                }
            }
        }
        let applied = &mut server.conn.applied;
        if std::mem::take(&mut self.reread_changes) {
            // What a query set in a transaction block is undone with it. (Names read
            // back for other reasons correct what pgopt knew: no change of the block.)
            keep_before_change(&mut self.tx_snapshot, self.status, &self.settings, applied);
        }
        for (name, value) in names.iter().zip(values) {
            self.settings.adopt(name, value, applied);
        }
        if self.status != TransactionStatus::Idle {
            for name in names {
                if !self.reread_at_end.contains(&name) {
                    self.reread_at_end.push(name);
                }
            }
        }
    }

    /// A server message seen by the plan bookkeeping (see `replan.rs`): an error for a
    /// statement whose result type changed, and the responses of a batch that will run
    /// again. `Some` is the verdict when it decided; `None` leaves the message to the
    /// usual path.
    fn replan(&mut self, tag: u8, body: std::ops::Range<usize>) -> Option<Verdict> {
        if self.dropping {
            if tag == b'Z' {
                self.dropping = false;
                self.rerun = self.replay.take().map(Replay::into_bytes);
            }
            return Some(if matches!(tag, b'N' | b'A' | b'S') {
                Verdict::Relay
            } else {
                Verdict::Drop
            });
        }
        if tag == b't' && std::mem::take(&mut self.hold_first_t) {
            if let Some(id) = self.expected.head_describes() {
                self.note_description(id, tag, body.clone());
                self.held_t = Some(Bytes::copy_from_slice(&self.sbuf[body.start - 5..body.end]));
                return Some(Verdict::Drop);
            }
        }
        if tag != b'E' {
            return None;
        }
        // A Bind, or a Describe of a statement (whose ParameterDescription, held, came
        // first): a server copy prepared before the schema changed (another client's,
        // maybe) fails either.
        let id = self
            .expected
            .head_bind()
            .or_else(|| self.expected.head_describes())?;
        if !is_plan_invalidated(&self.sbuf[body]) {
            return None;
        }
        self.plan_invalidated(id);
        // A batch still open that has only described the statement so far (a
        // driver that waits for the description before it binds, with a Flush:
        // postgres.js) runs again too, ended by a Sync of pgopt's: nothing of it ran.
        let whole =
            self.replay.as_ref().is_some_and(Replay::can_run_again) && self.expected.lone_batch();
        let open = !whole
            && self.replay.as_ref().is_some_and(Replay::only_described)
            && self.expected.all_server_readies() == 0;
        let again = self.status == TransactionStatus::Idle
            && !self.replayed
            && !self.replay_relayed
            && (whole || open);
        if !again {
            return None; // the client gets the server's error
        }
        if open {
            frame_into(&mut self.to_server, b'S', &[]);
        }
        self.expected.abandon_refused_batch(lacks(&mut self.server));
        self.settle_names();
        if let Some(tracker) = self.tracker.as_mut() {
            tracker.abandon();
        }
        self.dropping = true;
        self.held_t = None;
        Some(Verdict::Drop)
    }

    /// A query cycle ended (ReadyForQuery): the pool's counters learn of it — the
    /// replica's pool's, for a transaction routed to a replica.
    fn ready(&mut self) {
        let stats = match (self.ryw.replica, &self.routes) {
            (Some(i), Some(routes)) => &routes.pools[i].stats,
            _ => &self.pool.stats,
        };
        let now = self.clock;
        stats.queries.fetch_add(1, Relaxed);
        if let Some(start) = self.query_start {
            stats
                .query_us
                .fetch_add(now.duration_since(start).as_micros() as u64, Relaxed);
        }
        // Pipelined cycles: the next one is already running.
        self.query_start = (!self.expected.is_empty()).then_some(now);
        if self.status == TransactionStatus::Idle {
            stats.xacts.fetch_add(1, Relaxed);
            if let Some(start) = self.xact_start.take() {
                stats
                    .xact_us
                    .fetch_add(now.duration_since(start).as_micros() as u64, Relaxed);
            }
        }
        if self.received > 0 {
            stats.received.fetch_add(self.received, Relaxed);
            self.received = 0;
        }
        if self.sent > 0 {
            stats.sent.fetch_add(self.sent, Relaxed);
            self.sent = 0;
        }
    }

    /// Bookkeeping on CommandComplete, ErrorResponse and ReadyForQuery: statement and
    /// settings resets, confirmed SETs, errors by class, the end of a query cycle.
    fn observe(&mut self, tag: u8, body: std::ops::Range<usize>, verdict: Verdict) {
        let body_end = body.end;
        let body = &self.sbuf[body];
        if tag == b'E'
            && verdict == Verdict::Relay
            && crate::stats::error_field(body, b'V').is_some_and(|s| s == b"FATAL" || s == b"PANIC")
        {
            self.fatal_relayed = true;
        }
        if verdict == Verdict::Drop {
            // Part of a query pgopt injected to apply the client's settings.
            if tag == b'Z' {
                self.settings_answered();
            }
            if tag == b'E' {
                let code = error_code(body).unwrap_or_default();
                if let Some(role) = self.expected.head_is_identity() {
                    // The session would run as the login user, or the role another
                    // client left, or without a value it asked for: it ends instead
                    // (see `identity_refused`).
                    let why = error_field(body, b'M').unwrap_or_default();
                    self.identity_refused = Some((
                        String::from_utf8_lossy(code).into_owned(),
                        String::from_utf8_lossy(why).into_owned(),
                        role,
                    ));
                }
                // (Refused in a failed transaction: no word on the value.)
                if code != sqlstate::IN_FAILED_SQL_TRANSACTION.as_bytes() {
                    self.settings_refused = true;
                    // The connection's record may now claim the refused value: other
                    // clients, which would not send it again, must not trust it.
                    if let Some(server) = self.server.as_mut() {
                        server.conn.applied.refused = true;
                    }
                }
                tracing::warn!(
                    client = %self.info.addr,
                    sqlstate = %String::from_utf8_lossy(code),
                    error = %String::from_utf8_lossy(error_field(body, b'M').unwrap_or_default()),
                    "applying a client's settings on a server connection failed"
                );
            }
            return;
        }
        match tag {
            b'C' => {
                let Some(server) = self.server.as_mut() else {
                    return;
                };
                let conn = &mut server.conn;
                if body == b"DISCARD ALL\0" || body == b"DEALLOCATE ALL\0" {
                    if let Some(tracker) = self.tracker.as_mut() {
                        tracker.forget_statements();
                    }
                    // The server dropped every statement; the client's names stay
                    // usable: pgopt prepares them again.
                    conn.prepared.clear();
                }
                if body == b"DISCARD ALL\0" {
                    conn.applied.clear();
                    self.settings.discard_all();
                    self.statements.discard_all();
                    self.settings_behind = true;
                }
                if let Some((change, sql, 0)) = &self.pending_change {
                    let confirmed = match change {
                        Change::Set(_) => body == b"SET\0",
                        // (SET x TO DEFAULT is a RESET tagged SET.)
                        Change::Reset(_) => body == b"RESET\0" || body == b"SET\0",
                        Change::ResetAll => body == b"RESET\0",
                    };
                    if confirmed {
                        let applied = &mut conn.applied;
                        keep_before_change(
                            &mut self.tx_snapshot,
                            self.status,
                            &self.settings,
                            applied,
                        );
                        self.settings.confirm(change, sql, applied);
                        self.settings_behind |= !matches!(change, Change::Set(_));
                        // (Its query's ReadyForQuery is the next.)
                        self.tracked_readies = self.tracked_readies.max(1);
                        for name in self.settings.encoding_dependents(change) {
                            if !self.resync.contains(&name) {
                                self.resync.push(name);
                            }
                        }
                        let characteristics = session_state::CHARACTERISTICS;
                        if sets_characteristics(change)
                            && !self.resync.iter().any(|n| n == characteristics)
                        {
                            self.resync.push(characteristics.to_string());
                        }
                    }
                }
                // PostgreSQL undoes a transaction's SETs when it rolls back (a failed
                // transaction's COMMIT answers ROLLBACK too); ROLLBACK TO SAVEPOINT has
                // the same tag and undoes only some: ReadyForQuery tells them apart.
                if body == b"ROLLBACK\0" {
                    self.rolled_back = true;
                } else if body == b"COMMIT\0" {
                    self.tx_snapshot = None;
                    // (Not only at the ReadyForQuery: the same query may begin another,
                    // which may change the schema too, as the flag tells.)
                    if self.changed_schema {
                        self.pool.schema_changed();
                    }
                    // The session's own values of what was read back inside, read once
                    // nothing is in flight (before the connection goes back to the pool,
                    // or early in a transaction begun after this one, before anything
                    // in it could SET LOCAL them).
                    for name in std::mem::take(&mut self.reread_at_end) {
                        if !self.resync.contains(&name) {
                            self.resync.push(name);
                        }
                    }
                    // Committed now, though the ReadyForQuery may be far off (more
                    // statements of a simple query, an Execute with no Sync yet): the
                    // writes' entries end before the client hears of the commit. They
                    // stay noted for the ReadyForQuery (what runs after may write).
                    // When that ReadyForQuery is already here, next in this same pass
                    // (the usual case), it does it alone.
                    let ready_next =
                        self.sbuf.get(body_end) == Some(&b'Z') && self.sbuf.len() >= body_end + 6;
                    if !ready_next {
                        self.invalidate_kept_writes();
                    }
                }
            }
            b'E' => {
                if let Some(code) = error_code(body) {
                    self.pool.stats.record_error(code);
                }
                for (_, due, failed) in &mut self.pending_resets {
                    *failed |= *due == 0;
                }
                self.batch_failed |= self.batch_snapshot == Some(0);
            }
            _ => {
                if let Some(done) = self.replay.take() {
                    self.replay_spare = done.into_bytes();
                }
                self.replayed = false;
                self.forget_replay_state();
                self.failover = None;
                // An error in an extended batch outside a block rolled its implicit
                // transaction back, and the changes confirmed in it with it.
                let batch_failed = std::mem::take(&mut self.batch_failed);
                if batch_failed && self.status == TransactionStatus::Idle {
                    self.rolled_back = true;
                }
                // (A batch before the one the snapshot is for: it stays.)
                let later_batch = match self.batch_snapshot {
                    Some(due) if due > 0 => {
                        self.batch_snapshot = Some(due - 1);
                        true
                    }
                    _ => false,
                };
                if std::mem::take(&mut self.rolled_back) {
                    if self.status == TransactionStatus::Idle {
                        // The whole transaction: its SETs are gone.
                        if let (Some((settings, applied)), Some(server)) =
                            (self.tx_snapshot.take(), self.server.as_mut())
                        {
                            self.settings = settings;
                            // (A refusal seen since stays known.)
                            let refused = server.conn.applied.refused;
                            server.conn.applied = applied;
                            server.conn.applied.refused |= refused;
                        }
                        // What was read back inside is restored with them. (Names left
                        // from an earlier transaction's COMMIT are still read: a
                        // harmless SHOW when this restored them too.)
                        self.reread_at_end.clear();
                    } else if let Some((before, _)) = &self.tx_snapshot {
                        // To a savepoint: which SETs it undid only the server knows.
                        for name in self.settings.changed_since(before) {
                            if !self.resync.contains(&name) {
                                self.resync.push(name);
                            }
                        }
                    }
                }
                if self.status == TransactionStatus::Idle && !later_batch {
                    self.tx_snapshot = None;
                    self.batch_snapshot = None;
                }
                if self.status == TransactionStatus::Idle {
                    if std::mem::take(&mut self.changed_schema) {
                        self.pool.schema_changed();
                    }
                    if std::mem::take(&mut self.defaults_altered) {
                        // Sessions that begin after it take the new defaults: so do the
                        // pools' connections, and the cache's entries are made again
                        // (settings PostgreSQL does not report are not in its key).
                        // (Rolled back: a flush and new connections, nothing worse.)
                        self.shared.reconnect(None);
                        if let Some(cache) = &self.cache {
                            cache.flush(None);
                        }
                    }
                    if std::mem::take(&mut self.creates) {
                        let store = &self.shared.function_settings;
                        self.function_settings.changed(store);
                    }
                    // Before the client hears the transaction ended (this ReadyForQuery
                    // is written after), its writes' entries are gone. A rolled-back
                    // write invalidates too: more misses, never a stale row. Writes of
                    // batches pipelined behind this one may commit later: they stay
                    // noted, and are invalidated again when those end.
                    if self.expected.server_readies() > 0 {
                        self.invalidate_kept_writes();
                    } else {
                        self.invalidate_writes();
                    }
                }
                if self.routes.is_some() && self.ryw.replica.is_none() {
                    if self.status != TransactionStatus::Idle {
                        // Later statements of the transaction are not classified.
                        self.ryw.wrote = true;
                    } else if std::mem::take(&mut self.ryw.wrote) {
                        self.ryw.commit_pending = true;
                    }
                }
                self.pending_change = match self.pending_change.take() {
                    Some((c, s, n)) if n > 0 => Some((c, s, n - 1)),
                    _ => None,
                };
                if !self.pending_resets.is_empty() {
                    self.confirm_resets();
                }
                self.ready();
            }
        }
    }

    /// Lends the client a server connection for the transaction `first` starts: on a
    /// replica when the database has replicas and the batch is read-only (see
    /// `routing.rs`), else on the primary. A replica that fails to connect leaves the
    /// rotation and the next one is tried, the primary last.
    async fn checkout(&mut self, first: &Frame) -> Lending {
        self.follow_routes();
        // (A replica refuses a SERIALIZABLE transaction: the client's default one goes
        // to the primary, as `BEGIN ISOLATION LEVEL SERIALIZABLE` does, whether the
        // client set it or the server's sessions have it — ALTER ROLE or DATABASE …
        // SET, the server's config.)
        let read_only = self.routes.is_some()
            && !self
                .settings
                .serializable_by_default()
                .unwrap_or_else(|| self.pool.serializable_by_default())
            && crate::routing::read_only_batch(
                first,
                &self.cbuf,
                self.max_len,
                &self.shared.analyzer,
                |name| self.statements.query_of(name),
            );
        self.checkout_for(read_only, 0).await
    }

    /// [`Relay::checkout`] for a transaction known to be read-only or not, skipping
    /// the replicas in `tried` (a bit each).
    /// (A pool retired meanwhile fails the checkout with `CheckoutError::Retired`.)
    async fn checkout_for(&mut self, read_only: bool, mut tried: u64) -> Lending {
        self.identity_injected = false;
        // A schema change another instance made is followed before the functions are
        // judged (one load when nothing moved).
        if let Some(cache) = &self.cache {
            cache.follow_schema_tag();
        }
        // The functions that may change settings (see `function_settings.rs`): a read
        // still fresh, the usual case, costs two compares and a load here.
        if self.rewrite && !self.function_settings.fresh(self.clock) {
            let (shared, pool) = (self.shared.clone(), self.pool.clone());
            self.function_settings
                .refresh(&shared, &pool, &mut self.clock)
                .await;
            self.rejudge_statements();
        }
        let requested_us = crate::stats::unix_us_at(self.clock);
        self.info.set_state(ClientState::Waiting, requested_us);
        let mut attempts = 0;
        let result = loop {
            // A second attempt (another replica, the primary) starts now, not when the
            // request came.
            if attempts > 0 {
                self.clock = Instant::now();
            }
            attempts += 1;
            let (replica, verify) = match read_only.then(|| self.pick_replica(tried)).flatten() {
                Some((i, verify)) => (Some(i), verify),
                None => (None, 0),
            };
            let pool = match (replica, &self.routes) {
                (Some(i), Some(routes)) => routes.pool(i).clone(),
                _ => self.pool.clone(),
            };
            if let (Some(i), true) = (replica, pool.is_retired()) {
                // A replica a RELOAD took out of the database's list: not read from
                // again (another replica or the primary serves it).
                tried |= 1 << i.min(63);
                continue;
            }
            // Biased: a checkout that needs no wait never registers for a KILL.
            let checked_out = {
                let checkout = pool.checkout_from(self.clock);
                tokio::pin!(checkout);
                loop {
                    tokio::select! {
                    biased;
                    checked_out = &mut checkout => break checked_out,
                    // A client that leaves while it waits: what it sent never runs, as
                    // with PgBouncer (it may be retried elsewhere, and would run
                    // twice). Whatever else it sends meanwhile waits its turn, bounded.
                    read = self.client.read_buf(&mut self.cbuf), if self.cbuf.len() < MAX_FAILOVER_BYTES => {
                        match read {
                            Ok(n) if n > 0 => {
                                self.received += n as u64;
                            }
                            _ => {
                                self.info.set_state(ClientState::Idle, 0);
                                return Lending::Closed;
                            }
                        }
                    }
                    killed = interrupted(&self.info, &self.cancel) => {
                        if killed {
                            self.close(sqlstate::ADMIN_SHUTDOWN, self.killed_why()).await;
                            return Lending::Closed;
                        }
                        // The client canceled its request while it waited: it fails as a
                        // statement canceled in PostgreSQL does, and never runs.
                        self.clock = Instant::now();
                        self.info.set_state(ClientState::Idle, 0);
                        let code = sqlstate::QUERY_CANCELED;
                        self.pool.stats.record_error(code.as_bytes());
                        match error_response(code, "canceling statement due to user request") {
                            Some(error) => {
                                self.expected.push_error(error);
                                return Lending::Refused;
                            }
                            None => return Lending::Closed,
                        }
                    }
                    }
                }
            };
            match checked_out {
                Ok(mut checkout) => {
                    let (Some(i), Some(routes)) = (replica, &self.routes) else {
                        break Ok((checkout, replica));
                    };
                    // The replica's own sessions default to SERIALIZABLE (its config,
                    // not the primary's), which it refuses: another node.
                    if checkout.conn.serializable_default
                        && self.settings.serializable_by_default().is_none()
                    {
                        tried |= 1 << i.min(63);
                        checkout.release();
                        continue;
                    }
                    if verify == 0 {
                        break Ok((checkout, replica));
                    }
                    let node = &routes.router.replicas[i];
                    tried |= 1 << i.min(63);
                    let timeout = pool.limits().round_trip();
                    match crate::routing::replay_lsn(&mut checkout.conn, self.max_len, timeout)
                        .await
                    {
                        Ok(lsn) => {
                            node.replay_lsn.fetch_max(lsn, Relaxed);
                            if lsn >= verify {
                                break Ok((checkout, replica));
                            }
                            checkout.release(); // not there yet: another node
                        }
                        Err(e) => node.failed(&e), // the connection closes
                    }
                }
                Err(e) => match (replica, &self.routes, &e) {
                    // The replica is unreachable: the next one, or the primary.
                    (
                        Some(i),
                        Some(routes),
                        CheckoutError::Connect(_) | CheckoutError::Down { .. },
                    ) => {
                        routes.router.replicas[i].failed(&checkout_error(&pool, e).1);
                        tried |= 1 << i.min(63);
                    }
                    // A RELOAD took the replica out of the list while this client
                    // waited there.
                    (Some(i), Some(_), CheckoutError::Retired) => tried |= 1 << i.min(63),
                    _ => break Err((pool, e)),
                },
            }
        };
        match result {
            // Waiting when a RELOAD retired the pool: not on the old server either.
            Ok((checkout, _)) if self.retired() => {
                checkout.release();
                self.after_retired(read_only).await
            }
            // The client left just as a connection came free (its leaving not yet
            // seen by the event loop): its request is dropped, as during the wait.
            Ok((checkout, _)) if checkout.ready_at != self.clock && self.client.peer_left() => {
                checkout.release();
                self.info.set_state(ClientState::Idle, 0);
                Lending::Closed
            }
            Ok((checkout, _)) if self.info.killed() => {
                // KILLed while it waited (a KILLed database stays paused).
                checkout.release();
                self.close(sqlstate::ADMIN_SHUTDOWN, self.killed_why())
                    .await;
                Lending::Closed
            }
            Ok((mut checkout, replica)) => {
                let lent_us = if checkout.ready_at == self.clock {
                    requested_us
                } else {
                    self.clock = checkout.ready_at;
                    crate::stats::unix_us_at(self.clock)
                };
                self.pool.refresh_plans(&mut checkout.conn);
                checkout.conn.info.set_link(self.info.id, lent_us);
                self.info.set_link(checkout.conn.info.id);
                self.info.set_state(ClientState::Active, lent_us);
                let cancel_route = checkout.conn.cancel.clone();
                self.status = checkout.conn.status;
                self.attach(checkout);
                self.open_batch = false;
                self.executed_unsynced = false;
                self.ryw.replica = replica;
                self.ryw.wrote = !read_only;
                self.ryw.batch_ended = false;
                // Only a batch with nothing owed before it may run again elsewhere:
                // earlier answers can't be told apart from its own.
                self.failover = replica
                    .filter(|_| self.expected.is_empty())
                    .map(|_| BytesMut::new());
                self.tell_tracker();
                if let Some(routes) = &self.routes {
                    let router = &routes.router;
                    match replica {
                        Some(i) => router.replicas[i].transactions.fetch_add(1, Relaxed),
                        None if read_only => router.primary_reads.fetch_add(1, Relaxed),
                        None => router.primary_writes.fetch_add(1, Relaxed),
                    };
                }
                self.settings_behind = false; // what this sync does
                self.ending_in_flight = false;
                self.sync_settings();
                // After the sync, which makes cancels wait for its queries, if any (one
                // lock per checkout). A cancel just before finds no connection, as one
                // that comes before the request was sent: nothing of it is written yet.
                *lock(&self.cancel.route) = Some(cancel_route);
                Lending::Lent
            }
            // A RELOAD retired the pool while this client waited there.
            Err((_, CheckoutError::Retired)) => self.after_retired(read_only).await,
            Err((pool, e)) => {
                // What comes next (a pipelined request's checkout) starts after this.
                self.clock = Instant::now();
                self.info.set_state(ClientState::Idle, 0);
                let primary_down =
                    matches!(e, CheckoutError::Connect(_) | CheckoutError::Down { .. });
                let reads_go_on = self
                    .routes
                    .as_ref()
                    .is_some_and(|r| r.router.settings.reads_when_primary_down);
                if reads_go_on && primary_down {
                    // Routing: the client keeps its session for reads replicas serve.
                    let (_, why) = checkout_error(&pool, e);
                    let message = if read_only {
                        format!("no server for this read: no replica is available and the primary is down ({why})")
                    } else {
                        format!(
                            "the primary server is down, so only reads are served for now ({why})"
                        )
                    };
                    let code = sqlstate::READ_ONLY_SQL_TRANSACTION;
                    self.pool.stats.record_error(code.as_bytes());
                    if let Some(error) = error_response(code, &message) {
                        self.expected.push_error(error);
                        return Lending::Refused;
                    }
                    return Lending::Closed;
                }
                fail_checkout(&mut self.client, &pool, e).await;
                Lending::Closed
            }
        }
    }

    /// A RELOAD moved the client's database to another server (a failover), changed
    /// its pool mode, or removed it (see `Pool::retire`).
    fn retired(&self) -> bool {
        self.pool.is_retired()
    }

    /// The request `frame` begins waits until the role pgopt just sent for the client
    /// is known to be set (see `identity_pending`).
    fn hold_for_identity(&mut self, frame: &Frame) {
        self.put_back(frame);
        self.identity_pending = true;
    }

    /// `frame` waits, back in front of the client's bytes (one passed through as it
    /// came, to be passed when it goes on), until what held it back is over (see
    /// `paused`).
    fn put_back(&mut self, frame: &Frame) {
        let bytes = match self.bind_pass.take() {
            Some(pass) => pass.original,
            None => frame.as_bytes().clone(),
        };
        // (Not sized to fit: the client's later reads would fill what room is left, a
        // few bytes at a time, and a batch would be handled before it is all in.)
        let mut cbuf = BytesMut::with_capacity((bytes.len() + self.cbuf.len()).max(CLIENT_BUF));
        cbuf.extend_from_slice(&bytes);
        cbuf.extend_from_slice(&self.cbuf);
        self.cbuf = cbuf;
        self.paused = true;
    }

    /// A RELOAD retired the pool while this client waited there: it checks out from
    /// the new one, or is closed when it can't move (see [`Relay::follow_reload`]).
    async fn after_retired(&mut self, read_only: bool) -> Lending {
        if self.follow_reload() {
            return Box::pin(self.checkout_for(read_only, 0)).await;
        }
        self.close_retired().await;
        Lending::Closed
    }

    /// A RELOAD changed a database's replicas: the client's routes are made again.
    fn follow_routes(&mut self) {
        let version = self.shared.routes_version.load(SeqCst);
        if version != self.routes_seen {
            self.routes_seen = version;
            self.routes = self.membership.routes(&self.shared, &self.pool);
        }
    }

    /// A RELOAD retired the client's pool: between transactions, a transaction-mode
    /// client moves to the pool the config now gives its database and user, and its
    /// next transaction runs on the new server, as PgBouncer's clients do after a
    /// failover. Its settings and named statements go with it (they are applied and
    /// prepared on each server connection it gets). `false` when it can't move: in
    /// session mode once it had a server connection (its session lives on the old
    /// server), or when the database is gone or its pool mode changed.
    fn follow_reload(&mut self) -> bool {
        // (A session-mode client that never had a server connection has no session
        // on the old server yet: it moves too.)
        if (!self.rewrite && self.lent_once)
            || self.server.is_some()
            || self.shared.lifecycle_now() != Lifecycle::Running
        {
            return false;
        }
        let Some((pool, routes)) = self.membership.rejoin(&self.shared) else {
            return false;
        };
        tracing::info!(
            client = %self.info.addr,
            "a RELOAD moved database \"{}\" to {}:{}: the client follows",
            pool.database,
            pool.target.host,
            pool.target.port
        );
        self.serve_cache = serves_cache(&self.shared, &pool);
        // The cache's keys name the server: built anew for the new one.
        self.key_buf = Default::default();
        pool.adopt_descriptions(&self.pool, self.statements.ids());
        self.pool = pool;
        self.routes = routes;
        self.routes_seen = self.shared.routes_version.load(SeqCst);
        // The new server's catalog is read anew, and what the client learned of its
        // statements' result shapes is checked against the new pool's invalidations.
        self.function_settings = Default::default();
        self.statements.rebase();
        // WAL positions of the old server say nothing of the new one's.
        self.ryw = Default::default();
        true
    }

    /// Closes a client of a retired pool before its next transaction: it is not to run
    /// another on the old server. It reconnects to the new pool, as PgBouncer's clients
    /// end up there.
    async fn close_retired(&mut self) {
        let database = &self.pool.database;
        let message = if self.shared.config().database(database).is_some() {
            format!(
                "terminating connection: a RELOAD changed database \"{database}\"'s servers or \
                 pool mode; reconnect"
            )
        } else {
            format!("terminating connection: a RELOAD removed database \"{database}\"")
        };
        tracing::info!(client = %self.info.addr, "{message}");
        self.close(sqlstate::ADMIN_SHUTDOWN, &message).await;
    }

    /// The replica for a read-only transaction, or `None` for the primary: after the
    /// client's write only a replica that replayed it (unless the primary is down).
    /// With it, the WAL position the replica must be asked whether it has replayed
    /// (its last check said no), or 0.
    fn pick_replica(&self, tried: u64) -> Option<(usize, u64)> {
        let routes = self.routes.as_ref()?;
        let router = &routes.router;
        let settings = &router.settings;
        // The health checker's verdict (several failed checks), not one failed
        // connect: read-your-writes is dropped only when the primary is really gone.
        let primary_down = !router.primary_up.load(Relaxed);
        if primary_down {
            // Without the primary, replicas may fall behind for good: serving their
            // reads is the operator's choice.
            if !settings.reads_when_primary_down {
                return None;
            }
            return router.pick(0, tried, None).map(|i| (i, 0));
        }
        if self.ryw.primary_until.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let primary_load = settings
            .primary_reads
            .then(|| (self.pool.active.load(Relaxed), settings.primary_weight));
        let min = self.ryw.min_lsn;
        if let Some(i) = router.pick(min, tried, primary_load) {
            return Some((i, 0));
        }
        // Replication is usually faster than the checks: a replica may have the
        // client's write by now.
        (min > 0).then(|| router.pick(0, tried, primary_load).map(|i| (i, min)))?
    }

    /// Writes `to_server` while reading whatever the server sends meanwhile, so neither
    /// side can block the other with full socket buffers. What the server sends is
    /// relayed to the client as it comes (a pipelined query's big result, while the
    /// server does not read the rest of the batch), not buffered without bound.
    /// Messages added to `to_server` on the way (a batch run again) go out after it.
    async fn forward(&mut self) -> Result<(), ProxyError> {
        if self.forwarding {
            // Reached from `handle_server` inside a forward: the forward under way
            // sends what was added.
            return Ok(());
        }
        self.forwarding = true;
        let mut relayed = false;
        let sent = self.send_to_server(&mut relayed).await;
        self.forwarding = false;
        let broken = match sent {
            Ok(broken) => broken,
            // The client went away, or the server broke the protocol, part way:
            // `to_server` stays, so the connection is not idle and is not lent again.
            Err(e) => return Err(e),
        };
        self.to_server.clear();
        self.to_server_direct.clear();
        shed(&mut self.to_server);
        if broken && self.failover.is_some() {
            return Box::pin(self.fail_over()).await;
        }
        if broken {
            self.server_lost().await;
            return Err(ProxyError::server_io(std::io::ErrorKind::BrokenPipe.into()));
        }
        if relayed || std::mem::take(&mut self.copy_passed) {
            // What `handle_server` leaves for once the connection is idle, which it
            // could not be while the rest of `to_server` was on its way (the last
            // answer may have come then: a COPY's, before its last CopyData), or while
            // a client's CopyData or Bind was part way through.
            self.settle_when_idle().await;
        }
        Ok(())
    }

    /// [`Relay::forward`]'s loop: `Ok(true)` when the connection broke. `relayed`:
    /// whether server messages were relayed on the way.
    async fn send_to_server(&mut self, relayed: &mut bool) -> Result<bool, ProxyError> {
        // Of everything outgoing: `to_server` with the direct frames in their places.
        let mut written = 0;
        loop {
            let total = if self.to_server_direct.is_empty() {
                self.to_server.len()
            } else {
                self.outgoing_len()
            };
            let Some(server) = self.server.as_mut() else {
                return Ok(false);
            };
            // A read batch that may fail over is relayed only after it is all sent
            // (it is small: see MAX_FAILOVER_BYTES).
            let limit = if self.failover.is_some() {
                usize::MAX
            } else {
                self.sbuf.len() + KEPT_READ_BUF
            };
            // The piece `written` falls in, from its start.
            let (data, start) = if self.to_server_direct.is_empty() {
                (&self.to_server[..], 0)
            } else {
                outgoing_piece(&self.to_server, &self.to_server_direct, written)
            };
            let last = start + data.len() == total;
            let mut done = written - start;
            let sbuf = &mut self.sbuf;
            let pumped = match &mut server.conn.stream {
                PgStream::Plain(tcp) => {
                    let (mut rd, mut wr) = tcp.split();
                    pump(&mut rd, &mut wr, data, &mut done, sbuf, limit, false).await
                }
                PgStream::Unix(unix) => {
                    let (mut rd, mut wr) = unix.split();
                    pump(&mut rd, &mut wr, data, &mut done, sbuf, limit, false).await
                }
                PgStream::Tls(tls) => {
                    let (mut rd, mut wr) = tokio::io::split(tls.as_mut());
                    pump(&mut rd, &mut wr, data, &mut done, sbuf, limit, last).await
                }
            };
            written = start + done;
            match pumped {
                // (Messages added meanwhile, after the last piece: the loop sends them.)
                Pumped::Sent if written == total => return Ok(false),
                Pumped::Sent => {}
                Pumped::Broken => return Ok(true),
                Pumped::Full => {
                    *relayed = true;
                    Box::pin(self.handle_server()).await?;
                }
            }
        }
    }

    /// Queues a client message for the server as it came: a large one by reference
    /// (no copy of a bulk value; see `to_server_direct`).
    fn queue_frame(&mut self, frame: &Frame) {
        if self.bind_pass.is_some() && frame.tag() == b'B' {
            // (Never the stand-in itself. Its length always fits: a message comes under
            // max_message_len, at most 1 GB, and a renamed one differs by a name.)
            self.queue_stand_in(frame);
            return;
        }
        if frame.as_bytes().len() >= DIRECT_FRAME {
            let at = self.to_server.len();
            self.to_server_direct.push((at, frame.as_bytes().clone()));
        } else {
            self.to_server.extend_from_slice(frame.as_bytes());
        }
    }

    /// [`Relay::queue_frame`] of a Bind under `name`, the server's name for its
    /// statement: a large one's head is written anew, its values queued as they came.
    /// `false` when it can't be encoded.
    fn queue_renamed_bind(&mut self, bind: &BindHead<'_>, name: &str, frame: &Frame) -> bool {
        if self.bind_pass.is_some() {
            return self.queue_bind_pass(bind.portal, name);
        }
        let whole = frame.as_bytes();
        if whole.len() < DIRECT_FRAME {
            return bind.encode_renamed(name, &mut self.to_server).is_ok();
        }
        if !bind_head(&mut self.to_server, bind.portal, name, bind.rest.len()) {
            return false;
        }
        // (`rest` runs to the end of the message.)
        let rest = whole.slice(whole.len() - bind.rest.len()..);
        self.to_server_direct.push((self.to_server.len(), rest));
        true
    }

    /// Bytes queued for the server: `to_server` and the direct frames.
    fn outgoing_len(&self) -> usize {
        self.to_server.len()
            + self
                .to_server_direct
                .iter()
                .map(|(_, b)| b.len())
                .sum::<usize>()
    }

    fn nothing_outgoing(&self) -> bool {
        self.to_server.is_empty() && self.to_server_direct.is_empty()
    }

    /// Nothing owed, no transaction open, nothing half-read: the server may serve others.
    #[inline]
    fn server_idle(&self) -> bool {
        self.between_requests() && !self.client_passes()
    }

    /// [`Relay::server_idle`] but for a client's message part way through.
    #[inline]
    fn between_requests(&self) -> bool {
        !(self.open_batch && self.server.is_some())
            && self.expected.is_empty()
            && self.nothing_outgoing()
            && self.status == TransactionStatus::Idle
            && self.sbuf.is_empty()
            && self.passing == 0
            && !self.dropping
    }

    /// A client's CopyData or Bind is part way to the server: it holds the
    /// connection, and pgopt sends the server nothing of its own, until the rest is
    /// through.
    #[inline]
    fn client_passes(&self) -> bool {
        self.client_passing > 0 && !self.client_pass_drop
    }

    fn maybe_release(&mut self) {
        if self.client_passing > 0 && self.rewrite {
            self.end_copy_pass_early();
        }
        // (Not while a request waits for its role to be set on this connection.)
        if self.rewrite && !self.identity_pending && !self.pinned && self.server_idle() {
            if let Some(checkout) = self.detach() {
                self.unlink();
                checkout.release_at(self.clock);
            }
        }
    }

    /// Lends `checkout` to this client, with the server read buffer it keeps: a client
    /// holds one only while it holds a connection.
    fn attach(&mut self, mut checkout: Checkout) {
        if self.sbuf.is_empty() {
            std::mem::swap(&mut self.sbuf, &mut checkout.conn.read_buf);
            if self.sbuf.capacity() == 0 {
                self.sbuf.reserve(SERVER_READ_BUF);
            }
        }
        checkout.conn.prepared.new_checkout();
        self.server = Some(checkout);
        self.lent_once = true;
        self.unnamed_here = false;
        self.sequence_here = false;
    }

    /// Takes the server connection back, and gives it the read buffer when nothing is
    /// left in it (always so once the server is idle).
    fn detach(&mut self) -> Option<Checkout> {
        self.sequence_here = false;
        let mut checkout = self.server.take()?;
        if self.sbuf.is_empty() && checkout.conn.read_buf.is_empty() {
            std::mem::swap(&mut self.sbuf, &mut checkout.conn.read_buf);
            // One that grew for a large message is not kept for the connection's life.
            // (`capacity()` counts only what follows the bytes consumed; reclaiming
            // an empty buffer's whole allocation is free.)
            if checkout.conn.read_buf.try_reclaim(KEPT_READ_BUF + 1) {
                checkout.conn.read_buf = BytesMut::new();
            }
        }
        Some(checkout)
    }

    /// The server sent what pgopt can't relay: the client gets a FATAL that says so
    /// (its server connection closes, in `let_go`).
    async fn server_protocol_error(&mut self, source: DecodeError) -> ProxyError {
        let hint = match source {
            DecodeError::TooLong { .. } => " (raise max_message_len to relay it)",
            _ => "",
        };
        let message = format!("pgopt can't relay the server's message: {source}{hint}");
        tracing::warn!(client = %self.info.addr, "{message}");
        self.close(sqlstate::PROTOCOL_VIOLATION, &message).await;
        ProxyError::Decode {
            peer: "server",
            source,
        }
    }

    async fn client_protocol_error(&mut self, e: DecodeError) -> ProxyError {
        let message = match &e {
            // A client_encoding other than UTF8 with a name beyond ASCII (query text
            // is read escaped: see `pgopt_wire::text`).
            DecodeError::InvalidUtf8 { .. } => format!(
                "{e}: pgopt reads the names of statements and portals as UTF-8, so in a \
                 client_encoding other than UTF8 (LATIN1, WIN1252, SJIS…) they must be ASCII"
            ),
            _ => e.to_string(),
        };
        self.send_fatal(sqlstate::PROTOCOL_VIOLATION, &message)
            .await;
        self.let_go(); // its state is unknown: closed
        ProxyError::Decode {
            peer: "client",
            source: e,
        }
    }

    /// pgopt's queries applying the client's settings are answered, and the client's
    /// request is on its way (not held back for its role or a shape check): a cancel
    /// that came meanwhile goes to the server now, for the request (see
    /// `CancelTarget::setting_up`). (Its new connection reaches the server well after
    /// the request, written as this task goes on.) Called at their last answer, after a
    /// checkout, and when a held-back request goes on.
    fn settings_answered(&self) {
        if self.paused || self.expected.owes_injected_query() {
            return;
        }
        let route = lock(&self.cancel.route);
        if !self.cancel.setting_up.swap(false, Relaxed)
            || !self.cancel.deferred.swap(false, Relaxed)
        {
            return;
        }
        if let Some(route) = route.clone() {
            // In flight from now: the connection is not lent again before it arrives.
            let flight = crate::server::CancelInFlight::new(route);
            let timeout =
                crate::config::round_trip_bound(self.shared.config().server_connect_timeout);
            tokio::spawn(async move { crate::server::send_cancel(&flight.0, timeout).await });
        }
    }

    /// No cancel goes to the server connection any more (nor waits for it).
    fn drop_cancel_route(&self) {
        let mut route = lock(&self.cancel.route);
        *route = None;
        self.cancel.setting_up.store(false, Relaxed);
        self.cancel.deferred.store(false, Relaxed);
    }

    /// No server connection any more: cancel requests have nowhere to go.
    fn unlink(&mut self) {
        // Writes whose position was not read: fenced up to the primary's next check.
        self.fence_tokens.clear();
        self.query_since = None;
        self.drop_cancel_route();
        self.info.set_link(0);
        self.info.set_state(ClientState::Idle, 0);
    }

    /// The replica under a read died before the client was sent anything: the read
    /// runs once more, on another replica or the primary. (Its responses so far are
    /// dropped; the client sees only the second run's.)
    async fn fail_over(&mut self) -> Result<(), ProxyError> {
        // Reached from a failed read too, not only through `handle_server`.
        self.clock = Instant::now();
        let mut batch = self.failover.take().unwrap_or_default();
        let replica = self.ryw.replica;
        // What was captured came from the failed replica: not stored.
        self.abandon_fill();
        self.server = None;
        self.unlink();
        self.sbuf.clear();
        self.passing = 0;
        self.out.clear();
        self.expected.abandon();
        self.settle_names();
        if let Some(tracker) = self.tracker.as_mut() {
            tracker.abandon();
        }
        self.status = TransactionStatus::Idle;
        self.skipping = false;
        self.ending_in_flight = false;
        self.pending_change = None;
        self.pending_resets.clear();
        self.shape_checking = None;
        self.recheck = None;
        self.replay = None;
        self.replayed = false;
        self.forget_replay_state();
        self.dropping = false;
        self.rerun = None;
        let mut tried = 0;
        if std::mem::take(&mut self.identity_pending) {
            // It broke while the request waited for the client's role there: the
            // request, never sent, goes through a checkout again (still `paused`).
            if let (Some(i), Some(routes)) = (replica, &self.routes) {
                routes.router.replicas[i].failed("the server connection broke");
            }
            return Ok(());
        }
        if let (Some(i), Some(routes)) = (replica, &self.routes) {
            let node = &routes.router.replicas[i];
            node.failed("the server connection broke during a read");
            node.failovers.fetch_add(1, Relaxed);
            tried = 1 << i.min(63);
            tracing::warn!(
                client = %self.info.addr,
                replica = %node.address(),
                "a replica failed under a read: running it again on another node"
            );
        }
        match self.checkout_for(true, tried).await {
            Lending::Lent => {}
            Lending::Closed => {
                return Err(ProxyError::server_io(
                    std::io::ErrorKind::ConnectionAborted.into(),
                ))
            }
            Lending::Refused => {
                // Nowhere to run it: the client gets the error and a ReadyForQuery.
                self.expected.push(Step::Ready);
                self.answer_owed();
                // No server connection: no request of its own to time.
                write_all_bounded(&mut self.client, &self.out, &self.info, None).await?;
                self.out.clear();
                return Ok(());
            }
        }
        self.failover = None; // once only
        self.rerouting = true;
        while let Ok(Some(frame)) = split_frame(&mut batch, self.max_len) {
            if let Err(e) = self.route(&frame) {
                self.rerouting = false;
                return Err(self.client_protocol_error(e).await);
            }
        }
        self.rerouting = false;
        self.forward().await?;
        self.handle_pumped().await
    }

    /// The server connection broke: the client learns it with a proper error.
    async fn server_lost(&mut self) {
        // A COMMIT may have been carried out just before: its writes count.
        self.invalidate_writes();
        self.publish_later();
        self.server = None;
        self.unlink();
        if let (Some(i), Some(routes)) = (self.ryw.replica, &self.routes) {
            routes.router.replicas[i].failed("the server connection broke");
        }
        self.pool
            .stats
            .record_error(sqlstate::CONNECTION_FAILURE.as_bytes());
        // (The server's own FATAL said why, as PostgreSQL's does before it closes.)
        if !self.fatal_relayed {
            self.send_fatal(
                sqlstate::CONNECTION_FAILURE,
                "server closed the connection unexpectedly",
            )
            .await;
        }
    }

    /// The client is gone: its server connection goes back to the pool only when
    /// nothing is in flight; a session-mode connection is reset first.
    fn finish(mut self) {
        self.drop_cancel_route();
        if !self.server_idle() {
            // Closed (the server aborts what was running, once it notices).
            self.let_go();
            return;
        }
        self.invalidate_writes();
        self.publish_later();
        let Some(checkout) = self.detach() else {
            return;
        };
        match self.mode {
            PoolMode::Transaction => checkout.release(),
            PoolMode::Session => {
                tokio::spawn(reset_and_release(checkout, self.max_len));
            }
        }
    }
}

/// How a [`pump`] ended.
enum Pumped {
    /// All written (and flushed).
    Sent,
    /// Either side broke.
    Broken,
    /// `sbuf` reached the limit first: its messages are to be relayed before the rest.
    Full,
}

/// Writes `data` from `written` on (and flushes it, under TLS) while reading what the
/// server sends meanwhile into `sbuf`, until it is all sent or `sbuf` holds `limit`
/// bytes.
async fn pump<R, W>(
    rd: &mut R,
    wr: &mut W,
    data: &[u8],
    written: &mut usize,
    sbuf: &mut BytesMut,
    limit: usize,
    flush: bool,
) -> Pumped
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    while *written < data.len() {
        if sbuf.len() >= limit {
            return Pumped::Full;
        }
        tokio::select! {
            w = wr.write(&data[*written..]) => match w {
                Ok(n) if n > 0 => *written += n,
                _ => return Pumped::Broken,
            },
            r = rd.read_buf(sbuf) => if !matches!(r, Ok(n) if n > 0) {
                return Pumped::Broken;
            },
        }
    }
    if !flush {
        return Pumped::Sent;
    }
    loop {
        if sbuf.len() >= limit {
            return Pumped::Full;
        }
        tokio::select! {
            f = wr.flush() => return if f.is_ok() { Pumped::Sent } else { Pumped::Broken },
            r = rd.read_buf(sbuf) => if !matches!(r, Ok(n) if n > 0) {
                return Pumped::Broken;
            },
        }
    }
}

/// What is queued for the server, in order, is `to_server` cut at each direct frame's
/// place with the frame between (see `Relay::to_server_direct`): the piece byte `at`
/// of it falls in, and where that piece starts. Past the end: the (empty) end of the
/// last piece.
fn outgoing_piece<'a>(
    to_server: &'a [u8],
    direct: &'a [(usize, Bytes)],
    at: usize,
) -> (&'a [u8], usize) {
    let (mut start, mut from) = (0, 0);
    for (place, frame) in direct {
        let before = &to_server[from..*place];
        if at < start + before.len() {
            return (before, start);
        }
        start += before.len();
        from = *place;
        if at < start + frame.len() {
            return (frame, start);
        }
        start += frame.len();
    }
    (&to_server[from..], start)
}

/// How long a departed client's statement is read for after each cancel (see
/// [`settle_writes`]), and how many cancels in a row may go without effect.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
const CANCEL_STRIKES: u32 = 3;

/// Closes `checkout`'s sending side, then reads its answers (after those in `buf`,
/// and the rest of a row part way through: its length, `skip`) until `owed` ReadyForQuery have come (with `until_end`, until the server closes:
/// statements with no Sync after them may still run) or the connection ends: nothing
/// it runs can commit after that. Past `wait` the running statement is canceled, and
/// each one after it (pipelined statements run in turn), else one could commit after
/// the invalidation that follows and a fill in between would keep the old rows.
/// `false` when cancels did not end it. The connection is closed at the end.
async fn settle_writes(
    mut checkout: Checkout,
    (mut buf, mut skip): (BytesMut, usize),
    mut owed: usize,
    until_end: bool,
    max_len: u32,
    wait: Duration,
) -> bool {
    let cancel = checkout.conn.cancel.clone();
    let conn = &mut checkout.conn;
    let addr = conn.addr.clone();
    // Nothing more will be sent: the server runs what it has and then reads the end
    // of the stream. One waiting for the client's input (COPY FROM STDIN) sees it at
    // once and rolls back. (Bounded: over TLS this writes a close_notify, and the
    // server may be blocked writing to pgopt.)
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.stream.shutdown()).await;
    let mut deadline = tokio::time::Instant::now() + wait;
    let mut strikes = 0;
    loop {
        let next = next_ready(&mut conn.stream, &mut buf, &mut skip, max_len);
        match tokio::time::timeout_at(deadline, next).await {
            Ok(Some(false)) => return true,
            // A message that can't be read: what runs after it is unknown.
            Ok(None) => return false,
            Ok(Some(true)) => {
                owed = owed.saturating_sub(1);
                if owed == 0 && !until_end {
                    return true;
                }
                if strikes > 0 {
                    // Canceled before: the statement after this one too.
                    strikes = 1;
                    crate::server::send_cancel(&cancel, CANCEL_GRACE).await;
                    deadline = tokio::time::Instant::now() + CANCEL_GRACE;
                }
            }
            Err(_) if strikes < CANCEL_STRIKES => {
                if strikes == 0 {
                    tracing::warn!(
                        server = %addr,
                        wait_ms = wait.as_millis() as u64,
                        "a departed client's statement ran past cache.departed_write_timeout: canceling it"
                    );
                }
                strikes += 1;
                crate::server::send_cancel(&cancel, CANCEL_GRACE).await;
                deadline = tokio::time::Instant::now() + CANCEL_GRACE;
            }
            Err(_) => {
                tracing::warn!(
                    server = %addr,
                    "a departed client's statement did not end when canceled: every cached result is invalidated"
                );
                return false;
            }
        }
    }
}

/// Reads `stream` up to its next ReadyForQuery (`Some(true)`), or its end
/// (`Some(false)`: closed or failed); `None` for a message that can't be read. The
/// first `skip` bytes are the rest of a message, passed over.
async fn next_ready(
    stream: &mut PgStream,
    buf: &mut BytesMut,
    skip: &mut usize,
    max_len: u32,
) -> Option<bool> {
    loop {
        let n = (*skip).min(buf.len());
        buf.advance(n);
        *skip -= n;
        if *skip == 0 {
            loop {
                match split_frame(buf, max_len) {
                    Ok(Some(frame)) if frame.tag() == b'Z' => return Some(true),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return None,
                }
            }
        }
        if !matches!(stream.read_buf(buf).await, Ok(n) if n > 0) {
            return Some(false);
        }
    }
}

/// Writes a Bind's type, length and two names into `dst`, for `values_len` bytes of
/// the rest to follow (its formats, values and result formats). `false`, with
/// nothing written, when a name holds a NUL or the length is past an Int32.
fn bind_head(dst: &mut BytesMut, portal: &str, statement: &str, values_len: usize) -> bool {
    let len = 4 + portal.len() + 1 + statement.len() + 1 + values_len;
    let Ok(len) = i32::try_from(len) else {
        return false;
    };
    if portal.contains('\0') || statement.contains('\0') {
        return false;
    }
    dst.extend_from_slice(b"B");
    dst.extend_from_slice(&len.to_be_bytes());
    for name in [portal, statement] {
        dst.extend_from_slice(name.as_bytes());
        dst.extend_from_slice(b"\0");
    }
    true
}

/// Whether the client messages in `batch` include a Close.
fn holds_close(batch: &[u8], max_len: u32) -> bool {
    let mut pos = 0;
    while let Ok(Some(header)) = pgopt_wire::peek_header(&batch[pos..], max_len) {
        if header.tag == b'C' {
            return true;
        }
        pos += header.frame_len();
        if pos >= batch.len() {
            break;
        }
    }
    false
}

/// Before a SET inside a transaction block, the settings as they were (once per
/// transaction), so a ROLLBACK can restore them.
fn keep_before_change(
    snapshot: &mut Option<(Settings, Applied)>,
    status: TransactionStatus,
    settings: &Settings,
    applied: &Applied,
) {
    if status != TransactionStatus::Idle && snapshot.is_none() {
        *snapshot = Some((settings.clone(), applied.clone()));
    }
}

/// Whether two RowDescription bodies give rows of one shape, as PostgreSQL's plan
/// cache judges a result type: the same columns, names, types and type modifiers
/// (not the tables they come from, which a table dropped and created again changes).
/// Whether a server's answer to a Describe of a statement (`tag` 'T' or 'n', with
/// `body`) gives the result shape `told` (one not kept is taken as the same).
fn same_shape(told: &Description, tag: u8, body: &[u8]) -> bool {
    match (told.returns_rows, &told.rows, tag) {
        (false, _, b'n') => true,
        (true, Some(rows), b'T') => same_row_shape(rows, body),
        (true, None, b'T') => true,
        _ => false,
    }
}

/// See [`Relay::recheck`].
struct Recheck {
    /// The statement described afresh.
    id: u64,
    /// The shape its client was told.
    told: Description,
    /// Whether the server's answer gives that shape, once in.
    same: Option<bool>,
}

fn same_row_shape(a: &[u8], b: &[u8]) -> bool {
    /// A column's name, type and type modifier.
    type Column<'a> = (&'a [u8], &'a [u8], &'a [u8]);
    fn fields(mut body: &[u8]) -> Option<Vec<Column<'_>>> {
        let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
        body = &body[2..];
        let mut out = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let nul = body.iter().position(|&b| b == 0)?;
            let name = &body[..nul];
            let rest = body.get(nul + 1..nul + 1 + 18)?;
            // table oid (4), column (2), type oid (4), length (2), modifier (4), format (2)
            out.push((name, &rest[6..10], &rest[12..16]));
            body = &body[nul + 1 + 18..];
        }
        Some(out)
    }
    matches!((fields(a), fields(b)), (Some(x), Some(y)) if x == y)
}

/// PostgreSQL's answer to a Describe of a statement, from what a server said of it:
/// its ParameterDescription, then NoData or its RowDescription (`None` when that was
/// too long to keep).
fn described_reply(description: &crate::pool::Description) -> Option<Bytes> {
    let rows_len = description.rows.as_ref().map_or(0, Bytes::len);
    let mut reply = BytesMut::with_capacity(description.params.len() + rows_len + 10);
    frame_into(&mut reply, b't', &description.params);
    match (description.returns_rows, &description.rows) {
        (false, _) => frame_into(&mut reply, b'n', &[]),
        (true, Some(rows)) => frame_into(&mut reply, b'T', rows),
        (true, None) => return None,
    }
    Some(reply.freeze())
}

/// Runs `sql` (a SHOW) inside a savepoint of pgopt's: its rows, or none when it
/// failed (the savepoint undoes the error, and the transaction block goes on).
async fn read_in_savepoint(
    conn: &mut crate::server::ServerConn,
    sql: &str,
    max_len: u32,
) -> Result<Vec<Vec<Option<String>>>, String> {
    const SAVEPOINT: &str = "pgopt_read_back";
    conn.simple_query(&format!("SAVEPOINT {SAVEPOINT}"), max_len)
        .await?;
    let rows = match conn.simple_query(sql, max_len).await {
        Ok(rows) => rows,
        Err(_) => {
            conn.simple_query(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"), max_len)
                .await?;
            Vec::new()
        }
    };
    conn.simple_query(&format!("RELEASE SAVEPOINT {SAVEPOINT}"), max_len)
        .await?;
    Ok(rows)
}

/// Whether `change` is SET SESSION CHARACTERISTICS. Once run, it is read back as the
/// settings it sets (see `Relay::resync_settings`), so it and a SET or RESET of one of
/// them replay in the order the client ran them — and the connection never keeps it
/// under its own name, which no setting has (the next client's sync would RESET that,
/// in vain, and keep the isolation level).
fn sets_characteristics(change: &Change) -> bool {
    matches!(change, Change::Set(n) if n.eq_ignore_ascii_case(session_state::CHARACTERISTICS))
}

/// Appends a protocol message: type, length, body.
/// A ParameterStatus body's name and value.
fn status_fields(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut fields = body.split(|&b| b == 0);
    Some((fields.next()?, fields.next()?))
}

fn frame_into(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

async fn read_server(server: &mut Option<Checkout>, buf: &mut BytesMut) -> std::io::Result<usize> {
    match server {
        Some(checkout) => checkout.conn.stream.read_buf(buf).await,
        None => std::future::pending().await,
    }
}

/// The SQL-prepared statements of the server connection lent, if one is.
fn sql_statements(server: &mut Option<Checkout>) -> Option<&mut crate::cache::SqlStatements> {
    server.as_mut().map(|s| &mut s.conn.sql_prepared)
}

/// `DISCARD ALL` so the next client starts clean; on any trouble the connection closes.
async fn reset_and_release(mut checkout: Checkout, max_len: u32) {
    const RESET: &[u8] = b"Q\0\0\0\x10DISCARD ALL\0";
    let conn = &mut checkout.conn;
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        conn.stream.write_all(RESET).await?;
        conn.stream.flush().await?;
        let mut buf = BytesMut::with_capacity(256);
        loop {
            if conn.stream.read_buf(&mut buf).await? == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            while let Ok(Some(frame)) = split_frame(&mut buf, max_len) {
                if frame.tag() == b'Z' {
                    return Ok(frame.body() == b"I" && buf.is_empty());
                }
            }
        }
    })
    .await;
    if let Ok(Ok(true)) = done {
        checkout.conn.prepared.clear();
        checkout.conn.sql_prepared.clear();
        checkout.conn.applied.clear();
        checkout.release();
    }
}

/// Whether a simple query's text (its body) starts with `word` (lower case), in any
/// case, after white space.
fn starts_with_word(body: &[u8], word: &[u8]) -> bool {
    let text = body.trim_ascii_start();
    text.len() > word.len()
        && text[..word.len()].eq_ignore_ascii_case(word)
        && !text[word.len()].is_ascii_alphanumeric()
        && text[word.len()] != b'_'
}

/// A SET that may reset its setting: `SET x TO DEFAULT`, `SET TIME ZONE LOCAL`.
fn may_set_default(body: &[u8]) -> bool {
    let has = |word: &[u8]| {
        body.windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word))
    };
    starts_with_word(body, b"set") && (has(b"default") || has(b"local"))
}

/// What ends a client's wait for a server connection: a KILL (`true`), or its cancel
/// request (`false`). One future for both keeps the wait's `select!` small (a third
/// branch there made each checkout copy its futures, about 1,000 instructions).
async fn interrupted(info: &ClientInfo, cancel: &crate::session::CancelTarget) -> bool {
    tokio::select! {
        biased;
        () = info.until_killed() => true,
        () = cancel.waiting.notified() => false,
    }
}

/// An ErrorResponse (severity ERROR) pgopt answers with.
fn error_response(code: &str, message: &str) -> Option<Bytes> {
    let mut out = BytesMut::new();
    ErrorBuilder::new(Severity::Error, code, message)
        .encode_error(&mut out)
        .ok()?;
    Some(out.freeze())
}

/// How many parameters PostgreSQL gives the statement of a Parse message (`frame`,
/// header included): the types it names, or the highest `$n` its text uses,
/// whichever is more.
fn param_count(frame: &[u8]) -> Option<usize> {
    let parse = Parse::decode(frame.get(5..)?).ok()?;
    let used = pgopt_sql::parameter_spans(parse.query)
        .iter()
        .map(|(_, n)| *n as usize)
        .max()
        .unwrap_or(0);
    Some(used.max(parse.param_types.len()))
}

/// PostgreSQL's error for a statement in a failed transaction.
fn in_failed_transaction_error() -> Option<Bytes> {
    error_response(sqlstate::IN_FAILED_SQL_TRANSACTION, IN_FAILED_TRANSACTION)
}

/// PostgreSQL's error for a Parse of a statement name the client already has.
fn duplicate_statement_error(name: &str) -> Option<Bytes> {
    let message = format!("prepared statement \"{name}\" already exists");
    error_response(sqlstate::DUPLICATE_PSTATEMENT, &message)
}

const STANDARD_CONFORMING_STRINGS: &str = "standard_conforming_strings";

/// Settings PostgreSQL reports changes of (ParameterStatus), lower case, whose changes
/// pgopt did not follow are read back (see `Relay::note_reported_setting`).
const FOLLOWED: &[&str] = &[
    "standard_conforming_strings",
    "timezone",
    "datestyle",
    "intervalstyle",
    "application_name",
    "client_encoding",
    "default_transaction_read_only",
];

/// The client's encoding as pgopt reads it (see `Settings::encoding_name`).
#[derive(Debug, Clone, Copy)]
struct Encoding {
    /// For statement ids: see `statements::statement_id`.
    salt: u64,
    /// Its characters may end in an ASCII byte (see [`ASCII_TRAILS`]).
    ascii_trails: bool,
}

/// Encodings (as `Settings::encoding_name` writes them, aliases too) whose two-byte
/// characters may end in an ASCII byte (`\`, `[`…): pgopt, which reads text byte by
/// byte, may read such text otherwise than PostgreSQL (see `pgopt_wire::text`).
const ASCII_TRAILS: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "gb18030",
    "johab",
];

/// Whether SQL `text` may read otherwise than pgopt's parser reads it: a backslash,
/// when the session reads one in a `'…'` string as an escape.
fn escapes_differ(backslash_escapes: bool, text: &[u8]) -> bool {
    backslash_escapes && memchr::memchr(b'\\', text).is_some()
}

/// Why SQL pgopt could not read in an encoding whose characters may end in an ASCII
/// byte is refused in transaction mode.
fn multibyte_refusal() -> String {
    "SQL in this client_encoding that pgopt's parser cannot read (a character whose \
     second byte is ASCII, such as \\ or [, outside a string) is not supported in \
     transaction pooling mode: pgopt could not tell what it does to the session; quote \
     such identifiers, or use client_encoding UTF8"
        .to_string()
}

/// Whether a client of `pool` is served from the result cache: in transaction mode,
/// unless writes that bypass pgopt could go unseen or a fill could read a standby.
fn serves_cache(shared: &Shared, pool: &Pool) -> bool {
    let Some(cache) = &shared.cache else {
        return false;
    };
    // With `wal_listener` on, a database no listener follows on these servers (reached
    // through the `*` fallback, added or moved by a RELOAD) is not cached: writes that
    // bypass pgopt would go unseen there.
    let unfollowed = !cache.follows(&pool.database, &pool.target);
    // A host list that may hold a standby: a fill could read one behind the
    // versions it was taken under, so it is not cached (a warning at start).
    let maybe_standby = pool.target.more_hosts.may_reach_standby();
    pool.mode == PoolMode::Transaction && !unfollowed && !maybe_standby
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The statement bookkeeping's `forget`: the server connection lacks statement `id`
/// (pgopt's Parse of it was skipped or failed).
fn lacks(server: &mut Option<Checkout>) -> impl FnMut(u64) + '_ {
    move |id| {
        if let Some(s) = server.as_mut() {
            s.conn.prepared.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_for_a_large_message_follows_what_arrived() {
        // A header alone claims 1 GiB: room for a step, not for all of it.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"Q\x3f\xff\xff\xff");
        reserve_message(&mut buf, pgopt_wire::DEFAULT_MAX_MESSAGE_LEN);
        assert!(buf.capacity() >= MESSAGE_STEP && buf.capacity() < 4 * MESSAGE_STEP);
        // 2 MB of a 3 MB message here: room for the rest.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"Q");
        buf.extend_from_slice(&(3u32 << 20).to_be_bytes());
        buf.resize(2 << 20, b'x');
        reserve_message(&mut buf, pgopt_wire::DEFAULT_MAX_MESSAGE_LEN);
        assert!(buf.capacity() > 3 << 20, "{}", buf.capacity());
        // A message longer than max_len gets no room: it is refused when read.
        let mut buf = BytesMut::from(&b"Q\x3f\xff\xff\xff"[..]);
        reserve_message(&mut buf, 1 << 20);
        assert!(buf.capacity() < MESSAGE_STEP);
    }

    #[test]
    fn outgoing_bytes_are_to_server_with_the_direct_frames_in_their_places() {
        let direct = [
            (2, Bytes::from_static(b"XY")),
            (2, Bytes::from_static(b"Z")),
            (4, Bytes::from_static(b"W")),
        ];
        let to_server = b"abcde";
        // a b X Y Z c d W e
        let mut sent = Vec::new();
        let mut at = 0;
        loop {
            let (piece, start) = outgoing_piece(to_server, &direct, at);
            assert!(start <= at && at <= start + piece.len());
            if piece.is_empty() || at == start + piece.len() {
                break;
            }
            sent.extend_from_slice(&piece[at - start..]);
            at = start + piece.len();
        }
        assert_eq!(sent, b"abXYZcdWe");
        assert_eq!(outgoing_piece(to_server, &[], 3), (&to_server[..], 0));
        let first = [(0, Bytes::from_static(b"XY"))];
        assert_eq!(outgoing_piece(b"", &first, 0), (&b"XY"[..], 0));
        assert_eq!(outgoing_piece(b"", &first, 2), (&b""[..], 2));
    }

    #[test]
    fn a_buffer_grown_for_one_message_is_given_back_once_empty() {
        let mut buf = BytesMut::with_capacity(4 * KEPT_CLIENT_BUF);
        buf.extend_from_slice(b"abc");
        shed(&mut buf);
        assert!(
            buf.capacity() >= 4 * KEPT_CLIENT_BUF,
            "not while it holds bytes"
        );
        buf.clear();
        shed(&mut buf);
        assert_eq!((buf.len(), buf.capacity()), (0, CLIENT_BUF));
        let mut small = BytesMut::with_capacity(KEPT_CLIENT_BUF);
        shed(&mut small);
        assert_eq!(small.capacity(), KEPT_CLIENT_BUF);
    }
}
