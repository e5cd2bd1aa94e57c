//! Query insight in the proxy, against a real PostgreSQL: counts checked against
//! pg_stat_statements, percentiles against chosen pg_sleep latencies, N+1 findings, and
//! the slow log's redacted parameters — on the admin console and over HTTP.

mod common;

use std::collections::HashMap;

use common::{admin, config_for, connect, http_get, show, start_with};
use pgopt_embedded::Postgres;
use pgopt_insight::NPlusOneConfig;
use pgopt_proxy::{PoolMode, Proxy};

/// SHOW QUERIES rows whose normalized text contains `needle`.
async fn shapes(proxy: &Proxy, needle: &str) -> Vec<HashMap<String, String>> {
    let admin = admin(proxy).await;
    show(&admin, "QUERIES")
        .await
        .into_iter()
        .filter(|r| r["query"].contains(needle))
        .collect()
}

fn num(row: &HashMap<String, String>, col: &str) -> f64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {:?}", row[col]))
}

/// A PostgreSQL server with `sql` run in its `postgres` database.
async fn postgres_with(sql: &str) -> Postgres {
    let pg = Postgres::start().await.unwrap();
    pg.connect("postgres")
        .await
        .unwrap()
        .batch_execute(sql)
        .await
        .unwrap();
    pg
}

#[tokio::test]
async fn calls_match_pg_stat_statements_for_the_same_workload() {
    let pg = Postgres::start().await.unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
             CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 100) i;
             SELECT pg_stat_statements_reset();",
        )
        .await
        .unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let point = client
        .prepare("SELECT v FROM items WHERE id = $1")
        .await
        .unwrap();
    for i in 0..37 {
        client.query_one(&point, &[&(i % 100 + 1)]).await.unwrap();
    }
    for i in 0..23 {
        // Simple protocol, a different literal each time: one shape.
        client
            .simple_query(&format!("SELECT count(*) FROM items WHERE id < {i}"))
            .await
            .unwrap();
    }
    for i in 0..11 {
        client
            .execute("UPDATE items SET v = $1 WHERE id = $2", &[&"x", &i])
            .await
            .unwrap();
    }
    for i in 0..13 {
        // Two statements in one simple query: pg_stat_statements counts each.
        client
            .simple_query(&format!(
                "SELECT count(*) FROM items WHERE id < {i}; UPDATE items SET v = 'y' WHERE id = {i}"
            ))
            .await
            .unwrap();
    }

    let pss = |pattern: &'static str| {
        let direct = &direct;
        async move {
            let row = direct
                .query_one(
                    "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements WHERE query LIKE $1",
                    &[&pattern],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) as f64
        }
    };
    for (ours, theirs) in [
        (
            "FROM items WHERE id = $1",
            "SELECT v FROM items WHERE id = $1",
        ),
        (
            "count(*) FROM items WHERE id <",
            "SELECT count(*) FROM items WHERE id < $1",
        ),
        (
            "UPDATE items SET v",
            "UPDATE items SET v = $1 WHERE id = $2",
        ),
    ] {
        let rows = shapes(&proxy, ours).await;
        assert_eq!(rows.len(), 1, "{ours}: {rows:?}");
        let calls = num(&rows[0], "calls");
        assert_eq!(calls, pss(theirs).await, "{ours}");
        assert!(calls > 10.0);
    }
    let update = &shapes(&proxy, "UPDATE items SET v").await[0];
    // 10 + 12 (id 0 matches no row)
    assert_eq!(num(update, "rows"), 22.0, "{update:?}");
}

