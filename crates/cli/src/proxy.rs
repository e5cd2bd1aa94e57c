//! `pgopt proxy`: pool a PostgreSQL server for any client.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::config::{
    self, ChannelBindingSetting, ClientAuthMethod, Loaded, ServerTlsModeSetting, TlsModeSetting,
};
use crate::upstream;

/// Flags override the `[proxy]` section of the config.
#[derive(Debug, Clone, Default, Args)]
pub struct ProxyArgs {
    /// Address clients connect to [default: 127.0.0.1:6432]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// The server to pool, e.g. postgres://app@127.0.0.1:5432/shop
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// When a server connection goes back to the pool, unless a database sets its own
    /// [default: transaction]
    #[arg(long, value_enum)]
    pool_mode: Option<PoolModeArg>,
    /// Server connections per (database, user), 1 to 10000, unless a database sets its
    /// own [default: 20]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pool_size: Option<u32>,
    /// Serve Prometheus /metrics over HTTP here [default: off]
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<SocketAddr>,
    /// A streaming replica of the upstream to send reads to (repeatable; replaces
    /// routing.replicas)
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_replica)]
    replica: Vec<(String, u16)>,
}

fn parse_replica(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, found {s:?}"))?;
    let port = port.parse().map_err(|_| {
        format!("expected HOST:PORT: port {port:?} is not a number from 1 to 65535")
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("expected HOST:PORT: no host in {s:?}"));
    }
    Ok((host.to_string(), port))
}

/// `--replica` flags when given, else the config's `[[routing.replicas]]`.
fn replicas(
    routing: &config::RoutingSection,
    flags: &[(String, u16)],
) -> Vec<pgopt_proxy::Replica> {
    if flags.is_empty() {
        return routing.replicas();
    }
    flags
        .iter()
        .map(|(host, port)| pgopt_proxy::Replica {
            host: host.clone(),
            port: *port,
            weight: 1,
        })
        .collect()
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PoolModeArg {
    Session,
    Transaction,
}

pub async fn run(loaded: &Loaded, args: ProxyArgs) -> anyhow::Result<()> {
    let proxy_config = build(&loaded.config, args.clone())
        .map_err(|e| anyhow::anyhow!(config::at_line(loaded.file.as_deref(), &format!("{e:#}"))))?;
    let admin_users = proxy_config.admin_users.clone();
    let mode = proxy_config.pool_mode;
    let size = proxy_config.default_pool_size;
    let databases = proxy_config.databases.clone();
    let proxy = pgopt_proxy::Proxy::start(proxy_config)
        .await
        .context("starting the proxy")?;
    out!(
        "pgopt proxy on {} ({:?} pooling, {} server connections per database and user)",
        proxy.local_addr(),
        mode,
        size
    );
    for db in &databases {
        let replicas = match db.replicas.len() {
            0 => String::new(),
            n => format!(", {n} replica{}", if n == 1 { "" } else { "s" }),
        };
        let own_pool = match (db.pool.mode, db.pool.size) {
            (None, None) => String::new(),
            (db_mode, db_size) => format!(
                ", {:?} pooling, {} per user",
                db_mode.unwrap_or(mode),
                db_size.unwrap_or(size)
            ),
        };
        if db.name == pgopt_proxy::FALLBACK_DATABASE {
            out!(
                "Any other database → {}, the database of the client's name{own_pool}",
                db.servers_text()
            );
            continue;
        }
        out!(
            "Database {} → {}/{}{replicas}{own_pool}:  psql -h {} -p {} {}",
            db.name,
            db.servers_text(),
            db.dbname,
            proxy.local_addr().ip(),
            proxy.local_addr().port(),
            db.name
        );
    }
    if let Some(addr) = proxy.admin_addr() {
        out!("Metrics:  http://{addr}/metrics");
    }
    if let Some(user) = admin_users.first() {
        out!(
            "Admin:    psql -h {} -p {} -U {user} pgopt   (SHOW HELP)",
            proxy.local_addr().ip(),
            proxy.local_addr().port()
        );
    }
    let handle = proxy.handle();
    let file = loaded.file.clone();
    handle.set_reloader(move || {
        let overrides = config::env_overrides().map_err(|e| e.to_string())?;
        let loaded = config::load(file.as_deref(), &overrides).map_err(|e| e.to_string())?;
        build(&loaded.config, args.clone())
            .map_err(|e| config::at_line(loaded.file.as_deref(), &format!("{e:#}")))
    });
    serve_signals(&proxy).await
}

/// SIGHUP reloads the config; SIGTERM or Ctrl-C drains (transactions finish, up to
/// shutdown_timeout); a second one stops at once.
async fn serve_signals(proxy: &pgopt_proxy::Proxy) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handle = proxy.handle();
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut draining = false;
    loop {
        tokio::select! {
            _ = proxy.wait() => return Ok(()),
            _ = hup.recv() => {
                // Off the event loop, which serves sessions too: reading the file,
                // hashing the users' passwords.
                let reloader = handle.clone();
                let reloaded = tokio::task::spawn_blocking(move || reloader.reload())
                    .await
                    .unwrap_or_else(|e| Err(format!("the reload stopped: {e}")));
                match reloaded {
                    Ok(()) => err!("pgopt proxy: configuration reloaded"),
                    Err(e) => err!("pgopt proxy: reload failed, keeping the running configuration: {e}"),
                }
            }
            _ = crate::shutdown_signal() => {
                if draining {
                    err!("pgopt proxy: stopping now");
                    return Ok(());
                }
                draining = true;
                err!("pgopt proxy: shutting down, letting transactions finish (again to stop now)");
                handle.shutdown();
            }
        }
    }
}

