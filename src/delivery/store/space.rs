//! The room the store's files may take, as tests set it: a volume that fills up, without
//! a real one (mounting a small filesystem needs root).
//!
//! Unlimited unless a test sets a limit. The store reports every change in the size of
//! its files here: growth takes from the room left (and fails once there is none, as a
//! write does with ENOSPC), shrinking and deleting give it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

const UNLIMITED: i64 = i64::MAX;

/// Room left (`UNLIMITED` unless a test set it), and whether a write found none since
/// it was last asked.
#[derive(Clone, Debug)]
pub(super) struct Space(Arc<(AtomicI64, AtomicBool)>);

impl Default for Space {
    fn default() -> Self {
        Space(Arc::new((AtomicI64::new(UNLIMITED), AtomicBool::new(false))))
    }
}

/// ENOSPC, or a quota's EDQUOT.
pub(super) fn no_room(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

impl Space {
    /// Passes `e` on, remembering whether it said the volume has no room.
    pub(super) fn note(&self, e: std::io::Error) -> std::io::Error {
        if no_room(&e) {
            self.0.1.store(true, Ordering::Release);
        }
        e
    }

    /// Whether a write found no room since the last call.
    pub(super) fn found_full(&self) -> bool {
        self.0.1.swap(false, Ordering::AcqRel)
    }

    /// Takes `bytes` of room for a file to grow by, or fails as a full volume does.
    pub(super) fn grow(&self, bytes: u64) -> std::io::Result<()> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let taken = self
            .0
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                if left == UNLIMITED {
                    Some(left)
                } else {
                    (left >= bytes).then(|| left - bytes)
                }
            });
        taken.map(|_| ()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "No space left on device (the test's limit)",
            )
        })
    }

    /// Gives back the room of `bytes` a file no longer takes.
    pub(super) fn shrink(&self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let _ = self
            .0
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                (left != UNLIMITED).then(|| left.saturating_add(bytes).min(UNLIMITED - 1))
            });
    }

    /// Sets the room left, as a test fills or frees the volume.
    #[cfg(test)]
    pub(super) fn set_left(&self, bytes: u64) {
        self.0.0.store(
            i64::try_from(bytes).unwrap_or(UNLIMITED - 1).min(UNLIMITED - 1),
            Ordering::Release,
        );
    }

    #[cfg(test)]
    pub(super) fn left(&self) -> u64 {
        self.0.0.load(Ordering::Acquire) as u64
    }
}

/// A writer whose every write first takes its room.
pub(super) struct Growing<W> {
    pub(super) inner: W,
    pub(super) space: Space,
}

impl<W: std::io::Write> std::io::Write for Growing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.space
            .grow(buf.len() as u64)
            .map_err(|e| self.space.note(e))?;
        match self.inner.write(buf) {
            Ok(n) => {
                self.space.shrink((buf.len() - n) as u64);
                Ok(n)
            }
            Err(e) => {
                self.space.shrink(buf.len() as u64);
                Err(self.space.note(e))
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
