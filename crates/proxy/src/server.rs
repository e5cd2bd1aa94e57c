//! A connection to a PostgreSQL server: connect, start up, authenticate, and remember
//! what the server said about itself (parameters, cancel key).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgopt_wire::backend::BackendMessage;
use pgopt_wire::frontend::{PasswordMessage, Query, SaslInitialResponse, SaslResponse};
use pgopt_wire::scram::{ScramClient, ScramKeys};
use pgopt_wire::startup::{CancelRequest, ProtocolVersion, StartupMessage};
use pgopt_wire::{md5, split_frame, Authentication, List, TransactionStatus, SCRAM_SHA_256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{host_port, ChannelBinding, Keepalive, MoreHosts};
use crate::net::{Endpoint, PgStream};
use crate::server_tls::ServerTlsConnector;
use crate::session_state::Applied;
use crate::stats::ServerInfo;
use crate::ProxyError;

/// Where and as whom to log in to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    pub host: String,
    pub port: u16,
    /// The database's other servers, tried in turn (see [`MoreHosts`]).
    pub more_hosts: MoreHosts,
    pub dbname: String,
    pub user: String,
    /// Plaintext password for the server login.
    pub password: Option<String>,
    /// An `md5…` hash, enough to answer an md5 challenge without the password.
    pub md5_hash: Option<String>,
    /// TLS, unless disabled.
    pub tls: Option<ServerTlsConnector>,
}

impl ServerTarget {
    pub fn describe(&self) -> String {
        format!("{}/{}", self.servers(), self.dbname)
    }

    /// `host:port`, or with more hosts `host:port,host:port,…` (IPv6 in brackets).
    pub fn servers(&self) -> String {
        crate::config::servers_text(&self.host, self.port, &self.more_hosts)
    }

    /// How long a connect may take when each server gets `timeout` in turn (twice
    /// with `read_write`: the log-in, then perhaps the question whether it takes
    /// writes): a bound around [`ServerConn::connect`] must let it reach the last one.
    pub fn connect_budget(&self, timeout: Duration) -> Duration {
        let per_server = if self.more_hosts.read_write { 2 } else { 1 };
        timeout.saturating_mul(per_server * (1 + self.more_hosts.hosts.len() as u32))
    }

    /// The same login on a replica instead: its one server, no host list.
    pub fn point_at(&mut self, node: &crate::routing::Node) {
        self.host = node.host.clone();
        self.port = node.port;
        self.more_hosts = MoreHosts::default();
    }

    /// Same servers, database and user (whatever the password).
    pub fn same_login(&self, other: &ServerTarget) -> bool {
        (
            &self.host,
            self.port,
            &self.more_hosts,
            &self.dbname,
            &self.user,
        ) == (
            &other.host,
            other.port,
            &other.more_hosts,
            &other.dbname,
            &other.user,
        )
    }

    /// Server `i` of `host:port` and `more_hosts` (0: the first).
    fn server(&self, i: usize) -> (&str, u16) {
        match i.checked_sub(1) {
            None => (&self.host, self.port),
            Some(j) => {
                let (host, port) = &self.more_hosts.hosts[j];
                (host, *port)
            }
        }
    }
}

/// Where a server connection's CancelRequests go: the address and key its backend
/// gave, and, when the connection itself runs over TLS, how it was encrypted (the
/// connector and the host name it was made to), so the cancel is encrypted the same
/// way.
#[derive(Debug)]
pub struct CancelRoute {
    pub addr: Endpoint,
    pub key: CancelRequest,
    pub tls: Option<(ServerTlsConnector, String)>,
    /// Cancels on their way to the server (see [`CancelRoute::arrived`]).
    in_flight: std::sync::atomic::AtomicUsize,
    settled: tokio::sync::Notify,
}

impl CancelRoute {
    pub fn new(
        addr: Endpoint,
        key: CancelRequest,
        tls: Option<(ServerTlsConnector, String)>,
    ) -> CancelRoute {
        CancelRoute {
            addr,
            key,
            tls,
            in_flight: Default::default(),
            settled: tokio::sync::Notify::new(),
        }
    }

