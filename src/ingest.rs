//! The ingest edge: the listener fluxd and Flux v2 talk to. Its router sends each
//! request to its Flux slice's handler and turns the handler's typed outcome into the
//! HTTP answer, the metric and the log line ([`Rejection`] says which).

use crate::fluxv1;
use crate::fluxv1::daemon::Websocket;
use crate::fluxv1::route::V1Events;
use crate::fluxv2;
use crate::fluxv2::map::V2Context;
use crate::intake::{At, Intake, Outcome, Rejection, drain};
use crate::listener::throttle::Throttle;
use crate::metrics::listener::ReasonLabel;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

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
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Ingest>,
    limits: crate::listener::Limits,
    stop: CancellationToken,
) {
    let metrics = state.intake.metrics.clone();
    let service = router(state).map_request(strip_prefix::<hyper::body::Incoming>);
    crate::listener::serve("ingest", listener, limits, metrics, stop, service).await;
}

/// The routes, as the path of fluxd's `--connect` URL is stripped from them (see
/// [`strip_prefix`]). Any other method on an event route is a 405, any other path a 404.
pub fn router(state: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v6/events", post(v1_events).fallback(use_post))
        .route("/v2/events", post(v2_events).fallback(use_post))
        .route("/", post(v2_events).fallback(use_post))
        .route("/{version}/daemon", any(daemon))
        .fallback(not_found)
        .with_state(state)
}

/// fluxd puts the path of its `--connect` URL before its routes (`ws://host:3000/flux`
/// → `/flux/v11/daemon`, `/flux/v6/events`), so an event or daemon path is routed by
/// its last two segments. The path as sent stays in [`OriginalUri`].
fn strip_prefix<B>(mut req: Request<B>) -> Request<B> {
    let path = req.uri().path();
    let routed = fluxv1::route::is_events_path(path)
        || fluxv1::daemon::is_daemon_path(path)
        || (path != "/" && fluxv2::route::is_events_path(path));
    let trimmed = path.trim_end_matches('/');
    let route = trimmed
        .rmatch_indices('/')
        .nth(1)
        .map_or(trimmed, |(at, _)| &trimmed[at..]);
    if !routed || route == path {
        return req;
    }
    if let Ok(uri) = Uri::try_from(route) {
        let sent = std::mem::replace(req.uri_mut(), uri);
        req.extensions_mut().insert(OriginalUri(sent));
    }
    req
}

async fn v1_events(State(st): State<Arc<Ingest>>, req: Request) -> Response {
    let outcome = fluxv1::route::handle(&st.intake, &st.v1, req).await;
    // fluxd parses a non-empty answer as JSON: the body stays empty.
    answer(&st, fluxv1::route::SOURCE, outcome, || {
        (StatusCode::ACCEPTED, "").into_response()
    })
}

async fn v2_events(State(st): State<Arc<Ingest>>, req: Request) -> Response {
    let outcome = fluxv2::route::handle(&st.intake, &st.v2, req).await;
    answer(&st, fluxv2::route::SOURCE, outcome, || {
        StatusCode::ACCEPTED.into_response()
    })
}

/// `…/v<N>/daemon`; the route takes any first segment, the version is checked here.
async fn daemon(
    State(st): State<Arc<Ingest>>,
    OriginalUri(sent): OriginalUri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    req: Request,
) -> Response {
    if !fluxv1::daemon::is_daemon_path(req.uri().path()) {
        return refuse(&st, req, Rejection::NotFound).await;
    }
    let path = sent.path();
    match fluxv1::daemon::handle(&st.intake, &st.websocket, path, upgrade, req).await {
        Ok(answer) => answer,
        Err(rejection) => reject(&st, At::Websocket(path), rejection),
    }
}

async fn use_post(State(st): State<Arc<Ingest>>, req: Request) -> Response {
    let rejection = Rejection::MethodNotAllowed {
        allow: Some("POST"),
        message: "use POST",
    };
    refuse(&st, req, rejection).await
}

async fn not_found(State(st): State<Arc<Ingest>>, req: Request) -> Response {
    refuse(&st, req, Rejection::NotFound).await
}

/// A request that is no route's: its body is drained so the client reads the answer.
async fn refuse(st: &Ingest, req: Request, rejection: Rejection) -> Response {
    drain(req.into_body()).await;
    reject(st, At::Nowhere, rejection)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fluxv1::map::{V1Context, sync_check};
    use crate::fluxv1::rpc::FluxdLink;
    use crate::intake::testing::{fixture, intake};
    use axum::body::Body;
    use axum::http::header;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn ingest() -> Arc<Ingest> {
        let intake = intake(None, None, 100);
        let websocket = Arc::new(Websocket {
            metrics: intake.metrics.clone(),
            idle: Duration::from_secs(90),
            sessions: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            link: Arc::new(FluxdLink::default()),
        });
        Arc::new(Ingest {
            intake,
            v1: V1Events {
                ctx: V1Context {
                    repo: "github.com/o/r".into(),
                    instance: "dev".into(),
                    check: sync_check("dev"),
                    status_range: 3,
                    target_url: None,
                    rollout_checked: false,
                },
                max_event_bytes: 1024 * 1024,
                poller: None,
            },
            v2: V2Context {
                rules: Vec::new(),
                fallback: Some("github.com/o/r".into()),
                instance: "prod".into(),
                check_template: fluxv2::map::DEFAULT_CHECK_TEMPLATE.into(),
                target_url: None,
            },
            websocket,
            refusal_log: Throttle::new(),
        })
    }

    async fn send(method: &str, path: &str, body: Vec<u8>) -> Response {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body))
            .expect("a request");
        let service = router(ingest()).map_request(strip_prefix::<Body>);
        match service.oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn routes_under_any_prefix_and_refusals_off_them() {
        let sync = fixture("v1/event-sync.json");
        for path in ["/v6/events", "/flux/v6/events", "/a/b/v6/events"] {
            let resp = send("POST", path, sync.clone()).await;
            assert_eq!(resp.status(), StatusCode::ACCEPTED, "{path}");
        }
        // The method decides on an event route; POST is named in `Allow`.
        for path in ["/v6/events", "/x/v6/events", "/v2/events", "/x/v2/events/", "/"] {
            for method in ["GET", "HEAD", "PUT"] {
                let resp = send(method, path, Vec::new()).await;
                assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert_eq!(resp.headers()[header::ALLOW], "POST", "{method} {path}");
            }
        }
        // fluxd's websocket: its own refusals (405 with no `Allow`), axum's answer to a
        // GET that is no handshake.
        for path in ["/v11/daemon", "/flux/v11/daemon", "/api/flux/v10/daemon/"] {
            let resp = send("POST", path, Vec::new()).await;
            assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert!(!resp.headers().contains_key(header::ALLOW), "{path}");
            let resp = send("GET", path, Vec::new()).await;
            assert!(resp.status().is_client_error(), "{path}");
            assert_ne!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        }
        for path in [
            "/nope",
            "/v6/events/",
            "/vX/daemon",
            "/daemon",
            "/v11/daemons",
            "/x/v6/events/y",
        ] {
            for method in ["GET", "POST"] {
                let resp = send(method, path, Vec::new()).await;
                assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {path}");
            }
        }
    }
}
