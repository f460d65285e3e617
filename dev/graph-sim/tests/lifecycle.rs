//! Lifecycle notifications (graph-protocol.md §4, §10 item 9): the automatic
//! `reauthorizationRequired` schedule and what clears it, `subscriptionRemoved`, `missed`, and the
//! subscription quota (§1.5) changed at run time.

mod support;

use chrono::Duration;
use graph_sim::errors::MSG_QUOTA;
use graph_sim::{LifecycleEvent, RunningSim};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

/// A subscription on the user's root expiring in `minutes`, with a lifecycle URL on `lifecycle`.
async fn subscribe(
    running: &RunningSim,
    token: &str,
    hook: &Receiver,
    lifecycle: &Receiver,
    minutes: i64,
) -> String {
    let mut body = subscription_body(running, "me/drive/root", &hook.url("/"), minutes);
    body["lifecycleNotificationUrl"] = json!(lifecycle.url("/lifecycle"));
    let (status, created) = Graph::new(running, token).create(body).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().expect("id").to_owned()
}

fn events(receiver: &Receiver) -> Vec<String> {
    receiver
        .notifications()
        .iter()
        .map(|n| n["lifecycleEvent"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A Graph client with a token valid now (tokens last one sim hour).
fn graph_now(running: &RunningSim, user: &graph_sim::CreatedUser) -> Graph {
    let token = running.sim().issue_token(&user.user_id, None).expect("token");
    Graph::new(running, &token.access_token)
}

/// Advances the clock and gives the delivery task time to send what became due.
async fn advance_minutes(running: &RunningSim, minutes: i64) {
    running.sim().advance(Duration::minutes(minutes));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
}

#[tokio::test]
async fn reauthorization_required_comes_three_hours_before_expiry_then_when_half_the_time_is_left() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let lifecycle = Receiver::start().await;
    let user = new_user(&running);
    let id = subscribe(&running, &user.access_token, &hook, &lifecycle, 600).await;

    advance_minutes(&running, 419).await;
    assert!(
        lifecycle.notifications().is_empty(),
        "181 minutes left: nothing yet"
    );
    advance_minutes(&running, 1).await;
    let first = lifecycle.wait_for_notifications(1).await;
    assert_eq!(first[0]["lifecycleEvent"], "reauthorizationRequired");
    assert_eq!(first[0]["subscriptionId"], id.as_str());
    assert!(first[0].get("resource").is_none());
    assert!(
        running
            .sim()
            .subscription(&id)
            .expect("alive")
            .needs_reauthorization
    );

    // /reauthorize clears the mark; the schedule goes on (90 minutes left).
    let (status, _) = graph_now(&running, &user)
        .call(Method::POST, &format!("/subscriptions/{id}/reauthorize"), None)
        .await;
    assert_eq!(status, 204);
    assert!(
        !running
            .sim()
            .subscription(&id)
            .expect("alive")
            .needs_reauthorization
    );
    advance_minutes(&running, 85).await;
    assert_eq!(events(&lifecycle).len(), 1, "95 minutes left");
    advance_minutes(&running, 6).await;
    lifecycle.wait_for_notifications(2).await;
    advance_minutes(&running, 46).await;
    lifecycle.wait_for_notifications(3).await;
    assert!(
        hook.posts().is_empty(),
        "lifecycle events go to the lifecycle URL only"
    );

    // A renewal clears the mark and starts the schedule again from the new expiry.
    let renewed = (running.sim().now() + Duration::minutes(600)).to_rfc3339();
    let (status, _) = graph_now(&running, &user)
        .call(
            Method::PATCH,
            &format!("/subscriptions/{id}"),
            Some(json!({"expirationDateTime": renewed})),
        )
        .await;
    assert_eq!(status, 200);
    advance_minutes(&running, 400).await;
    assert_eq!(events(&lifecycle).len(), 3, "200 minutes left after the renewal");
    assert!(
        !running
            .sim()
            .subscription(&id)
            .expect("alive")
            .needs_reauthorization
    );
    advance_minutes(&running, 21).await;
    lifecycle.wait_for_notifications(4).await;
    assert_eq!(running.sim().counters().auto_reauthorizations, 4);
    assert!(
        events(&lifecycle)
            .iter()
            .all(|event| event == "reauthorizationRequired")
    );
}

#[tokio::test]
async fn a_short_subscription_is_reminded_at_once_and_then_every_fifteen_minutes_until_it_expires() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let lifecycle = Receiver::start().await;
    let user = new_user(&running);
    subscribe(&running, &user.access_token, &hook, &lifecycle, 45).await;

    lifecycle.wait_for_notifications(1).await;
    for (minutes, expected) in [(14, 1), (1, 2), (15, 3), (15, 3)] {
        advance_minutes(&running, minutes).await;
        lifecycle.wait_for_notifications(expected).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(events(&lifecycle).len(), expected, "after {minutes} more minutes");
    }
    assert!(running.sim().subscriptions().is_empty(), "expired");
}

#[tokio::test]
async fn automatic_reauthorization_can_be_turned_off_over_http() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let lifecycle = Receiver::start().await;
    let user = new_user(&running);
    let settings = control_call(
        &running,
        Method::PATCH,
        "/settings",
        Some(json!({"auto_reauthorization": false})),
    )
    .await;
    assert_eq!(settings.status, 200, "{}", settings.body);
    assert_eq!(settings.body["auto_reauthorization"], false);

    subscribe(&running, &user.access_token, &hook, &lifecycle, 60).await;
    advance_minutes(&running, 30).await;

    assert!(lifecycle.notifications().is_empty());
    assert_eq!(running.sim().counters().auto_reauthorizations, 0);
}

