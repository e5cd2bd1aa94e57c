//! Health checks: each one query against the catalog or statistics views, turned into
//! findings with an id, a severity, the evidence (numbers and object names), why it
//! matters and, where one exists, the SQL that fixes it.

use serde::Serialize;
use tokio_postgres::{Client, Row};

use crate::AdvisorError;

/// How bad a finding is; `--fail-on` compares against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// One thing worth a DBA's attention.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The check that found it (stable, for suppressions and CI).
    pub check: &'static str,
    pub severity: Severity,
    /// The object concerned (`schema.table`, an index, a session).
    pub object: String,
    /// What was measured, in words and numbers.
    pub evidence: String,
    /// Why it matters.
    pub why: &'static str,
    /// SQL that fixes it, when there is such a statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Thresholds of the checks (`[advise]` in the config).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Unused indexes smaller than this are not reported.
    pub unused_index_min_bytes: i64,
    /// Foreign keys without an index matter from this many rows in the referencing table.
    pub fk_table_min_rows: i64,
    /// Dead tuples: at least this many, and this share of the live ones.
    pub dead_tuples_min: i64,
    pub dead_tuples_ratio: f64,
    /// Sessions idle in a transaction, or running one query, for longer (seconds).
    pub idle_in_transaction_secs: f64,
    pub long_query_secs: f64,
    /// Shares of max_connections in use: warning, critical.
    pub connections_warning: f64,
    pub connections_critical: f64,
    /// Shares of a sequence's range used: warning, critical.
    pub sequence_warning: f64,
    pub sequence_critical: f64,
    /// Shares of the 2^31 transaction ID horizon consumed: warning, critical.
    pub wraparound_warning: f64,
    pub wraparound_critical: f64,
    /// Buffer cache hit ratio below this (once at least `cache_min_reads` blocks were
    /// read from disk) is low.
    pub cache_hit_ratio: f64,
    pub cache_min_reads: i64,
    /// Sequential scans: at least this many, reading at least this many rows each.
    pub seq_scan_min_count: i64,
    pub seq_scan_min_rows: i64,
    /// Rows changed since the last ANALYZE: at least this many and this share.
    pub stale_analyze_min_rows: i64,
    pub stale_analyze_ratio: f64,
    /// Bloat: at least this many wasted bytes, and this share of the relation.
    pub bloat_min_bytes: i64,
    pub bloat_ratio: f64,
    /// pg_stat_statements: statements with at least this mean time (ms) and calls.
    pub slow_statement_ms: f64,
    pub slow_statement_min_calls: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            unused_index_min_bytes: 1 << 20,
            fk_table_min_rows: 10_000,
            dead_tuples_min: 10_000,
            dead_tuples_ratio: 0.2,
            idle_in_transaction_secs: 60.0,
            long_query_secs: 300.0,
            connections_warning: 0.8,
            connections_critical: 0.9,
            sequence_warning: 0.75,
            sequence_critical: 0.9,
            wraparound_warning: 0.5,
            wraparound_critical: 0.75,
            cache_hit_ratio: 0.99,
            cache_min_reads: 10_000,
            seq_scan_min_count: 100,
            seq_scan_min_rows: 10_000,
            stale_analyze_min_rows: 10_000,
            stale_analyze_ratio: 0.2,
            bloat_min_bytes: 100 << 20,
            bloat_ratio: 0.3,
            slow_statement_ms: 100.0,
            slow_statement_min_calls: 10,
        }
    }
}

