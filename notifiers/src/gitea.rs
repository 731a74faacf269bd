//! Gitea commit statuses, and the code Forgejo ([`crate::forgejo`]) shares: the two
//! serve the same API, and differ in name, hosts and credential.
//!
//! `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}` with `Authorization: token …`.
//! Every POST adds a status (none is overwritten), so a busy commit gathers many.
//! They are read back from the list endpoint page by page: the combined endpoint's
//! `total_count` counts only the page it answers.

use crate::credential::{CredentialSource, with_token};
use crate::git_url::{GitUrl, GitUrlError, Scheme};
use crate::http::{self, sensitive_header};
use crate::provider::{Connect, CredentialSpec, ProviderSpec, TextLimits, WriteBudget};
use crate::{
    Check, CommitStatus, Handle, MAX_PAGES, Notifier, NotifyError, ReadStatus, Reason, Receipt, Retry, Sha,
    State,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;

pub const NAME: &str = "gitea";
/// Gitea (and Forgejo) keep a status's description and context in `TEXT` columns
/// and check neither's length (`CommitStatus` in models/git/commit_status.go; the
/// API's `CreateStatusOption` declares none). MySQL's `TEXT`, the smallest of the
/// databases they run on, holds 65,535 bytes: this many characters of up to four
/// bytes each always fit.
pub const DESCRIPTION_LIMIT: usize = 65_535 / 4;
/// Statuses asked for per page: the server's default `[api] MAX_RESPONSE_ITEMS`,
/// past which it gives no more whatever `limit` says.
pub const PAGE_SIZE: usize = 50;
const API_PREFIX: &str = "/api/v1";

pub static SPEC: ProviderSpec = ProviderSpec {
    name: NAME,
    title: "Gitea",
    aliases: &[],
    hosts: &["gitea.com"],
    api_url_help: "Gitea https://<host>[/<sub-path>] (/api/v1 is appended)",
    credential: CredentialSpec {
        what: "Gitea token",
        flag: "gitea-token",
        env: "GITEA_TOKEN",
        file_flag: "gitea-token-file",
        file_env: "FLUX_STATUS_GITEA_TOKEN_FILE",
        forms: "a Gitea access token with the write:repository scope",
    },
    app: None,
    limits: LIMITS,
    budget: BUDGET,
    repo_key: |url| repo_key(&SPEC, url),
    deployments: None,
    build: |c| connect(&SPEC, c),
};

pub(crate) const LIMITS: TextLimits = TextLimits {
    description: DESCRIPTION_LIMIT,
    context: Some(DESCRIPTION_LIMIT),
};

/// Neither Gitea nor Forgejo limits API requests unless an admin sets it up; where a
/// server or the proxy in front of it does, its 429 and `Retry-After` are honoured.
pub(crate) const BUDGET: WriteBudget = WriteBudget {
    writes_per_minute: None,
    requests_per_hour: None,
};

/// Owner and repository names are `[A-Za-z0-9_.-]`; anything else is encoded. Dots
/// stay as they are: the server routes on the raw path.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Words that follow `owner/repo` in the address of a page (`…/src/branch/main`,
/// `…/commit/<sha>`) or start an API path: a URL holding one before its last
/// segment was copied from a browser, not from the clone button.
const PAGE_WORDS: &[&str] = &[
    "src", "commit", "commits", "branch", "branches", "tag", "tags", "pulls", "issues", "releases", "raw",
    "compare", "wiki", "actions", "settings", "-", "api",
];

/// Where a repository lives on a Gitea or Forgejo server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPath {
    /// The path the server is served under (`["git"]` for `https://host/git/`),
    /// empty at the root. Only an http(s) URL shows it; ssh URLs never do.
    pub sub_path: Vec<String>,
    pub owner: String,
    pub repo: String,
}

/// The repository a Gitea URL names.
pub fn repo_path(url: &GitUrl) -> Result<RepoPath, GitUrlError> {
    repo_path_of(&SPEC, url)
}

/// The API base a Gitea URL implies: the web origin, the sub-path, `/api/v1`.
pub fn default_api_url(url: &GitUrl) -> Result<String, GitUrlError> {
    default_api_url_of(&SPEC, url)
}

