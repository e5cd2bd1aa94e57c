//! The startup phase: untagged packets (Int32 length + Int32 request code) a
//! client sends before the normal message flow — StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest — and the server's one-byte SSL/GSS answer.

use bytes::{Bytes, BytesMut};

use crate::body::{write_untagged, BodyReader};
use crate::error::{DecodeError, EncodeError, Tag};
use crate::list::List;

/// PostgreSQL's cap on a startup packet (`MAX_STARTUP_PACKET_LENGTH`, 10000
/// bytes after the length word), as a limit on the declared length.
pub const MAX_STARTUP_PACKET_LEN: u32 = 10_000 + 4;

/// Smallest valid startup packet: length and request code.
const MIN_STARTUP_PACKET_LEN: u32 = 8;

/// Request code of an SSLRequest.
pub const SSL_REQUEST_CODE: u32 = (1234 << 16) | 5679;
/// Request code of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: u32 = (1234 << 16) | 5680;
/// Request code of a CancelRequest.
pub const CANCEL_REQUEST_CODE: u32 = (1234 << 16) | 5678;

/// A protocol version as sent in a StartupMessage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolVersion {
    /// Major version; only 3 is spoken.
    pub major: u16,
    /// Minor version: 0 up to PostgreSQL 17, 2 offered by PostgreSQL 18 clients.
    pub minor: u16,
}

impl ProtocolVersion {
    /// Protocol 3.0, which every PostgreSQL since 7.4 speaks.
    pub const V3_0: ProtocolVersion = ProtocolVersion { major: 3, minor: 0 };

    /// The version as the Int32 on the wire.
    pub fn code(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor)
    }

    /// Splits a wire Int32 into major and minor.
    pub fn from_code(code: u32) -> ProtocolVersion {
        ProtocolVersion {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
        }
    }
}

/// Splits the first complete startup packet off `buf`.
///
/// `Ok(None)` when more bytes are needed; an error when the declared length is
/// below 8 or above `max_len` (use [`MAX_STARTUP_PACKET_LEN`]).
pub fn split_startup(
    buf: &mut BytesMut,
    max_len: u32,
) -> Result<Option<StartupFrame>, DecodeError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    if len < MIN_STARTUP_PACKET_LEN as i32 {
        return Err(DecodeError::LengthTooShort {
            tag: Tag::STARTUP,
            len,
            min: MIN_STARTUP_PACKET_LEN,
        });
    }
    let len = len as u32;
    if len > max_len {
        return Err(DecodeError::TooLong {
            tag: Tag::STARTUP,
            len,
            max: max_len,
        });
    }
    if buf.len() < len as usize {
        return Ok(None);
    }
    Ok(Some(StartupFrame {
        bytes: buf.split_to(len as usize).freeze(),
    }))
}

/// One whole startup packet as it was on the wire: length, request code, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupFrame {
    /// At least 8 bytes, length field matching.
    bytes: Bytes,
}

impl StartupFrame {
    /// The request code: a protocol version or one of the `*_REQUEST_CODE`s.
    pub fn code(&self) -> u32 {
        u32::from_be_bytes([self.bytes[4], self.bytes[5], self.bytes[6], self.bytes[7]])
    }

    /// Everything after the request code.
    pub fn body(&self) -> &[u8] {
        &self.bytes[8..]
    }

    /// The whole packet as it was on the wire.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The whole packet, to relay unchanged.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Decodes the packet.
    pub fn decode(&self) -> Result<StartupPacket<'_>, DecodeError> {
        StartupPacket::decode(self.code(), self.body())
    }
}

/// A decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket<'a> {
    /// StartupMessage: protocol version and connection parameters.
    Startup(StartupMessage<'a>),
    /// SSLRequest: answer with [`SslResponse`], then TLS or a new startup packet.
    SslRequest,
    /// GSSENCRequest: answer with [`SslResponse`]'s byte (`'N'` unless GSSAPI
    /// encryption is offered).
    GssEncRequest,
    /// CancelRequest: process id and secret key of the session to cancel.
    Cancel(CancelRequest),
}

