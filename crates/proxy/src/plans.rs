//! Captured plans: for a slow query shape, `EXPLAIN (FORMAT JSON, VERBOSE)` is run out
//! of band — on a connection of its own, never a client's — rate-limited per shape and
//! overall. Plain EXPLAIN plans a statement without running it, so writes are safe;
//! pgopt never uses `EXPLAIN ANALYZE`. With the text parameters a client bound the plan
//! is the custom plan for those values; without them, the generic plan. Sequential
//! scans of large tables are flagged.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgopt_insight::{fingerprint_hex, format_rfc3339_millis, unix_millis};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::server::ServerConn;
use crate::shared::Shared;

/// `[insight.plans]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSettings {
    pub enabled: bool,
    /// Statements at least this slow get their shape's plan captured.
    pub threshold: Duration,
    /// One capture per shape per this long.
    pub interval: Duration,
    /// Captures per minute at most, over all shapes.
    pub per_minute: u32,
    /// A sequential scan of a table with at least this many rows is flagged.
    pub large_table_rows: u64,
    /// Plans kept (the oldest go first).
    pub keep: usize,
}

impl Default for PlanSettings {
    fn default() -> Self {
        PlanSettings {
            enabled: true,
            threshold: Duration::from_secs(1),
            interval: Duration::from_secs(600),
            per_minute: 6,
            large_table_rows: 10_000,
            keep: 500,
        }
    }
}

/// What a slow statement hands to the capture task.
pub struct PlanRequest {
    pub fingerprint: u64,
    pub database: String,
    pub user: String,
    /// Normalized text, `$n` placeholders.
    pub query: String,
    /// The text as the client sent it, when it may be planned with its values.
    pub sql: Option<String>,
    /// Text parameters the client bound, when known.
    pub params: Option<Vec<Option<String>>>,
    /// Parameter type OIDs the client fixed at Parse (0: left to the server).
    pub param_types: Option<std::sync::Arc<[u32]>>,
    /// The client's settings as statements, applied first (search_path, planner
    /// settings): the plan is the one the client's session gets.
    pub settings: std::sync::Arc<[String]>,
}

/// A sequential scan in a captured plan.
#[derive(Debug, Clone, Serialize)]
pub struct SeqScan {
    pub table: String,
    /// The table's size estimate (reltuples, or live tuples before any ANALYZE).
    pub rows: u64,
    /// At least `large_table_rows`.
    pub large: bool,
}

/// One shape's latest plan.
#[derive(Debug, Clone, Serialize)]
pub struct CapturedPlan {
    pub fingerprint: String,
    pub query: String,
    pub database: String,
    pub user: String,
    pub captured_at: String,
    /// `custom` (the bound values) or `generic` (no values).
    pub plan_kind: &'static str,
    /// EXPLAIN's JSON, as the server wrote it; absent when the capture failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seq_scans: Vec<SeqScan>,
}

/// The plans captured so far and the sending end of the capture queue.
pub struct Plans {
    settings: Mutex<PlanSettings>,
    /// The hot path's copy of the threshold in µs; `u64::MAX` when disabled.
    threshold_us: AtomicU64,
    sender: mpsc::Sender<PlanRequest>,
    receiver: Mutex<Option<mpsc::Receiver<PlanRequest>>>,
    state: Mutex<PlanState>,
}

#[derive(Default)]
struct PlanState {
    plans: HashMap<u64, CapturedPlan>,
    order: VecDeque<u64>,
    /// When each shape was last sent for capture.
    asked: HashMap<u64, Instant>,
}

fn threshold_us(settings: &PlanSettings) -> u64 {
    if settings.enabled {
        u64::try_from(settings.threshold.as_micros())
            .unwrap_or(u64::MAX - 1)
            .min(u64::MAX - 1)
    } else {
        u64::MAX
    }
}

impl Plans {
    pub fn new(settings: PlanSettings) -> Plans {
        let (sender, receiver) = mpsc::channel(16);
        Plans {
            threshold_us: AtomicU64::new(threshold_us(&settings)),
            settings: Mutex::new(settings),
            sender,
            receiver: Mutex::new(Some(receiver)),
            state: Mutex::default(),
        }
    }

    pub fn settings(&self) -> PlanSettings {
        lock(&self.settings).clone()
    }

