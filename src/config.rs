//! Daemon flags (each also from an environment variable), validated into a typed
//! [`Config`] that reports every problem at once.
//!
//! The original Go flux-status's flags still parse, so its Helm values keep working.

use crate::credentials::{SecretSource, load_or_report};
use crate::delivery::DeliveryConfig;
use crate::delivery::limiter::Limits;
use crate::repos::ObjectPattern;
use clap::{ArgAction, Parser, ValueEnum};
use notifiers::http::HttpConfig;
use notifiers::{GitUrl, Provider};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderChoice {
    /// By the git URL's host: github.com, gitlab.com, dev.azure.com / *.visualstudio.com.
    Auto,
    Github,
    Gitlab,
    AzureDevops,
}

/// Where statuses live and how to reach them: shared by the daemon and the CLI.
#[derive(clap::Args)]
pub struct TargetArgs {
    /// The git repository Flux syncs from, as given to Flux (https, ssh or scp form).
    #[arg(long, env = "FLUX_STATUS_GIT_URL")]
    pub git_url: Option<String>,
    /// Which provider hosts the repository.
    #[arg(long, env = "FLUX_STATUS_PROVIDER", value_enum, default_value = "auto")]
    pub provider: ProviderChoice,
    /// Provider API base [default: from --git-url: https://api.github.com or https://<host>/api/v3;
    /// GitLab https://<host>; Azure DevOps the organization or collection URL].
    #[arg(long, env = "FLUX_STATUS_API_URL")]
    pub api_url: Option<String>,
    /// GitHub token. Prefer GITHUB_TOKEN or --github-token-file: a flag shows in `ps`.
    #[arg(long, env = "GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<String>,
    /// File holding the GitHub token (e.g. a mounted Secret).
    #[arg(long, env = "FLUX_STATUS_GITHUB_TOKEN_FILE")]
    pub github_token_file: Option<PathBuf>,
    /// GitLab token. Prefer GITLAB_TOKEN or --gitlab-token-file.
    #[arg(long, env = "GITLAB_TOKEN", hide_env_values = true)]
    pub gitlab_token: Option<String>,
    /// File holding the GitLab token.
    #[arg(long, env = "FLUX_STATUS_GITLAB_TOKEN_FILE")]
    pub gitlab_token_file: Option<PathBuf>,
    /// Azure DevOps personal access token. Prefer AZDO_PAT or --azdo-pat-file.
    #[arg(long, env = "AZDO_PAT", hide_env_values = true)]
    pub azdo_pat: Option<String>,
    /// File holding the Azure DevOps personal access token.
    #[arg(long, env = "FLUX_STATUS_AZDO_PAT_FILE")]
    pub azdo_pat_file: Option<PathBuf>,
    /// Timeout for one provider request.
    #[arg(long, env = "FLUX_STATUS_HTTP_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub http_timeout: Duration,
    /// PEM bundle of extra CAs for self-hosted providers.
    #[arg(long, env = "FLUX_STATUS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// flux-status: writes Flux deploy results as commit statuses.
#[derive(Parser)]
#[command(name = "flux-status", version, about, max_term_width = 100)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Address for fluxd's websocket and events (and Flux v2 webhooks).
    #[arg(long, env = "FLUX_STATUS_LISTEN", default_value = "127.0.0.1:3000", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Address for /metrics, /healthz and /readyz; "off" to disable.
    #[arg(long, env = "FLUX_STATUS_OPS_LISTEN", default_value = "0.0.0.0:8080")]
    pub ops_listen: String,

    /// Name of this cluster or environment; part of every check name.
    #[arg(long, env = "FLUX_STATUS_INSTANCE", default_value = "default")]
    pub instance: String,

    /// Write nothing: log each status that would be written. Needs no token.
    #[arg(long, env = "FLUX_STATUS_DRY_RUN")]
    pub dry_run: bool,

    /// Token fluxd must present (fluxd --token): `Authorization: Scope-Probe token=<token>`.
    #[arg(long, env = "FLUX_STATUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the token fluxd must present.
    #[arg(long, env = "FLUX_STATUS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Directory for the durable outbox (pending updates and what was written).
    #[arg(long, env = "FLUX_STATUS_STATE_DIR", default_value = "/var/lib/flux-status")]
    pub state_dir: PathBuf,

    /// Keep the outbox in memory only: accepted updates are lost if the process dies.
    #[arg(long, env = "FLUX_STATUS_NO_PERSISTENCE")]
    pub no_persistence: bool,

