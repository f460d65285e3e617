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

/// Where a drive's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriveStatus {
    /// Connected; the processor has not stored a deltaLink yet.
    BaselinePending,
    Active,
    NeedsReauth,
    Resyncing,
    /// The tombstone: disconnected; the generation and sequence high-water mark are kept.
    Disconnected,
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
            version: 1,
        }
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
    pub version: u64,
}

/// The expiry index's shard count: subscriptions spread over this many partition keys.
pub const EXPIRY_SHARDS: u8 = 16;

impl SubscriptionRecord {
    /// `EXP#<shard>`: the drive key's first byte picks one of [`EXPIRY_SHARDS`] partitions.
    pub fn expiry_shard(&self) -> String {
        format!("EXP#{}", self.drive_key.as_bytes()[0] % EXPIRY_SHARDS)
    }
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
}

/// The DynamoDB adapter.
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
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

fn drive_pk(drive_key: &DriveKey) -> String {
    format!("DRIVE#{drive_key}")
}

fn key(pk: String, sk: &str) -> HashMap<String, AttributeValue> {
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

fn from_item<T: for<'de> Deserialize<'de>>(item: HashMap<String, AttributeValue>) -> Result<T, StoreError> {
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
            let item = to_item(next, drive_pk(&next.drive_key), "STATE", "drive")?;
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
            item.insert("gsi1pk".into(), AttributeValue::S(next.expiry_shard()));
            item.insert(
                "gsi1sk".into(),
                AttributeValue::S(format!(
                    "{}#{}",
                    next.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    next.drive_key
                )),
            );
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
) -> Result<(DriveState, bool), StoreError> {
    for _ in 0..4 {
        let (next, reauthorized) = match store.drive(drive_key).await? {
            None => (
                DriveState::first(*drive_key, user.tenant.as_str(), user.object.as_str(), drive_id),
                false,
            ),
            Some(current) if current.state == DriveStatus::Disconnected => (
                DriveState {
                    generation: current.generation + 1,
                    state: DriveStatus::BaselinePending,
                    delta_link: None,
                    checkpoint: None,
                    drive_id: drive_id.to_owned(),
                    version: current.version + 1,
                    ..current
                },
                false,
            ),
            Some(current) if current.state == DriveStatus::NeedsReauth => (
                DriveState {
                    state: if current.delta_link.is_some() {
                        DriveStatus::Active
                    } else {
                        DriveStatus::BaselinePending
                    },
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

/// An in-memory [`ConnectionStore`] with the same conditional rules (tests and benchmarks).
#[derive(Debug, Default)]
pub struct MemoryStore {
    users: std::sync::Mutex<HashMap<UserKey, UserRecord>>,
    drives: std::sync::Mutex<HashMap<DriveKey, DriveState>>,
    subscriptions: std::sync::Mutex<HashMap<DriveKey, SubscriptionRecord>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn guard<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
}
