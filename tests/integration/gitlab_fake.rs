//! A GitLab that keeps deployments as GitLab does (lib/api/deployments.rb,
//! app/models/deployment.rb, app/services/deployments/create_service.rb):
//! - `POST /projects/:id/deployments`: Grape's 400 `{"error": "… is missing"}` or
//!   `"… does not have a valid value"`; the ref must name a branch, a tag or a
//!   commit; the environment is found or made by its name; a deployment starts
//!   `created` and takes the requested status as a transition; a `success` equal to
//!   the environment's last successful deployment answers with that one;
//! - `PUT …/deployments/:deployment_id`: the state machine (`run` only from
//!   `created`/`blocked`, `succeed`/`drop`/`cancel` from any status but their own),
//!   400 `{"message": {"status": ["cannot transition via \"run\""]}}` otherwise; 403
//!   for a deployment a CI job made; 404 for an unknown id;
//! - `GET …/deployments`: `environment` and `status` filters, `order_by`/`sort`,
//!   `per_page` (at most 100) and `page`, with `X-Next-Page`, `X-Total` and `Link`;
//! - `PRIVATE-TOKEN` (or `Authorization: Bearer`), 401 otherwise; `RateLimit-*`
//!   headers on every answer, and 429s on demand.
//!
//! Every request but the project read is checked against tests/fixtures/specs/gitlab.json.
#![allow(dead_code)]

use crate::support::openapi::Spec;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

pub const TOKEN: &str = "glpat-deployments";
/// The project, as its path; requests name it URL-encoded.
pub const PROJECT: &str = "acme/platform/app";
const ENVIRONMENT_NAME_LIMIT: usize = 255;

#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    pub id: u64,
    pub iid: u64,
    pub sha: String,
    pub git_ref: String,
    pub tag: bool,
    pub environment: String,
    pub status: String,
    /// Every status it held, oldest first (`created` included).
    pub history: Vec<String>,
    /// Made by a CI job: the API may not update it.
    pub ci: bool,
}

#[derive(Default)]
struct State {
    deployments: Vec<Deployment>,
    /// Environment names, in the order they were made (index + 1 is the id).
    environments: Vec<String>,
    branches: Vec<String>,
    /// Requests as `METHOD path?query`.
    requests: Vec<String>,
    violations: Vec<String>,
    /// 4xx answers, as `METHOD path: body`.
    refusals: Vec<String>,
    /// The next this many requests get 429.
    throttle: usize,
    /// Deployments ever made: ids are never reused, deleted ones included.
    made: u64,
    /// Commit statuses written, as (sha, body), oldest first: the daemon writes them
    /// beside its deployments.
    statuses: Vec<(String, Value)>,
}

#[derive(Clone)]
pub struct GitLabDeployments {
    pub server: Arc<MockServer>,
    state: Arc<Mutex<State>>,
}

struct Responder {
    state: Arc<Mutex<State>>,
    spec: Arc<Spec>,
    uri: String,
}

impl GitLabDeployments {
    /// The project [`PROJECT`] with the branch `main`, reached with [`TOKEN`].
    pub async fn start() -> GitLabDeployments {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State {
            branches: vec!["main".into()],
            ..State::default()
        }));
        let responder = Responder {
            state: state.clone(),
            spec: Arc::new(Spec::load("gitlab")),
            uri: server.uri(),
        };
        Mock::given(any()).respond_with(responder).mount(&server).await;
        GitLabDeployments {
            server: Arc::new(server),
            state,
        }
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// The git URL of the project on this server.
    pub fn git_url(&self) -> String {
        format!("{}/{PROJECT}.git", self.uri())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Every deployment, oldest first.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.with(|s| s.deployments.clone())
    }

    /// Requests received, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }

    /// Requests that broke the official spec.
    pub fn violations(&self) -> Vec<String> {
        self.with(|s| s.violations.clone())
    }

    /// 4xx answers, as `METHOD path: body`.
    pub fn refusals(&self) -> Vec<String> {
        self.with(|s| s.refusals.clone())
    }

    /// Commit statuses written, as (sha, body), oldest first.
    pub fn statuses(&self) -> Vec<(String, Value)> {
        self.with(|s| s.statuses.clone())
    }

    pub fn add_branch(&self, name: &str) {
        self.with(|s| s.branches.push(name.into()));
    }

    /// The next `n` requests get 429 with GitLab.com's `RateLimit-*` headers.
    pub fn throttle(&self, n: usize) {
        self.with(|s| s.throttle = n);
    }

    /// Deletes deployment `id`, as `DELETE …/deployments/:id` (or a retention
    /// cleanup) would.
    pub fn delete(&self, id: u64) {
        self.with(|s| s.deployments.retain(|d| d.id != id));
    }

    /// A deployment made outside the notifier (by a CI job when `ci`), as GitLab
    /// would hold it; returns its id.
    pub fn seed(&self, sha: &str, git_ref: &str, environment: &str, status: &str, ci: bool) -> u64 {
        self.with(|s| {
            environment_id(s, environment);
            let (id, iid) = next_id(s);
            s.deployments.push(Deployment {
                id,
                iid,
                sha: sha.into(),
                git_ref: git_ref.into(),
                tag: false,
                environment: environment.into(),
                status: status.into(),
                history: vec![status.into()],
                ci,
            });
            id
        })
    }
}

