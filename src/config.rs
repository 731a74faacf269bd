//! Daemon flags (each also from an environment variable), validated into a typed
//! [`Config`] that reports every problem at once.
//!
//! The original Go flux-status's flags still parse, so its Helm values keep working.

use crate::credentials::{SecretSource, load_or_report};
use crate::delivery::DeliveryConfig;
use crate::delivery::limiter::Limits;
use crate::repos::ObjectPattern;
use clap::{ArgAction, CommandFactory, Parser, ValueEnum};
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
    /// Any user info in it (a token) is never printed.
    #[arg(long, env = "FLUX_STATUS_GIT_URL", hide_env_values = true)]
    pub git_url: Option<String>,
    /// Which provider hosts the repository.
    #[arg(long, env = "FLUX_STATUS_PROVIDER", value_enum, default_value = "auto")]
    pub provider: ProviderChoice,
    /// Provider API base [default: from --git-url: https://api.github.com or https://<host>/api/v3;
    /// GitLab https://<host>; Azure DevOps the organization or collection URL].
    #[arg(long, env = "FLUX_STATUS_API_URL")]
    pub api_url: Option<String>,
    /// GitHub token. Prefer GITHUB_TOKEN or --github-token-file: a flag shows in `ps`.
    #[arg(
        long,
        env = "GITHUB_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub github_token: Option<String>,
    /// File holding the GitHub token (e.g. a mounted Secret).
    #[arg(long, env = "FLUX_STATUS_GITHUB_TOKEN_FILE")]
    pub github_token_file: Option<PathBuf>,
    /// GitLab token. Prefer GITLAB_TOKEN or --gitlab-token-file.
    #[arg(
        long,
        env = "GITLAB_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub gitlab_token: Option<String>,
    /// File holding the GitLab token.
    #[arg(long, env = "FLUX_STATUS_GITLAB_TOKEN_FILE")]
    pub gitlab_token_file: Option<PathBuf>,
    /// Azure DevOps personal access token. Prefer AZDO_PAT or --azdo-pat-file.
    #[arg(long, env = "AZDO_PAT", hide_env_values = true, allow_hyphen_values = true)]
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
    #[arg(
        long,
        env = "FLUX_STATUS_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
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
    #[arg(long, env = "FLUX_STATUS_CHECK_TEMPLATE", default_value = crate::fluxv2::map::DEFAULT_CHECK_TEMPLATE)]
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

    /// Time a client has to send a request's headers, from connecting (or from the
    /// first byte of its next request on a keep-alive connection).
    #[arg(long, env = "FLUX_STATUS_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Time a client has to send an event's body once its headers are in; 408 after.
    #[arg(long, env = "FLUX_STATUS_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// How long a keep-alive connection may wait for its next request. fluxd's
    /// websocket gets at least 30s without a frame (fluxd pings every ~13 s).
    #[arg(long, env = "FLUX_STATUS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Ingest connections open at once, lowered to fit the open-file limit; beyond it
    /// new connections get 503 and are closed.
    #[arg(long, env = "FLUX_STATUS_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// Ops connections open at once: apart from ingest's, so probes keep answering.
    #[arg(long, env = "FLUX_STATUS_OPS_MAX_CONNECTIONS", default_value_t = 64)]
    pub ops_max_connections: usize,

    /// Event body bytes held at once across all requests; beyond it 503 [default:
    /// 64 MiB, or --max-event-bytes if larger].
    #[arg(long, env = "FLUX_STATUS_MAX_BODY_BYTES_IN_FLIGHT")]
    pub max_body_bytes_in_flight: Option<usize>,

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

/// `P::parse()`, except that a usage error never shows what may be a secret.
pub fn parse_args<P: Parser>() -> P {
    P::try_parse().unwrap_or_else(|e| without_secrets::<P>(e).exit())
}

