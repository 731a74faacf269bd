//! What the Flux slices' mappings share: why an event became no status ([`Skip`]),
//! what a mapping returns ([`Mapped`]), and naming a few of many in a description.
//! Each version's own mapping is `fluxv1::map` and `fluxv2::map`.

use crate::update::StatusUpdate;
use notifiers::ShaError;

/// Why an event (or part of it) produced no status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// commit, release, autorelease and unknown types carry nothing to status.
    NotAStatusEvent,
    NoMetadata,
    NoCommits,
    InvalidSha {
        revision: String,
        error: ShaError,
    },
    /// No `--config` rule matches the Flux object, and there is no `--git-url`.
    NoRepo,
    /// A Flux v2 revision that names no commit we can status.
    Revision(RevisionError),
}

impl Skip {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Skip::NotAStatusEvent => "not_a_status_event",
            Skip::NoMetadata => "no_metadata",
            Skip::NoCommits => "no_commits",
            Skip::InvalidSha { .. } => "invalid_sha",
            Skip::Revision(e) => e.label(),
            Skip::NoRepo => "no_repo",
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotAStatusEvent => f.write_str("event type carries no deploy status"),
            Skip::NoMetadata => f.write_str("event has no metadata"),
            Skip::NoCommits => f.write_str("sync event lists no commits"),
            Skip::Revision(e) => write!(f, "{e}"),
            Skip::NoRepo => f.write_str("no --config rule matches the object and there is no --git-url"),
            Skip::InvalidSha { revision, error } => {
                write!(f, "revision {revision:?} is not a commit id: {error}")
            }
        }
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

/// `a, b, c and 2 more`: the first `named` items, then how many were left out, since
/// providers cut descriptions short.
pub fn name_a_few<S: AsRef<str>>(items: &[S], named: usize) -> String {
    let mut s = items
        .iter()
        .take(named)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > named {
        s.push_str(&format!(" and {} more", items.len() - named));
    }
    s
}

/// A fixture under `tests/fixtures/` (unit tests read the same files the end-to-end
/// tests do).
#[cfg(test)]
pub(crate) fn fixture(rel: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Mapped {
    pub updates: Vec<StatusUpdate>,
    pub skips: Vec<Skip>,
}

impl Mapped {
    pub fn skipped(skip: Skip) -> Self {
        Mapped {
            updates: Vec::new(),
            skips: vec![skip],
        }
    }
}
