//! Messages a client (frontend) sends after the startup packet: simple and
//! extended query, COPY, authentication responses, FunctionCall.
//!
//! Decoders borrow from the frame; encoders append to a [`BytesMut`].

use bytes::BytesMut;

use crate::body::{write_fixed, write_message, BodyReader};
use crate::copy::{CopyData, CopyFail};
use crate::error::{DecodeError, Direction, EncodeError, Tag};
use crate::format::{Format, Oid, Target};
use crate::list::List;

/// Tag bytes of frontend messages.
pub mod tag {
    /// Query (simple protocol).
    pub const QUERY: u8 = b'Q';
    /// Parse.
    pub const PARSE: u8 = b'P';
    /// Bind.
    pub const BIND: u8 = b'B';
    /// Describe.
    pub const DESCRIBE: u8 = b'D';
    /// Execute.
    pub const EXECUTE: u8 = b'E';
    /// Close.
    pub const CLOSE: u8 = b'C';
    /// Sync.
    pub const SYNC: u8 = b'S';
    /// Flush.
    pub const FLUSH: u8 = b'H';
    /// Terminate.
    pub const TERMINATE: u8 = b'X';
    /// CopyData.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone.
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail.
    pub const COPY_FAIL: u8 = b'f';
    /// PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse.
    pub const AUTH_RESPONSE: u8 = b'p';
    /// FunctionCall.
    pub const FUNCTION_CALL: u8 = b'F';
}

