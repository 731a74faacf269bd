//! The durable side of the outbox: pending updates, which writes were under way,
//! what was last written per check, and the workload poll under way.
//!
//! The outbox works from memory; this store is only how that state survives a crash,
//! and it is read only at start. So it is an append-only log, `outbox.log` under
//! `--state-dir`, and a change costs one record appended, not a B-tree update:
//! - one persister thread appends every change queued since its last write and
//!   fsyncs once (group commit): under load one fsync covers many events;
//! - the file is extended with zeros ahead of the records, so that an fsync only
//!   writes data (a zero length marks the end). When the volume has no room for
//!   them, records are written without them and the log is compacted sooner;
//! - each record carries its length and a CRC32, and is at most [`MAX_RECORD`]
//!   bytes, which the writer enforces and the reader relies on. At start, a record
//!   cut short or garbled by a crash mid-write (its fsync never returned, so nothing
//!   it held was acknowledged) ends the log and is cut off. A bad record followed by
//!   whole ones is damage: it is skipped, the damaged file is copied beside the log,
//!   and the log is rewritten with every whole record (see `read`);
//! - once the log has grown to twice what it held after the last compaction, a
//!   helper thread copies the records of its first bytes that still count into a new
//!   file while appends go on; the persister then copies what was appended meanwhile
//!   and renames the new file over the old one;
//! - a commit the disk refused is kept and tried again (sooner after a compaction
//!   made room), so the store comes back once the volume has room, without a restart.

mod read;
mod space;

use crate::update::{Key, StatusUpdate};
use notifiers::{Check, CommitStatus, Sha, State};
use read::{FileWindow, Gap, Records, Source, Tail};
use serde::{Deserialize, Serialize};
use space::{Growing, Space};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tracing::{error, info, warn};

const LOG: &str = "outbox.log";
/// A compaction (or the rewrite of a damaged log) under way; a start finding it knows
/// the rename never happened.
const COMPACTING: &str = "outbox.log.compacting";
/// A new log until its magic is on disk: renamed into place then, so that a log
/// shorter than its magic is damage, never a creation cut short.
const CREATING: &str = "outbox.log.creating";
/// Held locked while a process uses the directory.
const LOCK: &str = "outbox.lock";
/// Left by development builds that kept the outbox in redb; not read.
const OLD_REDB: &str = "outbox.redb";
/// The file's first bytes: what it is, and the version of the record format.
const MAGIC: &[u8; 16] = b"flux-status:log1";
/// Payload length and CRC32, little-endian.
const HEADER: usize = 8;
/// The largest record payload, for the writer and the reader alike: the writer
/// refuses a larger change (see [`fits`]), the reader takes a larger length for damage.
/// Far beyond any bounded update (see `crate::update::MAX_DESCRIPTION_BYTES`).
pub const MAX_RECORD: usize = 1 << 20;
/// The file is extended with zeros this much ahead of the last record, so an append
/// does not change the file's size and its fdatasync commits no metadata (on ext4 a
/// size change costs a journal commit per fsync). A zero length ends the log.
const PREALLOCATE: u64 = 1 << 20;
/// Zeros kept ahead of the records: fewer, and more are laid down. Once the volume has
/// no room for more, what is left of them is the room a compaction can use.
const CUSHION: u64 = PREALLOCATE / 2;
/// The log is not compacted below this size, while the volume has room.
const COMPACT_MIN: u64 = 4 << 20;
/// Nor below this once the volume is short of room.
const COMPACT_MIN_SHORT: u64 = 64 << 10;
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

#[derive(Debug, thiserror::Error)]
#[error("state store {path}: {message}")]
pub struct StoreError {
    pub path: PathBuf,
    pub message: String,
}

