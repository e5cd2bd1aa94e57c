//! The result cache in the proxy against a real PostgreSQL. What is served from the
//! cache shows when rows change behind pgopt's back (directly on PostgreSQL): a cached
//! read keeps the old value until a write through pgopt, or CACHE FLUSH, ends it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{admin, connect, counter, pgbench_init, run, show, start_with, wait_for_cache};
use pgopt_embedded::Postgres;
use pgopt_proxy::{CacheSettings, PoolMode, Proxy};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The first column of the first row of a simple query, as text.
async fn value(client: &Client, sql: &str) -> String {
    row(client, sql).await.remove(0)
}

/// The first row of a simple query, as text.
async fn row(client: &Client, sql: &str) -> Vec<String> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            return (0..row.len())
                .map(|i| row.get(i).unwrap_or("").to_string())
                .collect();
        }
    }
    panic!("{sql}: no row");
}

/// Runs `sql` through `client` until its first value is `want`, every 20 ms; fails
/// with `what` after `within`.
async fn eventually(client: &Client, sql: &str, want: &str, within: Duration, what: &str) {
    let deadline = std::time::Instant::now() + within;
    while value(client, sql).await != want {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cache of `items`, with the replication listener on.
fn listening_on_items() -> CacheSettings {
    CacheSettings {
        enabled: true,
        tables: vec!["items".into()],
        wal_listener: true,
        ..CacheSettings::default()
    }
}

/// PostgreSQL with `wal_level = logical`, for the replication listener.
async fn logical_postgres() -> Postgres {
    Postgres::builder()
        .setting("wal_level", "logical")
        .start()
        .await
        .unwrap()
}

/// A client of PostgreSQL itself, past pgopt.
async fn direct(pg: &Postgres) -> Client {
    pg.connect("postgres").await.unwrap()
}

/// Three reads of item 1 ('a') through `proxy`, none served from the cache or stored
/// there; SHOW CACHE's row after them.
async fn reads_skip_the_cache(proxy: &Proxy) -> HashMap<String, String> {
    let client = connect(proxy, "postgres", None).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            value(&client, "SELECT v FROM items WHERE id = 1").await,
            "a"
        );
    }
    let stats = cache_row(proxy).await;
    assert_eq!(counter(&stats, "hits"), 0, "{stats:?}");
    assert_eq!(counter(&stats, "stored"), 0, "{stats:?}");
    stats
}

async fn cache_row(proxy: &Proxy) -> HashMap<String, String> {
    show(&admin(proxy).await, "CACHE").await.remove(0)
}

/// PostgreSQL with tables `items`, `events` (cached) and `unlisted` (not), and a proxy
/// caching the first two.
async fn setup() -> (Postgres, Proxy) {
    setup_with(|_| {}).await
}

/// [`setup`], with the cache's settings changed by `tweak`.
async fn setup_with(tweak: impl FnOnce(&mut CacheSettings)) -> (Postgres, Proxy) {
    setup_in(PoolMode::Transaction, tweak).await
}

/// [`setup_with`] in pool mode `mode`.
async fn setup_in(mode: PoolMode, tweak: impl FnOnce(&mut CacheSettings)) -> (Postgres, Proxy) {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a'), (2, 'b');
         CREATE TABLE events (id int, at timestamptz);
         INSERT INTO events VALUES (1, '2024-01-01 00:00:00+00');
         CREATE TABLE unlisted (v text);
         INSERT INTO unlisted VALUES ('u');
         CREATE SEQUENCE s;
         CREATE FUNCTION set_v(text) RETURNS void LANGUAGE sql AS
           $$ UPDATE items SET v = $1 WHERE id = 1 $$;",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.pool_mode = mode;
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into(), "public.events".into()],
            ..CacheSettings::default()
        };
        tweak(&mut c.cache);
    })
    .await;
    (pg, proxy)
}

/// [`READ_HELD`] of item 2, filled by a client whose query waits on a lock a direct
/// session holds (`COMMIT` it to let the fill end, which the task returns).
async fn a_fill_held_by_a_lock() -> (Postgres, Proxy, Client, tokio::task::JoinHandle<String>) {
    let (pg, proxy) = setup().await;
    let locker = direct(&pg).await;
    let watcher = direct(&pg).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let leader = connect(&proxy, "postgres", None).await.unwrap();
    let filling = tokio::spawn(async move { value(&leader, READ_HELD).await });
    common::wait_until_waiting_on_lock(&watcher, "SELECT v FROM items%").await;
    (pg, proxy, locker, filling)
}

const READ_HELD: &str = "SELECT v FROM items WHERE id = 2";

/// Item 1's value.
const READ: &str = "SELECT v FROM items WHERE id = 1";

/// A client waiting for another session's fill of its key can cancel its request, as
/// one waiting on a lock in PostgreSQL can: 57014 at once, not after the fill or
/// `flight_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_another_sessions_fill_can_cancel() {
    let (_pg, proxy, locker, filling) = a_fill_held_by_a_lock().await;
    let waiter = connect(&proxy, "postgres", None).await.unwrap();
    let token = waiter.cancel_token();
    let waiting = tokio::spawn(async move { waiter.simple_query(READ_HELD).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second read did not wait for the fill"
    );
    let started = std::time::Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the cancel did not end the wait")
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
    locker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(filling.await.unwrap(), "b");
}

/// A client waiting for another session's fill of its key waits no longer than its
/// statement_timeout, as its statement would run no longer on PostgreSQL: 57014,
/// "canceling statement due to statement timeout". Before, it waited up to
/// `flight_timeout` (5 s), then ran the statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_another_sessions_fill_waits_no_longer_than_its_statement_timeout() {
    let (_pg, proxy, locker, filling) = a_fill_held_by_a_lock().await;
    let waiter = connect(&proxy, "postgres", None).await.unwrap();
    waiter
        .batch_execute("SET statement_timeout = '300ms'")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let e = waiter.simple_query(READ_HELD).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "canceling statement due to statement timeout"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    locker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(filling.await.unwrap(), "b");
    assert_eq!(value(&waiter, READ_HELD).await, "b");
}

/// A read of a view that calls a volatile user function (or of a view over one) may
/// write anything that function writes: the cache takes it as a write to everything.
/// Before, what the function wrote kept its cached reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_calling_a_volatile_user_function_invalidates_what_it_may_write() {
    let (pg, proxy) = setup().await;
    pg.psql(
        "CREATE FUNCTION bump(text) RETURNS int LANGUAGE sql AS \
           $$ UPDATE items SET v = $1 WHERE id = 2 RETURNING 1 $$; \
         CREATE VIEW bumps AS SELECT bump('by the view') AS n; \
         CREATE VIEW over_bumps AS SELECT n FROM bumps",
    )
    .unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 2";
    for view in ["bumps", "over_bumps"] {
        let through = format!("SELECT * FROM {view}");
        cached_then_written(&client, read, &through, "by the view").await;
    }
}

/// Item 2's value set back to 'b' through pgopt, `read` (of it) twice (the second a
/// hit), then `statement`, after which `read` gives `after`.
async fn cached_then_written(client: &Client, read: &str, statement: &str, after: &str) {
    client
        .batch_execute("UPDATE items SET v = 'b' WHERE id = 2")
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(value(client, read).await, "b");
    }
    client.batch_execute(statement).await.unwrap();
    assert_eq!(value(client, read).await, after, "{statement}");
}

/// An operator, a cast or a domain check that calls a volatile user function calls it
/// without naming it (nor the operator, for one the syntax implies, as LIKE's ~~): a statement using one is not cached (the function runs each
/// time, as its writes need) and is taken as a write to everything. Before, both were
/// missed: a hit skipped the function, and what it wrote kept its cached reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_casts_and_domains_calling_user_functions_are_seen() {
    let (pg, proxy) = setup().await;
    pg.psql(
        "CREATE TABLE calls (n int); \
         CREATE FUNCTION logged(int) RETURNS boolean LANGUAGE sql AS \
           $$ INSERT INTO calls VALUES ($1) RETURNING true $$; \
         CREATE FUNCTION bump(int, int) RETURNS boolean LANGUAGE sql AS \
           $$ UPDATE items SET v = 'by the operator' WHERE id = 2 RETURNING true $$; \
         CREATE OPERATOR ##> (LEFTARG = int, RIGHTARG = int, FUNCTION = bump); \
         CREATE DOMAIN logged_int AS int CHECK (logged(VALUE)); \
         CREATE TYPE wrapped AS (n int); \
         CREATE FUNCTION wrap(int) RETURNS wrapped LANGUAGE sql AS \
           $$ INSERT INTO calls VALUES ($1) RETURNING ROW($1)::wrapped $$; \
         CREATE CAST (int AS wrapped) WITH FUNCTION wrap(int); \
         CREATE DOMAIN bumping_int AS int CHECK (bump(VALUE, 0)); \
         CREATE TABLE bumping (x bumping_int); \
         CREATE FUNCTION peek(int, int) RETURNS boolean LANGUAGE sql STABLE AS 'SELECT true'; \
         CREATE OPERATOR #? (LEFTARG = int, RIGHTARG = int, FUNCTION = peek); \
         CREATE TYPE tagged AS (n int); \
         CREATE FUNCTION tag_like(tagged, text) RETURNS boolean LANGUAGE sql AS \
           $$ INSERT INTO calls VALUES (($1).n) RETURNING true $$; \
         CREATE OPERATOR ~~ (LEFTARG = tagged, RIGHTARG = text, FUNCTION = tag_like); \
         CREATE DOMAIN relogged_int AS logged_int; \
         CREATE FUNCTION logged2(int, int) RETURNS boolean LANGUAGE sql AS \
           $$ INSERT INTO calls VALUES ($1) RETURNING true $$; \
         CREATE OPERATOR #@ (LEFTARG = int, RIGHTARG = int, FUNCTION = logged2); \
         CREATE DOMAIN op_logged_int AS int CHECK (VALUE #@ 0); \
         CREATE TABLE bumping_many (x bumping_int[]); \
         CREATE TYPE bumping_pair AS (x bumping_int, y int); \
         CREATE TABLE bumping_pairs (p bumping_pair); \
         CREATE TABLE bumped_default (k int, b boolean DEFAULT 1 ##> 2); \
         CREATE TYPE stamped AS (n int); \
         CREATE FUNCTION stamp(int) RETURNS stamped LANGUAGE sql AS \
           $$ UPDATE items SET v = 'by the operator' WHERE id = 2 RETURNING ROW($1)::stamped $$; \
         CREATE CAST (int AS stamped) WITH FUNCTION stamp(int) AS ASSIGNMENT; \
         CREATE TABLE stamps (s stamped)",
    )
    .unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let direct = direct(&pg).await;
    let calls = "SELECT count(*) FROM calls";
    for read in [
        "SELECT id::logged_int FROM items WHERE id = 1",
        "SELECT (id::wrapped).n FROM items WHERE id = 1",
        "SELECT (CAST(id AS wrapped)).n FROM items WHERE id = 1",
        // (The user's ~~, which LIKE calls.)
        "SELECT id FROM items WHERE id = 1 AND ROW(id)::tagged LIKE 'x'",
        // A domain over one, and one whose check calls it through an operator.
        "SELECT id::relogged_int FROM items WHERE id = 1",
        "SELECT id::op_logged_int FROM items WHERE id = 1",
    ] {
        let before: i64 = value(&direct, calls).await.parse().unwrap();
        for _ in 0..2 {
            assert_eq!(value(&client, read).await, "1", "{read}");
        }
        let after: i64 = value(&direct, calls).await.parse().unwrap();
        assert_eq!(after - before, 2, "{read} was served from the cache");
    }
    let read = "SELECT v FROM items WHERE id = 2";
    // (The second: a write to a table with a column of such a domain may write what
    // its check does.)
    for statement in [
        "SELECT 1 ##> 2",
        "INSERT INTO bumping VALUES (1)",
        // (Arrays and composite types of one too, and a default calling one through
        // an operator.)
        "INSERT INTO bumping_many VALUES ('{1}')",
        "INSERT INTO bumping_pairs VALUES (ROW(1, 2))",
        "INSERT INTO bumped_default (k) VALUES (1)",
        // (An assignment cast's.)
        "INSERT INTO stamps VALUES (1)",
    ] {
        cached_then_written(&client, read, statement, "by the operator").await;
    }
    // A stable one: not cached, but no write (what was cached stays).
    let hits = counter(&cache_row(&proxy).await, "hits");
    for _ in 0..2 {
        let stable = "SELECT v FROM items WHERE id = 1 AND 1 #? 2";
        assert_eq!(value(&client, stable).await, "a");
    }
    assert_eq!(value(&client, read).await, "by the operator");
    assert_eq!(counter(&cache_row(&proxy).await, "hits"), hits + 1);
}

/// Functions PostgreSQL calls for what a statement does, not for what it names: a
/// domain check filling a row from JSON, an operator class's comparison for ORDER BY,
/// an implicit cast, a check calling a built-in that is not immutable (`nextval`), a
/// view converting to a checked domain, a user aggregate named as a built-in, a query
/// `ts_stat` runs, and an operator's negator the planner puts in its place. Each runs
/// on every read (here each logs a row, or moves a sequence): none is served from the
/// cache. (An exploratory test found every one served from it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_postgresql_makes_unnamed_are_not_skipped() {
    let (pg, proxy) = setup_with(|c| {
        let more = ["rows_of", "pairs", "boxes", "logged_view"];
        c.tables.extend(more.map(String::from));
    })
    .await;
    pg.psql(
        "CREATE TABLE calls (what text); \
         CREATE FUNCTION logged(w text) RETURNS boolean LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO calls VALUES (w); RETURN true; END $$; \
         CREATE DOMAIN logged_text AS text CHECK (logged(VALUE)); \
         CREATE TABLE rows_of (id int, c logged_text); INSERT INTO rows_of VALUES (1, 'a'); \
         CREATE TYPE pair AS (v int); \
         CREATE FUNCTION pair_cmp(a pair, b pair) RETURNS int LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM logged('cmp'); RETURN CASE WHEN a.v < b.v THEN -1 \
              WHEN a.v > b.v THEN 1 ELSE 0 END; END $$; \
         CREATE FUNCTION pair_lt(a pair, b pair) RETURNS boolean LANGUAGE sql IMMUTABLE \
           AS 'SELECT a.v < b.v'; \
         CREATE FUNCTION pair_le(a pair, b pair) RETURNS boolean LANGUAGE sql IMMUTABLE \
           AS 'SELECT a.v <= b.v'; \
         CREATE FUNCTION pair_eq(a pair, b pair) RETURNS boolean LANGUAGE sql IMMUTABLE \
           AS 'SELECT a.v = b.v'; \
         CREATE FUNCTION pair_ge(a pair, b pair) RETURNS boolean LANGUAGE sql IMMUTABLE \
           AS 'SELECT a.v >= b.v'; \
         CREATE FUNCTION pair_gt(a pair, b pair) RETURNS boolean LANGUAGE sql IMMUTABLE \
           AS 'SELECT a.v > b.v'; \
         CREATE OPERATOR < (LEFTARG = pair, RIGHTARG = pair, FUNCTION = pair_lt); \
         CREATE OPERATOR <= (LEFTARG = pair, RIGHTARG = pair, FUNCTION = pair_le); \
         CREATE OPERATOR = (LEFTARG = pair, RIGHTARG = pair, FUNCTION = pair_eq); \
         CREATE OPERATOR >= (LEFTARG = pair, RIGHTARG = pair, FUNCTION = pair_ge); \
         CREATE OPERATOR > (LEFTARG = pair, RIGHTARG = pair, FUNCTION = pair_gt); \
         CREATE OPERATOR CLASS pair_ops DEFAULT FOR TYPE pair USING btree AS \
           OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >, \
           FUNCTION 1 pair_cmp(pair, pair); \
         CREATE TABLE pairs (id int, p pair); \
         INSERT INTO pairs VALUES (1, ROW(2)), (2, ROW(1)); \
         CREATE TYPE boxed AS (v int); \
         CREATE FUNCTION unbox(b boxed) RETURNS int LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM logged('unbox'); RETURN b.v; END $$; \
         CREATE CAST (boxed AS int) WITH FUNCTION unbox(boxed) AS IMPLICIT; \
         CREATE TABLE boxes (id int, b boxed); INSERT INTO boxes VALUES (1, ROW(1)); \
         CREATE SEQUENCE checks; \
         CREATE DOMAIN counted AS bigint CHECK (nextval('checks') > 0); \
         CREATE VIEW logged_view AS SELECT id, 'x'::logged_text AS c FROM items; \
         CREATE FUNCTION pair_max(s pair, p pair) RETURNS pair LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM logged('max'); RETURN p; END $$; \
         CREATE AGGREGATE max(pair) (SFUNC = pair_max, STYPE = pair); \
         CREATE FUNCTION ne_logged(a int, b int) RETURNS boolean LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM logged('ne'); RETURN a <> b; END $$; \
         CREATE FUNCTION eq_plain(a int, b int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE \
           AS $$ BEGIN RETURN a = b; END $$; \
         CREATE OPERATOR !== (LEFTARG = int, RIGHTARG = int, FUNCTION = ne_logged); \
         CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = eq_plain, \
           NEGATOR = !==)",
    )
    .unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let direct = direct(&pg).await;
    let logged = "SELECT count(*) FROM calls";
    let checks = "SELECT last_value FROM checks";
    for (read, counter) in [
        (
            "SELECT (jsonb_populate_record(r, '{\"c\": \"q\"}')).id FROM rows_of r",
            logged,
        ),
        ("SELECT id FROM pairs ORDER BY p LIMIT 1", logged),
        ("SELECT b + 1 FROM boxes", logged),
        ("SELECT id, 5::counted FROM items WHERE id = 1", checks),
        ("SELECT id, c FROM logged_view WHERE id = 1", logged),
        ("SELECT max(p) FROM pairs", logged),
        (
            "SELECT count(*) FROM items, ts_stat('SELECT to_tsvector(''a'') \
             WHERE logged(''ts'')') s",
            logged,
        ),
        ("SELECT id FROM items WHERE NOT (id === 1)", logged),
    ] {
        let mut seen = Vec::new();
        for _ in 0..3 {
            value(&client, read).await;
            seen.push(value(&direct, counter).await);
        }
        seen.dedup();
        assert_eq!(seen.len(), 3, "{read} was served from the cache: {seen:?}");
    }
}

