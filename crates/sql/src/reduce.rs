//! A shorter text with the same analysis, for statements too long to parse whole.
//!
//! pg_query's parse tree, and the analysis's view of it, cost hundreds of bytes per
//! value: a 6 MB INSERT of 200,000 rows took 11 s and 3 GB to analyse, and a query
//! with a 24 MB string literal 150 MB. What the analysis looks at (tables, functions,
//! statement kinds, values that read the clock) does not depend on how many rows a
//! VALUES list has, how many values an IN list holds, or what a long string says.
//! Above [`REDUCE_ABOVE`] bytes, these are cut before parsing:
//! - rows of a VALUES list after the first, when they hold nothing but inert values
//!   (the first row with a value that reads the clock stays: the analysis needs one);
//! - values of an IN list after the second, when the list holds three or more inert
//!   values and none reads the clock (two stay: pg_query's fingerprint and the
//!   normalized text treat lists of two or more alike);
//! - string literals longer than [`LONG_LITERAL`] bytes, emptied (the names of
//!   relations, sequences and settings are far shorter), or made `'now'` when they
//!   may read the clock (the analysis then says volatile, as of the whole).
//!
//! Inert: a literal, a parameter, NULL, DEFAULT, TRUE, FALSE, a sign, a cast to a
//! one-word type (`::jsonb`, `::int[]`). Anything else (a function call, a column,
//! CURRENT_TIMESTAMP, a subquery, two strings that PostgreSQL joins) keeps its row or
//! list whole.

use crate::lexer::{Lexer, Token, TokenKind};
use crate::strip::{is_clock_literal, string_body};

/// Texts up to this long are parsed as they are.
pub(crate) const REDUCE_ABOVE: usize = 8 * 1024;

/// String literals longer than this are emptied.
const LONG_LITERAL: usize = 256;

/// A shortened text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reduced {
    pub text: String,
    /// Where in `text` rows of a VALUES list were cut: the statements there have not
    /// the whole statement's fingerprint and normalized text.
    pub rows_cut_at: Vec<usize>,
}

/// `sql` shortened (see the module's doc), or `None` when it is not long or nothing
/// was cut. VALUES rows, and IN lists of more than literals, are cut only when the
/// analysis cache's key (the stripped text) is long: the verdict is then the same for
/// every text of a shape, so a shape's fingerprint does not depend on which of its
/// texts came first. (Cutting an IN list of literals to two, or emptying a literal,
/// changes neither.)
pub(crate) fn reduce(sql: &str) -> Option<Reduced> {
    // A key is at most twice its text (a one-byte number's placeholder is two).
    if sql.len() <= REDUCE_ABOVE / 2 {
        return None;
    }
    // (So the key is measured: it can be longer than the text.)
    let long_shape = crate::strip::strip_literals(sql).key().len() > REDUCE_ABOVE;
    if sql.len() <= REDUCE_ABOVE && !long_shape {
        return None;
    }
    reduce_with(sql, long_shape)
}

