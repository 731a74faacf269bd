//! `POST /` and `POST …/v2/events`: verify, decode, map, persist, answer 202.
//!
//! notification-controller gives each delivery (its retries included) 15 s, so the
//! answer never waits on a provider.

use super::event;
use super::signature;
use crate::delivery::AcceptError;
use crate::ingest::{BodyError, Ingest, drain, error, read_body, upstream_authorized};
use crate::mapping;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use std::sync::Arc;
use tracing::{debug, info, warn};

const SOURCE: &str = "fluxv2";
/// notification-controller's own limit on event bodies.
pub const MAX_EVENT_BYTES: usize = 3 * 1024 * 1024;

/// A bounded label for the object kind (senders could send any string).
fn kind_label(kind: &str) -> &'static str {
    match kind.to_ascii_lowercase().as_str() {
        "kustomization" => "kustomization",
        "helmrelease" => "helmrelease",
        "gitrepository" => "gitrepository",
        "ocirepository" => "ocirepository",
        "helmrepository" => "helmrepository",
        "helmchart" => "helmchart",
        "bucket" => "bucket",
        _ => "other",
    }
}

pub async fn handle(st: Arc<Ingest>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if !upstream_authorized(&parts.headers, &st.upstream_token) {
        drain(body).await;
        st.metrics.event(SOURCE, "unknown", "unauthorized");
        warn!(source = SOURCE, "event rejected: missing or wrong bearer token");
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong token");
    }
    let body = match read_body(&parts.headers, body, MAX_EVENT_BYTES).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            st.metrics.event(SOURCE, "unknown", "too_large");
            warn!(
                source = SOURCE,
                limit = MAX_EVENT_BYTES,
                "event rejected: body too large"
            );
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "event body exceeds 3 MiB",
            );
        }
        Err(BodyError::Unreadable(e)) => {
            st.metrics.event(SOURCE, "unknown", "unreadable");
            return error(StatusCode::BAD_REQUEST, "unreadable", e);
        }
    };
    if let Some(key) = &st.hmac_key {
        let sig = parts.headers.get("x-signature").and_then(|v| v.to_str().ok());
        if let Err(e) = signature::verify(key.expose_secret(), &body, sig) {
            st.metrics.event(SOURCE, "unknown", "bad_signature");
            warn!(source = SOURCE, error = %e, "event rejected: X-Signature");
            return error(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string());
        }
    }
    let ev = match event::parse(&body) {
        Ok(ev) => ev,
        Err(e) => {
            st.metrics.event(SOURCE, "unknown", e.label());
            warn!(source = SOURCE, reason = e.label(), error = %e, bytes = body.len(), "event rejected");
            return error(StatusCode::BAD_REQUEST, e.label(), e.to_string());
        }
    };
    let kind = kind_label(&ev.involved_object.kind);
    let mapped = mapping::v2::map(&ev, &st.v2);
    let o = &ev.involved_object;
    for skip in &mapped.skips {
        st.metrics
            .skipped
            .get_or_create(&crate::metrics::SkipLabels { reason: skip.label() })
            .inc();
        debug!(source = SOURCE, kind = %o.kind, namespace = %o.namespace, name = %o.name,
            reason = %ev.reason, skip = skip.label(), detail = %skip, "no status for event");
    }
    let summary = mapped.updates.first().map(|u| {
        (
            u.status.sha.to_string(),
            u.status.state,
            u.status.check.to_string(),
        )
    });
    match st.delivery.accept(mapped.updates).await {
        Ok(_) => {
            st.metrics.event(SOURCE, kind, "accepted");
            if let Some((sha, state, check)) = summary {
                info!(source = SOURCE, kind = %o.kind, namespace = %o.namespace, name = %o.name,
                    reason = %ev.reason, sha = %sha, state = %state, check = %check, "event accepted");
            }
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => {
            let reason = match e {
                AcceptError::Full(_) => "queue_full",
                AcceptError::Store(_) => "store_unavailable",
            };
            st.metrics.event(SOURCE, kind, reason);
            warn!(source = SOURCE, reason, error = %e, "event refused; notification-controller will retry");
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, reason, e.to_string());
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            resp
        }
    }
}
