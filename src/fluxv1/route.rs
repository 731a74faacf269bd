//! `POST /v6/events`: decode, map, persist — before any provider is called.
//!
//! fluxd stops advancing its sync marker on any non-2xx answer, so every well-formed
//! event is accepted (202, with an empty body: fluxd parses a non-empty one as JSON).

use super::event::{self, V1Event};
use super::map::{self, V1Context};
use super::poller::{PollHandle, SyncDone};
use crate::intake::{EventRoute, Intake, Outcome, Rejection};
use crate::mapping::Skip;
use axum::extract::Request;
use tracing::{debug, info, warn};

pub const SOURCE: &str = "fluxv1";

/// What the route needs besides [`Intake`].
pub struct V1Events {
    pub ctx: V1Context,
    pub max_event_bytes: usize,
    /// Checks the workloads of each sync (`--poll-workloads`).
    pub poller: Option<PollHandle>,
}

/// `…/v6/events`, under any path prefix of fluxd's `--connect`.
pub fn is_events_path(path: &str) -> bool {
    path.ends_with("/v6/events")
}

pub async fn handle(intake: &Intake, v1: &V1Events, req: Request) -> Outcome {
    let (parts, body) = req.into_parts();
    let body = match intake
        .event_body(EventRoute::Fluxd, &parts.headers, body, v1.max_event_bytes)
        .await
    {
        Ok(b) => b,
        Err(rejection) => return Outcome::Rejected(rejection),
    };
    let ev = match event::parse(&body) {
        Ok(ev) => ev,
        Err(e) => {
            return Outcome::Rejected(Rejection::NotAnEvent {
                label: e.label(),
                message: e.to_string(),
                bytes: body.len(),
            });
        }
    };
    let kind = ev.kind_label();
    let mapped = map::map(&ev, &v1.ctx);
    intake.count_skips(&mapped.skips);
    for skip in &mapped.skips {
        log_skip(&ev, skip);
    }
    let statuses = mapped.updates.len();
    let head = mapped
        .updates
        .first()
        .map(|u| (u.status.sha.clone(), u.status.state));
    if let Err(rejection) = intake.persist(kind, mapped.updates).await {
        return Outcome::Rejected(rejection);
    }
    if let (V1Event::Sync(sync), Some((sha, state))) = (&ev, head) {
        info!(source = SOURCE, r#type = kind, sha = %sha, state = %state, commits = sync.commits.len(),
            errors = sync.errors.len(), statuses, "sync event accepted");
        // A sync with errors still applied everything else: its workloads are
        // checked too.
        if let Some(poller) = &v1.poller {
            poller.sync_done(SyncDone {
                head: sha,
                service_ids: sync.service_ids.clone(),
            });
        }
    }
    let skips = mapped.skips;
    if statuses == 0 {
        Outcome::Skipped { kind, skips }
    } else {
        Outcome::Accepted {
            kind,
            statuses,
            skips,
        }
    }
}