    /// Whether a cancel is on its way to this connection's backend.
    pub fn in_flight(&self) -> bool {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Returns once no cancel is on its way: each has reached the server (which
    /// ignores one that finds its backend idle) or given up.
    pub async fn arrived(&self) {
        loop {
            let settled = self.settled.notified();
            if !self.in_flight() {
                return;
            }
            settled.await;
        }
    }
}

/// Counts a cancel on its way to `R`'s backend while it lives.
pub struct CancelInFlight<R: std::ops::Deref<Target = CancelRoute>>(pub R);

impl<R: std::ops::Deref<Target = CancelRoute>> CancelInFlight<R> {
    pub fn new(route: R) -> Self {
        route
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CancelInFlight(route)
    }
}

impl<R: std::ops::Deref<Target = CancelRoute>> Drop for CancelInFlight<R> {
    fn drop(&mut self) {
        let route = &*self.0;
        if route
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            route.settled.notify_waiters();
        }
    }
}

/// A logged-in server connection, ready for queries.
#[derive(Debug)]
pub struct ServerConn {
    pub stream: PgStream,
    pub addr: Endpoint,
    /// Shared with the client it is lent to, for that client's cancels.
    pub cancel: Arc<CancelRoute>,
    /// ParameterStatus values from start-up, in order.
    pub params: Vec<(String, String)>,
    pub status: TransactionStatus,
    /// Statements pgopt prepared on this connection (see `statements.rs`).
    pub prepared: crate::statements::PreparedSet,
    /// Statements still on the server whose plans a schema change invalidated: closed
    /// before they are prepared again. Each with when it was marked (`stale_marks`): a
    /// Close sent before a later mark leaves it stale (see [`ServerConn::closed`]).
    stale: foldhash::HashMap<u64, u64>,
    stale_marks: u64,
    /// What its SQL-prepared statements write, for the cache (see `cache.rs`).
    pub sql_prepared: crate::cache::SqlStatements,
    /// The pool's plan epoch this connection's statements were last checked against.
    pub plan_epoch: u64,
    /// The pool's schema epoch likewise (see `Pool::schema_changed`).
    pub schema_epoch: u64,
    pub created: Instant,
    /// Its pool's generation when it was opened: RECONNECT and KILL move the pool to
    /// the next, and connections of an older one are closed instead of reused.
    pub generation: u64,
    pub last_used: Instant,
    /// What SHOW SERVERS shows of this connection.
    pub info: Arc<ServerInfo>,
    /// Client settings pgopt applied here (see `session_state.rs`).
    pub applied: Applied,
    /// The server's defaults of the settings the cache keys on (see
    /// `session_state::Defaults`).
    pub defaults: crate::session_state::Defaults,
    /// Its sessions' transactions are SERIALIZABLE unless they say otherwise (its
    /// `default_transaction_isolation`, from an ALTER ROLE or DATABASE … SET or the
    /// server's config), read with the defaults: a replica refuses them.
    pub serializable_default: bool,
    /// The session thread whose runtime this connection's socket is registered with
    /// (see `workers.rs`).
    pub home: usize,
    /// The read buffer of the client it is lent to, kept here while it is idle (see
    /// `Relay::attach`): thousands of clients sharing a few connections need a few
    /// server-sized buffers, not one each.
    pub read_buf: BytesMut,
    /// Its places in the database's `max_db_connections` and the user's
    /// `max_user_connections`, given back when it closes.
    pub permits: Option<[crate::pool::ConnPermit; 2]>,
}

impl ServerConn {
    /// A schema change may have changed what any statement here takes or gives: each
    /// is closed and prepared afresh before its next use, as PostgreSQL prepares a
    /// statement a client sends again (see `Relay::check_shape_first` for a client's
    /// statement prepared before the change).
    pub fn schema_changed(&mut self) {
        for id in self.prepared.take_all() {
            self.mark_stale(id);
        }
    }

    /// Statement `id`'s copy on the server is stale: closed before it is prepared
    /// again.
    pub fn mark_stale(&mut self, id: u64) {
        self.stale_marks += 1;
        self.stale.insert(id, self.stale_marks);
    }

    /// Whether statement `id` was stale, no longer so: its Close is on its way (sent
    /// as of [`ServerConn::stale_mark`], which the Close's answer brings back).
    pub fn unmark_stale(&mut self, id: u64) -> bool {
        self.stale.remove(&id).is_some()
    }

    /// The latest mark: a Close sent now closes what was marked up to it.
    pub fn stale_mark(&self) -> u64 {
        self.stale_marks
    }

