//! Properties of the pure rules every request passes through: channel names, stream
//! ids, token channel patterns, and the hand-written JSON of stored ticks (proptest:
//! thousands of generated cases each).

use proptest::prelude::*;
use serde_json::{json, Value};
use tickstream::acl::ChannelPattern;
use tickstream::tick::wire::body;
use tickstream::tick::{is_valid_channel, parse_body, Since, StreamId, Tick};

const CHANNEL: &str = "[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}";

/// JSON values for `data`: any strings (quotes, backslashes, control characters,
/// any Unicode), numbers, booleans, nulls, arrays and objects, nested.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// A tick is serialized once at ingest and stored; what a reader writes by hand
    /// from the stored bytes parses back to the members the producer sent.
    #[test]
    fn stored_ticks_read_back_as_the_json_that_was_sent(
        channel in CHANNEL,
        value in prop::option::of(-1e300f64..1e300),
        data in prop::option::of(prop::collection::btree_map(any::<String>(), json_value(), 0..6)),
        key in prop::option::of("[ -~]{1,40}"),
        seq in any::<u64>(),
        ms in 0u64..4_000_000_000_000,
    ) {
        // At least one of them (docs/PROTOCOL.md §2.1); an empty object is a valid `data`.
        let data = if value.is_none() { Some(data.unwrap_or_default()) } else { data };
        let mut sent = json!({"channel": channel, "ts": "2026-11-23T08:00:00.123456+02:00"});
        if let Some(v) = value { sent["value"] = json!(v); }
        if let Some(d) = &data { sent["data"] = json!(d); }
        if let Some(k) = &key { sent["key"] = json!(k); }
        let raw = serde_json::to_vec(&sent).unwrap();
        let Ok(prepared) = parse_body(&raw, 0) else {
            // Only `data` over 8 KiB may be refused here.
            prop_assert!(serde_json::to_string(&data).unwrap().len() > 8 * 1024);
            return Ok(());
        };
        let t = &prepared[0];
        let stored = body(seq, "propepoch000", &t.fields);
        let id = StreamId::new(ms, 3);
        let tick = Tick::from_body(id, channel.as_str().into(), stored, &mut None).unwrap();
        prop_assert_eq!(tick.seq, seq);
        let frame: Value = serde_json::from_str(&tick.to_frame()).unwrap();
        prop_assert_eq!(&frame["type"], "tick");
        let id_text = id.to_string();
        prop_assert_eq!(frame["id"].as_str(), Some(id_text.as_str()));
        prop_assert_eq!(&frame["channel"], &sent["channel"]);
        prop_assert_eq!(&frame["seq"], &json!(seq));
        prop_assert_eq!(&frame["epoch"], "propepoch000");
        prop_assert_eq!(&frame["ts"], "2026-11-23T06:00:00.123456Z");
        prop_assert_eq!(&frame["value"], &sent.get("value").cloned().unwrap_or(Value::Null));
        prop_assert_eq!(&frame["data"], &sent.get("data").cloned().unwrap_or(Value::Null));
        prop_assert_eq!(frame["event_id"].as_str(), Some(t.event_id.as_str()));
        prop_assert_eq!(frame.as_object().unwrap().len(), 10);
    }

    #[test]
    fn names_matching_the_spec_regex_are_valid(name in CHANNEL) {
        prop_assert!(is_valid_channel(&name));
    }

    #[test]
    fn a_single_foreign_character_makes_a_name_invalid(
        name in "[A-Za-z0-9][A-Za-z0-9_.:-]{0,100}",
        bad in "[^A-Za-z0-9_.:-]",
        at in any::<prop::sample::Index>(),
    ) {
        let mut chars: Vec<char> = name.chars().collect();
        let i = at.index(chars.len() + 1);
        chars.splice(i..i, bad.chars());
        let broken: String = chars.into_iter().collect();
        prop_assert!(!is_valid_channel(&broken), "{broken:?}");
    }

    #[test]
    fn names_longer_than_128_are_invalid(name in "[A-Za-z0-9]{129,300}") {
        prop_assert!(!is_valid_channel(&name));
    }

    #[test]
    fn names_starting_with_punctuation_are_invalid(first in "[_.:-]", rest in "[A-Za-z0-9]{0,20}") {
        let name = format!("{first}{rest}");
        prop_assert!(!is_valid_channel(&name));
    }

    #[test]
    fn stream_ids_round_trip_and_order_like_redis(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
        let (x, y) = (StreamId::new(a.0, a.1), StreamId::new(b.0, b.1));
        prop_assert_eq!(x.to_string().parse::<StreamId>().unwrap(), x);
        prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        if x != StreamId::MAX {
            prop_assert!(x.next() > x);
            prop_assert!(y.next() > y || y == StreamId::MAX);
            prop_assert_eq!(x.next().prev(), x);
        }
    }

    #[test]
    fn arbitrary_cursors_never_panic(raw in ".{0,40}") {
        let _ = Since::parse(Some(&raw));
        let _ = raw.parse::<StreamId>();
    }

    #[test]
    fn prefix_patterns_match_exactly_their_subtree(prefix in "[a-z0-9]{1,10}", rest in "[A-Za-z0-9_:-]{1,10}", other in "[a-z0-9]{1,10}") {
        let pattern = ChannelPattern::parse(&format!("{prefix}.*")).unwrap();
        let below = format!("{prefix}.{rest}");
        let deeper = format!("{prefix}.{rest}.{rest}");
        prop_assert!(pattern.matches(&below));
        prop_assert!(pattern.matches(&deeper));
        prop_assert!(!pattern.matches(&prefix), "the prefix itself is not below it");
        let sibling = format!("{prefix}{rest}");
        prop_assert!(!pattern.matches(&sibling), "{sibling} shares characters, not the subtree");
        if other != prefix {
            let elsewhere = format!("{other}.{rest}");
            prop_assert!(!pattern.matches(&elsewhere));
        }
    }

    #[test]
    fn exact_patterns_match_only_their_name(name in CHANNEL, other in CHANNEL) {
        let pattern = ChannelPattern::parse(&name).unwrap();
        prop_assert!(pattern.matches(&name));
        prop_assert_eq!(pattern.matches(&other), name == other);
        prop_assert!(ChannelPattern::parse("*").unwrap().matches(&other));
    }

    #[test]
    fn patterns_are_never_built_from_invalid_names(raw in ".{0,40}") {
        if let Some(p) = ChannelPattern::parse(&raw) {
            let base = raw.strip_suffix(".*").unwrap_or(&raw);
            prop_assert!(raw == "*" || is_valid_channel(base), "{p:?} from {raw:?}");
        }
    }
}
