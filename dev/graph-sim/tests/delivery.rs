//! Change and lifecycle notifications: shape, batching, retries, duplicates and endpoint health
//! (graph-protocol.md §3, §4, §10 items 5-9).

mod support;

use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use graph_sim::{CreatedUser, NewItem, Outcome, RunningSim, Timing};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

async fn subscribe(running: &RunningSim, user: &CreatedUser, resource: &str, url: &str) -> Value {
    let (status, created) = Graph::new(running, &user.access_token)
        .create(subscription_body(running, resource, url, 600))
        .await;
    assert_eq!(status, 201, "{created}");
    created
}

fn touch(running: &RunningSim, user: &CreatedUser, name: &str) -> graph_sim::Item {
    running
        .sim()
        .create_item(
            &user.drive_id,
            &NewItem {
                name: name.to_owned(),
                size: 1,
                ..NewItem::default()
            },
        )
        .expect("item")
}

async fn wait_for_attempts(running: &RunningSim, count: usize) -> Vec<graph_sim::DeliveryAttempt> {
    let sim = running.sim();
    eventually(&format!("{count} delivery attempts"), || {
        sim.deliveries().len() >= count
    })
    .await;
    sim.deliveries()
}

#[tokio::test]
async fn a_drive_change_is_delivered_in_the_real_onedrive_shape() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let created = subscribe(
        &running,
        &user,
        &format!("drives/{}/root", user.drive_id),
        &hook.url("/hook"),
    )
    .await;

    touch(&running, &user, "report.docx");

    let notifications = hook.wait_for_notifications(1).await;
    let posts = hook.posts();
    assert_eq!(posts.len(), 1);
    assert!(posts[0].get("validationTokens").is_none());
    let notification = &notifications[0];
    let mut keys: Vec<&str> = notification
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "changeType",
            "clientState",
            "resource",
            "resourceData",
            "subscriptionExpirationDateTime",
            "subscriptionId",
            "tenantId"
        ]
    );
    assert_eq!(notification["subscriptionId"], created["id"]);
    assert_eq!(notification["clientState"], "client-state-secret");
    assert_eq!(
        notification["resource"],
        format!("drives/{}/root/", user.drive_id)
    );
    assert_eq!(notification["tenantId"], user.tenant_id);
    assert_eq!(notification["resourceData"], Value::Null);
    assert_eq!(notification["changeType"], "updated");
    let expiry = notification["subscriptionExpirationDateTime"]
        .as_str()
        .expect("expiry");
    assert!(expiry.ends_with("-08:00"), "{expiry}");
    let parsed = DateTime::<FixedOffset>::parse_from_rfc3339(expiry).expect("RFC 3339");
    let expected: DateTime<FixedOffset> =
        DateTime::parse_from_rfc3339(created["expirationDateTime"].as_str().expect("exp")).expect("exp");
    assert_eq!(parsed, expected);
}

#[tokio::test]
async fn notifications_for_several_subscriptions_and_tenants_share_one_post() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let alice = new_user(&running);
    let bob = new_user(&running);
    let url = hook.url("/shared");
    subscribe(&running, &alice, "me/drive/root", &url).await;
    subscribe(&running, &bob, "me/drive/root", &url).await;

    touch(&running, &alice, "a");
    touch(&running, &bob, "b");
    touch(&running, &alice, "c");

    let notifications = hook.wait_for_notifications(3).await;
    assert_eq!(hook.posts().len(), 1, "{:?}", hook.posts());
    let tenants: std::collections::BTreeSet<&str> = notifications
        .iter()
        .filter_map(|n| n["tenantId"].as_str())
        .collect();
    assert_eq!(tenants.len(), 2);
    let attempts = running.sim().deliveries();
    assert_eq!(
        (attempts[0].notification_count, attempts[0].subscription_ids.len()),
        (3, 3)
    );
}

#[tokio::test]
async fn a_folder_subscription_hears_only_about_its_subtree() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let sim = running.sim();
    let inside = sim
        .create_item(
            &user.drive_id,
            &NewItem {
                name: "inside".into(),
                folder: true,
                ..NewItem::default()
            },
        )
        .expect("folder");
    let outside = sim
        .create_item(
            &user.drive_id,
            &NewItem {
                name: "outside".into(),
                folder: true,
                ..NewItem::default()
            },
        )
        .expect("folder");
    subscribe(&running, &user, "me/drive/root", &hook.url("/root")).await;
    subscribe(
        &running,
        &user,
        &format!("me/drive/items/{}", inside.id),
        &hook.url("/folder"),
    )
    .await;

    let file = sim
        .create_item(
            &user.drive_id,
            &NewItem {
                parent_id: Some(outside.id.clone()),
                name: "x".into(),
                ..NewItem::default()
            },
        )
        .expect("file");
    hook.wait_for_notifications(1).await;
    sim.update_item(
        &user.drive_id,
        &file.id,
        &graph_sim::ItemUpdate {
            parent_id: Some(inside.id.clone()),
            name: None,
        },
    )
    .expect("move");

    let notifications = hook.wait_for_notifications(3).await;
    let folder_resource = format!("me/drive/items/{}/", inside.id);
    assert_eq!(
        notifications
            .iter()
            .filter(|n| n["resource"] == folder_resource)
            .count(),
        1
    );
    assert_eq!(
        notifications
            .iter()
            .filter(|n| n["resource"] == "me/drive/root/")
            .count(),
        2
    );
}

