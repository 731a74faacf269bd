//! A GitHub that fails the way real ones do after taking a write: it applies the
//! status and then hangs, resets the connection or answers 5xx, or applies it only
//! after the client gave up. Hand-written over TCP, since a reset and a late apply
//! are beyond wiremock. It keeps every status it applied and lists them back newest
//! first, as GitHub does. It can also insist on a token, or take its time to answer.
#![allow(dead_code)]

pub mod app;
pub mod checks;
pub mod deployments;

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake answers a status write.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Applies it, then never answers: the client times out.
    ApplyThenHang,
    /// Applies it, then resets the connection.
    ApplyThenReset,
    /// Applies it, then answers with this 5xx.
    ApplyThen5xx(u16),
    /// Never answers, and applies it this long after it arrived.
    ApplyLate(Duration),
    /// 503 without applying it (reads get 503 too).
    Unavailable,
    /// Never answers, never applies.
    Hang,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub sha: String,
    pub context: String,
    /// GitHub's word: pending, success, failure, error.
    pub state: String,
    pub description: String,
    /// When it was applied.
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    applied: Mutex<Vec<Status>>,
    /// Faults for the next writes, in order.
    script: Mutex<VecDeque<Fault>>,
    /// A fault for every write while set.
    outage: Mutex<Option<Fault>>,
    writes: AtomicUsize,
    listings: AtomicUsize,
    /// Every (sha, context) a write was received for.
    attempted: Mutex<HashSet<(String, String)>>,
    /// The only token accepted, when set: any other gets 401.
    token: Mutex<Option<String>>,
    /// How long a write that applies waits before its answer.
    write_delay: Mutex<Duration>,
}

#[derive(Clone)]
pub struct GitHub {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl GitHub {
    pub async fn start() -> GitHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let serving = shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, serving.clone()));
            }
        });
        GitHub { addr, shared }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next writes meet these faults, one each, in order.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.script.lock().unwrap().extend(faults);
    }

    pub fn outage(&self, fault: Option<Fault>) {
        *self.shared.outage.lock().unwrap() = fault;
    }

    /// Every request must carry `Authorization: Bearer <token>` from now on.
    pub fn require_token(&self, token: &str) {
        *self.shared.token.lock().unwrap() = Some(token.to_string());
    }

    /// Writes are applied at once and answered `delay` later.
    pub fn delay_writes(&self, delay: Duration) {
        *self.shared.write_delay.lock().unwrap() = delay;
    }

    /// Waits until `done` holds; panics after `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; applied: {}",
                self.applied().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every status applied, oldest first.
    pub fn applied(&self) -> Vec<Status> {
        self.shared.applied.lock().unwrap().clone()
    }

    /// The status on top per (sha, context).
    pub fn on_top(&self) -> HashMap<(String, String), String> {
        self.applied()
            .into_iter()
            .map(|s| ((s.sha, s.context), s.state))
            .collect()
    }

    /// Status writes received (applied or not).
    pub fn writes(&self) -> usize {
        self.shared.writes.load(Ordering::Relaxed)
    }

    /// Checks a write was received for (applied or not).
    pub fn attempted(&self) -> usize {
        self.shared.attempted.lock().unwrap().len()
    }

    /// Status listings received.
    pub fn listings(&self) -> usize {
        self.shared.listings.load(Ordering::Relaxed)
    }
}

struct Received {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// Reads one request; `None` once the client is gone.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(buf) {
            let method = req.method?.to_string();
            let path = req.path?.to_string();
            let authorization = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_string);
            let len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < head + len {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[head..head + len].to_vec();
            buf.drain(..head + len);
            return Some(Received {
                method,
                path,
                authorization,
                body,
            });
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(stream: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         X-RateLimit-Remaining: 4321\r\nX-RateLimit-Reset: 1999999999\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await
}

/// Holds the connection without answering until the client gives up on it.
async fn hang(mut stream: TcpStream) {
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    while let Some(Received {
        method,
        path,
        authorization,
        body,
    }) = read_request(&mut stream, &mut buf).await
    {
        let token = shared.token.lock().unwrap().clone();
        if let Some(token) = token
            && authorization.as_deref() != Some(&format!("Bearer {token}"))
        {
            if answer(&mut stream, 401, &json!({"message": "Bad credentials"}))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let path = path.split('?').next().unwrap_or("").to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let outage = *shared.outage.lock().unwrap();
        let sent = match (method.as_str(), parts.as_slice()) {
            ("POST", ["repos", _, _, "statuses", sha]) => {
                shared.writes.fetch_add(1, Ordering::Relaxed);
                let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                let status = Status {
                    sha: sha.to_string(),
                    context: body["context"].as_str().unwrap_or("").to_string(),
                    state: body["state"].as_str().unwrap_or("").to_string(),
                    description: body["description"].as_str().unwrap_or("").to_string(),
                    at: Instant::now(),
                };
                shared
                    .attempted
                    .lock()
                    .unwrap()
                    .insert((status.sha.clone(), status.context.clone()));
                let fault = outage.or_else(|| shared.script.lock().unwrap().pop_front());
                let apply = |s: &Arc<Shared>, mut status: Status| {
                    status.at = Instant::now();
                    let mut applied = s.applied.lock().unwrap();
                    applied.push(status);
                    applied.len()
                };
                match fault {
                    None => {
                        let id = apply(&shared, status.clone());
                        let delay = *shared.write_delay.lock().unwrap();
                        tokio::time::sleep(delay).await;
                        answer(
                            &mut stream,
                            201,
                            &json!({"id": id, "state": status.state, "context": status.context}),
                        )
                        .await
                    }
                    Some(Fault::ApplyThenHang) => {
                        apply(&shared, status);
                        return hang(stream).await;
                    }
                    Some(Fault::ApplyThenReset) => {
                        apply(&shared, status);
                        let _ = stream.set_zero_linger();
                        return;
                    }
                    Some(Fault::ApplyThen5xx(code)) => {
                        apply(&shared, status);
                        answer(&mut stream, code, &json!({"message": "Server Error"})).await
                    }
                    Some(Fault::ApplyLate(after)) => {
                        let late = shared.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            apply(&late, status);
                        });
                        return hang(stream).await;
                    }
                    Some(Fault::Unavailable) => {
                        answer(&mut stream, 503, &json!({"message": "Service Unavailable"})).await
                    }
                    Some(Fault::Hang) => return hang(stream).await,
                }
            }
            ("GET", ["repos", _, _, "commits", sha, "statuses"]) => {
                shared.listings.fetch_add(1, Ordering::Relaxed);
                if outage == Some(Fault::Unavailable) {
                    answer(&mut stream, 503, &json!({"message": "Service Unavailable"})).await
                } else {
                    let list: Vec<Value> = {
                        let applied = shared.applied.lock().unwrap();
                        applied
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.sha == *sha)
                            .rev()
                            .map(|(i, s)| {
                                json!({"id": i + 1, "state": s.state, "context": s.context,
                                       "description": s.description})
                            })
                            .collect()
                    };
                    answer(&mut stream, 200, &Value::Array(list)).await
                }
            }
            ("GET", ["repos", _, _]) => {
                answer(&mut stream, 200, &json!({"id": 1, "full_name": "acme/app"})).await
            }
            _ => answer(&mut stream, 404, &json!({"message": "Not Found"})).await,
        };
        if sent.is_err() {
            return;
        }
    }
}
