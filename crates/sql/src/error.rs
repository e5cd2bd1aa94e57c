//! The crate's error type.

/// Why a statement could not be analysed. Callers treat every variant as
/// "not read-only, route to the primary".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// PostgreSQL's parser rejected the statement.
    #[error("cannot parse statement: {message} (near byte {position:?})")]
    Parse {
        /// The parser's message, e.g. `syntax error at or near "FORM"`.
        message: String,
        /// Byte offset of the offending token when it can be located in the
        /// text (the first occurrence of the token the parser names).
        position: Option<usize>,
    },
    /// The text holds a NUL byte, which PostgreSQL never accepts in a query.
    #[error("statement contains a NUL byte at byte {position}")]
    NulByte { position: usize },
    /// The parser library failed in an unexpected way (decoding its output or
    /// an internal panic that was caught).
    #[error("statement analysis failed inside the parser library: {message}")]
    Internal { message: String },
}

impl SqlError {
    pub(crate) fn from_pg_query(err: pg_query::Error, sql: &str) -> Self {
        match err {
            pg_query::Error::Parse(message) | pg_query::Error::Scan(message) => {
                let position = error_position(&message, sql);
                SqlError::Parse { message, position }
            }
            pg_query::Error::Conversion(nul) => SqlError::NulByte {
                position: nul.nul_position(),
            },
            other => SqlError::Internal {
                message: other.to_string(),
            },
        }
    }
}

/// Locates the token a PostgreSQL error message names (`at or near "X"`) or
/// the end of input.
fn error_position(message: &str, sql: &str) -> Option<usize> {
    if message.contains("at end of input") {
        return Some(sql.len());
    }
    let start = message.find("at or near \"")? + "at or near \"".len();
    let rest = message.get(start..)?;
    let token = rest.strip_suffix('"').unwrap_or(rest);
    if token.is_empty() {
        return None;
    }
    sql.find(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_of_named_token() {
        let sql = "SELECT * FORM t";
        let err = SqlError::from_pg_query(
            pg_query::Error::Parse("syntax error at or near \"FORM\"".into()),
            sql,
        );
        assert_eq!(
            err,
            SqlError::Parse {
                message: "syntax error at or near \"FORM\"".into(),
                position: Some(9)
            }
        );
    }

    #[test]
    fn position_at_end_of_input() {
        let err = SqlError::from_pg_query(
            pg_query::Error::Parse("syntax error at end of input".into()),
            "SELECT (1",
        );
        assert!(matches!(
            err,
            SqlError::Parse {
                position: Some(9),
                ..
            }
        ));
    }
}
