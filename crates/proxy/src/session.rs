//! One client connection: start-up, authentication, then the relay between the client
//! and whichever server connection its pool lends it.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use pgopt_wire::backend::{BackendKeyData, ParameterStatus, ReadyForQuery};
use pgopt_wire::startup::{split_startup, CancelRequest, StartupPacket, MAX_STARTUP_PACKET_LEN};
use pgopt_wire::{md5, sqlstate, TransactionStatus};
use tokio::io::AsyncReadExt;

use crate::admin::{self, Role};
use crate::auth::{self, Credentials};
use crate::auth_query::{self, LookupError};
use crate::config::{ClientAuth, Config, TlsMode};
use crate::hba;
use crate::io::{close_tls, send_fatal, write_all};
use crate::net::{ClientStream, Endpoint};
use crate::pool::{CheckoutError, Pool, ServerParams};
use crate::relay::Relay;
use crate::replication::{self, Replication};
use crate::routing::Routes;
use crate::server::CancelRoute;
use crate::session_state::Settings;
use crate::shared::{Lifecycle, Shared};
use crate::stats::{ClientInfo, ClientState};
use crate::ProxyError;
use pgopt_wire::scram::ScramKeys;

/// Where a client's cancel requests go: the server connection lent to it, if any, and
/// else its wait for one (a cancel while it waits fails the request, as PostgreSQL
/// cancels a statement waiting on a lock).
#[derive(Default)]
pub struct CancelTarget {
    pub route: Mutex<Option<Arc<CancelRoute>>>,
    pub waiting: tokio::sync::Notify,
    /// Read and written under `route`'s lock. pgopt's own queries applying the
    /// client's settings (its role, search_path…) run on the connection ahead of the
    /// client's request: a cancel now would cancel one of them, and the request would
    /// then run without it. The cancel waits (`deferred`) until they are answered
    /// (see `Relay::settings_answered`).
    pub setting_up: AtomicBool,
    pub deferred: AtomicBool,
}
pub type CancelSlot = Arc<CancelTarget>;

/// Serves the client on `stream` (TCP or a Unix-domain socket, as accepted).
pub async fn run(stream: ClientStream, peer: Endpoint, shared: Arc<Shared>) {
    let local_addr = match &stream {
        ClientStream::Plain(tcp) => {
            let _ = tcp.set_nodelay(true);
            if let Some(keepalive) = &shared.config().tcp_keepalive {
                crate::io::keep_alive(tcp, keepalive);
            }
            tcp.local_addr().ok().map(Endpoint::Tcp)
        }
        // A Unix-domain socket's clients are unnamed: they show the socket itself.
        _ => Some(peer.clone()),
    };
    shared.accepted.fetch_add(1, Ordering::Relaxed);
    let peer_pid = stream.peer_pid();
    // Over max_client_conn only the admin console gets in, as in PgBouncer: an operator
    // can still look at, and end, a connection storm.
    let (_client_slot, start) = match shared.client_slots().try_acquire_owned() {
        Ok(slot) => (Some(slot), Start::Fresh(stream)),
        Err(_) => match refuse_over_limit(stream, &shared).await {
            Some(admin) => (None, admin),
            None => {
                shared.rejected_max_clients.fetch_add(1, Ordering::Relaxed);
                if shared.config().log_disconnections {
                    tracing::info!(
                        target: "pgopt::connections",
                        client = %peer,
                        "closing because: no more connections allowed (max_client_conn)"
                    );
                }
                return;
            }
        },
    };
    let client = shared.clients.register(peer.clone(), local_addr, peer_pid);
    // The session's log lines carry its client (the user and database once known).
    // Entered at each poll (`instrument`): a span entered across an await stayed
    // entered for the other sessions the thread ran meanwhile, whose lines then named
    // a chain of clients.
    let span = tracing::debug_span!(
        "client",
        id = client.info.id,
        user = tracing::field::Empty,
        db = tracing::field::Empty
    );
    let (ended, fatal) = crate::io::FATAL
        .scope(
            std::cell::RefCell::new(None),
            tracing::Instrument::instrument(
                async {
                    let ended = session(start, &shared, &client.info).await;
                    (ended, crate::io::FATAL.with(|f| f.take()))
                },
                span,
            ),
        )
        .await;
    match &ended {
        Ok(()) => tracing::debug!(%peer, "client session ended"),
        Err(e) => tracing::debug!(%peer, error = %e, "client session ended with an error"),
    }
    if shared.config().log_disconnections {
        let info = &client.info;
        let (user, database, _) = info.identity();
        let why = match (fatal, ended) {
            (Some(fatal), _) => fatal,
            (None, Err(e)) => e.to_string(),
            (None, Ok(())) => "client close request".into(),
        };
        // (It may quote what the client sent: one line whatever it holds.)
        let why = why.replace(['\n', '\r'], " ");
        let age = info.connect_time.elapsed().unwrap_or_default();
        // Names as the client sent them, quoted (a newline stays on its line).
        tracing::info!(
            target: "pgopt::connections",
            client = %peer,
            ?user,
            ?database,
            age_s = format!("{:.1}", age.as_secs_f64()),
            "closing because: {why}"
        );
    }
}

