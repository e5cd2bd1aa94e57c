//! Replication connections: a client whose start-up packet says `replication=true`
//! (physical: pg_basebackup, pg_receivewal, a standby's `primary_conninfo`) or
//! `replication=database` (logical: pg_recvlogical, a subscription's `CONNECTION`).
//!
//! As PgBouncer 1.23 does, each gets a server connection of its own, opened with the
//! client's start-up parameters (`application_name`, which `synchronous_standby_names`
//! names standbys by; `options`) and paired with the client for life: the bytes pass
//! both ways untouched (the walsender's commands and COPY BOTH are not pooled or
//! read), and when either side closes, so does the other. The pair is not pooled: a
//! walsender takes one of the server's `max_wal_senders` places, not one of
//! `max_connections`, so it is counted in `max_client_conn` but not in the pool's size
//! or `max_db_connections`. SHOW CLIENTS and SHOW SERVERS list both ends, with a
//! `replication` column; a CancelRequest reaches the walsender; KILL and a shutdown
//! past `shutdown_timeout` end the pair (a drain waits for it, as for a transaction).

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use pgopt_wire::backend::{BackendKeyData, ParameterStatus, ReadyForQuery};
use pgopt_wire::sqlstate;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::io::{send_fatal, write_all};
use crate::net::ClientStream;
use crate::pool::{CheckoutError, Pool};
use crate::session::{checkout_error, new_cancel_key, CancelSlot, Startup, AUTHENTICATION_OK};
use crate::shared::{Lifecycle, Shared};
use crate::stats::{unix_us_now, ClientInfo, ClientState};
use crate::ProxyError;

/// What a start-up packet's `replication` parameter asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Replication {
    /// A normal connection (no `replication`, or a false value).
    None = 0,
    /// `replication=true`: a physical walsender, for any database.
    Physical = 1,
    /// `replication=database`: a logical walsender of the database asked for.
    Logical = 2,
}

impl Replication {
    /// Read as PostgreSQL reads it: `database`, or a boolean (`true`, `on`, `yes`,
    /// `1` and their unique prefixes, any case); anything else is refused with its
    /// SQLSTATE and message. So is a second `replication` (PostgreSQL would take the
    /// last, pgopt's rules and the server could read different ones).
    pub fn of(params: &[(String, String)]) -> Result<Replication, (&'static str, String)> {
        let mut given = params.iter().filter(|(name, _)| name == "replication");
        let Some((_, value)) = given.next() else {
            return Ok(Replication::None);
        };
        if given.next().is_some() {
            let message = "parameter \"replication\" given more than once".to_string();
            return Err((sqlstate::PROTOCOL_VIOLATION, message));
        }
        if value == "database" {
            return Ok(Replication::Logical);
        }
        match parse_bool(value) {
            Some(true) => Ok(Replication::Physical),
            Some(false) => Ok(Replication::None),
            None => Err((sqlstate::INVALID_PARAMETER_VALUE, format!(
                "invalid value for parameter \"replication\": \"{value}\" (valid values are \"false\", 0, \"true\", 1, \"database\")"
            ))),
        }
    }

    /// What the server is sent for it.
    fn value(self) -> &'static str {
        match self {
            Replication::Logical => "database",
            _ => "true",
        }
    }

    /// As the views show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Replication::None => "none",
            Replication::Physical => "physical",
            Replication::Logical => "logical",
        }
    }

    fn from_u8(v: u8) -> Replication {
        match v {
            1 => Replication::Physical,
            2 => Replication::Logical,
            _ => Replication::None,
        }
    }
}

/// A connection's [`Replication`], for the views (set once it is known).
#[derive(Debug, Default)]
pub struct ReplicationCell(AtomicU8);

impl ReplicationCell {
    pub fn set(&self, kind: Replication) {
        self.0.store(kind as u8, Relaxed);
    }

    pub fn get(&self) -> Replication {
        Replication::from_u8(self.0.load(Relaxed))
    }
}

/// PostgreSQL's `parse_bool`: a whole word or a unique prefix of one, any case.
fn parse_bool(value: &str) -> Option<bool> {
    let v = value.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || v == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || v == "0" {
        Some(false)
    } else {
        None
    }
}

