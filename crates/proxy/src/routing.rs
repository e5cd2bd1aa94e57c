//! Replica routing: which server a transaction runs on, and what pgopt knows of each
//! replica's health.
//!
//! A database with replicas gets a [`Router`]. Its checker task keeps one connection
//! of its own to the primary and to each replica and, every `check_interval`, reads the
//! primary's WAL position and each replica's `pg_is_in_recovery()` and replay position.
//! A replica is in the rotation while it is reachable, in recovery and no further
//! behind than `max_lag_bytes` / `max_lag`. The relay asks [`Router::pick`] for a
//! replica when a transaction's first batch is read-only (see
//! [`read_only_batch`]): the least busy in-rotation replica by outstanding
//! transactions over weight, and, after the client's own write, only one that has
//! replayed past that write.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pgopt_sql::{Analysis, Analyzer};
use pgopt_wire::frontend::{Bind, Parse, Query};
use pgopt_wire::{peek_header, Frame};
use tokio::sync::watch;

use crate::config::{Replica, Routing};
use crate::pool::Pool;
use crate::server::ServerConn;
use crate::shared::Lifecycle;

/// Where a replica stands, as the last check (or a failed connection) found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NodeState {
    /// Not checked yet: not used until the first check.
    Unknown = 0,
    Up = 1,
    /// Further behind than `max_lag_bytes` or `max_lag`.
    Lagging = 2,
    /// Unreachable, or its check failed.
    Down = 3,
    /// Reachable but not in recovery (promoted, or not a replica at all).
    NotReplica = 4,
}

impl NodeState {
    fn from_u8(v: u8) -> NodeState {
        match v {
            1 => NodeState::Up,
            2 => NodeState::Lagging,
            3 => NodeState::Down,
            4 => NodeState::NotReplica,
            _ => NodeState::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Up => "up",
            NodeState::Lagging => "lagging",
            NodeState::Down => "down",
            NodeState::NotReplica => "not_in_recovery",
        }
    }
}

/// One replica: its address and weight, and its health as last seen.
#[derive(Debug)]
pub struct Node {
    pub host: String,
    pub port: u16,
    /// (A RELOAD may change it: a replica still listed keeps its node.)
    pub weight: AtomicU32,
    state: AtomicU8,
    /// `pg_last_wal_replay_lsn()` at the last check.
    pub replay_lsn: AtomicU64,
    /// Behind the primary, in bytes of WAL and in milliseconds.
    pub lag_bytes: AtomicU64,
    pub lag_ms: AtomicU64,
    /// Transactions running on it now (server connections lent), over all pools.
    pub outstanding: AtomicUsize,
    /// Transactions routed to it.
    pub transactions: AtomicU64,
    /// Reads retried elsewhere after it failed under them.
    pub failovers: AtomicU64,
    last_error: Mutex<String>,
}

impl Node {
    fn new(replica: &Replica) -> Node {
        Node {
            host: replica.host.clone(),
            port: replica.port,
            weight: AtomicU32::new(replica.weight.max(1)),
            state: AtomicU8::new(NodeState::Unknown as u8),
            replay_lsn: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            transactions: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        }
    }

    pub fn state(&self) -> NodeState {
        NodeState::from_u8(self.state.load(Relaxed))
    }

