//! flux-status-cli against provider fakes that page like the real APIs and hold
//! hundreds of statuses from other tools and other instances.

use crate::support;

use serde_json::{Value, json};
use std::process::Command;
use std::sync::{Arc, Mutex};
use support::openapi::Spec;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

const SHA: &str = "4997efcd4ac6255604d0d44eeb7085c5b0eb9d48";

#[derive(Clone, Copy, PartialEq, Debug)]
enum P {
    GitHub,
    GitLab,
    Azure,
    Bitbucket,
    BitbucketServer,
    Gitea,
    Forgejo,
}

impl P {
    fn all() -> [P; 7] {
        [
            P::GitHub,
            P::GitLab,
            P::Azure,
            P::Bitbucket,
            P::BitbucketServer,
            P::Gitea,
            P::Forgejo,
        ]
    }

    /// Bitbucket keeps one status per key: a new state of a check replaces the old.
    fn one_status_per_check(self) -> bool {
        matches!(self, P::Bitbucket | P::BitbucketServer)
    }

    fn args(self, api: &str) -> Vec<String> {
        let (url, api) = match self {
            P::GitHub => ("https://github.com/acme/app", api.to_string()),
            P::GitLab => ("https://gitlab.com/acme/platform/app", api.to_string()),
            P::Azure => (
                "https://dev.azure.com/acme/Platform/_git/gitops",
                format!("{api}/acme"),
            ),
            P::Bitbucket => ("https://jdoe@bitbucket.org/acme/app.git", api.to_string()),
            P::BitbucketServer => ("ssh://git@git.example.com:7999/proj/app.git", api.to_string()),
            // A self-hosted Gitea needs --provider; the fake stands in for its origin.
            P::Gitea => ("git@git.example.com:acme/app.git", api.to_string()),
            P::Forgejo => ("https://codeberg.org/acme/app.git", api.to_string()),
        };
        let mut args = vec![
            "--git-url".into(),
            url.into(),
            "--api-url".into(),
            api,
            "--commit-id".into(),
            SHA.into(),
        ];
        if self == P::BitbucketServer {
            args.extend(["--provider".into(), "bitbucket-server".into()]);
        }
        if self == P::Gitea {
            args.extend(["--provider".into(), "gitea".into()]);
        }
        args
    }

    fn credential_env(self) -> (&'static str, &'static str) {
        match self {
            P::GitHub => ("GITHUB_TOKEN", "ghp_cli_secret"),
            P::GitLab => ("GITLAB_TOKEN", "glpat_cli_secret"),
            P::Azure => ("AZDO_PAT", "azdo_cli_secret"),
            P::Bitbucket => ("BITBUCKET_TOKEN", "bb_cli_secret"),
            P::BitbucketServer => ("BITBUCKET_SERVER_TOKEN", "jdoe:bbs_cli_secret"),
            P::Gitea => ("GITEA_TOKEN", "gitea_cli_secret"),
            P::Forgejo => ("FORGEJO_TOKEN", "forgejo_cli_secret"),
        }
    }

    fn spec(self) -> Spec {
        Spec::load(match self {
            P::GitHub => "github",
            P::GitLab => "gitlab",
            P::Azure => "azuredevops",
            P::Bitbucket => "bitbucket",
            P::BitbucketServer => "bitbucket-datacenter",
            P::Gitea => "gitea",
            P::Forgejo => "forgejo",
        })
    }

