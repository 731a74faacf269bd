//! The Flux v1 slice: fluxd's `POST /v6/events` (route, decode, map) and its
//! `/vN/daemon` websocket, with the workload check that calls fluxd over it.

pub mod daemon;
pub mod event;
pub mod judge;
pub mod map;
pub mod poller;
pub mod report;
pub mod route;
pub mod rpc;
pub mod workloads;
