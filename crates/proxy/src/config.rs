//! The proxy's own typed configuration (the CLI builds it from `pgopt.toml` or flags).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

/// When a server connection goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// When the client disconnects.
    Session,
    /// When a transaction ends (ReadyForQuery with status idle).
    Transaction,
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No password (local testing only).
    Trust,
    Md5,
    ScramSha256,
    /// A Unix-domain socket's peer is the operating system user of the client's user
    /// name (from an `hba` rule; TCP clients fail it).
    Peer,
    /// The client's TLS certificate, verified against `client_tls.ca_file`, has the
    /// user name as its common name (clients without one fail it).
    Cert,
}

/// A user clients may log in as. `password` is the plaintext, an `md5…` hash or a
/// `SCRAM-SHA-256$…` verifier (as in `pg_authid.rolpassword`).
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    /// This user's pool mode, instead of its database's (PgBouncer's `[users]`
    /// `pool_mode`).
    pub pool_mode: Option<PoolMode>,
    /// Instead of [`Config::max_user_connections`].
    pub max_user_connections: Option<usize>,
}

impl User {
    /// A user with no settings of its own.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> User {
        User {
            name: name.into(),
            password: password.into(),
            pool_mode: None,
            max_user_connections: None,
        }
    }
}

/// A database clients may connect to, and the server it lives on.
#[derive(Debug, Clone)]
pub struct Database {
    /// The name clients use.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The database name on the server.
    pub dbname: String,
    /// Log in to the server as this user instead of the client's.
    pub user: Option<String>,
    /// Password for the server login; else the client user's plaintext password.
    pub password: Option<String>,
    /// More servers of this database after `host:port` (a host list), tried when a
    /// connection to one fails; empty for one server.
    pub more_hosts: MoreHosts,
    /// Streaming replicas of this server: read-only transactions go to them (see
    /// [`Routing`]). They take the same login as the primary.
    pub replicas: Vec<Replica>,
    /// This database's own pool settings (PgBouncer's per-database `pool_size=`,
    /// `pool_mode=`); what is not set follows the proxy-wide value.
    pub pool: DatabasePool,
}

/// The servers of a database after its first (`postgres://a:5432,b:5432/db`, PgBouncer's
/// `host=a,b`), and which one a new connection tries first: the next in turn
/// (round robin, PgBouncer's default `load_balance_hosts=round-robin`) or the last that
/// worked (`load_balance_hosts=disable`). Either way, when a server cannot be reached
/// or refuses for any reason but a wrong password (28P01), the next is
/// tried, so a client waits for a connection only while none of them answers.
/// Clones share the turn.
#[derive(Debug, Clone)]
pub struct MoreHosts {
    pub hosts: Vec<(String, u16)>,
    pub round_robin: bool,
    /// Only a server that takes writes will do (libpq's
    /// `target_session_attrs=read-write`): one in recovery (a standby) counts as
    /// failed and the next is tried. With one host too.
    pub read_write: bool,
    /// The next server in turn (round robin), or the last that worked.
    turn: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// When each server that failed a connection last did (by index), until one
    /// succeeds: for `set_aside_ms` it is tried after the others.
    failed_at:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<usize, std::time::Instant>>>,
    /// How long a server of the list that failed a connection is tried only after
    /// the others ([`Config::server_login_retry`], set by the proxy at start and
    /// RELOAD): a host that is down, worse one that drops packets and costs a whole
    /// `server_connect_timeout`, does not hold up every new connection whose turn
    /// starts there.
    set_aside_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Database {
    /// `host:port,…` of its servers.
    pub fn servers_text(&self) -> String {
        servers_text(&self.host, self.port, &self.more_hosts)
    }

    /// The host, or with more hosts `host,host…`, each after the first with `:port`
    /// when it is not `port` (SHOW DATABASES' host column, as PgBouncer's). An IPv6
    /// address among several is in brackets.
    pub fn hosts_text(&self) -> String {
        if self.more_hosts.is_empty() {
            return self.host.clone();
        }
        let mut text = bracketed(&self.host).into_owned();
        for (host, port) in &self.more_hosts.hosts {
            text.push(',');
            text.push_str(&bracketed(host));
            if *port != self.port {
                text.push_str(&format!(":{port}"));
            }
        }
        text
    }
}

/// `host:port`, with an IPv6 address in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", bracketed(host))
}

