//! The (M) cases of the cache checklist (/work/shared/CACHE-CHECKLIST.md, by number)
//! that had no deterministic test against a real PostgreSQL. Each proves a read was,
//! or was not, served from the cache the same way: read through pgopt until a hit
//! (SHOW CACHE's `hits`), change the rows directly on PostgreSQL behind pgopt's back
//! so that the cached answer is now the old one, do the operation under test through
//! pgopt, and read again through pgopt: the new value, never the old.

mod common;

use common::{admin, code, connect, counter, show, start_with};
use pgopt_embedded::Postgres;
use pgopt_proxy::{CacheSettings, PoolMode, Proxy};
use tokio_postgres::{Client, SimpleQueryMessage};

/// A client of PostgreSQL itself, past pgopt.
async fn direct(pg: &Postgres) -> Client {
    pg.connect("postgres").await.unwrap()
}

/// PostgreSQL with `schema`, a proxy in front of it caching reads of `tables`, and a
/// client of PostgreSQL itself.
async fn setup(schema: &str, tables: &[&str]) -> (Postgres, Proxy, Client) {
    let pg = Postgres::start().await.unwrap();
    pg.psql(schema).unwrap();
    let proxy = caching(&pg, tables, |_| {}).await;
    let behind = direct(&pg).await;
    (pg, proxy, behind)
}

/// A proxy in front of `pg` caching reads of `tables`, its config changed by `tweak`.
async fn caching(
    pg: &Postgres,
    tables: &[&str],
    tweak: impl FnOnce(&mut pgopt_proxy::Config),
) -> Proxy {
    start_with(pg, |c| {
        c.cache = CacheSettings {
            enabled: true,
            tables: tables.iter().map(|t| t.to_string()).collect(),
            ..CacheSettings::default()
        };
        tweak(c);
    })
    .await
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

/// The SQLSTATE `sql` fails with (it must fail).
async fn error_code(client: &Client, sql: &str) -> String {
    match try_rows(client, sql).await {
        Ok(rows) => panic!("{sql} gave {rows:?}, not an error"),
        Err(e) => code(&e).unwrap_or("none").to_string(),
    }
}

async fn cache_row(proxy: &Proxy) -> std::collections::HashMap<String, String> {
    show(&admin(proxy).await, "CACHE").await.remove(0)
}

async fn hits(proxy: &Proxy) -> u64 {
    counter(&cache_row(proxy).await, "hits")
}

/// Asserts SHOW CACHE's `hits` and `stored` did not move from `before` (what ran since
/// was neither served from the cache nor stored); `what` for the failure's report.
async fn nothing_served_or_stored(
    proxy: &Proxy,
    before: &std::collections::HashMap<String, String>,
    what: &str,
) {
    let after = cache_row(proxy).await;
    for name in ["hits", "stored"] {
        assert_eq!(
            counter(&after, name),
            counter(before, name),
            "{what}: {name} moved: {after:?}"
        );
    }
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
    let after = cache_row(proxy).await;
    assert_eq!(
        counter(&after, "hits"),
        before + 1,
        "{read}: the second read was not served from the cache: {after:?}"
    );
}

/// `read` gives `want`, served from the cache (SHOW CACHE's hits one more); `what`
/// says what should not have ended the entry.
async fn served(proxy: &Proxy, client: &Client, read: &str, want: &[&str], what: &str) {
    let before = hits(proxy).await;
    assert_eq!(rows(client, read).await, strings(want), "{what}: {read}");
    assert_eq!(hits(proxy).await, before + 1, "{what}");
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

/// #37: CREATE OR REPLACE FUNCTION through pgopt. A user function called by name is
/// never cached (README: "Never cached: … user functions"), so its new body shows at
/// once. An immutable one PostgreSQL calls under a built-in's name (`length(int)`,
/// which pg_catalog lacks) or behind an operator is cached like the built-in: a new
/// body ends those entries, and a new volatility makes the read uncached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_function_changes_or_ends_what_is_cached() {
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');
         CREATE TABLE side (n int); INSERT INTO side VALUES (7);
         CREATE FUNCTION public.length(int) RETURNS int IMMUTABLE LANGUAGE sql
           AS $$ SELECT $1 * 100 $$;
         CREATE FUNCTION plus(int, int) RETURNS int IMMUTABLE LANGUAGE sql
           AS $$ SELECT $1 + $2 $$;
         CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = plus);
         CREATE FUNCTION named(int) RETURNS int IMMUTABLE LANGUAGE sql
           AS $$ SELECT $1 * 10 $$;",
        &["items"],
    )
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();

    // Called by its own name: not cached, whatever its volatility.
    let read = "SELECT named(id) FROM items WHERE id = 1";
    let before = hits(&proxy).await;
    for _ in 0..2 {
        assert_eq!(rows(&client, read).await, ["10"]);
    }
    assert_eq!(
        hits(&proxy).await,
        before,
        "{read} was served from the cache"
    );
    run(
        &other,
        "CREATE OR REPLACE FUNCTION named(int) RETURNS int IMMUTABLE LANGUAGE sql \
           AS $$ SELECT $1 * 20 $$",
    )
    .await;
    assert_eq!(rows(&client, read).await, ["20"]);

    // Under a built-in's name, and behind an operator: cached while immutable…
    for (read, first, body, second, signature) in [
        (
            "SELECT length(id) FROM items WHERE id = 1",
            "100",
            "SELECT $1 * 200",
            "200",
            "public.length(int)",
        ),
        (
            "SELECT id ### 1 FROM items WHERE id = 1",
            "2",
            "SELECT $1 + $2 + 1000",
            "1002",
            "plus(int, int)",
        ),
    ] {
        cached(&proxy, &client, read, &[first]).await;
        // …a new body through pgopt (another session) ends the entries…
        run(
            &other,
            &format!(
                "CREATE OR REPLACE FUNCTION {signature} RETURNS int IMMUTABLE \
                 LANGUAGE sql AS $$ {body} $$"
            ),
        )
        .await;
        assert_eq!(rows(&client, read).await, [second], "{read}: new body");
        cached(&proxy, &client, read, &[second]).await;
        // …and the same function made volatile, reading a table pgopt does not cache,
        // is run each time: a change of that table behind pgopt's back shows at once.
        run(
            &other,
            &format!(
                "CREATE OR REPLACE FUNCTION {signature} RETURNS int VOLATILE \
                 LANGUAGE sql AS $$ SELECT n FROM side $$"
            ),
        )
        .await;
        let n = value_of(&behind, "SELECT n FROM side").await;
        assert_eq!(rows(&client, read).await, [n.as_str()], "{read}: volatile");
        run(&behind, "UPDATE side SET n = n + 1").await;
        let n = value_of(&behind, "SELECT n FROM side").await;
        assert_eq!(
            rows(&client, read).await,
            [n],
            "{read}: not cached once volatile"
        );
        // Made immutable again (PostgreSQL takes the word for it, though it reads a
        // table): cached, even stale after a change of `side` behind pgopt…
        run(
            &other,
            &format!(
                "CREATE OR REPLACE FUNCTION {signature} RETURNS int IMMUTABLE \
                 LANGUAGE sql AS $$ SELECT n FROM side $$"
            ),
        )
        .await;
        let n = value_of(&behind, "SELECT n FROM side").await;
        cached_then_changed_behind(
            &proxy,
            &client,
            &behind,
            read,
            &[n.as_str()],
            "UPDATE side SET n = n + 1",
        )
        .await;
        // …until ALTER FUNCTION … VOLATILE through pgopt: run each time again.
        run(&other, &format!("ALTER FUNCTION {signature} VOLATILE")).await;
        let n = value_of(&behind, "SELECT n FROM side").await;
        assert_eq!(rows(&client, read).await, [n], "{read}: ALTER FUNCTION");
        run(&behind, "UPDATE side SET n = n + 1").await;
        let n = value_of(&behind, "SELECT n FROM side").await;
        assert_eq!(rows(&client, read).await, [n], "{read}: volatile again");
    }
}

/// The first column of the first row, as text.
async fn value_of(client: &Client, sql: &str) -> String {
    rows(client, sql).await.remove(0)
}

/// #2, #38, #45: roles. Role B never gets role A's entry (no privilege, other rows
/// under row-level security); GRANT, REVOKE, ALTER POLICY, ENABLE/DISABLE ROW LEVEL
/// SECURITY and BYPASSRLS through pgopt take effect at once; SET ROLE and SET SESSION
/// AUTHORIZATION change what a session reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reads_what_it_may_see_and_privilege_changes_hold_at_once() {
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');
         CREATE TABLE notes (owner text, v text);
         INSERT INTO notes VALUES ('alice', 'for alice'), ('bob', 'for bob');
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own ON notes USING (owner = current_user);
         CREATE VIEW my_notes WITH (security_invoker = true) AS SELECT v FROM notes;
         CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN;
         GRANT SELECT ON items TO alice; GRANT SELECT (id) ON items TO carol;
         GRANT SELECT ON notes, my_notes TO alice, bob;",
        &["items", "notes", "my_notes"],
    )
    .await;
    let admin_session = connect(&proxy, "postgres", None).await.unwrap();
    let alice = connect(&proxy, "alice", None).await.unwrap();
    let bob = connect(&proxy, "bob", None).await.unwrap();
    let carol = connect(&proxy, "carol", None).await.unwrap();

    // #2: alice's read is cached; bob, without SELECT, and carol, with SELECT on
    // another column only, get 42501 every time.
    let read = "SELECT v FROM items WHERE id = 1";
    cached(&proxy, &alice, read, &["a"]).await;
    for _ in 0..2 {
        assert_eq!(error_code(&bob, read).await, "42501", "bob");
        assert_eq!(error_code(&carol, read).await, "42501", "carol");
    }
    assert_eq!(rows(&carol, "SELECT id FROM items").await, ["1"]);

    // #38: GRANT and REVOKE through pgopt hold at once, both ways. (After each
    // change, the superuser's read has the catalog read again through its own pool
    // first: under load, bob's first reads after a GRANT sometimes went past the
    // cache altogether, see the report of this file's commit.)
    run(&admin_session, "GRANT SELECT ON items TO bob").await;
    rows(&admin_session, read).await;
    cached(&proxy, &bob, read, &["a"]).await;
    run(&admin_session, "REVOKE SELECT ON items FROM bob").await;
    assert_eq!(error_code(&bob, read).await, "42501", "revoked");
    // A role's membership granted and revoked.
    run(&admin_session, "GRANT alice TO bob").await;
    rows(&admin_session, read).await;
    cached(&proxy, &bob, read, &["a"]).await;
    run(&admin_session, "REVOKE alice FROM bob").await;
    assert_eq!(error_code(&bob, read).await, "42501", "membership revoked");
    // A column privilege granted and revoked.
    run(&admin_session, "GRANT SELECT (v) ON items TO carol").await;
    rows(&admin_session, read).await;
    cached(&proxy, &carol, read, &["a"]).await;
    run(&admin_session, "REVOKE SELECT (v) ON items FROM carol").await;
    assert_eq!(error_code(&carol, read).await, "42501", "column revoked");

    // #2: row-level security on current_user: the same text, each role its rows,
    // directly on the table and through a security_invoker view.
    for notes in [
        "SELECT v FROM notes ORDER BY v",
        "SELECT v FROM my_notes ORDER BY v",
    ] {
        for _ in 0..2 {
            assert_eq!(rows(&alice, notes).await, ["for alice"], "{notes}");
            assert_eq!(rows(&bob, notes).await, ["for bob"], "{notes}");
            // The superuser bypasses row-level security.
            assert_eq!(
                rows(&admin_session, notes).await,
                ["for alice", "for bob"],
                "{notes}"
            );
        }
    }
    let notes = "SELECT v FROM notes ORDER BY v";
    // #38: ALTER POLICY through pgopt.
    run(&admin_session, "ALTER POLICY own ON notes USING (true)").await;
    assert_eq!(
        rows(&bob, notes).await,
        ["for alice", "for bob"],
        "policy true"
    );
    run(
        &admin_session,
        "ALTER POLICY own ON notes USING (owner = current_user)",
    )
    .await;
    assert_eq!(rows(&bob, notes).await, ["for bob"], "policy back");
    // DISABLE ROW LEVEL SECURITY: every row for everyone, and cached…
    run(
        &admin_session,
        "ALTER TABLE notes DISABLE ROW LEVEL SECURITY",
    )
    .await;
    cached(&proxy, &alice, notes, &["for alice", "for bob"]).await;
    cached(&proxy, &bob, notes, &["for alice", "for bob"]).await;
    // …ENABLE again: each role its own rows at once.
    run(
        &admin_session,
        "ALTER TABLE notes ENABLE ROW LEVEL SECURITY",
    )
    .await;
    assert_eq!(rows(&alice, notes).await, ["for alice"], "enabled again");
    assert_eq!(rows(&bob, notes).await, ["for bob"], "enabled again");
    // BYPASSRLS given and taken.
    run(&admin_session, "ALTER ROLE bob BYPASSRLS").await;
    assert_eq!(
        rows(&bob, notes).await,
        ["for alice", "for bob"],
        "bypassrls"
    );
    run(&admin_session, "ALTER ROLE bob NOBYPASSRLS").await;
    assert_eq!(rows(&bob, notes).await, ["for bob"], "nobypassrls");

    // SET ROLE in one session (#2), with current_user (#45): the superuser's entry is
    // cached and stale (the row changed behind pgopt); as bob the read fails, as
    // alice it runs, and back as the superuser it is served again.
    let session = connect(&proxy, "postgres", None).await.unwrap();
    cached_then_changed_behind(
        &proxy,
        &session,
        &behind,
        read,
        &["a"],
        "UPDATE items SET v = 'a2' WHERE id = 1",
    )
    .await;
    run(&session, "SET ROLE bob").await;
    assert_eq!(error_code(&session, read).await, "42501", "SET ROLE bob");
    assert_eq!(rows(&session, "SELECT current_user").await, ["bob"]);
    assert_eq!(rows(&session, notes).await, ["for bob"], "SET ROLE bob");
    assert_eq!(
        rows(&session, "SELECT v FROM my_notes ORDER BY v").await,
        ["for bob"],
        "SET ROLE bob"
    );
    run(&session, "SET ROLE alice").await;
    assert_eq!(rows(&session, "SELECT current_user").await, ["alice"]);
    assert_eq!(rows(&session, notes).await, ["for alice"], "SET ROLE alice");
    assert_eq!(
        rows(&session, "SELECT v FROM my_notes ORDER BY v").await,
        ["for alice"],
        "SET ROLE alice"
    );
    // alice may read items (whether alice's login's entry is served or not).
    let as_alice = rows(&session, read).await;
    assert!(as_alice == ["a"] || as_alice == ["a2"], "{as_alice:?}");
    run(&session, "RESET ROLE").await;
    assert_eq!(rows(&session, "SELECT current_user").await, ["postgres"]);
    assert_eq!(
        rows(&session, notes).await,
        ["for alice", "for bob"],
        "RESET ROLE"
    );
    run(&session, "SET SESSION AUTHORIZATION bob").await;
    assert_eq!(rows(&session, "SELECT session_user").await, ["bob"]);
    assert_eq!(
        error_code(&session, read).await,
        "42501",
        "SET SESSION AUTHORIZATION bob"
    );
    run(&session, "RESET SESSION AUTHORIZATION").await;
    assert_eq!(rows(&session, "SELECT session_user").await, ["postgres"]);
    assert!(!rows(&session, read).await.is_empty());
}

