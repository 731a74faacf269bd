//! What each configured repository is written through: its status (or check-run)
//! notifier and, with `--deployments`, its deployments notifier. Both use one
//! credential source, so a GitHub App's installation token is minted and refreshed
//! once for the repository.

use crate::config::Target;
use crate::config::deployments::DeploymentConfig;
use crate::update::RepoId;
use notifiers::provider::Connect;
use notifiers::{GitUrl, Notifier};
use std::sync::Arc;
use tracing::warn;

/// `host/path` of a repository, the form used in logs and as its [`RepoId`].
pub fn repo_id(url: &GitUrl) -> RepoId {
    format!("{}/{}", url.host, url.repo_segments().join("/")).into()
}

pub struct Writers {
    pub repo: RepoId,
    pub statuses: Arc<dyn Notifier>,
    /// `None` without `--deployments`, or on a provider without deployments.
    pub deployments: Option<Arc<dyn Notifier>>,
}

/// The notifiers for `target`. With `github_checks`, a GitHub repository's statuses
/// are check runs. A provider without deployments gets none, with a warning rather
/// than a refusal, so that one such repository does not keep deployments from the
/// others.
pub fn build(
    target: &Target,
    client: &reqwest::Client,
    github_checks: bool,
    deployments: Option<&DeploymentConfig>,
) -> Result<Writers, String> {
    let repo = repo_id(target.git_url());
    match target {
        Target::DryRun { provider, .. } => Ok(Writers {
            statuses: Arc::new(notifiers::dry_run::DryRun::new(repo.to_string(), *provider)),
            deployments: deployments.map(|d| -> Arc<dyn Notifier> {
                Arc::new(notifiers::dry_run::DryRun::deployments(
                    repo.to_string(),
                    *provider,
                    d.options.clone(),
                ))
            }),
            repo,
        }),
        Target::Provider {
            provider,
            git_url,
            api_url,
            credential,
        } => {
            let api_url = api_url.as_deref();
            let source = provider
                .credential_source(client, git_url, api_url, credential.clone())
                .map_err(|e| e.to_string())?;
            let connect = || Connect {
                client: client.clone(),
                git_url,
                api_url,
                credential: source.clone(),
            };
            let statuses = if crate::config::target::writes_check_runs(github_checks, target) {
                let app_id = notifiers::github::checks::app_id(credential);
                notifiers::github::checks::connect(
                    client.clone(),
                    git_url,
                    api_url,
                    source.clone(),
                    app_id,
                    None,
                )
            } else {
                provider.connect(connect())
            }
            .map_err(|e| e.to_string())?;
            let deployments = match deployments {
                Some(d) if provider.has_deployments() => Some(
                    provider
                        .connect_deployments(connect(), &d.options)
                        .map_err(|e| e.to_string())?,
                ),
                Some(_) => {
                    warn!(provider = provider.as_str(), repo = %repo,
                        "--deployments: this provider has no deployments flux-status writes; its repository gets statuses only");
                    None
                }
                None => None,
            };
            Ok(Writers {
                repo,
                statuses,
                deployments,
            })
        }
    }
}
