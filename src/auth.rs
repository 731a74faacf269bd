//! Which credential each ingest route needs.
//!
//! - fluxd's routes (`/vN/daemon`, `POST /v6/events`) can only present `--token`.
//! - Flux v2's routes (`POST /`, `POST /v2/events`) present `--hmac-key-file`'s
//!   signature, `--token` as a bearer token, or both when both are configured.
//!
//! With no credential at all every route is open (and the listener must stay on
//! loopback unless `--insecure-allow-unauthenticated`). Once any credential is
//! configured, a route that cannot present one is refused: `--hmac-key-file` alone
//! must not leave fluxd's routes open to anyone who reaches the port.

use axum::http::{HeaderMap, header};
use secrecy::{ExposeSecret, SecretBox, SecretString};

/// How one route is authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// No credential configured anywhere: anyone who reaches the port.
    Open,
    Token,
    Hmac,
    TokenAndHmac,
    /// Another route has a credential and this one cannot present it.
    Refused,
}

impl Guard {
    /// For the start-up log: how the route is authenticated, never the secret.
    pub fn describe(self) -> &'static str {
        match self {
            Guard::Open => "open: no credential configured",
            Guard::Token => "--token",
            Guard::Hmac => "--hmac-key-file (X-Signature)",
            Guard::TokenAndHmac => "--token and --hmac-key-file (X-Signature)",
            Guard::Refused => "refused: needs --token (--hmac-key-file covers Flux v2 only)",
        }
    }
}

pub fn fluxd_guard(token: bool, hmac: bool) -> Guard {
    match (token, hmac) {
        (true, _) => Guard::Token,
        (false, true) => Guard::Refused,
        (false, false) => Guard::Open,
    }
}

pub fn v2_guard(token: bool, hmac: bool) -> Guard {
    match (token, hmac) {
        (true, true) => Guard::TokenAndHmac,
        (true, false) => Guard::Token,
        (false, true) => Guard::Hmac,
        (false, false) => Guard::Open,
    }
}

/// The routes that would take a request carrying no credential.
pub fn open_routes(token: bool, hmac: bool) -> Vec<&'static str> {
    let mut open = Vec::new();
    if fluxd_guard(token, hmac) == Guard::Open {
        open.push("fluxd (/vN/daemon, /v6/events)");
    }
    if v2_guard(token, hmac) == Guard::Open {
        open.push("Flux v2 (/, /v2/events)");
    }
    open
}

/// Why a request was refused before its body was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Metric label.
    pub label: &'static str,
    /// The `reason` of the JSON answer.
    pub reason: &'static str,
    pub message: &'static str,
}

const WRONG_TOKEN: Refusal = Refusal {
    label: "unauthorized",
    reason: "unauthorized",
    message: "missing or wrong token",
};

const NO_TOKEN_CONFIGURED: Refusal = Refusal {
    label: "no_token_configured",
    reason: "unauthorized",
    message: "fluxd's routes need --token on flux-status; --hmac-key-file authenticates Flux v2 events only",
};

const NO_SIGNATURE: Refusal = Refusal {
    label: "bad_signature",
    reason: "bad_signature",
    message: "missing X-Signature header",
};

pub struct IngestAuth {
    token: Option<SecretString>,
    hmac_key: Option<SecretBox<Vec<u8>>>,
}

impl IngestAuth {
    pub fn new(token: Option<SecretString>, hmac_key: Option<SecretBox<Vec<u8>>>) -> Self {
        IngestAuth { token, hmac_key }
    }

    pub fn fluxd(&self) -> Guard {
        fluxd_guard(self.token.is_some(), self.hmac_key.is_some())
    }

    pub fn v2(&self) -> Guard {
        v2_guard(self.token.is_some(), self.hmac_key.is_some())
    }

    pub fn hmac_key(&self) -> Option<&[u8]> {
        self.hmac_key.as_ref().map(|k| k.expose_secret().as_slice())
    }

    /// fluxd's websocket and events, from the headers alone.
    pub fn check_fluxd(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        match self.fluxd() {
            Guard::Refused => Err(NO_TOKEN_CONFIGURED),
            _ if token_matches(headers, &self.token) => Ok(()),
            _ => Err(WRONG_TOKEN),
        }
    }

