//! Check runs (`--github-checks`) against a fake GitHub that enforces the check-run
//! rules (tests/github_fake/checks.rs) and checks every request against GitHub's
//! OpenAPI description: the notifier, the daemon across a `kill -9`, and the CLI.

use crate::github_fake;
use crate::support;

use github_fake::app::{APP_ID, AppGitHub, INSTALLATION, key_pem};
use github_fake::checks::OUTPUT_LIMIT;
use notifiers::github::checks::{self, CUT_NOTE};
use notifiers::{
    App, AppCredential, Check, CommitStatus, Credential, GitUrl, Handle, Notifier, Reason, Sha, State,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Daemon, WAIT, compact, fixture, post_as_fluxd};

const SHA: &str = "4997efcd4ac6255604d0d44eeb7085c5b0eb9d48";
const V2_SHA: &str = "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1";
const V2_CHECK: &str = "flux-status/dev/kustomization/flux-system/apps";
const OTHER_APP: u64 = 999;

fn app() -> Credential {
    Credential::App(AppCredential {
        app: Arc::new(App::new(APP_ID, &SecretString::from(key_pem())).unwrap()),
        installation: Some(INSTALLATION),
    })
}

fn runs_notifier(gh: &AppGitHub, credential: Credential) -> Arc<dyn Notifier> {
    let client = notifiers::http::client(&Default::default()).unwrap();
    let url = GitUrl::parse("https://github.com/acme/app").unwrap();
    checks::notifier(client, &url, Some(&gh.uri()), credential, None).unwrap()
}

fn status(state: State, summary: Option<String>) -> CommitStatus {
    CommitStatus {
        sha: Sha::parse(SHA).unwrap(),
        check: Check::new("flux-status/dev/sync"),
        state,
        description: format!("Sync {state}"),
        target_url: Some("https://flux.example/dev".into()),
        summary,
        git_ref: None,
    }
}

fn assert_clean(gh: &AppGitHub) {
    assert_eq!(gh.violations(), Vec::<String>::new(), "requests off the spec");
}