    /// Takes new settings (RELOAD); captured plans stay, trimmed to `keep`.
    pub fn set_settings(&self, settings: PlanSettings) {
        let keep = settings.keep;
        self.threshold_us
            .store(threshold_us(&settings), Ordering::Relaxed);
        *lock(&self.settings) = settings;
        let mut state = lock(&self.state);
        while state.order.len() > keep {
            if let Some(old) = state.order.pop_front() {
                state.plans.remove(&old);
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.threshold_us.load(Ordering::Relaxed) != u64::MAX
    }

    /// Whether a statement this slow is worth a plan (cheap, for the hot path).
    pub fn wants(&self, duration: Duration) -> bool {
        let threshold = self.threshold_us.load(Ordering::Relaxed);
        threshold != u64::MAX && duration.as_micros() >= u128::from(threshold)
    }

    /// Queues a capture unless this shape was captured recently or the queue is full.
    pub fn request(&self, request: PlanRequest) {
        let (interval, keep) = {
            let s = lock(&self.settings);
            (s.interval, s.keep)
        };
        {
            let mut state = lock(&self.state);
            let now = Instant::now();
            if let Some(at) = state.asked.get(&request.fingerprint) {
                if now.duration_since(*at) < interval {
                    return;
                }
            }
            if state.asked.len() >= keep * 4 {
                state
                    .asked
                    .retain(|_, at| now.duration_since(*at) < interval);
            }
            state.asked.insert(request.fingerprint, now);
        }
        let fingerprint = request.fingerprint;
        if self.sender.try_send(request).is_err() {
            // The queue is full: the shape's next slow run asks again.
            lock(&self.state).asked.remove(&fingerprint);
        }
    }

    pub fn get(&self, fingerprint: u64) -> Option<CapturedPlan> {
        lock(&self.state).plans.get(&fingerprint).cloned()
    }

    /// Every plan, newest first.
    pub fn list(&self) -> Vec<CapturedPlan> {
        let state = lock(&self.state);
        state
            .order
            .iter()
            .rev()
            .filter_map(|fp| state.plans.get(fp).cloned())
            .collect()
    }

    fn store(&self, fingerprint: u64, plan: CapturedPlan) {
        let keep = lock(&self.settings).keep;
        let mut state = lock(&self.state);
        if state.plans.insert(fingerprint, plan).is_none() {
            state.order.push_back(fingerprint);
        }
        while state.order.len() > keep {
            if let Some(old) = state.order.pop_front() {
                state.plans.remove(&old);
            }
        }
    }
}

/// The capture task: takes requests off the queue, at most `per_minute` a minute.
pub async fn capture_loop(shared: Arc<Shared>) {
    let Some(insight) = shared.insight.clone() else {
        return;
    };
    let plans = &insight.plans;
    let Some(mut receiver) = lock(&plans.receiver).take() else {
        return;
    };
    let mut last: Option<Instant> = None;
    while let Some(request) = receiver.recv().await {
        let settings = plans.settings();
        if let Some(at) = last {
            let spacing = Duration::from_secs(60) / settings.per_minute.max(1);
            tokio::time::sleep_until((at + spacing).into()).await;
        }
        last = Some(Instant::now());
        let plan = capture(&shared, &settings, &request).await;
        plans.store(request.fingerprint, plan);
    }
}

async fn capture(shared: &Shared, settings: &PlanSettings, request: &PlanRequest) -> CapturedPlan {
    let mut plan = CapturedPlan {
        fingerprint: fingerprint_hex(request.fingerprint),
        query: request.query.clone(),
        database: request.database.clone(),
        user: request.user.clone(),
        captured_at: format_rfc3339_millis(unix_millis(std::time::SystemTime::now())),
        plan_kind: if request.params.is_some() || request.sql.is_some() {
            "custom"
        } else {
            "generic"
        },
        plan: None,
        error: None,
        seq_scans: Vec::new(),
    };
    // (The pool of a database's forced user is that user's.)
    let config = shared.config();
    let user = config
        .database(&request.database)
        .map_or(request.user.clone(), |db| {
            crate::shared::pool_user(&db, &request.user).to_string()
        });
    let pool = shared
        .pools
        .list()
        .into_iter()
        .find(|p| p.database == request.database && p.user == user);
    let Some(pool) = pool else {
        plan.error = Some("the pool is gone".into());
        return plan;
    };
    let max_len = pool.limits().max_message_len;
    let result = async {
        let mut conn = pool
            .connect_out_of_band(crate::pool::Room::Spare)
            .await
            .map_err(|e| e.to_string())?;
        for setting in request.settings.iter() {
            if let Err(e) = conn.simple_query(setting, max_len).await {
                tracing::debug!(error = %e, "a client setting failed on the plan connection");
            }
        }
        let types = match &request.param_types {
            Some(oids) => type_names(&mut conn, oids, max_len).await?,
            None => Vec::new(),
        };
        let rows = conn
            .simple_query(&explain_sql(request, &types), max_len)
            .await?;
        let text = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .ok_or("EXPLAIN returned nothing")?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let mut scans = Vec::new();
        seq_scans(&json, &mut scans);
        let mut flagged = Vec::new();
        for (schema, table) in scans {
            let rows = table_rows(&mut conn, &schema, &table, max_len)
                .await
                .unwrap_or(0);
            flagged.push(SeqScan {
                table: format!("{schema}.{table}"),
                rows,
                large: rows >= settings.large_table_rows,
            });
        }
        Ok::<_, String>((json, flagged))
    };
    // A connect that may try each server of a host list, then the EXPLAIN.
    let bound = pool.target.connect_budget(pool.limits().round_trip()) + Duration::from_secs(10);
    match tokio::time::timeout(bound, result).await {
        Ok(Ok((json, scans))) => {
            plan.plan = Some(json);
            plan.seq_scans = scans;
        }
        Ok(Err(e)) => plan.error = Some(e),
        Err(_) => plan.error = Some("no plan within 10 s".into()),
    }
    plan
}

/// The statement text that gets the plan: PREPARE the normalized text, then EXPLAIN
/// EXECUTE it with the bound values, or with NULLs under a forced generic plan.
/// The names of parameter types by OID (`unknown` for 0: inferred from the text).
async fn type_names(
    conn: &mut ServerConn,
    oids: &[u32],
    max_len: u32,
) -> Result<Vec<String>, String> {
    let list: Vec<String> = oids.iter().map(u32::to_string).collect();
    let sql = format!(
        "SELECT CASE WHEN o = 0 THEN 'unknown' ELSE pg_catalog.format_type(o, NULL) END \
         FROM unnest('{{{}}}'::pg_catalog.oid[]) WITH ORDINALITY AS u(o, n) ORDER BY n",
        list.join(",")
    );
    let rows = conn.simple_query(&sql, max_len).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .next()
                .flatten()
                .unwrap_or_else(|| "unknown".into())
        })
        .collect())
}