    /// The server confirmed a Close of statement `id` sent as of `mark`: its copy is
    /// gone, unless it was prepared again and marked stale since (a schema change
    /// pipelined behind), when the copy the server has now is still stale.
    pub fn closed(&mut self, id: u64, mark: u64) {
        if self.stale.get(&id).is_some_and(|at| *at <= mark) {
            self.stale.remove(&id);
        }
    }

    /// Connects, starts up and authenticates within `timeout`. `keys`, learned from a
    /// client's SCRAM login, answer a SCRAM challenge when no plaintext is configured.
    /// `keepalive`: TCP keepalive on its socket, unless `None`.
    pub async fn connect(
        target: &ServerTarget,
        keys: Option<ScramKeys>,
        timeout: Duration,
        max_len: u32,
        keepalive: Option<Keepalive>,
    ) -> Result<ServerConn, ProxyError> {
        Self::connect_with(target, keys, timeout, max_len, keepalive, &[], true).await
    }

    /// [`ServerConn::connect`] with extra start-up parameters (`replication`; a
    /// replication client's own; `user` and `database` among them are the target's).
    /// `note_turn`: whether a host that failed or worked moves the turn the database's
    /// connections share (not for a replication client's, whose refusals are its own).
    pub async fn connect_with(
        target: &ServerTarget,
        keys: Option<ScramKeys>,
        timeout: Duration,
        max_len: u32,
        keepalive: Option<Keepalive>,
        extra: &[(&str, &str)],
        note_turn: bool,
    ) -> Result<ServerConn, ProxyError> {
        // With several servers, each gets `timeout` in turn (as libpq's
        // connect_timeout), from the one `more_hosts` says, until one logs in.
        let count = 1 + target.more_hosts.hosts.len();
        let mut failed = Vec::new();
        // The first SQLSTATE a server refused with: the client hears it (3D000 when no
        // server has the database) if no server takes the connection.
        let mut refused_code = None;
        for (k, i) in target.more_hosts.order().into_iter().enumerate() {
            let (host, port) = target.server(i);
            let connecting =
                Self::connect_inner(target, host, port, keys.clone(), max_len, keepalive, extra);
            let error = match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(mut conn)) => match conn.takes_writes(target, timeout, max_len).await {
                    Ok(()) => {
                        if note_turn {
                            target.more_hosts.worked(i);
                        }
                        return Ok(conn);
                    }
                    Err(e) => e,
                },
                Ok(Err(e)) => e,
                Err(_) => ProxyError::Server {
                    server: format!("{}/{}", host_port(host, port), target.dbname),
                    message: format!("no connection within {} ms", timeout.as_millis()),
                },
            };
            // A wrong password: not tried on every server in turn (each failure counts
            // against the login on the server's side). Other refusals may be one
            // server's own (28000: its pg_hba.conf; 3D000: a standby that has not
            // replayed a new database yet; 57P03: starting up): the next is tried.
            let wrong_password =
                matches!(&error, ProxyError::Refused { code, .. } if code == "28P01");
            if count == 1 || wrong_password {
                return Err(error);
            }
            if note_turn {
                target.more_hosts.failed(i);
            }
            if let ProxyError::Refused { code, .. } = &error {
                refused_code.get_or_insert_with(|| code.clone());
            }
            if k + 1 < count {
                tracing::warn!(server = %host_port(host, port), error = %error, "trying the database's next server");
            }
            failed.push(error.to_string());
        }
        let message = format!("no server took the connection: {}", failed.join("; "));
        let server = target.describe();
        Err(match refused_code {
            Some(code) => ProxyError::Refused {
                server,
                code,
                message,
            },
            None => ProxyError::Server { server, message },
        })
    }

    /// With `read_write` asked for: whether the server takes writes, from its
    /// `in_hot_standby` (PostgreSQL 14 and later say it at start-up), else by asking
    /// `transaction_read_only`, as libpq's `target_session_attrs=read-write` does.
    async fn takes_writes(
        &mut self,
        target: &ServerTarget,
        timeout: Duration,
        max_len: u32,
    ) -> Result<(), ProxyError> {
        if !target.more_hosts.read_write {
            return Ok(());
        }
        let read_only = match read_only_by_params(&self.params) {
            Some(said) => said,
            None => {
                let asked = self.simple_query("SHOW transaction_read_only", max_len);
                match tokio::time::timeout(timeout, asked).await {
                    Ok(Ok(rows)) => read_only_by_show(&rows),
                    Ok(Err(e)) => return Err(self.refusal(target, e)),
                    Err(_) => {
                        return Err(
                            self.refusal(target, "no answer to SHOW transaction_read_only".into())
                        )
                    }
                }
            }
        };
        if read_only {
            return Err(self.refusal(
                target,
                "takes no writes (a standby), and target_session_attrs is read-write".into(),
            ));
        }
        Ok(())
    }

    /// Reads the connection's values of the settings that shape results PostgreSQL
    /// does not report (`session_state::UNREPORTED_DEFAULTS`), for the cache's key,
    /// and its `default_transaction_isolation`, for replica routing, within
    /// `timeout`. An error: the connection is of no use.
    pub async fn read_defaults(
        &mut self,
        target: &ServerTarget,
        timeout: Duration,
        max_len: u32,
    ) -> Result<(), ProxyError> {
        let query = crate::session_state::Defaults::unreported_query();
        let row = match tokio::time::timeout(timeout, self.simple_query(query, max_len)).await {
            Ok(Ok(rows)) => rows.into_iter().next(),
            Ok(Err(e)) => return Err(self.refusal(target, format!("reading its settings: {e}"))),
            Err(_) => None,
        };
        let Some(row) = row else {
            return Err(self.refusal(target, "no answer to the read of its settings".into()));
        };
        self.defaults.set_unreported(&row);
        self.serializable_default = row
            .get(crate::session_state::UNREPORTED_DEFAULTS.len())
            .and_then(Option::as_deref)
            .is_some_and(|v| v.eq_ignore_ascii_case("serializable"));
        Ok(())
    }

    fn refusal(&self, target: &ServerTarget, message: String) -> ProxyError {
        ProxyError::Server {
            server: format!("{}/{}", self.addr, target.dbname),
            message,
        }
    }

    async fn connect_inner(
        target: &ServerTarget,
        host: &str,
        port: u16,
        keys: Option<ScramKeys>,
        max_len: u32,
        keepalive: Option<Keepalive>,
        extra: &[(&str, &str)],
    ) -> Result<ServerConn, ProxyError> {
        let server = || format!("{}/{}", host_port(host, port), target.dbname);
        let (stream, addr, local_addr) = PgStream::connect(host, port, keepalive.as_ref())
            .await
            .map_err(|e| ProxyError::Server {
                server: server(),
                message: e.to_string(),
            })?;
        // As libpq: no TLS over a Unix-domain socket, whatever the sslmode.
        let mut stream = match (&target.tls, stream) {
            (Some(tls), PgStream::Plain(tcp)) => tls.negotiate(tcp, host).await?,
            (_, stream) => stream,
        };

        let mut out = BytesMut::with_capacity(256);
        let mut params = vec![
            ("user", target.user.as_str()),
            ("database", target.dbname.as_str()),
        ];
        // A replication client's own application_name replaces pgopt's.
        if !extra.iter().any(|(name, _)| *name == "application_name") {
            params.push(("application_name", "pgopt"));
        }
        params.extend(
            extra
                .iter()
                .filter(|(name, _)| *name != "user" && *name != "database"),
        );
        StartupMessage {
            protocol: ProtocolVersion { major: 3, minor: 0 },
            params: List::from(params.as_slice()),
        }
        .encode(&mut out)?;
        send(&mut stream, &out).await?;

        let mut buf = BytesMut::with_capacity(4096);
        let mut scram: Option<ScramClient> = None;
        // libpq's `channel_binding`.
        let binding = target
            .tls
            .as_ref()
            .map_or(ChannelBinding::Prefer, ServerTlsConnector::channel_binding);
        let unbound = |what: &str| ProxyError::Server {
            server: server(),
            message: format!(
                "{what}, and proxy.server_channel_binding is \"require\" \
                 (SCRAM-SHA-256-PLUS over TLS)"
            ),
        };
        let mut server_params = Vec::new();
        let mut cancel_key = None;
        loop {
            let frame = loop {
                if let Some(frame) =
                    split_frame(&mut buf, max_len).map_err(|source| ProxyError::Decode {
                        peer: "server",
                        source,
                    })?
                {
                    break frame;
                }
                if stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(ProxyError::server_io)?
                    == 0
                {
                    return Err(ProxyError::Server {
                        server: server(),
                        message: "closed the connection during start-up".into(),
                    });
                }
            };
            let message = frame.backend().map_err(|source| ProxyError::Decode {
                peer: "server",
                source,
            })?;
            out.clear();
            match message {
                BackendMessage::Authentication(auth) => {
                    let missing = |what: &str| ProxyError::Server {
                        server: server(),
                        message: format!(
                            "asks for {what} for user {:?}, and pgopt has none: configure the \
                             user's plaintext password, or let a client log in first with \
                             the same SCRAM verifier as the server's",
                            target.user
                        ),
                    };
                    let require = binding == ChannelBinding::Require;
                    match auth {
                        Authentication::Ok
                            if require
                                && !scram
                                    .as_ref()
                                    .is_some_and(|c| c.is_bound() && c.is_complete()) =>
                        {
                            return Err(unbound("let pgopt in without SCRAM channel binding"));
                        }
                        Authentication::Ok => {}
                        Authentication::CleartextPassword | Authentication::Md5Password { .. }
                            if require =>
                        {
                            return Err(unbound("asks for a password rather than SCRAM"));
                        }
                        Authentication::CleartextPassword => {
                            let password = target
                                .password
                                .as_deref()
                                .ok_or_else(|| missing("a password"))?;
                            PasswordMessage { password }.encode(&mut out)?;
                        }
                        Authentication::Md5Password { salt } => {
                            let response = match (&target.password, &target.md5_hash) {
                                (Some(pw), _) => md5::client_response(&target.user, pw, salt),
                                (None, Some(hash)) => md5::response_from_hash(hash, salt)?,
                                (None, None) => return Err(missing("an md5 password")),
                            };
                            PasswordMessage {
                                password: &response,
                            }
                            .encode(&mut out)?;
                        }
                        Authentication::Sasl { mechanisms } => {
                            if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                                return Err(ProxyError::Server {
                                    server: server(),
                                    message: "offers no SASL mechanism pgopt supports".into(),
                                });
                            }
                            let mut client = match (&target.password, &keys) {
                                (Some(pw), _) => ScramClient::new(pw)?,
                                (None, Some(keys)) => ScramClient::with_keys(keys.clone())?,
                                (None, None) => return Err(missing("a SCRAM-SHA-256 password")),
                            };
                            let offered: Vec<&str> = mechanisms.iter().collect();
                            let end_point = match binding {
                                ChannelBinding::Disable => None,
                                _ => stream.peer_end_point(),
                            };
                            let mechanism = client.binding(&offered, end_point);
                            if require && !client.is_bound() {
                                return Err(unbound(if stream.is_tls() {
                                    "offers no SCRAM-SHA-256-PLUS (or its certificate names no hash to bind with)"
                                } else {
                                    "is reached without TLS"
                                }));
                            }
                            let first = client.client_first();
                            SaslInitialResponse {
                                mechanism,
                                data: Some(first.as_bytes()),
                            }
                            .encode(&mut out)?;
                            scram = Some(client);
                        }
                        Authentication::SaslContinue { data } => {
                            let client = scram.as_mut().ok_or_else(|| {
                                ProxyError::Protocol("SASLContinue before SASL".into())
                            })?;
                            if let (Some((salt, iterations)), Some(password)) =
                                (client.key_params(data)?, &target.password)
                            {
                                client.use_keys(derived_keys(password, salt, iterations).await?);
                            }
                            let reply = client.handle_server_first(data)?;
                            SaslResponse {
                                data: reply.as_bytes(),
                            }
                            .encode(&mut out)?;
                        }
                        Authentication::SaslFinal { data } => {
                            let client = scram.as_mut().ok_or_else(|| {
                                ProxyError::Protocol("SASLFinal before SASL".into())
                            })?;
                            client.verify_server_final(data)?;
                        }
                        other => {
                            return Err(ProxyError::Server {
                                server: server(),
                                message: format!(
                                "asks for authentication method {} which pgopt does not support",
                                other.code()
                            ),
                            })
                        }
                    }
                }
                BackendMessage::ParameterStatus(p) => {
                    server_params.push((p.name.to_string(), p.value.to_string()));
                }
                BackendMessage::BackendKeyData(k) => {
                    cancel_key = Some(CancelRequest {
                        process_id: k.process_id,
                        secret_key: k.secret_key,
                    });
                }
                BackendMessage::ErrorResponse(e) => {
                    return Err(ProxyError::Refused {
                        server: server(),
                        code: e.code().unwrap_or("?????").to_string(),
                        message: e.message().unwrap_or("error").to_string(),
                    });
                }
                BackendMessage::ReadyForQuery(r) => {
                    let now = Instant::now();
                    let cancel_key = cancel_key.unwrap_or(CancelRequest {
                        process_id: 0,
                        secret_key: 0,
                    });
                    let tls = match (&target.tls, stream.is_tls()) {
                        (Some(tls), true) => Some((tls.clone(), host.to_string())),
                        _ => None,
                    };
                    let defaults = crate::session_state::Defaults::from_params(&server_params);
                    return Ok(ServerConn {
                        info: Arc::new(ServerInfo::new(
                            addr.clone(),
                            local_addr,
                            cancel_key.process_id,
                        )),
                        stream,
                        addr: addr.clone(),
                        cancel: Arc::new(CancelRoute::new(addr, cancel_key, tls)),
                        params: server_params,
                        status: r.status,
                        home: crate::workers::home(),
                        prepared: Default::default(),
                        stale: Default::default(),
                        stale_marks: 0,
                        sql_prepared: Default::default(),
                        plan_epoch: 0,
                        schema_epoch: 0,
                        created: now,
                        generation: 0,
                        last_used: now,
                        applied: Applied::default(),
                        defaults,
                        serializable_default: false,
                        read_buf: BytesMut::new(),
                        permits: None,
                    });
                }
                // Notices during start-up are not the client's business.
                _ => {}
            }
            if !out.is_empty() {
                send(&mut stream, &out).await?;
            }
        }
    }
}

