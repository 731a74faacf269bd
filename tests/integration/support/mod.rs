//! Shared test harness: the daemon (in-process, or a child where a test signals it), a
//! scriptable provider fake that records what it was sent, fluxd's side of the
//! websocket, and fixture loading.
#![allow(dead_code)]

mod daemon;
mod in_process;
mod logs;
pub mod openapi;

pub use daemon::Daemon;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

pub const WAIT: Duration = Duration::from_secs(15);

pub fn fixture(rel: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A file holding `contents`, as `--token-file` and `--hmac-key-file` read one.
pub fn secret_file(name: &str, contents: &str) -> String {
    let path = temp_dir("secret").join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_string()
}

/// notification-controller's `X-Signature` of a forwarded fixture, and the key it
/// signed with.
pub fn v2_signature(file: &str) -> String {
    let sigs: serde_json::Value = serde_json::from_slice(&fixture("v2/forwarded/signatures.json")).unwrap();
    sigs["files"][file]["X-Signature"].as_str().unwrap().to_string()
}

pub fn v2_hmac_key() -> String {
    let sigs: serde_json::Value = serde_json::from_slice(&fixture("v2/forwarded/signatures.json")).unwrap();
    sigs["hmacKey"].as_str().unwrap().to_string()
}

/// A fixture as fluxd sends it: compact JSON, no trailing newline.
pub fn compact(rel: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::to_vec(&v).unwrap()
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
