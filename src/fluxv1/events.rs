//! `POST /v6/events`: decode, map, queue, answer — before any provider is called.
//!
//! fluxd stops advancing its sync marker on any non-2xx answer, so every well-formed
//! event gets 202 with an empty body (fluxd parses a non-empty body as JSON).

use super::event::{self, V1Event};
use crate::delivery::AcceptError;
use crate::ingest::{BodyError, Ingest, drain, error, read_body, upstream_authorized};
use crate::mapping::{self, Skip};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tracing::{debug, info, warn};

const SOURCE: &str = "fluxv1";

pub async fn handle(st: Arc<Ingest>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if !upstream_authorized(&parts.headers, &st.upstream_token) {
        drain(body).await;
        st.metrics.event(SOURCE, "unknown", "unauthorized");
        warn!(
            source = SOURCE,
            "event rejected: missing or wrong Scope-Probe token"
        );
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong fluxd token",
        );
    }
    let body = match read_body(&parts.headers, body, st.max_event_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            st.metrics.event(SOURCE, "unknown", "too_large");
            warn!(
                source = SOURCE,
                limit = st.max_event_bytes,
                "event rejected: body too large"
            );
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "event body exceeds {} bytes (--max-event-bytes)",
                    st.max_event_bytes
                ),
            );
        }
        Err(BodyError::Unreadable(e)) => {
            st.metrics.event(SOURCE, "unknown", "unreadable");
            warn!(source = SOURCE, error = %e, "event rejected: body could not be read");
            return error(StatusCode::BAD_REQUEST, "unreadable", e);
        }
    };
    let ev = match event::parse(&body) {
        Ok(ev) => ev,
        Err(e) => {
            st.metrics.event(SOURCE, "unknown", e.label());
            warn!(source = SOURCE, reason = e.label(), error = %e, bytes = body.len(), "event rejected");
            return error(StatusCode::BAD_REQUEST, e.label(), e.to_string());
        }
    };
    let kind = ev.kind_label();
    let mapped = mapping::v1::map(&ev, &st.v1);
    for skip in &mapped.skips {
        st.metrics
            .skipped
            .get_or_create(&crate::metrics::SkipLabels { reason: skip.label() })
            .inc();
        log_skip(&ev, skip);
    }
    let queued = mapped.updates.len();
    let head = mapped.updates.first().map(|u| u.status.sha.to_string());
    let state = mapped.updates.first().map(|u| u.status.state);
    match st.delivery.accept(mapped.updates).await {
        Ok(_) => {
            st.metrics.event(SOURCE, kind, "accepted");
            if let V1Event::Sync(sync) = &ev {
                if queued > 0 {
                    info!(
                        source = SOURCE,
                        r#type = kind,
                        sha = head.as_deref().unwrap_or(""),
                        state = state.map(|s| s.as_str()).unwrap_or(""),
                        commits = sync.commits.len(),
                        errors = sync.errors.len(),
                        statuses = queued,
                        "sync event accepted"
                    );
                }
            }
            (StatusCode::ACCEPTED, "").into_response()
        }
        Err(e) => {
            let reason = match e {
                AcceptError::Full(_) => "queue_full",
                AcceptError::Store(_) => "store_unavailable",
            };
            st.metrics.event(SOURCE, kind, reason);
            warn!(source = SOURCE, r#type = kind, reason, error = %e, "event refused; fluxd will send it again");
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, reason, e.to_string());
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            resp
        }
    }
}

fn log_skip(ev: &V1Event, skip: &Skip) {
    match (ev, skip) {
        (
            V1Event::Commit { revision } | V1Event::Release { revision } | V1Event::AutoRelease { revision },
            _,
        ) => {
            info!(
                source = SOURCE,
                r#type = ev.kind_label(),
                revision = revision.as_deref().unwrap_or(""),
                "event acknowledged; it carries no deploy status"
            )
        }
        (V1Event::Other { kind }, _) => {
            info!(source = SOURCE, r#type = %kind, "event of unknown type acknowledged")
        }
        (V1Event::Sync(_), Skip::NotAStatusEvent) => {
            debug!(source = SOURCE, "sync event acknowledged")
        }
        (V1Event::Sync(_), _) => {
            warn!(source = SOURCE, r#type = "sync", reason = skip.label(), detail = %skip, "no status for sync event")
        }
    }
}
