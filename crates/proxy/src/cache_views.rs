//! What the result cache did for each table: SHOW CACHE TABLES and `/api/cache`
//! (the counters are `pgopt-cache`'s `TableStats`; Prometheus lines in `metrics.rs`).
//!
//! A table is named by its tag (its name without the schema, as the cache tells tables
//! apart). A statement counts for every table it depends on (a view's read for the
//! view and the tables it reads), so rows don't add up to SHOW CACHE's totals.

use pgopt_cache::TableRow;

use crate::cache::ProxyCache;
use crate::views::{self, n, t, Kind, Table};

/// Each table's figures now, by name (`(other)` last): L1's pending evictions and
/// expiries are counted first.
pub fn rows(cache: &ProxyCache) -> Vec<TableRow> {
    cache.cache.l1.run_pending_tasks();
    cache.cache.tables.rows()
}

/// The `n` busiest tables (most lookups), for labelled metrics.
pub fn busiest(cache: &ProxyCache, n: usize) -> Vec<TableRow> {
    cache.cache.l1.run_pending_tasks();
    cache.cache.tables.busiest(n)
}

/// SHOW CACHE TABLES: one row per table (none when the cache is off).
pub fn tables(cache: Option<&ProxyCache>) -> Table {
    let mut table = Table::new(&[
        ("table", Kind::Text),
        ("hits", Kind::Int),
        ("misses", Kind::Int),
        ("hit_ratio", Kind::Float),
        ("stored", Kind::Int),
        ("not_stored", Kind::Int),
        ("evictions", Kind::Int),
        ("expirations", Kind::Int),
        ("invalidations", Kind::Int),
        ("local_invalidations", Kind::Int),
        ("bus_invalidations", Kind::Int),
        ("wal_invalidations", Kind::Int),
    ]);
    let Some(cache) = cache else {
        return table;
    };
    for r in rows(cache) {
        let ratio = match r.lookups() {
            0 => 0.0,
            lookups => r.hits as f64 / lookups as f64,
        };
        let [local, bus, wal] = r.invalidations;
        table.push(vec![
            t(r.table.clone()),
            n(r.hits),
            n(r.misses),
            t(format!("{ratio:.3}")),
            n(r.stored),
            n(r.not_stored),
            n(r.evictions),
            n(r.expirations),
            n(r.invalidations_total()),
            n(local),
            n(bus),
            n(wal),
        ]);
    }
    table
}

/// `/api/cache`: SHOW CACHE's row, with SHOW CACHE TABLES' rows as `table_stats`.
pub fn api(cache: Option<&ProxyCache>) -> String {
    let mut rows = views::table_values(&crate::cache::view(cache));
    if let Some(serde_json::Value::Object(row)) = rows.first_mut() {
        row.insert(
            "table_stats".into(),
            views::table_values(&tables(cache)).into(),
        );
    }
    let mut body = serde_json::Value::Array(rows).to_string();
    body.push('\n');
    body
}
