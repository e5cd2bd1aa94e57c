//! Server connections per (database, user): a number of slots (plus a reserve for
//! clients that waited too long), idle connections reused most-recent first (or,
//! with `server_round_robin`, longest-idle first), waiting
//! clients bounded by `query_wait_timeout`, PAUSE/RESUME, and a circuit breaker that
//! fails clients fast while the server is down and retries with exponential backoff.
//!
//! A saturated pool hands connections over: a connection coming back while clients
//! wait goes straight to one of them (its slot with it), preferably to one on the
//! connection's own session thread (see `workers.rs`), as PgBouncer gives a released
//! server to the first waiting client. No slot queue is woken and no idle list is
//! touched, and the connection need not move to another thread's event loop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pgopt_wire::scram::ScramKeys;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::PoolMode;
use crate::routing::Node;
use crate::server::{ServerConn, ServerTarget};
use crate::stats::{PoolStats, ServerRegistry};
use crate::ProxyError;

/// ParameterStatus name/value pairs a server sent at start-up.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// Limits a pool enforces; [`Pool::set_limits`] changes them on RELOAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub size: usize,
    /// Connections kept open even when idle.
    pub min_size: usize,
    /// Extra connections for clients that waited longer than `reserve_timeout`.
    pub reserve_size: usize,
    pub reserve_timeout: Duration,
    /// A connect and log-in for a client (0 in the config: no limit, see
    /// [`PoolLimits::round_trip`] for the rest).
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    /// How long a client waits for a server connection.
    pub wait_timeout: Duration,
    /// An idle connection unused this long gets a real round trip before reuse.
    pub check_after: Duration,
    pub max_message_len: u32,
    /// TCP keepalive on new connections, unless `None`.
    pub keepalive: Option<crate::config::Keepalive>,
    /// Reuse the idle connection that waited longest (`server_round_robin`), not the
    /// one used last.
    pub round_robin: bool,
    /// Read each new connection's defaults of the settings PostgreSQL does not report
    /// (the cache keys on them: see `session_state::UNREPORTED_DEFAULTS`), and their
    /// default isolation (a replica refuses SERIALIZABLE).
    pub read_defaults: bool,
}

impl PoolLimits {
    /// The bound of a round trip on a server connection, and of pgopt's own
    /// connections (see [`crate::config::round_trip_bound`]).
    pub fn round_trip(&self) -> Duration {
        crate::config::round_trip_bound(self.connect_timeout)
    }
}

/// How a server connection pgopt opens for its own work counts under
/// `max_db_connections` and `max_user_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Not counted (the routing checker's one per node: a health check must not wait
    /// for clients' room).
    Uncounted,
    /// Only room nobody uses: never a wait, never an idle connection closed (sampling
    /// and diagnostics give way to clients).
    Spare,
    /// As a client's (a catalog read a request waits on): an idle connection, this
    /// pool's too, closed for it, else a wait up to the connect timeout.
    Wait,
}

/// The server connections a set of pools hold open together, shared by those pools:
/// one database's on one node (`max_db_connections`), or one user's
/// (`max_user_connections`). Its maximum is set by the config (RELOAD too) for every
/// pool it counts, those a RELOAD replaced included.
#[derive(Default)]
pub struct ConnLimit {
    /// 0: no limit.
    max: AtomicUsize,
    open: AtomicUsize,
    /// A connection closed, or went idle where it can be closed: room for one more.
    freed: Notify,
    /// Pools waiting for room (a release then wakes them: its connection may be
    /// closed for them).
    waiting: AtomicUsize,
    /// The pools it counts, whose idle connections make room.
    pools: Mutex<Vec<Weak<Pool>>>,
}

impl ConnLimit {
    /// Sets the maximum (0: none); waiters for room read it again.
    pub fn set_max(&self, max: usize) {
        if self.max.swap(max, SeqCst) != max {
            self.freed.notify_waiters();
        }
    }

    /// Server connections open (or being opened) in it now.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// The pools it counts that are still alive.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        lock(&self.pools).iter().filter_map(Weak::upgrade).collect()
    }

    /// Counts `pool`'s connections from now on.
    fn add(&self, pool: &Arc<Pool>) {
        let mut pools = lock(&self.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// A connection went idle where it may be closed for a pool waiting for room:
    /// one waiter is woken, not all.
    fn went_idle(&self) {
        if self.waiting.load(Relaxed) > 0 {
            self.freed.notify_one();
        }
    }

    /// Closes the oldest idle connection of the first other pool it counts that has
    /// one (as PgBouncer's eviction does); `false` when none has one.
    fn close_idle_of_another(&self, except: &Pool) -> bool {
        let pools: Vec<Arc<Pool>> = {
            let mut pools = lock(&self.pools);
            pools.retain(|p| p.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in pools.iter().filter(|p| !std::ptr::eq(p.as_ref(), except)) {
            let closed = {
                let mut idle = lock(&pool.idle);
                (!idle.is_empty()).then(|| idle.remove(0))
            };
            if closed.is_some() {
                return true;
            }
        }
        false
    }
}

/// One open server connection counted in a [`ConnLimit`]: dropped with the
/// connection.
pub struct ConnPermit(Arc<ConnLimit>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, SeqCst);
        self.0.freed.notify_one();
    }
}

impl std::fmt::Debug for ConnPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnPermit")
    }
}

/// Why no server connection could be handed out.
#[derive(Debug)]
pub enum CheckoutError {
    /// Every slot stayed busy for the whole wait.
    WaitTimeout(Duration),
    /// Connecting to the server failed.
    Connect(ProxyError),
    /// The server failed recently; no new attempt before the backoff ends.
    Down { error: String, retry_in: Duration },
    /// The proxy is shutting down.
    ShuttingDown,
    /// A RELOAD replaced or removed the pool (see [`Pool::retire`]).
    Retired,
}

/// Invalidated statements remembered per pool.
const MAX_INVALIDATED: usize = 4096;
/// Statement descriptions kept per pool; past it they are forgotten and learnt again.
const MAX_DESCRIPTIONS: usize = 4096;
/// The longest RowDescription kept with a description (a few hundred columns).
const MAX_KEPT_ROWS: usize = 8192;
/// Earlier shapes kept per statement (see [`Pool::description_at`]).
const MAX_SUPERSEDED: usize = 4;

/// A description a plan invalidation superseded, and the plan epochs over which it
/// held: from `from` (the statement's invalidation before, or 0) up to `until`.
#[derive(Debug)]
struct Superseded {
    from: u64,
    until: u64,
    description: Description,
}

/// What a server answered a Describe of a statement: its ParameterDescription's body
/// and whether it returns rows (a RowDescription, not NoData), at a plan epoch. In a
/// failed transaction a server connection that lacks a client's statement can't
/// prepare it, and pgopt answers for it from this, as PostgreSQL would. (Keyed by the
/// statement's text and declared types, as its `pgopt_…` server statements are:
/// parameter types a schema change alters without a new plan epoch, or a different
/// `search_path`, can make it stale for this rare answer.)
#[derive(Debug, Clone)]
pub struct Description {
    epoch: u64,
    /// The pool's schema epoch when it was said (see [`Pool::current_description`]).
    schema: u64,
    pub params: bytes::Bytes,
    pub returns_rows: bool,
    /// Its RowDescription's body, when it returns rows (kept up to
    /// [`MAX_KEPT_ROWS`] bytes): what clients were told of its result shape.
    pub rows: Option<bytes::Bytes>,
}

impl Description {
    /// How many parameters the statement takes.
    pub fn param_count(&self) -> usize {
        match self.params.get(..2) {
            Some(n) => usize::from(u16::from_be_bytes([n[0], n[1]])),
            None => 0,
        }
    }
}

