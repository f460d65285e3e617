//! notify's decision: which notifications in a POST are genuine, and the queue messages they
//! become. No Graph call and no database read: the clientState alone says which drive a
//! notification belongs to (see [`crate::client_state`]).
//!
//! Genuine notifications are grouped per drive (and per kind): the notifications of one drive in
//! one POST become one message, stamped with the time notify received the POST. Invalid ones are
//! counted and dropped, never enqueued.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::client_state::{KeyRing, KeyStore, Refresh, Rejection};
use crate::envelope::{Envelope, Kind, SubscriptionRef};
use crate::ids::{DriveKey, TenantId};
use crate::notification::{CollectionError, LifecycleEvent, parse_collection};
use crate::queue::OutgoingMessage;

/// What notify decided about one POST.
#[derive(Debug, Default)]
pub struct Decision {
    /// The messages to enqueue, at most one per (drive, kind).
    pub messages: Vec<OutgoingMessage>,
    /// Genuine notifications (change and lifecycle).
    pub accepted: usize,
    /// Of those, lifecycle notifications.
    pub lifecycle: usize,
    /// Notifications whose clientState is not genuine (forged, another tenant's, unknown key).
    pub rejected_client_state: usize,
    /// Notifications missing a field graphfeed needs.
    pub rejected_malformed: usize,
    /// Notifications naming a key id this ring does not hold (also counted as rejected).
    unknown_key: usize,
    /// Of those, notifications that could not be judged against a fresh ring (the refetch was
    /// not allowed yet, failed, or took too long). They may be genuine, under a key rotated in
    /// after this container last read the secret: the caller must answer 5xx so Graph
    /// redelivers them once a refetch is possible.
    pub unverifiable: usize,
}

type GroupKey = (DriveKey, TenantId, Kind, Option<LifecycleEvent>);

/// Judges every notification in `body` against `ring`.
pub fn decide(body: &[u8], received_at: DateTime<Utc>, ring: &KeyRing) -> Result<Decision, CollectionError> {
    let parsed = parse_collection(body)?;
    let mut decision = Decision::default();
    let mut groups: BTreeMap<GroupKey, Envelope> = BTreeMap::new();
    for item in parsed {
        let Ok(n) = item else {
            decision.rejected_malformed += 1;
            continue;
        };
        let verified = match ring.verify(&n.client_state, &n.tenant_id) {
            Ok(v) => v,
            Err(reason) => {
                if matches!(reason, Rejection::UnknownKey(_)) {
                    decision.unknown_key += 1;
                }
                decision.rejected_client_state += 1;
                continue;
            }
        };
        decision.accepted += 1;
        let kind = if n.lifecycle_event.is_some() {
            decision.lifecycle += 1;
            Kind::Lifecycle
        } else {
            Kind::Notification
        };
        let envelope = groups
            .entry((verified.drive_key, n.tenant_id.clone(), kind, n.lifecycle_event))
            .or_insert_with(|| {
                let mut e = Envelope::new(kind, verified.drive_key, n.tenant_id.clone(), received_at);
                e.lifecycle_event = n.lifecycle_event;
                e
            });
        envelope.notifications += 1;
        match envelope
            .subscriptions
            .iter_mut()
            .find(|s| s.id == n.subscription_id)
        {
            Some(existing) => existing.expires_at = existing.expires_at.max(n.subscription_expires_at),
            None => envelope.subscriptions.push(SubscriptionRef {
                id: n.subscription_id,
                expires_at: n.subscription_expires_at,
            }),
        }
    }
    decision.messages = groups
        .into_values()
        .map(|e| OutgoingMessage::new(e.drive_key, e.to_json()))
        .collect();
    Ok(decision)
}

/// How long a request may wait for a refetch of the key secret.
pub const REFETCH_BUDGET: std::time::Duration = std::time::Duration::from_millis(800);

