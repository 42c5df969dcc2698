//! The server's WebSocket decoder (src/session/websocket/codec/) on arbitrary client
//! bytes arriving in arbitrary reads: it never panics, never holds more than one
//! message's worth (the cap, a frame header and two reads), and a refusal is final
//! except for an oversized frame, after which it reads on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickstream::session::websocket::codec::{Decoder, Violation, READ_CHUNK};

/// A small cap, so the fuzzer reaches it.
const CAP: usize = 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the size of the reads, as a slow or a fast client's.
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let read = usize::from(split).clamp(1, READ_CHUNK);
    let mut decoder = Decoder::new(CAP, Vec::new());
    for chunk in bytes.chunks(read) {
        decoder.buf.extend_from_slice(chunk);
        loop {
            match decoder.next() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(Violation::TooLarge) => {}
                Err(_) => return,
            }
            assert!(decoder.held() <= CAP + 2 * READ_CHUNK + 14, "held {}", decoder.held());
        }
        assert!(decoder.held() <= CAP + 2 * READ_CHUNK + 14, "held {}", decoder.held());
    }
});
