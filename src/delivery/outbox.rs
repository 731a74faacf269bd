//! The pending updates, one per (repo, sha, check), and the memory of what was written.
//!
//! A state machine with the clock passed in, so every rule is tested without sleeping:
//! - an update for a key already pending replaces it (coalescing: newest wins);
//! - an update equal to what was last written for its key is not sent (dedup);
//! - a key is in flight at most once, so writes for one check never race;
//! - after an attempt whose outcome is unknown, the key is in doubt: nothing is
//!   written for it until that attempt can no longer land, and then only after a
//!   read-back; it stays pending (and out of the dedup memory) until then;
//! - the number of pending keys is bounded; a full outbox refuses, it never drops;
//! - updates due for sending wait in one queue per repository, taken in turn, so a
//!   repository held back by its provider's budget costs nothing per update, and
//!   one repository's flood does not hold up the others;
//! - the provider object a check's writes update (its handle, see
//!   [`notifiers::Receipt`]) is handed out with each lease for that check; the
//!   handles are bounded like the written memory.

use crate::update::{Key, Map, RepoId, StatusUpdate};
use notifiers::Handle;
use std::cmp::Reverse;
use std::collections::hash_map::Entry as Slot;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Replaced an older pending update for the same check.
    Coalesced,
    /// Equal to what is already written: nothing to do.
    Unchanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbox is full ({capacity} pending checks)")]
pub struct Full {
    pub capacity: usize,
}

/// An update handed out for sending; give it back through [`Outbox::complete`].
#[derive(Debug, Clone)]
pub struct Lease {
    pub update: StatusUpdate,
    generation: u64,
    pub attempt: u32,
    pub accepted_at: Instant,
    /// An earlier attempt, of this run or one before, may have landed: read the
    /// provider's statuses, taken no earlier than this, before writing.
    pub read_back: Option<Instant>,
    /// What the last write for this check returned, to be given to the next one.
    pub handle: Option<Handle>,
}

/// What a completion changed beyond the entry itself, for the durable store.
#[derive(Debug, Default, PartialEq)]
pub struct Completed {
    /// The entry left the outbox.
    pub removed: bool,
    /// Written states forgotten to keep the memory bounded.
    pub evicted: Vec<Key>,
    /// Order of this write in the written memory, when it was written.
    pub written_seq: Option<u64>,
    /// An attempt whose outcome is unknown is still unsettled: keep the key's
    /// in-flight mark, so that a restart reads back before writing.
    pub in_doubt: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    Written,
    /// Not applied (or nothing learnt): retry no earlier than after this delay.
    Retry(Duration),
    /// The write may have been applied, now or as late as `until`: retry after the
    /// delay, and not before `until`, with a read-back first.
    InDoubt {
        retry: Duration,
        until: Instant,
    },
    /// Dropped: retrying cannot help.
    Dropped,
}

#[derive(Debug)]
struct Entry {
    update: StatusUpdate,
    generation: u64,
    attempts: u32,
    in_flight: bool,
    accepted_at: Instant,
    /// Set while the entry waits in `delayed`; a heap item whose time differs is stale.
    due: Option<Instant>,
    /// Until when an attempt of unknown outcome may still land: the next write
    /// waits for it and for a read-back taken after it.
    doubt: Option<Instant>,
}

#[derive(Debug)]
pub struct Outbox {
    entries: Map<Key, Entry>,
    /// Keys due for sending, per repository (never empty).
    ready: Map<RepoId, VecDeque<Key>>,
    /// The repositories in `ready`, each once, in the order they get their turn.
    turns: VecDeque<RepoId>,
    /// Keys in `ready` (some may have gone stale since).
    ready_count: usize,
    /// Repositories with updates due that were held back, and until when.
    held: Map<RepoId, Instant>,
    /// Updates waiting out a retry backoff.
    delayed: BinaryHeap<Reverse<(Instant, u64, KeyOrd)>>,
    written: Written,
    handles: Handles,
    capacity: usize,
    next_generation: u64,
}