#[tokio::test]
async fn percentiles_follow_a_known_latency_distribution() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let sleep = client.prepare("SELECT pg_sleep($1::float8)").await.unwrap();
    // 30 calls of 10 ms and 10 of 100 ms: p50 is near 10 ms, p95 and p99 near 100.
    for i in 0..40 {
        let secs: f64 = if i % 4 == 3 { 0.1 } else { 0.01 };
        client.query_one(&sleep, &[&secs]).await.unwrap();
    }
    let rows = shapes(&proxy, "pg_sleep").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(num(row, "calls"), 40.0);
    let (p50, p95, p99) = (num(row, "p50_ms"), num(row, "p95_ms"), num(row, "p99_ms"));
    assert!((10.0..40.0).contains(&p50), "p50 {p50} ms: {row:?}");
    assert!((100.0..160.0).contains(&p95), "p95 {p95} ms: {row:?}");
    assert!((100.0..160.0).contains(&p99), "p99 {p99} ms: {row:?}");
    let mean = num(row, "mean_ms");
    assert!(
        (32.5..60.0).contains(&mean),
        "mean {mean} ms (expected ≈ 32.5 + overhead)"
    );

    // The same over HTTP, as JSON, by fingerprint too.
    let addr = proxy.admin_addr().unwrap();
    let all = http_get(addr, "/api/queries").await;
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.contains("pg_sleep"), "{all}");
    let one = http_get(addr, &format!("/api/queries/{}", row["fingerprint"])).await;
    assert!(one.contains("\"calls\":40"), "{one}");
    // A few parameter sets are sampled, redacted by default (no values).
    assert!(one.contains("\"sample_params\":[["), "{one}");
    // Only the sampled parameters: a duration such as 1330.013 ms holds "0.01" too.
    let (_, body) = one.split_once("\r\n\r\n").unwrap();
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    let samples = body["total"]["sample_params"].to_string();
    assert!(
        !samples.contains("0.01") && !samples.contains("0.1"),
        "{one}"
    );
    let missing = http_get(addr, "/api/queries/00000000000000ff").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    // Prometheus: the busiest shapes by fingerprint, never by text.
    let metrics = http_get(addr, "/metrics").await;
    let line = format!(
        "pgopt_query_calls_total{{fingerprint=\"{}\"}} 40",
        row["fingerprint"]
    );
    assert!(metrics.contains(&line), "{metrics}");
    assert!(!metrics.contains("pg_sleep"), "query text in the metrics");
}

#[tokio::test]
async fn a_pipelined_statement_is_timed_from_when_the_one_before_it_ended() {
    use tokio::io::AsyncWriteExt;
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let mut raw = common::raw_login(&proxy).await;
    // Three quick statements sent behind a 400 ms one, in one write: they wait for it
    // in the server's queue, which is not their own time.
    let mut batch = common::message(b'Q', b"SELECT pg_sleep(0.4)\0");
    for _ in 0..3 {
        batch.extend(common::message(b'Q', b"SELECT 'quick' AS pipelined\0"));
    }
    raw.write_all(&batch).await.unwrap();
    common::read_until_nth(&mut raw, b'Z', 4).await;
    let sleep = &shapes(&proxy, "pg_sleep").await[0];
    assert!(num(sleep, "max_ms") >= 400.0, "{sleep:?}");
    let rows = shapes(&proxy, "pipelined").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let quick = &rows[0];
    assert_eq!(num(quick, "calls"), 3.0);
    // (Well under the 400 ms they waited; the first waited longest.)
    assert!(num(quick, "max_ms") < 200.0, "{quick:?}");
}

