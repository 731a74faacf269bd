//! The persister thread: group commit. Submitters frame their changes under the queue
//! lock and wait on the batch they joined ([`Durable`]); the thread writes everything
//! queued since its last write with one fsync, then finishes the batch ([`Ack`]).
//! Dropping an `Ack` unfinished, or the thread ending however it ends ([`Ending`]),
//! fails the waiters rather than leaving them waiting.

use super::StoreError;
use super::codec::{Framed, Op};
use super::compact::compact_prefix;
use super::log::{Damage, Mark, Store};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// What a record buffer starts with, and what it goes back to once a flood grew it
/// beyond `KEPT_BUFFER`: its size is not kept for the quiet after the flood.
const BUFFER: usize = 64 << 10;
const KEPT_BUFFER: usize = 1 << 20;
/// After a commit the disk refused, the persister tries it again this soon, then
/// twice as late each time, up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Changes the disk refused, kept to be written once it takes them. Beyond this the
/// disk has been failing for long: they are dropped (the memory keeps them; a restart
/// before they are written again replays an older state).
const CARRY_MAX: usize = 32 << 20;

type Outcome = Result<(), Arc<StoreError>>;

/// The changes of one commit (or a stop), as their submitters wait for them: one
/// allocation and one wake-up call per commit, not per change.
pub(super) struct Batch {
    outcome: OnceLock<Outcome>,
    done: Notify,
}

impl Batch {
    pub(super) fn new() -> Arc<Batch> {
        Arc::new(Batch {
            outcome: OnceLock::new(),
            done: Notify::new(),
        })
    }
}

/// The persister's side of a batch. Dropped unfinished (the persister ended, or its
/// thread unwound mid-commit), it fails the batch, so no submitter waits forever.
pub(super) struct Ack(pub(super) Arc<Batch>);

impl Ack {
    pub(super) fn finish(self, outcome: Outcome) {
        let _ = self.0.outcome.set(outcome);
        self.0.done.notify_waiters();
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if self.0.outcome.set(Err(stopped())).is_ok() {
            self.0.done.notify_waiters();
        }
    }
}

fn stopped() -> Arc<StoreError> {
    Arc::new(StoreError::Stopped)
}

/// What submitters have queued for the persister thread since it last looked.
#[derive(Default)]
struct Queue {
    /// Framed records, in the order their changes were made, framed by the thread
    /// that made the change. The persister swaps this buffer for its spare, so
    /// queuing a change allocates nothing that another thread must free.
    records: Framed,
    /// Finished once `records` are on disk; `None` while nothing is queued.
    batch: Option<Ack>,
    /// A helper finished rewriting the log up to a mark.
    compacted: Option<(Mark, Result<Mark, StoreError>)>,
    /// Asked to finish what was submitted and any compaction, and to close the store.
    stop: Option<Ack>,
    /// Every `Persister` is gone: finish what was submitted, then end.
    orphaned: bool,
    /// The persister thread is waiting for work (so a submitter must wake it).
    idle: bool,
    /// The persister thread has ended: later changes fail at once.
    ended: bool,
}

impl Queue {
    /// Asked to stop, or left without any `Persister` to submit more.
    fn stopping(&self) -> bool {
        self.stop.is_some() || self.orphaned
    }
}

struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the persister if it waits; a busy one looks at the queue anyway.
    fn wake(&self, queue: &Queue) {
        if queue.idle {
            self.work.notify_one();
        }
    }
}

/// What the persister reports, for readiness and metrics.
pub enum StoreEvent<'a> {
    /// A write to the log, or a retry of one the disk refused.
    Committed(&'a Result<(), StoreError>),
    /// Log bytes before and after.
    Compacted(&'a Result<(u64, u64), StoreError>),
    /// Records lost to damage found at opening (reported once, as the persister starts).
    Damaged(Damage),
}

/// Hands changes to the persister thread. Without a store (`--no-persistence`) every
/// change is acknowledged at once.
#[derive(Clone)]
pub struct Persister {
    owner: Option<Arc<Owner>>,
}

/// Shared by the clones of one `Persister`; the last one dropped lets the thread end.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        let mut queue = self.0.queue();
        queue.orphaned = true;
        self.0.wake(&queue);
    }
}

/// Resolves when the changes it stands for are on disk.
pub struct Durable(pub(super) Option<Arc<Batch>>);

impl Durable {
    /// Answered already, with `e`.
    fn failed(e: Arc<StoreError>) -> Durable {
        let batch = Batch::new();
        let _ = batch.outcome.set(Err(e));
        Durable(Some(batch))
    }

