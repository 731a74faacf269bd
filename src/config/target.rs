//! The target section, shared by the daemon and the CLI: where statuses live and how
//! to reach them. Every provider-specific part comes from [`notifiers::PROVIDERS`].

use super::Problems;
use super::credentials::{CredentialArgs, Credentials};
use super::usage::parse_duration;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use notifiers::http::HttpConfig;
use notifiers::{Credential, GitUrl, Provider};
use std::path::PathBuf;
use std::time::Duration;

/// `--provider`: a provider by name or alias, or detection by the URL's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderChoice {
    Auto,
    Named(Provider),
}

impl std::str::FromStr for ProviderChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ProviderChoice::Auto);
        }
        Provider::named(s).map(ProviderChoice::Named).ok_or_else(|| {
            format!(
                "unknown provider {:?} (auto, {})",
                s.to_ascii_lowercase(),
                Provider::names()
            )
        })
    }
}

/// `--provider`'s values for clap: `auto` and each provider with its aliases, so
/// `--help` lists them and a wrong one gets a suggestion.
fn provider_parser() -> impl TypedValueParser<Value = ProviderChoice> {
    let hosts: Vec<&str> = Provider::all()
        .flat_map(|p| p.spec().hosts.iter().copied())
        .collect();
    let values = std::iter::once(
        PossibleValue::new("auto").help(format!("by the git URL's host: {}", hosts.join(", "))),
    )
    .chain(Provider::all().map(|p| {
        let s = p.spec();
        PossibleValue::new(s.name)
            .help(s.title)
            .aliases(s.aliases.iter().copied())
    }));
    PossibleValuesParser::new(values).map(|name| name.parse().unwrap_or(ProviderChoice::Auto))
}

fn api_url_help() -> String {
    let defaults: Vec<&str> = Provider::all().map(|p| p.spec().api_url_help).collect();
    format!(
        "Provider API base [default: from --git-url: {}]",
        defaults.join("; ")
    )
}

/// Where statuses live and how to reach them: shared by the daemon and the CLI.
#[derive(clap::Args)]
pub struct TargetArgs {
    /// The git repository Flux syncs from, as given to Flux (https, ssh or scp form).
    /// Any user info in it (a token) is never printed.
    #[arg(long, env = "FLUX_STATUS_GIT_URL", hide_env_values = true)]
    pub git_url: Option<String>,
    /// Which provider hosts the repository.
    #[arg(long, env = "FLUX_STATUS_PROVIDER", default_value = "auto", ignore_case = true,
          value_parser = provider_parser())]
    pub provider: ProviderChoice,
    #[arg(long, env = "FLUX_STATUS_API_URL", help = api_url_help())]
    pub api_url: Option<String>,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// Timeout for one provider request.
    #[arg(long, env = "FLUX_STATUS_HTTP_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub http_timeout: Duration,
    /// PEM bundle of extra CAs for self-hosted providers.
    #[arg(long, env = "FLUX_STATUS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// On GitHub, write each check as a check run (updated in place, with a Markdown
    /// summary) instead of a commit status. Writing needs GitHub App authentication.
    #[arg(long, env = "FLUX_STATUS_GITHUB_CHECKS")]
    pub github_checks: bool,
}

/// Where statuses go.
pub enum Target {
    DryRun {
        git_url: GitUrl,
        provider: Option<Provider>,
    },
    Provider {
        provider: Provider,
        git_url: GitUrl,
        api_url: Option<String>,
        credential: Credential,
    },
}

impl Target {
    pub fn git_url(&self) -> &GitUrl {
        match self {
            Target::DryRun { git_url, .. } | Target::Provider { git_url, .. } => git_url,
        }
    }

    /// The repository, the same for every form of its URL: two targets with one key
    /// would write the same statuses twice.
    pub fn repo_key(&self) -> String {
        let url = self.git_url();
        let provider = match self {
            Target::DryRun { provider, .. } => *provider,
            Target::Provider { provider, .. } => Some(*provider),
        };
        provider
            .and_then(|p| p.repo_key(url).ok())
            .unwrap_or_else(|| format!("{}/{}", url.host, url.repo_segments().join("/")).to_ascii_lowercase())
    }
}

