//! The server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS: read client-first,
//! answer server-first, check the proof (and the channel binding) in client-final,
//! answer server-final.

use std::fmt;

use super::{
    attr, b64, hmac, random_nonce, sha256, unb64, utf8, valid_nonce, xor, ScramKeys, ScramSecret,
};
use crate::authentication::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use crate::constant_time::constant_time_eq;
use crate::error::AuthError;

/// One SCRAM-SHA-256 exchange on the server side.
///
/// Send AuthenticationSASL offering [`ScramServer::mechanisms`]; pass the
/// mechanism and data of the client's SASLInitialResponse to
/// [`ScramServer::handle_sasl_initial`] and
/// send its answer as AuthenticationSASLContinue; pass the SASLResponse data to
/// [`ScramServer::handle_client_final`] and send its answer as
/// AuthenticationSASLFinal followed by AuthenticationOk. Any error ends the
/// exchange: answer with an ErrorResponse (28P01 for a wrong password).
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    state: State,
    /// `tls-server-end-point` data (RFC 5929: the hash of the server's certificate)
    /// when the connection runs over TLS and the hash is known: then
    /// `SCRAM-SHA-256-PLUS` is offered first, as PostgreSQL offers it.
    binding: Option<Vec<u8>>,
}

/// The only channel binding type PostgreSQL knows.
const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

enum State {
    Initial,
    SentServerFirst {
        /// What `c=` must hold: the gs2 header the client sent (`n,,`, `y,,` or
        /// `p=tls-server-end-point,,`), followed by the binding data for `p`.
        binding: Vec<u8>,
        /// client nonce + server nonce.
        nonce: String,
        /// `client-first-bare,server-first,` — the start of AuthMessage.
        auth_prefix: String,
    },
    Done {
        client_key: [u8; 32],
    },
    Failed,
}

impl ScramServer {
    /// A new exchange against `secret` with a random server nonce.
    pub fn new(secret: ScramSecret) -> Result<ScramServer, AuthError> {
        Ok(ScramServer::with_nonce(secret, random_nonce()?))
    }

    /// A new exchange with a chosen server nonce, for tests and test vectors.
    /// Never reuse a nonce in production: use [`ScramServer::new`].
    pub fn with_nonce(secret: ScramSecret, server_nonce: impl Into<String>) -> ScramServer {
        ScramServer {
            secret,
            server_nonce: server_nonce.into(),
            state: State::Initial,
            binding: None,
        }
    }

    /// Offers `SCRAM-SHA-256-PLUS` with `tls-server-end-point` data (the hash of
    /// the certificate this side presented, RFC 5929), for an exchange over TLS.
    pub fn with_channel_binding(mut self, end_point: Vec<u8>) -> ScramServer {
        self.binding = Some(end_point);
        self
    }