/// `host:port,host:port,…` of a server and the ones after it.
pub fn servers_text(host: &str, port: u16, more: &MoreHosts) -> String {
    std::iter::once(host_port(host, port))
        .chain(more.hosts.iter().map(|(h, p)| host_port(h, *p)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A host as written before `:port`: an IPv6 address in brackets.
pub fn bracketed(host: &str) -> Cow<'_, str> {
    if host.contains(':') && !host.starts_with('/') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

impl MoreHosts {
    pub fn new(hosts: Vec<(String, u16)>, round_robin: bool) -> MoreHosts {
        MoreHosts {
            hosts,
            round_robin,
            read_write: false,
            turn: Default::default(),
            failed_at: Default::default(),
            set_aside_ms: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
                DEFAULT_LOGIN_RETRY.as_millis() as u64,
            )),
        }
    }

    /// Sets how long a failed server is tried after the others (for every clone).
    pub fn set_aside_for(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.set_aside_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The same servers and `read_write`, tried in order and staying on the one that
    /// answers, with a turn of their own (the cache's listeners'); which servers
    /// failed lately, and for how long that counts, are shared.
    pub fn in_order(&self) -> MoreHosts {
        MoreHosts {
            failed_at: self.failed_at.clone(),
            set_aside_ms: self.set_aside_ms.clone(),
            ..MoreHosts::new(self.hosts.clone(), false).with_read_write(self.read_write)
        }
    }

    /// The same with [`MoreHosts::read_write`] set so.
    pub fn with_read_write(mut self, on: bool) -> MoreHosts {
        self.read_write = on;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// A host list without `read_write`: a connection may reach a standby.
    pub fn may_reach_standby(&self) -> bool {
        !self.is_empty() && !self.read_write
    }

    /// The order a new connection tries the `1 + hosts.len()` servers in: from
    /// the next in turn (round robin) or the last that worked on, those that failed
    /// within `set_aside_for`'s time last (still tried: they may be back).
    pub fn order(&self) -> Vec<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        let n = 1 + self.hosts.len();
        if n == 1 {
            return vec![0];
        }
        let now = std::time::Instant::now();
        let set_aside = Duration::from_millis(self.set_aside_ms.load(Relaxed));
        let failed_at = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        let is_aside = |i: &usize| {
            failed_at
                .get(i)
                .is_some_and(|at| now.saturating_duration_since(*at) < set_aside)
        };
        // Round robin turns among the servers not set aside (the next of those each
        // time, so they share the load evenly); the other policy starts at the last
        // that worked.
        let first = if self.round_robin {
            0
        } else {
            self.turn.load(Relaxed) % n
        };
        let (mut fresh, mut aside): (Vec<usize>, Vec<usize>) =
            (0..n).map(|k| (first + k) % n).partition(|i| !is_aside(i));
        if self.round_robin && !fresh.is_empty() {
            let turn = self.turn.fetch_add(1, Relaxed);
            let k = turn % fresh.len();
            fresh.rotate_left(k);
        }
        fresh.append(&mut aside);
        fresh
    }

    /// Server `i` (in `0..1 + hosts.len()`) took a connection.
    pub fn worked(&self, i: usize) {
        if !self.round_robin {
            self.turn.store(i, std::sync::atomic::Ordering::Relaxed);
        }
        if !self.hosts.is_empty() {
            let mut failed_at = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
            failed_at.remove(&i);
        }
    }

    /// Server `i` could not be reached or refused the connection.
    pub fn failed(&self, i: usize) {
        let mut failed_at = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        failed_at.insert(i, std::time::Instant::now());
    }
}

/// One server: no list.
impl Default for MoreHosts {
    fn default() -> MoreHosts {
        MoreHosts::new(Vec::new(), false)
    }
}

/// PgBouncer's `server_login_retry` default.
pub const DEFAULT_LOGIN_RETRY: Duration = Duration::from_secs(15);

/// The same servers in the same order and policy, whatever the turn.
impl PartialEq for MoreHosts {
    fn eq(&self, other: &MoreHosts) -> bool {
        (&self.hosts, self.round_robin, self.read_write)
            == (&other.hosts, other.round_robin, other.read_write)
    }
}

impl Eq for MoreHosts {}

/// Pool settings of one database that override the proxy-wide ones; `None` keeps
/// the proxy-wide value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatabasePool {
    pub mode: Option<PoolMode>,
    /// Instead of [`Config::default_pool_size`].
    pub size: Option<usize>,
    pub min_size: Option<usize>,
    pub reserve_size: Option<usize>,
    /// Instead of [`Config::max_db_connections`].
    pub max_db_connections: Option<usize>,
}

/// A streaming replica of a database's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub host: String,
    pub port: u16,
    /// Its share of reads relative to the other replicas' weights (at least 1).
    pub weight: u32,
}

/// After a client's write commits, where its reads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadYourWrites {
    /// To the primary until a replica has replayed past the commit's WAL position
    /// (`pg_current_wal_insert_lsn()` read right after the commit).
    #[default]
    Lsn,
    /// To the primary for [`Routing::read_your_writes_window`].
    Window,
    /// Anywhere: a replica may not have the write yet.
    Off,
}

