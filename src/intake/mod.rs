//! What every event route shares, below the Flux slices: the gate a request passes
//! before its body is used, persisting what an event became, and the typed outcome
//! a handler returns. The edge ([`crate::ingest`]) calls the handlers and the
//! handlers call this; it calls neither.

pub mod body;
pub mod outcome;

use crate::auth::IngestAuth;
use crate::delivery::Delivery;
use crate::deployments::Deployments;
use crate::mapping::Skip;
use crate::metrics::{Metrics, SkipLabels};
use crate::update::StatusUpdate;
use axum::body::Body;
use axum::http::HeaderMap;
pub use body::{BodyError, BodyGate, HeldBody, drain, read_body};
pub use outcome::{At, Outcome, Rejection};
use std::sync::Arc;

/// What every event route needs.
pub struct Intake {
    pub metrics: Arc<Metrics>,
    pub delivery: Arc<Delivery>,
    /// What each route must present.
    pub auth: IngestAuth,
    /// Deadline and memory bound for reading event bodies.
    pub bodies: BodyGate,
    /// `--deployments`: what each event's statuses make of their commits' deployments.
    pub deployments: Option<Arc<Deployments>>,
}

/// Which credential an event route needs (see [`crate::auth`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EventRoute {
    Fluxd,
    FluxV2,
}

impl Intake {
    /// The gate every event route shares, cheapest check first: the token, the
    /// announced size, a signature header where one is required, then a body within
    /// `limit`. A body refused on its headers is drained, not kept.
    pub async fn event_body(
        &self,
        route: EventRoute,
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<HeldBody, Rejection> {
        let token = match route {
            EventRoute::Fluxd => self.auth.check_fluxd(headers),
            EventRoute::FluxV2 => self.auth.check_v2_token(headers),
        };
        if let Err(refusal) = token {
            drain(body).await;
            return Err(Rejection::Unauthorized(refusal));
        }
        if body::announced_length(headers).is_some_and(|n| n > limit as u64) {
            drain(body).await;
            return Err(Rejection::TooLarge { limit });
        }
        if route == EventRoute::FluxV2
            && let Err(refusal) = self.auth.check_v2_signature_present(headers)
        {
            drain(body).await;
            return Err(Rejection::Unauthorized(refusal));
        }
        read_body(headers, body, limit, &self.bodies)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => Rejection::TooLarge { limit },
                BodyError::Unreadable(e) => Rejection::Unreadable(e),
                BodyError::TimedOut => Rejection::BodyTimeout {
                    timeout: self.bodies.timeout,
                },
                BodyError::Busy => Rejection::Busy {
                    max_bytes: self.bodies.total,
                },
            })
    }

    /// Counts why an event, or part of it, became no status.
    pub fn count_skips(&self, skips: &[Skip]) {
        for skip in skips {
            self.metrics
                .skipped
                .get_or_create(&SkipLabels { reason: skip.label() })
                .inc();
        }
    }

    /// Makes an event's updates durable in the outbox. Refused when the outbox is full
    /// or the store is failing (the sender retries), or an update cannot be stored.
    pub async fn persist(&self, kind: &'static str, mut updates: Vec<StatusUpdate>) -> Result<(), Rejection> {
        if let Some(d) = &self.deployments {
            d.add(&mut updates);
        }
        match self.delivery.accept(updates).await {
            Ok(_) => Ok(()),
            Err(error) => Err(Rejection::NotStored { kind, error }),
        }
    }
}

/// Building an [`Intake`] and requests for the handlers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::delivery::DeliveryConfig;
    use crate::delivery::store::{Persister, Recovered};
    use secrecy::{SecretBox, SecretString};
    use std::time::Duration;

    /// An intake over an in-memory outbox of `capacity` checks. `token` and `hmac`
    /// are the credentials configured.
    pub(crate) fn intake(token: Option<&str>, hmac: Option<&[u8]>, capacity: usize) -> Intake {
        let metrics = Arc::new(Metrics::new());
        let cfg = DeliveryConfig {
            capacity,
            ..DeliveryConfig::default()
        };
        let delivery = Delivery::new(
            Default::default(),
            Persister::in_memory(),
            Recovered::default(),
            metrics.clone(),
            cfg,
        );
        Intake {
            metrics,
            delivery: Arc::new(delivery),
            auth: IngestAuth::new(
                token.map(|t| SecretString::from(t.to_string())),
                hmac.map(|k| SecretBox::new(Box::new(k.to_vec()))),
            ),
            bodies: BodyGate::new(Duration::from_secs(30), 1024 * 1024),
            deployments: None,
        }
    }

    pub(crate) fn post(body: impl Into<Body>, headers: &[(&str, &str)]) -> axum::extract::Request {
        let mut req = axum::http::Request::post("/")
            .body(body.into())
            .expect("a request");
        for (k, v) in headers {
            req.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
                axum::http::HeaderValue::from_str(v).expect("a header value"),
            );
        }
        req
    }

    pub(crate) fn fixture(rel: &str) -> Vec<u8> {
        crate::mapping::fixture(rel)
    }
}
