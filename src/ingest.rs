//! The ingest listener: what fluxd (and later Flux v2) talks to.
//!
//! Routing is by path suffix so that a path prefix in fluxd's `--connect`
//! (`ws://host:3000/flux` → `/flux/v11/daemon`, `/flux/v6/events`) just works.

use crate::auth::{IngestAuth, Refusal};
use crate::delivery::AcceptError;
use crate::delivery::Delivery;
use crate::fluxv1;
use crate::fluxv2;
use crate::listener::throttle::Throttle;
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
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub struct Ingest {
    pub metrics: Arc<Metrics>,
    pub delivery: Arc<Delivery>,
    pub v1: V1Context,
    pub v2: V2Context,
    /// What each route must present.
    pub auth: IngestAuth,
    pub max_event_bytes: usize,
    /// Deadline and memory bound for reading event bodies.
    pub bodies: BodyGate,
    /// fluxd's websocket closes after this long without a frame (fluxd pings every ~13 s).
    pub websocket_idle: std::time::Duration,
    /// fluxd websocket sessions open; each may buffer one message.
    pub websocket_sessions: std::sync::atomic::AtomicUsize,
    /// Fired on shutdown: websocket sessions close.
    pub shutdown: CancellationToken,
    /// fluxd's websocket, for RPC calls to it.
    pub fluxd: Arc<fluxv1::rpc::FluxdLink>,
    /// Checks the workloads of each sync (`--poll-workloads`).
    pub poller: Option<fluxv1::poller::PollHandle>,
    /// Refusals a client can repeat at will are logged at this pace.
    pub refusal_log: Throttle,
}

/// Serves the ingest routes until `stop`, with the limits of [`crate::listener`].
/// Two choices there are for the cost of an event:
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
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Ingest>,
    limits: crate::listener::Limits,
    stop: CancellationToken,
) {
    let metrics = state.metrics.clone();
    crate::listener::serve("ingest", listener, limits, metrics, stop, move |req| {
        route(state.clone(), req)
    })
    .await;
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

pub enum BodyError {
    TooLarge,
    Unreadable(String),
    /// Not all there within `--body-timeout`.
    TimedOut,
    /// The bound on bodies being read at once is reached.
    Busy,
}

/// Which credential an event route needs (see [`crate::auth`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EventRoute {
    Fluxd,
    FluxV2,
}

/// The gate every event route shares, cheapest check first: the token, the announced
/// size, a signature header where one is required, then a body within `limit`.
/// Returns the body, or the answer to give instead (401, 413, 408, 503, 400).
pub async fn event_body(
    st: &Ingest,
    source: &'static str,
    route: EventRoute,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<HeldBody, Response> {
    let token = match route {
        EventRoute::Fluxd => st.auth.check_fluxd(headers),
        EventRoute::FluxV2 => st.auth.check_v2_token(headers),
    };
    if let Err(refusal) = token {
        return Err(refuse(st, source, refusal, body).await);
    }
    if announced_length(headers).is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(too_large(st, source, limit));
    }
    if route == EventRoute::FluxV2
        && let Err(refusal) = st.auth.check_v2_signature_present(headers)
    {
        return Err(refuse(st, source, refusal, body).await);
    }
    read_body(headers, body, limit, &st.bodies).await.map_err(|e| match e {
        BodyError::TooLarge => too_large(st, source, limit),
        BodyError::Unreadable(e) => {
            st.metrics.event(source, "unknown", "unreadable");
            warn!(source, error = %e, "event rejected: body could not be read");
            error(StatusCode::BAD_REQUEST, "unreadable", e)
        }
        BodyError::TimedOut => {
            st.metrics.event(source, "unknown", "body_timeout");
            if let Some(suppressed) = st.refusal_log.allow() {
                warn!(source, timeout = ?st.bodies.timeout, suppressed,
                    "event rejected: body not received within --body-timeout; closing the connection");
            }
            closing(error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "request body not received in time",
            ))
        }
        BodyError::Busy => {
            st.metrics.event(source, "unknown", "busy");
            if let Some(suppressed) = st.refusal_log.allow() {
                warn!(source, max_bytes = st.bodies.total, suppressed,
                    "event refused: too many body bytes being read at once (--max-body-bytes-in-flight); the sender will retry");
            }
            let mut resp = closing(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many requests being read; retry later",
            ));
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            resp
        }
    })
}

/// 401 for a request refused on its headers; its body is drained, not kept.
pub async fn refuse(st: &Ingest, source: &'static str, refusal: Refusal, body: Body) -> Response {
    drain(body).await;
    st.metrics.event(source, "unknown", refusal.label);
    if let Some(suppressed) = st.refusal_log.allow() {
        warn!(
            source,
            reason = refusal.label,
            suppressed,
            "event rejected: {}",
            refusal.message
        );
    }
    error(StatusCode::UNAUTHORIZED, refusal.reason, refusal.message)
}

fn too_large(st: &Ingest, source: &'static str, limit: usize) -> Response {
    st.metrics.event(source, "unknown", "too_large");
    warn!(source, limit, "event rejected: body too large");
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("event body exceeds {limit} bytes"),
    )
}

