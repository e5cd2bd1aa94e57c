//! One client connection: start-up, authentication, then the relay between the client
//! and whichever server connection its pool lends it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use pgopt_wire::backend::{BackendKeyData, ParameterStatus, ReadyForQuery};
use pgopt_wire::startup::{split_startup, CancelRequest, StartupPacket, MAX_STARTUP_PACKET_LEN};
use pgopt_wire::{md5, sqlstate, TransactionStatus};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::auth;
use crate::io::{send_fatal, write_all};
use crate::pool::{CheckoutError, Pool};
use crate::relay::Relay;
use crate::shared::Shared;
use crate::ProxyError;

/// Where a client's CancelRequest must go while it holds a server connection.
pub type CancelTarget = Mutex<Option<(SocketAddr, CancelRequest)>>;
pub type CancelSlot = Arc<CancelTarget>;

pub async fn run(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let Ok(_client_slot) = shared.client_slots.clone().try_acquire_owned() else {
        send_fatal(
            &mut stream,
            sqlstate::TOO_MANY_CONNECTIONS,
            "no more connections allowed (max_client_conn)",
        )
        .await;
        return;
    };
    match session(stream, &shared).await {
        Ok(()) => tracing::debug!(%peer, "client session ended"),
        Err(e) => tracing::debug!(%peer, error = %e, "client session ended with an error"),
    }
}

async fn session(mut stream: TcpStream, shared: &Arc<Shared>) -> Result<(), ProxyError> {
    let config = &shared.config;
    let mut buf = BytesMut::with_capacity(8192);
    let (user, database) = loop {
        let frame = loop {
            match split_startup(&mut buf, MAX_STARTUP_PACKET_LEN) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(source) => return Err(reject_startup(&mut stream, source).await),
            }
            if stream
                .read_buf(&mut buf)
                .await
                .map_err(ProxyError::client_io)?
                == 0
            {
                return Ok(());
            }
        };
        match frame.decode() {
            Ok(StartupPacket::SslRequest) | Ok(StartupPacket::GssEncRequest) => {
                // No TLS yet: 'N' tells the client to go on in plain text (or give up).
                write_all(&mut stream, b"N").await?;
            }
            Ok(StartupPacket::Cancel(request)) => {
                shared.forward_cancel(request).await;
                return Ok(());
            }
            Ok(StartupPacket::Startup(m)) => {
                if m.protocol.major != 3 {
                    send_fatal(
                        &mut stream,
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        &format!(
                            "unsupported frontend protocol {}.{}",
                            m.protocol.major, m.protocol.minor
                        ),
                    )
                    .await;
                    return Ok(());
                }
                let Some(user) = m.user() else {
                    send_fatal(
                        &mut stream,
                        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                        "no PostgreSQL user name specified in startup packet",
                    )
                    .await;
                    return Ok(());
                };
                break (user.to_string(), m.database().unwrap_or(user).to_string());
            }
            Err(source) => return Err(reject_startup(&mut stream, source).await),
        }
    };
    let span = tracing::debug_span!("client", %user, db = %database);
    let _enter = span.enter();

    let Some(db) = config.databases.iter().find(|d| d.name == database) else {
        send_fatal(
            &mut stream,
            sqlstate::INVALID_CATALOG_NAME,
            &format!("database \"{database}\" does not exist"),
        )
        .await;
        return Ok(());
    };
    let creds = shared.users.get(&user);
    auth::authenticate(
        &mut stream,
        &mut buf,
        config.client_auth,
        &user,
        creds,
        config.max_message_len,
    )
    .await?;

    let pool = shared.pool_for(db, &user, creds);
    let params = match pool.params() {
        Some(params) => params,
        None => {
            // The first client of a pool: connecting now also tells it whether the
            // server is up, before it sends a query.
            match pool.checkout(config.query_wait_timeout).await {
                Ok(checkout) => checkout.release(),
                Err(e) => {
                    fail_checkout(&mut stream, &pool, e).await;
                    return Ok(());
                }
            }
            pool.params().unwrap_or_default()
        }
    };

    let cancel_slot: CancelSlot = Arc::new(Mutex::new(None));
    let key = CancelRequest {
        process_id: next_process_id(),
        secret_key: i32::from_be_bytes(md5::random_salt()?),
    };
    shared.register_cancel(key, &cancel_slot);
    let mut out = BytesMut::with_capacity(512);
    for (name, value) in params.iter() {
        ParameterStatus { name, value }.encode(&mut out)?;
    }
    BackendKeyData {
        process_id: key.process_id,
        secret_key: key.secret_key,
    }
    .encode(&mut out);
    ReadyForQuery {
        status: TransactionStatus::Idle,
    }
    .encode(&mut out);
    let result = async {
        write_all(&mut stream, &out).await?;
        Relay::new(stream, buf, pool, shared.clone(), cancel_slot)
            .run()
            .await
    }
    .await;
    shared.unregister_cancel(key);
    result
}

/// A malformed startup packet: the client hears why, then the connection ends.
async fn reject_startup(stream: &mut TcpStream, source: pgopt_wire::DecodeError) -> ProxyError {
    send_fatal(
        stream,
        sqlstate::PROTOCOL_VIOLATION,
        "invalid startup packet",
    )
    .await;
    ProxyError::Decode {
        peer: "client",
        source,
    }
}

/// Tells the client why it gets no server connection, with the SQLSTATE clients expect.
pub async fn fail_checkout(stream: &mut TcpStream, pool: &Pool, error: CheckoutError) {
    let (code, message) = match error {
        CheckoutError::WaitTimeout(wait) => (
            sqlstate::QUERY_CANCELED,
            format!(
                "query_wait_timeout: no server connection for {} ms (pool of {} is busy)",
                wait.as_millis(),
                pool.target.describe()
            ),
        ),
        CheckoutError::Connect(e) => (
            sqlstate::CONNECTION_FAILURE,
            format!("pgopt could not connect to the server: {e}"),
        ),
    };
    send_fatal(stream, code, &message).await;
}

/// Process ids handed to clients (with a random secret key) for their CancelRequests.
fn next_process_id() -> i32 {
    static NEXT: AtomicI32 = AtomicI32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff
}
