//! The durable side of the outbox: pending updates, which writes were under way,
//! and what was last written per check, in one redb file under `--state-dir`.
//!
//! Every change goes through one persister task that applies all changes queued
//! since its last commit in a single transaction (group commit): under load one
//! fsync covers many events, so durability does not cap throughput.

use crate::update::{Key, StatusUpdate};
use notifiers::{Check, CommitStatus, Sha, State};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

const PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending");
const IN_FLIGHT: TableDefinition<&[u8], ()> = TableDefinition::new("in_flight");
const WRITTEN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("written");
/// The Flux v1 workload poll under way, if any (one record).
const POLL: TableDefinition<&str, &[u8]> = TableDefinition::new("poll");
const POLL_KEY: &str = "fluxv1";
const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Most changes one transaction applies; bounds commit latency under a flood.
const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("state store {path}: {message}")]
pub struct StoreError {
    pub path: PathBuf,
    pub message: String,
}

/// One change to the durable state.
#[derive(Debug, Clone)]
pub enum Op {
    /// Pending (new or replacing the older state of the same check).
    Pending(StatusUpdate, SystemTime),
    /// No longer pending: written, dropped, or found already written.
    Done(Key),
    /// A write is about to be sent; if we die now, check before sending again.
    InFlight(Key),
    /// The provider answered; the in-flight mark is no longer needed.
    Landed(Key),
    /// Remember what was written, for dedup after a restart.
    Written(StatusUpdate, u64),
    /// Forget an old written state (the memory is bounded).
    Forget(Key),
    /// The workload poll under way (its own encoding), or none.
    Poll(Option<Vec<u8>>),
}

#[derive(Serialize, Deserialize)]
struct KeyRecord<'a> {
    repo: &'a str,
    sha: &'a str,
    check: &'a str,
}

#[derive(Serialize, Deserialize)]
struct UpdateRecord {
    repo: String,
    sha: String,
    check: String,
    state: State,
    description: String,
    target_url: Option<String>,
    /// Milliseconds since the epoch: when accepted (pending) or the write order (written).
    at: u64,
}

fn key_bytes(k: &Key) -> Vec<u8> {
    serde_json::to_vec(&KeyRecord {
        repo: &k.repo,
        sha: k.sha.as_str(),
        check: k.check.as_str(),
    })
    .unwrap_or_default()
}

