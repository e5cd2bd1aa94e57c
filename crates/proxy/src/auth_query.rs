//! `auth_query`: the password of a user the config does not list, looked up on the
//! server (as PgBouncer does) through a pooled connection of `auth_user`. The server
//! keeps a SCRAM verifier or an md5 hash, never the plaintext, and pgopt uses what it
//! finds both to check the client and to log in to the server for it (see
//! `auth.rs`, `server.rs`).

use std::sync::Arc;

use bytes::BytesMut;
use pgopt_wire::frontend::{Bind, Execute, FrontendMessage, Parse};
use pgopt_wire::{List, TransactionStatus};

use crate::auth::Credentials;
use crate::pool::{CheckoutError, Pool};
use crate::server::ServerConn;
use crate::shared::Shared;
use crate::ProxyError;

/// Why a lookup gave no answer (as opposed to "no such user").
pub enum LookupError {
    /// No connection of `auth_user`'s pool.
    Checkout(Arc<Pool>, CheckoutError),
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
    let pool = shared
        .pool_for(database, auth_user, None)
        .ok_or_else(|| LookupError::Failed(format!("database \"{database}\" is gone")))?;
    let mut checkout = match pool.checkout().await {
        Ok(c) => c,
        Err(e) => return Err(LookupError::Checkout(pool, e)),
    };
    let limits = pool.limits();
    let answer = tokio::time::timeout(
        limits.connect_timeout,
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
                limits.connect_timeout.as_millis()
            )))
        }
    };
    match stored {
        Some(stored) => Credentials::from_stored(user, &stored)
            .map(Some)
            .map_err(|e| LookupError::Failed(format!("the password found is unusable: {e}"))),
        None => Ok(None),
    }
}

/// One Parse/Bind/Execute/Sync round with `user` as `$1`: the first row's last
/// column (or the server's error), and the transaction status at the end.
async fn run(
    conn: &mut ServerConn,
    query: &str,
    user: &str,
    max_len: u32,
) -> Result<(Result<Option<String>, String>, TransactionStatus), String> {
    let mut out = BytesMut::with_capacity(256);
    let encode = |out: &mut BytesMut| -> Result<(), ProxyError> {
        Parse {
            name: "",
            query,
            param_types: List::from(&[]),
        }
        .encode(out)?;
        let params = [Some(user.as_bytes())];
        Bind {
            portal: "",
            statement: "",
            param_formats: List::from(&[]),
            params: List::from(&params),
            result_formats: List::from(&[]),
        }
        .encode(out)?;
        Execute {
            portal: "",
            max_rows: 0,
        }
        .encode(out)?;
        FrontendMessage::Sync.encode(out)?;
        Ok(())
    };
    encode(&mut out).map_err(|e| e.to_string())?;
    let result = conn.query(&out, max_len).await?;
    let outcome = match result.error {
        Some(e) => Err(e),
        // The first row's last column.
        None => Ok(result
            .rows
            .first()
            .and_then(|row| row.last().cloned().flatten())),
    };
    Ok((outcome, result.status))
}

/// PgBouncer's default `auth_query`.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1";
