//! Between ingest and the notifiers: persist, coalesce, dedup, throttle, retry with
//! backoff, honour provider rate limits, drain on shutdown. Ingest only ever calls
//! [`Delivery::accept`], which waits for the disk, never for a provider.

pub mod backoff;
pub mod limiter;
pub mod outbox;
pub mod readback;
pub mod store;

#[cfg(test)]
mod handle_tests;

use crate::metrics::{Metrics, ProviderLabels};
use crate::update::{Key, Map, RepoId, StatusUpdate};
use limiter::{Limiter, Limits};
use notifiers::{Notifier, NotifyError, Reason, Receipt, Retry};
use outbox::{Completion, Full, Lease, Offer, Outbox};
use readback::Listings;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use store::{Op, Persister, Recovered};
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
    /// How long a write whose outcome we did not learn may still be applied by the
    /// provider: its key is not written again, and not taken as settled, until a
    /// read-back taken after that long.
    pub settle_after: Duration,
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
            settle_after: Duration::from_secs(45),
        }
    }
}

/// How often the age of the oldest pending update is recomputed.
const OLDEST_REFRESH: Duration = Duration::from_secs(1);

/// A notifier and the budget it must stay within.
pub struct Route {
    pub notifier: Arc<dyn Notifier>,
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Full(#[from] Full),
    #[error("state store: {0}")]
    Store(Arc<store::StoreError>),
    /// An update the store could not keep, even cut to its bounds: refused, since
    /// accepting it would mean acknowledging what cannot survive a restart.
    #[error("status update too large to store: {0}")]
    TooLarge(String),
}

/// Brings every update within what the store keeps (see [`StatusUpdate::bound`]):
/// the one place that updates from every source (v1, v2, workloads) pass through.
fn bound(mut updates: Vec<StatusUpdate>) -> Result<Vec<StatusUpdate>, AcceptError> {
    for u in &mut updates {
        let refused = match u.bound() {
            Ok(cut) => {
                if cut.any() {
                    warn!(repo = %u.repo, sha = %u.status.sha, check = %u.status.check,
                        description_bytes = cut.description_from, target_url_bytes = cut.target_url_dropped,
                        "status update cut to what the outbox keeps");
                }
                (!store::fits(u)).then(|| format!("over {} bytes", store::MAX_RECORD))
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = refused {
            warn!(repo = %u.repo, sha = %u.status.sha, check_bytes = u.status.check.as_str().len(),
                description_bytes = u.status.description.len(), error = %why,
                "status update refused: too large to store");
            return Err(AcceptError::TooLarge(why));
        }
    }
    Ok(updates)
}

struct Throttle {
    /// The provider asked us to wait until then.
    paused_until: Option<Instant>,
    limiter: Limiter,
}

/// How a send ended well.
enum Sent {
    Written(Receipt),
    /// The read-back found the state on top, after every earlier attempt of unknown
    /// outcome could have landed: nothing was sent.
    AlreadyThere,
}

/// How a send failed.
struct Failed {
    error: NotifyError,
    /// The failed request was the write itself, so it may have been applied.
    wrote: bool,
}

pub struct Delivery {
    outbox: Mutex<Outbox>,
    wake: Notify,
    routes: Map<RepoId, Route>,
    throttles: Mutex<Map<RepoId, Throttle>>,
    persister: Persister,
    metrics: Arc<Metrics>,
    cfg: DeliveryConfig,
    listings: Listings,
    /// Where the grid of settle deadlines starts.
    epoch: Instant,
}

/// A poisoned lock only means another thread panicked mid-update; the outbox's
/// invariants hold between calls, so keep going rather than take the daemon down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Delivery {
    pub fn new(
        routes: HashMap<RepoId, Route>,
        persister: Persister,
        recovered: Recovered,
        metrics: Arc<Metrics>,
        cfg: DeliveryConfig,
    ) -> Self {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut outbox = Outbox::new(cfg.capacity.max(recovered.pending.len()), cfg.written_capacity);
        let in_flight: HashSet<Key> = recovered.in_flight.into_iter().collect();
        let pending = recovered
            .pending
            .into_iter()
            .map(|(u, at)| {
                (
                    u,
                    now.checked_sub(wall.duration_since(at).unwrap_or_default())
                        .unwrap_or(now),
                )
            })
            .collect();
        // The previous run's last writes may still land: those keys are read back
        // once that can no longer happen.
        outbox.restore(recovered.written, pending, &in_flight, now + cfg.settle_after);
        outbox.restore_handles(recovered.handles);
        if !outbox.is_empty() {
            info!(
                pending = outbox.len(),
                in_doubt = in_flight.len(),
                read_back_in_s = cfg.settle_after.as_secs_f64(),
                "resuming status updates from the outbox"
            );
        }
        metrics.outbox_pending.set(outbox.len() as i64);
        let throttles = routes
            .iter()
            .map(|(repo, r)| {
                (
                    repo.clone(),
                    Throttle {
                        paused_until: None,
                        limiter: Limiter::new(r.limits, now),
                    },
                )
            })
            .collect();
        Delivery {
            outbox: Mutex::new(outbox),
            wake: Notify::new(),
            routes: routes.into_iter().collect(),
            throttles: Mutex::new(throttles),
            persister,
            metrics,
            cfg,
            listings: Listings::default(),
            epoch: now,
        }
    }

    /// Queues an event's updates, all or none, and returns once they are durable.
    /// Never waits on a provider.
    pub async fn accept(&self, updates: Vec<StatusUpdate>) -> Result<Vec<Offer>, AcceptError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let updates = bound(updates)?;
        let mut unchanged = Vec::new();
        let wake;
        let (offers, durable) = {
            let mut outbox = lock(&self.outbox);
            let now = Instant::now();
            wake = updates.iter().any(|u| outbox.wakes_dispatcher(&u.repo, now));
            let offers = outbox.offer_all(updates.clone(), now)?;
            let accepted_at = SystemTime::now();
            let mut ops = Vec::with_capacity(updates.len());
            for (u, offer) in updates.into_iter().zip(&offers) {
                if *offer == Offer::Unchanged {
                    unchanged.push(u);
                } else {
                    ops.push(Op::Pending(u, accepted_at));
                }
            }
            // Submitted under the lock: the store sees changes in the order memory did.
            let durable = self.persister.submit(&ops);
            self.metrics.outbox_pending.set(outbox.len() as i64);
            (offers, durable)
        };
        for u in unchanged {
            self.metrics
                .status(self.provider_name(&u.repo), u.status.state, "deduplicated");
        }
        if wake {
            self.wake.notify_one();
        }
        durable.wait().await.map_err(AcceptError::Store)?;
        Ok(offers)
    }

    pub fn pending(&self) -> usize {
        lock(&self.outbox).len()
    }

    /// What the outbox holds, for handlers' tests to check what an event became.
    #[cfg(test)]
    pub(crate) fn pending_updates(&self) -> Vec<StatusUpdate> {
        lock(&self.outbox).pending().cloned().collect()
    }

    /// Saves the workload poll under way (`None`: finished) in the same store, in
    /// order with the statuses it posted.
    pub async fn save_poll(&self, poll: Option<Vec<u8>>) {
        if let Err(e) = self.persister.submit(&[Op::Poll(poll)]).wait().await {
            warn!(error = %e, "could not save the workload poll; a restart now would not resume it");
        }
    }

    fn provider_name(&self, repo: &RepoId) -> &'static str {
        self.routes
            .get(repo)
            .map(|r| r.notifier.name())
            .unwrap_or("unknown")
    }

