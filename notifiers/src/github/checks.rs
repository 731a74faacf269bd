//! GitHub check runs, updated in place (`--github-checks`).
//!
//! The first state of a (commit, check) creates a run (`POST .../check-runs`); later
//! states `PATCH` it, found by the [`Handle`] delivery keeps in the outbox, so a
//! restart updates the same run. GitHub does not let a completed run go back, so a
//! newer state for a completed run makes a new one. Only a GitHub App may create
//! check runs, so this notifier is only ever built on an App's installation tokens.

use super::{GitHub, NAME, SPEC, endpoints, repo_path};
use crate::credential::{Credential, CredentialSource, with_token};
use crate::git_url::{GitUrl, GitUrlError};
use crate::http::{self, HttpResponse};
use crate::{
    Check, CommitStatus, Handle, MAX_PAGES, Notifier, NotifyError, ReadStatus, Reason, Receipt, Sha, State,
    text,
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::SystemTime;

/// GitHub's `maxLength` of `output.summary` and `output.text`, in characters.
pub const OUTPUT_LIMIT: usize = 65_535;
/// Ends a summary cut to [`OUTPUT_LIMIT`].
pub const CUT_NOTE: &str = "\n\n_This summary was cut: it is longer than GitHub shows._";
/// `output.title` is one line; GitHub documents no limit, so a generous one.
const TITLE_LIMIT: usize = 1024;
/// Handle suffix of a run that is completed: the next state needs a new run.
const COMPLETED: &str = ":completed";

pub struct CheckRuns {
    client: reqwest::Client,
    api: String,
    repo_url: String,
    credential: Arc<dyn CredentialSource>,
    repo: String,
    /// Lists only this check's runs (the CLI reading one check back).
    only: Option<Check>,
    /// The App's numeric id, to find only its own runs; `None` for a client id.
    app_id: Option<u64>,
}

/// The check-run notifier for `url`. Writes need an App (GitHub refuses check-run
/// writes with any other token); a token can read runs back. With `only`, it lists
/// that check's runs alone (`check_name`), as a reader of one check needs.
pub fn notifier(
    client: reqwest::Client,
    url: &GitUrl,
    api_url: Option<&str>,
    credential: Credential,
    only: Option<Check>,
) -> Result<Arc<dyn Notifier>, GitUrlError> {
    let app_id = app_id(&credential);
    let source = SPEC
        .provider()
        .credential_source(&client, url, api_url, credential)?;
    connect(client, url, api_url, source, app_id, only)
}

/// The numeric id of the App a credential is, to find only its runs.
pub fn app_id(credential: &Credential) -> Option<u64> {
    match credential {
        Credential::Token(_) => None,
        Credential::App(app) => app.app.id().parse().ok(),
    }
}

/// [`notifier`] on a credential source it may share with the repository's other
/// notifiers; `app_id` as [`app_id`] gives it.
pub fn connect(
    client: reqwest::Client,
    url: &GitUrl,
    api_url: Option<&str>,
    credential: Arc<dyn CredentialSource>,
    app_id: Option<u64>,
    only: Option<Check>,
) -> Result<Arc<dyn Notifier>, GitUrlError> {
    let (api, repo_url, _) = endpoints(url, api_url)?;
    let (owner, name) = repo_path(url)?;
    Ok(Arc::new(CheckRuns {
        client,
        api,
        repo_url,
        credential,
        repo: format!("{}/{owner}/{name}", url.host),
        only,
        app_id,
    }))
}

/// A run's `status` and `conclusion` for our state.
pub fn status_and_conclusion(s: State) -> (&'static str, Option<&'static str>) {
    match s {
        State::Pending => ("in_progress", None),
        State::Succeeded => ("completed", Some("success")),
        State::Failed => ("completed", Some("failure")),
        State::Canceled => ("completed", Some("cancelled")),
    }
}

/// Our state for a run read back; conclusions we never write but that say the run
/// did not pass (`timed_out`, `action_required`) read as failed, the rest are left out.
pub fn read_state(status: &str, conclusion: Option<&str>) -> Option<State> {
    match (status, conclusion) {
        ("completed", Some("success")) => Some(State::Succeeded),
        ("completed", Some("failure" | "timed_out" | "action_required")) => Some(State::Failed),
        ("completed", Some("cancelled")) => Some(State::Canceled),
        ("completed", _) => None,
        _ => Some(State::Pending),
    }
}

#[derive(Serialize)]
struct Output {
    title: String,
    summary: String,
}

#[derive(Serialize)]
struct RunBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head_sha: Option<&'a str>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conclusion: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details_url: Option<&'a str>,
    output: Output,
}