    pub async fn wait(self) -> Result<(), Arc<StoreError>> {
        let Some(batch) = self.0 else { return Ok(()) };
        let mut done = std::pin::pin!(batch.done.notified());
        // Registered before looking, so a finish in between still wakes us.
        done.as_mut().enable();
        if batch.outcome.get().is_none() {
            done.await;
        }
        batch.outcome.get().cloned().unwrap_or_else(|| Err(stopped()))
    }
}

impl Persister {
    pub fn in_memory() -> Self {
        Persister { owner: None }
    }

    /// Starts the persister thread; `on_event` sees every commit's and compaction's
    /// outcome. The thread ends once every `Persister` is dropped.
    pub fn start(
        store: Store,
        on_event: impl Fn(StoreEvent<'_>) + Send + 'static,
    ) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
        });
        let thread = shared.clone();
        let path = store.path.clone();
        // The thread logs where its daemon does: a process running several daemons
        // (the tests) gives each its own dispatcher, and a new thread has none.
        let logs = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::Builder::new()
            .name("outbox-store".into())
            .spawn(move || tracing::dispatcher::with_default(&logs, || persist(store, &thread, on_event)))
            .map_err(StoreError::io(&path, "starting the persister thread"))?;
        Ok(Persister {
            owner: Some(Arc::new(Owner(shared))),
        })
    }

    pub fn is_durable(&self) -> bool {
        self.owner.is_some()
    }

    /// Queues changes. Call it while holding the lock under which the state changed,
    /// so the store sees changes in the order memory did.
    pub fn submit(&self, ops: &[Op]) -> Durable {
        match &self.owner {
            None => Durable(None),
            Some(_) if ops.is_empty() => Durable(None),
            Some(owner) => owner.0.enqueue(ops),
        }
    }

    /// Resolves once everything submitted before it is on disk.
    pub async fn flush(&self) -> Result<(), Arc<StoreError>> {
        match &self.owner {
            None => Ok(()),
            Some(owner) => owner.0.enqueue(&[]).wait().await,
        }
    }

    /// Writes everything submitted before it, lets a compaction under way finish,
    /// and closes the store (releasing the state directory). Later changes fail.
    pub async fn stop(&self) -> Result<(), Arc<StoreError>> {
        let Some(owner) = &self.owner else { return Ok(()) };
        let stopped = {
            let mut queue = owner.0.queue();
            if queue.ended {
                Durable::failed(stopped())
            } else {
                let batch = queue.stop.get_or_insert_with(|| Ack(Batch::new())).0.clone();
                owner.0.wake(&queue);
                Durable(Some(batch))
            }
        };
        stopped.wait().await
    }
}

impl Shared {
    /// Adds `ops` to the next commit, all or none.
    fn enqueue(&self, ops: &[Op]) -> Durable {
        let mut queue = self.queue();
        if queue.ended || queue.stop.is_some() {
            return Durable::failed(stopped());
        }
        if let Err(e) = queue.records.push_all(ops) {
            error!(error = %e, "a change could not be stored");
            return Durable::failed(Arc::new(e.into()));
        }
        let batch = queue.batch.get_or_insert_with(|| Ack(Batch::new())).0.clone();
        self.wake(&queue);
        Durable(Some(batch))
    }
}

/// Marks the persister ended however its thread ends, unwinding included, and
/// fails whatever it leaves queued.
struct Ending<'a>(&'a Shared);

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let (batch, stop) = {
            let mut queue = self.0.queue();
            queue.ended = true;
            (queue.batch.take(), queue.stop.take())
        };
        // Outside the lock: dropping them unfinished fails and wakes their waiters.
        drop((batch, stop));
    }
}

/// Changes the disk refused, kept in order to be written before anything newer.
#[derive(Default)]
struct Carried {
    records: Framed,
    /// When to try again, and the wait after that.
    retry: Option<(Instant, Duration)>,
}

impl Carried {
    fn due(&self, now: Instant) -> bool {
        self.retry.is_some_and(|(at, _)| now >= at)
    }

    /// Keeps what a failed write held (`records`, unless they are carried already)
    /// and plans the next try.
    fn refused(&mut self, records: &Framed, now: Instant) {
        if self.records.is_empty() {
            self.records.extend_from(records);
        }
        if self.records.bytes.len() > CARRY_MAX {
            error!(
                records = self.records.count(),
                bytes = self.records.bytes.len(),
                "the state volume has refused writes for long: dropping the changes kept for it; they stay in memory, but a restart before they are written again replays an older state"
            );
            *self = Carried::default();
            return;
        }
        let wait = self.retry.map_or(RETRY_FIRST, |(_, w)| (2 * w).min(RETRY_MAX));
        self.retry = Some((now + wait, wait));
    }
}