/// How much longer than the longest-waiting client one on the returned connection's
/// own thread may have waited and still be served first.
const HOME_PREFERENCE: Duration = Duration::from_millis(2);

/// Waiting clients looked at for one on the returned connection's thread.
const HOME_LOOKAHEAD: usize = 32;

/// A connection handed over to a waiting client: it, its slot, its lent count.
type Handed = (Box<ServerConn>, OwnedSemaphorePermit, Lent);

/// A client waiting for a connection: its thread, since when, where to hand one.
struct Waiter {
    home: usize,
    since: Instant,
    to: oneshot::Sender<Handed>,
}

/// Backoff after failed connects: 100 ms doubling up to 10 s.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

pub struct Pool {
    /// The client-facing database and user names.
    pub database: String,
    pub user: String,
    pub mode: PoolMode,
    pub target: ServerTarget,
    /// `fence::key_of(&target)`, made once: a primary's pool's is its database's key
    /// for the cache's write fences (each commit that wrote passes it).
    pub fence_key: String,
    /// The replica this pool's connections go to; `None`: the database's primary.
    pub node: Option<(usize, Arc<Node>)>,
    limits: Mutex<PoolLimits>,
    slots: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    /// Boxed: a checkout moves a connection several times per transaction.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    /// What the server said about itself at start-up, for clients' ParameterStatus.
    params: Mutex<Option<ServerParams>>,
    /// The server's defaults of the settings the cache keys on, as its newest
    /// connection had them (see [`Pool::defaults_seen`]), and their hash.
    defaults: Mutex<crate::session_state::Defaults>,
    defaults_hash: AtomicU64,
    /// Its newest connection's sessions default to SERIALIZABLE (read with the
    /// defaults, see `ServerConn::serializable_default`).
    serializable_default: AtomicBool,
    /// How the server reported clients' start-up values it spells otherwise (by
    /// lower-case name and value as written: `asia/tokyo` is `Asia/Tokyo`), so later
    /// clients are told its spelling at login (see `Settings::spell_startup`).
    spellings: Mutex<HashMap<(String, String), String>>,
    paused: AtomicBool,
    resumed: Notify,
    breaker: Mutex<Breaker>,
    /// Shared with the pool a RELOAD replaced for the same (database, user, node):
    /// SHOW STATS and /metrics totals go on across it.
    pub stats: Arc<PoolStats>,
    pub servers: ServerRegistry,
    /// Connections lent to clients, and being opened.
    pub active: AtomicUsize,
    pub connecting: AtomicUsize,
    /// Idle connections being health-checked before a client gets one (PgBouncer's
    /// `sv_tested`).
    pub testing: AtomicUsize,
    /// Logged-in clients of this pool, and those among them waiting for a server.
    pub clients: AtomicUsize,
    pub waiting: AtomicUsize,
    /// Checkouts counted in `active` that wait for room under `max_db_connections`
    /// or `max_user_connections` (see [`HeldBack`]).
    held_back: AtomicUsize,
    /// Shut down: no more checkouts.
    closed: AtomicBool,
    /// Replaced or removed by a RELOAD (its database's server or pool mode changed, or
    /// the database is gone): its clients are closed before their next transaction
    /// rather than run it on the old server.
    retired: AtomicBool,
    /// See [`ServerConn::generation`] and [`Pool::reconnect`].
    generation: AtomicU64,
    /// Shared with the database's other pools on this node (`max_db_connections`).
    db_limit: Arc<ConnLimit>,
    /// Shared with the user's other pools (`max_user_connections`).
    user_limit: Arc<ConnLimit>,
    /// The user's SCRAM keys from the last client login, for a server that asks for
    /// SCRAM when pgopt holds only the verifier.
    scram_keys: Mutex<Option<ScramKeys>>,
    /// Counts statements whose plan a schema change invalidated ("cached plan must
    /// not change result type"); `invalidated` maps each to the epoch it was seen at.
    plan_epoch: AtomicU64,
    /// Counts schema changes clients made through pgopt (see [`Pool::schema_changed`]).
    schema_epoch: AtomicU64,
    invalidated: Mutex<HashMap<u64, u64>>,
    /// Invalidations at or before this epoch may have been dropped from
    /// `invalidated` (see [`Pool::invalidate_plan`]).
    invalidated_floor: AtomicU64,
    /// What servers said statements take and give, by server statement (see
    /// [`Description`]).
    descriptions: Mutex<HashMap<u64, Description>>,
    /// The shapes statements had before their plans were invalidated, each with the
    /// plan epochs it held over (see [`Pool::description_at`]).
    superseded: Mutex<HashMap<u64, Vec<Superseded>>>,
    /// A maintenance pass is running (they never overlap).
    pub maintaining: AtomicBool,
    /// Clients waiting for a connection, oldest first (see the module docs).
    lobby: Mutex<VecDeque<Waiter>>,
    /// Slots a RELOAD took away that are still lent: until they come back, released
    /// connections are not handed over (the shrink takes their slots).
    shrinking: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    down_until: Option<Instant>,
    /// When the last failure was counted: connects that had started by then failed
    /// with it, and do not double the backoff again.
    failed_at: Option<Instant>,
    last_error: String,
}

/// A server connection lent to one client; dropping it without [`Checkout::release`]
/// closes the connection (its state is unknown).
pub struct Checkout {
    pub conn: Box<ServerConn>,
    /// When the connection was in hand: the caller's start time when nothing was
    /// waited for (no slot queue, no connect, no health check), else read then.
    pub ready_at: Instant,
    slot: OwnedSemaphorePermit,
    active: Lent,
    /// `server_lifetime` when lent (no second look at the limits on release).
    lifetime: Duration,
    /// Closed when released (see [`Checkout::close_at_release`]).
    close: bool,
}