fn record(u: &StatusUpdate, at: u64) -> Vec<u8> {
    serde_json::to_vec(&UpdateRecord {
        repo: u.repo.to_string(),
        sha: u.status.sha.to_string(),
        check: u.status.check.to_string(),
        state: u.status.state,
        description: u.status.description.clone(),
        target_url: u.status.target_url.clone(),
        at,
    })
    .unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Option<(StatusUpdate, u64)> {
    let r: UpdateRecord = serde_json::from_slice(bytes).ok()?;
    Some((
        StatusUpdate {
            repo: r.repo.into(),
            status: CommitStatus {
                sha: Sha::parse(&r.sha).ok()?,
                check: Check::new(r.check),
                state: r.state,
                description: r.description,
                target_url: r.target_url,
            },
        },
        r.at,
    ))
}

pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// What a previous run left behind.
#[derive(Default)]
pub struct Recovered {
    pub pending: Vec<(StatusUpdate, SystemTime)>,
    /// Writes that were under way when the previous run stopped.
    pub in_flight: Vec<Key>,
    /// Oldest first.
    pub written: Vec<(StatusUpdate, u64)>,
    /// The workload poll that was under way.
    pub poll: Option<Vec<u8>>,
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<(Store, Recovered), StoreError> {
        let path = dir.join("outbox.redb");
        let err = |e: &dyn std::fmt::Display| StoreError {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        // A small page cache: the outbox is written far more than it is read, and a
        // sidecar's memory budget is tens of MiB.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| err(&e))?;
        // Create the tables, so a fresh store reads back as empty.
        let txn = db.begin_write().map_err(|e| err(&e))?;
        {
            txn.open_table(PENDING).map_err(|e| err(&e))?;
            txn.open_table(IN_FLIGHT).map_err(|e| err(&e))?;
            txn.open_table(WRITTEN).map_err(|e| err(&e))?;
            txn.open_table(POLL).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))?;

        let mut rec = Recovered::default();
        let read = db.begin_read().map_err(|e| err(&e))?;
        let pending = read.open_table(PENDING).map_err(|e| err(&e))?;
        for item in pending.iter().map_err(|e| err(&e))? {
            let (_, v) = item.map_err(|e| err(&e))?;
            if let Some((u, at)) = decode(v.value()) {
                rec.pending.push((u, UNIX_EPOCH + Duration::from_millis(at)));
            }
        }
        let in_flight = read.open_table(IN_FLIGHT).map_err(|e| err(&e))?;
        for item in in_flight.iter().map_err(|e| err(&e))? {
            let (k, _) = item.map_err(|e| err(&e))?;
            if let Ok(r) = serde_json::from_slice::<KeyRecord>(k.value())
                && let Ok(sha) = Sha::parse(r.sha)
            {
                rec.in_flight.push(Key {
                    repo: r.repo.into(),
                    sha,
                    check: Check::new(r.check),
                });
            }
        }
        let written = read.open_table(WRITTEN).map_err(|e| err(&e))?;
        for item in written.iter().map_err(|e| err(&e))? {
            let (_, v) = item.map_err(|e| err(&e))?;
            if let Some(w) = decode(v.value()) {
                rec.written.push(w);
            }
        }
        rec.written.sort_by_key(|(_, seq)| *seq);
        rec.pending.sort_by_key(|(_, at)| *at);
        let poll = read.open_table(POLL).map_err(|e| err(&e))?;
        rec.poll = poll
            .get(POLL_KEY)
            .map_err(|e| err(&e))?
            .map(|v| v.value().to_vec());
        drop((pending, in_flight, written, poll, read));
        Ok((Store { db, path }, rec))
    }

    /// Applies `ops` in order, in one durable transaction.
    pub fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut pending = txn.open_table(PENDING).map_err(|e| err(&e))?;
            let mut in_flight = txn.open_table(IN_FLIGHT).map_err(|e| err(&e))?;
            let mut written = txn.open_table(WRITTEN).map_err(|e| err(&e))?;
            let mut poll = txn.open_table(POLL).map_err(|e| err(&e))?;
            for op in ops {
                match op {
                    Op::Pending(u, at) => {
                        { pending.insert(key_bytes(&u.key()).as_slice(), record(u, millis(*at)).as_slice()) }
                            .map(drop)
                    }
                    Op::Done(k) => pending.remove(key_bytes(k).as_slice()).map(drop),
                    Op::InFlight(k) => in_flight.insert(key_bytes(k).as_slice(), ()).map(drop),
                    Op::Landed(k) => in_flight.remove(key_bytes(k).as_slice()).map(drop),
                    Op::Written(u, seq) => written
                        .insert(key_bytes(&u.key()).as_slice(), record(u, *seq).as_slice())
                        .map(drop),
                    Op::Forget(k) => written.remove(key_bytes(k).as_slice()).map(drop),
                    Op::Poll(Some(p)) => poll.insert(POLL_KEY, p.as_slice()).map(drop),
                    Op::Poll(None) => poll.remove(POLL_KEY).map(drop),
                }
                .map_err(|e| err(&e))?;
            }
        }
        txn.commit().map_err(|e| err(&e))
    }
}

type Ack = oneshot::Sender<Result<(), Arc<StoreError>>>;

/// Hands changes to the persister task. Without a store (`--no-persistence`) every
/// change is acknowledged at once.
#[derive(Clone)]
pub struct Persister {
    tx: Option<mpsc::UnboundedSender<(Vec<Op>, Option<Ack>)>>,
}

/// Resolves when the changes it stands for are on disk.
pub struct Durable(Option<oneshot::Receiver<Result<(), Arc<StoreError>>>>);

