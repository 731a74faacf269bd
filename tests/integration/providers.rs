//! Each provider's notifier against a local fake of its API: the requests it sends
//! (checked against the official OpenAPI / Swagger description), and how every kind
//! of error answer is classified for delivery.

use crate::support;

use notifiers::http::HttpConfig;
use notifiers::{Check, CommitStatus, GitUrl, Notifier, ProviderSpec, Reason, Retry, Sha, State};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::{Fake, check_against_spec, openapi::Spec};
use wiremock::ResponseTemplate;

const SHA: &str = "9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1";
const TARGET: &str = "https://flux.example.com/clusters/dev";

struct Setup {
    provider: &'static ProviderSpec,
    git_url: &'static str,
    spec: &'static str,
    credential: &'static str,
    /// Appended to the fake's address to form `--api-url`.
    api_suffix: &'static str,
    create_path: &'static str,
    create_op: &'static str,
}

const PROVIDERS: [Setup; 7] = [
    Setup {
        provider: &notifiers::github::SPEC,
        git_url: "git@github.com:acme/app.git",
        spec: "github",
        credential: "ghp_test",
        api_suffix: "",
        create_path: "/repos/acme/app/statuses/",
        create_op: "repos/create-commit-status",
    },
    Setup {
        provider: &notifiers::gitlab::SPEC,
        git_url: "https://gitlab.com/acme/platform/app.git",
        spec: "gitlab",
        credential: "glpat-test",
        api_suffix: "",
        create_path: "/api/v4/projects/acme%2Fplatform%2Fapp/statuses/",
        create_op: "postApiV4ProjectsIdStatusesSha",
    },
    Setup {
        provider: &notifiers::azure_devops::SPEC,
        git_url: "git@ssh.dev.azure.com:v3/acme/My%20Project/gitops",
        spec: "azuredevops",
        credential: "azdo-pat-value",
        api_suffix: "/acme",
        create_path: "/acme/My%20Project/_apis/git/repositories/gitops/commits/",
        create_op: "Statuses_Create",
    },
    Setup {
        provider: &notifiers::bitbucket::cloud::SPEC,
        git_url: "https://jdoe@bitbucket.org/acme/app.git",
        spec: "bitbucket",
        // A repository access token: Bearer.
        credential: "bb-access-token",
        api_suffix: "",
        create_path: "/2.0/repositories/acme/app/commit/",
        create_op: "post /repositories/{workspace}/{repo_slug}/commit/{commit}/statuses/build",
    },
    Setup {
        provider: &notifiers::bitbucket::server::SPEC,
        git_url: "https://git.example.com/bitbucket/scm/PROJ/app.git",
        spec: "bitbucket-datacenter",
        // A user and a token: Basic.
        credential: "jdoe:bbs-token",
        // The context path is tested on its own: the spec's paths start at /rest.
        api_suffix: "",
        create_path: "/rest/api/latest/projects/PROJ/repos/app/commits/",
        create_op: "add",
    },
    // Self-hosted: --provider gitea; the fake stands in for the server's origin.
    Setup {
        provider: &notifiers::gitea::SPEC,
        git_url: "https://git.example.com/acme/app.git",
        spec: "gitea",
        credential: "gitea-token-value",
        api_suffix: "",
        create_path: "/api/v1/repos/acme/app/statuses/",
        create_op: "repoCreateStatus",
    },
    Setup {
        provider: &notifiers::forgejo::SPEC,
        git_url: "git@codeberg.org:acme/app.git",
        spec: "forgejo",
        credential: "forgejo-token-value",
        api_suffix: "",
        create_path: "/api/v1/repos/acme/app/statuses/",
        create_op: "repoCreateStatus",
    },
];

fn notifier(s: &Setup, api: &str, timeout: Duration) -> Arc<dyn Notifier> {
    notifier_with(s, &format!("{api}{}", s.api_suffix), s.credential, timeout)
}

/// A notifier for `s` whose API is `api` as given (a context path included).
fn notifier_with(s: &Setup, api: &str, credential: &str, timeout: Duration) -> Arc<dyn Notifier> {
    let client = notifiers::http::client(&HttpConfig {
        timeout,
        ..HttpConfig::default()
    })
    .unwrap();
    let url = GitUrl::parse(s.git_url).unwrap();
    s.provider
        .provider()
        .notifier(
            client,
            &url,
            Some(api),
            SecretString::from(credential.to_string()),
        )
        .unwrap()
}

fn status(state: State) -> CommitStatus {
    CommitStatus {
        sha: Sha::parse(SHA).unwrap(),
        check: Check::new("flux-status/dev/sync"),
        state,
        description: format!(
            "Sync failed for 1 resource: default:deployment/podinfo — {}",
            "x".repeat(400)
        ),
        target_url: Some(TARGET.into()),
        summary: None,
        git_ref: None,
    }
}

