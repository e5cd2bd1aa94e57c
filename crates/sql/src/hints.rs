//! `pgopt:` directives in SQL comments (`/* pgopt:primary */`,
//! `/* pgopt:cache ttl=30s */`). PostgreSQL's parser drops comments, so they
//! are read from the text with the crate's lexer (a hint inside a string
//! literal is not a hint).

use std::time::Duration;

use crate::lexer::{Lexer, TokenKind};

/// Directives found in a statement's comments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// `pgopt:primary` — run on the primary whatever the verdict.
    pub primary: bool,
    /// `pgopt:cache` with optional `ttl=…` (`30s`, `500ms`, `5m`, `1h`, or
    /// plain seconds).
    pub cache: Option<CacheHint>,
    /// `pgopt:nocache` — never serve or store this statement in the cache.
    pub no_cache: bool,
    /// `pgopt:pool=NAME` — the named pool (workload class) to use.
    pub pool: Option<String>,
    /// Directives or arguments not understood, verbatim (for a warning).
    pub unknown: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheHint {
    pub ttl: Option<Duration>,
}

impl Hints {
    pub fn is_empty(&self) -> bool {
        *self == Hints::default()
    }
}

/// Reads the `pgopt:` directives of every comment in `sql`.
pub fn parse_hints(sql: &str) -> Hints {
    let mut hints = Hints::default();
    for tok in Lexer::new(sql) {
        let body = match tok.kind {
            TokenKind::BlockComment => sql
                .get(tok.start + 2..tok.end)
                .map(|b| b.strip_suffix("*/").unwrap_or(b)),
            TokenKind::LineComment => sql.get(tok.start + 2..tok.end),
            _ => None,
        };
        if let Some(body) = body {
            if body.contains("pgopt:") {
                parse_comment(body, &mut hints);
            }
        }
    }
    hints
}

/// Which directive the `key=value` words that follow belong to.
#[derive(Clone, Copy, PartialEq)]
enum Current {
    None,
    Cache,
}

fn parse_comment(body: &str, hints: &mut Hints) {
    let mut current = Current::None;
    for word in body.split_whitespace() {
        if let Some(directive) = word.strip_prefix("pgopt:") {
            current = Current::None;
            let (name, value) = match directive.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (directive, None),
            };
            match (name, value) {
                ("primary", None) => hints.primary = true,
                ("nocache", None) => hints.no_cache = true,
                ("cache", None) => {
                    hints.cache.get_or_insert_with(CacheHint::default);
                    current = Current::Cache;
                }
                ("pool", Some(pool)) if !pool.is_empty() => hints.pool = Some(pool.to_owned()),
                _ => hints.unknown.push(word.to_owned()),
            }
        } else if current == Current::Cache {
            match word.split_once('=') {
                Some(("ttl", v)) => match parse_duration(v) {
                    Some(ttl) => {
                        hints.cache.get_or_insert_with(CacheHint::default).ttl = Some(ttl);
                    }
                    None => hints.unknown.push(word.to_owned()),
                },
                _ => hints.unknown.push(word.to_owned()),
            }
        }
    }
}

/// `30s`, `500ms`, `5m`, `1h`, `2d` or plain seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    match unit {
        "" | "s" => secs(1),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_and_cache_ttl() {
        let h = parse_hints("/* pgopt:primary */ SELECT 1 /* pgopt:cache ttl=30s */");
        assert!(h.primary);
        assert_eq!(
            h.cache,
            Some(CacheHint {
                ttl: Some(Duration::from_secs(30))
            })
        );
        assert!(h.unknown.is_empty());
    }

    #[test]
    fn line_comment_pool_and_units() {
        let h = parse_hints("SELECT 1 -- pgopt:pool=analytics pgopt:cache ttl=500ms\n");
        assert_eq!(h.pool.as_deref(), Some("analytics"));
        assert_eq!(
            h.cache.and_then(|c| c.ttl),
            Some(Duration::from_millis(500))
        );
        let h = parse_hints("/* pgopt:cache ttl=5m */ SELECT 1");
        assert_eq!(h.cache.and_then(|c| c.ttl), Some(Duration::from_secs(300)));
    }

    #[test]
    fn cache_without_ttl_and_unknown_directives() {
        let h =
            parse_hints("/* pgopt:cache pgopt:frobnicate */ SELECT 1 /* pgopt:cache ttl=soon */");
        assert_eq!(h.cache, Some(CacheHint { ttl: None }));
        assert_eq!(h.unknown, vec!["pgopt:frobnicate", "ttl=soon"]);
    }

    #[test]
    fn hints_in_strings_and_plain_comments_are_ignored() {
        assert!(parse_hints("SELECT '/* pgopt:primary */' /* primary */").is_empty());
        assert!(parse_hints("SELECT $$ -- pgopt:primary $$").is_empty());
    }
}
