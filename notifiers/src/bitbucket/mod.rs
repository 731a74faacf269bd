//! Bitbucket Cloud ([`cloud`]) and Bitbucket Server / Data Center ([`server`]): two
//! APIs that share how a credential is sent, how a check name becomes a bounded
//! status key, and how that key is read back as the check name.

pub mod cloud;
pub mod server;

use crate::credential::{CredentialSource, with_token};
use crate::http::{self, sensitive_header};
use crate::{CommitStatus, NotifyError, text};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// Bitbucket's limits on a build status' `name` and `url` (Cloud and Server alike).
pub const NAME_LIMIT: usize = 255;
pub const URL_LIMIT: usize = 450;
/// Server's legacy API limits the description to 255; Cloud documents no limit,
/// and a pull request shows a line of it.
pub const DESCRIPTION_LIMIT: usize = 255;

/// What both APIs take of a status besides its state, in the same words.
#[derive(serde::Serialize)]
pub(crate) struct Fields {
    key: String,
    name: String,
    description: String,
    url: String,
}

impl Fields {
    /// The key bounded to `max_key`; the link to `--target-url`, else to the
    /// commit's page under `repo_page`.
    pub(crate) fn of(status: &CommitStatus, max_key: usize, repo_page: &str) -> Fields {
        let check = status.check.as_str();
        Fields {
            key: status_key(check, max_key),
            name: text::one_line_truncated(check, NAME_LIMIT),
            description: text::one_line_truncated(&status.description, DESCRIPTION_LIMIT),
            url: link(status.target_url.as_deref(), URL_LIMIT, || {
                format!("{repo_page}/commits/{}", status.sha)
            }),
        }
    }
}

/// An authenticated GET whose answer is a success, or the reason it is not.
pub(crate) async fn get(
    provider: &'static str,
    client: &reqwest::Client,
    credential: &dyn CredentialSource,
    url: &str,
) -> Result<http::HttpResponse, NotifyError> {
    with_token(credential, |token| {
        let req = auth(client.get(url), &token);
        async move { http::read(provider, req?).await }
    })
    .await
}

/// `user:secret` (an Atlassian account email with an API token, an app password,
/// a Server user with a password or token) goes as Basic; a bare token (repository,
/// project or workspace access token; Server HTTP access token) as Bearer.
pub(crate) fn auth(
    req: reqwest::RequestBuilder,
    token: &SecretString,
) -> Result<reqwest::RequestBuilder, NotifyError> {
    match token.expose_secret().split_once(':') {
        // reqwest marks the Basic header sensitive, as sensitive_header does.
        Some((user, secret)) => Ok(req.basic_auth(user, Some(secret))),
        None => Ok(req.header(
            reqwest::header::AUTHORIZATION,
            sensitive_header(&format!("Bearer {}", token.expose_secret()))?,
        )),
    }
}

/// Hex digits of the hash a too-long check name ends in: 40 bits, for the handful
/// of check names one commit carries.
const HASH_CHARS: usize = 10;

/// The status key for `check`: the check name itself when it fits in `max`
/// characters, else its first characters, `-` and a hash of the whole name, so
/// the key stays readable, stable across restarts and versions, and distinct.
pub fn status_key(check: &str, max: usize) -> String {
    if check.chars().count() <= max {
        return check.to_string();
    }
    let digest = Sha256::digest(check.as_bytes());
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let prefix: String = check.chars().take(max.saturating_sub(HASH_CHARS + 1)).collect();
    format!("{prefix}-{}", &hash[..HASH_CHARS.min(max)])
}

/// The check a listed status stands for: its `name` when the key is the one we
/// derive from that name (ours, or a tool that keys the same way), else its key, so
/// a status of another tool that merely shows the same name never matches ours.
pub(crate) fn check_of(key: Option<String>, name: Option<String>, max_key: usize) -> Option<String> {
    match (key, name) {
        (Some(key), Some(name)) if status_key(&name, max_key) == key => Some(name),
        (Some(key), _) => Some(key),
        (None, name) => name,
    }
}

/// A path segment: unreserved characters kept (`~` of Server's personal projects
/// included), everything else encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub(crate) fn encode(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Where a status links to: `--target-url` when the provider will take it (an
/// http(s) URL within `max` characters), else `fallback`.
fn link(target_url: Option<&str>, max: usize, fallback: impl FnOnce() -> String) -> String {
    target_url
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .filter(|u| u.chars().count() <= max)
        .map_or_else(fallback, str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_fits_is_the_check_name() {
        assert_eq!(status_key("flux-status/dev/sync", 40), "flux-status/dev/sync");
        let exactly = "x".repeat(40);
        assert_eq!(status_key(&exactly, 40), exactly);
    }

    #[test]
    fn a_long_check_name_keeps_a_readable_prefix_and_a_stable_hash() {
        let long = "flux-status/production-eu-west-1/kustomization/flux-system/apps";
        let key = status_key(long, 40);
        assert_eq!(key.chars().count(), 40, "{key}");
        assert!(key.starts_with("flux-status/production-eu-wes-"), "{key}");
        // Stable: the same key every time, in every version (sha256 of the name).
        assert_eq!(key, "flux-status/production-eu-wes-3d6dbea6f9");
        // Distinct: names that share the prefix get different keys.
        let other = status_key(
            "flux-status/production-eu-west-1/kustomization/flux-system/infra",
            40,
        );
        assert_ne!(key, other);
        // Characters, not bytes.
        let wide = "é".repeat(50);
        assert_eq!(status_key(&wide, 40).chars().count(), 40);
    }

    #[test]
    fn a_key_reads_back_as_the_check_it_was_made_from() {
        let long = "flux-status/production-eu-west-1/kustomization/flux-system/apps";
        let s = |v: &str| Some(v.to_string());
        assert_eq!(check_of(s(&status_key(long, 40)), s(long), 40), s(long));
        assert_eq!(
            check_of(s("flux-status/dev/sync"), s("flux-status/dev/sync"), 40),
            s("flux-status/dev/sync")
        );
        // Another tool showing our name under its own key is not our check.
        assert_eq!(
            check_of(s("BAMBOO-1"), s("flux-status/dev/sync"), 40),
            s("BAMBOO-1")
        );
        assert_eq!(check_of(None, s("n"), 40), s("n"));
        assert_eq!(check_of(None, None, 40), None);
    }

    #[test]
    fn the_link_is_the_target_url_when_the_provider_takes_it() {
        let page = || "https://bitbucket.org/ws/r/commits/abc".to_string();
        assert_eq!(
            link(Some("https://flux.example.com/x"), 450, page),
            "https://flux.example.com/x"
        );
        assert_eq!(link(None, 450, page), page());
        assert_eq!(link(Some("flux.example.com/x"), 450, page), page());
        let long = format!("https://flux.example.com/{}", "x".repeat(450));
        assert_eq!(link(Some(&long), 450, page), page());
    }
}
