//! The Entra token endpoint: the on-behalf-of exchange and the refresh grant
//! (graph-protocol.md §7.1–§7.3).
//!
//! Errors are mapped to what a caller can act on:
//! - `invalid_grant`/`interaction_required` **with** `claims` → a claims challenge (MFA or
//!   Conditional Access): the client re-acquires its token with those claims (401 +
//!   `WWW-Authenticate`). `invalid_grant` with `claims` is *not* a dead refresh token (§7.3);
//! - AADSTS65001 → consent is missing (403);
//! - `temporarily_unavailable` or a 5xx → retry later (503 + `Retry-After`);
//! - any other `invalid_grant` → the grant is dead: the user must sign in again;
//! - `invalid_client` → graphfeed's own credentials are wrong (an operator problem, 500).

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::clock::SharedClock;
use crate::config::{ConfigError, DEFAULT_ENTRA_AUTHORITY_HOST, ENTRA_AUTHORITY_HOST, Env};

pub use crate::auth::{ENTRA_CLIENT_ID, ENTRA_TENANT_ID};

pub const GRAPH_SCOPES: &str = "GRAPH_SCOPES";
pub const DEFAULT_GRAPH_SCOPES: &str = "offline_access Files.Read.All";

/// Where and as whom graphfeed asks Entra for Graph tokens.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    pub authority_host: Url,
    /// A tenant GUID, or `organizations`/`common` for a multi-tenant API.
    pub tenant: String,
    pub client_id: String,
    pub scopes: String,
}

impl EntraConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let tenant = env.required(ENTRA_TENANT_ID)?.to_owned();
        if !is_multi_tenant(&tenant) && uuid::Uuid::try_parse(&tenant).is_err() {
            return Err(ConfigError::Invalid {
                var: ENTRA_TENANT_ID,
                reason: "must be a tenant GUID, `organizations` or `common`".into(),
            });
        }
        let client_id = env.required(ENTRA_CLIENT_ID)?.to_owned();
        if uuid::Uuid::try_parse(&client_id).is_err() {
            return Err(ConfigError::Invalid {
                var: ENTRA_CLIENT_ID,
                reason: "must be the app registration's GUID".into(),
            });
        }
        let scopes = env.get(GRAPH_SCOPES).unwrap_or(DEFAULT_GRAPH_SCOPES).to_owned();
        if !scopes.split_whitespace().any(|s| s == "offline_access") {
            return Err(ConfigError::Invalid {
                var: GRAPH_SCOPES,
                reason: "must include offline_access: graphfeed keeps a refresh token to work while the user is away".into(),
            });
        }
        Ok(Self {
            authority_host: env.url_or(ENTRA_AUTHORITY_HOST, DEFAULT_ENTRA_AUTHORITY_HOST)?,
            tenant,
            client_id,
            scopes,
        })
    }

    /// The token endpoint for a user of `user_tenant`: the configured tenant, or the user's own
    /// when the API is multi-tenant.
    pub fn token_endpoint(&self, user_tenant: &str) -> String {
        let tenant = if is_multi_tenant(&self.tenant) {
            user_tenant
        } else {
            &self.tenant
        };
        format!(
            "{}/{tenant}/oauth2/v2.0/token",
            self.authority_host.as_str().trim_end_matches('/')
        )
    }
}

/// `organizations` and `common` accept users of any tenant.
pub fn is_multi_tenant(tenant: &str) -> bool {
    tenant.eq_ignore_ascii_case("organizations") || tenant.eq_ignore_ascii_case("common")
}

/// Graph tokens from Entra. Secrets: never logged.
pub struct GraphTokens {
    pub access_token: SecretString,
    pub expires_at: DateTime<Utc>,
    /// Present when `offline_access` was asked for. A refresh returns a new one: replace the stored one.
    pub refresh_token: Option<SecretString>,
}

