//! Property tests: no input makes a decoder panic, and generated messages
//! survive encode → split → decode unchanged.

use bytes::BytesMut;
use pgopt_wire::backend::{
    BackendKeyData, BackendMessage, CommandComplete, DataRow, FieldDescription,
    NegotiateProtocolVersion, NotificationResponse, ParameterDescription, ParameterStatus,
    RowDescription,
};
use pgopt_wire::frontend::{
    Bind, Close, Describe, Execute, FrontendMessage, Parse, Query, SaslInitialResponse,
};
use pgopt_wire::scram::{ScramClient, ScramSecret, ScramServer};
use pgopt_wire::startup::{
    split_startup, ProtocolVersion, StartupMessage, StartupPacket, MAX_STARTUP_PACKET_LEN,
};
use pgopt_wire::{
    md5, split_frame, Authentication, CopyResponse, ErrorField, ErrorFields, Format, Frame, List,
    Target, DEFAULT_MAX_MESSAGE_LEN,
};
use proptest::prelude::*;

/// Touches every part of a decoded frontend message, iterating every list.
fn walk_frontend(msg: &FrontendMessage<'_>) {
    match msg {
        FrontendMessage::Parse(p) => {
            let _ = p.param_types.iter().count();
        }
        FrontendMessage::Bind(b) => {
            let _ = b.param_formats.iter().count();
            let _ = b
                .params
                .iter()
                .map(|v| v.map_or(0, <[u8]>::len))
                .sum::<usize>();
            let _ = b.result_formats.iter().count();
            let _ = (b.param_format(3), b.result_format(100));
        }
        FrontendMessage::AuthResponse(p) => {
            let _ = (p.password(), p.sasl_initial(), p.sasl());
        }
        _ => {}
    }
    let _ = format!("{msg:?}");
}

/// Touches every part of a decoded backend message, iterating every list.
fn walk_backend(msg: &BackendMessage<'_>) {
    match msg {
        BackendMessage::Authentication(Authentication::Sasl { mechanisms }) => {
            let _ = mechanisms.iter().count();
        }
        BackendMessage::RowDescription(r) => {
            let _ = r.fields.iter().map(|f| f.name.len()).sum::<usize>();
        }
        BackendMessage::DataRow(r) => {
            let _ = r
                .values
                .iter()
                .map(|v| v.map_or(0, <[u8]>::len))
                .sum::<usize>();
            let _ = r.values.get(2);
        }
        BackendMessage::CommandComplete(c) => {
            let _ = (c.rows(), c.command());
        }
        BackendMessage::ErrorResponse(e) | BackendMessage::NoticeResponse(e) => {
            let _ = (e.severity(), e.code(), e.message(), e.position());
            let _ = e.fields.iter().count();
        }
        BackendMessage::ParameterDescription(p) => {
            let _ = p.types.iter().count();
        }
        BackendMessage::CopyInResponse(c)
        | BackendMessage::CopyOutResponse(c)
        | BackendMessage::CopyBothResponse(c) => {
            let _ = c.column_formats.iter().count();
        }
        BackendMessage::NegotiateProtocolVersion(n) => {
            let _ = n.unrecognized.iter().count();
        }
        _ => {}
    }
    let _ = format!("{msg:?}");
}

/// Interesting tags first, then any byte.
fn tag() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => proptest::sample::select(b"QPBDECSHXdcfpFRKZTDCIEN123nstGHWAv".to_vec()),
        1 => any::<u8>(),
    ]
}

fn cstring() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| s.replace('\0', ""))
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Text), Just(Format::Binary)]
}

fn value() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16))
}

fn roundtrip_frontend(msg: FrontendMessage<'_>) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf).unwrap();
    let frame = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN)
        .unwrap()
        .unwrap();
    prop_assert!(buf.is_empty());
    prop_assert_eq!(frame.frontend().unwrap(), msg);
    Ok(())
}

fn roundtrip_backend(msg: BackendMessage<'_>) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf).unwrap();
    let frame = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN)
        .unwrap()
        .unwrap();
    prop_assert!(buf.is_empty());
    prop_assert_eq!(frame.backend().unwrap(), msg);
    Ok(())
}

