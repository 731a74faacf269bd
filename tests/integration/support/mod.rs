//! Shared test harness: the real daemon as a child process, a scriptable provider
//! fake that records what it was sent, a fake fluxd, and fixture loading.
#![allow(dead_code)]

pub mod openapi;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

pub const WAIT: Duration = Duration::from_secs(15);

pub fn fixture(rel: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fixture as fluxd sends it: compact JSON, no trailing newline.
pub fn compact(rel: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::to_vec(&v).unwrap()
}

/// The daemon binary, started with ephemeral ports and JSON logs captured.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    /// The durable outbox, kept across restarts of the same test.
    pub state_dir: std::path::PathBuf,
}

/// A fresh directory for one daemon's state.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("flux-status-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Daemon {
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_in(temp_dir("state"), args, env).await
    }

    /// The daemon for `https://github.com/acme/app` (instance `dev`) with its API at
    /// `api` and `token` as `GITHUB_TOKEN`: what the durability tests share.
    pub async fn start_for_github(
        state_dir: std::path::PathBuf,
        api: &str,
        token: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut args = vec![
            "--git-url",
            "https://github.com/acme/app",
            "--instance",
            "dev",
            "--api-url",
            api,
        ];
        args.extend_from_slice(extra);
        let mut env = env.to_vec();
        env.push(("GITHUB_TOKEN", token));
        Self::start_in(state_dir, &args, &env).await
    }

    /// Starts with the given state directory (unless `args` disables persistence).
    pub async fn start_in(state_dir: std::path::PathBuf, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flux-status"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ])
        .args(["--state-dir", state_dir.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let credentials = notifiers::PROVIDERS.iter().map(|p| p.credential.env);
        for var in credentials.chain(["RUST_LOG"]) {
            cmd.env_remove(var);
        }
        // Sync-status tests count provider writes: workload statuses would add to
        // them. tests/workloads.rs turns polling on with `--poll-workloads`.
        cmd.env("FLUX_STATUS_POLL_WORKLOADS", "false");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn flux-status");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                sink.lock().unwrap().push(v);
            }
        });
        let mut d = Daemon {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            ops: "0.0.0.0:0".parse().unwrap(),
            logs,
            state_dir,
        };
        let listen = |msg: &str, d: &Daemon| {
            d.find_log(|l| l["message"] == msg)
                .and_then(|l| l["addr"].as_str().and_then(|a| a.parse().ok()))
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let (Some(a), Some(o)) = (listen("ingest listening", &d), listen("ops listening", &d)) {
                d.addr = a;
                d.ops = o;
                return d;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("flux-status exited with {status}; logs: {:#?}", d.logs());
            }
            assert!(
                Instant::now() < deadline,
                "flux-status did not start; logs: {:#?}",
                d.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    pub fn find_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
        self.logs.lock().unwrap().iter().find(|l| pred(l)).cloned()
    }

    pub async fn wait_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.find_log(&pred) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "log line not seen; logs: {:#?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "kill -{sig} failed");
    }

    /// Waits for exit after a signal; panics if it does not come.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "flux-status did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The whole /metrics exposition.
    pub async fn metrics_text(&self) -> String {
        http()
            .get(format!("http://{}/metrics", self.ops))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// One sample from /metrics, e.g. `flux_status_statuses_total{provider="github",state="succeeded",result="written"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client for tests, from the same builder the notifiers use.
/// Built once: building a client loads the platform's root certificates, which is
/// far slower than the request itself.
pub fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            notifiers::http::client(&notifiers::http::HttpConfig::default()).expect("http client")
        })
        .clone()
}

