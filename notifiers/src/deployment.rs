//! Deployments to environments (`--deployments`): what a provider's deployments
//! notifier is given, and what it promises.
//!
//! A deployments notifier is a [`Notifier`](crate::Notifier) whose statuses are
//! deployments: each [`CommitStatus`](crate::CommitStatus) is the state of the deploy
//! of `sha` to the environment its `check` names.
//! - `state`: [`State::Pending`](crate::State) while the sync or rollout runs, then
//!   succeeded or failed; canceled when a newer deploy superseded it.
//! - `description`: one line, cut by the notifier to the provider's limit.
//! - `target_url`: where the deploy's log is (GitHub's `log_url`).
//! - `git_ref`: the branch the commit came from (GitLab's `ref`); the SHA when unknown.
//!
//! One commit and environment is one deployment object: a write returns its id as the
//! [`Handle`](crate::Handle), and the next write for the same commit and environment
//! updates it. With no handle (a crash after the provider made the deployment but
//! before its id was kept), the notifier looks for the deployment of that commit in
//! that environment before it makes one. Where the provider refuses to take a
//! finished deployment back to running (GitLab), a new deploy of the same commit
//! makes a new deployment.
//!
//! `list_statuses` reads back one status per environment the commit was deployed to:
//! its `check` is the environment, its state the deployment's latest.

/// What `--environment-url` and `--production` say of every environment flux-status
/// deploys to. The environment's name is per status (its `check`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// Where the environment is reached (`--environment-url`).
    pub url: Option<String>,
    /// A production environment (`--production`); GitHub marks it so.
    pub production: bool,
}