/// A success answer shaped as the real API answers, checked against the spec.
fn created(s: &Setup) -> ResponseTemplate {
    let spec = Spec::load(s.spec);
    if s.provider.name == "bitbucket-server" {
        // 204 No Content, as the spec declares.
        let op = spec
            .operation("POST", &format!("{}{SHA}{}", s.create_path, path_tail(s)))
            .unwrap();
        assert!(op.validate_response(204, &Value::Null).is_ok());
        return ResponseTemplate::new(204);
    }
    let (code, body) = match s.provider.name {
        "github" => {
            let op = spec
                .operation("POST", &format!("{}{SHA}", s.create_path))
                .unwrap();
            (201, op.example_response(201).unwrap())
        }
        "gitlab" => (
            201,
            json!({"id": 93, "sha": SHA, "ref": "main", "status": "success", "name": "flux-status/dev/sync",
                   "target_url": TARGET, "description": "Sync succeeded", "created_at": "2026-11-22T10:00:00.000Z",
                   "finished_at": "2026-11-22T10:00:00.000Z", "allow_failure": false, "pipeline_id": 7,
                   "author": {"id": 1, "username": "flux", "name": "Flux", "state": "active", "web_url": "https://gitlab.com/flux"}}),
        ),
        "azure-devops" => (
            201,
            json!({"id": 1, "state": "succeeded", "description": "Sync succeeded", "targetUrl": TARGET,
                   "context": {"name": "dev/sync", "genre": "flux-status"}, "creationDate": "2026-11-22T10:00:00Z",
                   "updatedDate": "2026-11-22T10:00:00Z", "createdBy": {"id": "a", "displayName": "Flux"}}),
        ),
        "bitbucket" => (201, bitbucket_cloud_status("flux-status/dev/sync", "SUCCESSFUL")),
        "gitea" | "forgejo" => (201, gitea_status(93, "success", "flux-status/dev/sync")),
        other => panic!("{other}: no answer written for it here"),
    };
    let op = spec
        .operation("POST", &format!("{}{SHA}{}", s.create_path, path_tail(s)))
        .unwrap();
    // Azure's spec declares 200 while its own example and the service answer 201.
    let declared = if s.provider.name == "azure-devops" {
        200
    } else {
        code
    };
    op.validate_response(declared, &body).unwrap();
    ResponseTemplate::new(code).set_body_json(body)
}

/// A Bitbucket Cloud `commitstatus` as the API answers with it.
fn bitbucket_cloud_status(name: &str, state: &str) -> Value {
    let at = "2026-11-22T10:00:00.000000+00:00";
    let api = format!("https://api.bitbucket.org/2.0/repositories/acme/app/commit/{SHA}");
    json!({"type": "commitstatus", "key": name, "name": name, "state": state, "description": "Sync succeeded",
           "url": TARGET, "created_on": at, "updated_on": at,
           "uuid": "{2d7d9a3e-8a7a-4a51-9d1e-1c6a4f0c9b11}",
           "links": {"self": {"href": format!("{api}/statuses/build/{name}")}, "commit": {"href": api}}})
}

/// A status as Gitea and Forgejo answer it: the state comes back as `status`.
fn gitea_status(id: i64, state: &str, context: &str) -> Value {
    json!({"id": id, "status": state, "context": context, "description": "Sync succeeded",
           "target_url": TARGET, "url": format!("https://git.example.com/api/v1/repos/acme/app/statuses/{SHA}"),
           "creator": {"id": 3, "login": "flux", "full_name": "", "email": "flux@noreply.example.com",
                       "avatar_url": "https://git.example.com/avatars/3", "html_url": "https://git.example.com/flux"},
           "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z"})
}

/// Gitea's and Forgejo's error body.
fn gitea_error(message: &str) -> Value {
    json!({"message": message, "url": "https://git.example.com/api/swagger"})
}

/// What follows the commit in the path of a write.
fn path_tail(s: &Setup) -> &'static str {
    match s.provider.name {
        "azure-devops" => "/statuses",
        "bitbucket" => "/statuses/build",
        "bitbucket-server" => "/builds",
        _ => "",
    }
}

