//! The admin console's SHOW tables, with PgBouncer's column names where PgBouncer has
//! the same figure, so its monitoring tools keep working.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::config::{ClientAuth, Config, PoolMode, FALLBACK_DATABASE};
use crate::net::Endpoint;
use crate::routing::format_lsn;
use crate::shared::Shared;
use crate::stats::{format_time, unix_us_now, ServerState, Totals};

/// A column's type as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Float,
}

/// A result set: column names and types, rows of text values (NULL as `None`).
pub struct Table {
    pub columns: Vec<(&'static str, Kind)>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub(crate) fn new(columns: &[(&'static str, Kind)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }
}

pub(crate) fn t(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

pub(crate) fn n(v: impl Into<u64>) -> Option<String> {
    Some(v.into().to_string())
}

fn addr_parts(addr: Option<&Endpoint>) -> (Option<String>, Option<String>) {
    match addr.map(Endpoint::parts) {
        Some((addr, port)) => (t(addr), n(port)),
        None => (None, None),
    }
}

fn on_off(on: bool) -> String {
    if on { "on" } else { "off" }.into()
}

pub fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

use Kind::{Int, Text};

pub fn pools(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        ("database", Text),
        ("user", Text),
        ("cl_active", Int),
        ("cl_waiting", Int),
        ("sv_active", Int),
        ("sv_idle", Int),
        ("sv_used", Int),
        ("sv_tested", Int),
        ("sv_login", Int),
        ("maxwait", Int),
        ("maxwait_us", Int),
        ("pool_mode", Text),
        ("paused", Text),
        ("server_down", Text),
        ("node", Text),
        ("pool_size", Int),
    ]);
    let now = unix_us_now();
    let mut max_wait: HashMap<(String, String), Duration> = HashMap::new();
    let config = shared.config();
    for c in shared.clients.list() {
        if let Some(w) = c.waiting_for(now) {
            let (user, db, _) = c.identity();
            // (The pool of a database's forced user is that user's.)
            let user = config.database(&db).map_or(user.clone(), |d| {
                crate::shared::pool_user(&d, &user).to_string()
            });
            let e = max_wait.entry((db, user)).or_default();
            *e = (*e).max(w);
        }
    }
    let check_after = shared.config().server_check_delay;
    let pools = shared.pools.list();
    let counts = client_counts(&pools);
    let routed: Vec<(String, String)> = pools
        .iter()
        .filter(|p| p.node_index() > 0)
        .map(|p| (p.database.clone(), p.user.clone()))
        .collect();
    for (pool, (active, waiting)) in pools.into_iter().zip(counts) {
        let (idle, used) = pool.idle_counts(check_after);
        // A database with replicas: each node's own line (a client's wait says not
        // for which node).
        let key = (pool.database.clone(), pool.user.clone());
        let wait = match routed.contains(&key) {
            true => pool.longest_wait(),
            false => max_wait
                .get(&key)
                .copied()
                .unwrap_or_default()
                .max(pool.longest_wait()),
        };
        table.push(vec![
            t(&pool.database),
            t(&pool.user),
            n(active),
            n(waiting),
            n(pool.servers_lent() as u64),
            n(idle as u64),
            n(used as u64),
            n(pool.testing.load(Relaxed) as u64),
            n(pool.connecting.load(Relaxed) as u64),
            n(wait.as_secs()),
            n(wait.subsec_micros()),
            t(mode_name(pool.mode)),
            t(yes_no(pool.is_paused())),
            t(yes_no(pool.is_down())),
            t(pool.node_name()),
            n(pool.limits().size as u64),
        ]);
    }
    table
}

