//! process-changes end to end: graph-sim (Graph and Entra), notify, connect and process-changes
//! on the local stack, every store and queue in moto, the SQS event source emulated by the
//! local stack's poller. Change events are read from the changes queue as a downstream consumer
//! would.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use graphfeed_tests::{SignedInUser, StackOptions, TestStack};
use shared::changes::{Change, ChangeEvent};
use shared::store::{ConnectionStore, DriveStatus};
use shared::walk_store::{Scope, WalkStore};

async fn stack(run_process_changes: bool) -> TestStack {
    TestStack::start_with(StackOptions {
        run_process_changes,
        ..StackOptions::default()
    })
    .await
}

async fn read_changes(
    stack: &TestStack,
    timeout: Duration,
    done: impl FnMut(&[ChangeEvent]) -> bool,
) -> Vec<ChangeEvent> {
    stack.read_changes(timeout, done).await
}

fn new_file(stack: &TestStack, user: &SignedInUser, name: &str) -> String {
    stack.new_file(user, name)
}

#[tokio::test]
async fn a_file_added_to_a_connected_drive_reaches_the_changes_queue_through_graph_notify_sqs_and_the_walker()
{
    let stack = stack(true).await;
    let user = stack.sign_in_new_user();
    let drive_key = stack.connect(&user).await;
    let baseline = read_changes(&stack, Duration::from_secs(20), |e| !e.is_empty()).await;
    assert_eq!(baseline.len(), 1);
    assert_eq!(baseline[0].change, Change::BaselineComplete);
    assert_eq!(baseline[0].drive_id, user.created.drive_id);
    assert_eq!(baseline[0].sequence, 1);
    let id = new_file(&stack, &user, "hello.txt");
    let events = read_changes(&stack, Duration::from_secs(20), |e| !e.is_empty()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.change, Change::Created);
    assert_eq!(event.item_id.as_deref(), Some(id.as_str()));
    assert_eq!(event.path.as_deref(), Some("/hello.txt"));
    assert_eq!(event.sequence, 2);
    assert_eq!(event.idempotency_key(), format!("{}:2", user.created.drive_id));
    let state = stack.drive_store().drive(&drive_key).await.unwrap().unwrap();
    assert_eq!(state.state, DriveStatus::Active);
    assert_eq!(state.seq_high_water, 2);
    // The log holds what was sent.
    let log = stack
        .walk_store()
        .log_after(
            Scope {
                drive_key: &drive_key,
                generation: state.generation,
            },
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(log.len(), 2);
}

#[tokio::test]
async fn a_poison_message_reaches_the_dead_letter_queue_at_once_and_leaves_the_queue() {
    let stack = stack(true).await;
    let sqs = aws_sdk_sqs::Client::new(&stack.aws);
    sqs.send_message()
        .queue_url(stack.queue_url())
        .message_body("{\"this is\": \"not an envelope\"}")
        .message_group_id("poison-group")
        .message_deduplication_id("poison-1")
        .send()
        .await
        .unwrap();
    let dlq = stack
        .running
        .stack
        .reference("NotificationsDeadLetterQueue")
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut found = Vec::new();
    while found.is_empty() && Instant::now() < deadline {
        found = sqs
            .receive_message()
            .queue_url(&dlq)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
    }
    assert_eq!(found.len(), 1, "the poison message is in the DLQ");
    assert_eq!(found[0].body(), Some("{\"this is\": \"not an envelope\"}"));
    let reason = found[0].message_attributes().unwrap()["graphfeed-reason"]
        .string_value()
        .unwrap()
        .to_owned();
    assert!(reason.contains("not a graphfeed envelope"), "{reason}");
    // After one receive, not after maxReceiveCount.
    let stats = stack.running.poller.as_ref().unwrap().stats();
    assert_eq!(stats.failures, 0);
}

#[tokio::test]
async fn a_user_whose_refresh_token_was_revoked_is_marked_needs_reauth_and_the_message_acknowledged() {
    let stack = stack(false).await;
    let user = stack.sign_in_new_user();
    let drive_key = stack.connect(&user).await;
    stack
        .sim
        .sim()
        .revoke_refresh_tokens(&user.created.user_id)
        .unwrap();
    let received = stack.drain_raw().await;
    assert_eq!(received.len(), 1, "the baseline message");
    let (response, outcome) = stack
        .running
        .process_changes
        .handle_with_outcome(sqs_event(&received, 1), far())
        .await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(outcome.needs_reauth, 1);
    let state = stack.drive_store().drive(&drive_key).await.unwrap().unwrap();
    assert_eq!(state.state, DriveStatus::NeedsReauth);
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// Messages as Lambda would deliver them, each with the receive count given.
fn sqs_event(messages: &[aws_sdk_sqs::types::Message], receive_count: u32) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages
        .iter()
        .map(|m| {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id.clone();
            record.receipt_handle = Some(format!("{}-{receive_count}", m.receipt_handle().unwrap_or("r")));
            record.body = m.body.clone();
            let attrs = m.attributes.clone().unwrap_or_default();
            let mut map: BTreeMap<String, String> = BTreeMap::new();
            if let Some(group) = attrs.get(&MessageSystemAttributeName::MessageGroupId) {
                map.insert("MessageGroupId".into(), group.clone());
            }
            map.insert("ApproximateReceiveCount".into(), receive_count.to_string());
            record.attributes = map.into_iter().collect();
            record
        })
        .collect();
    event
}

#[tokio::test]
async fn every_message_replayed_three_times_and_every_notification_four_times_give_one_sequence_per_change() {
    let stack = stack(false).await;
    let user = stack.sign_in_new_user();
    let drive_key = stack.connect(&user).await;
    let handler = &stack.running.process_changes;
    let mut files = Vec::new();
    for round in 0..3 {
        // Everything the queue holds now (the baseline, then Graph's notifications via notify).
        let mut messages = stack.drain_raw().await;
        if round > 0 {
            assert!(
                !messages.is_empty(),
                "notify queued the notifications of round {round}"
            );
            // Graph delivered each notification four times: the queue holds four copies.
            let copies = messages.clone();
            for _ in 0..3 {
                messages.extend(copies.iter().cloned());
            }
        }
        // Each message is delivered three times (an at-least-once replay).
        for receive in 1..=3 {
            for one in &messages {
                let response = handler
                    .handle(sqs_event(std::slice::from_ref(one), receive), far())
                    .await;
                assert!(response.batch_item_failures.is_empty());
            }
        }
        for i in 0..4 {
            files.push(new_file(&stack, &user, &format!("round{round}-{i}.txt")));
        }
        // Wait for graph-sim's notifications to reach the queue through notify.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut last = stack.drain_raw().await;
    assert!(!last.is_empty());
    last.extend(last.clone());
    for receive in 1..=3 {
        for one in &last {
            handler
                .handle(sqs_event(std::slice::from_ref(one), receive), far())
                .await;
        }
    }
    let events = read_changes(&stack, Duration::from_secs(5), |e| e.len() >= 13).await;
    // Deduplicate as a consumer would, on (driveId, sequence): the copies are identical.
    let mut by_sequence: BTreeMap<u64, &ChangeEvent> = BTreeMap::new();
    for event in &events {
        if let Some(seen) = by_sequence.insert(event.sequence, event) {
            assert_eq!(seen, event, "a re-sent event carries its original content");
        }
    }
    let sequences: Vec<u64> = by_sequence.keys().copied().collect();
    assert_eq!(
        sequences,
        (1..=13).collect::<Vec<u64>>(),
        "the baseline marker and 12 creations"
    );
    let created: Vec<&str> = by_sequence
        .values()
        .filter(|e| e.change == Change::Created)
        .map(|e| e.item_id.as_deref().unwrap())
        .collect();
    let mut expected: Vec<&str> = files.iter().map(String::as_str).collect();
    expected.sort_unstable();
    let mut got = created.clone();
    got.sort_unstable();
    assert_eq!(got, expected, "each change once");
    let state = stack.drive_store().drive(&drive_key).await.unwrap().unwrap();
    let log = stack
        .walk_store()
        .log_after(
            Scope {
                drive_key: &drive_key,
                generation: state.generation,
            },
            0,
            100,
        )
        .await
        .unwrap();
    assert_eq!(log.len(), 13);
    assert_eq!(state.seq_high_water, 13);
}

#[tokio::test]
async fn a_throttled_tenant_waits_for_its_retry_after_while_another_tenants_drive_is_walked() {
    let stack = stack(false).await;
    let slow = stack.sign_in_new_user();
    let fast = stack.sign_in_new_user();
    assert_ne!(slow.created.tenant_id, fast.created.tenant_id);
    stack.connect(&slow).await;
    stack.connect(&fast).await;
    // The slow tenant's drive is throttled for an hour before its baseline is walked.
    stack
        .sim
        .sim()
        .throttle(graph_sim::Throttle {
            tenant_id: slow.created.tenant_id.clone(),
            drive_id: Some(slow.created.drive_id.clone()),
            status: 429,
            retry_after: Some(3600),
            for_duration: chrono::Duration::hours(1),
        })
        .unwrap();
    let template = local_stack::template::Template::repository().unwrap();
    let source = stack.running.process_changes_source(&template).unwrap();
    let handler = stack.running.process_changes.clone();
    let poller = local_stack::poller::spawn_poller(
        aws_sdk_sqs::Client::new(&stack.aws),
        source,
        local_stack::poller::sqs_handler(move |event, deadline| {
            let handler = handler.clone();
            async move { Ok(handler.handle(event, deadline).await) }
        }),
    );
    let events = read_changes(&stack, Duration::from_secs(20), |e| !e.is_empty()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].drive_id, fast.created.drive_id);
    // The slow drive's message is back in the queue, hidden for its Retry-After.
    let stats = poller.stop().await;
    assert_eq!(stats.failures, 1, "{stats:?}");
    let counters = stack.sim.sim().counters();
    assert_eq!(
        counters.throttle_violations, 0,
        "graphfeed never called before Retry-After"
    );
    let delta_calls = counters
        .delta_calls_by_drive
        .get(&slow.created.drive_id)
        .copied()
        .unwrap_or(0);
    assert_eq!(delta_calls, 1, "one throttled call, then none");
}

#[tokio::test]
async fn a_disconnect_purges_the_old_generations_index_staging_and_change_log() {
    let stack = stack(true).await;
    let user = stack.sign_in_new_user();
    let drive_key = stack.connect(&user).await;
    let baseline = read_changes(&stack, Duration::from_secs(20), |e| !e.is_empty()).await;
    assert_eq!(baseline.len(), 1, "{baseline:?}");
    new_file(&stack, &user, "kept-until-disconnect.txt");
    let events = read_changes(&stack, Duration::from_secs(20), |e| !e.is_empty()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let old = Scope {
        drive_key: &drive_key,
        generation: 1,
    };
    let data = stack.walk_store();
    assert!(!data.index_all(old).await.unwrap().is_empty());
    assert_eq!(data.log_after(old, 0, 10).await.unwrap().len(), 2);
    let response = reqwest::Client::new()
        .delete(stack.url("/connect"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && !(data.index_all(old).await.unwrap().is_empty()
            && data.log_after(old, 0, 1).await.unwrap().is_empty())
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(data.index_all(old).await.unwrap().is_empty(), "the index is gone");
    assert!(
        data.log_after(old, 0, 10).await.unwrap().is_empty(),
        "the change log is gone"
    );
    let state = stack.drive_store().drive(&drive_key).await.unwrap().unwrap();
    assert_eq!(state.state, DriveStatus::Disconnected);
    assert_eq!(
        state.seq_high_water, 2,
        "sequences are never reused after a reconnect"
    );
}
