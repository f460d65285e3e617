//! Microsoft Entra ID, simulated: what graphfeed's `connect` talks to before it reaches Graph
//! (graph-protocol.md §7, §10 items 14 and 15).
//!
//! - OIDC metadata (v1 and v2) and JWKS for any tenant path (`{tenant GUID}`, `common`,
//!   `organizations`, `consumers`), with signing-key rotation ([`keys`]);
//! - access tokens for graphfeed's own API, minted on demand in the v1 or v2 form, correct or
//!   wrong in exactly one way ([`jwt`]);
//! - the token endpoint: on-behalf-of, refresh (with rotation) and client credentials, handing
//!   out the same opaque Graph tokens as the control API, with Entra's error bodies and
//!   injectable per-user failures ([`grants`], [`errors`]);
//! - the device authorization grant for public client apps (a CLI): `devicecode`, approval by a
//!   simulated user through the control API, polling with `authorization_pending`, `slow_down`,
//!   `expired_token`, `authorization_declined` ([`device`]); its tokens are for Graph or for a
//!   registered API, and its refresh tokens work for either resource.
//!
//! The state lives in [`Entra`], inside the simulator's one lock; the HTTP handlers are in
//! `http` and the [`crate::Sim`] methods wrap the same calls.

pub mod device;
pub mod errors;
pub(crate) mod grants;
pub(crate) mod http;
pub mod jwt;
pub mod keys;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::errors::SimError;
use crate::identity::DEFAULT_APP_ID;
use keys::{KeyRing, SigningKey};

/// The tenant personal Microsoft accounts sign in to (§7.4). Always a personal tenant here.
pub const CONSUMER_TENANT_ID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
/// Microsoft Graph's application id, the resource named in Entra's MFA message.
pub const GRAPH_RESOURCE_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// The resource prefix of Graph scopes.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
/// The default app's client secret (local use only).
pub const DEFAULT_CLIENT_SECRET: &str = "graphfeed-dev-client-secret";
/// The default app's App ID URI: `api://` + [`DEFAULT_APP_ID`].
pub const DEFAULT_APP_ID_URI: &str = "api://5e7a1c2d-3b4f-4a6e-9d8c-67f00dfeed01";
/// The delegated scope graphfeed's API exposes.
pub const DEFAULT_API_SCOPE: &str = "access_as_user";
/// The default app's display name (it appears in some Entra error texts).
pub const DEFAULT_APP_NAME: &str = "graphfeed (local)";
/// The client app (a SPA or CLI) that asks for tokens to graphfeed's API: `azp` / `appid` of
/// minted API tokens when the caller names none. Registered at start (and after every reset) as a
/// public client app ([`ClientApp`]): it uses the device-code flow and redeems its refresh tokens
/// without a secret.
pub const DEFAULT_CLIENT_APP_ID: &str = "5e7a1c2d-3b4f-4a6e-9d8c-67f00dfeed02";
/// The default public client app's display name.
pub const DEFAULT_CLIENT_APP_NAME: &str = "graphfeed CLI (local)";
/// Refresh tokens of web apps expire after this much inactivity (AADSTS700082 says "90.00:00:00").
pub const REFRESH_TOKEN_MAX_INACTIVITY_DAYS: i64 = 90;
/// Every refresh token the simulator issues starts with this.
pub const REFRESH_TOKEN_PREFIX: &str = "simrt.";

/// The tenant segment of an Entra URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantPath {
    /// A tenant GUID (lowercase, hyphenated).
    Id(String),
    Common,
    Organizations,
    Consumers,
}

impl TenantPath {
    /// Reads a path segment; `None` for anything else (domains are not simulated).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "common" => Some(Self::Common),
            "organizations" => Some(Self::Organizations),
            "consumers" => Some(Self::Consumers),
            other => uuid::Uuid::try_parse(other)
                .ok()
                .map(|guid| Self::Id(guid.hyphenated().to_string())),
        }
    }

    /// The segment as written in URLs.
    pub fn segment(&self) -> &str {
        match self {
            Self::Id(id) => id,
            Self::Common => "common",
            Self::Organizations => "organizations",
            Self::Consumers => "consumers",
        }
    }

    /// The `tid` in this path's issuer: the GUID, the consumer tenant, or Entra's literal
    /// `{tenantid}` placeholder for the multi-tenant paths.
    pub fn issuer_tenant(&self) -> &str {
        match self {
            Self::Id(id) => id,
            Self::Consumers => CONSUMER_TENANT_ID,
            Self::Common | Self::Organizations => "{tenantid}",
        }
    }

    /// Whether a user of `tenant_id` may get tokens through this path.
    pub fn admits(&self, tenant_id: &str) -> bool {
        match self {
            Self::Id(id) => id == tenant_id,
            Self::Common => true,
            Self::Organizations => tenant_id != CONSUMER_TENANT_ID,
            Self::Consumers => tenant_id == CONSUMER_TENANT_ID,
        }
    }
}