    pub fn last_error(&self) -> String {
        lock(&self.last_error).clone()
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Records a new state; a change is logged.
    fn set_state(&self, state: NodeState, error: Option<String>) {
        let old = NodeState::from_u8(self.state.swap(state as u8, SeqCst));
        if let Some(e) = &error {
            *lock(&self.last_error) = e.clone();
        }
        if old == state {
            return;
        }
        let addr = self.address();
        match state {
            NodeState::Up => tracing::info!(replica = %addr, "replica in the rotation"),
            _ => tracing::warn!(
                replica = %addr,
                state = state.as_str(),
                error = error.as_deref().unwrap_or(""),
                lag_bytes = self.lag_bytes.load(Relaxed),
                lag_ms = self.lag_ms.load(Relaxed),
                "replica out of the rotation"
            ),
        }
    }

    /// A connection to it failed under a client: out of the rotation until the next
    /// good check.
    pub fn failed(&self, error: &str) {
        self.set_state(NodeState::Down, Some(error.to_string()));
    }
}

/// The replicas of one database and the primary's WAL position.
pub struct Router {
    pub database: String,
    pub replicas: Vec<Arc<Node>>,
    pub settings: Routing,
    /// The primary's `pg_current_wal_lsn()` at the last check, and whether it is up:
    /// down after [`PRIMARY_DOWN_AFTER`] failed checks in a row (one lost check must
    /// not send reads past read-your-writes), up again at the first good one.
    pub primary_lsn: AtomicU64,
    pub primary_up: AtomicBool,
    primary_failures: AtomicU32,
    /// When the last good check of the primary's WAL position started, and what it
    /// read (see `fence.rs`: it resolves writes whose own position is unknown).
    primary_checked: Mutex<Option<(Instant, u64)>>,
    /// Transactions routed to the primary: writes, and reads that had to go there.
    pub primary_writes: AtomicU64,
    pub primary_reads: AtomicU64,
    /// Recent (time, primary LSN) samples, for lag in seconds.
    history: Mutex<VecDeque<(Instant, u64)>>,
    /// Pools the checker connects with (the first client's: the checker needs a login).
    pools: Mutex<Option<CheckPools>>,
    checker_started: AtomicBool,
    /// A RELOAD replaced it (see [`Router::after`]): its checker stops, leaving the
    /// nodes it shares with the new router to the new one's.
    pub superseded: AtomicBool,
    /// Spreads ties over the replicas.
    turn: AtomicUsize,
}

/// The primary's pool and the replicas' pools, in the router's order.
type CheckPools = (Arc<Pool>, Vec<Arc<Pool>>);

/// Failed checks in a row after which the primary counts as down.
const PRIMARY_DOWN_AFTER: u32 = 3;

/// Samples of the primary's WAL position kept for the lag in seconds.
const HISTORY: usize = 4096;

impl Router {
    /// The router of `database`'s `replicas`; after a RELOAD that changed the replica
    /// list of `old`'s, a replica still listed (same address; its weight is updated) keeps its
    /// node — its state, replay position and load — so reads go on there without
    /// waiting for a check; the primary's counts of transactions go on from `old`'s
    /// (counters never go back).
    pub fn after(
        old: Option<&Router>,
        database: &str,
        replicas: &[Replica],
        settings: Routing,
    ) -> Router {
        let node = |r: &Replica| {
            old.into_iter()
                .flat_map(|o| &o.replicas)
                .find(|n| (&n.host, n.port) == (&r.host, r.port))
                .cloned()
                .inspect(|n| n.weight.store(r.weight.max(1), Relaxed))
                .unwrap_or_else(|| Arc::new(Node::new(r)))
        };
        Router {
            database: database.to_string(),
            replicas: replicas.iter().map(node).collect(),
            settings,
            primary_lsn: AtomicU64::new(0),
            primary_up: AtomicBool::new(true),
            primary_failures: AtomicU32::new(0),
            primary_checked: Mutex::new(None),
            primary_writes: AtomicU64::new(old.map_or(0, |o| o.primary_writes.load(Relaxed))),
            primary_reads: AtomicU64::new(old.map_or(0, |o| o.primary_reads.load(Relaxed))),
            history: Mutex::new(VecDeque::new()),
            pools: Mutex::new(None),
            checker_started: AtomicBool::new(false),
            superseded: AtomicBool::new(false),
            turn: AtomicUsize::new(0),
        }
    }

    /// When the last good check of the primary's WAL position started, and the
    /// position it read.
    pub fn primary_checked(&self) -> Option<(Instant, u64)> {
        *lock(&self.primary_checked)
    }

    /// Same replicas and policy.
    pub fn same_as(&self, replicas: &[Replica], settings: &Routing) -> bool {
        self.settings == *settings
            && self.replicas.len() == replicas.len()
            && self.replicas.iter().zip(replicas).all(|(n, r)| {
                (&n.host, n.port, n.weight.load(Relaxed)) == (&r.host, r.port, r.weight.max(1))
            })
    }

