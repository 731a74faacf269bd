//! GitHub deployments (`--deployments`), notifier level, against a fake GitHub that
//! enforces the deployment rules (tests/github_fake/deployments.rs) and checks every
//! request against GitHub's OpenAPI description.

use crate::github_fake;
use crate::support;

use github_fake::app::{APP_ID, AppGitHub, INSTALLATION, key_pem};
use github_fake::deployments::Scripted;
use notifiers::deployment::Environment;
use notifiers::{
    App, AppCredential, Check, CommitStatus, Credential, GitUrl, Handle, Notifier, Provider, Reason, Retry,
    Sha, State,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::openapi::Spec;

const SHA: &str = "4997efcd4ac6255604d0d44eeb7085c5b0eb9d48";
const OTHER_SHA: &str = "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1";
const THIRD_SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const PAT: &str = "ghp_deployer";
const ENV_URL: &str = "https://dev.example.com";
const LOG_URL: &str = "https://flux.example/dev";

fn app() -> Credential {
    Credential::App(AppCredential {
        app: Arc::new(App::new(APP_ID, &SecretString::from(key_pem())).unwrap()),
        installation: Some(INSTALLATION),
    })
}

fn pat() -> Credential {
    Credential::Token(SecretString::from(PAT))
}

fn github() -> Provider {
    Provider::named("github").unwrap()
}

fn url() -> GitUrl {
    GitUrl::parse("https://github.com/acme/app").unwrap()
}

fn client() -> reqwest::Client {
    notifiers::http::client(&Default::default()).unwrap()
}

fn deployer(gh: &AppGitHub, credential: Credential, production: bool) -> Arc<dyn Notifier> {
    let env = Environment {
        url: Some(ENV_URL.into()),
        production,
    };
    github()
        .deployments(client(), &url(), Some(&gh.uri()), credential, &env)
        .unwrap()
}

/// A fake with the PAT accepted, and a deployments notifier using it.
async fn start() -> (AppGitHub, Arc<dyn Notifier>) {
    let gh = AppGitHub::start().await;
    gh.add_pat(PAT);
    let n = deployer(&gh, pat(), false);
    (gh, n)
}

fn status(sha: &str, environment: &str, state: State) -> CommitStatus {
    CommitStatus {
        sha: Sha::parse(sha).unwrap(),
        check: Check::new(environment),
        state,
        description: format!("Sync {state}"),
        target_url: Some(LOG_URL.into()),
        summary: None,
        git_ref: Some("main".into()),
    }
}

/// The handle of a first, pending write.
async fn pending(n: &Arc<dyn Notifier>, sha: &str, environment: &str) -> Handle {
    let receipt = n
        .write(&status(sha, environment, State::Pending), None)
        .await
        .unwrap();
    receipt.handle.expect("the deployment's id")
}

fn assert_clean(gh: &AppGitHub) {
    assert_eq!(gh.violations(), Vec::<String>::new(), "requests off the spec");
}

/// A raw request with the PAT; the status and the answer.
async fn raw(gh: &AppGitHub, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = support::http()
        .request(method, format!("{}/repos/acme/app/{path}", gh.uri()))
        .bearer_auth(PAT);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// A pending commit status of our own on `SHA`, as the status notifier writes it.
async fn pending_commit_status(gh: &AppGitHub) {
    let statuses = github()
        .notifier(client(), &url(), Some(&gh.uri()), pat())
        .unwrap();
    let mut s = status(SHA, "flux-status/dev/sync", State::Pending);
    s.git_ref = None;
    statuses.write(&s, None).await.unwrap();
}

#[tokio::test]
async fn pending_then_success_is_one_deployment_with_in_progress_then_success() {
    let (gh, n) = start().await;
    let first = n.write(&status(SHA, "dev", State::Pending), None).await.unwrap();
    let handle = first.handle.clone().expect("the deployment's id");
    let done = n
        .write(&status(SHA, "dev", State::Succeeded), Some(&handle))
        .await
        .unwrap();
    assert_eq!(done.handle.as_ref(), Some(&handle));
    assert_eq!(
        first.budget.remaining,
        Some(4999),
        "budget from the answer's headers"
    );

    let all = gh.deployments();
    assert_eq!(all.len(), 1, "{all:?}");
    let d = &all[0];
    assert_eq!(handle.as_str(), d.id.to_string());
    assert_eq!((d.sha.as_str(), d.git_ref.as_str()), (SHA, SHA));
    assert_eq!(d.environment, "dev");
    assert_eq!(
        d.body,
        json!({"ref": SHA, "task": "deploy", "auto_merge": false, "required_contexts": [],
               "environment": "dev", "description": "Sync pending",
               "transient_environment": false, "production_environment": false})
    );
    assert_eq!(d.states(), ["in_progress", "success"]);
    for (s, want) in d.statuses.iter().zip(["Sync pending", "Sync succeeded"]) {
        assert_eq!(s.description, want);
        assert_eq!(s.environment, "dev");
        assert_eq!(s.environment_url.as_deref(), Some(ENV_URL));
        assert_eq!(s.log_url.as_deref(), Some(LOG_URL));
        assert_eq!(s.body.as_ref().unwrap()["auto_inactive"], true);
    }
    assert_clean(&gh);
}

#[tokio::test]
async fn every_state_has_its_deployment_status_and_production_is_marked() {
    let gh = AppGitHub::start().await;
    gh.add_pat(PAT);
    let n = deployer(&gh, pat(), true);
    let mut handle: Option<Handle> = None;
    for state in State::ALL {
        let r = n
            .write(&status(SHA, "prod", state), handle.as_ref())
            .await
            .unwrap();
        handle = r.handle;
    }
    let all = gh.deployments();
    assert_eq!(all.len(), 1, "any status follows any other: {all:?}");
    assert_eq!(all[0].body["production_environment"], true);
    assert!(all[0].production);
    assert_eq!(all[0].states(), ["in_progress", "success", "failure", "inactive"]);
    assert_clean(&gh);
}

#[tokio::test]
async fn the_fake_answers_409_to_a_deployment_without_required_contexts_while_a_check_is_pending() {
    let (gh, _) = start().await;
    pending_commit_status(&gh).await;
    let plain = json!({"ref": SHA, "environment": "dev", "auto_merge": false});
    let (code, body) = raw(&gh, reqwest::Method::POST, "deployments", Some(plain.clone())).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["message"],
        format!("Conflict: Commit status checks failed for {SHA}.")
    );
    assert_eq!(
        body["errors"][0]["contexts"],
        json!([{"context": "flux-status/dev/sync", "state": "pending"}])
    );
    // Naming the pending context is no better; naming none bypasses the checks.
    let mut named = plain.clone();
    named["required_contexts"] = json!(["flux-status/dev/sync"]);
    assert_eq!(
        raw(&gh, reqwest::Method::POST, "deployments", Some(named))
            .await
            .0,
        409
    );
    let mut none = plain;
    none["required_contexts"] = json!([]);
    assert_eq!(
        raw(&gh, reqwest::Method::POST, "deployments", Some(none)).await.0,
        201
    );
    assert_eq!(gh.deployments().len(), 1);
    assert_clean(&gh);
}

#[tokio::test]
async fn an_in_progress_check_run_blocks_a_deployment_too() {
    let (gh, _) = start().await;
    let runs = notifiers::github::checks::notifier(client(), &url(), Some(&gh.uri()), app(), None).unwrap();
    runs.write(&status(SHA, "flux-status/dev/sync", State::Pending), None)
        .await
        .unwrap();
    let plain = json!({"ref": SHA, "environment": "dev"});
    let (code, body) = raw(&gh, reqwest::Method::POST, "deployments", Some(plain)).await;
    assert_eq!(code, 409, "{body}");
    assert_clean(&gh);
}

#[tokio::test]
async fn our_own_pending_status_does_not_block_our_deployment() {
    let (gh, n) = start().await;
    pending_commit_status(&gh).await;
    n.write(&status(SHA, "dev", State::Pending), None).await.unwrap();
    assert_eq!(gh.deployments().len(), 1);
    assert_eq!(gh.deployment_refusals(), Vec::<String>::new());
    assert_clean(&gh);
}

#[tokio::test]
async fn descriptions_are_cut_to_140_characters_which_the_fake_enforces() {
    let (gh, n) = start().await;
    let mut long = status(SHA, "dev", State::Failed);
    long.description = format!("Sync failed:\n{}", "é".repeat(400));
    n.write(&long, None).await.unwrap();
    let d = &gh.deployments()[0];
    let on_deployment = d.description.clone().unwrap();
    let on_status = &d.statuses[0].description;
    for cut in [&on_deployment, on_status] {
        assert_eq!(cut.chars().count(), 140, "{cut}");
        assert!(cut.starts_with("Sync failed: é") && cut.ends_with('…'), "{cut}");
    }
    // The rule the fake holds GitHub to, on both objects.
    let too_long = "x".repeat(141);
    let (code, _) = raw(
        &gh,
        reqwest::Method::POST,
        "deployments",
        Some(json!({"ref": SHA, "required_contexts": [], "description": too_long})),
    )
    .await;
    assert_eq!(code, 422);
    let (code, _) = raw(
        &gh,
        reqwest::Method::POST,
        &format!("deployments/{}/statuses", d.id),
        Some(json!({"state": "success", "description": too_long})),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        gh.deployment_refusals().len(),
        2,
        "{:?}",
        gh.deployment_refusals()
    );
    assert_clean(&gh);
}

#[tokio::test]
async fn a_new_notifier_given_the_handle_updates_the_same_deployment() {
    let (gh, n) = start().await;
    let handle = pending(&n, SHA, "dev").await;
    drop(n);
    let listings = gh.deployment_listings();
    let restarted = deployer(&gh, pat(), false);
    restarted
        .write(&status(SHA, "dev", State::Succeeded), Some(&handle))
        .await
        .unwrap();
    let all = gh.deployments();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].states(), ["in_progress", "success"]);
    assert_eq!(
        gh.deployment_listings(),
        listings,
        "with a handle, nothing to look for"
    );
    assert_clean(&gh);
}

