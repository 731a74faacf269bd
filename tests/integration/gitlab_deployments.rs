//! GitLab deployments (`--deployments`) through the notifier, against a fake GitLab
//! that keeps deployments with GitLab's state machine (tests/integration/gitlab_fake.rs)
//! and checks every request against GitLab's OpenAPI description.

use crate::gitlab_fake::{GitLabDeployments, PROJECT, TOKEN, transition};
use crate::support;
use notifiers::deployment::Environment;
use notifiers::{Check, CommitStatus, Credential, GitUrl, Handle, Notifier, Reason, Retry, Sha, State};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const SHA: &str = "4997efcd4ac6255604d0d44eeb7085c5b0eb9d48";
const OTHER_SHA: &str = "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1";
const ENV: &str = "dev";

fn notifier_with(gl: &GitLabDeployments, token: &str) -> Arc<dyn Notifier> {
    let client = notifiers::http::client(&Default::default()).unwrap();
    let url = GitUrl::parse(&format!("https://gitlab.com/{PROJECT}.git")).unwrap();
    notifiers::gitlab::SPEC
        .provider()
        .deployments(
            client,
            &url,
            Some(&gl.uri()),
            Credential::Token(SecretString::from(token)),
            &Environment {
                url: Some("https://dev.example.com".into()),
                production: true,
            },
        )
        .unwrap()
}

fn notifier(gl: &GitLabDeployments) -> Arc<dyn Notifier> {
    notifier_with(gl, TOKEN)
}

fn deploy(state: State) -> CommitStatus {
    CommitStatus {
        sha: Sha::parse(SHA).unwrap(),
        check: Check::new(ENV),
        state,
        description: format!("Deploy {state}"),
        target_url: Some("https://flux.example/dev".into()),
        summary: None,
        git_ref: Some("main".into()),
    }
}

fn assert_clean(gl: &GitLabDeployments) {
    assert_eq!(gl.violations(), Vec::<String>::new(), "requests off the spec");
}

