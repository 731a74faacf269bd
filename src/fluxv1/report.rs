//! A Flux v1 sync and its workloads as a check run's summary (Markdown). Pure.

use super::event::SyncEvent;
use super::judge;
use super::workloads::Workload;
use crate::report::{code, field, table};
use notifiers::State;
use std::fmt::Write;

/// Commits of a sync's range listed before "and N more": an initial sync lists the
/// whole history.
const LISTED_COMMITS: usize = 50;

fn short(revision: &str) -> &str {
    revision.get(..7).unwrap_or(revision)
}

/// The sync: where, which commits, what failed and why, when.
pub fn sync_summary(instance: &str, sync: &SyncEvent, state: State) -> String {
    let mut s = String::new();
    let head = sync.commits.first().map_or("", |c| c.revision.as_str());
    let outcome = match state {
        State::Succeeded => "succeeded",
        _ => "failed",
    };
    let _ = writeln!(s, "### Flux sync {outcome} on {}\n", code(instance));
    field(&mut s, "Cluster (instance)", instance);
    field(&mut s, "Head commit", head);
    if let Some(at) = &sync.ended_at {
        field(&mut s, "Synced at", at);
    }
    let n = sync.commits.len();
    let noun = if n == 1 { "commit" } else { "commits" };
    let _ = writeln!(s, "\n#### Synced range ({n} {noun}, head first)\n");
    let commits = sync.commits.iter().take(LISTED_COMMITS).map(|c| {
        let first_line = c.message.lines().next().unwrap_or("");
        vec![short(&c.revision).to_string(), first_line.to_string()]
    });
    table(&mut s, &["commit", "message"], commits);
    if sync.commits.len() > LISTED_COMMITS {
        let _ = writeln!(s, "\n…and {} older commits.", sync.commits.len() - LISTED_COMMITS);
    }
    if !sync.errors.is_empty() {
        let _ = writeln!(s, "\n#### Failed resources ({})\n", sync.errors.len());
        let rows = sync
            .errors
            .iter()
            .map(|e| vec![e.id.clone(), e.path.clone(), e.error.clone()]);
        table(&mut s, &["resource", "file", "error"], rows);
    }
    s
}

/// The workloads a poll judged: each in scope with its rollout state and message.
pub fn workload_summary(instance: &str, head: &str, description: &str, scope: &[&Workload]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Workloads of {} on {}\n",
        code(short(head)),
        code(instance)
    );
    field(&mut s, "Cluster (instance)", instance);
    field(&mut s, "Head commit", head);
    field(&mut s, "Outcome", description);
    if scope.is_empty() {
        s.push_str("\nNo workload to wait for.\n");
        return s;
    }
    let _ = writeln!(s, "\n#### Workloads ({})\n", scope.len());
    let rows = scope.iter().map(|w| {
        let state = if w.status.is_empty() {
            "no status".to_string()
        } else {
            w.status.clone()
        };
        let message = judge::failure(w).unwrap_or_else(|| w.rollout.messages.join("\n"));
        vec![w.id.clone(), state, message]
    });
    table(&mut s, &["workload", "rollout", "message"], rows);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fluxv1::event::{V1Event, parse};

    fn sync(name: &str) -> SyncEvent {
        let body = crate::mapping::fixture(&format!("v1/{name}"));
        match parse(&body).unwrap() {
            V1Event::Sync(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_sync_names_each_resource_with_its_whole_error() {
        let mut ev = sync("event-sync-errors.json");
        ev.errors.push(crate::fluxv1::event::ResourceError {
            id: "default:configmap/pipes".into(),
            path: "manifests/cm.yaml".into(),
            error: "line one | with a pipe\nline two".into(),
        });
        let md = sync_summary("dev", &ev, State::Failed);
        assert!(md.starts_with("### Flux sync failed on `dev`\n"), "{md}");
        assert!(md.contains("- **Cluster (instance):** dev\n"), "{md}");
        assert!(
            md.contains("- **Head commit:** 4997efcd4ac6255604d0d44eeb7085c5b0eb9d48\n"),
            "{md}"
        );
        assert!(
            md.contains("- **Synced at:** 2020-10-13T14:14:30.123456789Z\n"),
            "{md}"
        );
        assert!(md.contains("(1 commit, head first)\n\n| commit | message |\n|---|---|\n| 4997efc | create invalid resource |\n"), "{md}");
        assert!(md.contains("#### Failed resources (2)"), "{md}");
        assert!(
            md.contains(
                "| default:persistentvolumeclaim/test | manifests/test.yaml | running kubectl: The PersistentVolumeClaim \"test\" is invalid: spec: Forbidden: field is immutable after creation |\n"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| default:configmap/pipes | manifests/cm.yaml | line one \\| with a pipe<br>line two |\n"
            ),
            "{md}"
        );
    }

    fn workload(id: &str, status: &str, messages: &[&str]) -> Workload {
        Workload {
            id: id.into(),
            status: status.into(),
            rollout: crate::fluxv1::workloads::Rollout {
                messages: messages.iter().map(|m| m.to_string()).collect(),
            },
            ..Workload::default()
        }
    }

    #[test]
    fn each_workload_in_scope_has_its_rollout_state_and_message() {
        let ready = workload("default:deployment/web", "ready", &[]);
        let stuck = workload(
            "default:deployment/podinfo",
            "updating",
            &["Deployment \"podinfo\" exceeded its progress deadline"],
        );
        let md = workload_summary(
            "dev",
            "4997efcd4ac6255604d0d44eeb7085c5b0eb9d48",
            "default:deployment/podinfo failed: Deployment \"podinfo\" exceeded its progress deadline",
            &[&stuck, &ready],
        );
        assert!(md.starts_with("### Workloads of `4997efc` on `dev`\n"), "{md}");
        assert!(
            md.contains("#### Workloads (2)\n\n| workload | rollout | message |\n|---|---|---|\n"),
            "{md}"
        );
        assert!(
            md.contains("| default:deployment/podinfo | updating | Deployment \"podinfo\" exceeded its progress deadline |\n"),
            "{md}"
        );
        assert!(md.contains("| default:deployment/web | ready | — |\n"), "{md}");
        assert!(
            workload_summary("dev", "abc", "no workloads to wait for", &[])
                .contains("No workload to wait for.")
        );
    }

    #[test]
    fn a_long_range_is_listed_in_part() {
        let mut ev = sync("event-sync-errors.json");
        let c = ev.commits[0].clone();
        ev.commits = vec![c; LISTED_COMMITS + 7];
        let md = sync_summary("dev", &ev, State::Failed);
        assert!(
            md.contains(&format!("({} commits, head first)", LISTED_COMMITS + 7)),
            "{md}"
        );
        assert!(md.contains("…and 7 older commits."), "{md}");
    }
}