    /// One status as this provider lists it; `state` is ours, given in its words.
    fn entry(self, id: i64, check: &str, state: &str) -> Value {
        let word = |gh: &str, gl: &str, az: &str, bb: &str, bbs: &str| match self {
            P::GitHub | P::Gitea | P::Forgejo => gh.to_string(),
            P::GitLab => gl.to_string(),
            P::Azure => az.to_string(),
            P::Bitbucket => bb.to_string(),
            P::BitbucketServer => bbs.to_string(),
        };
        let st = match state {
            "pending" => word("pending", "running", "pending", "INPROGRESS", "INPROGRESS"),
            "succeeded" => word("success", "success", "succeeded", "SUCCESSFUL", "SUCCESSFUL"),
            "failed" => word("failure", "failed", "failed", "FAILED", "FAILED"),
            "error" => word("error", "canceled", "notApplicable", "STOPPED", "CANCELLED"),
            other => other.to_string(),
        };
        let at = "2026-11-22T10:00:00Z";
        match self {
            P::GitHub => {
                json!({"url": "https://api.github.com/x", "avatar_url": null, "id": id, "node_id": "n",
                "state": st, "description": "d", "target_url": null, "context": check,
                "created_at": at, "updated_at": at, "creator": null})
            }
            P::GitLab => json!({"id": id, "sha": SHA, "ref": "main", "status": st, "name": check,
                "description": "d", "created_at": at, "allow_failure": false}),
            P::Azure => {
                let context = match check.split_once('/') {
                    Some((genre, name)) if genre == "flux-status" => json!({"genre": genre, "name": name}),
                    // Other tools often set no genre at all.
                    _ => json!({"name": check}),
                };
                json!({"id": id, "state": st, "description": "d", "context": context, "creationDate": at})
            }
            P::Bitbucket => {
                let at = format!("2026-11-22T10:{:02}:{:02}.000000+00:00", id / 60 % 60, id % 60);
                json!({"type": "commitstatus", "key": check, "name": check, "state": st, "description": "d",
                       "url": "https://ci.example.com/1", "created_on": at, "updated_on": at,
                       "uuid": format!("{{00000000-0000-0000-0000-{id:012}}}")})
            }
            P::BitbucketServer => json!({"key": check, "name": check, "state": st, "description": "d",
                "url": "https://ci.example.com/1", "createdDate": 1_795_000_000_000_i64 + id,
                "updatedDate": 1_795_000_000_000_i64 + id}),
            // The state comes back as `status`.
            P::Gitea | P::Forgejo => json!({"id": id, "status": st, "context": check, "description": "d",
                "target_url": "", "url": "https://git.example.com/api/v1/repos/acme/app/statuses/x",
                "created_at": at, "updated_at": at}),
        }
    }
}

/// Serves snapshots of a commit's statuses, paged as the provider pages; each new
/// listing (a request for the first page) moves to the next snapshot.
#[derive(Clone)]
struct Listing {
    p: P,
    /// Oldest first, as they were created.
    snapshots: Arc<Vec<Vec<Value>>>,
    listings: Arc<Mutex<usize>>,
    errors_first: Arc<Mutex<Vec<ResponseTemplate>>>,
    /// The fake's own address, for `Link` headers (wiremock reports `localhost`).
    base: String,
}

