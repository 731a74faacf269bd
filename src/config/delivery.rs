//! The delivery section: the outbox, client-side write budgets, retries and drain.

use super::Problems;
use super::target::Target;
use super::usage::parse_duration;
use crate::delivery::DeliveryConfig;
use crate::delivery::limiter::Limits;
use notifiers::Provider;
use std::path::PathBuf;
use std::time::Duration;

/// `--writes-per-minute`'s and `--requests-per-hour`'s defaults, from the registry.
fn budget_help(what: &str, of: fn(Provider) -> Option<u32>) -> String {
    let defaults: Vec<String> = Provider::all()
        .map(|p| match of(p) {
            Some(n) => format!("{} {n}", p.spec().title),
            None => format!("{} none", p.spec().title),
        })
        .collect();
    format!(
        "Client-side limit on {what} [default: {}]; 0 for none",
        defaults.join(", ")
    )
}

#[derive(clap::Args)]
pub struct DeliveryArgs {
    /// Directory for the durable outbox (pending updates and what was written).
    #[arg(long, env = "FLUX_STATUS_STATE_DIR", default_value = "/var/lib/flux-status")]
    pub state_dir: PathBuf,

    /// Keep the outbox in memory only: accepted updates are lost if the process dies.
    #[arg(long, env = "FLUX_STATUS_NO_PERSISTENCE")]
    pub no_persistence: bool,

    #[arg(long, env = "FLUX_STATUS_WRITES_PER_MINUTE",
          help = budget_help("status writes per minute", |p| p.spec().budget.writes_per_minute))]
    pub writes_per_minute: Option<u32>,

    #[arg(long, env = "FLUX_STATUS_REQUESTS_PER_HOUR",
          help = budget_help("provider requests per hour", |p| p.spec().budget.requests_per_hour))]
    pub requests_per_hour: Option<u32>,

    /// Checks that may wait for delivery at once; beyond it events get 503 and fluxd re-sends.
    #[arg(long, env = "FLUX_STATUS_QUEUE_CAPACITY", default_value_t = 10_000)]
    pub queue_capacity: usize,

    /// Provider writes under way at once.
    #[arg(long, env = "FLUX_STATUS_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,

    /// First retry delay after a failed write; doubles per attempt.
    #[arg(long, env = "FLUX_STATUS_RETRY_INITIAL", default_value = "1s", value_parser = parse_duration)]
    pub retry_initial: Duration,

    /// Longest delay between retries.
    #[arg(long, env = "FLUX_STATUS_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub retry_max: Duration,

    /// How long a provider may still apply a write whose answer we never got (our
    /// timeout, a reset, a 5xx). That check is not written again before then, and then
    /// only if reading back shows another state on top. [default: 3 × --http-timeout]
    #[arg(long, env = "FLUX_STATUS_SETTLE_AFTER", value_parser = parse_duration)]
    pub settle_after: Option<Duration>,

    /// On SIGTERM, how long to keep delivering before exiting.
    #[arg(long, env = "FLUX_STATUS_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

pub struct DeliverySection {
    pub delivery: DeliveryConfig,
    /// `None`: no persistence (`--no-persistence`).
    pub state_dir: Option<PathBuf>,
    pub budget: Budget,
    pub shutdown_timeout: Duration,
}

/// The write-budget flags; unset means the provider's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Budget {
    writes_per_minute: Option<u32>,
    requests_per_hour: Option<u32>,
}

impl Budget {
    /// The client-side limits for a target: the flags, else its provider's defaults.
    pub fn limits(&self, target: &Target) -> Limits {
        let default = match target {
            Target::Provider { provider, .. } => Some(provider.spec().budget),
            Target::DryRun { .. } => None,
        };
        let limit = |given: Option<u32>, default: Option<u32>| match given {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        Limits {
            writes_per_minute: limit(self.writes_per_minute, default.and_then(|b| b.writes_per_minute)),
            requests_per_hour: limit(self.requests_per_hour, default.and_then(|b| b.requests_per_hour)),
        }
    }
}

impl DeliveryArgs {
    /// `http_timeout` sets the default of `--settle-after`.
    pub fn validate(self, http_timeout: Duration, problems: &mut Problems) -> DeliverySection {
        if self.queue_capacity == 0 {
            problems.push("--queue-capacity", "must be at least 1");
        }
        if self.concurrency == 0 {
            problems.push("--concurrency", "must be at least 1");
        }
        if self.retry_initial.is_zero() || self.retry_initial > self.retry_max {
            problems.push("--retry-initial", "must be above zero and at most --retry-max");
        }
        if self.settle_after.is_some_and(|d| d.is_zero()) {
            problems.push("--settle-after", "must be above zero");
        }
        DeliverySection {
            delivery: DeliveryConfig {
                capacity: self.queue_capacity,
                concurrency: self.concurrency,
                initial_backoff: self.retry_initial,
                max_backoff: self.retry_max,
                settle_after: self.settle_after.unwrap_or(http_timeout * 3),
                ..DeliveryConfig::default()
            },
            state_dir: (!self.no_persistence).then_some(self.state_dir),
            budget: Budget {
                writes_per_minute: self.writes_per_minute,
                requests_per_hour: self.requests_per_hour,
            },
            shutdown_timeout: self.shutdown_timeout,
        }
    }
}
