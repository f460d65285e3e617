//! The Microsoft Graph client: one place for what every Graph call needs.
//!
//! - the base URL from config (`GRAPH_BASE_URL`), so tests, the simulator and national clouds
//!   point it elsewhere;
//! - a decorated `User-Agent` (`ISV|graphfeed|graphfeed/<version>`): SharePoint/OneDrive
//!   deprioritise undecorated traffic (graph-protocol.md §8);
//! - bounded timeouts;
//! - Graph's error envelope (`{"error":{"code","message","innerError":{...}}}`) parsed into a
//!   typed [`GraphError`] that says whether a retry can help and after how long (§1.6, §8).
//!
//! notify never calls Graph; connect, renew and process-changes do.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::client_state::ClientState;
use crate::config::GraphConfig;

/// The `User-Agent` every Graph call carries.
pub const USER_AGENT: &str = concat!("ISV|graphfeed|graphfeed/", env!("CARGO_PKG_VERSION"));

/// The longest `Retry-After` graphfeed honours (an hour); longer values are read as this.
pub const MAX_RETRY_AFTER_SECONDS: u64 = 3600;

/// A Graph call that did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    #[error("Graph answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// Codes of the `innerError` chain, outermost first (410 resync codes hide there).
        inner_codes: Vec<String>,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    },
    #[error("could not reach Graph: {reason}")]
    Transport { reason: String, timeout: bool },
    #[error("Graph's answer could not be read: {reason}")]
    Decode { reason: String },
}

impl GraphError {
    /// The HTTP status, when Graph answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Graph's error code, when Graph answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the same call may succeed later: transport failures, 429, 509 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status == 429 || *status >= 500,
            Self::Transport { .. } => true,
            Self::Decode { .. } => false,
        }
    }

    /// Graph's subscription quota (graph-protocol.md §1.5): a 403 whose message says "Maximum
    /// number of subscriptions has been reached".
    pub fn is_subscription_quota(&self) -> bool {
        match self {
            Self::Api { status, message, .. } => {
                *status == 403 && message.contains("Maximum number of subscriptions")
            }
            _ => false,
        }
    }

    /// How long Graph asked us to wait (`Retry-After`, in seconds).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default, alias = "innererror", alias = "innerError")]
    inner: Option<Box<InnerError>>,
}

#[derive(Deserialize)]
struct InnerError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default, alias = "innererror", alias = "innerError")]
    inner: Option<Box<InnerError>>,
    #[serde(default, rename = "request-id")]
    request_id: Option<String>,
}

/// Turns a non-success answer into a [`GraphError`].
pub fn error_from_parts(
    status: StatusCode,
    retry_after: Option<&str>,
    request_id: Option<&str>,
    body: &[u8],
) -> GraphError {
    // Bounded: a wild value must neither overflow a timestamp nor park a tenant for days.
    let retry_after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECONDS)));
    let (code, message, inner_codes, body_request_id) = match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(env) => {
            let mut codes = Vec::new();
            let mut request_id = None;
            let mut next = env.error.inner;
            while let Some(inner) = next {
                codes.extend(inner.code.clone());
                request_id = request_id.or(inner.request_id.clone());
                next = inner.inner;
            }
            (env.error.code, env.error.message, codes, request_id)
        }
        Err(_) => (
            status.canonical_reason().unwrap_or("unknown").to_owned(),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            Vec::new(),
            None,
        ),
    };
    GraphError::Api {
        status: status.as_u16(),
        code,
        message,
        inner_codes,
        request_id: request_id.map(str::to_owned).or(body_request_id),
        retry_after,
    }
}

/// A non-success answer as a [`GraphError`], with its `Location` header (a delta 410 carries the
/// link that restarts the enumeration there).
async fn read_failure(response: reqwest::Response) -> (GraphError, Option<String>) {
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header("retry-after");
    let request_id = header("request-id");
    let location = header("location");
    let body = response.bytes().await.unwrap_or_default();
    (
        error_from_parts(status, retry_after.as_deref(), request_id.as_deref(), &body),
        location,
    )
}

