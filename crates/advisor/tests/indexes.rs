//! The index advisor on small purpose-built schemas in a real PostgreSQL, with HypoPG.

use pgopt_advisor::{
    recommend_indexes, workload_from_pg_stat_statements, workload_from_sql, IndexOptions,
    IndexReport,
};
use pgopt_embedded::Postgres;
use tokio_postgres::Client;

const SCHEMA: &str = "
    CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, name text);
    INSERT INTO customers SELECT i, 'user' || i || '@example.com', 'name ' || i
      FROM generate_series(1, 20000) i;
    CREATE TABLE orders (
        id int PRIMARY KEY, customer_id int NOT NULL, status text NOT NULL,
        created_at timestamptz NOT NULL, total numeric NOT NULL, note text);
    INSERT INTO orders
    SELECT i, i % 200, CASE WHEN i % 50 = 0 THEN 'pending' ELSE 'shipped' END,
           timestamptz '2026-01-01' + (i || ' minutes')::interval, i % 997, repeat('x', 40)
      FROM generate_series(1, 100000) i;
    CREATE TABLE docs (id int PRIMARY KEY, body text, tags text[], meta jsonb);
    INSERT INTO docs
    SELECT i, 'document number ' || i || CASE WHEN i % 1000 = 0 THEN ' rare' ELSE '' END,
           ARRAY['t' || (i % 500)], jsonb_build_object('kind', i % 300)
      FROM generate_series(1, 30000) i;
    ANALYZE;";

async fn setup() -> (Postgres, Client) {
    let pg = Postgres::start().await.unwrap();
    let db = pg.connect("postgres").await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    (pg, db)
}

async fn advise(db: &Client, sql: &str) -> IndexReport {
    recommend_indexes(
        db,
        &workload_from_sql(sql),
        &IndexOptions::default(),
        &mut |_, _, _| {},
    )
    .await
    .unwrap()
}

fn definitions(r: &IndexReport) -> Vec<String> {
    r.recommendations
        .iter()
        .map(|x| x.definition.clone())
        .collect()
}