impl ServerConn {
    /// An idle connection has nothing to say: pending bytes (a FATAL from a server
    /// shutting down) or end-of-file mean it is dead. One non-blocking read, no syscall
    /// beyond it.
    pub fn looks_alive(&self) -> bool {
        self.stream.is_quiet()
    }
}

impl ServerConn {
    /// Moves a plain socket opened on another session thread to this thread's event
    /// loop (two `epoll_ctl` calls, once), so its reads wake this thread directly
    /// (see `workers.rs`). TLS connections stay where they are. An error: the socket
    /// is gone.
    pub fn rehome(self: Box<Self>) -> std::io::Result<Box<Self>> {
        let here = crate::workers::home();
        if self.home == here || self.stream.is_tls() {
            return Ok(self);
        }
        let mut conn = *self;
        let socket = conn.stream.detach()?;
        // `looks_alive` read readiness the other thread's event loop may not have
        // caught up with: the socket itself says whether the server closed it (or
        // sent something unasked).
        socket.check_quiet()?;
        conn.stream = socket.attach()?;
        conn.home = here;
        Ok(Box::new(conn))
    }

    /// A real round trip (an empty query) for a connection idle long enough that the
    /// server may have gone away without a word: true when it answered ReadyForQuery
    /// 'I' within `timeout` and nothing else is pending.
    pub async fn check(&mut self, timeout: Duration, max_len: u32) -> bool {
        const EMPTY_QUERY: &[u8] = b"Q\0\0\0\x05\0";
        let stream = &mut self.stream;
        let round_trip = async {
            stream.write_all(EMPTY_QUERY).await?;
            stream.flush().await?;
            let mut buf = BytesMut::with_capacity(64);
            loop {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok::<bool, std::io::Error>(false);
                }
                while let Ok(Some(frame)) = split_frame(&mut buf, max_len) {
                    if frame.tag() == b'Z' {
                        return Ok(frame.body() == b"I" && buf.is_empty());
                    }
                }
            }
        };
        matches!(
            tokio::time::timeout(timeout, round_trip).await,
            Ok(Ok(true))
        )
    }
}

