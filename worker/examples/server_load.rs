//! Load on a team server, for `hack/bench/server-load.sh`: CLIENTS concurrent clients, each a
//! loop of what a build does against the server (read a record, miss, upload a layer and its
//! record, read a layer back, report the build, now and then read the stats), for SECONDS.
//!
//! `cargo run --release -p memobuild-worker --example server_load -- URL TOKEN CLIENTS SECONDS`
//!
//! Prints, per kind of request and in all: requests, requests per second, MB moved, p50, p99
//! and max latency, and errors (any answer other than the one expected, or no answer). Exits 1
//! when there was an error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Size of the layers uploaded and read back.
const LAYER: usize = 256 * 1024;

/// What one client saw, per request kind: latencies and bytes.
#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    bytes: u64,
    errors: Vec<String>,
}

impl Tally {
    fn add(&mut self, kind: &'static str, took: Duration, bytes: usize) {
        self.latencies.entry(kind).or_default().push(took);
        self.bytes += bytes as u64;
    }
}

/// One request: the latency is counted whatever the answer; `want` is the status expected.
async fn call(
    tally: &mut Tally,
    kind: &'static str,
    want: &[u16],
    req: reqwest::RequestBuilder,
    sent: usize,
) -> Option<Vec<u8>> {
    let t = Instant::now();
    let result = async {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    }
    .await;
    let took = t.elapsed();
    match result {
        Ok((status, body)) if want.contains(&status) => {
            tally.add(kind, took, sent + body.len());
            Some(body.to_vec())
        }
        Ok((status, body)) => {
            tally.add(kind, took, sent + body.len());
            tally.errors.push(format!(
                "{kind}: HTTP {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
            None
        }
        Err(e) => {
            tally.add(kind, took, sent);
            tally.errors.push(format!("{kind}: {e}"));
            None
        }
    }
}

async fn client(
    n: usize,
    base: Arc<str>,
    token: Arc<str>,
    until: Instant,
    http: reqwest::Client,
) -> Tally {
    let mut tally = Tally::default();
    let auth = format!("Bearer {token}");
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        // A layer of this client's own, different each round.
        let mut layer = vec![0u8; LAYER];
        for (j, b) in layer.iter_mut().enumerate() {
            *b = (j as u64 ^ i ^ (n as u64) << 32) as u8;
        }
        layer[..16].copy_from_slice(&(i + ((n as u64) << 40)).to_le_bytes().repeat(2));
        let blob = hex::encode(Sha256::digest(&layer));
        let key = hex::encode(Sha256::digest(format!("key-{n}-{i}")));
        let url = |kind: &str, name: &str| format!("{base}/{kind}/{name}");

        // The lookup a step starts with misses, so the step runs and uploads.
        call(
            &mut tally,
            "GET /ac (miss)",
            &[404],
            http.get(url("ac", &key)).header("Authorization", &auth),
            0,
        )
        .await;
        call(
            &mut tally,
            "PUT /cas",
            &[200, 201, 204],
            http.put(url("cas", &blob))
                .header("Authorization", &auth)
                .body(layer.clone()),
            LAYER,
        )
        .await;
        let record = serde_json::json!({ "key": key, "layers": [format!("sha256:{blob}")] });
        let record = record.to_string();
        let sent = record.len();
        call(
            &mut tally,
            "PUT /ac",
            &[200, 201, 204],
            http.put(url("ac", &key))
                .header("Authorization", &auth)
                .body(record),
            sent,
        )
        .await;
        // Another machine's lookup of the same step hits, and reads the layer.
        call(
            &mut tally,
            "GET /ac (hit)",
            &[200],
            http.get(url("ac", &key)).header("Authorization", &auth),
            0,
        )
        .await;
        if let Some(body) = call(
            &mut tally,
            "GET /cas",
            &[200],
            http.get(url("cas", &blob)).header("Authorization", &auth),
            0,
        )
        .await
            && body != layer
        {
            tally
                .errors
                .push("GET /cas: other bytes than uploaded".into());
        }
        let report = serde_json::json!({
            "id": format!("load-{n}-{i}"),
            "project": format!("project-{}", n % 3),
            "started_at": "2026-12-07T10:00:00Z",
            "duration_ms": 1000 + i,
            "status": "succeeded",
            "vertices": [
                {"name": "[1/2] FROM busybox", "digest": "sha256:aa", "cached": true, "duration_ms": 2},
                {"name": "[2/2] RUN make", "digest": format!("sha256:{key}"), "cached": false, "duration_ms": 900},
            ],
        })
        .to_string();
        let sent = report.len();
        call(
            &mut tally,
            "POST /api/builds",
            &[201],
            http.post(format!("{base}/api/builds"))
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .body(report),
            sent,
        )
        .await;
        if i.is_multiple_of(10) {
            call(
                &mut tally,
                "GET /api/stats",
                &[200],
                http.get(format!("{base}/api/stats?last=1000"))
                    .header("Authorization", &auth),
                0,
            )
            .await;
        }
    }
    tally
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, token, clients, seconds] = args.as_slice() else {
        return Err("usage: server_load URL TOKEN CLIENTS SECONDS".into());
    };
    let clients: usize = clients.parse()?;
    let seconds: u64 = seconds.parse()?;
    let base: Arc<str> = base.trim_end_matches('/').into();
    let token: Arc<str> = token.as_str().into();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|n| tokio::spawn(client(n, base.clone(), token.clone(), until, http.clone())))
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await?;
        for (k, v) in t.latencies {
            all.latencies.entry(k).or_default().extend(v);
        }
        all.bytes += t.bytes;
        all.errors.extend(t.errors);
    }
    let wall = started.elapsed().as_secs_f64();
    println!("| request | count | req/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|");
    let mut every = Vec::new();
    for (kind, mut v) in all.latencies {
        v.sort();
        println!(
            "| {kind} | {} | {:.0} | {} | {} | {} |",
            v.len(),
            v.len() as f64 / wall,
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.99)),
            ms(v.last().copied().unwrap_or_default())
        );
        every.extend(v);
    }
    every.sort();
    println!(
        "| all | {} | {:.0} | {} | {} | {} |",
        every.len(),
        every.len() as f64 / wall,
        ms(percentile(&every, 0.5)),
        ms(percentile(&every, 0.99)),
        ms(every.last().copied().unwrap_or_default())
    );
    println!(
        "\n{clients} clients, {wall:.1} s, {:.1} MB/s moved, {} errors",
        all.bytes as f64 / wall / 1e6,
        all.errors.len()
    );
    for e in all.errors.iter().take(10) {
        println!("error: {e}");
    }
    if !all.errors.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
