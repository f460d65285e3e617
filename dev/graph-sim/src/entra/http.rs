//! Entra's HTTP surface, served beside Graph on the same app (so `ENTRA_AUTHORITY_HOST` and
//! `GRAPH_BASE_URL` name one simulator):
//!
//! - `GET /{tenant}/v2.0/.well-known/openid-configuration` and `GET /{tenant}/.well-known/openid-configuration`
//! - `GET /{tenant}/discovery/v2.0/keys` and `GET /{tenant}/discovery/keys`
//! - `POST /{tenant}/oauth2/v2.0/token`
//! - `POST /{tenant}/oauth2/v2.0/devicecode` (the device authorization grant, [`super::device`])
//!
//! `{tenant}` is a tenant GUID, `common`, `organizations` or `consumers` (graph-protocol.md §7.4).
//! Every call is counted; the token endpoint's rules are in [`super::grants`]. Only the token and
//! devicecode endpoints wait out the configured [`crate::Latency`] (its `token` part); metadata
//! and keys answer at once.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::TenantPath;
use super::errors::EntraError;
use super::grants::{self, GrantContext, TokenRequest};
use super::jwt::issuer_v1;
use crate::sim::Sim;

const X_MS_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");
const CLIENT_REQUEST_ID: &str = "client-request-id";

/// The Entra routes, merged at the root of the app.
pub(crate) fn router() -> Router<Sim> {
    Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(metadata_v2),
        )
        .route("/{tenant}/.well-known/openid-configuration", get(metadata_v1))
        .route("/{tenant}/discovery/v2.0/keys", get(keys_v2))
        .route("/{tenant}/discovery/keys", get(keys_v1))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(devicecode))
}

/// Ids for one Entra response: a fresh trace id, and the caller's `client-request-id` echoed as
/// the correlation id (as Entra does for MSAL), or a fresh one.
fn ids(headers: &HeaderMap) -> (String, String) {
    let correlation = headers
        .get(CLIENT_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| uuid::Uuid::try_parse(value).is_ok())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    (uuid::Uuid::new_v4().to_string(), correlation)
}

/// Adds Entra's no-cache headers and the request id.
fn finish(mut response: Response, trace_id: &str) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(trace_id) {
        headers.insert(X_MS_REQUEST_ID, value);
    }
    response
}

fn error_response(sim: &Sim, error: &EntraError, headers: &HeaderMap) -> Response {
    let (trace_id, correlation_id) = ids(headers);
    finish(
        error.to_response(&trace_id, &correlation_id, sim.now()),
        &trace_id,
    )
}

/// The tenant segment, or Entra's AADSTS90002 for one the simulator cannot serve (a domain).
fn tenant_or_error(raw: &str) -> Result<TenantPath, EntraError> {
    TenantPath::parse(raw).ok_or_else(|| EntraError::tenant_not_found(raw))
}

