//! The `[cache]` section: the proxy's result cache.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::bounded::Share;
use super::HumanDuration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    pub enabled: bool,
    /// Tables whose reads may be cached (`name` or `schema.name`).
    pub tables: Vec<String>,
    /// Cache every cacheable read of the listed tables; off: only statements with a
    /// `/* pgopt:cache */` hint or a listed fingerprint.
    pub auto: bool,
    /// Query shapes cached whatever tables they read (SHOW QUERIES' fingerprints).
    pub fingerprints: Vec<Fingerprint>,
    pub ttl: HumanDuration,
    /// Per-table TTLs: `table_ttl = { prices = "5s" }`.
    pub table_ttl: BTreeMap<String, HumanDuration>,
    pub max_bytes: u64,
    pub max_result_bytes: u64,
    /// Follow committed changes on a logical replication stream (wal_level = logical),
    /// so writes that bypass pgopt invalidate too.
    pub wal_listener: bool,
    /// The listener's login (REPLICATION attribute); the upstream's user when empty.
    pub wal_user: String,
    /// The listener's password; when empty, the upstream's if `wal_user` is empty or
    /// the upstream's user, else none. `pgopt config print` shows it masked.
    #[serde(serialize_with = "super::masked")]
    pub wal_password: String,
    pub publication: String,
    /// How far behind the listener's stream may fall (timed by probes it writes into
    /// the WAL) before nothing is served from the cache until it catches up; 0: not
    /// watched.
    pub wal_max_lag: MaxLag,
    /// Hear schema changes made directly on the server at once: an event trigger
    /// (made with the listener's login, which must be a superuser) notifies pgopt.
    pub ddl_listener: bool,
    /// L2 and invalidations shared between pgopt instances.
    pub redis: RedisSection,
    /// The share of hits run again on PostgreSQL and compared (SHOW
    /// CACHE's `verified` and `mismatches`).
    pub verify_fraction: Share,
    /// How long a write whose client left mid-statement is waited for before pgopt
    /// cancels it (its tables are invalidated when it ends).
    pub departed_write_timeout: HumanDuration,
    /// How long a read of the catalog (what writes reach, who may read what) is
    /// trusted: schema and privilege changes made directly are seen within this long.
    pub catalog_refresh: CatalogRefresh,
}

/// `[cache.redis]`: off while `url` is empty.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` for TLS; with
    /// `cluster`, node URLs separated by commas. Printed with passwords masked.
    #[serde(serialize_with = "super::masked_url")]
    pub url: String,
    pub cluster: bool,
    /// Before every key and the channel: instances sharing a prefix share entries.
    /// No braces: pgopt's hash tag (`{pgopt}`) must be the first in every key.
    #[serde(deserialize_with = "key_prefix")]
    pub prefix: String,
    /// Store results in Redis; off: Redis carries invalidations only.
    pub store_values: bool,
    /// A Redis call slower than this counts as failed (the query goes to PostgreSQL).
    pub timeout: HumanDuration,
    /// Key of the HMAC over stored values: set it (e.g. with
    /// PGOPT_CACHE__REDIS__HMAC_KEY) where others can write to this Redis. Printed
    /// masked.
    #[serde(serialize_with = "super::masked")]
    pub hmac_key: String,
    /// Values at least this large are compressed (lz4).
    pub compress_min: u64,
    /// PEM file of the CA that signed Redis' certificate (`rediss://`); the system's
    /// roots when empty.
    pub ca_file: String,
}

impl Default for RedisSection {
    fn default() -> Self {
        let d = pgopt_proxy::RedisConfig::default();
        RedisSection {
            url: String::new(),
            cluster: d.cluster,
            prefix: d.prefix,
            store_values: d.store_values,
            timeout: HumanDuration(d.timeout),
            hmac_key: String::new(),
            compress_min: d.compress_min as u64,
            ca_file: String::new(),
        }
    }
}

impl RedisSection {
    fn config(&self, max_result_bytes: usize) -> Option<pgopt_proxy::RedisConfig> {
        (!self.url.is_empty()).then(|| pgopt_proxy::RedisConfig {
            url: self.url.clone(),
            cluster: self.cluster,
            prefix: self.prefix.clone(),
            store_values: self.store_values,
            timeout: self.timeout.0,
            hmac_key: (!self.hmac_key.is_empty()).then(|| self.hmac_key.as_bytes().to_vec()),
            compress_min: usize::try_from(self.compress_min).unwrap_or(usize::MAX),
            max_value_bytes: max_result_bytes,
            ca_file: (!self.ca_file.is_empty()).then(|| self.ca_file.clone().into()),
        })
    }
}