/// Replica routing policy (used by databases with replicas).
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub read_your_writes: ReadYourWrites,
    /// `Window` mode: how long a client's reads stay on the primary after a write;
    /// `Lsn` mode: the same, when the commit's position could not be read.
    pub read_your_writes_window: Duration,
    /// How often each replica's health and replay position are checked.
    pub check_interval: Duration,
    /// A replica further behind than either limit leaves the rotation until it
    /// catches up.
    pub max_lag_bytes: u64,
    pub max_lag: Duration,
    /// The primary takes reads too, as one more node of weight `primary_weight`.
    pub primary_reads: bool,
    pub primary_weight: u32,
    /// When the primary is down, reads still go to replicas (writes fail at once).
    /// Off: once the health checker finds the primary down, every statement fails
    /// as it would with no replicas (replicas may fall behind for good).
    pub reads_when_primary_down: bool,
    /// User functions that may run on a replica (others keep a statement on the
    /// primary). Read at start only.
    pub safe_functions: Vec<String>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            read_your_writes: ReadYourWrites::Lsn,
            read_your_writes_window: Duration::from_secs(5),
            check_interval: Duration::from_secs(1),
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag: Duration::from_secs(10),
            primary_reads: false,
            primary_weight: 1,
            reads_when_primary_down: true,
            safe_functions: Vec::new(),
        }
    }
}

