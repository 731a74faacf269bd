//! The ingest edge: the listener fluxd and Flux v2 talk to. It routes each request
//! to its Flux slice's handler and turns the handler's typed outcome into the HTTP
//! answer, the metric and the log line ([`Rejection`] says which).
//!
//! Routing is by path suffix so that a path prefix in fluxd's `--connect`
//! (`ws://host:3000/flux` → `/flux/v11/daemon`, `/flux/v6/events`) just works.

use crate::fluxv1;
use crate::fluxv1::daemon::Websocket;
use crate::fluxv1::route::V1Events;
use crate::fluxv2;
use crate::fluxv2::map::V2Context;
use crate::intake::{At, Intake, Outcome, Rejection, drain};
use crate::listener::throttle::Throttle;
use crate::metrics::listener::ReasonLabel;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct Ingest {
    /// What every event route shares: metrics, the outbox, credentials, body bounds.
    pub intake: Intake,
    pub v1: V1Events,
    pub v2: V2Context,
    /// fluxd's websocket.
    pub websocket: Arc<Websocket>,
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
    let metrics = state.intake.metrics.clone();
    crate::listener::serve("ingest", listener, limits, metrics, stop, move |req| {
        route(state.clone(), req)
    })
    .await;
}

async fn route(st: Arc<Ingest>, req: Request<Body>) -> Response {
    let path = req.uri().path();
    let v1_events = fluxv1::route::is_events_path(path);
    let v2_events = fluxv2::route::is_events_path(path);
    if fluxv1::daemon::is_daemon_path(path) {
        let path = path.to_string();
        return match fluxv1::daemon::handle(&st.intake, &st.websocket, req).await {
            Ok(answer) => answer,
            Err(rejection) => reject(&st, At::Websocket(&path), rejection),
        };
    }
    if (v1_events || v2_events) && req.method() == Method::POST {
        return if v1_events {
            let outcome = fluxv1::route::handle(&st.intake, &st.v1, req).await;
            // fluxd parses a non-empty answer as JSON: the body stays empty.
            answer(&st, fluxv1::route::SOURCE, outcome, || {
                (StatusCode::ACCEPTED, "").into_response()
            })
        } else {
            let outcome = fluxv2::route::handle(&st.intake, &st.v2, req).await;
            answer(&st, fluxv2::route::SOURCE, outcome, || {
                StatusCode::ACCEPTED.into_response()
            })
        };
    }
    drain(req.into_body()).await;
    if v1_events || v2_events {
        let rejection = Rejection::MethodNotAllowed {
            allow: Some("POST"),
            message: "use POST",
        };
        return reject(&st, At::Nowhere, rejection);
    }
    reject(&st, At::Nowhere, Rejection::NotFound)
}

/// An event route's outcome as HTTP, counted by `source` and the event's kind.
fn answer(
    st: &Ingest,
    source: &'static str,
    outcome: Outcome,
    accepted: impl FnOnce() -> Response,
) -> Response {
    match outcome {
        Outcome::Accepted { kind, .. } | Outcome::Skipped { kind, .. } => {
            st.intake.metrics.event(source, kind, "accepted");
            accepted()
        }
        Outcome::Rejected(rejection) => reject(st, At::Events(source), rejection),
    }
}

/// Counts and logs a refusal, and gives its answer.
fn reject(st: &Ingest, at: At<'_>, rejection: Rejection) -> Response {
    if rejection.counted() {
        match at {
            At::Events(source) => st
                .intake
                .metrics
                .event(source, rejection.kind(), rejection.label()),
            At::Websocket(_) => {
                st.intake
                    .metrics
                    .listener
                    .websocket_refused
                    .get_or_create(&ReasonLabel {
                        reason: rejection.label(),
                    })
                    .inc();
            }
            At::Nowhere => {}
        }
    }
    let suppressed = if rejection.throttled() {
        st.refusal_log.allow()
    } else {
        Some(0)
    };
    if let Some(suppressed) = suppressed {
        rejection.log(at, suppressed);
    }
    rejection.into_response()
}
