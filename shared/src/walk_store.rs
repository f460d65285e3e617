//! What a walk keeps in DynamoDB besides the drive state: the item index, staged pages, the
//! change log (the outbox), the published cursor and each tenant's throttled-until time
//! (docs/data-model.md).
//!
//! - **Index** (`IDX#<drive key>#<generation>` / `<item id>`): written in batches of 25; an
//!   entry remembers which walk wrote it, so a baseline that restarted can drop what it did not
//!   see again.
//! - **Staging** (`STAGE#<drive key>#<generation>` / `<walk id>#<chunk>#<attempt>`): a page's items,
//!   written before the checkpoint moves past the page; purged by TTL. The attempt (one per
//!   invocation) keeps a concurrent walker that loses the checkpoint race from overwriting a chunk
//!   the winner's checkpoint names.
//! - **Change log** (`LOG#<drive key>#<generation>` / `<sequence, 20 digits>`): each entry is
//!   written once, conditionally; writing an identical entry again is a no-op, a different one is
//!   [`StoreError::Conflict`]. Kept for the retention (TTL). One conditional PutItem per entry,
//!   16 in flight: 1 WCU each, where a TransactWriteItems would cost 2.
//! - **Published cursor** (`DRIVE#<drive key>` / `PUBLISHED`): only ever moves forward.
//! - **Throttle** (`TENANT#<tenant id>` / `THROTTLE`): only ever moves later.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::delta::ItemState;
use crate::ids::DriveKey;
use crate::store::{StoreError, call_error, is_condition_failure};

/// Which sort keys of a partition a query reads.
enum SortKeys {
    After(String),
    Prefix(String),
}

/// An index entry and the walk that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub item: ItemState,
    pub walk_id: Option<String>,
}

/// One change-log entry: the event JSON under its sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub sequence: u64,
    pub walk_id: String,
    pub event: String,
}

/// A drive's data for one connection generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope<'a> {
    pub drive_key: &'a DriveKey,
    pub generation: u64,
}

/// The walk-data port.
pub trait WalkStore: Send + Sync {
    /// The index entries of `ids` that exist.
    fn index_get<'a>(
        &'a self,
        scope: Scope<'a>,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, ItemState>, StoreError>>;
    /// Writes (overwrites) index entries, marking them as written by `walk_id`.
    fn index_put<'a>(
        &'a self,
        scope: Scope<'a>,
        items: &'a [ItemState],
        walk_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Every index entry of the drive (a resync compares against all of them).
    fn index_all<'a>(&'a self, scope: Scope<'a>) -> BoxFuture<'a, Result<Vec<IndexEntry>, StoreError>>;
    /// Stages one chunk of a walk's items under `key` (see [`crate::store::Checkpoint::chunk_key`]).
    fn stage<'a>(
        &'a self,
        scope: Scope<'a>,
        key: &'a str,
        items: &'a [ItemState],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The chunks staged under `keys`, their items in the order of `keys`; a missing chunk is
    /// [`StoreError::Corrupt`].
    fn staged<'a>(
        &'a self,
        scope: Scope<'a>,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ItemState>, StoreError>>;
    /// Appends entries; an entry already there with the same content is fine, a different one is
    /// [`StoreError::Conflict`].
    fn log_append<'a>(
        &'a self,
        scope: Scope<'a>,
        entries: &'a [LogEntry],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Up to `limit` entries with a sequence above `after`, in order.
    fn log_after<'a>(
        &'a self,
        scope: Scope<'a>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, StoreError>>;
    /// The highest sequence sent to the changes queue (0 for none).
    fn published<'a>(&'a self, drive_key: &'a DriveKey) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Moves the published cursor forward to `sequence` (never back).
    fn set_published<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        sequence: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Deletes a generation's index, staged pages and change log (after a disconnect).
    fn purge<'a>(&'a self, scope: Scope<'a>) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Until when the tenant is throttled, if it is.
    fn throttled_until<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<Option<DateTime<Utc>>, StoreError>>;
    /// Records that the tenant is throttled until `until` (a later time wins).
    fn throttle<'a>(&'a self, tenant: &'a str, until: DateTime<Utc>)
    -> BoxFuture<'a, Result<(), StoreError>>;
}