impl std::fmt::Debug for GraphTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphTokens")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why Entra did not give a token, in terms of what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntraError {
    #[error("Entra asks for a claims challenge (MFA or Conditional Access): {description}")]
    ClaimsChallenge { claims: String, description: String },
    #[error("the user has not consented to graphfeed's Graph permissions: {description}")]
    ConsentRequired { description: String },
    #[error("the grant is no longer valid; the user must sign in again: {description}")]
    GrantExpired { codes: Vec<u64>, description: String },
    #[error("Entra is temporarily unavailable")]
    Unavailable { retry_after: Option<Duration> },
    #[error("Entra refused graphfeed's client credentials: {description}")]
    InvalidClient { description: String },
    #[error("Entra refused the request ({error}): {description}")]
    Refused { error: String, description: String },
    #[error("could not reach Entra: {reason}")]
    Transport { reason: String },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
    #[serde(default)]
    claims: Option<String>,
}

/// Maps an Entra error answer to an [`EntraError`].
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> EntraError {
    let e: ErrorResponse = serde_json::from_slice(body).unwrap_or_default();
    let retry_after = retry_after
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs);
    // The description starts with the AADSTS code and never holds a token.
    let description = e.error_description.lines().next().unwrap_or_default().to_owned();
    let claims = e.claims.filter(|c| !c.is_empty());
    match (e.error.as_str(), claims) {
        ("invalid_grant" | "interaction_required", Some(claims)) => {
            EntraError::ClaimsChallenge { claims, description }
        }
        _ if e.error_codes.contains(&65001) || e.error == "consent_required" => {
            EntraError::ConsentRequired { description }
        }
        ("temporarily_unavailable", _) => EntraError::Unavailable { retry_after },
        _ if status >= 500 => EntraError::Unavailable { retry_after },
        ("invalid_grant" | "interaction_required", None) => EntraError::GrantExpired {
            codes: e.error_codes,
            description,
        },
        ("invalid_client" | "unauthorized_client", _) => EntraError::InvalidClient { description },
        (error, _) => EntraError::Refused {
            error: error.to_owned(),
            description,
        },
    }
}

/// The client secret's Secrets Manager ARN (read once per cold start).
pub const ENTRA_CLIENT_SECRET_ARN: &str = "ENTRA_CLIENT_SECRET_ARN";
/// The client secret itself: local runs only (refused inside AWS Lambda).
pub const ENTRA_CLIENT_SECRET: &str = "ENTRA_CLIENT_SECRET";

/// Why the client secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClientSecretError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
}

/// graphfeed's Entra client secret: from Secrets Manager (`ENTRA_CLIENT_SECRET_ARN`), or locally
/// from `ENTRA_CLIENT_SECRET`.
pub async fn client_secret(
    env: &crate::config::Env,
    aws: &aws_config::SdkConfig,
) -> Result<SecretString, ClientSecretError> {
    use crate::secrets::{SecretSource, SecretsManagerSecret};
    if let Some(arn) = env.get(ENTRA_CLIENT_SECRET_ARN) {
        let source = SecretsManagerSecret::new(aws_sdk_secretsmanager::Client::new(aws), arn);
        return Ok(source.fetch().await?);
    }
    match env.get(ENTRA_CLIENT_SECRET) {
        Some(s) if !env.in_aws() => Ok(SecretString::from(s.to_owned())),
        _ => Err(crate::config::ConfigError::Missing {
            var: ENTRA_CLIENT_SECRET_ARN,
        }
        .into()),
    }
}

/// The token endpoint client, with graphfeed's client secret (read once per cold start).
pub struct EntraClient {
    http: reqwest::Client,
    config: EntraConfig,
    client_secret: SecretString,
    clock: SharedClock,
}

