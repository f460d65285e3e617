//! Bulk seeding of subscriptions for benchmarks: no handshake, otherwise a create in every way
//! (graph-protocol.md §1), and fast at 10,000 users and subscriptions.

mod support;

use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use graph_sim::{NewItem, NewUser, RunningSim, SeedSubscription, SimError};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

fn seed(running: &RunningSim, user_id: &str, url: &str, minutes: i64) -> SeedSubscription {
    SeedSubscription::new(user_id, url, running.sim().now() + Duration::minutes(minutes))
}

fn expiration_of(body: &Value) -> DateTime<Utc> {
    body["expirationDateTime"]
        .as_str()
        .expect("expirationDateTime")
        .parse()
        .expect("timestamp")
}

#[tokio::test]
async fn a_seeded_subscription_behaves_like_a_created_one_but_sends_no_handshake() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let seeded = running
        .sim()
        .seed_subscriptions(&[SeedSubscription {
            lifecycle_notification_url: Some(hook.url("/lifecycle")),
            client_state: Some("seeded-state".to_owned()),
            tenant_id: Some(user.tenant_id.to_uppercase()),
            ..seed(&running, &user.user_id, &hook.url("/hook"), 600)
        }])
        .expect("seeded");
    let id = seeded[0].id.clone();
    let path = format!("/subscriptions/{id}");
    // The refresh grant's token, as graphfeed's renewal would use.
    let refresh_token = running
        .sim()
        .issue_refresh_token(&user.user_id, None, None)
        .expect("refresh token");
    let refreshed = token_request(&running, &user.tenant_id, &refresh_form(&refresh_token)).await;
    let graph = Graph::new(
        &running,
        refreshed.body["access_token"].as_str().expect("access token"),
    );

    let (status, got) = graph.call(Method::GET, &path, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["resource"], "me/drive/root");
    assert_eq!(got["creatorId"], user.user_id);
    assert_eq!(got["applicationId"], graph_sim::DEFAULT_APP_ID);
    assert_eq!(got["clientState"], "seeded-state");
    assert_eq!(got["notificationUrl"], hook.url("/hook"));
    assert_eq!(got["lifecycleNotificationUrl"], hook.url("/lifecycle"));
    assert_eq!(expiration_of(&got), seeded[0].expiration);
    assert!(hook.validations().is_empty());
    assert_eq!(running.sim().counters().validation_handshakes, 0);

    running
        .sim()
        .create_item(
            &user.drive_id,
            &NewItem {
                name: "a.txt".into(),
                size: 1,
                ..NewItem::default()
            },
        )
        .expect("item");
    let notifications = hook.wait_for_notifications(1).await;
    assert_eq!(notifications[0]["subscriptionId"], id.as_str());
    assert_eq!(notifications[0]["clientState"], "seeded-state");

    let later = running.sim().now() + Duration::days(2);
    let (status, renewed) = graph
        .call(Method::PATCH, &path, Some(json!({"expirationDateTime": later})))
        .await;
    assert_eq!(status, 200, "{renewed}");
    let (_, listed) = graph.call(Method::GET, "/subscriptions", None).await;
    assert_eq!(listed["value"][0]["id"], id.as_str());
    assert_eq!(graph.call(Method::DELETE, &path, None).await.0, 204);
    assert_eq!(graph.call(Method::GET, &path, None).await.0, 404);
}

#[tokio::test]
async fn seeding_applies_the_rules_of_a_create_and_creates_all_or_nothing() {
    let running = start_sim_with(|config| config.max_subscriptions_per_drive = Some(2)).await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let other = new_user(&running);
    let sim = running.sim();
    let url = hook.url("/hook");
    let refused = |seeds: &[SeedSubscription]| sim.seed_subscriptions(seeds).expect_err("refused");

    let before = sim.now();
    let short = sim
        .seed_subscriptions(&[seed(&running, &user.user_id, &url, 5)])
        .expect("seeded");
    assert!(short[0].expiration >= before + Duration::minutes(45));
    assert!(short[0].expiration < sim.now() + Duration::minutes(45) + Duration::seconds(1));

    let too_far = refused(&[seed(&running, &other.user_id, &url, 42_301)]);
    assert!(
        too_far
            .to_string()
            .contains("ExtensionError: Subscription expiration can only be 42300 minutes in the future."),
        "{too_far}"
    );
    let duplicate = refused(&[seed(&running, &user.user_id, &url, 60)]);
    assert!(
        matches!(&duplicate, SimError::Conflict(message) if message.contains(&format!("Subscription Id {} already exists", short[0].id))),
        "{duplicate}"
    );
    let not_https = refused(&[seed(&running, &user.user_id, "http://example.test/hook", 60)]);
    assert!(matches!(not_https, SimError::BadRequest(_)), "{not_https}");
    let foreign = refused(&[SeedSubscription {
        resource: format!("drives/{}/root", other.drive_id),
        ..seed(&running, &user.user_id, &url, 60)
    }]);
    assert!(foreign.to_string().contains("accessDenied"), "{foreign}");
    let unknown = refused(&[seed(&running, "no-such-user", &url, 60)]);
    assert!(matches!(unknown, SimError::NotFound(_)), "{unknown}");
    let wrong_tenant = refused(&[SeedSubscription {
        tenant_id: Some(other.tenant_id.clone()),
        ..seed(&running, &user.user_id, &url, 60)
    }]);
    assert!(matches!(wrong_tenant, SimError::Conflict(_)), "{wrong_tenant}");

    // Two more on the user's drive: the second of them is beyond the quota of 2, and the first is
    // not created either.
    let other_app = "11111111-2222-3333-4444-555555555555";
    let over_quota = refused(&[
        SeedSubscription {
            app_id: Some(other_app.to_owned()),
            ..seed(&running, &user.user_id, &url, 60)
        },
        SeedSubscription {
            app_id: Some("22222222-2222-3333-4444-555555555555".to_owned()),
            ..seed(&running, &user.user_id, &url, 60)
        },
    ]);
    assert_eq!(
        over_quota.to_string(),
        "subscription 1: ExtensionError: Operation: Create; Exception: [Status Code: Forbidden; Reason: \
         Maximum number of subscriptions has been reached]"
    );
    let same_twice = refused(&[
        seed(&running, &other.user_id, &url, 60),
        seed(&running, &other.user_id, &url, 90),
    ]);
    assert!(
        same_twice.to_string().starts_with("subscription 1: Conflict: "),
        "{same_twice}"
    );
    assert_eq!(
        sim.subscriptions().len(),
        1,
        "nothing but the first seed was created"
    );
}

