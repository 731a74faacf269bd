//! fluxd's websocket (`--connect`): fluxd dials us and keeps the connection open,
//! pinging every ~13 s; we answer pings and never answer 410 (fluxd exits on 410).
//! On it we are the JSON-RPC client: calls from the workload poller go out as binary
//! frames, and replies are matched to them by id ([`super::rpc`]).

use super::rpc::{Calls, Incoming};
use crate::ingest::{Ingest, drain, error, upstream_authorized};
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tracing::{debug, info, warn};

/// RPC replies can hold every workload of the cluster; bound them all the same.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

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
    if !upstream_authorized(&parts.headers, &st.upstream_token) {
        drain(body).await;
        warn!(source = "fluxv1", path = %parts.uri.path(), "fluxd websocket rejected: missing or wrong Scope-Probe token");
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong fluxd token",
        );
    }
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
            .on_upgrade(move |socket| session(socket, st, user_agent, path)),
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
    loop {
        tokio::select! {
            Some(call) = outgoing.recv() => {
                let frame = calls.frame(call);
                if let Err(e) = socket.send(Message::Binary(frame.into())).await {
                    info!(error = %e, "fluxd websocket error");
                    break;
                }
            }
            msg = socket.recv() => match msg {
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
            },
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