fn header(req: &wiremock::Request, name: &str) -> String {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A provider added to the registry is tested here too.
#[test]
fn every_registered_provider_has_its_setup() {
    let mut registered: Vec<&str> = notifiers::PROVIDERS.iter().map(|p| p.name).collect();
    let mut tested: Vec<&str> = PROVIDERS.iter().map(|s| s.provider.name).collect();
    registered.sort();
    tested.sort();
    assert_eq!(registered, tested);
}

/// The notifier a spec builds names itself as the spec does: that name is the
/// metric label and log field.
#[test]
fn each_notifier_is_named_as_its_spec() {
    for s in &PROVIDERS {
        let n = notifier(s, "http://127.0.0.1:9", Duration::from_secs(1));
        assert_eq!(n.name(), s.provider.name);
    }
}

#[tokio::test]
async fn each_provider_sends_exactly_its_documented_request() {
    for s in &PROVIDERS {
        let spec = Spec::load(s.spec);
        for state in State::ALL {
            let fake = Fake::start(created(s), vec![]).await;
            let n = notifier(s, &fake.uri(), Duration::from_secs(5));
            n.write(&status(state), None)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", s.provider.name));
            let reqs = fake.expect_exactly(1, Duration::from_millis(50)).await;
            let req = &reqs[0];
            assert_eq!(check_against_spec(&spec, req), s.create_op, "{}", s.provider.name);
            assert_eq!(req.url.path(), format!("{}{SHA}{}", s.create_path, path_tail(s)));
            assert!(header(req, "user-agent").starts_with("flux-status/"));
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            let desc = |limit: usize| -> String {
                status(state)
                    .description
                    .chars()
                    .take(limit - 1)
                    .collect::<String>()
                    + "…"
            };
            let want = match s.provider.name {
                "github" => {
                    assert_eq!(header(req, "authorization"), "Bearer ghp_test");
                    assert_eq!(header(req, "x-github-api-version"), "2022-11-28");
                    let st = ["pending", "success", "failure", "error"][state as usize];
                    json!({"state": st, "context": "flux-status/dev/sync", "description": desc(140), "target_url": TARGET})
                }
                "gitlab" => {
                    assert_eq!(header(req, "private-token"), "glpat-test");
                    let st = ["running", "success", "failed", "canceled"][state as usize];
                    json!({"state": st, "name": "flux-status/dev/sync", "description": desc(255), "target_url": TARGET})
                }
                "azure-devops" => {
                    assert_eq!(header(req, "authorization"), "Basic OmF6ZG8tcGF0LXZhbHVl");
                    assert_eq!(req.url.query(), Some("api-version=7.1"));
                    let st = ["pending", "succeeded", "failed", "notApplicable"][state as usize];
                    json!({"state": st, "description": desc(400), "targetUrl": TARGET,
                           "context": {"genre": "flux-status", "name": "dev/sync"}})
                }
                "bitbucket" => {
                    assert_eq!(header(req, "authorization"), "Bearer bb-access-token");
                    let st = ["INPROGRESS", "SUCCESSFUL", "FAILED", "STOPPED"][state as usize];
                    json!({"type": "commitstatus", "key": "flux-status/dev/sync", "state": st,
                           "name": "flux-status/dev/sync", "description": desc(255), "url": TARGET})
                }
                "bitbucket-server" => {
                    // base64("jdoe:bbs-token")
                    assert_eq!(header(req, "authorization"), "Basic amRvZTpiYnMtdG9rZW4=");
                    assert_eq!(header(req, "x-atlassian-token"), "no-check");
                    let st = ["INPROGRESS", "SUCCESSFUL", "FAILED", "CANCELLED"][state as usize];
                    json!({"key": "flux-status/dev/sync", "state": st, "url": TARGET,
                           "name": "flux-status/dev/sync", "description": desc(255)})
                }
                "gitea" | "forgejo" => {
                    assert_eq!(header(req, "authorization"), format!("token {}", s.credential));
                    // pending is written too; canceled is `error`, never `warning`.
                    let st = ["pending", "success", "failure", "error"][state as usize];
                    // The description fits whole: their limit is far above it.
                    json!({"state": st, "context": "flux-status/dev/sync",
                           "description": status(state).description, "target_url": TARGET})
                }
                other => panic!("{other}: no request written for it here"),
            };
            assert_eq!(body, want, "{} {state}", s.provider.name);
        }
    }
}

type Expect = Result<(), (Retry, Reason)>;

#[tokio::test]
async fn every_error_answer_is_classified() {
    use Reason::{Conflict, Forbidden, Invalid, NotFound, ServerError, Unauthorized};
    use Retry::{Permanent, Transient};
    const LIMITED: (Retry, Reason) = (Retry::RateLimited, Reason::RateLimited);
    let json_err = |msg: &str| json!({ "message": msg });
    // (provider or None for all, answer, expected classification)
    let cases: Vec<(Option<&str>, ResponseTemplate, Expect)> = vec![
        (None, ResponseTemplate::new(401).set_body_json(json_err("401 Unauthorized")), Err((Permanent, Unauthorized))),
        (None, ResponseTemplate::new(404).set_body_json(json_err("404 Project Not Found")), Err((Permanent, NotFound))),
        (None, ResponseTemplate::new(422).set_body_json(json_err("Validation Failed")), Err((Permanent, Invalid))),
        (None, ResponseTemplate::new(400).set_body_json(json_err("state is invalid")), Err((Permanent, Invalid))),
        (None, ResponseTemplate::new(429).insert_header("retry-after", "3"), Err(LIMITED)),
        (None, ResponseTemplate::new(500), Err((Transient, ServerError))),
        (None, ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"), Err((Transient, ServerError))),
        (None, ResponseTemplate::new(503).insert_header("retry-after", "1"), Err((Transient, ServerError))),
        (None, ResponseTemplate::new(409).set_body_json(json_err("Another update to this commit status is in progress")), Err((Transient, Conflict))),
        (Some("github"), ResponseTemplate::new(403).set_body_json(json_err("Resource not accessible by personal access token")), Err((Permanent, Forbidden))),
        (Some("github"), ResponseTemplate::new(403).insert_header("x-ratelimit-remaining", "0").insert_header("x-ratelimit-reset", "1").set_body_json(json_err("API rate limit exceeded")), Err(LIMITED)),
        (Some("github"), ResponseTemplate::new(403).insert_header("retry-after", "60").set_body_json(json_err("You have exceeded a secondary rate limit")), Err(LIMITED)),
        (Some("gitlab"), ResponseTemplate::new(403).set_body_json(json_err("403 Forbidden")), Err((Permanent, Forbidden))),
        (Some("gitlab"), ResponseTemplate::new(400).set_body_json(json_err("Cannot transition status via :run from :running")), Ok(())),
        (Some("gitlab"), ResponseTemplate::new(400).set_body_json(json_err("Cannot transition status via :enqueue from :pending")), Ok(())),
        (Some("gitlab"), ResponseTemplate::new(429).insert_header("RateLimit-Remaining", "0").insert_header("RateLimit-Reset", "1"), Err(LIMITED)),
        (Some("gitea"), ResponseTemplate::new(403).set_body_json(gitea_error("token does not have at least one of required scope(s): [write:repository]")), Err((Permanent, Forbidden))),
        (Some("forgejo"), ResponseTemplate::new(403).set_body_json(gitea_error("token does not have at least one of required scope(s): [write:repository]")), Err((Permanent, Forbidden))),
        (Some("gitea"), ResponseTemplate::new(401).set_body_json(gitea_error("user does not exist [uid: 0, name: ]")), Err((Permanent, Unauthorized))),
        (Some("forgejo"), ResponseTemplate::new(404).set_body_json(gitea_error("The target couldn't be found.")), Err((Permanent, NotFound))),
        (Some("forgejo"), ResponseTemplate::new(429).insert_header("retry-after", "5").set_body_string("Too Many Requests"), Err(LIMITED)),
        (Some("gitea"), ResponseTemplate::new(500).set_body_json(gitea_error("GetCommit: database is locked")), Err((Transient, ServerError))),
        (Some("azure-devops"), ResponseTemplate::new(203).set_body_raw("<html>Sign in</html>", "text/html"), Err((Permanent, Unauthorized))),
        (Some("azure-devops"), ResponseTemplate::new(404).set_body_json(json!({"$id":"1","message":"TF401019: The Git repository with name or identifier gitops does not exist","typeKey":"GitRepositoryNotFoundException","errorCode":0})), Err((Permanent, NotFound))),
        (Some("bitbucket"), ResponseTemplate::new(400).set_body_json(json!({"type":"error","error":{"message":"key: Ensure this value has at most 40 characters (it has 48).","fields":{"key":["Ensure this value has at most 40 characters (it has 48)."]}}})), Err((Permanent, Invalid))),
        (Some("bitbucket"), ResponseTemplate::new(401).set_body_json(json!({"type":"error","error":{"message":"Token is invalid, expired, or not supported for this endpoint."}})), Err((Permanent, Unauthorized))),
        (Some("bitbucket"), ResponseTemplate::new(403).set_body_json(json!({"type":"error","error":{"message":"Your credentials lack one or more required privilege scopes.","detail":{"granted":["account"],"required":["repository"]}}})), Err((Permanent, Forbidden))),
        (Some("bitbucket"), ResponseTemplate::new(429).set_body_string("Rate limit for this resource has been exceeded"), Err(LIMITED)),
        (Some("bitbucket-server"), ResponseTemplate::new(401).set_body_json(json!({"errors":[{"context":null,"message":"Authentication failed. Please check your credentials and try again.","exceptionName":"com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException"}]})), Err((Permanent, Unauthorized))),
        (Some("bitbucket-server"), ResponseTemplate::new(404).set_body_json(json!({"errors":[{"context":null,"message":"Repository PROJ/app does not exist.","exceptionName":"com.atlassian.bitbucket.repository.NoSuchRepositoryException"}]})), Err((Permanent, NotFound))),
        (Some("bitbucket-server"), ResponseTemplate::new(400).set_body_json(json!({"errors":[{"context":"state","message":"The build status state is invalid","exceptionName":null}]})), Err((Permanent, Invalid))),
    ];
    for s in &PROVIDERS {
        for (only, answer, want) in &cases {
            if only.is_some_and(|p| p != s.provider.name) {
                continue;
            }
            let fake = Fake::start(answer.clone(), vec![]).await;
            let got = notifier(s, &fake.uri(), Duration::from_secs(5))
                .write(&status(State::Succeeded), None)
                .await
                .map(drop)
                .map_err(|e| (e.retry, e.reason));
            assert_eq!(
                &got,
                want,
                "{} answered {:?}",
                s.provider,
                fake.requests().await.len()
            );
        }
        // The provider's own message reaches the error, for the log line.
        let fake = Fake::start(
            ResponseTemplate::new(422).set_body_json(json_err("description is too long")),
            vec![],
        )
        .await;
        let e = notifier(s, &fake.uri(), Duration::from_secs(5))
            .write(&status(State::Failed), None)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("description is too long") && e.status == Some(422),
            "{e}"
        );
        // Retry-After is carried to delivery.
        let fake = Fake::start(
            ResponseTemplate::new(429).insert_header("retry-after", "7"),
            vec![],
        )
        .await;
        let e = notifier(s, &fake.uri(), Duration::from_secs(5))
            .write(&status(State::Failed), None)
            .await
            .unwrap_err();
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)), "{}", s.provider.name);
    }
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_transient() {
    for s in &PROVIDERS {
        let slow = Fake::start(created(s).set_delay(Duration::from_secs(3)), vec![]).await;
        let e = notifier(s, &slow.uri(), Duration::from_millis(300))
            .write(&status(State::Pending), None)
            .await
            .unwrap_err();
        assert_eq!(
            (e.retry, e.reason),
            (Retry::Transient, Reason::Timeout),
            "{}: {e}",
            s.provider
        );

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = notifier(s, &format!("http://{addr}"), Duration::from_secs(2))
            .write(&status(State::Pending), None)
            .await
            .unwrap_err();
        assert_eq!(
            (e.retry, e.reason),
            (Retry::Transient, Reason::Connect),
            "{}: {e}",
            s.provider
        );
        assert!(!e.to_string().contains(s.credential), "credential in error: {e}");
    }
}