/// How a session starts: with its connection as accepted, or with its start-up packet
/// already read (a client of the admin console over max_client_conn).
enum Start {
    Fresh(ClientStream),
    Read(ClientStream, Startup, BytesMut),
}

/// A client over max_client_conn, refused after its start-up packet as PostgreSQL
/// refuses one over max_connections: an ErrorResponse in answer to an SSLRequest
/// reaches a user of libpq (since its 2024 releases) as "server sent an error response
/// during SSL exchange", without the reason. A CancelRequest is forwarded, as ever: a
/// pooler at its limit is when cancels matter most. Bounded in time as a login is, and
/// in number. A client of the admin console is let in: returned, to be served.
async fn refuse_over_limit(mut stream: ClientStream, shared: &Shared) -> Option<Start> {
    const MOST: std::time::Duration = std::time::Duration::from_secs(5);
    /// Clients being refused this way at once: past it, a flood of connections is
    /// answered at once without reading anything (sockets and handshakes stay bounded,
    /// as PostgreSQL bounds its children still starting up).
    const AT_ONCE: usize = 256;
    static REFUSING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    struct Refusing;
    impl Drop for Refusing {
        fn drop(&mut self) {
            REFUSING.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if REFUSING.fetch_add(1, Ordering::Relaxed) >= AT_ONCE {
        REFUSING.fetch_sub(1, Ordering::Relaxed);
        send_fatal(
            &mut stream,
            sqlstate::TOO_MANY_CONNECTIONS,
            "no more connections allowed (max_client_conn)",
        )
        .await;
        return None;
    }
    let _refusing = Refusing;
    let limit = shared.config().client_login_timeout;
    let wait = if limit.is_zero() {
        MOST
    } else {
        limit.min(MOST)
    };
    let mut buf = BytesMut::with_capacity(1024);
    if let Ok(Ok((mut stream, Some(startup)))) =
        tokio::time::timeout(wait, read_startup(stream, &mut buf, shared)).await
    {
        if shared.config().is_admin_database(&startup.database) {
            return Some(Start::Read(stream, startup, buf));
        }
        send_fatal(
            &mut stream,
            sqlstate::TOO_MANY_CONNECTIONS,
            "no more connections allowed (max_client_conn)",
        )
        .await;
    }
    None
}

/// PgBouncer's `application_name_add_host`: ` - HOST:PORT` after the client's
/// application_name (its only value when it sent none), so `pg_stat_activity` tells
/// where a statement came from.
fn add_host(params: &mut Vec<(String, String)>, addr: &Endpoint) {
    let suffix = format!(" - {addr}");
    match params.iter_mut().find(|(k, _)| k == "application_name") {
        Some((_, value)) => value.push_str(&suffix),
        None => params.push(("application_name".into(), suffix)),
    }
}

/// The `log_connections` line of a client that logged in.
fn log_login(
    config: &Config,
    info: &ClientInfo,
    stream: &ClientStream,
    user: &str,
    database: &str,
) {
    if config.log_connections {
        let via = match stream {
            ClientStream::Plain(_) => "tcp",
            ClientStream::Unix(_) => "unix socket",
            ClientStream::Tls(_) => "tls",
        };
        tracing::info!(
            target: "pgopt::connections",
            client = %info.addr,
            ?user,
            ?database,
            via,
            "login"
        );
    }
}

/// What a client asked for in its StartupMessage.
pub struct Startup {
    pub user: String,
    pub database: String,
    /// Every other parameter (application_name, search_path, options, …), in order.
    pub params: Vec<(String, String)>,
    /// Over TLS: the channel binding data of the certificate the client was shown
    /// (`tls-server-end-point`), when SCRAM-SHA-256-PLUS can be offered.
    pub end_point: Option<Arc<[u8]>>,
}

async fn session(
    start: Start,
    shared: &Arc<Shared>,
    info: &Arc<ClientInfo>,
) -> Result<(), ProxyError> {
    let config = shared.config();
    // Logging in (TLS, start-up, password) is bounded: a client that connects and
    // stalls would hold one of max_client_conn's places for ever.
    let mut deadline = (!config.client_login_timeout.is_zero())
        .then(|| tokio::time::Instant::now() + config.client_login_timeout);
    let (mut buf, (mut stream, startup)) = match start {
        Start::Fresh(stream) => {
            let mut buf = BytesMut::with_capacity(8192);
            let Some(started) = before(deadline, read_startup(stream, &mut buf, shared)).await
            else {
                // (The stream went with the read: closed without a word, as PostgreSQL
                // does when a start-up packet does not come in time.)
                tracing::debug!(client = %info.addr, "no start-up packet within client_login_timeout");
                return Ok(());
            };
            (buf, started?)
        }
        Start::Read(stream, startup, buf) => (buf, (stream, Some(startup))),
    };
    if let Some(tls) = stream.tls_description() {
        let _ = info.tls.set(tls);
    }
    let Some(startup) = startup else {
        return Ok(());
    };
    // As PgBouncer: a Unix-domain socket needs no TLS (PostgreSQL offers none on one).
    if config.client_tls.mode == TlsMode::Require && !stream.is_tls() && !stream.is_unix() {
        send_fatal(
            &mut stream,
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "pgopt accepts only TLS connections (proxy.tls_mode = \"require\"): connect with sslmode=require",
        )
        .await;
        return Ok(());
    }
    let mut startup = startup;
    let replication = match Replication::of(&startup.params) {
        Ok(replication) => replication,
        Err((code, message)) => {
            send_fatal(&mut stream, code, &message).await;
            return Ok(());
        }
    };
    // (Not for a replication client: a standby is named by its own application_name
    // in synchronous_standby_names.)
    if config.application_name_add_host && replication == Replication::None {
        add_host(&mut startup.params, &info.addr);
    }
    let Startup { user, database, .. } = &startup;
    let application_name = startup
        .params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map_or("", |(_, v)| v.as_str());
    info.set_identity(user, database, application_name);
    let span = tracing::Span::current();
    // (Debug-quoted: names are the client's bytes, line breaks included.)
    span.record("user", tracing::field::debug(user));
    span.record("db", tracing::field::debug(database));

    if refuse_if_stopping(&mut stream, shared).await {
        return Ok(());
    }
    let Some((method, client_cert, map)) = client_method(
        &mut stream,
        shared,
        &config,
        info,
        database,
        user,
        replication,
    )
    .await
    else {
        return Ok(());
    };
    let how = auth::Login {
        method,
        // clientcert=verify-full: the certificate names the user.
        named_by_certificate: client_cert == hba::ClientCert::VerifyFull,
        // A map without the ident file (refused at start and RELOAD) admits no one.
        map: map.as_deref().map(|map| {
            let ident = config.ident.as_deref().unwrap_or(&crate::ident::NO_MAPS);
            (ident, map)
        }),
        // (Not offered when turned off: `client_tls.channel_binding`.)
        end_point: startup
            .end_point
            .as_deref()
            .filter(|_| config.client_tls.channel_binding),
    };
    let users = shared.users();
    let creds = users.get(user.as_str());
    if config.is_admin_database(database) && replication != Replication::None {
        let message = "pgopt's admin console takes no replication connections";
        send_fatal(&mut stream, sqlstate::FEATURE_NOT_SUPPORTED, message).await;
        return Ok(());
    }
    if config.is_admin_database(database) {
        login(
            &mut stream,
            &mut buf,
            shared,
            &config,
            how,
            user,
            creds,
            None,
            deadline,
        )
        .await?;
        write_all(&mut stream, AUTHENTICATION_OK).await?;
        let admin = config.admin_users.iter().any(|u| u == user);
        if !admin && !config.stats_users.iter().any(|u| u == user) {
            send_fatal(
                &mut stream,
                sqlstate::INSUFFICIENT_PRIVILEGE,
                &format!(
                    "user \"{user}\" is not an admin user (proxy.admin_users) or a stats user (proxy.stats_users)"
                ),
            )
            .await;
            return Ok(());
        }
        log_login(&config, info, &stream, user, database);
        info.set_state(ClientState::Idle, 0);
        let role = if admin {
            Role::Admin
        } else {
            Role::Stats(user.clone())
        };
        return admin::serve(stream, buf, shared.clone(), info.clone(), role).await;
    }
    // A physical replication connection names no database: PostgreSQL 16's tools and
    // older send "replication". With one database configured, it goes to that one's
    // server.
    let db = config.database(database).or_else(|| {
        (replication == Replication::Physical)
            .then(|| config.sole_database())
            .flatten()
    });
    let Some(db) = db else {
        if replication == Replication::Physical {
            let message = format!(
                "database \"{database}\" is not in pgopt's proxy.databases: a physical replication connection goes to the database it names, or with one database configured to that one; name an entry \"{database}\" (or \"*\") for it"
            );
            send_fatal(&mut stream, sqlstate::INVALID_CATALOG_NAME, &message).await;
            return Ok(());
        }
        unknown_database(&mut stream, database).await;
        return Ok(());
    };
    if db.name != *database {
        // The views, and KILL, know it by the database it went to.
        info.set_identity(user, &db.name, application_name);
    }
    // Before any lookup on the server (auth_query) is made for it.
    if shared.is_disabled(&db.name) {
        let message = format!(
            "database \"{database}\" is not currently accepting connections (DISABLE in pgopt's admin console)"
        );
        send_fatal(
            &mut stream,
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            &message,
        )
        .await;
        return Ok(());
    }
    // A user the config does not list may be found on the server by auth_query
    // (answers are kept for auth_query_cache_ttl).
    let mut found = None;
    let mut refresh = None;
    if let (Some(auth_user), None) = (&config.auth_user, creds) {
        if !matches!(
            method,
            ClientAuth::Trust | ClientAuth::Peer | ClientAuth::Cert
        ) {
            let lookup = |stale| {
                auth_query::lookup_cached(
                    shared,
                    &shared.auth_cache,
                    config.auth_query_cache_ttl,
                    &db.name,
                    auth_user,
                    &config.auth_query,
                    user,
                    stale,
                )
            };
            let lookup_started = tokio::time::Instant::now();
            let looked_up = lookup(None).await;
            // The server's time, not the client's: the login deadline waits it out.
            deadline = deadline.map(|d| d + lookup_started.elapsed());
            match looked_up {
                Ok(answer) => {
                    found = answer.credentials;
                    if let (true, Some(kept)) = (answer.cached, found.clone()) {
                        // A password that fails against a kept answer: look again once.
                        let again: auth::Refresh<'_> = Box::pin(async move {
                            match lookup(Some(kept)).await {
                                Ok(answer) => answer.credentials,
                                Err(_) => {
                                    tracing::warn!("auth_query failed when looked up again");
                                    None
                                }
                            }
                        });
                        refresh = Some(again);
                    }
                }
                Err(LookupError::Checkout(code, message)) => {
                    send_fatal(&mut stream, code, &message).await;
                    return Ok(());
                }
                Err(LookupError::Failed(why)) => {
                    // Why is for the log only: a client not logged in yet learns nothing
                    // of the server's tables, errors or stored passwords (PgBouncer and
                    // PostgreSQL tell it as little).
                    tracing::warn!(user, "auth_query failed: {why}");
                    let message = format!(
                        "auth_query for user \"{user}\" failed (the reason is in pgopt's log)"
                    );
                    send_fatal(&mut stream, sqlstate::CONNECTION_FAILURE, &message).await;
                    return Err(ProxyError::Protocol(format!("{message}: {why}")));
                }
            }
        }
    }
    let login = login(
        &mut stream,
        &mut buf,
        shared,
        &config,
        how,
        user,
        creds.or(found.as_deref()),
        refresh,
        deadline,
    )
    .await?;
    log_login(&config, info, &stream, user, database);
    if login.refreshed.is_some() {
        found = login.refreshed;
    }
    let keys = login.keys;

    // Logging in took round trips: a RELOAD or SHUTDOWN may have come meanwhile.
    // (A refusal from here on follows AuthenticationOk, as PostgreSQL's would.)
    if shared.lifecycle_now() != Lifecycle::Running {
        let _ = write_all(&mut stream, AUTHENTICATION_OK).await;
        refuse_if_stopping(&mut stream, shared).await;
        return Ok(());
    }
    let Some(mut pool) = shared.pool_for(&db.name, user, found.as_deref()) else {
        // RELOAD removed it while the client logged in.
        let _ = write_all(&mut stream, AUTHENTICATION_OK).await;
        unknown_database(&mut stream, database).await;
        return Ok(());
    };
    let mut routes = shared.routes_for(&pool, found.as_deref());
    learn_keys(&pool, routes.as_ref(), user, keys.as_ref());
    if replication != Replication::None {
        // (Not a member of the pool: its server connection is not the pool's.)
        return replication::serve(stream, buf, shared, info, &pool, &startup, replication).await;
    }
    let mut settings = Settings::from_startup(&startup.params);
    // PostgreSQL refuses these at login (the session's start has taken a snapshot);
    // pgopt would have applied them to no transaction of the client's.
    let refused = [
        ("transaction_isolation", "SET TRANSACTION ISOLATION LEVEL"),
        ("transaction_deferrable", "SET TRANSACTION [NOT] DEFERRABLE"),
    ]
    .into_iter()
    .find(|(name, _)| settings.startup_value(name).is_some());
    if let Some((_, statement)) = refused {
        let _ = write_all(&mut stream, AUTHENTICATION_OK).await;
        let message = format!("{statement} must be called before any query");
        send_fatal(&mut stream, sqlstate::ACTIVE_SQL_TRANSACTION, &message).await;
        return Ok(());
    }
    let mut membership = Membership {
        pool: PoolMember::new(&pool),
        user: user.to_string(),
        found,
        keys,
    };
    let params = loop {
        if let Some(params) = pool.params() {
            break params;
        }
        // The first client of a pool: connecting now also tells it whether the
        // server is up, before it sends a query.
        info.set_state(ClientState::Waiting, crate::stats::unix_us_now());
        let error = match first_contact(&pool, routes.as_ref()).await {
            Ok(params) => break params,
            Err(e) => e,
        };
        // A RELOAD retired the pool meanwhile: the one the config gives now.
        if matches!(error, CheckoutError::Retired) {
            if let Some((now, its_routes)) = membership.rejoin(shared) {
                (pool, routes) = (now, its_routes);
                continue;
            }
        }
        let _ = write_all(&mut stream, AUTHENTICATION_OK).await;
        fail_checkout(&mut stream, &pool, error).await;
        return Ok(());
    };
    info.set_state(ClientState::Idle, 0);

    let cancel_slot: CancelSlot = Arc::default();
    let key = new_cancel_key()?;
    shared.register_cancel(key, &cancel_slot);
    // The client's own start-up values, which pgopt applies on its server
    // connections, are the ones it must see, spelt as PostgreSQL spells them.
    settings.spell_startup(&params, |name, raw| pool.spelling(name, raw));
    let shown = params.iter().map(|(name, value)| {
        let own = settings.current_startup_value(name);
        (
            name.as_str(),
            own.or(settings.startup_value(name)).unwrap_or(value),
        )
    });
    let out = login_reply(shown, key, TransactionStatus::Idle)?;
    let result = async {
        write_all(&mut stream, &out).await?;
        Relay::new(
            stream,
            buf,
            (pool, routes, membership),
            shared.clone(),
            cancel_slot,
            info.clone(),
            settings,
        )
        .run()
        .await
    }
    .await;
    shared.unregister_cancel(key);
    result
}