impl StoreError {
    fn at(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> StoreError + '_ {
        move |e| StoreError {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// One change to the durable state.
#[derive(Debug, Clone, PartialEq)]
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
struct UpdateRecord<'a> {
    #[serde(borrow)]
    key: KeyRecord<'a>,
    state: &'a str,
    description: &'a str,
    target_url: Option<&'a str>,
}

/// One change as stored (postcard). postcard numbers variants by position: add new
/// ones at the end, never reorder.
#[derive(Serialize, Deserialize)]
enum Record<'a> {
    Pending {
        #[serde(borrow)]
        update: UpdateRecord<'a>,
        /// Milliseconds since the epoch.
        at: u64,
    },
    Done(#[serde(borrow)] KeyRecord<'a>),
    InFlight(#[serde(borrow)] KeyRecord<'a>),
    Landed(#[serde(borrow)] KeyRecord<'a>),
    Written {
        #[serde(borrow)]
        update: UpdateRecord<'a>,
        seq: u64,
    },
    Forget(#[serde(borrow)] KeyRecord<'a>),
    Poll(#[serde(borrow)] Option<&'a [u8]>),
}

fn key_record(k: &Key) -> KeyRecord<'_> {
    KeyRecord {
        repo: &k.repo,
        sha: k.sha.as_str(),
        check: k.check.as_str(),
    }
}

fn update_record(u: &StatusUpdate) -> UpdateRecord<'_> {
    UpdateRecord {
        key: KeyRecord {
            repo: &u.repo,
            sha: u.status.sha.as_str(),
            check: u.status.check.as_str(),
        },
        state: u.status.state.as_str(),
        description: &u.status.description,
        target_url: u.status.target_url.as_deref(),
    }
}

fn record(op: &Op) -> Record<'_> {
    match op {
        Op::Pending(u, at) => Record::Pending {
            update: update_record(u),
            at: millis(*at),
        },
        Op::Done(k) => Record::Done(key_record(k)),
        Op::InFlight(k) => Record::InFlight(key_record(k)),
        Op::Landed(k) => Record::Landed(key_record(k)),
        Op::Written(u, seq) => Record::Written {
            update: update_record(u),
            seq: *seq,
        },
        Op::Forget(k) => Record::Forget(key_record(k)),
        Op::Poll(p) => Record::Poll(p.as_deref()),
    }
}

fn key_of(r: KeyRecord<'_>) -> Option<Key> {
    Some(Key {
        repo: r.repo.into(),
        sha: Sha::parse(r.sha).ok()?,
        check: Check::new(r.check),
    })
}

fn update_of(r: UpdateRecord<'_>) -> Option<StatusUpdate> {
    let state = State::ALL.into_iter().find(|s| s.as_str() == r.state)?;
    Some(StatusUpdate {
        repo: r.key.repo.into(),
        status: CommitStatus {
            sha: Sha::parse(r.key.sha).ok()?,
            check: Check::new(r.key.check),
            state,
            description: r.description.to_string(),
            target_url: r.target_url.map(str::to_string),
        },
    })
}

/// The change a record stands for; `None` when a field does not parse.
fn op_of(r: Record<'_>) -> Option<Op> {
    Some(match r {
        Record::Pending { update, at } => {
            Op::Pending(update_of(update)?, UNIX_EPOCH + Duration::from_millis(at))
        }
        Record::Done(k) => Op::Done(key_of(k)?),
        Record::InFlight(k) => Op::InFlight(key_of(k)?),
        Record::Landed(k) => Op::Landed(key_of(k)?),
        Record::Written { update, seq } => Op::Written(update_of(update)?, seq),
        Record::Forget(k) => Op::Forget(key_of(k)?),
        Record::Poll(p) => Op::Poll(p.map(<[u8]>::to_vec)),
    })
}

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("could not encode a change: {0}")]
    Encode(#[from] postcard::Error),
    #[error("a change of {0} bytes is over the store's record limit ({MAX_RECORD} bytes)")]
    TooLarge(usize),
}

/// Appends `ops`, framed in order, to `buf`: all of them, or nothing on error.
fn frame_all(ops: &[Op], buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = buf.len();
    for op in ops {
        if let Err(e) = frame(&record(op), buf) {
            buf.truncate(start);
            return Err(e);
        }
    }
    Ok(())
}

/// Appends one framed record (length, CRC32, payload) to `buf`.
fn frame(record: &Record<'_>, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    // Through `io::Write`: a `Vec` takes each field's bytes with one copy, where
    // `to_extend` pushes them one byte at a time.
    if let Err(e) = postcard::to_io(record, &mut *buf) {
        buf.truncate(start);
        return Err(e.into());
    }
    let payload = &buf[start + HEADER..];
    if payload.len() > MAX_RECORD {
        let len = payload.len();
        buf.truncate(start);
        return Err(FrameError::TooLarge(len));
    }
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Whether `u` makes a record within [`MAX_RECORD`], pending or written: an upper
/// bound from the lengths of its strings, without encoding it. Checked before an update
/// enters the outbox, so that nothing is taken that the store would then refuse.
pub fn fits(u: &StatusUpdate) -> bool {
    let strings = [
        u.repo.len(),
        u.status.sha.as_str().len(),
        u.status.check.as_str().len(),
        u.status.state.as_str().len(),
        u.status.description.len(),
        u.status.target_url.as_ref().map_or(0, String::len),
    ];
    // Each string's length is a varint of at most 10 bytes; tags and the u64 take 32.
    strings.iter().map(|n| n + 10).sum::<usize>() + 32 <= MAX_RECORD
}

pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// What a previous run left behind.
#[derive(Default, Debug)]
pub struct Recovered {
    /// In the order of their latest acceptance.
    pub pending: Vec<(StatusUpdate, SystemTime)>,
    /// Writes that were under way when the previous run stopped.
    pub in_flight: Vec<Key>,
    /// Oldest first.
    pub written: Vec<(StatusUpdate, u64)>,
    /// The workload poll that was under way.
    pub poll: Option<Vec<u8>>,
}

/// The state a log describes: what replaying its records leaves.
#[derive(Default)]
struct Live {
    /// Update, accepted at, and the order of that acceptance.
    pending: HashMap<Key, (StatusUpdate, SystemTime, u64)>,
    in_flight: HashSet<Key>,
    written: HashMap<Key, (StatusUpdate, u64)>,
    poll: Option<Vec<u8>>,
    next_order: u64,
}

impl Live {
    fn apply(&mut self, op: Op) {
        match op {
            Op::Pending(u, at) => {
                // In line by its latest acceptance, where its record now is.
                self.next_order += 1;
                self.pending.insert(u.key(), (u, at, self.next_order));
            }
            Op::Done(k) => {
                self.pending.remove(&k);
            }
            Op::InFlight(k) => {
                self.in_flight.insert(k);
            }
            Op::Landed(k) => {
                self.in_flight.remove(&k);
            }
            Op::Written(u, seq) => {
                self.written.insert(u.key(), (u, seq));
            }
            Op::Forget(k) => {
                self.written.remove(&k);
            }
            Op::Poll(p) => self.poll = p,
        }
    }

    /// How many records a compacted log of this state holds.
    fn records(&self) -> u64 {
        (self.pending.len() + self.in_flight.len() + self.written.len() + usize::from(self.poll.is_some()))
            as u64
    }

    fn into_recovered(self) -> Recovered {
        let mut pending: Vec<_> = self.pending.into_values().collect();
        pending.sort_by_key(|(_, _, order)| *order);
        let mut written: Vec<_> = self.written.into_values().collect();
        written.sort_by_key(|(_, seq)| *seq);
        Recovered {
            pending: pending.into_iter().map(|(u, at, _)| (u, at)).collect(),
            in_flight: self.in_flight.into_iter().collect(),
            written,
            poll: self.poll,
        }
    }
}

/// What reading a log found.
struct Replayed {
    live: Live,
    /// Where the last whole record ends.
    end: u64,
    /// Damage skipped between whole records.
    gaps: Vec<Gap>,
    /// What follows the last whole record, if anything does.
    tail: Option<Tail>,
    /// Whole records whose contents did not parse (skipped).
    unreadable: u64,
    /// Whole records read, those skipped included.
    records: u64,
}

/// Replays a log's whole records, past any damage; `Ok(Err(why))` when the source is
/// not an outbox log.
fn replay_source<S: Source>(src: S) -> std::io::Result<Result<Replayed, &'static str>> {
    let mut records = match Records::open(src, true)? {
        Ok(records) => records,
        Err(why) => return Ok(Err(why)),
    };
    let (mut live, mut unreadable, mut read) = (Live::default(), 0, 0);
    while records.next()?.is_some() {
        read += 1;
        let frame = records.frame()?;
        // A whole record that does not parse (a bug, not a crash): skip it, keep going.
        match postcard::from_bytes::<Record<'_>>(&frame[HEADER..])
            .ok()
            .and_then(op_of)
        {
            Some(op) => live.apply(op),
            None => unreadable += 1,
        }
    }
    Ok(Ok(Replayed {
        live,
        end: records.end,
        gaps: std::mem::take(&mut records.gaps),
        tail: records.tail,
        unreadable,
        records: read,
    }))
}

/// Replays the whole log at `path`.
fn replay(path: &Path) -> Result<Replayed, StoreError> {
    let err = StoreError::at(path);
    let window = File::open(path)
        .and_then(|f| FileWindow::new(f, None))
        .map_err(|e| err(&e))?;
    replay_source(window).map_err(|e| err(&e))?.map_err(|e| err(&e))
}

/// Replays a log given as bytes, its magic included, and returns how many records it
/// recovered (whole, and readable as a change). Any bytes at all: never panics. The
/// entry point for fuzzing the start-up path.
pub fn replay_bytes(data: &[u8]) -> usize {
    match replay_source(data) {
        Ok(Ok(r)) => r.records.saturating_sub(r.unreadable) as usize,
        _ => 0,
    }
}

/// Records lost to damage found at opening.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Damage {
    /// As far as the damaged records' lengths still tell (at least one per gap).
    pub records: u64,
    pub bytes: u64,
}

/// Copies a damaged log beside it, before anything rewrites it:
/// `outbox.log.damaged-<unix seconds>`.
fn keep_damaged(dir: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut copy = dir.join(format!("{LOG}.damaged-{secs}"));
    let mut n = 1;
    while copy.exists() {
        copy = dir.join(format!("{LOG}.damaged-{secs}-{n}"));
        n += 1;
    }
    let copied = std::fs::copy(path, &copy)
        .and_then(|_| File::open(&copy)?.sync_all())
        .and_then(|()| sync_dir(dir));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&copy);
        return Err(e);
    }
    Ok(copy)
}

