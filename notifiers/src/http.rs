//! What every provider shares: the HTTP client, sending, and reading error answers.
//!
//! One client builder so no provider can forget the timeout, the CA bundle or the
//! user agent; one classifier so a 503 means the same thing everywhere.

use crate::error::{NotifyError, Reason, Retry};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, StatusCode};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const USER_AGENT: &str = concat!("flux-status/", env!("CARGO_PKG_VERSION"));

/// Bodies we read back are bounded: an error page or a status list, never more.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Provider messages are quoted in logs; keep them readable.
const MAX_MESSAGE_CHARS: usize = 300;

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Whole-request timeout, connect included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra PEM CA bundle for self-hosted providers with a private CA.
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading CA file {path}: {source}")]
    CaFile { path: PathBuf, source: std::io::Error },
    #[error("CA file {path} holds no usable PEM certificate: {message}")]
    CaCert { path: PathBuf, message: String },
    #[error("building the HTTP client: {0}")]
    Build(String),
}

/// reqwest is built without a bundled TLS crypto provider; ring is the one we ship.
/// Anything that builds its own `reqwest::Client` must call this first (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The one HTTP client builder every provider uses (proxy from `HTTPS_PROXY`/`NO_PROXY`).
pub fn client(cfg: &HttpConfig) -> Result<reqwest::Client, ClientError> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(cfg.timeout)
        .connect_timeout(cfg.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60));
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::CaCert {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(ClientError::CaCert {
                path: path.clone(),
                message: "no certificates found".into(),
            });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| ClientError::Build(e.to_string()))
}

/// A header value that tracing and reqwest's Debug output never print.
pub fn sensitive_header(value: &str) -> Result<HeaderValue, NotifyError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| NotifyError {
        provider: "http",
        retry: Retry::Permanent,
        reason: Reason::Invalid,
        status: None,
        message: "credential contains characters not allowed in an HTTP header".into(),
        retry_after: None,
    })?;
    v.set_sensitive(true);
    Ok(v)
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, provider: &'static str) -> Result<T, NotifyError> {
        serde_json::from_slice(&self.body).map_err(|e| NotifyError {
            provider,
            retry: Retry::Transient,
            reason: Reason::UnexpectedResponse,
            status: Some(self.status.as_u16()),
            message: format!("response is not the expected JSON: {e}"),
            retry_after: None,
        })
    }
}

/// Sends a request; only transport failures are errors here. Error answers come back
/// as responses for the provider to read (some providers give 400s a meaning).
pub async fn send(provider: &'static str, req: RequestBuilder) -> Result<HttpResponse, NotifyError> {
    let transport = |e: reqwest::Error| {
        // Connecting first: a request that never got a connection was never sent,
        // even when it was the connect timeout that ended it.
        let reason = if e.is_connect() {
            Reason::Connect
        } else if e.is_timeout() {
            Reason::Timeout
        } else {
            Reason::ServerError
        };
        NotifyError {
            provider,
            retry: Retry::Transient,
            reason,
            status: None,
            // without_url: the URL may carry a path a user considers private; the
            // error text itself never holds headers.
            message: e.without_url().to_string(),
            retry_after: None,
        }
    };
    let mut resp = req.send().await.map_err(transport)?;
    let status = resp.status();
    let headers = std::mem::take(resp.headers_mut());
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Sends a status write and reads the answer as every provider does: `special`
/// first gives provider-specific answers their meaning (GitLab's "already in that
/// state", Azure DevOps' sign-in page), then 2xx is success and the rest is classified.
pub async fn write(
    provider: &'static str,
    req: RequestBuilder,
    special: fn(&HttpResponse) -> Option<Result<(), NotifyError>>,
) -> Result<crate::Budget, NotifyError> {
    let resp = send(provider, req).await?;
    match special(&resp) {
        Some(answer) => answer.map(|()| budget(&resp.headers)),
        None if resp.is_success() => Ok(budget(&resp.headers)),
        None => Err(classify(provider, &resp)),
    }
}

/// The budget a provider reported on a successful answer.
pub fn budget(headers: &HeaderMap) -> crate::Budget {
    crate::Budget {
        remaining: remaining_budget(headers),
        reset_after: wait_from_headers(headers, SystemTime::now()),
    }
}

/// Sends a request and returns the answer if it is a success, classified otherwise:
/// a read, or a write whose answer the caller reads (an id it made).
pub async fn read(provider: &'static str, req: RequestBuilder) -> Result<HttpResponse, NotifyError> {
    let resp = send(provider, req).await?;
    if resp.is_success() {
        Ok(resp)
    } else {
        Err(classify(provider, &resp))
    }
}

/// The `rel="next"` URL of a `Link` header, only if it stays under `origin`: a
/// response must not be able to send our credential to another host.
pub fn next_link(headers: &HeaderMap, origin: &str) -> Option<String> {
    link_rel_next(headers)
        .filter(|url| same_origin(url, origin))
        .map(str::to_string)
}

/// The `rel="next"` URL of a `Link` header, wherever it points.
fn link_rel_next(headers: &HeaderMap) -> Option<&str> {
    let link = header_str(headers, "link")?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then_some(url)
    })
}

