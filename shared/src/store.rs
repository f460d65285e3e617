//! Connection state in DynamoDB: users, drive state and subscriptions (docs/data-model.md).
//!
//! Every write that must not go backwards is conditional: on a numeric `version`, or on the item
//! not existing yet. A lost race is [`StoreError::Conflict`], and the caller re-reads.
//!
//! The drive's `generation` is bumped by a disconnect (the tombstone) and by the reconnect that
//! follows; later issues key the item index and change log by it and condition every drive-state
//! write on it, so a walk that started under one connection cannot write into the next.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::ids::{DriveKey, UserKey};

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("another writer changed the record first; re-read and retry")]
    Conflict,
    #[error("DynamoDB call failed: {0}")]
    Call(String),
    #[error("a stored record could not be read: {0}")]
    Corrupt(String),
}

/// What graphfeed knows about a user: which drive, under which drive key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub drive_key: DriveKey,
    pub drive_id: String,
    /// `personal` or `business` (Graph's `driveType`).
    pub drive_type: String,
    pub created_at: DateTime<Utc>,
}

/// Where a drive's connection stands: the one state field (`GET /connect` shows it).
///
/// Two kinds of state share it. Walk states (`baseline_pending`, `active`, `resyncing`) follow
/// the walker. Subscription states (`renewing`, `expired`, `needs_reauth`) are set by renewals
/// and outrank them: a walk leaves them as they are, and only a successful renewal (or, for
/// `needs_reauth`, the user connecting again) clears them. `disconnected` is the tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriveStatus {
    /// Connected; the processor has not stored a deltaLink yet.
    BaselinePending,
    Active,
    /// The subscription is due and its last renewal failed for a reason that may pass (Graph
    /// unavailable or throttling); renew tries again on its next runs, before it expires.
    Renewing,
    /// Graph has no live subscription for the drive (it lapsed, or recreating it failed, e.g.
    /// on the subscription quota): notifications do not arrive. renew tries to recreate it on
    /// every run; the daily safety-net walk still finds changes.
    Expired,
    /// Only the user can fix it: their refresh token was refused (`POST /connect` again).
    NeedsReauth,
    Resyncing,
    /// The tombstone: disconnected; the generation and sequence high-water mark are kept.
    Disconnected,
}

impl DriveStatus {
    /// A subscription state: set by renewals, kept by walks.
    pub fn is_subscription_state(self) -> bool {
        matches!(self, Self::Renewing | Self::Expired | Self::NeedsReauth)
    }
}

/// A drive's state (pk `DRIVE#<drive key>`, sk `STATE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveState {
    pub drive_key: DriveKey,
    pub tenant_id: String,
    pub user_oid: String,
    pub drive_id: String,
    pub generation: u64,
    pub state: DriveStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_link: Option<String>,
    #[serde(default)]
    pub seq_high_water: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_walk_completed_at: Option<DateTime<Utc>>,
    /// When the last *completed* walk started: a notification received before it was already
    /// seen by that walk (coalescing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_walk_started_at: Option<DateTime<Utc>>,
    /// The walk under way, if any (process-changes resumes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// When this generation was connected (the safety net's clock before a first walk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<DateTime<Utc>>,
    /// Why the drive is in a subscription state, for a person (`GET /connect` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub version: u64,
}

/// What kind of walk a checkpoint is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalkMode {
    /// No deltaLink yet: fill the index, emit only `baseline-complete`.
    Baseline,
    /// Changes since the stored deltaLink.
    Incremental,
    /// A full enumeration after a 410: unseen index items become deletes.
    Resync,
}

/// A walk under way, saved after every page so a crash or a timeout resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Names the walk's staged pages (and, for a baseline, marks the index entries it wrote).
    pub walk_id: String,
    pub started_at: DateTime<Utc>,
    pub mode: WalkMode,
    /// The link to GET next, while paging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
    /// The deltaLink, once the last page was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_link: Option<String>,
    /// Pages read so far (the guard against endless walks).
    pub pages: u32,
    /// Staged chunks written so far (the next chunk's number).
    pub chunks: u32,
    /// Which invocation staged which chunks: `(first chunk, attempt id)`, in order. A chunk's key
    /// names its attempt, so a concurrent walker that lost the race for this checkpoint can never
    /// have overwritten a chunk it names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<(u32, String)>,
    /// A baseline that restarted after a 410: index entries it did not write are dropped at its end.
    #[serde(default)]
    pub restarted: bool,
    /// Set once the walk's events are in the change log: the sequence before the first one and
    /// how many. A replay from here only applies the index and commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logged: Option<Logged>,
}

