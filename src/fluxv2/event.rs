//! Flux v2 events (`fluxcd/pkg/apis/event/v1beta1.Event`), in both shapes we get:
//! forwarded by notification-controller to a `generic`/`generic-hmac` Provider
//! (unprefixed metadata), and raw from the controllers' `--events-addr`
//! (`<api group>/<key>` metadata, object annotations as `event.toolkit.fluxcd.io/<key>`).

use notifiers::{Sha, ShaError};
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ObjectRef {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    #[serde(rename = "involvedObject")]
    pub involved_object: ObjectRef,
    #[serde(default)]
    pub severity: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    #[serde(rename = "reportingController", default)]
    pub reporting_controller: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("not a Flux event: {0}")]
    Invalid(String),
}

impl EventError {
    pub fn label(&self) -> &'static str {
        match self {
            EventError::MalformedJson(_) => "malformed_json",
            EventError::Invalid(_) => "invalid_event",
        }
    }
}

pub fn parse(body: &[u8]) -> Result<Event, EventError> {
    let ev: Event = crate::json::from_body(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => EventError::Invalid(e.to_string()),
        _ => EventError::MalformedJson(e.to_string()),
    })?;
    let o = &ev.involved_object;
    if o.kind.is_empty() || o.name.is_empty() {
        return Err(EventError::Invalid("involvedObject needs kind and name".into()));
    }
    Ok(ev)
}

/// Where notification-controller puts object annotations in raw events.
const ANNOTATION_GROUP: &str = "event.toolkit.fluxcd.io";

impl Event {
    /// The API group of the involved object (`kustomize.toolkit.fluxcd.io`).
    fn group(&self) -> &str {
        self.involved_object.api_version.split('/').next().unwrap_or("")
    }

    /// A metadata value by its unprefixed key, in either shape, with
    /// notification-controller's precedence: the forwarded (merged) key, then the
    /// controller's `<group>/<key>`, then the object annotation.
    pub fn meta(&self, key: &str) -> Option<&str> {
        let group = self.group();
        self.metadata
            .get(key)
            .or_else(|| (!group.is_empty()).then(|| self.get_joined(group, key)).flatten())
            .or_else(|| self.get_joined(ANNOTATION_GROUP, key))
            .map(String::as_str)
    }

    /// The value of `<prefix>/<key>`. The key is put together on the stack: every
    /// event looks up several keys this way, most of them absent.
    fn get_joined(&self, prefix: &str, key: &str) -> Option<&String> {
        let mut buf = [0u8; 128];
        let len = prefix.len() + 1 + key.len();
        let Some(joined) = buf.get_mut(..len) else {
            return self.metadata.get(&format!("{prefix}/{key}"));
        };
        joined[..prefix.len()].copy_from_slice(prefix.as_bytes());
        joined[prefix.len()] = b'/';
        joined[prefix.len() + 1..].copy_from_slice(key.as_bytes());
        self.metadata.get(std::str::from_utf8(joined).ok()?)
    }

    /// Flux's `GetRevision`: `commit`, then `originRevision`, then `revision`.
    pub fn revision(&self) -> Option<(&'static str, &str)> {
        ["commit", "originRevision", "revision"]
            .into_iter()
            .find_map(|k| self.meta(k).map(|v| (k, v)))
    }
}

/// Why a revision names no commit we can status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    #[error("event has no revision")]
    Missing,
    #[error("revision {0:?} is an OCI/sha256 digest with no origin commit")]
    Digest(String),
    #[error(
        "revision {0:?} is a chart version, not a commit (annotate the object with event.toolkit.fluxcd.io/commit)"
    )]
    ChartVersion(String),
    #[error("revision {revision:?} names no commit: {error}")]
    NotACommit { revision: String, error: ShaError },
}

impl RevisionError {
    pub fn label(&self) -> &'static str {
        match self {
            RevisionError::Missing => "no_revision",
            RevisionError::Digest(_) => "oci_digest",
            RevisionError::ChartVersion(_) => "chart_version",
            RevisionError::NotACommit { .. } => "invalid_sha",
        }
    }
}

