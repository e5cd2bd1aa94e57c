//! One statistics entry per (fingerprint, database, user), what a sample adds
//! to it, and the serializable views built from it.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::params::{render_params, ParamMode, ParamRef};

/// Latencies are recorded in microseconds and clamped to one hour.
pub(crate) const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Distinct SQLSTATEs kept per entry; further codes count as `"other"`.
pub(crate) const MAX_ERROR_CODES: usize = 8;
/// Distinct routing targets kept per entry; further targets are not counted
/// separately (they still count as calls).
pub(crate) const MAX_ROUTES: usize = 16;

/// Where a statement was executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Primary,
    /// Index of the replica in the proxy's replica list.
    Replica(u16),
}

/// What one executed statement contributes to its entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample<'a> {
    /// Time from the statement's first message to its completion.
    pub duration: Duration,
    /// Rows returned or affected.
    pub rows: u64,
    /// SQLSTATE of the error, if the statement failed.
    pub error: Option<[u8; 5]>,
    /// Served from the result cache.
    pub cache_hit: bool,
    /// Where it ran, when the proxy routed it.
    pub route: Option<Route>,
    /// Bind parameters; stored only for the first few calls and then at
    /// calls that are powers of two, and only as the configured [`ParamMode`]
    /// renders them.
    pub params: Option<&'a [ParamRef<'a>]>,
}

impl Sample<'_> {
    /// A successful statement that took `duration` and produced `rows`.
    pub fn new(duration: Duration, rows: u64) -> Self {
        Sample {
            duration,
            rows,
            ..Sample::default()
        }
    }
}

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) text: Arc<str>,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) rows: u64,
    pub(crate) cache_hits: u64,
    pub(crate) total_ns: u64,
    pub(crate) min_ns: u64,
    pub(crate) max_ns: u64,
    pub(crate) first_ms: u64,
    pub(crate) last_ms: u64,
    hist: Histogram<u32>,
    error_codes: Vec<([u8; 5], u64)>,
    other_errors: u64,
    routes: Vec<(Route, u64)>,
    params: Vec<Vec<String>>,
}

