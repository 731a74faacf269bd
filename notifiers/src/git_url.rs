//! Git remote URLs in every form users write them, reduced to host + path segments.
//!
//! Provider modules interpret the segments (owner/repo, group/subgroup/project,
//! org/project/_git/repo). User info is never kept: it can carry a token, and this
//! type is printed in logs.

use percent_encoding::percent_decode_str;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
    Ssh,
    Git,
    /// `[user@]host:path`, as `git clone` accepts it.
    Scp,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
            Scheme::Ssh | Scheme::Scp => "ssh",
            Scheme::Git => "git",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct GitUrl {
    pub scheme: Scheme,
    /// Lowercase host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: Option<u16>,
    /// Percent-decoded, non-empty path segments, `.git` suffix still on the last one.
    pub segments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitUrlError {
    #[error("git URL is empty")]
    Empty,
    #[error("git URL contains whitespace or control characters")]
    InvalidCharacter,
    #[error("unsupported URL scheme {0:?} (use https://, http://, ssh:// or git@host:path)")]
    UnsupportedScheme(String),
    #[error(
        "not a git URL (expected https://host/owner/repo, ssh://git@host/owner/repo or git@host:owner/repo)"
    )]
    Unrecognised,
    #[error("git URL has no host")]
    MissingHost,
    #[error("git URL host {0:?} is not a valid host name")]
    InvalidHost(String),
    #[error("git URL port {0:?} is not a number from 1 to 65535")]
    InvalidPort(String),
    #[error("git URL has no repository path")]
    MissingPath,
    #[error("{0} has no App authentication: give it a token")]
    NoApps(&'static str),
    #[error("{0} has no deployments to environments flux-status can write (--deployments)")]
    NoDeployments(&'static str),
    #[error("{provider} repository path must look like {expected}, got {got:?}")]
    UnexpectedPath {
        provider: &'static str,
        expected: &'static str,
        got: String,
    },
}

impl GitUrl {
    pub fn parse(input: &str) -> Result<GitUrl, GitUrlError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(GitUrlError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(GitUrlError::InvalidCharacter);
        }
        let (scheme, authority, path) = match s.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = match scheme.to_ascii_lowercase().as_str() {
                    "https" => Scheme::Https,
                    "http" => Scheme::Http,
                    "ssh" | "git+ssh" | "ssh+git" => Scheme::Ssh,
                    "git" => Scheme::Git,
                    // Named only if it is one (RFC 3986): text before "://" may be user info.
                    other
                        if other.starts_with(|c: char| c.is_ascii_alphabetic())
                            && other
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
                    {
                        return Err(GitUrlError::UnsupportedScheme(other.to_string()));
                    }
                    _ => return Err(GitUrlError::Unrecognised),
                };
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                (scheme, authority, path)
            }
            None => {
                // scp-like: the first ':' must come before any '/'.
                let colon = s.find(':').ok_or(GitUrlError::Unrecognised)?;
                if s[..colon].contains('/') {
                    return Err(GitUrlError::Unrecognised);
                }
                (Scheme::Scp, &s[..colon], &s[colon + 1..])
            }
        };
        // No git host has an '@' in a repository path: one there is user info that
        // held a ':' or '/' and was split in the wrong place, and would be printed.
        if path.contains('@') {
            return Err(GitUrlError::Unrecognised);
        }
        let host_port = match authority.rfind('@') {
            Some(at) => &authority[at + 1..],
            None => authority,
        };
        let (host, port) = split_host_port(host_port, scheme)?;
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<String> = path
            .split('/')
            .filter(|seg| !seg.is_empty())
            .map(|seg| percent_decode_str(seg).decode_utf8_lossy().into_owned())
            .collect();
        if segments.is_empty() {
            return Err(GitUrlError::MissingPath);
        }
        Ok(GitUrl {
            scheme,
            host,
            port,
            segments,
        })
    }

    /// Path segments with a trailing `.git` removed from the last one.
    pub fn repo_segments(&self) -> Vec<&str> {
        let last = self.segments.len().saturating_sub(1);
        self.segments
            .iter()
            .enumerate()
            .map(|(i, seg)| {
                if i == last {
                    seg.strip_suffix(".git").unwrap_or(seg)
                } else {
                    seg.as_str()
                }
            })
            .filter(|seg| !seg.is_empty())
            .collect()
    }

    /// `https://host[:port]` for http(s) URLs; `https://host` for ssh forms, whose port
    /// belongs to the ssh daemon and says nothing about the web API.
    pub fn web_origin(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.scheme, self.port) {
            (Scheme::Http, Some(p)) => format!("http://{host}:{p}"),
            (Scheme::Http, None) => format!("http://{host}"),
            (Scheme::Https, Some(p)) => format!("https://{host}:{p}"),
            _ => format!("https://{host}"),
        }
    }
}

