//! Record framing: a change to the durable state ([`Op`]) to the bytes of one log
//! record and back, and which piece of state a record sets or clears ([`Slot`]).
//!
//! A record is its payload's length and CRC32 (little-endian, [`HEADER`] bytes), then
//! the payload: a [`Record`] in postcard. Adding a kind of record: a variant of [`Op`]
//! and of [`Record`] (at the end), and an arm in [`record`], [`op_of`] and [`slot`]
//! here, and one in `Live::apply` (replay). Every one of those matches is exhaustive,
//! so the compiler lists them.

use crate::update::{Key, StatusUpdate};
use notifiers::{Check, CommitStatus, Handle, Sha, State};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The file's first bytes: what it is, and the version of the record format.
pub const MAGIC: &[u8; 16] = b"flux-status:log1";
/// Payload length and CRC32, little-endian.
pub const HEADER: usize = 8;
/// The largest record payload, for the writer and the reader alike: the writer
/// refuses a larger change (see [`fits`]), the reader takes a larger length for damage.
/// Far beyond any bounded update (see `crate::update::MAX_DESCRIPTION_BYTES`).
pub const MAX_RECORD: usize = 1 << 20;

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
    /// The provider object a check's writes update (see [`notifiers::Receipt`]), or
    /// none any more.
    Handle(Key, Option<Handle>),
}

#[derive(Serialize, Deserialize)]
pub(super) struct KeyRecord<'a> {
    repo: &'a str,
    sha: &'a str,
    check: &'a str,
}

#[derive(Serialize, Deserialize)]
pub(super) struct UpdateRecord<'a> {
    #[serde(borrow)]
    key: KeyRecord<'a>,
    state: &'a str,
    description: &'a str,
    target_url: Option<&'a str>,
}

/// One change as stored (postcard). postcard numbers variants by position: add new
/// ones at the end, never reorder, so that older logs still read.
#[derive(Serialize, Deserialize)]
pub(super) enum Record<'a> {
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
    Handle {
        #[serde(borrow)]
        key: KeyRecord<'a>,
        handle: Option<&'a str>,
    },
    /// [`Record::Pending`] of an update with a summary (a check run's Markdown): a
    /// variant of its own, so that logs written before summaries existed still read.
    PendingSummary {
        #[serde(borrow)]
        update: UpdateRecord<'a>,
        at: u64,
        summary: &'a str,
    },
    /// [`Record::Pending`] of an update that names its branch (a deployment's), with
    /// its summary if it has one.
    PendingRef {
        #[serde(borrow)]
        update: UpdateRecord<'a>,
        at: u64,
        summary: Option<&'a str>,
        git_ref: &'a str,
    },
}

