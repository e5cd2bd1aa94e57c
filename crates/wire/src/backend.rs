//! Messages a server (backend) sends: authentication, session parameters,
//! query results, errors and notices, extended-query acknowledgements, COPY,
//! notifications, protocol negotiation.
//!
//! Decoders borrow from the frame; encoders append to a [`BytesMut`].

use bytes::BytesMut;

use crate::authentication::Authentication;
use crate::body::{write_fixed, write_message, BodyReader, MessageWriter};
use crate::copy::{CopyData, CopyResponse};
use crate::error::{DecodeError, Direction, EncodeError, Tag};
use crate::error_response::ErrorFields;
use crate::format::{Format, Oid, TransactionStatus};
use crate::list::{List, ListItem, Sealed};

/// Tag bytes of backend messages.
pub mod tag {
    /// Authentication request or result.
    pub const AUTHENTICATION: u8 = b'R';
    /// ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// BackendKeyData.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ReadyForQuery.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// RowDescription.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// NoData.
    pub const NO_DATA: u8 = b'n';
    /// ParameterDescription.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// PortalSuspended.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// CopyInResponse.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyOutResponse.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// CopyBothResponse.
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// CopyData.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone.
    pub const COPY_DONE: u8 = b'c';
    /// NotificationResponse.
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// FunctionCallResponse.
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
}