    /// A client's pools for this database: the checker logs in with them. Starts the
    /// checker on first use.
    pub fn adopt(
        self: &Arc<Self>,
        primary: &Arc<Pool>,
        replicas: &[Arc<Pool>],
        lifecycle: watch::Receiver<Lifecycle>,
    ) {
        *lock(&self.pools) = Some((primary.clone(), replicas.to_vec()));
        if !self.checker_started.swap(true, SeqCst) {
            crate::workers::spawn_background(check_loop(Arc::downgrade(self), lifecycle));
        }
    }

    /// The replica for a read-only transaction: in the rotation, replayed up to
    /// `min_lsn`, not in `tried` (a bit per replica), the fewest outstanding
    /// transactions per unit of weight. `primary_load` (outstanding, weight) makes the
    /// primary one more candidate: `None` from `pick` then also means "the primary".
    pub fn pick(
        &self,
        min_lsn: u64,
        tried: u64,
        primary_load: Option<(usize, u32)>,
    ) -> Option<usize> {
        let n = self.replicas.len();
        let start = self.turn.fetch_add(1, Relaxed);
        let mut best: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let node = &self.replicas[i];
            if tried & (1 << i.min(63)) != 0
                || node.state() != NodeState::Up
                || node.replay_lsn.load(Relaxed) < min_lsn
            {
                continue;
            }
            let score = load_score(node.outstanding.load(Relaxed), node.weight.load(Relaxed));
            if best.is_none_or(|(_, s)| score < s) {
                best = Some((i, score));
            }
        }
        let (i, score) = best?;
        if let Some((busy, weight)) = primary_load {
            if load_score(busy, weight) < score {
                return None;
            }
        }
        Some(i)
    }

    /// Runs one round of checks on the primary and every replica; `false` when there
    /// is no login to check with yet. Each node's result is taken as it comes; the
    /// round waits for them up to one `check_interval`: a node that does not answer
    /// (frozen, or cut off without a reset) holds up neither the others' checks nor
    /// the next round, in which it is skipped while its check runs (its own timeout
    /// ends it).
    async fn check_all(&self, checks: &mut Checks) -> bool {
        let Some((primary, replicas)) = lock(&self.pools).clone() else {
            return false;
        };
        let max_len = primary.limits().max_message_len;
        let (connect_timeout, interval) =
            (primary.limits().round_trip(), self.settings.check_interval);
        let nodes = 1 + replicas.len();
        checks.conns.resize_with(nodes, || None);
        checks.running.resize_with(nodes, || None);
        let pools = std::iter::once(primary).chain(replicas);
        for (i, pool) in pools.enumerate() {
            if checks.running[i].is_some() {
                continue;
            }
            // A connection of a pool since replaced (a RELOAD moved the node) is
            // dropped: the check logs in to the node as it is configured now.
            let conn = checks.conns[i]
                .take()
                .filter(|(of, _)| Weak::ptr_eq(of, &Arc::downgrade(&pool)))
                .map(|(_, conn)| conn);
            // Long enough for a connect to try each server of a host list in turn.
            let timeout = pool.target.connect_budget(connect_timeout).max(interval);
            let started = Instant::now();
            let task = checks.set.spawn(async move {
                let sql = if i == 0 { PRIMARY_CHECK } else { REPLICA_CHECK };
                let result = tokio::time::timeout(timeout, check_one(&pool, conn, sql, max_len))
                    .await
                    .unwrap_or_else(|_| Err("health check timed out".to_string()));
                (
                    i,
                    started,
                    result.map(|(conn, row)| ((Arc::downgrade(&pool), conn), row)),
                )
            });
            checks.running[i] = Some((task.id(), started));
        }
        let deadline = tokio::time::Instant::now() + interval;
        while checks.running.iter().any(Option::is_some) {
            let joined = tokio::select! {
                joined = checks.set.join_next() => joined,
                () = tokio::time::sleep_until(deadline) => break,
            };
            let Some(joined) = joined else { break };
            let (i, started, result) = match joined {
                Ok(done) => done,
                Err(e) => {
                    // (A check that panicked: its node is down until the next.)
                    let id = e.id();
                    if let Some(i) = checks
                        .running
                        .iter()
                        .position(|t| t.is_some_and(|(t, _)| t == id))
                    {
                        checks.running[i] = None;
                        self.take_result(i, Instant::now(), Err("health check failed".into()));
                    }
                    continue;
                }
            };
            checks.running[i] = None;
            let row = result.map(|(conn, row)| {
                checks.conns[i] = Some(conn);
                row
            });
            self.take_result(i, started, row);
        }
        // A replica whose check has gone unanswered for a while takes no reads until
        // it answers (its check's own timeout may be long: `server_connect_timeout`).
        let overdue = interval.saturating_mul(3).max(Duration::from_secs(1));
        for (i, running) in checks.running.iter().enumerate().skip(1) {
            if let (Some((_, started)), Some(node)) = (running, self.replicas.get(i - 1)) {
                let waited = started.elapsed();
                if waited >= overdue && node.state() == NodeState::Up {
                    let why = format!("health check unanswered for {} ms", waited.as_millis());
                    node.set_state(NodeState::Down, Some(why));
                }
            }
        }
        true
    }

