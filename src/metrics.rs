//! Prometheus metrics. Every label value is from a bounded set: no SHAs, repos or
//! check names, which would grow without limit.

pub mod listener;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `fluxv1` or `fluxv2`.
    pub source: &'static str,
    pub r#type: &'static str,
    /// `accepted`, or why not (`malformed_json`, `too_large`, `unauthorized`, …).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub provider: &'static str,
    pub state: &'static str,
    /// `written`, `deduplicated`, `dropped`, `reconciled` (found on top when read
    /// back), `in_doubt` (a write whose outcome is unknown).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderOnly {
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

impl ResultLabel {
    /// `ok` or `error`.
    pub fn of<T, E>(r: &Result<T, E>) -> Self {
        ResultLabel {
            result: if r.is_ok() { "ok" } else { "error" },
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `succeeded`, `failed`, `timed_out`, `superseded`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FluxdCallLabels {
    /// `rpc` (over the websocket) or `http` (fluxd's API at `--flux`).
    pub transport: &'static str,
    /// `ok`, or why not (`timeout`, `method_missing`, `malformed`, …).
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub workload_polls: Family<OutcomeLabel, Counter>,
    pub workload_polls_active: Gauge,
    pub fluxd_calls: Family<FluxdCallLabels, Counter>,
    pub outbox_pending: Gauge,
    pub outbox_commits: Family<ResultLabel, Counter>,
    pub outbox_compactions: Family<ResultLabel, Counter>,
    pub outbox_damaged_records: Counter,
    pub outbox_damaged_bytes: Counter,
    pub rate_limit_remaining: Family<ProviderOnly, Gauge>,
    pub events: Family<EventLabels, Counter>,
    pub skipped: Family<SkipLabels, Counter>,
    pub statuses: Family<StatusLabels, Counter>,
    pub retries: Family<ProviderLabels, Counter>,
    pub read_backs: Family<ProviderOnly, Counter>,
    pub queue_depth: Gauge,
    pub in_flight: Gauge,
    pub oldest_pending_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub fluxd_connected: Gauge,
    pub delivery_seconds: Histogram,
    pub listener: listener::ListenerMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flux_status");
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_received",
            "Events received, by source, type and result",
            events.clone(),
        );
        let skipped = Family::<SkipLabels, Counter>::default();
        registry.register(
            "events_skipped",
            "Accepted events (or parts of them) that produced no status, by reason",
            skipped.clone(),
        );
        let statuses = Family::<StatusLabels, Counter>::default();
        registry.register(
            "statuses",
            "Status updates by provider, state and result",
            statuses.clone(),
        );
        let retries = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "provider_retries",
            "Provider requests that will be retried, by reason",
            retries.clone(),
        );
        let read_backs = Family::<ProviderOnly, Counter>::default();
        registry.register(
            "provider_read_backs",
            "Listings of a commit's statuses read before writing a key whose last write may have landed",
            read_backs.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Updates due for writing now (not waiting on a backoff or a rate limit)",
            queue_depth.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register(
            "outbox_pending",
            "Checks with an update accepted and not yet written (persisted unless --no-persistence)",
            outbox_pending.clone(),
        );
        let outbox_commits = Family::<ResultLabel, Counter>::default();
        registry.register(
            "outbox_commits",
            "State store writes, one fsync each, by result",
            outbox_commits.clone(),
        );
        let outbox_compactions = Family::<ResultLabel, Counter>::default();
        registry.register(
            "outbox_compactions",
            "Rewrites of the state store's log down to its live records, by result",
            outbox_compactions.clone(),
        );
        let outbox_damaged_records = Counter::default();
        registry.register(
            "outbox_damaged_records",
            "Records of the outbox log lost to damage found at start (skipped; the damaged file is copied beside the log)",
            outbox_damaged_records.clone(),
        );
        let outbox_damaged_bytes = Counter::default();
        registry.register(
            "outbox_damaged_bytes",
            "Bytes of the outbox log skipped as damage at start",
            outbox_damaged_bytes.clone(),
        );
        let rate_limit_remaining = Family::<ProviderOnly, Gauge>::default();
        registry.register(
            "rate_limit_remaining",
            "Requests left in the provider's budget, as it last reported",
            rate_limit_remaining.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Provider writes under way",
            in_flight.clone(),
        );
        let oldest_pending_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "oldest_pending_seconds",
            "Age of the oldest update not yet written",
            oldest_pending_seconds.clone(),
        );
        let fluxd_connected = Gauge::default();
        registry.register(
            "fluxd_connected",
            "fluxd websocket connections open",
            fluxd_connected.clone(),
        );
        let workload_polls = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "workload_polls",
            "Flux v1 workload polls ended, by outcome",
            workload_polls.clone(),
        );
        let workload_polls_active = Gauge::default();
        registry.register(
            "workload_polls_active",
            "Flux v1 workload polls under way (0 or 1)",
            workload_polls_active.clone(),
        );
        let fluxd_calls = Family::<FluxdCallLabels, Counter>::default();
        registry.register(
            "fluxd_calls",
            "Workload list requests to fluxd, by transport and result",
            fluxd_calls.clone(),
        );
        let delivery_seconds = Histogram::new(exponential_buckets(0.0005, 4.0, 12));
        registry.register(
            "delivery_seconds",
            "Time from accepting an update to the provider confirming it",
            delivery_seconds.clone(),
        );
        let listener = listener::ListenerMetrics::register(&mut registry);
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry,
            workload_polls,
            workload_polls_active,
            fluxd_calls,
            outbox_pending,
            outbox_commits,
            outbox_compactions,
            outbox_damaged_records,
            outbox_damaged_bytes,
            rate_limit_remaining,
            events,
            skipped,
            statuses,
            retries,
            read_backs,
            queue_depth,
            in_flight,
            oldest_pending_seconds,
            fluxd_connected,
            delivery_seconds,
            listener,
        }
    }

    pub fn event(&self, source: &'static str, r#type: &'static str, result: &'static str) {
        self.events
            .get_or_create(&EventLabels {
                source,
                r#type,
                result,
            })
            .inc();
    }

    pub fn status(&self, provider: &'static str, state: notifiers::State, result: &'static str) {
        self.statuses
            .get_or_create(&StatusLabels {
                provider,
                state: state.as_str(),
                result,
            })
            .inc();
    }

    pub fn workload_poll(&self, outcome: &'static str) {
        self.workload_polls.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn fluxd_call(&self, transport: &'static str, result: &'static str) {
        self.fluxd_calls
            .get_or_create(&FluxdCallLabels { transport, result })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