/// The next (id, iid); ids far from iids, so a client that mixes them up is caught.
fn next_id(s: &mut State) -> (u64, u64) {
    s.made += 1;
    (9000 + s.made * 7, s.made)
}

fn environment_id(s: &mut State, name: &str) -> u64 {
    let i = match s.environments.iter().position(|e| e == name) {
        Some(i) => i,
        None => {
            s.environments.push(name.into());
            s.environments.len() - 1
        }
    };
    i as u64 + 1
}

/// The status a state-machine event moves `from` to, if GitLab allows it.
pub fn transition(from: &str, to: &str) -> Result<(), &'static str> {
    let (event, allowed) = match to {
        "running" => ("run", matches!(from, "created" | "blocked")),
        "success" => ("succeed", from != "success"),
        "failed" => ("drop", from != "failed"),
        "canceled" => ("cancel", from != "canceled"),
        _ => ("unknown", false),
    };
    if allowed { Ok(()) } else { Err(event) }
}

fn view(s: &State, d: &Deployment) -> Value {
    let env_id = s
        .environments
        .iter()
        .position(|e| *e == d.environment)
        .unwrap_or(0)
        + 1;
    let at = "2026-12-03T12:00:00.000Z";
    json!({
        "id": d.id, "iid": d.iid, "ref": d.git_ref, "sha": d.sha,
        "created_at": at, "updated_at": at,
        "user": {"id": 1, "username": "flux", "name": "Flux", "state": "active",
                 "avatar_url": "", "web_url": "https://gitlab.example/flux"},
        "environment": {"id": env_id, "name": d.environment,
                        "slug": d.environment.replace(['/', ' ', '.'], "-"),
                        "external_url": null, "created_at": at, "updated_at": at},
        "deployable": if d.ci { json!({"id": d.id + 1, "status": d.status}) } else { Value::Null },
        "status": d.status,
    })
}

fn is_commit(v: &str) -> bool {
    matches!(v.len(), 40 | 64) && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// GitLab's rules for an environment's name.
fn environment_name_error(name: &str) -> Option<&'static str> {
    let allowed = |c: char| c.is_alphanumeric() || " -_/${}.".contains(c);
    if name.chars().count() > ENVIRONMENT_NAME_LIMIT {
        Some("is too long (maximum is 255 characters)")
    } else if !name.chars().all(allowed) || name.starts_with('/') || name.ends_with('/') {
        Some(
            "can contain only letters, digits, '-', '_', '/', '$', '{', '}', '.', and spaces, \
             but it cannot start or end with '/'",
        )
    } else {
        None
    }
}

/// An answer: status, body, extra headers.
type Answer = (u16, Value, Vec<(String, String)>);

fn plain(code: u16, body: Value) -> Answer {
    (code, body, Vec::new())
}

/// Grape's check of declared parameters: the first problems, as GitLab words them.
fn missing_or_invalid(body: &Value, required: &[&str], statuses: &[&str]) -> Option<String> {
    let missing: Vec<String> = required
        .iter()
        .filter(|k| body.get(**k).is_none_or(Value::is_null))
        .map(|k| format!("{k} is missing"))
        .collect();
    if !missing.is_empty() {
        return Some(missing.join(", "));
    }
    if !body["status"].as_str().is_some_and(|s| statuses.contains(&s)) {
        return Some("status does not have a valid value".into());
    }
    if body.get("tag").is_some_and(|t| !t.is_boolean()) {
        return Some("tag is invalid".into());
    }
    None
}

