//! Flux v2 events (`fluxcd/pkg/apis/event/v1beta1.Event`), in both shapes we get:
//! forwarded by notification-controller to a `generic`/`generic-hmac` Provider
//! (unprefixed metadata), and raw from the controllers' `--events-addr`
//! (`<api group>/<key>` metadata, object annotations as `event.toolkit.fluxcd.io/<key>`).

pub use crate::mapping::RevisionError;
use notifiers::{Sha, ShaError};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use std::borrow::Cow;

// Every string of an event is borrowed from the body unless it had to be unescaped:
// an event is read, mapped and dropped within its request. (serde borrows only a
// field spelled `Cow`, not an alias of it.)
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ObjectRef<'a> {
    #[serde(default, borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub namespace: Cow<'a, str>,
    #[serde(default, borrow)]
    pub name: Cow<'a, str>,
    #[serde(rename = "apiVersion", default, borrow)]
    pub api_version: Cow<'a, str>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Event<'a> {
    #[serde(rename = "involvedObject", borrow)]
    pub involved_object: ObjectRef<'a>,
    #[serde(default, borrow)]
    pub severity: Cow<'a, str>,
    #[serde(default, borrow)]
    pub message: Cow<'a, str>,
    #[serde(default, borrow)]
    pub reason: Cow<'a, str>,
    #[serde(default, borrow)]
    pub metadata: Metadata<'a>,
    /// When the controller emitted it, as written; shown in a check run's summary.
    #[serde(default, deserialize_with = "crate::json::string_or_none")]
    pub timestamp: Option<String>,
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

pub fn parse(body: &[u8]) -> Result<Event<'_>, EventError> {
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

/// An event's metadata (a JSON object of strings), in the order sent. An event has a
/// handful of keys and each is looked up under up to three names: one scan of the
/// pairs does that without hashing any of them.
#[derive(Debug, Clone, Default)]
pub struct Metadata<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

/// One key or value of the metadata, borrowed where it can be.
#[derive(Deserialize)]
struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Metadata<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Metadata<'a>, D::Error> {
        struct Pairs<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Pairs<'a> {
            type Value = Metadata<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata<'a>, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
                while let Some((Borrowed(k), Borrowed(v))) = map.next_entry()? {
                    pairs.push((k, v));
                }
                Ok(Metadata(pairs))
            }
        }
        d.deserialize_map(Pairs(std::marker::PhantomData))
    }
}

/// Where notification-controller puts object annotations in raw events.
const ANNOTATION_GROUP: &str = "event.toolkit.fluxcd.io";

