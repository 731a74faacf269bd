//! Installation tokens for a GitHub App: minted with the App's JWT, cached, and
//! replaced at 80% of their lifetime, or at once when GitHub refuses one.
//!
//! One mint at a time: requests that find the token stale wait for the mint under
//! way rather than each starting their own.

use super::app::AppCredential;
use crate::credential::CredentialSource;
use crate::error::{NotifyError, Reason, Retry};
use crate::http::{self, HttpResponse, sensitive_header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::NAME;

/// GitHub's tokens last an hour; a longer `expires_at` is not believed.
const MAX_LIFETIME: Duration = Duration::from_secs(3600);

pub struct InstallationTokens {
    client: reqwest::Client,
    api: String,
    /// `{api}/repos/{owner}/{repo}`, where the installation is looked up.
    repo_url: String,
    /// `owner/repo`, for messages.
    repo: String,
    app: AppCredential,
    state: Mutex<State>,
    /// Held while minting, so concurrent requests share one mint.
    minting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    installation: Option<u64>,
    token: Option<Cached>,
}

struct Cached {
    token: SecretString,
    refresh_at: Instant,
    expires_at: Instant,
}

#[derive(Deserialize)]
struct Minted {
    token: String,
    expires_at: String,
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

impl InstallationTokens {
    pub fn new(client: reqwest::Client, api: &str, repo_url: &str, repo: &str, app: AppCredential) -> Self {
        InstallationTokens {
            client,
            api: api.to_string(),
            repo_url: repo_url.to_string(),
            repo: repo.to_string(),
            state: Mutex::new(State {
                installation: app.installation,
                token: None,
            }),
            app,
            minting: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached token while it is before its refresh time.
    fn fresh(&self) -> Option<SecretString> {
        let s = self.state();
        s.token
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.token.clone())
    }

    /// The cached token while GitHub still takes it, due for refresh or not.
    fn unexpired(&self) -> Option<SecretString> {
        let s = self.state();
        s.token
            .as_ref()
            .filter(|c| Instant::now() < c.expires_at)
            .map(|c| c.token.clone())
    }

    fn request(
        &self,
        req: reqwest::RequestBuilder,
        jwt: &SecretString,
    ) -> Result<reqwest::RequestBuilder, NotifyError> {
        let bearer = sensitive_header(&format!("Bearer {}", jwt.expose_secret()))?;
        Ok(super::with_api_headers(
            req.header(reqwest::header::AUTHORIZATION, bearer),
        ))
    }

    async fn installation(&self) -> Result<u64, NotifyError> {
        if let Some(id) = self.state().installation {
            return Ok(id);
        }
        let jwt = self.app.app.jwt(SystemTime::now())?;
        let url = format!("{}/installation", self.repo_url);
        let resp = http::send(NAME, self.request(self.client.get(&url), &jwt)?).await?;
        if !resp.is_success() {
            return Err(self.failed("looking up the App's installation", &resp));
        }
        let found: Installation = resp.json(NAME)?;
        tracing::info!(repo = %self.repo, installation = found.id, "found the GitHub App's installation");
        self.state().installation = Some(found.id);
        Ok(found.id)
    }

    async fn mint(&self) -> Result<Cached, NotifyError> {
        let installation = self.installation().await?;
        let jwt = self.app.app.jwt(SystemTime::now())?;
        let url = format!("{}/app/installations/{installation}/access_tokens", self.api);
        let resp = http::send(NAME, self.request(self.client.post(&url), &jwt)?).await?;
        if !resp.is_success() {
            return Err(self.failed("minting an installation token", &resp));
        }
        // serde's message could quote the body, and the body holds the token.
        let minted: Minted = resp.json(NAME).map_err(|mut e| {
            e.message = "the installation token answer is not the expected JSON".to_string();
            e
        })?;
        let now = Instant::now();
        let lifetime = parse_rfc3339(&minted.expires_at)
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .map_or(MAX_LIFETIME, |d| d.min(MAX_LIFETIME));
        tracing::debug!(repo = %self.repo, installation, lifetime_s = lifetime.as_secs(),
            "minted a GitHub App installation token");
        Ok(Cached {
            token: SecretString::from(minted.token),
            refresh_at: now + lifetime.mul_f64(0.8),
            expires_at: now + lifetime,
        })
    }

    /// A failed mint or lookup, classified as any GitHub answer, with a message that
    /// says what to check; a JWT refused for its times gets a log line about clocks.
    fn failed(&self, doing: &str, resp: &HttpResponse) -> NotifyError {
        let mut e = http::classify(NAME, resp);
        let installation = self.state().installation;
        let check = match e.reason {
            Reason::Unauthorized => {
                if jwt_time_refused(&e.message) {
                    let skew = clock_skew(&resp.headers);
                    tracing::error!(repo = %self.repo, skew_s = skew, github_message = %e.message,
                        "GitHub refused the App's JWT for its issue or expiry time: this machine's clock \
                         is off from GitHub's (clock skew); check NTP");
                }
                format!(
                    "check the App id ({}) and that the private key is the App's current one, and \
                     this machine's clock",
                    self.app.app.id()
                )
            }
            Reason::NotFound if installation.is_none() => format!(
                "the App {} is not installed on {}: install it there, or give the installation id",
                self.app.app.id(),
                self.repo
            ),
            Reason::NotFound | Reason::Forbidden => format!(
                "check the installation id ({}) belongs to App {} and that the installation can \
                 reach {} with the permissions Checks, Commit statuses and Deployments (read and \
                 write) and Metadata (read)",
                installation.map_or_else(|| "none".to_string(), |i| i.to_string()),
                self.app.app.id(),
                self.repo
            ),
            _ => String::new(),
        };
        e.message = if check.is_empty() {
            format!("{doing}: {}", e.message)
        } else {
            format!("{doing}: {}; {check}", e.message)
        };
        e
    }
}

#[async_trait::async_trait]
impl CredentialSource for InstallationTokens {
    async fn token(&self) -> Result<SecretString, NotifyError> {
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let _minting = self.minting.lock().await;
        // Whoever held the lock before us may have minted one.
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        match self.mint().await {
            Ok(cached) => {
                let token = cached.token.clone();
                self.state().token = Some(cached);
                Ok(token)
            }
            // The old token still works for a while: better than failing the write.
            Err(e) if e.retry != Retry::Permanent => match self.unexpired() {
                Some(t) => {
                    tracing::warn!(repo = %self.repo, error = %e.message,
                        "could not refresh the GitHub App token; using the current one until it expires");
                    Ok(t)
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    fn refused(&self, token: &SecretString) -> bool {
        let mut s = self.state();
        if s.token
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == token.expose_secret())
        {
            s.token = None;
        }
        true
    }
}

/// GitHub's words when the JWT's `iat` or `exp` is out of range.
fn jwt_time_refused(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("'iat'") || m.contains("'exp'") || m.contains("issued at") || m.contains("expiration time")
}

/// Seconds GitHub's clock (its `Date` header) is ahead of ours; negative: behind.
fn clock_skew(headers: &reqwest::header::HeaderMap) -> Option<i64> {
    let date = headers.get("date")?.to_str().ok()?;
    let theirs = httpdate::parse_http_date(date).ok()?;
    let now = SystemTime::now();
    Some(match theirs.duration_since(now) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(behind) => -(behind.duration().as_secs() as i64),
    })
}

/// `2016-07-11T22:14:10Z`, with optional fractional seconds and offset.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if s.ends_with(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(s).ok();
    }
    // humantime reads UTC only: an offset (`+01:00`) is applied here.
    let i = s.len().checked_sub(6)?;
    let (local, offset) = (s.get(..i)?, s.get(i..)?);
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = offset[1..].split_once(':')?;
    let secs: i64 = sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60);
    let utc = humantime::parse_rfc3339_weak(&format!("{local}Z")).ok()?;
    let shift = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        utc.checked_sub(shift)
    } else {
        utc.checked_add(shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn expiry_times_parse_as_github_writes_them() {
        let at = |s: &str| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(at("2016-07-11T22:14:10Z"), Some(1_468_275_250));
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(at("2024-02-29T12:00:00.123Z"), Some(1_709_208_000));
        assert_eq!(at("2016-07-11T23:14:10+01:00"), Some(1_468_275_250));
        for bad in [
            "",
            "2016-07-11",
            "2016-13-11T22:14:10Z",
            "yesterday",
            "2016-07-11T22:14:10",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    #[test]
    fn jwt_time_messages_are_recognised() {
        assert!(jwt_time_refused(
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires"
        ));
        assert!(jwt_time_refused(
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
        ));
        assert!(!jwt_time_refused("A JSON web token could not be decoded"));
        assert!(!jwt_time_refused("Bad credentials"));
    }
}