/// POSTs a body exactly as fluxd does: no Content-Type, `Accept: application/json`,
/// Go's user agent.
pub async fn post_as_fluxd(url: &str, body: Vec<u8>, token: Option<&str>) -> (u16, String) {
    let mut req = http()
        .post(url)
        .header("Accept", "application/json")
        .header("User-Agent", "Go-http-client/1.1")
        .body(body);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Scope-Probe token={t}"));
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// A provider fake that answers from a script (then a default) and remembers when
/// each request came.
#[derive(Clone)]
pub struct Script {
    queue: Arc<Mutex<VecDeque<ResponseTemplate>>>,
    default: ResponseTemplate,
    arrivals: Arc<Mutex<Vec<SystemTime>>>,
}

impl Respond for Script {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        // Reads (the startup credential check) find the repository; the script is
        // for writes.
        if req.method != wiremock::http::Method::POST {
            // A read-back after a write of unknown outcome finds nothing written.
            if req.url.path().ends_with("/statuses") {
                return ResponseTemplate::new(200).set_body_json(serde_json::json!([]));
            }
            return ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": 1, "name": "app"}));
        }
        self.arrivals.lock().unwrap().push(SystemTime::now());
        self.queue
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.default.clone())
    }
}

pub struct Fake {
    pub server: MockServer,
    script: Script,
}

impl Fake {
    pub async fn start(default: ResponseTemplate, scripted: Vec<ResponseTemplate>) -> Fake {
        let server = MockServer::start().await;
        let script = Script {
            queue: Arc::new(Mutex::new(scripted.into())),
            default,
            arrivals: Arc::new(Mutex::new(Vec::new())),
        };
        Mock::given(any())
            .respond_with(script.clone())
            .mount(&server)
            .await;
        Fake { server, script }
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// The writes (POSTs) received, in order.
    pub async fn requests(&self) -> Vec<Request> {
        let all = self.server.received_requests().await.unwrap_or_default();
        all.into_iter()
            .filter(|r| r.method == wiremock::http::Method::POST)
            .collect()
    }

    pub fn arrivals(&self) -> Vec<SystemTime> {
        self.script.arrivals.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have come.
    pub async fn wait_for(&self, n: usize) -> Vec<Request> {
        let deadline = Instant::now() + WAIT;
        loop {
            let reqs = self.requests().await;
            if reqs.len() >= n {
                return reqs;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} provider requests, got {}",
                reqs.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asserts that exactly `n` requests came and no more arrive for `quiet`.
    pub async fn expect_exactly(&self, n: usize, quiet: Duration) -> Vec<Request> {
        self.wait_for(n).await;
        tokio::time::sleep(quiet).await;
        let reqs = self.requests().await;
        assert_eq!(
            reqs.len(),
            n,
            "unexpected extra provider requests: {:#?}",
            bodies(&reqs)
        );
        reqs
    }
}

pub fn bodies(reqs: &[Request]) -> Vec<(String, String)> {
    reqs.iter()
        .map(|r| {
            (
                format!("{} {}", r.method, r.url.path()),
                String::from_utf8_lossy(&r.body).into_owned(),
            )
        })
        .collect()
}

/// Validates a recorded request against a provider spec; returns the operation id.
pub fn check_against_spec(spec: &openapi::Spec, req: &Request) -> String {
    let op = spec
        .operation(req.method.as_str(), req.url.path())
        .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.url));
    let query: Vec<(String, String)> = req
        .url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let body: Option<serde_json::Value> = if req.body.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(&req.body).unwrap_or_else(|e| panic!("body is not JSON: {e}")))
    };
    op.validate(&query, body.as_ref())
        .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.url));
    op.id.clone()
}

/// GitHub's answer to a status write: the spec's own 201 example.
pub fn github_created() -> ResponseTemplate {
    let spec = openapi::Spec::load("github");
    let op = spec.operation("POST", "/repos/o/r/statuses/abc").unwrap();
    ResponseTemplate::new(201).set_body_json(op.example_response(201).expect("spec example"))
}

pub type FluxdSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to the daemon's websocket as fluxd 1.25.4 does.
pub async fn connect_fluxd(daemon: &Daemon, path: &str, token: Option<&str>) -> Result<FluxdSocket, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}{path}", daemon.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("User-Agent", "fluxd/1.25.4".parse().unwrap());
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", format!("Scope-Probe token={t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}
