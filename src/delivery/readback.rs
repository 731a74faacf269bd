//! Reading a commit's statuses back, once for all of its keys in doubt.
//!
//! A key whose last attempt may have landed is read back before its next write.
//! The keys of one commit come due together (after a restart, all at once), and one
//! listing answers for all of them: a listing taken after a key's doubt ended stays
//! true for that key until we write it again, and a write that leaves it in doubt
//! moves its doubt past the listing. So a listing is kept per commit and reused by
//! every key whose doubt ended before it was taken.

use crate::update::{Map, RepoId};
use notifiers::{Check, NotifyError, ReadStatus, Sha, State};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Commits whose listing is kept. Beyond it the listings not being read are dropped:
/// losing one costs a read, never a wrong answer.
const KEPT: usize = 1024;

/// The newest state per check on one commit, as read at `taken`.
#[derive(Debug)]
pub struct Listing {
    pub taken: Instant,
    top: HashMap<Check, State>,
}

impl Listing {
    /// `statuses` newest first, as [`notifiers::Notifier::list_statuses`] returns them.
    pub fn new(taken: Instant, statuses: Vec<ReadStatus>) -> Self {
        let mut top = HashMap::new();
        for s in statuses {
            top.entry(s.check).or_insert(s.state);
        }
        Listing { taken, top }
    }

    /// The state the provider shows on top for `check`, if any.
    pub fn top(&self, check: &Check) -> Option<State> {
        self.top.get(check).copied()
    }
}

/// What is known of one commit: its last listing, and its last failed read.
#[derive(Default)]
struct Kept {
    listing: Option<Arc<Listing>>,
    failed: Option<(Instant, NotifyError)>,
}

type Slot = Arc<tokio::sync::Mutex<Kept>>;

#[derive(Default)]
pub struct Listings {
    slots: Mutex<Map<(RepoId, Sha), Slot>>,
}

impl Listings {
    /// A listing of `sha` taken no earlier than `after`: the one kept if it is recent
    /// enough, else one read now with `read`. Keys of the same commit asking at once
    /// wait for the same read, and share its failure too: during an outage, one
    /// failed read per commit rather than one per key.
    pub async fn at_or_after<F, Fut>(
        &self,
        repo: &RepoId,
        sha: &Sha,
        after: Instant,
        read: F,
    ) -> Result<Arc<Listing>, NotifyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<ReadStatus>, NotifyError>>,
    {
        let asked = Instant::now();
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() >= KEPT {
                slots.retain(|_, s| Arc::strong_count(s) > 1);
            }
            slots.entry((repo.clone(), sha.clone())).or_default().clone()
        };
        let mut kept = slot.lock().await;
        if let Some(listing) = kept.listing.as_ref().filter(|l| l.taken >= after) {
            return Ok(listing.clone());
        }
        if let Some((_, e)) = kept.failed.as_ref().filter(|(at, _)| *at >= asked) {
            return Err(e.clone());
        }
        let taken = Instant::now();
        match read().await {
            Ok(statuses) => {
                let listing = Arc::new(Listing::new(taken, statuses));
                *kept = Kept {
                    listing: Some(listing.clone()),
                    failed: None,
                };
                Ok(listing)
            }
            Err(e) => {
                kept.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn read(check: &str, state: State, id: i64) -> ReadStatus {
        ReadStatus {
            check: Check::new(check),
            state,
            description: String::new(),
            id,
        }
    }

    #[test]
    fn the_newest_status_per_check_is_on_top() {
        let l = Listing::new(
            Instant::now(),
            vec![
                read("a", State::Pending, 3),
                read("b", State::Failed, 2),
                read("a", State::Succeeded, 1),
            ],
        );
        assert_eq!(l.top(&Check::new("a")), Some(State::Pending));
        assert_eq!(l.top(&Check::new("b")), Some(State::Failed));
        assert_eq!(l.top(&Check::new("c")), None);
    }

    #[tokio::test]
    async fn one_read_per_commit_until_a_newer_one_is_needed() {
        let listings = Listings::default();
        let reads = AtomicUsize::new(0);
        let repo: RepoId = "r".into();
        let sha = Sha::parse(&"a".repeat(40)).unwrap();
        let other = Sha::parse(&"b".repeat(40)).unwrap();
        let t0 = Instant::now();
        let read_once = || async {
            reads.fetch_add(1, Ordering::Relaxed);
            Ok(vec![read("c", State::Succeeded, 1)])
        };
        for _ in 0..5 {
            let l = listings.at_or_after(&repo, &sha, t0, read_once).await.unwrap();
            assert_eq!(l.top(&Check::new("c")), Some(State::Succeeded));
        }
        assert_eq!(
            reads.load(Ordering::Relaxed),
            1,
            "the commit's keys share one read"
        );
        listings.at_or_after(&repo, &other, t0, read_once).await.unwrap();
        assert_eq!(reads.load(Ordering::Relaxed), 2, "another commit, another read");
        let later = Instant::now() + std::time::Duration::from_millis(1);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        listings.at_or_after(&repo, &sha, later, read_once).await.unwrap();
        assert_eq!(
            reads.load(Ordering::Relaxed),
            3,
            "a key whose doubt ended after the kept listing reads again"
        );
    }

    fn unavailable() -> NotifyError {
        NotifyError {
            provider: "github",
            retry: notifiers::Retry::Transient,
            reason: notifiers::Reason::ServerError,
            status: Some(503),
            message: String::new(),
            retry_after: None,
        }
    }

    #[tokio::test]
    async fn keys_waiting_on_a_failed_read_share_its_failure_and_later_ones_read_again() {
        let listings = Arc::new(Listings::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let repo: RepoId = "r".into();
        let sha = Sha::parse(&"c".repeat(40)).unwrap();
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let gate = Arc::new(tokio::sync::Mutex::new(Some(gate)));
        let t0 = Instant::now();
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let (listings, repo, sha) = (listings.clone(), repo.clone(), sha.clone());
            let (reads, gate) = (reads.clone(), gate.clone());
            waiting.spawn(async move {
                let read = || async move {
                    reads.fetch_add(1, Ordering::Relaxed);
                    // The first read hangs until the others queue behind it.
                    if let Some(g) = gate.lock().await.take() {
                        let _ = g.await;
                    }
                    Err(unavailable())
                };
                listings.at_or_after(&repo, &sha, t0, read).await.is_err()
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        release.send(()).unwrap();
        while let Some(failed) = waiting.join_next().await {
            assert!(failed.unwrap());
        }
        assert_eq!(reads.load(Ordering::Relaxed), 1, "one failed read for the three");
        let again = listings
            .at_or_after(&repo, &sha, t0, || async {
                reads.fetch_add(1, Ordering::Relaxed);
                Err(unavailable())
            })
            .await;
        assert!(again.is_err());
        assert_eq!(
            reads.load(Ordering::Relaxed),
            2,
            "a failure is not kept for later keys"
        );
    }
}