/// #33, #25: TRUNCATE (of the table, of a referenced table with CASCADE, with
/// RESTART IDENTITY) and foreign keys ON UPDATE CASCADE and ON DELETE SET NULL
/// (through two levels) end the cached reads of every table they change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncates_and_foreign_key_actions_end_what_they_change() {
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE tr (v text); INSERT INTO tr VALUES ('x');
         CREATE TABLE tp (id int PRIMARY KEY); INSERT INTO tp VALUES (1);
         CREATE TABLE tc (pid int REFERENCES tp); INSERT INTO tc VALUES (1);
         CREATE TABLE ti (id int GENERATED ALWAYS AS IDENTITY, v text);
         INSERT INTO ti (v) VALUES ('one'), ('two');
         CREATE TABLE parent (id int PRIMARY KEY); INSERT INTO parent VALUES (1);
         CREATE TABLE child (id int PRIMARY KEY,
           pid int UNIQUE REFERENCES parent ON UPDATE CASCADE ON DELETE SET NULL);
         INSERT INTO child VALUES (10, 1);
         CREATE TABLE grandchild (id int, cpid int REFERENCES child (pid) ON UPDATE CASCADE);
         INSERT INTO grandchild VALUES (100, 1);",
        &["tr", "tp", "tc", "ti", "parent", "child", "grandchild"],
    )
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let mut writer = connect(&proxy, "postgres", None).await.unwrap();

    // #33: TRUNCATE of a cached table (and a stale entry of it: a row added behind).
    let read = "SELECT v FROM tr ORDER BY v";
    cached_then_changed_behind(
        &proxy,
        &client,
        &behind,
        read,
        &["x"],
        "INSERT INTO tr VALUES ('y')",
    )
    .await;
    run(&writer, "TRUNCATE tr").await;
    assert_eq!(
        rows(&client, read).await,
        Vec::<String>::new(),
        "TRUNCATE tr"
    );
    // In a transaction, by the extended protocol.
    run(&writer, "INSERT INTO tr VALUES ('z')").await;
    cached(&proxy, &client, read, &["z"]).await;
    let tx = writer.transaction().await.unwrap();
    tx.execute("TRUNCATE TABLE tr", &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        rows(&client, read).await,
        Vec::<String>::new(),
        "TRUNCATE TABLE"
    );

    // TRUNCATE of the referenced table with CASCADE empties the referencing one.
    let referencing = "SELECT pid FROM tc";
    cached(&proxy, &client, referencing, &["1"]).await;
    cached(&proxy, &client, "SELECT id FROM tp", &["1"]).await;
    run(&writer, "TRUNCATE tp CASCADE").await;
    assert_eq!(
        rows(&client, referencing).await,
        Vec::<String>::new(),
        "TRUNCATE tp CASCADE"
    );
    assert_eq!(
        rows(&client, "SELECT id FROM tp").await,
        Vec::<String>::new()
    );

    // RESTART IDENTITY: the next row is 1 again.
    let ids = "SELECT id, v FROM ti ORDER BY id";
    cached(&proxy, &client, ids, &["1|one", "2|two"]).await;
    run(&writer, "TRUNCATE ti RESTART IDENTITY").await;
    assert_eq!(
        rows(&client, ids).await,
        Vec::<String>::new(),
        "RESTART IDENTITY"
    );
    cached(&proxy, &client, ids, &[]).await;
    run(&writer, "INSERT INTO ti (v) VALUES ('again')").await;
    assert_eq!(rows(&client, ids).await, ["1|again"]);

    // #25: ON UPDATE CASCADE from parent to child to grandchild, each cached.
    let child = "SELECT id, coalesce(pid::text, 'null') FROM child";
    let grandchild = "SELECT id, coalesce(cpid::text, 'null') FROM grandchild";
    cached(&proxy, &client, child, &["10|1"]).await;
    cached(&proxy, &client, grandchild, &["100|1"]).await;
    writer
        .execute("UPDATE parent SET id = 2 WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(rows(&client, child).await, ["10|2"], "ON UPDATE CASCADE");
    assert_eq!(
        rows(&client, grandchild).await,
        ["100|2"],
        "ON UPDATE CASCADE, two levels"
    );
    // ON DELETE SET NULL, which in turn updates the grandchild.
    cached(&proxy, &client, child, &["10|2"]).await;
    cached(&proxy, &client, grandchild, &["100|2"]).await;
    run(&writer, "DELETE FROM parent WHERE id = 2").await;
    assert_eq!(
        rows(&client, child).await,
        ["10|null"],
        "ON DELETE SET NULL"
    );
    assert_eq!(
        rows(&client, grandchild).await,
        ["100|null"],
        "ON DELETE SET NULL, then ON UPDATE CASCADE"
    );
}

/// #16: inside REPEATABLE READ and SERIALIZABLE transactions nothing is served from
/// the cache nor stored: the transaction reads its snapshot, and what it read never
/// reaches other sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeatable_read_and_serializable_transactions_read_their_snapshot() {
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a'), (2, 'b');",
        &["items"],
    )
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let one = "SELECT v FROM items WHERE id = 1";
    let two = "SELECT v FROM items WHERE id = 2";
    // Each way in, its statements sent one by one (pgopt refuses a SET and a RESET
    // of one setting in one query string in transaction pooling mode).
    for (n, level) in [
        (1, &["BEGIN ISOLATION LEVEL REPEATABLE READ"][..]),
        (2, &["START TRANSACTION ISOLATION LEVEL SERIALIZABLE"]),
        (
            3,
            &["BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"],
        ),
        (
            4,
            &[
                "SET default_transaction_isolation = 'serializable'",
                "BEGIN",
                "RESET default_transaction_isolation",
            ],
        ),
    ] {
        let level = level.join("; ");
        run(
            &other,
            "UPDATE items SET v = 'a' WHERE id = 1; UPDATE items SET v = 'b' WHERE id = 2",
        )
        .await;
        // A stale entry of item 1: 'a' cached, 'a1' on PostgreSQL.
        let a1 = format!("a{n}");
        cached_then_changed_behind(
            &proxy,
            &client,
            &behind,
            one,
            &["a"],
            &format!("UPDATE items SET v = '{a1}' WHERE id = 1"),
        )
        .await;
        let before = hits(&proxy).await;
        for statement in level.split("; ") {
            run(&client, statement).await;
        }
        assert_eq!(
            rows(&client, one).await,
            [a1.as_str()],
            "{level}: not the entry"
        );
        assert_eq!(rows(&client, two).await, ["b"], "{level}");
        // The extended protocol too.
        let got: String = client.query_one(one, &[]).await.unwrap().get(0);
        assert_eq!(got, a1, "{level}, extended");
        assert_eq!(
            hits(&proxy).await,
            before,
            "{level}: a hit in the transaction"
        );
        // Another session writes item 2 through pgopt, and caches the new value.
        let b2 = format!("b{n}");
        run(&other, &format!("UPDATE items SET v = '{b2}' WHERE id = 2")).await;
        cached(&proxy, &other, two, &[b2.as_str()]).await;
        // The transaction still reads its snapshot, neither the entry nor the row.
        let before = hits(&proxy).await;
        assert_eq!(rows(&client, two).await, ["b"], "{level}: its snapshot");
        assert_eq!(rows(&client, one).await, [a1.as_str()], "{level}");
        assert_eq!(
            hits(&proxy).await,
            before,
            "{level}: a hit in the transaction"
        );
        // What it read inside was not stored: item 2 cached outside is still b2…
        assert_eq!(rows(&other, two).await, [b2.as_str()], "{level}");
        run(&client, "COMMIT").await;
        // …and after the commit the session reads what is committed.
        assert_eq!(
            rows(&client, two).await,
            [b2.as_str()],
            "{level}: committed"
        );
        // A read run inside the transaction after a write through pgopt ended the
        // table's entries (its snapshot, older than that write) is not stored.
        let three = "SELECT v FROM items WHERE id = 2 AND v IS NOT NULL";
        for statement in level.split("; ") {
            run(&client, statement).await;
        }
        assert_eq!(rows(&client, three).await, [b2.as_str()]);
        run(&other, "UPDATE items SET v = 'b9' WHERE id = 2").await;
        assert_eq!(
            rows(&client, three).await,
            [b2.as_str()],
            "{level}: snapshot"
        );
        run(&client, "COMMIT").await;
        assert_eq!(rows(&other, three).await, ["b9"], "{level}: stored inside");
    }
}

/// The messages (type, body) a raw client gets up to its `n`-th ReadyForQuery.
async fn raw_replies(raw: &mut tokio::net::TcpStream, n: usize) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let (mut buf, mut messages, mut ready) = (Vec::new(), Vec::new(), 0);
    loop {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 1 + len {
                break;
            }
            let message: Vec<u8> = buf.drain(..1 + len).collect();
            if message[0] == b'Z' {
                ready += 1;
            }
            messages.push((message[0], message[5..].to_vec()));
            if ready == n {
                return messages;
            }
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), raw.read(&mut chunk));
        let got = read.await.expect("no reply in 10 s").unwrap();
        assert!(got > 0, "closed after {messages:?}");
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// What a raw exchange read: each DataRow's first column, and each ReadyForQuery's
/// status, in order (`!` for an ErrorResponse).
fn raw_summary(messages: &[(u8, Vec<u8>)]) -> (Vec<String>, String) {
    let (mut values, mut statuses) = (Vec::new(), String::new());
    for (tag, body) in messages {
        match tag {
            b'D' => {
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                values.push(if len < 0 {
                    "null".to_string()
                } else {
                    String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
                });
            }
            b'Z' => statuses.push(body[0] as char),
            b'E' => statuses.push('!'),
            _ => {}
        }
    }
    (values, statuses)
}

/// Parse, Bind and Execute of `sql` (unnamed statement and portal, text results).
fn parse_bind_execute(sql: &str) -> Vec<u8> {
    let mut batch = common::message(b'P', format!("\0{sql}\0\0\0").as_bytes());
    batch.extend(common::message(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(common::message(b'E', b"\0\0\0\0\0"));
    batch
}

/// Sends `batch` and reads up to the `syncs`-th ReadyForQuery.
async fn raw_round(
    raw: &mut tokio::net::TcpStream,
    batch: &[u8],
    syncs: usize,
) -> (Vec<String>, String) {
    use tokio::io::AsyncWriteExt;
    raw.write_all(batch).await.unwrap();
    raw_summary(&raw_replies(raw, syncs).await)
}

/// #17: a BEGIN sent ahead of a cacheable read in the extended protocol — in the same
/// Sync as JDBC's `setAutoCommit(false)` sends it, pipelined in its own Sync, or as
/// tokio-postgres' `transaction()` — puts the read in a transaction block: not served
/// from a (stale) entry, but what PostgreSQL has, and not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_pipelined_before_a_read_keeps_it_from_the_cache() {
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');",
        &["items"],
    )
    .await;
    let read = "SELECT v FROM items WHERE id = 1";
    let sync = common::message(b'S', b"");
    let mut raw = common::raw_login(&proxy).await;
    let fill = [parse_bind_execute(read), sync.clone()].concat();
    let mut version = 0;

    // Each form, after a stale entry of its own read (cached as 'aN', 'aN+1' on
    // PostgreSQL).
    for form in ["one sync", "two syncs", "query_typed", "transaction"] {
        version += 1;
        let (old, new) = (format!("a{}", version - 1), format!("a{version}"));
        // (through pgopt: it ends the entries of the forms before)
        run(
            &connect(&proxy, "postgres", None).await.unwrap(),
            &format!("UPDATE items SET v = '{old}' WHERE id = 1"),
        )
        .await;
        let client = connect(&proxy, "postgres", None).await.unwrap();
        let typed = || async {
            let rows = client.query_typed(read, &[]).await.unwrap();
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        };
        let prepared = || async {
            let rows = client.query(read, &[]).await.unwrap();
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        };
        // Fill, then a hit, of the form's own read outside any transaction.
        for i in 0..2 {
            let before = hits(&proxy).await;
            let got = match form {
                "one sync" | "two syncs" => raw_round(&mut raw, &fill, 1).await.0,
                "query_typed" => typed().await,
                _ => prepared().await,
            };
            assert_eq!(got, [old.as_str()], "{form}: outside");
            if i == 1 {
                assert_eq!(hits(&proxy).await, before + 1, "{form}: not cached");
            }
        }
        run(
            &behind,
            &format!("UPDATE items SET v = '{new}' WHERE id = 1"),
        )
        .await;
        let before = hits(&proxy).await;
        let inside = match form {
            "one sync" => {
                let batch = [parse_bind_execute("BEGIN"), fill.clone()].concat();
                let (values, statuses) = raw_round(&mut raw, &batch, 1).await;
                assert_eq!(statuses, "T", "{form}");
                values
            }
            "two syncs" => {
                let batch = [parse_bind_execute("BEGIN"), sync.clone(), fill.clone()].concat();
                let (values, statuses) = raw_round(&mut raw, &batch, 2).await;
                assert_eq!(statuses, "TT", "{form}");
                values
            }
            "query_typed" => {
                let (begin, read) = tokio::join!(client.query_typed("BEGIN", &[]), typed());
                begin.unwrap();
                read
            }
            _ => {
                // What `Client::transaction()` sends (it takes the client mutably).
                client.batch_execute("BEGIN").await.unwrap();
                prepared().await
            }
        };
        assert_eq!(inside, [new.as_str()], "{form}: served from the cache");
        assert_eq!(
            hits(&proxy).await,
            before,
            "{form}: a hit in the transaction"
        );
        // A write through pgopt commits meanwhile; the block reads again (read
        // committed: the new row) and commits.
        let committed = format!("{new}-c");
        run(
            &connect(&proxy, "postgres", None).await.unwrap(),
            &format!("UPDATE items SET v = '{committed}' WHERE id = 1"),
        )
        .await;
        match form {
            "one sync" | "two syncs" => {
                let (values, statuses) = raw_round(&mut raw, &fill, 1).await;
                assert_eq!(values, [committed.as_str()], "{form}");
                assert_eq!(statuses, "T", "{form}");
                let commit = [parse_bind_execute("COMMIT"), sync.clone()].concat();
                assert_eq!(raw_round(&mut raw, &commit, 1).await.1, "I");
            }
            "query_typed" => {
                assert_eq!(typed().await, [committed.as_str()], "{form}");
                client.query_typed("COMMIT", &[]).await.unwrap();
            }
            _ => {
                assert_eq!(prepared().await, [committed.as_str()], "{form}");
                client.batch_execute("COMMIT").await.unwrap();
            }
        }
        // Nothing read inside was stored: outside, the committed row.
        let outside = match form {
            "one sync" | "two syncs" => raw_round(&mut raw, &fill, 1).await.0,
            "query_typed" => typed().await,
            _ => prepared().await,
        };
        assert_eq!(outside, [committed.as_str()], "{form}: after the block");
    }
}