/// An answer after which the connection closes: what is left of the request is not read.
fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
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
/// How long a body waits for room under `--max-body-bytes-in-flight` before 503.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Bounds on reading event bodies, shared by every request.
pub struct BodyGate {
    pub timeout: std::time::Duration,
    /// Body bytes held by requests being read or handled, at most `total`.
    budget: Arc<Semaphore>,
    pub total: usize,
}

impl BodyGate {
    pub fn new(timeout: std::time::Duration, total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        BodyGate {
            timeout,
            budget: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Room for `n` more bytes: at once, or within [`BUDGET_WAIT`].
    async fn reserve(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let permits = u32::try_from(n).ok().filter(|_| n <= self.total)?;
        if let Ok(p) = self.budget.clone().try_acquire_many_owned(permits) {
            return Some(p);
        }
        tokio::time::timeout(BUDGET_WAIT, self.budget.clone().acquire_many_owned(permits))
            .await
            .ok()?
            .ok()
    }
}

/// A body read whole, holding its share of the body budget until dropped.
pub struct HeldBody {
    bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for HeldBody {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads a body up to `limit` bytes within the gate's deadline; an announced or actual
/// overflow is `TooLarge`. Memory follows the bytes received, never the length a
/// client announces.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    gate: &BodyGate,
) -> Result<HeldBody, BodyError> {
    if announced_length(headers).is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(BodyError::TooLarge);
    }
    match tokio::time::timeout(gate.timeout, collect(body, limit, gate)).await {
        Ok(read) => read,
        Err(_) => Err(BodyError::TimedOut),
    }
}

async fn collect(mut body: Body, limit: usize, gate: &BodyGate) -> Result<HeldBody, BodyError> {
    // A body that arrives in one piece (nearly every event) is used as it is, not copied.
    let mut first: Option<Bytes> = None;
    let mut buf = bytes::BytesMut::new();
    let mut have = 0usize;
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if have + data.len() > limit {
            drain(body).await;
            return Err(BodyError::TooLarge);
        }
        let room = gate.reserve(data.len()).await.ok_or(BodyError::Busy)?;
        match held.as_mut() {
            Some(h) => h.merge(room),
            None => held = Some(room),
        }
        have += data.len();
        if first.is_none() && buf.is_empty() {
            first = Some(data);
            continue;
        }
        if let Some(earlier) = first.take() {
            buf.reserve(have);
            buf.extend_from_slice(&earlier);
        }
        buf.extend_from_slice(&data);
    }
    Ok(HeldBody {
        bytes: first.unwrap_or_else(|| buf.freeze()),
        _budget: held,
    })
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

    fn gate() -> BodyGate {
        BodyGate::new(std::time::Duration::from_secs(30), 1024)
    }

    #[tokio::test]
    async fn bodies_are_read_whole_in_one_piece_or_many() {
        let none = HeaderMap::new();
        let gate = gate();
        for parts in [
            &[&b"{\"type\":\"sync\"}"[..]][..],
            &[b"{\"ty", b"", b"pe\":", b"\"sync\"}"],
        ] {
            let body = read_body(&none, chunked(parts), 64, &gate).await;
            assert_eq!(
                body.ok().as_deref(),
                Some(&b"{\"type\":\"sync\"}"[..]),
                "{parts:?}"
            );
        }
        let over = read_body(&none, chunked(&[b"0123456789", b"0123456789"]), 15, &gate).await;
        assert!(
            matches!(over, Err(BodyError::TooLarge)),
            "the limit counts every piece"
        );
        let exact = read_body(&none, chunked(&[b"0123456789", b"01234"]), 15, &gate).await;
        assert_eq!(exact.ok().as_deref(), Some(&b"012345678901234"[..]));
    }

    #[tokio::test]
    async fn bodies_being_read_share_one_byte_budget() {
        let none = HeaderMap::new();
        let gate = BodyGate::new(std::time::Duration::from_secs(30), 12);
        let held = read_body(&none, chunked(&[b"01234567"]), 64, &gate).await;
        let held = held.ok().expect("within the budget");
        let busy = read_body(&none, chunked(&[b"0123", b"4567"]), 64, &gate).await;
        assert!(
            matches!(busy, Err(BodyError::Busy)),
            "over the budget while the first is held"
        );
        drop(held);
        let again = read_body(&none, chunked(&[b"0123", b"4567"]), 64, &gate).await;
        assert_eq!(
            again.ok().as_deref(),
            Some(&b"01234567"[..]),
            "room again once released"
        );
    }

    #[tokio::test]
    async fn a_body_that_never_ends_times_out() {
        use futures_util::StreamExt;
        let mut announced = HeaderMap::new();
        announced.insert(header::CONTENT_LENGTH, HeaderValue::from_static("33554432"));
        let gate = BodyGate::new(std::time::Duration::from_millis(200), 64 * 1024 * 1024);
        let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{}"))])
            .chain(futures_util::stream::pending());
        let read = read_body(&announced, Body::from_stream(stalled), 64 * 1024 * 1024, &gate).await;
        assert!(matches!(read, Err(BodyError::TimedOut)));
        assert_eq!(
            gate.budget.available_permits(),
            gate.total,
            "its bytes are released"
        );
    }
}
