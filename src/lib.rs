//! flux-status: Flux deploy events in, commit statuses out.
//!
//! ```text
//! ingest (edge) ─▶ fluxv1/, fluxv2/ (route, decode, map: pure) ─▶ delivery (outbox, retry) ─▶ notifiers crate
//! ```
//! Ingest never calls a provider; mapping does no I/O; notifiers know nothing of Flux.
//! The layers and the rule that no module imports upwards: docs/architecture.md;
//! tests/integration/layers.rs enforces it.

pub mod auth;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod delivery;
pub mod deployments;
pub mod fluxv1;
pub mod fluxv2;
pub mod ingest;
pub mod intake;
pub mod json;
pub mod listener;
pub mod mapping;
pub mod metrics;
pub mod ops;
pub mod report;
pub mod repos;
pub mod telemetry;
pub mod update;
pub mod writers;
