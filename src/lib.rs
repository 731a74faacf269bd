//! flux-status: Flux deploy events in, commit statuses out.
//!
//! ```text
//! ingest (fluxv1) ─▶ mapping (pure) ─▶ delivery (outbox, retry) ─▶ notifiers crate
//! ```
//! Ingest never calls a provider; mapping does no I/O; notifiers know nothing of Flux.

pub mod auth;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod delivery;
pub mod fluxv1;
pub mod fluxv2;
pub mod ingest;
pub mod intake;
pub mod json;
pub mod listener;
pub mod mapping;
pub mod metrics;
pub mod ops;
pub mod repos;
pub mod telemetry;
pub mod update;