    /// The mechanisms to offer in AuthenticationSASL, as PostgreSQL orders them.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.binding.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// Reads the client's choice of mechanism and its client-first, as
    /// [`ScramServer::handle_client_first`]. The choice must agree with the gs2
    /// header, as PostgreSQL checks it: `-PLUS` only when offered and with `p=`,
    /// and a client that says it could bind (`y`) when binding was offered is
    /// refused (someone in the middle took `-PLUS` off the list).
    pub fn handle_sasl_initial(
        &mut self,
        mechanism: &str,
        data: &[u8],
    ) -> Result<String, AuthError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.binding.is_some() => true,
            _ => {
                self.state = State::Failed;
                return Err(AuthError::MalformedMessage(
                    "the client chose a SASL mechanism that was not offered",
                ));
            }
        };
        self.first(plus, data)
    }

    /// Reads client-first (`n,,n=user,r=nonce`) of `SCRAM-SHA-256` and returns
    /// server-first (`r=nonce,s=salt,i=iterations`). The user name in the message
    /// is ignored, as PostgreSQL does: the user is the one from the startup packet.
    pub fn handle_client_first(&mut self, data: &[u8]) -> Result<String, AuthError> {
        self.first(false, data)
    }

    fn first(&mut self, plus: bool, data: &[u8]) -> Result<String, AuthError> {
        if !matches!(self.state, State::Initial) {
            return Err(AuthError::OutOfOrder("client-first after the first step"));
        }
        self.state = State::Failed;
        let text = utf8(data, "client-first is not UTF-8")?;
        let (gs2_header, bare) = split_gs2_header(text)?;
        let mut binding = gs2_header.as_bytes().to_vec();
        match (gs2_header.as_bytes()[0], plus) {
            (b'n', false) => {}
            (b'y', false) if self.binding.is_none() => {}
            (b'y', false) => return Err(AuthError::MalformedMessage(
                "the client supports channel binding but thinks the server does not, and this server does",
            )),
            (b'p', true) => {
                if gs2_header.split(',').next() != Some(&format!("p={TLS_SERVER_END_POINT}")[..]) {
                    return Err(AuthError::ChannelBindingNotSupported);
                }
                binding.extend_from_slice(self.binding.as_deref().unwrap_or_default());
            }
            (b'p', false) => return Err(AuthError::MalformedMessage(
                "the client chose SCRAM-SHA-256 without channel binding, but its message has channel binding data",
            )),
            _ => return Err(AuthError::MalformedMessage(
                "the client chose SCRAM-SHA-256-PLUS, but its message has no channel binding data",
            )),
        }
        let mut parts = bare.split(',');
        let first = parts.next();
        if first.is_some_and(|p| p.starts_with("m=")) {
            return Err(AuthError::MalformedMessage(
                "client-first has a mandatory extension",
            ));
        }
        attr(first, b'n', "client-first has no user name")?;
        let client_nonce = attr(parts.next(), b'r', "client-first has no nonce")?;
        if !valid_nonce(client_nonce) {
            return Err(AuthError::MalformedMessage(
                "client nonce is not printable ASCII",
            ));
        }
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            b64(self.secret.salt()),
            self.secret.iterations()
        );
        self.state = State::SentServerFirst {
            binding,
            nonce,
            auth_prefix: format!("{bare},{server_first},"),
        };
        Ok(server_first)
    }

    /// Reads client-final (`c=biws,r=nonce,p=proof`), checks the proof and
    /// returns server-final (`v=signature`). `Err(WrongPassword)` when the
    /// proof does not match.
    pub fn handle_client_final(&mut self, data: &[u8]) -> Result<String, AuthError> {
        let State::SentServerFirst {
            binding: expected,
            nonce,
            auth_prefix,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(AuthError::OutOfOrder("client-final before client-first"));
        };
        let text = utf8(data, "client-final is not UTF-8")?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(AuthError::MalformedMessage("client-final has no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = attr(parts.next(), b'c', "client-final has no channel binding")?;
        if unb64(binding, "channel binding is not base64")? != expected {
            return Err(AuthError::ChannelBindingMismatch);
        }
        let client_nonce = attr(parts.next(), b'r', "client-final has no nonce")?;
        if client_nonce != nonce {
            return Err(AuthError::NonceMismatch);
        }
        let proof = unb64(proof, "proof is not base64")?;
        let proof: [u8; 32] = proof
            .as_slice()
            .try_into()
            .map_err(|_| AuthError::MalformedMessage("proof is not 32 bytes"))?;

        let auth_message = [auth_prefix.as_bytes(), without_proof.as_bytes()];
        let client_signature = hmac(self.secret.stored_key(), &auth_message);
        let client_key = xor(&proof, &client_signature);
        let matches = constant_time_eq(&sha256(&client_key), self.secret.stored_key());
        if !matches || self.secret.is_mock() {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(self.secret.server_key(), &auth_message);
        self.state = State::Done { client_key };
        Ok(format!("v={}", b64(&server_signature)))
    }

    /// True once the client's proof was accepted.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Done { .. })
    }

    /// After a successful exchange: the client's `ClientKey` (recovered from its
    /// proof) and the `ServerKey`, enough to log in as this user to a server
    /// holding the same verifier.
    pub fn client_keys(&self) -> Option<ScramKeys> {
        match self.state {
            State::Done { client_key } => Some(ScramKeys {
                client_key,
                server_key: *self.secret.server_key(),
            }),
            _ => None,
        }
    }
}

/// Splits `gs2-header` (`n,,` / `y,,` / `p=NAME,,`) from client-first-bare.
fn split_gs2_header(text: &str) -> Result<(&str, &str), AuthError> {
    let mut parts = text.splitn(3, ',');
    let flag = parts.next().unwrap_or_default();
    let authzid = parts.next();
    let bare = parts.next();
    let well_formed = match flag.as_bytes() {
        [b'n' | b'y'] => true,
        [b'p', b'=', name @ ..] => {
            !name.is_empty()
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(b))
        }
        [] => {
            return Err(AuthError::MalformedMessage(
                "client-first has no channel binding flag",
            ))
        }
        _ => false,
    };
    if !well_formed {
        return Err(AuthError::MalformedMessage(
            "client-first has a malformed channel binding flag",
        ));
    }
    match (authzid, bare) {
        (Some(""), Some(bare)) => Ok((&text[..text.len() - bare.len()], bare)),
        (Some(_), Some(_)) => Err(AuthError::MalformedMessage(
            "authorization identity is not supported",
        )),
        _ => Err(AuthError::MalformedMessage(
            "client-first has no gs2 header",
        )),
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "initial",
            State::SentServerFirst { .. } => "sent server-first",
            State::Done { .. } => "authenticated",
            State::Failed => "failed",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc7677_server() -> ScramServer {
        let salt = unb64("W22ZaJ0SNY7soEsUEjb6gQ==", "salt").unwrap();
        let secret = ScramSecret::from_password_with_salt("pencil", &salt, 4096).unwrap();
        ScramServer::with_nonce(secret, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    }

    #[test]
    fn follows_the_rfc7677_example() {
        let mut server = rfc7677_server();
        let first = server
            .handle_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        assert_eq!(
            first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = server
            .handle_client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(last, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        assert!(server.is_authenticated());
        assert!(server.client_keys().is_some());
    }

    #[test]
    fn refuses_channel_binding_and_authzid_and_bad_order() {
        let mut server = rfc7677_server();
        assert!(matches!(
            server.handle_client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(AuthError::MalformedMessage(_))
        ));
        assert!(matches!(
            server.handle_client_first(b"n,,n=,r=abc"),
            Err(AuthError::OutOfOrder(_))
        ));
        let mut server = rfc7677_server();
        assert!(matches!(
            server.handle_client_first(b"n,a=admin,n=,r=abc"),
            Err(AuthError::MalformedMessage(_))
        ));
        let mut server = rfc7677_server();
        assert!(matches!(
            server.handle_client_final(b"c=biws,r=x,p=AAAA"),
            Err(AuthError::OutOfOrder(_))
        ));
    }

    #[test]
    fn rejects_tampered_client_final() {
        let client_final_ok = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        for (tampered, expected) in [
            (
                client_final_ok.replace("p=dHzb", "p=dHzc"),
                AuthError::WrongPassword,
            ),
            (
                client_final_ok.replace(",r=rOpr", ",r=rOpx"),
                AuthError::NonceMismatch,
            ),
            (
                client_final_ok.replace("c=biws", "c=eSws"),
                AuthError::ChannelBindingMismatch,
            ),
        ] {
            let mut server = rfc7677_server();
            server
                .handle_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
                .unwrap();
            assert_eq!(
                server.handle_client_final(tampered.as_bytes()),
                Err(expected)
            );
            assert!(!server.is_authenticated());
            assert!(server.client_keys().is_none());
        }
    }

    /// The RFC 7677 exchange over a channel bound with `data`: the client's
    /// final message without its proof, then with the proof computed for it.
    fn bound_final(gs2: &str, data: &[u8]) -> String {
        let salt = unb64("W22ZaJ0SNY7soEsUEjb6gQ==", "salt").unwrap();
        let secret = ScramSecret::from_password_with_salt("pencil", &salt, 4096).unwrap();
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let mut c = gs2.as_bytes().to_vec();
        c.extend_from_slice(data);
        let without_proof = format!("c={},r={nonce}", b64(&c));
        let auth_message = format!(
            "n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,{without_proof}"
        );
        let salted = super::super::salted_password(b"pencil", &salt, 4096);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let signature = hmac(secret.stored_key(), &[auth_message.as_bytes()]);
        format!("{without_proof},p={}", b64(&xor(&client_key, &signature)))
    }

    #[test]
    fn binds_to_the_channel_when_offered() {
        const END_POINT: &[u8] = b"the certificate's hash";
        const GS2: &str = "p=tls-server-end-point,,";
        let bound = || rfc7677_server().with_channel_binding(END_POINT.to_vec());
        assert_eq!(bound().mechanisms(), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        assert_eq!(rfc7677_server().mechanisms(), [SCRAM_SHA_256]);

        // The right hash logs in; another one (a server in the middle, with its own
        // certificate) does not, though the password is right.
        for (data, ok) in [(END_POINT, true), (&b"another certificate"[..], false)] {
            let mut server = bound();
            server
                .handle_sasl_initial(
                    SCRAM_SHA_256_PLUS,
                    format!("{GS2}n=user,r=rOprNGfwEbeRWgbNEkqO").as_bytes(),
                )
                .unwrap();
            let result = server.handle_client_final(bound_final(GS2, data).as_bytes());
            assert_eq!(result.is_ok(), ok, "{result:?}");
            assert_eq!(server.is_authenticated(), ok);
        }
        // Without binding, over the same channel, the exchange works as before.
        let mut server = bound();
        server
            .handle_sasl_initial(SCRAM_SHA_256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        server
            .handle_client_final(bound_final("n,,", b"").as_bytes())
            .unwrap();

        // Choices that do not agree with what was offered or with the header.
        for (server, mechanism, first) in [
            // -PLUS not offered (no TLS).
            (rfc7677_server(), SCRAM_SHA_256_PLUS, format!("{GS2}n=,r=a")),
            // Offered, but a man in the middle struck it from the list.
            (bound(), SCRAM_SHA_256, "y,,n=,r=a".to_string()),
            (bound(), SCRAM_SHA_256_PLUS, "n,,n=,r=a".to_string()),
            (bound(), SCRAM_SHA_256, format!("{GS2}n=,r=a")),
            (
                bound(),
                SCRAM_SHA_256_PLUS,
                "p=tls-unique,,n=,r=a".to_string(),
            ),
            (bound(), SCRAM_SHA_256_PLUS, "p=,,n=,r=a".to_string()),
            (bound(), "SCRAM-SHA-1", "n,,n=,r=a".to_string()),
        ] {
            let mut server = server;
            assert!(
                server
                    .handle_sasl_initial(mechanism, first.as_bytes())
                    .is_err(),
                "{mechanism} {first}"
            );
        }
        // `y` is fine where nothing was offered.
        assert!(rfc7677_server()
            .handle_sasl_initial(SCRAM_SHA_256, b"y,,n=,r=a")
            .is_ok());
    }

    #[test]
    fn garbage_is_an_error() {
        for input in [
            &b""[..],
            b"n",
            b"n,",
            b"n,,",
            b"n,,r=abc",
            b"n,,n=u",
            b"n,,n=u,r=",
            b"n,,m=ext,n=u,r=abc",
            b"nn,,n=u,r=abc",
            b"\xff,,n=u,r=abc",
        ] {
            let mut server = rfc7677_server();
            assert!(server.handle_client_first(input).is_err(), "{input:?}");
        }
    }
}
