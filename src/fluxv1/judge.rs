//! fluxd's workload list → did the sync's workloads roll out? Pure: no I/O, no clock.

use super::workloads::Workload;
use crate::mapping::name_a_few;
use notifiers::Check;

/// How many not-ready workloads a description names before "and N more".
const NAMED_WORKLOADS: usize = 3;

pub fn workload_check(instance: &str) -> Check {
    Check::new(format!("flux-status/{instance}/workload"))
}

/// Why these workloads are the ones checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The sync's `serviceIDs` that are workloads, and the workloads they created.
    Synced,
    /// None of the `serviceIDs` is a workload: every workload defined in the repo.
    InRepo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every workload in scope is ready (there may be none).
    Ready,
    /// A workload in scope failed; waiting longer will not help.
    Failed { id: String, detail: String },
    /// Some are not ready yet: `namespace:kind/name (status)`, sorted.
    Waiting { not_ready: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub basis: Basis,
    /// The workloads in scope, sorted (fluxd's list order is not stable).
    pub scope: Vec<String>,
    pub verdict: Verdict,
}

/// The kind of a `namespace:kind/name` id; the legacy `namespace/name` form has none.
fn kind(id: &str) -> &str {
    id.split_once(':')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map_or("", |(k, _)| k)
}

fn is_helm_release(id: &str) -> bool {
    let k = kind(id);
    k.eq_ignore_ascii_case("helmrelease") || k.eq_ignore_ascii_case("fluxhelmrelease")
}

/// The workloads a sync is judged by: those among its `serviceIDs`, plus those whose
/// `Antecedent` is among them (a HelmRelease's Deployment); when none of the
/// `serviceIDs` is a workload, every workload defined in the repo
/// (`ReadOnly != "NotInRepo"`).
pub fn scope<'a>(service_ids: &[String], list: &'a [Workload]) -> (Basis, Vec<&'a Workload>) {
    let synced = |id: &str| service_ids.iter().any(|s| s == id);
    let basis = if list.iter().any(|w| synced(&w.id)) {
        Basis::Synced
    } else {
        Basis::InRepo
    };
    let mut chosen: Vec<&Workload> = list
        .iter()
        .filter(|w| !w.id.is_empty())
        .filter(|w| match basis {
            Basis::Synced => synced(&w.id) || (!w.antecedent.is_empty() && synced(&w.antecedent)),
            Basis::InRepo => w.read_only != "NotInRepo",
        })
        .collect();
    chosen.sort_by(|a, b| a.id.cmp(&b.id));
    chosen.dedup_by(|a, b| a.id == b.id);
    (basis, chosen)
}

/// Why a workload has failed, if it has: a rollout error (`Status: error`, or
/// rollout messages, which fluxd fills from `Progressing=False`/`ReplicaFailure`), a
/// failed HelmRelease, or a manifest fluxd could not apply.
pub fn failure(w: &Workload) -> Option<String> {
    if !w.sync_error.trim().is_empty() {
        return Some(format!("not applied: {}", w.sync_error.trim()));
    }
    let messages = w
        .rollout
        .messages
        .iter()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if !messages.is_empty() {
        return Some(messages);
    }
    if w.status.eq_ignore_ascii_case("error") {
        return Some("rollout error".into());
    }
    if is_helm_release(&w.id) && w.status.eq_ignore_ascii_case("failed") {
        return Some("release failed".into());
    }
    None
}

pub fn is_ready(w: &Workload) -> bool {
    w.status.eq_ignore_ascii_case("ready") || w.status.eq_ignore_ascii_case("deployed")
}

pub fn assess(service_ids: &[String], list: &[Workload]) -> Assessment {
    let (basis, chosen) = scope(service_ids, list);
    let scope_ids = chosen.iter().map(|w| w.id.clone()).collect();
    let verdict = if let Some((w, detail)) = chosen.iter().find_map(|w| failure(w).map(|d| (w, d))) {
        Verdict::Failed {
            id: w.id.clone(),
            detail,
        }
    } else {
        let not_ready: Vec<String> = chosen
            .iter()
            .filter(|w| !is_ready(w))
            .map(|w| {
                let status = if w.status.is_empty() {
                    "no status"
                } else {
                    &w.status
                };
                format!("{} ({status})", w.id)
            })
            .collect();
        if not_ready.is_empty() {
            Verdict::Ready
        } else {
            Verdict::Waiting { not_ready }
        }
    };
    Assessment {
        basis,
        scope: scope_ids,
        verdict,
    }
}

fn workloads(n: usize) -> String {
    if n == 1 {
        "1 workload".into()
    } else {
        format!("{n} workloads")
    }
}

pub fn waiting_description(in_scope: Option<usize>) -> String {
    match in_scope {
        Some(n) => format!("waiting for {}", workloads(n)),
        None => "waiting for fluxd's workload list".into(),
    }
}

pub fn ready_description(in_scope: usize) -> String {
    if in_scope == 0 {
        "no workloads to wait for".into()
    } else {
        format!("{} ready", workloads(in_scope))
    }
}

pub fn failed_description(id: &str, detail: &str) -> String {
    format!("{id} failed: {detail}")
}

/// Names the workloads still not ready (a few, then a count), or the last error if
/// fluxd could never be asked.
pub fn timeout_description(after_secs: u64, not_ready: &[String], last_error: Option<&str>) -> String {
    let mut s = format!("timed out after {after_secs}s: ");
    if not_ready.is_empty() {
        s.push_str("could not list workloads");
        if let Some(e) = last_error {
            s.push_str(": ");
            s.push_str(e);
        }
        return s;
    }
    s.push_str(&name_a_few(not_ready, NAMED_WORKLOADS));
    s.push_str(" not ready");
    s
}

