//! fluxd v1 event → statuses. Pure: no I/O, no clock.

use super::event::{ResourceError, SyncEvent, V1Event};
use crate::mapping::{Mapped, Skip, name_a_few};
use crate::update::{Deploy, RepoId, StatusUpdate};
use notifiers::{Check, CommitStatus, Sha, State};

/// How many failed resources a description names before "and N more".
const NAMED_RESOURCES: usize = 3;

#[derive(Debug, Clone)]
pub struct V1Context {
    pub repo: RepoId,
    /// `--instance`, named in a check run's summary.
    pub instance: String,
    /// `flux-status/<instance>/sync`, built once.
    pub check: Check,
    /// Also status up to this many older commits of a sync's range.
    pub status_range: usize,
    pub target_url: Option<String>,
    /// `--poll-workloads`: a sync that succeeded is deployed once its workloads
    /// rolled out, so the workload check decides its deployment.
    pub rollout_checked: bool,
}

pub fn sync_check(instance: &str) -> Check {
    Check::new(format!("flux-status/{instance}/sync"))
}

pub fn map(event: &V1Event, ctx: &V1Context) -> Mapped {
    match event {
        V1Event::Sync(sync) => map_sync(sync, ctx),
        _ => Mapped::skipped(Skip::NotAStatusEvent),
    }
}

fn map_sync(sync: &SyncEvent, ctx: &V1Context) -> Mapped {
    if !sync.has_metadata {
        return Mapped::skipped(Skip::NoMetadata);
    }
    let Some(head) = sync.commits.first() else {
        return Mapped::skipped(Skip::NoCommits);
    };
    let head_sha = match Sha::parse(&head.revision) {
        Ok(sha) => sha,
        Err(error) => {
            return Mapped::skipped(Skip::InvalidSha {
                revision: head.revision.clone(),
                error,
            });
        }
    };
    let (state, description) = if sync.errors.is_empty() {
        (State::Succeeded, "Sync succeeded".to_string())
    } else {
        (State::Failed, failure_description(&sync.errors))
    };
    let check = &ctx.check;
    let summary = super::report::sync_summary(&ctx.instance, sync, state);
    let status = |sha: Sha, description: String| StatusUpdate {
        repo: ctx.repo.clone(),
        deploy: None,
        status: CommitStatus {
            sha,
            check: check.clone(),
            state,
            description,
            target_url: ctx.target_url.clone(),
            summary: Some(summary.clone()),
            git_ref: None,
        },
    };
    let mut mapped = Mapped::default();
    // The initial sync lists the whole history: statusing it would be thousands of
    // writes on commits nobody is looking at.
    let range = if sync.initial_sync { 0 } else { ctx.status_range };
    for older in sync.commits.iter().skip(1).take(range) {
        match Sha::parse(&older.revision) {
            Ok(sha) if sha != head_sha => mapped.updates.push(status(
                sha,
                format!("{description} (as part of {})", head_sha.short()),
            )),
            Ok(_) => {}
            Err(error) => mapped.skips.push(Skip::InvalidSha {
                revision: older.revision.clone(),
                error,
            }),
        }
    }
    // The environment runs the head; the older commits are in it, not deployed apart.
    let mut head = status(head_sha, description);
    head.deploy = Some(Deploy::Part {
        part: check.clone(),
        label: "fluxd".into(),
        state,
        awaits_rollout: state == State::Succeeded && ctx.rollout_checked,
        git_ref: None,
    });
    mapped.updates.insert(0, head);
    mapped
}

