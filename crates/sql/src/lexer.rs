//! A single-pass tokenizer that follows PostgreSQL's lexical rules closely
//! enough to tell literals, comments, quoted identifiers and everything else
//! apart (standard_conforming_strings = on). It never fails: malformed input
//! (an unterminated string, say) becomes a token that runs to the end.
//!
//! Works on bytes; every token boundary falls on an ASCII byte or the end of
//! input, so spans are valid `str` boundaries.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Spaces, tabs, newlines; `newline` says whether the run holds one.
    Whitespace { newline: bool },
    /// `-- …` up to (not including) the newline.
    LineComment,
    /// `/* … */`, nested as PostgreSQL nests them.
    BlockComment,
    /// `'…'`, `E'…'`, `B'…'`, `X'…'`, `N'…'`, `U&'…'`.
    String,
    /// `$$…$$` or `$tag$…$tag$`.
    DollarString,
    /// Integer, decimal, real, `0x…`, `0o…`, `0b…`, with `_` separators.
    Number,
    /// `"…"` or `U&"…"`.
    QuotedIdent,
    /// `$1`.
    Param,
    /// Identifier or keyword.
    Word,
    /// Any other single byte (operators, punctuation).
    Punct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

impl TokenKind {
    pub(crate) fn is_literal(self) -> bool {
        matches!(
            self,
            TokenKind::String | TokenKind::DollarString | TokenKind::Number
        )
    }
}

pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
}

pub(crate) const SPACE: u8 = 1;
pub(crate) const IDENT_START: u8 = 2;
pub(crate) const IDENT_CONT: u8 = 4;
/// `\n` or `\r` (also SPACE).
pub(crate) const NEWLINE: u8 = 8;
/// A byte that is always a one-byte [`TokenKind::Punct`], whatever follows it.
pub(crate) const PUNCT: u8 = 16;

/// Byte classes, one table load per byte on the hot loops (identifiers make up
/// most of a statement's text).
pub(crate) static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        if matches!(c, b'\n' | b'\r') {
            t[b] = SPACE | NEWLINE;
        } else if matches!(c, b' ' | b'\t' | 0x0c | 0x0b) {
            t[b] = SPACE;
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            t[b] = IDENT_START | IDENT_CONT;
        } else if c.is_ascii_digit() || c == b'$' {
            t[b] = IDENT_CONT;
        } else if !matches!(c, b'-' | b'/' | b'\'' | b'"' | b'.') {
            t[b] = PUNCT;
        }
        b += 1;
    }
    t
};

#[inline]
fn is_ident_start(b: u8) -> bool {
    CLASS[b as usize] & IDENT_START != 0
}

#[inline]
fn is_ident_cont(b: u8) -> bool {
    CLASS[b as usize] & IDENT_CONT != 0
}