/// #10: the other forms of write through pgopt end the written table's entries
/// before the writer's ReadyForQuery: INSERT … ON CONFLICT DO UPDATE, MERGE, writable
/// CTEs (never cached themselves: each run writes), UPDATE … FROM, DELETE … USING,
/// COPY FROM STDIN; in the simple and the extended protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_write_ends_the_written_tables_entries() {
    use futures_util::SinkExt;
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'a'), (2, 'b');
         CREATE TABLE src (id int, v text);",
        &["items"],
    )
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let writer = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT id, v FROM items ORDER BY id";
    // PostgreSQL's rows now, through the direct client.
    let truth = || async { rows(&behind, read).await };

    // (what, rows to have first, written behind pgopt, the write)
    let writes: &[(&str, &str, &str)] = &[
        (
            "INSERT … ON CONFLICT DO UPDATE",
            "",
            "INSERT INTO items VALUES (1, 'upserted') ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
        ),
        (
            "INSERT … ON CONFLICT DO NOTHING of a new row",
            "",
            "INSERT INTO items VALUES (3, 'c') ON CONFLICT (id) DO NOTHING",
        ),
        (
            "MERGE",
            "",
            "MERGE INTO items i USING (VALUES (2, 'merged'), (4, 'merged-new')) s (id, v) \
             ON i.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v \
             WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)",
        ),
        (
            "MERGE … DELETE",
            "INSERT INTO items VALUES (4, 'd')",
            "MERGE INTO items i USING (VALUES (4)) s (id) ON i.id = s.id \
             WHEN MATCHED THEN DELETE",
        ),
        (
            "writable CTE",
            "INSERT INTO items VALUES (3, 'c')",
            "WITH d AS (DELETE FROM items WHERE id = 3 RETURNING *) SELECT count(*) FROM d",
        ),
        (
            "writable CTE reading the table it writes",
            "",
            "WITH u AS (UPDATE items SET v = 'cte' WHERE id = 2 RETURNING id) \
             SELECT v FROM items WHERE id = 1",
        ),
        (
            "UPDATE … FROM",
            "INSERT INTO src VALUES (2, 'from src')",
            "UPDATE items SET v = s.v FROM src s WHERE items.id = s.id",
        ),
        (
            "DELETE … USING",
            "INSERT INTO src VALUES (2, 'gone')",
            "DELETE FROM items USING src WHERE items.id = src.id AND src.v = 'gone'",
        ),
        (
            "UPDATE of the schema-qualified table under an alias",
            "",
            "UPDATE public.items AS x SET v = 'aliased' WHERE x.id = 1",
        ),
        (
            "INSERT … SELECT",
            "INSERT INTO src VALUES (5, 'selected')",
            "INSERT INTO items SELECT id, v FROM src",
        ),
    ];
    for (what, prep, write) in writes {
        for extended in [false, true] {
            // Items 1 and 2 as at the start, src empty, then the write's own rows:
            // all behind pgopt (src is not cached).
            run(
                &behind,
                &format!(
                    "DELETE FROM items; INSERT INTO items VALUES (1, 'a'), (2, 'b'); \
                     TRUNCATE src; {prep}"
                ),
            )
            .await;
            // (through pgopt, so that the entry of the read is the rows now)
            run(&writer, "UPDATE items SET v = v WHERE id = 1").await;
            let before = truth().await;
            cached(
                &proxy,
                &client,
                read,
                &before.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .await;
            if extended {
                writer
                    .execute(*write, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{write}: {e:?}"));
            } else {
                run(&writer, write).await;
            }
            let after = truth().await;
            assert_ne!(after, before, "{what} ({write}) changed nothing");
            assert_eq!(
                rows(&client, read).await,
                after,
                "{what}, extended: {extended}"
            );
        }
    }

    // A writable CTE is never served from the cache: each run deletes, so the count
    // differs.
    let cte = "WITH d AS (DELETE FROM items WHERE id >= 10 RETURNING *) SELECT count(*) FROM d";
    run(&writer, "INSERT INTO items VALUES (10, 'x'), (11, 'y')").await;
    assert_eq!(rows(&client, cte).await, ["2"]);
    assert_eq!(rows(&client, cte).await, ["0"], "a writable CTE was cached");
    run(&writer, "INSERT INTO items VALUES (10, 'x')").await;
    let count: i64 = client.query_one(cte, &[]).await.unwrap().get(0);
    assert_eq!(count, 1);
    let count: i64 = client.query_one(cte, &[]).await.unwrap().get(0);
    assert_eq!(count, 0, "a writable CTE was cached (extended)");
    // Not even when a hint opts it in.
    let hinted = format!("/* pgopt:cache */ {cte}");
    run(&writer, "INSERT INTO items VALUES (10, 'x')").await;
    assert_eq!(rows(&client, &hinted).await, ["1"]);
    assert_eq!(
        rows(&client, &hinted).await,
        ["0"],
        "a hinted writable CTE was cached"
    );

    // COPY FROM STDIN, text and CSV, completing normally.
    for (copy, data) in [
        ("COPY items FROM STDIN", "20\tcopied\n21\tcopied too\n"),
        (
            "COPY items (id, v) FROM STDIN WITH (FORMAT csv)",
            "22,\"copied, csv\"\n",
        ),
    ] {
        let before = truth().await;
        cached(
            &proxy,
            &client,
            read,
            &before.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        let sink = writer.copy_in::<_, bytes::Bytes>(copy).await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(data)).await.unwrap();
        let copied = sink.finish().await.unwrap();
        assert!(copied > 0, "{copy}");
        let after = truth().await;
        assert_ne!(after, before);
        assert_eq!(rows(&client, read).await, after, "{copy}");
    }
}

/// #27, #28, #29: partitions attached, detached, created and dropped through pgopt;
/// inheritance children; nested, security_barrier and updatable views and CREATE OR
/// REPLACE VIEW; materialized views refreshed through pgopt. After each schema
/// change, a write through pgopt to what a cached read now reaches ends its entry
/// (the dependency map was read again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_inheritance_views_and_materialized_views_follow_schema_changes() {
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE m (at int, v text) PARTITION BY RANGE (at);
         CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (10);
         INSERT INTO m VALUES (1, 'one');
         CREATE TABLE m2 (at int, v text); INSERT INTO m2 VALUES (15, 'fifteen');
         CREATE TABLE base (v text); INSERT INTO base VALUES ('base');
         CREATE TABLE kid (extra int) INHERITS (base); INSERT INTO kid VALUES ('kid', 1);
         CREATE TABLE vt (id int PRIMARY KEY, v text); INSERT INTO vt VALUES (1, 'x'), (2, 'y');
         CREATE TABLE vt2 (id int PRIMARY KEY, v text); INSERT INTO vt2 VALUES (1, 'other');
         CREATE VIEW v1 AS SELECT id, v FROM vt WHERE id < 10;
         CREATE VIEW v2 AS SELECT v FROM v1 WHERE id = 1;
         CREATE VIEW vsb WITH (security_barrier) AS SELECT id, v FROM vt;
         CREATE MATERIALIZED VIEW mv AS SELECT count(*) AS n FROM vt;
         CREATE UNIQUE INDEX ON mv (n);",
        &[
            "m", "m1", "m2", "m3", "base", "kid", "kid2", "vt", "vt2", "v1", "v2", "vsb", "mv",
        ],
    )
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let writer = connect(&proxy, "postgres", None).await.unwrap();

    // #27: ATTACH PARTITION: the parent's rows and, once attached, the partition's
    // writes through its own name.
    let parent = "SELECT v FROM m ORDER BY at";
    cached(&proxy, &client, parent, &["one"]).await;
    run(
        &writer,
        "ALTER TABLE m ATTACH PARTITION m2 FOR VALUES FROM (10) TO (20)",
    )
    .await;
    assert_eq!(rows(&client, parent).await, ["one", "fifteen"], "ATTACH");
    cached(&proxy, &client, parent, &["one", "fifteen"]).await;
    run(&writer, "INSERT INTO m2 VALUES (16, 'sixteen')").await;
    assert_eq!(
        rows(&client, parent).await,
        ["one", "fifteen", "sixteen"],
        "a write to the attached partition"
    );
    // The partition's read, written through the parent.
    let part = "SELECT v FROM m2 ORDER BY at";
    cached(&proxy, &client, part, &["fifteen", "sixteen"]).await;
    run(&writer, "UPDATE m SET v = 'XV' WHERE at = 15").await;
    assert_eq!(
        rows(&client, part).await,
        ["XV", "sixteen"],
        "through the parent"
    );
    // A partition created through pgopt, then written by its own name.
    run(
        &writer,
        "CREATE TABLE m3 PARTITION OF m FOR VALUES FROM (20) TO (30)",
    )
    .await;
    cached(&proxy, &client, parent, &["one", "XV", "sixteen"]).await;
    run(&writer, "INSERT INTO m3 VALUES (25, 'twenty-five')").await;
    assert_eq!(
        rows(&client, parent).await,
        ["one", "XV", "sixteen", "twenty-five"],
        "a write to a partition created through pgopt"
    );
    // DETACH and DROP of a partition.
    cached(
        &proxy,
        &client,
        parent,
        &["one", "XV", "sixteen", "twenty-five"],
    )
    .await;
    run(&writer, "ALTER TABLE m DETACH PARTITION m2").await;
    assert_eq!(
        rows(&client, parent).await,
        ["one", "twenty-five"],
        "DETACH"
    );
    cached(&proxy, &client, parent, &["one", "twenty-five"]).await;
    run(&writer, "DROP TABLE m3").await;
    assert_eq!(rows(&client, parent).await, ["one"], "DROP partition");
    // TRUNCATE of the parent empties a cached partition.
    let first = "SELECT v FROM m1";
    cached(&proxy, &client, first, &["one"]).await;
    run(&writer, "TRUNCATE m").await;
    assert_eq!(
        rows(&client, first).await,
        Vec::<String>::new(),
        "TRUNCATE m"
    );

    // #27: inheritance: a write to the child ends the parent's entries, and one
    // through the parent the child's.
    let all = "SELECT v FROM base ORDER BY v";
    cached(&proxy, &client, all, &["base", "kid"]).await;
    run(&writer, "INSERT INTO kid VALUES ('kid+', 2)").await;
    assert_eq!(
        rows(&client, all).await,
        ["base", "kid", "kid+"],
        "child write"
    );
    let kid = "SELECT v FROM kid ORDER BY v";
    cached(&proxy, &client, kid, &["kid", "kid+"]).await;
    run(&writer, "UPDATE base SET v = upper(v)").await;
    assert_eq!(rows(&client, kid).await, ["KID", "KID+"], "parent write");
    // A child created through pgopt, then written; then no longer a child.
    run(&writer, "CREATE TABLE kid2 () INHERITS (base)").await;
    cached(&proxy, &client, all, &["BASE", "KID", "KID+"]).await;
    run(&writer, "INSERT INTO kid2 VALUES ('kid2')").await;
    assert_eq!(
        rows(&client, all).await,
        ["BASE", "KID", "KID+", "kid2"],
        "a write to a child created through pgopt"
    );
    cached(&proxy, &client, all, &["BASE", "KID", "KID+", "kid2"]).await;
    run(&writer, "ALTER TABLE kid NO INHERIT base").await;
    assert_eq!(rows(&client, all).await, ["BASE", "kid2"], "NO INHERIT");

    // #28: a view over a view, and a security_barrier view: a write to the base
    // table ends both.
    let nested = "SELECT v FROM v2";
    let barrier = "SELECT v FROM vsb ORDER BY id";
    cached(&proxy, &client, nested, &["x"]).await;
    cached(&proxy, &client, barrier, &["x", "y"]).await;
    run(&writer, "UPDATE vt SET v = 'x2' WHERE id = 1").await;
    assert_eq!(rows(&client, nested).await, ["x2"], "nested view");
    assert_eq!(
        rows(&client, barrier).await,
        ["x2", "y"],
        "security_barrier"
    );
    // Writes through the (updatable) views end the base table's entries.
    let table = "SELECT v FROM vt ORDER BY id";
    cached(&proxy, &client, table, &["x2", "y"]).await;
    run(&writer, "UPDATE v1 SET v = 'via v1' WHERE id = 2").await;
    assert_eq!(rows(&client, table).await, ["x2", "via v1"], "UPDATE v1");
    cached(&proxy, &client, table, &["x2", "via v1"]).await;
    run(&writer, "INSERT INTO vsb VALUES (3, 'via vsb')").await;
    assert_eq!(
        rows(&client, table).await,
        ["x2", "via v1", "via vsb"],
        "INSERT INTO vsb"
    );
    // CREATE OR REPLACE VIEW of the inner view: the outer one's entries end.
    cached(&proxy, &client, nested, &["x2"]).await;
    run(
        &writer,
        "CREATE OR REPLACE VIEW v1 AS SELECT id, upper(v) AS v FROM vt WHERE id < 10",
    )
    .await;
    assert_eq!(rows(&client, nested).await, ["X2"], "v1 replaced");
    // …and of the outer one.
    cached(&proxy, &client, nested, &["X2"]).await;
    run(
        &writer,
        "CREATE OR REPLACE VIEW v2 AS SELECT v FROM v1 WHERE id = 2",
    )
    .await;
    assert_eq!(rows(&client, nested).await, ["VIA V1"], "v2 replaced");
    // The inner view replaced to read another table: a write to that table ends the
    // outer view's entries.
    run(
        &writer,
        "CREATE OR REPLACE VIEW v1 AS SELECT id, v FROM vt2",
    )
    .await;
    run(
        &writer,
        "CREATE OR REPLACE VIEW v2 AS SELECT v FROM v1 WHERE id = 1",
    )
    .await;
    cached(&proxy, &client, nested, &["other"]).await;
    run(&writer, "UPDATE vt2 SET v = 'other2'").await;
    assert_eq!(
        rows(&client, nested).await,
        ["other2"],
        "a write to what the replaced view reads"
    );

    // #29: REFRESH MATERIALIZED VIEW [CONCURRENTLY] through pgopt, after rows added
    // behind pgopt (so the cached count is the old one, as PostgreSQL's until then).
    let count = "SELECT n FROM mv";
    for (refresh, want) in [
        ("REFRESH MATERIALIZED VIEW mv", "4"),
        ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", "5"),
    ] {
        let before = rows(&behind, count).await;
        cached(
            &proxy,
            &client,
            count,
            &before.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        run(
            &behind,
            &format!("INSERT INTO vt VALUES ({want}0, 'behind')"),
        )
        .await;
        assert_eq!(rows(&client, count).await, before, "not refreshed yet");
        run(&writer, refresh).await;
        assert_eq!(rows(&client, count).await, [want], "{refresh}");
    }
}

/// A raw client of PostgreSQL itself (database `postgres`), after its ReadyForQuery:
/// the replies pgopt's are compared with.
async fn raw_direct(pg: &Postgres) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect((pg.host(), pg.port()))
        .await
        .unwrap();
    let body = b"\0\x03\0\0user\0postgres\0database\0postgres\0\0";
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    raw.write_all(&startup).await.unwrap();
    common::read_until(&mut raw, b'Z').await;
    raw
}

/// A Parse of `sql` as statement `name`, with parameter type OIDs `types`.
fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut body = format!("{name}\0{sql}\0").into_bytes();
    body.extend((types.len() as i16).to_be_bytes());
    for t in types {
        body.extend(t.to_be_bytes());
    }
    common::message(b'P', &body)
}

/// A Bind of statement `statement` to the unnamed portal: `params` in text, results
/// in the format codes `results` (none: all text; one: all that one).
fn bind(statement: &str, params: &[&str], results: &[i16]) -> Vec<u8> {
    let mut body = format!("\0{statement}\0").into_bytes();
    body.extend(0i16.to_be_bytes());
    body.extend((params.len() as i16).to_be_bytes());
    for p in params {
        body.extend((p.len() as i32).to_be_bytes());
        body.extend(p.as_bytes());
    }
    body.extend((results.len() as i16).to_be_bytes());
    for r in results {
        body.extend(r.to_be_bytes());
    }
    common::message(b'B', &body)
}

/// Describe of the unnamed portal (its RowDescription carries the format codes),
/// Execute of it, and Sync.
fn describe_execute_sync() -> Vec<u8> {
    let mut batch = common::message(b'D', b"P\0");
    batch.extend(common::message(b'E', b"\0\0\0\0\0"));
    batch.extend(common::message(b'S', b""));
    batch
}

/// Sends `batch` (one Sync or Query) and returns every message of the reply.
async fn exchange(raw: &mut tokio::net::TcpStream, batch: &[u8]) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncWriteExt;
    raw.write_all(batch).await.unwrap();
    raw_replies(raw, 1).await
}

/// Messages as (type, body) with the body's bytes as text, for a failure's report.
fn readable(messages: &[(u8, Vec<u8>)]) -> Vec<(char, String)> {
    let text = |b: &[u8]| b.escape_ascii().to_string();
    messages
        .iter()
        .map(|(t, b)| (*t as char, text(b)))
        .collect()
}