/// A new, empty log: its magic written beside it, then renamed into place.
fn create_log(dir: &Path, path: &Path) -> std::io::Result<()> {
    let tmp = dir.join(CREATING);
    let mut f = File::create(&tmp)?;
    f.write_all(MAGIC)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Rewrites the log with every whole record it holds, in order, dropping the damage
/// between them and whatever follows the last.
fn rewrite_whole(dir: &Path, path: &Path) -> Result<Mark, StoreError> {
    let err = StoreError::at(path);
    let tmp = dir.join(COMPACTING);
    let written = (|| -> std::io::Result<Result<Mark, &'static str>> {
        let mut records = match Records::open(FileWindow::new(File::open(path)?, None)?, true)? {
            Ok(records) => records,
            Err(why) => return Ok(Err(why)),
        };
        let mut file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(64 << 10, &mut file);
        w.write_all(MAGIC)?;
        let mut kept = 0;
        while records.next()?.is_some() {
            w.write_all(records.frame()?)?;
            kept += 1;
        }
        w.flush()?;
        drop(w);
        file.sync_all()?;
        let len = file.metadata()?.len();
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)?;
        Ok(Ok(Mark { len, records: kept }))
    })();
    match written {
        Ok(Ok(mark)) => Ok(mark),
        Ok(Err(why)) => Err(err(&why)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err(&e))
        }
    }
}