#[tokio::test]
async fn the_daemon_writes_through_each_provider_with_its_own_credential() {
    // (setup, extra args)
    let runs: [(&Setup, &[&str]); 7] = [
        (&PROVIDERS[0], &[]),
        // Self-managed GitLab: the host says nothing, so --provider decides.
        (&PROVIDERS[1], &["--provider", "gitlab"]),
        (&PROVIDERS[2], &[]),
        (&PROVIDERS[3], &[]),
        // Bitbucket Server is self-hosted only.
        (&PROVIDERS[4], &["--provider", "bitbucket-server"]),
        (&PROVIDERS[5], &["--provider", "gitea"]),
        // codeberg.org is Forgejo's.
        (&PROVIDERS[6], &[]),
    ];
    for (s, extra) in runs {
        let env = s.provider.credential.env;
        let spec = Spec::load(s.spec);
        let fake = Fake::start(created(s), vec![]).await;
        let api = format!("{}{}", fake.uri(), s.api_suffix);
        let mut args = vec!["--git-url", s.git_url, "--instance", "dev", "--api-url", &api];
        args.extend_from_slice(extra);
        // Every other provider's credential is set too: only the chosen one may be used.
        let others: Vec<(&str, &str)> = notifiers::PROVIDERS
            .iter()
            .map(|p| p.credential.env)
            .map(|k| {
                (
                    k,
                    if k == env {
                        s.credential
                    } else {
                        "wrong-credential"
                    },
                )
            })
            .collect();
        let daemon = support::Daemon::start(&args, &others).await;
        let (code, _) = support::post_as_fluxd(
            &daemon.url("/v6/events"),
            support::compact("v1/event-sync-errors.json"),
            None,
        )
        .await;
        assert_eq!(code, 202);
        let reqs = fake.expect_exactly(1, Duration::from_millis(300)).await;
        assert_eq!(check_against_spec(&spec, &reqs[0]), s.create_op);
        let raw = format!("{:?}", reqs[0].headers);
        assert!(
            !raw.contains("wrong-credential"),
            "{}: another provider's credential was sent",
            s.provider
        );
        let logs = serde_json::to_string(&daemon.logs()).unwrap();
        assert!(
            !logs.contains(s.credential),
            "{}: credential in logs",
            s.provider.name
        );
    }
}

