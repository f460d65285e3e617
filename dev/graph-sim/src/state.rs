//! Everything the simulator remembers, behind one lock: identities, Entra (keys, apps, refresh
//! tokens, injected failures), drives, subscriptions, the delivery outbox and log, faults,
//! throttles, the run-time [`Settings`] and counters. It also decides when a subscription is due
//! an automatic `reauthorizationRequired` (§4), which the delivery task asks on every look.
//!
//! The lock is a `std::sync::Mutex` held only for short, synchronous sections; no `.await` happens
//! while it is held (HTTP calls such as the validation handshake run between two sections).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::delivery::{Deliveries, NotificationKind, Outgoing};
use crate::delta::DeltaQuirks;
use crate::drive::{Change, Drive};
use crate::entra::Entra;
use crate::faults::Fault;
use crate::identity::Identity;
use crate::subscriptions::{LifecycleEvent, Subscription, next_reauthorization};
use crate::throttle::Throttles;
use crate::uploads::UploadSession;
use crate::{Latency, SimConfig, Timing};

/// What the simulator has counted since start or the last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Graph calls by `"METHOD /route/template"`, e.g. `"PATCH /v1.0/subscriptions/{id}"`.
    /// Calls that matched no route count as `"METHOD (unmatched)"`.
    pub graph_calls: BTreeMap<String, u64>,
    /// Graph calls answered by an injected fault.
    pub faults_injected: u64,
    /// Validation handshakes sent (one per URL per create or PATCH; §2).
    pub validation_handshakes: u64,
    /// Handshakes that failed.
    pub validation_failures: u64,
    /// Notifications created (change and lifecycle), including those dropped at once.
    pub notifications_enqueued: u64,
    /// Notifications acknowledged with a 2xx within the deadline.
    pub notifications_delivered: u64,
    /// Notification sends after the first (each retry of each notification).
    pub notifications_retried: u64,
    /// Sends of a notification whose previous attempt timed out, so the endpoint may have it twice.
    pub notifications_duplicated: u64,
    /// All notifications that will never be delivered (the sum of the three below).
    pub notifications_dropped: u64,
    /// Still failing after 4 sim hours of retries (§3.3).
    pub notifications_dropped_after_retries: u64,
    /// Arose while their endpoint was in the `drop` state (§3.3: "can't be recovered").
    pub notifications_dropped_throttled: u64,
    /// Their subscription expired or was deleted before they could be sent.
    pub notifications_dropped_subscription_gone: u64,
    /// POSTs to notification URLs.
    pub delivery_attempts: u64,
    /// POSTs that did not deliver (non-2xx, timeout, connection failure).
    pub delivery_failures: u64,
    /// Timed-out POSTs whose answer came later.
    pub late_answers: u64,
    /// OIDC metadata documents served (v1 and v2 paths).
    pub oidc_metadata_fetches: u64,
    /// JWKS documents served (v1 and v2 key paths).
    pub jwks_fetches: u64,
    /// Token endpoint calls by grant: `on_behalf_of`, `refresh_token`, `client_credentials`,
    /// another `grant_type` verbatim, or `(missing)`. Failed calls count too.
    pub token_requests: BTreeMap<String, u64>,
    /// Token endpoint refusals by Entra `error` (`invalid_grant`, `invalid_client`, ...).
    pub token_errors: BTreeMap<String, u64>,
    /// Delta pages served (`root/delta` answers with 200, `token=latest` included).
    pub delta_pages_served: u64,
    /// Delta calls answered 410 `resyncRequired`.
    pub delta_resyncs: u64,
    /// Every delta request by drive id (`/me/…` counted under the caller's drive), whatever its
    /// answer: pages, `token=latest`, 410s, throttled and faulted calls.
    pub delta_calls_by_drive: BTreeMap<String, u64>,
    /// Graph calls answered by a throttle (429/503/509, [`crate::Throttle`]).
    pub throttled_answers: u64,
    /// Throttled calls made before the Retry-After they were given had passed.
    pub throttle_violations: u64,
    /// `reauthorizationRequired` notifications sent by the schedule of §4 (not by
    /// [`crate::Sim::send_lifecycle`]).
    pub auto_reauthorizations: u64,
    /// API access tokens minted through [`crate::Sim::mint_api_token`] or the control API.
    pub api_tokens_minted: u64,
    /// Subscriptions Graph deleted because the sim clock passed their expiry without a renewal
    /// (§1.6), each counted once, when the simulator notices: on any access to subscriptions, on
    /// the delivery task's look, and whenever the counters are read, so one that expires with
    /// nobody touching it is counted too. Deletions (DELETE, `subscriptionRemoved`) are not
    /// expiries.
    pub subscriptions_expired: u64,
    /// Device codes issued (`POST /{tenant}/oauth2/v2.0/devicecode` answered 200).
    pub device_codes_issued: u64,
    /// Token-endpoint polls with the device-code grant, whatever their answer.
    pub device_code_polls: u64,
    /// Polls answered `slow_down` (sooner than `interval` after the previous poll of the code).
    pub device_code_slow_downs: u64,
    /// Simple uploads (`PUT …/content`) that created or replaced a file.
    pub simple_uploads: u64,
    /// Upload sessions created (`createUploadSession` answered 200).
    pub upload_sessions_created: u64,
    /// Fragments an upload URL accepted (their bytes are in the session).
    pub upload_fragments_accepted: u64,
    /// PUTs to an upload URL that were refused or interrupted (no byte of them kept).
    pub upload_fragments_rejected: u64,
    /// Upload sessions that committed their file.
    pub upload_sessions_completed: u64,
    /// Bytes of accepted fragments and of successful simple uploads.
    pub upload_bytes_accepted: u64,
}

