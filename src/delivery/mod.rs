//! Between ingest and the notifiers: coalesce, dedup, retry with backoff, honour
//! provider rate limits, drain on shutdown. Ingest only ever calls [`Delivery::offer`],
//! which never waits for a provider.

pub mod backoff;
pub mod outbox;

use crate::metrics::{Metrics, ProviderLabels};
use crate::update::{Key, RepoId, StatusUpdate};
use notifiers::{Notifier, NotifyError, Retry};
use outbox::{Completion, Full, Lease, Offer, Outbox};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Checks that may wait at once; beyond it ingest answers 503 and fluxd re-sends.
    pub capacity: usize,
    /// Checks whose last written state is remembered for dedup.
    pub written_capacity: usize,
    /// Provider writes under way at once.
    pub concurrency: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long to pause on a rate-limit answer that says nothing of when to come back.
    pub rate_limit_wait: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            capacity: 10_000,
            written_capacity: 100_000,
            concurrency: 4,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            rate_limit_wait: Duration::from_secs(60),
        }
    }
}

pub struct Delivery {
    outbox: Mutex<Outbox>,
    wake: Notify,
    notifiers: HashMap<RepoId, Arc<dyn Notifier>>,
    /// Repositories whose provider asked us to wait, until when.
    paused: Mutex<HashMap<RepoId, Instant>>,
    metrics: Arc<Metrics>,
    cfg: DeliveryConfig,
}

