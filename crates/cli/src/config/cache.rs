//! The `[cache]` section: the proxy's result cache.

use serde::{Deserialize, Serialize};

use super::HumanDuration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    pub enabled: bool,
    /// Tables whose reads may be cached (`name` or `schema.name`).
    pub tables: Vec<String>,
    pub ttl: HumanDuration,
    pub max_bytes: u64,
    pub max_result_bytes: u64,
    /// Follow committed changes on a logical replication stream (wal_level = logical),
    /// so writes that bypass pgopt invalidate too.
    pub wal_listener: bool,
    /// The listener's login (REPLICATION attribute); the upstream's user when empty.
    pub wal_user: String,
    pub publication: String,
}

impl Default for CacheSection {
    fn default() -> Self {
        let d = pgopt_proxy::CacheSettings::default();
        CacheSection {
            enabled: d.enabled,
            tables: d.tables,
            ttl: HumanDuration(d.ttl),
            max_bytes: d.max_bytes,
            max_result_bytes: d.max_result_bytes as u64,
            wal_listener: d.wal_listener,
            wal_user: String::new(),
            publication: d.publication,
        }
    }
}

impl CacheSection {
    /// The proxy's cache settings.
    pub fn settings(&self) -> pgopt_proxy::CacheSettings {
        pgopt_proxy::CacheSettings {
            enabled: self.enabled,
            tables: self.tables.clone(),
            ttl: self.ttl.0,
            max_bytes: self.max_bytes,
            max_result_bytes: usize::try_from(self.max_result_bytes).unwrap_or(usize::MAX),
            wal_listener: self.wal_listener,
            wal_user: (!self.wal_user.is_empty()).then(|| self.wal_user.clone()),
            publication: self.publication.clone(),
        }
    }
}