/// A write to a table whose column default (or check) calls a user function may
/// write anything that function writes: the cache takes it as a write to everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_calling_a_user_function_invalidates_what_it_may_write() {
    let (pg, proxy) = setup().await;
    pg.psql(
        "CREATE FUNCTION bump() RETURNS int LANGUAGE sql AS \
           $$ UPDATE items SET v = 'bumped' WHERE id = 2 RETURNING 1 $$; \
         CREATE TABLE kd (k int, v int DEFAULT bump()); \
         CREATE FUNCTION checked(int) RETURNS bool LANGUAGE sql AS \
           $$ UPDATE items SET v = 'checked' WHERE id = 1 RETURNING true $$; \
         CREATE TABLE kc (k int CHECK (checked(k)))",
    )
    .unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    for (id, before, write, after) in [
        (2, "b", "INSERT INTO kd (k) VALUES (1)", "bumped"),
        (1, "a", "INSERT INTO kc VALUES (1)", "checked"),
    ] {
        let read = format!("SELECT v FROM items WHERE id = {id}");
        for _ in 0..2 {
            assert_eq!(value(&client, &read).await, before);
        }
        client.batch_execute(write).await.unwrap();
        assert_eq!(value(&client, &read).await, after, "{write}");
    }
}

/// A function of the user's with a built-in's name (`length(int)`, which PostgreSQL's
/// own lacks) is the user's, called as it is: its result is not cached, so it runs each
/// time (here, a write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_function_named_as_a_built_in_is_not_cached() {
    let (pg, proxy) = setup().await;
    pg.psql(
        "CREATE TABLE calls (n int); INSERT INTO calls VALUES (0); \
         CREATE FUNCTION public.length(int) RETURNS int LANGUAGE sql AS \
           $$ UPDATE calls SET n = n + 1 RETURNING n $$",
    )
    .unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    for want in ["1", "2", "3"] {
        assert_eq!(
            value(&client, "SELECT length(id) FROM items WHERE id = 1").await,
            want
        );
    }
    // The built-in itself, named so, still is.
    let read = "SELECT pg_catalog.length(v) FROM items WHERE id = 1";
    for _ in 0..2 {
        assert_eq!(value(&client, read).await, "1");
    }
    assert!(counter(&cache_row(&proxy).await, "hits") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_served_from_the_cache_until_a_write_through_pgopt() {
    let (pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&client, read).await, "a");
    pg.psql("UPDATE items SET v = 'behind' WHERE id = 1")
        .unwrap();
    assert_eq!(value(&client, read).await, "a", "served from the cache");
    assert_eq!(value(&other, read).await, "a", "another session shares it");
    let stats = cache_row(&proxy).await;
    assert_eq!(counter(&stats, "hits"), 2, "{stats:?}");
    assert_eq!(counter(&stats, "misses"), 1, "{stats:?}");
    assert_eq!(counter(&stats, "stored"), 1, "{stats:?}");
    assert!(
        counter(&stats, "hit_p99_us") >= counter(&stats, "hit_p50_us"),
        "{stats:?}"
    );
    let addr = proxy.admin_addr().unwrap();
    let api = common::http_get(addr, "/api/cache").await;
    assert!(api.contains("\"hits\":2"), "{api}");
    let metrics = common::http_get(addr, "/metrics").await;
    assert!(metrics.contains("pgopt_cache_hits_total 2"), "{metrics}");

    // A write to another row of the table, through pgopt: the table's entries end
    // before the writer hears its ReadyForQuery.
    other
        .simple_query("UPDATE items SET v = 'through' WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(value(&client, read).await, "behind");

    // Extended-protocol writes invalidate too, prepared ones at every run.
    let update = other
        .prepare("UPDATE items SET v = $1 WHERE id = 1")
        .await
        .unwrap();
    for v in ["x1", "x2"] {
        other.execute(&update, &[&v]).await.unwrap();
        assert_eq!(value(&client, read).await, v);
    }

    // Not cached: a table not listed, a join with one, volatile functions, locking.
    for (sql, change) in [
        ("SELECT v FROM unlisted", "UPDATE unlisted SET v = v || '+'"),
        (
            "SELECT u.v FROM items i JOIN unlisted u ON true WHERE i.id = 1",
            "UPDATE unlisted SET v = v || '+'",
        ),
        (
            "SELECT v FROM items WHERE id = 1 FOR SHARE",
            "UPDATE items SET v = v || '+' WHERE id = 1",
        ),
    ] {
        let before = value(&client, sql).await;
        pg.psql(change).unwrap();
        assert_ne!(value(&client, sql).await, before, "{sql} is not cached");
    }
    let random = "SELECT random()::text FROM items WHERE id = 1";
    assert_ne!(value(&client, random).await, value(&client, random).await);
    let now = "SELECT clock_timestamp()::text FROM items WHERE id = 1";
    assert_ne!(value(&client, now).await, value(&client, now).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_see_their_writes_and_others_see_them_at_commit() {
    let (_pg, proxy) = setup().await;
    let writer = connect(&proxy, "postgres", None).await.unwrap();
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&reader, read).await, "a");

    writer
        .simple_query("BEGIN; UPDATE items SET v = 'tx' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&writer, read).await, "tx", "its own write, inside");
    assert_eq!(value(&reader, read).await, "a", "not committed yet");
    writer.simple_query("COMMIT").await.unwrap();
    assert_eq!(value(&reader, read).await, "tx", "seen right after COMMIT");

    // Transaction control, locking reads and SET write nothing: entries stay.
    let hits = counter(&cache_row(&proxy).await, "hits");
    writer
        .simple_query(
            "BEGIN; SELECT v FROM unlisted FOR UPDATE; SET LOCAL work_mem = '8MB'; COMMIT",
        )
        .await
        .unwrap();
    assert_eq!(value(&reader, read).await, "tx");
    assert_eq!(counter(&cache_row(&proxy).await, "hits"), hits + 1);

    // Writes the text doesn't name: DO blocks, user functions.
    writer
        .simple_query("DO $$ BEGIN UPDATE items SET v = 'do' WHERE id = 1; END $$")
        .await
        .unwrap();
    assert_eq!(value(&reader, read).await, "do");
    writer.simple_query("SELECT set_v('fn')").await.unwrap();
    assert_eq!(value(&reader, read).await, "fn");

    // A rolled-back write leaves what is served right.
    writer
        .simple_query("BEGIN; UPDATE items SET v = 'gone' WHERE id = 1; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(value(&reader, read).await, "fn");
    assert_eq!(value(&reader, read).await, "fn");
}

/// A write through pgopt (`UPDATE items SET v = 'late' WHERE id = 1`) waiting for
/// the row lock a direct session holds, and its client gone: the locker's client, in
/// its open transaction.
async fn a_departed_write_waiting_for_a_lock(pg: &Postgres, proxy: &Proxy) -> Client {
    // A direct session holds the row, so the write through pgopt waits for it.
    let locker = direct(pg).await;
    locker
        .simple_query("BEGIN; SELECT * FROM items WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    let (writer, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.local_addr().port())
        .user("postgres")
        .dbname("app")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(conn);
    let write = tokio::spawn(async move {
        let _ = writer
            .simple_query("UPDATE items SET v = 'late' WHERE id = 1")
            .await;
    });
    // Until the write waits for the lock (asked outside the locker's transaction,
    // whose view of pg_stat_activity is a snapshot taken once).
    let watcher = direct(pg).await;
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE items%'";
    let never = "the write never waited for the lock";
    eventually(&watcher, waiting, "1", Duration::from_secs(10), never).await;
    // The writer goes away mid-statement; PostgreSQL still runs it.
    connection.abort();
    write.abort();
    locker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_still_running_when_its_client_leaves_invalidates_when_it_commits() {
    let (pg, proxy) = setup().await;
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&reader, read).await, "a");
    let locker = a_departed_write_waiting_for_a_lock(&pg, &proxy).await;
    // PostgreSQL still runs it to its commit.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(value(&reader, read).await, "a", "not committed yet");
    locker.simple_query("COMMIT").await.unwrap();
    let committed = "the write never committed";
    eventually(&locker, read, "late", Duration::from_secs(5), committed).await;
    // Invalidated once the server answered the departed client's statement.
    let kept = "the cache kept the value the departed write replaced";
    eventually(&reader, read, "late", Duration::from_secs(2), kept).await;
}

/// A departed client's write still running after `departed_write_timeout` is
/// canceled: it can't commit after pgopt has stopped waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_write_running_too_long_is_canceled() {
    let (pg, proxy) = setup_with(|c| {
        c.departed_write_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&reader, read).await, "a");
    let locker = a_departed_write_waiting_for_a_lock(&pg, &proxy).await;
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'UPDATE items%' AND state = 'active'";
    let canceled = "the departed write was never canceled";
    eventually(&reader, waiting, "0", Duration::from_secs(10), canceled).await;
    locker.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        value(&locker, read).await,
        "a",
        "the canceled write committed"
    );
    assert_eq!(value(&reader, read).await, "a");
}

/// A client that sends COMMIT through Execute and leaves before any Sync: PostgreSQL
/// commits all the same, here a second late (a deferred trigger sleeps), and the
/// invalidation waits for it instead of coming first (a read in between would store
/// the old row for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_without_sync_from_a_departed_client_invalidates_when_it_lands() {
    let (pg, proxy) = setup().await;
    pg.psql(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow AFTER UPDATE ON items DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION slow_commit();",
    )
    .unwrap();
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&reader, read).await, "a");
    drop(common::commit_without_sync(&proxy, "late").await);
    // Reads through pgopt while the COMMIT runs, until it is visible directly.
    let server = direct(&pg).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while value(&server, read).await != "late" {
        assert!(
            std::time::Instant::now() < deadline,
            "the COMMIT never landed"
        );
        value(&reader, read).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let kept = "the cache kept the row the departed client's COMMIT replaced";
    eventually(&reader, read, "late", Duration::from_secs(2), kept).await;
}

/// A COMMIT ends its writes' entries when it completes, not at the ReadyForQuery
/// after it: here an Execute of COMMIT answered through a Flush, the client still
/// there and no Sync yet (PostgreSQL has committed; others must read the new row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_invalidates_when_it_completes_before_any_sync() {
    use tokio::io::AsyncWriteExt;
    let (_pg, proxy) = setup().await;
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&reader, read).await, "a");
    assert_eq!(value(&reader, read).await, "a");
    let mut raw = common::commit_without_sync(&proxy, "new").await;
    assert_eq!(common::read_until(&mut raw, b'C').await, b"12C");
    assert_eq!(
        value(&reader, read).await,
        "new",
        "served the row the COMMIT replaced"
    );
    raw.write_all(&common::message(b'S', b"")).await.unwrap();
    assert_eq!(common::read_until(&mut raw, b'Z').await, b"Z");
    assert!(counter(&cache_row(&proxy).await, "hits") >= 1);
}

/// Statements sent with Parse, Bind, Execute and Flush but no Sync run in an implicit
/// transaction that the next Sync or simple query ends. A cached read then is not
/// answered by pgopt alone (the connection stays with the client until then): the
/// server would never see the message that commits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_read_after_an_unsynced_batch_still_commits_it() {
    use tokio::io::AsyncWriteExt;
    let (pg, proxy) = setup().await;
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&reader, read).await, "a");
    assert_eq!(value(&reader, read).await, "a");
    let mut raw = common::raw_login(&proxy).await;
    let insert = common::run_unnamed("INSERT INTO unlisted VALUES ('w')", b'H');
    raw.write_all(&insert).await.unwrap();
    assert_eq!(common::read_until(&mut raw, b'C').await, b"12C");
    // PostgreSQL runs this query in the same implicit transaction and commits both.
    let hits = counter(&cache_row(&proxy).await, "hits");
    let mut query = format!("{read}\0").into_bytes();
    query = common::message(b'Q', &query);
    raw.write_all(&query).await.unwrap();
    assert_eq!(common::read_until(&mut raw, b'Z').await, b"TDCZ");
    // It went to the server, which committed the batch with it.
    assert_eq!(counter(&cache_row(&proxy).await, "hits"), hits);
    let watcher = direct(&pg).await;
    let written = "SELECT count(*) FROM unlisted WHERE v = 'w'";
    assert_eq!(
        value(&watcher, written).await,
        "1",
        "the insert is committed"
    );
    drop(raw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(value(&watcher, written).await, "1", "and stays so");
}

/// An extended-protocol read whose batch arrives in pieces (a long query over a
/// network comes in several segments) is looked up once it is all here; before, the
/// first piece went to the server and the read past the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_arrives_in_pieces_is_cached_as_a_whole() {
    use tokio::io::AsyncWriteExt;
    let (_pg, proxy) = setup().await;
    let mut raw = common::raw_login(&proxy).await;
    let batch = common::run_unnamed("SELECT v FROM items WHERE id = 1", b'S');
    // The Parse and part of the Bind (13 bytes, before an Execute of 10 and a Sync of
    // 5), then the rest.
    let cut = batch.len() - 20;
    let hits = counter(&cache_row(&proxy).await, "hits");
    for _ in 0..2 {
        raw.write_all(&batch[..cut]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        raw.write_all(&batch[cut..]).await.unwrap();
        assert_eq!(common::read_until(&mut raw, b'Z').await, b"12DCZ");
    }
    assert_eq!(counter(&cache_row(&proxy).await, "hits"), hits + 1);
    // A COPY is not held back: the server answers its Execute at once, before the
    // Sync (its client may wait for that before it sends the data).
    let copy = common::run_unnamed("COPY items FROM STDIN", b'S');
    raw.write_all(&copy[..copy.len() - 5]).await.unwrap();
    let answered = common::read_until(&mut raw, b'G');
    let answered = tokio::time::timeout(Duration::from_secs(5), answered).await;
    assert!(answered.is_ok(), "the COPY's Execute waited for its Sync");
}