/// A decoded frontend message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    /// Query: one or more SQL statements, simple protocol.
    Query(Query<'a>),
    /// Parse: prepare a statement.
    Parse(Parse<'a>),
    /// Bind: bind parameters to a prepared statement, making a portal.
    Bind(Bind<'a>),
    /// Describe a statement or portal.
    Describe(Describe<'a>),
    /// Execute a portal.
    Execute(Execute<'a>),
    /// Close a statement or portal.
    Close(Close<'a>),
    /// Sync: end of an extended-query batch.
    Sync,
    /// Flush: send pending output now.
    Flush,
    /// Terminate: the client is leaving.
    Terminate,
    /// CopyData (COPY FROM STDIN).
    CopyData(CopyData<'a>),
    /// CopyDone.
    CopyDone,
    /// CopyFail.
    CopyFail(CopyFail<'a>),
    /// `'p'`: its meaning depends on the authentication request it answers.
    AuthResponse(AuthResponse<'a>),
    /// FunctionCall (fast-path interface), kept opaque.
    FunctionCall(FunctionCall<'a>),
}

impl<'a> FrontendMessage<'a> {
    /// Decodes the body of a message with tag `tag`.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(match tag {
            tag::QUERY => FrontendMessage::Query(Query::decode(body)?),
            tag::PARSE => FrontendMessage::Parse(Parse::decode(body)?),
            tag::BIND => FrontendMessage::Bind(Bind::decode(body)?),
            tag::DESCRIBE => FrontendMessage::Describe(Describe::decode(body)?),
            tag::EXECUTE => FrontendMessage::Execute(Execute::decode(body)?),
            tag::CLOSE => FrontendMessage::Close(Close::decode(body)?),
            tag::SYNC => empty(tag, body, FrontendMessage::Sync)?,
            tag::FLUSH => empty(tag, body, FrontendMessage::Flush)?,
            tag::TERMINATE => empty(tag, body, FrontendMessage::Terminate)?,
            tag::COPY_DATA => FrontendMessage::CopyData(CopyData::decode(body)?),
            tag::COPY_DONE => empty(tag, body, FrontendMessage::CopyDone)?,
            tag::COPY_FAIL => FrontendMessage::CopyFail(CopyFail::decode(body)?),
            tag::AUTH_RESPONSE => FrontendMessage::AuthResponse(AuthResponse { body }),
            tag::FUNCTION_CALL => FrontendMessage::FunctionCall(FunctionCall { body }),
            tag => {
                return Err(DecodeError::UnknownTag {
                    tag: Tag(tag),
                    direction: Direction::Frontend,
                })
            }
        })
    }

    /// The message's tag byte.
    pub fn tag(&self) -> u8 {
        match self {
            FrontendMessage::Query(_) => tag::QUERY,
            FrontendMessage::Parse(_) => tag::PARSE,
            FrontendMessage::Bind(_) => tag::BIND,
            FrontendMessage::Describe(_) => tag::DESCRIBE,
            FrontendMessage::Execute(_) => tag::EXECUTE,
            FrontendMessage::Close(_) => tag::CLOSE,
            FrontendMessage::Sync => tag::SYNC,
            FrontendMessage::Flush => tag::FLUSH,
            FrontendMessage::Terminate => tag::TERMINATE,
            FrontendMessage::CopyData(_) => tag::COPY_DATA,
            FrontendMessage::CopyDone => tag::COPY_DONE,
            FrontendMessage::CopyFail(_) => tag::COPY_FAIL,
            FrontendMessage::AuthResponse(_) => tag::AUTH_RESPONSE,
            FrontendMessage::FunctionCall(_) => tag::FUNCTION_CALL,
        }
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            FrontendMessage::Query(m) => m.encode(dst),
            FrontendMessage::Parse(m) => m.encode(dst),
            FrontendMessage::Bind(m) => m.encode(dst),
            FrontendMessage::Describe(m) => m.encode(dst),
            FrontendMessage::Execute(m) => m.encode(dst),
            FrontendMessage::Close(m) => m.encode(dst),
            FrontendMessage::CopyData(m) => m.encode(dst),
            FrontendMessage::CopyFail(m) => m.encode(dst),
            FrontendMessage::AuthResponse(m) => m.encode(dst),
            FrontendMessage::FunctionCall(m) => m.encode(dst),
            FrontendMessage::Sync
            | FrontendMessage::Flush
            | FrontendMessage::Terminate
            | FrontendMessage::CopyDone => {
                write_fixed(dst, self.tag(), &[]);
                Ok(())
            }
        }
    }
}

fn empty<'a>(
    tag: u8,
    body: &[u8],
    msg: FrontendMessage<'a>,
) -> Result<FrontendMessage<'a>, DecodeError> {
    BodyReader::new(Tag(tag), body).finish()?;
    Ok(msg)
}

/// Query: SQL text for the simple query protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    /// The SQL, possibly several statements.
    pub sql: &'a str,
}

impl<'a> Query<'a> {
    /// Decodes a Query body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::QUERY), body);
        let sql = r.cstr("query")?;
        r.finish()?;
        Ok(Query { sql })
    }

    /// As [`Query::decode`], but text that is not UTF-8 is escaped (see
    /// [`crate::text`]) into `owned`, which the query then borrows.
    pub fn decode_escaped(body: &'a [u8], owned: &'a mut String) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::QUERY), body);
        let sql = r.cstr_bytes("query")?;
        r.finish()?;
        Ok(Query {
            sql: escaped(sql, owned),
        })
    }

    /// Appends the message (escaped text as the bytes it stands for).
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::QUERY, |w| {
            w.cstr_bytes("query", &crate::text::unescape(self.sql))
        })
    }
}

/// `bytes` as text, escaped into `owned` when they must be (see [`crate::text`]).
fn escaped<'a>(bytes: &'a [u8], owned: &'a mut String) -> &'a str {
    match crate::text::escape(bytes) {
        std::borrow::Cow::Borrowed(text) => text,
        std::borrow::Cow::Owned(text) => {
            *owned = text;
            owned
        }
    }
}

/// Parse: prepare `query` as statement `name` (empty: the unnamed statement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name; empty for the unnamed statement.
    pub name: &'a str,
    /// The SQL with `$n` placeholders.
    pub query: &'a str,
    /// Parameter type OIDs the client fixes; 0 leaves one to the server.
    pub param_types: List<'a, Oid>,
}

impl<'a> Parse<'a> {
    /// Decodes a Parse body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        Self::read(body, |r, bytes| r.utf8(bytes, "query"))
    }

    /// As [`Parse::decode`], but query text that is not UTF-8 is escaped (see
    /// [`crate::text`]) into `owned`, which the message then borrows.
    pub fn decode_escaped(body: &'a [u8], owned: &'a mut String) -> Result<Self, DecodeError> {
        Self::read(body, |_, bytes| Ok(escaped(bytes, owned)))
    }

    /// A Parse body, its query text made a `str` by `text`.
    fn read(
        body: &'a [u8],
        text: impl FnOnce(&BodyReader<'a>, &'a [u8]) -> Result<&'a str, DecodeError>,
    ) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::PARSE), body);
        let name = r.cstr("statement name")?;
        let query = r.cstr_bytes("query")?;
        let query = text(&r, query)?;
        let count = r.u16("parameter type count")?;
        let param_types = List::read_counted(&mut r, count.into(), "parameter types")?;
        r.finish()?;
        Ok(Parse {
            name,
            query,
            param_types,
        })
    }

    /// Appends the message (escaped text as the bytes it stands for).
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::PARSE, |w| {
            w.cstr("statement name", self.name)?;
            w.cstr_bytes("query", &crate::text::unescape(self.query))?;
            self.param_types.write_counted_u16(w, "parameter types")
        })
    }
}

