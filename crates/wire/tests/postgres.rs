//! Against a real PostgreSQL: verifiers and md5 hashes it stores, and a raw
//! protocol session spoken with this crate's framing, messages and SCRAM/md5.

use bytes::BytesMut;
use pgopt_embedded::{HostAuth, Postgres};
use pgopt_wire::backend::BackendMessage;
use pgopt_wire::frontend::{
    Bind, Describe, Execute, FrontendMessage, Parse, PasswordMessage, Query, SaslInitialResponse,
    SaslResponse,
};
use pgopt_wire::scram::{ScramClient, ScramKeys, ScramSecret, ScramServer, DEFAULT_ITERATIONS};
use pgopt_wire::startup::{ProtocolVersion, StartupMessage};
use pgopt_wire::{
    md5, split_frame, AuthError, Authentication, Format, Frame, List, Target, TransactionStatus,
    DEFAULT_MAX_MESSAGE_LEN, SCRAM_SHA_256,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SUPERUSER_PASSWORD: &str = "super-pw";

async fn start() -> Postgres {
    Postgres::builder()
        .password(SUPERUSER_PASSWORD, HostAuth::Md5)
        .preload_extensions(false)
        .start()
        .await
        .unwrap()
}

/// Creates a login role with `password` stored under `encryption` and returns
/// what PostgreSQL stored.
async fn create_role(pg: &Postgres, role: &str, password: &str, encryption: &str) -> String {
    let client = pg.connect("postgres").await.unwrap();
    client
        .batch_execute(&format!(
            "SET password_encryption = '{encryption}';
             CREATE ROLE {role} LOGIN PASSWORD '{password}'"
        ))
        .await
        .unwrap();
    client
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// A full exchange between our client and our server.
fn scram_exchange(secret: ScramSecret, password: &str) -> Result<ScramServer, AuthError> {
    let mut server = ScramServer::new(secret)?;
    let mut client = ScramClient::new(password)?;
    let server_first = server.handle_client_first(client.client_first().as_bytes())?;
    let client_final = client.handle_server_first(server_first.as_bytes())?;
    let server_final = server.handle_client_final(client_final.as_bytes())?;
    client.verify_server_final(server_final.as_bytes())?;
    Ok(server)
}

#[tokio::test]
async fn scram_verifier_stored_by_postgres_checks_passwords() {
    let pg = start().await;
    let stored = create_role(&pg, "u", "secret", "scram-sha-256").await;

    let secret = ScramSecret::parse(&stored).unwrap();
    assert_eq!(secret.iterations(), DEFAULT_ITERATIONS);
    assert_eq!(secret.salt().len(), 16);
    assert_eq!(
        secret.to_string(),
        stored,
        "formatting gives PostgreSQL's text back"
    );
    let ours = ScramSecret::from_password_with_salt("secret", secret.salt(), 4096).unwrap();
    assert_eq!(ours, secret, "our derivation matches PostgreSQL's");

    assert!(scram_exchange(secret.clone(), "secret")
        .unwrap()
        .is_authenticated());
    assert_eq!(
        scram_exchange(secret, "wrong").unwrap_err(),
        AuthError::WrongPassword
    );
}

#[tokio::test]
async fn md5_hash_stored_by_postgres_checks_passwords() {
    let pg = start().await;
    let stored = create_role(&pg, "m", "secret", "md5").await;
    assert_eq!(stored, md5::hash_password("m", "secret"));

    let salt = md5::random_salt().unwrap();
    let right = md5::client_response("m", "secret", salt);
    assert_eq!(md5::verify(&stored, salt, &right), Ok(()));
    let wrong = md5::client_response("m", "wrong", salt);
    assert_eq!(
        md5::verify(&stored, salt, &wrong),
        Err(AuthError::WrongPassword)
    );
}

/// A protocol connection made of this crate's parts and a TCP stream.
struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
    out: BytesMut,
}

enum Secret<'a> {
    Password(&'a str),
    Keys(ScramKeys),
}

impl RawConn {
    async fn connect(pg: &Postgres) -> RawConn {
        RawConn {
            stream: TcpStream::connect(("127.0.0.1", pg.port())).await.unwrap(),
            buf: BytesMut::with_capacity(8192),
            out: BytesMut::new(),
        }
    }

    async fn flush(&mut self) {
        self.stream.write_all(&self.out).await.unwrap();
        self.out.clear();
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, DEFAULT_MAX_MESSAGE_LEN).unwrap() {
                return frame;
            }
            let n = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "server closed the connection");
        }
    }

    /// Logs in; `Err(sqlstate)` when the server refuses.
    async fn login(&mut self, user: &str, secret: Secret<'_>) -> Result<(), String> {
        let params = [("user", user), ("database", "postgres")];
        StartupMessage {
            protocol: ProtocolVersion::V3_0,
            params: List::from(&params),
        }
        .encode(&mut self.out)
        .unwrap();
        self.flush().await;
        let mut scram = None;
        let mut saw_key_data = false;
        let mut saw_server_version = false;
        loop {
            let frame = self.frame().await;
            match frame.backend().unwrap() {
                BackendMessage::Authentication(Authentication::Md5Password { salt }) => {
                    let Secret::Password(password) = secret else {
                        panic!("md5 needs the password");
                    };
                    let response = md5::client_response(user, password, salt);
                    PasswordMessage {
                        password: &response,
                    }
                    .encode(&mut self.out)
                    .unwrap();
                    self.flush().await;
                }
                BackendMessage::Authentication(Authentication::Sasl { mechanisms }) => {
                    assert!(mechanisms.iter().any(|m| m == SCRAM_SHA_256));
                    let client = match &secret {
                        Secret::Password(password) => ScramClient::new(password),
                        Secret::Keys(keys) => ScramClient::with_keys(keys.clone()),
                    }
                    .unwrap();
                    SaslInitialResponse {
                        mechanism: SCRAM_SHA_256,
                        data: Some(client.client_first().as_bytes()),
                    }
                    .encode(&mut self.out)
                    .unwrap();
                    self.flush().await;
                    scram = Some(client);
                }
                BackendMessage::Authentication(Authentication::SaslContinue { data }) => {
                    let client = scram.as_mut().unwrap();
                    let client_final = client.handle_server_first(data).unwrap();
                    SaslResponse {
                        data: client_final.as_bytes(),
                    }
                    .encode(&mut self.out)
                    .unwrap();
                    self.flush().await;
                }
                BackendMessage::Authentication(Authentication::SaslFinal { data }) => {
                    let client = scram.as_mut().unwrap();
                    client.verify_server_final(data).unwrap();
                    assert!(client.is_complete());
                }
                BackendMessage::Authentication(Authentication::Ok) => {}
                BackendMessage::ParameterStatus(p) => {
                    saw_server_version |= p.name == "server_version";
                }
                BackendMessage::BackendKeyData(k) => {
                    saw_key_data = k.process_id > 0;
                }
                BackendMessage::ReadyForQuery(r) => {
                    assert_eq!(r.status, TransactionStatus::Idle);
                    assert!(saw_key_data && saw_server_version);
                    return Ok(());
                }
                BackendMessage::ErrorResponse(e) => {
                    return Err(e.code().unwrap_or_default().to_owned());
                }
                other => panic!("unexpected during login: {other:?}"),
            }
        }
    }

    /// Reads messages up to ReadyForQuery, returning their frames.
    async fn until_ready(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let frame = self.frame().await;
            let ready = frame.tag() == b'Z';
            frames.push(frame);
            if ready {
                return frames;
            }
        }
    }
}

