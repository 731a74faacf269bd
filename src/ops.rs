//! The ops listener: `/metrics`, `/healthz`, `/readyz`, apart from ingest so a
//! network policy can expose ingest to Flux only.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
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

/// Serves the ops routes until `stop`, with the listener limits of its own: an
/// ingest flood cannot take the probes' connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Ops>,
    limits: crate::listener::Limits,
    stop: tokio_util::sync::CancellationToken,
) {
    let metrics = state.metrics.clone();
    crate::listener::serve("ops", listener, limits, metrics, stop, router(state)).await;
}

/// GET (and HEAD) only; request bodies are never read here: hyper closes a connection
/// whose body is left.
pub fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(async || "ok\n"))
        .route("/readyz", get(readyz))
        .with_state(ops)
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn probes_answer_get_and_head_only() {
        let ops = Arc::new(Ops {
            metrics: Arc::new(Metrics::new()),
            health: Health::default(),
        });
        let send = async |method: &str, path: &str| {
            let req = Request::builder().method(method).uri(path).body(Body::empty());
            match router(ops.clone()).oneshot(req.expect("a request")).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        };
        for path in ["/metrics", "/healthz"] {
            for method in ["GET", "HEAD"] {
                assert_eq!(
                    send(method, path).await.status(),
                    StatusCode::OK,
                    "{method} {path}"
                );
            }
            let resp = send("POST", path).await;
            assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(resp.headers()[header::ALLOW], "GET,HEAD", "{path}");
        }
        assert_eq!(
            send("GET", "/readyz").await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(send("GET", "/nope").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(send("GET", "/metrics/").await.status(), StatusCode::NOT_FOUND);
    }
}