/// Each pool's clients, active and waiting for a server. A client counts in its own
/// pool's row (its database and user on the primary) unless it waits for, or holds,
/// a replica's connection: then in that replica's (a replica's pool has no members of
/// its own).
pub(crate) fn client_counts(pools: &[std::sync::Arc<crate::pool::Pool>]) -> Vec<(u64, u64)> {
    let mut on_replicas: HashMap<(&str, &str), u64> = HashMap::new();
    for pool in pools.iter().filter(|p| p.node_index() > 0) {
        let here = (pool.clients_waiting() + pool.servers_lent()) as u64;
        *on_replicas
            .entry((pool.database.as_str(), pool.user.as_str()))
            .or_default() += here;
    }
    pools
        .iter()
        .map(|pool| {
            let waiting = pool.clients_waiting() as u64;
            let active = match pool.node_index() {
                0 => {
                    let key = (pool.database.as_str(), pool.user.as_str());
                    let elsewhere = on_replicas.get(&key).copied().unwrap_or_default();
                    (pool.clients.load(Relaxed) as u64)
                        .saturating_sub(waiting)
                        .saturating_sub(elsewhere)
                }
                _ => pool.servers_lent() as u64,
            };
            (active, waiting)
        })
        .collect()
}

/// SHOW REPLICAS: per database with replicas, the primary and each replica — health,
/// lag, weight, transactions routed there and running now.
pub fn replicas(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        ("database", Text),
        ("role", Text),
        ("host", Text),
        ("port", Int),
        ("weight", Int),
        ("state", Text),
        ("replay_lsn", Text),
        ("lag_bytes", Int),
        ("lag_ms", Int),
        ("outstanding", Int),
        ("reads", Int),
        ("writes", Int),
        ("failovers", Int),
        ("last_error", Text),
    ]);
    let pools = shared.pools.list();
    let config = shared.config();
    for router in shared.routers() {
        let Some(db) = config.databases.iter().find(|d| d.name == router.database) else {
            continue;
        };
        let primary_busy: usize = pools
            .iter()
            .filter(|p| p.database == router.database && p.node.is_none())
            .map(|p| p.active.load(Relaxed))
            .sum();
        let up = router.primary_up.load(Relaxed);
        table.push(vec![
            t(&router.database),
            t("primary"),
            t(db.hosts_text()),
            n(db.port),
            n(router.settings.primary_weight),
            t(if up { "up" } else { "down" }),
            t(format_lsn(router.primary_lsn.load(Relaxed))),
            n(0u64),
            n(0u64),
            n(primary_busy as u64),
            n(router.primary_reads.load(Relaxed)),
            n(router.primary_writes.load(Relaxed)),
            n(0u64),
            None,
        ]);
        for node in &router.replicas {
            let error = node.last_error();
            table.push(vec![
                t(&router.database),
                t("replica"),
                t(&node.host),
                n(node.port),
                n(node.weight.load(Relaxed)),
                t(node.state().as_str()),
                t(format_lsn(node.replay_lsn.load(Relaxed))),
                n(node.lag_bytes.load(Relaxed)),
                n(node.lag_ms.load(Relaxed)),
                n(node.outstanding.load(Relaxed) as u64),
                n(node.transactions.load(Relaxed)),
                n(0u64),
                n(node.failovers.load(Relaxed)),
                (!error.is_empty()).then_some(error),
            ]);
        }
    }
    table
}

/// A table as a JSON array of objects (integers as numbers), for `/api/…`.
pub fn table_json(table: &Table) -> String {
    let mut body = serde_json::Value::Array(table_values(table)).to_string();
    body.push('\n');
    body
}

/// A table's rows as JSON objects (integers as numbers).
pub fn table_values(table: &Table) -> Vec<serde_json::Value> {
    table
        .rows
        .iter()
        .map(|row| {
            let fields = table.columns.iter().zip(row).map(|((name, kind), v)| {
                let value = match (v, kind) {
                    (None, _) => serde_json::Value::Null,
                    (Some(v), Kind::Int) => v
                        .parse::<u64>()
                        .map(Into::into)
                        .unwrap_or_else(|_| v.clone().into()),
                    (Some(v), _) => v.clone().into(),
                };
                (name.to_string(), value)
            });
            serde_json::Value::Object(fields.collect())
        })
        .collect()
}

