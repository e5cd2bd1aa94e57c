//! State every client session of one proxy shares: config, users, pools, cancel keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use pgopt_wire::startup::CancelRequest;
use tokio::sync::Semaphore;

use crate::auth::Credentials;
use crate::config::{Config, Database};
use crate::pool::{Pool, PoolLimits, Pools};
use crate::server::{send_cancel, ServerTarget};
use crate::session::{CancelSlot, CancelTarget};

pub struct Shared {
    pub config: Config,
    pub users: HashMap<String, Credentials>,
    pub pools: Pools,
    pub client_slots: Arc<Semaphore>,
    cancels: Mutex<HashMap<(i32, i32), Weak<CancelTarget>>>,
}

impl Shared {
    pub fn new(config: Config, users: HashMap<String, Credentials>) -> Shared {
        Shared {
            client_slots: Arc::new(Semaphore::new(config.max_client_conn)),
            config,
            users,
            pools: Pools::default(),
            cancels: Mutex::new(HashMap::new()),
        }
    }

    pub fn pool_for(&self, db: &Database, user: &str, creds: Option<&Credentials>) -> Arc<Pool> {
        self.pools.get_or_create(&db.name, user, || {
            let target = ServerTarget {
                host: db.host.clone(),
                port: db.port,
                dbname: db.dbname.clone(),
                user: db.user.clone().unwrap_or_else(|| user.to_string()),
                password: db
                    .password
                    .clone()
                    .or_else(|| creds.and_then(|c| c.plaintext.clone())),
            };
            Pool::new(
                target,
                PoolLimits {
                    size: self.config.default_pool_size,
                    connect_timeout: self.config.server_connect_timeout,
                    idle_timeout: self.config.server_idle_timeout,
                    lifetime: self.config.server_lifetime,
                    max_message_len: self.config.max_message_len,
                },
            )
        })
    }

    pub fn register_cancel(&self, key: CancelRequest, slot: &CancelSlot) {
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((key.process_id, key.secret_key), Arc::downgrade(slot));
    }

    pub fn unregister_cancel(&self, key: CancelRequest) {
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(key.process_id, key.secret_key));
    }

    /// Forwards a client's CancelRequest to the server running its query, if any.
    pub async fn forward_cancel(&self, request: CancelRequest) {
        let target = {
            let cancels = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
            cancels
                .get(&(request.process_id, request.secret_key))
                .and_then(Weak::upgrade)
                .and_then(|slot| *slot.lock().unwrap_or_else(|p| p.into_inner()))
        };
        if let Some((addr, key)) = target {
            send_cancel(addr, key).await;
        }
    }
}
