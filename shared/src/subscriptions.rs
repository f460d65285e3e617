//! The subscription rules, one copy for connect, process-changes (lifecycle events) and renew.
//!
//! [`Subscriptions::ensure`] keeps a drive's Graph subscription alive: kept if alive and outside
//! the renewal window; renewed by PATCH with a new expiry inside it or when `reauthorize` is asked
//! (one PATCH renews and reauthorizes, graph-protocol.md §4: graphfeed never also calls
//! `/reauthorize`, so the two are never within 10 minutes of each other); created when Graph no
//! longer knows it (404). A 409 adopts Graph's existing subscription when its clientState verifies
//! for the drive, else replaces it. The record stores the expiry Graph returned.

use chrono::Duration;
use secrecy::SecretString;

use crate::client_state::KeyStore;
use crate::clock::SharedClock;
use crate::connect::{LIFETIME_MARGIN, MAX_LIFETIME, NotificationUrls};
use crate::graph::{GraphClient, GraphError, NewSubscription, conflicting_subscription_id};
use crate::ids::UserKey;
use crate::store::{ConnectionStore, DriveState, StoreError, SubscriptionRecord};

/// Why a subscription could not be kept alive.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("Graph refused: {0}")]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Subscriptions::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Alive and outside the renewal window: no Graph call.
    Kept,
    /// PATCHed with a new expiry.
    Renewed,
    /// Made (Graph no longer knew it, or there was none), or adopted on a 409.
    Created,
}

/// The stored subscription, and how it came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    pub record: SubscriptionRecord,
    pub action: Action,
}

/// What the rules need, borrowed from the caller's clients.
pub struct Subscriptions<'a> {
    pub graph: &'a GraphClient,
    pub store: &'a dyn ConnectionStore,
    pub keys: &'a KeyStore,
    pub clock: &'a SharedClock,
    pub renew_window: Duration,
    /// Up to this much is taken off each asked-for lifetime, at random, so a fleet connected in
    /// one hour does not come due in one hour for ever after.
    pub jitter: Duration,
}

