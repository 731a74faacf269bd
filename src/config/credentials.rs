//! Each provider's credential flags, derived from [`notifiers::PROVIDERS`]: a token
//! flag (also from its env variable, hidden from `--help` and usage errors) and a
//! `-file` flag; for a provider whose spec has an [`AppSpec`], the App's id, private
//! key (value or file) and installation id. clap's derive cannot loop over a list,
//! so [`clap::Args`] is written out here.

use super::Problems;
use crate::credentials::{SecretSource, load};
use clap::builder::ValueParser;
use clap::{Arg, ArgMatches, Command, FromArgMatches};
use notifiers::provider::AppSpec;
use notifiers::{App, AppCredential, Credential, Provider};
use std::path::PathBuf;
use std::sync::Arc;

/// One provider's credential as given, not yet read.
#[derive(Clone)]
struct Given {
    provider: Provider,
    value: Option<String>,
    file: Option<PathBuf>,
    app: GivenApp,
}

/// An App's flags as given.
#[derive(Clone, Default)]
struct GivenApp {
    id: Option<String>,
    key: Option<String>,
    key_file: Option<PathBuf>,
    installation: Option<String>,
}

/// Every provider's credential flags, in the order of the registry.
#[derive(Clone, Default)]
pub struct CredentialArgs {
    given: Vec<Given>,
}

impl CredentialArgs {
    /// Reads each given credential (files included); problems name the flag, never
    /// the value.
    pub fn load(self, problems: &mut Problems) -> Credentials {
        let mut found = Vec::new();
        for g in self.given {
            let c = &g.provider.spec().credential;
            let src = SecretSource::new(g.value, g.file, format!("--{}", c.flag));
            let token = load(c.what, src).unwrap_or_else(|e| {
                problems.push(format!("--{}", c.flag), e);
                None
            });
            let app = match &g.provider.spec().app {
                Some(spec) => load_app(spec, g.app, problems),
                None => None,
            };
            match (token, app) {
                (Some(_), Some(_)) => {
                    let a = g.provider.spec().app.as_ref().map_or("", |a| a.id_flag);
                    problems.push(
                        format!("--{}", c.flag),
                        format!(
                            "a {} (--{} / {}) and an App (--{a}) are both set: a repository \
                             authenticates with one of them; unset the other",
                            c.what, c.flag, c.env
                        ),
                    );
                }
                (Some(token), None) => found.push((g.provider, Credential::Token(token))),
                (None, Some(app)) => found.push((g.provider, Credential::App(app))),
                (None, None) => {}
            }
        }
        Credentials(found)
    }

    /// The raw value given for `provider`'s token flag, for tests.
    pub fn value(&self, provider: Provider) -> Option<&str> {
        self.given
            .iter()
            .find(|g| g.provider == provider)
            .and_then(|g| g.value.as_deref())
    }
}

/// An App's id, key and installation, checked: the key must sign. Problems name
/// the flag, never the key.
fn load_app(spec: &AppSpec, given: GivenApp, problems: &mut Problems) -> Option<AppCredential> {
    let id_at = format!("--{}", spec.id_flag);
    let key = load(
        "App private key",
        SecretSource::new(given.key, given.key_file, format!("--{}", spec.key_flag)),
    )
    .unwrap_or_else(|e| {
        problems.push(format!("--{}", spec.key_flag), e);
        None
    });
    let installation = given.installation.filter(|i| !i.trim().is_empty());
    let id = given.id.filter(|i| !i.trim().is_empty());
    let Some(id) = id else {
        if key.is_some() || installation.is_some() {
            problems.push(
                &id_at,
                format!("the {} needs its id: set {} too", spec.what, spec.id_env),
            );
        }
        return None;
    };
    let Some(key) = key else {
        problems.push(
            &id_at,
            format!(
                "the {} needs its private key: set {} or --{}",
                spec.what, spec.key_env, spec.key_file_flag
            ),
        );
        return None;
    };
    let installation = match installation.map(|i| i.trim().parse::<u64>()) {
        None => None,
        Some(Ok(i)) if i > 0 => Some(i),
        Some(_) => {
            problems.push(
                format!("--{}", spec.installation_flag),
                "must be a positive number",
            );
            return None;
        }
    };
    match App::new(&id, &key) {
        Ok(app) => Some(AppCredential {
            app: Arc::new(app),
            installation,
        }),
        Err(e @ notifiers::AppError::Id(_)) => {
            problems.push(&id_at, e.to_string());
            None
        }
        Err(e) => {
            problems.push(format!("--{}", spec.key_flag), e.to_string());
            None
        }
    }
}

