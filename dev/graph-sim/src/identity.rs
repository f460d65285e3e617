//! Who is calling: tenants, users and the opaque Graph access tokens the simulator issues.
//!
//! A token stands for (tenant, user, app): the user becomes a subscription's `creatorId`, the app
//! its `applicationId` (graph-protocol.md §1.2). Delegated tokens are minted in exactly one place,
//! [`Identity::issue_token`], which the control API and the Entra token endpoint (on-behalf-of,
//! refresh) share; app-only tokens (client credentials) come from [`Identity::issue_app_token`].
//! Expiry is judged on the simulated clock.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

/// The app id a user's tokens carry when the caller names none: graphfeed's local dev app.
pub const DEFAULT_APP_ID: &str = "5e7a1c2d-3b4f-4a6e-9d8c-67f00dfeed01";

/// Every access token the simulator issues starts with this, so a log reader can tell them apart.
pub const TOKEN_PREFIX: &str = "simgraph.";

/// An Entra tenant. Business tenants get OneDrive for Business style drives (`b!...`), whose
/// subscriptions are root-only (§1.4).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tenant {
    pub id: String,
    pub business: bool,
}

/// A user with one drive.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub tenant_id: String,
    pub display_name: String,
    /// `upn` / `preferred_username` in minted API tokens.
    pub user_principal_name: String,
    pub drive_id: String,
    /// The app a fresh token is issued for when the request names none.
    pub app_id: String,
}

/// What a token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenant_id: String,
    pub user_id: String,
    pub app_id: String,
    pub expires_at: DateTime<Utc>,
    /// An app-only token (client credentials): no user, `user_id` is empty.
    pub app_only: bool,
    /// The Graph scopes the token endpoint granted (short names, e.g. `Files.ReadWrite`), or
    /// `None` for control-API tokens, which may do anything their user may.
    pub scopes: Option<Vec<String>>,
}

/// Delegated scopes that allow writing a user's files (the permissions of `PUT …/content` and
/// `createUploadSession`), and `.default`, which stands for whatever was consented.
pub const WRITE_SCOPES: [&str; 6] = [
    "Files.ReadWrite",
    "Files.ReadWrite.All",
    "Sites.ReadWrite.All",
    "Sites.Manage.All",
    "Sites.FullControl.All",
    ".default",
];

impl Grant {
    /// A user's grant to an app (not app-only).
    fn delegated(
        tenant_id: &str,
        user_id: &str,
        app_id: &str,
        expires_at: DateTime<Utc>,
        scopes: Option<Vec<String>>,
    ) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.to_owned(),
            app_id: app_id.to_owned(),
            expires_at,
            app_only: false,
            scopes,
        }
    }

    /// Whether the token may write files: a control-API token always, a token from the token
    /// endpoint only with one of [`WRITE_SCOPES`].
    pub fn may_write(&self) -> bool {
        self.scopes.as_ref().is_none_or(|scopes| {
            scopes
                .iter()
                .any(|scope| WRITE_SCOPES.iter().any(|write| write.eq_ignore_ascii_case(scope)))
        })
    }
}

/// A freshly issued token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IssuedToken {
    pub access_token: String,
    /// RFC 3339, sim time.
    pub expires_at: DateTime<Utc>,
}

/// Expired tokens are swept out once the token map holds at least this many entries.
const TOKEN_SWEEP_FLOOR: usize = 1024;

/// Tenants, users and live tokens.
#[derive(Debug, Default)]
pub struct Identity {
    pub tenants: HashMap<String, Tenant>,
    pub users: HashMap<String, User>,
    tokens: HashMap<String, Grant>,
    /// How many tokens survived the last sweep; the next waits until the map has doubled, so
    /// issuing n tokens costs O(n) in all rather than a scan per token.
    tokens_after_sweep: usize,
}

impl Identity {
    /// Mints an opaque token for (tenant, user, app), valid until `now + lifetime` on the sim clock.
    /// The one place tokens are made: the OBO endpoint will call this too.
    pub fn issue_token(
        &mut self,
        tenant_id: &str,
        user_id: &str,
        app_id: &str,
        now: DateTime<Utc>,
        lifetime: chrono::Duration,
    ) -> IssuedToken {
        self.insert(
            Grant::delegated(tenant_id, user_id, app_id, now + lifetime, None),
            now,
        )
    }