impl Checkpoint {
    /// The staging key of `chunk`, by the attempt that wrote it.
    pub fn chunk_key(&self, chunk: u32) -> Option<String> {
        let (_, attempt) = self.attempts.iter().rev().find(|(from, _)| *from <= chunk)?;
        Some(format!("{}#{chunk:08}#{attempt}", self.walk_id))
    }

    /// The staging keys of every chunk staged so far, in order.
    pub fn chunk_keys(&self) -> Vec<String> {
        (0..self.chunks).filter_map(|c| self.chunk_key(c)).collect()
    }
}

/// A walk's events as logged: sequences `base + 1 ..= base + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logged {
    pub base: u64,
    pub count: u64,
}

impl DriveState {
    /// A drive's first state: generation 1, baseline pending, nothing walked yet.
    pub fn first(drive_key: DriveKey, tenant_id: &str, user_oid: &str, drive_id: &str) -> Self {
        Self {
            drive_key,
            tenant_id: tenant_id.to_owned(),
            user_oid: user_oid.to_owned(),
            drive_id: drive_id.to_owned(),
            generation: 1,
            state: DriveStatus::BaselinePending,
            delta_link: None,
            seq_high_water: 0,
            last_walk_completed_at: None,
            last_walk_started_at: None,
            checkpoint: None,
            connected_at: None,
            reason: None,
            version: 1,
        }
    }

    /// The state the walk's progress alone gives: `resyncing` during a resync, `baseline_pending`
    /// before the first deltaLink, else `active`.
    pub fn walk_status(&self) -> DriveStatus {
        if self
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.mode == WalkMode::Resync)
        {
            DriveStatus::Resyncing
        } else if self.delta_link.is_none() {
            DriveStatus::BaselinePending
        } else {
            DriveStatus::Active
        }
    }

    /// `status` unless the drive is in a subscription state, which a walk does not change.
    pub fn after_walk(&self, status: DriveStatus) -> DriveStatus {
        if self.state.is_subscription_state() {
            self.state
        } else {
            status
        }
    }

    /// Whether the safety net may walk the drive: connected, and not waiting for its user.
    pub fn walkable(&self) -> bool {
        !matches!(self.state, DriveStatus::Disconnected | DriveStatus::NeedsReauth)
    }

    /// When the safety net's 24 hours started: the last completed walk, else the connection.
    pub fn last_seen_at(&self) -> Option<DateTime<Utc>> {
        self.last_walk_completed_at.or(self.connected_at)
    }
}

/// A drive's Graph subscription (pk `DRIVE#<drive key>`, sk `SUB`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub drive_key: DriveKey,
    pub subscription_id: String,
    /// What Graph returned, never a locally computed expiry.
    pub expires_at: DateTime<Utc>,
    /// The clientState key id the subscription was created with (renew replaces retired ones).
    pub key_id: String,
    pub resource: String,
    pub generation: u64,
    /// Left out of the expiry index while the drive needs its user (renew cannot renew it, and
    /// it must not hold down the fleet's minimum time to expiry); a reconnect renews and unparks it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parked: bool,
    /// Renewal attempts that failed in a row (reset by a success).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// No renewal attempt before this (the backoff after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    pub version: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The shard count of both fleet indexes: subscriptions by expiry and drives by last walk
/// spread over this many partition keys.
pub const EXPIRY_SHARDS: u8 = 16;

/// The shard (0..[`EXPIRY_SHARDS`]) a drive's index entries are on: its key's first byte.
pub fn shard_of(drive_key: &DriveKey) -> u8 {
    drive_key.as_bytes()[0] % EXPIRY_SHARDS
}