impl Counters {
    /// Graph calls of one route, e.g. `"PATCH /v1.0/subscriptions/{id}"` (0 for none).
    pub fn graph_calls_of(&self, route: &str) -> u64 {
        self.graph_calls.get(route).copied().unwrap_or(0)
    }

    /// Token-endpoint requests of one grant, e.g. `"refresh_token"` (0 for none).
    pub fn token_requests_of(&self, grant: &str) -> u64 {
        self.token_requests.get(grant).copied().unwrap_or(0)
    }
}

/// What can be changed while the simulator runs; starts from [`SimConfig`] (and again at a reset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Send `reauthorizationRequired` on the schedule of §4 ([`crate::Timing::reauthorization_start`]).
    pub auto_reauthorization: bool,
    /// Live subscriptions allowed per drive (403 beyond, §1.5); `None`: no limit.
    pub max_subscriptions_per_drive: Option<usize>,
    /// Delta quirks of drives without their own.
    pub delta_quirks: DeltaQuirks,
    /// Delta quirks of single drives.
    pub drive_delta_quirks: BTreeMap<String, DeltaQuirks>,
    /// Real time added to Graph and token-endpoint calls (`{"graph_ms","token_ms"}` in JSON).
    pub latency: Latency,
}

impl Settings {
    pub(crate) fn from_config(config: &SimConfig) -> Self {
        Self {
            auto_reauthorization: config.timing.reauthorization_start.is_some(),
            max_subscriptions_per_drive: config.max_subscriptions_per_drive,
            delta_quirks: config.delta_quirks,
            drive_delta_quirks: BTreeMap::new(),
            latency: config.latency,
        }
    }

    /// The quirks a new walk of the drive is planned with.
    pub fn delta_quirks_for(&self, drive_id: &str) -> DeltaQuirks {
        self.drive_delta_quirks
            .get(drive_id)
            .copied()
            .unwrap_or(self.delta_quirks)
    }
}

