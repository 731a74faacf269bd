//! fluxd's workload list (`v6.ControllerStatus`), over the websocket RPC or, when no
//! websocket is connected or it lacks the method, over fluxd's HTTP API.

use super::rpc::{FluxdLink, RpcError};
use crate::metrics::Metrics;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::{debug, info};

/// A workload as fluxd reports it. Go marshals these without tags, hence the
/// capitals; every field may be missing or `null` in a reply we did not expect.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Workload {
    /// `namespace:kind/name`.
    #[serde(rename = "ID", deserialize_with = "null_as_default")]
    pub id: String,
    /// `""` (in the repo), `NotInRepo`, `System`, `NoRepo`, `NotReady`, `ReadOnlyMode`.
    #[serde(rename = "ReadOnly", deserialize_with = "null_as_default")]
    pub read_only: String,
    /// `started`, `updating`, `ready`, `error`; a HelmRelease's release status.
    #[serde(rename = "Status", deserialize_with = "null_as_default")]
    pub status: String,
    #[serde(rename = "Rollout", deserialize_with = "null_as_default")]
    pub rollout: Rollout,
    #[serde(rename = "SyncError", deserialize_with = "null_as_default")]
    pub sync_error: String,
    /// The resource that created this one, e.g. a HelmRelease for its Deployment.
    #[serde(rename = "Antecedent", deserialize_with = "null_as_default")]
    pub antecedent: String,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Rollout {
    #[serde(rename = "Messages", deserialize_with = "null_as_default")]
    pub messages: Vec<String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// fluxd's `ApplicationError` (e.g. the cluster is unreachable).
    #[error("fluxd reported: {0}")]
    Application(String),
    #[error("fluxd's answer is not a workload list: {0}")]
    Malformed(String),
    #[error("fluxd's HTTP API at {url}: {message}")]
    Http { url: String, message: String },
}

impl ListError {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ListError::Rpc(e) => e.label(),
            ListError::Application(_) => "application_error",
            ListError::Malformed(_) => "malformed",
            ListError::Http { .. } => "http_error",
        }
    }
}

/// Decodes `ListServices`' RPC result: `{"Result":[…]|null,"ApplicationError":…}`.
/// `Result: null` is fluxd's way of saying "no workloads". A bare `null` result is
/// not something fluxd sends, so it is refused rather than read as "none".
pub fn decode_rpc_result(raw: &RawValue) -> Result<Vec<Workload>, ListError> {
    #[derive(Deserialize)]
    struct Wrapped {
        #[serde(rename = "Result")]
        result: Option<Vec<Workload>>,
        #[serde(rename = "ApplicationError", default)]
        application_error: Option<ApplicationError>,
    }
    #[derive(Deserialize)]
    struct ApplicationError {
        #[serde(default)]
        error: String,
        #[serde(default)]
        help: String,
    }
    if raw.get() == "null" {
        return Err(ListError::Malformed("result is null".into()));
    }
    let wrapped: Wrapped =
        serde_json::from_str(raw.get()).map_err(|e| ListError::Malformed(e.to_string()))?;
    if let Some(app) = wrapped.application_error {
        let message = if app.error.is_empty() { app.help } else { app.error };
        return Err(ListError::Application(message.trim().to_string()));
    }
    Ok(wrapped.result.unwrap_or_default())
}

/// Decodes `GET /api/flux/v6/services`: a bare list, or `null`.
pub fn decode_http_body(body: &[u8]) -> Result<Vec<Workload>, ListError> {
    serde_json::from_slice::<Option<Vec<Workload>>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| ListError::Malformed(e.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Rpc,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Rpc => "rpc",
            Transport::Http => "http",
        }
    }
}

/// Where workload lists come from.
pub struct Workloads {
    link: Arc<FluxdLink>,
    http: reqwest::Client,
    /// `http://<--flux>/api/flux/v6/services?namespace=`.
    url: String,
    call_timeout: Duration,
    /// The connection that answered "can't find method": it is not asked again.
    /// `u64::MAX` when none.
    method_missing_on: AtomicU64,
    metrics: Arc<Metrics>,
}

