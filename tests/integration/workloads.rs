//! Flux v1 workload status, end to end: the daemon polls a fake fluxd, as the
//! JSON-RPC client over the websocket fluxd opened or over fluxd's HTTP API, whose
//! workload lists change over time, and writes `flux-status/dev/workload` into a
//! GitHub fake whose every request is checked against GitHub's OpenAPI description.

use crate::support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Daemon, Fake, WAIT, check_against_spec, connect_fluxd, github_created, openapi::Spec};
use tokio_tungstenite::tungstenite::Message;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

const TOKEN: &str = "ghp_test_token_do_not_log";
const WORKLOAD: &str = "flux-status/dev/workload";
const PODINFO: &str = "default:deployment/podinfo";
const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A workload exactly as fluxd 1.25 marshals `v6.ControllerStatus`.
fn workload(id: &str, status: &str) -> Value {
    json!({
        "ID": id, "Containers": [], "ReadOnly": "", "Status": status,
        "Rollout": {"Desired": 2, "Updated": 1, "Ready": 1, "Available": 1, "Outdated": 1, "Messages": null},
        "SyncError": "", "Antecedent": "", "Labels": null,
        "Automated": false, "Locked": false, "Ignore": false, "Policies": {}
    })
}

fn with(mut w: Value, key: &str, value: Value) -> Value {
    w[key] = value;
    w
}

/// A sync event as fluxd posts it, compact and without Content-Type.
fn sync(head: &str, service_ids: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": 0, "serviceIDs": service_ids, "type": "sync",
        "startedAt": "2020-10-13T14:14:30.123456789Z", "endedAt": "2020-10-13T14:14:31.123456789Z",
        "logLevel": "info",
        "metadata": {"commits": [{"revision": head, "message": "deploy"}], "includes": {}, "errors": null, "initialSync": false}
    }))
    .unwrap()
}

/// What fluxd answers to the next `ListServices` call.
#[derive(Clone, Debug)]
enum Answer {
    /// `{"Result": <list>, "ApplicationError": null}` over RPC; the bare list over HTTP.
    List(Value),
    /// This exact `result`, with no error.
    RawResult(&'static str),
    /// A reply with this `error` string and a null result.
    Error(&'static str),
    /// A frame that is not JSON.
    Garbage,
    /// No reply at all.
    Silence,
    /// Close the websocket instead of answering.
    Hangup,
}

struct Answers {
    queued: VecDeque<Answer>,
    current: Answer,
    requests: Vec<Value>,
}

/// Scripted answers (queued ones first, then the current one) and the requests seen.
#[derive(Clone)]
struct Script(Arc<Mutex<Answers>>);

impl Script {
    fn new(current: Answer) -> Self {
        Script(Arc::new(Mutex::new(Answers {
            queued: VecDeque::new(),
            current,
            requests: Vec::new(),
        })))
    }
    fn set(&self, current: Answer) {
        self.0.lock().unwrap().current = current;
    }
    fn queue(&self, answers: Vec<Answer>) {
        self.0.lock().unwrap().queued.extend(answers);
    }
    fn next(&self, request: Value) -> Answer {
        let mut s = self.0.lock().unwrap();
        s.requests.push(request);
        s.queued.pop_front().unwrap_or_else(|| s.current.clone())
    }
    fn requests(&self) -> Vec<Value> {
        self.0.lock().unwrap().requests.clone()
    }
}

/// fluxd's side of the websocket: it serves `RPCServer.*` calls from the script.
/// Returns when the script says to hang up or the daemon closes.
fn serve_rpc(mut ws: support::FluxdSocket, script: Script) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let (frame, binary) = match &msg {
                Message::Binary(b) => (b.to_vec(), true),
                Message::Text(t) => (t.as_bytes().to_vec(), false),
                Message::Close(_) => return,
                _ => continue,
            };
            let req: Value = serde_json::from_slice(&frame).unwrap();
            let id = req["id"].clone();
            let method = req["method"].as_str().unwrap_or("").to_string();
            let answer = script.next(json!({"request": req, "binary": binary}));
            // A reply nobody waits for (as after a timed-out call) comes first: it
            // must be ignored, not taken for the answer.
            let stray =
                json!({"id": 987_654, "result": {"Result": [], "ApplicationError": null}, "error": null});
            let _ = ws
                .send(Message::Binary(stray.to_string().into_bytes().into()))
                .await;
            let reply = if method != "RPCServer.ListServices" {
                Some(
                    json!({"id": id, "result": null, "error": format!("rpc: can't find method {method}")})
                        .to_string(),
                )
            } else {
                match answer {
                    Answer::List(list) => Some(
                        json!({"id": id, "result": {"Result": list, "ApplicationError": null}, "error": null})
                            .to_string(),
                    ),
                    Answer::RawResult(raw) => Some(format!(r#"{{"id":{id},"result":{raw},"error":null}}"#)),
                    Answer::Error(e) => Some(json!({"id": id, "result": null, "error": e}).to_string()),
                    Answer::Garbage => Some("}{ not json".to_string()),
                    Answer::Silence => None,
                    Answer::Hangup => {
                        let _ = ws.close(None).await;
                        return;
                    }
                }
            };
            if let Some(reply) = reply {
                let _ = ws.send(Message::Binary(reply.into_bytes().into())).await;
            }
        }
    })
}

