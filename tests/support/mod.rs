//! Test harness: private `redis-server` processes and in-process tickstream servers.
//!
//! Every test that touches storage gets its own `redis-server` on a free port with a
//! temporary directory (never the shared one on 6379), so tests run in parallel and
//! can stop, kill and restart Redis. Servers start in-process through
//! `tickstream::Server::bind` on port 0. Waits are on conditions with deadlines,
//! never bare sleeps.

#![allow(dead_code)]

pub mod candles;
pub mod cluster;
pub mod property;
pub mod raw;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tickstream::keyspace::ChannelKeys;
use tickstream::ratelimit::{Group, Limits, Rate, Tier};
use tickstream::tick::StreamId;
use tickstream::Config;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const INGEST_TOKEN: &str = "test-ingest-token";
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A port that was free a moment ago: another test may take it before our server binds
/// it, which [`on_own_port`] and [`wait_own`] catch.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts a server with `start` on ports from `pick` until one is its own: `start`
/// answers `Err` when another process answered on the port (another test took it
/// between the probe and the bind) or the server could not bind it. Five tries.
pub fn on_own_port<T>(what: &str, mut pick: impl FnMut() -> u16, mut start: impl FnMut(u16) -> Result<T, String>) -> T {
    let mut refused = Vec::new();
    for _ in 0..5 {
        let port = pick();
        match start(port) {
            Ok(started) => return started,
            Err(why) => {
                eprintln!("{what} on port {port}: {why}; trying another port");
                refused.push(why);
            }
        }
    }
    panic!("{what}: no port of its own in 5 tries: {refused:?}");
}

/// Waits up to 10 s until the server just started as `child` answers on `port` and is
/// `child`: `owner(port, pid)` says whether whoever answers there is process `pid`
/// (`None` while nothing answers). `Err` when another process answers there, or when
/// `child` exited first (it could not bind the port).
pub fn wait_own(port: u16, child: &mut Child, mut owner: impl FnMut(u16, u32) -> Option<bool>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match owner(port, child.id()) {
            Some(true) => return Ok(()),
            Some(false) => return Err(format!("another process answers on port {port}")),
            None => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status}) before answering on port {port}"));
        }
        assert!(Instant::now() < deadline, "nothing answered on port {port} within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `process_id` of `INFO server` from the Redis at `url`; `None` while nothing
/// answers there as a Redis.
pub fn redis_pid_at(url: &str) -> Option<u32> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
    conn.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// For [`wait_own`]: whether the Redis on `port` (no password) is process `pid`.
pub fn redis_is(port: u16, pid: u32) -> Option<bool> {
    redis_pid_at(&format!("redis://127.0.0.1:{port}")).map(|answered| answered == pid)
}

/// For [`wait_own`]: whether the socket listening on `port` (any local address) is
/// process `pid`'s, from /proc/net/tcp{,6} and the process's descriptors (Linux), for
/// servers that do not tell their pid; `None` while nothing listens there.
pub fn listener_is(port: u16, pid: u32) -> Option<bool> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st ... inode (the 10th field); 0A is LISTEN.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&"0A"), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            if local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port) {
                sockets.push(format!("socket:[{inode}]"));
            }
        }
    }
    if sockets.is_empty() {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        fds.filter_map(Result::ok)
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|link| sockets.iter().any(|s| link.as_os_str() == s.as_str())),
    )
}

/// A private redis-server process.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistent: bool,
}