// ---- in memory (unit tests and the walker benchmark) -------------------------------------------

type ScopeKey = (DriveKey, u64);

/// An in-memory [`WalkStore`].
#[derive(Debug, Default)]
pub struct MemoryWalkStore {
    index: Mutex<HashMap<ScopeKey, HashMap<String, IndexEntry>>>,
    staged: Mutex<HashMap<(ScopeKey, String), Vec<ItemState>>>,
    log: Mutex<HashMap<ScopeKey, BTreeMap<u64, LogEntry>>>,
    published: Mutex<HashMap<DriveKey, u64>>,
    throttles: Mutex<HashMap<String, DateTime<Utc>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn scope_key(scope: Scope<'_>) -> ScopeKey {
    (*scope.drive_key, scope.generation)
}

impl MemoryWalkStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many index entries the drive has (deleted ones included).
    pub fn index_len(&self, scope: Scope<'_>) -> usize {
        lock(&self.index).get(&scope_key(scope)).map_or(0, HashMap::len)
    }
}

impl WalkStore for MemoryWalkStore {
    fn index_get<'a>(
        &'a self,
        scope: Scope<'a>,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, ItemState>, StoreError>> {
        let index = lock(&self.index);
        let found = index
            .get(&scope_key(scope))
            .map(|m| {
                ids.iter()
                    .filter_map(|id| m.get(id).map(|e| (id.clone(), e.item.clone())))
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(async move { Ok(found) })
    }

    fn index_put<'a>(
        &'a self,
        scope: Scope<'a>,
        items: &'a [ItemState],
        walk_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut index = lock(&self.index);
        let map = index.entry(scope_key(scope)).or_default();
        for item in items {
            map.insert(
                item.id.clone(),
                IndexEntry {
                    item: item.clone(),
                    walk_id: walk_id.map(str::to_owned),
                },
            );
        }
        Box::pin(async { Ok(()) })
    }

    fn index_all<'a>(&'a self, scope: Scope<'a>) -> BoxFuture<'a, Result<Vec<IndexEntry>, StoreError>> {
        let all = lock(&self.index)
            .get(&scope_key(scope))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(all) })
    }

    fn stage<'a>(
        &'a self,
        scope: Scope<'a>,
        key: &'a str,
        items: &'a [ItemState],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        lock(&self.staged).insert((scope_key(scope), key.to_owned()), items.to_vec());
        Box::pin(async { Ok(()) })
    }

    fn staged<'a>(
        &'a self,
        scope: Scope<'a>,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ItemState>, StoreError>> {
        let staged = lock(&self.staged);
        let mut all = Vec::new();
        for key in keys {
            match staged.get(&(scope_key(scope), key.clone())) {
                Some(items) => all.extend(items.iter().cloned()),
                None => {
                    let missing = key.clone();
                    return Box::pin(async move {
                        Err(StoreError::Corrupt(format!("staged chunk {missing} is missing")))
                    });
                }
            }
        }
        Box::pin(async move { Ok(all) })
    }

    fn log_append<'a>(
        &'a self,
        scope: Scope<'a>,
        entries: &'a [LogEntry],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut log = lock(&self.log);
        let drive_log = log.entry(scope_key(scope)).or_default();
        let mut result = Ok(());
        for entry in entries {
            match drive_log.get(&entry.sequence) {
                Some(existing) if existing.event == entry.event => {}
                Some(_) => {
                    result = Err(StoreError::Conflict);
                    break;
                }
                None => {
                    drive_log.insert(entry.sequence, entry.clone());
                }
            }
        }
        Box::pin(async move { result })
    }

    fn log_after<'a>(
        &'a self,
        scope: Scope<'a>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, StoreError>> {
        let entries = lock(&self.log)
            .get(&scope_key(scope))
            .map(|l| {
                l.range(after.saturating_add(1)..)
                    .take(limit)
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(async move { Ok(entries) })
    }

    fn published<'a>(&'a self, drive_key: &'a DriveKey) -> BoxFuture<'a, Result<u64, StoreError>> {
        let seq = lock(&self.published).get(drive_key).copied().unwrap_or(0);
        Box::pin(async move { Ok(seq) })
    }

    fn set_published<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        sequence: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut published = lock(&self.published);
        let current = published.entry(*drive_key).or_insert(0);
        *current = (*current).max(sequence);
        Box::pin(async { Ok(()) })
    }

    fn purge<'a>(&'a self, scope: Scope<'a>) -> BoxFuture<'a, Result<u64, StoreError>> {
        let key = scope_key(scope);
        let mut removed = lock(&self.index).remove(&key).map_or(0, |m| m.len() as u64);
        removed += lock(&self.log).remove(&key).map_or(0, |l| l.len() as u64);
        let mut staged = lock(&self.staged);
        let before = staged.len();
        staged.retain(|(k, _), _| *k != key);
        removed += (before - staged.len()) as u64;
        Box::pin(async move { Ok(removed) })
    }

    fn throttled_until<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<Option<DateTime<Utc>>, StoreError>> {
        let until = lock(&self.throttles).get(tenant).copied();
        Box::pin(async move { Ok(until) })
    }

    fn throttle<'a>(
        &'a self,
        tenant: &'a str,
        until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut throttles = lock(&self.throttles);
        let current = throttles.entry(tenant.to_owned()).or_insert(until);
        *current = (*current).max(until);
        Box::pin(async { Ok(()) })
    }
}

