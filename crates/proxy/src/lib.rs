//! The PostgreSQL wire-protocol proxy: listener, client sessions, authentication and
//! pools of server connections in session or transaction mode.
//!
//! Frames are relayed as bytes: the proxy looks only at message types and lengths on
//! the hot path, never decodes and re-encodes queries or rows; in transaction mode it
//! also reads the statement names of Parse/Bind/Describe/Close to carry named prepared
//! statements across server connections.

mod auth;
pub mod config;
mod error;
mod io;
mod pool;
mod relay;
mod server;
mod session;
mod shared;
mod statements;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{ClientAuth, Config, Database, PoolMode, User};
pub use error::ProxyError;

/// A running proxy. Dropping it stops accepting new clients.
pub struct Proxy {
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Binds `config.listen` and starts serving clients on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Proxy, ProxyError> {
        let users = auth::prepare_users(&config.users)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ProxyError::Io {
                peer: "listener",
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Io {
            peer: "listener",
            source,
        })?;
        let shared = Arc::new(shared::Shared::new(config, users));
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        tokio::spawn(session::run(stream, peer, shared.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        tracing::debug!(%local_addr, "pgopt proxy listening");
        Ok(Proxy { local_addr, accept })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until the accept loop ends (it does not, unless the task is aborted).
    pub async fn wait(mut self) {
        let _ = (&mut self.accept).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
