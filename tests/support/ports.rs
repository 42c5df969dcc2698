//! Free ports, and proof that the server a test started on one is its own: two
//! tests can pick the same free port (`INFO server`'s `process_id`, or the owner of
//! the listening socket from /proc).

use super::*;

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
