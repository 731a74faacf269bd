//! What the rest of flux-status knows about a provider, declared once per provider
//! module as a [`ProviderSpec`] and listed in [`crate::PROVIDERS`].
//!
//! A table of plain data rather than a trait with one impl per provider: every field
//! must be written out (the compiler refuses a spec that forgets one, where a trait
//! would fall back to a default), and flag names, hosts and limits are data the
//! daemon's flags, `--help`, `--config` and the CLI iterate over.

use crate::deployment::Environment;
use crate::git_url::{GitUrl, GitUrlError};
use crate::{AppCredential, Credential, CredentialSource, Notifier, PROVIDERS, StaticToken};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Everything about one provider that lives outside its HTTP code.
pub struct ProviderSpec {
    /// `--provider` value, metric label and log field.
    pub name: &'static str,
    /// Its name in sentences (`GitHub`).
    pub title: &'static str,
    /// Other words `--provider` and `--config`'s `provider:` accept.
    pub aliases: &'static [&'static str],
    /// Public hosts that identify it; `*.example.com` matches any subdomain.
    pub hosts: &'static [&'static str],
    /// What `--api-url` defaults to, in words for `--help`.
    pub api_url_help: &'static str,
    pub credential: CredentialSpec,
    /// App authentication, for providers whose Apps mint short-lived tokens.
    pub app: Option<AppSpec>,
    pub limits: TextLimits,
    /// Client-side write budget when no flag sets one.
    pub budget: WriteBudget,
    /// The repository a git URL names, as one string that is the same for every form
    /// of URL naming it (https, ssh, scp); an error when the provider cannot address it.
    pub repo_key: fn(&GitUrl) -> Result<String, GitUrlError>,
    /// Its deployments notifier (`--deployments`), for providers that have
    /// deployments to environments; see [`crate::deployment`].
    pub deployments: Option<BuildDeployments>,
    /// Its notifier: writes, the start-up credential check
    /// ([`Notifier::check_credentials`]) and reading statuses back for the CLI
    /// ([`Notifier::list_statuses`]).
    pub build: fn(Connect<'_>) -> Result<Arc<dyn Notifier>, GitUrlError>,
}

/// Builds a provider's deployments notifier for one repository.
pub type BuildDeployments = fn(Connect<'_>, &Environment) -> Result<Arc<dyn Notifier>, GitUrlError>;

/// How a provider's credential is given: a flag (also from an env variable) or a file.
pub struct CredentialSpec {
    /// In messages: `GitHub token`.
    pub what: &'static str,
    /// `--github-token`, without the dashes.
    pub flag: &'static str,
    pub env: &'static str,
    /// `--github-token-file`, without the dashes.
    pub file_flag: &'static str,
    pub file_env: &'static str,
    /// The tokens the provider takes, for `--help`.
    pub forms: &'static str,
}

/// How an App credential is given (each flag also from its env variable), and the
/// token source it becomes for one repository.
pub struct AppSpec {
    /// In messages: `GitHub App`.
    pub what: &'static str,
    pub id_flag: &'static str,
    pub id_env: &'static str,
    /// The private key itself (PEM); the file flag is the one to prefer.
    pub key_flag: &'static str,
    pub key_env: &'static str,
    pub key_file_flag: &'static str,
    pub key_file_env: &'static str,
    /// Optional: found from the repository when not given.
    pub installation_flag: &'static str,
    pub installation_env: &'static str,
    /// The permissions the App needs, for `--help`.
    pub permissions: &'static str,
    pub source: fn(AppConnect<'_>) -> Result<Arc<dyn CredentialSource>, GitUrlError>,
}

/// What making an App's token source for one repository takes.
pub struct AppConnect<'a> {
    pub client: reqwest::Client,
    pub git_url: &'a GitUrl,
    pub api_url: Option<&'a str>,
    pub app: AppCredential,
}

/// Lengths past which the provider refuses a field (or we cut it), in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextLimits {
    pub description: usize,
    /// The check name; `None` when the provider documents none.
    pub context: Option<usize>,
}

/// `None`: no client-side limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBudget {
    pub writes_per_minute: Option<u32>,
    pub requests_per_hour: Option<u32>,
}