/// A raw request with the App's installation token (minted by a write before).
async fn raw(gh: &AppGitHub, method: reqwest::Method, path: &str, body: Value) -> u16 {
    let token = gh.secrets().into_iter().find(|s| s.starts_with("ghs_")).unwrap();
    support::http()
        .request(method, format!("{}/repos/acme/app/{path}", gh.uri()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn only_an_app_creates_check_runs_a_token_gets_403() {
    let gh = AppGitHub::start().await;
    gh.add_pat("ghp_personal");
    let n = runs_notifier(&gh, Credential::Token(SecretString::from("ghp_personal")));
    let e = n.write(&status(State::Pending, None), None).await.unwrap_err();
    assert_eq!((e.status, e.reason), (Some(403), Reason::Forbidden), "{e}");
    assert!(gh.runs().is_empty());
    assert!(
        gh.run_refusals()
            .iter()
            .any(|r| r.contains("authenticate via a GitHub App")),
        "{:?}",
        gh.run_refusals()
    );
    // The same write as the App creates the run.
    let app = runs_notifier(&gh, app());
    app.write(&status(State::Pending, None), None).await.unwrap();
    assert_eq!(gh.runs().len(), 1);
    assert_clean(&gh);
}

#[tokio::test]
async fn the_first_state_creates_the_run_and_later_ones_update_it() {
    let gh = AppGitHub::start().await;
    let n = runs_notifier(&gh, app());
    let first = n.write(&status(State::Pending, None), None).await.unwrap();
    let handle = first.handle.expect("a created run gives its id");
    let done = n
        .write(&status(State::Succeeded, None), Some(&handle))
        .await
        .unwrap();
    let runs = gh.runs();
    assert_eq!(runs.len(), 1, "updated in place: {runs:?}");
    let run = &runs[0];
    assert_eq!(handle.as_str(), run.id.to_string());
    assert_eq!(done.handle.unwrap().as_str(), format!("{}:completed", run.id));
    assert_eq!(
        (run.name.as_str(), run.sha.as_str()),
        ("flux-status/dev/sync", SHA)
    );
    assert_eq!(
        (run.status.as_str(), run.conclusion.as_deref()),
        ("completed", Some("success"))
    );
    assert_eq!(run.details_url.as_deref(), Some("https://flux.example/dev"));
    assert_eq!(run.title, "Sync succeeded");
    let [create, update] = run.writes.as_slice() else {
        panic!("two writes: {:?}", run.writes)
    };
    assert_eq!(create["status"], "in_progress");
    assert!(create["conclusion"].is_null() && create["completed_at"].is_null());
    assert!(
        create["started_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{create}"
    );
    assert!(
        update["name"].is_null() && update["head_sha"].is_null(),
        "a PATCH: {update}"
    );
    assert!(
        update["completed_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{update}"
    );
    assert_clean(&gh);
}

#[tokio::test]
async fn each_final_state_has_its_conclusion() {
    let gh = AppGitHub::start().await;
    let n = runs_notifier(&gh, app());
    for state in [State::Succeeded, State::Failed, State::Canceled] {
        n.write(&status(state, None), None).await.unwrap();
    }
    let got: Vec<_> = gh
        .runs()
        .iter()
        .map(|r| (r.status.clone(), r.conclusion.clone().unwrap_or_default()))
        .collect();
    let want = [
        ("completed", "success"),
        ("completed", "failure"),
        ("completed", "cancelled"),
    ];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_clean(&gh);
}

#[tokio::test]
async fn a_completed_run_never_goes_back_a_newer_state_makes_a_new_run() {
    let gh = AppGitHub::start().await;
    let n = runs_notifier(&gh, app());
    let failed = n.write(&status(State::Failed, None), None).await.unwrap();
    let id = gh.runs()[0].id;
    // The rule the fake holds GitHub to.
    let back = raw(
        &gh,
        reqwest::Method::PATCH,
        &format!("check-runs/{id}"),
        json!({"status": "in_progress"}),
    )
    .await;
    assert_eq!(back, 422);
    // The same commit re-synced: pending again, then succeeded, on a new run.
    let again = n
        .write(&status(State::Pending, None), failed.handle.as_ref())
        .await
        .unwrap();
    n.write(&status(State::Succeeded, None), again.handle.as_ref())
        .await
        .unwrap();
    let runs = gh.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        runs[0].conclusion.as_deref(),
        Some("failure"),
        "the old run stays"
    );
    assert_eq!(runs[1].conclusion.as_deref(), Some("success"));
    assert_eq!(runs[1].writes.len(), 2, "the new run was updated in place");
    assert_eq!(
        gh.run_refusals().len(),
        1,
        "only the raw PATCH: {:?}",
        gh.run_refusals()
    );
}

#[tokio::test]
async fn a_run_completed_behind_our_back_is_followed_by_a_new_one() {
    let gh = AppGitHub::start().await;
    let ours: u64 = APP_ID.parse().unwrap();
    // Completed by a write whose answer was lost: the handle kept still says open.
    let done = gh.seed_run("acme/app", SHA, "flux-status/dev/sync", ours, true);
    let n = runs_notifier(&gh, app());
    let handle = Handle::new(done.to_string()).unwrap();
    n.write(&status(State::Pending, None), Some(&handle))
        .await
        .unwrap();
    let runs = gh.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].conclusion.as_deref(), Some("success"), "left as it was");
    assert_eq!(runs[1].status, "in_progress");
}

#[tokio::test]
async fn with_no_id_kept_our_open_run_of_the_check_is_updated_not_doubled() {
    let gh = AppGitHub::start().await;
    let ours: u64 = APP_ID.parse().unwrap();
    // GitHub made it, but the process died before the id was on disk.
    let open = gh.seed_run("acme/app", SHA, "flux-status/dev/sync", ours, false);
    let n = runs_notifier(&gh, app());
    let r = n.write(&status(State::Failed, None), None).await.unwrap();
    let runs = gh.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].conclusion.as_deref(), Some("failure"));
    assert_eq!(r.handle.unwrap().as_str(), format!("{open}:completed"));
    assert_clean(&gh);
}

