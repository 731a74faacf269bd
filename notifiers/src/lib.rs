//! Commit-status providers for flux-status.
//!
//! Every provider module has the same shape: repository from a git URL, default API
//! base, auth, request building, state mapping, error classification, reading back.
//! What they share (HTTP client, error classification, truncation) lives once in
//! [`http`] and [`text`]. Nothing here knows about Flux.

pub mod azure_devops;
pub mod bitbucket;
pub mod credential;
pub mod deployment;
pub mod dry_run;
pub mod error;
pub mod forgejo;
pub mod git_url;
pub mod gitea;
pub mod github;
pub mod gitlab;
pub mod http;
mod notifier;
pub mod provider;
pub mod status;
pub mod text;

pub use credential::{Credential, CredentialSource, StaticToken};
pub use error::{NotifyError, Reason, Retry};
pub use git_url::{GitUrl, GitUrlError};
pub use github::app::{App, AppCredential, AppError};
pub use notifier::{Budget, Handle, Notifier, Receipt};
pub use provider::{Provider, ProviderSpec};
pub use status::{Check, CommitStatus, ReadStatus, Sha, ShaError, State, newest_first};

/// Every provider flux-status writes to. Adding one: its module with a
/// [`ProviderSpec`], and a line here.
pub static PROVIDERS: &[&ProviderSpec] = &[
    &github::SPEC,
    &gitlab::SPEC,
    &azure_devops::SPEC,
    &bitbucket::cloud::SPEC,
    &bitbucket::server::SPEC,
    &gitea::SPEC,
    &forgejo::SPEC,
];

/// Bound on pages read for one commit: a runaway pagination must not loop forever.
pub const MAX_PAGES: usize = 100;