/// The simulator's whole state.
#[derive(Debug)]
pub(crate) struct State {
    /// Bumped by a reset, so attempts in flight across it are ignored when they finish.
    pub generation: u64,
    pub identity: Identity,
    pub entra: Entra,
    pub drives: HashMap<String, Drive>,
    /// Live subscriptions by id. Insert with [`State::insert_subscription`] and report a changed
    /// expiry with [`State::note_expiration`], so [`State::purge_expired`] knows when to look.
    pub subscriptions: HashMap<String, Subscription>,
    /// No subscription expires before this: a lower bound, lowered by every insert and every new
    /// expiry and made exact by each scan, so purging costs nothing until something can have
    /// expired (renewing 10,000 subscriptions must not scan 10,000 subscriptions each time).
    next_expiry: DateTime<Utc>,
    pub deliveries: Deliveries,
    /// Upload sessions by id (the opaque part of their URL).
    pub uploads: HashMap<String, UploadSession>,
    pub faults: Vec<Fault>,
    pub throttles: Throttles,
    pub settings: Settings,
    pub counters: Counters,
}

impl State {
    /// Empty state, with Entra's first key and default app.
    pub fn new(entra: Entra, settings: Settings) -> Self {
        Self {
            generation: 0,
            identity: Identity::default(),
            entra,
            drives: HashMap::new(),
            subscriptions: HashMap::new(),
            next_expiry: DateTime::<Utc>::MAX_UTC,
            deliveries: Deliveries::default(),
            uploads: HashMap::new(),
            faults: Vec::new(),
            throttles: Throttles::default(),
            settings,
            counters: Counters::default(),
        }
    }

    /// Queues `reauthorizationRequired` for every live subscription with a lifecycle URL whose
    /// next reminder (§4, [`next_reauthorization`]) is due, and marks it as needing
    /// reauthorization. After a jump of the clock over several reminders only one is sent.
    /// Returns how many were queued.
    pub fn send_due_reauthorizations(&mut self, now: DateTime<Utc>, timing: &Timing) -> usize {
        if !self.settings.auto_reauthorization {
            return 0;
        }
        self.purge_expired(now);
        let start = timing
            .reauthorization_start
            .unwrap_or_else(|| chrono::Duration::minutes(180));
        let mut due: Vec<Outgoing> = Vec::new();
        for subscription in self.subscriptions.values_mut() {
            let Some(url) = subscription.lifecycle_notification_url.clone() else {
                continue;
            };
            let next = next_reauthorization(
                subscription.expiration,
                subscription.reauthorization_reminded_at,
                start,
                timing.reauthorization_steady_below,
                timing.reauthorization_steady_interval,
            );
            if next.is_some_and(|at| at <= now) {
                subscription.needs_reauthorization = true;
                subscription.reauthorization_reminded_at = Some(now);
                due.push(Outgoing {
                    url,
                    kind: NotificationKind::Lifecycle,
                    subscription_id: subscription.id.clone(),
                    payload: subscription.lifecycle_notification(LifecycleEvent::ReauthorizationRequired),
                });
            }
        }
        due.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
        let queued = due.len();
        for outgoing in due {
            self.counters.auto_reauthorizations += 1;
            self.deliveries.enqueue(&mut self.counters, timing, now, outgoing);
        }
        queued
    }

    /// Adds a live subscription.
    pub fn insert_subscription(&mut self, subscription: Subscription) {
        self.note_expiration(subscription.expiration);
        self.subscriptions.insert(subscription.id.clone(), subscription);
    }

    /// Records that a subscription now expires at `expiration` (a PATCH), so the purge looks then.
    pub fn note_expiration(&mut self, expiration: DateTime<Utc>) {
        self.next_expiry = self.next_expiry.min(expiration);
    }

    /// Forgets subscriptions whose expiry the clock has passed: Graph deletes them (§1.6), and from
    /// then on they are 404 and get no notifications. Each is counted in
    /// [`Counters::subscriptions_expired`]. Scans only once the earliest expiry may have passed.
    pub fn purge_expired(&mut self, now: DateTime<Utc>) {
        if now < self.next_expiry {
            return;
        }
        let before = self.subscriptions.len();
        self.subscriptions
            .retain(|_, subscription| subscription.is_alive(now));
        self.counters.subscriptions_expired += (before - self.subscriptions.len()) as u64;
        self.next_expiry = self
            .subscriptions
            .values()
            .map(|subscription| subscription.expiration)
            .min()
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    }

