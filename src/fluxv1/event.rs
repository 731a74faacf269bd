//! fluxd v1 events as they arrive on `POST /v6/events` (`pkg/event/event.go`).
//!
//! Decoding is lenient where fluxd's own decoder is (unknown types, no metadata,
//! legacy `revisions`, pre-1.12 `ServiceID`) and strict where a wrong answer would
//! status the wrong commit.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq)]
pub enum V1Event {
    Sync(SyncEvent),
    /// A job pushed a commit (release, policy or automation change).
    Commit {
        revision: Option<String>,
    },
    Release {
        revision: Option<String>,
    },
    AutoRelease {
        revision: Option<String>,
    },
    /// Any other type, e.g. one a future fluxd adds: acknowledged and logged.
    Other {
        kind: String,
    },
}

impl V1Event {
    /// Bounded metric label for the event type.
    pub fn kind_label(&self) -> &'static str {
        match self {
            V1Event::Sync(_) => "sync",
            V1Event::Commit { .. } => "commit",
            V1Event::Release { .. } => "release",
            V1Event::AutoRelease { .. } => "autorelease",
            V1Event::Other { .. } => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyncEvent {
    pub service_ids: Vec<String>,
    /// Newest first, as `git log` lists them.
    pub commits: Vec<SyncCommit>,
    pub errors: Vec<ResourceError>,
    pub initial_sync: bool,
    pub has_metadata: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
pub struct SyncCommit {
    #[serde(default)]
    pub revision: String,
    #[serde(default)]
    pub message: String,
}

/// A resource fluxd failed to apply. Go marshals these without tags, hence the capitals.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
pub struct ResourceError {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Path", default)]
    pub path: String,
    #[serde(rename = "Error", default)]
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("event is not a JSON object")]
    NotAnObject,
    #[error("event type is empty")]
    MissingType,
    #[error("{kind} event has invalid metadata: {message}")]
    InvalidMetadata { kind: &'static str, message: String },
}

impl EventError {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            EventError::MalformedJson(_) => "malformed_json",
            EventError::NotAnObject | EventError::MissingType => "invalid_event",
            EventError::InvalidMetadata { .. } => "invalid_metadata",
        }
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "serviceIDs", default)]
    service_ids: Option<Vec<String>>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    /// Kept raw and decoded once its type is known: no whole-body `Value` copy of a
    /// large initial-sync event.
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct RawSyncMetadata {
    #[serde(default)]
    commits: Option<Vec<SyncCommit>>,
    /// Pre-"commits" fluxd sent bare revisions.
    #[serde(default)]
    revisions: Option<Vec<String>>,
    #[serde(default)]
    errors: Option<Vec<ResourceError>>,
    #[serde(rename = "initialSync", default)]
    initial_sync: bool,
}

pub fn parse(body: &[u8]) -> Result<V1Event, EventError> {
    let raw: RawEvent = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if body.trim_ascii_start().first() != Some(&b'{') => {
            EventError::NotAnObject
        }
        serde_json::error::Category::Data => EventError::InvalidMetadata {
            kind: "event",
            message: e.to_string(),
        },
        _ => EventError::MalformedJson(e.to_string()),
    })?;
    let kind = raw
        .kind
        .filter(|k| !k.is_empty())
        .ok_or(EventError::MissingType)?;
    let metadata = raw.metadata.filter(|m| m.get() != "null");
    Ok(match kind.as_str() {
        "sync" => {
            let has_metadata = metadata.is_some();
            let meta: RawSyncMetadata = match metadata {
                Some(m) => serde_json::from_str(m.get()).map_err(|e| EventError::InvalidMetadata {
                    kind: "sync",
                    message: e.to_string(),
                })?,
                None => RawSyncMetadata::default(),
            };
            let commits = match (meta.commits, meta.revisions) {
                (Some(c), _) => c,
                (None, Some(revs)) => revs
                    .into_iter()
                    .map(|revision| SyncCommit {
                        revision,
                        message: String::new(),
                    })
                    .collect(),
                (None, None) => Vec::new(),
            };
            V1Event::Sync(SyncEvent {
                service_ids: raw.service_ids.unwrap_or_default(),
                commits,
                errors: meta.errors.unwrap_or_default(),
                initial_sync: meta.initial_sync,
                has_metadata,
            })
        }
        "commit" => V1Event::Commit {
            revision: string_field(&metadata, &["revision"]),
        },
        "release" => V1Event::Release {
            revision: string_field(&metadata, &["Revision", "revision"]),
        },
        "autorelease" => V1Event::AutoRelease {
            revision: string_field(&metadata, &["Revision", "revision"]),
        },
        _ => V1Event::Other { kind },
    })
}

fn string_field(metadata: &Option<&RawValue>, keys: &[&str]) -> Option<String> {
    let m: Value = serde_json::from_str(metadata.as_ref()?.get()).ok()?;
    keys.iter()
        .find_map(|k| m.get(*k).and_then(Value::as_str))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_and_missing_metadata_are_events() {
        assert_eq!(
            parse(br#"{"id":0,"type":"lock","serviceIDs":null}"#).unwrap(),
            V1Event::Other { kind: "lock".into() }
        );
        match parse(br#"{"type":"sync"}"#).unwrap() {
            V1Event::Sync(s) => assert!(!s.has_metadata && s.commits.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn legacy_revisions_become_commits() {
        match parse(br#"{"type":"sync","metadata":{"revisions":["abc"]}}"#).unwrap() {
            V1Event::Sync(s) => assert_eq!(s.commits[0].revision, "abc"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_bodies_are_classified() {
        assert!(matches!(parse(b"{not json"), Err(EventError::MalformedJson(_))));
        assert_eq!(parse(b"[1,2]"), Err(EventError::NotAnObject));
        assert_eq!(parse(br#"{"type":""}"#), Err(EventError::MissingType));
        assert_eq!(parse(br#"{"id":0}"#), Err(EventError::MissingType));
        assert!(matches!(
            parse(br#"{"type":"sync","metadata":{"commits":"nope"}}"#),
            Err(EventError::InvalidMetadata { kind: "sync", .. })
        ));
        assert!(matches!(
            parse(br#"{"type":"sync","serviceIDs":[1]}"#),
            Err(EventError::InvalidMetadata { .. })
        ));
    }
}
