//! Frame boundaries in a relayed byte stream, without buffering whole frames: bytes are
//! forwarded as they arrive while this tracks where each message starts, so the proxy
//! can see message types (Query, Sync, Terminate, ReadyForQuery…) at O(1) per message
//! and a 200 MB result never sits in memory.

use pgopt_wire::{DecodeError, Tag};

/// A message start seen in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageStart {
    /// Offset of the tag byte in the chunk given to [`Scanner::scan`]; negative when
    /// the message's header began in an earlier chunk.
    pub offset: isize,
    pub tag: u8,
    /// The first body byte when the body is non-empty and already in this chunk
    /// (ReadyForQuery's transaction status).
    pub first_body_byte: Option<u8>,
}

/// Tracks position in a stream of tagged messages across chunks.
#[derive(Debug)]
pub struct Scanner {
    /// Bytes of the current message still to come (after its header).
    remaining: usize,
    /// A header split across chunks.
    header: [u8; 5],
    header_len: usize,
    /// Waiting for the first body byte of a message whose header ended a chunk.
    want_first_byte: Option<u8>,
    max_len: u32,
}

impl Scanner {
    pub fn new(max_len: u32) -> Scanner {
        Scanner {
            remaining: 0,
            header: [0; 5],
            header_len: 0,
            want_first_byte: None,
            max_len,
        }
    }

    /// Walks `chunk`, calling `on_start` for each message that starts in it. Returns
    /// `Ok(())` when the chunk is consistent; a bad length is an error (close).
    pub fn scan(
        &mut self,
        chunk: &[u8],
        mut on_start: impl FnMut(MessageStart),
    ) -> Result<(), DecodeError> {
        let mut pos = 0;
        while pos < chunk.len() {
            if let Some(tag) = self.want_first_byte.take() {
                // The header came in the previous chunk; report it with its first byte.
                on_start(MessageStart {
                    offset: -5,
                    tag,
                    first_body_byte: Some(chunk[pos]),
                });
            }
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len() - pos);
                self.remaining -= skip;
                pos += skip;
                continue;
            }
            let start = pos as isize - self.header_len as isize;
            // Read (the rest of) a 5-byte header.
            let need = 5 - self.header_len;
            let take = need.min(chunk.len() - pos);
            self.header[self.header_len..self.header_len + take]
                .copy_from_slice(&chunk[pos..pos + take]);
            self.header_len += take;
            pos += take;
            if self.header_len < 5 {
                break;
            }
            self.header_len = 0;
            let tag = self.header[0];
            let len = i32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            if len < 4 {
                return Err(DecodeError::LengthTooShort {
                    tag: Tag(tag),
                    len,
                    min: 4,
                });
            }
            if len as u32 > self.max_len {
                return Err(DecodeError::TooLong {
                    tag: Tag(tag),
                    len: len as u32,
                    max: self.max_len,
                });
            }
            self.remaining = len as usize - 4;
            if self.remaining > 0 && pos == chunk.len() {
                self.want_first_byte = Some(tag);
                // Reported when the next chunk brings the first body byte.
                continue;
            }
            on_start(MessageStart {
                offset: start,
                tag,
                first_body_byte: (self.remaining > 0).then(|| chunk[pos]),
            });
        }
        Ok(())
    }

    /// Bytes at the end of the last chunk that began a header not yet complete.
    pub fn partial_header_len(&self) -> usize {
        self.header_len
    }

    /// True between messages (nothing of a message is pending).
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.header_len == 0 && self.want_first_byte.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"C\0\0\0\x0dSELECT 1\0");
        v.extend_from_slice(b"Z\0\0\0\x05I");
        v.extend_from_slice(b"S\0\0\0\x04");
        v.extend_from_slice(b"Z\0\0\0\x05T");
        v
    }

    fn scan_in_chunks(data: &[u8], size: usize) -> Vec<(u8, Option<u8>)> {
        let mut scanner = Scanner::new(1 << 20);
        let mut seen = Vec::new();
        for chunk in data.chunks(size) {
            scanner
                .scan(chunk, |m| seen.push((m.tag, m.first_body_byte)))
                .unwrap();
        }
        assert!(scanner.at_boundary());
        seen
    }

    #[test]
    fn finds_every_message_whatever_the_chunking() {
        let data = messages();
        let whole = scan_in_chunks(&data, data.len());
        assert_eq!(
            whole,
            vec![
                (b'C', Some(b'S')),
                (b'Z', Some(b'I')),
                (b'S', None),
                (b'Z', Some(b'T'))
            ]
        );
        for size in 1..data.len() {
            assert_eq!(scan_in_chunks(&data, size), whole, "chunks of {size}");
        }
    }

    #[test]
    fn offsets_point_at_tags() {
        let data = messages();
        let mut scanner = Scanner::new(1 << 20);
        let mut offsets = Vec::new();
        scanner.scan(&data, |m| offsets.push(m.offset)).unwrap();
        assert_eq!(offsets, vec![0, 14, 20, 25]);
        // A header split across chunks reports where its tag was: before this chunk.
        let mut scanner = Scanner::new(1 << 20);
        let mut seen = Vec::new();
        scanner.scan(&data[..16], |m| seen.push(m.offset)).unwrap();
        assert_eq!(scanner.partial_header_len(), 2);
        scanner.scan(&data[16..], |m| seen.push(m.offset)).unwrap();
        assert_eq!(seen, vec![0, -2, 4, 9]);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut scanner = Scanner::new(100);
        assert!(scanner.scan(b"Q\0\0\0\x02", |_| {}).is_err());
        let mut scanner = Scanner::new(100);
        assert!(scanner.scan(b"Q\0\0\x10\0", |_| {}).is_err());
    }
}
