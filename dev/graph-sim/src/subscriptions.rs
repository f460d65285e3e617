//! Subscriptions: the model and every rule Graph applies to a driveItem subscription, free of HTTP
//! so unit tests can call them directly. The handlers in [`crate::graph::subscriptions`] only
//! translate requests into these calls.
//!
//! Rules and their sources (graph-protocol.md): fields and JSON shape §1.2; lifetime 42,300 min and
//! the 45-minute floor §1.3; resources, root-only business drives and no files §1.4; quota §1.5;
//! error texts §1.6; notification payloads §3.1 and §4; the automatic `reauthorizationRequired`
//! schedule §4 ([`next_reauthorization`]).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use url::Url;

use crate::drive::Drive;
use crate::errors::{self, GraphError};
use crate::identity::{Grant, Identity};
use crate::time::{graph_timestamp, offset_timestamp, parse_timestamp, to_ticks};

/// §1.3: driveItem's maximum lifetime.
pub const MAX_LIFETIME_MINUTES: i64 = 42_300;
/// §1.2: shorter requested lifetimes are silently raised to this.
pub const MIN_LIFETIME_MINUTES: i64 = 45;
/// §0 item 5 and §1.2: the subscription resource's limit.
pub const MAX_CLIENT_STATE_CHARS: usize = 128;
/// §1.2: the values Graph accepts for `latestSupportedTlsVersion`.
const TLS_VERSIONS: [&str; 4] = ["v1_0", "v1_1", "v1_2", "v1_3"];

/// The folder a subscription watches: its drive and the folder item (the root for root forms).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Target {
    pub drive_id: String,
    pub item_id: String,
}

/// A live subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub id: String,
    /// As the caller wrote it; Graph echoes it back unchanged.
    pub resource: String,
    pub application_id: String,
    pub change_type: String,
    pub client_state: Option<String>,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    pub expiration: DateTime<Utc>,
    pub creator_id: String,
    pub tenant_id: String,
    pub latest_supported_tls_version: String,
    pub notification_url_app_id: Option<String>,
    pub target: Target,
    pub created_at: DateTime<Utc>,
    /// Set by a `reauthorizationRequired` lifecycle event, cleared by reauthorize or PATCH (§4).
    pub needs_reauthorization: bool,
    pub last_reauthorized_at: Option<DateTime<Utc>>,
    /// When the automatic schedule last sent `reauthorizationRequired` (§4); a PATCH that moves
    /// the expiry starts the schedule again.
    pub reauthorization_reminded_at: Option<DateTime<Utc>>,
}

