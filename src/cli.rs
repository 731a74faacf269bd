//! `flux-status-cli`: read a commit's deploy status back, and wait for it.
//!
//! Keeps the original's interface (`--instance --git-url --commit-id --action`, one
//! JSON line on stdout) and fixes what it got wrong: the exact check is matched (not
//! any status whose instance *or* action matches), every page is read, the newest
//! status wins, errors go to stderr with distinct exit codes.

use crate::config::{ConfigError, Problems, Target, TargetArgs, parse_duration, validate_instance};
use clap::{Parser, ValueEnum};
use notifiers::{Check, Notifier, ReadStatus, Retry, Sha, State};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    Sync,
    Workload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Json,
    Text,
}

/// Exit codes, for pipelines to branch on.
pub mod exit {
    /// Found (with `--wait`: succeeded).
    pub const OK: u8 = 0;
    /// Not found, or (with `--wait`) failed or canceled.
    pub const NOT_OK: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const PROVIDER: u8 = 3;
    /// `--wait` ran out of time, as `timeout(1)` reports it.
    pub const TIMEOUT: u8 = 124;
}

/// flux-status-cli: reads a commit's deploy status back from the git provider.
#[derive(Parser)]
#[command(name = "flux-status-cli", version, about, max_term_width = 100)]
pub struct CliArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// The cluster or environment whose status to read (flux-status --instance).
    #[arg(long, env = "FLUX_STATUS_INSTANCE", default_value = "default")]
    pub instance: String,

    /// The commit to read, as a full SHA.
    #[arg(long, env = "FLUX_STATUS_COMMIT_ID")]
    pub commit_id: String,

    /// Which check: the sync, or the workloads' health after it.
    #[arg(long, value_enum, default_value = "workload")]
    pub action: Action,

    #[arg(long, value_enum, default_value = "json")]
    pub output: Output,

    /// List every flux-status check on the commit, of every instance.
    #[arg(long, conflicts_with = "wait")]
    pub all: bool,

    /// Poll until the check reaches a final state: exit 0 succeeded, 1 failed or
    /// canceled, 124 when --timeout passes first.
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Time between polls with --wait (longer when the provider asks us to slow down).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Accepted for compatibility with the original CLI; has no effect.
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub debug: Option<bool>,
}

#[derive(serde::Serialize)]
struct Line<'a> {
    name: &'a str,
    state: State,
}

fn print(
    out: &mut dyn Write,
    format: Output,
    statuses: &[&ReadStatus],
    as_list: bool,
) -> std::io::Result<()> {
    match format {
        Output::Json if as_list => {
            let lines: Vec<Line> = statuses
                .iter()
                .map(|s| Line {
                    name: s.check.as_str(),
                    state: s.state,
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string(&lines).unwrap_or_default())
        }
        Output::Json => statuses.iter().try_for_each(|s| {
            let line = Line {
                name: s.check.as_str(),
                state: s.state,
            };
            writeln!(out, "{}", serde_json::to_string(&line).unwrap_or_default())
        }),
        Output::Text => statuses.iter().try_for_each(|s| {
            if s.description.is_empty() {
                writeln!(out, "{} {}", s.check, s.state)
            } else {
                writeln!(out, "{} {} ({})", s.check, s.state, s.description)
            }
        }),
    }
}

/// The newest status of each flux-status check, for `--all`.
fn newest_per_check(statuses: &[ReadStatus]) -> Vec<&ReadStatus> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<&ReadStatus> = statuses
        .iter()
        .filter(|s| s.check.as_str().starts_with("flux-status/"))
        .filter(|s| seen.insert(s.check.as_str()))
        .collect();
    out.sort_by(|a, b| a.check.cmp(&b.check));
    out
}