    /// Node `i`'s check (0: the primary), begun at `started`.
    fn take_result(&self, i: usize, started: Instant, result: Result<Vec<Option<String>>, String>) {
        let now = Instant::now();
        if i == 0 {
            match result {
                Ok(row) => {
                    if let Some(lsn) = row
                        .first()
                        .cloned()
                        .flatten()
                        .as_deref()
                        .and_then(parse_lsn)
                    {
                        self.primary_lsn.store(lsn, Relaxed);
                        *lock(&self.primary_checked) = Some((started, lsn));
                        let mut history = lock(&self.history);
                        if history.back().is_none_or(|&(_, last)| last != lsn) {
                            history.push_back((now, lsn));
                            if history.len() > HISTORY {
                                history.pop_front();
                            }
                        }
                    }
                    self.primary_failures.store(0, Relaxed);
                    if !self.primary_up.swap(true, Relaxed) {
                        tracing::info!(database = %self.database, "primary answers health checks again");
                    }
                }
                Err(_) => {
                    let failures = self.primary_failures.fetch_add(1, Relaxed) + 1;
                    if failures >= PRIMARY_DOWN_AFTER && self.primary_up.swap(false, Relaxed) {
                        tracing::warn!(database = %self.database, "primary failed its health check");
                    }
                }
            }
            return;
        }
        let Some(node) = self.replicas.get(i - 1) else {
            return;
        };
        let primary_lsn = self.primary_lsn.load(Relaxed);
        match result {
            Ok(row) => {
                let in_recovery = row.first().cloned().flatten().as_deref() == Some("t");
                let replay = row.get(1).cloned().flatten().as_deref().and_then(parse_lsn);
                let Some(replay) = replay.filter(|_| in_recovery) else {
                    node.set_state(
                        NodeState::NotReplica,
                        Some("pg_is_in_recovery() is false".into()),
                    );
                    return;
                };
                node.replay_lsn.store(replay, Relaxed);
                let lag_bytes = primary_lsn.saturating_sub(replay);
                let lag = self.lag_behind(replay, now);
                node.lag_bytes.store(lag_bytes, Relaxed);
                node.lag_ms.store(lag.as_millis() as u64, Relaxed);
                let s = &self.settings;
                if lag_bytes > s.max_lag_bytes || lag > s.max_lag {
                    node.set_state(
                        NodeState::Lagging,
                        Some(format!("{lag_bytes} bytes, {} ms behind", lag.as_millis())),
                    );
                } else {
                    node.set_state(NodeState::Up, None);
                }
            }
            Err(e) => node.set_state(NodeState::Down, Some(e)),
        }
    }

    /// How long ago the primary first passed `replay`: zero when the replica has
    /// everything the primary had at the last check.
    fn lag_behind(&self, replay: u64, now: Instant) -> Duration {
        let history = lock(&self.history);
        history
            .iter()
            .find(|&&(_, lsn)| lsn > replay)
            .map(|&(at, _)| now.duration_since(at))
            .unwrap_or_default()
    }
}

/// Outstanding transactions per unit of weight, scaled to stay an integer.
fn load_score(outstanding: usize, weight: u32) -> u64 {
    (outstanding as u64 + 1) * 1_000_000 / u64::from(weight.max(1))
}

const PRIMARY_CHECK: &str = "SELECT pg_catalog.pg_current_wal_lsn()";
/// In a READ COMMITTED block: the checker logs in as a client's user, whose sessions
/// may be SERIALIZABLE by default (ALTER ROLE … SET), and a replica refuses those a
/// SELECT.
const REPLICA_CHECK: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; \
     SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_replay_lsn(); COMMIT";

