//! The outbox log under faults, end to end: one large event does not poison it (a v1
//! sync with a 1.5 MiB error text and a v2 event with a 1.5 MiB message are accepted,
//! kept within the store's record limit, and survive a `kill -9` together with every
//! event after them, and the log keeps compacting); a damaged record loses only itself.

use crate::github_fake::{Fault, GitHub};
use crate::support;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::{Daemon, post_as_fluxd};

const TOKEN: &str = "ghp_large_events";
const HUGE: usize = 1_500_000;

/// The description of the last status applied to each commit.
fn descriptions(github: &GitHub) -> HashMap<String, String> {
    github
        .applied()
        .into_iter()
        .map(|s| (s.sha, s.description))
        .collect()
}

fn sha(i: usize) -> String {
    format!("{i:040x}")
}

fn v1_sync(sha: &str, error: Option<&str>) -> Vec<u8> {
    let errors = error
        .map(|e| json!([{"ID": "default:deployment/podinfo", "Path": "podinfo.yaml", "Error": e}]))
        .unwrap_or(Value::Null);
    serde_json::to_vec(&json!({
        "id": 0, "serviceIDs": [], "type": "sync",
        "metadata": {"commits": [{"revision": sha, "message": "m"}], "errors": errors}
    }))
    .unwrap()
}

fn v2_failed(sha: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "involvedObject": {"kind": "Kustomization", "namespace": "flux-system", "name": "apps"},
        "severity": "error",
        "timestamp": "2026-05-04T10:15:30Z",
        "message": message,
        "reason": "ReconciliationFailed",
        "metadata": {"revision": format!("main@sha1:{sha}")},
        "reportingController": "kustomize-controller"
    }))
    .unwrap()
}

async fn daemon(state: std::path::PathBuf, github: &GitHub) -> Daemon {
    Daemon::start_for_github(state, &github.uri(), TOKEN, &[], &[]).await
}

async fn wait_for(what: impl Fn() -> String, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {}", what());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn large_events_and_every_event_after_them_survive_kill_minus_nine() {
    let github = GitHub::start().await;
    // Down while the events come in: every status is still pending at the kill.
    github.outage(Some(Fault::Unavailable));
    let state = support::temp_dir("large-events");
    let mut first = Daemon::spawn_for_github(state.clone(), &github.uri(), TOKEN, &[], &[]).await;

    let huge = "e".repeat(HUGE);
    let (code, body) = post_as_fluxd(&first.url("/v6/events"), v1_sync(&sha(0), Some(&huge)), None).await;
    assert_eq!(code, 202, "{body}");
    let resp = support::http()
        .post(first.url("/"))
        .header("Content-Type", "application/json")
        .body(v2_failed(&sha(1), &"m".repeat(HUGE)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    for i in 2..22 {
        let (code, _) = post_as_fluxd(&first.url("/v6/events"), v1_sync(&sha(i), None), None).await;
        assert_eq!(code, 202);
    }
    first.signal("KILL");
    first.wait_exit().await;

    github.outage(None);
    let second = daemon(state.clone(), &github).await;
    wait_for(
        || {
            let n = descriptions(&github).len();
            format!("a status for every acknowledged event: {n} of 22 delivered")
        },
        Duration::from_secs(60),
        || descriptions(&github).len() == 22,
    )
    .await;
    assert!(
        descriptions(&github)[&sha(0)].starts_with("Sync failed for 1 resource"),
        "{:?}",
        &descriptions(&github)[&sha(0)]
    );
    assert!(
        second
            .find_log(|l| l["message"] == "resuming status updates from the outbox" && l["pending"] == 22)
            .is_some(),
        "all 22 came back from the log"
    );
    assert!(
        second
            .find_log(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the outbox log ends in") || m.contains("damaged")))
            .is_none(),
        "the log read back whole"
    );

    // Large states keep coming (the store keeps 64 KiB of each): the log still compacts.
    let url = second.url("/v6/events");
    for i in 0..90 {
        let text = format!("{i} {huge}");
        let (code, _) = post_as_fluxd(&url, v1_sync(&sha(0), Some(&text)), None).await;
        assert_eq!(code, 202);
    }
    let compacted = r#"flux_status_outbox_compactions_total{result="ok"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.metric(compacted).await < 1.0 {
        assert!(Instant::now() < deadline, "the log never compacted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        second
            .metric(r#"flux_status_outbox_compactions_total{result="error"}"#)
            .await,
        0.0
    );
    let size = std::fs::metadata(state.join("outbox.log")).unwrap().len();
    assert!(size < 12 << 20, "the log is {size} bytes");
}

/// Where each record of a log starts (after the 16-byte magic: length, CRC32, payload).
fn record_starts(log: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 16;
    while at + 8 <= log.len() {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        starts.push(at);
        at += 8 + len;
    }
    starts
}

#[tokio::test]
async fn a_damaged_record_loses_only_itself() {
    let github = GitHub::start().await;
    github.outage(Some(Fault::Unavailable));
    let state = support::temp_dir("damaged-log");
    let mut first = Daemon::spawn_for_github(state.clone(), &github.uri(), TOKEN, &[], &[]).await;
    let n = 50;
    for i in 0..n {
        let (code, _) = post_as_fluxd(&first.url("/v6/events"), v1_sync(&sha(i), None), None).await;
        assert_eq!(code, 202);
    }
    first.signal("KILL");
    first.wait_exit().await;

    let path = state.join("outbox.log");
    let mut log = std::fs::read(&path).unwrap();
    let starts = record_starts(&log);
    assert!(starts.len() >= n, "{} records", starts.len());
    // One byte of the fourth record's contents.
    log[starts[3] + 8 + 10] ^= 0x01;
    std::fs::write(&path, &log).unwrap();

    github.outage(None);
    let second = daemon(state.clone(), &github).await;
    wait_for(
        || {
            let got = descriptions(&github).len();
            format!("the events the damage did not touch: {got} of {n} delivered")
        },
        Duration::from_secs(60),
        || descriptions(&github).len() >= n - 1,
    )
    .await;
    let line = second
        .find_log(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the outbox log is damaged"))
        })
        .expect("the loss is logged");
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["records_lost"], 1, "{line}");
    assert_eq!(
        second.metric("flux_status_outbox_damaged_records_total").await,
        1.0
    );
    let copies: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("outbox.log.damaged-"))
        .collect();
    assert_eq!(copies.len(), 1, "the damaged file is kept beside the log");
    assert_eq!(std::fs::read(copies[0].path()).unwrap(), log);
}

#[tokio::test]
async fn a_status_that_cannot_be_stored_even_cut_is_refused_not_acknowledged() {
    let github = GitHub::start().await;
    let d = daemon(support::temp_dir("too-large"), &github).await;
    // The object's name becomes the check's: 2 KiB of it cannot be cut without
    // merging distinct checks.
    let mut event: Value = serde_json::from_slice(&v2_failed(&sha(7), "boom")).unwrap();
    event["involvedObject"]["name"] = Value::String("a".repeat(2048));
    let resp = support::http()
        .post(d.url("/"))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&event).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "update_too_large", "{body}");
    assert_eq!(
        d.metric(r#"flux_status_events_received_total{source="fluxv2",type="kustomization",result="update_too_large"}"#)
            .await,
        1.0
    );
    assert_eq!(
        d.metric("flux_status_outbox_pending").await,
        0.0,
        "nothing queued"
    );
    // The line may be written after the answer: wait for it rather than look once.
    d.wait_log(|l| l["message"] == "status update refused: too large to store")
        .await;
}
