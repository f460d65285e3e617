//! One drive's delta walk: resumable, exactly-once in its sequence numbers, never backwards.
//!
//! The order of writes is what makes a crash at any point safe (graph-protocol.md §5):
//! 1. **Drain** the outbox: change-log entries above the published cursor are sent first.
//! 2. **Page**: each page's items are staged (a baseline writes them straight into the index),
//!    then the checkpoint (next link, pages, chunks) is saved with a version-checked drive-state
//!    write. A crash re-reads at most one page; a walker that lost the race stops.
//! 3. **Derive** (at the deltaLink): staged items against the index → events, numbered from the
//!    drive's sequence high-water mark, written to the change log with conditional writes. The
//!    index is untouched until the log is written, so a replay derives the same events and the
//!    same numbers (an identical entry passes its condition; a different one is a conflict).
//! 4. **Mark logged** in the checkpoint, **apply** the staged items to the index (idempotent),
//!    **commit** the deltaLink, the new high-water mark and the walk's start time in one
//!    version-checked write, then **publish**.
//!
//! The walker never sleeps for Graph: throttling (429/503/509) records the tenant's
//! throttled-until time and returns [`WalkError::Throttled`]; the processor turns that into a
//! visibility timeout. When the invocation's time runs short it saves the checkpoint and returns
//! [`WalkOutcome::OutOfTime`] so the processor queues a continuation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::changes::{Change, ChangeEvent, derive, index_updates, last_occurrences};
use crate::clock::SharedClock;
use crate::delta::{DeltaError, ItemState, NextStep, initial_path};
use crate::graph::{GraphClient, GraphError};
use crate::ids::{DriveKey, ObjectId, TenantId, UserKey};
use crate::queue::{NotificationQueue, OutgoingMessage};
use crate::store::{
    Checkpoint, ConnectionStore, DriveState, DriveStatus, Logged, StoreError, SubscriptionHealth, WalkMode,
    record_subscription_health,
};
use crate::tokens::{AccessTokenSource, TokenError};
use crate::walk_store::{LogEntry, Scope, WalkStore};

/// Bounds of one walk.
#[derive(Debug, Clone)]
pub struct WalkLimits {
    /// Pages one walk may take before it is judged endless (delta paging bugs, §5.3).
    pub max_pages: u32,
    /// Time kept in hand before the invocation's deadline: no page is started inside it. It covers
    /// one Graph call (20 s timeout) and the walk's finish.
    pub reserve: Duration,
    /// Items per staged chunk (a DynamoDB item holds at most 400 KB).
    pub chunk_items: usize,
    /// Retries of a page after a network error or a 5xx without Retry-After.
    pub page_retries: u32,
}

impl Default for WalkLimits {
    fn default() -> Self {
        Self {
            max_pages: 20_000,
            reserve: Duration::from_secs(25),
            chunk_items: 200,
            page_retries: 2,
        }
    }
}

/// How a walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkOutcome {
    /// The deltaLink is committed and the events are published.
    Completed { mode: WalkMode, pages: u32, events: u64 },
    /// Time ran short: the checkpoint is saved; a continuation must be queued.
    OutOfTime { pages: u32 },
    /// Nothing to do: the drive is unknown or disconnected.
    Skipped,
    /// The user must sign in again; the drive is marked `needs_reauth`.
    NeedsReauth,
}

/// Why a walk stopped without finishing; each says when to try again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalkError {
    #[error("the tenant is throttled until {until}")]
    Throttled { until: DateTime<Utc> },
    #[error("Graph asked to back off (status {status}) without a Retry-After")]
    Backoff { status: u16 },
    #[error("a transient failure: {0}")]
    Transient(String),
    #[error("another walker moved the drive on; this one stopped")]
    Conflict,
    #[error("the walk cannot go on: {0}")]
    Fault(String),
}

impl From<StoreError> for WalkError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => WalkError::Conflict,
            StoreError::Call(reason) => WalkError::Transient(format!("DynamoDB: {reason}")),
            StoreError::Corrupt(reason) => WalkError::Fault(format!("stored data: {reason}")),
        }
    }
}

/// Counts one walk adds to the function's metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalkStats {
    pub pages: u64,
    pub resyncs: u64,
    pub events_published: u64,
}

/// Walks drives.
pub struct Walker {
    pub graph: GraphClient,
    pub tokens: Arc<dyn AccessTokenSource>,
    pub drives: Arc<dyn ConnectionStore>,
    pub data: Arc<dyn WalkStore>,
    /// The changes FIFO queue.
    pub changes: Arc<dyn NotificationQueue>,
    pub clock: SharedClock,
    pub limits: WalkLimits,
}

