//! connect's decisions: from a validated caller to a live subscription and a queued baseline,
//! and back again on disconnect (issue 3).
//!
//! Order matters, so that nothing is left half-done by a crash:
//! 1. on-behalf-of exchange, refresh token into the vault (versioned write);
//! 2. the user's drive and its stable drive key (first writer wins);
//! 3. the drive state moves to `baseline_pending` *before* the subscription exists, so a
//!    notification that beats the baseline message still finds a drive without a deltaLink;
//! 4. the subscription: kept if alive, renewed if inside the renewal window, created otherwise
//!    (a 409 adopts Graph's existing one when its clientState verifies, else replaces it);
//! 5. a baseline walk (no deltaLink yet) or a catch-up walk (a reconnect that kept one) is
//!    enqueued on the drive's message group.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use secrecy::SecretString;

use crate::client_state::KeyStore;
use crate::clock::SharedClock;
use crate::entra::{EntraClient, EntraError};
use crate::envelope::{Envelope, Kind};
use crate::graph::{GraphClient, GraphError};
use crate::ids::{DriveKey, UserKey};
use crate::queue::{NotificationQueue, OutgoingMessage, QueueError, send_all};
use crate::store::{ConnectionStore, DriveStatus, StoreError, UserRecord, begin_connection, tombstone};
use crate::subscriptions::{SubscriptionError, Subscriptions};
use crate::vault::{TokenVault, VaultError};
use crate::walk_store::{Scope, WalkStore};

/// Graph's maximum driveItem subscription lifetime (graph-protocol.md §1.3).
pub const MAX_LIFETIME: Duration = Duration::minutes(42_300);
/// Asked-for lifetime is the maximum less this, so clock skew never makes Graph refuse it.
pub const LIFETIME_MARGIN: Duration = Duration::minutes(60);
/// The default renewal window (`RENEW_WINDOW_MINUTES`): 72 hours.
pub const DEFAULT_RENEW_WINDOW: Duration = Duration::hours(72);

/// Where Graph calls notify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationUrls {
    pub notification: String,
    pub lifecycle: String,
}

/// Why connect or disconnect failed, in terms the HTTP edge maps to a status.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Entra(#[from] EntraError),
    #[error("Graph refused: {0}")]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the baseline could not be queued: {0}")]
    Queue(#[from] QueueError),
    #[error("the user is not connected")]
    NotConnected,
    #[error("Entra returned no refresh token: GRAPH_SCOPES must include offline_access")]
    NoRefreshToken,
    #[error("the user disconnected while this connect was under way")]
    DisconnectedMeanwhile,
}

impl From<SubscriptionError> for ConnectError {
    fn from(e: SubscriptionError) -> Self {
        match e {
            SubscriptionError::Graph(e) => ConnectError::Graph(e),
            SubscriptionError::Store(e) => ConnectError::Store(e),
        }
    }
}

/// The outcome of a connect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Connection {
    pub subscription_id: String,
    pub expires_at: DateTime<Utc>,
    pub drive_id: String,
    pub drive_key: DriveKey,
    /// `baseline` or `catch-up`: the walk that was queued.
    pub walk: Kind,
}

/// Everything connect needs, built once per cold start.
pub struct Connector {
    pub entra: EntraClient,
    pub graph: GraphClient,
    pub vault: Arc<dyn TokenVault>,
    pub store: Arc<dyn ConnectionStore>,
    pub queue: Arc<dyn NotificationQueue>,
    pub keys: Arc<KeyStore>,
    pub clock: SharedClock,
    pub renew_window: Duration,
    /// See [`Subscriptions::jitter`].
    pub jitter: Duration,
    /// The drives' change logs, read by `GET /changes`.
    pub log: Arc<dyn WalkStore>,
}

