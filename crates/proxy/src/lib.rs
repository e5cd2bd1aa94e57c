//! The PostgreSQL wire-protocol proxy: listener, client sessions, authentication and
//! pools of server connections in session or transaction mode.
//!
//! Frames are relayed as bytes: the proxy looks only at message types and lengths on
//! the hot path, never decodes and re-encodes queries or rows; in transaction mode it
//! also reads the statement names of Parse/Bind/Describe/Close to carry named prepared
//! statements across server connections.

mod admin;
mod auth;
mod auth_query;
mod cache;
mod cache_views;
pub mod config;
mod ddl_watch;
mod error;
mod fence;
mod function_settings;
pub mod hba;
mod http;
pub mod ident;
mod insight_views;
mod io;
mod metrics;
mod net;
mod observe;
mod parses;
mod plans;
mod pool;
mod relay;
mod replan;
mod replication;
mod routing;
mod server;
mod server_tls;
mod session;
mod session_state;
mod shared;
mod statements;
mod stats;
mod tls;
mod views;
pub mod wal;
mod workers;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use auth_query::DEFAULT_AUTH_QUERY;
pub use cache::CacheSettings;
pub use config::{
    ChannelBinding, ClientAuth, ClientTls, Config, Database, DatabasePool, Keepalive, MoreHosts,
    PoolMode, ReadYourWrites, Replica, Routing, ServerTls, ServerTlsMode, TlsMode, User,
    ADMIN_DATABASE, FALLBACK_DATABASE,
};
pub use error::ProxyError;
pub use observe::InsightSettings;
pub use pgopt_cache::RedisConfig;
pub use plans::PlanSettings;
use shared::{Lifecycle, Shared};

/// A running proxy. Dropping it stops accepting new clients and ends the sessions on
/// its session threads (`Config::workers`); those on the runtime it was
/// started on go on.
pub struct Proxy {
    local_addr: SocketAddr,
    /// Removed when the proxy is dropped.
    unix_socket: Option<net::SocketFile>,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// Dropped after `tasks` are aborted: the session threads stop.
    _workers: workers::Workers,
}

/// Controls a running proxy from elsewhere (signal handlers): reload, shut down.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

/// What [`Proxy::start`] and RELOAD check of `config` beyond its values: the auth
/// method's needs, users' stored passwords, the TLS files (read, certificates
/// parsed). An error comes with the config key it is about (`auth`, `users`,
/// `tls_mode` for TLS to clients, `server_tls_mode` to servers).
pub fn check_tls(config: &Config) -> Result<(), (&'static str, ProxyError)> {
    config
        .check()
        .map_err(|e| ("auth", ProxyError::Config(e)))?;
    auth::prepare_users(&config.users).map_err(|e| ("users", e))?;
    shared::tls_acceptor_for(config).map_err(|e| ("tls_mode", e))?;
    server_tls::ServerTlsConnector::new(&config.server_tls).map_err(|e| ("server_tls_mode", e))?;
    Ok(())
}

