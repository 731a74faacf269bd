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
    /// Where it was given, for messages: `--config repos[2]`.
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
            let repo = Repo {
                at: &field("gitUrl"),
                raw_url: &r.git_url,
                choice,
                api_url: r.api_url,
            };
            if let Some(target) = repo.resolve(|p| own.or_else(|| shared.get(p)), dry_run, problems) {
                rules.push(Rule {
                    target,
                    objects: r.objects,
                    at,
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