fn split_host_port(s: &str, scheme: Scheme) -> Result<(String, Option<u16>), GitUrlError> {
    if s.is_empty() {
        return Err(GitUrlError::MissingHost);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| GitUrlError::InvalidHost(s.to_string()))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| GitUrlError::InvalidHost(s.to_string()))?,
            ),
        };
        (host, port)
    } else if scheme == Scheme::Scp {
        (s, None)
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        && !host.starts_with(['.', '-'])
        && (!host.contains(':') || s.starts_with('['));
    if !valid {
        return Err(GitUrlError::InvalidHost(host.to_string()));
    }
    let port = match port {
        None | Some("") => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(GitUrlError::InvalidPort(p.to_string())),
            Ok(n) => Some(n),
        },
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Prints the URL without user info, so it is safe in logs and errors.
impl fmt::Display for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{}://{}", self.scheme.as_str(), host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for seg in &self.segments {
            write!(f, "/{seg}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GitUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(input: &str) -> (String, Option<u16>, Vec<String>) {
        let u = GitUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        (
            u.host.clone(),
            u.port,
            u.repo_segments().iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn common_forms_reduce_to_host_and_segments() {
        let or = vec!["o".to_string(), "r".to_string()];
        for input in [
            "https://github.com/o/r",
            "https://github.com/o/r.git",
            "https://github.com/o/r/",
            "https://user:secret@github.com/o/r.git",
            "ssh://git@github.com/o/r.git",
            "git@github.com:o/r.git",
            "git@github.com:/o/r.git",
            "github.com:o/r",
            "git+ssh://git@github.com/o/r",
            "HTTPS://GitHub.com/o/r?x=1#frag",
        ] {
            assert_eq!(
                parsed(input),
                ("github.com".to_string(), None, or.clone()),
                "{input}"
            );
        }
    }

    #[test]
    fn ports_dotted_names_and_escapes_survive() {
        assert_eq!(
            parsed("ssh://git@git.example.com:2222/team/my.repo.git"),
            (
                "git.example.com".into(),
                Some(2222),
                vec!["team".into(), "my.repo".into()]
            )
        );
        assert_eq!(
            parsed("https://dev.azure.com/org/My%20Project/_git/repo"),
            (
                "dev.azure.com".into(),
                None,
                vec!["org".into(), "My Project".into(), "_git".into(), "repo".into()]
            )
        );
        assert_eq!(parsed("https://[::1]:8443/o/r").0, "::1");
    }

    #[test]
    fn display_never_shows_user_info() {
        let u = GitUrl::parse("https://x-access-token:ghp_secret@github.com/o/r.git").unwrap();
        let shown = format!("{u} {u:?}");
        assert!(
            !shown.contains("ghp_secret") && !shown.contains("x-access-token"),
            "{shown}"
        );
        assert_eq!(u.to_string(), "https://github.com/o/r.git");
    }

    #[test]
    fn invalid_inputs_are_errors_not_panics() {
        let cases = [
            ("", GitUrlError::Empty),
            ("   ", GitUrlError::Empty),
            (
                "file:///srv/repo.git",
                GitUrlError::UnsupportedScheme("file".into()),
            ),
            ("just-a-word", GitUrlError::Unrecognised),
            ("https://", GitUrlError::MissingHost),
            ("https://github.com", GitUrlError::MissingPath),
            (
                "https://github.com:notaport/o/r",
                GitUrlError::InvalidPort("notaport".into()),
            ),
            ("https://github.com:0/o/r", GitUrlError::InvalidPort("0".into())),
            ("https://gith ub.com/o/r", GitUrlError::InvalidCharacter),
            ("git@:o/r", GitUrlError::MissingHost),
            (
                "https://-bad.com/o/r",
                GitUrlError::InvalidHost("-bad.com".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(GitUrl::parse(input).unwrap_err(), want, "{input:?}");
        }
    }

    #[test]
    fn misplaced_user_info_is_refused_not_shown() {
        for input in [
            "x-access-token:ghp_secret@github.com:o/r",
            "x-access-token:ghp_secret@github.com/o/r",
            "https://u:ghp/secret@github.com/o/r",
            "https://u:gh?p/secret@github.com/o/r",
            "u:ghp_secret@https://github.com/o/r",
        ] {
            assert_eq!(GitUrl::parse(input), Err(GitUrlError::Unrecognised), "{input}");
        }
    }

    /// One of the forms `parse` takes, with user info (a password marked `Zq`: nothing
    /// else generated holds a z or a q) and a repository path of plain segments.
    fn url_with_secret() -> impl proptest::strategy::Strategy<Value = (String, String, Vec<String>)> {
        use proptest::prelude::*;
        let secret = "Zq[!-~]{0,12}";
        let host = "[a-p0-9][a-p0-9.-]{0,15}";
        let segments = prop::collection::vec("[a-pA-P0-9_.-]{1,10}", 1..4);
        let form = prop::sample::select(
            &[
                "https://",
                "http://",
                "ssh://",
                "git://",
                "git+ssh://",
                "",
                "bogus://",
            ][..],
        );
        (form, "[a-p-]{0,8}", secret, host, segments, any::<bool>()).prop_map(
            |(form, user, secret, host, segments, with_port)| {
                let port = if with_port && !form.is_empty() {
                    ":2222"
                } else {
                    ""
                };
                let sep = if form.is_empty() { ":" } else { "/" };
                let input = format!("{form}{user}:{secret}@{host}{port}{sep}{}", segments.join("/"));
                (input, host, segments)
            },
        )
    }

    proptest::proptest! {
        /// User info is never printed: not by a parsed URL, not by an error.
        #[test]
        fn user_info_is_never_shown((input, _, _) in url_with_secret()) {
            let shown = match GitUrl::parse(&input) {
                Ok(u) => format!("{u} {u:?} {}", u.web_origin()),
                Err(e) => format!("{e} {e:?}"),
            };
            proptest::prop_assert!(!shown.to_ascii_lowercase().contains("zq"), "{input} -> {shown}");
        }

        /// A URL made of a host and plain segments parses to them, and what it prints
        /// parses back to the same repository.
        #[test]
        fn plain_urls_round_trip((input, host, segments) in url_with_secret()) {
            let Ok(u) = GitUrl::parse(&input) else {
                // The only forms refused: a bogus scheme, a host that is not one, a
                // password with '/', '?', '#' or '@', the user info's ':' read as scp's.
                return Ok(());
            };
            proptest::prop_assert_eq!(&u.host, &host);
            proptest::prop_assert_eq!(&u.segments, &segments);
            let again = GitUrl::parse(&u.to_string()).unwrap();
            proptest::prop_assert_eq!((&again.host, again.port, &again.segments), (&u.host, u.port, &u.segments));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = GitUrl::parse(&s).map(|u| (u.to_string(), u.repo_segments().len(), u.web_origin()));
        }

        #[test]
        fn parsing_url_shaped_input_never_panics(
            scheme in "(https?|ssh|git|ftp|)",
            user in "([a-z:%@]{0,8}@)?",
            host in "[a-zA-Z0-9.\\[\\]:-]{0,20}",
            path in "[/a-zA-Z0-9.%_ -]{0,40}",
        ) {
            let s = if scheme.is_empty() { format!("{user}{host}:{path}") } else { format!("{scheme}://{user}{host}{path}") };
            let _ = GitUrl::parse(&s).map(|u| (u.to_string(), u.repo_segments().len(), u.web_origin()));
        }
    }
}