/// fluxd's HTTP API base from `--flux` (`host:port`, as the original took it, or a URL).
pub fn services_url(flux: &str) -> String {
    let base = flux.trim().trim_end_matches('/');
    let base = if base.starts_with("http://") || base.starts_with("https://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let base = base.strip_suffix("/api/flux").unwrap_or(&base);
    format!("{base}/api/flux/v6/services?namespace=")
}

/// The largest workload list read over HTTP (the RPC side has the websocket's limit).
const MAX_LIST_BYTES: usize = 64 * 1024 * 1024;

impl Workloads {
    pub fn new(
        link: Arc<FluxdLink>,
        http: reqwest::Client,
        flux: &str,
        call_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Workloads {
            link,
            http,
            url: services_url(flux),
            call_timeout,
            method_missing_on: AtomicU64::new(u64::MAX),
            metrics,
        }
    }

    /// Lists every workload fluxd can see. Over the websocket when one is connected
    /// and serves `ListServices`; otherwise, or when the websocket drops mid-call,
    /// over the HTTP API.
    pub async fn list(&self) -> Result<(Vec<Workload>, Transport), ListError> {
        if let Some(conn) = self.link.connection()
            && self.method_missing_on.load(Ordering::Relaxed) != conn
        {
            let result = self
                .link
                .call("RPCServer.ListServices", serde_json::json!(""), self.call_timeout)
                .await;
            let decoded = result
                .map_err(ListError::from)
                .and_then(|raw| decode_rpc_result(&raw));
            self.count(Transport::Rpc, &decoded);
            match decoded {
                Ok(list) => return Ok((list, Transport::Rpc)),
                Err(ListError::Rpc(RpcError::MethodMissing(m))) => {
                    info!(error = %m, "fluxd's websocket does not serve ListServices; using its HTTP API");
                    self.method_missing_on.store(conn, Ordering::Relaxed);
                }
                Err(ListError::Rpc(e @ (RpcError::Disconnected | RpcError::NotConnected))) => {
                    debug!(error = %e, "fluxd websocket gone mid-call; trying its HTTP API");
                }
                Err(e) => return Err(e),
            }
        }
        let result = self.list_http().await;
        self.count(Transport::Http, &result);
        result.map(|l| (l, Transport::Http))
    }

    async fn list_http(&self) -> Result<Vec<Workload>, ListError> {
        let err = |message: String| ListError::Http {
            url: self.url.clone(),
            message,
        };
        // without_url: the error text then holds neither the URL nor any header.
        let transport = |e: reqwest::Error| err(e.without_url().to_string());
        let exchange = async {
            let mut resp = self
                .http
                .get(&self.url)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(transport)?;
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(transport)? {
                if body.len() + chunk.len() > MAX_LIST_BYTES {
                    return Err(err(format!("answer exceeds {MAX_LIST_BYTES} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((resp.status(), body))
        };
        let (status, body) = tokio::time::timeout(self.call_timeout, exchange)
            .await
            .map_err(|_| err(format!("no answer within {:?}", self.call_timeout)))??;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(err(format!(
                "HTTP {}: {}",
                status.as_u16(),
                notifiers::text::one_line_truncated(text.trim(), 200)
            )));
        }
        decode_http_body(&body)
    }

    fn count<T>(&self, transport: Transport, result: &Result<T, ListError>) {
        self.metrics.fluxd_call(
            transport.as_str(),
            match result {
                Ok(_) => "ok",
                Err(e) => e.label(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn the_fixture_list_decodes_over_both_transports() {
        let body = crate::mapping::fixture("v1/controller-status-list.json");
        let list = decode_http_body(&body).unwrap();
        assert!(list.len() >= 3);
        assert_eq!(list[0].id, "default:deployment/podinfo");
        assert_eq!(list[0].status, "ready");
        assert_eq!(list[1].status, "deployed");
        let wrapped = format!(
            r#"{{"Result":{},"ApplicationError":null}}"#,
            String::from_utf8(body).unwrap()
        );
        assert_eq!(decode_rpc_result(&raw(&wrapped)).unwrap(), list);
    }

    #[test]
    fn transcript_replies_decode_as_fluxd_means_them() {
        let transcript = String::from_utf8(crate::mapping::fixture("v1/rpc-transcript.jsonl")).unwrap();
        let lines: Vec<&str> = transcript.lines().collect();
        let reply_to = |param: &str| -> Box<RawValue> {
            let i = lines
                .iter()
                .position(|l| l.contains("\"RPCServer.ListServices\"") && l.contains(param))
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(lines[i + 1]).unwrap();
            raw(&v["result"].to_string())
        };
        assert!(!decode_rpc_result(&reply_to(r#"[""]"#)).unwrap().is_empty());
        assert_eq!(decode_rpc_result(&reply_to(r#"["empty"]"#)).unwrap(), vec![]);
        assert_eq!(
            decode_rpc_result(&reply_to(r#"["apperror"]"#)).unwrap_err(),
            ListError::Application("example application error".into())
        );
        // The "nonexistent" reply has `result: null` next to an error string: the
        // RPC layer turns that into an error before decoding.
        assert!(matches!(
            decode_rpc_result(&reply_to(r#"["nonexistent"]"#)),
            Err(ListError::Malformed(_))
        ));
    }

    #[test]
    fn nulls_and_wrong_shapes() {
        let w: Workload = serde_json::from_str(
            r#"{"ID":"a:deployment/b","ReadOnly":null,"Status":null,"Rollout":null,"SyncError":null,"Antecedent":null}"#,
        )
        .unwrap();
        assert_eq!(w.id, "a:deployment/b");
        assert!(w.rollout.messages.is_empty());
        let w: Workload = serde_json::from_str(r#"{"Rollout":{"Messages":null}}"#).unwrap();
        assert!(w.rollout.messages.is_empty());
        for bad in [
            r#""ready""#,
            r#"{"Result":"x"}"#,
            r#"{"Result":[1,2]}"#,
            "[]",
            "null",
        ] {
            assert!(
                matches!(decode_rpc_result(&raw(bad)), Err(ListError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(decode_http_body(b"null").unwrap(), vec![]);
        assert!(decode_http_body(b"<html>").is_err());
    }

    #[test]
    fn flux_flag_forms() {
        for (flag, url) in [
            (
                "localhost:3030",
                "http://localhost:3030/api/flux/v6/services?namespace=",
            ),
            (
                "http://fluxd:3030/",
                "http://fluxd:3030/api/flux/v6/services?namespace=",
            ),
            (
                "http://fluxd:3030/api/flux",
                "http://fluxd:3030/api/flux/v6/services?namespace=",
            ),
        ] {
            assert_eq!(services_url(flag), url);
        }
    }
}