impl EntraClient {
    pub fn new(
        config: EntraConfig,
        client_secret: SecretString,
        clock: SharedClock,
    ) -> Result<Self, EntraError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| EntraError::Transport {
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            config,
            client_secret,
            clock,
        })
    }

    pub fn config(&self) -> &EntraConfig {
        &self.config
    }

    /// The on-behalf-of exchange: the user's access token for graphfeed's API (`assertion`)
    /// becomes a Graph token and, with `offline_access`, a refresh token (§7.1).
    pub async fn on_behalf_of(
        &self,
        user_tenant: &str,
        assertion: &SecretString,
    ) -> Result<GraphTokens, EntraError> {
        self.token(
            user_tenant,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("requested_token_use", "on_behalf_of"),
                ("assertion", assertion.expose_secret()),
            ],
        )
        .await
    }

    /// The refresh grant (§7.2). The answer carries a new refresh token: store it, replacing the old.
    pub async fn refresh(
        &self,
        user_tenant: &str,
        refresh_token: &SecretString,
    ) -> Result<GraphTokens, EntraError> {
        self.token(
            user_tenant,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose_secret()),
            ],
        )
        .await
    }

    async fn token(&self, user_tenant: &str, grant: &[(&str, &str)]) -> Result<GraphTokens, EntraError> {
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", &self.config.client_id),
            ("client_secret", self.client_secret.expose_secret()),
            ("scope", &self.config.scopes),
        ];
        form.extend_from_slice(grant);
        let started = self.clock.now();
        let response = self
            .http
            .post(self.config.token_endpoint(user_tenant))
            .form(&form)
            .send()
            .await
            .map_err(|e| EntraError::Transport {
                reason: e.without_url().to_string(),
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.map_err(|e| EntraError::Transport {
            reason: e.to_string(),
        })?;
        if !(200..300).contains(&status) {
            return Err(classify(status, retry_after.as_deref(), &body));
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| EntraError::Refused {
            error: "malformed_response".into(),
            description: "the token response is not JSON".into(),
        })?;
        Ok(GraphTokens {
            access_token: SecretString::from(t.access_token),
            expires_at: started + chrono::Duration::seconds(t.expires_in.unwrap_or(3600).max(60)),
            refresh_token: t.refresh_token.map(SecretString::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_grant_with_claims_is_a_claims_challenge_not_a_dead_token() {
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS50076: Due to a configuration change made by your administrator, you must use multi-factor authentication.","error_codes":[50076],"suberror":"basic_action","claims":"{\"access_token\":{\"capolids\":{\"essential\":true,\"values\":[\"1\"]}}}"}"#;
        assert!(
            matches!(classify(400, None, body), EntraError::ClaimsChallenge { ref claims, .. } if claims.contains("capolids"))
        );
    }

    #[test]
    fn missing_consent_is_its_own_error() {
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS65001: The user or administrator has not consented.","error_codes":[65001]}"#;
        assert!(matches!(
            classify(400, None, body),
            EntraError::ConsentRequired { .. }
        ));
    }

    #[test]
    fn an_inactive_refresh_token_means_sign_in_again() {
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.","error_codes":[700082]}"#;
        assert!(
            matches!(classify(400, None, body), EntraError::GrantExpired { ref codes, .. } if codes == &[700082])
        );
    }

    #[test]
    fn unavailability_and_5xx_are_retryable_after_the_time_entra_asks() {
        let body = br#"{"error":"temporarily_unavailable","error_description":"AADSTS50196: busy"}"#;
        assert_eq!(
            classify(400, Some("12"), body),
            EntraError::Unavailable {
                retry_after: Some(Duration::from_secs(12))
            }
        );
        assert_eq!(
            classify(503, None, b"<html>"),
            EntraError::Unavailable { retry_after: None }
        );
    }

    #[test]
    fn bad_client_credentials_are_an_operator_problem() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#;
        assert!(matches!(
            classify(401, None, body),
            EntraError::InvalidClient { .. }
        ));
    }

    #[test]
    fn the_token_endpoint_follows_the_users_tenant_only_when_multi_tenant() {
        let env = Env::from_pairs([
            (ENTRA_TENANT_ID, "organizations"),
            (ENTRA_CLIENT_ID, "11111111-2222-3333-4444-555555555555"),
            (ENTRA_AUTHORITY_HOST, "http://127.0.0.1:3001"),
        ]);
        let multi = EntraConfig::from_env(&env).unwrap();
        assert_eq!(
            multi.token_endpoint("abc"),
            "http://127.0.0.1:3001/abc/oauth2/v2.0/token"
        );
        assert_eq!(multi.scopes, DEFAULT_GRAPH_SCOPES);
        let single = EntraConfig::from_env(
            &env.clone()
                .with(ENTRA_TENANT_ID, "99999999-2222-3333-4444-555555555555"),
        )
        .unwrap();
        assert_eq!(
            single.token_endpoint("abc"),
            "http://127.0.0.1:3001/99999999-2222-3333-4444-555555555555/oauth2/v2.0/token"
        );
        assert!(EntraConfig::from_env(&env.with(ENTRA_TENANT_ID, "contoso.com")).is_err());
    }
}
