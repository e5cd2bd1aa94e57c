//! Loading the sample into a real PostgreSQL.

use pgopt_embedded::Postgres;
use pgopt_sample::{
    drop_schema, load, plan, Error, LoadOptions, LoadPhase, LoadProgress, Table, FOREIGN_KEYS,
};

const SCALE: f64 = 0.01;

#[tokio::test]
async fn a_small_load_has_the_planned_rows_valid_keys_and_only_primary_key_indexes() {
    let pg = Postgres::start().await.unwrap();
    let client = pg.create_database("small_load").await.unwrap();
    let opts = LoadOptions {
        scale: SCALE,
        seed: 42,
    };
    let mut events: Vec<LoadProgress> = Vec::new();
    let report = load(&client, &opts, &mut |p| events.push(p)).await.unwrap();

    // Every table holds exactly the planned rows.
    let planned = plan(SCALE);
    assert_eq!(report.rows_per_table, planned);
    let planned_total: u64 = planned.iter().map(|(_, n)| n).sum();
    assert_eq!(report.total_rows, planned_total);
    for (table, rows) in &planned {
        let row = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0) as u64, *rows, "{table}");
    }

    // Progress: copy events count up to the total, and every phase is reported.
    let copied: Vec<u64> = events
        .iter()
        .filter(|e| e.phase == LoadPhase::Copy)
        .map(|e| e.rows_done_total)
        .collect();
    assert!(copied.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(copied.last().copied(), Some(planned_total));
    assert!(events.iter().all(|e| e.rows_total == planned_total));
    for phase in [
        LoadPhase::Schema,
        LoadPhase::PrimaryKeys,
        LoadPhase::ForeignKeys,
        LoadPhase::Analyze,
    ] {
        assert!(
            events.iter().any(|e| e.phase == phase),
            "{phase:?} not reported"
        );
    }

    // Every foreign key exists and is validated (adding it checked every row).
    let fks = client
        .query(
            "SELECT conname::text, convalidated FROM pg_constraint \
             WHERE contype = 'f' AND conrelid::regclass::text = ANY($1) AND conparentid = 0",
            &[&Table::ALL.iter().map(|t| t.name()).collect::<Vec<_>>()],
        )
        .await
        .unwrap();
    assert_eq!(fks.len(), FOREIGN_KEYS.len());
    assert!(fks.iter().all(|r| r.get::<_, bool>(1)));

    // The only indexes are primary keys (also on every audit_log partition).
    let indexes = client
        .query(
            "SELECT i.indexrelid::regclass::text, i.indisprimary FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public'",
            &[],
        )
        .await
        .unwrap();
    let not_primary: Vec<String> = indexes
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    assert!(not_primary.is_empty(), "secondary indexes: {not_primary:?}");
    // 9 tables + audit_log + 13 partitions
    assert_eq!(indexes.len(), 10 + 13);

    // Audit rows land in the monthly partitions, none in the default one.
    let row = client
        .query_one("SELECT count(*) FROM audit_log_default", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    let row = client
        .query_one("SELECT count(*) FROM audit_log_2026_10", &[])
        .await
        .unwrap();
    assert!(row.get::<_, i64>(0) > 0);

    // Statistics are there for the planner.
    let row = client
        .query_one(
            "SELECT reltuples::bigint FROM pg_class WHERE relname = 'tasks'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0) as u64,
        planned[Table::Tasks as usize].1
    );

    // Identity sequences continue after the loaded ids.
    let row = client
        .query_one(
            "INSERT INTO comments (task_id, user_id, body, created_at) \
             VALUES (1, 1, 'hi', '2026-10-31') RETURNING id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0) as u64,
        planned[Table::Comments as usize].1 + 1
    );
}

#[tokio::test]
async fn message_bodies_are_full_text_searchable() {
    let pg = Postgres::start().await.unwrap();
    let client = pg.create_database("search").await.unwrap();
    load(
        &client,
        &LoadOptions {
            scale: SCALE,
            seed: 7,
        },
        &mut |_| {},
    )
    .await
    .unwrap();
    let words = pgopt_sample::search_words();
    let mut found = 0;
    for word in &words[..20] {
        let row = client
            .query_one(
                "SELECT count(*) FROM messages \
                 WHERE to_tsvector('english', body) @@ plainto_tsquery('english', $1)",
                &[word],
            )
            .await
            .unwrap();
        found += usize::from(row.get::<_, i64>(0) > 0);
    }
    assert_eq!(found, 20, "every common word occurs in some message");
    // No word of the vocabulary is an English stop word (its query would be empty).
    let empty = client
        .query_one(
            "SELECT count(*) FROM unnest($1::text[]) w \
             WHERE plainto_tsquery('english', w)::text = ''",
            &[&words],
        )
        .await
        .unwrap();
    assert_eq!(empty.get::<_, i64>(0), 0);
}

#[tokio::test]
async fn loading_twice_fails_clearly_and_drop_schema_allows_a_reload() {
    let pg = Postgres::start().await.unwrap();
    let client = pg.create_database("twice").await.unwrap();
    let opts = LoadOptions {
        scale: 0.001,
        seed: 1,
    };
    load(&client, &opts, &mut |_| {}).await.unwrap();

    let err = load(&client, &opts, &mut |_| {}).await.unwrap_err();
    match &err {
        Error::AlreadyExists { tables } => assert_eq!(tables.len(), Table::ALL.len()),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(err.to_string().contains("drop_schema"), "{err}");

    drop_schema(&client).await.unwrap();
    let report = load(&client, &opts, &mut |_| {}).await.unwrap();
    assert_eq!(
        report.total_rows,
        plan(0.001).iter().map(|(_, n)| n).sum::<u64>()
    );
}

#[tokio::test]
async fn a_failed_load_rolls_back_everything() {
    let pg = Postgres::start().await.unwrap();
    let client = pg.create_database("rollback").await.unwrap();
    // A stray table named like an audit_log partition makes the schema step fail
    // after the other tables were created in the load's transaction.
    client
        .batch_execute("CREATE TABLE audit_log_default (x int)")
        .await
        .unwrap();
    let err = load(
        &client,
        &LoadOptions {
            scale: 0.001,
            seed: 1,
        },
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Schema { .. }), "{err:?}");
    let row = client
        .query_one("SELECT count(*) FROM pg_class WHERE relname = 'tasks'", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        0,
        "the failed load left tables behind"
    );
}

#[tokio::test]
async fn invalid_scales_are_refused() {
    let pg = Postgres::start().await.unwrap();
    let client = pg.create_database("bad_scale").await.unwrap();
    for scale in [0.0, -1.0, f64::NAN, 1e9] {
        let err = load(&client, &LoadOptions { scale, seed: 1 }, &mut |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidScale { .. }), "{err:?}");
    }
}