/// What a record sets or clears: a digest of its kind of state and its key, and
/// whether it sets it. The latest record per slot that sets it is what counts.
fn slot(r: &Record<'_>) -> ([u8; 16], bool) {
    use sha2::Digest;
    let (kind, key, sets) = match r {
        Record::Pending { update, .. } => (0u8, Some(&update.key), true),
        Record::Done(k) => (0, Some(k), false),
        Record::InFlight(k) => (1, Some(k), true),
        Record::Landed(k) => (1, Some(k), false),
        Record::Written { update, .. } => (2, Some(&update.key), true),
        Record::Forget(k) => (2, Some(k), false),
        Record::Poll(p) => (3, None, p.is_some()),
    };
    let mut h = sha2::Sha256::new();
    h.update([kind]);
    if let Some(k) = key {
        for part in [k.repo, k.sha, k.check] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    let mut d = [0u8; 16];
    d.copy_from_slice(&h.finalize()[..16]);
    (d, sets)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A place in a log: its length there, and the whole records before it.
#[derive(Clone, Copy, Debug)]
struct Mark {
    len: u64,
    records: u64,
}

/// Copies the records of the log's first `end` bytes that still count into
/// [`COMPACTING`], in their order; returns where the new file ends. Runs beside the
/// persister, which only appends. Memory: a 16-byte digest and an offset per live
/// record, not the records. On failure the new file is removed, giving its room back.
fn compact_prefix(dir: &Path, end: u64, space: &Space) -> Result<Mark, StoreError> {
    let tmp = dir.join(COMPACTING);
    let result = copy_live(dir, end, space);
    if result.is_err()
        && let Ok(m) = std::fs::metadata(&tmp)
        && std::fs::remove_file(&tmp).is_ok()
    {
        space.shrink(m.len());
    }
    result
}

fn copy_live(dir: &Path, end: u64, space: &Space) -> Result<Mark, StoreError> {
    let path = dir.join(LOG);
    let err = StoreError::at(&path);
    // Strict: the log was made whole at opening; anything else is a bug to report.
    let open = || {
        Records::open(
            File::open(&path)
                .and_then(|f| FileWindow::new(f, Some(end)))
                .map_err(|e| err(&e))?,
            false,
        )
        .map_err(|e| err(&e))?
        .map_err(|e| err(&e))
    };
    // Pass 1: the latest record per slot, if it sets the slot.
    let mut live = HashMap::<[u8; 16], u64>::new();
    let mut records = open()?;
    while let Some(at) = records.next().map_err(|e| err(&e))? {
        let frame = records.frame().map_err(|e| err(&e))?;
        // Skipped at replay, so not worth keeping.
        let Ok(record) = postcard::from_bytes::<Record<'_>>(&frame[HEADER..]) else {
            continue;
        };
        match slot(&record) {
            (slot, true) => live.insert(slot, at),
            (slot, false) => live.remove(&slot),
        };
    }
    if records.end != end {
        return Err(err(&format!(
            "the log reads back only to byte {} of {end}",
            records.end
        )));
    }
    let mut keep: Vec<u64> = live.into_values().collect();
    keep.sort_unstable();
    let kept = keep.len() as u64;
    // Pass 2: copy those records.
    let tmp = dir.join(COMPACTING);
    let err = StoreError::at(&tmp);
    let mut file = File::create(&tmp).map_err(|e| err(&space.note(e)))?;
    let mut w = BufWriter::with_capacity(
        64 << 10,
        Growing {
            inner: &mut file,
            space: space.clone(),
        },
    );
    w.write_all(MAGIC).map_err(|e| err(&e))?;
    let (mut records, mut keep) = (open()?, keep.into_iter().peekable());
    while let Some(at) = records.next().map_err(|e| err(&e))? {
        if keep.next_if_eq(&at).is_some() {
            // The frame as it was read (and checked): header, then payload.
            w.write_all(records.frame().map_err(|e| err(&e))?)
                .map_err(|e| err(&e))?;
        }
    }
    w.flush().map_err(|e| err(&e))?;
    drop(w);
    file.sync_data().map_err(|e| err(&space.note(e)))?;
    let len = file.metadata().map(|m| m.len()).map_err(|e| err(&e))?;
    Ok(Mark { len, records: kept })
}

pub struct Store {
    dir: PathBuf,
    path: PathBuf,
    /// Written at `len`, never in append mode (the file runs ahead of the records).
    file: File,
    /// Bytes in the log, all whole records.
    len: u64,
    /// Whole records in the log, whether they still count or not.
    records: u64,
    /// How many records still count: exact at opening, then as the state's owner
    /// last said (see [`Persister::submit`]).
    live: u64,
    /// The file's size: records, then zeros.
    allocated: u64,
    /// False after a compaction's rename until its directory is fsynced.
    dir_synced: bool,
    /// A failed write may have left bytes after `len` that could not be cut off: they
    /// are, before anything else is written.
    stray: bool,
    /// Compact once the log reaches this size.
    compact_at: u64,
    /// The log's size when the next compaction was last planned.
    compact_base: u64,
    compact_min: u64,
    /// The volume had no room for zeros ahead of the records (until a compaction).
    short_of_space: bool,
    /// Said so in the log, and not yet that the room is back.
    warned_short: bool,
    /// The last write failed.
    refused: bool,
    /// The log's length and record count when a compaction was last started for want
    /// of room: not tried again until the log changed.
    compact_tried: Option<(u64, u64)>,
    space: Space,
    /// Found at opening; reported once the persister starts.
    damage: Option<Damage>,
    /// Locked for as long as the store is open: two daemons on one state directory
    /// would interleave their records.
    _lock: File,
}

impl Store {
    pub fn open(dir: &Path) -> Result<(Store, Recovered), StoreError> {
        Store::open_with(dir, COMPACT_MIN)
    }

    fn open_with(dir: &Path, compact_min: u64) -> Result<(Store, Recovered), StoreError> {
        let path = dir.join(LOG);
        let err = StoreError::at(&path);
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let lock = File::create(dir.join(LOCK)).map_err(|e| err(&e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(err(&"another flux-status process is using this state directory"));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(&e)),
        }
        match std::fs::remove_file(dir.join(COMPACTING)) {
            Ok(()) => info!("removed an unfinished compaction of the outbox log; the log itself is whole"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&e)),
        }
        let _ = std::fs::remove_file(dir.join(CREATING));
        if dir.join(OLD_REDB).exists() {
            warn!(path = %dir.join(OLD_REDB).display(),
                "found an outbox from a development build (redb); it is not read, delete it");
        }
        let mut damage = None;
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(&e)),
        };
        if size < MAGIC.len() as u64 {
            if size > 0 {
                // Logs are created whole (see `create_log`): a shorter one was cut.
                let kept = keep_damaged(dir, &path);
                error!(path = %path.display(), bytes = size,
                    copy = %kept.as_ref().map_or_else(|e| format!("none: {e}"), |p| p.display().to_string()),
                    "the outbox log is shorter than its header: it was cut or damaged; starting a new one");
                damage = Some(Damage {
                    records: 0,
                    bytes: size,
                });
            }
            create_log(dir, &path).map_err(|e| err(&e))?;
        }
        let mut replayed = replay(&path)?;
        if replayed.unreadable > 0 {
            error!(path = %path.display(), records = replayed.unreadable,
                "skipped outbox records that do not parse");
        }
        if !replayed.gaps.is_empty() {
            let lost = Damage {
                records: replayed.gaps.iter().map(|g| g.records).sum(),
                bytes: replayed.gaps.iter().map(|g| g.to - g.from).sum(),
            };
            damage = Some(lost);
            let first = replayed.gaps[0].from;
            match keep_damaged(dir, &path) {
                Ok(copy) => {
                    error!(path = %path.display(), records_lost = lost.records, bytes_skipped = lost.bytes,
                        damaged_at = first, records_kept = replayed.records, copy = %copy.display(),
                        "the outbox log is damaged: skipped the damaged records, kept every whole one; the damaged file is copied beside the log");
                    let rewritten = rewrite_whole(dir, &path)?;
                    replayed.end = rewritten.len;
                    replayed.records = rewritten.records;
                    replayed.tail = None;
                }
                Err(e) => {
                    // Left as it is: its whole records are replayed at every start, and
                    // compaction refuses it until a start can keep a copy.
                    error!(path = %path.display(), records_lost = lost.records, bytes_skipped = lost.bytes,
                        damaged_at = first, error = %e,
                        "the outbox log is damaged and no copy of it could be kept; it is left as it is");
                }
            }
        }
        if let Some(tail) = replayed.tail.filter(|t| !t.zeros) {
            // A write the crash interrupted. Its fsync never returned, so nothing it
            // held was acknowledged.
            warn!(path = %path.display(), at = tail.at, bytes = tail.bytes,
                "the outbox log ends in {}; cutting it off there (a write interrupted by a crash, never acknowledged)",
                tail.bad.what());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| err(&e))?;
        let size = file.metadata().map_err(|e| err(&e))?.len();
        if size > replayed.end {
            // Zeros, or a write the crash interrupted: either way cut, so that no byte of
            // an unacknowledged write can line up with a later record.
            file.set_len(replayed.end).map_err(|e| err(&e))?;
            file.sync_all().map_err(|e| err(&e))?;
        }
        let mut store = Store {
            dir: dir.to_path_buf(),
            path: path.clone(),
            file,
            len: replayed.end,
            records: replayed.records,
            live: replayed.live.records(),
            allocated: replayed.end,
            dir_synced: true,
            stray: false,
            compact_at: 0,
            compact_base: 0,
            compact_min,
            short_of_space: false,
            warned_short: false,
            refused: false,
            compact_tried: None,
            space: Space::default(),
            damage,
            _lock: lock,
        };
        store.rearm_compaction();
        Ok((store, replayed.live.into_recovered()))
    }

    /// Appends `ops`, in order, and makes them durable.
    #[cfg(test)]
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut framed = Vec::new();
        frame_all(ops, &mut framed).map_err(|e| StoreError::at(&self.path)(&e))?;
        self.append(&framed, ops.len() as u64)
    }

    /// Appends `count` framed records (see [`frame_all`]), in order, and makes them
    /// durable.
    fn append(&mut self, records: &[u8], count: u64) -> Result<(), StoreError> {
        let written = self
            .cut_stray()
            .and_then(|()| self.sync_dir_if_needed())
            .and_then(|()| self.extend_for(records.len() as u64))
            .and_then(|()| self.file.write_all_at(records, self.len))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.refused = true;
            // Nothing of this write counts: cut it off so the next append follows the
            // last whole record (a failed fsync leaves the page cache in doubt), and so
            // that the zeros ahead give their room back.
            self.stray = true;
            let _ = self.cut_stray();
            return Err(StoreError::at(&self.path)(&e));
        }
        self.refused = false;
        self.len += records.len() as u64;
        self.records += count;
        Ok(())
    }

    /// Cuts the file back to its whole records after a failed write.
    fn cut_stray(&mut self) -> std::io::Result<()> {
        if self.stray {
            self.file.set_len(self.len)?;
            self.space.shrink(self.allocated.saturating_sub(self.len));
            self.allocated = self.len;
            self.stray = false;
        }
        Ok(())
    }

    /// Makes room for `n` more bytes of records: zeros written, not a hole, so that
    /// writing the records later allocates nothing. Without room for more zeros, the
    /// records go into what is left of them, then take only their own room; the log
    /// compacts sooner, and the zeros left are given back to make room for it.
    fn extend_for(&mut self, n: u64) -> std::io::Result<()> {
        let need = self.len + n;
        if need + CUSHION <= self.allocated {
            return Ok(());
        }
        // Short of room, zeros are tried again only after a compaction made some.
        if !self.short_of_space {
            let ahead = need.div_ceil(PREALLOCATE) * PREALLOCATE + PREALLOCATE;
            match self.lay_zeros(ahead) {
                Ok(()) => {
                    if self.warned_short {
                        info!(path = %self.path.display(), "the state volume has room again ahead of the outbox log");
                        self.warned_short = false;
                    }
                    return Ok(());
                }
                Err(e) => {
                    if !self.warned_short {
                        warn!(path = %self.path.display(), error = %e,
                            "no room on the state volume for zeros ahead of the outbox log: writing records without them, compacting sooner");
                        self.warned_short = true;
                    }
                    self.short_of_space = true;
                }
            }
        }
        if need > self.allocated {
            // The write of the records grows the file to `need`.
            self.space.grow(need - self.allocated)?;
            self.allocated = need;
        }
        Ok(())
    }

    /// Gives the zeros ahead of the records back to the volume: short of room, they
    /// are what a compaction can use.
    fn release_zeros(&mut self) {
        if self.allocated > self.len && self.file.set_len(self.len).is_ok() {
            self.space.shrink(self.allocated - self.len);
            self.allocated = self.len;
        }
    }

    /// Writes zeros from the end of the file up to `to`; on failure the file is cut
    /// back, giving their room back.
    fn lay_zeros(&mut self, to: u64) -> std::io::Result<()> {
        let from = self.allocated;
        self.space.grow(to - from)?;
        let zeros = vec![0u8; (to - from) as usize];
        if let Err(e) = self.file.write_all_at(&zeros, from) {
            let _ = self.file.set_len(from);
            self.space.shrink(to - from);
            return Err(e);
        }
        self.allocated = to;
        Ok(())
    }

    /// A rename is durable once its directory is: until then, nothing may be
    /// acknowledged that lives only in the renamed file.
    fn sync_dir_if_needed(&mut self) -> std::io::Result<()> {
        if !self.dir_synced {
            sync_dir(&self.dir)?;
            self.dir_synced = true;
        }
        Ok(())
    }

    fn mark(&self) -> Mark {
        Mark {
            len: self.len,
            records: self.records,
        }
    }

    /// Whether the log has grown enough since the last compaction, and at least half
    /// of its records no longer count. A flood of new updates is all live records:
    /// compacting then would copy the whole log to drop nothing. Short of room, the
    /// log need not have reached `compact_min`; once the volume refused a write, any
    /// record that no longer counts is worth its room (tried once per state of the log).
    fn wants_compaction(&self) -> bool {
        let dead = self.records.saturating_sub(self.live);
        if dead == 0 {
            return false;
        }
        if self.refused {
            return self.compact_tried != Some((self.len, self.records));
        }
        let grown = if self.short_of_space {
            self.len >= (2 * self.compact_base).max(COMPACT_MIN_SHORT)
                && self.compact_tried != Some((self.len, self.records))
        } else {
            self.len >= self.compact_at
        };
        grown && 2 * dead >= self.records
    }

    /// Switches to the compacted file: copies what was appended after `end` into it,
    /// makes it durable and renames it over the log.
    fn finish_compaction(&mut self, end: Mark, compacted: Mark) -> Result<(u64, u64), StoreError> {
        let (end, appended) = (end.len, self.records - end.records);
        let tmp = self.dir.join(COMPACTING);
        let err = StoreError::at(&tmp);
        let space = self.space.clone();
        // The old file's zeros are of no use once it is replaced: their room is what
        // copying the tail may need.
        self.release_zeros();
        let switched = (|| -> std::io::Result<File> {
            self.cut_stray()?;
            // Not in append mode: records are written at their offset from now on.
            let mut out = OpenOptions::new().read(true).write(true).open(&tmp)?;
            out.seek(SeekFrom::End(0))?;
            let mut src = File::open(&self.path)?;
            src.seek(SeekFrom::Start(end))?;
            let tail = self.len - end;
            let mut grown = Growing {
                inner: &mut out,
                space: space.clone(),
            };
            if std::io::copy(&mut src.take(tail), &mut grown)? != tail {
                return Err(std::io::Error::other("the log is shorter than what was appended"));
            }
            out.sync_data()?;
            std::fs::rename(&tmp, &self.path)?;
            Ok(out)
        })();
        let before = self.len;
        match switched {
            Ok(file) => {
                // Renamed: from here on the new file is the log, whatever happens next.
                self.space.shrink(self.allocated);
                self.file = file;
                self.len = compacted.len + (before - end);
                self.records = compacted.records + appended;
                self.allocated = self.len;
                self.rearm_compaction();
                self.short_of_space = false;
                self.dir_synced = false;
                if let Err(e) = self.sync_dir_if_needed() {
                    // The next write tries again, and fails until it can.
                    warn!(error = %e, path = %self.dir.display(),
                        "could not fsync the state directory after compacting the outbox log");
                }
                Ok((before, self.len))
            }
            Err(e) => {
                if let Ok(m) = std::fs::metadata(&tmp)
                    && std::fs::remove_file(&tmp).is_ok()
                {
                    space.shrink(m.len());
                }
                Err(err(&space.note(e)))
            }
        }
    }

    /// The next compaction is due once the log has doubled from its size now (after
    /// opening, a compaction, or a failed one).
    fn rearm_compaction(&mut self) {
        self.compact_base = self.len;
        self.compact_at = self.compact_min.max(2 * self.len);
    }
}