    /// Client-side limit on status writes per minute [default: GitHub 80, GitLab and
    /// Azure DevOps 300]; 0 for none.
    #[arg(long, env = "FLUX_STATUS_WRITES_PER_MINUTE")]
    pub writes_per_minute: Option<u32>,

    /// Client-side limit on provider requests per hour [default: GitHub 5000, others none]; 0 for none.
    #[arg(long, env = "FLUX_STATUS_REQUESTS_PER_HOUR")]
    pub requests_per_hour: Option<u32>,

    /// Flux v2 `generic-hmac`: file holding the Provider's key; every event must then be
    /// signed (`X-Signature: sha256=<hex>`).
    #[arg(long, env = "FLUX_STATUS_HMAC_KEY_FILE")]
    pub hmac_key_file: Option<PathBuf>,

    /// Flux v2 check name; placeholders {instance} {cluster} {kind} {namespace} {name}.
    #[arg(long, env = "FLUX_STATUS_CHECK_TEMPLATE", default_value = crate::mapping::v2::DEFAULT_CHECK_TEMPLATE)]
    pub check_template: String,

    /// Allow listening beyond loopback with neither --token nor --hmac-key-file.
    #[arg(long, env = "FLUX_STATUS_INSECURE_ALLOW_UNAUTHENTICATED")]
    pub insecure_allow_unauthenticated: bool,

    /// YAML file mapping Flux objects to repositories and their providers (Flux v2);
    /// see the README. --git-url, if given, takes the objects no rule matches.
    #[arg(long, env = "FLUX_STATUS_CONFIG")]
    pub config: Option<PathBuf>,

    /// Also status up to N older commits of a sync's range (never on the initial sync).
    #[arg(long, env = "FLUX_STATUS_STATUS_RANGE", default_value_t = 0)]
    pub status_range: usize,

    /// URL every status links to (e.g. a dashboard).
    #[arg(long, env = "FLUX_STATUS_TARGET_URL")]
    pub target_url: Option<String>,

    /// Largest event body accepted; larger ones get 413. fluxd's initial sync lists the
    /// whole history, so this is generous.
    #[arg(long, env = "FLUX_STATUS_MAX_EVENT_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_event_bytes: usize,

    /// Checks that may wait for delivery at once; beyond it events get 503 and fluxd re-sends.
    #[arg(long, env = "FLUX_STATUS_QUEUE_CAPACITY", default_value_t = 10_000)]
    pub queue_capacity: usize,

    /// Provider writes under way at once.
    #[arg(long, env = "FLUX_STATUS_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,

    /// Threads that serve events and write statuses (fsyncs have a thread of their
    /// own). One accepts tens of thousands of events a second; each more costs
    /// cross-thread wake-ups per event.
    #[arg(long, env = "FLUX_STATUS_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// First retry delay after a failed write; doubles per attempt.
    #[arg(long, env = "FLUX_STATUS_RETRY_INITIAL", default_value = "1s", value_parser = parse_duration)]
    pub retry_initial: Duration,

    /// Longest delay between retries.
    #[arg(long, env = "FLUX_STATUS_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub retry_max: Duration,

    /// How long a provider may still apply a write whose answer we never got (our
    /// timeout, a reset, a 5xx). That check is not written again before then, and then
    /// only if reading back shows another state on top. [default: 3 × --http-timeout]
    #[arg(long, env = "FLUX_STATUS_SETTLE_AFTER", value_parser = parse_duration)]
    pub settle_after: Option<Duration>,

    /// On SIGTERM, how long to keep delivering before exiting.
    #[arg(long, env = "FLUX_STATUS_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    #[arg(long, env = "FLUX_STATUS_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// error, warn, info, debug or trace; RUST_LOG-style directives also work.
    #[arg(long, env = "FLUX_STATUS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Same as --log-level=debug (flag of the original flux-status).
    #[arg(long, env = "FLUX_STATUS_DEBUG", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = ArgAction::Set, default_value = "false")]
    pub debug: bool,

    /// fluxd's HTTP API, for workload polling when no websocket is connected.
    #[arg(long, env = "FLUX_STATUS_FLUX", default_value = "localhost:3030")]
    pub flux: String,

    /// Poll workload health after each sync (flag of the original flux-status).
    #[arg(long, env = "FLUX_STATUS_POLL_WORKLOADS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = ArgAction::Set, default_value = "true")]
    pub poll_workloads: bool,

