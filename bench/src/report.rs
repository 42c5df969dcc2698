//! What a run reports: a human table and one JSON line, latency quantiles, the
//! server's RSS and CPU (from its `/metrics/system`), and the bench's own CPU, so a
//! figure from a run where the bench itself was the limit is flagged, not counted.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::http::Http;

/// Above this share of its core the bench may be what limits a figure.
pub const SATURATED: f64 = 0.9;

#[derive(Default)]
pub struct Report {
    pub fields: serde_json::Map<String, Value>,
    pub rows: Vec<(String, String)>,
}

impl Report {
    pub fn put(&mut self, key: &str, value: Value, shown: String) {
        self.fields.insert(key.into(), value);
        self.rows.push((key.into(), shown));
    }

    /// `key` (a count) and `<key>_per_s` over `seconds`.
    pub fn count(&mut self, key: &str, count: u64, seconds: f64) {
        self.put(key, json!(count), count.to_string());
        let rate = count as f64 / seconds.max(f64::MIN_POSITIVE);
        self.put(&format!("{key}_per_s"), json!(rate.round()), format!("{rate:.0}/s"));
    }

    pub fn latency(&mut self, prefix: &str, h: &Histogram<u64>) {
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            let ms = h.value_at_quantile(q) as f64 / 1000.0;
            self.put(&format!("{prefix}_{name}_ms"), json!(ms), format!("{ms:.2} ms"));
        }
        let max = h.max() as f64 / 1000.0;
        self.put(&format!("{prefix}_max_ms"), json!(max), format!("{max:.2} ms"));
    }

    /// The server's memory and CPU over the measured part.
    pub fn server(&mut self, before: (f64, f64), after: (f64, f64), seconds: f64) {
        let mib = |b: f64| b / 1048576.0;
        self.put(
            "server_rss_mib",
            json!(mib(after.0)),
            format!("{:.1} MiB (was {:.1})", mib(after.0), mib(before.0)),
        );
        let cpu = after.1 - before.1;
        self.put("server_cpu_s", json!(cpu), format!("{cpu:.2} s"));
        if seconds > 0.0 {
            let busy = cpu / seconds;
            self.put(
                "server_core_busy",
                json!(busy),
                format!("{:.0}% of a core", busy * 100.0),
            );
        }
    }

    /// The bench's own CPU over the measured part, flagged above [`SATURATED`].
    pub fn bench(&mut self, cpu: &BenchCpu) {
        let (seconds, busy) = cpu.stop();
        self.put("bench_cpu_s", json!(seconds), format!("{seconds:.2} s"));
        self.put(
            "bench_core_busy",
            json!(busy),
            format!("{:.0}% of a core", busy * 100.0),
        );
        let saturated = busy > SATURATED;
        self.put(
            "bench_saturated",
            json!(saturated),
            if saturated {
                "YES: the bench may be the limit of these figures; do not count them".into()
            } else {
                "no".into()
            },
        );
    }
}

/// Waits for the workers and adds up the latencies each recorded.
pub async fn merged(workers: Vec<tokio::task::JoinHandle<Histogram<u64>>>) -> Histogram<u64> {
    let mut all = histogram();
    for w in workers {
        if let Ok(h) = w.await {
            all.add(&h).ok();
        }
    }
    all
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// CPU seconds this process has used (user + system), from /proc/self/stat.
pub fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The bench's CPU from `start` on, against wall time.
pub struct BenchCpu {
    cpu0: f64,
    wall0: Instant,
}

impl BenchCpu {
    pub fn start() -> BenchCpu {
        BenchCpu {
            cpu0: process_cpu(),
            wall0: Instant::now(),
        }
    }

    /// (CPU seconds, share of one core).
    pub fn stop(&self) -> (f64, f64) {
        let cpu = process_cpu() - self.cpu0;
        let wall = self.wall0.elapsed().as_secs_f64().max(1e-9);
        (cpu, cpu / wall)
    }
}

/// Server RSS (bytes) and CPU seconds, from its /metrics/system.
pub async fn server_usage(url: &str) -> (f64, f64) {
    let Ok(mut http) = Http::connect(url).await else {
        return (0.0, 0.0);
    };
    let Ok((_, body)) = http.request("GET", "/metrics/system", "", b"").await else {
        return (0.0, 0.0);
    };
    let text = String::from_utf8_lossy(&body);
    let metric = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        metric("process_resident_memory_bytes "),
        metric("process_cpu_seconds_total "),
    )
}
