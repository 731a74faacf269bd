//! `--deployments`: each deploy is also a deployment of its commit to an environment.
//!
//! Statuses say what each part of a deploy did: a Flux v2 object, or fluxd's sync
//! and then its rollout. A deployment says what the environment runs, so a commit's
//! deployment is folded from the latest word of every part on it: failed if any
//! part failed, else in progress while any part runs, else succeeded; canceled only
//! when every part was superseded. Once finished, the deployment is reopened only by
//! a part that runs again, not by one that starts late. The deployment is one more
//! update in the same
//! batch as the statuses, for the repository's deployments route, whose check is the
//! environment: the outbox coalesces, retries and keeps its handle like any other.
//!
//! The parts are remembered for the last [`KEPT`] commits, in memory: after a
//! restart a commit's deployment follows the parts that report from then on.

use crate::update::{Deploy, Map, RepoId, StatusUpdate};
use notifiers::{Check, CommitStatus, Sha, State};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Commits whose parts are remembered.
pub const KEPT: usize = 4096;

/// The route that writes `repo`'s deployments: a name no repository has, since
/// repositories are `host/path`.
pub fn route(repo: &str) -> RepoId {
    format!("{repo}#deployments").into()
}

pub struct Deployments {
    environment: Check,
    /// `--git-branch`: the ref of a commit whose event names no branch (fluxd's).
    git_branch: Option<String>,
    /// The deployments route of each repository that takes deployments.
    routes: Map<RepoId, RepoId>,
    parts: Mutex<Parts>,
}

impl std::fmt::Debug for Deployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployments")
            .field("environment", &self.environment)
            .field("repos", &self.routes.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Parts {
    by_commit: Map<(RepoId, Sha), Commit>,
    /// Oldest first, for forgetting.
    order: VecDeque<(RepoId, Sha)>,
}

/// What is known of one commit's deploy.
#[derive(Default)]
struct Commit {
    parts: Vec<Part>,
    /// The last deployment state queued was final.
    finished: bool,
}

/// One part's latest word on a commit.
#[derive(Debug, Clone)]
struct Part {
    part: Check,
    label: String,
    state: State,
    /// The sync succeeded; the workload check has the verdict ([`Part::rollout`]).
    awaits_rollout: bool,
    rollout: Option<State>,
    description: String,
}

impl Part {
    fn state(&self) -> State {
        if self.awaits_rollout {
            self.rollout.unwrap_or(State::Pending)
        } else {
            self.state
        }
    }
}

/// Which state decides a deployment when parts disagree: the higher.
fn weight(s: State) -> u8 {
    match s {
        State::Failed => 3,
        State::Pending => 2,
        State::Succeeded => 1,
        State::Canceled => 0,
    }
}

impl Deployments {
    /// Deployments to `environment` for `repos`.
    pub fn new(
        environment: &str,
        git_branch: Option<String>,
        repos: impl IntoIterator<Item = RepoId>,
    ) -> Self {
        Deployments {
            environment: Check::new(environment),
            git_branch,
            routes: repos.into_iter().map(|r| (r.clone(), route(&r))).collect(),
            parts: Mutex::new(Parts::default()),
        }
    }

    /// Adds to `updates` the deployment each commit they speak for now has.
    pub fn add(&self, updates: &mut Vec<StatusUpdate>) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let mut twins: Vec<StatusUpdate> = Vec::new();
        for u in updates.iter() {
            let (Some(deploy), Some(route)) = (&u.deploy, self.routes.get(&u.repo)) else {
                continue;
            };
            let commit = parts.of(&u.repo, &u.status.sha);
            let rerun = record(&mut commit.parts, deploy, &u.status.description);
            let (state, description) = fold(&commit.parts);
            // A finished deployment is reopened only by a part that runs again (the
            // commit synced anew), not by one that starts late (a Kustomization that
            // waited for another) nor by others' words while one still runs: GitLab
            // makes a new deployment for each reopening.
            if state == State::Pending && commit.finished && !rerun {
                continue;
            }
            commit.finished = state.is_final();
            let twin = StatusUpdate {
                repo: route.clone(),
                status: CommitStatus {
                    sha: u.status.sha.clone(),
                    check: self.environment.clone(),
                    state,
                    description,
                    target_url: u.status.target_url.clone(),
                    summary: None,
                    git_ref: branch(deploy).or(self.git_branch.as_deref()).map(str::to_string),
                },
                deploy: None,
            };
            // One deployment per commit and batch: the last word in it counts.
            twins.retain(|t| t.status.sha != twin.status.sha || t.repo != twin.repo);
            twins.push(twin);
        }
        updates.extend(twins);
    }
}

