//! Deployments and deployment statuses as GitHub keeps them, with its rules:
//! creating a deployment verifies the commit's status checks unless
//! `required_contexts` says which (an empty list: none), answering 409 while one is
//! not successful; descriptions are at most 140 characters; a status needs a known
//! deployment and one of GitHub's states; `auto_inactive` (the default) makes the
//! earlier successful, non-production, non-transient deployments of the environment
//! inactive when a deployment succeeds. Lists are newest first, paged with `Link`.
#![allow(dead_code)]

use super::app::Written;
use super::checks::{Call, Run, next_page};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};

pub const DESCRIPTION_LIMIT: usize = 140;
const STATES: [&str; 7] = [
    "error",
    "failure",
    "inactive",
    "in_progress",
    "queued",
    "pending",
    "success",
];
const DOCS: &str = "https://docs.github.com/rest/deployments/deployments#create-a-deployment";

#[derive(Clone, Debug)]
pub struct Deployment {
    pub id: u64,
    pub repo: String,
    pub sha: String,
    /// As given: a SHA, or a branch the fake knows.
    pub git_ref: String,
    pub task: String,
    pub environment: String,
    pub description: Option<String>,
    pub production: bool,
    pub transient: bool,
    /// The body it was created with.
    pub body: Value,
    /// Oldest first.
    pub statuses: Vec<DeploymentStatus>,
}

impl Deployment {
    /// The states of its statuses, oldest first.
    pub fn states(&self) -> Vec<&str> {
        self.statuses.iter().map(|s| s.state.as_str()).collect()
    }
}

#[derive(Clone, Debug)]
pub struct DeploymentStatus {
    pub id: u64,
    pub state: String,
    pub description: String,
    pub environment: String,
    pub environment_url: Option<String>,
    pub log_url: Option<String>,
    /// The body it was posted with; `None` for one GitHub added (`auto_inactive`).
    pub body: Option<Value>,
}

/// An answer the next deployment writes get instead of being applied.
#[derive(Clone, Debug)]
pub struct Scripted {
    pub code: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
pub struct Deploys {
    pub deployments: Vec<Deployment>,
    /// Refusals (409, 422), as `METHOD path: message`.
    pub refusals: Vec<String>,
    pub listings: usize,
    /// Branch → SHA, for refs that are not SHAs.
    pub refs: HashMap<String, String>,
    pub script: VecDeque<Scripted>,
    /// Answers only the next status writes get (the deployment itself is made).
    pub status_script: VecDeque<Scripted>,
    /// Ids are never reused, a deleted deployment's included.
    next_id: u64,
    next_status: u64,
}

/// A body's key the responder turns into response headers.
pub const HEADERS: &str = "__headers";

type Answer = (u16, Value, Option<String>);

/// What a commit's checks say, as GitHub verifies them before a deployment: the
/// newest commit status per context and the newest check run per name.
pub struct Checks<'a> {
    pub statuses: &'a [Written],
    pub runs: &'a [Run],
}

impl Checks<'_> {
    /// `(context, state)` of each check on `sha` that has not succeeded, among
    /// `only` when given.
    fn unsettled(&self, repo: &str, sha: &str, only: Option<&[String]>) -> Vec<(String, String)> {
        let mut newest: Vec<(String, String)> = Vec::new();
        let mut note = |context: String, state: String| {
            if !newest.iter().any(|(c, _)| *c == context) {
                newest.push((context, state));
            }
        };
        for w in self
            .statuses
            .iter()
            .rev()
            .filter(|w| w.repo == repo && w.sha == sha)
        {
            let context = w.body["context"].as_str().unwrap_or("default").to_string();
            note(context, w.body["state"].as_str().unwrap_or("").to_string());
        }
        for r in self.runs.iter().rev().filter(|r| r.repo == repo && r.sha == sha) {
            let state = match (r.status.as_str(), r.conclusion.as_deref()) {
                ("completed", Some("success" | "neutral" | "skipped")) => "success",
                ("completed", _) => "failure",
                _ => "pending",
            };
            note(r.name.clone(), state.to_string());
        }
        match only {
            None => newest.into_iter().filter(|(_, s)| s != "success").collect(),
            Some(only) => only
                .iter()
                .filter_map(|c| match newest.iter().find(|(n, _)| n == c) {
                    Some((_, s)) if s == "success" => None,
                    Some((_, s)) => Some((c.clone(), s.clone())),
                    None => Some((c.clone(), "missing".to_string())),
                })
                .collect(),
        }
    }
}

fn invalid(d: &mut Deploys, what: &str, resource: &str, field: &str, message: &str) -> Answer {
    d.refusals.push(format!("{what}: {message}"));
    (
        422,
        json!({"message": "Validation Failed",
               "errors": [{"resource": resource, "code": "custom", "field": field, "message": message}],
               "documentation_url": DOCS}),
        None,
    )
}

