//! Redis as production runs it (docs/OPERATIONS.md "Redis security"): the shipped
//! `redis/redis.conf` with the `redis/users.acl` user, a password in `REDIS_URL`, and
//! TLS (`rediss://`) with a private CA and with client certificates. Start-up names
//! what is wrong: a bad password, an untrusted certificate.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A redis-server started with the given arguments, killed (by pid) on drop.
struct Redis {
    port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Redis {
    /// On a free port that turns out to be its own: `owner` is the check of
    /// [`wait_own`] (its pid from `INFO server`, or from /proc where a test client
    /// cannot ask it).
    fn start(
        dir: tempfile::TempDir,
        args: impl Fn(u16) -> Vec<String>,
        owner: impl Fn(u16, u32) -> Option<bool>,
    ) -> Redis {
        let log = dir.path().join("redis.log");
        let (port, child) = on_own_port("redis-server", free_port, |port| {
            let mut child = Command::new("redis-server")
                .args(args(port))
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&log)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            match wait_own(port, &mut child, &owner) {
                Ok(()) => Ok((port, child)),
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    Err(format!("{why}; its log: {log}"))
                }
            }
        });
        // `wait_own` above has seen it answer: it is up.
        Redis { port, _dir: dir, child }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped redis.conf and ACL file, with a password and a test-only admin user
/// (to read Redis's ACL log), on a free port.
fn production_redis(password: &str) -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let acl = std::fs::read_to_string(repo("redis/users.acl"))
        .unwrap()
        .replace("CHANGE-ME", password);
    let acl = format!("{acl}user admin on >admin-pw ~* &* +@all\n");
    let acl_path = dir.path().join("users.acl");
    std::fs::write(&acl_path, acl).unwrap();
    let args = |port: u16| {
        vec![
            repo("redis/redis.conf").display().to_string(),
            "--aclfile".into(),
            acl_path.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--save".into(),
            String::new(),
        ]
    };
    let owner = |port: u16, pid: u32| {
        redis_pid_at(&format!("redis://admin:admin-pw@127.0.0.1:{port}")).map(|answered| answered == pid)
    };
    Redis::start(dir, args, owner)
}

fn admin(redis: &Redis) -> redis::Connection {
    redis::Client::open(format!("redis://admin:admin-pw@127.0.0.1:{}", redis.port))
        .and_then(|c| c.get_connection())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_user_of_the_shipped_config_can_do_everything_tickstream_does() {
    let redis = production_redis("s3cretpassw0rd");
    // The default user is off: without the password nothing works.
    let mut anonymous = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port))
        .unwrap()
        .get_connection()
        .unwrap();
    assert!(redis::cmd("PING").query::<String>(&mut anonymous).is_err());

    let mut cfg = config(None);
    cfg.redis_url = Some(format!("redis://tickstream:s3cretpassw0rd@127.0.0.1:{}", redis.port));
    cfg.rate_limits = tickstream::ratelimit::Limits::uniform(tickstream::ratelimit::Rate::parse("100/s:100").unwrap());
    let app = TestApp::start(cfg).await;
    let t = token(&["*"]);
    let first = app.ingest_one("acl.c", 1.0).await;
    // Replay (XINFO, XRANGE), the live tail (XREAD, CLIENT ID/UNBLOCK), rate limits
    // (the bucket script), REST, the node registry, readiness.
    let mut ws = app.ws("/ws/acl.c?since=0-0", &t).await;
    let frames = ws.until_type("live").await;
    assert_eq!(tick_ids(&frames), [first]);
    let live = app.ingest_one("acl.c", 2.0).await;
    assert_eq!(ws.until_type("tick").await.last().unwrap()["id"], live.as_str());
    let (status, page) = app.get("/api/v1/channels/acl.c/ticks?order=desc", Some(&t)).await;
    assert_eq!((status, page["ticks"].as_array().map(Vec::len)), (200, Some(2)));
    assert_eq!(app.get("/api/v1/channels", Some(&t)).await.0, 200);
    assert_eq!(app.get("/api/v1/nodes", Some(&t)).await.0, 200);
    // Candles: folded by the append script, read over REST and live, rebuilt.
    let (status, page) = app.get("/api/v1/channels/acl.c/candles?interval=1d", Some(&t)).await;
    assert_eq!((status, page["candles"][0]["count"].as_u64()), (200, Some(2)), "{page}");
    let mut candles = app.ws("/ws/acl.c?since=$&candles=1m", &t).await;
    candles.until_type("candle").await;
    let rebuilt = tickstream::rebuild_candles(&app.config, None, |_, _| {}).await;
    assert_eq!(rebuilt.ok(), Some(1));
    let (status, ready) = app.get("/readyz", None).await;
    assert_eq!(
        (status, ready["redis"].as_str(), ready["ratelimit"].as_str()),
        (200, Some("ok"), Some("redis"))
    );
    // Nothing tickstream sent was refused.
    let denied: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query(&mut admin(&redis)).unwrap();
    assert!(denied.is_empty(), "ACL refusals: {denied:?}");
    assert_eq!(app.metric("/metrics", "tickstream_redis_errors_total").await, Some(0.0));
    // Everything tickstream wrote is under its prefix.
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut admin(&redis)).unwrap();
    assert!(keys.iter().all(|k| k.starts_with("tickstream:")), "{keys:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_stops_start_up_saying_so() {
    let redis = production_redis("the-right-one");
    let mut cfg = config(None);
    cfg.redis_url = Some(format!("redis://tickstream:not-the-password@127.0.0.1:{}", redis.port));
    let err = tickstream::Server::bind(cfg)
        .await
        .err()
        .expect("start-up must fail")
        .to_string();
    assert!(err.starts_with("REDIS_URL"), "{err}");
    assert!(err.to_lowercase().contains("authentication failed"), "{err}");
    assert!(
        !err.contains("not-the-password"),
        "the password must not be printed: {err}"
    );
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and a client certificate.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tickstream test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca.pem());
        for (name, sans) in [
            ("server", vec!["127.0.0.1".to_string(), "localhost".into()]),
            ("client", vec!["tickstream".into()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans).unwrap().signed_by(&key, &ca).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn tls_redis(pki: &Pki, client_certs: bool) -> Redis {
    let args = |port: u16| -> Vec<String> {
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-auth-clients",
            if client_certs { "yes" } else { "no" },
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--tls-cert-file".into(),
            pki.path("server.pem").display().to_string(),
            "--tls-key-file".into(),
            pki.path("server.key").display().to_string(),
            "--tls-ca-cert-file".into(),
            pki.path("ca.pem").display().to_string(),
        ])
        .collect()
    };
    // INFO would need a TLS client with the test CA (and a client certificate): the
    // listening socket's owner, from /proc, says as much.
    Redis::start(tempfile::tempdir().unwrap(), args, listener_is)
}