#[derive(Deserialize)]
struct Run {
    id: u64,
}

#[derive(Deserialize)]
struct Listed {
    check_runs: Vec<ListedRun>,
}

#[derive(Deserialize)]
struct ListedRun {
    id: i64,
    name: String,
    status: String,
    conclusion: Option<String>,
    output: Option<ListedOutput>,
}

#[derive(Deserialize)]
struct ListedOutput {
    title: Option<String>,
}

/// The body for `status`: on create (`head` given) with name, SHA and `started_at`.
fn body<'a>(status: &'a CommitStatus, create: bool, now: SystemTime) -> RunBody<'a> {
    let (run_status, conclusion) = status_and_conclusion(status.state);
    let title = text::one_line_truncated(&status.description, TITLE_LIMIT);
    let summary = match status.summary.as_deref() {
        Some(s) if !s.trim().is_empty() => s,
        _ => &status.description,
    };
    RunBody {
        name: create.then(|| status.check.as_str()),
        head_sha: create.then(|| status.sha.as_str()),
        status: run_status,
        conclusion,
        started_at: create.then(|| rfc3339(now)),
        completed_at: conclusion.map(|_| rfc3339(now)),
        details_url: status.target_url.as_deref(),
        output: Output {
            title,
            summary: text::cut_with_note(summary, OUTPUT_LIMIT, CUT_NOTE),
        },
    }
}

/// The handle for run `id` now in `state`.
fn handle(id: u64, state: State) -> Option<Handle> {
    if state.is_final() {
        Handle::new(format!("{id}{COMPLETED}"))
    } else {
        Handle::new(id.to_string())
    }
}

/// The run a handle names, if it can still be updated.
fn open_run(previous: Option<&Handle>) -> Option<u64> {
    let h = previous?.as_str();
    if h.ends_with(COMPLETED) {
        return None;
    }
    h.parse().ok()
}

impl CheckRuns {
    async fn write_run(
        &self,
        url: &str,
        create: bool,
        body: &RunBody<'_>,
    ) -> Result<HttpResponse, NotifyError> {
        with_token(&*self.credential, |token| {
            let req = if create {
                self.client.post(url)
            } else {
                self.client.patch(url)
            };
            let req = GitHub::auth(req, &token).map(|r| r.json(body));
            async move { http::read(NAME, req?).await }
        })
        .await
    }
}

impl CheckRuns {
    /// With no handle kept (a crash after GitHub made the run but before its id was
    /// on disk), our App's newest run of this check on the commit, if still open: it
    /// is updated rather than a second one made.
    async fn adoptable(&self, status: &CommitStatus) -> Result<Option<u64>, NotifyError> {
        let runs = list_runs(self, &status.sha, Some(&status.check)).await?;
        Ok(runs
            .first()
            .filter(|r| r.state == State::Pending)
            .and_then(|r| u64::try_from(r.id).ok()))
    }
}