/// Bind: make portal `portal` from statement `statement` and parameter values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Portal name; empty for the unnamed portal.
    pub portal: &'a str,
    /// Statement name; empty for the unnamed statement.
    pub statement: &'a str,
    /// Parameter formats: none (all text), one (for all) or one per parameter.
    pub param_formats: List<'a, Format>,
    /// Parameter values; `None` is NULL.
    pub params: List<'a, Option<&'a [u8]>>,
    /// Result column formats: none (all text), one (for all) or one per column.
    pub result_formats: List<'a, Format>,
}

impl<'a> Bind<'a> {
    /// Decodes a Bind body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::BIND), body);
        let portal = r.cstr("portal name")?;
        let statement = r.cstr("statement name")?;
        let count = r.u16("parameter format count")?;
        let param_formats = List::read_counted(&mut r, count.into(), "parameter formats")?;
        let count = r.u16("parameter count")?;
        let params = List::read_counted(&mut r, count.into(), "parameter values")?;
        let count = r.u16("result format count")?;
        let result_formats = List::read_counted(&mut r, count.into(), "result formats")?;
        r.finish()?;
        Ok(Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    /// The format of parameter `index`, following the protocol's rule: no
    /// codes means text, one code applies to all, otherwise one per parameter.
    /// `None` when there are several codes and `index` has none.
    pub fn param_format(&self, index: usize) -> Option<Format> {
        format_at(&self.param_formats, index)
    }

    /// The format of result column `index`, by the same rule as [`Bind::param_format`].
    pub fn result_format(&self, index: usize) -> Option<Format> {
        format_at(&self.result_formats, index)
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::BIND, |w| {
            w.cstr("portal name", self.portal)?;
            w.cstr("statement name", self.statement)?;
            self.param_formats
                .write_counted_u16(w, "parameter formats")?;
            self.params.write_counted_u16(w, "parameter values")?;
            self.result_formats.write_counted_u16(w, "result formats")
        })
    }
}

/// The names at the head of a Bind body, and the rest of it (formats, values, result
/// formats) as bytes: what a proxy needs to relay a Bind under another statement name
/// without decoding and encoding its parameters. The rest is not checked here; the
/// server checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindHead<'a> {
    /// Portal name; empty for the unnamed portal.
    pub portal: &'a str,
    /// Statement name; empty for the unnamed statement.
    pub statement: &'a str,
    /// Everything after the statement name, as sent.
    pub rest: &'a [u8],
}

impl<'a> BindHead<'a> {
    /// Reads the two names of a Bind body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::BIND), body);
        let portal = r.cstr("portal name")?;
        let statement = r.cstr("statement name")?;
        Ok(BindHead {
            portal,
            statement,
            rest: r.rest(),
        })
    }

    /// Appends the Bind with `statement` in place of its statement name, the rest of
    /// the body copied as it came.
    pub fn encode_renamed(&self, statement: &str, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::BIND, |w| {
            w.cstr("portal name", self.portal)?;
            w.cstr("statement name", statement)?;
            w.bytes(self.rest);
            Ok(())
        })
    }
}

fn format_at(formats: &List<'_, Format>, index: usize) -> Option<Format> {
    match formats.len() {
        0 => Some(Format::Text),
        1 => formats.get(0),
        _ => formats.get(index),
    }
}

/// Describe a prepared statement or a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Describe<'a> {
    /// Statement or portal.
    pub target: Target,
    /// Its name; empty for the unnamed one.
    pub name: &'a str,
}

impl<'a> Describe<'a> {
    /// Decodes a Describe body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let (target, name) = decode_target(tag::DESCRIBE, body)?;
        Ok(Describe { target, name })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode_target(dst, tag::DESCRIBE, self.target, self.name)
    }
}