impl Proxy {
    /// Binds `config.listen` (and `config.admin_listen` for `/metrics`) and starts
    /// serving clients on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Proxy, ProxyError> {
        config.check().map_err(ProxyError::Config)?;
        let users = auth::prepare_users(&config.users)?;
        let tls = shared::tls_acceptor_for(&config)?;
        let server_tls = server_tls::ServerTlsConnector::new(&config.server_tls)?;
        let insight = match config.insight.enabled {
            true => Some(Arc::new(
                observe::InsightState::new(&config.insight).map_err(ProxyError::Protocol)?,
            )),
            false => None,
        };
        let io = |source| ProxyError::Io {
            peer: "listener",
            source,
        };
        // Starting beside a running pgopt (so_reuseport): one answers on the address
        // already. Only then is a live Unix socket taken over (not, say, a
        // PostgreSQL's that listens on no TCP address).
        let beside = config.so_reuseport && listening(config.listen).await;
        let listener = bind_tcp(config.listen, config.so_reuseport).map_err(io)?;
        let local_addr = listener.local_addr().map_err(io)?;
        // More addresses (PgBouncer's listen_addr list), each on the same port when
        // it gives 0 (so the first's port, once an ephemeral one was picked, holds).
        let mut more = Vec::new();
        for addr in &config.listen_also {
            let mut addr = *addr;
            if addr.port() == 0 {
                addr.set_port(local_addr.port());
            }
            more.push(bind_tcp(addr, config.so_reuseport).map_err(io)?);
        }
        let admin = match config.admin_listen {
            Some(addr) => Some(bind_tcp(addr, config.so_reuseport).map_err(io)?),
            None => None,
        };
        let admin_addr = match &admin {
            Some(l) => Some(l.local_addr().map_err(io)?),
            None => None,
        };
        let cache = cache::ProxyCache::new(&config.cache)
            .map_err(ProxyError::Config)?
            .map(Arc::new);
        let (spawner, workers) =
            workers::start(workers::session_threads(config.workers)).map_err(|source| {
                ProxyError::Io {
                    peer: "session threads",
                    source,
                }
            })?;
        // The Unix socket last of what can fail: taking over a running pgopt's path
        // (so_reuseport) must not leave it without one when this start fails.
        let (unix, unix_socket) = match &config.unix_socket_dir {
            Some(dir) => {
                let (socket, file) = net::UnixSocket::bind(
                    dir,
                    local_addr.port(),
                    config.unix_socket_mode,
                    config.unix_socket_group.as_deref(),
                    beside,
                )
                .await
                .map_err(io)?;
                (Some(socket), Some(file))
            }
            None => (None, None),
        };
        warn_about_host_lists(&config, cache.is_some());
        config.apply_login_retry();
        let shared = Arc::new(Shared::new(config, users, tls, server_tls, insight, cache));
        let mut tasks = vec![
            tokio::spawn(accept(listener, unix, shared.clone(), spawner.clone())),
            tokio::spawn(shared.clone().maintain()),
            tokio::spawn(plans::capture_loop(shared.clone())),
        ];
        for listener in more {
            tasks.push(tokio::spawn(accept(
                listener,
                None,
                shared.clone(),
                spawner.clone(),
            )));
        }
        if let Some(admin) = admin {
            tasks.push(tokio::spawn(http::serve(admin, shared.clone())));
        }
        if let Some(cache) = shared.cache.as_ref().filter(|c| c.settings.wal_listener) {
            let config = shared.config();
            // The fallback's databases are not known in advance: writes to them that
            // bypass pgopt are not followed, so they are not cached (see `Relay::new`).
            let listed = listed_databases(
                &config,
                "cache.wal_listener follows the listed databases only: databases reached through \"*\" are not cached",
            );
            for db in listed {
                // A database never cached (session mode, or a host list that may hold a
                // standby, see `Relay::serves_cache`) has no listener: its stream
                // would hold up the others' (nothing is served until all stream).
                // (A user of its own pool mode may reach it in transaction mode.)
                let transaction = config.pool_mode_of(db) == PoolMode::Transaction
                    || config
                        .users
                        .iter()
                        .any(|u| u.pool_mode == Some(PoolMode::Transaction));
                if !transaction || db.more_hosts.may_reach_standby() {
                    continue;
                }
                cache.follow(db);
                // Counted before any streams: nothing is served until all do.
                cache
                    .counters
                    .wal_listeners
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tasks.push(tokio::spawn(cache::follow_wal(
                    cache.clone(),
                    db.clone(),
                    listener_connect(&shared),
                    shared.lifecycle(),
                )));
            }
        }
        let socket_path = unix_socket.as_ref().map(net::SocketFile::path);
        if let Some(cache) = &shared.cache {
            // (Weak: the cache is the shared state's.)
            let weak = Arc::downgrade(&shared);
            cache.on_schema_elsewhere(Box::new(move || {
                if let Some(shared) = weak.upgrade() {
                    shared.function_settings.changed_all();
                }
            }));
        }
        if let Some(cache) = shared.cache.as_ref().filter(|c| c.settings.ddl_listener) {
            let config = shared.config();
            let listed = listed_databases(
                &config,
                "cache.ddl_listener listens on the listed databases only: schema changes in databases reached through \"*\" are heard within 30 s",
            );
            for db in listed {
                let key = function_settings::store_key(&db.host, db.port, &db.dbname);
                let functions = shared.clone();
                tasks.push(tokio::spawn(ddl_watch::watch(
                    cache.clone(),
                    db.clone(),
                    listener_connect(&shared),
                    shared.lifecycle(),
                    move || functions.function_settings.changed(&key),
                )));
            }
        }
        tracing::debug!(%local_addr, ?socket_path, ?admin_addr, "pgopt proxy listening");
        Ok(Proxy {
            local_addr,
            unix_socket,
            admin_addr,
            shared,
            tasks,
            _workers: workers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Unix-domain socket it listens on too, when `unix_socket_dir` is set.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix_socket.as_ref().map(net::SocketFile::path)
    }

    /// Where `/metrics` is served, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs until the proxy has shut down (SHUTDOWN, or [`ProxyHandle::shutdown`]).
    pub async fn wait(&self) {
        let mut lifecycle = self.shared.lifecycle();
        let _ = lifecycle.wait_for(|s| *s == Lifecycle::Stopped).await;
    }
}

impl ProxyHandle {
    /// Where RELOAD (and SIGHUP, through [`ProxyHandle::reload`]) gets a new config.
    pub fn set_reloader(
        &self,
        reloader: impl Fn() -> Result<Config, String> + Send + Sync + 'static,
    ) {
        self.shared.set_reloader(Arc::new(reloader));
    }

