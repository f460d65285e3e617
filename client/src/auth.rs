//! Signing in and staying signed in.
//!
//! `graphfeed login` runs the device authorization grant of a public client app (RFC 8628 as
//! Entra serves it; graph-sim's `entra::device`): a device code for graphfeed's API scope and
//! `offline_access`, a user code the person enters at the verification page, and polls of the
//! token endpoint that honour `interval`, `slow_down` (+5 s), `authorization_pending`,
//! `authorization_declined`, `expired_token` and `bad_verification_code`. The refresh token it
//! yields is multi-resource, so a refresh grant then gets the Graph token uploads need
//! (graph-protocol.md §7.2).
//!
//! Both access tokens, the refresh token and the expiries are cached in `tokens.json`, mode 0600
//! ([`crate::secure_file`]). A token within a minute of its expiry is refreshed before use, and
//! every refresh stores the new refresh token Entra returns (rotation: the old one stops working
//! soon after). Tokens live in [`SecretString`]s and are never printed or logged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Paths, Settings};
use crate::console::Console;
use crate::error::{Error, describe};
use crate::secure_file;

/// The Graph scope uploads need.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/Files.ReadWrite";
/// `grant_type` of a device-code poll.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// A token with less than this left is refreshed before use.
const EXPIRY_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// RFC 8628 §3.5: after `slow_down`, poll this much less often.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
const CACHE_VERSION: u32 = 1;

/// Which access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// graphfeed's API (`api_scope`).
    Api,
    /// Microsoft Graph ([`GRAPH_SCOPE`]).
    Graph,
}

impl Resource {
    fn scope(self, settings: &Settings) -> String {
        match self {
            Self::Api => settings.api_scope.clone(),
            Self::Graph => GRAPH_SCOPE.to_owned(),
        }
    }
}

/// An access token and when it stops working.
#[derive(Debug, Clone)]
struct AccessToken {
    secret: SecretString,
    expires_at: DateTime<Utc>,
    scope: String,
}

impl AccessToken {
    fn usable(&self, scope: &str, now: DateTime<Utc>) -> bool {
        self.scope == scope && now + EXPIRY_MARGIN < self.expires_at
    }
}

/// Who signed in, read from the API token's claims to say so (graphfeed's API validates the token;
/// the CLI only reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
}

impl Account {
    /// The claims of a JWT's payload, unverified; nothing when it is not a JWT.
    fn from_jwt(token: &str) -> Self {
        let claims = token
            .split('.')
            .nth(1)
            .and_then(|payload| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload.trim_end_matches('='))
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .unwrap_or(Value::Null);
        let claim = |name: &str| claims[name].as_str().map(str::to_owned);
        Self {
            username: claim("preferred_username")
                .or_else(|| claim("upn"))
                .or_else(|| claim("name")),
            tenant_id: claim("tid"),
            object_id: claim("oid"),
        }
    }

    /// `user@contoso.com (tenant …)`, or what is known of it.
    pub fn describe(&self) -> String {
        let who = self
            .username
            .clone()
            .unwrap_or_else(|| "an unnamed account".to_owned());
        match &self.tenant_id {
            Some(tenant) => format!("{who} (tenant {tenant})"),
            None => who,
        }
    }
}

/// What `tokens.json` holds.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    authority: String,
    tenant: String,
    client_id: String,
    #[serde(default)]
    account: Account,
    refresh_token: String,
    #[serde(default)]
    api: Option<StoredToken>,
    #[serde(default)]
    graph: Option<StoredToken>,
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    access_token: String,
    expires_at: DateTime<Utc>,
    scope: String,
}

impl From<&AccessToken> for StoredToken {
    fn from(token: &AccessToken) -> Self {
        Self {
            access_token: token.secret.expose_secret().to_owned(),
            expires_at: token.expires_at,
            scope: token.scope.clone(),
        }
    }
}

impl From<StoredToken> for AccessToken {
    fn from(stored: StoredToken) -> Self {
        Self {
            secret: SecretString::from(stored.access_token),
            expires_at: stored.expires_at,
            scope: stored.scope,
        }
    }
}

/// The cached sign-in.
#[derive(Debug)]
struct TokenCache {
    authority: String,
    tenant: String,
    client_id: String,
    account: Account,
    refresh_token: SecretString,
    api: Option<AccessToken>,
    graph: Option<AccessToken>,
}

