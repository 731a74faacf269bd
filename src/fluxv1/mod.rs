//! The Flux v1 edge: fluxd's `POST /v6/events` and its `/vN/daemon` websocket.

pub mod daemon;
pub mod event;
pub mod events;
pub mod poller;
pub mod rpc;
pub mod workloads;
