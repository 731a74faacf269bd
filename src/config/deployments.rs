//! The deployments section: each deploy also as a deployment to an environment
//! (GitHub deployments, GitLab environments).

use super::Problems;
use notifiers::deployment::Environment;

#[derive(clap::Args)]
pub struct DeploymentArgs {
    /// Also record each deploy as a deployment of its commit to an environment: GitHub
    /// deployments (the PR's "Deployments"), GitLab environments.
    #[arg(long, env = "FLUX_STATUS_DEPLOYMENTS")]
    pub deployments: bool,

    /// The environment deployments go to [default: --instance].
    #[arg(long, env = "FLUX_STATUS_ENVIRONMENT")]
    pub environment: Option<String>,

    /// Where the environment is reached, shown with each deployment on GitHub.
    #[arg(long, env = "FLUX_STATUS_ENVIRONMENT_URL")]
    pub environment_url: Option<String>,

    /// The environment is production (GitHub marks it so).
    #[arg(long, env = "FLUX_STATUS_PRODUCTION")]
    pub production: bool,

    /// The branch fluxd syncs (its --git-branch): a Flux v1 deployment's ref on GitLab.
    /// Flux v2 events name their branch.
    #[arg(long, env = "FLUX_STATUS_GIT_BRANCH")]
    pub git_branch: Option<String>,
}

/// `--deployments` and what it says of the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentConfig {
    pub environment: String,
    pub options: Environment,
    pub git_branch: Option<String>,
}

/// GitHub's and GitLab's bound on an environment's name.
const MAX_ENVIRONMENT: usize = 255;

impl DeploymentArgs {
    /// `None` without `--deployments`; the flags that need it are refused without it.
    pub fn validate(self, instance: &str, problems: &mut Problems) -> Option<DeploymentConfig> {
        if !self.deployments {
            let given = [
                ("--environment", self.environment.is_some()),
                ("--environment-url", self.environment_url.is_some()),
                ("--production", self.production),
                ("--git-branch", self.git_branch.is_some()),
            ];
            for (flag, _) in given.into_iter().filter(|(_, set)| *set) {
                problems.push(flag, "has no effect without --deployments");
            }
            return None;
        }
        let environment = self.environment.unwrap_or_else(|| instance.to_string());
        let environment = environment.trim().to_string();
        if environment.is_empty()
            || environment.chars().count() > MAX_ENVIRONMENT
            || environment.chars().any(char::is_control)
        {
            problems.push(
                "--environment",
                format!("must be 1 to {MAX_ENVIRONMENT} characters, with no control characters"),
            );
        }
        if let Some(url) = &self.environment_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            problems.push(
                "--environment-url",
                format!("{url:?} must start with https:// or http://"),
            );
        }
        let git_branch = self.git_branch.map(|b| b.trim().to_string());
        if git_branch
            .as_ref()
            .is_some_and(|b| b.is_empty() || b.chars().any(char::is_whitespace))
        {
            problems.push("--git-branch", "must be a branch name");
        }
        Some(DeploymentConfig {
            environment,
            options: Environment {
                url: self.environment_url,
                production: self.production,
            },
            git_branch,
        })
    }
}