/// `types`: names of the leading parameters' types (the rest are inferred).
fn explain_sql(request: &PlanRequest, types: &[String]) -> String {
    // Statement texts end with a newline: one may end in a `--` comment.
    let text = request.sql.as_deref().unwrap_or(&request.query);
    let text = text.trim_end().trim_end_matches(';');
    if request.sql.is_some() && request.params.is_none() {
        // A simple query: planned as sent, with its literals.
        return format!("EXPLAIN (FORMAT JSON, VERBOSE) {text}\n");
    }
    let count = max_placeholder(text);
    let (setting, args) = match &request.params {
        Some(values) => (
            "",
            (0..count)
                .map(|i| match values.get(i).cloned().flatten() {
                    Some(v) => format!("'{}'", v.replace('\'', "''")),
                    None => "NULL".into(),
                })
                .collect::<Vec<_>>(),
        ),
        None => (
            "SET plan_cache_mode = force_generic_plan; ",
            vec!["NULL".to_string(); count],
        ),
    };
    let execute = if args.is_empty() {
        "EXECUTE pgopt_plan".to_string()
    } else {
        format!("EXECUTE pgopt_plan({})", args.join(", "))
    };
    let typed = if types.is_empty() {
        String::new()
    } else {
        format!(" ({})", types.join(", "))
    };
    format!(
        "{setting}PREPARE pgopt_plan{typed} AS {text}\n; EXPLAIN (FORMAT JSON, VERBOSE) {execute}"
    )
}

/// The highest `$n` in a normalized text.
fn max_placeholder(query: &str) -> usize {
    let bytes = query.as_bytes();
    let mut max = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let digits: String = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|b| *b as char)
                .collect();
            if let Ok(n) = digits.parse::<usize>() {
                max = max.max(n);
            }
            i += digits.len();
        }
        i += 1;
    }
    max
}

