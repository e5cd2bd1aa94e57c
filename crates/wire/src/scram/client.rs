//! The client side of SCRAM-SHA-256 (and SCRAM-SHA-256-PLUS over TLS): how the
//! proxy logs in to a server.

use std::fmt;

use super::{
    attr, b64, hmac, random_nonce, salted_password, saslprep, sha256, unb64, utf8, valid_nonce,
    xor, ScramKeys,
};
use crate::constant_time::constant_time_eq;
use crate::error::AuthError;

/// The `s=` and `i=` attributes that follow server-first's nonce.
fn salt_and_iterations<'a>(
    parts: &mut impl Iterator<Item = &'a str>,
) -> Result<(Vec<u8>, u32), AuthError> {
    let salt = unb64(
        attr(parts.next(), b's', "server-first has no salt")?,
        "salt is not base64",
    )?;
    let iterations: u32 = attr(parts.next(), b'i', "server-first has no iteration count")?
        .parse()
        .ok()
        .filter(|&i| i > 0)
        .ok_or(AuthError::MalformedMessage(
            "iteration count is not a positive integer",
        ))?;
    if iterations > MAX_ITERATIONS {
        return Err(AuthError::MalformedMessage(
            "iteration count is above 10,000,000",
        ));
    }
    Ok((salt, iterations))
}

/// The most PBKDF2 iterations a server may ask for: far above any real verifier's
/// (PostgreSQL's default is 4,096), and seconds of CPU already. A server (or someone
/// answering in its place) can't make the client spend minutes on one login.
const MAX_ITERATIONS: u32 = 10_000_000;

/// The gs2 header without channel binding, and no authzid.
const GS2_HEADER: &str = "n,,";

/// How the exchange treats channel binding, chosen by [`ScramClient::binding`] from
/// what the server offered, as libpq chooses it.
enum Binding {
    /// `n,,`: no TLS, or no hash of the server's certificate to bind to.
    None,
    /// `y,,`: this side could bind but the server offered no `-PLUS`; a server that
    /// does offer it refuses this (someone in the middle struck it from the list).
    Unoffered,
    /// `p=tls-server-end-point,,` and the hash of the server's certificate.
    EndPoint(Vec<u8>),
}

/// One SCRAM-SHA-256 exchange on the client side.
///
/// Send [`ScramClient::client_first`] in a SASLInitialResponse for
/// `SCRAM-SHA-256`; pass AuthenticationSASLContinue's data to
/// [`ScramClient::handle_server_first`] and send its answer as a SASLResponse;
/// pass AuthenticationSASLFinal's data to [`ScramClient::verify_server_final`].
pub struct ScramClient {
    credentials: Credentials,
    client_first_bare: String,
    client_nonce: String,
    state: State,
    binding: Binding,
}

enum Credentials {
    Password(Vec<u8>),
    Keys(ScramKeys),
}

enum State {
    Initial,
    SentClientFinal { server_signature: [u8; 32] },
    Done,
    Failed,
}

impl ScramClient {
    /// An exchange with `password` and a random nonce. The user name sent is
    /// empty, as libpq does: the server takes the user from the startup packet.
    pub fn new(password: &str) -> Result<ScramClient, AuthError> {
        Ok(ScramClient::with_nonce("", password, &random_nonce()?))
    }

    /// An exchange that proves knowledge of the password with `ClientKey` and
    /// checks the server with `ServerKey`, without the password (see [`ScramKeys`]).
    pub fn with_keys(keys: ScramKeys) -> Result<ScramClient, AuthError> {
        let mut client = ScramClient::with_nonce("", "", &random_nonce()?);
        client.credentials = Credentials::Keys(keys);
        Ok(client)
    }