/// A file setting: "" is none.
fn file(path: &str) -> Option<std::path::PathBuf> {
    (!path.is_empty()).then(|| path.into())
}

/// Reads the files the proxy's config names (`pgopt config check`): the hba rules,
/// the user list, the server certificate pair; and the upstream URLs as the proxy
/// reads them.
pub fn check_files(root: &config::Config) -> anyhow::Result<()> {
    let proxy = &root.proxy;
    if !proxy.upstream.is_empty() || !proxy.databases.is_empty() {
        databases(root, &ProxyArgs::default())?;
    }
    match (
        proxy.server_tls_cert_file.as_str(),
        proxy.server_tls_key_file.as_str(),
    ) {
        ("", "") => {}
        ("", _) | (_, "") => anyhow::bail!(
            "proxy.server_tls_cert_file and proxy.server_tls_key_file go together: give both or neither"
        ),
        (cert, key) => {
            for (key_name, file) in [("server_tls_cert_file", cert), ("server_tls_key_file", key)] {
                std::fs::File::open(file)
                    .map_err(|e| anyhow::anyhow!("proxy.{key_name}: reading {file}: {e}"))?;
            }
        }
    }
    let ident = read_ident(&root.proxy.auth_ident_file)?;
    if root.proxy.auth == ClientAuthMethod::Hba && !root.proxy.auth_hba_file.is_empty() {
        let hba = read_hba(&root.proxy.auth_hba_file)?;
        // As the proxy checks at start: each map a rule names is in the ident file.
        for (map, line) in hba.maps() {
            if !ident.as_ref().is_some_and(|i| i.has(map)) {
                anyhow::bail!(
                    "{}:{line}: map \"{map}\" is not in proxy.auth_ident_file",
                    root.proxy.auth_hba_file
                );
            }
        }
    }
    users(&root.proxy)?;
    Ok(())
}

