//! Object patterns: which Flux objects a `--config` repository takes. Kept apart from
//! the config so that mapping can use them without depending on the config.

use crate::fluxv2::event::ObjectRef;
use serde::Deserialize;

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
}
