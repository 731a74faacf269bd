//! What went wrong talking to a provider, classified so delivery can decide what to do.

use std::time::Duration;

/// How delivery should treat a failed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again with backoff (connect errors, timeouts, 5xx, GitLab 409).
    Transient,
    /// The provider asked us to slow down; pause this notifier until `retry_after`.
    RateLimited,
    /// Retrying cannot help (401, 404, 422, …): log once and drop.
    Permanent,
}

/// Bounded reason labels, used in logs and as metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Connect,
    Timeout,
    ServerError,
    RateLimited,
    Conflict,
    Unauthorized,
    Forbidden,
    NotFound,
    Invalid,
    ClientError,
    UnexpectedResponse,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Timeout => "timeout",
            Reason::ServerError => "server_error",
            Reason::RateLimited => "rate_limited",
            Reason::Conflict => "conflict",
            Reason::Unauthorized => "unauthorized",
            Reason::Forbidden => "forbidden",
            Reason::NotFound => "not_found",
            Reason::Invalid => "invalid",
            Reason::ClientError => "client_error",
            Reason::UnexpectedResponse => "unexpected_response",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider}: {}{message}", status.map(|s| format!("HTTP {s}: ")).unwrap_or_default())]
pub struct NotifyError {
    pub provider: &'static str,
    pub retry: Retry,
    pub reason: Reason,
    pub status: Option<u16>,
    /// The provider's own words where it gave any, never our request or headers.
    pub message: String,
    /// How long the provider asked us to wait (Retry-After, rate-limit reset).
    pub retry_after: Option<Duration>,
}

impl NotifyError {
    pub fn is_retryable(&self) -> bool {
        self.retry != Retry::Permanent
    }

    /// Whether a failed write may still have been applied, now or later: the
    /// provider had the request and we never learnt how it ended (our timeout, the
    /// connection lost after sending, a 5xx). A refused connection, a rate limit or a
    /// 4xx answer means the write was not applied.
    pub fn may_have_landed(&self) -> bool {
        match self.reason {
            Reason::Timeout => self.status != Some(408),
            // A 5xx, or a transport failure once connected (reset, cut-off answer).
            Reason::ServerError => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_write_the_provider_may_have_taken_is_in_doubt() {
        let e = |reason, status| NotifyError {
            provider: "github",
            retry: Retry::Transient,
            reason,
            status,
            message: String::new(),
            retry_after: None,
        };
        for (reason, status, doubt) in [
            (Reason::Timeout, None, true),
            (Reason::ServerError, None, true),
            (Reason::ServerError, Some(502), true),
            (Reason::Timeout, Some(408), false),
            (Reason::Connect, None, false),
            (Reason::RateLimited, Some(429), false),
            (Reason::Conflict, Some(409), false),
            (Reason::Invalid, Some(422), false),
        ] {
            assert_eq!(
                e(reason, status).may_have_landed(),
                doubt,
                "{reason:?} {status:?}"
            );
        }
    }
}
