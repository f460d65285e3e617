//! The validation handshake (graph-protocol.md §2, §10 item 1).

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test]
async fn the_handshake_posts_a_form_encoded_token_and_accepts_the_decoded_echo() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let url = hook.url("/hook?tenant=contoso&x=a%20b");
    let (status, created) = graph
        .create(subscription_body(&running, "me/drive/root", &url, 60))
        .await;

    assert_eq!(status, 201, "{created}");
    assert_eq!(created["notificationUrl"], url);
    let seen = hook.validations();
    assert_eq!(seen.len(), 1);
    let handshake = &seen[0];
    assert!(
        handshake
            .raw_query
            .starts_with("tenant=contoso&x=a%20b&validationToken="),
        "{}",
        handshake.raw_query
    );
    assert!(
        handshake.raw_query.contains(
            "validationToken=Validation%3A+Testing+client+application+reachability+for+subscription+Request-Id%3A+"
        ),
        "{}",
        handshake.raw_query
    );
    assert!(
        handshake
            .token
            .starts_with("Validation: Testing client application reachability for subscription")
    );
    assert_eq!(handshake.content_type, "text/plain; charset=utf-8");
    assert_eq!(handshake.accept, "text/plain");
    assert_eq!(handshake.body_len, 0);
    assert_eq!(running.sim().counters().validation_handshakes, 1);
}

#[tokio::test]
async fn a_non_200_handshake_answer_fails_with_validation_error() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    hook.set_validation(Validation::Status(403));
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let (status, body) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 60))
        .await;

    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body),
        (
            "ValidationError".to_owned(),
            "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
                .to_owned()
        )
    );
    assert!(running.sim().subscriptions().is_empty());
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_like_a_non_200_answer() {
    let running = start_sim().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    // Bind and drop a listener to get a port with nobody behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();

    let (status, body) = graph
        .create(subscription_body(
            &running,
            "me/drive/root",
            &format!("http://127.0.0.1:{port}/"),
            60,
        ))
        .await;

    assert_eq!(
        (status.as_u16(), error_of(&body).0.as_str()),
        (400, "ValidationError")
    );
}

#[tokio::test]
async fn an_encoded_echo_fails_because_the_response_must_match_exactly() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    hook.set_validation(Validation::EchoEncoded);
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let (status, body) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 60))
        .await;

    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body),
        (
            "InvalidRequest".to_owned(),
            "Subscription validation request failed. Response must exactly match validationToken query parameter."
                .to_owned()
        )
    );
}

#[tokio::test]
async fn a_slow_handshake_times_out() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    hook.set_validation(Validation::Sleep(Duration::from_millis(1_500)));
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let (status, body) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 60))
        .await;

    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body),
        (
            "InvalidRequest".to_owned(),
            "Subscription validation request timed out.".to_owned()
        )
    );
    assert_eq!(running.sim().counters().validation_failures, 1);
}

#[tokio::test]
async fn the_lifecycle_url_gets_its_own_handshake_even_when_it_is_the_same_url() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let mut body = subscription_body(&running, "me/drive/root", &hook.url("/same"), 60);
    body["lifecycleNotificationUrl"] = json!(hook.url("/same"));
    let (status, created) = graph.create(body).await;

    assert_eq!(status, 201, "{created}");
    assert_eq!(created["lifecycleNotificationUrl"], hook.url("/same"));
    let seen = hook.validations();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].token, seen[1].token);
}

#[tokio::test]
async fn a_failing_lifecycle_handshake_fails_the_create() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let lifecycle = Receiver::start().await;
    lifecycle.set_validation(Validation::Status(500));
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let mut body = subscription_body(&running, "me/drive/root", &hook.url("/"), 60);
    body["lifecycleNotificationUrl"] = json!(lifecycle.url("/"));
    let (status, answer) = graph.create(body).await;

    assert_eq!(
        (status.as_u16(), error_of(&answer).0.as_str()),
        (400, "ValidationError")
    );
    assert_eq!(hook.validations().len(), 1);
    assert_eq!(lifecycle.validations().len(), 1);
    assert!(running.sim().subscriptions().is_empty());
}
