//! Query insight on the admin console (`SHOW QUERIES`, `SHOW SLOW`, `SHOW NPLUS1`,
//! `SHOW PLANS`) and as JSON over HTTP (`/api/queries`, `/api/queries/{fingerprint}`,
//! `/api/slow`, `/api/nplus1`, `/api/plans`, `/api/plans/{fingerprint}`).

use pgopt_insight::{fingerprint_hex, OrderBy};

use crate::shared::Shared;
use crate::views::{n, t, Kind, Table};

/// Rows SHOW QUERIES lists, busiest first.
const TOP: usize = 50;

fn ms(v: f64) -> Option<String> {
    Some(format!("{v:.3}"))
}

fn off(what: &str) -> Table {
    let mut table = Table::new(&[("note", Kind::Text)]);
    table.push(vec![t(format!(
        "query insight is off (insight.enabled = false): no {what}"
    ))]);
    table
}

pub fn queries(shared: &Shared) -> Table {
    let Some(insight) = &shared.insight else {
        return off("query statistics");
    };
    let mut table = Table::new(&[
        ("fingerprint", Kind::Text),
        ("query", Kind::Text),
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("calls", Kind::Int),
        ("errors", Kind::Int),
        ("rows", Kind::Int),
        ("total_ms", Kind::Float),
        ("mean_ms", Kind::Float),
        ("p50_ms", Kind::Float),
        ("p95_ms", Kind::Float),
        ("p99_ms", Kind::Float),
        ("max_ms", Kind::Float),
        ("routed", Kind::Text),
        ("cache_hits", Kind::Int),
    ]);
    for q in insight.store.top(TOP, OrderBy::TotalTime) {
        // Calls per server, with replicas: "primary=3 replica1=12".
        let routed: Vec<String> = q
            .routed
            .iter()
            .map(|r| match r.route {
                pgopt_insight::Route::Primary => format!("primary={}", r.count),
                pgopt_insight::Route::Replica(i) => format!("replica{}={}", i + 1, r.count),
            })
            .collect();
        table.push(vec![
            t(fingerprint_hex(q.fingerprint)),
            t(q.query),
            q.database,
            q.user,
            n(q.calls),
            n(q.errors),
            n(q.rows),
            ms(q.total_time_ms),
            ms(q.mean_time_ms),
            ms(q.p50_ms),
            ms(q.p95_ms),
            ms(q.p99_ms),
            ms(q.max_time_ms),
            (!routed.is_empty()).then(|| routed.join(" ")),
            n(q.cache_hits),
        ]);
    }
    table
}

pub fn slow(shared: &Shared) -> Table {
    let Some(insight) = &shared.insight else {
        return off("slow log");
    };
    let mut table = Table::new(&[
        ("time", Kind::Text),
        ("duration_ms", Kind::Float),
        ("fingerprint", Kind::Text),
        ("query", Kind::Text),
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("client_addr", Kind::Text),
        ("rows", Kind::Int),
        ("sqlstate", Kind::Text),
        ("params", Kind::Text),
    ]);
    for e in insight.slow.recent(usize::MAX) {
        table.push(vec![
            t(e.timestamp),
            ms(e.duration_ms),
            t(e.fingerprint),
            t(e.query),
            t(e.database),
            t(e.user),
            e.client_addr,
            n(e.rows),
            e.sqlstate,
            e.params.map(|p| p.join(", ")),
        ]);
    }
    table
}

pub fn n_plus_one(shared: &Shared) -> Table {
    let Some(insight) = &shared.insight else {
        return off("N+1 findings");
    };
    let mut table = Table::new(&[
        ("kind", Kind::Text),
        ("count", Kind::Int),
        ("fingerprint", Kind::Text),
        ("query", Kind::Text),
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("client_addr", Kind::Text),
        ("first_seen", Kind::Text),
        ("last_seen", Kind::Text),
    ]);
    for f in insight.n_plus_one.findings() {
        let kind = serde_json::to_value(f.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        table.push(vec![
            t(kind),
            n(f.count),
            t(f.fingerprint),
            t(f.query),
            t(f.database),
            t(f.user),
            f.client_addr,
            t(pgopt_insight::format_rfc3339_millis(f.first_unix_ms)),
            t(pgopt_insight::format_rfc3339_millis(f.last_unix_ms)),
        ]);
    }
    table
}

pub fn plans(shared: &Shared) -> Table {
    let Some(insight) = &shared.insight else {
        return off("captured plans");
    };
    let mut table = Table::new(&[
        ("fingerprint", Kind::Text),
        ("captured_at", Kind::Text),
        ("plan_kind", Kind::Text),
        ("large_seq_scans", Kind::Text),
        ("seq_scans", Kind::Text),
        ("error", Kind::Text),
        ("query", Kind::Text),
    ]);
    for p in insight.plans.list() {
        let scans = |large: bool| {
            p.seq_scans
                .iter()
                .filter(|s| !large || s.large)
                .map(|s| format!("{} (~{} rows)", s.table, s.rows))
                .collect::<Vec<_>>()
                .join(", ")
        };
        table.push(vec![
            t(&p.fingerprint),
            t(&p.captured_at),
            t(p.plan_kind),
            t(scans(true)),
            t(scans(false)),
            p.error.clone(),
            t(&p.query),
        ]);
    }
    table
}

/// JSON for `/api/...`: `None` when the path is not an insight endpoint; otherwise
/// the status code and body.
pub fn api(shared: &Shared, path: &str) -> Option<(u16, String)> {
    let rest = path.strip_prefix("/api/")?;
    let Some(insight) = &shared.insight else {
        return Some((
            404,
            "{\"error\":\"query insight is off (insight.enabled = false)\"}\n".into(),
        ));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let limit = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100);
    let json = match path {
        "queries" => {
            let order = match query.split('&').find_map(|kv| kv.strip_prefix("order=")) {
                Some("calls") => OrderBy::Calls,
                Some("mean") => OrderBy::Mean,
                Some("p99") => OrderBy::P99,
                Some("errors") => OrderBy::Errors,
                _ => OrderBy::TotalTime,
            };
            serde_json::to_string(&insight.store.top(limit, order))
        }
        "slow" => serde_json::to_string(&insight.slow.recent(limit)),
        "nplus1" => serde_json::to_string(&insight.n_plus_one.findings()),
        "plans" => serde_json::to_string(&insight.plans.list()),
        other if other.starts_with("plans/") => {
            let hex = &other["plans/".len()..];
            let Ok(fingerprint) = u64::from_str_radix(hex, 16) else {
                return Some((
                    400,
                    format!("{{\"error\":\"{hex:?} is not a fingerprint (16 hex digits)\"}}\n"),
                ));
            };
            match insight.plans.get(fingerprint) {
                Some(plan) => serde_json::to_string(&plan),
                None => {
                    return Some((
                        404,
                        "{\"error\":\"no plan captured for this fingerprint\"}\n".into(),
                    ))
                }
            }
        }
        other => {
            let hex = other.strip_prefix("queries/")?;
            let Ok(fingerprint) = u64::from_str_radix(hex, 16) else {
                return Some((
                    400,
                    format!("{{\"error\":\"{hex:?} is not a fingerprint (16 hex digits)\"}}\n"),
                ));
            };
            match insight.store.get(fingerprint) {
                Some(stats) => serde_json::to_string(&stats),
                None => return Some((404, "{\"error\":\"no such fingerprint\"}\n".into())),
            }
        }
    };
    Some(match json {
        Ok(mut body) => {
            body.push('\n');
            (200, body)
        }
        Err(e) => (500, format!("{{\"error\":\"{e}\"}}\n")),
    })
}
