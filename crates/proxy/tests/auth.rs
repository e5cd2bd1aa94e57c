//! Logins without plaintext passwords: SCRAM verifiers and md5 hashes in the config,
//! and users looked up on the server with auth_query.

mod common;

use std::time::Duration;

use common::{code, config_for, connect};
use pgopt_embedded::{HostAuth, Postgres};
use pgopt_proxy::{ClientAuth, Config, PoolMode, Proxy, User};

/// The stored password of `role` as the server keeps it.
async fn stored_password(pg: &Postgres, role: &str) -> String {
    let client = pg.connect("postgres").await.unwrap();
    client
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// A proxy whose config holds `password` for `postgres` and nothing else: the database
/// entry has no password of its own.
fn config_with_only(pg: &Postgres, auth: ClientAuth, password: String) -> Config {
    let mut config = config_for(pg, PoolMode::Transaction, 2);
    config.databases[0].password = None;
    config.client_auth = auth;
    config.users = vec![User::new("postgres", password)];
    config
}

/// Two clients in open transactions at once hold two server connections: both logged in.
async fn two_server_logins(proxy: &Proxy, user: &str, password: &str) {
    let a = connect(proxy, user, Some(password)).await.unwrap();
    let b = connect(proxy, user, Some(password)).await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let (pa, ua) = pid(&a).await;
    let (pb, ub) = pid(&b).await;
    assert_ne!(pa, pb, "the two transactions shared a server connection");
    assert_eq!((ua.as_str(), ub.as_str()), (user, user));
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
}

/// The server process and the user of a client's connection.
async fn pid(c: &tokio_postgres::Client) -> (i32, String) {
    let row = c
        .query_one("SELECT pg_backend_pid(), current_user::text", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A server asking for `host_auth`, a proxy holding only what the server stores for
/// `postgres` (it starts with `prefix`) and asking clients for `client_auth`: a wrong
/// password fails, the right one logs clients in through two server connections.
async fn login_with_the_stored_password(
    host_auth: HostAuth,
    client_auth: ClientAuth,
    prefix: &str,
) {
    let pg = Postgres::builder()
        .password("serverpw", host_auth)
        .start()
        .await
        .unwrap();
    let stored = stored_password(&pg, "postgres").await;
    assert!(stored.starts_with(prefix), "{stored}");
    let proxy = Proxy::start(config_with_only(&pg, client_auth, stored))
        .await
        .unwrap();
    let err = connect(&proxy, "postgres", Some("wrong"))
        .await
        .expect_err("wrong password accepted");
    assert_eq!(code(&err), Some("28P01"), "{err}");
    two_server_logins(&proxy, "postgres", "serverpw").await;
}

#[tokio::test]
async fn a_scram_verifier_logs_in_to_the_server_with_the_clients_keys() {
    login_with_the_stored_password(
        HostAuth::ScramSha256,
        ClientAuth::ScramSha256,
        "SCRAM-SHA-256$",
    )
    .await;
}

#[tokio::test]
async fn an_md5_hash_answers_the_servers_md5_challenge() {
    login_with_the_stored_password(HostAuth::Md5, ClientAuth::Md5, "md5").await;
}

/// A server asking for SCRAM (postgres's password `serverpw`), and a connection to it.
async fn scram_postgres() -> (Postgres, tokio_postgres::Client) {
    let pg = Postgres::builder()
        .password("serverpw", HostAuth::ScramSha256)
        .start()
        .await
        .unwrap();
    let admin = pg.connect("postgres").await.unwrap();
    (pg, admin)
}

#[tokio::test]
async fn auth_query_finds_users_the_config_does_not_list() {
    let (pg, admin) = scram_postgres().await;
    admin
        .batch_execute("CREATE ROLE app_user LOGIN PASSWORD 'apppw'")
        .await
        .unwrap();
    let mut config = config_with_only(&pg, ClientAuth::ScramSha256, "serverpw".into());
    config.auth_user = Some("postgres".into());
    // Every login looks the user up (the cache has its own tests below).
    config.auth_query_cache_ttl = Duration::ZERO;
    let proxy = Proxy::start(config).await.unwrap();

    two_server_logins(&proxy, "app_user", "apppw").await;
    for (user, password) in [("app_user", "wrong"), ("ghost", "apppw")] {
        let err = connect(&proxy, user, Some(password))
            .await
            .expect_err("bad login accepted");
        assert_eq!(code(&err), Some("28P01"), "{user}: {err}");
    }

    // A password changed on the server applies to the next login.
    admin
        .batch_execute("ALTER ROLE app_user PASSWORD 'newpw'")
        .await
        .unwrap();
    let err = connect(&proxy, "app_user", Some("apppw"))
        .await
        .expect_err("old password accepted");
    assert_eq!(code(&err), Some("28P01"), "{err}");
    let c = connect(&proxy, "app_user", Some("newpw")).await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();

    // An auth_query that fails is a clear error, not a hang; why it failed (the
    // server's error) is logged, not told a client that has not logged in.
    let mut config = config_with_only(&pg, ClientAuth::ScramSha256, "serverpw".into());
    config.auth_user = Some("postgres".into());
    config.auth_query = "SELECT passwd FROM no_such_table WHERE usename = $1".into();
    let proxy = Proxy::start(config).await.unwrap();
    let err = connect(&proxy, "app_user", Some("newpw"))
        .await
        .expect_err("login without a working auth_query");
    assert_eq!(code(&err), Some("08006"), "{err}");
    let message = err.as_db_error().unwrap().message();
    assert!(
        message.contains("auth_query") && message.contains("pgopt's log"),
        "{message}"
    );
    assert!(!message.contains("no_such_table"), "{message}");
}

/// The lookup runs with the search path and role the connection had at login: a
/// client of `auth_user`'s pool that leaves `SET search_path` on its (transaction
/// mode) connection, naming a schema with a `pg_shadow` of its own, can't choose the
/// password another user's login is checked against. And the default query gives no
/// password for a role whose `VALID UNTIL` has passed, as PostgreSQL refuses it: a
/// pooled connection already logged in as that role is not lent to it.
#[tokio::test]
async fn auth_query_lookups_ignore_what_clients_left_set_and_expired_passwords() {
    let (pg, admin) = scram_postgres().await;
    admin
        .batch_execute(
            "CREATE ROLE app_user LOGIN PASSWORD 'apppw';
             CREATE ROLE decoy PASSWORD 'attackpw';
             CREATE SCHEMA evil;
             CREATE VIEW evil.pg_shadow AS
               SELECT 'app_user'::name AS usename, NULL::timestamptz AS valuntil,
                      (SELECT rolpassword FROM pg_catalog.pg_authid
                        WHERE rolname = 'decoy') AS passwd;",
        )
        .await
        .unwrap();
    let mut config = config_with_only(&pg, ClientAuth::ScramSha256, "serverpw".into());
    config.default_pool_size = 1;
    config.auth_user = Some("postgres".into());
    config.auth_query_cache_ttl = Duration::ZERO;
    let proxy = Proxy::start(config).await.unwrap();
    // app_user's pool has a connection logged in, idle.
    log_in(&proxy, "app_user", "apppw").await;
    // auth_user's one connection keeps what its client set.
    let attacker = connect(&proxy, "postgres", Some("serverpw")).await.unwrap();
    attacker
        .batch_execute("SET search_path = evil, pg_catalog")
        .await
        .unwrap();
    assert_eq!(
        common::value(&attacker, "SELECT count(*)::text FROM pg_shadow").await,
        "1"
    );
    // (Not a password from the client's pg_shadow.)
    refused(&proxy, "app_user", "attackpw").await;
    log_in(&proxy, "app_user", "apppw").await;
    // The client's own setting is still its own.
    assert_eq!(
        common::value(&attacker, "SHOW search_path").await,
        "evil, pg_catalog"
    );

    admin
        .batch_execute("ALTER ROLE app_user VALID UNTIL '2000-01-01'")
        .await
        .unwrap();
    // (Expired.)
    refused(&proxy, "app_user", "apppw").await;
}

/// The lookup runs as the role auth_user logs in with: `ALTER ROLE … SET role` (here
/// what lets a NOINHERIT auth_user run the lookup function) is kept, whatever role a
/// client of its pool left set. And an auth_query that answers no rows at all (a
/// CALL) finds no one: nothing else the lookup runs is taken for a password.
#[tokio::test]
async fn auth_query_runs_as_auth_users_login_role_and_rows_are_only_its_own() {
    let (pg, admin) = scram_postgres().await;
    admin
        .batch_execute(
            "CREATE ROLE app_user LOGIN PASSWORD 'apppw';
             CREATE ROLE reader;
             CREATE ROLE looker LOGIN NOINHERIT PASSWORD 'lookpw';
             GRANT reader TO looker;
             ALTER ROLE looker SET role = 'reader';
             CREATE FUNCTION lookup(u name, OUT usename name, OUT passwd text)
               SECURITY DEFINER LANGUAGE sql
               AS 'SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = u';
             REVOKE EXECUTE ON FUNCTION lookup(name) FROM PUBLIC;
             GRANT EXECUTE ON FUNCTION lookup(name) TO reader;
             CREATE PROCEDURE check_user(u name) LANGUAGE sql AS 'SELECT 1';",
        )
        .await
        .unwrap();
    let mut config = config_with_only(&pg, ClientAuth::ScramSha256, "serverpw".into());
    config.users.push(User::new("looker", "lookpw"));
    config.default_pool_size = 1;
    config.auth_user = Some("looker".into());
    config.auth_query = "SELECT usename, passwd FROM lookup($1)".into();
    config.auth_query_cache_ttl = Duration::ZERO;
    let proxy = Proxy::start(config.clone()).await.unwrap();
    log_in(&proxy, "app_user", "apppw").await;
    // A client of auth_user's one connection leaves another role set.
    let looker = connect(&proxy, "looker", Some("lookpw")).await.unwrap();
    looker.batch_execute("SET ROLE NONE").await.unwrap();
    assert_eq!(
        common::value(&looker, "SELECT current_user::text").await,
        "looker"
    );
    log_in(&proxy, "app_user", "apppw").await;
    assert_eq!(
        common::value(&looker, "SELECT current_user::text").await,
        "looker"
    );

    config.auth_query = "CALL check_user($1)".into();
    let proxy = Proxy::start(config).await.unwrap();
    // (No user found by a query that answers no rows.)
    for password in ["none", "apppw"] {
        refused(&proxy, "app_user", password).await;
    }
}

/// A RELOAD that moves the database to another server (here the same one under
/// another name): clients whose server logins take the SCRAM keys of their own login,
/// one of a user `auth_query` found among them, move to the new pool and log in there.
#[tokio::test]
async fn clients_a_reload_moves_log_in_to_the_new_server_with_what_their_login_gave() {
    let (pg, admin) = scram_postgres().await;
    admin
        .batch_execute("CREATE ROLE app_user LOGIN PASSWORD 'apppw'")
        .await
        .unwrap();
    let stored = stored_password(&pg, "postgres").await;
    let mut config = config_with_only(&pg, ClientAuth::ScramSha256, stored);
    config.auth_user = Some("postgres".into());
    config.admin_users = vec!["postgres".into()];
    let proxy = Proxy::start(config.clone()).await.unwrap();
    let mut clients = Vec::new();
    for (user, password) in [("postgres", "serverpw"), ("app_user", "apppw")] {
        let client = connect(&proxy, user, Some(password)).await.unwrap();
        let before = pid(&client).await;
        clients.push((client, before));
    }
    config.databases[0].host = "localhost".into();
    let handle = proxy.handle();
    handle.set_reloader(move || Ok(config.clone()));
    handle.reload().unwrap();
    for (client, (pid_before, user)) in &clients {
        let (pid_now, user_now) = pid(client).await;
        assert_ne!(pid_now, *pid_before, "{user} stayed on the old pool");
        assert_eq!(&user_now, user);
    }
}

/// A server asking for `host_auth` where `app_user` has the password `apppw`, stored
/// as `host_auth` stores it, and an `auth_query` that notes each lookup in the table
/// `auth_lookups`; a proxy asking clients for `client_auth`, keeping answers `ttl`.
async fn counted_lookups(
    host_auth: HostAuth,
    client_auth: ClientAuth,
    ttl: Duration,
) -> (Postgres, tokio_postgres::Client, Proxy) {
    let pg = Postgres::builder()
        .password("serverpw", host_auth)
        .start()
        .await
        .unwrap();
    let admin = pg.connect("postgres").await.unwrap();
    let encryption = match host_auth {
        HostAuth::Md5 => "md5",
        _ => "scram-sha-256",
    };
    admin
        .batch_execute(&format!(
            // This session's later ALTER ROLEs store the same kind.
            "SET password_encryption = '{encryption}';
             CREATE ROLE app_user LOGIN PASSWORD 'apppw';
             CREATE TABLE auth_lookups (usename text NOT NULL);
             CREATE FUNCTION pgopt_lookup(name text, OUT usename text, OUT passwd text)
               LANGUAGE plpgsql SECURITY DEFINER AS $$
               BEGIN
                 INSERT INTO auth_lookups VALUES (name);
                 SELECT s.usename, s.passwd INTO usename, passwd
                   FROM pg_shadow s WHERE s.usename = name;
               END $$;"
        ))
        .await
        .unwrap();
    let mut config = config_with_only(&pg, client_auth, "serverpw".into());
    config.auth_user = Some("postgres".into());
    config.auth_query = "SELECT usename, passwd FROM pgopt_lookup($1)".into();
    config.auth_query_cache_ttl = ttl;
    let proxy = Proxy::start(config).await.unwrap();
    (pg, admin, proxy)
}

/// How many times `auth_query` ran for `user`.
async fn lookups(admin: &tokio_postgres::Client, user: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM auth_lookups WHERE usename = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

async fn log_in(proxy: &Proxy, user: &str, password: &str) {
    let c = connect(proxy, user, Some(password))
        .await
        .unwrap_or_else(|e| panic!("{user}/{password}: {e}"));
    c.batch_execute("SELECT 1").await.unwrap();
}

async fn refused(proxy: &Proxy, user: &str, password: &str) {
    let err = connect(proxy, user, Some(password))
        .await
        .expect_err("bad login accepted");
    assert_eq!(code(&err), Some("28P01"), "{user}/{password}: {err}");
}

#[tokio::test]
async fn auth_query_answers_are_kept_until_their_ttl_and_forgotten_on_reload() {
    let ttl = Duration::from_secs(3);
    let (pg, admin, proxy) =
        counted_lookups(HostAuth::ScramSha256, ClientAuth::ScramSha256, ttl).await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        log_in(&proxy, "app_user", "apppw").await;
    }
    // "No such user" is kept too (5 s at most).
    refused(&proxy, "ghost", "apppw").await;
    refused(&proxy, "ghost", "apppw").await;
    assert!(
        started.elapsed() < ttl,
        "too slow to tell: {:?}",
        started.elapsed()
    );
    assert_eq!(lookups(&admin, "app_user").await, 1);
    assert_eq!(lookups(&admin, "ghost").await, 1);

    // Past the TTL the user is looked up again.
    tokio::time::sleep(ttl.saturating_sub(started.elapsed()) + Duration::from_millis(200)).await;
    log_in(&proxy, "app_user", "apppw").await;
    log_in(&proxy, "app_user", "apppw").await;
    assert_eq!(lookups(&admin, "app_user").await, 2);

    // RELOAD forgets every answer.
    let mut config = config_with_only(&pg, ClientAuth::ScramSha256, "serverpw".into());
    config.auth_user = Some("postgres".into());
    config.auth_query = "SELECT usename, passwd FROM pgopt_lookup($1)".into();
    config.auth_query_cache_ttl = ttl;
    let handle = proxy.handle();
    handle.set_reloader(move || Ok(config.clone()));
    handle.reload().unwrap();
    log_in(&proxy, "app_user", "apppw").await;
    assert_eq!(lookups(&admin, "app_user").await, 3);
}

#[tokio::test]
async fn logins_waiting_for_a_lookup_that_fails_share_its_error() {
    let (pg, admin) = scram_postgres().await;
    // Sequences are not transactional: each attempt counts though it fails.
    admin
        .batch_execute(
            "CREATE SEQUENCE attempts;
             CREATE FUNCTION slow_failure(name text, OUT usename text, OUT passwd text)
               LANGUAGE plpgsql AS $$
               BEGIN
                 PERFORM nextval('attempts');
                 PERFORM pg_sleep(0.5);
                 RAISE EXCEPTION 'the user directory is down';
               END $$;",
        )
        .await
        .unwrap();
    let mut config = config_with_only(&pg, ClientAuth::ScramSha256, "serverpw".into());
    config.auth_user = Some("postgres".into());
    config.auth_query = "SELECT usename, passwd FROM slow_failure($1)".into();
    let proxy = Proxy::start(config).await.unwrap();
    let attempts = || async {
        let row = admin
            .query_one("SELECT last_value FROM attempts", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let logins = (0..4).map(|_| connect(&proxy, "app_user", Some("apppw")));
    for result in futures_util::future::join_all(logins).await {
        let err = result.expect_err("login without a working auth_query");
        assert_eq!(code(&err), Some("08006"), "{err}");
        let message = err.as_db_error().unwrap().message();
        // (The server's error is pgopt's log's, not the client's.)
        assert!(message.contains("auth_query"), "{message}");
        assert!(!message.contains("directory is down"), "{message}");
    }
    // One lookup for the four logins that waited for it…
    assert_eq!(attempts().await, 1);
    // …and the next login tries again.
    connect(&proxy, "app_user", Some("apppw"))
        .await
        .expect_err("login without a working auth_query");
    assert_eq!(attempts().await, 2);
}

#[tokio::test]
async fn with_a_ttl_of_zero_every_login_looks_the_user_up() {
    let (_pg, admin, proxy) = counted_lookups(
        HostAuth::ScramSha256,
        ClientAuth::ScramSha256,
        Duration::ZERO,
    )
    .await;
    for _ in 0..3 {
        log_in(&proxy, "app_user", "apppw").await;
    }
    refused(&proxy, "app_user", "wrong").await;
    assert_eq!(lookups(&admin, "app_user").await, 4);
}

/// Two logins of `app_user` (one lookup, its answer kept), then its password
/// changed on the server to `newpw`.
async fn kept_then_changed(proxy: &Proxy, admin: &tokio_postgres::Client) {
    log_in(proxy, "app_user", "apppw").await;
    log_in(proxy, "app_user", "apppw").await;
    assert_eq!(lookups(admin, "app_user").await, 1);
    admin
        .batch_execute("ALTER ROLE app_user PASSWORD 'newpw'")
        .await
        .unwrap();
}

#[tokio::test]
async fn an_md5_login_failing_against_a_kept_answer_looks_again_and_takes_a_new_password() {
    let (_pg, admin, proxy) =
        counted_lookups(HostAuth::Md5, ClientAuth::Md5, Duration::from_secs(600)).await;
    kept_then_changed(&proxy, &admin).await;
    // The kept hash refuses it; the lookup made then accepts it, at the first try.
    log_in(&proxy, "app_user", "newpw").await;
    assert_eq!(lookups(&admin, "app_user").await, 2);
    // The new answer is kept, and the old password refused (after one more look).
    log_in(&proxy, "app_user", "newpw").await;
    assert_eq!(lookups(&admin, "app_user").await, 2);
    refused(&proxy, "app_user", "apppw").await;
    assert_eq!(lookups(&admin, "app_user").await, 3);
    log_in(&proxy, "app_user", "newpw").await;
    assert_eq!(lookups(&admin, "app_user").await, 3);
}

#[tokio::test]
async fn a_scram_login_failing_against_a_kept_verifier_renews_it_for_the_next_login() {
    let (_pg, admin, proxy) = counted_lookups(
        HostAuth::ScramSha256,
        ClientAuth::ScramSha256,
        Duration::from_secs(600),
    )
    .await;
    kept_then_changed(&proxy, &admin).await;
    // The exchange ran with the kept verifier's salt, so the client's proof can't be
    // checked against the new one: refused, but looked up again…
    refused(&proxy, "app_user", "newpw").await;
    assert_eq!(lookups(&admin, "app_user").await, 2);
    // …so the next login meets the new verifier, which is kept.
    log_in(&proxy, "app_user", "newpw").await;
    log_in(&proxy, "app_user", "newpw").await;
    assert_eq!(lookups(&admin, "app_user").await, 2);
    refused(&proxy, "app_user", "apppw").await;
    assert_eq!(lookups(&admin, "app_user").await, 3);
}

#[tokio::test]
async fn clients_that_do_not_log_in_in_time_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = Postgres::start().await.unwrap();
    let mut config = config_with_only(&pg, ClientAuth::ScramSha256, "secret".into());
    config.client_login_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(config).await.unwrap();
    let closed_within = |raw: tokio::net::TcpStream| async move {
        let mut raw = raw;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut got));
        read.await
            .expect("the connection is still open after the login timeout")
            .unwrap();
        got
    };

    // Connected, and silent: closed without a word.
    let silent = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    assert_eq!(closed_within(silent).await, b"");

    // Asked for a password that never comes: told why.
    let mut stalled = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    stalled.write_all(&common::startup_message()).await.unwrap();
    let got = closed_within(stalled).await;
    assert_eq!(got.first(), Some(&b'R'), "{got:?}"); // the SASL request
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("57014"), "{text}");
    assert!(text.contains("client_login_timeout"), "{text}");

    // A client that logs in goes on past the timeout.
    let client = connect(&proxy, "postgres", Some("secret")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(common::value(&client, "SELECT 1").await, "1");
}
#[tokio::test]
async fn an_empty_password_logs_no_one_in_and_auth_query_still_answers() {
    // app_user's real password is on the server (md5); the config lists it with its
    // settings only, as a [users] entry from PgBouncer: no password.
    let (pg, _admin, _proxy) =
        counted_lookups(HostAuth::Md5, ClientAuth::Md5, Duration::from_secs(60)).await;
    for method in [ClientAuth::Md5, ClientAuth::ScramSha256] {
        let mut config = config_with_only(&pg, method, "serverpw".into());
        config.users.push(User::new("app_user", ""));
        config.users.push(User::new("nobody", ""));
        config.auth_user = Some("postgres".into());
        config.auth_query = "SELECT usename, passwd FROM pgopt_lookup($1)".into();
        let proxy = Proxy::start(config).await.unwrap();
        for user in ["app_user", "nobody"] {
            let e = connect(&proxy, user, Some("")).await.unwrap_err();
            assert_eq!(code(&e), Some("28P01"), "{method:?} {user}: {e}");
        }
        // The real password, found by auth_query (an md5 hash: md5 logins), still logs
        // app_user in.
        if method == ClientAuth::Md5 {
            log_in(&proxy, "app_user", "apppw").await;
        }
    }
}

/// Before it has logged in, a client can't make pgopt hold more than PostgreSQL's
/// 65,535 bytes for a password message (it used to buffer up to a GiB until the
/// login timeout); and an unknown user's SCRAM salt, like a real user's, is the same at
/// every try and differs from other names', so it tells no one which names exist.
#[tokio::test]
async fn logins_hold_little_for_a_stranger_and_tell_no_names_apart() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = Postgres::start().await.unwrap();
    let proxy = scram_proxy(&pg).await;
    // A password message that says it is nearly a GiB long: refused at its header.
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    raw.write_all(&startup("postgres")).await.unwrap();
    common::read_until(&mut raw, b'R').await;
    let mut huge = vec![b'p'];
    huge.extend_from_slice(&0x3fff_fff0_i32.to_be_bytes());
    huge.extend_from_slice(&[b'x'; 1000]);
    raw.write_all(&huge).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
        .await
        .expect("still waiting for the rest of a GiB")
        .unwrap();
    let said = String::from_utf8_lossy(&rest);
    assert!(said.contains("08P01"), "told why: {said}");

    // The salt in SCRAM's server-first message, for `user`.
    let salt = |user: &str| {
        let startup = startup(user);
        let proxy = proxy.local_addr();
        async move {
            let mut raw = tokio::net::TcpStream::connect(proxy).await.unwrap();
            raw.write_all(&startup).await.unwrap();
            common::read_until(&mut raw, b'R').await;
            let first = b"n,,n=,r=abcdefghijklmnopqrstuvwx";
            let mut body = b"SCRAM-SHA-256\0".to_vec();
            body.extend_from_slice(&(first.len() as i32).to_be_bytes());
            body.extend_from_slice(first);
            raw.write_all(&common::message(b'p', &body)).await.unwrap();
            let mut got = vec![0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut got))
                .await
                .unwrap()
                .unwrap();
            let text = String::from_utf8_lossy(&got[..n]).into_owned();
            let start = text.find(",s=").expect("a server-first message") + 3;
            text[start..].split(',').next().unwrap().to_string()
        }
    };
    let ghost = salt("ghost").await;
    assert_eq!(ghost, salt("ghost").await, "the same name, the same salt");
    assert_ne!(ghost, salt("phantom").await, "another name, another salt");
    assert_eq!(salt("postgres").await, salt("postgres").await);
}