/// BinaryHeap needs Ord; keys are ordered by an insertion counter instead.
#[derive(Debug, PartialEq, Eq)]
struct KeyOrd(Key);
impl PartialOrd for KeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for KeyOrd {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Outbox {
    pub fn new(capacity: usize, written_capacity: usize) -> Self {
        Outbox {
            entries: Map::default(),
            ready: Map::default(),
            turns: VecDeque::new(),
            ready_count: 0,
            held: Map::default(),
            delayed: BinaryHeap::new(),
            written: Written::new(written_capacity),
            handles: Handles {
                map: Map::default(),
                order: VecDeque::new(),
                capacity: written_capacity,
            },
            capacity,
            next_generation: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Updates due for sending now (not waiting on a backoff or a rate limit).
    pub fn ready_len(&self) -> usize {
        self.ready_count
    }

    fn push_ready(&mut self, key: Key) {
        self.ready_count += 1;
        match self.ready.get_mut(&key.repo) {
            Some(queue) => queue.push_back(key),
            None => {
                self.turns.push_back(key.repo.clone());
                self.ready.insert(key.repo.clone(), VecDeque::from([key]));
            }
        }
    }

    /// Loads what a previous run left: written states (oldest first), then pending
    /// updates. Those in `in_flight` may have been sent by the previous run, which
    /// may still land until `settled_at`: they wait for it and are read back first.
    pub fn restore(
        &mut self,
        written: Vec<(StatusUpdate, u64)>,
        pending: Vec<(StatusUpdate, Instant)>,
        in_flight: &std::collections::HashSet<Key>,
        settled_at: Instant,
    ) {
        for (u, seq) in written {
            self.written.insert_with_seq(u.key(), &u, seq);
        }
        for (u, accepted_at) in pending {
            let key = u.key();
            self.next_generation += 1;
            let doubt = in_flight.contains(&key).then_some(settled_at);
            self.entries.insert(
                key.clone(),
                Entry {
                    update: u,
                    generation: self.next_generation,
                    attempts: 0,
                    in_flight: false,
                    accepted_at,
                    due: doubt,
                    doubt,
                },
            );
            match doubt {
                Some(at) => self
                    .delayed
                    .push(Reverse((at, self.next_generation, KeyOrd(key)))),
                None => self.push_ready(key),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Accepts all of `updates` or none of them, so an event is never half-queued.
    pub fn offer_all(&mut self, updates: Vec<StatusUpdate>, now: Instant) -> Result<Vec<Offer>, Full> {
        // Only near capacity are the new keys counted: on the ingest path, under the
        // lock, for every event.
        if self.entries.len() + updates.len() > self.capacity {
            let new_keys = updates
                .iter()
                .filter(|u| {
                    let key = u.key();
                    !self.entries.contains_key(&key) && !self.written.matches(&key, u)
                })
                .count();
            if self.entries.len() + new_keys > self.capacity {
                return Err(Full {
                    capacity: self.capacity,
                });
            }
        }
        Ok(updates.into_iter().map(|u| self.offer(u, now)).collect())
    }

    fn offer(&mut self, update: StatusUpdate, now: Instant) -> Offer {
        self.next_generation += 1;
        let generation = self.next_generation;
        match self.entries.entry(update.key()) {
            Slot::Occupied(mut slot) => {
                // Keep its place and backoff: a newer state does not jump a provider outage.
                let entry = slot.get_mut();
                entry.update = update;
                entry.generation = generation;
                Offer::Coalesced
            }
            Slot::Vacant(slot) if self.written.matches(slot.key(), &update) => Offer::Unchanged,
            Slot::Vacant(slot) => {
                let key = slot.key().clone();
                slot.insert(Entry {
                    update,
                    generation,
                    attempts: 0,
                    in_flight: false,
                    accepted_at: now,
                    due: None,
                    doubt: None,
                });
                self.push_ready(key);
                Offer::Queued
            }
        }
    }

    /// The next update due for sending whose repository `paused` does not hold back,
    /// taking repositories in turn. `paused` returns when a repository's notifier may
    /// send again, if it is paused. Also returns the keys it found already written and
    /// removed.
    pub fn next_ready(
        &mut self,
        now: Instant,
        paused: impl Fn(&RepoId) -> Option<Instant>,
    ) -> (Option<Lease>, Vec<Key>) {
        self.promote_due(now);
        let mut deduplicated = Vec::new();
        for _ in 0..self.turns.len() {
            let Some(repo) = self.turns.pop_front() else { break };
            if let Some(until) = paused(&repo) {
                // Its queue waits as it is: no cost per update while held.
                self.held.insert(repo.clone(), until);
                self.turns.push_back(repo);
                continue;
            }
            self.held.remove(&repo);
            let Some(queue) = self.ready.get_mut(&repo) else {
                continue;
            };
            let mut lease = None;
            while let Some(key) = queue.pop_front() {
                self.ready_count -= 1;
                let Some(entry) = self.entries.get_mut(&key) else {
                    continue;
                };
                if entry.in_flight || entry.due.is_some() {
                    continue;
                }
                // In doubt, what the provider shows is unknown: the read-back decides.
                if entry.doubt.is_none() && self.written.matches(&key, &entry.update) {
                    self.entries.remove(&key);
                    deduplicated.push(key);
                    continue;
                }
                entry.in_flight = true;
                lease = Some(Lease {
                    update: entry.update.clone(),
                    generation: entry.generation,
                    attempt: entry.attempts + 1,
                    accepted_at: entry.accepted_at,
                    read_back: entry.doubt,
                    handle: self.handles.map.get(&key).cloned(),
                });
                break;
            }
            if queue.is_empty() {
                self.ready.remove(&repo);
            } else {
                self.turns.push_back(repo);
            }
            if lease.is_some() {
                return (lease, deduplicated);
            }
        }
        (None, deduplicated)
    }

    fn promote_due(&mut self, now: Instant) {
        while let Some(Reverse((at, _, _))) = self.delayed.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((at, _, KeyOrd(key)))) = self.delayed.pop()
                && let Some(entry) = self.entries.get_mut(&key)
                && entry.due == Some(at)
            {
                entry.due = None;
                self.push_ready(key);
            }
        }
    }

    /// Whether a new update for `repo` gives the dispatcher something to do now. Not
    /// while the repository is held back with updates queued: the dispatcher already
    /// waits for the end of that hold (`next_due`), and waking it per accepted event
    /// cost 5% of the CPU of a flood.
    pub fn wakes_dispatcher(&self, repo: &RepoId, now: Instant) -> bool {
        self.hold(repo).is_none_or(|until| until <= now)
    }

    /// When `repo`'s hold ends, if it is held back with updates queued: only such a
    /// hold is one the dispatcher waits for.
    fn hold(&self, repo: &RepoId) -> Option<Instant> {
        self.held
            .get(repo)
            .copied()
            .filter(|_| self.ready.contains_key(repo))
    }

    /// When the earliest delayed update becomes due, or a held-back repository with
    /// updates due may send again.
    pub fn next_due(&self) -> Option<Instant> {
        let backoff = self.delayed.peek().map(|Reverse((at, _, _))| *at);
        let held = self.held.keys().filter_map(|repo| self.hold(repo));
        backoff.into_iter().chain(held).min()
    }

    pub fn complete(&mut self, lease: &Lease, outcome: Completion, now: Instant) -> Completed {
        let key = lease.update.key();
        let mut done = Completed::default();
        let Some(entry) = self.entries.get_mut(&key) else {
            return done;
        };
        entry.in_flight = false;
        let superseded = entry.generation != lease.generation;
        match outcome {
            Completion::Written | Completion::Dropped => {
                // Writes wait out every doubt: no earlier attempt can land any more.
                entry.doubt = None;
                if matches!(outcome, Completion::Written) {
                    let (seq, evicted) = self.written.insert(key.clone(), &lease.update);
                    done.written_seq = Some(seq);
                    done.evicted = evicted;
                }
                if superseded {
                    // The newer state goes out next (for a drop: it may well be accepted).
                    let entry = self.entries.get_mut(&key).expect("entry checked above");
                    entry.attempts = 0;
                    self.push_ready(key);
                } else {
                    self.entries.remove(&key);
                    done.removed = true;
                }
            }
            Completion::Retry(delay) => {
                entry.attempts += 1;
                let due = entry.doubt.map_or(now + delay, |d| d.max(now + delay));
                entry.due = Some(due);
                done.in_doubt = entry.doubt.is_some();
                self.delayed.push(Reverse((due, entry.generation, KeyOrd(key))));
            }
            Completion::InDoubt { retry, until } => {
                entry.attempts += 1;
                let until = entry.doubt.map_or(until, |d| d.max(until));
                entry.doubt = Some(until);
                let due = until.max(now + retry);
                entry.due = Some(due);
                done.in_doubt = true;
                self.delayed
                    .push(Reverse((due, entry.generation, KeyOrd(key.clone()))));
                // The provider may show this attempt's state or an older one: no
                // memory of a written state may skip the next update.
                if self.written.forget(&key) {
                    done.evicted.push(key);
                }
            }
        }
        done
    }

    /// Keeps the handle the last write for `key` returned. `None` when it is the one
    /// kept already (nothing to store); otherwise the keys whose handles were forgotten
    /// to keep the memory bounded.
    pub fn keep_handle(&mut self, key: Key, handle: Handle) -> Option<Vec<Key>> {
        if self.handles.map.get(&key) == Some(&handle) {
            return None;
        }
        Some(self.handles.insert(key, handle))
    }

    /// Loads the handles a previous run kept, oldest first.
    pub fn restore_handles(&mut self, handles: Vec<(Key, Handle)>) {
        for (key, handle) in handles {
            self.handles.insert(key, handle);
        }
    }

    /// Age of the oldest pending update.
    pub fn oldest(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.accepted_at).min()
    }

    /// Everything still pending, for the shutdown report.
    pub fn pending(&self) -> impl Iterator<Item = &StatusUpdate> {
        self.entries.values().map(|e| &e.update)
    }
}

/// The handle per key, bounded: the oldest go first. Kept apart from the written
/// memory, which forgets a key whose write is in doubt: the provider object is the
/// same whatever state it shows.
#[derive(Debug)]
struct Handles {
    map: Map<Key, Handle>,
    order: VecDeque<Key>,
    capacity: usize,
}

impl Handles {
    /// Sets `key`'s handle; returns the keys forgotten.
    fn insert(&mut self, key: Key, handle: Handle) -> Vec<Key> {
        let mut evicted = Vec::new();
        if self.map.insert(key.clone(), handle).is_none() {
            self.order.push_back(key);
            while self.map.len() > self.capacity {
                let Some(old) = self.order.pop_front() else { break };
                self.map.remove(&old);
                evicted.push(old);
            }
        }
        evicted
    }
}

/// What was last written per key, bounded: the oldest memories go first.
#[derive(Debug)]
struct Written {
    map: Map<Key, (notifiers::State, String, Option<String>)>,
    order: VecDeque<Key>,
    capacity: usize,
    next_seq: u64,
}

impl Written {
    fn new(capacity: usize) -> Self {
        Written {
            map: Map::default(),
            order: VecDeque::new(),
            capacity,
            next_seq: 0,
        }
    }

    /// Whether `u`, whose key is `key`, is what was last written for it.
    fn matches(&self, key: &Key, u: &StatusUpdate) -> bool {
        self.map.get(key).is_some_and(|(state, desc, url)| {
            *state == u.status.state && *desc == u.status.description && *url == u.status.target_url
        })
    }

    /// Forgets what was written for `key`; whether there was anything.
    fn forget(&mut self, key: &Key) -> bool {
        if self.map.remove(key).is_none() {
            return false;
        }
        // `order` keeps the key until eviction comes to it and skips it there; it is
        // only rebuilt once such leftovers make up most of it, which keeps a forget
        // cheap and `order` bounded.
        if self.order.len() > 2 * self.map.len() + 1024 {
            let mut seen = std::collections::HashSet::new();
            let map = &self.map;
            self.order
                .retain(|k| map.contains_key(k) && seen.insert(k.clone()));
        }
        true
    }

    /// Remembers a write; returns its sequence number and the keys forgotten.
    fn insert(&mut self, key: Key, u: &StatusUpdate) -> (u64, Vec<Key>) {
        let seq = self.next_seq;
        (seq, self.insert_with_seq(key, u, seq))
    }

    fn insert_with_seq(&mut self, key: Key, u: &StatusUpdate, seq: u64) -> Vec<Key> {
        self.next_seq = self.next_seq.max(seq + 1);
        let value = (
            u.status.state,
            u.status.description.clone(),
            u.status.target_url.clone(),
        );
        let mut evicted = Vec::new();
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
            while self.map.len() > self.capacity {
                match self.order.pop_front() {
                    Some(old) => {
                        if self.map.remove(&old).is_some() {
                            evicted.push(old);
                        }
                    }
                    None => break,
                }
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notifiers::{Check, CommitStatus, Sha, State};

    fn update(sha_byte: char, check: &str, state: State) -> StatusUpdate {
        StatusUpdate {
            deploy: None,
            repo: "r".into(),
            status: CommitStatus {
                sha: Sha::parse(&sha_byte.to_string().repeat(40)).unwrap(),
                check: Check::new(check),
                state,
                description: format!("{state}"),
                target_url: None,
                summary: None,
                git_ref: None,
            },
        }
    }

    fn no_pause(_: &RepoId) -> Option<Instant> {
        None
    }

    fn in_repo(repo: &str, u: StatusUpdate) -> StatusUpdate {
        StatusUpdate {
            repo: repo.into(),
            ..u
        }
    }

    fn leased(ob: &mut Outbox, now: Instant, paused: impl Fn(&RepoId) -> Option<Instant>) -> Option<String> {
        ob.next_ready(now, paused)
            .0
            .map(|l| format!("{}:{}", l.update.repo, l.update.status.sha.short()))
    }

    #[test]
    fn repositories_take_turns() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 10);
        let a = |c| in_repo("a", update(c, "c", State::Succeeded));
        ob.offer_all(vec![a('1'), a('2'), a('3')], now).unwrap();
        ob.offer_all(vec![in_repo("b", update('4', "c", State::Succeeded))], now)
            .unwrap();
        let order: Vec<_> = (0..5).map(|_| leased(&mut ob, now, no_pause)).collect();
        assert_eq!(
            order,
            vec![
                Some("a:1111111".into()),
                Some("b:4444444".into()),
                Some("a:2222222".into()),
                Some("a:3333333".into()),
                None
            ]
        );
    }

    #[test]
    fn a_held_back_repository_keeps_its_queue_and_holds_up_no_other() {
        let now = Instant::now();
        let until = now + Duration::from_secs(45);
        let mut ob = Outbox::new(1000, 10);
        let held: Vec<_> = (0..500u32)
            .map(|i| {
                let mut u = in_repo("a", update('a', "c", State::Succeeded));
                u.status.sha = Sha::parse(&format!("{i:07x}{}", "0".repeat(33))).unwrap();
                u
            })
            .collect();
        ob.offer_all(held, now).unwrap();
        ob.offer_all(vec![in_repo("b", update('b', "c", State::Succeeded))], now)
            .unwrap();
        let budget = |repo: &RepoId| (&**repo == "a").then_some(until);
        let (a, b): (RepoId, RepoId) = ("a".into(), "b".into());
        assert!(ob.wakes_dispatcher(&a, now), "not known to be held yet");
        assert_eq!(leased(&mut ob, now, budget), Some("b:bbbbbbb".into()));
        assert_eq!(leased(&mut ob, now, budget), None);
        assert_eq!(ob.next_due(), Some(until), "wake when the budget allows");
        assert!(
            !ob.wakes_dispatcher(&a, now),
            "more for a held repository waits for its hold"
        );
        assert!(ob.wakes_dispatcher(&a, until), "unless the hold is over");
        assert!(ob.wakes_dispatcher(&b, now), "another repository is sent at once");
        assert_eq!(ob.ready_len(), 500, "the held queue was left as it was");
        assert!(ob.delayed.is_empty(), "nothing was moved per update");
        // Then in the order accepted.
        assert_eq!(leased(&mut ob, until, no_pause), Some("a:0000000".into()));
        assert_eq!(leased(&mut ob, until, no_pause), Some("a:0000001".into()));
        while leased(&mut ob, until, no_pause).is_some() {}
        assert!(ob.wakes_dispatcher(&a, now), "nothing queued: nothing waited for");
    }

    #[test]
    fn newest_state_per_check_wins() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 10);
        let offers = ob
            .offer_all(
                vec![
                    update('a', "c", State::Pending),
                    update('a', "c", State::Failed),
                    update('a', "c", State::Succeeded),
                ],
                now,
            )
            .unwrap();
        assert_eq!(offers, vec![Offer::Queued, Offer::Coalesced, Offer::Coalesced]);
        let (lease, _) = ob.next_ready(now, no_pause);
        assert_eq!(lease.unwrap().update.status.state, State::Succeeded);
        assert!(ob.next_ready(now, no_pause).0.is_none(), "one write per check");
    }

