//! The unit everything agrees on: one desired status on one commit of one repository.

use notifiers::{Check, CommitStatus, Sha, State};
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
    /// What the status says of its commit's deployment (`--deployments`), read by
    /// [`crate::deployments`] before the update is stored; never stored itself.
    pub deploy: Option<Deploy>,
}

/// What one status says of the deployment of its commit to the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deploy {
    /// One part of the deploy says where it stands: a Flux v2 object, or fluxd's
    /// sync. A sync that `awaits_rollout` succeeded and leaves the verdict to the
    /// workload check.
    Part {
        part: Check,
        /// How a description names the part when several deploy one commit.
        label: String,
        state: State,
        awaits_rollout: bool,
        /// The branch the commit was deployed from, when the event names it: the
        /// deployment's ref on GitLab.
        git_ref: Option<String>,
    },
    /// fluxd's workload check on the commit: decides the sync part that awaits it.
    Rollout { part: Check, state: State },
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

/// What an update keeps of its description: more than any provider shows (GitHub
/// check-run summaries stop at 65,535 characters), so a cut here is never what a
/// reader sees, while one huge error text cannot make a record the outbox log refuses.
pub const MAX_DESCRIPTION_BYTES: usize = 64 << 10;
/// What an update keeps of its summary: GitHub's 65,535 characters at up to four
/// bytes each; the check-run notifier cuts to the characters GitHub takes.
pub const MAX_SUMMARY_BYTES: usize = 256 << 10;
/// Ends a description cut to [`MAX_DESCRIPTION_BYTES`].
pub const TRUNCATED: &str = " …[truncated]";
/// A longer target URL is dropped, not cut: a cut link leads nowhere, and GitLab
/// refuses any over 255 characters anyway.
pub const MAX_TARGET_URL_BYTES: usize = 8 << 10;
/// A check names the status: cutting it would merge distinct checks, so a longer one
/// is refused. Providers cap names at about 255 characters.
pub const MAX_CHECK_BYTES: usize = 1 << 10;

/// Why an update cannot be kept at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Oversized {
    #[error("check name of {0} bytes (at most {MAX_CHECK_BYTES})")]
    Check(usize),
    #[error("repository name of {0} bytes")]
    Repo(usize),
}

/// What [`StatusUpdate::bound`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The description's length before it was cut.
    pub description_from: Option<usize>,
    /// The length of the target URL dropped.
    pub target_url_dropped: Option<usize>,
}

impl Cut {
    pub fn any(&self) -> bool {
        self.description_from.is_some() || self.target_url_dropped.is_some()
    }
}

impl StatusUpdate {
    /// Brings the update within the bounds every stored update keeps: its description
    /// cut on a character boundary (with [`TRUNCATED`] at the end), an overlong target
    /// URL dropped. A check or repository name too long to store refuses the update
    /// (left as it was).
    pub fn bound(&mut self) -> Result<Cut, Oversized> {
        let check = self.status.check.as_str().len();
        if check > MAX_CHECK_BYTES {
            return Err(Oversized::Check(check));
        }
        // Repositories come from the configuration; this only keeps a record in range.
        if self.repo.len() > MAX_DESCRIPTION_BYTES {
            return Err(Oversized::Repo(self.repo.len()));
        }
        let mut cut = Cut::default();
        let before = self.status.description.len();
        if cut_bytes(&mut self.status.description, MAX_DESCRIPTION_BYTES) {
            cut.description_from = Some(before);
        }
        if let Some(summary) = &mut self.status.summary {
            cut_bytes(summary, MAX_SUMMARY_BYTES);
        }
        // A branch name is short; one that is not was never a branch.
        if self
            .status
            .git_ref
            .as_ref()
            .is_some_and(|r| r.len() > MAX_CHECK_BYTES)
        {
            self.status.git_ref = None;
        }
        if let Some(url) = &self.status.target_url
            && url.len() > MAX_TARGET_URL_BYTES
        {
            cut.target_url_dropped = Some(url.len());
            self.status.target_url = None;
        }
        Ok(cut)
    }
}

/// Cuts `text` to `max` bytes on a character boundary, ending in [`TRUNCATED`];
/// returns whether it did.
fn cut_bytes(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max - TRUNCATED.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(TRUNCATED);
    text.shrink_to_fit();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(description: String, target_url: Option<String>, check: &str) -> StatusUpdate {
        StatusUpdate {
            deploy: None,
            repo: "github.com/o/r".into(),
            status: CommitStatus {
                sha: Sha::parse(&"a".repeat(40)).unwrap(),
                check: Check::new(check),
                state: State::Failed,
                description,
                target_url,
                summary: None,
                git_ref: None,
            },
        }
    }

    #[test]
    fn a_huge_description_is_cut_on_a_character_boundary_with_a_marker() {
        // Three-byte characters, so the limit falls inside one.
        let long = "€".repeat(1_500_000 / 3);
        let mut u = update(long.clone(), None, "c");
        let cut = u.bound().unwrap();
        let d = &u.status.description;
        assert!(d.len() <= MAX_DESCRIPTION_BYTES, "{}", d.len());
        assert!(d.len() > MAX_DESCRIPTION_BYTES - TRUNCATED.len() - 4);
        assert!(d.ends_with(TRUNCATED));
        assert!(long.starts_with(d.strip_suffix(TRUNCATED).unwrap()));
        assert_eq!(cut.description_from, Some(long.len()));
    }

    #[test]
    fn a_huge_summary_is_cut_to_what_the_store_keeps() {
        let mut u = update("d".into(), None, "c");
        let long = "ü".repeat(MAX_SUMMARY_BYTES);
        u.status.summary = Some(long.clone());
        u.bound().unwrap();
        let s = u.status.summary.as_deref().unwrap();
        assert!(
            s.len() <= MAX_SUMMARY_BYTES && s.ends_with(TRUNCATED),
            "{}",
            s.len()
        );
        assert!(long.starts_with(s.strip_suffix(TRUNCATED).unwrap()));
    }

    #[test]
    fn what_fits_is_kept_as_it_is() {
        let exact = "x".repeat(MAX_DESCRIPTION_BYTES);
        let url = Some(format!("https://ci.example/{}", "p".repeat(200)));
        let u = update(exact, url, "flux-status/dev/sync");
        let mut bounded = u.clone();
        let cut = bounded.bound().unwrap();
        assert_eq!(bounded, u);
        assert!(!cut.any());
    }

    #[test]
    fn an_overlong_target_url_is_dropped_and_an_overlong_check_refused() {
        let url = format!("https://ci.example/{}", "p".repeat(MAX_TARGET_URL_BYTES));
        let mut u = update("d".into(), Some(url.clone()), "c");
        let cut = u.bound().unwrap();
        assert_eq!(u.status.target_url, None);
        assert_eq!(cut.target_url_dropped, Some(url.len()));
        let check = "c".repeat(MAX_CHECK_BYTES + 1);
        let mut u = update("d".into(), None, &check);
        assert_eq!(u.bound(), Err(Oversized::Check(MAX_CHECK_BYTES + 1)));
        assert_eq!(u.status.check.as_str(), check, "left as it was");
    }
}