/// The target section validated: the HTTP settings, every provider's credential, and
/// `--git-url`'s repository when given.
pub struct TargetSection {
    pub http: HttpConfig,
    /// `--github-checks`.
    pub github_checks: bool,
    pub credentials: Credentials,
    pub git_url: Option<Target>,
}

impl TargetArgs {
    /// Checks every flag of the section; problems go to `problems`, so a caller can
    /// report them together with its own.
    pub fn validate(self, dry_run: bool, problems: &mut Problems) -> TargetSection {
        if self.http_timeout.is_zero() {
            problems.push("--http-timeout", "must be above zero");
        }
        let http = HttpConfig {
            timeout: self.http_timeout,
            ca_file: self.ca_file.clone(),
            ..HttpConfig::default()
        };
        check_api_url("--api-url", self.api_url.as_deref(), problems);
        let credentials = self.credentials.load(problems);
        let git_url = self.git_url.as_deref().and_then(|raw| {
            let repo = Repo {
                at: "--git-url",
                raw_url: raw,
                choice: self.provider,
                api_url: self.api_url.clone(),
            };
            repo.resolve(|p| credentials.get(p), dry_run, problems)
        });
        TargetSection {
            http,
            github_checks: self.github_checks,
            credentials,
            git_url,
        }
    }
}

/// Whether `target` is written as GitHub check runs under `--github-checks`.
pub fn writes_check_runs(github_checks: bool, target: &Target) -> bool {
    github_checks
        && matches!(target, Target::Provider { provider, .. } if provider.spec().name == notifiers::github::NAME)
}

/// `--github-checks` with a GitHub repository that has a token, not an App: GitHub
/// lets only Apps create check runs, so every write would be refused.
pub fn check_runs_need_an_app(github_checks: bool, at: &str, target: &Target, problems: &mut Problems) {
    if writes_check_runs(github_checks, target)
        && matches!(
            target,
            Target::Provider {
                credential: Credential::Token(_),
                ..
            }
        )
    {
        problems.push(
            at,
            "--github-checks writes check runs, which GitHub lets only GitHub Apps create: \
             authenticate as an App (--github-app-id and --github-app-private-key-file) instead of a token",
        );
    }
}

pub fn check_api_url(at: &str, url: Option<&str>, problems: &mut Problems) {
    if let Some(url) = url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        problems.push(at, format!("{url:?} must start with https:// or http://"));
    }
}

/// One repository as given: by `--git-url` or a `--config` entry.
pub struct Repo<'a> {
    /// Where it was given, for messages: `--git-url`, `--config repos[2]`.
    pub at: &'a str,
    pub raw_url: &'a str,
    pub choice: ProviderChoice,
    pub api_url: Option<String>,
}

impl Repo<'_> {
    /// URL, provider (chosen or detected), API base and credential.
    pub fn resolve(
        self,
        credential_for: impl FnOnce(Provider) -> Option<Credential>,
        dry_run: bool,
        problems: &mut Problems,
    ) -> Option<Target> {
        let at = self.at;
        let git_url = GitUrl::parse(self.raw_url)
            .map_err(|e| problems.push(at, e.to_string()))
            .ok()?;
        let provider = match self.choice {
            ProviderChoice::Auto => Provider::detect(&git_url.host),
            ProviderChoice::Named(p) => Some(p),
        };
        if dry_run {
            return Some(Target::DryRun { git_url, provider });
        }
        let Some(provider) = provider else {
            problems.push(
                at,
                format!(
                    "cannot tell which provider hosts {:?}; give the provider ({})",
                    git_url.host,
                    Provider::names()
                ),
            );
            return None;
        };
        if let Err(e) = provider.check_url(&git_url) {
            problems.push(at, e.to_string());
        }
        let Some(credential) = credential_for(provider) else {
            problems.push(
                at,
                format!(
                    "{provider} needs a credential: set {}",
                    provider.credential_flag()
                ),
            );
            return None;
        };
        Some(Target::Provider {
            provider,
            git_url,
            api_url: self.api_url,
            credential,
        })
    }
}
