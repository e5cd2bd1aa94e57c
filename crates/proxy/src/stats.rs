//! What the admin console and `/metrics` show: per-pool counters, and registries of
//! client and server connections with their current state.
//!
//! Counters are relaxed atomics bumped once per ReadyForQuery (a session adds up its
//! bytes locally and flushes them there), so the hot path takes no lock; registries
//! take a lock only when a connection opens or closes, and views read them on demand.

use crate::net::Endpoint;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upper bounds (µs) of the client wait-time histogram's buckets; one more is +Inf.
pub const WAIT_BUCKETS_US: [u64; 11] = [
    100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000, 10_000_000,
];

/// Totals of one pool since the proxy started.
#[derive(Default)]
pub struct PoolStats {
    /// Transactions ended (ReadyForQuery 'I'), autocommit statements included.
    pub xacts: AtomicU64,
    /// Query cycles ended (every ReadyForQuery).
    pub queries: AtomicU64,
    /// Bytes from clients to servers.
    pub received: AtomicU64,
    /// Bytes from servers to clients.
    pub sent: AtomicU64,
    pub xact_us: AtomicU64,
    pub query_us: AtomicU64,
    /// Time clients waited for a server connection.
    pub wait_us: AtomicU64,
    pub waits: AtomicU64,
    wait_buckets: [AtomicU64; WAIT_BUCKETS_US.len() + 1],
    /// Errors sent to clients (by the server or by pgopt), by SQLSTATE class.
    errors: Mutex<HashMap<[u8; 2], u64>>,
    /// Server connections opened, and attempts that failed.
    pub server_connects: AtomicU64,
    pub server_connect_errors: AtomicU64,
    /// The last finished stats period, for SHOW STATS' averages.
    period: Mutex<Period>,
}

/// The counters SHOW STATS reports, at one moment or as a difference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
    pub waits: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.xacts += o.xacts;
        self.queries += o.queries;
        self.received += o.received;
        self.sent += o.sent;
        self.xact_us += o.xact_us;
        self.query_us += o.query_us;
        self.wait_us += o.wait_us;
        self.waits += o.waits;
    }

    fn minus(&self, o: &Totals) -> Totals {
        Totals {
            xacts: self.xacts.saturating_sub(o.xacts),
            queries: self.queries.saturating_sub(o.queries),
            received: self.received.saturating_sub(o.received),
            sent: self.sent.saturating_sub(o.sent),
            xact_us: self.xact_us.saturating_sub(o.xact_us),
            query_us: self.query_us.saturating_sub(o.query_us),
            wait_us: self.wait_us.saturating_sub(o.wait_us),
            waits: self.waits.saturating_sub(o.waits),
        }
    }
}

#[derive(Default)]
struct Period {
    /// Totals when the current period began.
    start: Totals,
    /// What the last complete period added, and how long it was.
    last: Totals,
    last_secs: f64,
}

impl PoolStats {
    pub fn record_wait(&self, wait: Duration) {
        let us = wait.as_micros().min(u64::MAX as u128) as u64;
        self.wait_us.fetch_add(us, Relaxed);
        self.waits.fetch_add(1, Relaxed);
        let bucket = WAIT_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(WAIT_BUCKETS_US.len());
        self.wait_buckets[bucket].fetch_add(1, Relaxed);
    }

    pub fn totals(&self) -> Totals {
        Totals {
            xacts: self.xacts.load(Relaxed),
            queries: self.queries.load(Relaxed),
            received: self.received.load(Relaxed),
            sent: self.sent.load(Relaxed),
            xact_us: self.xact_us.load(Relaxed),
            query_us: self.query_us.load(Relaxed),
            wait_us: self.wait_us.load(Relaxed),
            waits: self.waits.load(Relaxed),
        }
    }

    /// Ends a stats period of `secs` seconds (the maintenance task calls it).
    pub fn roll_period(&self, secs: f64) {
        let now = self.totals();
        let mut p = lock(&self.period);
        p.last = now.minus(&p.start);
        p.last_secs = secs;
        p.start = now;
    }