fn bitbucket() -> [&'static Setup; 2] {
    [&PROVIDERS[3], &PROVIDERS[4]]
}

#[tokio::test]
async fn bitbucket_cloud_keys_a_long_check_name_and_links_to_the_commit() {
    let s = &PROVIDERS[3];
    let long = "flux-status/production-eu-west-1/kustomization/flux-system/apps";
    let fake = Fake::start(created(s), vec![]).await;
    let n = notifier(s, &fake.uri(), Duration::from_secs(5));
    let mut st = status(State::Succeeded);
    st.check = Check::new(long);
    st.target_url = None;
    n.write(&st, None).await.unwrap();
    let reqs = fake.expect_exactly(1, Duration::from_millis(50)).await;
    check_against_spec(&Spec::load(s.spec), &reqs[0]);
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    let key = body["key"].as_str().unwrap();
    assert_eq!(key.chars().count(), 40, "{key}");
    assert!(key.starts_with("flux-status/production-eu-wes-"), "{key}");
    assert_eq!(body["name"], long, "the full check name is shown");
    // Bitbucket requires a URL: the commit's page when no --target-url is given.
    assert_eq!(
        body["url"],
        format!("https://bitbucket.org/acme/app/commits/{SHA}")
    );

    // Read back, the key maps to the check name; another tool's status that shows
    // the same name under its own key is not ours.
    let listed = json!({"pagelen": 100, "page": 1, "size": 3, "values": [
        bitbucket_cloud_status("BAMBOO-DEPLOY", "FAILED"),
        bitbucket_cloud_status(key, "SUCCESSFUL"),
        bitbucket_cloud_status("ci/build", "INPROGRESS"),
    ]});
    let mut listed = listed;
    listed["values"][0]["name"] = json!(long);
    listed["values"][1]["name"] = json!(long);
    Spec::load(s.spec)
        .operation(
            "GET",
            &format!("/2.0/repositories/acme/app/commit/{SHA}/statuses"),
        )
        .unwrap()
        .validate_response(200, &listed)
        .unwrap();
    let reader = Fake::start(ResponseTemplate::new(500), vec![]).await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(listed))
        .with_priority(1)
        .mount(&reader.server)
        .await;
    let got = notifier(s, &reader.uri(), Duration::from_secs(5))
        .list_statuses(&Sha::parse(SHA).unwrap())
        .await
        .unwrap();
    let checks: Vec<(&str, State)> = got.iter().map(|r| (r.check.as_str(), r.state)).collect();
    assert_eq!(
        checks,
        [
            ("BAMBOO-DEPLOY", State::Failed),
            (long, State::Succeeded),
            ("ci/build", State::Pending)
        ]
    );
}