/// The server's start-up parameters for a pool's first client, from a connection made
/// now. When the primary is down and reads may go on without it, a replica's do.
async fn first_contact(
    pool: &Arc<Pool>,
    routes: Option<&Routes>,
) -> Result<ServerParams, CheckoutError> {
    let error = match pool.checkout().await {
        Ok(checkout) => {
            checkout.release();
            return Ok(pool.params().unwrap_or_default());
        }
        Err(e) => e,
    };
    let Some(routes) = routes.filter(|r| r.router.settings.reads_when_primary_down) else {
        return Err(error);
    };
    for replica in &routes.pools {
        if let Ok(checkout) = replica.checkout().await {
            checkout.release();
            return Ok(replica.params().unwrap_or_default());
        }
    }
    Err(error)
}

/// Reads the start-up packets: answers SSLRequest/GSSENCRequest, forwards a
/// CancelRequest. `None` when the connection ends without a StartupMessage.
async fn read_startup(
    mut stream: ClientStream,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<(ClientStream, Option<Startup>), ProxyError> {
    let stream_ref = &mut stream;
    let startup = read_startup_packets(stream_ref, buf, shared).await?;
    match startup {
        StartupStep::Upgrade(acceptor) => {
            let tls = stream
                .upgrade(&acceptor.tls)
                .await
                .map_err(|e| ProxyError::Tls(format!("handshake with a client: {e}")))?;
            // Start-up again, encrypted this time (a second SSLRequest is answered 'N').
            let mut tls = tls;
            match read_startup_packets(&mut tls, buf, shared).await? {
                StartupStep::Done(s) => Ok((
                    tls,
                    s.map(|s| Startup {
                        end_point: acceptor.end_point,
                        ..s
                    }),
                )),
                StartupStep::Upgrade(_) => Ok((tls, None)),
            }
        }
        StartupStep::Done(s) => Ok((stream, s)),
    }
}

enum StartupStep {
    Done(Option<Startup>),
    /// The client asked for TLS and was told 'S': the handshake comes next.
    Upgrade(crate::tls::Acceptor),
}

async fn read_startup_packets(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<StartupStep, ProxyError> {
    loop {
        let frame = loop {
            match split_startup(buf, MAX_STARTUP_PACKET_LEN) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(source) => return Err(reject_startup(stream, source).await),
            }
            if stream.read_buf(buf).await.map_err(ProxyError::client_io)? == 0 {
                return Ok(StartupStep::Done(None));
            }
        };
        match frame.decode() {
            Ok(StartupPacket::SslRequest) => match shared.tls_acceptor() {
                // None over a Unix-domain socket, as PostgreSQL (and libpq asks none).
                Some(acceptor) if matches!(stream, ClientStream::Plain(_)) => {
                    // Bytes behind an SSLRequest would be read as if they had come
                    // over TLS (CVE-2021-23214): refuse them.
                    if !buf.is_empty() {
                        send_fatal(
                            stream,
                            sqlstate::PROTOCOL_VIOLATION,
                            "received unencrypted data after SSL request",
                        )
                        .await;
                        return Ok(StartupStep::Done(None));
                    }
                    write_all(stream, b"S").await?;
                    return Ok(StartupStep::Upgrade(acceptor));
                }
                _ => write_all(stream, b"N").await?,
            },
            Ok(StartupPacket::GssEncRequest) => {
                // No GSSAPI encryption: 'N' tells the client to go on without it.
                write_all(stream, b"N").await?;
            }
            Ok(StartupPacket::Cancel(request)) => {
                shared.forward_cancel(request).await;
                // Over TLS (libpq 17+ encrypts cancels) the client waits for a proper
                // close_notify, not a bare EOF.
                close_tls(stream).await;
                return Ok(StartupStep::Done(None));
            }
            Ok(StartupPacket::Startup(m)) => {
                if m.protocol.major != 3 {
                    send_fatal(
                        stream,
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        &format!(
                            "unsupported frontend protocol {}.{}",
                            m.protocol.major, m.protocol.minor
                        ),
                    )
                    .await;
                    return Ok(StartupStep::Done(None));
                }
                // As PostgreSQL: an empty name is no name, an empty database is the
                // user's, and both are cut to a name's 63 bytes before any rule or
                // secret is looked up (the server would cut them itself: a rule or
                // an auth_query must see the role the login ends up as).
                let Some(user) = m.user().filter(|u| !u.is_empty()) else {
                    send_fatal(
                        stream,
                        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                        "no PostgreSQL user name specified in startup packet",
                    )
                    .await;
                    return Ok(StartupStep::Done(None));
                };
                // A newer 3.x than 3.0, or protocol options (`_pq_.…`): as PostgreSQL,
                // NegotiateProtocolVersion says 3.0 and none of the options, and the
                // login goes on (a client must not take them as accepted).
                let options: Vec<&str> = m
                    .params
                    .iter()
                    .map(|(k, _)| k)
                    .filter(|k| k.starts_with("_pq_."))
                    .collect();
                if m.protocol.minor > 0 || !options.is_empty() {
                    let mut out = bytes::BytesMut::new();
                    let negotiate = pgopt_wire::backend::NegotiateProtocolVersion {
                        newest_minor: 0,
                        unrecognized: options.as_slice().into(),
                    };
                    if negotiate.encode(&mut out).is_ok() {
                        write_all(stream, &out).await?;
                    }
                }
                let params = m
                    .params
                    .iter()
                    .filter(|(k, _)| *k != "user" && *k != "database" && !k.starts_with("_pq_."))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let database = m.database().filter(|d| !d.is_empty()).unwrap_or(user);
                return Ok(StartupStep::Done(Some(Startup {
                    user: name_data(user).to_string(),
                    database: name_data(database).to_string(),
                    params,
                    end_point: None,
                })));
            }
            Err(source) => return Err(reject_startup(stream, source).await),
        }
    }
}

/// The longest name PostgreSQL keeps, in bytes (`NAMEDATALEN` - 1).
const NAME_DATA_LEN: usize = 63;

/// `name` as PostgreSQL keeps it: its first 63 bytes. (PostgreSQL cuts a start-up
/// packet's names at the byte; a role created with a longer name was cut at a
/// character, which is what this keeps too: a name cut within a character names no
/// role either way.)
fn name_data(name: &str) -> &str {
    if name.len() <= NAME_DATA_LEN {
        return name;
    }
    let mut end = NAME_DATA_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

async fn unknown_database(stream: &mut ClientStream, database: &str) {
    let message = format!("database \"{database}\" does not exist");
    send_fatal(stream, sqlstate::INVALID_CATALOG_NAME, &message).await;
}

/// A client arriving while the proxy shuts down hears 57P03; `true` when refused.
async fn refuse_if_stopping(stream: &mut ClientStream, shared: &Shared) -> bool {
    if shared.lifecycle_now() == Lifecycle::Running {
        return false;
    }
    send_fatal(
        stream,
        sqlstate::CANNOT_CONNECT_NOW,
        "pgopt is shutting down",
    )
    .await;
    true
}

/// How the client logs in: `client_auth`, or what the first `hba` rule matching it
/// says, with the certificate and the user name map the rule asks for. `None` when no
/// rule matches, the rule rejects it, or it has no certificate the rule asks for: it
/// has been told so.
async fn client_method(
    stream: &mut ClientStream,
    shared: &Shared,
    config: &Config,
    info: &ClientInfo,
    database: &str,
    user: &str,
    replication: Replication,
) -> Option<(ClientAuth, hba::ClientCert, Option<String>)> {
    let Some(hba) = &config.hba else {
        return Some((config.client_auth, hba::ClientCert::Off, None));
    };
    let (origin, host, tls) = match (stream.is_unix(), info.addr.tcp()) {
        (false, Some(addr)) => {
            let tls = stream.is_tls();
            let origin = hba::Origin::Host { ip: addr.ip(), tls };
            (origin, addr.ip().to_string(), tls)
        }
        _ => (hba::Origin::Local, "[local]".to_string(), false),
    };
    // The console by either of its names (when `pgbouncer` is one: no database entry
    // takes it): rules for one hold for the other.
    let other_name = [
        crate::config::ADMIN_DATABASE,
        crate::config::PGBOUNCER_ADMIN_DATABASE,
    ]
    .into_iter()
    .find(|name| *name != database && config.is_admin_database(name));
    let other_name = other_name.filter(|_| config.is_admin_database(database));
    let physical = replication == Replication::Physical;
    let decision = if physical {
        hba.decide_physical(origin, user)
    } else {
        hba.decide_also(origin, database, other_name, user)
    };
    let refusal = match decision.map(|d| (d.method, d.client_cert)) {
        // As PostgreSQL, before any password is asked for.
        Some((hba::Method::Auth(_), hba::ClientCert::VerifyCa | hba::ClientCert::VerifyFull))
            if !stream.has_peer_certificate() =>
        {
            let message = "connection requires a valid client certificate";
            tracing::info!(line = decision.map(|d| d.line), ?user, "{message}");
            shared.rejected_auth.fetch_add(1, Ordering::Relaxed);
            send_fatal(
                stream,
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                message,
            )
            .await;
            return None;
        }
        Some((hba::Method::Auth(method), client_cert)) => {
            let map = decision
                .as_ref()
                .and_then(|d| hba.map_of(d))
                .map(str::to_string);
            return Some((method, client_cert, map));
        }
        Some((hba::Method::Reject, _)) => "auth_hba_file rejects connection for",
        None => "no auth_hba_file entry for",
    };
    let encryption = if tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    // As PostgreSQL words it.
    let message = match (physical, decision.is_some()) {
        (false, _) => format!(
            "{refusal} host \"{host}\", user \"{user}\", database \"{database}\", {encryption}"
        ),
        (true, true) => format!(
            "auth_hba_file rejects replication connection for host \"{host}\", user \"{user}\", {encryption}"
        ),
        (true, false) => format!(
            "no auth_hba_file entry for replication connection from host \"{host}\", user \"{user}\", {encryption}"
        ),
    };
    // (Logged with its control characters escaped: a name sent with a line break
    // must not forge a line of the log.)
    tracing::info!(
        line = decision.map(|d| d.line),
        "{}",
        message.escape_debug()
    );
    shared.rejected_auth.fetch_add(1, Ordering::Relaxed);
    send_fatal(
        stream,
        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
        &message,
    )
    .await;
    None
}

/// AuthenticationOk. As PostgreSQL, pgopt sends it with the messages that follow it
/// (ParameterStatus … ReadyForQuery, or an error), in one write: a write less per
/// login.
const AUTHENTICATION_OK: &[u8] = b"R\0\0\0\x08\0\0\0\0";

/// Authenticates the client, within `deadline` (client_login_timeout); a failure is
/// counted and the client told why. A SCRAM login against a stored verifier yields
/// the user's keys. (AuthenticationOk is the caller's to send.)
#[allow(clippy::too_many_arguments)]
async fn login(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    shared: &Shared,
    config: &Config,
    method: auth::Login<'_>,
    user: &str,
    creds: Option<&Credentials>,
    refresh: Option<auth::Refresh<'_>>,
    deadline: Option<tokio::time::Instant>,
) -> Result<auth::Authenticated, ProxyError> {
    let exchange = auth::authenticate(
        stream,
        buf,
        method,
        user,
        creds,
        config.max_message_len,
        refresh,
    );
    let Some(result) = before(deadline, exchange).await else {
        return Err(login_timed_out(stream, shared, config).await);
    };
    if result.is_err() {
        shared.rejected_auth.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// The password exchange took longer than `client_login_timeout`: the client hears
/// why (PostgreSQL's words for its `authentication_timeout`), then the connection ends.
async fn login_timed_out(
    stream: &mut ClientStream,
    shared: &Shared,
    config: &Config,
) -> ProxyError {
    shared.rejected_auth.fetch_add(1, Ordering::Relaxed);
    let message = format!(
        "canceling authentication due to timeout (client_login_timeout = {} ms)",
        config.client_login_timeout.as_millis()
    );
    send_fatal(stream, sqlstate::QUERY_CANCELED, &message).await;
    ProxyError::Protocol(message)
}

/// `work`'s output, or `None` when `deadline` passes first.
async fn before<T>(
    deadline: Option<tokio::time::Instant>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, work).await.ok(),
        None => Some(work.await),
    }
}

/// A client's SCRAM keys from its login, kept by its pools (and their replicas') for
/// servers that take the client's own password: only where the server login is the
/// client's own user.
fn learn_keys(pool: &Pool, routes: Option<&Routes>, user: &str, keys: Option<&ScramKeys>) {
    let Some(keys) = keys.filter(|_| pool.target.user == user) else {
        return;
    };
    for replica in routes.iter().flat_map(|r| &r.pools) {
        replica.learn_keys(keys.clone());
    }
    pool.learn_keys(keys.clone());
}

/// A logged-in client's place among its pool's clients, and what it logged in with
/// that joining another pool takes again: the credentials `auth_query` found and the
/// SCRAM keys of its login (see [`Membership::rejoin`]).
pub struct Membership {
    pool: PoolMember,
    user: String,
    found: Option<Arc<Credentials>>,
    keys: Option<ScramKeys>,
}

impl Membership {
    /// The pool the config now gives the client's database and user, in the pool mode
    /// of the client's, with its replicas: a RELOAD retired the client's (a failover
    /// moved the database to another server). The client counts there from now on.
    /// `None`, the client staying where it is, when the database is gone or its pool
    /// mode changed.
    pub fn rejoin(&mut self, shared: &Shared) -> Option<(Arc<Pool>, Option<Routes>)> {
        let was = &self.pool.0;
        let pool = shared.pool_for(&was.database, &self.user, self.found.as_deref())?;
        if pool.mode != was.mode || pool.is_retired() {
            return None;
        }
        let routes = self.routes(shared, &pool);
        self.pool = PoolMember::new(&pool);
        Some((pool, routes))
    }

    /// The replicas a client of `pool` reads from, as the config now lists them.
    pub fn routes(&self, shared: &Shared, pool: &Arc<Pool>) -> Option<Routes> {
        let routes = shared.routes_for(pool, self.found.as_deref());
        learn_keys(pool, routes.as_ref(), &self.user, self.keys.as_ref());
        routes
    }
}

/// Counts a logged-in client in its pool while it lives.
struct PoolMember(Arc<Pool>);

impl PoolMember {
    fn new(pool: &Arc<Pool>) -> PoolMember {
        pool.clients.fetch_add(1, Ordering::Relaxed);
        PoolMember(pool.clone())
    }
}

impl Drop for PoolMember {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A malformed startup packet: the client hears why, then the connection ends.
async fn reject_startup(stream: &mut ClientStream, source: pgopt_wire::DecodeError) -> ProxyError {
    send_fatal(
        stream,
        sqlstate::PROTOCOL_VIOLATION,
        "invalid startup packet",
    )
    .await;
    ProxyError::Decode {
        peer: "client",
        source,
    }
}

/// Tells the client why it gets no server connection, with the SQLSTATE clients expect.
pub async fn fail_checkout(stream: &mut ClientStream, pool: &Pool, error: CheckoutError) {
    let (code, message) = checkout_error(pool, error);
    pool.stats.record_error(code.as_bytes());
    send_fatal(stream, code, &message).await;
}

/// The SQLSTATE and message a client gets when no server connection can be had.
pub fn checkout_error(pool: &Pool, error: CheckoutError) -> (&'static str, String) {
    match error {
        CheckoutError::WaitTimeout(wait) => (
            sqlstate::QUERY_CANCELED,
            format!(
                "query_wait_timeout: no server connection for {} ms (pool of {} is {})",
                wait.as_millis(),
                pool.target.describe(),
                if pool.is_paused() {
                    "paused: RESUME in pgopt's admin console"
                } else {
                    "busy"
                }
            ),
        ),
        // A database the fallback entry sent the client to that the server lacks.
        CheckoutError::Connect(ProxyError::Refused { code, message, .. })
            if code == sqlstate::INVALID_CATALOG_NAME =>
        {
            (sqlstate::INVALID_CATALOG_NAME, message)
        }
        CheckoutError::Connect(e) => (
            sqlstate::CONNECTION_FAILURE,
            format!("pgopt could not connect to the server: {e}"),
        ),
        CheckoutError::Down { error, retry_in } => (
            sqlstate::CONNECTION_FAILURE,
            format!(
                "server {} is down (last error: {error}); pgopt retries in {} ms",
                pool.target.describe(),
                retry_in.as_millis()
            ),
        ),
        CheckoutError::ShuttingDown => (sqlstate::ADMIN_SHUTDOWN, "pgopt is shutting down".into()),
        CheckoutError::Retired => (
            sqlstate::ADMIN_SHUTDOWN,
            format!(
                "terminating connection: a RELOAD changed database \"{}\"; reconnect",
                pool.database
            ),
        ),
    }
}

/// Process ids handed to clients (with a random secret key) for their CancelRequests.
/// What a client hears once it is in: AuthenticationOk, the server's parameters,
/// its cancel key and ReadyForQuery, in one buffer (one write).
pub(crate) fn login_reply<'a>(
    params: impl Iterator<Item = (&'a str, &'a str)>,
    key: CancelRequest,
    status: TransactionStatus,
) -> Result<BytesMut, ProxyError> {
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(AUTHENTICATION_OK);
    for (name, value) in params {
        ParameterStatus { name, value }.encode(&mut out)?;
    }
    BackendKeyData {
        process_id: key.process_id,
        secret_key: key.secret_key,
    }
    .encode(&mut out);
    ReadyForQuery { status }.encode(&mut out);
    Ok(out)
}

/// The cancel key a client is given: pgopt's own, never a server's.
pub(crate) fn new_cancel_key() -> Result<CancelRequest, ProxyError> {
    Ok(CancelRequest {
        process_id: next_process_id(),
        secret_key: i32::from_be_bytes(md5::random_salt()?),
    })
}

fn next_process_id() -> i32 {
    static NEXT: AtomicI32 = AtomicI32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::name_data;

    #[test]
    fn names_are_cut_to_postgresqls_63_bytes_at_a_character() {
        let long = "a".repeat(70);
        assert_eq!(name_data(&long), &long[..63]);
        assert_eq!(name_data("app"), "app");
        let exact = "b".repeat(63);
        assert_eq!(name_data(&exact), exact);
        // 62 bytes, then a two-byte character across the 63rd: cut before it.
        let across = format!("{}é", "c".repeat(62));
        assert_eq!(name_data(&across), &across[..62]);
    }
}