/// The JSON body of a 200 answer to `GET path`.
async fn http_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let response = http_get(addr, path).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[tokio::test]
async fn failed_statements_are_counted_by_sqlstate() {
    let pg = postgres_with("CREATE TABLE accounts (id int PRIMARY KEY, balance int)").await;
    let proxy = start_with(&pg, |_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();

    // Extended protocol, one shape: 2 inserts, 3 unique violations, 2 divisions by zero.
    let insert = client
        .prepare("INSERT INTO accounts VALUES ($1, 100 / $2)")
        .await
        .unwrap();
    for (id, divisor, code) in [
        (1, 1, None),
        (2, 1, None),
        (1, 1, Some("23505")),
        (2, 5, Some("23505")),
        (1, 2, Some("23505")),
        (3, 0, Some("22012")),
        (4, 0, Some("22012")),
    ] {
        let result = client.execute(&insert, &[&id, &divisor]).await;
        assert_eq!(
            result.as_ref().err().and_then(common::code),
            code,
            "{result:?}"
        );
    }
    // Simple protocol, one shape: a success, a failure alone and one as the second
    // statement of a query text.
    for (sql, fails) in [
        (
            "UPDATE accounts SET balance = balance / 2 WHERE id = 1",
            false,
        ),
        (
            "UPDATE accounts SET balance = balance / 0 WHERE id = 1",
            true,
        ),
        (
            "SELECT 1; UPDATE accounts SET balance = balance / 0 WHERE id = 2",
            true,
        ),
    ] {
        let result = client.simple_query(sql).await;
        assert_eq!(result.is_err(), fails, "{sql}: {result:?}");
    }

    let addr = proxy.admin_addr().unwrap();
    for (needle, calls, errors) in [
        (
            "INSERT INTO accounts",
            7,
            serde_json::json!([
                {"sqlstate": "23505", "count": 3},
                {"sqlstate": "22012", "count": 2},
            ]),
        ),
        (
            "UPDATE accounts",
            3,
            serde_json::json!([{"sqlstate": "22012", "count": 2}]),
        ),
    ] {
        let rows = shapes(&proxy, needle).await;
        assert_eq!(rows.len(), 1, "{needle}: {rows:?}");
        let path = format!("/api/queries/{}", rows[0]["fingerprint"]);
        let stats = http_json(addr, &path).await;
        let total = &stats["total"];
        assert_eq!(total["calls"], calls, "{needle}: {stats}");
        let failed: u64 = errors
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total["errors"], failed, "{needle}: {stats}");
        assert_eq!(total["errors_by_code"], errors, "{needle}: {stats}");
        assert_eq!(
            stats["by_client"][0]["errors_by_code"], errors,
            "{needle}: {stats}"
        );
    }
}

#[tokio::test]
async fn a_loop_of_point_selects_in_a_transaction_is_an_n_plus_one() {
    let pg = postgres_with(
        "CREATE TABLE users (id int PRIMARY KEY, name text);
             INSERT INTO users SELECT i, 'u' || i FROM generate_series(1, 50) i;
             DO $$ BEGIN EXECUTE (SELECT format('CREATE TABLE wide (%s)',
               string_agg('c' || i || ' int', ', ')) FROM generate_series(1, 50) i); END $$;",
    )
    .await;
    let proxy = start_with(&pg, |_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();

    // 50 different statements (another column each) in one transaction: no finding.
    client.batch_execute("BEGIN").await.unwrap();
    for i in 1..=50 {
        client
            .simple_query(&format!("SELECT c{i} FROM wide WHERE c1 = 1"))
            .await
            .unwrap();
    }
    client.batch_execute("COMMIT").await.unwrap();
    let admin = admin(&proxy).await;
    let none = show(&admin, "NPLUS1").await;
    assert!(none.is_empty(), "{none:?}");

    // The same point select 50 times in one transaction: one finding, counted.
    let by_id = client
        .prepare("SELECT name FROM users WHERE id = $1")
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    for id in 1..=50 {
        client.query_one(&by_id, &[&id]).await.unwrap();
    }
    client.batch_execute("COMMIT").await.unwrap();
    let findings = show(&admin, "NPLUS1").await;
    assert_eq!(findings.len(), 1, "{findings:?}");
    let f = &findings[0];
    assert_eq!(f["kind"], "transaction");
    assert!(f["query"].contains("FROM users WHERE id = $1"), "{f:?}");
    // Inside a transaction the detector counts every execution from the first.
    assert_eq!(num(f, "count"), 50.0, "{f:?}");
    assert_eq!(f["user"], "postgres");
    let json = http_get(proxy.admin_addr().unwrap(), "/api/nplus1").await;
    assert!(json.contains("\"kind\":\"transaction\""), "{json}");
    // RESET QUERIES starts over.
    admin.simple_query("RESET QUERIES").await.unwrap();
    assert!(show(&admin, "NPLUS1").await.is_empty());
    assert!(show(&admin, "QUERIES").await.is_empty());
}

/// A table `users` of 50 rows, directly on `pg`.
async fn create_users(pg: &Postgres) {
    pg.connect("postgres")
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text);
             INSERT INTO users SELECT i, 'u' || i FROM generate_series(1, 50) i;",
        )
        .await
        .unwrap();
}