impl Subscription {
    /// A new subscription as a create makes it: `caller` is its creator and app, `target` the
    /// resolved resource ([`resolve_resource`]) and `expiration` already through
    /// [`effective_expiration`]. Creating and seeding both build it here, so a seeded subscription
    /// cannot differ from a created one.
    pub fn new(
        request: &CreateRequest,
        caller: &Grant,
        target: Target,
        expiration: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            resource: request.resource.clone(),
            application_id: caller.app_id.clone(),
            change_type: request.change_type.clone(),
            client_state: request.client_state.clone(),
            notification_url: request.notification_url.given.clone(),
            lifecycle_notification_url: request
                .lifecycle_notification_url
                .as_ref()
                .map(|url| url.given.clone()),
            expiration,
            creator_id: caller.user_id.clone(),
            tenant_id: caller.tenant_id.clone(),
            latest_supported_tls_version: request.latest_supported_tls_version.clone(),
            notification_url_app_id: request.notification_url_app_id.clone(),
            target,
            created_at: now,
            needs_reauthorization: false,
            last_reauthorized_at: None,
            reauthorization_reminded_at: None,
        }
    }

    /// Alive until the sim clock passes its expiry; Graph deletes it then (§1.6).
    pub fn is_alive(&self, now: DateTime<Utc>) -> bool {
        now < self.expiration
    }

    /// The subscription resource JSON of §1.2.
    pub fn to_graph_json(&self) -> Value {
        json!({
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": null,
            "lifecycleNotificationUrl": self.lifecycle_notification_url,
            "expirationDateTime": graph_timestamp(self.expiration),
            "creatorId": self.creator_id,
            "includeResourceData": false,
            "latestSupportedTlsVersion": self.latest_supported_tls_version,
            "encryptionCertificate": null,
            "encryptionCertificateId": null,
            "notificationUrlAppId": self.notification_url_app_id,
            "notificationContentType": "application/json",
        })
    }

    /// The `resource` of a change notification: the subscription's resource with a trailing slash
    /// and no leading one, as real OneDrive sends it (§3.1: `drives/driveid/root/`).
    pub fn notification_resource(&self) -> String {
        let trimmed = self.resource.trim().trim_start_matches('/');
        if trimmed.ends_with('/') {
            trimmed.to_owned()
        } else {
            format!("{trimmed}/")
        }
    }

    /// One change notification in the real OneDrive shape (§3.1): `resourceData` null and the
    /// expiry written with a -08:00 offset.
    pub fn change_notification(&self) -> Value {
        json!({
            "subscriptionId": self.id,
            "clientState": self.client_state,
            "resource": self.notification_resource(),
            "tenantId": self.tenant_id,
            "resourceData": null,
            "subscriptionExpirationDateTime": offset_timestamp(self.expiration),
            "changeType": "updated",
        })
    }

    /// One lifecycle notification (§4): no resource, the expiry in Graph's `Z` form.
    pub fn lifecycle_notification(&self, event: LifecycleEvent) -> Value {
        json!({
            "subscriptionId": self.id,
            "subscriptionExpirationDateTime": graph_timestamp(self.expiration),
            "tenantId": self.tenant_id,
            "clientState": self.client_state,
            "lifecycleEvent": event.as_str(),
        })
    }

    /// The combination that must be unique among live subscriptions (§1.6, 409).
    fn duplicate_key(&self) -> (&str, &str, &Target, &str) {
        (
            &self.application_id,
            &self.creator_id,
            &self.target,
            &self.change_type,
        )
    }
}

/// When the next automatic `reauthorizationRequired` is due, following §4's timing illustration
/// applied to the subscription's expiry: the first once at most `start` (180 minutes) is left;
/// after a reminder with more than `steady_below` (60 minutes) left, the next when half of what was
/// left remains (180 → 90 → 45 minutes left); below that every `steady_interval` (15 minutes).
/// `None` once the next one would not come before the expiry.
pub fn next_reauthorization(
    expiration: DateTime<Utc>,
    last_reminded: Option<DateTime<Utc>>,
    start: Duration,
    steady_below: Duration,
    steady_interval: Duration,
) -> Option<DateTime<Utc>> {
    let due = match last_reminded {
        None => expiration - start,
        Some(at) => {
            let left = expiration - at;
            if left > steady_below {
                at + left / 2
            } else {
                at + steady_interval.max(Duration::seconds(1))
            }
        }
    };
    (due < expiration).then_some(due)
}

/// The lifecycle events of §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LifecycleEvent {
    ReauthorizationRequired,
    SubscriptionRemoved,
    Missed,
}

impl LifecycleEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleEvent::ReauthorizationRequired => "reauthorizationRequired",
            LifecycleEvent::SubscriptionRemoved => "subscriptionRemoved",
            LifecycleEvent::Missed => "missed",
        }
    }
}

/// A creation request that passed the payload rules; the resource is not resolved yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub change_type: String,
    pub notification_url: WebhookUrl,
    pub lifecycle_notification_url: Option<WebhookUrl>,
    pub resource: String,
    pub expiration: DateTime<Utc>,
    pub client_state: Option<String>,
    pub latest_supported_tls_version: String,
    pub notification_url_app_id: Option<String>,
}

fn optional_string(object: &Map<String, Value>, name: &str) -> Result<Option<String>, ()> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(()),
    }
}

