//! What can go wrong with the store, with the file and the I/O error kept.

use super::codec::FrameError;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        /// What the store was doing: `opening the log`, `fsync`, ...
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("state store {path}: another flux-status process is using this state directory")]
    Locked { path: PathBuf },
    /// The file is not an outbox log: left untouched.
    #[error("state store {path}: {why}")]
    Foreign { path: PathBuf, why: &'static str },
    /// Compaction found fewer whole records than the log held.
    #[error("state store {path}: the log reads back only to byte {read} of {end}")]
    ReadsBackShort { path: PathBuf, read: u64, end: u64 },
    /// A change the store cannot write as a record.
    #[error("state store: {0}")]
    Record(#[from] FrameError),
    #[error("state store: persister stopped")]
    Stopped,
    /// Stopping with changes the disk refused still unwritten.
    #[error("state store: {count} changes the state volume refused are not on disk")]
    Unwritten { count: u64 },
}

impl StoreError {
    /// An I/O error while doing `op` on `path`.
    pub(super) fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}
