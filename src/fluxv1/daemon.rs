//! fluxd's websocket (`--connect`): fluxd dials us and keeps the connection open,
//! pinging every ~13 s; we answer pings and never answer 410 (fluxd exits on 410).
//! On it we are the JSON-RPC client: calls from the workload poller go out as binary
//! frames, and replies are matched to them by id ([`super::rpc`]).

use super::rpc::{Calls, FluxdLink, Incoming};
use crate::intake::{Intake, Rejection, drain};
use crate::metrics::Metrics;
use axum::extract::Request;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// RPC replies can hold every workload of the cluster (about 2 KiB each); a message
/// is buffered whole before it is decoded, so it is bounded.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// fluxd (gorilla/websocket) writes frames of its 4 KiB write buffer; a frame's
/// length is checked before its payload is read.
const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// One fluxd connects; a few more cover a reconnect racing the old session's end.
const MAX_SESSIONS: usize = 4;

/// What fluxd's websocket needs besides [`Intake`]; shared with each session.
pub struct Websocket {
    pub metrics: Arc<Metrics>,
    /// The websocket closes after this long without a frame (fluxd pings every ~13 s).
    pub idle: Duration,
    /// Sessions open; each may buffer one message.
    pub sessions: AtomicUsize,
    /// Fired on shutdown: sessions close.
    pub shutdown: CancellationToken,
    /// For RPC calls to fluxd.
    pub link: Arc<FluxdLink>,
}

/// `…/v<N>/daemon` for any N: fluxd ≥ 1.14 dials v11, older ones lower versions.
pub fn is_daemon_path(path: &str) -> bool {
    let mut parts = path.trim_end_matches('/').rsplit('/');
    parts.next() == Some("daemon")
        && parts
            .next()
            .and_then(|v| v.strip_prefix('v'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Holds a session slot from the upgrade until the session ends (or the upgrade fails).
struct Session(Arc<Websocket>);

impl Drop for Session {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upgrade (101), axum's own 400/426 for a request that is no websocket
/// handshake (never 410: fluxd exits on 410), or why it is refused. `path` is the
/// path as fluxd sent it; our refusals come before axum's.
pub async fn handle(
    intake: &Intake,
    ws: &Arc<Websocket>,
    path: &str,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    req: Request,
) -> Result<Response, Rejection> {
    let (parts, body) = req.into_parts();
    if parts.method != axum::http::Method::GET {
        drain(body).await;
        return Err(Rejection::MethodNotAllowed {
            allow: None,
            message: "fluxd connects with a websocket GET",
        });
    }
    if let Err(refusal) = intake.auth.check_fluxd(&parts.headers) {
        drain(body).await;
        return Err(Rejection::Unauthorized(refusal));
    }
    if ws.sessions.fetch_add(1, Ordering::Relaxed) >= MAX_SESSIONS {
        ws.sessions.fetch_sub(1, Ordering::Relaxed);
        drain(body).await;
        return Err(Rejection::TooManySessions { max: MAX_SESSIONS });
    }
    let slot = Session(ws.clone());
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            drain(body).await;
            return Ok(rejection.into_response());
        }
    };
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = path.to_string();
    let st = ws.clone();
    Ok(upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            session(socket, st, user_agent, path).await;
            drop(slot);
        }))
}

async fn session(mut socket: WebSocket, st: Arc<Websocket>, user_agent: String, path: String) {
    st.metrics.fluxd_connected.inc();
    let (connection, mut outgoing) = st.link.attach();
    let mut calls = Calls::default();
    info!(user_agent = %user_agent, path = %path, connection, "fluxd connected");
    let idle = tokio::time::sleep(st.idle);
    let mut idle = std::pin::pin!(idle);
    loop {
        tokio::select! {
            Some(call) = outgoing.recv() => {
                let frame = calls.frame(call);
                if let Err(e) = socket.send(Message::Binary(frame.into())).await {
                    info!(error = %e, "fluxd websocket error");
                    break;
                }
            }
            () = idle.as_mut() => {
                info!(idle = ?st.idle, "fluxd websocket silent (not even a ping); closing it");
                let _ = socket
                    .send(Message::Close(Some(CloseFrame { code: 1001, reason: "idle".into() })))
                    .await;
                break;
            }
            msg = socket.recv() => {
                idle.as_mut().reset(tokio::time::Instant::now() + st.idle);
                match msg {
                // Pings are answered by the websocket layer while we read.
                Some(Ok(Message::Binary(data))) => receive(&mut calls, &data),
                Some(Ok(Message::Text(text))) => receive(&mut calls, text.as_bytes()),
                Some(Ok(Message::Close(frame))) => {
                    debug!(?frame, "fluxd closed the websocket");
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    info!(error = %e, "fluxd websocket error");
                    break;
                }
                None => break,
                }
            }
            _ = st.shutdown.cancelled() => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame { code: 1001, reason: "flux-status shutting down".into() })))
                    .await;
                break;
            }
        }
    }
    st.link.detach(connection);
    calls.disconnected();
    st.metrics.fluxd_connected.dec();
    info!(user_agent = %user_agent, connection, "fluxd disconnected");
}

