//! The notifications-queue port, its SQS FIFO adapter, and the rule for sending a set of messages
//! so that none is lost: everything is sent with SendMessageBatch (at most 10 entries and 256 KiB
//! per call), entries SQS refused are retried once with the *same* deduplication ids (so a retry
//! of an entry SQS did accept is dropped by FIFO deduplication, not duplicated), and the caller is
//! told success only when SQS accepted every entry.
//!
//! Deduplication ids are unique per delivery (a random UUID), never derived from content: drive
//! notifications for two different changes are byte-identical, so a content-derived id would
//! silently drop the second change inside SQS's 5-minute deduplication window.

use futures::future::{BoxFuture, join_all};

use crate::ids::DriveKey;

/// The most entries one SendMessageBatch call takes.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// The most payload bytes one SendMessageBatch call takes (SQS's classic limit; moto enforces it).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The FIFO message group: one per drive.
    pub group: DriveKey,
    /// Unique per delivery.
    pub dedup_id: String,
    /// An [`crate::envelope::Envelope`] as JSON.
    pub body: String,
}

impl OutgoingMessage {
    pub fn new(group: DriveKey, body: String) -> Self {
        Self {
            group,
            dedup_id: uuid::Uuid::new_v4().simple().to_string(),
            body,
        }
    }
}

/// An entry the queue did not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFailure {
    /// The entry's index in the batch that was sent.
    pub index: usize,
    pub code: String,
    /// True when the request itself was wrong, so a retry cannot help.
    pub sender_fault: bool,
}

/// Why sending failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("the queue call failed: {0}")]
    Call(String),
    #[error("the queue refused {refused} of {total} messages (first code: {first_code})")]
    Refused {
        refused: usize,
        total: usize,
        first_code: String,
    },
}

/// The notifications queue.
pub trait NotificationQueue: Send + Sync {
    /// Sends at most [`MAX_BATCH_ENTRIES`] messages in one call; returns the entries refused.
    fn send_batch<'a>(
        &'a self,
        batch: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Result<Vec<EntryFailure>, QueueError>>;
}

/// Sends every message, batched and in parallel, retrying refused entries once. Ok only when the
/// queue accepted all of them.
pub async fn send_all(queue: &dyn NotificationQueue, messages: &[OutgoingMessage]) -> Result<(), QueueError> {
    let batches = batches(messages);
    let results = join_all(batches.iter().map(|b| send_with_one_retry(queue, b))).await;
    let mut refused = 0;
    let mut first_code = None;
    for result in results {
        let failures = result?;
        refused += failures.len();
        if first_code.is_none() {
            first_code = failures.into_iter().next().map(|f| f.code);
        }
    }
    match first_code {
        None => Ok(()),
        Some(first_code) => Err(QueueError::Refused {
            refused,
            total: messages.len(),
            first_code,
        }),
    }
}

/// Sends every message in order: one batch after another, each retried once like
/// [`send_all`]; stops at the first batch the queue did not fully accept. For the changes queue,
/// where a drive's events must arrive in sequence order (deduplication ids are deterministic
/// there, so a resend after a partial failure is dropped by SQS, not duplicated).
pub async fn send_in_order(
    queue: &dyn NotificationQueue,
    messages: &[OutgoingMessage],
) -> Result<(), QueueError> {
    for batch in batches(messages) {
        let failures = send_with_one_retry(queue, batch).await?;
        if let Some(first) = failures.first() {
            return Err(QueueError::Refused {
                refused: failures.len(),
                total: messages.len(),
                first_code: first.code.clone(),
            });
        }
    }
    Ok(())
}

async fn send_with_one_retry(
    queue: &dyn NotificationQueue,
    batch: &[OutgoingMessage],
) -> Result<Vec<EntryFailure>, QueueError> {
    let failures = match queue.send_batch(batch).await {
        Ok(f) => f,
        // A failed call may still have enqueued some entries; resending with the same ids is safe.
        Err(_) => return queue.send_batch(batch).await.map(|f| in_range(f, batch.len())),
    };
    let failures = in_range(failures, batch.len());
    // Entries SQS may accept on a second try, with their indexes in `batch`.
    let (retryable, mut final_failures): (Vec<EntryFailure>, Vec<EntryFailure>) = failures
        .into_iter()
        .partition(|f| !f.sender_fault && f.index < batch.len());
    if !retryable.is_empty() {
        let again: Vec<OutgoingMessage> = retryable.iter().map(|f| batch[f.index].clone()).collect();
        for mut f in in_range(queue.send_batch(&again).await?, again.len()) {
            // Map the retry's index back to the entry's index in `batch`.
            f.index = retryable.get(f.index).map_or(usize::MAX, |r| r.index);
            final_failures.push(f);
        }
    }
    Ok(final_failures)
}