enum PageFailure {
    Resync(Option<String>),
    Unauthorized,
    Error(WalkError),
}

impl Walker {
    /// Walks one drive (or resumes its walk) until its deltaLink, its deadline, or a failure.
    pub async fn walk(
        &self,
        drive_key: &DriveKey,
        deadline: Instant,
        stats: &mut WalkStats,
    ) -> Result<WalkOutcome, WalkError> {
        let Some(mut state) = self.drives.drive(drive_key).await? else {
            return Ok(WalkOutcome::Skipped);
        };
        if state.state == DriveStatus::Disconnected {
            return Ok(WalkOutcome::Skipped);
        }
        // What is committed but unsent goes first, whatever the drive's status: the log expires.
        stats.events_published += self.drain(&state).await?;
        // A walk past its last page needs no Graph call to finish: finish it even when the
        // tenant is throttled or the user must sign in again.
        if let Some(checkpoint) = state.checkpoint.clone()
            && (checkpoint.delta_link.is_some() || checkpoint.logged.is_some())
        {
            return self.finish(state, checkpoint, stats).await;
        }
        if state.state == DriveStatus::NeedsReauth {
            return Ok(WalkOutcome::NeedsReauth);
        }
        let scope = Scope {
            drive_key,
            generation: state.generation,
        };
        let now = self.clock.now();
        if let Some(until) = self.data.throttled_until(&state.tenant_id).await?
            && until > now
        {
            return Err(WalkError::Throttled { until });
        }
        let user = user_of(&state)?;
        let mut token = match self.tokens.token(&user).await {
            Ok(t) => t,
            Err(TokenError::NeedsReauth { reason }) => {
                tracing::warn!(drive_key = %drive_key, reason = %reason, "the user must sign in again");
                self.mark_needs_reauth(state, &reason).await?;
                return Ok(WalkOutcome::NeedsReauth);
            }
            Err(e) if e.is_transient() => return Err(WalkError::Transient(e.to_string())),
            Err(e) => return Err(WalkError::Fault(e.to_string())),
        };
        let mut checkpoint = state
            .checkpoint
            .clone()
            .unwrap_or_else(|| self.new_checkpoint(&state));
        let mut seen_links: HashSet<String> = HashSet::new();
        let mut retried_auth = false;
        // 410s in a row without a page read: a second one backs off instead of looping.
        let mut resyncs_in_a_row = 0u32;
        // Names this invocation's staged chunks (see `Checkpoint::attempts`).
        let attempt = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        while checkpoint.delta_link.is_none() && checkpoint.logged.is_none() {
            if Instant::now() + self.limits.reserve >= deadline {
                if state.checkpoint.as_ref() != Some(&checkpoint) {
                    self.save(state, Some(checkpoint.clone())).await?;
                }
                return Ok(WalkOutcome::OutOfTime {
                    pages: checkpoint.pages,
                });
            }
            if checkpoint.pages >= self.limits.max_pages {
                self.abandon(state).await?;
                return Err(WalkError::Fault(format!(
                    "the walk passed {} pages without a deltaLink; it was abandoned and starts over",
                    self.limits.max_pages
                )));
            }
            let link = checkpoint
                .next_link
                .clone()
                .unwrap_or_else(|| initial_path(&state.drive_id));
            if !seen_links.insert(link.clone()) {
                self.abandon(state).await?;
                return Err(WalkError::Fault(
                    "delta returned a nextLink it had already returned; the walk was abandoned".into(),
                ));
            }
            let page = match self.page(&token, &link, deadline).await {
                Ok(page) => page,
                Err(PageFailure::Unauthorized) if !retried_auth => {
                    retried_auth = true;
                    seen_links.remove(&link);
                    self.tokens.forget(&user);
                    token = match self.tokens.token(&user).await {
                        Ok(t) => t,
                        Err(TokenError::NeedsReauth { reason }) => {
                            self.mark_needs_reauth(state, &reason).await?;
                            return Ok(WalkOutcome::NeedsReauth);
                        }
                        Err(e) => return Err(WalkError::Transient(e.to_string())),
                    };
                    continue;
                }
                Err(PageFailure::Unauthorized) => {
                    self.mark_needs_reauth(state, "Graph refused a freshly refreshed access token (401)")
                        .await?;
                    return Ok(WalkOutcome::NeedsReauth);
                }
                Err(PageFailure::Resync(_)) if resyncs_in_a_row >= 1 => {
                    if state.checkpoint.as_ref() != Some(&checkpoint) {
                        self.save(state, Some(checkpoint)).await?;
                    }
                    return Err(WalkError::Backoff { status: 410 });
                }
                Err(PageFailure::Resync(location)) => {
                    resyncs_in_a_row += 1;
                    stats.resyncs += 1;
                    tracing::info!(drive_key = %drive_key, "delta answered 410: resyncing with a full enumeration");
                    checkpoint = Checkpoint {
                        walk_id: uuid::Uuid::new_v4().simple().to_string(),
                        next_link: Some(location.unwrap_or_else(|| initial_path(&state.drive_id))),
                        delta_link: None,
                        pages: checkpoint.pages,
                        chunks: 0,
                        attempts: Vec::new(),
                        restarted: checkpoint.mode == WalkMode::Baseline,
                        mode: if checkpoint.mode == WalkMode::Baseline {
                            WalkMode::Baseline
                        } else {
                            WalkMode::Resync
                        },
                        logged: None,
                        started_at: checkpoint.started_at,
                    };
                    seen_links.clear();
                    let mut next = state.clone();
                    if checkpoint.mode == WalkMode::Resync {
                        next.state = state.after_walk(DriveStatus::Resyncing);
                    }
                    state = self.save(next, Some(checkpoint.clone())).await?;
                    continue;
                }
                Err(PageFailure::Error(e)) => {
                    // The tenant's throttle first: every other walker of the tenant must see it.
                    if let WalkError::Throttled { until } = e {
                        self.data.throttle(&user.tenant.to_string(), until).await?;
                    }
                    if state.checkpoint.as_ref() != Some(&checkpoint) {
                        self.save(state, Some(checkpoint)).await?;
                    }
                    return Err(e);
                }
            };
            resyncs_in_a_row = 0;
            stats.pages += 1;
            if checkpoint.mode == WalkMode::Baseline {
                self.data
                    .index_put(scope, &page.items, Some(&checkpoint.walk_id))
                    .await?;
            } else {
                for chunk in chunks(&page.items, self.limits.chunk_items, MAX_CHUNK_BYTES) {
                    if checkpoint.attempts.last().map(|(_, a)| a) != Some(&attempt) {
                        checkpoint.attempts.push((checkpoint.chunks, attempt.clone()));
                    }
                    let key = checkpoint
                        .chunk_key(checkpoint.chunks)
                        .ok_or_else(|| WalkError::Fault("a staged chunk without an attempt".into()))?;
                    self.data.stage(scope, &key, chunk).await?;
                    checkpoint.chunks += 1;
                }
            }
            checkpoint.pages += 1;
            match page.next {
                NextStep::Next(next) => checkpoint.next_link = Some(next),
                NextStep::Done(delta) => {
                    checkpoint.next_link = None;
                    checkpoint.delta_link = Some(delta);
                }
            }
            state = self.save(state, Some(checkpoint.clone())).await?;
        }
        self.finish(state, checkpoint, stats).await
    }

