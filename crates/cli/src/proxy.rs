//! `pgopt proxy`: pool a PostgreSQL server for any client.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::config::{ClientAuthMethod, PoolMode, ProxyConfig};
use crate::upstream;

/// Flags override the `[proxy]` section of the config.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address clients connect to [default: 127.0.0.1:6432]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// The server to pool, e.g. postgres://app@127.0.0.1:5432/shop
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// When a server connection goes back to the pool [default: transaction]
    #[arg(long, value_enum)]
    pool_mode: Option<PoolModeArg>,
    /// Server connections per (database, user), 1 to 10000 [default: 20]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pool_size: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PoolModeArg {
    Session,
    Transaction,
}

pub async fn run(config: &ProxyConfig, args: ProxyArgs) -> anyhow::Result<()> {
    let proxy_config = build(config, args)?;
    let mode = proxy_config.pool_mode;
    let size = proxy_config.default_pool_size;
    let db = proxy_config.databases.first().cloned();
    let proxy = pgopt_proxy::Proxy::start(proxy_config)
        .await
        .context("starting the proxy")?;
    if let Some(db) = db {
        println!(
            "pgopt proxy on {} → {}:{}/{} ({:?} pooling, {} server connections per database and user)",
            proxy.local_addr(),
            db.host,
            db.port,
            db.dbname,
            mode,
            size
        );
        println!(
            "Connect:  psql -h {} -p {} {}",
            proxy.local_addr().ip(),
            proxy.local_addr().port(),
            db.name
        );
    }
    tokio::select! {
        _ = proxy.wait() => {}
        _ = crate::shutdown_signal() => eprintln!("pgopt proxy: stopping"),
    }
    Ok(())
}

fn build(config: &ProxyConfig, args: ProxyArgs) -> anyhow::Result<pgopt_proxy::Config> {
    let url = args.upstream.unwrap_or_else(|| config.upstream.clone());
    if url.is_empty() {
        anyhow::bail!(
            "no upstream server: give --upstream postgres://USER@HOST:PORT/DB or set proxy.upstream in the config"
        );
    }
    let up = upstream::parse(&url).map_err(|e| anyhow::anyhow!("proxy.upstream: {e}"))?;
    let pool_mode = match args.pool_mode {
        Some(PoolModeArg::Session) => pgopt_proxy::PoolMode::Session,
        Some(PoolModeArg::Transaction) => pgopt_proxy::PoolMode::Transaction,
        None => match config.pool_mode {
            PoolMode::Session => pgopt_proxy::PoolMode::Session,
            PoolMode::Transaction => pgopt_proxy::PoolMode::Transaction,
        },
    };
    let client_auth = match config.auth {
        ClientAuthMethod::Trust => pgopt_proxy::ClientAuth::Trust,
        ClientAuthMethod::Md5 => pgopt_proxy::ClientAuth::Md5,
        ClientAuthMethod::ScramSha256 => pgopt_proxy::ClientAuth::ScramSha256,
    };
    if client_auth == pgopt_proxy::ClientAuth::Trust {
        tracing::warn!("proxy.auth = \"trust\": clients log in without a password");
    }
    Ok(pgopt_proxy::Config {
        listen: args.listen.unwrap_or(config.listen),
        pool_mode,
        default_pool_size: args.pool_size.unwrap_or(config.default_pool_size.get()) as usize,
        max_client_conn: config.max_client_conn.get() as usize,
        query_wait_timeout: config.query_wait_timeout.0,
        server_connect_timeout: config.server_connect_timeout.0,
        server_idle_timeout: config.server_idle_timeout.0,
        server_lifetime: config.server_lifetime.0,
        client_auth,
        users: config
            .users
            .iter()
            .map(|u| pgopt_proxy::User {
                name: u.name.clone(),
                password: u.password.clone(),
            })
            .collect(),
        databases: vec![pgopt_proxy::Database {
            name: up.dbname.clone(),
            host: up.host,
            port: up.port,
            dbname: up.dbname,
            user: up.user,
            password: up.password,
        }],
        ..pgopt_proxy::Config::default()
    })
}
