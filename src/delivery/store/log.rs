//! The log file: opening it (lock, replay, repair), appending records durably, and the
//! room it takes on the volume. Compaction is in `compact`, the thread in `persister`.

use super::StoreError;
#[cfg(test)]
use super::codec::Op;
use super::codec::{Framed, MAGIC, Slot};
use super::read::{FileWindow, Records};
use super::replay::{Recovered, replay};
use super::space::Space;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{error, info, warn};

pub(super) const LOG: &str = "outbox.log";
/// A compaction (or the rewrite of a damaged log) under way; a start finding it knows
/// the rename never happened.
pub(super) const COMPACTING: &str = "outbox.log.compacting";
/// A new log until its magic is on disk: renamed into place then, so that a log
/// shorter than its magic is damage, never a creation cut short.
const CREATING: &str = "outbox.log.creating";
/// Held locked while a process uses the directory.
const LOCK: &str = "outbox.lock";
/// Left by development builds that kept the outbox in redb; not read.
const OLD_REDB: &str = "outbox.redb";
/// The file is extended with zeros this much ahead of the last record, so an append
/// does not change the file's size and its fdatasync commits no metadata (on ext4 a
/// size change costs a journal commit per fsync). A zero length ends the log.
pub(super) const PREALLOCATE: u64 = 1 << 20;
/// Zeros kept ahead of the records: fewer, and more are laid down. Once the volume has
/// no room for more, what is left of them is the room a compaction can use.
const CUSHION: u64 = PREALLOCATE / 2;
/// The log is not compacted below this size, while the volume has room.
const COMPACT_MIN: u64 = 4 << 20;
/// Nor below this once the volume is short of room.
const COMPACT_MIN_SHORT: u64 = 64 << 10;

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
        Ok(Err(why)) => Err(StoreError::Foreign {
            path: path.to_path_buf(),
            why,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(StoreError::io(path, "rewriting the damaged log")(e))
        }
    }
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A place in a log: its length there, and the whole records before it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Mark {
    pub len: u64,
    pub records: u64,
}

pub struct Store {
    pub(super) dir: PathBuf,
    pub(super) path: PathBuf,
    /// Written at `len`, never in append mode (the file runs ahead of the records).
    pub(super) file: File,
    /// Bytes in the log, all whole records.
    pub(super) len: u64,
    /// Whole records in the log, whether they still count or not.
    pub(super) records: u64,
    /// The slots that the log's records set (see `codec::slot`): as many records still
    /// count, and a compaction would keep.
    pub(super) live: HashSet<Slot>,
    /// The file's size: records, then zeros.
    pub(super) allocated: u64,
    /// False after a compaction's rename until its directory is fsynced.
    pub(super) dir_synced: bool,
    /// A failed write may have left bytes after `len` that could not be cut off: they
    /// are, before anything else is written.
    pub(super) stray: bool,
    /// Compact once the log reaches this size.
    pub(super) compact_at: u64,
    /// The log's size when the next compaction was last planned.
    pub(super) compact_base: u64,
    pub(super) compact_min: u64,
    /// The volume had no room for zeros ahead of the records (until a compaction).
    pub(super) short_of_space: bool,
    /// Said so in the log, and not yet that the room is back.
    pub(super) warned_short: bool,
    /// The last write failed.
    pub(super) refused: bool,
    /// The log's length and record count when a compaction was last started for want
    /// of room: not tried again until the log changed.
    pub(super) compact_tried: Option<(u64, u64)>,
    pub(super) space: Space,
    /// Found at opening; reported once the persister starts.
    pub(super) damage: Option<Damage>,
    /// Locked for as long as the store is open: two daemons on one state directory
    /// would interleave their records.
    _lock: File,
}

impl Store {
    pub fn open(dir: &Path) -> Result<(Store, Recovered), StoreError> {
        Store::open_with(dir, COMPACT_MIN)
    }