/// Whether a server takes no writes, from what it said at start-up, as libpq's
/// `target_session_attrs=read-write` judges it: in recovery (`in_hot_standby`, from
/// PostgreSQL 14) or read-only by default. `None`: it did not say (before 14).
fn read_only_by_params(params: &[(String, String)]) -> Option<bool> {
    let said = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let standby = said("in_hot_standby")?;
    Some(standby == "on" || said("default_transaction_read_only") == Some("on"))
}

/// The same from `SHOW transaction_read_only`'s rows: anything but "off" is read-only.
fn read_only_by_show(rows: &[Vec<Option<String>>]) -> bool {
    rows.first()
        .and_then(|r| r.first())
        .cloned()
        .flatten()
        .as_deref()
        != Some("off")
}

/// What pgopt's own queries on a server connection got back.
pub struct QueryResult {
    /// The rows of the last result set, as text.
    pub rows: Vec<Vec<Option<String>>>,
    /// The first error, as "message (SQLSTATE)".
    pub error: Option<String>,
    pub status: TransactionStatus,
}

impl ServerConn {
    /// Sends messages pgopt built (flushed) and reads everything up to the
    /// ReadyForQuery: for pgopt's own queries (auth_query, plans), never a client's.
    /// Runs one simple query; the rows of its last result set, or the first error.
    pub async fn simple_query(
        &mut self,
        sql: &str,
        max_len: u32,
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        let mut out = BytesMut::new();
        Query { sql }.encode(&mut out).map_err(|e| e.to_string())?;
        let result = self.query(&out, max_len).await?;
        match result.error {
            Some(e) => Err(e),
            None => Ok(result.rows),
        }
    }

