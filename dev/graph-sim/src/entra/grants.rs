//! The token endpoint's rules, free of HTTP: client authentication, then on-behalf-of (§7.1),
//! refresh with rotation (§7.2) or client credentials, each ending in an opaque Graph token from
//! [`crate::identity::Identity`] or in an [`EntraError`] (§7.3).
//!
//! Checks run in the order Entra reports them: the tenant in the path, the grant type, the
//! client (id, then secret), the grant's own parameters, then the user's injected failure.
//!
//! Refresh-token rotation: every refresh returns a new refresh token. The redeemed one keeps
//! working for [`crate::Timing::refresh_token_reuse_grace`] (default 10 sim minutes; `None`
//! keeps it working for good, as Entra does) and is refused with `invalid_grant` AADSTS70008
//! after that, so code that keeps a replaced refresh token fails in tests rather than in
//! production 90 days later.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::errors::EntraError;
use super::jwt::{self, issuer_v1};
use super::{
    AuthFailure, FailureRule, GRAPH_RESOURCE, GRAPH_RESOURCE_APP_ID, REFRESH_TOKEN_MAX_INACTIVITY_DAYS,
    REFRESH_TOKEN_PREFIX, RefreshRecord, RegisteredApp, TenantPath,
};
use crate::errors::SimError;
use crate::identity::User;
use crate::state::State;

/// `grant_type` of the on-behalf-of request.
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Everything a token request carries.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenRequest {
    /// The tenant segment of the URL, as written.
    pub tenant: String,
    /// The form body.
    pub params: HashMap<String, String>,
    /// `Authorization: Basic` credentials (client id, secret), already form-decoded.
    pub basic: Option<(String, String)>,
}

impl TokenRequest {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.trim().is_empty())
    }

    fn required(&self, name: &str) -> Result<&str, EntraError> {
        self.param(name)
            .ok_or_else(|| EntraError::missing_parameter(name))
    }

    /// The counter key for this request: `on_behalf_of`, `refresh_token`, `client_credentials`,
    /// another grant type verbatim, or `(missing)`.
    pub fn grant_label(&self) -> String {
        match self.param("grant_type") {
            Some(GRANT_JWT_BEARER) => "on_behalf_of".to_owned(),
            Some(other) => other.to_owned(),
            None => "(missing)".to_owned(),
        }
    }
}

/// The sim-wide settings a grant needs.
#[derive(Debug, Clone)]
pub(crate) struct GrantContext<'a> {
    pub now: DateTime<Utc>,
    /// The public base URL (`http://host:port`), for v2 issuers.
    pub authority: &'a str,
    pub graph_token_lifetime: Duration,
    pub reuse_grace: Option<Duration>,
}

/// The Graph scopes of a request, as full URIs, and whether a refresh token was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scopes {
    graph: Vec<String>,
    offline_access: bool,
}

/// Reads `scope`: Graph scopes in short (`Files.Read.All`), full
/// (`https://graph.microsoft.com/Files.Read.All`) or app-id form; `offline_access`; `openid`,
/// `profile` and `email` are accepted and ignored (no id token is issued). Scopes of any other
/// resource are refused, as is a request with no Graph scope at all.
fn parse_scopes(raw: &str) -> Result<Scopes, EntraError> {
    let mut scopes = Scopes {
        graph: Vec::new(),
        offline_access: false,
    };
    let graph_prefixes = [format!("{GRAPH_RESOURCE}/"), format!("{GRAPH_RESOURCE_APP_ID}/")];
    for scope in raw.split_whitespace() {
        let lower = scope.to_ascii_lowercase();
        match lower.as_str() {
            "offline_access" => scopes.offline_access = true,
            "openid" | "profile" | "email" => {}
            _ => {
                let name = graph_prefixes
                    .iter()
                    .find_map(|prefix| lower.starts_with(prefix.as_str()).then(|| &scope[prefix.len()..]))
                    .or_else(|| (!scope.contains('/') && !scope.contains(':')).then_some(scope))
                    .ok_or_else(|| EntraError::invalid_scope(scope))?;
                let full = format!("{GRAPH_RESOURCE}/{name}");
                if !scopes.graph.contains(&full) {
                    scopes.graph.push(full);
                }
            }
        }
    }
    if scopes.graph.is_empty() {
        return Err(EntraError::invalid_scope(raw.trim()));
    }
    Ok(scopes)
}