/// Reads a creation payload and applies the rules that need no state: required fields, changeType,
/// rich notifications, clientState length and the URL schemes.
pub fn parse_create(body: &[u8], allow_http_loopback: bool) -> Result<CreateRequest, GraphError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| GraphError::invalid_request(errors::MSG_BAD_PAYLOAD))?;
    parse_create_value(&value, allow_http_loopback)
}

/// [`parse_create`] for a payload already read as JSON (what seeding checks its input with).
pub fn parse_create_value(value: &Value, allow_http_loopback: bool) -> Result<CreateRequest, GraphError> {
    let bad_payload = || GraphError::invalid_request(errors::MSG_BAD_PAYLOAD);
    let object = value.as_object().ok_or_else(bad_payload)?;
    let text = |name: &str| optional_string(object, name).map_err(|()| bad_payload());

    let (Some(change_type), Some(notification_url), Some(resource), Some(expiration)) = (
        text("changeType")?,
        text("notificationUrl")?,
        text("resource")?,
        text("expirationDateTime")?,
    ) else {
        return Err(bad_payload());
    };
    let expiration = parse_timestamp(&expiration).ok_or_else(bad_payload)?;
    let client_state = text("clientState")?;
    let lifecycle_notification_url = text("lifecycleNotificationUrl")?;
    let notification_url_app_id = text("notificationUrlAppId")?;
    let tls = text("latestSupportedTlsVersion")?.unwrap_or_else(|| "v1_2".to_owned());
    let include_resource_data = match object.get("includeResourceData") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return Err(bad_payload()),
    };

    // §1.2/§1.4: drive root items support only `updated`.
    if change_type.trim() != "updated" {
        return Err(GraphError::invalid_request(format!(
            "Subscription creation failed: changeType '{change_type}' is not supported. \
             Drive root item and list change notifications support only the updated changeType."
        )));
    }
    // §6.0 and §1.6: no rich notifications for driveItem.
    if include_resource_data {
        return Err(GraphError::invalid_request(errors::MSG_NO_RICH_NOTIFICATIONS));
    }
    if client_state
        .as_ref()
        .is_some_and(|state| state.chars().count() > MAX_CLIENT_STATE_CHARS)
    {
        return Err(GraphError::invalid_request(format!(
            "clientState must be at most {MAX_CLIENT_STATE_CHARS} characters."
        )));
    }
    if !TLS_VERSIONS.contains(&tls.as_str()) {
        return Err(GraphError::invalid_request(format!(
            "latestSupportedTlsVersion '{tls}' is not one of v1_0, v1_1, v1_2, v1_3."
        )));
    }
    let notification_url = check_url(&notification_url, "notificationUrl", allow_http_loopback)?;
    let lifecycle_notification_url = lifecycle_notification_url
        .map(|raw| check_url(&raw, "lifecycleNotificationUrl", allow_http_loopback))
        .transpose()?;
    Ok(CreateRequest {
        change_type: "updated".to_owned(),
        notification_url,
        lifecycle_notification_url,
        resource,
        expiration,
        client_state,
        latest_supported_tls_version: tls,
        notification_url_app_id,
    })
}

/// A notification URL as the caller wrote it (Graph echoes that) and as parsed (for sending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub given: String,
    pub parsed: Url,
}

/// §1.2: notification URLs must be HTTPS. A local run may allow plain HTTP to a loopback host.
pub fn check_url(raw: &str, field: &str, allow_http_loopback: bool) -> Result<WebhookUrl, GraphError> {
    let invalid = || GraphError::invalid_request(format!("The {field} must be a valid URL that uses HTTPS."));
    let given = raw.trim().to_owned();
    let parsed = Url::parse(&given).map_err(|_| invalid())?;
    let allowed = match parsed.scheme() {
        "https" => parsed.host().is_some(),
        "http" => allow_http_loopback && is_loopback(&parsed),
        _ => false,
    };
    if allowed {
        Ok(WebhookUrl { given, parsed })
    } else {
        Err(invalid())
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
        Some(url::Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
        None => false,
    }
}

/// §1.3: rejects more than 42,300 minutes, raises less than 45 minutes.
pub fn effective_expiration(
    requested: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, GraphError> {
    if requested > now + Duration::minutes(MAX_LIFETIME_MINUTES) {
        return Err(GraphError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "ExtensionError",
            errors::expiration_too_far_message(MAX_LIFETIME_MINUTES),
        ));
    }
    let floor = now + Duration::minutes(MIN_LIFETIME_MINUTES);
    Ok(to_ticks(requested.max(floor)))
}

/// Which item of a drive a resource path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ItemRef {
    Root,
    Item(String),
}