impl SubscriptionRecord {
    /// A drive's first record of a subscription Graph made (version 1, no failures, unparked).
    pub fn first(
        drive_key: DriveKey,
        subscription_id: impl Into<String>,
        expires_at: DateTime<Utc>,
        key_id: impl Into<String>,
        resource: impl Into<String>,
        generation: u64,
    ) -> Self {
        Self {
            drive_key,
            subscription_id: subscription_id.into(),
            expires_at,
            key_id: key_id.into(),
            resource: resource.into(),
            generation,
            parked: false,
            failures: 0,
            retry_at: None,
            version: 1,
        }
    }

    /// `EXP#<shard>`: the drive key's first byte picks one of [`EXPIRY_SHARDS`] partitions.
    pub fn expiry_shard(&self) -> String {
        format!("EXP#{}", shard_of(&self.drive_key))
    }

    /// The expiry index's sort key: `<expires_at RFC 3339>#<drive key>`.
    pub fn expiry_sort_key(&self) -> String {
        format!(
            "{}#{}",
            self.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.drive_key
        )
    }
}

/// The walk index's sort key for a drive: `<hour of its last completed walk (or connection)>#<drive key>`.
/// By the hour, so a drive walked many times an hour moves in the index at most once an hour.
pub fn walk_sort_key(drive_key: &DriveKey, at: Option<DateTime<Utc>>) -> String {
    let hour = at.map_or_else(
        || "0000-00-00T00".to_owned(),
        |t| t.format("%Y-%m-%dT%H").to_string(),
    );
    format!("{hour}#{drive_key}")
}

/// The connection-state port.
pub trait ConnectionStore: Send + Sync {
    fn user(&self, user: &UserKey) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>>;
    /// Creates the user record unless one exists; returns the record that is stored (the
    /// first writer's, when two connects race), so a user's drive key never changes.
    fn create_user<'a>(
        &'a self,
        user: &'a UserKey,
        record: &'a UserRecord,
    ) -> BoxFuture<'a, Result<UserRecord, StoreError>>;
    fn drive(&self, drive_key: &DriveKey) -> BoxFuture<'_, Result<Option<DriveState>, StoreError>>;
    /// Writes `next` if the stored state has version `next.version - 1` (or none exists when
    /// `next.version == 1`).
    fn put_drive<'a>(&'a self, next: &'a DriveState) -> BoxFuture<'a, Result<(), StoreError>>;
    fn subscription(
        &self,
        drive_key: &DriveKey,
    ) -> BoxFuture<'_, Result<Option<SubscriptionRecord>, StoreError>>;
    /// Writes `next` if the stored record has version `next.version - 1` (or none exists when
    /// `next.version == 1`).
    fn put_subscription<'a>(&'a self, next: &'a SubscriptionRecord) -> BoxFuture<'a, Result<(), StoreError>>;
    fn delete_subscription<'a>(&'a self, drive_key: &'a DriveKey) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Deletes the drive's subscription record only if it is still at `version`: one written
    /// since (a reconnect's) is kept. Ok either way.
    fn delete_subscription_version<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        version: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// The DynamoDB adapter.
pub struct DynamoStore {
    pub(crate) client: aws_sdk_dynamodb::Client,
    pub(crate) table: String,
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

fn user_pk(user: &UserKey) -> String {
    format!("USER#{user}")
}

pub(crate) fn drive_pk(drive_key: &DriveKey) -> String {
    format!("DRIVE#{drive_key}")
}

pub(crate) fn key(pk: String, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk)),
        ("sk".to_owned(), AttributeValue::S(sk.to_owned())),
    ])
}

pub(crate) fn call_error<E: std::error::Error + 'static>(
    e: aws_sdk_dynamodb::error::SdkError<E>,
) -> StoreError {
    StoreError::Call(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
}

/// Whether a DynamoDB call failed on its condition (a lost race, or a forward-only write that is
/// already at or past its value).
pub(crate) fn is_condition_failure<E>(e: &aws_sdk_dynamodb::error::SdkError<E>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|s| s.code()) == Some("ConditionalCheckFailedException")
}

