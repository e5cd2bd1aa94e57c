//! ErrorResponse and NoticeResponse: fields by code (severity, SQLSTATE,
//! message, detail, hint, …), a builder for the ones the proxy sends itself,
//! and the SQLSTATE codes it uses.

use std::fmt;

use bytes::BytesMut;

use crate::body::{write_message, BodyReader, MessageWriter};
use crate::error::{DecodeError, EncodeError, Tag};
use crate::list::{List, ListItem, Sealed};

/// Tag of ErrorResponse.
pub const ERROR_RESPONSE: u8 = b'E';
/// Tag of NoticeResponse.
pub const NOTICE_RESPONSE: u8 = b'N';

/// Field codes of ErrorResponse and NoticeResponse.
pub mod field {
    /// Severity, possibly localized.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (PostgreSQL 9.6 and later).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE code.
    pub const CODE: u8 = b'C';
    /// Primary message.
    pub const MESSAGE: u8 = b'M';
    /// Detail.
    pub const DETAIL: u8 = b'D';
    /// Hint.
    pub const HINT: u8 = b'H';
    /// Cursor position in the query string (1-based, in characters).
    pub const POSITION: u8 = b'P';
    /// Position in an internally generated query.
    pub const INTERNAL_POSITION: u8 = b'p';
    /// The internally generated query.
    pub const INTERNAL_QUERY: u8 = b'q';
    /// Context (call stack).
    pub const WHERE: u8 = b'W';
    /// Schema name.
    pub const SCHEMA: u8 = b's';
    /// Table name.
    pub const TABLE: u8 = b't';
    /// Column name.
    pub const COLUMN: u8 = b'c';
    /// Data type name.
    pub const DATA_TYPE: u8 = b'd';
    /// Constraint name.
    pub const CONSTRAINT: u8 = b'n';
    /// Source file.
    pub const FILE: u8 = b'F';
    /// Source line.
    pub const LINE: u8 = b'L';
    /// Source routine.
    pub const ROUTINE: u8 = b'R';
}

/// SQLSTATE codes the proxy reports itself.
pub mod sqlstate {
    /// `08000` connection_exception.
    pub const CONNECTION_EXCEPTION: &str = "08000";
    /// `08006` connection_failure: the server went away.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// `08001` sqlclient_unable_to_establish_sqlconnection.
    pub const UNABLE_TO_CONNECT: &str = "08001";
    /// `08004` sqlserver_rejected_establishment_of_sqlconnection.
    pub const CONNECTION_REJECTED: &str = "08004";
    /// `08P01` protocol_violation.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// `0A000` feature_not_supported.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// `55000` object_not_in_prerequisite_state (e.g. a feature that is off).
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    /// `25001` active_sql_transaction.
    pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
    /// `25006` read_only_sql_transaction.
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    /// `28000` invalid_authorization_specification (no such user, not allowed).
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    /// `28P01` invalid_password.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// `3D000` invalid_catalog_name: no such database.
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// `42501` insufficient_privilege.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// `42601` syntax_error.
    pub const SYNTAX_ERROR: &str = "42601";
    /// `26000` invalid_sql_statement_name: no such prepared statement.
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    /// `42P05` duplicate_prepared_statement.
    pub const DUPLICATE_PSTATEMENT: &str = "42P05";
    /// `53300` too_many_connections.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// `54000` program_limit_exceeded (e.g. a message too large).
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// `57014` query_canceled (also statement and query-wait timeouts).
    pub const QUERY_CANCELED: &str = "57014";
    /// `57P01` admin_shutdown.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// `57P03` cannot_connect_now (starting up, paused).
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// `25P02` in_failed_sql_transaction.
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    /// `25P03` idle_in_transaction_session_timeout.
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
    /// `57P05` idle_session_timeout.
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    /// `XX000` internal_error.
    pub const INTERNAL_ERROR: &str = "XX000";
    /// `42704` undefined_object.
    pub const UNDEFINED_OBJECT: &str = "42704";
    /// `22023` invalid_parameter_value.
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    /// `22021` character_not_in_repertoire: text not valid in its encoding.
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    /// `55P02` cant_change_runtime_param.
    pub const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
}

/// One field of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorField<'a> {
    /// Field code, see [`field`]. Never 0.
    pub code: u8,
    /// Field value.
    pub value: &'a str,
}

impl Sealed for ErrorField<'_> {}
impl<'a> ListItem<'a> for ErrorField<'a> {
    fn read(r: &mut BodyReader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        Ok(ErrorField {
            code: r.u8(field)?,
            value: r.cstr(field)?,
        })
    }
    fn write(&self, w: &mut MessageWriter<'_>, field: &'static str) -> Result<(), EncodeError> {
        if self.code == 0 {
            // Code 0 terminates the field list.
            return Err(EncodeError::NulInString {
                tag: w.tag(),
                field,
            });
        }
        w.u8(self.code);
        w.cstr(field, self.value)
    }
}

/// The body of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorFields<'a> {
    /// The fields in the order sent.
    pub fields: List<'a, ErrorField<'a>>,
}

