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
    /// fluxd's `endedAt`, shown in a check run's summary.
    pub ended_at: Option<String>,
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

/// The envelope of every event type. The metadata is kept raw and decoded by the
/// event's type: a sync's strictly, the others' leniently, as fluxd does.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "serviceIDs", default)]
    service_ids: Option<Vec<String>>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    /// When the sync ended, as fluxd wrote it; anything but a string is none.
    #[serde(rename = "endedAt", default, deserialize_with = "crate::json::string_or_none")]
    ended_at: Option<String>,
}

/// A sync's metadata (a wrong shape is invalid metadata).
#[derive(Deserialize, Default)]
struct Metadata {
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
    // JSON is UTF-8 (RFC 8259) and fluxd's encoder writes nothing else; serde_json
    // checks only the strings it keeps.
    let text = std::str::from_utf8(body)
        .map_err(|e| EventError::MalformedJson(format!("not UTF-8 at byte {}", e.valid_up_to())))?;
    let raw: Envelope = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if text.as_bytes().trim_ascii_start().first() != Some(&b'{') => {
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
    // Go marshals `ReleaseEventCommon` untagged: a release's revision is `Revision`.
    const RELEASE: &[&str] = &["Revision", "revision"];
    Ok(match kind.as_str() {
        "sync" => {
            let meta = match metadata {
                Some(m) => serde_json::from_str(m.get()).map_err(|e| EventError::InvalidMetadata {
                    kind: "sync",
                    message: e.to_string(),
                })?,
                None => Metadata::default(),
            };
            sync_event(raw.service_ids, meta, metadata.is_some(), raw.ended_at)
        }
        "commit" => V1Event::Commit {
            revision: revision(metadata, &["revision"]),
        },
        "release" => V1Event::Release {
            revision: revision(metadata, RELEASE),
        },
        "autorelease" => V1Event::AutoRelease {
            revision: revision(metadata, RELEASE),
        },
        _ => V1Event::Other { kind },
    })
}

/// The first of `keys` that holds a string: fluxd reads a revision of another type,
/// or metadata of another shape, as no revision.
fn revision(metadata: Option<&RawValue>, keys: &[&str]) -> Option<String> {
    let m: Value = serde_json::from_str(metadata?.get()).ok()?;
    keys.iter()
        .find_map(|k| m.get(*k).and_then(Value::as_str))
        .map(str::to_string)
}

fn sync_event(
    service_ids: Option<Vec<String>>,
    meta: Metadata,
    has_metadata: bool,
    ended_at: Option<String>,
) -> V1Event {
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
        service_ids: service_ids.unwrap_or_default(),
        commits,
        errors: meta.errors.unwrap_or_default(),
        initial_sync: meta.initial_sync,
        has_metadata,
        ended_at,
    })
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// Every fluxd event fixture decodes.
    #[test]
    fn the_fluxd_fixtures_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
        let mut fixtures = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let is_event = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("event-"));
            if path.extension().is_some_and(|e| e == "json") && is_event {
                let body = std::fs::read(&path).unwrap();
                assert!(parse(&body).is_ok(), "{}", path.display());
                fixtures += 1;
            }
        }
        assert!(fixtures >= 5, "{fixtures} fluxd events");
    }

    /// Revisions are read as fluxd reads them: leniently, `Revision` first for releases.
    #[test]
    fn revisions_of_commits_and_releases() {
        let rev = |body: &str| match parse(body.as_bytes()) {
            Ok(
                V1Event::Commit { revision }
                | V1Event::Release { revision }
                | V1Event::AutoRelease { revision },
            ) => revision,
            other => panic!("{body}: {other:?}"),
        };
        let some = |s: &str| Some(s.to_string());
        assert_eq!(rev(r#"{"type":"commit","metadata":{"revision":5}}"#), None);
        assert_eq!(
            rev(r#"{"type":"commit","metadata":{"revision":"abc","commits":5}}"#),
            some("abc")
        );
        assert_eq!(
            rev(r#"{"type":"commit","metadata":{"Revision":"go","revision":"abc"}}"#),
            some("abc")
        );
        assert_eq!(
            rev(r#"{"type":"release","metadata":{"Revision":null,"revision":"x"}}"#),
            some("x")
        );
        assert_eq!(
            rev(r#"{"type":"release","metadata":{"Revision":"a","revision":"b"}}"#),
            some("a")
        );
        assert_eq!(
            rev(r#"{"type":"release","metadata":{"Revision":"a","Revision":"b"}}"#),
            some("b")
        );
        assert_eq!(
            rev(r#"{"type":"autorelease","metadata":{"revision":"b","spec":{"x":[1]}}}"#),
            some("b")
        );
        assert_eq!(rev(r#"{"type":"commit","metadata":"x"}"#), None);
        assert_eq!(
            parse(br#"{"type":"lock","metadata":{"commits":"x"}}"#),
            Ok(V1Event::Other { kind: "lock".into() })
        );
    }

    #[test]
    fn sync_metadata_is_read_strictly() {
        let sync = |body: &str| match parse(body.as_bytes()) {
            Ok(V1Event::Sync(s)) => s,
            other => panic!("{body}: {other:?}"),
        };
        let s = sync(r#"{"type":"sync","metadata":{"commits":[{"revision":"a"}],"revision":7}}"#);
        assert_eq!((s.commits.len(), s.has_metadata), (1, true));
        let s = sync(r#"{"type":"sync","metadata":{"revisions":["a"],"initialSync":true}}"#);
        assert!(s.initial_sync && s.commits[0].revision == "a");
        assert!(!sync(r#"{"type":"sync","metadata":null}"#).has_metadata);
        for body in [
            r#"{"type":"sync","metadata":{"commits":[],"commits":[]}}"#,
            r#"{"type":"sync","metadata":{"initialSync":"yes"}}"#,
            r#"{"type":"sync","metadata":"x"}"#,
        ] {
            assert!(
                matches!(
                    parse(body.as_bytes()),
                    Err(EventError::InvalidMetadata { kind: "sync", .. })
                ),
                "{body}"
            );
        }
        assert!(matches!(
            parse(br#"{"type":"sync","type":"commit"}"#),
            Err(EventError::InvalidMetadata { kind: "event", .. })
        ));
        for body in [
            r#"{"type":"","metadata":{}}"#,
            r#"{"type":null}"#,
            r#"{"metadata":{}}"#,
        ] {
            assert_eq!(parse(body.as_bytes()), Err(EventError::MissingType), "{body}");
        }
        assert_eq!(parse(b"null"), Err(EventError::NotAnObject));
        for body in ["{", ""] {
            assert!(
                matches!(parse(body.as_bytes()), Err(EventError::MalformedJson(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn bad_bodies_are_classified() {
        assert!(matches!(parse(b"{not json"), Err(EventError::MalformedJson(_))));
        assert_eq!(parse(b"[1,2]"), Err(EventError::NotAnObject));
        // A byte that is not UTF-8, even in a field that is not kept.
        assert!(matches!(
            parse(b"{\"type\":\"commit\",\"metadata\":{\"x\":\"\xff\"}}"),
            Err(EventError::MalformedJson(_))
        ));
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

    /// Event-shaped JSON text: objects with the envelope's and the metadata's keys
    /// (repeated at times), values of every JSON type.
    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let word = prop_oneof![
            Just("type"),
            Just("metadata"),
            Just("serviceIDs"),
            Just("commits"),
            Just("revisions"),
            Just("revision"),
            Just("Revision"),
            Just("errors"),
            Just("initialSync"),
            Just("sync"),
            Just("commit"),
            Just("release"),
            Just("autorelease"),
            Just(""),
            Just("x"),
        ];
        let string = prop_oneof![
            4 => word.clone().prop_map(|w| format!("{w:?}")),
            1 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            1 => Just(r#""\u00e9\ud83d\ude00""#.to_string()),
        ];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("0".to_string()),
            Just("-2.5e3".to_string()),
            string,
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((word.clone(), inner), 0..6).prop_map(|kv| {
                    let fields: Vec<String> = kv.iter().map(|(k, v)| format!("{k:?}: {v}")).collect();
                    format!("{{{}}}", fields.join(", "))
                }),
            ]
        })
    }

    /// An event-shaped body, at times with bytes that are not UTF-8 (or not JSON)
    /// spliced in, mostly just inside a string; or any bytes at all.
    pub(crate) fn body() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let spliced: &[&[u8]] = &[
            b"\xff",
            b"\xc3",
            b"\x80",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\"",
            b"\\",
            b"\x00",
        ];
        let kind = prop::sample::select(&["sync", "commit", "release", "autorelease", "lock", ""][..]);
        let event =
            (kind, json_text(), json_text(), any::<bool>()).prop_map(|(kind, metadata, other, first)| {
                let (a, b) = (format!(r#""type":"{kind}""#), format!(r#""metadata":{metadata}"#));
                let other = format!(r#""serviceIDs":{other}"#);
                if first {
                    format!("{{{a},{b},{other}}}")
                } else {
                    format!("{{{other},{b},{a}}}")
                }
            });
        let text = prop_oneof![3 => event, 1 => json_text()];
        prop_oneof![
            4 => (text, any::<prop::sample::Index>(), prop::sample::select(spliced), 0..3u8).prop_map(
                |(text, at, bytes, how)| {
                    let mut body = text.into_bytes();
                    let quotes: Vec<usize> = body.iter().enumerate().filter(|(_, b)| **b == b'"').map(|(i, _)| i + 1).collect();
                    let at = match how {
                        0 => return body,
                        1 if !quotes.is_empty() => quotes[at.index(quotes.len())],
                        _ => at.index(body.len() + 1),
                    };
                    body.splice(at..at, bytes.iter().copied());
                    body
                }
            ),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ]
    }
}