/// The fields both metadata versions share.
fn metadata_common(host: &str, tenant: &TenantPath) -> serde_json::Map<String, Value> {
    let segment = tenant.segment();
    let mut document = serde_json::Map::new();
    let mut set = |name: &str, value: Value| {
        document.insert(name.to_owned(), value);
    };
    set(
        "token_endpoint_auth_methods_supported",
        json!(["client_secret_post", "private_key_jwt", "client_secret_basic"]),
    );
    set(
        "response_modes_supported",
        json!(["query", "fragment", "form_post"]),
    );
    set("subject_types_supported", json!(["pairwise"]));
    set("id_token_signing_alg_values_supported", json!(["RS256"]));
    set(
        "response_types_supported",
        json!(["code", "id_token", "code id_token", "token id_token", "token"]),
    );
    set(
        "scopes_supported",
        json!(["openid", "profile", "email", "offline_access"]),
    );
    set("tenant_region_scope", Value::Null);
    set("cloud_instance_name", json!("microsoftonline.com"));
    set("cloud_graph_host_name", json!("graph.windows.net"));
    set("msgraph_host", json!("graph.microsoft.com"));
    set("rbac_url", json!("https://pas.windows.net"));
    set("request_uri_parameter_supported", json!(false));
    set("http_logout_supported", json!(true));
    set("frontchannel_logout_supported", json!(true));
    set("kerberos_endpoint", json!(format!("{host}/{segment}/kerberos")));
    document
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`: issuer `{host}/{tid}/v2.0` (with
/// Entra's literal `{tenantid}` on `common` and `organizations`).
async fn metadata_v2(State(sim): State<Sim>, Path(raw): Path<String>, headers: HeaderMap) -> Response {
    sim.lock().counters.oidc_metadata_fetches += 1;
    let tenant = match tenant_or_error(&raw) {
        Ok(tenant) => tenant,
        Err(error) => return error_response(&sim, &error, &headers),
    };
    let host = sim.authority_host();
    let segment = tenant.segment();
    let mut document = metadata_common(host, &tenant);
    for (name, value) in [
        ("issuer", format!("{host}/{}/v2.0", tenant.issuer_tenant())),
        ("jwks_uri", format!("{host}/{segment}/discovery/v2.0/keys")),
        ("token_endpoint", format!("{host}/{segment}/oauth2/v2.0/token")),
        (
            "authorization_endpoint",
            format!("{host}/{segment}/oauth2/v2.0/authorize"),
        ),
        (
            "device_authorization_endpoint",
            format!("{host}/{segment}/oauth2/v2.0/devicecode"),
        ),
        (
            "end_session_endpoint",
            format!("{host}/{segment}/oauth2/v2.0/logout"),
        ),
        (
            "userinfo_endpoint",
            "https://graph.microsoft.com/oidc/userinfo".to_owned(),
        ),
    ] {
        document.insert(name.to_owned(), json!(value));
    }
    document.insert(
        "claims_supported".to_owned(),
        json!([
            "sub",
            "iss",
            "cloud_instance_name",
            "cloud_instance_host_name",
            "cloud_graph_host_name",
            "msgraph_host",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "acr",
            "nonce",
            "preferred_username",
            "name",
            "tid",
            "ver",
            "at_hash",
            "c_hash",
            "email"
        ]),
    );
    axum::Json(Value::Object(document)).into_response()
}

/// `GET /{tenant}/.well-known/openid-configuration`: issuer `https://sts.windows.net/{tid}/`.
async fn metadata_v1(State(sim): State<Sim>, Path(raw): Path<String>, headers: HeaderMap) -> Response {
    sim.lock().counters.oidc_metadata_fetches += 1;
    let tenant = match tenant_or_error(&raw) {
        Ok(tenant) => tenant,
        Err(error) => return error_response(&sim, &error, &headers),
    };
    let host = sim.authority_host();
    let segment = tenant.segment();
    let mut document = metadata_common(host, &tenant);
    for (name, value) in [
        ("issuer", issuer_v1(tenant.issuer_tenant())),
        ("jwks_uri", format!("{host}/{segment}/discovery/keys")),
        ("token_endpoint", format!("{host}/{segment}/oauth2/token")),
        (
            "authorization_endpoint",
            format!("{host}/{segment}/oauth2/authorize"),
        ),
        (
            "device_authorization_endpoint",
            format!("{host}/{segment}/oauth2/devicecode"),
        ),
        ("end_session_endpoint", format!("{host}/{segment}/oauth2/logout")),
        ("userinfo_endpoint", format!("{host}/{segment}/openid/userinfo")),
    ] {
        document.insert(name.to_owned(), json!(value));
    }
    document.insert(
        "claims_supported".to_owned(),
        json!([
            "sub",
            "iss",
            "cloud_instance_name",
            "cloud_instance_host_name",
            "cloud_graph_host_name",
            "msgraph_host",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "acr",
            "amr",
            "nonce",
            "email",
            "given_name",
            "family_name",
            "nickname"
        ]),
    );
    axum::Json(Value::Object(document)).into_response()
}

/// The key set. Both paths carry the v2-form `issuer` on each key, as Entra's do.
fn key_set(sim: &Sim, raw: &str, headers: &HeaderMap) -> Response {
    let tenant = match tenant_or_error(raw) {
        Ok(tenant) => tenant,
        Err(error) => return error_response(sim, &error, headers),
    };
    let issuer = format!("{}/{}/v2.0", sim.authority_host(), tenant.issuer_tenant());
    let keys: Vec<Value> = {
        let mut state = sim.lock();
        state.counters.jwks_fetches += 1;
        state
            .entra
            .keys
            .published()
            .iter()
            .map(|key| key.jwk(&issuer))
            .collect()
    };
    axum::Json(json!({"keys": keys})).into_response()
}

/// `GET /{tenant}/discovery/v2.0/keys`.
async fn keys_v2(State(sim): State<Sim>, Path(raw): Path<String>, headers: HeaderMap) -> Response {
    key_set(&sim, &raw, &headers)
}

/// `GET /{tenant}/discovery/keys`.
async fn keys_v1(State(sim): State<Sim>, Path(raw): Path<String>, headers: HeaderMap) -> Response {
    key_set(&sim, &raw, &headers)
}

/// `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |part: &str| -> String {
        form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    };
    Some((decode(id), decode(secret)))
}

/// Which form-encoded Entra endpoint a POST is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Token,
    DeviceCode,
}

/// `POST /{tenant}/oauth2/v2.0/token` (form-encoded).
async fn token(
    State(sim): State<Sim>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    form_post(&sim, Endpoint::Token, tenant, &headers, &body).await
}

/// `POST /{tenant}/oauth2/v2.0/devicecode` (form-encoded: `client_id`, `scope`).
async fn devicecode(
    State(sim): State<Sim>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    form_post(&sim, Endpoint::DeviceCode, tenant, &headers, &body).await
}

/// Waits out the token latency, answers the request under the lock, counts it (token requests by
/// grant, device codes in their own counters; refusals of both by `error`) and renders it.
async fn form_post(
    sim: &Sim,
    endpoint: Endpoint,
    tenant: String,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let latency = sim.lock().settings.latency.token;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let params: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let request = TokenRequest {
        tenant,
        params,
        basic: basic_credentials(headers),
    };
    let now = sim.now();
    let timing = &sim.config().timing;
    let context = GrantContext {
        now,
        authority: sim.authority_host(),
        graph_token_lifetime: timing.token_lifetime,
        reuse_grace: timing.refresh_token_reuse_grace,
        real_now: std::time::Instant::now(),
        device_code_interval: timing.device_code_interval,
        device_code_lifetime: timing.device_code_lifetime,
    };
    let result = {
        let mut state = sim.lock();
        let result = match endpoint {
            Endpoint::Token => {
                *state
                    .counters
                    .token_requests
                    .entry(request.grant_label())
                    .or_default() += 1;
                grants::token(&mut state, &context, &request)
            }
            Endpoint::DeviceCode => grants::device_authorization(&mut state, &context, &request),
        };
        if let Err(error) = &result {
            *state
                .counters
                .token_errors
                .entry(error.error.clone())
                .or_default() += 1;
        }
        result
    };
    match result {
        Ok(body) => {
            let (trace_id, _) = ids(headers);
            finish(axum::Json(body).into_response(), &trace_id)
        }
        Err(error) => {
            tracing::info!(error = %error.error, code = error.code, "token request refused");
            error_response(sim, &error, headers)
        }
    }
}