fn receive(calls: &mut Calls, frame: &[u8]) {
    match calls.receive(frame) {
        Incoming::Answered => {}
        Incoming::Unmatched(what) => debug!(%what, "fluxd replied to a call nobody waits for (timed out)"),
        Incoming::Malformed(e) => {
            warn!(error = %e, bytes = frame.len(), "fluxd sent a frame that is not a JSON-RPC reply")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::testing::{intake, post};
    use axum::extract::FromRequestParts;

    /// As the router calls it: the upgrade extracted from the request.
    async fn call(intake: &Intake, ws: &Arc<Websocket>, req: Request) -> Result<Response, Rejection> {
        let (mut parts, body) = req.into_parts();
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &()).await;
        handle(
            intake,
            ws,
            "/v11/daemon",
            upgrade,
            Request::from_parts(parts, body),
        )
        .await
    }

    #[test]
    fn daemon_paths_of_every_version_and_prefix() {
        for p in [
            "/v11/daemon",
            "/v6/daemon",
            "/flux/v11/daemon",
            "/api/flux/v10/daemon/",
            "/v1/daemon",
        ] {
            assert!(is_daemon_path(p), "{p}");
        }
        for p in ["/daemon", "/v/daemon", "/vX/daemon", "/v11/daemons", "/v11", "/"] {
            assert!(!is_daemon_path(p), "{p}");
        }
    }

    fn websocket(open: usize) -> Arc<Websocket> {
        Arc::new(Websocket {
            metrics: Arc::new(Metrics::new()),
            idle: Duration::from_secs(90),
            sessions: AtomicUsize::new(open),
            shutdown: CancellationToken::new(),
            link: Arc::new(FluxdLink::default()),
        })
    }

    fn get(headers: &[(&str, &str)]) -> Request {
        let mut req = post("", headers);
        *req.method_mut() = axum::http::Method::GET;
        req
    }

    #[tokio::test]
    async fn refusals_come_before_the_upgrade_and_free_their_slot() {
        let i = intake(Some("t"), None, 10);
        let ws = websocket(0);
        let out = call(&i, &ws, post("", &[("authorization", "Scope-Probe token=t")])).await;
        assert!(
            matches!(out, Err(Rejection::MethodNotAllowed { allow: None, .. })),
            "{out:?}"
        );
        let out = call(&i, &ws, get(&[("authorization", "Scope-Probe token=u")])).await;
        assert!(
            matches!(&out, Err(Rejection::Unauthorized(r)) if r.label == "unauthorized"),
            "{out:?}"
        );
        let full = websocket(MAX_SESSIONS);
        let out = call(&i, &full, get(&[("authorization", "Scope-Probe token=t")])).await;
        assert!(
            matches!(out, Err(Rejection::TooManySessions { max: MAX_SESSIONS })),
            "{out:?}"
        );
        assert_eq!(full.sessions.load(Ordering::Relaxed), MAX_SESSIONS);
        assert_eq!(ws.sessions.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_request_that_is_no_handshake_gets_axums_answer_never_410() {
        let i = intake(None, None, 10);
        let ws = websocket(0);
        let answer = call(&i, &ws, get(&[])).await.expect("not one of our refusals");
        assert!(answer.status().is_client_error(), "{}", answer.status());
        assert_ne!(answer.status(), axum::http::StatusCode::GONE);
        assert_eq!(ws.sessions.load(Ordering::Relaxed), 0, "the slot is freed");
    }
}