/// Plaintext passwords in the config with characters SASLprep changes (a combining
/// accent, a no-break space) log clients in and log in to the server, as libpq and
/// PostgreSQL prepare them. Before, pgopt used the raw bytes: 28P01 both ways.
#[tokio::test]
async fn non_ascii_plaintext_passwords_are_prepared_as_postgresql_prepares_them() {
    let (pg, admin) = scram_postgres().await;
    let passwords = [("ivan", "cafe\u{301}x"), ("judy", "pass\u{a0}word")];
    for (role, password) in passwords {
        admin
            .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
            .await
            .unwrap();
    }
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.databases[0].password = None;
    config.client_auth = ClientAuth::ScramSha256;
    config.users = passwords
        .iter()
        .map(|(role, password)| User::new(*role, password.to_string()))
        .collect();
    let proxy = Proxy::start(config).await.unwrap();
    for (role, password) in passwords {
        log_in(&proxy, role, password).await;
    }
    refused(&proxy, "ivan", "cafex").await;
}

/// A proxy whose clients log in with SCRAM only, as `postgres` with password `secret`.
async fn scram_proxy(pg: &Postgres) -> Proxy {
    let config = config_with_only(pg, ClientAuth::ScramSha256, "secret".into());
    Proxy::start(config).await.unwrap()
}

