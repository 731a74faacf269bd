//! Hostile input: a deterministic corpus of well over 1,000 mutated fluxd events,
//! random bodies, methods, paths and headers, plus raw socket garbage, against the
//! real daemon process. Every request must be answered with a sensible status, and
//! the process must stay up and keep working.

use crate::support;

use std::time::Duration;
use support::{Daemon, compact};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_EVENT_BYTES: usize = 16 * 1024;

const FIXTURES: &[&str] = &[
    "v1/event-sync.json",
    "v1/event-sync-errors.json",
    "v1/event-sync-initial.json",
    "v1/event-commit-policy.json",
    "v1/event-release.json",
    "v1/event-autorelease.json",
    "v1/fluxcloud-sync-errors.json",
    "v1/fluxcloud-autorelease-pre-1.12.json",
    "v1/flux-status-test-sync.json",
];

fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    match rng.u8(0..14) {
        0 => {
            for _ in 0..rng.usize(1..8) {
                let i = rng.usize(0..b.len());
                b[i] = rng.u8(..);
            }
        }
        1 => b.truncate(rng.usize(0..b.len())),
        2 => {
            let i = rng.usize(0..b.len());
            let j = rng.usize(i..b.len());
            b.drain(i..j);
        }
        3 => {
            let i = rng.usize(0..b.len());
            let junk: Vec<u8> = (0..rng.usize(1..64)).map(|_| rng.u8(..)).collect();
            b.splice(i..i, junk);
        }
        4 => b = format!("{}{}", "[".repeat(rng.usize(100..50_000)), "1").into_bytes(),
        5 => b = format!("{}{}", "{\"a\":".repeat(rng.usize(100..20_000)), "1").into_bytes(),
        6 => {
            let s = String::from_utf8_lossy(&b).replace(
                "\"sync\"",
                ["5", "null", "[]", "{}", "\"\"", "\"SYNC\""][rng.usize(0..6)],
            );
            b = s.into_bytes();
        }
        7 => {
            let s = String::from_utf8_lossy(&b).replacen(
                "\"revision\": \"",
                &format!("\"revision\": \"{}", "9".repeat(rng.usize(0..80))),
                1,
            );
            b = s.into_bytes();
        }
        8 => {
            b = [
                "null",
                "[]",
                "\"x\"",
                "0",
                "1e999999",
                "{}",
                "true",
                "",
                "\u{feff}{}",
                "{\"type\":\"sync\",\"metadata\":[]}",
            ][rng.usize(0..10)]
            .as_bytes()
            .to_vec()
        }
        9 => b = vec![b'x'; MAX_EVENT_BYTES + rng.usize(1..4096)],
        10 => {
            let s = String::from_utf8_lossy(&b).replace("\"commits\"", "\"commits\":null,\"x\"");
            b = s.into_bytes();
        }
        11 => {
            let s = String::from_utf8_lossy(&b).replace(
                "\"errors\"",
                &format!(
                    "\"errors\":[{}],\"y\"",
                    "{\"ID\":7},".repeat(rng.usize(1..50)) + "{}"
                ),
            );
            b = s.into_bytes();
        }
        12 => b.extend((0..rng.usize(1..32)).map(|_| rng.u8(0x80..=0xff))),
        _ => b = (0..rng.usize(0..2048)).map(|_| rng.u8(..)).collect(),
    }
    b
}