/// Twelve prepared point selects of users in autocommit, `gap` apart.
async fn twelve_user_lookups(proxy: &Proxy, gap: Option<std::time::Duration>) {
    let client = connect(proxy, "postgres", None).await.unwrap();
    let by_id = client
        .prepare("SELECT name FROM users WHERE id = $1")
        .await
        .unwrap();
    for id in 1..=12 {
        client.query_one(&by_id, &[&id]).await.unwrap();
        if let Some(gap) = gap {
            tokio::time::sleep(gap).await;
        }
    }
}

#[tokio::test]
async fn a_burst_of_point_selects_outside_a_transaction_is_an_n_plus_one() {
    let pg = Postgres::start().await.unwrap();
    create_users(&pg).await;
    let detector = |window_ms| NPlusOneConfig {
        threshold: 10,
        window_ms,
        ..NPlusOneConfig::default()
    };

    // 12 point selects in autocommit, all within a generous window: one burst finding.
    let proxy = start_with(&pg, |c| c.insight.n_plus_one = detector(60_000)).await;
    twelve_user_lookups(&proxy, None).await;
    let findings = show(&admin(&proxy).await, "NPLUS1").await;
    assert_eq!(findings.len(), 1, "{findings:?}");
    let f = &findings[0];
    assert_eq!(f["kind"], "burst", "{f:?}");
    assert!(f["query"].contains("FROM users WHERE id = $1"), "{f:?}");
    assert_eq!(num(f, "count"), 12.0, "{f:?}");
    assert_eq!(f["user"], "postgres");
    assert!(f["client_addr"].starts_with("127.0.0.1:"), "{f:?}");
    let json = http_get(proxy.admin_addr().unwrap(), "/api/nplus1").await;
    assert!(json.contains("\"kind\":\"burst\""), "{json}");

    // The same 12 executions with a 20 ms window, each at least 40 ms after the one
    // before: no finding (the sleeps only ever make the gaps longer).
    let spaced = start_with(&pg, |c| c.insight.n_plus_one = detector(20)).await;
    twelve_user_lookups(&spaced, Some(std::time::Duration::from_millis(40))).await;
    let spaced_admin = admin(&spaced).await;
    let none = show(&spaced_admin, "NPLUS1").await;
    assert!(none.is_empty(), "{none:?}");
    assert!(show(&spaced_admin, "QUERIES")
        .await
        .iter()
        .any(|r| r["query"].contains("FROM users WHERE id = $1") && r["calls"] == "12"));
}

#[tokio::test]
async fn the_slow_log_keeps_slow_statements_with_parameters_redacted() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.insight.slow_log.threshold_ms = 50).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    client
        .query_one("SELECT pg_sleep(0.001), $1::text", &[&"fast-secret"])
        .await
        .unwrap();
    client
        .query_one(
            "SELECT pg_sleep($1::float8), $2::text",
            &[&0.08f64, &"secret-value"],
        )
        .await
        .unwrap();
    let admin = admin(&proxy).await;
    let slow = show(&admin, "SLOW").await;
    assert_eq!(slow.len(), 1, "{slow:?}");
    let entry = &slow[0];
    assert!(entry["query"].contains("pg_sleep($1::float8)"), "{entry:?}");
    assert!(num(entry, "duration_ms") >= 80.0, "{entry:?}");
    assert!(!entry["params"].contains("secret"), "{entry:?}");
    assert!(!entry["params"].is_empty(), "{entry:?}");
    let json = http_get(proxy.admin_addr().unwrap(), "/api/slow").await;
    assert!(
        json.contains("pg_sleep") && !json.contains("secret"),
        "{json}"
    );

    // RELOAD applies a new threshold at once and keeps what was logged; a bad N+1
    // setting is refused with nothing changed.
    let reconfigured = |threshold_ms: u64, n_plus_one: u32| {
        let mut c = config_for(&pg, PoolMode::Transaction, 2);
        c.admin_users = vec!["postgres".into()];
        c.admin_listen = proxy.admin_addr();
        c.insight.slow_log.threshold_ms = threshold_ms;
        c.insight.n_plus_one.threshold = n_plus_one;
        c
    };
    let err = proxy.handle().apply(reconfigured(10, 1)).unwrap_err();
    assert!(err.to_string().contains("n_plus_one"), "{err}");
    proxy.handle().apply(reconfigured(5000, 10)).unwrap();
    let sleep = "SELECT pg_sleep($1::float8), $2::text";
    client.query_one(sleep, &[&0.08f64, &"x"]).await.unwrap();
    assert_eq!(show(&admin, "SLOW").await.len(), 1);
    proxy.handle().apply(reconfigured(10, 10)).unwrap();
    client.query_one(sleep, &[&0.02f64, &"x"]).await.unwrap();
    assert_eq!(show(&admin, "SLOW").await.len(), 2);
}