pub fn clients(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        ("type", Text),
        ("user", Text),
        ("database", Text),
        ("state", Text),
        ("addr", Text),
        ("port", Int),
        ("local_addr", Text),
        ("local_port", Int),
        ("connect_time", Text),
        ("request_time", Text),
        ("wait", Int),
        ("wait_us", Int),
        ("id", Int),
        ("link", Int),
        ("remote_pid", Int),
        ("tls", Text),
        ("application_name", Text),
        ("replication", Text),
    ]);
    let now = unix_us_now();
    for c in shared.clients.list() {
        let (user, db, app) = c.identity();
        let (addr, port) = addr_parts(Some(&c.addr));
        let (laddr, lport) = addr_parts(c.local_addr.as_ref());
        let wait = c.waiting_for(now).unwrap_or_default();
        let link = c.link();
        table.push(vec![
            t("C"),
            t(user),
            t(db),
            t(c.state().as_str()),
            addr,
            port,
            laddr,
            lport,
            t(format_time(c.connect_time)),
            c.request_time().map(format_time),
            n(wait.as_secs()),
            n(wait.subsec_micros()),
            n(c.id),
            (link != 0).then(|| link.to_string()),
            n(c.remote_pid.unwrap_or(0)),
            t(c.tls.get().map_or("", String::as_str)),
            t(app),
            t(c.replication.get().as_str()),
        ]);
    }
    table
}

pub fn servers(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        ("type", Text),
        ("user", Text),
        ("database", Text),
        ("state", Text),
        ("addr", Text),
        ("port", Int),
        ("local_addr", Text),
        ("local_port", Int),
        ("connect_time", Text),
        ("request_time", Text),
        ("id", Int),
        ("link", Int),
        ("remote_pid", Int),
        ("prepared_statements", Int),
        ("close_needed", Int),
        ("replication", Text),
    ]);
    // Pools a RELOAD replaced too: their connections serve the sessions still on them.
    let mut pools = shared.live_pools();
    pools.sort_by_key(|p| (p.database.clone(), p.user.clone(), p.node_index()));
    for pool in pools {
        let replaced = !shared.pools.is_current(&pool);
        for s in pool.servers.list() {
            let (addr, port) = addr_parts(Some(&s.addr));
            let (laddr, lport) = addr_parts(s.local_addr.as_ref());
            let link = s.link();
            table.push(vec![
                t("S"),
                t(&pool.target.user),
                t(&pool.database),
                t(match s.state() {
                    ServerState::Active => "active",
                    ServerState::Idle => "idle",
                }),
                addr,
                port,
                laddr,
                lport,
                t(format_time(s.connect_time)),
                s.request_time().map(format_time),
                n(s.id),
                (link != 0).then(|| link.to_string()),
                t(s.backend_pid.to_string()),
                n(s.prepared.load(Relaxed)),
                n(u64::from(pool.to_close(&s, replaced))),
                t(s.replication.get().as_str()),
            ]);
        }
    }
    table
}

/// Per database: totals since start, and averages over the last stats period.
/// Per database (every database as one: `by_db` false): its totals since start, and
/// its rates and averages over the last stats period (PgBouncer's `total_*` and
/// `avg_*`), in SHOW STATS' order.
fn stat_rows(shared: &Shared, by_db: bool) -> Vec<(String, [u64; 7], [u64; 7])> {
    let mut groups: Vec<(String, Totals, Totals, f64)> = Vec::new();
    for pool in shared.pools.list() {
        let totals = pool.stats.totals();
        let (last, secs) = pool.stats.last_period();
        let key = if by_db { pool.database.as_str() } else { "" };
        match groups.iter_mut().find(|(db, ..)| db == key) {
            Some((_, t, l, s)) => {
                t.add(&totals);
                l.add(&last);
                *s = s.max(secs);
            }
            None => groups.push((key.to_string(), totals, last, secs)),
        }
    }
    groups
        .into_iter()
        .map(|(db, total, last, secs)| {
            let rate = |v: u64| {
                if secs > 0.0 {
                    (v as f64 / secs) as u64
                } else {
                    0
                }
            };
            let avg = |sum: u64, count: u64| sum.checked_div(count).unwrap_or(0);
            let totals = [
                total.xacts,
                total.queries,
                total.received,
                total.sent,
                total.xact_us,
                total.query_us,
                total.wait_us,
            ];
            let averages = [
                rate(last.xacts),
                rate(last.queries),
                rate(last.received),
                rate(last.sent),
                avg(last.xact_us, last.xacts),
                avg(last.query_us, last.queries),
                avg(last.wait_us, last.waits),
            ];
            (db, totals, averages)
        })
        .collect()
}