    /// When a repository's notifier may send next, if not now.
    fn blocked_until(&self, repo: &RepoId, now: Instant) -> Option<Instant> {
        let mut throttles = lock(&self.throttles);
        let t = throttles.get_mut(repo)?;
        let paused = t.paused_until.filter(|u| *u > now);
        let limited = t.limiter.blocked_until(now);
        paused.max(limited)
    }

    fn pause(&self, repo: &RepoId, until: Instant) {
        if let Some(t) = lock(&self.throttles).get_mut(repo) {
            t.paused_until = Some(t.paused_until.map_or(until, |u| u.max(until)));
        }
    }

    /// Sends until `stop` fires, then keeps sending for at most `drain` before giving
    /// up. Returns how many updates were left undelivered.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, drain: Duration) -> usize {
        let mut tasks: JoinSet<(Lease, Result<Sent, Failed>)> = JoinSet::new();
        let mut deadline: Option<Instant> = None;
        let mut oldest_at = Instant::now() - OLDEST_REFRESH;
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
            // The oldest entry takes a scan of the whole outbox: once a second is
            // plenty for a gauge, and on every wake it cost a third of the CPU.
            let refresh_oldest = now.saturating_duration_since(oldest_at) >= OLDEST_REFRESH;
            let (pending, ready, next_due, oldest) = {
                let outbox = lock(&self.outbox);
                let oldest = refresh_oldest.then(|| outbox.oldest());
                (outbox.len(), outbox.ready_len(), outbox.next_due(), oldest)
            };
            self.metrics.outbox_pending.set(pending as i64);
            self.metrics.queue_depth.set(ready as i64);
            self.metrics.in_flight.set(tasks.len() as i64);
            if let Some(oldest) = oldest {
                oldest_at = now;
                self.metrics.oldest_pending_seconds.set(
                    oldest
                        .map(|t| now.saturating_duration_since(t).as_secs_f64())
                        .unwrap_or(0.0),
                );
            }
            if let Some(d) = deadline {
                if pending == 0 && tasks.is_empty() {
                    return 0;
                }
                if now >= d {
                    tasks.abort_all();
                    return self.report_undelivered();
                }
            }
            let wake_at = next_due.into_iter().chain(deadline).min();
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

