//! Epochs: the name of one life of a channel's stream (docs/PROTOCOL.md §2.4).
//!
//! A stream lost whole (Redis flushed or restarted without its data) starts again
//! under a fresh random epoch. A stream that a failover *rolled back* (the promoted
//! replica lacked the last ticks, docs/PROTOCOL.md §5.4) moves to a successor epoch:
//! the same name with a generation, `k3v9q2xaw1mz.1`, then `.2`. Anyone holding two
//! epochs can therefore tell "rolled back" from "lost" without asking anyone: what
//! survived of the old epoch is still in the stream, only what followed it is gone.

/// A fresh random epoch: 12 lowercase base-36 characters (62 bits), enough that two
/// lives of one channel never share one.
pub fn new_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The random name and the generation of an epoch (0 before any rollback).
fn parts(epoch: &str) -> (&str, u64) {
    match epoch.rsplit_once('.') {
        Some((base, generation)) if !base.is_empty() => match generation.parse() {
            Ok(n) => (base, n),
            Err(_) => (epoch, 0),
        },
        _ => (epoch, 0),
    }
}

/// The epoch a stream moves to when a failover rolled `epoch` back.
pub fn after_rollback(epoch: &str) -> String {
    let (base, generation) = parts(epoch);
    format!("{base}.{}", generation.saturating_add(1))
}

/// Whether `later` is what `earlier` became through one or more rollbacks.
pub fn is_rollback_of(later: &str, earlier: &str) -> bool {
    let (base_later, gen_later) = parts(later);
    let (base_earlier, gen_earlier) = parts(earlier);
    base_later == base_earlier && gen_later > gen_earlier
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollbacks_keep_the_name_and_count_generations() {
        let e = new_epoch();
        assert_eq!(e.len(), 12);
        let r1 = after_rollback(&e);
        assert_eq!(r1, format!("{e}.1"));
        let r2 = after_rollback(&r1);
        assert_eq!(r2, format!("{e}.2"));
        assert!(is_rollback_of(&r1, &e));
        assert!(is_rollback_of(&r2, &e));
        assert!(is_rollback_of(&r2, &r1));
        assert!(!is_rollback_of(&e, &r1), "never backwards");
        assert!(!is_rollback_of(&e, &e));
        assert!(!is_rollback_of(&new_epoch(), &e), "a lost stream is not a rollback");
        // Whatever a client sends as its epoch is just a name.
        assert!(!is_rollback_of("x.1", ".0"));
        assert_eq!(after_rollback("a.b"), "a.b.1");
    }
}