#[tokio::test]
async fn a_500_endpoint_is_retried_with_backoff_in_sim_time_and_then_delivered() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    hook.script(&[Reply::status(500), Reply::status(503)]);
    let user = new_user(&running);
    subscribe(&running, &user, "me/drive/root", &hook.url("/")).await;
    let sim = running.sim();

    touch(&running, &user, "a");
    let attempts = wait_for_attempts(&running, 1).await;
    assert_eq!(
        (attempts[0].outcome, attempts[0].status),
        (Outcome::Rejected, Some(500))
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sim.deliveries().len(),
        1,
        "no retry before the sim clock reaches the backoff"
    );

    sim.advance(chrono::Duration::seconds(61));
    let attempts = wait_for_attempts(&running, 2).await;
    assert_eq!((attempts[1].attempt, attempts[1].status), (2, Some(503)));

    sim.advance(chrono::Duration::seconds(61));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.deliveries().len(), 2, "the second backoff is two minutes");
    sim.advance(chrono::Duration::seconds(61));
    let attempts = wait_for_attempts(&running, 3).await;

    assert_eq!(
        (attempts[2].attempt, attempts[2].outcome),
        (3, Outcome::Delivered)
    );
    assert_eq!(hook.notifications().len(), 3);
    let counters = sim.counters();
    assert_eq!(
        (counters.notifications_delivered, counters.notifications_retried),
        (1, 2)
    );
    assert_eq!(counters.notifications_duplicated, 0);
    assert_eq!(sim.outstanding_notifications(), 0);
}

#[tokio::test]
async fn a_late_ack_is_a_failure_so_the_retry_is_a_duplicate() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    hook.script(&[Reply::slow(Duration::from_millis(600))]);
    let user = new_user(&running);
    subscribe(&running, &user, "me/drive/root", &hook.url("/")).await;
    let sim = running.sim();

    touch(&running, &user, "a");
    let attempts = wait_for_attempts(&running, 1).await;
    assert_eq!(attempts[0].outcome, Outcome::TimedOut);
    eventually("the late answer is logged", || {
        sim.deliveries()[0].late_status == Some(202)
    })
    .await;

    sim.advance(chrono::Duration::minutes(1));
    let attempts = wait_for_attempts(&running, 2).await;

    assert_eq!(attempts[1].outcome, Outcome::Delivered);
    let received = hook.notifications();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0], received[1]);
    let counters = sim.counters();
    assert_eq!((counters.notifications_duplicated, counters.late_answers), (1, 1));
}

#[tokio::test]
async fn advancing_four_hours_flushes_the_retries_and_drops_what_still_fails() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    hook.set_reply(Reply::status(500));
    let user = new_user(&running);
    subscribe(&running, &user, "me/drive/root", &hook.url("/")).await;
    let sim = running.sim();

    touch(&running, &user, "a");
    wait_for_attempts(&running, 1).await;
    sim.advance(chrono::Duration::hours(4));

    eventually("the notification is dropped", || {
        sim.counters().notifications_dropped_after_retries == 1
    })
    .await;
    assert_eq!(sim.deliveries().len(), 2);
    assert_eq!(sim.outstanding_notifications(), 0);
}

#[tokio::test]
async fn a_deleted_or_expired_subscription_gets_no_more_notifications() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let deleted = subscribe(&running, &user, "me/drive/root", &hook.url("/deleted")).await;
    let (status, _) = graph
        .call(
            Method::DELETE,
            &format!("/subscriptions/{}", deleted["id"].as_str().expect("id")),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, short) = graph
        .create(subscription_body(
            &running,
            "me/drive/root",
            &hook.url("/short"),
            45,
        ))
        .await;
    assert_eq!(short["notificationUrl"], hook.url("/short"));

    running.sim().advance(chrono::Duration::minutes(46));
    touch(&running, &user, "a");
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(hook.posts().is_empty());
    assert_eq!(running.sim().counters().notifications_enqueued, 0);
}

#[tokio::test]
async fn slow_answers_put_the_endpoint_in_the_slow_state_and_new_notifications_wait_ten_minutes() {
    let running = start_sim_with(|config| config.timing.health_min_samples = 3).await;
    let hook = Receiver::start().await;
    hook.set_reply(Reply::slow(Duration::from_millis(400)));
    let user = new_user(&running);
    subscribe(&running, &user, "me/drive/root", &hook.url("/")).await;
    let sim = running.sim();

    for round in 1..=3 {
        touch(&running, &user, &format!("slow-{round}"));
        wait_for_attempts(&running, round).await;
    }
    let endpoint = sim.endpoints().remove(0);
    assert_eq!(
        (endpoint.state, endpoint.samples, endpoint.slow_samples),
        ("slow", 3, 3)
    );

    hook.set_reply(Reply::ACCEPTED);
    let before = hook.posts().len();
    touch(&running, &user, "held");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.posts().len(), before, "held while the endpoint is slow");

    sim.advance(chrono::Duration::minutes(10));
    eventually("everything is delivered", || {
        sim.counters().notifications_delivered == 4
    })
    .await;
}

