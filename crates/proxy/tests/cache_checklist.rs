//! The (M) cases of the cache checklist (/work/shared/CACHE-CHECKLIST.md, by number)
//! that had no deterministic test against a real PostgreSQL. Each proves a read was,
//! or was not, served from the cache the same way: read through pgopt until a hit
//! (SHOW CACHE's `hits`), change the rows directly on PostgreSQL behind pgopt's back
//! so that the cached answer is now the old one, do the operation under test through
//! pgopt, and read again through pgopt: the new value, never the old.

mod common;

use common::{admin, connect, counter, show, start_with};
use pgopt_embedded::Postgres;
use pgopt_proxy::{CacheSettings, Proxy};
use tokio_postgres::{Client, SimpleQueryMessage};

/// A client of PostgreSQL itself, past pgopt.
async fn direct(pg: &Postgres) -> Client {
    let (client, conn) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// PostgreSQL with `schema`, a proxy in front of it caching reads of `tables`, and a
/// client of PostgreSQL itself.
async fn setup(schema: &str, tables: &[&str]) -> (Postgres, Proxy, Client) {
    let pg = Postgres::start().await.unwrap();
    pg.psql(schema).unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: tables.iter().map(|t| t.to_string()).collect(),
            ..CacheSettings::default()
        };
    })
    .await;
    let behind = direct(&pg).await;
    (pg, proxy, behind)
}

/// Every row of a simple query, its columns joined by `|` (NULL as `null`).
async fn try_rows(client: &Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut rows = Vec::new();
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = m {
            let cols: Vec<&str> = (0..row.len())
                .map(|i| row.get(i).unwrap_or("null"))
                .collect();
            rows.push(cols.join("|"));
        }
    }
    Ok(rows)
}

