//! Graph access tokens for background work (process-changes, renew), from the stored refresh token.
//!
//! A warm container keeps each user's access token in memory until five minutes before it
//! expires, so a burst of walks costs one refresh, not one per walk. A refresh answers with a new
//! refresh token (rotation): it replaces the stored one with a version-checked write; if another
//! container rotated first, its token is the one kept (both are valid for a while, §7.2).
//!
//! A refresh that Entra refuses for good (`invalid_grant`, a claims challenge, missing consent), or
//! a user with no stored token, is [`TokenError::NeedsReauth`]: only the user signing in again
//! (`POST /connect`) fixes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::clock::SharedClock;
use crate::entra::{EntraClient, EntraError};
use crate::ids::UserKey;
use crate::vault::{TokenVault, VaultError};

/// How long before its expiry a cached access token is no longer used.
const EXPIRY_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

/// Why no access token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("the user must sign in again: {reason}")]
    NeedsReauth { reason: String },
    #[error("Entra is unavailable: {0}")]
    Unavailable(EntraError),
    #[error("the token vault failed: {0}")]
    Vault(VaultError),
    #[error("Entra refused graphfeed's request: {0}")]
    Entra(EntraError),
}

impl TokenError {
    /// Whether trying later (without the user) can help.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Unavailable(_) => true,
            TokenError::Vault(e) => e.is_transient() || matches!(e, VaultError::Conflict { .. }),
            TokenError::Entra(EntraError::Transport { .. }) => true,
            _ => false,
        }
    }
}

/// Where Graph access tokens come from.
pub trait AccessTokenSource: Send + Sync {
    /// A valid access token for the user.
    fn token<'a>(
        &'a self,
        user: &'a UserKey,
    ) -> futures::future::BoxFuture<'a, Result<SecretString, TokenError>>;
    /// Forgets a cached token Graph refused (a 401), so the next call refreshes.
    fn forget(&self, user: &UserKey);
}

/// Refresh tokens from the vault, redeemed at Entra, access tokens cached per warm container.
pub struct RefreshingTokens {
    entra: Arc<EntraClient>,
    vault: Arc<dyn TokenVault>,
    clock: SharedClock,
    cache: Mutex<HashMap<UserKey, (SecretString, DateTime<Utc>)>>,
}

impl RefreshingTokens {
    pub fn new(entra: Arc<EntraClient>, vault: Arc<dyn TokenVault>, clock: SharedClock) -> Self {
        Self {
            entra,
            vault,
            clock,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, user: &UserKey) -> Option<SecretString> {
        let now = self.clock.now();
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(user)
            .filter(|(_, expires)| *expires - EXPIRY_MARGIN > now)
            .map(|(token, _)| token.clone())
    }

    async fn refresh(&self, user: &UserKey) -> Result<SecretString, TokenError> {
        let stored = self
            .vault
            .load(user)
            .await
            .map_err(|e| match e {
                VaultError::Tampered { .. }
                | VaultError::Malformed(_)
                | VaultError::UnsupportedFormat { .. } => TokenError::NeedsReauth {
                    reason: "the stored refresh token cannot be opened".into(),
                },
                other => TokenError::Vault(other),
            })?
            .ok_or_else(|| TokenError::NeedsReauth {
                reason: "no refresh token is stored".into(),
            })?;
        let tokens = self
            .entra
            .refresh(user.tenant.as_str(), &stored.token)
            .await
            .map_err(|e| match e {
                EntraError::GrantExpired { .. }
                | EntraError::ClaimsChallenge { .. }
                | EntraError::ConsentRequired { .. } => TokenError::NeedsReauth {
                    reason: e.to_string(),
                },
                EntraError::Unavailable { .. } | EntraError::Transport { .. } => TokenError::Unavailable(e),
                other => TokenError::Entra(other),
            })?;
        if let Some(rotated) = &tokens.refresh_token {
            match self.vault.store(user, rotated, Some(stored.version)).await {
                Ok(_) => {}
                // Another container rotated first; its token is kept, ours still works for now.
                Err(VaultError::Conflict { .. }) => {
                    tracing::info!("a concurrent refresh stored its rotated token first");
                }
                Err(e) => return Err(TokenError::Vault(e)),
            }
        }
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.insert(user.clone(), (tokens.access_token.clone(), tokens.expires_at));
        Ok(tokens.access_token)
    }
}

impl AccessTokenSource for RefreshingTokens {
    fn token<'a>(
        &'a self,
        user: &'a UserKey,
    ) -> futures::future::BoxFuture<'a, Result<SecretString, TokenError>> {
        Box::pin(async move {
            match self.cached(user) {
                Some(token) => Ok(token),
                None => self.refresh(user).await,
            }
        })
    }

    fn forget(&self, user: &UserKey) {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(user);
    }
}

/// A fixed token for every user (tests and benchmarks against the simulator).
pub struct StaticToken(pub SecretString);

impl AccessTokenSource for StaticToken {
    fn token<'a>(
        &'a self,
        _user: &'a UserKey,
    ) -> futures::future::BoxFuture<'a, Result<SecretString, TokenError>> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }

    fn forget(&self, _user: &UserKey) {}
}
