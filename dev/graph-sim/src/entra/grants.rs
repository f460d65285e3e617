//! The token endpoint's rules, free of HTTP: client authentication, then on-behalf-of (§7.1),
//! refresh with rotation (§7.2), the device-code grant ([`super::device`]) or client credentials,
//! each ending in a token or in an [`EntraError`] (§7.3); and the `devicecode` endpoint.
//!
//! Checks run in the order Entra reports them: the tenant in the path, the grant type, the
//! client (id, then secret), the grant's own parameters, then the user's injected failure.
//!
//! Clients are API apps (confidential: a secret is required) or public client apps such as
//! graphfeed's CLI (no secret; one is refused with AADSTS700025). Public clients may use the
//! device-code and refresh grants only.
//!
//! Resources: a token is for Graph (an opaque `simgraph.` token that `/v1.0` accepts, carrying the
//! granted Graph scopes so Graph can refuse writes without a write scope) or for a registered API
//! app (a JWT like [`crate::Sim::mint_api_token`]'s: v2, `aud` the API's client id, `azp` the
//! client, `scp` the API scope). Refresh tokens are multi-resource, as Entra's are: a refresh may
//! ask for another resource than the one the refresh token was first issued with. On-behalf-of
//! gives Graph tokens only. A token request naming two resources is `invalid_scope` AADSTS28000;
//! a `devicecode` request may name several (the user consents to all) and its token is for the
//! first.
//!
//! Refresh-token rotation: every refresh returns a new refresh token. The redeemed one keeps
//! working for [`crate::Timing::refresh_token_reuse_grace`] (default 10 sim minutes; `None`
//! keeps it working for good, as Entra does) and is refused with `invalid_grant` AADSTS70008
//! after that, so code that keeps a replaced refresh token fails in tests rather than in
//! production 90 days later.

use std::collections::HashMap;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use super::device::{DeviceCodeStatus, GRANT_DEVICE_CODE};
use super::errors::EntraError;
use super::jwt::{self, ApiToken, Subject, issuer_v1};
use super::{
    AuthFailure, ClientApp, Entra, FailureRule, GRAPH_RESOURCE, GRAPH_RESOURCE_APP_ID,
    REFRESH_TOKEN_MAX_INACTIVITY_DAYS, REFRESH_TOKEN_PREFIX, RefreshRecord, RegisteredApp, TenantPath,
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
            Some(GRANT_DEVICE_CODE) => "device_code".to_owned(),
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
    /// Real now, for device-code polling intervals.
    pub real_now: Instant,
    /// [`crate::Timing::device_code_interval`].
    pub device_code_interval: StdDuration,
    /// [`crate::Timing::device_code_lifetime`].
    pub device_code_lifetime: Duration,
}

/// The resource a token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resource {
    Graph,
    /// A registered API app, by client id.
    Api(String),
}

/// The scopes a request asked for its first resource, and what else it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scopes {
    pub resource: Resource,
    /// Full forms, as the answer's `scope` lists them: `https://graph.microsoft.com/Files.Read.All`,
    /// `api://…/access_as_user`.
    pub full: Vec<String>,
    /// Short names, as a token's `scp` carries them: `Files.Read.All`, `access_as_user`.
    pub names: Vec<String>,
    pub offline_access: bool,
    pub openid: bool,
    /// Scopes of resources after the first were asked for too.
    pub other_resources: bool,
}

