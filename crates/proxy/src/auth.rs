//! Client authentication: trust, md5 and SCRAM-SHA-256 against the configured users.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use pgopt_wire::frontend::FrontendMessage;
use pgopt_wire::scram::{ScramKeys, ScramSecret, ScramServer};
use pgopt_wire::{md5, sqlstate, Authentication, List};

use crate::config::{ClientAuth, User};
use crate::io::{read_frame, send_fatal, write_all};
use crate::net::ClientStream;
use crate::ProxyError;

/// A user as the proxy checks it: what the config said, prepared once.
#[derive(Debug)]
pub struct Credentials {
    /// Plaintext, when configured so (also used to log in to the server).
    pub plaintext: Option<String>,
    /// `md5…` hash, for md5 clients.
    pub md5: Option<String>,
    /// SCRAM verifier, for SCRAM clients.
    pub scram: Option<ScramSecret>,
}

impl Credentials {
    /// What a stored password gives: a plaintext, an `md5…` hash or a
    /// `SCRAM-SHA-256$…` verifier (SCRAM verifiers are derived here, not per login).
    pub fn from_stored(user: &str, password: &str) -> Result<Credentials, ProxyError> {
        Ok(if password.starts_with("SCRAM-SHA-256$") {
            Credentials {
                plaintext: None,
                md5: None,
                scram: Some(ScramSecret::parse(password)?),
            }
        } else if md5::is_md5_hash(password) {
            Credentials {
                plaintext: None,
                md5: Some(password.to_string()),
                scram: None,
            }
        } else {
            Credentials {
                plaintext: Some(password.to_string()),
                md5: Some(md5::hash_password(user, password)),
                scram: Some(ScramSecret::from_password(password, 4096)?),
            }
        })
    }
}

/// Prepares every configured user. One with an empty password gets no credentials,
/// as PgBouncer refuses empty passwords: it logs in only by a method that needs none
/// (trust, peer, cert), or with the password `auth_query` finds for it.
pub fn prepare_users(users: &[User]) -> Result<HashMap<String, Credentials>, ProxyError> {
    let mut map = HashMap::new();
    for user in users.iter().filter(|u| !u.password.is_empty()) {
        map.insert(
            user.name.clone(),
            Credentials::from_stored(&user.name, &user.password)?,
        );
    }
    Ok(map)
}

/// Credentials looked up again when a login fails against kept ones (an `auth_query`
/// answer from the cache: the password may have changed on the server). Not polled
/// unless the login fails.
pub type Refresh<'a> = Pin<Box<dyn Future<Output = Option<Arc<Credentials>>> + Send + 'a>>;

/// What a login proved.
pub struct Authenticated {
    /// The user's SCRAM keys, when proved against a stored verifier (no plaintext).
    pub keys: Option<ScramKeys>,
    /// Credentials from `refresh` that the client's answer matched instead.
    pub refreshed: Option<Arc<Credentials>>,
}

/// How a client logs in: the method, whether its certificate must name the user
/// (`clientcert=verify-full`), the user name map that may stand in for the name, and
/// over TLS the channel binding data SCRAM may bind to (`tls-server-end-point`).
#[derive(Clone, Copy)]
pub struct Login<'a> {
    pub method: ClientAuth,
    pub named_by_certificate: bool,
    pub map: Option<(&'a crate::ident::IdentMap, &'a str)>,
    pub end_point: Option<&'a [u8]>,
}

