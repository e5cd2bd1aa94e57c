//! Schema changes that bypass pgopt, heard at once (`cache.ddl_listener`). A new
//! trigger, rule, view or foreign key changes what a write reaches, and an ALTER or a
//! GRANT changes what a read returns; pgopt sees those it relays, but one made
//! directly on the server reached the cache's dependency map only when it was next
//! read (`DEPS_MAX_AGE`), and entries it changed lived on until their TTL. With the
//! listener, an event trigger on each listed database calls `pg_notify('pgopt_ddl')`
//! at the end of every DDL command (but those on temporary objects, and those that
//! change no result: indexes, extended statistics, REINDEX — unless the database has
//! event triggers of its own, which any DDL may run), and a connection
//! of pgopt's LISTENs on that channel: each notification flushes the cache (every
//! database's: entries are not told apart by database; L2 too) and has the
//! dependencies read again before anything more is cached.
//!
//! The function lives in a schema `pgopt` that pgopt's login owns (one owned by
//! another role is refused: a function there could be swapped for code that then runs
//! as every superuser issuing DDL), with a fixed `search_path`. Creating an event
//! trigger takes a superuser. A transaction that ran DDL cannot then be prepared for
//! two-phase commit (it has sent a notification). Turning the listener off leaves
//! both in place: `DROP SCHEMA pgopt CASCADE;` removes
//! them.

use std::sync::Arc;

use bytes::BytesMut;
use pgopt_wire::split_frame;
use tokio::io::AsyncReadExt;

use crate::cache::ProxyCache;
use crate::server::{ServerConn, ServerTarget};
use crate::ProxyError;

/// The channel the event trigger notifies.
pub const CHANNEL: &str = "pgopt_ddl";

/// The schema, function and event trigger, made unless there; instances starting
/// together take turns (an advisory lock). Nothing is replaced when it is all in
/// place (a DDL command here would flush every other instance's cache), but a
/// function of another version (its comment) is. A DROP leaves nothing in
/// `pg_event_trigger_ddl_commands()`: a second trigger, on `sql_drop`, hears it
/// (unless all it dropped was temporary).
const SETUP: &str = "\
DO $d$ \
DECLARE owner oid; \
BEGIN \
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pgopt_ddl')); \
  SELECT nspowner INTO owner FROM pg_catalog.pg_namespace WHERE nspname = 'pgopt'; \
  IF owner IS NULL THEN \
    CREATE SCHEMA pgopt; \
  ELSIF owner <> (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN \
    RAISE EXCEPTION 'schema pgopt belongs to another role: pgopt keeps its event trigger function only in a schema of its own'; \
  END IF; \
  IF pg_catalog.obj_description(pg_catalog.to_regprocedure('pgopt.ddl_notify()'), 'pg_proc') \
      IS DISTINCT FROM 'pgopt ddl_notify 5' THEN \
    CREATE OR REPLACE FUNCTION pgopt.ddl_notify() RETURNS event_trigger LANGUAGE plpgsql \
      SET search_path = pg_catalog AS $f$ \
      DECLARE others boolean := EXISTS (SELECT 1 FROM pg_event_trigger \
        WHERE evtenabled <> 'D' AND evtname NOT IN ('pgopt_ddl', 'pgopt_ddl_drop')); \
      BEGIN \
        IF TG_EVENT = 'sql_drop' THEN \
          IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() \
              WHERE NOT is_temporary \
              AND (others OR object_type NOT IN ('index', 'statistics object'))) THEN \
            PERFORM pg_notify('pgopt_ddl', ''); \
          END IF; \
        ELSIF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() \
            WHERE (schema_name IS NULL OR schema_name NOT LIKE 'pg\\_temp%') \
            AND (others OR command_tag <> 'REINDEX' \
              AND object_type NOT IN ('index', 'statistics object'))) THEN \
          PERFORM pg_notify('pgopt_ddl', ''); \
        END IF; \
      END $f$; \
    COMMENT ON FUNCTION pgopt.ddl_notify() IS 'pgopt ddl_notify 5'; \
  END IF; \
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgopt_ddl') THEN \
    CREATE EVENT TRIGGER pgopt_ddl ON ddl_command_end EXECUTE FUNCTION pgopt.ddl_notify(); \
  END IF; \
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgopt_ddl_drop') THEN \
    CREATE EVENT TRIGGER pgopt_ddl_drop ON sql_drop EXECUTE FUNCTION pgopt.ddl_notify(); \
  END IF; \
  IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_event_trigger \
      WHERE evtname IN ('pgopt_ddl', 'pgopt_ddl_drop') \
      AND evtfoid = 'pgopt.ddl_notify()'::pg_catalog.regprocedure AND evtenabled <> 'D') <> 2 THEN \
    RAISE EXCEPTION 'event triggers pgopt_ddl and pgopt_ddl_drop are not the ones pgopt makes, or are disabled'; \
  END IF; \
END $d$";