#[tokio::test]
async fn bitbucket_credentials_go_as_basic_or_bearer() {
    for s in bitbucket() {
        for (credential, want) in [
            ("ATCTT3xFfGN0-bare-token", "Bearer ATCTT3xFfGN0-bare-token"),
            // base64("jdoe@example.com:api:token"): only the first ':' splits.
            (
                "jdoe@example.com:api:token",
                "Basic amRvZUBleGFtcGxlLmNvbTphcGk6dG9rZW4=",
            ),
        ] {
            let fake = Fake::start(created(s), vec![]).await;
            notifier_with(s, &fake.uri(), credential, Duration::from_secs(5))
                .write(&status(State::Pending), None)
                .await
                .unwrap();
            let reqs = fake.expect_exactly(1, Duration::from_millis(50)).await;
            assert_eq!(header(&reqs[0], "authorization"), want, "{}", s.provider.name);
        }
    }
}

#[tokio::test]
async fn bitbucket_credential_check_reads_the_repository() {
    let paths = [
        "/2.0/repositories/acme/app",
        "/rest/api/latest/projects/PROJ/repos/app",
    ];
    for (s, path) in bitbucket().into_iter().zip(paths) {
        let fake = Fake::start(created(s), vec![]).await;
        notifier(s, &fake.uri(), Duration::from_secs(5))
            .check_credentials()
            .await
            .unwrap();
        let reqs = fake.server.received_requests().await.unwrap();
        assert_eq!(
            reqs.iter()
                .map(|r| (r.method.as_str(), r.url.path()))
                .collect::<Vec<_>>(),
            [("GET", path)],
            "{}",
            s.provider.name
        );

        let refused = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(401).set_body_json(json!({"message": "Unauthorized"})))
            .mount(&refused)
            .await;
        let e = notifier(s, &refused.uri(), Duration::from_secs(5))
            .check_credentials()
            .await
            .unwrap_err();
        assert_eq!((e.retry, e.reason), (Retry::Permanent, Reason::Unauthorized));
        assert!(!e.to_string().contains(s.credential), "{e}");
    }
}