/// Runs the exchange; on failure the client has been sent a FATAL error. A SCRAM
/// login against a stored verifier (no plaintext) yields the user's keys, with which
/// pgopt logs in to a server holding the same verifier.
///
/// When the answer does not match `creds` and `refresh` is given, it is run before
/// the client hears 28P01: an md5 answer is checked again against what it finds. A
/// SCRAM proof cannot be (it was made with the old verifier's salt), so that login
/// fails, and the next one meets the fresh verifier.
///
/// `login` says too whether the client's certificate must also name the user (an
/// hba rule's `clientcert=verify-full`): when it does not, the login fails as the
/// method's own failure would, as in PostgreSQL. A user name map (`map=NAME`) lets
/// other system users (peer) or certificate names in as the user.
pub async fn authenticate(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    login: Login<'_>,
    user: &str,
    creds: Option<&Credentials>,
    max_len: u32,
    refresh: Option<Refresh<'_>>,
) -> Result<Authenticated, ProxyError> {
    let Login {
        method,
        named_by_certificate,
        map,
        end_point,
    } = login;
    // A client that has not logged in yet holds no more than this per message.
    let max_len = max_len.min(AUTH_MESSAGE_LEN);
    // The name the system (peer) or the certificate (cert) gives the client stands for
    // `user`: with a map, only when a line of it pairs the two (as PostgreSQL: the same
    // name needs a line too); without one, when it is the same name.
    let names_user = |name: &[u8]| match map {
        Some((ident, map)) => ident.permits(map, name, user),
        None => name == user.as_bytes(),
    };
    let mut out = BytesMut::with_capacity(256);
    let mut refreshed = None;
    // As PostgreSQL: md5 for a user whose stored password is a SCRAM verifier is SCRAM,
    // and so for an unknown user (PostgreSQL's password_encryption default), so that
    // the challenge does not tell SCRAM users from names that do not exist.
    let method = match (method, creds) {
        (ClientAuth::Md5, Some(c)) if c.md5.is_none() && c.scram.is_some() => {
            ClientAuth::ScramSha256
        }
        (ClientAuth::Md5, None) => ClientAuth::ScramSha256,
        (method, _) => method,
    };
    let (ok, keys) = match method {
        ClientAuth::Trust => (true, None),
        ClientAuth::Peer => (
            peer_name(stream).await.is_some_and(|n| names_user(&n)),
            None,
        ),
        ClientAuth::Cert => (
            stream
                .peer_common_name()
                .is_some_and(|cn| names_user(cn.as_bytes())),
            None,
        ),
        ClientAuth::Md5 => {
            let answer = md5_exchange(stream, buf, &mut out, user, max_len).await?;
            let matches =
                |c: Option<&Credentials>| match (&answer, c.and_then(|c| c.md5.as_deref())) {
                    (Some((salt, response)), Some(stored)) => {
                        md5::verify(stored, *salt, response).is_ok()
                    }
                    _ => false,
                };
            let mut ok = matches(creds);
            if let (false, Some(_), Some(refresh)) = (ok, &answer, refresh) {
                if let Some(fresh) = refresh.await {
                    ok = matches(Some(&fresh));
                    refreshed = ok.then_some(fresh);
                }
            }
            (ok, None)
        }
        ClientAuth::ScramSha256 => {
            match scram_exchange(stream, buf, &mut out, user, creds, end_point, max_len).await? {
                Some(keys) => (true, Some(keys)),
                None => {
                    if let Some(refresh) = refresh {
                        // For the next login.
                        refresh.await;
                    }
                    (false, None)
                }
            }
        }
    };
    let ok = ok
        && {
            let named = !named_by_certificate
                || stream
                    .peer_common_name()
                    .is_some_and(|cn| names_user(cn.as_bytes()));
            if !named {
                tracing::info!(
                user,
                "certificate validation (clientcert=verify-full) failed: the common name is not the user's name"
            );
            }
            named
        };
    if !ok {
        let (code, message) = match method {
            ClientAuth::Peer => (
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("Peer authentication failed for user \"{user}\""),
            ),
            // As PostgreSQL: no certificate at all is told apart from one naming
            // someone else.
            ClientAuth::Cert if !stream.has_peer_certificate() => (
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "connection requires a valid client certificate".to_string(),
            ),
            ClientAuth::Cert => (
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("certificate authentication failed for user \"{user}\""),
            ),
            // Only with clientcert=verify-full and a certificate naming someone else.
            ClientAuth::Trust => (
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("\"trust\" authentication failed for user \"{user}\""),
            ),
            _ => (
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            ),
        };
        send_fatal(stream, code, &message).await;
        return Err(ProxyError::Protocol(message));
    }
    // (AuthenticationOk is the caller's to send, with what follows it: see
    // `AUTHENTICATION_OK`.)
    // Keys from a verifier pgopt made up from a plaintext would not fit the server's.
    Ok(Authenticated {
        keys: keys.filter(|_| creds.is_some_and(|c| c.plaintext.is_none())),
        refreshed,
    })
}