/// Serves a logged-in replication client: opens its server connection, tells it the
/// server's start-up answers (with a cancel key of pgopt's), then passes bytes both
/// ways until one side closes.
pub async fn serve(
    mut stream: ClientStream,
    buf: BytesMut,
    shared: &Arc<Shared>,
    info: &Arc<ClientInfo>,
    pool: &Arc<Pool>,
    startup: &Startup,
    kind: Replication,
) -> Result<(), ProxyError> {
    info.replication.set(kind);
    info.set_state(ClientState::Waiting, unix_us_now());
    // The client's own parameters for the walsender, its `replication` as read here.
    let mut extra: Vec<(&str, &str)> = startup
        .params
        .iter()
        .filter(|(k, _)| k != "replication")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    extra.push(("replication", kind.value()));
    let conn = match pool.connect_dedicated(&extra).await {
        Ok(conn) => conn,
        Err(e) => {
            // Before AuthenticationOk, as PostgreSQL refuses a login: the server's own
            // refusal (no pg_hba.conf entry for replication, no REPLICATION role…).
            let (code, message) = match e {
                CheckoutError::Connect(ProxyError::Refused { code, message, .. }) => {
                    (code, message)
                }
                e => {
                    let (code, message) = checkout_error(pool, e);
                    (code.to_string(), message)
                }
            };
            pool.stats.record_error(code.as_bytes());
            send_fatal(&mut stream, &code, &message).await;
            return Ok(());
        }
    };
    // A shutdown or KILL may have come while it waited or connected.
    if shared.lifecycle_now() != Lifecycle::Running || info.killed() {
        send_fatal(&mut stream, sqlstate::ADMIN_SHUTDOWN, ended_why(shared)).await;
        return Ok(());
    }
    conn.info.replication.set(kind);
    conn.info.set_link(info.id, unix_us_now());
    pool.servers.add(&conn.info);
    info.set_link(conn.info.id);
    info.set_state(ClientState::Active, unix_us_now());

    let key = new_cancel_key()?;
    let cancel_slot: CancelSlot = Arc::new(Mutex::new(Some(conn.cancel.clone())));
    shared.register_cancel(key, &cancel_slot);
    let result = relay(stream, buf, shared, info, conn, key).await;
    shared.unregister_cancel(key);
    result
}

async fn relay(
    mut stream: ClientStream,
    buf: BytesMut,
    shared: &Shared,
    info: &ClientInfo,
    conn: crate::server::ServerConn,
    key: pgopt_wire::startup::CancelRequest,
) -> Result<(), ProxyError> {
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(AUTHENTICATION_OK);
    for (name, value) in &conn.params {
        ParameterStatus { name, value }.encode(&mut out)?;
    }
    BackendKeyData {
        process_id: key.process_id,
        secret_key: key.secret_key,
    }
    .encode(&mut out);
    ReadyForQuery {
        status: conn.status,
    }
    .encode(&mut out);
    // What the server sent beyond its start-up answers (nothing, unless asked).
    out.extend_from_slice(&conn.read_buf);
    write_all(&mut stream, &out).await?;

    let mut server = conn.stream;
    if !buf.is_empty() {
        // What the client sent right behind its start-up packet.
        server
            .write_all(&buf)
            .await
            .map_err(ProxyError::server_io)?;
        server.flush().await.map_err(ProxyError::server_io)?;
    }
    let frames = Frames::default();
    let (mut client_read, mut client_write) = tokio::io::split(stream);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let ended = {
        let up = async {
            let _ = pump(&mut client_read, &mut server_write, None).await;
            // The client is gone or said Terminate: the walsender ends too.
            let _ = server_write.shutdown().await;
            std::future::pending::<()>().await
        };
        let down = pump(&mut server_read, &mut client_write, Some(&frames));
        tokio::select! {
            () = up => false,
            _ = down => false,
            () = until_ended(shared, info) => true,
        }
    };
    // The walsender goes first: a KILL frees its place whatever the client does.
    drop((server_read, server_write));
    let mut client = client_read.unsplit(client_write);
    if ended && frames.between() {
        send_fatal(&mut client, sqlstate::ADMIN_SHUTDOWN, ended_why(shared)).await;
    }
    // (Bounded: a client that reads nothing would hold a TLS close for ever.)
    let _ = tokio::time::timeout(CLOSE_WAIT, client.shutdown()).await;
    Ok(())
}

