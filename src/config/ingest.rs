//! The ingest section: where events arrive, who may send them, and the limits that
//! protect the listeners from slow, idle, large and too many clients.

use super::Problems;
use super::usage::{parse_duration, parse_listen};
use crate::credentials::{SecretSource, load};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Address for fluxd's websocket and events (and Flux v2 webhooks).
    #[arg(long, env = "FLUX_STATUS_LISTEN", default_value = "127.0.0.1:3000", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Address for /metrics, /healthz and /readyz; "off" to disable.
    #[arg(long, env = "FLUX_STATUS_OPS_LISTEN", default_value = "0.0.0.0:8080")]
    pub ops_listen: String,

    /// Token fluxd must present (fluxd --token): `Authorization: Scope-Probe token=<token>`.
    #[arg(
        long,
        env = "FLUX_STATUS_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: Option<String>,

    /// File holding the token fluxd must present.
    #[arg(long, env = "FLUX_STATUS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Flux v2 `generic-hmac`: file holding the Provider's key; every event must then be
    /// signed (`X-Signature: sha256=<hex>`).
    #[arg(long, env = "FLUX_STATUS_HMAC_KEY_FILE")]
    pub hmac_key_file: Option<PathBuf>,

    /// Allow listening beyond loopback with neither --token nor --hmac-key-file.
    #[arg(long, env = "FLUX_STATUS_INSECURE_ALLOW_UNAUTHENTICATED")]
    pub insecure_allow_unauthenticated: bool,

    /// Largest event body accepted; larger ones get 413. fluxd's initial sync lists the
    /// whole history, so this is generous.
    #[arg(long, env = "FLUX_STATUS_MAX_EVENT_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_event_bytes: usize,

    /// Time a client has to send a request's headers, from connecting (or from the
    /// first byte of its next request on a keep-alive connection).
    #[arg(long, env = "FLUX_STATUS_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Time a client has to send an event's body once its headers are in; 408 after.
    #[arg(long, env = "FLUX_STATUS_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// How long a keep-alive connection may wait for its next request. fluxd's
    /// websocket gets at least 30s without a frame (fluxd pings every ~13 s).
    #[arg(long, env = "FLUX_STATUS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Ingest connections open at once, lowered to fit the open-file limit; beyond it
    /// new connections get 503 and are closed.
    #[arg(long, env = "FLUX_STATUS_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// Ops connections open at once: apart from ingest's, so probes keep answering.
    #[arg(long, env = "FLUX_STATUS_OPS_MAX_CONNECTIONS", default_value_t = 64)]
    pub ops_max_connections: usize,

    /// Event body bytes held at once across all requests; beyond it 503 [default:
    /// 64 MiB, or --max-event-bytes if larger].
    #[arg(long, env = "FLUX_STATUS_MAX_BODY_BYTES_IN_FLIGHT")]
    pub max_body_bytes_in_flight: Option<usize>,
}

/// The default of `--max-body-bytes-in-flight`, below `--max-event-bytes`' own.
const DEFAULT_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// Limits against slow, idle and too many clients.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Before [`crate::listener::fit_caps`].
    pub ingest: crate::listener::Limits,
    pub ops: crate::listener::Limits,
    pub body_timeout: Duration,
    pub body_bytes_in_flight: usize,
}

pub struct IngestSection {
    pub listen: SocketAddr,
    pub ops_listen: Option<SocketAddr>,
    pub upstream_token: Option<SecretString>,
    pub hmac_key: Option<secrecy::SecretBox<Vec<u8>>>,
    pub max_event_bytes: usize,
    pub listeners: ListenerConfig,
}

impl IngestArgs {
    pub fn validate(self, problems: &mut Problems) -> IngestSection {
        let ops_listen = match self.ops_listen.trim() {
            "" | "off" | "none" => None,
            s => s
                .parse()
                .map_err(|_| {
                    problems.push(
                        "--ops-listen",
                        format!("{s:?} is not an address like 0.0.0.0:8080 (or \"off\")"),
                    )
                })
                .ok(),
        };
        let upstream_token = load(
            "fluxd token",
            SecretSource::new(self.token, self.token_file, "--token"),
        )
        .unwrap_or_else(|e| {
            problems.push("--token", e);
            None
        });
        // The key is used byte for byte, as notification-controller uses the Secret's
        // value: no trimming.
        let hmac_key = match &self.hmac_key_file {
            None => None,
            Some(path) => match std::fs::read(path) {
                Ok(k) if k.is_empty() => {
                    problems.push("--hmac-key-file", format!("{} is empty", path.display()));
                    None
                }
                Ok(k) => Some(secrecy::SecretBox::new(Box::new(k))),
                Err(e) => {
                    problems.push("--hmac-key-file", format!("{}: {e}", path.display()));
                    None
                }
            },
        };
        let open = crate::auth::open_routes(upstream_token.is_some(), self.hmac_key_file.is_some());
        if !self.listen.ip().is_loopback() && !open.is_empty() && !self.insecure_allow_unauthenticated {
            problems.push(
                "--listen",
                format!(
                    "{} is reachable beyond this host, and with neither --token nor --hmac-key-file \
                     the routes {} take requests with no credential: anyone who can reach it could forge \
                     deploy statuses. Set --token (every route) or --hmac-key-file (Flux v2; fluxd's routes \
                     are then refused), listen on 127.0.0.1, or pass --insecure-allow-unauthenticated",
                    self.listen,
                    open.join(" and ")
                ),
            );
        }
        if self.max_event_bytes < 1024 {
            problems.push("--max-event-bytes", "must be at least 1024");
        }
        for (flag, d) in [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--idle-timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                problems.push(flag, "must be above zero");
            }
        }
        if self.max_connections == 0 || self.ops_max_connections == 0 {
            problems.push(
                "--max-connections and --ops-max-connections",
                "must be at least 1",
            );
        }
        let largest_body = self.max_event_bytes.max(crate::fluxv2::route::MAX_EVENT_BYTES);
        let body_bytes_in_flight = match self.max_body_bytes_in_flight {
            Some(n) if n < largest_body => {
                problems.push(
                    "--max-body-bytes-in-flight",
                    format!("must be at least {largest_body} (the largest event body accepted)"),
                );
                n
            }
            Some(n) => n,
            None => DEFAULT_BODY_BYTES_IN_FLIGHT.max(largest_body),
        };
        IngestSection {
            listen: self.listen,
            ops_listen,
            upstream_token,
            hmac_key,
            max_event_bytes: self.max_event_bytes,
            listeners: ListenerConfig {
                ingest: crate::listener::Limits {
                    header_timeout: self.header_timeout,
                    idle_timeout: self.idle_timeout,
                    max_connections: self.max_connections,
                },
                ops: crate::listener::Limits {
                    header_timeout: self.header_timeout,
                    idle_timeout: self.idle_timeout,
                    max_connections: self.ops_max_connections,
                },
                body_timeout: self.body_timeout,
                body_bytes_in_flight,
            },
        }
    }
}
