//! Arbitrary SCRAM messages from a client: as client-first, and as
//! client-final after a valid client-first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgopt_wire::scram::{ScramSecret, ScramServer};

fuzz_target!(|data: &[u8]| {
    // Few iterations: the fuzzer looks for parser bugs, not slow hashing.
    let Ok(secret) = ScramSecret::from_password_with_salt("pencil", b"salt", 2) else {
        return;
    };
    let _ = ScramServer::with_nonce(secret.clone(), "server-nonce").handle_client_first(data);
    let mut server = ScramServer::with_nonce(secret, "server-nonce");
    if server.handle_client_first(b"n,,n=,r=client-nonce").is_ok() {
        let _ = server.handle_client_final(data);
        let _ = server.client_keys();
    }
});
