//! The Flux v2 edge: events from notification-controller's `generic` /
//! `generic-hmac` Provider, or straight from the controllers' `--events-addr`.

pub mod event;
pub mod events;
pub mod signature;
