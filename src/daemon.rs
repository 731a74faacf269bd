//! Wiring: build the notifier, bind the listeners, run until told to stop, drain.

use crate::auth::IngestAuth;
use crate::config::{Config, Target};
use crate::delivery::store::{Persister, Recovered, Store, StoreEvent};
use crate::delivery::{Delivery, Route};
use crate::deployments::Deployments;
use crate::fluxv1::daemon::Websocket;
use crate::fluxv1::map::V1Context;
use crate::fluxv1::poller::{Poller, PollerConfig};
use crate::fluxv1::route::V1Events;
use crate::fluxv1::rpc::FluxdLink;
use crate::fluxv1::workloads::Workloads;
use crate::fluxv2::map::ObjectMatch;
use crate::fluxv2::map::V2Context;
use crate::ingest::{self, Ingest};
use crate::intake::{BodyGate, Intake};
use crate::listener::Limits;
use crate::listener::throttle::Throttle;
use crate::metrics::{Metrics, ResultLabel};
use crate::ops::{self, Health, Ops};
use crate::repos::ObjectPattern;
use crate::update::RepoId;
use crate::writers::{self, Writers, repo_id};
use notifiers::Notifier;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("setting up the notifier: {0}")]
    Notifier(String),
    #[error("{0} (give each daemon its own writable volume there, or run with --no-persistence)")]
    Store(#[from] crate::delivery::store::StoreError),
}

/// The sockets the daemon serves on. Bound apart from [`serve`] so that whoever binds
/// knows the addresses: the tests bind `127.0.0.1:0` and read the ports from here.
pub struct Listeners {
    pub ingest: TcpListener,
    /// `None` with `--ops-listen off`.
    pub ops: Option<TcpListener>,
}

impl Listeners {
    /// Binds `--listen` and `--ops-listen`.
    pub async fn bind(config: &Config) -> Result<Listeners, DaemonError> {
        let ingest = bind(config.listen).await?;
        let ops = match config.ops_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners { ingest, ops })
    }
}

/// Binds the configured addresses and serves them until `shutdown` completes, then
/// drains deliveries for at most `--shutdown-timeout`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let listeners = Listeners::bind(&config).await?;
    serve(config, listeners, shutdown).await
}

