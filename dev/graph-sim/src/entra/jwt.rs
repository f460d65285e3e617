//! JWTs: the access tokens a client app would get for graphfeed's API, in Entra's v1 and v2
//! forms (graph-protocol.md §7.4), with variants that are wrong in exactly one way for negative
//! tests; and the reading of an on-behalf-of assertion (§7.1).
//!
//! Signing is RS256 over aws-lc-rs (the crypto library the tree already has); graphfeed verifies
//! the result with `jsonwebtoken`, and so do this crate's tests.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::keys::{KeyError, SigningKey};
use super::{DEFAULT_API_SCOPE, DEFAULT_CLIENT_APP_ID};

/// Which access-token format: the API app's `requestedAccessTokenVersion` (§7.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenVersion {
    /// `ver: "1.0"`, `iss: https://sts.windows.net/{tid}/`, header `kid` + `x5t`, `appid`.
    V1,
    /// `ver: "2.0"`, `iss: {authority}/{tid}/v2.0`, header `kid`, `azp`.
    #[default]
    V2,
}

/// What goes in `aud`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// The API app's client id (what v2 tokens always carry).
    #[default]
    ClientId,
    /// The API app's App ID URI, e.g. `api://<client id>` (v1 tokens, depending on the request).
    AppIdUri,
    /// Anything else, e.g. Graph's `00000003-0000-0000-c000-000000000000` for a wrong-audience test.
    Other(String),
}

/// One way to make a token fail signature checks while every claim stays right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tamper {
    /// Signed by a key the JWKS never publishes, with that key's own `kid`.
    UnknownKey,
    /// The header names the current signing key's `kid`, but another key signed it.
    WrongKey,
    /// Signed by the current key, but the header carries this `kid`.
    Kid(String),
    /// `alg: none` and an empty signature.
    AlgNone,
    /// `alg: HS256` keyed with the current key's public PEM: the key-confusion attack.
    Hs256,
    /// Signed by the current key, then one signature byte flipped.
    BadSignature,
}

/// What to mint: a user's access token for graphfeed's API (the token a client app sends to
/// `POST /connect`). [`ApiToken::new`] gives a valid v2 token; the builder methods change one
/// thing at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiToken {
    pub user_id: String,
    /// The registered API app (middle tier) the token is for; [`crate::DEFAULT_APP_ID`] when `None`.
    pub app_id: Option<String>,
    pub audience: Audience,
    pub version: TokenVersion,
    /// `scp`, space-joined; an empty list leaves `scp` out. Default `["access_as_user"]`.
    pub scopes: Vec<String>,
    /// The client app that asked for the token (`azp` / `appid`); [`DEFAULT_CLIENT_APP_ID`] when `None`.
    pub client_app_id: Option<String>,
    /// `iat` = now + this (negative for a token minted in the past).
    pub issued_at_offset: Duration,
    /// `nbf` = `iat` + this.
    pub not_before_offset: Duration,
    /// `exp` = `iat` + this. Default one hour.
    pub lifetime: Duration,
    /// Replaces the correct `iss`.
    pub issuer: Option<String>,
    /// Replaces or adds claims after the correct ones are set (e.g. a wrong `tid`).
    pub claims: Map<String, Value>,
    /// Claims to leave out (e.g. `oid`).
    pub remove_claims: Vec<String>,
    pub tamper: Option<Tamper>,
}

impl Default for ApiToken {
    /// [`ApiToken::new`] with an empty `user_id`, for `ApiToken { user_id, ..Default::default() }`.
    fn default() -> Self {
        Self::new(String::new())
    }
}

impl ApiToken {
    /// A valid v2 token for `user_id`, audience the default API app's client id, scope
    /// `access_as_user`, valid for one hour from the sim's now.
    pub fn new(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            app_id: None,
            audience: Audience::ClientId,
            version: TokenVersion::V2,
            scopes: vec![DEFAULT_API_SCOPE.to_owned()],
            client_app_id: None,
            issued_at_offset: Duration::zero(),
            not_before_offset: Duration::zero(),
            lifetime: Duration::hours(1),
            issuer: None,
            claims: Map::new(),
            remove_claims: Vec::new(),
            tamper: None,
        }
    }

    /// For another registered API app.
    pub fn app(mut self, app_id: impl Into<String>) -> Self {
        self.app_id = Some(app_id.into());
        self
    }

    pub fn version(mut self, version: TokenVersion) -> Self {
        self.version = version;
        self
    }

    /// A v1 token with the App ID URI as audience, as a v1 API usually receives.
    pub fn v1(self) -> Self {
        self.version(TokenVersion::V1).audience(Audience::AppIdUri)
    }

    pub fn audience(mut self, audience: Audience) -> Self {
        self.audience = audience;
        self
    }

    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    pub fn client_app(mut self, client_app_id: impl Into<String>) -> Self {
        self.client_app_id = Some(client_app_id.into());
        self
    }

    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Issued `ago` before now (so `exp` moves back too).
    pub fn issued_ago(mut self, ago: Duration) -> Self {
        self.issued_at_offset = -ago;
        self
    }

    /// Expired an hour ago (well past any validator's clock-skew leeway): issued two hours ago
    /// with a one-hour lifetime.
    pub fn expired(self) -> Self {
        self.issued_ago(Duration::hours(2)).lifetime(Duration::hours(1))
    }

    /// Not valid until `after` from now.
    pub fn not_before(mut self, after: Duration) -> Self {
        self.not_before_offset = after;
        self
    }

    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Sets (or overrides) one claim.
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// Leaves one claim out.
    pub fn without_claim(mut self, name: impl Into<String>) -> Self {
        self.remove_claims.push(name.into());
        self
    }

    pub fn tamper(mut self, tamper: Tamper) -> Self {
        self.tamper = Some(tamper);
        self
    }
}

