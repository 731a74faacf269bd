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
//!   and the log is rewritten with every whole record (see `read`, `replay`);
//! - once the log has grown to twice what it held after the last compaction, a
//!   helper thread copies the records of its first bytes that still count into a new
//!   file while appends go on; the persister then copies what was appended meanwhile
//!   and renames the new file over the old one;
//! - a commit the disk refused is kept and tried again (sooner after a compaction
//!   made room), so the store comes back once the volume has room, without a restart.
//!
//! One job per file: `codec` (a change to a record's bytes and back), `read` (a log's
//! whole records, past damage), `replay` (the state they leave), `log` (the file:
//! opening, appending, room), `compact`, and `persister` (the thread, group commit).

mod codec;
mod compact;
mod error;
mod log;
mod persister;
mod read;
mod replay;
mod space;

pub use codec::{MAX_RECORD, Op, fits, millis};
pub use error::StoreError;
pub use log::{Damage, Store};
pub use persister::{Durable, Persister, StoreEvent};
pub use replay::{Recovered, replay_bytes};

#[cfg(test)]
mod faults;
#[cfg(test)]
mod tests;