/// SHOW STATS_TOTALS' and SHOW STATS_AVERAGES' columns after `database`.
const STAT_NAMES: [&str; 7] = [
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
];
/// SHOW STATS' and SHOW TOTALS' names for the same figures.
const TOTAL_NAMES: [&str; 7] = [
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
];
const AVG_NAMES: [&str; 7] = [
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
];

pub fn stats(shared: &Shared) -> Table {
    let columns: Vec<(&str, Kind)> = std::iter::once(("database", Text))
        .chain(TOTAL_NAMES.iter().chain(&AVG_NAMES).map(|c| (*c, Int)))
        .collect();
    let mut table = Table::new(&columns);
    for (db, totals, averages) in stat_rows(shared, true) {
        let mut row = vec![t(db)];
        row.extend(totals.iter().chain(&averages).map(|v| n(*v)));
        table.push(row);
    }
    table
}

/// SHOW STATS_TOTALS (`averages` false) and SHOW STATS_AVERAGES: one half of SHOW
/// STATS under PgBouncer's short names.
pub fn stats_half(shared: &Shared, averages: bool) -> Table {
    let columns: Vec<(&str, Kind)> = std::iter::once(("database", Text))
        .chain(STAT_NAMES.iter().map(|c| (*c, Int)))
        .collect();
    let mut table = Table::new(&columns);
    for (db, totals, avgs) in stat_rows(shared, true) {
        let mut row = vec![t(db)];
        row.extend((if averages { avgs } else { totals }).iter().map(|v| n(*v)));
        table.push(row);
    }
    table
}

/// SHOW TOTALS: SHOW STATS over every database at once, one (name, value) row each.
pub fn totals(shared: &Shared) -> Table {
    let mut table = Table::new(&[("name", Text), ("value", Int)]);
    let (totals, averages) = stat_rows(shared, false)
        .pop()
        .map_or(([0; 7], [0; 7]), |(_, t, a)| (t, a));
    for (name, value) in TOTAL_NAMES
        .iter()
        .zip(totals)
        .chain(AVG_NAMES.iter().zip(averages))
    {
        table.push(vec![t(*name), n(value)]);
    }
    table
}

/// The users SHOW USERS lists: configured ones and those of pools (logins by
/// `auth_query`, or with trust), sorted.
fn user_names(shared: &Shared, config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .users
        .iter()
        .map(|u| u.name.clone())
        .chain(shared.pools.list().iter().map(|p| p.target.user.clone()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// SHOW USERS: the users the config lists and the server logins of pools (a client's
/// user, or its database's forced user); `pool_mode` is the user's own (empty: its
/// databases'), and the server connections its pools hold.
pub fn users(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        ("name", Text),
        ("pool_mode", Text),
        ("max_user_connections", Int),
        ("current_connections", Int),
    ]);
    let config = shared.config();
    for name in user_names(shared, &config) {
        let mode = config.user(&name).and_then(|u| u.pool_mode);
        let max = config.max_user_connections_of(&name) as u64;
        let open = shared.user_connections(&name) as u64;
        table.push(vec![
            t(name),
            mode.map(|m| mode_name(m).to_string()),
            n(max),
            n(open),
        ]);
    }
    table
}

pub fn databases(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        ("name", Text),
        ("host", Text),
        ("port", Int),
        ("database", Text),
        ("force_user", Text),
        ("pool_size", Int),
        ("min_pool_size", Int),
        ("reserve_pool", Int),
        ("pool_mode", Text),
        ("max_connections", Int),
        ("current_connections", Int),
        // 0 or 1, as PgBouncer's (pgbouncer_exporter reads them as numbers).
        ("paused", Int),
        ("disabled", Int),
    ]);
    let config = shared.config();
    let pools = shared.pools.list();
    // The listed entries, then each database the fallback serves now.
    let mut served: Vec<String> = pools
        .iter()
        .filter(|p| config.is_fallback(&p.database))
        .map(|p| p.database.clone())
        .collect();
    served.sort();
    served.dedup();
    let databases = config
        .databases
        .iter()
        .map(Cow::Borrowed)
        .chain(served.iter().filter_map(|name| config.database(name)));
    for db in databases {
        let db = db.as_ref();
        let mine = pools.iter().filter(|p| p.database == db.name);
        let current: usize = mine
            .clone()
            .map(|p| p.servers_lent() + p.idle_count())
            .sum();
        table.push(vec![
            t(&db.name),
            t(db.hosts_text()),
            n(db.port),
            // The fallback entry's database is each client's own.
            (db.name != FALLBACK_DATABASE).then(|| db.dbname.clone()),
            db.user.clone(),
            n(config.pool_size_of(db) as u64),
            n(config.min_pool_size_of(db) as u64),
            n(config.reserve_pool_size_of(db) as u64),
            t(mode_name(config.pool_mode_of(db))),
            n(config.max_db_connections_of(db) as u64),
            n(current as u64),
            n(u64::from(
                shared.paused_all() || shared.is_db_paused(&db.name),
            )),
            n(u64::from(shared.is_disabled(&db.name))),
        ]);
    }
    table
}

