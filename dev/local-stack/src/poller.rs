//! A stand-in for Lambda's SQS event source mapping, so an SQS-triggered handler (process-changes)
//! runs locally and in tests against moto, where there is no Lambda.
//!
//! It does what the mapping does for a FIFO queue with `ReportBatchItemFailures`
//! (<https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html>):
//!
//! - one `ReceiveMessage` of up to `batch_size` messages, with every system attribute and every
//!   message attribute, under the queue's own visibility timeout;
//! - the messages become an [`SqsEvent`] whose records are what Lambda sends (`messageId`,
//!   `receiptHandle`, `body`, `md5OfBody`, the attributes by their SQS names, `eventSource`
//!   `aws:sqs`, `eventSourceARN`, `awsRegion`);
//! - the handler runs in a task of its own, with a deadline of now plus the function's timeout;
//! - every message not named in `batchItemFailures` is deleted (`DeleteMessageBatch`); a named
//!   one is left in flight and returns when its visibility timeout (which the handler may have
//!   changed) ends;
//! - nothing is deleted, so the whole batch returns, when the handler returns an error, panics,
//!   outlives its deadline (it is then aborted, as Lambda ends a timed-out invocation), or answers
//!   with an empty or unknown `itemIdentifier`.
//!
//! Redrive to a dead-letter queue after `maxReceiveCount` is the queue's business, not the
//! mapping's: SQS (and moto) does it on a later receive.
//!
//! [`poll_once`] is one receive-invoke-delete round, for tests that want each step;
//! [`spawn_poller`] keeps polling in the background. It runs one invocation at a time; for the
//! concurrency of a mapping's `MaximumConcurrency`, spawn several on one queue (SQS's FIFO group
//! locking keeps each drive's messages in order across them).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::encodings::Base64Data;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
};
use futures::future::BoxFuture;
use serde_yaml::Value;
use tokio::sync::watch;

pub use aws_lambda_events::sqs::{
    BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage, SqsMessageAttribute,
};

use crate::bootstrap::Stack;
use crate::template::{Template, TemplateError};

/// What a handler may fail with: the invocation is then a function error, and the whole batch
/// returns to the queue.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An SQS-triggered function: the event and the invocation's deadline, to a batch response.
pub type SqsHandler =
    Arc<dyn Fn(SqsEvent, Instant) -> BoxFuture<'static, Result<SqsBatchResponse, BoxError>> + Send + Sync>;

/// An [`SqsHandler`] from an async closure or function.
pub fn sqs_handler<F, Fut>(f: F) -> SqsHandler
where
    F: Fn(SqsEvent, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<SqsBatchResponse, BoxError>> + Send + 'static,
{
    Arc::new(move |event, deadline| Box::pin(f(event, deadline)))
}

/// Lambda's `eventSource` for SQS records.
pub const EVENT_SOURCE: &str = "aws:sqs";

/// How long each `ReceiveMessage` waits for messages locally. Lambda long-polls for 20 s; a
/// short wait lets [`PollerHandle::stop`] return promptly.
pub const LOCAL_WAIT_TIME_SECONDS: i32 = 1;

/// What the event source mapping is: the queue, the batch, the function's timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerConfig {
    pub queue_url: String,
    pub queue_arn: String,
    /// Messages per invocation, 1 to 10 (SQS's most per receive, and a FIFO mapping's most).
    pub batch_size: i32,
    /// The function's `Timeout`: the handler's deadline is the invocation's start plus this.
    pub function_timeout: Duration,
    /// `ReceiveMessage`'s long-poll wait, 0 to 20 s.
    pub wait_time_seconds: i32,
    /// The records' `awsRegion`.
    pub region: String,
}