    pub async fn query(&mut self, messages: &[u8], max_len: u32) -> Result<QueryResult, String> {
        let io = |e: std::io::Error| e.to_string();
        self.stream.write_all(messages).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let mut buf = BytesMut::with_capacity(4096);
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let Some(frame) = split_frame(&mut buf, max_len).map_err(|e| e.to_string())? else {
                if self.stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                    return Err("the server closed the connection".into());
                }
                continue;
            };
            // An error's text may not be UTF-8 (a client_encoding other than UTF8,
            // with messages in another language): read lossily, and on to the
            // ReadyForQuery all the same, or the connection would be left mid-reply.
            if frame.tag() == b'E' {
                error.get_or_insert_with(|| error_text(frame.body()));
                continue;
            }
            let Ok(message) = frame.backend() else {
                continue;
            };
            match message {
                // The rows are the last described statement's: none for NoData.
                BackendMessage::RowDescription(_) | BackendMessage::NoData => rows.clear(),
                BackendMessage::DataRow(row) => rows.push(
                    row.values
                        .iter()
                        .map(|v| v.map(|b| pgopt_wire::text::escape(b).into_owned()))
                        .collect(),
                ),
                BackendMessage::ReadyForQuery(r) => {
                    return Ok(QueryResult {
                        rows,
                        error,
                        status: r.status,
                    })
                }
                _ => {}
            }
        }
    }
}

