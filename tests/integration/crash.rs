//! Ten crashes in a row: a burst of events, `kill -9` at a random moment (often while
//! the provider is failing: 503s, hangs, writes applied and then hung, reset, answered
//! 5xx or applied late), a restart. Then every acknowledged event has its status: the
//! newest accepted state is on top of each check, and no state was written twice.
//!
//! Seeded: a failure prints its seed, and `CRASH_SEED=<seed>` replays the same choices
//! (timing on a loaded machine may still differ).

use crate::github_fake;
use crate::support;

use github_fake::{Fault, GitHub};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Daemon;

const TOKEN: &str = "ghp_crash";
const COMMITS: usize = 6;
const OBJECTS: usize = 3;
const STATES: [&str; 3] = ["pending", "succeeded", "failed"];

fn sha(c: usize) -> String {
    format!("{:040x}", 0xc0ffee00 + c)
}

fn context(k: usize) -> String {
    format!("flux-status/dev/kustomization/flux-system/app-{k}")
}

/// Our state in GitHub's words, as the fake stores it.
fn github_state(state: &str) -> &'static str {
    match state {
        "pending" => "pending",
        "succeeded" => "success",
        _ => "failure",
    }
}

fn v2_event(c: usize, k: usize, state: &str) -> Vec<u8> {
    let (severity, reason) = match state {
        "pending" => ("info", "Progressing"),
        "succeeded" => ("info", "ReconciliationSucceeded"),
        _ => ("error", "ReconciliationFailed"),
    };
    serde_json::to_vec(&json!({
        "involvedObject": {"kind": "Kustomization", "namespace": "flux-system", "name": format!("app-{k}"),
                           "apiVersion": "kustomize.toolkit.fluxcd.io/v1"},
        "severity": severity,
        "timestamp": "2026-05-04T10:15:30Z",
        "message": reason,
        "reason": reason,
        "metadata": {"revision": format!("main@sha1:{}", sha(c))},
        "reportingController": "kustomize-controller",
    }))
    .unwrap()
}

const FAST: [&str; 8] = [
    "--http-timeout",
    "1s",
    "--retry-initial",
    "100ms",
    "--retry-max",
    "1s",
    "--writes-per-minute",
    "0",
];
const ENV: [(&str, &str); 1] = [("FLUX_STATUS_SETTLE_AFTER", "2s")];

async fn daemon(state_dir: std::path::PathBuf, gh: &GitHub) -> Daemon {
    Daemon::start_for_github(state_dir, &gh.uri(), TOKEN, &FAST, &ENV).await
}

/// A child process, to be killed with SIGKILL.
async fn killable(state_dir: std::path::PathBuf, gh: &GitHub) -> Daemon {
    Daemon::spawn_for_github(state_dir, &gh.uri(), TOKEN, &FAST, &ENV).await
}

/// One event posted: its check, its state, and whether it was acknowledged (`None`:
/// the daemon died while it was being posted, so it may or may not have been kept).
type Posted = ((usize, usize), &'static str, Option<bool>);

#[tokio::test]
async fn ten_kill_nine_cycles_leave_every_acknowledged_state_written_once() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test seed: {seed} (CRASH_SEED={seed} repeats its choices)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let gh = GitHub::start().await;
    let state = support::temp_dir("crash");
    let posted: Arc<Mutex<Vec<Posted>>> = Arc::default();
    let faults = [
        Fault::Unavailable,
        Fault::Hang,
        Fault::ApplyThenHang,
        Fault::ApplyThenReset,
        Fault::ApplyThen5xx(502),
        Fault::ApplyLate(Duration::from_millis(700)),
    ];
    for cycle in 0..10 {
        let mut d = killable(state.clone(), &gh).await;
        let outage = rng.bool().then(|| faults[rng.usize(..faults.len())]);
        gh.outage(outage);
        let events: Vec<((usize, usize), &'static str)> = (0..rng.usize(10..40))
            .map(|_| {
                (
                    (rng.usize(..COMMITS), rng.usize(..OBJECTS)),
                    STATES[rng.usize(..STATES.len())],
                )
            })
            .collect();
        let kill_after = Duration::from_millis(rng.u64(0..1500));
        eprintln!(
            "cycle {cycle}: {} events, outage {outage:?}, kill after {kill_after:?}",
            events.len()
        );
        let killed = Arc::new(AtomicBool::new(false));
        let poster = {
            let (posted, killed, url) = (posted.clone(), killed.clone(), d.url("/"));
            tokio::spawn(async move {
                for (key, state) in events {
                    if killed.load(Ordering::SeqCst) {
                        break;
                    }
                    let i = {
                        let mut p = posted.lock().unwrap();
                        p.push((key, state, None));
                        p.len() - 1
                    };
                    let code = support::http()
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .body(v2_event(key.0, key.1, state))
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    let acked = match code {
                        Ok(202) => Some(true),
                        Ok(_) => Some(false),
                        Err(_) => None,
                    };
                    posted.lock().unwrap()[i].2 = acked;
                }
            })
        };
        tokio::time::sleep(kill_after).await;
        killed.store(true, Ordering::SeqCst);
        d.signal("KILL");
        d.wait_exit().await;
        poster.await.unwrap();
        gh.outage(None);
    }

    // What may end on top of each check: its last acknowledged state, or a state
    // posted after it while the daemon died ("": none, when nothing was acknowledged).
    let mut allowed: HashMap<(usize, usize), HashSet<&'static str>> = HashMap::new();
    for (key, state, acked) in posted.lock().unwrap().iter() {
        match acked {
            Some(true) => {
                allowed.insert(*key, HashSet::from([github_state(state)]));
            }
            None => {
                allowed
                    .entry(*key)
                    .or_insert_with(|| HashSet::from([""]))
                    .insert(github_state(state));
            }
            Some(false) => panic!("an event was refused: {key:?} {state}"),
        }
    }
    let acknowledged = posted
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.2 == Some(true))
        .count();
    assert!(acknowledged > 0, "no event was acknowledged: nothing was tested");

    let d = daemon(state.clone(), &gh).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let top = gh.on_top();
        let wrong: Vec<_> = allowed
            .iter()
            .filter(|((c, k), states)| {
                let on_top = top.get(&(sha(*c), context(*k)));
                !states.contains(on_top.map_or("", |s| s.as_str()))
            })
            .collect();
        let pending = d.metric("flux_status_outbox_pending").await;
        if wrong.is_empty() && pending == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: not settled: {pending} pending, wrong on top: {wrong:?}; on top {top:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut history: HashMap<(String, String), Vec<String>> = HashMap::new();
    for s in gh.applied() {
        history.entry((s.sha, s.context)).or_default().push(s.state);
    }
    let doubled: Vec<_> = history
        .iter()
        .filter(|(_, states)| states.windows(2).any(|w| w[0] == w[1]))
        .collect();
    eprintln!(
        "{acknowledged} events acknowledged, {} statuses on {} checks",
        gh.applied().len(),
        history.len()
    );
    assert!(
        doubled.is_empty(),
        "seed {seed}: a state written twice in a row: {doubled:?}"
    );
}
