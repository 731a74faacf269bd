//! GitHub deployments (`--deployments`): one deployment per commit and environment,
//! its states posted as deployment statuses.
//!
//! GitHub lets any deployment status follow any other, so a deployment is made once
//! per (commit, environment) and every later state of it, a re-sync included, is a
//! new status on it. The deployment's id is the [`Handle`] delivery keeps; with none
//! (a crash after GitHub made the deployment but before its id was kept) the newest
//! deployment of the commit in the environment is adopted rather than a second made.

use super::{DESCRIPTION_LIMIT, GitHub, NAME};
use crate::credential::with_token;
use crate::deployment::Environment;
use crate::git_url::GitUrlError;
use crate::http::{self, HttpResponse};
use crate::provider::Connect;
use crate::{
    Check, CommitStatus, Handle, MAX_PAGES, Notifier, NotifyError, ReadStatus, Reason, Receipt, Sha, State,
    text,
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub struct Deployments {
    /// The commit-status notifier of the same repository: its endpoints, its token
    /// source and its credential check.
    github: GitHub,
    environment: Environment,
}

/// The deployments notifier for a repository (`SPEC.deployments`).
pub fn notifier(c: Connect<'_>, environment: &Environment) -> Result<Arc<dyn Notifier>, GitUrlError> {
    Ok(Arc::new(Deployments {
        github: GitHub::with_credential(c.client, c.git_url, c.api_url, c.credential)?,
        environment: environment.clone(),
    }))
}

/// A deployment status's `state` for ours. A canceled deploy was superseded by a
/// newer one: `inactive` is GitHub's word for a deployment no longer current.
pub fn state(s: State) -> &'static str {
    match s {
        State::Pending => "in_progress",
        State::Succeeded => "success",
        State::Failed => "failure",
        State::Canceled => "inactive",
    }
}

/// Our state for a deployment status read back. The states we never write fold
/// into ours: `queued` and `pending` are still running, `error` did not succeed.
/// `inactive`, written by us for canceled or by GitHub's `auto_inactive` once a
/// newer deploy succeeded, reads back as canceled: superseded either way.
pub fn read_state(s: &str) -> Option<State> {
    match s {
        "in_progress" | "queued" | "pending" => Some(State::Pending),
        "success" => Some(State::Succeeded),
        "failure" | "error" => Some(State::Failed),
        "inactive" => Some(State::Canceled),
        _ => None,
    }
}

#[derive(Serialize)]
struct CreateDeployment<'a> {
    #[serde(rename = "ref")]
    git_ref: &'a str,
    task: &'static str,
    auto_merge: bool,
    /// Empty: without it GitHub refuses (409) while any status on the commit is
    /// pending, and ours is.
    required_contexts: [&'static str; 0],
    environment: &'a str,
    description: String,
    transient_environment: bool,
    production_environment: bool,
}

#[derive(Serialize)]
struct CreateStatus<'a> {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment_url: Option<&'a str>,
    environment: &'a str,
    description: String,
    auto_inactive: bool,
}

#[derive(Deserialize)]
struct Deployment {
    id: u64,
    environment: Option<String>,
}

#[derive(Deserialize)]
struct ListedStatus {
    state: String,
    description: Option<String>,
}

impl Deployments {
    fn create_body<'a>(&'a self, status: &'a CommitStatus) -> CreateDeployment<'a> {
        CreateDeployment {
            git_ref: status.sha.as_str(),
            task: "deploy",
            auto_merge: false,
            required_contexts: [],
            environment: status.check.as_str(),
            description: text::one_line_truncated(&status.description, DESCRIPTION_LIMIT),
            transient_environment: false,
            production_environment: self.environment.production,
        }
    }

    fn status_body<'a>(&'a self, status: &'a CommitStatus) -> CreateStatus<'a> {
        CreateStatus {
            state: state(status.state),
            log_url: status.target_url.as_deref(),
            environment_url: self.environment.url.as_deref(),
            environment: status.check.as_str(),
            description: text::one_line_truncated(&status.description, DESCRIPTION_LIMIT),
            auto_inactive: true,
        }
    }

    /// A write: the answer if it is a success (read as any answer is), classified
    /// otherwise; once more with a fresh token if GitHub refused the one sent.
    async fn post(&self, url: &str, body: &(impl Serialize + Sync)) -> Result<HttpResponse, NotifyError> {
        let gh = &self.github;
        with_token(&*gh.credential, |token| {
            let req = GitHub::auth(gh.client.post(url), &token).map(|r| r.json(body));
            async move { http::read(NAME, req?).await }
        })
        .await
    }

    async fn get(&self, url: &str) -> Result<HttpResponse, NotifyError> {
        let gh = &self.github;
        with_token(&*gh.credential, |token| {
            let req = GitHub::auth(gh.client.get(url), &token);
            async move { http::read(NAME, req?).await }
        })
        .await
    }

    /// The newest deployment of the commit in the environment, if GitHub has one.
    async fn adoptable(&self, sha: &Sha, environment: &Check) -> Result<Option<u64>, NotifyError> {
        let url = format!(
            "{}/deployments?sha={sha}&environment={}&per_page=1",
            self.github.repo_url,
            utf8_percent_encode(environment.as_str(), NON_ALPHANUMERIC)
        );
        let listed: Vec<Deployment> = self.get(&url).await?.json(NAME)?;
        Ok(listed.first().map(|d| d.id))
    }