type Outcome = Result<(), Arc<StoreError>>;

/// The changes of one commit (or a stop), as their submitters wait for them: one
/// allocation and one wake-up call per commit, not per change.
struct Batch {
    outcome: OnceLock<Outcome>,
    done: Notify,
}

impl Batch {
    fn new() -> Arc<Batch> {
        Arc::new(Batch {
            outcome: OnceLock::new(),
            done: Notify::new(),
        })
    }
}

/// The persister's side of a batch. Dropped unfinished (the persister ended, or its
/// thread unwound mid-commit), it fails the batch, so no submitter waits forever.
struct Ack(Arc<Batch>);

impl Ack {
    fn finish(self, outcome: Outcome) {
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
    Arc::new(StoreError {
        path: PathBuf::new(),
        message: "persister stopped".into(),
    })
}

/// What submitters have queued for the persister thread since it last looked.
#[derive(Default)]
struct Queue {
    /// Framed records, in the order their changes were made, framed by the thread
    /// that made the change. The persister swaps this buffer for its spare, so
    /// queuing a change allocates nothing that another thread must free.
    records: Vec<u8>,
    /// How many records `records` holds.
    framed: u64,
    /// What the state's owner last said still counts, if it said so since the
    /// persister last looked.
    live: Option<u64>,
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
    handle: Option<Arc<Handle>>,
}

/// Shared by the clones of one `Persister`; the last one dropped lets the thread end.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        let mut queue = self.0.queue();
        queue.orphaned = true;
        self.0.wake(&queue);
    }
}

