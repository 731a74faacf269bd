//! Writes whose outcome is unknown: the provider applied them and then hung, reset
//! the connection or answered 5xx, or applied them after we gave up. Once delivery
//! settles, the newest accepted state is on top of every check, and no state was
//! written twice; after an outage and a restart, one listing per commit.

use crate::github_fake;
use crate::support;

use github_fake::{Fault, GitHub};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::Daemon;

const TOKEN: &str = "ghp_readback";

fn sha(i: usize) -> String {
    format!("{:040x}", i + 0xabc000)
}

fn context(object: &str) -> String {
    format!("flux-status/dev/kustomization/flux-system/{object}")
}

/// A Flux v2 event for one Kustomization at `sha`, in our state words.
fn v2_event(sha: &str, object: &str, state: &str) -> Vec<u8> {
    let (severity, reason) = match state {
        "pending" => ("info", "Progressing"),
        "succeeded" => ("info", "ReconciliationSucceeded"),
        _ => ("error", "ReconciliationFailed"),
    };
    serde_json::to_vec(&json!({
        "involvedObject": {"kind": "Kustomization", "namespace": "flux-system", "name": object,
                           "apiVersion": "kustomize.toolkit.fluxcd.io/v1"},
        "severity": severity,
        "timestamp": "2026-05-04T10:15:30Z",
        "message": format!("{reason} at {sha}"),
        "reason": reason,
        "metadata": {"revision": format!("main@sha1:{sha}")},
        "reportingController": "kustomize-controller",
    }))
    .unwrap()
}