#[inline]
fn is_space(b: u8) -> bool {
    CLASS[b as usize] & SPACE != 0
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Lexer {
            src: src.as_bytes(),
            pos: 0,
        }
    }

    /// A lexer over `src` from byte `pos` (a token boundary).
    #[inline]
    pub(crate) fn at(src: &'a [u8], pos: usize) -> Self {
        Lexer { src, pos }
    }

    #[inline]
    fn peek(&self, off: usize) -> Option<u8> {
        self.src.get(self.pos + off).copied()
    }

    /// Skips a quoted run whose opening quote is at `self.pos`; `''`-style
    /// doubling escapes the quote, and with `backslash` a `\` escapes the
    /// next byte.
    fn quoted(&mut self, quote: u8, backslash: bool) {
        self.pos += 1;
        while let Some(&b) = self.src.get(self.pos) {
            if backslash && b == b'\\' {
                self.pos += 2;
                continue;
            }
            self.pos += 1;
            if b == quote {
                if self.src.get(self.pos) == Some(&quote) {
                    self.pos += 1;
                } else {
                    return;
                }
            }
        }
        self.pos = self.src.len();
    }

    fn digits(&mut self, valid: fn(u8) -> bool) {
        while let Some(b) = self.peek(0) {
            if valid(b) {
                self.pos += 1;
            } else if b == b'_' && self.peek(1).is_some_and(valid) {
                self.pos += 2;
            } else {
                break;
            }
        }
    }

    fn number(&mut self) {
        let b0 = self.src[self.pos];
        if b0 == b'0' {
            let radix: Option<fn(u8) -> bool> = match self.peek(1) {
                Some(b'x' | b'X') => Some(|b: u8| b.is_ascii_hexdigit()),
                Some(b'o' | b'O') => Some(|b: u8| (b'0'..=b'7').contains(&b)),
                Some(b'b' | b'B') => Some(|b: u8| b == b'0' || b == b'1'),
                _ => None,
            };
            if let Some(valid) = radix {
                if self.peek(2).is_some_and(valid) {
                    self.pos += 2;
                    self.digits(valid);
                    return;
                }
            }
        }
        let dec = |b: u8| b.is_ascii_digit();
        if b0 != b'.' {
            self.digits(dec);
            // `1..5` lexes as `1` followed by `..5`, as in PostgreSQL.
            if self.peek(0) == Some(b'.') && self.peek(1) != Some(b'.') {
                self.pos += 1;
                self.digits(dec);
            }
        } else {
            self.pos += 1;
            self.digits(dec);
        }
        if matches!(self.peek(0), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.peek(1), Some(b'+' | b'-')));
            if self.peek(1 + sign).is_some_and(dec) {
                self.pos += 1 + sign;
                self.digits(dec);
            }
        }
    }

    /// At a `$`: a positional parameter, a dollar-quoted string, or a lone
    /// `$` punctuation byte.
    fn dollar(&mut self) -> TokenKind {
        let start = self.pos;
        if self.peek(1).is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
            while self.peek(0).is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1;
            }
            return TokenKind::Param;
        }
        // Tag: empty, or an identifier without `$`.
        let mut end = start + 1;
        if self.src.get(end).is_some_and(|&b| is_ident_start(b)) {
            end += 1;
            while self
                .src
                .get(end)
                .is_some_and(|&b| is_ident_cont(b) && b != b'$')
            {
                end += 1;
            }
        }
        if self.src.get(end) != Some(&b'$') {
            self.pos += 1;
            return TokenKind::Punct;
        }
        let tag = &self.src[start..=end];
        let body = end + 1;
        self.pos = match find(&self.src[body..], tag) {
            Some(i) => body + i + tag.len(),
            None => self.src.len(),
        };
        TokenKind::DollarString
    }

    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while self.pos < self.src.len() {
            if self.peek(0) == Some(b'/') && self.peek(1) == Some(b'*') {
                depth += 1;
                self.pos += 2;
            } else if self.peek(0) == Some(b'*') && self.peek(1) == Some(b'/') {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    #[inline]
    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        let b = *self.src.get(start)?;
        let kind = match b {
            _ if is_space(b) => {
                let rest = &self.src[start..];
                let run = &rest[..rest
                    .iter()
                    .position(|&c| !is_space(c))
                    .unwrap_or(rest.len())];
                self.pos = start + run.len();
                TokenKind::Whitespace {
                    newline: run.iter().any(|&c| c == b'\n' || c == b'\r'),
                }
            }
            b'-' if self.peek(1) == Some(b'-') => {
                self.pos = match self.src[start..].iter().position(|&c| c == b'\n') {
                    Some(i) => start + i,
                    None => self.src.len(),
                };
                TokenKind::LineComment
            }
            b'/' if self.peek(1) == Some(b'*') => {
                self.block_comment();
                TokenKind::BlockComment
            }
            b'\'' => {
                self.quoted(b'\'', false);
                TokenKind::String
            }
            b'"' => {
                self.quoted(b'"', false);
                TokenKind::QuotedIdent
            }
            b'$' => self.dollar(),
            b'0'..=b'9' => {
                self.number();
                TokenKind::Number
            }
            b'.' if self.peek(1).is_some_and(|c| c.is_ascii_digit()) => {
                self.number();
                TokenKind::Number
            }
            b'e' | b'E' if self.peek(1) == Some(b'\'') => {
                self.pos += 1;
                self.quoted(b'\'', true);
                TokenKind::String
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if self.peek(1) == Some(b'\'') => {
                self.pos += 1;
                self.quoted(b'\'', false);
                TokenKind::String
            }
            b'u' | b'U' if self.peek(1) == Some(b'&') && self.peek(2) == Some(b'\'') => {
                self.pos += 2;
                self.quoted(b'\'', false);
                TokenKind::String
            }
            b'u' | b'U' if self.peek(1) == Some(b'&') && self.peek(2) == Some(b'"') => {
                self.pos += 2;
                self.quoted(b'"', false);
                TokenKind::QuotedIdent
            }
            _ if is_ident_start(b) => {
                let rest = &self.src[start + 1..];
                let len = rest
                    .iter()
                    .position(|&c| !is_ident_cont(c))
                    .unwrap_or(rest.len());
                self.pos = start + 1 + len;
                TokenKind::Word
            }
            _ => {
                self.pos += 1;
                TokenKind::Punct
            }
        };
        Some(Token {
            kind,
            start,
            end: self.pos,
        })
    }
}

/// The tokens of `src` but whitespace and comments.
pub(crate) fn significant(src: &str) -> Vec<Token> {
    Lexer::new(src)
        .filter(|t| {
            !matches!(
                t.kind,
                TokenKind::Whitespace { .. } | TokenKind::LineComment | TokenKind::BlockComment
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(TokenKind, &str)> {
        Lexer::new(sql)
            .filter(|t| !matches!(t.kind, TokenKind::Whitespace { .. }))
            .map(|t| (t.kind, &sql[t.start..t.end]))
            .collect()
    }

    #[test]
    fn strings_and_escapes() {
        use TokenKind::*;
        assert_eq!(
            kinds(r"'it''s' E'a\'b' B'01' U&'x' $$a'b$$ $q$ $$ $q$"),
            vec![
                (String, "'it''s'"),
                (String, r"E'a\'b'"),
                (String, "B'01'"),
                (String, "U&'x'"),
                (DollarString, "$$a'b$$"),
                (DollarString, "$q$ $$ $q$"),
            ]
        );
    }

    #[test]
    fn numbers_params_words() {
        use TokenKind::*;
        assert_eq!(
            kinds("t1.c2 = $1 + 1.5e-3 + .5 + 0x1F + 1_000"),
            vec![
                (Word, "t1"),
                (Punct, "."),
                (Word, "c2"),
                (Punct, "="),
                (Param, "$1"),
                (Punct, "+"),
                (Number, "1.5e-3"),
                (Punct, "+"),
                (Number, ".5"),
                (Punct, "+"),
                (Number, "0x1F"),
                (Punct, "+"),
                (Number, "1_000"),
            ]
        );
    }

    #[test]
    fn comments_nest_and_quoted_identifiers_keep_case() {
        use TokenKind::*;
        assert_eq!(
            kinds("/* a /* b */ c */ \"My\"\"T\" -- tail\nx"),
            vec![
                (BlockComment, "/* a /* b */ c */"),
                (QuotedIdent, "\"My\"\"T\""),
                (LineComment, "-- tail"),
                (Word, "x"),
            ]
        );
    }

    #[test]
    fn byte_classes_follow_postgres_rules() {
        for b in 0..=255u8 {
            let start = b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
            let cont = start || b.is_ascii_digit() || b == b'$';
            let space = matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b);
            assert_eq!(is_ident_start(b), start, "{b:#x}");
            assert_eq!(is_ident_cont(b), cont, "{b:#x}");
            assert_eq!(is_space(b), space, "{b:#x}");
        }
    }

    #[test]
    fn unterminated_runs_to_end() {
        assert_eq!(kinds("'abc"), vec![(TokenKind::String, "'abc")]);
        assert_eq!(kinds("$a$ x"), vec![(TokenKind::DollarString, "$a$ x")]);
        assert_eq!(kinds("/* x"), vec![(TokenKind::BlockComment, "/* x")]);
    }
}
