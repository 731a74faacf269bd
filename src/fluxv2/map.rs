//! Flux v2 event → status. Pure: no I/O, no clock.
//!
//! One check per Flux object (`flux-status/<instance>/<kind>/<namespace>/<name>` by
//! default), pending while it progresses, succeeded when reconciled, failed with the
//! reason and the first line of the message. Descriptions are built from the reason,
//! never from durations in the message, so notification-controller's re-sent
//! success (every interval) is the same status and costs no API call.

use super::event::{Event, ObjectRef, parse_revision, revision_branch};
use crate::mapping::{Mapped, RevisionError, Skip};
use crate::update::{Deploy, RepoId, StatusUpdate};
use notifiers::{Check, CommitStatus, State};
use std::sync::Arc;

pub const DEFAULT_CHECK_TEMPLATE: &str = "flux-status/{instance}/{kind}/{namespace}/{name}";

/// Whether a `--config` rule covers an object. Passed in by the daemon, so that
/// mapping does not depend on how the rules are read (`repos` sits above the slices).
pub type ObjectMatch = Arc<dyn Fn(&ObjectRef<'_>) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct V2Context {
    /// `--config` rules, in order: the first that matches the object wins.
    pub rules: Vec<(ObjectMatch, RepoId)>,
    /// `--git-url`, for objects no rule matches.
    pub fallback: Option<RepoId>,
    pub instance: String,
    pub check_template: CheckTemplate,
    pub target_url: Option<String>,
}

/// `--check-template`, split once into text and placeholders: `{instance}`, `{kind}`
/// (lowercase), `{namespace}`, `{name}`, and `{cluster}` (the `cluster` metadata an
/// Alert can add, else the instance). Any other brace is text.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckTemplate(Vec<Part>);

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Instance,
    Cluster,
    Kind,
    Namespace,
    Name,
}

