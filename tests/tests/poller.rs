//! The local stand-in for Lambda's SQS event source mapping (`local_stack::poller`), against
//! moto's FIFO queues: what a handler is given, what is deleted, what comes back and when, and
//! the redrive to the dead-letter queue that moto does on its own.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use graphfeed_tests::{REGION, aws, init_logs, local_parameters, unique_stack};
use local_stack::bootstrap::{self, Options};
use local_stack::poller::{
    BatchItemFailure, Invocation, PollerConfig, SqsBatchResponse, SqsEvent, SqsHandler, poll_once,
    spawn_poller, sqs_handler,
};
use local_stack::template::Template;

/// A fresh FIFO queue (visibility 1 s) with a FIFO dead-letter queue after `max_receives`.
struct Fifo {
    sqs: aws_sdk_sqs::Client,
    url: String,
    arn: String,
    dlq_url: String,
}

impl Fifo {
    async fn new(max_receives: i32) -> Self {
        init_logs();
        let sqs = aws_sdk_sqs::Client::new(&aws().await);
        let name = unique_stack();
        let dlq_url = create_fifo(&sqs, &format!("{name}-dlq.fifo"), &[]).await;
        let dlq_arn = queue_arn(&sqs, &dlq_url).await;
        let redrive = serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives });
        let url = create_fifo(
            &sqs,
            &format!("{name}-notifications.fifo"),
            &[
                (QueueAttributeName::VisibilityTimeout, "1".to_owned()),
                (QueueAttributeName::RedrivePolicy, redrive.to_string()),
            ],
        )
        .await;
        let arn = queue_arn(&sqs, &url).await;
        Self {
            sqs,
            url,
            arn,
            dlq_url,
        }
    }

    fn config(&self) -> PollerConfig {
        PollerConfig {
            queue_url: self.url.clone(),
            queue_arn: self.arn.clone(),
            batch_size: 10,
            function_timeout: Duration::from_secs(5),
            wait_time_seconds: 0,
            region: REGION.to_owned(),
        }
    }

    /// Sends `body` on `group`; returns its message id.
    async fn send(&self, group: &str, body: &str) -> String {
        self.sqs
            .send_message()
            .queue_url(&self.url)
            .message_group_id(group)
            .message_deduplication_id(uuid::Uuid::new_v4().to_string())
            .message_body(body)
            .send()
            .await
            .unwrap()
            .message_id
            .unwrap()
    }

    /// Bodies on `url` now, received (and left to return after 1 s).
    async fn peek(&self, url: &str) -> Vec<String> {
        let got = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        got.messages().iter().filter_map(|m| m.body.clone()).collect()
    }
}

async fn create_fifo(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: &[(QueueAttributeName, String)],
) -> String {
    let mut request = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::DeduplicationScope, "messageGroup")
        .attributes(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId");
    for (name, value) in attributes {
        request = request.attributes(name.clone(), value);
    }
    request.send().await.unwrap().queue_url.unwrap()
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap()
}

/// Every event a handler was given.
type Seen = Arc<Mutex<Vec<SqsEvent>>>;

fn bodies(event: &SqsEvent) -> Vec<String> {
    event.records.iter().map(|r| r.body.clone().unwrap()).collect()
}

/// Reports as failed each message whose body `fails` names; records every event.
fn reporting(seen: &Seen, fails: impl Fn(&str) -> bool + Send + Sync + 'static) -> SqsHandler {
    let seen = seen.clone();
    sqs_handler(move |event: SqsEvent, _deadline| {
        let mut response = SqsBatchResponse::default();
        for record in &event.records {
            if fails(record.body.as_deref().unwrap()) {
                response
                    .batch_item_failures
                    .push(failure(record.message_id.as_deref().unwrap()));
            }
        }
        seen.lock().unwrap().push(event);
        async move { Ok(response) }
    })
}

fn failure(id: &str) -> BatchItemFailure {
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = id.to_owned();
    failure
}