impl Responder {
    fn answer(&self, req: &Request) -> Answer {
        let mut s = self.state.lock().unwrap();
        let raw = req.url.path().to_string();
        let query: Vec<(String, String)> = req
            .url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        s.requests.push(match req.url.query() {
            Some(q) => format!("{} {raw}?{q}", req.method),
            None => format!("{} {raw}", req.method),
        });
        if s.throttle > 0 {
            s.throttle -= 1;
            let reset = now() + 30;
            return (
                429,
                json!({"message": "Retry later"}),
                vec![
                    ("RateLimit-Limit".into(), "2000".into()),
                    ("RateLimit-Observed".into(), "2000".into()),
                    ("RateLimit-Remaining".into(), "0".into()),
                    ("RateLimit-Reset".into(), reset.to_string()),
                    (
                        "RateLimit-ResetTime".into(),
                        httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(reset)),
                    ),
                ],
            );
        }
        let token = header(req, "private-token").or_else(|| {
            header(req, "authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
        });
        if token.as_deref() != Some(TOKEN) {
            return plain(401, json!({"message": "401 Unauthorized"}));
        }
        let Some(path) = raw.strip_prefix("/api/v4/projects/") else {
            return plain(404, json!({"error": "404 Not Found"}));
        };
        let (project, rest) = path.split_once('/').unwrap_or((path, ""));
        let project_path = percent_decode(project);
        if project_path != PROJECT {
            return plain(404, json!({"message": "404 Project Not Found"}));
        }
        if rest.is_empty() && req.method.as_str() == "GET" {
            // The project read is outside the spec's subset.
            return plain(200, json!({"id": 1, "path_with_namespace": PROJECT}));
        }
        let body: Option<Value> =
            (!req.body.is_empty()).then(|| serde_json::from_slice(&req.body).unwrap_or(Value::Null));
        if let Err(e) = self
            .spec
            .operation(req.method.as_str(), &raw)
            .and_then(|op| op.validate(&query, body.as_ref()))
        {
            // Recorded, then answered as GitLab would: its own words for what it refuses.
            s.violations.push(format!("{} {raw}: {e}", req.method));
        }
        let body = body.unwrap_or(Value::Null);
        let rest: Vec<&str> = rest.split('/').collect();
        let (code, v, headers) = match (req.method.as_str(), rest.as_slice()) {
            ("POST", ["deployments"]) => create(&mut s, &body),
            ("PUT", ["deployments", id]) => update(&mut s, id, &body),
            ("GET", ["deployments", id]) => match find(&s, id) {
                Some(i) => plain(200, view(&s, &s.deployments[i])),
                None => plain(404, json!({"message": "404 Not found"})),
            },
            ("GET", ["deployments"]) => list(&s, &query, &self.uri, &raw),
            ("POST", ["statuses", sha]) => {
                let id = s.statuses.len() + 1;
                s.statuses.push((sha.to_string(), body.clone()));
                plain(
                    201,
                    json!({"id": id, "sha": sha, "status": body["state"], "name": body["name"],
                        "description": body["description"], "target_url": body["target_url"]}),
                )
            }
            ("GET", ["repository", "commits", _, "statuses"]) => plain(200, json!([])),
            _ => plain(404, json!({"error": "404 Not Found"})),
        };
        if (400..500).contains(&code) {
            s.refusals.push(format!("{} {raw}: {v}", req.method));
        }
        (code, v, headers)
    }
}

fn find(s: &State, id: &str) -> Option<usize> {
    let id: u64 = id.parse().ok()?;
    s.deployments.iter().position(|d| d.id == id)
}

fn create(s: &mut State, body: &Value) -> Answer {
    let required = ["environment", "sha", "ref", "tag", "status"];
    if let Some(e) = missing_or_invalid(body, &required, &["running", "success", "failed", "canceled"]) {
        return plain(400, json!({"error": e}));
    }
    let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
    let (environment, sha, git_ref, status) =
        (field("environment"), field("sha"), field("ref"), field("status"));
    let tag = body["tag"].as_bool().unwrap_or(false);
    if !(s.branches.contains(&git_ref) || is_commit(&git_ref)) {
        return plain(
            400,
            json!({"message": {"ref": ["The branch or tag does not exist"]}}),
        );
    }
    if let Some(e) = environment_name_error(&environment) {
        return plain(400, json!({"message": {"name": [e]}}));
    }
    if !is_commit(&sha) {
        return plain(400, json!({"message": {"sha": ["The commit does not exist"]}}));
    }
    environment_id(s, &environment);
    // CreateService: the environment's last successful deployment, when equal.
    let last = s
        .deployments
        .iter()
        .rev()
        .find(|d| d.environment == environment && d.status == "success");
    if let Some(d) =
        last.filter(|d| d.git_ref == git_ref && d.tag == tag && d.sha == sha && d.status == status)
    {
        return plain(201, view(s, d));
    }
    let (id, iid) = next_id(s);
    let mut d = Deployment {
        id,
        iid,
        sha,
        git_ref,
        tag,
        environment,
        status: "created".into(),
        history: vec!["created".into()],
        ci: false,
    };
    if transition(&d.status, &status).is_ok() {
        d.status = status.clone();
        d.history.push(status);
    }
    let v = view(s, &d);
    s.deployments.push(d);
    plain(201, v)
}