impl Parts {
    fn of(&mut self, repo: &RepoId, sha: &Sha) -> &mut Commit {
        let key = (repo.clone(), sha.clone());
        if !self.by_commit.contains_key(&key) {
            if self.order.len() >= KEPT
                && let Some(old) = self.order.pop_front()
            {
                self.by_commit.remove(&old);
            }
            self.order.push_back(key.clone());
        }
        self.by_commit.entry(key).or_default()
    }
}

/// Records what `deploy` says; whether a part that had reported before now runs again.
fn record(on: &mut Vec<Part>, deploy: &Deploy, description: &str) -> bool {
    let name = match deploy {
        Deploy::Part { part, .. } | Deploy::Rollout { part, .. } => part,
    };
    let at = on.iter().position(|p| &p.part == name);
    // The part spoken of moves to the end: among parts of one weight the newest
    // word names the deployment.
    let mut p = match at {
        Some(i) => on.remove(i),
        None => Part {
            part: name.clone(),
            label: String::new(),
            state: State::Succeeded,
            awaits_rollout: true,
            rollout: None,
            description: String::new(),
        },
    };
    match deploy {
        Deploy::Part {
            label,
            state,
            awaits_rollout,
            ..
        } => {
            p.label.clone_from(label);
            p.state = *state;
            p.awaits_rollout = *awaits_rollout;
            // A new sync of the commit: its rollout is checked again.
            p.rollout = None;
        }
        Deploy::Rollout { state, .. } => {
            if p.label.is_empty() {
                p.label = "fluxd".into();
            }
            p.rollout = Some(*state);
        }
    }
    // A sync that failed keeps its own words, whatever its rollout says.
    if p.awaits_rollout || matches!(deploy, Deploy::Part { .. }) {
        p.description = description.to_string();
    }
    let rerun = at.is_some() && p.state() == State::Pending;
    on.push(p);
    rerun
}

/// The branch the event names, if it names one.
fn branch(deploy: &Deploy) -> Option<&str> {
    match deploy {
        Deploy::Part { git_ref, .. } => git_ref.as_deref(),
        Deploy::Rollout { .. } => None,
    }
}

