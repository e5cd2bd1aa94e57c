//! Server connections per (database, user): a fixed number of slots, idle connections
//! reused most-recent first, and waiting clients bounded by `query_wait_timeout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::server::{ServerConn, ServerTarget};
use crate::ProxyError;

/// ParameterStatus name/value pairs a server sent at start-up.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// Limits a pool enforces.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub size: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub max_message_len: u32,
}

/// Why no server connection could be handed out.
#[derive(Debug)]
pub enum CheckoutError {
    /// Every slot stayed busy for the whole wait.
    WaitTimeout(Duration),
    /// Connecting to the server failed.
    Connect(ProxyError),
}

pub struct Pool {
    pub target: ServerTarget,
    limits: PoolLimits,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<ServerConn>>,
    /// What the server said about itself at start-up, for clients' ParameterStatus.
    params: Mutex<Option<ServerParams>>,
}

/// A server connection lent to one client; dropping it without [`Checkout::release`]
/// closes the connection (its state is unknown).
pub struct Checkout {
    pub conn: ServerConn,
    pool: Arc<Pool>,
    _slot: OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(target: ServerTarget, limits: PoolLimits) -> Arc<Pool> {
        Arc::new(Pool {
            target,
            slots: Arc::new(Semaphore::new(limits.size)),
            limits,
            idle: Mutex::new(Vec::new()),
            params: Mutex::new(None),
        })
    }

    /// Waits up to `wait` for a slot, then reuses an idle connection or opens one.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<Checkout, CheckoutError> {
        let slot = match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(CheckoutError::WaitTimeout(wait)),
        };
        let now = Instant::now();
        while let Some(conn) = self.take_idle() {
            let expired = now.duration_since(conn.last_used) > self.limits.idle_timeout
                || now.duration_since(conn.created) > self.limits.lifetime;
            if !expired && conn.looks_alive() {
                return Ok(Checkout {
                    conn,
                    pool: self.clone(),
                    _slot: slot,
                });
            }
        }
        let conn = ServerConn::connect(
            &self.target,
            self.limits.connect_timeout,
            self.limits.max_message_len,
        )
        .await
        .map_err(CheckoutError::Connect)?;
        self.params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| Arc::new(conn.params.clone()));
        Ok(Checkout {
            conn,
            pool: self.clone(),
            _slot: slot,
        })
    }

    fn take_idle(&self) -> Option<ServerConn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Server parameters seen at start-up, once any connection was made.
    pub fn params(&self) -> Option<ServerParams> {
        self.params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Checkout {
    /// Returns a connection that is idle (no transaction, nothing in flight) to the pool.
    pub fn release(self) {
        let Checkout {
            mut conn,
            pool,
            _slot,
        } = self;
        let now = Instant::now();
        if now.duration_since(conn.created) > pool.limits.lifetime {
            return; // past its lifetime: closed here
        }
        conn.last_used = now;
        pool.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        // `_slot` drops after the push, so a waiter finds the connection idle.
    }
}

/// Pools by (client database, client user).
#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<(String, String), Arc<Pool>>>,
}

impl Pools {
    pub fn get_or_create(
        &self,
        database: &str,
        user: &str,
        make: impl FnOnce() -> Arc<Pool>,
    ) -> Arc<Pool> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((database.to_string(), user.to_string()))
            .or_insert_with(make)
            .clone()
    }
}