    /// Time between workload polls; bare numbers are seconds.
    #[arg(long = "poll-interval", alias = "poll-intervall", env = "FLUX_STATUS_POLL_INTERVAL",
          default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Give up waiting for workloads after this long; bare numbers are seconds; 0 waits
    /// until they settle or a newer sync takes over.
    #[arg(long, env = "FLUX_STATUS_POLL_TIMEOUT", default_value = "360s", value_parser = parse_duration)]
    pub poll_timeout: Duration,

    /// How long one workload list request to fluxd may take (RPC or HTTP); fluxd's own
    /// --rpc-timeout is 10s.
    #[arg(long, env = "FLUX_STATUS_FLUX_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub flux_timeout: Duration,
}

/// `host:port`, or Go's `:port` (all interfaces) as the original flux-status took it.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("invalid address {s:?} (examples: 127.0.0.1:3000, 0.0.0.0:3000, :3000)"))
}

/// `20s`, `5m`, `1h`, `250ms`, `1m30s`, or a bare number of seconds (the original's flags).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let err = || format!("invalid duration {s:?} (examples: 20s, 5m, 1h, 250ms, 90)");
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(err()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
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
        credential: SecretString,
    },
}

pub struct Config {
    pub hmac_key: Option<secrecy::SecretBox<Vec<u8>>>,
    pub check_template: String,
    /// `None`: no persistence (`--no-persistence`).
    pub state_dir: Option<PathBuf>,
    pub listen: SocketAddr,
    pub ops_listen: Option<SocketAddr>,
    pub instance: String,
    /// `--git-url`: fluxd v1's repository, and Flux v2 objects no rule matches.
    pub fallback: Option<Target>,
    /// `--config` rules, in order.
    pub rules: Vec<(Target, Vec<ObjectPattern>)>,
    writes_per_minute: Option<u32>,
    requests_per_hour: Option<u32>,
    pub upstream_token: Option<SecretString>,
    pub status_range: usize,
    pub target_url: Option<String>,
    pub max_event_bytes: usize,
    pub delivery: DeliveryConfig,
    pub http: HttpConfig,
    pub shutdown_timeout: Duration,
    /// `None`: `--poll-workloads=false`.
    pub workloads: Option<WorkloadPolling>,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// Flux v1 workload polling after each sync.
#[derive(Debug, Clone)]
pub struct WorkloadPolling {
    /// `--flux`: fluxd's HTTP API, used when no websocket is connected.
    pub flux: String,
    pub interval: Duration,
    pub timeout: Option<Duration>,
    pub call_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// An instance becomes part of check names (`flux-status/<instance>/sync`, and the
/// Azure DevOps name `<instance>/sync`), so it may not hold a `/`.
pub fn validate_instance(raw: &str, errors: &mut Vec<String>) -> String {
    let instance = raw.trim().to_string();
    let valid = !instance.is_empty()
        && instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        errors.push(format!(
            "--instance {raw:?} must be letters, digits, '-', '_' or '.' (it becomes part of each check name)"
        ));
    }
    instance
}

impl TargetArgs {
    pub fn http_config(&self, errors: &mut Vec<String>) -> HttpConfig {
        if self.http_timeout.is_zero() {
            errors.push("--http-timeout must be above zero".into());
        }
        HttpConfig {
            timeout: self.http_timeout,
            ca_file: self.ca_file.clone(),
            ..HttpConfig::default()
        }
    }

    /// Each provider's credential as configured by flags, env and files.
    pub fn credentials(&mut self, errors: &mut Vec<String>) -> Credentials {
        Credentials {
            github: load_or_report(
                "GitHub token",
                SecretSource::new(
                    self.github_token.take(),
                    self.github_token_file.take(),
                    "--github-token",
                ),
                errors,
            ),
            gitlab: load_or_report(
                "GitLab token",
                SecretSource::new(
                    self.gitlab_token.take(),
                    self.gitlab_token_file.take(),
                    "--gitlab-token",
                ),
                errors,
            ),
            azdo: load_or_report(
                "Azure DevOps PAT",
                SecretSource::new(self.azdo_pat.take(), self.azdo_pat_file.take(), "--azdo-pat"),
                errors,
            ),
        }
    }

