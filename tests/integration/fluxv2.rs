//! Flux v2 end to end: notification-controller's generic-hmac Provider (forwarded
//! events, signed) and controllers' --events-addr (raw events) into each provider's
//! fake, every request checked against the provider's spec.

use crate::support;

use serde_json::Value;
use std::time::Duration;
use support::{Daemon, Fake, check_against_spec, fixture, openapi::Spec};
use wiremock::ResponseTemplate;

const SHA: &str = "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1";
const OCI_ORIGIN: &str = "450796ddb2ab6724ee1cc32a4be56da032d1cca0";

struct P {
    name: &'static str,
    git_url: &'static str,
    env: (&'static str, &'static str),
    spec: &'static str,
    api_suffix: &'static str,
    /// `--provider`, for a host that does not name its provider.
    provider: &'static [&'static str],
}

const PROVIDERS: [P; 7] = [
    P {
        name: "github",
        git_url: "https://github.com/my-org/fleet",
        env: ("GITHUB_TOKEN", "t"),
        spec: "github",
        api_suffix: "",
        provider: &[],
    },
    P {
        name: "gitlab",
        git_url: "https://gitlab.com/my-org/fleet",
        env: ("GITLAB_TOKEN", "t"),
        spec: "gitlab",
        api_suffix: "",
        provider: &[],
    },
    P {
        name: "azure-devops",
        git_url: "https://dev.azure.com/my-org/my-project/_git/fleet",
        env: ("AZDO_PAT", "t"),
        spec: "azuredevops",
        api_suffix: "/my-org",
        provider: &[],
    },
    P {
        name: "bitbucket",
        git_url: "git@bitbucket.org:my-org/fleet.git",
        env: ("BITBUCKET_TOKEN", "t"),
        spec: "bitbucket",
        api_suffix: "",
        provider: &[],
    },
    P {
        name: "bitbucket-server",
        git_url: "ssh://git@git.example.com:7999/my-org/fleet.git",
        env: ("BITBUCKET_SERVER_TOKEN", "t"),
        spec: "bitbucket-datacenter",
        api_suffix: "",
        provider: &["--provider", "bitbucket-server"],
    },
    P {
        name: "gitea",
        git_url: "https://git.example.com/my-org/fleet.git",
        env: ("GITEA_TOKEN", "t"),
        spec: "gitea",
        api_suffix: "",
        provider: &["--provider", "gitea"],
    },
    P {
        name: "forgejo",
        git_url: "git@codeberg.org:my-org/fleet.git",
        env: ("FORGEJO_TOKEN", "t"),
        spec: "forgejo",
        api_suffix: "",
        provider: &[],
    },
];

fn hmac_key_file() -> std::path::PathBuf {
    support::secret_file("key", &support::v2_hmac_key()).into()
}

