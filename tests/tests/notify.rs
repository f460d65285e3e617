//! notify's numbered behaviours, over HTTP through the local stack, against moto, with every
//! enqueued message read back from SQS.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashSet;
use std::time::Duration;

use graphfeed_tests::{FaultyProxy, StackOptions, TestStack, dev_ring, moto_endpoint};
use shared::envelope::Kind;
use shared::ids::{DriveKey, TenantId};

const T1: &str = "7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c";
const T2: &str = "0c9b8a7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d";

fn change(tenant: &str, drive: DriveKey, subscription: &str) -> serde_json::Value {
    let cs = dev_ring().mint(&TenantId::parse(tenant).unwrap(), &drive);
    serde_json::json!({
        "subscriptionId": subscription, "clientState": cs.expose(), "resource": "me/drive/root/",
        "tenantId": tenant, "resourceData": null, "changeType": "updated",
        "subscriptionExpirationDateTime": "2026-12-20T08:00:00-08:00"
    })
}

fn collection(items: Vec<serde_json::Value>) -> String {
    serde_json::json!({ "value": items }).to_string()
}

async fn post(stack: &TestStack, path: &str, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(stack.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_validation_token_is_echoed_decoded_as_plain_text_on_both_routes() {
    let stack = TestStack::start().await;
    for path in ["/notifications", "/lifecycle"] {
        let url = stack.url(&format!("{path}?validationToken=Validation%3a+Testing+client+application+reachability+for+subscription+Request-Id%3a+abc"));
        let r = reqwest::Client::new()
            .post(url)
            .header("content-type", "text/plain; charset=utf-8")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(
            r.text().await.unwrap(),
            "Validation: Testing client application reachability for subscription Request-Id: abc"
        );
    }
    assert!(stack.drain().await.is_empty());
}

#[tokio::test]
async fn genuine_notifications_land_in_sqs_one_message_per_drive_stamped_and_grouped_by_drive() {
    let stack = TestStack::start().await;
    let (a, b) = (DriveKey::random(), DriveKey::random());
    let before = chrono::Utc::now();
    let body = collection(vec![
        change(T1, a, "sub-a"),
        change(T1, a, "sub-a"),
        change(T2, b, "sub-b"),
    ]);
    assert_eq!(post(&stack, "/notifications", body).await.status(), 202);

    let got = stack.drain().await;
    assert_eq!(got.len(), 2);
    for r in &got {
        assert_eq!(
            r.group_id,
            r.envelope.drive_key.to_string(),
            "the drive key is the message group"
        );
        assert!(r.envelope.received_at >= before && r.envelope.received_at <= chrono::Utc::now());
    }
    let for_a = got.iter().find(|r| r.envelope.drive_key == a).unwrap();
    assert_eq!(
        (for_a.envelope.kind, for_a.envelope.notifications),
        (Kind::Notification, 2)
    );
    assert_eq!(for_a.envelope.tenant_id.as_str(), T1);
}

#[tokio::test]
async fn two_byte_identical_notifications_for_two_changes_are_both_enqueued() {
    let stack = TestStack::start().await;
    let body = collection(vec![change(T1, DriveKey::random(), "sub-a")]);
    assert_eq!(post(&stack, "/notifications", body.clone()).await.status(), 202);
    assert_eq!(post(&stack, "/notifications", body).await.status(), 202);
    let got = stack.drain().await;
    assert_eq!(got.len(), 2, "FIFO deduplication must not drop the second change");
    let ids: HashSet<_> = got.iter().map(|r| r.dedup_id.clone()).collect();
    assert_eq!(ids.len(), 2);
}

#[tokio::test]
async fn notifications_with_a_wrong_client_state_are_dropped_and_never_enqueued() {
    let stack = TestStack::start().await;
    let drive = DriveKey::random();
    let mut replayed = change(T1, drive, "s");
    replayed["tenantId"] = T2.into();
    let mut shared_secret = change(T1, drive, "s");
    shared_secret["clientState"] = "secretClientValue".into();
    let body = collection(vec![replayed, shared_secret]);
    assert_eq!(post(&stack, "/notifications", body).await.status(), 202);
    assert!(stack.drain().await.is_empty());
}

#[tokio::test]
async fn lifecycle_notifications_are_enqueued_as_their_own_kind() {
    let stack = TestStack::start().await;
    let drive = DriveKey::random();
    let cs = dev_ring().mint(&TenantId::parse(T1).unwrap(), &drive);
    let body = collection(vec![serde_json::json!({
        "subscriptionId": "s-1", "subscriptionExpirationDateTime": "2026-12-20T16:00:00.0000000Z",
        "tenantId": T1, "clientState": cs.expose(), "lifecycleEvent": "reauthorizationRequired"
    })]);
    assert_eq!(post(&stack, "/lifecycle", body).await.status(), 202);
    let got = stack.drain().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.kind, Kind::Lifecycle);
    assert_eq!(
        got[0].group_id,
        drive.to_string(),
        "lifecycle shares the drive's message group"
    );
}

#[tokio::test]
async fn real_payload_quirks_are_accepted() {
    let stack = TestStack::start().await;
    let (a, b) = (DriveKey::random(), DriveKey::random());
    let mut legacy = change(T2, b, "sub-b");
    let expiry = legacy
        .as_object_mut()
        .unwrap()
        .remove("subscriptionExpirationDateTime")
        .unwrap();
    legacy["expirationDateTime"] = expiry;
    legacy["unknownFutureField"] = serde_json::json!({"nested": [1, 2]});
    let mut no_slash = change(T1, a, "sub-a");
    no_slash["resource"] = "drives/b!abc/root".into();
    let body = collection(vec![no_slash, legacy]);
    assert_eq!(post(&stack, "/notifications", body).await.status(), 202);
    let got = stack.drain().await;
    assert_eq!(got.len(), 2);
    let b_msg = got.iter().find(|r| r.envelope.drive_key == b).unwrap();
    assert_eq!(
        b_msg.envelope.subscriptions[0].expires_at.unwrap().to_rfc3339(),
        "2026-12-20T16:00:00+00:00"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_enqueues_nothing() {
    let stack = TestStack::start().await;
    let r = post(&stack, "/notifications", "{\"value\": [".into()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformedPayload");

    let big = format!("{{\"value\":[],\"pad\":\"{}\"}}", "x".repeat(1024 * 1024));
    assert_eq!(post(&stack, "/notifications", big).await.status(), 413);

    assert_eq!(
        post(&stack, "/notifications", r#"{"value":[]}"#.into())
            .await
            .status(),
        202
    );
    assert!(stack.drain().await.is_empty());
}

#[tokio::test]
async fn when_sqs_fails_notify_answers_5xx_and_a_redelivery_is_enqueued_once_sqs_is_back() {
    let proxy = FaultyProxy::start(moto_endpoint()).await;
    let stack = TestStack::start_with(StackOptions {
        endpoint: proxy.endpoint.clone(),
        ..Default::default()
    })
    .await;
    let drive = DriveKey::random();
    let body = collection(vec![change(T1, drive, "s")]);

    proxy.fail(true);
    let r = post(&stack, "/notifications", body.clone()).await;
    assert_eq!(r.status(), 503);
    proxy.fail(false);
    assert!(
        stack.drain().await.is_empty(),
        "nothing was acknowledged, and nothing half-sent"
    );

    // Graph redelivers the same POST.
    assert_eq!(post(&stack, "/notifications", body).await.status(), 202);
    let got = stack.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.drive_key, drive);
}

#[tokio::test]
async fn a_key_rotated_into_secrets_manager_is_picked_up_by_a_running_notify_within_a_minute() {
    let (k1, k2) = ("1".repeat(64), "2".repeat(64));
    let stack = TestStack::start_with(StackOptions {
        key_secret: format!(r#"{{"active":"k1","k1":"{k1}"}}"#),
        ..Default::default()
    })
    .await;
    let rotated = format!(r#"{{"active":"k2","retired":["k1"],"k1":"{k1}","k2":"{k2}"}}"#);
    let arn = stack
        .running
        .stack
        .reference("ClientStateKeysSecret")
        .unwrap()
        .to_owned();
    aws_sdk_secretsmanager::Client::new(&stack.aws)
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(&rotated)
        .send()
        .await
        .unwrap();
    let ring = shared::client_state::KeyRing::from_secret_json(&rotated).unwrap();
    let drive = DriveKey::random();
    let under = |ring: &shared::client_state::KeyRing| {
        let cs = ring.mint(&TenantId::parse(T1).unwrap(), &drive);
        let mut n = change(T1, drive, "s");
        n["clientState"] = cs.expose().into();
        collection(vec![n])
    };

    // Right after start the key secret was just read: no refetch yet, so k2 is unknown and
    // notify asks Graph to redeliver rather than dropping a possibly genuine notification.
    assert_eq!(post(&stack, "/notifications", under(&ring)).await.status(), 503);
    assert!(stack.drain().await.is_empty());

    // A minute later an unknown key id triggers one refetch, and the notification is genuine.
    stack.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(post(&stack, "/notifications", under(&ring)).await.status(), 202);
    let got = stack.drain().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.drive_key, drive);

    // The retired key still verifies: its subscriptions keep working until renew replaces them.
    let old = shared::client_state::KeyRing::from_secret_json(&format!(r#"{{"active":"k1","k1":"{k1}"}}"#))
        .unwrap();
    assert_eq!(post(&stack, "/notifications", under(&old)).await.status(), 202);
    assert_eq!(stack.drain().await.len(), 1);
}

#[tokio::test]
async fn a_post_for_25_drives_becomes_25_messages_over_several_batch_calls() {
    let stack = TestStack::start().await;
    let drives: Vec<DriveKey> = (0..25).map(|_| DriveKey::random()).collect();
    let body = collection(drives.iter().map(|d| change(T1, *d, "s")).collect());
    assert_eq!(post(&stack, "/notifications", body).await.status(), 202);
    let got = stack.wait_for_messages(25, Duration::from_secs(10)).await;
    let groups: HashSet<_> = got.iter().map(|r| r.group_id.clone()).collect();
    assert_eq!(got.len(), 25);
    assert_eq!(
        groups,
        drives.iter().map(|d| d.to_string()).collect::<HashSet<_>>()
    );
}
