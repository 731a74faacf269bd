//! The Flux v2 slice: events from notification-controller's `generic` /
//! `generic-hmac` Provider, or straight from the controllers' `--events-addr`.
//! `route` takes a request to a typed outcome through `signature`, `event` (decode)
//! and `map`.

pub mod event;
pub mod map;
pub mod report;
pub mod route;
pub mod signature;