/// `[[proxy.users]]` and the users of `proxy.auth_file`; an entry without a password
/// takes the file's (its settings with the file's password, as PgBouncer's `[users]`).
/// A user with a password in both, or a bad line in the file (named), is an error.
fn users(config: &config::ProxyConfig) -> anyhow::Result<Vec<pgopt_proxy::User>> {
    // One entry per user: a second would take over the first's password unseen.
    for (i, user) in config.users.iter().enumerate() {
        if config.users[..i].iter().any(|u| u.name == user.name) {
            anyhow::bail!(
                "proxy.users[{i}]: user {:?} is already listed; give each user one entry",
                user.name
            );
        }
    }
    let mut users: Vec<pgopt_proxy::User> = config
        .users
        .iter()
        .map(|u| pgopt_proxy::User {
            name: u.name.clone(),
            password: u.password.clone(),
            pool_mode: u.pool_mode.map(|m| m.proxy()),
            max_user_connections: u.max_user_connections.map(|m| m.get() as usize),
        })
        .collect();
    let path = config.auth_file.as_str();
    if path.is_empty() {
        return Ok(users);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("proxy.auth_file: reading {path}: {e}"))?;
    let listed = crate::auth_file::parse(&text)
        .map_err(|(line, e)| anyhow::anyhow!("{path}:{line}: {e}"))?;
    for (name, password) in listed {
        match users.iter_mut().find(|u| u.name == name) {
            Some(entry) if entry.password.is_empty() => entry.password = password,
            Some(_) => anyhow::bail!(
                "{path}: user \"{name}\" has a password in [[proxy.users]] too: give it in one place"
            ),
            None => users.push(pgopt_proxy::User::new(name, password)),
        }
    }
    Ok(users)
}

/// The maps of `proxy.auth_ident_file` (none when it is ""); an error names the file
/// and line.
fn read_ident(path: &str) -> anyhow::Result<Option<pgopt_proxy::ident::IdentMap>> {
    if path.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("proxy.auth_ident_file: reading {path}: {e}"))?;
    let maps = pgopt_proxy::ident::IdentMap::parse(&text)
        .map_err(|(line, e)| anyhow::anyhow!("{path}:{line}: {e}"))?;
    Ok(Some(maps))
}

/// The rules of `proxy.auth_hba_file`; an error names the file and line.
fn read_hba(path: &str) -> anyhow::Result<pgopt_proxy::hba::Hba> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("proxy.auth_hba_file: reading {path}: {e}"))?;
    pgopt_proxy::hba::Hba::parse(&text).map_err(|(line, e)| anyhow::anyhow!("{path}:{line}: {e}"))
}

/// `--upstream` or `proxy.upstream` (with `--replica` or `routing.replicas`), then
/// `[[proxy.databases]]`, each named once.
fn databases(
    root: &config::Config,
    args: &ProxyArgs,
) -> anyhow::Result<Vec<pgopt_proxy::Database>> {
    let config = &root.proxy;
    let database = |name: &str,
                    url: &str,
                    replicas,
                    pool,
                    (balance, attrs): (
        Option<config::LoadBalanceHosts>,
        Option<config::TargetSessionAttrs>,
    )|
     -> Result<_, String> {
        let up = upstream::parse(url)?;
        let round_robin =
            balance.unwrap_or(config.load_balance_hosts) == config::LoadBalanceHosts::RoundRobin;
        let read_write =
            attrs.unwrap_or(config.target_session_attrs) == config::TargetSessionAttrs::ReadWrite;
        Ok(pgopt_proxy::Database {
            name: if name.is_empty() {
                up.dbname.clone()
            } else {
                name.to_string()
            },
            host: up.host,
            port: up.port,
            more_hosts: pgopt_proxy::MoreHosts::new(up.more_hosts, round_robin)
                .with_read_write(read_write),
            dbname: up.dbname,
            user: up.user,
            password: up.password,
            replicas,
            pool,
        })
    };
    // Each with the config key it came from, for messages.
    let mut databases: Vec<(String, pgopt_proxy::Database)> = Vec::new();
    let url = args
        .upstream
        .clone()
        .unwrap_or_else(|| config.upstream.clone());
    if !url.is_empty() {
        let replicas = replicas(&root.routing, &args.replica);
        let db = database(
            "",
            &url,
            replicas,
            pgopt_proxy::DatabasePool::default(),
            (None, None),
        )
        .map_err(|e| anyhow::anyhow!("proxy.upstream: {e}"))?;
        databases.push(("proxy.upstream".into(), db));
    } else if !args.replica.is_empty() || !root.routing.replicas.is_empty() {
        anyhow::bail!(
            "replicas without proxy.upstream: --replica and routing.replicas are the upstream's; \
             give a [[proxy.databases]] entry its own replicas"
        );
    }
    for (i, entry) in config.databases.iter().enumerate() {
        if entry.name == pgopt_proxy::FALLBACK_DATABASE {
            if !entry.replicas.is_empty() {
                anyhow::bail!(
                    "proxy.databases[{i}].replicas: the fallback database \"*\" cannot have \
                     replicas; list the databases that read from replicas by name"
                );
            }
            if upstream::names_database(&entry.upstream.0) {
                anyhow::bail!(
                    "proxy.databases[{i}].upstream: the fallback database \"*\" serves each \
                     client the database of the name it asked for; leave the database out of \
                     the URL (postgres://USER@HOST:PORT)"
                );
            }
        }
        let replicas = config::proxy_replicas(&entry.replicas);
        let db = database(
            &entry.name,
            &entry.upstream.0,
            replicas,
            entry.pool(),
            (entry.load_balance_hosts, entry.target_session_attrs),
        )
        .map_err(|e| anyhow::anyhow!("proxy.databases[{i}].upstream: {e}"))?;
        databases.push((format!("proxy.databases[{i}]"), db));
    }
    for (i, (key, db)) in databases.iter().enumerate() {
        if db.name == pgopt_proxy::ADMIN_DATABASE {
            anyhow::bail!(
                "{key}: the name {:?} is the admin console's; serve that database as a \
                 [[proxy.databases]] entry with another name",
                db.name
            );
        }
        if databases[..i].iter().any(|(_, d)| d.name == db.name) {
            anyhow::bail!(
                "{key}: a database named {:?} is already configured; give the entry a name of its own",
                db.name
            );
        }
    }
    let databases: Vec<_> = databases.into_iter().map(|(_, db)| db).collect();
    if databases.is_empty() {
        anyhow::bail!(
            "no upstream server: give --upstream postgres://USER@HOST:PORT/DB or set proxy.upstream (or [[proxy.databases]]) in the config"
        );
    }
    Ok(databases)
}