    fn new_checkpoint(&self, state: &DriveState) -> Checkpoint {
        Checkpoint {
            walk_id: uuid::Uuid::new_v4().simple().to_string(),
            started_at: self.clock.now(),
            mode: if state.delta_link.is_some() {
                WalkMode::Incremental
            } else {
                WalkMode::Baseline
            },
            next_link: state.delta_link.clone(),
            delta_link: None,
            pages: 0,
            chunks: 0,
            attempts: Vec::new(),
            restarted: false,
            logged: None,
        }
    }

    /// GETs one page, retrying network errors and 5xx without Retry-After a few times.
    async fn page(
        &self,
        token: &SecretString,
        link: &str,
        deadline: Instant,
    ) -> Result<crate::delta::DeltaPage, PageFailure> {
        let mut attempt = 0;
        loop {
            let error = match self.graph.delta_page(token, link).await {
                Ok(page) => return Ok(page),
                Err(DeltaError::Resync { location, .. }) => return Err(PageFailure::Resync(location)),
                Err(DeltaError::Graph(e)) => e,
                Err(e @ (DeltaError::NoLink | DeltaError::ForeignLink)) => {
                    return Err(PageFailure::Error(WalkError::Fault(e.to_string())));
                }
            };
            let status = error.status();
            if status == Some(401) {
                return Err(PageFailure::Unauthorized);
            }
            if matches!(status, Some(429 | 503 | 509)) {
                return Err(PageFailure::Error(match error.retry_after() {
                    Some(after) => WalkError::Throttled {
                        until: self.clock.now()
                            + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::seconds(60)),
                    },
                    None => WalkError::Backoff {
                        status: status.unwrap_or(503),
                    },
                }));
            }
            // A retry only when a whole Graph call (20 s timeout) still fits before the reserve.
            let time_left = Instant::now() + self.limits.reserve + Duration::from_secs(20) < deadline;
            if error.is_retryable() && attempt < self.limits.page_retries && time_left {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * (1 << attempt))).await;
                continue;
            }
            return Err(PageFailure::Error(classify_graph(&error)));
        }
    }

    async fn save(&self, state: DriveState, checkpoint: Option<Checkpoint>) -> Result<DriveState, WalkError> {
        let next = DriveState {
            checkpoint,
            version: state.version + 1,
            ..state
        };
        self.drives.put_drive(&next).await?;
        Ok(next)
    }

    /// Drops a walk that cannot finish; the next trigger starts over from the committed deltaLink.
    /// An abandoned baseline may have written index entries: the next baseline starts as a
    /// restart, so at its end it drops what it did not see again.
    async fn abandon(&self, state: DriveState) -> Result<(), WalkError> {
        let restart = state
            .checkpoint
            .as_ref()
            .filter(|c| c.mode == WalkMode::Baseline)
            .map(|c| Checkpoint {
                walk_id: uuid::Uuid::new_v4().simple().to_string(),
                next_link: None,
                delta_link: None,
                pages: 0,
                chunks: 0,
                attempts: Vec::new(),
                restarted: true,
                logged: None,
                ..c.clone()
            });
        let status = if state.delta_link.is_some() {
            DriveStatus::Active
        } else {
            DriveStatus::BaselinePending
        };
        let next = DriveState {
            state: state.after_walk(status),
            ..state
        };
        self.save(next, restart).await.map(|_| ())
    }

    /// Marks the drive `needs_reauth` (see [`record_subscription_health`]: a walk still paging is
    /// dropped, one past its last page is kept). Re-reads on a lost race.
    pub async fn mark_needs_reauth(&self, state: DriveState, reason: &str) -> Result<(), WalkError> {
        record_subscription_health(
            self.drives.as_ref(),
            &state.drive_key,
            state.generation,
            &SubscriptionHealth::Trouble(DriveStatus::NeedsReauth, reason.to_owned()),
        )
        .await?;
        Ok(())
    }

    /// Steps 3 and 4: derive and log (unless logged), apply the index, commit, publish.
    async fn finish(
        &self,
        mut state: DriveState,
        mut checkpoint: Checkpoint,
        stats: &mut WalkStats,
    ) -> Result<WalkOutcome, WalkError> {
        let scope_key = state.drive_key;
        let scope = Scope {
            drive_key: &scope_key,
            generation: state.generation,
        };
        let resync = checkpoint.mode == WalkMode::Resync;
        let staged = if checkpoint.mode == WalkMode::Baseline {
            Vec::new()
        } else {
            match self.data.staged(scope, &checkpoint.chunk_keys()).await {
                Ok(items) => last_occurrences(items),
                Err(StoreError::Corrupt(reason)) => {
                    return self.recover_lost_pages(state, checkpoint, &reason).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let index = if checkpoint.mode == WalkMode::Baseline {
            HashMap::new()
        } else {
            self.index_for(scope, &staged, resync).await?
        };
        let logged = match checkpoint.logged {
            Some(logged) => logged,
            None => {
                let events = if checkpoint.mode == WalkMode::Baseline {
                    if checkpoint.restarted {
                        self.drop_unseen(scope, &checkpoint.walk_id).await?;
                    }
                    vec![ChangeEvent::marker(&state.drive_id, Change::BaselineComplete)]
                } else {
                    derive(&state.drive_id, &staged, &index, resync)
                };
                let base = state.seq_high_water;
                let entries: Vec<LogEntry> = events
                    .into_iter()
                    .zip(base + 1..)
                    .map(|(mut event, sequence)| {
                        event.sequence = sequence;
                        LogEntry {
                            sequence,
                            walk_id: checkpoint.walk_id.clone(),
                            event: event.to_json(),
                        }
                    })
                    .collect();
                self.data.log_append(scope, &entries).await?;
                let logged = Logged {
                    base,
                    count: entries.len() as u64,
                };
                checkpoint.logged = Some(logged);
                state = self.save(state, Some(checkpoint.clone())).await?;
                logged
            }
        };
        if checkpoint.mode != WalkMode::Baseline {
            let updates = index_updates(&staged, &index, resync);
            self.data.index_put(scope, &updates, None).await?;
        }
        let committed = DriveState {
            delta_link: checkpoint.delta_link.clone(),
            seq_high_water: logged.base + logged.count,
            last_walk_started_at: Some(checkpoint.started_at),
            last_walk_completed_at: Some(self.clock.now()),
            // A walk finished without Graph for a user who must sign in again leaves them so, and
            // a subscription in trouble stays in trouble until a renewal succeeds.
            state: state.after_walk(DriveStatus::Active),
            ..state
        };
        let committed = self.save(committed, None).await?;
        stats.events_published += self.drain(&committed).await?;
        Ok(WalkOutcome::Completed {
            mode: checkpoint.mode,
            pages: checkpoint.pages,
            events: logged.count,
        })
    }

    /// Staged pages are gone (expired while the walk waited). Before the log was written, the walk
    /// is dropped and the next one starts again from the committed deltaLink. After it, the logged
    /// events stand (they are committed), and the index, which missed them, is rebuilt by a resync.
    async fn recover_lost_pages(
        &self,
        state: DriveState,
        checkpoint: Checkpoint,
        reason: &str,
    ) -> Result<WalkOutcome, WalkError> {
        tracing::error!(drive_key = %state.drive_key, reason = %reason, "a walk's staged pages are gone");
        let Some(logged) = checkpoint.logged else {
            self.save(state, None).await?;
            return Err(WalkError::Transient(
                "staged pages expired; the walk starts over".into(),
            ));
        };
        let resync = Checkpoint {
            walk_id: uuid::Uuid::new_v4().simple().to_string(),
            started_at: self.clock.now(),
            mode: WalkMode::Resync,
            next_link: None,
            delta_link: None,
            pages: 0,
            chunks: 0,
            attempts: Vec::new(),
            restarted: false,
            logged: None,
        };
        let next = DriveState {
            seq_high_water: logged.base + logged.count,
            state: state.after_walk(DriveStatus::Resyncing),
            ..state
        };
        self.save(next, Some(resync)).await?;
        Err(WalkError::Transient(
            "staged pages expired after logging; resyncing the index".into(),
        ))
    }

    /// The index entries a derivation needs: the staged items' and all their ancestors' (for a
    /// resync, the whole index).
    async fn index_for(
        &self,
        scope: Scope<'_>,
        staged: &[ItemState],
        resync: bool,
    ) -> Result<HashMap<String, ItemState>, WalkError> {
        if resync {
            return Ok(self
                .data
                .index_all(scope)
                .await?
                .into_iter()
                .map(|e| (e.item.id.clone(), e.item))
                .collect());
        }
        let ids: Vec<String> = staged.iter().map(|i| i.id.clone()).collect();
        let mut index = self.data.index_get(scope, &ids).await?;
        let staged_ids: HashSet<&str> = staged.iter().map(|i| i.id.as_str()).collect();
        let mut asked: HashSet<String> = ids.iter().cloned().collect();
        for _ in 0..256 {
            let wanted: Vec<String> = staged
                .iter()
                .chain(index.values())
                .filter_map(|i| i.parent_id.clone())
                .filter(|p| !staged_ids.contains(p.as_str()) && !index.contains_key(p) && !asked.contains(p))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if wanted.is_empty() {
                break;
            }
            asked.extend(wanted.iter().cloned());
            index.extend(self.data.index_get(scope, &wanted).await?);
        }
        Ok(index)
    }

    /// A baseline that restarted after a 410: entries an earlier attempt wrote and this one did
    /// not see again are gone from the drive.
    async fn drop_unseen(&self, scope: Scope<'_>, walk_id: &str) -> Result<(), WalkError> {
        let stale: Vec<ItemState> = self
            .data
            .index_all(scope)
            .await?
            .into_iter()
            .filter(|e| !e.item.deleted && e.walk_id.as_deref() != Some(walk_id))
            .map(|e| ItemState {
                deleted: true,
                ..e.item
            })
            .collect();
        self.data.index_put(scope, &stale, Some(walk_id)).await?;
        Ok(())
    }

    /// Sends what the change log holds above the published cursor, in order; returns how many.
    pub async fn drain(&self, state: &DriveState) -> Result<u64, WalkError> {
        let scope = Scope {
            drive_key: &state.drive_key,
            generation: state.generation,
        };
        let mut published = self.data.published(&state.drive_key).await?;
        let mut sent = 0;
        loop {
            if published >= state.seq_high_water {
                return Ok(sent);
            }
            // Only what a commit covers, and only without a gap: entries above the high-water
            // mark belong to a walk that has not committed (it may never).
            let entries: Vec<LogEntry> = self
                .data
                .log_after(scope, published, 100)
                .await?
                .into_iter()
                .take_while(|e| e.sequence <= state.seq_high_water)
                .zip(published + 1..)
                .take_while(|(e, expected)| e.sequence == *expected)
                .map(|(e, _)| e)
                .collect();
            let Some(last) = entries.last().map(|e| e.sequence) else {
                // Committed entries that expired before they could be sent (the changes queue
                // refused them for longer than the log's retention). Say so loudly and move on:
                // waiting cannot bring them back, and the drive must not stop.
                tracing::error!(
                    drive_key = %state.drive_key,
                    from = published + 1,
                    to = state.seq_high_water,
                    "change-log entries expired before they were sent; consumers will see a sequence gap"
                );
                self.data
                    .set_published(&state.drive_key, state.seq_high_water)
                    .await?;
                return Ok(sent);
            };
            let messages: Vec<OutgoingMessage> = entries
                .iter()
                .map(|e| OutgoingMessage {
                    group: state.drive_key,
                    dedup_id: format!("{}-{}", state.drive_key, e.sequence),
                    body: e.event.clone(),
                })
                .collect();
            crate::queue::send_in_order(self.changes.as_ref(), &messages)
                .await
                .map_err(|e| WalkError::Transient(format!("changes queue: {e}")))?;
            self.data.set_published(&state.drive_key, last).await?;
            sent += entries.len() as u64;
            published = last;
        }
    }
}

/// The most JSON bytes one staged chunk holds: well under DynamoDB's 400 KB item limit, whatever
/// the names (a page of 200 items with 400-character non-ASCII names would not fit in one).
const MAX_CHUNK_BYTES: usize = 300 * 1024;

/// Splits a page into chunks of at most `max_items` items and about `max_bytes` of JSON each
/// (a single item larger than that still gets a chunk of its own).
fn chunks(items: &[ItemState], max_items: usize, max_bytes: usize) -> Vec<&[ItemState]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let size = serde_json::to_vec(item).map_or(0, |v| v.len()) + 1;
        if i > start && (i - start >= max_items.max(1) || bytes + size > max_bytes) {
            out.extend(items.get(start..i));
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < items.len() {
        out.extend(items.get(start..));
    }
    out
}

fn user_of(state: &DriveState) -> Result<UserKey, WalkError> {
    let tenant = TenantId::parse(&state.tenant_id).map_err(|e| WalkError::Fault(e.to_string()))?;
    let object = ObjectId::parse(&state.user_oid).map_err(|e| WalkError::Fault(e.to_string()))?;
    Ok(UserKey::new(tenant, object))
}

/// A Graph failure that retries inside the walk did not fix.
fn classify_graph(error: &GraphError) -> WalkError {
    if error.is_retryable() {
        WalkError::Transient(error.to_string())
    } else {
        WalkError::Fault(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name_len: usize) -> ItemState {
        ItemState {
            id: "i".into(),
            parent_id: None,
            name: Some("é".repeat(name_len)),
            etag: None,
            ctag: None,
            size: None,
            folder: false,
            root: false,
            deleted: false,
            modified: None,
        }
    }

    #[test]
    fn a_page_is_staged_in_chunks_bounded_by_count_and_by_bytes() {
        let small: Vec<ItemState> = (0..450).map(|_| item(10)).collect();
        let sizes: Vec<usize> = chunks(&small, 200, MAX_CHUNK_BYTES)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [200, 200, 50]);
        // 200 items with 400-character two-byte names: about 160 KB of JSON in all; each chunk stays under the bound.
        let long: Vec<ItemState> = (0..200).map(|_| item(400)).collect();
        let parts = chunks(&long, 200, 100 * 1024);
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().map(|c| c.len()).sum::<usize>(), 200);
        for part in parts {
            assert!(serde_json::to_vec(part).unwrap().len() <= 100 * 1024 + 1000);
        }
        assert!(chunks(&[], 200, MAX_CHUNK_BYTES).is_empty());
    }
}
