//! Arbitrary bytes at the start of a client connection: split startup
//! packets, decode them, read every parameter.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgopt_wire::startup::{split_startup, StartupPacket, MAX_STARTUP_PACKET_LEN};

fuzz_target!(|data: &[u8]| {
    if let Some((code, body)) = data.split_first_chunk::<4>() {
        if let Ok(packet) = StartupPacket::decode(u32::from_be_bytes(*code), body) {
            walk(&packet);
        }
    }
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_startup(&mut buf, MAX_STARTUP_PACKET_LEN) {
        if let Ok(packet) = frame.decode() {
            walk(&packet);
            let mut out = BytesMut::new();
            if packet.encode(&mut out).is_ok() {
                assert_eq!(
                    &out[..],
                    &frame.as_bytes()[..],
                    "re-encoding changed the packet"
                );
            }
        }
    }
});

fn walk(packet: &StartupPacket<'_>) {
    let _ = format!("{packet:?}");
    if let StartupPacket::Startup(m) = packet {
        let _ = (m.user(), m.database(), m.get("options"));
    }
}