/// A request to register an API app (graphfeed's middle tier).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterApp {
    /// A GUID.
    pub client_id: String,
    pub client_secret: String,
    /// Defaults to `api://{client_id}`.
    #[serde(default)]
    pub app_id_uri: Option<String>,
    /// The delegated scope the API exposes; default `access_as_user`.
    #[serde(default = "default_api_scope")]
    pub api_scope: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

fn default_api_scope() -> String {
    DEFAULT_API_SCOPE.to_owned()
}

impl Default for RegisterApp {
    /// The default app of `make local`: [`DEFAULT_APP_ID`], [`DEFAULT_CLIENT_SECRET`], and (as
    /// for any app without one) the App ID URI `api://{client id}` = [`DEFAULT_APP_ID_URI`]. So
    /// `RegisterApp { client_id, client_secret, ..Default::default() }` describes another app
    /// with its own URI.
    fn default() -> Self {
        Self {
            client_id: DEFAULT_APP_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            app_id_uri: None,
            api_scope: DEFAULT_API_SCOPE.to_owned(),
            display_name: None,
        }
    }
}

/// A registered API app. Apps are multi-tenant: any tenant's users may get tokens for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredApp {
    pub client_id: String,
    pub client_secret: String,
    pub app_id_uri: String,
    pub api_scope: String,
    pub display_name: String,
}

impl RegisterApp {
    fn into_registered(self) -> Result<RegisteredApp, SimError> {
        let client_id = uuid::Uuid::try_parse(self.client_id.trim())
            .map(|guid| guid.hyphenated().to_string())
            .map_err(|_| {
                SimError::BadRequest(format!("client_id must be a GUID, got '{}'", self.client_id))
            })?;
        if self.client_secret.is_empty() {
            return Err(SimError::BadRequest("client_secret must not be empty".to_owned()));
        }
        if self.api_scope.trim().is_empty() || self.api_scope.contains(char::is_whitespace) {
            return Err(SimError::BadRequest(format!(
                "api_scope must be one scope name, got '{}'",
                self.api_scope
            )));
        }
        Ok(RegisteredApp {
            app_id_uri: self.app_id_uri.unwrap_or_else(|| format!("api://{client_id}")),
            display_name: self.display_name.unwrap_or_else(|| format!("app {client_id}")),
            client_id,
            client_secret: self.client_secret,
            api_scope: self.api_scope,
        })
    }
}

/// A request to register a public client app (a CLI or SPA: no secret; device-code flow).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterClientApp {
    /// A GUID.
    pub client_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A registered public client app: it authenticates with its client id alone (a secret is
/// refused, AADSTS700025), may use the device-code and refresh grants, and gets tokens for Graph
/// or for any registered API app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientApp {
    pub client_id: String,
    pub display_name: String,
}

impl RegisterClientApp {
    fn into_registered(self) -> Result<ClientApp, SimError> {
        let client_id = uuid::Uuid::try_parse(self.client_id.trim())
            .map(|guid| guid.hyphenated().to_string())
            .map_err(|_| {
                SimError::BadRequest(format!("client_id must be a GUID, got '{}'", self.client_id))
            })?;
        Ok(ClientApp {
            display_name: self
                .display_name
                .unwrap_or_else(|| format!("client app {client_id}")),
            client_id,
        })
    }
}

/// A failure the token endpoint gives one user's on-behalf-of and refresh requests (§10 item 14).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "failure", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthFailure {
    /// `invalid_grant`, AADSTS50076, `suberror: basic_action`, a `claims` challenge.
    MfaRequired,
    /// `invalid_grant`, AADSTS65001 DelegationDoesNotExist, `suberror: consent_required`.
    ConsentRequired,
    /// `invalid_grant`, AADSTS700082. Refresh requests only (OBO has no refresh token).
    InactiveRefreshToken,
    /// `interaction_required`, AADSTS50079, with a `claims` challenge (the OBO doc's example).
    InteractionRequired,
    /// `temporarily_unavailable`; HTTP 503 instead of 400 when `http_503`, `Retry-After` when set.
    TemporarilyUnavailable {
        #[serde(default)]
        http_503: bool,
        #[serde(default)]
        retry_after: Option<u64>,
    },
}