    /// What the last complete stats period added, and its length in seconds.
    pub fn last_period(&self) -> (Totals, f64) {
        let p = lock(&self.period);
        (p.last, p.last_secs)
    }

    /// Wait counts per bucket, not cumulative; the last one is above every bound.
    pub fn wait_buckets(&self) -> Vec<u64> {
        self.wait_buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// Counts an error by the first two characters of its SQLSTATE.
    pub fn record_error(&self, sqlstate: &[u8]) {
        let class = match sqlstate {
            [a, b, ..] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => [*a, *b],
            _ => *b"??",
        };
        *lock(&self.errors).entry(class).or_default() += 1;
    }

    /// Error counts by SQLSTATE class, sorted by class.
    pub fn errors(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = lock(&self.errors)
            .iter()
            .map(|(c, n)| (String::from_utf8_lossy(c).into_owned(), *n))
            .collect();
        v.sort();
        v
    }
}

/// The SQLSTATE in an ErrorResponse body (`C` field), if any.
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    error_field(body, b'C')
}

/// One field of an ErrorResponse or NoticeResponse body, by its type byte.
pub fn error_field(body: &[u8], wanted: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if field == wanted {
            return Some(&tail[..end]);
        }
        rest = &tail[end + 1..];
    }
    None
}

/// What a client connection is doing, as SHOW CLIENTS says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Login = 0,
    /// Logged in, no server connection (between transactions in transaction mode).
    Idle = 1,
    /// Holds a server connection.
    Active = 2,
    /// Waiting for a server connection.
    Waiting = 3,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Login => "login",
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Idle,
            2 => ClientState::Active,
            3 => ClientState::Waiting,
            _ => ClientState::Login,
        }
    }
}

/// One client connection, for the views.
pub struct ClientInfo {
    pub id: u64,
    pub addr: Endpoint,
    pub local_addr: Option<Endpoint>,
    /// The client's process id, when it came over a Unix-domain socket.
    pub remote_pid: Option<u32>,
    /// Its TLS version and cipher suite, once it has made the handshake.
    pub tls: std::sync::OnceLock<String>,
    pub connect_time: SystemTime,
    identity: Mutex<(String, String, String)>,
    state: AtomicU8,
    /// Unix µs when the current wait began, 0 when not waiting.
    wait_since: AtomicU64,
    /// Unix µs of the last request (server connection taken).
    request_time: AtomicU64,
    /// Id of the linked server connection, 0 when none.
    link: AtomicU64,
    /// Nudges the session when the proxy's lifecycle changes (shutdown) or an admin
    /// KILLs it.
    pub wake: tokio::sync::Notify,
    killed: AtomicBool,
    /// Wakes a session waiting for a server connection when it is KILLed (apart from
    /// `wake`, whose single permit the lifecycle's changes need).
    kill_signal: tokio::sync::Notify,
    /// A replication client's kind (see `replication.rs`).
    pub replication: crate::replication::ReplicationCell,
}

impl ClientInfo {
    /// KILL from the admin console: the session ends as soon as it looks (woken now,
    /// or at its next server checkout).
    pub fn kill(&self) {
        self.killed.store(true, SeqCst);
        self.kill_signal.notify_waiters();
        self.wake.notify_one();
    }

    pub fn killed(&self) -> bool {
        self.killed.load(SeqCst)
    }

    /// Returns once the session is KILLed.
    pub async fn until_killed(&self) {
        loop {
            let signal = self.kill_signal.notified();
            tokio::pin!(signal);
            // Registered before the flag is read: a KILL in between is not missed.
            signal.as_mut().enable();
            if self.killed() {
                return;
            }
            signal.await;
        }
    }

    pub fn set_identity(&self, user: &str, database: &str, application_name: &str) {
        *lock(&self.identity) = (
            user.to_string(),
            database.to_string(),
            application_name.to_string(),
        );
    }