/// TCP keepalive on client and server sockets: a peer gone without a word (a crashed
/// host, a NAT that dropped the flow) is found and its connection closed. Zero
/// values keep the system's own (on Linux: 2 h idle, 75 s apart, 9 probes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Whether keepalive probes are sent (false: only `user_timeout` is set).
    pub probes: bool,
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
    /// TCP_USER_TIMEOUT (PgBouncer's `tcp_user_timeout`): how long data sent may go
    /// unacknowledged before the connection is dropped, also while probes go out;
    /// zero keeps the system's (on Linux, retransmissions for about 15 minutes).
    pub user_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            probes: true,
            idle: Duration::ZERO,
            interval: Duration::ZERO,
            count: 0,
            user_timeout: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// A directory where pgopt also listens on a Unix-domain socket,
    /// `.s.PGSQL.<listen port>` as PostgreSQL names its own; `None`: TCP only.
    pub unix_socket_dir: Option<String>,
    /// The socket file's permissions (PgBouncer's `unix_socket_mode`).
    pub unix_socket_mode: u32,
    /// More addresses clients connect to, besides `listen` (PgBouncer's `listen_addr`
    /// list); a port of 0 is `listen`'s.
    pub listen_also: Vec<SocketAddr>,
    /// The socket file's group, a name or a number (PgBouncer's `unix_socket_group`);
    /// `None`: pgopt's own.
    pub unix_socket_group: Option<String>,
    /// Listen with SO_REUSEPORT (PgBouncer's `so_reuseport`): another pgopt may listen
    /// on the same TCP addresses, for a restart that refuses no client.
    pub so_reuseport: bool,
    /// A line (target `pgopt::connections`, level info) for each client that logs
    /// in, and for each that goes with why and after how long (PgBouncer's
    /// `log_connections`, `log_disconnections`). Off in the library's default; the
    /// `pgopt` binary turns them on unless configured otherwise.
    pub log_connections: bool,
    pub log_disconnections: bool,
    /// ` - HOST:PORT` of the client after its application_name (PgBouncer's
    /// `application_name_add_host`).
    pub application_name_add_host: bool,
    /// Reuse the idle server connection that waited longest instead of the one used
    /// last (PgBouncer's `server_round_robin`): load spreads over every connection (and
    /// every host of a host list, or behind a load balancer), at the cost of idle
    /// connections never timing out while traffic lasts.
    pub server_round_robin: bool,
    pub pool_mode: PoolMode,
    /// Server connections per (database, user).
    pub default_pool_size: usize,
    /// Server connections per pool kept open even when idle.
    pub min_pool_size: usize,
    /// Extra server connections per pool for clients that waited `reserve_pool_timeout`.
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Duration,
    /// Client connections accepted at once; more get `53300`, but for the admin
    /// console's.
    pub max_client_conn: usize,
    /// Threads that serve client sessions in turn, as configured (`proxy.workers`):
    /// the runtime the proxy starts on and `workers - 1` more, each running its own
    /// single-threaded runtime (see `workers.rs`); 0: one per core, counted at start.
    /// 1: every session on the starting runtime. Read at start only.
    pub workers: usize,
    /// How long a client waits for a server connection before `57014`; zero is no
    /// limit (PgBouncer's 0), see [`or_never`] for this and the next two.
    pub query_wait_timeout: Duration,
    /// Connecting and logging in to a server; zero is no limit.
    pub server_connect_timeout: Duration,
    /// Idle server connections older than this are closed when next checked out;
    /// zero is never.
    pub server_idle_timeout: Duration,
    /// Server connections older than this are closed when they come back to the pool.
    pub server_lifetime: Duration,
    /// An idle server connection unused this long is checked with a round trip
    /// before a client gets it.
    pub server_check_delay: Duration,
    /// A server of a host list that failed a connection is tried after the others
    /// this long (PgBouncer's `server_login_retry`, 15 s).
    pub server_login_retry: Duration,
    /// A client idle inside a transaction this long is disconnected (`25P03`) and its
    /// server connection closed; zero disables it.
    pub idle_transaction_timeout: Duration,
    /// A client that has not logged in this long after connecting (TLS handshake,
    /// start-up packet, password exchange) is disconnected; zero is off.
    pub client_login_timeout: Duration,
    /// A client idle outside a transaction (nothing in flight, no server connection:
    /// never in session mode, as in PgBouncer) this long is disconnected (57P05, as
    /// PostgreSQL's `idle_session_timeout`); zero is off.
    pub client_idle_timeout: Duration,
    /// A request unanswered this long (from when it was sent, or the previous one in
    /// a pipeline ended; a COPY FROM STDIN's upload counts, as in PgBouncer) ends the
    /// session: the statement is canceled, the server connection closed and the client
    /// told (57014); zero is off.
    pub query_timeout: Duration,
    /// Keepalive on every client and server socket; `None` is off.
    pub tcp_keepalive: Option<Keepalive>,
    /// Server connections one database's pools (every user's) may hold open together,
    /// per node; 0 is no limit. When reached, a pool that needs one more closes
    /// another pool's idle connection, or waits for one to close.
    pub max_db_connections: usize,
    /// Server connections one user's pools (every database's, every node's) may hold
    /// open together; 0 is no limit (PgBouncer's `max_user_connections`). The user is
    /// the server login: the client's, or its database's forced user.
    pub max_user_connections: usize,
    /// How long SHUTDOWN and SIGTERM let transactions finish before closing clients.
    pub shutdown_timeout: Duration,
    /// Users allowed on the admin console (database `pgopt`).
    pub admin_users: Vec<String>,
    /// Users allowed on the admin console for SHOW commands only (PgBouncer's
    /// `stats_users`: monitoring without RELOAD, PAUSE, SHUTDOWN…).
    pub stats_users: Vec<String>,
    /// Where `/metrics` is served over HTTP; `None` turns it off.
    pub admin_listen: Option<SocketAddr>,
    pub client_tls: ClientTls,
    /// TLS to servers (libpq's `sslmode` choices).
    pub server_tls: ServerTls,
    pub client_auth: ClientAuth,
    /// Rules that pick each client's method instead of `client_auth` (`proxy.auth =
    /// "hba"` with `auth_hba_file`); the first that matches decides, none refuses.
    pub hba: Option<std::sync::Arc<crate::hba::Hba>>,
    /// User name maps for the hba rules' `map=NAME` (`auth_ident_file`).
    pub ident: Option<std::sync::Arc<crate::ident::IdentMap>>,
    pub users: Vec<User>,
    /// The user `auth_query` runs as (it must be in `users` or be the database's
    /// forced user); `None` turns `auth_query` off.
    pub auth_user: Option<String>,
    /// Finds the stored password (last column) of a user not in `users`; `$1` is
    /// the user name.
    pub auth_query: String,
    /// How long `auth_query`'s answer for a (database, user) is kept ("no such
    /// user" 5 s at most); zero looks up at every login.
    pub auth_query_cache_ttl: Duration,
    pub databases: Vec<Database>,
    /// Largest message accepted from a client or server.
    pub max_message_len: u32,
    /// Statements pgopt keeps prepared on one server connection (transaction mode):
    /// past it, the one unused longest is closed there (0: no limit).
    pub max_prepared_statements: usize,
    /// Query insight: statistics per query shape, slow log, N+1 detection.
    pub insight: crate::observe::InsightSettings,
    /// How reads are spread over the databases' replicas.
    pub routing: Routing,
    /// The result cache. Read at start only.
    pub cache: crate::cache::CacheSettings,
}

/// Whether clients may or must use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// SSLRequest is answered 'N': plain text only.
    #[default]
    Disable,
    /// TLS when the client asks for it (sslmode=prefer/require), plain otherwise.
    Prefer,
    /// Plain-text clients are refused (`28000`).
    Require,
}

/// TLS to clients: the mode and the PEM files of the certificate chain and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: TlsMode,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) whose client certificates are accepted (PgBouncer's
    /// `client_tls_ca_file`): TLS clients are asked for one, one that does not verify
    /// fails the handshake, and none is allowed (only the `cert` method needs one).
    pub ca_file: Option<std::path::PathBuf>,
    /// SCRAM over TLS offers SCRAM-SHA-256-PLUS (channel binding) first, as
    /// PostgreSQL does (the default). Off, only SCRAM-SHA-256 is offered, as PgBouncer
    /// offers it: for clients whose binding is computed wrongly for pgopt's
    /// certificate.
    pub channel_binding: bool,
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls {
            mode: TlsMode::default(),
            cert_file: None,
            key_file: None,
            ca_file: None,
            channel_binding: true,
        }
    }
}

