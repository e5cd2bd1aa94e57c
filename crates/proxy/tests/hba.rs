//! Host-based authentication (`auth_hba_file` rules): each client's method from how it
//! connects, its database and user — SCRAM, md5, trust, peer over the Unix-domain
//! socket, reject, no matching rule — with real clients, and a RELOAD that swaps the
//! rules.

mod common;

use std::sync::Arc;

use common::{code, config_for, temp_dir};
use pgopt_embedded::Postgres;
use pgopt_proxy::hba::Hba;
use pgopt_proxy::{Config, PoolMode, Proxy, User};
use tokio_postgres::NoTls;

/// The name of the operating system user the tests run as (the peer of their sockets).
fn os_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let name = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        !name.is_empty(),
        "the tests' user has no name in the user database"
    );
    name
}

fn config(pg: &Postgres, dir: &std::path::Path, rules: &str) -> Config {
    let mut config = config_for(pg, PoolMode::Transaction, 2);
    // Every client logs in to the server as postgres, whatever its own name.
    config.databases[0].user = Some("postgres".into());
    config.unix_socket_dir = Some(dir.to_str().unwrap().to_string());
    config.users = vec![
        User::new("alice", "alice-secret"),
        User::new("bob", "bob-secret"),
        User::new("carol", "carol-secret"),
        User::new("dave", "dave-secret"),
    ];
    config.hba = Some(Arc::new(Hba::parse(rules).unwrap()));
    config
}

async fn login(
    proxy: &Proxy,
    host: &str,
    user: &str,
    password: Option<&str>,
) -> Result<String, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(proxy.local_addr().port())
        .user(user)
        .dbname("app");
    if let Some(password) = password {
        config.password(password);
    }
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(common::value(&client, "SELECT current_user").await)
}

