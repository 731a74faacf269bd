//! The unit everything agrees on: one desired status on one commit of one repository.

use notifiers::{Check, CommitStatus, Sha};
use std::sync::Arc;

/// Which configured repository (and so which notifier) an update is for.
pub type RepoId = Arc<str>;

/// For maps looked up several times per accepted event (by key, by repository):
/// foldhash, seeded per process so keys from events cannot be chosen to collide
/// offline, instead of SipHash.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub repo: RepoId,
    pub status: CommitStatus,
}

/// Updates with the same key coalesce: only the newest state is worth sending.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub repo: RepoId,
    pub sha: Sha,
    pub check: Check,
}

impl StatusUpdate {
    pub fn key(&self) -> Key {
        Key {
            repo: self.repo.clone(),
            sha: self.status.sha.clone(),
            check: self.status.check.clone(),
        }
    }

    /// What must differ for a write to be worth making again.
    pub fn same_content(&self, other: &StatusUpdate) -> bool {
        self.status.state == other.status.state
            && self.status.description == other.status.description
            && self.status.target_url == other.status.target_url
    }
}
