//! Prometheus metrics (docs/PROTOCOL.md §7).
//!
//! One registry per server instance, not a global: tests run several servers in one
//! process and each must count only its own traffic.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub subscriptions: IntGauge,
    pub ticks_ingested: IntCounterVec,
    pub ticks_delivered: IntCounter,
    /// Of those, tick frames the channels wrote (or queued) straight to a socket
    /// (docs/ARCHITECTURE.md "Delivery from the channel").
    pub ticks_direct: IntCounter,
    pub delivery_latency: Histogram,
    pub replayed_ticks: IntCounter,
    pub handshakes: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub redis_errors: IntCounter,
    pub slow_consumer_catchups: IntCounter,
    pub http_duration: HistogramVec,
    pub ratelimit_local: IntGauge,
    pub bad_entries: IntCounter,
    /// Channels this node moved to a new epoch because a failover rolled their
    /// stream back behind what was delivered.
    pub rollbacks: IntCounter,
    /// REST history pages by where they were read from (`cache`, `store`).
    pub history_pages: IntCounterVec,
    /// Bytes the page cache holds (set when a page is served).
    pub history_cache_bytes: IntGauge,
    /// Close frames sent, by code: the fixed set of docs/PROTOCOL.md §5.6.
    pub close_codes: IntCounterVec,
    /// Ticks each subscription was sent from history before its `live` frame.
    pub replay_size: Histogram,
    /// Per partition: how far the newest stream entry of its channels is ahead of
    /// what the reader delivered, in ticks and in milliseconds of stream id time
    /// (sampled every few seconds; 0 while caught up).
    pub reader_lag_ticks: IntGaugeVec,
    pub reader_lag_ms: IntGaugeVec,
    /// Answer time of Redis commands on the shared connections, by command.
    pub redis_latency: HistogramVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are fixed at compile time and unique, so registration cannot collide.
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter =
            |name: &str, help: &str| register(&r, IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("{e}")));
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("{e}")));
        let counter_vec = |name: &str, help: &str, label: &str| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), &[label]).unwrap_or_else(|e| unreachable!("{e}")),
            )
        };
        let gauge_vec = |name: &str, help: &str| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), &["partition"]).unwrap_or_else(|e| unreachable!("{e}")),
            )
        };
        let latency_buckets = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        Metrics {
            connections: gauge("tickstream_connections", "Open WebSocket connections."),
            subscriptions: gauge(
                "tickstream_subscriptions",
                "Active channel subscriptions across connections.",
            ),
            ticks_ingested: counter_vec(
                "tickstream_ticks_ingested_total",
                "Ticks received by ingest, by result (stored, duplicate, rejected).",
                "result",
            ),
            ticks_delivered: counter("tickstream_ticks_delivered_total", "Tick frames written to WebSockets."),
            ticks_direct: counter(
                "tickstream_ticks_direct_total",
                "Of the tick frames delivered, those the channel wrote straight to a caught-up socket.",
            ),
            delivery_latency: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tickstream_delivery_latency_seconds",
                        "Time from append in the store to live ticks being queued to a socket: one sample per batch, its oldest tick.",
                    )
                    .buckets(latency_buckets),
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            replayed_ticks: counter(
                "tickstream_replayed_ticks_total",
                "Ticks sent from history (replay and catch-up).",
            ),
            handshakes: counter_vec(
                "tickstream_handshakes_total",
                "WebSocket handshakes by result.",
                "result",
            ),
            rate_limited: counter_vec(
                "tickstream_rate_limited_total",
                "Requests refused by rate limits, by group.",
                "group",
            ),
            redis_errors: counter("tickstream_redis_errors_total", "Errors talking to Redis."),
            slow_consumer_catchups: counter(
                "tickstream_slow_consumer_catchups_total",
                "Times a session fell behind the live buffer and caught up from the stream.",
            ),
            http_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("tickstream_http_request_duration_seconds", "HTTP request duration."),
                    &["method", "route", "status"],
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            ratelimit_local: gauge(
                "tickstream_ratelimit_local",
                "1 while rate limiting falls back to local buckets.",
            ),
            bad_entries: counter(
                "tickstream_bad_entries_total",
                "Stream entries skipped because they cannot be read as ticks.",
            ),
            rollbacks: counter(
                "tickstream_rollbacks_total",
                "Channels moved to a new epoch because a failover rolled their stream back.",
            ),
            history_pages: counter_vec(
                "tickstream_history_pages_total",
                "REST history pages, by where they were read from (the node's cache, or the store).",
                "source",
            ),
            history_cache_bytes: gauge(
                "tickstream_history_cache_bytes",
                "Bytes of recent history this node keeps in memory for REST pages.",
            ),
            close_codes: counter_vec(
                "tickstream_close_codes_total",
                "WebSocket close frames (and SSE endings) sent, by close code.",
                "code",
            ),
            replay_size: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tickstream_replay_size_ticks",
                        "Ticks a subscription was sent from history before going live.",
                    )
                    .buckets(vec![0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0]),
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            reader_lag_ticks: gauge_vec(
                "tickstream_reader_lag_ticks",
                "Ticks stored but not yet delivered by this node's reader, by partition.",
            ),
            reader_lag_ms: gauge_vec(
                "tickstream_reader_lag_milliseconds",
                "Stream id time of the newest stored tick minus that of the last delivered, by partition.",
            ),
            redis_latency: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tickstream_redis_command_duration_seconds",
                        "Answer time of Redis commands on shared connections (blocking reads excluded), by command.",
                    )
                    .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0]),
                    &["command"],
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            registry: r,
        }
    }

    /// Prometheus text exposition of this server's metrics.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Process metrics for `/metrics/system`, read from `/proc` (Linux); empty elsewhere.
pub fn render_system() -> String {
    let mut out = String::new();
    let page = 4096u64;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss_pages) = statm.split_whitespace().nth(1).and_then(|s| s.parse::<u64>().ok()) {
            out.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n");
            out.push_str("# TYPE process_resident_memory_bytes gauge\n");
            out.push_str(&format!("process_resident_memory_bytes {}\n", rss_pages * page));
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces) start at ") ".
        if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
            let cpu = (ticks(11) + ticks(12)) as f64 / 100.0;
            out.push_str("# HELP process_cpu_seconds_total User and system CPU time.\n");
            out.push_str("# TYPE process_cpu_seconds_total counter\n");
            out.push_str(&format!("process_cpu_seconds_total {cpu}\n"));
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push_str("# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\n");
        out.push_str(&format!("process_open_fds {}\n", fds.count()));
    }
    out
}