/// A Graph subscription as Graph returns it (the fields graphfeed uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub resource: String,
    pub change_type: String,
    pub notification_url: String,
    #[serde(default)]
    pub lifecycle_notification_url: Option<String>,
    pub expiration_date_time: DateTime<Utc>,
    #[serde(default)]
    pub creator_id: Option<String>,
    #[serde(default)]
    pub application_id: Option<String>,
}

/// The signed-in user's drive (`GET /me/drive`), the fields graphfeed uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drive {
    pub id: String,
    /// `personal`, `business` or `documentLibrary`.
    #[serde(default)]
    pub drive_type: String,
}

impl Drive {
    /// The subscription resource for this drive: OneDrive for Business accepts only the root by
    /// drive id; personal drives use `me/drive/root` (graph-protocol.md §1.4).
    pub fn subscription_resource(&self) -> String {
        if self.drive_type == "personal" {
            "me/drive/root".to_owned()
        } else {
            format!("drives/{}/root", self.id)
        }
    }
}

/// A subscription as Graph returns it on GET, including the clientState graphfeed set.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionWithState {
    #[serde(flatten)]
    pub subscription: Subscription,
    #[serde(default)]
    client_state: Option<String>,
}

impl SubscriptionWithState {
    /// Secret: compare it, never log it.
    pub fn client_state(&self) -> Option<&str> {
        self.client_state.as_deref()
    }
}

impl std::fmt::Debug for SubscriptionWithState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionWithState")
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

/// The id of the existing subscription a 409 names: `Subscription Id <id> already exists for the
/// requested combination` (graph-protocol.md §1.6).
pub fn conflicting_subscription_id(error: &GraphError) -> Option<String> {
    let GraphError::Api {
        status: 409, message, ..
    } = error
    else {
        return None;
    };
    let rest = message.split("Subscription Id ").nth(1)?;
    let id = rest.split_whitespace().next()?;
    Some(
        id.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
            .to_owned(),
    )
    .filter(|s| !s.is_empty())
}

/// What graphfeed asks Graph to create.
#[derive(Debug)]
pub struct NewSubscription<'a> {
    /// `me/drive/root` or `drives/{id}/root`.
    pub resource: &'a str,
    pub notification_url: &'a str,
    pub lifecycle_notification_url: Option<&'a str>,
    pub expiration: DateTime<Utc>,
    pub client_state: &'a ClientState,
}

/// The Graph client.
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    base: String,
}