    /// The repository, its provider and that provider's own credential. Problems go
    /// to `errors`, so a caller can report them together with its own.
    pub fn resolve(mut self, dry_run: bool, errors: &mut Vec<String>) -> Option<Target> {
        check_api_url("--api-url", self.api_url.as_deref(), errors);
        let creds = self.credentials(errors);
        let Some(raw) = self.git_url.as_deref() else {
            errors.push("--git-url is required (the repository Flux syncs from)".into());
            return None;
        };
        resolve_target(
            "--git-url",
            raw,
            self.provider,
            self.api_url.clone(),
            |p| creds.get(p),
            dry_run,
            errors,
        )
    }
}

/// Credentials per provider; a repository always uses its own provider's.
#[derive(Clone, Default)]
pub struct Credentials {
    pub github: Option<SecretString>,
    pub gitlab: Option<SecretString>,
    pub azdo: Option<SecretString>,
}

impl Credentials {
    fn get(&self, p: Provider) -> Option<SecretString> {
        match p {
            Provider::GitHub => self.github.clone(),
            Provider::GitLab => self.gitlab.clone(),
            Provider::AzureDevOps => self.azdo.clone(),
        }
    }
}

fn check_api_url(what: &str, url: Option<&str>, errors: &mut Vec<String>) {
    if let Some(url) = url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        errors.push(format!("{what} {url:?} must start with https:// or http://"));
    }
}

/// One repository: URL, provider (chosen or detected), API base and credential.
/// `what` names the source in messages (`--git-url`, `--config repos[2]`).
fn resolve_target(
    what: &str,
    raw_url: &str,
    choice: ProviderChoice,
    api_url: Option<String>,
    credential_for: impl FnOnce(Provider) -> Option<SecretString>,
    dry_run: bool,
    errors: &mut Vec<String>,
) -> Option<Target> {
    let git_url = GitUrl::parse(raw_url)
        .map_err(|e| errors.push(format!("{what}: {e}")))
        .ok()?;
    let provider = match choice {
        ProviderChoice::Auto => Provider::detect(&git_url.host),
        ProviderChoice::Github => Some(Provider::GitHub),
        ProviderChoice::Gitlab => Some(Provider::GitLab),
        ProviderChoice::AzureDevops => Some(Provider::AzureDevOps),
    };
    if dry_run {
        return Some(Target::DryRun { git_url, provider });
    }
    let Some(provider) = provider else {
        errors.push(format!(
            "{what}: cannot tell which provider hosts {:?}; give the provider (github, gitlab or azure-devops)",
            git_url.host
        ));
        return None;
    };
    if let Err(e) = provider.check_url(&git_url) {
        errors.push(format!("{what}: {e}"));
    }
    let Some(credential) = credential_for(provider) else {
        errors.push(format!(
            "{what}: {provider} needs a credential: set {}",
            provider.credential_flag()
        ));
        return None;
    };
    Some(Target::Provider {
        provider,
        git_url,
        api_url,
        credential,
    })
}

impl Config {
    /// The client-side limits for a target: the flags, else the provider's defaults.
    pub fn limits(&self, target: &Target) -> Limits {
        let (default_writes, default_requests) = match target {
            Target::Provider {
                provider: Provider::GitHub,
                ..
            } => (Some(80), Some(5000)),
            Target::Provider { .. } => (Some(300), None),
            Target::DryRun { .. } => (None, None),
        };
        let limit = |given: Option<u32>, default: Option<u32>| match given {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        Limits {
            writes_per_minute: limit(self.writes_per_minute, default_writes),
            requests_per_hour: limit(self.requests_per_hour, default_requests),
        }
    }

    /// Every target, the `--git-url` one first.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.fallback.iter().chain(self.rules.iter().map(|(t, _)| t))
    }
}

impl Args {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();

        let instance = validate_instance(&self.instance, &mut errors);