/// #5: in the extended protocol, what makes PostgreSQL's reply differ for one text
/// and one Bind value keeps entries apart: the parameter types a Parse declares and
/// the result format codes a Bind asks for, column by column. Each reply through
/// pgopt, filled or served, is PostgreSQL's byte for byte (RowDescription, DataRow,
/// CommandComplete). And a statement name Closed or DEALLOCATEd and Parsed again as
/// another statement runs the new one, not the old one's entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_reads_are_keyed_by_parameter_types_and_result_formats_and_a_reused_name_runs_its_new_statement(
) {
    let (pg, proxy, _behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text, n numeric, at timestamptz, f float8);
         INSERT INTO items VALUES (1, 'a', 1.50, '2024-01-02 03:04:05+00', 0.1),
                                  (2, 'b', 2.25, '2025-06-07 08:09:10+00', -2.5);",
        &["items"],
    )
    .await;
    let mut through = common::raw_login(&proxy).await;
    let mut direct = raw_direct(&pg).await;
    // (The first cacheable read has the catalog read.)
    let warm = [
        parse_bind_execute("SELECT v FROM items WHERE id = 1"),
        common::message(b'S', b""),
    ]
    .concat();
    assert_eq!(raw_summary(&exchange(&mut through, &warm).await).0, ["a"]);

    // One text, one value ('01'), the parameter declared int4, text, float8 and left
    // to PostgreSQL (unknown → text): 1, 01, 1, 01, each with its own column type.
    let typed = "SELECT $1 AS p, v FROM items WHERE id = 1";
    let requests: Vec<Vec<u8>> = [&[23u32][..], &[25], &[701], &[0]]
        .iter()
        .map(|types| {
            [
                parse("", typed, types),
                bind("", &["01"], &[]),
                describe_execute_sync(),
            ]
            .concat()
        })
        .collect();
    // Column by column text and binary results of one statement and value.
    let formatted = "SELECT id, v, n, at, f FROM items WHERE id = $1";
    let formats: [&[i16]; 5] = [&[], &[1], &[0, 1, 0, 1, 0], &[1, 0, 1, 0, 1], &[0]];
    let requests: Vec<Vec<u8>> = requests
        .into_iter()
        .chain(formats.iter().map(|results| {
            [
                parse("", formatted, &[]),
                bind("", &["2"], results),
                describe_execute_sync(),
            ]
            .concat()
        }))
        .collect();
    let mut replies = Vec::new();
    for request in &requests {
        replies.push(exchange(&mut direct, request).await);
    }
    // The int4 and text replies differ (else the test shows nothing).
    assert_eq!(raw_summary(&replies[0]).0, ["1"]);
    assert_eq!(raw_summary(&replies[1]).0, ["01"]);
    assert_ne!(replies[5], replies[6], "text and binary replies are alike");
    // Filled in turn, then each served from its own entry.
    for round in 0..2 {
        let before = hits(&proxy).await;
        for (i, request) in requests.iter().enumerate() {
            assert_eq!(
                readable(&exchange(&mut through, request).await),
                readable(&replies[i]),
                "request {i}, round {round}"
            );
        }
        if round == 1 {
            assert_eq!(
                hits(&proxy).await,
                before + requests.len() as u64,
                "not each from its entry"
            );
        }
    }

    // A named statement, filled and then a hit…
    let sync = common::message(b'S', b"");
    let run_s = [
        bind("s", &[], &[]),
        common::message(b'E', b"\0\0\0\0\0"),
        sync.clone(),
    ]
    .concat();
    let one = "SELECT v FROM items WHERE id = 1 AND id > 0";
    let prepared = exchange(&mut through, &[parse("s", one, &[]), sync.clone()].concat()).await;
    assert_eq!(raw_summary(&prepared).1, "I");
    for _ in 0..2 {
        assert_eq!(raw_summary(&exchange(&mut through, &run_s).await).0, ["a"]);
    }
    // …Closed and Parsed again as another statement in one batch: its rows, then its
    // own entry's.
    let close = common::message(b'C', b"Ss\0");
    let two = "SELECT v FROM items WHERE id = 2 AND id > 0";
    let again = [close, parse("s", two, &[]), run_s.clone()].concat();
    assert_eq!(
        raw_summary(&exchange(&mut through, &again).await).0,
        ["b"],
        "Close"
    );
    assert_eq!(
        raw_summary(&exchange(&mut through, &run_s).await).0,
        ["b"],
        "Close"
    );
    // DEALLOCATE in a simple query, then a Parse of the name.
    let deallocate = common::message(b'Q', b"DEALLOCATE s\0");
    assert_eq!(
        raw_summary(&exchange(&mut through, &deallocate).await).1,
        "I"
    );
    let upper = "SELECT upper(v) FROM items WHERE id = 1";
    let again = [parse("s", upper, &[]), run_s.clone()].concat();
    assert_eq!(
        raw_summary(&exchange(&mut through, &again).await).0,
        ["A"],
        "DEALLOCATE"
    );
    assert_eq!(
        raw_summary(&exchange(&mut through, &run_s).await).0,
        ["A"],
        "DEALLOCATE"
    );
    // DEALLOCATE in the extended protocol and the new Parse in the same batch.
    let again = [
        parse_bind_execute("DEALLOCATE s"),
        parse("s", one, &[]),
        run_s.clone(),
    ]
    .concat();
    assert_eq!(
        raw_summary(&exchange(&mut through, &again).await).0,
        ["a"],
        "DEALLOCATE, extended"
    );
    // Each name of another client's is its own: the same name, another statement.
    let mut other = common::raw_login(&proxy).await;
    let theirs = [parse("s", two, &[]), run_s.clone()].concat();
    assert_eq!(raw_summary(&exchange(&mut other, &theirs).await).0, ["b"]);
    assert_eq!(raw_summary(&exchange(&mut through, &run_s).await).0, ["a"]);
    assert_eq!(raw_summary(&exchange(&mut other, &run_s).await).0, ["b"]);
}

/// #30: foreign tables (postgres_fdw) and dblink read rows PostgreSQL may change with
/// no write pgopt could see (here the remote table is on the same server, changed
/// directly): listed in `cache.tables` or not, behind a view or not, their reads are
/// never served from the cache, in either protocol, and each read has the rows of
/// the moment. A local table in the same setting is cached (so the cache was on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_tables_and_dblink_are_never_served_from_the_cache() {
    let pg = Postgres::start().await.unwrap();
    let remote = format!(
        "host={} port={} dbname=postgres user=postgres",
        pg.host(),
        pg.port()
    );
    pg.psql(&format!(
        "CREATE EXTENSION postgres_fdw; CREATE EXTENSION dblink;
         CREATE TABLE remote (id int PRIMARY KEY, v text); INSERT INTO remote VALUES (1, 'r0');
         CREATE TABLE local (id int PRIMARY KEY, v text); INSERT INTO local VALUES (1, 'l');
         CREATE SERVER here FOREIGN DATA WRAPPER postgres_fdw
           OPTIONS (host '{}', port '{}', dbname 'postgres');
         CREATE USER MAPPING FOR postgres SERVER here OPTIONS (user 'postgres');
         CREATE FOREIGN TABLE ft (id int, v text) SERVER here OPTIONS (table_name 'remote');
         CREATE VIEW fv AS SELECT id, v FROM ft;
         CREATE VIEW dv AS SELECT * FROM dblink('{remote}', 'SELECT id, v FROM remote')
           AS t (id int, v text);",
        pg.host(),
        pg.port()
    ))
    .unwrap();
    let proxy = caching(&pg, &["remote", "local", "ft", "fv", "dv"], |_| {}).await;
    let behind = direct(&pg).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    cached(&proxy, &client, "SELECT v FROM local WHERE id = 1", &["l"]).await;

    let reads = [
        "SELECT v FROM ft WHERE id = 1".to_string(),
        "SELECT v FROM fv WHERE id = 1".to_string(),
        "SELECT v FROM dv WHERE id = 1".to_string(),
        format!(
            "SELECT v FROM dblink('{remote}', 'SELECT id, v FROM remote') AS t (id int, v text) \
             WHERE id = 1"
        ),
    ];
    let before = hits(&proxy).await;
    for round in 1..=3 {
        let now = rows(&behind, "SELECT v FROM remote WHERE id = 1").await;
        for read in &reads {
            for _ in 0..2 {
                assert_eq!(rows(&client, read).await, now, "{read}");
                let extended: String = client.query_one(read.as_str(), &[]).await.unwrap().get(0);
                assert_eq!([extended], now.as_slice(), "{read}, extended");
            }
        }
        run(&behind, &format!("UPDATE remote SET v = 'r{round}'")).await;
    }
    let after = cache_row(&proxy).await;
    assert_eq!(
        counter(&after, "hits"),
        before,
        "a foreign read was served from the cache: {after:?}"
    );
}

/// #31: temporary tables. Transaction mode lets one live only inside a transaction
/// (ON COMMIT DROP; others are refused): named as a cached table, it shadows it there
/// — in an explicit block, in one query string, and in an extended-protocol pipeline
/// under one Sync (one implicit transaction) — and the reads get its rows, not the
/// entry's, nor is what they read stored. Session mode, where temporary tables live
/// on, is never served from the cache: two sessions with a temporary `t` (and a
/// temporary `items`) of their own each read their own rows, and an `ON COMMIT
/// DELETE ROWS` table reads as PostgreSQL has it, inside a transaction and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_tables_are_each_sessions_own_and_never_served_from_the_cache() {
    let pg = Postgres::start().await.unwrap();
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');")
        .unwrap();
    // Database `sess`: the same database, in session mode.
    let proxy = caching(&pg, &["items", "t", "d"], |c| {
        let mut sess = c.databases[0].clone();
        sess.name = "sess".into();
        sess.pool.mode = Some(PoolMode::Session);
        c.databases.push(sess);
    })
    .await;
    let port = proxy.local_addr().port();
    let session = || common::client_at("127.0.0.1", port, "postgres", "sess", None);
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";

    // Transaction mode. (Refused: a temporary table that outlives its transaction.)
    cached(&proxy, &client, read, &["a"]).await;
    assert_eq!(
        error_code(
            &client,
            "CREATE TEMP TABLE d (v text) ON COMMIT DELETE ROWS"
        )
        .await,
        "0A000"
    );
    // A refused statement never ran: its DDL ends no entry.
    served(
        &proxy,
        &client,
        read,
        &["a"],
        "the refused DDL ended entries",
    )
    .await;
    run(
        &client,
        "BEGIN; CREATE TEMP TABLE items ON COMMIT DROP AS SELECT 1 AS id, 'in block'::text AS v",
    )
    .await;
    assert_eq!(rows(&client, read).await, ["in block"]);
    run(&client, "COMMIT").await;
    cached(&proxy, &client, read, &["a"]).await;
    let one_string = format!(
        "CREATE TEMP TABLE items ON COMMIT DROP AS SELECT 1 AS id, 'one string'::text AS v; {read}"
    );
    assert_eq!(rows(&client, &one_string).await, ["one string"]);
    cached(&proxy, &client, read, &["a"]).await;
    let mut raw = common::raw_login(&proxy).await;
    let pipeline = [
        parse_bind_execute(
            "CREATE TEMP TABLE items ON COMMIT DROP AS SELECT 1 AS id, 'pipelined'::text AS v",
        ),
        parse_bind_execute(read),
        common::message(b'S', b""),
    ]
    .concat();
    assert_eq!(
        raw_round(&mut raw, &pipeline, 1).await,
        (strings(&["pipelined"]), "I".to_string()),
        "a pipeline's temporary table"
    );
    assert_eq!(rows(&client, read).await, ["a"], "stored from inside");

    // Session mode: two sessions, each its own temporary tables.
    let (s1, s2) = (session().await.unwrap(), session().await.unwrap());
    for (s, n) in [(&s1, "one"), (&s2, "two")] {
        run(
            s,
            &format!(
                "CREATE TEMP TABLE t (v text); INSERT INTO t VALUES ('{n}');
                 CREATE TEMP TABLE items (id int, v text); INSERT INTO items VALUES (1, 'temp {n}')"
            ),
        )
        .await;
    }
    let before = hits(&proxy).await;
    for _ in 0..2 {
        for (s, n) in [(&s1, "one"), (&s2, "two")] {
            assert_eq!(rows(s, "SELECT v FROM t").await, [n]);
            let extended: String = s.query_one("SELECT v FROM t", &[]).await.unwrap().get(0);
            assert_eq!(extended, n);
            assert_eq!(rows(s, read).await, [format!("temp {n}")]);
        }
    }
    assert_eq!(
        hits(&proxy).await,
        before,
        "a temporary table's read was a hit"
    );
    assert_eq!(rows(&client, read).await, ["a"]);

    // ON COMMIT DELETE ROWS: the rows live to the end of their transaction.
    let d = "SELECT v FROM d";
    let none = Vec::<String>::new();
    run(&s1, "CREATE TEMP TABLE d (v text) ON COMMIT DELETE ROWS").await;
    run(&s1, "BEGIN; INSERT INTO d VALUES ('x')").await;
    assert_eq!(rows(&s1, d).await, ["x"]);
    assert_eq!(rows(&s1, d).await, ["x"]);
    run(&s1, "COMMIT").await;
    assert_eq!(rows(&s1, d).await, none, "after COMMIT");
    run(&s1, "INSERT INTO d VALUES ('y')").await;
    assert_eq!(rows(&s1, d).await, none, "after an INSERT of its own");
    assert_eq!(
        rows(&s1, &format!("INSERT INTO d VALUES ('z'); {d}")).await,
        ["z"]
    );
    assert_eq!(rows(&s1, d).await, none, "after the query string");
    assert_eq!(
        rows(
            &s2,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'd' AND schemaname LIKE 'pg_temp%'"
        )
        .await
        .len(),
        1
    );
    assert_eq!(error_code(&s2, d).await, "42P01", "another session's d");

    // A session after s1 left (its connection reset) has no `t`.
    drop(s1);
    let s3 = session().await.unwrap();
    assert_eq!(error_code(&s3, "SELECT v FROM t").await, "42P01");
    assert_eq!(rows(&s3, read).await, ["a"]);
}

/// The whole reply to `batch` from PostgreSQL itself and through pgopt `times` times:
/// each reply through pgopt must be PostgreSQL's, message for message.
async fn replies_as_postgresql_does(
    direct: &mut tokio::net::TcpStream,
    through: &mut tokio::net::TcpStream,
    batch: &[u8],
    times: usize,
    what: &str,
) -> Vec<(u8, Vec<u8>)> {
    let want = exchange(direct, batch).await;
    for i in 0..times {
        let got = exchange(through, batch).await;
        assert_eq!(readable(&got), readable(&want), "{what}, read {i}");
    }
    want
}

/// #54: a cacheable read whose function raises a NOTICE or a WARNING (an immutable
/// PL/pgSQL function under a built-in's name, cached as the built-in would be, and
/// one behind an operator), and a user function called by its own name: every read
/// through pgopt, the first and the repeated ones, in either protocol, gets the
/// notice as PostgreSQL sends it (the whole reply is PostgreSQL's, byte for byte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_gets_the_notices_and_warnings_postgresql_sends() {
    let (pg, proxy, _behind) = setup(NOISY, &["items"]).await;
    let mut through = common::raw_login(&proxy).await;
    let mut direct = raw_direct(&pg).await;
    let sync = common::message(b'S', b"");
    let warm = [
        parse_bind_execute("SELECT v FROM items WHERE id = 1"),
        sync.clone(),
    ]
    .concat();
    assert_eq!(raw_summary(&exchange(&mut through, &warm).await).0, ["a"]);
    for (read, severity) in [
        ("SELECT length(id) FROM items WHERE id = 1", "NOTICE"),
        ("SELECT id ### 1 FROM items WHERE id = 1", "WARNING"),
        ("SELECT noisy(id) FROM items WHERE id = 1", "NOTICE"),
    ] {
        let simple = common::message(b'Q', format!("{read}\0").as_bytes());
        let extended = [parse_bind_execute(read), sync.clone()].concat();
        for (protocol, batch) in [("simple", simple), ("extended", extended)] {
            let what = format!("{read} ({protocol})");
            let want =
                replies_as_postgresql_does(&mut direct, &mut through, &batch, 3, &what).await;
            // (PostgreSQL's reply has the notice, so the comparison shows it.)
            let notice = want.iter().find(|(tag, _)| *tag == b'N');
            let notice = notice.unwrap_or_else(|| panic!("{what}: no notice: {want:?}"));
            let severity = format!("S{severity}\0");
            assert!(
                notice.1.starts_with(severity.as_bytes()),
                "{what}: {notice:?}"
            );
        }
    }
}