/// Runs the CLI; returns the exit code. `out` gets results, `err` messages.
pub async fn run(args: CliArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut problems = Problems::default();
    let instance = validate_instance(&args.instance, &mut problems);
    let sha = Sha::parse(args.commit_id.trim())
        .map_err(|e| problems.push("--commit-id", e.to_string()))
        .ok();
    if args.wait && args.interval.is_zero() {
        problems.push("--interval", "must be above zero");
    }
    if args.target.git_url.is_none() {
        problems.push("--git-url", "is required (the repository Flux syncs from)");
    }
    // The daemon's target section, read the same way; the CLI only reads, so it
    // always needs the provider's credential.
    let target = args.target.validate(false, &mut problems);
    let action = match args.action {
        Action::Sync => "sync",
        Action::Workload => "workload",
    };
    let check = Check::new(format!("flux-status/{instance}/{action}"));
    let check_runs = target
        .git_url
        .as_ref()
        .is_some_and(|t| crate::config::target::writes_check_runs(target.github_checks, t));
    let notifier: Option<Arc<dyn Notifier>> = match target.git_url {
        Some(Target::Provider {
            provider,
            git_url,
            api_url,
            credential,
        }) => match notifiers::http::client(&target.http) {
            // Check runs of the one check asked for (`check_name`), or all for --all.
            Ok(client) if check_runs => {
                let only = (!args.all).then(|| check.clone());
                notifiers::github::checks::notifier(client, &git_url, api_url.as_deref(), credential, only)
                    .map_err(|e| problems.push("--git-url", e.to_string()))
                    .ok()
            }
            Ok(client) => provider
                .notifier(client, &git_url, api_url.as_deref(), credential)
                .map_err(|e| problems.push("--git-url", e.to_string()))
                .ok(),
            Err(e) => {
                problems.push("--ca-file", e.to_string());
                None
            }
        },
        _ => None,
    };
    let (Some(sha), Some(notifier), true) = (sha, notifier, problems.is_empty()) else {
        let _ = writeln!(err, "flux-status-cli: {}", ConfigError::from(problems));
        return exit::USAGE;
    };
    let deadline = Instant::now() + args.timeout;
    let mut last_seen: Option<ReadStatus> = None;
    loop {
        let mut delay = args.interval;
        match notifier.list_statuses(&sha).await {
            Ok(statuses) if args.all => {
                let list = newest_per_check(&statuses);
                if list.is_empty() {
                    let _ = writeln!(
                        err,
                        "flux-status-cli: no flux-status check on {sha} in {}",
                        notifier.repo()
                    );
                    return exit::NOT_OK;
                }
                let _ = print(out, args.output, &list, true);
                return exit::OK;
            }
            Ok(statuses) => {
                // Newest first: the first exact match is the current state of the check.
                let found = statuses.into_iter().find(|s| s.check == check);
                match found {
                    Some(s) if !args.wait => {
                        let _ = print(out, args.output, &[&s], false);
                        return exit::OK;
                    }
                    Some(s) if s.state.is_final() => {
                        let _ = print(out, args.output, &[&s], false);
                        return if s.state == State::Succeeded {
                            exit::OK
                        } else {
                            exit::NOT_OK
                        };
                    }
                    None if !args.wait => {
                        let _ = writeln!(
                            err,
                            "flux-status-cli: no status {check} on {sha} in {}",
                            notifier.repo()
                        );
                        return exit::NOT_OK;
                    }
                    pending_or_missing => last_seen = pending_or_missing.or(last_seen),
                }
            }
            Err(e) if !args.wait || e.retry == Retry::Permanent => {
                let _ = writeln!(err, "flux-status-cli: reading statuses: {e}");
                return exit::PROVIDER;
            }
            Err(e) => {
                // Rate limits and transient failures: keep waiting, as asked to.
                delay = e.retry_after.map_or(delay, |asked| asked.max(delay));
                let _ = writeln!(
                    err,
                    "flux-status-cli: reading statuses failed, retrying in {delay:?}: {e}"
                );
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
    }
    if let Some(s) = &last_seen {
        let _ = print(out, args.output, &[s], false);
    }
    let seen = last_seen
        .map(|s| s.state.to_string())
        .unwrap_or_else(|| "no status".into());
    let _ = writeln!(
        err,
        "flux-status-cli: timed out after {:?} waiting for {check} on {sha} ({seen})",
        args.timeout
    );
    exit::TIMEOUT
}