/// Whether pgopt's SCRAM login to a server binds to the TLS channel (libpq's
/// `channel_binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    /// Never: SCRAM-SHA-256 with `n`, as before pgopt bound (for a relay that ends
    /// TLS and passes the server's SCRAM-SHA-256-PLUS offer through).
    Disable,
    /// When the server offers it over TLS (and the certificate names a hash).
    #[default]
    Prefer,
    /// Always: a server that asks for anything but SCRAM-SHA-256-PLUS over TLS, or
    /// lets pgopt in without it, is refused.
    Require,
}

/// Whether pgopt uses TLS to servers, and what it checks: libpq's `sslmode` values,
/// weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum ServerTlsMode {
    Disable,
    /// TLS when the server offers it, plain otherwise (libpq's and PgBouncer's default).
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is checked only against `ca_file`, if set.
    Require,
    /// TLS with a certificate signed by a CA in `ca_file`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

/// TLS to servers: the mode and the PEM file of trusted CA certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    pub ca_file: Option<std::path::PathBuf>,
    /// A certificate (chain) and key pgopt presents to servers that ask for one
    /// (PgBouncer's `server_tls_cert_file` and `server_tls_key_file`).
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// SCRAM bound to the TLS channel (libpq's `channel_binding`).
    pub channel_binding: ChannelBinding,
}

/// The name of the virtual database that serves the admin console.
pub const ADMIN_DATABASE: &str = "pgopt";

/// PgBouncer's name for its admin console: pgopt answers to it too, so monitoring
/// made for PgBouncer (exporters, dashboards, scripts running SHOW STATS) works
/// unchanged — unless a database entry has that name.
pub const PGBOUNCER_ADMIN_DATABASE: &str = "pgbouncer";

/// The name of the fallback database (PgBouncer's `*`): a client asking for a database
/// not listed gets the database of its own name on this entry's server, with this
/// entry's login and pool settings. Its `dbname` is not used.
pub const FALLBACK_DATABASE: &str = "*";

