//! The `[proxy]` section: what `pgopt proxy` listens on, which server it pools, how.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Bounded, HumanDuration};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    #[default]
    Transaction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ClientAuthMethod {
    #[default]
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

/// A user clients may log in as.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyUser {
    pub name: String,
    /// Plaintext, an `md5…` hash or a `SCRAM-SHA-256$…` verifier.
    pub password: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` of the server to pool.
    pub upstream: String,
    /// session | transaction
    pub pool_mode: PoolMode,
    /// Server connections per (database, user).
    pub default_pool_size: Bounded<1, 10000>,
    /// Client connections accepted at once.
    pub max_client_conn: Bounded<1, 1000000>,
    /// How long a client waits for a server connection.
    pub query_wait_timeout: HumanDuration,
    pub server_connect_timeout: HumanDuration,
    pub server_idle_timeout: HumanDuration,
    pub server_lifetime: HumanDuration,
    /// trust | md5 | scram-sha-256
    pub auth: ClientAuthMethod,
    pub users: Vec<ProxyUser>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            upstream: String::new(),
            pool_mode: PoolMode::Transaction,
            default_pool_size: Bounded(20),
            max_client_conn: Bounded(1000),
            query_wait_timeout: HumanDuration(Duration::from_secs(120)),
            server_connect_timeout: HumanDuration(Duration::from_secs(5)),
            server_idle_timeout: HumanDuration(Duration::from_secs(600)),
            server_lifetime: HumanDuration(Duration::from_secs(3600)),
            auth: ClientAuthMethod::Trust,
            users: Vec::new(),
        }
    }
}