/// The deployment's state, and its description: the deciding part's, named when
/// several parts deploy the commit.
fn fold(on: &[Part]) -> (State, String) {
    let Some(decider) = on.iter().rev().max_by_key(|p| weight(p.state())) else {
        return (State::Pending, String::new());
    };
    let description = if on.len() > 1 {
        format!("{}: {}", decider.label, decider.description)
    } else {
        decider.description.clone()
    };
    (decider.state(), description)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "github.com/o/r";

    fn sha(c: char) -> Sha {
        Sha::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn update(c: char, check: &str, state: State, description: &str, deploy: Option<Deploy>) -> StatusUpdate {
        StatusUpdate {
            repo: REPO.into(),
            status: CommitStatus {
                sha: sha(c),
                check: Check::new(check),
                state,
                description: description.into(),
                target_url: Some("https://ci.example/log".into()),
                summary: Some("## detail".into()),
                git_ref: None,
            },
            deploy,
        }
    }

    fn object(c: char, name: &str, state: State, description: &str) -> StatusUpdate {
        let check = format!("flux-status/prod/kustomization/flux-system/{name}");
        let deploy = Deploy::Part {
            part: Check::new(check.as_str()),
            label: format!("Kustomization flux-system/{name}"),
            state,
            awaits_rollout: false,
            git_ref: Some("main".into()),
        };
        update(c, &check, state, description, Some(deploy))
    }

    fn sync(c: char, state: State, awaits_rollout: bool) -> StatusUpdate {
        let check = "flux-status/prod/sync";
        let deploy = Deploy::Part {
            part: Check::new(check),
            label: "fluxd".into(),
            state,
            awaits_rollout,
            git_ref: None,
        };
        update(c, check, state, &format!("sync {state}"), Some(deploy))
    }

    fn rollout(c: char, state: State) -> StatusUpdate {
        let deploy = Deploy::Rollout {
            part: Check::new("flux-status/prod/sync"),
            state,
        };
        update(
            c,
            "flux-status/prod/workload",
            state,
            &format!("rollout {state}"),
            Some(deploy),
        )
    }

    fn deployments() -> Deployments {
        Deployments::new("production", Some("master".into()), [RepoId::from(REPO)])
    }

    /// The deployment `u` adds: (environment, state, description, ref).
    fn twin(d: &Deployments, u: StatusUpdate) -> Option<(String, State, String, Option<String>)> {
        let mut batch = vec![u];
        d.add(&mut batch);
        assert!(batch.len() <= 2, "{batch:?}");
        let t = batch.get(1)?;
        assert_eq!(t.repo.as_ref(), "github.com/o/r#deployments");
        assert_eq!(t.status.summary, None);
        assert_eq!(t.status.target_url.as_deref(), Some("https://ci.example/log"));
        Some((
            t.status.check.to_string(),
            t.status.state,
            t.status.description.clone(),
            t.status.git_ref.clone(),
        ))
    }

    fn state(d: &Deployments, u: StatusUpdate) -> State {
        twin(d, u).expect("a deployment").1
    }

    #[test]
    fn one_object_is_its_own_deployment_with_its_branch() {
        let d = deployments();
        let t = twin(&d, object('a', "apps", State::Pending, "Progressing")).unwrap();
        assert_eq!(
            t,
            (
                "production".into(),
                State::Pending,
                "Progressing".into(),
                Some("main".into())
            )
        );
        assert_eq!(
            state(&d, object('a', "apps", State::Succeeded, "ok")),
            State::Succeeded
        );
    }

    #[test]
    fn a_failed_object_fails_the_deployment_until_it_recovers() {
        let d = deployments();
        state(&d, object('a', "infra", State::Succeeded, "ok"));
        let t = twin(&d, object('a', "apps", State::Failed, "Health check failed")).unwrap();
        assert_eq!(t.1, State::Failed);
        assert_eq!(t.2, "Kustomization flux-system/apps: Health check failed");
        // Another object's success does not hide the failure.
        assert_eq!(
            state(&d, object('a', "infra", State::Succeeded, "ok again")),
            State::Failed
        );
        assert_eq!(
            state(&d, object('a', "apps", State::Pending, "retrying")),
            State::Pending
        );
        assert_eq!(
            state(&d, object('a', "apps", State::Succeeded, "ok")),
            State::Succeeded
        );
    }

    #[test]
    fn a_running_object_keeps_the_deployment_in_progress() {
        let d = deployments();
        state(&d, object('a', "infra", State::Pending, "Progressing"));
        state(&d, object('a', "apps", State::Pending, "Progressing"));
        assert_eq!(
            state(&d, object('a', "infra", State::Succeeded, "ok")),
            State::Pending
        );
        assert_eq!(
            state(&d, object('a', "apps", State::Succeeded, "ok")),
            State::Succeeded
        );
        // Commits are apart.
        assert_eq!(
            state(&d, object('b', "apps", State::Pending, "Progressing")),
            State::Pending
        );
    }

    #[test]
    fn only_a_part_that_runs_again_reopens_a_finished_deployment() {
        let d = deployments();
        state(&d, object('a', "infra", State::Succeeded, "ok"));
        // apps waited for infra: it starts late, and the deployment stays as it is
        // until apps finishes.
        assert_eq!(twin(&d, object('a', "apps", State::Pending, "Progressing")), None);
        assert_eq!(
            twin(&d, object('a', "infra", State::Succeeded, "ok")),
            None,
            "apps still runs"
        );
        assert_eq!(
            state(&d, object('a', "apps", State::Failed, "broken")),
            State::Failed
        );
        // apps reconciled anew: the deploy runs again.
        assert_eq!(
            state(&d, object('a', "apps", State::Pending, "Progressing")),
            State::Pending
        );
        assert_eq!(
            state(&d, object('a', "apps", State::Succeeded, "ok")),
            State::Succeeded
        );
    }

    #[test]
    fn a_fluxd_sync_waits_for_its_rollout_when_workloads_are_checked() {
        let d = deployments();
        let t = twin(&d, sync('a', State::Succeeded, true)).unwrap();
        assert_eq!((t.1, t.3.as_deref()), (State::Pending, Some("master")));
        assert_eq!(state(&d, rollout('a', State::Pending)), State::Pending);
        let t = twin(&d, rollout('a', State::Succeeded)).unwrap();
        assert_eq!((t.1, t.2.as_str()), (State::Succeeded, "rollout succeeded"));
        // A re-sync of the same commit checks its rollout again.
        assert_eq!(state(&d, sync('a', State::Succeeded, true)), State::Pending);
        assert_eq!(state(&d, rollout('a', State::Failed)), State::Failed);
    }

    #[test]
    fn a_failed_fluxd_sync_stays_failed_whatever_its_rollout_says() {
        let d = deployments();
        assert_eq!(state(&d, sync('a', State::Failed, false)), State::Failed);
        let t = twin(&d, rollout('a', State::Succeeded)).unwrap();
        assert_eq!((t.1, t.2.as_str()), (State::Failed, "sync failed"));
    }

    #[test]
    fn without_workload_checks_a_sync_decides() {
        let d = deployments();
        assert_eq!(state(&d, sync('a', State::Succeeded, false)), State::Succeeded);
    }

    #[test]
    fn a_rollout_after_a_restart_decides_on_its_own() {
        let d = deployments();
        assert_eq!(state(&d, rollout('a', State::Succeeded)), State::Succeeded);
        assert_eq!(state(&d, rollout('b', State::Canceled)), State::Canceled);
    }

    #[test]
    fn statuses_that_say_nothing_of_a_deployment_add_none() {
        let d = deployments();
        assert_eq!(
            twin(&d, update('a', "c", State::Succeeded, "older commit", None)),
            None
        );
        let mut other = object('a', "apps", State::Succeeded, "ok");
        other.repo = "gitlab.com/other/repo".into();
        assert_eq!(twin(&d, other), None);
    }

    #[test]
    fn one_deployment_per_commit_in_a_batch() {
        let d = deployments();
        let mut batch = vec![
            sync('a', State::Succeeded, true),
            rollout('a', State::Succeeded),
            rollout('b', State::Failed),
        ];
        d.add(&mut batch);
        let twins: Vec<(char, State)> = batch[3..]
            .iter()
            .map(|t| (t.status.sha.as_str().chars().next().unwrap(), t.status.state))
            .collect();
        assert_eq!(twins, vec![('a', State::Succeeded), ('b', State::Failed)]);
    }

    #[test]
    fn the_oldest_commits_are_forgotten() {
        let d = deployments();
        state(&d, object('a', "apps", State::Failed, "broken"));
        for i in 0..KEPT {
            let s = Sha::parse(&format!("{i:040x}")).unwrap();
            let mut u = object('b', "apps", State::Succeeded, "ok");
            u.status.sha = s;
            d.add(&mut vec![u]);
        }
        let parts = d.parts.lock().unwrap();
        assert_eq!(parts.by_commit.len(), KEPT);
        assert!(!parts.by_commit.contains_key(&(REPO.into(), sha('a'))));
    }
}
