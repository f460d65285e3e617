//! [`Sim`], the cheap-to-clone handle on a running simulator. Tests call it directly; the control
//! endpoints (`/_sim/...`, [`crate::control`]) are thin wrappers around the same methods, so both
//! ways of driving the simulator behave identically.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use shared::clock::Clock as _;
use tokio::sync::Notify;

use crate::delivery::{
    self, AttemptResult, Batch, DeliveryAttempt, EndpointReport, NotificationKind, Outgoing,
};
use crate::delta::DeltaQuirks;
use crate::drive::{Drive, Item, ItemUpdate, JournalEntry, NewItem, Populate, Populated};
use crate::entra::device::{DeviceCodeInfo, DeviceCodeStatus};
use crate::entra::jwt::{self, ApiToken, MintedToken, Subject};
use crate::entra::keys::{KeyError, SigningKey, SigningKeyInfo};
use crate::entra::{
    self, AuthFailure, CONSUMER_TENANT_ID, ClientApp, Entra, RegisterApp, RegisterClientApp, RegisteredApp,
    Repeat, Revocation, TenantPath,
};
use crate::errors::{GraphError, SimError};
use crate::faults::Fault;
use crate::identity::{DEFAULT_APP_ID, Grant, IssuedToken, Tenant, User};
use crate::state::{Counters, Settings, State};
use crate::subscriptions::{
    Admission, LifecycleEvent, Subscription, effective_expiration, parse_create_value, resolve_resource,
};
use crate::throttle::{Throttle, ThrottleStatus};
use crate::uploads::UploadSessionInfo;
use crate::{Latency, SimConfig};

/// A request to create a user (with its drive and root folder).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// An existing or new tenant; a new random one when absent.
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    /// The app the returned token is for; [`DEFAULT_APP_ID`] when absent.
    #[serde(default)]
    pub app_id: Option<String>,
    /// A business tenant (OneDrive for Business drive ids, root-only subscriptions). Only
    /// meaningful for a new tenant; for an existing one it must match or be absent. The consumer
    /// tenant ([`CONSUMER_TENANT_ID`]) is always personal.
    #[serde(default)]
    pub business: Option<bool>,
    /// `upn` / `preferred_username` in API tokens; `user-{8 hex}@{tenant 8 hex}.onmicrosoft.com`
    /// (personal accounts: `@outlook.com`) when absent.
    #[serde(default)]
    pub user_principal_name: Option<String>,
    /// A fixed object id (a GUID), e.g. for sample events whose token names this user; a new
    /// random one when absent. Refused if the user exists already.
    #[serde(default)]
    pub user_id: Option<String>,
}

/// One subscription for [`Sim::seed_subscriptions`]: what a create by `user_id` would carry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSubscription {
    /// The creator (`creatorId`), an existing user; the subscription is in the user's tenant.
    pub user_id: String,
    /// The user's tenant, checked when given.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// `applicationId`, the app whose tokens see the subscription; the app the user was created
    /// with ([`DEFAULT_APP_ID`] by default) when absent.
    #[serde(default)]
    pub app_id: Option<String>,
    /// As a create would send it, resolved for the user: `me/drive/root` (the default),
    /// `drives/{id}/root`, `users/{id}/drive/root`, or a personal folder's `…/items/{id}`.
    #[serde(default = "default_seed_resource")]
    pub resource: String,
    pub notification_url: String,
    #[serde(default)]
    pub lifecycle_notification_url: Option<String>,
    #[serde(default)]
    pub client_state: Option<String>,
    /// Raised to 45 minutes from now, refused beyond 42,300 minutes, as a create's (§1.3).
    pub expiration_date_time: DateTime<Utc>,
}

fn default_seed_resource() -> String {
    "me/drive/root".to_owned()
}

impl SeedSubscription {
    /// A root subscription (`me/drive/root`) by `user_id`, without a lifecycle URL or clientState.
    pub fn new(
        user_id: impl Into<String>,
        notification_url: impl Into<String>,
        expiration_date_time: DateTime<Utc>,
    ) -> Self {
        Self {
            user_id: user_id.into(),
            tenant_id: None,
            app_id: None,
            resource: default_seed_resource(),
            notification_url: notification_url.into(),
            lifecycle_notification_url: None,
            client_state: None,
            expiration_date_time,
        }
    }

    /// The Graph creation payload carrying the same values, checked by the create's own rules.
    fn create_payload(&self) -> serde_json::Value {
        serde_json::json!({
            "changeType": "updated",
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_notification_url,
            "resource": self.resource,
            "expirationDateTime": self
                .expiration_date_time
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "clientState": self.client_state,
        })
    }
}

/// A Graph refusal of seed number `index`, as a control error: `subscription {index}: {code}:
/// {message}` (409 for a duplicate or the quota, 404 for an unknown item, 400 otherwise).
fn seed_refused(index: usize, error: &GraphError) -> SimError {
    let message = format!("subscription {index}: {}: {}", error.code, error.message);
    match error.status.as_u16() {
        404 => SimError::NotFound(message),
        403 | 409 => SimError::Conflict(message),
        _ => SimError::BadRequest(message),
    }
}

/// The scope of [`Sim::issue_refresh_token`] when none is given: graphfeed's default.
const DEFAULT_REFRESH_SCOPE: &str = "offline_access Files.Read.All";