/// Counts one in a gauge while it lives (drop-safe across cancelled awaits).
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn up(g: &'a AtomicUsize) -> Gauge<'a> {
        g.fetch_add(1, SeqCst);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// A client's checkout waiting for room under `max_db_connections` or
/// `max_user_connections`: its slot is counted as lent (PAUSE waits for it), but it
/// has no server connection yet, so SHOW POOLS and /metrics count it as a waiting
/// client and no active server meanwhile, as SHOW CLIENTS and SHOW SERVERS do.
struct HeldBack<'a>(&'a Pool);

impl<'a> HeldBack<'a> {
    fn new(pool: &'a Pool) -> HeldBack<'a> {
        pool.held_back.fetch_add(1, SeqCst);
        HeldBack(pool)
    }
}

impl Drop for HeldBack<'_> {
    fn drop(&mut self) {
        self.0.held_back.fetch_sub(1, SeqCst);
    }
}

/// Counts a connection as lent (`Pool::active`) while it lives.
struct Lent(Arc<Pool>);

impl Lent {
    fn new(pool: &Arc<Pool>) -> Lent {
        pool.active.fetch_add(1, SeqCst);
        if let Some((_, node)) = &pool.node {
            node.outstanding.fetch_add(1, SeqCst);
        }
        Lent(pool.clone())
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
        if let Some((_, node)) = &self.0.node {
            node.outstanding.fetch_sub(1, Relaxed);
        }
    }
}

impl Pool {
    /// A pool counted in `db_limit` (its database's on its node) and `user_limit` (its
    /// user's).
    pub fn new(
        (database, user): (&str, &str),
        mode: PoolMode,
        target: ServerTarget,
        limits: PoolLimits,
        node: Option<(usize, Arc<Node>)>,
        (db_limit, user_limit): (Arc<ConnLimit>, Arc<ConnLimit>),
        stats: Arc<PoolStats>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            database: database.to_string(),
            user: user.to_string(),
            mode,
            fence_key: crate::fence::key_of(&target),
            target,
            node,
            slots: Arc::new(Semaphore::new(limits.size)),
            reserve: Arc::new(Semaphore::new(limits.reserve_size)),
            limits: Mutex::new(limits),
            idle: Mutex::new(Vec::new()),
            params: Mutex::new(None),
            defaults: Mutex::default(),
            defaults_hash: AtomicU64::new(0),
            serializable_default: AtomicBool::new(false),
            spellings: Mutex::default(),
            paused: AtomicBool::new(false),
            resumed: Notify::new(),
            breaker: Mutex::new(Breaker::default()),
            stats,
            servers: ServerRegistry::default(),
            active: AtomicUsize::new(0),
            connecting: AtomicUsize::new(0),
            testing: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            held_back: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            db_limit,
            user_limit,
            scram_keys: Mutex::new(None),
            plan_epoch: AtomicU64::new(0),
            schema_epoch: AtomicU64::new(0),
            invalidated: Mutex::new(HashMap::new()),
            invalidated_floor: AtomicU64::new(0),
            descriptions: Mutex::new(HashMap::new()),
            superseded: Mutex::new(HashMap::new()),
            maintaining: AtomicBool::new(false),
            lobby: Mutex::new(VecDeque::new()),
            shrinking: Arc::new(AtomicUsize::new(0)),
        });
        pool.db_limit.add(&pool);
        pool.user_limit.add(&pool);
        pool
    }

    /// Keeps the SCRAM keys of a client's successful login (the latest win: they
    /// follow a password change).
    pub fn learn_keys(&self, keys: ScramKeys) {
        *lock(&self.scram_keys) = Some(keys);
    }

    /// Invalidations seen so far: one atomic load, the hot path's whole cost.
    pub fn plan_epoch(&self) -> u64 {
        self.plan_epoch.load(SeqCst)
    }

    /// A server said server statement `id`'s result type changed: every connection's
    /// copy is prepared again before its next use. Returns the new epoch.
    pub fn invalidate_plan(&self, id: u64) -> u64 {
        // The shape clients were told until now, for a client that learned it (see
        // `description_at`).
        let told = self.description(id);
        let mut invalidated = lock(&self.invalidated);
        let epoch = self.plan_epoch.fetch_add(1, SeqCst) + 1;
        let from = invalidated
            .get(&id)
            .copied()
            .unwrap_or_else(|| self.invalidated_floor.load(SeqCst));
        // (One an invalidation meanwhile superseded, and another then replaced, is not
        // what clients were told over `from..epoch`.)
        let told = told.filter(|d| d.epoch >= from);
        self.supersede(id, told, from, epoch);
        if invalidated.len() >= MAX_INVALIDATED {
            // Very old invalidations have reached every busy connection by now.
            let oldest = epoch.saturating_sub(MAX_INVALIDATED as u64 / 2);
            invalidated.retain(|_, e| *e > oldest);
            self.invalidated_floor.fetch_max(oldest, SeqCst);
        }
        invalidated.insert(id, epoch);
        epoch
    }

    /// A client ran a statement that may change a statement's result shape (an ALTER,
    /// a DROP, a CREATE OR REPLACE): every connection prepares its statements afresh
    /// before their next use (see [`ServerConn::schema_changed`]), as PostgreSQL
    /// prepares a statement sent again. A connection's copy from before would give a
    /// fresh Parse inside a transaction "cached plan must not change result type".
    pub fn schema_changed(&self) {
        self.schema_epoch.fetch_add(1, SeqCst);
    }

    /// Keeps `told`, statement `id`'s description over plan epochs `from..until`.
    fn supersede(&self, id: u64, told: Option<Description>, from: u64, until: u64) {
        // (Unknown: what it was told over the epochs just ended stays unknown.)
        let Some(description) = told else {
            return;
        };
        let mut superseded = lock(&self.superseded);
        if superseded.len() >= MAX_DESCRIPTIONS {
            superseded.clear();
        }
        let kept = superseded.entry(id).or_default();
        if kept.len() >= MAX_SUPERSEDED {
            kept.remove(0);
        }
        kept.push(Superseded {
            from,
            until,
            description,
        });
    }

    /// The description statement `id` had at plan epoch `epoch`, which it has no
    /// more (a schema change invalidated its plan since): what a client that learned
    /// its shape then was told. `None` when that is not known.
    pub fn description_at(&self, id: u64, epoch: u64) -> Option<Description> {
        lock(&self.superseded)
            .get(&id)?
            .iter()
            .find(|s| s.from <= epoch && epoch < s.until)
            .map(|s| s.description.clone())
    }

    /// Whether statement `id` was invalidated after `epoch`.
    pub fn invalidated_since(&self, id: u64, epoch: u64) -> bool {
        lock(&self.invalidated).get(&id).is_some_and(|e| *e > epoch)
    }

    /// Statement `id`'s description, if one was seen since its plan last changed.
    pub fn description(&self, id: u64) -> Option<Description> {
        let description = lock(&self.descriptions).get(&id).cloned()?;
        self.unchanged_since(id, description.epoch)
            .then_some(description)
    }

    /// Statement `id`'s description, if one was seen since its plan last changed and
    /// since the last schema change through pgopt (an older one may be of the old
    /// schema, with no plan invalidated yet to show it).
    pub fn current_description(&self, id: u64) -> Option<Description> {
        let schema = self.schema_epoch.load(SeqCst);
        self.description(id).filter(|d| d.schema == schema)
    }

    /// Whether statement `id`'s description is known since the last schema change
    /// through pgopt (see [`Pool::current_description`]), without copying it.
    pub fn knows_current_description(&self, id: u64) -> bool {
        self.knows(id, Some(self.schema_epoch.load(SeqCst)))
    }

    /// Whether statement `id`'s description is known (and still holds).
    pub fn knows_description(&self, id: u64) -> bool {
        self.knows(id, None)
    }

    /// Whether statement `id`'s description is known and holds (and was said at
    /// schema epoch `schema`, when given), without copying it.
    fn knows(&self, id: u64, schema: Option<u64>) -> bool {
        let epoch = lock(&self.descriptions)
            .get(&id)
            .filter(|d| schema.is_none_or(|s| d.schema == s))
            .map(|d| d.epoch);
        epoch.is_some_and(|epoch| self.unchanged_since(id, epoch))
    }

    /// Whether statement `id`'s plan surely was not invalidated after `epoch`
    /// (another statement's invalidation leaves its description standing).
    fn unchanged_since(&self, id: u64, epoch: u64) -> bool {
        let invalidated = lock(&self.invalidated);
        epoch >= self.invalidated_floor.load(SeqCst)
            && invalidated.get(&id).is_none_or(|e| *e <= epoch)
    }

    /// A server described statement `id`.
    pub fn remember_description(&self, id: u64, params: bytes::Bytes, rows: Option<bytes::Bytes>) {
        let epoch = self.plan_epoch();
        let schema = self.schema_epoch.load(SeqCst);
        let mut descriptions = lock(&self.descriptions);
        if descriptions.len() >= MAX_DESCRIPTIONS {
            descriptions.clear();
        }
        descriptions.insert(
            id,
            Description {
                epoch,
                schema,
                params,
                returns_rows: rows.is_some(),
                rows: rows.filter(|r| r.len() <= MAX_KEPT_ROWS),
            },
        );
    }

    /// A client moved here from pool `from` (see `Relay::follow_reload`): what `from`'s
    /// server said of statements `ids`, unless this pool has its own, so that the
    /// result shape the client was told is checked here too.
    pub fn adopt_descriptions(&self, from: &Pool, ids: impl Iterator<Item = u64>) {
        for id in ids {
            if self.knows_description(id) {
                continue;
            }
            if let Some(description) = from.current_description(id) {
                let epoch = self.plan_epoch();
                let mut descriptions = lock(&self.descriptions);
                if descriptions.len() < MAX_DESCRIPTIONS {
                    descriptions.insert(
                        id,
                        Description {
                            epoch,
                            schema: self.schema_epoch.load(SeqCst),
                            ..description
                        },
                    );
                }
            }
        }
    }

    /// Brings a connection up to the current plan epoch: its statements invalidated
    /// since it last looked become stale.
    pub fn refresh_plans(&self, conn: &mut ServerConn) {
        let schema = self.schema_epoch.load(SeqCst);
        if conn.schema_epoch != schema {
            conn.schema_epoch = schema;
            conn.schema_changed();
        }
        let epoch = self.plan_epoch();
        if conn.plan_epoch == epoch {
            return;
        }
        for (id, e) in lock(&self.invalidated).iter() {
            if *e > conn.plan_epoch && conn.prepared.remove(id) {
                conn.mark_stale(*id);
            }
        }
        conn.plan_epoch = epoch;
    }

    /// A connection outside the pool (no slot, no breaker), for pgopt's own work on
    /// the server such as capturing plans; closed when dropped. `room`: how it counts
    /// under `max_db_connections` and `max_user_connections`.
    pub async fn connect_out_of_band(&self, room: Room) -> Result<ServerConn, ProxyError> {
        let limits = self.limits();
        let permits = match room {
            Room::Uncounted => None,
            Room::Spare => self.permits(None, false).await.ok().flatten(),
            Room::Wait => {
                let deadline = Instant::now() + limits.round_trip();
                let mut permits = None;
                // `None` while this pool has an idle connection: closed for it.
                for _ in 0..3 {
                    match self.permits(Some(deadline), false).await {
                        // The one idle longest (of this thread's, else of any) goes.
                        Ok(None) => drop(self.take_idle(true)),
                        Ok(got) => permits = got,
                        Err(_) => break,
                    }
                    if permits.is_some() {
                        break;
                    }
                }
                permits
            }
        };
        if permits.is_none() && room != Room::Uncounted {
            return Err(ProxyError::Protocol(
                "no room for pgopt's own connection under max_db_connections or \
                 max_user_connections"
                    .into(),
            ));
        }
        let keys = lock(&self.scram_keys).clone();
        // (pgopt's own: bounded even when a client's connect is not.)
        let mut conn = ServerConn::connect(
            &self.target,
            keys,
            limits.round_trip(),
            limits.max_message_len,
            limits.keepalive,
        )
        .await?;
        conn.permits = permits;
        Ok(conn)
    }

    pub fn limits(&self) -> PoolLimits {
        *lock(&self.limits)
    }

    /// Applies new limits: slots are added at once, removed as they come free.
    pub fn set_limits(self: &Arc<Self>, new: PoolLimits) {
        let old = std::mem::replace(&mut *lock(&self.limits), new);
        resize(&self.slots, old.size, new.size, &self.shrinking);
        resize(
            &self.reserve,
            old.reserve_size,
            new.reserve_size,
            &Arc::default(),
        );
    }

    /// Waits for a slot (and for RESUME when paused), then reuses an idle connection
    /// or opens one. The wait is recorded in the pool's statistics, timeouts included.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, CheckoutError> {
        self.checkout_from(Instant::now()).await
    }

    /// [`Pool::checkout`] for a request that arrived at `started` (the hot path reads
    /// the clock once per request, not once per step).
    pub async fn checkout_from(
        self: &Arc<Self>,
        started: Instant,
    ) -> Result<Checkout, CheckoutError> {
        let limits = self.limits();
        let deadline = started + limits.wait_timeout;
        // The common case, a slot free at once, skips the waiting gauge and the clock.
        // PAUSE is looked at again once counted as lent, as in the loop below; a pair
        // that meets it is dropped (slot given back) before the loop queues.
        let at_once = if self.paused.load(SeqCst) {
            None
        } else {
            self.slots.clone().try_acquire_owned().ok()
        }
        .map(|slot| (slot, Lent::new(self)))
        .filter(|_| !self.paused.load(SeqCst));
        let slot_at_once = at_once.is_some();
        let (slot, active, handed) = match at_once {
            Some((slot, active)) => (slot, active, None),
            None => {
                let _waiting = Gauge::up(&self.waiting);
                loop {
                    let granted = match self.wait_for_slot(&limits, deadline).await {
                        Ok(granted) => granted,
                        Err(e) => {
                            self.stats.record_wait(started.elapsed());
                            return Err(e);
                        }
                    };
                    let (slot, active, handed) = match granted {
                        Granted::Slot(slot) => (slot, Lent::new(self), None),
                        Granted::Handed((conn, slot, active)) => (slot, active, Some(conn)),
                    };
                    // PAUSE may have come while this client queued for the slot: counted as
                    // lent first, so PAUSE either sees it or it sees PAUSE.
                    if !self.paused.load(SeqCst) {
                        break (slot, active, handed);
                    }
                    if let Some(conn) = handed {
                        // Not handed over again while paused: idle.
                        Checkout {
                            conn,
                            ready_at: started,
                            slot,
                            active,
                            lifetime: limits.lifetime,
                            close: false,
                        }
                        .release();
                    }
                }
            }
        };
        // After a wait for a slot, idle times are judged as of now.
        let now = if slot_at_once {
            started
        } else {
            Instant::now()
        };
        // A connection handed over was in use a moment ago: no health check, only a
        // look for a server that closed it since, and a move to this thread's event
        // loop when it comes from another. A dead one: its slot takes or opens another.
        let handed = handed
            .filter(|conn| conn.looks_alive() && self.is_current(conn))
            .and_then(|conn| conn.rehome().ok());
        let (conn, waited) = match handed {
            Some(conn) => (Ok(conn), false),
            None => self.connection(&limits, now, deadline).await,
        };
        let ready_at = if waited { Instant::now() } else { now };
        self.stats.record_wait(if ready_at == started {
            Duration::ZERO
        } else {
            ready_at.duration_since(started)
        });
        Ok(Checkout {
            conn: conn?,
            ready_at,
            slot,
            active,
            lifetime: limits.lifetime,
            close: false,
        })
    }

    /// Waits while the pool is PAUSEd, up to `deadline` (then `WaitTimeout`).
    async fn wait_unpaused(
        &self,
        limits: &PoolLimits,
        deadline: Instant,
    ) -> Result<(), CheckoutError> {
        while self.paused.load(SeqCst) {
            let resumed = self.resumed.notified();
            if self.closed.load(SeqCst) {
                return Err(self.closed_error());
            }
            if !self.paused.load(SeqCst) {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), resumed)
                .await
                .is_err()
            {
                return Err(CheckoutError::WaitTimeout(limits.wait_timeout));
            }
        }
        Ok(())
    }

    async fn wait_for_slot(
        self: &Arc<Self>,
        limits: &PoolLimits,
        deadline: Instant,
    ) -> Result<Granted, CheckoutError> {
        self.wait_unpaused(limits, deadline).await?;
        let timeout = || CheckoutError::WaitTimeout(limits.wait_timeout);
        let permit = |r: Result<OwnedSemaphorePermit, tokio::sync::AcquireError>| {
            r.map(Granted::Slot).map_err(|_| self.closed_error())
        };
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(Granted::Slot(slot));
        }
        // Busy: wait in the lobby for a connection handed over, and in line for a slot
        // freed without one (a connection closed, the pool grown); after
        // `reserve_timeout` a reserve slot will do too.
        let mut lobby = Lobbied::enter(self);
        let queued = self.slots.clone().acquire_owned();
        tokio::pin!(queued);
        if limits.reserve_size > 0 {
            let reserve_at = (Instant::now() + limits.reserve_timeout).min(deadline);
            let first = async {
                tokio::select! {
                    biased;
                    handed = lobby.handed() => Ok(Granted::Handed(handed)),
                    s = &mut queued => permit(s),
                }
            };
            if let Ok(r) = tokio::time::timeout_at(reserve_at.into(), first).await {
                return r;
            }
            let either = async {
                tokio::select! {
                    biased;
                    handed = lobby.handed() => Ok(Granted::Handed(handed)),
                    s = &mut queued => permit(s),
                    s = self.reserve.clone().acquire_owned() => permit(s),
                }
            };
            return match tokio::time::timeout_at(deadline.into(), either).await {
                Ok(r) => r,
                Err(_) => Err(timeout()),
            };
        }
        let first = async {
            tokio::select! {
                biased;
                handed = lobby.handed() => Ok(Granted::Handed(handed)),
                s = &mut queued => permit(s),
            }
        };
        match tokio::time::timeout_at(deadline.into(), first).await {
            Ok(r) => r,
            Err(_) => Err(timeout()),
        }
    }

    /// Hands a connection coming back to a waiting client, preferably one on the
    /// connection's own thread (see the module docs); gives it back when no client
    /// waits (or the pool is paused, closing or shrinking, or the slot is a reserve
    /// one, which goes back).
    fn hand_over(&self, mut handed: Handed) -> Option<Handed> {
        if !Arc::ptr_eq(handed.1.semaphore(), &self.slots)
            || self.paused.load(SeqCst)
            || self.closed.load(SeqCst)
            || self.shrinking.load(SeqCst) > 0
        {
            return Some(handed);
        }
        loop {
            let waiter = {
                let mut lobby = lock(&self.lobby);
                // `close` empties the lobby after it marks the pool closed.
                if self.closed.load(SeqCst) {
                    return Some(handed);
                }
                // Clients that stopped waiting (timed out, gone) leave their place.
                while lobby.front().is_some_and(|w| w.to.is_closed()) {
                    lobby.pop_front();
                }
                let Some(front) = lobby.front().map(|w| w.since) else {
                    return Some(handed);
                };
                let home = handed.0.home;
                let pick = lobby
                    .iter()
                    .take(HOME_LOOKAHEAD)
                    .position(|w| w.home == home && !w.to.is_closed())
                    .filter(|&i| lobby[i].since <= front + HOME_PREFERENCE)
                    .unwrap_or(0);
                lobby.remove(pick)
            };
            let Some(waiter) = waiter else {
                return Some(handed);
            };
            // Sent outside the lock: waking the client may cross threads.
            match waiter.to.send(handed) {
                Ok(()) => return None,
                Err(back) => handed = back, // it just stopped waiting: the next one
            }
        }
    }

    /// An idle connection still fit for use as of `now` (not expired, nothing pending
    /// on it, a health check passed when idle long enough to need one), or a new one
    /// (waiting for room in its limits up to `deadline`, the checkout's);
    /// `true` when getting it took a round trip (a check or a connect).
    async fn connection(
        &self,
        limits: &PoolLimits,
        now: Instant,
        deadline: Instant,
    ) -> (Result<Box<ServerConn>, CheckoutError>, bool) {
        let mut waited = false;
        while let Some(conn) = self.take_idle(limits.round_robin) {
            let since_used = now.saturating_duration_since(conn.last_used);
            let expired = since_used > limits.idle_timeout
                || now.saturating_duration_since(conn.created) > limits.lifetime;
            if expired || !conn.looks_alive() || !self.is_current(&conn) {
                continue;
            }
            let Ok(mut conn) = conn.rehome() else {
                continue;
            };
            if since_used > limits.check_after {
                waited = true;
                let _testing = Gauge::up(&self.testing);
                if !conn
                    .check(limits.round_trip(), limits.max_message_len)
                    .await
                {
                    continue;
                }
            }
            return (Ok(conn), waited);
        }
        match self.connect(limits, Some(deadline)).await {
            Ok(Some(conn)) => (Ok(conn), true),
            // One of this pool's own connections went idle while it waited for room.
            Ok(None) => Box::pin(self.connection(limits, Instant::now(), deadline)).await,
            Err(e) => (Err(e), true),
        }
    }

    /// A connection to this pool's server outside the pool, with the start-up
    /// parameters `extra` (a replication client's): not counted in its size or in
    /// `max_db_connections`, never lent to another client (see `replication.rs`). It
    /// waits while the pool is PAUSEd (up to `query_wait_timeout`), as a checkout
    /// does; its outcome does not move the database's turn in its host list.
    pub async fn connect_dedicated(
        &self,
        extra: &[(&str, &str)],
    ) -> Result<ServerConn, CheckoutError> {
        let limits = self.limits();
        self.wait_unpaused(&limits, Instant::now() + limits.wait_timeout)
            .await?;
        let keys = lock(&self.scram_keys).clone();
        let result = ServerConn::connect_with(
            &self.target,
            keys,
            limits.connect_timeout,
            limits.max_message_len,
            limits.keepalive,
            extra,
            false,
        )
        .await;
        let counter = match &result {
            Ok(_) => &self.stats.server_connects,
            Err(_) => &self.stats.server_connect_errors,
        };
        counter.fetch_add(1, Relaxed);
        result.map_err(CheckoutError::Connect)
    }

    /// Opens a connection. `None`: the database or the user is at its limit and
    /// either one of this pool's connections is idle now (take it), or (no `wait`,
    /// the deadline to wait for room until) there is no room at once.
    async fn connect(
        &self,
        limits: &PoolLimits,
        wait: Option<Instant>,
    ) -> Result<Option<Box<ServerConn>>, CheckoutError> {
        // When this attempt found the breaker closed (a wait for room after it belongs
        // to the same round of attempts).
        let started = Instant::now();
        {
            let breaker = lock(&self.breaker);
            if let Some(until) = breaker.down_until {
                let now = Instant::now();
                if until > now {
                    return Err(CheckoutError::Down {
                        error: breaker.last_error.clone(),
                        retry_in: until - now,
                    });
                }
            }
        }
        // (Waiting for room only in a client's checkout.)
        let Some(permits) = self.permits(wait, wait.is_some()).await? else {
            return Ok(None);
        };
        let connecting = Gauge::up(&self.connecting);
        // Read before the connect: a RECONNECT while it is under way makes it old.
        let generation = self.generation.load(SeqCst);
        let keys = lock(&self.scram_keys).clone();
        let mut result = ServerConn::connect(
            &self.target,
            keys,
            limits.connect_timeout,
            limits.max_message_len,
            limits.keepalive,
        )
        .await;
        if let (Ok(conn), true) = (&mut result, limits.read_defaults) {
            let read =
                conn.read_defaults(&self.target, limits.round_trip(), limits.max_message_len);
            if let Err(e) = read.await {
                result = Err(e);
            }
        }
        drop(connecting);
        let mut breaker = lock(&self.breaker);
        match result {
            Ok(conn) => {
                if breaker.failures > 0 {
                    tracing::info!(server = %self.target.describe(), "server is reachable again");
                }
                *breaker = Breaker::default();
                drop(breaker);
                self.stats.server_connects.fetch_add(1, Relaxed);
                // Its generation before it is listed: never seen as marked for closing.
                conn.info.generation.store(generation, Relaxed);
                self.servers.add(&conn.info);
                if limits.read_defaults {
                    self.serializable_default
                        .store(conn.serializable_default, Relaxed);
                }
                if !self.defaults_seen(&conn.defaults) {
                    lock(&self.params).get_or_insert_with(|| Arc::new(conn.params.clone()));
                }
                // Boxed: a checkout moves it several times per transaction.
                let mut conn = Box::new(conn);
                conn.generation = generation;
                conn.permits = Some(permits);
                Ok(Some(conn))
            }
            Err(e) => {
                self.stats.server_connect_errors.fetch_add(1, Relaxed);
                // Connects under way together (clients arriving at once when the server
                // went) are one failure: the backoff grows once per round of attempts,
                // not once per client, so a server back soon is found back soon.
                let again = breaker.failed_at.is_some_and(|at| started < at);
                if !again {
                    breaker.failures += 1;
                }
                let backoff = BACKOFF_START
                    .saturating_mul(1 << (breaker.failures - 1).min(16))
                    .min(BACKOFF_MAX);
                let now = Instant::now();
                if !again {
                    breaker.failed_at = Some(now);
                    breaker.down_until = Some(now + backoff);
                }
                breaker.last_error = e.to_string();
                tracing::warn!(
                    server = %self.target.describe(),
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot connect to the server"
                );
                Err(CheckoutError::Connect(e))
            }
        }
    }

    /// The most recently used idle connection of this thread's runtime, else the most
    /// recently used of any (see `workers.rs`); with `round_robin`, the least recently
    /// used instead (the list is in the order they came back).
    fn take_idle(&self, round_robin: bool) -> Option<Box<ServerConn>> {
        let mut idle = lock(&self.idle);
        let here = crate::workers::home();
        let mine = if round_robin {
            idle.iter().position(|c| c.home == here)
        } else {
            idle.iter().rposition(|c| c.home == here)
        };
        match (mine, round_robin) {
            (Some(i), _) => Some(idle.remove(i)),
            (None, false) => idle.pop(),
            (None, true) => (!idle.is_empty()).then(|| idle.remove(0)),
        }
    }

    /// Server parameters seen at start-up, once any connection was made.
    pub fn params(&self) -> Option<ServerParams> {
        lock(&self.params).clone()
    }

    /// Whether its newest connection's sessions default to SERIALIZABLE (known only
    /// where the defaults are read: with the cache, or for a database with replicas).
    pub fn serializable_by_default(&self) -> bool {
        self.serializable_default.load(Relaxed)
    }

    /// A connection's defaults of the settings the cache keys on (see
    /// `session_state::Defaults`): a new login's, or ones a reload of the server's
    /// configuration changed. Other than the pool's, they become the pool's, so
    /// entries made under the old ones are not served (an ALTER DATABASE … SET, or
    /// ALTER SYSTEM and a reload, made directly on the server), and clients logging in
    /// later are told them. Whether they did.
    pub fn defaults_seen(&self, seen: &crate::session_state::Defaults) -> bool {
        let mut defaults = lock(&self.defaults);
        if *defaults == *seen {
            return false;
        }
        let first = defaults.hash() == 0;
        defaults.clone_from(seen);
        self.defaults_hash.store(seen.hash(), SeqCst);
        drop(defaults);
        let mut params = lock(&self.params);
        if let Some(old) = params.as_ref() {
            let mut new = Vec::clone(old);
            for (name, value) in &mut new {
                if let Some((_, v)) = seen.values().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    value.clear();
                    value.push_str(v);
                }
            }
            *params = Some(Arc::new(new));
        }
        !first
    }

    /// The server reported a client's start-up value `written` of `name` as `spelt`.
    pub fn note_spelling(&self, name: &str, written: &str, spelt: &str) {
        /// Distinct values remembered, at most (a value only a client sends is one).
        const MAX: usize = 256;
        let mut spellings = lock(&self.spellings);
        if spellings.len() < MAX {
            let key = (name.to_ascii_lowercase(), written.to_string());
            spellings.insert(key, spelt.to_string());
        }
    }

    /// How the server spelt start-up value `written` of `name` (lower case) before.
    pub fn spelling(&self, name: &str, written: &str) -> Option<String> {
        lock(&self.spellings)
            .get(&(name.to_string(), written.to_string()))
            .cloned()
    }

    /// The hash of [`Pool::defaults`] (every cache lookup reads it).
    pub fn defaults_hash(&self) -> u64 {
        self.defaults_hash.load(Relaxed)
    }

    pub fn defaults(&self) -> crate::session_state::Defaults {
        lock(&self.defaults).clone()
    }

    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Idle connections ready for use, and those idle longer than `check_after` that a
    /// health check must pass first (PgBouncer's `sv_idle` and `sv_used`).
    pub fn idle_counts(&self, check_after: Duration) -> (usize, usize) {
        let now = Instant::now();
        let idle = lock(&self.idle);
        let used = idle
            .iter()
            .filter(|c| now.saturating_duration_since(c.last_used) > check_after)
            .count();
        (idle.len() - used, used)
    }

    /// Whether the circuit breaker is open (the last connect failed, backoff running).
    pub fn is_down(&self) -> bool {
        lock(&self.breaker)
            .down_until
            .is_some_and(|t| t > Instant::now())
    }

    /// A connection made outside the pool (a health check) just worked: the circuit
    /// breaker closes, so clients need not wait out its backoff.
    pub fn reachable(&self) {
        let mut breaker = lock(&self.breaker);
        if breaker.failures > 0 {
            tracing::info!(server = %self.target.describe(), "server is reachable again");
            *breaker = Breaker::default();
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Relaxed)
    }

    /// New checkouts wait until [`Pool::resume`]; lent connections are not touched.
    pub fn pause(&self) {
        self.paused.store(true, SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, SeqCst);
        self.resumed.notify_waiters();
    }

    /// Why a checkout of a closed pool fails: shutdown or a RELOAD.
    fn closed_error(&self) -> CheckoutError {
        if self.is_retired() {
            CheckoutError::Retired
        } else {
            CheckoutError::ShuttingDown
        }
    }

    /// Shutdown: every waiting and future checkout fails with `ShuttingDown`.
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
        self.slots.close();
        self.reserve.close();
        self.resumed.notify_waiters();
        // Waiters see their sender gone and go on waiting for the closed slot queue.
        lock(&self.lobby).clear();
    }

    /// Clients waiting for a server connection: for a slot, or with one, for room
    /// under a connection limit (SHOW POOLS' `cl_waiting`).
    /// How long the longest-waiting client in line for one of this pool's connections
    /// has waited (none waiting: zero).
    pub fn longest_wait(&self) -> Duration {
        let lobby = lock(&self.lobby);
        lobby
            .iter()
            .find(|w| !w.to.is_closed())
            .map_or(Duration::ZERO, |w| w.since.elapsed())
    }

    pub fn clients_waiting(&self) -> usize {
        self.waiting.load(Relaxed) + self.held_back.load(Relaxed)
    }

    /// Server connections lent to clients (SHOW POOLS' `sv_active`).
    pub fn servers_lent(&self) -> usize {
        let held_back = self.held_back.load(Relaxed);
        self.active.load(Relaxed).saturating_sub(held_back)
    }

    /// Whether any server connection is lent or being opened (PAUSE waits for none).
    pub fn busy(&self) -> bool {
        self.active.load(SeqCst) + self.connecting.load(SeqCst) > 0
    }

    /// Room in both of its limits, the database's and the user's (see
    /// [`Pool::permit`]), never one held while waiting for the other (other users of
    /// the database, or the user's other databases, would wait for room nobody uses).
    /// `client`: for a client's checkout, counted as lent (see [`HeldBack`]).
    async fn permits(
        &self,
        wait: Option<Instant>,
        client: bool,
    ) -> Result<Option<[ConnPermit; 2]>, CheckoutError> {
        let (db, user) = (&self.db_limit, &self.user_limit);
        loop {
            let Some(d) = self.permit(db, wait, client).await? else {
                return Ok(None);
            };
            if let Some(u) = self.permit(user, None, client).await? {
                return Ok(Some([d, u]));
            }
            drop(d);
            if wait.is_none() {
                return Ok(None);
            }
            let Some(u) = self.permit(user, wait, client).await? else {
                return Ok(None);
            };
            if let Some(d) = self.permit(db, None, client).await? {
                return Ok(Some([d, u]));
            }
        }
    }

    /// Room for one more server connection in `limit` (of its maximum as it is now,
    /// so a RELOAD applies to waiters; 0: no limit): at once, or by closing another
    /// pool's idle connection, or once one closes (up to the checkout's deadline,
    /// `wait`).
    /// `None`: one of this pool's own connections is idle (take it instead), or
    /// (no `wait`) no room at once.
    async fn permit(
        &self,
        limit: &Arc<ConnLimit>,
        wait: Option<Instant>,
        client: bool,
    ) -> Result<Option<ConnPermit>, CheckoutError> {
        // Announced before the checks it waits after: a release in between wakes it.
        let mut waiting = None;
        let mut _held_back = None;
        loop {
            let freed = limit.freed.notified();
            tokio::pin!(freed);
            // Registered before the count is read: a close in between is not missed.
            freed.as_mut().enable();
            let max = limit.max.load(SeqCst);
            let open = limit.open.load(SeqCst);
            if max == 0 || open < max {
                if limit
                    .open
                    .compare_exchange(open, open + 1, SeqCst, SeqCst)
                    .is_ok()
                {
                    return Ok(Some(ConnPermit(limit.clone())));
                }
                continue;
            }
            let Some(deadline) = wait else {
                return Ok(None);
            };
            if waiting.is_none() {
                waiting = Some(Gauge::up(&limit.waiting));
                _held_back = client.then(|| HeldBack::new(self));
                continue;
            }
            if self.idle_count() > 0 {
                return Ok(None);
            }
            if limit.close_idle_of_another(self) {
                continue;
            }
            if tokio::time::timeout_at(deadline.into(), freed)
                .await
                .is_err()
            {
                return Err(CheckoutError::WaitTimeout(self.limits().wait_timeout));
            }
        }
    }

    /// A connection was put in the idle list: a pool waiting for room in one of its
    /// limits may take it (its own) or close it (another's).
    fn went_idle(&self) {
        self.db_limit.went_idle();
        self.user_limit.went_idle();
    }

    /// Whether `conn` was opened since the last [`Pool::reconnect`].
    pub fn is_current(&self, conn: &ServerConn) -> bool {
        conn.generation == self.generation.load(SeqCst)
    }

    /// RECONNECT (and KILL): every server connection is closed, the idle ones now and
    /// the lent ones when they come back (or, handed over, before they are used), so
    /// the pool's next connections are new ones (after a failover, a changed
    /// address, a server setting that applies to new sessions only).
    pub fn reconnect(&self) {
        let closed = {
            let mut idle = lock(&self.idle);
            self.generation.fetch_add(1, SeqCst);
            std::mem::take(&mut *idle)
        };
        // The new connections' defaults may be others (what an ALTER DATABASE … SET
        // changed): until one logs in, none is known, and the cache serves nothing.
        *lock(&self.defaults) = Default::default();
        self.defaults_hash.store(0, SeqCst);
        drop(closed); // (the sockets close outside the lock)
    }

    /// Whether the connection `info` describes is of an older generation than the
    /// pool's: it is closed when it comes back (SHOW SERVERS' `close_needed`).
    pub fn close_needed(&self, info: &crate::stats::ServerInfo) -> bool {
        info.generation.load(Relaxed) < self.generation.load(SeqCst)
    }

    /// Whether a listed connection will close instead of being used again (`replaced`:
    /// its pool is one a RELOAD replaced). A replication client's never is: it is not
    /// pooled, and ends with its client.
    pub fn to_close(&self, info: &crate::stats::ServerInfo, replaced: bool) -> bool {
        info.replication.get() == crate::replication::Replication::None
            && (replaced || self.close_needed(info))
    }

    /// A RELOAD replaced or removed it (see `retired`): its connections close, the
    /// idle ones now and the others when released (as at RECONNECT), and every waiting
    /// and later checkout fails with `Retired` (its clients move to the new pool, or
    /// are closed).
    pub fn retire(&self) {
        self.retired.store(true, SeqCst);
        self.reconnect();
        self.close();
    }

    /// Whether a RELOAD replaced or removed it.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    /// Closes every idle connection (PAUSE, SHUTDOWN, a server that went away).
    pub fn close_idle(&self) -> usize {
        let closed = std::mem::take(&mut *lock(&self.idle));
        closed.len()
    }

    /// Housekeeping, run every second or so: closes idle connections past their idle
    /// timeout or lifetime (keeping `min_size` open), then opens connections up to
    /// `min_size` when the server is up.
    pub async fn maintain(self: &Arc<Self>) {
        let limits = self.limits();
        let now = Instant::now();
        {
            let mut idle = lock(&self.idle);
            // Dead and worn-out connections always go.
            idle.retain(|c| {
                now.duration_since(c.created) <= limits.lifetime
                    && c.looks_alive()
                    && self.is_current(c)
            });
            // Long-idle ones go down to `min_size`, oldest-used first (the list is in
            // the order connections came back).
            let open = idle.len() + self.active.load(Relaxed);
            let mut spare = open.saturating_sub(limits.min_size);
            idle.retain(|c| {
                if spare > 0 && now.duration_since(c.last_used) > limits.idle_timeout {
                    spare -= 1;
                    false
                } else {
                    true
                }
            });
            // More open than the pool's size and its reserve (a RELOAD or SET shrank
            // it): idle ones go at once, oldest-used first, as PgBouncer's "too many
            // servers in the pool" (no more than that can be lent anyway).
            let open = idle.len() + self.active.load(Relaxed);
            let most = limits.size.max(limits.min_size) + limits.reserve_size;
            let excess = open.saturating_sub(most);
            let excess = excess.min(idle.len());
            idle.drain(..excess);
        }
        // After a failure, probe the server once the backoff ends, so the pool finds
        // it back without a client paying for the attempt.
        let probe = lock(&self.breaker).failures > 0;
        let mut wanted = limits.min_size.max(usize::from(probe));
        while !self.is_paused()
            && !self.is_down()
            && self.idle_count() + self.active.load(Relaxed) + self.connecting.load(Relaxed)
                < wanted
        {
            wanted = limits.min_size;
            let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            // Warm-up takes only free room (no other pool's connection is closed for
            // it, nor does it wait).
            match self.connect(&limits, None).await {
                Ok(Some(mut conn)) => {
                    conn.last_used = Instant::now();
                    conn.info.set_link(0, 0);
                    lock(&self.idle).push(conn);
                    self.went_idle();
                }
                _ => break,
            }
        }
    }
}

