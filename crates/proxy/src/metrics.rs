//! Prometheus text exposition of the proxy's figures. Labels are bounded: database
//! and user name a pool (pools come from the config's databases and its users), and
//! errors are counted by SQLSTATE class (two characters), never by query; query shapes
//! appear by fingerprint only, and only the busiest few.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::cache::Buckets;
use crate::pool::Pool;
use crate::routing::{Node, NodeState};
use crate::shared::Shared;
use crate::stats::{ClientState, Totals, WAIT_BUCKETS_US};
use crate::views::mode_name;

/// The whole `/metrics` page.
pub fn render(shared: &Shared) -> String {
    let mut m = Page::default();
    let pools = shared.pools.list();

    m.family("pgopt_up", "gauge", "1 while the proxy runs.");
    m.sample("pgopt_up", "", 1);
    m.family(
        "pgopt_start_time_seconds",
        "gauge",
        "When the proxy started, in Unix seconds.",
    );
    let started = shared
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    m.sample("pgopt_start_time_seconds", "", started);

    m.family(
        "pgopt_client_connections",
        "gauge",
        "Client connections by state (login, idle, active, waiting).",
    );
    let mut states = [0u64; 4];
    for c in shared.clients.list() {
        states[c.state() as usize] += 1;
    }
    for state in [
        ClientState::Login,
        ClientState::Idle,
        ClientState::Active,
        ClientState::Waiting,
    ] {
        let labels = format!("state=\"{}\"", state.as_str());
        m.sample("pgopt_client_connections", &labels, states[state as usize]);
    }
    m.family(
        "pgopt_client_connections_accepted_total",
        "counter",
        "Client connections accepted by the listener.",
    );
    m.sample(
        "pgopt_client_connections_accepted_total",
        "",
        shared.accepted.load(Relaxed),
    );
    m.family(
        "pgopt_client_connections_rejected_total",
        "counter",
        "Client connections turned away, by reason.",
    );
    m.sample(
        "pgopt_client_connections_rejected_total",
        "reason=\"max_client_conn\"",
        shared.rejected_max_clients.load(Relaxed),
    );
    m.sample(
        "pgopt_client_connections_rejected_total",
        "reason=\"auth\"",
        shared.rejected_auth.load(Relaxed),
    );

    // A replica's pools carry its address too (the primary's keep the two labels).
    let label = |p: &Pool| {
        let mut l = format!(
            "database=\"{}\",user=\"{}\"",
            escape(&p.database),
            escape(&p.user)
        );
        if let Some((_, node)) = &p.node {
            let _ = write!(l, ",replica=\"{}\"", escape(&node.address()));
        }
        l
    };
    m.family(
        "pgopt_pool_clients",
        "gauge",
        "Logged-in clients of a pool: active (may run queries) and waiting for a server.",
    );
    for (p, (active, waiting)) in pools.iter().zip(crate::views::client_counts(&pools)) {
        let l = label(p);
        m.sample(
            "pgopt_pool_clients",
            &format!("{l},state=\"active\""),
            active,
        );
        m.sample(
            "pgopt_pool_clients",
            &format!("{l},state=\"waiting\""),
            waiting,
        );
    }
    m.family(
        "pgopt_pool_server_connections",
        "gauge",
        "Server connections of a pool by state: active (lent), idle, login (connecting).",
    );
    for p in &pools {
        let l = label(p);
        for (state, v) in [
            ("active", p.servers_lent()),
            ("idle", p.idle_count()),
            ("login", p.connecting.load(Relaxed)),
        ] {
            m.sample(
                "pgopt_pool_server_connections",
                &format!("{l},state=\"{state}\""),
                v as u64,
            );
        }
    }
    let gauges: [(&str, &str, PoolField); 3] = [
        (
            "pgopt_pool_size",
            "Configured server connections per pool.",
            |p| p.limits().size as u64,
        ),
        (
            "pgopt_pool_paused",
            "1 while the pool is paused (PAUSE).",
            |p| u64::from(p.is_paused()),
        ),
        (
            "pgopt_pool_server_down",
            "1 while the circuit breaker holds the pool's server as down.",
            |p| u64::from(p.is_down()),
        ),
    ];
    for (name, help, get) in gauges {
        m.family(name, "gauge", help);
        for p in &pools {
            let l = format!("{},pool_mode=\"{}\"", label(p), mode_name(p.mode));
            m.sample(name, &l, get(p));
        }
    }

    let counters: [(&str, &str, TotalsField); 6] = [
        (
            "pgopt_transactions_total",
            "Transactions ended (autocommit statements included).",
            |t| t.xacts,
        ),
        (
            "pgopt_queries_total",
            "Query cycles ended (each ReadyForQuery).",
            |t| t.queries,
        ),
        ("pgopt_received_bytes_total", "Bytes from clients.", |t| {
            t.received
        }),
        ("pgopt_sent_bytes_total", "Bytes to clients.", |t| t.sent),
        (
            "pgopt_transaction_time_microseconds_total",
            "Time inside transactions.",
            |t| t.xact_us,
        ),
        (
            "pgopt_query_time_microseconds_total",
            "Time from a query to its ReadyForQuery.",
            |t| t.query_us,
        ),
    ];
    let totals: Vec<_> = pools.iter().map(|p| (label(p), p.stats.totals())).collect();
    for (name, help, get) in counters {
        m.family(name, "counter", help);
        for (l, t) in &totals {
            m.sample(name, l, get(t));
        }
    }

    m.family(
        "pgopt_client_wait_seconds",
        "histogram",
        "How long clients waited for a server connection.",
    );
    for p in &pools {
        let l = label(p);
        let buckets = p.stats.wait_buckets();
        let mut cumulative = 0;
        for (i, count) in buckets.iter().enumerate() {
            cumulative += count;
            let le = match WAIT_BUCKETS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            m.sample(
                "pgopt_client_wait_seconds_bucket",
                &format!("{l},le=\"{le}\""),
                cumulative,
            );
        }
        let t = p.stats.totals();
        let _ = writeln!(
            m.out,
            "pgopt_client_wait_seconds_sum{{{l}}} {}",
            t.wait_us as f64 / 1e6
        );
        // The +Inf bucket, so count and buckets agree within one scrape.
        m.sample("pgopt_client_wait_seconds_count", &l, cumulative);
    }

    m.family(
        "pgopt_errors_total",
        "counter",
        "Errors sent to clients (by the server or by pgopt), by SQLSTATE class.",
    );
    for p in &pools {
        let l = label(p);
        for (class, count) in p.stats.errors() {
            m.sample(
                "pgopt_errors_total",
                &format!("{l},class=\"{}\"", escape(&class)),
                count,
            );
        }
    }
    let connects: [(&str, &str, PoolField); 2] = [
        (
            "pgopt_server_connects_total",
            "Server connections opened.",
            |p| p.stats.server_connects.load(Relaxed),
        ),
        (
            "pgopt_server_connect_errors_total",
            "Failed attempts to open a server connection.",
            |p| p.stats.server_connect_errors.load(Relaxed),
        ),
    ];
    for (name, help, get) in connects {
        m.family(name, "counter", help);
        for p in &pools {
            m.sample(name, &label(p), get(p));
        }
    }
    replicas(&mut m, shared);
    cache(&mut m, shared);
    if let Some(insight) = &shared.insight {
        query_shapes(&mut m, &insight.store);
    }
    m.out
}