/// Whose drive a resource path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DriveRef {
    Me,
    User(String),
    Drive(String),
}

/// Parses `me/drive/root`, `users/{id}/drive/root`, `drives/{id}/root` and the `.../items/{id}`
/// forms, tolerating a leading and a trailing slash (§1.4).
fn parse_resource(resource: &str) -> Option<(DriveRef, ItemRef)> {
    let trimmed = resource.trim().trim_matches('/');
    let segments: Vec<&str> = trimmed.split('/').collect();
    let keyword =
        |index: usize, word: &str| segments.get(index).is_some_and(|s| s.eq_ignore_ascii_case(word));
    let (drive, rest) = if keyword(0, "me") && keyword(1, "drive") {
        (DriveRef::Me, &segments[2..])
    } else if keyword(0, "users") && keyword(2, "drive") {
        (DriveRef::User(segments.get(1)?.to_string()), &segments[3..])
    } else if keyword(0, "drives") && segments.len() > 2 {
        (DriveRef::Drive(segments.get(1)?.to_string()), &segments[2..])
    } else {
        return None;
    };
    match rest {
        [root] if root.eq_ignore_ascii_case("root") => Some((drive, ItemRef::Root)),
        [items, id] if items.eq_ignore_ascii_case("items") && !id.is_empty() => {
            Some((drive, ItemRef::Item((*id).to_owned())))
        }
        _ => None,
    }
}

fn find_drive<'a>(drives: &'a HashMap<String, Drive>, id: &str) -> Option<&'a Drive> {
    drives.get(id).or_else(|| drives.get(&id.to_ascii_lowercase()))
}

/// Resolves a resource to the folder it watches, for the calling user (§1.4): another user's drive
/// is 403, a file is refused with Graph's text, and business drives allow the root only.
pub fn resolve_resource(
    resource: &str,
    caller: &Grant,
    identity: &Identity,
    drives: &HashMap<String, Drive>,
) -> Result<Target, GraphError> {
    let unsupported = || GraphError::invalid_request(errors::unsupported_resource_message(resource));
    let (drive_ref, item_ref) = parse_resource(resource).ok_or_else(unsupported)?;
    if caller.app_only {
        // No user behind the token: `/me` is meaningless and drives are refused, as Graph does
        // for personal drives.
        return Err(if drive_ref == DriveRef::Me {
            GraphError::delegated_only()
        } else {
            GraphError::access_denied()
        });
    }
    let drive = match drive_ref {
        DriveRef::Me => identity
            .users
            .get(&caller.user_id)
            .and_then(|user| drives.get(&user.drive_id))
            .ok_or_else(GraphError::item_not_found)?,
        DriveRef::User(user_id) => {
            let user = identity
                .users
                .get(&user_id)
                .or_else(|| identity.users.get(&user_id.to_ascii_lowercase()))
                .ok_or_else(GraphError::item_not_found)?;
            drives
                .get(&user.drive_id)
                .ok_or_else(GraphError::item_not_found)?
        }
        DriveRef::Drive(drive_id) => find_drive(drives, &drive_id).ok_or_else(GraphError::item_not_found)?,
    };
    if drive.owner_user_id != caller.user_id || drive.tenant_id != caller.tenant_id {
        return Err(GraphError::access_denied());
    }
    let item_id = match item_ref {
        ItemRef::Root => drive.root_id.clone(),
        ItemRef::Item(item_id) => {
            let item = drive
                .item(&item_id)
                .filter(|item| !item.deleted)
                .ok_or_else(GraphError::item_not_found)?;
            let is_root = item.id == drive.root_id;
            // §1.4: no file subscriptions; business drives: root only. Graph words both with the
            // item path, e.g. "resource '/drive/items/{item-id}/' is not supported."
            if !item.folder || (drive.business && !is_root) {
                return Err(GraphError::invalid_request(errors::unsupported_resource_message(
                    &format!("/drive/items/{}/", item.id),
                )));
            }
            item.id.clone()
        }
    };
    Ok(Target {
        drive_id: drive.id.clone(),
        item_id,
    })
}

