//! Named prepared statements in transaction mode: a client's statements follow it onto
//! whichever server connection it is lent.

use std::process::Command;

mod common;

use pgopt_embedded::Postgres;
use pgopt_proxy::{PoolMode, Proxy};

async fn start(pool_size: usize) -> (Postgres, Proxy) {
    common::start(PoolMode::Transaction, pool_size).await
}

async fn connect(proxy: &Proxy) -> tokio_postgres::Client {
    common::connect(proxy, "postgres", None).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_work_on_whichever_server_connection_a_client_gets() {
    let (pg, proxy) = start(2).await;
    let mut tasks = Vec::new();
    for c in 0..8i32 {
        let client = connect(&proxy).await;
        tasks.push(tokio::spawn(async move {
            let add = client.prepare("SELECT $1::int + $2::int").await.unwrap();
            let pid = client.prepare("SELECT pg_backend_pid()").await.unwrap();
            let mut servers = std::collections::HashSet::new();
            for i in 0..50i32 {
                let row = client.query_one(&add, &[&i, &c]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i + c);
                servers.insert(client.query_one(&pid, &[]).await.unwrap().get::<_, i32>(0));
                // Ad-hoc statements too (tokio-postgres names and closes them).
                let row = client
                    .query_one("SELECT $1::text || 'x'", &[&"a"])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, &str>(0), "ax");
            }
            servers.len()
        }));
    }
    let mut most = 0;
    for t in tasks {
        most = most.max(t.await.unwrap());
    }
    assert!(
        most > 1,
        "clients never moved between server connections: the test proves nothing"
    );
    drop(pg);
}

#[tokio::test]
async fn a_parse_that_fails_leaves_the_client_usable() {
    let (_pg, proxy) = start(1).await;
    let client = connect(&proxy).await;
    let err = client.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42601"));
    let err = client
        .prepare("SELECT * FROM missing_table")
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42P01"));
    let ok = client.prepare("SELECT 42").await.unwrap();
    assert_eq!(
        client.query_one(&ok, &[]).await.unwrap().get::<_, i32>(0),
        42
    );
}

#[tokio::test]
async fn closed_statements_can_be_prepared_again_and_discard_all_is_survived() {
    let (_pg, proxy) = start(1).await;
    let client = connect(&proxy).await;
    for round in 0..3i64 {
        let stmt = client.prepare("SELECT $1::bigint * 2").await.unwrap();
        assert_eq!(
            client
                .query_one(&stmt, &[&round])
                .await
                .unwrap()
                .get::<_, i64>(0),
            round * 2
        );
        drop(stmt); // sends Close
    }
    let stmt = client.prepare("SELECT $1::bigint * 3").await.unwrap();
    client.batch_execute("DISCARD ALL").await.unwrap();
    // The server forgot its statements; pgopt prepares them again.
    assert_eq!(
        client
            .query_one(&stmt, &[&5i64])
            .await
            .unwrap()
            .get::<_, i64>(0),
        15
    );
}

#[tokio::test]
async fn describe_before_execute_and_statements_in_a_transaction() {
    let (_pg, proxy) = start(2).await;
    let client = connect(&proxy).await;
    client
        .batch_execute("CREATE TABLE t (id int primary key, v text)")
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO t VALUES ($1, $2)")
        .await
        .unwrap();
    assert_eq!(
        insert.params().len(),
        2,
        "Describe returned the parameter types"
    );
    client.batch_execute("BEGIN").await.unwrap();
    for i in 0..20i32 {
        client
            .execute(&insert, &[&i, &format!("v{i}")])
            .await
            .unwrap();
    }
    client.batch_execute("COMMIT").await.unwrap();
    let count = client.prepare("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(count.columns().len(), 1);
    assert_eq!(
        client
            .query_one(&count, &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_mode_in_transaction_pooling() {
    let (pg, proxy) = start(2).await;
    let pgbench = pg.binaries().program("pgbench");
    common::pgbench_init(&pg);
    // One thread per client: pgbench prepares with a blocking PQprepare, so a thread
    // serving several clients stalls them all while one waits for a pooled connection
    // that another of its own clients holds mid-transaction — with any pooler.
    let out = Command::new(&pgbench)
        .args([
            "-n",
            "-c",
            "8",
            "-j",
            "8",
            "-t",
            "200",
            "-M",
            "prepared",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &proxy.local_addr().port().to_string(),
            "-U",
            "postgres",
            "app",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("number of transactions actually processed: 1600/1600"),
        "{stdout}"
    );
}

#[tokio::test]
async fn deallocate_and_discard_variants_never_break_later_statements() {
    let (_pg, proxy) = start(1).await;
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    let stmt = a.prepare("SELECT $1::int + 10").await.unwrap();
    assert_eq!(
        a.query_one(&stmt, &[&1]).await.unwrap().get::<_, i32>(0),
        11
    );
    // Statements survive DISCARD PLANS/TEMP/SEQUENCES on the server; pgopt must not
    // think otherwise (it would prepare them again: 42P05 "already exists").
    for discard in ["DISCARD PLANS", "DISCARD TEMP", "DISCARD SEQUENCES"] {
        a.batch_execute(discard).await.unwrap();
        let again = b.prepare("SELECT $1::int + 10").await.unwrap();
        assert_eq!(
            b.query_one(&again, &[&2]).await.unwrap().get::<_, i32>(0),
            12
        );
        assert_eq!(
            a.query_one(&stmt, &[&3]).await.unwrap().get::<_, i32>(0),
            13
        );
    }
    // DISCARD ALL fails inside a transaction: nothing was dropped.
    a.batch_execute("BEGIN").await.unwrap();
    assert!(a.batch_execute("DISCARD ALL").await.is_err());
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        a.query_one(&stmt, &[&4]).await.unwrap().get::<_, i32>(0),
        14
    );
    let again = b.prepare("SELECT $1::int + 10").await.unwrap();
    assert_eq!(
        b.query_one(&again, &[&5]).await.unwrap().get::<_, i32>(0),
        15
    );

    // DEALLOCATE of one's own statement (what psycopg sends with libpq < 17) works
    // and leaves other clients' copies alone; an unknown name is the server's 26000.
    let named: Vec<String> = a
        .simple_query("SELECT name FROM pg_prepared_statements")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert!(named.iter().all(|n| n.starts_with("pgopt_")), "{named:?}");
    // tokio-postgres names a client's first statement s0.
    a.batch_execute("DEALLOCATE s0").await.unwrap();
    let err = a.query_one(&stmt, &[&6]).await.unwrap_err();
    assert_eq!(common::code(&err), Some("26000"), "{err}");
    assert_eq!(
        b.query_one(&again, &[&6]).await.unwrap().get::<_, i32>(0),
        16
    );
    let err = a
        .batch_execute("DEALLOCATE no_such_statement")
        .await
        .unwrap_err();
    assert_eq!(common::code(&err), Some("26000"), "{err}");
    // Inside a failed transaction PostgreSQL refuses everything but ROLLBACK.
    a.batch_execute("BEGIN").await.unwrap();
    assert!(a.batch_execute("SELECT 1/0").await.is_err());
    let err = a.batch_execute("DEALLOCATE ALL").await.unwrap_err();
    assert_eq!(common::code(&err), Some("25P02"), "{err}");
    a.batch_execute("ROLLBACK").await.unwrap();
    a.batch_execute("DEALLOCATE ALL").await.unwrap();
    let fresh = a.prepare("SELECT $1::int + 10").await.unwrap();
    assert_eq!(
        a.query_one(&fresh, &[&7]).await.unwrap().get::<_, i32>(0),
        17
    );
}