impl GraphClient {
    pub fn new(config: &GraphConfig) -> Result<Self, GraphError> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(5))
            .timeout(config.timeout)
            .build()
            .map_err(|e| GraphError::Transport {
                reason: e.to_string(),
                timeout: false,
            })?;
        Ok(Self {
            http,
            base: config.base_url.as_str().trim_end_matches('/').to_owned(),
        })
    }

    fn request(&self, method: Method, path: &str, token: &SecretString) -> RequestBuilder {
        self.http
            .request(method, format!("{}/{}", self.base, path.trim_start_matches('/')))
            .bearer_auth(token.expose_secret())
            .header("client-request-id", uuid::Uuid::new_v4().to_string())
    }

    async fn send(&self, request: RequestBuilder) -> Result<reqwest::Response, GraphError> {
        let response = request.send().await.map_err(|e| GraphError::Transport {
            timeout: e.is_timeout(),
            reason: e.to_string(),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(read_failure(response).await.0)
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, GraphError> {
        let response = self.send(request).await?;
        let bytes = response.bytes().await.map_err(|e| GraphError::Transport {
            timeout: e.is_timeout(),
            reason: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| GraphError::Decode {
            reason: e.to_string(),
        })
    }

    /// `POST /subscriptions` (graph-protocol.md §1.1). Graph validates the notification URLs
    /// before it answers, so this call can take up to ~10 s per URL.
    pub async fn create_subscription(
        &self,
        token: &SecretString,
        new: &NewSubscription<'_>,
    ) -> Result<Subscription, GraphError> {
        let mut body = serde_json::json!({
            "changeType": "updated",
            "notificationUrl": new.notification_url,
            "resource": new.resource,
            "expirationDateTime": new.expiration.to_rfc3339_opts(SecondsFormat::Millis, true),
            "clientState": new.client_state.expose(),
            "latestSupportedTlsVersion": "v1_2",
        });
        if let Some(url) = new.lifecycle_notification_url {
            body["lifecycleNotificationUrl"] = url.into();
        }
        self.json(self.request(Method::POST, "subscriptions", token).json(&body))
            .await
    }

    /// `GET /me/drive`: the signed-in user's drive.
    pub async fn my_drive(&self, token: &SecretString) -> Result<Drive, GraphError> {
        self.json(self.request(Method::GET, "me/drive", token)).await
    }

    /// `GET /subscriptions/{id}` with the clientState it was created with.
    pub async fn get_subscription_with_state(
        &self,
        token: &SecretString,
        id: &str,
    ) -> Result<SubscriptionWithState, GraphError> {
        self.json(self.request(Method::GET, &format!("subscriptions/{id}"), token))
            .await
    }

    /// `GET /subscriptions/{id}`.
    pub async fn get_subscription(&self, token: &SecretString, id: &str) -> Result<Subscription, GraphError> {
        self.json(self.request(Method::GET, &format!("subscriptions/{id}"), token))
            .await
    }

    /// `PATCH /subscriptions/{id}` with a new expiry: renews and reauthorizes in one call (§1.1, §4).
    pub async fn renew_subscription(
        &self,
        token: &SecretString,
        id: &str,
        expiration: DateTime<Utc>,
    ) -> Result<Subscription, GraphError> {
        let body = serde_json::json!({"expirationDateTime": expiration.to_rfc3339_opts(SecondsFormat::Millis, true)});
        self.json(
            self.request(Method::PATCH, &format!("subscriptions/{id}"), token)
                .json(&body),
        )
        .await
    }

    /// `DELETE /subscriptions/{id}`; a subscription Graph no longer knows (404) counts as deleted.
    pub async fn delete_subscription(&self, token: &SecretString, id: &str) -> Result<(), GraphError> {
        match self
            .send(self.request(Method::DELETE, &format!("subscriptions/{id}"), token))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One delta page (graph-protocol.md §5): `link` is a path (the drive's first call, see
    /// [`crate::delta::initial_path`]) or a link Graph gave, GET verbatim. A link to another
    /// origin is refused, so the token never leaves for a host that is not Graph.
    pub async fn delta_page(
        &self,
        token: &SecretString,
        link: &str,
    ) -> Result<crate::delta::DeltaPage, crate::delta::DeltaError> {
        use crate::delta::{DeltaError, classify, parse_page};
        let url = if link.starts_with("https://") || link.starts_with("http://") {
            let parsed = url::Url::parse(link).map_err(|_| DeltaError::ForeignLink)?;
            let base = url::Url::parse(&self.base).map_err(|_| DeltaError::ForeignLink)?;
            if parsed.origin() != base.origin() {
                return Err(DeltaError::ForeignLink);
            }
            link.to_owned()
        } else {
            format!("{}/{}", self.base, link.trim_start_matches('/'))
        };
        let request = self
            .http
            .get(url)
            .bearer_auth(token.expose_secret())
            .header("client-request-id", uuid::Uuid::new_v4().to_string());
        let transport = |e: reqwest::Error| {
            DeltaError::Graph(GraphError::Transport {
                timeout: e.is_timeout(),
                reason: e.without_url().to_string(),
            })
        };
        let response = request.send().await.map_err(transport)?;
        if !response.status().is_success() {
            let (error, location) = read_failure(response).await;
            return Err(classify(error, location));
        }
        parse_page(&response.bytes().await.map_err(transport)?)
    }

    /// `POST /subscriptions/{id}/reauthorize` (§4). Never within 10 minutes of a PATCH.
    pub async fn reauthorize_subscription(&self, token: &SecretString, id: &str) -> Result<(), GraphError> {
        self.send(self.request(Method::POST, &format!("subscriptions/{id}/reauthorize"), token))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_error_envelope_becomes_a_typed_error() {
        let body = br#"{"error":{"code":"ResourceNotFound","message":"The object was not found.","innerError":{"date":"2026-11-22T10:00:00","request-id":"r-1","client-request-id":"c-1"}}}"#;
        let err = error_from_parts(StatusCode::NOT_FOUND, None, None, body);
        assert_eq!(err.status(), Some(404));
        assert_eq!(err.code(), Some("ResourceNotFound"));
        assert!(!err.is_retryable());
        assert!(matches!(err, GraphError::Api { request_id: Some(ref r), .. } if r == "r-1"));
    }

    #[test]
    fn throttling_is_retryable_after_the_time_graph_asks() {
        let body = br#"{"error":{"code":"activityLimitReached","message":"throttled"}}"#;
        let err = error_from_parts(StatusCode::TOO_MANY_REQUESTS, Some("7"), None, body);
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_wild_retry_after_is_read_as_an_hour() {
        let err = error_from_parts(StatusCode::SERVICE_UNAVAILABLE, Some("99999999999"), None, b"");
        assert_eq!(
            err.retry_after(),
            Some(Duration::from_secs(MAX_RETRY_AFTER_SECONDS))
        );
    }

    #[test]
    fn inner_error_codes_are_collected_outermost_first() {
        let body = br#"{"error":{"code":"resyncRequired","message":"m","innererror":{"code":"resyncChangesApplyDifferences","innererror":{"code":"deeper"}}}}"#;
        let err = error_from_parts(StatusCode::GONE, None, None, body);
        assert!(
            matches!(err, GraphError::Api { ref inner_codes, .. } if inner_codes == &["resyncChangesApplyDifferences", "deeper"])
        );
    }

    #[test]
    fn a_non_json_error_body_still_yields_an_error() {
        let err = error_from_parts(StatusCode::BAD_GATEWAY, None, None, b"<html>bad gateway</html>");
        assert!(err.is_retryable());
        assert_eq!(err.code(), Some("Bad Gateway"));
    }

    #[test]
    fn a_409_names_the_subscription_to_adopt() {
        let body = br#"{"error":{"code":"Conflict","message":"Subscription Id 7f105c7d-2dc5-4530-97cd-4e7ae6534c07 already exists for the requested combination"}}"#;
        let err = error_from_parts(StatusCode::CONFLICT, None, None, body);
        assert_eq!(
            conflicting_subscription_id(&err).as_deref(),
            Some("7f105c7d-2dc5-4530-97cd-4e7ae6534c07")
        );
        let other = error_from_parts(StatusCode::BAD_REQUEST, None, None, body);
        assert_eq!(conflicting_subscription_id(&other), None);
    }

    #[test]
    fn business_drives_subscribe_by_drive_id_and_personal_ones_at_me() {
        let business = Drive {
            id: "b!abc".into(),
            drive_type: "business".into(),
        };
        assert_eq!(business.subscription_resource(), "drives/b!abc/root");
        let personal = Drive {
            id: "0123456789abcdef".into(),
            drive_type: "personal".into(),
        };
        assert_eq!(personal.subscription_resource(), "me/drive/root");
    }

    #[test]
    fn the_user_agent_is_decorated_as_isv_traffic() {
        assert!(USER_AGENT.starts_with("ISV|graphfeed|graphfeed/"));
    }
}