impl TokenCache {
    fn load(path: &Path) -> Result<Option<Self>, Error> {
        let Some(bytes) = secure_file::read_if_exists(path).map_err(|e| Error::file("read", path, e))? else {
            return Ok(None);
        };
        let file: CacheFile = serde_json::from_slice(&bytes).map_err(|e| Error::CorruptTokenCache {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        if file.version != CACHE_VERSION {
            return Err(Error::CorruptTokenCache {
                path: path.to_owned(),
                detail: format!("version {} is not {CACHE_VERSION}", file.version),
            });
        }
        Ok(Some(Self {
            authority: file.authority,
            tenant: file.tenant,
            client_id: file.client_id,
            account: file.account,
            refresh_token: SecretString::from(file.refresh_token),
            api: file.api.map(AccessToken::from),
            graph: file.graph.map(AccessToken::from),
        }))
    }

    fn save(&self, path: &Path) -> Result<(), Error> {
        let file = CacheFile {
            version: CACHE_VERSION,
            authority: self.authority.clone(),
            tenant: self.tenant.clone(),
            client_id: self.client_id.clone(),
            account: self.account.clone(),
            refresh_token: self.refresh_token.expose_secret().to_owned(),
            api: self.api.as_ref().map(StoredToken::from),
            graph: self.graph.as_ref().map(StoredToken::from),
        };
        let mut json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::file("write", path, std::io::Error::other(e)))?;
        json.push(b'\n');
        secure_file::write_private(path, &json).map_err(|e| Error::file("write", path, e))
    }

    fn token(&self, resource: Resource) -> Option<&AccessToken> {
        match resource {
            Resource::Api => self.api.as_ref(),
            Resource::Graph => self.graph.as_ref(),
        }
    }

    fn set_token(&mut self, resource: Resource, token: AccessToken) {
        match resource {
            Resource::Api => self.api = Some(token),
            Resource::Graph => self.graph = Some(token),
        }
    }

    /// The authority, tenant and client this sign-in is for, as one readable string.
    fn identity(authority: &str, tenant: &str, client_id: &str) -> String {
        format!("{authority}/{tenant} (client {client_id})")
    }
}

/// An error answer of the token or devicecode endpoint (graph-protocol.md §7.3).
#[derive(Debug)]
struct EntraFailure {
    status: u16,
    error: String,
    /// The first line of `error_description` (Entra adds trace and correlation ids below it).
    description: String,
    retry_after: Option<Duration>,
}

impl EntraFailure {
    fn busy(&self) -> bool {
        self.status == 429 || self.status >= 500 || self.error == "temporarily_unavailable"
    }

    fn into_error(self) -> Error {
        match self.error.as_str() {
            "invalid_grant" | "interaction_required" => Error::SignInExpired {
                detail: self.description,
            },
            _ if self.busy() => Error::Busy {
                service: "Microsoft Entra",
                detail: self.description,
                retry_after: self.retry_after,
            },
            _ => Error::Entra {
                error: self.error,
                description: self.description,
            },
        }
    }
}

/// A token answer. Not `Debug`: it holds tokens in the clear until they go into secrets.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    /// Seconds; a number in v2 answers, a string in some v1 ones.
    expires_in: Value,
}

impl TokenAnswer {
    fn access_token(&self, asked_scope: &str, now: DateTime<Utc>) -> AccessToken {
        let seconds = match &self.expires_in {
            Value::Number(n) => n.as_i64().unwrap_or(0),
            Value::String(s) => s.trim().parse().unwrap_or(0),
            _ => 0,
        };
        AccessToken {
            secret: SecretString::from(self.access_token.clone()),
            // At most a day: a number no token endpoint sends cannot overflow the date.
            expires_at: now + chrono::TimeDelta::seconds(seconds.clamp(0, 86_400)),
            scope: asked_scope.to_owned(),
        }
    }
}

/// POSTs a form to `{authority}/{tenant}/oauth2/v2.0/{endpoint}`: the JSON answer, or Entra's
/// refusal.
async fn post_entra(
    http: &reqwest::Client,
    settings: &Settings,
    endpoint: &str,
    form: &[(&str, &str)],
) -> Result<Result<Value, EntraFailure>, Error> {
    let url = settings
        .authority
        .join(&format!("/{}/oauth2/v2.0/{endpoint}", settings.tenant));
    let response = http
        .post(&url)
        .form(form)
        .send()
        .await
        .map_err(|e| Error::unreachable("Microsoft Entra", &url, e))?;
    let status = response.status().as_u16();
    let retry_after = crate::api::retry_after(response.headers());
    let text = response.text().await.map_err(|e| Error::BadAnswer {
        service: "Microsoft Entra",
        detail: describe(e),
    })?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        if body.is_object() {
            return Ok(Ok(body));
        }
        return Err(Error::BadAnswer {
            service: "Microsoft Entra",
            detail: format!("{url} answered {status} without a JSON object"),
        });
    }
    let error = body["error"]
        .as_str()
        .map_or_else(|| format!("http_{status}"), str::to_owned);
    let description = body["error_description"]
        .as_str()
        .and_then(|d| d.lines().next())
        .map_or_else(|| format!("{url} answered {status}"), str::to_owned);
    Ok(Err(EntraFailure {
        status,
        error,
        description,
        retry_after,
    }))
}