/// Close a prepared statement or a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close<'a> {
    /// Statement or portal.
    pub target: Target,
    /// Its name; empty for the unnamed one.
    pub name: &'a str,
}

impl<'a> Close<'a> {
    /// Decodes a Close body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let (target, name) = decode_target(tag::CLOSE, body)?;
        Ok(Close { target, name })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode_target(dst, tag::CLOSE, self.target, self.name)
    }
}

fn decode_target(tag: u8, body: &[u8]) -> Result<(Target, &str), DecodeError> {
    let mut r = BodyReader::new(Tag(tag), body);
    let b = r.u8("target")?;
    let target = Target::from_byte(b).ok_or_else(|| r.invalid("target", b.into()))?;
    let name = r.cstr("name")?;
    r.finish()?;
    Ok((target, name))
}

fn encode_target(
    dst: &mut BytesMut,
    tag: u8,
    target: Target,
    name: &str,
) -> Result<(), EncodeError> {
    write_message(dst, tag, |w| {
        w.u8(target.byte());
        w.cstr("name", name)
    })
}

/// Execute a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execute<'a> {
    /// Portal name; empty for the unnamed portal.
    pub portal: &'a str,
    /// Row limit; 0 means no limit (PortalSuspended ends a limited batch).
    pub max_rows: i32,
}

impl<'a> Execute<'a> {
    /// Decodes an Execute body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::EXECUTE), body);
        let portal = r.cstr("portal name")?;
        let max_rows = r.i32("max rows")?;
        r.finish()?;
        Ok(Execute { portal, max_rows })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::EXECUTE, |w| {
            w.cstr("portal name", self.portal)?;
            w.i32(self.max_rows);
            Ok(())
        })
    }
}

/// The body of a `'p'` message. What it holds depends on the authentication
/// request it answers, so it is decoded by the side that knows: a password or
/// md5 response after AuthenticationCleartextPassword / MD5Password, a
/// SASLInitialResponse after AuthenticationSASL, a SASLResponse after
/// AuthenticationSASLContinue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthResponse<'a> {
    /// The raw body.
    pub body: &'a [u8],
}

impl<'a> AuthResponse<'a> {
    /// Reads the body as a PasswordMessage.
    pub fn password(&self) -> Result<PasswordMessage<'a>, DecodeError> {
        PasswordMessage::decode(self.body)
    }

    /// Reads the body as a SASLInitialResponse.
    pub fn sasl_initial(&self) -> Result<SaslInitialResponse<'a>, DecodeError> {
        SaslInitialResponse::decode(self.body)
    }

    /// Reads the body as a SASLResponse.
    pub fn sasl(&self) -> SaslResponse<'a> {
        SaslResponse { data: self.body }
    }

    /// Appends the message with the raw body.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::AUTH_RESPONSE, |w| {
            w.bytes(self.body);
            Ok(())
        })
    }
}

/// PasswordMessage: a cleartext password, or `md5…` answering an md5 challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordMessage<'a> {
    /// The password or md5 response.
    pub password: &'a str,
}

impl<'a> PasswordMessage<'a> {
    /// Decodes a PasswordMessage body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::AUTH_RESPONSE), body);
        let password = r.cstr("password")?;
        r.finish()?;
        Ok(PasswordMessage { password })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::AUTH_RESPONSE, |w| {
            w.cstr("password", self.password)
        })
    }
}

/// SASLInitialResponse: the chosen mechanism and the client-first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    /// Mechanism name, e.g. `SCRAM-SHA-256`.
    pub mechanism: &'a str,
    /// Initial client response; `None` when absent (length -1).
    pub data: Option<&'a [u8]>,
}

impl<'a> SaslInitialResponse<'a> {
    /// Decodes a SASLInitialResponse body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::AUTH_RESPONSE), body);
        let mechanism = r.cstr("mechanism")?;
        let data = r.nullable_bytes("initial response")?;
        r.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::AUTH_RESPONSE, |w| {
            w.cstr("mechanism", self.mechanism)?;
            w.nullable_bytes("initial response", self.data)
        })
    }
}

/// SASLResponse: a later SASL message from the client (SCRAM client-final).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslResponse<'a> {
    /// Mechanism-specific data.
    pub data: &'a [u8],
}

