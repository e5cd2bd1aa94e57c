//! The relay between a logged-in client and the server connection it is lent. Bytes go
//! through as they arrive; a [`Scanner`] on each direction sees where messages start, to
//! count the ReadyForQuery owed for each Query/Sync and to give the connection back to
//! the pool at the end of a transaction (transaction mode) or of the session.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgopt_wire::{sqlstate, TransactionStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::PoolMode;
use crate::io::send_fatal;
use crate::pool::{Checkout, Pool};
use crate::scanner::Scanner;
use crate::session::{fail_checkout, CancelSlot};
use crate::shared::Shared;
use crate::ProxyError;

/// The server→client direction and what it has told us.
struct ToClient {
    client: TcpStream,
    sbuf: BytesMut,
    sscan: Scanner,
    /// ReadyForQuery messages still owed for Query/Sync/FunctionCall sent to the server.
    pending: usize,
    /// Transaction status from the last ReadyForQuery.
    status: TransactionStatus,
}

impl ToClient {
    /// Scans what the server sent and writes it all to the client.
    async fn deliver(&mut self) -> Result<(), ProxyError> {
        let (pending, status) = (&mut self.pending, &mut self.status);
        let scanned = self.sscan.scan(&self.sbuf, |m| {
            if m.tag == b'Z' {
                *pending = pending.saturating_sub(1);
                *status = match m.first_body_byte {
                    Some(b'T') => TransactionStatus::InTransaction,
                    Some(b'E') => TransactionStatus::Failed,
                    _ => TransactionStatus::Idle,
                };
            }
        });
        if let Err(source) = scanned {
            return Err(ProxyError::Decode {
                peer: "server",
                source,
            });
        }
        self.client
            .write_all(&self.sbuf)
            .await
            .map_err(ProxyError::client_io)?;
        self.sbuf.clear();
        Ok(())
    }

    /// Nothing in flight and no transaction open: the server may serve someone else.
    fn server_idle(&self) -> bool {
        self.pending == 0 && self.status == TransactionStatus::Idle && self.sscan.at_boundary()
    }
}

pub struct Relay {
    out: ToClient,
    /// Client bytes not yet forwarded: at most a partial message header.
    cbuf: BytesMut,
    cscan: Scanner,
    server: Option<Checkout>,
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    cancel: CancelSlot,
}

impl Relay {
    pub fn new(
        client: TcpStream,
        cbuf: BytesMut,
        pool: Arc<Pool>,
        shared: Arc<Shared>,
        cancel: CancelSlot,
    ) -> Relay {
        let max_len = shared.config.max_message_len;
        Relay {
            out: ToClient {
                client,
                sbuf: BytesMut::with_capacity(16 * 1024),
                sscan: Scanner::new(max_len),
                pending: 0,
                status: TransactionStatus::Idle,
            },
            cbuf,
            cscan: Scanner::new(max_len),
            server: None,
            pool,
            shared,
            cancel,
        }
    }

    pub async fn run(mut self) -> Result<(), ProxyError> {
        // The client may have sent queries right behind its start-up messages.
        let mut fresh = self.cbuf.len();
        loop {
            if fresh > 0 && !self.on_client_bytes(fresh).await? {
                break;
            }
            let has_server = self.server.is_some();
            tokio::select! {
                read = read_server(&mut self.server, &mut self.out.sbuf), if has_server => {
                    match read {
                        Ok(0) | Err(_) => {
                            self.server_lost().await;
                            return Ok(());
                        }
                        Ok(_) => {
                            self.out.deliver().await?;
                            self.maybe_release();
                        }
                    }
                    fresh = 0;
                }
                read = self.out.client.read_buf(&mut self.cbuf) => {
                    fresh = read.unwrap_or(0);
                    if fresh == 0 {
                        break; // the client went away
                    }
                }
            }
        }
        self.finish();
        Ok(())
    }

