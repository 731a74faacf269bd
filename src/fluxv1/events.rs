//! `POST /v6/events`: decode, map, queue, answer — before any provider is called.
//!
//! fluxd stops advancing its sync marker on any non-2xx answer, so every well-formed
//! event gets 202 with an empty body (fluxd parses a non-empty body as JSON).

use super::event::{self, V1Event};
use super::poller::SyncDone;
use crate::ingest::{EventRoute, Ingest, count_skips, event_body, not_an_event, persist};
use crate::mapping::{self, Skip};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tracing::{debug, info, warn};

const SOURCE: &str = "fluxv1";

pub async fn handle(st: Arc<Ingest>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match event_body(
        &st,
        SOURCE,
        EventRoute::Fluxd,
        &parts.headers,
        body,
        st.max_event_bytes,
    )
    .await
    {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let ev = match event::parse(&body) {
        Ok(ev) => ev,
        Err(e) => return not_an_event(&st, SOURCE, e.label(), e.to_string(), body.len()),
    };
    let kind = ev.kind_label();
    let mapped = mapping::v1::map(&ev, &st.v1);
    count_skips(&st, &mapped.skips);
    for skip in &mapped.skips {
        log_skip(&ev, skip);
    }
    let queued = mapped.updates.len();
    let head = mapped
        .updates
        .first()
        .map(|u| (u.status.sha.clone(), u.status.state));
    if let Err(answer) = persist(&st, SOURCE, kind, mapped.updates).await {
        return answer;
    }
    if let (V1Event::Sync(sync), Some((sha, state))) = (&ev, head) {
        info!(source = SOURCE, r#type = kind, sha = %sha, state = %state, commits = sync.commits.len(),
            errors = sync.errors.len(), statuses = queued, "sync event accepted");
        // A sync with errors still applied everything else: its workloads are
        // checked too.
        if let Some(poller) = &st.poller {
            poller.sync_done(SyncDone {
                head: sha,
                service_ids: sync.service_ids.clone(),
            });
        }
    }
    // fluxd parses a non-empty answer as JSON: the body stays empty.
    (StatusCode::ACCEPTED, "").into_response()
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