impl PollerConfig {
    /// The mapping `template` gives `function` (its `AWS::Lambda::EventSourceMapping`), against
    /// the queue `stack` created: batch size (10 unless set), the function's timeout (its own or
    /// `Globals`, else Lambda's 3 s), and [`LOCAL_WAIT_TIME_SECONDS`].
    pub fn from_template(template: &Template, stack: &Stack, function: &str) -> Result<Self, TemplateError> {
        let mut mappings = template
            .resources_of("AWS::Lambda::EventSourceMapping")
            .into_iter()
            .filter(|(_, props)| props.get("FunctionName").and_then(ref_target) == Some(function));
        let (id, mapping) = mappings
            .next()
            .ok_or_else(|| TemplateError::Shape(format!("no event source mapping invokes {function}")))?;
        if mappings.next().is_some() {
            return Err(TemplateError::Shape(format!(
                "{function} has several event source mappings; build each PollerConfig by hand"
            )));
        }
        let reports_failures = mapping
            .get("FunctionResponseTypes")
            .and_then(Value::as_sequence)
            .is_some_and(|types| {
                types
                    .iter()
                    .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
            });
        if !reports_failures {
            return Err(TemplateError::Shape(format!(
                "{id}: the local poller emulates FunctionResponseTypes [ReportBatchItemFailures] only"
            )));
        }
        let source = mapping
            .get("EventSourceArn")
            .ok_or_else(|| TemplateError::Shape(format!("{id} has no EventSourceArn")))?;
        let queue_arn = stack.resolve(source)?;
        let queue_url = stack
            .created
            .values()
            .find(|p| p.arn == queue_arn)
            .map(|p| p.reference.clone())
            .ok_or_else(|| TemplateError::Unresolved(format!("{id}: the queue {queue_arn}")))?;
        let number = |value: Option<&Value>, default: i64, what: &str| -> Result<i64, TemplateError> {
            match value {
                None => Ok(default),
                Some(v) => stack
                    .resolve(v)?
                    .parse()
                    .map_err(|_| TemplateError::Shape(format!("{id}: {what} is not a whole number"))),
            }
        };
        let batch_size = number(mapping.get("BatchSize"), 10, "BatchSize")?;
        let timeout = number(template.function_property(function, "Timeout"), 3, "Timeout")?;
        Ok(Self {
            queue_url,
            queue_arn,
            batch_size: i32::try_from(batch_size)
                .map_err(|_| TemplateError::Shape(format!("{id}: BatchSize {batch_size}")))?,
            function_timeout: Duration::from_secs(
                u64::try_from(timeout)
                    .map_err(|_| TemplateError::Shape(format!("{function}: Timeout {timeout}")))?,
            ),
            wait_time_seconds: LOCAL_WAIT_TIME_SECONDS,
            region: stack.region.clone(),
        })
    }
}

/// The logical id `!Ref X` (or `{Ref: X}`) names.
fn ref_target(value: &Value) -> Option<&str> {
    match value {
        Value::Tagged(tagged) if tagged.tag.to_string().trim_start_matches('!') == "Ref" => {
            tagged.value.as_str()
        }
        Value::Mapping(m) if m.len() == 1 => m.get("Ref").and_then(Value::as_str),
        _ => None,
    }
}

/// How one invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// The receive found nothing; no invocation was made.
    NoMessages,
    /// The handler answered with a valid batch response.
    Completed,
    /// The handler returned an error: the whole batch returns.
    FunctionError(String),
    /// The handler outlived its deadline and was aborted: the whole batch returns.
    TimedOut,
    /// The handler panicked: the whole batch returns.
    Panicked(String),
    /// The response named an empty or unknown `itemIdentifier`: the whole batch returns.
    InvalidResponse(String),
}

impl Invocation {
    /// Whether the whole batch was left to return.
    pub fn failed_whole_batch(&self) -> bool {
        !matches!(self, Self::NoMessages | Self::Completed)
    }
}

/// What one receive-invoke-delete round did. Message ids throughout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollOutcome {
    pub invocation: Invocation,
    /// The batch, in the order SQS gave it.
    pub received: Vec<String>,
    pub deleted: Vec<String>,
    /// Left in flight, to return after their visibility timeout: the reported failures, or the
    /// whole batch when the invocation failed.
    pub retried: Vec<String>,
    /// Meant to be deleted, but SQS refused: they return too (at-least-once).
    pub delete_failed: Vec<String>,
}

/// A round that could not receive (nothing was invoked, nothing changed on the queue).
#[derive(Debug, thiserror::Error)]
#[error("receiving from {queue_url}: {reason}")]
pub struct PollError {
    pub queue_url: String,
    pub reason: String,
}

