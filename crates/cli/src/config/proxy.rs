//! The `[proxy]` section: what `pgopt proxy` listens on, which server it pools, how.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::{Bounded, HumanDuration, KeepaliveSeconds};

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
    /// Each client's method from the rules in `auth_hba_file`.
    #[serde(rename = "hba")]
    Hba,
    /// A TLS client certificate (verified against `tls_ca_file`) named for the user.
    #[serde(rename = "cert")]
    Cert,
}

/// TLS to clients: disable | prefer | require.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsModeSetting {
    #[default]
    Disable,
    Prefer,
    Require,
}

/// TLS to servers: libpq's sslmode values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsModeSetting {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Whether pgopt's SCRAM login to servers binds to the TLS channel: libpq's
/// `channel_binding` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBindingSetting {
    Disable,
    #[default]
    Prefer,
    Require,
}

/// Which of a database's several hosts a new server connection tries first
/// (PgBouncer's `load_balance_hosts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalanceHosts {
    /// The next in turn.
    #[default]
    RoundRobin,
    /// The last that worked (the first until one fails): failover, not balance.
    Disable,
}

/// Which servers a connection may stay on (libpq's `target_session_attrs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// Any that logs in.
    #[default]
    Any,
    /// Only one that takes writes: a standby counts as failed, and the next host of
    /// the list is tried.
    ReadWrite,
}

/// A `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` URL, checked as it is read (so a
/// bad one is named with its line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl(pub String);

impl Serialize for UpstreamUrl {
    /// With its password masked (`pgopt config print`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::masked_url(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        crate::upstream::parse(&text).map_err(de::Error::custom)?;
        Ok(UpstreamUrl(text))
    }
}

/// One more database clients may connect to, on its own server (PgBouncer's
/// `[databases]`). `proxy.upstream` is the first database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseEntry {
    /// The name clients connect to; the URL's database when absent.
    #[serde(default)]
    pub name: String,
    /// The server, its database and the login the proxy uses there.
    pub upstream: UpstreamUrl,
    /// This database's streaming replicas (`[routing]` holds the policy).
    #[serde(default)]
    pub replicas: Vec<super::routing::ReplicaEntry>,
    /// This database's own pool settings, instead of `proxy.pool_mode`,
    /// `proxy.default_pool_size`, `proxy.min_pool_size` and `proxy.reserve_pool_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<Bounded<1, 10000>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pool_size: Option<Bounded<0, 10000>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_pool_size: Option<Bounded<0, 10000>>,
    /// Instead of `proxy.max_db_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_db_connections: Option<Bounded<0, 100000>>,
    /// Instead of `proxy.load_balance_hosts`, for an upstream with several hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balance_hosts: Option<LoadBalanceHosts>,
    /// Instead of `proxy.target_session_attrs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_session_attrs: Option<TargetSessionAttrs>,
}

impl PoolMode {
    /// The proxy's own type.
    pub fn proxy(self) -> pgopt_proxy::PoolMode {
        match self {
            PoolMode::Session => pgopt_proxy::PoolMode::Session,
            PoolMode::Transaction => pgopt_proxy::PoolMode::Transaction,
        }
    }
}

impl DatabaseEntry {
    /// The pool settings the proxy takes for this database.
    pub fn pool(&self) -> pgopt_proxy::DatabasePool {
        let size = |b: Option<u32>| b.map(|v| v as usize);
        pgopt_proxy::DatabasePool {
            mode: self.pool_mode.map(PoolMode::proxy),
            size: size(self.pool_size.map(Bounded::get)),
            min_size: size(self.min_pool_size.map(Bounded::get)),
            reserve_size: size(self.reserve_pool_size.map(Bounded::get)),
            max_db_connections: size(self.max_db_connections.map(Bounded::get)),
        }
    }
}

