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

/// The envelope of every event type. `M` is the metadata: kept raw for the two-pass
/// decode (no whole-body `Value` copy of a large initial-sync event), or decoded on
/// the way for the one-pass one.
#[derive(Deserialize)]
#[serde(bound(deserialize = "M: Deserialize<'de>"))]
struct Envelope<M> {
    #[serde(rename = "serviceIDs", default)]
    service_ids: Option<Vec<String>>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<M>,
}

/// What any event type's metadata gives: a sync's commits and errors, read strictly
/// (a wrong shape is invalid metadata), and the revision of a commit or release,
/// read leniently, as fluxd does (a revision that is not a string is none).
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
    /// A commit event's.
    #[serde(default, deserialize_with = "string_or_none")]
    revision: Option<String>,
    /// A release's or an automated release's (Go marshals `ReleaseEventCommon` untagged).
    #[serde(rename = "Revision", default, deserialize_with = "string_or_none")]
    go_revision: Option<String>,
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

/// An event's metadata, decoded or still raw: what the event of each type takes from it.
trait MetadataSource {
    /// A sync's metadata, and whether the event had any.
    fn sync(self) -> Result<(Metadata, bool), EventError>;
    /// The first of `keys` that holds a string.
    fn revision(&self, keys: &[&str]) -> Option<String>;
}

impl MetadataSource for Option<Metadata> {
    fn sync(self) -> Result<(Metadata, bool), EventError> {
        let has_metadata = self.is_some();
        Ok((self.unwrap_or_default(), has_metadata))
    }

    fn revision(&self, keys: &[&str]) -> Option<String> {
        let m = self.as_ref()?;
        keys.iter()
            .find_map(|k| match *k {
                "revision" => m.revision.as_ref(),
                "Revision" => m.go_revision.as_ref(),
                _ => None,
            })
            .cloned()
    }
}

impl MetadataSource for Option<&RawValue> {
    fn sync(self) -> Result<(Metadata, bool), EventError> {
        match self {
            Some(m) => serde_json::from_str(m.get())
                .map(|meta| (meta, true))
                .map_err(|e| EventError::InvalidMetadata {
                    kind: "sync",
                    message: e.to_string(),
                }),
            None => Ok((Metadata::default(), false)),
        }
    }

    fn revision(&self, keys: &[&str]) -> Option<String> {
        let m: Value = serde_json::from_str(self.as_ref()?.get()).ok()?;
        keys.iter()
            .find_map(|k| m.get(*k).and_then(Value::as_str))
            .map(str::to_string)
    }
}

/// Decodes an event in one pass over the body when it has the shape fluxd gives it.
/// A body that does not fit (a sync field of another shape, a repeated key, bad JSON)
/// goes through [`parse_in_two_passes`], which decides what it is: the result is the
/// same either way, this is only faster (the metadata is not scanned twice).
pub fn parse(body: &[u8]) -> Result<V1Event, EventError> {
    let text = utf8(body)?;
    let Ok(Envelope {
        service_ids,
        kind: Some(kind),
        metadata,
    }) = serde_json::from_str::<Envelope<Metadata>>(text)
    else {
        return two_passes(text);
    };
    if kind.is_empty() {
        return Err(EventError::MissingType);
    }
    event(kind, service_ids, metadata)
}

/// The decode that defines what a body is: the envelope first, then the metadata by
/// the event's type, leniently for the types whose metadata only gives a revision.
/// Public so the fuzz target can hold [`parse`] to it.
pub fn parse_in_two_passes(body: &[u8]) -> Result<V1Event, EventError> {
    two_passes(utf8(body)?)
}

/// JSON is UTF-8 (RFC 8259) and fluxd's encoder writes nothing else. serde_json
/// checks only the strings it keeps, so without this a byte that is not UTF-8 in
/// a skipped field passed the one-pass decode and failed the two-pass one.
fn utf8(body: &[u8]) -> Result<&str, EventError> {
    std::str::from_utf8(body)
        .map_err(|e| EventError::MalformedJson(format!("not UTF-8 at byte {}", e.valid_up_to())))
}