/// The name of the operating system user the client on a Unix-domain socket runs as
/// (its credentials from the kernel, its name from the user database); `None` over
/// TCP or when it has no name.
async fn peer_name(stream: &ClientStream) -> Option<Vec<u8>> {
    let ClientStream::Unix(unix) = stream else {
        return None;
    };
    let uid = unix.peer_cred().ok()?.uid();
    // The user database may be remote (NSS): off the event loop.
    match tokio::task::spawn_blocking(move || os_user_name(uid)).await {
        Ok(Ok(name)) => Some(name),
        Ok(Err(why)) => {
            tracing::debug!(uid, "peer authentication: {why}");
            None
        }
        Err(_) => None,
    }
}

/// The name (as bytes: it need not be UTF-8) of the operating system user `uid`.
fn os_user_name(uid: libc::uid_t) -> Result<Vec<u8>, String> {
    let mut size = 16 * 1024;
    loop {
        // SAFETY: a zeroed passwd is a valid out-parameter; getpwuid_r (unlike
        // getpwuid) is thread-safe and writes strings only into `buf`, which outlives
        // their use here.
        let mut record: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; size];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut record, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        if rc != 0 {
            return Err(format!(
                "looking up the user: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        if found.is_null() || record.pw_name.is_null() {
            return Err("no such user in the user database".into());
        }
        // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
        let name = unsafe { std::ffi::CStr::from_ptr(record.pw_name) };
        return Ok(name.to_bytes().to_vec());
    }
}

/// The salt sent and the client's answer; `None` when it sent none.
async fn md5_exchange(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    user: &str,
    max_len: u32,
) -> Result<Option<([u8; 4], String)>, ProxyError> {
    let salt = md5::random_salt()?;
    Authentication::Md5Password { salt }.encode(out)?;
    write_all(stream, out).await?;
    let frame = read_frame(stream, buf, max_len).await?;
    expect_response(stream, user, &frame, "password").await?;
    let response = match frame.frontend() {
        Ok(FrontendMessage::AuthResponse(r)) => r.password().map(|p| p.password.to_string()),
        _ => return Ok(None),
    };
    match response {
        Ok(response) => Ok(Some((salt, response))),
        Err(e) => refuse(stream, user, "invalid password packet size", &e).await,
    }
}

/// A client's answer in a password or SASL exchange is a PasswordMessage ('p'):
/// another message ends the login with PostgreSQL's 08P01 ("expected password
/// response, got message type 81"), not as a wrong password would.
async fn expect_response(
    stream: &mut ClientStream,
    user: &str,
    frame: &pgopt_wire::Frame,
    exchange: &str,
) -> Result<(), ProxyError> {
    if frame.tag() == b'p' {
        return Ok(());
    }
    let message = format!(
        "expected {exchange} response, got message type {}",
        frame.tag()
    );
    refuse(stream, user, &message, &message).await
}

/// Ends `user`'s login, whose client broke the exchange's protocol (08P01,
/// `message`); `why` is logged.
async fn refuse<T>(
    stream: &mut ClientStream,
    user: &str,
    message: &str,
    why: &(dyn std::fmt::Display + Sync),
) -> Result<T, ProxyError> {
    tracing::info!(user, "login refused: {why}");
    send_fatal(stream, sqlstate::PROTOCOL_VIOLATION, message).await;
    Err(ProxyError::Protocol(message.to_string()))
}

/// The longest password or SASL message a client may send, as PostgreSQL's
/// `PG_MAX_AUTH_TOKEN_LENGTH`: before it has logged in, a client must not make pgopt
/// buffer up to `max_message_len` (a GiB) for it.
const AUTH_MESSAGE_LEN: u32 = 65_535;

/// The key unknown users' mock salts are derived with: random, once per process.
fn mock_key() -> Result<&'static [u8], ProxyError> {
    static KEY: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    if let Some(key) = KEY.get() {
        return Ok(key);
    }
    let mut key = [0u8; 16];
    for chunk in key.chunks_mut(4) {
        chunk.copy_from_slice(&md5::random_salt()?);
    }
    Ok(KEY.get_or_init(|| key))
}