#[tokio::test]
async fn with_insight_off_nothing_is_recorded() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| c.insight.enabled = false).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let admin = admin(&proxy).await;
    let rows = show(&admin, "QUERIES").await;
    assert!(rows[0]["note"].contains("off"), "{rows:?}");
}

#[tokio::test]
async fn a_reload_pauses_and_resumes_insight_in_running_sessions() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |_| {}).await;
    let reconfigured = |enabled: bool| {
        let mut c = config_for(&pg, PoolMode::Transaction, 2);
        c.admin_users = vec!["postgres".into()];
        c.admin_listen = proxy.admin_addr();
        c.insight.enabled = enabled;
        c
    };
    let calls = |rows: Vec<HashMap<String, String>>| -> Vec<String> {
        rows.iter().map(|r| r["calls"].clone()).collect()
    };
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let plus = client.prepare("SELECT $1::int + 1").await.unwrap();
    let run = |statement: &tokio_postgres::Statement, times: usize| {
        let (client, statement) = (&client, statement.clone());
        async move {
            for i in 0..times as i32 {
                client.query_one(&statement, &[&i]).await.unwrap();
            }
        }
    };
    run(&plus, 3).await;
    assert_eq!(calls(shapes(&proxy, "$1::int + $2").await), ["3"]);

    // Paused: nothing is recorded, what was collected stays.
    proxy.handle().apply(reconfigured(false)).unwrap();
    run(&plus, 5).await;
    let times = client.prepare("SELECT $1::int * 2").await.unwrap();
    run(&times, 4).await;
    client.simple_query("SELECT 'paused'").await.unwrap();
    assert_eq!(calls(shapes(&proxy, "$1::int + $2").await), ["3"]);
    assert!(shapes(&proxy, "$1::int * $2").await.is_empty());
    let queries = shapes(&proxy, "SELECT").await;
    assert!(
        queries.iter().all(|r| r["query"] != "SELECT $1"),
        "{queries:?}"
    );

    // Resumed in the same session, statements prepared while paused included.
    proxy.handle().apply(reconfigured(true)).unwrap();
    run(&plus, 2).await;
    run(&times, 2).await;
    assert_eq!(calls(shapes(&proxy, "$1::int + $2").await), ["5"]);
    assert_eq!(calls(shapes(&proxy, "$1::int * $2").await), ["2"]);
}

