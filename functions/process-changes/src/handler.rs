//! Translates an SQS batch into `shared::process` and its outcome into `batchItemFailures`.

use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use shared::process::{BatchOutcome, InMessage, Processor};

/// The handler, built once per cold start.
pub struct ProcessChanges {
    processor: Processor,
}

impl ProcessChanges {
    pub fn new(processor: Processor) -> Self {
        Self { processor }
    }

    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// Handles one batch: the messages to retry come back as batch item failures.
    pub async fn handle(&self, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
        self.handle_with_outcome(event, deadline).await.0
    }

    /// [`Self::handle`], with what happened (for tests and the local stack).
    pub async fn handle_with_outcome(
        &self,
        event: SqsEvent,
        deadline: Instant,
    ) -> (SqsBatchResponse, BatchOutcome) {
        let mut unreadable = Vec::new();
        let mut messages = Vec::with_capacity(event.records.len());
        for record in event.records {
            match to_message(record) {
                Some(m) => messages.push(m),
                // Without an id or receipt handle the message cannot be acknowledged or moved.
                None => unreadable.push(()),
            }
        }
        if !unreadable.is_empty() {
            tracing::error!(
                count = unreadable.len(),
                "records without a message id or receipt handle were skipped"
            );
        }
        let outcome = self.processor.process(messages, deadline).await;
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = outcome
            .failures
            .iter()
            .map(|id| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id.clone();
                failure
            })
            .collect();
        (response, outcome)
    }
}

fn to_message(record: SqsMessage) -> Option<InMessage> {
    Some(InMessage {
        receive_count: record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        group_id: record.attributes.get("MessageGroupId").cloned(),
        message_id: record.message_id?,
        receipt_handle: record.receipt_handle?,
        body: record.body.unwrap_or_default(),
    })
}

/// The invocation's deadline (the runtime gives epoch milliseconds) as an `Instant`.
pub fn deadline_from_epoch_ms(deadline_ms: u64) -> Instant {
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}