impl Connector {
    /// The subscription rules, shared with process-changes and renew.
    pub fn subscriptions(&self) -> Subscriptions<'_> {
        Subscriptions {
            graph: &self.graph,
            store: self.store.as_ref(),
            keys: &self.keys,
            clock: &self.clock,
            renew_window: self.renew_window,
            jitter: self.jitter,
        }
    }

    /// Connects (or reconnects) the caller whose API token is `assertion`.
    pub async fn connect(
        &self,
        user: &UserKey,
        assertion: &SecretString,
        urls: &NotificationUrls,
    ) -> Result<Connection, ConnectError> {
        let tokens = self.entra.on_behalf_of(user.tenant.as_str(), assertion).await?;
        let refresh = tokens
            .refresh_token
            .as_ref()
            .ok_or(ConnectError::NoRefreshToken)?;
        self.store_refresh_token(user, refresh).await?;
        let drive = self.graph.my_drive(&tokens.access_token).await?;
        let record = match self.store.user(user).await? {
            Some(r) => r,
            None => {
                let fresh = UserRecord {
                    drive_key: DriveKey::random(),
                    drive_id: drive.id.clone(),
                    drive_type: drive.drive_type.clone(),
                    created_at: self.clock.now(),
                };
                self.store.create_user(user, &fresh).await?
            }
        };
        let (state, reauthorized) = begin_connection(
            self.store.as_ref(),
            &record.drive_key,
            user,
            &drive.id,
            self.clock.now(),
        )
        .await?;
        let subscription = self
            .subscriptions()
            .ensure(
                user,
                &state,
                reauthorized,
                &drive.subscription_resource(),
                urls,
                &tokens.access_token,
            )
            .await?
            .record;
        // A disconnect that landed meanwhile wins: undo what this connect made.
        let now_state = self.store.drive(&record.drive_key).await?;
        if now_state
            .as_ref()
            .is_none_or(|d| d.generation != state.generation || d.state == DriveStatus::Disconnected)
        {
            self.graph
                .delete_subscription(&tokens.access_token, &subscription.subscription_id)
                .await?;
            self.store.delete_subscription(&record.drive_key).await?;
            self.vault.shred(user).await?;
            return Err(ConnectError::DisconnectedMeanwhile);
        }
        let walk = if state.delta_link.is_some() {
            Kind::CatchUp
        } else {
            Kind::Baseline
        };
        let envelope = Envelope::new(walk, record.drive_key, user.tenant.clone(), self.clock.now());
        send_all(
            self.queue.as_ref(),
            &[OutgoingMessage::new(record.drive_key, envelope.to_json())],
        )
        .await?;
        Ok(Connection {
            subscription_id: subscription.subscription_id,
            expires_at: subscription.expires_at,
            drive_id: drive.id,
            drive_key: record.drive_key,
            walk,
        })
    }

    /// Replaces the stored refresh token with a version-checked write. A stored record that can
    /// no longer be opened (tampered, another format) is shredded and replaced: the user has
    /// just proved who they are, so a broken record must not block the reconnect that fixes it.
    async fn store_refresh_token(&self, user: &UserKey, token: &SecretString) -> Result<(), ConnectError> {
        let mut attempts = 0;
        loop {
            let expected = match self.vault.load(user).await {
                Ok(stored) => stored.map(|t| t.version),
                Err(e) if !e.is_transient() && !matches!(e, VaultError::Conflict { .. }) => {
                    tracing::warn!(error = %e, "the stored refresh token cannot be opened; replacing it");
                    self.vault.shred(user).await?;
                    None
                }
                Err(e) => return Err(e.into()),
            };
            match self.vault.store(user, token, expected).await {
                Ok(_) => return Ok(()),
                Err(VaultError::Conflict { .. }) if attempts < 3 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Disconnects: leaves the tombstone first (so a walk under way can no longer write), deletes
    /// the Graph subscription with a Graph token from the on-behalf-of exchange or, failing
    /// that, from the stored refresh token (404 is fine), then crypto-shreds the tokens.
    /// Idempotent. A subscription Graph could not be asked to delete (no usable token) is left
    /// to expire: its notifications land on a tombstoned drive and are dropped.
    pub async fn disconnect(&self, user: &UserKey, assertion: &SecretString) -> Result<(), ConnectError> {
        if let Some(record) = self.store.user(user).await? {
            if let Some(generation) = tombstone(self.store.as_ref(), &record.drive_key).await? {
                // The processor deletes the old generation's index, staged pages and change log.
                let mut purge = Envelope::new(
                    Kind::Purge,
                    record.drive_key,
                    user.tenant.clone(),
                    self.clock.now(),
                );
                purge.generation = Some(generation);
                send_all(
                    self.queue.as_ref(),
                    &[OutgoingMessage::new(record.drive_key, purge.to_json())],
                )
                .await?;
            }
            if let Some(sub) = self.store.subscription(&record.drive_key).await? {
                match self.graph_token(user, assertion).await {
                    Some(token) => {
                        self.graph
                            .delete_subscription(&token, &sub.subscription_id)
                            .await?;
                        self.store.delete_subscription(&record.drive_key).await?;
                    }
                    None => tracing::warn!(
                        subscription_id = %sub.subscription_id,
                        "no Graph token to delete the subscription; it is left to expire on a tombstoned drive"
                    ),
                }
            }
        }
        // Unconditionally: a connect that failed before the user record existed may have
        // stored a token already.
        self.vault.shred(user).await?;
        Ok(())
    }

    /// A Graph token for `user`: on-behalf-of first, then the stored refresh token.
    async fn graph_token(&self, user: &UserKey, assertion: &SecretString) -> Option<SecretString> {
        match self.entra.on_behalf_of(user.tenant.as_str(), assertion).await {
            Ok(t) => return Some(t.access_token),
            Err(e) => {
                tracing::info!(error = %e, "on-behalf-of failed during disconnect; trying the stored refresh token")
            }
        }
        let stored = self.vault.load(user).await.ok().flatten()?;
        match self.entra.refresh(user.tenant.as_str(), &stored.token).await {
            Ok(t) => Some(t.access_token),
            Err(e) => {
                tracing::info!(error = %e, "the refresh grant failed during disconnect");
                None
            }
        }
    }

    /// The caller's connection status.
    pub async fn status(&self, user: &UserKey) -> Result<Status, ConnectError> {
        let record = self.store.user(user).await?.ok_or(ConnectError::NotConnected)?;
        let drive = self
            .store
            .drive(&record.drive_key)
            .await?
            .ok_or(ConnectError::NotConnected)?;
        let subscription = self.store.subscription(&record.drive_key).await?;
        Ok(Status {
            state: drive.state,
            reason: drive.reason,
            drive_id: drive.drive_id,
            subscription_id: subscription.as_ref().map(|s| s.subscription_id.clone()),
            expires_at: subscription.map(|s| s.expires_at),
            last_walk_completed_at: drive.last_walk_completed_at,
        })
    }
}

impl Connector {
    /// A page of the caller's change events with a sequence above `after`: only committed ones
    /// (at most the drive's `seq_high_water`), so a reader never sees an event a walk could
    /// still renumber, from the current connection's change log.
    pub async fn changes(
        &self,
        user: &UserKey,
        after: u64,
        limit: usize,
    ) -> Result<ChangesPage, ConnectError> {
        let record = self.store.user(user).await?.ok_or(ConnectError::NotConnected)?;
        let drive = self
            .store
            .drive(&record.drive_key)
            .await?
            .filter(|d| d.state != DriveStatus::Disconnected)
            .ok_or(ConnectError::NotConnected)?;
        let committed = drive.seq_high_water;
        if after >= committed {
            return Ok(ChangesPage {
                events: Vec::new(),
                next: after,
                more: false,
            });
        }
        let scope = Scope {
            drive_key: &record.drive_key,
            generation: drive.generation,
        };
        let entries = self.log.log_after(scope, after, limit).await?;
        let mut events = Vec::with_capacity(entries.len());
        let mut next = after;
        for entry in entries.iter().take_while(|e| e.sequence <= committed) {
            let event = serde_json::from_str(&entry.event)
                .map_err(|e| StoreError::Corrupt(format!("change-log entry {}: {e}", entry.sequence)))?;
            events.push(event);
            next = entry.sequence;
        }
        if events.is_empty() {
            // Nothing left at or below the high-water mark: the rest expired (the log's
            // retention) or belonged to an earlier connection. Move past it rather than
            // answer the same empty page for ever; the sequence shows the gap.
            next = committed;
        }
        Ok(ChangesPage {
            more: entries.len() == limit && next < committed,
            events,
            next,
        })
    }
}

/// What `GET /changes` answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChangesPage {
    /// Change events as they were sent to the changes queue, in sequence order.
    pub events: Vec<serde_json::Value>,
    /// The cursor to pass as `after` next time.
    pub next: u64,
    /// Whether more committed events are ready now.
    pub more: bool,
}

/// What `GET /connect` shows: the drive's one state field and, for a subscription state, why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub state: DriveStatus,
    pub reason: Option<String>,
    pub drive_id: String,
    pub subscription_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_walk_completed_at: Option<DateTime<Utc>>,
}
