//! The control API under `/_sim`: what tests and `make local` use to arrange the simulated world
//! (users, tenants, apps and public client apps, tokens, device-code approvals, drive changes and
//! bulk populates, delta quirks, upload sessions, faults, throttles, subscription seeding and
//! removal, settings and latency, the clock, signing keys, auth failures) and to look inside it. Every route is a thin wrapper over a [`Sim`] method;
//! request and response bodies are snake_case JSON, errors are `{"error":{"code","message"}}`
//! (see the README). Control calls are never delayed by the latency setting.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::Latency;
use crate::delta::DeltaQuirks;
use crate::drive::{Item, ItemUpdate, NewItem, Populate, Populated};
use crate::entra::device::DeviceCodeInfo;
use crate::entra::jwt::{ApiToken, Audience, MintedToken, Tamper, TokenVersion};
use crate::entra::keys::SigningKeyInfo;
use crate::entra::{AuthFailure, ClientApp, RegisterApp, RegisterClientApp, RegisteredApp, Repeat};
use crate::errors::SimError;
use crate::faults::Fault;
use crate::identity::{IssuedToken, Tenant};
use crate::sim::{CreatedUser, NewTenant, NewUser, SeedSubscription, Sim};
use crate::state::Settings;
use crate::subscriptions::LifecycleEvent;
use crate::throttle::{Throttle, ThrottleStatus};

type ControlResult<T> = Result<T, SimError>;

/// The largest body of `POST /_sim/subscriptions/seed`: 10,000 seeds are about 3 MB, beyond
/// axum's default 2 MB.
const SEED_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// The control routes, to be nested under `/_sim`.
pub(crate) fn router() -> Router<Sim> {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/users", post(create_user))
        .route("/users/{user_id}/token", post(issue_token))
        .route("/users/{user_id}/api-token", post(mint_api_token))
        .route(
            "/users/{user_id}/auth-failure",
            post(set_auth_failure).delete(clear_auth_failure),
        )
        .route(
            "/users/{user_id}/revoke-refresh-tokens",
            post(revoke_refresh_tokens),
        )
        .route("/users/{user_id}/refresh-token", post(issue_refresh_token))
        .route("/tenants", post(create_tenant))
        .route("/apps", get(apps).post(register_app))
        .route("/client-apps", get(client_apps).post(register_client_app))
        .route("/devicelogin", get(device_login_page))
        .route("/devicecode", get(device_codes))
        .route("/devicecode/approve", post(approve_device_code))
        .route("/devicecode/deny", post(deny_device_code))
        .route("/devicecode/approve-next", post(approve_next_device_code))
        .route("/uploads", get(upload_sessions))
        .route(
            "/uploads/{session_id}",
            axum::routing::delete(expire_upload_session),
        )
        .route("/drives/{drive_id}/by-path", get(item_by_path))
        .route("/keys", get(signing_keys))
        .route("/keys/rotate", post(rotate_signing_key))
        .route("/keys/retire", post(retire_old_signing_keys))
        .route("/drives/{drive_id}/items", post(create_item))
        .route(
            "/drives/{drive_id}/items/{item_id}",
            get(get_item).patch(update_item).delete(delete_item),
        )
        .route("/drives/{drive_id}/items/{item_id}/modify", post(modify_item))
        .route("/drives/{drive_id}/journal", get(journal))
        .route(
            "/drives/{drive_id}/expire-delta-tokens",
            post(expire_delta_tokens),
        )
        .route(
            "/drives/{drive_id}/delta-quirks",
            get(drive_delta_quirks)
                .post(set_drive_delta_quirks)
                .delete(clear_drive_delta_quirks),
        )
        .route("/drives/{drive_id}/populate", post(populate))
        .route(
            "/delta-quirks",
            get(default_delta_quirks).post(set_default_delta_quirks),
        )
        .route("/subscriptions", get(subscriptions))
        .route(
            "/subscriptions/seed",
            post(seed_subscriptions).layer(DefaultBodyLimit::max(SEED_BODY_LIMIT)),
        )
        .route(
            "/subscriptions/{id}",
            get(subscription).delete(remove_subscription),
        )
        .route("/subscriptions/{id}/lifecycle", post(lifecycle))
        .route("/settings", get(settings).patch(update_settings))
        .route(
            "/throttles",
            get(throttles).post(add_throttle).delete(clear_throttles),
        )
        .route("/faults", get(faults).post(add_fault).delete(clear_faults))
        .route(
            "/counters",
            get(|State(sim): State<Sim>| async move { Json(sim.counters()) }),
        )
        .route(
            "/deliveries",
            get(|State(sim): State<Sim>| async move { Json(sim.deliveries()) }),
        )
        .route(
            "/endpoints",
            get(|State(sim): State<Sim>| async move { Json(sim.endpoints()) }),
        )
        .route("/clock", get(clock))
        .route("/clock/advance", post(advance))
        .route("/reset", post(reset))
}