/// How long a client's connection may take to close.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn ended_why(shared: &Shared) -> &'static str {
    if shared.lifecycle_now() >= Lifecycle::Draining {
        "pgopt is shutting down"
    } else {
        "terminated by pgopt's admin console (KILL)"
    }
}

/// Copies `from` to `to` until `from` ends or either fails; with `frames`, follows
/// where the bytes stand in the protocol's messages.
async fn pump<R, W>(from: &mut R, to: &mut W, frames: Option<&Frames>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if let Some(frames) = frames {
            frames.writing(true);
        }
        to.write_all(&buf[..n]).await?;
        // TLS holds written bytes until flushed.
        to.flush().await?;
        if let Some(frames) = frames {
            frames.advance(&buf[..n]);
            frames.writing(false);
        }
    }
}

/// Returns once the client is KILLed or the shutdown's time is up.
async fn until_ended(shared: &Shared, info: &ClientInfo) {
    loop {
        let woken = info.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if info.killed() || shared.lifecycle_now() >= Lifecycle::Closing {
            return;
        }
        woken.await;
    }
}

/// Where the bytes passed to the client stand: pgopt's own FATAL may go only between
/// two of the server's messages, never inside one.
#[derive(Default)]
struct Frames(Mutex<FrameState>);

#[derive(Default)]
struct FrameState {
    /// Bytes of the current message's body still to come.
    left: usize,
    /// The next header's bytes seen so far (a header may arrive in pieces).
    head: [u8; 5],
    have: usize,
    /// A write to the client is under way (cut off, it ended anywhere).
    writing: bool,
}

impl Frames {
    fn state(&self) -> std::sync::MutexGuard<'_, FrameState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writing(&self, on: bool) {
        self.state().writing = on;
    }

    fn advance(&self, mut bytes: &[u8]) {
        let mut state = self.state();
        let FrameState {
            left, head, have, ..
        } = &mut *state;
        while !bytes.is_empty() {
            if *left > 0 {
                let k = (*left).min(bytes.len());
                *left -= k;
                bytes = &bytes[k..];
                continue;
            }
            let k = (5 - *have).min(bytes.len());
            head[*have..*have + k].copy_from_slice(&bytes[..k]);
            *have += k;
            bytes = &bytes[k..];
            if *have == 5 {
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                *left = len.saturating_sub(4);
                *have = 0;
            }
        }
    }

    fn between(&self) -> bool {
        let state = self.state();
        !state.writing && state.left == 0 && state.have == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(value: &str) -> Result<Replication, (&'static str, String)> {
        Replication::of(&[("replication".to_string(), value.to_string())])
    }

    #[test]
    fn replication_values_read_as_postgresql_reads_them() {
        assert_eq!(Replication::of(&[]), Ok(Replication::None));
        assert_eq!(of("database"), Ok(Replication::Logical));
        for yes in ["true", "TRUE", "t", "tr", "yes", "y", "on", "ON", "1"] {
            assert_eq!(of(yes), Ok(Replication::Physical), "{yes}");
        }
        for no in ["false", "f", "no", "n", "off", "of", "0"] {
            assert_eq!(of(no), Ok(Replication::None), "{no}");
        }
        let twice = [("replication", "true"), ("replication", "false")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(Replication::of(&twice).unwrap_err().0, "08P01");
        for bad in ["", "o", "Database", "2", "truth", "database "] {
            let (code, e) = of(bad).unwrap_err();
            assert_eq!(code, "22023");
            assert!(
                e.contains("invalid value for parameter \"replication\""),
                "{e}"
            );
        }
    }

    #[test]
    fn frames_know_when_the_bytes_are_between_messages() {
        let frames = Frames::default();
        assert!(frames.between());
        // A CopyData of 3 bytes, then a header cut after two bytes.
        let mut bytes = vec![b'd', 0, 0, 0, 7, 1, 2, 3];
        frames.advance(&bytes[..3]);
        assert!(!frames.between());
        frames.advance(&bytes[3..]);
        assert!(frames.between());
        bytes = vec![b'd', 0, 0, 0, 5, 9];
        frames.advance(&bytes[..2]);
        assert!(!frames.between());
        frames.advance(&bytes[2..5]);
        assert!(!frames.between());
        frames.advance(&bytes[5..]);
        assert!(frames.between());
        frames.writing(true);
        assert!(!frames.between());
    }
}
