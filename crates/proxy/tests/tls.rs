//! TLS to clients: psql with sslmode=require through the proxy, `tls_mode = require`
//! refusing plain text, and unencrypted bytes smuggled behind an SSLRequest; TLS to
//! servers, cancel requests included.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{certificate, config_for, run, temp_dir};
use pgopt_embedded::Postgres;
use pgopt_proxy::{ChannelBinding, ClientTls, PoolMode, Proxy, ServerTls, ServerTlsMode, TlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(pg: &Postgres, mode: TlsMode, dir: &std::path::Path) -> Proxy {
    let (cert, key) = certificate(dir);
    let mut config = config_for(pg, PoolMode::Transaction, 2);
    config.client_tls = ClientTls {
        mode,
        cert_file: Some(cert),
        key_file: Some(key),
        ca_file: None,
        ..Default::default()
    };
    config.unix_socket_dir = Some(dir.to_str().unwrap().to_string());
    config.admin_users = vec!["postgres".into()];
    Proxy::start(config).await.unwrap()
}

/// psql through the proxy with `sslmode`; its stdout, or its stderr as the error.
async fn psql(pg: &Postgres, proxy: &Proxy, sslmode: &str, sql: &str) -> Result<String, String> {
    psql_at(pg, proxy, "127.0.0.1", sslmode, sql).await
}

/// [`psql`] to `host`: an address, or the directory of the proxy's Unix socket.
async fn psql_at(
    pg: &Postgres,
    proxy: &Proxy,
    host: &str,
    sslmode: &str,
    sql: &str,
) -> Result<String, String> {
    let params = format!("host={host} user=postgres sslmode={sslmode}");
    psql_with(pg, proxy, &params, sql).await
}

/// psql through the proxy to database `app` with connection parameters `params`.
async fn psql_with(
    pg: &Postgres,
    proxy: &Proxy,
    params: &str,
    sql: &str,
) -> Result<String, String> {
    let mut cmd = Command::new(pg.binaries().program("psql"));
    cmd.args([
        "-XAt",
        "-d",
        &format!("port={} dbname=app {params}", proxy.local_addr().port()),
        "-c",
        sql,
    ]);
    // Off the runtime thread: the proxy under test runs on it.
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn psql_with_sslmode_require_gets_tls_and_plain_still_works_in_prefer() {
    let dir = temp_dir("prefer");
    let pg = Postgres::start().await.unwrap();
    let proxy = start(&pg, TlsMode::Prefer, &dir).await;
    let out = psql(&pg, &proxy, "require", "SELECT 40 + 2").await.unwrap();
    assert_eq!(out, "42");
    // A multi-row result and a COPY over TLS.
    let out = psql(
        &pg,
        &proxy,
        "require",
        "SELECT count(*) FROM (SELECT repeat('x', 1000) FROM generate_series(1, 5000)) s",
    )
    .await
    .unwrap();
    assert_eq!(out, "5000");
    assert_eq!(psql(&pg, &proxy, "disable", "SELECT 1").await.unwrap(), "1");
    // SHOW CLIENTS names the TLS version and cipher of a client that has TLS (its
    // `tls` column, as PgBouncer's), and nothing for one that has not.
    let console =
        |sslmode: &str| format!("host=127.0.0.1 user=postgres dbname=pgopt sslmode={sslmode}");
    let out = psql_with(&pg, &proxy, &console("require"), "SHOW CLIENTS").await;
    let out = out.unwrap();
    assert!(out.contains("|TLSv1.3/TLS13_"), "{out}");
    let out = psql_with(&pg, &proxy, &console("disable"), "SHOW CLIENTS").await;
    let out = out.unwrap();
    assert!(!out.contains("TLSv1"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn require_mode_refuses_plain_text_clients() {
    let dir = temp_dir("require");
    let pg = Postgres::start().await.unwrap();
    let proxy = start(&pg, TlsMode::Require, &dir).await;
    let err = psql(&pg, &proxy, "disable", "SELECT 1").await.unwrap_err();
    assert!(err.contains("only TLS connections"), "{err}");
    assert_eq!(psql(&pg, &proxy, "require", "SELECT 1").await.unwrap(), "1");
    // As PgBouncer: the Unix-domain socket needs no TLS (libpq asks none over one, and
    // an SSLRequest there is answered 'N', as PostgreSQL answers it).
    let socket_dir = dir.to_str().unwrap();
    let out = psql_at(&pg, &proxy, socket_dir, "disable", "SELECT 2").await;
    assert_eq!(out.unwrap(), "2");
    let mut raw = tokio::net::UnixStream::connect(proxy.unix_socket().unwrap())
        .await
        .unwrap();
    raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    assert_eq!(raw.read_u8().await.unwrap(), b'N');
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bytes_behind_an_ssl_request_are_refused() {
    let dir = temp_dir("smuggle");
    let pg = Postgres::start().await.unwrap();
    let proxy = start(&pg, TlsMode::Prefer, &dir).await;
    let mut s = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    // SSLRequest followed at once by a plain StartupMessage.
    let mut bytes = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    bytes.extend_from_slice(&[0, 0, 0, 9, 0, 3, 0, 0, 0]);
    s.write_all(&bytes).await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("08P01"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_missing_certificate_is_a_clear_start_error() {
    let pg = Postgres::start().await.unwrap();
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.client_tls = ClientTls {
        mode: TlsMode::Require,
        cert_file: Some("/nonexistent/server.crt".into()),
        key_file: Some("/nonexistent/server.key".into()),
        ca_file: None,
        ..Default::default()
    };
    let err = Proxy::start(config).await.err().unwrap().to_string();
    assert!(err.contains("/nonexistent/server.crt"), "{err}");
}

/// A CA, and a server certificate it signed for `names` (subjectAltName entries such
/// as `DNS:localhost,IP:127.0.0.1`): (ca.crt, server.crt, server.key).
fn signed_certificate(dir: &std::path::Path, names: &str) -> (PathBuf, PathBuf, PathBuf) {
    signed_certificate_as(dir, "server", Some(&format!("subjectAltName={names}")))
}

/// [`signed_certificate`] with subject common name `cn` and the extensions `ext` (a
/// line of an openssl extension file); none: an X.509 v1 certificate, as PostgreSQL's
/// documentation makes one with OpenSSL 3.0.
fn signed_certificate_as(
    dir: &std::path::Path,
    cn: &str,
    ext: Option<&str>,
) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509", "-days", "2", "-subj", "/CN=pgopt test CA"])
        .args(ec)
        .args(["-keyout", &p("ca.key"), "-out", &p("ca.crt")]));
    run(Command::new("openssl")
        .args(["req", "-new", "-subj", &format!("/CN={cn}")])
        .args(ec)
        .args(["-keyout", &p("server.key"), "-out", &p("server.csr")]));
    let mut sign = Command::new("openssl");
    sign.args([
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("server.crt"),
    ]);
    if let Some(ext) = ext {
        std::fs::write(dir.join("server.ext"), format!("{ext}\n")).unwrap();
        sign.args(["-extfile", &p("server.ext")]);
    }
    run(&mut sign);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

/// A proxy to `pg` with TLS to the server set so; `host` is how the proxy names it.
async fn proxy_to(pg: &Postgres, host: &str, tls: ServerTls) -> Proxy {
    let mut config = config_for(pg, PoolMode::Transaction, 2);
    config.databases[0].host = host.into();
    config.server_tls = tls;
    Proxy::start(config).await.unwrap()
}

/// Whether the proxy's server connection is encrypted, or the error a client gets.
async fn server_ssl(proxy: &Proxy) -> Result<bool, tokio_postgres::Error> {
    let client = common::connect(proxy, "postgres", None).await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn tls_to_servers_with_libpq_sslmodes() {
    let dir = temp_dir("server");
    let (ca, cert, key) = signed_certificate(&dir, "DNS:localhost,IP:127.0.0.1");
    let pg = Postgres::builder().tls(&cert, &key).start().await.unwrap();
    let tls = |mode, ca_file: Option<&PathBuf>| ServerTls {
        mode,
        ca_file: ca_file.cloned(),
        ..ServerTls::default()
    };

    // prefer (the default) and require encrypt without checking the certificate.
    for mode in [ServerTlsMode::Prefer, ServerTlsMode::Require] {
        let proxy = proxy_to(&pg, "127.0.0.1", tls(mode, None)).await;
        assert!(server_ssl(&proxy).await.unwrap(), "{mode:?}");
    }
    // Values of hundreds of kilobytes (queued for the server as they came, then
    // flushed through TLS) arrive whole: in a Bind, and in a query's text.
    let proxy = proxy_to(&pg, "127.0.0.1", tls(ServerTlsMode::Require, None)).await;
    let client = common::connect(&proxy, "postgres", None).await.unwrap();
    let v = "abcdefghij".repeat(50_000);
    let bound = client
        .prepare("SELECT length($1::text), md5($1::text)")
        .await
        .unwrap();
    let row = client.query_one(&bound, &[&v]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 500_000);
    let inline = client
        .simple_query(&format!("SELECT md5('{v}')"))
        .await
        .unwrap();
    let Some(tokio_postgres::SimpleQueryMessage::Row(inline)) = inline.get(1) else {
        panic!("{inline:?}");
    };
    assert_eq!(Some(row.get::<_, &str>(1)), inline.get(0));
    let proxy = proxy_to(&pg, "127.0.0.1", tls(ServerTlsMode::Disable, None)).await;
    assert!(!server_ssl(&proxy).await.unwrap());
    // verify-full by IP address and by name, both in the certificate.
    for host in ["127.0.0.1", "localhost"] {
        let proxy = proxy_to(&pg, host, tls(ServerTlsMode::VerifyFull, Some(&ca))).await;
        assert!(server_ssl(&proxy).await.unwrap(), "verify-full to {host}");
    }

    // A certificate from another CA fails verify-ca; the client hears 08006 with why.
    let other = temp_dir("other-ca");
    let (other_ca, _, _) = signed_certificate(&other, "DNS:localhost");
    let proxy = proxy_to(
        &pg,
        "127.0.0.1",
        tls(ServerTlsMode::VerifyCa, Some(&other_ca)),
    )
    .await;
    let err = server_ssl(&proxy).await.unwrap_err();
    assert_eq!(common::code(&err), Some("08006"), "{err}");
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("TLS handshake"), "{message}");
    // require with a CA file checks the chain, as libpq does.
    let proxy = proxy_to(
        &pg,
        "127.0.0.1",
        tls(ServerTlsMode::Require, Some(&other_ca)),
    )
    .await;
    assert!(server_ssl(&proxy).await.is_err());
    let _ = std::fs::remove_dir_all(other);

    // Plenty of data both ways over the encrypted server connection.
    let proxy = proxy_to(&pg, "127.0.0.1", tls(ServerTlsMode::VerifyFull, Some(&ca))).await;
    let client = common::connect(&proxy, "postgres", None).await.unwrap();
    let rows = client
        .query(
            "SELECT i, repeat('x', 1000) FROM generate_series(1, 5000) i",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5000);
    let big = "y".repeat(2_000_000);
    let row = client
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2_000_000);
    let _ = std::fs::remove_dir_all(dir);
}

/// A server certificate without extensions (X.509 v1, as `openssl x509 -req` makes
/// one without `-extfile`, PostgreSQL's documented recipe with OpenSSL 3.0) is taken in
/// prefer and require, as libpq takes it; and verify-full of a certificate with no
/// subjectAltName checks its common name, as libpq does. Before, the first server was
/// unreachable in every mode, the default included, and the second failed
/// verify-full.
#[tokio::test]
async fn certificates_without_extensions_or_names_are_read_as_libpq_reads_them() {
    let dir = temp_dir("v1");
    let (_ca, cert, key) = signed_certificate_as(&dir, "server", None);
    let text = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert));
    assert!(text.contains("Version: 1"), "{text}");
    let pg = Postgres::builder().tls(&cert, &key).start().await.unwrap();
    for mode in [ServerTlsMode::Prefer, ServerTlsMode::Require] {
        let tls = ServerTls {
            mode,
            ..ServerTls::default()
        };
        let proxy = proxy_to(&pg, "127.0.0.1", tls).await;
        assert!(server_ssl(&proxy).await.unwrap(), "{mode:?}");
    }
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);

    let dir = temp_dir("cn");
    let (ca, cert, key) =
        signed_certificate_as(&dir, "localhost", Some("basicConstraints=CA:FALSE"));
    let pg = Postgres::builder().tls(&cert, &key).start().await.unwrap();
    let tls = ServerTls {
        mode: ServerTlsMode::VerifyFull,
        ca_file: Some(ca),
        ..ServerTls::default()
    };
    let proxy = proxy_to(&pg, "localhost", tls.clone()).await;
    assert!(
        server_ssl(&proxy).await.unwrap(),
        "the common name is the host's"
    );
    let proxy = proxy_to(&pg, "127.0.0.1", tls).await;
    let err = server_ssl(&proxy).await.unwrap_err();
    assert_eq!(common::code(&err), Some("08006"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_server_name_the_certificate_lacks_fails_verify_full_but_not_verify_ca() {
    let dir = temp_dir("names");
    let (ca, cert, key) = signed_certificate(&dir, "DNS:db.example");
    let pg = Postgres::builder().tls(&cert, &key).start().await.unwrap();
    let tls = |mode| ServerTls {
        mode,
        ca_file: Some(ca.clone()),
        ..ServerTls::default()
    };
    let proxy = proxy_to(&pg, "127.0.0.1", tls(ServerTlsMode::VerifyCa)).await;
    assert!(server_ssl(&proxy).await.unwrap());
    let proxy = proxy_to(&pg, "127.0.0.1", tls(ServerTlsMode::VerifyFull)).await;
    let err = server_ssl(&proxy).await.unwrap_err();
    assert_eq!(common::code(&err), Some("08006"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn require_refuses_a_server_without_tls() {
    let pg = Postgres::start().await.unwrap();
    let proxy = proxy_to(
        &pg,
        "127.0.0.1",
        ServerTls {
            mode: ServerTlsMode::Require,
            ca_file: None,
            ..ServerTls::default()
        },
    )
    .await;
    let err = server_ssl(&proxy).await.unwrap_err();
    assert_eq!(common::code(&err), Some("08006"), "{err}");
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("does not accept TLS"), "{message}");
}

/// Lets only TLS reach the server from now on: `hostssl` lines alone in pg_hba.conf
/// (the unix socket stays for `psql`), then a reload.
fn hostssl_only(pg: &Postgres) {
    std::fs::write(
        pg.data_dir().join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
    )
    .unwrap();
    pg.psql("SELECT pg_reload_conf()").unwrap();
}

/// A TCP hop in front of the server that passes only connections opening with an
/// SSLRequest (as a TLS-only network path would) and drops the rest, counted.
///
/// PostgreSQL itself reads a CancelRequest before it looks at pg_hba.conf, so even a
/// `hostssl`-only server acts on a plain-text cancel (this test passed without TLS
/// cancels until the gate was added): the gate is what tells the two apart.
async fn tls_only_gate(server_port: u16) -> (u16, Arc<AtomicUsize>) {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                if inbound.read_exact(&mut first).await.is_err() {
                    return;
                }
                if first != SSL_REQUEST {
                    counter.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await
                else {
                    return;
                };
                if outbound.write_all(&first).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, refused)
}

#[tokio::test]
async fn a_cancel_reaches_a_server_that_takes_only_tls() {
    let dir = temp_dir("cancel");
    let (cert, key) = certificate(&dir);
    let pg = Postgres::builder().tls(&cert, &key).start().await.unwrap();
    hostssl_only(&pg);
    // Plain text is refused now.
    let err = pg
        .connect("postgres")
        .await
        .expect_err("plain text refused");
    assert!(format!("{err:?}").contains("no encryption"), "{err:?}");

    let (gate, refused) = tls_only_gate(pg.port()).await;
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.databases[0].port = gate;
    config.server_tls = ServerTls {
        mode: ServerTlsMode::Require,
        ca_file: None,
        ..ServerTls::default()
    };
    let proxy = Proxy::start(config).await.unwrap();
    let client = common::connect(&proxy, "postgres", None).await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the server connection is encrypted");
    let token = client.cancel_token();
    let watcher = common::connect(&proxy, "postgres", None).await.unwrap();
    let canceller = tokio::spawn(async move {
        common::wait_until_running(&watcher, "SELECT pg_sleep(30)").await;
        // Plain text to the proxy, which must encrypt it on to the server.
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        client.batch_execute("SELECT pg_sleep(30)"),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no cancel reached the server ({} plain-text connections refused)",
            refused.load(Ordering::SeqCst)
        )
    })
    .unwrap_err();
    canceller.await.unwrap();
    assert_eq!(common::code(&err), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "something went in plain text"
    );
    client.batch_execute("SELECT 1").await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A client certificate for `cn`, signed by the CA [`signed_certificate`] made in `dir`
/// (or, with `own_ca`, by a CA of its own the proxy does not know): (crt, key).
fn client_certificate(dir: &std::path::Path, cn: &str, own_ca: bool) -> (PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let name = format!("{cn}{}", if own_ca { "-stranger" } else { "" });
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca_crt, ca_key) = if own_ca {
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=someone else's CA",
            ])
            .args(ec)
            .args(["-keyout", &p("other-ca.key"), "-out", &p("other-ca.crt")]));
        (p("other-ca.crt"), p("other-ca.key"))
    } else {
        (p("ca.crt"), p("ca.key"))
    };
    let (crt, key, csr) = (
        p(&format!("{name}.crt")),
        p(&format!("{name}.key")),
        p(&format!("{name}.csr")),
    );
    run(Command::new("openssl")
        .args(["req", "-new", "-subj", &format!("/CN={cn}")])
        .args(ec)
        .args(["-keyout", &key, "-out", &csr]));
    // Version 3 with its extensions (webpki takes no version 1 certificate).
    let ext = p("client.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args([
            "x509", "-req", "-days", "2", "-in", &csr, "-CA", &ca_crt, "-CAkey", &ca_key,
        ])
        .args(["-CAcreateserial", "-extfile", &ext, "-out", &crt]));
    // libpq refuses a key others may read.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (crt.into(), key.into())
}

#[tokio::test]
async fn cert_rules_take_a_client_certificate_named_for_the_user() {
    let dir = temp_dir("client-cert");
    let pg = Postgres::start().await.unwrap();
    let (ca, cert, key) = signed_certificate(&dir, "DNS:localhost,IP:127.0.0.1");
    let (alice_crt, alice_key) = client_certificate(&dir, "alice", false);
    let (stranger_crt, stranger_key) = client_certificate(&dir, "alice", true);
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.databases[0].user = Some("postgres".into());
    config.client_tls = ClientTls {
        mode: TlsMode::Prefer,
        cert_file: Some(cert),
        key_file: Some(key),
        ca_file: Some(ca),
        ..Default::default()
    };
    let rules = "hostssl app alice,bob 127.0.0.1/32 cert\nhost all all all reject\n";
    config.hba = Some(Arc::new(pgopt_proxy::hba::Hba::parse(rules).unwrap()));
    // Without a CA file nobody could ever pass: refused at start.
    let mut without_ca = config.clone();
    without_ca.client_tls.ca_file = None;
    let e = Proxy::start(without_ca).await.err().unwrap().to_string();
    assert!(e.contains("proxy.tls_ca_file"), "{e}");
    // `auth = "cert"` without rules: the same two refusals.
    let mut cert_for_all = config.clone();
    cert_for_all.hba = None;
    cert_for_all.client_auth = pgopt_proxy::ClientAuth::Cert;
    let proxy = Proxy::start(config).await.unwrap();
    let cert_for_all = Proxy::start(cert_for_all).await.unwrap();
    let with_cert = |user: &str, crt: &PathBuf, key: &PathBuf| {
        format!(
            "host=127.0.0.1 user={user} sslmode=require sslcert={} sslkey={}",
            crt.display(),
            key.display()
        )
    };
    let sql = "SELECT current_user";
    // The certificate names alice: she logs in, with no password.
    let out = psql_with(
        &pg,
        &proxy,
        &with_cert("alice", &alice_crt, &alice_key),
        sql,
    )
    .await;
    assert_eq!(out.unwrap(), "postgres");
    // Bob with alice's certificate, and alice with none, are refused.
    let out = psql_with(&pg, &proxy, &with_cert("bob", &alice_crt, &alice_key), sql).await;
    let e = out.unwrap_err();
    assert!(
        e.contains("certificate authentication failed for user \"bob\""),
        "{e}"
    );
    // No certificate: refused before anything else, as PostgreSQL (cert implies
    // clientcert=verify-full).
    let none = "host=127.0.0.1 user=alice sslmode=require sslcert=/nonexistent sslkey=/nonexistent";
    for proxy in [&proxy, &cert_for_all] {
        let e = psql_with(&pg, proxy, none, sql).await.unwrap_err();
        assert!(
            e.contains("connection requires a valid client certificate"),
            "{e}"
        );
    }
    let bob = with_cert("bob", &alice_crt, &alice_key);
    let e = psql_with(&pg, &cert_for_all, &bob, sql).await.unwrap_err();
    assert!(
        e.contains("certificate authentication failed for user \"bob\""),
        "{e}"
    );
    drop(cert_for_all);
    // A certificate from a CA the proxy does not trust fails the handshake.
    let out = psql_with(
        &pg,
        &proxy,
        &with_cert("alice", &stranger_crt, &stranger_key),
        sql,
    )
    .await;
    assert!(out.is_err(), "{out:?}");
    // Plain text matches no hostssl rule.
    let e = psql_with(
        &pg,
        &proxy,
        "host=127.0.0.1 user=alice sslmode=disable",
        sql,
    )
    .await
    .unwrap_err();
    assert!(e.contains("rejects connection"), "{e}");
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn clientcert_options_ask_a_password_login_for_a_certificate_too() {
    let dir = temp_dir("clientcert");
    let pg = Postgres::start().await.unwrap();
    let (ca, cert, key) = signed_certificate(&dir, "DNS:localhost,IP:127.0.0.1");
    let (alice_crt, alice_key) = client_certificate(&dir, "alice", false);
    let (bob_crt, bob_key) = client_certificate(&dir, "bob", false);
    let (carol_crt, carol_key) = client_certificate(&dir, "carol", false);
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.databases[0].user = Some("postgres".into());
    config.users = vec![
        pgopt_proxy::User::new("alice", "alice-secret"),
        pgopt_proxy::User::new("bob", "bob-secret"),
    ];
    config.admin_users = vec!["alice".into()];
    config.client_tls = ClientTls {
        mode: TlsMode::Prefer,
        cert_file: Some(cert),
        key_file: Some(key),
        ca_file: Some(ca),
        ..Default::default()
    };
    let rules = "hostssl app,pgopt alice 127.0.0.1/32 md5 clientcert=verify-full\n\
                 hostssl app bob 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n\
                 hostssl app carol 127.0.0.1/32 trust clientcert=verify-full\n\
                 host all all all reject\n";
    config.hba = Some(Arc::new(pgopt_proxy::hba::Hba::parse(rules).unwrap()));
    // The option asks for certificates: without a CA file for them, refused at start.
    let mut without_ca = config.clone();
    without_ca.client_tls.ca_file = None;
    let e = Proxy::start(without_ca).await.err().unwrap().to_string();
    assert!(e.contains("clientcert"), "{e}");
    let proxy = Proxy::start(config).await.unwrap();
    let login = |user: &str, password: &str, cert: Option<(&PathBuf, &PathBuf)>| {
        let (crt, key) = cert.map_or(("/nonexistent".into(), "/nonexistent".into()), |(c, k)| {
            (c.display().to_string(), k.display().to_string())
        });
        format!(
            "host=127.0.0.1 user={user} password={password} sslmode=require sslcert={crt} sslkey={key}"
        )
    };
    let sql = "SELECT current_user";
    let alice = Some((&alice_crt, &alice_key));
    let bob = Some((&bob_crt, &bob_key));
    // verify-full: alice's password and her own certificate.
    let out = psql_with(&pg, &proxy, &login("alice", "alice-secret", alice), sql).await;
    assert_eq!(out.unwrap(), "postgres");
    let e = psql_with(&pg, &proxy, &login("alice", "alice-secret", None), sql)
        .await
        .unwrap_err();
    assert!(
        e.contains("connection requires a valid client certificate"),
        "{e}"
    );
    // Bob's certificate does not name alice: her right password fails, as in PostgreSQL.
    let e = psql_with(&pg, &proxy, &login("alice", "alice-secret", bob), sql)
        .await
        .unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"alice\""),
        "{e}"
    );
    let e = psql_with(&pg, &proxy, &login("alice", "wrong", alice), sql)
        .await
        .unwrap_err();
    assert!(e.contains("password authentication failed"), "{e}");
    // The admin console asks the same of her.
    let console = |cert| format!("{} dbname=pgopt", login("alice", "alice-secret", cert));
    let out = psql_with(&pg, &proxy, &console(alice), "SHOW VERSION").await;
    assert!(out.unwrap().contains("pgopt"));
    let e = psql_with(&pg, &proxy, &console(bob), "SHOW VERSION").await;
    let e = e.unwrap_err();
    assert!(e.contains("password authentication failed"), "{e}");
    // trust with verify-full: her own certificate is all carol needs; another's fails
    // as PostgreSQL says it.
    let carol = Some((&carol_crt, &carol_key));
    let out = psql_with(&pg, &proxy, &login("carol", "unused", carol), sql).await;
    assert_eq!(out.unwrap(), "postgres");
    let e = psql_with(&pg, &proxy, &login("carol", "unused", alice), sql)
        .await
        .unwrap_err();
    assert!(
        e.contains("\"trust\" authentication failed for user \"carol\""),
        "{e}"
    );
    // verify-ca: any certificate the CA signed, with bob's password.
    let out = psql_with(&pg, &proxy, &login("bob", "bob-secret", alice), sql).await;
    assert_eq!(out.unwrap(), "postgres");
    let e = psql_with(&pg, &proxy, &login("bob", "bob-secret", None), sql)
        .await
        .unwrap_err();
    assert!(
        e.contains("connection requires a valid client certificate"),
        "{e}"
    );
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_server_that_asks_for_a_certificate_gets_pgopts_own() {
    let dir = temp_dir("servercert");
    let (ca, cert, key) = signed_certificate(&dir, "DNS:localhost,IP:127.0.0.1");
    let (postgres_crt, postgres_key) = client_certificate(&dir, "postgres", false);
    let (stranger_crt, stranger_key) = client_certificate(&dir, "postgres", true);
    let mut pg = Postgres::builder().tls(&cert, &key).start().await.unwrap();
    // Over TCP the server takes only TLS logins with a certificate its CA signed that
    // names the user (in force once the restart returns).
    let ca_text = ca.to_str().unwrap().replace('\'', "''");
    pg.psql(&format!("ALTER SYSTEM SET ssl_ca_file = '{ca_text}'"))
        .unwrap();
    std::fs::write(
        pg.data_dir().join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
    )
    .unwrap();
    pg.restart().unwrap();
    // pgopt's certificate and key, at paths a renewal overwrites.
    let (crt, key) = (dir.join("pgopt.crt"), dir.join("pgopt.key"));
    std::fs::copy(&postgres_crt, &crt).unwrap();
    std::fs::copy(&postgres_key, &key).unwrap();
    let with = |cert_file: Option<&PathBuf>, key_file: Option<&PathBuf>| {
        let mut config = config_for(&pg, PoolMode::Transaction, 2);
        config.server_tls = ServerTls {
            mode: ServerTlsMode::VerifyFull,
            ca_file: Some(ca.clone()),
            cert_file: cert_file.cloned(),
            key_file: key_file.cloned(),
            ..ServerTls::default()
        };
        config
    };
    // Without one, the server refuses pgopt's login.
    let proxy = Proxy::start(with(None, None)).await.unwrap();
    let err = server_ssl(&proxy).await.unwrap_err();
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("certificate"), "{message}");
    // A RELOAD that adds one: new server connections present it.
    let config = with(Some(&crt), Some(&key));
    proxy.handle().set_reloader(move || Ok(config.clone()));
    proxy.handle().reload().unwrap();
    assert!(server_ssl(&proxy).await.unwrap());
    // Renewed in place (here by one the server's CA did not sign): the next RELOAD
    // uses the files' new contents.
    std::fs::copy(&stranger_crt, &crt).unwrap();
    std::fs::copy(&stranger_key, &key).unwrap();
    proxy.handle().reload().unwrap();
    let err = server_ssl(&proxy).await.unwrap_err();
    let message = err.as_db_error().unwrap().message();
    // The server's TLS alert: it does not know the new certificate's CA.
    assert!(message.contains("UnknownCA"), "{message}");
    // Half a pair is refused at start, TLS to servers off or not.
    for mode in [ServerTlsMode::VerifyFull, ServerTlsMode::Disable] {
        let mut half = with(Some(&crt), None);
        half.server_tls.mode = mode;
        let e = Proxy::start(half).await.err().unwrap().to_string();
        assert!(e.contains("give both or neither"), "{e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_cache_listeners_reach_a_server_that_takes_only_tls() {
    let dir = temp_dir("listeners");
    let (cert, key) = certificate(&dir);
    let mut pg = Postgres::builder()
        .tls(&cert, &key)
        .setting("wal_level", "logical")
        .start()
        .await
        .unwrap();
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .unwrap();
    hostssl_only(&pg);
    // In force once the restart returns (a reload takes a moment).
    pg.restart().unwrap();
    let with = |mode| {
        let mut c = config_for(&pg, PoolMode::Transaction, 2);
        c.admin_users = vec!["postgres".into()];
        c.server_tls = ServerTls {
            mode,
            ..ServerTls::default()
        };
        c.cache = pgopt_proxy::CacheSettings {
            enabled: true,
            tables: vec!["items".into()],
            wal_listener: true,
            ddl_listener: true,
            ..Default::default()
        };
        c
    };
    // Without TLS to servers, the server refuses the listeners.
    let proxy = Proxy::start(with(ServerTlsMode::Disable)).await.unwrap();
    common::wait_for_cache(&proxy, "refused", |r| {
        r["wal"].starts_with("down") && r["ddl"].starts_with("down")
    })
    .await;
    // A RELOAD that turns it on reaches them at their next attempt: both log in over
    // TLS, as the pools do.
    let config = with(ServerTlsMode::Require);
    proxy.handle().set_reloader(move || Ok(config.clone()));
    proxy.handle().reload().unwrap();
    common::wait_for_cache(&proxy, "streaming and listening", |r| {
        r["wal"] == "streaming" && r["ddl"] == "listening"
    })
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

/// SCRAM over TLS binds to the channel (SCRAM-SHA-256-PLUS, `tls-server-end-point`),
/// as PostgreSQL offers it: libpq's `channel_binding=require` logs in with
/// certificates signed with SHA-384 and SHA-512 (a RELOAD changes the certificate and
/// the hash with it). A certificate whose signature names no hash (Ed25519) offers no
/// binding: `require` is refused by libpq, the default (`prefer`) logs in without.
#[tokio::test]
async fn scram_over_tls_binds_to_the_channel() {
    let dir = temp_dir("binding");
    let pg = Postgres::start().await.unwrap();
    let certificate = |name: &str, key_args: &[&str]| {
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
            ])
            .args(key_args)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt));
        (crt, key)
    };
    let p384 = certificate(
        "p384",
        &[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-sha384",
        ],
    );
    let rsa = certificate("rsa", &["-newkey", "rsa:2048", "-sha512"]);
    let ed25519 = certificate("ed25519", &["-newkey", "ed25519"]);
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.databases[0].user = Some("postgres".into());
    config.users = vec![pgopt_proxy::User::new("alice", "alice-secret")];
    config.admin_users = vec!["alice".into()];
    let rules = "hostssl app,pgopt alice 127.0.0.1/32 scram-sha-256\nhost all all all reject\n";
    config.hba = Some(Arc::new(pgopt_proxy::hba::Hba::parse(rules).unwrap()));
    let with = move |(cert, key): (PathBuf, PathBuf)| {
        let mut config = config.clone();
        config.client_tls = ClientTls {
            mode: TlsMode::Prefer,
            cert_file: Some(cert),
            key_file: Some(key),
            ca_file: None,
            ..Default::default()
        };
        config
    };
    let proxy = Proxy::start(with(p384)).await.unwrap();
    let login = |password: &str, binding: &str| {
        format!("host=127.0.0.1 user=alice password={password} sslmode=require channel_binding={binding}")
    };
    let sql = "SELECT 40 + 2";
    for binding in ["require", "prefer", "disable"] {
        let out = psql_with(&pg, &proxy, &login("alice-secret", binding), sql).await;
        assert_eq!(out.unwrap(), "42", "channel_binding={binding}");
    }
    let console = format!("{} dbname=pgopt", login("alice-secret", "require"));
    let out = psql_with(&pg, &proxy, &console, "SHOW VERSION").await;
    assert!(out.unwrap().contains("pgopt"));
    let e = psql_with(&pg, &proxy, &login("wrong", "require"), sql)
        .await
        .unwrap_err();
    assert!(e.contains("password authentication failed"), "{e}");

    let reload_with = |cert| {
        let config = with(cert);
        proxy.handle().set_reloader(move || Ok(config.clone()));
        proxy.handle().reload().unwrap();
    };
    reload_with(rsa);
    let out = psql_with(&pg, &proxy, &login("alice-secret", "require"), sql).await;
    assert_eq!(out.unwrap(), "42");

    reload_with(ed25519);
    let e = psql_with(&pg, &proxy, &login("alice-secret", "require"), sql)
        .await
        .unwrap_err();
    assert!(e.contains("channel binding"), "{e}");
    let out = psql_with(&pg, &proxy, &login("alice-secret", "prefer"), sql).await;
    assert_eq!(out.unwrap(), "42");

    // Turned off (`tls_channel_binding = false`): SCRAM-SHA-256 alone, as PgBouncer.
    let mut config = with(certificate(
        "again",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ));
    config.client_tls.channel_binding = false;
    proxy.handle().set_reloader(move || Ok(config.clone()));
    proxy.handle().reload().unwrap();
    let e = psql_with(&pg, &proxy, &login("alice-secret", "require"), sql)
        .await
        .unwrap_err();
    assert!(e.contains("channel binding"), "{e}");
    let out = psql_with(&pg, &proxy, &login("alice-secret", "prefer"), sql).await;
    assert_eq!(out.unwrap(), "42");
    let _ = std::fs::remove_dir_all(dir);
}