    /// Mints a delegated token like [`Identity::issue_token`] that carries the Graph scopes the
    /// token endpoint granted (short names), so Graph can refuse writes without a write scope.
    pub fn issue_scoped_token(
        &mut self,
        tenant_id: &str,
        user_id: &str,
        app_id: &str,
        scopes: Vec<String>,
        now: DateTime<Utc>,
        lifetime: chrono::Duration,
    ) -> IssuedToken {
        self.insert(
            Grant::delegated(tenant_id, user_id, app_id, now + lifetime, Some(scopes)),
            now,
        )
    }

    /// Mints an app-only token (client credentials) for `app_id` in `tenant_id`. Graph refuses
    /// it on `/me` and on drives, as it does for personal drives.
    pub fn issue_app_token(
        &mut self,
        tenant_id: &str,
        app_id: &str,
        now: DateTime<Utc>,
        lifetime: chrono::Duration,
    ) -> IssuedToken {
        self.insert(
            Grant {
                tenant_id: tenant_id.to_owned(),
                user_id: String::new(),
                app_id: app_id.to_owned(),
                expires_at: now + lifetime,
                app_only: true,
                scopes: None,
            },
            now,
        )
    }

    fn insert(&mut self, grant: Grant, now: DateTime<Utc>) -> IssuedToken {
        // Forget tokens that can never be valid again, so a long run does not grow forever.
        if self.tokens.len() >= (2 * self.tokens_after_sweep).max(TOKEN_SWEEP_FLOOR) {
            self.tokens.retain(|_, grant| grant.expires_at > now);
            self.tokens_after_sweep = self.tokens.len();
        }
        let access_token = format!(
            "{TOKEN_PREFIX}{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let expires_at = grant.expires_at;
        self.tokens.insert(access_token.clone(), grant);
        IssuedToken {
            access_token,
            expires_at,
        }
    }

    /// The grant behind a bearer token, if it is known and not yet expired at `now`.
    pub fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Option<&Grant> {
        self.tokens.get(token).filter(|grant| grant.expires_at > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_valid_until_the_sim_clock_passes_its_expiry() {
        let mut identity = Identity::default();
        let now = Utc::now();
        let issued = identity.issue_token("t", "u", DEFAULT_APP_ID, now, chrono::Duration::hours(1));
        assert!(issued.access_token.starts_with(TOKEN_PREFIX));
        let grant = identity
            .authenticate(&issued.access_token, now)
            .expect("fresh token");
        assert_eq!(grant.user_id, "u");
        assert!(
            identity
                .authenticate(&issued.access_token, now + chrono::Duration::minutes(59))
                .is_some()
        );
        assert!(
            identity
                .authenticate(&issued.access_token, now + chrono::Duration::hours(1))
                .is_none()
        );
        assert!(identity.authenticate("simgraph.unknown", now).is_none());
    }

    #[test]
    fn only_tokens_with_a_write_scope_or_no_recorded_scopes_may_write() {
        let mut identity = Identity::default();
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let control = identity.issue_token("t", "u", DEFAULT_APP_ID, now, hour);
        let reader = identity.issue_scoped_token("t", "u", "cli", vec!["Files.Read".into()], now, hour);
        let writer = identity.issue_scoped_token("t", "u", "cli", vec!["files.readwrite".into()], now, hour);
        let may_write = |token: &IssuedToken| {
            identity
                .authenticate(&token.access_token, now)
                .is_some_and(Grant::may_write)
        };
        assert!(may_write(&control));
        assert!(!may_write(&reader));
        assert!(may_write(&writer));
    }

    #[test]
    fn expired_tokens_are_swept_once_the_map_has_doubled() {
        let mut identity = Identity::default();
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        for _ in 0..TOKEN_SWEEP_FLOOR {
            identity.issue_token("t", "u", DEFAULT_APP_ID, now, hour);
        }
        let later = now + chrono::Duration::hours(2);
        let fresh = identity.issue_token("t", "u", DEFAULT_APP_ID, later, hour);
        assert_eq!(identity.tokens.len(), 1, "the expired ones are gone");
        assert!(identity.authenticate(&fresh.access_token, later).is_some());
    }
}
