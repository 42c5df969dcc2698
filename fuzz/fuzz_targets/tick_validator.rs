//! Ingest bodies: any bytes must parse to ticks or to an error, never panic; every
//! accepted tick must satisfy the SPEC §1 rules it was validated against.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickstream::tick::validate::{MAX_BATCH, MAX_DATA_BYTES};
use tickstream::tick::{is_valid_channel, parse_body};

fuzz_target!(|data: &[u8]| {
    if let Ok(ticks) = parse_body(data, 1_700_000_000_000_000) {
        assert!(!ticks.is_empty() && ticks.len() <= MAX_BATCH);
        for t in ticks {
            assert!(is_valid_channel(&t.channel));
            assert!(t.value.is_some() || t.data.is_some());
            assert!(t.data.as_ref().is_none_or(|d| d.len() <= MAX_DATA_BYTES));
            assert_eq!(t.event_id.len(), 64);
            if let Some(v) = &t.value {
                assert!(v.parse::<f64>().is_ok_and(f64::is_finite), "{v}");
            }
        }
    }
});
