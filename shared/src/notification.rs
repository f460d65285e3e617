//! Graph's change-notification collections, parsed with their real quirks.
//!
//! Accepted (graph-protocol.md §3.1, §4): `resourceData: null`; a trailing slash on `resource`;
//! `subscriptionExpirationDateTime` with a non-UTC offset, or under its legacy OneDrive name
//! `expirationDateTime`; unknown fields; one POST mixing subscriptions and tenants; lifecycle
//! notifications, which carry `lifecycleEvent` and no resource. A notification missing what we
//! need (subscription id, tenant id, clientState) is counted as invalid, not fatal to the POST.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::ids::{SubscriptionId, TenantId};

/// The largest notification POST notify accepts (larger gets 413).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The lifecycle events Graph sends to `lifecycleNotificationUrl` (§4). Drives only get
/// `reauthorizationRequired`; the others are accepted for completeness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LifecycleEvent {
    ReauthorizationRequired,
    SubscriptionRemoved,
    Missed,
}

impl LifecycleEvent {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "reauthorizationRequired" => Some(Self::ReauthorizationRequired),
            "subscriptionRemoved" => Some(Self::SubscriptionRemoved),
            "missed" => Some(Self::Missed),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct RawCollection<'a> {
    #[serde(borrow)]
    value: Vec<RawNotification<'a>>,
    #[serde(default, rename = "validationTokens")]
    _validation_tokens: IgnoredAny,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawNotification<'a> {
    #[serde(borrow)]
    subscription_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    client_state: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    tenant_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    resource: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    change_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    lifecycle_event: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, alias = "expirationDateTime")]
    subscription_expiration_date_time: Option<std::borrow::Cow<'a, str>>,
}

/// One notification that carries everything graphfeed needs. Its clientState is still unchecked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification<'a> {
    pub subscription_id: SubscriptionId,
    pub tenant_id: TenantId,
    /// Secret: never log it.
    pub client_state: std::borrow::Cow<'a, str>,
    /// The resource without a trailing slash; absent on lifecycle notifications.
    pub resource: Option<String>,
    pub lifecycle_event: Option<LifecycleEvent>,
    pub subscription_expires_at: Option<DateTime<Utc>>,
}

/// Why a single notification in a collection was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the notification has no valid subscriptionId")]
    SubscriptionId,
    #[error("the notification has no valid tenantId")]
    TenantId,
    #[error("the notification has no clientState")]
    ClientState,
    #[error("the notification names an unknown lifecycleEvent")]
    LifecycleEvent,
}

/// Why a whole POST body was refused. It says where, never what: serde's own messages quote
/// the input, and a notification body must never reach a log or a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectionError {
    #[error(
        "the body is not a change-notification collection ({kind} error at line {line}, column {column})"
    )]
    Malformed {
        kind: &'static str,
        line: usize,
        column: usize,
    },
}

impl From<serde_json::Error> for CollectionError {
    fn from(e: serde_json::Error) -> Self {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "read",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "shape",
            serde_json::error::Category::Eof => "truncated-input",
        };
        Self::Malformed {
            kind,
            line: e.line(),
            column: e.column(),
        }
    }
}

/// Parses a notification collection; each entry is either usable or the reason it is not.
pub fn parse_collection(body: &[u8]) -> Result<Vec<Result<Notification<'_>, Invalid>>, CollectionError> {
    let raw: RawCollection<'_> = serde_json::from_slice(body)?;
    Ok(raw.value.into_iter().map(validate).collect())
}

