//! A Flux v2 object's event as a check run's summary (Markdown). Pure.

use super::event::Event;
use crate::report::{block, code, field, inline};
use notifiers::State;
use std::fmt::Write;

/// The object, its revision, why, the whole message and when.
pub fn summary(ev: &Event, revision: &str, state: State) -> String {
    let o = &ev.involved_object;
    let outcome = match state {
        State::Pending => "progressing",
        State::Succeeded => "ready",
        State::Failed => "failed",
        State::Canceled => "canceled",
    };
    let mut s = String::new();
    let object = format!("{}/{}", o.namespace, o.name);
    let _ = writeln!(s, "### {} {} {outcome}\n", inline(&o.kind), code(&object));
    field(&mut s, "Kind", &o.kind);
    field(&mut s, "Namespace", &o.namespace);
    field(&mut s, "Name", &o.name);
    field(&mut s, "Revision", revision);
    field(&mut s, "Reason", &ev.reason);
    if let Some(at) = &ev.timestamp {
        field(&mut s, "Time", at);
    }
    if !ev.message.trim().is_empty() {
        s.push_str("\n#### Message\n\n");
        s.push_str(&block(&ev.message));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fluxv2::event::parse;

    #[test]
    fn a_failed_kustomization_shows_the_whole_message() {
        let mut body = std::fs::read(format!(
            "{}/tests/fixtures/v2/controller-to-nc/kustomization-health-check-failed.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let long = format!("{} | tail", "x".repeat(300));
        let text = String::from_utf8(body.clone())
            .unwrap()
            .replace("'InProgress']\"", &format!("'InProgress']\\n{long}\""));
        body = text.into_bytes();
        let ev = parse(&body).unwrap();
        let md = summary(
            &ev,
            "main@sha1:731f7eaddfb6af01cb2173e18f0f75b0ba780ef1",
            State::Failed,
        );
        assert!(
            md.starts_with("### Kustomization `flux-system/apps` failed\n"),
            "{md}"
        );
        for line in [
            "- **Kind:** Kustomization\n",
            "- **Namespace:** flux-system\n",
            "- **Name:** apps\n",
            "- **Revision:** main@sha1:731f7eaddfb6af01cb2173e18f0f75b0ba780ef1\n",
            "- **Reason:** HealthCheckFailed\n",
            "- **Time:** 2026-05-04T10:15:30Z\n",
        ] {
            assert!(md.contains(line), "{line} in {md}");
        }
        assert!(
            md.contains("```text\nhealth check failed after 5m0.031s: timeout waiting for: [Deployment/apps/podinfo status: 'InProgress']\n"),
            "{md}"
        );
        assert!(md.contains(&format!("{long}\n```\n")), "the whole message: {md}");
    }
}