/// Items, and functions that raise a NOTICE or a WARNING: `length(int)` (immutable,
/// under a built-in's name), `###` (an operator over an immutable one), `noisy(int)`.
const NOISY: &str = "
    CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');
    CREATE FUNCTION public.length(int) RETURNS int IMMUTABLE LANGUAGE plpgsql
      AS $$ BEGIN RAISE NOTICE 'length of %', $1; RETURN $1 * 100; END $$;
    CREATE FUNCTION warned(int, int) RETURNS int IMMUTABLE LANGUAGE plpgsql
      AS $$ BEGIN RAISE WARNING 'adding % and %', $1, $2; RETURN $1 + $2; END $$;
    CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = warned);
    CREATE FUNCTION noisy(int) RETURNS int IMMUTABLE LANGUAGE plpgsql
      AS $$ BEGIN RAISE NOTICE 'noisy %', $1; RETURN $1; END $$;";

/// Items 1 'a' and 2 'b'.
const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a'), (2, 'b');";

/// #55: CancelRequests sent for a client's reads served from the cache (some land
/// during a hit, some between two) while the pool's only server connection runs
/// another client's statement: each read is its row or 57014, the other client's
/// statement is not canceled (a cancel of a client with no server connection goes
/// nowhere), and the session goes on: a hit, a write, the write's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_for_a_hit_cancels_nothing_else_and_the_session_goes_on() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(ITEMS).unwrap();
    let proxy = caching(&pg, &["items"], |c| c.default_pool_size = 1).await;
    let watcher = direct(&pg).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let sleeper = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    cached(&proxy, &client, read, &["a"]).await;
    let sleeping =
        tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(2)").await.map(|_| ()) });
    common::wait_until_running(&watcher, "SELECT pg_sleep").await;
    let token = client.cancel_token();
    let before = hits(&proxy).await;
    let mut served = 0;
    for _ in 0..20 {
        let (got, cancel) = tokio::join!(
            try_rows(&client, read),
            token.cancel_query(tokio_postgres::NoTls)
        );
        cancel.unwrap();
        match got {
            Ok(got) => {
                assert_eq!(got, ["a"]);
                served += 1;
            }
            Err(e) => assert_eq!(code(&e), Some("57014"), "{e}"),
        }
    }
    assert!(
        !sleeping.is_finished(),
        "the cancels came after the statement"
    );
    assert_eq!(
        hits(&proxy).await,
        before + served,
        "a read went to PostgreSQL"
    );
    sleeping
        .await
        .unwrap()
        .expect("another client's statement was canceled");
    assert_eq!(rows(&client, read).await, ["a"]);
    run(&client, "UPDATE items SET v = 'after' WHERE id = 1").await;
    assert_eq!(rows(&client, read).await, ["after"]);
}

/// #55: statement_timeout. A hit under it is served; a fill that PostgreSQL cancels
/// for the timeout (it waits on a lock) gives the client 57014 and stores nothing:
/// once the lock is gone, the read has the row committed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_statement_timeout_hits_are_served_and_a_timed_out_fill_stores_nothing() {
    let (pg, proxy, _behind) = setup(ITEMS, &["items"]).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let (read, held) = (
        "SELECT v FROM items WHERE id = 1",
        "SELECT v FROM items WHERE id = 2",
    );
    cached(&proxy, &client, read, &["a"]).await;
    run(&client, "SET statement_timeout = '200ms'").await;
    cached(&proxy, &client, read, &["a"]).await;
    let locker = direct(&pg).await;
    run(&locker, "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE").await;
    let stored = counter(&cache_row(&proxy).await, "stored");
    let e = try_rows(&client, held).await.unwrap_err();
    assert_eq!(code(&e), Some("57014"), "{e}");
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "canceling statement due to statement timeout"
    );
    run(&locker, "UPDATE items SET v = 'b2' WHERE id = 2; COMMIT").await;
    let row = cache_row(&proxy).await;
    assert_eq!(
        counter(&row, "stored"),
        stored,
        "the canceled fill was stored: {row:?}"
    );
    assert_eq!(rows(&client, held).await, ["b2"]);
    run(&client, "RESET statement_timeout").await;
    cached(&proxy, &client, held, &["b2"]).await;
}

/// #55: the client filling a key others wait for cancels its read, or leaves in the
/// middle of it (its fill waits on a lock a direct session holds while it changes
/// the row). The leader gets 57014 (or is gone); each waiter gets the row committed
/// when the lock goes, nothing canceled or half stored is served after, and the pool
/// of two connections serves four clients at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_a_fill_whose_client_cancels_or_leaves_get_the_committed_row() {
    let (pg, proxy, _behind) = setup(ITEMS, &["items"]).await;
    let watcher = direct(&pg).await;
    let held = "SELECT v FROM items WHERE id = 2";
    let reader = connect(&proxy, "postgres", None).await.unwrap();
    cached(&proxy, &reader, "SELECT v FROM items WHERE id = 1", &["a"]).await;
    for (round, leaves) in [(1, false), (2, true)] {
        let new = format!("b{round}");
        // (A write through pgopt ends the last round's entry.)
        run(&reader, "UPDATE items SET v = v WHERE id = 2").await;
        let locker = direct(&pg).await;
        run(
            &locker,
            &format!(
                "BEGIN; UPDATE items SET v = '{new}' WHERE id = 2; \
                 LOCK TABLE items IN ACCESS EXCLUSIVE MODE"
            ),
        )
        .await;
        let (leader, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(proxy.local_addr().port())
            .user("postgres")
            .dbname("app")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let token = leader.cancel_token();
        let leading = tokio::spawn(async move {
            try_rows(&leader, held)
                .await
                .map_err(|e| code(&e).unwrap_or("none").to_string())
        });
        common::wait_until_waiting_on_lock(&watcher, "SELECT v FROM items%").await;
        let mut waiters = Vec::new();
        for _ in 0..2 {
            let waiter = connect(&proxy, "postgres", None).await.unwrap();
            waiters.push(tokio::spawn(async move { rows(&waiter, held).await }));
        }
        // (Nothing to poll: the waiters wait inside pgopt, not on PostgreSQL.)
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "a waiter did not wait"
        );
        if leaves {
            connection.abort();
            leading.abort();
        } else {
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
            assert_eq!(leading.await.unwrap(), Err("57014".to_string()));
        }
        run(&locker, "COMMIT").await;
        for waiter in waiters {
            let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await;
            assert_eq!(
                got.expect("a waiter never got its rows").unwrap(),
                [new.as_str()]
            );
        }
        assert_eq!(rows(&reader, held).await, [new.as_str()], "round {round}");
        cached(&proxy, &reader, held, &[new.as_str()]).await;
    }
    // The pool is whole: four clients at once, each a read and a write.
    let mut clients = Vec::new();
    for i in 0..4 {
        let client = connect(&proxy, "postgres", None).await.unwrap();
        clients.push(async move {
            rows(&client, "SELECT count(*) FROM items").await;
            run(
                &client,
                &format!("UPDATE items SET v = 'w{i}' WHERE id = 1"),
            )
            .await;
        });
    }
    let all = futures_util::future::join_all(clients);
    tokio::time::timeout(std::time::Duration::from_secs(10), all)
        .await
        .expect("the pool did not serve four clients");
    let last = rows(&direct(&pg).await, "SELECT v FROM items WHERE id = 1").await;
    assert_eq!(
        rows(&reader, "SELECT v FROM items WHERE id = 1").await,
        last
    );
}

/// SHOW CACHE's `bytes`, /api/cache's and /metrics' `pgopt_cache_bytes` are within
/// `max` (and SHOW CACHE's `max_bytes` is `max`).
async fn within_limit(proxy: &Proxy, max: u64, what: &str) {
    let row = cache_row(proxy).await;
    assert_eq!(counter(&row, "max_bytes"), max);
    assert!(counter(&row, "bytes") <= max, "{what}: {row:?}");
    let addr = proxy.admin_addr().unwrap();
    let api = common::http_get(addr, "/api/cache").await;
    let (_, body) = api.split_once("\r\n\r\n").unwrap();
    let api: serde_json::Value = serde_json::from_str(body).unwrap();
    let bytes = api[0]["bytes"].as_u64().unwrap_or_else(|| panic!("{api}"));
    assert!(bytes <= max, "{what}: /api/cache {api}");
    let metrics = common::http_get(addr, "/metrics").await;
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgopt_cache_bytes "))
        .unwrap_or_else(|| panic!("no pgopt_cache_bytes: {metrics}"));
    assert!(gauge.parse::<u64>().unwrap() <= max, "{what}: {gauge}");
}

/// #63: a cache with room for little (`cache.max_bytes` 256 kB) under thousands of
/// distinct keys from four clients at once and results from 10 kB to past the limit
/// (260 kB): SHOW CACHE's `bytes`, /api/cache's and /metrics' never pass the limit,
/// entries are evicted and counted, a hot read still hits, and every read — served,
/// filled, or filled again after its entry was evicted, and after a write through
/// pgopt — has PostgreSQL's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cache_stays_within_max_bytes_under_many_keys_and_large_results() {
    const MAX: u64 = 256 << 10;
    const KEYS: usize = 3000;
    let pg = Postgres::start().await.unwrap();
    pg.psql(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, {KEYS}) g;
         CREATE TABLE big (id int PRIMARY KEY, v text);
         INSERT INTO big SELECT g, repeat(chr(96 + g), g * 10000) FROM generate_series(1, 26) g;"
    ))
    .unwrap();
    let proxy = caching(&pg, &["items", "big"], |c| c.cache.max_bytes = MAX).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&proxy, "postgres", None).await.unwrap());
    }
    // Item `id`'s read, and big row `id`'s (its length and first letter).
    let item = |id: usize, suffix: &'static str| {
        (
            format!("SELECT v FROM items WHERE id = {id}"),
            format!("v{id}{suffix}"),
        )
    };
    let big = |id: usize| {
        (
            format!("SELECT length(v), left(v, 1) FROM big WHERE id = {id}"),
            format!("{}|{}", id * 10000, (b'a' + id as u8 - 1) as char),
        )
    };
    let hot = "SELECT v FROM items WHERE id = 1";
    let rounds = 6;
    for pass in 0..2 {
        let suffix = if pass == 0 { "" } else { "!" };
        for round in 0..rounds {
            // A share of the keys, spread over the clients at once.
            let reads = clients.iter().enumerate().map(|(c, client)| async move {
                let per = KEYS / rounds / 4;
                for k in 0..per {
                    let id = 1 + round * KEYS / rounds + c * per + k;
                    let (sql, want) = item(id, if id.is_multiple_of(2) { suffix } else { "" });
                    assert_eq!(rows(client, &sql).await, [want], "pass {pass}");
                }
                for id in (1 + c..=26).step_by(4) {
                    let (sql, want) = big(id);
                    assert_eq!(rows(client, &sql).await, [want], "pass {pass}");
                }
            });
            futures_util::future::join_all(reads).await;
            for _ in 0..3 {
                assert_eq!(rows(&clients[0], hot).await, ["v1"]);
            }
            within_limit(&proxy, MAX, &format!("pass {pass}, round {round}")).await;
        }
        // Every other item changed through pgopt: the second pass must read it.
        if pass == 0 {
            run(
                &clients[1],
                "UPDATE items SET v = v || '!' WHERE id % 2 = 0",
            )
            .await;
        }
    }
    let row = cache_row(&proxy).await;
    assert!(counter(&row, "evictions") > 0, "{row:?}");
    assert!(counter(&row, "hits") > 0, "{row:?}");
    assert!(counter(&row, "entries") > 0, "{row:?}");
    assert!(counter(&row, "stored") > (MAX / 1000), "{row:?}");
}

/// #30: a write through pgopt to a foreign table changes the table it points to (here
/// on the same server, listed in `cache.tables`): it ends every entry, as a write to a
/// table with a trigger does, since where a foreign server writes is not known. (A
/// dblink_exec() is a user function call, which ends every entry too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_foreign_table_ends_the_entries_of_the_table_it_writes() {
    let pg = Postgres::start().await.unwrap();
    let remote = format!(
        "host={} port={} dbname=postgres user=postgres",
        pg.host(),
        pg.port()
    );
    pg.psql(&format!(
        "CREATE EXTENSION postgres_fdw; CREATE EXTENSION dblink;
         CREATE TABLE remote (id int PRIMARY KEY, v text); INSERT INTO remote VALUES (1, 'r0');
         CREATE SERVER here FOREIGN DATA WRAPPER postgres_fdw
           OPTIONS (host '{}', port '{}', dbname 'postgres');
         CREATE USER MAPPING FOR postgres SERVER here OPTIONS (user 'postgres');
         CREATE FOREIGN TABLE ft (id int, v text) SERVER here OPTIONS (table_name 'remote');",
        pg.host(),
        pg.port()
    ))
    .unwrap();
    let proxy = caching(&pg, &["remote", "ft"], |_| {}).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let writer = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM remote WHERE id = 1";
    // dblink_exec() through pgopt: the next read has its row.
    cached(&proxy, &client, read, &["r0"]).await;
    run(
        &writer,
        &format!("SELECT dblink_exec('{remote}', 'UPDATE remote SET v = ''via dblink''')"),
    )
    .await;
    assert_eq!(rows(&client, read).await, ["via dblink"], "dblink_exec");
    // An UPDATE and an INSERT through the foreign table, through pgopt.
    cached(&proxy, &client, read, &["via dblink"]).await;
    let count = "SELECT count(*) FROM remote";
    cached(&proxy, &client, count, &["1"]).await;
    run(&writer, "UPDATE ft SET v = 'via ft' WHERE id = 1").await;
    run(&writer, "INSERT INTO ft VALUES (2, 'two')").await;
    assert_eq!(
        (rows(&client, read).await, rows(&client, count).await),
        (strings(&["via ft"]), strings(&["2"])),
        "the remote table's entries outlived writes through the foreign table"
    );
}

/// #54: `client_min_messages` decides whether a reply holds a notice, so it is in the
/// cache's key. A session that set it to `warning` fills the entry of a read whose
/// function raises a NOTICE with a reply that has none; a session at the default does
/// not get that entry, but the NOTICE PostgreSQL sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_filled_with_notices_turned_off_is_not_served_without_them() {
    let (pg, proxy, _behind) = setup(NOISY, &["items"]).await;
    let sync = common::message(b'S', b"");
    let warm = [
        parse_bind_execute("SELECT v FROM items WHERE id = 1"),
        sync.clone(),
    ]
    .concat();
    let mut quiet = common::raw_login(&proxy).await;
    assert_eq!(raw_summary(&exchange(&mut quiet, &warm).await).0, ["a"]);
    let set = common::message(b'Q', b"SET client_min_messages = warning\0");
    assert_eq!(raw_summary(&exchange(&mut quiet, &set).await).1, "I");
    let mut through = common::raw_login(&proxy).await;
    let mut direct = raw_direct(&pg).await;
    for read in [
        "SELECT length(id) FROM items WHERE id = 1",
        "SELECT length(id) + 0 FROM items WHERE id = 1",
    ] {
        let simple = common::message(b'Q', format!("{read}\0").as_bytes());
        // The quiet session's fill: no notice (as PostgreSQL, for that session).
        let filled = exchange(&mut quiet, &simple).await;
        assert!(filled.iter().all(|(tag, _)| *tag != b'N'), "{filled:?}");
        // A session at the default gets the NOTICE from PostgreSQL.
        replies_as_postgresql_does(&mut direct, &mut through, &simple, 2, read).await;
    }
}