impl Respond for Listing {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        if let Some(e) = self.errors_first.lock().unwrap().pop() {
            return e;
        }
        let q = |k: &str| {
            req.url
                .query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string())
        };
        let num = |k: &str, d: usize| q(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let first = match self.p {
            P::GitHub | P::GitLab | P::Bitbucket | P::Gitea | P::Forgejo => num("page", 1) == 1,
            P::Azure => num("skip", 0) == 0,
            P::BitbucketServer => num("start", 0) == 0,
        };
        let n = {
            let mut l = self.listings.lock().unwrap();
            if first {
                *l += 1;
            }
            (*l).clamp(1, self.snapshots.len()) - 1
        };
        let mut all = self.snapshots[n].clone();
        if self.p.one_status_per_check() {
            // A newer status of a key replaces the older, and is updated last.
            let mut kept: Vec<Value> = Vec::new();
            for s in all {
                kept.retain(|k| k["key"] != s["key"]);
                kept.push(s);
            }
            all = kept;
        }
        match self.p {
            // GitHub lists newest first; GitLab and Bitbucket Cloud sort as asked;
            // Azure and Bitbucket Server list oldest first here.
            P::GitHub => all.reverse(),
            P::GitLab if q("sort").as_deref() == Some("desc") => all.reverse(),
            P::Bitbucket if q("sort").as_deref() == Some("-updated_on") => all.reverse(),
            P::Gitea | P::Forgejo if q("sort").as_deref() == Some("highestindex") => all.reverse(),
            _ => {}
        }
        let (start, size) = match self.p {
            P::GitHub | P::GitLab => {
                let size = num("per_page", 30).min(100);
                ((num("page", 1) - 1) * size, size)
            }
            P::Azure => (num("skip", 0), num("top", 1000)),
            P::Bitbucket => {
                let size = num("pagelen", 10).min(100);
                ((num("page", 1) - 1) * size, size)
            }
            P::BitbucketServer => (num("start", 0), num("limit", 25).min(1000)),
            // The server gives at most MAX_RESPONSE_ITEMS (50) whatever `limit` asks.
            P::Gitea | P::Forgejo => {
                let size = num("limit", 30).clamp(1, 50);
                ((num("page", 1).max(1) - 1) * size, size)
            }
        };
        let page: Vec<Value> = all.iter().skip(start).take(size).cloned().collect();
        let more = start + size < all.len();
        let next_page = start / size.max(1) + 2;
        let mut resp = ResponseTemplate::new(200);
        match self.p {
            P::GitHub => {
                if more {
                    let mut next = req.url.clone();
                    let base = url::Url::parse(&self.base).unwrap();
                    next.set_host(base.host_str()).unwrap();
                    next.set_port(base.port()).unwrap();
                    next.query_pairs_mut()
                        .clear()
                        .append_pair("per_page", &size.to_string())
                        .append_pair("page", &next_page.to_string());
                    resp = resp.insert_header("link", format!("<{next}>; rel=\"next\"").as_str());
                }
                resp.set_body_json(page)
            }
            P::GitLab => {
                let next = if more {
                    next_page.to_string()
                } else {
                    String::new()
                };
                resp.insert_header("x-next-page", next.as_str())
                    .insert_header("x-page", (next_page - 1).to_string().as_str())
                    .insert_header("x-per-page", size.to_string().as_str())
                    .set_body_json(page)
            }
            P::Azure => resp.set_body_json(json!({"count": page.len(), "value": page})),
            P::Bitbucket => {
                let mut body =
                    json!({"pagelen": size, "page": next_page - 1, "size": all.len(), "values": page});
                if more {
                    let mut next = req.url.clone();
                    let base = url::Url::parse(&self.base).unwrap();
                    next.set_host(base.host_str()).unwrap();
                    next.set_port(base.port()).unwrap();
                    let keep: Vec<(String, String)> = req
                        .url
                        .query_pairs()
                        .filter(|(k, _)| k != "page")
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    next.query_pairs_mut()
                        .clear()
                        .extend_pairs(keep)
                        .append_pair("page", &next_page.to_string());
                    body["next"] = json!(next.to_string());
                }
                resp.set_body_json(body)
            }
            P::BitbucketServer => {
                let mut body = json!({"size": page.len(), "limit": size, "start": start,
                                      "isLastPage": !more, "values": page});
                if more {
                    body["nextPageStart"] = json!(start + size);
                }
                resp.set_body_json(body)
            }
            P::Gitea | P::Forgejo => {
                // Links name the server by its ROOT_URL, which need not be the
                // address the client used (a proxy, a cluster-internal service).
                let link = |page: usize, rel: &str| {
                    format!(
                        "<https://git.example.com/api/v1{}?limit={size}&page={page}>; rel=\"{rel}\"",
                        req.url.path().trim_start_matches("/api/v1")
                    )
                };
                let last = all.len().div_ceil(size).max(1);
                let mut links = vec![link(1, "first"), link(last, "last")];
                if more {
                    links.insert(0, link(next_page, "next"));
                }
                resp.insert_header("link", links.join(", ").as_str())
                    .insert_header("x-total-count", all.len().to_string().as_str())
                    .set_body_json(page)
            }
        }
    }
}

struct Fake {
    server: MockServer,
}

impl Fake {
    async fn start(p: P, snapshots: Vec<Vec<Value>>, errors_first: Vec<ResponseTemplate>) -> Fake {
        let server = MockServer::start().await;
        let listing = Listing {
            p,
            snapshots: Arc::new(snapshots),
            listings: Arc::default(),
            errors_first: Arc::new(Mutex::new(errors_first)),
            base: server.uri(),
        };
        Mock::given(any()).respond_with(listing).mount(&server).await;
        Fake { server }
    }
}