#[tokio::test]
async fn subscriptions_can_be_seeded_over_http() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let expiration = running.sim().now() + Duration::hours(3);

    let answer = control_call(
        &running,
        Method::POST,
        "/subscriptions/seed",
        Some(json!({"subscriptions": [{
            "user_id": user.user_id,
            "resource": format!("drives/{}/root", user.drive_id),
            "notification_url": hook.url("/hook"),
            "client_state": "s",
            "expiration_date_time": expiration,
        }]})),
    )
    .await;
    let refused = control_call(
        &running,
        Method::POST,
        "/subscriptions/seed",
        Some(json!({"subscriptions": [{
            "user_id": user.user_id,
            "notification_url": hook.url("/again"),
            "expiration_date_time": expiration,
        }]})),
    )
    .await;

    assert_eq!(answer.status, 201, "{}", answer.body);
    let seeded = &answer.body["value"][0];
    let id = seeded["id"].as_str().expect("id");
    assert_eq!(seeded["target"]["drive_id"], user.drive_id);
    let (status, got) = Graph::new(&running, &user.access_token)
        .call(Method::GET, &format!("/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["resource"], format!("drives/{}/root", user.drive_id));
    // Graph keeps 100 ns ticks.
    assert!((expiration_of(&got) - expiration).num_microseconds() == Some(0));
    assert_eq!(refused.status, 409, "me/drive/root is the same folder");
    assert_eq!(refused.body["error"]["code"], "conflict");
}

#[tokio::test]
async fn ten_thousand_users_with_refresh_tokens_and_seeded_subscriptions_are_set_up_quickly() {
    const COUNT: usize = 10_000;
    let running = start_sim().await;
    let sim = running.sim();
    let url = "http://127.0.0.1:9/hook";

    let started = Instant::now();
    let users: Vec<_> = (0..COUNT)
        .map(|_| sim.create_user(NewUser::default()).expect("user"))
        .collect();
    let users_took = started.elapsed();
    let refresh_tokens: Vec<String> = users
        .iter()
        .map(|user| {
            sim.issue_refresh_token(&user.user_id, None, None)
                .expect("refresh token")
        })
        .collect();
    let tokens_took = started.elapsed() - users_took;
    let expiration = sim.now() + Duration::days(2);
    let seeds: Vec<Value> = users
        .iter()
        .map(|user| {
            json!({"user_id": user.user_id, "notification_url": url, "client_state": "benchmark",
                   "expiration_date_time": expiration})
        })
        .collect();
    let seeding_started = Instant::now();
    let answer = control_call(
        &running,
        Method::POST,
        "/subscriptions/seed",
        Some(json!({"subscriptions": seeds})),
    )
    .await;
    let seeding_took = seeding_started.elapsed();
    eprintln!(
        "{COUNT} users: {users_took:?}; {COUNT} refresh tokens: {tokens_took:?}; seeding {COUNT} over HTTP: \
         {seeding_took:?}; in all {:?}",
        started.elapsed()
    );

    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.body["value"].as_array().map(Vec::len), Some(COUNT));
    assert_eq!(sim.subscriptions().len(), COUNT);
    let last = users.last().expect("users");
    let refreshed = token_request(
        &running,
        &last.tenant_id,
        &refresh_form(refresh_tokens.last().expect("tokens")),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    // Generous: a quadratic step takes minutes here; the linear ones take a few seconds in a
    // debug build on a busy machine.
    assert!(
        started.elapsed() < StdDuration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}
