//! A local Redis Cluster for the cluster tests: `masters` masters with one replica
//! each, `redis-server --cluster-enabled yes` on free ports in temporary directories,
//! joined with `redis-cli --cluster create`. One cluster serves every test of a test
//! binary (starting one takes seconds, see [`hold`]); each test holds it alone, and
//! tests that break it (failovers) leave it whole again: three masters, each with a
//! replica in sync.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use std::net::TcpListener;

use serde_json::{json, Value};
use tickstream::keyspace::{self, partition_of};

use super::{bearer, config, Next, TestApp, WsClient};

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

/// How long a node may be silent before the others count it as failed. Short, so a
/// hard failover takes seconds; long enough that a busy CI machine does not fail a
/// master over by itself.
pub const NODE_TIMEOUT_MS: u64 = 3000;

pub struct ClusterNode {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ClusterNode {
    fn start() -> ClusterNode {
        let mut node = ClusterNode {
            port: 0,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        super::on_own_port("cluster node", free_cluster_port, |port| {
            node.port = port;
            node.spawn()
        });
        node
    }

    /// Starts the process on `self.port`; `Err` when the Redis answering there is not
    /// it (or it could not bind the port or its bus port).
    fn spawn(&mut self) -> Result<(), String> {
        let node_timeout = NODE_TIMEOUT_MS.to_string();
        let mut child = super::spawn_redis(
            self.port,
            self.dir.path(),
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &node_timeout,
                // A replica cut off from its master for a while may still take over:
                // the hard-failover tests cut one off on purpose.
                "--cluster-replica-validity-factor",
                "0",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ],
        );
        if let Err(why) = super::wait_own(self.port, &mut child, super::redis_is) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        self.child = Some(child);
        super::until_up(self.port, || self.query(&["PING"]).is_some());
        Ok(())
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// A plain connection to this one node.
    pub fn client(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://{}", self.addr())).ok()?;
        client.get_connection_with_timeout(Duration::from_secs(2)).ok()
    }

    /// One command on this node, as text (`None` when it does not answer).
    pub fn query(&self, args: &[&str]) -> Option<String> {
        let mut conn = self.client()?;
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let v: redis::Value = cmd.query(&mut conn).ok()?;
        Some(text(&v))
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on its port and directory (it rejoins the cluster from its
    /// `nodes.conf`; a master that was failed over comes back as a replica).
    pub fn start_again(&mut self) {
        if let Err(why) = self.spawn() {
            panic!("cluster node again on port {}: {why}", self.port);
        }
    }

    /// A field of `INFO <section>`, or of `CLUSTER INFO` for section "cluster".
    fn info(&self, section: &str, field: &str) -> Option<String> {
        let info = if section == "cluster" {
            self.query(&["CLUSTER", "INFO"])?
        } else {
            self.query(&["INFO", section])?
        };
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_string()))
    }

    pub fn is_master(&self) -> bool {
        self.info("replication", "role").as_deref() == Some("master")
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port whose cluster bus port (port + 10000) is free too (and exists).
fn free_cluster_port() -> u16 {
    loop {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port <= 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A Redis reply as text: bulk strings as they are, arrays joined by newlines.
fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::VerbatimString { text, .. } => text.clone(),
        redis::Value::Int(n) => n.to_string(),
        redis::Value::Okay => "OK".into(),
        redis::Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join("\n"),
        redis::Value::Nil => String::new(),
        other => format!("{other:?}"),
    }
}

pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
}

/// The test binary's one cluster. Only processes and directories live in it (no
/// connection, nothing bound to a runtime): each `#[tokio::test]` has a runtime of its
/// own, and the cluster outlives them. tokio's mutex, unlike std's, may be held across
/// an `.await`, and does not care which runtime waits on it.
static SHARED: Mutex<Option<RedisCluster>> = Mutex::const_new(None);

/// The shared cluster of 3 masters and 3 replicas, whole, held alone until the guard
/// drops: the failover tests need it alone, and the others count the nodes in the
/// registry (every server on the cluster registers) or would share 2 cores with a
/// failover's timing. The first caller starts it, and has its processes killed when
/// the test binary exits; later callers first [`RedisCluster::repair`] it.
pub async fn hold() -> MappedMutexGuard<'static, RedisCluster> {
    let mut shared = SHARED.lock().await;
    match shared.as_mut() {
        Some(cluster) => tokio::task::block_in_place(|| cluster.repair()),
        None => {
            let started = Instant::now();
            *shared = Some(tokio::task::block_in_place(|| RedisCluster::start(3)));
            // SAFETY: registers a function that takes nothing and cannot unwind (see
            // `stop_shared`).
            let registered = unsafe { libc::atexit(stop_shared) };
            assert_eq!(registered, 0, "atexit");
            eprintln!("cluster of 3 masters + 3 replicas up in {:?}", started.elapsed());
        }
    }
    MutexGuard::map(shared, |cluster| cluster.as_mut().expect("started above"))
}

/// At the test binary's exit: kills the shared cluster's processes and removes their
/// directories (a static is never dropped). Nothing in it panics: killing and removing
/// ignore errors.
extern "C" fn stop_shared() {
    if let Ok(mut shared) = SHARED.try_lock() {
        drop(shared.take());
    }
}

impl RedisCluster {
    /// Undoes what a test that failed half-way may have left: a node stopped (SIGSTOP)
    /// or killed, a master's replica output buffer limit lowered (see the hard
    /// failovers); then waits until the cluster is whole. After a test that passed
    /// there is nothing to undo, and this costs a few queries.
    pub fn repair(&mut self) {
        for node in &mut self.nodes {
            match &node.child {
                // SAFETY: a signal to a process this test binary started and has not
                // reaped; SIGCONT to a running process does nothing.
                Some(child) => unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
                },
                None => node.start_again(),
            }
        }
        for node in &self.nodes {
            // Redis's default for the replica class.
            let _ = node.query(&["CONFIG", "SET", "client-output-buffer-limit", "replica 256mb 64mb 60"]);
        }
        self.wait_whole();
    }