    /// Queues one change notification for every live subscription whose folder covers an item the
    /// change touched (a root subscription covers the whole drive, a folder one its subtree;
    /// graph-protocol.md §1.4). Returns how many were queued.
    pub fn notify_change(
        &mut self,
        drive_id: &str,
        change: &Change,
        now: DateTime<Utc>,
        timing: &Timing,
    ) -> usize {
        self.purge_expired(now);
        let Some(drive) = self.drives.get(drive_id) else {
            return 0;
        };
        let mut covering: Vec<&Subscription> = self
            .subscriptions
            .values()
            .filter(|subscription| {
                subscription.target.drive_id == drive_id
                    && change
                        .touched
                        .iter()
                        .any(|item| drive.is_within(item, &subscription.target.item_id))
            })
            .collect();
        covering.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let notifications: Vec<Outgoing> = covering
            .into_iter()
            .map(|subscription| Outgoing {
                url: subscription.notification_url.clone(),
                kind: NotificationKind::Change,
                subscription_id: subscription.id.clone(),
                payload: subscription.change_notification(),
            })
            .collect();
        let queued = notifications.len();
        for outgoing in notifications {
            self.deliveries.enqueue(&mut self.counters, timing, now, outgoing);
        }
        queued
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::entra::keys::SigningKey;
    use crate::subscriptions::Target;

    fn state(now: DateTime<Utc>) -> State {
        let key = SigningKey::development(now).expect("dev key");
        State::new(Entra::new(key), Settings::from_config(&SimConfig::default()))
    }

    fn subscription(id: &str, expiration: DateTime<Utc>) -> Subscription {
        Subscription {
            id: id.to_owned(),
            resource: "me/drive/root".to_owned(),
            application_id: "app".to_owned(),
            change_type: "updated".to_owned(),
            client_state: None,
            notification_url: "https://example.test/hook".to_owned(),
            lifecycle_notification_url: None,
            expiration,
            creator_id: id.to_owned(),
            tenant_id: "tenant".to_owned(),
            latest_supported_tls_version: "v1_2".to_owned(),
            notification_url_app_id: None,
            target: Target {
                drive_id: id.to_owned(),
                item_id: "root".to_owned(),
            },
            created_at: expiration - Duration::hours(10),
            needs_reauthorization: false,
            last_reauthorized_at: None,
            reauthorization_reminded_at: None,
        }
    }

    #[test]
    fn expired_subscriptions_are_purged_and_counted_once_each() {
        let now = Utc::now();
        let mut state = state(now);
        state.insert_subscription(subscription("a", now + Duration::hours(1)));
        state.insert_subscription(subscription("b", now + Duration::hours(10)));

        state.purge_expired(now + Duration::hours(2));
        state.purge_expired(now + Duration::hours(3));

        assert_eq!(state.counters.subscriptions_expired, 1);
        assert!(state.subscriptions.contains_key("b"));
        state.purge_expired(now + Duration::hours(10));
        assert_eq!(state.counters.subscriptions_expired, 2);
        assert!(state.subscriptions.is_empty());
    }

    #[test]
    fn a_renewal_to_an_earlier_expiry_is_purged_on_time() {
        let now = Utc::now();
        let mut state = state(now);
        state.insert_subscription(subscription("a", now + Duration::hours(10)));
        // A scan that finds nothing leaves the next look at the earliest expiry, 10 h away.
        state.purge_expired(now);

        let earlier = now + Duration::hours(1);
        if let Some(renewed) = state.subscriptions.get_mut("a") {
            renewed.expiration = earlier;
        }
        state.note_expiration(earlier);
        state.purge_expired(now + Duration::hours(2));

        assert!(state.subscriptions.is_empty());
        assert_eq!(state.counters.subscriptions_expired, 1);
    }
}
