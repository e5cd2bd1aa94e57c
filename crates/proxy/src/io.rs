//! Small I/O pieces the session code shares: whole frames during start-up, writes,
//! and FATAL errors to clients.

use bytes::BytesMut;
use pgopt_wire::{split_frame, ErrorBuilder, Frame, Severity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::ClientStream;
use crate::ProxyError;

/// Turns TCP keepalive on for `tcp` with `keepalive`'s timings (zero: the system's),
/// and sets its user timeout.
pub fn keep_alive(tcp: &tokio::net::TcpStream, keepalive: &crate::config::Keepalive) {
    let socket = socket2::SockRef::from(tcp);
    if !keepalive.user_timeout.is_zero() {
        if let Err(e) = socket.set_tcp_user_timeout(Some(keepalive.user_timeout)) {
            tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
        }
    }
    if !keepalive.probes {
        return;
    }
    let mut params = socket2::TcpKeepalive::new();
    if !keepalive.idle.is_zero() {
        params = params.with_time(keepalive.idle);
    }
    if !keepalive.interval.is_zero() {
        params = params.with_interval(keepalive.interval);
    }
    if keepalive.count > 0 {
        params = params.with_retries(keepalive.count);
    }
    if let Err(e) = socket.set_tcp_keepalive(&params) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
}

/// Reads one whole frame from a client (start-up and authentication only). One that
/// can't be a message (too long, a bad length) ends the connection with a FATAL
/// 08P01 that says why.
pub async fn read_frame(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    max_len: u32,
) -> Result<Frame, ProxyError> {
    loop {
        match split_frame(buf, max_len) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(source) => {
                let message = format!("invalid message from the client: {source}");
                send_fatal(stream, pgopt_wire::sqlstate::PROTOCOL_VIOLATION, &message).await;
                return Err(ProxyError::Decode {
                    peer: "client",
                    source,
                });
            }
        }
        if stream.read_buf(buf).await.map_err(ProxyError::client_io)? == 0 {
            return Err(ProxyError::client_io(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
}

/// Writes and, over TLS, flushes the encrypted records out.
pub async fn write_all(stream: &mut ClientStream, bytes: &[u8]) -> Result<(), ProxyError> {
    stream
        .write_all(bytes)
        .await
        .map_err(ProxyError::client_io)?;
    if stream.is_tls() {
        stream.flush().await.map_err(ProxyError::client_io)?;
    }
    Ok(())
}

/// [`write_all`], given up while it waits for a client that stopped reading when the
/// client is killed (the admin console's KILL, or a shutdown past its timeout) or at
/// `until` (`query_timeout`).
pub async fn write_all_bounded(
    stream: &mut ClientStream,
    bytes: &[u8],
    info: &crate::stats::ClientInfo,
    until: Option<std::time::Instant>,
) -> Result<(), ProxyError> {
    let deadline = async {
        match until {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    let gave_up = |why: &str| {
        let kind = std::io::ErrorKind::ConnectionAborted;
        Err(ProxyError::client_io(std::io::Error::new(kind, why)))
    };
    // Biased: a write that completes at once (the usual case) never polls the others.
    tokio::select! {
        biased;
        written = write_all(stream, bytes) => written,
        () = info.until_killed() => {
            gave_up("killed (KILL, or a shutdown's end) while the client was not reading")
        }
        () = deadline => gave_up("query_timeout ran out while the client was not reading"),
    }
}

tokio::task_local! {
    /// In a client's session: the first FATAL error it was sent (why it ended).
    pub static FATAL: std::cell::RefCell<Option<String>>;
}

/// Sends a FATAL ErrorResponse (the connection ends after it); failures are ignored,
/// and a client that does not read gets a second, then nothing.
pub async fn send_fatal(stream: &mut ClientStream, code: &str, message: &str) {
    let _ = FATAL.try_with(|fatal| {
        fatal
            .borrow_mut()
            .get_or_insert_with(|| format!("{message} ({code})"));
    });
    let mut out = BytesMut::with_capacity(64 + message.len());
    if ErrorBuilder::new(Severity::Fatal, code, message)
        .encode_error(&mut out)
        .is_ok()
    {
        let write = async {
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
        close_tls(stream).await;
    }
}

/// Ends a TLS session with close_notify (clients report a bare EOF as an error);
/// nothing for plain TCP.
pub async fn close_tls(stream: &mut ClientStream) {
    if stream.is_tls() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Keepalive;

    #[tokio::test]
    async fn keepalive_and_the_user_timeout_are_set_on_the_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        for (probes, user_timeout) in [(true, 7_000), (false, 2_500), (true, 0)] {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let keepalive = Keepalive {
                probes,
                user_timeout: Duration::from_millis(user_timeout),
                ..Keepalive::default()
            };
            super::keep_alive(&tcp, &keepalive);
            let socket = socket2::SockRef::from(&tcp);
            assert_eq!(socket.keepalive().unwrap(), probes);
            let set = socket.tcp_user_timeout().unwrap().unwrap_or_default();
            assert_eq!(set, Duration::from_millis(user_timeout));
        }
    }
}