/// One scope's resource, short name and full form: Graph's in short (`Files.Read.All`), full
/// (`https://graph.microsoft.com/Files.Read.All`) or app-id form, or a registered API's scope
/// (or `.default`) after its App ID URI or client id (`api://…/access_as_user`).
fn resolve_scope(scope: &str, entra: &Entra) -> Result<(Resource, String, String), EntraError> {
    let lower = scope.to_ascii_lowercase();
    let graph_prefixes = [format!("{GRAPH_RESOURCE}/"), format!("{GRAPH_RESOURCE_APP_ID}/")];
    let graph_name = graph_prefixes
        .iter()
        .find_map(|prefix| lower.starts_with(prefix.as_str()).then(|| &scope[prefix.len()..]))
        .or_else(|| (!scope.contains('/') && !scope.contains(':')).then_some(scope));
    if let Some(name) = graph_name.filter(|name| !name.is_empty()) {
        return Ok((
            Resource::Graph,
            name.to_owned(),
            format!("{GRAPH_RESOURCE}/{name}"),
        ));
    }
    let (resource, name) = scope
        .rsplit_once('/')
        .ok_or_else(|| EntraError::invalid_scope(scope))?;
    let app = entra
        .app(resource)
        .ok_or_else(|| EntraError::invalid_scope(scope))?;
    if name != ".default" && !name.eq_ignore_ascii_case(&app.api_scope) {
        return Err(EntraError::invalid_scope(scope));
    }
    Ok((
        Resource::Api(app.client_id.clone()),
        app.api_scope.clone(),
        format!("{}/{}", app.app_id_uri, app.api_scope),
    ))
}

/// Reads `scope`: the scopes of the first resource named (see [`resolve_scope`]), whether
/// scopes of other resources follow, `offline_access` and `openid`; `profile` and `email` are
/// accepted and ignored. An unknown resource or scope is `invalid_scope` AADSTS70011, and so is a
/// request with no resource at all.
pub(crate) fn parse_scopes(raw: &str, entra: &Entra) -> Result<Scopes, EntraError> {
    let mut resource: Option<Resource> = None;
    let mut scopes = Scopes {
        resource: Resource::Graph,
        full: Vec::new(),
        names: Vec::new(),
        offline_access: false,
        openid: false,
        other_resources: false,
    };
    for scope in raw.split_whitespace() {
        match scope.to_ascii_lowercase().as_str() {
            "offline_access" => scopes.offline_access = true,
            "openid" => scopes.openid = true,
            "profile" | "email" => {}
            _ => {
                let (this, name, full) = resolve_scope(scope, entra)?;
                match &resource {
                    None => resource = Some(this),
                    Some(first) if *first == this => {}
                    Some(_) => {
                        scopes.other_resources = true;
                        continue;
                    }
                }
                if !scopes.full.contains(&full) {
                    scopes.full.push(full);
                    scopes.names.push(name);
                }
            }
        }
    }
    scopes.resource = resource.ok_or_else(|| EntraError::invalid_scope(raw.trim()))?;
    Ok(scopes)
}

/// [`parse_scopes`] for a token request, which may name one resource only (AADSTS28000).
fn parse_token_scopes(raw: &str, entra: &Entra) -> Result<Scopes, EntraError> {
    let scopes = parse_scopes(raw, entra)?;
    if scopes.other_resources {
        return Err(EntraError::more_than_one_resource(raw.trim()));
    }
    Ok(scopes)
}

/// The client of a token request.
#[derive(Debug, Clone)]
pub(crate) enum Client {
    /// A registered API app, authenticated by its secret.
    Confidential(RegisteredApp),
    /// A public client app: no secret.
    Public(ClientApp),
}

impl Client {
    fn client_id(&self) -> &str {
        match self {
            Self::Confidential(app) => &app.client_id,
            Self::Public(app) => &app.client_id,
        }
    }

    fn display_name(&self) -> &str {
        match self {
            Self::Confidential(app) => &app.display_name,
            Self::Public(app) => &app.display_name,
        }
    }

    /// The API app, for grants only confidential clients may use: a public client lacks the
    /// secret they need (AADSTS7000218).
    fn confidential(&self) -> Result<&RegisteredApp, EntraError> {
        match self {
            Self::Confidential(app) => Ok(app),
            Self::Public(_) => Err(EntraError::missing_client_secret()),
        }
    }
}

/// The tenant segment of a request, which must name a known tenant when it is a GUID.
fn tenant_of(state: &State, raw: &str) -> Result<TenantPath, EntraError> {
    let tenant = TenantPath::parse(raw).ok_or_else(|| EntraError::tenant_not_found(raw))?;
    if let TenantPath::Id(id) = &tenant
        && !state.identity.tenants.contains_key(id)
    {
        return Err(EntraError::tenant_not_found(id));
    }
    Ok(tenant)
}