impl Event<'_> {
    /// The API group of the involved object (`kustomize.toolkit.fluxcd.io`).
    fn group(&self) -> &str {
        self.involved_object.api_version.split('/').next().unwrap_or("")
    }

    /// A metadata value by its unprefixed key, in either shape, with
    /// notification-controller's precedence: the forwarded (merged) key, then the
    /// controller's `<group>/<key>`, then the object annotation. A key sent twice
    /// has its last value, as when the object is decoded into a map.
    pub fn meta(&self, key: &str) -> Option<&str> {
        let group = self.group();
        let mut by_precedence: [Option<&str>; 3] = [None; 3];
        for (k, v) in &self.metadata.0 {
            let rank = if k == key {
                0
            } else {
                match k.strip_suffix(key).and_then(|prefix| prefix.strip_suffix('/')) {
                    Some(prefix) if !group.is_empty() && prefix == group => 1,
                    Some(ANNOTATION_GROUP) => 2,
                    _ => continue,
                }
            };
            by_precedence[rank] = Some(v.as_ref());
        }
        by_precedence.into_iter().flatten().next()
    }

    /// Flux's `GetRevision`: `commit`, then `originRevision`, then `revision`.
    pub fn revision(&self) -> Option<(&'static str, &str)> {
        ["commit", "originRevision", "revision"]
            .into_iter()
            .find_map(|k| self.meta(k).map(|v| (k, v)))
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

/// The branch (or tag) a revision names: `main` of `main@sha1:…`,
/// `refs/heads/main@sha1:…` and the older `main/<sha>`; `None` when it names none.
pub fn revision_branch(rev: &str) -> Option<&str> {
    let name = match rev.rsplit_once('@') {
        Some((name, _)) => name,
        // Before Flux 2.0: `<branch>/<sha>`.
        None => rev.rsplit_once('/').map_or("", |(name, _)| name),
    };
    let name = name
        .strip_prefix("refs/heads/")
        .or_else(|| name.strip_prefix("refs/tags/"))
        .unwrap_or(name);
    (!name.is_empty() && name != "HEAD" && !name.starts_with("sha1:")).then_some(name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_branch_of_a_revision() {
        let sha = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";
        let cases = [
            (format!("main@sha1:{sha}"), Some("main")),
            (format!("refs/heads/release/1.x@sha1:{sha}"), Some("release/1.x")),
            (format!("refs/tags/v1.2.0@sha1:{sha}"), Some("v1.2.0")),
            (format!("feature/x/{sha}"), Some("feature/x")),
            (format!("sha1:{sha}"), None),
            (format!("HEAD@sha1:{sha}"), None),
            (sha.to_string(), None),
        ];
        for (rev, want) in cases {
            assert_eq!(revision_branch(&rev), want, "{rev}");
        }
    }

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
        let body = format!(
            r#"{{"involvedObject":{{"kind":"K","name":"a","apiVersion":"{group}/v1"}},"severity":"info","metadata":{{"{group}/revision":"r1"}}}}"#
        );
        let long = parse(body.as_bytes()).unwrap();
        assert_eq!(long.meta("revision"), Some("r1"), "a long group");
        let twice = parse(br#"{"involvedObject":{"kind":"K","name":"a","apiVersion":"g/v1"},"metadata":{"event.toolkit.fluxcd.io/revision":"r3","g/revision":"r2","revision":"r0","revision":"r1","g/revision":"r4"}}"#).unwrap();
        assert_eq!(
            twice.meta("revision"),
            Some("r1"),
            "the forwarded key first, its last value"
        );
        assert_eq!(twice.meta("vision"), None, "only whole keys match");
        let raw_only = parse(br#"{"involvedObject":{"kind":"K","name":"a","apiVersion":"g/v1"},"metadata":{"event.toolkit.fluxcd.io/revision":"r3","g/revision":"r2","g/revision":"r4"}}"#).unwrap();
        assert_eq!(
            raw_only.meta("revision"),
            Some("r4"),
            "the group's key before the annotation"
        );
        let no_group = parse(br#"{"involvedObject":{"kind":"K","name":"a"},"metadata":{"/revision":"r2","event.toolkit.fluxcd.io/revision":"r3"}}"#).unwrap();
        assert_eq!(no_group.meta("revision"), Some("r3"), "no group: the annotation");
        let escaped = parse(br#"{"involvedObject":{"kind":"K","name":"a\u0070ps"},"metadata":{"revi\u0073ion":"main@sha1:\u0061bc","commit_status":"update"}}"#).unwrap();
        assert_eq!(
            &*escaped.involved_object.name, "apps",
            "an escaped string is unescaped"
        );
        assert_eq!(
            escaped.meta("revision"),
            Some("main@sha1:abc"),
            "so is an escaped key"
        );
        assert_eq!(escaped.meta("commit_status"), Some("update"));
        for bad in [r#"{"revision":1}"#, "[]", r#""revision""#] {
            let body = format!(r#"{{"involvedObject":{{"kind":"K","name":"a"}},"metadata":{bad}}}"#);
            assert!(
                matches!(parse(body.as_bytes()), Err(EventError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(parse(b"{"), Err(EventError::MalformedJson(_))));
        assert!(matches!(
            parse(br#"{"involvedObject":{}}"#),
            Err(EventError::Invalid(_))
        ));
        assert!(matches!(parse(b"[1]"), Err(EventError::Invalid(_))));
    }

    #[test]
    fn strings_are_borrowed_from_the_body_unless_escaped() {
        let ev = parse(br#"{"involvedObject":{"kind":"K","name":"a\u0070ps"},"reason":"R","metadata":{"revision":"main@sha1:abc","k\u0065y":"v"}}"#).unwrap();
        let borrowed = |c: &Cow<'_, str>| matches!(c, Cow::Borrowed(_));
        assert!(borrowed(&ev.involved_object.kind) && borrowed(&ev.reason));
        assert!(!borrowed(&ev.involved_object.name), "unescaped, so owned");
        let pairs: Vec<(bool, bool)> = ev
            .metadata
            .0
            .iter()
            .map(|(k, v)| (borrowed(k), borrowed(v)))
            .collect();
        assert_eq!(pairs, [(true, true), (false, true)]);
    }

    /// Event-shaped bodies (keys and revisions as Flux sends them, any text in
    /// between), at times with a byte that is not UTF-8 or JSON spliced in; or any
    /// bytes at all.
    pub(crate) fn body() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let text = prop_oneof![
            3 => prop::sample::select(&[
                "Kustomization", "HelmRelease", "apps", "flux-system", "info", "error",
                "ReconciliationSucceeded", "Progressing", "revision", "commit", "originRevision",
                "kustomize.toolkit.fluxcd.io/revision", "event.toolkit.fluxcd.io/commit",
                "kustomize.toolkit.fluxcd.io/v1", "commit_status", "update",
                "main@sha1:a1afe267b54f38b46b487f6e938a6fd508278c07",
                "main/a1afe267b54f38b46b487f6e938a6fd508278c07",
                "latest@sha256:8af90b59cf7a1d0c2c3b4f9d0e5f7a6b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f",
                "6.7.1", "",
            ][..]).prop_map(str::to_string),
            1 => any::<String>(),
        ];
        let pairs = prop::collection::vec((text.clone(), text.clone()), 0..5);
        let event = (text.clone(), text.clone(), text.clone(), text.clone(), text, pairs).prop_map(
            |(kind, name, api, severity, reason, pairs)| {
                let metadata: serde_json::Map<String, serde_json::Value> =
                    pairs.into_iter().map(|(k, v)| (k, v.into())).collect();
                serde_json::json!({
                    "involvedObject": {"kind": kind, "name": name, "namespace": "flux-system", "apiVersion": api},
                    "severity": severity, "reason": reason, "message": "m", "metadata": metadata,
                })
                .to_string()
                .into_bytes()
            },
        );
        let spliced: &[&[u8]] = &[b"\xff", b"\xc3", b"\xed\xa0\x80", b"\"", b"\\", b"{", b"\x00"];
        prop_oneof![
            4 => (event, any::<prop::sample::Index>(), prop::sample::select(spliced), any::<bool>()).prop_map(
                |(mut body, at, bytes, splice)| {
                    if splice {
                        let at = at.index(body.len() + 1);
                        body.splice(at..at, bytes.iter().copied());
                    }
                    body
                }
            ),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// What the fuzz target does: any bytes are decoded, or refused, without a
        /// panic; an accepted event names its object (and maps: `map`'s test).
        #[test]
        fn any_bytes_decode_or_are_refused(body in body()) {
            if let Ok(ev) = parse(&body) {
                proptest::prop_assert!(!ev.involved_object.kind.is_empty() && !ev.involved_object.name.is_empty());
                let _ = (ev.revision(), ev.meta("commit_status"));
            }
        }

        /// An event as serde_json writes it decodes to what was written, whatever
        /// the text (escapes, quotes, any Unicode).
        #[test]
        fn written_events_decode_to_their_fields(
            kind in ".{1,12}", name in ".{1,12}", message in ".{0,40}",
            pairs in proptest::collection::vec(("[a-z_]{1,6}", ".{0,12}"), 0..5),
        ) {
            let metadata: serde_json::Map<String, Value> = pairs.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
            let body = serde_json::json!({
                "involvedObject": {"kind": kind, "name": name},
                "message": message,
                "metadata": metadata,
            }).to_string();
            let ev = parse(body.as_bytes()).unwrap();
            proptest::prop_assert_eq!(&*ev.involved_object.kind, &kind);
            proptest::prop_assert_eq!(&*ev.involved_object.name, &name);
            proptest::prop_assert_eq!(&*ev.message, &message);
            for (k, v) in &metadata {
                proptest::prop_assert_eq!(ev.meta(k), v.as_str());
            }
        }

        /// Every form Flux writes a commit revision in gives that commit back.
        #[test]
        fn valid_revisions_round_trip(
            sha in "[0-9a-fA-F]{40}",
            branch in "[a-zA-Z0-9._-]{1,12}(/[a-zA-Z0-9._-]{1,12}){0,2}",
            form in 0..4u8,
        ) {
            let rev = match form {
                0 => format!("{branch}@sha1:{sha}"),
                1 => format!("{branch}/{sha}"),
                2 => format!("sha1:{sha}"),
                _ => sha.clone(),
            };
            proptest::prop_assert_eq!(parse_revision(&rev).map(|s| s.to_string()), Ok(sha.to_ascii_lowercase()), "{}", rev);
        }

        /// Any text is a commit, or a reason why not; a commit is the text's tail.
        #[test]
        fn any_revision_is_a_commit_or_a_reason(rev in "\\PC{0,80}|.{0,80}") {
            if let Ok(sha) = parse_revision(&rev) {
                proptest::prop_assert!(rev.to_ascii_lowercase().ends_with(sha.as_str()), "{} -> {}", rev, sha);
            }
        }
    }
}