fn token_answer(body: Value) -> Result<TokenAnswer, Error> {
    serde_json::from_value(body).map_err(|e| Error::BadAnswer {
        service: "Microsoft Entra",
        detail: format!("a token answer without its fields ({e})"),
    })
}

/// The refresh grant of a public client (no secret): a token for `scope` and a new refresh token.
async fn redeem_refresh_token(
    http: &reqwest::Client,
    settings: &Settings,
    refresh_token: &SecretString,
    scope: &str,
) -> Result<TokenAnswer, Error> {
    let full_scope = format!("{scope} offline_access");
    let form = [
        ("client_id", settings.client_id.as_str()),
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose_secret()),
        ("scope", full_scope.as_str()),
    ];
    match post_entra(http, settings, "token", &form).await? {
        Ok(body) => token_answer(body),
        Err(failure) => Err(failure.into_error()),
    }
}

/// What the devicecode endpoint answers.
struct DeviceCode {
    device_code: SecretString,
    user_code: String,
    verification_uri: String,
    expires_in: u64,
    interval: u64,
}

impl DeviceCode {
    fn parse(body: &Value) -> Result<Self, Error> {
        let text = |name: &str| {
            body[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::BadAnswer {
                    service: "Microsoft Entra",
                    detail: format!("a device code answer without {name}"),
                })
        };
        let number = |name: &str, default: u64| match &body[name] {
            Value::Number(n) => n.as_u64().unwrap_or(default),
            Value::String(s) => s.trim().parse().unwrap_or(default),
            _ => default,
        };
        Ok(Self {
            device_code: SecretString::from(text("device_code")?),
            user_code: text("user_code")?,
            // Entra v2 says verification_uri; v1 and some others say verification_url.
            verification_uri: text("verification_uri").or_else(|_| text("verification_url"))?,
            expires_in: number("expires_in", 900),
            interval: number("interval", 5),
        })
    }
}

/// `graphfeed login`: the device-code flow, then the Graph token, cached. Returns who signed in.
pub async fn login(
    http: &reqwest::Client,
    settings: &Settings,
    paths: &Paths,
    console: &mut Console<'_>,
) -> Result<Account, Error> {
    let api_scope = format!("{} offline_access", settings.api_scope);
    let issued = match post_entra(
        http,
        settings,
        "devicecode",
        &[
            ("client_id", settings.client_id.as_str()),
            ("scope", api_scope.as_str()),
        ],
    )
    .await?
    {
        Ok(body) => DeviceCode::parse(&body)?,
        Err(failure) => return Err(failure.into_error()),
    };
    console.note(format!(
        "To sign in, open {} and enter the code {}",
        issued.verification_uri, issued.user_code
    ));
    if issued.verification_uri.ends_with("/_sim/devicelogin") {
        console.note("(graph-sim: that page explains how a simulated user approves the code)");
    }
    console.note(format!(
        "Waiting for the code to be approved (it expires in {} min; Ctrl-C to give up)...",
        issued.expires_in.div_ceil(60)
    ));
    let answer = poll_device_code(http, settings, &issued).await?;
    let now = Utc::now();
    let api = answer.access_token(&settings.api_scope, now);
    let refresh_token = answer.refresh_token.clone().ok_or_else(|| Error::BadAnswer {
        service: "Microsoft Entra",
        detail: "no refresh token, although offline_access was asked for".to_owned(),
    })?;
    let mut cache = TokenCache {
        authority: settings.authority.as_str().to_owned(),
        tenant: settings.tenant.clone(),
        client_id: settings.client_id.clone(),
        account: Account::from_jwt(answer.access_token.as_str()),
        refresh_token: SecretString::from(refresh_token),
        api: Some(api),
        graph: None,
    };
    // The API sign-in is kept whatever happens next: connect, status and changes need no more.
    cache.save(&paths.token_cache())?;
    match redeem_refresh_token(http, settings, &cache.refresh_token, GRAPH_SCOPE).await {
        Ok(graph) => {
            if let Some(rotated) = &graph.refresh_token {
                cache.refresh_token = SecretString::from(rotated.clone());
            }
            cache.graph = Some(graph.access_token(GRAPH_SCOPE, Utc::now()));
            cache.save(&paths.token_cache())?;
        }
        // Typically Files.ReadWrite not consented: only uploads need it, and they say so again.
        Err(e) => console.note(format!(
            "warning: signed in to graphfeed, but Microsoft Graph refused a token for uploads ({e}). \
             connect, status and changes work; for uploads, consent to Files.ReadWrite for this \
             client app, then run `graphfeed login` again."
        )),
    }
    Ok(cache.account)
}