/// A statement a client described before a schema change through pgopt (its table
/// gained a column) gets PostgreSQL's "cached plan must not change result type", not
/// rows in the new shape: not from a fill, nor from another client's entry in the new
/// shape (before, both gave it three columns where it was told two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_described_before_a_schema_change_gets_no_rows_of_the_new_shape() {
    let (_pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let sql = "SELECT * FROM items WHERE id = $1";
    let st = client.prepare(sql).await.unwrap();
    for _ in 0..2 {
        assert_eq!(client.query_one(&st, &[&1i32]).await.unwrap().len(), 2);
    }
    let other = connect(&proxy, "postgres", None).await.unwrap();
    other
        .batch_execute("ALTER TABLE items ADD COLUMN z int DEFAULT 7")
        .await
        .unwrap();
    let e = client.query(&st, &[&1i32]).await.unwrap_err();
    assert_eq!(common::code(&e), Some("0A000"), "{e}");
    // Another client's statement of the same text, in the new shape, fills the entry.
    let fresh = other.prepare(sql).await.unwrap();
    for _ in 0..2 {
        assert_eq!(other.query_one(&fresh, &[&1i32]).await.unwrap().len(), 3);
    }
    let e = client.query(&st, &[&1i32]).await.unwrap_err();
    assert_eq!(common::code(&e), Some("0A000"), "{e}");
}

/// An unsynced batch that pgopt itself commits (with a Sync, before answering the
/// client's DEALLOCATE of its own statement) invalidates what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_pgopt_commits_for_its_own_answer_invalidates_what_it_wrote() {
    use tokio::io::AsyncWriteExt;
    let (_pg, proxy) = setup().await;
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&reader, read).await, "a");
    assert_eq!(value(&reader, read).await, "a");
    let mut raw = common::raw_login(&proxy).await;
    common::prepare_s1(&mut raw).await;
    let update = common::run_unnamed("UPDATE items SET v = 'new' WHERE id = 1", b'H');
    raw.write_all(&update).await.unwrap();
    assert_eq!(common::read_until(&mut raw, b'C').await, b"12C");
    raw.write_all(&common::message(b'Q', b"DEALLOCATE s1\0"))
        .await
        .unwrap();
    assert_eq!(common::read_until(&mut raw, b'Z').await, b"CZ");
    assert_eq!(
        value(&reader, read).await,
        "new",
        "served the row the committed batch replaced"
    );
}

/// A client that leaves in the middle of COPY FROM STDIN: its server connection is
/// closed at once (the COPY rolls back), not kept for the minute pgopt waits for a
/// departed client's statement to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_copy_gets_its_copy_rolled_back_at_once() {
    use tokio::io::AsyncWriteExt;
    let (pg, proxy) = setup().await;
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT count(*) FROM items";
    assert_eq!(value(&reader, read).await, "2");
    let mut raw = common::raw_login(&proxy).await;
    raw.write_all(&common::message(b'Q', b"COPY items FROM STDIN\0"))
        .await
        .unwrap();
    assert_eq!(common::read_until(&mut raw, b'G').await, b"G");
    raw.write_all(&common::message(b'd', b"3\tc\n"))
        .await
        .unwrap();
    drop(raw);
    let watcher = direct(&pg).await;
    let copying = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY items%'";
    let still = "the departed client's COPY still runs";
    eventually(&watcher, copying, "0", Duration::from_secs(5), still).await;
    assert_eq!(value(&watcher, read).await, "2", "the COPY rolled back");
    assert_eq!(value(&reader, read).await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ddl_change_what_is_served() {
    let (_pg, proxy) = setup().await;
    let utc = connect(&proxy, "postgres", None).await.unwrap();
    let tokyo = connect(&proxy, "postgres", None).await.unwrap();
    utc.simple_query("SET TimeZone = 'UTC'").await.unwrap();
    tokyo
        .simple_query("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let read = "SELECT at::text FROM events WHERE id = 1";
    for _ in 0..2 {
        assert_eq!(value(&utc, read).await, "2024-01-01 00:00:00+00");
        assert_eq!(value(&tokyo, read).await, "2024-01-01 09:00:00+09");
    }

    // A new column changes the row shape of SELECT *.
    let star = "SELECT * FROM items WHERE id = 1";
    assert_eq!(row(&utc, star).await.len(), 2);
    assert_eq!(row(&utc, star).await.len(), 2);
    utc.simple_query("ALTER TABLE items ADD COLUMN w int DEFAULT 7")
        .await
        .unwrap();
    assert_eq!(row(&utc, star).await, ["1", "a", "7"]);
    utc.simple_query("TRUNCATE items").await.unwrap();
    let n = "SELECT count(*) FROM items";
    assert_eq!(value(&utc, n).await, "0");
}

/// Clients that differ only in settings no result depends on (`application_name`,
/// timeouts) share entries; one that reads such a setting is not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_no_result_depends_on_are_not_in_the_key() {
    let (_pg, proxy) = setup().await;
    let client = async |app: &str| {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(proxy.local_addr().port())
            .user("postgres")
            .dbname("app")
            .application_name(app)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    };
    let (psql, app) = (client("psql").await, client("app").await);
    let read = "SELECT v FROM items WHERE id = 1";
    // (A read right after pgopt set a reported setting on the connection, the
    // ParameterStatus relayed among its reply, is not stored: psql reads till a hit.)
    for _ in 0..3 {
        assert_eq!(value(&psql, read).await, "a");
    }
    let before = counter(&cache_row(&proxy).await, "hits");
    assert!(before >= 1);
    assert_eq!(value(&app, read).await, "a");
    assert_eq!(counter(&cache_row(&proxy).await, "hits"), before + 1);
    let name = "SELECT current_setting('application_name') FROM items WHERE id = 1";
    for _ in 0..2 {
        assert_eq!(value(&psql, name).await, "psql");
        assert_eq!(value(&app, name).await, "app");
    }
    // A setting results do depend on still parts them.
    app.batch_execute("SET extra_float_digits = 1")
        .await
        .unwrap();
    let float = "SELECT (id / 3.0)::float8::text FROM items WHERE id = 1";
    for _ in 0..3 {
        value(&psql, float).await;
    }
    let before = counter(&cache_row(&proxy).await, "hits");
    value(&app, float).await;
    assert_eq!(counter(&cache_row(&proxy).await, "hits"), before);
}

/// A tenant's schema a function sets (`search_path`, which PostgreSQL does not report)
/// is in its caller's key: the tenant never gets the default schema's rows from the
/// cache, nor another client the tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_a_function_sets_is_in_the_callers_key() {
    let (pg, proxy) = setup().await;
    pg.psql(
        "CREATE SCHEMA tenant_1; \
         CREATE TABLE tenant_1.items (id int PRIMARY KEY, v text); \
         INSERT INTO tenant_1.items VALUES (1, 'tenant'); \
         CREATE FUNCTION enter(t text) RETURNS void LANGUAGE plpgsql AS \
           $$BEGIN EXECUTE format('SET search_path = %I, public', t); END$$",
    )
    .unwrap();
    let tenant = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    for _ in 0..2 {
        assert_eq!(value(&other, read).await, "a");
    }
    tenant
        .simple_query("SELECT enter('tenant_1')")
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(value(&tenant, read).await, "tenant");
        assert_eq!(value(&other, read).await, "a");
    }
    let stats = cache_row(&proxy).await;
    assert!(counter(&stats, "hits") >= 3, "{stats:?}");
}