#[tokio::test]
async fn with_no_handle_the_deployment_of_the_commit_in_the_environment_is_adopted() {
    let (gh, n) = start().await;
    // GitHub made it, and its id was lost (a crash before it was kept).
    n.write(&status(SHA, "dev", State::Pending), None).await.unwrap();
    // Deployments of another commit, and of another environment, are not it.
    n.write(&status(OTHER_SHA, "dev", State::Pending), None)
        .await
        .unwrap();
    n.write(&status(SHA, "staging", State::Pending), None)
        .await
        .unwrap();
    let r = n
        .write(&status(SHA, "dev", State::Succeeded), None)
        .await
        .unwrap();
    let ours = gh.deployments_of(SHA, "dev");
    assert_eq!(ours.len(), 1, "no second deployment: {ours:?}");
    assert_eq!(ours[0].states(), ["in_progress", "success"]);
    assert_eq!(r.handle.unwrap().as_str(), ours[0].id.to_string());
    assert_eq!(gh.deployments().len(), 3);
    for (sha, env) in [(OTHER_SHA, "dev"), (SHA, "staging")] {
        assert_eq!(gh.deployments_of(sha, env)[0].states(), ["in_progress"]);
    }
    assert_clean(&gh);
}

#[tokio::test]
async fn the_handle_of_a_deleted_deployment_gives_way_to_a_new_one() {
    let (gh, n) = start().await;
    let handle = pending(&n, SHA, "dev").await;
    let old: u64 = handle.as_str().parse().unwrap();
    gh.delete_deployment(old);
    let r = n
        .write(&status(SHA, "dev", State::Succeeded), Some(&handle))
        .await
        .unwrap();
    let all = gh.deployments();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_ne!(all[0].id, old);
    assert_eq!(all[0].states(), ["success"]);
    assert_eq!(r.handle.unwrap().as_str(), all[0].id.to_string());
    assert_clean(&gh);
}

