//! Validation of the access token a client presents to graphfeed's own API (graph-protocol.md §7.4).
//!
//! connect's routes carry `Authorization: Bearer <token>`: an Entra access token whose audience is
//! graphfeed. Before that token is exchanged on-behalf-of (§7.1) it must prove that Entra issued it,
//! to this API, for a signed-in user, now. [`TokenValidator::validate`] checks, in this order:
//!
//! - **the header**: `alg` is exactly `RS256` (never `none`, `HS*`, `PS*`, `ES*`; an HMAC check
//!   with a public key as its secret cannot happen because only RSA keys are ever built), no `crit`,
//!   and a `kid`, which alone selects the key (never `jku`, `x5u` or an embedded `jwk`);
//! - **the signature**, with the key of that `kid` from the OIDC metadata's `jwks_uri`, restricted to
//!   `kty: RSA` keys whose `use` is absent or `sig` (and whose `alg`, when given, is `RS256`);
//! - **`exp`/`nbf`** against the [`SharedClock`] with [`LEEWAY`] of skew (jsonwebtoken's own time
//!   checks are off, so it never reads the system clock behind the shared clock's back);
//! - **the tenant and issuer**: `tid` is a GUID accepted by `ENTRA_TENANT_ID` (that tenant, or
//!   any tenant for `organizations`/`common`), and `iss` is exactly the v1 (`https://sts.windows.net/{tid}/`)
//!   or v2 (`{ENTRA_AUTHORITY_HOST}/{tid}/v2.0`) issuer of that `tid`; a key carrying an `issuer`
//!   property must name the same tenant, so a key is only good for the tenants it was published for;
//! - **the audience**: our client id or our App ID URI;
//! - **a user, with our scope**: `scp` (space-separated) holds `ENTRA_API_SCOPE`; app-only tokens
//!   (no `scp`, `idtyp: app` or `roles`) are refused, since on-behalf-of is for users only (§7.1);
//! - **the user key**: `tid` + `oid` ([`UserKey`]), never `sub`, which is pairwise per app.
//!
//! Keys are cached. An unknown `kid` (a rotation) triggers a refetch of the metadata's JWKS, and a
//! set older than [`KEY_MAX_AGE`] is refreshed when next used, but never more than one fetch per
//! [`REFETCH_INTERVAL`] (a failed fetch counts), so forged `kid`s cannot turn into a stream of
//! fetches. Fetches carry [`FETCH_TIMEOUT`]. When no key can be obtained the error is
//! [`AuthError::KeysUnavailable`] (503, retry later), distinct from every "token invalid" error (401).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::clock::SharedClock;
use crate::config::{ConfigError, DEFAULT_ENTRA_AUTHORITY_HOST, ENTRA_AUTHORITY_HOST, Env};
use crate::ids::{ObjectId, TenantId, UserKey};

pub const ENTRA_TENANT_ID: &str = "ENTRA_TENANT_ID";
pub const ENTRA_CLIENT_ID: &str = "ENTRA_CLIENT_ID";
pub const ENTRA_APP_ID_URI: &str = "ENTRA_APP_ID_URI";
pub const ENTRA_API_SCOPE: &str = "ENTRA_API_SCOPE";
pub const DEFAULT_API_SCOPE: &str = "access_as_user";

/// The tenant of personal Microsoft accounts (graph-protocol.md §7.4). `organizations` excludes it.
pub const CONSUMER_TENANT_ID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::seconds(60);
/// The shortest time between two key fetches (metadata + JWKS), whatever asks for them.
pub const REFETCH_INTERVAL: Duration = Duration::seconds(60);
/// How long a fetched key set is used before it is refreshed on next use: Entra's advice is to
/// check for new keys every 24 hours (§7.4).
pub const KEY_MAX_AGE: Duration = Duration::hours(24);
/// The time limit of one metadata or JWKS request: a fetch happens inside a user's request.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Tokens longer than this are refused unread (Entra's are a few KB, even with group claims).
const MAX_TOKEN_LEN: usize = 32 * 1024;
/// Metadata and JWKS documents longer than this are refused.
const MAX_DOCUMENT_LEN: usize = 512 * 1024;
/// The v1 issuer's fixed host (§7.4: `https://sts.windows.net/{tid}/`).
const V1_ISSUER_PREFIX: &str = "https://sts.windows.net/";
/// The placeholder multi-tenant metadata and keys carry in their issuer (§7.4).
const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// Which tenants' users may call the API (`ENTRA_TENANT_ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// One tenant: tokens must carry this `tid`.
    Single(TenantId),
    /// Any work or school tenant (`organizations`): any GUID `tid` except the consumer tenant.
    Organizations,
    /// Any tenant, including personal accounts (`common`).
    Common,
}

impl TenantScope {
    /// Parses `ENTRA_TENANT_ID`: a tenant GUID, `organizations` or `common`.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "organizations" => Ok(Self::Organizations),
            "common" => Ok(Self::Common),
            other => TenantId::parse(other)
                .map(Self::Single)
                .map_err(|_| ConfigError::Invalid {
                    var: ENTRA_TENANT_ID,
                    reason: format!(
                        "must be the tenant's GUID, `organizations` or `common` (got {raw:?}); \
                         domain names are not accepted because tokens carry the GUID"
                    ),
                }),
        }
    }

    /// The `{tenant}` path segment of the OIDC metadata URL.
    pub fn metadata_segment(&self) -> &str {
        match self {
            Self::Single(tenant) => tenant.as_str(),
            Self::Organizations => "organizations",
            Self::Common => "common",
        }
    }

    /// Whether a token from `tenant` may call the API.
    pub fn accepts(&self, tenant: &TenantId) -> bool {
        match self {
            Self::Single(ours) => ours == tenant,
            Self::Organizations => tenant.as_str() != CONSUMER_TENANT_ID,
            Self::Common => true,
        }
    }
}

/// What token validation needs, read once per cold start.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `ENTRA_AUTHORITY_HOST`, default `https://login.microsoftonline.com`: the v2 issuer's and the
    /// metadata's base.
    pub authority_host: Url,
    /// `ENTRA_TENANT_ID`: a tenant GUID, `organizations` or `common`.
    pub tenant: TenantScope,
    /// `ENTRA_CLIENT_ID`: graphfeed's application (client) id, a GUID, in lower-case hyphenated form.
    pub client_id: String,
    /// `ENTRA_APP_ID_URI`, default `api://{client id}`: the other audience v1 tokens may carry.
    pub app_id_uri: String,
    /// `ENTRA_API_SCOPE`, default `access_as_user`: the scope `scp` must hold, as it appears there
    /// (the bare name, not `api://.../access_as_user`).
    pub api_scope: String,
}

impl AuthConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let authority_host = env.url_or(ENTRA_AUTHORITY_HOST, DEFAULT_ENTRA_AUTHORITY_HOST)?;
        let tenant = TenantScope::parse(env.required(ENTRA_TENANT_ID)?)?;
        let raw_client_id = env.required(ENTRA_CLIENT_ID)?;
        let client_id = uuid::Uuid::try_parse(raw_client_id)
            .map_err(|_| ConfigError::Invalid {
                var: ENTRA_CLIENT_ID,
                reason: format!("must be the application (client) id, a GUID (got {raw_client_id:?})"),
            })?
            .hyphenated()
            .to_string();
        let app_id_uri = match env.get(ENTRA_APP_ID_URI) {
            Some(uri) if uri.contains(char::is_whitespace) => {
                return Err(ConfigError::Invalid {
                    var: ENTRA_APP_ID_URI,
                    reason: format!("must not contain whitespace (got {uri:?})"),
                });
            }
            Some(uri) => uri.to_owned(),
            None => format!("api://{client_id}"),
        };
        let api_scope = env.get(ENTRA_API_SCOPE).unwrap_or(DEFAULT_API_SCOPE);
        if api_scope.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(ConfigError::Invalid {
                var: ENTRA_API_SCOPE,
                reason: format!(
                    "must be one bare scope name as it appears in the token's scp claim, \
                     e.g. access_as_user (got {api_scope:?})"
                ),
            });
        }
        Ok(Self {
            authority_host,
            tenant,
            client_id,
            app_id_uri,
            api_scope: api_scope.to_owned(),
        })
    }

    /// The authority host without a trailing `/`, the base of every Entra URL.
    fn authority_base(&self) -> &str {
        self.authority_host.as_str().trim_end_matches('/')
    }

    /// The v1 issuer of `tid` (§7.4).
    pub fn v1_issuer(&self, tid: &str) -> String {
        format!("{V1_ISSUER_PREFIX}{tid}/")
    }

    /// The v2 issuer of `tid` (§7.4).
    pub fn v2_issuer(&self, tid: &str) -> String {
        format!("{}/{tid}/v2.0", self.authority_base())
    }

    /// `{authority}/{tenant}/v2.0/.well-known/openid-configuration`, for the configured tenant (or
    /// `organizations`/`common`).
    pub fn metadata_url(&self) -> Result<Url, ConfigError> {
        let raw = format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            self.authority_base(),
            self.tenant.metadata_segment()
        );
        Url::parse(&raw).map_err(|e| ConfigError::Invalid {
            var: ENTRA_AUTHORITY_HOST,
            reason: format!("the metadata URL {raw:?} is not a URL: {e}"),
        })
    }

    fn is_our_audience(&self, aud: &str) -> bool {
        aud == self.app_id_uri
            || uuid::Uuid::try_parse(aud).is_ok_and(|guid| guid.hyphenated().to_string() == self.client_id)
    }
}