/// Every check: its id and what it looks for.
pub const CHECKS: &[(&str, &str)] = &[
    (
        "unused_index",
        "indexes never scanned since statistics were reset",
    ),
    (
        "duplicate_index",
        "indexes identical to another on the same table",
    ),
    (
        "redundant_index",
        "indexes whose columns lead another index",
    ),
    (
        "invalid_index",
        "indexes left invalid by a failed CREATE INDEX CONCURRENTLY",
    ),
    (
        "missing_fk_index",
        "foreign keys of large tables without an index",
    ),
    ("no_primary_key", "tables without a primary key"),
    (
        "dead_tuples",
        "tables with many dead rows (bloat, vacuum falling behind)",
    ),
    (
        "table_bloat",
        "tables much larger than their rows need (estimated from pg_stats)",
    ),
    (
        "index_bloat",
        "B-tree indexes much larger than their entries need (estimated)",
    ),
    (
        "sequence_near_max",
        "sequences close to their maximum value",
    ),
    (
        "idle_in_transaction",
        "sessions holding a transaction open while idle",
    ),
    ("long_running_query", "queries running for a long time"),
    (
        "blocked_query",
        "queries waiting for a lock, with their blockers",
    ),
    (
        "connections_near_max",
        "connections close to max_connections",
    ),
    (
        "xid_wraparound",
        "databases approaching transaction ID wraparound",
    ),
    (
        "multixact_wraparound",
        "databases approaching multixact ID wraparound",
    ),
    (
        "low_cache_hit",
        "table or index reads missing the buffer cache",
    ),
    (
        "seq_scans",
        "tables read by many sequential scans of many rows",
    ),
    (
        "stale_statistics",
        "tables changed a lot since their last ANALYZE",
    ),
    (
        "slow_statement",
        "statements slow on average (pg_stat_statements, when installed)",
    ),
];

/// Runs every check; findings most severe first.
pub async fn health_checks(client: &Client, t: &Thresholds) -> Result<Vec<Finding>, AdvisorError> {
    let mut findings = Vec::new();
    let statements = client
        .query_opt(
            "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'",
            &[],
        )
        .await
        .map_err(|source| AdvisorError::Query {
            check: "slow_statement",
            source,
        })?
        .is_some();
    for (check, sql) in QUERIES {
        if *check == "slow_statement" && !statements {
            continue;
        }
        let rows = client
            .query(*sql, &[])
            .await
            .map_err(|source| AdvisorError::Query { check, source })?;
        for row in rows {
            if let Some(f) = judge(check, &row, t) {
                findings.push(f);
            }
        }
    }
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.check.cmp(b.check)));
    Ok(findings)
}

/// Shown sizes: `12 MB`, `840 kB`.
pub fn human_size(bytes: i64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b => format!("{} kB", b / 1024),
    }
}

