//! The crate's errors: [`DecodeError`] for bytes that are not a valid message,
//! [`EncodeError`] for values that cannot be written as one, and [`AuthError`]
//! for SCRAM-SHA-256 and md5 exchanges that fail.

use std::fmt;

/// A message type byte, or [`Tag::STARTUP`] for the untagged startup-phase packets.
///
/// Displays as `'Q'` for printable tags, `0x05` otherwise, and `startup packet`
/// for [`Tag::STARTUP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(pub u8);

impl Tag {
    /// The startup phase (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest)
    /// has no tag byte; errors there carry this value.
    pub const STARTUP: Tag = Tag(0);
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("startup packet"),
            b if b.is_ascii_graphic() => write!(f, "'{}'", b as char),
            b => write!(f, "{b:#04x}"),
        }
    }
}

/// Which side sent a message: the client (frontend) or the server (backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Frontend,
    /// Server to client.
    Backend,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Frontend => "frontend",
            Direction::Backend => "backend",
        })
    }
}

/// Bytes that are not a valid protocol message. Every variant names the message
/// and, where it applies, the field; a connection that produces one should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The declared length is smaller than the length field itself.
    #[error("message {tag} declares length {len}, below the minimum of {min}")]
    LengthTooShort {
        /// The message.
        tag: Tag,
        /// The declared length (signed, as on the wire).
        len: i32,
        /// The smallest valid length for this message.
        min: u32,
    },
    /// The declared length is above the configured maximum message size.
    #[error("message {tag} declares length {len}, limit is {max}")]
    TooLong {
        /// The message.
        tag: Tag,
        /// The declared length.
        len: u32,
        /// The configured limit.
        max: u32,
    },
    /// The body ends in the middle of a field.
    #[error("message {tag} is truncated in field {field}: {missing} bytes missing")]
    Truncated {
        /// The message.
        tag: Tag,
        /// The field being read.
        field: &'static str,
        /// How many more bytes the field needs.
        missing: usize,
    },
    /// A string field has no terminating NUL byte.
    #[error("message {tag}: string field {field} has no NUL terminator")]
    UnterminatedString {
        /// The message.
        tag: Tag,
        /// The field being read.
        field: &'static str,
    },
    /// A string field is not valid UTF-8.
    #[error("message {tag}: field {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The message.
        tag: Tag,
        /// The field being read.
        field: &'static str,
    },
    /// A field holds a value the protocol does not allow (a negative count, an
    /// unknown format code, an unknown transaction status, …).
    #[error("message {tag}: field {field} has invalid value {value}")]
    InvalidValue {
        /// The message.
        tag: Tag,
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: i64,
    },
    /// The body has bytes left after its last field.
    #[error("message {tag} has {extra} unexpected bytes after its last field")]
    TrailingBytes {
        /// The message.
        tag: Tag,
        /// How many bytes are left over.
        extra: usize,
    },
    /// The tag byte is not a message this side sends.
    #[error("unknown {direction} message type {tag}")]
    UnknownTag {
        /// The tag found.
        tag: Tag,
        /// Which side was expected to have sent it.
        direction: Direction,
    },
    /// A startup packet asks for a protocol version or request code this crate does not speak.
    #[error("unsupported startup request code {major}.{minor}")]
    UnsupportedProtocol {
        /// Upper 16 bits of the request code.
        major: u16,
        /// Lower 16 bits of the request code.
        minor: u16,
    },
}

/// A value that cannot be written as a protocol message. Nothing is appended to
/// the destination buffer when encoding fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string field contains a NUL byte, which would end it early on the wire.
    #[error("message {tag}: string field {field} contains a NUL byte")]
    NulInString {
        /// The message.
        tag: Tag,
        /// The field.
        field: &'static str,
    },
    /// A list has more items than its count field can hold.
    #[error("message {tag}: field {field} has {count} items, limit is {max}")]
    TooManyItems {
        /// The message.
        tag: Tag,
        /// The list field.
        field: &'static str,
        /// How many items were given.
        count: usize,
        /// The largest count the field can hold.
        max: usize,
    },
    /// A single value or the whole message exceeds the protocol's signed 32-bit lengths.
    #[error("message {tag}: {field} is {len} bytes, too long for the protocol")]
    TooLong {
        /// The message.
        tag: Tag,
        /// The field, or `"message"` for the whole message.
        field: &'static str,
        /// The length that did not fit.
        len: usize,
    },
}

/// A SCRAM-SHA-256 or md5 authentication that cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The password (proof or md5 response) does not match. Answer with SQLSTATE 28P01.
    #[error("password authentication failed")]
    WrongPassword,
    /// The server's signature in server-final does not match: the server does not
    /// know the verifier, or someone is in the middle.
    #[error("the server's SCRAM signature does not match")]
    ServerSignatureMismatch,
    /// A SCRAM message does not follow RFC 5802's grammar.
    #[error("malformed SCRAM message: {0}")]
    MalformedMessage(&'static str),
    /// The client asked for a channel binding type (`p=NAME`) other than
    /// `tls-server-end-point`, the only one offered.
    #[error("unsupported SCRAM channel-binding type")]
    ChannelBindingNotSupported,
    /// client-final's channel binding (`c=`) is not client-first's gs2 header with the
    /// binding data this side has: another certificate (someone in the middle), or
    /// another header.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The nonce in client-final or server-first does not continue the exchange's nonce.
    #[error("SCRAM nonce does not match")]
    NonceMismatch,
    /// The server sent an error in server-final (`e=`).
    #[error("the server rejected SCRAM authentication: {0}")]
    ServerError(String),
    /// A SCRAM verifier (`SCRAM-SHA-256$…`) or md5 hash (`md5…`) cannot be parsed.
    #[error("invalid stored password: {0}")]
    InvalidSecret(&'static str),
    /// A step was called before the previous one completed, or after the exchange ended.
    #[error("SCRAM step called out of order: {0}")]
    OutOfOrder(&'static str),
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
}