/// How often an injected [`AuthFailure`] fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Repeat {
    /// The next `n` matching requests, then it is gone.
    Times(u32),
    /// Every matching request until cleared.
    Sticky,
}

/// An armed failure and how many more times it fires (`None`: until cleared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailureRule {
    pub failure: AuthFailure,
    pub remaining: Option<u32>,
}

/// One refresh token the simulator issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefreshRecord {
    /// Issue order, for revocation (the sim clock may not move between two issues).
    pub serial: u64,
    pub user_id: String,
    pub tenant_id: String,
    pub client_id: String,
    /// The Graph scopes granted, full URIs.
    pub scopes: Vec<String>,
    pub issued_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    /// When a refresh redeemed it for a new one.
    pub replaced_at: Option<DateTime<Utc>>,
}

/// A revocation: every refresh token of the user up to `through_serial` is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Revocation {
    pub through_serial: u64,
    pub at: DateTime<Utc>,
}

/// Everything Entra remembers.
#[derive(Debug, Clone)]
pub(crate) struct Entra {
    pub keys: KeyRing,
    pub apps: BTreeMap<String, RegisteredApp>,
    /// Public client apps by client id.
    pub client_apps: BTreeMap<String, ClientApp>,
    /// Device codes issued and not yet forgotten.
    pub device_codes: device::DeviceCodes,
    pub refresh_tokens: HashMap<String, RefreshRecord>,
    pub failures: HashMap<String, FailureRule>,
    pub revocations: HashMap<String, Revocation>,
    pub next_serial: u64,
}

impl Entra {
    /// The development key as the only key, the default app and the default public client app
    /// registered.
    pub fn new(first_key: SigningKey) -> Self {
        let mut apps = BTreeMap::new();
        let default_app = RegisterApp {
            display_name: Some(DEFAULT_APP_NAME.to_owned()),
            ..RegisterApp::default()
        };
        if let Ok(app) = default_app.into_registered() {
            apps.insert(app.client_id.clone(), app);
        }
        let mut client_apps = BTreeMap::new();
        client_apps.insert(
            DEFAULT_CLIENT_APP_ID.to_owned(),
            ClientApp {
                client_id: DEFAULT_CLIENT_APP_ID.to_owned(),
                display_name: DEFAULT_CLIENT_APP_NAME.to_owned(),
            },
        );
        Self {
            keys: KeyRing::new(first_key),
            apps,
            client_apps,
            device_codes: device::DeviceCodes::default(),
            refresh_tokens: HashMap::new(),
            failures: HashMap::new(),
            revocations: HashMap::new(),
            next_serial: 1,
        }
    }

    /// Registers (or replaces) an app. Two apps cannot share an App ID URI.
    pub fn register_app(&mut self, request: RegisterApp) -> Result<RegisteredApp, SimError> {
        let app = request.into_registered()?;
        if self.client_apps.contains_key(&app.client_id) {
            return Err(SimError::Conflict(format!(
                "{} is registered as a public client app",
                app.client_id
            )));
        }
        if let Some(other) = self.apps.values().find(|other| {
            other.client_id != app.client_id && other.app_id_uri.eq_ignore_ascii_case(&app.app_id_uri)
        }) {
            return Err(SimError::Conflict(format!(
                "app {} already uses the App ID URI {}",
                other.client_id, app.app_id_uri
            )));
        }
        self.apps.insert(app.client_id.clone(), app.clone());
        Ok(app)
    }

    /// Registers (or replaces) a public client app. A client id cannot be both an API app and a
    /// public client app.
    pub fn register_client_app(&mut self, request: RegisterClientApp) -> Result<ClientApp, SimError> {
        let app = request.into_registered()?;
        if self.apps.contains_key(&app.client_id) {
            return Err(SimError::Conflict(format!(
                "{} is registered as an API app (a confidential client)",
                app.client_id
            )));
        }
        self.client_apps.insert(app.client_id.clone(), app.clone());
        Ok(app)
    }