/// What building a notifier takes.
pub struct Connect<'a> {
    pub client: reqwest::Client,
    pub git_url: &'a GitUrl,
    /// Overrides the API base derived from the URL (GitHub Enterprise, self-managed
    /// GitLab, Azure DevOps Server).
    pub api_url: Option<&'a str>,
    /// Asked for the token on every request, so a provider whose tokens expire can
    /// refresh them.
    pub credential: Arc<dyn CredentialSource>,
}

impl ProviderSpec {
    pub fn provider(&'static self) -> Provider {
        Provider(self)
    }

    /// Whether `host` is one of this provider's public hosts.
    pub fn is_public_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.iter().any(|h| match h.strip_prefix('*') {
            Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
            None => host == *h,
        })
    }

    /// Whether `word` names this provider, by its name or an alias.
    pub fn is_named(&self, word: &str) -> bool {
        std::iter::once(&self.name)
            .chain(self.aliases)
            .any(|n| n.eq_ignore_ascii_case(word))
    }
}

/// A provider from [`PROVIDERS`]: a copyable handle on its spec.
#[derive(Clone, Copy)]
pub struct Provider(&'static ProviderSpec);

impl Provider {
    pub const fn new(spec: &'static ProviderSpec) -> Self {
        Provider(spec)
    }

    /// Every provider, in the order of [`PROVIDERS`].
    pub fn all() -> impl Iterator<Item = Provider> {
        PROVIDERS.iter().map(|s| Provider(s))
    }

    pub fn spec(self) -> &'static ProviderSpec {
        self.0
    }

    pub fn as_str(self) -> &'static str {
        self.0.name
    }

    /// The provider a public host belongs to; self-hosted hosts need `--provider`.
    pub fn detect(host: &str) -> Option<Provider> {
        Provider::all().find(|p| p.0.is_public_host(host))
    }

    /// The provider `word` names, by name or alias, in any case.
    pub fn named(word: &str) -> Option<Provider> {
        Provider::all().find(|p| p.0.is_named(word))
    }

    /// Every provider's name, for messages: `github, gitlab or azure-devops`.
    pub fn names() -> String {
        let names: Vec<&str> = Provider::all().map(Provider::as_str).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }

    /// Where this provider's credential is given, for messages.
    pub fn credential_flag(self) -> String {
        let c = &self.0.credential;
        match &self.0.app {
            Some(a) => format!(
                "{} or --{}, or {} with {} or --{}",
                c.env, c.file_flag, a.id_env, a.key_env, a.key_file_flag
            ),
            None => format!("{} or --{}", c.env, c.file_flag),
        }
    }

    /// How long a description may be before the provider refuses it (or we cut it).
    pub fn description_limit(self) -> usize {
        self.0.limits.description
    }

    /// The tightest description limit of all: what a dry run cuts to when it does not
    /// know the provider.
    pub fn tightest_description_limit() -> usize {
        Provider::all()
            .map(Provider::description_limit)
            .min()
            .unwrap_or(usize::MAX)
    }

    /// Checks that `url` names a repository this provider can address.
    pub fn check_url(self, url: &GitUrl) -> Result<(), GitUrlError> {
        self.repo_key(url).map(drop)
    }

    /// The repository `url` names, the same for each form of URL, in lower case
    /// (the providers compare paths without regard to case).
    pub fn repo_key(self, url: &GitUrl) -> Result<String, GitUrlError> {
        (self.0.repo_key)(url).map(|k| k.to_ascii_lowercase())
    }

    /// The notifier for `url` on this provider with a fixed token or an App;
    /// `api_url` overrides the API base derived from the URL.
    pub fn notifier(
        self,
        client: reqwest::Client,
        url: &GitUrl,
        api_url: Option<&str>,
        credential: impl Into<Credential>,
    ) -> Result<Arc<dyn Notifier>, GitUrlError> {
        let credential = self.credential_source(&client, url, api_url, credential.into())?;
        self.connect(Connect {
            client,
            git_url: url,
            api_url,
            credential,
        })
    }

    /// Whether this provider has deployments to environments.
    pub fn has_deployments(self) -> bool {
        self.0.deployments.is_some()
    }

    /// The deployments notifier for `url` (`--deployments`): each status it is given
    /// is a deployment of the commit to the environment its check names. An error
    /// for a provider without deployments.
    pub fn deployments(
        self,
        client: reqwest::Client,
        url: &GitUrl,
        api_url: Option<&str>,
        credential: impl Into<Credential>,
        environment: &Environment,
    ) -> Result<Arc<dyn Notifier>, GitUrlError> {
        let credential = self.credential_source(&client, url, api_url, credential.into())?;
        self.connect_deployments(
            Connect {
                client,
                git_url: url,
                api_url,
                credential,
            },
            environment,
        )
    }

    /// The deployments notifier for a repository on this provider, on a credential
    /// source its status notifier may share.
    pub fn connect_deployments(
        self,
        c: Connect<'_>,
        environment: &Environment,
    ) -> Result<Arc<dyn Notifier>, GitUrlError> {
        let build = self
            .0
            .deployments
            .ok_or(GitUrlError::NoDeployments(self.0.title))?;
        build(c, environment)
    }

    /// Where a notifier's tokens come from: the one given, or an App's. One source can
    /// serve every notifier of a repository, so that an App's token is minted once.
    pub fn credential_source(
        self,
        client: &reqwest::Client,
        url: &GitUrl,
        api_url: Option<&str>,
        credential: Credential,
    ) -> Result<Arc<dyn CredentialSource>, GitUrlError> {
        Ok(match credential {
            Credential::Token(token) => Arc::new(StaticToken::new(token)),
            Credential::App(app) => {
                let spec = self.0.app.as_ref().ok_or(GitUrlError::NoApps(self.0.title))?;
                (spec.source)(AppConnect {
                    client: client.clone(),
                    git_url: url,
                    api_url,
                    app,
                })?
            }
        })
    }

    /// The notifier for a repository on this provider.
    pub fn connect(self, c: Connect<'_>) -> Result<Arc<dyn Notifier>, GitUrlError> {
        (self.0.build)(c)
    }
}

