//! How many WebSockets (and SSE streams) this node may hold: the smaller of
//! `TICKSTREAM_MAX_CONNECTIONS` and what its open-file limit leaves after a reserve.
//!
//! Every socket is a file. Past the process's limit `accept` fails with `EMFILE`,
//! and a client then gets no answer at all, never the `503 overloaded` the cap
//! promises (docs/PROTOCOL.md §9.4 "Bounds"). So the cap in force keeps a reserve of files
//! for what is not a session: the Redis connections (a reader per partition, the
//! pool, a cluster's nodes), REST and ingest connections, the listener, logs.

/// Files kept for everything but sessions, before the partitions' readers.
const RESERVE_BASE: u64 = 256;

/// The cap in force and where it came from (logged at start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Sessions this node admits at most.
    pub sockets: usize,
    /// The process's open-file limit (soft, after raising it to the hard one), when
    /// it could be read.
    pub open_files: Option<u64>,
    /// Files kept for everything else.
    pub reserve: u64,
}

impl Capacity {
    /// The cap for `configured` sessions and `partitions` readers under an open-file
    /// limit of `open_files`.
    pub fn of(configured: usize, partitions: u32, open_files: Option<u64>) -> Capacity {
        let Some(files) = open_files else {
            return Capacity {
                sockets: configured,
                open_files,
                reserve: 0,
            };
        };
        // Two files a partition: its reader, and a cluster's re-resolving connection.
        // A small limit (a test's, a tight container's) still leaves most to sessions.
        let reserve = (RESERVE_BASE + 2 * u64::from(partitions)).min(files / 4);
        let by_files = usize::try_from(files - reserve).unwrap_or(usize::MAX).max(1);
        Capacity {
            sockets: configured.min(by_files),
            open_files,
            reserve,
        }
    }

    /// The cap for this process: raises the soft open-file limit to the hard one
    /// first (what the operator allowed), then reads it.
    pub fn for_process(configured: usize, partitions: u32) -> Capacity {
        Capacity::of(configured, partitions, raise_open_files())
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
#[cfg(unix)]
fn raise_open_files() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    // RLIM_INFINITY: no limit to keep under.
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn raise_open_files() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_under_the_open_file_limit() {
        // This machine's limit: 20,000 files, 16 partitions.
        let c = Capacity::of(50_000, 16, Some(20_000));
        assert_eq!(c.reserve, 288);
        assert_eq!(c.sockets, 19_712);
        // The setting wins when it is the smaller.
        assert_eq!(Capacity::of(1_000, 16, Some(20_000)).sockets, 1_000);
        // No limit known: the setting.
        assert_eq!(Capacity::of(50_000, 16, None).sockets, 50_000);
        // A tight limit keeps three quarters for sessions.
        let tight = Capacity::of(50_000, 16, Some(400));
        assert_eq!((tight.sockets, tight.reserve), (300, 100));
        assert_eq!(Capacity::of(50_000, 16, Some(1)).sockets, 1);
    }
}
