//! `NodeProc`: the built tickstream binary as a child process, killed or signalled
//! by pid.

use super::*;

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