    /// Flux v2's token, from the headers alone.
    pub fn check_v2_token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if token_matches(headers, &self.token) {
            Ok(())
        } else {
            Err(WRONG_TOKEN)
        }
    }

    /// Flux v2 with `--hmac-key-file`: a request with no signature at all is refused
    /// before its body is read; the signature itself needs the body.
    pub fn check_v2_signature_present(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.hmac_key.is_some() && !headers.contains_key("x-signature") {
            return Err(NO_SIGNATURE);
        }
        Ok(())
    }
}

/// Checks `--token` in constant time, as fluxd sends it (`Authorization: Scope-Probe
/// token=<token>`) or as a notification-controller Provider's Secret `headers` can
/// (`Authorization: Bearer <token>`). No token configured: anything passes.
pub fn token_matches(headers: &HeaderMap, token: &Option<SecretString>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = token else { return true };
    let Some(given) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let given = given.as_bytes();
    let token = token.expose_secret().as_bytes();
    let matches = |prefix: &[u8]| -> bool {
        given.len() == prefix.len() + token.len()
            && bool::from(given[..prefix.len()].ct_eq(prefix) & given[prefix.len()..].ct_eq(token))
    };
    matches(b"Scope-Probe token=") | matches(b"Bearer ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    fn auth(token: Option<&str>, hmac: bool) -> IngestAuth {
        IngestAuth::new(
            token.map(|t| SecretString::from(t.to_string())),
            hmac.then(|| SecretBox::new(Box::new(b"key".to_vec()))),
        )
    }

    #[test]
    fn upstream_token_must_match_exactly() {
        let token = Some(SecretString::from("s3cret".to_string()));
        assert!(token_matches(&with("Scope-Probe token=s3cret"), &token));
        assert!(!token_matches(&with("Scope-Probe token=s3cre"), &token));
        assert!(token_matches(&with("Bearer s3cret"), &token));
        assert!(!token_matches(&with("Bearer s3cre"), &token));
        assert!(!token_matches(&HeaderMap::new(), &token));
        assert!(token_matches(&HeaderMap::new(), &None));
    }

    #[test]
    fn an_hmac_key_alone_refuses_fluxd_routes_whatever_they_send() {
        let a = auth(None, true);
        assert_eq!(a.fluxd(), Guard::Refused);
        for h in [HeaderMap::new(), with("Scope-Probe token="), with("Bearer x")] {
            assert_eq!(a.check_fluxd(&h), Err(NO_TOKEN_CONFIGURED));
        }
        assert_eq!(a.check_v2_token(&HeaderMap::new()), Ok(()));
        assert_eq!(a.check_v2_signature_present(&HeaderMap::new()), Err(NO_SIGNATURE));
    }

    #[test]
    fn every_route_is_authenticated_once_any_credential_is_set() {
        for (token, hmac) in [(true, false), (false, true), (true, true)] {
            assert!(open_routes(token, hmac).is_empty(), "{token} {hmac}");
            assert_ne!(fluxd_guard(token, hmac), Guard::Open);
            assert_ne!(v2_guard(token, hmac), Guard::Open);
        }
        assert_eq!(open_routes(false, false).len(), 2);
        let a = auth(Some("t"), false);
        assert_eq!(a.check_fluxd(&HeaderMap::new()), Err(WRONG_TOKEN));
        assert_eq!(a.check_fluxd(&with("Scope-Probe token=t")), Ok(()));
        assert_eq!(a.check_v2_token(&with("Bearer t")), Ok(()));
        assert_eq!(a.check_v2_token(&with("Bearer u")), Err(WRONG_TOKEN));
    }

    #[test]
    fn with_no_credential_everything_is_open() {
        let a = auth(None, false);
        assert_eq!(a.check_fluxd(&HeaderMap::new()), Ok(()));
        assert_eq!(a.check_v2_token(&HeaderMap::new()), Ok(()));
        assert_eq!(a.check_v2_signature_present(&HeaderMap::new()), Ok(()));
    }
}