    /// An exchange with a chosen user name and nonce, for tests and test
    /// vectors. Never reuse a nonce in production: use [`ScramClient::new`].
    pub fn with_nonce(user: &str, password: &str, nonce: &str) -> ScramClient {
        let user = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            credentials: Credentials::Password(saslprep(password).into_owned()),
            client_first_bare: format!("n={user},r={nonce}"),
            client_nonce: nonce.to_owned(),
            state: State::Initial,
            binding: Binding::None,
        }
    }

    /// Over TLS, with the `tls-server-end-point` data of the server's certificate
    /// (RFC 5929; `None` when its signature names no hash): binds the exchange to
    /// the channel when the server offered `SCRAM-SHA-256-PLUS`, as libpq's
    /// `channel_binding=prefer` does, and otherwise says it could have (`y`).
    /// Returns the mechanism to name in the SASLInitialResponse.
    pub fn binding(&mut self, offered: &[&str], end_point: Option<Vec<u8>>) -> &'static str {
        use crate::authentication::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
        match end_point {
            Some(end_point) if offered.contains(&SCRAM_SHA_256_PLUS) => {
                self.binding = Binding::EndPoint(end_point);
                SCRAM_SHA_256_PLUS
            }
            Some(_) => {
                self.binding = Binding::Unoffered;
                SCRAM_SHA_256
            }
            None => {
                self.binding = Binding::None;
                SCRAM_SHA_256
            }
        }
    }

    fn gs2_header(&self) -> &'static str {
        match self.binding {
            Binding::None => GS2_HEADER,
            Binding::Unoffered => "y,,",
            Binding::EndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// Authenticating with a password: the salt and iteration count that
    /// server-first asks for, so the keys can be derived elsewhere (PBKDF2 is slow
    /// by design: off an event loop, once per salt) and handed over with
    /// [`ScramClient::use_keys`]. `None` when the exchange already has its keys.
    pub fn key_params(&self, data: &[u8]) -> Result<Option<(Vec<u8>, u32)>, AuthError> {
        if matches!(self.credentials, Credentials::Keys(_)) {
            return Ok(None);
        }
        let server_first = utf8(data, "server-first is not UTF-8")?;
        let mut parts = server_first.split(',');
        // (Checked before the slow derivation, as the next step checks it again.)
        let nonce = attr(parts.next(), b'r', "server-first has no nonce")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(AuthError::NonceMismatch);
        }
        salt_and_iterations(&mut parts).map(Some)
    }

    /// Goes on with `keys` (derived from this exchange's password with
    /// [`ScramKeys::derive`]) instead of the password.
    pub fn use_keys(&mut self, keys: ScramKeys) {
        self.credentials = Credentials::Keys(keys);
    }

    /// client-first, the data of the SASLInitialResponse.
    pub fn client_first(&self) -> String {
        format!("{}{}", self.gs2_header(), self.client_first_bare)
    }

    /// Reads server-first (`r=nonce,s=salt,i=iterations`) and returns
    /// client-final with the proof. Runs PBKDF2 with the server's iteration
    /// count when authenticating with a password.
    pub fn handle_server_first(&mut self, data: &[u8]) -> Result<String, AuthError> {
        if !matches!(self.state, State::Initial) {
            return Err(AuthError::OutOfOrder("server-first after the first step"));
        }
        self.state = State::Failed;
        let server_first = utf8(data, "server-first is not UTF-8")?;
        let mut parts = server_first.split(',');
        let first = parts.next();
        if first.is_some_and(|p| p.starts_with("m=")) {
            return Err(AuthError::MalformedMessage(
                "server-first has a mandatory extension",
            ));
        }
        let nonce = attr(first, b'r', "server-first has no nonce")?;
        if !valid_nonce(nonce)
            || !nonce.starts_with(&self.client_nonce)
            || nonce.len() == self.client_nonce.len()
        {
            return Err(AuthError::NonceMismatch);
        }
        let (salt, iterations) = salt_and_iterations(&mut parts)?;

        let (client_key, server_key) = match &self.credentials {
            Credentials::Password(password) => {
                let keys = ScramKeys::from_salted(&salted_password(password, &salt, iterations));
                (keys.client_key, keys.server_key)
            }
            Credentials::Keys(keys) => (keys.client_key, keys.server_key),
        };
        let mut binding = self.gs2_header().as_bytes().to_vec();
        if let Binding::EndPoint(end_point) = &self.binding {
            binding.extend_from_slice(end_point);
        }
        let without_proof = format!("c={},r={nonce}", b64(&binding));
        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac(&sha256(&client_key), &auth_message);
        let proof = xor(&client_key, &client_signature);
        self.state = State::SentClientFinal {
            server_signature: hmac(&server_key, &auth_message),
        };
        Ok(format!("{without_proof},p={}", b64(&proof)))
    }

    /// Checks server-final (`v=signature`): the server knew the verifier.
    pub fn verify_server_final(&mut self, data: &[u8]) -> Result<(), AuthError> {
        let State::SentClientFinal { server_signature } =
            std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(AuthError::OutOfOrder("server-final before server-first"));
        };
        let text = utf8(data, "server-final is not UTF-8")?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(AuthError::ServerError(error.to_owned()));
        }
        let first = text.split(',').next();
        let signature = unb64(
            attr(first, b'v', "server-final has no verifier")?,
            "server signature is not base64",
        )?;
        if !constant_time_eq(&signature, &server_signature) {
            return Err(AuthError::ServerSignatureMismatch);
        }
        self.state = State::Done;
        Ok(())
    }

    /// True once the server's signature was verified.
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Whether the exchange binds to the channel (SCRAM-SHA-256-PLUS, see
    /// [`ScramClient::binding`]).
    pub fn is_bound(&self) -> bool {
        matches!(self.binding, Binding::EndPoint(_))
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "initial",
            State::SentClientFinal { .. } => "sent client-final",
            State::Done => "complete",
            State::Failed => "failed",
        };
        f.debug_struct("ScramClient")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scram::{ScramKeys, ScramSecret, ScramServer};

    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

    #[test]
    fn follows_the_rfc7677_example() {
        let mut client = ScramClient::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let client_final = client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(client.is_complete());
    }

    /// With our server: bound when both sides have the same certificate hash, refused
    /// when they differ (someone in the middle), and `y` refused by a server that
    /// offered binding.
    #[test]
    fn binds_to_the_channel_with_our_server() {
        use crate::authentication::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
        let secret = ScramSecret::from_password("pw", 4096).unwrap();
        let exchange = |server_end: Option<&[u8]>, client_end: Option<&[u8]>| {
            let mut server = ScramServer::new(secret.clone()).unwrap();
            if let Some(end) = server_end {
                server = server.with_channel_binding(end.to_vec());
            }
            let mut client = ScramClient::new("pw").unwrap();
            let mechanism = client.binding(server.mechanisms(), client_end.map(<[u8]>::to_vec));
            let first = server.handle_sasl_initial(mechanism, client.client_first().as_bytes())?;
            let last = client.handle_server_first(first.as_bytes())?;
            let last = server.handle_client_final(last.as_bytes())?;
            client.verify_server_final(last.as_bytes())?;
            Ok::<_, AuthError>((mechanism, client.client_first()))
        };
        let (mechanism, first) = exchange(Some(b"cert"), Some(b"cert")).unwrap();
        assert_eq!(mechanism, SCRAM_SHA_256_PLUS);
        assert!(first.starts_with("p=tls-server-end-point,,"), "{first}");
        assert_eq!(
            exchange(Some(b"cert"), Some(b"the middle's cert")),
            Err(AuthError::ChannelBindingMismatch)
        );
        // No hash here: no binding, and the server that offered it takes that.
        let (mechanism, first) = exchange(Some(b"cert"), None).unwrap();
        assert_eq!((mechanism, &first[..3]), (SCRAM_SHA_256, "n,,"));
        // A server offering none (no TLS on its side, or an old one) takes `y`.
        let (mechanism, first) = exchange(None, Some(b"cert")).unwrap();
        assert_eq!((mechanism, &first[..3]), (SCRAM_SHA_256, "y,,"));
        // `y` where the server did offer binding: refused.
        let mut server = ScramServer::new(secret.clone())
            .unwrap()
            .with_channel_binding(b"cert".to_vec());
        let mut client = ScramClient::new("pw").unwrap();
        let mechanism = client.binding(&[SCRAM_SHA_256], Some(b"cert".to_vec()));
        assert!(server
            .handle_sasl_initial(mechanism, client.client_first().as_bytes())
            .is_err());
    }

    #[test]
    fn keys_derived_elsewhere_give_the_rfc7677_proof() {
        let mut client = ScramClient::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        let (salt, iterations) = client
            .key_params(SERVER_FIRST.as_bytes())
            .unwrap()
            .expect("a password exchange needs its keys");
        assert_eq!(iterations, 4096);
        client.use_keys(ScramKeys::derive("pencil", &salt, iterations));
        // With its keys it needs no more.
        assert_eq!(client.key_params(SERVER_FIRST.as_bytes()), Ok(None));
        let client_final = client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert!(client_final.ends_with("p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="));
        client
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        // A server-first without a salt is refused before any key is derived.
        let fresh = ScramClient::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert!(fresh.key_params(b"r=rOprNGfwEbeRWgbNEkqOx,i=4096").is_err());
    }

    #[test]
    fn detects_a_server_that_does_not_know_the_verifier() {
        let mut client = ScramClient::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            client.verify_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(AuthError::ServerSignatureMismatch)
        );
        let mut client = ScramClient::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            client.verify_server_final(b"e=invalid-proof"),
            Err(AuthError::ServerError("invalid-proof".into()))
        );
    }

    #[test]
    fn rejects_a_server_nonce_that_does_not_extend_ours() {
        for server_first in [
            "r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        ] {
            let mut client = ScramClient::with_nonce("", "pencil", "rOprNGfwEbeRWgbNEkqO");
            assert_eq!(
                client.handle_server_first(server_first.as_bytes()),
                Err(AuthError::NonceMismatch)
            );
        }
        let mut client = ScramClient::with_nonce("", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert!(client
            .handle_server_first(b"r=rOprNGfwEbeRWgbNEkqOx,s=W22Z,i=0")
            .is_err());
        // Before deriving keys (slow): the nonce, and a bounded iteration count.
        let client = ScramClient::with_nonce("", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(
            client.key_params(b"r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            Err(AuthError::NonceMismatch)
        );
        assert!(client
            .key_params(b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4294967295")
            .is_err());
        assert!(client
            .key_params(b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .is_ok_and(|p| p.is_some_and(|(_, i)| i == 4096)));
    }

    #[test]
    fn escapes_user_names() {
        let client = ScramClient::with_nonce("a=b,c", "p", "n");
        assert_eq!(client.client_first(), "n,,n=a=3Db=2Cc,r=n");
    }

    #[test]
    fn handshake_with_our_server_and_passthrough_keys() {
        let secret = ScramSecret::from_password("s3cret", 4096).unwrap();
        let mut server = ScramServer::new(secret.clone()).unwrap();
        let mut client = ScramClient::new("s3cret").unwrap();
        let first = server
            .handle_client_first(client.client_first().as_bytes())
            .unwrap();
        let fin = client.handle_server_first(first.as_bytes()).unwrap();
        let last = server.handle_client_final(fin.as_bytes()).unwrap();
        client.verify_server_final(last.as_bytes()).unwrap();

        // The keys the server recovered log in again without the password.
        let keys = server.client_keys().unwrap();
        let mut server = ScramServer::new(secret).unwrap();
        let mut client = ScramClient::with_keys(keys).unwrap();
        let first = server
            .handle_client_first(client.client_first().as_bytes())
            .unwrap();
        let fin = client.handle_server_first(first.as_bytes()).unwrap();
        let last = server.handle_client_final(fin.as_bytes()).unwrap();
        client.verify_server_final(last.as_bytes()).unwrap();
    }

    #[test]
    fn wrong_password_and_mock_secret_fail() {
        let secret = ScramSecret::from_password("right", 64).unwrap();
        for (secret, password) in [
            (secret, "wrong"),
            (ScramSecret::mock("ghost", b"key").unwrap(), "anything"),
        ] {
            let mut server = ScramServer::new(secret).unwrap();
            let mut client = ScramClient::new(password).unwrap();
            let first = server
                .handle_client_first(client.client_first().as_bytes())
                .unwrap();
            let fin = client.handle_server_first(first.as_bytes()).unwrap();
            assert_eq!(
                server.handle_client_final(fin.as_bytes()),
                Err(AuthError::WrongPassword)
            );
        }
    }
}