#[tokio::test]
async fn works_with_an_app_and_refreshes_a_refused_token_once() {
    let gh = AppGitHub::start().await;
    let n = deployer(&gh, app(), false);
    n.check_credentials().await.unwrap();
    let handle = n
        .write(&status(SHA, "dev", State::Pending), None)
        .await
        .unwrap()
        .handle;
    assert_eq!(gh.mints(), 1);
    // GitHub forgets the token: the 401 makes one retry with a fresh token.
    gh.revoke_tokens();
    n.write(&status(SHA, "dev", State::Succeeded), handle.as_ref())
        .await
        .unwrap();
    assert_eq!(gh.mints(), 2);
    let all = gh.deployments();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].states(), ["in_progress", "success"]);
    assert_clean(&gh);
}

#[tokio::test]
async fn a_bad_token_is_found_by_the_credential_check() {
    let (gh, n) = start().await;
    n.check_credentials().await.unwrap();
    let bad = deployer(&gh, Credential::Token(SecretString::from("ghp_wrong")), false);
    let e = bad.check_credentials().await.unwrap_err();
    assert_eq!(e.reason, Reason::Unauthorized, "{e}");
    let e = bad
        .write(&status(SHA, "dev", State::Pending), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason, Reason::Unauthorized, "{e}");
    assert!(!format!("{e} {e:?}").contains("ghp_wrong"), "{e:?}");
    assert!(gh.deployments().is_empty());
}

