//! Daemon configuration in three steps: raw input (flags, each also from an env
//! variable, and the `--config` file) → `validate()` per section → a typed
//! [`Config`]. Every problem is collected, with the flag or the file position, and
//! all are reported at once.
//!
//! Sections: [`target`] (shared with the CLI; each provider's flags come from
//! [`notifiers::PROVIDERS`]), [`repos`] (the `--config` file), [`ingest`],
//! [`delivery`], [`workloads`]. The original Go flux-status's flags still parse, so its
//! Helm values keep working.

pub mod credentials;
pub mod delivery;
pub mod deployments;
pub mod ingest;
pub mod repos;
pub mod target;
pub mod usage;
pub mod workloads;

pub use credentials::{CredentialArgs, Credentials};
pub use ingest::ListenerConfig;
pub use target::{ProviderChoice, Target, TargetArgs};
pub use usage::{parse_args, parse_duration, parse_listen, without_secrets};
pub use workloads::WorkloadPolling;

use crate::delivery::DeliveryConfig;
use crate::delivery::limiter::Limits;
use crate::repos::ObjectPattern;
use clap::{ArgAction, Parser, ValueEnum};
use notifiers::http::HttpConfig;
use secrecy::SecretString;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// flux-status: writes Flux deploy results as commit statuses.
#[derive(Parser)]
#[command(name = "flux-status", version, about, max_term_width = 100)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Write nothing: log each status that would be written. Needs no token.
    #[arg(long, env = "FLUX_STATUS_DRY_RUN")]
    pub dry_run: bool,

    /// YAML file mapping Flux objects to repositories and their providers (Flux v2);
    /// see the README. --git-url, if given, takes the objects no rule matches.
    #[arg(long, env = "FLUX_STATUS_CONFIG")]
    pub config: Option<PathBuf>,

    /// Name of this cluster or environment; part of every check name.
    #[arg(long, env = "FLUX_STATUS_INSTANCE", default_value = "default")]
    pub instance: String,

    /// Flux v2 check name; placeholders {instance} {cluster} {kind} {namespace} {name}.
    #[arg(long, env = "FLUX_STATUS_CHECK_TEMPLATE", default_value = crate::fluxv2::map::DEFAULT_CHECK_TEMPLATE)]
    pub check_template: String,

    /// Also status up to N older commits of a sync's range (never on the initial sync).
    #[arg(long, env = "FLUX_STATUS_STATUS_RANGE", default_value_t = 0)]
    pub status_range: usize,

    /// URL every status links to (e.g. a dashboard).
    #[arg(long, env = "FLUX_STATUS_TARGET_URL")]
    pub target_url: Option<String>,

    #[command(flatten)]
    pub ingest: ingest::IngestArgs,

    #[command(flatten)]
    pub delivery: delivery::DeliveryArgs,

    /// Threads that serve events and write statuses (fsyncs have a thread of their
    /// own). One accepts tens of thousands of events a second; each more costs
    /// cross-thread wake-ups per event.
    #[arg(long, env = "FLUX_STATUS_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    #[command(flatten)]
    pub workloads: workloads::WorkloadArgs,

    #[command(flatten)]
    pub deployments: deployments::DeploymentArgs,

    #[arg(long, env = "FLUX_STATUS_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// error, warn, info, debug or trace; RUST_LOG-style directives also work.
    #[arg(long, env = "FLUX_STATUS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Same as --log-level=debug (flag of the original flux-status).
    #[arg(long, env = "FLUX_STATUS_DEBUG", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = ArgAction::Set, default_value = "false")]
    pub debug: bool,
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
    budget: delivery::Budget,
    pub upstream_token: Option<SecretString>,
    pub status_range: usize,
    pub target_url: Option<String>,
    pub max_event_bytes: usize,
    pub delivery: DeliveryConfig,
    pub http: HttpConfig,
    /// `--github-checks`: GitHub repositories get check runs, not commit statuses.
    pub github_checks: bool,
    pub shutdown_timeout: Duration,
    /// `None`: `--poll-workloads=false`.
    pub workloads: Option<WorkloadPolling>,
    /// `None`: no `--deployments`.
    pub deployments: Option<deployments::DeploymentConfig>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub listeners: ListenerConfig,
}

/// One thing wrong with the configuration, and where: a flag (`--listen`) or a place
/// in the `--config` file (`--config repos[2].gitUrl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Problems collected across sections, to report together.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn push(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            at: at.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `value` when nothing was found wrong.
    pub fn or_ok<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError(self.0))
        }
    }
}

