//! `GET /changes` end to end: the caller's change events, served by connect from the drive's change
//! log in moto, written by the real walker from graph-sim's notifications. What the route answers
//! must be exactly what a downstream consumer read from the changes queue.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use graphfeed_tests::{SignedInUser, StackOptions, TestStack};
use serde_json::Value;
use shared::changes::{Change, ChangeEvent};
use shared::store::ConnectionStore;
use shared::walk_store::{LogEntry, Scope, WalkStore, log_pk, log_sk};

async fn stack() -> TestStack {
    TestStack::start_with(StackOptions {
        run_process_changes: true,
        ..StackOptions::default()
    })
    .await
}

/// `GET /changes` with the user's token: the status and the JSON body.
async fn get_changes(stack: &TestStack, token: Option<&str>, query: &str) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(stack.url(&format!("/changes{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Reads every page from `after` on, `limit` at a time; returns the events and the number of calls.
async fn read_all(
    stack: &TestStack,
    user: &SignedInUser,
    mut after: u64,
    limit: usize,
) -> (Vec<Value>, u64, usize) {
    let mut events = Vec::new();
    let mut calls = 0;
    loop {
        let (status, page) =
            get_changes(stack, Some(&user.token), &format!("?after={after}&limit={limit}")).await;
        calls += 1;
        assert_eq!(status, 200, "{page}");
        let got = page["events"].as_array().unwrap();
        assert!(got.len() <= limit);
        events.extend(got.iter().cloned());
        after = page["next"].as_u64().unwrap();
        if !page["more"].as_bool().unwrap() {
            return (events, after, calls);
        }
    }
}

/// Polls `GET /changes` until `count` events are there (the walker runs in the background).
async fn wait_for_events(stack: &TestStack, user: &SignedInUser, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (events, _, _) = read_all(stack, user, 0, 100).await;
        if events.len() >= count || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn get_changes_pages_through_exactly_the_events_a_consumer_read_from_the_changes_queue() {
    let stack = stack().await;
    let user = stack.sign_in_new_user();
    stack.connect(&user).await;
    let mut queued = stack
        .read_changes(Duration::from_secs(30), |e| !e.is_empty())
        .await;
    assert_eq!(queued[0].change, Change::BaselineComplete);
    for name in ["a.txt", "b.txt", "c.txt", "d.txt"] {
        stack.new_file(&user, name);
    }
    // The four files, in one or more walks.
    queued.extend(
        stack
            .read_changes(Duration::from_secs(30), |e| e.len() >= 4)
            .await,
    );
    assert_eq!(queued.len(), 5, "{queued:?}");

    let (served, next, calls) = read_all(&stack, &user, 0, 2).await;
    assert_eq!(calls, 3, "5 events, 2 a page");
    assert_eq!(next, 5);
    let served_sequences: Vec<u64> = served.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert_eq!(served_sequences, [1, 2, 3, 4, 5]);
    for (served, queued) in served.iter().zip(&queued) {
        let served: ChangeEvent = serde_json::from_value(served.clone()).unwrap();
        assert_eq!(served, *queued, "the route serves what was sent");
    }

    // A cursor in the middle, and the cursor at the end.
    let (rest, _, _) = read_all(&stack, &user, 3, 100).await;
    assert_eq!(
        rest.iter()
            .map(|e| e["sequence"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [4, 5]
    );
    let (status, page) = get_changes(&stack, Some(&user.token), "?after=5").await;
    assert_eq!(status, 200);
    assert_eq!(page, serde_json::json!({"events": [], "next": 5, "more": false}));
}

#[tokio::test]
async fn get_changes_never_serves_a_logged_event_above_the_committed_high_water_mark() {
    let stack = stack().await;
    let user = stack.sign_in_new_user();
    let drive_key = stack.connect(&user).await;
    assert_eq!(wait_for_events(&stack, &user, 1).await.len(), 1);
    let state = stack.drive_store().drive(&drive_key).await.unwrap().unwrap();
    assert_eq!(state.seq_high_water, 1);
    // A walk that logged sequence 2 but has not committed it (it could still be replayed).
    stack
        .walk_store()
        .log_append(
            Scope {
                drive_key: &drive_key,
                generation: state.generation,
            },
            &[LogEntry {
                sequence: 2,
                walk_id: "w-uncommitted".into(),
                event: r#"{"v":1,"sequence":2,"change":"created"}"#.into(),
            }],
        )
        .await
        .unwrap();
    let (status, page) = get_changes(&stack, Some(&user.token), "?after=0").await;
    assert_eq!(status, 200);
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["next"], 1);
    assert_eq!(page["more"], false);
    let (_, page) = get_changes(&stack, Some(&user.token), "?after=1").await;
    assert_eq!(page["events"], serde_json::json!([]));
    assert_eq!(page["next"], 1, "the cursor waits at the committed mark");
}

#[tokio::test]
async fn a_cursor_below_entries_the_log_no_longer_holds_moves_past_them_instead_of_standing_still() {
    let stack = stack().await;
    let user = stack.sign_in_new_user();
    let drive_key = stack.connect(&user).await;
    assert_eq!(wait_for_events(&stack, &user, 1).await.len(), 1);
    stack.new_file(&user, "gone.txt");
    assert_eq!(wait_for_events(&stack, &user, 2).await.len(), 2);
    let state = stack.drive_store().drive(&drive_key).await.unwrap().unwrap();
    assert_eq!(state.seq_high_water, 2);
    // The log's retention (TTL) removed both entries; moto never expires items, so delete them.
    let scope = Scope {
        drive_key: &drive_key,
        generation: state.generation,
    };
    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.aws);
    for sequence in [1, 2] {
        dynamodb
            .delete_item()
            .table_name(stack.running.process_env.get("TABLE_NAME").unwrap())
            .key("pk", AttributeValue::S(log_pk(scope)))
            .key("sk", AttributeValue::S(log_sk(sequence)))
            .send()
            .await
            .unwrap();
    }
    let (status, page) = get_changes(&stack, Some(&user.token), "?after=0").await;
    assert_eq!(status, 200);
    assert_eq!(
        page,
        serde_json::json!({"events": [], "next": 2, "more": false}),
        "the gap shows in the sequence; the cursor moves to the committed mark"
    );
}

#[tokio::test]
async fn get_changes_refuses_bad_cursors_strangers_and_unconnected_or_disconnected_users_clearly() {
    let stack = stack().await;
    let user = stack.sign_in_new_user();

    let (status, body) = get_changes(&stack, None, "").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_token");

    let (status, body) = get_changes(&stack, Some(&user.token), "").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_connected");

    stack.connect(&user).await;
    for query in ["?after=-1", "?after=x", "?limit=0", "?limit=501", "?limit=ten"] {
        let (status, body) = get_changes(&stack, Some(&user.token), query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{query}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(if query.contains("after") { "after" } else { "limit" })
        );
    }
    let (status, _) = get_changes(&stack, Some(&user.token), "?limit=500").await;
    assert_eq!(status, 200);

    let response = reqwest::Client::new()
        .delete(stack.url("/connect"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, body) = get_changes(&stack, Some(&user.token), "").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_connected");
}