/// The commit a Flux revision names, as Flux's `parseRevision` finds it
/// (`main@sha1:<sha>`, `refs/pull/1/head@sha1:<sha>`, legacy `main/<sha>`, bare
/// `<sha>`), and then held to what a provider accepts: a full hexadecimal SHA-1.
pub fn parse_revision(rev: &str) -> Result<Sha, RevisionError> {
    // ExtractHashFromRevision: after the last ':', else after the last '/'.
    let hash = match (rev.rfind(':'), rev.rfind('/')) {
        (Some(i), _) => &rev[i + 1..],
        (None, Some(i)) => &rev[i + 1..],
        (None, None) => rev,
    };
    if rev.contains("sha256:") || (hash.len() == 64 && !rev.contains("sha1:")) {
        return Err(RevisionError::Digest(rev.to_string()));
    }
    if hash.len() != 40 {
        let looks_like_version = rev.chars().next().is_some_and(|c| c.is_ascii_digit() || c == 'v')
            && rev.contains('.')
            && !rev.contains('@');
        return Err(if looks_like_version {
            RevisionError::ChartVersion(rev.to_string())
        } else {
            RevisionError::NotACommit {
                revision: rev.to_string(),
                error: ShaError::Length(hash.len()),
            }
        });
    }
    Sha::parse(hash).map_err(|error| RevisionError::NotACommit {
        revision: rev.to_string(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_upstream_revision_vector() {
        let path = format!(
            "{}/tests/fixtures/v2/test-vectors.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = v["parseRevision"].as_array().unwrap();
        assert!(cases.len() >= 20);
        for c in cases {
            let input = c["input"].as_str().unwrap();
            let got = parse_revision(input);
            match c["sha"].as_str() {
                // Flux passes any 40-character tail; we only status real commit ids.
                Some(sha) if sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    assert_eq!(
                        got.as_ref().map(|s| s.to_string()),
                        Ok(sha.to_ascii_lowercase()),
                        "{input:?}"
                    )
                }
                Some(_) => assert!(
                    matches!(
                        got,
                        Err(RevisionError::NotACommit {
                            error: ShaError::NotHex,
                            ..
                        })
                    ),
                    "{input:?}: {got:?}"
                ),
                None => assert!(got.is_err(), "{input:?} must be refused, got {got:?}"),
            }
        }
    }

    #[test]
    fn skips_say_why() {
        let digest = "latest@sha256:8af90b59cf7a1d0c2c3b4f9d0e5f7a6b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";
        assert_eq!(parse_revision(digest), Err(RevisionError::Digest(digest.into())));
        assert_eq!(
            parse_revision("6.7.1"),
            Err(RevisionError::ChartVersion("6.7.1".into()))
        );
        assert_eq!(
            parse_revision("6.7.2+0cc9a8446c95"),
            Err(RevisionError::ChartVersion("6.7.2+0cc9a8446c95".into()))
        );
        assert_eq!(parse_revision("master").unwrap_err().label(), "invalid_sha");
    }

    #[test]
    fn metadata_in_either_shape() {
        let raw = parse(br#"{"involvedObject":{"kind":"Kustomization","name":"a","namespace":"n","apiVersion":"kustomize.toolkit.fluxcd.io/v1"},"severity":"info","reason":"r","message":"m","metadata":{"kustomize.toolkit.fluxcd.io/revision":"main@sha1:a1afe267b54f38b46b487f6e938a6fd508278c07","event.toolkit.fluxcd.io/commit":"450796ddb2ab6724ee1cc32a4be56da032d1cca0"}}"#).unwrap();
        assert_eq!(
            raw.revision(),
            Some(("commit", "450796ddb2ab6724ee1cc32a4be56da032d1cca0"))
        );
        let fwd = parse(br#"{"involvedObject":{"kind":"Kustomization","name":"a"},"severity":"info","metadata":{"revision":"main/a1afe267b54f38b46b487f6e938a6fd508278c07","commit_status":"update"}}"#).unwrap();
        assert_eq!(fwd.meta("commit_status"), Some("update"));
        assert_eq!(fwd.revision().map(|r| r.0), Some("revision"));
        let group = "g".repeat(200);
        let long = parse(format!(r#"{{"involvedObject":{{"kind":"K","name":"a","apiVersion":"{group}/v1"}},"severity":"info","metadata":{{"{group}/revision":"r1"}}}}"#).as_bytes()).unwrap();
        assert_eq!(
            long.meta("revision"),
            Some("r1"),
            "a group longer than the stack key"
        );
        assert!(matches!(parse(b"{"), Err(EventError::MalformedJson(_))));
        assert!(matches!(
            parse(br#"{"involvedObject":{}}"#),
            Err(EventError::Invalid(_))
        ));
        assert!(matches!(parse(b"[1]"), Err(EventError::Invalid(_))));
    }
}