impl<'a> ErrorFields<'a> {
    /// Decodes the body of an ErrorResponse (`tag` `'E'`) or NoticeResponse (`'N'`).
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag), body);
        let fields = List::read_until_nul(&mut r, "fields")?;
        r.finish()?;
        Ok(ErrorFields { fields })
    }

    /// The value of field `code` (see [`field`]), if present.
    pub fn get(&self, code: u8) -> Option<&'a str> {
        self.fields.iter().find(|f| f.code == code).map(|f| f.value)
    }

    /// Severity, non-localized when the server sent it (`V`), else `S`.
    pub fn severity(&self) -> Option<&'a str> {
        self.get(field::SEVERITY_NONLOCALIZED)
            .or_else(|| self.get(field::SEVERITY))
    }

    /// SQLSTATE code (`C`).
    pub fn code(&self) -> Option<&'a str> {
        self.get(field::CODE)
    }

    /// Primary message (`M`).
    pub fn message(&self) -> Option<&'a str> {
        self.get(field::MESSAGE)
    }

    /// Detail (`D`).
    pub fn detail(&self) -> Option<&'a str> {
        self.get(field::DETAIL)
    }

    /// Hint (`H`).
    pub fn hint(&self) -> Option<&'a str> {
        self.get(field::HINT)
    }

    /// Cursor position (`P`), 1-based in characters.
    pub fn position(&self) -> Option<u32> {
        self.get(field::POSITION).and_then(|p| p.parse().ok())
    }

    /// Appends an ErrorResponse with these fields.
    pub fn encode_error(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode(ERROR_RESPONSE, dst)
    }

    /// Appends a NoticeResponse with these fields.
    pub fn encode_notice(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode(NOTICE_RESPONSE, dst)
    }

    fn encode(&self, tag: u8, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag, |w| self.fields.write_nul_terminated(w, "fields"))
    }
}

/// Severity of an error or notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// ERROR: the statement failed, the session goes on.
    Error,
    /// FATAL: the session ends.
    Fatal,
    /// PANIC: all sessions end.
    Panic,
    /// WARNING (notice).
    Warning,
    /// NOTICE (notice).
    Notice,
    /// DEBUG (notice).
    Debug,
    /// INFO (notice).
    Info,
    /// LOG (notice).
    Log,
}

impl Severity {
    /// The name PostgreSQL sends: `ERROR`, `FATAL`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds the ErrorResponse or NoticeResponse the proxy sends itself.
///
/// ```
/// use pgopt_wire::{ErrorBuilder, Severity, sqlstate};
/// let mut out = bytes::BytesMut::new();
/// ErrorBuilder::new(Severity::Fatal, sqlstate::INVALID_PASSWORD,
///                   "password authentication failed for user \"app\"")
///     .encode_error(&mut out)
///     .unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorBuilder<'a> {
    severity: Severity,
    code: &'a str,
    message: &'a str,
    detail: Option<&'a str>,
    hint: Option<&'a str>,
    routine: Option<&'a str>,
}

impl<'a> ErrorBuilder<'a> {
    /// An error or notice with a severity, a SQLSTATE (see [`sqlstate`]) and a message.
    pub fn new(severity: Severity, code: &'a str, message: &'a str) -> Self {
        ErrorBuilder {
            severity,
            code,
            message,
            detail: None,
            hint: None,
            routine: None,
        }
    }

    /// Adds a detail line.
    pub fn detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }

    /// Adds the name of the PostgreSQL routine that reports this error, for clients
    /// that tell errors apart by it (pgjdbc prepares a statement again on
    /// `RevalidateCachedQuery`'s "cached plan must not change result type").
    pub fn routine(mut self, routine: &'a str) -> Self {
        self.routine = Some(routine);
        self
    }

    fn fields(&self) -> ([ErrorField<'a>; 7], usize) {
        let severity = self.severity.as_str();
        let mut fields = [ErrorField {
            code: field::SEVERITY,
            value: severity,
        }; 7];
        let mut n = 0;
        let mut push = |code, value| {
            fields[n] = ErrorField { code, value };
            n += 1;
        };
        push(field::SEVERITY, severity);
        push(field::SEVERITY_NONLOCALIZED, severity);
        push(field::CODE, self.code);
        push(field::MESSAGE, self.message);
        if let Some(detail) = self.detail {
            push(field::DETAIL, detail);
        }
        if let Some(hint) = self.hint {
            push(field::HINT, hint);
        }
        if let Some(routine) = self.routine {
            push(field::ROUTINE, routine);
        }
        (fields, n)
    }

    /// Appends an ErrorResponse.
    pub fn encode_error(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let (fields, n) = self.fields();
        ErrorFields {
            fields: List::from(&fields[..n]),
        }
        .encode_error(dst)
    }

    /// Appends a NoticeResponse.
    pub fn encode_notice(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let (fields, n) = self.fields();
        ErrorFields {
            fields: List::from(&fields[..n]),
        }
        .encode_notice(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_writes_what_postgres_writes() {
        let mut out = BytesMut::new();
        ErrorBuilder::new(Severity::Fatal, sqlstate::TOO_MANY_CONNECTIONS, "too many")
            .hint("wait")
            .encode_error(&mut out)
            .unwrap();
        assert_eq!(
            &out[5..],
            b"SFATAL\0VFATAL\0C53300\0Mtoo many\0Hwait\0\0".as_slice()
        );
        let decoded = ErrorFields::decode(b'E', &out[5..]).unwrap();
        assert_eq!(decoded.get(field::ROUTINE), None);
        assert_eq!(decoded.severity(), Some("FATAL"));
        assert_eq!(decoded.code(), Some("53300"));
        assert_eq!(decoded.message(), Some("too many"));
        assert_eq!(decoded.detail(), None);
        assert_eq!(decoded.hint(), Some("wait"));
    }

    #[test]
    fn reads_fields_of_a_server_error() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0Fparse_relation.c\0L1449\0RparserOpenTable\0\0";
        let e = ErrorFields::decode(b'E', body).unwrap();
        assert_eq!(e.code(), Some("42P01"));
        assert_eq!(e.position(), Some(15));
        assert_eq!(e.get(field::ROUTINE), Some("parserOpenTable"));
        assert_eq!(e.fields.len(), 8);
        assert!(ErrorFields::decode(b'E', &body[..body.len() - 1]).is_err());
    }
}