fn validate(raw: RawNotification<'_>) -> Result<Notification<'_>, Invalid> {
    let subscription_id = raw
        .subscription_id
        .as_deref()
        .and_then(|s| SubscriptionId::parse(s).ok())
        .ok_or(Invalid::SubscriptionId)?;
    let tenant_id = raw
        .tenant_id
        .as_deref()
        .and_then(|t| TenantId::parse(t).ok())
        .ok_or(Invalid::TenantId)?;
    let client_state = raw
        .client_state
        .filter(|c| !c.is_empty())
        .ok_or(Invalid::ClientState)?;
    let lifecycle_event = match raw.lifecycle_event.as_deref() {
        None => None,
        Some(e) => Some(LifecycleEvent::parse(e).ok_or(Invalid::LifecycleEvent)?),
    };
    let resource = raw.resource.map(|r| r.trim_end_matches('/').to_owned());
    let subscription_expires_at = raw
        .subscription_expiration_date_time
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    Ok(Notification {
        subscription_id,
        tenant_id,
        client_state,
        resource,
        lifecycle_event,
        subscription_expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "11111111-2222-3333-4444-555555555555";

    #[test]
    fn the_real_onedrive_payload_is_accepted_with_its_quirks() {
        let body = format!(
            r#"{{"value":[{{"subscriptionId":"abc-1","clientState":"cs","resource":"drives/driveid/root/",
            "tenantId":"{TENANT}","resourceData":null,"subscriptionExpirationDateTime":"2021-02-10T08:00:00-08:00",
            "changeType":"updated","someFutureField":{{"x":1}}}}]}}"#
        );
        let parsed = parse_collection(body.as_bytes()).unwrap();
        let n = parsed[0].as_ref().unwrap();
        assert_eq!(n.resource.as_deref(), Some("drives/driveid/root"));
        assert_eq!(
            n.subscription_expires_at.unwrap().to_rfc3339(),
            "2021-02-10T16:00:00+00:00"
        );
        assert_eq!(n.lifecycle_event, None);
    }

    #[test]
    fn the_legacy_expiration_name_is_understood() {
        let body = format!(
            r#"{{"value":[{{"subscriptionId":"s","clientState":"c","tenantId":"{TENANT}","expirationDateTime":"2019-03-20T11:00:00.0000000Z"}}]}}"#
        );
        let parsed = parse_collection(body.as_bytes()).unwrap();
        assert!(parsed[0].as_ref().unwrap().subscription_expires_at.is_some());
    }

    #[test]
    fn a_lifecycle_notification_has_no_resource() {
        let body = format!(
            r#"{{"value":[{{"subscriptionId":"s","clientState":"c","tenantId":"{TENANT}","lifecycleEvent":"reauthorizationRequired"}}]}}"#
        );
        let parsed = parse_collection(body.as_bytes()).unwrap();
        let n = parsed[0].as_ref().unwrap();
        assert_eq!(n.lifecycle_event, Some(LifecycleEvent::ReauthorizationRequired));
        assert_eq!(n.resource, None);
    }

    #[test]
    fn an_incomplete_notification_is_set_aside_without_failing_the_others() {
        let body = format!(
            r#"{{"value":[{{"clientState":"c","tenantId":"{TENANT}"}},{{"subscriptionId":"s","clientState":"c","tenantId":"not-a-guid"}},
            {{"subscriptionId":"s","tenantId":"{TENANT}"}},{{"subscriptionId":"s","clientState":"c","tenantId":"{TENANT}","lifecycleEvent":"exploded"}},
            {{"subscriptionId":"s","clientState":"c","tenantId":"{TENANT}"}}]}}"#
        );
        let parsed = parse_collection(body.as_bytes()).unwrap();
        let errors: Vec<_> = parsed.iter().filter_map(|p| p.as_ref().err().copied()).collect();
        assert_eq!(
            errors,
            [
                Invalid::SubscriptionId,
                Invalid::TenantId,
                Invalid::ClientState,
                Invalid::LifecycleEvent
            ]
        );
        assert!(parsed[4].is_ok());
    }

    #[test]
    fn a_malformed_body_is_described_without_quoting_it() {
        let err = parse_collection(br#"{"value":"v1.local.SECRET-CLIENT-STATE"}"#).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert_eq!(
            err,
            CollectionError::Malformed {
                kind: "shape",
                line: 1,
                column: 39
            }
        );
    }

    #[test]
    fn a_body_that_is_not_a_collection_is_malformed() {
        for body in [&b"not json"[..], b"{}", b"{\"value\":{}}", b"[1,2]", b""] {
            assert!(
                parse_collection(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
