//! fluxd v1 sidecar, end to end: a fake fluxd (websocket + event POSTs exactly as
//! fluxd sends them) against the real daemon, writing into a GitHub fake whose every
//! request is checked against GitHub's official OpenAPI description.

use crate::support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{
    Daemon, Fake, check_against_spec, compact, connect_fluxd, github_created as created, openapi::Spec,
    post_as_fluxd,
};
use tokio_tungstenite::tungstenite::Message;
use wiremock::ResponseTemplate;

const TOKEN: &str = "ghp_test_token_do_not_log";
const PVC_TEST: &str = "default:persistentvolumeclaim/test";

fn github_args(fake: &Fake, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--git-url",
        "git@github.com:acme/app.git",
        "--instance",
        "dev",
        "--retry-initial",
        "50ms",
    ];
    args.extend_from_slice(extra);
    let api = fake.uri();
    args.extend_from_slice(&["--api-url", &api]);
    args.into_iter().map(String::from).collect()
}

async fn github_daemon(fake: &Fake, extra: &[&str]) -> Daemon {
    let args = github_args(fake, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&args, &[("GITHUB_TOKEN", TOKEN)]).await
}

/// A child process, for the tests that send it SIGTERM.
async fn github_child(fake: &Fake, extra: &[&str]) -> Daemon {
    let args = github_args(fake, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::spawn(&args, &[("GITHUB_TOKEN", TOKEN)]).await
}

fn expected_status(state: &str, description: &str) -> Value {
    json!({ "state": state, "context": "flux-status/dev/sync", "description": description })
}

#[tokio::test]
async fn fluxd_events_become_exactly_the_expected_github_statuses() {
    let spec = Spec::load("github");
    let github = Fake::start(created(), vec![]).await;
    let daemon = github_daemon(&github, &[]).await;

    // fluxd opens its websocket first and keeps it alive with pings.
    let mut ws = connect_fluxd(&daemon, "/v11/daemon", None)
        .await
        .expect("websocket");
    ws.send(Message::Ping(b"".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(support::WAIT, ws.next())
        .await
        .expect("pong in time");
    assert!(matches!(pong, Some(Ok(Message::Pong(_)))), "got {pong:?}");
    // An RPC-shaped binary frame is read and ignored without closing the connection.
    ws.send(Message::Binary(
        br#"{"id":0,"result":{},"error":null}"#.to_vec().into(),
    ))
    .await
    .unwrap();
    assert_eq!(daemon.metric("flux_status_fluxd_connected").await, 1.0);

    let pvc_error = "running kubectl: The PersistentVolumeClaim \"test\" is invalid: spec: Forbidden: field is immutable after creation";
    let cut = |s: String| -> String {
        if s.chars().count() <= 140 {
            s
        } else {
            s.chars().take(139).collect::<String>().trim_end().to_string() + "…"
        }
    };
    // (fixture, the GitHub write it must cause, if any) in the order fluxd sends them.
    let table: Vec<(&str, Option<(&str, Value)>)> = vec![
        (
            "v1/event-sync.compact.json",
            Some((
                "9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1",
                expected_status("success", "Sync succeeded"),
            )),
        ),
        // Same commit, same state: already written, so no second write.
        ("v1/event-sync.json", None),
        ("v1/event-sync-initial.json", None),
        (
            "v1/event-sync-errors.json",
            Some((
                "4997efcd4ac6255604d0d44eeb7085c5b0eb9d48",
                expected_status(
                    "failure",
                    &cut(format!("Sync failed for 1 resource: {PVC_TEST} — {pvc_error}")),
                ),
            )),
        ),
        (
            "v1/fluxcloud-sync-errors.json",
            Some((
                "4997efcd4ac6255604d0d44eeb7085c5b0eb9d48",
                expected_status(
                    "failure",
                    &cut(format!(
                        "Sync failed for 2 resources: {PVC_TEST}, default:persistentvolumeclaim/lol — {pvc_error}"
                    )),
                ),
            )),
        ),
        (
            "v1/fluxcloud-sync.json",
            Some((
                "810c2e6f22ac5ab7c831fe0dd697fe32997b098f",
                expected_status("success", "Sync succeeded"),
            )),
        ),
        (
            "v1/fluxcloud-sync-update-policy.json",
            Some((
                "d644e1a05db6881abf0cdb78299917b95f442036",
                expected_status("success", "Sync succeeded"),
            )),
        ),
        ("v1/event-commit-policy.json", None),
        ("v1/fluxcloud-commit-policy.json", None),
        ("v1/event-release.json", None),
        ("v1/event-autorelease.json", None),
        ("v1/fluxcloud-autorelease-pre-1.12.json", None),
        ("v1/flux-status-test-sync.json", None),
    ];
    let mut want = Vec::new();
    for (name, write) in &table {
        let (status, body) = post_as_fluxd(&daemon.url("/v6/events"), compact(name), None).await;
        assert_eq!(
            (status, body.as_str()),
            (202, ""),
            "{name}: fluxd needs 2xx with an empty (or JSON) body"
        );
        if let Some(w) = write {
            want.push(w.clone());
            github.wait_for(want.len()).await;
        }
    }
    let got = github
        .expect_exactly(want.len(), Duration::from_millis(500))
        .await;

    for (req, (sha, body)) in got.iter().zip(&want) {
        assert_eq!(check_against_spec(&spec, req), "repos/create-commit-status");
        assert_eq!(req.url.path(), format!("/repos/acme/app/statuses/{sha}"));
        let h = |n: &str| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(h("authorization"), format!("Bearer {TOKEN}"));
        assert_eq!(h("accept"), "application/vnd.github+json");
        assert_eq!(h("x-github-api-version"), "2022-11-28");
        assert!(h("user-agent").starts_with("flux-status/"), "{}", h("user-agent"));
        let sent: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(&sent, body);
        assert!(sent["description"].as_str().unwrap().chars().count() <= 140);
    }

    // The websocket survived all of it, and the token never reached a log line.
    ws.send(Message::Ping(b"still-there".to_vec().into()))
        .await
        .unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Pong(_)))));
    let logs = serde_json::to_string(&daemon.logs()).unwrap();
    assert!(!logs.contains(TOKEN), "token leaked into logs");
    assert_eq!(
        daemon
            .metric(r#"flux_status_events_received_total{source="fluxv1",type="sync",result="accepted"}"#)
            .await,
        8.0
    );
    assert_eq!(
        daemon
            .metric(r#"flux_status_statuses_total{provider="github",state="succeeded",result="written"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn path_prefix_and_upstream_token_are_honoured() {
    let github = Fake::start(created(), vec![]).await;
    let dir = tempdir();
    let token_file = dir.join("upstream-token");
    std::fs::write(&token_file, "fluxd-secret\n").unwrap();
    let daemon = github_daemon(&github, &["--token-file", token_file.to_str().unwrap()]).await;

    let refused = connect_fluxd(&daemon, "/flux/v11/daemon", None)
        .await
        .unwrap_err();
    assert!(refused.contains("401"), "{refused}");
    let wrong = connect_fluxd(&daemon, "/flux/v11/daemon", Some("nope"))
        .await
        .unwrap_err();
    assert!(wrong.contains("401"), "{wrong}");
    let mut ws = connect_fluxd(&daemon, "/flux/v10/daemon", Some("fluxd-secret"))
        .await
        .expect("authorised websocket");
    ws.send(Message::Ping(b"".to_vec().into())).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Pong(_)))));

    let body = compact("v1/event-sync.json");
    let (status, _) = post_as_fluxd(&daemon.url("/flux/v6/events"), body.clone(), None).await;
    assert_eq!(status, 401);
    let (status, _) = post_as_fluxd(&daemon.url("/flux/v6/events"), body, Some("fluxd-secret")).await;
    assert_eq!(status, 202);
    let reqs = github.expect_exactly(1, Duration::from_millis(300)).await;
    assert_eq!(
        reqs[0].url.path(),
        "/repos/acme/app/statuses/9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1"
    );

    // A plain GET on the daemon path is a bad request, never 410 (fluxd exits on 410).
    let plain = support::http()
        .get(daemon.url("/v11/daemon"))
        .send()
        .await
        .unwrap();
    assert_ne!(plain.status().as_u16(), 410);
    assert!(plain.status().is_client_error());
}