/// SHOW PLANS rows, waiting up to 10 s for `n` of them (capture runs in the background).
async fn plans(proxy: &Proxy, n: usize) -> Vec<HashMap<String, String>> {
    let admin = admin(proxy).await;
    for _ in 0..100 {
        let rows = show(&admin, "PLANS").await;
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    show(&admin, "PLANS").await
}

#[tokio::test]
async fn slow_shapes_get_their_plan_captured_without_running_writes() {
    let pg = Postgres::start().await.unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, v int);
             INSERT INTO big SELECT i, i % 1000 FROM generate_series(1, 50000) i;
             ANALYZE big;",
        )
        .await
        .unwrap();
    let proxy = start_with(&pg, |c| {
        c.insight.plans.threshold = std::time::Duration::ZERO;
        c.insight.plans.per_minute = 600;
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    // No index on v: a sequential scan of 50,000 rows, with the bound value.
    let by_v = client
        .prepare("SELECT count(*) FROM big WHERE v = $1")
        .await
        .unwrap();
    client.query_one(&by_v, &[&7]).await.unwrap();
    // A write is planned, never run: v stays as it was.
    client
        .execute("UPDATE big SET v = -1 WHERE v = $1", &[&3])
        .await
        .unwrap();
    let rows = plans(&proxy, 2).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let select = rows
        .iter()
        .find(|r| r["query"].contains("count(*)"))
        .expect("the SELECT's plan");
    assert_eq!(select["error"], "", "{select:?}");
    // tokio-postgres binds binary values: the generic plan.
    assert_eq!(select["plan_kind"], "generic", "{select:?}");
    let json = http_get(
        proxy.admin_addr().unwrap(),
        &format!("/api/plans/{}", select["fingerprint"]),
    )
    .await;
    assert!(
        select["large_seq_scans"].contains("public.big (~50000 rows)"),
        "{select:?}\n{json}"
    );
    let updated: i64 = direct
        .query_one("SELECT count(*) FROM big WHERE v = -1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        updated, 50,
        "the client's own UPDATE ran once, the plan capture did not"
    );

    // The plan itself, as JSON; never EXPLAIN ANALYZE.
    assert!(json.contains("\"Node Type\":\"Seq Scan\""), "{json}");
    assert!(!json.contains("Actual Rows"), "{json}");

    // A shape is captured once per interval, however often it is slow.
    for v in 0..5 {
        client.query_one(&by_v, &[&v]).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(show(&admin(&proxy).await, "PLANS").await.len(), 2);
}

#[tokio::test]
async fn plan_captures_keep_to_the_overall_rate_per_minute() {
    let pg = postgres_with("CREATE TABLE t (a int, b int, c int, d int, e int, f int)").await;
    let proxy = start_with(&pg, |c| {
        c.insight.plans.threshold = std::time::Duration::ZERO;
        c.insight.plans.per_minute = 2;
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    // Six distinct shapes, every one slow enough for a capture.
    for column in ["a", "b", "c", "d", "e", "f"] {
        client
            .query(&format!("SELECT * FROM t WHERE {column} = $1"), &[&1])
            .await
            .unwrap();
    }
    let first = plans(&proxy, 1).await;
    assert!(!first.is_empty(), "no plan captured at all");
    // Each capture takes milliseconds: without the limit the other five would be here
    // well within a second.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let rows = show(&admin(&proxy).await, "PLANS").await;
    assert!(
        (1..=2).contains(&rows.len()),
        "{} captures with per_minute = 2: {rows:?}",
        rows.len()
    );
}

#[tokio::test]
async fn plans_follow_the_clients_search_path_and_with_full_params_its_literals() {
    let pg = Postgres::start().await.unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    direct
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.big (id int PRIMARY KEY, v int);
             INSERT INTO app.big SELECT i, i % 1000 FROM generate_series(1, 20000) i;
             ANALYZE app.big;",
        )
        .await
        .unwrap();
    let proxy = start_with(&pg, |c| {
        c.insight.plans.threshold = std::time::Duration::ZERO;
        c.insight.plans.per_minute = 600;
        c.insight.store.params = pgopt_insight::ParamMode::Full;
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    // `big` is only in schema app, which the client's search_path names.
    client.simple_query("SET search_path = app").await.unwrap();
    client
        .simple_query("SELECT count(*) FROM big WHERE v IN (1, 2, 3) -- a comment")
        .await
        .unwrap();
    let rows = plans(&proxy, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["error"], "", "{rows:?}");
    assert_eq!(rows[0]["plan_kind"], "custom", "{rows:?}");
    assert!(rows[0]["query"].contains("IN ($1 /*, ... */)"), "{rows:?}");
    let json = http_get(
        proxy.admin_addr().unwrap(),
        &format!("/api/plans/{}", rows[0]["fingerprint"]),
    )
    .await;
    // Planned as sent: the whole list, not the collapsed shape's one parameter.
    assert!(json.contains("'{1,2,3}'"), "{json}");
    assert!(json.contains("\"Schema\":\"app\""), "{json}");

    // A parameter only the client's Parse gives a type (`$2 IS NULL` alone can't be
    // typed): the generic plan is prepared with the client's types.
    let typed = client
        .prepare_typed(
            "SELECT count(*) FROM big WHERE v = $1 OR $2 IS NULL",
            &[
                tokio_postgres::types::Type::INT4,
                tokio_postgres::types::Type::TEXT,
            ],
        )
        .await
        .unwrap();
    client.query_one(&typed, &[&5, &"x"]).await.unwrap();
    let rows = plans(&proxy, 2).await;
    let typed = rows
        .iter()
        .find(|r| r["query"].contains("IS NULL"))
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(typed["error"], "", "{typed:?}");
    assert_eq!(typed["plan_kind"], "generic", "binary values: {typed:?}");
}

/// `pgopt_proxy`'s `metrics::TOP_SHAPES`: the shapes `/metrics` labels at most.
const TOP_SHAPES: usize = 20;

/// The distinct fingerprint label values on a `/metrics` page.
fn fingerprint_labels(page: &str) -> std::collections::BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("{fingerprint=\"")?.1.split_once('"'))
        .map(|(fingerprint, _)| fingerprint.to_string())
        .collect()
}

#[tokio::test]
async fn metrics_label_only_the_busiest_shapes() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.default_pool_size = 10;
        c.insight.plans.enabled = false;
    })
    .await;
    // 30 cheap shapes once each, then 20 shapes of 1 s each (10 clients at a time):
    // the 20 slow ones have the most total time, however slow the machine (the first
    // cheap one waits for the session's first catalog read, and a loaded machine has
    // taken it past 200 ms).
    let client = connect(&proxy, "postgres", None).await.unwrap();
    for n in 0..30 {
        client
            .simple_query(&format!("SELECT c{n} FROM (SELECT 1 AS c{n}) s"))
            .await
            .unwrap();
    }
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect(&proxy, "postgres", None).await.unwrap());
    }
    futures_util::future::join_all(clients.iter().enumerate().map(|(i, client)| async move {
        for n in (i..20).step_by(10) {
            let sql = format!("SELECT pg_sleep(1), s{n} FROM (SELECT 1 AS s{n}) s");
            client.simple_query(&sql).await.unwrap();
        }
    }))
    .await;

    let admin = admin(&proxy).await;
    let all = show(&admin, "QUERIES").await;
    assert_eq!(all.len(), 50, "{all:?}");
    let busiest: std::collections::BTreeSet<String> = all
        .iter()
        .filter(|r| r["query"].contains("pg_sleep"))
        .map(|r| r["fingerprint"].clone())
        .collect();
    assert_eq!(busiest.len(), TOP_SHAPES, "{all:?}");
    let page = http_get(proxy.admin_addr().unwrap(), "/metrics").await;
    assert_eq!(fingerprint_labels(&page), busiest, "{page}");
}