impl<'a> StartupPacket<'a> {
    /// Decodes a packet from its request code and the bytes after it.
    pub fn decode(code: u32, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag::STARTUP, body);
        let packet = match code {
            SSL_REQUEST_CODE => StartupPacket::SslRequest,
            GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
            CANCEL_REQUEST_CODE => StartupPacket::Cancel(CancelRequest {
                process_id: r.i32("process id")?,
                secret_key: r.i32("secret key")?,
            }),
            code => {
                let protocol = ProtocolVersion::from_code(code);
                if protocol.major != 3 {
                    return Err(DecodeError::UnsupportedProtocol {
                        major: protocol.major,
                        minor: protocol.minor,
                    });
                }
                StartupPacket::Startup(StartupMessage {
                    protocol,
                    params: List::read_until_nul(&mut r, "parameters")?,
                })
            }
        };
        r.finish()?;
        Ok(packet)
    }

    /// Appends the packet.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            StartupPacket::Startup(m) => m.encode(dst),
            StartupPacket::SslRequest => {
                encode_request_code(dst, SSL_REQUEST_CODE);
                Ok(())
            }
            StartupPacket::GssEncRequest => {
                encode_request_code(dst, GSSENC_REQUEST_CODE);
                Ok(())
            }
            StartupPacket::Cancel(c) => {
                c.encode(dst);
                Ok(())
            }
        }
    }
}

/// StartupMessage: the protocol version and `name`/`value` parameters (`user`,
/// `database`, `application_name`, `options`, any GUC, `_pq_.*` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupMessage<'a> {
    /// Requested protocol version (major 3).
    pub protocol: ProtocolVersion,
    /// Parameters in the order sent. Names are never empty.
    pub params: List<'a, (&'a str, &'a str)>,
}

impl<'a> StartupMessage<'a> {
    /// The value of parameter `name`, if sent (the first one if sent twice).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.params.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The `user` parameter (required by PostgreSQL).
    pub fn user(&self) -> Option<&'a str> {
        self.get("user")
    }

    /// The `database` parameter; PostgreSQL defaults it to the user name.
    pub fn database(&self) -> Option<&'a str> {
        self.get("database")
    }

    /// Appends the packet.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_untagged(dst, |w| {
            w.u32(self.protocol.code());
            self.params.write_nul_terminated(w, "parameters")
        })
    }
}

/// CancelRequest: sent on a new connection to cancel the query running in the
/// session identified by its BackendKeyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelRequest {
    /// Process id from BackendKeyData.
    pub process_id: i32,
    /// Secret key from BackendKeyData.
    pub secret_key: i32,
}

impl CancelRequest {
    /// Appends the packet.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.extend_from_slice(&16i32.to_be_bytes());
        dst.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        dst.extend_from_slice(&self.process_id.to_be_bytes());
        dst.extend_from_slice(&self.secret_key.to_be_bytes());
    }
}

/// Appends an SSLRequest.
pub fn encode_ssl_request(dst: &mut BytesMut) {
    encode_request_code(dst, SSL_REQUEST_CODE);
}

/// Appends a GSSENCRequest.
pub fn encode_gssenc_request(dst: &mut BytesMut) {
    encode_request_code(dst, GSSENC_REQUEST_CODE);
}

fn encode_request_code(dst: &mut BytesMut, code: u32) {
    dst.extend_from_slice(&8i32.to_be_bytes());
    dst.extend_from_slice(&code.to_be_bytes());
}

/// The server's single-byte answer to an SSLRequest or GSSENCRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslResponse {
    /// `'S'` (or `'G'` for GSSENCRequest): the TLS / GSS handshake follows.
    Accept,
    /// `'N'`: go on unencrypted with a StartupMessage (or close).
    Reject,
}

impl SslResponse {
    /// The byte to send in answer to an SSLRequest: `'S'` or `'N'`.
    pub fn byte(self) -> u8 {
        match self {
            SslResponse::Accept => b'S',
            SslResponse::Reject => b'N',
        }
    }