/// Whether item 1's read and the events' read are still served from the cache after
/// `ops` ran one by one through `client` (`!` before one that must fail), both
/// changed behind pgopt's back before them.
async fn kept_after(pg: &Postgres, client: &Client, ops: &[&str]) -> (bool, bool) {
    let (items, events) = ("SELECT v FROM items WHERE id = 1", "SELECT id FROM events");
    let before = (value(client, items).await, value(client, events).await);
    pg.psql("UPDATE items SET v = v || '+' WHERE id = 1; UPDATE events SET id = id + 1")
        .unwrap();
    for op in ops {
        match op.strip_prefix('!') {
            Some(op) => assert!(client.simple_query(op).await.is_err(), "{op}"),
            None => {
                client
                    .simple_query(op)
                    .await
                    .unwrap_or_else(|e| panic!("{op}: {e:?}"));
            }
        }
    }
    (
        value(client, items).await == before.0,
        value(client, events).await == before.1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_of_an_sql_prepared_statement_invalidates_what_it_writes() {
    // Transaction mode, as pg_dump runs: PREPARE and EXECUTE in a block. A read
    // executed ends nothing; a write ends its own table's entries only.
    let (pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = [
        "BEGIN",
        "PREPARE r(int) AS SELECT v FROM items WHERE id = $1",
        "EXECUTE r(1)",
        "COMMIT",
    ];
    assert_eq!(kept_after(&pg, &client, &read).await, (true, true));
    let write = [
        "BEGIN",
        "PREPARE w AS UPDATE events SET id = id",
        "EXECUTE w",
        "COMMIT",
    ];
    assert_eq!(kept_after(&pg, &client, &write).await, (true, false));
    // An argument that may write: anything.
    let nextval = [
        "BEGIN",
        "PREPARE r(bigint) AS SELECT v FROM items WHERE id = $1",
        "EXECUTE r(nextval('s') * 0)",
        "COMMIT",
    ];
    assert_eq!(kept_after(&pg, &client, &nextval).await, (false, false));

    // A DEALLOCATE that failed (in a failed subtransaction), and a PREPARE of the name
    // again that failed for it: w still writes events.
    let ops = [
        "BEGIN",
        "PREPARE w AS UPDATE events SET id = id",
        "SAVEPOINT a",
        "!SELECT 1/0",
        "!DEALLOCATE w",
        "ROLLBACK TO a",
        "SAVEPOINT b",
        "!PREPARE w AS SELECT v FROM items",
        "ROLLBACK TO b",
        "EXECUTE w",
        "COMMIT",
    ];
    assert_eq!(kept_after(&pg, &client, &ops).await, (true, false));
    // A user function's writes are unknown.
    let ops = [
        "BEGIN",
        "PREPARE f AS SELECT set_v('f')",
        "EXECUTE f",
        "COMMIT",
    ];
    assert_eq!(kept_after(&pg, &client, &ops).await, (false, false));
    // EXECUTE inside another statement: what it runs, the text does not say.
    let ops = [
        "BEGIN",
        "PREPARE w AS UPDATE events SET id = id",
        "EXPLAIN ANALYZE EXECUTE w",
        "COMMIT",
    ];
    assert_eq!(kept_after(&pg, &client, &ops).await, (false, false));
    // Each block's statements are deallocated at its end: names are learnt afresh.
    assert_eq!(kept_after(&pg, &client, &read).await, (true, true));
    let ops = [
        "BEGIN",
        "PREPARE w AS SELECT v FROM items",
        "EXECUTE w",
        "COMMIT",
    ];
    assert_eq!(kept_after(&pg, &client, &ops).await, (true, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_in_session_mode_of_a_statement_a_parse_named_writes_anything() {
    // A session-mode user's writes end the entries transaction-mode readers are
    // served. EXECUTE runs statements prepared through the protocol too (their names
    // are the client's in session mode), which no PREPARE told pgopt about.
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a');
         CREATE TABLE events (id int, at timestamptz);
         INSERT INTO events VALUES (1, now());
         CREATE ROLE sess LOGIN; GRANT ALL ON items, events TO sess;",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into(), "events".into()],
            ..CacheSettings::default()
        };
        let mut sess = pgopt_proxy::User::new("sess", "unused");
        sess.pool_mode = Some(PoolMode::Session);
        c.users = vec![sess];
    })
    .await;
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let writer = connect(&proxy, "sess", None).await.unwrap();
    let _update = writer.prepare("UPDATE events SET id = id").await.unwrap();
    let name = value(
        &writer,
        "SELECT name FROM pg_prepared_statements WHERE statement LIKE 'UPDATE%'",
    )
    .await;
    let read = "SELECT id FROM events";
    let before = value(&reader, read).await;
    pg.psql("UPDATE events SET id = id + 1").unwrap();
    assert_eq!(value(&reader, read).await, before, "served from the cache");
    // The name is taken: this PREPARE fails, and its EXECUTE runs the UPDATE.
    let prepare = format!("PREPARE {name} AS SELECT v FROM items");
    assert!(writer.simple_query(&prepare).await.is_err());
    writer
        .simple_query(&format!("EXECUTE {name}"))
        .await
        .unwrap();
    assert_ne!(
        value(&reader, read).await,
        before,
        "the EXECUTE's write ended it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_through_pgopt_ends_no_entry() {
    // It reads the catalog with helpers such as acldefault(), sets its settings with
    // set_config(), and PREPAREs and EXECUTEs its queries: nothing it runs writes.
    let (pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let (items, events) = ("SELECT v FROM items WHERE id = 1", "SELECT id FROM events");
    let before = (value(&client, items).await, value(&client, events).await);
    pg.psql("UPDATE items SET v = 'behind' WHERE id = 1; UPDATE events SET id = 9")
        .unwrap();
    let mut dump = std::process::Command::new(pg.binaries().program("pg_dump"));
    dump.args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-f",
        "/dev/null",
        "app",
    ])
    .args(["-p", &proxy.local_addr().port().to_string()]);
    tokio::task::spawn_blocking(move || run(&mut dump))
        .await
        .unwrap();
    assert_eq!(value(&client, items).await, before.0);
    assert_eq!(value(&client, events).await, before.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_ins_that_change_no_table_invalidate_nothing() {
    // Advisory locks (job queues take one per job), sequences (an ORM's id before each
    // INSERT), settings and notifications change no rows a read could be served.
    let (pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let ops = [
        "BEGIN",
        "SELECT pg_advisory_xact_lock(7)",
        "SELECT nextval('s')",
        "SELECT set_config('application_name', 'x', true)",
        "SELECT pg_notify('c', 'x')",
        "COMMIT",
    ];
    assert_eq!(kept_after(&pg, &client, &ops).await, (true, true));
    assert_eq!(
        kept_after(
            &pg,
            &client,
            &["SELECT nextval('s'), pg_try_advisory_xact_lock(1)"]
        )
        .await,
        (true, true)
    );
    // …since a sequence is never cached, not even opted in by a hint.
    let last = "/* pgopt:cache ttl=60s */ SELECT last_value FROM s";
    for _ in 0..3 {
        let before = value(&client, last).await;
        value(&client, "SELECT nextval('s')").await;
        assert_ne!(value(&client, last).await, before);
    }
    // A user function may write anything.
    assert_eq!(
        kept_after(&pg, &client, &["SELECT set_v('f')"]).await,
        (false, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_trip_and_flush_ends_entries() {
    let (pg, proxy) = setup().await;
    pg.psql("INSERT INTO items SELECT g, 'v' FROM generate_series(3, 200000) g")
        .unwrap();
    // Slow enough that every client asks while the first one's fill runs.
    let slow = "SELECT count(*) FROM items a JOIN items b USING (id) WHERE a.v >= b.v";
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&proxy, "postgres", None).await.unwrap());
    }
    // The first cacheable query reads the catalog; the rest find it read.
    value(&clients[0], "SELECT count(*) FROM items WHERE id = 0").await;
    let answers = futures_util::future::join_all(clients.iter().map(|c| value(c, slow))).await;
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    let stats = cache_row(&proxy).await;
    assert_eq!(counter(&stats, "misses"), 2, "one trip: {stats:?}");
    assert_eq!(counter(&stats, "hits"), 5, "{stats:?}");

    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&clients[0], read).await, "a");
    pg.psql("UPDATE items SET v = 'behind' WHERE id = 1")
        .unwrap();
    assert_eq!(value(&clients[0], read).await, "a");
    let console = admin(&proxy).await;
    console.simple_query("CACHE FLUSH items").await.unwrap();
    assert_eq!(value(&clients[0], read).await, "behind");
    pg.psql("UPDATE items SET v = 'again' WHERE id = 1")
        .unwrap();
    console.simple_query("CACHE FLUSH").await.unwrap();
    assert_eq!(value(&clients[0], read).await, "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_cascades_partitions_and_triggers_invalidate_what_they_reach() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int, parent_id int REFERENCES parent ON DELETE CASCADE);
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (10, 1);
         CREATE VIEW child_view AS SELECT id FROM child;
         CREATE TABLE measures (at date, v int) PARTITION BY RANGE (at);
         CREATE TABLE measures_2024 PARTITION OF measures FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         INSERT INTO measures VALUES ('2024-05-01', 1);
         CREATE TABLE audited (v int); CREATE TABLE audit (n int); INSERT INTO audit VALUES (0);
         CREATE UNLOGGED TABLE scratch (v text); INSERT INTO scratch VALUES ('x');
         CREATE TABLE secret (v text); INSERT INTO secret VALUES ('s');
         ALTER TABLE secret ENABLE ROW LEVEL SECURITY;
         CREATE FUNCTION count_audit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN UPDATE audit SET n = n + 1; RETURN NEW; END $$;
         CREATE TRIGGER audited_count AFTER INSERT ON audited FOR EACH ROW EXECUTE FUNCTION count_audit();",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: [
                "child",
                "child_view",
                "measures",
                "measures_2024",
                "audit",
                "secret",
                "scratch",
            ]
            .map(String::from)
            .to_vec(),
            ..CacheSettings::default()
        };
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let reads = [
        ("SELECT count(*) FROM child", "1", "0"),
        ("SELECT count(*) FROM child_view", "1", "0"),
        ("SELECT sum(v) FROM measures", "1", "3"),
        ("SELECT sum(v) FROM measures_2024", "1", "3"),
        ("SELECT n FROM audit", "0", "1"),
    ];
    for (sql, before, _) in reads {
        assert_eq!(value(&client, sql).await, before, "{sql}");
        assert_eq!(value(&client, sql).await, before, "{sql}");
    }
    let stats = cache_row(&proxy).await;
    assert_eq!(counter(&stats, "hits"), 5, "each read cached: {stats:?}");

    // Writes that reach the cached tables only through the catalog: a cascade, a
    // partition written through its parent and its parent through the partition, a
    // trigger.
    for write in [
        "DELETE FROM parent WHERE id = 1",
        "UPDATE measures SET v = 2",
        "UPDATE measures_2024 SET v = 3",
        "INSERT INTO audited VALUES (1)",
    ] {
        client.simple_query(write).await.unwrap();
    }
    for (sql, _, after) in reads {
        assert_eq!(value(&client, sql).await, after, "{sql} after the writes");
    }

    // Row-level security: rows differ per role and policies may read other tables.
    let secret = "SELECT v FROM secret";
    assert_eq!(value(&client, secret).await, "s");
    pg.psql("UPDATE secret SET v = 's2'").unwrap();
    assert_eq!(value(&client, secret).await, "s2", "not cached");
    // Unlogged tables: their writes never reach the replication stream.
    let scratch = "SELECT v FROM scratch";
    assert_eq!(value(&client, scratch).await, "x");
    pg.psql("UPDATE scratch SET v = 'y'").unwrap();
    assert_eq!(value(&client, scratch).await, "y", "not cached");

    // A view created through pgopt: the catalog is read again before it is cached.
    client
        .simple_query("CREATE VIEW parent_view AS SELECT count(*) FROM parent")
        .await
        .unwrap();
    assert_eq!(value(&client, "SELECT count(*) FROM child").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_reads_are_cached_per_statement_and_values() {
    let (pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    // A named statement run with Bind/Execute/Sync (binary results).
    let stmt = client
        .prepare("SELECT v FROM items WHERE id = $1")
        .await
        .unwrap();
    let get = |id: i32| {
        let (client, stmt) = (&client, stmt.clone());
        async move {
            let row = client.query_one(&stmt, &[&id]).await.unwrap();
            row.get::<_, String>(0)
        }
    };
    // The unnamed statement in one batch: Parse/Bind/Describe statement/Execute/Sync.
    let typed = || async {
        let rows = client
            .query_typed(
                "SELECT v FROM items WHERE id = $1",
                &[(&1i32, tokio_postgres::types::Type::INT4)],
            )
            .await
            .unwrap();
        rows[0].get::<_, String>(0)
    };
    assert_eq!(get(1).await, "a");
    assert_eq!(get(2).await, "b");
    assert_eq!(typed().await, "a");
    pg.psql("UPDATE items SET v = v || '!'").unwrap();
    assert_eq!(get(1).await, "a", "cached per value");
    assert_eq!(get(2).await, "b", "cached per value");
    assert_eq!(typed().await, "a", "cached");
    let stats = cache_row(&proxy).await;
    assert_eq!(counter(&stats, "hits"), 3, "{stats:?}");

    // A write through pgopt ends them all.
    client
        .execute("UPDATE items SET v = 'w' WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(get(1).await, "w");
    assert_eq!(get(2).await, "b!");
    assert_eq!(typed().await, "w");
    // Statements prepared meanwhile keep working on any server connection.
    let other = client.prepare("SELECT count(*) FROM items").await.unwrap();
    let n: i64 = client.query_one(&other, &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_are_stored_up_to_the_size_limit_and_passed_through_past_it() {
    // A row of 200 kB (held whole, as the cache may store it) and one of 2 MB (past
    // max_result_bytes: passed to the client as it arrives, and not stored), in
    // both protocols: every read gets the whole value.
    let (pg, proxy) = setup_with(|c| c.max_result_bytes = 1 << 20).await;
    pg.psql(
        "INSERT INTO items SELECT 10, string_agg(chr(97 + i % 26), '' ORDER BY i) FROM generate_series(1, 200000) i;
         INSERT INTO items SELECT 11, string_agg(chr(97 + i % 23), '' ORDER BY i) FROM generate_series(1, 2000000) i;",
    )
    .unwrap();
    let want = |len: usize, modulus: usize| -> String {
        (1..=len)
            .map(|i| (b'a' + (i % modulus) as u8) as char)
            .collect()
    };
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    // The catalog read first (no entry, no count): while one session reads it, the
    // others' reads go past the cache, and `other`'s first read could be that one.
    assert_eq!(value(&other, "SELECT 7").await, "7");
    for (id, len, modulus) in [(10, 200_000, 26), (11, 2_000_000, 23)] {
        let sql = format!("SELECT v FROM items WHERE id = {id}");
        let expected = want(len, modulus);
        // (Kept: a statement dropped is closed in a batch of its own, which may come
        // with the next query, then not looked up.)
        let stmt = client.prepare(&sql).await.unwrap();
        for _ in 0..2 {
            // Beside another client's reads on the same pool.
            let reads = async {
                let simple = value(&client, &sql).await;
                let extended: String = client.query_one(&stmt, &[]).await.unwrap().get(0);
                (simple, extended)
            };
            let ((simple, extended), seven) = tokio::join!(reads, other.query_one("SELECT 7", &[]));
            assert!(simple == expected, "simple protocol, id {id}");
            assert!(extended == expected, "extended protocol, id {id}");
            assert_eq!(seven.unwrap().get::<_, i32>(0), 7);
        }
    }
    let stats = cache_row(&proxy).await;
    // The 200 kB row stored once per protocol and hit once each; the 2 MB one never.
    assert_eq!(counter(&stats, "stored"), 2, "{stats:?}");
    assert_eq!(counter(&stats, "hits"), 2, "{stats:?}");
    // The connections are whole: the next reads are right.
    assert_eq!(
        value(&client, "SELECT v FROM items WHERE id = 1").await,
        "a"
    );
    assert_eq!(value(&other, "SELECT v FROM items WHERE id = 2").await, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_reads_hit_the_cache_in_every_protocol_mode() {
    let pg = Postgres::start().await.unwrap();
    pgbench_init(&pg);
    let proxy = start_with(&pg, |c| {
        c.default_pool_size = 4;
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["pgbench_accounts".into()],
            ..CacheSettings::default()
        };
    })
    .await;
    // The first cacheable query reads the catalog; meanwhile others go past the cache.
    let client = connect(&proxy, "postgres", None).await.unwrap();
    value(
        &client,
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
    )
    .await;
    let dir = tempfile_dir();
    let script = dir.join("hot.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 20)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n",
    )
    .unwrap();
    let pgbench = pg.binaries().program("pgbench");
    let port = proxy.local_addr().port().to_string();
    let mut hits = 0;
    for mode in ["simple", "extended", "prepared"] {
        let out = run(std::process::Command::new(&pgbench).args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-t",
            "200",
            "-M",
            mode,
            "-f",
            script.to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "app",
        ]));
        assert!(
            out.contains("number of transactions actually processed: 800/800"),
            "{mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
        let now = counter(&cache_row(&proxy).await, "hits");
        assert!(now > hits + 600, "{mode}: hits went from {hits} to {now}");
        hits = now;
    }
    std::fs::remove_dir_all(dir).ok();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgopt-cache-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Many clients, random reads and writes of counters that only grow: a read that
/// returns less than a value whose commit had been acknowledged before the read was
/// sent is a stale read. Writes come in autocommit, in transactions, rolled back, and
/// over both protocols; reads over both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_randomized_checker_finds_no_stale_read() {
    let pg = checker_db().await;
    let proxy = checker_proxy(&pg, None).await;
    check_for_stale_reads(&[&proxy]).await;
}

/// The checker through two instances sharing a Redis: writes through either, reads
/// through either (and from Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_randomized_checker_through_two_instances_sharing_redis_finds_no_stale_read() {
    let pg = checker_db().await;
    let redis = pgopt_embedded::Redis::start().await.unwrap();
    let a = checker_proxy(&pg, Some(&redis)).await;
    let b = checker_proxy(&pg, Some(&redis)).await;
    check_for_stale_reads(&[&a, &b]).await;
    let stats = cache_row(&b).await;
    assert!(counter(&stats, "l2_hits") > 0, "{stats:?}");
    assert_eq!(counter(&stats, "bus_flushes"), 0, "{stats:?}");
}

async fn checker_db() -> Postgres {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE counters (k int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(0, 15) g;",
    )
    .unwrap();
    pg
}

async fn checker_proxy(pg: &Postgres, redis: Option<&pgopt_embedded::Redis>) -> Proxy {
    let proxy = start_with(pg, |c| {
        c.default_pool_size = 6;
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["counters".into()],
            redis: redis.map(|r| pgopt_proxy::RedisConfig {
                url: r.url(),
                timeout: std::time::Duration::from_millis(500),
                ..pgopt_proxy::RedisConfig::default()
            }),
            ..CacheSettings::default()
        };
    })
    .await;
    if redis.is_some() {
        wait_for_cache(&proxy, "Redis up", |r| r["redis"] == "up").await;
    }
    proxy
}

/// Writers increment random counters (simple, prepared, in a transaction, rolled
/// back) and record each committed value; readers check every read is at least the
/// value committed before it began. Clients are spread over `proxies`.
async fn check_for_stale_reads(proxies: &[&Proxy]) {
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;

    const KEYS: usize = 16;
    let floor: Arc<Vec<AtomicI64>> = Arc::new((0..KEYS).map(|_| AtomicI64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let (stale, reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for w in 0..3u64 {
        let proxy = proxies[w as usize % proxies.len()];
        let client = connect(proxy, "postgres", None).await.unwrap();
        let (floor, stop) = (floor.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let update = client
                .prepare("UPDATE counters SET v = v + 1 WHERE k = $1 RETURNING v")
                .await
                .unwrap();
            let mut n = w;
            while !stop.load(SeqCst) {
                let (k, n) = step(&mut n, KEYS);
                let committed = match (n >> 20) % 4 {
                    0 => {
                        let sql =
                            format!("UPDATE counters SET v = v + 1 WHERE k = {k} RETURNING v");
                        Some(simple_value(&client, &sql).await)
                    }
                    1 => Some(
                        client
                            .query_one(&update, &[&k])
                            .await
                            .unwrap()
                            .get::<_, i64>(0),
                    ),
                    2 => {
                        let sql = format!(
                            "BEGIN; UPDATE counters SET v = v + 1 WHERE k = {k}; \
                             SELECT v FROM counters WHERE k = {k}"
                        );
                        let v = simple_value(&client, &sql).await;
                        client.simple_query("COMMIT").await.unwrap();
                        Some(v)
                    }
                    _ => {
                        let sql = format!(
                            "BEGIN; UPDATE counters SET v = v + 1000 WHERE k = {k}; ROLLBACK"
                        );
                        client.simple_query(&sql).await.unwrap();
                        None
                    }
                };
                if let Some(v) = committed {
                    floor[k as usize].fetch_max(v, SeqCst);
                }
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
        }));
    }
    for r in 0..4u64 {
        let proxy = proxies[(r as usize + 1) % proxies.len()];
        let client = connect(proxy, "postgres", None).await.unwrap();
        let (floor, stop, stale, reads) =
            (floor.clone(), stop.clone(), stale.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let read = client
                .prepare("SELECT v FROM counters WHERE k = $1")
                .await
                .unwrap();
            let mut n = 1000 + r;
            while !stop.load(SeqCst) {
                let (k, n) = step(&mut n, KEYS);
                let before = floor[k as usize].load(SeqCst);
                let v = if (n >> 20) % 2 == 0 {
                    let sql = format!("SELECT v FROM counters WHERE k = {k}");
                    simple_value(&client, &sql).await
                } else {
                    client
                        .query_one(&read, &[&k])
                        .await
                        .unwrap()
                        .get::<_, i64>(0)
                };
                reads.fetch_add(1, SeqCst);
                if v < before {
                    stale.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    // At least 3 s, and until the cache has served enough to judge (up to 30 s).
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let mut hits = 0;
        for proxy in proxies {
            hits += counter(&cache_row(proxy).await, "hits");
        }
        let elapsed = started.elapsed();
        if (elapsed.as_secs() >= 3 && hits > 100) || elapsed.as_secs() >= 30 {
            break;
        }
    }
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let mut stats = Vec::new();
    for proxy in proxies {
        stats.push(cache_row(proxy).await);
    }
    assert_eq!(
        stale.load(SeqCst),
        0,
        "stale reads out of {}: {stats:?}",
        reads.load(SeqCst)
    );
    let hits: u64 = stats.iter().map(|s| counter(s, "hits")).sum();
    assert!(hits > 100, "the cache served reads: {stats:?}");
}

/// The next draw of a small LCG: a key below `keys`, and bits for other choices.
fn step(state: &mut u64, keys: usize) -> (i32, u64) {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (((*state >> 33) % keys as u64) as i32, *state)
}

/// The first column of the last row of a simple query, as a number.
async fn simple_value(client: &Client, sql: &str) -> i64 {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
            _ => None,
        })
        .last()
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_bypass_pgopt_invalidate_through_the_replication_stream() {
    let pg = logical_postgres().await;
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a');
         CREATE TABLE audit (id int PRIMARY KEY, n int); INSERT INTO audit VALUES (1, 0);
         CREATE FUNCTION count_item() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN UPDATE audit SET n = n + 1; RETURN NEW; END $$;
         CREATE TRIGGER items_count AFTER UPDATE ON items FOR EACH ROW EXECUTE FUNCTION count_item();",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into(), "audit".into()],
            wal_listener: true,
            ..CacheSettings::default()
        };
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cache_row(&proxy).await["wal"] != "streaming" {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            cache_row(&proxy).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let (read, audit) = ("SELECT v FROM items WHERE id = 1", "SELECT n FROM audit");
    assert_eq!(value(&client, read).await, "a");
    assert_eq!(value(&client, audit).await, "0");
    assert_eq!(value(&client, read).await, "a", "cached");
    // Directly on PostgreSQL: the stream tells pgopt, trigger's write included.
    pg.psql("UPDATE items SET v = 'direct' WHERE id = 1")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while value(&client, read).await != "direct" || value(&client, audit).await != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the bypassing write was never seen: {:?}",
            cache_row(&proxy).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let stats = cache_row(&proxy).await;
    assert!(counter(&stats, "wal_commits") >= 1, "{stats:?}");
    assert!(!stats["wal_p99_ms"].is_empty(), "{stats:?}");
    // The same staleness as a Prometheus histogram, with pgopt's time on a hit.
    let metrics = common::http_get(proxy.admin_addr().unwrap(), "/metrics").await;
    let sample = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
    };
    assert!(sample("pgopt_cache_wal_staleness_seconds_count") >= 1);
    assert_eq!(
        sample("pgopt_cache_wal_staleness_seconds_bucket{le=\"+Inf\"}"),
        sample("pgopt_cache_wal_staleness_seconds_count")
    );
    assert!(metrics.contains("pgopt_cache_wal_staleness_seconds_bucket{le=\"0.1\"}"));
    assert!(sample("pgopt_cache_hit_seconds_count") >= 1, "{metrics}");
    assert!(metrics.contains("pgopt_cache_hit_seconds_bucket{le=\"0.00005\"}"));
    // Per table, the stream's invalidations are told apart from pgopt's own.
    let rows = table_rows(&proxy).await;
    for table in ["items", "audit"] {
        assert!(counter(&rows[table], "wal_invalidations") >= 1, "{rows:?}");
        assert_eq!(counter(&rows[table], "local_invalidations"), 0, "{rows:?}");
    }
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A stopped process, continued when dropped (a test that fails must not leave the
/// server unable to shut down).
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// A stream that falls further behind than `cache.wal_max_lag` — here its walsender is
/// stopped, as a server busy decoding a bulk load would hold it — stops the cache: a
/// write that bypasses pgopt meanwhile is read from PostgreSQL once the lag is seen,
/// never the old value from the cache for longer; a stream that stays silent is
/// started again, and the cache serves again (checklist #60: lag over a threshold
/// fails closed, with an alert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_further_behind_than_wal_max_lag_stops_the_cache_and_a_silent_one_starts_again() {
    let pg = logical_postgres().await;
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a');",
    )
    .unwrap();
    let max_lag = Duration::from_secs(1);
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            wal_listener: true,
            wal_max_lag: max_lag,
            ..CacheSettings::default()
        };
    })
    .await;
    // Streaming, and the stream timed by a probe that came back.
    wait_for_cache(&proxy, "timed", |r| {
        r["wal"] == "streaming" && !r["wal_lag_ms"].is_empty()
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&client, read).await, "a");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counter(&cache_row(&proxy).await, "hits") == 0 {
        assert!(std::time::Instant::now() < deadline, "never served");
        assert_eq!(value(&client, read).await, "a");
    }

    let direct = direct(&pg).await;
    let walsender: i32 = direct
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    signal(walsender, "STOP");
    let stopped = Stopped(walsender);
    direct
        .execute("UPDATE items SET v = 'direct' WHERE id = 1", &[])
        .await
        .unwrap();
    let written = std::time::Instant::now();
    // The stream never tells of the write; the lag does, within wal_max_lag and a
    // probe's interval (a quarter of it), give or take a poll.
    while value(&client, read).await != "direct" {
        assert!(
            written.elapsed() < max_lag * 3,
            "the old value was served past wal_max_lag: {:?}",
            cache_row(&proxy).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = cache_row(&proxy).await;
    assert!(stats["wal"].starts_with("lagging"), "{stats:?}");
    assert_eq!(counter(&stats, "wal_lag_stops"), 1, "{stats:?}");
    // (The oldest probe still out was sent a probe interval after the last one back.)
    assert!(
        counter(&stats, "wal_lag_ms") >= max_lag.as_millis() as u64 / 2,
        "{stats:?}"
    );
    // Nothing served nor stored while it lags.
    let hits = counter(&stats, "hits");
    for _ in 0..3 {
        assert_eq!(value(&client, read).await, "direct");
    }
    assert_eq!(counter(&cache_row(&proxy).await, "hits"), hits);
    let metrics = common::http_get(proxy.admin_addr().unwrap(), "/metrics").await;
    assert!(
        metrics.contains("\npgopt_cache_wal_lag_stops_total 1\n"),
        "{metrics}"
    );

    // Silent for three times wal_max_lag (at least 5 s), the stream looks stuck: it
    // starts again on a walsender of its own, while the old one stays stopped.
    let gaps = counter(&stats, "wal_gap_flushes");
    wait_for_cache(&proxy, "a new stream", |r| {
        r["wal"] == "streaming" && counter(r, "wal_gap_flushes") > gaps
    })
    .await;
    drop(stopped);
    assert_eq!(value(&client, read).await, "direct");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counter(&cache_row(&proxy).await, "hits") == hits {
        assert!(std::time::Instant::now() < deadline, "never served again");
        assert_eq!(value(&client, read).await, "direct");
    }
}

/// `sql`'s one value through a new client of `proxy`, retried (for up to 20 s) until
/// it is `want`: after a failover the pool's first tries may meet the old primary.
async fn once_reconnected(proxy: &Proxy, sql: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(client) = connect(proxy, "postgres", None).await {
            if let Ok(messages) = client.simple_query(sql).await {
                let row = messages.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(row),
                    _ => None,
                });
                if let Some(row) = row {
                    last = row.get(0).unwrap_or("NULL").to_string();
                    if last == want {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{sql} never gave {want:?} (last {last:?}): {:?}",
        cache_row(proxy).await
    );
}

/// `sql`'s value read twice through a new client of `proxy`, and whether that served
/// a hit.
async fn served(proxy: &Proxy, sql: &str) -> (String, bool) {
    let hits = counter(&cache_row(proxy).await, "hits");
    let client = connect(proxy, "postgres", None).await.unwrap();
    let first = value(&client, sql).await;
    assert_eq!(value(&client, sql).await, first);
    (first, counter(&cache_row(proxy).await, "hits") > hits)
}

/// A failover (checklist #61): the primary stops and its streaming replica is
/// promoted. The listener re-attaches to the new primary (the database's next host,
/// `read_write`), everything cached before ends (commits in the gap went unheard), and
/// writes on the new primary that bypass pgopt invalidate through the new stream: its
/// new timeline confuses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_listener_follows_the_promoted_primary() {
    let mut primary = logical_postgres().await;
    primary
        .psql(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items VALUES (1, 'a');",
        )
        .unwrap();
    let standby = Postgres::start_replica(&primary).await.unwrap();
    let proxy = start_with(&primary, |c| {
        c.databases[0].more_hosts =
            pgopt_proxy::MoreHosts::new(vec![("127.0.0.1".into(), standby.port())], false)
                .with_read_write(true);
        c.cache = listening_on_items();
    })
    .await;
    wait_for_cache(&proxy, "streaming", |r| r["wal"] == "streaming").await;
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(served(&proxy, read).await, ("a".to_string(), true));
    let gaps = counter(&cache_row(&proxy).await, "wal_gap_flushes");

    primary.stop();
    standby.psql("SELECT pg_promote()").unwrap();
    // Written on the new primary before pgopt's stream is back on it.
    standby
        .psql("UPDATE items SET v = 'promoted' WHERE id = 1")
        .unwrap();
    wait_for_cache(&proxy, "streaming from the new primary", |r| {
        r["wal"] == "streaming" && counter(r, "wal_gap_flushes") > gaps
    })
    .await;
    once_reconnected(&proxy, read, "promoted").await;
    assert_eq!(served(&proxy, read).await, ("promoted".to_string(), true));
    // The new stream carries the new primary's commits.
    standby
        .psql("UPDATE items SET v = 'direct' WHERE id = 1")
        .unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while value(&client, read).await != "direct" {
        assert!(
            std::time::Instant::now() < deadline,
            "a write on the new primary was never seen: {:?}",
            cache_row(&proxy).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served(&proxy, read).await, ("direct".to_string(), true));
}

/// Checklist #32: this database subscribes to a publication on another server. Rows
/// the subscription applies (written on the publisher, never through pgopt) are
/// commits on this server like any other: the listener's stream carries them and
/// what they change is read afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_subscription_applies_invalidate_through_the_stream() {
    let publisher = logical_postgres().await;
    publisher
        .psql(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items VALUES (1, 'a');
             CREATE PUBLICATION upstream FOR TABLE items;",
        )
        .unwrap();
    let pg = logical_postgres().await;
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .unwrap();
    // (Not in a transaction block: a statement of its own.)
    pg.psql(&format!(
        "CREATE SUBSCRIPTION downstream CONNECTION 'host=127.0.0.1 port={} dbname=postgres user=postgres{}' PUBLICATION upstream",
        publisher.port(),
        publisher
            .password()
            .map(|p| format!(" password={p}"))
            .unwrap_or_default()
    ))
    .unwrap();
    let here = direct(&pg).await;
    eventually(
        &here,
        "SELECT count(*)::text FROM items",
        "1",
        Duration::from_secs(20),
        "the initial copy",
    )
    .await;
    let proxy = start_with(&pg, |c| {
        c.cache = listening_on_items();
    })
    .await;
    wait_for_cache(&proxy, "streaming", |r| r["wal"] == "streaming").await;
    assert_eq!(served(&proxy, READ).await, ("a".to_string(), true));
    publisher
        .psql("UPDATE items SET v = 'published' WHERE id = 1")
        .unwrap();
    let client = connect(&proxy, "postgres", None).await.unwrap();
    eventually(
        &client,
        READ,
        "published",
        Duration::from_secs(10),
        "the subscription's write, through pgopt",
    )
    .await;
    assert_eq!(served(&proxy, READ).await, ("published".to_string(), true));
}

/// Checklist #20: a COMMIT through pgopt held on the server (a deferred constraint
/// trigger sleeps a second) while another client keeps reading — and filling — the
/// row it changes. Until the commit is visible the old row is right; from the moment
/// the writer hears its COMMIT ended, every read has the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_filled_during_a_held_commit_are_never_served_once_it_ends() {
    let (pg, proxy) = setup().await;
    pg.psql(
        "CREATE FUNCTION held() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER held AFTER UPDATE ON items
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION held();",
    )
    .unwrap();
    let writer = connect(&proxy, "postgres", None).await.unwrap();
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(value(&reader, READ).await, "a");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let reads = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            let at = std::time::Instant::now();
            seen.push((at, value(&reader, READ).await));
        }
        seen
    });
    writer
        .batch_execute("BEGIN; UPDATE items SET v = 'held' WHERE id = 1")
        .await
        .unwrap();
    let committing = std::time::Instant::now();
    writer.batch_execute("COMMIT").await.unwrap();
    let ended = std::time::Instant::now();
    assert!(
        ended - committing >= Duration::from_secs(1),
        "the commit was not held"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reads.await.unwrap();
    let during = seen
        .iter()
        .filter(|(at, _)| *at > committing && *at < ended)
        .count();
    assert!(during > 10, "only {during} reads while the commit was held");
    for (at, v) in &seen {
        if *at > ended {
            assert_eq!(v, "held", "a read after the COMMIT ended");
        }
    }
    let stats = cache_row(&proxy).await;
    assert!(counter(&stats, "hits") > 0, "{stats:?}");
}

/// With the listener on, only databases a listener follows are cached. One that is
/// never cached (a host list that may reach a standby) gets no listener, so its
/// servers being down keeps nothing else from the cache; one a RELOAD moves to another
/// server or database is not cached until a restart (the listener still follows where
/// it was): a write made there directly is read at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_databases_a_listener_follows_are_cached() {
    let pg = logical_postgres().await;
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a');",
    )
    .unwrap();
    let other = pg.create_database("other").await.unwrap();
    other
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items VALUES (1, 'o');",
        )
        .await
        .unwrap();
    // Two ports nothing listens on.
    let dead = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (down, down_too) = (dead(), dead());
    let configure = |c: &mut pgopt_proxy::Config| {
        c.cache = listening_on_items();
        let mut anylist = c.databases[0].clone();
        anylist.name = "anylist".into();
        anylist.port = down;
        anylist.more_hosts =
            pgopt_proxy::MoreHosts::new(vec![("127.0.0.1".into(), down_too)], false);
        c.databases.push(anylist);
    };
    let proxy = start_with(&pg, configure).await;
    wait_for_cache(&proxy, "streaming", |r| r["wal"] == "streaming").await;
    assert_eq!(served(&proxy, READ).await, ("a".to_string(), true));

    let mut moved = common::config_for(&pg, PoolMode::Transaction, 2);
    moved.admin_users = vec!["postgres".into()];
    moved.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    configure(&mut moved);
    moved.databases[0].dbname = "other".into();
    proxy.handle().apply(moved).unwrap();
    assert_eq!(served(&proxy, READ).await, ("o".to_string(), false));
    other
        .batch_execute("UPDATE items SET v = 'direct' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(served(&proxy, READ).await, ("direct".to_string(), false));
}

/// Probes that cannot be written (here the listener's role may not call
/// pg_logical_emit_message) keep the cache off — the stream's lag can't be known — and
/// say why; the stream itself answers, so it is not started again (each start would
/// end every value). Once probes can be written, the cache serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_probes_keep_the_cache_off_without_restarting_a_live_stream() {
    let (pg, proxy) = replication_role_with(
        Some("walreader"),
        Some("walpw"),
        "REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC;",
        |c| c.wal_max_lag = Duration::from_secs(1),
    )
    .await;
    let stats = wal_state(&proxy, |wal| wal.contains("writing probes fails")).await;
    assert!(stats["wal"].contains("permission denied"), "{stats:?}");
    let gaps = counter(&stats, "wal_gap_flushes");
    // Longer than a stuck stream is given (three times wal_max_lag, at least 5 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(served(&proxy, READ).await, ("a".to_string(), false));
    let stats = cache_row(&proxy).await;
    assert!(stats["wal"].starts_with("lagging"), "{stats:?}");
    assert_eq!(
        counter(&stats, "wal_gap_flushes"),
        gaps,
        "restarted: {stats:?}"
    );

    pg.psql("GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO walreader")
        .unwrap();
    wal_state(&proxy, |wal| wal == "streaming").await;
    assert_eq!(served(&proxy, READ).await.0, "a");
    assert_eq!(served(&proxy, READ).await, ("a".to_string(), true));
    assert_eq!(counter(&cache_row(&proxy).await, "wal_gap_flushes"), gaps);
}

/// A database a RELOAD moves keeps no listener on its old servers once its stream
/// ends: here its old database is dropped, and the other database is still served
/// from the cache (a listener retrying there forever held the whole cache off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_databases_listener_stops_instead_of_holding_up_the_others() {
    let pg = logical_postgres().await;
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a');",
    )
    .unwrap();
    for name in ["two", "three"] {
        pg.create_database(name).await.unwrap();
    }
    let configure = |c: &mut pgopt_proxy::Config| {
        c.cache = listening_on_items();
        let mut two = c.databases[0].clone();
        two.name = "app2".into();
        two.dbname = "two".into();
        c.databases.push(two);
    };
    let proxy = start_with(&pg, configure).await;
    wait_for_cache(&proxy, "streaming", |r| {
        r["wal"] == "app: streaming, app2: streaming"
    })
    .await;
    let mut moved = common::config_for(&pg, PoolMode::Transaction, 2);
    moved.admin_users = vec!["postgres".into()];
    moved.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    configure(&mut moved);
    moved.databases[1].dbname = "three".into();
    proxy.handle().apply(moved).unwrap();
    // (Its stream ended first: its temporary slot goes with it, and then the
    // database can go.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _ = pg.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE backend_type = 'walsender' AND datname = 'two'",
        );
        if pg.psql("DROP DATABASE two WITH (FORCE)").is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_cache(&proxy, "app2's listener gone", |r| r["wal"] == "streaming").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !served(&proxy, READ).await.1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            cache_row(&proxy).await
        );
    }
}