fn two_passes(text: &str) -> Result<V1Event, EventError> {
    let raw: Envelope<&RawValue> = serde_json::from_str(text).map_err(|e| match e.classify() {
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
    event(kind, raw.service_ids, raw.metadata.filter(|m| m.get() != "null"))
}

/// The event of type `kind`, with what it takes from its metadata.
fn event(
    kind: String,
    service_ids: Option<Vec<String>>,
    metadata: impl MetadataSource,
) -> Result<V1Event, EventError> {
    // Go marshals `ReleaseEventCommon` untagged: a release's revision is `Revision`.
    const RELEASE: &[&str] = &["Revision", "revision"];
    Ok(match kind.as_str() {
        "sync" => {
            let (meta, has_metadata) = metadata.sync()?;
            sync_event(service_ids, meta, has_metadata)
        }
        "commit" => V1Event::Commit {
            revision: metadata.revision(&["revision"]),
        },
        "release" => V1Event::Release {
            revision: metadata.revision(RELEASE),
        },
        "autorelease" => V1Event::AutoRelease {
            revision: metadata.revision(RELEASE),
        },
        _ => V1Event::Other { kind },
    })
}

fn sync_event(service_ids: Option<Vec<String>>, meta: Metadata, has_metadata: bool) -> V1Event {
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

    /// The one-pass decode gives what the two-pass one does, for every fixture and for
    /// the bodies it must hand over; and it does take the fixtures in one pass.
    #[test]
    fn one_pass_and_two_passes_agree() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
        let mut fixtures = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let body = std::fs::read(&path).unwrap();
            assert_eq!(parse(&body), parse_in_two_passes(&body), "{}", path.display());
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("event-"))
            {
                assert!(
                    crate::json::from_body::<Envelope<Metadata>>(&body).is_ok(),
                    "{}",
                    path.display()
                );
                fixtures += 1;
            }
        }
        assert!(fixtures >= 5, "{fixtures} fluxd events");
        for body in [
            r#"{"type":"commit","metadata":{"revision":5}}"#,
            r#"{"type":"commit","metadata":{"revision":"abc","commits":5}}"#,
            r#"{"type":"commit","metadata":{"Revision":"go","revision":"abc"}}"#,
            r#"{"type":"release","metadata":{"Revision":null,"revision":"x"}}"#,
            r#"{"type":"release","metadata":{"Revision":"a","revision":"b"}}"#,
            r#"{"type":"release","metadata":{"Revision":"a","Revision":"b"}}"#,
            r#"{"type":"autorelease","metadata":{"revision":"b","spec":{"x":[1]}}}"#,
            r#"{"type":"sync","metadata":{"commits":[{"revision":"a"}],"revision":7}}"#,
            r#"{"type":"sync","metadata":{"commits":[],"commits":[]}}"#,
            r#"{"type":"sync","metadata":{"revisions":["a"],"initialSync":true}}"#,
            r#"{"type":"sync","metadata":{"initialSync":"yes"}}"#,
            r#"{"type":"sync","metadata":null}"#,
            r#"{"type":"sync","metadata":"x"}"#,
            r#"{"type":"sync","serviceIDs":[1]}"#,
            r#"{"type":"sync","type":"commit"}"#,
            r#"{"type":"lock","metadata":{"commits":"x"}}"#,
            r#"{"type":"","metadata":{}}"#,
            r#"{"type":null}"#,
            r#"{"metadata":{}}"#,
            "[1]",
            "null",
            "{",
            "",
        ] {
            assert_eq!(
                parse(body.as_bytes()),
                parse_in_two_passes(body.as_bytes()),
                "{body}"
            );
        }
    }

    #[test]
    fn bad_bodies_are_classified() {
        assert!(matches!(parse(b"{not json"), Err(EventError::MalformedJson(_))));
        assert_eq!(parse(b"[1,2]"), Err(EventError::NotAnObject));
        // Found by fuzzing: accepted by the one-pass decode, refused by the other.
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// The one-pass decode is only a faster way to the two-pass answer, for any
        /// bytes (that what it accepts maps without a panic is `map`'s test).
        #[test]
        fn decoders_agree_on_any_bytes(body in body()) {
            let event = parse(&body);
            proptest::prop_assert_eq!(&event, &parse_in_two_passes(&body), "{}", String::from_utf8_lossy(&body));
        }
    }
}