/// A decoded backend message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    /// Authentication request or result.
    Authentication(Authentication<'a>),
    /// A run-time parameter's current value.
    ParameterStatus(ParameterStatus<'a>),
    /// Process id and secret key for CancelRequest.
    BackendKeyData(BackendKeyData),
    /// Ready for a new query, with the transaction status.
    ReadyForQuery(ReadyForQuery),
    /// Columns of the rows that follow.
    RowDescription(RowDescription<'a>),
    /// One row.
    DataRow(DataRow<'a>),
    /// A statement finished.
    CommandComplete(CommandComplete<'a>),
    /// The query string was empty.
    EmptyQueryResponse,
    /// An error.
    ErrorResponse(ErrorFields<'a>),
    /// A notice or warning.
    NoticeResponse(ErrorFields<'a>),
    /// Parse done.
    ParseComplete,
    /// Bind done.
    BindComplete,
    /// Close done.
    CloseComplete,
    /// The statement or portal returns no rows.
    NoData,
    /// Parameter types of a described statement.
    ParameterDescription(ParameterDescription<'a>),
    /// Execute reached its row limit.
    PortalSuspended,
    /// COPY FROM STDIN starts.
    CopyInResponse(CopyResponse<'a>),
    /// COPY TO STDOUT starts.
    CopyOutResponse(CopyResponse<'a>),
    /// Bidirectional copy (replication) starts.
    CopyBothResponse(CopyResponse<'a>),
    /// A chunk of COPY data.
    CopyData(CopyData<'a>),
    /// End of COPY data.
    CopyDone,
    /// LISTEN/NOTIFY notification.
    NotificationResponse(NotificationResponse<'a>),
    /// The server does not support the requested minor version or some options.
    NegotiateProtocolVersion(NegotiateProtocolVersion<'a>),
    /// Result of a FunctionCall.
    FunctionCallResponse(FunctionCallResponse<'a>),
}

impl<'a> BackendMessage<'a> {
    /// Decodes the body of a message with tag `tag`.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        use BackendMessage as M;
        Ok(match tag {
            tag::AUTHENTICATION => M::Authentication(Authentication::decode(body)?),
            tag::PARAMETER_STATUS => M::ParameterStatus(ParameterStatus::decode(body)?),
            tag::BACKEND_KEY_DATA => M::BackendKeyData(BackendKeyData::decode(body)?),
            tag::READY_FOR_QUERY => M::ReadyForQuery(ReadyForQuery::decode(body)?),
            tag::ROW_DESCRIPTION => M::RowDescription(RowDescription::decode(body)?),
            tag::DATA_ROW => M::DataRow(DataRow::decode(body)?),
            tag::COMMAND_COMPLETE => M::CommandComplete(CommandComplete::decode(body)?),
            tag::EMPTY_QUERY_RESPONSE => empty(tag, body, M::EmptyQueryResponse)?,
            tag::ERROR_RESPONSE => M::ErrorResponse(ErrorFields::decode(tag, body)?),
            tag::NOTICE_RESPONSE => M::NoticeResponse(ErrorFields::decode(tag, body)?),
            tag::PARSE_COMPLETE => empty(tag, body, M::ParseComplete)?,
            tag::BIND_COMPLETE => empty(tag, body, M::BindComplete)?,
            tag::CLOSE_COMPLETE => empty(tag, body, M::CloseComplete)?,
            tag::NO_DATA => empty(tag, body, M::NoData)?,
            tag::PARAMETER_DESCRIPTION => {
                M::ParameterDescription(ParameterDescription::decode(body)?)
            }
            tag::PORTAL_SUSPENDED => empty(tag, body, M::PortalSuspended)?,
            tag::COPY_IN_RESPONSE => M::CopyInResponse(CopyResponse::decode(tag, body)?),
            tag::COPY_OUT_RESPONSE => M::CopyOutResponse(CopyResponse::decode(tag, body)?),
            tag::COPY_BOTH_RESPONSE => M::CopyBothResponse(CopyResponse::decode(tag, body)?),
            tag::COPY_DATA => M::CopyData(CopyData::decode(body)?),
            tag::COPY_DONE => empty(tag, body, M::CopyDone)?,
            tag::NOTIFICATION_RESPONSE => {
                M::NotificationResponse(NotificationResponse::decode(body)?)
            }
            tag::NEGOTIATE_PROTOCOL_VERSION => {
                M::NegotiateProtocolVersion(NegotiateProtocolVersion::decode(body)?)
            }
            tag::FUNCTION_CALL_RESPONSE => {
                M::FunctionCallResponse(FunctionCallResponse::decode(body)?)
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    tag: Tag(tag),
                    direction: Direction::Backend,
                })
            }
        })
    }

    /// The message's tag byte.
    pub fn tag(&self) -> u8 {
        use BackendMessage as M;
        match self {
            M::Authentication(_) => tag::AUTHENTICATION,
            M::ParameterStatus(_) => tag::PARAMETER_STATUS,
            M::BackendKeyData(_) => tag::BACKEND_KEY_DATA,
            M::ReadyForQuery(_) => tag::READY_FOR_QUERY,
            M::RowDescription(_) => tag::ROW_DESCRIPTION,
            M::DataRow(_) => tag::DATA_ROW,
            M::CommandComplete(_) => tag::COMMAND_COMPLETE,
            M::EmptyQueryResponse => tag::EMPTY_QUERY_RESPONSE,
            M::ErrorResponse(_) => tag::ERROR_RESPONSE,
            M::NoticeResponse(_) => tag::NOTICE_RESPONSE,
            M::ParseComplete => tag::PARSE_COMPLETE,
            M::BindComplete => tag::BIND_COMPLETE,
            M::CloseComplete => tag::CLOSE_COMPLETE,
            M::NoData => tag::NO_DATA,
            M::ParameterDescription(_) => tag::PARAMETER_DESCRIPTION,
            M::PortalSuspended => tag::PORTAL_SUSPENDED,
            M::CopyInResponse(_) => tag::COPY_IN_RESPONSE,
            M::CopyOutResponse(_) => tag::COPY_OUT_RESPONSE,
            M::CopyBothResponse(_) => tag::COPY_BOTH_RESPONSE,
            M::CopyData(_) => tag::COPY_DATA,
            M::CopyDone => tag::COPY_DONE,
            M::NotificationResponse(_) => tag::NOTIFICATION_RESPONSE,
            M::NegotiateProtocolVersion(_) => tag::NEGOTIATE_PROTOCOL_VERSION,
            M::FunctionCallResponse(_) => tag::FUNCTION_CALL_RESPONSE,
        }
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        use BackendMessage as M;
        match self {
            M::Authentication(m) => m.encode(dst),
            M::ParameterStatus(m) => m.encode(dst),
            M::BackendKeyData(m) => {
                m.encode(dst);
                Ok(())
            }
            M::ReadyForQuery(m) => {
                m.encode(dst);
                Ok(())
            }
            M::RowDescription(m) => m.encode(dst),
            M::DataRow(m) => m.encode(dst),
            M::CommandComplete(m) => m.encode(dst),
            M::ErrorResponse(m) => m.encode_error(dst),
            M::NoticeResponse(m) => m.encode_notice(dst),
            M::ParameterDescription(m) => m.encode(dst),
            M::CopyInResponse(m) | M::CopyOutResponse(m) | M::CopyBothResponse(m) => {
                m.encode(self.tag(), dst)
            }
            M::CopyData(m) => m.encode(dst),
            M::NotificationResponse(m) => m.encode(dst),
            M::NegotiateProtocolVersion(m) => m.encode(dst),
            M::FunctionCallResponse(m) => m.encode(dst),
            M::EmptyQueryResponse
            | M::ParseComplete
            | M::BindComplete
            | M::CloseComplete
            | M::NoData
            | M::PortalSuspended
            | M::CopyDone => {
                write_fixed(dst, self.tag(), &[]);
                Ok(())
            }
        }
    }
}

fn empty<'a>(
    tag: u8,
    body: &[u8],
    msg: BackendMessage<'a>,
) -> Result<BackendMessage<'a>, DecodeError> {
    BodyReader::new(Tag(tag), body).finish()?;
    Ok(msg)
}

/// ParameterStatus: the current value of a reported run-time parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterStatus<'a> {
    /// Parameter name, e.g. `server_version`, `client_encoding`, `TimeZone`.
    pub name: &'a str,
    /// Its value.
    pub value: &'a str,
}

impl<'a> ParameterStatus<'a> {
    /// Decodes a ParameterStatus body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::PARAMETER_STATUS), body);
        let name = r.cstr("name")?;
        let value = r.cstr("value")?;
        r.finish()?;
        Ok(ParameterStatus { name, value })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::PARAMETER_STATUS, |w| {
            w.cstr("name", self.name)?;
            w.cstr("value", self.value)
        })
    }
}

/// BackendKeyData: what a client needs to cancel this session's queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKeyData {
    /// Backend process id.
    pub process_id: i32,
    /// Secret key.
    pub secret_key: i32,
}

impl BackendKeyData {
    /// Decodes a BackendKeyData body (protocol 3.0: a 4-byte key).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::BACKEND_KEY_DATA), body);
        let process_id = r.i32("process id")?;
        let secret_key = r.i32("secret key")?;
        r.finish()?;
        Ok(BackendKeyData {
            process_id,
            secret_key,
        })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) {
        let mut body = [0u8; 8];
        body[..4].copy_from_slice(&self.process_id.to_be_bytes());
        body[4..].copy_from_slice(&self.secret_key.to_be_bytes());
        write_fixed(dst, tag::BACKEND_KEY_DATA, &body);
    }
}

/// ReadyForQuery: the server waits for the next query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadyForQuery {
    /// Idle, in a transaction, or in a failed transaction.
    pub status: TransactionStatus,
}

impl ReadyForQuery {
    /// Decodes a ReadyForQuery body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::READY_FOR_QUERY), body);
        let b = r.u8("transaction status")?;
        let status = TransactionStatus::from_byte(b)
            .ok_or_else(|| r.invalid("transaction status", b.into()))?;
        r.finish()?;
        Ok(ReadyForQuery { status })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) {
        write_fixed(dst, tag::READY_FOR_QUERY, &[self.status.byte()]);
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    /// Column name.
    pub name: &'a str,
    /// OID of the source table, or 0.
    pub table_oid: Oid,
    /// Attribute number in the source table, or 0.
    pub column_id: i16,
    /// Data type OID.
    pub type_oid: Oid,
    /// `pg_type.typlen`; negative for variable width.
    pub type_size: i16,
    /// `pg_attribute.atttypmod`.
    pub type_modifier: i32,
    /// Text or binary.
    pub format: Format,
}

impl Sealed for FieldDescription<'_> {}
impl<'a> ListItem<'a> for FieldDescription<'a> {
    fn read(r: &mut BodyReader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let name = r.cstr(field)?;
        let table_oid = r.u32(field)?;
        let column_id = r.i16(field)?;
        let type_oid = r.u32(field)?;
        let type_size = r.i16(field)?;
        let type_modifier = r.i32(field)?;
        let code = r.i16(field)?;
        let format = Format::from_code(code).ok_or_else(|| r.invalid(field, code.into()))?;
        Ok(FieldDescription {
            name,
            table_oid,
            column_id,
            type_oid,
            type_size,
            type_modifier,
            format,
        })
    }

    fn write(&self, w: &mut MessageWriter<'_>, field: &'static str) -> Result<(), EncodeError> {
        w.cstr(field, self.name)?;
        w.u32(self.table_oid);
        w.i16(self.column_id);
        w.u32(self.type_oid);
        w.i16(self.type_size);
        w.i32(self.type_modifier);
        w.i16(self.format.code());
        Ok(())
    }
}

/// RowDescription: the columns of the rows that follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowDescription<'a> {
    /// One entry per column.
    pub fields: List<'a, FieldDescription<'a>>,
}

impl<'a> RowDescription<'a> {
    /// Decodes a RowDescription body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::ROW_DESCRIPTION), body);
        let count = r.u16("field count")?;
        let fields = List::read_counted(&mut r, count.into(), "fields")?;
        r.finish()?;
        Ok(RowDescription { fields })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::ROW_DESCRIPTION, |w| {
            self.fields.write_counted_u16(w, "fields")
        })
    }
}

