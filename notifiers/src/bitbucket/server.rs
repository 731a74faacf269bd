//! Bitbucket Server and Data Center build statuses (self-hosted only).
//!
//! `POST /rest/api/latest/projects/{project}/repos/{repo}/commits/{sha}/builds`
//! (7.4 and later) with `X-Atlassian-Token: no-check`, which Bitbucket's XSRF check
//! wants on a POST. A server without that API answers 404; the notifier then writes
//! to the legacy `/rest/build-status/1.0/commits/{sha}` from then on, and says so
//! once. Statuses are read back from the legacy list, the only one that lists every
//! key of a commit, paged by `start`/`limit`.

use super::{DESCRIPTION_LIMIT, Fields, NAME_LIMIT, auth, check_of, encode};
use crate::credential::{CredentialSource, with_token};
use crate::git_url::{GitUrl, GitUrlError, Scheme};
use crate::http;
use crate::provider::{CredentialSpec, ProviderSpec, TextLimits, WriteBudget};
use crate::{
    Budget, Check, CommitStatus, Handle, MAX_PAGES, Notifier, NotifyError, ReadStatus, Receipt, Sha, State,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub const NAME: &str = "bitbucket-server";
/// The spec's limit on `key`.
pub const KEY_LIMIT: usize = 255;
/// Statuses per page read back.
const PAGE: usize = 100;

pub static SPEC: ProviderSpec = ProviderSpec {
    name: NAME,
    title: "Bitbucket Server/Data Center",
    aliases: &["bitbucketserver", "bitbucket-datacenter", "bitbucket-dc"],
    hosts: &[],
    api_url_help: "Bitbucket Server/Data Center the server's address with its context path, from the \
                   clone URL (https://<host>[/<context>])",
    credential: CredentialSpec {
        what: "Bitbucket Server token",
        flag: "bitbucket-server-token",
        env: "BITBUCKET_SERVER_TOKEN",
        file_flag: "bitbucket-server-token-file",
        file_env: "FLUX_STATUS_BITBUCKET_SERVER_TOKEN_FILE",
        forms: "an HTTP access token (personal, project or repository; sent as Bearer) with repository \
                read, or <user>:<password or token> (sent as Basic)",
    },
    app: None,
    limits: TextLimits {
        description: DESCRIPTION_LIMIT,
        context: Some(NAME_LIMIT),
    },
    // Data Center's rate limiting, when an admin turns it on, refills 5 requests a
    // second by default.
    budget: WriteBudget {
        writes_per_minute: Some(300),
        requests_per_hour: None,
    },
    repo_key: |url| {
        let r = repo_path(url)?;
        // The host, not the API base: an ssh URL does not tell the context path.
        Ok(format!("{}/{}/{}", url.host, r.project, r.slug))
    },
    deployments: None,
    build: |c| {
        Ok(Arc::new(BitbucketServer::with_credential(
            c.client,
            c.git_url,
            c.api_url,
            c.credential,
        )?))
    },
};

/// A repository on a Bitbucket server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRepo {
    /// The server's address with its context path: `https://host/bitbucket`. From an
    /// ssh URL only `https://host`; a context path then needs `--api-url`.
    pub base: String,
    /// The project key, or `~user` for a personal repository.
    pub project: String,
    pub slug: String,
}

fn unexpected(url: &GitUrl) -> GitUrlError {
    GitUrlError::UnexpectedPath {
        provider: "Bitbucket Server",
        expected: "[<context>/]scm/<project>/<repo> (https) or <project>/<repo> (ssh)",
        got: url.segments.join("/"),
    }
}

/// Project and repository from a clone URL: `https://host[/context]/scm/PROJ/repo.git`,
/// `ssh://git@host:7999/proj/repo.git`, `git@host:proj/repo.git`; `~user` for a
/// personal repository.
pub fn repo_path(url: &GitUrl) -> Result<ServerRepo, GitUrlError> {
    let segs = url.repo_segments();
    let (context, project, slug) = match url.scheme {
        Scheme::Https | Scheme::Http => match segs.as_slice() {
            [context @ .., "scm", project, slug] => (context, *project, *slug),
            _ => return Err(unexpected(url)),
        },
        Scheme::Ssh | Scheme::Scp | Scheme::Git => match segs.as_slice() {
            [project, slug] => (&[][..], *project, *slug),
            _ => return Err(unexpected(url)),
        },
    };
    if project == "~" {
        return Err(unexpected(url));
    }
    let context: Vec<String> = context.iter().map(|s| format!("/{}", encode(s))).collect();
    Ok(ServerRepo {
        base: format!("{}{}", url.web_origin(), context.concat()),
        project: project.to_string(),
        slug: slug.to_string(),
    })
}

