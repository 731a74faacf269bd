//! Replay: what a log's records leave, read at start, past any damage.

use super::StoreError;
use super::codec::{HEADER, Op, Record, Slot, op_of, slot};
use super::read::{FileWindow, Gap, Records, Source, Tail};
use crate::update::{Key, StatusUpdate};
use notifiers::Handle;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::time::SystemTime;

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
    /// The provider object each check's writes update, oldest first.
    pub handles: Vec<(Key, Handle)>,
}

/// The state a log describes: what replaying its records leaves.
#[derive(Default)]
pub(super) struct Live {
    /// Update, accepted at, and the order of that acceptance.
    pending: HashMap<Key, (StatusUpdate, SystemTime, u64)>,
    in_flight: HashSet<Key>,
    written: HashMap<Key, (StatusUpdate, u64)>,
    poll: Option<Vec<u8>>,
    /// Handle, and the order it was set in.
    handles: HashMap<Key, (Handle, u64)>,
    next_order: u64,
}

impl Live {
    pub(super) fn apply(&mut self, op: Op) {
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
            Op::Handle(k, Some(h)) => {
                self.next_order += 1;
                self.handles.insert(k, (h, self.next_order));
            }
            Op::Handle(k, None) => {
                self.handles.remove(&k);
            }
        }
    }

    pub(super) fn into_recovered(self) -> Recovered {
        let mut pending: Vec<_> = self.pending.into_values().collect();
        pending.sort_by_key(|(_, _, order)| *order);
        let mut written: Vec<_> = self.written.into_values().collect();
        written.sort_by_key(|(_, seq)| *seq);
        let mut handles: Vec<_> = self.handles.into_iter().collect();
        handles.sort_by_key(|(_, (_, order))| *order);
        Recovered {
            pending: pending.into_iter().map(|(u, at, _)| (u, at)).collect(),
            in_flight: self.in_flight.into_iter().collect(),
            written,
            poll: self.poll,
            handles: handles.into_iter().map(|(k, (h, _))| (k, h)).collect(),
        }
    }
}

/// What reading a log found.
pub(super) struct Replayed {
    pub live: Live,
    /// The slots the records set, as compaction would keep them: how many records
    /// still count.
    pub slots: HashSet<Slot>,
    /// Where the last whole record ends.
    pub end: u64,
    /// Damage skipped between whole records.
    pub gaps: Vec<Gap>,
    /// What follows the last whole record, if anything does.
    pub tail: Option<Tail>,
    /// Whole records whose contents did not parse (skipped).
    pub unreadable: u64,
    /// Whole records read, those skipped included.
    pub records: u64,
}

/// Replays a log's whole records, past any damage; `Ok(Err(why))` when the source is
/// not an outbox log.
fn replay_source<S: Source>(src: S) -> std::io::Result<Result<Replayed, &'static str>> {
    let mut records = match Records::open(src, true)? {
        Ok(records) => records,
        Err(why) => return Ok(Err(why)),
    };
    let (mut live, mut slots, mut unreadable, mut read) = (Live::default(), HashSet::new(), 0, 0);
    while records.next()?.is_some() {
        read += 1;
        let frame = records.frame()?;
        let record = Record::decode(&frame[HEADER..]);
        // Counted as compaction counts it: by its slot, whether its fields parse or not.
        if let Some(r) = &record {
            match slot(r) {
                (s, true) => slots.insert(s),
                (s, false) => slots.remove(&s),
            };
        }
        // A whole record that does not parse (a bug, not a crash): skip it, keep going.
        match record.and_then(op_of) {
            Some(op) => live.apply(op),
            None => unreadable += 1,
        }
    }
    Ok(Ok(Replayed {
        live,
        slots,
        end: records.end,
        gaps: std::mem::take(&mut records.gaps),
        tail: records.tail,
        unreadable,
        records: read,
    }))
}

/// Replays the whole log at `path`.
pub(super) fn replay(path: &Path) -> Result<Replayed, StoreError> {
    let window = File::open(path)
        .and_then(|f| FileWindow::new(f, None))
        .map_err(StoreError::io(path, "opening the log"))?;
    replay_source(window)
        .map_err(StoreError::io(path, "reading the log"))?
        .map_err(|why| StoreError::Foreign {
            path: path.to_path_buf(),
            why,
        })
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