/// The proxy's config from the file's (and the command line's), its TLS files read
/// as the proxy reads them at start and RELOAD: an error names its key.
pub(crate) fn build(root: &config::Config, args: ProxyArgs) -> anyhow::Result<pgopt_proxy::Config> {
    let built = build_unchecked(root, args)?;
    pgopt_proxy::check_tls(&built).map_err(|(key, e)| anyhow::anyhow!("proxy.{key}: {e}"))?;
    Ok(built)
}

fn build_unchecked(root: &config::Config, args: ProxyArgs) -> anyhow::Result<pgopt_proxy::Config> {
    let (config, insight) = (&root.proxy, &root.insight);
    let databases = databases(root, &args)?;
    let pool_mode = match args.pool_mode {
        Some(PoolModeArg::Session) => pgopt_proxy::PoolMode::Session,
        Some(PoolModeArg::Transaction) => pgopt_proxy::PoolMode::Transaction,
        None => config.pool_mode.proxy(),
    };
    let client_auth = match config.auth {
        ClientAuthMethod::Trust => pgopt_proxy::ClientAuth::Trust,
        ClientAuthMethod::Md5 => pgopt_proxy::ClientAuth::Md5,
        ClientAuthMethod::Cert => pgopt_proxy::ClientAuth::Cert,
        // (With hba the rules decide; this is not used.)
        ClientAuthMethod::ScramSha256 | ClientAuthMethod::Hba => {
            pgopt_proxy::ClientAuth::ScramSha256
        }
    };
    if client_auth == pgopt_proxy::ClientAuth::Trust {
        tracing::warn!("proxy.auth = \"trust\": clients log in without a password");
    }
    let hba = match (config.auth, config.auth_hba_file.as_str()) {
        (ClientAuthMethod::Hba, "") => {
            anyhow::bail!("proxy.auth: \"hba\" needs a file of rules: set proxy.auth_hba_file")
        }
        (ClientAuthMethod::Hba, path) => Some(std::sync::Arc::new(read_hba(path)?)),
        (_, "") => None,
        (_, path) => {
            tracing::warn!("proxy.auth_hba_file ({path}) is read only with proxy.auth = \"hba\"");
            None
        }
    };
    Ok(pgopt_proxy::Config {
        listen: args.listen.unwrap_or(config.listen),
        unix_socket_dir: config.unix_socket_dir.0.clone(),
        unix_socket_mode: config.unix_socket_mode.0,
        unix_socket_group: Some(config.unix_socket_group.clone()).filter(|g| !g.is_empty()),
        so_reuseport: config.so_reuseport,
        listen_also: config.listen_also.clone(),
        log_connections: config.log_connections,
        log_disconnections: config.log_disconnections,
        application_name_add_host: config.application_name_add_host,
        server_round_robin: config.server_round_robin,
        pool_mode,
        default_pool_size: args.pool_size.unwrap_or(config.default_pool_size.get()) as usize,
        min_pool_size: config.min_pool_size.get() as usize,
        reserve_pool_size: config.reserve_pool_size.get() as usize,
        reserve_pool_timeout: config.reserve_pool_timeout.0,
        max_client_conn: config.max_client_conn.get() as usize,
        max_message_len: config.max_message_len.get(),
        max_prepared_statements: config.max_prepared_statements.get() as usize,
        workers: config.workers.get() as usize,
        query_wait_timeout: config.query_wait_timeout.0,
        server_connect_timeout: config.server_connect_timeout.0,
        server_idle_timeout: config.server_idle_timeout.0,
        server_lifetime: config.server_lifetime.0,
        server_check_delay: config.server_check_delay.0,
        server_login_retry: config.server_login_retry.0,
        idle_transaction_timeout: config.idle_transaction_timeout.0,
        client_login_timeout: config.client_login_timeout.0,
        client_idle_timeout: config.client_idle_timeout.0,
        query_timeout: config.query_timeout.0,
        max_db_connections: config.max_db_connections.get() as usize,
        max_user_connections: config.max_user_connections.get() as usize,
        tcp_keepalive: (config.tcp_keepalive || !config.tcp_user_timeout.0.is_zero()).then_some(
            pgopt_proxy::Keepalive {
                probes: config.tcp_keepalive,
                idle: config.tcp_keepidle.0,
                interval: config.tcp_keepintvl.0,
                count: config.tcp_keepcnt.get(),
                user_timeout: config.tcp_user_timeout.0,
            },
        ),
        shutdown_timeout: config.shutdown_timeout.0,
        admin_users: if config.admin_users.is_empty() {
            // The operator who owns the (first) upstream login runs the console.
            databases[0].user.iter().cloned().collect()
        } else {
            config.admin_users.clone()
        },
        stats_users: config.stats_users.clone(),
        admin_listen: args.admin_listen.or(config.admin_listen.0),
        client_tls: pgopt_proxy::ClientTls {
            mode: match config.tls_mode {
                TlsModeSetting::Disable => pgopt_proxy::TlsMode::Disable,
                TlsModeSetting::Prefer => pgopt_proxy::TlsMode::Prefer,
                TlsModeSetting::Require => pgopt_proxy::TlsMode::Require,
            },
            cert_file: file(&config.tls_cert_file),
            key_file: file(&config.tls_key_file),
            ca_file: file(&config.tls_ca_file),
            channel_binding: config.tls_channel_binding,
        },
        server_tls: pgopt_proxy::ServerTls {
            mode: match config.server_tls_mode {
                ServerTlsModeSetting::Disable => pgopt_proxy::ServerTlsMode::Disable,
                ServerTlsModeSetting::Prefer => pgopt_proxy::ServerTlsMode::Prefer,
                ServerTlsModeSetting::Require => pgopt_proxy::ServerTlsMode::Require,
                ServerTlsModeSetting::VerifyCa => pgopt_proxy::ServerTlsMode::VerifyCa,
                ServerTlsModeSetting::VerifyFull => pgopt_proxy::ServerTlsMode::VerifyFull,
            },
            ca_file: file(&config.server_tls_ca_file),
            cert_file: file(&config.server_tls_cert_file),
            key_file: file(&config.server_tls_key_file),
            channel_binding: match config.server_channel_binding {
                ChannelBindingSetting::Disable => pgopt_proxy::ChannelBinding::Disable,
                ChannelBindingSetting::Prefer => pgopt_proxy::ChannelBinding::Prefer,
                ChannelBindingSetting::Require => pgopt_proxy::ChannelBinding::Require,
            },
        },
        client_auth,
        hba,
        ident: read_ident(&config.auth_ident_file)?.map(std::sync::Arc::new),
        users: users(config)?,
        auth_user: (!config.auth_user.is_empty()).then(|| config.auth_user.clone()),
        insight: pgopt_proxy::InsightSettings {
            enabled: insight.enabled,
            store: pgopt_insight::InsightConfig {
                max_fingerprints: insight.max_fingerprints.get() as usize,
                params: insight.params,
                ..pgopt_insight::InsightConfig::default()
            },
            slow_log: insight.slow_log.clone(),
            n_plus_one: insight.n_plus_one.clone(),
            plans: pgopt_proxy::PlanSettings {
                enabled: insight.plans.enabled,
                threshold: insight.plans.threshold.0,
                interval: insight.plans.interval.0,
                per_minute: insight.plans.per_minute.get(),
                large_table_rows: insight.plans.large_table_rows,
                keep: insight.plans.keep.get() as usize,
            },
        },
        auth_query: config.auth_query.clone(),
        auth_query_cache_ttl: config.auth_query_cache_ttl.0,
        databases,
        routing: root.routing.policy(),
        cache: root.cache.settings(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_takes_its_balance_policy_from_the_entry_or_the_proxy() {
        let root = config::parse_text(
            "pgopt.toml",
            "[proxy]\nupstream = \"postgres://a@h1,h2:5433/main\"\nload_balance_hosts = \"disable\"\n\n\
             [[proxy.databases]]\nname = \"rr\"\nupstream = \"postgres://a@h1,h2/r\"\n\
             load_balance_hosts = \"round-robin\"\ntarget_session_attrs = \"read-write\"\n\n\
             [[proxy.databases]]\nname = \"one\"\nupstream = \"postgres://a@h1/o\"\n",
        )
        .unwrap();
        let dbs = databases(&root, &ProxyArgs::default()).unwrap();
        let hosts = |i: usize| &dbs[i].more_hosts;
        assert_eq!(dbs[0].hosts_text(), "h1,h2:5433");
        assert_eq!(hosts(0).hosts, vec![("h2".to_string(), 5433)]);
        assert!(!hosts(0).round_robin);
        assert!(hosts(1).round_robin);
        assert!(hosts(1).read_write && !hosts(0).read_write);
        assert!(hosts(2).is_empty());
        let bad = config::parse_text(
            "pgopt.toml",
            "[proxy]\nupstream = \"postgres://a@h/m\"\nload_balance_hosts = \"random\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("load_balance_hosts"), "{bad}");
    }

    #[test]
    fn config_check_reads_the_upstream_and_the_server_certificate_as_the_proxy_does() {
        let check = |text: &str| {
            let root = config::parse_text("pgopt.toml", text).unwrap();
            check_files(&root).map_err(|e| e.to_string())
        };
        assert!(check("[proxy]\nupstream = \"postgres://a@h1,h2/m\"\n").is_ok());
        assert!(check("[logging]\nlevel = \"info\"\n").is_ok());
        let e = check("[proxy]\nupstream = \"postgres://a@h1,h2/m?port=1,2,3\"\n").unwrap_err();
        assert!(e.contains("3 ports for 2 hosts"), "{e}");
        let e = check(
            "[proxy]\nupstream = \"postgres://a@h/m\"\nserver_tls_cert_file = \"/etc/hosts\"\n",
        )
        .unwrap_err();
        assert!(e.contains("give both or neither"), "{e}");
        let e = check(
            "[proxy]\nupstream = \"postgres://a@h/m\"\nserver_tls_cert_file = \"/etc/hosts\"\n\
             server_tls_key_file = \"/nonexistent/pgopt.key\"\n",
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent/pgopt.key"), "{e}");
    }
}
