//! A test's own `redis-server`: started on a free port with a temporary `--dir`,
//! stopped, killed and restarted by pid; its command counts.

use super::*;

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

    /// Starts again after `kill`, on the same port and directory (which must still be
    /// free).
    pub fn start_again(&mut self) {
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
        self.start_again();
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

impl RedisServer {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }
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