/// `--api-url` or the server from the URL, with `/rest` appended once.
pub fn rest_base(api_url: Option<&str>, repo: &ServerRepo) -> String {
    http::with_api_prefix(api_url.unwrap_or(&repo.base), "/rest")
}

pub fn state(s: State) -> &'static str {
    match s {
        State::Pending => "INPROGRESS",
        State::Succeeded => "SUCCESSFUL",
        State::Failed => "FAILED",
        State::Canceled => "CANCELLED",
    }
}

/// Servers without the newer API know three states: a canceled deploy is a failed one.
fn legacy_state(s: State) -> &'static str {
    match s {
        State::Canceled => "FAILED",
        other => state(other),
    }
}

/// UNKNOWN is no state of ours: left out.
pub fn read_state(s: &str) -> Option<State> {
    match s {
        "INPROGRESS" => Some(State::Pending),
        "SUCCESSFUL" => Some(State::Succeeded),
        "FAILED" => Some(State::Failed),
        "CANCELLED" => Some(State::Canceled),
        _ => None,
    }
}

pub struct BitbucketServer {
    client: reqwest::Client,
    /// `{rest}/api/latest/projects/{project}/repos/{repo}`
    repo_url: String,
    /// `{rest}/build-status/1.0/commits`
    legacy_url: String,
    /// The repository's page, under which a commit's page is where statuses link by default.
    web_url: String,
    credential: Arc<dyn CredentialSource>,
    repo: String,
    /// The server answered 404 to the newer API: writes go to the legacy one.
    legacy: AtomicBool,
}

#[derive(Serialize)]
struct SetStatus {
    state: &'static str,
    #[serde(flatten)]
    fields: Fields,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    key: Option<String>,
    name: Option<String>,
    state: Option<String>,
    description: Option<String>,
    updated_date: Option<i64>,
    created_date: Option<i64>,
    /// What servers before 7.x call it.
    date_added: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    values: Vec<Listed>,
    #[serde(default = "last_page")]
    is_last_page: bool,
    next_page_start: Option<u64>,
}

fn last_page() -> bool {
    true
}

/// A 404 that names no missing project, repository or commit: the server has no
/// such API. Bitbucket names what it did not find (`NoSuchRepositoryException`).
fn lacks_builds_api(resp: &http::HttpResponse) -> bool {
    resp.status.as_u16() == 404 && !String::from_utf8_lossy(&resp.body).contains("NoSuch")
}

impl BitbucketServer {
    /// A notifier that asks `credential` for the token on every request. `api_url`
    /// is the server's address with its context path.
    pub fn with_credential(
        client: reqwest::Client,
        url: &GitUrl,
        api_url: Option<&str>,
        credential: Arc<dyn CredentialSource>,
    ) -> Result<Self, GitUrlError> {
        let r = repo_path(url)?;
        let rest = rest_base(api_url, &r);
        let web = rest.strip_suffix("/rest").unwrap_or(&rest);
        let (project, slug) = (encode(&r.project), encode(&r.slug));
        let web_url = match r.project.strip_prefix('~') {
            Some(user) => format!("{web}/users/{}/repos/{slug}", encode(user)),
            None => format!("{web}/projects/{project}/repos/{slug}"),
        };
        Ok(BitbucketServer {
            client,
            repo_url: format!("{rest}/api/latest/projects/{project}/repos/{slug}"),
            legacy_url: format!("{rest}/build-status/1.0/commits"),
            web_url,
            credential,
            repo: format!("{}/{}/{}", url.host, r.project, r.slug),
            legacy: AtomicBool::new(false),
        })
    }

    /// Posts a status; `None` when `newer_api` and the server turns out to lack it.
    async fn post(
        &self,
        url: &str,
        body: &SetStatus,
        newer_api: bool,
    ) -> Result<Option<Budget>, NotifyError> {
        with_token(&*self.credential, |token| {
            let req = auth(self.client.post(url), &token)
                .map(|r| r.header("X-Atlassian-Token", "no-check").json(body));
            async move {
                let resp = http::send(NAME, req?).await?;
                if resp.is_success() {
                    Ok(Some(http::budget(&resp.headers)))
                } else if newer_api && lacks_builds_api(&resp) {
                    Ok(None)
                } else {
                    Err(http::classify(NAME, &resp))
                }
            }
        })
        .await
    }