/// How [`ServerConn::query`] words an ErrorResponse: its message and SQLSTATE (read
/// lossily: the text may not be UTF-8).
fn error_text(body: &[u8]) -> String {
    let field = |wanted, missing| {
        crate::stats::error_field(body, wanted).map_or_else(
            || missing,
            |text| String::from_utf8_lossy(text).into_owned(),
        )
    };
    format!(
        "{} ({})",
        field(b'M', "error".to_string()),
        field(b'C', "?????".to_string())
    )
}

/// Writes start-up messages (flushed: under TLS a write may stay buffered).
async fn send(stream: &mut PgStream, bytes: &[u8]) -> Result<(), ProxyError> {
    stream
        .write_all(bytes)
        .await
        .map_err(ProxyError::server_io)?;
    stream.flush().await.map_err(ProxyError::server_io)
}

/// Sends the CancelRequest of `route` to its server (best effort, within `timeout`):
/// over TLS — SSLRequest, handshake, then the request — when the connection to be
/// canceled uses TLS, in plain text otherwise.
pub async fn send_cancel(route: &CancelRoute, timeout: Duration) {
    // (While it is on its way, the connection is not lent again: see
    // `Checkout::release_at`.)
    let _in_flight = CancelInFlight::new(route);
    let mut out = BytesMut::with_capacity(16);
    route.key.encode(&mut out);
    let attempt = async {
        let stream = PgStream::connect_endpoint(&route.addr)
            .await
            .map_err(ProxyError::server_io)?;
        let mut stream = match (&route.tls, stream) {
            (Some((tls, host)), PgStream::Plain(tcp)) => tls.negotiate(tcp, host).await?,
            (_, stream) => stream,
        };
        send(&mut stream, &out).await?;
        // The server closes the connection when it has read the request.
        let _ = stream.read(&mut [0u8; 1]).await;
        Ok::<_, ProxyError>(())
    };
    let addr = &route.addr;
    let tls = route.tls.is_some();
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%addr, tls, error = %e, "could not forward a cancel request"),
        Err(_) => tracing::warn!(
            %addr,
            tls,
            timeout_ms = timeout.as_millis() as u64,
            "could not forward a cancel request in time"
        ),
    }
}

/// SCRAM keys derived from configured server passwords, by password, salt and
/// iteration count. A server keeps a role's salt until its password changes, so
/// PBKDF2 (a few milliseconds by design) runs once per password, not once per server
/// connection a pool opens.
static DERIVED: LazyLock<Mutex<HashMap<KeyParams, ScramKeys>>> = LazyLock::new(Default::default);