/// The listening connection sits idle: no server-side idle timeout cuts it (a
/// PostgreSQL before 14 has none to turn off).
const STAY: &str = "\
DO $d$ BEGIN PERFORM pg_catalog.set_config('idle_session_timeout', '0', false); \
EXCEPTION WHEN undefined_object THEN NULL; END $d$";

/// Listens for `db`'s schema changes until the proxy stops; on failure it waits (1 s,
/// doubling up to 30 s) and starts again. Each change is also told to `changed` (the
/// functions that may set settings are read again).
pub async fn watch(
    cache: Arc<ProxyCache>,
    db: crate::config::Database,
    connect: crate::cache::ListenerConnect,
    mut lifecycle: tokio::sync::watch::Receiver<crate::shared::Lifecycle>,
    changed: impl Fn(),
) {
    let (user, password) = crate::cache::wal_login(&cache.settings, &db);
    let fence = crate::fence::key_of_database(&db);
    let mut target = ServerTarget {
        host: db.host.clone(),
        port: db.port,
        more_hosts: db.more_hosts.in_order(),
        dbname: db.dbname.clone(),
        user,
        password,
        md5_hash: None,
        tls: None,
    };
    let (connect_timeout, keepalive) = (connect.connect_timeout, connect.keepalive);
    let set_state = |state: &str| cache.counters.set_ddl_state(&db.name, state);
    let backoff = crate::cache::ListenerBackoff::new();
    loop {
        set_state("connecting");
        target.tls = (connect.tls)();
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
                .map_err(|e| failed("making the event trigger pgopt_ddl", e))?;
            conn.simple_query(STAY, max_len)
                .await
                .map_err(|e| failed("turning idle_session_timeout off", e))?;
            conn.simple_query(&format!("LISTEN {CHANNEL}"), max_len)
                .await
                .map_err(|e| failed("LISTEN", e))?;
            // Changes before now were not heard: everything is read again (here; every
            // instance has its own listener).
            cache.schema_changed_elsewhere(&fence, false);
            changed();
            set_state("listening");
            backoff.reset();
            notifications(&mut conn, max_len, || {
                cache.schema_changed_elsewhere(&fence, true);
                changed();
                cache
                    .counters
                    .ddl_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .await
        };
        let error = tokio::select! {
            result = run => match result {
                Ok(()) => "the connection ended".to_string(),
                Err(e) => e.to_string(),
            },
            () = crate::cache::until_stopped(&mut lifecycle) => return,
        };
        tracing::warn!(
            database = %db.name,
            %error,
            retry_in_ms = backoff.next_ms(),
            "the cache's schema change listener stopped; until it is back, schema changes that bypass pgopt reach the dependency map within 30 s and the entries they change live until their TTL"
        );
        set_state(&format!("down: {error}"));
        backoff.wait().await;
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