/// DataRow: one row of column values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataRow<'a> {
    /// Column values in order; `None` is NULL. Iterating allocates nothing.
    pub values: List<'a, Option<&'a [u8]>>,
}

impl<'a> DataRow<'a> {
    /// Decodes a DataRow body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::DATA_ROW), body);
        let count = r.u16("column count")?;
        let values = List::read_counted(&mut r, count.into(), "column values")?;
        r.finish()?;
        Ok(DataRow { values })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::DATA_ROW, |w| {
            self.values.write_counted_u16(w, "column values")
        })
    }
}

/// CommandComplete: a statement finished; its tag says what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandComplete<'a> {
    /// The command tag, e.g. `SELECT 3`, `INSERT 0 1`, `UPDATE 7`, `CREATE TABLE`.
    pub tag: &'a str,
}

impl<'a> CommandComplete<'a> {
    /// Decodes a CommandComplete body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::COMMAND_COMPLETE), body);
        let tag = r.cstr("command tag")?;
        r.finish()?;
        Ok(CommandComplete { tag })
    }

    /// The command word(s) without the counts: `INSERT`, `CREATE TABLE`, ….
    pub fn command(&self) -> &'a str {
        match self.rows() {
            Some(_) => self.tag.split(' ').next().unwrap_or(self.tag),
            None => self.tag,
        }
    }

    /// Rows affected or returned, for the commands whose tag reports them:
    /// INSERT, UPDATE, DELETE, MERGE, SELECT (also CREATE TABLE AS), MOVE,
    /// FETCH, COPY.
    pub fn rows(&self) -> Option<u64> {
        let mut words = self.tag.split(' ');
        let command = words.next()?;
        let last = words.next_back()?;
        match command {
            "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "SELECT" | "MOVE" | "FETCH" | "COPY" => {
                last.parse().ok()
            }
            _ => None,
        }
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::COMMAND_COMPLETE, |w| {
            w.cstr("command tag", self.tag)
        })
    }
}