/// fluxd's HTTP API (`GET /api/flux/v6/services`), answering from a script.
struct HttpApi {
    server: MockServer,
    script: Script,
}

impl Respond for Script {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let seen = json!({
            "method": req.method.as_str(),
            "path": req.url.path(),
            "query": req.url.query().unwrap_or(""),
            "accept": req.headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or(""),
        });
        match self.next(seen) {
            Answer::List(list) => ResponseTemplate::new(200)
                .insert_header("content-type", "application/json; charset=utf-8")
                .set_body_string(list.to_string()),
            Answer::RawResult(raw) => ResponseTemplate::new(200).set_body_string(raw),
            Answer::Error(e) => {
                ResponseTemplate::new(500).set_body_json(json!({"type": "server", "error": e}))
            }
            Answer::Garbage => ResponseTemplate::new(200).set_body_string("<html>"),
            Answer::Silence | Answer::Hangup => ResponseTemplate::new(503),
        }
    }
}

impl HttpApi {
    async fn start(current: Answer) -> HttpApi {
        let server = MockServer::start().await;
        let script = Script::new(current);
        Mock::given(any())
            .respond_with(script.clone())
            .mount(&server)
            .await;
        HttpApi { server, script }
    }

    /// The `--flux` value: `host:port`, as the original flux-status took it.
    fn flag(&self) -> String {
        self.server.address().to_string()
    }
}

async fn daemon(github: &Fake, flux: &str, extra: &[&str]) -> Daemon {
    daemon_in(support::temp_dir("state"), github, flux, extra).await
}

async fn daemon_in(state: std::path::PathBuf, github: &Fake, flux: &str, extra: &[&str]) -> Daemon {
    let api = github.uri();
    let flux = format!("--flux={flux}");
    let api = format!("--api-url={api}");
    let defaults = [
        "--git-url=git@github.com:acme/app.git",
        "--instance=dev",
        "--retry-initial=50ms",
        &api,
        "--poll-workloads",
        "--poll-intervall=200ms",
        "--poll-timeout=30s",
        "--flux-timeout=500ms",
        &flux,
    ];
    // A flag in `extra` replaces its default.
    let name = |a: &str| a.split('=').next().unwrap_or(a).to_string();
    let mut args: Vec<&str> = defaults
        .iter()
        .copied()
        .filter(|d| !extra.iter().any(|e| name(e) == name(d)))
        .collect();
    args.extend_from_slice(extra);
    Daemon::start_in(state, &args, &[("GITHUB_TOKEN", TOKEN)]).await
}