impl Config {
    /// The one database configured, when there is exactly one (and no fallback `*`).
    pub fn sole_database(&self) -> Option<Cow<'_, Database>> {
        match self.databases.as_slice() {
            [only] if only.name != FALLBACK_DATABASE => Some(Cow::Borrowed(only)),
            _ => None,
        }
    }

    /// The database clients reach by the name `name`: the entry of that name, else
    /// the fallback entry (`*`) aimed at the server's database `name`. Never the admin
    /// console, and never the `*` entry itself by name.
    pub fn database(&self, name: &str) -> Option<Cow<'_, Database>> {
        if self.is_admin_database(name) {
            return None;
        }
        let listed = self
            .databases
            .iter()
            .find(|d| d.name == name && d.name != FALLBACK_DATABASE);
        if let Some(db) = listed {
            return Some(Cow::Borrowed(db));
        }
        let fallback = self
            .databases
            .iter()
            .find(|d| d.name == FALLBACK_DATABASE)?;
        Some(Cow::Owned(Database {
            name: name.to_string(),
            dbname: name.to_string(),
            ..fallback.clone()
        }))
    }

    /// Gives each database's host list `server_login_retry` (its clones, the pools'
    /// targets, share it).
    pub fn apply_login_retry(&self) {
        for db in &self.databases {
            db.more_hosts.set_aside_for(self.server_login_retry);
        }
    }

    /// Whether `name` is the admin console's: `pgopt`, or PgBouncer's `pgbouncer`
    /// when no database entry takes that name.
    pub fn is_admin_database(&self, name: &str) -> bool {
        name == ADMIN_DATABASE
            || (name == PGBOUNCER_ADMIN_DATABASE && !self.databases.iter().any(|d| d.name == name))
    }

    /// Whether `name` is served by the fallback entry rather than an entry of its own.
    pub fn is_fallback(&self, name: &str) -> bool {
        !self.is_admin_database(name)
            && !self
                .databases
                .iter()
                .any(|d| d.name == name && d.name != FALLBACK_DATABASE)
    }

    /// What the proxy cannot serve as configured, in words for the operator.
    pub fn check(&self) -> Result<(), String> {
        let cert = match &self.hba {
            Some(hba) => hba.needs_client_certificates(),
            None => self.client_auth == ClientAuth::Cert,
        };
        if let Some(hba) = &self.hba {
            for (map, line) in hba.maps() {
                match &self.ident {
                    None => {
                        return Err(format!(
                            "line {line} of auth_hba_file names map \"{map}\": user name maps \
                             need proxy.auth_ident_file"
                        ))
                    }
                    Some(ident) if !ident.has(map) => {
                        return Err(format!(
                            "line {line} of auth_hba_file names map \"{map}\", which \
                             auth_ident_file does not have"
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        if cert && (self.client_tls.ca_file.is_none() || self.client_tls.mode == TlsMode::Disable) {
            return Err(
                "the cert method and the clientcert option need TLS to clients with a CA file \
                 for their certificates (proxy.tls_mode and proxy.tls_ca_file)"
                    .into(),
            );
        }
        for db in &self.databases {
            if db.name == FALLBACK_DATABASE && !db.replicas.is_empty() {
                return Err(format!(
                    "the fallback database {FALLBACK_DATABASE:?} cannot have replicas: list the \
                     databases that read from replicas by name"
                ));
            }
        }
        Ok(())
    }

    /// The pool mode of `db`'s pools: its own, else the proxy-wide one.
    pub fn pool_mode_of(&self, db: &Database) -> PoolMode {
        db.pool.mode.unwrap_or(self.pool_mode)
    }

    /// The listed user `name`, if any.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The pool mode of `user`'s pool of `db`: the user's own (as in PgBouncer), else
    /// the database's.
    pub fn pool_mode_for(&self, db: &Database, user: &str) -> PoolMode {
        self.user(user)
            .and_then(|u| u.pool_mode)
            .unwrap_or_else(|| self.pool_mode_of(db))
    }

    /// `max_db_connections` of `db`: its own, else the proxy-wide one.
    pub fn max_db_connections_of(&self, db: &Database) -> usize {
        db.pool
            .max_db_connections
            .unwrap_or(self.max_db_connections)
    }

    /// `max_user_connections` of `user`: its own, else the proxy-wide one.
    pub fn max_user_connections_of(&self, user: &str) -> usize {
        self.user(user)
            .and_then(|u| u.max_user_connections)
            .unwrap_or(self.max_user_connections)
    }

    /// Server connections per (database, user) for `db`: its own size, else
    /// `default_pool_size`.
    pub fn pool_size_of(&self, db: &Database) -> usize {
        db.pool.size.unwrap_or(self.default_pool_size)
    }

    /// Connections kept open per pool of `db` (never more than its size).
    pub fn min_pool_size_of(&self, db: &Database) -> usize {
        db.pool
            .min_size
            .unwrap_or(self.min_pool_size)
            .min(self.pool_size_of(db))
    }

    pub fn reserve_pool_size_of(&self, db: &Database) -> usize {
        db.pool.reserve_size.unwrap_or(self.reserve_pool_size)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            unix_socket_dir: None,
            unix_socket_mode: 0o777,
            unix_socket_group: None,
            listen_also: Vec::new(),
            so_reuseport: false,
            log_connections: false,
            log_disconnections: false,
            application_name_add_host: false,
            server_round_robin: false,
            pool_mode: PoolMode::Transaction,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Duration::from_secs(5),
            max_client_conn: 1000,
            workers: 1,
            query_wait_timeout: Duration::from_secs(120),
            server_connect_timeout: Duration::from_secs(5),
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            server_check_delay: Duration::from_secs(30),
            server_login_retry: DEFAULT_LOGIN_RETRY,
            idle_transaction_timeout: Duration::ZERO,
            client_login_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::ZERO,
            query_timeout: Duration::ZERO,
            tcp_keepalive: Some(Keepalive::default()),
            max_db_connections: 0,
            max_user_connections: 0,
            shutdown_timeout: Duration::from_secs(30),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            admin_listen: None,
            client_tls: ClientTls::default(),
            server_tls: ServerTls::default(),
            client_auth: ClientAuth::Trust,
            hba: None,
            ident: None,
            users: Vec::new(),
            auth_user: None,
            auth_query: crate::auth_query::DEFAULT_AUTH_QUERY.to_string(),
            auth_query_cache_ttl: Duration::from_secs(60),
            databases: Vec::new(),
            max_message_len: pgopt_wire::DEFAULT_MAX_MESSAGE_LEN,
            max_prepared_statements: DEFAULT_MAX_PREPARED_STATEMENTS,
            insight: crate::observe::InsightSettings::default(),
            routing: Routing::default(),
            cache: crate::cache::CacheSettings::default(),
        }
    }
}

/// `max_prepared_statements`' default: a few megabytes of plans per server connection.
pub const DEFAULT_MAX_PREPARED_STATEMENTS: usize = 1000;

/// Why the admin console's `SET` refused a setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    /// No setting SET changes (the admin console tells apart those SHOW CONFIG lists
    /// from names that are none).
    Unknown(String),
    /// A value the setting does not take.
    Invalid(String),
    /// The changed config could not be applied.
    Failed(String),
}

impl Config {
    /// Changes one setting as PgBouncer's `SET key = value` on the admin console does:
    /// sizes and limits as whole numbers; timeouts as a duration (`30s`, `500ms`,
    /// `2min`, `1h`) or a bare number of seconds (PgBouncer's unit; `0` is off where
    /// off exists); `pool_mode` as `session` or `transaction`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SetError> {
        let key = key.to_ascii_lowercase();
        let invalid = |expected: &str| {
            SetError::Invalid(format!(
                "invalid value for parameter \"{key}\": \"{value}\" (expected {expected})"
            ))
        };
        let count = |min: usize, max: usize| {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| invalid(&format!("a whole number from {min} to {max}")))
        };
        let duration = || {
            parse_duration(value).map(|(d, _)| d).ok_or_else(|| {
                invalid("a duration such as 30s, 500ms, 2min or 1h, or a number of seconds")
            })
        };
        let flag = || match value.to_ascii_lowercase().as_str() {
            "1" | "on" | "true" | "yes" => Ok(true),
            "0" | "off" | "false" | "no" => Ok(false),
            _ => Err(invalid("on or off")),
        };
        match key.as_str() {
            "pool_mode" => {
                self.pool_mode = match value.to_ascii_lowercase().as_str() {
                    "session" => PoolMode::Session,
                    "transaction" => PoolMode::Transaction,
                    _ => return Err(invalid("session or transaction")),
                }
            }
            "default_pool_size" => self.default_pool_size = count(1, 10_000)?,
            "min_pool_size" => self.min_pool_size = count(0, 10_000)?,
            "reserve_pool_size" => self.reserve_pool_size = count(0, 10_000)?,
            "max_client_conn" => self.max_client_conn = count(1, 1_000_000)?,
            "max_db_connections" => self.max_db_connections = count(0, 100_000)?,
            "max_user_connections" => self.max_user_connections = count(0, 100_000)?,
            "max_prepared_statements" => self.max_prepared_statements = count(0, 1_000_000)?,
            "reserve_pool_timeout" => self.reserve_pool_timeout = duration()?,
            "query_wait_timeout" => self.query_wait_timeout = duration()?,
            "server_connect_timeout" => self.server_connect_timeout = duration()?,
            "server_idle_timeout" => self.server_idle_timeout = duration()?,
            "server_lifetime" => self.server_lifetime = duration()?,
            "server_check_delay" => self.server_check_delay = duration()?,
            "server_login_retry" => self.server_login_retry = duration()?,
            "idle_transaction_timeout" => self.idle_transaction_timeout = duration()?,
            "client_login_timeout" => self.client_login_timeout = duration()?,
            "client_idle_timeout" => self.client_idle_timeout = duration()?,
            "query_timeout" => self.query_timeout = duration()?,
            "shutdown_timeout" => self.shutdown_timeout = duration()?,
            "log_connections" => self.log_connections = flag()?,
            "log_disconnections" => self.log_disconnections = flag()?,
            "application_name_add_host" => self.application_name_add_host = flag()?,
            "server_round_robin" => self.server_round_robin = flag()?,
            other => {
                return Err(SetError::Unknown(format!(
                    "unrecognized configuration parameter \"{other}\" (SHOW CONFIG lists them)"
                )))
            }
        }
        Ok(())
    }
}

/// The longest duration pgopt takes (10⁹ s, some 31 years).
pub const NEVER: Duration = Duration::from_secs(1_000_000_000);

/// The bound of a round trip pgopt makes on a server connection (a health check, a
/// WAL position read, an `auth_query` lookup) and of its own connections' work (the
/// routing checker, catalog reads, the cache's listeners): `server_connect_timeout`,
/// or when that is 0 (no limit on a client's connect) PgBouncer's default of 15 s, so
/// a server that stopped answering holds none of them for good.
pub fn round_trip_bound(server_connect_timeout: Duration) -> Duration {
    if server_connect_timeout.is_zero() || server_connect_timeout >= NEVER {
        Duration::from_secs(15)
    } else {
        server_connect_timeout
    }
}

/// A timeout whose zero means no limit, as PgBouncer's `query_wait_timeout`,
/// `server_connect_timeout` and `server_idle_timeout` do: the duration to wait.
pub fn or_never(timeout: Duration) -> Duration {
    if timeout.is_zero() {
        NEVER
    } else {
        timeout
    }
}

/// `30s`, `500ms`, `2m` or `2min`, `1h`, `1d`, `1.5s`, or a bare number of seconds;
/// never negative, at most 10⁹ s. With whether a unit was written: the config file
/// takes a bare number only when it is 0, admin SET takes any as seconds (PgBouncer's).
pub fn parse_duration(text: &str) -> Option<(Duration, bool)> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok().filter(|n: &f64| n.is_finite())?;
    let unit = unit.trim();
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| *d <= NEVER)
        .map(|d| (d, !unit.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_is_shown_as_pgbouncer_shows_it() {
        let db = |more: Vec<(&str, u16)>| Database {
            name: "d".into(),
            host: "::1".into(),
            port: 5432,
            dbname: "d".into(),
            user: None,
            password: None,
            more_hosts: MoreHosts::new(
                more.into_iter().map(|(h, p)| (h.to_string(), p)).collect(),
                true,
            ),
            replicas: Vec::new(),
            pool: DatabasePool::default(),
        };
        assert_eq!(db(vec![]).hosts_text(), "::1");
        let list = db(vec![
            ("/run/pg", 5432),
            ("10.0.0.2", 6000),
            ("fe80::2", 5432),
        ]);
        assert_eq!(list.hosts_text(), "[::1],/run/pg,10.0.0.2:6000,[fe80::2]");
        // Round robin moves on each time; the other policy stays where it worked.
        let turns: Vec<usize> = (0..5).map(|_| list.more_hosts.order()[0]).collect();
        assert_eq!(turns, vec![0, 1, 2, 3, 0]);
        let failover = MoreHosts::new(list.more_hosts.hosts.clone(), false);
        assert_eq!(failover.order()[0], 0);
        failover.worked(2);
        assert_eq!((failover.order()[0], failover.order()[0]), (2, 2));
        // Clones share the turn; equality ignores it.
        let copy = failover.clone();
        copy.worked(1);
        assert_eq!(failover.order()[0], 1);
        assert_eq!(
            failover,
            MoreHosts::new(list.more_hosts.hosts.clone(), false)
        );
        // A server that failed goes last until it works again or its time is up.
        let three = MoreHosts::new(vec![("b".into(), 1), ("c".into(), 1)], false);
        three.failed(0);
        assert_eq!(three.order(), vec![1, 2, 0]);
        three.worked(0);
        assert_eq!(three.order(), vec![0, 1, 2]);
        three.failed(1);
        three.set_aside_for(Duration::ZERO);
        assert_eq!(three.order(), vec![0, 1, 2]);
        // Round robin turns among the servers not set aside, evenly.
        let spread = MoreHosts::new(vec![("b".into(), 1), ("c".into(), 1)], true);
        spread.failed(0);
        let firsts: Vec<usize> = (0..4).map(|_| spread.order()[0]).collect();
        assert_eq!(firsts, vec![1, 2, 1, 2]);
        assert_eq!(spread.order().last(), Some(&0));
    }

    #[test]
    fn a_zero_timeout_is_no_limit_but_round_trips_stay_bounded() {
        assert_eq!(or_never(Duration::ZERO), NEVER);
        assert_eq!(or_never(Duration::from_secs(3)), Duration::from_secs(3));
        // A client's connect with no limit; a health check, a WAL position read or a
        // cancel on its way still end.
        for zero in [Duration::ZERO, or_never(Duration::ZERO)] {
            assert_eq!(round_trip_bound(zero), Duration::from_secs(15));
        }
        assert_eq!(
            round_trip_bound(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn set_changes_one_setting_or_says_why_not() {
        let mut c = Config::default();
        c.set("default_pool_size", "50").unwrap();
        c.set("POOL_MODE", "Session").unwrap();
        c.set("query_timeout", "2.5").unwrap();
        c.set("query_wait_timeout", "250ms").unwrap();
        c.set("server_lifetime", "2min").unwrap();
        c.set("max_prepared_statements", "0").unwrap();
        assert_eq!(c.max_prepared_statements, 0);
        assert_eq!(c.default_pool_size, 50);
        assert_eq!(c.pool_mode, PoolMode::Session);
        assert_eq!(c.query_timeout, Duration::from_millis(2500));
        assert_eq!(c.query_wait_timeout, Duration::from_millis(250));
        assert_eq!(c.server_lifetime, Duration::from_secs(120));
        for (key, value) in [
            ("default_pool_size", "0"),
            ("default_pool_size", "-3"),
            ("max_client_conn", "many"),
            ("query_timeout", "-1s"),
            ("query_timeout", "5 days"),
            ("query_timeout", "100000000000000000000"),
            ("pool_mode", "statement"),
        ] {
            assert!(
                matches!(c.set(key, value), Err(SetError::Invalid(_))),
                "{key} = {value}"
            );
        }
        assert!(matches!(
            c.set("listen", "0.0.0.0:1"),
            Err(SetError::Unknown(_))
        ));
        assert!(matches!(c.set("pool_size", "1"), Err(SetError::Unknown(_))));
        assert_eq!(c.default_pool_size, 50, "a refused SET changes nothing");
    }
}
