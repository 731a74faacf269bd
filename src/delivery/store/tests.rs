//! The store end to end: state round trips, writes cut short, compaction, the persister.

use super::codec::{HEADER, MAGIC, frame, record};
use super::compact::compact_prefix;
use super::log::{COMPACTING, LOG, Store};
use super::persister::{Ack, Batch, Durable, Persister, StoreEvent};
use super::replay::{Live, Recovered, replay};
use super::space::Space;
use super::{Op, StoreError};
use crate::update::StatusUpdate;
use notifiers::{Check, CommitStatus, Handle, Sha, State};
use proptest::prelude::*;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) fn update(c: char, check: &str, state: State) -> StatusUpdate {
    StatusUpdate {
        deploy: None,
        repo: "github.com/o/r".into(),
        status: CommitStatus {
            sha: Sha::parse(&c.to_string().repeat(40)).unwrap(),
            check: Check::new(check),
            state,
            description: format!("{state} on {c}"),
            target_url: (c == 'b').then(|| "https://ci.example/b".to_string()),
            summary: None,
            git_ref: None,
        },
    }
}

pub(super) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flux-status-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A comparable form of what a store holds.
pub(super) type Snapshot = (
    Vec<(StatusUpdate, SystemTime)>,
    Vec<String>,
    Vec<(StatusUpdate, u64)>,
    Option<Vec<u8>>,
    Vec<(String, Handle)>,
);

pub(super) fn snapshot(rec: Recovered) -> Snapshot {
    let mut in_flight: Vec<String> = rec
        .in_flight
        .iter()
        .map(|k| format!("{}/{}/{}", k.repo, k.sha, k.check))
        .collect();
    in_flight.sort();
    // Sequence numbers are unique in use; the generated ones may repeat.
    let mut written = rec.written;
    written.sort_by_key(|(u, seq)| (*seq, u.status.sha.to_string(), u.status.check.to_string()));
    let handles = rec
        .handles
        .into_iter()
        .map(|(k, h)| (format!("{}/{}/{}", k.repo, k.sha, k.check), h))
        .collect();
    (rec.pending, in_flight, written, rec.poll, handles)
}

/// What the ops leave, by the model: replaying them in memory.
pub(super) fn model(ops: &[Op]) -> Snapshot {
    let mut live = Live::default();
    for op in ops {
        live.apply(op.clone());
    }
    snapshot(live.into_recovered())
}

/// `rounds` rounds of a delivery's changes over the same 20 checks: the log grows,
/// what counts does not.
pub(super) fn deliveries(from: u64, rounds: u64) -> Vec<Op> {
    let mut ops = Vec::new();
    for i in from..from + rounds {
        let mut u = update(
            'a',
            "x",
            if i % 3 == 0 {
                State::Pending
            } else {
                State::Succeeded
            },
        );
        u.status.sha = Sha::parse(&format!("{:040x}", i % 20)).unwrap();
        ops.extend([
            Op::Pending(u.clone(), t(i)),
            Op::InFlight(u.key()),
            Op::Written(u.clone(), i),
            Op::Done(u.key()),
            Op::Landed(u.key()),
        ]);
    }
    ops
}

pub(super) fn reopen(dir: &Path) -> Snapshot {
    // A test that spawns a process (the tmpfs test runs `mount`) lends the child, until
    // it execs, every open file description of this process, a store's lock among them:
    // a store just closed can then look locked for a moment. The daemon spawns nothing.
    for _ in 0..50 {
        match Store::open(dir) {
            Err(StoreError::Locked { .. }) => std::thread::sleep(Duration::from_millis(20)),
            opened => return snapshot(opened.unwrap().1),
        }
    }
    panic!("{} stayed locked", dir.display())
}

pub(super) fn t(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
}

pub(super) fn sample_ops() -> Vec<Op> {
    let (a, b, c) = (
        update('a', "x", State::Pending),
        update('b', "x", State::Succeeded),
        update('c', "x", State::Failed),
    );
    vec![
        Op::Pending(a.clone(), t(1)),
        Op::Pending(b.clone(), t(2)),
        Op::Pending(update('a', "x", State::Succeeded), t(3)),
        Op::InFlight(a.key()),
        Op::Pending(c.clone(), t(4)),
        Op::Done(c.key()),
        Op::Written(c.clone(), 7),
        Op::Written(b.clone(), 3),
        Op::Forget(b.key()),
        Op::Poll(Some(b"{\"poll\":1}".to_vec())),
        Op::Handle(a.key(), Handle::new("run-1")),
        Op::Handle(c.key(), Handle::new("run-2")),
        Op::Handle(a.key(), Handle::new("run-3")),
        Op::Handle(b.key(), Handle::new("run-4")),
        Op::Handle(c.key(), None),
    ]
}