fn not_found() -> Answer {
    (
        404,
        json!({"message": "Not Found", "documentation_url": DOCS}),
        None,
    )
}

fn is_sha(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn too_long(body: &Value) -> bool {
    body["description"]
        .as_str()
        .is_some_and(|t| t.chars().count() > DESCRIPTION_LIMIT)
}

pub fn view(d: &Deployment, base: &str) -> Value {
    let url = format!("{base}/repos/{}/deployments/{}", d.repo, d.id);
    json!({
        "url": url, "id": d.id, "node_id": format!("DE_{}", d.id), "sha": d.sha, "ref": d.git_ref,
        "task": d.task, "payload": {}, "original_environment": d.environment,
        "environment": d.environment, "description": d.description, "creator": null,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "statuses_url": format!("{url}/statuses"),
        "repository_url": format!("{base}/repos/{}", d.repo),
        "transient_environment": d.transient, "production_environment": d.production,
    })
}

pub fn status_view(d: &Deployment, s: &DeploymentStatus, base: &str) -> Value {
    let url = format!("{base}/repos/{}/deployments/{}", d.repo, d.id);
    let mut v = json!({
        "url": format!("{url}/statuses/{}", s.id), "id": s.id, "node_id": format!("DES_{}", s.id),
        "state": s.state, "creator": null, "description": s.description,
        "environment": s.environment, "target_url": s.log_url.clone().unwrap_or_default(),
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "deployment_url": url, "repository_url": format!("{base}/repos/{}", d.repo),
    });
    for (k, given) in [("log_url", &s.log_url), ("environment_url", &s.environment_url)] {
        if let Some(u) = given {
            v[k] = json!(u);
        }
    }
    v
}

/// One page of `items` (newest first) and the `Link` to the next, as GitHub pages.
fn page(call: &Call<'_>, path: &str, items: Vec<Value>) -> Answer {
    let q = |k: &str| call.query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let per_page: usize = q("per_page").and_then(|v| v.parse().ok()).unwrap_or(30);
    let page: usize = q("page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let total = items.len();
    let shown: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let link = next_page(call, path, page * per_page < total, page);
    (200, Value::Array(shown), link)
}

/// Answers a deployments request, or `None` when it is not one.
pub fn answer(d: &mut Deploys, checks: Checks<'_>, call: Call<'_>) -> Option<Answer> {
    let what = format!("{} {}", call.method, call.rest.join("/"));
    let null = Value::Null;
    let body = call.body.unwrap_or(&null);
    let repo = call.repo;
    let find = |d: &Deploys, id: &str| {
        d.deployments
            .iter()
            .position(|x| x.repo == repo && id.parse() == Ok(x.id))
    };
    let q = |k: &str| call.query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let is_write = call.method == "POST" && call.rest.first() == Some(&"deployments");
    let is_status_write = is_write && call.rest.get(2) == Some(&"statuses");
    let scripted = match is_write {
        true => d.script.pop_front(),
        false => None,
    }
    .or_else(|| is_status_write.then(|| d.status_script.pop_front()).flatten());
    if let Some(s) = scripted {
        let mut b = s.body;
        if let Some(m) = b.as_object_mut() {
            let headers: serde_json::Map<String, Value> = s
                .headers
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            m.insert(HEADERS.into(), Value::Object(headers));
        }
        return Some((s.code, b, None));
    }
    Some(match (call.method, call.rest) {
        ("POST", ["deployments"]) => {
            let Some(git_ref) = body["ref"].as_str().filter(|r| !r.is_empty()) else {
                return Some(invalid(d, &what, "Deployment", "ref", "\"ref\" wasn't supplied."));
            };
            if too_long(body) {
                let m = format!("description is too long (maximum is {DESCRIPTION_LIMIT} characters)");
                return Some(invalid(d, &what, "Deployment", "description", &m));
            }
            let sha = if is_sha(git_ref) {
                git_ref.to_ascii_lowercase()
            } else if let Some(sha) = d.refs.get(git_ref) {
                sha.clone()
            } else {
                let m = format!("No ref found for: {git_ref}");
                return Some(invalid(d, &what, "Deployment", "ref", &m));
            };
            let only: Option<Vec<String>> = body["required_contexts"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect());
            let unsettled = checks.unsettled(repo, &sha, only.as_deref());
            if !unsettled.is_empty() {
                let message = format!("Conflict: Commit status checks failed for {git_ref}.");
                d.refusals.push(format!("{what}: {message}"));
                let contexts: Vec<Value> = unsettled
                    .iter()
                    .map(|(c, s)| json!({"context": c, "state": s}))
                    .collect();
                return Some((
                    409,
                    json!({"message": message,
                           "errors": [{"contexts": contexts, "resource": "Deployment",
                                       "field": "required_contexts", "code": "invalid"}],
                           "documentation_url": DOCS}),
                    None,
                ));
            }
            let environment = body["environment"].as_str().unwrap_or("production").to_string();
            d.next_id += 1;
            let deployment = Deployment {
                id: 6_000_000 + d.next_id,
                repo: repo.to_string(),
                sha,
                git_ref: git_ref.to_string(),
                task: body["task"].as_str().unwrap_or("deploy").to_string(),
                production: body["production_environment"]
                    .as_bool()
                    .unwrap_or(environment == "production"),
                transient: body["transient_environment"].as_bool().unwrap_or(false),
                description: body["description"].as_str().map(str::to_string),
                environment,
                body: body.clone(),
                statuses: Vec::new(),
            };
            let v = view(&deployment, call.base);
            d.deployments.push(deployment);
            (201, v, None)
        }
        ("GET", ["deployments"]) => {
            d.listings += 1;
            let items: Vec<Value> = d
                .deployments
                .iter()
                .rev()
                .filter(|x| x.repo == repo)
                .filter(|x| q("sha").is_none_or(|s| s.eq_ignore_ascii_case(&x.sha)))
                .filter(|x| q("ref").is_none_or(|r| r == x.git_ref))
                .filter(|x| q("task").is_none_or(|t| t == x.task))
                .filter(|x| q("environment").is_none_or(|e| e == x.environment))
                .map(|x| view(x, call.base))
                .collect();
            page(&call, "deployments", items)
        }
        ("GET", ["deployments", id]) => match find(d, id) {
            Some(i) => (200, view(&d.deployments[i], call.base), None),
            None => not_found(),
        },
        ("POST", ["deployments", id, "statuses"]) => {
            let Some(i) = find(d, id) else {
                return Some(not_found());
            };
            let state = body["state"].as_str().unwrap_or_default();
            if !STATES.contains(&state) {
                let m = format!("state is not included in the list: {state:?}");
                return Some(invalid(d, &what, "DeploymentStatus", "state", &m));
            }
            if too_long(body) {
                let m = format!("description is too long (maximum is {DESCRIPTION_LIMIT} characters)");
                return Some(invalid(d, &what, "DeploymentStatus", "description", &m));
            }
            let s = |k: &str| body[k].as_str().map(str::to_string);
            let environment = s("environment").unwrap_or_else(|| d.deployments[i].environment.clone());
            d.deployments[i].environment = environment.clone();
            d.next_status += 1;
            let status = DeploymentStatus {
                id: 9_000_000 + d.next_status,
                state: state.to_string(),
                description: s("description").unwrap_or_default(),
                environment,
                environment_url: s("environment_url"),
                log_url: s("log_url").or_else(|| s("target_url")),
                body: Some(body.clone()),
            };
            let v = status_view(&d.deployments[i], &status, call.base);
            d.deployments[i].statuses.push(status);
            if state == "success" && body["auto_inactive"].as_bool().unwrap_or(true) {
                auto_inactive(d, i);
            }
            (201, v, None)
        }
        ("GET", ["deployments", id, "statuses"]) => {
            let Some(i) = find(d, id) else {
                return Some(not_found());
            };
            let x = &d.deployments[i];
            let items: Vec<Value> = x
                .statuses
                .iter()
                .rev()
                .map(|s| status_view(x, s, call.base))
                .collect();
            page(&call, &format!("deployments/{id}/statuses"), items)
        }
        _ => return None,
    })
}

/// GitHub's `auto_inactive`: the earlier deployments of deployment `i`'s environment
/// that had succeeded get an `inactive` status, unless production or transient.
fn auto_inactive(d: &mut Deploys, i: usize) {
    let (repo, environment, id) = {
        let x = &d.deployments[i];
        (x.repo.clone(), x.environment.clone(), x.id)
    };
    let mut next = d.next_status;
    for x in d.deployments.iter_mut().filter(|x| {
        x.repo == repo
            && x.environment == environment
            && x.id < id
            && !x.production
            && !x.transient
            && x.statuses.last().is_some_and(|s| s.state == "success")
    }) {
        next += 1;
        let last = x.statuses.last().cloned();
        x.statuses.push(DeploymentStatus {
            id: 9_000_000 + next,
            state: "inactive".into(),
            description: String::new(),
            environment: environment.clone(),
            environment_url: last.as_ref().and_then(|s| s.environment_url.clone()),
            log_url: last.and_then(|s| s.log_url),
            body: None,
        });
    }
    d.next_status = next;
}