    async fn get(&self, url: &str) -> Result<http::HttpResponse, NotifyError> {
        super::get(NAME, &self.client, &*self.credential, url).await
    }

    async fn write_legacy(&self, status: &CommitStatus, mut body: SetStatus) -> Result<Budget, NotifyError> {
        body.state = legacy_state(status.state);
        let url = format!("{}/{}", self.legacy_url, status.sha);
        // Only the newer API answers None.
        Ok(self.post(&url, &body, false).await?.unwrap_or_default())
    }
}

#[async_trait::async_trait]
impl Notifier for BitbucketServer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn repo(&self) -> &str {
        &self.repo
    }

    async fn write(&self, status: &CommitStatus, _: Option<&Handle>) -> Result<Receipt, NotifyError> {
        let body = SetStatus {
            state: state(status.state),
            fields: Fields::of(status, KEY_LIMIT, &self.web_url),
        };
        if self.legacy.load(Ordering::Relaxed) {
            return self.write_legacy(status, body).await.map(Receipt::from);
        }
        let url = format!("{}/commits/{}/builds", self.repo_url, status.sha);
        match self.post(&url, &body, true).await? {
            Some(budget) => Ok(budget.into()),
            None => {
                if !self.legacy.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        provider = NAME,
                        repo = %self.repo,
                        "this Bitbucket server has no /rest/api/latest build-status API (before 7.4): \
                         writing statuses to the legacy /rest/build-status/1.0 instead"
                    );
                }
                self.write_legacy(status, body).await.map(Receipt::from)
            }
        }
    }

    fn reads_back_as(&self, s: State) -> State {
        if self.legacy.load(Ordering::Relaxed) {
            read_state(legacy_state(s)).unwrap_or(s)
        } else {
            s
        }
    }

    async fn check_credentials(&self) -> Result<(), NotifyError> {
        self.get(&self.repo_url).await.map(drop)
    }

    async fn list_statuses(&self, sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        let mut out = Vec::new();
        let mut start = 0;
        for _ in 0..MAX_PAGES {
            let url = format!("{}/{sha}?start={start}&limit={PAGE}", self.legacy_url);
            let page: Page = self.get(&url).await?.json(NAME)?;
            out.extend(page.values.into_iter().filter_map(|s| {
                Some(ReadStatus {
                    check: Check::new(check_of(s.key, s.name, KEY_LIMIT)?),
                    state: read_state(s.state.as_deref()?)?,
                    description: s.description.unwrap_or_default(),
                    id: s.updated_date.or(s.created_date).or(s.date_added).unwrap_or(0),
                })
            }));
            match page.next_page_start {
                Some(next) if !page.is_last_page && next > start => start = next,
                _ => break,
            }
        }
        Ok(crate::newest_first(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_bitbucket_words_and_back() {
        let got: Vec<_> = State::ALL.iter().map(|s| state(*s)).collect();
        assert_eq!(got, ["INPROGRESS", "SUCCESSFUL", "FAILED", "CANCELLED"]);
        let legacy: Vec<_> = State::ALL.iter().map(|s| legacy_state(*s)).collect();
        assert_eq!(legacy, ["INPROGRESS", "SUCCESSFUL", "FAILED", "FAILED"]);
        for s in State::ALL {
            assert_eq!(read_state(state(s)), Some(s));
        }
        assert_eq!(read_state("UNKNOWN"), None);
    }

    #[test]
    fn the_rest_base_gets_its_prefix_once() {
        let r =
            repo_path(&GitUrl::parse("https://git.example.com/bitbucket/scm/PROJ/app.git").unwrap()).unwrap();
        assert_eq!(rest_base(None, &r), "https://git.example.com/bitbucket/rest");
        assert_eq!(
            rest_base(Some("http://127.0.0.1:7990/"), &r),
            "http://127.0.0.1:7990/rest"
        );
        assert_eq!(
            rest_base(Some("http://127.0.0.1:7990/bb/rest"), &r),
            "http://127.0.0.1:7990/bb/rest"
        );
    }
}