    /// Posts `status` on deployment `id`.
    async fn post_status(&self, id: u64, status: &CommitStatus) -> Result<Receipt, NotifyError> {
        let url = format!("{}/deployments/{id}/statuses", self.github.repo_url);
        let resp = self.post(&url, &self.status_body(status)).await?;
        Ok(Receipt {
            budget: http::budget(&resp.headers),
            handle: Handle::new(id.to_string()),
        })
    }

    /// The newest status of deployment `id`, as our state; pending when it has none.
    async fn latest(&self, id: u64) -> Result<Option<(State, String)>, NotifyError> {
        let url = format!("{}/deployments/{id}/statuses?per_page=1", self.github.repo_url);
        let listed: Vec<ListedStatus> = self.get(&url).await?.json(NAME)?;
        Ok(match listed.into_iter().next() {
            None => Some((State::Pending, String::new())),
            Some(s) => read_state(&s.state).map(|state| (state, s.description.unwrap_or_default())),
        })
    }
}

#[async_trait::async_trait]
impl Notifier for Deployments {
    fn name(&self) -> &'static str {
        NAME
    }

    fn repo(&self) -> &str {
        &self.github.repo
    }

    async fn write(&self, status: &CommitStatus, previous: Option<&Handle>) -> Result<Receipt, NotifyError> {
        let known = match previous.and_then(|h| h.as_str().parse::<u64>().ok()) {
            Some(id) => Some(id),
            None => self.adoptable(&status.sha, &status.check).await?,
        };
        if let Some(id) = known {
            match self.post_status(id, status).await {
                // The deployment was deleted: a new one stands for the commit.
                Err(e) if e.reason == Reason::NotFound => {
                    tracing::info!(repo = %self.github.repo, environment = %status.check, deployment = id,
                        "the deployment is gone; creating a new one");
                }
                done => return done,
            }
        }
        let url = format!("{}/deployments", self.github.repo_url);
        let created: Deployment = self.post(&url, &self.create_body(status)).await?.json(NAME)?;
        self.post_status(created.id, status).await
    }

    async fn check_credentials(&self) -> Result<(), NotifyError> {
        self.github.check_credentials().await
    }

    async fn list_statuses(&self, sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        let mut url = format!("{}/deployments?sha={sha}&per_page=100", self.github.repo_url);
        let mut deployments = Vec::new();
        for _ in 0..MAX_PAGES {
            let resp = self.get(&url).await?;
            deployments.extend(resp.json::<Vec<Deployment>>(NAME)?);
            match http::next_link(&resp.headers, &self.github.api) {
                Some(next) => url = next,
                None => break,
            }
        }
        let mut out = Vec::new();
        for d in deployments {
            let (Some(environment), Ok(id)) = (d.environment, i64::try_from(d.id)) else {
                continue;
            };
            if let Some((state, description)) = self.latest(d.id).await? {
                out.push(ReadStatus {
                    check: Check::new(environment),
                    state,
                    description,
                    // The deployment's id: the newer deployment of an environment wins.
                    id,
                });
            }
        }
        Ok(crate::newest_first(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_itself() {
        for s in State::ALL {
            assert_eq!(read_state(state(s)), Some(s), "{s}");
        }
        let written: Vec<_> = State::ALL.iter().map(|s| state(*s)).collect();
        assert_eq!(written, ["in_progress", "success", "failure", "inactive"]);
    }

    #[test]
    fn states_we_never_write_fold_into_ours() {
        assert_eq!(read_state("queued"), Some(State::Pending));
        assert_eq!(read_state("pending"), Some(State::Pending));
        assert_eq!(read_state("error"), Some(State::Failed));
        assert_eq!(read_state("destroyed"), None);
        assert_eq!(read_state(""), None);
    }

    #[test]
    fn the_deployment_asks_for_no_status_checks() {
        let d = Deployments {
            github: GitHub::with_credential(
                crate::http::client(&Default::default()).unwrap(),
                &crate::GitUrl::parse("https://github.com/acme/app").unwrap(),
                None,
                Arc::new(crate::StaticToken::new(secrecy::SecretString::from("t"))),
            )
            .unwrap(),
            environment: Environment {
                url: None,
                production: true,
            },
        };
        let status = CommitStatus {
            sha: Sha::parse(&"a".repeat(40)).unwrap(),
            check: Check::new("prod"),
            state: State::Pending,
            description: "é".repeat(200),
            target_url: None,
            summary: None,
            git_ref: Some("main".into()),
        };
        let body = serde_json::to_value(d.create_body(&status)).unwrap();
        assert_eq!(body["required_contexts"], serde_json::json!([]));
        assert_eq!(body["ref"], "a".repeat(40));
        assert_eq!(body["production_environment"], true);
        assert_eq!(body["description"].as_str().unwrap().chars().count(), 140);
        let body = serde_json::to_value(d.status_body(&status)).unwrap();
        assert!(body.get("log_url").is_none() && body.get("environment_url").is_none());
    }
}
