//! Azure DevOps Services and Azure DevOps Server commit statuses.
//!
//! `POST {collection}/{project}/_apis/git/repositories/{repo}/commits/{sha}/statuses`
//! with `api-version=7.1` and Basic auth (empty user, PAT). A check
//! `flux-status/dev/sync` becomes context genre `flux-status`, name `dev/sync`.

use crate::credential::{CredentialSource, with_token};
use crate::git_url::{GitUrl, GitUrlError};
use crate::http;
use crate::provider::{CredentialSpec, ProviderSpec, TextLimits, WriteBudget};
use crate::{
    Check, CommitStatus, Handle, MAX_PAGES, Notifier, NotifyError, ReadStatus, Reason, Receipt, Retry, Sha,
    State, text,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const NAME: &str = "azure-devops";
/// Azure DevOps documents no limit; statuses are one line in its UI, so keep them short.
pub const DESCRIPTION_LIMIT: usize = 400;
pub const API_VERSION: &str = "7.1";

pub static SPEC: ProviderSpec = ProviderSpec {
    name: NAME,
    title: "Azure DevOps",
    aliases: &["azuredevops", "azure", "azdo"],
    hosts: &[
        "dev.azure.com",
        "ssh.dev.azure.com",
        "vs-ssh.visualstudio.com",
        "*.visualstudio.com",
    ],
    api_url_help: "Azure DevOps the organization or collection URL",
    credential: CredentialSpec {
        what: "Azure DevOps PAT",
        flag: "azdo-pat",
        env: "AZDO_PAT",
        file_flag: "azdo-pat-file",
        file_env: "FLUX_STATUS_AZDO_PAT_FILE",
        forms: "a personal access token with the Code (status) scope, or a pipeline's System.AccessToken",
    },
    app: None,
    limits: TextLimits {
        description: DESCRIPTION_LIMIT,
        context: None,
    },
    budget: WriteBudget {
        writes_per_minute: Some(300),
        requests_per_hour: None,
    },
    repo_key: |url| {
        let r = repo_path(url)?;
        Ok(format!("{}/{}/{}", r.collection_url, r.project, r.repo))
    },
    deployments: None,
    build: |c| {
        Ok(Arc::new(AzureDevOps::with_credential(
            c.client,
            c.git_url,
            c.api_url,
            c.credential,
        )?))
    },
};

/// A path segment: spaces and the like encoded, unreserved characters kept.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Where a repository lives: the organization or collection URL, project, repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureRepo {
    /// `https://dev.azure.com/<org>`, `https://<org>.visualstudio.com`, or an Azure
    /// DevOps Server collection such as `https://host/tfs/DefaultCollection`.
    pub collection_url: String,
    pub project: String,
    pub repo: String,
}