        let ops_listen = match self.ops_listen.trim() {
            "" | "off" | "none" => None,
            s => match s.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(format!(
                        "--ops-listen {s:?} is not an address like 0.0.0.0:8080 (or \"off\")"
                    ));
                    None
                }
            },
        };

        let upstream_token = load_or_report(
            "fluxd token",
            SecretSource::new(self.token, self.token_file, "--token"),
            &mut errors,
        );
        if let Some(url) = &self.target_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            errors.push(format!(
                "--target-url {url:?} must start with https:// or http://"
            ));
        }
        // The key is used byte for byte, as notification-controller uses the Secret's
        // value: no trimming.
        let hmac_key = match &self.hmac_key_file {
            None => None,
            Some(path) => match std::fs::read(path) {
                Ok(k) if k.is_empty() => {
                    errors.push(format!("--hmac-key-file {} is empty", path.display()));
                    None
                }
                Ok(k) => Some(secrecy::SecretBox::new(Box::new(k))),
                Err(e) => {
                    errors.push(format!("--hmac-key-file {}: {e}", path.display()));
                    None
                }
            },
        };
        let authenticated = self.hmac_key_file.is_some() || upstream_token.is_some();
        if !self.listen.ip().is_loopback() && !authenticated && !self.insecure_allow_unauthenticated {
            errors.push(format!(
                "--listen {} is reachable beyond this host, and with neither --token nor --hmac-key-file \
                 anyone who can reach it could forge deploy statuses: set one, listen on 127.0.0.1, or pass \
                 --insecure-allow-unauthenticated",
                self.listen
            ));
        }
        if !self.check_template.contains("{name}") {
            errors.push("--check-template must contain {name} (one check per Flux object)".into());
        }
        let http = self.target.http_config(&mut errors);
        check_api_url("--api-url", self.target.api_url.as_deref(), &mut errors);
        let mut target_args = self.target;
        let creds = target_args.credentials(&mut errors);
        let fallback = target_args.git_url.as_deref().and_then(|raw| {
            let choice = target_args.provider;
            resolve_target(
                "--git-url",
                raw,
                choice,
                target_args.api_url.clone(),
                |p| creds.get(p),
                self.dry_run,
                &mut errors,
            )
        });
        let mut rules = Vec::new();
        if let Some(path) = &self.config {
            match crate::repos::load(path) {
                Err(e) => errors.push(e),
                Ok(file) => {
                    for (i, r) in file.repos.into_iter().enumerate() {
                        let what = format!("--config repos[{i}] ({})", r.git_url);
                        let choice = crate::repos::provider_choice(r.provider.as_deref())
                            .map_err(|e| errors.push(format!("{what}: {e}")))
                            .unwrap_or(ProviderChoice::Auto);
                        let own = match (&r.token_file, &r.token_env) {
                            (Some(_), Some(_)) => {
                                errors.push(format!("{what}: give tokenFile or tokenEnv, not both"));
                                None
                            }
                            (Some(f), None) => load_or_report(
                                "token",
                                SecretSource::new(None, Some(f.clone()), "tokenFile"),
                                &mut errors,
                            ),
                            (None, Some(var)) => match std::env::var(var) {
                                Ok(v) if !v.trim().is_empty() => {
                                    Some(SecretString::from(v.trim().to_string()))
                                }
                                _ => {
                                    errors.push(format!("{what}: environment variable {var} is not set"));
                                    None
                                }
                            },
                            (None, None) => None,
                        };
                        check_api_url(&format!("{what}: apiUrl"), r.api_url.as_deref(), &mut errors);
                        if r.objects.is_empty() {
                            errors.push(format!("{what}: objects must list at least one pattern"));
                        }
                        let target = resolve_target(
                            &what,
                            &r.git_url,
                            choice,
                            r.api_url.clone(),
                            |p| own.clone().or_else(|| creds.get(p)),
                            self.dry_run,
                            &mut errors,
                        );
                        if let Some(t) = target {
                            rules.push((t, r.objects));
                        }
                    }
                }
            }
        }
        if target_args.git_url.is_none() && self.config.is_none() {
            errors.push("--git-url (or --config with at least one repository) is required".into());
        }

        if self.queue_capacity == 0 {
            errors.push("--queue-capacity must be at least 1".into());
        }
        if self.concurrency == 0 {
            errors.push("--concurrency must be at least 1".into());
        }
        if !(1..=64).contains(&self.worker_threads) {
            errors.push("--worker-threads must be between 1 and 64".into());
        }
        if self.retry_initial.is_zero() || self.retry_initial > self.retry_max {
            errors.push("--retry-initial must be above zero and at most --retry-max".into());
        }
        if self.settle_after.is_some_and(|d| d.is_zero()) {
            errors.push("--settle-after must be above zero".into());
        }
        if self.max_event_bytes < 1024 {
            errors.push("--max-event-bytes must be at least 1024".into());
        }
        if self.poll_interval.is_zero() {
            errors.push("--poll-interval must be above zero".into());
        }
        if self.flux_timeout.is_zero() {
            errors.push("--flux-timeout must be above zero".into());
        }

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            fallback,
            rules,
            writes_per_minute: self.writes_per_minute,
            requests_per_hour: self.requests_per_hour,
            hmac_key,
            check_template: self.check_template,
            state_dir: (!self.no_persistence).then_some(self.state_dir),
            listen: self.listen,
            ops_listen,
            instance,
            upstream_token,
            status_range: self.status_range,
            target_url: self.target_url,
            max_event_bytes: self.max_event_bytes,
            delivery: DeliveryConfig {
                capacity: self.queue_capacity,
                concurrency: self.concurrency,
                initial_backoff: self.retry_initial,
                max_backoff: self.retry_max,
                settle_after: self.settle_after.unwrap_or(http.timeout * 3),
                ..DeliveryConfig::default()
            },
            http,
            shutdown_timeout: self.shutdown_timeout,
            workloads: self.poll_workloads.then(|| WorkloadPolling {
                flux: self.flux.clone(),
                interval: self.poll_interval,
                timeout: (!self.poll_timeout.is_zero()).then_some(self.poll_timeout),
                call_timeout: self.flux_timeout,
            }),
            log_format: self.log_format,
            log_level: if self.debug {
                "debug".into()
            } else {
                self.log_level
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("flux-status").chain(list.iter().copied()))
    }

    #[test]
    fn durations_in_every_form() {
        for (s, want) in [
            ("20s", 20_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("250ms", 250),
            ("1m30s", 90_000),
            ("90", 90_000),
        ] {
            assert_eq!(parse_duration(s).unwrap().as_millis(), want, "{s}");
        }
        for bad in ["", "s", "5x", "-1s", "1.5s", "m5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn original_flags_still_parse() {
        let a = args(&[
            "--git-url=https://github.com/o/r",
            "--github-token=t",
            "--gitlab-token=x",
            "--azdo-pat=y",
            "--flux=localhost:3030",
            "--poll-workloads=false",
            "--poll-intervall=10",
            "--poll-timeout=360",
            "--debug",
            "--instance=dev",
            "--listen=:3000",
            "--insecure-allow-unauthenticated",
        ])
        .unwrap();
        assert!(!a.poll_workloads && a.debug);
        assert_eq!(a.listen, "0.0.0.0:3000".parse().unwrap());
        assert_eq!(a.poll_interval, Duration::from_secs(10));
        let c = a.validate().unwrap();
        assert_eq!(c.log_level, "debug");
        assert!(matches!(
            c.fallback.unwrap(),
            Target::Provider {
                provider: Provider::GitHub,
                ..
            }
        ));
    }

    #[test]
    fn settling_defaults_to_a_few_http_timeouts() {
        let settle = |extra: &[&str]| {
            let mut list = vec!["--git-url=https://github.com/o/r", "--github-token=t"];
            list.extend_from_slice(extra);
            args(&list).unwrap().validate().map(|c| c.delivery.settle_after)
        };
        assert_eq!(settle(&[]).unwrap(), Duration::from_secs(45));
        assert_eq!(settle(&["--http-timeout=2s"]).unwrap(), Duration::from_secs(6));
        assert_eq!(
            settle(&["--http-timeout=2s", "--settle-after=500ms"]).unwrap(),
            Duration::from_millis(500)
        );
        let err = settle(&["--settle-after=0s"]).unwrap_err();
        assert!(err.to_string().contains("--settle-after"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = args(&[
            "--instance=bad/name",
            "--ops-listen=nowhere",
            "--queue-capacity=0",
            "--api-url=ftp://x",
            "--worker-threads=0",
        ])
        .unwrap()
        .validate()
        .err()
        .unwrap();
        let text = err.to_string();
        for want in [
            "--instance",
            "--ops-listen",
            "--git-url (or --config",
            "--queue-capacity",
            "--api-url",
            "--worker-threads",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn provider_must_be_known_or_given() {
        let err = args(&["--git-url=git@git.example.com:o/r.git", "--github-token=t"])
            .unwrap()
            .validate()
            .err()
            .unwrap();
        assert!(err.to_string().contains("give the provider"), "{err}");
        let ok = args(&[
            "--git-url=git@git.example.com:o/r.git",
            "--github-token=t",
            "--provider=github",
        ])
        .unwrap()
        .validate()
        .unwrap();
        assert!(matches!(
            ok.fallback.unwrap(),
            Target::Provider {
                provider: Provider::GitHub,
                ..
            }
        ));
    }

    #[test]
    fn dry_run_needs_no_token() {
        let c = args(&["--git-url=https://github.com/o/r", "--dry-run"])
            .unwrap()
            .validate()
            .unwrap();
        assert!(matches!(
            c.fallback.unwrap(),
            Target::DryRun {
                provider: Some(Provider::GitHub),
                ..
            }
        ));
        let err = args(&["--git-url=https://github.com/o/r"])
            .unwrap()
            .validate()
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("github needs a credential: set GITHUB_TOKEN"),
            "{err}"
        );
    }
}