/// `[<sub-path>/]<owner>/<repo>` of an http(s) URL, `<owner>/<repo>` of any other;
/// `spec` names the provider in errors.
pub(crate) fn repo_path_of(spec: &ProviderSpec, url: &GitUrl) -> Result<RepoPath, GitUrlError> {
    let segs = url.repo_segments();
    let web = matches!(url.scheme, Scheme::Https | Scheme::Http);
    let copied_from_a_page = segs
        .iter()
        .rev()
        .skip(1)
        .any(|s| PAGE_WORDS.contains(&s.to_ascii_lowercase().as_str()));
    match segs.as_slice() {
        [sub @ .., owner, repo] if (web || sub.is_empty()) && !copied_from_a_page => Ok(RepoPath {
            sub_path: sub.iter().map(|s| s.to_string()).collect(),
            owner: owner.to_string(),
            repo: repo.to_string(),
        }),
        _ => Err(GitUrlError::UnexpectedPath {
            provider: spec.title,
            expected: "[<sub-path>/]<owner>/<repo> (https) or <owner>/<repo> (ssh)",
            got: url.segments.join("/"),
        }),
    }
}

pub(crate) fn default_api_url_of(spec: &ProviderSpec, url: &GitUrl) -> Result<String, GitUrlError> {
    let path = repo_path_of(spec, url)?;
    let sub: String = path
        .sub_path
        .iter()
        .map(|s| format!("/{}", utf8_percent_encode(s, SEGMENT)))
        .collect();
    Ok(format!("{}{sub}{API_PREFIX}", url.web_origin()))
}

/// `host/owner/repo`: the sub-path is left out, because the ssh form of the same
/// repository does not show it.
pub(crate) fn repo_key(spec: &ProviderSpec, url: &GitUrl) -> Result<String, GitUrlError> {
    let p = repo_path_of(spec, url)?;
    Ok(format!("{}/{}/{}", url.host, p.owner, p.repo))
}

/// The notifier `spec` (Gitea's or Forgejo's) builds.
pub(crate) fn connect(spec: &'static ProviderSpec, c: Connect<'_>) -> Result<Arc<dyn Notifier>, GitUrlError> {
    let path = repo_path_of(spec, c.git_url)?;
    let api = match c.api_url {
        Some(base) => http::with_api_prefix(base, API_PREFIX),
        None => default_api_url_of(spec, c.git_url)?,
    };
    let repo_url = format!(
        "{api}/repos/{}/{}",
        utf8_percent_encode(&path.owner, SEGMENT),
        utf8_percent_encode(&path.repo, SEGMENT),
    );
    let shown: Vec<&str> = std::iter::once(c.git_url.host.as_str())
        .chain(path.sub_path.iter().map(String::as_str))
        .chain([path.owner.as_str(), path.repo.as_str()])
        .collect();
    Ok(Arc::new(Gitea {
        name: spec.name,
        client: c.client,
        repo_url,
        credential: c.credential,
        repo: shown.join("/"),
    }))
}

// Gitea and Forgejo take GitHub's status words. They have no "canceled" either:
// `error` (the deploy did not complete, for a reason other than its own failure) is
// the closest both servers know; `skipped` exists on Gitea 1.27 only, and `warning`
// would pass for a success with a remark. On reading back, `error` is a failure too,
// and `warning` and `skipped` are never ours.
use crate::github::CreateStatus;
pub use crate::github::{read_state, state};

pub struct Gitea {
    /// `gitea` or `forgejo`: the spec that built it.
    name: &'static str,
    client: reqwest::Client,
    /// `{api}/repos/{owner}/{repo}`
    repo_url: String,
    credential: Arc<dyn CredentialSource>,
    repo: String,
}

#[derive(Deserialize)]
struct Listed {
    id: i64,
    /// Gitea answers with `status` what it takes as `state`.
    status: String,
    context: Option<String>,
    description: Option<String>,
}

/// The part of a repository the credential check reads.
#[derive(Deserialize)]
struct Repository {
    permissions: Option<Permissions>,
}

#[derive(Deserialize)]
struct Permissions {
    push: bool,
}

fn auth(req: reqwest::RequestBuilder, token: &SecretString) -> Result<reqwest::RequestBuilder, NotifyError> {
    let value = sensitive_header(&format!("token {}", token.expose_secret()))?;
    Ok(req
        .header(reqwest::header::AUTHORIZATION, value)
        .header(reqwest::header::ACCEPT, "application/json"))
}

impl Gitea {
    async fn get(&self, url: &str) -> Result<http::HttpResponse, NotifyError> {
        with_token(&*self.credential, |token| {
            let req = auth(self.client.get(url), &token);
            async move { http::read(self.name, req?).await }
        })
        .await
    }
}