/// With the replication listener on, what its publication does not carry is not
/// cached: a write there that bypasses pgopt would never be seen. Here the DBA made the
/// publication for some tables only; one table is published with a row filter, one
/// partitioned table through its root, another with only one of its partitions; a
/// materialized view is never published (a REFRESH is not streamed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_listener_what_its_publication_leaves_out_is_not_cached() {
    let pg = logical_postgres().await;
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         CREATE TABLE other (id int PRIMARY KEY, v text);
         CREATE TABLE filtered (id int PRIMARY KEY, v text);
         CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
         CREATE TABLE half (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE half_1 PARTITION OF half FOR VALUES FROM (0) TO (100);
         CREATE TABLE half_2 PARTITION OF half FOR VALUES FROM (100) TO (200);
         INSERT INTO items VALUES (1, 'a');
         INSERT INTO other VALUES (1, 'a');
         INSERT INTO filtered VALUES (1, 'a');
         INSERT INTO parted VALUES (1, 'a');
         INSERT INTO half VALUES (1, 'a'), (101, 'b');
         CREATE MATERIALIZED VIEW summary AS SELECT v FROM items;
         CREATE PUBLICATION pgopt_cache FOR TABLE items, parted, half_1, filtered WHERE (id > 1)
           WITH (publish_via_partition_root = true);",
    )
    .unwrap();
    let covered = ["items", "parted", "parted_1", "half_1"];
    let left_out = ["other", "filtered", "half", "half_2", "summary"];
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: covered
                .iter()
                .chain(&left_out)
                .map(|t| t.to_string())
                .collect(),
            wal_listener: true,
            ..CacheSettings::default()
        };
    })
    .await;
    wal_state(&proxy, |wal| wal == "streaming").await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let count = |t: &str| format!("SELECT count(*) FROM {t}");
    for t in covered.iter().chain(&left_out) {
        for _ in 0..2 {
            value(&client, &count(t)).await;
        }
    }
    let rows = table_rows(&proxy).await;
    let hits = |t: &str| rows.get(t).map_or(0, |r| counter(r, "hits"));
    for t in covered {
        assert_eq!(hits(t), 1, "{t}: {rows:?}");
    }
    for t in left_out {
        assert_eq!(hits(t), 0, "{t}: {rows:?}");
    }
    // A write the stream does not carry, bypassing pgopt, is read at once.
    pg.psql("INSERT INTO other VALUES (2, 'b'); INSERT INTO half VALUES (102, 'c');")
        .unwrap();
    assert_eq!(value(&client, &count("other")).await, "2");
    assert_eq!(value(&client, &count("half")).await, "3");
}