/// Resolves when the changes it stands for are on disk.
pub struct Durable(Option<Arc<Batch>>);

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
        Persister { handle: None }
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
        std::thread::Builder::new()
            .name("outbox-store".into())
            .spawn(move || persist(store, &thread, on_event))
            .map_err(|e| StoreError::at(&path)(&e))?;
        Ok(Persister {
            handle: Some(Arc::new(Handle(shared))),
        })
    }

    pub fn is_durable(&self) -> bool {
        self.handle.is_some()
    }

    /// Queues changes. Call it while holding the lock under which the state changed,
    /// so the store sees changes in the order memory did. `live` is how many records
    /// the state needs after them (an estimate will do): the log is compacted only
    /// once at least half of its records are dead.
    pub fn submit(&self, ops: &[Op], live: usize) -> Durable {
        match &self.handle {
            None => Durable(None),
            Some(_) if ops.is_empty() => Durable(None),
            Some(handle) => handle.0.enqueue(ops, Some(live as u64)),
        }
    }

    /// Resolves once everything submitted before it is on disk.
    pub async fn flush(&self) -> Result<(), Arc<StoreError>> {
        match &self.handle {
            None => Ok(()),
            Some(handle) => handle.0.enqueue(&[], None).wait().await,
        }
    }

    /// Writes everything submitted before it, lets a compaction under way finish,
    /// and closes the store (releasing the state directory). Later changes fail.
    pub async fn stop(&self) -> Result<(), Arc<StoreError>> {
        let Some(handle) = &self.handle else { return Ok(()) };
        let stopped = {
            let mut queue = handle.0.queue();
            if queue.ended {
                Durable::failed(stopped())
            } else {
                let batch = queue.stop.get_or_insert_with(|| Ack(Batch::new())).0.clone();
                handle.0.wake(&queue);
                Durable(Some(batch))
            }
        };
        stopped.wait().await
    }
}