/// Which token format the caller presented (§7.4: it follows the API's `requestedAccessTokenVersion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    /// Issued by `https://sts.windows.net/{tid}/`.
    V1,
    /// Issued by `{authority}/{tid}/v2.0`.
    V2,
}

/// A validated caller: a user of an accepted tenant, holding our scope.
#[derive(Debug)]
pub struct Caller {
    /// `tid` + `oid`: the key of everything graphfeed stores for this user.
    pub user: UserKey,
    /// Every scope in `scp`.
    pub scopes: Vec<String>,
    pub token_version: TokenVersion,
    /// The token itself: the assertion of the on-behalf-of exchange (§7.1). Never logged.
    pub raw: SecretString,
}

/// Why a token was refused, or could not be checked.
///
/// Every variant but [`AuthError::KeysUnavailable`] means "this token is no good": HTTP 401 with
/// [`AuthError::www_authenticate`]. `KeysUnavailable` means graphfeed could not get Entra's keys:
/// HTTP 503 with `Retry-After`. The `Display` text is for logs; it may name the token's `alg` or
/// `kid` (both public) but never key material or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token was presented")]
    MissingToken,
    #[error("the token is not a well-formed JWT: {reason}")]
    Malformed { reason: &'static str },
    #[error("the token's alg {alg:?} is not accepted: RS256 only")]
    DisallowedAlgorithm { alg: String },
    #[error("the token names signing key {kid:?}, which the issuer does not publish")]
    UnknownKey { kid: String },
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token expired at {exp}")]
    Expired { exp: i64 },
    #[error("the token is not valid before {nbf}")]
    NotYetValid { nbf: i64 },
    #[error("the token's tenant is not accepted by ENTRA_TENANT_ID")]
    WrongTenant,
    #[error("the token's issuer is not the v1 or v2 issuer of its tenant")]
    WrongIssuer,
    #[error("the token's audience is neither our client id nor our App ID URI")]
    WrongAudience,
    #[error("the token lacks the scope {required:?}")]
    MissingScope { required: String },
    #[error("the token is app-only; on-behalf-of needs a signed-in user")]
    AppOnly,
    #[error("the token lacks a valid {claim} claim")]
    MissingClaim { claim: &'static str },
    #[error("Entra's signing keys are unavailable: {reason}")]
    KeysUnavailable {
        reason: String,
        /// When the next fetch may be tried.
        retry_after: std::time::Duration,
    },
}

impl AuthError {
    /// The HTTP status the API answers with: 503 when the keys are unavailable, else 401.
    pub fn status(&self) -> u16 {
        if self.is_keys_unavailable() { 503 } else { 401 }
    }

    /// Whether graphfeed, not the token, is at fault: a retry later may succeed.
    pub fn is_keys_unavailable(&self) -> bool {
        matches!(self, Self::KeysUnavailable { .. })
    }

    /// A short, fixed description safe to send to the client: it carries nothing of the token
    /// or of the keys.
    pub fn description(&self) -> &'static str {
        match self {
            Self::MissingToken => "no bearer token was presented",
            Self::Malformed { .. } => "the token is not a well-formed JWT",
            Self::DisallowedAlgorithm { .. } => "the token must be signed with RS256",
            Self::UnknownKey { .. } => "the token is signed by an unknown key",
            Self::BadSignature => "the token signature is invalid",
            Self::Expired { .. } => "the token has expired",
            Self::NotYetValid { .. } => "the token is not yet valid",
            Self::WrongTenant => "the token tenant is not accepted",
            Self::WrongIssuer => "the token issuer is not accepted",
            Self::WrongAudience => "the token audience is not this API",
            Self::MissingScope { .. } => "the token lacks the required scope",
            Self::AppOnly => "app-only tokens are not accepted, sign in as a user",
            Self::MissingClaim { .. } => "the token lacks a required claim",
            Self::KeysUnavailable { .. } => "the signing keys are temporarily unavailable",
        }
    }

    /// The `WWW-Authenticate` value of the 401 answer (RFC 6750 §3): `Bearer` alone when no token
    /// was presented, `Bearer error="invalid_token", error_description="..."` otherwise. `None`
    /// for [`AuthError::KeysUnavailable`], which is a 503 with [`AuthError::retry_after`].
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            Self::KeysUnavailable { .. } => None,
            Self::MissingToken => Some("Bearer".to_owned()),
            other => Some(format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                other.description()
            )),
        }
    }

    /// How long a client should wait before retrying, for [`AuthError::KeysUnavailable`].
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::KeysUnavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// How many metadata and JWKS requests a validator has made (attempts, failed ones included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchCounts {
    pub metadata: u64,
    pub jwks: u64,
}

/// One usable signing key from the JWKS.
struct SigningKey {
    key: DecodingKey,
    /// The key's `issuer` property, which may hold `{tenantid}` (§7.4, multi-tenant).
    issuer: Option<String>,
}

/// The keys of one successful JWKS fetch.
struct KeySet {
    keys: HashMap<String, Arc<SigningKey>>,
    fetched_at: DateTime<Utc>,
}

/// What the fetcher remembers between fetches. Held in an async mutex, so one fetch runs at a
/// time and callers that waited see its result instead of fetching again.
#[derive(Default)]
struct FetchState {
    last_attempt: Option<DateTime<Utc>>,
    /// Why the last attempt failed, if it did.
    last_error: Option<String>,
    /// The metadata's `jwks_uri`, kept until a JWKS fetch fails.
    jwks_uri: Option<Url>,
}

/// Validates the access tokens presented to graphfeed's API. Built once per cold start and shared.
pub struct TokenValidator {
    config: AuthConfig,
    http: reqwest::Client,
    clock: SharedClock,
    validation: Validation,
    keys: RwLock<Option<Arc<KeySet>>>,
    fetch: tokio::sync::Mutex<FetchState>,
    metadata_fetches: AtomicU64,
    jwks_fetches: AtomicU64,
}

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenValidator")
            .field("config", &self.config)
            .field("fetch_counts", &self.fetch_counts())
            .finish_non_exhaustive()
    }
}

/// The JOSE header, read before anything else so the algorithm is decided by us, not the token.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// The claims graphfeed reads. Types are loose where Entra's are (`aud` may be a list).
#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<OneOrMany>,
    exp: Option<f64>,
    nbf: Option<f64>,
    tid: Option<String>,
    oid: Option<String>,
    scp: Option<String>,
    idtyp: Option<String>,
    roles: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn any(&self, mut f: impl FnMut(&str) -> bool) -> bool {
        match self {
            Self::One(one) => f(one),
            Self::Many(many) => many.iter().any(|s| f(s)),
        }
    }
}

#[derive(Deserialize)]
struct OidcMetadata {
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<serde_json::Value>,
}

/// One JWKS entry; anything else the entry holds (`x5c`, `x5t`, ...) is ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    issuer: Option<String>,
}

