//! The `--config` file section: which Flux objects' statuses go to which repository,
//! for a cluster whose objects come from many repositories on several providers.
//!
//! ```yaml
//! repos:
//!   - gitUrl: https://github.com/acme/apps
//!     objects:
//!       - { kind: Kustomization, namespace: apps, name: "*" }
//!   - gitUrl: git@gitlab.example.com:platform/infra.git
//!     provider: gitlab
//!     apiUrl: https://gitlab.example.com
//!     tokenFile: /etc/flux-status/gitlab-token
//!     objects:
//!       - { kind: "HelmRelease", namespace: "infra-*" }
//! ```
//! Rules are tried in order; the first repository with a matching object pattern
//! wins. Objects no rule matches go to `--git-url`, if given.

use super::Problems;
use super::credentials::Credentials;
use super::target::{ProviderChoice, Repo, Target, check_api_url};
use crate::credentials::{SecretSource, load};
use crate::repos::ObjectPattern;
use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub repos: Vec<RepoEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RepoEntry {
    pub git_url: String,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub api_url: Option<String>,
    /// A file holding this repository's credential.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding this repository's credential.
    #[serde(default)]
    pub token_env: Option<String>,
    pub objects: Vec<ObjectPattern>,
}

/// One rule: a repository and the objects whose statuses go there.
pub struct Rule {
    pub target: Target,
    pub objects: Vec<ObjectPattern>,
    /// Where it was given, for messages: `--config repos[2].gitUrl`.
    pub at: String,
}

/// Reads and parses the file; a syntax error says its line and column.
pub fn load_file(path: &Path, problems: &mut Problems) -> Option<File> {
    let at = format!("--config {}", path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|e| problems.push(&at, e.to_string()))
        .ok()?;
    serde_norway::from_str(&text)
        .map_err(|e| problems.push(&at, e.to_string()))
        .ok()
}

