//! State every client session of one proxy shares: the current config (swapped on
//! RELOAD), users, pools, the client registry, cancel keys and the lifecycle
//! (running, draining, stopped).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use pgopt_wire::startup::CancelRequest;
use tokio::sync::{watch, Semaphore};

use crate::auth::{prepare_users, Credentials};
use crate::config::{or_never, Config, Database, TlsMode};
use crate::observe::InsightState;
use crate::pool::{Pool, PoolLimits, Pools};
use crate::routing::{Router, Routes};
use crate::server::{send_cancel, CancelInFlight, ServerTarget};
use crate::server_tls::ServerTlsConnector;
use crate::session::{CancelSlot, CancelTarget};
use crate::stats::ClientRegistry;
use crate::tls::Acceptor;
use crate::ProxyError;

/// Where the proxy is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lifecycle {
    Running,
    /// No new clients; each client is closed when its transaction ends.
    Draining,
    /// The drain timed out: every client is closed now.
    Closing,
    Stopped,
}

/// Re-reads the configuration for RELOAD and SIGHUP.
pub type Reloader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

pub struct Shared {
    config: RwLock<Arc<Config>>,
    /// The config the proxy started with: what settings a RELOAD can't change
    /// (`listen`, `workers`…) stay at, whatever the file says now (SHOW CONFIG).
    config_at_start: Arc<Config>,
    users: RwLock<Arc<HashMap<String, Credentials>>>,
    pub pools: Pools,
    /// Per (database, node): the server connections its pools hold open together.
    db_limits: Mutex<HashMap<(String, usize), Arc<crate::pool::ConnLimit>>>,
    /// Per user, shared by its pools (`max_user_connections`).
    user_limits: Mutex<HashMap<String, Arc<crate::pool::ConnLimit>>>,
    pub clients: Arc<ClientRegistry>,
    /// Moves on when a RELOAD changes a session timeout: sessions read them again.
    pub timeouts_version: AtomicU64,
    /// Bumped when a RELOAD changes a database's replicas: connected clients make
    /// their routes again before their next transaction.
    pub routes_version: AtomicU64,
    client_slots: Arc<Semaphore>,
    max_client_conn: AtomicUsize,
    cancels: Mutex<HashMap<(i32, i32), Weak<CancelTarget>>>,
    lifecycle: watch::Sender<Lifecycle>,
    reloader: Mutex<Option<Reloader>>,
    /// Held while a config is made and applied (RELOAD, SET, `ProxyHandle::apply`):
    /// one change never overwrites another that came in meanwhile.
    changing: Mutex<()>,
    /// PAUSE without a database, and PAUSE per database; pools created meanwhile
    /// start paused.
    paused: Mutex<(bool, HashSet<String>)>,
    /// DISABLE: databases that take no new clients.
    disabled: Mutex<HashSet<String>>,
    pub started: SystemTime,
    /// Clients turned away: over max_client_conn, failed logins.
    pub rejected_max_clients: AtomicU64,
    pub rejected_auth: AtomicU64,
    pub accepted: AtomicU64,
    /// Statement analysis (cached by shape) for session-state checks.
    pub analyzer: pgopt_sql::Analyzer,
    /// Transaction mode: each database's functions whose run may change settings.
    pub function_settings: crate::function_settings::Store,
    /// TLS to clients, when configured (swapped on RELOAD).
    tls: RwLock<Option<Acceptor>>,
    /// TLS to servers, unless disabled (swapped on RELOAD).
    server_tls: RwLock<Option<ServerTlsConnector>>,
    /// Query insight, unless disabled at start (RELOAD applies its settings, keeping
    /// the statistics).
    pub insight: Option<Arc<InsightState>>,
    /// Replica routers of the databases with replicas (replaced on RELOAD when their
    /// replicas or the routing policy change; sessions keep the one they started with).
    routers: RwLock<HashMap<String, Arc<Router>>>,
    /// The result cache, when enabled at start.
    pub cache: Option<Arc<crate::cache::ProxyCache>>,
    /// `auth_query`'s answers (cleared on RELOAD).
    pub auth_cache: crate::auth_query::LookupCache,
}

