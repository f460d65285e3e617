//! Subscription CRUD with Graph's rules (graph-protocol.md §1, §10 items 2-4).

mod support;

use chrono::{DateTime, Duration, Utc};
use graph_sim::NewUser;
use reqwest::Method;
use serde_json::json;
use support::*;

#[tokio::test]
async fn a_subscription_is_created_with_graphs_fields_and_read_back() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let (status, created) = graph
        .create(subscription_body(
            &running,
            "me/drive/root",
            &hook.url("/hook"),
            600,
        ))
        .await;

    assert_eq!(status, 201, "{created}");
    assert!(uuid::Uuid::try_parse(created["id"].as_str().expect("id")).is_ok());
    assert_eq!(created["resource"], "me/drive/root");
    assert_eq!(created["applicationId"], user.app_id);
    assert_eq!(created["creatorId"], user.user_id);
    assert_eq!(created["changeType"], "updated");
    assert_eq!(created["clientState"], "client-state-secret");
    assert_eq!(created["notificationUrl"], hook.url("/hook"));
    assert_eq!(created["latestSupportedTlsVersion"], "v1_2");
    assert_eq!(created["notificationContentType"], "application/json");
    let expiration = created["expirationDateTime"].as_str().expect("expiration");
    assert!(
        expiration.ends_with('Z') && expiration.split('.').nth(1).is_some_and(|f| f.len() == 8),
        "{expiration}"
    );

    let id = created["id"].as_str().expect("id");
    let (status, fetched) = graph
        .call(Method::GET, &format!("/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(fetched["expirationDateTime"], created["expirationDateTime"]);
    let (status, listed) = graph.call(Method::GET, "/subscriptions", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["value"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_subscription_under_45_minutes_is_raised_to_45_minutes() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let before = running.sim().now();

    let (status, created) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 5))
        .await;

    assert_eq!(status, 201, "{created}");
    let expiration: DateTime<Utc> = created["expirationDateTime"]
        .as_str()
        .expect("expiration")
        .parse()
        .expect("timestamp");
    assert!(expiration >= before + Duration::minutes(45));
    assert!(expiration < running.sim().now() + Duration::minutes(45) + Duration::seconds(1));
}

#[tokio::test]
async fn an_expiration_over_42300_minutes_is_rejected_with_the_exact_text() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let (status, body) = graph
        .create(subscription_body(
            &running,
            "me/drive/root",
            &hook.url("/"),
            42_301,
        ))
        .await;

    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body),
        (
            "ExtensionError".to_owned(),
            "Subscription expiration can only be 42300 minutes in the future.".to_owned()
        )
    );
    let inner = &body["error"]["innerError"];
    assert!(
        inner["date"].is_string()
            && inner["request-id"].is_string()
            && inner["client-request-id"].is_string()
    );
    let (status, _) = graph
        .create(subscription_body(
            &running,
            "me/drive/root",
            &hook.url("/"),
            42_290,
        ))
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_second_identical_subscription_is_a_409_but_two_users_never_collide() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let alice = new_user(&running);
    let bob = new_user(&running);
    let alice_graph = Graph::new(&running, &alice.access_token);

    let (_, first) = alice_graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/a"), 600))
        .await;
    let drive_form = format!("/drives/{}/root/", alice.drive_id);
    let (status, body) = alice_graph
        .create(subscription_body(&running, &drive_form, &hook.url("/b"), 600))
        .await;

    assert_eq!(status, 409);
    let id = first["id"].as_str().expect("id");
    assert_eq!(
        error_of(&body).1,
        format!("Subscription Id {id} already exists for the requested combination")
    );
    let bob_graph = Graph::new(&running, &bob.access_token);
    let (status, _) = bob_graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/a"), 600))
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_deleted_subscription_can_be_recreated_and_is_404_afterwards() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let (_, created) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 600))
        .await;
    let path = format!("/subscriptions/{}", created["id"].as_str().expect("id"));

    let (status, _) = graph.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 204);

    for method in [Method::GET, Method::DELETE] {
        let (status, body) = graph.call(method, &path, None).await;
        assert_eq!(status, 404);
        assert_eq!(
            error_of(&body),
            (
                "ResourceNotFound".to_owned(),
                "The object was not found.".to_owned()
            )
        );
    }
    let (status, body) = graph
        .call(
            Method::PATCH,
            &path,
            Some(json!({"expirationDateTime": running.sim().now().to_rfc3339()})),
        )
        .await;
    assert_eq!(
        (status, error_of(&body).0.as_str()),
        (reqwest::StatusCode::NOT_FOUND, "ResourceNotFound")
    );
    let (status, _) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 600))
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_subscription_is_404_once_the_clock_passes_its_expiry() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let (_, created) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 60))
        .await;
    let path = format!("/subscriptions/{}", created["id"].as_str().expect("id"));

    running.sim().advance(Duration::minutes(59));
    // The token is 1 h old by then: get a fresh one, as graphfeed would.
    let token = running.sim().issue_token(&user.user_id, None).expect("token");
    let graph = Graph::new(&running, &token.access_token);
    assert_eq!(graph.call(Method::GET, &path, None).await.0, 200);
    running.sim().advance(Duration::minutes(2));

    let (status, body) = graph.call(Method::GET, &path, None).await;
    assert_eq!(
        (status, error_of(&body).0.as_str()),
        (reqwest::StatusCode::NOT_FOUND, "ResourceNotFound")
    );
    let (_, listed) = graph.call(Method::GET, "/subscriptions", None).await;
    assert_eq!(listed["value"], json!([]));
}

