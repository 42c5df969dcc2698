//! `TestApp`: a tickstream server in-process on a free port (or one running
//! elsewhere), its configuration and tokens, and the HTTP calls tests make.

use super::*;

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

    /// The node's resident memory in bytes, from `/metrics/system`.
    pub async fn rss(&self) -> f64 {
        self.metric("/metrics/system", "process_resident_memory_bytes")
            .await
            .expect("RSS is reported")
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
