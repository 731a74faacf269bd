//! Benchmark: the release daemon, durable outbox on, against a local GitHub fake,
//! loaded as fluxd loads it.
//!
//! `cargo run --release --example bench` (builds the daemon in release mode first).
//! Prints numbers; nothing here is asserted (see the README's Performance section).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
struct Fake {
    /// When each commit's status first reached the fake.
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    /// Answer 503 to every write, to build up a backlog.
    down: Arc<AtomicBool>,
}

async fn github(State(f): State<Fake>, Path((_o, _r, sha)): Path<(String, String, String)>) -> StatusCode {
    if f.down.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    f.arrivals.lock().unwrap().entry(sha).or_insert_with(Instant::now);
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Posts `n` events for run `run` from `workers` concurrent posters; returns how
/// many got 202 and each one's acknowledge time.
async fn flood(client: &reqwest::Client, url: &str, run: u64, n: u64, workers: u64) -> (u64, Vec<Duration>) {
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let client = client.clone();
        let url = url.to_string();
        set.spawn(async move {
            let mut acks = Vec::new();
            let mut i = w;
            while i < n {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("Accept", "application/json")
                    .body(sync_event(&sha(run, i)))
                    .send()
                    .await;
                if r.map(|r| r.status().as_u16() == 202).unwrap_or(false) {
                    acks.push(t.elapsed());
                }
                i += workers;
            }
            acks
        });
    }
    let mut acks = Vec::new();
    while let Some(a) = set.join_next().await {
        acks.extend(a.unwrap());
    }
    acks.sort();
    (acks.len() as u64, acks)
}

#[tokio::main]
async fn main() {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "flux-status"])
        .status()
        .expect("cargo build");
    assert!(status.success());
    let bin = format!("{}/target/release/flux-status", env!("CARGO_MANIFEST_DIR"));
    let state_dir = format!("{}/target/bench-state", env!("CARGO_MANIFEST_DIR"));
    let _ = std::fs::remove_dir_all(&state_dir);

    let fake = Fake::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/repos/{o}/{r}/statuses/{sha}", post(github))
        .route("/repos/{o}/{r}", get(|| async { "{}" }))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
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
        .args([
            "--queue-capacity",
            "1000000",
            "--concurrency",
            "16",
            "--state-dir",
            &state_dir,
        ])
        // Measure the pipeline, not GitHub's limits.
        .args(["--writes-per-minute", "0", "--requests-per-hour", "0"])
        .env("GITHUB_TOKEN", "bench")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start daemon");
    let pid = daemon.id();
    notifiers::http::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let url = format!("http://{addr}/v6/events");
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
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("start to first accepted event: {:.0} ms", ms(started.elapsed()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("idle: RSS {:.1} MiB", rss_mib(pid));

    // A backlog: the provider is down while 10,000 updates for new commits arrive.
    fake.down.store(true, Ordering::Relaxed);
    let (queued, _) = flood(&client, &url, 3, 10_000, 32).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "with {queued} pending updates (provider down): RSS {:.1} MiB",
        rss_mib(pid)
    );
    fake.down.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    while fake.arrivals.lock().unwrap().len() < 10_001 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.arrivals.lock().unwrap().clear();

    // Flat out: distinct commits, 32 concurrent fluxd-like posters.
    let total = 40_000;
    let t0 = Instant::now();
    let (accepted, acks) = flood(&client, &url, 1, total, 32).await;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "flat out: {accepted}/{total} v1 events accepted in {secs:.2} s = {:.0} events/s; acknowledge p50 {:.2} ms, p99 {:.2} ms",
        accepted as f64 / secs,
        ms(percentile(&acks, 0.5)),
        ms(percentile(&acks, 0.99)),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while fake.arrivals.lock().unwrap().len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "flat out: {} distinct statuses reached the fake {:.2} s after the first POST; RSS now {:.1} MiB",
        fake.arrivals.lock().unwrap().len(),
        t0.elapsed().as_secs_f64(),
        rss_mib(pid)
    );

    // Fixed rate: 1,000 events/s for 10 s, one new commit each; POST → provider request.
    let rate = 1000u64;
    let n = rate * 10;
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(n as usize);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..n {
        ticker.tick().await;
        let s = sha(2, i);
        sent.push((s.clone(), Instant::now()));
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
    let arrived = fake.arrivals.lock().unwrap().clone();
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(s, t)| arrived.get(s).map(|a| a.saturating_duration_since(*t)))
        .collect();
    lat.sort();
    println!(
        "at {rate} events/s: {}/{n} delivered; POST → provider request p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );

    let _ = daemon.kill();
    let _ = daemon.wait();
}
