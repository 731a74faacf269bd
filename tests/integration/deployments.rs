//! `--deployments` through the daemon: Flux events in, one deployment per commit and
//! environment out, across a `kill -9`. Against the fakes that keep each provider's
//! deployment rules and check every request against its OpenAPI description.

use crate::github_fake;
use crate::support;
use github_fake::app::AppGitHub;
use github_fake::deployments::Scripted;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Daemon, fixture};

const PAT: &str = "ghp_deployments";
const SHA: &str = "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1";
const ENV: &str = "production";
const ENV_URL: &str = "https://app.example.com";
const LOG_URL: &str = "https://flux.example/prod";
/// Longer than the harness's default: a restarted daemon first waits out
/// `--settle-after` before it reads back a write whose outcome it never learned.
const PATIENCE: Duration = Duration::from_secs(60);

async fn github() -> AppGitHub {
    let gh = AppGitHub::start().await;
    gh.add_pat(PAT);
    gh
}

async fn daemon(gh: &AppGitHub, state: std::path::PathBuf, child: bool) -> Daemon {
    let uri = gh.uri();
    let args = [
        "--git-url",
        "https://github.com/acme/app",
        "--instance",
        "prod-eu",
        "--api-url",
        uri.as_str(),
        "--target-url",
        LOG_URL,
        "--deployments",
        "--environment",
        ENV,
        "--environment-url",
        ENV_URL,
        "--production",
        "--retry-initial",
        "200ms",
        "--settle-after",
        "1s",
    ];
    let env = [("GITHUB_TOKEN", PAT)];
    if child {
        Daemon::spawn_in(state, &args, &env).await
    } else {
        Daemon::start_in(state, &args, &env).await
    }
}

/// A Flux v2 event as kustomize-controller sends it, about the object `name`.
async fn forward(d: &Daemon, file: &str, name: &str) {
    let mut event: Value = serde_json::from_slice(&fixture(&format!("v2/controller-to-nc/{file}"))).unwrap();
    event["involvedObject"]["name"] = json!(name);
    let resp = support::http()
        .post(d.url("/"))
        .header("Content-Type", "application/json")
        .header("Gotk-Component", "kustomize-controller")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{file}");
}

