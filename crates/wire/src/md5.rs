//! md5 password authentication: `"md5" + hex(md5(hex(md5(password + user)) + salt))`.
//!
//! PostgreSQL stores `"md5" + hex(md5(password + user))`; with that hash alone a
//! proxy can both check a client's response and answer a server's challenge.

use md5::{Digest, Md5};

use crate::constant_time::constant_time_eq;
use crate::error::AuthError;

/// Length of a stored md5 hash: `md5` and 32 hex digits.
const HASH_LEN: usize = 35;

fn md5_hex(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut hex = [0u8; 32];
    for (i, byte) in digest.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(byte >> 4)];
        hex[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn with_prefix(hex: [u8; 32]) -> String {
    let mut s = String::with_capacity(HASH_LEN);
    s.push_str("md5");
    s.extend(hex.iter().map(|&b| char::from(b)));
    s
}

/// The hash PostgreSQL stores for `password` with `password_encryption = md5`:
/// `"md5" + hex(md5(password + user))`.
pub fn hash_password(user: &str, password: &str) -> String {
    with_prefix(md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// True when `s` has the form of a stored md5 hash (`md5` + 32 lowercase hex digits).
pub fn is_md5_hash(s: &str) -> bool {
    s.len() == HASH_LEN && s.starts_with("md5") && s.bytes().skip(3).all(|b| HEX.contains(&b))
}

/// The PasswordMessage a client sends for an md5 challenge with `salt`.
pub fn client_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    let inner = md5_hex(&[password.as_bytes(), user.as_bytes()]);
    with_prefix(md5_hex(&[&inner, &salt]))
}

/// The response to an md5 challenge computed from a stored hash instead of the
/// password (how a pooler answers a server with the hash it holds).
pub fn response_from_hash(stored: &str, salt: [u8; 4]) -> Result<String, AuthError> {
    if !is_md5_hash(stored) {
        return Err(AuthError::InvalidSecret("not an md5 hash"));
    }
    Ok(with_prefix(md5_hex(&[&stored.as_bytes()[3..], &salt])))
}

/// Checks a client's md5 `response` to the challenge `salt` against the stored
/// hash, in constant time. `Err(WrongPassword)` when it does not match.
pub fn verify(stored: &str, salt: [u8; 4], response: &str) -> Result<(), AuthError> {
    let expected = response_from_hash(stored, salt)?;
    if constant_time_eq(expected.as_bytes(), response.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::WrongPassword)
    }
}

/// A random salt for an AuthenticationMD5Password challenge.
pub fn random_salt() -> Result<[u8; 4], AuthError> {
    let mut salt = [0u8; 4];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_known_values() {
        // md5("secretalice"), as `SELECT 'md5' || md5('secret' || 'alice')` gives.
        let stored = hash_password("alice", "secret");
        assert!(is_md5_hash(&stored));
        assert_eq!(stored, "md54a0a68b43b6cd5cf266fa02f196e2371");
    }

    #[test]
    fn client_and_server_agree() {
        let salt = [0x01, 0x02, 0x03, 0x04];
        let stored = hash_password("bob", "hunter2");
        let response = client_response("bob", "hunter2", salt);
        assert_eq!(response, "md52b402547e7beb0ed221f59c23c78c49a");
        assert_eq!(response, response_from_hash(&stored, salt).unwrap());
        assert_eq!(verify(&stored, salt, &response), Ok(()));
        let wrong = client_response("bob", "hunter3", salt);
        assert_eq!(verify(&stored, salt, &wrong), Err(AuthError::WrongPassword));
        assert_eq!(
            verify(&stored, [9, 9, 9, 9], &response),
            Err(AuthError::WrongPassword)
        );
        assert!(matches!(
            verify("md5zz", salt, &response),
            Err(AuthError::InvalidSecret(_))
        ));
    }
}