    /// The public client app with this client id.
    pub fn client_app(&self, client_id: &str) -> Option<&ClientApp> {
        self.client_apps.get(&client_id.trim().to_ascii_lowercase())
    }

    /// The app whose client id or App ID URI is `id`.
    pub fn app(&self, id: &str) -> Option<&RegisteredApp> {
        let lower = id.trim().to_ascii_lowercase();
        self.apps.get(&lower).or_else(|| {
            self.apps
                .values()
                .find(|app| app.app_id_uri.eq_ignore_ascii_case(id.trim()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_paths_read_guids_and_the_three_keywords() {
        assert_eq!(TenantPath::parse("Common"), Some(TenantPath::Common));
        assert_eq!(
            TenantPath::parse("9188040D-6C67-4C5B-B112-36A304B66DAD"),
            Some(TenantPath::Id(CONSUMER_TENANT_ID.to_owned()))
        );
        assert_eq!(TenantPath::parse("contoso.onmicrosoft.com"), None);
        assert_eq!(TenantPath::Organizations.issuer_tenant(), "{tenantid}");
        assert_eq!(TenantPath::Consumers.issuer_tenant(), CONSUMER_TENANT_ID);
        assert!(!TenantPath::Organizations.admits(CONSUMER_TENANT_ID));
        assert!(TenantPath::Consumers.admits(CONSUMER_TENANT_ID));
    }

    #[test]
    fn the_default_app_uri_is_api_plus_the_default_client_id() {
        assert_eq!(DEFAULT_APP_ID_URI, format!("api://{DEFAULT_APP_ID}"));
        let entra = Entra::new(SigningKey::development(Utc::now()).expect("dev key"));
        let app = entra.app(DEFAULT_APP_ID_URI).expect("found by URI");
        assert_eq!(app.client_id, DEFAULT_APP_ID);
        assert_eq!(app.client_secret, DEFAULT_CLIENT_SECRET);
        assert_eq!(app.display_name, DEFAULT_APP_NAME);
    }

    #[test]
    fn another_app_gets_its_own_uri_and_cannot_take_one_in_use() {
        let mut entra = Entra::new(SigningKey::development(Utc::now()).expect("dev key"));
        let other = entra
            .register_app(RegisterApp {
                client_id: "11111111-2222-3333-4444-555555555555".to_owned(),
                client_secret: "s".to_owned(),
                ..RegisterApp::default()
            })
            .expect("registered");
        assert_eq!(other.app_id_uri, "api://11111111-2222-3333-4444-555555555555");
        let clash = entra.register_app(RegisterApp {
            client_id: "66666666-2222-3333-4444-555555555555".to_owned(),
            client_secret: "s".to_owned(),
            app_id_uri: Some(DEFAULT_APP_ID_URI.to_owned()),
            ..RegisterApp::default()
        });
        assert!(matches!(clash, Err(SimError::Conflict(_))));
        assert!(matches!(
            entra.register_app(RegisterApp {
                client_id: "not-a-guid".to_owned(),
                ..RegisterApp::default()
            }),
            Err(SimError::BadRequest(_))
        ));
    }

    #[test]
    fn the_default_client_app_is_public_and_a_client_id_has_one_kind() {
        let mut entra = Entra::new(SigningKey::development(Utc::now()).expect("dev key"));
        let cli = entra
            .client_app(&DEFAULT_CLIENT_APP_ID.to_ascii_uppercase())
            .expect("registered");
        assert_eq!(cli.display_name, DEFAULT_CLIENT_APP_NAME);
        assert!(entra.app(DEFAULT_CLIENT_APP_ID).is_none(), "not an API app");
        let as_public = entra.register_client_app(RegisterClientApp {
            client_id: DEFAULT_APP_ID.to_owned(),
            display_name: None,
        });
        assert!(matches!(as_public, Err(SimError::Conflict(_))));
        let as_api = entra.register_app(RegisterApp {
            client_id: DEFAULT_CLIENT_APP_ID.to_owned(),
            client_secret: "s".to_owned(),
            app_id_uri: Some("api://cli".to_owned()),
            ..RegisterApp::default()
        });
        assert!(matches!(as_api, Err(SimError::Conflict(_))));
        let other = entra
            .register_client_app(RegisterClientApp {
                client_id: "77777777-2222-3333-4444-555555555555".to_owned(),
                display_name: None,
            })
            .expect("registered");
        assert_eq!(
            other.display_name,
            "client app 77777777-2222-3333-4444-555555555555"
        );
    }
}