#[tokio::test]
async fn rules_pick_each_clients_method_or_refuse_it() {
    let dir = temp_dir("rules");
    let socket = dir.to_str().unwrap();
    let me = os_user();
    let rules = format!(
        "local all {me},alice peer\n\
         local all all reject\n\
         host  app alice 127.0.0.1/32 scram-sha-256\n\
         host  app bob   127.0.0.0/8  md5\n\
         host  app carol 0.0.0.0/0    reject\n"
    );
    let pg = Postgres::start().await.unwrap();
    let proxy = Proxy::start(config(&pg, &dir, &rules)).await.unwrap();

    // SCRAM and md5 by rule, each with its password checked.
    let local = "127.0.0.1";
    assert_eq!(
        login(&proxy, local, "alice", Some("alice-secret"))
            .await
            .unwrap(),
        "postgres"
    );
    let e = login(&proxy, local, "alice", Some("wrong"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("28P01"), "{e}");
    assert_eq!(
        login(&proxy, local, "bob", Some("bob-secret"))
            .await
            .unwrap(),
        "postgres"
    );
    let e = login(&proxy, local, "bob", Some("wrong"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("28P01"), "{e}");

    // A rejecting rule, and no rule at all: refused before any password, with 28000.
    let e = login(&proxy, local, "carol", Some("carol-secret"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("28000"), "{e}");
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("rejects connection for host \"127.0.0.1\", user \"carol\""),
        "{message}"
    );
    let e = login(&proxy, local, "dave", Some("dave-secret"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("28000"), "{e}");
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("no auth_hba_file entry for host \"127.0.0.1\""),
        "{message}"
    );

    // Peer over the Unix socket: the operating system user logs in as itself without a
    // password; another name is refused, as is anyone a `local` rule rejects.
    assert_eq!(login(&proxy, socket, &me, None).await.unwrap(), "postgres");
    let e = login(&proxy, socket, "alice", Some("alice-secret"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("28000"), "{e}");
    let message = e.as_db_error().unwrap().message().to_string();
    assert_eq!(message, "Peer authentication failed for user \"alice\"");
    let e = login(&proxy, socket, "bob", Some("bob-secret"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("28000"), "{e}");
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(message.contains("host \"[local]\""), "{message}");

    // RELOAD swaps the rules: carol gets in with md5, bob is now refused.
    let swapped = format!(
        "local all {me} peer\n\
         host  app carol 127.0.0.1/32 md5\n"
    );
    proxy.handle().apply(config(&pg, &dir, &swapped)).unwrap();
    assert_eq!(
        login(&proxy, local, "carol", Some("carol-secret"))
            .await
            .unwrap(),
        "postgres"
    );
    let e = login(&proxy, local, "bob", Some("bob-secret"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("28000"), "{e}");
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn md5_rules_take_scram_for_a_scram_verifier_as_postgresql_does() {
    let dir = temp_dir("md5");
    let pg = Postgres::start().await.unwrap();
    let mut config = config(&pg, &dir, "host all all all md5\n");
    // A verifier, as pg_authid stores it: no md5 hash can be had from it.
    pg.psql("CREATE ROLE erin LOGIN PASSWORD 'erin-secret'")
        .unwrap();
    let direct = pg.connect("postgres").await.unwrap();
    let verifier = common::value(
        &direct,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'erin'",
    )
    .await;
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    config.users.push(User::new("erin", verifier));
    let proxy = Proxy::start(config).await.unwrap();
    let local = "127.0.0.1";
    assert_eq!(
        login(&proxy, local, "erin", Some("erin-secret"))
            .await
            .unwrap(),
        "postgres"
    );
    let e = login(&proxy, local, "erin", Some("wrong"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("28P01"), "{e}");
    // The challenge tells nobody which names exist: SCRAM for erin and for a name
    // that does not, md5 for a user whose md5 hash is known (as PostgreSQL does).
    for (user, want) in [("erin", 10), ("nobody", 10), ("alice", 5)] {
        assert_eq!(challenge(&proxy, user).await, want, "{user}");
    }
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Names are cut to PostgreSQL's 63 bytes before any rule is matched, as the server
/// cuts them: a longer name can't slip past a rule for the role it logs in as. An
/// empty user name is no name (28000), as in PostgreSQL.
#[tokio::test]
async fn rules_match_names_as_postgresql_cuts_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("long");
    let victim = "v".repeat(63);
    let rules = format!(
        "host app {victim} 127.0.0.1/32 reject\n\
         host app all 127.0.0.1/32 trust\n"
    );
    let pg = Postgres::start().await.unwrap();
    let proxy = Proxy::start(config(&pg, &dir, &rules)).await.unwrap();
    let local = "127.0.0.1";
    assert_eq!(
        login(&proxy, local, "alice", None).await.unwrap(),
        "postgres"
    );
    for name in [victim.clone(), format!("{victim}x"), format!("{victim}xyz")] {
        let e = login(&proxy, local, &name, None).await.unwrap_err();
        assert_eq!(code(&e), Some("28000"), "{name}: {e}");
        let message = e.as_db_error().unwrap().message().to_string();
        assert!(
            message.contains(&format!(
                "rejects connection for host \"127.0.0.1\", user \"{victim}\""
            )),
            "{message}"
        );
    }
    let body = b"\0\x03\0\0user\0\0database\0app\0\0";
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    raw.write_all(&startup).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        raw.read_to_end(&mut rest),
    )
    .await
    .expect("the login ends")
    .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("C28000"), "{text}");
    assert!(text.contains("no PostgreSQL user name specified"), "{text}");
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The authentication request the proxy answers a StartupMessage of `user` with (5:
/// MD5Password, 10: SASL).
async fn challenge(proxy: &Proxy, user: &str) -> i32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let body = format!("\0\x03\0\0user\0{user}\0database\0app\0\0");
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body.as_bytes());
    raw.write_all(&startup).await.unwrap();
    let mut head = [0u8; 9];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R', "{head:?}");
    i32::from_be_bytes([head[5], head[6], head[7], head[8]])
}

#[tokio::test]
async fn a_user_name_map_lets_another_system_user_in_by_peer() {
    let dir = temp_dir("ident");
    let socket = dir.to_str().unwrap();
    let me = os_user();
    let pg = Postgres::start().await.unwrap();
    // The test's own system user may log in as webapp, no one else.
    let rules = "local app all peer map=web\n";
    let mut config = config(&pg, &dir, rules);
    // Not even as itself: with a map, only its lines count (as in PostgreSQL).
    let maps = format!("web {me} webapp\nweb someone-else alice\n");
    config.ident = Some(Arc::new(
        pgopt_proxy::ident::IdentMap::parse(&maps).unwrap(),
    ));
    // A rule naming a map the file lacks, or any map without a file: refused at start.
    let mut missing = config.clone();
    missing.hba = Some(Arc::new(
        Hba::parse("local app all peer map=nosuch\n").unwrap(),
    ));
    let e = Proxy::start(missing).await.err().unwrap().to_string();
    assert!(e.contains("map \"nosuch\""), "{e}");
    let mut no_file = config.clone();
    no_file.ident = None;
    let e = Proxy::start(no_file).await.err().unwrap().to_string();
    assert!(e.contains("auth_ident_file"), "{e}");

    let proxy = Proxy::start(config).await.unwrap();
    assert_eq!(
        login(&proxy, socket, "webapp", None).await.unwrap(),
        "postgres"
    );
    let e = login(&proxy, socket, &me, None).await.unwrap_err();
    assert_eq!(code(&e), Some("28000"), "{e}");
    // alice is mapped from another system user, not from this one.
    let e = login(&proxy, socket, "alice", None).await.unwrap_err();
    assert_eq!(code(&e), Some("28000"), "{e}");
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("Peer authentication failed for user \"alice\""),
        "{message}"
    );
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn rules_for_the_admin_console_hold_for_both_its_names() {
    let dir = temp_dir("console");
    let pg = Postgres::start().await.unwrap();
    let port_of = |proxy: &Proxy| proxy.local_addr().port();
    for (rules, refused) in [
        // Refused by one name, then trusted by `all`: the other name is refused too.
        (
            "host pgopt all 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 trust\n",
            true,
        ),
        (
            "host pgbouncer all 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 trust\n",
            true,
        ),
        (
            "host app all 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 trust\n",
            false,
        ),
    ] {
        let mut config = config(&pg, &dir, rules);
        config.admin_users = vec!["postgres".into()];
        let proxy = Proxy::start(config).await.unwrap();
        for name in ["pgopt", "pgbouncer"] {
            let got = common::client_at("127.0.0.1", port_of(&proxy), "postgres", name, None).await;
            match (got, refused) {
                (Err(e), true) => assert_eq!(code(&e), Some("28000"), "{rules}{name}: {e}"),
                (Ok(console), false) => {
                    console.simple_query("SHOW VERSION").await.unwrap();
                }
                (got, _) => panic!("{rules}{name}: {:?}", got.map(|_| "logged in")),
            }
        }
    }
    // With a database entry named pgbouncer, that name is a database: its rules do
    // not open the console.
    let rules = "host pgbouncer all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n";
    let mut config = config(&pg, &dir, rules);
    config.admin_users = vec!["postgres".into()];
    let mut named = config.databases[0].clone();
    named.name = "pgbouncer".into();
    config.databases.push(named);
    let proxy = Proxy::start(config).await.unwrap();
    let e = common::client_at("127.0.0.1", port_of(&proxy), "postgres", "pgopt", None)
        .await
        .expect_err("the console let in by the pgbouncer database's rule");
    assert_eq!(code(&e), Some("28000"), "{e}");
    let db = common::client_at("127.0.0.1", port_of(&proxy), "postgres", "pgbouncer", None)
        .await
        .unwrap();
    assert_eq!(common::value(&db, "SELECT 1").await, "1");
    std::fs::remove_dir_all(&dir).unwrap();
}