/// Reads a JSON body; an empty body reads as `T::default()` for the routes whose fields are all
/// optional.
fn optional_body<T: DeserializeOwned + Default>(bytes: &Bytes) -> ControlResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        required_body(bytes)
    }
}

fn required_body<T: DeserializeOwned>(bytes: &Bytes) -> ControlResult<T> {
    serde_json::from_slice(bytes).map_err(|error| SimError::BadRequest(format!("invalid JSON body: {error}")))
}

async fn create_user(State(sim): State<Sim>, body: Bytes) -> ControlResult<(StatusCode, Json<CreatedUser>)> {
    let request: NewUser = optional_body(&body)?;
    Ok((StatusCode::CREATED, Json(sim.create_user(request)?)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    app_id: Option<String>,
}

async fn issue_token(
    State(sim): State<Sim>,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ControlResult<Json<IssuedToken>> {
    let request: TokenRequest = optional_body(&body)?;
    Ok(Json(sim.issue_token(&user_id, request.app_id.as_deref())?))
}

/// The body of `POST /_sim/users/{id}/refresh-token`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshTokenRequest {
    #[serde(default)]
    app_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

async fn issue_refresh_token(
    State(sim): State<Sim>,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ControlResult<(StatusCode, Json<Value>)> {
    let request: RefreshTokenRequest = optional_body(&body)?;
    let refresh_token =
        sim.issue_refresh_token(&user_id, request.app_id.as_deref(), request.scope.as_deref())?;
    Ok((StatusCode::CREATED, Json(json!({"refresh_token": refresh_token}))))
}

async fn create_tenant(State(sim): State<Sim>, body: Bytes) -> ControlResult<(StatusCode, Json<Tenant>)> {
    let request: NewTenant = optional_body(&body)?;
    Ok((StatusCode::CREATED, Json(sim.create_tenant(request)?)))
}

async fn register_app(
    State(sim): State<Sim>,
    body: Bytes,
) -> ControlResult<(StatusCode, Json<RegisteredApp>)> {
    let request: RegisterApp = required_body(&body)?;
    Ok((StatusCode::CREATED, Json(sim.register_app(request)?)))
}

async fn apps(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"value": sim.apps()}))
}

async fn register_client_app(
    State(sim): State<Sim>,
    body: Bytes,
) -> ControlResult<(StatusCode, Json<ClientApp>)> {
    let request: RegisterClientApp = required_body(&body)?;
    Ok((StatusCode::CREATED, Json(sim.register_client_app(request)?)))
}

async fn client_apps(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"value": sim.client_apps()}))
}

/// `GET /_sim/devicelogin`, the `verification_uri` of device codes: a plain-text page saying how
/// a simulated user approves a code (there is no browser sign-in).
async fn device_login_page(State(sim): State<Sim>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let base = format!("{}/_sim/devicecode", sim.authority_host());
    let pending: Vec<String> = sim
        .device_codes()
        .into_iter()
        .filter(|code| code.status == crate::DeviceCodeStatus::Pending && !code.expired)
        .map(|code| {
            format!(
                "  {}  client {}  scope '{}'",
                code.user_code, code.client_id, code.scope
            )
        })
        .collect();
    let listed = if pending.is_empty() {
        "  (none)".to_owned()
    } else {
        pending.join("\n")
    };
    let page = format!(
        "graph-sim device login\n\nThe simulator has no sign-in page: a simulated user approves a code through \
         the control API.\n\nPending codes:\n{listed}\n\nApprove one:\n  curl -X POST {base}/approve -H \
         'content-type: application/json' -d '{{\"user_code\":\"<code>\",\"user_id\":\"<user id>\"}}'\nApprove \
         the oldest:\n  curl -X POST {base}/approve-next -H 'content-type: application/json' -d \
         '{{\"user_id\":\"<user id>\"}}'\nDecline:\n  curl -X POST {base}/deny -H 'content-type: application/json' \
         -d '{{\"user_code\":\"<code>\"}}'\n"
    );
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        page,
    )
}