/// Per replica: in the rotation or not, lag, transactions routed; per primary, reads
/// and writes routed there.
/// The result cache's figures, when it is on.
fn cache(m: &mut Page, shared: &Shared) {
    let Some(cache) = &shared.cache else {
        return;
    };
    let l1 = cache.cache.l1.stats();
    let c = &cache.counters;
    let families = [
        ("pgopt_cache_hits_total", "counter", "Requests answered from the result cache.", c.hits.load(Relaxed)),
        ("pgopt_cache_misses_total", "counter", "Cacheable requests that went to the server.", c.misses.load(Relaxed)),
        ("pgopt_cache_stored_total", "counter", "Results stored after a miss.", c.stored.load(Relaxed)),
        (
            "pgopt_cache_not_stored_total",
            "counter",
            "Results not stored: a table changed during the fill, too large, or not a plain result.",
            c.not_stored.load(Relaxed),
        ),
        (
            "pgopt_cache_invalidations_total",
            "counter",
            "Transactions whose writes ended cached results.",
            c.invalidations.load(Relaxed),
        ),
        ("pgopt_cache_evictions_total", "counter", "Entries dropped for space.", l1.evictions),
        ("pgopt_cache_entries", "gauge", "Entries held in memory.", l1.entries),
        ("pgopt_cache_bytes", "gauge", "Bytes of keys and results held in memory.", l1.bytes),
        (
            "pgopt_cache_verified_total",
            "counter",
            "Hits run again on PostgreSQL (cache.verify_fraction) that gave the same rows.",
            c.verified.load(Relaxed),
        ),
        (
            "pgopt_cache_mismatches_total",
            "counter",
            "Hits run again on PostgreSQL that gave other rows with no write seen in between.",
            c.mismatches.load(Relaxed),
        ),
    ];
    let mut families = families.to_vec();
    if cache.settings.ddl_listener {
        let states = c.ddl_states.lock().unwrap_or_else(|p| p.into_inner());
        let listening = states.values().filter(|s| *s == "listening").count();
        families.extend([
            (
                "pgopt_cache_ddl_listeners_up",
                "gauge",
                "Databases whose schema change listener (cache.ddl_listener) is listening.",
                listening as u64,
            ),
            (
                "pgopt_cache_ddl_changes_total",
                "counter",
                "Schema changes made directly on a server that the listener heard (each flushed the cache).",
                c.ddl_changes.load(Relaxed),
            ),
        ]);
    }
    if cache.settings.wal_listener {
        families.extend([
            (
                "pgopt_cache_wal_gap_flushes_total",
                "counter",
                "Replication streams that (re)started and ended every cached value, shared ones too: no other instance's stream heard the commits before them.",
                c.wal_gap_flushes.load(Relaxed),
            ),
            (
                "pgopt_cache_wal_gaps_covered_total",
                "counter",
                "Replication streams that (re)started while another instance's stream heard every commit before them: only this instance's values ended.",
                c.wal_gaps_covered.load(Relaxed),
            ),
            (
                "pgopt_cache_wal_lag_stops_total",
                "counter",
                "Times a replication stream fell further behind than cache.wal_max_lag: nothing was served from the cache until it caught up.",
                c.wal_lag_stops.load(Relaxed),
            ),
            (
                "pgopt_cache_wal_lag_milliseconds",
                "gauge",
                "The replication streams' largest lag: the newest probe's round trip, or how long the oldest probe still out has been (0 while no stream is timed).",
                crate::cache::wal_lag(c).unwrap_or(0),
            ),
            (
                "pgopt_cache_wal_listeners",
                "gauge",
                "Databases with a replication listener (cache.wal_listener).",
                c.wal_listeners.load(Relaxed) as u64,
            ),
            (
                "pgopt_cache_wal_listeners_streaming",
                "gauge",
                "Listeners streaming and within cache.wal_max_lag: the cache serves only while every listener does.",
                c.wal_streaming.load(Relaxed) as u64,
            ),
        ]);
    }
    if let Some(l2) = &cache.l2 {
        let r = &l2.counters;
        families.extend([
            (
                "pgopt_cache_redis_up",
                "gauge",
                "1 while Redis answers, the invalidation channel is subscribed and this instance holds its Redis lease.",
                u64::from(crate::cache::redis_state(cache) == "up"),
            ),
            (
                "pgopt_cache_redis_peers",
                "gauge",
                "Other pgopt instances heard on the cache's Redis bus (one gone quiet stops this one serving until it is heard again, says goodbye, or is given up after 10 s).",
                l2.peer_count() as u64,
            ),
            (
                "pgopt_cache_l2_hits_total",
                "counter",
                "Requests answered from Redis (L2).",
                r.hits.load(Relaxed),
            ),
            (
                "pgopt_cache_l2_misses_total",
                "counter",
                "Lookups in Redis that found no current value.",
                r.misses.load(Relaxed),
            ),
            (
                "pgopt_cache_l2_stored_total",
                "counter",
                "Results stored in Redis.",
                r.stored.load(Relaxed),
            ),
            (
                "pgopt_cache_l2_rejected_total",
                "counter",
                "Values in Redis refused: bad HMAC, another key, unreadable.",
                r.rejected.load(Relaxed),
            ),
            (
                "pgopt_cache_redis_errors_total",
                "counter",
                "Redis calls that failed or timed out (the query went to PostgreSQL).",
                r.errors.load(Relaxed),
            ),
            (
                "pgopt_cache_publish_failures_total",
                "counter",
                "Commits whose invalidation did not reach Redis at once.",
                r.publish_failures.load(Relaxed),
            ),
            (
                "pgopt_cache_ack_timeouts_total",
                "counter",
                "Commits that waited out the lease: some instance never confirmed their invalidation.",
                r.ack_timeouts.load(Relaxed),
            ),
            (
                "pgopt_cache_invalidation_waits_total",
                "counter",
                "Commits that waited for every instance to confirm their invalidation.",
                r.ack_waits.load(Relaxed),
            ),
            (
                "pgopt_cache_invalidation_wait_microseconds_total",
                "counter",
                "Time commits waited for those confirmations, in all (µs); over the waits, the mean wait.",
                r.ack_wait_us.load(Relaxed),
            ),
            (
                "pgopt_cache_bus_flushes_total",
                "counter",
                "Local cache flushes for a dropped invalidation channel or a missed message.",
                r.flushes.load(Relaxed),
            ),
        ]);
    }
    for (name, kind, help, value) in families {
        m.family(name, kind, help);
        m.sample(name, "", value);
    }
    histogram(
        m,
        "pgopt_cache_hit_seconds",
        "pgopt's own time on a cache hit, from the lookup to the reply written.",
        &c.hit_time,
        1e6,
    );
    if cache.settings.wal_listener {
        histogram(
            m,
            "pgopt_cache_wal_staleness_seconds",
            "From a commit seen on the replication stream to its invalidation: how long a write that bypassed pgopt could be served stale.",
            &c.wal_staleness,
            1e3,
        );
    }
    cache_tables(m, cache);
}