/// Answers one token request; the caller renders the result.
pub(crate) fn token(
    state: &mut State,
    ctx: &GrantContext<'_>,
    request: &TokenRequest,
) -> Result<Value, EntraError> {
    let tenant = tenant_of(state, &request.tenant)?;
    let grant_type = request.required("grant_type")?.to_owned();
    let client = authenticate_client(state, &tenant, request)?;
    match grant_type.as_str() {
        GRANT_JWT_BEARER => on_behalf_of(state, ctx, &tenant, client.confidential()?, request),
        "refresh_token" => refresh(state, ctx, &tenant, &client, request),
        GRANT_DEVICE_CODE => device_code(state, ctx, &tenant, &client, request),
        "client_credentials" => client_credentials(state, ctx, &tenant, client.confidential()?, request),
        other => Err(EntraError::unsupported_grant_type(other)),
    }
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`: issues a device code for a known client (public, or
/// an API app, which will need its secret when it polls) and valid scopes, which may name several
/// resources. `verification_uri` is the simulator's `/_sim/devicelogin`.
pub(crate) fn device_authorization(
    state: &mut State,
    ctx: &GrantContext<'_>,
    request: &TokenRequest,
) -> Result<Value, EntraError> {
    let tenant = tenant_of(state, &request.tenant)?;
    let client_id = request.required("client_id")?.trim().to_ascii_lowercase();
    let known = state.entra.client_app(&client_id).is_some()
        || state.entra.apps.values().any(|app| app.client_id == client_id);
    if !known {
        return Err(EntraError::unknown_client(&client_id, tenant.segment()));
    }
    let scope = request.required("scope")?;
    parse_scopes(scope, &state.entra)?;
    let code = state.entra.device_codes.issue(
        &client_id,
        tenant.segment(),
        scope,
        ctx.now,
        ctx.device_code_lifetime,
    );
    let verification_uri = format!("{}/_sim/devicelogin", ctx.authority);
    let interval =
        ctx.device_code_interval.as_secs() + u64::from(ctx.device_code_interval.subsec_nanos() > 0);
    let body = json!({
        "user_code": code.user_code,
        "device_code": code.device_code,
        "verification_uri": verification_uri,
        "expires_in": ctx.device_code_lifetime.num_seconds(),
        "interval": interval,
        "message": format!(
            "To sign in, use a web browser to open the page {verification_uri} and enter the code {} to \
             authenticate.",
            code.user_code
        ),
    });
    state.counters.device_codes_issued += 1;
    Ok(body)
}

/// The client: a public client app by its id alone (refusing a secret), or an API app by its id
/// and secret, from the body or HTTP Basic (RFC 6749 §2.3.1).
fn authenticate_client(
    state: &State,
    tenant: &TenantPath,
    request: &TokenRequest,
) -> Result<Client, EntraError> {
    let basic = request.basic.as_ref();
    let client_id = request
        .param("client_id")
        .or_else(|| basic.map(|(id, _)| id.as_str()))
        .ok_or_else(|| EntraError::missing_parameter("client_id"))?;
    if let Some(app) = state.entra.client_app(client_id) {
        let presents_secret = basic.is_some()
            || request.param("client_secret").is_some()
            || request.param("client_assertion").is_some();
        if presents_secret {
            return Err(EntraError::public_client_with_secret());
        }
        return Ok(Client::Public(app.clone()));
    }
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
    Ok(Client::Confidential(app))
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
    client_id: &str,
    client_name: &str,
) -> Option<EntraError> {
    let rule = state.entra.failures.get_mut(user_id)?;
    let error = match (&rule.failure, grant) {
        (AuthFailure::InactiveRefreshToken, UserGrant::OnBehalfOf) => return None,
        (AuthFailure::InactiveRefreshToken, UserGrant::Refresh { issued_at }) => {
            EntraError::inactive_refresh_token(issued_at)
        }
        (AuthFailure::MfaRequired, _) => EntraError::mfa_required(),
        (AuthFailure::ConsentRequired, _) => EntraError::consent_required(client_id, client_name),
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

/// What a success hands out besides the access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extras {
    refresh_token: bool,
    id_token: bool,
}

/// Issues the access token for the scopes' resource and, when asked, a new refresh token and an
/// id token; the success body.
fn issue(
    state: &mut State,
    ctx: &GrantContext<'_>,
    user: &User,
    client_id: &str,
    scopes: &Scopes,
    extras: Extras,
) -> Result<Value, EntraError> {
    let access_token = match &scopes.resource {
        Resource::Graph => {
            state
                .identity
                .issue_scoped_token(
                    &user.tenant_id,
                    &user.id,
                    client_id,
                    scopes.names.clone(),
                    ctx.now,
                    ctx.graph_token_lifetime,
                )
                .access_token
        }
        Resource::Api(api_client_id) => {
            api_access_token(state, ctx, user, api_client_id, client_id, &scopes.names)?
        }
    };
    let expires_in = (ctx.graph_token_lifetime.num_seconds() - 1).max(0);
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scopes.full.join(" "),
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access_token,
    });
    if extras.id_token {
        let id_token = id_token(state, ctx, user, client_id)?;
        if let Some(object) = body.as_object_mut() {
            object.insert("id_token".to_owned(), json!(id_token));
        }
    }
    if extras.refresh_token {
        let refresh_token = new_refresh_token(state, ctx.now, user, client_id, &scopes.full);
        if let Some(object) = body.as_object_mut() {
            object.insert("refresh_token".to_owned(), json!(refresh_token));
        }
    }
    Ok(body)
}

/// The user and app facts a JWT for `api` needs.
fn subject<'a>(ctx: &GrantContext<'_>, user: &'a User, api: &'a RegisteredApp) -> Subject<'a> {
    Subject {
        tenant_id: &user.tenant_id,
        user_id: &user.id,
        display_name: &user.display_name,
        user_principal_name: &user.user_principal_name,
        api_client_id: &api.client_id,
        app_id_uri: &api.app_id_uri,
        issuer_v2: format!("{}/{}/v2.0", ctx.authority, user.tenant_id),
    }
}

fn signing_failed() -> EntraError {
    EntraError::temporarily_unavailable(true, None)
}

/// An access token for a registered API, as [`crate::Sim::mint_api_token`] makes them (v2,
/// `aud` the API's client id), with `azp` the requesting client and `scp` the granted scopes.
fn api_access_token(
    state: &State,
    ctx: &GrantContext<'_>,
    user: &User,
    api_client_id: &str,
    client_id: &str,
    names: &[String],
) -> Result<String, EntraError> {
    let api = state
        .entra
        .apps
        .get(api_client_id)
        .ok_or_else(|| EntraError::invalid_scope(api_client_id))?;
    let spec = ApiToken::new(&user.id)
        .app(&api.client_id)
        .client_app(client_id)
        .scopes(names.iter().cloned())
        .lifetime(ctx.graph_token_lifetime);
    let (claims, _) = jwt::claims(&spec, &subject(ctx, user, api), ctx.now);
    let key = state.entra.keys.current();
    jwt::sign(&spec, claims, key, key)
        .map(|(token, _)| token)
        .map_err(|_| signing_failed())
}

/// A v2 id token for the client (`openid` asked for).
fn id_token(
    state: &State,
    ctx: &GrantContext<'_>,
    user: &User,
    client_id: &str,
) -> Result<String, EntraError> {
    let expires = ctx.now + ctx.graph_token_lifetime;
    let mut claims = Map::new();
    for (name, value) in [
        ("aud", json!(client_id)),
        ("iss", json!(format!("{}/{}/v2.0", ctx.authority, user.tenant_id))),
        ("iat", json!(ctx.now.timestamp())),
        ("nbf", json!(ctx.now.timestamp())),
        ("exp", json!(expires.timestamp())),
        ("name", json!(user.display_name)),
        ("oid", json!(user.id)),
        ("preferred_username", json!(user.user_principal_name)),
        ("sub", json!(jwt::pairwise_sub(&user.id, client_id))),
        ("tid", json!(user.tenant_id)),
        ("ver", json!("2.0")),
    ] {
        claims.insert(name.to_owned(), value);
    }
    let key = state.entra.keys.current();
    jwt::sign(&ApiToken::default(), claims, key, key)
        .map(|(token, _)| token)
        .map_err(|_| signing_failed())
}

/// Records and returns a new refresh token for the user and client; `scopes` (full forms) are
/// what a refresh without `scope` asks for again.
fn new_refresh_token(
    state: &mut State,
    now: DateTime<Utc>,
    user: &User,
    client_id: &str,
    scopes: &[String],
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
            scopes: scopes.to_vec(),
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
    let scopes = parse_token_scopes(scope, &state.entra)
        .map_err(|error| SimError::BadRequest(format!("scope '{scope}': {}", error.error)))?;
    Ok(new_refresh_token(state, now, &user, &app.client_id, &scopes.full))
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
    let scope = request.required("scope")?;
    let scopes = parse_token_scopes(scope, &state.entra)?;
    if scopes.resource != Resource::Graph {
        // On-behalf-of is graphfeed's way to Graph; a token for an API goes to its clients.
        return Err(EntraError::invalid_scope(scope.trim()));
    }
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
    if let Some(error) = injected_failure(
        state,
        &user.id,
        UserGrant::OnBehalfOf,
        &app.client_id,
        &app.display_name,
    ) {
        return Err(error);
    }
    let extras = Extras {
        refresh_token: scopes.offline_access,
        id_token: false,
    };
    issue(state, ctx, &user, &app.client_id, &scopes, extras)
}

/// §7.2: redeems a refresh token for a new access token (for the resource `scope` names, which
/// may differ from the one the refresh token came with) and a new refresh token, plus an id token
/// when `openid` is asked for.
fn refresh(
    state: &mut State,
    ctx: &GrantContext<'_>,
    tenant: &TenantPath,
    client: &Client,
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
    if record.client_id != client.client_id() {
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
        client.client_id(),
        client.display_name(),
    ) {
        return Err(error);
    }
    let scopes = match request.param("scope") {
        Some(raw) => parse_token_scopes(raw, &state.entra)?,
        None => parse_token_scopes(&record.scopes.join(" "), &state.entra)?,
    };
    if let Some(used) = state.entra.refresh_tokens.get_mut(presented) {
        used.last_used_at = ctx.now;
        used.replaced_at.get_or_insert(ctx.now);
    }
    let extras = Extras {
        refresh_token: true,
        id_token: scopes.openid,
    };
    issue(state, ctx, &user, client.client_id(), &scopes, extras)
}

/// A device-code poll ([`super::device`]): pending, too soon (`slow_down`), declined, expired,
/// unknown, or approved: the tokens for the first resource of the code's scopes, a refresh token
/// with `offline_access`, an id token with `openid`. Every poll is counted.
fn device_code(
    state: &mut State,
    ctx: &GrantContext<'_>,
    tenant: &TenantPath,
    client: &Client,
    request: &TokenRequest,
) -> Result<Value, EntraError> {
    state.counters.device_code_polls += 1;
    let presented = request.required("device_code")?;
    let code = state
        .entra
        .device_codes
        .by_device_code_mut(presented)
        .ok_or_else(EntraError::bad_verification_code)?;
    if code.client_id != client.client_id() {
        return Err(EntraError::grant_of_another_client());
    }
    if code.tenant != tenant.segment() || code.status == DeviceCodeStatus::Redeemed {
        return Err(EntraError::bad_verification_code());
    }
    if code.expired(ctx.now) {
        return Err(EntraError::device_code_expired());
    }
    let interval = ctx.device_code_interval;
    let too_soon = code
        .last_poll
        .is_some_and(|last| ctx.real_now.saturating_duration_since(last) < interval);
    code.last_poll = Some(ctx.real_now);
    let (user_id, scope) = match (code.status, &code.user_id) {
        (DeviceCodeStatus::Approved, Some(user_id)) => {
            code.status = DeviceCodeStatus::Redeemed;
            (user_id.clone(), code.scope.clone())
        }
        (DeviceCodeStatus::Declined, _) => return Err(EntraError::authorization_declined()),
        _ if too_soon => {
            state.counters.device_code_slow_downs += 1;
            let seconds = interval.as_secs() + u64::from(interval.subsec_nanos() > 0);
            return Err(EntraError::slow_down(seconds));
        }
        _ => return Err(EntraError::authorization_pending()),
    };
    let user = user_in(state, tenant, &user_id)?;
    let scopes = parse_scopes(&scope, &state.entra)?;
    let extras = Extras {
        refresh_token: scopes.offline_access,
        id_token: scopes.openid,
    };
    issue(state, ctx, &user, client.client_id(), &scopes, extras)
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

    use crate::entra::keys::SigningKey;
    use crate::entra::{DEFAULT_API_SCOPE, DEFAULT_APP_ID_URI};
    use crate::identity::DEFAULT_APP_ID;

    fn entra() -> Entra {
        Entra::new(SigningKey::development(Utc::now()).expect("dev key"))
    }

    #[test]
    fn graph_scopes_are_normalised_and_other_resources_refused() {
        let entra = entra();
        let parse = |raw: &str| parse_scopes(raw, &entra);
        let scopes = parse("offline_access Files.Read.All https://graph.microsoft.com/User.Read openid")
            .expect("valid");
        assert!(scopes.offline_access && scopes.openid);
        assert_eq!(
            scopes.full,
            vec![
                "https://graph.microsoft.com/Files.Read.All",
                "https://graph.microsoft.com/User.Read"
            ]
        );
        assert_eq!(scopes.names, vec!["Files.Read.All", "User.Read"]);
        assert_eq!(
            parse("00000003-0000-0000-c000-000000000000/Files.Read")
                .expect("app id form")
                .full,
            vec!["https://graph.microsoft.com/Files.Read"]
        );
        assert_eq!(
            parse("api://other/access_as_user").map_err(|e| e.code),
            Err(70_011)
        );
        assert_eq!(
            parse("offline_access").map_err(|e| e.error),
            Err("invalid_scope".to_owned())
        );
    }

    #[test]
    fn an_api_scope_names_its_app_by_uri_or_client_id_and_a_second_resource_is_noted() {
        let entra = entra();
        let by_uri = parse_scopes(
            &format!("{DEFAULT_APP_ID_URI}/access_as_user offline_access Files.ReadWrite"),
            &entra,
        )
        .expect("valid");
        assert_eq!(by_uri.resource, Resource::Api(DEFAULT_APP_ID.to_owned()));
        assert_eq!(
            by_uri.full,
            vec![format!("{DEFAULT_APP_ID_URI}/{DEFAULT_API_SCOPE}")]
        );
        assert_eq!(by_uri.names, vec![DEFAULT_API_SCOPE]);
        assert!(by_uri.other_resources);
        assert_eq!(
            parse_token_scopes(
                &format!("{DEFAULT_APP_ID_URI}/access_as_user Files.ReadWrite"),
                &entra
            )
            .map_err(|e| (e.error, e.code)),
            Err(("invalid_scope".to_owned(), 28_000))
        );
        let by_id = parse_scopes(&format!("{DEFAULT_APP_ID}/.default"), &entra).expect("valid");
        assert_eq!(by_id.resource, Resource::Api(DEFAULT_APP_ID.to_owned()));
        assert!(!by_id.other_resources);
        assert_eq!(
            parse_scopes(&format!("{DEFAULT_APP_ID_URI}/Files.Read"), &entra).map_err(|e| e.code),
            Err(70_011),
            "a scope the API does not expose"
        );
    }
}
