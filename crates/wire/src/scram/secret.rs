//! The stored SCRAM-SHA-256 verifier, in PostgreSQL's
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` form.

use std::fmt;
use std::str::FromStr;

use super::{b64, hmac, random_bytes, salted_password, saslprep, sha256};
use crate::error::AuthError;

/// Iterations PostgreSQL uses by default (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length PostgreSQL uses (`SCRAM_DEFAULT_SALT_LEN`).
const SALT_LEN: usize = 16;

const PREFIX: &str = "SCRAM-SHA-256$";

/// The keys a SCRAM verifier is made of, plus the salt and iteration count.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
    mock: bool,
}

/// The two keys a client needs to authenticate without the password: the
/// `ClientKey` a [`super::ScramServer`] recovers from a client's proof, and the
/// `ServerKey` from the verifier. With them a pooler logs in to a server that
/// holds the same verifier ([`super::ScramClient::with_keys`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// `HMAC(SaltedPassword, "Client Key")`.
    pub client_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl ScramKeys {
    /// The keys `password` gives with `salt` and `iterations`: PBKDF2, slow by design.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        ScramKeys::from_salted(&salted_password(&saslprep(password), salt, iterations))
    }

    pub(super) fn from_salted(salted: &[u8; 32]) -> ScramKeys {
        ScramKeys {
            client_key: hmac(salted, &[b"Client Key"]),
            server_key: hmac(salted, &[b"Server Key"]),
        }
    }
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramKeys { .. }")
    }
}

impl ScramSecret {
    /// Builds a verifier from a password with a random salt, like PostgreSQL's
    /// `pg_be_scram_build_secret` (use [`DEFAULT_ITERATIONS`]).
    pub fn from_password(password: &str, iterations: u32) -> Result<ScramSecret, AuthError> {
        let salt = random_bytes::<SALT_LEN>()?;
        ScramSecret::from_password_with_salt(password, &salt, iterations)
    }

    /// Builds a verifier from a password, salt and iteration count (at least 1).
    pub fn from_password_with_salt(
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<ScramSecret, AuthError> {
        if iterations == 0 {
            return Err(AuthError::InvalidSecret("iteration count must be positive"));
        }
        let keys = ScramKeys::derive(password, salt, iterations);
        Ok(ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&keys.client_key),
            server_key: keys.server_key,
            mock: false,
        })
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<ScramSecret, AuthError> {
        let rest = s.strip_prefix(PREFIX).ok_or(AuthError::InvalidSecret(
            "does not start with SCRAM-SHA-256$",
        ))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(AuthError::InvalidSecret("missing $ before the keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(AuthError::InvalidSecret(
            "missing : between iterations and salt",
        ))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(AuthError::InvalidSecret("missing : between the keys"))?;
        let iterations: u32 =
            iterations
                .parse()
                .ok()
                .filter(|&i| i > 0)
                .ok_or(AuthError::InvalidSecret(
                    "iteration count is not a positive integer",
                ))?;
        let salt = super::unb64(salt, "salt")
            .map_err(|_| AuthError::InvalidSecret("salt is not base64"))?;
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key: key(stored_key, "StoredKey is not 32 bytes of base64")?,
            server_key: key(server_key, "ServerKey is not 32 bytes of base64")?,
            mock: false,
        })
    }

    /// A verifier for a user that does not exist, so that the exchange runs to
    /// its end and fails like a wrong password, without telling the client
    /// whether the user exists (PostgreSQL's "doomed" authentication). The salt
    /// is derived from `user` and the server-wide `nonce_key`, so the same user
    /// always sees the same salt.
    pub fn mock(user: &str, nonce_key: &[u8]) -> Result<ScramSecret, AuthError> {
        let digest = sha256(&[user.as_bytes(), nonce_key].concat());
        Ok(ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..SALT_LEN].to_vec(),
            stored_key: random_bytes()?,
            server_key: random_bytes()?,
            mock: true,
        })
    }

    /// PBKDF2 iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// `H(ClientKey)`.
    pub fn stored_key(&self) -> &[u8; 32] {
        &self.stored_key
    }

    /// `HMAC(SaltedPassword, "Server Key")`.
    pub fn server_key(&self) -> &[u8; 32] {
        &self.server_key
    }

    /// True for a verifier made by [`ScramSecret::mock`]: no proof matches it.
    pub fn is_mock(&self) -> bool {
        self.mock
    }
}

fn key(s: &str, what: &'static str) -> Result<[u8; 32], AuthError> {
    super::unb64(s, what)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        .ok_or(AuthError::InvalidSecret(what))
}

impl FromStr for ScramSecret {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, AuthError> {
        ScramSecret::parse(s)
    }
}

/// Formats the verifier as PostgreSQL stores it in `pg_authid.rolpassword`.
impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            b64(&self.salt),
            b64(&self.stored_key),
            b64(&self.server_key)
        )
    }
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt", &b64(&self.salt))
            .field("mock", &self.mock)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_the_postgres_form() {
        let secret =
            ScramSecret::from_password_with_salt("pencil", b"0123456789abcdef", 4096).unwrap();
        let text = secret.to_string();
        assert!(
            text.starts_with("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"),
            "{text}"
        );
        assert_eq!(text.parse::<ScramSecret>().unwrap(), secret);
        assert!(!format!("{secret:?}").contains(&b64(secret.stored_key())));
    }

    #[test]
    fn random_salts_differ() {
        let a = ScramSecret::from_password("x", 1).unwrap();
        let b = ScramSecret::from_password("x", 1).unwrap();
        assert_ne!(a.salt(), b.salt());
        assert_eq!(a.salt().len(), 16);
    }

    #[test]
    fn rejects_malformed_verifiers() {
        let good = ScramSecret::from_password_with_salt("p", b"salt", 10)
            .unwrap()
            .to_string();
        assert!(ScramSecret::parse(&good).is_ok());
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:c2FsdA==",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!$AAAA:AAAA",
        ] {
            assert!(
                matches!(ScramSecret::parse(bad), Err(AuthError::InvalidSecret(_))),
                "{bad}"
            );
        }
        assert!(ScramSecret::parse(&good.replace(":", ";")).is_err());
    }

    #[test]
    fn mock_secrets_keep_their_salt_per_user() {
        let a = ScramSecret::mock("ghost", b"k").unwrap();
        let b = ScramSecret::mock("ghost", b"k").unwrap();
        let c = ScramSecret::mock("other", b"k").unwrap();
        assert_eq!(a.salt(), b.salt());
        assert_ne!(a.salt(), c.salt());
        assert!(a.is_mock());
    }
}