/// The live subscription that a new one would duplicate, if any (§1.6, 409).
pub fn find_duplicate<'a>(
    subscriptions: impl IntoIterator<Item = &'a Subscription>,
    candidate: &Subscription,
    now: DateTime<Utc>,
) -> Option<&'a Subscription> {
    subscriptions
        .into_iter()
        .find(|existing| existing.is_alive(now) && existing.duplicate_key() == candidate.duplicate_key())
}

/// The 409 for a duplicate.
pub fn duplicate_error(existing: &Subscription) -> GraphError {
    GraphError::new(
        axum::http::StatusCode::CONFLICT,
        "Conflict",
        errors::duplicate_message(&existing.id),
    )
}

/// The 403 of §1.5 when a drive already has its maximum of live subscriptions.
pub fn quota_error() -> GraphError {
    GraphError::new(
        axum::http::StatusCode::FORBIDDEN,
        "ExtensionError",
        errors::MSG_QUOTA,
    )
}

/// The duplicate (§1.6, 409) and quota (§1.5, 403) rules for many new subscriptions at once,
/// built once from the live ones so that admitting n costs O(live + n) instead of a scan of every
/// live subscription per new one. Same checks, same order and same errors as a create's.
#[derive(Debug)]
pub(crate) struct Admission {
    max_per_drive: Option<usize>,
    per_drive: HashMap<String, usize>,
    /// Duplicate key → the id of the subscription holding it.
    holders: HashMap<(String, String, Target, String), String>,
}

impl Admission {
    /// From the live subscriptions (expired ones purged first).
    pub fn new<'a>(live: impl IntoIterator<Item = &'a Subscription>, max_per_drive: Option<usize>) -> Self {
        let mut admission = Self {
            max_per_drive,
            per_drive: HashMap::new(),
            holders: HashMap::new(),
        };
        for subscription in live {
            admission.count(subscription);
        }
        admission
    }

    fn owned_key(subscription: &Subscription) -> (String, String, Target, String) {
        let (app, creator, target, change_type) = subscription.duplicate_key();
        (
            app.to_owned(),
            creator.to_owned(),
            target.clone(),
            change_type.to_owned(),
        )
    }

    fn count(&mut self, subscription: &Subscription) {
        *self
            .per_drive
            .entry(subscription.target.drive_id.clone())
            .or_default() += 1;
        self.holders
            .insert(Self::owned_key(subscription), subscription.id.clone());
    }

    /// Admits a candidate, counting it against the ones after it, or says why a create would
    /// have been refused.
    pub fn admit(&mut self, candidate: &Subscription) -> Result<(), GraphError> {
        if let Some(existing) = self.holders.get(&Self::owned_key(candidate)) {
            return Err(GraphError::new(
                axum::http::StatusCode::CONFLICT,
                "Conflict",
                errors::duplicate_message(existing),
            ));
        }
        let on_drive = self
            .per_drive
            .get(&candidate.target.drive_id)
            .copied()
            .unwrap_or(0);
        if self.max_per_drive.is_some_and(|max| on_drive >= max) {
            return Err(quota_error());
        }
        self.count(candidate);
        Ok(())
    }
}

/// A PATCH body: at least one of the two properties (§1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRequest {
    pub expiration: Option<DateTime<Utc>>,
    pub notification_url: Option<WebhookUrl>,
}