#[tokio::test]
async fn a_conclusion_comes_exactly_with_completed() {
    let gh = AppGitHub::start().await;
    runs_notifier(&gh, app())
        .write(&status(State::Pending, None), None)
        .await
        .unwrap();
    let post = |body: Value| raw(&gh, reqwest::Method::POST, "check-runs", body);
    let base = json!({"name": "x", "head_sha": SHA, "output": {"title": "t", "summary": "s"}});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    assert_eq!(post(with(json!({"status": "completed"}))).await, 422);
    assert_eq!(
        post(with(json!({"status": "in_progress", "conclusion": "success"}))).await,
        422
    );
    assert_eq!(
        post(with(json!({"status": "completed", "conclusion": "success"}))).await,
        201
    );
    assert_eq!(post(with(json!({"status": "in_progress"}))).await, 201);
}

#[tokio::test]
async fn a_summary_over_65535_characters_is_cut_with_a_note() {
    let gh = AppGitHub::start().await;
    let over = "é".repeat(OUTPUT_LIMIT + 1);
    let too_long = json!({"name": "x", "head_sha": SHA, "status": "in_progress",
                          "output": {"title": "t", "summary": over}});
    let n = runs_notifier(&gh, app());
    // Multi-byte characters: a cut by bytes would break one or cut too much.
    let summary = format!("| a | b |\n{}", "ü".repeat(80_000));
    n.write(&status(State::Failed, Some(summary.clone())), None)
        .await
        .unwrap();
    assert_eq!(
        raw(&gh, reqwest::Method::POST, "check-runs", too_long).await,
        422,
        "the fake refuses a longer one"
    );
    let run = &gh.runs()[0];
    assert_eq!(run.summary.chars().count(), OUTPUT_LIMIT);
    assert!(run.summary.ends_with(CUT_NOTE), "says it was cut");
    assert!(summary.starts_with(run.summary.strip_suffix(CUT_NOTE).unwrap()));
}

#[tokio::test]
async fn only_the_app_that_created_a_run_updates_it() {
    let gh = AppGitHub::start().await;
    let foreign = gh.seed_run("acme/app", SHA, "flux-status/dev/sync", OTHER_APP, false);
    let n = runs_notifier(&gh, app());
    let handle = Handle::new(foreign.to_string()).unwrap();
    let e = n
        .write(&status(State::Succeeded, None), Some(&handle))
        .await
        .unwrap_err();
    assert_eq!((e.status, e.reason), (Some(403), Reason::Forbidden), "{e}");
    assert!(
        gh.run_refusals()
            .iter()
            .any(|r| r.contains("only be modified by the GitHub App that created it")),
        "{:?}",
        gh.run_refusals()
    );
    // Without a handle, another App's open run of the same name is not taken for ours.
    n.write(&status(State::Pending, None), None).await.unwrap();
    let runs = gh.runs();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1].app.to_string(), APP_ID);
    assert!(runs[0].writes.is_empty(), "the foreign run was never written");
}

// ---- the daemon ----

fn key_file() -> std::path::PathBuf {
    let dir = support::temp_dir("checks-key");
    let f = dir.join("key.pem");
    std::fs::write(&f, key_pem()).unwrap();
    f
}

