//! The server side of SCRAM-SHA-256: read client-first, answer server-first,
//! check the proof in client-final, answer server-final.

use std::fmt;

use super::{
    attr, b64, hmac, random_nonce, sha256, unb64, utf8, valid_nonce, xor, ScramKeys, ScramSecret,
};
use crate::constant_time::constant_time_eq;
use crate::error::AuthError;

/// One SCRAM-SHA-256 exchange on the server side.
///
/// Send AuthenticationSASL offering `SCRAM-SHA-256`; pass the data of the
/// client's SASLInitialResponse to [`ScramServer::handle_client_first`] and
/// send its answer as AuthenticationSASLContinue; pass the SASLResponse data to
/// [`ScramServer::handle_client_final`] and send its answer as
/// AuthenticationSASLFinal followed by AuthenticationOk. Any error ends the
/// exchange: answer with an ErrorResponse (28P01 for a wrong password).
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    state: State,
}

enum State {
    Initial,
    SentServerFirst {
        /// The gs2 header the client sent (`n,,` or `y,,`), echoed in `c=`.
        gs2_header: String,
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
        }
    }

    /// Reads client-first (`n,,n=user,r=nonce`) and returns server-first
    /// (`r=nonce,s=salt,i=iterations`). The user name in the message is ignored,
    /// as PostgreSQL does: the user is the one from the startup packet.
    pub fn handle_client_first(&mut self, data: &[u8]) -> Result<String, AuthError> {
        if !matches!(self.state, State::Initial) {
            return Err(AuthError::OutOfOrder("client-first after the first step"));
        }
        self.state = State::Failed;
        let text = utf8(data, "client-first is not UTF-8")?;
        let (gs2_header, bare) = split_gs2_header(text)?;
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
            gs2_header: gs2_header.to_owned(),
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
            gs2_header,
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
        if unb64(binding, "channel binding is not base64")? != gs2_header.as_bytes() {
            return Err(AuthError::MalformedMessage(
                "channel binding does not match client-first",
            ));
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

/// Splits `gs2-header` (`n,,` / `y,,`) from client-first-bare.
fn split_gs2_header(text: &str) -> Result<(&str, &str), AuthError> {
    match text.as_bytes().first() {
        Some(b'n' | b'y') => {}
        Some(b'p') => return Err(AuthError::ChannelBindingNotSupported),
        _ => {
            return Err(AuthError::MalformedMessage(
                "client-first has no channel binding flag",
            ))
        }
    }
    let mut parts = text.splitn(3, ',');
    let flag = parts.next().unwrap_or_default();
    let authzid = parts.next();
    let bare = parts.next();
    if flag.len() != 1 {
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
        assert_eq!(
            server.handle_client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(AuthError::ChannelBindingNotSupported)
        );
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
                AuthError::MalformedMessage("channel binding does not match client-first"),
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