/// A password, a salt and an iteration count.
type KeyParams = (String, Vec<u8>, u32);

/// The keys `password` gives with a server's `salt` and `iterations`: remembered, or
/// derived on the blocking pool, so a pool filling up never stalls the sessions that
/// share its thread's event loop.
async fn derived_keys(
    password: &str,
    salt: Vec<u8>,
    iterations: u32,
) -> Result<ScramKeys, ProxyError> {
    let key = (password.to_string(), salt, iterations);
    let lock = || DERIVED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(keys) = lock().get(&key) {
        return Ok(keys.clone());
    }
    let (password, salt, iterations) = key;
    let (keys, key) = tokio::task::spawn_blocking(move || {
        let keys = ScramKeys::derive(&password, &salt, iterations);
        (keys, (password, salt, iterations))
    })
    .await
    .map_err(|e| ProxyError::Protocol(format!("deriving SCRAM keys: {e}")))?;
    let mut derived = lock();
    // Bounded: salts change only with passwords, so this is a handful of entries.
    if derived.len() >= 256 {
        derived.clear();
    }
    derived.insert(key, keys.clone());
    Ok(keys)
}

#[cfg(test)]
mod derived_tests {
    use super::*;

    #[test]
    fn an_error_in_another_encoding_is_worded_lossily() {
        let body = b"SERREUR\0C22012\0Mdivision par z\xe9ro\0\0";
        assert_eq!(error_text(body), "division par z\u{fffd}ro (22012)");
    }

    #[test]
    fn read_write_is_judged_as_libpq_judges_it() {
        let params = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let judge = |pairs: &[(&str, &str)]| read_only_by_params(&params(pairs));
        assert_eq!(judge(&[("in_hot_standby", "off")]), Some(false));
        assert_eq!(judge(&[("in_hot_standby", "on")]), Some(true));
        let read_only_default = [
            ("in_hot_standby", "off"),
            ("default_transaction_read_only", "on"),
        ];
        assert_eq!(judge(&read_only_default), Some(true));
        // Before PostgreSQL 14 nothing is said: asked, and only "off" takes writes.
        assert_eq!(judge(&[("server_version", "13.9")]), None);
        let row = |v: Option<&str>| vec![vec![v.map(str::to_string)]];
        assert!(!read_only_by_show(&row(Some("off"))));
        assert!(read_only_by_show(&row(Some("on"))));
        assert!(read_only_by_show(&row(None)));
        assert!(read_only_by_show(&[]));
    }

    #[test]
    fn a_host_list_gets_a_connect_timeout_per_server() {
        let mut target = ServerTarget {
            host: "::1".into(),
            port: 5432,
            more_hosts: MoreHosts::default(),
            dbname: "d".into(),
            user: "u".into(),
            password: None,
            md5_hash: None,
            tls: None,
        };
        let t = Duration::from_secs(5);
        assert_eq!(target.connect_budget(t), t);
        assert_eq!(target.describe(), "[::1]:5432/d");
        target.more_hosts = MoreHosts::new(vec![("b".into(), 5433), ("c".into(), 5434)], true);
        assert_eq!(target.connect_budget(t), Duration::from_secs(15));
        assert_eq!(target.describe(), "[::1]:5432,b:5433,c:5434/d");
        assert_eq!(target.server(2), ("c", 5434));
        target.more_hosts = target.more_hosts.clone().with_read_write(true);
        assert_eq!(target.connect_budget(t), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_password_is_derived_once_per_salt() {
        let salt = b"pgopt-test-salt".to_vec();
        let remembered = || {
            DERIVED
                .lock()
                .unwrap()
                .keys()
                .filter(|(p, _, _)| p == "derive-once")
                .count()
        };
        let first = derived_keys("derive-once", salt.clone(), 16).await.unwrap();
        assert_eq!(first, ScramKeys::derive("derive-once", &salt, 16));
        assert_eq!(remembered(), 1);
        let again = derived_keys("derive-once", salt.clone(), 16).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(remembered(), 1, "the same salt is not derived again");
        // A new salt (the password changed on the server): derived anew.
        let other = derived_keys("derive-once", b"another".to_vec(), 16)
            .await
            .unwrap();
        assert_ne!(other, first);
        assert_eq!(remembered(), 2);
    }
}