/// PostgreSQL with wal_level = logical and SCRAM logins over TCP (replication ones
/// too), a cached table `items`, the publication made by the superuser, and a role
/// `walreader` with REPLICATION and its own password `walpw`; a proxy whose
/// listener logs in with `wal_user` / `wal_password`.
async fn replication_role(wal_user: Option<&str>, wal_password: Option<&str>) -> (Postgres, Proxy) {
    replication_role_with(wal_user, wal_password, "", |_| {}).await
}

/// [`replication_role`], with `sql` run after the set-up and the cache's settings
/// changed by `tweak`.
async fn replication_role_with(
    wal_user: Option<&str>,
    wal_password: Option<&str>,
    sql: &str,
    tweak: impl FnOnce(&mut CacheSettings),
) -> (Postgres, Proxy) {
    let pg = Postgres::builder()
        .setting("wal_level", "logical")
        .password("serverpw", pgopt_embedded::HostAuth::ScramSha256)
        .start()
        .await
        .unwrap();
    pg.psql(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a');
         CREATE PUBLICATION pgopt_cache FOR ALL TABLES;
         CREATE ROLE walreader LOGIN REPLICATION PASSWORD 'walpw';
         {sql}"
    ))
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            wal_listener: true,
            wal_user: wal_user.map(str::to_string),
            wal_password: wal_password.map(str::to_string),
            ..CacheSettings::default()
        };
        tweak(&mut c.cache);
    })
    .await;
    (pg, proxy)
}

/// SHOW CACHE once its `wal` column satisfies `done` (within 20 s).
async fn wal_state(proxy: &Proxy, done: impl Fn(&str) -> bool) -> HashMap<String, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stats = cache_row(proxy).await;
        if done(&stats["wal"]) {
            return stats;
        }
        assert!(std::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_role_with_its_own_password_streams_and_invalidates() {
    let (pg, proxy) = replication_role(Some("walreader"), Some("walpw")).await;
    wal_state(&proxy, |wal| wal == "streaming").await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&client, read).await, "a");
    assert_eq!(value(&client, read).await, "a", "cached");
    assert!(counter(&cache_row(&proxy).await, "hits") >= 1);
    // Directly on PostgreSQL: the stream, read as walreader, tells pgopt.
    pg.psql("UPDATE items SET v = 'direct' WHERE id = 1")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while value(&client, read).await != "direct" {
        assert!(
            std::time::Instant::now() < deadline,
            "the bypassing write was never seen: {:?}",
            cache_row(&proxy).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(counter(&cache_row(&proxy).await, "wal_commits") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_wal_password_shows_the_failed_login_and_nothing_is_served_from_cache() {
    // The upstream's own user, whose password would work: wal_password is used
    // instead, and it is wrong.
    let (_pg, proxy) = replication_role(None, Some("wrong")).await;
    let stats = wal_state(&proxy, |wal| wal.starts_with("down: ")).await;
    assert!(
        stats["wal"].contains("password authentication failed"),
        "{stats:?}"
    );
    let stats = reads_skip_the_cache(&proxy).await;
    assert_ne!(stats["wal"], "streaming", "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_databases_nothing_is_served_until_both_replication_streams_run() {
    let logical = logical_postgres().await;
    logical
        .psql("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');")
        .unwrap();
    // wal_level = replica: this database's listener can never stream.
    let plain = Postgres::start().await.unwrap();
    let proxy = start_with(&logical, |c| {
        let mut other = c.databases[0].clone();
        other.name = "other".into();
        other.port = plain.port();
        other.password = plain.password().map(str::to_string);
        c.databases.push(other);
        c.cache = listening_on_items();
    })
    .await;
    // The first database's stream runs (it reports a direct write)…
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while counter(&cache_row(&proxy).await, "wal_commits") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            cache_row(&proxy).await
        );
        logical
            .psql("UPDATE items SET v = 'a' WHERE id = 1")
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // …yet the other's is down, so writes bypassing pgopt there would go unseen.
    let stats = reads_skip_the_cache(&proxy).await;
    // SHOW CACHE tells the two listeners apart.
    assert!(
        stats["wal"].starts_with("app: streaming, other: "),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_fingerprints_and_table_ttls_choose_what_is_cached_and_for_how_long() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a'), (2, 'b');
         CREATE TABLE unlisted (v text);
         INSERT INTO unlisted VALUES ('u');",
    )
    .unwrap();
    let by_fingerprint = "SELECT v FROM unlisted WHERE v <> 'x'";
    let fingerprint = pgopt_sql::analyze(by_fingerprint).unwrap().fingerprint;
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            auto: false,
            fingerprints: vec![fingerprint],
            table_ttl: vec![("unlisted".into(), std::time::Duration::from_millis(300))],
            ..CacheSettings::default()
        };
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let plain = "SELECT v FROM items WHERE id = 1";
    let hinted = "/* pgopt:cache */ SELECT v FROM items WHERE id = 1";
    let short = "/* pgopt:cache ttl=300ms */ SELECT v FROM items WHERE id = 2";
    assert_eq!(value(&client, plain).await, "a");
    assert_eq!(value(&client, hinted).await, "a");
    assert_eq!(value(&client, short).await, "b");
    assert_eq!(value(&client, by_fingerprint).await, "u");
    pg.psql("UPDATE items SET v = v || '2'; UPDATE unlisted SET v = 'u2'")
        .unwrap();
    // Listed but not opted in (auto is off): not cached.
    assert_eq!(value(&client, plain).await, "a2");
    // Opted in by the hint and by the fingerprint: served from the cache.
    assert_eq!(value(&client, hinted).await, "a");
    assert_eq!(value(&client, by_fingerprint).await, "u");
    // The hint's ttl and the table's ttl end their entries long before the default
    // 60 s (the hint's own entry may already be gone: no claim on it here).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while value(&client, short).await != "b2" || value(&client, by_fingerprint).await != "u2" {
        assert!(
            std::time::Instant::now() < deadline,
            "the short TTLs never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        value(&client, hinted).await,
        "a",
        "the default ttl still holds"
    );
    let stats = cache_row(&proxy).await;
    assert!(counter(&stats, "hits") >= 2, "{stats:?}");
}

/// A hint opts a statement in, but never a view whose stored query reads the system
/// catalogs (`pg_class` is pinned: PostgreSQL 15 records no dependency on it), calls a
/// function that is not immutable, or uses CURRENT_DATE or TABLESAMPLE: its result
/// changes with no write pgopt could see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hinted_views_over_catalogs_clocks_and_chance_are_not_cached() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a');
         CREATE VIEW plain_items AS SELECT v FROM items WHERE id = 1;
         CREATE VIEW clock AS SELECT now()::text AS t;
         CREATE VIEW relations AS SELECT count(*)::text AS n FROM pg_class;
         CREATE VIEW activity AS SELECT count(*)::text AS n FROM pg_stat_activity;
         CREATE VIEW today_items AS SELECT v FROM items WHERE id = 1 AND current_date > '2000-01-01';
         CREATE VIEW random_items AS SELECT v FROM items WHERE id = 1 AND random() < 2;
         CREATE VIEW sampled_items AS SELECT v FROM items TABLESAMPLE BERNOULLI (100) WHERE id = 1;
         CREATE VIEW of_a_view AS SELECT t FROM clock;
         CREATE VIEW text_dates AS SELECT v FROM items WHERE id = 1 AND 'today'::text::date > '2000-01-01';
         CREATE VIEW local_times AS SELECT v, '12:00'::time::timetz AS t FROM items WHERE id = 1;",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            auto: false,
            ..CacheSettings::default()
        };
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let hinted = |view: &str| format!("/* pgopt:cache */ SELECT * FROM {view}");
    let views = [
        "clock",
        "relations",
        "today_items",
        "random_items",
        "sampled_items",
        "of_a_view",
        "text_dates",
        "local_times",
    ];
    let mut first = HashMap::new();
    for view in views.iter().chain(&["plain_items", "activity"]) {
        first.insert(*view, value(&client, &hinted(view)).await);
    }
    // Behind pgopt's back: a row changes and a table is created.
    pg.psql("UPDATE items SET v = 'b'; CREATE TABLE another (x int);")
        .unwrap();
    // The hint works: the plain view's result is served from the cache.
    assert_eq!(value(&client, &hinted("plain_items")).await, "a");
    for view in views {
        let again = value(&client, &hinted(view)).await;
        assert_ne!(again, first[view], "{view} was served from the cache");
    }
    let stats = cache_row(&proxy).await;
    assert_eq!(counter(&stats, "stored"), 1, "{stats:?}");
    assert_eq!(counter(&stats, "hits"), 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_ttl_holds_for_reads_of_the_table_through_a_view() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE prices (id int PRIMARY KEY, p int);
         INSERT INTO prices VALUES (1, 10);
         CREATE VIEW price_list AS SELECT id, p FROM prices;",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["price_list".into(), "prices".into()],
            table_ttl: vec![("prices".into(), std::time::Duration::from_millis(300))],
            ..CacheSettings::default()
        };
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT p FROM price_list WHERE id = 1";
    assert_eq!(value(&client, read).await, "10");
    // Behind pgopt's back: the view's entry lives for prices' 300 ms, not the 1 min
    // default.
    pg.psql("UPDATE prices SET p = 20").unwrap();
    assert_eq!(value(&client, read).await, "10", "cached");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while value(&client, read).await != "20" {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            cache_row(&proxy).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_runs_hits_again_and_counts_what_differs() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a');",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            verify_fraction: 1.0,
            ..CacheSettings::default()
        };
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v, id FROM items WHERE id = 1";
    let wait_for = |name: &'static str, at_least: u64| {
        wait_for_cache(&proxy, name, move |r| counter(r, name) >= at_least)
    };
    assert_eq!(value(&client, read).await, "a");
    assert_eq!(value(&client, read).await, "a");
    let row = wait_for("verified", 1).await;
    assert_eq!(counter(&row, "mismatches"), 0, "{row:?}");
    // A write that bypasses pgopt (no replication listener): the hit is stale, and
    // the verifier says so.
    pg.psql("UPDATE items SET v = 'behind' WHERE id = 1")
        .unwrap();
    assert_eq!(value(&client, read).await, "a");
    wait_for("mismatches", 1).await;
    // A LIMIT may legitimately pick other rows on a re-run: other rows prove nothing.
    let limited = "SELECT v FROM items LIMIT 1";
    assert_eq!(value(&client, limited).await, "behind");
    pg.psql("UPDATE items SET v = 'later' WHERE id = 1")
        .unwrap();
    let before = counter(&cache_row(&proxy).await, "inconclusive");
    assert_eq!(value(&client, limited).await, "behind");
    let row = wait_for("inconclusive", before + 1).await;
    assert_eq!(counter(&row, "mismatches"), 1, "{row:?}");

    // Query insight counts the hits as calls of the shape.
    let queries = show(&admin(&proxy).await, "QUERIES").await;
    let shape = queries
        .iter()
        .find(|q| q["query"] == "SELECT v, id FROM items WHERE id = $1")
        .unwrap_or_else(|| panic!("{queries:?}"));
    assert_eq!(shape["calls"], "3", "{shape:?}");
    assert_eq!(shape["cache_hits"], "2", "{shape:?}");
    assert_eq!(shape["rows"], "3", "{shape:?}");

    // The extended protocol (tokio-postgres: a named statement, binary results): its
    // hits are run again too.
    let extended = "SELECT v FROM items WHERE id = $1";
    let get = || async {
        let row = client.query_one(extended, &[&1i32]).await.unwrap();
        row.get::<_, String>(0)
    };
    let verified = counter(&cache_row(&proxy).await, "verified");
    assert_eq!(get().await, "later");
    assert_eq!(get().await, "later");
    let row = wait_for("verified", verified + 1).await;
    assert_eq!(counter(&row, "mismatches"), 1, "{row:?}");
    pg.psql("UPDATE items SET v = 'last' WHERE id = 1").unwrap();
    assert_eq!(get().await, "later");
    wait_for("mismatches", 2).await;
}

/// SHOW CACHE TABLES as (table → row).
async fn table_rows(proxy: &Proxy) -> HashMap<String, HashMap<String, String>> {
    show(&admin(proxy).await, "CACHE TABLES")
        .await
        .into_iter()
        .map(|r| (r["table"].clone(), r))
        .collect()
}

/// A table's figures: hits, misses, stored, not_stored, evictions, expirations,
/// invalidations (local, bus, wal).
fn figures(row: &HashMap<String, String>) -> [u64; 9] {
    [
        "hits",
        "misses",
        "stored",
        "not_stored",
        "evictions",
        "expirations",
        "local_invalidations",
        "bus_invalidations",
        "wal_invalidations",
    ]
    .map(|c| counter(row, c))
}