/// A minted token and what is in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MintedToken {
    /// The compact JWT (`header.claims.signature`).
    pub token: String,
    pub header: Value,
    pub claims: Value,
    /// `exp` as a time.
    pub expires_at: DateTime<Utc>,
}

/// Everything about the user and app a token needs, resolved by the caller.
#[derive(Debug, Clone)]
pub(crate) struct Subject<'a> {
    pub tenant_id: &'a str,
    pub user_id: &'a str,
    pub display_name: &'a str,
    pub user_principal_name: &'a str,
    pub api_client_id: &'a str,
    pub app_id_uri: &'a str,
    /// `{authority}/{tid}/v2.0` for this tenant.
    pub issuer_v2: String,
}

/// `https://sts.windows.net/{tid}/`, the v1 issuer (real Entra's, even in the simulator).
pub fn issuer_v1(tenant_id: &str) -> String {
    format!("https://sts.windows.net/{tenant_id}/")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(value: &Value) -> String {
    b64(value.to_string().as_bytes())
}

/// A stable, app-specific opaque id, like Entra's pairwise `sub`.
pub(crate) fn pairwise_sub(user_id: &str, app_id: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{user_id}:{app_id}").as_bytes(),
    );
    b64(digest.as_ref())
}

fn random_id() -> String {
    b64(uuid::Uuid::new_v4().as_bytes())
}

/// The correct claims for `spec`, then its overrides.
pub(crate) fn claims(
    spec: &ApiToken,
    subject: &Subject<'_>,
    now: DateTime<Utc>,
) -> (Map<String, Value>, DateTime<Utc>) {
    let issued = now + spec.issued_at_offset;
    let expires = issued + spec.lifetime;
    let audience = match &spec.audience {
        Audience::ClientId => subject.api_client_id.to_owned(),
        Audience::AppIdUri => subject.app_id_uri.to_owned(),
        Audience::Other(other) => other.clone(),
    };
    let client_app = spec.client_app_id.as_deref().unwrap_or(DEFAULT_CLIENT_APP_ID);
    let mut claims = Map::new();
    let mut set = |name: &str, value: Value| {
        claims.insert(name.to_owned(), value);
    };
    set("aud", json!(audience));
    set("iat", json!(issued.timestamp()));
    set("nbf", json!((issued + spec.not_before_offset).timestamp()));
    set("exp", json!(expires.timestamp()));
    set("aio", json!(random_id()));
    set("name", json!(subject.display_name));
    set("oid", json!(subject.user_id));
    set("rh", json!(format!("0.{}.", random_id())));
    if !spec.scopes.is_empty() {
        set("scp", json!(spec.scopes.join(" ")));
    }
    set("sub", json!(pairwise_sub(subject.user_id, subject.api_client_id)));
    set("tid", json!(subject.tenant_id));
    set("uti", json!(random_id()));
    match spec.version {
        TokenVersion::V1 => {
            set("iss", json!(issuer_v1(subject.tenant_id)));
            set("ver", json!("1.0"));
            set("acr", json!("1"));
            set("amr", json!(["pwd"]));
            set("appid", json!(client_app));
            set("appidacr", json!("0"));
            set("unique_name", json!(subject.user_principal_name));
            set("upn", json!(subject.user_principal_name));
        }
        TokenVersion::V2 => {
            set("iss", json!(subject.issuer_v2));
            set("ver", json!("2.0"));
            set("azp", json!(client_app));
            set("azpacr", json!("0"));
            set("preferred_username", json!(subject.user_principal_name));
        }
    }
    if let Some(issuer) = &spec.issuer {
        claims.insert("iss".to_owned(), json!(issuer));
    }
    for (name, value) in &spec.claims {
        claims.insert(name.clone(), value.clone());
    }
    for name in &spec.remove_claims {
        claims.remove(name);
    }
    (claims, expires)
}