/// A user clients may log in as.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyUser {
    pub name: String,
    /// Plaintext, an `md5…` hash or a `SCRAM-SHA-256$…` verifier. Printed masked.
    /// Empty: the user's password is in `auth_file` (this entry gives its settings), or
    /// it has none (an empty password logs no one in: trust, peer, cert or
    /// `auth_query` only).
    #[serde(default, serialize_with = "super::masked")]
    pub password: String,
    /// This user's pool mode, instead of its database's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolMode>,
    /// Instead of `proxy.max_user_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_user_connections: Option<Bounded<0, 100000>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// More addresses clients connect to (PgBouncer's `listen_addr` list), each
    /// `HOST:PORT`; a port of 0 is `listen`'s.
    pub listen_also: Vec<SocketAddr>,
    /// A directory where clients may also connect over a Unix-domain socket
    /// (`.s.PGSQL.<listen port>`, as PostgreSQL names its own); "" is TCP only.
    pub unix_socket_dir: SocketDir,
    /// The socket file's permissions, in octal ("0777").
    pub unix_socket_mode: FileMode,
    /// The socket file's group, a name or a number; "": pgopt's own.
    pub unix_socket_group: String,
    /// Listen with SO_REUSEPORT: a new pgopt may start on the same addresses beside a
    /// running one, which is then stopped (SIGTERM) — a restart that refuses no client.
    pub so_reuseport: bool,
    /// Log each client's login, and each client's going with why and its age.
    pub log_connections: bool,
    pub log_disconnections: bool,
    /// Add " - HOST:PORT" of the client to its application_name on the server.
    pub application_name_add_host: bool,
    /// Reuse the idle server connection that waited longest, not the one used last.
    pub server_round_robin: bool,
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` of the server to pool (printed with
    /// the password masked).
    #[serde(serialize_with = "super::masked_url")]
    pub upstream: String,
    /// More databases, each on its own server, with its own replicas.
    pub databases: Vec<DatabaseEntry>,
    /// An upstream URL with several hosts (`postgres://a:5432,b:5432/db`): round-robin
    /// (each new server connection starts at the next host) or disable (at the last
    /// that worked). Either way a host that fails is skipped for the next.
    pub load_balance_hosts: LoadBalanceHosts,
    /// any | read-write: with read-write, a server in recovery (a standby) is not
    /// used (the next host of a list is tried), as libpq's `target_session_attrs`.
    pub target_session_attrs: TargetSessionAttrs,
    /// session | transaction
    pub pool_mode: PoolMode,
    /// Server connections per (database, user).
    pub default_pool_size: Bounded<1, 10000>,
    /// Server connections per pool kept open even when idle.
    pub min_pool_size: Bounded<0, 10000>,
    /// Extra server connections for clients that waited `reserve_pool_timeout`.
    pub reserve_pool_size: Bounded<0, 10000>,
    pub reserve_pool_timeout: HumanDuration,
    /// Client connections accepted at once.
    pub max_client_conn: Bounded<1, 1000000>,
    /// The longest protocol message, either way, in bytes (a client's is held whole
    /// before it is relayed: this bounds a client's memory).
    pub max_message_len: Bounded<65536, 1073741823>,
    /// Statements pgopt keeps prepared on one server connection in transaction mode;
    /// past it the one unused longest is closed there. 0: no limit.
    pub max_prepared_statements: Bounded<0, 1000000>,
    /// Threads serving clients: 0 is one per core; 1 is a single-threaded event loop.
    pub workers: Bounded<0, 1024>,
    /// How long a client waits for a server connection; "0s" is no limit.
    pub query_wait_timeout: HumanDuration,
    /// Connecting and logging in to a server; "0s" is no limit.
    pub server_connect_timeout: HumanDuration,
    /// Idle server connections older than this are closed; "0s" is never.
    pub server_idle_timeout: HumanDuration,
    pub server_lifetime: HumanDuration,
    /// Idle server connections unused this long get a round trip before reuse.
    pub server_check_delay: HumanDuration,
    /// A host of a list that failed a connection is tried after the others this long.
    pub server_login_retry: HumanDuration,
    /// Clients idle inside a transaction this long are disconnected; "0s" is off.
    pub idle_transaction_timeout: HumanDuration,
    /// A client must finish logging in (TLS, start-up, password) within this; "0s" is off.
    pub client_login_timeout: HumanDuration,
    /// Clients idle outside a transaction this long are disconnected; "0s" is off.
    pub client_idle_timeout: HumanDuration,
    /// A statement running this long ends its client's session (canceled, 57014); "0s"
    /// is off.
    pub query_timeout: HumanDuration,
    /// TCP keepalive on client and server sockets, with these timings ("0s", 0: the
    /// system's).
    pub tcp_keepalive: bool,
    pub tcp_keepidle: KeepaliveSeconds,
    pub tcp_keepintvl: KeepaliveSeconds,
    pub tcp_keepcnt: Bounded<0, 127>,
    /// How long data sent on a client or server socket may go unacknowledged before
    /// the connection is dropped (TCP_USER_TIMEOUT); "0s": the system's.
    pub tcp_user_timeout: HumanDuration,
    /// Server connections one database's pools (every user's) may hold open together;
    /// 0 is no limit.
    pub max_db_connections: Bounded<0, 100000>,
    /// Server connections one user's pools (every database's) may hold open together;
    /// 0 is no limit.
    pub max_user_connections: Bounded<0, 100000>,
    /// How long a shutdown lets transactions finish.
    pub shutdown_timeout: HumanDuration,
    /// Users allowed on the admin console (database "pgopt"); empty: the upstream user.
    pub admin_users: Vec<String>,
    /// Users allowed on the admin console for SHOW commands only.
    pub stats_users: Vec<String>,
    /// HOST:PORT for Prometheus /metrics over HTTP; "" turns it off.
    pub admin_listen: OptionalAddr,
    /// TLS to clients: disable | prefer | require.
    pub tls_mode: TlsModeSetting,
    /// PEM certificate chain and private key for TLS to clients.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// PEM file of the CAs whose client certificates are accepted (asked of every TLS
    /// client; the `cert` method needs one); "" asks for none.
    pub tls_ca_file: String,
    /// SCRAM over TLS offers SCRAM-SHA-256-PLUS (channel binding) first, as
    /// PostgreSQL does; false offers SCRAM-SHA-256 alone, as PgBouncer does.
    pub tls_channel_binding: bool,
    /// TLS to servers: disable | prefer | require | verify-ca | verify-full.
    pub server_tls_mode: ServerTlsModeSetting,
    /// PEM file of the CA certificates trusted for servers; "" is none.
    pub server_tls_ca_file: String,
    /// PEM certificate chain and private key pgopt presents to servers that ask for a
    /// client certificate; "" presents none.
    pub server_tls_cert_file: String,
    pub server_tls_key_file: String,
    /// pgopt's SCRAM login to servers over TLS: disable | prefer (bound when the
    /// server offers SCRAM-SHA-256-PLUS) | require (libpq's `channel_binding`).
    pub server_channel_binding: ChannelBindingSetting,
    /// trust | md5 | scram-sha-256 | cert | hba
    pub auth: ClientAuthMethod,
    /// With `auth = "hba"`: a file of `pg_hba.conf` rules (local, host, hostssl,
    /// hostnossl; trust, reject, md5, scram-sha-256, peer), read at start and on RELOAD.
    pub auth_hba_file: String,
    /// User name maps in `pg_ident.conf` form, for hba rules' `map=NAME` (peer, cert);
    /// read at start and on RELOAD. "" is none.
    pub auth_ident_file: String,
    /// Users and passwords in PgBouncer's `auth_file` form (`"user" "password"` per
    /// line), besides `users`; read at start and on RELOAD. "" is none.
    pub auth_file: String,
    pub users: Vec<ProxyUser>,
    /// Look up users not in `users` on the server, logged in as this user; "" is off.
    pub auth_user: String,
    /// The lookup; `$1` is the user name, the last column the stored password.
    pub auth_query: String,
    /// How long a user's lookup is kept ("no such user": 5 s at most); "0s" is off.
    pub auth_query_cache_ttl: HumanDuration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            listen_also: Vec::new(),
            unix_socket_dir: SocketDir(None),
            unix_socket_mode: FileMode(0o777),
            unix_socket_group: String::new(),
            so_reuseport: false,
            log_connections: true,
            log_disconnections: true,
            application_name_add_host: false,
            server_round_robin: false,
            upstream: String::new(),
            databases: Vec::new(),
            pool_mode: PoolMode::Transaction,
            load_balance_hosts: LoadBalanceHosts::RoundRobin,
            target_session_attrs: TargetSessionAttrs::Any,
            default_pool_size: Bounded(20),
            min_pool_size: Bounded(0),
            reserve_pool_size: Bounded(0),
            reserve_pool_timeout: HumanDuration(Duration::from_secs(5)),
            max_client_conn: Bounded(1000),
            max_message_len: Bounded(pgopt_proxy::Config::default().max_message_len),
            max_prepared_statements: Bounded(
                pgopt_proxy::Config::default().max_prepared_statements as u32,
            ),
            workers: Bounded(0),
            query_wait_timeout: HumanDuration(Duration::from_secs(120)),
            server_connect_timeout: HumanDuration(Duration::from_secs(5)),
            server_idle_timeout: HumanDuration(Duration::from_secs(600)),
            server_lifetime: HumanDuration(Duration::from_secs(3600)),
            server_check_delay: HumanDuration(Duration::from_secs(30)),
            server_login_retry: HumanDuration(Duration::from_secs(15)),
            idle_transaction_timeout: HumanDuration(Duration::ZERO),
            client_login_timeout: HumanDuration(Duration::from_secs(60)),
            client_idle_timeout: HumanDuration(Duration::ZERO),
            query_timeout: HumanDuration(Duration::ZERO),
            tcp_keepalive: true,
            tcp_keepidle: KeepaliveSeconds(Duration::ZERO),
            tcp_keepintvl: KeepaliveSeconds(Duration::ZERO),
            tcp_keepcnt: Bounded(0),
            tcp_user_timeout: HumanDuration(Duration::ZERO),
            max_db_connections: Bounded(0),
            max_user_connections: Bounded(0),
            shutdown_timeout: HumanDuration(Duration::from_secs(30)),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            admin_listen: OptionalAddr(None),
            tls_mode: TlsModeSetting::Disable,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
            tls_channel_binding: true,
            server_tls_mode: ServerTlsModeSetting::Prefer,
            server_tls_ca_file: String::new(),
            server_tls_cert_file: String::new(),
            server_tls_key_file: String::new(),
            server_channel_binding: ChannelBindingSetting::Prefer,
            auth: ClientAuthMethod::Trust,
            auth_hba_file: String::new(),
            auth_ident_file: String::new(),
            auth_file: String::new(),
            users: Vec::new(),
            auth_user: String::new(),
            auth_query: pgopt_proxy::DEFAULT_AUTH_QUERY.to_string(),
            auth_query_cache_ttl: HumanDuration(Duration::from_secs(60)),
        }
    }
}