#[test]
fn state_survives_reopening() {
    let dir = temp_dir("reopen");
    {
        let (mut store, rec) = Store::open(&dir).unwrap();
        assert!(rec.pending.is_empty() && rec.written.is_empty() && rec.in_flight.is_empty());
        store.apply(&sample_ops()[..4]).unwrap();
        store.apply(&sample_ops()[4..]).unwrap();
    }
    let rec = Store::open(&dir).unwrap().1;
    let pending: Vec<_> = rec
        .pending
        .iter()
        .map(|(u, at)| (u.status.sha.short().to_string(), u.status.state, *at))
        .collect();
    // In the order of their latest acceptance.
    assert_eq!(
        pending,
        vec![
            ("bbbbbbb".into(), State::Succeeded, t(2)),
            ("aaaaaaa".into(), State::Succeeded, t(3))
        ]
    );
    assert_eq!(rec.in_flight, vec![update('a', "x", State::Pending).key()]);
    assert_eq!(rec.written, vec![(update('c', "x", State::Failed), 7)]);
    assert_eq!(rec.poll.as_deref(), Some(&b"{\"poll\":1}"[..]));
    // In the order they were last set; a cleared one is gone.
    assert_eq!(
        rec.handles,
        vec![
            (
                update('a', "x", State::Pending).key(),
                Handle::new("run-3").unwrap()
            ),
            (
                update('b', "x", State::Pending).key(),
                Handle::new("run-4").unwrap()
            ),
        ]
    );
    assert_eq!(snapshot(rec), model(&sample_ops()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_write_cut_short_by_a_crash_is_cut_off_and_appends_go_on() {
    let ops = sample_ops();
    let mut last = Vec::new();
    frame(
        &record(&Op::Done(update('a', "x", State::Pending).key())),
        &mut last,
    )
    .unwrap();
    // Each way a crash can leave the end of the file: a header cut short, a
    // payload cut short, a header whose payload never reached the disk (zeros),
    // and a payload not matching its checksum.
    let mut flipped = last.clone();
    let n = flipped.len();
    flipped[n - 1] ^= 0x55;
    let mut zeros = last[..HEADER].to_vec();
    zeros.resize(last.len(), 0);
    for (name, tail) in [
        ("header", last[..5].to_vec()),
        ("payload", last[..last.len() - 3].to_vec()),
        ("zeros", zeros),
        ("checksum", flipped),
    ] {
        let dir = temp_dir(&format!("torn-{name}"));
        let whole = {
            let (mut store, _) = Store::open(&dir).unwrap();
            store.apply(&ops).unwrap();
            store.len
        };
        let log = dir.join(LOG);
        // Where the next record would have gone (the file runs ahead, in zeros).
        let f = OpenOptions::new().write(true).open(&log).unwrap();
        f.write_all_at(&tail, whole).unwrap();
        drop(f);

        assert_eq!(reopen(&dir), model(&ops), "{name}: the torn record is ignored");
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            whole,
            "{name}: and cut off"
        );
        let more = Op::Pending(update('d', "x", State::Pending), t(9));
        Store::open(&dir)
            .unwrap()
            .0
            .apply(std::slice::from_ref(&more))
            .unwrap();
        let mut all = ops.clone();
        all.push(more);
        assert_eq!(reopen(&dir), model(&all), "{name}: later appends read back");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_file_that_is_not_an_outbox_log_is_refused() {
    let dir = temp_dir("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(LOG), b"SQLite format 3\0 and more bytes").unwrap();
    let e = Store::open(&dir).err().expect("refused");
    assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
    assert!(e.to_string().contains("not a flux-status outbox log"), "{e}");
    assert_eq!(
        std::fs::read(dir.join(LOG)).unwrap(),
        b"SQLite format 3\0 and more bytes",
        "left untouched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_process_at_a_time_per_state_directory() {
    let dir = temp_dir("lock");
    let (first, _) = Store::open(&dir).unwrap();
    let e = Store::open(&dir).err().expect("second open refused");
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("another flux-status process"), "{e}");
    drop(first);
    assert!(Store::open(&dir).is_ok(), "free again once closed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unfinished_compaction_is_discarded_and_the_log_wins() {
    let dir = temp_dir("stale-compaction");
    Store::open(&dir).unwrap().0.apply(&sample_ops()).unwrap();
    std::fs::write(dir.join(COMPACTING), MAGIC).unwrap();
    assert_eq!(reopen(&dir), model(&sample_ops()));
    assert!(!dir.join(COMPACTING).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ops over a few keys, so that later ops override, remove and re-add earlier ones.
pub(super) fn op_strategy() -> impl Strategy<Value = Op> {
    let key = (0..4u8, 0..2u8);
    let state = prop::sample::select(State::ALL.to_vec());
    let upd =
        (key.clone(), state).prop_map(|((c, x), s)| update((b'a' + c) as char, ["x", "y"][x as usize], s));
    prop_oneof![
        // Each kind of pending record: plain, with a summary, a branch, or both.
        (upd.clone(), 0..1000u64, any::<(bool, bool)>()).prop_map(|(mut u, ms, (summary, git_ref))| {
            u.status.summary = summary.then(|| format!("## {}\n\n| a | b |", u.status.state));
            u.status.git_ref = git_ref.then(|| "main".to_string());
            Op::Pending(u, t(ms))
        }),
        upd.clone().prop_map(|u| Op::Done(u.key())),
        upd.clone().prop_map(|u| Op::InFlight(u.key())),
        upd.clone().prop_map(|u| Op::Landed(u.key())),
        (upd.clone(), 0..100u64).prop_map(|(u, seq)| Op::Written(u, seq)),
        upd.clone().prop_map(|u| Op::Forget(u.key())),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)).prop_map(Op::Poll),
        (upd, prop::option::of(1..4u8))
            .prop_map(|(u, h)| Op::Handle(u.key(), h.and_then(|h| Handle::new(format!("obj-{h}"))))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Compacting the log's first bytes while more is appended, then switching,
    /// leaves exactly the state of all the changes.
    #[test]
    fn compaction_keeps_the_state(
        before in prop::collection::vec(op_strategy(), 0..60),
        during in prop::collection::vec(op_strategy(), 0..20),
        after in prop::collection::vec(op_strategy(), 0..20),
    ) {
        let dir = temp_dir(&format!("compact-{}", before.len() * 10_000 + during.len() * 100 + after.len()));
        {
            let (mut store, _) = Store::open(&dir).unwrap();
            store.apply(&before).unwrap();
            let end = store.mark();
            let compacted = compact_prefix(&dir, end.len, &Space::default()).unwrap();
            store.apply(&during).unwrap();
            store.finish_compaction(end, compacted).unwrap();
            store.apply(&after).unwrap();
            prop_assert!(store.len <= std::fs::metadata(dir.join(LOG)).unwrap().len());
            // The counts the compaction rule goes by are the log's: its records, and
            // those that still count, as the store tracked them from the changes.
            let replayed = replay(&dir.join(LOG)).unwrap();
            prop_assert_eq!(store.records, replayed.records);
            prop_assert_eq!(&store.live, &replayed.slots);
        }
        let all: Vec<Op> = before.iter().chain(&during).chain(&after).cloned().collect();
        prop_assert_eq!(reopen(&dir), model(&all));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn the_persister_compacts_in_the_background_and_loses_nothing() {
    let dir = temp_dir("persister");
    let (store, _) = Store::open_with(&dir, 8 << 10).unwrap();
    let compactions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = compactions.clone();
    let persister = Persister::start(store, move |e| {
        if let StoreEvent::Compacted(r) = e {
            seen.lock()
                .unwrap()
                .push(r.as_ref().map(|x| *x).map_err(|e| e.to_string()));
        }
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut all = Vec::new();
    rt.block_on(async {
        for i in 0..2000u64 {
            // The same 20 checks over and over: the log keeps growing, the state does not.
            let ops = deliveries(i, 1);
            all.extend(ops.clone());
            persister.submit(&ops).wait().await.unwrap();
        }
        persister.flush().await.unwrap();
        persister.stop().await.unwrap();
        assert!(persister.submit(&all[..1]).wait().await.is_err(), "stopped");
    });
    let compactions = compactions.lock().unwrap().clone();
    assert!(!compactions.is_empty(), "the log was compacted");
    for c in &compactions {
        let (before, after) = c.as_ref().expect("compaction succeeded");
        assert!(after < before, "{after} < {before}");
    }
    assert_eq!(reopen(&dir), model(&all));
    // Reopening cut the zeros ahead of the records. How far the log grew during
    // the last compaction depends on how fast the compaction thread got the CPU
    // (on a loaded machine a quarter of it was left once), so this asks only
    // that most of what was appended is gone.
    let size = std::fs::metadata(dir.join(LOG)).unwrap().len();
    let mut appended = Vec::new();
    for op in &all {
        frame(&record(op), &mut appended).unwrap();
    }
    assert!(
        size < appended.len() as u64 / 2,
        "{size} bytes left of {} appended",
        appended.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_log_of_records_that_all_count_is_not_compacted_until_half_are_dead() {
    let dir = temp_dir("all-live");
    let updates: Vec<StatusUpdate> = (0..400u64)
        .map(|i| {
            let mut u = update('a', "x", State::Pending);
            u.status.sha = Sha::parse(&format!("{i:040x}")).unwrap();
            u
        })
        .collect();
    let pending: Vec<Op> = updates.iter().map(|u| Op::Pending(u.clone(), t(1))).collect();
    let done: Vec<Op> = updates.iter().map(|u| Op::Done(u.key())).collect();
    let compactions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let run = |store: Store, ops: &[Op]| {
        let seen = compactions.clone();
        let persister = Persister::start(store, move |e| {
            if let StoreEvent::Compacted(r) = e {
                seen.lock().unwrap().push(*r.as_ref().unwrap());
            }
        })
        .unwrap();
        rt.block_on(async {
            for op in ops {
                let submitted = persister.submit(std::slice::from_ref(op));
                submitted.wait().await.unwrap();
            }
            // Lets a compaction under way finish first.
            persister.stop().await.unwrap();
        });
    };
    // A flood of new updates: every record counts, and the log grows far past the
    // size that would have it compacted.
    let (store, _) = Store::open_with(&dir, 8 << 10).unwrap();
    run(store, &pending);
    assert!(
        compactions.lock().unwrap().is_empty(),
        "nothing to drop, nothing compacted"
    );
    let (mut store, _) = Store::open_with(&dir, 8 << 10).unwrap();
    assert_eq!(
        (store.records, store.live.len()),
        (400, 400),
        "counted at opening"
    );
    // As if the log had just grown enough since its last compaction.
    store.compact_at = store.len;
    assert!(!store.wants_compaction(), "all records count");
    // Delivered one by one: compacted once half the records are dead.
    run(store, &done);
    let compactions = compactions.lock().unwrap().clone();
    let &(before, after) = compactions.first().expect("compacted once half the log was dead");
    assert!(after < before, "{after} < {before}");
    let all: Vec<Op> = pending.into_iter().chain(done).collect();
    assert_eq!(reopen(&dir), model(&all));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_submitters_share_commits_and_each_waits_for_its_own() {
    let dir = temp_dir("concurrent");
    let (store, _) = Store::open(&dir).unwrap();
    let commits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = commits.clone();
    let persister = Persister::start(store, move |e| {
        if let StoreEvent::Committed(r) = e {
            assert!(r.is_ok());
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let (tasks, each) = (8u64, 100u64);
    let submitted = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for task in 0..tasks {
            let persister = persister.clone();
            set.spawn(async move {
                let mut ops = Vec::new();
                for i in 0..each {
                    let mut u = update('a', "x", State::Pending);
                    u.status.sha = Sha::parse(&format!("{:040x}", task * 1000 + i)).unwrap();
                    let op = Op::Pending(u, t(i));
                    persister.submit(std::slice::from_ref(&op)).wait().await.unwrap();
                    ops.push(op);
                }
                ops
            });
        }
        let mut all = Vec::new();
        while let Some(ops) = set.join_next().await {
            all.extend(ops.unwrap());
        }
        persister.stop().await.unwrap();
        all
    });
    let commits = commits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        commits >= 1 && commits <= (tasks * each) as usize,
        "{commits} commits"
    );
    // Each update is its own check, so the state does not depend on how the
    // submitters interleaved.
    let by_sha = |mut v: Vec<(StatusUpdate, SystemTime)>| {
        v.sort_by_key(|(u, _)| u.status.sha.to_string());
        v
    };
    let (pending, ..) = reopen(&dir);
    assert_eq!(pending.len(), (tasks * each) as usize);
    assert_eq!(by_sha(pending), by_sha(model(&submitted).0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_batch_the_persister_abandons_fails_instead_of_hanging() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let batch = Batch::new();
    let waiting = Durable(Some(batch.clone()));
    drop(Ack(batch));
    let waited = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), waiting.wait()).await });
    let e = waited.expect("answered, not left waiting").unwrap_err();
    assert!(matches!(*e, StoreError::Stopped), "{e}");
    assert_eq!(e.to_string(), "state store: persister stopped");
    // A finished batch keeps its outcome, for waiters that come late.
    let batch = Batch::new();
    Ack(batch.clone()).finish(Ok(()));
    assert!(rt.block_on(Durable(Some(batch)).wait()).is_ok());
}

#[test]
fn flush_with_nothing_queued_and_stop_twice_answer() {
    let dir = temp_dir("flush");
    let (store, _) = Store::open(&dir).unwrap();
    let persister = Persister::start(store, |_| {}).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        persister.flush().await.unwrap();
        persister.stop().await.unwrap();
        assert!(persister.flush().await.is_err(), "stopped");
        assert!(persister.stop().await.is_err(), "already stopped");
    });
    let _ = std::fs::remove_dir_all(&dir);
}
