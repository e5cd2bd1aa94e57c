//! `auth_query`: the password of a user the config does not list, looked up on the
//! server (as PgBouncer does) through a pooled connection of `auth_user`. The server
//! keeps a SCRAM verifier or an md5 hash, never the plaintext, and pgopt uses what it
//! finds both to check the client and to log in to the server for it (see
//! `auth.rs`, `server.rs`).
//!
//! Answers are kept per (database, user) for `auth_query_cache_ttl` ([`LookupCache`]),
//! so a storm of logins costs one round trip, not one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgopt_wire::frontend::{Bind, Execute, FrontendMessage, Parse};
use pgopt_wire::{List, TransactionStatus};

use crate::auth::Credentials;
use crate::pool::{CheckoutError, Pool};
use crate::server::ServerConn;
use crate::shared::Shared;
use crate::ProxyError;

/// Why a lookup gave no answer (as opposed to "no such user").
#[derive(Debug, Clone)]
pub enum LookupError {
    /// No connection of `auth_user`'s pool: the SQLSTATE and message a client gets
    /// (see `session::checkout_error`; counted in the pool's errors once).
    Checkout(&'static str, String),
    /// The database is gone, or the query failed or timed out.
    Failed(String),
}

/// The stored password of `user` in `database`, by `auth_query` run as `auth_user`;
/// `Ok(None)` when the query finds no row or a NULL password.
pub async fn lookup(
    shared: &Shared,
    database: &str,
    auth_user: &str,
    query: &str,
    user: &str,
) -> Result<Option<Credentials>, LookupError> {
    let mut retried = false;
    let (pool, mut checkout) = loop {
        let pool = shared
            .pool_for(database, auth_user, None)
            .ok_or_else(|| LookupError::Failed(format!("database \"{database}\" is gone")))?;
        match pool.checkout().await {
            Ok(c) => break (pool, c),
            // A RELOAD retired the pool meanwhile: once more, on the one it made.
            Err(CheckoutError::Retired) if !retried => retried = true,
            Err(e) => return Err(checkout_failed(&pool, e)),
        }
    };
    let limits = pool.limits();
    let answer = tokio::time::timeout(
        limits.round_trip(),
        run(&mut checkout.conn, query, user, limits.max_message_len),
    )
    .await;
    let stored = match answer {
        Ok(Ok((outcome, status))) => {
            // Not idle: the connection is closed when the checkout drops.
            if status == TransactionStatus::Idle {
                checkout.release();
            }
            outcome.map_err(LookupError::Failed)?
        }
        Ok(Err(e)) => return Err(LookupError::Failed(e)),
        Err(_) => {
            return Err(LookupError::Failed(format!(
                "no answer within {} ms",
                limits.round_trip().as_millis()
            )))
        }
    };
    match stored.filter(|s| !s.is_empty()) {
        Some(stored) => Credentials::from_stored(user, &stored)
            .map(Some)
            .map_err(|e| LookupError::Failed(format!("the password found is unusable: {e}"))),
        None => Ok(None),
    }
}

fn checkout_failed(pool: &Pool, error: CheckoutError) -> LookupError {
    let (code, message) = crate::session::checkout_error(pool, error);
    pool.stats.record_error(code.as_bytes());
    LookupError::Checkout(code, message)
}

/// Run before the lookup, in a transaction block of its own: the search path and the
/// role the connection had at login (its role's and database's defaults: `ALTER ROLE
/// auth_user SET role = …` stays), whatever a client of `auth_user`'s pool left set
/// on it (in transaction mode its settings stay on the connection). A `SET
/// search_path` naming a schema with a `pg_shadow` of its own, or a `SET ROLE`, must
/// not choose whose password a login is checked against. (`SET LOCAL`: undone when
/// the block ends; in a block, so that the server logs no warning.)
const BEFORE_LOOKUP: [&str; 3] = [
    "BEGIN",
    "SET LOCAL search_path TO DEFAULT",
    "SET LOCAL role TO DEFAULT",
];

/// Ends the lookup's block: what the query did (an audit row of a lookup function)
/// stays, as when it ran on its own.
const AFTER_LOOKUP: &str = "COMMIT";

/// [`BEFORE_LOOKUP`], the query with `user` as `$1`, [`AFTER_LOOKUP`], each a
/// Parse/Bind/Execute round, and a Sync: the query's first row's last column (or the
/// server's error), and the transaction status at the end (after an error, the block
/// is rolled back first).
async fn run(
    conn: &mut ServerConn,
    query: &str,
    user: &str,
    max_len: u32,
) -> Result<(Result<Option<String>, String>, TransactionStatus), String> {
    let mut out = BytesMut::with_capacity(256);
    let encode = |out: &mut BytesMut| -> Result<(), ProxyError> {
        let params = [Some(user.as_bytes())];
        let statements = BEFORE_LOOKUP
            .iter()
            .map(|sql| (*sql, &params[..0]))
            .chain([(query, &params[..]), (AFTER_LOOKUP, &params[..0])]);
        for (sql, params) in statements {
            Parse {
                name: "",
                query: sql,
                param_types: List::from(&[]),
            }
            .encode(out)?;
            Bind {
                portal: "",
                statement: "",
                param_formats: List::from(&[]),
                params: List::from(params),
                result_formats: List::from(&[]),
            }
            .encode(out)?;
            if !params.is_empty() {
                // Its RowDescription (or NoData) starts the rows read.
                pgopt_wire::frontend::Describe {
                    target: pgopt_wire::Target::Portal,
                    name: "",
                }
                .encode(out)?;
            }
            Execute {
                portal: "",
                max_rows: 0,
            }
            .encode(out)?;
        }
        FrontendMessage::Sync.encode(out)?;
        Ok(())
    };
    encode(&mut out).map_err(|e| e.to_string())?;
    let mut result = conn.query(&out, max_len).await?;
    let outcome = match result.error.take() {
        Some(e) => Err(e),
        // The first row's last column.
        None => Ok(result
            .rows
            .first()
            .and_then(|row| row.last().cloned().flatten())),
    };
    if result.status == TransactionStatus::Failed {
        // The error left the block aborted: ended, so the connection goes back.
        out.clear();
        FrontendMessage::Query(pgopt_wire::frontend::Query { sql: "ROLLBACK" })
            .encode(&mut out)
            .map_err(|e| e.to_string())?;
        result = conn.query(&out, max_len).await?;
    }
    Ok((outcome, result.status))
}

/// Answers kept at most, over all databases and users.
pub const MAX_CACHED: usize = 10_000;

/// How long a "no such user" answer is kept at most (shorter when the TTL is).
pub const NOT_FOUND_TTL: Duration = Duration::from_secs(5);

/// `auth_query`'s answers per (database, user), each until its TTL: a user found is
/// kept `auth_query_cache_ttl`, "no such user" [`NOT_FOUND_TTL`] at most. A slot per
/// key is locked while its lookup runs, so concurrent logins of one user wait for one
/// lookup — and share its failure, rather than each trying again in turn. RELOAD
/// clears it; an answer counts only for the `auth_user` and `auth_query` that found it
/// (a login that began before a RELOAD may store one after it); failed lookups are not
/// kept for later logins.
#[derive(Default)]
pub struct LookupCache {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

type Slot = Arc<tokio::sync::Mutex<SlotState>>;

#[derive(Default)]
struct SlotState {
    answer: Option<Cached>,
    /// The last lookup that failed, when, and with what `auth_user` and query:
    /// logins that were waiting for it get its error.
    failure: Option<(Instant, (String, String), LookupError)>,
}

struct Cached {
    found: Option<Arc<Credentials>>,
    until: Instant,
    /// What found it: `auth_user` and `auth_query`.
    asked: (String, String),
}

/// What [`lookup_cached`] found, and whether it came from the cache (then a login
/// that fails against it may look again: the password may have changed).
pub struct Found {
    pub credentials: Option<Arc<Credentials>>,
    pub cached: bool,
}

impl LookupCache {
    fn slot(&self, database: &str, user: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let key = (database.to_string(), user.to_string());
        if let Some(slot) = slots.get(&key) {
            return slot.clone();
        }
        if slots.len() >= MAX_CACHED {
            // Expired answers first; a slot being looked up is kept.
            let now = Instant::now();
            slots.retain(|_, s| {
                s.try_lock()
                    .map_or(true, |s| s.answer.as_ref().is_some_and(|c| c.until > now))
            });
            while slots.len() >= MAX_CACHED {
                let Some(victim) = slots.keys().next().cloned() else {
                    break;
                };
                slots.remove(&victim);
            }
        }
        slots.entry(key).or_default().clone()
    }