/// Every setting with its value, default, and whether RELOAD can change it.
pub fn config(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        ("key", Text),
        ("value", Text),
        ("default", Text),
        ("changeable", Text),
    ]);
    let current = shared.config();
    let now = settings(&current);
    let at_start = settings(shared.started_config());
    let defaults = settings(&shown_defaults());
    for (((key, value, changeable), (_, started, _)), (_, default, _)) in
        now.into_iter().zip(at_start).zip(defaults)
    {
        // A setting only a restart changes is shown as in effect, not as the file
        // a RELOAD read has it (PgBouncer's SHOW CONFIG does the same).
        let value = if changeable { value } else { started };
        table.push(vec![t(key), t(value), t(default), t(yes_no(changeable))]);
    }
    table
}

/// What `pgopt proxy` takes for a setting its config file leaves out: the library's
/// defaults (for embedding and tests) but for one thread per core and a log line per
/// login and per client gone. (`pgopt-cli`'s test of SHOW CONFIG keeps the two in step.)
fn shown_defaults() -> Config {
    Config {
        workers: 0,
        log_connections: true,
        log_disconnections: true,
        ..Config::default()
    }
}

/// Whether RELOAD changes `key` (SHOW CONFIG's `changeable`); `None` when SHOW CONFIG
/// does not list it.
pub fn changeable(key: &str) -> Option<bool> {
    settings(&Config::default())
        .into_iter()
        .find(|(k, _, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, _, changeable)| changeable)
}