    /// Reads the server's answer to an SSLRequest. `None` for any other byte —
    /// including `'E'`, which a very old server sends as the start of an ErrorResponse.
    pub fn from_byte(b: u8) -> Option<SslResponse> {
        match b {
            b'S' => Some(SslResponse::Accept),
            b'N' => Some(SslResponse::Reject),
            _ => None,
        }
    }

    /// Appends the answer byte to an SSLRequest.
    pub fn encode(self, dst: &mut BytesMut) {
        dst.extend_from_slice(&[self.byte()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(bytes: &[u8]) -> Result<Option<StartupFrame>, DecodeError> {
        split_startup(&mut BytesMut::from(bytes), MAX_STARTUP_PACKET_LEN)
    }

    #[test]
    fn decodes_a_libpq_startup_message() {
        let wire = b"\0\0\0\x29\0\x03\0\0user\0alice\0database\0shop\0\0";
        let mut wire = wire.to_vec();
        wire[3] = wire.len() as u8;
        let frame = split(&wire).unwrap().unwrap();
        let StartupPacket::Startup(m) = frame.decode().unwrap() else {
            panic!("not a startup message");
        };
        assert_eq!(m.protocol, ProtocolVersion::V3_0);
        assert_eq!(m.user(), Some("alice"));
        assert_eq!(m.database(), Some("shop"));
        assert_eq!(m.get("options"), None);
        let mut out = BytesMut::new();
        m.encode(&mut out).unwrap();
        assert_eq!(&out[..], &wire[..]);
    }

    #[test]
    fn decodes_the_special_requests() {
        let mut out = BytesMut::new();
        encode_ssl_request(&mut out);
        encode_gssenc_request(&mut out);
        CancelRequest {
            process_id: 4242,
            secret_key: -7,
        }
        .encode(&mut out);
        let mut frames = Vec::new();
        while let Some(frame) = split_startup(&mut out, MAX_STARTUP_PACKET_LEN).unwrap() {
            frames.push(frame);
        }
        let decoded: Vec<_> = frames.iter().map(|f| f.decode().unwrap()).collect();
        assert_eq!(
            decoded,
            [
                StartupPacket::SslRequest,
                StartupPacket::GssEncRequest,
                StartupPacket::Cancel(CancelRequest {
                    process_id: 4242,
                    secret_key: -7
                })
            ]
        );
        assert_eq!(&b"\0\0\0\x08\x04\xd2\x16\x2f"[..], {
            let mut b = BytesMut::new();
            encode_ssl_request(&mut b);
            b
        });
    }

    #[test]
    fn rejects_bad_lengths_versions_and_layouts() {
        assert!(matches!(
            split(b"\0\0\0\x04\0\x03\0\0"),
            Err(DecodeError::LengthTooShort { .. })
        ));
        assert!(matches!(
            split(b"\0\0\x27\x15"),
            Err(DecodeError::TooLong { len: 10005, .. })
        ));
        assert_eq!(split(b"\0\0\0\x09\0\x03\0\0").unwrap(), None);
        let v2 = split(b"\0\0\0\x09\0\x02\0\0\0").unwrap().unwrap();
        assert_eq!(
            v2.decode(),
            Err(DecodeError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        let unterminated = split(b"\0\0\0\x0e\0\x03\0\0user\0x").unwrap().unwrap();
        assert!(unterminated.decode().is_err());
        let trailing = split(b"\0\0\0\x0a\0\x03\0\0\0x").unwrap().unwrap();
        assert!(matches!(
            trailing.decode(),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
        let short_cancel = split(b"\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\x01")
            .unwrap()
            .unwrap();
        assert!(matches!(
            short_cancel.decode(),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn empty_parameter_names_cannot_be_encoded() {
        let params = [("", "x")];
        let m = StartupMessage {
            protocol: ProtocolVersion::V3_0,
            params: List::from(&params),
        };
        assert!(m.encode(&mut BytesMut::new()).is_err());
    }
}
