//! Running the workload against a loaded database.

use std::sync::Arc;
use std::time::Duration;

use pgopt_embedded::Postgres;
use pgopt_sample::{load, queries, run, Dataset, Error, LoadOptions, Session, WorkloadOptions};

const SCALE: f64 = 0.01;
const SEED: u64 = 42;

async fn loaded(db: &str) -> Postgres {
    let pg = Postgres::start().await.unwrap();
    let client = pg.create_database(db).await.unwrap();
    load(
        &client,
        &LoadOptions {
            scale: SCALE,
            seed: SEED,
        },
        &mut |_| {},
    )
    .await
    .unwrap();
    pg
}

#[tokio::test]
async fn every_query_prepares_and_executes() {
    let pg = loaded("every_query").await;
    let client = pg.connect("every_query").await.unwrap();
    let dataset = Arc::new(Dataset::new(SCALE, SEED));
    let mut session = Session::new(client, dataset, 1);
    session.prepare_all().await.unwrap();
    let mut rows = Vec::new();
    // Several rounds, so every parameter generator runs more than once.
    for _ in 0..5 {
        for (i, q) in queries().iter().enumerate() {
            let n = session
                .execute(i)
                .await
                .unwrap_or_else(|e| panic!("{}: {e:?}", q.name));
            rows.push((q.name, n));
        }
    }
    // The parameters hit real data: most reads return rows.
    let returning = queries()
        .iter()
        .filter(|q| rows.iter().any(|(name, n)| name == &q.name && *n > 0))
        .count();
    assert!(
        returning * 4 >= queries().len() * 3,
        "only {returning} queries returned rows: {rows:?}"
    );
    for name in [
        "login_lookup",
        "task_detail",
        "project_tasks_n_plus_one",
        "insert_comment",
    ] {
        assert!(
            rows.iter().any(|(n, count)| *n == name && *count > 0),
            "{name} never returned rows"
        );
    }
}

#[tokio::test]
async fn a_short_run_measures_calls_without_errors() {
    let pg = loaded("short_run").await;
    let opts = WorkloadOptions {
        clients: 2,
        duration: Duration::from_secs(1),
        seed: SEED,
        scale: SCALE,
        max_queries: None,
    };
    let report = run(pg.config("short_run"), &opts).await.unwrap();
    assert_eq!(report.first_error(), None);
    assert_eq!(report.total_errors, 0);
    assert!(report.total_calls > 0);
    assert_eq!(report.clients, 2);
    assert!(report.elapsed >= Duration::from_secs(1) && report.elapsed < Duration::from_secs(5));
    assert!(report.qps > 0.0);
    assert!(report.p50_us <= report.p95_us && report.p95_us <= report.p99_us);
    assert!(report.p99_us <= report.max_us && report.max_us > 0);
    assert_eq!(
        report.groups.iter().map(|g| g.calls).sum::<u64>(),
        report.total_calls
    );
    assert_eq!(
        report.queries.iter().map(|q| q.calls).sum::<u64>(),
        report.total_calls
    );
    for g in &report.groups {
        assert!(
            g.p50_us <= g.p95_us && g.p95_us <= g.p99_us && g.p99_us <= g.max_us,
            "{g:?}"
        );
    }
    for q in report.queries.iter().filter(|q| q.calls > 0) {
        assert!(
            q.p50_us >= 1 && q.p50_us <= q.p95_us && q.p95_us <= q.p99_us && q.p99_us <= q.max_us,
            "{q:?}"
        );
    }
    // The mix follows the weights: the heaviest query runs more than the lightest.
    let calls = |name: &str| report.query(name).map(|q| q.calls).unwrap_or(0);
    assert!(calls("project_open_tasks") > calls("comments_per_day"));
}

#[tokio::test]
async fn max_queries_stops_the_run_early() {
    let pg = loaded("max_queries").await;
    let opts = WorkloadOptions {
        clients: 3,
        duration: Duration::from_secs(60),
        seed: 3,
        scale: SCALE,
        max_queries: Some(50),
    };
    let report = run(pg.config("max_queries"), &opts).await.unwrap();
    assert_eq!(report.total_calls, 50);
    assert!(report.elapsed < Duration::from_secs(30));
}

#[tokio::test]
async fn query_errors_are_counted_not_fatal() {
    // An empty database: every query fails, the run still reports.
    let pg = Postgres::start().await.unwrap();
    pg.create_database("empty").await.unwrap();
    let opts = WorkloadOptions {
        clients: 1,
        duration: Duration::from_millis(300),
        seed: 1,
        scale: SCALE,
        max_queries: None,
    };
    let report = run(pg.config("empty"), &opts).await.unwrap();
    assert!(report.total_calls > 0);
    assert_eq!(report.total_errors, report.total_calls);
    let (_, message) = report.first_error().unwrap();
    assert!(
        message.contains("does not exist") && message.contains("42P01"),
        "{message}"
    );
}

#[tokio::test]
async fn a_run_without_any_connection_fails() {
    let port = pgopt_embedded::free_port().unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres");
    let opts = WorkloadOptions {
        clients: 2,
        duration: Duration::from_millis(100),
        seed: 1,
        scale: SCALE,
        max_queries: None,
    };
    match run(config, &opts).await {
        Err(Error::Connect { clients: 2, .. }) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_options_are_refused() {
    let config = tokio_postgres::Config::new();
    let zero_clients = WorkloadOptions {
        clients: 0,
        ..Default::default()
    };
    assert!(matches!(
        run(config.clone(), &zero_clients).await,
        Err(Error::InvalidOptions { .. })
    ));
    let zero_duration = WorkloadOptions {
        duration: Duration::ZERO,
        ..Default::default()
    };
    assert!(matches!(
        run(config, &zero_duration).await,
        Err(Error::InvalidOptions { .. })
    ));
}
