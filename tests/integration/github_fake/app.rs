//! A GitHub that enforces the App rules: installation tokens are minted only with a
//! JWT signed (RS256) by the App's key, with `iat` not in the future and `exp` at
//! most 10 minutes ahead; tokens expire, and an expired or unknown token gets 401;
//! the installation lookup answers 404 for a repository the App is not installed
//! on. Every request is checked against the official spec.
#![allow(dead_code)]

use super::checks::{self, Caller, Run, Runs};
use super::deployments::{self, Deployment, Deploys, Scripted};
use crate::support::openapi::Spec;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

pub const APP_ID: &str = "424242";
pub const INSTALLATION: u64 = 777;

pub fn key_pem() -> String {
    read("app-key.pem")
}

fn read(name: &str) -> String {
    String::from_utf8(crate::support::fixture(&format!("github-app/{name}"))).expect("a PEM file")
}

#[derive(Clone, Debug)]
pub struct Written {
    pub repo: String,
    pub sha: String,
    pub body: Value,
}

struct Token {
    installation: u64,
    expires: u64,
}

#[derive(Default)]
struct State {
    /// Installation id → the `owner/repo`s it may reach.
    installations: HashMap<u64, Vec<String>>,
    tokens: HashMap<String, Token>,
    lifetime: Duration,
    /// Seconds the fake's clock is ahead of the real one (negative: behind).
    clock_offset: i64,
    statuses: Vec<Written>,
    mints: usize,
    lookups: usize,
    /// Requests refused with 401, as `METHOD path: message`.
    refusals: Vec<String>,
    violations: Vec<String>,
    /// Every JWT and token seen or handed out, for the secrets checks.
    secrets: Vec<String>,
    /// Paths as received, prefix included.
    paths: Vec<String>,
    /// Check runs, and what was refused about them.
    runs: Runs,
    /// Deployments and their statuses.
    deploys: Deploys,
    /// Personal access tokens: they reach every repository, but are no App.
    pats: Vec<String>,
    /// The server's own URI, for the links it answers with.
    uri: String,
}

/// Keys of a wrapped answer: the responder sends `BODY` with `LINK` as its `Link`
/// header (pages of lists).
const LINK: &str = "__link";
const BODY: &str = "__body";

#[derive(Clone)]
pub struct AppGitHub {
    pub server: Arc<MockServer>,
    state: Arc<Mutex<State>>,
}

struct Responder {
    state: Arc<Mutex<State>>,
    spec: Arc<Spec>,
    public_key: Vec<u8>,
}