/// What an older commit's pending workload status becomes when a newer sync's poll
/// decided for it.
pub fn as_part_of(description: &str, newer_short_sha: &str) -> String {
    format!("{description} (as part of {newer_short_sha})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fluxv1::workloads::{Rollout, decode_http_body};

    fn w(id: &str, status: &str) -> Workload {
        Workload {
            id: id.into(),
            status: status.into(),
            ..Workload::default()
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scope_is_the_synced_workloads_and_what_they_created() {
        let list = vec![
            w("default:deployment/api", "ready"),
            w("default:helmrelease/redis", "deployed"),
            Workload {
                antecedent: "default:helmrelease/redis".into(),
                ..w("default:statefulset/redis-master", "updating")
            },
            w("default:deployment/unrelated", "error"),
            Workload {
                read_only: "NotInRepo".into(),
                ..w("kube-system:deployment/coredns", "ready")
            },
        ];
        let a = assess(&ids(&["default:helmrelease/redis", "default:configmap/x"]), &list);
        assert_eq!(a.basis, Basis::Synced);
        assert_eq!(
            a.scope,
            ids(&["default:helmrelease/redis", "default:statefulset/redis-master"])
        );
        assert_eq!(
            a.verdict,
            Verdict::Waiting {
                not_ready: ids(&["default:statefulset/redis-master (updating)"])
            },
            "the unrelated error does not fail this sync"
        );
    }

    #[test]
    fn without_synced_workloads_the_in_repo_workloads_count() {
        let list = vec![
            w("default:deployment/api", "ready"),
            Workload {
                read_only: "NotInRepo".into(),
                ..w("kube-system:deployment/coredns", "updating")
            },
            Workload {
                read_only: "System".into(),
                ..w("flux:deployment/memcached", "ready")
            },
        ];
        for service_ids in [ids(&[]), ids(&["default:configmap/settings"])] {
            let a = assess(&service_ids, &list);
            assert_eq!(a.basis, Basis::InRepo);
            assert_eq!(
                a.scope,
                ids(&["default:deployment/api", "flux:deployment/memcached"])
            );
            assert_eq!(a.verdict, Verdict::Ready);
        }
        let none = assess(&[], &[]);
        assert_eq!((none.scope.len(), none.verdict), (0, Verdict::Ready));
    }

    #[test]
    fn states_are_compared_without_case_and_failures_are_early() {
        let table: Vec<(Workload, Option<&str>, bool)> = vec![
            (w("a:deployment/x", "ready"), None, true),
            (w("a:deployment/x", "Ready"), None, true),
            (w("a:helmrelease/x", "DEPLOYED"), None, true),
            (w("a:deployment/x", "updating"), None, false),
            (w("a:deployment/x", "started"), None, false),
            (w("a:helmrelease/x", "pending-upgrade"), None, false),
            (w("a:deployment/x", "failed"), None, false),
            (w("a:deployment/x", "error"), Some("rollout error"), false),
            (w("a:helmrelease/x", "Failed"), Some("release failed"), false),
            (w("a:fluxhelmrelease/x", "failed"), Some("release failed"), false),
            (
                Workload {
                    rollout: Rollout {
                        messages: vec![
                            "Deployment does not have minimum availability.".into(),
                            " ".into(),
                            "ReplicaSet \"x-1\" has timed out progressing.".into(),
                        ],
                    },
                    ..w("a:deployment/x", "updating")
                },
                Some(
                    "Deployment does not have minimum availability.; ReplicaSet \"x-1\" has timed out progressing.",
                ),
                false,
            ),
            (
                Workload {
                    sync_error: "error validating data".into(),
                    ..w("a:deployment/x", "ready")
                },
                Some("not applied: error validating data"),
                true,
            ),
        ];
        for (workload, fails, ready) in table {
            assert_eq!(failure(&workload).as_deref(), fails, "{workload:?}");
            assert_eq!(is_ready(&workload), ready, "{workload:?}");
        }
    }

    #[test]
    fn the_first_failure_in_id_order_is_named() {
        let list = vec![
            w("b:deployment/two", "error"),
            w("a:deployment/one", "error"),
            w("c:deployment/three", "ready"),
        ];
        let a = assess(&[], &list);
        assert_eq!(
            a.verdict,
            Verdict::Failed {
                id: "a:deployment/one".into(),
                detail: "rollout error".into()
            }
        );
    }

    #[test]
    fn the_fixture_list_is_ready_in_repo() {
        let list = decode_http_body(&crate::mapping::fixture("v1/controller-status-list.json")).unwrap();
        let a = assess(&ids(&["default:deployment/podinfo"]), &list);
        assert_eq!(a.scope, ids(&["default:deployment/podinfo"]));
        assert_eq!(a.verdict, Verdict::Ready);
    }

    #[test]
    fn descriptions() {
        assert_eq!(waiting_description(Some(1)), "waiting for 1 workload");
        assert_eq!(waiting_description(Some(3)), "waiting for 3 workloads");
        assert_eq!(ready_description(2), "2 workloads ready");
        assert_eq!(ready_description(0), "no workloads to wait for");
        assert_eq!(
            timeout_description(
                360,
                &ids(&["a (updating)", "b (started)", "c (updating)", "d (error)"]),
                None
            ),
            "timed out after 360s: a (updating), b (started), c (updating) and 1 more not ready"
        );
        assert_eq!(
            timeout_description(10, &[], Some("connection refused")),
            "timed out after 10s: could not list workloads: connection refused"
        );
        assert_eq!(
            as_part_of("2 workloads ready", "abc1234"),
            "2 workloads ready (as part of abc1234)"
        );
        assert_eq!(kind("ns:deployment/x"), "deployment");
        assert_eq!(kind("ns/x"), "");
    }
}
