//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it: the stored
//! verifier ([`ScramSecret`]), the server side ([`ScramServer`]) and the client
//! side ([`ScramClient`]). The server side binds to the TLS channel
//! (`SCRAM-SHA-256-PLUS` with `tls-server-end-point`) when given the hash of its
//! certificate; the client side does not bind (it sends `n,,`).
//!
//! # SASLprep
//! Passwords go through [`saslprep`], as PostgreSQL's `pg_saslprep` prepares them:
//! ASCII unchanged, anything else normalized by SASLprep (RFC 4013: non-ASCII spaces
//! to spaces, NFKC), and used as written when SASLprep refuses it (a prohibited
//! character).
//!
//! A typical server exchange (the proxy authenticating a client):
//!
//! ```
//! use pgopt_wire::scram::{ScramClient, ScramSecret, ScramServer};
//! let secret = ScramSecret::from_password("secret", 4096)?;
//! let mut server = ScramServer::new(secret)?;   // send AuthenticationSASL
//! let mut client = ScramClient::new("secret")?;
//! let server_first = server.handle_client_first(client.client_first().as_bytes())?;
//! let client_final = client.handle_server_first(server_first.as_bytes())?;
//! let server_final = server.handle_client_final(client_final.as_bytes())?;
//! client.verify_server_final(server_final.as_bytes())?; // then AuthenticationOk
//! # Ok::<(), pgopt_wire::AuthError>(())
//! ```

mod client;
mod secret;
mod server;

pub use client::ScramClient;
pub use secret::{ScramKeys, ScramSecret, DEFAULT_ITERATIONS};
pub use server::ScramServer;

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::error::AuthError;

/// Raw random bytes in a nonce (PostgreSQL's `SCRAM_RAW_NONCE_LEN`), base64-encoded on the wire.
const NONCE_LEN: usize = 18;

type HmacSha256 = Hmac<Sha256>;

/// Prepares a password for SCRAM as PostgreSQL does (see the module docs).
pub fn saslprep(password: &str) -> Cow<'_, [u8]> {
    if password.is_ascii() {
        return Cow::Borrowed(password.as_bytes());
    }
    match stringprep::saslprep(password) {
        Ok(Cow::Borrowed(prepared)) => Cow::Borrowed(prepared.as_bytes()),
        Ok(Cow::Owned(prepared)) => Cow::Owned(prepared.into_bytes()),
        Err(_) => Cow::Borrowed(password.as_bytes()),
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: longer ones are hashed, shorter ones padded.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = keyed(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `Hi(password, salt, i)` of RFC 5802: PBKDF2-HMAC-SHA-256 with one output block.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mac = keyed(password);
    let mut block = mac.clone();
    block.update(salt);
    block.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = block.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut block = mac.clone();
        block.update(&u);
        u = block.finalize().into_bytes().into();
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

fn b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

fn unb64(data: &str, what: &'static str) -> Result<Vec<u8>, AuthError> {
    STANDARD
        .decode(data)
        .map_err(|_| AuthError::MalformedMessage(what))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(out)
}

fn random_nonce() -> Result<String, AuthError> {
    Ok(b64(&random_bytes::<NONCE_LEN>()?))
}

/// A nonce is printable ASCII without `,` (RFC 5802 `printable`).
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Reads attribute `name` (`n=value`) at the start of `part`.
fn attr<'a>(part: Option<&'a str>, name: u8, what: &'static str) -> Result<&'a str, AuthError> {
    let part = part.ok_or(AuthError::MalformedMessage(what))?;
    match part.as_bytes() {
        [n, b'=', ..] if *n == name => Ok(&part[2..]),
        _ => Err(AuthError::MalformedMessage(what)),
    }
}

fn utf8<'a>(data: &'a [u8], what: &'static str) -> Result<&'a str, AuthError> {
    std::str::from_utf8(data).map_err(|_| AuthError::MalformedMessage(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_prepared_as_postgresql_prepares_them() {
        assert_eq!(&*saslprep("plain ascii"), b"plain ascii");
        // A combining accent composes (NFKC); a no-break space is a space.
        assert_eq!(&*saslprep("cafe\u{301}x"), "caf\u{e9}x".as_bytes());
        assert_eq!(&*saslprep("pass\u{a0}word"), b"pass word");
        // Prohibited (a control character beyond ASCII): used as written.
        assert_eq!(&*saslprep("a\u{80}b"), "a\u{80}b".as_bytes());
    }

    #[test]
    fn hi_matches_pbkdf2_test_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1.
        let out = salted_password(b"passwd", b"salt", 1);
        assert_eq!(
            out[..16],
            [
                0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f, 0xec, 0x16, 0x91, 0xc2, 0x25, 0x44,
                0xb6, 0x05
            ]
        );
    }

    #[test]
    fn nonces_are_printable_without_commas() {
        let nonce = random_nonce().unwrap();
        assert!(valid_nonce(&nonce), "{nonce}");
        assert_eq!(nonce.len(), 24);
        assert!(!valid_nonce("a,b"));
        assert!(!valid_nonce(""));
        assert!(!valid_nonce("é"));
    }

    #[test]
    fn attributes_need_their_name() {
        assert_eq!(attr(Some("r=abc"), b'r', "nonce"), Ok("abc"));
        assert!(attr(Some("s=abc"), b'r', "nonce").is_err());
        assert!(attr(Some("r"), b'r', "nonce").is_err());
        assert!(attr(None, b'r', "nonce").is_err());
    }
}