impl AppGitHub {
    /// The App is installed (as [`INSTALLATION`]) on `acme/app` only.
    pub async fn start() -> AppGitHub {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State {
            lifetime: Duration::from_secs(3600),
            ..State::default()
        }));
        state
            .lock()
            .unwrap()
            .installations
            .insert(INSTALLATION, vec!["acme/app".to_string()]);
        let pem = read("app-public.pem");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let responder = Responder {
            state: state.clone(),
            spec: Arc::new(Spec::load("github")),
            public_key: STANDARD.decode(body).unwrap(),
        };
        Mock::given(any()).respond_with(responder).mount(&server).await;
        state.lock().unwrap().uri = server.uri();
        AppGitHub {
            server: Arc::new(server),
            state,
        }
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn set_lifetime(&self, d: Duration) {
        self.with(|s| s.lifetime = d);
    }

    pub fn set_clock_offset(&self, secs: i64) {
        self.with(|s| s.clock_offset = secs);
    }

    /// GitHub forgets every token (revoked, or expired by its clock).
    pub fn revoke_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    pub fn statuses(&self) -> Vec<Written> {
        self.with(|s| s.statuses.clone())
    }

    pub fn mints(&self) -> usize {
        self.with(|s| s.mints)
    }

    pub fn lookups(&self) -> usize {
        self.with(|s| s.lookups)
    }

    pub fn refusals(&self) -> Vec<String> {
        self.with(|s| s.refusals.clone())
    }

    pub fn violations(&self) -> Vec<String> {
        self.with(|s| s.violations.clone())
    }

    pub fn secrets(&self) -> Vec<String> {
        self.with(|s| s.secrets.clone())
    }

    pub fn paths(&self) -> Vec<String> {
        self.with(|s| s.paths.clone())
    }

    /// `token` is a personal access token: it reads and writes statuses, but GitHub
    /// refuses it check-run writes.
    pub fn add_pat(&self, token: &str) {
        self.with(|s| s.pats.push(token.to_string()));
    }

    /// Every check run, oldest first.
    pub fn runs(&self) -> Vec<Run> {
        self.with(|s| s.runs.runs.clone())
    }

    /// Check-run requests refused (403 and 422), as `METHOD path: message`.
    pub fn run_refusals(&self) -> Vec<String> {
        self.with(|s| s.runs.refusals.clone())
    }

    /// Check-run listings received.
    pub fn run_listings(&self) -> usize {
        self.with(|s| s.runs.listings)
    }

    /// Every deployment with its statuses, oldest first.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.with(|s| s.deploys.deployments.clone())
    }

    /// The deployments of `sha` to `environment`, oldest first.
    pub fn deployments_of(&self, sha: &str, environment: &str) -> Vec<Deployment> {
        let mut all = self.deployments();
        all.retain(|d| d.sha == sha && d.environment == environment);
        all
    }

    /// Deployment requests refused (409, 422), as `METHOD path: message`.
    pub fn deployment_refusals(&self) -> Vec<String> {
        self.with(|s| s.deploys.refusals.clone())
    }

    /// Deployment listings received.
    pub fn deployment_listings(&self) -> usize {
        self.with(|s| s.deploys.listings)
    }

    /// Deletes deployment `id`, statuses and all, as a user can.
    pub fn delete_deployment(&self, id: u64) {
        self.with(|s| s.deploys.deployments.retain(|d| d.id != id));
    }

    /// The next deployment writes get these answers, one each, and are not applied.
    pub fn script_deployment_writes(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.with(|s| s.deploys.script.extend(answers));
    }

    /// Answers the next deployment status writes get instead of being applied.
    pub fn script_deployment_status_writes(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.with(|s| s.deploys.status_script.extend(answers));
    }

    /// `branch` names `sha`, so a deployment may give it as its `ref`.
    pub fn add_ref(&self, branch: &str, sha: &str) {
        self.with(|s| s.deploys.refs.insert(branch.into(), sha.into()));
    }

    /// A run made by another App (`app`), as if that App had written it.
    pub fn seed_run(&self, repo: &str, sha: &str, name: &str, app: u64, completed: bool) -> u64 {
        self.with(|s| {
            let id = 4_000_000 + s.runs.runs.len() as u64 + 1;
            s.runs.runs.push(Run {
                id,
                repo: repo.into(),
                sha: sha.into(),
                name: name.into(),
                app,
                status: if completed { "completed" } else { "in_progress" }.into(),
                conclusion: completed.then(|| "success".into()),
                started_at: None,
                completed_at: None,
                details_url: None,
                title: format!("seeded by app {app}"),
                summary: String::new(),
                writes: Vec::new(),
            });
            id
        })
    }
}

fn now_secs(offset: i64) -> u64 {
    let real = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    (real + offset) as u64
}

/// `2016-07-11T22:14:10Z` for seconds since the epoch.
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn bearer(req: &Request) -> Option<String> {
    let v = req.headers.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(str::to_string)
}