fn unexpected(url: &GitUrl) -> GitUrlError {
    GitUrlError::UnexpectedPath {
        provider: "Azure DevOps",
        expected: "<org>/<project>/_git/<repo> (https) or v3/<org>/<project>/<repo> (ssh)",
        got: url.segments.join("/"),
    }
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

pub fn repo_path(url: &GitUrl) -> Result<AzureRepo, GitUrlError> {
    // Azure repository names may legitimately end in ".git"; only strip it from the
    // last segment as the git URL forms do.
    let segs = url.repo_segments();
    let repo = |collection_url: String, project: &str, repo: &str| AzureRepo {
        collection_url,
        project: project.to_string(),
        repo: repo.to_string(),
    };
    let host = url.host.as_str();
    if host == "ssh.dev.azure.com" || host == "vs-ssh.visualstudio.com" {
        return match segs.as_slice() {
            ["v3", org, project, name] if host == "ssh.dev.azure.com" => Ok(repo(
                format!("https://dev.azure.com/{}", encode(org)),
                project,
                name,
            )),
            ["v3", org, project, name] => Ok(repo(
                format!("https://{}.visualstudio.com", encode(org)),
                project,
                name,
            )),
            _ => Err(unexpected(url)),
        };
    }
    if host == "dev.azure.com" {
        return match segs.as_slice() {
            [org, project, "_git", name] => Ok(repo(
                format!("https://dev.azure.com/{}", encode(org)),
                project,
                name,
            )),
            // A repository named like its project may be addressed without the project.
            [org, "_git", name] => Ok(repo(format!("https://dev.azure.com/{}", encode(org)), name, name)),
            _ => Err(unexpected(url)),
        };
    }
    if let Some(org) = host.strip_suffix(".visualstudio.com") {
        let base = format!("https://{host}");
        return match segs.as_slice() {
            ["DefaultCollection", project, "_git", name] => {
                Ok(repo(format!("{base}/DefaultCollection"), project, name))
            }
            [project, "_git", name] if !org.is_empty() => Ok(repo(base, project, name)),
            ["_git", name] => Ok(repo(base, name, name)),
            _ => Err(unexpected(url)),
        };
    }
    // Azure DevOps Server: <collection path…>/<project>/_git/<repo>.
    match segs.iter().position(|s| *s == "_git") {
        Some(i) if i >= 2 && i + 2 == segs.len() => {
            let collection: Vec<String> = segs[..i - 1].iter().map(|s| encode(s)).collect();
            Ok(repo(
                format!("{}/{}", url.web_origin(), collection.join("/")),
                segs[i - 1],
                segs[i + 1],
            ))
        }
        _ => Err(unexpected(url)),
    }
}

pub fn default_api_url(url: &GitUrl) -> Result<String, GitUrlError> {
    repo_path(url).map(|r| r.collection_url)
}

/// Our state in Azure DevOps' words; a canceled deploy is "not applicable".
pub fn state(s: State) -> &'static str {
    match s {
        State::Pending => "pending",
        State::Succeeded => "succeeded",
        State::Failed => "failed",
        State::Canceled => "notApplicable",
    }
}

/// Azure DevOps' states read back: `error` is a failure; `notSet` and
/// `notApplicable` say the check does not apply, our "canceled".
pub fn read_state(s: &str) -> Option<State> {
    match s {
        "pending" => Some(State::Pending),
        "succeeded" => Some(State::Succeeded),
        "failed" | "error" => Some(State::Failed),
        "notSet" | "notApplicable" => Some(State::Canceled),
        _ => None,
    }
}

/// Statuses per page when reading back.
const PAGE: usize = 500;

#[derive(Deserialize)]
struct ListedContext {
    name: Option<String>,
    genre: Option<String>,
}

#[derive(Deserialize)]
struct Listed {
    id: i64,
    state: Option<String>,
    description: Option<String>,
    context: Option<ListedContext>,
}

/// The service wraps lists as `{"count": n, "value": [...]}`; the spec says a bare array.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListAnswer {
    Wrapped { value: Vec<Listed> },
    Bare(Vec<Listed>),
}

impl Listed {
    /// Other tools' statuses may have no genre, or no context at all.
    fn into_read(self) -> Option<ReadStatus> {
        let ctx = self.context?;
        let name = ctx.name?;
        let check = match ctx.genre.filter(|g| !g.is_empty()) {
            Some(genre) => format!("{genre}/{name}"),
            None => name,
        };
        Some(ReadStatus {
            check: Check::new(check),
            state: read_state(self.state.as_deref()?)?,
            description: self.description.unwrap_or_default(),
            id: self.id,
        })
    }
}

pub struct AzureDevOps {
    client: reqwest::Client,
    /// `{collection}/{project}/_apis/git/repositories/{repo}`
    repo_url: String,
    credential: Arc<dyn CredentialSource>,
    repo: String,
}

#[derive(Serialize)]
struct Context<'a> {
    genre: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateStatus<'a> {
    state: &'static str,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
    context: Context<'a>,
}