impl Shared {
    /// Adds `ops` to the next commit, all or none.
    fn enqueue(&self, ops: &[Op], live: Option<u64>) -> Durable {
        let mut queue = self.queue();
        if queue.ended || queue.stop.is_some() {
            return Durable::failed(stopped());
        }
        if let Err(e) = frame_all(ops, &mut queue.records) {
            error!(error = %e, "a change could not be stored");
            return Durable::failed(Arc::new(StoreError {
                path: PathBuf::new(),
                message: e.to_string(),
            }));
        }
        queue.framed += ops.len() as u64;
        queue.live = live.or(queue.live);
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
struct Carried {
    records: Vec<u8>,
    count: u64,
    /// When to try again, and the wait after that.
    retry: Option<(Instant, Duration)>,
}

impl Carried {
    fn due(&self, now: Instant) -> bool {
        self.retry.is_some_and(|(at, _)| now >= at)
    }

    /// Keeps what a failed write held (`records`, unless they are carried already)
    /// and plans the next try.
    fn refused(&mut self, records: &[u8], count: u64, now: Instant) {
        if self.records.is_empty() {
            self.records.extend_from_slice(records);
            self.count = count;
        }
        if self.records.len() > CARRY_MAX {
            error!(
                records = self.count,
                bytes = self.records.len(),
                "the state volume has refused writes for long: dropping the changes kept for it; they stay in memory, but a restart before they are written again replays an older state"
            );
            *self = Carried {
                records: Vec::new(),
                count: 0,
                retry: None,
            };
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
    let mut records = Vec::with_capacity(BUFFER);
    let mut carried = Carried {
        records: Vec::new(),
        count: 0,
        retry: None,
    };
    loop {
        records.clear();
        let (batch, framed, compacted, stopping, retry) = {
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
            store.live = queue.live.take().unwrap_or(store.live);
            let framed = std::mem::take(&mut queue.framed);
            (
                queue.batch.take(),
                framed,
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
            let (bytes, count) = if carry {
                carried.records.extend_from_slice(&records);
                carried.count += framed;
                (&carried.records[..], carried.count)
            } else {
                (&records[..], framed)
            };
            let result = store.append(bytes, count);
            on_event(StoreEvent::Committed(&result));
            match &result {
                Ok(()) => {
                    if carry {
                        info!(
                            records = carried.count,
                            "the changes the state volume refused are written now"
                        );
                        carried = Carried {
                            records: Vec::new(),
                            count: 0,
                            retry: None,
                        };
                    }
                }
                Err(_) => carried.refused(&records, framed, Instant::now()),
            }
            result
        } else {
            Ok(())
        };
        if let Some(batch) = batch {
            batch.finish(result.map_err(Arc::new));
        }
        if records.capacity() > KEPT_BUFFER {
            records = Vec::with_capacity(BUFFER);
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
            let spawned = std::thread::Builder::new()
                .name("outbox-compact".into())
                .spawn(move || {
                    let result = compact_prefix(&dir, end.len, &space);
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
    let unwritten = carried.count;
    let stop = {
        let mut queue = shared.queue();
        queue.ended = true;
        queue.stop.take()
    };
    if let Some(ack) = stop {
        ack.finish(if carried.records.is_empty() {
            Ok(())
        } else {
            Err(Arc::new(StoreError {
                path: PathBuf::new(),
                message: format!("{unwritten} changes the state volume refused are not on disk"),
            }))
        });
    }
}

#[cfg(test)]
mod faults;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(super) fn update(c: char, check: &str, state: State) -> StatusUpdate {
        StatusUpdate {
            repo: "github.com/o/r".into(),
            status: CommitStatus {
                sha: Sha::parse(&c.to_string().repeat(40)).unwrap(),
                check: Check::new(check),
                state,
                description: format!("{state} on {c}"),
                target_url: (c == 'b').then(|| "https://ci.example/b".to_string()),
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
        (rec.pending, in_flight, written, rec.poll)
    }

    /// What the ops leave, by the model: replaying them in memory.
    pub(super) fn model(ops: &[Op]) -> Snapshot {
        let mut live = Live::default();
        for op in ops {
            live.apply(op.clone());
        }
        snapshot(live.into_recovered())
    }

    pub(super) fn reopen(dir: &Path) -> Snapshot {
        snapshot(Store::open(dir).unwrap().1)
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
        assert!(e.message.contains("not a flux-status outbox log"), "{e}");
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
        assert!(e.message.contains("another flux-status process"), "{e}");
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
        let upd = (key.clone(), state)
            .prop_map(|((c, x), s)| update((b'a' + c) as char, ["x", "y"][x as usize], s));
        prop_oneof![
            (upd.clone(), 0..1000u64).prop_map(|(u, ms)| Op::Pending(u, t(ms))),
            upd.clone().prop_map(|u| Op::Done(u.key())),
            upd.clone().prop_map(|u| Op::InFlight(u.key())),
            upd.clone().prop_map(|u| Op::Landed(u.key())),
            (upd.clone(), 0..100u64).prop_map(|(u, seq)| Op::Written(u, seq)),
            upd.prop_map(|u| Op::Forget(u.key())),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..8)).prop_map(Op::Poll),
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
                // The count the compaction rule goes by is the log's.
                prop_assert_eq!(store.records, replay(&dir.join(LOG)).unwrap().records);
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
                let ops = vec![
                    Op::Pending(u.clone(), t(i)),
                    Op::InFlight(u.key()),
                    Op::Written(u.clone(), i),
                    Op::Done(u.key()),
                    Op::Landed(u.key()),
                ];
                all.extend(ops.clone());
                // What still counts: the written state of each check seen so far.
                let live = (i as usize + 1).min(20);
                persister.submit(&ops, live).wait().await.unwrap();
            }
            persister.flush().await.unwrap();
            persister.stop().await.unwrap();
            assert!(persister.submit(&all[..1], 1).wait().await.is_err(), "stopped");
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
        let run = |store: Store, ops: &[Op], live: &dyn Fn(usize) -> usize| {
            let seen = compactions.clone();
            let persister = Persister::start(store, move |e| {
                if let StoreEvent::Compacted(r) = e {
                    seen.lock().unwrap().push(*r.as_ref().unwrap());
                }
            })
            .unwrap();
            rt.block_on(async {
                for (i, op) in ops.iter().enumerate() {
                    let submitted = persister.submit(std::slice::from_ref(op), live(i));
                    submitted.wait().await.unwrap();
                }
                // Lets a compaction under way finish first.
                persister.stop().await.unwrap();
            });
        };
        // A flood of new updates: every record counts, and the log grows far past the
        // size that would have it compacted.
        let (store, _) = Store::open_with(&dir, 8 << 10).unwrap();
        run(store, &pending, &|i| i + 1);
        assert!(
            compactions.lock().unwrap().is_empty(),
            "nothing to drop, nothing compacted"
        );
        let (mut store, _) = Store::open_with(&dir, 8 << 10).unwrap();
        assert_eq!((store.records, store.live), (400, 400), "counted at opening");
        // As if the log had just grown enough since its last compaction.
        store.compact_at = store.len;
        assert!(!store.wants_compaction(), "all records count");
        // Delivered one by one: compacted once half the records are dead.
        run(store, &done, &|i| updates.len() - i - 1);
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
                        let live = (task * each + i + 1) as usize;
                        persister
                            .submit(std::slice::from_ref(&op), live)
                            .wait()
                            .await
                            .unwrap();
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
        let waited =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), waiting.wait()).await });
        let e = waited.expect("answered, not left waiting").unwrap_err();
        assert_eq!(e.message, "persister stopped");
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
}
