//! The one message format of the notifications queue (SQS FIFO), for every producer.
//!
//! Producers: notify (kinds `notification` and `lifecycle`), connect (`baseline`, `catch-up`,
//! and `purge` on disconnect), renew
//! (`catch-up`, `safety-net`) and process-changes itself (`continuation`). The consumer is
//! process-changes. Every message of one drive goes to the drive's message group (the drive
//! key), so one drive has one walker at a time.
//!
//! ```json
//! {
//!   "v": 1,
//!   "kind": "notification",            // notification | lifecycle | baseline | catch-up | continuation | safety-net | purge
//!   "drive_key": "q8Xr0Jw2m5dJ4Yl0Q2a9Ag",
//!   "tenant_id": "11111111-2222-3333-4444-555555555555",
//!   "received_at": "2026-11-22T10:00:00.123Z", // when notify received the POST (or the producer created it)
//!   "notifications": 3,                // how many Graph notifications this message stands for
//!   "subscriptions": [{"id": "…", "expires_at": "2026-12-20T10:00:00Z"}],
//!   "lifecycle_event": "reauthorizationRequired",  // only on kind = lifecycle
//!   "generation": 3                    // only on kind = purge
//! }
//! ```
//!
//! Rules: `v` is bumped only for an incompatible change; readers ignore unknown fields and refuse
//! a `v` they do not know. The deduplication id is unique per delivery (see [`crate::queue`]),
//! never derived from this content: two drive notifications for two different changes are
//! byte-identical. The message never carries a clientState, token or resource data.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{DriveKey, SubscriptionId, TenantId};
use crate::notification::LifecycleEvent;

/// The envelope version this code writes and reads.
pub const VERSION: u32 = 1;

/// What a message asks the processor to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Graph said the drive changed: walk its delta.
    Notification,
    /// A lifecycle notification (`lifecycle_event` says which).
    Lifecycle,
    /// A new connection: record the delta baseline.
    Baseline,
    /// A subscription was recreated: walk to catch up on what happened meanwhile.
    CatchUp,
    /// A walk ran out of time: continue from its checkpoint.
    Continuation,
    /// The daily walk for a drive with no completed walk in 24 hours.
    SafetyNet,
    /// The drive was disconnected: delete generation `generation`'s index, staged pages and
    /// change log.
    Purge,
}

/// A subscription a message stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRef {
    pub id: SubscriptionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// One message on the notifications queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub kind: Kind,
    pub drive_key: DriveKey,
    pub tenant_id: TenantId,
    pub received_at: DateTime<Utc>,
    #[serde(default)]
    pub notifications: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubscriptionRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_event: Option<LifecycleEvent>,
    /// Only on kind = purge: the connection generation whose data goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// Why a queue message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the message is not a graphfeed envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the message has envelope version {0}; this code reads version {VERSION}")]
    UnknownVersion(u32),
}

impl Envelope {
    /// A new envelope of this version.
    pub fn new(kind: Kind, drive_key: DriveKey, tenant_id: TenantId, received_at: DateTime<Utc>) -> Self {
        Self {
            v: VERSION,
            kind,
            drive_key,
            tenant_id,
            received_at,
            notifications: 0,
            subscriptions: Vec::new(),
            lifecycle_event: None,
            generation: None,
        }
    }

    pub fn to_json(&self) -> String {
        // An envelope holds only strings, numbers and timestamps: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("an envelope always serialises"))
    }

    pub fn from_json(body: &str) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct Probe {
            v: u32,
        }
        let probe: Probe = serde_json::from_str(body)?;
        if probe.v != VERSION {
            return Err(EnvelopeError::UnknownVersion(probe.v));
        }
        Ok(serde_json::from_str(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_and_names_its_kind_in_kebab_case() {
        let mut e = Envelope::new(
            Kind::CatchUp,
            DriveKey::from_bytes([1; 16]),
            TenantId::parse("11111111-2222-3333-4444-555555555555").unwrap(),
            "2026-11-22T10:00:00Z".parse().unwrap(),
        );
        e.notifications = 2;
        let json = e.to_json();
        assert!(json.contains(r#""kind":"catch-up""#), "{json}");
        assert_eq!(Envelope::from_json(&json).unwrap(), e);
    }

    #[test]
    fn a_reader_ignores_unknown_fields_but_refuses_an_unknown_version() {
        let json = r#"{"v":1,"kind":"notification","drive_key":"AQEBAQEBAQEBAQEBAQEBAQ","tenant_id":"11111111-2222-3333-4444-555555555555","received_at":"2026-11-22T10:00:00Z","new_field":true}"#;
        assert_eq!(Envelope::from_json(json).unwrap().kind, Kind::Notification);
        let v2 = json.replace(r#""v":1"#, r#""v":2"#);
        assert!(matches!(
            Envelope::from_json(&v2),
            Err(EnvelopeError::UnknownVersion(2))
        ));
    }
}