/// A router per database that has replicas; `old` ones are kept when unchanged.
fn routers_for(
    config: &Config,
    old: &HashMap<String, Arc<Router>>,
) -> HashMap<String, Arc<Router>> {
    config
        .databases
        .iter()
        .filter(|db| !db.replicas.is_empty())
        .map(|db| {
            let router = match old.get(&db.name) {
                Some(r) if r.same_as(&db.replicas, &config.routing) => r.clone(),
                was => Arc::new(Router::after(
                    was.map(|r| &**r),
                    &db.name,
                    &db.replicas,
                    config.routing.clone(),
                )),
            };
            (db.name.clone(), router)
        })
        .collect()
}

impl Shared {
    pub fn new(
        config: Config,
        users: HashMap<String, Credentials>,
        tls: Option<Acceptor>,
        server_tls: Option<ServerTlsConnector>,
        insight: Option<Arc<InsightState>>,
        cache: Option<Arc<crate::cache::ProxyCache>>,
    ) -> Shared {
        let analyzer = pgopt_sql::Analyzer::new(pgopt_sql::AnalyzerConfig {
            analysis: pgopt_sql::AnalysisConfig {
                read_only_functions: config.routing.safe_functions.clone(),
                ..Default::default()
            },
            ..Default::default()
        });
        Shared {
            cache,
            routers: RwLock::new(routers_for(&config, &HashMap::new())),
            insight,
            tls: RwLock::new(tls),
            server_tls: RwLock::new(server_tls),
            client_slots: Arc::new(Semaphore::new(config.max_client_conn)),
            max_client_conn: AtomicUsize::new(config.max_client_conn),
            config_at_start: Arc::new(config.clone()),
            config: RwLock::new(Arc::new(config)),
            users: RwLock::new(Arc::new(users)),
            pools: Pools::default(),
            db_limits: Mutex::default(),
            user_limits: Mutex::default(),
            clients: Arc::default(),
            timeouts_version: AtomicU64::new(0),
            routes_version: AtomicU64::new(0),
            cancels: Mutex::new(HashMap::new()),
            lifecycle: watch::Sender::new(Lifecycle::Running),
            reloader: Mutex::new(None),
            changing: Mutex::new(()),
            paused: Mutex::default(),
            disabled: Mutex::default(),
            started: SystemTime::now(),
            rejected_max_clients: AtomicU64::new(0),
            rejected_auth: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            analyzer,
            function_settings: Default::default(),
            auth_cache: crate::auth_query::LookupCache::default(),
        }
    }