/// A failure naming an entry that was not sent (an id we cannot map) still counts as a failure:
/// the caller must not acknowledge what it cannot prove was accepted.
fn in_range(failures: Vec<EntryFailure>, len: usize) -> Vec<EntryFailure> {
    failures
        .into_iter()
        .map(|f| {
            if f.index < len {
                f
            } else {
                EntryFailure {
                    index: usize::MAX,
                    sender_fault: true,
                    ..f
                }
            }
        })
        .collect()
}

fn batches(messages: &[OutgoingMessage]) -> Vec<&[OutgoingMessage]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, m) in messages.iter().enumerate() {
        let size = m.body.len();
        if i > start && (i - start == MAX_BATCH_ENTRIES || bytes + size > MAX_BATCH_BYTES) {
            out.push(&messages[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < messages.len() {
        out.push(&messages[start..]);
    }
    out
}

/// The SQS FIFO adapter.
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

impl NotificationQueue for SqsQueue {
    fn send_batch<'a>(
        &'a self,
        batch: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Result<Vec<EntryFailure>, QueueError>> {
        Box::pin(async move {
            let mut entries = Vec::with_capacity(batch.len());
            for (i, m) in batch.iter().enumerate() {
                let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&m.body)
                    .message_group_id(m.group.to_string())
                    .message_deduplication_id(&m.dedup_id)
                    .build()
                    .map_err(|e| QueueError::Call(e.to_string()))?;
                entries.push(entry);
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError::Call(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
            Ok(out
                .failed
                .into_iter()
                .map(|f| EntryFailure {
                    index: f.id.parse().unwrap_or(usize::MAX),
                    code: f.code,
                    sender_fault: f.sender_fault,
                })
                .collect())
        })
    }
}

/// An in-memory queue that accepts everything and keeps it (tests and benchmarks).
#[derive(Debug, Default)]
pub struct MemoryQueue {
    sent: std::sync::Mutex<Vec<OutgoingMessage>>,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything sent so far, in order.
    pub fn sent(&self) -> Vec<OutgoingMessage> {
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl NotificationQueue for MemoryQueue {
    fn send_batch<'a>(
        &'a self,
        batch: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Result<Vec<EntryFailure>, QueueError>> {
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(batch.iter().cloned());
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn message(size: usize) -> OutgoingMessage {
        OutgoingMessage::new(DriveKey::from_bytes([3; 16]), "x".repeat(size))
    }

    #[test]
    fn batches_hold_at_most_ten_entries_and_256_kib() {
        let many: Vec<_> = (0..23).map(|_| message(10)).collect();
        assert_eq!(
            batches(&many).iter().map(|b| b.len()).collect::<Vec<_>>(),
            [10, 10, 3]
        );
        let big: Vec<_> = (0..4).map(|_| message(100 * 1024)).collect();
        assert_eq!(batches(&big).iter().map(|b| b.len()).collect::<Vec<_>>(), [2, 2]);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn every_message_gets_its_own_deduplication_id() {
        assert_ne!(message(1).dedup_id, message(1).dedup_id);
    }

    /// Refuses the first entry of the first call, then accepts everything.
    #[derive(Default)]
    struct FlakyQueue {
        calls: Mutex<Vec<Vec<String>>>,
    }

    impl NotificationQueue for FlakyQueue {
        fn send_batch<'a>(
            &'a self,
            batch: &'a [OutgoingMessage],
        ) -> BoxFuture<'a, Result<Vec<EntryFailure>, QueueError>> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(batch.iter().map(|m| m.dedup_id.clone()).collect());
            let first = calls.len() == 1;
            Box::pin(async move {
                Ok(if first {
                    vec![EntryFailure {
                        index: 0,
                        code: "InternalError".into(),
                        sender_fault: false,
                    }]
                } else {
                    vec![]
                })
            })
        }
    }

    #[tokio::test]
    async fn a_refused_entry_is_retried_once_with_the_same_deduplication_id() {
        let queue = FlakyQueue::default();
        let messages = vec![message(1), message(1)];
        send_all(&queue, &messages).await.unwrap();
        let calls = queue.calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1], vec![messages[0].dedup_id.clone()]);
    }

    /// Answers each call with the next scripted list of failures (empty once the script ends).
    struct ScriptedQueue {
        script: Mutex<Vec<Vec<EntryFailure>>>,
        sent: Mutex<Vec<Vec<String>>>,
    }

    impl ScriptedQueue {
        fn new(mut script: Vec<Vec<EntryFailure>>) -> Self {
            script.reverse();
            Self {
                script: Mutex::new(script),
                sent: Mutex::default(),
            }
        }
    }

    impl NotificationQueue for ScriptedQueue {
        fn send_batch<'a>(
            &'a self,
            batch: &'a [OutgoingMessage],
        ) -> BoxFuture<'a, Result<Vec<EntryFailure>, QueueError>> {
            self.sent
                .lock()
                .unwrap()
                .push(batch.iter().map(|m| m.dedup_id.clone()).collect());
            let next = self.script.lock().unwrap().pop().unwrap_or_default();
            Box::pin(async move { Ok(next) })
        }
    }

    fn failure(index: usize, sender_fault: bool) -> EntryFailure {
        EntryFailure {
            index,
            code: "InternalError".into(),
            sender_fault,
        }
    }

    #[tokio::test]
    async fn an_entry_refused_twice_fails_the_whole_send_and_only_it_is_retried() {
        let messages = vec![message(1), message(1), message(1)];
        let queue = ScriptedQueue::new(vec![vec![failure(2, false)], vec![failure(0, false)]]);
        let err = send_all(&queue, &messages).await.unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::Refused {
                    refused: 1,
                    total: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(queue.sent.lock().unwrap()[1], vec![messages[2].dedup_id.clone()]);
    }

    #[tokio::test]
    async fn a_retry_reports_failures_by_their_index_in_the_original_batch() {
        let messages = vec![message(1), message(1), message(1)];
        let queue = ScriptedQueue::new(vec![
            vec![failure(1, false), failure(2, false)],
            vec![failure(1, false)],
        ]);
        let failures = send_with_one_retry(&queue, &messages).await.unwrap();
        assert_eq!(failures.iter().map(|f| f.index).collect::<Vec<_>>(), [2]);
    }

    #[tokio::test]
    async fn a_failure_naming_an_unknown_entry_is_never_taken_for_success() {
        let queue = ScriptedQueue::new(vec![vec![failure(usize::MAX, false)]]);
        assert!(send_all(&queue, &[message(1)]).await.is_err());
    }

    #[tokio::test]
    async fn a_sender_fault_is_not_retried_and_fails_the_send() {
        let queue = ScriptedQueue::new(vec![vec![failure(0, true)]]);
        assert!(send_all(&queue, &[message(1), message(1)]).await.is_err());
        assert_eq!(queue.sent.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn one_refused_entry_of_many_is_a_failure_even_when_the_rest_were_accepted() {
        let messages: Vec<_> = (0..12).map(|_| message(1)).collect();
        let queue = ScriptedQueue::new(vec![vec![], vec![failure(1, false)], vec![failure(0, false)]]);
        let err = send_all(&queue, &messages).await.unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::Refused {
                    refused: 1,
                    total: 12,
                    ..
                }
            ),
            "{err}"
        );
    }

    struct RefusingQueue;

    impl NotificationQueue for RefusingQueue {
        fn send_batch<'a>(
            &'a self,
            batch: &'a [OutgoingMessage],
        ) -> BoxFuture<'a, Result<Vec<EntryFailure>, QueueError>> {
            let failures = (0..batch.len())
                .map(|index| EntryFailure {
                    index,
                    code: "ServiceUnavailable".into(),
                    sender_fault: false,
                })
                .collect();
            Box::pin(async move { Ok(failures) })
        }
    }

    #[tokio::test]
    async fn a_batch_refused_entirely_is_reported_as_failure() {
        let err = send_all(&RefusingQueue, &[message(1), message(1), message(1)])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::Refused {
                    refused: 3,
                    total: 3,
                    ..
                }
            ),
            "{err}"
        );
    }
}
