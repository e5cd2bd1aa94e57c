//! Every message type: encode, split the frame off a buffer, decode, compare.

use bytes::BytesMut;
use pgopt_wire::backend::{
    BackendKeyData, BackendMessage, CommandComplete, DataRow, FieldDescription,
    FunctionCallResponse, NegotiateProtocolVersion, NotificationResponse, ParameterDescription,
    ParameterStatus, ReadyForQuery, RowDescription,
};
use pgopt_wire::frontend::{
    AuthResponse, Bind, Close, Describe, Execute, FrontendMessage, FunctionCall, Parse,
    PasswordMessage, Query, SaslInitialResponse, SaslResponse,
};
use pgopt_wire::startup::{
    split_startup, CancelRequest, ProtocolVersion, SslResponse, StartupMessage, StartupPacket,
    MAX_STARTUP_PACKET_LEN,
};
use pgopt_wire::{
    split_frame, sqlstate, Authentication, CopyData, CopyFail, CopyResponse, ErrorBuilder,
    ErrorField, ErrorFields, Format, List, Severity, Target, TransactionStatus,
    DEFAULT_MAX_MESSAGE_LEN,
};

fn frontend_roundtrip(msg: FrontendMessage<'_>) {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf).unwrap();
    buf.extend_from_slice(b"tail");
    let frame = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN)
        .unwrap()
        .expect("a whole frame");
    assert_eq!(&buf[..], b"tail", "{msg:?}: the frame ends where it should");
    assert_eq!(frame.tag(), msg.tag());
    assert_eq!(frame.frontend().unwrap(), msg);
    // Re-encoding a decoded message gives the same bytes.
    let mut again = BytesMut::new();
    frame.frontend().unwrap().encode(&mut again).unwrap();
    assert_eq!(&again[..], &frame.as_bytes()[..]);
}

fn backend_roundtrip(msg: BackendMessage<'_>) {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf).unwrap();
    buf.extend_from_slice(b"tail");
    let frame = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN)
        .unwrap()
        .expect("a whole frame");
    assert_eq!(&buf[..], b"tail", "{msg:?}: the frame ends where it should");
    assert_eq!(frame.tag(), msg.tag());
    assert_eq!(frame.backend().unwrap(), msg);
    let mut again = BytesMut::new();
    frame.backend().unwrap().encode(&mut again).unwrap();
    assert_eq!(&again[..], &frame.as_bytes()[..]);
}

#[test]
fn frontend_messages_roundtrip() {
    let oids = [23u32, 25, 0];
    let formats = [Format::Binary, Format::Text];
    let values: [Option<&[u8]>; 3] = [Some(b"42"), None, Some(b"")];
    for msg in [
        FrontendMessage::Query(Query {
            sql: "SELECT 1; SELECT 'é'",
        }),
        FrontendMessage::Query(Query { sql: "" }),
        FrontendMessage::Parse(Parse {
            name: "s1",
            query: "SELECT $1::int, $2, $3",
            param_types: List::from(&oids),
        }),
        FrontendMessage::Parse(Parse {
            name: "",
            query: "SELECT 1",
            param_types: List::default(),
        }),
        FrontendMessage::Bind(Bind {
            portal: "p",
            statement: "s1",
            param_formats: List::from(&formats[..1]),
            params: List::from(&values),
            result_formats: List::from(&formats),
        }),
        FrontendMessage::Bind(Bind {
            portal: "",
            statement: "",
            param_formats: List::default(),
            params: List::default(),
            result_formats: List::default(),
        }),
        FrontendMessage::Describe(Describe {
            target: Target::Statement,
            name: "s1",
        }),
        FrontendMessage::Describe(Describe {
            target: Target::Portal,
            name: "",
        }),
        FrontendMessage::Execute(Execute {
            portal: "",
            max_rows: 0,
        }),
        FrontendMessage::Execute(Execute {
            portal: "p",
            max_rows: 100,
        }),
        FrontendMessage::Close(Close {
            target: Target::Portal,
            name: "p",
        }),
        FrontendMessage::Close(Close {
            target: Target::Statement,
            name: "s1",
        }),
        FrontendMessage::Sync,
        FrontendMessage::Flush,
        FrontendMessage::Terminate,
        FrontendMessage::CopyData(CopyData {
            data: b"1\tone\n\0\xff",
        }),
        FrontendMessage::CopyDone,
        FrontendMessage::CopyFail(CopyFail {
            message: "client gave up",
        }),
        FrontendMessage::AuthResponse(AuthResponse { body: b"md5abc\0" }),
        FrontendMessage::FunctionCall(FunctionCall {
            body: b"\0\0\x04\xd2\0\0\0\0\0\0",
        }),
    ] {
        frontend_roundtrip(msg);
    }
}