/// Answers one token request; the caller renders the result.
pub(crate) fn token(
    state: &mut State,
    ctx: &GrantContext<'_>,
    request: &TokenRequest,
) -> Result<Value, EntraError> {
    let tenant =
        TenantPath::parse(&request.tenant).ok_or_else(|| EntraError::tenant_not_found(&request.tenant))?;
    if let TenantPath::Id(id) = &tenant
        && !state.identity.tenants.contains_key(id)
    {
        return Err(EntraError::tenant_not_found(id));
    }
    let grant_type = request.required("grant_type")?.to_owned();
    let app = authenticate_client(state, &tenant, request)?;
    match grant_type.as_str() {
        GRANT_JWT_BEARER => on_behalf_of(state, ctx, &tenant, &app, request),
        "refresh_token" => refresh(state, ctx, &tenant, &app, request),
        "client_credentials" => client_credentials(state, ctx, &tenant, &app, request),
        other => Err(EntraError::unsupported_grant_type(other)),
    }
}

/// The client id and secret, from the body or HTTP Basic (RFC 6749 §2.3.1).
fn authenticate_client(
    state: &State,
    tenant: &TenantPath,
    request: &TokenRequest,
) -> Result<RegisteredApp, EntraError> {
    let basic = request.basic.as_ref();
    let client_id = request
        .param("client_id")
        .or_else(|| basic.map(|(id, _)| id.as_str()))
        .ok_or_else(|| EntraError::missing_parameter("client_id"))?;
    let app = state
        .entra
        .app(client_id)
        .filter(|app| app.client_id.eq_ignore_ascii_case(client_id.trim()))
        .cloned()
        .ok_or_else(|| EntraError::unknown_client(client_id, tenant.segment()))?;
    let secret = request
        .param("client_secret")
        .or_else(|| basic.map(|(_, secret)| secret.as_str()))
        .ok_or_else(EntraError::missing_client_secret)?;
    if secret != app.client_secret {
        return Err(EntraError::invalid_client_secret(&app.client_id));
    }
    Ok(app)
}

/// The user behind a grant, checked against the tenant in the URL.
fn user_in(state: &State, tenant: &TenantPath, user_id: &str) -> Result<User, EntraError> {
    let user = state
        .identity
        .users
        .get(user_id)
        .cloned()
        .ok_or_else(|| EntraError::user_not_found(tenant.segment()))?;
    if !tenant.admits(&user.tenant_id) {
        return Err(EntraError::user_not_in_tenant(tenant.segment()));
    }
    Ok(user)
}

/// Which grant an injected failure is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserGrant {
    OnBehalfOf,
    Refresh { issued_at: DateTime<Utc> },
}

/// Uses up one firing of the user's armed failure, if it applies to this grant.
fn injected_failure(
    state: &mut State,
    user_id: &str,
    grant: UserGrant,
    app: &RegisteredApp,
) -> Option<EntraError> {
    let rule = state.entra.failures.get_mut(user_id)?;
    let error = match (&rule.failure, grant) {
        (AuthFailure::InactiveRefreshToken, UserGrant::OnBehalfOf) => return None,
        (AuthFailure::InactiveRefreshToken, UserGrant::Refresh { issued_at }) => {
            EntraError::inactive_refresh_token(issued_at)
        }
        (AuthFailure::MfaRequired, _) => EntraError::mfa_required(),
        (AuthFailure::ConsentRequired, _) => EntraError::consent_required(&app.client_id, &app.display_name),
        (AuthFailure::InteractionRequired, _) => EntraError::interaction_required(),
        (
            AuthFailure::TemporarilyUnavailable {
                http_503,
                retry_after,
            },
            _,
        ) => EntraError::temporarily_unavailable(*http_503, *retry_after),
    };
    match &mut rule.remaining {
        Some(remaining) if *remaining <= 1 => {
            state.entra.failures.remove(user_id);
        }
        Some(remaining) => *remaining -= 1,
        None => {}
    }
    Some(error)
}

/// Issues the Graph access token and, when asked, a new refresh token; the success body.
fn issue(
    state: &mut State,
    ctx: &GrantContext<'_>,
    user: &User,
    app: &RegisteredApp,
    scopes: &Scopes,
    issue_refresh_token: bool,
) -> Value {
    let issued = state.identity.issue_token(
        &user.tenant_id,
        &user.id,
        &app.client_id,
        ctx.now,
        ctx.graph_token_lifetime,
    );
    let expires_in = (ctx.graph_token_lifetime.num_seconds() - 1).max(0);
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scopes.graph.join(" "),
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": issued.access_token,
    });
    if issue_refresh_token && let Some(object) = body.as_object_mut() {
        let refresh_token = new_refresh_token(state, ctx.now, user, &app.client_id, &scopes.graph);
        object.insert("refresh_token".to_owned(), json!(refresh_token));
    }
    body
}