fn log_skip(ev: &V1Event, skip: &Skip) {
    match (ev, skip) {
        (
            V1Event::Commit { revision } | V1Event::Release { revision } | V1Event::AutoRelease { revision },
            _,
        ) => {
            info!(
                source = SOURCE,
                r#type = ev.kind_label(),
                revision = revision.as_deref().unwrap_or(""),
                "event acknowledged; it carries no deploy status"
            )
        }
        (V1Event::Other { kind }, _) => {
            info!(source = SOURCE, r#type = %kind, "event of unknown type acknowledged")
        }
        (V1Event::Sync(_), Skip::NotAStatusEvent) => {
            debug!(source = SOURCE, "sync event acknowledged")
        }
        (V1Event::Sync(_), _) => {
            warn!(source = SOURCE, r#type = "sync", reason = skip.label(), detail = %skip, "no status for sync event")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::AcceptError;
    use crate::intake::BodyGate;
    use crate::intake::testing::{fixture, intake, post};
    use axum::body::{Body, Bytes};
    use std::time::Duration;

    fn v1(max_event_bytes: usize) -> V1Events {
        V1Events {
            ctx: V1Context {
                repo: "github.com/o/r".into(),
                instance: "dev".into(),
                check: map::sync_check("dev"),
                status_range: 3,
                target_url: None,
                rollout_checked: false,
            },
            max_event_bytes,
            poller: None,
        }
    }

    async fn send(intake: &Intake, body: impl Into<Body>, headers: &[(&str, &str)]) -> Outcome {
        handle(intake, &v1(1024 * 1024), post(body, headers)).await
    }

    #[tokio::test]
    async fn a_sync_is_accepted_once_its_statuses_are_in_the_outbox() {
        let i = intake(None, None, 100);
        let out = send(&i, fixture("v1/event-sync.json"), &[]).await;
        let Outcome::Accepted {
            kind: "sync",
            statuses,
            skips,
        } = out
        else {
            panic!("{out:?}");
        };
        assert!(statuses >= 1);
        assert!(skips.is_empty(), "{skips:?}");
        assert_eq!(i.delivery.pending(), statuses);
    }

    #[tokio::test]
    async fn a_syncs_statuses_are_its_commits_under_the_sync_check_of_the_repository() {
        let i = intake(None, None, 100);
        let out = send(&i, fixture("v1/event-sync.json"), &[]).await;
        assert!(matches!(&out, Outcome::Accepted { statuses: 2, .. }), "{out:?}");
        let mut shas: Vec<String> = i
            .delivery
            .pending_updates()
            .into_iter()
            .map(|u| {
                assert_eq!(u.repo, "github.com/o/r".into());
                assert_eq!(u.status.check.as_str(), "flux-status/dev/sync");
                assert_eq!(u.status.state, notifiers::State::Succeeded);
                u.status.sha.as_str().to_string()
            })
            .collect();
        shas.sort();
        assert_eq!(
            shas,
            [
                "2b6bf5d1a0f6f0c3c4c1f6f2c1bb0f4b9b2f7e3a",
                "9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1"
            ]
        );
    }

    #[tokio::test]
    async fn an_event_with_no_status_is_skipped_not_refused() {
        let i = intake(None, None, 100);
        let out = send(&i, fixture("v1/event-commit-policy.json"), &[]).await;
        assert!(
            matches!(&out, Outcome::Skipped { kind: "commit", skips } if skips == &[Skip::NotAStatusEvent]),
            "{out:?}"
        );
        assert_eq!(i.delivery.pending(), 0);
    }

    #[tokio::test]
    async fn fluxds_token_is_required_once_any_credential_is_set() {
        let sync = fixture("v1/event-sync.json");
        for (token, hmac, headers, label) in [
            (Some("t"), None, &[][..], "unauthorized"),
            (
                Some("t"),
                None,
                &[("authorization", "Scope-Probe token=u")][..],
                "unauthorized",
            ),
            (
                None,
                Some(&b"key"[..]),
                &[("authorization", "Scope-Probe token=")][..],
                "no_token_configured",
            ),
        ] {
            let i = intake(token, hmac, 100);
            let out = send(&i, sync.clone(), headers).await;
            assert!(
                matches!(&out, Outcome::Rejected(Rejection::Unauthorized(r)) if r.label == label),
                "{label}: {out:?}"
            );
            assert_eq!(i.delivery.pending(), 0);
        }
        let i = intake(Some("t"), None, 100);
        let out = send(&i, sync, &[("authorization", "Scope-Probe token=t")]).await;
        assert!(matches!(out, Outcome::Accepted { .. }), "{out:?}");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_announced_or_not() {
        let i = intake(None, None, 100);
        let body = fixture("v1/event-sync.json");
        let announced = body.len().to_string();
        for headers in [&[][..], &[("content-length", announced.as_str())][..]] {
            let out = handle(&i, &v1(16), post(body.clone(), headers)).await;
            assert!(
                matches!(out, Outcome::Rejected(Rejection::TooLarge { limit: 16 })),
                "{headers:?}: {out:?}"
            );
        }
    }

    #[tokio::test]
    async fn what_is_not_an_event_is_refused_with_its_reason() {
        let i = intake(None, None, 100);
        for (body, label) in [
            (&b"{\"type\": "[..], "malformed_json"),
            (b"[1, 2]", "invalid_event"),
            (b"{\"type\": \"sync\", \"metadata\": 7}", "invalid_metadata"),
        ] {
            let out = send(&i, body, &[]).await;
            assert!(
                matches!(&out, Outcome::Rejected(Rejection::NotAnEvent { label: l, bytes, .. }) if *l == label && *bytes == body.len()),
                "{label}: {out:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_the_event_so_fluxd_resends_it() {
        let i = intake(None, None, 0);
        let out = send(&i, fixture("v1/event-sync.json"), &[]).await;
        assert!(
            matches!(
                out,
                Outcome::Rejected(Rejection::NotStored {
                    kind: "sync",
                    error: AcceptError::Full(_)
                })
            ),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn body_reading_refusals_busy_timed_out_unreadable() {
        let mut i = intake(None, None, 100);
        i.bodies = BodyGate::new(Duration::from_secs(30), 8);
        let out = send(&i, fixture("v1/event-sync.json"), &[]).await;
        assert!(
            matches!(out, Outcome::Rejected(Rejection::Busy { max_bytes: 8 })),
            "{out:?}"
        );

        i.bodies = BodyGate::new(Duration::from_millis(100), 1024 * 1024);
        let stalled = futures_util::StreamExt::chain(
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{"))]),
            futures_util::stream::pending(),
        );
        let out = send(&i, Body::from_stream(stalled), &[]).await;
        assert!(
            matches!(out, Outcome::Rejected(Rejection::BodyTimeout { .. })),
            "{out:?}"
        );

        let broken = futures_util::stream::iter([
            Ok(Bytes::from_static(b"{")),
            Err(std::io::Error::other("connection reset")),
        ]);
        let out = send(&i, Body::from_stream(broken), &[]).await;
        assert!(
            matches!(&out, Outcome::Rejected(Rejection::Unreadable(e)) if e.contains("connection reset")),
            "{out:?}"
        );
    }
}