/// What a raw client logging in as `postgres` hears until the connection ends, having
/// sent each of `answers` after an `R` (Authentication) message of the proxy.
async fn login_ends(proxy: &Proxy, answers: &[Vec<u8>]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    raw.write_all(&startup("postgres")).await.unwrap();
    for answer in answers {
        common::read_until(&mut raw, b'R').await;
        raw.write_all(answer).await.unwrap();
    }
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
        .await
        .expect("the login ends")
        .unwrap();
    String::from_utf8_lossy(&rest).into_owned()
}

/// As PostgreSQL: a message other than a password's where one is expected, a
/// password message that is not a string, and a SCRAM proof whose nonce does not
/// continue the exchange end the login with 08P01 and its own text, not as a wrong
/// password (28P01).
#[tokio::test]
async fn answers_out_of_the_exchange_are_protocol_violations() {
    let pg = Postgres::start().await.unwrap();
    let query = common::message(b'Q', b"SELECT 1\0");
    let initial = {
        let first = "n,,n=,r=abcdefgh";
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
        body.extend_from_slice(first.as_bytes());
        common::message(b'p', &body)
    };
    let proof = "A".repeat(43) + "=";
    let wrong_nonce = common::message(b'p', format!("c=biws,r=abcdefghXX,p={proof}").as_bytes());

    let scram = scram_proxy(&pg).await;
    let md5 = Proxy::start(config_with_only(&pg, ClientAuth::Md5, "secret".into()))
        .await
        .unwrap();
    for (proxy, answers, said) in [
        (
            &scram,
            vec![query.clone()],
            "expected SASL response, got message type 81",
        ),
        (
            &scram,
            vec![initial.clone(), query.clone()],
            "expected SASL response, got message type 81",
        ),
        (&scram, vec![initial, wrong_nonce], "invalid SCRAM response"),
        (
            &md5,
            vec![query],
            "expected password response, got message type 81",
        ),
        (
            &md5,
            vec![common::message(b'p', b"no terminator")],
            "invalid password packet size",
        ),
    ] {
        let text = login_ends(proxy, &answers).await;
        assert!(text.contains("C08P01"), "{said}: {text}");
        assert!(text.contains(said), "{said}: {text}");
    }
    for proxy in [&scram, &md5] {
        let e = connect(proxy, "postgres", Some("wrong")).await.unwrap_err();
        assert_eq!(code(&e), Some("28P01"), "{e}");
        connect(proxy, "postgres", Some("secret")).await.unwrap();
    }
}

