//! The server's authentication requests (`'R'` messages): Ok, cleartext,
//! md5 with salt, SASL with its mechanism list, SASLContinue, SASLFinal, and
//! the GSSAPI/SSPI/Kerberos requests (recognised, not implemented here).

use bytes::BytesMut;

use crate::body::{write_message, BodyReader};
use crate::error::{DecodeError, EncodeError, Tag};
use crate::list::List;

/// Tag of every authentication request.
pub const AUTHENTICATION: u8 = b'R';

/// The SASL mechanism this crate implements.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The SASL mechanism with channel binding (`tls-server-end-point`, over TLS).
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// An authentication request or result from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// Code 0: authenticated.
    Ok,
    /// Code 2: Kerberos V5 (long gone from PostgreSQL).
    KerberosV5,
    /// Code 3: send the password in clear.
    CleartextPassword,
    /// Code 5: send `md5(md5(password + user) + salt)`.
    Md5Password {
        /// The 4-byte salt.
        salt: [u8; 4],
    },
    /// Code 7: GSSAPI.
    Gss,
    /// Code 8: GSSAPI or SSPI continuation data.
    GssContinue {
        /// Opaque data.
        data: &'a [u8],
    },
    /// Code 9: SSPI.
    Sspi,
    /// Code 10: SASL, with the mechanisms offered in order of preference.
    Sasl {
        /// Mechanism names, e.g. `SCRAM-SHA-256`.
        mechanisms: List<'a, &'a str>,
    },
    /// Code 11: SASL challenge (SCRAM server-first).
    SaslContinue {
        /// Mechanism-specific data.
        data: &'a [u8],
    },
    /// Code 12: SASL outcome (SCRAM server-final).
    SaslFinal {
        /// Mechanism-specific data.
        data: &'a [u8],
    },
}

impl<'a> Authentication<'a> {
    /// The request code on the wire.
    pub fn code(&self) -> i32 {
        match self {
            Authentication::Ok => 0,
            Authentication::KerberosV5 => 2,
            Authentication::CleartextPassword => 3,
            Authentication::Md5Password { .. } => 5,
            Authentication::Gss => 7,
            Authentication::GssContinue { .. } => 8,
            Authentication::Sspi => 9,
            Authentication::Sasl { .. } => 10,
            Authentication::SaslContinue { .. } => 11,
            Authentication::SaslFinal { .. } => 12,
        }
    }

    /// Decodes the body of an `'R'` message.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(AUTHENTICATION), body);
        let code = r.i32("request code")?;
        let auth = match code {
            0 => Authentication::Ok,
            2 => Authentication::KerberosV5,
            3 => Authentication::CleartextPassword,
            5 => {
                let salt = r.bytes(4, "salt")?;
                Authentication::Md5Password {
                    salt: [salt[0], salt[1], salt[2], salt[3]],
                }
            }
            7 => Authentication::Gss,
            8 => Authentication::GssContinue { data: r.rest() },
            9 => Authentication::Sspi,
            10 => Authentication::Sasl {
                mechanisms: List::read_until_nul(&mut r, "mechanisms")?,
            },
            11 => Authentication::SaslContinue { data: r.rest() },
            12 => Authentication::SaslFinal { data: r.rest() },
            other => return Err(r.invalid("request code", other.into())),
        };
        r.finish()?;
        Ok(auth)
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, AUTHENTICATION, |w| {
            w.i32(self.code());
            match self {
                Authentication::Md5Password { salt } => w.bytes(salt),
                Authentication::GssContinue { data }
                | Authentication::SaslContinue { data }
                | Authentication::SaslFinal { data } => w.bytes(data),
                Authentication::Sasl { mechanisms } => {
                    mechanisms.write_nul_terminated(w, "mechanisms")?;
                }
                Authentication::Ok
                | Authentication::KerberosV5
                | Authentication::CleartextPassword
                | Authentication::Gss
                | Authentication::Sspi => {}
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_postgres_sends() {
        assert_eq!(
            Authentication::decode(b"\0\0\0\x0aSCRAM-SHA-256\0\0")
                .unwrap()
                .code(),
            10
        );
        let Authentication::Sasl { mechanisms } =
            Authentication::decode(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").unwrap()
        else {
            panic!("not SASL")
        };
        assert_eq!(
            mechanisms.iter().collect::<Vec<_>>(),
            ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
        assert_eq!(
            Authentication::decode(b"\0\0\0\x05\x01\x02\x03\x04").unwrap(),
            Authentication::Md5Password { salt: [1, 2, 3, 4] }
        );
        assert!(Authentication::decode(b"\0\0\0\x05\x01\x02\x03").is_err());
        assert!(Authentication::decode(b"\0\0\0\0x").is_err());
        assert!(matches!(
            Authentication::decode(b"\0\0\0\x06"),
            Err(DecodeError::InvalidValue { value: 6, .. })
        ));
    }
}
