//! `POST /` and `POST …/v2/events`: verify, decode, map, persist, answer 202.
//!
//! notification-controller gives each delivery (its retries included) 15 s, so the
//! answer never waits on a provider.

use super::event;
use super::signature;
use crate::ingest::{EventRoute, Ingest, count_skips, error, event_body, not_an_event, persist};
use crate::mapping;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tracing::{debug, info, warn};

const SOURCE: &str = "fluxv2";
/// notification-controller's own limit on event bodies.
pub const MAX_EVENT_BYTES: usize = 3 * 1024 * 1024;

/// A bounded label for the object kind (senders could send any string).
fn kind_label(kind: &str) -> &'static str {
    [
        "kustomization",
        "helmrelease",
        "gitrepository",
        "ocirepository",
        "helmrepository",
        "helmchart",
        "bucket",
    ]
    .into_iter()
    .find(|known| known.eq_ignore_ascii_case(kind))
    .unwrap_or("other")
}

pub async fn handle(st: Arc<Ingest>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match event_body(
        &st,
        SOURCE,
        EventRoute::FluxV2,
        &parts.headers,
        body,
        MAX_EVENT_BYTES,
    )
    .await
    {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    if let Some(key) = st.auth.hmac_key() {
        let sig = parts.headers.get("x-signature").and_then(|v| v.to_str().ok());
        if let Err(e) = signature::verify(key, &body, sig) {
            st.metrics.event(SOURCE, "unknown", "bad_signature");
            warn!(source = SOURCE, error = %e, "event rejected: X-Signature");
            return error(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string());
        }
    }
    let ev = match event::parse(&body) {
        Ok(ev) => ev,
        Err(e) => return not_an_event(&st, SOURCE, e.label(), e.to_string(), body.len()),
    };
    let kind = kind_label(&ev.involved_object.kind);
    let mapped = mapping::v2::map(&ev, &st.v2);
    let o = &ev.involved_object;
    count_skips(&st, &mapped.skips);
    for skip in &mapped.skips {
        debug!(source = SOURCE, kind = %o.kind, namespace = %o.namespace, name = %o.name,
            reason = %ev.reason, skip = skip.label(), detail = %skip, "no status for event");
    }
    let summary = mapped
        .updates
        .first()
        .map(|u| (u.status.sha.clone(), u.status.state, u.status.check.clone()));
    if let Err(answer) = persist(&st, SOURCE, kind, mapped.updates).await {
        return answer;
    }
    if let Some((sha, state, check)) = summary {
        info!(source = SOURCE, kind = %o.kind, namespace = %o.namespace, name = %o.name,
            reason = %ev.reason, sha = %sha, state = %state, check = %check, "event accepted");
    }
    StatusCode::ACCEPTED.into_response()
}