    /// Spends from `repo`'s request budget: a write, or a read.
    fn spend(&self, repo: &RepoId, write: bool) {
        if let Some(t) = lock(&self.throttles).get_mut(repo) {
            if write {
                t.limiter.take(Instant::now());
            } else {
                t.limiter.take_read(Instant::now());
            }
        }
    }

    fn fill(self: &Arc<Self>, tasks: &mut JoinSet<(Lease, Result<Sent, Failed>)>, now: Instant) {
        while tasks.len() < self.cfg.concurrency {
            let (lease, deduplicated) = {
                let mut outbox = lock(&self.outbox);
                let (lease, deduplicated) = outbox.next_ready(now, |repo| self.blocked_until(repo, now));
                if !deduplicated.is_empty() {
                    let done: Vec<Op> = deduplicated.iter().cloned().map(Op::Done).collect();
                    self.persister.submit(&done);
                }
                (lease, deduplicated)
            };
            for key in &deduplicated {
                // The state was written while this update waited: one write saved.
                let provider = self.provider_name(&key.repo);
                self.metrics
                    .statuses
                    .get_or_create(&crate::metrics::StatusLabels {
                        provider,
                        state: "any",
                        result: "superseded",
                    })
                    .inc();
            }
            let Some(lease) = lease else { break };
            let key = lease.update.key();
            let Some(notifier) = self.routes.get(&key.repo).map(|r| r.notifier.clone()) else {
                error!(repo = %key.repo, "no notifier configured for repository; dropping update");
                let mut outbox = lock(&self.outbox);
                if outbox.complete(&lease, Completion::Dropped, now).removed {
                    self.persister.submit(&[Op::Done(key)]);
                }
                continue;
            };
            // A read-back spends its own budget, and a write's only if it writes.
            if lease.read_back.is_none()
                && let Some(t) = lock(&self.throttles).get_mut(&key.repo)
            {
                t.limiter.take(now);
            }
            // Durable before the request leaves: if we die mid-write, the next start
            // reads the provider's status instead of writing it a second time.
            let marked = self.persister.submit(&[Op::InFlight(key)]);
            let span = tracing::info_span!(
                "write_status",
                provider = notifier.name(),
                repo = %lease.update.repo,
                sha = %lease.update.status.sha,
                check = %lease.update.status.check,
                state = %lease.update.status.state,
                attempt = lease.attempt,
            );
            let delivery = self.clone();
            tasks.spawn(
                async move {
                    let result = send(&delivery, &*notifier, &lease, marked).await;
                    (lease, result)
                }
                .instrument(span),
            );
        }
    }