/// One check on `conn` (connected first when there is none); the connection comes
/// back when it is still good.
async fn check_one(
    pool: &Pool,
    conn: Option<ServerConn>,
    sql: &str,
    max_len: u32,
) -> Result<(ServerConn, Vec<Option<String>>), String> {
    let fresh = conn.is_none();
    let mut conn = match conn {
        Some(c) => c,
        // Not counted: a health check must not wait for clients' room (one
        // connection per node, kept).
        None => pool
            .connect_out_of_band(crate::pool::Room::Uncounted)
            .await
            .map_err(|e| e.to_string())?,
    };
    let mut rows = conn.simple_query(sql, max_len).await?;
    if rows.len() != 1 {
        return Err(format!("health check returned {} rows", rows.len()));
    }
    if fresh {
        // A new connection just worked: clients need not wait out the breaker.
        pool.reachable();
    }
    Ok((conn, rows.swap_remove(0)))
}

/// The checker: one round every `check_interval` until the router is dropped or the
/// proxy stops. Until a first client brings a login it looks again every 50 ms.
/// The checker's state across rounds: each node's kept connection, and its check
/// under way (its task's id), if any.
#[derive(Default)]
struct Checks {
    conns: Vec<Option<(Weak<Pool>, ServerConn)>>,
    running: Vec<Option<(tokio::task::Id, Instant)>>,
    set: tokio::task::JoinSet<CheckDone>,
}

/// A node's check ended: its index, when it began, and its connection (to keep) and
/// row, or why it failed.
type CheckDone = (
    usize,
    Instant,
    Result<((Weak<Pool>, ServerConn), Vec<Option<String>>), String>,
);

async fn check_loop(router: Weak<Router>, mut lifecycle: watch::Receiver<Lifecycle>) {
    let mut checks = Checks::default();
    loop {
        let wait = {
            let Some(router) = router.upgrade() else {
                return;
            };
            if router.superseded.load(Relaxed) {
                return;
            }
            if router.check_all(&mut checks).await {
                router.settings.check_interval
            } else {
                Duration::from_millis(50)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = lifecycle.changed() => {
                if *lifecycle.borrow_and_update() >= Lifecycle::Stopped {
                    return;
                }
            }
        }
    }
}

/// `X/Y` (hex halves of a WAL position) as one number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The `X/Y` form of a WAL position.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// A statement may run on a replica: read-only (or opening a read-only block), no
/// `pgopt:primary` hint, and no `currval`/`lastval` (they read the session's own
/// sequence state, which only the connection that called `nextval` has).
pub fn replica_safe(analysis: &Analysis) -> bool {
    (analysis.read_only || analysis.begins_read_only)
        && !analysis.hints.primary
        && !analysis.functions.iter().any(|f| primary_only(f))
}

/// Read-only functions a replica can't answer as the primary would: the session's
/// sequence state, and the primary's WAL positions (a standby raises "recovery is in
/// progress").
fn primary_only(function: &str) -> bool {
    matches!(
        function.strip_prefix("pg_catalog.").unwrap_or(function),
        "currval"
            | "lastval"
            | "pg_current_wal_lsn"
            | "pg_current_wal_insert_lsn"
            | "pg_current_wal_flush_lsn"
            | "pg_walfile_name"
            | "pg_walfile_name_offset"
    )
}

/// Whether the batch that starts with `first` (its other messages, if any, at the
/// front of `rest`) may run on a replica: a simple query whose statements are all
/// replica-safe, or an extended-protocol batch, complete up to its Sync, whose every
/// Parse is (a Bind of a named statement asks `named` for its text). Anything else —
/// a batch not yet all here, a function call, COPY, text the parser refuses — is
/// for the primary.
pub fn read_only_batch<'a>(
    first: &Frame,
    rest: &[u8],
    max_len: u32,
    analyzer: &Analyzer,
    named: impl Fn(&str) -> Option<&'a str>,
) -> bool {
    let safe = |sql: &str| analyzer.analyze(sql).is_ok_and(|a| replica_safe(&a));
    if first.tag() == b'Q' {
        return Query::decode(first.body()).is_ok_and(|q| safe(q.sql));
    }
    let mut parsed_unnamed = false;
    let mut check = |tag: u8, body: &[u8]| -> Option<bool> {
        match tag {
            b'P' => {
                let parse = Parse::decode(body).ok()?;
                parsed_unnamed |= parse.name.is_empty();
                safe(parse.query).then_some(false)
            }
            b'B' => {
                let bind = Bind::decode(body).ok()?;
                let ok = if bind.statement.is_empty() {
                    parsed_unnamed
                } else {
                    named(bind.statement).is_some_and(safe)
                };
                ok.then_some(false)
            }
            b'D' | b'E' | b'C' | b'H' => Some(false),
            b'S' => Some(true),
            _ => None,
        }
    };
    match check(first.tag(), first.body()) {
        Some(true) => return true,
        None => return false,
        Some(false) => {}
    }
    let mut pos = 0;
    while let Ok(Some(header)) = peek_header(&rest[pos..], max_len) {
        let end = pos + header.frame_len();
        if end > rest.len() {
            return false;
        }
        match check(header.tag, &rest[pos + 5..end]) {
            Some(true) => return true,
            None => return false,
            Some(false) => pos = end,
        }
    }
    false
}

