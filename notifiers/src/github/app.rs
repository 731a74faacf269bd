//! A GitHub App's identity: its id and private key, and the short-lived JWT (RS256)
//! that proves it to GitHub when asking for an installation token.

use crate::error::{NotifyError, Reason, Retry};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// GitHub refuses an `exp` more than 10 minutes after `iat`, and our clock may be
/// a little ahead of its: `iat` in the past by a minute, `exp` 9 minutes ahead.
const IAT_BACKDATE: Duration = Duration::from_secs(60);
const EXP_AHEAD: Duration = Duration::from_secs(9 * 60);

/// An App as configured: its id (or client ID), its key, and the installation to
/// act as when known (else it is looked up from the repository).
#[derive(Clone)]
pub struct AppCredential {
    pub app: Arc<App>,
    pub installation: Option<u64>,
}

pub struct App {
    id: String,
    key: RsaKeyPair,
    rng: SystemRandom,
}

/// Why a key or id was refused. The text never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error("the App id must be the App's numeric id or its client ID, got {0:?}")]
    Id(String),
    #[error(
        "the GitHub App private key is not an RSA private key in PEM form (BEGIN RSA PRIVATE KEY or \
         BEGIN PRIVATE KEY, as downloaded from the App's settings)"
    )]
    KeyFormat,
    #[error("the GitHub App private key cannot sign (a damaged or non-RSA key)")]
    KeySign,
}

#[derive(Serialize)]
struct Claims<'a> {
    iat: u64,
    exp: u64,
    iss: &'a str,
}

impl App {
    /// Checks the id and the key, and signs one JWT so that a key that parses but
    /// cannot sign is refused at start, not at the first write.
    pub fn new(id: &str, pem: &SecretString) -> Result<App, AppError> {
        let id = id.trim();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
            return Err(AppError::Id(id.chars().take(40).collect()));
        }
        let key = rsa_key(pem.expose_secret()).ok_or(AppError::KeyFormat)?;
        let app = App {
            id: id.to_string(),
            key,
            rng: SystemRandom::new(),
        };
        app.sign(SystemTime::now()).map_err(|_| AppError::KeySign)?;
        Ok(app)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A JWT valid from a minute before `now` to nine minutes after it.
    pub fn jwt(&self, now: SystemTime) -> Result<SecretString, NotifyError> {
        self.sign(now).map_err(|_| NotifyError {
            provider: super::NAME,
            retry: Retry::Permanent,
            reason: Reason::Unauthorized,
            status: None,
            message: AppError::KeySign.to_string(),
            retry_after: None,
        })
    }

    fn sign(&self, now: SystemTime) -> Result<SecretString, ring::error::Unspecified> {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            iat: secs(now - IAT_BACKDATE),
            exp: secs(now + EXP_AHEAD),
            iss: &self.id,
        };
        let claims = serde_json::to_vec(&claims).map_err(|_| ring::error::Unspecified)?;
        let mut jwt = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(JWT_HEADER),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, jwt.as_bytes(), &mut signature)?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(SecretString::from(jwt))
    }
}

const JWT_HEADER: &[u8] = br#"{"alg":"RS256","typ":"JWT"}"#;

/// An RSA key from PEM: PKCS#1 (`BEGIN RSA PRIVATE KEY`, as GitHub hands it out) or
/// PKCS#8 (`BEGIN PRIVATE KEY`).
fn rsa_key(pem: &str) -> Option<RsaKeyPair> {
    let mut lines = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN "));
    let label = lines.next()?.strip_prefix("-----BEGIN ")?.strip_suffix("-----")?;
    let body: String = lines.take_while(|l| !l.starts_with("-----END ")).collect();
    let der = STANDARD.decode(body).ok()?;
    match label {
        "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der).ok(),
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der).ok(),
        _ => None,
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl fmt::Debug for AppCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppCredential")
            .field("app", &self.app)
            .field("installation", &self.installation)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../../tests/fixtures/github-app/app-key.pem");
    const PKCS8: &str = include_str!("../../../tests/fixtures/github-app/app-key-pkcs8.pem");

    fn claims(jwt: &SecretString) -> serde_json::Value {
        let part = jwt.expose_secret().split('.').nth(1).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(part).unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    #[test]
    fn the_jwt_is_backdated_a_minute_and_lasts_under_ten() {
        let app = App::new("12345", &SecretString::from(KEY)).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = claims(&app.jwt(now).unwrap());
        assert_eq!(c["iat"], 1_700_000_000 - 60);
        assert_eq!(c["exp"], 1_700_000_000 + 540);
        assert_eq!(c["iss"], "12345");
        let header = app
            .jwt(now)
            .unwrap()
            .expose_secret()
            .split('.')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(URL_SAFE_NO_PAD.decode(header).unwrap(), JWT_HEADER);
    }

    #[test]
    fn both_pem_forms_load_and_bad_keys_are_refused_without_being_quoted() {
        assert!(App::new("1", &SecretString::from(PKCS8)).is_ok());
        let broken = KEY.replace("MII", "XYZ");
        for (id, pem, want) in [
            ("1", "not a key at all", AppError::KeyFormat),
            ("1", broken.as_str(), AppError::KeyFormat),
            ("", KEY, AppError::Id(String::new())),
            ("12 34", KEY, AppError::Id("12 34".into())),
        ] {
            let e = App::new(id, &SecretString::from(pem)).unwrap_err();
            assert_eq!(e, want);
            let text = format!("{e} {e:?}");
            assert!(
                !text.contains("MII") && !text.contains("XYZ") && !text.contains("not a key"),
                "{text}"
            );
        }
        let app = App::new("1", &SecretString::from(KEY)).unwrap();
        let shown = format!("{app:?}");
        assert!(!shown.contains("MII") && shown.contains("REDACTED"), "{shown}");
    }
}
