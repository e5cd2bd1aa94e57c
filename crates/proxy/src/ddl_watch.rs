//! Schema changes that bypass pgopt, heard at once (`cache.ddl_listener`). A new
//! trigger, rule, view or foreign key changes what a write reaches, and an ALTER or a
//! GRANT changes what a read returns; pgopt sees those it relays, but one made
//! directly on the server reached the cache's dependency map only when it was next
//! read (`DEPS_MAX_AGE`). With the listener, an event trigger on each listed database
//! calls `pg_notify('pgopt_ddl')` at the end of every DDL command, and a connection of
//! pgopt's LISTENs on that channel: each notification flushes the cache and has the
//! dependencies read again before anything more is cached. Creating the event
//! trigger takes a superuser; without one (or while the listener is down) schema
//! changes are seen as before, within `DEPS_MAX_AGE`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgopt_wire::split_frame;
use tokio::io::AsyncReadExt;

use crate::cache::ProxyCache;
use crate::server::{ServerConn, ServerTarget};
use crate::ProxyError;

/// The channel the event trigger notifies.
pub const CHANNEL: &str = "pgopt_ddl";

/// The function and the event trigger, made unless there (idempotent; the function
/// is replaced, so a pgopt upgrade can change it).
const SETUP: &str = "\
CREATE OR REPLACE FUNCTION public.pgopt_ddl_notify() RETURNS event_trigger \
  LANGUAGE plpgsql AS $f$ BEGIN PERFORM pg_catalog.pg_notify('pgopt_ddl', ''); END $f$; \
DO $d$ BEGIN \
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgopt_ddl') THEN \
    CREATE EVENT TRIGGER pgopt_ddl ON ddl_command_end EXECUTE FUNCTION public.pgopt_ddl_notify(); \
  END IF; \
END $d$";

/// Listens for `db`'s schema changes until the proxy stops; on failure it waits (1 s,
/// doubling up to 30 s) and starts again.
pub async fn watch(
    cache: Arc<ProxyCache>,
    db: crate::config::Database,
    (connect_timeout, keepalive): (Duration, Option<crate::config::Keepalive>),
    mut lifecycle: tokio::sync::watch::Receiver<crate::shared::Lifecycle>,
) {
    let (user, password) = crate::cache::wal_login(&cache.settings, &db);
    let target = ServerTarget {
        host: db.host.clone(),
        port: db.port,
        dbname: db.dbname.clone(),
        user,
        password,
        md5_hash: None,
        tls: None,
    };
    let set_state = |state: &str| cache.counters.set_ddl_state(&db.name, state);
    let mut backoff = Duration::from_secs(1);
    loop {
        set_state("connecting");
        let run = async {
            let max_len = pgopt_wire::DEFAULT_MAX_MESSAGE_LEN;
            let mut conn =
                ServerConn::connect(&target, None, connect_timeout, max_len, keepalive).await?;
            let failed = |what: &str, e: String| ProxyError::Server {
                server: target.describe(),
                message: format!("{what}: {e}"),
            };
            conn.simple_query(SETUP, max_len)
                .await
                .map_err(|e| failed("creating the event trigger pgopt_ddl", e))?;
            conn.simple_query(&format!("LISTEN {CHANNEL}"), max_len)
                .await
                .map_err(|e| failed("LISTEN", e))?;
            // Changes before now were not heard: everything is read again.
            cache.schema_changed_elsewhere(&db.name);
            set_state("listening");
            backoff = Duration::from_secs(1);
            notifications(&mut conn, max_len, || {
                cache.schema_changed_elsewhere(&db.name);
                cache
                    .counters
                    .ddl_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .await
        };
        let stopped = async {
            let _ = lifecycle
                .wait_for(|s| *s >= crate::shared::Lifecycle::Stopped)
                .await;
        };
        let error = tokio::select! {
            result = run => match result {
                Ok(()) => "the connection ended".to_string(),
                Err(e) => e.to_string(),
            },
            () = stopped => return,
        };
        tracing::warn!(
            database = %db.name,
            %error,
            retry_in_ms = backoff.as_millis() as u64,
            "the cache's schema change listener stopped; changes that bypass pgopt are seen within 30 s until it is back"
        );
        set_state(&format!("down: {error}"));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Reads the idle connection's messages, calling `heard` for each notification on
/// [`CHANNEL`]; returns when the connection ends (an error says how).
async fn notifications(
    conn: &mut ServerConn,
    max_len: u32,
    mut heard: impl FnMut(),
) -> Result<(), ProxyError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        while let Some(frame) =
            split_frame(&mut buf, max_len).map_err(|source| ProxyError::Decode {
                peer: "server",
                source,
            })?
        {
            match frame.tag() {
                b'A' => heard(),
                b'E' => {
                    return Err(ProxyError::Protocol(
                        "the server sent an error on the listening connection".into(),
                    ))
                }
                // Notices and parameter changes: nothing to do.
                _ => {}
            }
        }
        if conn
            .stream
            .read_buf(&mut buf)
            .await
            .map_err(ProxyError::server_io)?
            == 0
        {
            return Ok(());
        }
    }
}
