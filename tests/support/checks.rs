//! Waiting on conditions with deadlines, the engines a scenario runs on, and the
//! comparisons tests share.

use super::*;

/// Polls `check` until it holds; panics naming `what` after [`TIMEOUT`].
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, TIMEOUT, check).await;
}

/// [`eventually`] with a deadline of its own, for a condition that takes longer than
/// [`TIMEOUT`] by design. Polls soon after the start (1, 2, 4 ms ...), then every 20 ms.
pub async fn eventually_within<F, Fut>(what: &str, patience: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(1);
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for: {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Which engine a test runs against; the Redis variant owns its process.
pub enum Engine {
    Memory,
    Redis(RedisServer),
}

impl Engine {
    pub fn redis() -> Engine {
        Engine::Redis(RedisServer::start())
    }

    pub fn config(&self) -> Config {
        match self {
            Engine::Memory => config(None),
            Engine::Redis(r) => config(Some(r)),
        }
    }

    pub fn redis_server(&self) -> Option<&RedisServer> {
        match self {
            Engine::Memory => None,
            Engine::Redis(r) => Some(r),
        }
    }
}

/// Tick frames' ids.
pub fn tick_ids(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "tick")
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

/// The ids of a REST history page.
pub fn page_ids(page: &Value) -> Vec<String> {
    page["ticks"]
        .as_array()
        .map(|ticks| ticks.iter().map(|t| t["id"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Ingests ticks `from..from + n` of `channel` (value `i`, key `<channel>-<i>`) in one
/// batch, retrying 503; returns their ids.
pub async fn ingest_keyed(app: &TestApp, channel: &str, from: usize, n: usize) -> Vec<String> {
    let batch: Vec<Value> = (from..from + n)
        .map(|i| json!({"channel": channel, "value": i, "key": format!("{channel}-{i}")}))
        .collect();
    app.ingest_retrying(&Value::Array(batch)).await
}

pub fn sid(s: &str) -> StreamId {
    s.parse().expect("stream id")
}

/// Compares id lists without printing thousands of ids: the lengths and the first
/// difference.
pub fn assert_same_ids(got: &[String], expected: &[String], what: &str) {
    if got != expected {
        let first = got.iter().zip(expected).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} ids, expected {}; first difference at {:?} (got {:?}, expected {:?})",
            got.len(),
            expected.len(),
            first,
            first.and_then(|i| got.get(i)),
            first.and_then(|i| expected.get(i)),
        );
    }
}