    pub(super) fn open_with(dir: &Path, compact_min: u64) -> Result<(Store, Recovered), StoreError> {
        let path = dir.join(LOG);
        let lock_path = dir.join(LOCK);
        std::fs::create_dir_all(dir).map_err(StoreError::io(dir, "creating the state directory"))?;
        let lock = File::create(&lock_path).map_err(StoreError::io(&lock_path, "opening the lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::io(&lock_path, "locking the state directory")(e));
            }
        }
        match std::fs::remove_file(dir.join(COMPACTING)) {
            Ok(()) => info!("removed an unfinished compaction of the outbox log; the log itself is whole"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::io(
                    &dir.join(COMPACTING),
                    "removing an unfinished compaction",
                )(e));
            }
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
            Err(e) => return Err(StoreError::io(&path, "reading the log's size")(e)),
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
            create_log(dir, &path).map_err(StoreError::io(&path, "creating the log"))?;
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
            .map_err(StoreError::io(&path, "opening the log"))?;
        let size = file
            .metadata()
            .map_err(StoreError::io(&path, "reading the log's size"))?
            .len();
        if size > replayed.end {
            // Zeros, or a write the crash interrupted: either way cut, so that no byte of
            // an unacknowledged write can line up with a later record.
            file.set_len(replayed.end)
                .and_then(|()| file.sync_all())
                .map_err(StoreError::io(
                    &path,
                    "cutting the log after its last whole record",
                ))?;
        }
        let mut store = Store {
            dir: dir.to_path_buf(),
            path: path.clone(),
            file,
            len: replayed.end,
            records: replayed.records,
            live: replayed.slots,
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
        let mut framed = Framed::default();
        framed.push_all(ops)?;
        self.append(&framed)
    }

    /// Appends framed records, in order, and makes them durable.
    pub(super) fn append(&mut self, records: &Framed) -> Result<(), StoreError> {
        let written = self
            .cut_stray()
            .and_then(|()| self.sync_dir_if_needed())
            .and_then(|()| self.extend_for(records.bytes.len() as u64))
            .and_then(|()| self.file.write_all_at(&records.bytes, self.len))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.refused = true;
            // Nothing of this write counts: cut it off so the next append follows the
            // last whole record (a failed fsync leaves the page cache in doubt), and so
            // that the zeros ahead give their room back.
            self.stray = true;
            let _ = self.cut_stray();
            return Err(StoreError::io(&self.path, "appending to the log")(e));
        }
        self.refused = false;
        self.len += records.bytes.len() as u64;
        self.records += records.count();
        for (slot, sets) in &records.slots {
            if *sets {
                self.live.insert(*slot);
            } else {
                self.live.remove(slot);
            }
        }
        Ok(())
    }

    /// Cuts the file back to its whole records after a failed write.
    pub(super) fn cut_stray(&mut self) -> std::io::Result<()> {
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
    pub(super) fn extend_for(&mut self, n: u64) -> std::io::Result<()> {
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
    pub(super) fn release_zeros(&mut self) {
        if self.allocated > self.len && self.file.set_len(self.len).is_ok() {
            self.space.shrink(self.allocated - self.len);
            self.allocated = self.len;
        }
    }

    /// Writes zeros from the end of the file up to `to`; on failure the file is cut
    /// back, giving their room back.
    pub(super) fn lay_zeros(&mut self, to: u64) -> std::io::Result<()> {
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
    pub(super) fn sync_dir_if_needed(&mut self) -> std::io::Result<()> {
        if !self.dir_synced {
            sync_dir(&self.dir)?;
            self.dir_synced = true;
        }
        Ok(())
    }

    pub(super) fn mark(&self) -> Mark {
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
    pub(super) fn wants_compaction(&self) -> bool {
        let dead = self.records.saturating_sub(self.live.len() as u64);
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

    /// The next compaction is due once the log has doubled from its size now (after
    /// opening, a compaction, or a failed one).
    pub(super) fn rearm_compaction(&mut self) {
        self.compact_base = self.len;
        self.compact_at = self.compact_min.max(2 * self.len);
    }
}