/// #19, the fill/invalidate race on a real server: a slow read (a scan of half a
/// million rows) takes its snapshot, a write through pgopt commits while it runs, and
/// the read returns the old count, as PostgreSQL must. pgopt took the table's version
/// before the read ran, so that result is never served: the next reads have the new
/// count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fill_a_commit_overtakes_is_not_stored() {
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE big (id int, v text);
         INSERT INTO big SELECT g, 'x' FROM generate_series(1, 500000) g;",
        &["big"],
    )
    .await;
    let slow = "SELECT count(*) FROM big WHERE md5(v || id) <> ''";
    let writer = connect(&proxy, "postgres", None).await.unwrap();
    let mut count = 500_000;
    // A round whose write landed before the read's snapshot proves nothing: again.
    for _ in 0..5 {
        let reader = connect(&proxy, "postgres", None).await.unwrap();
        let read = tokio::spawn(async move { rows(&reader, slow).await });
        // The read is running on the server (its snapshot taken) — unless it was
        // served from the cache (an earlier round's fill): then this round proves
        // nothing, and its write ends that entry.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let ran = loop {
            let running = rows(
                &behind,
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE 'SELECT count(*) FROM big WHERE md5%'",
            )
            .await;
            if running == ["1"] {
                break true;
            }
            if read.is_finished() {
                break false;
            }
            assert!(std::time::Instant::now() < deadline, "the read never ran");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        };
        run(&writer, "INSERT INTO big VALUES (0, 'y')").await;
        count += 1;
        let read = read.await.unwrap();
        if !ran {
            continue;
        }
        if read == [(count - 1).to_string()] {
            // Never served. (It may have been stored, if its result reached pgopt
            // before the writer's commit did on a busy machine: the commit's
            // invalidation then ends it.)
            let reader = connect(&proxy, "postgres", None).await.unwrap();
            for _ in 0..2 {
                assert_eq!(
                    rows(&reader, slow).await,
                    [count.to_string()],
                    "{:?}",
                    cache_row(&proxy).await
                );
            }
            return;
        }
        assert_eq!(read, [count.to_string()]);
    }
    panic!("the write never committed while the read ran");
}

/// #15: savepoints. Inside a transaction nothing is served from the cache; a write
/// rolled back to a savepoint and one kept both give PostgreSQL's answers there, and
/// after COMMIT the kept one is read, not the entry from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_rolled_back_or_kept_read_as_postgresql_does() {
    let (_pg, proxy, _behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');",
        &["items"],
    )
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    cached(&proxy, &client, read, &["a"]).await;
    let before = hits(&proxy).await;
    run(
        &client,
        "BEGIN; SAVEPOINT s; UPDATE items SET v = 'undone' WHERE id = 1",
    )
    .await;
    assert_eq!(rows(&client, read).await, ["undone"]);
    run(&client, "ROLLBACK TO SAVEPOINT s").await;
    assert_eq!(rows(&client, read).await, ["a"]);
    run(
        &client,
        "SAVEPOINT t; UPDATE items SET v = 'kept' WHERE id = 1; RELEASE t",
    )
    .await;
    assert_eq!(rows(&client, read).await, ["kept"]);
    // A failed statement, rolled back to its savepoint: the transaction goes on.
    run(&client, "SAVEPOINT u").await;
    assert_eq!(error_code(&client, "SELECT 1/0 FROM items").await, "22012");
    run(&client, "ROLLBACK TO SAVEPOINT u").await;
    assert_eq!(rows(&client, read).await, ["kept"]);
    assert_eq!(hits(&proxy).await, before, "served inside the transaction");
    run(&client, "COMMIT").await;
    cached(&proxy, &client, read, &["kept"]).await;
}

/// #26: a procedure called with CALL that writes a cached table ends its entries, as a
/// function call or a DO block does (what it writes is not known here: everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_procedure_called_with_call_ends_what_it_writes() {
    let (_pg, proxy, _behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');
         CREATE PROCEDURE set_v(t text) LANGUAGE sql AS $$ UPDATE items SET v = t WHERE id = 1 $$;",
        &["items"],
    )
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let writer = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    cached(&proxy, &client, read, &["a"]).await;
    run(&writer, "CALL set_v('called')").await;
    assert_eq!(rows(&client, read).await, ["called"]);
    // In the extended protocol too.
    cached(&proxy, &client, read, &["called"]).await;
    writer.execute("CALL set_v($1)", &[&"bound"]).await.unwrap();
    assert_eq!(rows(&client, read).await, ["bound"]);
}

/// #49: simple-protocol hits are PostgreSQL's reply byte for byte — RowDescription
/// (names, type OIDs and modifiers, formats), every DataRow with NULLs and
/// multi-row results, CommandComplete's tag — and confirmed served from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_hits_are_postgresqls_reply_byte_for_byte() {
    let (pg, proxy, _behind) = setup(
        "CREATE TABLE wide (id int PRIMARY KEY, name varchar(20), price numeric(10,2),
           at timestamptz, tags text[], doc jsonb, note text);
         INSERT INTO wide VALUES
           (1, 'one', 1.50, '2024-01-01 00:00:00+00', '{a,b}', '{\"k\": 1}', NULL),
           (2, 'two', NULL, NULL, '{}', '[]', 'x'),
           (3, '', 0, '2024-02-29 12:34:56.789+00', NULL, 'null', '');",
        &["wide"],
    )
    .await;
    let mut direct = raw_direct(&pg).await;
    let mut through = common::raw_login(&proxy).await;
    for read in [
        "SELECT * FROM wide ORDER BY id",
        "SELECT id AS \"Id\", price * 2 AS doubled, tags[1] FROM wide WHERE id > 1 ORDER BY id",
        "SELECT count(*), max(at) FROM wide",
        "SELECT * FROM wide WHERE id = 99",
    ] {
        let query = common::message(b'Q', format!("{read}\0").as_bytes());
        let before = hits(&proxy).await;
        replies_as_postgresql_does(&mut direct, &mut through, &query, 3, read).await;
        assert!(
            hits(&proxy).await > before,
            "{read}: never served from the cache"
        );
    }
}

/// #2: views whose rows depend on who reads them — filtering on current_user, or
/// owned by a role whose privileges differ — give each user its own rows, never
/// another's from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_that_filter_on_the_reader_give_each_user_its_own_rows() {
    let (_pg, proxy, _behind) = setup(
        "CREATE TABLE notes (owner text, body text);
         INSERT INTO notes VALUES ('alice', 'a1'), ('bob', 'b1');
         CREATE VIEW mine AS SELECT body FROM notes WHERE owner = current_user;
         CREATE VIEW mine_too AS SELECT body FROM notes WHERE owner = session_user;
         CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
         GRANT SELECT ON notes, mine, mine_too TO alice, bob;",
        &["notes", "mine", "mine_too"],
    )
    .await;
    let alice = connect(&proxy, "alice", None).await.unwrap();
    let bob = connect(&proxy, "bob", None).await.unwrap();
    let before = hits(&proxy).await;
    for read in [
        "SELECT body FROM mine",
        "SELECT body FROM mine_too",
        // (Not a view: cached, the user in its key.)
        "SELECT body FROM notes WHERE owner = current_user",
    ] {
        for _ in 0..3 {
            assert_eq!(rows(&alice, read).await, ["a1"], "{read}");
            assert_eq!(rows(&bob, read).await, ["b1"], "{read}");
        }
    }
    assert!(
        hits(&proxy).await > before,
        "nothing was served from the cache"
    );
}

/// A Parse of a name the client already has is refused (42P05), and a Parse after an
/// error in its batch is skipped: either way the name keeps its statement, so a Bind
/// of it runs the old statement — here a write — and invalidates what that writes, not
/// what the refused text would have (found by the differential cache run). So for the
/// unnamed statement (kept from batch to batch until replaced) and in session mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_of_a_name_a_refused_parse_did_not_change_invalidates_what_it_writes() {
    let pg = Postgres::start().await.unwrap();
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');")
        .unwrap();
    // Database `sess`: the same database, in session mode (not served from the cache,
    // but what its clients write ends what `app`'s clients read).
    let proxy = caching(&pg, &["items"], |c| {
        let mut sess = c.databases[0].clone();
        sess.name = "sess".into();
        sess.pool.mode = Some(PoolMode::Session);
        c.databases.push(sess);
    })
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT count(*) FROM items";
    let sync = common::message(b'S', b"");
    let mut id = 1;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        for name in ["w", ""] {
            let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
                .await
                .unwrap();
            let database = if mode == PoolMode::Session {
                "sess"
            } else {
                "app"
            };
            let body = format!("\0\x03\0\0user\0postgres\0database\0{database}\0\0");
            let startup = [
                &((body.len() + 4) as i32).to_be_bytes()[..],
                body.as_bytes(),
            ];
            raw_round(&mut raw, &startup.concat(), 1).await;
            let prepare = [
                parse(name, "INSERT INTO items VALUES ($1::int, 'w')", &[]),
                sync.clone(),
            ]
            .concat();
            assert_eq!(raw_summary(&exchange(&mut raw, &prepare).await).1, "I");
            let close = common::message(b'C', format!("S{name}\0").as_bytes());
            let bad = parse("bad", "SELECT * FROM no_such_table", &[]);
            let select = [parse(name, "SELECT 2", &[]), sync.clone()].concat();
            // Each case: what is sent (and answered) first, then what is sent ahead of
            // the Bind running the name, pipelined with it.
            let mut cases = vec![
                // A Close and a Parse skipped after an error earlier in their batch.
                (
                    "skipped",
                    [bad.clone(), close, select.clone()].concat(),
                    vec![],
                ),
                // A Parse skipped, pipelined ahead of the Bind: the Bind is relayed
                // before the error comes back.
                (
                    "skipped, the Bind pipelined",
                    vec![],
                    [bad.clone(), select.clone()].concat(),
                ),
            ];
            if name.is_empty() {
                // A read in the unnamed statement, and a Parse of the write pipelined
                // ahead of the Bind, not answered yet when the Bind is relayed.
                cases.push(("parsed again ahead of the Bind", select, prepare.clone()));
            } else {
                // A name the client has.
                let refused = [parse(name, "SELECT 1", &[]), sync.clone()].concat();
                cases.insert(0, ("refused", refused, vec![]));
            }
            for (what, first, ahead) in cases {
                let what = format!("{mode:?}, statement {name:?}, {what}");
                id += 1;
                cached(&proxy, &client, read, &[&(id - 1).to_string()]).await;
                let mut statuses = String::new();
                if !first.is_empty() {
                    statuses += &raw_round(&mut raw, &first, 1).await.1;
                }
                let run = [
                    bind(name, &[&id.to_string()], &[]),
                    common::message(b'E', b"\0\0\0\0\0"),
                    sync.clone(),
                ]
                .concat();
                let replies = 1 + usize::from(!ahead.is_empty());
                statuses += &raw_round(&mut raw, &[ahead, run].concat(), replies).await.1;
                // (In transaction mode the unnamed statement's Bind, pipelined behind a
                // Parse of it that is skipped, waits for the Parse's answer, then runs
                // the statement from before as PostgreSQL does. Before, pgopt prepared
                // the skipped text again and the Bind failed.)
                if what.ends_with("ahead of the Bind") {
                    assert_eq!(statuses, "III", "{what}");
                } else {
                    assert_eq!(statuses, "!II", "{what}");
                }
                assert_eq!(rows(&client, read).await, [id.to_string()], "{what}");
            }
        }
    }
}

/// A locale PostgreSQL accepts for lc_monetary and lc_numeric whose to_char() and
/// money output differ from the C locale's, if the machine has one (the test then
/// compares values too); else `POSIX`, accepted and alike, so that only the hit
/// counters show whether the setting is in the key.
async fn another_locale(direct: &Client, read: &str) -> (String, bool) {
    let c = rows(direct, read).await;
    for name in [
        "de_DE.UTF-8",
        "de_DE.utf8",
        "fr_FR.UTF-8",
        "fr_FR.utf8",
        "nl_NL.UTF-8",
        "sv_SE.UTF-8",
    ] {
        let set = format!("SET lc_monetary = '{name}'; SET lc_numeric = '{name}'");
        let ok = direct.batch_execute(&set).await.is_ok();
        let theirs = if ok { rows(direct, read).await } else { vec![] };
        run(direct, "RESET lc_monetary; RESET lc_numeric").await;
        if ok && theirs != c {
            return (name.to_string(), true);
        }
    }
    ("POSIX".to_string(), false)
}

/// #4: lc_monetary and lc_numeric change what to_char() and money print, and
/// client_encoding the bytes of the same text: a read cached under one is never
/// served to a session under another (by SET, SET LOCAL inside a block, or a start-up
/// parameter), each gets what PostgreSQL gives under its settings, and once a SET
/// LOCAL's block ends the session reads under its own settings again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monetary_numeric_and_encoding_settings_each_get_their_own_entries() {
    let (pg, proxy, behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text, n numeric);
         INSERT INTO items VALUES (1, 'café', 1234.5);",
        &["items"],
    )
    .await;
    let read = "SELECT to_char(n, 'L9G999D99'), n::money, to_char(n, '9G999D99') \
                FROM items WHERE id = 1";
    let (locale, differs) = another_locale(&behind, read).await;
    let set = format!("SET lc_monetary = '{locale}'; SET lc_numeric = '{locale}'");
    let in_c = rows(&behind, read).await;
    run(&behind, &set).await;
    let in_other = rows(&behind, read).await;
    if differs {
        assert_ne!(in_c, in_other);
    } else {
        eprintln!("no locale beyond C here: only the hit counters show the key");
    }
    let plain = connect(&proxy, "postgres", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let in_c: Vec<&str> = in_c.iter().map(String::as_str).collect();
    cached(&proxy, &plain, read, &in_c).await;
    run(&other, &set).await;
    let before = hits(&proxy).await;
    assert_eq!(rows(&other, read).await, in_other, "{locale}");
    assert_eq!(hits(&proxy).await, before, "{locale}: served the C entry");
    let in_other: Vec<&str> = in_other.iter().map(String::as_str).collect();
    cached(&proxy, &other, read, &in_other).await;
    assert_eq!(rows(&plain, read).await, in_c, "C after {locale}'s entry");
    // SET LOCAL in a block: PostgreSQL's answer under it, then the session's own
    // settings once the block ends (committed or rolled back).
    let local = format!("SET LOCAL lc_monetary = '{locale}'; SET LOCAL lc_numeric = '{locale}'");
    for end in ["COMMIT", "ROLLBACK"] {
        for block in ["BEGIN", "BEGIN READ ONLY"] {
            run(&plain, block).await;
            run(&plain, &local).await;
            let before = hits(&proxy).await;
            assert_eq!(rows(&plain, read).await, in_other, "{block}, SET LOCAL");
            assert_eq!(hits(&proxy).await, before, "{block}: served from the cache");
            run(&plain, end).await;
            assert_eq!(rows(&plain, read).await, in_c, "after {block} … {end}");
            assert_eq!(rows(&other, read).await, in_other, "{block} … {end}");
        }
    }

    // client_encoding: the same read of 'café' under UTF8 and LATIN1 (SET, or a
    // start-up parameter) gets each PostgreSQL's bytes.
    let text = common::message(b'Q', b"SELECT v, n FROM items WHERE id = 1\0");
    let latin1 = common::message(b'Q', b"SET client_encoding = 'LATIN1'\0");
    let mut utf8_direct = raw_direct(&pg).await;
    let mut latin1_direct = raw_direct(&pg).await;
    exchange(&mut latin1_direct, &latin1).await;
    let utf8_reply = exchange(&mut utf8_direct, &text).await;
    let latin1_reply = exchange(&mut latin1_direct, &text).await;
    assert_eq!(raw_summary(&utf8_reply).0, ["caf\u{e9}"]);
    assert_ne!(utf8_reply, latin1_reply);
    let mut utf8_through = common::raw_login(&proxy).await;
    let mut latin1_through = common::raw_login(&proxy).await;
    exchange(&mut latin1_through, &latin1).await;
    let mut started_latin1 = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let body = b"\0\x03\0\0user\0postgres\0database\0app\0client_encoding\0LATIN1\0\0";
    let startup = [&((body.len() + 4) as i32).to_be_bytes()[..], &body[..]].concat();
    raw_round(&mut started_latin1, &startup, 1).await;
    for round in 0..3 {
        for (raw, want, what) in [
            (&mut utf8_through, &utf8_reply, "UTF8"),
            (&mut latin1_through, &latin1_reply, "LATIN1"),
            (&mut started_latin1, &latin1_reply, "LATIN1 at start-up"),
        ] {
            // (pgopt may relay a ParameterStatus of the client's own encoding, set
            // again on a server connection another client had: never another's.)
            let mut got = exchange(raw, &text).await;
            got.retain(|(tag, body)| {
                let own = format!(
                    "client_encoding\0{}\0",
                    &what[..what.find(' ').unwrap_or(what.len())]
                );
                *tag != b'S' || {
                    assert_eq!(
                        body.escape_ascii().to_string(),
                        own.as_bytes().escape_ascii().to_string(),
                        "{what}"
                    );
                    false
                }
            });
            assert_eq!(readable(&got), readable(want), "{what}, read {round}");
        }
    }
    assert_eq!(
        rows(&plain, "SELECT v FROM items WHERE id = 1").await,
        ["café"]
    );
}

