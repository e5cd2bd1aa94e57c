//! The literal-stripping pre-normalizer: one scan over the statement text, no
//! parse, producing a cache key in which every string, number and
//! dollar-quoted literal is replaced by a placeholder.
//!
//! Rules, all of which keep PostgreSQL's meaning apart from literal values:
//! - literals → placeholder; their byte ranges are kept (the per-call values);
//! - IN lists of two or more (optionally signed) literals → one placeholder;
//! - unquoted words are ASCII-lowercased (PostgreSQL folds them anyway);
//! - whitespace runs and ordinary comments → one space, or one newline when
//!   the run held a newline (a newline between two string literals
//!   concatenates them, a space does not);
//! - comments holding `pgopt:` hints are kept verbatim (they change routing);
//! - quoted identifiers, parameters and operators are copied verbatim.
//!
//! The key is bytes, not text: placeholders are `0x01 0x03` (literal) and
//! `0x01 0x04` (IN list), and a `0x01` in copied text is written `0x01 0x02`,
//! so a placeholder can never be confused with text from the statement.

use std::ops::Range;

use crate::functions::reads_clock_bytes;
use crate::lexer::{
    Lexer, Token, TokenKind, CLASS, IDENT_CONT, IDENT_START, NEWLINE, PUNCT, SPACE,
};

const ESC: u8 = 0x01;
const LITERAL: [u8; 2] = [ESC, 0x03];
const IN_LIST: [u8; 4] = [b'(', ESC, 0x04, b')'];

/// A stripped statement: the cache key and where the literals were.
/// Reuse one value across calls to avoid allocating.
#[derive(Debug, Default, Clone)]
pub struct Stripped {
    key: Vec<u8>,
    literals: Vec<Range<usize>>,
}

#[derive(Clone, Copy)]
enum InList {
    Idle,
    /// Just saw the word `in`.
    AfterIn,
    /// Inside `in (`; `restore` is the key length before the `(`.
    Open {
        restore: usize,
        count: usize,
        expect_elem: bool,
        signed: bool,
    },
}