// ---- DynamoDB --------------------------------------------------------------------------------

/// DynamoDB calls the adapter made, for the cost figures (`make bench-walk`).
#[derive(Debug, Default)]
pub struct WriteCounters {
    /// Write requests (PutItem, BatchWriteItem, TransactWriteItems, UpdateItem).
    pub write_calls: AtomicU64,
    /// Items written by those calls.
    pub items_written: AtomicU64,
    /// Read requests (GetItem, BatchGetItem, Query).
    pub read_calls: AtomicU64,
}

/// The DynamoDB adapter.
pub struct DynamoWalkStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// How long log entries are kept.
    log_retention: chrono::Duration,
    clock: crate::clock::SharedClock,
    counters: WriteCounters,
}

/// How long staged pages are kept before TTL purges them (a walk resumes well within it).
const STAGE_TTL: chrono::Duration = chrono::Duration::days(2);
/// How long a deleted item's index entry is kept (its path serves later events meanwhile).
const DELETED_INDEX_TTL: chrono::Duration = chrono::Duration::days(30);

fn index_pk(scope: Scope<'_>) -> String {
    format!("IDX#{}#{}", scope.drive_key, scope.generation)
}

fn stage_pk(scope: Scope<'_>) -> String {
    format!("STAGE#{}#{}", scope.drive_key, scope.generation)
}

/// The change log's partition of one drive generation.
pub fn log_pk(scope: Scope<'_>) -> String {
    format!("LOG#{}#{}", scope.drive_key, scope.generation)
}

/// A log entry's sort key: the sequence, zero-padded so keys sort as numbers.
pub fn log_sk(sequence: u64) -> String {
    format!("{sequence:020}")
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} is missing or not a string")))
}

fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Result<u64, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} is missing or not a number")))
}

