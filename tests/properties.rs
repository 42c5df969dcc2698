//! Properties of the pure rules every request passes through: channel names, stream
//! ids and token channel patterns (proptest: thousands of generated cases each).

use proptest::prelude::*;
use tickstream::auth::ChannelPattern;
use tickstream::tick::{is_valid_channel, Since, StreamId};

const CHANNEL: &str = "[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}";

proptest! {
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