#[tokio::test]
async fn a_patch_renews_and_a_patch_without_a_property_is_refused() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let (_, created) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 60))
        .await;
    let path = format!("/subscriptions/{}", created["id"].as_str().expect("id"));

    let (status, body) = graph
        .call(Method::PATCH, &path, Some(json!({"clientState": "x"})))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body).1,
        "Subscription must contain either the 'expirationDateTime' or 'notificationUrl' property and its value."
    );

    let later = running.sim().now() + Duration::days(20);
    let (status, renewed) = graph
        .call(Method::PATCH, &path, Some(json!({"expirationDateTime": later})))
        .await;
    assert_eq!(status, 200, "{renewed}");
    let expiration: DateTime<Utc> = renewed["expirationDateTime"]
        .as_str()
        .expect("exp")
        .parse()
        .expect("ts");
    assert!((expiration - later).num_milliseconds().abs() < 1);

    let too_far = running.sim().now() + Duration::days(30);
    let (status, body) = graph
        .call(Method::PATCH, &path, Some(json!({"expirationDateTime": too_far})))
        .await;
    assert_eq!(
        (status, error_of(&body).0.as_str()),
        (reqwest::StatusCode::BAD_REQUEST, "ExtensionError")
    );
    let (status, _) = graph
        .call(Method::POST, &format!("{path}/reauthorize"), None)
        .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn a_patched_notification_url_is_validated_before_it_is_used() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let bad_hook = Receiver::start().await;
    bad_hook.set_validation(Validation::Status(500));
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let (_, created) = graph
        .create(subscription_body(
            &running,
            "me/drive/root",
            &hook.url("/old"),
            60,
        ))
        .await;
    let path = format!("/subscriptions/{}", created["id"].as_str().expect("id"));

    let (status, body) = graph
        .call(
            Method::PATCH,
            &path,
            Some(json!({"notificationUrl": bad_hook.url("/")})),
        )
        .await;
    assert_eq!(
        (status, error_of(&body).0.as_str()),
        (reqwest::StatusCode::BAD_REQUEST, "ValidationError")
    );
    let (status, body) = graph
        .call(
            Method::PATCH,
            &path,
            Some(json!({"notificationUrl": hook.url("/new")})),
        )
        .await;

    assert_eq!(status, 200);
    assert_eq!(body["notificationUrl"], hook.url("/new"));
    assert_eq!(
        hook.validations()
            .iter()
            .map(|v| v.path.as_str())
            .collect::<Vec<_>>(),
        ["/old", "/new"]
    );
}

#[tokio::test]
async fn only_the_updated_change_type_and_no_rich_notifications_are_accepted() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let mut body = subscription_body(&running, "me/drive/root", &hook.url("/"), 60);
    body["changeType"] = json!("created,updated");
    let (status, answer) = graph.create(body).await;
    assert_eq!(
        (status, error_of(&answer).0.as_str()),
        (reqwest::StatusCode::BAD_REQUEST, "InvalidRequest")
    );

    let mut body = subscription_body(&running, "me/drive/root", &hook.url("/"), 60);
    body["includeResourceData"] = json!(true);
    let (status, answer) = graph.create(body).await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&answer).1,
        "File Services workload is not enabled for rich notifications."
    );
}