async fn wait_until(what: &str, d: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}; logs: {:#?}", d.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The states of the one deployment of `SHA` to `ENV`; fails on a second one.
fn states(gh: &AppGitHub) -> Vec<String> {
    let all = gh.deployments_of(SHA, ENV);
    assert!(
        all.len() <= 1,
        "one deployment per commit and environment: {all:#?}"
    );
    all.first()
        .map(|d| d.states().into_iter().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Waits for the `apps` object's commit status to read success.
async fn wait_for_apps_success(gh: &AppGitHub, d: &Daemon) {
    let check = "flux-status/prod-eu/kustomization/flux-system/apps";
    wait_until("the commit status", d, || {
        gh.statuses()
            .iter()
            .any(|s| s.body["context"] == check && s.body["state"] == "success")
    })
    .await;
}

fn assert_clean(gh: &AppGitHub) {
    assert_eq!(gh.violations(), Vec::<String>::new(), "requests off the spec");
}

#[tokio::test]
async fn a_flux_v2_deploy_is_one_deployment_from_in_progress_to_success() {
    let gh = github().await;
    let d = daemon(&gh, support::temp_dir("deploy-v2"), false).await;
    forward(&d, "kustomization-progressing-apply.json", "apps").await;
    wait_until("in progress", &d, || states(&gh) == ["in_progress"]).await;
    forward(&d, "kustomization-reconciliation-succeeded.json", "apps").await;
    wait_until("succeeded", &d, || states(&gh) == ["in_progress", "success"]).await;

    let deployment = gh.deployments_of(SHA, ENV).remove(0);
    let body = &deployment.body;
    assert_eq!(body["ref"], SHA);
    assert_eq!(body["environment"], ENV);
    assert_eq!(body["required_contexts"], json!([]));
    assert_eq!(body["auto_merge"], false);
    assert_eq!(body["production_environment"], true);
    let done = deployment.statuses.last().unwrap();
    assert_eq!(done.environment_url.as_deref(), Some(ENV_URL));
    assert_eq!(done.log_url.as_deref(), Some(LOG_URL));
    assert_eq!(done.description, "Reconciliation succeeded");
    // The commit status is written beside it, under its own check.
    wait_for_apps_success(&gh, &d).await;
    assert_eq!(gh.deployment_refusals(), Vec::<String>::new());
    assert_clean(&gh);
}

#[tokio::test]
async fn one_failing_object_fails_the_commits_deployment_whichever_reports_last() {
    let gh = github().await;
    let d = daemon(&gh, support::temp_dir("deploy-fold"), false).await;
    forward(&d, "kustomization-reconciliation-succeeded.json", "infra").await;
    wait_until("infra deployed", &d, || states(&gh) == ["success"]).await;
    forward(&d, "kustomization-reconciliation-failed-apply.json", "apps").await;
    wait_until("apps failed", &d, || {
        states(&gh).last().map(String::as_str) == Some("failure")
    })
    .await;
    let failed = gh.deployments_of(SHA, ENV)[0]
        .statuses
        .last()
        .unwrap()
        .description
        .clone();
    assert!(
        failed.starts_with("Kustomization flux-system/apps: Reconciliation failed"),
        "{failed}"
    );
    assert!(failed.chars().count() <= 140, "{failed}");
    // infra's success, sent again, does not hide apps' failure.
    forward(&d, "kustomization-reconciliation-succeeded.json", "infra").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(states(&gh).last().map(String::as_str), Some("failure"));
    // apps recovers: the deployment succeeds.
    forward(&d, "kustomization-reconciliation-succeeded.json", "apps").await;
    wait_until("apps recovered", &d, || {
        states(&gh).last().map(String::as_str) == Some("success")
    })
    .await;
    assert_clean(&gh);
}

/// The deployment's id reached the outbox before the kill: the restart updates it
/// without looking it up.
#[tokio::test]
async fn after_a_kill_9_the_kept_id_updates_the_same_deployment() {
    let gh = github().await;
    let state = support::temp_dir("deploy-kill-kept");
    let mut d = daemon(&gh, state.clone(), true).await;
    forward(&d, "kustomization-progressing-apply.json", "apps").await;
    wait_until("in progress", &d, || states(&gh) == ["in_progress"]).await;
    d.wait_log(|l| l.to_string().contains("#deployments") && l.to_string().contains("commit status written"))
        .await;
    // The handle follows the write's log line into the same group commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.signal("KILL");
    d.wait_exit().await;
    let listed = gh.deployment_listings();

    let d = daemon(&gh, state, false).await;
    forward(&d, "kustomization-reconciliation-succeeded.json", "apps").await;
    wait_until("succeeded", &d, || states(&gh) == ["in_progress", "success"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(states(&gh), ["in_progress", "success"]);
    assert_eq!(
        gh.deployment_listings(),
        listed,
        "updated by the kept id, not a lookup"
    );
    assert_clean(&gh);
}

/// GitHub made the deployment, but its status failed and the process died before the
/// next try, so no id was kept: the restart finds the commit's deployment and
/// updates it rather than make a second.
#[tokio::test]
async fn after_a_kill_9_between_creating_a_deployment_and_its_status_there_is_still_one() {
    let gh = github().await;
    gh.script_deployment_status_writes([Scripted {
        code: 502,
        body: json!({"message": "Server Error"}),
        headers: Vec::new(),
    }]);
    let state = support::temp_dir("deploy-kill-between");
    let mut d = daemon(&gh, state.clone(), true).await;
    forward(&d, "kustomization-progressing-apply.json", "apps").await;
    wait_until("the deployment is made, its status refused", &d, || {
        gh.deployments_of(SHA, ENV).len() == 1
    })
    .await;
    d.signal("KILL");
    d.wait_exit().await;

    let d = daemon(&gh, state, false).await;
    forward(&d, "kustomization-reconciliation-succeeded.json", "apps").await;
    wait_until("succeeded", &d, || {
        states(&gh).last().map(String::as_str) == Some("success")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gh.deployments().len(), 1, "{:#?}", gh.deployments());
    assert_clean(&gh);
}

/// With a GitHub App, the statuses and the deployments of a repository share one
/// installation token: minted once, not once per notifier.
#[tokio::test]
async fn with_an_app_statuses_and_deployments_share_one_installation_token() {
    use github_fake::app::{APP_ID, key_pem};
    let gh = AppGitHub::start().await;
    let key = support::secret_file("deploy-app-key", &key_pem());
    let uri = gh.uri();
    let args = [
        "--git-url",
        "https://github.com/acme/app",
        "--instance",
        "prod-eu",
        "--api-url",
        uri.as_str(),
        "--deployments",
        "--environment",
        ENV,
    ];
    let env = [
        ("GITHUB_APP_ID", APP_ID),
        ("GITHUB_APP_PRIVATE_KEY_FILE", key.as_str()),
    ];
    let d = Daemon::start_in(support::temp_dir("deploy-app"), &args, &env).await;
    forward(&d, "kustomization-progressing-apply.json", "apps").await;
    forward(&d, "kustomization-reconciliation-succeeded.json", "apps").await;
    wait_until("deployed", &d, || {
        states(&gh).last().map(String::as_str) == Some("success")
    })
    .await;
    wait_for_apps_success(&gh, &d).await;
    assert_eq!(gh.mints(), 1, "one installation token for both notifiers");
    assert_clean(&gh);
}

mod gitlab {
    use super::{ENV, SHA, forward, wait_until};
    use crate::gitlab_fake::{GitLabDeployments, TOKEN};
    use crate::support::{self, Daemon, compact, post_as_fluxd};
    use std::time::Duration;

    async fn daemon(
        gl: &GitLabDeployments,
        state: std::path::PathBuf,
        child: bool,
        extra: &[&str],
    ) -> Daemon {
        let (url, api) = (gl.git_url(), gl.uri());
        let mut args = vec![
            "--git-url",
            url.as_str(),
            "--provider",
            "gitlab",
            "--api-url",
            api.as_str(),
            "--instance",
            "prod-eu",
            "--deployments",
            "--environment",
            ENV,
            "--retry-initial",
            "200ms",
            "--settle-after",
            "1s",
        ];
        args.extend_from_slice(extra);
        let env = [("GITLAB_TOKEN", TOKEN)];
        if child {
            Daemon::spawn_in(state, &args, &env).await
        } else {
            Daemon::start_in(state, &args, &env).await
        }
    }

    /// The statuses the one deployment of `sha` to `ENV` held, `created` left out.
    fn history(gl: &GitLabDeployments, sha: &str) -> Vec<String> {
        let all: Vec<_> = gl
            .deployments()
            .into_iter()
            .filter(|d| d.sha == sha && d.environment == ENV)
            .collect();
        assert!(
            all.len() <= 1,
            "one deployment per commit and environment: {all:#?}"
        );
        all.first()
            .map(|d| d.history.iter().filter(|s| *s != "created").cloned().collect())
            .unwrap_or_default()
    }

    fn assert_clean(gl: &GitLabDeployments) {
        assert_eq!(gl.violations(), Vec::<String>::new(), "requests off the spec");
    }

    #[tokio::test]
    async fn a_flux_v2_deploy_is_one_deployment_of_its_branch() {
        let gl = GitLabDeployments::start().await;
        let d = daemon(&gl, support::temp_dir("gl-deploy-v2"), false, &[]).await;
        forward(&d, "kustomization-progressing-apply.json", "apps").await;
        wait_until("running", &d, || history(&gl, SHA) == ["running"]).await;
        forward(&d, "kustomization-reconciliation-succeeded.json", "apps").await;
        wait_until("succeeded", &d, || history(&gl, SHA) == ["running", "success"]).await;
        let deployment = gl.deployments().remove(0);
        assert_eq!(
            (deployment.git_ref.as_str(), deployment.tag),
            ("main", false),
            "the branch of main@sha1:…"
        );
        wait_until("the commit status beside it", &d, || {
            gl.statuses()
                .iter()
                .any(|(sha, s)| sha == SHA && s["state"] == "success")
        })
        .await;
        assert_eq!(gl.refusals(), Vec::<String>::new());
        assert_clean(&gl);
    }

    /// `apps` depends on `infra`, so it starts once `infra` is ready: still one
    /// GitLab deployment, failed when `apps` fails.
    #[tokio::test]
    async fn a_kustomization_that_starts_late_makes_no_second_deployment() {
        let gl = GitLabDeployments::start().await;
        let d = daemon(&gl, support::temp_dir("gl-deploy-late"), false, &[]).await;
        forward(&d, "kustomization-reconciliation-succeeded.json", "infra").await;
        wait_until("infra deployed", &d, || {
            history(&gl, SHA) == ["running", "success"]
        })
        .await;
        forward(&d, "kustomization-progressing-apply.json", "apps").await;
        forward(&d, "kustomization-reconciliation-failed-apply.json", "apps").await;
        wait_until("apps failed", &d, || {
            history(&gl, SHA) == ["running", "success", "failed"]
        })
        .await;
        assert_eq!(gl.deployments().len(), 1, "{:#?}", gl.deployments());
        assert_clean(&gl);
    }

    #[tokio::test]
    async fn after_a_kill_9_the_same_deployment_finishes() {
        let gl = GitLabDeployments::start().await;
        let state = support::temp_dir("gl-deploy-kill");
        let mut d = daemon(&gl, state.clone(), true, &[]).await;
        forward(&d, "kustomization-progressing-apply.json", "apps").await;
        wait_until("running", &d, || history(&gl, SHA) == ["running"]).await;
        d.signal("KILL");
        d.wait_exit().await;

        let d = daemon(&gl, state, false, &[]).await;
        forward(&d, "kustomization-reconciliation-succeeded.json", "apps").await;
        wait_until("succeeded", &d, || history(&gl, SHA) == ["running", "success"]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(gl.deployments().len(), 1, "{:#?}", gl.deployments());
        assert_clean(&gl);
    }

    /// What a crash after GitLab made the deployment, before its id was kept, leaves:
    /// a running deployment of the commit and no id. It is finished, not doubled.
    #[tokio::test]
    async fn a_running_deployment_whose_id_was_not_kept_is_finished_not_doubled() {
        let gl = GitLabDeployments::start().await;
        let id = gl.seed(SHA, "main", ENV, "running", false);
        let d = daemon(&gl, support::temp_dir("gl-deploy-adopt"), false, &[]).await;
        forward(&d, "kustomization-reconciliation-succeeded.json", "apps").await;
        wait_until("succeeded", &d, || {
            gl.deployments().iter().any(|d| d.status == "success")
        })
        .await;
        let all = gl.deployments();
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!((all[0].id, all[0].status.as_str()), (id, "success"));
        assert_clean(&gl);
    }

    #[tokio::test]
    async fn a_fluxd_sync_is_deployed_from_the_git_branch_flag() {
        let gl = GitLabDeployments::start().await;
        gl.add_branch("master");
        let d = daemon(
            &gl,
            support::temp_dir("gl-deploy-v1"),
            false,
            &["--git-branch", "master", "--status-range", "5"],
        )
        .await;
        let (code, _) = post_as_fluxd(&d.url("/v6/events"), compact("v1/event-sync.json"), None).await;
        assert_eq!(code, 202);
        let head = "9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1";
        wait_until("deployed", &d, || {
            history(&gl, head).last().map(String::as_str) == Some("success")
        })
        .await;
        let deployment = gl.deployments().remove(0);
        assert_eq!(deployment.git_ref, "master");
        // The older commit of the range gets its status, but the environment runs the head.
        wait_until("both commits' statuses", &d, || gl.statuses().len() == 2).await;
        assert_eq!(
            gl.deployments().len(),
            1,
            "the head only, not the older commits of the range"
        );
        assert_clean(&gl);
    }
}