/// The persister thread: one write and one fsync for everything queued since the
/// last, and a compaction in a helper thread when the log has grown.
fn persist(mut store: Store, shared: &Arc<Shared>, on_event: impl Fn(StoreEvent<'_>)) {
    let _ending = Ending(shared);
    if let Some(damage) = store.damage.take() {
        on_event(StoreEvent::Damaged(damage));
    }
    let mut compacting = false;
    let mut records = Framed::with_capacity(BUFFER);
    let mut carried = Carried::default();
    loop {
        records.clear();
        let (batch, compacted, stopping, retry) = {
            let mut queue = shared.queue();
            loop {
                // Short of room, a compaction under way gets the room the zeros left
                // first: writes wait for it rather than take that room and fail.
                let hold = compacting && (store.short_of_space || store.refused);
                let retry = carried.due(Instant::now()) && !hold;
                if (queue.batch.is_some() && !hold)
                    || queue.compacted.is_some()
                    || (queue.stopping() && !compacting)
                    || retry
                {
                    break;
                }
                queue.idle = true;
                queue = match carried.retry {
                    Some((at, _)) => {
                        let wait = at.saturating_duration_since(Instant::now());
                        match shared.work.wait_timeout(queue, wait) {
                            Ok((q, _)) => q,
                            Err(p) => p.into_inner().0,
                        }
                    }
                    None => shared.work.wait(queue).unwrap_or_else(|p| p.into_inner()),
                };
                queue.idle = false;
            }
            std::mem::swap(&mut records, &mut queue.records);
            (
                queue.batch.take(),
                queue.compacted.take(),
                queue.stopping(),
                carried.due(Instant::now()),
            )
        };
        let mut room_made = false;
        if let Some((end, result)) = compacted {
            compacting = false;
            // The records just taken are not written yet: they go to the new file.
            let result = result.and_then(|compacted| store.finish_compaction(end, compacted));
            match &result {
                Ok((before, after)) => {
                    room_made = true;
                    info!(before_bytes = before, after_bytes = after, "outbox log compacted")
                }
                Err(e) => {
                    if store.space.found_full() {
                        // Tried again once the log changed, not once it doubled: on a
                        // full volume it would not double.
                        store.short_of_space = true;
                    } else {
                        store.rearm_compaction();
                    }
                    warn!(error = %e, "outbox log compaction failed; the log stays as it is");
                }
            }
            on_event(StoreEvent::Compacted(&result));
        }
        // Changes the disk refused go first, before anything newer; they are tried
        // again with any new batch, when their time comes, once a compaction made
        // room, and before stopping.
        let carry = !carried.records.is_empty();
        let attempt = !records.is_empty() || (carry && (batch.is_some() || retry || room_made || stopping));
        let result = if attempt {
            let framed = if carry {
                carried.records.extend_from(&records);
                &carried.records
            } else {
                &records
            };
            let result = store.append(framed);
            on_event(StoreEvent::Committed(&result));
            match &result {
                Ok(()) => {
                    if carry {
                        info!(
                            records = carried.records.count(),
                            "the changes the state volume refused are written now"
                        );
                        carried = Carried::default();
                    }
                }
                Err(_) => carried.refused(&records, Instant::now()),
            }
            result
        } else {
            Ok(())
        };
        if let Some(batch) = batch {
            batch.finish(result.map_err(Arc::new));
        }
        if records.bytes.capacity() > KEPT_BUFFER {
            records = Framed::with_capacity(BUFFER);
        }
        if stopping {
            if compacting {
                continue;
            }
            break;
        }
        if !compacting && store.wants_compaction() {
            let (dir, end, space) = (store.dir.clone(), store.mark(), store.space.clone());
            if store.short_of_space || store.refused {
                store.release_zeros();
                store.compact_tried = Some((end.len, end.records));
            }
            let _ = space.found_full();
            let helper = shared.clone();
            let logs = tracing::dispatcher::get_default(|d| d.clone());
            let spawned = std::thread::Builder::new()
                .name("outbox-compact".into())
                .spawn(move || {
                    let result =
                        tracing::dispatcher::with_default(&logs, || compact_prefix(&dir, end.len, &space));
                    let mut queue = helper.queue();
                    queue.compacted = Some((end, result));
                    helper.wake(&queue);
                });
            match spawned {
                Ok(_) => compacting = true,
                Err(e) => {
                    store.rearm_compaction();
                    warn!(error = %e, "could not start compacting the outbox log");
                }
            }
        }
    }
    drop(store);
    let unwritten = carried.records.count();
    let stop = {
        let mut queue = shared.queue();
        queue.ended = true;
        queue.stop.take()
    };
    if let Some(ack) = stop {
        ack.finish(if carried.records.is_empty() {
            Ok(())
        } else {
            Err(Arc::new(StoreError::Unwritten { count: unwritten }))
        });
    }
}
