//! Commit-status providers for flux-status.
//!
//! Every provider module has the same shape: repository from a git URL, default API
//! base, auth, request building, state mapping, error classification, reading back.
//! What they share (HTTP client, error classification, truncation) lives once in
//! [`http`] and [`text`]. Nothing here knows about Flux.

pub mod azure_devops;
pub mod credential;
pub mod dry_run;
pub mod error;
pub mod git_url;
pub mod github;
pub mod gitlab;
pub mod http;
mod notifier;
pub mod status;
pub mod text;

pub use credential::{CredentialSource, StaticToken};
pub use error::{NotifyError, Reason, Retry};
pub use git_url::{GitUrl, GitUrlError};
pub use notifier::{Budget, Handle, Notifier, Receipt};
pub use status::{Check, CommitStatus, ReadStatus, Sha, ShaError, State, newest_first};

use secrecy::SecretString;
use std::fmt;
use std::sync::Arc;

/// A git hosting service we can write statuses to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    GitHub,
    GitLab,
    AzureDevOps,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::AzureDevOps => "azure-devops",
        }
    }

    /// The flag that carries this provider's credential, for messages.
    pub fn credential_flag(self) -> &'static str {
        match self {
            Provider::GitHub => "GITHUB_TOKEN or --github-token-file",
            Provider::GitLab => "GITLAB_TOKEN or --gitlab-token-file",
            Provider::AzureDevOps => "AZDO_PAT or --azdo-pat-file",
        }
    }

    /// How long a description may be before the provider refuses it (or we cut it).
    pub fn description_limit(self) -> usize {
        match self {
            Provider::GitHub => github::DESCRIPTION_LIMIT,
            Provider::GitLab => gitlab::DESCRIPTION_LIMIT,
            Provider::AzureDevOps => azure_devops::DESCRIPTION_LIMIT,
        }
    }

    /// Checks that `url` names a repository this provider can address.
    pub fn check_url(self, url: &GitUrl) -> Result<(), GitUrlError> {
        match self {
            Provider::GitHub => github::repo_path(url).map(drop),
            Provider::GitLab => gitlab::repo_path(url).map(drop),
            Provider::AzureDevOps => azure_devops::repo_path(url).map(drop),
        }
    }

    /// The notifier for `url` on this provider; `api_url` overrides the API base
    /// derived from the URL (GitHub Enterprise, self-managed GitLab, ADO Server).
    pub fn notifier(
        self,
        client: reqwest::Client,
        url: &GitUrl,
        api_url: Option<&str>,
        credential: SecretString,
    ) -> Result<Arc<dyn Notifier>, GitUrlError> {
        Ok(match self {
            Provider::GitHub => Arc::new(github::GitHub::new(client, url, api_url, credential)?),
            Provider::GitLab => Arc::new(gitlab::GitLab::new(client, url, api_url, credential)?),
            Provider::AzureDevOps => {
                Arc::new(azure_devops::AzureDevOps::new(client, url, api_url, credential)?)
            }
        })
    }

    /// The provider a public host belongs to; self-hosted hosts need `--provider`.
    pub fn detect(host: &str) -> Option<Provider> {
        let host = host.to_ascii_lowercase();
        match host.as_str() {
            "github.com" | "www.github.com" | "ssh.github.com" => Some(Provider::GitHub),
            "gitlab.com" | "www.gitlab.com" | "altssh.gitlab.com" => Some(Provider::GitLab),
            "dev.azure.com" | "ssh.dev.azure.com" | "vs-ssh.visualstudio.com" => Some(Provider::AzureDevOps),
            h if h.ends_with(".visualstudio.com") => Some(Provider::AzureDevOps),
            _ => None,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "github" => Ok(Provider::GitHub),
            "gitlab" => Ok(Provider::GitLab),
            "azure-devops" | "azuredevops" | "azure" | "azdo" => Ok(Provider::AzureDevOps),
            other => Err(format!(
                "unknown provider {other:?} (github, gitlab, azure-devops)"
            )),
        }
    }
}

/// Bound on pages read for one commit: a runaway pagination must not loop forever.
pub const MAX_PAGES: usize = 100;