/// PostgreSQL with tables `alpha`, `beta` and `gamma` (rows 1 and 2), and a proxy
/// caching all three, `gamma` for 300 ms only, in at most `max_bytes`.
async fn three_tables(max_bytes: u64) -> (Postgres, Proxy) {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE alpha (id int PRIMARY KEY, v text);
         CREATE TABLE beta (id int PRIMARY KEY, v text);
         CREATE TABLE gamma (id int PRIMARY KEY, v text);
         INSERT INTO alpha VALUES (1, 'a1'), (2, 'a2');
         INSERT INTO beta VALUES (1, 'b1'), (2, 'b2');
         INSERT INTO gamma VALUES (1, 'g1');",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["alpha".into(), "public.beta".into(), "gamma".into()],
            table_ttl: vec![("gamma".into(), std::time::Duration::from_millis(300))],
            max_bytes,
            ..CacheSettings::default()
        };
    })
    .await;
    (pg, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_table_has_its_hits_misses_fills_expiries_and_invalidations() {
    let (_pg, proxy) = three_tables(64 << 20).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let (a1, a2) = (
        "SELECT v FROM alpha WHERE id = 1",
        "SELECT v FROM alpha WHERE id = 2",
    );
    let b1 = "SELECT v FROM public.beta WHERE id = 1";
    assert_eq!(value(&client, a1).await, "a1"); // miss
    assert_eq!(value(&client, a1).await, "a1"); // hit
    assert_eq!(value(&client, a2).await, "a2"); // miss
    for _ in 0..3 {
        assert_eq!(value(&client, b1).await, "b1"); // miss, hit, hit
    }
    // A write to alpha through pgopt ends alpha's entries, not beta's.
    client
        .simple_query("UPDATE alpha SET v = 'w' WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(value(&client, a1).await, "a1"); // miss
    assert_eq!(value(&client, b1).await, "b1"); // hit
                                                // gamma's entry lives 300 ms, and then counts as expired.
    assert_eq!(value(&client, "SELECT v FROM gamma").await, "g1"); // miss
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rows = loop {
        let rows = table_rows(&proxy).await;
        if counter(&rows["gamma"], "expirations") == 1 {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let mut names: Vec<&String> = rows.keys().collect();
    names.sort();
    assert_eq!(names, ["alpha", "beta", "gamma"], "tables by tag, no `*`");
    assert_eq!(
        figures(&rows["alpha"]),
        [1, 3, 3, 0, 0, 0, 1, 0, 0],
        "{rows:?}"
    );
    assert_eq!(
        figures(&rows["beta"]),
        [3, 1, 1, 0, 0, 0, 0, 0, 0],
        "{rows:?}"
    );
    assert_eq!(
        figures(&rows["gamma"]),
        [0, 1, 1, 0, 0, 1, 0, 0, 0],
        "{rows:?}"
    );
    assert_eq!(rows["alpha"]["invalidations"], "1");
    assert_eq!(rows["alpha"]["hit_ratio"], "0.250");
    assert_eq!(rows["beta"]["hit_ratio"], "0.750");

    let addr = proxy.admin_addr().unwrap();
    let api = common::http_get(addr, "/api/cache").await;
    let (_, body) = api.split_once("\r\n\r\n").unwrap();
    let api: serde_json::Value = serde_json::from_str(body).unwrap();
    let stats = api[0]["table_stats"].as_array().unwrap();
    assert_eq!(api[0]["hits"], 4, "{api}");
    assert_eq!(stats.len(), 3, "{api}");
    assert_eq!(
        stats[0],
        serde_json::json!({
            "table": "alpha", "hits": 1, "misses": 3, "hit_ratio": "0.250", "stored": 3,
            "not_stored": 0, "evictions": 0, "expirations": 0, "invalidations": 1,
            "local_invalidations": 1, "bus_invalidations": 0, "wal_invalidations": 0,
        })
    );
    assert_eq!(stats[1]["table"], "beta");
    assert_eq!(stats[1]["hits"], 3);
    assert_eq!(stats[1]["invalidations"], 0);

    let metrics = common::http_get(addr, "/metrics").await;
    for line in [
        "pgopt_cache_table_hits_total{table=\"alpha\"} 1",
        "pgopt_cache_table_hits_total{table=\"beta\"} 3",
        "pgopt_cache_table_misses_total{table=\"alpha\"} 3",
        "pgopt_cache_table_stored_total{table=\"gamma\"} 1",
        "pgopt_cache_table_expirations_total{table=\"gamma\"} 1",
        "pgopt_cache_table_evictions_total{table=\"alpha\"} 0",
        "pgopt_cache_table_invalidations_total{table=\"alpha\",source=\"local\"} 1",
        "pgopt_cache_table_invalidations_total{table=\"beta\",source=\"local\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }

    // CACHE FLUSH (everything) is an invalidation of every table.
    admin(&proxy)
        .await
        .simple_query("CACHE FLUSH")
        .await
        .unwrap();
    let rows = table_rows(&proxy).await;
    for (table, n) in [("alpha", "2"), ("beta", "1"), ("gamma", "1")] {
        assert_eq!(rows[table]["local_invalidations"], n, "{rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_dropped_for_space_count_as_evictions_of_their_table() {
    // Room for a few entries only.
    let (_pg, proxy) = three_tables(2_000).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    for i in 0..12 {
        value(&client, &format!("SELECT {i} FROM alpha WHERE id = 1")).await;
    }
    let rows = table_rows(&proxy).await;
    let alpha = &rows["alpha"];
    let totals = cache_row(&proxy).await;
    assert_eq!(counter(alpha, "stored"), 12, "{rows:?}");
    assert!(counter(alpha, "evictions") >= 1, "{rows:?}");
    // Every entry stored is held or was evicted, and every eviction was alpha's.
    assert_eq!(counter(alpha, "evictions"), counter(&totals, "evictions"));
    assert_eq!(
        counter(&totals, "entries") + counter(alpha, "evictions"),
        12,
        "{rows:?} {totals:?}"
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_takes_only_spare_room_under_max_db_connections() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a');
         CREATE ROLE alice LOGIN;",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.max_db_connections = 2;
        c.default_pool_size = 1;
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            verify_fraction: 1.0,
            ..CacheSettings::default()
        };
    })
    .await;
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v, id FROM items WHERE id = 1";
    // The reader's pool holds one connection: the verifier runs on the spare place.
    assert_eq!(value(&reader, read).await, "a");
    assert_eq!(value(&reader, read).await, "a");
    let row = wait_for_cache(&proxy, "verified", |r| counter(r, "verified") >= 1).await;
    // Another user takes the spare place: a hit is still served, and its verifier
    // gives way (no third connection, no wait, nobody's connection closed).
    let holder = connect(&proxy, "alice", None).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(value(&reader, read).await, "a");
    let after = wait_for_cache(&proxy, "the verifier gave way", |r| {
        counter(r, "inconclusive") > counter(&row, "inconclusive")
    })
    .await;
    assert_eq!(counter(&after, "verified"), counter(&row, "verified"));
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_db_connections_the_catalog_read_takes_an_idle_connections_place() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a');",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.max_db_connections = 1;
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            ..CacheSettings::default()
        };
    })
    .await;
    // The login left the pool's connection idle, the only place: the cache's catalog
    // read closes it for itself, so the cache works.
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v, id FROM items WHERE id = 1";
    for _ in 0..3 {
        assert_eq!(value(&reader, read).await, "a");
    }
    let row = cache_row(&proxy).await;
    assert_eq!(counter(&row, "hits"), 2, "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_with_stable_date_and_format_built_ins_are_cached_per_time_zone() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE events (id int PRIMARY KEY, at timestamptz, v text);
         INSERT INTO events VALUES (1, '2026-01-01 23:30:00+00', 'a');
         CREATE VIEW daily AS
           SELECT date_trunc('day', at)::text || ' ' || to_char(at, 'HH24:MI') || ' '
             || format('%s', v) || ' ' || (at::date > '2025-12-31'::date)::text AS d
           FROM events WHERE id = 1 AND at < '2030-01-01'::date;",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            auto: false,
            ..CacheSettings::default()
        };
    })
    .await;
    let read = "/* pgopt:cache */ SELECT d FROM daily";
    let utc = connect(&proxy, "postgres", None).await.unwrap();
    utc.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let first = value(&utc, read).await;
    assert_eq!(first, "2026-01-01 00:00:00+00 23:30 a true");
    // Behind pgopt's back: the row changes; the cached result is served.
    pg.psql("UPDATE events SET v = 'b'").unwrap();
    assert_eq!(value(&utc, read).await, first, "served from the cache");
    // Another time zone is another key (and another day).
    let tokyo = connect(&proxy, "postgres", None).await.unwrap();
    tokyo
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    assert_eq!(
        value(&tokyo, read).await,
        "2026-01-02 00:00:00+09 08:30 b true"
    );
    let stats = cache_row(&proxy).await;
    assert_eq!(counter(&stats, "hits"), 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_and_today_as_input_values_are_never_cached() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE events (id int PRIMARY KEY, at timestamptz);
         INSERT INTO events VALUES (1, now() + interval '2 seconds');",
    )
    .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["events".into()],
            ..CacheSettings::default()
        };
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    // The same shape with a plain date first: its analysis is not the clock word's.
    let dated = "SELECT count(*)::text FROM events WHERE at < '2000-01-01'::timestamptz";
    assert_eq!(value(&client, dated).await, "0");
    let literal = "SELECT count(*)::text FROM events WHERE at < 'now'::timestamptz";
    let bound = "SELECT count(*)::text FROM events WHERE at < $1::text::timestamptz";
    let count_bound = || async {
        let row = client.query_one(bound, &[&"now"]).await.unwrap();
        row.get::<_, String>(0)
    };
    for _ in 0..2 {
        assert_eq!(value(&client, literal).await, "0");
        assert_eq!(count_bound().await, "0");
    }
    // The event's time passes: both read the clock again.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(value(&client, literal).await, "1");
    assert_eq!(count_bound().await, "1");
    let stats = cache_row(&proxy).await;
    assert_eq!(counter(&stats, "hits"), 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ddl_listener_hears_a_trigger_made_behind_pgopts_back() {
    let (pg, proxy) = setup_with(|c| c.ddl_listener = true).await;
    let listening = wait_for_cache(&proxy, "listening for schema changes", |r| {
        r["ddl"] == "listening"
    })
    .await;
    let heard = counter(&listening, "ddl_changes");
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let events = "SELECT count(*) FROM events";
    assert_eq!(value(&client, events).await, "1");

    // Directly on PostgreSQL: from now on an update of items writes events too.
    let db = direct(&pg).await;
    db.batch_execute(
        "CREATE FUNCTION log_item() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO events VALUES (NEW.id, now()); RETURN NEW; END $$;
         CREATE TRIGGER log AFTER UPDATE ON items FOR EACH ROW EXECUTE FUNCTION log_item()",
    )
    .await
    .unwrap();
    // (One notification: PostgreSQL folds a transaction's identical ones together.)
    wait_for_cache(&proxy, "hearing the change", |r| {
        counter(r, "ddl_changes") > heard
    })
    .await;
    // Cached again after the change; a write through pgopt to items now reaches it
    // (without the listener, the dependencies read for the first fill would still be
    // trusted, for up to 30 s, and the second count would be served stale).
    assert_eq!(value(&client, events).await, "1");
    assert_eq!(value(&client, events).await, "1");
    client
        .batch_execute("UPDATE items SET v = 'z' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&client, events).await, "2");
    // A change of what a read returns: the entry from before it is not served.
    let item = "SELECT v FROM items WHERE id = 2";
    assert_eq!(value(&client, item).await, "b");
    assert_eq!(value(&client, item).await, "b");
    let heard = counter(&cache_row(&proxy).await, "ddl_changes");
    db.batch_execute("ALTER TABLE items ALTER COLUMN v TYPE varchar(8) USING upper(v)")
        .await
        .unwrap();
    wait_for_cache(&proxy, "hearing the rewrite", |r| {
        counter(r, "ddl_changes") > heard
    })
    .await;
    assert_eq!(value(&client, item).await, "B");
    // A DROP is heard too (PostgreSQL lists no command for it to the trigger).
    db.batch_execute("CREATE TABLE scratch (x int)")
        .await
        .unwrap();
    let made = wait_for_cache(&proxy, "hearing the CREATE", |r| {
        counter(r, "ddl_changes") > heard + 1
    })
    .await;
    db.batch_execute("DROP TABLE scratch").await.unwrap();
    let dropped = counter(&made, "ddl_changes");
    wait_for_cache(&proxy, "hearing the DROP", |r| {
        counter(r, "ddl_changes") > dropped
    })
    .await;
    // And on /metrics.
    let addr = proxy.admin_addr().unwrap();
    let metrics = common::http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("pgopt_cache_ddl_listeners_up 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("pgopt_cache_ddl_changes_total 0\n"),
        "{metrics}"
    );
    // The function and the event trigger pgopt made are there for the next start, in
    // a schema of its own.
    let made = value(
        &db,
        "SELECT evtfoid::regprocedure::text FROM pg_event_trigger WHERE evtname = 'pgopt_ddl'",
    )
    .await;
    assert_eq!(made, "pgopt.ddl_notify()");
}

#[tokio::test]
async fn the_ddl_listener_refuses_a_schema_another_role_owns() {
    let (pg, proxy) = setup().await;
    drop(proxy);
    // Another role got there first: a function in its schema could be swapped for
    // code that would run as every superuser issuing DDL.
    pg.psql("CREATE ROLE mallory; CREATE SCHEMA pgopt AUTHORIZATION mallory")
        .unwrap();
    let proxy = start_with(&pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            ddl_listener: true,
            ..CacheSettings::default()
        };
    })
    .await;
    let row = wait_for_cache(&proxy, "refusing the schema", |r| {
        r["ddl"].contains("belongs to another role")
    })
    .await;
    assert!(row["ddl"].starts_with("down"), "{row:?}");
    let db = direct(&pg).await;
    let made = value(
        &db,
        "SELECT count(*) FROM pg_event_trigger WHERE evtname = 'pgopt_ddl'",
    )
    .await;
    assert_eq!(made, "0");
}