async fn works_end_to_end(app: &TestApp) {
    let t = token(&["*"]);
    let mut ws = app.ws("/ws/tls.c?since=$", &t).await;
    ws.until_type("live").await;
    let id = app.ingest_one("tls.c", 1.0).await;
    assert_eq!(ws.until_type("tick").await.last().unwrap()["id"], id.as_str());
    let (status, body) = app.get("/api/v1/channels/tls.c/latest", Some(&t)).await;
    assert_eq!((status, body["id"].as_str()), (200, Some(id.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_with_client_certificates() {
    let pki = Pki::new();
    let redis = tls_redis(&pki, false);
    let mut cfg = config(None);
    cfg.redis_url = Some(format!("rediss://127.0.0.1:{}", redis.port));
    cfg.redis_tls.ca = Some(pki.path("ca.pem"));
    let app = TestApp::start(cfg.clone()).await;
    works_end_to_end(&app).await;
    app.stop().await;

    // Not trusting the CA (the system store does not know it) stops start-up.
    cfg.redis_tls.ca = None;
    let err = tickstream::Server::bind(cfg)
        .await
        .err()
        .expect("untrusted certificate")
        .to_string();
    assert!(
        err.starts_with("REDIS_URL") && err.to_lowercase().contains("certificate"),
        "{err}"
    );

    // Mutual TLS: Redis requires a client certificate.
    let redis = tls_redis(&pki, true);
    let mut cfg = config(None);
    cfg.redis_url = Some(format!("rediss://127.0.0.1:{}", redis.port));
    cfg.redis_tls.ca = Some(pki.path("ca.pem"));
    let refused = tickstream::Server::bind(cfg.clone()).await;
    assert!(refused.is_err(), "without a client certificate Redis refuses");
    cfg.redis_tls.client_cert = Some(pki.path("client.pem"));
    cfg.redis_tls.client_key = Some(pki.path("client.key"));
    let app = TestApp::start(cfg).await;
    works_end_to_end(&app).await;
    app.stop().await;
}

#[test]
fn a_missing_tls_file_names_its_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .env("REDIS_URL", "rediss://127.0.0.1:1")
        .env("TICKSTREAM_REDIS_TLS_CA", "/nonexistent/ca.pem")
        .env("TICKSTREAM_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TICKSTREAM_REDIS_TLS_CA"), "{err}");
}