/// A request to create a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// A GUID; a new random one when absent.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Business (OneDrive for Business drives) or personal (OneDrive personal drives).
    #[serde(default)]
    pub business: bool,
}

/// What creating a user returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedUser {
    pub tenant_id: String,
    pub user_id: String,
    pub drive_id: String,
    pub root_id: String,
    pub app_id: String,
    pub business: bool,
    pub user_principal_name: String,
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
}

/// The cheap-to-clone handle on a simulator.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: SimConfig,
    /// `http://host:port` as clients reach it: Entra issuers and delta links are built on it.
    public_url: String,
    graph_base_url: String,
    /// The fixed development key, the first key of every (re)started key ring.
    dev_key: SigningKey,
    /// A key that is never published, for tokens signed by an unknown key. Made on first use.
    rogue_key: OnceLock<SigningKey>,
    state: Mutex<State>,
    wake: Notify,
    http: reqwest::Client,
}

/// Why a simulator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NewSimError {
    #[error("cannot build the HTTP client for webhooks: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("cannot load the development signing key: {0}")]
    SigningKey(#[from] KeyError),
}

fn consumer_tenant_is_personal() -> SimError {
    SimError::Conflict(format!(
        "tenant {CONSUMER_TENANT_ID} is the consumer tenant of personal Microsoft accounts; it cannot be a \
         business tenant"
    ))
}

fn parse_guid(raw: &str, what: &str) -> Result<String, SimError> {
    uuid::Uuid::try_parse(raw.trim())
        .map(|guid| guid.hyphenated().to_string())
        .map_err(|_| SimError::BadRequest(format!("{what} must be a GUID, got '{raw}'")))
}

impl Sim {
    /// A simulator with empty state (the development signing key, the default app) reachable at
    /// `public_url` (`http://host:port`). Fails only if the HTTP client cannot be built or the
    /// development key cannot be read.
    pub(crate) fn new(config: SimConfig, public_url: &str) -> Result<Self, NewSimError> {
        let http = reqwest::Client::builder()
            // Graph does not follow redirects on a webhook, and local runs must never be sent
            // through a proxy from the environment.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent("graph-sim (Microsoft Graph simulator)")
            .build()?;
        let dev_key = SigningKey::development(config.clock.now())?;
        let public_url = public_url.trim_end_matches('/').to_owned();
        Ok(Self {
            inner: Arc::new(Inner {
                graph_base_url: format!("{public_url}{}", crate::graph::GRAPH_PREFIX),
                public_url,
                state: Mutex::new(State::new(
                    Entra::new(dev_key.clone()),
                    Settings::from_config(&config),
                )),
                dev_key,
                rogue_key: OnceLock::new(),
                config,
                wake: Notify::new(),
                http,
            }),
        })
    }

    /// `http://host:port`, the Entra authority host (`ENTRA_AUTHORITY_HOST`).
    pub fn authority_host(&self) -> &str {
        &self.inner.public_url
    }

    /// `http://host:port/v1.0` (`GRAPH_BASE_URL`).
    pub fn graph_base_url(&self) -> &str {
        &self.inner.graph_base_url
    }

    /// The v2 issuer of a tenant's tokens: `{authority}/{tid}/v2.0`.
    pub fn issuer_v2(&self, tenant_id: &str) -> String {
        format!("{}/{tenant_id}/v2.0", self.inner.public_url)
    }

    /// The v1 issuer of a tenant's tokens: `https://sts.windows.net/{tid}/` (Entra's, verbatim).
    pub fn issuer_v1(&self, tenant_id: &str) -> String {
        jwt::issuer_v1(tenant_id)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as it was at the panic; carry on with it
        // rather than poisoning every later call.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// Wakes the delivery task: new work, or the clock moved.
    pub(crate) fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.inner.wake.notified().await;
    }