/// Polls the token endpoint until the code is approved, declined, expired or refused.
async fn poll_device_code(
    http: &reqwest::Client,
    settings: &Settings,
    issued: &DeviceCode,
) -> Result<TokenAnswer, Error> {
    let mut interval = Duration::from_secs(issued.interval.max(1));
    // Device codes live minutes (15 at Entra); a day bounds whatever the answer says.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(issued.expires_in.min(86_400));
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::DeviceCodeExpired);
        }
        let form = [
            ("grant_type", DEVICE_CODE_GRANT),
            ("client_id", settings.client_id.as_str()),
            ("device_code", issued.device_code.expose_secret()),
        ];
        let failure = match post_entra(http, settings, "token", &form).await? {
            Ok(body) => return token_answer(body),
            Err(failure) => failure,
        };
        match failure.error.as_str() {
            "authorization_pending" => {}
            "slow_down" => interval += SLOW_DOWN_STEP,
            "expired_token" | "code_expired" => return Err(Error::DeviceCodeExpired),
            "authorization_declined" | "access_denied" => return Err(Error::DeviceCodeDeclined),
            "bad_verification_code" => {
                return Err(Error::DeviceCodeUnknown {
                    detail: failure.description,
                });
            }
            // A busy token endpoint is waited out like a pending code, until the code expires.
            _ if failure.busy() => {
                if let Some(after) = failure.retry_after {
                    tokio::time::sleep(after.min(Duration::from_secs(30))).await;
                }
            }
            _ => return Err(failure.into_error()),
        }
    }
}

/// `graphfeed logout`: forgets the cached tokens. `false` when there were none.
pub fn logout(paths: &Paths) -> Result<bool, Error> {
    // Saved upload sessions hold pre-authorised upload URLs: they go with the sign-in.
    let uploads = paths.uploads_dir();
    match std::fs::remove_dir_all(&uploads) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::file("delete", uploads, e)),
    }
    let path = paths.token_cache();
    secure_file::remove_if_exists(&path).map_err(|e| Error::file("delete", path, e))
}

/// The signed-in user's tokens for one command: cached ones while they last, refreshed ones after.
pub struct Session<'a> {
    http: &'a reqwest::Client,
    settings: &'a Settings,
    path: PathBuf,
    cache: TokenCache,
    /// Resources refreshed after a 401 during this command (at most once each).
    refreshed_after_rejection: HashSet<Resource>,
}

impl<'a> Session<'a> {
    /// The cached sign-in for these settings; [`Error::NotSignedIn`] without one.
    pub fn load(http: &'a reqwest::Client, settings: &'a Settings, paths: &Paths) -> Result<Self, Error> {
        let path = paths.token_cache();
        let cache = TokenCache::load(&path)?.ok_or(Error::NotSignedIn)?;
        let same = cache.authority == settings.authority.as_str()
            && cache.tenant.eq_ignore_ascii_case(&settings.tenant)
            && cache.client_id.eq_ignore_ascii_case(&settings.client_id);
        if !same {
            return Err(Error::SignedInElsewhere {
                cached: TokenCache::identity(&cache.authority, &cache.tenant, &cache.client_id),
                configured: TokenCache::identity(
                    settings.authority.as_str(),
                    &settings.tenant,
                    &settings.client_id,
                ),
            });
        }
        Ok(Self {
            http,
            settings,
            path,
            cache,
            refreshed_after_rejection: HashSet::new(),
        })
    }

    pub fn account(&self) -> &Account {
        &self.cache.account
    }

    /// A token for `resource` that is good for at least another minute.
    pub async fn access_token(&mut self, resource: Resource) -> Result<SecretString, Error> {
        let scope = resource.scope(self.settings);
        match self.cache.token(resource) {
            Some(token) if token.usable(&scope, Utc::now()) => Ok(token.secret.clone()),
            _ => self.refresh(resource).await,
        }
    }

