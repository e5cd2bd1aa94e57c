//! The `[routing]` section: the upstream's streaming replicas and how reads are spread
//! over them.

use serde::{Deserialize, Serialize};

use super::{Bounded, HumanDuration};

/// A streaming replica of the upstream server (same login and database).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEntry {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Share of reads relative to the other replicas.
    #[serde(default = "default_weight")]
    pub weight: Bounded<1, 1000>,
}

fn default_port() -> u16 {
    5432
}

fn default_weight() -> Bounded<1, 1000> {
    Bounded(1)
}

/// After a client's write: lsn | window | off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWritesSetting {
    #[default]
    Lsn,
    Window,
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    pub replicas: Vec<ReplicaEntry>,
    pub read_your_writes: ReadYourWritesSetting,
    pub read_your_writes_window: HumanDuration,
    pub check_interval: HumanDuration,
    pub max_lag_bytes: u64,
    pub max_lag: HumanDuration,
    pub primary_reads: bool,
    pub primary_weight: Bounded<1, 1000>,
    pub reads_when_primary_down: bool,
    /// User functions that may run on a replica (`name` or `schema.name`).
    pub safe_functions: Vec<String>,
}

impl Default for RoutingSection {
    fn default() -> Self {
        let d = pgopt_proxy::Routing::default();
        RoutingSection {
            replicas: Vec::new(),
            read_your_writes: ReadYourWritesSetting::Lsn,
            read_your_writes_window: HumanDuration(d.read_your_writes_window),
            check_interval: HumanDuration(d.check_interval),
            max_lag_bytes: d.max_lag_bytes,
            max_lag: HumanDuration(d.max_lag),
            primary_reads: d.primary_reads,
            primary_weight: Bounded(d.primary_weight),
            reads_when_primary_down: d.reads_when_primary_down,
            safe_functions: Vec::new(),
        }
    }
}

impl RoutingSection {
    /// The proxy's routing policy.
    pub fn policy(&self) -> pgopt_proxy::Routing {
        pgopt_proxy::Routing {
            read_your_writes: match self.read_your_writes {
                ReadYourWritesSetting::Lsn => pgopt_proxy::ReadYourWrites::Lsn,
                ReadYourWritesSetting::Window => pgopt_proxy::ReadYourWrites::Window,
                ReadYourWritesSetting::Off => pgopt_proxy::ReadYourWrites::Off,
            },
            read_your_writes_window: self.read_your_writes_window.0,
            check_interval: self.check_interval.0,
            max_lag_bytes: self.max_lag_bytes,
            max_lag: self.max_lag.0,
            primary_reads: self.primary_reads,
            primary_weight: self.primary_weight.get(),
            reads_when_primary_down: self.reads_when_primary_down,
            safe_functions: self.safe_functions.clone(),
        }
    }

    /// The upstream's replicas as the proxy takes them.
    pub fn replicas(&self) -> Vec<pgopt_proxy::Replica> {
        proxy_replicas(&self.replicas)
    }
}

/// Replica entries as the proxy takes them.
pub fn proxy_replicas(entries: &[ReplicaEntry]) -> Vec<pgopt_proxy::Replica> {
    entries
        .iter()
        .map(|r| pgopt_proxy::Replica {
            host: r.host.clone(),
            port: r.port,
            weight: r.weight.get(),
        })
        .collect()
}