/// Reads a PATCH body.
pub fn parse_update(body: &[u8], allow_http_loopback: bool) -> Result<UpdateRequest, GraphError> {
    let needs_property = || GraphError::invalid_request(errors::MSG_PATCH_NEEDS_PROPERTY);
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body)
            .map_err(|_| GraphError::invalid_request("Could not process subscription update payload."))?
    };
    let object = value.as_object().ok_or_else(needs_property)?;
    let text = |name: &str| {
        optional_string(object, name)
            .map_err(|()| GraphError::invalid_request(format!("The {name} property must be a string.")))
    };
    // §1.2: lifecycleNotificationUrl cannot be added or changed by PATCH.
    if object
        .get("lifecycleNotificationUrl")
        .is_some_and(|v| !v.is_null())
    {
        return Err(GraphError::invalid_request(
            "lifecycleNotificationUrl cannot be updated. Delete and recreate the subscription.",
        ));
    }
    let expiration = text("expirationDateTime")?
        .map(|raw| {
            parse_timestamp(&raw).ok_or_else(|| {
                GraphError::invalid_request(format!("'{raw}' is not a valid expirationDateTime."))
            })
        })
        .transpose()?;
    let notification_url = text("notificationUrl")?
        .map(|raw| check_url(&raw, "notificationUrl", allow_http_loopback))
        .transpose()?;
    if expiration.is_none() && notification_url.is_none() {
        return Err(needs_property());
    }
    Ok(UpdateRequest {
        expiration,
        notification_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::User;

    fn payload(extra: Value) -> Vec<u8> {
        let mut body = json!({
            "changeType": "updated",
            "notificationUrl": "https://example.test/hook",
            "resource": "me/drive/root",
            "expirationDateTime": "2030-01-01T00:00:00Z",
            "clientState": "secret",
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                body.insert(key.clone(), value.clone());
            }
        }
        serde_json::to_vec(&body).expect("json")
    }

    fn rejection(extra: Value) -> GraphError {
        parse_create(&payload(extra), false).expect_err("rejected")
    }

    #[test]
    fn a_complete_payload_is_accepted() {
        let request = parse_create(&payload(json!({})), false).expect("accepted");
        assert_eq!(request.resource, "me/drive/root");
        assert_eq!(request.latest_supported_tls_version, "v1_2");
    }

    #[test]
    fn missing_fields_and_bad_json_get_the_creation_payload_text() {
        assert_eq!(
            rejection(json!({"resource": null})).message,
            errors::MSG_BAD_PAYLOAD
        );
        assert_eq!(
            rejection(json!({"expirationDateTime": 5})).message,
            errors::MSG_BAD_PAYLOAD
        );
        let bad_json = parse_create(b"{not json", false).expect_err("rejected");
        assert_eq!(
            (bad_json.code.as_str(), bad_json.message.as_str()),
            ("InvalidRequest", errors::MSG_BAD_PAYLOAD)
        );
    }

    #[test]
    fn only_the_updated_change_type_is_accepted() {
        for change_type in ["created", "deleted", "updated,deleted", ""] {
            let error = rejection(json!({"changeType": change_type}));
            assert_eq!(error.code, "InvalidRequest", "{change_type}");
        }
    }

    #[test]
    fn rich_notifications_are_refused_with_the_file_services_text() {
        let error = rejection(json!({"includeResourceData": true}));
        assert_eq!(error.message, errors::MSG_NO_RICH_NOTIFICATIONS);
    }

    #[test]
    fn a_client_state_over_128_characters_is_refused() {
        assert!(parse_create(&payload(json!({"clientState": "é".repeat(128)})), false).is_ok());
        assert_eq!(
            rejection(json!({"clientState": "x".repeat(129)})).code,
            "InvalidRequest"
        );
    }

    #[test]
    fn urls_must_be_https_unless_loopback_http_is_allowed() {
        assert!(check_url("https://example.test/x", "notificationUrl", false).is_ok());
        assert!(check_url("http://127.0.0.1:9/x", "notificationUrl", false).is_err());
        for loopback in ["http://127.0.0.1:9/x", "http://localhost:9/x", "http://[::1]:9/x"] {
            assert!(check_url(loopback, "notificationUrl", true).is_ok(), "{loopback}");
        }
        assert!(check_url("http://example.test/x", "notificationUrl", true).is_err());
        assert!(check_url("ftp://example.test/x", "notificationUrl", true).is_err());
        let error = rejection(json!({"lifecycleNotificationUrl": "http://example.test/x"}));
        assert_eq!(error.code, "InvalidRequest");
    }

    #[test]
    fn an_expiration_over_42300_minutes_is_rejected_with_the_extension_error_text() {
        let now = Utc::now();
        let error = effective_expiration(now + Duration::minutes(42_301), now).expect_err("too far");
        assert_eq!(error.code, "ExtensionError");
        assert_eq!(
            error.message,
            "Subscription expiration can only be 42300 minutes in the future."
        );
        assert!(effective_expiration(now + Duration::minutes(42_300), now).is_ok());
    }

    #[test]
    fn an_expiration_under_45_minutes_is_raised_to_45_minutes() {
        let now = Utc::now();
        let raised = effective_expiration(now + Duration::minutes(5), now).expect("raised");
        assert_eq!(raised, to_ticks(now + Duration::minutes(45)));
        let past = effective_expiration(now - Duration::days(1), now).expect("raised");
        assert_eq!(past, to_ticks(now + Duration::minutes(45)));
    }

    #[test]
    fn resources_parse_in_every_documented_form() {
        let root = |resource: &str| parse_resource(resource).map(|(_, item)| item);
        assert_eq!(root("me/drive/root"), Some(ItemRef::Root));
        assert_eq!(root("/me/drive/root/"), Some(ItemRef::Root));
        assert_eq!(root("users/abc/drive/root"), Some(ItemRef::Root));
        assert_eq!(root("drives/abc/root"), Some(ItemRef::Root));
        assert_eq!(
            root("drives/abc/items/X!1"),
            Some(ItemRef::Item("X!1".to_owned()))
        );
        assert_eq!(root("me/drive"), None);
        assert_eq!(root("me/drive/root/children"), None);
        assert_eq!(root("me/messages"), None);
    }

    fn world(business: bool) -> (Identity, HashMap<String, Drive>, Grant, Drive) {
        let now = Utc::now();
        let drive = Drive::new("user-1", "tenant-1", business, now);
        let mut identity = Identity::default();
        identity.users.insert(
            "user-1".to_owned(),
            User {
                id: "user-1".to_owned(),
                tenant_id: "tenant-1".to_owned(),
                display_name: "One".to_owned(),
                user_principal_name: "one@example.com".to_owned(),
                drive_id: drive.id.clone(),
                app_id: "app".to_owned(),
            },
        );
        let grant = Grant {
            tenant_id: "tenant-1".to_owned(),
            user_id: "user-1".to_owned(),
            app_id: "app".to_owned(),
            expires_at: now + Duration::hours(1),
            app_only: false,
            scopes: None,
        };
        let mut drives = HashMap::new();
        drives.insert(drive.id.clone(), drive.clone());
        (identity, drives, grant, drive)
    }

    #[test]
    fn every_root_form_resolves_to_the_same_target() {
        let (identity, drives, grant, drive) = world(false);
        let expected = Target {
            drive_id: drive.id.clone(),
            item_id: drive.root_id.clone(),
        };
        for resource in [
            "me/drive/root".to_owned(),
            format!("/drives/{}/root/", drive.id),
            "users/user-1/drive/root".to_owned(),
            format!("me/drive/items/{}", drive.root_id),
        ] {
            assert_eq!(
                resolve_resource(&resource, &grant, &identity, &drives).expect(&resource),
                expected
            );
        }
    }

    #[test]
    fn a_file_cannot_be_subscribed_to_and_business_drives_allow_only_the_root() {
        let now = Utc::now();
        for business in [false, true] {
            let (identity, mut drives, grant, mut drive) = world(business);
            let file = drive
                .create_item(
                    &crate::drive::NewItem {
                        name: "f".into(),
                        size: 1,
                        ..Default::default()
                    },
                    now,
                )
                .expect("file")
                .item;
            let folder = drive
                .create_item(
                    &crate::drive::NewItem {
                        name: "d".into(),
                        folder: true,
                        ..Default::default()
                    },
                    now,
                )
                .expect("folder")
                .item;
            drives.insert(drive.id.clone(), drive.clone());
            let error = resolve_resource(&format!("me/drive/items/{}", file.id), &grant, &identity, &drives)
                .expect_err("file refused");
            assert_eq!(
                error.message,
                format!("resource '/drive/items/{}/' is not supported.", file.id)
            );
            let on_folder = resolve_resource(
                &format!("drives/{}/items/{}", drive.id, folder.id),
                &grant,
                &identity,
                &drives,
            );
            assert_eq!(on_folder.is_ok(), !business);
        }
    }

    #[test]
    fn another_users_drive_is_forbidden() {
        let (identity, drives, mut grant, drive) = world(false);
        grant.user_id = "someone-else".to_owned();
        let error = resolve_resource(&format!("drives/{}/root", drive.id), &grant, &identity, &drives)
            .expect_err("forbidden");
        assert_eq!(error.status, axum::http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_patch_needs_expiration_or_notification_url() {
        for body in [&b""[..], b"{}", b"{\"clientState\":\"x\"}"] {
            let error = parse_update(body, false).expect_err("needs a property");
            assert_eq!(error.message, errors::MSG_PATCH_NEEDS_PROPERTY);
        }
        assert!(parse_update(br#"{"expirationDateTime":"2030-01-01T00:00:00Z"}"#, false).is_ok());
    }

    #[test]
    fn reauthorization_reminders_start_three_hours_before_expiry_halve_then_come_every_fifteen_minutes() {
        let expiry = Utc::now();
        let mut reminders = Vec::new();
        let mut last = None;
        while let Some(at) = next_reauthorization(
            expiry,
            last,
            Duration::minutes(180),
            Duration::minutes(60),
            Duration::minutes(15),
        ) {
            reminders.push((expiry - at).num_minutes());
            last = Some(at);
        }
        assert_eq!(reminders, [180, 90, 45, 30, 15]);
        // Reminded late (a clock jump): the schedule continues from then.
        let late = expiry - Duration::minutes(100);
        let next = next_reauthorization(
            expiry,
            Some(late),
            Duration::minutes(180),
            Duration::minutes(60),
            Duration::minutes(15),
        );
        assert_eq!(next.map(|at| (expiry - at).num_minutes()), Some(50));
    }

    #[test]
    fn a_notification_resource_has_a_trailing_slash_and_no_leading_one() {
        let (_, _, _, drive) = world(false);
        let mut subscription = Subscription {
            id: "s".into(),
            resource: format!("/drives/{}/root", drive.id),
            application_id: "a".into(),
            change_type: "updated".into(),
            client_state: None,
            notification_url: "https://x".into(),
            lifecycle_notification_url: None,
            expiration: Utc::now(),
            creator_id: "u".into(),
            tenant_id: "t".into(),
            latest_supported_tls_version: "v1_2".into(),
            notification_url_app_id: None,
            target: Target {
                drive_id: drive.id.clone(),
                item_id: drive.root_id.clone(),
            },
            created_at: Utc::now(),
            needs_reauthorization: false,
            last_reauthorized_at: None,
            reauthorization_reminded_at: None,
        };
        assert_eq!(
            subscription.notification_resource(),
            format!("drives/{}/root/", drive.id)
        );
        subscription.resource = "me/drive/root/".into();
        assert_eq!(subscription.notification_resource(), "me/drive/root/");
    }
}
