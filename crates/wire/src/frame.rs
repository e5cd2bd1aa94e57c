//! Framing of normal-phase messages (tag byte + Int32 length + body): a
//! zero-copy splitter over [`BytesMut`] that hands out whole raw frames, so the
//! proxy can relay them as they came and decode only the ones it looks at.

use bytes::{Buf, Bytes, BytesMut};

use crate::backend::BackendMessage;
use crate::error::{DecodeError, Tag};
use crate::frontend::FrontendMessage;

/// Default limit on a message's declared length: PostgreSQL's own limit for
/// large messages (`PQ_LARGE_MESSAGE_LIMIT`, 1 GiB - 1).
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 0x3fff_ffff;

/// PostgreSQL's limit for messages that are never large (`PQ_SMALL_MESSAGE_LIMIT`):
/// a sensible cap for authentication messages before a client is trusted.
pub const SMALL_MESSAGE_LEN: u32 = 10_000;

/// Size of a tagged message's header: tag byte and Int32 length.
pub const HEADER_LEN: usize = 5;

/// The header of a tagged message whose declared length passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type byte.
    pub tag: u8,
    /// The declared length: the length field itself plus the body.
    pub len: u32,
}

impl FrameHeader {
    /// Bytes the whole frame occupies: tag, length and body.
    pub fn frame_len(&self) -> usize {
        self.len as usize + 1
    }
}

/// Reads and checks the header at the start of `buf`.
///
/// `Ok(None)` when fewer than 5 bytes are buffered. Errors when the declared
/// length is below 4 or above `max_len`. Use it to reserve room for a large
/// frame before it arrives.
pub fn peek_header(buf: &[u8], max_len: u32) -> Result<Option<FrameHeader>, DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(DecodeError::LengthTooShort {
            tag: Tag(tag),
            len,
            min: 4,
        });
    }
    let len = len as u32;
    if len > max_len {
        return Err(DecodeError::TooLong {
            tag: Tag(tag),
            len,
            max: max_len,
        });
    }
    Ok(Some(FrameHeader { tag, len }))
}

/// Length of the first frame in `buf` when it is complete, `Ok(None)` when more
/// bytes are needed. Lets a relay find a run of whole frames and split them
/// off with one `split_to`.
pub fn complete_frame_len(buf: &[u8], max_len: u32) -> Result<Option<usize>, DecodeError> {
    Ok(peek_header(buf, max_len)?
        .map(|h| h.frame_len())
        .filter(|&n| n <= buf.len()))
}

/// Splits the first complete frame off `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (nothing is consumed), and an
/// error when the declared length is below 4 or above `max_len` (the
/// connection cannot be resynchronised: close it). The frame shares `buf`'s
/// allocation; no body bytes are copied.
pub fn split_frame(buf: &mut BytesMut, max_len: u32) -> Result<Option<Frame>, DecodeError> {
    let Some(n) = complete_frame_len(buf, max_len)? else {
        return Ok(None);
    };
    let bytes = buf.split_to(n).freeze();
    Ok(Some(Frame { bytes }))
}

/// One whole tagged message as it was on the wire: tag, length and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Always at least [`HEADER_LEN`] bytes, with a length field matching the rest.
    bytes: Bytes,
}

impl Frame {
    /// Wraps bytes holding exactly one frame, checking its header.
    pub fn from_bytes(mut bytes: Bytes, max_len: u32) -> Result<Frame, DecodeError> {
        let Some(header) = peek_header(&bytes, max_len)? else {
            return Err(DecodeError::Truncated {
                tag: Tag(bytes.first().copied().unwrap_or(0)),
                field: "header",
                missing: HEADER_LEN.saturating_sub(bytes.len()),
            });
        };
        let n = header.frame_len();
        if bytes.len() < n {
            return Err(DecodeError::Truncated {
                tag: Tag(header.tag),
                field: "body",
                missing: n - bytes.len(),
            });
        }
        if bytes.len() > n {
            return Err(DecodeError::TrailingBytes {
                tag: Tag(header.tag),
                extra: bytes.len() - n,
            });
        }
        bytes.truncate(n);
        Ok(Frame { bytes })
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The body: everything after tag and length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The whole frame as it was on the wire.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The whole frame as it was on the wire, to relay unchanged.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The body, sharing the frame's allocation.
    pub fn into_body(mut self) -> Bytes {
        self.bytes.advance(HEADER_LEN);
        self.bytes
    }

    /// Bytes on the wire: tag, length and body.
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }

    /// Decodes the frame as a message from a client.
    pub fn frontend(&self) -> Result<FrontendMessage<'_>, DecodeError> {
        FrontendMessage::decode(self.tag(), self.body())
    }

    /// Decodes the frame as a message from a server.
    pub fn backend(&self) -> Result<BackendMessage<'_>, DecodeError> {
        BackendMessage::decode(self.tag(), self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_whole_frames_and_waits_for_partial_ones() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0dSELECT 1\0S\0\0\0\x04Z\0\0"[..]);
        let q = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(q.tag(), b'Q');
        assert_eq!(q.body(), b"SELECT 1\0");
        assert_eq!(q.wire_len(), 14);
        let s = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!((s.tag(), s.body()), (b'S', &b""[..]));
        assert_eq!(split_frame(&mut buf, 100).unwrap(), None);
        assert_eq!(&buf[..], b"Z\0\0", "a partial frame stays buffered");
        buf.extend_from_slice(b"\0\x05I");
        let z = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(z.into_body(), Bytes::from_static(b"I"));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_lengths_below_four_and_above_the_limit() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert_eq!(
            split_frame(&mut buf, 100),
            Err(DecodeError::LengthTooShort {
                tag: Tag(b'Q'),
                len: 3,
                min: 4
            })
        );
        let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(matches!(
            split_frame(&mut buf, 100),
            Err(DecodeError::LengthTooShort { len: -1, .. })
        ));
        let mut buf = BytesMut::from(&b"d\0\0\0\x65"[..]);
        assert_eq!(
            split_frame(&mut buf, 100),
            Err(DecodeError::TooLong {
                tag: Tag(b'd'),
                len: 101,
                max: 100
            })
        );
        // The limit applies before the body arrives.
        let mut buf = BytesMut::from(&b"d\x40\0\0\0"[..]);
        assert!(split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN).is_err());
    }

    #[test]
    fn from_bytes_wants_exactly_one_frame() {
        assert!(Frame::from_bytes(Bytes::from_static(b"S\0\0\0\x04"), 10).is_ok());
        assert!(Frame::from_bytes(Bytes::from_static(b"S\0\0"), 10).is_err());
        assert!(Frame::from_bytes(Bytes::from_static(b"S\0\0\0\x05"), 10).is_err());
        assert!(Frame::from_bytes(Bytes::from_static(b"S\0\0\0\x04x"), 10).is_err());
    }
}