#[tokio::test]
async fn retries_that_time_out_put_the_endpoint_in_drop_and_new_notifications_are_lost() {
    let running = start_sim_with(|config| config.timing.health_min_samples = 2).await;
    let hook = Receiver::start().await;
    hook.set_reply(Reply::slow(Duration::from_millis(1_300)));
    let user = new_user(&running);
    subscribe(&running, &user, "me/drive/root", &hook.url("/")).await;
    let sim = running.sim();

    touch(&running, &user, "a");
    wait_for_attempts(&running, 1).await;
    sim.advance(chrono::Duration::minutes(1));
    let attempts = wait_for_attempts(&running, 2).await;
    assert_eq!((attempts[1].attempt, attempts[1].outcome), (2, Outcome::TimedOut));
    assert_eq!(sim.endpoints()[0].state, "drop");

    touch(&running, &user, "lost");
    assert_eq!(sim.counters().notifications_dropped_throttled, 1);

    hook.set_reply(Reply::ACCEPTED);
    sim.advance(chrono::Duration::minutes(11));
    eventually("the endpoint is probed again", || {
        sim.counters().notifications_delivered == 1
    })
    .await;
    assert_eq!(sim.endpoints()[0].state, "normal");
}

#[tokio::test]
async fn a_lifecycle_event_is_sent_to_the_lifecycle_url_without_a_resource() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let lifecycle = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let mut body = subscription_body(&running, "me/drive/root", &hook.url("/"), 600);
    body["lifecycleNotificationUrl"] = json!(lifecycle.url("/lifecycle"));
    let (_, created) = graph.create(body).await;
    let id = created["id"].as_str().expect("id").to_owned();

    let control = reqwest::Client::builder().no_proxy().build().expect("client");
    let answer = control
        .post(format!("{}/subscriptions/{id}/lifecycle", running.control_url()))
        .json(&json!({"event": "reauthorizationRequired"}))
        .send()
        .await
        .expect("control");
    assert_eq!(answer.status(), 202);

    let received = lifecycle.wait_for_notifications(1).await;
    assert_eq!(
        received[0],
        json!({
            "subscriptionId": id,
            "subscriptionExpirationDateTime": created["expirationDateTime"],
            "tenantId": user.tenant_id,
            "clientState": "client-state-secret",
            "lifecycleEvent": "reauthorizationRequired",
        })
    );
    assert!(hook.posts().is_empty());
    assert!(
        running
            .sim()
            .subscription(&id)
            .expect("alive")
            .needs_reauthorization
    );
    assert_eq!(
        graph
            .call(Method::POST, &format!("/subscriptions/{id}/reauthorize"), None)
            .await
            .0,
        204
    );
    assert!(
        !running
            .sim()
            .subscription(&id)
            .expect("alive")
            .needs_reauthorization
    );
}

#[tokio::test]
async fn the_real_three_second_deadline_delivers_at_two_and_a_half_and_times_out_at_three_and_a_half() {
    let running = start_sim_with(|config| config.timing = Timing::default()).await;
    let quick = Receiver::start().await;
    quick.set_reply(Reply::slow(Duration::from_millis(2_500)));
    let late = Receiver::start().await;
    late.set_reply(Reply::slow(Duration::from_millis(3_500)));
    let user = new_user(&running);
    let folder = running
        .sim()
        .create_item(
            &user.drive_id,
            &NewItem {
                name: "f".into(),
                folder: true,
                ..NewItem::default()
            },
        )
        .expect("folder");
    subscribe(
        &running,
        &user,
        &format!("drives/{}/root", user.drive_id),
        &quick.url("/"),
    )
    .await;
    subscribe(
        &running,
        &user,
        &format!("me/drive/items/{}", folder.id),
        &late.url("/"),
    )
    .await;

    running
        .sim()
        .create_item(
            &user.drive_id,
            &NewItem {
                parent_id: Some(folder.id),
                name: "a".into(),
                ..NewItem::default()
            },
        )
        .expect("file");
    let attempts = wait_for_attempts(&running, 2).await;

    let by_url = |url: &str| attempts.iter().find(|a| a.url == url).expect("attempt").clone();
    let delivered = by_url(&quick.url("/"));
    assert_eq!(delivered.outcome, Outcome::Delivered);
    assert!(
        (2_400..3_000).contains(&delivered.latency_ms),
        "{}",
        delivered.latency_ms
    );
    let timed_out = by_url(&late.url("/"));
    assert_eq!(timed_out.outcome, Outcome::TimedOut);
    assert!(
        (2_900..3_400).contains(&timed_out.latency_ms),
        "{}",
        timed_out.latency_ms
    );
}
