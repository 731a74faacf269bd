//! Each provider's credential flags, derived from [`notifiers::PROVIDERS`]: a token
//! flag (also from its env variable, hidden from `--help` and usage errors) and a
//! `-file` flag. clap's derive cannot loop over a list, so [`clap::Args`] is written
//! out here.

use super::Problems;
use crate::credentials::{SecretSource, load};
use clap::builder::ValueParser;
use clap::{Arg, ArgMatches, Command, FromArgMatches};
use notifiers::Provider;
use secrecy::SecretString;
use std::path::PathBuf;

/// One provider's credential as given, not yet read.
#[derive(Clone)]
struct Given {
    provider: Provider,
    value: Option<String>,
    file: Option<PathBuf>,
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
            match load(c.what, src) {
                Ok(Some(secret)) => found.push((g.provider, secret)),
                Ok(None) => {}
                Err(e) => problems.push(format!("--{}", c.flag), e),
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

/// Credentials per provider; a repository always uses its own provider's.
#[derive(Clone, Default)]
pub struct Credentials(Vec<(Provider, SecretString)>);

impl Credentials {
    pub fn get(&self, p: Provider) -> Option<SecretString> {
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
                Given {
                    provider,
                    value: m.get_one::<String>(c.flag).cloned(),
                    file: m.get_one::<PathBuf>(c.file_flag).cloned(),
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
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Args, ProviderChoice};
    use clap::{CommandFactory, Parser};
    use notifiers::{PROVIDERS, Provider};

    /// Each provider's flags and variables come from its spec; the token flag is
    /// secret. (tests/cli.rs checks the CLI's.)
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
}