/// Records and returns a new refresh token for the user and app, good for `graph_scopes`.
fn new_refresh_token(
    state: &mut State,
    now: DateTime<Utc>,
    user: &User,
    client_id: &str,
    graph_scopes: &[String],
) -> String {
    let refresh_token = format!(
        "{REFRESH_TOKEN_PREFIX}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let serial = state.entra.next_serial;
    state.entra.next_serial += 1;
    state.entra.refresh_tokens.insert(
        refresh_token.clone(),
        RefreshRecord {
            serial,
            user_id: user.id.clone(),
            tenant_id: user.tenant_id.clone(),
            client_id: client_id.to_owned(),
            scopes: graph_scopes.to_vec(),
            issued_at: now,
            last_used_at: now,
            replaced_at: None,
        },
    );
    refresh_token
}

/// A refresh token for `user_id` and the registered app `client_id`, as an on-behalf-of request
/// with `scope` (which must name a Graph scope; `offline_access` is implied) would have returned,
/// but without minting and verifying an assertion: setting up thousands of users for a benchmark
/// costs no RSA signatures.
pub(crate) fn direct_refresh_token(
    state: &mut State,
    now: DateTime<Utc>,
    user_id: &str,
    client_id: &str,
    scope: &str,
) -> Result<String, SimError> {
    let user = state
        .identity
        .users
        .get(user_id)
        .cloned()
        .ok_or_else(|| SimError::NotFound(format!("user {user_id} not found")))?;
    let app = state
        .entra
        .app(client_id)
        .cloned()
        .ok_or_else(|| SimError::NotFound(format!("app {client_id} is not registered")))?;
    let scopes = parse_scopes(scope)
        .map_err(|error| SimError::BadRequest(format!("scope '{scope}': {}", error.error)))?;
    Ok(new_refresh_token(
        state,
        now,
        &user,
        &app.client_id,
        &scopes.graph,
    ))
}

/// §7.1: exchanges a user's access token for graphfeed's API for a Graph token.
fn on_behalf_of(
    state: &mut State,
    ctx: &GrantContext<'_>,
    tenant: &TenantPath,
    app: &RegisteredApp,
    request: &TokenRequest,
) -> Result<Value, EntraError> {
    match request.param("requested_token_use") {
        Some("on_behalf_of") => {}
        Some(_) => {
            return Err(EntraError::new(
                "invalid_request",
                900_144,
                "The request body must contain the following parameter: 'requested_token_use' with the value \
                 'on_behalf_of'.",
            ));
        }
        None => return Err(EntraError::missing_parameter("requested_token_use")),
    }
    let assertion = request.required("assertion")?;
    let scopes = parse_scopes(request.required("scope")?)?;
    let parsed = jwt::parse(assertion).ok_or_else(EntraError::malformed_assertion)?;
    let kid = parsed.header["kid"].as_str().unwrap_or_default();
    let key = state
        .entra
        .keys
        .find(kid)
        .ok_or_else(|| EntraError::assertion_key_not_found(kid))?;
    if parsed.header["alg"] != "RS256"
        || !key.verify_rs256(parsed.signing_input.as_bytes(), &parsed.signature)
    {
        return Err(EntraError::assertion_bad_signature());
    }
    let claims = &parsed.claims;
    let expires = jwt::time_claim(claims, "exp").ok_or_else(EntraError::malformed_assertion)?;
    let not_before = jwt::time_claim(claims, "nbf").unwrap_or(expires);
    if ctx.now >= expires || ctx.now < not_before {
        return Err(EntraError::assertion_time(ctx.now, expires));
    }
    let tenant_id = claims["tid"]
        .as_str()
        .ok_or_else(EntraError::malformed_assertion)?;
    let issuer = claims["iss"].as_str().unwrap_or_default();
    let issuer_v2 = format!("{}/{tenant_id}/v2.0", ctx.authority);
    if issuer != issuer_v1(tenant_id) && issuer != issuer_v2 {
        return Err(EntraError::assertion_issuer(issuer));
    }
    let audience = claims["aud"].as_str().unwrap_or_default();
    if !audience.eq_ignore_ascii_case(&app.client_id) && audience != app.app_id_uri {
        return Err(EntraError::assertion_audience(
            audience,
            &app.client_id,
            &app.display_name,
        ));
    }
    let user_id = claims["oid"].as_str().unwrap_or_default();
    let user = state
        .identity
        .users
        .get(user_id)
        .filter(|user| user.tenant_id == tenant_id)
        .cloned()
        .ok_or_else(|| EntraError::user_not_found(tenant_id))?;
    let user = user_in(state, tenant, &user.id)?;
    if let Some(error) = injected_failure(state, &user.id, UserGrant::OnBehalfOf, app) {
        return Err(error);
    }
    Ok(issue(state, ctx, &user, app, &scopes, scopes.offline_access))
}

/// §7.2: redeems a refresh token for a new access token and a new refresh token.
fn refresh(
    state: &mut State,
    ctx: &GrantContext<'_>,
    tenant: &TenantPath,
    app: &RegisteredApp,
    request: &TokenRequest,
) -> Result<Value, EntraError> {
    let presented = request.required("refresh_token")?;
    if !presented.starts_with(REFRESH_TOKEN_PREFIX) {
        return Err(EntraError::malformed_grant());
    }
    let record = state
        .entra
        .refresh_tokens
        .get(presented)
        .cloned()
        .ok_or_else(EntraError::expired_grant)?;
    if record.client_id != app.client_id {
        return Err(EntraError::grant_of_another_client());
    }
    if let Some(revocation) = state.entra.revocations.get(&record.user_id)
        && record.serial <= revocation.through_serial
    {
        return Err(EntraError::revoked_grant(record.issued_at, revocation.at));
    }
    if ctx.now - record.last_used_at > Duration::days(REFRESH_TOKEN_MAX_INACTIVITY_DAYS) {
        return Err(EntraError::inactive_refresh_token(record.issued_at));
    }
    if let (Some(replaced_at), Some(grace)) = (record.replaced_at, ctx.reuse_grace)
        && ctx.now > replaced_at + grace
    {
        return Err(EntraError::expired_grant());
    }
    let user = user_in(state, tenant, &record.user_id)?;
    if user.tenant_id != record.tenant_id {
        return Err(EntraError::user_not_in_tenant(tenant.segment()));
    }
    if let Some(error) = injected_failure(
        state,
        &user.id,
        UserGrant::Refresh {
            issued_at: record.issued_at,
        },
        app,
    ) {
        return Err(error);
    }
    let scopes = match request.param("scope") {
        Some(raw) => parse_scopes(raw)?,
        None => Scopes {
            graph: record.scopes.clone(),
            offline_access: true,
        },
    };
    if let Some(used) = state.entra.refresh_tokens.get_mut(presented) {
        used.last_used_at = ctx.now;
        used.replaced_at.get_or_insert(ctx.now);
    }
    Ok(issue(state, ctx, &user, app, &scopes, true))
}

/// App-only Graph token for the tenant in the path (a GUID; `/.default` scope only).
fn client_credentials(
    state: &mut State,
    ctx: &GrantContext<'_>,
    tenant: &TenantPath,
    app: &RegisteredApp,
    request: &TokenRequest,
) -> Result<Value, EntraError> {
    let TenantPath::Id(tenant_id) = tenant else {
        return Err(EntraError::new(
            "invalid_request",
            90_002,
            format!(
                "Tenant '{}' cannot be used with the client credentials flow; use a tenant ID.",
                tenant.segment()
            ),
        ));
    };
    let scope = request.required("scope")?.trim();
    let is_graph_default = [GRAPH_RESOURCE, GRAPH_RESOURCE_APP_ID]
        .iter()
        .any(|resource| scope.eq_ignore_ascii_case(&format!("{resource}/.default")));
    if !is_graph_default {
        return Err(EntraError::client_credentials_scope(scope));
    }
    let issued = state
        .identity
        .issue_app_token(tenant_id, &app.client_id, ctx.now, ctx.graph_token_lifetime);
    let expires_in = (ctx.graph_token_lifetime.num_seconds() - 1).max(0);
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": issued.access_token,
    }))
}

/// Arms (or replaces) a user's failure.
pub(crate) fn arm_failure(state: &mut State, user_id: &str, failure: AuthFailure, remaining: Option<u32>) {
    if remaining == Some(0) {
        state.entra.failures.remove(user_id);
    } else {
        state
            .entra
            .failures
            .insert(user_id.to_owned(), FailureRule { failure, remaining });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_scopes_are_normalised_and_other_resources_refused() {
        let scopes =
            parse_scopes("offline_access Files.Read.All https://graph.microsoft.com/User.Read openid")
                .expect("valid");
        assert!(scopes.offline_access);
        assert_eq!(
            scopes.graph,
            vec![
                "https://graph.microsoft.com/Files.Read.All",
                "https://graph.microsoft.com/User.Read"
            ]
        );
        assert_eq!(
            parse_scopes("00000003-0000-0000-c000-000000000000/Files.Read")
                .expect("app id form")
                .graph,
            vec!["https://graph.microsoft.com/Files.Read"]
        );
        assert_eq!(
            parse_scopes("api://other/access_as_user").map_err(|e| e.code),
            Err(70_011)
        );
        assert_eq!(
            parse_scopes("offline_access").map_err(|e| e.error),
            Err("invalid_scope".to_owned())
        );
    }
}