const AFTER_VISIBILITY: Duration = Duration::from_millis(1_300);

#[tokio::test]
async fn the_handler_gets_records_shaped_as_lambda_sends_them_with_its_deadline() {
    let queue = Fifo::new(5).await;
    let sent = queue
        .sqs
        .send_message()
        .queue_url(&queue.url)
        .message_group_id("drive-a")
        .message_deduplication_id("dedup-1")
        .message_body(r#"{"v":1}"#)
        .message_attributes(
            "kind",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("notification")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let deadlines = Arc::new(Mutex::new(Vec::new()));
    let seen: Seen = Arc::default();
    let handler = {
        let (seen, deadlines) = (seen.clone(), deadlines.clone());
        sqs_handler(move |event, deadline: Instant| {
            seen.lock().unwrap().push(event);
            // What is left of the invocation when the handler starts.
            deadlines
                .lock()
                .unwrap()
                .push(deadline.saturating_duration_since(Instant::now()));
            async { Ok(SqsBatchResponse::default()) }
        })
    };

    let outcome = poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();

    assert_eq!(outcome.invocation, Invocation::Completed);
    let event = seen.lock().unwrap().pop().unwrap();
    assert_eq!(event.records.len(), 1);
    let r = &event.records[0];
    assert_eq!(r.message_id, sent.message_id);
    assert!(r.receipt_handle.as_deref().is_some_and(|h| !h.is_empty()));
    assert_eq!(r.body.as_deref(), Some(r#"{"v":1}"#));
    assert_eq!(r.md5_of_body, sent.md5_of_message_body);
    assert_eq!(r.md5_of_message_attributes, sent.md5_of_message_attributes);
    assert_eq!(r.event_source.as_deref(), Some("aws:sqs"));
    assert_eq!(r.event_source_arn.as_deref(), Some(queue.arn.as_str()));
    assert_eq!(r.aws_region.as_deref(), Some(REGION));
    assert_eq!(r.attributes["MessageGroupId"], "drive-a");
    assert_eq!(r.attributes["MessageDeduplicationId"], "dedup-1");
    assert_eq!(
        Some(&r.attributes["SequenceNumber"]),
        sent.sequence_number.as_ref()
    );
    assert_eq!(r.attributes["ApproximateReceiveCount"], "1");
    for epoch_millis in ["SentTimestamp", "ApproximateFirstReceiveTimestamp"] {
        assert!(
            r.attributes[epoch_millis].parse::<u64>().unwrap() > 1_600_000_000_000,
            "{epoch_millis}"
        );
    }
    let kind = &r.message_attributes["kind"];
    assert_eq!(
        (kind.data_type.as_deref(), kind.string_value.as_deref()),
        (Some("String"), Some("notification"))
    );
    // Deserialized the way aws_lambda_events reads Lambda's JSON, the names are Lambda's.
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["Records"][0]["eventSourceARN"], queue.arn.as_str());
    assert_eq!(json["Records"][0]["attributes"]["MessageGroupId"], "drive-a");

    let budget = deadlines.lock().unwrap()[0];
    assert!(
        budget <= Duration::from_secs(5) && budget > Duration::from_millis(4_500),
        "{budget:?} left at the start of an invocation with a 5 s timeout"
    );
}

#[tokio::test]
async fn messages_not_reported_are_deleted_and_reported_ones_come_back_after_their_visibility_timeout() {
    let queue = Fifo::new(5).await;
    let ok_a = queue.send("drive-a", "ok-a").await;
    let ok_b = queue.send("drive-b", "ok-b").await;
    let bad = queue.send("drive-c", "bad-c").await;
    let seen: Seen = Arc::default();
    let handler = reporting(&seen, |body| body.starts_with("bad"));

    let first = poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();

    assert_eq!(first.invocation, Invocation::Completed);
    assert_eq!(first.received.len(), 3);
    assert_eq!(first.retried, vec![bad.clone()]);
    let mut deleted = first.deleted.clone();
    deleted.sort();
    let mut expected = vec![ok_a, ok_b];
    expected.sort();
    assert_eq!(deleted, expected);
    // The failure is in flight: nothing to receive until its visibility timeout ends.
    let again = poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();
    assert_eq!(again.invocation, Invocation::NoMessages);

    tokio::time::sleep(AFTER_VISIBILITY).await;
    let retry = poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();
    assert_eq!(retry.received, vec![bad]);
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(bodies(&last), ["bad-c"]);
    assert_eq!(last.records[0].attributes["ApproximateReceiveCount"], "2");
}

#[tokio::test]
async fn a_handler_that_changes_a_failures_visibility_gets_it_back_when_it_said() {
    let queue = Fifo::new(5).await;
    queue.send("drive-a", "later").await;
    let sqs = queue.sqs.clone();
    let url = queue.url.clone();
    // As process-changes backs a throttled message off: a visibility of its own choosing.
    let handler = sqs_handler(move |event: SqsEvent, _deadline| {
        let (sqs, url) = (sqs.clone(), url.clone());
        async move {
            let record = &event.records[0];
            sqs.change_message_visibility()
                .queue_url(&url)
                .receipt_handle(record.receipt_handle.clone().unwrap())
                .visibility_timeout(3)
                .send()
                .await?;
            let mut response = SqsBatchResponse::default();
            response
                .batch_item_failures
                .push(failure(record.message_id.as_deref().unwrap()));
            Ok(response)
        }
    });

    poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();

    tokio::time::sleep(AFTER_VISIBILITY).await;
    assert!(
        queue.peek(&queue.url).await.is_empty(),
        "back before the 3 s the handler set"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(queue.peek(&queue.url).await, ["later"]);
}

#[tokio::test]
async fn a_handler_past_its_deadline_is_stopped_and_its_whole_batch_comes_back() {
    let queue = Fifo::new(5).await;
    queue.send("drive-a", "one").await;
    queue.send("drive-b", "two").await;
    let finished = Arc::new(Mutex::new(false));
    let handler = {
        let finished = finished.clone();
        sqs_handler(move |_event, _deadline| {
            let finished = finished.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                *finished.lock().unwrap() = true;
                Ok(SqsBatchResponse::default())
            }
        })
    };
    let config = PollerConfig {
        function_timeout: Duration::from_millis(300),
        ..queue.config()
    };

    let outcome = poll_once(&queue.sqs, &config, &handler).await.unwrap();

    assert_eq!(outcome.invocation, Invocation::TimedOut);
    assert!(outcome.deleted.is_empty());
    assert_eq!(outcome.retried.len(), 2);
    tokio::time::sleep(AFTER_VISIBILITY).await;
    let mut back = queue.peek(&queue.url).await;
    back.sort();
    assert_eq!(back, ["one", "two"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !*finished.lock().unwrap(),
        "a timed-out invocation runs no further"
    );
}

#[tokio::test]
async fn a_handler_that_panics_or_errs_gets_its_whole_batch_again() {
    let queue = Fifo::new(5).await;
    queue.send("drive-a", "one").await;
    queue.send("drive-b", "two").await;
    let panics = sqs_handler(|_event, _deadline| async { panic!("walker bug") });
    let errs = sqs_handler(|_event, _deadline| async { Err("table unreachable".into()) });

    let panicked = poll_once(&queue.sqs, &queue.config(), &panics).await.unwrap();
    assert_eq!(panicked.invocation, Invocation::Panicked("walker bug".into()));
    assert_eq!((panicked.deleted.len(), panicked.retried.len()), (0, 2));

    tokio::time::sleep(AFTER_VISIBILITY).await;
    let errored = poll_once(&queue.sqs, &queue.config(), &errs).await.unwrap();
    assert_eq!(
        errored.invocation,
        Invocation::FunctionError("table unreachable".into())
    );
    assert_eq!((errored.deleted.len(), errored.retried.len()), (0, 2));

    tokio::time::sleep(AFTER_VISIBILITY).await;
    assert_eq!(queue.peek(&queue.url).await.len(), 2);
}

#[tokio::test]
async fn an_item_identifier_that_is_not_in_the_batch_fails_the_whole_batch() {
    let queue = Fifo::new(5).await;
    queue.send("drive-a", "one").await;
    queue.send("drive-b", "two").await;
    for wrong in ["not-a-message-id", ""] {
        let handler = sqs_handler(move |_event, _deadline| {
            let mut response = SqsBatchResponse::default();
            response.batch_item_failures.push(failure(wrong));
            async move { Ok(response) }
        });

        let outcome = poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();

        assert!(
            matches!(outcome.invocation, Invocation::InvalidResponse(_)),
            "{wrong:?}: {outcome:?}"
        );
        assert_eq!(
            (outcome.deleted.len(), outcome.retried.len()),
            (0, 2),
            "{wrong:?}"
        );
        tokio::time::sleep(AFTER_VISIBILITY).await;
    }
}

#[tokio::test]
async fn a_drive_group_is_processed_in_order_and_held_back_while_one_of_its_messages_is_retried() {
    let queue = Fifo::new(5).await;
    for n in 1..=3 {
        queue.send("drive-a", &format!("a-{n}")).await;
    }
    queue.send("drive-b", "b-1").await;
    // The group's last message fails once. (Only one message of a group is left in flight here:
    // moto 5.2.5 mis-orders, and can strand, a group with several in flight once they return.)
    let failed_once = Arc::new(Mutex::new(false));
    let processed = Arc::new(Mutex::new(Vec::<String>::new()));
    let handler = {
        let (failed_once, processed) = (failed_once.clone(), processed.clone());
        sqs_handler(move |event: SqsEvent, _deadline| {
            let mut response = SqsBatchResponse::default();
            for record in &event.records {
                let body = record.body.clone().unwrap();
                if body == "a-3" && !std::mem::replace(&mut *failed_once.lock().unwrap(), true) {
                    response
                        .batch_item_failures
                        .push(failure(record.message_id.as_deref().unwrap()));
                } else {
                    processed.lock().unwrap().push(body);
                }
            }
            async move { Ok(response) }
        })
    };

    let first = poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();
    assert_eq!(first.received.len(), 4);
    assert_eq!(first.retried.len(), 1);
    queue.send("drive-a", "a-4").await;
    queue.send("drive-b", "b-2").await;
    // While a-3 is in flight nothing more of drive-a is delivered; drive-b goes on.
    let held = poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();
    assert_eq!(held.received.len(), 1);
    assert_eq!(processed.lock().unwrap().last().map(String::as_str), Some("b-2"));

    tokio::time::sleep(AFTER_VISIBILITY).await;
    let retry = poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();
    assert_eq!(retry.received.len(), 2, "a-3, then a-4 behind it");

    let processed = processed.lock().unwrap().clone();
    let drive_a: Vec<&str> = processed
        .iter()
        .map(String::as_str)
        .filter(|b| b.starts_with("a-"))
        .collect();
    assert_eq!(drive_a, ["a-1", "a-2", "a-3", "a-4"]);
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_moved_to_the_dead_letter_queue_after_max_receive_count() {
    let queue = Fifo::new(2).await;
    queue.send("drive-a", "poison").await;
    let seen: Seen = Arc::default();
    let handler = reporting(&seen, |_| true);

    for _ in 0..2 {
        let outcome = poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();
        assert_eq!(outcome.retried.len(), 1);
        tokio::time::sleep(AFTER_VISIBILITY).await;
    }
    // The third receive finds it past maxReceiveCount: SQS (moto) moves it instead of delivering.
    let third = poll_once(&queue.sqs, &queue.config(), &handler).await.unwrap();

    assert_eq!(third.invocation, Invocation::NoMessages);
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(queue.peek(&queue.dlq_url).await, ["poison"]);
    tokio::time::sleep(AFTER_VISIBILITY).await;
    assert!(queue.peek(&queue.url).await.is_empty());
}

#[tokio::test]
async fn a_background_poller_drains_the_queue_counts_what_it_did_and_stops_on_request() {
    let queue = Fifo::new(5).await;
    for n in 0..12 {
        queue.send(&format!("drive-{}", n % 4), &format!("m-{n}")).await;
    }
    let seen: Seen = Arc::default();
    let config = PollerConfig {
        wait_time_seconds: 1,
        ..queue.config()
    };
    let poller = spawn_poller(queue.sqs.clone(), config, reporting(&seen, |b| b == "m-5"));

    let stats = poller
        .wait_until(Duration::from_secs(20), |s| s.deleted == 11)
        .await
        .unwrap();
    assert_eq!(stats.messages, stats.deleted + stats.failures);
    assert!(stats.batches >= 2, "12 messages take at least two batches of 10");
    assert_eq!(stats.failed_batches, 0);
    // The failure comes back and fails again until it is stopped.
    poller
        .wait_until(Duration::from_secs(10), |s| s.failures >= 2)
        .await
        .unwrap();

    let stopped = poller.stop().await;
    assert_eq!(stopped.poll_errors, 0);
    queue.send("drive-z", "after-stop").await;
    tokio::time::sleep(AFTER_VISIBILITY).await;
    let mut left = queue.peek(&queue.url).await;
    left.sort();
    assert_eq!(left, ["after-stop", "m-5"], "nothing polls once stopped");
}

#[tokio::test]
async fn the_template_bootstraps_the_changes_queue_and_maps_process_changes_to_the_notifications_queue() {
    init_logs();
    let template = Template::repository().unwrap();
    let aws = aws().await;
    let options = Options {
        stack: unique_stack(),
        region: REGION.into(),
        secret_values: BTreeMap::new(),
        parameters: local_parameters(),
    };
    let stack = bootstrap::bootstrap(&template, &aws, &options).await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&aws);

    let changes = stack.reference("ChangesQueue").unwrap();
    assert!(
        changes.ends_with(&format!("{}-changes.fifo", options.stack)),
        "{changes}"
    );
    assert!(stack.arn("ChangesQueue").unwrap().ends_with("changes.fifo"));
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(changes)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    assert_eq!(attributes[&QueueAttributeName::FifoQueue], "true");
    assert_eq!(
        attributes[&QueueAttributeName::ContentBasedDeduplication],
        "false"
    );
    assert_eq!(attributes[&QueueAttributeName::MessageRetentionPeriod], "1209600");

    let config = PollerConfig::from_template(&template, &stack, "ProcessChangesFunction").unwrap();
    assert_eq!(config.queue_url, stack.reference("NotificationsQueue").unwrap());
    assert_eq!(config.queue_arn, stack.arn("NotificationsQueue").unwrap());
    assert_eq!(config.batch_size, 10);
    assert_eq!(config.function_timeout, Duration::from_secs(60));
    let notifications = sqs
        .get_queue_attributes()
        .queue_url(&config.queue_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    assert_eq!(notifications[&QueueAttributeName::VisibilityTimeout], "360");
    let redrive: serde_json::Value =
        serde_json::from_str(&notifications[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(redrive["maxReceiveCount"], 100);

    // process-changes' environment resolves once the API's URLs are given (the local stack
    // serves them itself).
    let overrides = shared::config::Env::from_pairs([
        ("NOTIFICATION_URL", "http://127.0.0.1:3000/notifications"),
        ("LIFECYCLE_NOTIFICATION_URL", "http://127.0.0.1:3000/lifecycle"),
    ]);
    let env = local_stack::function_env(&stack, &template, "ProcessChangesFunction", &overrides).unwrap();
    assert_eq!(env.get("CHANGES_QUEUE_URL"), Some(changes));
    assert_eq!(
        env.get("DEAD_LETTER_QUEUE_URL"),
        stack.reference("NotificationsDeadLetterQueue")
    );
    assert_eq!(env.get("CHANGE_LOG_RETENTION_DAYS"), Some("7"));
}