fn settings(c: &Config) -> Vec<(&'static str, String, bool)> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    vec![
        ("listen", c.listen.to_string(), false),
        (
            "listen_also",
            c.listen_also
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            false,
        ),
        (
            "unix_socket_dir",
            c.unix_socket_dir.clone().unwrap_or_default(),
            false,
        ),
        (
            "unix_socket_mode",
            format!("{:04o}", c.unix_socket_mode),
            false,
        ),
        (
            "unix_socket_group",
            c.unix_socket_group.clone().unwrap_or_default(),
            false,
        ),
        ("so_reuseport", on_off(c.so_reuseport), false),
        (
            "admin_listen",
            c.admin_listen.map(|a| a.to_string()).unwrap_or_default(),
            false,
        ),
        ("workers", c.workers.to_string(), false),
        ("pool_mode", mode_name(c.pool_mode).into(), true),
        ("log_connections", on_off(c.log_connections), true),
        ("log_disconnections", on_off(c.log_disconnections), true),
        (
            "application_name_add_host",
            on_off(c.application_name_add_host),
            true,
        ),
        ("server_round_robin", on_off(c.server_round_robin), true),
        ("default_pool_size", c.default_pool_size.to_string(), true),
        ("min_pool_size", c.min_pool_size.to_string(), true),
        ("reserve_pool_size", c.reserve_pool_size.to_string(), true),
        ("reserve_pool_timeout", ms(c.reserve_pool_timeout), true),
        ("max_client_conn", c.max_client_conn.to_string(), true),
        ("max_db_connections", c.max_db_connections.to_string(), true),
        (
            "max_user_connections",
            c.max_user_connections.to_string(),
            true,
        ),
        ("query_wait_timeout", ms(c.query_wait_timeout), true),
        ("server_connect_timeout", ms(c.server_connect_timeout), true),
        ("server_idle_timeout", ms(c.server_idle_timeout), true),
        ("server_lifetime", ms(c.server_lifetime), true),
        ("server_check_delay", ms(c.server_check_delay), true),
        ("server_login_retry", ms(c.server_login_retry), true),
        (
            "idle_transaction_timeout",
            ms(c.idle_transaction_timeout),
            true,
        ),
        ("client_login_timeout", ms(c.client_login_timeout), true),
        ("client_idle_timeout", ms(c.client_idle_timeout), true),
        ("query_timeout", ms(c.query_timeout), true),
        (
            "tcp_keepalive",
            match c.tcp_keepalive {
                Some(k) if k.probes => format!(
                    "on (idle {}, interval {}, count {})",
                    ms(k.idle),
                    ms(k.interval),
                    k.count
                ),
                _ => "off".to_string(),
            },
            true,
        ),
        (
            "tcp_user_timeout",
            ms(c.tcp_keepalive.map_or(Duration::ZERO, |k| k.user_timeout)),
            true,
        ),
        ("shutdown_timeout", ms(c.shutdown_timeout), true),
        (
            "auth",
            match (&c.hba, c.client_auth) {
                (Some(_), _) => "hba",
                (None, ClientAuth::Trust) => "trust",
                (None, ClientAuth::Md5) => "md5",
                (None, ClientAuth::ScramSha256) => "scram-sha-256",
                (None, ClientAuth::Peer) => "peer",
                (None, ClientAuth::Cert) => "cert",
            }
            .into(),
            true,
        ),
        (
            "server_tls_mode",
            format!("{:?}", c.server_tls.mode).to_lowercase(),
            true,
        ),
        ("server_tls_ca_file", path(&c.server_tls.ca_file), true),
        ("server_tls_cert_file", path(&c.server_tls.cert_file), true),
        ("server_tls_key_file", path(&c.server_tls.key_file), true),
        (
            "server_channel_binding",
            format!("{:?}", c.server_tls.channel_binding).to_lowercase(),
            true,
        ),
        (
            "tls_mode",
            format!("{:?}", c.client_tls.mode).to_lowercase(),
            true,
        ),
        (
            "tls_channel_binding",
            c.client_tls.channel_binding.to_string(),
            true,
        ),
        ("auth_user", c.auth_user.clone().unwrap_or_default(), true),
        ("auth_query", c.auth_query.clone(), true),
        ("auth_query_cache_ttl", ms(c.auth_query_cache_ttl), true),
        ("admin_users", c.admin_users.join(","), true),
        ("stats_users", c.stats_users.join(","), true),
        ("max_message_len", c.max_message_len.to_string(), true),
        (
            "max_prepared_statements",
            c.max_prepared_statements.to_string(),
            true,
        ),
    ]
}