fn to_item<T: Serialize>(
    value: &T,
    pk: String,
    sk: &str,
    kind: &str,
) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let mut item: HashMap<String, AttributeValue> =
        serde_dynamo::to_item(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    item.extend(key(pk, sk));
    item.insert("kind".into(), AttributeValue::S(kind.into()));
    Ok(item)
}

pub(crate) fn from_item<T: for<'de> Deserialize<'de>>(
    item: HashMap<String, AttributeValue>,
) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl DynamoStore {
    async fn get<T: for<'de> Deserialize<'de>>(&self, pk: String, sk: &str) -> Result<Option<T>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(call_error)?;
        out.item.map(from_item).transpose()
    }

    /// A put conditioned on the version: none stored for version 1, else the previous one.
    async fn put_versioned(
        &self,
        item: HashMap<String, AttributeValue>,
        version: u64,
    ) -> Result<(), StoreError> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        request = if version <= 1 {
            request.condition_expression("attribute_not_exists(pk)")
        } else {
            request
                .condition_expression("version = :previous")
                .expression_attribute_values(":previous", AttributeValue::N((version - 1).to_string()))
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Err(StoreError::Conflict),
            Err(e) => Err(call_error(e)),
        }
    }
}

impl ConnectionStore for DynamoStore {
    fn user(&self, user: &UserKey) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>> {
        let pk = user_pk(user);
        Box::pin(async move { self.get(pk, "PROFILE").await })
    }

    fn create_user<'a>(
        &'a self,
        user: &'a UserKey,
        record: &'a UserRecord,
    ) -> BoxFuture<'a, Result<UserRecord, StoreError>> {
        Box::pin(async move {
            let item = to_item(record, user_pk(user), "PROFILE", "user")?;
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await;
            match put {
                Ok(_) => Ok(record.clone()),
                Err(e) if is_condition_failure(&e) => self
                    .get(user_pk(user), "PROFILE")
                    .await?
                    .ok_or(StoreError::Conflict),
                Err(e) => Err(call_error(e)),
            }
        })
    }

    fn drive(&self, drive_key: &DriveKey) -> BoxFuture<'_, Result<Option<DriveState>, StoreError>> {
        let pk = drive_pk(drive_key);
        Box::pin(async move { self.get(pk, "STATE").await })
    }

    fn put_drive<'a>(&'a self, next: &'a DriveState) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut item = to_item(next, drive_pk(&next.drive_key), "STATE", "drive")?;
            // The walk index (gsi2, sparse): only drives the safety net may walk.
            if next.walkable() {
                item.insert(
                    "gsi2pk".into(),
                    AttributeValue::S(format!("WALK#{}", shard_of(&next.drive_key))),
                );
                item.insert(
                    "gsi2sk".into(),
                    AttributeValue::S(walk_sort_key(&next.drive_key, next.last_seen_at())),
                );
            }
            self.put_versioned(item, next.version).await
        })
    }

    fn subscription(
        &self,
        drive_key: &DriveKey,
    ) -> BoxFuture<'_, Result<Option<SubscriptionRecord>, StoreError>> {
        let pk = drive_pk(drive_key);
        Box::pin(async move { self.get(pk, "SUB").await })
    }

    fn put_subscription<'a>(&'a self, next: &'a SubscriptionRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut item = to_item(next, drive_pk(&next.drive_key), "SUB", "subscription")?;
            // The expiry index (gsi1): every subscription renew is responsible for.
            if !next.parked {
                item.insert("gsi1pk".into(), AttributeValue::S(next.expiry_shard()));
                item.insert("gsi1sk".into(), AttributeValue::S(next.expiry_sort_key()));
            }
            self.put_versioned(item, next.version).await
        })
    }

    fn delete_subscription<'a>(&'a self, drive_key: &'a DriveKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(drive_pk(drive_key), "SUB")))
                .send()
                .await
                .map_err(call_error)?;
            Ok(())
        })
    }

    fn delete_subscription_version<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        version: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let deleted = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(drive_pk(drive_key), "SUB")))
                .condition_expression("version = :version")
                .expression_attribute_values(":version", AttributeValue::N(version.to_string()))
                .send()
                .await;
            match deleted {
                Ok(_) => Ok(()),
                Err(e) if is_condition_failure(&e) => Ok(()),
                Err(e) => Err(call_error(e)),
            }
        })
    }
}

