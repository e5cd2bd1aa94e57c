//! Reading and writing the fields of one message body, with bounds checks on
//! every read and length patching on every write.
//!
//! The types here are `pub` only so that [`crate::list::ListItem`] can name
//! them; they are not re-exported from the crate root.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError, Tag};

/// Reads the fields of one message body front to back. Every read checks the
/// remaining length first; nothing here panics on any input.
#[derive(Debug, Clone)]
pub struct BodyReader<'a> {
    tag: Tag,
    buf: &'a [u8],
}

impl<'a> BodyReader<'a> {
    /// A reader over `buf`, the body of message `tag` (without tag and length).
    pub fn new(tag: Tag, buf: &'a [u8]) -> Self {
        BodyReader { tag, buf }
    }

    /// The message being read, for error context.
    pub fn tag(&self) -> Tag {
        self.tag
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    /// Takes `n` bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                field,
                missing: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.bytes(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a big-endian Int16.
    pub fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian Int16 as unsigned (PostgreSQL reads list counts this way).
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian Int32.
    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian Int32 as unsigned (OIDs).
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array::<8>(field).map(u64::from_be_bytes)
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a NUL-terminated string as raw bytes (without the NUL).
    pub fn cstr_bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let Some(end) = memchr::memchr(0, self.buf) else {
            return Err(DecodeError::UnterminatedString {
                tag: self.tag,
                field,
            });
        };
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// Reads a NUL-terminated UTF-8 string (without the NUL).
    pub fn cstr(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let bytes = self.cstr_bytes(field)?;
        self.utf8(bytes, field)
    }

    /// Checks that `bytes` are UTF-8, with this message as context.
    pub fn utf8(&self, bytes: &'a [u8], field: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 {
            tag: self.tag,
            field,
        })
    }

    /// Reads an Int32 length followed by that many bytes; length -1 is `None` (SQL NULL).
    pub fn nullable_bytes(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.i32(field)? {
            -1 => Ok(None),
            len if len < 0 => Err(self.invalid(field, len.into())),
            len => self.bytes(len as usize, field).map(Some),
        }
    }

    /// The error for a field holding a value the protocol does not allow.
    pub fn invalid(&self, field: &'static str, value: i64) -> DecodeError {
        DecodeError::InvalidValue {
            tag: self.tag,
            field,
            value,
        }
    }

    /// Checks that the whole body was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                tag: self.tag,
                extra: self.buf.len(),
            })
        }
    }
}

/// Appends one message to a buffer: tag, a length placeholder patched at the
/// end, then the fields. Built by [`write_message`] / [`write_untagged`].
#[derive(Debug)]
pub struct MessageWriter<'b> {
    dst: &'b mut BytesMut,
    tag: Tag,
}

impl MessageWriter<'_> {
    /// The message being written, for error context.
    pub fn tag(&self) -> Tag {
        self.tag
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.dst.put_u8(v);
    }

    /// Appends a big-endian Int16.
    pub fn i16(&mut self, v: i16) {
        self.dst.put_i16(v);
    }

    /// Appends a big-endian Int32.
    pub fn i32(&mut self, v: i32) {
        self.dst.put_i32(v);
    }

    /// Appends a big-endian unsigned 32-bit value (OIDs).
    pub fn u32(&mut self, v: u32) {
        self.dst.put_u32(v);
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.dst.put_slice(v);
    }

    /// Appends a string and its NUL terminator; a NUL inside the string is an error.
    pub fn cstr(&mut self, field: &'static str, s: &str) -> Result<(), EncodeError> {
        self.cstr_bytes(field, s.as_bytes())
    }

    /// Appends bytes and a NUL terminator; a NUL inside is an error.
    pub fn cstr_bytes(&mut self, field: &'static str, s: &[u8]) -> Result<(), EncodeError> {
        if s.contains(&0) {
            return Err(EncodeError::NulInString {
                tag: self.tag,
                field,
            });
        }
        self.dst.put_slice(s);
        self.dst.put_u8(0);
        Ok(())
    }

    /// Appends an Int16 list count, checking it fits in 16 unsigned bits.
    pub fn count_u16(&mut self, field: &'static str, count: usize) -> Result<(), EncodeError> {
        let n = u16::try_from(count).map_err(|_| EncodeError::TooManyItems {
            tag: self.tag,
            field,
            count,
            max: u16::MAX as usize,
        })?;
        self.dst.put_u16(n);
        Ok(())
    }

    /// Appends an Int32 list count, checking it fits in a non-negative Int32.
    pub fn count_i32(&mut self, field: &'static str, count: usize) -> Result<(), EncodeError> {
        let n = i32::try_from(count).map_err(|_| EncodeError::TooManyItems {
            tag: self.tag,
            field,
            count,
            max: i32::MAX as usize,
        })?;
        self.dst.put_i32(n);
        Ok(())
    }

    /// Appends an Int32 length and the bytes, or -1 for `None` (SQL NULL).
    pub fn nullable_bytes(
        &mut self,
        field: &'static str,
        v: Option<&[u8]>,
    ) -> Result<(), EncodeError> {
        match v {
            None => self.dst.put_i32(-1),
            Some(bytes) => {
                let len = i32::try_from(bytes.len()).map_err(|_| EncodeError::TooLong {
                    tag: self.tag,
                    field,
                    len: bytes.len(),
                })?;
                self.dst.put_i32(len);
                self.dst.put_slice(bytes);
            }
        }
        Ok(())
    }
}