impl TokenValidator {
    /// A validator that fetches keys lazily, on the first token. `http` is used for the metadata
    /// and JWKS requests, each limited to [`FETCH_TIMEOUT`]; `clock` decides `exp`/`nbf` and the
    /// refetch intervals.
    pub fn new(config: AuthConfig, http: reqwest::Client, clock: SharedClock) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        // Time and audience are checked below against the shared clock and our two audiences;
        // jsonwebtoken only verifies the RS256 signature.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        Self {
            config,
            http,
            clock,
            validation,
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            metadata_fetches: AtomicU64::new(0),
            jwks_fetches: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The metadata and JWKS requests made so far.
    pub fn fetch_counts(&self) -> FetchCounts {
        FetchCounts {
            metadata: self.metadata_fetches.load(Ordering::Relaxed),
            jwks: self.jwks_fetches.load(Ordering::Relaxed),
        }
    }

    /// Fetches the keys now if none are held, so the first request of a cold start does not pay
    /// for it. Optional: [`TokenValidator::validate`] fetches on demand.
    pub async fn warm_up(&self) -> Result<(), AuthError> {
        if self.current_keys().is_some() {
            return Ok(());
        }
        let mut state = self.fetch.lock().await;
        if self.current_keys().is_some() {
            return Ok(());
        }
        let now = self.clock.now();
        if !may_fetch(&state, now) {
            return Err(keys_unavailable(&state, now));
        }
        self.refresh(&mut state, now).await.map(|_| ())
    }

    /// Validates `Authorization` header value (`Bearer <token>`) or a bare token, and returns the
    /// caller it proves (graph-protocol.md §7.4).
    pub async fn validate(&self, authorization_header_or_token: &str) -> Result<Caller, AuthError> {
        let token = bearer_token(authorization_header_or_token)?;
        let header = read_header(token)?;
        let alg = header.alg.as_deref().unwrap_or("");
        // RS256 only: `none`, HS* (a public key used as an HMAC secret), PS*, ES* are refused here,
        // before any key is looked up (§7.4).
        if alg != "RS256" {
            return Err(AuthError::DisallowedAlgorithm { alg: printable(alg) });
        }
        if header.crit.is_some() {
            return Err(AuthError::Malformed {
                reason: "the header has crit extensions",
            });
        }
        let kid = header
            .kid
            .filter(|kid| !kid.is_empty())
            .ok_or(AuthError::Malformed {
                reason: "the header names no kid",
            })?;
        let key = self.signing_key(&kid).await?;
        let claims: Claims = jsonwebtoken::decode(token, &key.key, &self.validation)
            .map_err(|e| match e.kind() {
                JwtErrorKind::InvalidSignature | JwtErrorKind::InvalidRsaKey(_) => AuthError::BadSignature,
                JwtErrorKind::InvalidAlgorithm | JwtErrorKind::InvalidAlgorithmName => {
                    AuthError::DisallowedAlgorithm { alg: printable(alg) }
                }
                _ => AuthError::Malformed {
                    reason: "the claims could not be read",
                },
            })?
            .claims;
        self.check_claims(token, claims, &key)
    }

    /// Everything after the signature: time, tenant, issuer, audience, user and scope (§7.4).
    fn check_claims(&self, token: &str, claims: Claims, key: &SigningKey) -> Result<Caller, AuthError> {
        let now = self.clock.now().timestamp();
        let leeway = LEEWAY.num_seconds();
        let exp = claims.exp.ok_or(AuthError::MissingClaim { claim: "exp" })? as i64;
        if now >= exp.saturating_add(leeway) {
            return Err(AuthError::Expired { exp });
        }
        if let Some(nbf) = claims.nbf.map(|nbf| nbf as i64)
            && nbf > now.saturating_add(leeway)
        {
            return Err(AuthError::NotYetValid { nbf });
        }

        // The tenant: a canonical GUID, accepted by ENTRA_TENANT_ID.
        let raw_tid = claims.tid.ok_or(AuthError::MissingClaim { claim: "tid" })?;
        let tenant = TenantId::parse(&raw_tid)
            .ok()
            .filter(|t| t.as_str() == raw_tid)
            .ok_or(AuthError::MissingClaim { claim: "tid" })?;
        if !self.config.tenant.accepts(&tenant) {
            return Err(AuthError::WrongTenant);
        }

        // The issuer: exactly the v1 or v2 issuer of that tid, so a token of one tenant cannot
        // claim another's issuer (§7.4, multi-tenant: substitute tid, require an exact match).
        let iss = claims.iss.ok_or(AuthError::MissingClaim { claim: "iss" })?;
        let v1 = self.config.v1_issuer(tenant.as_str());
        let v2 = self.config.v2_issuer(tenant.as_str());
        let token_version = if iss == v1 {
            TokenVersion::V1
        } else if iss == v2 {
            TokenVersion::V2
        } else {
            return Err(AuthError::WrongIssuer);
        };
        // A key published with an issuer serves only that issuer's tenant (§7.4).
        if let Some(key_issuer) = &key.issuer {
            let key_issuer = key_issuer.replace(TENANT_PLACEHOLDER, tenant.as_str());
            if key_issuer != v1 && key_issuer != v2 {
                return Err(AuthError::WrongIssuer);
            }
        }

        let aud = claims.aud.ok_or(AuthError::MissingClaim { claim: "aud" })?;
        if !aud.any(|a| self.config.is_our_audience(a)) {
            return Err(AuthError::WrongAudience);
        }

        // Delegated tokens carry scp; app-only tokens carry roles and, optionally, idtyp=app.
        // On-behalf-of works for users only (§7.1).
        let scopes: Vec<String> = claims
            .scp
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let app_only = claims.idtyp.as_deref() == Some("app");
        if app_only || (scopes.is_empty() && claims.roles.is_some()) {
            return Err(AuthError::AppOnly);
        }
        if !scopes.contains(&self.config.api_scope) {
            return Err(AuthError::MissingScope {
                required: self.config.api_scope.clone(),
            });
        }

        // The user key is tid + oid; sub is pairwise per app and never used (§7.4).
        let raw_oid = claims.oid.ok_or(AuthError::MissingClaim { claim: "oid" })?;
        let object = ObjectId::parse(&raw_oid).map_err(|_| AuthError::MissingClaim { claim: "oid" })?;

        Ok(Caller {
            user: UserKey::new(tenant, object),
            scopes,
            token_version,
            raw: SecretString::from(token.to_owned()),
        })
    }

    fn current_keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The key named `kid`: from the cache while it is fresh; otherwise after one refetch, if the
    /// last fetch was at least [`REFETCH_INTERVAL`] ago.
    async fn signing_key(&self, kid: &str) -> Result<Arc<SigningKey>, AuthError> {
        if let Some(key) = self.fresh_key(kid, self.clock.now()) {
            return Ok(key);
        }
        let mut state = self.fetch.lock().await;
        // Another caller may have fetched while this one waited for the lock.
        let now = self.clock.now();
        if let Some(key) = self.fresh_key(kid, now) {
            return Ok(key);
        }
        if may_fetch(&state, now)
            && let Ok(set) = self.refresh(&mut state, now).await
        {
            return set
                .keys
                .get(kid)
                .cloned()
                .ok_or_else(|| AuthError::UnknownKey { kid: printable(kid) });
        }
        // No fetch now (too soon, or it failed): a held key, even a stale one, still serves.
        if let Some(key) = self.current_keys().and_then(|set| set.keys.get(kid).cloned()) {
            return Ok(key);
        }
        if state.last_error.is_some() {
            // The keys could not be read, so a new kid may be a genuine rotation: retry later.
            return Err(keys_unavailable(&state, now));
        }
        Err(AuthError::UnknownKey { kid: printable(kid) })
    }

    fn fresh_key(&self, kid: &str, now: DateTime<Utc>) -> Option<Arc<SigningKey>> {
        let set = self.current_keys()?;
        if now - set.fetched_at >= KEY_MAX_AGE {
            return None;
        }
        set.keys.get(kid).cloned()
    }