impl Responder {
    /// GitHub's checks of an App JWT, against its own clock.
    fn check_jwt(&self, jwt: &str, now: u64) -> Result<(), &'static str> {
        const UNDECODABLE: &str = "A JSON web token could not be decoded";
        let parts: Vec<&str> = jwt.split('.').collect();
        let [header, claims, sig] = parts.as_slice() else {
            return Err(UNDECODABLE);
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| UNDECODABLE);
        let header: Value = serde_json::from_slice(&decode(header)?).map_err(|_| UNDECODABLE)?;
        if header["alg"] != "RS256" {
            return Err(UNDECODABLE);
        }
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &self.public_key,
        )
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &decode(sig)?)
        .map_err(|_| UNDECODABLE)?;
        let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|_| UNDECODABLE)?;
        let iss_ok = claims["iss"].as_str() == Some(APP_ID)
            || claims["iss"].as_u64().map(|n| n.to_string()).as_deref() == Some(APP_ID);
        if !iss_ok {
            return Err("Integration not found");
        }
        let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
            return Err(UNDECODABLE);
        };
        if iat > now {
            return Err(
                "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
            );
        }
        if exp <= now {
            return Err(
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
            );
        }
        if exp > now + 600 || exp - iat > 600 {
            return Err("'Expiration time' claim ('exp') is too far in the future");
        }
        Ok(())
    }

    fn answer(&self, req: &Request) -> (u16, Value) {
        let mut s = self.state.lock().unwrap();
        let now = now_secs(s.clock_offset);
        let raw = req.url.path().to_string();
        s.paths.push(raw.clone());
        // GitHub Enterprise Server serves the same API under /api/v3.
        let path = raw.strip_prefix("/api/v3").unwrap_or(&raw).to_string();
        let query: Vec<(String, String)> = req
            .url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let body: Option<Value> =
            (!req.body.is_empty()).then(|| serde_json::from_slice(&req.body).unwrap_or(Value::Null));
        if let Err(e) = self
            .spec
            .operation(req.method.as_str(), &path)
            .and_then(|op| op.validate(&query, body.as_ref()))
        {
            s.violations.push(format!("{} {path}: {e}", req.method));
            return (
                422,
                json!({"message": "Validation Failed", "errors": [{"message": e}]}),
            );
        }
        let credential = bearer(req).unwrap_or_default();
        if !credential.is_empty() && !s.secrets.contains(&credential) {
            s.secrets.push(credential.clone());
        }
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let refuse = |s: &mut State, message: &str| {
            s.refusals.push(format!("{} {path}: {message}", req.method));
            (
                401,
                json!({"message": message, "documentation_url": "https://docs.github.com/rest"}),
            )
        };
        // The App's own endpoints take its JWT; the repository's, an installation token.
        match (req.method.as_str(), parts.as_slice()) {
            ("POST", ["app", "installations", id, "access_tokens"]) => {
                if let Err(m) = self.check_jwt(&credential, now) {
                    return refuse(&mut s, m);
                }
                let Some(id) = id.parse::<u64>().ok().filter(|i| s.installations.contains_key(i)) else {
                    return (404, json!({"message": "Not Found"}));
                };
                s.mints += 1;
                let token = format!("ghs_{}", fastrand_token());
                let expires = now + s.lifetime.as_secs();
                s.tokens.insert(
                    token.clone(),
                    Token {
                        installation: id,
                        expires,
                    },
                );
                s.secrets.push(token.clone());
                (
                    201,
                    json!({"token": token, "expires_at": rfc3339(expires),
                           "permissions": {"statuses": "write", "metadata": "read"},
                           "repository_selection": "selected"}),
                )
            }
            ("GET", ["repos", owner, repo, "installation"]) => {
                if let Err(m) = self.check_jwt(&credential, now) {
                    return refuse(&mut s, m);
                }
                s.lookups += 1;
                let full = format!("{owner}/{repo}");
                match s.installations.iter().find(|(_, repos)| repos.contains(&full)) {
                    Some((id, _)) => {
                        let mut example = self
                            .spec
                            .operation("GET", &path)
                            .ok()
                            .and_then(|op| op.example_response(200))
                            .unwrap_or_else(|| json!({}));
                        example["id"] = json!(id);
                        (200, example)
                    }
                    None => (404, json!({"message": "Not Found"})),
                }
            }
            ("GET" | "POST" | "PATCH", ["repos", owner, repo, rest @ ..]) => {
                let full = format!("{owner}/{repo}");
                let valid = s.tokens.get(&credential).is_some_and(|t| {
                    t.expires > now
                        && s.installations
                            .get(&t.installation)
                            .is_some_and(|r| r.contains(&full))
                });
                let pat = s.pats.contains(&credential);
                if !valid && !pat {
                    return refuse(&mut s, "Bad credentials");
                }
                // Every installation here is the one App's.
                let caller = if valid {
                    Caller::App(APP_ID.parse().unwrap_or_default())
                } else {
                    Caller::Token
                };
                let prefix = if raw.starts_with("/api/v3") { "/api/v3" } else { "" };
                let base = format!("{}{prefix}", s.uri);
                let call = checks::Call {
                    caller,
                    method: req.method.as_str(),
                    repo: &full,
                    rest,
                    query: &query,
                    body: body.as_ref(),
                    base: &base,
                };
                let st = &mut *s;
                let answered = checks::answer(&mut st.runs, call).or_else(|| {
                    let verified = deployments::Checks {
                        statuses: &st.statuses,
                        runs: &st.runs.runs,
                    };
                    deployments::answer(&mut st.deploys, verified, call)
                });
                if let Some((code, body, link)) = answered {
                    return match link {
                        Some(link) => (code, json!({LINK: link, BODY: body})),
                        None => (code, body),
                    };
                }
                match (req.method.as_str(), rest) {
                    ("GET", []) => (200, json!({"id": 1, "name": repo, "full_name": full})),
                    ("POST", ["statuses", sha]) => {
                        let body = body.unwrap_or(Value::Null);
                        s.statuses.push(Written {
                            repo: full,
                            sha: sha.to_string(),
                            body: body.clone(),
                        });
                        let id = s.statuses.len();
                        (
                            201,
                            json!({"id": id, "state": body["state"], "context": body["context"],
                                     "description": body["description"]}),
                        )
                    }
                    ("GET", ["commits", sha, "statuses"]) => {
                        let list: Vec<Value> = s
                            .statuses
                            .iter()
                            .enumerate()
                            .filter(|(_, w)| w.repo == full && w.sha == *sha)
                            .rev()
                            .map(|(i, w)| {
                                json!({"id": i + 1, "state": w.body["state"], "context": w.body["context"],
                                       "description": w.body["description"]})
                            })
                            .collect();
                        (200, Value::Array(list))
                    }
                    _ => (404, json!({"message": "Not Found"})),
                }
            }
            _ => (404, json!({"message": "Not Found"})),
        }
    }
}

fn fastrand_token() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}{n:08x}", t ^ u128::from(std::process::id()) << 64)
}

impl Respond for Responder {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let (code, mut body) = self.answer(req);
        let link = body.as_object_mut().and_then(|m| m.remove(LINK));
        if link.is_some() {
            body = body
                .as_object_mut()
                .and_then(|m| m.remove(BODY))
                .unwrap_or_default();
        }
        let headers = body.as_object_mut().and_then(|m| m.remove(deployments::HEADERS));
        let offset = self.state.lock().unwrap().clock_offset;
        let date = UNIX_EPOCH + Duration::from_secs(now_secs(offset));
        let mut t = ResponseTemplate::new(code)
            .insert_header("date", httpdate::fmt_http_date(date).as_str())
            .insert_header("x-ratelimit-remaining", "4999");
        if let Some(Value::String(link)) = link {
            t = t.insert_header("link", link.as_str());
        }
        if let Some(Value::Object(headers)) = headers {
            for (k, v) in headers {
                t = t.insert_header(k.as_str(), v.as_str().unwrap_or_default());
            }
        }
        t.set_body_json(body)
    }
}
