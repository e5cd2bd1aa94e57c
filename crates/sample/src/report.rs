//! What a workload run measured: calls, errors and latency percentiles per query,
//! per group and in total.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::workload::{queries, QueryKind};
use crate::Error;

/// Highest latency the histograms track: one hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Measurements of one query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryReport {
    pub name: String,
    pub group: String,
    pub kind: QueryKind,
    /// Completed executions, failed ones included.
    pub calls: u64,
    pub errors: u64,
    /// Latency percentiles of the successful calls, in microseconds (0 without any).
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// The first error this query returned, with the server's message and SQLSTATE.
    pub first_error: Option<String>,
}

/// Measurements of one query group (all its queries together).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupReport {
    pub group: String,
    pub calls: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Result of [`crate::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadReport {
    /// Wall time from the first query to the end of the last.
    pub elapsed: Duration,
    /// Connections that ran queries.
    pub clients: usize,
    /// Connections that could not connect at the start.
    pub failed_connections: usize,
    pub total_calls: u64,
    pub total_errors: u64,
    /// Calls per second of wall time.
    pub qps: f64,
    /// Latency percentiles of all successful calls, in microseconds.
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Per group, in the order the groups first appear in [`queries`].
    pub groups: Vec<GroupReport>,
    /// Per query, in the order of [`queries`] (queries never picked have 0 calls).
    pub queries: Vec<QueryReport>,
}

impl WorkloadReport {
    /// Name and message of the first query (in catalogue order) that failed.
    pub fn first_error(&self) -> Option<(&str, &str)> {
        self.queries
            .iter()
            .find_map(|q| q.first_error.as_deref().map(|e| (q.name.as_str(), e)))
    }

    /// The measurements of the query named `name`.
    pub fn query(&self, name: &str) -> Option<&QueryReport> {
        self.queries.iter().find(|q| q.name == name)
    }

    /// The measurements of the group named `group`.
    pub fn group(&self, group: &str) -> Option<&GroupReport> {
        self.groups.iter().find(|g| g.group == group)
    }
}

/// Running counts of one query on one or more connections.
#[derive(Debug, Clone)]
pub(crate) struct QueryStats {
    latency: Histogram<u64>,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
}

fn histogram() -> Result<Histogram<u64>, Error> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| Error::Client {
        reason: format!("creating a latency histogram: {e}"),
    })
}

fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<(), Error> {
    into.add(from).map_err(|e| Error::Client {
        reason: format!("merging latency histograms: {e}"),
    })
}

impl QueryStats {
    /// Empty statistics for every query of the workload.
    pub(crate) fn for_all_queries() -> Result<Vec<QueryStats>, Error> {
        queries()
            .iter()
            .map(|_| {
                Ok(QueryStats {
                    latency: histogram()?,
                    calls: 0,
                    errors: 0,
                    first_error: None,
                })
            })
            .collect()
    }

    pub(crate) fn record_ok(&mut self, latency: Duration) {
        self.calls += 1;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    pub(crate) fn record_error(&mut self, message: impl FnOnce() -> String) {
        self.calls += 1;
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    pub(crate) fn merge(&mut self, other: &QueryStats) -> Result<(), Error> {
        add(&mut self.latency, &other.latency)?;
        self.calls += other.calls;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        Ok(())
    }
}

/// Percentiles of a histogram: (p50, p95, p99, max, mean).
fn percentiles(h: &Histogram<u64>) -> (u64, u64, u64, u64, f64) {
    if h.is_empty() {
        return (0, 0, 0, 0, 0.0);
    }
    (
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.95),
        h.value_at_quantile(0.99),
        h.max(),
        h.mean(),
    )
}

/// The report of merged per-query statistics (indexed like [`queries`]).
pub(crate) fn build(
    stats: &[QueryStats],
    elapsed: Duration,
    clients: usize,
    failed_connections: usize,
) -> Result<WorkloadReport, Error> {
    let mut total = histogram()?;
    let mut groups: Vec<(&'static str, QueryStats)> = Vec::new();
    let mut query_reports = Vec::with_capacity(stats.len());
    for (spec, s) in queries().iter().zip(stats) {
        add(&mut total, &s.latency)?;
        match groups.iter_mut().find(|(g, _)| *g == spec.group) {
            Some((_, group)) => group.merge(s)?,
            None => groups.push((spec.group, s.clone())),
        }
        let (p50_us, p95_us, p99_us, max_us, mean_us) = percentiles(&s.latency);
        query_reports.push(QueryReport {
            name: spec.name.to_string(),
            group: spec.group.to_string(),
            kind: spec.kind,
            calls: s.calls,
            errors: s.errors,
            p50_us,
            p95_us,
            p99_us,
            max_us,
            mean_us,
            first_error: s.first_error.clone(),
        });
    }
    let groups = groups
        .into_iter()
        .map(|(group, s)| {
            let (p50_us, p95_us, p99_us, max_us, mean_us) = percentiles(&s.latency);
            GroupReport {
                group: group.to_string(),
                calls: s.calls,
                errors: s.errors,
                p50_us,
                p95_us,
                p99_us,
                max_us,
                mean_us,
            }
        })
        .collect();
    let total_calls = stats.iter().map(|s| s.calls).sum();
    let (p50_us, p95_us, p99_us, max_us, _) = percentiles(&total);
    Ok(WorkloadReport {
        elapsed,
        clients,
        failed_connections,
        total_calls,
        total_errors: stats.iter().map(|s| s.errors).sum(),
        qps: total_calls as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_us,
        p95_us,
        p99_us,
        max_us,
        groups,
        queries: query_reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_totals_add_up() {
        let mut stats = QueryStats::for_all_queries().unwrap();
        for (i, s) in stats.iter_mut().enumerate() {
            for ms in 1..=10 {
                s.record_ok(Duration::from_millis(ms * (i as u64 + 1)));
            }
        }
        stats[0].record_error(|| "boom".into());
        stats[0].record_error(|| "second".into());
        let report = build(&stats, Duration::from_secs(2), 2, 0).unwrap();
        let n = queries().len() as u64;
        assert_eq!(report.total_calls, 10 * n + 2);
        assert_eq!(report.total_errors, 2);
        assert_eq!(
            report.groups.iter().map(|g| g.calls).sum::<u64>(),
            report.total_calls
        );
        assert_eq!(report.first_error(), Some((queries()[0].name, "boom")));
        assert!((report.qps - report.total_calls as f64 / 2.0).abs() < 1e-9);
        for q in &report.queries {
            assert!(q.p50_us <= q.p95_us && q.p95_us <= q.p99_us && q.p99_us <= q.max_us);
        }
        assert!(report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
    }
}
