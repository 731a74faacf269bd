//! After a sync: did the workloads it touched roll out? Writes
//! `flux-status/<instance>/workload` on the sync's head commit: `pending` while
//! waiting, then `succeeded`, `failed` as soon as a workload fails, or `failed` at
//! `--poll-timeout`.
//!
//! One poll runs at a time, for the newest sync. A newer sync takes over the older
//! poll's commits, and its outcome resolves them too ("… (as part of <sha>)"), so no
//! commit is left pending. The poll is saved in the state store and resumed after a
//! restart.

use super::workloads::{Workload, Workloads};
use crate::delivery::Delivery;
use crate::delivery::store::millis;
use crate::deployments::Deployments;
use crate::fluxv1::judge::{self as judge, Verdict};
use crate::metrics::Metrics;
use crate::update::{Deploy, RepoId, StatusUpdate};
use notifiers::{CommitStatus, Sha, State};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Commits a poll resolves besides its own head; older ones are resolved at once.
const MAX_SUPERSEDED: usize = 50;
/// Syncs waiting for the poller; fluxd sends one per sync interval.
const QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub repo: RepoId,
    pub instance: String,
    pub target_url: Option<String>,
    pub interval: Duration,
    /// `None`: wait until the workloads settle or a newer sync takes over.
    pub timeout: Option<Duration>,
    /// `--deployments`: a rollout's outcome decides its commit's deployment.
    pub deployments: Option<Arc<Deployments>>,
}

/// A sync whose workloads are to be checked.
#[derive(Debug, Clone)]
pub struct SyncDone {
    pub head: Sha,
    pub service_ids: Vec<String>,
}

/// Ingest's end: hands syncs to the poller without waiting.
#[derive(Clone)]
pub struct PollHandle {
    tx: mpsc::Sender<SyncDone>,
}

impl PollHandle {
    pub fn sync_done(&self, sync: SyncDone) {
        if let Err(e) = self.tx.try_send(sync) {
            warn!(error = %e, "workload poller is behind; this sync's workloads are not checked");
        }
    }
}

/// The poll as saved in the state store.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    head: String,
    service_ids: Vec<String>,
    superseded: Vec<String>,
    started_ms: u64,
    deadline_ms: Option<u64>,
}

struct Poll {
    head: Sha,
    service_ids: Vec<String>,
    /// Older syncs' commits this poll decides for.
    superseded: Vec<Sha>,
    started: SystemTime,
    deadline: Option<SystemTime>,
    looks: u32,
    /// The pending description last posted.
    posted: Option<String>,
    not_ready: Vec<String>,
    last_error: Option<String>,
    /// The workloads in scope at the last look, for the check run's summary (not
    /// saved: a resumed poll has them again after its first look).
    in_scope: Option<Vec<Workload>>,
}

impl Poll {
    fn new(
        head: Sha,
        service_ids: Vec<String>,
        superseded: Vec<Sha>,
        started: SystemTime,
        deadline: Option<SystemTime>,
    ) -> Poll {
        Poll {
            head,
            service_ids,
            superseded,
            started,
            deadline,
            looks: 0,
            posted: None,
            not_ready: Vec::new(),
            in_scope: None,
            last_error: None,
        }
    }

    fn save(&self) -> Vec<u8> {
        serde_json::to_vec(&Saved {
            head: self.head.to_string(),
            service_ids: self.service_ids.clone(),
            superseded: self.superseded.iter().map(Sha::to_string).collect(),
            started_ms: millis(self.started),
            deadline_ms: self.deadline.map(millis),
        })
        .unwrap_or_default()
    }

    fn restore(bytes: &[u8]) -> Option<Poll> {
        let s: Saved = serde_json::from_slice(bytes).ok()?;
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        Some(Poll::new(
            Sha::parse(&s.head).ok()?,
            s.service_ids,
            s.superseded.iter().filter_map(|s| Sha::parse(s).ok()).collect(),
            at(s.started_ms),
            s.deadline_ms.map(at),
        ))
    }
}

enum Look {
    Continue,
    Done(Outcome, String),
}

/// How a poll ended; the state written and the metric label follow from it.
#[derive(Clone, Copy)]
enum Outcome {
    Ready,
    Failed,
    TimedOut,
}