/// [`reduce`]; `long_shape`: the analysis key is long (VALUES rows, and lists of
/// more than literals, are cut only then).
fn reduce_with(sql: &str, long_shape: bool) -> Option<Reduced> {
    let src = sql.as_bytes();
    let mut rows_cut_at = Vec::new();
    let mut out = String::new();
    let mut copied = 0;
    let mut pos = 0;
    let mut depth = 0u32;
    // The paren depth of a VALUES list's rows' commas, while in one.
    let mut values_at: Option<u32> = None;
    // The word VALUES was the last significant token.
    let mut after_values = false;
    let mut after_in = false;
    // A VALUES row holding a value that reads the clock was kept (one is enough for
    // the analysis: later ones are cut like the rest).
    let mut kept_clock_row = false;
    while let Some(tok) = next_significant(src, pos) {
        pos = tok.end;
        let text = &src[tok.start..tok.end];
        let was_after_values = std::mem::take(&mut after_values);
        let was_after_in = std::mem::take(&mut after_in);
        match tok.kind {
            TokenKind::String | TokenKind::DollarString if text.len() > LONG_LITERAL => {
                if let Some((open, close)) = emptied(&sql[tok.start..tok.end]) {
                    out.push_str(&sql[copied..tok.start]);
                    out.push_str(open);
                    // One that may read the clock still does, for the analysis.
                    if is_clock_literal(text) {
                        out.push_str("now");
                    }
                    out.push_str(close);
                    copied = tok.end;
                }
            }
            TokenKind::Word if long_shape && text.eq_ignore_ascii_case(b"values") => {
                after_values = true;
            }
            TokenKind::Word if text.eq_ignore_ascii_case(b"in") => after_in = true,
            TokenKind::Punct if text == b"(" => {
                if was_after_values {
                    values_at = Some(depth);
                    kept_clock_row = false;
                } else if was_after_in {
                    // Literals only: the key holds such a list as one placeholder, so
                    // texts of one key may be long or not; the cut changes neither
                    // fingerprint nor normalized text. Other lists are in the key.
                    let list = inert_list(src, tok.end)
                        .filter(|l| !l.clock && (l.literals_only || long_shape));
                    if let Some(list) = list {
                        if let Some(second_comma) = list.second_comma {
                            // Kept up to the second comma, on from the `)`.
                            out.push_str(&sql[copied..second_comma]);
                            copied = list.close;
                            pos = list.close;
                        }
                    }
                }
                depth += 1;
            }
            TokenKind::Punct if text == b")" => {
                depth = depth.saturating_sub(1);
                // The parenthesis around a VALUES list closed (`(VALUES (1)) v`).
                if values_at.is_some_and(|at| depth < at) {
                    values_at = None;
                }
            }
            TokenKind::Punct if text == b"," && values_at == Some(depth) => {
                // The inert rows from here on, up to one that is not, are cut with the
                // comma before each.
                let mut cut_to = None;
                let mut at = tok.end;
                while let Some(open) = next_significant(src, at) {
                    if &src[open.start..open.end] != b"(" {
                        break;
                    }
                    let Some(row) = inert_list(src, open.end) else {
                        break;
                    };
                    if row.clock && !kept_clock_row {
                        // The cut ends before it; the next pass starts at it, and
                        // keeps it.
                        kept_clock_row = cut_to.is_none();
                        break;
                    }
                    cut_to = Some(row.close + 1);
                    match next_significant(src, row.close + 1) {
                        Some(comma) if &src[comma.start..comma.end] == b"," => at = comma.end,
                        _ => break,
                    }
                }
                if let Some(end) = cut_to {
                    out.push_str(&sql[copied..tok.start]);
                    copied = end;
                    pos = end;
                    rows_cut_at.push(out.len());
                }
            }
            _ => {
                if values_at == Some(depth) && text != b"," {
                    values_at = None;
                }
            }
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some(Reduced {
        text: out,
        rows_cut_at,
    })
}

/// The next token from `pos` that is not whitespace or a comment.
fn next_significant(src: &[u8], mut pos: usize) -> Option<Token> {
    loop {
        let tok = Lexer::at(src, pos).next()?;
        match tok.kind {
            TokenKind::Whitespace { .. } | TokenKind::LineComment | TokenKind::BlockComment => {
                pos = tok.end;
            }
            _ => return Some(tok),
        }
    }
}

/// A parenthesised list of inert values.
struct InertList {
    /// Where its second comma is, when it has three values or more.
    second_comma: Option<usize>,
    /// Where its `)` is.
    close: usize,
    /// A value reads the clock (see [`crate::reads_clock`]).
    clock: bool,
    /// Its values are literals, signed or not, and nothing else.
    literals_only: bool,
}

/// The list whose `(` ends at `pos`, when it holds only inert values (see the
/// module's doc).
fn inert_list(src: &[u8], mut pos: usize) -> Option<InertList> {
    let mut commas = 0;
    let mut second_comma = None;
    // Bytes of the previous significant token, for casts (`::type`).
    let mut prev: &[u8] = b"(";
    let mut prev_kind = TokenKind::Punct;
    let mut in_value = false;
    let (mut clock, mut literals_only) = (false, true);
    // Of the value at hand: 0 nothing yet, 1 a sign, 2 a literal.
    let mut element = 0u8;
    loop {
        let tok = next_significant(src, pos)?;
        pos = tok.end;
        let text = &src[tok.start..tok.end];
        // As the key collapses a list: each value a literal, with a sign or not.
        match text {
            b"," | b")" => element = 0,
            b"+" | b"-" if element == 0 => element = 1,
            _ if tok.kind.is_literal() && element < 2 => element = 2,
            _ => literals_only = false,
        }
        let inert = match tok.kind {
            // Two strings in a row are one (across a newline): not looked into.
            TokenKind::String | TokenKind::DollarString if prev_kind.is_literal() => false,
            TokenKind::String | TokenKind::DollarString => {
                clock |= is_clock_literal(text);
                true
            }
            TokenKind::Number | TokenKind::Param => true,
            TokenKind::Word => {
                prev == b":"
                    || [&b"null"[..], b"default", b"true", b"false"]
                        .iter()
                        .any(|w| text.eq_ignore_ascii_case(w))
            }
            TokenKind::QuotedIdent => prev == b":",
            TokenKind::Punct => match text {
                b")" | b"," => {
                    if !in_value {
                        return None; // `()`, `(,` or `, ,`
                    }
                    in_value = false;
                    if text == b")" {
                        return Some(InertList {
                            second_comma,
                            close: tok.start,
                            clock,
                            literals_only,
                        });
                    }
                    commas += 1;
                    if commas == 2 {
                        second_comma = Some(tok.start);
                    }
                    prev = text;
                    prev_kind = tok.kind;
                    continue;
                }
                b"+" | b"-" | b":" | b"[" | b"]" => true,
                _ => false,
            },
            _ => false,
        };
        if !inert {
            return None;
        }
        in_value = true;
        prev = text;
        prev_kind = tok.kind;
    }
}

/// The string token `literal` with nothing between its quotes, in two pieces; `None`
/// when it is unterminated (it runs to the end of the text).
fn emptied(literal: &str) -> Option<(&str, &str)> {
    let (start, end) = string_body(literal.as_bytes())?;
    let (open, close) = (&literal[..start], &literal[end..]);
    // (A dollar string's closing tag is its opening one.)
    (!open.starts_with('$') || open == close).then_some((open, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(sql: &str) -> Option<String> {
        reduce_with(sql, true).map(|r| r.text)
    }

    #[test]
    fn rows_are_cut_only_when_the_shape_is_long() {
        let rows = |n: usize, value: &str| {
            let row = format!("(1, '{value}')");
            format!("INSERT INTO t VALUES {}", vec![row; n].join(", "))
        };
        // Long for its values alone: only those are emptied.
        let long_values = rows(40, &"y".repeat(LONG_LITERAL + 1));
        let reduced = reduce(&long_values).unwrap();
        assert!(reduced.rows_cut_at.is_empty());
        assert_eq!(reduced.text, rows(40, ""));
        // Long for its shape: rows are cut, whatever the values' length.
        for value in ["", "a short one"] {
            let sql = rows(2000, value);
            let reduced = reduce(&sql).unwrap();
            assert_eq!(reduced.rows_cut_at.len(), 1);
            assert_eq!(reduced.text, rows(1, value));
        }
        assert_eq!(reduce(&rows(3, "x")), None, "short");
        // An IN list is cut in any long text (to two values: the same fingerprint).
        let list = vec!["1"; 5000].join(", ");
        let sql = format!("SELECT * FROM t WHERE id IN ({list})");
        let reduced = reduce(&sql).unwrap();
        assert_eq!(reduced.text, "SELECT * FROM t WHERE id IN (1, 1)");
        assert!(reduced.rows_cut_at.is_empty());
    }

    #[test]
    fn a_closed_values_list_cuts_nothing_after_it() {
        let sql = "SELECT * FROM (VALUES (1)) v JOIN t ON greatest((1), (2), (3)) = t.a";
        assert_eq!(cut(sql), None);
    }

    #[test]
    fn later_inert_rows_of_values_are_cut() {
        let sql = "INSERT INTO t (a, b) VALUES (1, 'x'), (2, NULL), (-3, '{1}'::int[]) RETURNING a";
        assert_eq!(
            cut(sql).as_deref(),
            Some("INSERT INTO t (a, b) VALUES (1, 'x') RETURNING a")
        );
        let sql = "INSERT INTO t VALUES ($1, $2), ($3, $4), ($5, DEFAULT);";
        assert_eq!(cut(sql).as_deref(), Some("INSERT INTO t VALUES ($1, $2);"));
        // A row that is not inert stays.
        let sql = "INSERT INTO t VALUES (1), (now()), (3), (4)";
        assert_eq!(
            cut(sql).as_deref(),
            Some("INSERT INTO t VALUES (1), (now())")
        );
        for kept in [
            "INSERT INTO t VALUES (1), (CURRENT_TIMESTAMP)",
            "INSERT INTO t VALUES (1), ('now')",
            "INSERT INTO t VALUES (1), (b)",
            "INSERT INTO t VALUES (1), ((SELECT 2))",
            "SELECT * FROM (VALUES (1)) v",
            "INSERT INTO t VALUES (1)",
        ] {
            assert_eq!(cut(kept), None, "{kept}");
        }
    }

    #[test]
    fn long_in_lists_keep_their_first_two_values() {
        let sql = "SELECT * FROM t WHERE id IN (1, 2, 3) AND x NOT IN ('a', 'b', 'c', 'd')";
        assert_eq!(
            cut(sql).as_deref(),
            Some("SELECT * FROM t WHERE id IN (1, 2) AND x NOT IN ('a', 'b')")
        );
        for kept in [
            "SELECT * FROM t WHERE id IN (1, 2)",
            "SELECT * FROM t WHERE id IN (1, 2, f(3))",
            "SELECT * FROM t WHERE d IN ('today', '2020-01-01', '2020-01-02')",
            "SELECT * FROM t WHERE id IN (SELECT id FROM u)",
            "SELECT f(1, 2, 3)",
        ] {
            assert_eq!(cut(kept), None, "{kept}");
        }
    }

    #[test]
    fn long_strings_are_emptied() {
        let long = "y".repeat(LONG_LITERAL + 1);
        for (literal, emptied) in [
            (format!("'{long}'"), "''"),
            (format!("E'{long}'"), "E''"),
            (format!("$$ {long} $$"), "$$$$"),
            (format!("$body${long}$body$"), "$body$$body$"),
        ] {
            let sql = format!("SELECT length({literal}), 'short'");
            let want = format!("SELECT length({emptied}), 'short'");
            assert_eq!(cut(&sql), Some(want), "{literal:.20}");
        }
        let unterminated = format!("SELECT '{long}");
        assert_eq!(cut(&unterminated), None);
        // What may read the clock still does: a U&'' string, an array holding 'today'.
        for (kept, now) in [
            (format!("U&'{long}'"), "U&'now'"),
            (format!("'{{a,today}}{long}'"), "'now'"),
            (format!("$x${{a,today}}{long}$x$"), "$x$now$x$"),
        ] {
            let sql = format!("SELECT {kept}::text");
            assert_eq!(cut(&sql), Some(format!("SELECT {now}::text")), "{kept:.20}");
        }
    }

    #[test]
    fn one_row_that_reads_the_clock_stays() {
        let sql = "INSERT INTO t VALUES (1, 'a'), (2, 'now'), (3, 'b'), (4, 'today'), (5, 'c')";
        assert_eq!(
            cut(sql).as_deref(),
            Some("INSERT INTO t VALUES (1, 'a'), (2, 'now')")
        );
        // In an IN list it keeps the list whole; so do strings PostgreSQL joins.
        for kept in [
            "SELECT * FROM t WHERE d IN ('2020-01-01', '2020-01-02', 'today')",
            "SELECT * FROM t WHERE d IN ('a', 'b', 'no'\n'w')",
        ] {
            assert_eq!(cut(kept), None, "{kept}");
        }
    }

    #[test]
    fn lists_of_more_than_literals_are_cut_only_for_a_long_shape() {
        let list = |value: &str| vec![value; 3000].join(", ");
        for value in ["$1", "'a'::uuid", "3 - 1"] {
            let sql = format!("SELECT * FROM t WHERE id IN ({})", list(value));
            let long_shape = crate::strip::strip_literals(&sql).key().len() > REDUCE_ABOVE;
            assert!(long_shape, "{value}");
            assert!(reduce(&sql).is_some(), "{value}");
            assert_eq!(reduce_with(&sql, false), None, "{value}");
        }
        let literals = format!("SELECT * FROM t WHERE id IN ({})", list("-7"));
        assert!(reduce_with(&literals, false).is_some());
    }
}