fn history(gl: &GitLabDeployments) -> Vec<Vec<String>> {
    gl.deployments().into_iter().map(|d| d.history).collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Writes `state` with `previous`, and gives back the handle the write returned.
async fn write(n: &Arc<dyn Notifier>, state: State, previous: Option<&Handle>) -> Handle {
    let receipt = n.write(&deploy(state), previous).await.unwrap();
    receipt.handle.expect("a deployment write returns its handle")
}

/// A request straight to the fake, as another client would send it.
async fn raw(gl: &GitLabDeployments, method: reqwest::Method, rest: &str, body: Value) -> (u16, Value) {
    let project = PROJECT.replace('/', "%2F");
    let resp = support::http()
        .request(method, format!("{}/api/v4/projects/{project}/{rest}", gl.uri()))
        .header("PRIVATE-TOKEN", TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn pending_then_success_is_one_deployment_running_then_success() {
    let gl = GitLabDeployments::start().await;
    let n = notifier(&gl);
    let receipt = n.write(&deploy(State::Pending), None).await.unwrap();
    assert_eq!(
        receipt.budget.remaining,
        Some(1999),
        "budget from RateLimit-Remaining"
    );
    let open = receipt.handle.unwrap();
    let done = write(&n, State::Succeeded, Some(&open)).await;

    let ds = gl.deployments();
    assert_eq!(ds.len(), 1, "{ds:?}");
    let d = &ds[0];
    assert_eq!((d.sha.as_str(), d.git_ref.as_str(), d.tag), (SHA, "main", false));
    assert_eq!(d.environment, ENV);
    assert_eq!(d.history, strings(&["created", "running", "success"]));
    assert_eq!(
        open.as_str(),
        d.id.to_string(),
        "the handle is the id, not the iid"
    );
    assert_eq!(done.as_str(), format!("{}:finished", d.id));
    let project = PROJECT.replace('/', "%2F");
    assert!(
        gl.requests()
            .contains(&format!("PUT /api/v4/projects/{project}/deployments/{}", d.id)),
        "{:?}",
        gl.requests()
    );
    assert_clean(&gl);
}

#[tokio::test]
async fn a_failed_deploy_is_a_failed_deployment_made_running_first() {
    let gl = GitLabDeployments::start().await;
    let n = notifier(&gl);
    let open = write(&n, State::Pending, None).await;
    write(&n, State::Failed, Some(&open)).await;
    // A failure with nothing before it: made running, so the environment shows it.
    let mut other = deploy(State::Failed);
    other.check = Check::new("staging");
    n.write(&other, None).await.unwrap();
    assert_eq!(
        history(&gl),
        vec![
            strings(&["created", "running", "failed"]),
            strings(&["created", "running", "failed"])
        ]
    );
    assert_eq!(gl.deployments()[1].environment, "staging");
    assert_clean(&gl);
}

#[test]
fn the_fake_keeps_gitlabs_state_machine() {
    assert_eq!(transition("created", "running"), Ok(()));
    assert_eq!(transition("blocked", "running"), Ok(()));
    for finished in ["running", "success", "failed", "canceled"] {
        assert_eq!(transition(finished, "running"), Err("run"), "{finished}");
    }
    assert_eq!(transition("success", "failed"), Ok(()));
    assert_eq!(transition("failed", "success"), Ok(()));
    assert_eq!(transition("success", "success"), Err("succeed"));
    assert_eq!(transition("failed", "failed"), Err("drop"));
    assert_eq!(transition("canceled", "canceled"), Err("cancel"));
}

#[tokio::test]
async fn a_resync_after_success_makes_a_new_deployment_because_gitlab_refuses_running() {
    let gl = GitLabDeployments::start().await;
    let n = notifier(&gl);
    let open = write(&n, State::Pending, None).await;
    let done = write(&n, State::Succeeded, Some(&open)).await;
    let first = gl.deployments()[0].id;

    // GitLab will not take a finished deployment back to running.
    let (code, body) = raw(
        &gl,
        reqwest::Method::PUT,
        &format!("deployments/{first}"),
        json!({"status": "running"}),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        body,
        json!({"message": {"status": ["cannot transition via \"run\""]}})
    );

    // The same commit synced again: a new deployment, the first one left as it was.
    let reopened = write(&n, State::Pending, Some(&done)).await;
    assert_ne!(reopened.as_str(), open.as_str());
    write(&n, State::Succeeded, Some(&reopened)).await;
    assert_eq!(
        history(&gl),
        vec![
            strings(&["created", "running", "success"]),
            strings(&["created", "running", "success"])
        ]
    );
    assert_eq!(reopened.as_str(), gl.deployments()[1].id.to_string());
    // The one refusal is the raw request's: the notifier never sent running to it.
    assert_eq!(gl.refusals().len(), 1, "{:?}", gl.refusals());
    assert_clean(&gl);
}

#[tokio::test]
async fn a_final_state_for_a_finished_deployment_does_what_gitlab_allows() {
    let gl = GitLabDeployments::start().await;
    let n = notifier(&gl);
    let open = write(&n, State::Pending, None).await;
    let done = write(&n, State::Succeeded, Some(&open)).await;
    // The same state again (an answer lost, the write repeated): GitLab's 400 means written.
    let again = write(&n, State::Succeeded, Some(&done)).await;
    assert_eq!(again, done);
    // Canceled is not sent to a finished deploy.
    write(&n, State::Canceled, Some(&done)).await;
    // The outcome changed (the workload check failed after the sync succeeded).
    write(&n, State::Failed, Some(&done)).await;
    assert_eq!(
        history(&gl),
        vec![strings(&["created", "running", "success", "failed"])]
    );
    assert_clean(&gl);
}

#[tokio::test]
async fn a_deleted_deployment_is_made_again_so_the_deploy_shows() {
    let gl = GitLabDeployments::start().await;
    let n = notifier(&gl);
    let open = write(&n, State::Pending, None).await;
    let first = gl.deployments()[0].id;
    gl.delete(first);
    let done = write(&n, State::Succeeded, Some(&open)).await;
    let ds = gl.deployments();
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_ne!(ds[0].id, first);
    assert_eq!(ds[0].history, strings(&["created", "running", "success"]));
    assert_eq!(done.as_str(), format!("{}:finished", ds[0].id));
    assert_clean(&gl);
}

#[tokio::test]
async fn a_new_notifier_updates_the_deployment_its_handle_names() {
    let gl = GitLabDeployments::start().await;
    let open = write(&notifier(&gl), State::Pending, None).await;
    let before = gl.requests().len();
    // A restart: a new notifier, the handle from the outbox.
    write(&notifier(&gl), State::Succeeded, Some(&open)).await;
    let after: Vec<String> = gl.requests()[before..].to_vec();
    assert_eq!(after.len(), 1, "only the PUT, no listing: {after:?}");
    assert!(after[0].starts_with("PUT "), "{after:?}");
    assert_eq!(history(&gl), vec![strings(&["created", "running", "success"])]);
    assert_clean(&gl);
}

#[tokio::test]
async fn without_a_handle_the_commits_open_deployment_is_adopted_not_doubled() {
    let gl = GitLabDeployments::start().await;
    let n = notifier(&gl);
    // A CI job's deployment of the same commit: GitLab would refuse to let us update it.
    gl.seed(SHA, "main", ENV, "running", true);
    // Made by a write whose id was never kept (a crash before the outbox had it).
    write(&n, State::Pending, None).await;
    // Other deploys since, over more than a page of the environment's listing.
    for _ in 0..120 {
        gl.seed(OTHER_SHA, "main", ENV, "success", false);
    }
    let ours = gl.deployments()[1].id;

    let again = write(&notifier(&gl), State::Pending, None).await;
    assert_eq!(again.as_str(), ours.to_string());
    let done = write(&notifier(&gl), State::Succeeded, None).await;
    assert_eq!(done.as_str(), format!("{ours}:finished"));
    // Already success: the repeated final write finds it written.
    write(&notifier(&gl), State::Succeeded, None).await;

    let of_sha: Vec<_> = gl.deployments().into_iter().filter(|d| d.sha == SHA).collect();
    assert_eq!(of_sha.len(), 2, "the CI job's and ours: {of_sha:?}");
    assert_eq!(
        of_sha[0].history,
        strings(&["running"]),
        "the CI job's is untouched"
    );
    assert_eq!(of_sha[1].history, strings(&["created", "running", "success"]));
    assert!(
        gl.requests()
            .iter()
            .any(|r| r.contains("deployments?environment=dev&order_by=id&sort=desc&per_page=100&page=2")),
        "the adoption read the second page"
    );
    // A finished one is never taken back: a Pending makes a new deployment.
    write(&notifier(&gl), State::Pending, None).await;
    let of_sha: Vec<_> = gl.deployments().into_iter().filter(|d| d.sha == SHA).collect();
    assert_eq!(of_sha.len(), 3);
    assert_eq!(of_sha[2].history, strings(&["created", "running"]));
    assert_clean(&gl);
}

#[tokio::test]
async fn the_ref_is_the_branch_or_else_the_sha() {
    let gl = GitLabDeployments::start().await;
    gl.add_branch("release/1.x");
    let n = notifier(&gl);
    let mut on_branch = deploy(State::Pending);
    on_branch.git_ref = Some("release/1.x".into());
    n.write(&on_branch, None).await.unwrap();
    let mut unknown = deploy(State::Pending);
    unknown.check = Check::new("prod");
    unknown.git_ref = None;
    n.write(&unknown, None).await.unwrap();
    let refs: Vec<String> = gl.deployments().into_iter().map(|d| d.git_ref).collect();
    assert_eq!(refs, strings(&["release/1.x", SHA]));

    // A branch GitLab does not know is refused for good, not retried.
    let mut gone = deploy(State::Pending);
    gone.check = Check::new("qa");
    gone.git_ref = Some("deleted-branch".into());
    let e = n.write(&gone, None).await.unwrap_err();
    assert_eq!(
        (e.status, e.reason, e.retry),
        (Some(400), Reason::Invalid, Retry::Permanent),
        "{e}"
    );
    assert!(e.message.contains("The branch or tag does not exist"), "{e}");
    assert_clean(&gl);
}

#[tokio::test]
async fn list_statuses_reads_the_commits_latest_deployment_per_environment() {
    let gl = GitLabDeployments::start().await;
    let dev_old = gl.seed(SHA, "main", "dev", "failed", false);
    let staging = gl.seed(SHA, "main", "staging", "success", false);
    let prod = gl.seed(SHA, "main", "prod", "created", false);
    gl.seed(OTHER_SHA, "main", "dev", "success", false);
    let dev = gl.seed(SHA, "main", "dev", "running", false);
    gl.seed(SHA, "main", "canary", "blocked", false);
    for _ in 0..110 {
        gl.seed(OTHER_SHA, "main", "dev", "success", false);
    }
    let read = notifier(&gl)
        .list_statuses(&Sha::parse(SHA).unwrap())
        .await
        .unwrap();
    let got: Vec<(String, State, i64)> = read
        .iter()
        .map(|s| (s.check.to_string(), s.state, s.id))
        .collect();
    assert_eq!(
        got,
        vec![
            ("dev".to_string(), State::Pending, dev as i64),
            ("prod".to_string(), State::Pending, prod as i64),
            ("staging".to_string(), State::Succeeded, staging as i64),
        ],
        "newest first, one per environment, blocked left out; older dev {dev_old} hidden"
    );
    assert!(read.iter().all(|s| s.description.is_empty()));
    assert_clean(&gl);
}

#[tokio::test]
async fn a_429_with_ratelimit_headers_is_rate_limited_and_makes_nothing() {
    let gl = GitLabDeployments::start().await;
    let n = notifier(&gl);
    gl.throttle(1);
    let e = n.write(&deploy(State::Pending), None).await.unwrap_err();
    assert_eq!(
        (e.status, e.reason, e.retry),
        (Some(429), Reason::RateLimited, Retry::RateLimited),
        "{e}"
    );
    let wait = e.retry_after.expect("the wait from RateLimit-Reset");
    assert!(
        wait > Duration::from_secs(1) && wait <= Duration::from_secs(32),
        "{wait:?}"
    );
    assert!(gl.deployments().is_empty());
    // Once the limit is lifted, the retry makes exactly one deployment.
    write(&n, State::Pending, None).await;
    assert_eq!(gl.deployments().len(), 1);
    assert_clean(&gl);
}

#[tokio::test]
async fn a_bad_token_is_refused_at_the_credential_check() {
    let gl = GitLabDeployments::start().await;
    notifier(&gl).check_credentials().await.unwrap();
    let e = notifier_with(&gl, "glpat-wrong")
        .check_credentials()
        .await
        .unwrap_err();
    assert_eq!((e.status, e.reason), (Some(401), Reason::Unauthorized), "{e}");
    assert!(!e.to_string().contains("glpat-wrong"));
}

#[tokio::test]
async fn the_fake_answers_bad_bodies_as_gitlab_does() {
    let gl = GitLabDeployments::start().await;
    let (code, body) = raw(
        &gl,
        reqwest::Method::POST,
        "deployments",
        json!({"environment": "dev", "ref": "main", "tag": false, "status": "running"}),
    )
    .await;
    assert_eq!((code, body), (400, json!({"error": "sha is missing"})));
    let (code, body) = raw(
        &gl,
        reqwest::Method::POST,
        "deployments",
        json!({"environment": "dev", "sha": SHA, "ref": "main", "tag": false, "status": "pending"}),
    )
    .await;
    assert_eq!(
        (code, body),
        (400, json!({"error": "status does not have a valid value"}))
    );
    let (code, _) = raw(
        &gl,
        reqwest::Method::PUT,
        "deployments/12345",
        json!({"status": "success"}),
    )
    .await;
    assert_eq!(code, 404);
    // Both bodies break the spec too, and the fake says so.
    assert_eq!(gl.violations().len(), 2, "{:?}", gl.violations());
    assert!(gl.deployments().is_empty());
}