#[tokio::test]
async fn files_cannot_be_subscribed_to_but_personal_folders_can() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let sim = running.sim();
    let folder = sim
        .create_item(
            &user.drive_id,
            &graph_sim::NewItem {
                name: "docs".into(),
                folder: true,
                ..Default::default()
            },
        )
        .expect("folder");
    let file = sim
        .create_item(
            &user.drive_id,
            &graph_sim::NewItem {
                name: "a.txt".into(),
                size: 3,
                ..Default::default()
            },
        )
        .expect("file");
    let graph = Graph::new(&running, &user.access_token);

    let (status, answer) = graph
        .create(subscription_body(
            &running,
            &format!("me/drive/items/{}", file.id),
            &hook.url("/"),
            60,
        ))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&answer),
        (
            "InvalidRequest".to_owned(),
            format!("resource '/drive/items/{}/' is not supported.", file.id)
        )
    );

    let folder_resource = format!("drives/{}/items/{}", user.drive_id, folder.id);
    let (status, _) = graph
        .create(subscription_body(&running, &folder_resource, &hook.url("/"), 60))
        .await;
    assert_eq!(status, 201);
    let (status, _) = graph
        .create(subscription_body(&running, "me/drive", &hook.url("/"), 60))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn business_drives_accept_only_root_subscriptions() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = running
        .sim()
        .create_user(NewUser {
            business: Some(true),
            ..NewUser::default()
        })
        .expect("user");
    assert!(user.drive_id.starts_with("b!") && user.drive_id.len() == 66);
    let folder = running
        .sim()
        .create_item(
            &user.drive_id,
            &graph_sim::NewItem {
                name: "docs".into(),
                folder: true,
                ..Default::default()
            },
        )
        .expect("folder");
    let graph = Graph::new(&running, &user.access_token);

    let folder_resource = format!("drives/{}/items/{}", user.drive_id, folder.id);
    let (status, _) = graph
        .create(subscription_body(&running, &folder_resource, &hook.url("/"), 60))
        .await;
    assert_eq!(status, 400);
    let root_resource = format!("users/{}/drive/root", user.user_id);
    let (status, _) = graph
        .create(subscription_body(&running, &root_resource, &hook.url("/"), 60))
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn another_users_drive_is_forbidden() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let alice = new_user(&running);
    let mallory = new_user(&running);
    let graph = Graph::new(&running, &mallory.access_token);

    let resource = format!("drives/{}/root", alice.drive_id);
    let (status, _) = graph
        .create(subscription_body(&running, &resource, &hook.url("/"), 60))
        .await;

    assert_eq!(status, 403);
}

#[tokio::test]
async fn notification_urls_must_be_https_unless_loopback_http_is_allowed() {
    let strict = start_sim_with(|config| config.allow_http_loopback = false).await;
    let hook = Receiver::start().await;
    let user = new_user(&strict);
    let graph = Graph::new(&strict, &user.access_token);

    let (status, body) = graph
        .create(subscription_body(&strict, "me/drive/root", &hook.url("/"), 60))
        .await;
    assert_eq!(
        (status, error_of(&body).0.as_str()),
        (reqwest::StatusCode::BAD_REQUEST, "InvalidRequest")
    );
    assert!(hook.validations().is_empty());

    let relaxed = start_sim().await;
    let user = new_user(&relaxed);
    let graph = Graph::new(&relaxed, &user.access_token);
    let remote = subscription_body(&relaxed, "me/drive/root", "http://example.test/hook", 60);
    assert_eq!(graph.create(remote).await.0, 400);
    let mut lifecycle = subscription_body(&relaxed, "me/drive/root", &hook.url("/"), 60);
    lifecycle["lifecycleNotificationUrl"] = json!("http://example.test/lifecycle");
    assert_eq!(graph.create(lifecycle).await.0, 400);
}

#[tokio::test]
async fn a_client_state_over_128_characters_and_a_bad_payload_are_refused() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let mut body = subscription_body(&running, "me/drive/root", &hook.url("/"), 60);
    body["clientState"] = json!("x".repeat(129));
    let (status, answer) = graph.create(body).await;
    assert_eq!(
        (status, error_of(&answer).0.as_str()),
        (reqwest::StatusCode::BAD_REQUEST, "InvalidRequest")
    );

    let (status, answer) = graph
        .create(json!({"changetype": "updated", "notificationurl": hook.url("/")}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&answer),
        (
            "InvalidRequest".to_owned(),
            "Could not process subscription creation payload. Are all property names spelled and camelCased properly?"
                .to_owned()
        )
    );
}

#[tokio::test]
async fn the_quota_refuses_a_subscription_beyond_the_per_drive_maximum() {
    let running = start_sim_with(|config| config.max_subscriptions_per_drive = Some(1)).await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let other_app = running
        .sim()
        .issue_token(&user.user_id, Some("11111111-2222-3333-4444-555555555555"))
        .expect("t");
    let graph = Graph::new(&running, &user.access_token);
    assert_eq!(
        graph
            .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 60))
            .await
            .0,
        201
    );

    let (status, body) = Graph::new(&running, &other_app.access_token)
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 60))
        .await;

    assert_eq!(status, 403);
    assert_eq!(
        error_of(&body),
        (
            "ExtensionError".to_owned(),
            "Operation: Create; Exception: [Status Code: Forbidden; Reason: Maximum number of subscriptions has been reached]"
                .to_owned()
        )
    );
}