/// Hundreds of statuses from other tools and other instances, plus look-alikes the
/// original CLI's `&&` filter matched, around the ones that matter.
fn busy_commit(p: P, mine: &[(&str, &str)]) -> Vec<Value> {
    let mut v = Vec::new();
    let mut id = 1000;
    let mut push = |check: &str, state: &str| {
        id += 1;
        v.push(p.entry(id, check, state));
    };
    for i in 0..(if p == P::Azure { 700 } else { 230 }) {
        // Where a build's key is its own status, every build has its own key.
        let build = if p.one_status_per_check() { i } else { i % 7 };
        push(&format!("ci/build-{build}"), "succeeded");
    }
    push("flux-status/dev/workload", "succeeded"); // older than the failure below
    for (check, state) in mine {
        push(check, state);
    }
    push("flux-status/prod/workload", "succeeded"); // other instance
    push("flux-status/dev/sync", "succeeded"); // same instance, other action
    push("deploy/dev/workload", "pending"); // another tool's 3-part context
    push("flux-status/dev", "failed"); // malformed look-alike
    for i in 0..(if p == P::Azure { 400 } else { 120 }) {
        push(&format!("security/scan-{i}"), "error");
    }
    v
}

fn cli(p: P, api: &str, extra: &[&str]) -> (i32, String, String) {
    let (k, v) = p.credential_env();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flux-status-cli"));
    for s in notifiers::PROVIDERS {
        cmd.env_remove(s.credential.env);
    }
    let out = cmd
        .args(p.args(api))
        .args(extra)
        .env(k, v)
        .output()
        .expect("run flux-status-cli");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stdout.contains(v) && !stderr.contains(v), "credential printed");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

async fn run(p: P, snapshots: Vec<Vec<Value>>, extra: &[&str]) -> (i32, String, String, Vec<Request>) {
    run_scripted(p, snapshots, vec![], extra).await
}

/// [`run`], with the fake answering `errors_first` (last first) before any listing.
async fn run_scripted(
    p: P,
    snapshots: Vec<Vec<Value>>,
    errors_first: Vec<ResponseTemplate>,
    extra: &[&str],
) -> (i32, String, String, Vec<Request>) {
    let fake = Fake::start(p, snapshots, errors_first).await;
    let uri = fake.server.uri();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let result = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        cli(p, &uri, &refs)
    })
    .await
    .unwrap();
    let reqs = fake.server.received_requests().await.unwrap_or_default();
    (result.0, result.1, result.2, reqs)
}

#[tokio::test]
async fn reads_the_newest_status_of_exactly_the_asked_check_across_all_pages() {
    for p in P::all() {
        let commit = busy_commit(p, &[("flux-status/dev/workload", "failed")]);
        // The fake answers in the shape the spec describes.
        let values = json!(commit[..5].to_vec());
        let body = match p {
            P::Bitbucket => json!({"pagelen": 5, "page": 1, "values": values}),
            P::BitbucketServer => {
                json!({"size": 5, "limit": 5, "start": 0, "isLastPage": true, "values": values})
            }
            _ => values,
        };
        let spec = p.spec();
        let list_path = match p {
            P::GitHub => format!("/repos/acme/app/commits/{SHA}/statuses"),
            P::GitLab => format!("/api/v4/projects/acme%2Fplatform%2Fapp/repository/commits/{SHA}/statuses"),
            P::Azure => format!("/acme/Platform/_apis/git/repositories/gitops/commits/{SHA}/statuses"),
            P::Bitbucket => format!("/2.0/repositories/acme/app/commit/{SHA}/statuses"),
            P::BitbucketServer => format!("/rest/build-status/latest/commits/{SHA}"),
            P::Gitea | P::Forgejo => format!("/api/v1/repos/acme/app/commits/{SHA}/statuses"),
        };
        spec.operation("GET", &list_path)
            .unwrap()
            .validate_response(200, &body)
            .unwrap();

        let total = commit.len();
        let (code, out, err, reqs) = run(p, vec![commit], &["--instance", "dev"]).await;
        assert_eq!(
            (code, out.as_str()),
            (
                0,
                "{\"name\":\"flux-status/dev/workload\",\"state\":\"failed\"}\n"
            ),
            "{p:?}: {err}"
        );
        assert!(
            reqs.len() >= 3,
            "{p:?}: all pages read, got {} requests",
            reqs.len()
        );
        if matches!(p, P::Gitea | P::Forgejo) {
            // Page by page, 50 at a time, to the last: no status is left unread.
            let query = |r: &Request, k: &str| {
                r.url
                    .query_pairs()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.into_owned())
            };
            let pages: Vec<Option<String>> = reqs.iter().map(|r| query(r, "page")).collect();
            let want: Vec<Option<String>> = (1..=total.div_ceil(50)).map(|n| Some(n.to_string())).collect();
            assert_eq!(pages, want, "{p:?}");
            assert!(
                reqs.iter().all(|r| query(r, "limit").as_deref() == Some("50")),
                "{p:?}"
            );
        }
        for r in &reqs {
            let op = support::check_against_spec(&spec, r);
            assert!(
                op.to_lowercase().contains("list") || op.starts_with("get"),
                "{p:?}: {op}"
            );
        }

        let (code, out, _, _) = run(
            p,
            vec![busy_commit(p, &[])],
            &["--instance", "dev", "--action", "sync"],
        )
        .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "{\"name\":\"flux-status/dev/sync\",\"state\":\"succeeded\"}\n"),
            "{p:?}"
        );
    }
}

