//! Query text that is not UTF-8, carried in a `&str`.
//!
//! A client whose `client_encoding` is not UTF8 (LATIN1, WIN1252, SJIS…) sends query
//! text PostgreSQL reads in that encoding. pgopt reads it as UTF-8 to analyse it, and
//! must send it on as the same bytes. [`escape`] makes a string of any bytes: valid
//! UTF-8 stays as it is, and each byte of 0x80 to 0xFF outside a valid character
//! becomes a private-use character, U+10FF80 to U+10FFFF, one per byte. Those
//! characters themselves, should a text hold them, are carried so too (each of their
//! four bytes), so no two texts share an escaped form. [`unescape`] gives the bytes
//! back; the encoders of Query and Parse write text through it.
//!
//! An ASCII byte is always itself, so a text's words, quotes and semicolons are where
//! they are in the client's encoding: its analysis holds for every encoding whose
//! multi-byte characters use bytes of 0x80 and up only (LATIN1…, WIN125x, KOI8, EUC,
//! UTF8), and for UHC, whose second bytes below 0x80 are letters. SJIS,
//! SHIFT_JIS_2004, BIG5, GBK, GB18030 and JOHAB characters may end in an ASCII byte
//! such as `\`, `[` or `|`: outside a string (an unquoted identifier) such text may
//! not parse, and in an `E''` or `U&''` string (or any, with
//! `standard_conforming_strings` off) a `\` may end it otherwise than PostgreSQL,
//! which reads the text after converting it, ends it. The proxy refuses SQL in those
//! encodings that it cannot parse in transaction mode.

use std::borrow::Cow;

/// The first escape character: byte `b` is `ESCAPE_BASE + b`.
const ESCAPE_BASE: u32 = 0x10FF00;
/// The lead byte of the escape characters' UTF-8 form (of every character of
/// U+100000 and up).
const LEAD: u8 = 0xF4;

fn escape_char(byte: u8) -> char {
    // (U+10FF80..=U+10FFFF: all scalar values.)
    char::from_u32(ESCAPE_BASE + u32::from(byte)).unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn is_escape(c: char) -> bool {
    (ESCAPE_BASE + 0x80..=ESCAPE_BASE + 0xFF).contains(&u32::from(c))
}

/// `bytes` as text: borrowed when they are UTF-8 without an escape character (the
/// usual case, at the cost of the UTF-8 check), else escaped.
pub fn escape(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !is_escaped(text) {
            return Cow::Borrowed(text);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if is_escape(c) {
                let mut buf = [0; 4];
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    out.push(escape_char(b));
                }
            } else {
                out.push(c);
            }
        }
        // (An invalid sequence is of bytes of 0x80 and up: an ASCII byte is valid.)
        out.extend(chunk.invalid().iter().map(|&b| match b {
            0..0x80 => char::from(b),
            _ => escape_char(b),
        }));
    }
    Cow::Owned(out)
}

/// The bytes [`escape`] made `text` of.
pub fn unescape(text: &str) -> Cow<'_, [u8]> {
    if !is_escaped(text) {
        return Cow::Borrowed(text.as_bytes());
    }
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if is_escape(c) {
            out.push((u32::from(c) - ESCAPE_BASE) as u8);
        } else {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    Cow::Owned(out)
}

/// Whether `text` holds an escape character: it was escaped from bytes that are not
/// UTF-8 as they stand (or, as bytes given to [`escape`], it holds one already).
#[inline]
pub fn is_escaped(text: &str) -> bool {
    // (A look for the lead byte first, most texts have none: memchr's, several
    // times faster than the slice's own `contains` on a query's length.)
    memchr::memchr(LEAD, text.as_bytes()).is_some() && text.chars().any(is_escape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_borrowed_and_other_bytes_come_back_whole() {
        assert!(matches!(escape("SELECT 'é'".as_bytes()), Cow::Borrowed(_)));
        let latin1 = b"SELECT 'caf\xe9' -- \xff";
        let text = escape(latin1);
        assert!(text.starts_with("SELECT 'caf"));
        assert!(text.ends_with(escape_char(0xff)));
        assert!(is_escaped(&text));
        assert_eq!(&*unescape(&text), latin1);
        // An escape character in the text itself is carried too: no collision with
        // the byte it stands for.
        let tricky = format!("x{}", escape_char(0xe9));
        let escaped = escape(tricky.as_bytes());
        assert_ne!(escaped, escape(b"x\xe9"));
        assert_eq!(&*unescape(&escaped), tricky.as_bytes());
        assert!(!is_escaped("SELECT 1"));
    }
}