/// A rustls verifier that takes any certificate (a man in the middle's view of the
/// server): signatures are still checked, against whatever the certificate says.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A man in the middle between pgopt and the server at `server_port`: it answers
/// pgopt's SSLRequest itself, shows its own certificate (`cert`, `key`), opens TLS to
/// the server on its own, and passes the decrypted bytes between the two. Its port.
async fn man_in_the_middle(server_port: u16, cert: PathBuf, key: PathBuf) -> u16 {
    use rustls::pki_types::pem::PemObject;
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let server_side = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let client_side = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_side));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_side));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (acceptor, connector) = (acceptor.clone(), connector.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                inbound.read_exact(&mut first).await.ok()?;
                if first != SSL_REQUEST {
                    return None;
                }
                let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", server_port))
                    .await
                    .ok()?;
                outbound.write_all(&SSL_REQUEST).await.ok()?;
                let mut answer = [0u8; 1];
                outbound.read_exact(&mut answer).await.ok()?;
                inbound.write_all(b"S").await.ok()?;
                let mut inbound = acceptor.accept(inbound).await.ok()?;
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut outbound = connector.connect(name, outbound).await.ok()?;
                tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                    .await
                    .ok()
            });
        }
    });
    port
}

/// pgopt's SCRAM login to a server over TLS binds to the channel when the server
/// offers it (as libpq's `channel_binding=prefer`): through a man in the middle
/// showing its own certificate, which `sslmode=require` does not check, the server
/// refuses the login, though the password is right; straight to the server it works.
#[tokio::test]
async fn scram_to_servers_over_tls_binds_to_the_channel() {
    let dir = temp_dir("server-binding");
    let (_, cert, key) = signed_certificate(&dir, "DNS:localhost,IP:127.0.0.1");
    let pg = Postgres::builder()
        .tls(&cert, &key)
        .password("pg-secret", pgopt_embedded::HostAuth::ScramSha256)
        .start()
        .await
        .unwrap();
    let require = ServerTls {
        mode: ServerTlsMode::Require,
        ..ServerTls::default()
    };
    let proxy = proxy_to(&pg, "127.0.0.1", require.clone()).await;
    assert!(server_ssl(&proxy).await.unwrap());

    let middle_dir = temp_dir("middle");
    let (middle_cert, middle_key) = certificate(&middle_dir);
    let middle = man_in_the_middle(pg.port(), middle_cert, middle_key).await;
    let through = |binding| {
        let mut config = config_for(&pg, PoolMode::Transaction, 2);
        config.databases[0].port = middle;
        config.server_tls = ServerTls {
            channel_binding: binding,
            ..require.clone()
        };
        Proxy::start(config)
    };
    let message = |err: tokio_postgres::Error| {
        err.as_db_error()
            .map_or(err.to_string(), |e| e.message().to_string())
    };
    let proxy = through(ChannelBinding::Prefer).await.unwrap();
    let e = message(server_ssl(&proxy).await.unwrap_err());
    assert!(e.contains("channel binding"), "{e}");
    // `server_channel_binding = "disable"`: for a relay that ends TLS on purpose.
    let proxy = through(ChannelBinding::Disable).await.unwrap();
    assert!(server_ssl(&proxy).await.unwrap());

    // `require`: bound straight to the server; refused by a server that lets pgopt in
    // without binding (trust here), and with no TLS to servers at all.
    let bound = ServerTls {
        channel_binding: ChannelBinding::Require,
        ..require.clone()
    };
    let proxy = proxy_to(&pg, "127.0.0.1", bound.clone()).await;
    assert!(server_ssl(&proxy).await.unwrap());
    let trusting = Postgres::builder().tls(&cert, &key).start().await.unwrap();
    let proxy = proxy_to(&trusting, "127.0.0.1", bound.clone()).await;
    let e = message(server_ssl(&proxy).await.unwrap_err());
    assert!(e.contains("without SCRAM channel binding"), "{e}");
    let mut config = config_for(&pg, PoolMode::Transaction, 2);
    config.server_tls = ServerTls {
        mode: ServerTlsMode::Disable,
        ..bound
    };
    let e = Proxy::start(config).await.err().unwrap().to_string();
    assert!(e.contains("server_channel_binding"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(middle_dir);
}