impl AzureDevOps {
    /// A notifier that asks `credential` for the PAT on every request. `api_url`
    /// replaces the collection URL (Azure DevOps Server behind another name).
    pub fn with_credential(
        client: reqwest::Client,
        url: &GitUrl,
        api_url: Option<&str>,
        credential: Arc<dyn CredentialSource>,
    ) -> Result<Self, GitUrlError> {
        let r = repo_path(url)?;
        let collection = api_url.map(str::to_string).unwrap_or(r.collection_url);
        Ok(AzureDevOps {
            client,
            repo_url: format!(
                "{}/{}/_apis/git/repositories/{}",
                collection.trim_end_matches('/'),
                encode(&r.project),
                encode(&r.repo)
            ),
            credential,
            repo: format!("{}/{}/{}", url.host, r.project, r.repo),
        })
    }

    /// An authenticated GET whose answer is a success, or the reason it is not.
    async fn get(&self, url: String) -> Result<http::HttpResponse, NotifyError> {
        with_token(&*self.credential, |pat| {
            let req = self.client.get(&url).basic_auth("", Some(pat.expose_secret()));
            async move {
                let resp = http::send(NAME, req).await?;
                match sign_in_page(&resp) {
                    Some(Err(e)) => Err(e),
                    _ if !resp.is_success() => Err(http::classify(NAME, &resp)),
                    _ => Ok(resp),
                }
            }
        })
        .await
    }
}

/// Azure DevOps answers a missing or bad credential on some routes with 203 and an
/// HTML sign-in page rather than 401.
fn sign_in_page(resp: &http::HttpResponse) -> Option<Result<(), NotifyError>> {
    let html = resp
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    (resp.status.as_u16() == 203 || (resp.is_success() && html)).then(|| {
        Err(NotifyError {
            provider: NAME,
            retry: Retry::Permanent,
            reason: Reason::Unauthorized,
            status: Some(resp.status.as_u16()),
            message: "Azure DevOps answered with a sign-in page: the PAT is missing, wrong or expired".into(),
            retry_after: None,
        })
    })
}

#[async_trait::async_trait]
impl Notifier for AzureDevOps {
    fn name(&self) -> &'static str {
        NAME
    }

    fn repo(&self) -> &str {
        &self.repo
    }

    async fn write(&self, status: &CommitStatus, _: Option<&Handle>) -> Result<Receipt, NotifyError> {
        let (genre, name) = status.check.genre_and_name();
        let body = CreateStatus {
            state: state(status.state),
            description: text::one_line_truncated(&status.description, DESCRIPTION_LIMIT),
            target_url: status.target_url.as_deref(),
            context: Context { genre, name },
        };
        let url = format!(
            "{}/commits/{}/statuses?api-version={API_VERSION}",
            self.repo_url, status.sha
        );
        with_token(&*self.credential, |pat| {
            let req = self
                .client
                .post(&url)
                .basic_auth("", Some(pat.expose_secret()))
                .json(&body);
            http::write(NAME, req, sign_in_page)
        })
        .await
        .map(Receipt::from)
    }

    fn reads_back_as(&self, s: State) -> State {
        read_state(state(s)).unwrap_or(s)
    }

    async fn check_credentials(&self) -> Result<(), NotifyError> {
        self.get(format!("{}?api-version={API_VERSION}", self.repo_url))
            .await
            .map(drop)
    }

    async fn list_statuses(&self, sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        let mut out = Vec::new();
        for page in 0..MAX_PAGES {
            let resp = self
                .get(format!(
                    "{}/commits/{sha}/statuses?api-version={API_VERSION}&top={PAGE}&skip={}",
                    self.repo_url,
                    page * PAGE
                ))
                .await?;
            let listed = match resp.json(NAME)? {
                ListAnswer::Wrapped { value } | ListAnswer::Bare(value) => value,
            };
            let full_page = listed.len() == PAGE;
            out.extend(listed.into_iter().filter_map(Listed::into_read));
            if !full_page {
                break;
            }
        }
        Ok(crate::newest_first(out))
    }
}