/// Grows a semaphore at once, or shrinks it by taking permits as they are released
/// (`shrinking` counts them until then).
fn resize(sem: &Arc<Semaphore>, old: usize, new: usize, shrinking: &Arc<AtomicUsize>) {
    if new > old {
        sem.add_permits(new - old);
    } else if new < old {
        let excess = old - new;
        let sem = sem.clone();
        let shrinking = shrinking.clone();
        shrinking.fetch_add(excess, SeqCst);
        crate::workers::spawn_background(async move {
            if let Ok(permits) = sem.acquire_many_owned(excess as u32).await {
                permits.forget();
            }
            shrinking.fetch_sub(excess, SeqCst);
        });
    }
}

/// What a waiting client got: a slot (a connection to take or open), or a connection
/// handed over with its slot.
enum Granted {
    Slot(OwnedSemaphorePermit),
    Handed(Handed),
}

/// A client's place in its pool's lobby while it waits. Leaving (a timeout, a slot
/// from the queue, the client gone) closes it; a connection handed over just before
/// goes back to the pool.
struct Lobbied {
    pool: Arc<Pool>,
    from: Option<oneshot::Receiver<Handed>>,
}

impl Lobbied {
    fn enter(pool: &Arc<Pool>) -> Lobbied {
        let (to, from) = oneshot::channel();
        let mut lobby = lock(&pool.lobby);
        // Places left behind (timeouts, clients gone) go once they outnumber the
        // waiting clients, whether or not connections come back meanwhile.
        if lobby.len() > 2 * pool.waiting.load(Relaxed) + 16 {
            lobby.retain(|w| !w.to.is_closed());
        }
        lobby.push_back(Waiter {
            home: crate::workers::home(),
            since: Instant::now(),
            to,
        });
        drop(lobby);
        Lobbied {
            pool: pool.clone(),
            from: Some(from),
        }
    }