/// (schema, table) of every Seq Scan node in an EXPLAIN JSON plan.
fn seq_scans(value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("Node Type").and_then(|v| v.as_str()) == Some("Seq Scan") {
                let text = |k: &str| map.get(k).and_then(|v| v.as_str()).unwrap_or("");
                out.push((
                    text("Schema").to_string(),
                    text("Relation Name").to_string(),
                ));
            }
            for v in map.values() {
                seq_scans(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| seq_scans(v, out)),
        _ => {}
    }
}

async fn table_rows(
    conn: &mut ServerConn,
    schema: &str,
    table: &str,
    max_len: u32,
) -> Result<u64, String> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let sql = format!(
        "SELECT greatest(c.reltuples, coalesce(s.n_live_tup, 0), 0)::int8 FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE n.nspname = {} AND c.relname = {}",
        quote(schema),
        quote(table)
    );
    let rows = conn.simple_query(&sql, max_len).await?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no such table".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str, params: Option<Vec<Option<String>>>) -> PlanRequest {
        PlanRequest {
            fingerprint: 1,
            database: "d".into(),
            user: "u".into(),
            query: query.into(),
            sql: None,
            params,
            param_types: None,
            settings: std::sync::Arc::from(Vec::new()),
        }
    }

    #[test]
    fn explain_text_with_values_or_a_generic_plan() {
        let r = request("SELECT * FROM t WHERE a = $1 AND b = $2", None);
        assert_eq!(
            explain_sql(&r, &[]),
            "SET plan_cache_mode = force_generic_plan; PREPARE pgopt_plan AS SELECT * FROM t WHERE a = $1 AND b = $2\n; EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE pgopt_plan(NULL, NULL)"
        );
        let r = request(
            "SELECT * FROM t WHERE a = $1 AND b = $2",
            Some(vec![Some("it's".into()), None]),
        );
        assert!(explain_sql(&r, &[]).ends_with("EXECUTE pgopt_plan('it''s', NULL)"));
        let r = request("SELECT 1", None);
        assert!(explain_sql(&r, &[]).ends_with("EXECUTE pgopt_plan"));
        assert_eq!(max_placeholder("SELECT $1, $12, $3"), 12);
        let r = request("SELECT $1 IS NULL", None);
        assert!(explain_sql(&r, &["text".into()]).contains("PREPARE pgopt_plan (text) AS"));
        // The client's own text: literals as sent, a trailing comment ended.
        let mut r = request("SELECT * FROM t WHERE a IN ($1 /*, ... */)", None);
        r.sql = Some("SELECT * FROM t WHERE a IN (1, 2, 3) -- list".into());
        assert_eq!(
            explain_sql(&r, &[]),
            "EXPLAIN (FORMAT JSON, VERBOSE) SELECT * FROM t WHERE a IN (1, 2, 3) -- list\n"
        );
    }

    #[test]
    fn seq_scans_are_found_at_any_depth() {
        let plan: serde_json::Value = serde_json::from_str(
            r#"[{"Plan": {"Node Type": "Hash Join", "Plans": [
                {"Node Type": "Seq Scan", "Schema": "public", "Relation Name": "a"},
                {"Node Type": "Hash", "Plans": [{"Node Type": "Index Scan", "Relation Name": "b"}]}]}}]"#,
        )
        .unwrap();
        let mut out = Vec::new();
        seq_scans(&plan, &mut out);
        assert_eq!(out, vec![("public".to_string(), "a".to_string())]);
    }

    #[test]
    fn a_request_the_full_queue_turned_away_is_taken_on_its_next_run() {
        let plans = Plans::new(PlanSettings::default());
        let nth = |fingerprint| PlanRequest {
            fingerprint,
            ..request("SELECT 1", None)
        };
        for fp in 0..16 {
            plans.request(nth(fp));
        }
        plans.request(nth(16)); // the queue holds 16
        plans.request(nth(0)); // asked already: not queued twice
        let mut receiver = lock(&plans.receiver).take().unwrap();
        let queued: Vec<u64> = std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|r| r.fingerprint)
            .collect();
        assert_eq!(queued, (0..16).collect::<Vec<_>>());
        plans.request(nth(16));
        assert_eq!(receiver.try_recv().map(|r| r.fingerprint).ok(), Some(16));
    }
}