impl Entry {
    pub(crate) fn new(text: Arc<str>, hist: Histogram<u32>, now_ms: u64) -> Self {
        Entry {
            text,
            calls: 0,
            errors: 0,
            rows: 0,
            cache_hits: 0,
            total_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            first_ms: now_ms,
            last_ms: now_ms,
            hist,
            error_codes: Vec::new(),
            other_errors: 0,
            routes: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Adds one sample. Does not allocate except when a new SQLSTATE or
    /// route appears, the histogram grows to a new magnitude, or parameters
    /// are sampled.
    pub(crate) fn add(
        &mut self,
        sample: &Sample<'_>,
        now_ms: u64,
        param_mode: ParamMode,
        param_samples: usize,
    ) {
        let ns = u64::try_from(sample.duration.as_nanos()).unwrap_or(u64::MAX);
        self.calls += 1;
        self.rows = self.rows.saturating_add(sample.rows);
        self.total_ns = self.total_ns.saturating_add(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        self.first_ms = self.first_ms.min(now_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let us = (ns / 1000).min(MAX_LATENCY_US);
        // Auto-resizing histogram: recording fails only if usize overflows.
        let _ = self.hist.record(us);
        if sample.cache_hit {
            self.cache_hits += 1;
        }
        if let Some(code) = sample.error {
            self.errors += 1;
            self.count_error(code, 1);
        }
        if let Some(route) = sample.route {
            self.count_route(route, 1);
        }
        if let Some(params) = sample.params {
            self.sample_params(params, param_mode, param_samples);
        }
    }

    fn count_error(&mut self, code: [u8; 5], n: u64) {
        if let Some(slot) = self.error_codes.iter_mut().find(|(c, _)| *c == code) {
            slot.1 += n;
        } else if self.error_codes.len() < MAX_ERROR_CODES {
            self.error_codes.push((code, n));
        } else {
            self.other_errors += n;
        }
    }

    fn count_route(&mut self, route: Route, n: u64) {
        if let Some(slot) = self.routes.iter_mut().find(|(r, _)| *r == route) {
            slot.1 += n;
        } else if self.routes.len() < MAX_ROUTES {
            self.routes.push((route, n));
        }
    }

    /// Whether the next call's parameters would be kept (see `sample_params`).
    pub(crate) fn wants_params(&self, mode: ParamMode, max: usize) -> bool {
        max > 0
            && mode != ParamMode::Off
            && (self.params.len() < max || (self.calls + 1).is_power_of_two())
    }

    fn sample_params(&mut self, params: &[ParamRef<'_>], mode: ParamMode, max: usize) {
        if max == 0 {
            return;
        }
        if self.params.len() < max {
            if let Some(rendered) = render_params(params, mode) {
                self.params.push(rendered);
            }
        } else if self.calls.is_power_of_two() {
            // Refresh one old sample at calls 2^k, so samples age slowly
            // without rendering on every call.
            if let Some(rendered) = render_params(params, mode) {
                let slot = self.calls.trailing_zeros() as usize % max;
                self.params[slot] = rendered;
            }
        }
    }

    /// Folds `other` (another entry of the same fingerprint) into `self`.
    pub(crate) fn merge(&mut self, other: &Entry, param_samples: usize) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.rows = self.rows.saturating_add(other.rows);
        self.cache_hits += other.cache_hits;
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.first_ms = self.first_ms.min(other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
        // Same significant digits and auto-resize on both sides: cannot fail
        // short of usize overflow.
        let _ = self.hist.add(&other.hist);
        for &(code, n) in &other.error_codes {
            self.count_error(code, n);
        }
        self.other_errors += other.other_errors;
        for &(route, n) in &other.routes {
            self.count_route(route, n);
        }
        for p in &other.params {
            if self.params.len() >= param_samples {
                break;
            }
            self.params.push(p.clone());
        }
    }

    /// Histogram memory in bytes (the dominant part of an entry).
    pub(crate) fn histogram_bytes(&self) -> usize {
        self.hist.distinct_values() * std::mem::size_of::<u32>()
    }

    pub(crate) fn percentile_ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub(crate) fn mean_ns(&self) -> u64 {
        self.total_ns.checked_div(self.calls).unwrap_or(0)
    }

    pub(crate) fn to_stats(
        &self,
        fingerprint: u64,
        database: Option<&str>,
        user: Option<&str>,
    ) -> QueryStats {
        let ms = |ns: u64| ns as f64 / 1e6;
        let mut errors_by_code: Vec<ErrorCount> = self
            .error_codes
            .iter()
            .map(|(code, n)| ErrorCount {
                sqlstate: String::from_utf8_lossy(code).into_owned(),
                count: *n,
            })
            .collect();
        if self.other_errors > 0 {
            errors_by_code.push(ErrorCount {
                sqlstate: "other".to_owned(),
                count: self.other_errors,
            });
        }
        errors_by_code.sort_by(|a, b| b.count.cmp(&a.count).then(a.sqlstate.cmp(&b.sqlstate)));
        let mut routed: Vec<RouteCount> = self
            .routes
            .iter()
            .map(|&(route, count)| RouteCount { route, count })
            .collect();
        routed.sort_by_key(|r| r.route_order());
        QueryStats {
            fingerprint,
            query: self.text.to_string(),
            database: database.map(str::to_owned),
            user: user.map(str::to_owned),
            calls: self.calls,
            errors: self.errors,
            rows: self.rows,
            cache_hits: self.cache_hits,
            total_time_ms: ms(self.total_ns),
            mean_time_ms: ms(self.mean_ns()),
            min_time_ms: if self.calls == 0 {
                0.0
            } else {
                ms(self.min_ns)
            },
            max_time_ms: ms(self.max_ns),
            p50_ms: self.percentile_ms(0.50),
            p95_ms: self.percentile_ms(0.95),
            p99_ms: self.percentile_ms(0.99),
            p999_ms: self.percentile_ms(0.999),
            first_seen_unix_ms: self.first_ms,
            last_seen_unix_ms: self.last_ms,
            errors_by_code,
            routed,
            sample_params: self.params.clone(),
        }
    }
}

/// Statistics of one fingerprint, either merged over all (database, user)
/// pairs (`database` and `user` are `None`) or for one pair.
///
/// Times are milliseconds; percentiles come from an HDR histogram with the
/// configured significant digits (values in whole microseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryStats {
    /// Serialized as 16 hex digits.
    #[serde(with = "fingerprint_serde")]
    pub fingerprint: u64,
    /// Normalized statement text, as first seen.
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub calls: u64,
    pub errors: u64,
    pub rows: u64,
    pub cache_hits: u64,
    pub total_time_ms: f64,
    pub mean_time_ms: f64,
    pub min_time_ms: f64,
    pub max_time_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub first_seen_unix_ms: u64,
    pub last_seen_unix_ms: u64,
    /// Most frequent first; codes past the per-entry limit appear as
    /// `"other"`.
    pub errors_by_code: Vec<ErrorCount>,
    pub routed: Vec<RouteCount>,
    /// A few parameter sets, rendered per the configured [`ParamMode`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample_params: Vec<Vec<String>>,
}

/// Calls that failed with one SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCount {
    pub sqlstate: String,
    pub count: u64,
}

/// Calls sent to one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCount {
    pub route: Route,
    pub count: u64,
}

impl RouteCount {
    fn route_order(&self) -> (u8, u16) {
        match self.route {
            Route::Primary => (0, 0),
            Route::Replica(i) => (1, i),
        }
    }
}

/// One fingerprint: the merged total and one row per (database, user).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FingerprintStats {
    pub total: QueryStats,
    pub by_client: Vec<QueryStats>,
}

/// One fingerprint's figures for Prometheus; the only label is the
/// fingerprint hex, never the query text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub fingerprint: String,
    pub calls: u64,
    pub errors: u64,
    pub rows: u64,
    pub cache_hits: u64,
    pub total_time_seconds: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
}

mod fingerprint_serde {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(fp: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{fp:016x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(|e| D::Error::custom(format!("fingerprint {s:?}: {e}")))
    }
}