    /// The config in force (a snapshot: RELOAD swaps in a new one).
    /// The config the proxy started with (see `config_at_start`).
    pub fn started_config(&self) -> &Config {
        &self.config_at_start
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn tls_acceptor(&self) -> Option<Acceptor> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn server_tls(&self) -> Option<ServerTlsConnector> {
        self.server_tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn users(&self) -> Arc<HashMap<String, Credentials>> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn client_slots(&self) -> Arc<Semaphore> {
        self.client_slots.clone()
    }

    /// The pool of (database, user), made from the config in force now (a RELOAD
    /// may have happened while the client logged in); `None` when the database is no
    /// longer configured. `found` are the credentials `auth_query` found for a user
    /// the config does not list.
    pub fn pool_for(
        &self,
        database: &str,
        user: &str,
        found: Option<&Credentials>,
    ) -> Option<Arc<Pool>> {
        self.node_pool(database, user, found, None)
    }

    /// The replicas a client of (database, user) may read from, with its pools for
    /// them; `None` for a database without replicas, and in session mode (a session's
    /// state lives on one server).
    pub fn routes_for(&self, primary: &Arc<Pool>, found: Option<&Credentials>) -> Option<Routes> {
        if primary.mode != crate::config::PoolMode::Transaction {
            return None;
        }
        let router = self.router(&primary.database)?;
        let pools = (0..router.replicas.len())
            .map(|i| {
                let node = (i, router.replicas[i].clone());
                self.node_pool(&primary.database, &primary.user, found, Some(node))
            })
            .collect::<Option<Vec<_>>>()?;
        // (Not for a pool a RELOAD replaced, which a client connected before uses.)
        if self.pools.is_current(primary) {
            router.adopt(primary, &pools, self.lifecycle());
        }
        Some(Routes { router, pools })
    }

    /// The router of `database`, if it has replicas.
    pub fn router(&self, database: &str) -> Option<Arc<Router>> {
        self.routers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(database)
            .cloned()
    }

    /// Every router, by database name.
    pub fn routers(&self) -> Vec<Arc<Router>> {
        let mut v: Vec<_> = self
            .routers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.database.cmp(&b.database));
        v
    }

    /// The pool of (database, user) on the primary (`node: None`) or on a replica.
    fn node_pool(
        &self,
        database: &str,
        user: &str,
        found: Option<&Credentials>,
        node: Option<(usize, Arc<crate::routing::Node>)>,
    ) -> Option<Arc<Pool>> {
        // Lock order: `paused` before the pool map (as in `set_paused`).
        let paused = lock(&self.paused);
        let paused = paused.0 || paused.1.contains(database);
        let config = self.config();
        let users = self.users();
        let db = config.database(database)?;
        let db = db.as_ref();
        let server_tls = self.server_tls();
        // (What auth_query found is the client's: the password of a forced user only
        // when the client logged in as that user.)
        let creds_of = |name: &str| users.get(name).or(found.filter(|_| name == user));
        let mut target = target_for(db, user, creds_of, server_tls);
        if let Some((_, n)) = &node {
            target.point_at(n);
        }
        let index = node.as_ref().map_or(0, |(i, _)| i + 1);
        // A user's own settings are the server login's (the database's forced user
        // when it has one), as PgBouncer keys them; so is the pool: every client of a
        // database that forces a user shares one pool of `pool_size` (not one per
        // client user), as in PgBouncer.
        let login = target.user.clone();
        let pooled = pool_user(db, user);
        let mode = config.pool_mode_for(db, &login);
        // A client that brings no password for the forced user (only another login
        // knew it, from auth_query) takes the pool as it is.
        let keeps = |pool: &Pool| {
            pool.target == target
                || (db.user.is_some()
                    && target.password.is_none()
                    && target.md5_hash.is_none()
                    && pool.target.same_login(&target)
                    && pool.target.tls.is_some() == target.tls.is_some())
        };
        Some(self.pools.get_or_replace(
            (database, pooled, index),
            |pool| keeps(pool) && pool.mode == mode,
            |stats| {
                let db_limit = self.db_limit(database, index);
                db_limit.set_max(config.max_db_connections_of(db));
                let user_limit = self.user_limit(&login);
                user_limit.set_max(config.max_user_connections_of(&login));
                let pool = Pool::new(
                    (database, pooled),
                    mode,
                    target.clone(),
                    limits_for(&config, db),
                    node,
                    (db_limit, user_limit),
                    stats,
                );
                if paused {
                    pool.pause();
                }
                pool
            },
        ))
    }

    /// Server connections `user`'s pools hold open now (SHOW USERS).
    pub fn user_connections(&self, user: &str) -> usize {
        lock(&self.user_limits).get(user).map_or(0, |l| l.open())
    }

    /// Every pool still alive: those in the map, and those a RELOAD replaced that
    /// sessions still use (PAUSE, RESUME and RECONNECT reach them too).
    pub fn live_pools(&self) -> Vec<Arc<Pool>> {
        let limits: Vec<_> = lock(&self.db_limits).values().cloned().collect();
        limits.iter().flat_map(|l| l.pools()).collect()
    }

    /// The [`crate::pool::ConnLimit`] of `user`'s pools.
    fn user_limit(&self, user: &str) -> Arc<crate::pool::ConnLimit> {
        shared_limit(&mut lock(&self.user_limits), user.to_string())
    }

    /// The [`crate::pool::ConnLimit`] of `database`'s pools on node `index`.
    fn db_limit(&self, database: &str, index: usize) -> Arc<crate::pool::ConnLimit> {
        shared_limit(&mut lock(&self.db_limits), (database.to_string(), index))
    }

    /// DISABLE (`on`) and ENABLE: whether new clients of `db` are refused.
    pub fn set_disabled(&self, db: &str, on: bool) {
        let mut disabled = lock(&self.disabled);
        if on {
            disabled.insert(db.to_string());
        } else {
            disabled.remove(db);
        }
    }

    pub fn is_disabled(&self, db: &str) -> bool {
        lock(&self.disabled).contains(db)
    }

    /// KILL: every client of `db` is disconnected now and its server connections
    /// closed; the database is paused, so new clients wait for RESUME (as PgBouncer
    /// does).
    pub fn kill(&self, db: &str) {
        self.set_paused(Some(db), true);
        for client in self.clients.list() {
            if client.identity().1 == db {
                client.kill();
            }
        }
        self.reconnect(Some(db));
    }

    /// RECONNECT: every server connection of `db` (of every database: `None`) closes,
    /// the idle ones now, the lent ones when released.
    pub fn reconnect(&self, db: Option<&str>) {
        for pool in self.live_pools() {
            if db.is_none_or(|d| pool.database == d) {
                pool.reconnect();
            }
        }
    }

    /// Server connections of `db` (or of every database) that will close instead of
    /// being used again, still open: marked by a RECONNECT or KILL, or of a pool a
    /// RELOAD replaced (SHOW SERVERS' `close_needed`).
    pub fn closing(&self, db: Option<&str>) -> usize {
        self.live_pools()
            .iter()
            .filter(|pool| db.is_none_or(|d| pool.database == d))
            .map(|pool| {
                let servers = pool.servers.list();
                let replaced = !self.pools.is_current(pool);
                servers
                    .iter()
                    .filter(|s| pool.to_close(s, replaced))
                    .count()
            })
            .sum()
    }

    /// Whether everything is paused (PAUSE without a database).
    pub fn paused_all(&self) -> bool {
        lock(&self.paused).0
    }

    /// Whether database `db` itself is paused (PAUSE of it, or KILL), whether it has
    /// pools yet or not. As PgBouncer's, this is apart from a PAUSE of everything:
    /// each is undone by its own RESUME.
    pub fn is_db_paused(&self, db: &str) -> bool {
        lock(&self.paused).1.contains(db)
    }

    /// Databases paused themselves (see [`Shared::is_db_paused`]), sorted.
    pub fn paused_dbs(&self) -> Vec<String> {
        let mut dbs: Vec<String> = lock(&self.paused).1.iter().cloned().collect();
        dbs.sort();
        dbs
    }

    /// PAUSE (`true`) or RESUME (`false`) one database, or everything (which leaves
    /// the databases paused themselves paused: as PgBouncer's flags, the two are
    /// apart). A database's pools are paused while either is.
    pub fn set_paused(&self, db: Option<&str>, on: bool) {
        // Lock order: `paused` before the pool map (as in `pool_for`).
        let mut paused = lock(&self.paused);
        match (db, on) {
            (None, on) => paused.0 = on,
            (Some(db), true) => {
                paused.1.insert(db.to_string());
            }
            (Some(db), false) => {
                paused.1.remove(db);
            }
        }
        for pool in self.live_pools() {
            if paused.0 || paused.1.contains(&pool.database) {
                pool.pause();
            } else {
                pool.resume();
            }
        }
    }

    /// Housekeeping every second: pool minimums and idle timeouts, and every
    /// `STATS_PERIOD` the averages SHOW STATS reports.
    pub async fn maintain(self: Arc<Self>) {
        const STATS_PERIOD: Duration = Duration::from_secs(15);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut period_start = Instant::now();
        let mut lifecycle = self.lifecycle();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = lifecycle.changed() => {
                    if *lifecycle.borrow_and_update() >= Lifecycle::Stopped {
                        return;
                    }
                }
            }
            let roll = period_start.elapsed() >= STATS_PERIOD;
            let secs = period_start.elapsed().as_secs_f64();
            if roll {
                period_start = Instant::now();
            }
            // The fallback's pools are made on demand, one per database name a
            // client asked for (existing or not): each goes once nothing uses it.
            let config = self.config();
            let dropped = self
                .pools
                .remove_unused(|p| config.is_fallback(&p.database));
            if dropped > 0 {
                tracing::debug!(
                    pools = dropped,
                    "dropped unused pools of the fallback database"
                );
            }
            for pool in self.pools.list() {
                if roll {
                    pool.stats.roll_period(secs);
                }
                // One task per pool, never two at once: a server that black-holes
                // connects stalls only its own pool's housekeeping.
                if !pool.maintaining.swap(true, Relaxed) {
                    tokio::spawn(async move {
                        pool.maintain().await;
                        pool.maintaining.store(false, Relaxed);
                    });
                }
            }
        }
    }

    pub fn register_cancel(&self, key: CancelRequest, slot: &CancelSlot) {
        lock(&self.cancels).insert((key.process_id, key.secret_key), Arc::downgrade(slot));
    }

    pub fn unregister_cancel(&self, key: CancelRequest) {
        lock(&self.cancels).remove(&(key.process_id, key.secret_key));
    }

    /// Forwards a client's CancelRequest to the server running its query, if any; a
    /// client waiting for a server connection instead gives up its request.
    pub async fn forward_cancel(&self, request: CancelRequest) {
        // Counted on its way under the client's lock, which the relay takes to let
        // the connection go: either the connection is not lent again until the
        // cancel arrived, or the cancel finds no connection (its query ended).
        let flight = {
            let cancels = lock(&self.cancels);
            let Some(slot) = cancels
                .get(&(request.process_id, request.secret_key))
                .and_then(Weak::upgrade)
            else {
                return;
            };
            // (Counted in flight under the lock, as said above.)
            let route = lock(&slot.route);
            if route.is_some() && slot.setting_up.load(Relaxed) {
                // It goes once pgopt's queries ahead of the request are answered.
                slot.deferred.store(true, Relaxed);
                return;
            }
            let flight = route.clone().map(CancelInFlight::new);
            if flight.is_none() {
                // No server connection: a client waiting for one gives up its request.
                slot.waiting.notify_waiters();
            }
            flight
        };
        if let Some(flight) = flight {
            // (Bounded: the connection is not lent again until it arrives.)
            let timeout = crate::config::round_trip_bound(self.config().server_connect_timeout);
            send_cancel(&flight.0, timeout).await;
        }
    }

    pub fn lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    pub fn lifecycle_now(&self) -> Lifecycle {
        *self.lifecycle.borrow()
    }

    /// Moves the lifecycle on and wakes every session to look at it.
    fn set_lifecycle(&self, state: Lifecycle) {
        self.lifecycle.send_replace(state);
        for client in self.clients.list() {
            client.wake.notify_one();
        }
    }

    pub fn set_reloader(&self, reloader: Reloader) {
        *lock(&self.reloader) = Some(reloader);
    }

    /// RELOAD: re-reads the config through the reloader and applies it.
    pub fn reload(&self) -> Result<(), String> {
        let reloader = lock(&self.reloader).clone();
        let Some(reloader) = reloader else {
            return Err("this proxy was started without a config file to reload".into());
        };
        let _changing = lock(&self.changing);
        let config = reloader()?;
        self.apply_now(config).map_err(|e| e.to_string())
    }

    /// The admin console's `SET key = value`: the running config with one setting
    /// changed, applied as RELOAD applies one (until the next RELOAD).
    pub fn set(&self, key: &str, value: &str) -> Result<(), crate::config::SetError> {
        let _changing = lock(&self.changing);
        let mut config = (*self.config()).clone();
        config.set(key, value)?;
        self.apply_now(config)
            .map_err(|e| crate::config::SetError::Failed(e.to_string()))
    }

    /// Applies a new config. Takes effect at once: users, auth method, pool limits,
    /// timeouts (connected sessions' too), max_client_conn, the slow log, N+1 and plan-capture settings, pausing
    /// or resuming query insight (`insight.enabled`). Databases whose server or pool mode changed,
    /// or that are gone, get new pools (or none): their connected clients are closed before their
    /// next transaction (see `Pool::retire`); a new password alone makes a new pool for new
    /// clients, and those connected finish on the old one. `listen`, `admin_listen`,
    /// `[cache]` and `routing.safe_functions` need a restart.
    pub fn apply(&self, new: Config) -> Result<(), ProxyError> {
        let _changing = lock(&self.changing);
        self.apply_now(new)
    }

    /// [`Shared::apply`], with `changing` held by the caller.
    fn apply_now(&self, mut new: Config) -> Result<(), ProxyError> {
        new.check().map_err(ProxyError::Config)?;
        // A host list the reload leaves as it was keeps its turn (pools it keeps share
        // it with those it makes).
        let old = self.config();
        for db in &mut new.databases {
            if let Some(was) = old.databases.iter().find(|d| d.name == db.name) {
                if (&was.host, was.port, &was.more_hosts) == (&db.host, db.port, &db.more_hosts) {
                    db.more_hosts = was.more_hosts.clone();
                }
            }
        }
        let users = prepare_users(&new.users)?;
        let tls = tls_acceptor_for(&new)?;
        let server_tls = ServerTlsConnector::new(&new.server_tls)?;
        // Passwords changed on the server or a new auth_query apply from now on.
        self.auth_cache.clear();
        match &self.insight {
            Some(insight) => insight
                .apply(&old.insight, &new.insight)
                .map_err(ProxyError::Protocol)?,
            None if new.insight.enabled => tracing::warn!(
                "insight.enabled: query insight was off when pgopt started; turning it on takes a restart"
            ),
            None => {}
        }
        if (
            &new.listen,
            &new.listen_also,
            &new.admin_listen,
            &new.unix_socket_dir,
            new.unix_socket_mode,
            &new.unix_socket_group,
            new.so_reuseport,
        ) != (
            &old.listen,
            &old.listen_also,
            &old.admin_listen,
            &old.unix_socket_dir,
            old.unix_socket_mode,
            &old.unix_socket_group,
            old.so_reuseport,
        ) {
            tracing::warn!(
                "listen, admin_listen, so_reuseport and unix_socket_dir/mode/group changes take effect after a restart"
            );
        }
        // The configured count, not the threads it made: with 0 (one per core) a
        // changed core count alone is not a change of the config.
        if new.workers != old.workers {
            tracing::warn!("a change of worker threads takes effect after a restart");
        }
        let servers = |c: &Config| {
            c.databases
                .iter()
                .map(|d| (d.name.clone(), d.hosts_text(), d.port, d.dbname.clone()))
                .collect::<Vec<_>>()
        };
        if self.cache.as_ref().is_some_and(|c| c.settings.wal_listener)
            && servers(&new) != servers(&old)
        {
            tracing::warn!(
                "cache.wal_listener follows the databases pgopt started with: added or moved \
                 databases are not cached until a restart"
            );
        }
        if new.cache != old.cache {
            // (Read at start: its tables, TTLs, listeners and Redis shape what every
            // session and entry holds.)
            tracing::warn!(
                "[cache] changes take effect after a restart: until then the cache serves \
                 as configured at start (CACHE FLUSH on the admin console empties it now)"
            );
        }
        if new.routing.safe_functions != old.routing.safe_functions {
            // Verdicts are cached per statement text and kept with prepared statements.
            tracing::warn!("routing.safe_functions changes take effect after a restart");
        }
        let routers = {
            let old = self.routers.read().unwrap_or_else(|p| p.into_inner());
            routers_for(&new, &old)
        };
        // Every limit, those of pools a RELOAD replaced included (a database gone keeps
        // its own until its pools are).
        for ((name, _), limit) in lock(&self.db_limits).iter() {
            if let Some(db) = new.database(name) {
                limit.set_max(new.max_db_connections_of(&db));
            }
        }
        for (user, limit) in lock(&self.user_limits).iter() {
            limit.set_max(new.max_user_connections_of(user));
        }
        // Whether a pool logs in to the same server in the same pool mode as the new
        // config says (`same_login`, `same_mode`), and whether in every respect, its
        // password and TLS included (`same_server`).
        let compare = |pool: &Pool| {
            let db = new.database(&pool.database);
            let db = db.as_deref();
            let (same_login, same_server) = db.map_or((false, false), |db| {
                let mut target =
                    target_for(db, &pool.user, |name| users.get(name), server_tls.clone());
                if let Some((i, node)) = &pool.node {
                    // The same replica, still in this database's router; else one still
                    // configured (a router made anew for another replica list): its
                    // clients may read on there until they reconnect.
                    let router = routers.get(&db.name);
                    match router.and_then(|r| r.replicas.get(*i)) {
                        Some(n) if Arc::ptr_eq(n, node) => target.point_at(n),
                        _ => {
                            let kept = router.is_some_and(|r| {
                                r.replicas
                                    .iter()
                                    .any(|n| (&n.host, n.port) == (&node.host, node.port))
                            });
                            return (kept, false);
                        }
                    }
                }
                // An auth_query user's password came from the server, not the config.
                let listed = users.contains_key(&target.user) || db.password.is_some();
                let same_login = target.same_login(&pool.target);
                (same_login, same_login && (!listed || target == pool.target))
            });
            let same_mode =
                db.is_some_and(|db| new.pool_mode_for(db, &pool.target.user) == pool.mode);
            (same_login && same_mode, same_server && same_mode)
        };
        // What becomes of each pool, done once the new config is in place: a client
        // a retired pool wakes moves to the pool the new config gives it.
        let mut retiring = Vec::new();
        let mut replaced = Vec::new();
        // Pools an earlier RELOAD replaced for a new password, which clients still use:
        // retired too when their server or mode is not the new config's.
        for pool in self.live_pools() {
            if !pool.is_retired() && !self.pools.is_current(&pool) && !compare(&pool).0 {
                retiring.push(pool);
            }
        }
        for pool in self.pools.list() {
            let db = new.database(&pool.database);
            match (db, compare(&pool)) {
                (Some(db), (_, true)) => pool.set_limits(limits_for(&new, &db)),
                // A new password or TLS setting: new clients get a new pool, those
                // connected finish on this one.
                (Some(_), (true, false)) => replaced.push(pool),
                // Another server (a failover), another pool mode, or no database:
                // its transaction-mode clients move to the new pool between
                // transactions; the others are closed before their next one.
                _ => retiring.push(pool),
            }
        }
        let max = new.max_client_conn;
        let old_max = self.max_client_conn.swap(max, Relaxed);
        if max > old_max {
            self.client_slots.add_permits(max - old_max);
        } else if max < old_max {
            let slots = self.client_slots.clone();
            let excess = (old_max - max) as u32;
            crate::workers::spawn_background(async move {
                if let Ok(p) = slots.acquire_many_owned(excess).await {
                    p.forget();
                }
            });
        }
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        *self.server_tls.write().unwrap_or_else(|p| p.into_inner()) = server_tls;
        let same_routers = {
            let old = self.routers.read().unwrap_or_else(|p| p.into_inner());
            // (`routers_for` keeps a router only under its own database's name.)
            let mut same = old.len() == routers.len();
            for (db, router) in old.iter() {
                if !routers.get(db).is_some_and(|n| Arc::ptr_eq(n, router)) {
                    router.superseded.store(true, Relaxed);
                    same = false;
                }
            }
            same
        };
        *self.routers.write().unwrap_or_else(|p| p.into_inner()) = routers;
        let timeouts = |c: &Config| {
            (
                c.idle_transaction_timeout,
                c.client_idle_timeout,
                c.query_timeout,
            )
        };
        let new_timeouts = timeouts(&new) != timeouts(&old);
        // Last, with nothing left to fail: the lists' clones in pools it keeps see it.
        new.apply_login_retry();
        let new = Arc::new(new);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        for pool in replaced {
            self.pools.remove(&pool);
            pool.close_idle();
        }
        let moved = !retiring.is_empty();
        for pool in retiring {
            self.pools.remove(&pool);
            pool.retire();
        }
        self.pools.keep_carried(|db| new.database(db).is_some());
        // A database the config no longer has is paused or disabled no more: added
        // again, it starts afresh, as a new entry does.
        lock(&self.paused).1.retain(|db| new.database(db).is_some());
        lock(&self.disabled).retain(|db| new.database(db).is_some());
        if !same_routers {
            self.routes_version.fetch_add(1, SeqCst);
        }
        if moved || !same_routers {
            // Idle clients follow at once (see `Relay::serve`).
            for client in self.clients.list() {
                client.wake.notify_one();
            }
        }
        if new_timeouts {
            // Sessions waiting with a timer (or none) set by the old values.
            self.timeouts_version.fetch_add(1, SeqCst);
            for client in self.clients.list() {
                client.wake.notify_one();
            }
        }
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Starts a graceful shutdown (idempotent): no new clients; each client is closed
    /// when its transaction ends; after `shutdown_timeout` the rest are closed.
    pub fn shutdown(self: &Arc<Self>) {
        let started = self.lifecycle.send_if_modified(|state| {
            let first = *state == Lifecycle::Running;
            if first {
                *state = Lifecycle::Draining;
            }
            first
        });
        if !started {
            return;
        }
        for client in self.clients.list() {
            client.wake.notify_one();
        }
        let timeout = self.config().shutdown_timeout;
        // Clients waiting for a server connection hear 57P01 at once (also on pools a
        // RELOAD replaced).
        for pool in self.live_pools() {
            pool.close();
        }
        let shared = self.clone();
        crate::workers::spawn_background(async move {
            tracing::info!(
                clients = shared.clients.len(),
                timeout_ms = timeout.as_millis() as u64,
                "shutting down: letting transactions finish"
            );
            let deadline = Instant::now() + timeout;
            while shared.clients.len() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if shared.clients.len() > 0 {
                tracing::warn!(
                    clients = shared.clients.len(),
                    "shutdown timeout: closing the remaining clients"
                );
                shared.set_lifecycle(Lifecycle::Closing);
                // Killed too: a session blocked writing to a client that stopped
                // reading gives up (its server connection closes) instead of holding
                // on past the shutdown.
                for client in shared.clients.list() {
                    client.kill();
                }
                let deadline = Instant::now() + Duration::from_secs(2);
                while shared.clients.len() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            for pool in shared.live_pools() {
                pool.close_idle();
            }
            // The other instances sharing Redis need not wait for this one's heartbeats
            // (unless clients still run here: then they give it up in time, ending
            // every value).
            if let Some(l2) = shared.cache.as_ref().and_then(|c| c.l2.as_ref()) {
                if shared.clients.len() == 0 {
                    l2.leave().await;
                }
            }
            shared.set_lifecycle(Lifecycle::Stopped);
        });
    }
}

/// The TLS acceptor a config asks for: none when TLS is disabled; an error naming the
/// missing or bad file otherwise.
pub fn tls_acceptor_for(config: &Config) -> Result<Option<Acceptor>, ProxyError> {
    let tls = &config.client_tls;
    if tls.mode == TlsMode::Disable {
        return Ok(None);
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => crate::tls::acceptor(cert, key, tls.ca_file.as_deref()).map(Some),
        _ => Err(ProxyError::Tls(
            "TLS to clients needs a certificate file and a key file (proxy.tls_cert_file, proxy.tls_key_file)".into(),
        )),
    }
}

/// The limit under `key`, made when missing; a new key first drops the limits no pool
/// holds any more (databases a RELOAD removed, `*` fallback names no longer served).
fn shared_limit<K: std::hash::Hash + Eq>(
    limits: &mut HashMap<K, Arc<crate::pool::ConnLimit>>,
    key: K,
) -> Arc<crate::pool::ConnLimit> {
    if let Some(limit) = limits.get(&key) {
        return limit.clone();
    }
    limits.retain(|_, l| Arc::strong_count(l) > 1);
    limits.entry(key).or_default().clone()
}

/// The limits of `db`'s pools: its own pool settings, else the proxy-wide ones.
pub fn limits_for(config: &Config, db: &Database) -> PoolLimits {
    PoolLimits {
        size: config.pool_size_of(db),
        min_size: config.min_pool_size_of(db),
        reserve_size: config.reserve_pool_size_of(db),
        reserve_timeout: config.reserve_pool_timeout,
        connect_timeout: or_never(config.server_connect_timeout),
        idle_timeout: or_never(config.server_idle_timeout),
        lifetime: config.server_lifetime,
        wait_timeout: or_never(config.query_wait_timeout),
        check_after: config.server_check_delay,
        max_message_len: config.max_message_len,
        keepalive: config.tcp_keepalive,
        round_robin: config.server_round_robin,
        // (With replicas, for their sessions' default isolation: a replica refuses
        // SERIALIZABLE.)
        read_defaults: config.cache.enabled || !db.replicas.is_empty(),
    }
}

/// Where a pool logs in: as the database's forced user with its configured password,
/// else as the client's user with what pgopt knows of that user's password.
/// The user a client of `db` logging in as `user` is pooled under: the database's
/// forced user when it has one.
pub fn pool_user<'a>(db: &'a Database, user: &'a str) -> &'a str {
    db.user.as_deref().unwrap_or(user)
}

fn target_for<'a>(
    db: &Database,
    user: &str,
    creds_of: impl Fn(&str) -> Option<&'a Credentials>,
    tls: Option<ServerTlsConnector>,
) -> ServerTarget {
    let user = db.user.as_deref().unwrap_or(user);
    let creds = creds_of(user);
    let (password, md5_hash) = match &db.password {
        Some(pw) => (Some(pw.clone()), None),
        None => (
            creds.and_then(|c| c.plaintext.clone()),
            creds.and_then(|c| c.md5.clone()),
        ),
    };
    ServerTarget {
        host: db.host.clone(),
        port: db.port,
        more_hosts: db.more_hosts.clone(),
        dbname: db.dbname.clone(),
        user: user.to_string(),
        password,
        md5_hash,
        tls,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