/// A StartupMessage (protocol 3.0) for `user` and database `app`.
fn startup(user: &str) -> Vec<u8> {
    let body = format!("\0\x03\0\0user\0{user}\0database\0app\0\0");
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(body.as_bytes());
    m
}

/// A SCRAM message out of the exchange's rules is refused as PostgreSQL refuses it,
/// with 08P01 and what was wrong, not as a wrong password (28P01): choosing
/// SCRAM-SHA-256-PLUS where it was not offered (no TLS), or saying it binds while
/// choosing SCRAM-SHA-256. A well-formed exchange with a wrong proof is still 28P01.
#[tokio::test]
async fn scram_messages_out_of_order_are_protocol_violations() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = Postgres::start().await.unwrap();
    let proxy = scram_proxy(&pg).await;
    for (mechanism, first, said) in [
        (
            "SCRAM-SHA-256-PLUS",
            "p=tls-server-end-point,,n=,r=abcdefgh",
            "a SASL mechanism that was not offered",
        ),
        (
            "SCRAM-SHA-256",
            "p=tls-server-end-point,,n=,r=abcdefgh",
            "without channel binding",
        ),
        (
            "SCRAM-SHA-256",
            "x,,n=,r=abcdefgh",
            "malformed SCRAM message",
        ),
    ] {
        let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .unwrap();
        raw.write_all(&startup("postgres")).await.unwrap();
        common::read_until(&mut raw, b'R').await;
        let mut body = format!("{mechanism}\0").into_bytes();
        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
        body.extend_from_slice(first.as_bytes());
        raw.write_all(&common::message(b'p', &body)).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
            .await
            .expect("the login ends")
            .unwrap();
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("C08P01"), "{mechanism} {first}: {text}");
        assert!(text.contains(said), "{mechanism} {first}: {text}");
    }
    let e = connect(&proxy, "postgres", Some("wrong"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("28P01"), "{e}");
}
