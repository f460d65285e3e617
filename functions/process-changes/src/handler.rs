//! Translates an SQS batch into `shared::process` and its outcome into `batchItemFailures`.

use std::time::Instant;

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

pub use shared::clock::deadline_from_epoch_ms;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use futures::future::BoxFuture;
    use shared::config::GraphConfig;
    use shared::graph::GraphClient;
    use shared::ids::DriveKey;
    use shared::process::{BatchControl, InMessage, LifecycleActions, LifecycleError};
    use shared::queue::{MemoryQueue, QueueError};
    use shared::store::{ConnectionStore, DriveState, DriveStatus, MemoryStore};
    use shared::telemetry::Metrics;
    use shared::tokens::StaticToken;
    use shared::walk_store::{MemoryWalkStore, WalkStore};
    use shared::walker::{WalkLimits, Walker};

    use super::*;

    const SAMPLE: &str = include_str!("../../../events/process-changes-sqs.json");

    struct NoControl;
    impl BatchControl for NoControl {
        fn delay<'a>(&'a self, _: &'a [(String, Duration)]) -> BoxFuture<'a, Result<(), QueueError>> {
            Box::pin(async { Ok(()) })
        }
        fn dead_letter<'a>(&'a self, _: &'a InMessage, _: &'a str) -> BoxFuture<'a, Result<(), QueueError>> {
            Box::pin(async { Ok(()) })
        }
    }
    struct NoLifecycle;
    impl LifecycleActions for NoLifecycle {
        fn renew<'a>(&'a self, _: &'a DriveState) -> BoxFuture<'a, Result<(), LifecycleError>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn handler(drives: Arc<MemoryStore>, data: Arc<MemoryWalkStore>) -> ProcessChanges {
        let graph = GraphClient::new(&GraphConfig {
            base_url: "http://127.0.0.1:9".parse().unwrap(),
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        ProcessChanges::new(Processor {
            walker: Walker {
                graph,
                tokens: Arc::new(StaticToken(String::new().into())),
                drives,
                data,
                changes: Arc::new(MemoryQueue::new()),
                clock: shared::clock::system(),
                limits: WalkLimits::default(),
            },
            notifications: Arc::new(MemoryQueue::new()),
            control: Arc::new(NoControl),
            lifecycle: Arc::new(NoLifecycle),
            metrics: Metrics::new("process-changes"),
        })
    }

    fn sample() -> SqsEvent {
        serde_json::from_str(SAMPLE).unwrap()
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn the_sample_batch_for_a_drive_graphfeed_does_not_know_is_acknowledged_whole() {
        let h = handler(Arc::new(MemoryStore::new()), Arc::new(MemoryWalkStore::new()));
        let response = h.handle(sample(), far()).await;
        assert!(response.batch_item_failures.is_empty());
    }

    #[tokio::test]
    async fn every_message_of_a_throttled_drive_comes_back_as_a_batch_item_failure_by_message_id() {
        let drives = Arc::new(MemoryStore::new());
        let data = Arc::new(MemoryWalkStore::new());
        let event = sample();
        let drive_key = DriveKey::parse(event.records[0].attributes["MessageGroupId"].as_str()).unwrap();
        drives
            .put_drive(&DriveState {
                state: DriveStatus::Active,
                delta_link: Some("http://127.0.0.1:9/delta?token=1".into()),
                ..DriveState::first(
                    drive_key,
                    "7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c",
                    "3c1e5b9a-7d2f-4e8a-b6c4-0f9e8d7c6b5a",
                    "sample-drive",
                )
            })
            .await
            .unwrap();
        data.throttle(
            "7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c",
            shared::clock::system().now() + chrono::Duration::minutes(5),
        )
        .await
        .unwrap();
        let response = handler(drives, data).handle(event.clone(), far()).await;
        let failed: Vec<String> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        let all: Vec<String> = event
            .records
            .iter()
            .map(|r| r.message_id.clone().unwrap())
            .collect();
        assert_eq!(failed, all);
    }

    #[test]
    fn the_deadline_is_the_runtime_deadline_as_an_instant() {
        let in_ten_seconds = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap() + 10_000;
        let deadline = deadline_from_epoch_ms(in_ten_seconds);
        let left = deadline - Instant::now();
        assert!(
            left > Duration::from_secs(9) && left <= Duration::from_secs(10),
            "{left:?}"
        );
    }
}