fn update(s: &mut State, id: &str, body: &Value) -> Answer {
    if let Some(e) = missing_or_invalid(body, &["status"], &["running", "success", "failed", "canceled"]) {
        return plain(400, json!({"error": e}));
    }
    let Some(i) = find(s, id) else {
        return plain(404, json!({"message": "404 Not found"}));
    };
    if s.deployments[i].ci {
        return plain(
            403,
            json!({"message": "403 Forbidden - Deployments created using GitLab CI can not be updated using the API"}),
        );
    }
    let to = body["status"].as_str().unwrap_or_default().to_string();
    if let Err(event) = transition(&s.deployments[i].status, &to) {
        return plain(
            400,
            json!({"message": {"status": [format!("cannot transition via \"{event}\"")]}}),
        );
    }
    let d = &mut s.deployments[i];
    d.status = to.clone();
    d.history.push(to);
    let d = d.clone();
    plain(200, view(s, &d))
}

fn list(s: &State, query: &[(String, String)], uri: &str, path: &str) -> Answer {
    let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let per_page = q("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let page = q("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let order_by = q("order_by").unwrap_or("id");
    let sort = q("sort").unwrap_or("asc");
    if !["id", "iid", "created_at", "updated_at", "finished_at"].contains(&order_by) {
        return plain(400, json!({"error": "order_by does not have a valid value"}));
    }
    if !["asc", "desc"].contains(&sort) {
        return plain(400, json!({"error": "sort does not have a valid value"}));
    }
    if order_by == "finished_at" {
        return plain(
            400,
            json!({"message": "400 Bad request - `finished_at` sort requires `finished_at` filter or a filter with at least one of the finished statuses."}),
        );
    }
    // Ids grow with time here: every order the fake allows is the id order.
    let mut all: Vec<&Deployment> = s
        .deployments
        .iter()
        .filter(|d| q("environment").is_none_or(|e| e == d.environment))
        .filter(|d| q("status").is_none_or(|st| st == d.status))
        .collect();
    if sort == "desc" {
        all.reverse();
    }
    let total = all.len();
    let pages = total.div_ceil(per_page).max(1);
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|d| view(s, d))
        .collect();
    let link_to = |p: usize| {
        let mut parts: Vec<String> = query
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        parts.push(format!("page={p}"));
        format!("{uri}{path}?{}", parts.join("&"))
    };
    let mut links = vec![
        format!("<{}>; rel=\"first\"", link_to(1)),
        format!("<{}>; rel=\"last\"", link_to(pages)),
    ];
    let next = (page < pages).then(|| page + 1);
    if let Some(n) = next {
        links.insert(0, format!("<{}>; rel=\"next\"", link_to(n)));
    }
    let headers = vec![
        ("X-Page".into(), page.to_string()),
        ("X-Per-Page".into(), per_page.to_string()),
        ("X-Total".into(), total.to_string()),
        ("X-Total-Pages".into(), pages.to_string()),
        (
            "X-Next-Page".into(),
            next.map(|n| n.to_string()).unwrap_or_default(),
        ),
        ("Link".into(), links.join(", ")),
    ];
    (200, Value::Array(items), headers)
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers.get(name)?.to_str().ok().map(str::to_string)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn percent_encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

impl Respond for Responder {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let (code, body, headers) = self.answer(req);
        let mut t = ResponseTemplate::new(code);
        if code != 429 {
            t = t
                .insert_header("RateLimit-Limit", "2000")
                .insert_header("RateLimit-Remaining", "1999");
        }
        for (k, v) in headers {
            t = t.insert_header(k.as_str(), v.as_str());
        }
        t.set_body_json(body)
    }
}
