//! Check runs as GitHub keeps them, with its rules: only an App creates them (any
//! other token gets 403), only the App that created a run updates it, a completed
//! run never goes back, `conclusion` comes exactly with `status: completed`, and
//! `output.summary` and `output.text` are at most 65,535 characters. Lists are
//! newest first, filtered by `check_name` and `app_id`, paged with a `Link` header.
#![allow(dead_code)]

use serde_json::{Value, json};

pub const OUTPUT_LIMIT: usize = 65_535;

#[derive(Clone, Debug)]
pub struct Run {
    pub id: u64,
    pub repo: String,
    pub sha: String,
    pub name: String,
    /// The App that created it.
    pub app: u64,
    pub status: String,
    pub conclusion: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub details_url: Option<String>,
    pub title: String,
    pub summary: String,
    /// Every body written to it, in order.
    pub writes: Vec<Value>,
}

#[derive(Default)]
pub struct Runs {
    pub runs: Vec<Run>,
    /// Refusals, as `METHOD what: message`.
    pub refusals: Vec<String>,
    pub listings: usize,
}

/// Who sent a request: an App's installation token (with the App's id) or a token of
/// another kind (a personal access token).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Caller {
    App(u64),
    Token,
}

fn refuse(runs: &mut Runs, code: u16, what: &str, message: &str) -> (u16, Value, Option<String>) {
    runs.refusals.push(format!("{what}: {message}"));
    (
        code,
        json!({"message": message, "documentation_url": "https://docs.github.com/rest/checks/runs"}),
        None,
    )
}

fn invalid(runs: &mut Runs, what: &str, message: &str) -> (u16, Value, Option<String>) {
    runs.refusals.push(format!("{what}: {message}"));
    (
        422,
        json!({"message": "Invalid request.", "errors": [message],
               "documentation_url": "https://docs.github.com/rest/checks/runs"}),
        None,
    )
}

/// The rules a body breaks, if any.
fn body_rule(body: &Value) -> Option<String> {
    let status = body["status"].as_str();
    let concluded = !body["conclusion"].is_null();
    if status == Some("completed") && !concluded {
        return Some("conclusion is required when status is completed".into());
    }
    if concluded && status.is_some_and(|s| s != "completed") {
        return Some(format!(
            "a conclusion comes with status completed, not {status:?}"
        ));
    }
    if !body["completed_at"].is_null() && !concluded {
        return Some("conclusion is required when completed_at is given".into());
    }
    for field in ["summary", "text"] {
        if let Some(t) = body["output"][field].as_str()
            && t.chars().count() > OUTPUT_LIMIT
        {
            return Some(format!(
                "output.{field} is too long (maximum is {OUTPUT_LIMIT} characters)"
            ));
        }
    }
    None
}

fn apply(run: &mut Run, body: &Value) {
    let s = |k: &str| body[k].as_str().map(str::to_string);
    if let Some(c) = s("conclusion") {
        run.status = "completed".into();
        run.conclusion = Some(c);
    } else if let Some(st) = s("status") {
        run.status = st;
    }
    for (k, slot) in [
        ("started_at", &mut run.started_at),
        ("completed_at", &mut run.completed_at),
        ("details_url", &mut run.details_url),
    ] {
        if let Some(v) = s(k) {
            *slot = Some(v);
        }
    }
    if let Some(t) = body["output"]["title"].as_str() {
        run.title = t.to_string();
    }
    if let Some(t) = body["output"]["summary"].as_str() {
        run.summary = t.to_string();
    }
    run.writes.push(body.clone());
}

pub fn view(r: &Run, base: &str) -> Value {
    json!({
        "id": r.id, "node_id": format!("CR_{}", r.id), "head_sha": r.sha, "name": r.name,
        "external_id": null, "url": format!("{base}/repos/{}/check-runs/{}", r.repo, r.id),
        "html_url": format!("https://github.com/{}/runs/{}", r.repo, r.id),
        "details_url": r.details_url, "status": r.status, "conclusion": r.conclusion,
        "started_at": r.started_at, "completed_at": r.completed_at,
        "output": {"title": r.title, "summary": r.summary, "text": null,
                   "annotations_count": 0, "annotations_url": ""},
        "check_suite": {"id": 1}, "app": {"id": r.app, "slug": format!("app-{}", r.app)},
        "pull_requests": [],
    })
}

