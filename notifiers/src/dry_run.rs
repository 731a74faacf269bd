//! A notifier that writes nothing and logs each status it would write.

use crate::deployment::Environment;
use crate::{CommitStatus, Handle, Notifier, NotifyError, Provider, ReadStatus, Receipt, Sha, text};

pub struct DryRun {
    repo: String,
    /// Cut as the provider would, so the log shows what the PR view would show;
    /// the tightest of all when the provider is unknown.
    description_limit: usize,
    /// Logs deployments to environments rather than commit statuses.
    deployments: Option<Environment>,
}

impl DryRun {
    pub fn new(repo: impl Into<String>, provider: Option<Provider>) -> Self {
        DryRun {
            repo: repo.into(),
            description_limit: provider
                .map_or_else(Provider::tightest_description_limit, Provider::description_limit),
            deployments: None,
        }
    }

    /// A dry run of `--deployments`: each status is a deployment to the environment
    /// its check names.
    pub fn deployments(
        repo: impl Into<String>,
        provider: Option<Provider>,
        environment: Environment,
    ) -> Self {
        DryRun {
            deployments: Some(environment),
            ..DryRun::new(repo, provider)
        }
    }
}

#[async_trait::async_trait]
impl Notifier for DryRun {
    fn name(&self) -> &'static str {
        "dry-run"
    }

    fn repo(&self) -> &str {
        &self.repo
    }

    async fn write(&self, status: &CommitStatus, _: Option<&Handle>) -> Result<Receipt, NotifyError> {
        if let Some(env) = &self.deployments {
            tracing::info!(
                repo = %self.repo,
                sha = %status.sha,
                environment = %status.check,
                state = %status.state,
                git_ref = status.git_ref.as_deref().unwrap_or(status.sha.as_str()),
                description = %text::one_line_truncated(&status.description, self.description_limit),
                environment_url = env.url.as_deref().unwrap_or(""),
                production = env.production,
                log_url = status.target_url.as_deref().unwrap_or(""),
                "dry run: would write deployment"
            );
            return Ok(Receipt::default());
        }
        tracing::info!(
            repo = %self.repo,
            sha = %status.sha,
            check = %status.check,
            state = %status.state,
            description = %text::one_line_truncated(&status.description, self.description_limit),
            target_url = status.target_url.as_deref().unwrap_or(""),
            "dry run: would write commit status"
        );
        Ok(Receipt::default())
    }

    async fn check_credentials(&self) -> Result<(), NotifyError> {
        Ok(())
    }

    /// A dry run writes nothing, so it has nothing to read back.
    async fn list_statuses(&self, _sha: &Sha) -> Result<Vec<ReadStatus>, NotifyError> {
        Ok(Vec::new())
    }
}
