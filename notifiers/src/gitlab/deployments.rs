//! GitLab deployments to environments (`--deployments`), as [`crate::deployment`]
//! describes them.
//!
//! The first state of a (commit, environment) makes a deployment
//! (`POST /projects/:id/deployments`, `status: running`, `ref` the branch or else
//! the SHA, `tag: false`); later states `PUT …/deployments/:id` its status. Its id is
//! the [`Handle`], with [`FINISHED`] once it holds a final status.
//!
//! GitLab's state machine (app/models/deployment.rb) decides what may follow what:
//! `run` only from `created` or `blocked`; `succeed`, `drop` and `cancel` from any
//! status but their own. A refused transition answers 400
//! `{"message": {"status": ["cannot transition via \"run\""]}}`. So:
//! - a Pending for a finished deployment (the commit synced again) makes a new one,
//!   since GitLab will not take it back to running;
//! - Succeeded or Failed for a finished deployment is applied to it (GitLab allows
//!   success → failed and back): the same deploy's outcome changed, the workload
//!   check's verdict after the sync's;
//! - Canceled for a finished deployment is not sent: a deploy that finished was not
//!   canceled, and marking it so would take a successful deploy off the environment;
//! - a 400 refusing a final status means the deployment already holds it (a write
//!   whose answer was lost): written. A 400 refusing `running` to an adopted
//!   deployment makes a new one. Any other 400 is [`Reason::Invalid`], permanent:
//!   delivery does not retry it, so no answer loops.
//!
//! With no handle (a crash after GitLab made the deployment but before its id was
//! kept), the newest deployment of the commit in the environment, made through the
//! API (a CI job's cannot be updated: 403), is taken: updated when still
//! `created`/`running`, or left as written when it already holds the final status
//! asked for. GitLab cannot filter deployments by SHA, so the environment's newest
//! [`SCAN_PAGES`] pages are read.
//!
//! What this API has no field for: a description (nothing to cut), the log URL
//! (`target_url`), the environment's URL (`--environment-url` is the environment's
//! `external_url`, set through the environments API) and the production tier (GitLab
//! derives it from the environment's name). None of them is sent.

use super::{GitLab, NAME, auth, state};
use crate::credential::with_token;
use crate::deployment::Environment;
use crate::git_url::GitUrlError;
use crate::http::{self, HttpResponse};
use crate::provider::Connect;
use crate::{
    Budget, Check, CommitStatus, Handle, Notifier, NotifyError, ReadStatus, Reason, Receipt, Sha, State,
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

/// Handle suffix of a deployment with a final status: a Pending needs a new one.
pub const FINISHED: &str = ":finished";
/// Pages of 100 deployments read to find a commit's: GitLab lists them by project or
/// environment only, and a deploy flux-status looks for is among the newest.
pub const SCAN_PAGES: usize = 10;

/// The deployments notifier for a GitLab project (`SPEC.deployments`).
pub fn notifier(c: Connect<'_>, _environment: &Environment) -> Result<Arc<dyn Notifier>, GitUrlError> {
    Ok(Arc::new(Deployments {
        gl: GitLab::with_credential(c.client, c.git_url, c.api_url, c.credential)?,
    }))
}

pub struct Deployments {
    gl: GitLab,
}

/// Our state for a deployment status read back; `blocked` (waiting for an approval)
/// and `skipped` are no state of ours.
pub fn read_state(status: &str) -> Option<State> {
    match status {
        "created" | "running" => Some(State::Pending),
        "success" => Some(State::Succeeded),
        "failed" => Some(State::Failed),
        "canceled" => Some(State::Canceled),
        _ => None,
    }
}

/// The handle for deployment `id` now in `state`.
fn handle(id: u64, state: State) -> Option<Handle> {
    if state.is_final() {
        Handle::new(format!("{id}{FINISHED}"))
    } else {
        Handle::new(id.to_string())
    }
}

/// Where a known deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Made but not started: `run` is still allowed.
    Created,
    Running,
    /// A final status; which one is known for an adopted deployment only.
    Finished(Option<State>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    id: u64,
    phase: Phase,
}

/// The deployment a handle names; `None` for one that is not ours.
fn parse_handle(h: &Handle) -> Option<Known> {
    let (id, phase) = match h.as_str().strip_suffix(FINISHED) {
        Some(id) => (id, Phase::Finished(None)),
        None => (h.as_str(), Phase::Running),
    };
    Some(Known {
        id: id.parse().ok()?,
        phase,
    })
}

fn phase(status: &str) -> Phase {
    match status {
        "created" | "blocked" => Phase::Created,
        "running" => Phase::Running,
        other => Phase::Finished(read_state(other)),
    }
}

#[derive(Serialize)]
struct Create<'a> {
    environment: &'a str,
    sha: &'a str,
    #[serde(rename = "ref")]
    git_ref: &'a str,
    tag: bool,
    status: &'static str,
}

