//! The core delivery property, for any set of servers sharing one store: producers
//! ingest continuously (through any of the servers) while clients join at random
//! moments with random cursors, some reconnecting mid-stream — each time to a server
//! picked at random. Each client's ids must equal the stream's ids after its cursor,
//! exactly once, in order, with `seq` continuous and no gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::{sid, token, Next, TestApp};

fn any(apps: &[Arc<TestApp>]) -> Arc<TestApp> {
    apps[rand::rng().random_range(0..apps.len())].clone()
}

/// Ingests `n` ticks (batches of up to 500) and returns their ids.
pub async fn ingest_n(app: &TestApp, channel: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"channel": channel, "value": *i as f64, "key": format!("{channel}-{i}-{}", rand::random::<u64>())}))
            .collect();
        ids.extend(ingest_ids(app, batch).await);
    }
    ids
}

/// Ingests `batch` (it must be stored) and returns the ids, in order.
pub async fn ingest_ids(app: &TestApp, batch: Vec<Value>) -> Vec<String> {
    let (status, body) = app.ingest(&Value::Array(batch)).await;
    assert_eq!(status, 201, "{body}");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Ingests 250 ticks of about 3 KB each (some 750 KB; `round` keeps their keys apart
/// from other rounds') and returns their ids: a dozen rounds are more than the
/// sockets on the way hold for a client that does not read.
pub async fn ingest_large(app: &TestApp, channel: &str, round: usize) -> Vec<String> {
    let pad = "x".repeat(3000);
    let batch = (0..250)
        .map(|i| json!({"channel": channel, "value": i, "key": format!("{round}-{i}"), "data": {"pad": pad}}))
        .collect();
    ingest_ids(app, batch).await
}

/// One client's view: connects (and sometimes reconnects) with a cursor, collects
/// ticks until it has seen `until`, and returns (cursor it started after, ids).
async fn client_run(
    apps: Vec<Arc<TestApp>>,
    channel: String,
    start: Option<(String, u64)>,
    reconnects: usize,
    done: Arc<Mutex<Option<String>>>,
) -> (String, Vec<String>) {
    let t = token(&["*"]);
    let mut resume = start.clone();
    let mut epoch: Option<String> = None;
    let mut ids: Vec<String> = Vec::new();
    let mut last_seq: Option<u64> = None;
    let mut started_after: Option<String> = start.as_ref().map(|(id, _)| id.clone());
    let mut left = reconnects;
    loop {
        let path = match &resume {
            None => format!("/ws/{channel}"),
            Some((id, seq)) => {
                let mut p = format!("/ws/{channel}?since={id}&seq={seq}");
                if let Some(e) = &epoch {
                    p.push_str(&format!("&epoch={e}"));
                }
                p
            }
        };
        let mut ws = any(&apps).ws(&path, &t).await;
        let mut budget = if left > 0 {
            rand::rng().random_range(1..200)
        } else {
            usize::MAX
        };
        loop {
            let f = match ws.next_within(Duration::from_millis(300)).await {
                Next::Json(f) => f,
                Next::Timeout => {
                    let target = done.lock().await.clone();
                    match target {
                        Some(last)
                            if ids.last() == Some(&last)
                                || (ids.is_empty() && started_after.as_deref() == Some(last.as_str())) =>
                        {
                            return (started_after.unwrap_or_else(|| "0-0".into()), ids)
                        }
                        _ => continue,
                    }
                }
                Next::Closed(code, reason) => panic!("closed {code:?} {reason}"),
            };
            match f["type"].as_str() {
                Some("tick") => {
                    let seq = f["seq"].as_u64().unwrap();
                    if let Some(last) = last_seq {
                        assert_eq!(seq, last + 1, "seq continuity on {channel}");
                    }
                    last_seq = Some(seq);
                    epoch = f["epoch"].as_str().map(str::to_string);
                    let id = f["id"].as_str().unwrap().to_string();
                    if started_after.is_none() {
                        // since absent: the cursor is the tick before the first replayed.
                        started_after = Some(format!("before:{id}"));
                    }
                    ids.push(id.clone());
                    budget -= 1;
                    if budget == 0 {
                        left -= 1;
                        resume = Some((id, seq));
                        ws.close().await;
                        break;
                    }
                }
                Some("live") if started_after.is_none() => {
                    started_after = Some(f["last_id"].as_str().unwrap().to_string());
                }
                Some("gap") => panic!("unexpected gap {f}"),
                _ => {}
            }
        }
    }
}

/// Runs the property on `channels` (3 or so) through `apps`; returns how many
/// deliveries were checked.
pub async fn exactly_once(apps: &[Arc<TestApp>], channels: &[String]) -> usize {
    for c in channels {
        ingest_n(&any(apps), c, 120).await;
    }
    let dones: HashMap<String, Arc<Mutex<Option<String>>>> = channels
        .iter()
        .map(|c| (c.clone(), Arc::new(Mutex::new(None))))
        .collect();

    // Producers: one per channel, batches of random size, for ~3 s.
    let mut producers = Vec::new();
    for (p, c) in channels.iter().enumerate() {
        let apps = apps.to_vec();
        let c = c.clone();
        producers.push(tokio::spawn(async move {
            for round in 0..60 {
                let n = rand::rng().random_range(1..20);
                let batch: Vec<Value> = (0..n)
                    .map(|i| json!({"channel": c, "value": (round * 100 + i) as f64, "data": {"producer": p}, "key": format!("{c}-{round}-{i}")}))
                    .collect();
                let (status, body) = any(&apps).ingest(&Value::Array(batch)).await;
                assert_eq!(status, 201, "{body}");
                // Pacing, not a condition: producers post at random intervals.
                let pause = rand::rng().random_range(5..80);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }

    // Clients: 36, joining at random moments with random cursors.
    let mut clients = Vec::new();
    for i in 0..36 {
        let apps = apps.to_vec();
        let channel = channels[i % channels.len()].clone();
        let done = dones[&channel].clone();
        clients.push(tokio::spawn(async move {
            // Not a condition: clients join at random moments of the run.
            let join_at = rand::rng().random_range(0..2500);
            tokio::time::sleep(Duration::from_millis(join_at)).await;
            let history = any(&apps).history_ids(&channel, "0-0").await;
            let start = match i % 4 {
                0 => None,
                1 => Some(("0-0".to_string(), 0)),
                _ => {
                    let k = rand::rng().random_range(0..history.len());
                    Some((history[k].clone(), k as u64 + 1))
                }
            };
            let reconnects = if i % 3 == 0 { 3 } else { 0 };
            let result = client_run(apps, channel.clone(), start, reconnects, done).await;
            (channel, result)
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    // Tell clients where each stream ends.
    for c in channels {
        let last = any(apps).history_ids(c, "0-0").await.last().cloned();
        *dones[c].lock().await = last;
    }
    let mut checked = 0;
    for client in clients {
        let (channel, (after, ids)) = tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("client finished")
            .unwrap();
        let all = any(apps).history_ids(&channel, "0-0").await;
        let expected: Vec<String> = match after.strip_prefix("before:") {
            Some(first) => {
                let pos = all
                    .iter()
                    .position(|id| id == first)
                    .expect("first replayed id is in the stream");
                assert!(
                    all.len() - pos >= 100 || pos == 0,
                    "default replay starts within the last 100"
                );
                all[pos..].to_vec()
            }
            None => all.iter().filter(|id| sid(id) > sid(&after)).cloned().collect(),
        };
        assert_eq!(ids.len(), expected.len(), "client on {channel} after {after}: count");
        assert_eq!(ids, expected, "client on {channel} after {after}");
        checked += ids.len();
    }
    checked
}
