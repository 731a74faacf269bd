//! The vocabulary every provider agrees on: which commit, which check, which state.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A full git object id: 40 hex characters (SHA-1) or 64 (SHA-256), stored lowercase.
///
/// Short SHAs are rejected: every provider API needs the full id, and a short one
/// could name a different commit tomorrow.
///
/// Kept inline, not on the heap: every status update, key and record carries one,
/// and copying one costs no allocation.
#[derive(Clone)]
pub struct Sha {
    len: u8,
    hex: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShaError {
    #[error("empty commit id")]
    Empty,
    #[error("commit id has {0} characters, expected 40 (SHA-1) or 64 (SHA-256)")]
    Length(usize),
    #[error("commit id contains a character that is not hexadecimal")]
    NotHex,
}

impl Sha {
    pub fn parse(s: &str) -> Result<Self, ShaError> {
        if s.is_empty() {
            return Err(ShaError::Empty);
        }
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ShaError::NotHex);
        }
        match s.len() {
            n @ (40 | 64) => {
                let mut hex = [0u8; 64];
                hex[..n].copy_from_slice(s.as_bytes());
                hex[..n].make_ascii_lowercase();
                Ok(Sha { len: n as u8, hex })
            }
            n => Err(ShaError::Length(n)),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored (checked in `parse`).
        std::str::from_utf8(&self.hex[..usize::from(self.len)]).unwrap_or_default()
    }

    /// The stored hex digits: what comparing and hashing look at, since they run
    /// several times per event and `as_str` checks the bytes each time.
    fn bytes(&self) -> &[u8] {
        &self.hex[..usize::from(self.len)]
    }

    /// The 7-character abbreviation git shows by default.
    pub fn short(&self) -> &str {
        &self.as_str()[..7]
    }
}

impl PartialEq for Sha {
    fn eq(&self, other: &Sha) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Sha {}

impl Hash for Sha {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes().hash(state)
    }
}

impl PartialOrd for Sha {
    fn partial_cmp(&self, other: &Sha) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sha {
    fn cmp(&self, other: &Sha) -> std::cmp::Ordering {
        // Byte order is the order of the hex strings.
        self.bytes().cmp(other.bytes())
    }
}

impl fmt::Display for Sha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Sha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha({})", self.as_str())
    }
}

/// Our own deploy state; each provider maps it to its own vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Succeeded,
    Failed,
    Canceled,
}

impl State {
    pub const ALL: [State; 4] = [State::Pending, State::Succeeded, State::Failed, State::Canceled];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Canceled => "canceled",
        }
    }

    /// Final states end a wait; pending does not.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a check, e.g. `flux-status/dev/sync`.
///
/// GitHub and GitLab show it whole (context / name). Azure DevOps splits it at the
/// first `/` into a genre and a name (`flux-status` + `dev/sync`).
///
/// Shared, not copied: the few check names of a deployment are carried by every update.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Check(Arc<str>);

impl Check {
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Check(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `(genre, name)`: the part before the first `/` and the rest. A check without a
    /// `/` has an empty genre, which Azure DevOps allows.
    pub fn genre_and_name(&self) -> (&str, &str) {
        match self.0.split_once('/') {
            Some((genre, name)) => (genre, name),
            None => ("", &self.0),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Check({})", self.0)
    }
}

/// One status to write on one commit of the notifier's repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    pub sha: Sha,
    pub check: Check,
    pub state: State,
    /// Full text; each notifier truncates it to its provider's limit.
    pub description: String,
    pub target_url: Option<String>,
    /// Markdown detail for a provider that shows more than one line (a GitHub check
    /// run's summary); `None` when the status has none. Providers with one line ignore it.
    pub summary: Option<String>,
    /// The branch (or tag) the commit was deployed from, when the event says it: a
    /// GitLab deployment's `ref`. Only deployments use it.
    pub git_ref: Option<String>,
}

/// A status read back from a provider, already mapped to our states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadStatus {
    pub check: Check,
    pub state: State,
    pub description: String,
    /// The provider's id for the status; higher is newer on every provider.
    pub id: i64,
}

/// Newest first, whatever order the provider listed them in.
pub fn newest_first(mut statuses: Vec<ReadStatus>) -> Vec<ReadStatus> {
    statuses.sort_by_key(|s| std::cmp::Reverse(s.id));
    statuses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha_accepts_full_ids_and_lowercases() {
        let upper = "9F2C1BBD5E1DD2C0D2C5BFE1F6A0CBB0A3A9C6E1";
        assert_eq!(Sha::parse(upper).unwrap().as_str(), upper.to_lowercase());
        assert!(Sha::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn sha_rejects_what_is_not_a_full_id() {
        let cases = [
            ("", ShaError::Empty),
            ("foobar", ShaError::NotHex),
            ("a1afe26", ShaError::Length(7)),
            (&"z".repeat(40), ShaError::NotHex),
            (&"a".repeat(41), ShaError::Length(41)),
            ("9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1\n", ShaError::NotHex),
        ];
        for (input, want) in cases {
            assert_eq!(Sha::parse(input).unwrap_err(), want, "input {input:?}");
        }
    }

    #[test]
    fn check_splits_genre_at_first_slash() {
        assert_eq!(
            Check::new("flux-status/dev/sync").genre_and_name(),
            ("flux-status", "dev/sync")
        );
        assert_eq!(Check::new("plain").genre_and_name(), ("", "plain"));
    }
}
