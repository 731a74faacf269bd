//! The in-process harness itself: what a test gives a daemon reaches it, and what a
//! daemon logs stays its own.

use crate::support::Daemon;

#[tokio::test]
async fn the_environment_reaches_the_daemon_as_the_flags_that_read_it() {
    let d = Daemon::start(
        &["--dry-run", "--git-url", "https://github.com/acme/app"],
        &[
            ("FLUX_STATUS_INSTANCE", "from-env"),
            ("FLUX_STATUS_NO_PERSISTENCE", "true"),
        ],
    )
    .await;
    let line = d.wait_log(|l| l["message"] == "using notifier").await;
    assert_eq!(line["instance"], "from-env", "{line}");
    assert!(
        d.find_log(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("running without persistence")))
            .is_some(),
        "a boolean variable sets its flag"
    );
}

async fn dry_run(instance: &str) -> Daemon {
    let args = [
        "--dry-run",
        "--git-url",
        "https://github.com/acme/app",
        "--instance",
        instance,
    ];
    Daemon::start(&args, &[]).await
}

#[tokio::test]
async fn each_daemon_keeps_its_own_logs() {
    let (a, b) = (dry_run("alpha-one").await, dry_run("bravo-two").await);
    for (d, own, other) in [(&a, "alpha-one", "bravo-two"), (&b, "bravo-two", "alpha-one")] {
        let line = d.wait_log(|l| l["message"] == "using notifier").await;
        assert_eq!(line["instance"], own, "{line}");
        let logs = serde_json::to_string(&d.logs()).unwrap();
        assert!(!logs.contains(other), "{own} has {other}'s lines: {logs}");
    }
    let ports = [a.addr, a.ops, b.addr, b.ops];
    assert!(ports.iter().all(|p| p.port() != 0), "{ports:?}");
}

/// `stop()` drains and closes the outbox as SIGTERM does: a daemon started again
/// on the same directory opens it (a store still held would refuse).
#[tokio::test]
async fn a_restart_reopens_the_same_state_directory() {
    let first = dry_run("restarted").await;
    let dir = first.state_dir.clone();
    let second = first.restart().await;
    assert_eq!(second.state_dir, dir);
    let line = second.wait_log(|l| l["message"] == "durable outbox opened").await;
    assert_eq!(line["path"], dir.display().to_string(), "{line}");
}

/// Dropped, a daemon stops at once and lets go of its directory, as a killed
/// process would: the next daemon there starts.
#[tokio::test]
async fn a_dropped_daemon_lets_go_of_its_state_directory() {
    let first = dry_run("dropped").await;
    let dir = first.state_dir.clone();
    drop(first);
    let args = ["--dry-run", "--git-url", "https://github.com/acme/app"];
    let second = Daemon::start_in(dir.clone(), &args, &[]).await;
    let line = second.wait_log(|l| l["message"] == "durable outbox opened").await;
    assert_eq!(line["path"], dir.display().to_string(), "{line}");
}