#[tokio::test]
async fn a_thousand_hostile_requests_are_all_answered_and_the_daemon_survives() {
    let max = MAX_EVENT_BYTES.to_string();
    let mut daemon = Daemon::start(
        &[
            "--dry-run",
            "--git-url",
            "https://github.com/acme/app",
            "--max-event-bytes",
            &max,
        ],
        &[],
    )
    .await;
    let seeds: Vec<Vec<u8>> = FIXTURES.iter().map(|f| compact(f)).collect();
    let mut rng = fastrand::Rng::with_seed(0x5eed_f1ec);
    // A fresh connection per request: each request is judged on its own answer, not
    // on a keep-alive connection an earlier error answer closed.
    notifiers::http::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let mut cases = Vec::new();
    for _ in 0..1200 {
        let seed = rng.usize(0..seeds.len());
        let body = mutate(&mut rng, &seeds[seed]);
        let method = [
            "POST", "POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS",
        ][rng.usize(0..9)];
        let path = [
            "/v6/events",
            "/v6/events",
            "/prefix/v6/events",
            "/v6/events?x=%zz",
            "/v11/daemon",
            "/",
            "/nope",
            "/v6/events/",
        ][rng.usize(0..8)];
        let content_type = [
            "",
            "application/json",
            "text/plain",
            "multipart/form-data; boundary=--x",
            "application/json; charset=latin1",
        ][rng.usize(0..5)];
        let auth = ["", "Scope-Probe token=", "Bearer x", "Scope-Probe token=\u{1}"][rng.usize(0..4)];
        cases.push((method, path, content_type, auth, body));
    }
    let total = cases.len();
    let mut answered = 0;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for chunk in cases.chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for (method, path, ct, auth, body) in chunk.iter().cloned() {
            let client = client.clone();
            let url = daemon.url(path);
            set.spawn(async move {
                let mut req = client
                    .request(method.parse().unwrap(), url)
                    .body(body)
                    .timeout(Duration::from_secs(10));
                if !ct.is_empty() {
                    req = req.header("Content-Type", ct);
                }
                if let Ok(v) = reqwest::header::HeaderValue::from_bytes(auth.as_bytes())
                    && !auth.is_empty()
                {
                    req = req.header("Authorization", v);
                }
                req.send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| format!("{e:?}"))
            });
        }
        while let Some(res) = set.join_next().await {
            let status = res
                .unwrap()
                .unwrap_or_else(|e| panic!("request not answered: {e}"));
            assert!(
                [202, 400, 404, 405, 413].contains(&status),
                "unexpected status {status}"
            );
            *statuses.entry(status).or_default() += 1;
            answered += 1;
        }
    }
    assert_eq!(answered, total);
    // The corpus really exercised each class of answer.
    for s in [202, 400, 404, 405, 413] {
        assert!(
            statuses.get(&s).copied().unwrap_or(0) > 0,
            "no {s} in {statuses:?}"
        );
    }

    // Raw garbage on the socket: answered or closed, never a crash.
    for i in 0..50u8 {
        let mut sock = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
        let junk: Vec<u8> = match i % 3 {
            0 => (0..rng.usize(1..512)).map(|_| rng.u8(..)).collect(),
            1 => b"POST /v6/events HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(),
            _ => b"GET /v11/daemon HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec(),
        };
        let _ = sock.write_all(&junk).await;
        let mut buf = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await;
    }

    assert!(daemon.is_running(), "daemon died");
    let health = client
        .get(format!("http://{}/healthz", daemon.ops))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let (status, body) =
        support::post_as_fluxd(&daemon.url("/v6/events"), compact("v1/fluxcloud-sync.json"), None).await;
    assert_eq!((status, body.as_str()), (202, ""), "still serving real events");
    let logs = serde_json::to_string(&daemon.logs()).unwrap();
    assert!(!logs.contains("panicked"), "a task panicked: {logs}");
}

/// A sender may shut down its side of the connection once its request is out and
/// still read the answer. The event waits for an fsync meanwhile; the early end of
/// the stream must not cost it its answer.
#[tokio::test]
async fn a_sender_that_half_closes_after_its_request_still_gets_its_answer() {
    let daemon = Daemon::start(&["--dry-run", "--git-url", "https://github.com/acme/app"], &[]).await;
    let body = compact("v1/fluxcloud-sync.json");
    let mut sock = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    let head = format!(
        "POST /v6/events HTTP/1.1\r\nhost: flux-status\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(&[head.as_bytes(), &body].concat()).await.unwrap();
    sock.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut answer))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}