impl From<Problems> for ConfigError {
    fn from(p: Problems) -> Self {
        ConfigError(p.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.iter().map(Problem::to_string).collect::<Vec<_>>().join("\n  - "))]
pub struct ConfigError(pub Vec<Problem>);

/// An instance becomes part of check names (`flux-status/<instance>/sync`, and the
/// Azure DevOps name `<instance>/sync`), so it may not hold a `/`.
pub fn validate_instance(raw: &str, problems: &mut Problems) -> String {
    let instance = raw.trim().to_string();
    let valid = !instance.is_empty()
        && instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        problems.push(
            "--instance",
            format!("{raw:?} must be letters, digits, '-', '_' or '.' (it becomes part of each check name)"),
        );
    }
    instance
}

/// Refuses a repository given twice (two `--config` entries, or one and `--git-url`),
/// whatever the form of its URL: both would route to one repository.
fn refuse_duplicates<'a>(targets: impl Iterator<Item = (&'a str, &'a Target)>, problems: &mut Problems) {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (at, target) in targets {
        let key = target.repo_key();
        match seen.get(key.as_str()) {
            Some(first) => problems.push(
                at,
                format!("names the same repository as {first}; give each repository once"),
            ),
            None => {
                seen.insert(key, at);
            }
        }
    }
}

impl Config {
    /// The client-side limits for a target: the flags, else the provider's defaults.
    pub fn limits(&self, target: &Target) -> Limits {
        self.budget.limits(target)
    }

    /// Every target, the `--git-url` one first.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.fallback.iter().chain(self.rules.iter().map(|(t, _)| t))
    }
}