/// Signs `claims` as `spec` asks: normally RS256 with `current`; a [`Tamper`] changes exactly the
/// header or signature. `rogue` is a key that is never published.
pub(crate) fn sign(
    spec: &ApiToken,
    claims: Map<String, Value>,
    current: &SigningKey,
    rogue: &SigningKey,
) -> Result<(String, Value), KeyError> {
    let (alg, header_kid, signer) = match &spec.tamper {
        None | Some(Tamper::BadSignature) => ("RS256", current.kid().to_owned(), Some(current)),
        Some(Tamper::UnknownKey) => ("RS256", rogue.kid().to_owned(), Some(rogue)),
        Some(Tamper::WrongKey) => ("RS256", current.kid().to_owned(), Some(rogue)),
        Some(Tamper::Kid(kid)) => ("RS256", kid.clone(), Some(current)),
        Some(Tamper::AlgNone) => ("none", current.kid().to_owned(), None),
        Some(Tamper::Hs256) => ("HS256", current.kid().to_owned(), None),
    };
    let mut header = json!({"typ": "JWT", "alg": alg, "kid": header_kid});
    if spec.version == TokenVersion::V1
        && let Some(object) = header.as_object_mut()
    {
        object.insert("x5t".to_owned(), json!(header_kid));
    }
    let signing_input = format!("{}.{}", b64_json(&header), b64_json(&Value::Object(claims)));
    let signature = match (&spec.tamper, signer) {
        (Some(Tamper::AlgNone), _) => Vec::new(),
        (Some(Tamper::Hs256), _) => {
            let key =
                aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, current.public_key_pem().as_bytes());
            aws_lc_rs::hmac::sign(&key, signing_input.as_bytes())
                .as_ref()
                .to_vec()
        }
        (tamper, Some(key)) => {
            let mut signature = key.sign_rs256(signing_input.as_bytes())?;
            if tamper == &Some(Tamper::BadSignature)
                && let Some(last) = signature.last_mut()
            {
                *last ^= 0x01;
            }
            signature
        }
        (_, None) => Vec::new(),
    };
    Ok((format!("{signing_input}.{}", b64(&signature)), header))
}

/// A JWT split and decoded, its signature not yet checked.
#[derive(Debug, Clone)]
pub(crate) struct ParsedJwt {
    pub header: Value,
    pub claims: Value,
    pub signing_input: String,
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWT; `None` when it is not one.
pub(crate) fn parse(token: &str) -> Option<ParsedJwt> {
    let mut parts = token.trim().split('.');
    let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let decode_json = |part: &str| -> Option<Value> {
        let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
        let value: Value = serde_json::from_slice(&bytes).ok()?;
        value.is_object().then_some(value)
    };
    Some(ParsedJwt {
        header: decode_json(header)?,
        claims: decode_json(claims)?,
        signing_input: format!("{header}.{claims}"),
        signature: URL_SAFE_NO_PAD.decode(signature).ok()?,
    })
}

/// The instant in a numeric date claim.
pub(crate) fn time_claim(claims: &Value, name: &str) -> Option<DateTime<Utc>> {
    claims[name]
        .as_i64()
        .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject<'static> {
        Subject {
            tenant_id: "tid",
            user_id: "oid",
            display_name: "Name",
            user_principal_name: "u@example.com",
            api_client_id: "api-client",
            app_id_uri: "api://api-client",
            issuer_v2: "http://host/tid/v2.0".to_owned(),
        }
    }

    #[test]
    fn overrides_apply_after_the_correct_claims() {
        let now = Utc::now();
        let spec = ApiToken::new("oid")
            .claim("tid", "other")
            .without_claim("oid")
            .scopes(Vec::<String>::new());
        let (claims, _) = claims(&spec, &subject(), now);
        assert_eq!(claims["tid"], "other");
        assert!(!claims.contains_key("oid"));
        assert!(!claims.contains_key("scp"));
    }

    #[test]
    fn a_signed_token_parses_back_and_verifies() {
        let now = Utc::now();
        let key = SigningKey::development(now).expect("dev key");
        let spec = ApiToken::new("oid");
        let (claims, _) = claims(&spec, &subject(), now);
        let (token, header) = sign(&spec, claims, &key, &key).expect("signed");
        let parsed = parse(&token).expect("a JWT");
        assert_eq!(parsed.header, header);
        assert_eq!(parsed.claims["aud"], "api-client");
        assert!(key.verify_rs256(parsed.signing_input.as_bytes(), &parsed.signature));
        assert!(parse("not.a-jwt").is_none());
    }
}