impl RedisServer {
    /// No persistence: a restart loses everything (like the shared dev Redis).
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// AOF on, so a restart on the same directory keeps the data.
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            persistent,
        };
        on_own_port("redis-server", free_port, |port| {
            server.port = port;
            server.spawn()
        });
        server
    }

    /// Starts the process on `self.port`; `Err` when the Redis answering there is not it.
    fn spawn(&mut self) -> Result<(), String> {
        let appendonly = if self.persistent { "yes" } else { "no" };
        let mut child = spawn_redis(
            self.port,
            self.dir.path(),
            &["--appendonly", appendonly, "--appendfsync", "always"],
        );
        if let Err(why) = wait_own(self.port, &mut child, redis_is) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        self.child = Some(child);
        until_up(self.port, || self.ping());
        Ok(())
    }

    /// Starts the process again on its port, which must still be free.
    fn respawn(&mut self) {
        if let Err(why) = self.spawn() {
            panic!("redis-server again on port {}: {why}", self.port);
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to test redis")
    }

    /// Stops the process (SIGKILL by pid) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and starts again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.respawn();
    }

    /// Starts again after `kill`, on the same port and directory.
    pub fn start_again(&mut self) {
        self.respawn();
    }

    /// Number of data keys, for "Redis unchanged" checks. The node registry's
    /// heartbeat keys and the rate-limit buckets (accounting, not data; they expire
    /// by themselves) are not counted.
    pub fn dbsize(&self) -> usize {
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut self.client()).expect("KEYS");
        keys.iter()
            .filter(|k| !k.starts_with("tickstream:{nodes}") && !k.starts_with("tickstream:rl:"))
            .count()
    }

    /// Every stream id of a channel, via XRANGE.
    pub fn xrange_ids(&self, channel: &str, partitions: u32) -> Vec<String> {
        let key = ChannelKeys::new(channel, partitions).stream;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query(&mut self.client())
            .expect("XRANGE");
        entries.into_iter().map(|(id, _)| id).collect()
    }

    pub fn flushall(&self) {
        let _: () = redis::cmd("FLUSHALL").query(&mut self.client()).expect("FLUSHALL");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` of a test's own: loopback, port `port`, no RDB snapshots, its files
/// and log in `dir`, plus `extra` arguments.
pub fn spawn_redis(port: u16, dir: &std::path::Path, extra: &[&str]) -> std::process::Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--protected-mode", "no"])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (apt-get install redis-server)")
}

/// Waits up to 10 s for `up` to say the Redis on `port` answers (PING, which a Redis
/// loading its data refuses).
pub fn until_up(port: u16, mut up: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if up() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not start");
}

/// Builder for an in-process server.
pub struct TestApp {
    pub addr: SocketAddr,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
}

/// Limits so high no ordinary test meets them, while every request still goes
/// through the shield and the token buckets (the rate-limit tests set their own).
pub const GENEROUS: &str = "100000/s:100000";

pub fn config(redis: Option<&RedisServer>) -> Config {
    let mut c = Config::defaults();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.redis_url = redis.map(RedisServer::url);
    c.auth.jwt_secret = Some(SECRET.into());
    c.auth.ingest_token = Some(INGEST_TOKEN.into());
    let generous = Rate::parse(GENEROUS).unwrap();
    c.rate_limits = Limits::uniform(generous);
    c.ip_rate = generous;
    c
}

impl TestApp {
    pub async fn start(config: Config) -> TestApp {
        let server = tickstream::Server::bind(config.clone()).await.expect("server starts");
        let addr = server.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("server runs");
        });
        TestApp {
            addr,
            config,
            shutdown: Some(tx),
            handle: Some(handle),
            http: reqwest::Client::new(),
        }
    }

    /// Graceful shutdown; waits until the server has stopped.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), h).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub async fn ingest(&self, body: &Value) -> (u16, Value) {
        self.ingest_raw(body.to_string(), Some(INGEST_TOKEN)).await
    }

    pub async fn ingest_raw(&self, body: String, token: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url("/api/v1/ingest"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("ingest request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Ingests one tick with a unique value and returns its id.
    pub async fn ingest_one(&self, channel: &str, value: f64) -> String {
        let (status, body) = self
            .ingest(&json!({"channel": channel, "value": value, "key": format!("{value}")}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["results"][0]["id"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// The body of a GET without credentials, as text; `None` if the server did not
    /// answer.
    pub async fn text(&self, path: &str) -> Option<String> {
        self.http.get(self.url(path)).send().await.ok()?.text().await.ok()
    }

    /// The body of a GET with a bearer token, as text.
    pub async fn text_with_token(&self, path: &str, token: &str) -> Option<String> {
        let resp = self.http.get(self.url(path)).bearer_auth(token).send().await.ok()?;
        resp.text().await.ok()
    }

    /// A sample from the server's Prometheus text at `path` (`/metrics` or
    /// `/metrics/system`); `None` when it is not exposed.
    pub async fn metric(&self, path: &str, name: &str) -> Option<f64> {
        let text = self.text(path).await?;
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    /// All ids of a channel after `after`, paging through REST.
    pub async fn history_ids(&self, channel: &str, after: &str) -> Vec<String> {
        let token = token(&["*"]);
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/channels/{channel}/ticks?limit=1000&since={after}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.get(&path, Some(&token)).await;
            assert_eq!(status, 200, "{body}");
            for t in body["ticks"].as_array().unwrap() {
                ids.push(t["id"].as_str().unwrap().to_string());
            }
            match body["next"].as_str() {
                Some(n) => cursor = Some(n.to_string()),
                None => return ids,
            }
        }
    }

    /// Connects a WebSocket with a bearer header.
    pub async fn ws(&self, path: &str, token: &str) -> WsClient {
        self.try_ws(path, &[("authorization", format!("Bearer {token}"))])
            .await
            .expect("websocket connects")
    }

    /// Connects with the given headers; `Err(status, body)` when refused.
    pub async fn try_ws(&self, path: &str, headers: &[(&str, String)]) -> Result<WsClient, (u16, Value)> {
        let mut req = self.ws_url(path).into_client_request().expect("ws request");
        for (k, v) in headers {
            req.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((stream, _)) => Ok(WsClient { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(e) => panic!("websocket error: {e}"),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A JWT signed with the test secret.
pub fn token(channels: &[&str]) -> String {
    token_with(json!({"sub": "tester", "channels": channels}))
}

/// A JWT with these claims (plus `exp` in an hour unless given).
pub fn token_with(mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(tickstream::clock::unix_now() + 3600);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

pub struct WsClient {
    stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

/// What the next read produced.
#[derive(Debug)]
pub enum Next {
    Json(Value),
    Closed(Option<u16>, String),
    Timeout,
}

impl WsClient {
    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        let _ = self.stream.send(m).await;
    }

    /// Sends, reporting a failure (a reset connection) instead of ignoring it.
    pub async fn try_send(&mut self, m: Message) -> Result<(), String> {
        self.stream.send(m).await.map_err(|e| e.to_string())
    }

    pub async fn next_within(&mut self, wait: Duration) -> Next {
        loop {
            match tokio::time::timeout(wait, self.stream.next()).await {
                Err(_) => return Next::Timeout,
                Ok(None) => return Next::Closed(None, String::new()),
                Ok(Some(Err(_))) => return Next::Closed(None, String::new()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Next::Json(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Next::Closed(
                        frame.as_ref().map(|f| u16::from(f.code)),
                        frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    )
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next JSON frame; panics on close or timeout.
    pub async fn next_json(&mut self) -> Value {
        match self.next_within(TIMEOUT).await {
            Next::Json(v) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Frames until one of `type` arrives (inclusive).
    pub async fn until_type(&mut self, ty: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let f = self.next_json().await;
            let done = f["type"] == ty;
            frames.push(f);
            if done {
                return frames;
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Next::Closed(code, _) = self.next_within(TIMEOUT).await {
                return code;
            }
        }
        panic!("no close frame");
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
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

/// Runs a scenario, an `async fn(Engine)`, on both engines as two tests: `NAME::memory`
/// and `NAME::redis` (`cargo test NAME` runs both). `both_engines!(scenario)` names
/// the module after the scenario; `both_engines!(name, scenario)` otherwise.
#[allow(unused_macros)]
macro_rules! both_engines {
    ($scenario:ident) => {
        $crate::support::both_engines!($scenario, $scenario);
    };
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$scenario($crate::support::Engine::Memory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$scenario($crate::support::Engine::redis()).await;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_engines;

/// A tickstream binary started by a test (chaos tests: killed with SIGKILL, stopped
/// with SIGTERM, by pid).
pub struct NodeProc {
    pub addr: SocketAddr,
    child: Option<Child>,
    redis_url: String,
    env: Vec<(String, String)>,
    /// The process's open-file limit (soft and hard), when the test sets one.
    open_files: Option<u64>,
}

impl NodeProc {
    pub async fn start(redis: &RedisServer) -> NodeProc {
        Self::start_with(redis, &[]).await
    }

    /// With extra environment variables.
    pub async fn start_with(redis: &RedisServer, env: &[(&str, &str)]) -> NodeProc {
        Self::start_on_own_port(redis, env, None).await
    }

    /// With the process's open-file limit (soft and hard) set to `files`.
    pub async fn start_with_open_files(redis: &RedisServer, env: &[(&str, &str)], files: u64) -> NodeProc {
        Self::start_on_own_port(redis, env, Some(files)).await
    }

    /// On a free port that turns out to be the node's own (see [`on_own_port`]).
    async fn start_on_own_port(redis: &RedisServer, env: &[(&str, &str)], open_files: Option<u64>) -> NodeProc {
        let mut node = NodeProc {
            addr: "127.0.0.1:0".parse().unwrap(),
            child: None,
            redis_url: redis.url(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            open_files,
        };
        let mut refused = Vec::new();
        for _ in 0..5 {
            node.addr.set_port(free_port());
            match node.spawn().await {
                Ok(()) => return node,
                Err(why) => {
                    eprintln!("tickstream on {}: {why}; trying another port", node.addr);
                    refused.push(why);
                }
            }
        }
        panic!("tickstream: no port of its own in 5 tries: {refused:?}");
    }

    /// Starts the binary again after `terminate` or `kill9`: same port, Redis and
    /// environment, as a restarted deployment would.
    pub async fn start_again(&mut self) {
        if let Err(why) = self.spawn().await {
            panic!("tickstream again on {}: {why}", self.addr);
        }
    }

    /// Starts the binary on `self.addr`; `Err` when the socket listening there is not
    /// its own (the binary does not tell its pid: /proc does, see [`listener_is`]).
    async fn spawn(&mut self) -> Result<(), String> {
        let port = self.addr.port();
        let mut generous: Vec<(&str, &str)> = vec![("TICKSTREAM_IP_RATE", GENEROUS)];
        for tier in Tier::LIMITED {
            for group in Group::ALL {
                generous.push((Limits::variable(tier, group), GENEROUS));
            }
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_tickstream"));
        if let Some(files) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, which is async-signal-safe, between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: files,
                        rlim_max: files,
                    };
                    match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
            }
        }
        let mut child = command
            .envs(generous)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("TICKSTREAM_HMAC_SECRET")
            .env_remove("TICKSTREAM_JWT_PUBLIC_KEY")
            .env("TICKSTREAM_LISTEN", format!("127.0.0.1:{port}"))
            .env("REDIS_URL", &self.redis_url)
            .env("TICKSTREAM_JWT_SECRET", SECRET)
            .env("TICKSTREAM_INGEST_TOKEN", INGEST_TOKEN)
            .env("TICKSTREAM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the tickstream binary");
        let mut own = Err(String::new());
        eventually("the tickstream binary listens on its port, or exits", || {
            own = match (listener_is(port, child.id()), child.try_wait()) {
                (Some(true), _) => Ok(()),
                (Some(false), _) => Err(format!("another process listens on port {port}")),
                (None, Ok(Some(status))) => Err(format!("exited ({status}) before listening on port {port}")),
                (None, _) => return std::future::ready(false),
            };
            std::future::ready(true)
        })
        .await;
        if let Err(why) = own {
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        self.child = Some(child);
        let url = format!("http://{}/healthz", self.addr);
        eventually("node answers /healthz", || {
            let url = url.clone();
            async move { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// A client for this node.
    pub fn app(&self) -> TestApp {
        TestApp::attach(self.addr)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status and how long the process took to exit.
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        signal(self.pid(), "TERM");
        let status = self.child.take().and_then(|mut c| c.wait().ok());
        (status.and_then(|s| s.code()), started.elapsed())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends a signal to a process this test started.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

impl RedisServer {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl TestApp {
    /// A client for a server that runs elsewhere (another process).
    pub fn attach(addr: SocketAddr) -> TestApp {
        TestApp {
            addr,
            config: config(None),
            shutdown: None,
            handle: None,
            http: reqwest::Client::new(),
        }
    }

    /// Ingests a batch, retrying on 503 and connection errors (a producer's duty:
    /// ticks carry keys, so a retry after a partial failure stores nothing twice).
    pub async fn ingest_retrying(&self, batch: &Value) -> Vec<String> {
        let (results, _) = self.ingest_results(batch, TIMEOUT).await;
        results.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    }

    /// Like [`TestApp::ingest_retrying`], for up to `patience`: the answer's `results`,
    /// and how many tries were refused first.
    pub async fn ingest_results(&self, batch: &Value, patience: Duration) -> (Vec<Value>, usize) {
        let deadline = Instant::now() + patience;
        let mut refused = 0;
        loop {
            let resp = self
                .http
                .post(self.url("/api/v1/ingest"))
                .bearer_auth(INGEST_TOKEN)
                .json(batch)
                .send()
                .await;
            if let Ok(r) = resp {
                if r.status() == 201 {
                    let body: Value = r.json().await.unwrap();
                    return (body["results"].as_array().unwrap().clone(), refused);
                }
                assert_eq!(r.status(), 503, "only 503 is retried");
            }
            refused += 1;
            assert!(Instant::now() < deadline, "ingest kept failing");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
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

/// An HTTP answer with its headers.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A numeric header, e.g. `Retry-After`.
    pub fn number(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.parse().ok())
    }
}

impl TestApp {
    /// A request with any method, headers and body; the whole answer.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, String)], body: Option<String>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Answer { status, headers, body }
    }

    /// GET with a bearer token (or none).
    pub async fn get_answer(&self, path: &str, token: Option<&str>) -> Answer {
        let headers: Vec<(&str, String)> = token
            .map(|t| ("authorization", format!("Bearer {t}")))
            .into_iter()
            .collect();
        self.request("GET", path, &headers, None).await
    }
}

/// `Authorization: Bearer <t>` as a header pair.
pub fn bearer(t: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {t}"))
}

/// A config whose every limited tier and group uses `rate` (e.g. `"60/m:3"`).
pub fn with_limits(mut c: Config, rate: &str) -> Config {
    c.rate_limits = Limits::uniform(Rate::parse(rate).unwrap());
    c
}

/// Redis's call count for a command (INFO commandstats), e.g. `evalsha`, `xrange`.
pub fn calls(redis: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.client())
        .unwrap();
    info.lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// A Server-Sent Events client with what a browser's `EventSource` does: it parses
/// events (comments too, so tests can see keep-alives) and, when asked to, reconnects
/// to the same URL with `Last-Event-ID` set to the last `id:` it saw.
pub struct SseClient {
    url: String,
    token: String,
    pub last_event_id: Option<String>,
    response: Option<reqwest::Response>,
    buffer: Vec<u8>,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
    http: reqwest::Client,
}

/// What the next read of an SSE stream produced.
#[derive(Debug)]
pub enum SseNext {
    Event(Event),
    /// The server ended the stream (or the connection broke).
    Ended,
    Timeout,
}

impl SseClient {
    /// Connects; `Err((status, body))` when refused.
    pub async fn connect(app: &TestApp, path: &str, token: &str) -> Result<SseClient, (u16, Value)> {
        let mut c = SseClient {
            url: app.url(path),
            token: token.to_string(),
            last_event_id: None,
            response: None,
            buffer: Vec::new(),
            comments: 0,
            http: reqwest::Client::new(),
        };
        c.open(None).await?;
        Ok(c)
    }

    async fn open(&mut self, extra: Option<(&str, String)>) -> Result<(), (u16, Value)> {
        let mut req = self
            .http
            .get(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream");
        if let Some(id) = &self.last_event_id {
            req = req.header("last-event-id", id);
        }
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|_| (0, Value::Null))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err((status, resp.json().await.unwrap_or(Value::Null)));
        }
        assert_eq!(
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        self.response = Some(resp);
        self.buffer.clear();
        Ok(())
    }

    /// Reconnects as `EventSource` does after the stream ended, retrying while the
    /// server is away.
    pub async fn reconnect(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.open(None).await {
                Ok(()) => return,
                Err((status, body)) => {
                    assert!(matches!(status, 0 | 503), "reconnect refused: {status} {body}");
                    assert!(Instant::now() < deadline, "the server never came back");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The next event (comments are counted, not returned).
    pub async fn next_within(&mut self, wait: Duration) -> SseNext {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
                let mut any = false;
                for line in text.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        let _ = comment;
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                        any = true;
                    }
                }
                if !any {
                    continue;
                }
                if id.is_some() {
                    self.last_event_id = id.clone();
                }
                let data = serde_json::from_str(&data).expect("data is JSON");
                return SseNext::Event(Event { event, id, data });
            }
            let Some(resp) = self.response.as_mut() else {
                return SseNext::Ended;
            };
            match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Err(_) => return SseNext::Timeout,
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(_) => {
                    self.response = None;
                    return SseNext::Ended;
                }
            }
        }
    }

    pub async fn next_event(&mut self) -> Event {
        match self.next_within(TIMEOUT).await {
            SseNext::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Events until one named `name` (inclusive).
    pub async fn until_event(&mut self, name: &str) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            let e = self.next_event().await;
            let done = e.event == name;
            out.push(e);
            if done {
                return out;
            }
        }
    }
}

/// Tick events' ids.
pub fn event_ids(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "tick")
        .map(|e| e.data["id"].as_str().unwrap().to_string())
        .collect()
}
