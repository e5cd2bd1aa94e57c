//! Hot-path cost of statement analysis on a pgbench -S style workload.
//!
//! cargo bench -p pgopt-sql --bench analyze

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pgopt_sql::{analyze, Analyzer, Stripped};

/// pgbench -S statements with varying `aid`.
fn statements(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                (i * 7919) % 100_000 + 1
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let stmts = statements(1024);
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 1) & 1023;
        i
    };

    let analyzer = Analyzer::default();
    for s in &stmts {
        analyzer.analyze(s).expect("pgbench statement parses");
    }
    c.bench_function("analyzer_hit_pgbench_select", |b| {
        let stmts = &stmts;
        let mut next = next;
        b.iter(|| analyzer.analyze(black_box(&stmts[next()])))
    });

    let mut stripped = Stripped::new();
    c.bench_function("strip_literals_pgbench_select", |b| {
        let stmts = &stmts;
        let mut next = next;
        b.iter(|| {
            stripped.strip(black_box(&stmts[next()]));
            black_box(stripped.key().len())
        })
    });

    let long =
        "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
                WHERE o.status IN ('new', 'paid', 'shipped') AND o.created_at > '2024-01-01' \
                AND c.region = 'eu' ORDER BY o.created_at DESC LIMIT 50";
    c.bench_function("analyzer_hit_join_in_list", |b| {
        analyzer.analyze(long).expect("parses");
        b.iter(|| analyzer.analyze(black_box(long)))
    });

    c.bench_function("analyze_cold_pgbench_select", |b| {
        let stmts = &stmts;
        b.iter(|| analyze(black_box(&stmts[next()])))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