    /// Fetches metadata (unless its `jwks_uri` is known) and the JWKS, and installs the keys.
    /// The caller holds the fetch lock and has checked [`may_fetch`].
    async fn refresh(&self, state: &mut FetchState, now: DateTime<Utc>) -> Result<Arc<KeySet>, AuthError> {
        state.last_attempt = Some(now);
        match self.fetch_keys(state, now).await {
            Ok(set) => {
                state.last_error = None;
                tracing::info!(keys = set.keys.len(), "loaded Entra signing keys");
                let set = Arc::new(set);
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(set.clone());
                Ok(set)
            }
            Err(reason) => {
                tracing::warn!(%reason, "could not load Entra signing keys");
                state.last_error = Some(reason);
                Err(keys_unavailable(state, now))
            }
        }
    }

    async fn fetch_keys(&self, state: &mut FetchState, now: DateTime<Utc>) -> Result<KeySet, String> {
        let jwks_uri = match &state.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = self.config.metadata_url().map_err(|e| e.to_string())?;
                self.metadata_fetches.fetch_add(1, Ordering::Relaxed);
                let metadata: OidcMetadata = self.get_json(&url).await?;
                let uri = Url::parse(&metadata.jwks_uri)
                    .map_err(|e| format!("the OIDC metadata at {url} has an invalid jwks_uri: {e}"))?;
                let https_required = self.config.authority_host.scheme() == "https";
                if uri.scheme() != "https" && (https_required || uri.scheme() != "http") {
                    return Err(format!(
                        "the OIDC metadata at {url} names a jwks_uri that is not https"
                    ));
                }
                state.jwks_uri = Some(uri.clone());
                uri
            }
        };
        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        let jwks: Jwks = match self.get_json(&jwks_uri).await {
            Ok(jwks) => jwks,
            Err(reason) => {
                // The metadata may have moved the keys: read it again next time.
                state.jwks_uri = None;
                return Err(reason);
            }
        };
        let keys = usable_keys(jwks);
        if keys.is_empty() {
            return Err(format!("the JWKS at {jwks_uri} holds no RS256 signing key"));
        }
        Ok(KeySet {
            keys,
            fetched_at: now,
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> Result<T, String> {
        let response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                let what = if e.is_timeout() { "timed out" } else { "failed" };
                format!("GET {url} {what}: {e}")
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}"));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOCUMENT_LEN as u64)
        {
            return Err(format!("GET {url} answered more than {MAX_DOCUMENT_LEN} bytes"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: reading the body failed: {e}"))?;
        if body.len() > MAX_DOCUMENT_LEN {
            return Err(format!("GET {url} answered more than {MAX_DOCUMENT_LEN} bytes"));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("GET {url}: the answer is not the expected JSON: {e}"))
    }
}

/// Whether the rate limit allows a fetch at `now`.
fn may_fetch(state: &FetchState, now: DateTime<Utc>) -> bool {
    state
        .last_attempt
        .is_none_or(|last| now - last >= REFETCH_INTERVAL)
}

fn keys_unavailable(state: &FetchState, now: DateTime<Utc>) -> AuthError {
    let wait = state
        .last_attempt
        .map_or(REFETCH_INTERVAL, |last| REFETCH_INTERVAL - (now - last));
    // Rounded up, so a client that waits this long finds the next fetch allowed.
    let secs = (wait.num_milliseconds() + 999) / 1000;
    let secs = secs.clamp(1, REFETCH_INTERVAL.num_seconds());
    AuthError::KeysUnavailable {
        reason: state
            .last_error
            .clone()
            .unwrap_or_else(|| "no key fetch has succeeded yet".to_owned()),
        retry_after: std::time::Duration::from_secs(secs.unsigned_abs()),
    }
}

/// The RSA signature keys of a JWKS, by `kid`. Everything else is dropped: `kty` other than RSA
/// (an `oct` key could otherwise be an HMAC secret), `use` other than `sig`, `alg` other than
/// RS256, keys without `kid`, `n` or `e`. The first key of a repeated `kid` wins.
fn usable_keys(jwks: Jwks) -> HashMap<String, Arc<SigningKey>> {
    let mut keys = HashMap::new();
    for value in jwks.keys {
        let Ok(jwk) = serde_json::from_value::<RawJwk>(value) else {
            continue;
        };
        let (Some("RSA"), None | Some("sig"), None | Some("RS256")) =
            (jwk.kty.as_deref(), jwk.use_.as_deref(), jwk.alg.as_deref())
        else {
            continue;
        };
        let (Some(kid), Some(n), Some(e)) = (jwk.kid, jwk.n, jwk.e) else {
            continue;
        };
        if kid.is_empty() || keys.contains_key(&kid) {
            continue;
        }
        let Ok(key) = DecodingKey::from_rsa_components(&n, &e) else {
            continue;
        };
        keys.insert(
            kid,
            Arc::new(SigningKey {
                key,
                issuer: jwk.issuer,
            }),
        );
    }
    keys
}

/// The token of an `Authorization` value (`Bearer <token>`, scheme case-insensitive) or a bare token.
fn bearer_token(value: &str) -> Result<&str, AuthError> {
    let value = value.trim();
    let token = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => {
            return Err(AuthError::Malformed {
                reason: "the Authorization scheme is not Bearer",
            });
        }
        None if value.eq_ignore_ascii_case("bearer") => "",
        None => value,
    };
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed {
            reason: "the token is too long",
        });
    }
    if token.split('.').count() != 3 {
        return Err(AuthError::Malformed {
            reason: "a JWS has three dot-separated parts",
        });
    }
    Ok(token)
}

fn read_header(token: &str) -> Result<RawHeader, AuthError> {
    let malformed = AuthError::Malformed {
        reason: "the header is not base64url JSON",
    };
    let encoded = token.split('.').next().ok_or_else(|| malformed.clone())?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed.clone())?;
    serde_json::from_slice(&bytes).map_err(|_| malformed)
}