fn judge(check: &'static str, r: &Row, t: &Thresholds) -> Option<Finding> {
    // try_get: a column of an unexpected type reads as empty, never a panic.
    let s = |i: usize| -> String {
        r.try_get::<_, Option<String>>(i)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    let n = |i: usize| -> i64 { r.try_get::<_, Option<i64>>(i).ok().flatten().unwrap_or(0) };
    let f = |i: usize| -> f64 { r.try_get::<_, Option<f64>>(i).ok().flatten().unwrap_or(0.0) };
    let finding = |severity, object: String, evidence: String, why, fix: Option<String>| Finding {
        check,
        severity,
        object,
        evidence,
        why,
        fix,
    };
    match check {
        // index, table, size, scans, stats age in days
        "unused_index" => (n(2) >= t.unused_index_min_bytes).then(|| {
            finding(
                Severity::Warning,
                s(0),
                format!(
                    "0 scans on {} since statistics were reset {:.0} days ago; {} on disk, and every write to {} maintains it",
                    s(0), f(4), human_size(n(2)), s(1)
                ),
                "An index no query uses still costs disk, memory and time on every INSERT, UPDATE and DELETE. Check replicas before dropping: their scans are not counted here.",
                Some(format!("DROP INDEX CONCURRENTLY IF EXISTS {};", s(0))),
            )
        }),
        // index, table, duplicate of, size
        "duplicate_index" => Some(finding(
            Severity::Warning,
            s(0),
            format!("{} on {} has the same definition as {}; {} on disk", s(0), s(1), s(2), human_size(n(3))),
            "A duplicate index doubles the write cost and the space of one index and serves no query the other does not.",
            Some(format!("DROP INDEX CONCURRENTLY IF EXISTS {};", s(0))),
        )),
        // index, table, covered by, size
        "redundant_index" => Some(finding(
            Severity::Info,
            s(0),
            format!("the columns of {} lead {} on {}; {} on disk", s(0), s(2), s(1), human_size(n(3))),
            "The wider index serves the same lookups; the narrower one only adds write cost (unless it is much smaller and very hot).",
            Some(format!("DROP INDEX CONCURRENTLY IF EXISTS {};", s(0))),
        )),
        // index, table
        "invalid_index" => Some(finding(
            Severity::Warning,
            s(0),
            format!("{} on {} is marked invalid", s(0), s(1)),
            "An invalid index is maintained on every write but never used by a query: a CREATE INDEX CONCURRENTLY failed or was cancelled.",
            Some(format!("DROP INDEX CONCURRENTLY IF EXISTS {}; -- then create it again", s(0))),
        )),
        // constraint, table, columns, table rows
        "missing_fk_index" => (n(3) >= t.fk_table_min_rows).then(|| {
            finding(
                Severity::Warning,
                format!("{} ({})", s(1), s(2)),
                format!("foreign key {} on {}({}) has no index leading with those columns; {} rows", s(0), s(1), s(2), n(3)),
                "Deleting or updating a referenced row scans the whole referencing table, under lock, and joins on the key cannot use an index.",
                Some(format!("CREATE INDEX CONCURRENTLY ON {} ({});", s(1), s(2))),
            )
        }),
        // table, rows
        "no_primary_key" => Some(finding(
            Severity::Warning,
            s(0),
            format!("{} has no primary key (about {} rows)", s(0), n(1).max(0)),
            "Without a primary key rows cannot be addressed reliably, logical replication cannot replicate UPDATE and DELETE, and duplicates creep in.",
            None,
        )),
        // table, dead, live, last autovacuum (text)
        "dead_tuples" => {
            let (dead, live) = (n(1), n(2));
            let ratio = dead as f64 / live.max(1) as f64;
            (dead >= t.dead_tuples_min && ratio >= t.dead_tuples_ratio).then(|| {
                finding(
                    if ratio >= 1.0 { Severity::Warning } else { Severity::Info },
                    s(0),
                    format!(
                        "{dead} dead rows against {live} live ({:.0}%); last autovacuum: {}",
                        ratio * 100.0,
                        if s(3).is_empty() { "never".to_string() } else { s(3) }
                    ),
                    "Dead rows bloat the table and its indexes: scans read more pages, and the space is not reused until VACUUM runs.",
                    Some(format!("VACUUM (ANALYZE) {};", s(0))),
                )
            })
        }
        // relation, (table of an index), actual bytes, expected bytes
        "table_bloat" | "index_bloat" => {
            let (actual, expected) = (n(2), n(3));
            let waste = actual - expected;
            let share = waste as f64 / actual.max(1) as f64;
            (waste >= t.bloat_min_bytes && share >= t.bloat_ratio).then(|| {
                let (why, fix) = if check == "table_bloat" {
                    (
                        "Scans read the empty space too, and it stays cached. Plain VACUUM makes it reusable but rarely gives it back; VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock, pg_repack does it online.",
                        format!("VACUUM FULL {}; -- locks the table; pg_repack --table {0} rebuilds it online", s(0)),
                    )
                } else {
                    (
                        "A bloated index is read and cached for nothing: lookups and range scans touch more pages than the entries need.",
                        format!("REINDEX INDEX CONCURRENTLY {};", s(0)),
                    )
                };
                finding(
                    if share >= 0.6 { Severity::Warning } else { Severity::Info },
                    s(0),
                    format!(
                        "{} on disk where its rows need about {}: ~{} ({:.0}%) is empty space{}",
                        human_size(actual),
                        human_size(expected),
                        human_size(waste),
                        share * 100.0,
                        if s(1).is_empty() { String::new() } else { format!(" (index on {})", s(1)) }
                    ),
                    why,
                    Some(fix),
                )
            })
        }
        // sequence, last value, max value, used share
        "sequence_near_max" => {
            let used = f(3);
            let severity = if used >= t.sequence_critical {
                Severity::Critical
            } else if used >= t.sequence_warning {
                Severity::Warning
            } else {
                return None;
            };
            Some(finding(
                severity,
                s(0),
                format!("{} is at {} of {} ({:.1}% used)", s(0), n(1), n(2), used * 100.0),
                "When a sequence reaches its maximum every INSERT that needs a new value fails.",
                Some(format!("ALTER SEQUENCE {} AS bigint MAXVALUE 9223372036854775807; -- and widen the column to bigint", s(0))),
            ))
        }
        // pid, user, app, seconds, query
        "idle_in_transaction" => (f(3) >= t.idle_in_transaction_secs).then(|| {
            finding(
                Severity::Warning,
                format!("pid {}", n(0)),
                format!("{} ({}) idle in a transaction for {:.0} s; last statement: {}", s(1), s(2), f(3), s(4)),
                "An open transaction holds its locks and keeps VACUUM from removing rows dead since it began: bloat grows everywhere.",
                Some(format!("SELECT pg_terminate_backend({}); -- and set idle_in_transaction_session_timeout", n(0))),
            )
        }),
        "long_running_query" => (f(3) >= t.long_query_secs).then(|| {
            finding(
                Severity::Warning,
                format!("pid {}", n(0)),
                format!("{} ({}) running one query for {:.0} s: {}", s(1), s(2), f(3), s(4)),
                "A long query holds a snapshot (VACUUM cannot clean behind it) and often locks others out.",
                Some(format!("SELECT pg_cancel_backend({});", n(0))),
            )
        }),
        // pid, user, blocked by (pids), seconds waiting, query
        "blocked_query" => Some(finding(
            Severity::Warning,
            format!("pid {}", n(0)),
            format!("{} waiting {:.0} s for a lock held by pid {}: {}", s(1), f(3), s(2), s(4)),
            "A blocked query holds its connection and everything queued behind it.",
            None,
        )),
        // used, max
        "connections_near_max" => {
            let share = n(0) as f64 / n(1).max(1) as f64;
            let severity = if share >= t.connections_critical {
                Severity::Critical
            } else if share >= t.connections_warning {
                Severity::Warning
            } else {
                return None;
            };
            Some(finding(
                severity,
                "max_connections".into(),
                format!("{} of {} connections in use ({:.0}%)", n(0), n(1), share * 100.0),
                "At max_connections new clients are refused; each connection is a process with its own memory. A pooler (pgopt proxy) serves many clients on few connections.",
                None,
            ))
        }
        // database, age
        "xid_wraparound" | "multixact_wraparound" => {
            let share = n(1) as f64 / 2_147_483_648.0;
            let severity = if share >= t.wraparound_critical {
                Severity::Critical
            } else if share >= t.wraparound_warning {
                Severity::Warning
            } else {
                return None;
            };
            let what = if check == "xid_wraparound" {
                "datfrozenxid"
            } else {
                "datminmxid (multixact)"
            };
            Some(finding(
                severity,
                s(0),
                format!("{what} age {} ({:.0}% of the 2^31 horizon)", n(1), share * 100.0),
                "At the horizon PostgreSQL stops accepting writes until the database is vacuumed.",
                Some("VACUUM (FREEZE, VERBOSE); -- in that database, or let autovacuum catch up".into()),
            ))
        }
        // kind (tables/indexes), hits, reads
        "low_cache_hit" => {
            let (hits, reads) = (n(1), n(2));
            let ratio = hits as f64 / (hits + reads).max(1) as f64;
            (reads >= t.cache_min_reads && ratio < t.cache_hit_ratio).then(|| {
                finding(
                    Severity::Warning,
                    s(0),
                    format!("{} cache hit ratio {:.2}% ({hits} hits, {reads} reads from disk)", s(0), ratio * 100.0),
                    "Reads that miss shared_buffers go to the OS cache or disk: the working set does not fit, or queries read far more than they need (missing indexes).",
                    None,
                )
            })
        }
        // table, seq scans, rows read per scan, idx scans
        "seq_scans" => (n(1) >= t.seq_scan_min_count && n(2) >= t.seq_scan_min_rows).then(|| {
            finding(
                Severity::Info,
                s(0),
                format!("{} sequential scans reading {} rows each on average ({} index scans)", n(1), n(2), n(3)),
                "Queries that read a whole large table again and again usually want an index (see the index advisor).",
                None,
            )
        }),
        // table, changed since analyze, live rows, last analyze
        "stale_statistics" => {
            let ratio = n(1) as f64 / n(2).max(1) as f64;
            (n(1) >= t.stale_analyze_min_rows && ratio >= t.stale_analyze_ratio).then(|| {
                finding(
                    Severity::Info,
                    s(0),
                    format!(
                        "{} rows changed since the last ANALYZE ({:.0}% of {}); last analyzed: {}",
                        n(1),
                        ratio * 100.0,
                        n(2),
                        if s(3).is_empty() { "never".to_string() } else { s(3) }
                    ),
                    "The planner estimates from these statistics: stale ones pick bad plans.",
                    Some(format!("ANALYZE {};", s(0))),
                )
            })
        }
        // query, calls, mean ms, total ms
        "slow_statement" => (f(2) >= t.slow_statement_ms && n(1) >= t.slow_statement_min_calls).then(|| {
            finding(
                Severity::Info,
                s(0).split_whitespace().collect::<Vec<_>>().join(" ").chars().take(200).collect(),
                format!("{} calls, {:.1} ms on average, {:.0} ms in total", n(1), f(2), f(3)),
                "Slow on average and run often: the first place to look for a missing index or a better query.",
                None,
            )
        }),
        _ => None,
    }
}

/// One query per check; columns as `judge` reads them.
const QUERIES: &[(&str, &str)] = &[
    (
        "unused_index",
        "SELECT format('%I.%I', s.schemaname, s.indexrelname), format('%I.%I', s.schemaname, s.relname),
                pg_relation_size(s.indexrelid), s.idx_scan,
                (extract(epoch FROM now() - coalesce(d.stats_reset, pg_postmaster_start_time())) / 86400)::float8
           FROM pg_stat_user_indexes s
           JOIN pg_index i ON i.indexrelid = s.indexrelid
           LEFT JOIN pg_stat_database d ON d.datname = current_database()
          WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary
            AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
          ORDER BY 3 DESC",
    ),
    (
        "duplicate_index",
        "SELECT format('%I.%I', n.nspname, ci.relname), format('%I.%I', n.nspname, ct.relname),
                format('%I.%I', n.nspname, co.relname), pg_relation_size(i.indexrelid)
           FROM pg_index i
           JOIN pg_index o ON o.indrelid = i.indrelid AND o.indexrelid <> i.indexrelid
                AND o.indkey = i.indkey AND o.indclass = i.indclass AND o.indcollation = i.indcollation
                AND coalesce(pg_get_expr(o.indexprs, o.indrelid), '') = coalesce(pg_get_expr(i.indexprs, i.indrelid), '')
                AND coalesce(pg_get_expr(o.indpred, o.indrelid), '') = coalesce(pg_get_expr(i.indpred, i.indrelid), '')
           JOIN pg_class ci ON ci.oid = i.indexrelid
           JOIN pg_class co ON co.oid = o.indexrelid
           JOIN pg_class ct ON ct.oid = i.indrelid
           JOIN pg_namespace n ON n.oid = ct.relnamespace
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
            -- report the one that backs no constraint (or the later one when neither does)
            AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
            AND (EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = o.indexrelid)
                 OR i.indexrelid > o.indexrelid)",
    ),
    (
        "redundant_index",
        "SELECT format('%I.%I', n.nspname, ci.relname), format('%I.%I', n.nspname, ct.relname),
                format('%I.%I', n.nspname, co.relname), pg_relation_size(i.indexrelid)
           FROM pg_index i
           JOIN pg_index o ON o.indrelid = i.indrelid AND o.indexrelid <> i.indexrelid
           JOIN pg_class ci ON ci.oid = i.indexrelid
           JOIN pg_class co ON co.oid = o.indexrelid
           JOIN pg_class ct ON ct.oid = i.indrelid
           JOIN pg_namespace n ON n.oid = ct.relnamespace
           JOIN pg_am ai ON ai.oid = ci.relam AND ai.amname = 'btree'
           JOIN pg_am ao ON ao.oid = co.relam AND ao.amname = 'btree'
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND i.indexprs IS NULL AND o.indexprs IS NULL AND i.indpred IS NULL AND o.indpred IS NULL
            AND NOT i.indisunique AND NOT i.indisprimary
            AND i.indnkeyatts < o.indnkeyatts
            AND (o.indkey::int2[])[0:i.indnkeyatts - 1] = (i.indkey::int2[])[0:i.indnkeyatts - 1]
            AND (o.indclass::oid[])[0:i.indnkeyatts - 1] = (i.indclass::oid[])[0:i.indnkeyatts - 1]",
    ),
    (
        "invalid_index",
        "SELECT format('%I.%I', n.nspname, ci.relname), format('%I.%I', n.nspname, ct.relname)
           FROM pg_index i
           JOIN pg_class ci ON ci.oid = i.indexrelid
           JOIN pg_class ct ON ct.oid = i.indrelid
           JOIN pg_namespace n ON n.oid = ct.relnamespace
          WHERE NOT i.indisvalid",
    ),
    (
        "missing_fk_index",
        "SELECT c.conname::text, format('%I.%I', n.nspname, t.relname),
                (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord)
                   FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum),
                greatest(t.reltuples, coalesce(s.n_live_tup, 0), 0)::int8
           FROM pg_constraint c
           JOIN pg_class t ON t.oid = c.conrelid
           JOIN pg_namespace n ON n.oid = t.relnamespace
           LEFT JOIN pg_stat_user_tables s ON s.relid = t.oid
          WHERE c.contype = 'f'
            AND NOT EXISTS (
                SELECT 1 FROM pg_index i
                 WHERE i.indrelid = c.conrelid AND i.indpred IS NULL
                   AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
                   AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey)",
    ),
    (
        "no_primary_key",
        "SELECT format('%I.%I', n.nspname, t.relname), greatest(t.reltuples, 0)::int8
           FROM pg_class t
           JOIN pg_namespace n ON n.oid = t.relnamespace
          WHERE t.relkind IN ('r', 'p') AND NOT t.relispartition
            AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
            AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = t.oid AND c.contype = 'p')",
    ),
    (
        "dead_tuples",
        "SELECT format('%I.%I', schemaname, relname), n_dead_tup, n_live_tup,
                greatest(last_autovacuum, last_vacuum)::text
           FROM pg_stat_user_tables ORDER BY n_dead_tup DESC",
    ),
    (
        "table_bloat",
        // Expected size: rows × (tuple header + null bitmap + the columns' average
        // widths from pg_stats, aligned, + a line pointer) over the usable page space
        // at the table's fillfactor. Tables with a column pg_stats does not cover are
        // skipped (no estimate is better than a wrong one).
        "WITH t AS (
            SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, c.reltuples,
                   c.relpages::int8 * current_setting('block_size')::int8 AS actual,
                   current_setting('block_size')::float8 AS bs,
                   coalesce((SELECT option_value::float8 FROM pg_options_to_table(c.reloptions)
                              WHERE option_name = 'fillfactor'), 100) AS ff,
                   23 + CASE WHEN max(s.null_frac) > 0 THEN (count(*) + 7) / 8 ELSE 0 END AS hdr,
                   sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 0)) AS data,
                   count(*) = count(s.attname) AS covered
              FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname
                                  AND s.attname = a.attname AND NOT s.inherited
             WHERE c.relkind IN ('r', 'm') AND c.reltuples > 0
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg_toast%'
             GROUP BY c.oid, n.nspname, c.relname, c.reltuples, c.relpages, c.reloptions)
         SELECT name, '', actual,
                (ceil(reltuples * (ceil((ceil(hdr / 8.0) * 8 + data) / 8.0) * 8 + 4)
                      / ((bs - 24) * ff / 100)) * bs)::int8
           FROM t WHERE covered ORDER BY actual DESC",
    ),
    (
        "index_bloat",
        // B-tree leaf entries: 8-byte header + key widths, aligned, + a line pointer, at
        // the index's fillfactor (90 by default), plus the metapage. Plain-column
        // indexes only; expression and partial indexes are skipped.
        "WITH i AS (
            SELECT format('%I.%I', n.nspname, ic.relname) AS name,
                   format('%I.%I', n.nspname, tc.relname) AS tbl,
                   ic.relpages::int8 * current_setting('block_size')::int8 AS actual,
                   current_setting('block_size')::float8 AS bs, ic.reltuples,
                   coalesce((SELECT option_value::float8 FROM pg_options_to_table(ic.reloptions)
                              WHERE option_name = 'fillfactor'), 90) AS ff,
                   sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 0)) AS data,
                   max(coalesce(s.null_frac, 0)) > 0 AS nulls,
                   count(*) = count(s.attname) AS covered
              FROM pg_index x
              JOIN pg_class ic ON ic.oid = x.indexrelid
              JOIN pg_class tc ON tc.oid = x.indrelid
              JOIN pg_namespace n ON n.oid = ic.relnamespace
              JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
              JOIN pg_attribute a ON a.attrelid = tc.oid AND a.attnum = ANY (x.indkey)
              LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = tc.relname
                                  AND s.attname = a.attname AND NOT s.inherited
             WHERE ic.reltuples > 0 AND x.indexprs IS NULL AND x.indpred IS NULL
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg_toast%'
             GROUP BY n.nspname, ic.relname, tc.relname, ic.relpages, ic.reltuples, ic.reloptions)
         SELECT name, tbl, actual,
                ((ceil(reltuples * (ceil((8 + CASE WHEN nulls THEN 8 ELSE 0 END + data) / 8.0) * 8 + 4)
                       / ((bs - 24 - 16) * ff / 100)) + 1) * bs)::int8
           FROM i WHERE covered ORDER BY actual DESC",
    ),
    (
        "sequence_near_max",
        "SELECT format('%I.%I', schemaname, sequencename), last_value, max_value,
                CASE WHEN increment_by > 0
                     THEN (last_value - min_value)::float8 / nullif(max_value - min_value, 0)
                     ELSE (max_value - last_value)::float8 / nullif(max_value - min_value, 0) END
           FROM pg_sequences WHERE last_value IS NOT NULL AND NOT cycle",
    ),
    (
        "idle_in_transaction",
        "SELECT pid::int8, usename::text, application_name,
                extract(epoch FROM now() - state_change)::float8, left(query, 200)
           FROM pg_stat_activity
          WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')
            AND pid <> pg_backend_pid()",
    ),
    (
        "long_running_query",
        "SELECT pid::int8, usename::text, application_name,
                extract(epoch FROM now() - query_start)::float8, left(query, 200)
           FROM pg_stat_activity
          WHERE state = 'active' AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    ),
    (
        "blocked_query",
        "SELECT pid::int8, usename::text, array_to_string(pg_blocking_pids(pid), ', '),
                extract(epoch FROM now() - coalesce(state_change, query_start))::float8, left(query, 200)
           FROM pg_stat_activity
          WHERE cardinality(pg_blocking_pids(pid)) > 0",
    ),
    (
        "connections_near_max",
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int8,
                current_setting('max_connections')::int8",
    ),
    (
        "xid_wraparound",
        "SELECT datname::text, age(datfrozenxid)::int8 FROM pg_database WHERE datallowconn",
    ),
    (
        "multixact_wraparound",
        "SELECT datname::text, mxid_age(datminmxid)::int8 FROM pg_database WHERE datallowconn",
    ),
    (
        "low_cache_hit",
        "SELECT 'tables', coalesce(sum(heap_blks_hit), 0)::int8, coalesce(sum(heap_blks_read), 0)::int8
           FROM pg_statio_user_tables
         UNION ALL
         SELECT 'indexes', coalesce(sum(idx_blks_hit), 0)::int8, coalesce(sum(idx_blks_read), 0)::int8
           FROM pg_statio_user_indexes",
    ),
    (
        "seq_scans",
        "SELECT format('%I.%I', schemaname, relname), seq_scan, (seq_tup_read / nullif(seq_scan, 0))::int8,
                coalesce(idx_scan, 0)
           FROM pg_stat_user_tables WHERE seq_scan > 0 ORDER BY seq_tup_read DESC",
    ),
    (
        "stale_statistics",
        "SELECT format('%I.%I', schemaname, relname), n_mod_since_analyze, n_live_tup,
                greatest(last_analyze, last_autoanalyze)::text
           FROM pg_stat_user_tables",
    ),
    (
        "slow_statement",
        "SELECT query, calls, mean_exec_time, total_exec_time
           FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          ORDER BY mean_exec_time DESC LIMIT 20",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_has_a_query_and_sizes_read_well() {
        for (id, _) in CHECKS {
            assert!(QUERIES.iter().any(|(q, _)| q == id), "{id} has no query");
        }
        assert_eq!(QUERIES.len(), CHECKS.len());
        assert_eq!(human_size(2048), "2 kB");
        assert_eq!(human_size(3 << 20), "3.0 MB");
    }
}
