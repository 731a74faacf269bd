//! The integration tests: one binary, one module per area. `support` runs the daemon
//! in-process; the few tests that need a real SIGKILL or SIGTERM run it as a child.
//! One module: `cargo test --test integration durability::`.

mod auth;
mod cli;
mod crash;
mod deployments;
mod durability;
mod fluxv1_github;
mod fluxv2;
mod github_app;
mod github_checks;
mod github_deployments;
mod github_fake;
mod gitlab_deployments;
mod gitlab_fake;
mod harness;
mod hostile_input;
mod layers;
mod outbox_faults;
mod providers;
mod readback;
mod slow_clients;
mod support;
mod workloads;