async fn post(d: &Daemon, body: Vec<u8>) -> u16 {
    support::http()
        .post(d.url("/"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The settling grace goes through the environment, so that a build without the
/// flag still starts and shows its behaviour.
async fn daemon(state_dir: std::path::PathBuf, gh: &GitHub, settle: &str) -> Daemon {
    daemon_with(state_dir, gh, &[("FLUX_STATUS_SETTLE_AFTER", settle)]).await
}

const FAST: [&str; 8] = [
    "--http-timeout",
    "1s",
    "--retry-initial",
    "200ms",
    "--retry-max",
    "1s",
    "--writes-per-minute",
    "0",
];

async fn daemon_with(state_dir: std::path::PathBuf, gh: &GitHub, env: &[(&str, &str)]) -> Daemon {
    Daemon::start_for_github(state_dir, &gh.uri(), TOKEN, &FAST, env).await
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until nothing is pending, and at least until `not_before`.
async fn settled(d: &Daemon, not_before: Instant) {
    wait_for("delivery to settle", Duration::from_secs(60), async || {
        Instant::now() >= not_before && d.metric("flux_status_outbox_pending").await == 0.0
    })
    .await;
}

/// Each key's states in the order they were applied.
fn history(gh: &GitHub) -> HashMap<(String, String), Vec<String>> {
    let mut h: HashMap<(String, String), Vec<String>> = HashMap::new();
    for s in gh.applied() {
        h.entry((s.sha, s.context)).or_default().push(s.state);
    }
    h
}

#[tokio::test]
async fn an_older_write_applied_late_does_not_end_on_top() {
    let gh = GitHub::start().await;
    // `pending` is applied 2.5 s after it arrives, long after our 1 s timeout.
    let late = Duration::from_millis(2500);
    gh.script([Fault::ApplyLate(late)]);
    let d = daemon(support::temp_dir("late"), &gh, "4s").await;
    let (sha, ctx) = (sha(1), context("apps"));
    assert_eq!(post(&d, v2_event(&sha, "apps", "pending")).await, 202);
    wait_for("the pending write", Duration::from_secs(15), async || {
        gh.writes() == 1
    })
    .await;
    let sent = Instant::now();
    assert_eq!(post(&d, v2_event(&sha, "apps", "succeeded")).await, 202);
    settled(&d, sent + late + Duration::from_millis(500)).await;

    let key = (sha.clone(), ctx.clone());
    assert_eq!(
        history(&gh)[&key],
        ["pending", "success"],
        "the newest state must end on top, each state written once"
    );
    assert!(
        d.find_log(|l| l["message"]
            == "commit status write may have been applied; reading it back before writing again")
            .is_some()
    );
    // notification-controller repeats the success: it is on top, nothing to write.
    let writes = gh.writes();
    assert_eq!(post(&d, v2_event(&sha, "apps", "succeeded")).await, 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gh.writes(), writes, "a repeated success was written again");
    assert_eq!(gh.on_top()[&key], "success");
}

#[tokio::test]
async fn a_write_that_landed_before_a_hang_reset_5xx_or_late_is_not_written_twice() {
    let gh = GitHub::start().await;
    let faults = [
        Fault::ApplyThenHang,
        Fault::ApplyThenReset,
        Fault::ApplyThen5xx(502),
        Fault::ApplyThen5xx(500),
        Fault::ApplyLate(Duration::from_millis(1500)),
    ];
    gh.script(faults);
    let d = daemon(support::temp_dir("ambiguous"), &gh, "3s").await;
    for (i, fault) in faults.iter().enumerate() {
        assert_eq!(post(&d, v2_event(&sha(i), "apps", "succeeded")).await, 202);
        // One at a time, so that each write meets its own fault.
        wait_for(
            &format!("write {i} ({fault:?})"),
            Duration::from_secs(15),
            async || gh.writes() > i,
        )
        .await;
    }
    settled(&d, Instant::now() + Duration::from_secs(2)).await;
    let history = history(&gh);
    for (i, fault) in faults.iter().enumerate() {
        eprintln!("{fault:?}: {:?}", history.get(&(sha(i), context("apps"))));
    }
    for (i, fault) in faults.iter().enumerate() {
        assert_eq!(
            history.get(&(sha(i), context("apps"))).map(Vec::as_slice),
            Some(&["success".to_string()][..]),
            "{fault:?}: written once, and on top"
        );
    }
    assert_eq!(gh.writes(), faults.len(), "no second write");
    assert_eq!(
        d.metric(r#"flux_status_statuses_total{provider="github",state="succeeded",result="reconciled"}"#)
            .await,
        faults.len() as f64,
        "each found on top when read back"
    );
}

#[tokio::test]
async fn a_newer_state_is_written_once_the_doubt_is_over() {
    let gh = GitHub::start().await;
    let d = daemon(support::temp_dir("unapplied"), &gh, "2s").await;
    // A write that succeeds is not read back.
    assert_eq!(post(&d, v2_event(&sha(8), "apps", "pending")).await, 202);
    wait_for("the first write", Duration::from_secs(15), async || {
        gh.writes() == 1
    })
    .await;
    settled(&d, Instant::now()).await;
    assert_eq!(gh.listings(), 0, "a read-back on the happy path");
    // A 503 that did not apply: the read-back finds nothing on top.
    gh.script([Fault::Unavailable]);
    let (sha, ctx) = (sha(7), context("apps"));
    assert_eq!(post(&d, v2_event(&sha, "apps", "pending")).await, 202);
    wait_for("the write", Duration::from_secs(15), async || gh.writes() == 2).await;
    settled(&d, Instant::now()).await;
    assert_eq!(history(&gh)[&(sha, ctx)], ["pending"]);
    assert_eq!(gh.writes(), 3, "written again once read back");
    assert_eq!(gh.listings(), 1, "read back once");
    assert_eq!(
        d.metric(r#"flux_status_provider_read_backs_total{provider="github"}"#)
            .await,
        1.0
    );
    assert_eq!(
        d.metric(r#"flux_status_statuses_total{provider="github",state="pending",result="in_doubt"}"#)
            .await,
        1.0
    );
}

/// After an outage in which every write got a 503 (whose outcome is unknown) and a
/// kill, the restart reads each commit once for all of its checks.
#[tokio::test]
async fn after_an_outage_and_a_restart_one_listing_per_commit() {
    let commits: usize = std::env::var("READBACK_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let checks: usize = std::env::var("READBACK_CHECKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let gh = GitHub::start().await;
    gh.outage(Some(Fault::Unavailable));
    let state = support::temp_dir("outage-restart");
    // Requests counted as they come, without the hourly budget spreading them out.
    let env = [
        ("FLUX_STATUS_SETTLE_AFTER", "2s"),
        ("FLUX_STATUS_REQUESTS_PER_HOUR", "0"),
    ];
    let mut first = Daemon::spawn_for_github(state.clone(), &gh.uri(), TOKEN, &FAST, &env).await;
    let body = |c: usize, k: usize| v2_event(&sha(c), &format!("app-{k}"), "succeeded");
    for c in 0..commits {
        for k in 0..checks {
            assert_eq!(post(&first, body(c, k)).await, 202);
        }
    }
    let keys = commits * checks;
    wait_for(
        "a write attempt for every check",
        Duration::from_secs(120),
        async || gh.attempted() >= keys,
    )
    .await;
    first.signal("KILL");
    first.wait_exit().await;
    gh.outage(None);
    let (writes, listings) = (gh.writes(), gh.listings());

    // A listing that times out is read again, rightly; on a loaded machine FAST's 1 s
    // would count those as extra listings, so the restart waits longer per request.
    let mut patient = FAST;
    patient[1] = "20s";
    let second = Daemon::start_for_github(state, &gh.uri(), TOKEN, &patient, &env).await;
    wait_for("every check on top", Duration::from_secs(180), async || {
        let top = gh.on_top();
        top.len() == keys && top.values().all(|s| s == "success")
    })
    .await;
    settled(&second, Instant::now()).await;
    let (writes, listings) = (gh.writes() - writes, gh.listings() - listings);
    eprintln!(
        "{keys} checks on {commits} commits after an outage and a restart: \
         {listings} listings + {writes} writes = {} requests",
        listings + writes
    );
    let twice: HashSet<_> = history(&gh).into_iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(twice.is_empty(), "written twice: {twice:?}");
    assert_eq!(writes, keys, "one write per check");
    assert!(
        listings <= commits,
        "{listings} listings for {commits} commits: one per commit at most"
    );
}