#[derive(Serialize)]
struct Update {
    status: &'static str,
}

#[derive(Deserialize)]
struct Made {
    id: u64,
}

#[derive(Deserialize)]
struct Listed {
    id: u64,
    sha: String,
    status: String,
    environment: Option<ListedEnvironment>,
    /// The CI job that made it; `None` for a deployment made through the API.
    deployable: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ListedEnvironment {
    name: String,
}

/// GitLab's answer to a status the deployment cannot take from where it is.
fn refused_transition(e: &NotifyError) -> bool {
    e.status == Some(400) && e.message.contains("cannot transition via")
}

impl Deployments {
    async fn send(
        &self,
        put: Option<u64>,
        body: &(impl Serialize + Sync),
    ) -> Result<HttpResponse, NotifyError> {
        let url = match put {
            Some(id) => format!("{}/deployments/{id}", self.gl.project_url),
            None => format!("{}/deployments", self.gl.project_url),
        };
        with_token(&*self.gl.credential, |token| {
            let req = match put {
                Some(_) => self.gl.client.put(&url),
                None => self.gl.client.post(&url),
            };
            let req = auth(req, &token).map(|r| r.json(body));
            async move { http::read(NAME, req?).await }
        })
        .await
    }

    /// A new running deployment of the commit to the environment.
    async fn create(&self, status: &CommitStatus) -> Result<(u64, HttpResponse), NotifyError> {
        let sha = status.sha.as_str();
        let body = Create {
            environment: status.check.as_str(),
            sha,
            git_ref: status.git_ref.as_deref().filter(|r| !r.is_empty()).unwrap_or(sha),
            tag: false,
            status: state(State::Pending),
        };
        let resp = self.send(None, &body).await?;
        let made: Made = resp.json(NAME)?;
        Ok((made.id, resp))
    }

    async fn update(&self, id: u64, to: State) -> Result<HttpResponse, NotifyError> {
        self.send(Some(id), &Update { status: state(to) }).await
    }

    /// The newest deployment of the commit in the environment that the API made.
    async fn adoptable(&self, status: &CommitStatus) -> Result<Option<Known>, NotifyError> {
        let env = utf8_percent_encode(status.check.as_str(), NON_ALPHANUMERIC);
        let url = format!(
            "{}/deployments?environment={env}&order_by=id&sort=desc&per_page=100",
            self.gl.project_url
        );
        let mut found = None;
        self.gl
            .pages(&url, SCAN_PAGES, |page: Vec<Listed>| {
                found = page
                    .into_iter()
                    .find(|d| d.deployable.is_none() && d.sha.eq_ignore_ascii_case(status.sha.as_str()))
                    .map(|d| Known {
                        id: d.id,
                        phase: phase(&d.status),
                    });
                found.is_none()
            })
            .await?;
        Ok(found)
    }

    /// Makes a deployment and brings it to `status`'s state.
    async fn create_in(&self, status: &CommitStatus) -> Result<Receipt, NotifyError> {
        let (id, mut resp) = self.create(status).await?;
        if status.state.is_final() {
            resp = self.update(id, status.state).await?;
        }
        Ok(receipt(id, status.state, &resp))
    }
}

fn receipt(id: u64, state: State, resp: &HttpResponse) -> Receipt {
    Receipt {
        budget: http::budget(&resp.headers),
        handle: handle(id, state),
    }
}

/// A write that needed no request.
fn unchanged(id: u64, state: State) -> Receipt {
    Receipt {
        budget: Budget::default(),
        handle: handle(id, state),
    }
}

#[async_trait::async_trait]
impl Notifier for Deployments {
    fn name(&self) -> &'static str {
        NAME
    }

    fn repo(&self) -> &str {
        &self.gl.repo
    }