    /// (user, database, application_name).
    pub fn identity(&self) -> (String, String, String) {
        lock(&self.identity).clone()
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Relaxed))
    }

    /// The client's state from `at_us` (µs since the epoch, see [`unix_us_at`]; unused
    /// for states other than waiting and active).
    pub fn set_state(&self, state: ClientState, at_us: u64) {
        self.state.store(state as u8, Relaxed);
        match state {
            ClientState::Waiting => self.wait_since.store(at_us, Relaxed),
            ClientState::Active => {
                self.wait_since.store(0, Relaxed);
                self.request_time.store(at_us, Relaxed);
            }
            _ => self.wait_since.store(0, Relaxed),
        }
    }

    /// How long the client has been waiting for a server connection.
    pub fn waiting_for(&self, now_us: u64) -> Option<Duration> {
        match self.wait_since.load(Relaxed) {
            0 => None,
            since => Some(Duration::from_micros(now_us.saturating_sub(since))),
        }
    }

    pub fn request_time(&self) -> Option<SystemTime> {
        from_unix_us(self.request_time.load(Relaxed))
    }

    pub fn link(&self) -> u64 {
        self.link.load(Relaxed)
    }

    pub fn set_link(&self, server: u64) {
        self.link.store(server, Relaxed);
    }
}

/// Every client connection, admin console ones included.
#[derive(Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

/// Removes its client from the registry when the session ends.
pub struct ClientGuard {
    pub info: Arc<ClientInfo>,
    registry: Arc<ClientRegistry>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        lock(&self.registry.clients).remove(&self.info.id);
    }
}

impl ClientRegistry {
    pub fn register(
        self: &Arc<Self>,
        addr: Endpoint,
        local_addr: Option<Endpoint>,
        remote_pid: Option<u32>,
    ) -> ClientGuard {
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        let info = Arc::new(ClientInfo {
            id,
            addr,
            local_addr,
            remote_pid,
            tls: std::sync::OnceLock::new(),
            connect_time: SystemTime::now(),
            identity: Mutex::default(),
            state: AtomicU8::new(ClientState::Login as u8),
            wait_since: AtomicU64::new(0),
            request_time: AtomicU64::new(0),
            link: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            killed: AtomicBool::new(false),
            kill_signal: tokio::sync::Notify::new(),
            replication: Default::default(),
        });
        lock(&self.clients).insert(id, info.clone());
        ClientGuard {
            info,
            registry: self.clone(),
        }
    }

    /// Every client, oldest first.
    pub fn list(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = lock(&self.clients).values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn len(&self) -> usize {
        lock(&self.clients).len()
    }
}

/// What a server connection is doing, as SHOW SERVERS says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// Lent to a client.
    Active = 0,
    /// In the pool, ready.
    Idle = 1,
}

/// One server connection, for the views.
#[derive(Debug)]
pub struct ServerInfo {
    pub id: u64,
    pub addr: Endpoint,
    pub local_addr: Option<Endpoint>,
    pub backend_pid: i32,
    pub connect_time: SystemTime,
    state: AtomicU8,
    request_time: AtomicU64,
    link: AtomicU64,
    /// Statements pgopt prepared on this connection.
    pub prepared: AtomicU64,
    /// Its pool's generation when it was opened (see `Pool::reconnect`): older than
    /// the pool's, it is closed instead of reused (SHOW SERVERS' `close_needed`).
    pub generation: AtomicU64,
    /// A replication client's own connection (see `replication.rs`).
    pub replication: crate::replication::ReplicationCell,
}

impl ServerInfo {
    pub fn new(addr: Endpoint, local_addr: Option<Endpoint>, backend_pid: i32) -> ServerInfo {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ServerInfo {
            id: NEXT.fetch_add(1, Relaxed),
            addr,
            local_addr,
            backend_pid,
            connect_time: SystemTime::now(),
            state: AtomicU8::new(ServerState::Active as u8),
            request_time: AtomicU64::new(0),
            link: AtomicU64::new(0),
            prepared: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            replication: Default::default(),
        }
    }