    #[test]
    fn written_state_is_not_written_again() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 10);
        ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
            .unwrap();
        assert_eq!(ob.len() + ob.written.map.len(), 1, "its pending record");
        let lease = ob.next_ready(now, no_pause).0.unwrap();
        ob.complete(&lease, Completion::Written, now);
        assert!(ob.is_empty());
        assert_eq!(ob.len() + ob.written.map.len(), 1, "its written record");
        assert_eq!(
            ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
                .unwrap(),
            vec![Offer::Unchanged]
        );
        assert_eq!(
            ob.len() + ob.written.map.len(),
            1,
            "a state already written adds none"
        );
        assert_eq!(
            ob.offer_all(vec![update('a', "c", State::Failed)], now).unwrap(),
            vec![Offer::Queued]
        );
    }

    #[test]
    fn update_arriving_in_flight_is_sent_after_the_flight() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 10);
        ob.offer_all(vec![update('a', "c", State::Pending)], now).unwrap();
        let first = ob.next_ready(now, no_pause).0.unwrap();
        ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
            .unwrap();
        assert!(
            ob.next_ready(now, no_pause).0.is_none(),
            "never two writes for one check at once"
        );
        ob.complete(&first, Completion::Written, now);
        let second = ob.next_ready(now, no_pause).0.unwrap();
        assert_eq!(second.update.status.state, State::Succeeded);
    }

    #[test]
    fn flipping_back_to_the_written_state_costs_no_write() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 10);
        ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
            .unwrap();
        let l = ob.next_ready(now, no_pause).0.unwrap();
        ob.complete(&l, Completion::Written, now);
        ob.offer_all(
            vec![
                update('a', "c", State::Failed),
                update('a', "c", State::Succeeded),
            ],
            now,
        )
        .unwrap();
        let (lease, deduplicated) = ob.next_ready(now, no_pause);
        assert!(lease.is_none());
        assert_eq!(deduplicated, vec![update('a', "c", State::Succeeded).key()]);
        assert!(ob.is_empty());
    }

    #[test]
    fn retries_wait_for_their_delay() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 10);
        ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
            .unwrap();
        let l = ob.next_ready(now, no_pause).0.unwrap();
        ob.complete(&l, Completion::Retry(Duration::from_secs(2)), now);
        assert!(ob.next_ready(now + Duration::from_secs(1), no_pause).0.is_none());
        assert_eq!(ob.next_due(), Some(now + Duration::from_secs(2)));
        let again = ob.next_ready(now + Duration::from_secs(2), no_pause).0.unwrap();
        assert_eq!(again.attempt, 2);
    }

    #[test]
    fn dropped_updates_leave_unless_superseded() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 10);
        ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
            .unwrap();
        let l = ob.next_ready(now, no_pause).0.unwrap();
        ob.complete(&l, Completion::Dropped, now);
        assert!(ob.is_empty());

        ob.offer_all(vec![update('b', "c", State::Pending)], now).unwrap();
        let l = ob.next_ready(now, no_pause).0.unwrap();
        ob.offer_all(vec![update('b', "c", State::Succeeded)], now)
            .unwrap();
        ob.complete(&l, Completion::Dropped, now);
        assert_eq!(
            ob.next_ready(now, no_pause).0.unwrap().update.status.state,
            State::Succeeded
        );
    }

    #[test]
    fn paused_repositories_are_held_back() {
        let now = Instant::now();
        let until = now + Duration::from_secs(30);
        let mut ob = Outbox::new(10, 10);
        ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
            .unwrap();
        assert!(ob.next_ready(now, |_| Some(until)).0.is_none());
        assert_eq!(ob.next_due(), Some(until));
        assert!(ob.next_ready(until, no_pause).0.is_some());
    }

    #[test]
    fn full_outbox_refuses_whole_events() {
        let now = Instant::now();
        let mut ob = Outbox::new(2, 10);
        ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
            .unwrap();
        let err = ob
            .offer_all(
                vec![
                    update('b', "c", State::Succeeded),
                    update('c', "c", State::Succeeded),
                ],
                now,
            )
            .unwrap_err();
        assert_eq!(err, Full { capacity: 2 });
        assert_eq!(ob.len(), 1, "nothing of the refused event was queued");
        // Coalescing into an existing key needs no room.
        assert_eq!(
            ob.offer_all(vec![update('a', "c", State::Failed)], now).unwrap(),
            vec![Offer::Coalesced]
        );
    }

    #[test]
    fn completion_reports_what_the_store_must_record() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 1);
        ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
            .unwrap();
        let l = ob.next_ready(now, no_pause).0.unwrap();
        let done = ob.complete(&l, Completion::Written, now);
        assert_eq!(
            done,
            Completed {
                removed: true,
                evicted: vec![],
                written_seq: Some(0),
                in_doubt: false
            }
        );
        ob.offer_all(vec![update('b', "c", State::Succeeded)], now)
            .unwrap();
        let l = ob.next_ready(now, no_pause).0.unwrap();
        let done = ob.complete(&l, Completion::Written, now);
        assert_eq!(
            done.evicted,
            vec![update('a', "c", State::Succeeded).key()],
            "capacity 1 forgets 'a'"
        );
    }

    #[test]
    fn restored_in_flight_updates_wait_to_settle_and_are_read_back() {
        let now = Instant::now();
        let settled = now + Duration::from_secs(45);
        let mut ob = Outbox::new(10, 10);
        let (a, b) = (
            update('a', "c", State::Succeeded),
            update('b', "c", State::Failed),
        );
        let in_flight = std::collections::HashSet::from([a.key()]);
        ob.restore(
            vec![(update('c', "c", State::Succeeded), 4), (a.clone(), 5)],
            vec![(a.clone(), now), (b.clone(), now)],
            &in_flight,
            settled,
        );
        let first = ob.next_ready(now, no_pause).0.unwrap();
        assert_eq!((first.update, first.read_back), (b, None));
        assert!(
            ob.next_ready(now, no_pause).0.is_none(),
            "the previous run's write may still land"
        );
        assert_eq!(ob.next_due(), Some(settled));
        let (lease, deduplicated) = ob.next_ready(settled, no_pause);
        assert!(
            deduplicated.is_empty(),
            "the memory of 'a' does not skip the read-back"
        );
        let lease = lease.unwrap();
        assert_eq!((lease.update, lease.read_back), (a, Some(settled)));
        assert_eq!(
            ob.offer_all(vec![update('c', "c", State::Succeeded)], now)
                .unwrap(),
            vec![Offer::Unchanged]
        );
    }

    #[test]
    fn a_write_in_doubt_is_not_repeated_before_it_settles() {
        let now = Instant::now();
        let until = now + Duration::from_secs(45);
        let mut ob = Outbox::new(10, 10);
        // Written once already: the memory must not outlive the doubt.
        ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
            .unwrap();
        let l = ob.next_ready(now, no_pause).0.unwrap();
        ob.complete(&l, Completion::Written, now);
        ob.offer_all(vec![update('a', "c", State::Pending)], now).unwrap();
        let pending = ob.next_ready(now, no_pause).0.unwrap();
        assert_eq!(pending.read_back, None, "the happy path reads nothing");
        // The newer state arrives while the pending write hangs.
        ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
            .unwrap();
        let done = ob.complete(
            &pending,
            Completion::InDoubt {
                retry: Duration::from_secs(1),
                until,
            },
            now,
        );
        assert!(done.in_doubt && !done.removed);
        assert_eq!(
            done.evicted,
            vec![pending.update.key()],
            "forget what was written"
        );
        assert!(
            ob.next_ready(now + Duration::from_secs(1), no_pause).0.is_none(),
            "no write while the hung one may still land"
        );
        assert_eq!(
            ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
                .unwrap(),
            vec![Offer::Coalesced],
            "not taken as written while in doubt"
        );
        let next = ob.next_ready(until, no_pause).0.unwrap();
        assert_eq!(next.update.status.state, State::Succeeded);
        assert_eq!(next.read_back, Some(until));
        // The read-back failed: still in doubt, the mark is kept.
        let done = ob.complete(&next, Completion::Retry(Duration::from_secs(2)), until);
        assert!(done.in_doubt);
        let again = ob.next_ready(until + Duration::from_secs(2), no_pause).0.unwrap();
        assert_eq!(again.read_back, Some(until), "still read back first");
        let done = ob.complete(&again, Completion::Written, until);
        assert!(done.removed && !done.in_doubt);
        assert_eq!(
            ob.offer_all(vec![update('a', "c", State::Succeeded)], now)
                .unwrap(),
            vec![Offer::Unchanged],
            "settled: remembered again"
        );
    }

    #[test]
    fn a_write_never_sent_is_retried_without_a_read_back() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 10);
        ob.offer_all(vec![update('a', "c", State::Pending)], now).unwrap();
        let l = ob.next_ready(now, no_pause).0.unwrap();
        let done = ob.complete(&l, Completion::Retry(Duration::from_secs(1)), now);
        assert!(!done.in_doubt, "nothing can land: the mark goes");
        let again = ob.next_ready(now + Duration::from_secs(1), no_pause).0.unwrap();
        assert_eq!(again.read_back, None);
    }

    #[test]
    fn a_lease_carries_its_checks_handle_and_handles_are_bounded() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 2);
        let h = |s: &str| Handle::new(s).unwrap();
        let (a, b, c) = (
            update('a', "x", State::Pending),
            update('b', "x", State::Pending),
            update('c', "x", State::Pending),
        );
        assert_eq!(ob.keep_handle(a.key(), h("a1")), Some(vec![]));
        assert_eq!(
            ob.keep_handle(a.key(), h("a1")),
            None,
            "already kept: nothing to store"
        );
        assert_eq!(ob.keep_handle(a.key(), h("a2")), Some(vec![]), "replaced");
        assert_eq!(ob.keep_handle(b.key(), h("b1")), Some(vec![]));
        assert_eq!(
            ob.keep_handle(c.key(), h("c1")),
            Some(vec![a.key()]),
            "capacity 2 forgets the oldest"
        );
        ob.offer_all(vec![a, b], now).unwrap();
        let first = ob.next_ready(now, no_pause).0.unwrap();
        let second = ob.next_ready(now, no_pause).0.unwrap();
        assert_eq!((first.handle, second.handle), (None, Some(h("b1"))));
    }

    #[test]
    fn written_memory_is_bounded() {
        let now = Instant::now();
        let mut ob = Outbox::new(10, 2);
        for c in ['a', 'b', 'c'] {
            ob.offer_all(vec![update(c, "x", State::Succeeded)], now).unwrap();
            let l = ob.next_ready(now, no_pause).0.unwrap();
            ob.complete(&l, Completion::Written, now);
        }
        // 'a' was forgotten first, so it is written again; 'c' is remembered.
        assert_eq!(
            ob.offer_all(vec![update('a', "x", State::Succeeded)], now)
                .unwrap(),
            vec![Offer::Queued]
        );
        assert_eq!(
            ob.offer_all(vec![update('c', "x", State::Succeeded)], now)
                .unwrap(),
            vec![Offer::Unchanged]
        );
    }
}