/// Moves a drive's state for a (re)connection: a new drive starts at generation 1 in
/// `baseline_pending`; a disconnected one gets the next generation (sequence high-water mark
/// kept); a drive in `needs_reauth` is active again (the user just signed in), at the same
/// generation; a connected one is left as it is. Returns the state and whether the user came
/// back from `needs_reauth` (the subscription must then be reauthorized). Retries a lost race.
pub async fn begin_connection(
    store: &dyn ConnectionStore,
    drive_key: &DriveKey,
    user: &UserKey,
    drive_id: &str,
    now: DateTime<Utc>,
) -> Result<(DriveState, bool), StoreError> {
    for _ in 0..4 {
        let (next, reauthorized) = match store.drive(drive_key).await? {
            None => (
                DriveState {
                    connected_at: Some(now),
                    ..DriveState::first(*drive_key, user.tenant.as_str(), user.object.as_str(), drive_id)
                },
                false,
            ),
            Some(current) if current.state == DriveStatus::Disconnected => (
                DriveState {
                    generation: current.generation + 1,
                    state: DriveStatus::BaselinePending,
                    delta_link: None,
                    checkpoint: None,
                    drive_id: drive_id.to_owned(),
                    connected_at: Some(now),
                    last_walk_completed_at: None,
                    last_walk_started_at: None,
                    reason: None,
                    version: current.version + 1,
                    ..current
                },
                false,
            ),
            Some(current) if current.state == DriveStatus::NeedsReauth => (
                DriveState {
                    state: current.walk_status(),
                    reason: None,
                    version: current.version + 1,
                    ..current
                },
                true,
            ),
            Some(current) => return Ok((current, false)),
        };
        match store.put_drive(&next).await {
            Ok(()) => return Ok((next, reauthorized)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

/// Leaves the tombstone: `disconnected`, the next generation (so a walk of the old one can no
/// longer write), no deltaLink, the sequence high-water mark kept. Idempotent. Returns the
/// generation whose data (index, staged pages, change log) is now to be purged, when this call
/// did the disconnecting.
pub async fn tombstone(store: &dyn ConnectionStore, drive_key: &DriveKey) -> Result<Option<u64>, StoreError> {
    for _ in 0..4 {
        let Some(current) = store.drive(drive_key).await? else {
            return Ok(None);
        };
        if current.state == DriveStatus::Disconnected {
            return Ok(None);
        }
        let old_generation = current.generation;
        let next = DriveState {
            generation: current.generation + 1,
            state: DriveStatus::Disconnected,
            delta_link: None,
            checkpoint: None,
            reason: None,
            version: current.version + 1,
            ..current
        };
        match store.put_drive(&next).await {
            Ok(()) => return Ok(Some(old_generation)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

/// A subscription state for a drive of `generation`, as renewals find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionHealth {
    /// Renewed (or recreated): a `renewing` or `expired` drive goes back to its walk state.
    Healthy,
    /// `renewing`, `expired` or `needs_reauth`, and why.
    Trouble(DriveStatus, String),
}

/// Records what a renewal found in the drive's one state field, re-reading on a lost race.
/// `needs_reauth` outranks `renewing` and `expired` and is cleared only by a connect; it drops
/// a walk still paging (its staged pages would expire while the user is away; the next walk
/// starts from the committed deltaLink) and keeps one past its last page, which finishes
/// without Graph. A drive disconnected, or of another generation, is left alone. Returns the
/// state as stored.
pub async fn record_subscription_health(
    store: &dyn ConnectionStore,
    drive_key: &DriveKey,
    generation: u64,
    health: &SubscriptionHealth,
) -> Result<Option<DriveState>, StoreError> {
    for _ in 0..4 {
        let Some(current) = store.drive(drive_key).await? else {
            return Ok(None);
        };
        if current.generation != generation || current.state == DriveStatus::Disconnected {
            return Ok(Some(current));
        }
        let next = match health {
            SubscriptionHealth::Healthy => {
                if !matches!(current.state, DriveStatus::Renewing | DriveStatus::Expired) {
                    return Ok(Some(current));
                }
                DriveState {
                    state: current.walk_status(),
                    reason: None,
                    version: current.version + 1,
                    ..current
                }
            }
            SubscriptionHealth::Trouble(status, reason) => {
                let outranked =
                    current.state == DriveStatus::NeedsReauth && *status != DriveStatus::NeedsReauth;
                if outranked || (current.state == *status && current.reason.as_deref() == Some(reason)) {
                    return Ok(Some(current));
                }
                let checkpoint = if *status == DriveStatus::NeedsReauth {
                    current
                        .checkpoint
                        .clone()
                        .filter(|c| c.delta_link.is_some() || c.logged.is_some())
                } else {
                    current.checkpoint.clone()
                };
                DriveState {
                    state: *status,
                    reason: Some(reason.clone()),
                    checkpoint,
                    version: current.version + 1,
                    ..current
                }
            }
        };
        match store.put_drive(&next).await {
            Ok(()) => return Ok(Some(next)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

/// An in-memory [`ConnectionStore`] with the same conditional rules (tests and benchmarks).
#[derive(Debug, Default)]
pub struct MemoryStore {
    users: std::sync::Mutex<HashMap<UserKey, UserRecord>>,
    pub(crate) drives: std::sync::Mutex<HashMap<DriveKey, DriveState>>,
    pub(crate) subscriptions: std::sync::Mutex<HashMap<DriveKey, SubscriptionRecord>>,
    /// Safety-net claims (`DRIVE#<k>` / `NUDGE`): when each drive's last one was claimed.
    pub(crate) nudges: std::sync::Mutex<HashMap<DriveKey, DateTime<Utc>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

pub(crate) fn guard<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn versioned_put<T: Clone>(
    map: &mut HashMap<DriveKey, T>,
    key: DriveKey,
    next: &T,
    version: u64,
    current: Option<u64>,
) -> Result<(), StoreError> {
    let ok = match current {
        None => version <= 1,
        Some(v) => version > 1 && v == version - 1,
    };
    if !ok {
        return Err(StoreError::Conflict);
    }
    map.insert(key, next.clone());
    Ok(())
}

impl ConnectionStore for MemoryStore {
    fn user(&self, user: &UserKey) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>> {
        let found = guard(&self.users).get(user).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn create_user<'a>(
        &'a self,
        user: &'a UserKey,
        record: &'a UserRecord,
    ) -> BoxFuture<'a, Result<UserRecord, StoreError>> {
        let stored = guard(&self.users)
            .entry(user.clone())
            .or_insert_with(|| record.clone())
            .clone();
        Box::pin(async move { Ok(stored) })
    }

    fn drive(&self, drive_key: &DriveKey) -> BoxFuture<'_, Result<Option<DriveState>, StoreError>> {
        let found = guard(&self.drives).get(drive_key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn put_drive<'a>(&'a self, next: &'a DriveState) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut drives = guard(&self.drives);
        let current = drives.get(&next.drive_key).map(|d| d.version);
        let result = versioned_put(&mut drives, next.drive_key, next, next.version, current);
        Box::pin(async move { result })
    }

    fn subscription(
        &self,
        drive_key: &DriveKey,
    ) -> BoxFuture<'_, Result<Option<SubscriptionRecord>, StoreError>> {
        let found = guard(&self.subscriptions).get(drive_key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn put_subscription<'a>(&'a self, next: &'a SubscriptionRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut subs = guard(&self.subscriptions);
        let current = subs.get(&next.drive_key).map(|s| s.version);
        let result = versioned_put(&mut subs, next.drive_key, next, next.version, current);
        Box::pin(async move { result })
    }

    fn delete_subscription<'a>(&'a self, drive_key: &'a DriveKey) -> BoxFuture<'a, Result<(), StoreError>> {
        guard(&self.subscriptions).remove(drive_key);
        Box::pin(async { Ok(()) })
    }

    fn delete_subscription_version<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        version: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut subs = guard(&self.subscriptions);
        if subs.get(drive_key).is_some_and(|s| s.version == version) {
            subs.remove(drive_key);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn drive(state: DriveStatus) -> DriveState {
        DriveState {
            state,
            delta_link: Some("https://graph.microsoft.com/v1.0/drives/d/root/delta?token=t".into()),
            ..DriveState::first(DriveKey::random(), "t", "o", "d")
        }
    }

    fn trouble(status: DriveStatus) -> SubscriptionHealth {
        SubscriptionHealth::Trouble(status, format!("{status:?}"))
    }

    #[test]
    fn a_walk_keeps_a_subscription_state_and_moves_a_walk_state() {
        for kept in [
            DriveStatus::Renewing,
            DriveStatus::Expired,
            DriveStatus::NeedsReauth,
        ] {
            assert_eq!(drive(kept).after_walk(DriveStatus::Active), kept);
        }
        assert_eq!(
            drive(DriveStatus::BaselinePending).after_walk(DriveStatus::Active),
            DriveStatus::Active
        );
        assert_eq!(
            drive(DriveStatus::Active).after_walk(DriveStatus::Resyncing),
            DriveStatus::Resyncing
        );
    }

    #[tokio::test]
    async fn renewals_set_and_clear_subscription_states_and_needs_reauth_outranks_the_others() {
        let store = MemoryStore::new();
        let d = drive(DriveStatus::Active);
        store.put_drive(&d).await.unwrap();
        let record = |health| {
            let store = &store;
            async move {
                record_subscription_health(store, &d.drive_key, 1, &health)
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        let renewing = record(trouble(DriveStatus::Renewing)).await;
        assert_eq!(
            (renewing.state, renewing.reason.as_deref()),
            (DriveStatus::Renewing, Some("Renewing"))
        );
        assert_eq!(
            record(trouble(DriveStatus::Expired)).await.state,
            DriveStatus::Expired
        );
        let healthy = record(SubscriptionHealth::Healthy).await;
        assert_eq!((healthy.state, healthy.reason), (DriveStatus::Active, None));
        // The same health again writes nothing.
        assert_eq!(record(SubscriptionHealth::Healthy).await.version, healthy.version);

        assert_eq!(
            record(trouble(DriveStatus::NeedsReauth)).await.state,
            DriveStatus::NeedsReauth
        );
        // Neither a failed nor a successful renewal clears needs_reauth: only a connect does.
        assert_eq!(
            record(trouble(DriveStatus::Renewing)).await.state,
            DriveStatus::NeedsReauth
        );
        assert_eq!(
            record(SubscriptionHealth::Healthy).await.state,
            DriveStatus::NeedsReauth
        );
    }

    #[tokio::test]
    async fn needs_reauth_drops_a_walk_still_paging_and_keeps_one_past_its_last_page() {
        let store = MemoryStore::new();
        let checkpoint = |delta_link: Option<&str>| Checkpoint {
            walk_id: "w".into(),
            started_at: Utc::now(),
            mode: WalkMode::Incremental,
            next_link: None,
            delta_link: delta_link.map(str::to_owned),
            pages: 1,
            chunks: 1,
            attempts: Vec::new(),
            restarted: false,
            logged: None,
        };
        for (delta_link, kept) in [(None, false), (Some("https://graph/delta?token=n"), true)] {
            let d = DriveState {
                checkpoint: Some(checkpoint(delta_link)),
                ..drive(DriveStatus::Active)
            };
            store.put_drive(&d).await.unwrap();
            let after =
                record_subscription_health(&store, &d.drive_key, 1, &trouble(DriveStatus::NeedsReauth))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(after.checkpoint.is_some(), kept);
        }
    }

    #[tokio::test]
    async fn a_renewal_of_another_generation_or_a_disconnected_drive_changes_nothing() {
        let store = MemoryStore::new();
        let d = drive(DriveStatus::Disconnected);
        store.put_drive(&d).await.unwrap();
        let after = record_subscription_health(&store, &d.drive_key, 1, &trouble(DriveStatus::Expired))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((after.state, after.version), (DriveStatus::Disconnected, 1));
        let e = drive(DriveStatus::Active);
        store.put_drive(&e).await.unwrap();
        let after = record_subscription_health(&store, &e.drive_key, 2, &trouble(DriveStatus::Expired))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.state, DriveStatus::Active);
    }
}