/// A [`Buckets`] histogram as Prometheus's cumulative buckets; its values divided by
/// `per_second` are seconds.
fn histogram(m: &mut Page, name: &str, help: &str, buckets: &Buckets, per_second: f64) {
    m.family(name, "histogram", help);
    let (counts, sum) = buckets.counts();
    let mut cumulative = 0;
    for (i, count) in counts.iter().enumerate() {
        cumulative += count;
        let le = match buckets.bounds().get(i) {
            Some(&bound) => format!("{}", bound as f64 / per_second),
            None => "+Inf".to_string(),
        };
        m.sample(
            &format!("{name}_bucket"),
            &format!("le=\"{le}\""),
            cumulative,
        );
    }
    let _ = writeln!(m.out, "{name}_sum {}", sum as f64 / per_second);
    m.sample(&format!("{name}_count"), "", cumulative);
}

/// Tables with the most cache lookups: at most this many are labelled, so the label
/// set stays bounded (SHOW CACHE TABLES has them all).
pub const TOP_CACHE_TABLES: usize = 20;

/// The busiest tables' cache figures, labelled by table (its name without schema).
fn cache_tables(m: &mut Page, cache: &crate::cache::ProxyCache) {
    let rows = crate::cache_views::busiest(cache, TOP_CACHE_TABLES);
    type Field = fn(&pgopt_cache::TableRow) -> u64;
    let families: [(&str, &str, Field); 6] = [
        (
            "pgopt_cache_table_hits_total",
            "Requests answered from the result cache, by table read (the busiest tables).",
            |r| r.hits,
        ),
        (
            "pgopt_cache_table_misses_total",
            "Cacheable requests that went to the server, by table read.",
            |r| r.misses,
        ),
        (
            "pgopt_cache_table_stored_total",
            "Results stored after a miss, by table read.",
            |r| r.stored,
        ),
        (
            "pgopt_cache_table_not_stored_total",
            "Results not stored (a table changed during the fill, too large, not a plain result), by table read.",
            |r| r.not_stored,
        ),
        (
            "pgopt_cache_table_evictions_total",
            "Entries dropped for space, by table read.",
            |r| r.evictions,
        ),
        (
            "pgopt_cache_table_expirations_total",
            "Entries whose TTL ran out, by table read.",
            |r| r.expirations,
        ),
    ];
    for (name, help, get) in families {
        m.family(name, "counter", help);
        for r in &rows {
            m.sample(name, &format!("table=\"{}\"", escape(&r.table)), get(r));
        }
    }
    let name = "pgopt_cache_table_invalidations_total";
    m.family(
        name,
        "counter",
        "Invalidations of a table's entries, by source: local (a commit through this instance, CACHE FLUSH), bus (another instance, or a flush for a lost message), wal (the replication listener).",
    );
    for r in &rows {
        let table = escape(&r.table);
        for (source, v) in ["local", "bus", "wal"].into_iter().zip(r.invalidations) {
            m.sample(name, &format!("table=\"{table}\",source=\"{source}\""), v);
        }
    }
}