impl Subscriptions<'_> {
    /// The expiry to ask Graph for: the maximum lifetime less the margin, less the jitter.
    fn requested_expiry(&self) -> chrono::DateTime<chrono::Utc> {
        let jitter_ms = self.jitter.num_milliseconds().max(0);
        let taken = if jitter_ms == 0 {
            0
        } else {
            rand::random_range(0..jitter_ms)
        };
        self.clock.now() + MAX_LIFETIME - LIFETIME_MARGIN - Duration::milliseconds(taken)
    }

    pub async fn ensure(
        &self,
        user: &UserKey,
        state: &DriveState,
        reauthorized: bool,
        resource: &str,
        urls: &NotificationUrls,
        token: &SecretString,
    ) -> Result<Ensured, SubscriptionError> {
        let now = self.clock.now();
        let existing = self.store.subscription(&state.drive_key).await?;
        if let Some(current) = &existing {
            let same_generation = current.generation == state.generation;
            if same_generation && !reauthorized && current.expires_at > now + self.renew_window {
                return Ok(Ensured {
                    record: current.clone(),
                    action: Action::Kept,
                });
            }
            if same_generation {
                // Inside the renewal window, or the user is back from needs_reauth: one PATCH
                // renews and reauthorizes (graph-protocol.md §4).
                match self
                    .graph
                    .renew_subscription(token, &current.subscription_id, self.requested_expiry())
                    .await
                {
                    Ok(renewed) => {
                        let next = SubscriptionRecord {
                            expires_at: renewed.expiration_date_time,
                            parked: false,
                            failures: 0,
                            retry_at: None,
                            version: current.version + 1,
                            ..current.clone()
                        };
                        let record = self.save_subscription(next, token).await?;
                        return Ok(Ensured {
                            record,
                            action: Action::Renewed,
                        });
                    }
                    Err(e) if e.status() == Some(404) => {}
                    Err(e) => return Err(e.into()),
                }
            } else {
                // A subscription of an earlier connection: gone from Graph before ours is made.
                self.graph
                    .delete_subscription(token, &current.subscription_id)
                    .await?;
            }
        }
        let record = self
            .create(user, state, existing.as_ref(), resource, urls, token)
            .await?;
        Ok(Ensured {
            record,
            action: Action::Created,
        })
    }

    /// Replaces the drive's subscription with a new one: deletes it from Graph (already gone is
    /// fine) and creates another, minted under the active clientState key. For a subscription
    /// whose key is retired: a clientState cannot be PATCHed.
    pub async fn replace(
        &self,
        user: &UserKey,
        state: &DriveState,
        current: &SubscriptionRecord,
        resource: &str,
        urls: &NotificationUrls,
        token: &SecretString,
    ) -> Result<SubscriptionRecord, SubscriptionError> {
        match self
            .graph
            .delete_subscription(token, &current.subscription_id)
            .await
        {
            Ok(()) => {}
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
        self.create(user, state, Some(current), resource, urls, token)
            .await
    }

    /// Creates the drive's subscription (a 409 adopts or replaces Graph's existing one) and
    /// stores it as the version after `existing`.
    async fn create(
        &self,
        user: &UserKey,
        state: &DriveState,
        existing: Option<&SubscriptionRecord>,
        resource: &str,
        urls: &NotificationUrls,
        token: &SecretString,
    ) -> Result<SubscriptionRecord, SubscriptionError> {
        let ring = self.keys.ring();
        let client_state = ring.mint(&user.tenant, &state.drive_key);
        let request = NewSubscription {
            resource,
            notification_url: &urls.notification,
            lifecycle_notification_url: Some(&urls.lifecycle),
            expiration: self.requested_expiry(),
            client_state: &client_state,
        };
        let (created, key_id) = match self.graph.create_subscription(token, &request).await {
            Ok(s) => (s, ring.active().to_string()),
            Err(e) => match conflicting_subscription_id(&e) {
                Some(id) => self.adopt_or_replace(user, state, &id, &request, token).await?,
                None => return Err(e.into()),
            },
        };
        let next = SubscriptionRecord {
            version: existing.map_or(1, |e| e.version + 1),
            ..SubscriptionRecord::first(
                state.drive_key,
                created.id,
                created.expiration_date_time,
                key_id,
                resource,
                state.generation,
            )
        };
        self.save_subscription(next, token).await
    }

    /// A 409: Graph already has a subscription for this drive (a concurrent connect, or one whose
    /// record was lost). Ours when the record names it, or when its clientState verifies for
    /// this drive: adopt it, under the key it was made with. Otherwise notify could not verify
    /// its notifications: delete it and create ours.
    async fn adopt_or_replace(
        &self,
        user: &UserKey,
        state: &DriveState,
        id: &str,
        request: &NewSubscription<'_>,
        token: &SecretString,
    ) -> Result<(crate::graph::Subscription, String), SubscriptionError> {
        let found = self.graph.get_subscription_with_state(token, id).await?;
        if let Some(recorded) = self.store.subscription(&state.drive_key).await?
            && recorded.subscription_id == id
        {
            return Ok((found.subscription, recorded.key_id));
        }
        let ring = self.keys.ring();
        let verified = found
            .client_state()
            .and_then(|cs| ring.verify(cs, &user.tenant).ok())
            // Never adopt one made under a retired key: renew is replacing those.
            .filter(|v| v.drive_key == state.drive_key && !ring.is_retired(&v.key_id));
        if let Some(v) = verified {
            return Ok((found.subscription, v.key_id.to_string()));
        }
        self.graph.delete_subscription(token, id).await?;
        let created = self.graph.create_subscription(token, request).await?;
        Ok((created, self.keys.ring().active().to_string()))
    }

    /// Stores the subscription record. When a concurrent connect stored another first, Graph
    /// decides: if the stored subscription still exists it wins and ours (if different) is
    /// deleted; if Graph no longer knows it, ours replaces it.
    async fn save_subscription(
        &self,
        next: SubscriptionRecord,
        token: &SecretString,
    ) -> Result<SubscriptionRecord, SubscriptionError> {
        for _ in 0..3 {
            match self.store.put_subscription(&next).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
            let Some(stored) = self.store.subscription(&next.drive_key).await? else {
                // Deleted meanwhile (a disconnect): write ours as the first version.
                let first = SubscriptionRecord {
                    version: 1,
                    ..next.clone()
                };
                match self.store.put_subscription(&first).await {
                    Ok(()) => return Ok(first),
                    Err(StoreError::Conflict) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            if stored.subscription_id == next.subscription_id {
                return Ok(stored);
            }
            match self.graph.get_subscription(token, &stored.subscription_id).await {
                Ok(_) => {
                    self.graph
                        .delete_subscription(token, &next.subscription_id)
                        .await?;
                    return Ok(stored);
                }
                Err(e) if e.status() == Some(404) => {
                    let replace = SubscriptionRecord {
                        version: stored.version + 1,
                        ..next.clone()
                    };
                    match self.store.put_subscription(&replace).await {
                        Ok(()) => return Ok(replace),
                        Err(StoreError::Conflict) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::client_state::{DEV_CLIENT_STATE_KEY_HEX, KeyRing};
    use crate::store::MemoryStore;

    fn expiries(
        jitter: Duration,
        samples: usize,
    ) -> (chrono::DateTime<chrono::Utc>, Vec<chrono::DateTime<chrono::Utc>>) {
        let graph = GraphClient::new(&crate::config::GraphConfig {
            base_url: "https://graph.microsoft.com/v1.0".parse().unwrap(),
            timeout: std::time::Duration::from_secs(5),
        })
        .unwrap();
        let store = MemoryStore::new();
        let clock = crate::clock::system();
        let keys = KeyStore::fixed(KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).unwrap(), clock.clone());
        let rules = Subscriptions {
            graph: &graph,
            store: &store,
            keys: &keys,
            clock: &clock,
            renew_window: crate::connect::DEFAULT_RENEW_WINDOW,
            jitter,
        };
        let now = clock.now();
        (now, (0..samples).map(|_| rules.requested_expiry()).collect())
    }

    #[test]
    fn asked_for_expiries_spread_over_the_jitter_below_the_maximum_lifetime() {
        let jitter = Duration::hours(12);
        let (now, asked) = expiries(jitter, 500);
        let latest = now + MAX_LIFETIME - LIFETIME_MARGIN;
        let slack = Duration::seconds(5);
        assert!(
            asked
                .iter()
                .all(|at| *at <= latest + slack && *at > latest - jitter - slack)
        );
        let (min, max) = (asked.iter().min().unwrap(), asked.iter().max().unwrap());
        // 500 draws over 12 hours: a fleet connected together comes due over about 12 hours.
        assert!(*max - *min > Duration::hours(10), "spread {}", *max - *min);
    }

    #[test]
    fn without_jitter_the_asked_for_expiry_is_the_maximum_less_the_margin() {
        let (now, asked) = expiries(Duration::zero(), 3);
        let latest = now + MAX_LIFETIME - LIFETIME_MARGIN;
        assert!(asked.iter().all(|at| (*at - latest).num_seconds().abs() < 5));
    }
}
