//! Arbitrary bytes from a server: split into frames, decode every frame as a
//! backend message, read every field (Debug walks every list).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgopt_wire::backend::BackendMessage;
use pgopt_wire::{split_frame, SMALL_MESSAGE_LEN};

fuzz_target!(|data: &[u8]| {
    if let Some((&tag, body)) = data.split_first() {
        if let Ok(msg) = BackendMessage::decode(tag, body) {
            walk(&msg);
        }
    }
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf, SMALL_MESSAGE_LEN) {
        if let Ok(msg) = frame.backend() {
            walk(&msg);
            let mut out = BytesMut::new();
            if msg.encode(&mut out).is_ok() {
                assert_eq!(
                    &out[..],
                    &frame.as_bytes()[..],
                    "re-encoding changed the frame"
                );
            }
        }
    }
});

fn walk(msg: &BackendMessage<'_>) {
    let _ = format!("{msg:?}");
    match msg {
        BackendMessage::CommandComplete(c) => {
            let _ = (c.rows(), c.command());
        }
        BackendMessage::ErrorResponse(e) | BackendMessage::NoticeResponse(e) => {
            let _ = (
                e.severity(),
                e.code(),
                e.message(),
                e.detail(),
                e.hint(),
                e.position(),
            );
        }
        BackendMessage::DataRow(r) => {
            let _ = r.values.get(r.values.len().saturating_sub(1));
        }
        _ => {}
    }
}