impl fmt::Display for ProviderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Provider {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Provider {}

impl Hash for Provider {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.name.hash(state);
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Provider({})", self.0.name)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::named(s).ok_or_else(|| {
            format!(
                "unknown provider {:?} ({})",
                s.to_ascii_lowercase(),
                Provider::names()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(word: &str) -> Option<&'static str> {
        Provider::named(word).map(Provider::as_str)
    }

    #[test]
    fn names_and_aliases_name_one_provider() {
        for (word, want) in [
            ("github", Some("github")),
            ("GitHub", Some("github")),
            ("gitlab", Some("gitlab")),
            ("azure-devops", Some("azure-devops")),
            ("azuredevops", Some("azure-devops")),
            ("azure", Some("azure-devops")),
            ("AZDO", Some("azure-devops")),
            ("bitbucket", Some("bitbucket")),
            ("bitbucket-cloud", Some("bitbucket")),
            ("bitbucket-server", Some("bitbucket-server")),
            ("BitbucketServer", Some("bitbucket-server")),
            ("bitbucket-datacenter", Some("bitbucket-server")),
            ("gitea", Some("gitea")),
            ("Forgejo", Some("forgejo")),
            ("auto", None),
            ("sourcehut", None),
            ("", None),
        ] {
            assert_eq!(named(word), want, "{word:?}");
        }
        let mut words: Vec<String> = PROVIDERS
            .iter()
            .flat_map(|s| std::iter::once(&s.name).chain(s.aliases))
            .map(|w| w.to_ascii_lowercase())
            .collect();
        let n = words.len();
        words.sort();
        words.dedup();
        assert_eq!(words.len(), n, "a word names two providers");
        assert!(!words.iter().any(|w| w == "auto"), "auto means detection");
    }