/// [`decide`] with the key store's current ring. When a notification names a key id the ring
/// does not hold, the ring is refetched (at most once a minute per container) and the POST judged
/// again, so a key rotated in after this container started is honoured. When no refetch was
/// possible, such notifications are counted in [`Decision::unverifiable`].
pub async fn decide_with_refresh(
    body: &[u8],
    received_at: DateTime<Utc>,
    keys: &KeyStore,
) -> Result<Decision, CollectionError> {
    let mut decision = decide(body, received_at, &keys.ring())?;
    if decision.unknown_key == 0 {
        return Ok(decision);
    }
    match tokio::time::timeout(REFETCH_BUDGET, keys.refresh_if_allowed()).await {
        Ok(Ok(Refresh::Refreshed)) => decide(body, received_at, &keys.ring()),
        Ok(Ok(Refresh::NotRefreshable)) => Ok(decision),
        Ok(Ok(Refresh::NotYet)) => {
            decision.unverifiable = decision.unknown_key;
            Ok(decision)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not refetch the clientState keys; asking Graph to redeliver");
            decision.unverifiable = decision.unknown_key;
            Ok(decision)
        }
        Err(_) => {
            tracing::warn!(
                budget_ms = REFETCH_BUDGET.as_millis() as u64,
                "the clientState key refetch took too long"
            );
            decision.unverifiable = decision.unknown_key;
            Ok(decision)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::client_state::DEV_CLIENT_STATE_KEY_HEX;
    use crate::clock::OffsetClock;

    const T1: &str = "11111111-2222-3333-4444-555555555555";
    const T2: &str = "66666666-2222-3333-4444-555555555555";

    fn notification(ring: &KeyRing, tenant: &str, drive: DriveKey, sub: &str) -> String {
        let cs = ring.mint(&TenantId::parse(tenant).unwrap(), &drive);
        format!(
            r#"{{"subscriptionId":"{sub}","clientState":"{}","resource":"me/drive/root/","tenantId":"{tenant}","resourceData":null,"changeType":"updated","subscriptionExpirationDateTime":"2026-12-01T00:00:00-08:00"}}"#,
            cs.expose()
        )
    }

    fn body(items: &[String]) -> Vec<u8> {
        format!(r#"{{"value":[{}]}}"#, items.join(",")).into_bytes()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn notifications_of_one_drive_in_one_post_become_one_message() {
        let ring = KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).unwrap();
        let (a, b) = (DriveKey::from_bytes([1; 16]), DriveKey::from_bytes([2; 16]));
        let items = [
            notification(&ring, T1, a, "sub-a"),
            notification(&ring, T1, a, "sub-a"),
            notification(&ring, T2, b, "sub-b"),
        ];
        let d = decide(&body(&items), now(), &ring).unwrap();
        assert_eq!((d.accepted, d.rejected_client_state), (3, 0));
        assert_eq!(d.messages.len(), 2);
        let first = Envelope::from_json(&d.messages[0].body).unwrap();
        assert_eq!(first.drive_key, a);
        assert_eq!(first.notifications, 2);
        assert_eq!(first.subscriptions.len(), 1);
        assert_eq!(first.received_at, now());
        assert_eq!(d.messages[0].group, a);
        assert!(
            !d.messages[0].body.contains("v1."),
            "the clientState never reaches the queue"
        );
    }

    #[test]
    fn forged_and_foreign_client_states_are_counted_and_dropped() {
        let ring = KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).unwrap();
        let other = KeyRing::single(&"f".repeat(64)).unwrap();
        let drive = DriveKey::from_bytes([1; 16]);
        let replayed = notification(&ring, T1, drive, "s").replace(T1, T2);
        let items = [
            notification(&other, T1, drive, "s"),
            replayed,
            r#"{"subscriptionId":"s","clientState":"secretClientValue","tenantId":"11111111-2222-3333-4444-555555555555"}"#.into(),
            r#"{"subscriptionId":"s","tenantId":"11111111-2222-3333-4444-555555555555"}"#.into(),
        ];
        let d = decide(&body(&items), now(), &ring).unwrap();
        assert_eq!(
            (d.accepted, d.rejected_client_state, d.rejected_malformed),
            (0, 3, 1)
        );
        assert!(d.messages.is_empty());
    }

    #[test]
    fn lifecycle_notifications_become_their_own_kind() {
        let ring = KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).unwrap();
        let drive = DriveKey::from_bytes([1; 16]);
        let cs = ring.mint(&TenantId::parse(T1).unwrap(), &drive);
        let lifecycle = format!(
            r#"{{"subscriptionId":"s","clientState":"{}","tenantId":"{T1}","lifecycleEvent":"reauthorizationRequired","subscriptionExpirationDateTime":"2026-12-01T00:00:00.0000000Z"}}"#,
            cs.expose()
        );
        let d = decide(
            &body(&[lifecycle, notification(&ring, T1, drive, "s")]),
            now(),
            &ring,
        )
        .unwrap();
        assert_eq!((d.accepted, d.lifecycle), (2, 1));
        let kinds: Vec<_> = d
            .messages
            .iter()
            .map(|m| Envelope::from_json(&m.body).unwrap())
            .collect();
        assert_eq!(kinds.len(), 2);
        let l = kinds.iter().find(|e| e.kind == Kind::Lifecycle).unwrap();
        assert_eq!(l.lifecycle_event, Some(LifecycleEvent::ReauthorizationRequired));
    }

    #[test]
    fn an_empty_collection_enqueues_nothing() {
        let ring = KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).unwrap();
        let d = decide(br#"{"value":[]}"#, now(), &ring).unwrap();
        assert!(d.messages.is_empty());
        assert_eq!(d.accepted, 0);
    }

    /// A secret whose value the test changes, counting fetches.
    struct RotatingSecret {
        value: std::sync::Mutex<String>,
        fetches: std::sync::atomic::AtomicUsize,
    }

    impl crate::secrets::SecretSource for RotatingSecret {
        fn fetch(
            &self,
        ) -> futures::future::BoxFuture<'_, Result<secrecy::SecretString, crate::secrets::SecretError>>
        {
            self.fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let value = self.value.lock().unwrap().clone();
            Box::pin(async move { Ok(secrecy::SecretString::from(value)) })
        }
    }

    #[tokio::test]
    async fn a_key_rotated_in_after_start_is_fetched_at_most_once_a_minute_and_honoured() {
        let (k1, k2) = ("1".repeat(64), "2".repeat(64));
        let old = format!(r#"{{"active":"k1","k1":"{k1}"}}"#);
        let new = format!(r#"{{"active":"k2","k1":"{k1}","k2":"{k2}"}}"#);
        let clock = OffsetClock::new();
        let source = Arc::new(RotatingSecret {
            value: std::sync::Mutex::new(old),
            fetches: Default::default(),
        });
        let store = KeyStore::load(source.clone(), Arc::new(clock.clone()))
            .await
            .unwrap();
        *source.value.lock().unwrap() = new.clone();
        let under_k2 = notification(
            &KeyRing::from_secret_json(&new).unwrap(),
            T1,
            DriveKey::from_bytes([9; 16]),
            "s",
        );
        let fetches = || source.fetches.load(std::sync::atomic::Ordering::SeqCst);

        clock.advance(chrono::Duration::seconds(61));
        let d = decide_with_refresh(&body(std::slice::from_ref(&under_k2)), now(), &store)
            .await
            .unwrap();
        assert_eq!((d.accepted, d.rejected_client_state, fetches()), (1, 0, 2));

        // A forged key id right after does not trigger another fetch within the minute.
        let forged = notification(
            &KeyRing::from_secret_json(&format!(r#"{{"active":"k7","k7":"{k2}"}}"#)).unwrap(),
            T1,
            DriveKey::from_bytes([9; 16]),
            "s",
        );
        let d = decide_with_refresh(&body(&[forged]), now(), &store)
            .await
            .unwrap();
        assert_eq!((d.accepted, d.rejected_client_state, fetches()), (0, 1, 2));
    }
}
