//! Bitbucket Cloud (bitbucket.org) build statuses.
//!
//! `POST /2.0/repositories/{workspace}/{repo}/commit/{sha}/statuses/build`. A status
//! is identified by its `key` (at most 40 characters): posting the same key again
//! overwrites it, so a check is one status, whatever it went through. The key is
//! derived from the check name ([`super::status_key`]); the full name goes in
//! `name`. Bitbucket requires a valid `url`.

use super::{DESCRIPTION_LIMIT, Fields, NAME_LIMIT, auth, check_of, encode};
use crate::credential::{CredentialSource, with_token};
use crate::git_url::{GitUrl, GitUrlError};
use crate::http;
use crate::provider::{CredentialSpec, ProviderSpec, TextLimits, WriteBudget};
use crate::{Check, CommitStatus, Handle, MAX_PAGES, Notifier, NotifyError, ReadStatus, Receipt, Sha, State};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const NAME: &str = "bitbucket";
/// Bitbucket Cloud answers 400 "Ensure this value has at most 40 characters" past it.
pub const KEY_LIMIT: usize = 40;
pub const DEFAULT_API: &str = "https://api.bitbucket.org";
const WEB: &str = "https://bitbucket.org";

pub static SPEC: ProviderSpec = ProviderSpec {
    name: NAME,
    title: "Bitbucket Cloud",
    aliases: &["bitbucket-cloud", "bitbucketcloud"],
    hosts: &["bitbucket.org", "www.bitbucket.org", "altssh.bitbucket.org"],
    api_url_help: "Bitbucket Cloud https://api.bitbucket.org",
    credential: CredentialSpec {
        what: "Bitbucket token",
        flag: "bitbucket-token",
        env: "BITBUCKET_TOKEN",
        file_flag: "bitbucket-token-file",
        file_env: "FLUX_STATUS_BITBUCKET_TOKEN_FILE",
        forms: "a repository, project or workspace access token (sent as Bearer), or <email>:<API token> \
                (sent as Basic), with Repositories: Read",
    },
    app: None,
    limits: TextLimits {
        description: DESCRIPTION_LIMIT,
        context: Some(NAME_LIMIT),
    },
    // 1,000 requests an hour per user on /2.0/repositories/*, read-backs included;
    // a tenth is left for flux-status-cli and the token's other users.
    budget: WriteBudget {
        writes_per_minute: None,
        requests_per_hour: Some(900),
    },
    repo_key: |url| {
        let (ws, repo) = repo_path(url)?;
        Ok(format!("{DEFAULT_API}/{ws}/{repo}"))
    },
    deployments: None,
    build: |c| {
        Ok(Arc::new(BitbucketCloud::with_credential(
            c.client,
            c.git_url,
            c.api_url,
            c.credential,
        )?))
    },
};

/// `workspace/repo` from any form of Bitbucket Cloud remote URL.
pub fn repo_path(url: &GitUrl) -> Result<(String, String), GitUrlError> {
    match url.repo_segments().as_slice() {
        [ws, repo] => Ok((ws.to_string(), repo.to_string())),
        _ => Err(GitUrlError::UnexpectedPath {
            provider: "Bitbucket Cloud",
            expected: "<workspace>/<repo>",
            got: url.segments.join("/"),
        }),
    }
}

/// `--api-url` or `https://api.bitbucket.org`, with `/2.0` appended once.
pub fn api_base(api_url: Option<&str>) -> String {
    http::with_api_prefix(api_url.unwrap_or(DEFAULT_API), "/2.0")
}

pub fn state(s: State) -> &'static str {
    match s {
        State::Pending => "INPROGRESS",
        State::Succeeded => "SUCCESSFUL",
        State::Failed => "FAILED",
        State::Canceled => "STOPPED",
    }
}

pub fn read_state(s: &str) -> Option<State> {
    match s {
        "INPROGRESS" => Some(State::Pending),
        "SUCCESSFUL" => Some(State::Succeeded),
        "FAILED" => Some(State::Failed),
        "STOPPED" => Some(State::Canceled),
        _ => None,
    }
}