impl Stripped {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cache key: equal for statements that differ only in literal
    /// values, whitespace, ordinary comments, keyword case and the length of
    /// literal IN lists.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The key with placeholders shown as `?` and `(?…)`, for logs and tests.
    pub fn key_display(&self) -> String {
        let mut out = Vec::with_capacity(self.key.len());
        let mut i = 0;
        while i < self.key.len() {
            if self.key[i] == ESC {
                match self.key.get(i + 1) {
                    Some(0x03) => out.push(b'?'),
                    Some(0x04) => out.extend_from_slice("?…".as_bytes()),
                    _ => out.push(ESC),
                }
                i += 2;
            } else {
                out.push(self.key[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Byte ranges of the literals in the statement last stripped, in order.
    pub fn literals(&self) -> &[Range<usize>] {
        &self.literals
    }

    /// The literal texts (quotes included) of `sql`, which must be the
    /// statement last stripped.
    pub fn literal_values<'a>(&'a self, sql: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.literals.iter().filter_map(move |r| sql.get(r.clone()))
    }

    /// Strips `sql` into this value, replacing its previous contents.
    ///
    /// One pass over the bytes: whitespace and plain words, most of a statement,
    /// are scanned here; every other token is the lexer's.
    pub fn strip(&mut self, sql: &str) {
        self.key.clear();
        self.literals.clear();
        self.key.reserve(sql.len() + IN_LIST.len());
        let src = sql.as_bytes();
        // 0: nothing pending, 1: a space, 2: a newline.
        let mut pending_space = 0u8;
        let mut in_list = InList::Idle;
        let mut pos = 0;
        while let Some(&b) = src.get(pos) {
            let class = CLASS[b as usize];
            if class & SPACE != 0 {
                let mut seen = 0;
                while let Some(&c) = src.get(pos) {
                    let class = CLASS[c as usize];
                    if class & SPACE == 0 {
                        break;
                    }
                    seen |= class;
                    pos += 1;
                }
                pending_space = pending_space.max(if seen & NEWLINE != 0 { 2 } else { 1 });
                continue;
            }
            let start = pos;
            let kind = if class & IDENT_START != 0 && !starts_quote(src, pos) {
                TokenKind::Word
            } else if class & PUNCT != 0 {
                pos += 1;
                TokenKind::Punct
            } else {
                let tok = Lexer::at(src, pos).next().unwrap_or(Token {
                    kind: TokenKind::Punct,
                    start: pos,
                    end: pos + 1,
                });
                pos = tok.end;
                if matches!(tok.kind, TokenKind::LineComment | TokenKind::BlockComment)
                    && !is_hint(&src[start..pos])
                {
                    let newline = src[start..pos]
                        .iter()
                        .any(|&c| CLASS[c as usize] & NEWLINE != 0);
                    pending_space = pending_space.max(if newline { 2 } else { 1 });
                    continue;
                }
                // A word the lexer had to look at (`u&` not opening a quote): it
                // is written below from its start.
                if tok.kind == TokenKind::Word {
                    pos = start;
                }
                tok.kind
            };
            if pending_space != 0 && !self.key.is_empty() {
                self.key.push(if pending_space == 2 { b'\n' } else { b' ' });
            }
            pending_space = 0;
            if kind == TokenKind::Word {
                pos = self.push_word(src, pos);
                // Idle stays idle but at the word `in`.
                let text = &src[start..pos];
                if !matches!(in_list, InList::Idle) || text.eq_ignore_ascii_case(b"in") {
                    in_list = self.in_list_step(in_list, kind, text);
                }
                continue;
            }
            let text = &src[start..pos];
            let kind = clock_kept(kind, text);
            if !matches!(in_list, InList::Idle) {
                in_list = self.in_list_step(in_list, kind, text);
            }
            match kind {
                TokenKind::String | TokenKind::DollarString | TokenKind::Number => {
                    self.key.extend_from_slice(&LITERAL);
                    self.literals.push(start..pos);
                }
                TokenKind::Punct if b == b')' && self.try_collapse(&mut in_list) => {}
                TokenKind::Punct if b != ESC => self.key.push(b),
                _ => self.push_escaped(text),
            }
        }
    }

    /// Writes the word at `pos` lowercased (ASCII only) and returns where it ends;
    /// eight bytes at a time while eight are left.
    #[inline]
    fn push_word(&mut self, src: &[u8], mut pos: usize) -> usize {
        while let Some(chunk) = src.get(pos..pos + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            let len = self.key.len();
            self.key.extend_from_slice(&lowercase8(word).to_le_bytes());
            let stop = not_ident_cont8(word);
            if stop != 0 {
                let n = (stop.trailing_zeros() / 8) as usize;
                self.key.truncate(len + n);
                return pos + n;
            }
            pos += 8;
        }
        while let Some(&c) = src.get(pos) {
            if CLASS[c as usize] & IDENT_CONT == 0 {
                break;
            }
            self.key.push(c.to_ascii_lowercase());
            pos += 1;
        }
        pos
    }

    /// Advances the IN-list recogniser by one significant token (called
    /// before the token is written to the key).
    #[inline]
    fn in_list_step(&self, state: InList, kind: TokenKind, text: &[u8]) -> InList {
        let is_in = kind == TokenKind::Word && text.eq_ignore_ascii_case(b"in");
        match state {
            InList::AfterIn if kind == TokenKind::Punct && text == b"(" => InList::Open {
                restore: self.key.len(),
                count: 0,
                expect_elem: true,
                signed: false,
            },
            InList::Open {
                restore,
                count,
                expect_elem: true,
                signed,
            } => {
                if kind.is_literal() {
                    InList::Open {
                        restore,
                        count: count + 1,
                        expect_elem: false,
                        signed: false,
                    }
                } else if kind == TokenKind::Punct && (text == b"-" || text == b"+") && !signed {
                    InList::Open {
                        restore,
                        count,
                        expect_elem: true,
                        signed: true,
                    }
                } else {
                    InList::Idle
                }
            }
            InList::Open {
                restore,
                count,
                expect_elem: false,
                ..
            } if kind == TokenKind::Punct && (text == b"," || text == b")") => InList::Open {
                restore,
                // `)` keeps the state so `try_collapse` can act on it.
                count,
                expect_elem: text == b",",
                signed: false,
            },
            _ if is_in => InList::AfterIn,
            _ => InList::Idle,
        }
    }

    /// At a `)`: if it closes an IN list of two or more literals, rewrites
    /// the list as one placeholder and returns true.
    fn try_collapse(&mut self, state: &mut InList) -> bool {
        if let InList::Open {
            restore,
            count,
            expect_elem: false,
            ..
        } = *state
        {
            *state = InList::Idle;
            if count >= 2 {
                self.key.truncate(restore);
                self.key.extend_from_slice(&IN_LIST);
                return true;
            }
        }
        *state = InList::Idle;
        false
    }

    #[inline]
    fn push_escaped(&mut self, text: &[u8]) {
        for &b in text {
            if b == ESC {
                self.key.extend_from_slice(&[ESC, 0x02]);
            } else {
                self.key.push(b);
            }
        }
    }
}

const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `low` (bytes < 0x80) that lies in `lo..=hi`.
#[inline]
fn in_range8(low: u64, lo: u8, hi: u8) -> u64 {
    let ones = 0x0101_0101_0101_0101u64;
    // No carry crosses a byte: each sum is < 0x100.
    let ge_lo = low + ones * u64::from(0x80 - lo);
    let gt_hi = low + ones * u64::from(0x7f - hi);
    ge_lo & !gt_hi & HIGH
}

/// High bit set in each of the eight bytes of `x` that can't continue an identifier
/// (see the lexer's `IDENT_CONT`: letters, digits, `_`, `$` and bytes >= 0x80 can).
#[inline]
fn not_ident_cont8(x: u64) -> u64 {
    let low = x & LOW7;
    let ok = (x & HIGH)
        | in_range8(low, b'0', b'9')
        | in_range8(low, b'A', b'Z')
        | in_range8(low, b'a', b'z')
        | in_range8(low, b'_', b'_')
        | in_range8(low, b'$', b'$');
    !ok & HIGH
}

/// ASCII-lowercases the eight bytes of `x`: a byte gets 0x20 added when it is in
/// `A..=Z`; bytes >= 0x80 are left alone.
#[inline]
fn lowercase8(x: u64) -> u64 {
    let upper = in_range8(x & LOW7, b'A', b'Z') & !x;
    x | (upper >> 2)
}

/// Whether the identifier-start byte at `pos` opens a prefixed string or quoted
/// identifier (`E'…'`, `B'…'`, `X'…'`, `N'…'`, `U&'…'`, `U&"…"`) rather than a word.
#[inline]
fn starts_quote(src: &[u8], pos: usize) -> bool {
    match src.get(pos + 1) {
        Some(b'\'') => matches!(src[pos] | 0x20, b'e' | b'b' | b'x' | b'n'),
        Some(b'&') => src[pos] | 0x20 == b'u',
        _ => false,
    }
}

/// A string literal that reads the clock ('now', 'today'…: [`crate::reads_clock`]) is kept
/// in the key as it is, not as a placeholder: the analysis (volatile) differs from that
/// of the same statement with a plain date, and the two must not share it. Returned
/// as a kind that is written verbatim and ends an IN list.
#[inline]
fn clock_kept(kind: TokenKind, text: &[u8]) -> TokenKind {
    if matches!(kind, TokenKind::String | TokenKind::DollarString) && is_clock_literal(text) {
        TokenKind::QuotedIdent
    } else {
        kind
    }
}

/// Where a string token's body starts and ends: after its prefix and opening quote
/// (`E'`, `$tag$`), before its closing one. `None` for an unterminated `'…` string.
/// (An unterminated dollar string's "closing tag" is its last bytes.)
pub(crate) fn string_body(text: &[u8]) -> Option<(usize, usize)> {
    if text.last() == Some(&b'\'') {
        let q = text.iter().position(|&b| b == b'\'')?;
        return (q + 1 < text.len()).then_some((q + 1, text.len() - 1));
    }
    // `$tag$…$tag$`: the tag runs to the second `$`.
    let tag = text.iter().skip(1).position(|&b| b == b'$')? + 2;
    (text.len() >= 2 * tag).then_some((tag, text.len() - tag))
}

/// Whether a string token (`'…'`, `E'…'`, `$tag$…$tag$`…) may read the clock
/// ([`crate::reads_clock`]): its value is decoded as PostgreSQL reads it (E'' escapes);
/// a `U&'…'` string always may (its escape character can be set after it).
pub(crate) fn is_clock_literal(text: &[u8]) -> bool {
    let Some((start, end)) = string_body(text) else {
        return false;
    };
    let body = &text[start..end];
    if text[0] == b'$' {
        return reads_clock_bytes(body);
    }
    match &text[..start - 1] {
        [] | [b'n' | b'N'] => reads_clock_bytes(body),
        [b'e' | b'E'] if body.contains(&b'\\') => reads_clock_bytes(&decode_escapes(body)),
        [b'e' | b'E'] => reads_clock_bytes(body),
        [b'u' | b'U', b'&'] => true,
        // Bit strings.
        _ => false,
    }
}

/// The value of an `E'…'` string's body, as PostgreSQL's scanner reads its escapes
/// (code points past ASCII become `?`: no clock word has one).
fn decode_escapes(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let digits = |from: usize, max: usize, radix: u32| {
        let mut value = 0u32;
        let mut n = 0;
        while n < max {
            match body
                .get(from + n)
                .and_then(|&b| char::from(b).to_digit(radix))
            {
                Some(d) => value = value * radix + d,
                None => break,
            }
            n += 1;
        }
        (value, n)
    };
    let ascii = |v: u32| u8::try_from(v).ok().filter(u8::is_ascii).unwrap_or(b'?');
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b != b'\\' || i + 1 == body.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = body[i + 1];
        i += 2;
        match c {
            b'x' => match digits(i, 2, 16) {
                (_, 0) => out.push(b'x'),
                (v, n) => {
                    out.push(ascii(v));
                    i += n;
                }
            },
            b'0'..=b'7' => {
                // PostgreSQL keeps the low byte (`\556` is `n`).
                let (v, n) = digits(i - 1, 3, 8);
                out.push(ascii(v & 0xff));
                i += n - 1;
            }
            b'u' | b'U' => {
                let (v, n) = digits(i, if c == b'u' { 4 } else { 8 }, 16);
                out.push(ascii(v));
                i += n;
            }
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            other => out.push(other),
        }
    }
    out
}

fn is_hint(comment: &[u8]) -> bool {
    comment
        .windows(6)
        .any(|w| w.eq_ignore_ascii_case(b"pgopt:"))
}

/// Strips `sql` into a fresh [`Stripped`].
pub fn strip_literals(sql: &str) -> Stripped {
    let mut s = Stripped::new();
    s.strip(sql);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> String {
        strip_literals(sql).key_display()
    }

    /// The stripper as it was, token by token off the lexer: the fused loop in
    /// [`Stripped::strip`] must give the same key and literal ranges.
    fn reference(sql: &str) -> Stripped {
        let mut s = Stripped::new();
        let bytes = sql.as_bytes();
        let mut pending_space = 0u8;
        let mut in_list = InList::Idle;
        for tok in Lexer::new(sql) {
            let text = &bytes[tok.start..tok.end];
            match tok.kind {
                TokenKind::Whitespace { newline } => {
                    pending_space = pending_space.max(if newline { 2 } else { 1 });
                    continue;
                }
                TokenKind::LineComment | TokenKind::BlockComment if !is_hint(text) => {
                    let newline = text.iter().any(|&b| b == b'\n' || b == b'\r');
                    pending_space = pending_space.max(if newline { 2 } else { 1 });
                    continue;
                }
                _ => {}
            }
            if pending_space != 0 && !s.key.is_empty() {
                s.key.push(if pending_space == 2 { b'\n' } else { b' ' });
            }
            pending_space = 0;
            let kind = clock_kept(tok.kind, text);
            in_list = s.in_list_step(in_list, kind, text);
            match kind {
                TokenKind::String | TokenKind::DollarString | TokenKind::Number => {
                    s.key.extend_from_slice(&LITERAL);
                    s.literals.push(tok.start..tok.end);
                }
                TokenKind::Word => s.key.extend(text.iter().map(u8::to_ascii_lowercase)),
                _ => {
                    if kind == TokenKind::Punct && text == b")" && s.try_collapse(&mut in_list) {
                        continue;
                    }
                    s.push_escaped(text);
                }
            }
        }
        s
    }

    fn same_as_reference(sql: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        let (got, want) = (strip_literals(sql), reference(sql));
        proptest::prop_assert_eq!(got.key(), want.key(), "{:?}", sql);
        proptest::prop_assert_eq!(got.literals(), want.literals(), "{:?}", sql);
        Ok(())
    }

    /// Pieces that exercise every token kind and the places they meet.
    const PIECES: &[&str] = &[
        "select",
        "SELECT",
        "From",
        " ",
        "  ",
        "\n",
        "\r",
        "\t",
        "\x0b",
        "\x0c",
        "in",
        "IN",
        "iN",
        "(",
        ")",
        ",",
        "-",
        "+",
        "=",
        "1",
        "42",
        "1.5e3",
        ".5",
        "1..5",
        "0x1F",
        "0b1",
        "1_000",
        "'a''b'",
        "'",
        "E'\\''",
        "e'x'",
        "b'01'",
        "X'ff'",
        "n'x'",
        "N",
        "u&'x'",
        "U&\"q\"",
        "u&",
        "U",
        "&",
        "e",
        "x",
        "$$x$$",
        "$a$ $a$",
        "$a$",
        "$1",
        "$12",
        "$",
        "--c\n",
        "--",
        "-- pgopt:x\n",
        "/* c */",
        "/* a\n b */",
        "/* /* n */ */",
        "/*",
        "*/",
        "/* pgopt:replica */",
        "\"Q\"",
        "\"",
        "\u{1}",
        "\u{1}\u{3}",
        "é",
        "Ä",
        "_x",
        "a$b",
        "x'",
        ";",
        "::",
        "\\",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4000))]

        #[test]
        fn fused_loop_matches_the_token_by_token_reference(
            picks in proptest::collection::vec(0..PIECES.len(), 0..24)
        ) {
            let sql: String = picks.iter().map(|&i| PIECES[i]).collect();
            same_as_reference(&sql)?;
        }

        #[test]
        fn fused_loop_matches_the_reference_on_any_text(sql in proptest::prelude::any::<String>()) {
            same_as_reference(&sql)?;
        }
    }

