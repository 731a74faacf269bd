//! What delivery asks of a provider: one trait, and what a write gives back.

use crate::{CommitStatus, NotifyError, ReadStatus, Sha, State};

/// Writes statuses to one repository.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync {
    /// Bounded label for logs and metrics (`github`, `dry-run`, …).
    fn name(&self) -> &'static str;

    /// The repository, printable: host and path, never credentials.
    fn repo(&self) -> &str;

    /// Writes one status. Truncation to the provider's limits happens here.
    ///
    /// `previous` is the handle the last write for the same repository, commit and
    /// check returned, kept by delivery across restarts: a provider whose objects are
    /// updated in place (a check run, a deployment) updates that object rather than
    /// create another.
    async fn write(&self, status: &CommitStatus, previous: Option<&Handle>) -> Result<Receipt, NotifyError>;

    /// A cheap authenticated read of the repository, to find a bad credential or a
    /// wrong repository at startup rather than at the first deploy.
    async fn check_credentials(&self) -> Result<(), NotifyError>;

    /// Every status on the commit that maps to one of our states, newest first, all
    /// pages followed. Statuses in states we do not know are left out.
    async fn list_statuses(&self, sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError>;

    /// The state [`list_statuses`](Notifier::list_statuses) shows once `state` is
    /// written: a provider with fewer states folds some together (GitHub shows a
    /// canceled deploy as `error`, read back as failed).
    fn reads_back_as(&self, state: State) -> State {
        state
    }
}

/// What a successful write gives back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    pub budget: Budget,
    /// The provider object that now stands for the status (a check run's id), to be
    /// given back with the next write for the same check. `None` keeps the handle
    /// the write was given, if any: commit statuses have none.
    pub handle: Option<Handle>,
}

impl From<Budget> for Receipt {
    fn from(budget: Budget) -> Self {
        Receipt { budget, handle: None }
    }
}

/// What a provider said of our remaining request budget, when it said anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    pub remaining: Option<u64>,
    /// With the budget spent: how long until it is refilled.
    pub reset_after: Option<std::time::Duration>,
}

/// A provider-defined reference to the object a write made (a check-run or deployment
/// id), opaque to everything but the provider that made it. Bounded, because
/// delivery keeps it in the outbox log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Handle(String);

impl Handle {
    /// Far beyond any id a provider hands out.
    pub const MAX_BYTES: usize = 1024;

    /// `None` when `id` is empty or longer than [`Handle::MAX_BYTES`].
    pub fn new(id: impl Into<String>) -> Option<Handle> {
        let id = id.into();
        (!id.is_empty() && id.len() <= Self::MAX_BYTES).then_some(Handle(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