#[tokio::test]
async fn list_statuses_reads_back_the_newest_state_per_environment() {
    let (gh, n) = start().await;
    let mut dev = None;
    for state in [State::Pending, State::Succeeded] {
        dev = n
            .write(&status(SHA, "dev", state), dev.as_ref())
            .await
            .unwrap()
            .handle;
    }
    let mut staging = None;
    for state in [State::Pending, State::Failed] {
        staging = n
            .write(&status(SHA, "staging", state), staging.as_ref())
            .await
            .unwrap()
            .handle;
    }
    // A deployment with no status yet reads as running.
    let (code, _) = raw(
        &gh,
        reqwest::Method::POST,
        "deployments",
        Some(json!({"ref": SHA, "environment": "qa", "required_contexts": []})),
    )
    .await;
    assert_eq!(code, 201);
    n.write(&status(OTHER_SHA, "dev", State::Failed), None)
        .await
        .unwrap();

    let read: Vec<(String, State, String)> = n
        .list_statuses(&Sha::parse(SHA).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.check.to_string(), s.state, s.description))
        .collect();
    let want = [
        ("qa", State::Pending, ""),
        ("staging", State::Failed, "Sync failed"),
        ("dev", State::Succeeded, "Sync succeeded"),
    ];
    assert_eq!(read, want.map(|(c, s, d)| (c.to_string(), s, d.to_string())));

    // A newer deploy to dev succeeds: GitHub's auto_inactive makes the older one
    // inactive, read back as superseded.
    n.write(&status(OTHER_SHA, "dev", State::Succeeded), None)
        .await
        .unwrap();
    let read = n.list_statuses(&Sha::parse(SHA).unwrap()).await.unwrap();
    let dev = read.iter().find(|s| s.check.as_str() == "dev").unwrap();
    assert_eq!(dev.state, State::Canceled);
    assert_eq!(n.reads_back_as(State::Canceled), State::Canceled);
    assert_clean(&gh);
}

#[tokio::test]
async fn list_statuses_follows_every_page() {
    let (gh, n) = start().await;
    for i in 0..101 {
        let (code, _) = raw(
            &gh,
            reqwest::Method::POST,
            "deployments",
            Some(json!({"ref": SHA, "environment": format!("env-{i}"), "required_contexts": []})),
        )
        .await;
        assert_eq!(code, 201);
    }
    let read = n.list_statuses(&Sha::parse(SHA).unwrap()).await.unwrap();
    assert_eq!(read.len(), 101);
    assert_eq!(read[0].check.as_str(), "env-100", "newest first");
    assert_eq!(read[100].check.as_str(), "env-0");
    assert_eq!(gh.deployment_listings(), 2, "two pages of 100");
    assert_clean(&gh);
}

