//! WebSocket client messages and the cursors inside them: any text must parse to a
//! message or to a refusal, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickstream::session::protocol::{parse_client_message, ClientMessage};
use tickstream::tick::{is_valid_channel, Since};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientMessage::Subscribe { channel, since, .. }) = parse_client_message(text) {
        let _ = is_valid_channel(&channel);
        if let Ok(Since::After(id)) = Since::parse(since.as_deref()) {
            assert_eq!(id.to_string().parse::<tickstream::tick::StreamId>(), Ok(id));
        }
    }
});
