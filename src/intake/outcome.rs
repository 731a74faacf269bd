//! What a handler returns to the edge, and every way a request is refused: for each
//! refusal, its HTTP status and headers, its metric label, its message and its log
//! line live here, once.

use crate::auth::Refusal;
use crate::delivery::AcceptError;
use crate::mapping::Skip;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tracing::warn;

/// How an event request ended. Both kinds of success are answered 202 and counted
/// `accepted`: the sender must not re-send an event that carries no status.
#[derive(Debug)]
pub enum Outcome {
    /// The event's updates are durable in the outbox.
    Accepted {
        /// Bounded label of the event's type or object kind.
        kind: &'static str,
        statuses: usize,
        /// Parts of the event that became no status.
        skips: Vec<Skip>,
    },
    /// A well-formed event that becomes no status.
    Skipped {
        kind: &'static str,
        skips: Vec<Skip>,
    },
    Rejected(Rejection),
}

/// Why a request is refused.
#[derive(Debug)]
pub enum Rejection {
    NotFound,
    MethodNotAllowed {
        /// The `Allow` header, where the route has one method.
        allow: Option<&'static str>,
        message: &'static str,
    },
    /// No credential, or the wrong one, before the body is read.
    Unauthorized(Refusal),
    /// fluxd websocket sessions are at their bound.
    TooManySessions {
        max: usize,
    },
    /// The body is over the route's limit, announced or received.
    TooLarge {
        limit: usize,
    },
    Unreadable(String),
    /// The body was not all there within `--body-timeout`.
    BodyTimeout {
        timeout: Duration,
    },
    /// `--max-body-bytes-in-flight` is reached.
    Busy {
        max_bytes: usize,
    },
    /// `--hmac-key-file` is set and the X-Signature does not verify.
    BadSignature(String),
    /// The body is not an event of the route's version.
    NotAnEvent {
        label: &'static str,
        message: String,
        bytes: usize,
    },
    /// The outbox did not take the event's updates.
    NotStored {
        kind: &'static str,
        error: AcceptError,
    },
}