#[tokio::test]
async fn missing_unknown_and_expired_tokens_get_a_401() {
    let running = start_sim().await;
    let user = new_user(&running);
    let expected = (
        "InvalidAuthenticationToken".to_owned(),
        "Access token has expired or is not yet valid.".to_owned(),
    );

    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let anonymous = client
        .get(format!("{}/subscriptions", running.graph_base_url()))
        .send()
        .await
        .expect("answer");
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("request-id"));
    assert_eq!(error_of(&anonymous.json().await.expect("json")), expected);
    let (status, body) = Graph::new(&running, "simgraph.nope")
        .call(Method::GET, "/subscriptions", None)
        .await;
    assert_eq!((status.as_u16(), error_of(&body)), (401, expected.clone()));

    running.sim().advance(Duration::minutes(61));
    let (status, body) = Graph::new(&running, &user.access_token)
        .call(Method::GET, "/subscriptions", None)
        .await;
    assert_eq!((status.as_u16(), error_of(&body)), (401, expected));
    let fresh = running.sim().issue_token(&user.user_id, None).expect("token");
    assert_eq!(
        Graph::new(&running, &fresh.access_token)
            .call(Method::GET, "/me/drive", None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn errors_echo_the_client_request_id() {
    let running = start_sim().await;
    let user = new_user(&running);
    let client = reqwest::Client::builder().no_proxy().build().expect("client");

    let response = client
        .get(format!(
            "{}/subscriptions/00000000-0000-0000-0000-000000000000",
            running.graph_base_url()
        ))
        .bearer_auth(&user.access_token)
        .header("client-request-id", "my-correlation-id")
        .send()
        .await
        .expect("answer");

    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    let request_id = response.headers()["request-id"]
        .to_str()
        .expect("header")
        .to_owned();
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(
        body["error"]["innerError"]["client-request-id"],
        "my-correlation-id"
    );
    assert_eq!(body["error"]["innerError"]["request-id"], request_id.as_str());
}

#[tokio::test]
async fn the_notification_url_is_echoed_exactly_as_given() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let (status, created) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.base, 60))
        .await;

    assert_eq!(status, 201, "{created}");
    assert_eq!(created["notificationUrl"], hook.base.as_str());
    assert!(!hook.base.ends_with('/'));
}

#[tokio::test]
async fn unknown_paths_and_methods_get_graph_errors() {
    let running = start_sim().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let (status, body) = graph.call(Method::PUT, "/subscriptions", None).await;
    assert_eq!((status.as_u16(), error_of(&body).0.as_str()), (405, "BadRequest"));
    let (status, body) = graph.call(Method::GET, "/me/nothing", None).await;
    assert_eq!(status.as_u16(), 400);
    assert_eq!(error_of(&body).1, "Resource not found for the segment 'nothing'.");
    assert_eq!(
        running.sim().counters().graph_calls.get("GET (unmatched)"),
        Some(&1)
    );
}

#[tokio::test]
async fn a_renewal_patch_sends_no_handshake_and_counts_as_a_patch() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let mut body = subscription_body(&running, "me/drive/root", &hook.url("/hook"), 60);
    body["lifecycleNotificationUrl"] = json!(hook.url("/lifecycle"));
    let (status, created) = graph.create(body).await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/subscriptions/{}", created["id"].as_str().expect("id"));
    assert_eq!(hook.validations().len(), 2, "one handshake per URL on create");

    for days in [1, 2] {
        let later = running.sim().now() + Duration::days(days);
        let (status, renewed) = graph
            .call(Method::PATCH, &path, Some(json!({"expirationDateTime": later})))
            .await;
        assert_eq!(status, 200, "{renewed}");
    }

    assert_eq!(hook.validations().len(), 2, "renewals send no handshake");
    let counters = running.sim().counters();
    assert_eq!(counters.validation_handshakes, 2);
    assert_eq!(
        counters.graph_calls.get("PATCH /v1.0/subscriptions/{id}"),
        Some(&2)
    );
}

#[tokio::test]
async fn a_subscription_that_expires_untouched_is_counted_once_as_expired() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    for minutes in [60, 600] {
        let user = new_user(&running);
        let (status, created) = Graph::new(&running, &user.access_token)
            .create(subscription_body(
                &running,
                "me/drive/root",
                &hook.url("/"),
                minutes,
            ))
            .await;
        assert_eq!(status, 201, "{created}");
    }
    assert_eq!(running.sim().counters().subscriptions_expired, 0);

    running.sim().advance(Duration::minutes(61));

    assert_eq!(running.sim().counters().subscriptions_expired, 1);
    assert_eq!(running.sim().counters().subscriptions_expired, 1, "counted once");
    let answer = control_call(&running, Method::GET, "/counters", None).await;
    assert_eq!(answer.body["subscriptions_expired"], 1);
    assert_eq!(running.sim().subscriptions().len(), 1);
}
