//! Benchmark: the release daemon against a local GitHub fake, loaded as fluxd loads it.
//!
//! `cargo run --release --example bench` (builds the daemon in release mode first).
//! Prints accepted events/s flat out, and the time from an event POST to the
//! provider request at a fixed rate. Numbers, not assertions: see the README.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn github(
    State(arrivals): State<Arrivals>,
    Path((_o, _r, sha)): Path<(String, String, String)>,
) -> StatusCode {
    arrivals.lock().unwrap().entry(sha).or_insert_with(Instant::now);
    StatusCode::CREATED
}

fn sync_event(sha: &str) -> Vec<u8> {
    format!(
        r#"{{"id":0,"serviceIDs":["default:deployment/podinfo"],"type":"sync","startedAt":"2020-10-13T14:14:30.123456789Z","endedAt":"2020-10-13T14:14:30.123456789Z","logLevel":"info","metadata":{{"commits":[{{"revision":"{sha}","message":"Bump podinfo"}}],"includes":{{"other":true}}}}}}"#
    )
    .into_bytes()
}

fn sha(run: u64, i: u64) -> String {
    format!("{run:08x}{i:032x}")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "flux-status"])
        .status()
        .expect("cargo build");
    assert!(status.success());
    let bin = format!("{}/target/release/flux-status", env!("CARGO_MANIFEST_DIR"));

    let arrivals: Arrivals = Arc::default();
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let app = Router::new()
        .route("/repos/{o}/{r}/statuses/{sha}", post(github))
        .with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(fake, app).await });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut daemon = Command::new(&bin)
        .args([
            "--git-url",
            "https://github.com/acme/app",
            "--api-url",
            &format!("http://{fake_addr}"),
        ])
        .args([
            "--listen",
            &addr.to_string(),
            "--ops-listen",
            "off",
            "--log-level",
            "warn",
        ])
        .args(["--queue-capacity", "1000000", "--concurrency", "16"])
        .env("GITHUB_TOKEN", "bench")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start daemon");
    notifiers::http::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let url = format!("http://{addr}/v6/events");
    let started = Instant::now();
    loop {
        if client
            .post(&url)
            .body(sync_event(&sha(0, 0)))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "daemon did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Flat out: distinct commits, 32 concurrent fluxd-like posters.
    let total: u64 = 40_000;
    let workers = 32;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let client = client.clone();
        let url = url.clone();
        set.spawn(async move {
            let mut ok = 0u64;
            let mut i = w;
            while i < total {
                let r = client
                    .post(&url)
                    .header("Accept", "application/json")
                    .body(sync_event(&sha(1, i)))
                    .send()
                    .await;
                if r.map(|r| r.status().as_u16() == 202).unwrap_or(false) {
                    ok += 1;
                }
                i += workers;
            }
            ok
        });
    }
    let mut accepted = 0;
    while let Some(n) = set.join_next().await {
        accepted += n.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "flat out: {accepted}/{total} v1 events accepted in {secs:.2} s = {:.0} events/s",
        accepted as f64 / secs
    );
    // Let delivery catch up before the latency run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap().len() < (total + 1) as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = arrivals.lock().unwrap().len();
    println!(
        "flat out: {delivered} distinct statuses reached the fake in {:.2} s",
        t0.elapsed().as_secs_f64()
    );

    // Fixed rate: 1,000 events/s for 10 s, one new commit each; latency POST → provider request.
    let rate = 1000u64;
    let n = rate * 10;
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(n as usize);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..n {
        ticker.tick().await;
        let s = sha(2, i);
        let t = Instant::now();
        sent.push((s.clone(), t));
        let client = client.clone();
        let url = url.clone();
        posts.spawn(async move {
            client
                .post(&url)
                .body(sync_event(&s))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    while posts.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrived = arrivals.lock().unwrap().clone();
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(s, t)| arrived.get(s).map(|a| a.saturating_duration_since(*t)))
        .collect();
    lat.sort();
    println!(
        "at {rate} events/s: {}/{} delivered; POST → provider request p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        n,
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}
