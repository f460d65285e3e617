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

/// What the rules need, borrowed from the caller's clients.
pub struct Subscriptions<'a> {
    pub graph: &'a GraphClient,
    pub store: &'a dyn ConnectionStore,
    pub keys: &'a KeyStore,
    pub clock: &'a SharedClock,
    pub renew_window: Duration,
}

impl Subscriptions<'_> {
    pub async fn ensure(
        &self,
        user: &UserKey,
        state: &DriveState,
        reauthorized: bool,
        resource: &str,
        urls: &NotificationUrls,
        token: &SecretString,
    ) -> Result<SubscriptionRecord, SubscriptionError> {
        let now = self.clock.now();
        let existing = self.store.subscription(&state.drive_key).await?;
        if let Some(current) = &existing {
            let same_generation = current.generation == state.generation;
            if same_generation && !reauthorized && current.expires_at > now + self.renew_window {
                return Ok(current.clone());
            }
            if same_generation {
                // Inside the renewal window, or the user is back from needs_reauth: one PATCH
                // renews and reauthorizes (graph-protocol.md §4).
                match self
                    .graph
                    .renew_subscription(
                        token,
                        &current.subscription_id,
                        now + MAX_LIFETIME - LIFETIME_MARGIN,
                    )
                    .await
                {
                    Ok(renewed) => {
                        let next = SubscriptionRecord {
                            expires_at: renewed.expiration_date_time,
                            version: current.version + 1,
                            ..current.clone()
                        };
                        return self.save_subscription(next, token).await;
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
        let ring = self.keys.ring();
        let client_state = ring.mint(&user.tenant, &state.drive_key);
        let request = NewSubscription {
            resource,
            notification_url: &urls.notification,
            lifecycle_notification_url: Some(&urls.lifecycle),
            expiration: now + MAX_LIFETIME - LIFETIME_MARGIN,
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
            drive_key: state.drive_key,
            subscription_id: created.id,
            expires_at: created.expiration_date_time,
            key_id,
            resource: resource.to_owned(),
            generation: state.generation,
            version: existing.as_ref().map_or(1, |e| e.version + 1),
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
        let verified = found
            .client_state()
            .and_then(|cs| self.keys.ring().verify(cs, &user.tenant).ok())
            .filter(|v| v.drive_key == state.drive_key);
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

/// The subscription rules with their own clients, for background work: process-changes'
/// lifecycle events now, renew later.
pub struct Keeper {
    pub graph: GraphClient,
    pub store: std::sync::Arc<dyn ConnectionStore>,
    pub keys: std::sync::Arc<KeyStore>,
    pub clock: SharedClock,
    pub tokens: std::sync::Arc<dyn crate::tokens::AccessTokenSource>,
    /// Where Graph notifies (`NOTIFICATION_URL`, `LIFECYCLE_NOTIFICATION_URL`): a recreated
    /// subscription needs them.
    pub urls: NotificationUrls,
    pub renew_window: Duration,
}

impl Keeper {
    fn rules(&self) -> Subscriptions<'_> {
        Subscriptions {
            graph: &self.graph,
            store: self.store.as_ref(),
            keys: &self.keys,
            clock: &self.clock,
            renew_window: self.renew_window,
        }
    }

    /// The resource a drive subscribes to: the stored one, else derived from the user's drive.
    async fn resource(&self, user: &UserKey, state: &DriveState) -> Result<String, SubscriptionError> {
        if let Some(record) = self.store.subscription(&state.drive_key).await? {
            return Ok(record.resource);
        }
        let drive_type = self
            .store
            .user(user)
            .await?
            .map(|u| u.drive_type)
            .unwrap_or_default();
        Ok(crate::graph::Drive {
            id: state.drive_id.clone(),
            drive_type,
        }
        .subscription_resource())
    }
}

impl crate::process::LifecycleActions for Keeper {
    fn renew<'a>(
        &'a self,
        state: &'a DriveState,
    ) -> futures::future::BoxFuture<'a, Result<(), crate::process::LifecycleError>> {
        use crate::process::LifecycleError;
        Box::pin(async move {
            let user = UserKey::new(
                crate::ids::TenantId::parse(&state.tenant_id)
                    .map_err(|e| LifecycleError::Fault(e.to_string()))?,
                crate::ids::ObjectId::parse(&state.user_oid)
                    .map_err(|e| LifecycleError::Fault(e.to_string()))?,
            );
            let token = self.tokens.token(&user).await?;
            let urls = &self.urls;
            let outcome = async {
                let resource = self.resource(&user, state).await?;
                self.rules()
                    .ensure(&user, state, true, &resource, urls, &token)
                    .await
            }
            .await;
            match outcome {
                Ok(record) => {
                    tracing::info!(drive_key = %state.drive_key, subscription_id = %record.subscription_id, expires_at = %record.expires_at, "subscription renewed");
                    Ok(())
                }
                Err(SubscriptionError::Graph(e)) => Err(match (e.status(), e.retry_after()) {
                    (Some(401 | 403), _) => LifecycleError::NeedsReauth,
                    (Some(429 | 503 | 509), Some(after)) => LifecycleError::Throttled(
                        self.clock.now() + Duration::from_std(after).unwrap_or(Duration::seconds(60)),
                    ),
                    _ if e.is_retryable() => LifecycleError::Transient(e.to_string()),
                    _ => LifecycleError::Fault(e.to_string()),
                }),
                Err(SubscriptionError::Store(e)) => Err(LifecycleError::Transient(e.to_string())),
            }
        })
    }
}