    #[test]
    fn public_hosts_detect_their_provider() {
        for (host, want) in [
            ("github.com", Some("github")),
            ("WWW.GitHub.com", Some("github")),
            ("ssh.github.com", Some("github")),
            ("gitlab.com", Some("gitlab")),
            ("altssh.gitlab.com", Some("gitlab")),
            ("dev.azure.com", Some("azure-devops")),
            ("ssh.dev.azure.com", Some("azure-devops")),
            ("vs-ssh.visualstudio.com", Some("azure-devops")),
            ("acme.visualstudio.com", Some("azure-devops")),
            ("bitbucket.org", Some("bitbucket")),
            ("altssh.bitbucket.org", Some("bitbucket")),
            // Bitbucket Server is self-hosted only: no host names it.
            ("bitbucket.example.com", None),
            ("gitea.com", Some("gitea")),
            ("codeberg.org", Some("forgejo")),
            ("gitea.example.com", None),
            ("visualstudio.com", None),
            ("github.example.com", None),
            ("notgithub.com", None),
        ] {
            assert_eq!(Provider::detect(host).map(Provider::as_str), want, "{host}");
        }
        for a in PROVIDERS {
            for b in PROVIDERS.iter().filter(|b| b.name != a.name) {
                for h in a.hosts.iter().filter(|h| !h.starts_with('*')) {
                    assert!(!b.is_public_host(h), "{h} claimed by {} and {}", a.name, b.name);
                }
            }
        }
    }

    #[test]
    fn every_spec_is_complete_and_its_flags_are_unique() {
        let mut flags = Vec::new();
        for s in PROVIDERS {
            let c = &s.credential;
            // A self-hosted-only provider has no public host.
            assert!(!c.forms.is_empty() && !s.api_url_help.is_empty(), "{}", s.name);
            assert!(s.limits.description > 1, "{}", s.name);
            assert_eq!(c.file_flag, format!("{}-file", c.flag), "{}", s.name);
            flags.extend([c.flag, c.file_flag, c.env, c.file_env]);
            if let Some(a) = &s.app {
                assert_eq!(a.key_file_flag, format!("{}-file", a.key_flag), "{}", s.name);
                flags.extend([
                    a.id_flag,
                    a.id_env,
                    a.key_flag,
                    a.key_env,
                    a.key_file_flag,
                    a.key_file_env,
                    a.installation_flag,
                    a.installation_env,
                ]);
            }
        }
        let n = flags.len();
        flags.sort();
        flags.dedup();
        assert_eq!(flags.len(), n, "two providers share a flag or variable");
        let names = Provider::names();
        assert!(
            names.starts_with("github, gitlab") && names.contains(" or "),
            "{names}"
        );
        assert!(Provider::tightest_description_limit() <= crate::github::DESCRIPTION_LIMIT);
    }

    #[test]
    fn every_form_of_a_url_names_one_repository() {
        let key = |u: &str| {
            let url = GitUrl::parse(u).unwrap();
            Provider::detect(&url.host).unwrap().repo_key(&url).unwrap()
        };
        for same in [
            &[
                "https://github.com/acme/app",
                "git@github.com:Acme/App.git",
                "ssh://git@ssh.github.com:443/acme/app.git",
            ][..],
            &[
                "https://gitlab.com/acme/platform/app.git",
                "git@gitlab.com:acme/platform/app.git",
            ],
            &[
                "https://dev.azure.com/acme/Proj/_git/gitops",
                "git@ssh.dev.azure.com:v3/acme/Proj/gitops",
            ],
            &[
                "https://user@bitbucket.org/acme/app.git",
                "git@bitbucket.org:Acme/App.git",
            ],
            &[
                "https://gitea.com/acme/app.git",
                "git@gitea.com:Acme/App.git",
                "ssh://git@gitea.com:22/acme/app",
            ],
            &[
                "https://codeberg.org/acme/app.git",
                "git@codeberg.org:acme/app.git",
            ],
        ] {
            for u in same {
                assert_eq!(key(u), key(same[0]), "{u}");
            }
        }
        assert_ne!(
            key("https://github.com/acme/app"),
            key("https://github.com/acme/app2")
        );
        assert_ne!(
            key("https://github.com/acme/app"),
            key("https://gitlab.com/acme/app")
        );
        // Self-hosted: the context path of the https form is not in the ssh form.
        let server = |u: &str| {
            let url = GitUrl::parse(u).unwrap();
            crate::bitbucket::server::SPEC.provider().repo_key(&url).unwrap()
        };
        assert_eq!(
            server("https://git.example.com/bitbucket/scm/PROJ/app.git"),
            server("ssh://git@git.example.com:7999/proj/app.git")
        );
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let e = "sourcehut".parse::<Provider>().unwrap_err();
        assert!(e.contains("github, gitlab") && e.contains("azure-devops"), "{e}");
    }
}