/// Credentials per provider; a repository always uses its own provider's.
#[derive(Clone, Default)]
pub struct Credentials(Vec<(Provider, Credential)>);

impl Credentials {
    pub fn get(&self, p: Provider) -> Option<Credential> {
        self.0.iter().find(|(q, _)| *q == p).map(|(_, s)| s.clone())
    }
}

impl FromArgMatches for CredentialArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = CredentialArgs::default();
        args.update_from_arg_matches(m)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.given = Provider::all()
            .map(|provider| {
                let c = &provider.spec().credential;
                let app = provider.spec().app.as_ref().map(|a| GivenApp {
                    id: m.get_one::<String>(a.id_flag).cloned(),
                    key: m.get_one::<String>(a.key_flag).cloned(),
                    key_file: m.get_one::<PathBuf>(a.key_file_flag).cloned(),
                    installation: m.get_one::<String>(a.installation_flag).cloned(),
                });
                Given {
                    provider,
                    value: m.get_one::<String>(c.flag).cloned(),
                    file: m.get_one::<PathBuf>(c.file_flag).cloned(),
                    app: app.unwrap_or_default(),
                }
            })
            .collect();
        Ok(())
    }
}

impl clap::Args for CredentialArgs {
    fn augment_args(mut cmd: Command) -> Command {
        for p in Provider::all() {
            let s = p.spec();
            let c = &s.credential;
            cmd = cmd
                .arg(
                    Arg::new(c.flag)
                        .long(c.flag)
                        .env(c.env)
                        // Secret: the env value stays out of --help, and out of usage
                        // errors (`without_secrets` looks for this mark).
                        .hide_env_values(true)
                        .allow_hyphen_values(true)
                        .value_name("TOKEN")
                        .value_parser(ValueParser::string())
                        .help(format!(
                            "{} token: {}. Prefer {} or --{}: a flag shows in `ps`",
                            s.title, c.forms, c.env, c.file_flag
                        )),
                )
                .arg(
                    Arg::new(c.file_flag)
                        .long(c.file_flag)
                        .env(c.file_env)
                        .value_name("PATH")
                        .value_parser(clap::value_parser!(PathBuf))
                        .help(format!("File holding the {} (e.g. a mounted Secret)", c.what)),
                );
            if let Some(a) = &s.app {
                cmd = app_args(cmd, s.title, a);
            }
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// An App's flags: instead of a token, the provider mints short-lived ones.
fn app_args(cmd: Command, title: &str, a: &AppSpec) -> Command {
    cmd.arg(
        Arg::new(a.id_flag)
            .long(a.id_flag)
            .env(a.id_env)
            .value_name("ID")
            .help(format!(
                "{} id (or client ID), to authenticate as the App instead of with a token. The App \
                 needs {}",
                a.what, a.permissions
            )),
    )
    .arg(
        Arg::new(a.key_flag)
            .long(a.key_flag)
            .env(a.key_env)
            .hide_env_values(true)
            .allow_hyphen_values(true)
            .value_name("PEM")
            .help(format!(
                "The {} private key (PEM). Prefer {} or --{}: a flag shows in `ps`",
                a.what, a.key_env, a.key_file_flag
            )),
    )
    .arg(
        Arg::new(a.key_file_flag)
            .long(a.key_file_flag)
            .env(a.key_file_env)
            .value_name("PATH")
            .value_parser(clap::value_parser!(PathBuf))
            .help(format!(
                "File holding the {} private key (e.g. a mounted Secret)",
                a.what
            )),
    )
    .arg(
        Arg::new(a.installation_flag)
            .long(a.installation_flag)
            .env(a.installation_env)
            .value_name("ID")
            .help(format!(
                "The {title} App's installation to act as [default: the one on the repository, \
                 looked up with the App's JWT]"
            )),
    )
}

#[cfg(test)]
mod tests {
    use crate::config::{Args, ProviderChoice};
    use clap::{CommandFactory, Parser};
    use notifiers::{PROVIDERS, Provider};

    /// Each provider's flags and variables come from its spec; the token flag is
    /// secret. (tests/integration/cli.rs checks the CLI's.)
    #[test]
    fn every_provider_s_flags_derive_from_the_registry() {
        for cmd in [Args::command()] {
            let arg = |long: &str| {
                cmd.get_arguments()
                    .find(|a| a.get_long() == Some(long))
                    .unwrap_or_else(|| panic!("{}: no --{long}", cmd.get_name()))
            };
            for s in PROVIDERS {
                let c = &s.credential;
                let token = arg(c.flag);
                assert_eq!(token.get_env().and_then(|e| e.to_str()), Some(c.env));
                assert!(
                    token.is_hide_env_values_set() && token.is_allow_hyphen_values_set(),
                    "{}",
                    c.flag
                );
                let file = arg(c.file_flag);
                assert_eq!(file.get_env().and_then(|e| e.to_str()), Some(c.file_env));
                assert!(!file.is_hide_env_values_set(), "a path is no secret");
                if let Some(a) = &s.app {
                    for (flag, env, secret) in [
                        (a.id_flag, a.id_env, false),
                        (a.key_flag, a.key_env, true),
                        (a.key_file_flag, a.key_file_env, false),
                        (a.installation_flag, a.installation_env, false),
                    ] {
                        let got = arg(flag);
                        assert_eq!(got.get_env().and_then(|e| e.to_str()), Some(env));
                        assert_eq!(got.is_hide_env_values_set(), secret, "{flag}");
                    }
                }
            }
            let help = cmd.clone().render_long_help().to_string();
            for s in PROVIDERS {
                // Self-hosted-only providers name no host.
                assert!(
                    help.contains(s.name) && s.hosts.iter().all(|h| help.contains(h)),
                    "{}:\n{help}",
                    s.name
                );
            }
        }
        // The original flux-status's flags, and the variables the README names.
        let a = Args::try_parse_from([
            "flux-status",
            "--github-token=a",
            "--gitlab-token=b",
            "--azdo-pat=-c",
        ])
        .unwrap();
        let got: Vec<Option<&str>> = ["github", "gitlab", "azdo"]
            .into_iter()
            .map(|name| a.target.credentials.value(Provider::named(name).unwrap()))
            .collect();
        assert_eq!(got, [Some("a"), Some("b"), Some("-c")]);
    }

    #[test]
    fn provider_takes_every_name_and_alias_in_any_case() {
        let parse =
            |word: &str| Args::try_parse_from(["flux-status", "--provider", word]).map(|a| a.target.provider);
        for s in PROVIDERS {
            for word in std::iter::once(&s.name).chain(s.aliases) {
                for w in [word.to_string(), word.to_ascii_uppercase()] {
                    assert_eq!(parse(&w).unwrap(), ProviderChoice::Named(s.provider()), "{w}");
                }
            }
        }
        assert_eq!(parse("auto").unwrap(), ProviderChoice::Auto);
        assert!(parse("sourcehut").is_err());
    }

    fn target_problems(args: &[&str]) -> String {
        let a = Args::try_parse_from(std::iter::once("flux-status").chain(args.iter().copied())).unwrap();
        let mut problems = crate::config::Problems::default();
        a.target.credentials.load(&mut problems);
        if problems.is_empty() {
            return String::new();
        }
        crate::config::ConfigError::from(problems).to_string()
    }

    const KEY: &str = include_str!("../../tests/fixtures/github-app/app-key.pem");

    /// An App's flags come together or not at all, and never beside a token.
    #[test]
    fn an_app_is_refused_beside_a_token_or_without_its_parts() {
        let key = format!("--github-app-private-key={KEY}");
        for (args, want) in [
            (
                &["--github-token=ghp_x", "--github-app-id=1", key.as_str()][..],
                "a GitHub token (--github-token / GITHUB_TOKEN) and an App (--github-app-id) are both set",
            ),
            (
                &["--github-app-id=1"],
                "needs its private key: set GITHUB_APP_PRIVATE_KEY",
            ),
            (&[key.as_str()], "needs its id: set GITHUB_APP_ID"),
            (&["--github-app-installation-id=5"], "needs its id"),
            (
                &[
                    "--github-app-id=1",
                    key.as_str(),
                    "--github-app-installation-id=five",
                ],
                "--github-app-installation-id: must be a positive number",
            ),
            (
                &[
                    "--github-app-id=1",
                    "--github-app-private-key=-----BEGIN RSA PRIVATE KEY-----\nhunter2\n",
                ],
                "--github-app-private-key: the GitHub App private key is not an RSA private key",
            ),
        ] {
            let got = target_problems(args);
            assert!(got.contains(want), "{args:?}: {got}");
            assert!(
                !got.contains("ghp_x") && !got.contains("hunter2") && !got.contains("MII"),
                "{got}"
            );
        }
        assert_eq!(
            target_problems(&[
                "--github-app-id=1",
                key.as_str(),
                "--github-app-installation-id=5"
            ]),
            ""
        );
    }
}
