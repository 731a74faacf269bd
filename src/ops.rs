//! The ops listener: `/metrics`, `/healthz`, `/readyz`, apart from ingest so a
//! network policy can expose ingest to Flux only.

use crate::metrics::Metrics;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct Ops {
    pub metrics: Arc<Metrics>,
    pub health: Health,
}

/// What /readyz checks; each part is set by the component that knows.
pub struct Health {
    pub listening: AtomicBool,
    pub draining: AtomicBool,
    /// The last commit to the state store succeeded.
    pub store: AtomicBool,
    /// Repositories whose provider has not yet accepted our credential.
    pub credentials_unchecked: AtomicUsize,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            listening: false.into(),
            draining: false.into(),
            store: true.into(),
            credentials_unchecked: AtomicUsize::new(usize::MAX),
        }
    }
}

/// Serves the ops routes until `stop`, with the listener limits of its own: an
/// ingest flood cannot take the probes' connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Ops>,
    limits: crate::listener::Limits,
    stop: tokio_util::sync::CancellationToken,
) {
    let metrics = state.metrics.clone();
    crate::listener::serve("ops", listener, limits, metrics, stop, move |req| {
        handle(state.clone(), req)
    })
    .await;
}

/// Request bodies are never read here: hyper closes a connection whose body is left.
pub async fn handle(ops: Arc<Ops>, req: Request<Body>) -> Response {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return StatusCode::NOT_FOUND.into_response();
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        return resp;
    }
    match path {
        "/metrics" => metrics(&ops),
        "/healthz" => "ok\n".into_response(),
        _ => readyz(&ops),
    }
}

fn metrics(ops: &Ops) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics.render(),
    )
        .into_response()
}

fn readyz(ops: &Ops) -> Response {
    let h = &ops.health;
    let checks = [
        ("listening", h.listening.load(Ordering::Relaxed)),
        ("not_draining", !h.draining.load(Ordering::Relaxed)),
        ("outbox_writable", h.store.load(Ordering::Relaxed)),
        (
            "credentials",
            h.credentials_unchecked.load(Ordering::Relaxed) == 0,
        ),
    ];
    let ready = checks.iter().all(|(_, ok)| *ok);
    let body = serde_json::json!({
        "ready": ready,
        "checks": checks.iter().map(|(name, ok)| (name.to_string(), serde_json::Value::Bool(*ok))).collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