/// A poisoned lock only means another thread panicked mid-update; the outbox's
/// invariants hold between calls, so keep going rather than take the daemon down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Delivery {
    pub fn new(
        notifiers: HashMap<RepoId, Arc<dyn Notifier>>,
        metrics: Arc<Metrics>,
        cfg: DeliveryConfig,
    ) -> Self {
        Delivery {
            outbox: Mutex::new(Outbox::new(cfg.capacity, cfg.written_capacity)),
            wake: Notify::new(),
            notifiers,
            paused: Mutex::new(HashMap::new()),
            metrics,
            cfg,
        }
    }

    /// Queues an event's updates, all or none. Never waits on a provider.
    pub fn offer(&self, updates: Vec<StatusUpdate>) -> Result<Vec<Offer>, Full> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let states: Vec<_> = updates
            .iter()
            .map(|u| (self.provider_name(&u.repo), u.status.state))
            .collect();
        let offers = {
            let mut outbox = lock(&self.outbox);
            let offers = outbox.offer_all(updates, Instant::now())?;
            self.metrics.queue_depth.set(outbox.len() as i64);
            offers
        };
        for ((provider, state), offer) in states.into_iter().zip(&offers) {
            if *offer == Offer::Unchanged {
                self.metrics.status(provider, state, "deduplicated");
            }
        }
        self.wake.notify_one();
        Ok(offers)
    }

    pub fn pending(&self) -> usize {
        lock(&self.outbox).len()
    }

    fn provider_name(&self, repo: &RepoId) -> &'static str {
        self.notifiers.get(repo).map(|n| n.name()).unwrap_or("unknown")
    }

    fn paused_until(&self, key: &Key, now: Instant) -> Option<Instant> {
        lock(&self.paused)
            .get(&key.repo)
            .copied()
            .filter(|until| *until > now)
    }

    /// Sends until `stop` fires, then keeps sending for at most `drain` before giving
    /// up. Returns how many updates were left undelivered.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, drain: Duration) -> usize {
        let mut tasks: JoinSet<(Lease, Result<(), NotifyError>)> = JoinSet::new();
        let mut deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if deadline.is_none() && stop.is_cancelled() {
                deadline = Some(now + drain);
                info!(
                    pending = self.pending(),
                    drain_seconds = drain.as_secs_f64(),
                    "draining status updates"
                );
            }
            self.fill(&mut tasks, now);
            let (pending, next_due, oldest) = {
                let outbox = lock(&self.outbox);
                (outbox.len(), outbox.next_due(), outbox.oldest())
            };
            self.metrics.queue_depth.set(pending as i64);
            self.metrics.in_flight.set(tasks.len() as i64);
            self.metrics.oldest_pending_seconds.set(
                oldest
                    .map(|t| now.saturating_duration_since(t).as_secs_f64())
                    .unwrap_or(0.0),
            );
            if let Some(d) = deadline {
                if pending == 0 && tasks.is_empty() {
                    return 0;
                }
                if now >= d {
                    tasks.abort_all();
                    return self.report_undelivered();
                }
            }
            let wake_at = match (next_due, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((lease, result)) = joined {
                        self.finish(lease, result);
                    }
                }
                _ = sleep_until(wake_at), if wake_at.is_some() => {}
                _ = stop.cancelled(), if deadline.is_none() => {}
            }
        }
    }

    fn fill(&self, tasks: &mut JoinSet<(Lease, Result<(), NotifyError>)>, now: Instant) {
        while tasks.len() < self.cfg.concurrency {
            let (lease, deduplicated) = lock(&self.outbox).next_ready(now, |k| self.paused_until(k, now));
            if deduplicated > 0 {
                self.metrics.queue_depth.set(self.pending() as i64);
            }
            let Some(lease) = lease else { break };
            let Some(notifier) = self.notifiers.get(&lease.update.repo).cloned() else {
                error!(repo = %lease.update.repo, "no notifier configured for repository; dropping update");
                lock(&self.outbox).complete(&lease, Completion::Dropped, now);
                continue;
            };
            let span = tracing::info_span!(
                "write_status",
                provider = notifier.name(),
                repo = %lease.update.repo,
                sha = %lease.update.status.sha,
                check = %lease.update.status.check,
                state = %lease.update.status.state,
                attempt = lease.attempt,
            );
            tasks.spawn(
                async move {
                    let result = notifier.set_status(&lease.update.status).await;
                    (lease, result)
                }
                .instrument(span),
            );
        }
    }

    fn finish(&self, lease: Lease, result: Result<(), NotifyError>) {
        let now = Instant::now();
        let u = &lease.update;
        let provider = self.provider_name(&u.repo);
        let completion = match result {
            Ok(()) => {
                self.metrics.status(provider, u.status.state, "written");
                self.metrics
                    .delivery_seconds
                    .observe(now.saturating_duration_since(lease.accepted_at).as_secs_f64());
                info!(provider, repo = %u.repo, sha = %u.status.sha, check = %u.status.check,
                    state = %u.status.state, attempt = lease.attempt, "commit status written");
                Completion::Written
            }
            Err(e) if e.retry == Retry::Permanent => {
                self.metrics.status(provider, u.status.state, "dropped");
                error!(provider, repo = %u.repo, sha = %u.status.sha, check = %u.status.check,
                    state = %u.status.state, http_status = e.status, reason = e.reason.as_str(),
                    error = %e.message, "provider rejected commit status; not retrying");
                Completion::Dropped
            }
            Err(e) => {
                let backoff = backoff::delay(lease.attempt, self.cfg.initial_backoff, self.cfg.max_backoff);
                let delay = match (e.retry, e.retry_after) {
                    (_, Some(asked)) => asked.min(Duration::from_secs(3600)),
                    (Retry::RateLimited, None) => backoff.max(self.cfg.rate_limit_wait),
                    _ => backoff,
                };
                if e.retry == Retry::RateLimited {
                    lock(&self.paused).insert(u.repo.clone(), now + delay);
                }
                self.metrics
                    .retries
                    .get_or_create(&ProviderLabels {
                        provider,
                        reason: e.reason.as_str(),
                    })
                    .inc();
                warn!(provider, repo = %u.repo, sha = %u.status.sha, check = %u.status.check,
                    http_status = e.status, reason = e.reason.as_str(), error = %e.message,
                    attempt = lease.attempt, retry_in_ms = delay.as_millis() as u64,
                    "commit status write failed; will retry");
                Completion::Retry(delay)
            }
        };
        lock(&self.outbox).complete(&lease, completion, now);
    }

    fn report_undelivered(&self) -> usize {
        let outbox = lock(&self.outbox);
        for u in outbox.pending() {
            warn!(repo = %u.repo, sha = %u.status.sha, check = %u.status.check, state = %u.status.state,
                "shutdown: commit status not delivered");
        }
        outbox.len()
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}