impl From<&str> for CheckTemplate {
    fn from(template: &str) -> CheckTemplate {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            text.push_str(&rest[..open]);
            rest = &rest[open..];
            let placeholder = rest.find('}').map(|close| &rest[1..close]);
            let part = match placeholder {
                Some("instance") => Part::Instance,
                Some("cluster") => Part::Cluster,
                Some("kind") => Part::Kind,
                Some("namespace") => Part::Namespace,
                Some("name") => Part::Name,
                // Not a placeholder: the brace is text.
                _ => {
                    text.push('{');
                    rest = &rest[1..];
                    continue;
                }
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
            rest = &rest[placeholder.map_or(0, str::len) + 2..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        CheckTemplate(parts)
    }
}

/// `ReconciliationSucceeded` → `Reconciliation succeeded`.
pub fn reason_words(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len() + 8);
    let mut chars = reason.chars().peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        let boundary = c.is_uppercase()
            && prev.is_some_and(|p| {
                p.is_lowercase() || (p.is_uppercase() && chars.peek().is_some_and(|n| n.is_lowercase()))
            });
        if boundary {
            out.push(' ');
        }
        if c.is_ascii() {
            // Flux's reasons are ASCII: the same mapping without Unicode's case tables.
            out.push(if prev.is_none() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
        } else {
            let mut lower = c.to_lowercase();
            if prev.is_none() {
                // Sentence case: the first letter of the lowercased text goes up again.
                out.extend(lower.next().into_iter().flat_map(char::to_uppercase));
            }
            out.extend(lower);
        }
        prev = Some(c);
    }
    out
}

/// Our state for an event, or why it carries none.
fn state(ev: &Event) -> Result<State, Skip> {
    let reason: &str = &ev.reason;
    match &*ev.severity {
        "error" => Ok(State::Failed),
        "info"
            if matches!(
                reason,
                "Progressing" | "ProgressingWithRetry" | "DependencyNotReady"
            ) =>
        {
            Ok(State::Pending)
        }
        "info"
            if ev.meta("commit_status") == Some("update")
                || matches!(
                    reason,
                    "ReconciliationSucceeded" | "InstallSucceeded" | "UpgradeSucceeded" | "TestSucceeded"
                ) =>
        {
            Ok(State::Succeeded)
        }
        _ => Err(Skip::NotAStatusEvent),
    }
}

impl V2Context {
    /// The repository whose statuses an object's events become.
    pub fn repo_for(&self, o: &ObjectRef) -> Option<RepoId> {
        self.rules
            .iter()
            .find(|(matches, _)| matches(o))
            .map(|(_, repo)| repo.clone())
            .or_else(|| self.fallback.clone())
    }
}

pub fn check_name(ev: &Event, ctx: &V2Context) -> Check {
    let o = &ev.involved_object;
    let mut name = String::with_capacity(64);
    for part in &ctx.check_template.0 {
        match part {
            Part::Text(text) => name.push_str(text),
            Part::Instance => name.push_str(&ctx.instance),
            Part::Cluster => name.push_str(ev.meta("cluster").unwrap_or(&ctx.instance)),
            Part::Kind => name.extend(o.kind.chars().map(|c| c.to_ascii_lowercase())),
            Part::Namespace => name.push_str(&o.namespace),
            Part::Name => name.push_str(&o.name),
        }
    }
    Check::new(name)
}

pub fn map(ev: &Event, ctx: &V2Context) -> Mapped {
    let state = match state(ev) {
        Ok(s) => s,
        Err(skip) => return Mapped::skipped(skip),
    };
    let Some(repo) = ctx.repo_for(&ev.involved_object) else {
        return Mapped::skipped(Skip::NoRepo);
    };
    let Some((_, revision)) = ev.revision() else {
        return Mapped::skipped(Skip::Revision(RevisionError::Missing));
    };
    let sha = match parse_revision(revision) {
        Ok(sha) => sha,
        Err(e) => return Mapped::skipped(Skip::Revision(e)),
    };
    let words = reason_words(&ev.reason);
    let description = match state {
        State::Failed => {
            let first_line = ev
                .message
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            if first_line.is_empty() {
                words
            } else {
                format!("{words}: {first_line}")
            }
        }
        _ => words,
    };
    let check = check_name(ev, ctx);
    let o = &ev.involved_object;
    Mapped {
        updates: vec![StatusUpdate {
            repo,
            deploy: Some(Deploy::Part {
                part: check.clone(),
                label: format!("{} {}/{}", o.kind, o.namespace, o.name),
                state,
                awaits_rollout: false,
                git_ref: revision_branch(revision).map(str::to_string),
            }),
            status: CommitStatus {
                sha,
                check,
                state,
                description,
                target_url: ctx.target_url.clone(),
                summary: Some(super::report::summary(ev, revision, state)),
                git_ref: None,
            },
        }],
        skips: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fluxv2::event::parse;

    fn ctx() -> V2Context {
        V2Context {
            rules: Vec::new(),
            fallback: Some("github.com/my-org/fleet".into()),
            instance: "prod".into(),
            check_template: DEFAULT_CHECK_TEMPLATE.into(),
            target_url: None,
        }
    }

    fn fixture(path: &str) -> Event<'static> {
        let p = format!("{}/tests/fixtures/v2/{path}", env!("CARGO_MANIFEST_DIR"));
        // The event borrows its body, which each test keeps to its end.
        let body: &'static [u8] = Vec::leak(std::fs::read(&p).unwrap());
        parse(body).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    const SHA: &str = "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1";

    /// (fixture name, expected (sha, check, state, description) or the skip label)
    /// Ok((sha, check, state, description)), Err("") for "one status", Err(label) for a skip.
    type Want = Result<(&'static str, &'static str, State, &'static str), &'static str>;

    fn expectations() -> Vec<(&'static str, Want)> {
        let ks = "flux-status/prod/kustomization/flux-system/apps";
        vec![
            (
                "kustomization-progressing-apply.json",
                Ok((SHA, ks, State::Pending, "Progressing")),
            ),
            (
                "kustomization-progressing-health-check-passed.json",
                Ok((SHA, ks, State::Pending, "Progressing")),
            ),
            (
                "kustomization-dependency-not-ready.json",
                Ok((SHA, ks, State::Pending, "Dependency not ready")),
            ),
            (
                "kustomization-reconciliation-succeeded.json",
                Ok((SHA, ks, State::Succeeded, "Reconciliation succeeded")),
            ),
            (
                "kustomization-oci-origin-revision-succeeded.json",
                Ok((
                    "450796ddb2ab6724ee1cc32a4be56da032d1cca0",
                    ks,
                    State::Succeeded,
                    "Reconciliation succeeded",
                )),
            ),
            ("kustomization-build-failed.json", Err("")),
            ("kustomization-health-check-failed.json", Err("")),
            ("kustomization-reconciliation-failed-apply.json", Err("")),
            ("kustomization-reconciliation-failed-html-escape.json", Err("")),
            ("helmrelease-install-succeeded.json", Err("chart_version")),
            ("helmrelease-upgrade-failed.json", Err("chart_version")),
            ("helmrelease-upgrade-succeeded-commit-annotation.json", Err("")),
            ("gitrepository-new-artifact.json", Err("not_a_status_event")),
        ]
    }

    #[test]
    fn forwarded_and_raw_fixtures_map_alike() {
        for (name, want) in expectations() {
            let fwd = map(&fixture(&format!("forwarded/{name}")), &ctx());
            let raw = map(&fixture(&format!("controller-to-nc/{name}")), &ctx());
            assert_eq!(fwd, raw, "{name}: forwarded and raw shapes differ");
            match want {
                Ok((sha, check, state, desc)) => {
                    let u = &fwd.updates[0].status;
                    assert_eq!(
                        (u.sha.as_str(), u.check.as_str(), u.state, u.description.as_str()),
                        (sha, check, state, desc),
                        "{name}"
                    );
                }
                Err("") => assert_eq!(fwd.updates.len(), 1, "{name}"),
                Err(label) => {
                    assert!(fwd.updates.is_empty(), "{name}");
                    assert_eq!(fwd.skips[0].label(), label, "{name}");
                }
            }
        }
    }

    #[test]
    fn the_object_speaks_for_its_commits_deployment_with_its_branch() {
        let u = &map(
            &fixture("forwarded/kustomization-health-check-failed.json"),
            &ctx(),
        )
        .updates[0];
        let Some(Deploy::Part {
            part,
            label,
            state,
            awaits_rollout,
            git_ref,
        }) = &u.deploy
        else {
            panic!("{:?}", u.deploy)
        };
        assert_eq!(part, &u.status.check);
        assert_eq!((*state, *awaits_rollout), (State::Failed, false));
        assert_eq!(label, "Kustomization flux-system/apps");
        assert_eq!(git_ref.as_deref(), Some("main"));
        assert_eq!(u.status.git_ref, None, "a status has no use for the branch");
    }

    #[test]
    fn failures_carry_reason_and_first_line() {
        let u = &map(
            &fixture("forwarded/kustomization-health-check-failed.json"),
            &ctx(),
        )
        .updates[0]
            .status;
        assert_eq!(u.state, State::Failed);
        assert!(
            u.description.starts_with("Health check failed: "),
            "{}",
            u.description
        );
        assert!(!u.description.contains('\n'));
        let hr = &map(
            &fixture("forwarded/helmrelease-upgrade-succeeded-commit-annotation.json"),
            &ctx(),
        )
        .updates[0]
            .status;
        assert_eq!(
            (hr.state, hr.check.as_str()),
            (State::Succeeded, "flux-status/prod/helmrelease/apps/podinfo")
        );
    }

    #[test]
    fn rules_route_objects_to_repositories() {
        let mut c = ctx();
        // `{ kind: HelmRelease }` and `{ namespace: 'flux-*', name: apps }`; the patterns
        // themselves are `repos`' (tested there).
        let helm: ObjectMatch = Arc::new(|o| o.kind.eq_ignore_ascii_case("helmrelease"));
        let infra: ObjectMatch = Arc::new(|o| o.namespace.starts_with("flux-") && o.name == "apps");
        c.rules = vec![
            (helm, "gitlab.com/acme/charts".into()),
            (infra, "dev.azure.com/acme/infra".into()),
        ];
        let ks = map(
            &fixture("forwarded/kustomization-reconciliation-succeeded.json"),
            &c,
        );
        assert_eq!(&*ks.updates[0].repo, "dev.azure.com/acme/infra");
        let hr = map(
            &fixture("forwarded/helmrelease-upgrade-succeeded-commit-annotation.json"),
            &c,
        );
        assert_eq!(&*hr.updates[0].repo, "gitlab.com/acme/charts");
        c.rules.truncate(1);
        let ks = map(
            &fixture("forwarded/kustomization-reconciliation-succeeded.json"),
            &c,
        );
        assert_eq!(
            &*ks.updates[0].repo, "github.com/my-org/fleet",
            "unmatched objects go to --git-url"
        );
        c.fallback = None;
        let ks = map(
            &fixture("forwarded/kustomization-reconciliation-succeeded.json"),
            &c,
        );
        assert_eq!(ks.skips, vec![Skip::NoRepo]);
    }

    #[test]
    fn reasons_become_words() {
        for (reason, want) in [
            ("ReconciliationSucceeded", "Reconciliation succeeded"),
            ("HealthCheckFailed", "Health check failed"),
            ("InvalidCELExpression", "Invalid cel expression"),
            ("BuildFailed", "Build failed"),
            ("ÉtatInconnuÀVoir", "État inconnu à voir"),
            ("İndexFailed", "I\u{307}ndex failed"),
            ("", ""),
        ] {
            assert_eq!(reason_words(reason), want, "{reason}");
        }
    }

    #[test]
    fn check_template_and_missing_revision() {
        let mut c = ctx();
        c.check_template = "deploy/{cluster}/{name}".into();
        let u = &map(
            &fixture("forwarded/kustomization-reconciliation-succeeded.json"),
            &c,
        )
        .updates[0];
        assert_eq!(
            u.status.check.as_str(),
            "deploy/prod-eu-1/apps",
            "cluster from the Alert's metadata"
        );
        c.check_template = "{{instance}/{kind}/{namespace}/{name}/{unknown}/{name".into();
        assert_eq!(
            check_name(
                &fixture("forwarded/kustomization-reconciliation-succeeded.json"),
                &c
            )
            .as_str(),
            "{prod/kustomization/flux-system/apps/{unknown}/{name",
            "every placeholder once, other braces kept as text"
        );
        for (template, want) in [
            ("", ""),
            ("{", "{"),
            ("}{name}{", "}apps{"),
            ("{}{name}}", "{}apps}"),
            ("{kind}{kind}", "kustomizationkustomization"),
            ("a{{{name}}}b", "a{{apps}}b"),
        ] {
            c.check_template = template.into();
            let ev = fixture("forwarded/kustomization-reconciliation-succeeded.json");
            assert_eq!(check_name(&ev, &c).as_str(), want, "{template:?}");
        }
        let ev = parse(br#"{"involvedObject":{"kind":"Kustomization","name":"a","namespace":"n"},"severity":"error","reason":"ArtifactFailed","message":"x"}"#).unwrap();
        assert_eq!(
            map(&ev, &ctx()).skips,
            vec![Skip::Revision(RevisionError::Missing)]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// What the fuzz target does: whatever decodes, from any bytes, maps without
        /// a panic.
        #[test]
        fn any_decoded_event_maps(body in crate::fluxv2::event::tests::body()) {
            if let Ok(ev) = parse(&body) {
                let _ = map(&ev, &ctx());
            }
        }
    }
}
