//! process-changes' decisions for one SQS batch from the notifications FIFO queue.
//!
//! - Messages are grouped by drive (the message group); each drive is handled once per batch,
//!   concurrently with the others, and a panic or error in one drive never fails another's.
//! - **Coalescing**: a notification (or safety-net) message received before the start of the
//!   drive's last completed walk is acknowledged without a walk: that walk saw its change. A drive
//!   is walked at most once per batch however many of its messages the batch holds.
//! - **Lifecycle** (graph-protocol.md §4): `reauthorizationRequired` renews the subscription by
//!   PATCH; `subscriptionRemoved` recreates it, then walks; `missed` walks.
//! - **Failures** are batch item failures: all of the drive's messages in this batch (FIFO needs
//!   the later ones of the group returned too), nothing else. Their visibility timeout is set to
//!   when a retry can help: the tenant's Retry-After, or exponential backoff with jitter
//!   (`min(2^n, 900)` seconds for the n-th receive), so a throttled drive never burns its receives
//!   and a message in the DLQ means a real fault (see the template's `maxReceiveCount`).
//! - **Poison**: a message that can never succeed (not an envelope, an unknown version) is sent to
//!   the dead-letter queue at once and acknowledged.
//! - **Purge**: after a disconnect, the old generation's index, staged pages and change log are
//!   deleted (only a generation before the drive's current one).
//! - **Out of time**: the walker saves its checkpoint and a `continuation` message is queued on
//!   the drive's group.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};

use crate::envelope::{Envelope, Kind};
use crate::ids::DriveKey;
use crate::notification::LifecycleEvent;
use crate::queue::{NotificationQueue, OutgoingMessage, QueueError, send_all};
use crate::store::{DriveState, DriveStatus};
use crate::telemetry::{Metrics, Unit};
use crate::tokens::TokenError;
use crate::walk_store::Scope;
use crate::walker::{WalkError, WalkOutcome, WalkStats, Walker};

/// The longest visibility timeout the processor sets (a message is retried at least this often).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(900);

/// One received message, as the handler hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// The FIFO message group (the drive key).
    pub group_id: Option<String>,
    /// SQS's `ApproximateReceiveCount` (1 on the first receive).
    pub receive_count: u32,
}

/// Queue operations beyond sending: visibility and the dead-letter queue.
pub trait BatchControl: Send + Sync {
    /// Sets each message's visibility timeout (ChangeMessageVisibilityBatch).
    fn delay<'a>(&'a self, messages: &'a [(String, Duration)]) -> BoxFuture<'a, Result<(), QueueError>>;
    /// Moves a message that can never succeed to the dead-letter queue.
    fn dead_letter<'a>(
        &'a self,
        message: &'a InMessage,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
}

/// Lifecycle actions that need Graph (the subscription rules); see `process-changes`' wiring.
pub trait LifecycleActions: Send + Sync {
    /// Renews (PATCH) the drive's subscription, recreating it if Graph no longer knows it.
    fn renew<'a>(&'a self, state: &'a DriveState) -> BoxFuture<'a, Result<(), LifecycleError>>;
}

/// Why a lifecycle action failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("the user must sign in again")]
    NeedsReauth,
    #[error("a transient failure: {0}")]
    Transient(String),
    #[error("Graph is throttling until {0}")]
    Throttled(DateTime<Utc>),
    #[error("{0}")]
    Fault(String),
}

impl From<TokenError> for LifecycleError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::NeedsReauth { .. } => LifecycleError::NeedsReauth,
            e if e.is_transient() => LifecycleError::Transient(e.to_string()),
            e => LifecycleError::Fault(e.to_string()),
        }
    }
}

/// What happened to a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Message ids to report in `batchItemFailures`.
    pub failures: Vec<String>,
    pub walks: u64,
    pub coalesced: u64,
    pub poison: u64,
    pub continuations: u64,
    pub needs_reauth: u64,
    /// Lifecycle actions that failed for good (logged; the drive's walks go on).
    pub lifecycle_faults: u64,
    pub stats: WalkStats,
    /// Seconds of Retry-After the batch's failures wait for.
    pub throttle_seconds: u64,
}

/// Everything process-changes needs, built once per cold start.
pub struct Processor {
    pub walker: Walker,
    /// The notifications queue, for continuations.
    pub notifications: Arc<dyn NotificationQueue>,
    pub control: Arc<dyn BatchControl>,
    pub lifecycle: Arc<dyn LifecycleActions>,
    pub metrics: Metrics,
}