impl DynamoWalkStore {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        log_retention: chrono::Duration,
        clock: crate::clock::SharedClock,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            log_retention,
            clock,
            counters: WriteCounters::default(),
        }
    }

    pub fn counters(&self) -> &WriteCounters {
        &self.counters
    }

    fn count_write(&self, items: usize) {
        self.counters.write_calls.fetch_add(1, Ordering::Relaxed);
        self.counters
            .items_written
            .fetch_add(items as u64, Ordering::Relaxed);
    }

    fn count_read(&self) {
        self.counters.read_calls.fetch_add(1, Ordering::Relaxed);
    }

    fn ttl_in(&self, after: chrono::Duration) -> AttributeValue {
        n((self.clock.now() + after).timestamp())
    }

    /// One item by key, read consistently.
    async fn get_one(
        &self,
        pk: String,
        sk: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        self.count_read();
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(call_error)?;
        Ok(out.item)
    }

    /// Puts items with BatchWriteItem (see [`Self::batch_write`]).
    async fn batch_put(&self, items: Vec<HashMap<String, AttributeValue>>) -> Result<(), StoreError> {
        let requests = items
            .into_iter()
            .map(|item| {
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.batch_write(requests).await
    }

    /// BatchWriteItem in chunks of 25, retrying unprocessed items with a short backoff.
    async fn batch_write(&self, requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        for chunk in requests.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk.to_vec();
            for attempt in 0..8u32 {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(25 << attempt.min(5))).await;
                }
                self.count_write(pending.len());
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, std::mem::take(&mut pending))
                    .send()
                    .await
                    .map_err(call_error)?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table))
                    .unwrap_or_default();
            }
            if !pending.is_empty() {
                return Err(StoreError::Call(format!(
                    "{} writes stayed unprocessed after retries",
                    pending.len()
                )));
            }
        }
        Ok(())
    }

    /// Every item of a partition, paging.
    async fn query_all(
        &self,
        pk: String,
        after_sk: Option<SortKeys>,
        limit: Option<usize>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_values(":pk", s(pk.clone()));
            request = match &after_sk {
                Some(SortKeys::After(sk)) => request
                    .key_condition_expression("pk = :pk AND sk > :after")
                    .expression_attribute_values(":after", s(sk.clone())),
                Some(SortKeys::Prefix(prefix)) => request
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix.clone())),
                None => request.key_condition_expression("pk = :pk"),
            };
            if let Some(limit) = limit {
                request = request.limit(i32::try_from(limit.saturating_sub(items.len())).unwrap_or(i32::MAX));
            }
            self.count_read();
            let out = request
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(call_error)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if limit.is_none_or(|l| items.len() < l) => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    fn index_item(
        &self,
        scope: Scope<'_>,
        item: &ItemState,
        walk_id: Option<&str>,
    ) -> Result<HashMap<String, AttributeValue>, StoreError> {
        let mut attrs: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(item).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        attrs.insert("pk".into(), s(index_pk(scope)));
        attrs.insert("sk".into(), s(item.id.clone()));
        attrs.insert("kind".into(), s("index"));
        if let Some(walk) = walk_id {
            attrs.insert("walk_id".into(), s(walk));
        }
        if item.deleted {
            attrs.insert("ttl".into(), self.ttl_in(DELETED_INDEX_TTL));
        }
        Ok(attrs)
    }

    fn log_entry_from(item: &HashMap<String, AttributeValue>) -> Result<LogEntry, StoreError> {
        Ok(LogEntry {
            sequence: get_s(item, "sk")?
                .parse()
                .map_err(|_| StoreError::Corrupt("a log sort key is not a sequence".into()))?,
            walk_id: get_s(item, "walk_id")?.to_owned(),
            event: get_s(item, "event")?.to_owned(),
        })
    }
}

/// A forward-only write (a cursor, a throttle) that found the stored value already at or past its
/// own did nothing, and that is success.
fn forward_only<T, E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static>(
    result: Result<T, aws_sdk_dynamodb::error::SdkError<E>>,
) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_condition_failure(&e) => Ok(()),
        Err(e) => Err(call_error(e)),
    }
}

fn index_entry_from(mut item: HashMap<String, AttributeValue>) -> Result<IndexEntry, StoreError> {
    let walk_id = item.remove("walk_id").and_then(|v| v.as_s().ok().cloned());
    for k in ["pk", "sk", "kind", "ttl"] {
        item.remove(k);
    }
    let state: ItemState = serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(IndexEntry { item: state, walk_id })
}