/// A table `t` of four columns and two rows, for the ALTER TABLE tests.
const SHAPED: &str = "DROP TABLE IF EXISTS t;
     CREATE TABLE t (id int PRIMARY KEY, a text, b int, c text);
     INSERT INTO t VALUES (1, 'x', 10, 'c1'), (2, 'y', 20, 'c2');";

/// `SELECT * FROM t` in the simple protocol, and in the extended one with a Describe
/// of its portal: through pgopt twice, each reply PostgreSQL's byte for byte
/// (RowDescription's names and types, the rows), and the second a hit.
async fn star_as_postgresql_gives_it(
    proxy: &Proxy,
    direct: &mut tokio::net::TcpStream,
    through: &mut tokio::net::TcpStream,
    what: &str,
) {
    let read = "SELECT * FROM t ORDER BY id";
    let simple = common::message(b'Q', format!("{read}\0").as_bytes());
    let extended = [
        parse("", read, &[]),
        bind("", &[], &[]),
        describe_execute_sync(),
    ]
    .concat();
    for (batch, protocol) in [(simple, "simple"), (extended, "extended")] {
        let want = exchange(direct, &batch).await;
        let got = exchange(through, &batch).await;
        assert_eq!(readable(&got), readable(&want), "{what}, {protocol}");
        let before = hits(proxy).await;
        let got = exchange(through, &batch).await;
        assert_eq!(readable(&got), readable(&want), "{what}, {protocol}, again");
        assert_eq!(
            hits(proxy).await,
            before + 1,
            "{what}, {protocol}: not served from the cache"
        );
    }
}

/// #35: ALTER TABLE DROP COLUMN, RENAME COLUMN, ALTER COLUMN TYPE (with new values)
/// and SET DEFAULT, through pgopt and then made directly on PostgreSQL with
/// `cache.ddl_listener`: each `SELECT * FROM t` read through pgopt after it — its
/// entry from before the change cached — has PostgreSQL's RowDescription and rows in
/// the new shape, byte for byte, in the simple and the extended protocol.
///
/// #35 and #41's (S) part: what changes no result — CREATE, ALTER, REINDEX and DROP
/// INDEX, CLUSTER, extended statistics — ends nothing, through pgopt or made
/// directly (the listener is not told). Before, each ended the table's entries
/// through pgopt, and every entry made directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_select_star_has_the_shape_an_alter_table_gave() {
    let (pg, proxy, behind) = setup(SHAPED, &["t"]).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let mut direct = raw_direct(&pg).await;
    let mut through = common::raw_login(&proxy).await;
    // (The first cacheable read has the catalog read.)
    rows(&client, "SELECT id FROM t").await;
    star_as_postgresql_gives_it(&proxy, &mut direct, &mut through, "at first").await;
    let changes = [
        "ALTER TABLE t DROP COLUMN c",
        "ALTER TABLE t RENAME COLUMN a TO renamed",
        "ALTER TABLE t ALTER COLUMN b TYPE text USING (b * 2)::text",
        "ALTER TABLE t ALTER COLUMN renamed SET DEFAULT 'dflt'",
    ];
    for ddl in changes {
        run(&client, ddl).await;
        star_as_postgresql_gives_it(&proxy, &mut direct, &mut through, ddl).await;
    }
    let read = "SELECT id FROM t ORDER BY id";
    let ids = rows(&client, read).await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    cached(&proxy, &client, read, &ids).await;
    for maintenance in NO_RESULT_CHANGES {
        run(&client, maintenance).await;
        let what = format!("{maintenance}: the entry ended");
        served(&proxy, &client, read, &ids, &what).await;
    }
    // The default is PostgreSQL's for a row written after it.
    run(&client, "INSERT INTO t (id, b) VALUES (3, '60')").await;
    assert_eq!(
        rows(&client, "SELECT * FROM t WHERE id = 3").await,
        ["3|dflt|60"]
    );
    star_as_postgresql_gives_it(&proxy, &mut direct, &mut through, "the insert").await;
    drop((client, through, proxy));

    // The same changes made directly on PostgreSQL, heard by the schema change
    // listener of a proxy that caches `t`.
    behind.batch_execute(SHAPED).await.unwrap();
    let proxy = caching(&pg, &["t"], |c| c.cache.ddl_listener = true).await;
    let listening = common::wait_for_cache(&proxy, "listening for schema changes", |r| {
        r["ddl"] == "listening"
    })
    .await;
    let mut heard = common::counter(&listening, "ddl_changes");
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let mut through = common::raw_login(&proxy).await;
    rows(&client, "SELECT id FROM t").await;
    star_as_postgresql_gives_it(&proxy, &mut direct, &mut through, "at first, listening").await;
    for ddl in changes {
        behind.batch_execute(ddl).await.unwrap();
        let row = common::wait_for_cache(&proxy, "hearing the change", |r| {
            common::counter(r, "ddl_changes") > heard
        })
        .await;
        heard = common::counter(&row, "ddl_changes");
        let what = format!("{ddl}, made directly");
        star_as_postgresql_gives_it(&proxy, &mut direct, &mut through, &what).await;
    }
    // Made directly, they notify nothing: the next notification heard is the ALTER's
    // after them (notifications come in commit order), and the entry lives until it.
    rows(&client, read).await;
    cached(&proxy, &client, read, &ids).await;
    for maintenance in NO_RESULT_CHANGES {
        behind.batch_execute(maintenance).await.unwrap();
    }
    let before = hits(&proxy).await;
    assert_eq!(rows(&client, read).await, strings(&ids));
    behind
        .batch_execute("ALTER TABLE t ADD COLUMN z int")
        .await
        .unwrap();
    let row = common::wait_for_cache(&proxy, "hearing the ALTER", |r| {
        common::counter(r, "ddl_changes") > heard
    })
    .await;
    assert_eq!(
        common::counter(&row, "ddl_changes"),
        heard + 1,
        "only the ALTER was heard"
    );
    assert!(hits(&proxy).await > before, "served until the ALTER");
}

/// An event trigger of the database's own runs its function at DDL — here an audit
/// log's INSERT: DDL through pgopt then ends what may read that log, whatever table
/// the DDL named (an index made, a column added), and the schema change listener
/// hears an index made directly too. Before, the log's cached count was served
/// unchanged (the ALTER since the cache began, the index since DDL that changes no
/// result ends nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_through_pgopt_ends_what_an_event_trigger_may_write() {
    let schema = "CREATE TABLE ddl_log (id serial, tag text);
        CREATE TABLE t (id int PRIMARY KEY, b int);
        CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
          $$ BEGIN INSERT INTO ddl_log (tag) VALUES (tg_tag); END $$;
        CREATE EVENT TRIGGER audit ON ddl_command_end EXECUTE FUNCTION log_ddl();";
    let (pg, proxy, behind) = setup(schema, &["ddl_log", "t"]).await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let read = "SELECT count(*) FROM ddl_log";
    let mut logged = 0;
    for ddl in [
        "CREATE INDEX t_b ON t (b)",
        "ALTER TABLE t ADD COLUMN z int",
        "CREATE STATISTICS t_s ON id, b FROM t",
    ] {
        cached(&proxy, &client, read, &[&logged.to_string()]).await;
        run(&client, ddl).await;
        logged += 1;
        assert_eq!(rows(&client, read).await, [logged.to_string()], "{ddl}");
    }
    drop((client, proxy));

    // Made directly, heard by the schema change listener: the event trigger's write
    // too, though an index alone would end nothing.
    let proxy = caching(&pg, &["ddl_log", "t"], |c| c.cache.ddl_listener = true).await;
    let listening = common::wait_for_cache(&proxy, "listening for schema changes", |r| {
        r["ddl"] == "listening"
    })
    .await;
    let heard = common::counter(&listening, "ddl_changes");
    let client = connect(&proxy, "postgres", None).await.unwrap();
    // (The listener's own set-up logged its CREATE SCHEMA, FUNCTION and COMMENT.)
    let logged: u64 = rows(&client, read).await[0].parse().unwrap();
    cached(&proxy, &client, read, &[&logged.to_string()]).await;
    behind
        .batch_execute("CREATE INDEX t_id_b ON t (id, b)")
        .await
        .unwrap();
    common::wait_for_cache(&proxy, "hearing the index", |r| {
        common::counter(r, "ddl_changes") > heard
    })
    .await;
    assert_eq!(rows(&client, read).await, [(logged + 1).to_string()]);
}

/// Statements that change no row and no query's result (#35, #41): run on `t` of
/// [`SHAPED`] after the ALTERs above, each ends no cached entry.
const NO_RESULT_CHANGES: [&str; 8] = [
    "CREATE INDEX t_b ON t (b)",
    "CREATE UNIQUE INDEX CONCURRENTLY t_id ON t (id)",
    "ALTER INDEX t_b SET (fillfactor = 70)",
    "REINDEX TABLE t",
    "CLUSTER t USING t_id",
    "CREATE STATISTICS t_stats ON id, b FROM t",
    "DROP STATISTICS t_stats",
    "DROP INDEX t_b",
];

/// #39: DROP SCHEMA … CASCADE through pgopt (and made directly, heard by the schema
/// change listener) of a schema whose table was cached, by its qualified name and
/// through search_path: reads fail with 42P01 as PostgreSQL says, and the schema and
/// table made again directly, with other rows, are read afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_schemas_tables_are_not_served_and_made_again_are_read_afresh() {
    let schema = "DROP SCHEMA IF EXISTS s CASCADE; CREATE SCHEMA s;
                  CREATE TABLE s.t (id int PRIMARY KEY, v text);
                  INSERT INTO s.t VALUES (1, 'old');";
    let (pg, proxy, behind) = setup(schema, &["t"]).await;
    for listening in [false, true] {
        let proxy = if listening {
            behind.batch_execute(schema).await.unwrap();
            let proxy = caching(&pg, &["t"], |c| c.cache.ddl_listener = true).await;
            common::wait_for_cache(&proxy, "listening for schema changes", |r| {
                r["ddl"] == "listening"
            })
            .await;
            proxy
        } else {
            caching(&pg, &["t"], |_| {}).await
        };
        let qualified = connect(&proxy, "postgres", None).await.unwrap();
        let pathed = connect(&proxy, "postgres", None).await.unwrap();
        run(&pathed, "SET search_path = s, public").await;
        let (by_name, by_path) = ("SELECT v FROM s.t", "SELECT v FROM t");
        cached(&proxy, &qualified, by_name, &["old"]).await;
        cached(&proxy, &pathed, by_path, &["old"]).await;
        let drop = "DROP SCHEMA s CASCADE";
        if listening {
            let heard = common::counter(&cache_row(&proxy).await, "ddl_changes");
            behind.batch_execute(drop).await.unwrap();
            common::wait_for_cache(&proxy, "hearing the DROP SCHEMA", |r| {
                common::counter(r, "ddl_changes") > heard
            })
            .await;
        } else {
            run(&qualified, drop).await;
        }
        let what = if listening {
            "made directly"
        } else {
            "through pgopt"
        };
        assert_eq!(error_code(&qualified, by_name).await, "42P01", "{what}");
        assert_eq!(error_code(&pathed, by_path).await, "42P01", "{what}");
        behind
            .batch_execute(
                "CREATE SCHEMA s; CREATE TABLE s.t (id int PRIMARY KEY, v text);
                 INSERT INTO s.t VALUES (1, 'new');",
            )
            .await
            .unwrap();
        if listening {
            // (The CREATEs are heard too; the reads below may be misses till then.)
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(rows(&qualified, by_name).await, ["new"], "{what}");
        assert_eq!(rows(&pathed, by_path).await, ["new"], "{what}");
    }
    drop(proxy);
}