impl Default for CacheSection {
    fn default() -> Self {
        let d = pgopt_proxy::CacheSettings::default();
        CacheSection {
            enabled: d.enabled,
            tables: d.tables,
            auto: d.auto,
            fingerprints: Vec::new(),
            ttl: HumanDuration(d.ttl),
            table_ttl: BTreeMap::new(),
            max_bytes: d.max_bytes,
            max_result_bytes: d.max_result_bytes as u64,
            wal_listener: d.wal_listener,
            wal_user: String::new(),
            wal_password: String::new(),
            publication: d.publication,
            wal_max_lag: MaxLag(HumanDuration(d.wal_max_lag)),
            ddl_listener: d.ddl_listener,
            redis: RedisSection::default(),
            verify_fraction: Share(d.verify_fraction),
            departed_write_timeout: HumanDuration(d.departed_write_timeout),
            catalog_refresh: CatalogRefresh(HumanDuration(d.catalog_refresh)),
        }
    }
}

impl CacheSection {
    /// The proxy's cache settings.
    pub fn settings(&self) -> pgopt_proxy::CacheSettings {
        pgopt_proxy::CacheSettings {
            enabled: self.enabled,
            tables: self.tables.clone(),
            auto: self.auto,
            fingerprints: self.fingerprints.iter().map(|f| f.0).collect(),
            ttl: self.ttl.0,
            table_ttl: self
                .table_ttl
                .iter()
                .map(|(t, d)| (t.clone(), d.0))
                .collect(),
            max_bytes: self.max_bytes,
            max_result_bytes: usize::try_from(self.max_result_bytes).unwrap_or(usize::MAX),
            wal_listener: self.wal_listener,
            wal_user: (!self.wal_user.is_empty()).then(|| self.wal_user.clone()),
            wal_password: (!self.wal_password.is_empty()).then(|| self.wal_password.clone()),
            verify_fraction: self.verify_fraction.0,
            departed_write_timeout: self.departed_write_timeout.0,
            catalog_refresh: self.catalog_refresh.0 .0,
            publication: self.publication.clone(),
            wal_max_lag: self.wal_max_lag.0 .0,
            ddl_listener: self.ddl_listener,
            redis: self
                .redis
                .config(usize::try_from(self.max_result_bytes).unwrap_or(usize::MAX)),
        }
    }
}

/// `[cache.redis] prefix`: without `{` or `}`. Redis Cluster hashes a key by its first
/// `{…}`: one in the prefix would come before `{pgopt}` and scatter pgopt's keys over
/// slots (the scripts then fail, and the channel is followed on the wrong node).
fn key_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let prefix = String::deserialize(d)?;
    if prefix.contains(['{', '}']) {
        return Err(de::Error::custom(format!(
            "expected no '{{' or '}}' (Redis Cluster's hash tags), found \"{prefix}\""
        )));
    }
    Ok(prefix)
}

/// `wal_max_lag`: 0 (not watched) or at least 100 ms (probes go every quarter of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MaxLag(pub HumanDuration);

impl<'de> Deserialize<'de> for MaxLag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let lag = HumanDuration::deserialize(d)?;
        if !lag.0.is_zero() && lag.0 < std::time::Duration::from_millis(100) {
            return Err(de::Error::custom(format!(
                "expected \"0s\" (not watched) or at least \"100ms\", found \"{lag}\""
            )));
        }
        Ok(MaxLag(lag))
    }
}

/// `catalog_refresh`: at least 1 s (each lookup after it reads the catalog again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CatalogRefresh(pub HumanDuration);

impl<'de> Deserialize<'de> for CatalogRefresh {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let every = HumanDuration::deserialize(d)?;
        if every.0 < std::time::Duration::from_secs(1) {
            return Err(de::Error::custom(format!(
                "expected at least \"1s\", found \"{every}\""
            )));
        }
        Ok(CatalogRefresh(every))
    }
}

/// A query shape's fingerprint as SHOW QUERIES prints it: 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub u64);

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:016x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Fingerprint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a fingerprint as SHOW QUERIES shows it (16 hex digits)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Fingerprint, E> {
                match u64::from_str_radix(v, 16) {
                    Ok(f) if !v.is_empty() && v.len() <= 16 => Ok(Fingerprint(f)),
                    _ => Err(E::custom(format!(
                        "expected a fingerprint as SHOW QUERIES shows it (16 hex digits), found {v:?}"
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}
