//! `--config`: which Flux objects' statuses go to which repository, for a cluster
//! whose objects come from many repositories on several providers.
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

use crate::config::ProviderChoice;
use crate::fluxv2::event::ObjectRef;
use serde::Deserialize;
use std::path::{Path, PathBuf};

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

/// Globs (`*` matches any run of characters) on a Flux object; an absent field
/// matches anything. Kinds compare without regard to case.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObjectPattern {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative wildcard match with backtracking to the last '*'.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl ObjectPattern {
    pub fn matches(&self, o: &ObjectRef) -> bool {
        let field = |pat: &Option<String>, value: &str| pat.as_deref().is_none_or(|p| glob(p, value));
        self.kind
            .as_deref()
            .is_none_or(|k| glob(&k.to_ascii_lowercase(), &o.kind.to_ascii_lowercase()))
            && field(&self.namespace, &o.namespace)
            && field(&self.name, &o.name)
    }
}

pub fn load(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    serde_norway::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))
}

pub fn provider_choice(name: Option<&str>) -> Result<ProviderChoice, String> {
    match name.map(str::to_ascii_lowercase).as_deref() {
        None | Some("auto") => Ok(ProviderChoice::Auto),
        Some("github") => Ok(ProviderChoice::Github),
        Some("gitlab") => Ok(ProviderChoice::Gitlab),
        Some("azure-devops") | Some("azuredevops") => Ok(ProviderChoice::AzureDevops),
        Some(other) => Err(format!(
            "unknown provider {other:?} (github, gitlab, azure-devops)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj<'a>(kind: &'a str, ns: &'a str, name: &'a str) -> ObjectRef<'a> {
        ObjectRef {
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
            api_version: "".into(),
        }
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "apps", true),
            ("apps", "apps", true),
            ("apps", "apps2", false),
            ("app*", "apps", true),
            ("*-prod", "team-a-prod", true),
            ("*-prod", "team-a-prod-2", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob(p, t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn patterns_match_objects() {
        let p = ObjectPattern {
            kind: Some("kustomization".into()),
            namespace: Some("apps".into()),
            name: None,
        };
        assert!(p.matches(&obj("Kustomization", "apps", "x")));
        assert!(!p.matches(&obj("HelmRelease", "apps", "x")));
        assert!(!p.matches(&obj("Kustomization", "infra", "x")));
        let any = ObjectPattern {
            kind: None,
            namespace: None,
            name: None,
        };
        assert!(any.matches(&obj("Anything", "", "")));
    }

    #[test]
    fn unknown_fields_are_errors() {
        let r: Result<File, _> =
            serde_norway::from_str("repos:\n  - gitUrl: x\n    objects: []\n    tokn: y\n");
        assert!(r.unwrap_err().to_string().contains("unknown field"));
    }
}
