//! The ingest listener: what fluxd (and later Flux v2) talks to.
//!
//! Routing is by path suffix so that a path prefix in fluxd's `--connect`
//! (`ws://host:3000/flux` → `/flux/v11/daemon`, `/flux/v6/events`) just works.

use crate::delivery::AcceptError;
use crate::delivery::Delivery;
use crate::fluxv1;
use crate::fluxv2;
use crate::mapping::Skip;
use crate::mapping::v1::V1Context;
use crate::mapping::v2::V2Context;
use crate::metrics::Metrics;
use crate::metrics::SkipLabels;
use crate::update::StatusUpdate;
use axum::body::{Body, Bytes};
use axum::http::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub struct Ingest {
    pub metrics: Arc<Metrics>,
    pub delivery: Arc<Delivery>,
    pub v1: V1Context,
    pub v2: V2Context,
    /// `generic-hmac`: every Flux v2 event must carry a valid `X-Signature`.
    pub hmac_key: Option<secrecy::SecretBox<Vec<u8>>>,
    /// What fluxd must present as `Authorization: Scope-Probe token=<token>`.
    pub upstream_token: Option<SecretString>,
    pub max_event_bytes: usize,
    /// Fired on shutdown: websocket sessions close.
    pub shutdown: CancellationToken,
    /// fluxd's websocket, for RPC calls to it.
    pub fluxd: Arc<fluxv1::rpc::FluxdLink>,
    /// Checks the workloads of each sync (`--poll-workloads`).
    pub poller: Option<fluxv1::poller::PollHandle>,
}

/// Serves the ingest routes over HTTP/1.1 (with upgrades, for fluxd's websocket)
/// until `stop`; then accepts no more connections, lets each finish the request it
/// is in, and returns once all are closed. What `axum::serve` does, with two
/// differences, both for the cost of an event:
/// - half-close is allowed. Without it, hyper polls the socket for an early EOF
///   while a request is in flight; every event waits for an fsync, and each of those
///   reads found the read buffer still shared with the request, so it allocated a
///   new one (8 KiB per event) for a read that then found nothing. A sender that goes
///   away mid-request is noticed when its answer is written instead; its event is
///   kept either way.
/// - no axum `Router`: every path goes to [`route`] anyway, and the router boxed
///   each request's future (1.7 KiB, past the size glibc serves from its per-thread
///   cache) and added a tenth of the instructions of an event. hyper keeps the
///   future of a plain service in one allocation per connection.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<Ingest>, stop: CancellationToken) {
    use hyper_util::rt::TokioIo;
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::error!(error = %e, "could not accept a connection; retrying in 1 s");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let (st, stop) = (state.clone(), stop.clone());
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let st = st.clone();
            async move { Ok::<_, std::convert::Infallible>(route(st, req.map(Body::new)).await) }
        });
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    connections.close();
    connections.wait().await;
}