async fn device_codes(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"value": sim.device_codes()}))
}

/// The body of `POST /_sim/devicecode/approve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveDeviceCode {
    user_code: String,
    user_id: String,
}

async fn approve_device_code(State(sim): State<Sim>, body: Bytes) -> ControlResult<Json<DeviceCodeInfo>> {
    let request: ApproveDeviceCode = required_body(&body)?;
    Ok(Json(
        sim.approve_device_code(&request.user_code, &request.user_id)?,
    ))
}

/// The body of `POST /_sim/devicecode/deny`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyDeviceCode {
    user_code: String,
}

async fn deny_device_code(State(sim): State<Sim>, body: Bytes) -> ControlResult<Json<DeviceCodeInfo>> {
    let request: DenyDeviceCode = required_body(&body)?;
    Ok(Json(sim.deny_device_code(&request.user_code)?))
}

/// The body of `POST /_sim/devicecode/approve-next`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveNextDeviceCode {
    user_id: String,
}

async fn approve_next_device_code(
    State(sim): State<Sim>,
    body: Bytes,
) -> ControlResult<Json<DeviceCodeInfo>> {
    let request: ApproveNextDeviceCode = required_body(&body)?;
    Ok(Json(sim.approve_next_device_code(&request.user_id)?))
}

async fn upload_sessions(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"value": sim.upload_sessions()}))
}