/// Appends a tagged message. On error the buffer is left as it was.
pub fn write_message(
    dst: &mut BytesMut,
    tag: u8,
    body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = dst.len();
    dst.put_u8(tag);
    write_length_prefixed(dst, start, Tag(tag), body)
}

/// Appends an untagged startup-phase packet. On error the buffer is left as it was.
pub fn write_untagged(
    dst: &mut BytesMut,
    body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = dst.len();
    write_length_prefixed(dst, start, Tag::STARTUP, body)
}

fn write_length_prefixed(
    dst: &mut BytesMut,
    start: usize,
    tag: Tag,
    body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let len_at = dst.len();
    dst.put_i32(0);
    let mut writer = MessageWriter { dst, tag };
    if let Err(e) = body(&mut writer) {
        dst.truncate(start);
        return Err(e);
    }
    let len = dst.len() - len_at;
    let Ok(len32) = i32::try_from(len) else {
        dst.truncate(start);
        return Err(EncodeError::TooLong {
            tag,
            field: "message",
            len,
        });
    };
    dst[len_at..len_at + 4].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// Appends a message whose body is fixed bytes and cannot fail.
pub fn write_fixed(dst: &mut BytesMut, tag: u8, body: &[u8]) {
    dst.reserve(5 + body.len());
    dst.put_u8(tag);
    // Callers pass bodies of a few bytes, far below i32::MAX.
    dst.put_i32(4 + body.len() as i32);
    dst.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_errors_not_panics() {
        let mut r = BodyReader::new(Tag(b'Q'), &[1, 2]);
        assert_eq!(
            r.i32("x"),
            Err(DecodeError::Truncated {
                tag: Tag(b'Q'),
                field: "x",
                missing: 2
            })
        );
        assert!(matches!(
            r.cstr("s"),
            Err(DecodeError::UnterminatedString { .. })
        ));
        let mut r = BodyReader::new(Tag(b'D'), &[0xff, 0xff, 0xff, 0xfe]);
        assert!(matches!(
            r.nullable_bytes("v"),
            Err(DecodeError::InvalidValue { value: -2, .. })
        ));
    }

    #[test]
    fn a_failed_write_leaves_the_buffer_untouched() {
        let mut dst = BytesMut::from(&b"keep"[..]);
        let err = write_message(&mut dst, b'Q', |w| w.cstr("query", "a\0b")).unwrap_err();
        assert_eq!(
            err,
            EncodeError::NulInString {
                tag: Tag(b'Q'),
                field: "query"
            }
        );
        assert_eq!(&dst[..], b"keep");
    }

    #[test]
    fn length_is_patched_after_the_body() {
        let mut dst = BytesMut::new();
        write_message(&mut dst, b'Q', |w| w.cstr("query", "SELECT 1")).unwrap();
        assert_eq!(&dst[..], b"Q\0\0\0\x0dSELECT 1\0");
        let mut dst = BytesMut::new();
        write_fixed(&mut dst, b'Z', b"I");
        assert_eq!(&dst[..], b"Z\0\0\0\x05I");
    }
}