#[tokio::test]
async fn removing_a_subscription_sends_subscription_removed_and_later_calls_are_404() {
    let running = start_sim_with(|config| config.timing.reauthorization_start = None).await;
    let hook = Receiver::start().await;
    let lifecycle = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let id = subscribe(&running, &user.access_token, &hook, &lifecycle, 600).await;

    let removed = control_call(&running, Method::DELETE, &format!("/subscriptions/{id}"), None).await;

    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(removed.body, json!({"removed": id, "notified": true}));
    let received = lifecycle.wait_for_notifications(1).await;
    assert_eq!(received[0]["lifecycleEvent"], "subscriptionRemoved");
    assert_eq!(received[0]["subscriptionId"], id.as_str());
    let (status, body) = graph
        .call(Method::GET, &format!("/subscriptions/{id}"), None)
        .await;
    assert_eq!(
        (status.as_u16(), error_of(&body).0.as_str()),
        (404, "ResourceNotFound")
    );

    let (_, plain) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 600))
        .await;
    let plain_id = plain["id"].as_str().expect("id");
    assert_eq!(
        running.sim().remove_subscription(plain_id),
        Ok(false),
        "no lifecycle URL"
    );
    assert!(running.sim().remove_subscription(plain_id).is_err());
    assert_eq!(
        control_call(&running, Method::DELETE, "/subscriptions/nope", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn missed_is_sent_on_demand_and_leaves_the_subscription_alive() {
    let running = start_sim_with(|config| config.timing.reauthorization_start = None).await;
    let hook = Receiver::start().await;
    let lifecycle = Receiver::start().await;
    let user = new_user(&running);
    let id = subscribe(&running, &user.access_token, &hook, &lifecycle, 600).await;

    running
        .sim()
        .send_lifecycle(&id, LifecycleEvent::Missed)
        .expect("missed");

    let received: Vec<Value> = lifecycle.wait_for_notifications(1).await;
    assert_eq!(received[0]["lifecycleEvent"], "missed");
    assert!(running.sim().subscription(&id).is_some());
}

#[tokio::test]
async fn the_subscription_quota_can_be_set_and_lifted_at_run_time() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let other_app = running
        .sim()
        .issue_token(&user.user_id, Some("11111111-2222-3333-4444-555555555555"))
        .expect("token");
    let set = control_call(
        &running,
        Method::PATCH,
        "/settings",
        Some(json!({"max_subscriptions_per_drive": 1})),
    )
    .await;
    assert_eq!(set.body["max_subscriptions_per_drive"], 1);
    let body = || subscription_body(&running, "me/drive/root", &hook.url("/"), 600);
    assert_eq!(
        Graph::new(&running, &user.access_token).create(body()).await.0,
        201
    );

    let (status, refused) = Graph::new(&running, &other_app.access_token).create(body()).await;

    assert_eq!(status, 403);
    assert_eq!(
        error_of(&refused),
        ("ExtensionError".to_owned(), MSG_QUOTA.to_owned())
    );
    assert!(refused["error"]["innerError"]["request-id"].is_string());
    let lifted = control_call(
        &running,
        Method::PATCH,
        "/settings",
        Some(json!({"max_subscriptions_per_drive": null})),
    )
    .await;
    assert_eq!(lifted.body["max_subscriptions_per_drive"], Value::Null);
    assert_eq!(
        Graph::new(&running, &other_app.access_token)
            .create(body())
            .await
            .0,
        201
    );
}