/// Names the failed resources (a few, then a count) and quotes the first error,
/// most useful first, since providers cut descriptions short.
fn failure_description(errors: &[ResourceError]) -> String {
    let ids: Vec<&str> = errors
        .iter()
        .map(|e| {
            if e.id.is_empty() {
                e.path.as_str()
            } else {
                e.id.as_str()
            }
        })
        .collect();
    let noun = if ids.len() == 1 { "resource" } else { "resources" };
    let mut s = format!(
        "Sync failed for {} {noun}: {}",
        ids.len(),
        name_a_few(&ids, NAMED_RESOURCES)
    );
    if let Some(first) = errors.iter().find(|e| !e.error.is_empty()) {
        s.push_str(" — ");
        s.push_str(first.error.trim());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fluxv1::event::parse;
    use notifiers::ShaError;

    fn ctx(range: usize) -> V1Context {
        V1Context {
            repo: "github.com/o/r".into(),
            instance: "dev".into(),
            check: sync_check("dev"),
            status_range: range,
            target_url: None,
            rollout_checked: false,
        }
    }

    fn fixture(name: &str) -> V1Event {
        let body = crate::mapping::fixture(&format!("v1/{name}"));
        parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// (sha, check, state, description) of one update.
    type Row = (String, String, State, String);

    fn summary(m: &Mapped) -> Vec<Row> {
        m.updates
            .iter()
            .map(|u| {
                (
                    u.status.sha.to_string(),
                    u.status.check.to_string(),
                    u.status.state,
                    u.status.description.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn fixtures_map_to_expected_statuses() {
        let ok = |sha: &str| {
            vec![(
                sha.to_string(),
                "flux-status/dev/sync".to_string(),
                State::Succeeded,
                "Sync succeeded".to_string(),
            )]
        };
        let pvc_error = "running kubectl: The PersistentVolumeClaim \"test\" is invalid: spec: Forbidden: field is immutable after creation";
        let table: Vec<(&str, Vec<Row>, Vec<Skip>)> = vec![
            (
                "event-sync.json",
                ok("9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1"),
                vec![],
            ),
            (
                "event-sync.compact.json",
                ok("9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1"),
                vec![],
            ),
            (
                "event-sync-initial.json",
                ok("9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1"),
                vec![],
            ),
            (
                "fluxcloud-sync.json",
                ok("810c2e6f22ac5ab7c831fe0dd697fe32997b098f"),
                vec![],
            ),
            (
                "fluxcloud-sync-update-policy.json",
                ok("d644e1a05db6881abf0cdb78299917b95f442036"),
                vec![],
            ),
            (
                "event-sync-errors.json",
                vec![(
                    "4997efcd4ac6255604d0d44eeb7085c5b0eb9d48".into(),
                    "flux-status/dev/sync".into(),
                    State::Failed,
                    format!("Sync failed for 1 resource: default:persistentvolumeclaim/test — {pvc_error}"),
                )],
                vec![],
            ),
            (
                "fluxcloud-sync-errors.json",
                vec![(
                    "4997efcd4ac6255604d0d44eeb7085c5b0eb9d48".into(),
                    "flux-status/dev/sync".into(),
                    State::Failed,
                    format!(
                        "Sync failed for 2 resources: default:persistentvolumeclaim/test, default:persistentvolumeclaim/lol — {pvc_error}"
                    ),
                )],
                vec![],
            ),
            (
                "flux-status-test-sync.json",
                vec![],
                vec![Skip::InvalidSha {
                    revision: "foobar".into(),
                    error: ShaError::NotHex,
                }],
            ),
            ("event-commit-policy.json", vec![], vec![Skip::NotAStatusEvent]),
            (
                "fluxcloud-commit-policy.json",
                vec![],
                vec![Skip::NotAStatusEvent],
            ),
            ("event-release.json", vec![], vec![Skip::NotAStatusEvent]),
            ("event-autorelease.json", vec![], vec![Skip::NotAStatusEvent]),
            (
                "fluxcloud-autorelease-pre-1.12.json",
                vec![],
                vec![Skip::NotAStatusEvent],
            ),
        ];
        for (name, want_updates, want_skips) in table {
            let m = map(&fixture(name), &ctx(0));
            assert_eq!(summary(&m), want_updates, "{name}");
            assert_eq!(m.skips, want_skips, "{name}");
        }
    }

    #[test]
    fn status_range_covers_older_commits_but_never_the_initial_sync() {
        let m = map(&fixture("event-sync.json"), &ctx(5));
        let shas: Vec<_> = summary(&m).into_iter().map(|(s, _, _, d)| (s, d)).collect();
        assert_eq!(
            shas,
            vec![
                (
                    "9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1".into(),
                    "Sync succeeded".into()
                ),
                (
                    "2b6bf5d1a0f6f0c3c4c1f6f2c1bb0f4b9b2f7e3a".into(),
                    "Sync succeeded (as part of 9f2c1bb)".into()
                ),
            ]
        );
        let m = map(&fixture("event-sync-initial.json"), &ctx(5));
        assert_eq!(m.updates.len(), 1, "initial sync statuses the head only");
        let m = map(&fixture("event-sync-initial.json"), &ctx(0));
        assert_eq!(m.updates.len(), 1);
    }

    #[test]
    fn only_the_head_speaks_for_the_deployment_and_a_success_awaits_its_rollout() {
        let deploy = |name: &str, rollout_checked: bool| -> Vec<Option<Deploy>> {
            let ctx = V1Context {
                rollout_checked,
                ..ctx(5)
            };
            map(&fixture(name), &ctx)
                .updates
                .into_iter()
                .map(|u| u.deploy)
                .collect()
        };
        let part = |state, awaits_rollout| {
            Some(Deploy::Part {
                part: sync_check("dev"),
                label: "fluxd".into(),
                state,
                awaits_rollout,
                git_ref: None,
            })
        };
        assert_eq!(
            deploy("event-sync.json", true),
            vec![part(State::Succeeded, true), None]
        );
        assert_eq!(deploy("event-sync.json", false)[0], part(State::Succeeded, false));
        assert_eq!(
            deploy("event-sync-errors.json", true)[0],
            part(State::Failed, false)
        );
    }

    #[test]
    fn status_range_is_bounded_by_n() {
        let m = map(&fixture("event-sync-initial.json"), &ctx(0));
        assert_eq!(m.updates.len(), 1);
        let mut ev = fixture("event-sync-initial.json");
        if let V1Event::Sync(s) = &mut ev {
            s.initial_sync = false;
        }
        assert_eq!(map(&ev, &ctx(1)).updates.len(), 2);
        assert_eq!(map(&ev, &ctx(2)).updates.len(), 3);
        assert_eq!(map(&ev, &ctx(50)).updates.len(), 3);
    }

    #[test]
    fn events_without_usable_commits_are_skipped_with_a_reason() {
        let cases: [(&[u8], Skip); 3] = [
            (br#"{"type":"sync"}"#, Skip::NoMetadata),
            (br#"{"type":"sync","metadata":{"commits":[]}}"#, Skip::NoCommits),
            (
                br#"{"type":"sync","metadata":{"commits":[{"revision":"a1afe26"}]}}"#,
                Skip::InvalidSha {
                    revision: "a1afe26".into(),
                    error: ShaError::Length(7),
                },
            ),
        ];
        for (body, want) in cases {
            let m = map(&parse(body).unwrap(), &ctx(0));
            assert!(m.updates.is_empty());
            assert_eq!(m.skips, vec![want]);
        }
    }

    #[test]
    fn many_failures_are_summarised() {
        let errors: Vec<ResourceError> = (0..5)
            .map(|i| ResourceError {
                id: format!("ns:deployment/d{i}"),
                path: String::new(),
                error: String::new(),
            })
            .collect();
        assert_eq!(
            failure_description(&errors),
            "Sync failed for 5 resources: ns:deployment/d0, ns:deployment/d1, ns:deployment/d2 and 2 more"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Whatever the decoder accepts, from any bytes, maps without a panic.
        #[test]
        fn any_decoded_event_maps(body in crate::fluxv1::event::tests::body()) {
            if let Ok(event) = parse(&body) {
                let _ = map(&event, &ctx(3));
            }
        }
    }
}