/// The proxy process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_with_100k_distinct_shapes_through_the_proxy() {
    let pg = Postgres::start().await.unwrap();
    let proxy = start_with(&pg, |c| {
        c.insight.store.max_fingerprints = 2000;
        c.insight.plans.enabled = false;
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let metric = |page: &str, name: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    let before = rss();
    // 100,000 distinct shapes (a column name each), 20 statements per round trip.
    for batch in 0..5_000 {
        let sql: String = (0..20)
            .map(|k| {
                let n = batch * 20 + k;
                format!("SELECT c{n} FROM (SELECT 1 AS c{n}) s;")
            })
            .collect();
        client.simple_query(&sql).await.unwrap();
        if batch % 1000 == 0 {
            let page = http_get(proxy.admin_addr().unwrap(), "/metrics").await;
            assert!(
                metric(&page, "pgopt_query_shapes") <= 2000,
                "after {batch} batches"
            );
        }
    }
    let page = http_get(proxy.admin_addr().unwrap(), "/metrics").await;
    let held = metric(&page, "pgopt_query_shapes");
    assert!((1000..=2000).contains(&held), "{held} shapes held");
    let labels = fingerprint_labels(&page);
    assert_eq!(labels.len(), TOP_SHAPES, "{labels:?}");
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 256 << 20,
        "resident memory grew by {} MB for 100k shapes",
        grown >> 20
    );
    // Still recording: a new shape shows up.
    client.simple_query("SELECT pg_sleep(0.2)").await.unwrap();
    assert_eq!(shapes(&proxy, "pg_sleep").await.len(), 1);
}