/// An absolute directory path, or `""` for "off".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketDir(pub Option<String>);

impl Serialize for SocketDir {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_deref().unwrap_or(""))
    }
}

impl<'de> Deserialize<'de> for SocketDir {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(SocketDir(None));
        }
        // libpq takes a host as a socket directory only when it starts with '/'.
        if !text.starts_with('/') {
            return Err(de::Error::custom(format!(
                "expected an absolute directory path (clients give it as their host) or \"\" for \
                 off, found {text:?}"
            )));
        }
        let dir = text.trim_end_matches('/');
        Ok(SocketDir(Some(
            if dir.is_empty() { "/" } else { dir }.into(),
        )))
    }
}

/// Permission bits of a file as a string of octal digits, as PgBouncer writes them
/// ("0660").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A string only: TOML does not say whether `660` was meant in octal.
        let text = String::deserialize(d)?;
        match u32::from_str_radix(&text, 8) {
            Ok(mode) if mode <= 0o777 && !text.starts_with('+') => Ok(FileMode(mode)),
            _ => Err(de::Error::custom(format!(
                "expected permission bits as a string of octal digits from \"0000\" to \"0777\", found {text:?}"
            ))),
        }
    }
}

/// A socket address, or `""` for "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl Serialize for OptionalAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(addr) => s.serialize_str(&addr.to_string()),
            None => s.serialize_str(""),
        }
    }
}

impl<'de> Deserialize<'de> for OptionalAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(OptionalAddr(None));
        }
        text.parse().map(|a| OptionalAddr(Some(a))).map_err(|_| {
            de::Error::custom(format!(
                "expected HOST:PORT (an IP address and a port) or \"\" for off, found {text:?}"
            ))
        })
    }
}