    pub fn state(&self) -> ServerState {
        match self.state.load(Relaxed) {
            1 => ServerState::Idle,
            _ => ServerState::Active,
        }
    }

    /// Lent to client `client` (0: back in the pool).
    /// Lent to `client` from `at_us` (µs since the epoch), or idle for 0.
    pub fn set_link(&self, client: u64, at_us: u64) {
        self.link.store(client, Relaxed);
        if client == 0 {
            self.state.store(ServerState::Idle as u8, Relaxed);
        } else {
            self.state.store(ServerState::Active as u8, Relaxed);
            self.request_time.store(at_us, Relaxed);
        }
    }

    pub fn link(&self) -> u64 {
        self.link.load(Relaxed)
    }

    pub fn request_time(&self) -> Option<SystemTime> {
        from_unix_us(self.request_time.load(Relaxed))
    }
}

/// A pool's server connections; entries go away with their connections.
#[derive(Default)]
pub struct ServerRegistry {
    servers: Mutex<Vec<Weak<ServerInfo>>>,
}

impl ServerRegistry {
    pub fn add(&self, info: &Arc<ServerInfo>) {
        let mut servers = lock(&self.servers);
        servers.retain(|w| w.strong_count() > 0);
        servers.push(Arc::downgrade(info));
    }

    /// The open connections, oldest first.
    pub fn list(&self) -> Vec<Arc<ServerInfo>> {
        let mut v: Vec<_> = lock(&self.servers)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }
}

pub fn unix_us_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The wall-clock time of `at` in µs since the epoch, from a monotonic time the caller
/// already read: no clock read of its own. Each thread anchors the two clocks once an
/// hour (wall-clock steps show up within the hour; these times are for SHOW).
pub fn unix_us_at(at: Instant) -> u64 {
    thread_local! {
        static ANCHOR: std::cell::Cell<Option<(Instant, u64)>> = const { std::cell::Cell::new(None) };
    }
    ANCHOR.with(|anchor| {
        match anchor
            .get()
            .and_then(|(base, us)| Some((at.checked_duration_since(base)?, us)))
        {
            Some((since, us)) if since.as_secs() < 3600 => us + since.as_micros() as u64,
            _ => {
                let (base, us) = (Instant::now(), unix_us_now());
                anchor.set(Some((base, us)));
                // `at` is at most a moment old: before the new anchor, never after it.
                us.saturating_sub(base.saturating_duration_since(at).as_micros() as u64)
            }
        }
    })
}

fn from_unix_us(us: u64) -> Option<SystemTime> {
    (us != 0).then(|| UNIX_EPOCH + Duration::from_micros(us))
}

/// `2026-11-23 10:04:05 UTC`, as PgBouncer shows times.
pub fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_pgbouncer() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_428_245);
        assert_eq!(format_time(t), "2026-11-23 10:04:05 UTC");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_time(leap), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn error_code_is_found_among_fields() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation \"x\" does not exist\0\0";
        assert_eq!(error_code(body), Some(&b"42P01"[..]));
        assert_eq!(error_code(b"SERROR\0\0"), None);
        assert_eq!(error_code(b"SERR"), None);
        assert_eq!(error_code(b""), None);
    }

    #[test]
    fn waits_land_in_buckets_and_errors_by_class() {
        let s = PoolStats::default();
        s.record_wait(Duration::from_micros(50));
        s.record_wait(Duration::from_millis(3));
        s.record_wait(Duration::from_secs(60));
        let b = s.wait_buckets();
        assert_eq!((b[0], b[3], b[WAIT_BUCKETS_US.len()]), (1, 1, 1));
        assert_eq!(b.iter().sum::<u64>(), 3);
        s.record_error(b"57014");
        s.record_error(b"57P01");
        s.record_error(b"x");
        assert_eq!(
            s.errors(),
            vec![("57".to_string(), 2), ("??".to_string(), 1)]
        );
    }
}