/// The daemon with the App and `--github-checks`; as a child process when the test
/// kills it.
async fn daemon(gh: &AppGitHub, state: std::path::PathBuf, key: &std::path::Path, child: bool) -> Daemon {
    let uri = gh.uri();
    let args = [
        "--git-url",
        "https://github.com/acme/app",
        "--instance",
        "dev",
        "--api-url",
        uri.as_str(),
        "--github-checks",
        "--target-url",
        "https://flux.example/dev",
    ];
    let env = [
        ("GITHUB_APP_ID", APP_ID),
        ("GITHUB_APP_PRIVATE_KEY_FILE", key.to_str().unwrap()),
    ];
    if child {
        Daemon::spawn_in(state, &args, &env).await
    } else {
        Daemon::start_in(state, &args, &env).await
    }
}

async fn forward(d: &Daemon, file: &str) {
    let resp = support::http()
        .post(d.url("/"))
        .header("Content-Type", "application/json")
        .header("Gotk-Component", "kustomize-controller")
        .body(fixture(&format!("v2/controller-to-nc/{file}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{file}");
}

async fn wait_until(what: &str, d: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}; logs: {:#?}", d.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_token_with_github_checks_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_flux-status"))
        .args(["--git-url", "https://github.com/acme/app", "--github-checks"])
        .args(["--listen", "127.0.0.1:0", "--no-persistence"])
        .env("GITHUB_TOKEN", "ghp_secret_value")
        .env_remove("GITHUB_APP_ID")
        .env_remove("FLUX_STATUS_GITHUB_CHECKS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--github-checks")
            && err.contains("only GitHub Apps")
            && err.contains("--github-app-id"),
        "{err}"
    );
    assert!(!err.contains("ghp_secret_value"), "{err}");
}

#[tokio::test]
async fn after_a_kill_9_between_create_and_update_the_same_run_is_updated() {
    let gh = AppGitHub::start().await;
    let key = key_file();
    let state = support::temp_dir("checks-crash");
    let mut d = daemon(&gh, state.clone(), &key, true).await;
    forward(&d, "kustomization-progressing-apply.json").await;
    wait_until("the run is created", &d, || !gh.runs().is_empty()).await;
    // The write has landed and its handle is in the outbox log.
    d.wait_log(|l| {
        l["fields"]["message"] == "commit status written" || l["message"] == "commit status written"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.signal("KILL");
    d.wait_exit().await;
    let listed = gh.run_listings();

    let d = daemon(&gh, state, &key, true).await;
    forward(&d, "kustomization-reconciliation-succeeded.json").await;
    wait_until("the run completes", &d, || {
        gh.runs().iter().any(|r| r.status == "completed")
    })
    .await;
    // A moment for any second write to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let runs = gh.runs();
    assert_eq!(runs.len(), 1, "exactly one run: {runs:?}");
    let run = &runs[0];
    assert_eq!((run.name.as_str(), run.sha.as_str()), (V2_CHECK, V2_SHA));
    assert_eq!(run.writes.len(), 2, "created, then updated: {:?}", run.writes);
    assert_eq!(run.conclusion.as_deref(), Some("success"));
    assert_eq!(
        gh.run_listings(),
        listed,
        "the update went by the id kept in the outbox, not by a lookup"
    );
    assert_clean(&gh);
}

#[tokio::test]
async fn the_summary_of_a_failed_kustomization_and_of_a_failed_sync() {
    let gh = AppGitHub::start().await;
    let key = key_file();
    let d = daemon(&gh, support::temp_dir("checks-summary"), &key, false).await;
    forward(&d, "kustomization-reconciliation-failed-apply.json").await;
    let (code, _) = post_as_fluxd(&d.url("/v6/events"), compact("v1/event-sync-errors.json"), None).await;
    assert_eq!(code, 202);
    wait_until("both runs", &d, || gh.runs().len() == 2).await;
    let runs = gh.runs();
    let run = |name: &str| runs.iter().find(|r| r.name == name).unwrap().clone();

    let v2 = run(V2_CHECK);
    eprintln!("---- v2 summary ----\n{}", v2.summary);
    assert_eq!(v2.conclusion.as_deref(), Some("failure"));
    assert!(
        v2.title
            .starts_with("Reconciliation failed: Deployment/apps/podinfo"),
        "{}",
        v2.title
    );
    for line in [
        "### Kustomization `flux-system/apps` failed\n",
        "- **Revision:** main@sha1:731f7eaddfb6af01cb2173e18f0f75b0ba780ef1\n",
        "- **Reason:** ReconciliationFailed\n",
        "- **Time:** 2026-05-04T10:15:30Z\n",
        "```text\nDeployment/apps/podinfo dry-run failed (Invalid): Deployment.apps \"podinfo\" is invalid: spec.template.spec.containers[0].image: Required value\n```\n",
    ] {
        assert!(v2.summary.contains(line), "{line:?} in\n{}", v2.summary);
    }

    let v1 = run("flux-status/dev/sync");
    eprintln!("---- v1 summary ----\n{}", v1.summary);
    assert_eq!(v1.conclusion.as_deref(), Some("failure"));
    assert_eq!(v1.sha, SHA);
    assert_eq!(v1.details_url.as_deref(), Some("https://flux.example/dev"));
    for line in [
        "### Flux sync failed on `dev`\n",
        "- **Synced at:** 2020-10-13T14:14:30.123456789Z\n",
        "| 4997efc | create invalid resource |\n",
        "#### Failed resources (1)\n",
        "| default:persistentvolumeclaim/test | manifests/test.yaml | running kubectl: The PersistentVolumeClaim \"test\" is invalid: spec: Forbidden: field is immutable after creation |\n",
    ] {
        assert!(v1.summary.contains(line), "{line:?} in\n{}", v1.summary);
    }
    assert_clean(&gh);
}

// ---- the CLI ----

fn cli(gh: &AppGitHub, extra: &[&str]) -> (i32, String, String) {
    let pem = key_pem();
    let out = Command::new(env!("CARGO_BIN_EXE_flux-status-cli"))
        .args(["--git-url", "https://github.com/acme/app", "--api-url", &gh.uri()])
        .args([
            "--commit-id",
            SHA,
            "--instance",
            "dev",
            "--action",
            "sync",
            "--github-checks",
        ])
        .args(extra)
        .env_remove("GITHUB_TOKEN")
        .env_remove("GITHUB_APP_PRIVATE_KEY_FILE")
        .env("GITHUB_APP_ID", APP_ID)
        .env("GITHUB_APP_PRIVATE_KEY", &pem)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_reads_the_newest_run_of_the_exact_name_over_every_page() {
    let gh = AppGitHub::start().await;
    let app: u64 = APP_ID.parse().unwrap();
    // The newest run of the check, then 130 older ones, then newer ones of other names.
    for _ in 0..130 {
        gh.seed_run("acme/app", SHA, "flux-status/dev/sync", app, false);
    }
    gh.seed_run("acme/app", SHA, "flux-status/dev/sync", app, true);
    gh.seed_run("acme/app", SHA, "flux-status/dev/sync-canary", app, false);
    gh.seed_run("acme/app", SHA, "flux-status/dev/workload", app, false);
    let (code, out, err) = cli(&gh, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(r#""name":"flux-status/dev/sync","state":"succeeded""#),
        "{out}"
    );
    assert_eq!(
        gh.run_listings(),
        2,
        "131 runs of the name: two pages of 100; {:?}",
        gh.paths()
    );
    let paths = gh.paths();
    assert!(paths.iter().any(|p| p.ends_with("/check-runs")), "{paths:?}");
    assert_clean(&gh);

    // Pending newest: not a final state, so --wait would go on; without it, the state.
    gh.seed_run("acme/app", SHA, "flux-status/dev/sync", app, false);
    let (_, out, err) = cli(&gh, &[]);
    assert!(out.contains(r#""state":"pending""#), "{out}{err}");
}