async fn route(st: Arc<Ingest>, req: Request<Body>) -> Response {
    let path = req.uri().path();
    let v1_events = path.ends_with("/v6/events");
    let v2_events = path == "/" || path.trim_end_matches('/').ends_with("/v2/events");
    if is_daemon_path(path) {
        return fluxv1::daemon::handle(st, req).await;
    }
    if (v1_events || v2_events) && req.method() == Method::POST {
        return if v1_events {
            fluxv1::events::handle(st, req).await
        } else {
            fluxv2::events::handle(st, req).await
        };
    }
    drain(req.into_body()).await;
    if v1_events || v2_events {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// `…/v<N>/daemon` for any N: fluxd ≥ 1.14 dials v11, older ones lower versions.
fn is_daemon_path(path: &str) -> bool {
    let mut parts = path.trim_end_matches('/').rsplit('/');
    parts.next() == Some("daemon")
        && parts
            .next()
            .and_then(|v| v.strip_prefix('v'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks `--token` in constant time, as fluxd sends it (`Authorization: Scope-Probe
/// token=<token>`) or as a notification-controller Provider's Secret `headers` can
/// (`Authorization: Bearer <token>`).
pub fn upstream_authorized(headers: &HeaderMap, token: &Option<SecretString>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = token else { return true };
    let Some(given) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let given = given.as_bytes();
    let token = token.expose_secret().as_bytes();
    let matches = |prefix: &[u8]| -> bool {
        given.len() == prefix.len() + token.len()
            && bool::from(given[..prefix.len()].ct_eq(prefix) & given[prefix.len()..].ct_eq(token))
    };
    matches(b"Scope-Probe token=") | matches(b"Bearer ")
}

pub enum BodyError {
    TooLarge,
    Unreadable(String),
}

/// The gate every event route shares: the token, then a body within `limit`.
/// Returns the body, or the answer to give instead (401, 413, 400).
pub async fn event_body(
    st: &Ingest,
    source: &'static str,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, Response> {
    if !upstream_authorized(headers, &st.upstream_token) {
        drain(body).await;
        st.metrics.event(source, "unknown", "unauthorized");
        warn!(source, "event rejected: missing or wrong token");
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong token",
        ));
    }
    read_body(headers, body, limit).await.map_err(|e| match e {
        BodyError::TooLarge => {
            st.metrics.event(source, "unknown", "too_large");
            warn!(source, limit, "event rejected: body too large");
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("event body exceeds {limit} bytes"),
            )
        }
        BodyError::Unreadable(e) => {
            st.metrics.event(source, "unknown", "unreadable");
            warn!(source, error = %e, "event rejected: body could not be read");
            error(StatusCode::BAD_REQUEST, "unreadable", e)
        }
    })
}

/// 400 for a body that is not an event, counted and logged with `label`.
pub fn not_an_event(
    st: &Ingest,
    source: &'static str,
    label: &'static str,
    message: String,
    bytes: usize,
) -> Response {
    st.metrics.event(source, "unknown", label);
    warn!(source, reason = label, error = %message, bytes, "event rejected");
    error(StatusCode::BAD_REQUEST, label, message)
}

/// Counts why an event, or part of it, became no status.
pub fn count_skips(st: &Ingest, skips: &[Skip]) {
    for skip in skips {
        st.metrics
            .skipped
            .get_or_create(&SkipLabels { reason: skip.label() })
            .inc();
    }
}

/// Persists an event's updates; `Err` is the 503 to give when the outbox is full or
/// the store is failing (the sender retries).
pub async fn persist(
    st: &Ingest,
    source: &'static str,
    kind: &'static str,
    updates: Vec<StatusUpdate>,
) -> Result<(), Response> {
    match st.delivery.accept(updates).await {
        Ok(_) => {
            st.metrics.event(source, kind, "accepted");
            Ok(())
        }
        Err(AcceptError::TooLarge(why)) => {
            // Re-sending cannot help: not 503, which invites it.
            st.metrics.event(source, kind, "update_too_large");
            warn!(source, r#type = kind, reason = "update_too_large", error = %why, "event refused");
            Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "update_too_large",
                format!("status update too large to store: {why}"),
            ))
        }
        Err(e) => {
            let reason = match e {
                AcceptError::Full(_) => "queue_full",
                AcceptError::Store(_) => "store_unavailable",
                AcceptError::TooLarge(_) => "update_too_large",
            };
            st.metrics.event(source, kind, reason);
            warn!(source, r#type = kind, reason, error = %e, "event refused; the sender will retry");
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, reason, e.to_string());
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            Err(resp)
        }
    }
}

/// How much of an oversized body is read and thrown away so the client, still
/// sending, gets to see the 413 rather than a reset connection.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads a body up to `limit` bytes; an announced or actual overflow is `TooLarge`.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(BodyError::TooLarge);
    }
    let mut body = body;
    // A body that arrives in one piece (nearly every event) is used as it is, not copied.
    let mut first: Option<Bytes> = None;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            let have = first.as_ref().map_or(0, Bytes::len) + buf.len();
            if have + data.len() > limit {
                drain(body).await;
                return Err(BodyError::TooLarge);
            }
            if first.is_none() && buf.is_empty() {
                first = Some(data);
                continue;
            }
            if let Some(earlier) = first.take() {
                buf.reserve(announced.map_or(0, |n| n as usize).max(have + data.len()));
                buf.extend_from_slice(&earlier);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// Reads and discards what is left of a request body we answer without using, bounded
/// in bytes and time, so the client can read our answer.
///
/// Boxed: only refusals drain, and its timer would otherwise take room in every request
/// future that may refuse, which hyper keeps for as long as each connection lives.
pub fn drain(mut body: Body) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let mut seen = 0usize;
        let read = async {
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > DRAIN_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, read).await;
    })
}

/// A JSON error answer: `{"error": "...", "reason": "..."}`.
pub fn error(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into(), "reason": reason });
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn chunked(parts: &[&'static [u8]]) -> Body {
        let frames = parts
            .iter()
            .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p)))
            .collect::<Vec<_>>();
        Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn bodies_are_read_whole_in_one_piece_or_many() {
        let none = HeaderMap::new();
        for parts in [
            &[&b"{\"type\":\"sync\"}"[..]][..],
            &[b"{\"ty", b"", b"pe\":", b"\"sync\"}"],
        ] {
            let body = read_body(&none, chunked(parts), 64).await;
            assert_eq!(
                body.ok().as_deref(),
                Some(&b"{\"type\":\"sync\"}"[..]),
                "{parts:?}"
            );
        }
        let over = read_body(&none, chunked(&[b"0123456789", b"0123456789"]), 15).await;
        assert!(
            matches!(over, Err(BodyError::TooLarge)),
            "the limit counts every piece"
        );
        let exact = read_body(&none, chunked(&[b"0123456789", b"01234"]), 15).await;
        assert_eq!(exact.ok().as_deref(), Some(&b"012345678901234"[..]));
    }

    #[test]
    fn upstream_token_must_match_exactly() {
        let token = Some(SecretString::from("s3cret".to_string()));
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(upstream_authorized(&with("Scope-Probe token=s3cret"), &token));
        assert!(!upstream_authorized(&with("Scope-Probe token=s3cre"), &token));
        assert!(upstream_authorized(&with("Bearer s3cret"), &token));
        assert!(!upstream_authorized(&with("Bearer s3cre"), &token));
        assert!(!upstream_authorized(&HeaderMap::new(), &token));
        assert!(upstream_authorized(&HeaderMap::new(), &None));
    }
}