#[test]
fn auth_responses_roundtrip_through_their_readers() {
    let decode = |buf: &BytesMut| -> Vec<u8> { buf[5..].to_vec() };

    let mut buf = BytesMut::new();
    PasswordMessage { password: "md5f00" }
        .encode(&mut buf)
        .unwrap();
    let body = decode(&buf);
    let p = AuthResponse { body: &body };
    assert_eq!(p.password().unwrap().password, "md5f00");

    for data in [Some(&b"n,,n=,r=abc"[..]), None] {
        let msg = SaslInitialResponse {
            mechanism: "SCRAM-SHA-256",
            data,
        };
        let mut buf = BytesMut::new();
        msg.encode(&mut buf).unwrap();
        let body = decode(&buf);
        assert_eq!(AuthResponse { body: &body }.sasl_initial().unwrap(), msg);
    }

    let msg = SaslResponse {
        data: b"c=biws,r=abc,p=xyz",
    };
    let mut buf = BytesMut::new();
    msg.encode(&mut buf).unwrap();
    let body = decode(&buf);
    assert_eq!(AuthResponse { body: &body }.sasl(), msg);
}

#[test]
fn backend_messages_roundtrip() {
    let mechanisms = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"];
    let fields = [
        FieldDescription {
            name: "id",
            table_oid: 16384,
            column_id: 1,
            type_oid: 23,
            type_size: 4,
            type_modifier: -1,
            format: Format::Binary,
        },
        FieldDescription {
            name: "name",
            table_oid: 0,
            column_id: 0,
            type_oid: 25,
            type_size: -1,
            type_modifier: -1,
            format: Format::Text,
        },
    ];
    let values: [Option<&[u8]>; 3] = [Some(b"1"), None, Some(b"alice")];
    let notice_fields = [
        ErrorField {
            code: b'S',
            value: "WARNING",
        },
        ErrorField {
            code: b'C',
            value: "01000",
        },
        ErrorField {
            code: b'M',
            value: "careful",
        },
    ];
    let oids = [23u32, 25];
    let formats = [Format::Text, Format::Binary, Format::Binary];
    let options = ["_pq_.unknown", "_pq_.other"];
    for msg in [
        BackendMessage::Authentication(Authentication::Ok),
        BackendMessage::Authentication(Authentication::KerberosV5),
        BackendMessage::Authentication(Authentication::CleartextPassword),
        BackendMessage::Authentication(Authentication::Md5Password {
            salt: [0xde, 0xad, 0xbe, 0xef],
        }),
        BackendMessage::Authentication(Authentication::Gss),
        BackendMessage::Authentication(Authentication::GssContinue { data: b"tok" }),
        BackendMessage::Authentication(Authentication::Sspi),
        BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: List::from(&mechanisms),
        }),
        BackendMessage::Authentication(Authentication::SaslContinue {
            data: b"r=abc,s=c2FsdA==,i=4096",
        }),
        BackendMessage::Authentication(Authentication::SaslFinal { data: b"v=xyz=" }),
        BackendMessage::ParameterStatus(ParameterStatus {
            name: "server_version",
            value: "15.8",
        }),
        BackendMessage::BackendKeyData(BackendKeyData {
            process_id: 31337,
            secret_key: -123456789,
        }),
        BackendMessage::ReadyForQuery(ReadyForQuery {
            status: TransactionStatus::Idle,
        }),
        BackendMessage::ReadyForQuery(ReadyForQuery {
            status: TransactionStatus::InTransaction,
        }),
        BackendMessage::ReadyForQuery(ReadyForQuery {
            status: TransactionStatus::Failed,
        }),
        BackendMessage::RowDescription(RowDescription {
            fields: List::from(&fields),
        }),
        BackendMessage::RowDescription(RowDescription::default()),
        BackendMessage::DataRow(DataRow {
            values: List::from(&values),
        }),
        BackendMessage::DataRow(DataRow::default()),
        BackendMessage::CommandComplete(CommandComplete { tag: "INSERT 0 3" }),
        BackendMessage::EmptyQueryResponse,
        BackendMessage::NoticeResponse(ErrorFields {
            fields: List::from(&notice_fields),
        }),
        BackendMessage::ErrorResponse(ErrorFields::default()),
        BackendMessage::ParseComplete,
        BackendMessage::BindComplete,
        BackendMessage::CloseComplete,
        BackendMessage::NoData,
        BackendMessage::ParameterDescription(ParameterDescription {
            types: List::from(&oids),
        }),
        BackendMessage::PortalSuspended,
        BackendMessage::CopyInResponse(CopyResponse {
            format: Format::Text,
            column_formats: List::from(&formats[..1]),
        }),
        BackendMessage::CopyOutResponse(CopyResponse {
            format: Format::Binary,
            column_formats: List::from(&formats),
        }),
        BackendMessage::CopyBothResponse(CopyResponse {
            format: Format::Binary,
            column_formats: List::default(),
        }),
        BackendMessage::CopyData(CopyData { data: b"\x00\x01" }),
        BackendMessage::CopyDone,
        BackendMessage::NotificationResponse(NotificationResponse {
            process_id: 77,
            channel: "jobs",
            payload: "{\"id\": 1}",
        }),
        BackendMessage::NegotiateProtocolVersion(NegotiateProtocolVersion {
            newest_minor: 0,
            unrecognized: List::from(&options),
        }),
        BackendMessage::FunctionCallResponse(FunctionCallResponse {
            result: Some(b"\0\0\0\x01"),
        }),
        BackendMessage::FunctionCallResponse(FunctionCallResponse { result: None }),
    ] {
        backend_roundtrip(msg);
    }
}

