//! GitLab (gitlab.com and self-managed) commit statuses.
//!
//! `POST /api/v4/projects/:id/statuses/:sha` with `PRIVATE-TOKEN`; the project id is
//! the URL-encoded full path, subgroups included. GitLab applies a state as a
//! transition and answers 400 "Cannot transition status" when the job is already
//! in that state: that means "already written", not an error.
//!
//! Deployments to environments (`--deployments`) are [`deployments`].

pub mod deployments;

use crate::credential::{CredentialSource, with_token};
use crate::git_url::{GitUrl, GitUrlError};
use crate::http::{self, sensitive_header};
use crate::provider::{CredentialSpec, ProviderSpec, TextLimits, WriteBudget};
use crate::{
    Check, CommitStatus, Handle, MAX_PAGES, Notifier, NotifyError, ReadStatus, Receipt, Sha, State, text,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const NAME: &str = "gitlab";
/// GitLab rejects description, name and target_url longer than this.
pub const DESCRIPTION_LIMIT: usize = 255;
const TARGET_URL_LIMIT: usize = 255;

pub static SPEC: ProviderSpec = ProviderSpec {
    name: NAME,
    title: "GitLab",
    aliases: &[],
    hosts: &["gitlab.com", "www.gitlab.com", "altssh.gitlab.com"],
    api_url_help: "GitLab https://<host>",
    credential: CredentialSpec {
        what: "GitLab token",
        flag: "gitlab-token",
        env: "GITLAB_TOKEN",
        file_flag: "gitlab-token-file",
        file_env: "FLUX_STATUS_GITLAB_TOKEN_FILE",
        forms: "a personal, project or group access token (glpat-…) with the api scope",
    },
    app: None,
    limits: TextLimits {
        description: DESCRIPTION_LIMIT,
        context: Some(255),
    },
    // Limits are per instance; 300 a minute stays well under GitLab.com's.
    budget: WriteBudget {
        writes_per_minute: Some(300),
        requests_per_hour: None,
    },
    repo_key: |url| Ok(format!("{}/{}", default_api_url(url), repo_path(url)?)),
    deployments: Some(deployments::notifier),
    build: |c| {
        Ok(Arc::new(GitLab::with_credential(
            c.client,
            c.git_url,
            c.api_url,
            c.credential,
        )?))
    },
};

/// Everything but letters, digits, `-`, `_` and `~` is encoded: `/` (so subgroups
/// stay one path segment) and `.` (as GitLab's own clients do).
const PROJECT_ID: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// The project's full path (`group/subgroup/project`), or a numeric project id.
pub fn repo_path(url: &GitUrl) -> Result<String, GitUrlError> {
    let segs = url.repo_segments();
    let numeric = segs.len() == 1 && segs[0].bytes().all(|b| b.is_ascii_digit());
    // `/-/` starts GitLab's own routes (…/-/tree/main): a pasted browser URL.
    if (segs.len() >= 2 && !segs.contains(&"-")) || numeric {
        Ok(segs.join("/"))
    } else {
        Err(GitUrlError::UnexpectedPath {
            provider: "GitLab",
            expected: "<group>[/<subgroup>…]/<project> or a numeric project id",
            got: url.segments.join("/"),
        })
    }
}

/// `https://gitlab.com` for any gitlab.com host (`altssh.gitlab.com` included),
/// else the web origin, under which GitLab serves `/api/v4`.
pub fn default_api_url(url: &GitUrl) -> String {
    if SPEC.is_public_host(&url.host) {
        "https://gitlab.com".to_string()
    } else {
        url.web_origin()
    }
}

/// Our state in GitLab's words. `running` rather than `pending`: the deploy is under
/// way, and GitLab shows running jobs as in progress.
pub fn state(s: State) -> &'static str {
    match s {
        State::Pending => "running",
        State::Succeeded => "success",
        State::Failed => "failed",
        State::Canceled => "canceled",
    }
}

/// GitLab's job states read back: anything not yet finished is pending.
pub fn read_state(s: &str) -> Option<State> {
    match s {
        "created" | "pending" | "running" | "manual" | "scheduled" | "preparing" | "waiting_for_resource" => {
            Some(State::Pending)
        }
        "success" => Some(State::Succeeded),
        "failed" => Some(State::Failed),
        "canceled" | "skipped" => Some(State::Canceled),
        _ => None,
    }
}

pub struct GitLab {
    client: reqwest::Client,
    /// `{api}/projects/{id}`
    project_url: String,
    credential: Arc<dyn CredentialSource>,
    repo: String,
}