/// Whether a page-numbered listing has another page after the one answered, from
/// its `Link: rel="next"` or, failing that, `X-Total-Count` against the items read
/// so far. Only whether: the next URL is built by the caller, because a server
/// behind a proxy names itself by an origin we may not be using.
pub fn has_next_page(headers: &HeaderMap, read_so_far: usize) -> bool {
    if headers.contains_key("link") {
        return link_rel_next(headers).is_some();
    }
    header_str(headers, "x-total-count")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|total| read_so_far < total)
}

/// An API base from a server origin with any context path (`--api-url`): `prefix`
/// (`/api/v4`, `/rest`) appended unless it is already there.
pub fn with_api_prefix(base: &str, prefix: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(prefix) {
        base.to_string()
    } else {
        format!("{base}{prefix}")
    }
}

/// Whether `url` has the scheme and host (port included) of `origin`.
pub fn same_origin(url: &str, origin: &str) -> bool {
    let scheme_host = |u: &str| -> Option<String> {
        let (scheme, rest) = u.split_once("://")?;
        let host = rest.split(['/', '?', '#']).next()?;
        Some(format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        ))
    };
    scheme_host(url).is_some_and(|a| Some(a) == scheme_host(origin))
}

/// GitLab's `X-Next-Page`: the next page number, absent or empty on the last page.
pub fn next_page_number(headers: &HeaderMap) -> Option<u32> {
    header_str(headers, "x-next-page").and_then(|v| v.parse().ok())
}

/// For providers whose answers need no special reading.
pub fn no_special_answers(_: &HttpResponse) -> Option<Result<(), NotifyError>> {
    None
}

/// Reads an error answer the way every provider needs it read.
///
/// Provider modules call this for any non-2xx answer they give no special meaning.
pub fn classify(provider: &'static str, resp: &HttpResponse) -> NotifyError {
    let status = resp.status.as_u16();
    let message = error_message(&resp.body);
    let wait = wait_from_headers(&resp.headers, SystemTime::now());
    let rate_limited = status == 429
        || (status == 403
            && (header_is(&resp.headers, "x-ratelimit-remaining", "0")
                || resp.headers.contains_key("retry-after")
                || message.to_ascii_lowercase().contains("rate limit")));
    let (retry, reason) = if rate_limited {
        (Retry::RateLimited, Reason::RateLimited)
    } else {
        match status {
            401 => (Retry::Permanent, Reason::Unauthorized),
            403 => (Retry::Permanent, Reason::Forbidden),
            404 => (Retry::Permanent, Reason::NotFound),
            408 => (Retry::Transient, Reason::Timeout),
            409 => (Retry::Transient, Reason::Conflict),
            400 | 422 => (Retry::Permanent, Reason::Invalid),
            500..=599 => (Retry::Transient, Reason::ServerError),
            _ if resp.status.is_success() => (Retry::Transient, Reason::UnexpectedResponse),
            _ => (Retry::Permanent, Reason::ClientError),
        }
    };
    NotifyError {
        provider,
        retry,
        reason,
        status: Some(status),
        message,
        retry_after: wait,
    }
}