impl SaslResponse<'_> {
    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::AUTH_RESPONSE, |w| {
            w.bytes(self.data);
            Ok(())
        })
    }
}

/// FunctionCall: the fast-path function call interface, relayed as opaque bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionCall<'a> {
    /// The raw body.
    pub body: &'a [u8],
}

impl FunctionCall<'_> {
    /// Appends the message with the raw body.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::FUNCTION_CALL, |w| {
            w.bytes(self.body);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_formats_follow_the_zero_one_many_rule() {
        let none = Bind {
            portal: "",
            statement: "s1",
            param_formats: List::default(),
            params: List::default(),
            result_formats: List::from(&[Format::Binary]),
        };
        assert_eq!(none.param_format(5), Some(Format::Text));
        assert_eq!(none.result_format(3), Some(Format::Binary));
        let many = Bind {
            param_formats: List::from(&[Format::Text, Format::Binary]),
            ..none
        };
        assert_eq!(many.param_format(1), Some(Format::Binary));
        assert_eq!(many.param_format(2), None);
    }

    #[test]
    fn decodes_a_bind_from_wire_bytes() {
        // portal "", statement "s", formats [1], params ["42", NULL], results []
        let body = b"\0s\0\0\x01\0\x01\0\x02\0\0\0\x0242\xff\xff\xff\xff\0\0";
        let bind = Bind::decode(body).unwrap();
        assert_eq!(bind.statement, "s");
        let values: Vec<_> = bind.params.iter().collect();
        assert_eq!(values, [Some(&b"42"[..]), None]);
        assert_eq!(bind.param_format(1), Some(Format::Binary));
        assert!(matches!(
            Bind::decode(&body[..body.len() - 1]),
            Err(DecodeError::Truncated {
                field: "result format count",
                ..
            })
        ));
    }

    #[test]
    fn a_bind_renamed_as_bytes_is_the_same_bind_under_the_new_name() {
        let body = b"p1\0s\0\0\x01\0\x01\0\x02\0\0\0\x0242\xff\xff\xff\xff\0\0";
        let head = BindHead::decode(body).unwrap();
        assert_eq!((head.portal, head.statement), ("p1", "s"));
        let mut out = BytesMut::new();
        head.encode_renamed("pgopt_7", &mut out).unwrap();
        assert_eq!(out[0], b'B');
        assert_eq!(
            u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
        let renamed = Bind::decode(&out[5..]).unwrap();
        let original = Bind::decode(body).unwrap();
        assert_eq!(renamed.statement, "pgopt_7");
        assert_eq!(renamed.portal, original.portal);
        assert!(renamed.params.iter().eq(original.params.iter()));
        assert_eq!(renamed.param_format(1), original.param_format(1));
        // Only the names are read: a missing statement name is an error, the rest not.
        assert!(BindHead::decode(b"p1\0s").is_err());
        assert_eq!(BindHead::decode(b"\0s\0\x07").unwrap().rest, b"\x07");
        assert!(head.encode_renamed("a\0b", &mut out).is_err());
    }

    #[test]
    fn rejects_bad_targets_and_unknown_tags() {
        assert!(matches!(
            Describe::decode(b"X\0"),
            Err(DecodeError::InvalidValue {
                field: "target",
                value: 88,
                ..
            })
        ));
        assert!(matches!(
            FrontendMessage::decode(b'Z', b""),
            Err(DecodeError::UnknownTag { .. })
        ));
        assert!(matches!(
            FrontendMessage::decode(b'S', b"x"),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn auth_response_reads_as_each_kind() {
        let mut buf = BytesMut::new();
        SaslInitialResponse {
            mechanism: "SCRAM-SHA-256",
            data: Some(b"n,,n=,r=abc"),
        }
        .encode(&mut buf)
        .unwrap();
        let FrontendMessage::AuthResponse(p) = FrontendMessage::decode(b'p', &buf[5..]).unwrap()
        else {
            panic!("not an auth response")
        };
        let initial = p.sasl_initial().unwrap();
        assert_eq!(initial.mechanism, "SCRAM-SHA-256");
        assert_eq!(initial.data, Some(&b"n,,n=,r=abc"[..]));
        assert!(p.password().is_err(), "two strings are not one password");
    }
}