    async fn write(&self, status: &CommitStatus, previous: Option<&Handle>) -> Result<Receipt, NotifyError> {
        let known = match previous.and_then(parse_handle) {
            Some(k) => Some(k),
            None => match self.adoptable(status).await? {
                // An older deploy of the commit, finished otherwise: not this one's.
                Some(Known {
                    phase: Phase::Finished(done),
                    ..
                }) if done != Some(status.state) => None,
                adopted => adopted,
            },
        };
        let to = status.state;
        let Some(Known { id, phase }) = known else {
            return self.create_in(status).await;
        };
        match (to, phase) {
            (State::Pending, Phase::Running) => Ok(unchanged(id, to)),
            (State::Pending, Phase::Finished(_)) => self.create_in(status).await,
            (State::Pending, Phase::Created) => match self.update(id, to).await {
                Ok(resp) => Ok(receipt(id, to, &resp)),
                Err(e) if refused_transition(&e) || e.reason == Reason::NotFound => {
                    self.create_in(status).await
                }
                Err(e) => Err(e),
            },
            (State::Canceled, Phase::Finished(_)) => Ok(unchanged(id, to)),
            (_, Phase::Finished(Some(done))) if done == to => Ok(unchanged(id, to)),
            _ => match self.update(id, to).await {
                Ok(resp) => Ok(receipt(id, to, &resp)),
                Err(e) if refused_transition(&e) => Ok(unchanged(id, to)),
                // Deleted since: the deploy shows only if it is made again.
                Err(e) if e.reason == Reason::NotFound => {
                    tracing::info!(repo = %self.gl.repo, environment = %status.check, deployment = id,
                        "the deployment is gone; creating a new one");
                    self.create_in(status).await
                }
                Err(e) => Err(e),
            },
        }
    }

    async fn check_credentials(&self) -> Result<(), NotifyError> {
        self.gl.check_credentials().await
    }

    async fn list_statuses(&self, sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        let url = format!(
            "{}/deployments?order_by=id&sort=desc&per_page=100",
            self.gl.project_url
        );
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        self.gl
            .pages(&url, SCAN_PAGES, |page: Vec<Listed>| {
                for d in page {
                    let Some(env) = d.environment.filter(|_| d.sha.eq_ignore_ascii_case(sha.as_str())) else {
                        continue;
                    };
                    // Newest first: the first one of an environment is its latest.
                    if !seen.insert(env.name.clone()) {
                        continue;
                    }
                    if let (Some(state), Ok(id)) = (read_state(&d.status), i64::try_from(d.id)) {
                        out.push(ReadStatus {
                            check: Check::new(env.name),
                            state,
                            description: String::new(),
                            id,
                        });
                    }
                }
                true
            })
            .await?;
        Ok(crate::newest_first(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_deployment_statuses_and_read_back() {
        for s in State::ALL {
            assert_eq!(read_state(state(s)), Some(s), "{s}");
        }
        assert_eq!(state(State::Pending), "running");
        assert_eq!(read_state("created"), Some(State::Pending));
        assert_eq!(read_state("blocked"), None);
        assert_eq!(read_state("skipped"), None);
    }

    #[test]
    fn a_finished_deployment_is_marked_in_its_handle() {
        for s in State::ALL {
            let h = handle(41, s).unwrap();
            let want = if s.is_final() {
                Phase::Finished(None)
            } else {
                Phase::Running
            };
            assert_eq!(parse_handle(&h), Some(Known { id: 41, phase: want }), "{s}");
        }
        assert_eq!(handle(41, State::Failed).unwrap().as_str(), "41:finished");
        assert_eq!(handle(41, State::Pending).unwrap().as_str(), "41");
        for garbage in ["run-7", "7:completed", ":finished", "-1"] {
            assert_eq!(parse_handle(&Handle::new(garbage).unwrap()), None, "{garbage}");
        }
    }

    #[test]
    fn listed_statuses_say_what_may_follow() {
        assert_eq!(phase("created"), Phase::Created);
        assert_eq!(phase("blocked"), Phase::Created);
        assert_eq!(phase("running"), Phase::Running);
        assert_eq!(phase("success"), Phase::Finished(Some(State::Succeeded)));
        assert_eq!(phase("skipped"), Phase::Finished(None));
    }
}
