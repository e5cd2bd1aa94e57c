//! Cost of `Insight::record` on the proxy's hot path, single-threaded and
//! with several threads recording at once (the proxy's worker threads), for
//! both sharding modes.
//!
//! `cargo bench -p pgopt-insight --bench record -- --warm-up-time 1 --measurement-time 4`
//!
//! Multi-threaded cases report wall time divided by the total number of
//! records over all threads: aggregate ns per record (inverse throughput).
//! Perfect scaling on 2 cores halves the single-threaded figure.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgopt_insight::{Insight, InsightConfig, Sample, Sharding};

const FINGERPRINTS: u64 = 200;

fn fingerprint(i: u64) -> u64 {
    (i % FINGERPRINTS).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1
}

fn store(sharding: Sharding) -> Insight {
    Insight::new(InsightConfig {
        sharding,
        ..InsightConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn record(c: &mut Criterion) {
    for (mode, sharding) in [
        ("thread", Sharding::Thread),
        ("fingerprint", Sharding::Fingerprint),
    ] {
        let mut group = c.benchmark_group(format!("insight_record_{mode}_shards"));
        group.throughput(Throughput::Elements(1));
        let insight = store(sharding);
        let h = insight.session("app", "app");
        let mut i = 0u64;
        group.bench_function("1_thread", |b| {
            b.iter(|| {
                i += 1;
                let s = Sample::new(Duration::from_micros(50 + i % 5000), 1);
                insight.record(black_box(&h.key(fingerprint(i))), &s, || "SELECT $1");
            })
        });
        group.bench_function("1_thread_1_fp", |b| {
            let key = h.key(fingerprint(0));
            let s = Sample::new(Duration::from_micros(120), 1);
            b.iter(|| insight.record(black_box(&key), &s, || "SELECT $1"))
        });
        // Every thread hits the same fingerprints; `_1_fp`: one hot key.
        for (threads, fingerprints) in [(2usize, FINGERPRINTS), (8, FINGERPRINTS), (2, 1)] {
            let name = if fingerprints == 1 {
                format!("{threads}_threads_1_fp")
            } else {
                format!("{threads}_threads")
            };
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(threads as u64);
                    let start = Instant::now();
                    thread::scope(|scope| {
                        for t in 0..threads as u64 {
                            let insight = &insight;
                            scope.spawn(move || {
                                let h = insight.session("app", "app");
                                for i in 0..per_thread {
                                    let n = (i * 7 + t) % fingerprints;
                                    let s = Sample::new(Duration::from_micros(50 + i % 5000), 1);
                                    insight.record(&h.key(fingerprint(n)), &s, || "SELECT $1");
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, record);
criterion_main!(benches);