/// [`run`] on listeners already bound.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::new());
    let mut routes = HashMap::new();
    let mut notifiers = Vec::new();
    let mut deployed = Vec::new();
    // One client, so every notifier shares its connection pool and CA bundle.
    let client = notifiers::http::client(&config.http).map_err(|e| DaemonError::Notifier(e.to_string()))?;
    for target in config.targets() {
        let Writers {
            repo,
            statuses: notifier,
            deployments: deployer,
        } = writers::build(target, &client, config.github_checks, config.deployments.as_ref())
            .map_err(DaemonError::Notifier)?;
        if routes.contains_key(&repo) {
            return Err(DaemonError::Notifier(format!(
                "repository {repo} is configured twice"
            )));
        }
        let check_runs = crate::config::target::writes_check_runs(config.github_checks, target);
        info!(provider = notifier.name(), repo = %repo, instance = %config.instance, check_runs, "using notifier");
        notifiers.push(notifier.clone());
        if let (Some(deployer), Some(d)) = (deployer, &config.deployments) {
            info!(provider = deployer.name(), repo = %repo, environment = %d.environment, "writing deployments");
            routes.insert(
                crate::deployments::route(&repo),
                Route {
                    notifier: deployer,
                    limits: config.limits(target),
                },
            );
            deployed.push(repo.clone());
        }
        routes.insert(
            repo,
            Route {
                notifier,
                limits: config.limits(target),
            },
        );
    }
    let deployments = config
        .deployments
        .as_ref()
        .map(|d| Arc::new(Deployments::new(&d.environment, d.git_branch.clone(), deployed)));
    let repo_of = |t: &Target| repo_id(t.git_url());
    let fallback = config.fallback.as_ref().map(repo_of);
    let rules: Vec<(Vec<ObjectPattern>, RepoId)> = config
        .rules
        .iter()
        .map(|(t, patterns)| (patterns.clone(), repo_of(t)))
        .collect();
    // fluxd v1 syncs one repository: --git-url, else the first --config repository.
    let v1_repo = fallback
        .clone()
        .or_else(|| rules.first().map(|(_, r)| r.clone()))
        .unwrap_or_else(|| "none".into());
    let ops_state = Arc::new(Ops {
        metrics: metrics.clone(),
        health: Health::default(),
    });
    let (persister, mut recovered) = match &config.state_dir {
        Some(dir) => {
            let (store, recovered) = Store::open(dir)?;
            info!(path = %dir.display(), "durable outbox opened");
            let ops = ops_state.clone();
            let persister = Persister::start(store, move |event| match event {
                StoreEvent::Committed(result) => {
                    let ok = result.is_ok();
                    if let Err(e) = result {
                        error!(error = %e, "state store commit failed");
                    }
                    if ops.health.store.swap(ok, Ordering::Relaxed) != ok && ok {
                        info!("state store writable again");
                    }
                    ops.metrics
                        .outbox_commits
                        .get_or_create(&ResultLabel::of(result))
                        .inc();
                }
                StoreEvent::Compacted(result) => {
                    ops.metrics
                        .outbox_compactions
                        .get_or_create(&ResultLabel::of(result))
                        .inc();
                }
                StoreEvent::Damaged(lost) => {
                    ops.metrics.outbox_damaged_records.inc_by(lost.records);
                    ops.metrics.outbox_damaged_bytes.inc_by(lost.bytes);
                }
            })?;
            (persister, recovered)
        }
        None => {
            warn!(
                "running without persistence (--no-persistence): accepted updates are lost if the process dies"
            );
            (Persister::in_memory(), Recovered::default())
        }
    };
    ops_state
        .health
        .credentials_unchecked
        .store(notifiers.len(), Ordering::Relaxed);
    for notifier in notifiers {
        tokio::spawn(check_credentials(notifier, ops_state.clone()));
    }
    let saved_poll = recovered.poll.take();
    let delivery = Arc::new(Delivery::new(
        routes,
        persister.clone(),
        recovered,
        metrics.clone(),
        config.delivery.clone(),
    ));

    let stop_ingest = CancellationToken::new();
    let fluxd = Arc::new(FluxdLink::default());
    let (poller, poller_task) = match &config.workloads {
        Some(polling) => {
            let workloads = Workloads::new(
                fluxd.clone(),
                fluxd_http_client()?,
                &polling.flux,
                polling.call_timeout,
                metrics.clone(),
            );
            let cfg = PollerConfig {
                repo: v1_repo.clone(),
                instance: config.instance.clone(),
                target_url: config.target_url.clone(),
                interval: polling.interval,
                timeout: polling.timeout,
                deployments: deployments.clone(),
            };
            let (handle, task) = Poller::start(
                cfg,
                workloads,
                delivery.clone(),
                metrics.clone(),
                saved_poll,
                stop_ingest.clone(),
            );
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    let (ingest_limits, ops_limits) = connection_caps(&config);
    let ingest_state = Arc::new(Ingest {
        intake: Intake {
            metrics: metrics.clone(),
            delivery: delivery.clone(),
            auth: IngestAuth::new(config.upstream_token.clone(), config.hmac_key),
            bodies: BodyGate::new(
                config.listeners.body_timeout,
                config.listeners.body_bytes_in_flight,
            ),
            deployments,
        },
        v1: V1Events {
            ctx: V1Context {
                repo: v1_repo,
                instance: config.instance.clone(),
                check: crate::fluxv1::map::sync_check(&config.instance),
                status_range: config.status_range,
                target_url: config.target_url.clone(),
                rollout_checked: config.workloads.is_some(),
            },
            max_event_bytes: config.max_event_bytes,
            poller,
        },
        v2: V2Context {
            rules: rules
                .into_iter()
                .map(|(patterns, repo)| {
                    let matches: ObjectMatch = Arc::new(move |o| patterns.iter().any(|p| p.matches(o)));
                    (matches, repo)
                })
                .collect(),
            fallback,
            instance: config.instance.clone(),
            check_template: config.check_template.as_str().into(),
            target_url: config.target_url.clone(),
        },
        websocket: Arc::new(Websocket {
            metrics: metrics.clone(),
            idle: config.listeners.ingest.idle_timeout.max(MIN_WEBSOCKET_IDLE),
            sessions: AtomicUsize::new(0),
            shutdown: stop_ingest.clone(),
            link: fluxd,
        }),
        refusal_log: Throttle::new(),
    });

    let Listeners {
        ingest: ingest_listener,
        ops: ops_listener,
    } = listeners;
    let ingest_addr = ingest_listener.local_addr().unwrap_or(config.listen);

    let stop_delivery = CancellationToken::new();
    let delivery_task = tokio::spawn(
        delivery
            .clone()
            .run(stop_delivery.clone(), config.shutdown_timeout),
    );
    let fluxd_auth = ingest_state.intake.auth.fluxd().describe();
    let v2_auth = ingest_state.intake.auth.v2().describe();
    let body_bytes_in_flight = ingest_state.intake.bodies.total;
    let ingest_task = tokio::spawn(ingest::serve(
        ingest_listener,
        ingest_state,
        ingest_limits,
        stop_ingest.clone(),
    ));
    let stop_ops = CancellationToken::new();
    if let Some(listener) = ops_listener {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        info!(addr = %addr, paths = "/metrics /healthz /readyz", auth = "none",
            max_connections = ops_limits.max_connections, "ops listening");
        tokio::spawn(ops::serve(
            listener,
            ops_state.clone(),
            ops_limits,
            stop_ops.clone(),
        ));
    }
    info!(
        addr = %ingest_addr,
        fluxd_routes = fluxd_auth,
        flux_v2_routes = v2_auth,
        max_connections = ingest_limits.max_connections,
        header_timeout = ?ingest_limits.header_timeout,
        body_timeout = ?config.listeners.body_timeout,
        idle_timeout = ?ingest_limits.idle_timeout,
        body_bytes_in_flight,
        "ingest listening"
    );
    ops_state.health.listening.store(true, Ordering::Relaxed);

    shutdown.await;
    info!(
        pending = delivery.pending(),
        "shutting down: no longer accepting events"
    );
    ops_state.health.draining.store(true, Ordering::Relaxed);
    stop_ingest.cancel();
    let _ = ingest_task.await;
    if let Some(task) = poller_task {
        let _ = task.await;
    }
    stop_delivery.cancel();
    let undelivered = delivery_task.await.unwrap_or(0);
    // The last completions' records, and a compaction under way, reach the disk.
    if let Err(e) = persister.stop().await {
        error!(error = %e, "state store: the last changes may not be on disk");
    }
    stop_ops.cancel();
    if undelivered > 0 {
        warn!(undelivered, "exiting with status updates not delivered");
    } else {
        info!("all accepted status updates delivered");
    }
    Ok(())
}

/// fluxd pings every ~13 s: a shorter `--idle-timeout` must not cut its websocket.
const MIN_WEBSOCKET_IDLE: Duration = Duration::from_secs(30);

/// Each listener's limits, the caps lowered if together they would not fit well under
/// the open-file limit.
fn connection_caps(config: &Config) -> (Limits, Limits) {
    let (mut ingest, mut ops) = (config.listeners.ingest, config.listeners.ops);
    let fds = crate::listener::fd_limit();
    let (i, o, lowered) = crate::listener::fit_caps(ingest.max_connections, ops.max_connections, fds);
    if lowered {
        warn!(
            open_file_limit = fds.unwrap_or(0),
            max_connections = i,
            ops_max_connections = o,
            "connection caps lowered to stay under the open-file limit (ulimit -n)"
        );
    }
    ingest.max_connections = i;
    ops.max_connections = o;
    (ingest, ops)
}

/// Checks the credential once at startup, and again until the provider accepts it:
/// until then /readyz says why the daemon is not ready.
async fn check_credentials(notifier: Arc<dyn Notifier>, ops: Arc<Ops>) {
    loop {
        match notifier.check_credentials().await {
            Ok(()) => {
                ops.health.credentials_unchecked.fetch_sub(1, Ordering::Relaxed);
                info!(
                    provider = notifier.name(),
                    repo = notifier.repo(),
                    "provider accepted the credential"
                );
                return;
            }
            Err(e) => {
                let permanent = e.retry == notifiers::Retry::Permanent;
                error!(provider = notifier.name(), repo = notifier.repo(), http_status = e.status,
                    reason = e.reason.as_str(), error = %e.message,
                    "credential check failed; not ready until it passes");
                let wait = if permanent {
                    Duration::from_secs(60)
                } else {
                    Duration::from_secs(10)
                };
                tokio::time::sleep(e.retry_after.unwrap_or(wait).max(Duration::from_secs(1))).await;
            }
        }
    }
}

/// fluxd's HTTP API is local (a sidecar's `localhost:3030`): no proxy, short connect.
fn fluxd_http_client() -> Result<reqwest::Client, DaemonError> {
    notifiers::http::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("flux-status/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| DaemonError::Notifier(format!("building fluxd's HTTP client: {e}")))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!(signal = "SIGINT", "signal received"),
        _ = term => info!(signal = "SIGTERM", "signal received"),
    }
}