impl Args {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let instance = validate_instance(&self.instance, &mut problems);
        if let Some(url) = &self.target_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            problems.push(
                "--target-url",
                format!("{url:?} must start with https:// or http://"),
            );
        }
        if !self.check_template.contains("{name}") {
            problems.push(
                "--check-template",
                "must contain {name} (one check per Flux object)",
            );
        }
        if !(1..=64).contains(&self.worker_threads) {
            problems.push("--worker-threads", "must be between 1 and 64");
        }
        if self.target.git_url.is_none() && self.config.is_none() {
            problems.push(
                "--git-url (or --config with at least one repository)",
                "is required",
            );
        }
        let ingest = self.ingest.validate(&mut problems);
        let target = self.target.validate(self.dry_run, &mut problems);
        let rules = self
            .config
            .as_deref()
            .and_then(|path| repos::load_file(path, &mut problems))
            .map(|file| file.validate(&target.credentials, self.dry_run, &mut problems))
            .unwrap_or_default();
        refuse_duplicates(
            target
                .git_url
                .iter()
                .map(|t| ("--git-url", t))
                .chain(rules.iter().map(|r| (r.at.as_str(), &r.target))),
            &mut problems,
        );
        let checks = target.github_checks;
        for (at, t) in target
            .git_url
            .iter()
            .map(|t| ("--git-url", t))
            .chain(rules.iter().map(|r| (r.at.as_str(), &r.target)))
        {
            target::check_runs_need_an_app(checks, at, t, &mut problems);
        }
        let delivery = self.delivery.validate(target.http.timeout, &mut problems);
        let workloads = self.workloads.validate(&mut problems);
        let deployments = self.deployments.validate(&instance, &mut problems);
        problems.or_ok(Config {
            fallback: target.git_url,
            rules: rules.into_iter().map(|r| (r.target, r.objects)).collect(),
            budget: delivery.budget,
            hmac_key: ingest.hmac_key,
            check_template: self.check_template,
            state_dir: delivery.state_dir,
            listen: ingest.listen,
            ops_listen: ingest.ops_listen,
            instance,
            upstream_token: ingest.upstream_token,
            status_range: self.status_range,
            target_url: self.target_url,
            max_event_bytes: ingest.max_event_bytes,
            delivery: delivery.delivery,
            http: target.http,
            github_checks: checks,
            shutdown_timeout: delivery.shutdown_timeout,
            workloads,
            deployments,
            log_format: self.log_format,
            log_level: if self.debug {
                "debug".into()
            } else {
                self.log_level
            },
            listeners: ingest.listeners,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use notifiers::Provider;

    fn github() -> Provider {
        notifiers::github::SPEC.provider()
    }

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
        // Every provider's credential flag, a new one included.
        let credentials = notifiers::PROVIDERS
            .iter()
            .map(|p| format!("--{}", p.credential.flag));
        let flags: Vec<String> = std::iter::once("--token".to_string())
            .chain(credentials)
            .collect();
        for flag in &flags {
            let flag = flag.as_str();
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
        // All but a flag given its value alone.
        assert!(errors >= cases.len() - flags.len(), "most cases are usage errors");
        // What the secret does not touch is still said.
        let out = shown(&["--listen=nowhere"]);
        assert!(out.contains("nowhere"), "{out}");
    }

    /// A token may start with `-`, and the secret flags are those whose env values
    /// are hidden from --help.
    #[test]
    fn secret_flags_are_marked() {
        let cmd = Args::command();
        let credentials = notifiers::PROVIDERS.iter().map(|p| p.credential.flag);
        for long in ["token", "git-url"].into_iter().chain(credentials) {
            let arg = cmd.get_arguments().find(|a| a.get_long() == Some(long)).unwrap();
            assert!(arg.is_hide_env_values_set(), "{long}");
        }
        let a = args(&["--token", "-abc", "--github-token", "--x"]).unwrap();
        assert_eq!(a.ingest.token.as_deref(), Some("-abc"));
        assert_eq!(
            a.target.credentials.value(notifiers::github::SPEC.provider()),
            Some("--x")
        );
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
        assert!(!a.workloads.poll_workloads && a.debug);
        assert_eq!(a.ingest.listen, "0.0.0.0:3000".parse().unwrap());
        assert_eq!(a.workloads.poll_interval, Duration::from_secs(10));
        let c = a.validate().unwrap();
        assert_eq!(c.log_level, "debug");
        assert!(matches!(
            c.fallback.unwrap(),
            Target::Provider { provider, .. } if provider == github()
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
            Target::Provider { provider, .. } if provider == github()
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
            Target::DryRun { provider: Some(p), .. } if p == github()
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
    /// GitHub lets only Apps write check runs: `--github-checks` with a GitHub token
    /// is refused where the repository is given; other providers keep statuses.
    #[test]
    fn github_checks_need_an_app_on_github_only() {
        let key = format!(
            "--github-app-private-key={}",
            include_str!("../../tests/fixtures/github-app/app-key.pem")
        );
        let validated = |list: &[&str]| args(list).unwrap().validate();
        let err = validated(&[
            "--git-url=https://github.com/o/r",
            "--github-token=ghp_x",
            "--github-checks",
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("--git-url") && err.contains("only GitHub Apps") && !err.contains("ghp_x"),
            "{err}"
        );
        let c = validated(&[
            "--git-url=https://github.com/o/r",
            "--github-app-id=1",
            key.as_str(),
            "--github-checks",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.github_checks);
        let gitlab = validated(&[
            "--git-url=https://gitlab.com/o/r",
            "--gitlab-token=glpat-x",
            "--github-checks",
        ]);
        assert!(gitlab.is_ok(), "{:?}", gitlab.err().map(|e| e.to_string()));
    }

    #[test]
    fn deployments_go_to_the_instance_unless_an_environment_is_named() {
        let validated = |list: &[&str]| {
            let base = [
                "--dry-run",
                "--git-url=https://github.com/o/r",
                "--instance=prod-eu",
            ];
            args(&[&base[..], list].concat()).unwrap().validate()
        };
        let c = validated(&["--deployments"]).unwrap_or_else(|e| panic!("{e}"));
        let d = c.deployments.unwrap();
        assert_eq!(d.environment, "prod-eu");
        assert!(!d.options.production && d.options.url.is_none() && d.git_branch.is_none());
        let d = validated(&[
            "--deployments",
            "--environment=production",
            "--environment-url=https://app.example.com",
            "--production",
            "--git-branch=master",
        ])
        .unwrap_or_else(|e| panic!("{e}"))
        .deployments
        .unwrap();
        assert_eq!(d.environment, "production");
        assert_eq!(d.options.url.as_deref(), Some("https://app.example.com"));
        assert!(d.options.production);
        assert_eq!(d.git_branch.as_deref(), Some("master"));
        assert!(
            validated(&[])
                .unwrap_or_else(|e| panic!("{e}"))
                .deployments
                .is_none()
        );
    }

    #[test]
    fn deployment_flags_are_refused_when_they_would_do_nothing_or_are_wrong() {
        let problems = |list: &[&str]| -> Vec<String> {
            let base = ["--dry-run", "--git-url=https://github.com/o/r"];
            match args(&[&base[..], list].concat()).unwrap().validate() {
                Ok(_) => Vec::new(),
                Err(e) => e.0.into_iter().map(|p| p.to_string()).collect(),
            }
        };
        assert_eq!(
            problems(&["--environment=production", "--production"]),
            vec![
                "--environment: has no effect without --deployments",
                "--production: has no effect without --deployments"
            ]
        );
        let wrong = problems(&[
            "--deployments",
            "--environment= ",
            "--environment-url=app.example.com",
            "--git-branch=two words",
        ]);
        let at: Vec<&str> = wrong.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            at,
            vec!["--environment", "--environment-url", "--git-branch"],
            "{wrong:?}"
        );
        assert_eq!(
            problems(&["--deployments", &format!("--environment={}", "e".repeat(256))]).len(),
            1
        );
    }
}