    /// Forgets every answer (RELOAD).
    pub fn clear(&self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// [`lookup`] through `cache`: a kept answer younger than its TTL is used (`ttl` zero:
/// never). With `stale`, the credentials a login just failed against, the user is
/// looked up again unless another login already replaced that answer.
#[allow(clippy::too_many_arguments)]
pub async fn lookup_cached(
    shared: &Shared,
    cache: &LookupCache,
    ttl: Duration,
    database: &str,
    auth_user: &str,
    query: &str,
    user: &str,
    stale: Option<Arc<Credentials>>,
) -> Result<Found, LookupError> {
    let fetch = || async {
        Ok::<_, LookupError>(
            lookup(shared, database, auth_user, query, user)
                .await?
                .map(Arc::new),
        )
    };
    if ttl.is_zero() {
        return Ok(Found {
            credentials: fetch().await?,
            cached: false,
        });
    }
    let asked = Instant::now();
    let slot = cache.slot(database, user);
    let mut kept = slot.lock().await;
    if let Some(c) = kept
        .answer
        .as_ref()
        .filter(|c| c.until > Instant::now() && c.asked.0 == auth_user && c.asked.1 == query)
    {
        let replaced = match (&stale, &c.found) {
            (None, _) => true,
            (Some(s), Some(f)) => !Arc::ptr_eq(s, f),
            (Some(_), None) => true,
        };
        if replaced {
            return Ok(Found {
                credentials: c.found.clone(),
                cached: true,
            });
        }
    }
    // The lookup this login waited for failed (with the same query): so does this
    // one. (A kept answer, above, still serves: a failed refresh fails no other login.)
    let asking = (auth_user.to_string(), query.to_string());
    if let Some((_, _, error)) = kept
        .failure
        .as_ref()
        .filter(|(at, by, _)| *at >= asked && *by == asking)
    {
        return Err(error.clone());
    }
    let found = match fetch().await {
        Ok(found) => found,
        Err(e) => {
            kept.failure = Some((Instant::now(), asking, e.clone()));
            return Err(e);
        }
    };
    let ttl = if found.is_some() {
        ttl
    } else {
        ttl.min(NOT_FOUND_TTL)
    };
    kept.answer = Some(Cached {
        found: found.clone(),
        until: Instant::now() + ttl,
        asked: asking,
    });
    Ok(Found {
        credentials: found,
        cached: false,
    })
}

/// The default `auth_query`: PgBouncer's, with its later versions' refusal of an
/// expired password (`VALID UNTIL` past: no password, as PostgreSQL refuses it).
/// `pg_shadow` lists only roles that may log in.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, CASE WHEN valuntil < now() THEN NULL ELSE passwd END FROM pg_shadow WHERE usename = $1";

#[cfg(test)]
mod tests {
    use super::*;

    fn held(cache: &LookupCache) -> usize {
        cache.slots.lock().unwrap().len()
    }

    #[tokio::test]
    async fn the_cache_never_holds_more_than_its_bound() {
        let cache = LookupCache::default();
        let fresh = || Cached {
            found: None,
            until: Instant::now() + Duration::from_secs(60),
            asked: (String::new(), String::new()),
        };
        for i in 0..MAX_CACHED + 10 {
            cache.slot("db", &format!("user{i}")).lock().await.answer = Some(fresh());
        }
        assert_eq!(held(&cache), MAX_CACHED);
        // The newest is kept.
        let newest = format!("user{}", MAX_CACHED + 9);
        assert!(cache.slot("db", &newest).lock().await.answer.is_some());
        cache.clear();
        assert_eq!(held(&cache), 0);
    }
}