impl Outcome {
    fn state(self) -> State {
        match self {
            Outcome::Ready => State::Succeeded,
            Outcome::Failed | Outcome::TimedOut => State::Failed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Ready => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
        }
    }
}

pub struct Poller {
    cfg: PollerConfig,
    workloads: Workloads,
    delivery: Arc<Delivery>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Poller {
    /// Starts the poller task, resuming a poll a previous run saved.
    pub fn start(
        cfg: PollerConfig,
        workloads: Workloads,
        delivery: Arc<Delivery>,
        metrics: Arc<Metrics>,
        saved: Option<Vec<u8>>,
        stop: CancellationToken,
    ) -> (PollHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let resumed = saved.as_deref().and_then(Poll::restore);
        if let Some(p) = &resumed {
            info!(sha = %p.head, superseded = p.superseded.len(), "resuming the workload poll of the previous run");
        }
        let poller = Poller {
            cfg,
            workloads,
            delivery,
            metrics,
            stop,
        };
        let task = tokio::spawn(poller.run(rx, resumed));
        (PollHandle { tx }, task)
    }

    async fn run(self, mut rx: mpsc::Receiver<SyncDone>, mut active: Option<Poll>) {
        let mut next_look = Instant::now();
        self.metrics
            .workload_polls_active
            .set(i64::from(active.is_some()));
        'run: loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                sync = rx.recv() => {
                    let Some(sync) = sync else { break };
                    if active.as_ref().is_some_and(|p| p.head == sync.head) {
                        debug!(sha = %sync.head, "sync of the commit already being polled");
                        continue;
                    }
                    active = Some(self.begin(sync, active.take()).await);
                    next_look = Instant::now();
                }
                _ = tokio::time::sleep_until(next_look.into()), if active.is_some() => {
                    let Some(poll) = active.as_mut() else { continue };
                    let look = tokio::select! {
                        look = self.look(poll) => look,
                        _ = self.stop.cancelled() => break 'run,
                    };
                    match look {
                        Look::Continue => {
                            // The next look, or the deadline if that comes first.
                            let interval = self.cfg.interval;
                            let left = poll.deadline.and_then(|d| d.duration_since(SystemTime::now()).ok());
                            next_look = Instant::now() + left.map_or(interval, |l| l.min(interval));
                        }
                        Look::Done(outcome, description) => {
                            self.finish(poll, outcome, description).await;
                            active = None;
                            self.delivery.save_poll(None).await;
                        }
                    }
                }
            }
            self.metrics
                .workload_polls_active
                .set(i64::from(active.is_some()));
        }
        if let Some(p) = active {
            info!(sha = %p.head, "stopping with a workload poll under way; it resumes on the next start");
        }
    }

    /// Starts polling for `sync`, taking over the commits of the poll it supersedes.
    async fn begin(&self, sync: SyncDone, older: Option<Poll>) -> Poll {
        let mut superseded = Vec::new();
        if let Some(older) = older {
            self.metrics.workload_poll("superseded");
            info!(sha = %older.head, by = %sync.head, "workload poll superseded by a newer sync; its outcome will decide this commit too");
            superseded = older.superseded;
            superseded.push(older.head);
        }
        superseded.retain(|s| *s != sync.head);
        if superseded.len() > MAX_SUPERSEDED {
            let overflow: Vec<Sha> = superseded.drain(..superseded.len() - MAX_SUPERSEDED).collect();
            let description = format!(
                "superseded by {} before its workloads were checked",
                sync.head.short()
            );
            let updates = overflow
                .into_iter()
                .map(|sha| self.update(sha, State::Canceled, description.clone(), None))
                .collect();
            self.post(updates).await;
        }
        let started = SystemTime::now();
        let deadline = self.cfg.timeout.map(|t| started + t);
        let poll = Poll::new(sync.head, sync.service_ids, superseded, started, deadline);
        self.delivery.save_poll(Some(poll.save())).await;
        poll
    }

    /// Lists the workloads once and judges them.
    async fn look(&self, poll: &mut Poll) -> Look {
        poll.looks += 1;
        let mut waiting = None;
        match self.workloads.list().await {
            Ok((list, transport)) => {
                poll.last_error = None;
                let a = judge::assess(&poll.service_ids, &list);
                poll.in_scope = Some(
                    judge::scope(&poll.service_ids, &list)
                        .1
                        .into_iter()
                        .cloned()
                        .collect(),
                );
                debug!(sha = %poll.head, transport = transport.as_str(), listed = list.len(),
                    in_scope = a.scope.len(), basis = ?a.basis, verdict = ?a.verdict, "workloads listed");
                match a.verdict {
                    Verdict::Failed { id, detail } => {
                        return Look::Done(Outcome::Failed, judge::failed_description(&id, &detail));
                    }
                    // Right after a sync a Deployment can still show the previous
                    // rollout's status, until its controller sees the new generation:
                    // success needs a second look, one interval later.
                    Verdict::Ready if poll.looks > 1 => {
                        return Look::Done(Outcome::Ready, judge::ready_description(a.scope.len()));
                    }
                    Verdict::Ready => poll.not_ready.clear(),
                    Verdict::Waiting { not_ready } => poll.not_ready = not_ready,
                }
                waiting = Some(a.scope.len());
            }
            Err(e) => {
                warn!(sha = %poll.head, reason = e.label(), error = %e,
                    "listing fluxd's workloads failed; trying again next interval");
                poll.last_error = Some(e.to_string());
            }
        }
        if let Some(deadline) = poll.deadline
            && SystemTime::now() >= deadline
        {
            let after = deadline
                .duration_since(poll.started)
                .unwrap_or_default()
                .as_secs();
            return Look::Done(
                Outcome::TimedOut,
                judge::timeout_description(after, &poll.not_ready, poll.last_error.as_deref()),
            );
        }
        let description = judge::waiting_description(waiting);
        // Pending is posted once, and again when the count changes (a HelmRelease's
        // Deployment appears); a failed look does not replace "waiting for N".
        let repost = match &poll.posted {
            None => true,
            Some(before) => waiting.is_some() && *before != description,
        };
        if repost {
            let summary = self.summary(poll, &description);
            self.post(vec![self.update(
                poll.head.clone(),
                State::Pending,
                description.clone(),
                summary,
            )])
            .await;
            poll.posted = Some(description);
        }
        Look::Continue
    }

    async fn finish(&self, poll: &Poll, outcome: Outcome, description: String) {
        let state = outcome.state();
        self.metrics.workload_poll(outcome.label());
        let elapsed = SystemTime::now().duration_since(poll.started).unwrap_or_default();
        info!(sha = %poll.head, state = %state, description = %description, superseded = poll.superseded.len(),
            seconds = elapsed.as_secs_f64(), "workload poll finished");
        let short = poll.head.short();
        let summary = self.summary(poll, &description);
        let mut updates = vec![self.update(poll.head.clone(), state, description.clone(), summary.clone())];
        updates.extend(poll.superseded.iter().map(|sha| {
            self.update(
                sha.clone(),
                state,
                judge::as_part_of(&description, short),
                summary.clone(),
            )
        }));
        self.post(updates).await;
    }

    /// The workloads of the last look as a check run's summary.
    fn summary(&self, poll: &Poll, description: &str) -> Option<String> {
        let scope: Vec<&Workload> = poll.in_scope.as_ref()?.iter().collect();
        Some(super::report::workload_summary(
            &self.cfg.instance,
            poll.head.as_str(),
            description,
            &scope,
        ))
    }

    fn update(&self, sha: Sha, state: State, description: String, summary: Option<String>) -> StatusUpdate {
        StatusUpdate {
            deploy: Some(Deploy::Rollout {
                part: crate::fluxv1::map::sync_check(&self.cfg.instance),
                state,
            }),
            repo: self.cfg.repo.clone(),
            status: CommitStatus {
                sha,
                check: judge::workload_check(&self.cfg.instance),
                state,
                description,
                target_url: self.cfg.target_url.clone(),
                summary,
                git_ref: None,
            },
        }
    }

    /// Queues statuses, retrying while the outbox is full or the store failing: a
    /// workload status is never dropped for want of room.
    async fn post(&self, mut updates: Vec<StatusUpdate>) {
        if let Some(d) = &self.cfg.deployments {
            d.add(&mut updates);
        }
        loop {
            match self.delivery.accept(updates.clone()).await {
                Ok(_) => return,
                // Trying again cannot make it fit (logged where it was refused).
                Err(crate::delivery::AcceptError::TooLarge(_)) => return,
                Err(e) => {
                    warn!(error = %e, "workload status not queued; trying again in 1s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.stop.cancelled() => return,
                    }
                }
            }
        }
    }
}