    /// Re-reads the config with the reloader and applies it.
    pub fn reload(&self) -> Result<(), String> {
        self.shared.reload()
    }

    /// Applies `config` as RELOAD would.
    pub fn apply(&self, config: Config) -> Result<(), ProxyError> {
        self.shared.apply(config)
    }

    /// Graceful shutdown: stop accepting, let transactions finish (up to
    /// `shutdown_timeout`), close everything. [`Proxy::wait`] returns when done.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }
}

/// A TCP listener on `addr`; with `reuseport` (PgBouncer's `so_reuseport`) other
/// processes may listen on the same address too, so a new pgopt can start beside a
/// running one, which is then shut down (it stops accepting at once, and the kernel
/// sends every new connection to the new one) — a restart that refuses no client.
fn bind_tcp(addr: SocketAddr, reuseport: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As TcpListener::bind: a restart need not wait out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    // `[::]` beside `0.0.0.0` (listen_also): each its own family, as PgBouncer.
    if addr.is_ipv6() {
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Whether something accepts TCP connections at `addr` (an unspecified address is
/// tried on the loopback).
async fn listening(addr: SocketAddr) -> bool {
    let mut to = addr;
    if to.ip().is_unspecified() {
        to.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let connect = tokio::net::TcpStream::connect(to);
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), connect).await,
        Ok(Ok(_))
    )
}

/// Host lists that may hold a standby (no `target_session_attrs = read-write`): their
/// databases are not cached (a fill could read a standby behind the versions it was
/// taken under; see `Relay::new`), and with replicas their writes could reach a
/// standby.
fn warn_about_host_lists(config: &Config, cache: bool) {
    for db in &config.databases {
        if !db.more_hosts.may_reach_standby() {
            continue;
        }
        if cache {
            tracing::warn!(
                database = %db.name,
                "a host list without target_session_attrs = read-write may reach a standby: this database is not cached"
            );
        }
        if !db.replicas.is_empty() {
            tracing::warn!(
                database = %db.name,
                "a host list with replicas and without target_session_attrs = read-write: writes may reach a standby and fail"
            );
        }
    }
}

/// How the cache's listeners connect, from the proxy's current config (read at
/// start: `server_connect_timeout` and keepalive) and its server TLS (read at each
/// attempt).
fn listener_connect(shared: &Arc<Shared>) -> cache::ListenerConnect {
    let config = shared.config();
    let shared = Arc::downgrade(shared);
    cache::ListenerConnect {
        connect_timeout: config::round_trip_bound(config.server_connect_timeout),
        keepalive: config.tcp_keepalive,
        tls: Arc::new({
            let shared = shared.clone();
            move || shared.upgrade().and_then(|s| s.server_tls())
        }),
        current: Arc::new(move |name| {
            let shared = shared.upgrade()?;
            let config = shared.config();
            let db = config.databases.iter().find(|d| d.name == name)?;
            Some(cache::servers_of(db))
        }),
    }
}

/// The databases the config lists by name (not the `*` fallback's, which are not
/// known in advance); `warning` is logged when there is a fallback.
fn listed_databases<'c>(
    config: &'c Config,
    warning: &str,
) -> impl Iterator<Item = &'c config::Database> {
    if config
        .databases
        .iter()
        .any(|db| db.name == FALLBACK_DATABASE)
    {
        tracing::warn!("{warning}");
    }
    config
        .databases
        .iter()
        .filter(|db| db.name != FALLBACK_DATABASE)
}

/// Accepts clients on TCP and, when set, the Unix-domain socket until the proxy stops
/// running; the sockets close when it returns.
async fn accept(
    listener: TcpListener,
    unix: Option<net::UnixSocket>,
    shared: Arc<Shared>,
    spawner: Arc<workers::Spawner>,
) {
    let mut lifecycle = shared.lifecycle();
    let accept_unix = || async {
        match &unix {
            Some(socket) => (socket.listener.accept().await)
                .map(|(stream, _)| (net::PgStream::Unix(stream), socket.endpoint.clone())),
            None => std::future::pending().await,
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted
                .map(|(stream, peer)| (net::PgStream::Plain(stream), net::Endpoint::Tcp(peer))),
            accepted = accept_unix() => accepted,
            _ = async { lifecycle.wait_for(|s| *s != Lifecycle::Running).await.map(|_| ()) } => {
                // Dropping the listeners refuses new connections from here on.
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => spawner.spawn_session(stream, peer, shared.clone()),
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
