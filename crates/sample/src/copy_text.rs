//! Writing rows in PostgreSQL's COPY text format: fields separated by tabs, rows
//! ended by a newline, `\N` for NULL, and backslash escapes in text.

use crate::calendar::{write_date, write_timestamp};

/// Appends the decimal digits of `v`.
pub(crate) fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Appends `text` with the COPY text escapes (`\\`, `\t`, `\n`, `\r`).
pub(crate) fn push_escaped(buf: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        buf.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

/// One row being appended to a COPY buffer; [`RowWriter::end`] finishes it.
pub(crate) struct RowWriter<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> RowWriter<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> RowWriter<'a> {
        RowWriter { buf, first: true }
    }

    /// Starts the next field and returns the buffer to append content that needs no
    /// escaping (digits, word-list entries, JSON built from them).
    pub(crate) fn field(&mut self) -> &mut Vec<u8> {
        if !self.first {
            self.buf.push(b'\t');
        }
        self.first = false;
        self.buf
    }

    pub(crate) fn uint(&mut self, v: u64) {
        push_u64(self.field(), v);
    }

    pub(crate) fn opt_uint(&mut self, v: Option<u64>) {
        match v {
            Some(v) => self.uint(v),
            None => self.null(),
        }
    }

    /// Any text, escaped.
    pub(crate) fn text(&mut self, text: &str) {
        push_escaped(self.field(), text);
    }

    pub(crate) fn null(&mut self) {
        self.field().extend_from_slice(b"\\N");
    }

    pub(crate) fn timestamp(&mut self, unix_secs: i64) {
        write_timestamp(self.field(), unix_secs);
    }

    pub(crate) fn opt_timestamp(&mut self, unix_secs: Option<i64>) {
        match unix_secs {
            Some(t) => self.timestamp(t),
            None => self.null(),
        }
    }

    pub(crate) fn opt_date(&mut self, unix_day: Option<i64>) {
        match unix_day {
            Some(d) => write_date(self.field(), d),
            None => self.null(),
        }
    }

    pub(crate) fn end(self) {
        self.buf.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_fields_nulls_and_escapes() {
        let mut buf = Vec::new();
        let mut row = RowWriter::new(&mut buf);
        row.uint(0);
        row.uint(18_446_744_073_709_551_615);
        row.text("a\tb\\c\nd");
        row.null();
        row.opt_uint(Some(7));
        row.end();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "0\t18446744073709551615\ta\\tb\\\\c\\nd\t\\N\t7\n"
        );
    }
}