async fn expire_upload_session(
    State(sim): State<Sim>,
    Path(session_id): Path<String>,
) -> ControlResult<StatusCode> {
    sim.expire_upload_session(&session_id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `GET /_sim/drives/{id}/by-path`.
#[derive(Debug, Deserialize)]
struct ByPath {
    path: String,
}

async fn item_by_path(
    State(sim): State<Sim>,
    Path(drive_id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<ByPath>,
) -> ControlResult<Json<Item>> {
    Ok(Json(sim.item_by_path(&drive_id, &query.path)?))
}

/// The body of `POST /_sim/users/{id}/api-token`; every field optional (see the README).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiTokenRequest {
    #[serde(default)]
    app_id: Option<String>,
    /// `client_id`, `app_id_uri`, or any other string to put in `aud` verbatim.
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    version: Option<TokenVersion>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    client_app_id: Option<String>,
    #[serde(default)]
    lifetime_seconds: Option<i64>,
    #[serde(default)]
    issued_at_offset_seconds: Option<i64>,
    #[serde(default)]
    not_before_offset_seconds: Option<i64>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    claims: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    remove_claims: Option<Vec<String>>,
    #[serde(default)]
    tamper: Option<Tamper>,
}

impl ApiTokenRequest {
    fn into_spec(self, user_id: String) -> ApiToken {
        let mut spec = ApiToken::new(user_id);
        spec.app_id = self.app_id;
        if let Some(version) = self.version {
            spec.version = version;
        }
        spec.audience = match self.audience.as_deref() {
            None | Some("client_id") => Audience::ClientId,
            Some("app_id_uri") => Audience::AppIdUri,
            Some(other) => Audience::Other(other.to_owned()),
        };
        if let Some(scopes) = self.scopes {
            spec.scopes = scopes;
        }
        spec.client_app_id = self.client_app_id;
        if let Some(seconds) = self.lifetime_seconds {
            spec.lifetime = chrono::Duration::seconds(seconds);
        }
        if let Some(seconds) = self.issued_at_offset_seconds {
            spec.issued_at_offset = chrono::Duration::seconds(seconds);
        }
        if let Some(seconds) = self.not_before_offset_seconds {
            spec.not_before_offset = chrono::Duration::seconds(seconds);
        }
        spec.issuer = self.issuer;
        spec.claims = self.claims.unwrap_or_default();
        spec.remove_claims = self.remove_claims.unwrap_or_default();
        spec.tamper = self.tamper;
        spec
    }
}

async fn mint_api_token(
    State(sim): State<Sim>,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ControlResult<Json<MintedToken>> {
    let request: ApiTokenRequest = optional_body(&body)?;
    Ok(Json(sim.mint_api_token(&request.into_spec(user_id))?))
}

/// The body of `POST /_sim/users/{id}/auth-failure`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFailureRequest {
    /// `mfa_required`, `consent_required`, `inactive_refresh_token`, `interaction_required` or
    /// `temporarily_unavailable`.
    failure: String,
    /// How many requests fail (default 1); ignored when `sticky`.
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    sticky: bool,
    /// `temporarily_unavailable` only: answer 503 instead of 400.
    #[serde(default)]
    http_503: bool,
    /// `temporarily_unavailable` only: a `Retry-After` in seconds.
    #[serde(default)]
    retry_after: Option<u64>,
}

async fn set_auth_failure(
    State(sim): State<Sim>,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ControlResult<StatusCode> {
    let request: AuthFailureRequest = required_body(&body)?;
    let failure = match request.failure.as_str() {
        "mfa_required" => AuthFailure::MfaRequired,
        "consent_required" => AuthFailure::ConsentRequired,
        "inactive_refresh_token" => AuthFailure::InactiveRefreshToken,
        "interaction_required" => AuthFailure::InteractionRequired,
        "temporarily_unavailable" => AuthFailure::TemporarilyUnavailable {
            http_503: request.http_503,
            retry_after: request.retry_after,
        },
        other => return Err(SimError::BadRequest(format!("unknown failure '{other}'"))),
    };
    let repeat = if request.sticky {
        Repeat::Sticky
    } else {
        Repeat::Times(request.count.unwrap_or(1))
    };
    sim.set_auth_failure(&user_id, failure, repeat)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_auth_failure(State(sim): State<Sim>, Path(user_id): Path<String>) -> StatusCode {
    sim.clear_auth_failure(&user_id);
    StatusCode::NO_CONTENT
}

async fn revoke_refresh_tokens(
    State(sim): State<Sim>,
    Path(user_id): Path<String>,
) -> ControlResult<StatusCode> {
    sim.revoke_refresh_tokens(&user_id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn signing_keys(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"keys": sim.signing_keys()}))
}

async fn rotate_signing_key(State(sim): State<Sim>) -> ControlResult<(StatusCode, Json<SigningKeyInfo>)> {
    Ok((StatusCode::CREATED, Json(sim.rotate_signing_key()?)))
}

async fn retire_old_signing_keys(State(sim): State<Sim>) -> Json<Value> {
    let retired = sim.retire_old_signing_keys();
    Json(json!({"retired": retired, "keys": sim.signing_keys()}))
}

async fn create_item(
    State(sim): State<Sim>,
    Path(drive_id): Path<String>,
    body: Bytes,
) -> ControlResult<(StatusCode, Json<Item>)> {
    let request: NewItem = required_body(&body)?;
    Ok((StatusCode::CREATED, Json(sim.create_item(&drive_id, &request)?)))
}

async fn get_item(
    State(sim): State<Sim>,
    Path((drive_id, item_id)): Path<(String, String)>,
) -> ControlResult<Json<Item>> {
    Ok(Json(sim.item(&drive_id, &item_id)?))
}

async fn update_item(
    State(sim): State<Sim>,
    Path((drive_id, item_id)): Path<(String, String)>,
    body: Bytes,
) -> ControlResult<Json<Item>> {
    let request: ItemUpdate = required_body(&body)?;
    Ok(Json(sim.update_item(&drive_id, &item_id, &request)?))
}

async fn delete_item(
    State(sim): State<Sim>,
    Path((drive_id, item_id)): Path<(String, String)>,
) -> ControlResult<Json<Item>> {
    Ok(Json(sim.delete_item(&drive_id, &item_id)?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModifyRequest {
    #[serde(default)]
    size: Option<u64>,
}

async fn modify_item(
    State(sim): State<Sim>,
    Path((drive_id, item_id)): Path<(String, String)>,
    body: Bytes,
) -> ControlResult<Json<Item>> {
    let request: ModifyRequest = optional_body(&body)?;
    Ok(Json(sim.modify_item(&drive_id, &item_id, request.size)?))
}

async fn journal(State(sim): State<Sim>, Path(drive_id): Path<String>) -> ControlResult<Json<Value>> {
    Ok(Json(json!({"entries": sim.journal(&drive_id)?})))
}

async fn expire_delta_tokens(
    State(sim): State<Sim>,
    Path(drive_id): Path<String>,
) -> ControlResult<Json<Value>> {
    Ok(Json(json!({"epoch": sim.expire_delta_tokens(&drive_id)?})))
}

async fn drive_delta_quirks(
    State(sim): State<Sim>,
    Path(drive_id): Path<String>,
) -> ControlResult<Json<DeltaQuirks>> {
    Ok(Json(sim.delta_quirks(&drive_id)?))
}

async fn set_drive_delta_quirks(
    State(sim): State<Sim>,
    Path(drive_id): Path<String>,
    body: Bytes,
) -> ControlResult<Json<DeltaQuirks>> {
    let quirks: DeltaQuirks = optional_body(&body)?;
    sim.set_delta_quirks(&drive_id, quirks)?;
    Ok(Json(sim.delta_quirks(&drive_id)?))
}

async fn clear_drive_delta_quirks(
    State(sim): State<Sim>,
    Path(drive_id): Path<String>,
) -> ControlResult<Json<DeltaQuirks>> {
    sim.clear_delta_quirks(&drive_id);
    Ok(Json(sim.delta_quirks(&drive_id)?))
}

async fn default_delta_quirks(State(sim): State<Sim>) -> Json<DeltaQuirks> {
    Json(sim.settings().delta_quirks)
}

async fn set_default_delta_quirks(State(sim): State<Sim>, body: Bytes) -> ControlResult<Json<DeltaQuirks>> {
    let quirks: DeltaQuirks = optional_body(&body)?;
    sim.set_default_delta_quirks(quirks);
    Ok(Json(sim.settings().delta_quirks))
}

async fn populate(
    State(sim): State<Sim>,
    Path(drive_id): Path<String>,
    body: Bytes,
) -> ControlResult<(StatusCode, Json<Populated>)> {
    let request: Populate = required_body(&body)?;
    Ok((StatusCode::CREATED, Json(sim.populate(&drive_id, request)?)))
}

/// `null` → `Some(None)` (no limit), a number → `Some(Some(n))`; absent stays `None` (unchanged).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<usize>>, D::Error> {
    Option::<usize>::deserialize(deserializer).map(Some)
}

/// `latency` in `PATCH /_sim/settings`: either field may be left out (unchanged).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyPatch {
    #[serde(default)]
    graph_ms: Option<u64>,
    #[serde(default)]
    token_ms: Option<u64>,
}

/// The body of `PATCH /_sim/settings`: each field optional, absent ones unchanged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsPatch {
    #[serde(default)]
    auto_reauthorization: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    max_subscriptions_per_drive: Option<Option<usize>>,
    #[serde(default)]
    delta_quirks: Option<DeltaQuirks>,
    /// Both latencies at once, as `--latency-ms` sets them; `latency` then adjusts either.
    #[serde(default)]
    latency_ms: Option<u64>,
    #[serde(default)]
    latency: Option<LatencyPatch>,
}

impl SettingsPatch {
    /// The latency this patch asks for, starting from `current`; `None` when it names none.
    fn latency(&self, current: Latency) -> Option<Latency> {
        if self.latency_ms.is_none() && self.latency.is_none() {
            return None;
        }
        let millis = std::time::Duration::from_millis;
        let mut latency = self.latency_ms.map_or(current, |ms| Latency::uniform(millis(ms)));
        if let Some(patch) = &self.latency {
            if let Some(ms) = patch.graph_ms {
                latency.graph = millis(ms);
            }
            if let Some(ms) = patch.token_ms {
                latency.token = millis(ms);
            }
        }
        Some(latency)
    }
}

async fn settings(State(sim): State<Sim>) -> Json<Settings> {
    Json(sim.settings())
}

async fn update_settings(State(sim): State<Sim>, body: Bytes) -> ControlResult<Json<Settings>> {
    let patch: SettingsPatch = required_body(&body)?;
    if let Some(enabled) = patch.auto_reauthorization {
        sim.set_auto_reauthorization(enabled);
    }
    if let Some(max) = patch.max_subscriptions_per_drive {
        sim.set_max_subscriptions_per_drive(max);
    }
    if let Some(latency) = patch.latency(sim.settings().latency) {
        sim.set_latency(latency);
    }
    if let Some(quirks) = patch.delta_quirks {
        sim.set_default_delta_quirks(quirks);
    }
    Ok(Json(sim.settings()))
}

/// The body of `POST /_sim/throttles`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleRequest {
    tenant_id: String,
    #[serde(default)]
    drive_id: Option<String>,
    /// 429, 503 or 509.
    status: u16,
    #[serde(default)]
    retry_after: Option<u64>,
    for_seconds: i64,
}

async fn add_throttle(
    State(sim): State<Sim>,
    body: Bytes,
) -> ControlResult<(StatusCode, Json<ThrottleStatus>)> {
    let request: ThrottleRequest = required_body(&body)?;
    let for_duration = chrono::Duration::try_seconds(request.for_seconds)
        .ok_or_else(|| SimError::BadRequest(format!("{} seconds is out of range", request.for_seconds)))?;
    let status = sim.throttle(Throttle {
        tenant_id: request.tenant_id,
        drive_id: request.drive_id,
        status: request.status,
        retry_after: request.retry_after,
        for_duration,
    })?;
    Ok((StatusCode::CREATED, Json(status)))
}

async fn throttles(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"value": sim.throttles()}))
}

