//! The workload section: Flux v1 workload polling after each sync.

use super::Problems;
use super::usage::parse_duration;
use clap::ArgAction;
use std::time::Duration;

#[derive(clap::Args)]
pub struct WorkloadArgs {
    /// fluxd's HTTP API, for workload polling when no websocket is connected.
    #[arg(long, env = "FLUX_STATUS_FLUX", default_value = "localhost:3030")]
    pub flux: String,

    /// Poll workload health after each sync (flag of the original flux-status).
    #[arg(long, env = "FLUX_STATUS_POLL_WORKLOADS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = ArgAction::Set, default_value = "true")]
    pub poll_workloads: bool,

    /// Time between workload polls; bare numbers are seconds.
    #[arg(long = "poll-interval", alias = "poll-intervall", env = "FLUX_STATUS_POLL_INTERVAL",
          default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Give up waiting for workloads after this long; bare numbers are seconds; 0 waits
    /// until they settle or a newer sync takes over.
    #[arg(long, env = "FLUX_STATUS_POLL_TIMEOUT", default_value = "360s", value_parser = parse_duration)]
    pub poll_timeout: Duration,

    /// How long one workload list request to fluxd may take (RPC or HTTP); fluxd's own
    /// --rpc-timeout is 10s.
    #[arg(long, env = "FLUX_STATUS_FLUX_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub flux_timeout: Duration,
}

/// Flux v1 workload polling after each sync.
#[derive(Debug, Clone)]
pub struct WorkloadPolling {
    /// `--flux`: fluxd's HTTP API, used when no websocket is connected.
    pub flux: String,
    pub interval: Duration,
    pub timeout: Option<Duration>,
    pub call_timeout: Duration,
}

impl WorkloadArgs {
    /// `None`: `--poll-workloads=false`.
    pub fn validate(self, problems: &mut Problems) -> Option<WorkloadPolling> {
        if self.poll_interval.is_zero() {
            problems.push("--poll-interval", "must be above zero");
        }
        if self.flux_timeout.is_zero() {
            problems.push("--flux-timeout", "must be above zero");
        }
        self.poll_workloads.then(|| WorkloadPolling {
            flux: self.flux,
            interval: self.poll_interval,
            timeout: (!self.poll_timeout.is_zero()).then_some(self.poll_timeout),
            call_timeout: self.flux_timeout,
        })
    }
}