fn replicas(m: &mut Page, shared: &Shared) {
    let routers = shared.routers();
    if routers.is_empty() {
        return;
    }
    type Field = fn(&Node) -> u64;
    let families: [(&str, &str, &str, Field); 5] = [
        (
            "pgopt_replica_up",
            "gauge",
            "1 while a replica is in the rotation (reachable, in recovery, within max_lag).",
            |n| u64::from(n.state() == NodeState::Up),
        ),
        (
            "pgopt_replica_lag_bytes",
            "gauge",
            "WAL bytes a replica's replay is behind the primary, at the last check.",
            |n| n.lag_bytes.load(Relaxed),
        ),
        (
            "pgopt_replica_lag_milliseconds",
            "gauge",
            "How long ago the primary passed a replica's replay position, at the last check.",
            |n| n.lag_ms.load(Relaxed),
        ),
        (
            "pgopt_replica_transactions_total",
            "counter",
            "Read-only transactions routed to a replica.",
            |n| n.transactions.load(Relaxed),
        ),
        (
            "pgopt_replica_failovers_total",
            "counter",
            "Reads retried on another node after a replica failed under them.",
            |n| n.failovers.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in families {
        m.family(name, kind, help);
        for router in &routers {
            for node in &router.replicas {
                let labels = format!(
                    "database=\"{}\",replica=\"{}\"",
                    escape(&router.database),
                    escape(&node.address())
                );
                m.sample(name, &labels, get(node));
            }
        }
    }
    m.family(
        "pgopt_primary_transactions_total",
        "counter",
        "Transactions routed to the primary of a database with replicas: writes, and reads (after the client's own write, or with no replica available).",
    );
    for router in &routers {
        let db = escape(&router.database);
        for (kind, v) in [
            ("write", router.primary_writes.load(Relaxed)),
            ("read", router.primary_reads.load(Relaxed)),
        ] {
            m.sample(
                "pgopt_primary_transactions_total",
                &format!("database=\"{db}\",kind=\"{kind}\""),
                v,
            );
        }
    }
}

/// Query shapes with the most total time: at most this many, so the label set stays
/// bounded whatever the workload (the text is on `/api/queries/{fingerprint}`).
pub const TOP_SHAPES: usize = 20;

fn query_shapes(m: &mut Page, store: &pgopt_insight::Insight) {
    let rows = store.top_n_for_metrics(TOP_SHAPES);
    let status = store.status();
    m.family(
        "pgopt_query_shapes",
        "gauge",
        "Distinct (query shape, database, user) entries query insight holds.",
    );
    m.sample("pgopt_query_shapes", "", status.entries as u64);
    type Field = fn(&pgopt_insight::MetricsRow) -> String;
    let families: [(&str, &str, &str, Field); 6] = [
        (
            "pgopt_query_calls_total",
            "counter",
            "Executions of the busiest query shapes (by total time), by fingerprint.",
            |r| r.calls.to_string(),
        ),
        (
            "pgopt_query_errors_total",
            "counter",
            "Failed executions of the busiest query shapes.",
            |r| r.errors.to_string(),
        ),
        (
            "pgopt_query_rows_total",
            "counter",
            "Rows returned or affected by the busiest query shapes.",
            |r| r.rows.to_string(),
        ),
        (
            "pgopt_query_seconds_total",
            "counter",
            "Time spent in the busiest query shapes.",
            |r| format!("{:.6}", r.total_time_seconds),
        ),
        (
            "pgopt_query_p50_seconds",
            "gauge",
            "Median latency of the busiest query shapes.",
            |r| format!("{:.6}", r.p50_seconds),
        ),
        (
            "pgopt_query_p99_seconds",
            "gauge",
            "99th-percentile latency of the busiest query shapes.",
            |r| format!("{:.6}", r.p99_seconds),
        ),
    ];
    for (name, kind, help, get) in families {
        m.family(name, kind, help);
        for r in &rows {
            let _ = writeln!(
                m.out,
                "{name}{{fingerprint=\"{}\"}} {}",
                r.fingerprint,
                get(r)
            );
        }
    }
}

type TotalsField = fn(&Totals) -> u64;
type PoolField = fn(&Pool) -> u64;

#[derive(Default)]
struct Page {
    out: String,
}

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }
}