/// One round: receive up to `batch_size` messages, invoke `handler` with them, delete what it did
/// not report failed.
pub async fn poll_once(
    sqs: &aws_sdk_sqs::Client,
    config: &PollerConfig,
    handler: &SqsHandler,
) -> Result<PollOutcome, PollError> {
    let received = sqs
        .receive_message()
        .queue_url(&config.queue_url)
        .max_number_of_messages(config.batch_size)
        .wait_time_seconds(config.wait_time_seconds)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .map_err(|e| PollError {
            queue_url: config.queue_url.clone(),
            reason: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
        })?;
    let messages = received.messages.unwrap_or_default();
    if messages.is_empty() {
        return Ok(PollOutcome {
            invocation: Invocation::NoMessages,
            received: Vec::new(),
            deleted: Vec::new(),
            retried: Vec::new(),
            delete_failed: Vec::new(),
        });
    }

    let records: Vec<SqsMessage> = messages.iter().map(|m| record(m, config)).collect();
    let ids: Vec<String> = records
        .iter()
        .map(|r| r.message_id.clone().unwrap_or_default())
        .collect();
    let mut event = SqsEvent::default();
    event.records = records;

    let invocation = invoke(handler, event, config.function_timeout).await;
    let failed: HashSet<String> = match invocation {
        Ok(ref response) => response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect(),
        Err(_) => ids.iter().cloned().collect(),
    };
    let invocation = match invocation {
        Ok(_) => Invocation::Completed,
        Err(failure) => failure,
    };
    if invocation.failed_whole_batch() {
        tracing::warn!(queue = %config.queue_url, messages = ids.len(), outcome = ?invocation, "invocation failed; the whole batch returns");
    }

    let (retried, to_delete): (Vec<usize>, Vec<usize>) =
        (0..ids.len()).partition(|&i| failed.contains(&ids[i]));
    let delete_failed = delete(sqs, config, &messages, &ids, &to_delete).await;
    let deleted = to_delete
        .iter()
        .map(|&i| ids[i].clone())
        .filter(|id| !delete_failed.contains(id))
        .collect();
    Ok(PollOutcome {
        invocation,
        received: ids.clone(),
        deleted,
        retried: retried.into_iter().map(|i| ids[i].clone()).collect(),
        delete_failed,
    })
}

/// Runs the handler in a task of its own until its deadline; a valid response, or why the whole
/// batch fails.
async fn invoke(
    handler: &SqsHandler,
    event: SqsEvent,
    timeout: Duration,
) -> Result<SqsBatchResponse, Invocation> {
    let batch: HashSet<String> = event
        .records
        .iter()
        .filter_map(|r| r.message_id.clone())
        .collect();
    let deadline = Instant::now() + timeout;
    let handler = handler.clone();
    let mut task = tokio::spawn(async move { handler(event, deadline).await });
    let joined = match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), &mut task).await {
        Ok(joined) => joined,
        Err(_) => {
            task.abort();
            return Err(Invocation::TimedOut);
        }
    };
    let response = match joined {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(Invocation::FunctionError(e.to_string())),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic".to_owned());
            return Err(Invocation::Panicked(message));
        }
        Err(e) => return Err(Invocation::Panicked(e.to_string())),
    };
    // Lambda's rule: an itemIdentifier that is empty or names no message of the batch fails it all.
    if let Some(bad) = response
        .batch_item_failures
        .iter()
        .find(|f| f.item_identifier.is_empty() || !batch.contains(&f.item_identifier))
    {
        return Err(Invocation::InvalidResponse(format!(
            "itemIdentifier {:?} is not a message of the batch",
            bad.item_identifier
        )));
    }
    Ok(response)
}

/// Deletes `which` (indexes into `messages`); returns the ids SQS did not delete.
async fn delete(
    sqs: &aws_sdk_sqs::Client,
    config: &PollerConfig,
    messages: &[Message],
    ids: &[String],
    which: &[usize],
) -> Vec<String> {
    if which.is_empty() {
        return Vec::new();
    }
    let mut entries = Vec::with_capacity(which.len());
    for &i in which {
        let entry = DeleteMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(messages[i].receipt_handle().unwrap_or_default())
            .build();
        match entry {
            Ok(entry) => entries.push(entry),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a delete entry");
            }
        }
    }
    let all = || which.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>();
    match sqs
        .delete_message_batch()
        .queue_url(&config.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => {
            let deleted: HashSet<&str> = out.successful().iter().map(|s| s.id()).collect();
            let failed: Vec<String> = which
                .iter()
                .filter(|i| !deleted.contains(i.to_string().as_str()))
                .map(|&i| ids[i].clone())
                .collect();
            if !failed.is_empty() {
                tracing::warn!(queue = %config.queue_url, failed = failed.len(), "SQS refused to delete some processed messages; they will be delivered again");
            }
            failed
        }
        Err(e) => {
            tracing::warn!(queue = %config.queue_url, error = %aws_sdk_sqs::error::DisplayErrorContext(e), "deleting processed messages failed; they will be delivered again");
            all()
        }
    }
}