impl WalkStore for DynamoWalkStore {
    fn index_get<'a>(
        &'a self,
        scope: Scope<'a>,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, ItemState>, StoreError>> {
        Box::pin(async move {
            let mut found = HashMap::new();
            let mut unique: Vec<&String> = ids.iter().collect();
            unique.sort();
            unique.dedup();
            for chunk in unique.chunks(100) {
                let mut keys: Vec<HashMap<String, AttributeValue>> = chunk
                    .iter()
                    .map(|id| {
                        HashMap::from([
                            ("pk".to_owned(), s(index_pk(scope))),
                            ("sk".to_owned(), s(id.as_str())),
                        ])
                    })
                    .collect();
                for attempt in 0..8u32 {
                    if keys.is_empty() {
                        break;
                    }
                    if attempt > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(25 << attempt.min(5))).await;
                    }
                    let request = KeysAndAttributes::builder()
                        .set_keys(Some(std::mem::take(&mut keys)))
                        .consistent_read(true)
                        .build()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    self.count_read();
                    let out = self
                        .client
                        .batch_get_item()
                        .request_items(&self.table, request)
                        .send()
                        .await
                        .map_err(call_error)?;
                    for item in out
                        .responses
                        .and_then(|mut r| r.remove(&self.table))
                        .unwrap_or_default()
                    {
                        let entry = index_entry_from(item)?;
                        found.insert(entry.item.id.clone(), entry.item);
                    }
                    keys = out
                        .unprocessed_keys
                        .and_then(|mut u| u.remove(&self.table))
                        .map(|k| k.keys)
                        .unwrap_or_default();
                }
                if !keys.is_empty() {
                    return Err(StoreError::Call(
                        "index reads stayed unprocessed after retries".into(),
                    ));
                }
            }
            Ok(found)
        })
    }

    fn index_put<'a>(
        &'a self,
        scope: Scope<'a>,
        items: &'a [ItemState],
        walk_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // One batch must not name a key twice: the last occurrence wins.
            let items = crate::changes::last_occurrences(items.iter().cloned());
            let rows = items
                .iter()
                .map(|item| self.index_item(scope, item, walk_id))
                .collect::<Result<Vec<_>, _>>()?;
            self.batch_put(rows).await
        })
    }

    fn index_all<'a>(&'a self, scope: Scope<'a>) -> BoxFuture<'a, Result<Vec<IndexEntry>, StoreError>> {
        Box::pin(async move {
            self.query_all(index_pk(scope), None, None)
                .await?
                .into_iter()
                .map(index_entry_from)
                .collect()
        })
    }

    fn stage<'a>(
        &'a self,
        scope: Scope<'a>,
        key: &'a str,
        items: &'a [ItemState],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let body = serde_json::to_string(items).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.count_write(1);
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(stage_pk(scope)))
                .item("sk", s(key))
                .item("kind", s("staged"))
                .item("items", s(body))
                .item("ttl", self.ttl_in(STAGE_TTL))
                .send()
                .await
                .map_err(call_error)?;
            Ok(())
        })
    }

    fn staged<'a>(
        &'a self,
        scope: Scope<'a>,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ItemState>, StoreError>> {
        Box::pin(async move {
            // One walk's chunks share a prefix (its id): one paged query, then the wanted ones.
            let Some(prefix) = keys.first().and_then(|k| k.split('#').next()) else {
                return Ok(Vec::new());
            };
            let rows = self
                .query_all(
                    stage_pk(scope),
                    Some(SortKeys::Prefix(format!("{prefix}#"))),
                    None,
                )
                .await?;
            let mut by_key: HashMap<String, String> = HashMap::new();
            for row in rows {
                let sk = get_s(&row, "sk")?;
                if !sk.starts_with(prefix) {
                    break;
                }
                by_key.insert(sk.to_owned(), get_s(&row, "items")?.to_owned());
            }
            let mut all = Vec::new();
            for key in keys {
                let body = by_key
                    .get(key)
                    .ok_or_else(|| StoreError::Corrupt(format!("staged chunk {key} is missing")))?;
                let items: Vec<ItemState> =
                    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                all.extend(items);
            }
            Ok(all)
        })
    }

    fn log_append<'a>(
        &'a self,
        scope: Scope<'a>,
        entries: &'a [LogEntry],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // One conditional PutItem per entry (1 WCU each; a transaction would cost 2 per
            // item), 16 in flight. A replay that writes the same content passes its condition.
            use futures::TryStreamExt;
            let ttl = self.ttl_in(self.log_retention);
            futures::stream::iter(entries.iter().map(Ok))
                .try_for_each_concurrent(16, |entry| {
                    let ttl = ttl.clone();
                    async move {
                        self.count_write(1);
                        let put = self
                            .client
                            .put_item()
                            .table_name(&self.table)
                            .item("pk", s(log_pk(scope)))
                            .item("sk", s(log_sk(entry.sequence)))
                            .item("kind", s("change"))
                            .item("walk_id", s(entry.walk_id.clone()))
                            .item("event", s(entry.event.clone()))
                            .item("ttl", ttl)
                            .condition_expression("attribute_not_exists(pk) OR (#e = :event)")
                            .expression_attribute_names("#e", "event")
                            .expression_attribute_values(":event", s(entry.event.clone()))
                            .send()
                            .await;
                        match put {
                            Ok(_) => Ok(()),
                            Err(e) if is_condition_failure(&e) => Err(StoreError::Conflict),
                            Err(e) => Err(call_error(e)),
                        }
                    }
                })
                .await
        })
    }

    fn log_after<'a>(
        &'a self,
        scope: Scope<'a>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, StoreError>> {
        Box::pin(async move {
            self.query_all(log_pk(scope), Some(SortKeys::After(log_sk(after))), Some(limit))
                .await?
                .iter()
                .take(limit)
                .map(Self::log_entry_from)
                .collect()
        })
    }

    fn published<'a>(&'a self, drive_key: &'a DriveKey) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            self.get_one(format!("DRIVE#{drive_key}"), "PUBLISHED")
                .await?
                .map_or(Ok(0), |item| get_n(&item, "seq"))
        })
    }

    fn set_published<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        sequence: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.count_write(1);
            let update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(format!("DRIVE#{drive_key}")))
                .key("sk", s("PUBLISHED"))
                .update_expression("SET seq = :seq, kind = :kind")
                .condition_expression("attribute_not_exists(seq) OR seq < :seq")
                .expression_attribute_values(":seq", n(sequence))
                .expression_attribute_values(":kind", s("published"))
                .send()
                .await;
            forward_only(update)
        })
    }

    fn purge<'a>(&'a self, scope: Scope<'a>) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            // A page of keys at a time (pk and sk only), deleted before the next is read, so a
            // large drive never sits in memory.
            let mut removed = 0;
            for pk in [index_pk(scope), stage_pk(scope), log_pk(scope)] {
                let mut start: Option<HashMap<String, AttributeValue>> = None;
                loop {
                    self.count_read();
                    let out = self
                        .client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(pk.clone()))
                        .projection_expression("pk, sk")
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(call_error)?;
                    let deletes: Vec<WriteRequest> = out
                        .items
                        .unwrap_or_default()
                        .into_iter()
                        .map(|key| {
                            aws_sdk_dynamodb::types::DeleteRequest::builder()
                                .set_key(Some(key))
                                .build()
                                .map(|d| WriteRequest::builder().delete_request(d).build())
                                .map_err(|e| StoreError::Corrupt(e.to_string()))
                        })
                        .collect::<Result<_, _>>()?;
                    removed += deletes.len() as u64;
                    self.batch_write(deletes).await?;
                    match out.last_evaluated_key {
                        Some(key) => start = Some(key),
                        None => break,
                    }
                }
            }
            Ok(removed)
        })
    }

    fn throttled_until<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<Option<DateTime<Utc>>, StoreError>> {
        Box::pin(async move {
            let item = self.get_one(format!("TENANT#{tenant}"), "THROTTLE").await?;
            item.map(|item| {
                get_s(&item, "until")?
                    .parse::<DateTime<Utc>>()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .transpose()
        })
    }

    fn throttle<'a>(
        &'a self,
        tenant: &'a str,
        until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.count_write(1);
            // RFC 3339 in UTC with fixed precision sorts as time, so the condition compares times.
            let at = until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(format!("TENANT#{tenant}")))
                .key("sk", s("THROTTLE"))
                .update_expression("SET #u = :until, kind = :kind, #t = :ttl")
                .condition_expression("attribute_not_exists(#u) OR #u < :until")
                .expression_attribute_names("#u", "until")
                .expression_attribute_names("#t", "ttl")
                .expression_attribute_values(":until", s(at))
                .expression_attribute_values(":kind", s("throttle"))
                .expression_attribute_values(":ttl", n((until + chrono::Duration::days(1)).timestamp()))
                .send()
                .await;
            forward_only(update)
        })
    }
}