    /// `masters` masters and one replica each, every slot assigned, state ok.
    pub fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<ClusterNode> = (0..masters * 2).map(|_| ClusterNode::start()).collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(n.addr());
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_whole();
        cluster
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(ClusterNode::addr).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Waits until every node says `cluster_state:ok`, half the nodes are masters,
    /// and every replica's link to its master is up.
    pub fn wait_whole(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self
                .nodes
                .iter()
                .all(|n| n.info("cluster", "cluster_state").as_deref() == Some("ok"))
                && self.nodes.iter().filter(|n| n.is_master()).count() * 2 == self.nodes.len()
                && self
                    .nodes
                    .iter()
                    .filter(|n| !n.is_master())
                    .all(|n| n.info("replication", "master_link_status").as_deref() == Some("up"));
            if ok {
                return;
            }
            if Instant::now() >= deadline {
                let states: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "{}: {:?} {:?} {:?}",
                            n.port,
                            n.info("cluster", "cluster_state"),
                            n.info("replication", "role"),
                            n.info("replication", "master_link_status")
                        )
                    })
                    .collect();
                panic!("the cluster did not become whole: {states:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node (index) that is master for `slot` now, as the live masters say.
    pub fn master_of(&self, slot: u16) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for n in &self.nodes {
                if n.child.is_none() || !n.is_master() {
                    continue;
                }
                let Some(mut conn) = n.client() else { continue };
                let slots: redis::Value = match redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if let Some(port) = owner_port(&slots, slot) {
                    if let Some(j) = self.nodes.iter().position(|m| m.port == port) {
                        if self.nodes[j].child.is_some() && self.nodes[j].is_master() {
                            return j;
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "no master for slot {slot}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The replica (index) of the master at `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let id = self.nodes[master]
            .query(&["CLUSTER", "MYID"])
            .expect("master answers CLUSTER MYID");
        self.nodes
            .iter()
            .position(|n| {
                n.child.is_some()
                    && !n.is_master()
                    && n.info("replication", "master_port").and_then(|p| p.parse().ok())
                        == Some(self.nodes[master].port)
                    && n.query(&["CLUSTER", "MYID"]).is_some_and(|own| own != id)
            })
            .expect("the master has a replica")
    }

    /// Waits until `node` is a master (a failover finished).
    pub fn wait_master(&self, node: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.nodes[node].is_master() {
            assert!(Instant::now() < deadline, "node {node} did not become master");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The port of the master serving `slot` in a `CLUSTER SLOTS` reply.
fn owner_port(slots: &redis::Value, slot: u16) -> Option<u16> {
    let redis::Value::Array(ranges) = slots else {
        return None;
    };
    ranges.iter().find_map(|r| {
        let redis::Value::Array(items) = r else { return None };
        let (redis::Value::Int(start), redis::Value::Int(end)) = (items.first()?, items.get(1)?) else {
            return None;
        };
        if !(*start..=*end).contains(&i64::from(slot)) {
            return None;
        }
        let redis::Value::Array(master) = items.get(2)? else {
            return None;
        };
        match master.get(1)? {
            redis::Value::Int(port) => u16::try_from(*port).ok(),
            _ => None,
        }
    })
}

// What the cluster scenarios (tests/cluster.rs, tests/cluster_failover.rs) share.

pub fn cluster_config(cluster: &RedisCluster) -> tickstream::Config {
    let mut c = config(None);
    c.redis_url = Some(cluster.url());
    c
}

/// Runs a blocking wait on the cluster's processes without stalling the servers that
/// share this runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub fn run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A channel name (`prefix.<n>`) whose partition the master at `master` serves now.
pub fn channel_on(cluster: &RedisCluster, master: usize, prefix: &str) -> String {
    // Each of 3 masters serves about a third of the partitions: 1,000 names are plenty.
    (0..1000)
        .map(|n| format!("{prefix}.{n}"))
        .find(|c| master_of_channel(cluster, c) == master)
        .unwrap_or_else(|| panic!("no channel {prefix}.* on master {master}"))
}

pub fn master_of_channel(cluster: &RedisCluster, channel: &str) -> usize {
    blocking(|| cluster.master_of(keyspace::partition_slot(partition_of(channel, 16))))
}

/// Collects the frames of one channel's subscription until `ticks` ticks came.
pub async fn ticks_until(ws: &mut WsClient, ticks: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    while frames.iter().filter(|f: &&Value| f["type"] == "tick").count() < ticks {
        match ws.next_within(Duration::from_secs(30)).await {
            Next::Json(f) => frames.push(f),
            Next::Timeout => panic!("no tick for 30 s; so far {frames:?}"),
            Next::Closed(code, reason) => panic!("closed {code:?} {reason} after {frames:?}"),
        }
    }
    frames
}

pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "tick")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

pub fn batch(channel: &str, tag: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"channel": channel, "value": i as f64, "key": format!("{tag}-{i}")}))
            .collect(),
    )
}

/// Posts `body` until it is answered 201 (503 is retried), for up to 60 s: the ids,
/// and how many tries were refused.
pub async fn ingest_until_201(app: &TestApp, body: &Value) -> (Vec<String>, usize) {
    let (results, refused) = app.ingest_results(body, Duration::from_secs(60)).await;
    let ids = results.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    (ids, refused)
}

/// The index of the `n`th master (in node order).
pub fn master_at(cluster: &RedisCluster, n: usize) -> usize {
    let masters: Vec<usize> = blocking(|| {
        (0..cluster.nodes.len())
            .filter(|&i| cluster.nodes[i].is_master())
            .collect()
    });
    masters[n % masters.len()]
}

/// A WebSocket opened once the node's health task has seen the cluster answer again
/// after a failover: until its next good ping (pinging every master the topology
/// still names can take a few seconds after a master died) handshakes answer 503
/// `unavailable`, which a client retries.
pub async fn ws_once_healthy(app: &TestApp, path: &str, t: &str) -> WsClient {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match app.try_ws(path, &[bearer(t)]).await {
            Ok(ws) => return ws,
            Err((503, body)) if Instant::now() < deadline => {
                assert_eq!(body["error"], "unavailable", "{body}");
                // A client's retry interval, under the deadline above.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(refused) => panic!("{path}: {refused:?}"),
        }
    }
}
