//! The ops listener: `/metrics`, `/healthz`, `/readyz`, apart from ingest so a
//! network policy can expose ingest to Flux only.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
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

pub fn router(state: Arc<Ops>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics.render(),
    )
}

async fn readyz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
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
    (status, axum::Json(body))
}