/// A client whose client_encoding is LATIN1, with text beyond ASCII: never cached, its
/// writes (simple and extended) end the entries they may reach before it hears its
/// ReadyForQuery, and its reads end none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_in_another_encoding_is_not_cached_and_its_writes_invalidate() {
    use common::{message, raw_login, read_until};
    use tokio::io::AsyncWriteExt;
    let (pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    assert_eq!(value(&client, read).await, "a");
    let mut latin1 = raw_login(&proxy).await;
    let mut run = async |body: &[u8], end: u8| {
        latin1.write_all(body).await.unwrap();
        let seen = read_until(&mut latin1, end).await;
        assert!(!seen.contains(&b'E'), "{seen:?}");
    };
    run(&message(b'Q', b"SET client_encoding = 'LATIN1'\0"), b'Z').await;
    // Reads: served by PostgreSQL each time, and the UTF8 client's entry stays.
    let before = cache_row(&proxy).await;
    for _ in 0..2 {
        run(
            &message(b'Q', b"SELECT v, 'caf\xe9' FROM items WHERE id = 1\0"),
            b'Z',
        )
        .await;
    }
    let after = cache_row(&proxy).await;
    assert_eq!(
        counter(&after, "hits"),
        counter(&before, "hits"),
        "{after:?}"
    );
    pg.psql("UPDATE items SET v = 'behind' WHERE id = 1")
        .unwrap();
    assert_eq!(value(&client, read).await, "a", "still cached");
    // Writes: simple, then extended.
    run(
        &message(b'Q', b"UPDATE items SET v = 'caf\xe9' WHERE id = 2\0"),
        b'Z',
    )
    .await;
    assert_eq!(value(&client, read).await, "behind");
    // (Stored again once the catalog, read again after a write pgopt could not
    // read, is in.)
    let stored = counter(&cache_row(&proxy).await, "stored");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counter(&cache_row(&proxy).await, "stored") == stored {
        assert!(std::time::Instant::now() < deadline, "never stored again");
        assert_eq!(value(&client, read).await, "behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.psql("UPDATE items SET v = 'behind again' WHERE id = 1")
        .unwrap();
    assert_eq!(value(&client, read).await, "behind", "cached again");
    run(
        &run_unnamed_latin1(b"UPDATE items SET v = 'd\xe9j\xe0' WHERE id = 2"),
        b'Z',
    )
    .await;
    assert_eq!(value(&client, read).await, "behind again");

    /// `common::run_unnamed` of raw SQL bytes, with a Sync.
    fn run_unnamed_latin1(sql: &[u8]) -> Vec<u8> {
        let mut parse = vec![0];
        parse.extend_from_slice(sql);
        parse.extend_from_slice(b"\0\0\0");
        let mut batch = message(b'P', &parse);
        batch.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        batch.extend(message(b'E', b"\0\0\0\0\0"));
        batch.extend(message(b'S', b""));
        batch
    }
}

/// With `standard_conforming_strings` off a backslash in a `'…'` string escapes the
/// quote after it, which pgopt's parser does not read so: text with one is not cached
/// (`random()` hidden behind `'\'`), and the server's report of the setting is
/// followed (a RESET turns caching back on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_read_otherwise_with_standard_conforming_strings_off_is_not_cached() {
    let (_pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    client
        .batch_execute("SET standard_conforming_strings = off; SET escape_string_warning = off")
        .await
        .unwrap();
    let hidden = "SELECT '\\' , ' AS a, random()::text AS r -- '\nFROM items WHERE id = 1";
    let r = |rows: Vec<String>| rows[1].clone();
    let first = r(row(&client, hidden).await);
    assert_ne!(r(row(&client, hidden).await), first, "random() was cached");
    let plain = "SELECT v FROM items WHERE id = 1";
    let stored = counter(&cache_row(&proxy).await, "stored");
    value(&client, plain).await;
    assert_eq!(
        counter(&cache_row(&proxy).await, "stored"),
        stored + 1,
        "no backslash"
    );
    client
        .batch_execute("RESET standard_conforming_strings")
        .await
        .unwrap();
    let conforming = "SELECT 'a\\' AS a, v FROM items WHERE id = 1";
    value(&client, conforming).await;
    assert_eq!(
        counter(&cache_row(&proxy).await, "stored"),
        stored + 2,
        "on again"
    );
}

/// A text column converted to a date or time reads the clock for 'now' in it: not
/// cached. A timestamp column converted so is (the catalog says which is which).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_column_converted_to_a_time_is_not_cached_a_timestamp_column_is() {
    let (_pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    client
        .batch_execute("UPDATE items SET v = 'now' WHERE id = 2")
        .await
        .unwrap();
    let clock = "SELECT v::timestamptz::text FROM items WHERE id = 2";
    let first = value(&client, clock).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_ne!(value(&client, clock).await, first, "served from the cache");
    let stored = counter(&cache_row(&proxy).await, "stored");
    let day = "SELECT at::date::text, max(at)::date::text FROM events WHERE id = 1 GROUP BY at";
    assert_eq!(value(&client, day).await, "2024-01-01");
    let stored_after = counter(&cache_row(&proxy).await, "stored");
    assert_eq!(
        stored_after,
        stored + 1,
        "a timestamptz column's date is cached"
    );
}

/// A function made directly on PostgreSQL that sets `search_path`: once the schema
/// change listener hears it, a call through pgopt has the setting read back at once
/// (not up to 30 s later), so it follows the caller and not the next client of the
/// server connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ddl_listener_has_a_function_made_behind_pgopts_back_followed_at_once() {
    let pg = Postgres::start().await.unwrap();
    pg.psql("CREATE SCHEMA elsewhere").unwrap();
    let proxy = start_with(&pg, |c| {
        c.default_pool_size = 1;
        c.cache = CacheSettings {
            enabled: true,
            ddl_listener: true,
            ..CacheSettings::default()
        };
    })
    .await;
    let listening = wait_for_cache(&proxy, "listening for schema changes", |r| {
        r["ddl"] == "listening"
    })
    .await;
    let heard = counter(&listening, "ddl_changes");
    let a = connect(&proxy, "postgres", None).await.unwrap();
    let b = connect(&proxy, "postgres", None).await.unwrap();
    let path = "SHOW search_path";
    let before = value(&b, path).await;
    direct(&pg)
        .await
        .batch_execute(
            "CREATE FUNCTION go_elsewhere() RETURNS void LANGUAGE plpgsql AS \
             $$BEGIN SET search_path = elsewhere, public; END$$",
        )
        .await
        .unwrap();
    wait_for_cache(&proxy, "hearing the change", |r| {
        counter(r, "ddl_changes") > heard
    })
    .await;
    a.batch_execute("SELECT go_elsewhere()").await.unwrap();
    assert_eq!(
        value(&b, path).await,
        before,
        "the next client of the connection"
    );
    assert_eq!(value(&a, path).await, "elsewhere, public");
}

/// A change of the server's own defaults (ALTER SYSTEM and a reload, ALTER DATABASE …
/// SET) changes what a client that set nothing reads, as it does on PostgreSQL: entries
/// made under the old defaults are not served (checklist 39).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_the_servers_defaults_changes_what_is_served() {
    let (pg, proxy) = setup().await;
    let read = "SELECT at::text FROM events WHERE id = 1";
    let client = connect(&proxy, "postgres", None).await.unwrap();
    for _ in 0..2 {
        assert_eq!(value(&client, read).await, "2024-01-01 00:00:00+00");
    }
    let hits = counter(&cache_row(&proxy).await, "hits");
    assert!(hits >= 1, "the read was cached");

    // Made directly on PostgreSQL: the pooled connections take it at their next
    // command, and pgopt hears it there.
    pg.psql("ALTER SYSTEM SET TimeZone = 'Asia/Tokyo'").unwrap();
    pg.psql("SELECT pg_reload_conf()").unwrap();
    let watcher = direct(&pg).await;
    let direct_reads = value(&watcher, read).await;
    assert_eq!(direct_reads, "2024-01-01 09:00:00+09");
    let later = connect(&proxy, "postgres", None).await.unwrap();
    let unlisted = "SELECT v FROM unlisted";
    value(&later, unlisted).await; // a command on a pooled connection
    for _ in 0..2 {
        assert_eq!(value(&later, read).await, direct_reads);
        assert_eq!(value(&client, read).await, direct_reads);
    }

    // ALTER DATABASE … SET through pgopt: sessions that begin after it take it, and so
    // do pgopt's pooled connections.
    client
        .batch_execute("ALTER DATABASE postgres SET DateStyle = 'SQL, DMY'")
        .await
        .unwrap();
    let direct_reads = value(&direct(&pg).await, read).await;
    assert_eq!(direct_reads, "01/01/2024 09:00:00 JST");
    let later = connect(&proxy, "postgres", None).await.unwrap();
    for _ in 0..2 {
        assert_eq!(value(&later, read).await, direct_reads);
    }

    // Made directly, then RECONNECT in the admin console (as with PgBouncer): the new
    // connections' defaults are the key's.
    pg.psql("ALTER DATABASE postgres SET IntervalStyle = 'iso_8601'")
        .unwrap();
    let span = "SELECT (at - '2023-12-31'::timestamptz)::text FROM events WHERE id = 1";
    let later = connect(&proxy, "postgres", None).await.unwrap();
    for _ in 0..2 {
        value(&later, span).await;
    }
    admin(&proxy)
        .await
        .batch_execute("RECONNECT")
        .await
        .unwrap();
    let direct_reads = value(&direct(&pg).await, span).await;
    assert_eq!(direct_reads, "P1DT9H");
    let later = connect(&proxy, "postgres", None).await.unwrap();
    for _ in 0..2 {
        assert_eq!(value(&later, span).await, direct_reads);
    }

    // Defaults PostgreSQL does not report (search_path, extra_float_digits,
    // bytea_output), made directly, then RECONNECT: pgopt reads them at each login.
    pg.psql(
        "CREATE SCHEMA elsewhere; CREATE TABLE elsewhere.items (id int, v text);
         INSERT INTO elsewhere.items VALUES (1, 'elsewhere')",
    )
    .unwrap();
    let shaped = "SELECT v || ' ' || (id / 3.0)::float8::text || ' ' || \
                  'ab'::bytea::text FROM items WHERE id = 1";
    let before = value(&direct(&pg).await, shaped).await;
    assert_eq!(before, "a 0.3333333333333333 \\x6162");
    for _ in 0..2 {
        assert_eq!(value(&later, shaped).await, before);
    }
    pg.psql(
        "ALTER DATABASE postgres SET search_path = elsewhere, public;
         ALTER DATABASE postgres SET extra_float_digits = 0;
         ALTER DATABASE postgres SET bytea_output = 'escape'",
    )
    .unwrap();
    admin(&proxy)
        .await
        .batch_execute("RECONNECT")
        .await
        .unwrap();
    let direct_reads = value(&direct(&pg).await, shaped).await;
    assert_eq!(direct_reads, "elsewhere 0.333333333333333 ab");
    let later = connect(&proxy, "postgres", None).await.unwrap();
    for _ in 0..2 {
        assert_eq!(value(&later, shaped).await, direct_reads);
    }
}

/// Defaults of settings PostgreSQL does not report, changed directly: by ALTER SYSTEM
/// and a reload, which pooled connections take at once without a word, or ALTER
/// DATABASE … SET, which sessions opened later take. The next catalog read
/// (`catalog_refresh`, 1 s here) sees them: the pools' connections are replaced, and
/// no entry made under the old ones is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreported_defaults_changed_directly_are_seen_at_the_next_catalog_read() {
    let refresh = std::time::Duration::from_secs(1);
    let (pg, proxy) = setup_with(|c| c.catalog_refresh = refresh).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let shaped = "SELECT v || ' ' || (id / 3.0)::float8::text || ' ' || \
                  'ab'::bytea::text FROM items WHERE id = 1";
    for change in [
        "ALTER SYSTEM SET extra_float_digits = 0",
        "ALTER DATABASE postgres SET bytea_output = 'escape'",
    ] {
        let before = value(&direct(&pg).await, shaped).await;
        for _ in 0..2 {
            assert_eq!(value(&client, shaped).await, before, "{change}");
        }
        pg.psql(change).unwrap();
        pg.psql("SELECT pg_reload_conf()").unwrap();
        let after = value(&direct(&pg).await, shaped).await;
        assert_ne!(after, before, "{change}");
        tokio::time::sleep(refresh + std::time::Duration::from_millis(200)).await;
        for _ in 0..2 {
            assert_eq!(value(&client, shaped).await, after, "{change}");
        }
    }
}

/// Checklist 1: two databases of one proxy, with a table of one name and other rows:
/// the same query text gets each database's rows, cached apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_of_one_proxy_share_no_entries() {
    let (pg, proxy) = setup_with(|_| {}).await;
    drop(proxy);
    pg.psql("CREATE DATABASE db2").unwrap();
    let second = tokio_postgres::connect(&pg.url("db2"), tokio_postgres::NoTls).await;
    let (second, conn) = second.unwrap();
    tokio::spawn(conn);
    second
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'other')")
        .await
        .unwrap();
    let proxy = start_with(&pg, |c| {
        let mut db2 = c.databases[0].clone();
        db2.name = "app2".into();
        db2.dbname = "db2".into();
        c.databases.push(db2);
        c.cache = CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            ..CacheSettings::default()
        };
    })
    .await;
    let port = proxy.local_addr().port();
    let app = common::client_at("127.0.0.1", port, "postgres", "app", None)
        .await
        .unwrap();
    let app2 = common::client_at("127.0.0.1", port, "postgres", "app2", None)
        .await
        .unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    for _ in 0..2 {
        assert_eq!(value(&app, read).await, "a");
        assert_eq!(value(&app2, read).await, "other");
    }
    let stats = cache_row(&proxy).await;
    assert_eq!(counter(&stats, "hits"), 2, "{stats:?}");
}

/// Checklist 4: settings that change a result's text are in the key, per session, and
/// a RESET ALL or DISCARD ALL goes back to the key of the start-up values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_settings_of_each_session_are_in_the_key() {
    let (pg, proxy) = setup().await;
    pg.psql(
        "ALTER TABLE items ADD COLUMN b bytea DEFAULT '\\x01ff', ADD COLUMN f float8 DEFAULT 1 / 3.0,
           ADD COLUMN span interval DEFAULT '1 day 2 hours', ADD COLUMN d date DEFAULT '2024-02-03'",
    )
    .unwrap();
    let read = "SELECT b::text, f::text, span::text, d::text FROM items WHERE id = 1";
    let plain = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let defaults = [
        "\\x01ff",
        "0.3333333333333333",
        "1 day 02:00:00",
        "2024-02-03",
    ];
    for _ in 0..2 {
        assert_eq!(row(&plain, read).await, defaults);
    }
    let changed = "SET bytea_output = 'escape'; SET extra_float_digits = 0; \
                   SET IntervalStyle = 'iso_8601'; SET DateStyle = 'SQL, DMY'";
    other.batch_execute(changed).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            row(&other, read).await,
            ["\\001\\377", "0.333333333333333", "P1DT2H", "03/02/2024"]
        );
        assert_eq!(row(&plain, read).await, defaults);
    }
    for reset in ["RESET ALL", "DISCARD ALL"] {
        other.batch_execute(changed).await.unwrap();
        assert_ne!(row(&other, read).await, defaults);
        other.batch_execute(reset).await.unwrap();
        assert_eq!(row(&other, read).await, defaults, "{reset}");
    }
}

/// Checklists 13-15: a block that reads, writes and reads again sees its write, and
/// once rolled back the old value is read again (pgopt ends the entry of a
/// rolled-back write too: a miss, never a stale row); a read in a failed transaction
/// gets 25P02, not cached rows; a committed block's write is read after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_and_failed_transactions_and_a_block_that_writes() {
    let (_pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    for _ in 0..2 {
        assert_eq!(value(&client, read).await, "a");
    }
    // A block that reads, writes and reads again, then rolls back.
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(value(&client, read).await, "a");
    client
        .batch_execute("UPDATE items SET v = 'mine' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&client, read).await, "mine");
    client.batch_execute("ROLLBACK").await.unwrap();
    for _ in 0..2 {
        assert_eq!(value(&client, read).await, "a");
    }
    // A failed transaction: the read is refused, as PostgreSQL refuses it.
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("SELECT 1/0").await.unwrap_err();
    let e = client.simple_query(read).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("25P02"), "{e}");
    client.batch_execute("ROLLBACK").await.unwrap();
    // A block that writes and commits: the next read has the write.
    client
        .batch_execute("BEGIN; UPDATE items SET v = 'kept' WHERE id = 1; COMMIT")
        .await
        .unwrap();
    assert_eq!(value(&client, read).await, "kept");
}

/// Checklists 44 and 46: reads of a cached table that have effects, or read the
/// session, are never served from the cache (each runs on PostgreSQL every time):
/// sequences, advisory locks, notifications, set_config, locking reads, SELECT INTO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_with_effects_are_never_served_from_the_cache() {
    let (pg, proxy) = setup().await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let watcher = direct(&pg).await;
    value(&client, "SELECT nextval('s')").await;
    let reads = [
        "SELECT v, nextval('s') FROM items WHERE id = 1",
        "SELECT v, currval('s') FROM items WHERE id = 1",
        "SELECT v, lastval() FROM items WHERE id = 1",
        "SELECT v, setval('s', 100) FROM items WHERE id = 1",
        "SELECT v, pg_advisory_lock(11) FROM items WHERE id = 1",
        "SELECT v, pg_try_advisory_xact_lock(12) FROM items WHERE id = 1",
        "SELECT v, pg_notify('c', v) FROM items WHERE id = 1",
        "SELECT v, set_config('app.x', v, false) FROM items WHERE id = 1",
        "SELECT v FROM items WHERE id = 1 FOR UPDATE",
        "SELECT v FROM items WHERE id = 1 FOR NO KEY UPDATE",
        "SELECT v FROM items WHERE id = 1 FOR SHARE",
        "SELECT v FROM items WHERE id = 1 FOR KEY SHARE",
    ];
    for read in reads {
        let before = cache_row(&proxy).await;
        for _ in 0..2 {
            // (A statement transaction mode refuses is no read served either.)
            let _ = client.simple_query(read).await;
        }
        let after = cache_row(&proxy).await;
        for counter_name in ["hits", "stored"] {
            assert_eq!(
                counter(&after, counter_name),
                counter(&before, counter_name),
                "{read}: {after:?}"
            );
        }
    }
    // The effects happened each time (a session lock is refused in transaction mode).
    assert_eq!(value(&watcher, "SELECT last_value FROM s").await, "100");
    let next = "SELECT v, nextval('s') FROM items WHERE id = 1";
    assert_eq!(row(&client, next).await, ["a", "101"]);
    assert_eq!(row(&client, next).await, ["a", "102"]);
    // SELECT INTO writes a table: run twice, the second finds it there.
    let into = "SELECT v INTO copied FROM items WHERE id = 1";
    client.batch_execute(into).await.unwrap();
    let e = client.batch_execute(into).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42P07"), "{e}");
}
