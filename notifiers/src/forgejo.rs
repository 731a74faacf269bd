//! Forgejo (Codeberg and self-hosted) commit statuses: Gitea's API, kept by
//! [`crate::gitea`]; only the name, the hosts and the credential are Forgejo's.

use crate::git_url::{GitUrl, GitUrlError};
use crate::gitea::{self, RepoPath};
use crate::provider::{CredentialSpec, ProviderSpec};

pub const NAME: &str = "forgejo";

pub static SPEC: ProviderSpec = ProviderSpec {
    name: NAME,
    title: "Forgejo",
    aliases: &[],
    hosts: &["codeberg.org"],
    api_url_help: "Forgejo https://codeberg.org or https://<host>[/<sub-path>] (/api/v1 is appended)",
    credential: CredentialSpec {
        what: "Forgejo token",
        flag: "forgejo-token",
        env: "FORGEJO_TOKEN",
        file_flag: "forgejo-token-file",
        file_env: "FLUX_STATUS_FORGEJO_TOKEN_FILE",
        forms: "a Forgejo access token with the write:repository scope",
    },
    app: None,
    limits: gitea::LIMITS,
    budget: gitea::BUDGET,
    repo_key: |url| gitea::repo_key(&SPEC, url),
    deployments: None,
    build: |c| gitea::connect(&SPEC, c),
};

/// The repository a Forgejo URL names.
pub fn repo_path(url: &GitUrl) -> Result<RepoPath, GitUrlError> {
    gitea::repo_path_of(&SPEC, url)
}

/// The API base a Forgejo URL implies: the web origin, the sub-path, `/api/v1`.
pub fn default_api_url(url: &GitUrl) -> Result<String, GitUrlError> {
    gitea::default_api_url_of(&SPEC, url)
}