/// A SCRAM exchange that failed with `e`: a wrong password (or an unknown user) is
/// the caller's to report (28P01, `None`); a message out of SCRAM's grammar, a nonce
/// that does not continue the exchange's or a channel binding that does not check
/// out is told the client here, as PostgreSQL tells it (08P01), and the login ends.
async fn scram_refused(
    stream: &mut ClientStream,
    user: &str,
    e: pgopt_wire::AuthError,
) -> Result<Option<ScramKeys>, ProxyError> {
    use pgopt_wire::AuthError;
    // (The texts are PostgreSQL's: "SCRAM channel binding check failed", "malformed
    // SCRAM message: …" with its detail, and "invalid SCRAM response", whose DETAIL
    // "Nonce does not match." goes to the log only.)
    if matches!(e, AuthError::WrongPassword) {
        return Ok(None);
    }
    let message = match &e {
        AuthError::NonceMismatch => "invalid SCRAM response".to_string(),
        other => other.to_string(),
    };
    refuse(stream, user, &message, &e).await
}

async fn scram_exchange(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    user: &str,
    creds: Option<&Credentials>,
    end_point: Option<&[u8]>,
    max_len: u32,
) -> Result<Option<ScramKeys>, ProxyError> {
    // Unknown users run the whole exchange against a mock secret and fail at the end,
    // so a client cannot tell which user names exist: its salt is the same at every
    // try, as a real verifier's, and differs between names and between processes (one
    // salt for all unknown names would tell them apart from real ones).
    let secret = match creds.and_then(|c| c.scram.clone()) {
        Some(secret) => secret,
        None => ScramSecret::mock(user, mock_key()?)?,
    };
    let mut server = ScramServer::new(secret)?;
    if let Some(end_point) = end_point {
        server = server.with_channel_binding(end_point.to_vec());
    }
    Authentication::Sasl {
        mechanisms: List::from(server.mechanisms()),
    }
    .encode(out)?;
    write_all(stream, out).await?;

    let frame = read_frame(stream, buf, max_len).await?;
    expect_response(stream, user, &frame, "SASL").await?;
    let Ok(FrontendMessage::AuthResponse(r)) = frame.frontend() else {
        return Ok(None);
    };
    let Ok(initial) = r.sasl_initial() else {
        return Ok(None);
    };
    let data = initial.data.unwrap_or_default();
    let server_first = match server.handle_sasl_initial(initial.mechanism, data) {
        Ok(first) => first,
        Err(e) => return scram_refused(stream, user, e).await,
    };
    out.clear();
    Authentication::SaslContinue {
        data: server_first.as_bytes(),
    }
    .encode(out)?;
    write_all(stream, out).await?;

    let frame = read_frame(stream, buf, max_len).await?;
    expect_response(stream, user, &frame, "SASL").await?;
    let Ok(FrontendMessage::AuthResponse(r)) = frame.frontend() else {
        return Ok(None);
    };
    let server_final = match server.handle_client_final(r.sasl().data) {
        Ok(last) => last,
        Err(e) => return scram_refused(stream, user, e).await,
    };
    out.clear();
    Authentication::SaslFinal {
        data: server_final.as_bytes(),
    }
    .encode(out)?;
    write_all(stream, out).await?;
    // Keys exist only once the client's proof was accepted.
    Ok(server.client_keys())
}