    fn finish(&self, lease: Lease, result: Result<Sent, Failed>) {
        let now = Instant::now();
        let u = &lease.update;
        let provider = self.provider_name(&u.repo);
        // The provider object the write returned, if it returned one.
        let mut returned = None;
        let completion = match result {
            Ok(sent) => {
                let (result_label, message) = match sent {
                    Sent::Written(Receipt { budget, handle }) => {
                        returned = handle;
                        if let Some(remaining) = budget.remaining {
                            self.metrics
                                .rate_limit_remaining
                                .get_or_create(&crate::metrics::ProviderOnly { provider })
                                .set(remaining as i64);
                        }
                        if budget.remaining == Some(0)
                            && let Some(reset) = budget.reset_after
                        {
                            warn!(
                                provider,
                                reset_in_s = reset.as_secs(),
                                "provider request budget spent; pausing"
                            );
                            self.pause(&u.repo, now + reset);
                        }
                        ("written", "commit status written")
                    }
                    Sent::AlreadyThere => (
                        "reconciled",
                        "read back: the commit status is already on top; not written again",
                    ),
                };
                self.metrics.status(provider, u.status.state, result_label);
                self.metrics
                    .delivery_seconds
                    .observe(now.saturating_duration_since(lease.accepted_at).as_secs_f64());
                info!(provider, repo = %u.repo, sha = %u.status.sha, check = %u.status.check,
                    state = %u.status.state, attempt = lease.attempt, "{message}");
                Completion::Written
            }
            Err(Failed { error: e, .. }) if e.retry == Retry::Permanent => {
                self.metrics.status(provider, u.status.state, "dropped");
                error!(provider, repo = %u.repo, sha = %u.status.sha, check = %u.status.check,
                    state = %u.status.state, http_status = e.status, reason = e.reason.as_str(),
                    error = %e.message, "provider rejected commit status; not retrying");
                Completion::Dropped
            }
            Err(Failed { error: e, wrote }) => {
                let backoff = backoff::delay(lease.attempt, self.cfg.initial_backoff, self.cfg.max_backoff);
                let delay = match (e.retry, e.retry_after) {
                    (_, Some(asked)) => asked.min(Duration::from_secs(3600)),
                    (Retry::RateLimited, None) => backoff.max(self.cfg.rate_limit_wait),
                    _ => backoff,
                };
                if e.retry == Retry::RateLimited {
                    self.pause(&u.repo, now + delay);
                }
                self.metrics
                    .retries
                    .get_or_create(&ProviderLabels {
                        provider,
                        reason: e.reason.as_str(),
                    })
                    .inc();
                if wrote && e.may_have_landed() {
                    // It may show up on the provider later still, on top of a newer
                    // state written meanwhile, or beside the same state written again.
                    let until = settle_deadline(self.epoch, now, self.cfg.settle_after);
                    self.metrics.status(provider, u.status.state, "in_doubt");
                    warn!(provider, repo = %u.repo, sha = %u.status.sha, check = %u.status.check,
                        state = %u.status.state, http_status = e.status, reason = e.reason.as_str(),
                        error = %e.message, attempt = lease.attempt,
                        read_back_in_ms = until.max(now + delay).saturating_duration_since(now).as_millis() as u64,
                        "commit status write may have been applied; reading it back before writing again");
                    Completion::InDoubt { retry: delay, until }
                } else {
                    let message = if wrote || lease.read_back.is_none() {
                        "commit status write failed; will retry"
                    } else {
                        "reading the commit's statuses back failed; will retry before writing"
                    };
                    warn!(provider, repo = %u.repo, sha = %u.status.sha, check = %u.status.check,
                        http_status = e.status, reason = e.reason.as_str(), error = %e.message,
                        attempt = lease.attempt, retry_in_ms = delay.as_millis() as u64, "{message}");
                    Completion::Retry(delay)
                }
            }
        };
        let key = lease.update.key();
        let mut outbox = lock(&self.outbox);
        let done = outbox.complete(&lease, completion.clone(), now);
        let mut ops = Vec::new();
        if let Some(seq) = done.written_seq {
            ops.push(Op::Written(lease.update.clone(), seq));
        }
        ops.extend(done.evicted.into_iter().map(Op::Forget));
        if let Some(handle) = returned
            && let Some(forgotten) = outbox.keep_handle(key.clone(), handle.clone())
        {
            ops.push(Op::Handle(key.clone(), Some(handle)));
            ops.extend(forgotten.into_iter().map(|k| Op::Handle(k, None)));
        }
        if done.removed {
            ops.push(Op::Done(key.clone()));
        }
        // A key in doubt keeps its mark, so that a restart reads back before writing.
        if !done.in_doubt {
            ops.push(Op::Landed(key));
        }
        self.persister.submit(&ops);
    }