/// POSTs as notification-controller's generic-hmac forwarder does.
async fn forward(url: &str, body: Vec<u8>, sig: Option<&str>) -> (u16, String) {
    let mut req = support::http()
        .post(url)
        .header("Content-Type", "application/json")
        .header("Gotk-Component", "kustomize-controller")
        .body(body);
    if let Some(s) = sig {
        req = req.header("X-Signature", s);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

/// The fixtures that produce a status, and (sha, state in our words) of each.
const WRITES: [(&str, &str, &str); 4] = [
    ("kustomization-progressing-apply.json", SHA, "pending"),
    ("kustomization-health-check-failed.json", SHA, "failed"),
    ("kustomization-reconciliation-succeeded.json", SHA, "succeeded"),
    (
        "kustomization-oci-origin-revision-succeeded.json",
        OCI_ORIGIN,
        "succeeded",
    ),
];

fn provider_state(p: &P, body: &Value) -> String {
    let s = body["state"].as_str().unwrap_or("");
    let ours = match (p.name, s) {
        ("github" | "gitea" | "forgejo", "success")
        | ("gitlab", "success")
        | ("azure-devops", "succeeded") => "succeeded",
        ("github" | "gitea" | "forgejo", "failure") | (_, "failed") => "failed",
        ("github" | "gitea" | "forgejo", "pending") | ("gitlab", "running") | ("azure-devops", "pending") => {
            "pending"
        }
        (_, "SUCCESSFUL") => "succeeded",
        (_, "FAILED") => "failed",
        (_, "INPROGRESS") => "pending",
        _ => "?",
    };
    ours.to_string()
}

#[tokio::test]
async fn signed_forwarded_events_become_statuses_on_every_provider() {
    let key = hmac_key_file();
    for p in &PROVIDERS {
        let spec = Spec::load(p.spec);
        let fake = Fake::start(
            ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": 1})),
            vec![],
        )
        .await;
        let api = format!("{}{}", fake.uri(), p.api_suffix);
        let mut args = vec![
            "--git-url",
            p.git_url,
            "--api-url",
            &api,
            "--instance",
            "prod",
            "--hmac-key-file",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(p.provider);
        let d = Daemon::start(&args, &[p.env]).await;
        let url = d.url("/");
        for (file, _, _) in WRITES {
            let (code, _) = forward(
                &url,
                fixture(&format!("v2/forwarded/{file}")),
                Some(&support::v2_signature(file)),
            )
            .await;
            assert_eq!(code, 202, "{}: {file}", p.name);
            // One at a time, so each state is written (not coalesced into the next).
            fake.wait_for(WRITES.iter().position(|w| w.0 == file).unwrap() + 1)
                .await;
        }
        // Events that name no commit, or carry no status, are acknowledged and skipped.
        for file in [
            "helmrelease-install-succeeded.json",
            "gitrepository-new-artifact.json",
        ] {
            let (code, _) = forward(
                &url,
                fixture(&format!("v2/forwarded/{file}")),
                Some(&support::v2_signature(file)),
            )
            .await;
            assert_eq!(code, 202, "{file}");
        }
        // notification-controller re-sends the same success every interval: no new write.
        let again = "kustomization-reconciliation-succeeded.json";
        forward(
            &url,
            fixture(&format!("v2/forwarded/{again}")),
            Some(&support::v2_signature(again)),
        )
        .await;
        let reqs = fake
            .expect_exactly(WRITES.len(), Duration::from_millis(400))
            .await;
        for (req, (file, sha, state)) in reqs.iter().zip(WRITES) {
            check_against_spec(&spec, req);
            assert!(
                req.url.path().contains(sha),
                "{}: {file} → {}",
                p.name,
                req.url.path()
            );
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            assert_eq!(provider_state(p, &body), state, "{}: {file}: {body}", p.name);
            let check = match p.name {
                "azure-devops" => format!(
                    "{}/{}",
                    body["context"]["genre"].as_str().unwrap(),
                    body["context"]["name"].as_str().unwrap()
                ),
                "gitlab" | "bitbucket" | "bitbucket-server" => body["name"].as_str().unwrap().to_string(),
                _ => body["context"].as_str().unwrap().to_string(),
            };
            assert_eq!(
                check, "flux-status/prod/kustomization/flux-system/apps",
                "{}",
                p.name
            );
        }
        assert!(
            d.metric(r#"flux_status_events_skipped_total{reason="chart_version"}"#)
                .await
                >= 1.0,
            "chart versions are skipped with a reason"
        );
    }
}

#[tokio::test]
async fn unsigned_oversized_and_malformed_events_get_their_answers() {
    let key = hmac_key_file();
    let fake = Fake::start(ResponseTemplate::new(201), vec![]).await;
    let api = fake.uri();
    let d = Daemon::start(
        &[
            "--git-url",
            "https://github.com/my-org/fleet",
            "--api-url",
            &api,
            "--hmac-key-file",
            key.to_str().unwrap(),
        ],
        &[("GITHUB_TOKEN", "t")],
    )
    .await;
    let file = "kustomization-reconciliation-succeeded.json";
    let body = fixture(&format!("v2/forwarded/{file}"));
    let url = d.url("/v2/events");
    assert_eq!(forward(&url, body.clone(), None).await.0, 401, "unsigned");
    let wrong = format!("sha256={}", "0".repeat(64));
    let (code, text) = forward(&url, body.clone(), Some(&wrong)).await;
    assert_eq!(code, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["reason"],
        "bad_signature"
    );
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(
        forward(&url, tampered, Some(&support::v2_signature(file)))
            .await
            .0,
        401,
        "body changed after signing"
    );
    assert_eq!(forward(&url, vec![b' '; 3 * 1024 * 1024 + 1], None).await.0, 413);
    // Valid signature, invalid event.
    let key_bytes = std::fs::read(&key).unwrap();
    let garbage = b"{\"not\":\"an event\"}".to_vec();
    let sig = {
        use hmac::Mac;
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(&key_bytes).unwrap();
        mac.update(&garbage);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(
        forward(&url, garbage, Some(&format!("sha256={sig}"))).await.0,
        400
    );
    assert_eq!(
        forward(&url, body, Some(&support::v2_signature(file))).await.0,
        202
    );
    fake.expect_exactly(1, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn raw_controller_events_work_without_notification_controller() {
    let fake = Fake::start(ResponseTemplate::new(201), vec![]).await;
    let api = fake.uri();
    let d = Daemon::start(
        &["--git-url", "https://github.com/my-org/fleet", "--api-url", &api],
        &[("GITHUB_TOKEN", "t")],
    )
    .await;
    let file = "kustomization-build-failed.json";
    let (code, _) = forward(&d.url("/"), fixture(&format!("v2/controller-to-nc/{file}")), None).await;
    assert_eq!(code, 202);
    let reqs = fake.expect_exactly(1, Duration::from_millis(300)).await;
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(body["state"], "failure");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .starts_with("Build failed: "),
        "{body}"
    );
    assert_eq!(
        body["context"],
        "flux-status/default/kustomization/flux-system/apps"
    );
}

#[test]
fn an_open_port_without_authentication_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flux-status"))
        .args([
            "--dry-run",
            "--git-url",
            "https://github.com/a/b",
            "--listen",
            "0.0.0.0:0",
            "--no-persistence",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could forge deploy statuses") && err.contains("--insecure-allow-unauthenticated"),
        "{err}"
    );
}

/// A daemon (instance `prod`) with `config` as its --config file in `dir`, once each
/// of `providers` has accepted its credential.
async fn start_with_config(
    dir: &std::path::Path,
    config: &str,
    env: &[(&str, &str)],
    providers: &[&str],
) -> Daemon {
    std::fs::write(dir.join("repos.yaml"), config).unwrap();
    // `tokenEnv` reads the process environment: a child has one of its own.
    let d = Daemon::spawn(
        &[
            "--config",
            dir.join("repos.yaml").to_str().unwrap(),
            "--instance",
            "prod",
        ],
        env,
    )
    .await;
    for provider in providers {
        d.wait_log(|l| l["message"] == "provider accepted the credential" && l["provider"] == *provider)
            .await;
    }
    d
}

/// A Kustomization's and a HelmRelease's success, as notification-controller forwards them.
async fn forward_a_kustomization_and_a_helmrelease(d: &Daemon) {
    for file in [
        "kustomization-reconciliation-succeeded.json",
        "helmrelease-upgrade-succeeded-commit-annotation.json",
    ] {
        let (code, _) = forward(&d.url("/"), fixture(&format!("v2/forwarded/{file}")), None).await;
        assert_eq!(code, 202, "{file}");
    }
}

#[tokio::test]
async fn a_config_file_routes_objects_to_their_repositories_and_providers() {
    let gitlab = Fake::start(
        ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": 1})),
        vec![],
    )
    .await;
    let azure = Fake::start(
        ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": 1})),
        vec![],
    )
    .await;
    let dir = support::temp_dir("config");
    std::fs::write(dir.join("gitlab-token"), "glpat-config\n").unwrap();
    let config = format!(
        r#"
repos:
  - gitUrl: https://gitlab.example.com/platform/apps.git
    provider: gitlab
    apiUrl: {gitlab}
    tokenFile: {token}
    objects:
      - {{ kind: Kustomization, namespace: "flux-*" }}
  - gitUrl: https://dev.azure.com/my-org/my-project/_git/charts
    apiUrl: {azure}/my-org
    tokenEnv: CHARTS_PAT
    objects:
      - kind: helmrelease
"#,
        gitlab = gitlab.uri(),
        azure = azure.uri(),
        token = dir.join("gitlab-token").display()
    );
    let d = start_with_config(&dir, &config, &[("CHARTS_PAT", "azdo-config")], &["azure-devops"]).await;
    forward_a_kustomization_and_a_helmrelease(&d).await;
    let url = d.url("/");
    let gl = gitlab.expect_exactly(1, Duration::from_millis(300)).await;
    assert!(
        gl[0]
            .url
            .path()
            .starts_with("/api/v4/projects/platform%2Fapps/statuses/"),
        "{}",
        gl[0].url.path()
    );
    assert_eq!(gl[0].headers.get("private-token").unwrap(), "glpat-config");
    check_against_spec(&Spec::load("gitlab"), &gl[0]);
    let az = azure.expect_exactly(1, Duration::from_millis(300)).await;
    assert!(
        az[0]
            .url
            .path()
            .starts_with("/my-org/my-project/_apis/git/repositories/charts/commits/"),
        "{}",
        az[0].url.path()
    );
    check_against_spec(&Spec::load("azuredevops"), &az[0]);
    // An object no rule matches, with no --git-url: acknowledged, skipped with a reason.
    let file = "gitrepository-new-artifact.json";
    assert_eq!(
        forward(&url, fixture(&format!("v2/forwarded/{file}")), None)
            .await
            .0,
        202
    );
    let ready = support::http()
        .get(format!("http://{}/readyz", d.ops))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status().as_u16(),
        200,
        "both providers accepted their credentials"
    );
}

#[tokio::test]
async fn a_config_file_routes_objects_to_bitbucket_cloud_and_server() {
    let server = Fake::start(ResponseTemplate::new(204), vec![]).await;
    let cloud = Fake::start(
        ResponseTemplate::new(201).set_body_json(serde_json::json!({"type": "commitstatus"})),
        vec![],
    )
    .await;
    let dir = support::temp_dir("bitbucket-config");
    std::fs::write(dir.join("bbs-token"), "bbs-http-access-token\n").unwrap();
    let config = format!(
        r#"
repos:
  - gitUrl: https://git.example.com/bitbucket/scm/PLAT/apps.git
    provider: bitbucket-server
    apiUrl: {server}/bitbucket
    tokenFile: {token}
    objects:
      - {{ kind: Kustomization, namespace: "flux-*" }}
  - gitUrl: https://jdoe@bitbucket.org/my-org/charts.git
    apiUrl: {cloud}
    tokenEnv: CHARTS_TOKEN
    objects:
      - kind: helmrelease
"#,
        server = server.uri(),
        cloud = cloud.uri(),
        token = dir.join("bbs-token").display()
    );
    let d = start_with_config(
        &dir,
        &config,
        &[("CHARTS_TOKEN", "jdoe@example.com:api-token")],
        &["bitbucket", "bitbucket-server"],
    )
    .await;
    forward_a_kustomization_and_a_helmrelease(&d).await;
    let bbs = server.expect_exactly(1, Duration::from_millis(300)).await;
    let path = bbs[0].url.path();
    assert!(
        path.starts_with("/bitbucket/rest/api/latest/projects/PLAT/repos/apps/commits/")
            && path.ends_with("/builds"),
        "{path}"
    );
    assert_eq!(
        bbs[0].headers.get("authorization").unwrap(),
        "Bearer bbs-http-access-token"
    );
    assert_eq!(bbs[0].headers.get("x-atlassian-token").unwrap(), "no-check");
    // The spec's paths start at the server's /rest.
    let mut at_spec_root = bbs[0].clone();
    at_spec_root.url.set_path(path.trim_start_matches("/bitbucket"));
    check_against_spec(&Spec::load("bitbucket-datacenter"), &at_spec_root);
    let bb = cloud.expect_exactly(1, Duration::from_millis(300)).await;
    assert!(
        bb[0]
            .url
            .path()
            .starts_with("/2.0/repositories/my-org/charts/commit/"),
        "{}",
        bb[0].url.path()
    );
    // base64("jdoe@example.com:api-token")
    assert_eq!(
        bb[0].headers.get("authorization").unwrap(),
        "Basic amRvZUBleGFtcGxlLmNvbTphcGktdG9rZW4="
    );
    check_against_spec(&Spec::load("bitbucket"), &bb[0]);
    let logs = serde_json::to_string(&d.logs()).unwrap();
    assert!(
        !logs.contains("bbs-http-access-token") && !logs.contains("api-token"),
        "a credential in the logs"
    );
}

/// Self-hosted Gitea under a sub-path and Forgejo on an ssh port, each from a
/// `--config` entry with its own credential.
#[tokio::test]
async fn a_config_file_routes_objects_to_self_hosted_gitea_and_forgejo() {
    let answer =
        || ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": 1, "status": "success"}));
    let gitea = Fake::start(answer(), vec![]).await;
    let forgejo = Fake::start(answer(), vec![]).await;
    let dir = support::temp_dir("config-gitea");
    std::fs::write(dir.join("gitea-token"), "gitea-config-token\n").unwrap();
    let config = format!(
        r#"
repos:
  - gitUrl: https://git.example.com/forge/platform/apps.git
    provider: gitea
    apiUrl: {gitea}/forge
    tokenFile: {token}
    objects:
      - {{ kind: Kustomization }}
  - gitUrl: ssh://git@forge.example.com:2222/platform/charts.git
    provider: forgejo
    apiUrl: {forgejo}
    tokenEnv: CHARTS_FORGEJO
    objects:
      - kind: helmrelease
"#,
        gitea = gitea.uri(),
        forgejo = forgejo.uri(),
        token = dir.join("gitea-token").display()
    );
    let d = start_with_config(
        &dir,
        &config,
        &[("CHARTS_FORGEJO", "forgejo-config-token")],
        &["gitea", "forgejo"],
    )
    .await;
    forward_a_kustomization_and_a_helmrelease(&d).await;
    // (fake, provider, sub-path, repository, token)
    for (fake, spec, sub, repo, token) in [
        (&gitea, "gitea", "/forge", "platform/apps", "gitea-config-token"),
        (&forgejo, "forgejo", "", "platform/charts", "forgejo-config-token"),
    ] {
        let reqs = fake.expect_exactly(1, Duration::from_millis(300)).await;
        let path = reqs[0].url.path();
        assert!(
            path.starts_with(&format!("{sub}/api/v1/repos/{repo}/statuses/")),
            "{spec}: {path}"
        );
        assert_eq!(
            reqs[0].headers.get("authorization").unwrap(),
            format!("token {token}").as_str()
        );
        // The spec's paths start at the server's /api/v1.
        let mut at_spec_root = reqs[0].clone();
        at_spec_root.url.set_path(path.trim_start_matches(sub));
        check_against_spec(&Spec::load(spec), &at_spec_root);
        let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(body["state"], "success", "{spec}: {body}");
    }
    let ready = support::http()
        .get(format!("http://{}/readyz", d.ops))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let logs = serde_json::to_string(&d.logs()).unwrap();
    assert!(!logs.contains("config-token"), "a credential in the logs");
}

#[test]
fn config_file_errors_are_all_reported_at_startup() {
    let dir = support::temp_dir("badconfig");
    std::fs::write(
        dir.join("repos.yaml"),
        "repos:\n  - gitUrl: https://git.example.com/a/b\n    objects: [{kind: Kustomization}]\n  - gitUrl: https://github.com/a/b\n    tokenEnv: NOT_SET_ANYWHERE\n    objects: []\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flux-status"))
        .args([
            "--config",
            dir.join("repos.yaml").to_str().unwrap(),
            "--no-persistence",
        ])
        .env_remove("GITHUB_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "repos[0]",
        "cannot tell which provider",
        "repos[1]",
        "NOT_SET_ANYWHERE",
        "at least one pattern",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}
