//! GitHub and GitHub Enterprise Server commit statuses.
//!
//! `POST /repos/{owner}/{repo}/statuses/{sha}`; descriptions are cut to 140
//! characters (GitHub answers 422 past that). Authenticates with a token, or as a
//! GitHub App installation ([`app`], [`installation`]).

pub mod app;
pub mod checks;
pub mod deployments;
pub mod installation;

use crate::credential::{CredentialSource, with_token};
use crate::git_url::{GitUrl, GitUrlError};
use crate::http::{self, sensitive_header};
use crate::provider::{AppSpec, CredentialSpec, ProviderSpec, TextLimits, WriteBudget};
use crate::{
    Check, CommitStatus, Handle, MAX_PAGES, Notifier, NotifyError, ReadStatus, Receipt, Sha, State, text,
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const NAME: &str = "github";
pub const DESCRIPTION_LIMIT: usize = 140;

pub static SPEC: ProviderSpec = ProviderSpec {
    name: NAME,
    title: "GitHub",
    aliases: &[],
    hosts: &["github.com", "www.github.com", "ssh.github.com"],
    api_url_help: "GitHub https://api.github.com, or https://<host>/api/v3 for GitHub Enterprise",
    credential: CredentialSpec {
        what: "GitHub token",
        flag: "github-token",
        env: "GITHUB_TOKEN",
        file_flag: "github-token-file",
        file_env: "FLUX_STATUS_GITHUB_TOKEN_FILE",
        forms: "a classic (ghp_…) or fine-grained (github_pat_…) personal access token, or a GitHub App \
                installation token (ghs_…), with commit statuses read and write",
    },
    app: Some(AppSpec {
        what: "GitHub App",
        id_flag: "github-app-id",
        id_env: "GITHUB_APP_ID",
        key_flag: "github-app-private-key",
        key_env: "GITHUB_APP_PRIVATE_KEY",
        key_file_flag: "github-app-private-key-file",
        key_file_env: "GITHUB_APP_PRIVATE_KEY_FILE",
        installation_flag: "github-app-installation-id",
        installation_env: "GITHUB_APP_INSTALLATION_ID",
        permissions: "Checks, Commit statuses and Deployments: read and write; Metadata: read",
        source: |c| {
            let (api, repo_url, repo) = endpoints(c.git_url, c.api_url)?;
            Ok(Arc::new(installation::InstallationTokens::new(
                c.client, &api, &repo_url, &repo, c.app,
            )))
        },
    }),
    // The context has no documented limit.
    limits: TextLimits {
        description: DESCRIPTION_LIMIT,
        context: None,
    },
    // Status writes are content creation: GitHub's secondary limit binds at about 80 a
    // minute; 5000 requests an hour is the primary limit of a token.
    budget: WriteBudget {
        writes_per_minute: Some(80),
        requests_per_hour: Some(5000),
    },
    repo_key: |url| {
        let (owner, repo) = repo_path(url)?;
        Ok(format!("{}/{owner}/{repo}", default_api_url(url)))
    },
    deployments: Some(deployments::notifier),
    build: |c| {
        Ok(Arc::new(GitHub::with_credential(
            c.client,
            c.git_url,
            c.api_url,
            c.credential,
        )?))
    },
};
const API_VERSION: &str = "2022-11-28";

/// `owner/repo` from any form of GitHub remote URL.
pub fn repo_path(url: &GitUrl) -> Result<(String, String), GitUrlError> {
    match url.repo_segments().as_slice() {
        [owner, repo] => Ok((owner.to_string(), repo.to_string())),
        _ => Err(GitUrlError::UnexpectedPath {
            provider: "GitHub",
            expected: "<owner>/<repo>",
            got: url.segments.join("/"),
        }),
    }
}

/// `https://api.github.com` for github.com, `https://<host>/api/v3` for GitHub Enterprise.
pub fn default_api_url(url: &GitUrl) -> String {
    if SPEC.is_public_host(&url.host) {
        "https://api.github.com".to_string()
    } else {
        format!("{}/api/v3", url.web_origin())
    }
}

/// Our state in GitHub's words. GitHub has no "canceled": `error` is its closest.
pub fn state(s: State) -> &'static str {
    match s {
        State::Pending => "pending",
        State::Succeeded => "success",
        State::Failed => "failure",
        State::Canceled => "error",
    }
}

/// GitHub's state read back: `error` is a failure too.
pub fn read_state(s: &str) -> Option<State> {
    match s {
        "pending" => Some(State::Pending),
        "success" => Some(State::Succeeded),
        "failure" | "error" => Some(State::Failed),
        _ => None,
    }
}

pub struct GitHub {
    client: reqwest::Client,
    api: String,
    /// `{api}/repos/{owner}/{repo}`
    repo_url: String,
    credential: Arc<dyn CredentialSource>,
    repo: String,
}

#[derive(Deserialize)]
struct Listed {
    id: i64,
    state: String,
    context: Option<String>,
    description: Option<String>,
}

/// A commit status as GitHub takes it, and Gitea and Forgejo, which copied its API.
#[derive(Serialize)]
pub(crate) struct CreateStatus<'a> {
    state: &'static str,
    context: &'a str,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
}

impl<'a> CreateStatus<'a> {
    /// The description folded to one line and cut to `description_limit`.
    pub(crate) fn of(status: &'a CommitStatus, description_limit: usize) -> Self {
        CreateStatus {
            state: state(status.state),
            context: status.check.as_str(),
            description: text::one_line_truncated(&status.description, description_limit),
            target_url: status.target_url.as_deref(),
        }
    }
}

