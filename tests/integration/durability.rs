//! Delivery that loses nothing: kill -9 mid-write, an hour-long (here a minute-long)
//! outage, a burst far over GitHub's content-creation limit, metrics and readiness.
//! The GitHub fake keeps the statuses it is sent and lists them back, as GitHub does.

use crate::github_fake::{Fault, GitHub};
use crate::support;

use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::{Daemon, post_as_fluxd};

const TOKEN: &str = "ghp_durability";

/// The newest state per sha (every check here is the sync check).
fn current(github: &GitHub) -> HashMap<String, String> {
    github.applied().into_iter().map(|s| (s.sha, s.state)).collect()
}

/// A GitHub that takes only [`TOKEN`].
async fn github() -> GitHub {
    let github = GitHub::start().await;
    github.require_token(TOKEN);
    github
}

fn sha(i: usize) -> String {
    format!("{i:040x}")
}

fn sync_event(sha: &str, failed: bool) -> Vec<u8> {
    let errors = if failed {
        r#","errors":[{"ID":"default:deployment/podinfo","Path":"podinfo.yaml","Error":"boom"}]"#
    } else {
        ""
    };
    format!(r#"{{"id":0,"serviceIDs":[],"type":"sync","metadata":{{"commits":[{{"revision":"{sha}","message":"m"}}]{errors}}}}}"#)
        .into_bytes()
}

async fn daemon(state_dir: std::path::PathBuf, github: &GitHub, extra: &[&str]) -> Daemon {
    Daemon::start_for_github(state_dir, &github.uri(), TOKEN, extra, &[]).await
}

#[tokio::test]
async fn kill_minus_nine_mid_write_loses_nothing_and_writes_nothing_twice() {
    let github = github().await;
    github.delay_writes(Duration::from_millis(400));
    let state = support::temp_dir("kill9");
    let mut first =
        Daemon::spawn_for_github(state.clone(), &github.uri(), TOKEN, &["--concurrency", "4"], &[]).await;
    let n = 30;
    for i in 0..n {
        let (code, _) = post_as_fluxd(&first.url("/v6/events"), sync_event(&sha(i), false), None).await;
        assert_eq!(code, 202);
    }
    // Writes are under way (4 at a time, 400 ms each): kill without warning.
    github
        .wait_until("some writes", Duration::from_secs(15), |g| g.applied().len() >= 6)
        .await;
    first.signal("KILL");
    first.wait_exit().await;
    let before_restart = github.applied().len();
    assert!(before_restart < n, "the kill came too late to test anything");

    github.delay_writes(Duration::ZERO);
    // Writes cut off by the kill are read back once they can no longer land.
    let second = daemon(state.clone(), &github, &["--settle-after", "1s"]).await;
    github
        .wait_until("every accepted status", Duration::from_secs(30), |g| {
            current(g).len() == n
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut per_sha: HashMap<String, usize> = HashMap::new();
    for w in github.applied() {
        *per_sha.entry(w.sha).or_default() += 1;
    }
    let twice: Vec<_> = per_sha.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written twice after the restart: {twice:?}");
    assert!(
        second
            .find_log(|l| l["message"] == "resuming status updates from the outbox")
            .is_some(),
        "the restart picked up the outbox"
    );
    // What was written is remembered across the restart too: no write for a repeat.
    let (code, _) = post_as_fluxd(&second.url("/v6/events"), sync_event(&sha(0), false), None).await;
    assert_eq!(code, 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        github.applied().len(),
        n,
        "a repeated state was written again after the restart"
    );
}

#[tokio::test]
async fn a_minute_long_outage_delays_but_loses_nothing() {
    let github = github().await;
    github.outage(Some(Fault::Unavailable));
    let back = github.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        back.outage(None);
    });
    let d = daemon(
        support::temp_dir("outage"),
        &github,
        &[
            "--retry-initial",
            "200ms",
            "--retry-max",
            "5s",
            "--settle-after",
            "1s",
        ],
    )
    .await;
    for i in 0..5 {
        let (code, _) = post_as_fluxd(&d.url("/v6/events"), sync_event(&sha(i), i % 2 == 1), None).await;
        assert_eq!(code, 202);
    }
    github
        .wait_until("delivery after the outage", Duration::from_secs(100), |g| {
            current(g).len() == 5
        })
        .await;
    let want: HashMap<String, String> = (0..5)
        .map(|i| (sha(i), if i % 2 == 1 { "failure" } else { "success" }.to_string()))
        .collect();
    assert_eq!(current(&github), want);
    assert_eq!(
        github.applied().len(),
        5,
        "one write per check once the provider is back"
    );
    assert!(
        d.metric(r#"flux_status_provider_retries_total{provider="github",reason="server_error"}"#)
            .await
            >= 5.0
    );
}

#[tokio::test]
async fn a_burst_far_over_the_limit_costs_one_write_per_check() {
    let github = github().await;
    // GitHub's content-creation default: 80 writes a minute.
    let d = daemon(support::temp_dir("burst"), &github, &["--queue-capacity", "1000"]).await;
    let url = d.url("/v6/events");
    let checks = 100;
    let rounds = 100;
    let mut tasks = tokio::task::JoinSet::new();
    let burst_start = Instant::now();
    for c in 0..checks {
        let url = url.clone();
        tasks.spawn(async move {
            for r in 0..rounds {
                let (code, _) = post_as_fluxd(&url, sync_event(&sha(c), r % 2 == 1), None).await;
                assert_eq!(code, 202);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let burst_end = Instant::now();
    let burst = burst_end.duration_since(burst_start);
    // Round 99 is odd: every check ends failed.
    github
        .wait_until("every check's final state", Duration::from_secs(150), |g| {
            let cur = current(g);
            cur.len() == checks && cur.values().all(|s| s == "failure")
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = github.applied();
    let mut after: HashMap<String, usize> = HashMap::new();
    for w in writes.iter().filter(|w| w.at > burst_end) {
        *after.entry(w.sha.clone()).or_default() += 1;
    }
    let over: Vec<_> = after.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        over.is_empty(),
        "more than one write per check after the burst: {over:?}"
    );
    // The bucket starts full (80) and refills at 80/min while the burst lasts;
    // after it, one write per check at most.
    let allowed = 80 + (80.0 * burst.as_secs_f64() / 60.0).ceil() as usize + checks + 2;
    assert!(
        writes.len() <= allowed,
        "{} writes for {} updates over a {burst:?} burst (allowed {allowed}): throttled updates did not coalesce",
        writes.len(),
        checks * rounds
    );
}

#[tokio::test]
async fn metrics_and_readiness_tell_the_truth() {
    let github = github().await;
    github.require_token("something-else");
    let d = daemon(support::temp_dir("ready"), &github, &[]).await;
    let http = support::http();
    let readyz = |ops| {
        let http = http.clone();
        async move {
            let r = http.get(format!("http://{ops}/readyz")).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    d.wait_log(|l| l["message"] == "credential check failed; not ready until it passes")
        .await;
    let (code, body) = readyz(d.ops).await;
    assert_eq!(code, 503);
    assert_eq!(body["checks"]["credentials"], false);
    assert_eq!(body["checks"]["outbox_writable"], true);
    drop(d);

    github.require_token(TOKEN);
    let d = daemon(support::temp_dir("ready2"), &github, &[]).await;
    d.wait_log(|l| l["message"] == "provider accepted the credential")
        .await;
    assert_eq!(readyz(d.ops).await.0, 200);
    for i in 0..3 {
        post_as_fluxd(&d.url("/v6/events"), sync_event(&sha(i), false), None).await;
    }
    post_as_fluxd(&d.url("/v6/events"), b"{oops".to_vec(), None).await;
    github
        .wait_until("three writes", Duration::from_secs(10), |g| {
            g.applied().len() == 3
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = |s: &'static str| d.metric(s);
    assert_eq!(
        m(r#"flux_status_events_received_total{source="fluxv1",type="sync",result="accepted"}"#).await,
        3.0
    );
    assert_eq!(
        m(r#"flux_status_events_received_total{source="fluxv1",type="unknown",result="malformed_json"}"#)
            .await,
        1.0
    );
    assert_eq!(
        m(r#"flux_status_statuses_total{provider="github",state="succeeded",result="written"}"#).await,
        3.0
    );
    assert_eq!(
        m(r#"flux_status_rate_limit_remaining{provider="github"}"#).await,
        4321.0
    );
    assert_eq!(m("flux_status_outbox_pending").await, 0.0);
    assert!(m(r#"flux_status_outbox_commits_total{result="ok"}"#).await >= 1.0);
    let text = d.metrics_text().await;
    assert!(text.contains(r#"flux_status_build_info{version=""#), "{text}");
    assert!(!text.contains(&sha(0)), "a SHA became a metric label");
}