impl Durable {
    pub async fn wait(self) -> Result<(), Arc<StoreError>> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or_else(|_| {
                Err(Arc::new(StoreError {
                    path: PathBuf::new(),
                    message: "persister stopped".into(),
                }))
            }),
        }
    }
}

impl Persister {
    pub fn in_memory() -> Self {
        Persister { tx: None }
    }

    /// Starts the persister task; `on_result` sees every commit's outcome (for
    /// readiness and metrics).
    pub fn start(
        store: Store,
        on_result: impl Fn(&Result<(), StoreError>, usize) + Send + Sync + 'static,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<Op>, Option<Ack>)>();
        let store = Arc::new(store);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut ops = first.0;
                let mut acks: Vec<Ack> = first.1.into_iter().collect();
                while ops.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok((more, ack)) => {
                            ops.extend(more);
                            acks.extend(ack);
                        }
                        Err(_) => break,
                    }
                }
                let store = store.clone();
                let n = ops.len();
                let result = tokio::task::spawn_blocking(move || store.apply(&ops))
                    .await
                    .unwrap_or_else(|e| {
                        Err(StoreError {
                            path: PathBuf::new(),
                            message: format!("persister panicked: {e}"),
                        })
                    });
                on_result(&result, n);
                let shared = result.map_err(Arc::new);
                for ack in acks {
                    let _ = ack.send(shared.clone());
                }
            }
        });
        Persister { tx: Some(tx) }
    }

    pub fn is_durable(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues changes. Call it while holding the lock under which the state changed,
    /// so the store sees changes in the order memory did.
    pub fn submit(&self, ops: Vec<Op>) -> Durable {
        match &self.tx {
            None => Durable(None),
            Some(_) if ops.is_empty() => Durable(None),
            Some(tx) => {
                let (ack, rx) = oneshot::channel();
                if tx.send((ops, Some(ack))).is_err() {
                    return Durable(Some(closed()));
                }
                Durable(Some(rx))
            }
        }
    }
}

fn closed() -> oneshot::Receiver<Result<(), Arc<StoreError>>> {
    let (tx, rx) = oneshot::channel();
    drop(tx);
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(c: char, state: State) -> StatusUpdate {
        StatusUpdate {
            repo: "github.com/o/r".into(),
            status: CommitStatus {
                sha: Sha::parse(&c.to_string().repeat(40)).unwrap(),
                check: Check::new("flux-status/dev/sync"),
                state,
                description: "d".into(),
                target_url: None,
            },
        }
    }

    #[test]
    fn state_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("flux-status-store-{}-{}", std::process::id(), line!()));
        let _ = std::fs::remove_dir_all(&dir);
        let t0 = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        {
            let (store, rec) = Store::open(&dir).unwrap();
            assert!(rec.pending.is_empty() && rec.written.is_empty() && rec.in_flight.is_empty());
            let (a, b, c) = (
                update('a', State::Pending),
                update('b', State::Succeeded),
                update('c', State::Failed),
            );
            store
                .apply(&[
                    Op::Pending(a.clone(), t0),
                    Op::Pending(b.clone(), t0),
                    Op::Pending(update('a', State::Succeeded), t0),
                    Op::InFlight(a.key()),
                    Op::Pending(c.clone(), t0),
                    Op::Done(c.key()),
                    Op::Written(c.clone(), 7),
                    Op::Written(b.clone(), 3),
                    Op::Forget(b.key()),
                ])
                .unwrap();
        }
        let (_, rec) = Store::open(&dir).unwrap();
        let mut pending: Vec<_> = rec
            .pending
            .iter()
            .map(|(u, at)| (u.status.sha.short().to_string(), u.status.state, *at))
            .collect();
        pending.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            pending,
            vec![
                ("aaaaaaa".into(), State::Succeeded, t0),
                ("bbbbbbb".into(), State::Succeeded, t0)
            ]
        );
        assert_eq!(rec.in_flight, vec![update('a', State::Pending).key()]);
        assert_eq!(rec.written.len(), 1);
        assert_eq!(rec.written[0].0, update('c', State::Failed));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