#[tokio::test]
async fn a_missing_check_is_not_found_not_a_neighbour() {
    for p in P::all() {
        // Before the workload status exists, the original answered with the sync status.
        let mut commit = vec![
            p.entry(1, "flux-status/dev/sync", "succeeded"),
            p.entry(2, "deploy/dev/workload", "succeeded"),
        ];
        commit.push(p.entry(3, "flux-status/staging/sync", "failed"));
        let (code, out, err, _) = run(p, vec![commit], &["--instance", "dev"]).await;
        assert_eq!((code, out.as_str()), (1, ""), "{p:?}");
        assert!(err.contains("no status flux-status/dev/workload"), "{p:?}: {err}");
    }
}

#[tokio::test]
async fn all_lists_every_flux_status_check_of_every_instance() {
    for p in P::all() {
        let commit = busy_commit(p, &[("flux-status/dev/workload", "failed")]);
        let (code, out, err, _) = run(p, vec![commit], &["--all"]).await;
        assert_eq!(code, 0, "{p:?}: {err}");
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            got,
            json!([
                {"name": "flux-status/dev", "state": "failed"},
                {"name": "flux-status/dev/sync", "state": "succeeded"},
                {"name": "flux-status/dev/workload", "state": "failed"},
                {"name": "flux-status/prod/workload", "state": "succeeded"},
            ]),
            "{p:?}"
        );
        let (code, out, _, _) = run(
            p,
            vec![vec![p.entry(1, "flux-status/dev/sync", "succeeded")]],
            &["--all", "--output", "text"],
        )
        .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "flux-status/dev/sync succeeded (d)\n"),
            "{p:?}"
        );
    }
}

#[tokio::test]
async fn wait_follows_pending_to_the_final_state() {
    for p in P::all() {
        let pending = vec![p.entry(1, "flux-status/dev/workload", "pending")];
        let ok = vec![
            p.entry(1, "flux-status/dev/workload", "pending"),
            p.entry(2, "flux-status/dev/workload", "succeeded"),
        ];
        let failed = vec![
            p.entry(1, "flux-status/dev/workload", "pending"),
            p.entry(2, "flux-status/dev/workload", "failed"),
        ];
        let wait = [
            "--instance",
            "dev",
            "--wait",
            "--interval",
            "50ms",
            "--timeout",
            "20s",
        ];

        let (code, out, err, _) = run(p, vec![vec![], pending.clone(), pending.clone(), ok], &wait).await;
        assert_eq!(
            (code, out.as_str()),
            (
                0,
                "{\"name\":\"flux-status/dev/workload\",\"state\":\"succeeded\"}\n"
            ),
            "{p:?}: {err}"
        );

        let (code, out, _, _) = run(p, vec![pending.clone(), failed], &wait).await;
        assert_eq!(
            (code, out.as_str()),
            (
                1,
                "{\"name\":\"flux-status/dev/workload\",\"state\":\"failed\"}\n"
            ),
            "{p:?}"
        );

        let short = [
            "--instance",
            "dev",
            "--wait",
            "--interval",
            "50ms",
            "--timeout",
            "400ms",
        ];
        let (code, out, err, reqs) = run(p, vec![pending.clone()], &short).await;
        assert_eq!(
            (code, out.as_str()),
            (
                124,
                "{\"name\":\"flux-status/dev/workload\",\"state\":\"pending\"}\n"
            ),
            "{p:?}"
        );
        assert!(err.contains("timed out"), "{err}");
        assert!(reqs.len() >= 3, "{p:?}: polled {} times", reqs.len());
    }
}