/// A clap error with every value that may be a secret taken out: the value of a
/// secret flag (one whose env value is hidden), a value given to a flag that takes
/// none, and an unknown word (`--github-token= ghp_…` makes the token one). Other
/// flags' invalid values stay, since they say what to fix.
pub fn without_secrets<P: CommandFactory>(mut e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    const HIDDEN: &str = "<not shown: may be a secret>";
    let secret_flags: Vec<String> = P::command()
        .get_arguments()
        .filter(|a| a.is_hide_env_values_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    // `--token <TOKEN>`, `--debug[=<DEBUG>]`: the flag is the first word.
    let flag = arg.split([' ', '[', '=']).next().unwrap_or_default();
    let mut hidden = Vec::new();
    // An unknown `--flag-name` is a typo worth naming; any other unknown word (even
    // `-x`, from a stray `-x…` token) is shown by no one.
    let flag_shaped = arg.strip_prefix("--").is_some_and(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if e.kind() == ErrorKind::UnknownArgument && !flag_shaped {
        hidden.push(arg.clone());
        e.insert(ContextKind::InvalidArg, ContextValue::String(HIDDEN.into()));
    }
    let names_the_problem = matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation)
        && !secret_flags.iter().any(|f| f == flag);
    if !names_the_problem && let Some(value) = e.get(ContextKind::InvalidValue) {
        hidden.push(value.to_string());
        e.insert(ContextKind::InvalidValue, ContextValue::String(HIDDEN.into()));
    }
    // A tip can quote the word again ("to pass '…' as a value, use '-- …'").
    let quotes_it = e.get(ContextKind::Suggested).is_some_and(|tip| {
        hidden
            .iter()
            .any(|h| !h.is_empty() && tip.to_string().contains(h.as_str()))
    });
    if quotes_it {
        e.remove(ContextKind::Suggested);
    }
    e
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
    pub listeners: ListenerConfig,
}

/// Limits against slow, idle and too many clients.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Before [`crate::listener::fit_caps`].
    pub ingest: crate::listener::Limits,
    pub ops: crate::listener::Limits,
    pub body_timeout: Duration,
    pub body_bytes_in_flight: usize,
}