#[async_trait::async_trait]
impl Notifier for Gitea {
    fn name(&self) -> &'static str {
        self.name
    }

    fn repo(&self) -> &str {
        &self.repo
    }

    async fn write(&self, status: &CommitStatus, _: Option<&Handle>) -> Result<Receipt, NotifyError> {
        let body = CreateStatus::of(status, DESCRIPTION_LIMIT);
        let url = format!("{}/statuses/{}", self.repo_url, status.sha);
        with_token(&*self.credential, |token| {
            let req = auth(self.client.post(&url), &token).map(|r| r.json(&body));
            async move { http::write(self.name, req?, http::no_special_answers).await }
        })
        .await
        .map(Receipt::from)
    }

    fn reads_back_as(&self, s: State) -> State {
        read_state(state(s)).unwrap_or(s)
    }

    /// Reads the repository, and wants push permission: writing a status needs write
    /// access to the code, so without it every write would be refused. Current
    /// servers answer a token they do not know with 401; older ones read a public
    /// repository anonymously for it, which shows as no push permission too.
    async fn check_credentials(&self) -> Result<(), NotifyError> {
        let resp = self.get(&self.repo_url).await?;
        match resp.json::<Repository>(self.name)?.permissions {
            Some(Permissions { push: false }) => Err(NotifyError {
                provider: self.name,
                retry: Retry::Permanent,
                reason: Reason::Forbidden,
                status: Some(resp.status.as_u16()),
                message: "the token cannot write to this repository (no push permission): \
                          a user who may only read, or a token the server does not know"
                    .into(),
                retry_after: None,
            }),
            _ => Ok(()),
        }
    }

    async fn list_statuses(&self, sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        let mut out = Vec::new();
        let mut read = 0;
        // Newest first: a status added while we page pushes the others down, so one
        // may be read twice, never missed.
        for page in 1..=MAX_PAGES {
            let url = format!(
                "{}/commits/{sha}/statuses?sort=highestindex&limit={PAGE_SIZE}&page={page}",
                self.repo_url
            );
            let resp = self.get(&url).await?;
            let listed: Vec<Listed> = resp.json(self.name)?;
            if listed.is_empty() {
                break;
            }
            read += listed.len();
            out.extend(listed.into_iter().filter_map(|s| {
                Some(ReadStatus {
                    check: Check::new(s.context?),
                    state: read_state(&s.status)?,
                    description: s.description.unwrap_or_default(),
                    id: s.id,
                })
            }));
            if !http::has_next_page(&resp.headers, read) {
                break;
            }
        }
        Ok(crate::newest_first(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_gitea_words_and_never_to_warning() {
        let got: Vec<_> = State::ALL.iter().map(|s| state(*s)).collect();
        assert_eq!(got, ["pending", "success", "failure", "error"]);
        let back: Vec<_> = State::ALL.iter().map(|s| read_state(state(*s))).collect();
        assert_eq!(
            back,
            [
                Some(State::Pending),
                Some(State::Succeeded),
                Some(State::Failed),
                Some(State::Failed)
            ]
        );
        assert_eq!(read_state("warning"), None);
        assert_eq!(read_state("skipped"), None);
    }

    #[test]
    fn the_description_limit_fits_a_mysql_text_column_in_any_characters() {
        // Four-byte characters are the widest utf8mb4 stores.
        let widest = "😀".repeat(DESCRIPTION_LIMIT + 10);
        let cut = crate::text::one_line_truncated(&widest, DESCRIPTION_LIMIT);
        assert!(cut.len() <= 65_535, "{} bytes", cut.len());
        assert_eq!(cut.chars().count(), DESCRIPTION_LIMIT);
        assert_eq!(DESCRIPTION_LIMIT, 16_383);
    }

    #[test]
    fn a_repository_has_one_key_with_or_without_its_sub_path() {
        let key = |u: &str| SPEC.provider().repo_key(&GitUrl::parse(u).unwrap()).unwrap();
        let https = key("https://git.example.com/forge/Acme/App.git");
        assert_eq!(https, "git.example.com/acme/app");
        assert_eq!(key("git@git.example.com:acme/app.git"), https);
        assert_eq!(key("ssh://git@git.example.com:2222/acme/app.git"), https);
        assert_ne!(key("https://git.example.com/acme/app2"), https);
    }

    #[test]
    fn sub_path_is_kept_for_https_and_refused_for_ssh() {
        let p = |u: &str| repo_path(&GitUrl::parse(u).unwrap());
        assert_eq!(
            p("https://h.example/git/forge/acme/app.git").unwrap(),
            RepoPath {
                sub_path: vec!["git".into(), "forge".into()],
                owner: "acme".into(),
                repo: "app".into()
            }
        );
        for u in [
            "git@h.example:git/acme/app.git",
            "ssh://git@h.example:2222/x/acme/app.git",
            "https://h.example/acme",
            "https://h.example/acme/app/src/branch/main",
            "https://h.example/acme/app/commit/9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1",
            "https://h.example/api/v1/repos/acme/app",
        ] {
            let e = p(u).unwrap_err().to_string();
            assert!(e.starts_with("Gitea repository path must look like"), "{u}: {e}");
        }
    }
}