#[tokio::test]
async fn wait_rides_out_rate_limits_and_outages() {
    for p in P::all() {
        let started = std::time::Instant::now();
        let (code, out, err, _) = run_scripted(
            p,
            vec![vec![p.entry(1, "flux-status/dev/sync", "succeeded")]],
            vec![
                ResponseTemplate::new(503),
                ResponseTemplate::new(429).insert_header("retry-after", "1"),
            ],
            &[
                "--instance",
                "dev",
                "--action",
                "sync",
                "--wait",
                "--interval",
                "50ms",
                "--timeout",
                "30s",
            ],
        )
        .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "{\"name\":\"flux-status/dev/sync\",\"state\":\"succeeded\"}\n"),
            "{p:?}: {err}"
        );
        assert!(
            started.elapsed() >= std::time::Duration::from_secs(1),
            "{p:?}: Retry-After not honoured"
        );
        assert!(err.contains("retrying"), "{err}");
    }
}

#[tokio::test]
async fn provider_errors_and_bad_usage_have_their_own_exit_codes() {
    for p in P::all() {
        let (code, out, err, _) = run_scripted(
            p,
            vec![vec![]],
            vec![ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"}))],
            &["--instance", "dev"],
        )
        .await;
        assert_eq!((code, out.as_str()), (3, ""), "{p:?}");
        assert!(
            err.contains("401") && err.contains("Bad credentials"),
            "{p:?}: {err}"
        );
    }
    let (code, _, err) = cli(P::GitHub, "http://127.0.0.1:9", &["--commit-id", "abc123"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--commit-id"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_flux-status-cli"))
        .args(["--git-url", "https://github.com/a/b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "missing --commit-id is a usage error");
    let out = Command::new(env!("CARGO_BIN_EXE_flux-status-cli"))
        .env_remove("GITHUB_TOKEN")
        .args(["--git-url", "https://github.com/a/b", "--commit-id", SHA])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "no credential is a configuration error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("GITHUB_TOKEN"));
}

/// The CLI reads the daemon's target section: each provider's credential flags and
/// variables, and the provider list in --help, come from the registry.
#[test]
fn credential_flags_and_providers_derive_from_the_registry() {
    use clap::CommandFactory;
    let cmd = flux_status::cli::CliArgs::command();
    for s in notifiers::PROVIDERS {
        let c = &s.credential;
        for (long, env) in [(c.flag, c.env), (c.file_flag, c.file_env)] {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .unwrap_or_else(|| panic!("no --{long}"));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env));
            assert_eq!(arg.is_hide_env_values_set(), long == c.flag, "{long}");
        }
    }
    let help = cmd.clone().render_long_help().to_string();
    for s in notifiers::PROVIDERS {
        // Self-hosted-only providers name no host.
        assert!(
            help.contains(s.name) && s.hosts.iter().all(|h| help.contains(h)),
            "{}:\n{help}",
            s.name
        );
    }
    // An alias the old CLI refused.
    let out = Command::new(env!("CARGO_BIN_EXE_flux-status-cli"))
        .env_remove("AZDO_PAT")
        .args([
            "--git-url",
            "https://dev.azure.com/o/p/_git/r",
            "--provider",
            "azdo",
            "--commit-id",
            SHA,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("AZDO_PAT") && !err.contains("invalid value"),
        "{err}"
    );
}
