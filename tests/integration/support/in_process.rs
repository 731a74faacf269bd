//! Running the daemon in this process: its arguments through its own parser, its
//! listeners bound here, its runtime on a thread of its own, its logs its own.

use super::WAIT;
use super::daemon::Running;
use super::logs::Logs;
use clap::{CommandFactory, FromArgMatches};
use flux_status::config::{Args, LogFormat};
use flux_status::daemon::{self, Listeners};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub(super) struct InProcess {
    /// Sent: drain and stop, as on SIGTERM. Dropped unsent: nothing.
    pub drain: Option<oneshot::Sender<()>>,
    /// Sent: stop at once, every task dropped.
    pub abort: Option<oneshot::Sender<()>>,
    pub done: Option<oneshot::Receiver<Result<(), String>>>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

/// The daemon's arguments as its binary parses them, except that the environment is
/// the test's, given as the flags that read it: tests run in parallel in one process
/// and must not set its environment, nor see the developer's `GITHUB_TOKEN`.
fn parse(mut argv: Vec<String>, env: &[(String, String)]) -> Args {
    let command = Args::command();
    for (var, value) in env {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == var.as_str()))
            .unwrap_or_else(|| panic!("no flag reads {var}: give it to a child process (Daemon::spawn)"));
        let long = arg
            .get_long()
            .expect("a flag read from the environment has a long name");
        match value.as_str() {
            _ if arg.get_action().takes_values() => argv.push(format!("--{long}={value}")),
            "true" | "1" | "yes" | "on" => argv.push(format!("--{long}")),
            "false" | "0" | "no" | "off" | "" => {}
            _ => panic!("{var}={value}: not a boolean"),
        }
    }
    let matches = command
        .mut_args(|a| a.env(None))
        .try_get_matches_from(std::iter::once("flux-status".to_string()).chain(argv))
        .unwrap_or_else(|e| panic!("flux-status arguments: {e}"));
    Args::from_arg_matches(&matches).unwrap_or_else(|e| panic!("flux-status arguments: {e}"))
}

pub(super) fn in_process(
    argv: Vec<String>,
    env: &[(String, String)],
    logs: &Logs,
) -> (Running, Option<SocketAddr>, Option<SocketAddr>) {
    log_panics();
    let args = parse(argv, env);
    assert!(
        matches!(args.log_format, LogFormat::Json),
        "the tests read the daemon's logs as JSON"
    );
    let dispatch = flux_status::telemetry::to_writer(
        args.log_format,
        flux_status::telemetry::level(&args),
        logs.clone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let workers = args.worker_threads;
    let config = args
        .validate()
        .unwrap_or_else(|e| panic!("flux-status configuration: {e}"));
    let bind = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        l.set_nonblocking(true).expect("non-blocking listener");
        l
    };
    let ingest = bind();
    let ops = config.ops_listen.map(|_| bind());
    let addr = ingest.local_addr().ok();
    let ops_addr = ops.as_ref().and_then(|l| l.local_addr().ok());
    let (drain, drained) = oneshot::channel::<()>();
    let (abort, aborted) = oneshot::channel::<()>();
    let (finished, done) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("flux-status".into())
        .spawn(move || {
            let _logs = tracing::dispatcher::set_default(&dispatch);
            let result = match runtime(workers, dispatch.clone()) {
                Ok(rt) => rt.block_on(async move {
                    let listeners = Listeners {
                        ingest: tokio::net::TcpListener::from_std(ingest).map_err(|e| e.to_string())?,
                        ops: ops
                            .map(tokio::net::TcpListener::from_std)
                            .transpose()
                            .map_err(|e| e.to_string())?,
                    };
                    // A sender dropped unsent is the abort below, not a drain.
                    let shutdown = async {
                        if drained.await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        r = daemon::serve(config, listeners, shutdown) => r.map_err(|e| e.to_string()),
                        _ = aborted => Ok(()),
                    }
                }),
                Err(e) => Err(format!("starting the runtime: {e}")),
            };
            let _ = finished.send(result);
        })
        .expect("a thread for the daemon");
    let running = Running::InProcess(InProcess {
        drain: Some(drain),
        abort: Some(abort),
        done: Some(done),
        thread: Some(thread),
    });
    (running, addr, ops_addr)
}

thread_local! {
    /// A runtime thread's dispatcher, for the thread's life.
    static LOGGING_TO: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

/// The daemon's runtime, as its binary builds it, each thread logging to `dispatch`.
fn runtime(workers: usize, dispatch: tracing::Dispatch) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .on_thread_start(move || {
            let guard = tracing::dispatcher::set_default(&dispatch);
            LOGGING_TO.with(|g| *g.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| LOGGING_TO.with(|g| drop(g.borrow_mut().take())))
        .build()
}

/// /readyz's `listening` check, asked on a connection of its own that closes: the
/// shared client would keep one open against the ops listener's caps.
pub(super) async fn listening(ops: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(ops).await else {
        return false;
    };
    let req = b"GET /readyz HTTP/1.1\r\nHost: flux-status\r\nConnection: close\r\n\r\n";
    if conn.write_all(req).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    read.is_ok() && String::from_utf8_lossy(&answer).contains(r#""listening":true"#)
}

/// A child's panic message went to its stderr, where its logs are: tests look for it
/// there. In-process, a panic on one of a daemon's threads is logged to that daemon,
/// and shown as before.
fn log_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let shown = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("<unnamed>");
            tracing::error!("thread '{name}' {info}");
            shown(info);
        }));
    });
}

/// Until the outbox's lock is free. A killed process's lock goes with it; an aborted
/// daemon's persister thread still writes what it was given, then lets go: a test
/// that starts another daemon on the directory must not find it held.
pub(super) fn wait_unlocked(state_dir: &std::path::Path) {
    let Ok(lock) = std::fs::File::open(state_dir.join("outbox.lock")) else {
        return;
    };
    let deadline = Instant::now() + WAIT;
    while lock.try_lock().is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}