async fn rows(client: &Client, sql: &str) -> Vec<String> {
    try_rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

async fn cache_row(proxy: &Proxy) -> std::collections::HashMap<String, String> {
    show(&admin(proxy).await, "CACHE").await.remove(0)
}

async fn hits(proxy: &Proxy) -> u64 {
    counter(&cache_row(proxy).await, "hits")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `read` through `client` twice: `want` both times, the second served from the
/// cache (the first may be too) (so the read is cached, and what follows can catch a stale entry).
async fn cached(proxy: &Proxy, client: &Client, read: &str, want: &[&str]) {
    assert_eq!(rows(client, read).await, strings(want), "{read}");
    let before = hits(proxy).await;
    assert_eq!(rows(client, read).await, strings(want), "{read}");
    let after = hits(proxy).await;
    assert_eq!(
        after,
        before + 1,
        "{read}: the second read was not served from the cache"
    );
}

/// [`cached`], then `change` directly on PostgreSQL: `read` through pgopt still
/// gives `want`, from the cache, though PostgreSQL has other rows now.
async fn cached_then_changed_behind(
    proxy: &Proxy,
    client: &Client,
    behind: &Client,
    read: &str,
    want: &[&str],
    change: &str,
) {
    cached(proxy, client, read, want).await;
    behind.batch_execute(change).await.unwrap();
    assert_eq!(
        rows(client, read).await,
        strings(want),
        "{read}: served from the cache after {change}"
    );
}

/// `sql` through `client`, which must succeed.
async fn run(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// #3, #34, #36: DDL through pgopt that makes a name mean another table — a table
/// created earlier on the search_path, a table dropped and created again, two
/// tables renamed in a swap — ends what the name's reads had cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_comes_to_mean_another_table_is_read_afresh() {
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('public');
         CREATE SCHEMA s1;
         CREATE TABLE d (v text); INSERT INTO d VALUES ('old');
         CREATE TABLE r (v text); INSERT INTO r VALUES ('r');
         CREATE TABLE r_new (v text); INSERT INTO r_new VALUES ('r_new');",
        &["t", "d", "r", "r_new", "r_old", "r_tmp"],
    )
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let plain = connect(&proxy, "postgres", None).await.unwrap();

    // #3: s1.t created through pgopt (by another session) shadows public.t on
    // `client`'s search_path.
    run(&client, "SET search_path = s1, public").await;
    let read = "SELECT v FROM t";
    cached_then_changed_behind(
        &proxy,
        &client,
        &behind,
        read,
        &["public"],
        "UPDATE public.t SET v = 'public2'",
    )
    .await;
    run(&plain, "CREATE TABLE s1.t AS SELECT 'shadow'::text AS v").await;
    assert_eq!(
        rows(&client, read).await,
        ["shadow"],
        "s1.t shadows public.t"
    );
    // The same text under the other search_path is still public.t, each cached
    // under its own key.
    assert_eq!(rows(&plain, read).await, ["public2"]);
    cached(&proxy, &client, read, &["shadow"]).await;
    cached(&proxy, &plain, read, &["public2"]).await;
    // Dropping the shadow through pgopt: public.t again.
    run(&plain, "DROP TABLE s1.t").await;
    assert_eq!(rows(&client, read).await, ["public2"], "s1.t dropped");
    // An empty shadow created in the reading session itself.
    cached(&proxy, &client, read, &["public2"]).await;
    run(&client, "CREATE TABLE s1.t (v text)").await;
    assert_eq!(rows(&client, read).await, Vec::<String>::new());
    run(&client, "RESET search_path").await;

    // #34: DROP TABLE and CREATE TABLE of the same name, as separate statements…
    let read = "SELECT v FROM d";
    cached_then_changed_behind(
        &proxy,
        &client,
        &behind,
        read,
        &["old"],
        "UPDATE d SET v = 'old2'",
    )
    .await;
    run(&client, "DROP TABLE d").await;
    run(&client, "CREATE TABLE d (v text)").await;
    assert_eq!(rows(&client, read).await, Vec::<String>::new(), "new d");
    run(&client, "INSERT INTO d VALUES ('new')").await;
    // …and in one query string, with the new rows.
    cached_then_changed_behind(
        &proxy,
        &client,
        &behind,
        read,
        &["new"],
        "UPDATE d SET v = 'new2'",
    )
    .await;
    run(
        &client,
        "DROP TABLE d; CREATE TABLE d (v text); INSERT INTO d VALUES ('newer')",
    )
    .await;
    assert_eq!(rows(&client, read).await, ["newer"]);
    // …and in an explicit transaction, by another session.
    cached(&proxy, &client, read, &["newer"]).await;
    run(
        &plain,
        "BEGIN; DROP TABLE d; CREATE TABLE d (v text); INSERT INTO d VALUES ('newest'); COMMIT",
    )
    .await;
    assert_eq!(rows(&client, read).await, ["newest"]);

    // #36: a rename swap, statement by statement.
    let read = "SELECT v FROM r";
    cached_then_changed_behind(
        &proxy,
        &client,
        &behind,
        read,
        &["r"],
        "UPDATE r SET v = 'r2'",
    )
    .await;
    cached(&proxy, &client, "SELECT v FROM r_new", &["r_new"]).await;
    run(&client, "ALTER TABLE r RENAME TO r_old").await;
    run(&client, "ALTER TABLE r_new RENAME TO r").await;
    assert_eq!(rows(&client, read).await, ["r_new"], "r is r_new now");
    assert_eq!(rows(&client, "SELECT v FROM r_old").await, ["r2"]);
    // …and back in one transaction by another session.
    cached_then_changed_behind(
        &proxy,
        &client,
        &behind,
        read,
        &["r_new"],
        "UPDATE r SET v = 'r_new2'",
    )
    .await;
    run(
        &plain,
        "BEGIN; ALTER TABLE r RENAME TO r_tmp; ALTER TABLE r_old RENAME TO r; \
         ALTER TABLE r_tmp RENAME TO r_new; COMMIT",
    )
    .await;
    assert_eq!(rows(&client, read).await, ["r2"], "r is the first r again");
    assert_eq!(rows(&client, "SELECT v FROM r_new").await, ["r_new2"]);
}