#[tokio::test]
async fn a_rate_limit_and_a_5xx_are_classified() {
    let (gh, n) = start().await;
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 120;
    gh.script_deployment_writes([
        Scripted {
            code: 403,
            body: json!({"message": "API rate limit exceeded for user ID 1.",
                         "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}),
            headers: vec![
                ("x-ratelimit-remaining".into(), "0".into()),
                ("x-ratelimit-reset".into(), reset.to_string()),
            ],
        },
        Scripted {
            code: 502,
            body: json!({"message": "Server Error"}),
            headers: Vec::new(),
        },
    ]);
    let limited = n
        .write(&status(SHA, "dev", State::Pending), None)
        .await
        .unwrap_err();
    assert_eq!(
        (limited.retry, limited.reason, limited.status),
        (Retry::RateLimited, Reason::RateLimited, Some(403)),
        "{limited}"
    );
    let wait = limited.retry_after.expect("the reset is when to retry");
    assert!(
        wait > Duration::from_secs(60) && wait <= Duration::from_secs(122),
        "{wait:?}"
    );
    let failed = n
        .write(&status(SHA, "dev", State::Pending), None)
        .await
        .unwrap_err();
    assert_eq!(
        (failed.retry, failed.reason, failed.status),
        (Retry::Transient, Reason::ServerError, Some(502)),
        "{failed}"
    );
    assert!(gh.deployments().is_empty());
    // The next write goes through, and makes the one deployment.
    n.write(&status(SHA, "dev", State::Pending), None).await.unwrap();
    assert_eq!(gh.deployments().len(), 1);
    assert_clean(&gh);
}

#[tokio::test]
async fn the_fake_keeps_github_rules_on_statuses_and_auto_inactive() {
    let (gh, n) = start().await;
    let (code, _) = raw(
        &gh,
        reqwest::Method::POST,
        "deployments/12345/statuses",
        Some(json!({"state": "success"})),
    )
    .await;
    assert_eq!(code, 404, "an unknown deployment");
    let (code, _) = raw(
        &gh,
        reqwest::Method::POST,
        "deployments",
        Some(json!({"ref": "no-such-branch", "required_contexts": []})),
    )
    .await;
    assert_eq!(code, 422, "an unknown ref");
    // A production deploy and a non-production one of dev succeeded; a newer one
    // succeeds: only the older non-production one becomes inactive.
    let prod = deployer(&gh, pat(), true);
    prod.write(&status(SHA, "dev", State::Succeeded), None)
        .await
        .unwrap();
    n.write(&status(THIRD_SHA, "dev", State::Succeeded), None)
        .await
        .unwrap();
    n.write(&status(OTHER_SHA, "dev", State::Succeeded), None)
        .await
        .unwrap();
    let older = &gh.deployments_of(THIRD_SHA, "dev")[0];
    assert_eq!(older.states(), ["success", "inactive"]);
    assert_eq!(gh.deployments_of(SHA, "dev")[0].states(), ["success"]);
    assert_eq!(gh.deployments_of(OTHER_SHA, "dev")[0].states(), ["success"]);
    // The answers have GitHub's shape.
    let spec = Spec::load("github");
    let (code, listed) = raw(
        &gh,
        reqwest::Method::GET,
        &format!("deployments?sha={THIRD_SHA}"),
        None,
    )
    .await;
    let op = spec.operation("GET", "/repos/acme/app/deployments").unwrap();
    op.validate_response(code, &listed).unwrap();
    let path = format!("/repos/acme/app/deployments/{}/statuses", older.id);
    let (code, statuses) = raw(&gh, reqwest::Method::GET, &path["/repos/acme/app/".len()..], None).await;
    spec.operation("GET", &path)
        .unwrap()
        .validate_response(code, &statuses)
        .unwrap();
    assert_eq!(statuses[0]["state"], "inactive", "newest first");
    assert_clean(&gh);
}