/// A token-supplied string made safe for logs: printable ASCII, at most 64 characters.
fn printable(raw: &str) -> String {
    raw.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{LazyLock, Mutex};

    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::KeyPair as _;
    use axum::Json;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use jsonwebtoken::{EncodingKey, Header};
    use secrecy::ExposeSecret;
    use serde_json::{Value, json};

    use super::*;
    use crate::clock::OffsetClock;

    const TENANT: &str = "11111111-2222-3333-4444-555555555555";
    const OTHER_TENANT: &str = "99999999-8888-7777-6666-555555555555";
    const CLIENT_ID: &str = "6e1b9c6f-0d1e-4a8b-9a51-6a0f9c2d4b7e";
    const USER: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

    /// An RSA-2048 key generated for the tests, its JWK and its public key as PEM.
    struct TestKey {
        kid: String,
        signing: EncodingKey,
        jwk: Value,
        public_pem: String,
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    fn generate(kid: &str) -> TestKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 = pair.as_der().unwrap();
        let signing = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).unwrap();
        let public = pair.public_key();
        let spki = public.as_der().unwrap();
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        });
        TestKey {
            kid: kid.to_owned(),
            signing,
            jwk,
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
        }
    }

    /// Three keys, generated once per test run: the published one, a rotated-in one, a stranger.
    static KEYS: LazyLock<[TestKey; 3]> =
        LazyLock::new(|| [generate("key-1"), generate("key-2"), generate("stranger")]);

    fn key1() -> &'static TestKey {
        &KEYS[0]
    }
    fn key2() -> &'static TestKey {
        &KEYS[1]
    }
    fn stranger() -> &'static TestKey {
        &KEYS[2]
    }

    /// A tiny Entra: OIDC metadata and a JWKS that a test can change, fail, and count.
    #[derive(Default)]
    struct FakeEntraState {
        base: Mutex<String>,
        keys: Mutex<Vec<Value>>,
        failing: AtomicBool,
        metadata_tenants: Mutex<Vec<String>>,
    }

    struct FakeEntra {
        base: String,
        state: Arc<FakeEntraState>,
    }

    impl FakeEntra {
        async fn start(keys: Vec<Value>) -> Self {
            let state = Arc::new(FakeEntraState::default());
            *state.keys.lock().unwrap() = keys;
            let app = axum::Router::new()
                .route(
                    "/{tenant}/v2.0/.well-known/openid-configuration",
                    axum::routing::get(metadata),
                )
                .route("/{tenant}/discovery/v2.0/keys", axum::routing::get(jwks))
                .with_state(state.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            *state.base.lock().unwrap() = base.clone();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Self { base, state }
        }

        fn publish(&self, keys: Vec<Value>) {
            *self.state.keys.lock().unwrap() = keys;
        }

        fn fail(&self, failing: bool) {
            self.state.failing.store(failing, Ordering::SeqCst);
        }
    }

    async fn metadata(State(state): State<Arc<FakeEntraState>>, Path(tenant): Path<String>) -> Response {
        state.metadata_tenants.lock().unwrap().push(tenant.clone());
        if state.failing.load(Ordering::SeqCst) {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        let base = state.base.lock().unwrap().clone();
        let issuer_tenant = if tenant.contains('-') {
            tenant.as_str()
        } else {
            TENANT_PLACEHOLDER
        };
        Json(json!({
            "issuer": format!("{base}/{issuer_tenant}/v2.0"),
            "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        }))
        .into_response()
    }

    async fn jwks(State(state): State<Arc<FakeEntraState>>) -> Response {
        if state.failing.load(Ordering::SeqCst) {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Json(json!({ "keys": *state.keys.lock().unwrap() })).into_response()
    }

    fn env(base: &str, tenant: &str) -> Env {
        Env::from_pairs([
            (ENTRA_AUTHORITY_HOST, base),
            (ENTRA_TENANT_ID, tenant),
            (ENTRA_CLIENT_ID, CLIENT_ID),
        ])
    }

    fn validator_for(entra: &FakeEntra, tenant: &str) -> (TokenValidator, OffsetClock) {
        let config = AuthConfig::from_env(&env(&entra.base, tenant)).unwrap();
        let clock = OffsetClock::new();
        let http = reqwest::Client::builder().build().unwrap();
        (TokenValidator::new(config, http, Arc::new(clock.clone())), clock)
    }

    /// A valid v2 token's claims for `tid`, issued now by the fake Entra at `base`.
    fn v2_claims(base: &str, tid: &str, clock: &OffsetClock) -> Value {
        let now = crate::clock::Clock::now(clock).timestamp();
        json!({
            "aud": CLIENT_ID,
            "iss": format!("{base}/{tid}/v2.0"),
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "tid": tid,
            "oid": USER,
            "sub": "pairwise-subject-not-a-user-key",
            "scp": "access_as_user User.Read",
            "ver": "2.0",
            "azp": "0b6f2d8e-1c1a-4f7e-9b0c-2d4c6e8f0a1b",
        })
    }

    fn v1_claims(tid: &str, clock: &OffsetClock) -> Value {
        let now = crate::clock::Clock::now(clock).timestamp();
        json!({
            "aud": format!("api://{CLIENT_ID}"),
            "iss": format!("https://sts.windows.net/{tid}/"),
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "tid": tid,
            "oid": USER,
            "scp": "access_as_user",
            "ver": "1.0",
            "appid": "0b6f2d8e-1c1a-4f7e-9b0c-2d4c6e8f0a1b",
        })
    }

    fn sign(key: &TestKey, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.signing).unwrap()
    }

    fn with(mut claims: Value, field: &str, value: Value) -> Value {
        claims[field] = value;
        claims
    }

    fn without(mut claims: Value, field: &str) -> Value {
        claims.as_object_mut().unwrap().remove(field);
        claims
    }

    /// The fake Entra publishing key-1, a single-tenant validator, and its clock.
    async fn single_tenant() -> (FakeEntra, TokenValidator, OffsetClock) {
        let entra = FakeEntra::start(vec![key1().jwk.clone()]).await;
        let (validator, clock) = validator_for(&entra, TENANT);
        (entra, validator, clock)
    }

    #[tokio::test]
    async fn a_good_v2_token_is_accepted_and_keys_the_user_by_tid_and_oid() {
        let (entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &v2_claims(&entra.base, TENANT, &clock));

        let caller = validator.validate(&format!("Bearer {token}")).await.unwrap();

        assert_eq!(caller.user.tenant.as_str(), TENANT);
        assert_eq!(caller.user.object.as_str(), USER);
        assert_eq!(caller.token_version, TokenVersion::V2);
        assert_eq!(caller.scopes, ["access_as_user", "User.Read"]);
        assert_eq!(caller.raw.expose_secret(), token);
        assert_eq!(validator.fetch_counts(), FetchCounts { metadata: 1, jwks: 1 });
        assert_eq!(*entra.state.metadata_tenants.lock().unwrap(), [TENANT]);
    }

    #[tokio::test]
    async fn a_good_v1_token_with_the_app_id_uri_audience_is_accepted() {
        let (_entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &v1_claims(TENANT, &clock));

        let caller = validator.validate(&format!("bearer  {token}")).await.unwrap();

        assert_eq!(caller.token_version, TokenVersion::V1);
        assert_eq!(caller.user.to_string(), format!("{TENANT}#{USER}"));
    }

    #[tokio::test]
    async fn a_v1_token_for_the_client_id_and_a_bare_token_are_accepted() {
        let (_entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &with(v1_claims(TENANT, &clock), "aud", json!(CLIENT_ID)));

        assert!(validator.validate(&token).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_signed_by_a_key_the_issuer_does_not_publish_is_refused() {
        let (entra, validator, clock) = single_tenant().await;
        let token = sign(stranger(), &v2_claims(&entra.base, TENANT, &clock));

        let err = validator.validate(&token).await.unwrap_err();

        assert_eq!(
            err,
            AuthError::UnknownKey {
                kid: "stranger".into()
            }
        );
        assert_eq!(err.status(), 401);
    }

    #[tokio::test]
    async fn a_token_signed_by_another_key_under_a_published_kid_is_refused() {
        let (entra, validator, clock) = single_tenant().await;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key1().kid.clone());
        let forged = jsonwebtoken::encode(
            &header,
            &v2_claims(&entra.base, TENANT, &clock),
            &stranger().signing,
        )
        .unwrap();

        assert_eq!(
            validator.validate(&forged).await.unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[tokio::test]
    async fn a_token_with_a_changed_claim_is_refused() {
        let (entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &v2_claims(&entra.base, TENANT, &clock));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["oid"] = json!("bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee");
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());

        assert_eq!(
            validator.validate(&parts.join(".")).await.unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[tokio::test]
    async fn a_token_for_another_audience_is_refused() {
        let (entra, validator, clock) = single_tenant().await;
        for aud in [
            json!(GRAPH_APP_ID),
            json!("https://graph.microsoft.com"),
            json!([GRAPH_APP_ID]),
        ] {
            let token = sign(key1(), &with(v2_claims(&entra.base, TENANT, &clock), "aud", aud));
            assert_eq!(
                validator.validate(&token).await.unwrap_err(),
                AuthError::WrongAudience
            );
        }
        let token = sign(key1(), &without(v2_claims(&entra.base, TENANT, &clock), "aud"));
        assert_eq!(
            validator.validate(&token).await.unwrap_err(),
            AuthError::MissingClaim { claim: "aud" }
        );
    }

    #[tokio::test]
    async fn a_token_from_an_unexpected_issuer_is_refused() {
        let (entra, validator, clock) = single_tenant().await;
        for iss in [
            format!("https://evil.example/{TENANT}/v2.0"),
            format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
            format!("https://sts.windows.net/{TENANT}"),
            format!("{}/{TENANT}/v2.0/", entra.base),
        ] {
            let token = sign(
                key1(),
                &with(v2_claims(&entra.base, TENANT, &clock), "iss", json!(iss)),
            );
            assert_eq!(
                validator.validate(&token).await.unwrap_err(),
                AuthError::WrongIssuer,
                "{iss}"
            );
        }
    }

    #[tokio::test]
    async fn a_token_from_another_tenant_is_refused_when_single_tenant() {
        let (entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &v2_claims(&entra.base, OTHER_TENANT, &clock));

        let err = validator.validate(&token).await.unwrap_err();

        assert_eq!(err, AuthError::WrongTenant);
        assert_eq!(err.status(), 401);
    }

    #[tokio::test]
    async fn multi_tenant_accepts_any_tenant_whose_tid_matches_the_issuer() {
        let entra = FakeEntra::start(vec![key1().jwk.clone()]).await;
        let (validator, clock) = validator_for(&entra, "organizations");

        for tid in [TENANT, OTHER_TENANT] {
            let caller = validator
                .validate(&sign(key1(), &v2_claims(&entra.base, tid, &clock)))
                .await
                .unwrap();
            assert_eq!(caller.user.tenant.as_str(), tid);
        }
        assert!(
            validator
                .validate(&sign(key1(), &v1_claims(OTHER_TENANT, &clock)))
                .await
                .is_ok()
        );
        assert_eq!(*entra.state.metadata_tenants.lock().unwrap(), ["organizations"]);
    }

    #[tokio::test]
    async fn multi_tenant_refuses_a_tid_that_does_not_match_the_issuer() {
        let entra = FakeEntra::start(vec![key1().jwk.clone()]).await;
        let (validator, clock) = validator_for(&entra, "common");
        let claims = with(
            v2_claims(&entra.base, TENANT, &clock),
            "iss",
            json!(format!("{}/{OTHER_TENANT}/v2.0", entra.base)),
        );
        assert_eq!(
            validator.validate(&sign(key1(), &claims)).await.unwrap_err(),
            AuthError::WrongIssuer
        );
        let v1 = with(
            v1_claims(TENANT, &clock),
            "iss",
            json!(format!("https://sts.windows.net/{OTHER_TENANT}/")),
        );
        assert_eq!(
            validator.validate(&sign(key1(), &v1)).await.unwrap_err(),
            AuthError::WrongIssuer
        );
    }

    #[tokio::test]
    async fn multi_tenant_refuses_a_tid_that_is_not_a_canonical_guid() {
        let entra = FakeEntra::start(vec![key1().jwk.clone()]).await;
        let (validator, clock) = validator_for(&entra, "common");
        for tid in [
            "contoso.onmicrosoft.com",
            "{tenantid}",
            "11111111-2222-3333-4444-55555555555F",
        ] {
            let token = sign(key1(), &v2_claims(&entra.base, tid, &clock));
            assert_eq!(
                validator.validate(&token).await.unwrap_err(),
                AuthError::MissingClaim { claim: "tid" },
                "{tid}"
            );
        }
    }

    #[tokio::test]
    async fn organizations_refuses_personal_accounts_and_common_accepts_them() {
        let entra = FakeEntra::start(vec![key1().jwk.clone()]).await;
        let (organizations, clock) = validator_for(&entra, "organizations");
        let (common, _) = validator_for(&entra, "common");
        let token = sign(key1(), &v2_claims(&entra.base, CONSUMER_TENANT_ID, &clock));

        assert_eq!(
            organizations.validate(&token).await.unwrap_err(),
            AuthError::WrongTenant
        );
        assert!(common.validate(&token).await.is_ok());
    }

    #[tokio::test]
    async fn a_key_published_for_one_tenant_does_not_serve_another() {
        let mut scoped = key1().jwk.clone();
        let entra = FakeEntra::start(vec![]).await;
        scoped["issuer"] = json!(format!("{}/{TENANT}/v2.0", entra.base));
        let mut shared = key2().jwk.clone();
        shared["issuer"] = json!(format!("{}/{{tenantid}}/v2.0", entra.base));
        entra.publish(vec![scoped, shared]);
        let (validator, clock) = validator_for(&entra, "common");

        assert!(
            validator
                .validate(&sign(key1(), &v2_claims(&entra.base, TENANT, &clock)))
                .await
                .is_ok()
        );
        assert!(
            validator
                .validate(&sign(key1(), &v1_claims(TENANT, &clock)))
                .await
                .is_ok()
        );
        assert_eq!(
            validator
                .validate(&sign(key1(), &v2_claims(&entra.base, OTHER_TENANT, &clock)))
                .await
                .unwrap_err(),
            AuthError::WrongIssuer
        );
        assert!(
            validator
                .validate(&sign(key2(), &v2_claims(&entra.base, OTHER_TENANT, &clock)))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_after_a_minute_of_clock_skew() {
        let (entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &v2_claims(&entra.base, TENANT, &clock));

        clock.advance(Duration::seconds(3600 + 30));
        assert!(validator.validate(&token).await.is_ok(), "within the leeway");

        clock.advance(Duration::seconds(40));
        let err = validator.validate(&token).await.unwrap_err();
        assert!(matches!(err, AuthError::Expired { .. }), "{err}");
        assert_eq!(
            err.www_authenticate().unwrap(),
            r#"Bearer error="invalid_token", error_description="the token has expired""#
        );
    }

    #[tokio::test]
    async fn a_token_that_is_not_yet_valid_is_refused() {
        let (entra, validator, clock) = single_tenant().await;
        let now = crate::clock::Clock::now(&clock).timestamp();
        let early = with(v2_claims(&entra.base, TENANT, &clock), "nbf", json!(now + 300));

        let err = validator.validate(&sign(key1(), &early)).await.unwrap_err();
        assert_eq!(err, AuthError::NotYetValid { nbf: now + 300 });

        let skewed = with(v2_claims(&entra.base, TENANT, &clock), "nbf", json!(now + 30));
        assert!(validator.validate(&sign(key1(), &skewed)).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_without_exp_is_refused() {
        let (entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &without(v2_claims(&entra.base, TENANT, &clock), "exp"));
        assert_eq!(
            validator.validate(&token).await.unwrap_err(),
            AuthError::MissingClaim { claim: "exp" }
        );
    }

    fn unsigned(header: &Value, claims: &Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[tokio::test]
    async fn alg_none_is_refused_without_fetching_keys() {
        let (entra, validator, clock) = single_tenant().await;
        let claims = v2_claims(&entra.base, TENANT, &clock);
        for alg in ["none", "None", "NONE"] {
            let token = unsigned(&json!({"alg": alg, "typ": "JWT", "kid": "key-1"}), &claims, b"");
            assert_eq!(
                validator.validate(&token).await.unwrap_err(),
                AuthError::DisallowedAlgorithm { alg: alg.into() }
            );
        }
        let no_alg = unsigned(&json!({"typ": "JWT", "kid": "key-1"}), &claims, b"");
        assert!(matches!(
            validator.validate(&no_alg).await.unwrap_err(),
            AuthError::DisallowedAlgorithm { .. }
        ));
        assert_eq!(validator.fetch_counts(), FetchCounts::default());
    }

    #[tokio::test]
    async fn hs256_is_refused_even_when_keyed_with_the_rsa_public_key() {
        let (entra, validator, clock) = single_tenant().await;
        let claims = v2_claims(&entra.base, TENANT, &clock);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key1().kid.clone());
        let modulus = key1().jwk["n"].as_str().unwrap().to_owned();
        // Key confusion: an HMAC "secret" anyone can read (the public key as PEM, as JWK n, as JSON).
        for secret in [
            key1().public_pem.as_bytes().to_vec(),
            modulus.into_bytes(),
            serde_json::to_vec(&key1().jwk).unwrap(),
            b"a shared secret".to_vec(),
        ] {
            let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret)).unwrap();
            assert_eq!(
                validator.validate(&token).await.unwrap_err(),
                AuthError::DisallowedAlgorithm { alg: "HS256".into() }
            );
        }
    }

    #[tokio::test]
    async fn a_genuine_rsa_signature_under_another_algorithm_is_refused() {
        let (entra, validator, clock) = single_tenant().await;
        let claims = v2_claims(&entra.base, TENANT, &clock);
        for alg in [Algorithm::RS512, Algorithm::PS256] {
            let mut header = Header::new(alg);
            header.kid = Some(key1().kid.clone());
            let token = jsonwebtoken::encode(&header, &claims, &key1().signing).unwrap();
            assert!(matches!(
                validator.validate(&token).await.unwrap_err(),
                AuthError::DisallowedAlgorithm { .. }
            ));
        }
    }

    #[tokio::test]
    async fn jwks_entries_that_are_not_rsa_signature_keys_are_never_used() {
        let entra = FakeEntra::start(vec![]).await;
        let secret = b"0123456789abcdef0123456789abcdef";
        let mut enc = key2().jwk.clone();
        enc["use"] = json!("enc");
        let mut ps = stranger().jwk.clone();
        ps["alg"] = json!("PS256");
        entra.publish(vec![
            json!({"kty": "oct", "kid": "oct-1", "k": URL_SAFE_NO_PAD.encode(secret)}),
            enc,
            ps,
            key1().jwk.clone(),
        ]);
        let (validator, clock) = validator_for(&entra, TENANT);
        let claims = v2_claims(&entra.base, TENANT, &clock);

        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some("oct-1".into());
        let token = jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(secret)).unwrap();
        assert!(matches!(
            validator.validate(&token).await.unwrap_err(),
            AuthError::DisallowedAlgorithm { .. }
        ));
        let mut rs = Header::new(Algorithm::RS256);
        rs.kid = Some("oct-1".into());
        let token = jsonwebtoken::encode(&rs, &claims, &key1().signing).unwrap();
        assert!(matches!(
            validator.validate(&token).await.unwrap_err(),
            AuthError::UnknownKey { .. }
        ));
        assert!(matches!(
            validator.validate(&sign(key2(), &claims)).await.unwrap_err(),
            AuthError::UnknownKey { .. }
        ));
        assert!(matches!(
            validator.validate(&sign(stranger(), &claims)).await.unwrap_err(),
            AuthError::UnknownKey { .. }
        ));
        assert!(validator.validate(&sign(key1(), &claims)).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_without_the_api_scope_is_refused() {
        let (entra, validator, clock) = single_tenant().await;
        for scp in [
            json!("User.Read Files.Read"),
            json!(""),
            json!("access_as_user_not"),
        ] {
            let token = sign(key1(), &with(v2_claims(&entra.base, TENANT, &clock), "scp", scp));
            let err = validator.validate(&token).await.unwrap_err();
            assert_eq!(
                err,
                AuthError::MissingScope {
                    required: DEFAULT_API_SCOPE.into()
                }
            );
            assert_eq!(err.status(), 401);
        }
        let token = sign(key1(), &without(v2_claims(&entra.base, TENANT, &clock), "scp"));
        assert!(matches!(
            validator.validate(&token).await.unwrap_err(),
            AuthError::MissingScope { .. }
        ));
    }

    #[tokio::test]
    async fn the_api_scope_is_configurable() {
        let entra = FakeEntra::start(vec![key1().jwk.clone()]).await;
        let config =
            AuthConfig::from_env(&env(&entra.base, TENANT).with(ENTRA_API_SCOPE, "Feed.Read")).unwrap();
        let clock = OffsetClock::new();
        let validator = TokenValidator::new(config, reqwest::Client::new(), Arc::new(clock.clone()));
        let claims = with(v2_claims(&entra.base, TENANT, &clock), "scp", json!("Feed.Read"));

        assert!(validator.validate(&sign(key1(), &claims)).await.is_ok());
        assert!(matches!(
            validator
                .validate(&sign(key1(), &v2_claims(&entra.base, TENANT, &clock)))
                .await
                .unwrap_err(),
            AuthError::MissingScope { .. }
        ));
    }

    #[tokio::test]
    async fn an_app_only_token_is_refused_because_on_behalf_of_needs_a_user() {
        let (entra, validator, clock) = single_tenant().await;
        let app_only = with(
            without(v2_claims(&entra.base, TENANT, &clock), "scp"),
            "idtyp",
            json!("app"),
        );
        let with_roles = with(
            without(v2_claims(&entra.base, TENANT, &clock), "scp"),
            "roles",
            json!(["Feed.ReadWrite.All"]),
        );
        for claims in [app_only, with_roles] {
            let err = validator.validate(&sign(key1(), &claims)).await.unwrap_err();
            assert_eq!(err, AuthError::AppOnly);
            assert_eq!(err.status(), 401);
        }
    }

    #[tokio::test]
    async fn a_token_without_an_oid_has_no_user_key() {
        let (entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &without(v2_claims(&entra.base, TENANT, &clock), "oid"));
        assert_eq!(
            validator.validate(&token).await.unwrap_err(),
            AuthError::MissingClaim { claim: "oid" }
        );
    }

    #[tokio::test]
    async fn jwks_rotation_is_followed_with_one_refetch() {
        let (entra, validator, clock) = single_tenant().await;
        assert!(
            validator
                .validate(&sign(key1(), &v2_claims(&entra.base, TENANT, &clock)))
                .await
                .is_ok()
        );
        assert_eq!(validator.fetch_counts(), FetchCounts { metadata: 1, jwks: 1 });

        entra.publish(vec![key1().jwk.clone(), key2().jwk.clone()]);
        clock.advance(Duration::minutes(5));
        let rotated = sign(key2(), &v2_claims(&entra.base, TENANT, &clock));

        assert!(validator.validate(&rotated).await.is_ok());
        assert!(validator.validate(&rotated).await.is_ok());
        assert!(
            validator
                .validate(&sign(key1(), &v2_claims(&entra.base, TENANT, &clock)))
                .await
                .is_ok()
        );
        // The jwks_uri is remembered: a rotation costs one JWKS request, not another metadata read.
        assert_eq!(validator.fetch_counts(), FetchCounts { metadata: 1, jwks: 2 });
    }

    #[tokio::test]
    async fn a_burst_of_unknown_kids_causes_at_most_one_refetch_per_minute() {
        let (entra, validator, clock) = single_tenant().await;
        assert!(
            validator
                .validate(&sign(key1(), &v2_claims(&entra.base, TENANT, &clock)))
                .await
                .is_ok()
        );
        clock.advance(Duration::minutes(2));

        let forged: Vec<String> = (0..50)
            .map(|i| {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some(format!("forged-{i}"));
                jsonwebtoken::encode(
                    &header,
                    &v2_claims(&entra.base, TENANT, &clock),
                    &stranger().signing,
                )
                .unwrap()
            })
            .collect();
        let results = futures::future::join_all(forged.iter().map(|t| validator.validate(t))).await;
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(AuthError::UnknownKey { .. })))
        );
        assert_eq!(validator.fetch_counts().jwks, 2);

        clock.advance(Duration::seconds(30));
        for token in &forged {
            assert!(matches!(
                validator.validate(token).await,
                Err(AuthError::UnknownKey { .. })
            ));
        }
        assert_eq!(validator.fetch_counts().jwks, 2, "still within the minute");

        clock.advance(Duration::seconds(31));
        for token in &forged {
            assert!(validator.validate(token).await.is_err());
        }
        assert_eq!(validator.fetch_counts().jwks, 3, "one more after the minute");
        // Known keys keep working throughout, from the cache.
        assert!(
            validator
                .validate(&sign(key1(), &v2_claims(&entra.base, TENANT, &clock)))
                .await
                .is_ok()
        );
        assert_eq!(validator.fetch_counts().jwks, 3);
    }

    #[tokio::test]
    async fn concurrent_first_requests_fetch_the_keys_once() {
        let (entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &v2_claims(&entra.base, TENANT, &clock));

        let results = futures::future::join_all((0..20).map(|_| validator.validate(&token))).await;

        assert!(results.iter().all(Result::is_ok));
        assert_eq!(validator.fetch_counts(), FetchCounts { metadata: 1, jwks: 1 });
    }

    #[tokio::test]
    async fn keys_are_refreshed_when_a_day_old() {
        let (entra, validator, clock) = single_tenant().await;
        assert!(
            validator
                .validate(&sign(key1(), &v2_claims(&entra.base, TENANT, &clock)))
                .await
                .is_ok()
        );

        clock.advance(Duration::hours(24));
        entra.publish(vec![key2().jwk.clone()]);
        let retired = sign(key1(), &v2_claims(&entra.base, TENANT, &clock));

        assert!(matches!(
            validator.validate(&retired).await.unwrap_err(),
            AuthError::UnknownKey { .. }
        ));
        assert_eq!(validator.fetch_counts().jwks, 2);
    }

    #[tokio::test]
    async fn a_stale_key_still_serves_while_entra_is_down() {
        let (entra, validator, clock) = single_tenant().await;
        assert!(
            validator
                .validate(&sign(key1(), &v2_claims(&entra.base, TENANT, &clock)))
                .await
                .is_ok()
        );

        clock.advance(Duration::hours(25));
        entra.fail(true);

        assert!(
            validator
                .validate(&sign(key1(), &v2_claims(&entra.base, TENANT, &clock)))
                .await
                .is_ok()
        );
        assert_eq!(validator.fetch_counts().jwks, 2);
    }

    #[tokio::test]
    async fn unavailable_keys_are_a_distinct_retryable_error() {
        let (entra, validator, clock) = single_tenant().await;
        entra.fail(true);
        let token = sign(key1(), &v2_claims(&entra.base, TENANT, &clock));

        let err = validator.validate(&token).await.unwrap_err();
        assert!(err.is_keys_unavailable(), "{err}");
        assert_eq!(err.status(), 503);
        assert_eq!(err.www_authenticate(), None);
        assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(60)));

        // Within the minute nothing is fetched, and the answer stays 503.
        entra.fail(false);
        clock.advance(Duration::seconds(20));
        let err = validator.validate(&token).await.unwrap_err();
        assert!(err.is_keys_unavailable());
        assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(40)));
        assert_eq!(validator.fetch_counts(), FetchCounts { metadata: 1, jwks: 0 });

        clock.advance(Duration::seconds(40));
        assert!(validator.validate(&token).await.is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_jwks_is_unavailable_not_invalid() {
        let (entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &v2_claims(&entra.base, TENANT, &clock));
        assert!(validator.warm_up().await.is_ok());

        // A kid rotated in while Entra's JWKS answers 503: cannot tell rotation from forgery.
        clock.advance(Duration::minutes(2));
        entra.fail(true);
        let rotated = sign(key2(), &v2_claims(&entra.base, TENANT, &clock));
        let err = validator.validate(&rotated).await.unwrap_err();
        assert!(err.is_keys_unavailable(), "{err}");
        assert!(validator.validate(&token).await.is_ok(), "held keys still serve");

        // Nothing listening at all.
        let closed = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let config = AuthConfig::from_env(&env(&closed, TENANT)).unwrap();
        let offline = TokenValidator::new(config, reqwest::Client::new(), Arc::new(clock.clone()));
        let err = offline.validate(&token).await.unwrap_err();
        assert!(err.is_keys_unavailable(), "{err}");
    }

    #[tokio::test]
    async fn missing_and_malformed_tokens_are_refused_without_fetching_keys() {
        let (_entra, validator, _clock) = single_tenant().await;
        assert_eq!(validator.validate("").await.unwrap_err(), AuthError::MissingToken);
        assert_eq!(
            validator.validate("Bearer ").await.unwrap_err(),
            AuthError::MissingToken
        );
        assert_eq!(
            validator.validate("Bearer").await.unwrap_err(),
            AuthError::MissingToken
        );
        for bad in [
            "Basic dXNlcjpwYXNz",
            "Bearer not-a-jwt",
            "Bearer a.b",
            "Bearer a.b.c.d.e",
            "Bearer !!!.e30.",
            "Bearer e30.e30.",
        ] {
            let err = validator.validate(bad).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    AuthError::Malformed { .. } | AuthError::DisallowedAlgorithm { .. }
                ),
                "{bad}: {err}"
            );
            assert_eq!(err.status(), 401);
        }
        let huge = format!("Bearer {}.e30.x", "a".repeat(MAX_TOKEN_LEN));
        assert!(matches!(
            validator.validate(&huge).await.unwrap_err(),
            AuthError::Malformed { .. }
        ));
        assert_eq!(validator.fetch_counts(), FetchCounts::default());
        assert_eq!(
            AuthError::MissingToken.www_authenticate().as_deref(),
            Some("Bearer")
        );
    }

    #[test]
    fn no_refusal_shows_the_token_or_key_material_to_the_client() {
        let errors = [
            AuthError::DisallowedAlgorithm {
                alg: "HS256\"x".into(),
            },
            AuthError::UnknownKey {
                kid: "kid\" injected=\"1".into(),
            },
            AuthError::MissingScope {
                required: "access_as_user".into(),
            },
            AuthError::Malformed { reason: "x" },
            AuthError::BadSignature,
            AuthError::AppOnly,
        ];
        for err in errors {
            let header = err.www_authenticate().unwrap();
            assert!(header.starts_with("Bearer error=\"invalid_token\", error_description=\""));
            assert_eq!(header.matches('"').count(), 4, "{header}");
            assert!(!header.contains("kid") && !header.contains("HS256"), "{header}");
        }
        assert_eq!(printable("kid\u{7}\n"), "kid??");
    }

    #[tokio::test]
    async fn a_callers_debug_output_hides_the_token() {
        let (entra, validator, clock) = single_tenant().await;
        let token = sign(key1(), &v2_claims(&entra.base, TENANT, &clock));
        let caller = validator.validate(&token).await.unwrap();
        let debug = format!("{caller:?} {validator:?}");
        assert!(!debug.contains(&token));
        assert!(!debug.contains(key1().jwk["n"].as_str().unwrap()));
    }

    #[test]
    fn config_defaults_the_authority_app_id_uri_and_scope() {
        let cfg = AuthConfig::from_env(&Env::from_pairs([
            (ENTRA_TENANT_ID, "11111111-2222-3333-4444-555555555555"),
            (ENTRA_CLIENT_ID, "6E1B9C6F-0D1E-4A8B-9A51-6A0F9C2D4B7E"),
        ]))
        .unwrap();
        assert_eq!(cfg.authority_host.as_str(), "https://login.microsoftonline.com/");
        assert_eq!(cfg.client_id, CLIENT_ID);
        assert_eq!(cfg.app_id_uri, format!("api://{CLIENT_ID}"));
        assert_eq!(cfg.api_scope, "access_as_user");
        assert_eq!(
            cfg.metadata_url().unwrap().as_str(),
            format!("https://login.microsoftonline.com/{TENANT}/v2.0/.well-known/openid-configuration")
        );
        assert_eq!(
            cfg.v2_issuer(TENANT),
            format!("https://login.microsoftonline.com/{TENANT}/v2.0")
        );
        assert_eq!(
            cfg.v1_issuer(TENANT),
            format!("https://sts.windows.net/{TENANT}/")
        );
    }

    #[test]
    fn config_names_missing_and_malformed_variables() {
        assert_eq!(
            AuthConfig::from_env(&Env::from_pairs([(ENTRA_CLIENT_ID, CLIENT_ID)])).unwrap_err(),
            ConfigError::Missing { var: ENTRA_TENANT_ID }
        );
        assert_eq!(
            AuthConfig::from_env(&Env::from_pairs([(ENTRA_TENANT_ID, "common")])).unwrap_err(),
            ConfigError::Missing { var: ENTRA_CLIENT_ID }
        );
        let base = || Env::from_pairs([(ENTRA_TENANT_ID, "organizations"), (ENTRA_CLIENT_ID, CLIENT_ID)]);
        for (env, var) in [
            (
                base().with(ENTRA_TENANT_ID, "contoso.onmicrosoft.com"),
                ENTRA_TENANT_ID,
            ),
            (base().with(ENTRA_TENANT_ID, "consumers"), ENTRA_TENANT_ID),
            (base().with(ENTRA_CLIENT_ID, "graphfeed"), ENTRA_CLIENT_ID),
            (
                base().with(ENTRA_AUTHORITY_HOST, "login.microsoftonline.com"),
                ENTRA_AUTHORITY_HOST,
            ),
            (
                base().with(ENTRA_API_SCOPE, "api://x/access_as_user"),
                ENTRA_API_SCOPE,
            ),
            (base().with(ENTRA_APP_ID_URI, "api://a b"), ENTRA_APP_ID_URI),
        ] {
            let err = AuthConfig::from_env(&env).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { var: v, .. } if v == var),
                "{var}: {err}"
            );
        }
        let multi = AuthConfig::from_env(&base().with(ENTRA_TENANT_ID, "Organizations")).unwrap();
        assert_eq!(multi.tenant, TenantScope::Organizations);
        assert!(
            multi
                .metadata_url()
                .unwrap()
                .as_str()
                .ends_with("/organizations/v2.0/.well-known/openid-configuration")
        );
    }
}