/// The catalog as seen from outside: relations and extensions.
async fn catalog(db: &Client) -> Vec<String> {
    db.query(
        "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace
         UNION ALL SELECT 'ext:' || extname FROM pg_extension ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_partial_gin_and_expression_indexes() {
    let (_pg, db) = setup().await;
    let before = catalog(&db).await;
    let report = advise(
        &db,
        "SELECT id, total FROM orders WHERE customer_id = 42 AND created_at > '2026-03-05';
         SELECT id FROM docs WHERE tags @> ARRAY['t7'];
         SELECT id FROM docs WHERE to_tsvector('english', body) @@ to_tsquery('english', 'rare');
         SELECT id FROM customers WHERE lower(email) = 'user7@example.com';",
    )
    .await;
    let defs = definitions(&report);
    let has = |needle: &str| defs.iter().any(|d| d.contains(needle));
    assert!(
        has("ON public.orders (customer_id, created_at)"),
        "{defs:#?}"
    );
    assert!(has("ON public.docs USING gin (tags)"), "{defs:#?}");
    assert!(
        has("USING gin (to_tsvector('english'::regconfig, body))"),
        "{defs:#?}"
    );
    assert!(has("ON public.customers (lower(email))"), "{defs:#?}");
    for d in &defs {
        assert!(
            d.starts_with("CREATE INDEX CONCURRENTLY IF NOT EXISTS "),
            "{d}"
        );
    }
    // Every statement is helped; the planner verified the B-tree ones (HypoPG cannot
    // simulate GIN, so those are marked unverified).
    for s in &report.statements {
        let (b, a) = (s.cost_before.unwrap(), s.cost_after.unwrap());
        assert!(!s.indexes.is_empty(), "{s:?}");
        let verified = report
            .recommendations
            .iter()
            .any(|r| r.verified && s.indexes.contains(&r.name));
        assert_eq!(verified, !s.text.contains("docs"), "{report:#?}");
        assert!(if verified { a < b } else { a == b }, "{s:?}");
    }
    assert!(report.cost_after < report.cost_before, "{report:#?}");
    for r in &report.recommendations {
        assert!(r.bytes > 0 && !r.statements.is_empty(), "{r:?}");
    }
    // A constant predicate that keeps few rows: a partial index.
    let report = advise(
        &db,
        "SELECT id FROM orders WHERE status = 'pending' ORDER BY created_at LIMIT 10",
    )
    .await;
    assert_eq!(
        definitions(&report),
        [
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_created_at_partial_idx \
          ON public.orders (created_at) WHERE status = 'pending'"
        ]
    );
    // A sort in mixed directions after the equality column: DESC where it matters.
    let report = advise(
        &db,
        "SELECT id, total FROM orders WHERE customer_id = 7 ORDER BY created_at DESC, total LIMIT 5",
    )
    .await;
    let defs = definitions(&report);
    assert!(
        defs.iter()
            .any(|d| d.contains("ON public.orders (customer_id, created_at DESC, total)")),
        "{defs:#?}"
    );
    // Nothing was built, and hypopg (created for each run) is gone again.
    assert_eq!(catalog(&db).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_when_the_right_index_exists_and_unused_ones_are_reported() {
    let (_pg, db) = setup().await;
    db.batch_execute(
        "CREATE INDEX orders_customer_created ON orders (customer_id, created_at);
         CREATE INDEX orders_total ON orders (total);
         CREATE EXTENSION hypopg;",
    )
    .await
    .unwrap();
    let report = advise(
        &db,
        "SELECT * FROM orders WHERE customer_id = 42 AND created_at > '2026-03-05'",
    )
    .await;
    assert!(report.recommendations.is_empty(), "{report:#?}");
    let unused: Vec<&str> = report.unused.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(unused, ["public.orders_total"], "{report:#?}");
    assert_eq!(
        report.unused[0].drop,
        "DROP INDEX CONCURRENTLY IF EXISTS public.orders_total"
    );
    // An installed hypopg stays, with no hypothetical index left behind.
    let left: i64 = db
        .query_one("SELECT count(*) FROM hypopg_list_indexes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wider_index_names_the_narrower_one_it_makes_redundant() {
    let (_pg, db) = setup().await;
    db.batch_execute("CREATE INDEX orders_customer ON orders (customer_id)")
        .await
        .unwrap();
    let report = advise(
        &db,
        "SELECT * FROM orders WHERE customer_id = 42 AND created_at > '2026-03-05'",
    )
    .await;
    let rec = &report.recommendations[..];
    assert_eq!(rec.len(), 1, "{report:#?}");
    assert!(
        rec[0]
            .definition
            .ends_with("ON public.orders (customer_id, created_at)"),
        "{report:#?}"
    );
    assert_eq!(rec[0].supersedes, ["public.orders_customer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_it_cannot_parse_or_plan_get_nothing() {
    let (_pg, db) = setup().await;
    // A prepared statement of the caller's own survives the run.
    db.batch_execute("PREPARE mine AS SELECT 1").await.unwrap();
    let report = advise(
        &db,
        "SELEC id FROM orders WHERE customer_id = 1;
         SELECT id FROM no_such_table WHERE x = 1;
         SELECT 1;",
    )
    .await;
    assert!(report.recommendations.is_empty(), "{report:#?}");
    let skipped: Vec<&str> = report
        .statements
        .iter()
        .map(|s| s.skipped.as_deref().unwrap_or(""))
        .collect();
    assert!(skipped[0].starts_with("does not parse"), "{skipped:?}");
    assert_eq!(skipped[1], "reads no table of this database");
    assert_eq!(skipped[2], "reads no table of this database");
    // A statement ending in a comment, planned generically ($1 in an expression pgopt
    // cannot give a value), is still costed.
    let report = advise(
        &db,
        "SELECT id FROM orders WHERE customer_id = 1 AND total = $1 + 0 -- a comment",
    )
    .await;
    let s = &report.statements[0];
    assert!(
        s.skipped.is_none() && s.cost_before.is_some(),
        "{report:#?}"
    );
    db.batch_execute("EXECUTE mine").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_from_pg_stat_statements_get_values_from_pg_stats() {
    let pg = Postgres::builder()
        .setting("shared_preload_libraries", "pg_stat_statements")
        .start()
        .await
        .unwrap();
    let db = pg.connect("postgres").await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    db.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    for i in 0..30i32 {
        db.query(
            "SELECT id FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 5",
            &[&i],
        )
        .await
        .unwrap();
        db.query("SELECT name FROM customers WHERE id = $1", &[&i])
            .await
            .unwrap();
    }
    let workload = workload_from_pg_stat_statements(&db, 20).await.unwrap();
    assert!(
        workload
            .iter()
            .any(|w| w.text.contains("customer_id = $1") && w.weight == 30.0),
        "{workload:#?}"
    );
    let report = recommend_indexes(&db, &workload, &IndexOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    let defs = definitions(&report);
    assert!(
        defs.iter()
            .any(|d| d.contains("ON public.orders (customer_id, created_at")),
        "{defs:#?}\n{report:#?}"
    );
    // The primary key already serves the other statement.
    assert!(
        !defs.iter().any(|d| d.contains("public.customers")),
        "{defs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_and_the_count_limit_the_set() {
    let (_pg, db) = setup().await;
    let sql = "SELECT id FROM orders WHERE customer_id = 42;
               SELECT id FROM docs WHERE tags @> ARRAY['t7'];
               SELECT id FROM customers WHERE lower(email) = 'user7@example.com';";
    let all = advise(&db, sql).await;
    assert_eq!(all.recommendations.len(), 3, "{all:#?}");
    let one = recommend_indexes(
        &db,
        &workload_from_sql(sql),
        &IndexOptions {
            max_indexes: 1,
            ..IndexOptions::default()
        },
        &mut |_, _, _| {},
    )
    .await
    .unwrap();
    assert_eq!(one.recommendations.len(), 1);
    let smallest = all.recommendations.iter().map(|r| r.bytes).min().unwrap();
    let tight = recommend_indexes(
        &db,
        &workload_from_sql(sql),
        &IndexOptions {
            budget_bytes: Some(smallest),
            ..IndexOptions::default()
        },
        &mut |_, _, _| {},
    )
    .await
    .unwrap();
    assert!(
        tight.recommendations.iter().map(|r| r.bytes).sum::<i64>() <= smallest,
        "{tight:#?}"
    );
    assert_eq!(tight.recommendations.len(), 1, "{tight:#?}");
}