/// Log lines a test's notifier emits, as text.
fn capture_logs() -> (Arc<std::sync::Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn bitbucket_server_without_the_builds_api_writes_to_the_legacy_one_and_says_so_once() {
    let s = &PROVIDERS[4];
    let (logs, _guard) = capture_logs();
    // Before 7.4 the path does not exist: a 404 that names no repository.
    let fake = Fake::start(
        ResponseTemplate::new(204),
        vec![ResponseTemplate::new(404).set_body_raw("<html><body>Not Found</body></html>", "text/html")],
    )
    .await;
    // Under a context path, as the git URL has it.
    let n = notifier_with(
        s,
        &format!("{}/bitbucket", fake.uri()),
        "bbs-token",
        Duration::from_secs(5),
    );
    n.write(&status(State::Pending), None).await.unwrap();
    n.write(&status(State::Canceled), None).await.unwrap();
    let reqs = fake.expect_exactly(3, Duration::from_millis(50)).await;
    let paths: Vec<&str> = reqs.iter().map(|r| r.url.path()).collect();
    let legacy = format!("/bitbucket/rest/build-status/1.0/commits/{SHA}");
    assert_eq!(
        paths,
        [
            format!("/bitbucket/rest/api/latest/projects/PROJ/repos/app/commits/{SHA}/builds"),
            legacy.clone(),
            legacy
        ]
    );
    let spec = Spec::load(s.spec);
    for r in &reqs[1..] {
        let mut at_spec_root = r.clone();
        at_spec_root
            .url
            .set_path(r.url.path().trim_start_matches("/bitbucket"));
        assert_eq!(check_against_spec(&spec, &at_spec_root), "addBuildStatus");
        assert_eq!(header(r, "x-atlassian-token"), "no-check");
    }
    // Servers without the newer API know three states: canceled is written as failed.
    let states: Vec<Value> = reqs
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["state"].clone())
        .collect();
    assert_eq!(states, ["INPROGRESS", "INPROGRESS", "FAILED"]);
    assert_eq!(n.reads_back_as(State::Canceled), State::Failed);
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("legacy /rest/build-status/1.0").count(), 1, "{text}");
}

#[tokio::test]
async fn bitbucket_server_missing_repository_is_not_a_missing_api() {
    let s = &PROVIDERS[4];
    let fake = Fake::start(
        ResponseTemplate::new(404).set_body_json(json!({"errors": [{"context": null,
            "message": "Repository PROJ/app does not exist.",
            "exceptionName": "com.atlassian.bitbucket.repository.NoSuchRepositoryException"}]})),
        vec![],
    )
    .await;
    let n = notifier(s, &fake.uri(), Duration::from_secs(5));
    let e = n.write(&status(State::Succeeded), None).await.unwrap_err();
    assert_eq!((e.retry, e.reason), (Retry::Permanent, Reason::NotFound));
    assert!(e.message.contains("Repository PROJ/app does not exist"), "{e}");
    // Not written to the legacy API, which would take any commit of any repository.
    fake.expect_exactly(1, Duration::from_millis(200)).await;
    assert_eq!(n.reads_back_as(State::Canceled), State::Canceled);
}