proptest! {
    #[test]
    fn decoders_never_panic(tag in tag(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(msg) = FrontendMessage::decode(tag, &body) {
            walk_frontend(&msg);
        }
        if let Ok(msg) = BackendMessage::decode(tag, &body) {
            walk_backend(&msg);
        }
        let code = body.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if let Ok(StartupPacket::Startup(m)) = StartupPacket::decode(code, body.get(4..).unwrap_or_default()) {
            let _ = (m.user(), m.database(), m.params.iter().count());
        }
        let _ = StartupPacket::decode(3 << 16, &body);
        let _ = ErrorFields::decode(b'E', &body);
    }

    /// Any text, UTF-8 or not, escaped and decoded, encodes as the same bytes; and
    /// no two texts share an escaped form.
    #[test]
    fn escaped_text_comes_back_as_its_bytes(
        a in proptest::collection::vec(prop_oneof![any::<u8>(), Just(0xF4u8), Just(0x8Fu8), Just(0xBEu8), Just(0xBFu8)], 0..40),
        b in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        use pgopt_wire::frontend::{Parse, Query};
        use pgopt_wire::text::{escape, unescape};
        let escaped = escape(&a);
        prop_assert_eq!(&*unescape(&escaped), &a[..]);
        if a != b {
            prop_assert_ne!(escape(&a), escape(&b));
        }
        let a: Vec<u8> = a.into_iter().filter(|&x| x != 0).collect();
        let mut body = a.clone();
        body.push(0);
        let mut owned = String::new();
        let query = Query::decode_escaped(&body, &mut owned).unwrap();
        let mut out = BytesMut::new();
        query.encode(&mut out).unwrap();
        prop_assert_eq!(&out[5..], &body[..]);
        let mut body = b"s\0".to_vec();
        body.extend_from_slice(&a);
        body.extend_from_slice(&[0, 0, 0]);
        let mut owned = String::new();
        let parse = Parse::decode_escaped(&body, &mut owned).unwrap();
        let mut out = BytesMut::new();
        parse.encode(&mut out).unwrap();
        prop_assert_eq!(&out[5..], &body[..]);
    }

    #[test]
    fn frame_splitter_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128), max_len in 0u32..200) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut consumed = 0;
        while let Ok(Some(frame)) = split_frame(&mut buf, max_len) {
            consumed += frame.wire_len();
            prop_assert!(frame.wire_len() >= 5);
            prop_assert!(frame.wire_len() as u32 - 1 <= max_len);
            if let Ok(m) = frame.frontend() { walk_frontend(&m); }
            if let Ok(m) = frame.backend() { walk_backend(&m); }
        }
        prop_assert_eq!(consumed + buf.len(), bytes.len());

        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = split_startup(&mut buf, MAX_STARTUP_PACKET_LEN) {
            let _ = frame.decode();
        }
        let _ = Frame::from_bytes(bytes.into(), max_len);
    }

    #[test]
    fn frames_split_the_same_in_any_chunking(
        msgs in proptest::collection::vec((tag(), proptest::collection::vec(any::<u8>(), 0..20)), 0..8),
        cuts in proptest::collection::vec(0usize..200, 0..6),
    ) {
        let mut stream = Vec::new();
        for (tag, body) in &msgs {
            stream.push(*tag);
            stream.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            stream.extend_from_slice(body);
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut at = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[at..cut]);
            at = cut;
            while let Some(frame) = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN).unwrap() {
                frames.push(frame);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(frames.len(), msgs.len());
        for (frame, (tag, body)) in frames.iter().zip(&msgs) {
            prop_assert_eq!(frame.tag(), *tag);
            prop_assert_eq!(frame.body(), &body[..]);
        }
    }

    #[test]
    fn auth_inputs_never_panic(data in proptest::collection::vec(any::<u8>(), 0..80), text in ".{0,80}") {
        let secret = ScramSecret::from_password_with_salt("pw", b"salt", 2).unwrap();
        let _ = ScramServer::with_nonce(secret.clone(), "srv").handle_client_first(&data);
        let mut server = ScramServer::with_nonce(secret, "srv");
        server.handle_client_first(b"n,,n=,r=cli").unwrap();
        let _ = server.handle_client_final(&data);
        let mut client = ScramClient::with_nonce("", "pw", "cli");
        let _ = client.handle_server_first(&data);
        let _ = client.verify_server_final(&data);
        let _ = ScramSecret::parse(&text);
        let _ = md5::verify(&text, [1, 2, 3, 4], &text);
    }

    #[test]
    fn parse_and_bind_roundtrip(
        name in cstring(), query in cstring(),
        oids in proptest::collection::vec(any::<u32>(), 0..8),
        param_formats in proptest::collection::vec(format(), 0..4),
        params in proptest::collection::vec(value(), 0..8),
        result_formats in proptest::collection::vec(format(), 0..4),
    ) {
        roundtrip_frontend(FrontendMessage::Parse(Parse {
            name: &name, query: &query, param_types: List::from(&oids[..]),
        }))?;
        let params: Vec<Option<&[u8]>> = params.iter().map(|v| v.as_deref()).collect();
        roundtrip_frontend(FrontendMessage::Bind(Bind {
            portal: &query,
            statement: &name,
            param_formats: List::from(&param_formats[..]),
            params: List::from(&params[..]),
            result_formats: List::from(&result_formats[..]),
        }))?;
    }

    #[test]
    fn simple_frontend_messages_roundtrip(
        text in cstring(), portal in any::<bool>(), max_rows in any::<i32>(),
        data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
    ) {
        let target = if portal { Target::Portal } else { Target::Statement };
        roundtrip_frontend(FrontendMessage::Query(Query { sql: &text }))?;
        roundtrip_frontend(FrontendMessage::Describe(Describe { target, name: &text }))?;
        roundtrip_frontend(FrontendMessage::Close(Close { target, name: &text }))?;
        roundtrip_frontend(FrontendMessage::Execute(Execute { portal: &text, max_rows }))?;
        let initial = SaslInitialResponse { mechanism: &text, data: data.as_deref() };
        let mut buf = BytesMut::new();
        initial.encode(&mut buf).unwrap();
        prop_assert_eq!(SaslInitialResponse::decode(&buf[5..]).unwrap(), initial);
    }

    #[test]
    fn rows_roundtrip(
        values in proptest::collection::vec(value(), 0..12),
        fields in proptest::collection::vec(
            (cstring(), any::<u32>(), any::<i16>(), any::<u32>(), any::<i16>(), any::<i32>(), format()),
            0..6,
        ),
        tag in cstring(),
    ) {
        let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
        roundtrip_backend(BackendMessage::DataRow(DataRow { values: List::from(&values[..]) }))?;
        let fields: Vec<FieldDescription<'_>> = fields
            .iter()
            .map(|(name, table_oid, column_id, type_oid, type_size, type_modifier, format)| {
                FieldDescription {
                    name,
                    table_oid: *table_oid,
                    column_id: *column_id,
                    type_oid: *type_oid,
                    type_size: *type_size,
                    type_modifier: *type_modifier,
                    format: *format,
                }
            })
            .collect();
        roundtrip_backend(BackendMessage::RowDescription(RowDescription {
            fields: List::from(&fields[..]),
        }))?;
        roundtrip_backend(BackendMessage::CommandComplete(CommandComplete { tag: &tag }))?;
    }

    #[test]
    fn error_fields_roundtrip(fields in proptest::collection::vec((1u8.., cstring()), 0..8)) {
        let fields: Vec<ErrorField<'_>> =
            fields.iter().map(|(code, value)| ErrorField { code: *code, value }).collect();
        let e = ErrorFields { fields: List::from(&fields[..]) };
        roundtrip_backend(BackendMessage::ErrorResponse(e))?;
        roundtrip_backend(BackendMessage::NoticeResponse(e))?;
    }

    #[test]
    fn simple_backend_messages_roundtrip(
        a in cstring(), b in cstring(), pid in any::<i32>(), key in any::<i32>(),
        oids in proptest::collection::vec(any::<u32>(), 0..8),
        formats in proptest::collection::vec(format(), 0..8),
        overall in format(),
        salt in any::<[u8; 4]>(),
        data in proptest::collection::vec(any::<u8>(), 0..32),
        names in proptest::collection::vec("[a-z_.]{1,12}", 0..4),
    ) {
        roundtrip_backend(BackendMessage::ParameterStatus(ParameterStatus { name: &a, value: &b }))?;
        roundtrip_backend(BackendMessage::BackendKeyData(BackendKeyData { process_id: pid, secret_key: key }))?;
        roundtrip_backend(BackendMessage::NotificationResponse(NotificationResponse {
            process_id: pid, channel: &a, payload: &b,
        }))?;
        roundtrip_backend(BackendMessage::ParameterDescription(ParameterDescription {
            types: List::from(&oids[..]),
        }))?;
        let copy = CopyResponse { format: overall, column_formats: List::from(&formats[..]) };
        roundtrip_backend(BackendMessage::CopyInResponse(copy))?;
        roundtrip_backend(BackendMessage::CopyOutResponse(copy))?;
        roundtrip_backend(BackendMessage::CopyBothResponse(copy))?;
        roundtrip_backend(BackendMessage::Authentication(Authentication::Md5Password { salt }))?;
        roundtrip_backend(BackendMessage::Authentication(Authentication::SaslContinue { data: &data }))?;
        roundtrip_backend(BackendMessage::Authentication(Authentication::SaslFinal { data: &data }))?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        roundtrip_backend(BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: List::from(&names[..]),
        }))?;
        roundtrip_backend(BackendMessage::NegotiateProtocolVersion(NegotiateProtocolVersion {
            newest_minor: key, unrecognized: List::from(&names[..]),
        }))?;
    }

    #[test]
    fn startup_messages_roundtrip(
        params in proptest::collection::vec(("[^\0]{1,12}", cstring()), 0..6),
        minor in any::<u16>(),
    ) {
        let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let msg = StartupMessage {
            protocol: ProtocolVersion { major: 3, minor },
            params: List::from(&params[..]),
        };
        let mut buf = BytesMut::new();
        msg.encode(&mut buf).unwrap();
        let frame = split_startup(&mut buf, u32::MAX).unwrap().unwrap();
        prop_assert_eq!(frame.decode().unwrap(), StartupPacket::Startup(msg));
    }
}