    fn report_undelivered(&self) -> usize {
        let outbox = lock(&self.outbox);
        let kept = if self.persister.is_durable() {
            "kept in the outbox for the next start"
        } else {
            "lost: running without persistence"
        };
        for u in outbox.pending() {
            warn!(repo = %u.repo, sha = %u.status.sha, check = %u.status.check, state = %u.status.state,
                outcome = kept, "shutdown: commit status not delivered");
        }
        outbox.len()
    }
}

/// One write: wait for the in-flight mark to be durable, read back first when an
/// earlier attempt (of this run or a previous one) may have landed, then write.
async fn send(
    delivery: &Delivery,
    notifier: &dyn Notifier,
    lease: &Lease,
    marked: store::Durable,
) -> Result<Sent, Failed> {
    let (repo, status) = (&lease.update.repo, &lease.update.status);
    if let Err(e) = marked.wait().await {
        return Err(Failed {
            error: NotifyError {
                provider: "store",
                retry: Retry::Transient,
                reason: Reason::UnexpectedResponse,
                status: None,
                message: format!("cannot record the write as under way: {e}"),
                retry_after: None,
            },
            wrote: false,
        });
    }
    if let Some(after) = lease.read_back {
        let listed = delivery
            .listings
            .at_or_after(repo, &status.sha, after, || {
                delivery.spend(repo, false);
                delivery
                    .metrics
                    .read_backs
                    .get_or_create(&crate::metrics::ProviderOnly {
                        provider: notifier.name(),
                    })
                    .inc();
                notifier.list_statuses(&status.sha)
            })
            .await;
        match listed {
            Ok(listing) => {
                let top = listing.top(&status.check);
                if top == Some(notifier.reads_back_as(status.state)) {
                    return Ok(Sent::AlreadyThere);
                }
                info!(
                    on_top = top.map(|s| s.as_str()).unwrap_or("none"),
                    "read back: the newest state is not on top; writing it"
                );
            }
            // A credential that may write but not read: better a status twice than none.
            Err(e) if e.retry == Retry::Permanent => {
                warn!(http_status = e.status, reason = e.reason.as_str(), error = %e.message,
                    "cannot read the commit's statuses back; writing without knowing what is on top");
            }
            Err(error) => return Err(Failed { error, wrote: false }),
        }
        delivery.spend(repo, true);
    }
    notifier
        .write(status, lease.handle.as_ref())
        .await
        .map(Sent::Written)
        .map_err(|error| Failed { error, wrote: true })
}

/// When a write of unknown outcome sent before `now` can no longer land: at least
/// `settle` later, rounded up to a grid, so that the checks of one commit failing
/// close together come due for their read-back together and share one listing.
fn settle_deadline(epoch: Instant, now: Instant, settle: Duration) -> Instant {
    let grid = (settle / 8)
        .clamp(Duration::from_millis(100), Duration::from_secs(5))
        .as_nanos();
    let since = (now + settle).saturating_duration_since(epoch).as_nanos();
    let rounded = since.div_ceil(grid) * grid;
    epoch + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_close_together_settle_together() {
        let epoch = Instant::now();
        let settle = Duration::from_secs(8);
        let at = |ms| settle_deadline(epoch, epoch + Duration::from_millis(ms), settle);
        for ms in [0, 1, 999, 1000, 1001, 12_345] {
            let now = epoch + Duration::from_millis(ms);
            let until = at(ms);
            assert!(until >= now + settle, "{ms}: never before the grace is over");
            assert!(
                until < now + settle + Duration::from_secs(1),
                "{ms}: a grid of settle/8"
            );
        }
        assert_eq!(at(1), at(999), "one grid cell, one deadline");
        assert_ne!(at(999), at(1001));
    }
}