fn decoded(frames: &[Frame]) -> Vec<BackendMessage<'_>> {
    frames.iter().map(|f| f.backend().unwrap()).collect()
}

#[tokio::test]
async fn raw_session_with_our_codec_scram_and_md5() {
    let pg = start().await;
    let scram_stored = create_role(&pg, "u", "secret", "scram-sha-256").await;
    create_role(&pg, "m", "secret", "md5").await;

    // SCRAM with our client; a wrong password gets 28P01.
    let mut conn = RawConn::connect(&pg).await;
    assert_eq!(
        conn.login("u", Secret::Password("wrong")).await,
        Err("28P01".to_owned())
    );
    let mut conn = RawConn::connect(&pg).await;
    conn.login("u", Secret::Password("secret")).await.unwrap();

    // Simple query: RowDescription, DataRow with a NULL, CommandComplete.
    Query {
        sql: "SELECT 1 AS one, NULL::text AS nothing, 'x' AS x FROM generate_series(1, 2)",
    }
    .encode(&mut conn.out)
    .unwrap();
    conn.flush().await;
    let frames = conn.until_ready().await;
    let msgs = decoded(&frames);
    let BackendMessage::RowDescription(desc) = msgs[0] else {
        panic!("{msgs:?}");
    };
    let names: Vec<_> = desc.fields.iter().map(|f| f.name).collect();
    assert_eq!(names, ["one", "nothing", "x"]);
    assert_eq!(desc.fields.get(0).unwrap().type_oid, 23);
    let BackendMessage::DataRow(row) = msgs[1] else {
        panic!("{msgs:?}");
    };
    let values: Vec<_> = row.values.iter().collect();
    assert_eq!(values, [Some(&b"1"[..]), None, Some(&b"x"[..])]);
    let BackendMessage::CommandComplete(done) = msgs[3] else {
        panic!("{msgs:?}");
    };
    assert_eq!(done.rows(), Some(2));

    // Extended query with a binary parameter and binary results.
    let types = [23u32];
    let param = 41i32.to_be_bytes();
    let params: [Option<&[u8]>; 1] = [Some(&param)];
    for msg in [
        FrontendMessage::Parse(Parse {
            name: "add",
            query: "SELECT $1 + 1 AS answer",
            param_types: List::from(&types),
        }),
        FrontendMessage::Bind(Bind {
            portal: "",
            statement: "add",
            param_formats: List::from(&[Format::Binary]),
            params: List::from(&params),
            result_formats: List::from(&[Format::Binary]),
        }),
        FrontendMessage::Describe(Describe {
            target: Target::Portal,
            name: "",
        }),
        FrontendMessage::Execute(Execute {
            portal: "",
            max_rows: 0,
        }),
        FrontendMessage::Sync,
    ] {
        msg.encode(&mut conn.out).unwrap();
    }
    conn.flush().await;
    let frames = conn.until_ready().await;
    let msgs = decoded(&frames);
    assert!(matches!(msgs[0], BackendMessage::ParseComplete), "{msgs:?}");
    assert!(matches!(msgs[1], BackendMessage::BindComplete), "{msgs:?}");
    let BackendMessage::DataRow(row) = msgs[3] else {
        panic!("{msgs:?}");
    };
    assert_eq!(row.values.get(0), Some(Some(&42i32.to_be_bytes()[..])));

    // An error inside a transaction: ErrorResponse, then status Failed.
    Query {
        sql: "BEGIN; SELECT * FROM no_such_table",
    }
    .encode(&mut conn.out)
    .unwrap();
    conn.flush().await;
    let frames = conn.until_ready().await;
    let msgs = decoded(&frames);
    let error = msgs
        .iter()
        .find_map(|m| match m {
            BackendMessage::ErrorResponse(e) => Some(*e),
            _ => None,
        })
        .unwrap();
    assert_eq!(error.code(), Some("42P01"));
    assert_eq!(error.severity(), Some("ERROR"));
    assert!(error.message().unwrap().contains("no_such_table"));
    let BackendMessage::ReadyForQuery(ready) = msgs[msgs.len() - 1] else {
        panic!("{msgs:?}");
    };
    assert_eq!(ready.status, TransactionStatus::Failed);

    // md5 with our client response.
    let mut conn = RawConn::connect(&pg).await;
    conn.login("m", Secret::Password("secret")).await.unwrap();

    // Passthrough: our server, holding PostgreSQL's verifier, authenticates a
    // client and recovers its ClientKey, which then logs in to PostgreSQL.
    let secret = ScramSecret::parse(&scram_stored).unwrap();
    let keys = scram_exchange(secret, "secret")
        .unwrap()
        .client_keys()
        .unwrap();
    let mut conn = RawConn::connect(&pg).await;
    conn.login("u", Secret::Keys(keys)).await.unwrap();
}