/// SHOW LISTS with PgBouncer's row names (its exporters read them by name); lists
/// pgopt has no counterpart for (free slots, DNS) are 0.
pub fn lists(shared: &Shared) -> Table {
    let mut table = Table::new(&[("list", Text), ("items", Int)]);
    let config = shared.config();
    let pools = shared.pools.list();
    let servers: usize = pools.iter().map(|p| p.servers.list().len()).sum();
    let clients = shared.clients.list();
    let login = clients
        .iter()
        .filter(|c| c.state() == crate::stats::ClientState::Login)
        .count();
    let rows: [(&str, usize); 12] = [
        ("databases", config.databases.len()),
        ("users", user_names(shared, &config).len()),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", clients.len() - login),
        ("login_clients", login),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    for (name, items) in rows {
        table.push(vec![t(name), n(items as u64)]);
    }
    table
}

/// SHOW STATE, as PgBouncer's: whether the proxy serves, is paused as a whole (PAUSE
/// without a database), or suspended (pgopt never is: it has no SUSPEND).
pub fn state(shared: &Shared) -> Table {
    let mut table = Table::new(&[("key", Text), ("value", Text)]);
    let paused = shared.paused_all();
    let running = shared.lifecycle_now() == crate::shared::Lifecycle::Running;
    for (key, on) in [
        ("active", running && !paused),
        ("paused", paused),
        ("suspended", false),
    ] {
        table.push(vec![t(key), t(yes_no(on))]);
    }
    table
}

pub fn version() -> Table {
    let mut table = Table::new(&[("version", Text)]);
    table.push(vec![t(format!("pgopt {}", env!("CARGO_PKG_VERSION")))]);
    table
}

pub fn help() -> Table {
    let mut table = Table::new(&[("command", Text), ("description", Text)]);
    for (cmd, what) in HELP {
        table.push(vec![t(*cmd), t(*what)]);
    }
    table
}

pub const HELP: &[(&str, &str)] = &[
    (
        "SHOW POOLS",
        "clients and server connections per (database, user)",
    ),
    ("SHOW CLIENTS", "every client connection"),
    ("SHOW SERVERS", "every server connection"),
    ("SHOW STATS", "traffic per database: totals and averages"),
    ("SHOW TOTALS", "SHOW STATS summed over every database"),
    (
        "SHOW STATS_TOTALS",
        "SHOW STATS' totals under PgBouncer's short names",
    ),
    (
        "SHOW STATS_AVERAGES",
        "SHOW STATS' rates and averages under PgBouncer's short names",
    ),
    ("SHOW DATABASES", "configured databases"),
    ("SHOW USERS", "users the config lists or that have pools"),
    (
        "SHOW CONFIG",
        "settings, defaults, and which RELOAD changes",
    ),
    (
        "SHOW LISTS",
        "counts of databases, users, pools, clients, servers",
    ),
    ("SHOW VERSION", "pgopt's version"),
    ("SHOW STATE", "active, paused (PAUSE of everything), suspended"),
    (
        "WAIT_CLOSE [db]",
        "wait until the server connections RECONNECT or KILL marked have closed",
    ),
    (
        "SET key = value",
        "change a setting until the next RELOAD (sizes, limits, timeouts, pool_mode)",
    ),
    (
        "SHOW QUERIES",
        "query shapes by total time: calls, rows, errors, p50/p95/p99",
    ),
    (
        "SHOW SLOW",
        "the latest statements over the slow-log threshold",
    ),
    (
        "SHOW NPLUS1",
        "statements repeated in a loop (N+1 findings)",
    ),
    (
        "SHOW REPLICAS",
        "primary and replicas: state, lag, reads and writes routed",
    ),
    (
        "SHOW CACHE",
        "result cache: entries, bytes, hits, misses, invalidations",
    ),
    (
        "SHOW CACHE TABLES",
        "result cache per table: hits, misses, stored, evictions, invalidations",
    ),
    (
        "CACHE FLUSH [table]",
        "drop the result cache's entries (of one table)",
    ),
    ("RELOAD", "re-read the config file"),
    (
        "PAUSE [db]",
        "wait for transactions to end, close server connections, hold new queries",
    ),
    ("RESUME [db]", "let queries run again after PAUSE or KILL"),
    (
        "RECONNECT [db]",
        "close server connections (idle ones now, lent ones when released): new ones follow",
    ),
    (
        "KILL db",
        "disconnect the database's clients and server connections now; it stays paused until RESUME",
    ),
    ("DISABLE db", "refuse new clients of the database"),
    ("ENABLE db", "take new clients of the database again after DISABLE"),
    (
        "SHUTDOWN",
        "stop: let transactions finish (up to shutdown_timeout), then exit",
    ),
];

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
