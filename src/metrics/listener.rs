//! What the listeners count: connections open, and connections closed by a limit.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `ingest` or `ops`.
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub listener: &'static str,
    /// `connection_limit`, `header_timeout`, `idle_timeout`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct ListenerMetrics {
    pub open: Family<ListenerLabel, Gauge>,
    pub closed: Family<ClosedLabels, Counter>,
    /// fluxd websocket upgrades refused: `unauthorized`, `no_token_configured`, `too_many_sessions`.
    pub websocket_refused: Family<ReasonLabel, Counter>,
}

impl ListenerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let open = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Client connections open, by listener",
            open.clone(),
        );
        let closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Client connections closed by a limit (cap, header or idle timeout), by listener and reason",
            closed.clone(),
        );
        let websocket_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "websocket_refused",
            "fluxd websocket upgrades refused, by reason",
            websocket_refused.clone(),
        );
        ListenerMetrics {
            open,
            closed,
            websocket_refused,
        }
    }

    pub fn closed(&self, listener: &'static str, reason: &'static str) {
        self.closed
            .get_or_create(&ClosedLabels { listener, reason })
            .inc();
    }
}