fn header_is(headers: &HeaderMap, name: &str, want: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == want)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// How long the provider asked us to wait, from any of the headers providers use:
/// `Retry-After` (seconds or HTTP date), or an exhausted budget with its reset time
/// (`X-RateLimit-Remaining: 0` + `X-RateLimit-Reset`, GitLab's `RateLimit-*`).
pub fn wait_from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(v) = header_str(headers, "retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    for (remaining, reset) in [
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
        ("ratelimit-remaining", "ratelimit-reset"),
    ] {
        if header_is(headers, remaining, "0")
            && let Some(at) = header_str(headers, reset).and_then(|v| v.parse::<u64>().ok())
        {
            let at = UNIX_EPOCH + Duration::from_secs(at);
            // The reset is a whole second; wait until it has fully passed.
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO) + Duration::from_secs(1));
        }
    }
    None
}

/// The remaining request budget a provider reported, if it did.
pub fn remaining_budget(headers: &HeaderMap) -> Option<u64> {
    ["x-ratelimit-remaining", "ratelimit-remaining"]
        .iter()
        .find_map(|h| header_str(headers, h).and_then(|v| v.parse().ok()))
}

/// The provider's own explanation from an error body: `message` (GitHub, GitLab,
/// Azure DevOps), GitHub's `errors[].message`, or the start of a non-JSON body.
pub fn error_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let mut parts = Vec::new();
            match v.get("message") {
                Some(serde_json::Value::String(s)) => parts.push(s.clone()),
                Some(other) if !other.is_null() => parts.push(other.to_string()),
                _ => {}
            }
            if let Some(errs) = v.get("errors").and_then(|e| e.as_array()) {
                parts.extend(
                    errs.iter()
                        .filter_map(|e| e.get("message").and_then(|m| m.as_str()))
                        .map(str::to_string),
                );
            }
            match v.get("error") {
                Some(serde_json::Value::String(s)) => parts.push(s.clone()),
                // Bitbucket Cloud: {"type": "error", "error": {"message": …}}
                Some(e) => parts.extend(e.get("message").and_then(|m| m.as_str()).map(str::to_string)),
                None => {}
            }
            if parts.is_empty() {
                v.to_string()
            } else {
                parts.join(": ")
            }
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    crate::text::one_line_truncated(&text, MAX_MESSAGE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        HttpResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: h,
            body: body.as_bytes().to_vec(),
        }
    }

    /// (status, headers, body, expected retry, expected reason)
    type Case<'a> = (u16, &'a [(&'a str, &'a str)], &'a str, Retry, Reason);

    #[test]
    fn classification_table() {
        let cases: &[Case] = &[
            (500, &[], "", Retry::Transient, Reason::ServerError),
            (
                502,
                &[],
                "<html>bad gateway</html>",
                Retry::Transient,
                Reason::ServerError,
            ),
            (
                503,
                &[("retry-after", "7")],
                "",
                Retry::Transient,
                Reason::ServerError,
            ),
            (429, &[], "", Retry::RateLimited, Reason::RateLimited),
            (
                403,
                &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")],
                "",
                Retry::RateLimited,
                Reason::RateLimited,
            ),
            (
                403,
                &[],
                r#"{"message":"You have exceeded a secondary rate limit"}"#,
                Retry::RateLimited,
                Reason::RateLimited,
            ),
            (
                403,
                &[("x-ratelimit-remaining", "4999")],
                r#"{"message":"Resource not accessible by integration"}"#,
                Retry::Permanent,
                Reason::Forbidden,
            ),
            (
                401,
                &[],
                r#"{"message":"Bad credentials"}"#,
                Retry::Permanent,
                Reason::Unauthorized,
            ),
            (
                404,
                &[],
                r#"{"message":"Not Found"}"#,
                Retry::Permanent,
                Reason::NotFound,
            ),
            (
                422,
                &[],
                r#"{"message":"Validation Failed","errors":[{"message":"description is too long"}]}"#,
                Retry::Permanent,
                Reason::Invalid,
            ),
            (
                400,
                &[],
                r#"{"message":"bad"}"#,
                Retry::Permanent,
                Reason::Invalid,
            ),
            (409, &[], "", Retry::Transient, Reason::Conflict),
            (408, &[], "", Retry::Transient, Reason::Timeout),
            (418, &[], "", Retry::Permanent, Reason::ClientError),
        ];
        for (status, headers, body, retry, reason) in cases {
            let e = classify("github", &resp(*status, headers, body));
            assert_eq!(
                (e.retry, e.reason),
                (*retry, *reason),
                "status {status} {headers:?} {body}"
            );
        }
    }

    #[test]
    fn messages_come_from_the_provider_body() {
        assert_eq!(
            error_message(br#"{"message":"Validation Failed","errors":[{"resource":"Status","message":"description is too long (maximum is 140 characters)"}]}"#),
            "Validation Failed: description is too long (maximum is 140 characters)"
        );
        assert_eq!(
            error_message(br#"{"message":{"name":["has already been taken"]}}"#),
            r#"{"name":["has already been taken"]}"#
        );
        assert_eq!(
            error_message(
                br#"{"type":"error","error":{"message":"key: Ensure this value has at most 40 characters (it has 48).","fields":{"key":["Ensure this value has at most 40 characters (it has 48)."]}}}"#
            ),
            "key: Ensure this value has at most 40 characters (it has 48)."
        );
        assert_eq!(
            error_message(b"upstream\nconnect error"),
            "upstream connect error"
        );
    }

    #[test]
    fn next_links_stay_on_the_api_origin() {
        let h = |v: &str| resp(200, &[("link", v)], "").headers;
        let api = "https://api.github.com";
        let both =
            r#"<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last""#;
        assert_eq!(
            next_link(&h(both), api).as_deref(),
            Some("https://api.github.com/x?page=2")
        );
        assert_eq!(
            next_link(&h(r#"<https://api.github.com/x?page=5>; rel="last""#), api),
            None
        );
        assert_eq!(
            next_link(&h(r#"<https://evil.example/x?page=2>; rel="next""#), api),
            None
        );
        assert_eq!(
            next_link(&h(r#"<http://api.github.com/x?page=2>; rel="next""#), api),
            None
        );
        assert_eq!(next_link(&h("garbage"), api), None);
    }

    #[test]
    fn a_next_page_is_told_by_link_then_total_count() {
        let h = |pairs: &[(&str, &str)]| resp(200, pairs, "").headers;
        let next = r#"<https://git.example.com/api/v1/x?limit=50&page=2>; rel="next", <https://git.example.com/api/v1/x?limit=50&page=3>; rel="last""#;
        // A Link naming another origin (a proxy's) still says there is a next page.
        assert!(has_next_page(&h(&[("link", next)]), 50));
        let last = r#"<https://git.example.com/api/v1/x?limit=50&page=1>; rel="first""#;
        assert!(!has_next_page(
            &h(&[("link", last), ("x-total-count", "120")]),
            100
        ));
        assert!(has_next_page(&h(&[("x-total-count", "120")]), 100));
        assert!(!has_next_page(&h(&[("x-total-count", "120")]), 120));
        assert!(!has_next_page(&h(&[("x-total-count", "many")]), 0));
        assert!(!has_next_page(&h(&[]), 50));
    }

    #[test]
    fn api_prefix_is_appended_once() {
        for (base, want) in [
            ("https://git.example.com", "https://git.example.com/api/v1"),
            ("https://git.example.com/", "https://git.example.com/api/v1"),
            ("https://h.example/gitea", "https://h.example/gitea/api/v1"),
            (
                "https://h.example/gitea/api/v1/",
                "https://h.example/gitea/api/v1",
            ),
        ] {
            assert_eq!(with_api_prefix(base, "/api/v1"), want, "{base}");
        }
    }

    #[test]
    fn waits_from_every_header_form() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = |pairs: &[(&str, &str)]| resp(200, pairs, "").headers;
        assert_eq!(
            wait_from_headers(&h(&[("retry-after", "30")]), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            wait_from_headers(
                &h(&[(
                    "retry-after",
                    &httpdate::fmt_http_date(now + Duration::from_secs(12))
                )]),
                now
            ),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            wait_from_headers(
                &h(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1000010")]),
                now
            ),
            Some(Duration::from_secs(11))
        );
        assert_eq!(
            wait_from_headers(
                &h(&[("RateLimit-Remaining", "0"), ("RateLimit-Reset", "1000004")]),
                now
            ),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            wait_from_headers(
                &h(&[("x-ratelimit-remaining", "10"), ("x-ratelimit-reset", "1000010")]),
                now
            ),
            None
        );
        assert_eq!(wait_from_headers(&h(&[("retry-after", "soon")]), now), None);
    }
}
