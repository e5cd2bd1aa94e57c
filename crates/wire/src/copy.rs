//! The COPY sub-protocol: CopyData and CopyDone (both directions), CopyFail
//! (client), and CopyIn/CopyOut/CopyBothResponse (server).

use bytes::BytesMut;

use crate::body::{write_message, BodyReader};
use crate::error::{DecodeError, EncodeError, Tag};
use crate::format::Format;
use crate::list::List;

/// Tag of CopyData, sent by either side.
const COPY_DATA: u8 = b'd';

/// CopyData: a chunk of the COPY stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyData<'a> {
    /// The chunk, opaque here.
    pub data: &'a [u8],
}

impl<'a> CopyData<'a> {
    /// Decodes a CopyData body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(CopyData { data: body })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, COPY_DATA, |w| {
            w.bytes(self.data);
            Ok(())
        })
    }
}

/// CopyFail: the client aborts COPY FROM STDIN with a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyFail<'a> {
    /// Why the copy failed; the server reports it in its ErrorResponse.
    pub message: &'a str,
}

impl<'a> CopyFail<'a> {
    /// Tag of CopyFail.
    pub const TAG: u8 = b'f';

    /// Decodes a CopyFail body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(Self::TAG), body);
        let message = r.cstr("message")?;
        r.finish()?;
        Ok(CopyFail { message })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, Self::TAG, |w| w.cstr("message", self.message))
    }
}

/// The body of CopyInResponse (`'G'`), CopyOutResponse (`'H'`) and
/// CopyBothResponse (`'W'`): the overall format and one format per column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyResponse<'a> {
    /// Text (0) or binary (1) COPY.
    pub format: Format,
    /// Per-column formats (all text when `format` is text).
    pub column_formats: List<'a, Format>,
}

impl<'a> CopyResponse<'a> {
    /// Decodes the body of a Copy*Response with tag `tag`.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag), body);
        let code = r.u8("format")?;
        let format =
            Format::from_code(code.into()).ok_or_else(|| r.invalid("format", code.into()))?;
        let count = r.u16("column count")?;
        let column_formats = List::read_counted(&mut r, count.into(), "column formats")?;
        r.finish()?;
        Ok(CopyResponse {
            format,
            column_formats,
        })
    }

    /// Appends the message with tag `tag` (`'G'`, `'H'` or `'W'`).
    pub fn encode(&self, tag: u8, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag, |w| {
            w.u8(self.format.code() as u8);
            self.column_formats.write_counted_u16(w, "column formats")
        })
    }
}