/// Whether the client messages at the front of `buf` end a batch the router can judge:
/// a simple query (or anything but Parse/Bind/Describe/Execute/Close), or an
/// extended-protocol batch up to its Sync or Flush. The server sends nothing before
/// those, so waiting for them costs a client nothing.
pub fn batch_visible(buf: &[u8], max_len: u32) -> bool {
    let mut pos = 0;
    while let Ok(Some(header)) = peek_header(&buf[pos..], max_len) {
        let end = pos + header.frame_len();
        if end > buf.len() {
            return false;
        }
        if !matches!(header.tag, b'P' | b'B' | b'D' | b'E' | b'C') {
            return true;
        }
        pos = end;
    }
    // An incomplete header, or one `peek_header` refuses (the relay reports it).
    peek_header(&buf[pos..], max_len).is_err()
}

/// The replicas a client may use, with their pools for the client's (database, user).
pub struct Routes {
    pub router: Arc<Router>,
    pub pools: Vec<Arc<Pool>>,
}

impl Routes {
    /// The pool of replica `i`.
    pub fn pool(&self, i: usize) -> &Arc<Pool> {
        &self.pools[i]
    }
}

/// Reads the commit position for read-your-writes: `pg_current_wal_insert_lsn()`
/// rather than `pg_current_wal_lsn()`, which may not include a commit made with
/// `synchronous_commit = off` yet. Bounded by `timeout`: on an error the connection's
/// state is unknown, and the caller closes it.
pub async fn commit_lsn(
    conn: &mut ServerConn,
    max_len: u32,
    timeout: Duration,
) -> Result<u64, String> {
    let sql = "SELECT pg_catalog.pg_current_wal_insert_lsn()";
    lsn_query(conn, sql, max_len, timeout).await.map(record_end)
}

/// The end of the last WAL record before `insert`: when the insert position is at the
/// start of a page it points past the page header, where a replica that has replayed
/// everything never gets until more WAL comes.
fn record_end(insert: u64) -> u64 {
    const PAGE: u64 = 8192;
    const SHORT_HEADER: u64 = 24; // XLogPageHeaderData, MAXALIGNed
    const LONG_HEADER: u64 = 40; // XLogLongPageHeaderData, a segment's first page
    const SEGMENT: u64 = 16 << 20;
    if insert % SEGMENT == LONG_HEADER {
        insert - LONG_HEADER
    } else if insert % PAGE == SHORT_HEADER {
        insert - SHORT_HEADER
    } else {
        insert
    }
}

/// A replica's replay position, asked on a connection a client is about to use.
pub async fn replay_lsn(
    conn: &mut ServerConn,
    max_len: u32,
    timeout: Duration,
) -> Result<u64, String> {
    // (A session SERIALIZABLE by default — by the server's default, or a SET a
    // client left on the connection — can't run a SELECT on a replica: in a READ
    // COMMITTED block there. The connection is idle: nothing of a client's is open.)
    let sql = "BEGIN ISOLATION LEVEL READ COMMITTED; \
               SELECT pg_catalog.pg_last_wal_replay_lsn(); COMMIT";
    lsn_query(conn, sql, max_len, timeout).await
}