impl GitHub {
    /// A notifier that asks `credential` for the token on every request.
    pub fn with_credential(
        client: reqwest::Client,
        url: &GitUrl,
        api_url: Option<&str>,
        credential: Arc<dyn CredentialSource>,
    ) -> Result<Self, GitUrlError> {
        let (api, repo_url, _) = endpoints(url, api_url)?;
        let (owner, repo) = repo_path(url)?;
        Ok(GitHub {
            client,
            api,
            repo_url,
            credential,
            repo: format!("{}/{owner}/{repo}", url.host),
        })
    }

    fn auth(
        req: reqwest::RequestBuilder,
        token: &SecretString,
    ) -> Result<reqwest::RequestBuilder, NotifyError> {
        let bearer = sensitive_header(&format!("Bearer {}", token.expose_secret()))?;
        Ok(with_api_headers(
            req.header(reqwest::header::AUTHORIZATION, bearer),
        ))
    }
}

/// The headers every GitHub API request carries besides its credential.
fn with_api_headers(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header(reqwest::header::ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", API_VERSION)
}

/// The API base (`--api-url` or derived from the URL), `{api}/repos/{owner}/{repo}`
/// and `owner/repo`.
fn endpoints(url: &GitUrl, api_url: Option<&str>) -> Result<(String, String, String), GitUrlError> {
    let (owner, repo) = repo_path(url)?;
    let api = api_url
        .map(str::to_string)
        .unwrap_or_else(|| default_api_url(url));
    let api = api.trim_end_matches('/').to_string();
    let repo_url = format!(
        "{api}/repos/{}/{}",
        utf8_percent_encode(&owner, NON_ALPHANUMERIC),
        utf8_percent_encode(&repo, NON_ALPHANUMERIC),
    );
    Ok((api, repo_url, format!("{owner}/{repo}")))
}

#[async_trait::async_trait]
impl Notifier for GitHub {
    fn name(&self) -> &'static str {
        NAME
    }

    fn repo(&self) -> &str {
        &self.repo
    }

    async fn write(&self, status: &CommitStatus, _: Option<&Handle>) -> Result<Receipt, NotifyError> {
        let body = CreateStatus::of(status, DESCRIPTION_LIMIT);
        let url = format!("{}/statuses/{}", self.repo_url, status.sha);
        with_token(&*self.credential, |token| {
            let req = Self::auth(self.client.post(&url), &token).map(|r| r.json(&body));
            async move { http::write(NAME, req?, http::no_special_answers).await }
        })
        .await
        .map(Receipt::from)
    }

    fn reads_back_as(&self, s: State) -> State {
        read_state(state(s)).unwrap_or(s)
    }

    async fn check_credentials(&self) -> Result<(), NotifyError> {
        with_token(&*self.credential, |token| {
            let req = Self::auth(self.client.get(&self.repo_url), &token);
            async move { http::read(NAME, req?).await }
        })
        .await
        .map(drop)
    }

    async fn list_statuses(&self, sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        let mut url = format!("{}/commits/{sha}/statuses?per_page=100", self.repo_url);
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let resp = with_token(&*self.credential, |token| {
                let req = Self::auth(self.client.get(&url), &token);
                async move { http::read(NAME, req?).await }
            })
            .await?;
            let page: Vec<Listed> = resp.json(NAME)?;
            out.extend(page.into_iter().filter_map(|s| {
                Some(ReadStatus {
                    check: Check::new(s.context?),
                    state: read_state(&s.state)?,
                    description: s.description.unwrap_or_default(),
                    id: s.id,
                })
            }));
            match http::next_link(&resp.headers, &self.api) {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(crate::newest_first(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_path_from_every_remote_form() {
        for input in [
            "https://github.com/fluxcd/flux-get-started",
            "https://github.com/fluxcd/flux-get-started.git",
            "git@github.com:fluxcd/flux-get-started.git",
            "ssh://git@github.com/fluxcd/flux-get-started",
            "ssh://git@ssh.github.com:443/fluxcd/flux-get-started.git",
        ] {
            let url = GitUrl::parse(input).unwrap();
            assert_eq!(
                repo_path(&url).unwrap(),
                ("fluxcd".to_string(), "flux-get-started".to_string()),
                "{input}"
            );
        }
        let dotted = GitUrl::parse("https://github.com/o/my.repo.name.git").unwrap();
        assert_eq!(repo_path(&dotted).unwrap().1, "my.repo.name");
    }

    #[test]
    fn repo_path_rejects_other_shapes() {
        for input in ["https://github.com/only-owner", "https://github.com/a/b/c"] {
            let url = GitUrl::parse(input).unwrap();
            assert!(
                matches!(repo_path(&url), Err(GitUrlError::UnexpectedPath { .. })),
                "{input}"
            );
        }
    }

    #[test]
    fn api_base_for_github_and_enterprise() {
        let gh = GitUrl::parse("git@github.com:o/r.git").unwrap();
        assert_eq!(default_api_url(&gh), "https://api.github.com");
        let ghe = GitUrl::parse("git@github.example.com:o/r.git").unwrap();
        assert_eq!(default_api_url(&ghe), "https://github.example.com/api/v3");
        let ghe_port = GitUrl::parse("https://github.example.com:8443/o/r").unwrap();
        assert_eq!(
            default_api_url(&ghe_port),
            "https://github.example.com:8443/api/v3"
        );
    }

    #[test]
    fn states_map_to_github_words() {
        let got: Vec<_> = State::ALL.iter().map(|s| state(*s)).collect();
        assert_eq!(got, ["pending", "success", "failure", "error"]);
    }
}