    /// A new token for `resource` from the refresh token, which is replaced by the one Entra
    /// returns; both are saved before the token is used.
    pub async fn refresh(&mut self, resource: Resource) -> Result<SecretString, Error> {
        let scope = resource.scope(self.settings);
        // Another graphfeed process (a `changes --follow` beside an upload) may have rotated the
        // refresh token since this one started: redeem the newest, and take its tokens too.
        if let Ok(Some(newer)) = TokenCache::load(&self.path)
            && newer.refresh_token.expose_secret() != self.cache.refresh_token.expose_secret()
        {
            self.cache = newer;
            if let Some(token) = self.cache.token(resource)
                && token.usable(&scope, Utc::now())
            {
                return Ok(token.secret.clone());
            }
        }
        let answer =
            redeem_refresh_token(self.http, self.settings, &self.cache.refresh_token, &scope).await?;
        if let Some(rotated) = &answer.refresh_token {
            self.cache.refresh_token = SecretString::from(rotated.clone());
        }
        let token = answer.access_token(&scope, Utc::now());
        let secret = token.secret.clone();
        self.cache.set_token(resource, token);
        self.cache.save(&self.path)?;
        Ok(secret)
    }

    /// After a 401: a refreshed token to retry with, once per resource and command; `None` when
    /// this command already did that (the refusal is then reported).
    pub async fn refresh_after_rejection(
        &mut self,
        resource: Resource,
    ) -> Result<Option<SecretString>, Error> {
        if !self.refreshed_after_rejection.insert(resource) {
            return Ok(None);
        }
        self.refresh(resource).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::secure_file::tests::temp_dir;

    fn cache() -> TokenCache {
        TokenCache {
            authority: "http://127.0.0.1:3001".into(),
            tenant: "organizations".into(),
            client_id: "client".into(),
            account: Account::default(),
            refresh_token: SecretString::from("simrt.secret-refresh"),
            api: Some(AccessToken {
                secret: SecretString::from("api-secret"),
                expires_at: Utc::now() + chrono::TimeDelta::hours(1),
                scope: "api://x/access_as_user".into(),
            }),
            graph: None,
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_token_cache_file_is_0600_and_reads_back_what_was_saved() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("token-cache");
        let path = dir.join("graphfeed").join("tokens.json");

        cache().save(&path).unwrap();

        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = TokenCache::load(&path).unwrap().unwrap();
        assert_eq!(loaded.refresh_token.expose_secret(), "simrt.secret-refresh");
        assert_eq!(
            loaded.api.as_ref().map(|t| t.secret.expose_secret().to_owned()),
            Some("api-secret".to_owned())
        );
        assert!(loaded.graph.is_none());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_cache_in_memory_never_shows_a_token_when_debug_printed() {
        let shown = format!("{:?}", cache());
        assert!(!shown.contains("api-secret"), "{shown}");
        assert!(!shown.contains("simrt.secret-refresh"), "{shown}");
    }

    #[test]
    fn a_token_is_refreshed_a_minute_before_it_expires_or_when_the_scope_changed() {
        let now = Utc::now();
        let token = AccessToken {
            secret: SecretString::from("t"),
            expires_at: now + chrono::TimeDelta::seconds(90),
            scope: "s".into(),
        };
        assert!(token.usable("s", now));
        assert!(!token.usable("s", now + chrono::TimeDelta::seconds(31)));
        assert!(!token.usable("other", now));
    }

    #[test]
    fn the_account_is_read_from_the_jwt_payload_and_a_non_jwt_gives_nothing() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"preferred_username":"ada@contoso.com","tid":"t-1","oid":"o-1"}"#);
        let account = Account::from_jwt(&format!("e30.{payload}.sig"));
        assert_eq!(account.username.as_deref(), Some("ada@contoso.com"));
        assert_eq!(account.describe(), "ada@contoso.com (tenant t-1)");
        assert_eq!(Account::from_jwt("simgraph.opaque"), Account::default());
    }

    #[test]
    fn entra_refusals_map_to_sign_in_again_busy_or_the_entra_error() {
        let failure = |status: u16, error: &str| EntraFailure {
            status,
            error: error.into(),
            description: "AADSTS70008: expired".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(matches!(
            failure(400, "invalid_grant").into_error(),
            Error::SignInExpired { .. }
        ));
        assert!(matches!(
            failure(503, "temporarily_unavailable").into_error(),
            Error::Busy { .. }
        ));
        assert!(matches!(
            failure(400, "invalid_client").into_error(),
            Error::Entra { .. }
        ));
    }
}
