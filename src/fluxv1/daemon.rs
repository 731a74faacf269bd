//! fluxd's websocket (`--connect`): fluxd dials us and keeps the connection open,
//! pinging every ~13 s; we answer pings and never answer 410 (fluxd exits on 410).
//! On it we are the JSON-RPC client: calls from the workload poller go out as binary
//! frames, and replies are matched to them by id ([`super::rpc`]).

use super::rpc::{Calls, Incoming};
use crate::ingest::{Ingest, drain, error};
use crate::listener::metrics::ReasonLabel;
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::{debug, info, warn};

/// RPC replies can hold every workload of the cluster (about 2 KiB each); a message
/// is buffered whole before it is decoded, so it is bounded.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// fluxd (gorilla/websocket) writes frames of its 4 KiB write buffer; a frame's
/// length is checked before its payload is read.
const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// One fluxd connects; a few more cover a reconnect racing the old session's end.
const MAX_SESSIONS: usize = 4;

/// Holds a session slot from the upgrade until the session ends (or the upgrade fails).
struct Session(Arc<Ingest>);

impl Drop for Session {
    fn drop(&mut self) {
        self.0.websocket_sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

fn refused(st: &Ingest, reason: &'static str, resp: Response) -> Response {
    st.metrics
        .listener
        .websocket_refused
        .get_or_create(&ReasonLabel { reason })
        .inc();
    resp
}

pub async fn handle(st: Arc<Ingest>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    if parts.method != axum::http::Method::GET {
        drain(body).await;
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "fluxd connects with a websocket GET",
        );
    }
    if let Err(refusal) = st.auth.check_fluxd(&parts.headers) {
        drain(body).await;
        if let Some(suppressed) = st.refusal_log.allow() {
            warn!(source = "fluxv1", path = %parts.uri.path(), reason = refusal.label, suppressed,
                "fluxd websocket rejected: {}", refusal.message);
        }
        let answer = error(StatusCode::UNAUTHORIZED, refusal.reason, refusal.message);
        return refused(&st, refusal.label, answer);
    }
    if st.websocket_sessions.fetch_add(1, Ordering::Relaxed) >= MAX_SESSIONS {
        st.websocket_sessions.fetch_sub(1, Ordering::Relaxed);
        drain(body).await;
        if let Some(suppressed) = st.refusal_log.allow() {
            warn!(
                source = "fluxv1",
                max = MAX_SESSIONS,
                suppressed,
                "fluxd websocket rejected: too many sessions open"
            );
        }
        let mut answer = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            "too many fluxd websocket sessions open",
        );
        answer
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return refused(&st, "too_many_sessions", answer);
    }
    let slot = Session(st.clone());
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = parts.uri.path().to_string();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws
            .max_message_size(MAX_MESSAGE_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            .on_upgrade(move |socket| async move {
                session(socket, st, user_agent, path).await;
                drop(slot);
            }),
        // 400/426 with axum's explanation: never 410.
        Err(rejection) => {
            drain(body).await;
            rejection.into_response()
        }
    }
}

async fn session(mut socket: WebSocket, st: Arc<Ingest>, user_agent: String, path: String) {
    st.metrics.fluxd_connected.inc();
    let (connection, mut outgoing) = st.fluxd.attach();
    let mut calls = Calls::default();
    info!(user_agent = %user_agent, path = %path, connection, "fluxd connected");
    let idle = tokio::time::sleep(st.websocket_idle);
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
                info!(idle = ?st.websocket_idle, "fluxd websocket silent (not even a ping); closing it");
                let _ = socket
                    .send(Message::Close(Some(CloseFrame { code: 1001, reason: "idle".into() })))
                    .await;
                break;
            }
            msg = socket.recv() => {
                idle.as_mut().reset(tokio::time::Instant::now() + st.websocket_idle);
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
    st.fluxd.detach(connection);
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
