//! Arbitrary bytes from a client: split into frames, decode every frame as a
//! frontend message, read every field (Debug walks every list).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgopt_wire::frontend::FrontendMessage;
use pgopt_wire::{split_frame, SMALL_MESSAGE_LEN};

fuzz_target!(|data: &[u8]| {
    // The whole input as one message body, tag first.
    if let Some((&tag, body)) = data.split_first() {
        if let Ok(msg) = FrontendMessage::decode(tag, body) {
            walk(&msg);
        }
    }
    // The input as a stream of frames.
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf, SMALL_MESSAGE_LEN) {
        if let Ok(msg) = frame.frontend() {
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

fn walk(msg: &FrontendMessage<'_>) {
    let _ = format!("{msg:?}");
    match msg {
        FrontendMessage::Bind(b) => {
            let _ = (b.param_format(0), b.result_format(7));
        }
        FrontendMessage::AuthResponse(p) => {
            let _ = format!("{:?} {:?} {:?}", p.password(), p.sasl_initial(), p.sasl());
        }
        _ => {}
    }
}