impl<'a> Record<'a> {
    /// Decodes a record's payload; `None` when it is not one.
    pub(super) fn decode(payload: &'a [u8]) -> Option<Record<'a>> {
        postcard::from_bytes(payload).ok()
    }
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

pub(super) fn record(op: &Op) -> Record<'_> {
    match op {
        Op::Pending(u, at) => match (&u.status.summary, &u.status.git_ref) {
            (None, None) => Record::Pending {
                update: update_record(u),
                at: millis(*at),
            },
            (Some(summary), None) => Record::PendingSummary {
                update: update_record(u),
                at: millis(*at),
                summary,
            },
            (summary, Some(git_ref)) => Record::PendingRef {
                update: update_record(u),
                at: millis(*at),
                summary: summary.as_deref(),
                git_ref,
            },
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
        Op::Handle(k, h) => Record::Handle {
            key: key_record(k),
            handle: h.as_ref().map(Handle::as_str),
        },
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
        deploy: None,
        repo: r.key.repo.into(),
        status: CommitStatus {
            sha: Sha::parse(r.key.sha).ok()?,
            check: Check::new(r.key.check),
            state,
            description: r.description.to_string(),
            target_url: r.target_url.map(str::to_string),
            summary: None,
            git_ref: None,
        },
    })
}

/// The change a record stands for; `None` when a field does not parse.
pub(super) fn op_of(r: Record<'_>) -> Option<Op> {
    Some(match r {
        Record::Pending { update, at } => {
            Op::Pending(update_of(update)?, UNIX_EPOCH + Duration::from_millis(at))
        }
        Record::PendingSummary { update, at, summary } => {
            let mut u = update_of(update)?;
            u.status.summary = Some(summary.to_string());
            Op::Pending(u, UNIX_EPOCH + Duration::from_millis(at))
        }
        Record::PendingRef {
            update,
            at,
            summary,
            git_ref,
        } => {
            let mut u = update_of(update)?;
            u.status.summary = summary.map(str::to_string);
            u.status.git_ref = Some(git_ref.to_string());
            Op::Pending(u, UNIX_EPOCH + Duration::from_millis(at))
        }
        Record::Done(k) => Op::Done(key_of(k)?),
        Record::InFlight(k) => Op::InFlight(key_of(k)?),
        Record::Landed(k) => Op::Landed(key_of(k)?),
        Record::Written { update, seq } => Op::Written(update_of(update)?, seq),
        Record::Forget(k) => Op::Forget(key_of(k)?),
        Record::Poll(p) => Op::Poll(p.map(<[u8]>::to_vec)),
        Record::Handle { key, handle } => Op::Handle(
            key_of(key)?,
            match handle {
                Some(h) => Some(Handle::new(h)?),
                None => None,
            },
        ),
    })
}

/// A piece of state a record sets or clears: a digest of its kind and its key.
pub type Slot = [u8; 16];

/// The slot a record sets or clears, and whether it sets it. The latest record per
/// slot that sets it is what counts: a compacted log holds exactly those.
pub(super) fn slot(r: &Record<'_>) -> (Slot, bool) {
    use sha2::Digest;
    let (kind, key, sets) = match r {
        Record::Pending { update, .. }
        | Record::PendingSummary { update, .. }
        | Record::PendingRef { update, .. } => (0u8, Some(&update.key), true),
        Record::Done(k) => (0, Some(k), false),
        Record::InFlight(k) => (1, Some(k), true),
        Record::Landed(k) => (1, Some(k), false),
        Record::Written { update, .. } => (2, Some(&update.key), true),
        Record::Forget(k) => (2, Some(k), false),
        Record::Poll(p) => (3, None, p.is_some()),
        Record::Handle { key, handle } => (4, Some(key), handle.is_some()),
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

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("could not encode a change: {0}")]
    Encode(#[from] postcard::Error),
    #[error("a change of {0} bytes is over the store's record limit ({MAX_RECORD} bytes)")]
    TooLarge(usize),
}

/// Framed records, and the slot each one sets or clears, in order: what one append
/// writes, and how it changes what counts.
#[derive(Default)]
pub(super) struct Framed {
    pub bytes: Vec<u8>,
    pub slots: Vec<(Slot, bool)>,
}

impl Framed {
    pub(super) fn with_capacity(bytes: usize) -> Framed {
        Framed {
            bytes: Vec::with_capacity(bytes),
            slots: Vec::new(),
        }
    }

    /// How many records it holds.
    pub(super) fn count(&self) -> u64 {
        self.slots.len() as u64
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.slots.clear();
    }

    pub(super) fn extend_from(&mut self, other: &Framed) {
        self.bytes.extend_from_slice(&other.bytes);
        self.slots.extend_from_slice(&other.slots);
    }

    /// Appends `ops`, framed in order: all of them, or nothing on error.
    pub(super) fn push_all(&mut self, ops: &[Op]) -> Result<(), FrameError> {
        let (bytes, slots) = (self.bytes.len(), self.slots.len());
        for op in ops {
            let record = record(op);
            if let Err(e) = frame(&record, &mut self.bytes) {
                self.bytes.truncate(bytes);
                self.slots.truncate(slots);
                return Err(e);
            }
            self.slots.push(slot(&record));
        }
        Ok(())
    }
}

/// Appends one framed record (length, CRC32, payload) to `buf`.
pub(super) fn frame(record: &Record<'_>, buf: &mut Vec<u8>) -> Result<(), FrameError> {
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
        u.status.summary.as_ref().map_or(0, String::len),
    ];
    // Each string's length is a varint of at most 10 bytes; tags and the u64 take 32.
    strings.iter().map(|n| n + 10).sum::<usize>() + 32 <= MAX_RECORD
}

pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of every kind of record are what older builds wrote and read: a log
    /// written before a new kind was added still replays.
    #[test]
    fn record_kinds_keep_their_numbers() {
        let key = Key {
            repo: "r".into(),
            sha: Sha::parse(&"a".repeat(40)).unwrap(),
            check: Check::new("c"),
        };
        let tags: Vec<u8> = [
            Op::Done(key.clone()),
            Op::Forget(key.clone()),
            Op::Poll(None),
            Op::Handle(key.clone(), Handle::new("42")),
        ]
        .iter()
        .map(|op| postcard::to_allocvec(&record(op)).unwrap()[0])
        .collect();
        assert_eq!(tags, [1, 5, 6, 7]);
        let handle = Op::Handle(key, Handle::new("check-run/42"));
        let bytes = postcard::to_allocvec(&record(&handle)).unwrap();
        assert_eq!(op_of(Record::decode(&bytes).unwrap()), Some(handle));
    }

    /// Whatever an update holds, once bounded it makes a record the store takes.
    #[test]
    fn a_bounded_update_with_the_longest_summary_fits_a_record() {
        use crate::update::{MAX_DESCRIPTION_BYTES, MAX_SUMMARY_BYTES, MAX_TARGET_URL_BYTES};
        let mut u = super::super::tests::update('a', "c", State::Failed);
        u.status.description = "d".repeat(MAX_DESCRIPTION_BYTES * 2);
        u.status.summary = Some("s".repeat(MAX_SUMMARY_BYTES * 2));
        u.status.target_url = Some("u".repeat(MAX_TARGET_URL_BYTES));
        u.bound().unwrap();
        assert!(fits(&u));
        let mut framed = Framed::default();
        let at = UNIX_EPOCH + Duration::from_secs(1);
        framed.push_all(&[Op::Pending(u, at)]).unwrap();
    }

    /// An update with a summary is a record kind of its own, after the others; one
    /// without is the same `Pending` record older builds wrote.
    #[test]
    fn a_summary_is_kept_in_its_own_record_kind() {
        let mut u = super::super::tests::update('a', "c", State::Failed);
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let plain = postcard::to_allocvec(&record(&Op::Pending(u.clone(), at))).unwrap();
        assert_eq!(plain[0], 0);
        u.status.summary = Some("| resource | error |\n|---|---|\n| a | b \\| c |".into());
        let op = Op::Pending(u, at);
        let bytes = postcard::to_allocvec(&record(&op)).unwrap();
        assert_eq!(bytes[0], 8);
        assert_eq!(op_of(Record::decode(&bytes).unwrap()), Some(op));
    }
}