pub struct BitbucketCloud {
    client: reqwest::Client,
    api: String,
    /// `{api}/repositories/{workspace}/{repo}`
    repo_url: String,
    /// `https://bitbucket.org/{workspace}/{repo}`: where a status links by default.
    web_url: String,
    credential: Arc<dyn CredentialSource>,
    repo: String,
}

#[derive(Serialize)]
struct CreateStatus {
    /// The spec's `object` base requires it.
    #[serde(rename = "type")]
    kind: &'static str,
    state: &'static str,
    #[serde(flatten)]
    fields: Fields,
}

#[derive(Deserialize)]
struct Listed {
    key: Option<String>,
    name: Option<String>,
    state: Option<String>,
    description: Option<String>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    values: Vec<Listed>,
    next: Option<String>,
}

impl BitbucketCloud {
    /// A notifier that asks `credential` for the token on every request.
    pub fn with_credential(
        client: reqwest::Client,
        url: &GitUrl,
        api_url: Option<&str>,
        credential: Arc<dyn CredentialSource>,
    ) -> Result<Self, GitUrlError> {
        let (ws, repo) = repo_path(url)?;
        let api = api_base(api_url);
        let path = format!("{}/{}", encode(&ws), encode(&repo));
        Ok(BitbucketCloud {
            client,
            repo_url: format!("{api}/repositories/{path}"),
            web_url: format!("{WEB}/{path}"),
            api,
            credential,
            repo: format!("{}/{ws}/{repo}", url.host),
        })
    }

    async fn get(&self, url: &str) -> Result<http::HttpResponse, NotifyError> {
        super::get(NAME, &self.client, &*self.credential, url).await
    }
}

#[async_trait::async_trait]
impl Notifier for BitbucketCloud {
    fn name(&self) -> &'static str {
        NAME
    }

    fn repo(&self) -> &str {
        &self.repo
    }

    async fn write(&self, status: &CommitStatus, _: Option<&Handle>) -> Result<Receipt, NotifyError> {
        let body = CreateStatus {
            kind: "commitstatus",
            state: state(status.state),
            fields: Fields::of(status, KEY_LIMIT, &self.web_url),
        };
        let url = format!("{}/commit/{}/statuses/build", self.repo_url, status.sha);
        with_token(&*self.credential, |token| {
            let req = auth(self.client.post(&url), &token).map(|r| r.json(&body));
            async move { http::write(NAME, req?, http::no_special_answers).await }
        })
        .await
        .map(Receipt::from)
    }

    async fn check_credentials(&self) -> Result<(), NotifyError> {
        self.get(&self.repo_url).await.map(drop)
    }

    async fn list_statuses(&self, sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        // Newest first, so the position orders them: Bitbucket keeps one status per
        // key, and its statuses carry no numeric id.
        let mut url = format!(
            "{}/commit/{sha}/statuses?sort=-updated_on&pagelen=100",
            self.repo_url
        );
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let page: Page = self.get(&url).await?.json(NAME)?;
            out.extend(page.values.into_iter().filter_map(|s| {
                Some((
                    check_of(s.key, s.name, KEY_LIMIT)?,
                    read_state(s.state.as_deref()?)?,
                    s.description.unwrap_or_default(),
                ))
            }));
            // Only links back to the API: a response must not send our credential
            // elsewhere.
            match page.next.filter(|n| http::same_origin(n, &self.api)) {
                Some(next) => url = next,
                None => break,
            }
        }
        let n = out.len() as i64;
        Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, (check, state, description))| ReadStatus {
                check: Check::new(check),
                state,
                description,
                id: n - i as i64,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_bitbucket_words_and_back() {
        let got: Vec<_> = State::ALL.iter().map(|s| state(*s)).collect();
        assert_eq!(got, ["INPROGRESS", "SUCCESSFUL", "FAILED", "STOPPED"]);
        for s in State::ALL {
            assert_eq!(read_state(state(s)), Some(s));
        }
    }

    #[test]
    fn the_api_base_gets_its_prefix_once() {
        assert_eq!(api_base(None), "https://api.bitbucket.org/2.0");
        assert_eq!(
            api_base(Some("http://127.0.0.1:8080/")),
            "http://127.0.0.1:8080/2.0"
        );
        assert_eq!(
            api_base(Some("https://api.bitbucket.org/2.0")),
            "https://api.bitbucket.org/2.0"
        );
    }
}
