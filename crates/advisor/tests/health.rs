//! Each health check triggered by a database state made for it, against a real
//! PostgreSQL; and nothing found on a clean database.

use std::time::Duration;

use pgopt_advisor::{health_checks, Finding, Severity, Thresholds};
use pgopt_embedded::Postgres;

fn found<'a>(findings: &'a [Finding], check: &str, object: &str) -> Option<&'a Finding> {
    findings
        .iter()
        .find(|f| f.check == check && f.object.contains(object))
}

#[tokio::test]
async fn a_clean_database_has_no_findings() {
    let pg = Postgres::start().await.unwrap();
    let client = pg.connect("postgres").await.unwrap();
    let findings = health_checks(&client, &Thresholds::default())
        .await
        .unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_check_fires_on_the_state_made_for_it() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.connect("postgres").await.unwrap();
    db.batch_execute(
        "CREATE TABLE t1 (id int PRIMARY KEY, a int);
         CREATE INDEX t1_a ON t1 (a);
         CREATE INDEX t1_a_again ON t1 (a);
         CREATE TABLE t2 (id int PRIMARY KEY, a int, b int);
         CREATE INDEX t2_a ON t2 (a);
         CREATE INDEX t2_a_b ON t2 (a, b);
         CREATE TABLE nopk (x int);
         INSERT INTO nopk VALUES (1), (1);
         CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
         CREATE TABLE churn (id int PRIMARY KEY) WITH (autovacuum_enabled = false);
         INSERT INTO churn SELECT generate_series(1, 20000);
         DELETE FROM churn WHERE id > 100;
         CREATE SEQUENCE almost_out MAXVALUE 100;
         SELECT setval('almost_out', 95);
         CREATE TABLE scanned (id int PRIMARY KEY, v int);
         INSERT INTO scanned SELECT i, i FROM generate_series(1, 5000) i;
         ANALYZE scanned;
         SELECT count(*) FROM scanned WHERE v > 0;
         SELECT count(*) FROM scanned WHERE v > 1;
         SELECT count(*) FROM scanned WHERE v > 2;
         CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
         SELECT pg_sleep(0.01);
         SELECT pg_sleep(0.01);
         SELECT pg_sleep(0.01);",
    )
    .await
    .unwrap();
    // A failed CREATE INDEX CONCURRENTLY leaves an invalid index behind.
    assert!(db
        .batch_execute("CREATE UNIQUE INDEX CONCURRENTLY nopk_x ON nopk (x)")
        .await
        .is_err());
    // A session idle in a transaction, holding a lock another query waits for.
    let holder = pg.connect("postgres").await.unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE t1 IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let waiter = pg.connect("postgres").await.unwrap();
    let blocked = tokio::spawn(async move { waiter.simple_query("SELECT count(*) FROM t1").await });

    let thresholds = Thresholds {
        unused_index_min_bytes: 0,
        fk_table_min_rows: 0,
        dead_tuples_min: 1000,
        idle_in_transaction_secs: 0.0,
        long_query_secs: 0.0,
        seq_scan_min_count: 3,
        seq_scan_min_rows: 1000,
        slow_statement_ms: 5.0,
        slow_statement_min_calls: 3,
        cache_min_reads: 0,
        cache_hit_ratio: 1.01,
        ..Thresholds::default()
    };
    // Statistics reach the views about a second after a transaction; blocked_query needs
    // the waiter to be waiting.
    let mut findings = Vec::new();
    for _ in 0..50 {
        findings = health_checks(&db, &thresholds).await.unwrap();
        if found(&findings, "dead_tuples", "churn").is_some()
            && found(&findings, "seq_scans", "scanned").is_some()
            && found(&findings, "blocked_query", "pid").is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expect = [
        ("duplicate_index", "t1_a_again"),
        ("redundant_index", "t2_a"),
        ("unused_index", "t2_a_b"),
        ("invalid_index", "nopk_x"),
        ("missing_fk_index", "child"),
        ("no_primary_key", "nopk"),
        ("dead_tuples", "churn"),
        ("sequence_near_max", "almost_out"),
        ("idle_in_transaction", "pid"),
        ("blocked_query", "pid"),
        ("long_running_query", "pid"),
        ("seq_scans", "scanned"),
        ("stale_statistics", "churn"),
        ("slow_statement", "pg_sleep"),
        ("low_cache_hit", "tables"),
    ];
    for (check, object) in expect {
        assert!(
            found(&findings, check, object).is_some(),
            "no {check} finding for {object}: {findings:#?}"
        );
    }
    let seq = found(&findings, "sequence_near_max", "almost_out").unwrap();
    assert_eq!(seq.severity, Severity::Critical, "{seq:?}");
    assert!(seq.evidence.contains("95 of 100"), "{seq:?}");
    let fk = found(&findings, "missing_fk_index", "child").unwrap();
    assert_eq!(
        fk.fix.as_deref(),
        Some("CREATE INDEX CONCURRENTLY ON public.child (parent_id);")
    );
    // Constraint-backing indexes and the one a duplicate is kept for are not reported.
    assert!(found(&findings, "unused_index", "t1_pkey").is_none());
    assert!(found(&findings, "duplicate_index", "t1_a ").is_none());
    // Most severe first.
    assert_eq!(findings[0].severity, Severity::Critical);

    holder.batch_execute("ROLLBACK").await.unwrap();
    blocked.await.unwrap().unwrap();
    // Thresholds hold findings back: with the defaults only what is wrong at any size.
    let calm = health_checks(&db, &Thresholds::default()).await.unwrap();
    assert!(found(&calm, "unused_index", "").is_none(), "{calm:#?}");
    assert!(found(&calm, "missing_fk_index", "").is_none(), "{calm:#?}");
    assert!(
        found(&calm, "idle_in_transaction", "").is_none(),
        "{calm:#?}"
    );
    assert!(found(&calm, "duplicate_index", "t1_a_again").is_some());
    // The server-wide checks, with thresholds every server crosses.
    let strict = Thresholds {
        connections_warning: 0.0,
        wraparound_warning: 0.0,
        ..Thresholds::default()
    };
    let all = health_checks(&db, &strict).await.unwrap();
    assert!(
        found(&all, "connections_near_max", "max_connections").is_some(),
        "{all:#?}"
    );
    assert!(
        found(&all, "xid_wraparound", "postgres").is_some(),
        "{all:#?}"
    );
}

fn assert_no_bloat(findings: &[Finding]) {
    for check in ["table_bloat", "index_bloat"] {
        assert!(found(findings, check, "roomy").is_none(), "{findings:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bloat_is_estimated_after_a_mass_delete_and_not_before() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.connect("postgres").await.unwrap();
    db.batch_execute(
        "CREATE TABLE roomy (id int PRIMARY KEY, payload text, n int)
           WITH (autovacuum_enabled = false);
         INSERT INTO roomy SELECT i, repeat('p', 60), i FROM generate_series(1, 100000) i;
         CREATE INDEX roomy_n ON roomy (n);",
    )
    .await
    .unwrap();
    db.batch_execute("VACUUM ANALYZE roomy").await.unwrap();
    let thresholds = Thresholds {
        bloat_min_bytes: 1 << 20,
        ..Thresholds::default()
    };
    let findings = health_checks(&db, &thresholds).await.unwrap();
    assert_no_bloat(&findings);

    // Nine rows in ten deleted: VACUUM frees the space inside the pages, but the table
    // and its indexes keep their size.
    db.batch_execute("DELETE FROM roomy WHERE id % 10 <> 0")
        .await
        .unwrap();
    db.batch_execute("VACUUM ANALYZE roomy").await.unwrap();
    let findings = health_checks(&db, &thresholds).await.unwrap();
    let table = found(&findings, "table_bloat", "public.roomy").expect("table bloat");
    assert_eq!(table.severity, Severity::Warning, "{table:?}");
    assert!(table.evidence.contains("is empty space"), "{table:?}");
    assert!(table
        .fix
        .as_deref()
        .unwrap()
        .starts_with("VACUUM FULL public.roomy"));
    let index = found(&findings, "index_bloat", "public.roomy_n").expect("index bloat");
    assert_eq!(
        index.fix.as_deref(),
        Some("REINDEX INDEX CONCURRENTLY public.roomy_n;")
    );
    assert!(
        found(&findings, "index_bloat", "roomy_pkey").is_some(),
        "{findings:#?}"
    );

    // Rebuilt, nothing is left to report.
    db.batch_execute("VACUUM FULL roomy").await.unwrap();
    db.batch_execute("ANALYZE roomy").await.unwrap();
    let findings = health_checks(&db, &thresholds).await.unwrap();
    assert_no_bloat(&findings);
}