#[tokio::test]
async fn bad_requests_get_clear_answers() {
    let github = Fake::start(created(), vec![]).await;
    let daemon = github_daemon(&github, &["--max-event-bytes", "4096"]).await;
    let events = daemon.url("/v6/events");

    let (status, body) = post_as_fluxd(&events, b"{\"type\":".to_vec(), None).await;
    assert_eq!(status, 400);
    let err: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(err["reason"], "malformed_json");

    let (status, body) = post_as_fluxd(&events, vec![b' '; 5000], None).await;
    assert_eq!(status, 413);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["reason"],
        "too_large"
    );

    let (status, _) = post_as_fluxd(
        &events,
        br#"{"id":1,"type":"brand-new-type","metadata":{"x":1}}"#.to_vec(),
        None,
    )
    .await;
    assert_eq!(status, 202, "unknown types are acknowledged");
    let (status, _) = post_as_fluxd(&events, br#"{"type":"sync"}"#.to_vec(), None).await;
    assert_eq!(status, 202, "events without metadata are acknowledged");

    let get = support::http().get(&events).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);
    github.expect_exactly(0, Duration::from_millis(200)).await;
    assert_eq!(
        daemon
            .metric(r#"flux_status_events_received_total{source="fluxv1",type="unknown",result="too_large"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_the_status_lands() {
    let github = Fake::start(
        created(),
        vec![ResponseTemplate::new(500), ResponseTemplate::new(502)],
    )
    .await;
    // A 5xx may come after the write was applied: each retry reads back first,
    // after a grace period kept short here.
    let daemon = github_daemon(&github, &["--settle-after", "100ms"]).await;
    let (status, _) = post_as_fluxd(&daemon.url("/v6/events"), compact("v1/event-sync.json"), None).await;
    assert_eq!(status, 202);
    let reqs = github.expect_exactly(3, Duration::from_millis(500)).await;
    assert!(
        reqs.windows(2).all(|w| w[0].body == w[1].body),
        "each retry sends the same status"
    );
    assert_eq!(
        daemon
            .metric(r#"flux_status_statuses_total{provider="github",state="succeeded",result="written"}"#)
            .await,
        1.0
    );
    assert_eq!(
        daemon
            .metric(r#"flux_status_provider_retries_total{provider="github",reason="server_error"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn validation_errors_are_not_retried() {
    let body = json!({"message":"Validation Failed","errors":[{"resource":"Status","code":"custom","field":"description","message":"description is too long (maximum is 140 characters)"}],"documentation_url":"https://docs.github.com/rest"});
    let github = Fake::start(ResponseTemplate::new(422).set_body_json(body), vec![]).await;
    let daemon = github_daemon(&github, &[]).await;
    let (status, _) = post_as_fluxd(&daemon.url("/v6/events"), compact("v1/event-sync.json"), None).await;
    assert_eq!(status, 202);
    // 50 ms initial backoff: a retry would have come well within this window.
    github.expect_exactly(1, Duration::from_millis(1500)).await;
    let line = daemon
        .wait_log(|l| l["message"] == "provider rejected commit status; not retrying")
        .await;
    assert_eq!(line["http_status"], 422);
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("description is too long"),
        "{line}"
    );
    assert_eq!(
        daemon
            .metric(r#"flux_status_statuses_total{provider="github",state="succeeded",result="dropped"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn exhausted_rate_limit_waits_for_the_reset() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let reset = now + 2;
    let limited = ResponseTemplate::new(403)
        .insert_header("x-ratelimit-limit", "5000")
        .insert_header("x-ratelimit-remaining", "0")
        .insert_header("x-ratelimit-reset", reset.to_string().as_str())
        .set_body_json(json!({"message":"API rate limit exceeded for user ID 1.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}));
    let github = Fake::start(created(), vec![limited]).await;
    let daemon = github_daemon(&github, &[]).await;
    let (status, _) = post_as_fluxd(&daemon.url("/v6/events"), compact("v1/event-sync.json"), None).await;
    assert_eq!(status, 202);
    github.expect_exactly(2, Duration::from_millis(300)).await;
    let arrivals = github.arrivals();
    let second = arrivals[1].duration_since(UNIX_EPOCH).unwrap();
    assert!(
        second >= Duration::from_secs(reset),
        "retried at {second:?}, before the reset at {reset}s"
    );
    assert_eq!(
        daemon
            .metric(r#"flux_status_provider_retries_total{provider="github",reason="rate_limited"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_slow_provider_never_delays_fluxd() {
    let github = Fake::start(created().set_delay(Duration::from_secs(2)), vec![]).await;
    let daemon = github_daemon(&github, &[]).await;
    let (status, _) = post_as_fluxd(&daemon.url("/v6/events"), compact("v1/event-sync.json"), None).await;
    assert_eq!(status, 202);
    // The POST is answered while the provider is still holding the write.
    github.wait_for(1).await;
    let written = r#"flux_status_statuses_total{provider="github",state="succeeded",result="written"}"#;
    assert_eq!(
        daemon.metric(written).await,
        0.0,
        "answered before the provider finished"
    );
    assert_eq!(daemon.metric("flux_status_requests_in_flight").await, 1.0);
    daemon.wait_log(|l| l["message"] == "commit status written").await;
    assert_eq!(daemon.metric(written).await, 1.0);
}

#[tokio::test]
async fn sigterm_drains_pending_statuses_before_exit() {
    let github = Fake::start(created().set_delay(Duration::from_millis(500)), vec![]).await;
    let mut daemon = github_child(&github, &["--shutdown-timeout", "10s"]).await;
    for name in [
        "v1/event-sync.json",
        "v1/fluxcloud-sync.json",
        "v1/event-sync-errors.json",
    ] {
        let (status, _) = post_as_fluxd(&daemon.url("/v6/events"), compact(name), None).await;
        assert_eq!(status, 202);
    }
    daemon.signal("TERM");
    let status = daemon.wait_exit().await;
    assert!(status.success(), "{status}");
    assert_eq!(
        github.requests().await.len(),
        3,
        "every accepted status was delivered before exit"
    );
    assert!(
        daemon
            .find_log(|l| l["message"] == "all accepted status updates delivered")
            .is_some()
    );
}

#[tokio::test]
async fn sigterm_reports_what_could_not_be_delivered() {
    let github = Fake::start(ResponseTemplate::new(503), vec![]).await;
    let mut daemon = github_child(&github, &["--shutdown-timeout", "300ms"]).await;
    let (status, _) = post_as_fluxd(&daemon.url("/v6/events"), compact("v1/event-sync.json"), None).await;
    assert_eq!(status, 202);
    github.wait_for(1).await;
    daemon.signal("TERM");
    daemon.wait_exit().await;
    let line = daemon
        .wait_log(|l| l["message"] == "shutdown: commit status not delivered")
        .await;
    assert_eq!(line["sha"], "9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1");
    assert_eq!(line["check"], "flux-status/dev/sync");
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flux-status-test-{}-{}",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fastrand_u64() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}