enum DriveResult {
    Done,
    Failed { delay: Duration, throttle_seconds: u64 },
}

#[derive(Default)]
struct DriveCounts {
    walks: u64,
    lifecycle_faults: u64,
    coalesced: u64,
    continuations: u64,
    needs_reauth: u64,
    stats: WalkStats,
}

impl Processor {
    /// Handles one batch; never panics, never fails as a whole.
    pub async fn process(&self, messages: Vec<InMessage>, deadline: Instant) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        // Group by drive, keeping the batch's order within each group.
        let mut groups: Vec<(DriveKey, Vec<(InMessage, Envelope)>)> = Vec::new();
        let mut position: HashMap<DriveKey, usize> = HashMap::new();
        for message in messages {
            let envelope = match Envelope::from_json(&message.body) {
                Ok(e) => e,
                Err(e) => {
                    let reason = e.to_string();
                    tracing::error!(message_id = %message.message_id, reason = %reason, "a message that can never succeed goes to the dead-letter queue");
                    outcome.poison += 1;
                    if let Err(err) = self.control.dead_letter(&message, &reason).await {
                        tracing::error!(error = %err, "could not move the message to the dead-letter queue; it stays");
                        outcome.failures.push(message.message_id.clone());
                    }
                    continue;
                }
            };
            let slot = *position.entry(envelope.drive_key).or_insert_with(|| {
                groups.push((envelope.drive_key, Vec::new()));
                groups.len() - 1
            });
            if let Some((_, group)) = groups.get_mut(slot) {
                group.push((message, envelope));
            }
        }
        let results = join_all(groups.iter().map(|(drive_key, group)| async move {
            let mut counts = DriveCounts::default();
            let result = AssertUnwindSafe(self.handle_drive(drive_key, group, deadline, &mut counts))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!(drive_key = %drive_key, "handling the drive panicked; its messages are retried");
                    DriveResult::Failed {
                        delay: backoff(max_receive(group)),
                        throttle_seconds: 0,
                    }
                });
            (result, counts)
        }))
        .await;
        let mut delays: Vec<(String, Duration)> = Vec::new();
        for ((_, group), (result, counts)) in groups.iter().zip(results) {
            outcome.walks += counts.walks;
            outcome.coalesced += counts.coalesced;
            outcome.continuations += counts.continuations;
            outcome.needs_reauth += counts.needs_reauth;
            outcome.lifecycle_faults += counts.lifecycle_faults;
            outcome.stats.pages += counts.stats.pages;
            outcome.stats.resyncs += counts.stats.resyncs;
            outcome.stats.events_published += counts.stats.events_published;
            if let DriveResult::Failed {
                delay,
                throttle_seconds,
            } = result
            {
                outcome.throttle_seconds += throttle_seconds;
                for (message, _) in group {
                    outcome.failures.push(message.message_id.clone());
                    delays.push((message.receipt_handle.clone(), delay));
                }
            }
        }
        if !delays.is_empty()
            && let Err(e) = self.control.delay(&delays).await
        {
            // The messages come back at the queue's own visibility timeout instead.
            tracing::warn!(error = %e, "could not set the failed messages' visibility");
        }
        self.emit(&outcome);
        outcome
    }

    async fn handle_drive(
        &self,
        drive_key: &DriveKey,
        group: &[(InMessage, Envelope)],
        deadline: Instant,
        counts: &mut DriveCounts,
    ) -> DriveResult {
        let receives = max_receive(group);
        let state = match self.walker.drives.drive(drive_key).await {
            Ok(Some(state)) => state,
            Ok(None) => {
                tracing::warn!(drive_key = %drive_key, "a message for a drive graphfeed does not know; acknowledged");
                return DriveResult::Done;
            }
            Err(e) => return self.failed(drive_key, &WalkError::from(e), receives),
        };
        for (_, envelope) in group.iter().filter(|(_, e)| e.kind == Kind::Purge) {
            // Only a generation before the current one: a reconnect's data is never touched.
            if let Some(generation) = envelope.generation.filter(|g| *g < state.generation) {
                let scope = Scope {
                    drive_key,
                    generation,
                };
                match self.walker.data.purge(scope).await {
                    Ok(removed) => {
                        tracing::info!(drive_key = %drive_key, generation, removed, "a disconnected generation's data was purged");
                    }
                    Err(e) => return self.failed(drive_key, &WalkError::from(e), receives),
                }
            }
        }
        if state.state == DriveStatus::Disconnected {
            return DriveResult::Done;
        }
        let mut must_walk = state.checkpoint.is_some();
        for (_, envelope) in group {
            match envelope.kind {
                Kind::Notification | Kind::SafetyNet => {
                    let covered = state
                        .last_walk_started_at
                        .is_some_and(|started| envelope.received_at < started);
                    if covered && state.delta_link.is_some() {
                        counts.coalesced += 1;
                    } else {
                        must_walk = true;
                    }
                }
                Kind::Baseline | Kind::CatchUp => must_walk = true,
                // Only a saved checkpoint needs continuing (counted above); purges are done.
                Kind::Continuation | Kind::Purge => {}
                Kind::Lifecycle => match envelope.lifecycle_event {
                    Some(LifecycleEvent::ReauthorizationRequired)
                    | Some(LifecycleEvent::SubscriptionRemoved) => {
                        // A throttled tenant gets no Graph call before its Retry-After, renewals included.
                        match self.walker.data.throttled_until(&state.tenant_id).await {
                            Ok(Some(until)) if until > self.walker.clock.now() => {
                                return self.failed(drive_key, &WalkError::Throttled { until }, receives);
                            }
                            Ok(_) => {}
                            Err(e) => return self.failed(drive_key, &WalkError::from(e), receives),
                        }
                        if let Err(e) = self.lifecycle.renew(&state).await {
                            match e {
                                LifecycleError::NeedsReauth => {
                                    counts.needs_reauth += 1;
                                    if let Err(e) = self
                                        .walker
                                        .mark_needs_reauth(
                                            state.clone(),
                                            "the subscription could not be renewed without the user",
                                        )
                                        .await
                                    {
                                        return self.failed(drive_key, &e, receives);
                                    }
                                    return DriveResult::Done;
                                }
                                LifecycleError::Throttled(until) => {
                                    return self.failed(drive_key, &WalkError::Throttled { until }, receives);
                                }
                                LifecycleError::Transient(reason) => {
                                    return self.failed(drive_key, &WalkError::Transient(reason), receives);
                                }
                                // Retrying cannot help: say so, and let the drive's walks go on
                                // (renew keeps the subscription alive on its schedule).
                                LifecycleError::Fault(reason) => {
                                    counts.lifecycle_faults += 1;
                                    tracing::error!(drive_key = %drive_key, reason = %reason, "a lifecycle action failed for good");
                                }
                            }
                        }
                        if envelope.lifecycle_event == Some(LifecycleEvent::SubscriptionRemoved) {
                            must_walk = true;
                        }
                    }
                    _ => must_walk = true,
                },
            }
        }
        if state.state == DriveStatus::NeedsReauth {
            // No Graph call until the user signs in again, but what needs none still happens: a
            // walk past its last page is finished, and committed events are sent.
            let finished = state
                .checkpoint
                .as_ref()
                .is_some_and(|c| c.delta_link.is_some() || c.logged.is_some());
            if !finished {
                return match self.walker.drain(&state).await {
                    Ok(sent) => {
                        counts.stats.events_published += sent;
                        DriveResult::Done
                    }
                    Err(e) => self.failed(drive_key, &e, receives),
                };
            }
        } else if !must_walk {
            return DriveResult::Done;
        }
        counts.walks += 1;
        match self.walker.walk(drive_key, deadline, &mut counts.stats).await {
            Ok(WalkOutcome::Completed { mode, pages, events }) => {
                tracing::info!(drive_key = %drive_key, mode = ?mode, pages, events, "walk complete");
                DriveResult::Done
            }
            Ok(WalkOutcome::OutOfTime { pages }) => {
                let tenant = group.first().map(|(_, e)| e.tenant_id.clone());
                let Some(tenant) = tenant else {
                    return DriveResult::Done;
                };
                let continuation =
                    Envelope::new(Kind::Continuation, *drive_key, tenant, self.walker.clock.now());
                match send_all(
                    self.notifications.as_ref(),
                    &[OutgoingMessage::new(*drive_key, continuation.to_json())],
                )
                .await
                {
                    Ok(()) => {
                        tracing::info!(drive_key = %drive_key, pages, "out of time: checkpoint saved, continuation queued");
                        counts.continuations += 1;
                        DriveResult::Done
                    }
                    Err(e) => self.failed(drive_key, &WalkError::Transient(e.to_string()), receives),
                }
            }
            Ok(WalkOutcome::Skipped) => DriveResult::Done,
            Ok(WalkOutcome::NeedsReauth) => {
                counts.needs_reauth += 1;
                DriveResult::Done
            }
            Err(e) => self.failed(drive_key, &e, receives),
        }
    }

    fn failed(&self, drive_key: &DriveKey, error: &WalkError, receives: u32) -> DriveResult {
        let backoff = backoff(receives);
        let (delay, throttle_seconds) = match error {
            WalkError::Throttled { until } => {
                let wait = (*until - self.walker.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                let secs = wait.as_secs();
                (wait.max(backoff).min(MAX_RETRY_DELAY), secs)
            }
            // Another walker moved the drive on: retry soon, the next attempt re-reads.
            WalkError::Conflict => (Duration::from_secs(1), 0),
            _ => (backoff, 0),
        };
        tracing::warn!(drive_key = %drive_key, error = %error, retry_in_s = delay.as_secs(), "walk failed; the drive's messages are retried");
        DriveResult::Failed {
            delay: delay.max(Duration::from_secs(1)),
            throttle_seconds,
        }
    }

    fn emit(&self, o: &BatchOutcome) {
        self.metrics.emit(&[
            ("Walks", o.walks as f64, Unit::Count),
            ("DeltaPages", o.stats.pages as f64, Unit::Count),
            ("Resyncs", o.stats.resyncs as f64, Unit::Count),
            ("EventsPublished", o.stats.events_published as f64, Unit::Count),
            ("NotificationsCoalesced", o.coalesced as f64, Unit::Count),
            ("Continuations", o.continuations as f64, Unit::Count),
            ("NeedsReauth", o.needs_reauth as f64, Unit::Count),
            ("LifecycleFaults", o.lifecycle_faults as f64, Unit::Count),
            ("PoisonMessages", o.poison as f64, Unit::Count),
            ("WalkFailures", o.failures.len() as f64, Unit::Count),
            ("ThrottleSeconds", o.throttle_seconds as f64, Unit::Seconds),
        ]);
    }
}

