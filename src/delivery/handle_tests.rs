//! A write's handle goes back to the next write for the same check, through the
//! durable outbox, across a restart too.

use super::limiter::Limits;
use super::store::{Persister, Store};
use super::{Delivery, DeliveryConfig, Route};
use crate::metrics::Metrics;
use crate::update::{RepoId, StatusUpdate};
use notifiers::{Check, CommitStatus, Handle, Notifier, NotifyError, ReadStatus, Receipt, Sha, State};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A provider whose writes make objects: each write returns a new handle (`obj-<n>`),
/// except a write of a failed state, which returns none (the object stays the same).
/// It records the handle each write was given.
struct Objects {
    first: u32,
    given: Mutex<Vec<(State, Option<Handle>)>>,
}

#[async_trait::async_trait]
impl Notifier for Objects {
    fn name(&self) -> &'static str {
        "objects"
    }

    fn repo(&self) -> &str {
        "r"
    }

    async fn write(&self, status: &CommitStatus, previous: Option<&Handle>) -> Result<Receipt, NotifyError> {
        let mut given = self.given.lock().unwrap();
        given.push((status.state, previous.cloned()));
        let handle = (status.state != State::Failed)
            .then(|| Handle::new(format!("obj-{}", self.first + given.len() as u32)))
            .flatten();
        Ok(Receipt {
            budget: Default::default(),
            handle,
        })
    }

    async fn check_credentials(&self) -> Result<(), NotifyError> {
        Ok(())
    }

    async fn list_statuses(&self, _: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        Ok(Vec::new())
    }
}

fn update(state: State) -> StatusUpdate {
    StatusUpdate {
        deploy: None,
        repo: "r".into(),
        status: CommitStatus {
            sha: Sha::parse(&"c".repeat(40)).unwrap(),
            check: Check::new("flux-status/dev/sync"),
            state,
            description: format!("{state}"),
            target_url: None,
            summary: None,
            git_ref: None,
        },
    }
}

/// A daemon's delivery over the store in `dir`, writing to `objects`, until `f` is done.
async fn running<F: std::future::Future<Output = ()>>(
    dir: &std::path::Path,
    objects: Arc<Objects>,
    f: impl FnOnce(Arc<Delivery>) -> F,
) {
    let (store, recovered) = Store::open(dir).unwrap();
    let persister = Persister::start(store, |_| {}).unwrap();
    let repo: RepoId = "r".into();
    let route = Route {
        notifier: objects,
        limits: Limits {
            writes_per_minute: None,
            requests_per_hour: None,
        },
    };
    let delivery = Arc::new(Delivery::new(
        HashMap::from([(repo, route)]),
        persister.clone(),
        recovered,
        Arc::new(Metrics::new()),
        DeliveryConfig::default(),
    ));
    let stop = CancellationToken::new();
    let run = tokio::spawn(delivery.clone().run(stop.clone(), Duration::from_secs(10)));
    f(delivery).await;
    stop.cancel();
    assert_eq!(run.await.unwrap(), 0, "all delivered");
    persister.stop().await.unwrap();
}

/// Accepts `u` and waits until `objects` has seen `writes` writes.
async fn deliver(delivery: &Delivery, objects: &Objects, u: StatusUpdate, writes: usize) {
    delivery.accept(vec![u]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while objects.given.lock().unwrap().len() < writes {
        assert!(Instant::now() < deadline, "write {writes} never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_next_write_for_a_check_gets_the_handle_the_last_one_returned_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("flux-status-handles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let objects = Arc::new(Objects {
        first: 0,
        given: Mutex::default(),
    });
    running(&dir, objects.clone(), |d| async move {
        deliver(&d, &objects, update(State::Pending), 1).await;
        deliver(&d, &objects, update(State::Succeeded), 2).await;
        // No handle returned: the one it was given stays.
        deliver(&d, &objects, update(State::Failed), 3).await;
        deliver(&d, &objects, update(State::Pending), 4).await;
        let given = objects.given.lock().unwrap().clone();
        assert_eq!(
            given,
            vec![
                (State::Pending, None),
                (State::Succeeded, Handle::new("obj-1")),
                (State::Failed, Handle::new("obj-2")),
                (State::Pending, Handle::new("obj-2")),
            ]
        );
    })
    .await;

    // A new process: the handle the last write returned comes from the outbox log.
    let restarted = Arc::new(Objects {
        first: 100,
        given: Mutex::default(),
    });
    running(&dir, restarted.clone(), |d| async move {
        deliver(&d, &restarted, update(State::Succeeded), 1).await;
        assert_eq!(
            restarted.given.lock().unwrap().clone(),
            vec![(State::Succeeded, Handle::new("obj-4"))]
        );
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