#[test]
fn error_builder_output_decodes_field_by_field() {
    let mut buf = BytesMut::new();
    ErrorBuilder::new(
        Severity::Error,
        sqlstate::QUERY_CANCELED,
        "canceling statement due to statement timeout",
    )
    .detail("ran for 30 s")
    .hint("raise statement_timeout")
    .encode_error(&mut buf)
    .unwrap();
    ErrorBuilder::new(Severity::Notice, "00000", "hello")
        .encode_notice(&mut buf)
        .unwrap();
    let error = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN)
        .unwrap()
        .unwrap();
    let notice = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN)
        .unwrap()
        .unwrap();
    let BackendMessage::ErrorResponse(e) = error.backend().unwrap() else {
        panic!("not an ErrorResponse");
    };
    assert_eq!(e.severity(), Some("ERROR"));
    assert_eq!(e.code(), Some("57014"));
    assert_eq!(
        e.message(),
        Some("canceling statement due to statement timeout")
    );
    assert_eq!(e.detail(), Some("ran for 30 s"));
    assert_eq!(e.hint(), Some("raise statement_timeout"));
    let BackendMessage::NoticeResponse(n) = notice.backend().unwrap() else {
        panic!("not a NoticeResponse");
    };
    assert_eq!((n.severity(), n.message()), (Some("NOTICE"), Some("hello")));
}

#[test]
fn startup_packets_roundtrip() {
    let params = [
        ("user", "app"),
        ("database", "shop"),
        ("application_name", "psql"),
        ("options", "-c search_path=a,b"),
    ];
    for packet in [
        StartupPacket::Startup(StartupMessage {
            protocol: ProtocolVersion::V3_0,
            params: List::from(&params),
        }),
        StartupPacket::Startup(StartupMessage {
            protocol: ProtocolVersion { major: 3, minor: 2 },
            params: List::default(),
        }),
        StartupPacket::SslRequest,
        StartupPacket::GssEncRequest,
        StartupPacket::Cancel(CancelRequest {
            process_id: 1,
            secret_key: 2,
        }),
    ] {
        let mut buf = BytesMut::new();
        packet.encode(&mut buf).unwrap();
        let frame = split_startup(&mut buf, MAX_STARTUP_PACKET_LEN)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty());
        assert_eq!(frame.decode().unwrap(), packet);
    }
    for answer in [SslResponse::Accept, SslResponse::Reject] {
        let mut buf = BytesMut::new();
        answer.encode(&mut buf);
        assert_eq!(SslResponse::from_byte(buf[0]), Some(answer));
    }
}

#[test]
fn encoding_refuses_nul_bytes_and_leaves_the_buffer_alone() {
    let mut buf = BytesMut::from(&b"prior"[..]);
    assert!(Query { sql: "SELECT '\0'" }.encode(&mut buf).is_err());
    assert!(ParameterStatus {
        name: "a",
        value: "b\0"
    }
    .encode(&mut buf)
    .is_err());
    assert!(ErrorBuilder::new(Severity::Error, "XX000", "bad\0")
        .encode_error(&mut buf)
        .is_err());
    assert_eq!(&buf[..], b"prior");
}