    /// The configuration the simulator runs with.
    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    /// The simulated now.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.config.clock.now()
    }

    /// Moves the simulated clock forward (every clone of the configured clock moves too) and lets
    /// the delivery task attempt whatever became due. Returns the new now.
    pub fn advance(&self, by: Duration) -> DateTime<Utc> {
        self.inner.config.clock.advance(by);
        self.wake();
        self.now()
    }

    /// Creates a user, its drive and root folder, and a first access token.
    pub fn create_user(&self, request: NewUser) -> Result<CreatedUser, SimError> {
        let tenant_id = match &request.tenant_id {
            Some(raw) => parse_guid(raw, "tenant_id")?,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let app_id = match &request.app_id {
            Some(raw) => parse_guid(raw, "app_id")?,
            None => DEFAULT_APP_ID.to_owned(),
        };
        let now = self.now();
        let mut state = self.lock();
        if tenant_id == CONSUMER_TENANT_ID && request.business == Some(true) {
            return Err(consumer_tenant_is_personal());
        }
        let business = match state.identity.tenants.get(&tenant_id) {
            Some(tenant) if request.business.is_some_and(|wanted| wanted != tenant.business) => {
                return Err(SimError::Conflict(format!(
                    "tenant {tenant_id} exists and is {}",
                    if tenant.business {
                        "a business tenant"
                    } else {
                        "a personal tenant"
                    }
                )));
            }
            Some(tenant) => tenant.business,
            None => request.business.unwrap_or(false),
        };
        state
            .identity
            .tenants
            .entry(tenant_id.clone())
            .or_insert_with(|| Tenant {
                id: tenant_id.clone(),
                business,
            });
        let user_id = match &request.user_id {
            Some(raw) => {
                let id = parse_guid(raw, "user_id")?;
                if state.identity.users.contains_key(&id) {
                    return Err(SimError::Conflict(format!("user {id} exists already")));
                }
                id
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let user_principal_name = request.user_principal_name.clone().unwrap_or_else(|| {
            if tenant_id == CONSUMER_TENANT_ID {
                format!("user-{}@outlook.com", &user_id[..8])
            } else {
                format!("user-{}@{}.onmicrosoft.com", &user_id[..8], &tenant_id[..8])
            }
        });
        let drive = Drive::new(&user_id, &tenant_id, business, now);
        let (drive_id, root_id) = (drive.id.clone(), drive.root_id.clone());
        state.drives.insert(drive_id.clone(), drive);
        state.identity.users.insert(
            user_id.clone(),
            User {
                id: user_id.clone(),
                tenant_id: tenant_id.clone(),
                display_name: request
                    .display_name
                    .clone()
                    .unwrap_or_else(|| "Simulated User".to_owned()),
                user_principal_name: user_principal_name.clone(),
                drive_id: drive_id.clone(),
                app_id: app_id.clone(),
            },
        );
        let token = state.identity.issue_token(
            &tenant_id,
            &user_id,
            &app_id,
            now,
            self.config().timing.token_lifetime,
        );
        Ok(CreatedUser {
            tenant_id,
            user_id,
            drive_id,
            root_id,
            app_id,
            business,
            user_principal_name,
            access_token: token.access_token,
            access_token_expires_at: token.expires_at,
        })
    }

    /// A fresh access token for a user, for `app_id` or the app the user was created with.
    pub fn issue_token(&self, user_id: &str, app_id: Option<&str>) -> Result<IssuedToken, SimError> {
        let app_id = app_id.map(|raw| parse_guid(raw, "app_id")).transpose()?;
        let now = self.now();
        let lifetime = self.config().timing.token_lifetime;
        let mut state = self.lock();
        let user = state
            .identity
            .users
            .get(user_id)
            .cloned()
            .ok_or_else(|| SimError::NotFound(format!("user {user_id} not found")))?;
        let app_id = app_id.unwrap_or(user.app_id);
        Ok(state
            .identity
            .issue_token(&user.tenant_id, &user.id, &app_id, now, lifetime))
    }

    /// Creates a tenant (business or personal) with no users yet. An existing tenant of the same
    /// kind is returned as it is; one of the other kind is a conflict.
    pub fn create_tenant(&self, request: NewTenant) -> Result<Tenant, SimError> {
        let tenant_id = match &request.tenant_id {
            Some(raw) => parse_guid(raw, "tenant_id")?,
            None => uuid::Uuid::new_v4().to_string(),
        };
        if tenant_id == CONSUMER_TENANT_ID && request.business {
            return Err(consumer_tenant_is_personal());
        }
        let mut state = self.lock();
        let tenant = state
            .identity
            .tenants
            .entry(tenant_id.clone())
            .or_insert_with(|| Tenant {
                id: tenant_id.clone(),
                business: request.business,
            });
        if tenant.business != request.business {
            return Err(SimError::Conflict(format!(
                "tenant {tenant_id} exists and is {}",
                if tenant.business {
                    "a business tenant"
                } else {
                    "a personal tenant"
                }
            )));
        }
        Ok(tenant.clone())
    }

    /// Registers an API app (graphfeed's middle tier), or replaces the one with the same client
    /// id. The default app ([`RegisterApp::default`]) is always registered at start and reset.
    pub fn register_app(&self, request: RegisterApp) -> Result<RegisteredApp, SimError> {
        self.lock().entra.register_app(request)
    }

    /// Every registered app.
    pub fn apps(&self) -> Vec<RegisteredApp> {
        self.lock().entra.apps.values().cloned().collect()
    }

    /// Registers (or replaces) a public client app (no secret; device-code and refresh grants).
    /// [`crate::DEFAULT_CLIENT_APP_ID`] is always registered at start and reset.
    pub fn register_client_app(&self, request: RegisterClientApp) -> Result<ClientApp, SimError> {
        self.lock().entra.register_client_app(request)
    }

    /// Every registered public client app.
    pub fn client_apps(&self) -> Vec<ClientApp> {
        self.lock().entra.client_apps.values().cloned().collect()
    }

    /// Approves a pending device code as `user_id`, as the user would by signing in at the
    /// verification page and entering `user_code` (case, spaces and dashes ignored): the client's
    /// next poll gets the tokens. Unknown code or user → not found; a code that expired, was
    /// already approved, declined or redeemed, or whose tenant path (`organizations`,
    /// `consumers`, a GUID) does not admit the user's tenant → conflict.
    pub fn approve_device_code(&self, user_code: &str, user_id: &str) -> Result<DeviceCodeInfo, SimError> {
        self.decide_device_code(user_code, Some(user_id))
    }

    /// Declines a pending device code, as the user would at the verification page: the client's
    /// next poll gets `authorization_declined`.
    pub fn deny_device_code(&self, user_code: &str) -> Result<DeviceCodeInfo, SimError> {
        self.decide_device_code(user_code, None)
    }

    /// Approves the oldest device code still pending as `user_id`, for a local demo that does
    /// not know the code in advance. None pending → not found.
    pub fn approve_next_device_code(&self, user_id: &str) -> Result<DeviceCodeInfo, SimError> {
        let now = self.now();
        let user_code = self
            .lock()
            .entra
            .device_codes
            .oldest_pending(now)
            .ok_or_else(|| SimError::NotFound("no device code is pending".to_owned()))?;
        self.approve_device_code(&user_code, user_id)
    }

    /// The device codes issued and not yet forgotten (a day after their expiry), oldest first.
    pub fn device_codes(&self) -> Vec<DeviceCodeInfo> {
        let now = self.now();
        self.lock().entra.device_codes.infos(now)
    }

    fn decide_device_code(
        &self,
        user_code: &str,
        approver: Option<&str>,
    ) -> Result<DeviceCodeInfo, SimError> {
        let now = self.now();
        let mut state = self.lock();
        let user = match approver {
            Some(user_id) => Some(
                state
                    .identity
                    .users
                    .get(user_id)
                    .cloned()
                    .ok_or_else(|| SimError::NotFound(format!("user {user_id} not found")))?,
            ),
            None => None,
        };
        let code = state
            .entra
            .device_codes
            .by_user_code_mut(user_code)
            .ok_or_else(|| SimError::NotFound(format!("no device code with user code '{user_code}'")))?;
        if code.expired(now) {
            return Err(SimError::Conflict(format!(
                "user code {} expired at {}",
                code.user_code, code.expires_at
            )));
        }
        if code.status != DeviceCodeStatus::Pending {
            return Err(SimError::Conflict(format!(
                "user code {} is not pending any more ({})",
                code.user_code,
                code.status.as_str()
            )));
        }
        match user {
            Some(user) => {
                let admitted =
                    TenantPath::parse(&code.tenant).is_some_and(|path| path.admits(&user.tenant_id));
                if !admitted {
                    return Err(SimError::Conflict(format!(
                        "user {} of tenant {} cannot sign in through the tenant path '{}' of this code \
                         (Entra: AADSTS50020)",
                        user.id, user.tenant_id, code.tenant
                    )));
                }
                code.status = DeviceCodeStatus::Approved;
                code.user_id = Some(user.id);
            }
            None => code.status = DeviceCodeStatus::Declined,
        }
        Ok(code.info(now))
    }

    /// Mints a user's access token for graphfeed's API, signed with the current key (or wrong
    /// in the one way `spec` asks). Times come from the sim clock.
    pub fn mint_api_token(&self, spec: &ApiToken) -> Result<MintedToken, SimError> {
        let now = self.now();
        let (claims, expires_at, current) = {
            let mut state = self.lock();
            let user = state
                .identity
                .users
                .get(&spec.user_id)
                .cloned()
                .ok_or_else(|| SimError::NotFound(format!("user {} not found", spec.user_id)))?;
            let app_id = spec.app_id.as_deref().unwrap_or(crate::DEFAULT_APP_ID);
            let app = state
                .entra
                .app(app_id)
                .cloned()
                .ok_or_else(|| SimError::NotFound(format!("app {app_id} is not registered")))?;
            let subject = Subject {
                tenant_id: &user.tenant_id,
                user_id: &user.id,
                display_name: &user.display_name,
                user_principal_name: &user.user_principal_name,
                api_client_id: &app.client_id,
                app_id_uri: &app.app_id_uri,
                issuer_v2: self.issuer_v2(&user.tenant_id),
            };
            let (claims, expires_at) = jwt::claims(spec, &subject, now);
            state.counters.api_tokens_minted += 1;
            (claims, expires_at, state.entra.keys.current().clone())
        };
        let rogue = self.rogue_key()?;
        let (token, header) = jwt::sign(spec, claims.clone(), &current, &rogue)
            .map_err(|error| SimError::BadRequest(format!("cannot sign: {error}")))?;
        Ok(MintedToken {
            token,
            header,
            claims: serde_json::Value::Object(claims),
            expires_at,
        })
    }

    fn rogue_key(&self) -> Result<SigningKey, SimError> {
        if let Some(key) = self.inner.rogue_key.get() {
            return Ok(key.clone());
        }
        let key = SigningKey::generate(self.now())
            .map_err(|error| SimError::BadRequest(format!("cannot make a key: {error}")))?;
        Ok(self.inner.rogue_key.get_or_init(|| key).clone())
    }

    /// Publishes a new RSA-2048 key and signs with it from now on; the previous keys stay in the
    /// JWKS until [`Sim::retire_old_signing_keys`]. Returns the new key.
    pub fn rotate_signing_key(&self) -> Result<SigningKeyInfo, SimError> {
        let key = SigningKey::generate(self.now())
            .map_err(|error| SimError::BadRequest(format!("cannot make a key: {error}")))?;
        Ok(self.lock().entra.keys.rotate(key))
    }

    /// Unpublishes every key but the signing one; returns the keys removed.
    pub fn retire_old_signing_keys(&self) -> Vec<SigningKeyInfo> {
        self.lock().entra.keys.retire_old()
    }

    /// The published keys, oldest first (`current` marks the signing one).
    pub fn signing_keys(&self) -> Vec<SigningKeyInfo> {
        self.lock().entra.keys.infos()
    }

    /// Makes the token endpoint fail this user's on-behalf-of and refresh requests with
    /// `failure`, `repeat` times or until cleared (replacing any failure armed before).
    pub fn set_auth_failure(
        &self,
        user_id: &str,
        failure: AuthFailure,
        repeat: Repeat,
    ) -> Result<(), SimError> {
        let mut state = self.lock();
        if !state.identity.users.contains_key(user_id) {
            return Err(SimError::NotFound(format!("user {user_id} not found")));
        }
        let remaining = match repeat {
            Repeat::Times(times) => Some(times),
            Repeat::Sticky => None,
        };
        entra::grants::arm_failure(&mut state, user_id, failure, remaining);
        Ok(())
    }

    /// Disarms the user's injected failure, if any.
    pub fn clear_auth_failure(&self, user_id: &str) {
        self.lock().entra.failures.remove(user_id);
    }

    /// A refresh token for the user, as an on-behalf-of request for `app_id` (the user's app when
    /// absent; it must be registered) with `scope` (graphfeed's `offline_access Files.Read.All`
    /// when absent) would have returned, for the refresh grant (§7.2). It skips the API token and
    /// its RSA signature, so a benchmark can give 10,000 users a refresh token in milliseconds.
    pub fn issue_refresh_token(
        &self,
        user_id: &str,
        app_id: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, SimError> {
        let now = self.now();
        let mut state = self.lock();
        let app_id = match app_id {
            Some(raw) => parse_guid(raw, "app_id")?,
            None => state
                .identity
                .users
                .get(user_id)
                .map(|user| user.app_id.clone())
                .ok_or_else(|| SimError::NotFound(format!("user {user_id} not found")))?,
        };
        entra::grants::direct_refresh_token(
            &mut state,
            now,
            user_id,
            &app_id,
            scope.unwrap_or(DEFAULT_REFRESH_SCOPE),
        )
    }

    /// Revokes every refresh token issued to the user so far (like "revoke sessions" or a
    /// password reset): they fail with `invalid_grant` AADSTS50173. Later grants work.
    pub fn revoke_refresh_tokens(&self, user_id: &str) -> Result<(), SimError> {
        let now = self.now();
        let mut state = self.lock();
        if !state.identity.users.contains_key(user_id) {
            return Err(SimError::NotFound(format!("user {user_id} not found")));
        }
        let through_serial = state.entra.next_serial.saturating_sub(1);
        state.entra.revocations.insert(
            user_id.to_owned(),
            Revocation {
                through_serial,
                at: now,
            },
        );
        Ok(())
    }

    /// Applies a change to a drive and queues the notifications it causes.
    fn change(
        &self,
        drive_id: &str,
        apply: impl FnOnce(&mut Drive, DateTime<Utc>) -> Result<crate::drive::Change, SimError>,
    ) -> Result<Item, SimError> {
        let now = self.now();
        let timing = &self.config().timing;
        let queued = {
            let mut state = self.lock();
            let drive = state
                .drives
                .get_mut(drive_id)
                .ok_or_else(|| SimError::NotFound(format!("drive {drive_id} not found")))?;
            let change = apply(drive, now)?;
            let queued = state.notify_change(drive_id, &change, now, timing);
            (change.item, queued)
        };
        if queued.1 > 0 {
            self.wake();
        }
        Ok(queued.0)
    }

    /// Creates a file or folder (under the root when `parent_id` is absent).
    pub fn create_item(&self, drive_id: &str, item: &NewItem) -> Result<Item, SimError> {
        self.change(drive_id, |drive, now| drive.create_item(item, now))
    }

    /// Changes a file's content: new eTag and cTag (and size, when given).
    pub fn modify_item(&self, drive_id: &str, item_id: &str, size: Option<u64>) -> Result<Item, SimError> {
        self.change(drive_id, |drive, now| drive.modify_item(item_id, size, now))
    }

    /// Renames and/or moves an item: a new eTag only.
    pub fn update_item(&self, drive_id: &str, item_id: &str, update: &ItemUpdate) -> Result<Item, SimError> {
        self.change(drive_id, |drive, now| drive.update_item(item_id, update, now))
    }

    /// Deletes an item (and a folder's subtree). Returns the item as deleted.
    pub fn delete_item(&self, drive_id: &str, item_id: &str) -> Result<Item, SimError> {
        self.change(drive_id, |drive, now| drive.delete_item(item_id, now))
    }

    /// An item, deleted or not.
    pub fn item(&self, drive_id: &str, item_id: &str) -> Result<Item, SimError> {
        let state = self.lock();
        let drive = state
            .drives
            .get(drive_id)
            .ok_or_else(|| SimError::NotFound(format!("drive {drive_id} not found")))?;
        drive
            .item(item_id)
            .cloned()
            .ok_or_else(|| SimError::NotFound(format!("item {item_id} not found")))
    }

    /// The live item at `path` below the drive's root (`Documents/a.txt`; names compared
    /// case-insensitively), e.g. to check what an upload created.
    pub fn item_by_path(&self, drive_id: &str, path: &str) -> Result<Item, SimError> {
        let state = self.lock();
        let drive = state
            .drives
            .get(drive_id)
            .ok_or_else(|| SimError::NotFound(format!("drive {drive_id} not found")))?;
        drive.item_by_path(path).cloned()
    }

    /// The upload sessions not yet committed, cancelled or expired, oldest first.
    pub fn upload_sessions(&self) -> Vec<UploadSessionInfo> {
        let now = self.now();
        let mut sessions: Vec<UploadSessionInfo> = self
            .lock()
            .uploads
            .values()
            .filter(|session| !session.expired(now))
            .map(|session| session.info(crate::graph::uploads::upload_url(self, &session.id)))
            .collect();
        sessions.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        sessions
    }

    /// Ends an upload session as its expiry would (`id` is the session id or its whole upload
    /// URL): its URL answers 404 `itemNotFound` from now on, so a client must start the upload
    /// again (§9.3).
    pub fn expire_upload_session(&self, id_or_url: &str) -> Result<(), SimError> {
        let id = id_or_url.trim().rsplit('/').next().unwrap_or_default().to_owned();
        self.lock()
            .uploads
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| SimError::NotFound(format!("upload session {id} not found")))
    }

    /// Expires every delta token and link issued so far for a drive: each answers 410
    /// `resyncRequired` from now on (graph-protocol.md §5.4). Returns the drive's new token epoch.
    pub fn expire_delta_tokens(&self, drive_id: &str) -> Result<u64, SimError> {
        let mut state = self.lock();
        let drive = state
            .drives
            .get_mut(drive_id)
            .ok_or_else(|| SimError::NotFound(format!("drive {drive_id} not found")))?;
        drive.expire_delta_tokens();
        Ok(drive.delta_epoch())
    }

    /// A drive's change journal, oldest first.
    pub fn journal(&self, drive_id: &str) -> Result<Vec<JournalEntry>, SimError> {
        let state = self.lock();
        let drive = state
            .drives
            .get(drive_id)
            .ok_or_else(|| SimError::NotFound(format!("drive {drive_id} not found")))?;
        Ok(drive.journal().to_vec())
    }

    /// A live subscription.
    pub fn subscription(&self, id: &str) -> Option<Subscription> {
        let now = self.now();
        let mut state = self.lock();
        state.purge_expired(now);
        state.subscriptions.get(id).cloned()
    }

    /// Every live subscription, oldest first.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        let now = self.now();
        let mut state = self.lock();
        state.purge_expired(now);
        let mut all: Vec<Subscription> = state.subscriptions.values().cloned().collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    /// Creates subscriptions directly, as if each user had created them, but without the
    /// validation handshake (§2), for benchmarks that need thousands in place at once. Every
    /// other rule of a create applies, in a create's order: the payload rules (HTTPS or allowed
    /// loopback URLs, clientState length), the resource resolved for the user (another user's
    /// drive 403, files refused, business drives root-only), the expiration (raised to 45 minutes,
    /// refused beyond 42,300), duplicates (409) and the per-drive quota (403), also among the seeds
    /// themselves. The result is indistinguishable from created subscriptions: the user's tokens
    /// for the app GET, PATCH and DELETE them, they get notifications and lifecycle reminders.
    ///
    /// All or nothing: when one seed is refused none is created, and the error names it
    /// (`subscription {index}: {Graph code}: {Graph message}`). Cost is O(live + seeds), so seed
    /// in batches rather than one call per subscription. Returns the subscriptions in input order.
    pub fn seed_subscriptions(&self, seeds: &[SeedSubscription]) -> Result<Vec<Subscription>, SimError> {
        let allow_http_loopback = self.config().allow_http_loopback;
        let requests = seeds
            .iter()
            .enumerate()
            .map(|(index, seed)| {
                parse_create_value(&seed.create_payload(), allow_http_loopback)
                    .map_err(|error| seed_refused(index, &error))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let now = self.now();
        let created = {
            let mut guard = self.lock();
            let state = &mut *guard;
            state.purge_expired(now);
            let mut admission = Admission::new(
                state.subscriptions.values(),
                state.settings.max_subscriptions_per_drive,
            );
            let mut created = Vec::with_capacity(seeds.len());
            for (index, (seed, request)) in seeds.iter().zip(&requests).enumerate() {
                let user = state.identity.users.get(&seed.user_id).ok_or_else(|| {
                    SimError::NotFound(format!("subscription {index}: user {} not found", seed.user_id))
                })?;
                let guid = |raw: &str, what: &str| {
                    parse_guid(raw, what)
                        .map_err(|error| SimError::BadRequest(format!("subscription {index}: {error}")))
                };
                if let Some(raw) = &seed.tenant_id
                    && guid(raw, "tenant_id")? != user.tenant_id
                {
                    return Err(SimError::Conflict(format!(
                        "subscription {index}: user {} is in tenant {}, not {raw}",
                        user.id, user.tenant_id
                    )));
                }
                let caller = Grant {
                    tenant_id: user.tenant_id.clone(),
                    user_id: user.id.clone(),
                    app_id: match &seed.app_id {
                        Some(raw) => guid(raw, "app_id")?,
                        None => user.app_id.clone(),
                    },
                    expires_at: now,
                    app_only: false,
                    scopes: None,
                };
                let refused = |error: GraphError| seed_refused(index, &error);
                let target = resolve_resource(&request.resource, &caller, &state.identity, &state.drives)
                    .map_err(refused)?;
                let expiration = effective_expiration(request.expiration, now).map_err(refused)?;
                let subscription = Subscription::new(request, &caller, target, expiration, now);
                admission.admit(&subscription).map_err(refused)?;
                created.push(subscription);
            }
            for subscription in &created {
                state.insert_subscription(subscription.clone());
            }
            created
        };
        tracing::info!(count = created.len(), "subscriptions seeded");
        // Lifecycle reminders may be due for the new ones.
        self.wake();
        Ok(created)
    }

    /// Sends a lifecycle notification to the subscription's lifecycleNotificationUrl (§4).
    /// `reauthorizationRequired` marks the subscription until it is reauthorized or PATCHed;
    /// `subscriptionRemoved` removes it.
    pub fn send_lifecycle(&self, subscription_id: &str, event: LifecycleEvent) -> Result<(), SimError> {
        let now = self.now();
        let timing = &self.config().timing;
        {
            let mut state = self.lock();
            state.purge_expired(now);
            let subscription = state
                .subscriptions
                .get_mut(subscription_id)
                .ok_or_else(|| SimError::NotFound(format!("subscription {subscription_id} not found")))?;
            let url = subscription.lifecycle_notification_url.clone().ok_or_else(|| {
                SimError::Conflict(format!(
                    "subscription {subscription_id} has no lifecycleNotificationUrl"
                ))
            })?;
            match event {
                LifecycleEvent::ReauthorizationRequired => subscription.needs_reauthorization = true,
                LifecycleEvent::SubscriptionRemoved | LifecycleEvent::Missed => {}
            }
            let payload = subscription.lifecycle_notification(event);
            if event == LifecycleEvent::SubscriptionRemoved {
                state.subscriptions.remove(subscription_id);
            }
            let state = &mut *state;
            let outgoing = Outgoing {
                url,
                kind: NotificationKind::Lifecycle,
                subscription_id: subscription_id.to_owned(),
                payload,
            };
            state
                .deliveries
                .enqueue(&mut state.counters, timing, now, outgoing);
        }
        self.wake();
        Ok(())
    }

    /// Removes a subscription as the service would (§4 `subscriptionRemoved`): it is gone (404)
    /// from now on, and when it has a lifecycleNotificationUrl a `subscriptionRemoved`
    /// notification is sent there. Returns whether a notification was queued.
    pub fn remove_subscription(&self, subscription_id: &str) -> Result<bool, SimError> {
        let now = self.now();
        let timing = &self.config().timing;
        let notified = {
            let mut state = self.lock();
            state.purge_expired(now);
            let subscription = state
                .subscriptions
                .remove(subscription_id)
                .ok_or_else(|| SimError::NotFound(format!("subscription {subscription_id} not found")))?;
            match subscription.lifecycle_notification_url.clone() {
                Some(url) => {
                    let state = &mut *state;
                    let outgoing = Outgoing {
                        url,
                        kind: NotificationKind::Lifecycle,
                        subscription_id: subscription_id.to_owned(),
                        payload: subscription.lifecycle_notification(LifecycleEvent::SubscriptionRemoved),
                    };
                    state
                        .deliveries
                        .enqueue(&mut state.counters, timing, now, outgoing);
                    true
                }
                None => false,
            }
        };
        if notified {
            self.wake();
        }
        Ok(notified)
    }

    /// The run-time settings (automatic reauthorization, the subscription quota, delta quirks,
    /// latency).
    pub fn settings(&self) -> Settings {
        self.lock().settings.clone()
    }

    /// Sets the real time added to Graph and token-endpoint calls from now on (see [`Latency`];
    /// `Latency::default()` removes it). Calls already waiting keep their delay.
    pub fn set_latency(&self, latency: Latency) {
        self.lock().settings.latency = latency;
    }

    /// Turns the automatic `reauthorizationRequired` schedule (§4) on or off. It is on by default
    /// unless [`crate::Timing::reauthorization_start`] is `None`.
    pub fn set_auto_reauthorization(&self, enabled: bool) {
        self.lock().settings.auto_reauthorization = enabled;
        self.wake();
    }

    /// Sets the per-drive subscription quota (§1.5: 403 beyond it); `None` removes it.
    pub fn set_max_subscriptions_per_drive(&self, max: Option<usize>) {
        self.lock().settings.max_subscriptions_per_drive = max;
    }

    /// Sets the delta quirks of drives without their own. Walks already started keep theirs.
    pub fn set_default_delta_quirks(&self, quirks: DeltaQuirks) {
        self.lock().settings.delta_quirks = quirks;
    }

    /// Sets one drive's delta quirks. Walks already started keep theirs.
    pub fn set_delta_quirks(&self, drive_id: &str, quirks: DeltaQuirks) -> Result<(), SimError> {
        let mut state = self.lock();
        if !state.drives.contains_key(drive_id) {
            return Err(SimError::NotFound(format!("drive {drive_id} not found")));
        }
        state
            .settings
            .drive_delta_quirks
            .insert(drive_id.to_owned(), quirks);
        Ok(())
    }

    /// Makes a drive use the default delta quirks again.
    pub fn clear_delta_quirks(&self, drive_id: &str) {
        self.lock().settings.drive_delta_quirks.remove(drive_id);
    }

    /// The delta quirks a new walk of the drive gets.
    pub fn delta_quirks(&self, drive_id: &str) -> Result<DeltaQuirks, SimError> {
        let state = self.lock();
        if !state.drives.contains_key(drive_id) {
            return Err(SimError::NotFound(format!("drive {drive_id} not found")));
        }
        Ok(state.settings.delta_quirks_for(drive_id))
    }

    /// Throttles a tenant, or one of its drives, for `for_duration` of sim time (see
    /// [`crate::throttle`]). A throttle for the same tenant and drive is replaced.
    pub fn throttle(&self, throttle: Throttle) -> Result<ThrottleStatus, SimError> {
        throttle.validate()?;
        let now = self.now();
        let mut state = self.lock();
        if let Some(drive_id) = &throttle.drive_id {
            match state.drives.get(drive_id) {
                None => return Err(SimError::NotFound(format!("drive {drive_id} not found"))),
                Some(drive) if !drive.tenant_id.eq_ignore_ascii_case(&throttle.tenant_id) => {
                    return Err(SimError::BadRequest(format!(
                        "drive {drive_id} is not in tenant {}",
                        throttle.tenant_id
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(state.throttles.add(throttle, now))
    }

    /// The throttles in force now.
    pub fn throttles(&self) -> Vec<ThrottleStatus> {
        let now = self.now();
        self.lock().throttles.statuses(now)
    }

    /// Ends every throttle.
    pub fn clear_throttles(&self) {
        self.lock().throttles.clear();
    }

    /// Bulk-creates a seeded random tree of files and folders under the drive's root (see
    /// [`Drive::populate`]), for benchmarks: each item gets a journal entry, and each subscription
    /// covering the root gets one change notification for the whole batch.
    pub fn populate(&self, drive_id: &str, request: Populate) -> Result<Populated, SimError> {
        let now = self.now();
        let timing = &self.config().timing;
        let (populated, queued) = {
            let mut state = self.lock();
            let drive = state
                .drives
                .get_mut(drive_id)
                .ok_or_else(|| SimError::NotFound(format!("drive {drive_id} not found")))?;
            let (populated, change) = drive.populate(&request, now)?;
            let queued = if populated.last_seq > 0 {
                state.notify_change(drive_id, &change, now, timing)
            } else {
                0
            };
            (populated, queued)
        };
        if queued > 0 {
            self.wake();
        }
        Ok(populated)
    }

    /// Adds a fault rule (see [`Fault`]).
    pub fn add_fault(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// The fault rules still armed.
    pub fn faults(&self) -> Vec<Fault> {
        self.lock().faults.clone()
    }

    /// Disarms every fault rule.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// A snapshot of the counters. Subscriptions the clock has expired are purged (and counted in
    /// [`Counters::subscriptions_expired`]) first, so the count is current even when nothing
    /// touched them.
    pub fn counters(&self) -> Counters {
        let now = self.now();
        let mut state = self.lock();
        state.purge_expired(now);
        state.counters.clone()
    }

    /// The delivery log, oldest first.
    pub fn deliveries(&self) -> Vec<DeliveryAttempt> {
        self.lock().deliveries.log()
    }

    /// The health of every notification URL seen so far.
    pub fn endpoints(&self) -> Vec<EndpointReport> {
        let now = self.now();
        let timing = &self.config().timing;
        self.lock().deliveries.endpoints(timing, now)
    }

    /// Notifications waiting for an attempt or being sent.
    pub fn outstanding_notifications(&self) -> usize {
        self.lock().deliveries.outstanding()
    }

    /// Forgets everything: users, tokens, drives, subscriptions, notifications, faults, throttles,
    /// counters, registered apps, refresh tokens, injected auth failures, rotated keys and run-time
    /// settings (the key ring starts again from the development key, the default app is registered
    /// again, settings come from the configuration again). The clock is not moved back (time
    /// never runs backwards).
    pub fn reset(&self) {
        let mut fresh = State::new(
            Entra::new(self.inner.dev_key.clone()),
            Settings::from_config(&self.inner.config),
        );
        let mut state = self.lock();
        fresh.generation = state.generation + 1;
        *state = fresh;
    }

    /// Takes the batches that are due now (for the delivery task).
    pub(crate) fn take_due_batches(&self) -> Vec<Batch> {
        let now = self.now();
        let timing = &self.config().timing;
        let mut state = self.lock();
        state.purge_expired(now);
        state.send_due_reauthorizations(now, timing);
        let state = &mut *state;
        let subscriptions = &state.subscriptions;
        state
            .deliveries
            .take_due(&mut state.counters, timing, now, state.generation, |id| {
                subscriptions.contains_key(id)
            })
    }

    /// Records a finished attempt; `None` when a reset happened meanwhile.
    pub(crate) fn finish_batch(&self, batch: Batch, result: &AttemptResult) -> Option<u64> {
        let now = self.now();
        let timing = &self.config().timing;
        let seq = {
            let mut state = self.lock();
            if state.generation != batch.generation {
                return None;
            }
            let state = &mut *state;
            state
                .deliveries
                .finish(&mut state.counters, timing, now, batch, result)
        };
        // A failure queued a retry; make sure the loop looks again soon.
        self.wake();
        Some(seq)
    }

    pub(crate) fn record_late_answer(&self, seq: u64, status: u16, latency_ms: u64) {
        let mut state = self.lock();
        let state = &mut *state;
        state
            .deliveries
            .record_late_answer(&mut state.counters, seq, status, latency_ms);
    }

    /// Starts the delivery task on the current runtime.
    pub(crate) fn spawn_delivery(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(delivery::run(self.clone()))
    }
}