/// ParameterDescription: parameter types of a described statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParameterDescription<'a> {
    /// One type OID per parameter.
    pub types: List<'a, Oid>,
}

impl<'a> ParameterDescription<'a> {
    /// Decodes a ParameterDescription body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::PARAMETER_DESCRIPTION), body);
        let count = r.u16("parameter count")?;
        let types = List::read_counted(&mut r, count.into(), "parameter types")?;
        r.finish()?;
        Ok(ParameterDescription { types })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::PARAMETER_DESCRIPTION, |w| {
            self.types.write_counted_u16(w, "parameter types")
        })
    }
}

/// NotificationResponse: a NOTIFY on a channel this session LISTENs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationResponse<'a> {
    /// Process id of the notifying backend.
    pub process_id: i32,
    /// Channel name.
    pub channel: &'a str,
    /// Payload (may be empty).
    pub payload: &'a str,
}

impl<'a> NotificationResponse<'a> {
    /// Decodes a NotificationResponse body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::NOTIFICATION_RESPONSE), body);
        let process_id = r.i32("process id")?;
        let channel = r.cstr("channel")?;
        let payload = r.cstr("payload")?;
        r.finish()?;
        Ok(NotificationResponse {
            process_id,
            channel,
            payload,
        })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::NOTIFICATION_RESPONSE, |w| {
            w.i32(self.process_id);
            w.cstr("channel", self.channel)?;
            w.cstr("payload", self.payload)
        })
    }
}