/// #39: ALTER DATABASE … SET search_path and ALTER ROLE … SET search_path through
/// pgopt, once their reads were cached: a session that begins after it reads the
/// table the new default names, as a new session of PostgreSQL's does. And DROP
/// DATABASE … WITH (FORCE) through pgopt of another database pgopt caches: its reads
/// fail, and once it is made again with other rows (made directly), they are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_defaults_and_a_database_made_again_are_read_afresh() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'public');
         CREATE SCHEMA other; CREATE TABLE other.items (id int PRIMARY KEY, v text);
         INSERT INTO other.items VALUES (1, 'other');
         CREATE ROLE alice LOGIN; GRANT USAGE ON SCHEMA other TO alice;
         GRANT SELECT ON items, other.items TO alice;",
    )
    .unwrap();
    pg.psql("CREATE DATABASE db2").unwrap();
    let db2 =
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'db2')";
    let second = || async {
        let url = pg.url("db2");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    };
    second().await.batch_execute(db2).await.unwrap();
    let proxy = caching(&pg, &["items"], |c| {
        let mut app2 = c.databases[0].clone();
        app2.name = "app2".into();
        app2.dbname = "db2".into();
        c.databases.push(app2);
    })
    .await;
    let port = proxy.local_addr().port();
    let read = "SELECT v FROM items WHERE id = 1";
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let alice = connect(&proxy, "alice", None).await.unwrap();
    cached(&proxy, &client, read, &["public"]).await;
    cached(&proxy, &alice, read, &["public"]).await;

    run(
        &client,
        "ALTER DATABASE postgres SET search_path = other, public",
    )
    .await;
    let later = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(rows(&direct(&pg).await, read).await, ["other"]);
    for _ in 0..2 {
        assert_eq!(rows(&later, read).await, ["other"], "ALTER DATABASE");
    }
    run(&client, "ALTER DATABASE postgres RESET search_path").await;
    run(&client, "ALTER ROLE alice SET search_path = other, public").await;
    let alice_later = connect(&proxy, "alice", None).await.unwrap();
    let postgres_later = connect(&proxy, "postgres", None).await.unwrap();
    for _ in 0..2 {
        assert_eq!(rows(&alice_later, read).await, ["other"], "ALTER ROLE");
        assert_eq!(rows(&postgres_later, read).await, ["public"], "ALTER ROLE");
    }

    // DROP DATABASE of the database `app2` reaches.
    let app2 = common::client_at("127.0.0.1", port, "postgres", "app2", None)
        .await
        .unwrap();
    cached(&proxy, &app2, read, &["db2"]).await;
    run(&client, "DROP DATABASE db2 WITH (FORCE)").await;
    let gone = common::client_at("127.0.0.1", port, "postgres", "app2", None).await;
    if let Ok(gone) = gone {
        let got = try_rows(&gone, read).await;
        assert!(got.is_err(), "a read of a dropped database: {got:?}");
    }
    run(&client, "CREATE DATABASE db2").await;
    let db2 = db2.replace("'db2'", "'db2 again'");
    second().await.batch_execute(&db2).await.unwrap();
    // (The failed reads above may have the pool wait out its backoff first: 08006
    // "server is down … retries in" until then.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let app2 = loop {
        match common::client_at("127.0.0.1", port, "postgres", "app2", None).await {
            Ok(app2) if try_rows(&app2, "SELECT 1").await.is_ok() => break app2,
            other => {
                let error = other.err().map(|e| e.to_string());
                assert!(std::time::Instant::now() < deadline, "{error:?}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(rows(&direct(&pg).await, read).await, ["public"]);
    for _ in 0..2 {
        assert_eq!(rows(&app2, read).await, ["db2 again"], "DROP DATABASE");
    }
}

/// #42, #43, #45: reads of a cached table that also read the clock, chance, the
/// session or the transaction are never served from the cache nor stored, in either
/// protocol: each read has the row as PostgreSQL has it now (changed behind pgopt's
/// back before every read), SHOW CACHE's hits and stored do not move, and values that
/// change from one statement to the next (the clock, random(), a new transaction id)
/// change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_the_clock_chance_and_the_session_are_never_cached() {
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items VALUES (1, 'v0');
         CREATE ROLE alice LOGIN; GRANT SELECT ON items TO alice;",
        &["items"],
    )
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let alice = connect(&proxy, "alice", None).await.unwrap();
    // (The first cacheable read has the catalog read; a plain read is cached.)
    cached(&proxy, &client, "SELECT v FROM items WHERE id = 1", &["v0"]).await;
    // Each: the read (its first column `v`, its second the value), and whether the
    // value differs from statement to statement.
    let reads = [
        ("SELECT v, now()::text FROM items WHERE id = 1", true),
        (
            "SELECT v, current_timestamp::text FROM items WHERE id = 1",
            true,
        ),
        ("SELECT v, CURRENT_TIME::text FROM items WHERE id = 1", true),
        (
            "SELECT v, localtimestamp::text FROM items WHERE id = 1",
            true,
        ),
        (
            "SELECT v, statement_timestamp()::text FROM items WHERE id = 1",
            true,
        ),
        (
            "SELECT v, clock_timestamp()::text FROM items WHERE id = 1",
            true,
        ),
        ("SELECT v, timeofday() FROM items WHERE id = 1", true),
        ("SELECT v, random()::text FROM items WHERE id = 1", true),
        (
            "SELECT v, gen_random_uuid()::text FROM items WHERE id = 1",
            true,
        ),
        (
            "SELECT v, txid_current()::text FROM items WHERE id = 1",
            true,
        ),
        (
            "SELECT v, pg_current_xact_id()::text FROM items WHERE id = 1",
            true,
        ),
        (
            "SELECT v, 'x' FROM items WHERE id = 1 ORDER BY random()",
            false,
        ),
        (
            "SELECT v, 'x' FROM items TABLESAMPLE BERNOULLI (100) WHERE id = 1",
            false,
        ),
        (
            "SELECT v, 'x' FROM items TABLESAMPLE SYSTEM (100) WHERE id = 1",
            false,
        ),
        (
            "SELECT v, current_setting('application_name') FROM items WHERE id = 1",
            false,
        ),
        (
            "SELECT v, pg_backend_pid()::text FROM items WHERE id = 1",
            false,
        ),
        (
            "SELECT v, inet_client_addr()::text FROM items WHERE id = 1",
            false,
        ),
        (
            "SELECT v, inet_client_port()::text FROM items WHERE id = 1",
            false,
        ),
    ];
    let mut n = 0;
    for (read, changes) in reads {
        for extended in [false, true] {
            let before = cache_row(&proxy).await;
            let mut seen = Vec::new();
            for who in [&client, &alice, &client] {
                n += 1;
                let v = format!("v{n}");
                let change = format!("UPDATE items SET v = '{v}' WHERE id = 1");
                behind.batch_execute(&change).await.unwrap();
                let got = if extended {
                    let row = who.query_one(read, &[]).await;
                    let row = row.unwrap_or_else(|e| panic!("{read}: {e:?}"));
                    format!("{}|{}", row.get::<_, String>(0), row.get::<_, String>(1))
                } else {
                    rows(who, read).await.remove(0)
                };
                let (got_v, value) = got.split_once('|').unwrap();
                assert_eq!(got_v, v, "{read} (extended: {extended}): a stale row");
                if changes {
                    assert!(!seen.contains(&value.to_string()), "{read}: {value} again");
                }
                seen.push(value.to_string());
            }
            let what = format!("{read} (extended: {extended})");
            nothing_served_or_stored(&proxy, &before, &what).await;
        }
    }
    // The user is in the key (README: keyed by database and user): reads of
    // current_user and session_user may be cached, but each session gets its own
    // user's name, also after SET ROLE, SET SESSION AUTHORIZATION and RESET ROLE.
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let users = "SELECT v, current_user::text, session_user::text, user::text \
                 FROM items WHERE id = 1";
    let v = format!("v{n}");
    for _ in 0..2 {
        for (who, sql, want) in [
            (&client, "RESET ROLE", ["postgres", "postgres"]),
            (&alice, "RESET ROLE", ["alice", "alice"]),
            (&other, "SET ROLE alice", ["alice", "postgres"]),
            (&client, "RESET ROLE", ["postgres", "postgres"]),
            (&other, "RESET ROLE", ["postgres", "postgres"]),
            (
                &other,
                "SET SESSION AUTHORIZATION alice",
                ["alice", "alice"],
            ),
            (&client, "RESET ROLE", ["postgres", "postgres"]),
            (
                &other,
                "RESET SESSION AUTHORIZATION",
                ["postgres", "postgres"],
            ),
        ] {
            run(who, sql).await;
            let [current, session] = want;
            let want = format!("{v}|{current}|{session}|{current}");
            assert_eq!(rows(who, users).await, [want], "after {sql}");
        }
    }
}

/// #2: rows that depend on who reads them through SECURITY DEFINER code: a function
/// owned by the superuser returning the session user's rows, called in a read of a
/// cached table and behind a view (a STABLE user function: never served from the
/// cache), read by two roles and by a third session after SET ROLE, SET SESSION
/// AUTHORIZATION and RESET: each gets PostgreSQL's rows for its user, never
/// another's, though a plain read of the table is served from the cache meanwhile.
/// (Row-level security and security_invoker views: see
/// each_role_reads_what_it_may_see_and_privilege_changes_hold_at_once; tables with
/// row-level security are never cached.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_definer_code_gives_each_user_its_own_rows() {
    let (_pg, proxy, behind) = setup(
        "CREATE TABLE notes (owner text, body text);
         INSERT INTO notes VALUES ('alice', 'a1'), ('bob', 'b1'), ('postgres', 'p1');
         CREATE FUNCTION my_bodies() RETURNS SETOF text LANGUAGE sql STABLE
           SECURITY DEFINER AS $$ SELECT body FROM notes WHERE owner = session_user $$;
         REVOKE ALL ON FUNCTION my_bodies() FROM PUBLIC;
         CREATE VIEW defined AS SELECT b AS body FROM my_bodies() AS b;
         CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
         GRANT EXECUTE ON FUNCTION my_bodies() TO alice, bob;
         GRANT SELECT (body) ON notes TO alice, bob; GRANT SELECT ON defined TO alice, bob;",
        &["notes", "defined"],
    )
    .await;
    let alice = connect(&proxy, "alice", None).await.unwrap();
    let bob = connect(&proxy, "bob", None).await.unwrap();
    let other = connect(&proxy, "postgres", None).await.unwrap();
    let plain = "SELECT body FROM notes WHERE body LIKE '%1' ORDER BY body";
    let all = ["a1", "b1", "p1"];
    cached(&proxy, &alice, plain, &all).await;
    cached(&proxy, &bob, plain, &all).await;
    let reads = [
        "SELECT body FROM defined ORDER BY body",
        "SELECT body FROM notes WHERE body IN (SELECT my_bodies()) ORDER BY body",
        "SELECT my_bodies()",
    ];
    // (Each round changes a row behind pgopt's back, which a read served from the
    // cache would not show.)
    for round in 0..3 {
        let before = hits(&proxy).await;
        let update = format!("UPDATE notes SET body = body || '' WHERE owner = 'x{round}'");
        behind.batch_execute(&update).await.unwrap();
        for read in reads {
            assert_eq!(rows(&alice, read).await, ["a1"], "alice: {read}");
            assert_eq!(rows(&bob, read).await, ["b1"], "bob: {read}");
            assert_eq!(rows(&other, read).await, ["p1"], "postgres: {read}");
        }
        assert_eq!(
            hits(&proxy).await,
            before,
            "a SECURITY DEFINER call was served"
        );
        assert_eq!(rows(&alice, plain).await, all);
    }
    // The superuser's session as alice: SET ROLE (session_user stays postgres), SET
    // SESSION AUTHORIZATION (alice), and back.
    for round in 0..2 {
        for (sql, want) in [
            ("SET ROLE alice", "p1"),
            ("RESET ROLE", "p1"),
            ("SET SESSION AUTHORIZATION alice", "a1"),
            ("RESET SESSION AUTHORIZATION", "p1"),
            ("SET SESSION AUTHORIZATION bob", "b1"),
            // (As in PostgreSQL, RESET ALL leaves the session authorization be.)
            ("RESET ALL", "b1"),
            ("DISCARD ALL", "p1"),
        ] {
            run(&other, sql).await;
            for read in reads {
                assert_eq!(rows(&other, read).await, [want], "{sql}, {round}: {read}");
                assert_eq!(rows(&alice, read).await, ["a1"], "{sql}, {round}: {read}");
            }
        }
    }
}

/// An Execute of the unnamed portal for at most `max_rows` rows (0: all).
fn execute(max_rows: i32) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend(max_rows.to_be_bytes());
    common::message(b'E', &body)
}

/// #52: reads a client takes part by part — an Execute with a row limit
/// (PortalSuspended, then the rest), a cursor's FETCHes in a block — and COPY (SELECT
/// …) TO STDOUT: each reply is PostgreSQL's (byte for byte for the Executes), read
/// from PostgreSQL even when the same full read is cached and the rows changed behind
/// pgopt's back since, nothing of them is stored or served from the cache, and a full
/// read after a limited one is PostgreSQL's full answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_taken_in_parts_cursors_and_copy_out_are_read_from_postgresql() {
    let (pg, proxy, behind) = setup(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 5) i;",
        &["items"],
    )
    .await;
    let client = connect(&proxy, "postgres", None).await.unwrap();
    let mut direct = raw_direct(&pg).await;
    let mut through = common::raw_login(&proxy).await;
    let read = "SELECT v FROM items ORDER BY id";
    let sync = common::message(b'S', b"");
    let flush = common::message(b'H', b"");
    let open = [parse("", read, &[]), bind("", &[], &[])].concat();
    // A limit the first time this text is read through pgopt; then the full read.
    let parts = [
        open.clone(),
        execute(2),
        execute(2),
        execute(0),
        sync.clone(),
    ]
    .concat();
    let full = [open.clone(), execute(0), sync.clone()].concat();
    let before = cache_row(&proxy).await;
    let want = replies_as_postgresql_does(&mut direct, &mut through, &parts, 2, "parts").await;
    let tags: String = want.iter().map(|(t, _)| *t as char).collect();
    assert_eq!(tags, "12DDsDDsDCZ");
    nothing_served_or_stored(&proxy, &before, "taken in parts").await;
    let whole = replies_as_postgresql_does(&mut direct, &mut through, &full, 1, "full").await;
    assert_eq!(raw_summary(&whole).0, ["v1", "v2", "v3", "v4", "v5"]);
    let all = ["v1", "v2", "v3", "v4", "v5"];
    cached(&proxy, &client, read, &all).await;
    let before = hits(&proxy).await;
    assert_eq!(
        raw_summary(&exchange(&mut through, &full).await).0,
        all,
        "extended"
    );
    assert_eq!(
        hits(&proxy).await,
        before + 1,
        "the full extended read is cached"
    );

    // Changed behind pgopt's back: the cached full reads are stale now, and what is
    // taken in parts is PostgreSQL's.
    behind
        .batch_execute("UPDATE items SET v = 'new' || id")
        .await
        .unwrap();
    let before = cache_row(&proxy).await;
    replies_as_postgresql_does(&mut direct, &mut through, &parts, 2, "parts, changed").await;
    // Limited Executes answered through Flush, then the rest and the Sync.
    let first = [open.clone(), execute(3), flush].concat();
    let rest = [execute(0), sync.clone()].concat();
    use tokio::io::AsyncWriteExt;
    through.write_all(&first).await.unwrap();
    common::read_until(&mut through, b's').await;
    let got = exchange(&mut through, &rest).await;
    assert_eq!(raw_summary(&got), (strings(&["new4", "new5"]), "I".into()));
    // A cursor in a block, fetched in two steps.
    run(&client, "BEGIN").await;
    run(&client, &format!("DECLARE c CURSOR FOR {read}")).await;
    let mut fetched = rows(&client, "FETCH 2 FROM c").await;
    fetched.extend(rows(&client, "FETCH ALL FROM c").await);
    run(&client, "COMMIT").await;
    let new = ["new1", "new2", "new3", "new4", "new5"];
    assert_eq!(fetched, new, "cursor");
    // COPY TO STDOUT, twice.
    use futures_util::TryStreamExt;
    for _ in 0..2 {
        let copy = format!("COPY ({read}) TO STDOUT");
        let stream = client.copy_out(copy.as_str()).await.unwrap();
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(chunks.concat(), b"new1\nnew2\nnew3\nnew4\nnew5\n", "COPY");
    }
    nothing_served_or_stored(&proxy, &before, "taken in parts").await;
    // (The full read's entry, from before the change behind pgopt, is still served:
    // so the reads above were not served from the cache, they would have been old.
    // Read by a new client: `client` may still have the Close of the COPY's statement
    // in flight, and a read behind it goes to the server.)
    let fresh = connect(&proxy, "postgres", None).await.unwrap();
    assert_eq!(
        rows(&fresh, read).await,
        all,
        "{:?}",
        cache_row(&proxy).await
    );
}

/// #38, made directly on PostgreSQL (which fires no event trigger for role changes,
/// and here there is no `ddl_listener` at all): a role's membership taken away, a
/// column's privilege revoked, a table given to another owner end what was cached at
/// the next catalog read (`catalog_refresh`, 30 s by default, 1 s here), so the role gets
/// PostgreSQL's answer, not rows it may no longer read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileges_changed_directly_end_the_entries_at_the_next_catalog_read() {
    let pg = Postgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');
         CREATE ROLE reader LOGIN; CREATE ROLE readers; GRANT readers TO reader;
         GRANT SELECT ON items TO readers; GRANT SELECT (id) ON items TO reader;
         CREATE TABLE mine (id int); INSERT INTO mine VALUES (7); ALTER TABLE mine OWNER TO reader;",
    )
    .unwrap();
    let refresh = std::time::Duration::from_secs(1);
    let proxy = caching(&pg, &["items", "mine"], |c| {
        c.cache.catalog_refresh = refresh
    })
    .await;
    let behind = direct(&pg).await;
    let reader = connect(&proxy, "reader", None).await.unwrap();
    let read = "SELECT v FROM items WHERE id = 1";
    let by_id = "SELECT id FROM items WHERE id = 1";
    for (change, query, cached_rows) in [
        ("REVOKE readers FROM reader", read, "a"),
        ("REVOKE SELECT (id) ON items FROM reader", by_id, "1"),
        // (Its privileges stay the default: only the owner moves.)
        (
            "ALTER TABLE mine OWNER TO postgres",
            "SELECT id FROM mine",
            "7",
        ),
    ] {
        cached(&proxy, &reader, query, &[cached_rows]).await;
        behind.batch_execute(change).await.unwrap();
        tokio::time::sleep(refresh + std::time::Duration::from_millis(200)).await;
        assert_eq!(error_code(&reader, query).await, "42501", "{change}");
        // (tokio-postgres returns the error before the ReadyForQuery behind it: a read
        // sent at once may find the server connection still the client's, and go to
        // it past the cache.)
        run(&reader, "SELECT 1").await;
    }
    // Objects made directly (a staging table and its grant, a temporary table) end
    // nothing: no entry read them.
    let owner = connect(&proxy, "postgres", None).await.unwrap();
    cached(&proxy, &owner, read, &["a"]).await;
    behind
        .batch_execute(
            "CREATE TABLE staging (x int); GRANT SELECT ON staging TO reader;
             CREATE TEMP TABLE scratch (x int)",
        )
        .await
        .unwrap();
    tokio::time::sleep(refresh + std::time::Duration::from_millis(200)).await;
    served(
        &proxy,
        &owner,
        read,
        &["a"],
        "a table made directly ended it",
    )
    .await;
}
