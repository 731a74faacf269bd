//! A notifier that writes nothing and logs each status it would write.

use crate::{CommitStatus, Notifier, NotifyError, text};

/// GitHub's limit is the tightest of the providers; showing the text cut to it tells a
/// dry-run user what the PR view would show.
const DESCRIPTION_LIMIT: usize = 140;

pub struct DryRun {
    repo: String,
}

impl DryRun {
    pub fn new(repo: impl Into<String>) -> Self {
        DryRun { repo: repo.into() }
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

    async fn set_status(&self, status: &CommitStatus) -> Result<(), NotifyError> {
        tracing::info!(
            repo = %self.repo,
            sha = %status.sha,
            check = %status.check,
            state = %status.state,
            description = %text::one_line_truncated(&status.description, DESCRIPTION_LIMIT),
            target_url = status.target_url.as_deref().unwrap_or(""),
            "dry run: would write commit status"
        );
        Ok(())
    }
}