/// NegotiateProtocolVersion: the newest minor version the server supports and
/// the `_pq_.` options it did not recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateProtocolVersion<'a> {
    /// Newest minor protocol version supported for the requested major.
    pub newest_minor: i32,
    /// Protocol options not recognised.
    pub unrecognized: List<'a, &'a str>,
}

impl<'a> NegotiateProtocolVersion<'a> {
    /// Decodes a NegotiateProtocolVersion body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::NEGOTIATE_PROTOCOL_VERSION), body);
        let newest_minor = r.i32("newest minor version")?;
        let count = r.i32("option count")?;
        let count = usize::try_from(count).map_err(|_| r.invalid("option count", count.into()))?;
        let unrecognized = List::read_counted(&mut r, count, "options")?;
        r.finish()?;
        Ok(NegotiateProtocolVersion {
            newest_minor,
            unrecognized,
        })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::NEGOTIATE_PROTOCOL_VERSION, |w| {
            w.i32(self.newest_minor);
            w.count_i32("options", self.unrecognized.len())?;
            self.unrecognized.write_items(w, "options")
        })
    }
}

/// FunctionCallResponse: the result of a FunctionCall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionCallResponse<'a> {
    /// The result value; `None` is NULL.
    pub result: Option<&'a [u8]>,
}

impl<'a> FunctionCallResponse<'a> {
    /// Decodes a FunctionCallResponse body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = BodyReader::new(Tag(tag::FUNCTION_CALL_RESPONSE), body);
        let result = r.nullable_bytes("result")?;
        r.finish()?;
        Ok(FunctionCallResponse { result })
    }

    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, tag::FUNCTION_CALL_RESPONSE, |w| {
            w.nullable_bytes("result", self.result)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_complete_counts_rows() {
        let rows = |tag| CommandComplete { tag }.rows();
        assert_eq!(rows("SELECT 3"), Some(3));
        assert_eq!(rows("INSERT 0 12"), Some(12));
        assert_eq!(rows("UPDATE 0"), Some(0));
        assert_eq!(rows("COPY 5"), Some(5));
        assert_eq!(rows("CREATE TABLE"), None);
        assert_eq!(rows("BEGIN"), None);
        assert_eq!(rows("SELECT x"), None);
        assert_eq!(rows(""), None);
        assert_eq!(CommandComplete { tag: "INSERT 0 1" }.command(), "INSERT");
        assert_eq!(
            CommandComplete {
                tag: "CREATE TABLE"
            }
            .command(),
            "CREATE TABLE"
        );
    }

    #[test]
    fn data_row_iterates_values_and_nulls() {
        let body = b"\0\x03\0\0\0\x011\xff\xff\xff\xff\0\0\0\0";
        let row = DataRow::decode(body).unwrap();
        let values: Vec<_> = row.values.iter().collect();
        assert_eq!(values, [Some(&b"1"[..]), None, Some(&b""[..])]);
        assert!(DataRow::decode(&body[..body.len() - 1]).is_err());
        assert!(matches!(
            DataRow::decode(b"\0\x01\xff\xff\xff\xfe"),
            Err(DecodeError::InvalidValue { value: -2, .. })
        ));
    }

    #[test]
    fn ready_for_query_knows_the_three_statuses() {
        for (b, status) in [
            (b'I', TransactionStatus::Idle),
            (b'T', TransactionStatus::InTransaction),
            (b'E', TransactionStatus::Failed),
        ] {
            assert_eq!(ReadyForQuery::decode(&[b]).unwrap().status, status);
        }
        assert!(ReadyForQuery::decode(b"X").is_err());
        assert!(ReadyForQuery::decode(b"").is_err());
    }

    #[test]
    fn negative_option_count_is_invalid() {
        assert!(matches!(
            NegotiateProtocolVersion::decode(b"\0\0\0\0\xff\xff\xff\xff"),
            Err(DecodeError::InvalidValue { value: -1, .. })
        ));
    }
}
