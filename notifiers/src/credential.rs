//! Where a notifier gets the token it sends.
//!
//! A provider asks its source for the token on every request, and tells it when the
//! provider refused one, so that a source whose tokens expire (GitHub App
//! installation tokens last an hour) can hand out a fresh one. On a refusal the
//! notifier tries once more if the source says it has a different token; otherwise
//! the refusal stands, as it always has for a fixed token.

use crate::github::app::AppCredential;
use crate::{NotifyError, Reason};
use secrecy::SecretString;
use std::future::Future;

/// A repository's credential as configured: a token, or an App that mints them
/// (only providers whose spec has an [`AppSpec`](crate::provider::AppSpec)).
#[derive(Clone, Debug)]
pub enum Credential {
    Token(SecretString),
    App(AppCredential),
}

impl From<SecretString> for Credential {
    fn from(token: SecretString) -> Self {
        Credential::Token(token)
    }
}

#[async_trait::async_trait]
pub trait CredentialSource: Send + Sync {
    /// The token to send now.
    async fn token(&self) -> Result<SecretString, NotifyError>;

    /// The provider refused `token`. Returns whether [`token`](Self::token) may now
    /// give a different one worth one more try.
    fn refused(&self, token: &SecretString) -> bool;
}

/// A token given once, from a flag, a file or the environment: it never changes, so
/// a refusal is final.
pub struct StaticToken(SecretString);

impl StaticToken {
    pub fn new(token: SecretString) -> Self {
        StaticToken(token)
    }
}

#[async_trait::async_trait]
impl CredentialSource for StaticToken {
    async fn token(&self) -> Result<SecretString, NotifyError> {
        Ok(self.0.clone())
    }

    fn refused(&self, _: &SecretString) -> bool {
        false
    }
}

/// Sends a request built with the source's current token; if the provider refuses
/// it and the source has another, sends it once more with that one.
pub async fn with_token<T, F, Fut>(source: &dyn CredentialSource, send: F) -> Result<T, NotifyError>
where
    F: Fn(SecretString) -> Fut,
    Fut: Future<Output = Result<T, NotifyError>>,
{
    let token = source.token().await?;
    match send(token.clone()).await {
        Err(e) if e.reason == Reason::Unauthorized && source.refused(&token) => {
            tracing::info!(
                provider = e.provider,
                "the provider refused the token; trying once more with a fresh one"
            );
            send(source.token().await?).await
        }
        result => result,
    }
}