impl File {
    /// Every entry checked; each problem names its entry and field.
    pub fn validate(self, shared: &Credentials, dry_run: bool, problems: &mut Problems) -> Vec<Rule> {
        let mut rules = Vec::new();
        for (i, r) in self.repos.into_iter().enumerate() {
            let at = format!("--config repos[{i}]");
            let field = |name: &str| format!("{at}.{name}");
            let choice = match r.provider.as_deref() {
                None => ProviderChoice::Auto,
                Some(name) => name.parse().unwrap_or_else(|e: String| {
                    problems.push(field("provider"), e);
                    ProviderChoice::Auto
                }),
            };
            let own = match (&r.token_file, &r.token_env) {
                (Some(_), Some(_)) => {
                    problems.push(field("tokenFile"), "give tokenFile or tokenEnv, not both");
                    None
                }
                (Some(f), None) => load("token", SecretSource::new(None, Some(f.clone()), "tokenFile"))
                    .unwrap_or_else(|e| {
                        problems.push(field("tokenFile"), e);
                        None
                    }),
                (None, Some(var)) => match std::env::var(var) {
                    Ok(v) if !v.trim().is_empty() => Some(SecretString::from(v.trim().to_string())),
                    _ => {
                        problems.push(
                            field("tokenEnv"),
                            format!("environment variable {var} is not set"),
                        );
                        None
                    }
                },
                (None, None) => None,
            };
            check_api_url(&field("apiUrl"), r.api_url.as_deref(), problems);
            if r.objects.is_empty() {
                problems.push(field("objects"), "must list at least one pattern");
            }
            let url_at = field("gitUrl");
            let repo = Repo {
                at: &url_at,
                raw_url: &r.git_url,
                choice,
                api_url: r.api_url,
            };
            // A repository's own token goes before the shared credentials, an App included.
            let own = own.map(notifiers::Credential::Token);
            if let Some(target) = repo.resolve(|p| own.or_else(|| shared.get(p)), dry_run, problems) {
                rules.push(Rule {
                    target,
                    objects: r.objects,
                    at: url_at,
                });
            }
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_errors() {
        let r: Result<File, _> =
            serde_norway::from_str("repos:\n  - gitUrl: x\n    objects: []\n    tokn: y\n");
        assert!(r.unwrap_err().to_string().contains("unknown field"));
    }
}

#[cfg(test)]
mod file_tests {
    use crate::config::{Args, Problem};
    use clap::Parser;

    /// `--config` with `yaml`, plus `extra` flags; the problems found, or none.
    fn problems(name: &str, yaml: &str, extra: &[&str]) -> Vec<Problem> {
        let dir = std::env::temp_dir().join(format!("flux-status-repos-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("repos.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config = format!("--config={}", path.display());
        let list = ["flux-status", &config, "--no-persistence"]
            .into_iter()
            .chain(extra.iter().copied());
        match Args::try_parse_from(list).unwrap().validate() {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    fn at(found: &[Problem]) -> Vec<&str> {
        found.iter().map(|p| p.at.as_str()).collect()
    }

    #[test]
    fn every_problem_names_its_entry_and_field() {
        let yaml = "repos:
  - gitUrl: https://git.example.com/a/b
    objects: [{kind: Kustomization}]
  - gitUrl: https://github.com/a/b
    tokenEnv: FLUX_STATUS_TEST_NOT_SET_ANYWHERE
    objects: []
  - gitUrl: https://github.com/a/c
    provider: sourcehut
    apiUrl: ftp://nowhere
    tokenFile: /nonexistent/flux-status-token
    objects: [{name: x}]
";
        let found = problems("many", yaml, &["--queue-capacity=0", "--github-token=t"]);
        assert_eq!(
            at(&found),
            [
                "--config repos[0].gitUrl",
                "--config repos[1].tokenEnv",
                "--config repos[1].objects",
                "--config repos[2].provider",
                "--config repos[2].tokenFile",
                "--config repos[2].apiUrl",
                "--queue-capacity",
            ],
            "{found:#?}"
        );
        assert!(
            found[0].message.contains("cannot tell which provider"),
            "{}",
            found[0]
        );
        assert!(found[3].message.contains("auto, github, gitlab"), "{}", found[3]);
    }

    #[test]
    fn a_syntax_error_says_where() {
        let found = problems("syntax", "repos:\n  - gitUrl: [\n", &[]);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].at.starts_with("--config "), "{}", found[0]);
        let message = &found[0].message;
        assert!(
            message.contains("repos[0].gitUrl") && message.contains("line 2 column 13"),
            "{message}"
        );
    }

    #[test]
    fn every_alias_of_the_provider_list_is_accepted() {
        for word in ["azure-devops", "azuredevops", "azure", "azdo", "AZDO", "auto"] {
            let yaml = format!(
                "repos:\n  - gitUrl: https://dev.azure.com/o/p/_git/r\n    provider: {word}\n    objects: [{{name: x}}]\n"
            );
            assert_eq!(problems(word, &yaml, &["--azdo-pat=t"]), [], "{word}");
        }
    }

    #[test]
    fn a_repository_given_twice_is_refused_whatever_its_url_form() {
        let yaml = "repos:
  - gitUrl: https://github.com/acme/apps
    objects: [{kind: Kustomization}]
  - gitUrl: https://gitlab.com/acme/apps
    objects: [{kind: Kustomization}]
  - gitUrl: git@github.com:Acme/Apps.git
    objects: [{kind: HelmRelease}]
  - gitUrl: ssh://git@ssh.dev.azure.com/v3/acme/p/infra
    objects: [{kind: HelmRelease}]
";
        let creds = ["--github-token=t", "--gitlab-token=t", "--azdo-pat=t"];
        let found = problems("dups", yaml, &creds);
        assert_eq!(at(&found), ["--config repos[2].gitUrl"], "{found:#?}");
        assert!(
            found[0].message.contains("--config repos[0].gitUrl"),
            "{}",
            found[0]
        );

        let mut with_git_url = creds.to_vec();
        with_git_url.push("--git-url=https://dev.azure.com/acme/p/_git/infra");
        let found = problems("dups-git-url", yaml, &with_git_url);
        assert_eq!(
            at(&found),
            ["--config repos[2].gitUrl", "--config repos[3].gitUrl"],
            "{found:#?}"
        );
        assert!(found[1].message.contains("--git-url"), "{}", found[1]);

        // A dry run has no credentials, and still refuses.
        let found = problems("dups-dry", yaml, &["--dry-run"]);
        assert_eq!(at(&found), ["--config repos[2].gitUrl"], "{found:#?}");
        // Distinct repositories pass.
        let distinct = "repos:
  - gitUrl: https://github.com/acme/apps
    objects: [{kind: Kustomization}]
  - gitUrl: https://github.com/acme/infra
    objects: [{kind: Kustomization}]
";
        assert_eq!(problems("distinct", distinct, &["--github-token=t"]), []);
    }
}