async fn lsn_query(
    conn: &mut ServerConn,
    sql: &str,
    max_len: u32,
    timeout: Duration,
) -> Result<u64, String> {
    let rows = tokio::time::timeout(timeout, conn.simple_query(sql, max_len))
        .await
        .map_err(|_| format!("{sql} timed out after {} ms", timeout.as_millis()))??;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .as_deref()
        .and_then(parse_lsn)
        .ok_or_else(|| format!("{sql} gave no WAL position"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(format_lsn((0x16 << 32) | 0xB374D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/zz"), None);
    }

    #[test]
    fn a_commit_position_at_a_page_start_is_the_record_end_before_the_header() {
        assert_eq!(record_end(0x3000_0100), 0x3000_0100);
        assert_eq!(record_end(3 * 8192 + 24), 3 * 8192);
        assert_eq!(record_end((5 << 24) + 40), 5 << 24);
    }

    #[test]
    fn wal_position_functions_and_session_sequences_stay_on_the_primary() {
        let analyzer = Analyzer::default();
        let safe = |sql: &str| replica_safe(&analyzer.analyze(sql).unwrap());
        assert!(safe("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()"));
        for sql in [
            "SELECT pg_current_wal_lsn()",
            "SELECT pg_catalog.pg_current_wal_insert_lsn()",
            "SELECT pg_walfile_name(pg_current_wal_flush_lsn())",
            "SELECT currval('s')",
            "BEGIN READ ONLY; SELECT 1; COMMIT; INSERT INTO t VALUES (1)",
        ] {
            assert!(!safe(sql), "{sql}");
        }
    }

    #[test]
    fn a_batch_is_visible_at_its_sync_or_flush() {
        let mut buf = Vec::new();
        let frame = |buf: &mut Vec<u8>, tag: u8, body: &[u8]| {
            buf.push(tag);
            buf.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            buf.extend_from_slice(body);
        };
        assert!(!batch_visible(&buf, 1 << 20));
        frame(&mut buf, b'P', b"\0SELECT 1\0\0\0");
        frame(&mut buf, b'B', b"\0\0\0\0\0\0\0\0");
        assert!(!batch_visible(&buf, 1 << 20), "no Sync yet");
        assert!(
            !batch_visible(&buf[..buf.len() - 2], 1 << 20),
            "half a Bind"
        );
        let mut synced = buf.clone();
        frame(&mut synced, b'S', b"");
        assert!(batch_visible(&synced, 1 << 20));
        frame(&mut buf, b'H', b"");
        assert!(batch_visible(&buf, 1 << 20), "a Flush");
        let mut q = Vec::new();
        frame(&mut q, b'Q', b"SELECT 1\0");
        assert!(batch_visible(&q, 1 << 20));
    }

    #[test]
    fn picks_the_least_busy_per_weight_and_skips_what_it_must() {
        let replicas = [
            Replica {
                host: "a".into(),
                port: 1,
                weight: 1,
            },
            Replica {
                host: "b".into(),
                port: 2,
                weight: 3,
            },
        ];
        let router = Router::after(None, "db", &replicas, Routing::default());
        assert_eq!(
            router.pick(0, 0, None),
            None,
            "unchecked replicas are not used"
        );
        for n in &router.replicas {
            n.set_state(NodeState::Up, None);
            n.replay_lsn.store(100, Relaxed);
        }
        router.replicas[0].outstanding.store(1, Relaxed);
        router.replicas[1].outstanding.store(2, Relaxed);
        // a: 2/1, b: 3/3 → b.
        assert_eq!(router.pick(0, 0, None), Some(1));
        assert_eq!(router.pick(0, 0b10, None), Some(0), "b was tried");
        assert_eq!(
            router.pick(101, 0, None),
            None,
            "neither replayed the write"
        );
        assert_eq!(
            router.pick(0, 0, Some((0, 3))),
            None,
            "an idle, heavier primary wins"
        );
        assert_eq!(
            router.pick(0, 0, Some((0, 1))),
            Some(1),
            "ties go to the replica"
        );
        router.replicas[1].set_state(NodeState::Lagging, None);
        assert_eq!(router.pick(0, 0, None), Some(0));
    }
}