/// An SQS message as Lambda hands it to the function.
fn record(message: &Message, config: &PollerConfig) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = message.message_id.clone();
    record.receipt_handle = message.receipt_handle.clone();
    record.body = message.body.clone();
    record.md5_of_body = message.md5_of_body.clone();
    record.md5_of_message_attributes = message.md5_of_message_attributes.clone();
    record.attributes = message
        .attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    record.message_attributes = message
        .message_attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| (name.clone(), message_attribute(value)))
                .collect::<HashMap<_, _>>()
        })
        .unwrap_or_default();
    record.event_source = Some(EVENT_SOURCE.to_owned());
    record.event_source_arn = Some(config.queue_arn.clone());
    record.aws_region = Some(config.region.clone());
    record
}

fn message_attribute(value: &MessageAttributeValue) -> SqsMessageAttribute {
    let bytes = |blob: &aws_sdk_sqs::primitives::Blob| {
        let mut data = Base64Data::default();
        data.extend_from_slice(blob.as_ref());
        data
    };
    let mut attribute = SqsMessageAttribute::default();
    attribute.string_value = value.string_value().map(str::to_owned);
    attribute.binary_value = value.binary_value().map(bytes);
    attribute.string_list_values = value.string_list_values().to_vec();
    attribute.binary_list_values = value.binary_list_values().iter().map(bytes).collect();
    attribute.data_type = Some(value.data_type().to_owned());
    attribute
}

// ---- in the background --------------------------------------------------------------------------

/// What a background poller has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollerStats {
    /// Invocations made.
    pub batches: u64,
    /// Messages handed to the function.
    pub messages: u64,
    pub deleted: u64,
    /// Messages left to return: reported failures, whole failed batches, refused deletes.
    pub failures: u64,
    /// Invocations that failed as a whole (error, panic, timeout, invalid response).
    pub failed_batches: u64,
    /// Receives that failed (SQS unreachable); the poller waits a second and goes on.
    pub poll_errors: u64,
}

impl PollerStats {
    fn record(&mut self, outcome: &PollOutcome) {
        if outcome.invocation == Invocation::NoMessages {
            return;
        }
        self.batches += 1;
        self.messages += outcome.received.len() as u64;
        self.deleted += outcome.deleted.len() as u64;
        self.failures += (outcome.retried.len() + outcome.delete_failed.len()) as u64;
        if outcome.invocation.failed_whole_batch() {
            self.failed_batches += 1;
        }
    }
}

/// A poller running in the background. [`stop`](Self::stop) ends it after the round in hand;
/// dropping the handle aborts it at once (a receive in flight may then leave its messages
/// invisible until their visibility timeout).
pub struct PollerHandle {
    stop: watch::Sender<bool>,
    stats: watch::Receiver<PollerStats>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PollerHandle {
    pub fn stats(&self) -> PollerStats {
        *self.stats.borrow()
    }

    /// Waits until `done` holds for the stats, for at most `timeout`: `Ok` with the stats that
    /// satisfied it, or `Err` with the last ones.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&PollerStats) -> bool,
    ) -> Result<PollerStats, PollerStats> {
        let mut stats = self.stats.clone();
        let waited = tokio::time::timeout(timeout, stats.wait_for(|s| done(s))).await;
        match waited {
            Ok(Ok(s)) => Ok(*s),
            _ => Err(self.stats()),
        }
    }

    /// Stops polling once the round in hand (a receive of at most `wait_time_seconds`, and the
    /// invocation of what it got) is done; returns the final stats.
    pub async fn stop(mut self) -> PollerStats {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.stats()
    }
}

impl Drop for PollerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `config`'s queue in the background, one invocation of `handler` at a time, until
/// stopped. Needs a Tokio runtime.
pub fn spawn_poller(sqs: aws_sdk_sqs::Client, config: PollerConfig, handler: SqsHandler) -> PollerHandle {
    let (stop, mut stopped) = watch::channel(false);
    let (stats_tx, stats) = watch::channel(PollerStats::default());
    let task = tokio::spawn(async move {
        while !*stopped.borrow() {
            let pause = match poll_once(&sqs, &config, &handler).await {
                Ok(outcome) => {
                    let idle = outcome.invocation == Invocation::NoMessages;
                    stats_tx.send_modify(|s| s.record(&outcome));
                    // A receive that does not wait must not spin on an empty queue.
                    (idle && config.wait_time_seconds == 0).then_some(Duration::from_millis(100))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the local event source mapping could not receive; retrying in 1 s");
                    stats_tx.send_modify(|s| s.poll_errors += 1);
                    Some(Duration::from_secs(1))
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopped.changed() => {}
                }
            }
        }
    });
    PollerHandle {
        stop,
        stats,
        task: Some(task),
    }
}