#[async_trait::async_trait]
impl Notifier for CheckRuns {
    fn name(&self) -> &'static str {
        NAME
    }

    fn repo(&self) -> &str {
        &self.repo
    }

    async fn write(&self, status: &CommitStatus, previous: Option<&Handle>) -> Result<Receipt, NotifyError> {
        let now = SystemTime::now();
        let open = match previous {
            Some(h) => open_run(Some(h)),
            None => self.adoptable(status).await?,
        };
        if let Some(id) = open {
            let url = format!("{}/check-runs/{id}", self.repo_url);
            match self.write_run(&url, false, &body(status, false, now)).await {
                Ok(resp) => {
                    return Ok(Receipt {
                        budget: http::budget(&resp.headers),
                        handle: handle(id, status.state),
                    });
                }
                // The run is gone (deleted with its suite), or completed by a write
                // whose answer was lost (read back, so its handle was never kept):
                // GitHub refuses to take it back to in_progress. A new run, then.
                Err(e)
                    if e.reason == Reason::NotFound
                        || (e.reason == Reason::Invalid && status.state == State::Pending) =>
                {
                    tracing::info!(repo = %self.repo, check = %status.check, run = id,
                        http_status = e.status, "the check run cannot be updated; creating a new one");
                }
                Err(e) => return Err(e),
            }
        }
        let url = format!("{}/check-runs", self.repo_url);
        let resp = self.write_run(&url, true, &body(status, true, now)).await?;
        let run: Run = resp.json(NAME)?;
        Ok(Receipt {
            budget: http::budget(&resp.headers),
            handle: handle(run.id, status.state),
        })
    }

    async fn check_credentials(&self) -> Result<(), NotifyError> {
        with_token(&*self.credential, |token| {
            let req = GitHub::auth(self.client.get(&self.repo_url), &token);
            async move { http::read(NAME, req?).await }
        })
        .await
        .map(drop)
    }

    async fn list_statuses(&self, sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        list_runs(self, sha, self.only.as_ref()).await
    }
}

async fn list_runs(c: &CheckRuns, sha: &Sha, check: Option<&Check>) -> Result<Vec<ReadStatus>, NotifyError> {
    let mut url = format!("{}/commits/{sha}/check-runs?filter=all&per_page=100", c.repo_url);
    if let Some(app) = c.app_id {
        url.push_str(&format!("&app_id={app}"));
    }
    if let Some(check) = check {
        url.push_str("&check_name=");
        url.extend(utf8_percent_encode(check.as_str(), NON_ALPHANUMERIC));
    }
    let mut out = Vec::new();
    for _ in 0..MAX_PAGES {
        let resp = with_token(&*c.credential, |token| {
            let req = GitHub::auth(c.client.get(&url), &token);
            async move { http::read(NAME, req?).await }
        })
        .await?;
        let page: Listed = resp.json(NAME)?;
        out.extend(page.check_runs.into_iter().filter_map(|r| {
            Some(ReadStatus {
                state: read_state(&r.status, r.conclusion.as_deref())?,
                description: r.output.and_then(|o| o.title).unwrap_or_default(),
                // GitHub's check-run name filter is not exact (it ignores case).
                check: Check::new(r.name),
                id: r.id,
            })
        }));
        match http::next_link(&resp.headers, &c.api) {
            Some(next) => url = next,
            None => break,
        }
    }
    if let Some(check) = check {
        out.retain(|s| &s.check == check);
    }
    Ok(crate::newest_first(out))
}

/// `2016-07-11T22:14:10Z`: what GitHub takes for `started_at` and `completed_at`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::installation::parse_rfc3339;
    use std::time::UNIX_EPOCH;

    #[test]
    fn times_are_written_as_github_reads_them() {
        for secs in [0u64, 1_468_275_250, 1_709_208_000, 4_102_444_800] {
            let t = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{secs}");
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(1_468_275_250)),
            "2016-07-11T22:14:10Z"
        );
    }

    #[test]
    fn states_map_to_status_and_conclusion_and_read_back() {
        for s in State::ALL {
            let (status, conclusion) = status_and_conclusion(s);
            assert_eq!(conclusion.is_some(), status == "completed", "{s}");
            assert_eq!(read_state(status, conclusion), Some(s));
        }
        assert_eq!(read_state("completed", Some("neutral")), None);
        assert_eq!(read_state("queued", None), Some(State::Pending));
    }

    #[test]
    fn a_completed_run_is_never_patched_again() {
        let done = handle(7, State::Failed);
        assert_eq!(open_run(done.as_ref()), None);
        let open = handle(7, State::Pending);
        assert_eq!(open_run(open.as_ref()), Some(7));
        assert_eq!(open_run(Handle::new("garbage").as_ref()), None);
    }
}