#[derive(Deserialize)]
struct Listed {
    id: i64,
    /// GitLab answers with `status` what it takes as `state`.
    status: String,
    name: Option<String>,
    description: Option<String>,
}

#[derive(Serialize)]
struct CreateStatus<'a> {
    state: &'static str,
    name: &'a str,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
}

impl GitLab {
    /// A notifier that asks `credential` for the token on every request.
    pub fn with_credential(
        client: reqwest::Client,
        url: &GitUrl,
        api_url: Option<&str>,
        credential: Arc<dyn CredentialSource>,
    ) -> Result<Self, GitUrlError> {
        let project = repo_path(url)?;
        let base = api_url
            .map(str::to_string)
            .unwrap_or_else(|| default_api_url(url));
        let api = http::with_api_prefix(&base, "/api/v4");
        Ok(GitLab {
            client,
            project_url: format!("{api}/projects/{}", utf8_percent_encode(&project, PROJECT_ID)),
            credential,
            repo: format!("{}/{project}", url.host),
        })
    }
}

fn auth(req: reqwest::RequestBuilder, token: &SecretString) -> Result<reqwest::RequestBuilder, NotifyError> {
    Ok(req.header("PRIVATE-TOKEN", sensitive_header(token.expose_secret())?))
}

/// GitLab's answer to setting the state a job is already in means it is written.
fn already_in_state(resp: &http::HttpResponse) -> Option<Result<(), NotifyError>> {
    (resp.status.as_u16() == 400 && http::error_message(&resp.body).contains("Cannot transition status"))
        .then_some(Ok(()))
}

#[async_trait::async_trait]
impl Notifier for GitLab {
    fn name(&self) -> &'static str {
        NAME
    }

    fn repo(&self) -> &str {
        &self.repo
    }

    async fn write(&self, status: &CommitStatus, _: Option<&Handle>) -> Result<Receipt, NotifyError> {
        let body = CreateStatus {
            state: state(status.state),
            name: status.check.as_str(),
            description: text::one_line_truncated(&status.description, DESCRIPTION_LIMIT),
            // A longer URL would make GitLab refuse the whole status.
            target_url: status
                .target_url
                .as_deref()
                .filter(|u| u.chars().count() <= TARGET_URL_LIMIT),
        };
        let url = format!("{}/statuses/{}", self.project_url, status.sha);
        with_token(&*self.credential, |token| {
            let req = auth(self.client.post(&url), &token).map(|r| r.json(&body));
            async move { http::write(NAME, req?, already_in_state).await }
        })
        .await
        .map(Receipt::from)
    }

    fn reads_back_as(&self, s: State) -> State {
        read_state(state(s)).unwrap_or(s)
    }

    async fn check_credentials(&self) -> Result<(), NotifyError> {
        self.get(&self.project_url).await.map(drop)
    }

    async fn list_statuses(&self, sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        let mut out = Vec::new();
        let url = format!(
            "{}/repository/commits/{sha}/statuses?order_by=id&sort=desc&per_page=100",
            self.project_url
        );
        self.pages(&url, MAX_PAGES, |listed: Vec<Listed>| {
            out.extend(listed.into_iter().filter_map(|s| {
                Some(ReadStatus {
                    check: Check::new(s.name?),
                    state: read_state(&s.status)?,
                    description: s.description.unwrap_or_default(),
                    id: s.id,
                })
            }));
            true
        })
        .await?;
        Ok(crate::newest_first(out))
    }
}

impl GitLab {
    /// An authenticated GET, its answer classified.
    async fn get(&self, url: &str) -> Result<http::HttpResponse, NotifyError> {
        with_token(&*self.credential, |token| {
            let req = auth(self.client.get(url), &token);
            async move { http::read(NAME, req?).await }
        })
        .await
    }

    /// Reads a listing (`url` has a query already) page by page, following
    /// `X-Next-Page` for at most `max_pages`; `each` takes a page's items and says
    /// whether to read on.
    async fn pages<T: DeserializeOwned>(
        &self,
        url: &str,
        max_pages: usize,
        mut each: impl FnMut(Vec<T>) -> bool,
    ) -> Result<(), NotifyError> {
        let mut page = 1;
        for _ in 0..max_pages {
            let resp = self.get(&format!("{url}&page={page}")).await?;
            if !each(resp.json(NAME)?) {
                break;
            }
            match http::next_page_number(&resp.headers) {
                Some(next) if next > page => page = next,
                _ => break,
            }
        }
        Ok(())
    }
}