    /// A connection handed over; never, if the pool dropped the place (closing).
    async fn handed(&mut self) -> Handed {
        let Some(from) = self.from.as_mut() else {
            return std::future::pending().await;
        };
        let result = from.await;
        self.from = None;
        match result {
            Ok(handed) => handed,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Lobbied {
    fn drop(&mut self) {
        let Some(mut from) = self.from.take() else {
            return;
        };
        from.close();
        if let Ok((conn, slot, active)) = from.try_recv() {
            let lifetime = self.pool.limits().lifetime;
            Checkout {
                conn,
                ready_at: Instant::now(),
                slot,
                active,
                lifetime,
                close: false,
            }
            .release();
        }
    }
}

impl Checkout {
    /// Returns a connection that is idle (no transaction, nothing in flight) to the pool.
    pub fn release(self) {
        self.release_at(Instant::now());
    }

    /// The connection holds state pgopt may not know (see `Relay::resync_settings`):
    /// it is closed when released, never lent to another client.
    pub fn close_at_release(&mut self) {
        self.close = true;
    }

    /// [`Checkout::release`] with the time now, as the caller last read it.
    pub fn release_at(self, now: Instant) {
        // A cancel of its last client's query is on its way. PostgreSQL ignores one
        // that finds the backend idle, but one that arrives during the next client's
        // query cancels that: lent again once it has arrived (PgBouncer's
        // "being canceled").
        if self.conn.cancel.in_flight() {
            let route = self.conn.cancel.clone();
            tokio::spawn(async move {
                route.arrived().await;
                self.release_at(Instant::now());
            });
            return;
        }
        let Checkout {
            mut conn,
            slot,
            active,
            lifetime,
            close,
            ..
        } = self;
        let pool = active.0.clone();
        let (slot, active) = if !close
            && now.saturating_duration_since(conn.created) <= lifetime
            && pool.is_current(&conn)
        {
            conn.last_used = now;
            conn.info.set_link(0, 0);
            conn.info
                .prepared
                .store(conn.prepared.len() as u64, Relaxed);
            let Some((conn, slot, active)) = pool.hand_over((conn, slot, active)) else {
                return;
            };
            // Looked at again under the lock RECONNECT empties the list with.
            let mut idle = lock(&pool.idle);
            if pool.is_current(&conn) {
                idle.push(conn);
            }
            drop(idle);
            pool.went_idle();
            (slot, active)
        } else {
            (slot, active)
        };
        // Counted idle before no longer lent; the slot goes last, so a waiter finds
        // the connection idle.
        drop(active);
        drop(slot);
    }
}

/// Pools by (client database, client user, node: 0 for the primary, `i + 1` for
/// replica `i`).
#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<(String, String, usize), Arc<Pool>>>,
    /// The statistics of pools a RELOAD took out of the map, for the pool made next
    /// for the same key.
    carried: Mutex<HashMap<(String, String, usize), Arc<PoolStats>>>,
}

impl Pool {
    /// 0 for the primary, `i + 1` for replica `i`.
    pub fn node_index(&self) -> usize {
        self.node.as_ref().map_or(0, |(i, _)| i + 1)
    }

    /// "primary", or the replica's address.
    pub fn node_name(&self) -> String {
        match &self.node {
            Some((_, node)) => format!("replica {}", node.address()),
            None => "primary".to_string(),
        }
    }
}

impl Pools {
    /// The pool of (database, user, node) if `fits`, else a new one from `make` in its
    /// place: clients of the old one finish on it when only its password changed, and
    /// are closed before their next transaction when its server or mode did.
    pub fn get_or_replace(
        &self,
        (database, user, node): (&str, &str, usize),
        fits: impl FnOnce(&Pool) -> bool,
        make: impl FnOnce(Arc<PoolStats>) -> Arc<Pool>,
    ) -> Arc<Pool> {
        let mut map = lock(&self.map);
        let key = (database.to_string(), user.to_string(), node);
        match map.get(&key) {
            Some(pool) if fits(pool) => pool.clone(),
            old => {
                let carried = lock(&self.carried).remove(&key);
                let stats = old.map(|o| o.stats.clone()).or(carried);
                let pool = make(stats.unwrap_or_default());
                if let Some(old) = old {
                    if pool.target.same_login(&old.target) && pool.mode == old.mode {
                        old.close_idle();
                    } else {
                        old.retire();
                    }
                }
                map.insert(key, pool.clone());
                pool
            }
        }
    }

    /// Whether `pool` is the one of its (database, user, node) now (not one a RELOAD
    /// replaced, whose connections end with the sessions still using them).
    pub fn is_current(&self, pool: &Arc<Pool>) -> bool {
        lock(&self.map).values().any(|p| Arc::ptr_eq(p, pool))
    }

    /// Every pool, sorted by (database, user, node).
    pub fn list(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = lock(&self.map).values().cloned().collect();
        v.sort_by_key(|p| (p.database.clone(), p.user.clone(), p.node_index()));
        v
    }

    /// Drops the pools `unused` picks that nothing else holds (no client, no lent
    /// connection, no maintenance under way) and that keep no idle connection.
    /// Checked under the map's lock, which every new holder goes through.
    pub fn remove_unused(&self, unused: impl Fn(&Pool) -> bool) -> usize {
        let mut map = lock(&self.map);
        let before = map.len();
        map.retain(|_, pool| {
            !(Arc::strong_count(pool) == 1 && pool.idle_count() == 0 && unused(pool))
        });
        before - map.len()
    }

    /// Drops `pool` from the map, unless another took its place there meanwhile;
    /// clients using it keep it. Its statistics go on in the next pool made for its
    /// key.
    pub fn remove(&self, pool: &Pool) {
        let key = (pool.database.clone(), pool.user.clone(), pool.node_index());
        let mut map = lock(&self.map);
        if map.get(&key).is_some_and(|p| std::ptr::eq(&**p, pool)) {
            map.remove(&key);
            lock(&self.carried).insert(key, pool.stats.clone());
        }
    }

    /// Forgets the statistics kept for pools of databases `kept` says are gone.
    pub fn keep_carried(&self, kept: impl Fn(&str) -> bool) {
        lock(&self.carried).retain(|(database, _, _), _| kept(database));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
