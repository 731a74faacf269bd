//! The daemon under test. In-process by default: the test binds 127.0.0.1:0 itself,
//! parses the arguments with the daemon's own parser and runs it on a runtime of its
//! own, whose threads log into this daemon's [`Logs`]. As a child process only where a
//! test needs a real SIGKILL or SIGTERM ([`Daemon::spawn`]).

use super::WAIT;
use super::in_process::{InProcess, in_process, listening, wait_unlocked};
use super::logs::Logs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub struct Daemon {
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    /// The durable outbox, kept across restarts of the same test.
    pub state_dir: PathBuf,
    logs: Logs,
    how: How,
    args: Vec<String>,
    env: Vec<(String, String)>,
    running: Running,
}

/// Where a daemon runs.
#[derive(Clone, Copy, PartialEq, Debug)]
enum How {
    InProcess,
    Child,
}

pub(super) enum Running {
    InProcess(InProcess),
    Child(Child),
}

impl Daemon {
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_in(super::temp_dir("state"), args, env).await
    }

    /// Starts with the given state directory (unless `args` disables persistence).
    pub async fn start_in(state_dir: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::launch(How::InProcess, state_dir, owned(args), owned_env(env)).await
    }

    /// The daemon for `https://github.com/acme/app` (instance `dev`) with its API at
    /// `api` and `token` as `GITHUB_TOKEN`: what the durability tests share.
    pub async fn start_for_github(
        state_dir: PathBuf,
        api: &str,
        token: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let (args, env) = for_github(api, token, extra, env);
        Self::launch(How::InProcess, state_dir, args, env).await
    }

    /// The binary as a child process, for a test that signals it or gives it an
    /// environment variable no flag reads (a `--config` file's `tokenEnv`).
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::spawn_in(super::temp_dir("state"), args, env).await
    }

    pub async fn spawn_in(state_dir: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::launch(How::Child, state_dir, owned(args), owned_env(env)).await
    }

    /// [`Daemon::start_for_github`] as a child process.
    pub async fn spawn_for_github(
        state_dir: PathBuf,
        api: &str,
        token: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let (args, env) = for_github(api, token, extra, env);
        Self::launch(How::Child, state_dir, args, env).await
    }

    async fn launch(how: How, state_dir: PathBuf, args: Vec<String>, env: Vec<(String, String)>) -> Daemon {
        let mut argv: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--state-dir",
        ]
        .map(String::from)
        .into();
        argv.push(state_dir.to_str().expect("a UTF-8 path").into());
        // Sync-status tests count provider writes: workload statuses would add to
        // them. A test turns polling on with `--poll-workloads`.
        let polling_set = args.iter().any(|a| a.starts_with("--poll-workloads"))
            || env.iter().any(|(k, _)| k == "FLUX_STATUS_POLL_WORKLOADS");
        if !polling_set {
            argv.push("--poll-workloads=false".into());
        }
        argv.extend(args.iter().cloned());
        let logs = Logs::default();
        let (running, addr, ops) = match how {
            How::InProcess => in_process(argv, &env, &logs),
            How::Child => child(argv, &env, &logs),
        };
        let mut d = Daemon {
            addr: addr.unwrap_or_else(unknown),
            ops: ops.unwrap_or_else(unknown),
            state_dir,
            logs,
            how,
            args,
            env,
            running,
        };
        match how {
            How::InProcess => d.wait_started().await,
            How::Child => d.wait_listening().await,
        }
        d
    }

    /// Until the daemon is past its start-up (its outbox open, its listeners served):
    /// its /readyz says it is listening.
    async fn wait_started(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Running::InProcess(p) = &mut self.running
                && let Some(done) = &mut p.done
            {
                let failed = match done.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => None,
                    Ok(Ok(())) => Some("stopped".to_string()),
                    Ok(Err(e)) => Some(e),
                    Err(oneshot::error::TryRecvError::Closed) => Some("panicked".into()),
                };
                if let Some(e) = failed {
                    panic!("flux-status failed to start: {e}; logs: {:#?}", self.logs());
                }
            }
            // With `--ops-listen off` nothing tells: requests wait in the listen queue.
            if self.ops.port() == 0 || listening(self.ops).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "flux-status did not start; logs: {:#?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A child's ports are in its start-up lines: nothing else outside the process
    /// knows them.
    async fn wait_listening(&mut self) {
        let listen = |msg: &str, d: &Daemon| {
            d.find_log(|l| l["message"] == msg)
                .and_then(|l| l["addr"].as_str().and_then(|a| a.parse().ok()))
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let (Some(a), Some(o)) = (listen("ingest listening", self), listen("ops listening", self)) {
                self.addr = a;
                self.ops = o;
                return;
            }
            if let Running::Child(child) = &mut self.running
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("flux-status exited with {status}; logs: {:#?}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "flux-status did not start; logs: {:#?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.all()
    }

    pub fn find_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
        self.logs.find(pred)
    }

    pub async fn wait_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.find_log(&pred) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "log line not seen; logs: {:#?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.running {
            Running::InProcess(p) => p.thread.as_ref().is_some_and(|t| !t.is_finished()),
            Running::Child(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Sends a signal to a child ([`Daemon::spawn`]).
    pub fn signal(&self, sig: &str) {
        let Running::Child(child) = &self.running else {
            panic!("only a child process can be signalled: start it with Daemon::spawn");
        };
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "kill -{sig} failed");
    }

    /// Waits for a child's exit after a signal; panics if it does not come.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let Running::Child(child) = &mut self.running else {
            panic!("only a child process exits: start it with Daemon::spawn");
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "flux-status did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops as on SIGTERM (deliveries drained for at most `--shutdown-timeout`);
    /// the daemon's own error if it failed.
    pub async fn stop(mut self) -> Result<(), String> {
        match &mut self.running {
            Running::InProcess(p) => {
                if let Some(drain) = p.drain.take() {
                    let _ = drain.send(());
                }
                let done = p.done.take().expect("a running daemon");
                let result = tokio::time::timeout(WAIT * 4, done)
                    .await
                    .expect("flux-status did not stop")
                    .unwrap_or_else(|_| Err("the daemon's thread panicked".into()));
                if let Some(thread) = p.thread.take() {
                    let _ = thread.join();
                }
                result
            }
            Running::Child(_) => {
                self.signal("TERM");
                let status = self.wait_exit().await;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("exited with {status}"))
                }
            }
        }
    }

    /// Stops as on SIGTERM and starts again the same way, on the same state directory.
    pub async fn restart(self) -> Daemon {
        let (how, state_dir, args, env) = (
            self.how,
            self.state_dir.clone(),
            self.args.clone(),
            self.env.clone(),
        );
        let logs = self.logs.clone();
        if let Err(e) = self.stop().await {
            panic!("flux-status failed: {e}; logs: {:#?}", logs.all());
        }
        Self::launch(how, state_dir, args, env).await
    }

    /// The whole /metrics exposition.
    pub async fn metrics_text(&self) -> String {
        super::http()
            .get(format!("http://{}/metrics", self.ops))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// One sample from /metrics, e.g. `flux_status_statuses_total{provider="github",state="succeeded",result="written"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// Dropped, a daemon stops at once, as if killed: its tasks are dropped and its
/// connections close.
impl Drop for Daemon {
    fn drop(&mut self) {
        match &mut self.running {
            Running::InProcess(p) => {
                if let Some(abort) = p.abort.take() {
                    let _ = abort.send(());
                }
                if let Some(thread) = p.thread.take() {
                    let _ = thread.join();
                }
                wait_unlocked(&self.state_dir);
            }
            Running::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn unknown() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn owned_env(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn for_github(
    api: &str,
    token: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Vec<String>, Vec<(String, String)>) {
    let mut args = owned(&[
        "--git-url",
        "https://github.com/acme/app",
        "--instance",
        "dev",
        "--api-url",
        api,
    ]);
    args.extend(owned(extra));
    let mut env = owned_env(env);
    env.push(("GITHUB_TOKEN".into(), token.into()));
    (args, env)
}

fn child(
    argv: Vec<String>,
    env: &[(String, String)],
    logs: &Logs,
) -> (Running, Option<SocketAddr>, Option<SocketAddr>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flux-status"));
    cmd.args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let credentials = notifiers::PROVIDERS.iter().map(|p| p.credential.env);
    for var in credentials.chain(["RUST_LOG"]) {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn flux-status");
    let stderr = child.stderr.take().expect("stderr");
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.push_line(&line);
        }
    });
    (Running::Child(child), None, None)
}
