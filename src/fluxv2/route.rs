//! `POST /` and `POST …/v2/events`: verify, decode, map, persist.
//!
//! notification-controller gives each delivery (its retries included) 15 s, so the
//! answer never waits on a provider.

use super::event;
use super::map::{self, V2Context};
use super::signature;
use crate::intake::{EventRoute, Intake, Outcome, Rejection};
use axum::extract::Request;
use tracing::{debug, info};

pub const SOURCE: &str = "fluxv2";
/// notification-controller's own limit on event bodies.
pub const MAX_EVENT_BYTES: usize = 3 * 1024 * 1024;

/// `/` (what a Provider's address usually is) or `…/v2/events`.
pub fn is_events_path(path: &str) -> bool {
    path == "/" || path.trim_end_matches('/').ends_with("/v2/events")
}

/// A bounded label for the object kind (senders could send any string).
fn kind_label(kind: &str) -> &'static str {
    [
        "kustomization",
        "helmrelease",
        "gitrepository",
        "ocirepository",
        "helmrepository",
        "helmchart",
        "bucket",
    ]
    .into_iter()
    .find(|known| known.eq_ignore_ascii_case(kind))
    .unwrap_or("other")
}

pub async fn handle(intake: &Intake, ctx: &V2Context, req: Request) -> Outcome {
    let (parts, body) = req.into_parts();
    let body = match intake
        .event_body(EventRoute::FluxV2, &parts.headers, body, MAX_EVENT_BYTES)
        .await
    {
        Ok(b) => b,
        Err(rejection) => return Outcome::Rejected(rejection),
    };
    if let Some(key) = intake.auth.hmac_key() {
        let sig = parts.headers.get("x-signature").and_then(|v| v.to_str().ok());
        if let Err(e) = signature::verify(key, &body, sig) {
            return Outcome::Rejected(Rejection::BadSignature(e.to_string()));
        }
    }
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
    let kind = kind_label(&ev.involved_object.kind);
    let mapped = map::map(&ev, ctx);
    let o = &ev.involved_object;
    intake.count_skips(&mapped.skips);
    for skip in &mapped.skips {
        debug!(source = SOURCE, kind = %o.kind, namespace = %o.namespace, name = %o.name,
            reason = %ev.reason, skip = skip.label(), detail = %skip, "no status for event");
    }
    let statuses = mapped.updates.len();
    let summary = mapped
        .updates
        .first()
        .map(|u| (u.status.sha.clone(), u.status.state, u.status.check.clone()));
    if let Err(rejection) = intake.persist(kind, mapped.updates).await {
        return Outcome::Rejected(rejection);
    }
    let skips = mapped.skips;
    match summary {
        Some((sha, state, check)) => {
            info!(source = SOURCE, kind = %o.kind, namespace = %o.namespace, name = %o.name,
                reason = %ev.reason, sha = %sha, state = %state, check = %check, "event accepted");
            Outcome::Accepted {
                kind,
                statuses,
                skips,
            }
        }
        None => Outcome::Skipped { kind, skips },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fluxv2::map::DEFAULT_CHECK_TEMPLATE;
    use crate::intake::testing::{fixture, intake, post};
    use crate::mapping::Skip;
    use hmac::{Hmac, Mac};

    fn ctx() -> V2Context {
        V2Context {
            rules: Vec::new(),
            fallback: Some("github.com/o/r".into()),
            instance: "prod".into(),
            check_template: DEFAULT_CHECK_TEMPLATE.into(),
            target_url: None,
        }
    }

    fn succeeded() -> Vec<u8> {
        fixture("v2/forwarded/kustomization-reconciliation-succeeded.json")
    }

    fn sign(key: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
        mac.update(body);
        let sum: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256={sum}")
    }

    #[tokio::test]
    async fn a_reconciled_object_is_accepted_with_its_status() {
        let i = intake(None, None, 100);
        let out = handle(&i, &ctx(), post(succeeded(), &[])).await;
        assert!(
            matches!(&out, Outcome::Accepted { kind: "kustomization", statuses: 1, skips } if skips.is_empty()),
            "{out:?}"
        );
        assert_eq!(i.delivery.pending(), 1);
    }

    #[tokio::test]
    async fn events_with_no_status_are_skipped_and_say_why() {
        let i = intake(None, None, 100);
        let artifact = fixture("v2/forwarded/gitrepository-new-artifact.json");
        let out = handle(&i, &ctx(), post(artifact, &[])).await;
        assert!(
            matches!(&out, Outcome::Skipped { kind: "gitrepository", skips } if skips == &[Skip::NotAStatusEvent]),
            "{out:?}"
        );
        let mut no_repo = ctx();
        no_repo.fallback = None;
        let out = handle(&i, &no_repo, post(succeeded(), &[])).await;
        assert!(
            matches!(&out, Outcome::Skipped { kind: "kustomization", skips } if skips == &[Skip::NoRepo]),
            "{out:?}"
        );
        assert_eq!(i.delivery.pending(), 0);
    }

    #[tokio::test]
    async fn with_an_hmac_key_the_signature_must_verify() {
        let i = intake(None, Some(b"key"), 100);
        let body = succeeded();
        let missing = handle(&i, &ctx(), post(body.clone(), &[])).await;
        assert!(
            matches!(&missing, Outcome::Rejected(Rejection::Unauthorized(r)) if r.label == "bad_signature"),
            "{missing:?}"
        );
        let forged = sign(b"other", &body);
        let wrong = handle(&i, &ctx(), post(body.clone(), &[("x-signature", &forged)])).await;
        assert!(
            matches!(wrong, Outcome::Rejected(Rejection::BadSignature(_))),
            "{wrong:?}"
        );
        let signed = sign(b"key", &body);
        let right = handle(&i, &ctx(), post(body, &[("x-signature", &signed)])).await;
        assert!(matches!(right, Outcome::Accepted { .. }), "{right:?}");
    }

    #[tokio::test]
    async fn a_wrong_token_or_a_body_that_is_no_event_is_refused() {
        let i = intake(Some("t"), None, 100);
        let out = handle(&i, &ctx(), post(succeeded(), &[("authorization", "Bearer u")])).await;
        assert!(
            matches!(&out, Outcome::Rejected(Rejection::Unauthorized(r)) if r.label == "unauthorized"),
            "{out:?}"
        );
        let bearer = [("authorization", "Bearer t")];
        for (body, label) in [
            (&b"{\"involvedObject\": {}}"[..], "invalid_event"),
            (b"{\"involvedObject\"", "malformed_json"),
        ] {
            let out = handle(&i, &ctx(), post(body, &bearer)).await;
            assert!(
                matches!(&out, Outcome::Rejected(Rejection::NotAnEvent { label: l, .. }) if *l == label),
                "{label}: {out:?}"
            );
        }
        assert_eq!(i.delivery.pending(), 0);
    }

    #[tokio::test]
    async fn an_accepted_event_leaves_its_status_for_the_repository_its_rule_names() {
        let i = intake(None, None, 100);
        let mut routed = ctx();
        let kustomizations: crate::fluxv2::map::ObjectMatch =
            std::sync::Arc::new(|o| o.kind == "Kustomization");
        let helm: crate::fluxv2::map::ObjectMatch = std::sync::Arc::new(|o| o.kind == "HelmRelease");
        routed.rules = vec![
            (helm, "gitlab.com/g/helm".into()),
            (kustomizations, "gitlab.com/g/apps".into()),
        ];
        let out = handle(&i, &routed, post(succeeded(), &[])).await;
        assert!(matches!(&out, Outcome::Accepted { statuses: 1, .. }), "{out:?}");
        let updates = i.delivery.pending_updates();
        let [u] = updates.as_slice() else {
            panic!("{updates:?}")
        };
        assert_eq!(u.repo, "gitlab.com/g/apps".into());
        assert_eq!(u.status.sha.as_str(), "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1");
        assert_eq!(u.status.state, notifiers::State::Succeeded);
        assert_eq!(
            u.status.check.as_str(),
            "flux-status/prod/kustomization/flux-system/apps"
        );
    }

    #[tokio::test]
    async fn an_object_no_rule_matches_goes_to_the_fallback_or_nowhere() {
        let i = intake(None, None, 100);
        let helm: crate::fluxv2::map::ObjectMatch = std::sync::Arc::new(|o| o.kind == "HelmRelease");
        let mut routed = ctx();
        routed.rules = vec![(helm, "gitlab.com/g/helm".into())];
        let out = handle(&i, &routed, post(succeeded(), &[])).await;
        assert!(matches!(&out, Outcome::Accepted { .. }), "{out:?}");
        assert_eq!(i.delivery.pending_updates()[0].repo, "github.com/o/r".into());
        routed.fallback = None;
        let other = intake(None, None, 100);
        let out = handle(&other, &routed, post(succeeded(), &[])).await;
        assert!(
            matches!(&out, Outcome::Skipped { kind: "kustomization", skips } if skips == &[Skip::NoRepo]),
            "{out:?}"
        );
        assert_eq!(other.delivery.pending(), 0);
    }

    #[tokio::test]
    async fn an_unknown_kind_is_counted_as_other_and_a_full_outbox_refuses_the_event() {
        let i = intake(None, None, 0);
        let mut ev: serde_json::Value = serde_json::from_slice(&succeeded()).expect("JSON");
        ev["involvedObject"]["kind"] = "ImagePolicy".into();
        let body = serde_json::to_vec(&ev).expect("JSON");
        let out = handle(&i, &ctx(), post(body, &[])).await;
        let Outcome::Rejected(rejection) = out else {
            panic!("{out:?}")
        };
        assert!(
            matches!(&rejection, Rejection::NotStored { kind: "other", .. }),
            "{rejection:?}"
        );
        assert_eq!(rejection.label(), "queue_full");
        assert_eq!(rejection.status().as_u16(), 503, "the controller retries");
    }
}
