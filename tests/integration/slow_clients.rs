//! Slow, idle and too many clients against the real daemon: half-sent requests are
//! closed at their deadlines, connections over the cap are refused at once, body
//! bytes being read are bounded, and probes and events keep being answered.

use crate::support;

use std::time::{Duration, Instant};
use support::{Daemon, compact};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the daemon closes the connection; `None` if it is still open at `deadline`.
async fn read_until_closed(mut sock: TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// `/healthz` on ops and one fluxd event on ingest, each on a fresh connection.
async fn probe_and_event(d: &Daemon, client: &reqwest::Client) -> (u16, u16) {
    let health = client
        .get(format!("http://{}/healthz", d.ops))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    let event = client
        .post(d.url("/v6/events"))
        .body(compact("v1/fluxcloud-sync.json"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    (health, event)
}

fn fresh_connections() -> reqwest::Client {
    notifiers::http::install_crypto_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test]
async fn three_hundred_half_sent_requests_are_closed_at_their_deadlines_while_the_daemon_serves() {
    let d = Daemon::start(
        &[
            "--dry-run",
            "--git-url",
            "https://github.com/acme/app",
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
        ],
        &[],
    )
    .await;
    let client = fresh_connections();
    let started = Instant::now();
    // Generous for a loaded machine; without deadlines none of them ever closes.
    let deadline = started + Duration::from_secs(20);
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..300 {
        let mut sock = TcpStream::connect(d.addr).await.unwrap();
        let kind = i % 3;
        let sent: &[u8] = match kind {
            // Headers never finished.
            0 => b"POST /v6/events HTTP/1.1\r\nHost: flux-status\r\nContent-Le",
            // A body held short, on each event route.
            1 => b"POST /v6/events HTTP/1.1\r\nHost: flux-status\r\nContent-Length: 1000\r\n\r\n{\"type\":",
            _ => b"POST /v2/events HTTP/1.1\r\nHost: flux-status\r\nContent-Length: 1000\r\n\r\n{\"involved",
        };
        sock.write_all(sent).await.unwrap();
        readers.spawn(async move { (kind, read_until_closed(sock, deadline).await) });
    }

    // Probes and events keep working while the half-sent requests are open.
    let mut served = 0;
    while !readers.is_empty() {
        let (health, event) = probe_and_event(&d, &client).await;
        assert_eq!((health, event), (200, 202), "served while under attack");
        served += 1;
        while let Some(done) = readers.try_join_next() {
            let (kind, answer) = done.unwrap();
            let answer =
                answer.unwrap_or_else(|| panic!("a half-sent request (kind {kind}) was never closed"));
            if kind != 0 {
                let text = String::from_utf8_lossy(&answer);
                assert!(text.starts_with("HTTP/1.1 408"), "held body: {text}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "closed within the deadlines"
    );
    let (health, event) = probe_and_event(&d, &client).await;
    assert_eq!((health, event), (200, 202));
    let header = d
        .metric(r#"flux_status_connections_closed_total{listener="ingest",reason="header_timeout"}"#)
        .await;
    assert!(header >= 100.0, "header timeouts counted: {header}");
    let body_v1 = d
        .metric(r#"flux_status_events_received_total{source="fluxv1",type="unknown",result="body_timeout"}"#)
        .await;
    assert!(body_v1 >= 100.0, "body timeouts counted: {body_v1}");
    // One line per period, not one per connection.
    let lines = d
        .logs()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("--header-timeout"))
        })
        .count();
    assert!((1..=5).contains(&lines), "{lines} header timeout lines");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let d = Daemon::start(
        &[
            "--dry-run",
            "--git-url",
            "https://github.com/acme/app",
            "--idle-timeout",
            "1s",
        ],
        &[],
    )
    .await;
    let mut sock = TcpStream::connect(d.addr).await.unwrap();
    let body = compact("v1/fluxcloud-sync.json");
    let head = format!(
        "POST /v6/events HTTP/1.1\r\nHost: flux-status\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(&[head.as_bytes(), &body].concat()).await.unwrap();
    let answer = read_until_closed(sock, Instant::now() + Duration::from_secs(20))
        .await
        .expect("the idle connection is closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 202"));
    assert!(
        d.metric(r#"flux_status_connections_closed_total{listener="ingest",reason="idle_timeout"}"#)
            .await
            >= 1.0
    );
}

async fn wait_metric_at_least(d: &Daemon, series: &str, want: f64) {
    let until = Instant::now() + Duration::from_secs(15);
    while d.metric(series).await < want {
        assert!(Instant::now() < until, "{series} never reached {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const INGEST_OPEN: &str = r#"flux_status_connections_open{listener="ingest"}"#;

#[tokio::test]
async fn connections_over_the_cap_are_refused_when_all_are_busy_and_probes_keep_answering() {
    let d = Daemon::start(
        &[
            "--dry-run",
            "--git-url",
            "https://github.com/acme/app",
            "--max-connections",
            "20",
            "--ops-max-connections",
            "4",
            "--body-timeout",
            "60s",
        ],
        &[],
    )
    .await;
    let client = fresh_connections();
    // Twenty requests in progress, their bodies held short: none can give way.
    let mut busy = Vec::new();
    for _ in 0..20 {
        let mut sock = TcpStream::connect(d.addr).await.unwrap();
        sock.write_all(b"POST /v6/events HTTP/1.1\r\nHost: flux-status\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        busy.push(sock);
    }
    wait_metric_at_least(&d, INGEST_OPEN, 20.0).await;
    // Past the minimum age below which nobody is evicted, to show busy ones are kept.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The 21st is answered 503 and closed at once, not left waiting.
    let over = TcpStream::connect(d.addr).await.unwrap();
    let answer = read_until_closed(over, Instant::now() + Duration::from_secs(10))
        .await
        .expect("a connection over the cap is closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
    assert!(
        d.metric(r#"flux_status_connections_closed_total{listener="ingest",reason="connection_limit"}"#)
            .await
            >= 1.0
    );

    // Ops has its own cap, and idle connections there give way to probes.
    let mut ops_idle = Vec::new();
    for _ in 0..4 {
        ops_idle.push(TcpStream::connect(d.ops).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let health = client
            .get(format!("http://{}/healthz", d.ops))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(
            health.status().as_u16(),
            200,
            "probes answered under an ops flood"
        );
    }
    drop(ops_idle);

    // Once the busy ones go, events are taken again.
    drop(busy);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, event) = probe_and_event(&d, &client).await;
        if event == 202 {
            break;
        }
        assert!(Instant::now() < until, "events not taken after the cap freed up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_flood_of_idle_connections_cannot_keep_events_out() {
    let d = Daemon::start(
        &[
            "--dry-run",
            "--git-url",
            "https://github.com/acme/app",
            "--max-connections",
            "20",
            "--header-timeout",
            "60s",
        ],
        &[],
    )
    .await;
    let client = fresh_connections();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(d.addr).await.unwrap());
    }
    wait_metric_at_least(&d, INGEST_OPEN, 20.0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..5 {
        let (health, event) = probe_and_event(&d, &client).await;
        assert_eq!((health, event), (200, 202), "served at the cap");
    }
    assert!(
        d.metric(r#"flux_status_connections_closed_total{listener="ingest",reason="evicted"}"#)
            .await
            >= 1.0
    );
    assert!(d.metric(INGEST_OPEN).await <= 20.0, "the cap held");
    // The evicted ones were really closed.
    let mut closed = 0;
    for sock in idle {
        if read_until_closed(sock, Instant::now() + Duration::from_millis(200))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    assert!(closed >= 1, "{closed} closed");
}

#[tokio::test]
async fn body_bytes_being_read_are_bounded_and_released() {
    let mib = 1024 * 1024;
    let d = Daemon::start(
        &[
            "--dry-run",
            "--git-url",
            "https://github.com/acme/app",
            "--max-event-bytes",
            &mib.to_string(),
            "--max-body-bytes-in-flight",
            &(3 * mib).to_string(),
            "--body-timeout",
            "60s",
        ],
        &[],
    )
    .await;
    // Three bodies held one byte short take the whole budget.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut sock = TcpStream::connect(d.addr).await.unwrap();
        let head = format!("POST /v6/events HTTP/1.1\r\nHost: flux-status\r\nContent-Length: {mib}\r\n\r\n");
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(&vec![b' '; mib - 1]).await.unwrap();
        held.push(sock);
    }
    // Let the daemon read them in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A large event cannot get in meanwhile: 503 with Retry-After, not an ever-growing heap.
    let client = fresh_connections();
    let until = Instant::now() + Duration::from_secs(20);
    let big = vec![b' '; mib / 2];
    loop {
        let resp = client
            .post(d.url("/v6/events"))
            .body(big.clone())
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 503 {
            assert!(resp.headers().contains_key("retry-after"));
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["reason"], "busy");
            break;
        }
        // Before the three are all read in, the large one may still fit (and is then a 400).
        assert!(Instant::now() < until, "the budget was never exhausted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Dropping the held bodies gives their bytes back.
    drop(held);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, event) = probe_and_event(&d, &client).await;
        if event == 202 {
            break;
        }
        assert!(Instant::now() < until, "budget never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