/// The limits each Bitbucket module enforces are the ones its API documents.
#[test]
fn bitbucket_limits_are_the_documented_ones() {
    use notifiers::bitbucket::{DESCRIPTION_LIMIT, NAME_LIMIT, URL_LIMIT, cloud, server};
    let read = |name: &str| -> Value {
        serde_json::from_slice(&support::fixture(&format!("specs/{name}.json"))).unwrap()
    };
    let dc = read("bitbucket-datacenter");
    let set = &dc["components"]["schemas"]["RestBuildStatusSetRequest"]["properties"];
    assert_eq!(set["key"]["maxLength"], server::KEY_LIMIT);
    assert_eq!(set["name"]["maxLength"], NAME_LIMIT);
    assert_eq!(set["url"]["maxLength"], URL_LIMIT);
    // The legacy API, which a server before 7.4 only has, limits the description.
    let legacy = dc["paths"]["/build-status/latest/commits/{commitId}"]["post"]["description"]
        .as_str()
        .unwrap();
    assert!(
        legacy.contains("limited to 255 characters") && DESCRIPTION_LIMIT == 255,
        "{legacy}"
    );
    // Cloud's key limit is in its answer, not its spec: the copy records it.
    let cloud_notes = read("bitbucket")["x-extracted"].to_string();
    assert!(cloud_notes.contains("at most 40 characters") && cloud::KEY_LIMIT == 40);
    for spec in [&cloud::SPEC, &server::SPEC] {
        assert_eq!(spec.limits.description, DESCRIPTION_LIMIT, "{}", spec.name);
        assert_eq!(spec.limits.context, Some(NAME_LIMIT), "{}", spec.name);
    }
}

/// Gitea and Forgejo live under a sub-path on many servers: the API base comes from
/// the git URL with the sub-path kept, and `--api-url` takes the origin with it.
#[tokio::test]
async fn gitea_and_forgejo_find_their_api_under_the_servers_sub_path() {
    for s in PROVIDERS
        .iter()
        .filter(|s| s.spec == "gitea" || s.spec == "forgejo")
    {
        let spec = Spec::load(s.spec);
        let fake = Fake::start(created(s), vec![]).await;
        let git_url = format!("{}/forge/acme/app.git", fake.uri());
        let client = notifiers::http::client(&HttpConfig::default()).unwrap();
        let token = || SecretString::from(s.credential.to_string());
        let base = format!("{}/forge", fake.uri());
        let api_v1 = format!("{base}/api/v1/");
        for api_url in [None, Some(base.as_str()), Some(api_v1.as_str())] {
            let url = GitUrl::parse(&git_url).unwrap();
            let n = s
                .provider
                .provider()
                .notifier(client.clone(), &url, api_url, token())
                .unwrap();
            n.write(&status(State::Pending), None).await.unwrap();
        }
        let reqs = fake.expect_exactly(3, Duration::from_millis(50)).await;
        for req in &reqs {
            let path = req.url.path();
            assert_eq!(
                path,
                format!("/forge/api/v1/repos/acme/app/statuses/{SHA}"),
                "{}",
                s.spec
            );
            let op = spec
                .operation("POST", path.strip_prefix("/forge").unwrap())
                .unwrap();
            assert_eq!(op.id, "repoCreateStatus");
        }
    }
}

/// The start-up check reads the repository with the token, and wants push
/// permission: a read-only user (or, on older servers, an unknown token reading a
/// public repository anonymously) is refused as well as a 401.
#[tokio::test]
async fn gitea_and_forgejo_credential_checks_want_push_permission() {
    use wiremock::matchers::{header as has_header, method, path};
    let repo = |push: bool| {
        json!({"id": 7, "name": "app", "full_name": "acme/app", "private": false,
               "permissions": {"admin": false, "push": push, "pull": true}})
    };
    let cases: Vec<(ResponseTemplate, Expect)> = vec![
        (ResponseTemplate::new(200).set_body_json(repo(true)), Ok(())),
        (
            ResponseTemplate::new(200).set_body_json(repo(false)),
            Err((Retry::Permanent, Reason::Forbidden)),
        ),
        (
            ResponseTemplate::new(401).set_body_json(gitea_error("invalid username, password or token")),
            Err((Retry::Permanent, Reason::Unauthorized)),
        ),
        (
            ResponseTemplate::new(404).set_body_json(gitea_error("The target couldn't be found.")),
            Err((Retry::Permanent, Reason::NotFound)),
        ),
        (
            ResponseTemplate::new(503),
            Err((Retry::Transient, Reason::ServerError)),
        ),
    ];
    for s in PROVIDERS
        .iter()
        .filter(|s| s.spec == "gitea" || s.spec == "forgejo")
    {
        for (answer, want) in &cases {
            let server = wiremock::MockServer::start().await;
            wiremock::Mock::given(method("GET"))
                .and(path("/api/v1/repos/acme/app"))
                .and(has_header(
                    "authorization",
                    format!("token {}", s.credential).as_str(),
                ))
                .respond_with(answer.clone())
                .expect(1)
                .mount(&server)
                .await;
            let got = notifier(s, &server.uri(), Duration::from_secs(5))
                .check_credentials()
                .await;
            if let Err(e) = &got {
                assert!(!e.to_string().contains(s.credential), "credential in error: {e}");
            }
            assert_eq!(&got.map_err(|e| (e.retry, e.reason)), want, "{}", s.spec);
            server.verify().await;
        }
    }
}