/// The default of `--max-body-bytes-in-flight`, below `--max-event-bytes`' own.
const DEFAULT_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

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
        let open = crate::auth::open_routes(upstream_token.is_some(), self.hmac_key_file.is_some());
        if !self.listen.ip().is_loopback() && !open.is_empty() && !self.insecure_allow_unauthenticated {
            errors.push(format!(
                "--listen {} is reachable beyond this host, and with neither --token nor --hmac-key-file \
                 the routes {} take requests with no credential: anyone who can reach it could forge deploy \
                 statuses. Set --token (every route) or --hmac-key-file (Flux v2; fluxd's routes are then \
                 refused), listen on 127.0.0.1, or pass --insecure-allow-unauthenticated",
                self.listen,
                open.join(" and ")
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
        for (flag, d) in [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--idle-timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                errors.push(format!("{flag} must be above zero"));
            }
        }
        if self.max_connections == 0 || self.ops_max_connections == 0 {
            errors.push("--max-connections and --ops-max-connections must be at least 1".into());
        }
        let largest_body = self.max_event_bytes.max(crate::fluxv2::route::MAX_EVENT_BYTES);
        let body_bytes_in_flight = match self.max_body_bytes_in_flight {
            Some(n) if n < largest_body => {
                errors.push(format!(
                    "--max-body-bytes-in-flight must be at least {largest_body} (the largest event body accepted)"
                ));
                n
            }
            Some(n) => n,
            None => DEFAULT_BODY_BYTES_IN_FLIGHT.max(largest_body),
        };
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
            listeners: ListenerConfig {
                ingest: crate::listener::Limits {
                    header_timeout: self.header_timeout,
                    idle_timeout: self.idle_timeout,
                    max_connections: self.max_connections,
                },
                ops: crate::listener::Limits {
                    header_timeout: self.header_timeout,
                    idle_timeout: self.idle_timeout,
                    max_connections: self.ops_max_connections,
                },
                body_timeout: self.body_timeout,
                body_bytes_in_flight,
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

    /// A secret with characters no clap message has, starting with `-` as a token
    /// may; clap once echoed `-%` of it as an unknown flag.
    const SECRET: &str = "-%s3cr3t%";

    fn shown(list: &[&str]) -> String {
        match args(list) {
            Ok(_) => String::new(),
            Err(e) => {
                let e = without_secrets::<Args>(e);
                format!("{e}\n{}", e.render())
            }
        }
    }

    #[test]
    fn usage_errors_never_show_a_secret() {
        let eq = |flag: &str| format!("{flag}={SECRET}");
        let mut cases: Vec<Vec<String>> = Vec::new();
        for flag in ["--token", "--github-token", "--gitlab-token", "--azdo-pat"] {
            cases.extend([
                vec![flag.into(), SECRET.into()],
                vec![flag.into(), SECRET.into(), flag.into(), SECRET.into()],
                vec![eq(flag), eq(flag)],
                vec![format!("{flag}="), SECRET.into()],
                vec![flag.into(), SECRET.into(), SECRET.into()],
                vec![flag.into(), SECRET.into(), "--listen=nowhere".into()],
                vec![eq(&format!("{flag}x"))],
            ]);
        }
        cases.extend([
            vec![SECRET.trim_start_matches('-').into()],
            vec!["--dry-run".into(), SECRET.trim_start_matches('-').into()],
            vec![eq("--dry-run")],
            vec![eq("--git-url"), eq("--git-url")],
            vec![
                "--git-url".into(),
                format!("https://u:{SECRET}@github.com/o/r"),
                "x".into(),
            ],
        ]);
        let mut errors = 0;
        for case in &cases {
            let list: Vec<&str> = case.iter().map(String::as_str).collect();
            let out = shown(&list);
            errors += usize::from(!out.is_empty());
            assert!(!out.contains('%') && !out.contains("s3cr3t"), "{case:?}:\n{out}");
        }
        assert!(errors >= cases.len() - 4, "most cases are usage errors");
        // What the secret does not touch is still said.
        let out = shown(&["--listen=nowhere"]);
        assert!(out.contains("nowhere"), "{out}");
    }

    /// A token may start with `-`, and the secret flags are those whose env values
    /// are hidden from --help.
    #[test]
    fn secret_flags_are_marked() {
        let cmd = Args::command();
        for id in ["token", "github_token", "gitlab_token", "azdo_pat", "git_url"] {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id).unwrap();
            assert!(arg.is_hide_env_values_set(), "{id}");
        }
        let a = args(&["--token", "-abc", "--github-token", "--x"]).unwrap();
        assert_eq!(a.token.as_deref(), Some("-abc"));
        assert_eq!(a.target.github_token.as_deref(), Some("--x"));
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

    #[test]
    fn listener_limits_are_validated_and_defaulted() {
        let base = ["--git-url=https://github.com/o/r", "--dry-run"];
        let c = args(&base).unwrap().validate().unwrap();
        assert_eq!(c.listeners.ingest.header_timeout, Duration::from_secs(10));
        assert_eq!(c.listeners.body_timeout, Duration::from_secs(30));
        assert_eq!(c.listeners.ingest.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            (
                c.listeners.ingest.max_connections,
                c.listeners.ops.max_connections
            ),
            (512, 64)
        );
        assert_eq!(c.listeners.body_bytes_in_flight, 64 * 1024 * 1024);
        let big = args(&[base[0], base[1], "--max-event-bytes=100000000"])
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(
            big.listeners.body_bytes_in_flight, 100_000_000,
            "never below one event"
        );
        let err = args(&[
            base[0],
            base[1],
            "--header-timeout=0",
            "--max-connections=0",
            "--max-body-bytes-in-flight=1024",
        ])
        .unwrap()
        .validate()
        .err()
        .unwrap()
        .to_string();
        for want in [
            "--header-timeout",
            "--max-connections",
            "--max-body-bytes-in-flight",
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
    }

    #[test]
    fn beyond_loopback_every_route_needs_a_credential_or_a_refusal() {
        let dir = std::env::temp_dir().join(format!("flux-status-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("hmac");
        std::fs::write(&key, "k").unwrap();
        let key = format!("--hmac-key-file={}", key.display());
        let base = [
            "--git-url=https://github.com/o/r",
            "--dry-run",
            "--listen=0.0.0.0:3000",
        ];
        assert!(args(&base).unwrap().validate().is_err(), "nothing authenticated");
        let hmac_only = args(&[base[0], base[1], base[2], &key]).unwrap().validate();
        assert!(hmac_only.is_ok(), "fluxd's routes refused, Flux v2's signed");
        let token = args(&[base[0], base[1], base[2], "--token=t"])
            .unwrap()
            .validate();
        assert!(token.is_ok());
    }
}
