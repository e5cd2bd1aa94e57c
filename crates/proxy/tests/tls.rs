//! TLS to clients: psql with sslmode=require through the proxy, `tls_mode = require`
//! refusing plain text, and unencrypted bytes smuggled behind an SSLRequest.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{config_for, run};
use pgopt_embedded::Postgres;
use pgopt_proxy::{ClientTls, PoolMode, Proxy, TlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate and key for localhost, made with the openssl tool.
fn certificate(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    (cert, key)
}

async fn start(pg: &Postgres, mode: TlsMode, dir: &std::path::Path) -> Proxy {
    let (cert, key) = certificate(dir);
    let mut config = config_for(pg, PoolMode::Transaction, 2);
    config.client_tls = ClientTls {
        mode,
        cert_file: Some(cert),
        key_file: Some(key),
    };
    Proxy::start(config).await.unwrap()
}

/// psql through the proxy with `sslmode`; its stdout, or its stderr as the error.
async fn psql(pg: &Postgres, proxy: &Proxy, sslmode: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(pg.binaries().program("psql"));
    cmd.args([
        "-XAt",
        "-d",
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=app sslmode={sslmode}",
            proxy.local_addr().port()
        ),
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

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgopt-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
    };
    let err = Proxy::start(config).await.err().unwrap().to_string();
    assert!(err.contains("/nonexistent/server.crt"), "{err}");
}