    /// Handles `fresh` new client bytes at the end of `cbuf`. `Ok(false)`: session over.
    async fn on_client_bytes(&mut self, fresh: usize) -> Result<bool, ProxyError> {
        let held = self.cbuf.len() - fresh;
        let mut terminate_at = None;
        let mut syncs = 0;
        let scanned = self.cscan.scan(&self.cbuf[held..], |m| {
            if terminate_at.is_some() {
                return;
            }
            match m.tag {
                b'X' => terminate_at = Some((held as isize + m.offset).max(0) as usize),
                b'Q' | b'S' | b'F' => syncs += 1,
                _ => {}
            }
        });
        if let Err(e) = scanned {
            send_fatal(
                &mut self.out.client,
                sqlstate::PROTOCOL_VIOLATION,
                &e.to_string(),
            )
            .await;
            self.server = None; // its state is unknown: close it
            return Err(ProxyError::Decode {
                peer: "client",
                source: e,
            });
        }
        let upto = match terminate_at {
            Some(at) => at,
            None => self.cbuf.len() - self.cscan.partial_header_len(),
        };
        if upto > 0 {
            if self.server.is_none() && !self.checkout().await {
                return Ok(false);
            }
            self.out.pending += syncs;
            self.forward(upto).await?;
        }
        Ok(terminate_at.is_none())
    }

    async fn checkout(&mut self) -> bool {
        match self
            .pool
            .checkout(self.shared.config.query_wait_timeout)
            .await
        {
            Ok(checkout) => {
                *lock(&self.cancel) = Some((checkout.conn.addr, checkout.conn.cancel_key));
                self.out.status = checkout.conn.status;
                self.server = Some(checkout);
                true
            }
            Err(e) => {
                fail_checkout(&mut self.out.client, &self.pool, e).await;
                false
            }
        }
    }

    /// Writes `cbuf[..upto]` to the server while relaying whatever the server sends
    /// meanwhile, so neither side can block the other with full socket buffers.
    async fn forward(&mut self, upto: usize) -> Result<(), ProxyError> {
        let data = self.cbuf.split_to(upto);
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let (mut rd, mut wr) = server.conn.stream.split();
        let mut written = 0;
        while written < data.len() {
            tokio::select! {
                w = wr.write(&data[written..]) => match w {
                    Ok(n) if n > 0 => written += n,
                    _ => {
                        self.server_lost().await;
                        return Err(ProxyError::server_io(std::io::ErrorKind::BrokenPipe.into()));
                    }
                },
                r = rd.read_buf(&mut self.out.sbuf) => match r {
                    Ok(n) if n > 0 => self.out.deliver().await?,
                    _ => {
                        self.server_lost().await;
                        return Err(ProxyError::server_io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                },
            }
        }
        Ok(())
    }

    fn maybe_release(&mut self) {
        if self.shared.config.pool_mode == PoolMode::Transaction && self.out.server_idle() {
            if let Some(checkout) = self.server.take() {
                *lock(&self.cancel) = None;
                checkout.release();
            }
        }
    }

    /// The server connection broke: the client learns it with a proper error.
    async fn server_lost(&mut self) {
        self.server = None;
        *lock(&self.cancel) = None;
        send_fatal(
            &mut self.out.client,
            sqlstate::CONNECTION_FAILURE,
            "server closed the connection unexpectedly",
        )
        .await;
    }

    /// The client is gone: its server connection goes back to the pool only when
    /// nothing is in flight; a session-mode connection is reset first.
    fn finish(mut self) {
        *lock(&self.cancel) = None;
        let Some(checkout) = self.server.take() else {
            return;
        };
        if !self.out.server_idle() {
            return; // dropped: closed, the server aborts what was running
        }
        match self.shared.config.pool_mode {
            PoolMode::Transaction => checkout.release(),
            PoolMode::Session => {
                tokio::spawn(reset_and_release(checkout));
            }
        }
    }
}

async fn read_server(server: &mut Option<Checkout>, buf: &mut BytesMut) -> std::io::Result<usize> {
    match server {
        Some(checkout) => checkout.conn.stream.read_buf(buf).await,
        None => std::future::pending().await,
    }
}

/// `DISCARD ALL` so the next client starts clean; on any trouble the connection closes.
async fn reset_and_release(mut checkout: Checkout) {
    const RESET: &[u8] = b"Q\0\0\0\x10DISCARD ALL\0";
    let stream = &mut checkout.conn.stream;
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(RESET).await?;
        let mut buf = BytesMut::with_capacity(256);
        let mut scanner = Scanner::new(1 << 20);
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            let mut idle = None;
            let _ = scanner.scan(&buf, |m| {
                if m.tag == b'Z' {
                    idle = Some(m.first_body_byte == Some(b'I'));
                }
            });
            buf.clear();
            if let Some(idle) = idle {
                return Ok(idle && scanner.at_boundary());
            }
        }
    })
    .await;
    if let Ok(Ok(true)) = done {
        checkout.release();
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