    #[test]
    fn eight_byte_helpers_match_the_byte_table() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut bytes = *b"aZ_9\xffQq$";
                bytes[pos] = b;
                let x = u64::from_le_bytes(bytes);
                let want = bytes.map(|c| c.to_ascii_lowercase());
                assert_eq!(lowercase8(x).to_le_bytes(), want, "byte {b:#x} at {pos}");
                let stops = not_ident_cont8(x).to_le_bytes();
                for (i, &c) in bytes.iter().enumerate() {
                    let stop = CLASS[c as usize] & IDENT_CONT == 0;
                    assert_eq!(stops[i] == 0x80, stop, "byte {c:#x} at {i}");
                }
            }
        }
    }

    #[test]
    fn words_are_lowercased_in_ascii_only() {
        assert_eq!(
            strip_literals("SELECT PgBench_Accounts_ÄX").key(),
            "select pgbench_accounts_Äx".as_bytes()
        );
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"),
            "select abalance from pgbench_accounts where aid = ?;"
        );
        assert_eq!(
            key("select * from t where a = 'x''y' and b = E'\\'' and c = $$z$$ and d = 1.5e3"),
            "select * from t where a = ? and b = ? and c = ? and d = ?"
        );
    }

    #[test]
    fn literal_values_are_kept() {
        let sql = "SELECT * FROM t WHERE a = 5 AND b IN ('x', 'y')";
        let s = strip_literals(sql);
        assert_eq!(
            s.literal_values(sql).collect::<Vec<_>>(),
            vec!["5", "'x'", "'y'"]
        );
    }

    #[test]
    fn in_lists_collapse_when_two_or_more_literals() {
        let a = key("SELECT * FROM t WHERE id IN (1, 2)");
        assert_eq!(a, "select * from t where id in (?…)");
        assert_eq!(a, key("select * from t where id in ( -1,2 ,3,4)"));
        assert_eq!(
            key("SELECT * FROM t WHERE id IN (1)"),
            "select * from t where id in (?)"
        );
        assert_eq!(
            key("SELECT * FROM t WHERE id IN (1, x)"),
            "select * from t where id in (?, x)"
        );
        assert_eq!(
            key("SELECT * FROM t WHERE id IN (1 - 2, 3)"),
            "select * from t where id in (? - ?, ?)"
        );
    }

    #[test]
    fn comments_whitespace_and_case() {
        assert_eq!(
            key("  SELECT   /* hi */ 1\n\n FROM \"T\" -- c\n"),
            "select ?\nfrom \"T\""
        );
        assert_eq!(
            key("/* pgopt:primary */ SELECT 1"),
            "/* pgopt:primary */ select ?"
        );
    }

    #[test]
    fn identifiers_operators_and_limit_stay_apart() {
        let base = key("SELECT * FROM t WHERE a = 1");
        for other in [
            "SELECT * FROM u WHERE a = 1",
            "SELECT * FROM t WHERE b = 1",
            "SELECT * FROM s.t WHERE a = 1",
            "SELECT * FROM t WHERE a < 1",
            "SELECT * FROM t WHERE a = 1 LIMIT 1",
            "SELECT * FROM \"t\" WHERE a = 1",
            "SELECT * FROM t WHERE a = $1",
        ] {
            assert_ne!(base, key(other), "{other}");
        }
    }

    #[test]
    fn placeholder_byte_in_text_is_escaped() {
        let a = strip_literals("SELECT \u{1}\u{3}");
        let b = strip_literals("SELECT 1");
        assert_ne!(a.key(), b.key());
    }
}

/// Where each `$n` parameter sits in `sql`, as (byte range, n), in order. Parameters
/// inside strings, comments and quoted identifiers are not parameters and are not listed.
pub fn parameter_spans(sql: &str) -> Vec<(Range<usize>, u32)> {
    Lexer::new(sql)
        .filter(|t| t.kind == TokenKind::Param)
        .filter_map(|t| Some((t.start..t.end, sql[t.start + 1..t.end].parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod parameter_span_tests {
    use super::parameter_spans;

    #[test]
    fn only_real_parameters_are_listed() {
        let sql = "SELECT $1, '$2', \"$3\" /* $4 */ FROM t WHERE a = $12";
        let spans = parameter_spans(sql);
        assert_eq!(spans.len(), 2);
        assert_eq!((&sql[spans[0].0.clone()], spans[0].1), ("$1", 1));
        assert_eq!((&sql[spans[1].0.clone()], spans[1].1), ("$12", 12));
    }
}