async fn clear_throttles(State(sim): State<Sim>) -> StatusCode {
    sim.clear_throttles();
    StatusCode::NO_CONTENT
}

async fn remove_subscription(State(sim): State<Sim>, Path(id): Path<String>) -> ControlResult<Json<Value>> {
    let notified = sim.remove_subscription(&id)?;
    Ok(Json(json!({"removed": id, "notified": notified})))
}

/// The body of `POST /_sim/subscriptions/seed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedRequest {
    subscriptions: Vec<SeedSubscription>,
}

async fn seed_subscriptions(State(sim): State<Sim>, body: Bytes) -> ControlResult<(StatusCode, Json<Value>)> {
    let request: SeedRequest = required_body(&body)?;
    let created = sim.seed_subscriptions(&request.subscriptions)?;
    Ok((StatusCode::CREATED, Json(json!({"value": created}))))
}

async fn subscriptions(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"value": sim.subscriptions()}))
}

async fn subscription(State(sim): State<Sim>, Path(id): Path<String>) -> ControlResult<Json<Value>> {
    let found = sim
        .subscription(&id)
        .ok_or_else(|| SimError::NotFound(format!("subscription {id} not found")))?;
    Ok(Json(json!(found)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LifecycleRequest {
    event: LifecycleEvent,
}

async fn lifecycle(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    body: Bytes,
) -> ControlResult<(StatusCode, Json<Value>)> {
    let request: LifecycleRequest = required_body(&body)?;
    sim.send_lifecycle(&id, request.event)?;
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": true}))))
}

async fn faults(State(sim): State<Sim>) -> Json<Vec<Fault>> {
    Json(sim.faults())
}

async fn add_fault(State(sim): State<Sim>, body: Bytes) -> ControlResult<(StatusCode, Json<Fault>)> {
    let fault: Fault = required_body(&body)?;
    if axum::http::StatusCode::from_u16(fault.status).is_err() {
        return Err(SimError::BadRequest(format!(
            "{} is not an HTTP status",
            fault.status
        )));
    }
    sim.add_fault(fault.clone());
    Ok((StatusCode::CREATED, Json(fault)))
}

async fn clear_faults(State(sim): State<Sim>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

async fn clock(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"now": sim.now(), "offset_seconds": sim.config().clock.offset().num_seconds()}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceRequest {
    seconds: i64,
}

async fn advance(State(sim): State<Sim>, body: Bytes) -> ControlResult<Json<Value>> {
    let request: AdvanceRequest = required_body(&body)?;
    if request.seconds < 0 {
        return Err(SimError::BadRequest("the clock only moves forward".to_owned()));
    }
    let now = sim.advance(chrono::Duration::seconds(request.seconds));
    Ok(Json(json!({"now": now})))
}

async fn reset(State(sim): State<Sim>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}