fn max_receive(group: &[(InMessage, Envelope)]) -> u32 {
    group.iter().map(|(m, _)| m.receive_count).max().unwrap_or(1)
}

/// Exponential backoff with jitter for the n-th receive: about `min(2^n, 900)` seconds, ±20%.
pub fn backoff(receive_count: u32) -> Duration {
    let base = 1u64 << receive_count.clamp(1, 10);
    let secs = base.min(MAX_RETRY_DELAY.as_secs()) as f64;
    let jitter = 0.8 + 0.4 * rand::random::<f64>();
    Duration::from_secs_f64((secs * jitter).clamp(1.0, MAX_RETRY_DELAY.as_secs_f64()))
}

// ---- the SQS adapter ---------------------------------------------------------------------------

/// Visibility changes on the notifications queue and moves to its dead-letter queue.
pub struct SqsBatchControl {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_url: String,
}

impl SqsBatchControl {
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
        dead_letter_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            dead_letter_url: dead_letter_url.into(),
        }
    }
}

fn sqs_error<E: std::error::Error + 'static>(e: aws_sdk_sqs::error::SdkError<E>) -> QueueError {
    QueueError::Call(aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
}

impl BatchControl for SqsBatchControl {
    fn delay<'a>(&'a self, messages: &'a [(String, Duration)]) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            for chunk in messages.chunks(10) {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (handle, delay))| {
                        aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(handle)
                            .visibility_timeout(i32::try_from(delay.as_secs()).unwrap_or(900))
                            .build()
                            .map_err(|e| QueueError::Call(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .change_message_visibility_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(sqs_error)?;
                if let Some(first) = out.failed.first() {
                    return Err(QueueError::Refused {
                        refused: out.failed.len(),
                        total: chunk.len(),
                        first_code: first.code.clone(),
                    });
                }
            }
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        message: &'a InMessage,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let reason_attr = aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(reason.chars().take(256).collect::<String>())
                .build()
                .map_err(|e| QueueError::Call(e.to_string()))?;
            self.client
                .send_message()
                .queue_url(&self.dead_letter_url)
                .message_body(if message.body.is_empty() {
                    "(empty)"
                } else {
                    &message.body
                })
                .message_group_id(message.group_id.as_deref().unwrap_or("poison"))
                .message_deduplication_id(&message.message_id)
                .message_attributes("graphfeed-reason", reason_attr)
                .send()
                .await
                .map_err(sqs_error)?;
            Ok(())
        })
    }
}