/// A request on a repository's check runs (or deployments).
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub caller: Caller,
    pub method: &'a str,
    /// `owner/repo`.
    pub repo: &'a str,
    /// The path after `/repos/{owner}/{repo}/`.
    pub rest: &'a [&'a str],
    pub query: &'a [(String, String)],
    pub body: Option<&'a Value>,
    /// The API base, for links.
    pub base: &'a str,
}

/// Answers a check-run request, or `None` when it is not one.
pub fn answer(runs: &mut Runs, call: Call<'_>) -> Option<(u16, Value, Option<String>)> {
    let Call {
        caller,
        method,
        repo,
        rest,
        query,
        body,
        base,
    } = call;
    let what = format!("{method} {}", rest.join("/"));
    let null = Value::Null;
    let body = body.unwrap_or(&null);
    Some(match (method, rest) {
        ("POST", ["check-runs"]) => {
            let Caller::App(app) = caller else {
                return Some(refuse(
                    runs,
                    403,
                    &what,
                    "You must authenticate via a GitHub App.",
                ));
            };
            if let Some(m) = body_rule(body) {
                return Some(invalid(runs, &what, &m));
            }
            let mut run = Run {
                id: 4_000_000 + runs.runs.len() as u64 + 1,
                repo: repo.to_string(),
                sha: body["head_sha"].as_str().unwrap_or_default().to_string(),
                name: body["name"].as_str().unwrap_or_default().to_string(),
                app,
                status: "queued".into(),
                conclusion: None,
                started_at: None,
                completed_at: None,
                details_url: None,
                title: String::new(),
                summary: String::new(),
                writes: Vec::new(),
            };
            apply(&mut run, body);
            let v = view(&run, base);
            runs.runs.push(run);
            (201, v, None)
        }
        ("PATCH", ["check-runs", id]) => {
            let Caller::App(app) = caller else {
                return Some(refuse(
                    runs,
                    403,
                    &what,
                    "You must authenticate via a GitHub App.",
                ));
            };
            let Some(i) = runs
                .runs
                .iter()
                .position(|r| r.repo == repo && id.parse() == Ok(r.id))
            else {
                return Some((404, json!({"message": "Not Found"}), None));
            };
            if runs.runs[i].app != app {
                let m = format!(
                    "Invalid app_id `{app}` - check run can only be modified by the GitHub App that created it."
                );
                return Some(refuse(runs, 403, &what, &m));
            }
            if let Some(m) = body_rule(body) {
                return Some(invalid(runs, &what, &m));
            }
            let back = body["status"].as_str().is_some_and(|s| s != "completed");
            if runs.runs[i].status == "completed" && back {
                return Some(invalid(runs, &what, "a completed check run cannot go back"));
            }
            apply(&mut runs.runs[i], body);
            (200, view(&runs.runs[i], base), None)
        }
        ("GET", ["commits", sha, "check-runs"]) => {
            runs.listings += 1;
            let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            let per_page: usize = q("per_page").and_then(|v| v.parse().ok()).unwrap_or(30);
            let page: usize = q("page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
            let app_id: Option<u64> = q("app_id").and_then(|v| v.parse().ok());
            let latest = q("filter").unwrap_or("latest") == "latest";
            let mut seen = std::collections::HashSet::new();
            let list: Vec<&Run> = runs
                .runs
                .iter()
                .rev()
                .filter(|r| r.repo == repo && r.sha == *sha)
                .filter(|r| q("check_name").is_none_or(|n| n == r.name))
                .filter(|r| app_id.is_none_or(|a| a == r.app))
                .filter(|r| !latest || seen.insert(r.name.clone()))
                .collect();
            let total = list.len();
            let page_runs: Vec<Value> = list
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|r| view(r, base))
                .collect();
            let path = format!("commits/{sha}/check-runs");
            let link = next_page(&call, &path, page * per_page < total, page);
            (200, json!({"total_count": total, "check_runs": page_runs}), link)
        }
        _ => return None,
    })
}

/// The `Link` to page `page + 1` of the list at `path` (under the repository), with
/// the query it was asked with, when there is one.
pub fn next_page(call: &Call<'_>, path: &str, more: bool, page: usize) -> Option<String> {
    more.then(|| {
        let mut next: Vec<String> = call
            .query
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{k}={}", percent(v)))
            .collect();
        next.push(format!("page={}", page + 1));
        format!(
            "<{}/repos/{}/{path}?{}>; rel=\"next\"",
            call.base,
            call.repo,
            next.join("&")
        )
    })
}

fn percent(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}
