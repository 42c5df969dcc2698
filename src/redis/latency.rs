//! How long Redis takes to answer the commands of the shared connections, for
//! `tickstream_redis_command_duration_seconds{command}` (docs/OPERATIONS.md
//! "Metrics"). Blocking reads are not measured: their time is the block, not Redis.
//!
//! The `command` label is a fixed vocabulary: the scripts by name (`append`,
//! `rollback`, `probe`, `token_bucket`), else the command's lowercase name when it is one the
//! server issues, else `other`; a pipeline counts as its first command. So the label
//! can never grow with what clients send.

use std::sync::RwLock;
use std::time::Duration;

use prometheus::HistogramVec;
use redis::{Cmd, Pipeline};

/// Commands the server issues on shared connections, as labelled.
const COMMANDS: [&str; 24] = [
    "cluster",
    "client",
    "del",
    "evalsha",
    "get",
    "hget",
    "hgetall",
    "hmget",
    "hset",
    "pexpire",
    "ping",
    "script",
    "set",
    "wait",
    "xinfo",
    "xlen",
    "xrange",
    "xrevrange",
    "zadd",
    "zrange",
    "zrangebyscore",
    "zrem",
    "zremrangebyscore",
    "zrevrangebyscore",
];

/// The histogram and the names of the scripts it may see.
pub struct CommandLatency {
    histogram: HistogramVec,
    /// (SHA-1, name) of each script registered with [`CommandLatency::name_script`].
    scripts: RwLock<Vec<(String, &'static str)>>,
}

impl CommandLatency {
    pub fn new(histogram: HistogramVec) -> CommandLatency {
        CommandLatency {
            histogram,
            scripts: RwLock::new(Vec::new()),
        }
    }

    /// `EVALSHA` of `script` is labelled `name` from now on.
    pub fn name_script(&self, script: &redis::Script, name: &'static str) {
        if let Ok(mut scripts) = self.scripts.write() {
            if !scripts.iter().any(|(hash, _)| hash == script.get_hash()) {
                scripts.push((script.get_hash().to_string(), name));
            }
        }
    }

    pub fn command(&self, cmd: &Cmd, took: Duration) {
        self.observe(self.label(cmd), took);
    }

    pub fn pipeline(&self, pipe: &Pipeline, took: Duration) {
        let label = pipe.cmd_iter().next().map(|cmd| self.label(cmd)).unwrap_or("other");
        self.observe(label, took);
    }

    fn observe(&self, label: &str, took: Duration) {
        self.histogram.with_label_values(&[label]).observe(took.as_secs_f64());
    }

    fn label(&self, cmd: &Cmd) -> &'static str {
        let mut args = cmd.args_iter().filter_map(|a| match a {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        });
        let Some(name) = args.next() else { return "other" };
        let Some(known) = COMMANDS.iter().find(|c| name.eq_ignore_ascii_case(c.as_bytes())) else {
            return "other";
        };
        if *known != "evalsha" {
            return known;
        }
        let sha = args.next().unwrap_or_default();
        self.scripts
            .read()
            .ok()
            .and_then(|scripts| scripts.iter().find(|(hash, _)| hash.as_bytes() == sha).map(|(_, n)| *n))
            .unwrap_or("evalsha")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency() -> CommandLatency {
        let opts = prometheus::HistogramOpts::new("t", "t");
        CommandLatency::new(HistogramVec::new(opts, &["command"]).unwrap_or_else(|e| unreachable!("{e}")))
    }

    #[test]
    fn labels_are_a_fixed_vocabulary() {
        let l = latency();
        let script = redis::Script::new("return 1");
        l.name_script(&script, "append");
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(script.get_hash()).arg(0);
        assert_eq!(l.label(&evalsha), "append");
        assert_eq!(l.label(redis::cmd("EVALSHA").arg("0123")), "evalsha");
        assert_eq!(l.label(redis::cmd("XRANGE").arg("k")), "xrange");
        assert_eq!(l.label(redis::cmd("xRevRange").arg("k")), "xrevrange");
        // Whatever else arrives is one label, never a new one.
        assert_eq!(l.label(&redis::cmd("FLUSHALL")), "other");
        assert_eq!(l.label(&redis::Cmd::new()), "other");
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE").arg("k").cmd("GET").arg("x");
        l.pipeline(&pipe, Duration::from_millis(1));
        assert_eq!(l.histogram.with_label_values(&["zrange"]).get_sample_count(), 1);
    }
}