/// The `workload` statuses written so far: (sha, state, description), in order, each
/// request checked against GitHub's spec.
async fn workload_statuses(github: &Fake) -> Vec<(String, String, String)> {
    let spec = Spec::load("github");
    github
        .requests()
        .await
        .iter()
        .filter_map(|r| {
            check_against_spec(&spec, r);
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (body["context"] == WORKLOAD).then(|| {
                (
                    r.url.path().rsplit('/').next().unwrap().to_string(),
                    body["state"].as_str().unwrap().to_string(),
                    body["description"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

fn of(statuses: &[(String, String, String)], sha: &str) -> Vec<(String, String)> {
    statuses
        .iter()
        .filter(|(s, _, _)| s == sha)
        .map(|(_, state, d)| (state.clone(), d.clone()))
        .collect()
}

fn st(state: &str, description: &str) -> (String, String) {
    (state.to_string(), description.to_string())
}

/// Waits until `sha`'s workload statuses end with `last`; returns them all.
async fn wait_workload(github: &Fake, sha: &str, last: (String, String)) -> Vec<(String, String)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = of(&workload_statuses(github).await, sha);
        if seen.last() == Some(&last) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{sha}: expected {last:?} last, got {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many workload polls ended with `outcome`.
async fn polls(d: &Daemon, outcome: &str) -> f64 {
    d.metric(&format!(
        "flux_status_workload_polls_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

async fn post_sync(d: &Daemon, head: &str, service_ids: &[&str]) {
    let (code, _) = support::post_as_fluxd(&d.url("/v6/events"), sync(head, service_ids), None).await;
    assert_eq!(code, 202);
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn workloads_that_become_ready_succeed_over_the_websocket_rpc() {
    let github = Fake::start(github_created(), vec![]).await;
    let http = HttpApi::start(Answer::Error("the websocket should have been used")).await;
    let d = daemon(&github, &http.flag(), &[]).await;
    let fluxd = Script::new(Answer::List(json!([
        workload(PODINFO, "updating"),
        with(
            workload("kube-system:deployment/coredns", "error"),
            "ReadOnly",
            json!("NotInRepo")
        ),
        workload("default:deployment/unrelated", "error"),
    ])));
    let _session = serve_rpc(
        connect_fluxd(&d, "/v11/daemon", None).await.unwrap(),
        fluxd.clone(),
    );

    post_sync(&d, A, &[PODINFO, "default:service/podinfo"]).await;
    wait_workload(&github, A, st("pending", "waiting for 1 workload")).await;
    fluxd.set(Answer::List(json!([
        workload(PODINFO, "ready"),
        workload("default:deployment/unrelated", "error"),
    ])));
    let seen = wait_workload(&github, A, st("success", "1 workload ready")).await;
    assert_eq!(
        seen,
        vec![
            st("pending", "waiting for 1 workload"),
            st("success", "1 workload ready")
        ],
        "unrelated workloads do not decide this sync"
    );

    let requests = fluxd.requests();
    assert!(requests.len() >= 2);
    let mut ids = Vec::new();
    for r in &requests {
        assert_eq!(r["binary"], true, "calls go out as binary frames: {r}");
        assert_eq!(r["request"]["method"], "RPCServer.ListServices");
        assert_eq!(r["request"]["params"], json!([""]));
        assert!(
            r["request"].get("jsonrpc").is_none(),
            "Go's net/rpc speaks JSON-RPC 1.0"
        );
        ids.push(r["request"]["id"].as_u64().expect("numeric id"));
    }
    ids.dedup();
    assert_eq!(ids.len(), requests.len(), "every call has its own id");
    assert!(
        http.script.requests().is_empty(),
        "no HTTP call while the websocket serves"
    );
    assert_eq!(polls(&d, "succeeded").await, 1.0);
    assert!(
        d.metric("flux_status_fluxd_calls_total{transport=\"rpc\",result=\"ok\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_failing_rollout_or_helm_release_fails_at_once_with_its_message() {
    let github = Fake::start(github_created(), vec![]).await;
    let http = HttpApi::start(Answer::Silence).await;
    let d = daemon(&github, &http.flag(), &["--poll-timeout=300s"]).await;
    let deadline_exceeded = "Deployment \"podinfo\" exceeded its progress deadline";
    let fluxd = Script::new(Answer::List(json!([with(
        workload(PODINFO, "error"),
        "Rollout",
        json!({"Desired": 2, "Updated": 1, "Ready": 1, "Available": 1, "Outdated": 1, "Messages": [deadline_exceeded]})
    )])));
    let _session = serve_rpc(
        connect_fluxd(&d, "/v11/daemon", None).await.unwrap(),
        fluxd.clone(),
    );

    post_sync(&d, A, &[PODINFO]).await;
    let seen = wait_workload(
        &github,
        A,
        st("failure", &format!("{PODINFO} failed: {deadline_exceeded}")),
    )
    .await;
    assert_eq!(
        seen.len(),
        1,
        "failed on the first look, before any pending: {seen:?}"
    );

    // A HelmRelease's own failure, with its Deployment (created by it) fine.
    fluxd.set(Answer::List(json!([
        workload("default:helmrelease/redis", "failed"),
        with(
            workload("default:statefulset/redis-master", "ready"),
            "Antecedent",
            json!("default:helmrelease/redis")
        ),
    ])));
    post_sync(&d, B, &["default:helmrelease/redis"]).await;
    wait_workload(
        &github,
        B,
        st("failure", "default:helmrelease/redis failed: release failed"),
    )
    .await;
    assert_eq!(polls(&d, "failed").await, 2.0);
}

#[tokio::test]
async fn workloads_never_ready_time_out_naming_them() {
    let github = Fake::start(github_created(), vec![]).await;
    let http = HttpApi::start(Answer::List(json!([
        workload(PODINFO, "updating"),
        with(
            workload("default:deployment/podinfo-cache", "started"),
            "Antecedent",
            json!("default:helmrelease/x")
        ),
    ])))
    .await;
    let d = daemon(&github, &http.flag(), &["--poll-timeout=1"]).await;
    // No serviceID is a workload: every in-repo workload counts.
    post_sync(&d, A, &["default:configmap/settings"]).await;
    let seen = wait_workload(
        &github,
        A,
        st(
            "failure",
            "timed out after 1s: default:deployment/podinfo (updating), default:deployment/podinfo-cache (started) not ready",
        ),
    )
    .await;
    assert_eq!(seen[0], st("pending", "waiting for 2 workloads"));
    assert_eq!(polls(&d, "timed_out").await, 1.0);
}

#[tokio::test]
async fn a_newer_sync_decides_the_older_commits_pending_status() {
    let github = Fake::start(github_created(), vec![]).await;
    let http = HttpApi::start(Answer::List(json!([workload(PODINFO, "updating")]))).await;
    let d = daemon(&github, &http.flag(), &[]).await;
    post_sync(&d, A, &[PODINFO]).await;
    wait_workload(&github, A, st("pending", "waiting for 1 workload")).await;
    post_sync(&d, B, &[PODINFO]).await;
    wait_workload(&github, B, st("pending", "waiting for 1 workload")).await;
    http.script.set(Answer::List(json!([workload(PODINFO, "ready")])));

    wait_workload(&github, B, st("success", "1 workload ready")).await;
    let a = wait_workload(&github, A, st("success", "1 workload ready (as part of bbbbbbb)")).await;
    assert_eq!(a.len(), 2, "pending, then the newer poll's outcome: {a:?}");
    assert_eq!(polls(&d, "superseded").await, 1.0);
    assert_eq!(polls(&d, "succeeded").await, 1.0);
}

#[tokio::test]
async fn fluxd_reconnecting_mid_poll_does_not_end_the_poll() {
    let github = Fake::start(github_created(), vec![]).await;
    // While the websocket is down the HTTP API is tried, and is down too.
    let http = HttpApi::start(Answer::Silence).await;
    let d = daemon(&github, &http.flag(), &[]).await;
    let first = Script::new(Answer::List(json!([workload(PODINFO, "updating")])));
    let session = serve_rpc(
        connect_fluxd(&d, "/v11/daemon", None).await.unwrap(),
        first.clone(),
    );
    post_sync(&d, A, &[PODINFO]).await;
    wait_workload(&github, A, st("pending", "waiting for 1 workload")).await;

    first.set(Answer::Hangup);
    session.await.unwrap();
    wait_until("an HTTP fallback attempt", || !http.script.requests().is_empty()).await;
    let second = Script::new(Answer::List(json!([workload(PODINFO, "ready")])));
    let _session = serve_rpc(
        connect_fluxd(&d, "/v11/daemon", None).await.unwrap(),
        second.clone(),
    );

    let seen = wait_workload(&github, A, st("success", "1 workload ready")).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        !second.requests().is_empty(),
        "the new connection served the poll"
    );
    let fallback = &http.script.requests()[0];
    assert_eq!(fallback["path"], "/api/flux/v6/services");
    assert_eq!(fallback["query"], "namespace=");
    assert_eq!(fallback["accept"], "application/json");
}

#[tokio::test]
async fn malformed_null_silent_and_error_replies_are_retried() {
    let github = Fake::start(github_created(), vec![]).await;
    let http = HttpApi::start(Answer::Error("not to be used")).await;
    let d = daemon(&github, &http.flag(), &[]).await;
    let fluxd = Script::new(Answer::List(json!([workload(PODINFO, "ready")])));
    fluxd.queue(vec![
        Answer::Garbage,
        Answer::RawResult("null"),
        Answer::RawResult(r#""not a list""#),
        Answer::RawResult(r#"{"Result":[{"ID":7}],"ApplicationError":null}"#),
        Answer::Silence,
        Answer::RawResult(
            r#"{"Result":null,"ApplicationError":{"type":"server","help":"","error":"cluster unreachable"}}"#,
        ),
        Answer::Error("getting workloads from cluster: connection refused"),
    ]);
    let _session = serve_rpc(
        connect_fluxd(&d, "/v11/daemon", None).await.unwrap(),
        fluxd.clone(),
    );
    post_sync(&d, A, &[PODINFO]).await;
    let seen = wait_workload(&github, A, st("success", "1 workload ready")).await;
    assert_eq!(
        seen,
        vec![
            st("pending", "waiting for fluxd's workload list"),
            st("success", "1 workload ready")
        ]
    );
    let calls = |result: &'static str| {
        let d = &d;
        async move {
            d.metric(&format!(
                "flux_status_fluxd_calls_total{{transport=\"rpc\",result=\"{result}\"}}"
            ))
            .await
        }
    };
    assert_eq!(
        calls("malformed").await,
        3.0,
        "null, a string, a list of non-workloads"
    );
    assert_eq!(
        calls("timeout").await,
        2.0,
        "garbage and silence leave the call unanswered"
    );
    assert_eq!(calls("application_error").await, 1.0);
    assert_eq!(calls("remote_error").await, 1.0);
    assert!(
        http.script.requests().is_empty(),
        "errors of a live websocket are retried on it"
    );
    assert!(
        d.find_log(|l| l["message"] == "fluxd sent a frame that is not a JSON-RPC reply")
            .is_some()
    );
}

#[tokio::test]
async fn without_the_rpc_method_or_a_websocket_fluxds_http_api_is_used() {
    let github = Fake::start(github_created(), vec![]).await;
    let http = HttpApi::start(Answer::List(json!([workload(PODINFO, "ready")]))).await;
    http.script.queue(vec![
        Answer::Error("getting workloads from cluster: boom"),
        Answer::Garbage,
        Answer::List(json!([workload(PODINFO, "updating")])),
    ]);
    let d = daemon(&github, &http.flag(), &[]).await;
    // A fluxd whose RPC server lacks ListServices (every method is "can't find").
    let fluxd = Script::new(Answer::List(json!([])));
    let mut ws = connect_fluxd(&d, "/v11/daemon", None).await.unwrap();
    let missing = tokio::spawn(async move {
        let mut calls = 0;
        while let Some(Ok(Message::Binary(b))) = ws.next().await {
            calls += 1;
            let req: Value = serde_json::from_slice(&b).unwrap();
            let reply = json!({"id": req["id"], "result": null,
                "error": format!("rpc: can't find method {}", req["method"].as_str().unwrap())});
            ws.send(Message::Binary(reply.to_string().into_bytes().into()))
                .await
                .unwrap();
        }
        calls
    });
    post_sync(&d, A, &[PODINFO]).await;
    let seen = wait_workload(&github, A, st("success", "1 workload ready")).await;
    assert_eq!(
        seen,
        vec![
            st("pending", "waiting for fluxd's workload list"),
            st("pending", "waiting for 1 workload"),
            st("success", "1 workload ready")
        ]
    );
    assert!(http.script.requests().len() >= 4);
    assert_eq!(
        d.metric("flux_status_fluxd_calls_total{transport=\"rpc\",result=\"method_missing\"}")
            .await,
        1.0
    );
    assert!(fluxd.requests().is_empty());

    // No websocket at all; fluxd's `null` list means no workloads.
    let github2 = Fake::start(github_created(), vec![]).await;
    let http2 = HttpApi::start(Answer::RawResult("null")).await;
    let d2 = daemon(&github2, &format!("http://{}/api/flux", http2.flag()), &[]).await;
    post_sync(&d2, B, &[PODINFO]).await;
    wait_workload(&github2, B, st("success", "no workloads to wait for")).await;
    drop(d);
    assert_eq!(
        missing.await.unwrap(),
        1,
        "a connection lacking the method is asked once"
    );
}

#[tokio::test]
async fn with_polling_off_no_workload_status_is_written() {
    let github = Fake::start(github_created(), vec![]).await;
    let http = HttpApi::start(Answer::List(json!([workload(PODINFO, "ready")]))).await;
    let d = daemon(&github, &http.flag(), &["--poll-workloads=false"]).await;
    post_sync(&d, A, &[PODINFO]).await;
    github.expect_exactly(1, Duration::from_millis(800)).await;
    assert!(workload_statuses(&github).await.is_empty());
    assert!(http.script.requests().is_empty());
}

#[tokio::test]
async fn a_poll_under_way_resumes_after_a_restart() {
    let github = Fake::start(github_created(), vec![]).await;
    let http = HttpApi::start(Answer::List(json!([workload(PODINFO, "updating")]))).await;
    let state = support::temp_dir("resume");
    let first = daemon_in(state.clone(), &github, &http.flag(), &[]).await;
    post_sync(&first, A, &[PODINFO]).await;
    wait_workload(&github, A, st("pending", "waiting for 1 workload")).await;
    // What SIGTERM does; tests/integration/fluxv1_github.rs sends the signal itself.
    first.stop().await.expect("a clean stop");

    http.script.set(Answer::List(json!([workload(PODINFO, "ready")])));
    let second = daemon_in(state, &github, &http.flag(), &[]).await;
    let seen = wait_workload(&github, A, st("success", "1 workload ready")).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        second
            .find_log(|l| l["message"] == "resuming the workload poll of the previous run")
            .is_some()
    );
}

/// `--deployments` with the workload check: the sync's commit is in progress until its
/// workloads roll out, then deployed; one deployment, against a GitHub that keeps
/// deployments as GitHub does.
#[tokio::test]
async fn with_deployments_a_sync_is_deployed_once_its_workloads_roll_out() {
    let gh = crate::github_fake::app::AppGitHub::start().await;
    gh.add_pat(TOKEN);
    let http = HttpApi::start(Answer::List(json!([workload(PODINFO, "updating")]))).await;
    let (api, flux) = (
        format!("--api-url={}", gh.uri()),
        format!("--flux={}", http.flag()),
    );
    let args = [
        "--git-url=git@github.com:acme/app.git",
        "--instance=dev",
        api.as_str(),
        flux.as_str(),
        "--poll-workloads",
        "--poll-interval=200ms",
        "--poll-timeout=30s",
        "--deployments",
        "--git-branch=master",
    ];
    let d = Daemon::start_in(support::temp_dir("v1-deploy"), &args, &[("GITHUB_TOKEN", TOKEN)]).await;
    let states = || -> Vec<String> {
        let all = gh.deployments_of(A, "dev");
        assert!(all.len() <= 1, "one deployment per commit: {all:#?}");
        all.first()
            .map(|d| d.states().into_iter().map(str::to_string).collect())
            .unwrap_or_default()
    };
    post_sync(&d, A, &[PODINFO]).await;
    wait_until("in progress while the workloads roll out", || {
        states().first().map(String::as_str) == Some("in_progress")
    })
    .await;
    // The sync has succeeded, yet the deployment waits for the rollout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(states().iter().all(|s| s == "in_progress"), "{:?}", states());
    http.script.set(Answer::List(json!([workload(PODINFO, "ready")])));
    wait_until("deployed", || {
        states().last().map(String::as_str) == Some("success")
    })
    .await;
    let deployment = gh.deployments_of(A, "dev").remove(0);
    assert_eq!(deployment.body["ref"], A, "GitHub deploys the commit itself");
    assert_eq!(
        deployment.statuses.last().unwrap().description,
        "1 workload ready"
    );
    assert_eq!(gh.violations(), Vec::<String>::new(), "requests off the spec");
}