/// Where a refusal happened, for its log line and its counter.
#[derive(Clone, Copy, Debug)]
pub enum At<'a> {
    /// An event route of `source` (`fluxv1`, `fluxv2`).
    Events(&'static str),
    /// fluxd's websocket, at `path`.
    Websocket(&'a str),
    /// A path that is no route.
    Nowhere,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::Unauthorized(_) | Rejection::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Rejection::TooManySessions { .. } | Rejection::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Unreadable(_) | Rejection::NotAnEvent { .. } => StatusCode::BAD_REQUEST,
            Rejection::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            // Re-sending cannot help: not 503, which invites it.
            Rejection::NotStored {
                error: AcceptError::TooLarge(_),
                ..
            } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::NotStored { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` of the JSON answer.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Unauthorized(refusal) => refusal.reason,
            _ => self.label(),
        }
    }

    /// The metric label (bounded).
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed { .. } => "method_not_allowed",
            Rejection::Unauthorized(refusal) => refusal.label,
            Rejection::TooManySessions { .. } => "too_many_sessions",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Unreadable(_) => "unreadable",
            Rejection::BodyTimeout { .. } => "body_timeout",
            Rejection::Busy { .. } => "busy",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::NotAnEvent { label, .. } => label,
            Rejection::NotStored { error, .. } => match error {
                AcceptError::Full(_) => "queue_full",
                AcceptError::Store(_) => "store_unavailable",
                AcceptError::TooLarge(_) => "update_too_large",
            },
        }
    }

    /// The event type the metric counts the refusal under.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::NotStored { kind, .. } => kind,
            _ => "unknown",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Rejection::NotFound => "no such endpoint".into(),
            Rejection::MethodNotAllowed { message, .. } => (*message).into(),
            Rejection::Unauthorized(refusal) => refusal.message.into(),
            Rejection::TooManySessions { .. } => "too many fluxd websocket sessions open".into(),
            Rejection::TooLarge { limit } => format!("event body exceeds {limit} bytes"),
            Rejection::Unreadable(e) | Rejection::BadSignature(e) => e.clone(),
            Rejection::BodyTimeout { .. } => "request body not received in time".into(),
            Rejection::Busy { .. } => "too many requests being read; retry later".into(),
            Rejection::NotAnEvent { message, .. } => message.clone(),
            Rejection::NotStored { error, .. } => error.to_string(),
        }
    }

    /// Counted in a metric: a wrong path or method is not an event refused.
    pub fn counted(&self) -> bool {
        !matches!(self, Rejection::NotFound | Rejection::MethodNotAllowed { .. })
    }

    /// Logged at a bounded pace ([`crate::listener::throttle`]): refusals a client can
    /// repeat at will, before any work is done for it.
    pub fn throttled(&self) -> bool {
        matches!(
            self,
            Rejection::Unauthorized(_)
                | Rejection::TooManySessions { .. }
                | Rejection::BodyTimeout { .. }
                | Rejection::Busy { .. }
        )
    }

    /// The log line; `suppressed` counts the throttled lines left out before it.
    pub fn log(&self, at: At<'_>, suppressed: u64) {
        let source = match at {
            At::Events(source) => source,
            At::Websocket(_) => "fluxv1",
            At::Nowhere => return,
        };
        match self {
            Rejection::NotFound | Rejection::MethodNotAllowed { .. } => {}
            Rejection::Unauthorized(refusal) => match at {
                At::Websocket(path) => warn!(source, path = %path, reason = refusal.label, suppressed,
                    "fluxd websocket rejected: {}", refusal.message),
                _ => warn!(
                    source,
                    reason = refusal.label,
                    suppressed,
                    "event rejected: {}",
                    refusal.message
                ),
            },
            Rejection::TooManySessions { max } => warn!(
                source,
                max = *max,
                suppressed,
                "fluxd websocket rejected: too many sessions open"
            ),
            Rejection::TooLarge { limit } => {
                warn!(source, limit = *limit, "event rejected: body too large")
            }
            Rejection::Unreadable(e) => {
                warn!(source, error = %e, "event rejected: body could not be read")
            }
            Rejection::BodyTimeout { timeout } => warn!(source, timeout = ?timeout, suppressed,
                "event rejected: body not received within --body-timeout; closing the connection"),
            Rejection::Busy { max_bytes } => warn!(
                source,
                max_bytes = *max_bytes,
                suppressed,
                "event refused: too many body bytes being read at once (--max-body-bytes-in-flight); the sender will retry"
            ),
            Rejection::BadSignature(e) => {
                warn!(source, error = %e, "event rejected: X-Signature")
            }
            Rejection::NotAnEvent {
                label,
                message,
                bytes,
            } => warn!(source, reason = label, error = %message, bytes = *bytes, "event rejected"),
            Rejection::NotStored {
                kind,
                error: AcceptError::TooLarge(why),
            } => {
                warn!(source, r#type = kind, reason = "update_too_large", error = %why, "event refused")
            }
            Rejection::NotStored { kind, error } => {
                let reason = self.label();
                warn!(source, r#type = kind, reason, error = %error, "event refused; the sender will retry")
            }
        }
    }

    /// The answer: `{"error": "...", "reason": "..."}` with the headers the refusal needs.
    pub fn into_response(self) -> Response {
        let mut resp = error(self.status(), self.reason(), self.message());
        let headers = resp.headers_mut();
        match &self {
            Rejection::MethodNotAllowed {
                allow: Some(allow), ..
            } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            // What is left of the request is not read: the connection closes.
            Rejection::BodyTimeout { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Rejection::Busy { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Rejection::TooManySessions { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            }
            Rejection::NotStored { error, .. } if !matches!(error, AcceptError::TooLarge(_)) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            }
            _ => {}
        }
        resp
    }
}

/// A JSON error answer: `{"error": "...", "reason": "..."}`.
fn error(status: StatusCode, reason: &'static str, message: String) -> Response {
    let body = serde_json::json!({ "error": message, "reason": reason });
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn answer(r: Rejection) -> (StatusCode, Vec<(String, String)>, serde_json::Value) {
        let resp = r.into_response();
        let headers = resp
            .headers()
            .iter()
            .filter(|(k, _)| *k != header::CONTENT_TYPE && *k != header::CONTENT_LENGTH)
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("a body").to_bytes();
        (status, headers, serde_json::from_slice(&body).expect("JSON"))
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn each_refusal_has_its_status_headers_and_reason() {
        let no_token = Refusal {
            label: "no_token_configured",
            reason: "unauthorized",
            message: "needs --token",
        };
        let cases = [
            (Rejection::NotFound, 404, h(&[]), "not_found"),
            (
                Rejection::MethodNotAllowed {
                    allow: Some("POST"),
                    message: "use POST",
                },
                405,
                h(&[("allow", "POST")]),
                "method_not_allowed",
            ),
            (Rejection::Unauthorized(no_token), 401, h(&[]), "unauthorized"),
            (
                Rejection::TooManySessions { max: 4 },
                503,
                h(&[("retry-after", "10")]),
                "too_many_sessions",
            ),
            (
                Rejection::BodyTimeout {
                    timeout: Duration::from_secs(1),
                },
                408,
                h(&[("connection", "close")]),
                "body_timeout",
            ),
            (
                Rejection::Busy { max_bytes: 8 },
                503,
                h(&[("connection", "close"), ("retry-after", "5")]),
                "busy",
            ),
            (
                Rejection::NotStored {
                    kind: "sync",
                    error: AcceptError::TooLarge("64 KiB".into()),
                },
                413,
                h(&[]),
                "update_too_large",
            ),
        ];
        for (rejection, status, headers, reason) in cases {
            let label = rejection.label();
            let message = rejection.message();
            let got = answer(rejection).await;
            assert_eq!(got.0.as_u16(), status, "{label}");
            assert_eq!(got.1, headers, "{label}");
            assert_eq!(got.2["reason"], reason, "{label}");
            assert_eq!(got.2["error"], message.as_str(), "{label}");
        }
    }

    #[test]
    fn the_metric_label_is_the_refusals_own_and_only_a_stored_event_has_a_kind() {
        let no_token = Rejection::Unauthorized(Refusal {
            label: "no_token_configured",
            reason: "unauthorized",
            message: "m",
        });
        assert_eq!(
            (no_token.label(), no_token.reason()),
            ("no_token_configured", "unauthorized")
        );
        assert_eq!(no_token.kind(), "unknown");
        let full = Rejection::NotStored {
            kind: "helmrelease",
            error: AcceptError::TooLarge("x".into()),
        };
        assert_eq!(full.kind(), "helmrelease");
        assert_eq!(
            full.message(),
            "status update too large to store: x",
            "the message the 413 always had"
        );
        assert!(!Rejection::NotFound.counted());
        assert!(Rejection::Busy { max_bytes: 1 }.throttled());
        assert!(!Rejection::TooLarge { limit: 1 }.throttled());
    }
}
