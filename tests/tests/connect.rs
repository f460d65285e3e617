//! connect end to end, against graph-sim (Graph and Entra) and moto: a signed-in user's token
//! becomes a live subscription (through a real handshake with the local notify), an encrypted
//! refresh token and a queued baseline; each error maps to an answer the client can act on;
//! disconnect undoes it all.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use graph_sim::{ApiToken, AuthFailure, Repeat, Tamper};
use graphfeed_tests::TestStack;
use shared::envelope::Kind;
use shared::ids::UserKey;
use shared::vault::TokenVault;

use graphfeed_tests::SignedInUser as User;

fn new_user(stack: &TestStack) -> User {
    stack.sign_in_new_user()
}

async fn call(stack: &TestStack, method: reqwest::Method, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().request(method, stack.url("/connect"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    request.send().await.unwrap()
}

/// The status of a call with `token`.
async fn status_of(stack: &TestStack, method: reqwest::Method, token: &str) -> reqwest::StatusCode {
    call(stack, method, Some(token)).await.status()
}

/// The JSON body of a call with `token`.
async fn json_of(stack: &TestStack, method: reqwest::Method, token: &str) -> serde_json::Value {
    call(stack, method, Some(token)).await.json().await.unwrap()
}

/// Changes the stored drive state as the processor would (a versioned write).
async fn change_drive_state(
    stack: &TestStack,
    drive_key: &str,
    change: impl FnOnce(&mut shared::store::DriveState),
) {
    use shared::store::ConnectionStore;
    let store = shared::store::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&stack.aws),
        stack.running.connect_env.get("TABLE_NAME").unwrap(),
    );
    let drive_key = shared::ids::DriveKey::parse(drive_key).unwrap();
    let mut state = store.drive(&drive_key).await.unwrap().unwrap();
    change(&mut state);
    state.version += 1;
    store.put_drive(&state).await.unwrap();
}

fn live_subscriptions(stack: &TestStack, user: &User) -> Vec<graph_sim::Subscription> {
    stack.live_subscriptions(user)
}

fn user_key(user: &User) -> UserKey {
    UserKey::new(
        shared::ids::TenantId::parse(&user.created.tenant_id).unwrap(),
        shared::ids::ObjectId::parse(&user.created.user_id).unwrap(),
    )
}

fn vault(stack: &TestStack) -> shared::vault::KmsDynamoVault {
    let env = &stack.running.connect_env;
    let config = shared::vault::VaultConfig::from_env(env).unwrap();
    shared::vault::KmsDynamoVault::from_sdk_config(&stack.aws, &config, shared::clock::system())
}

#[tokio::test]
async fn a_signed_in_user_is_connected_through_a_real_handshake_with_a_baseline_queued() {
    let stack = TestStack::start().await;
    let user = new_user(&stack);

    let r = call(&stack, reqwest::Method::POST, Some(&user.token)).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["drive_id"], user.created.drive_id.as_str());
    assert_eq!(body["walk"], "baseline");

    let subs = live_subscriptions(&stack, &user);
    assert_eq!(subs.len(), 1);
    assert_eq!(body["subscription_id"], subs[0].id.as_str());
    assert_eq!(
        subs[0].notification_url,
        stack.url("/notifications"),
        "Graph validated the local notify"
    );
    let graph_expiry: chrono::DateTime<chrono::Utc> = body["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(graph_expiry, subs[0].expiration, "the stored expiry is Graph's");

    let queued = stack.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].envelope.kind, Kind::Baseline);
    assert_eq!(queued[0].group_id, body["drive_key"].as_str().unwrap());

    let stored = vault(&stack).load(&user_key(&user)).await.unwrap();
    assert!(stored.is_some(), "the refresh token is in the vault");

    let status: serde_json::Value = json_of(&stack, reqwest::Method::GET, &user.token).await;
    assert_eq!(status["state"], "baseline_pending");
    assert_eq!(status["subscription_id"], body["subscription_id"]);
    assert_eq!(status["reason"], serde_json::Value::Null);
    assert!(status.get("needs_reauth").is_none(), "one state field, no flags");

    // The subscription's clientState verifies in notify: a change reaches the queue in the drive's group.
    stack
        .sim
        .sim()
        .create_item(
            &user.created.drive_id,
            &graph_sim::NewItem {
                parent_id: None,
                name: "a.txt".into(),
                folder: false,
                size: 1,
            },
        )
        .unwrap();
    let changed = stack.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].envelope.kind, Kind::Notification);
    assert_eq!(changed[0].group_id, body["drive_key"].as_str().unwrap());
}

#[tokio::test]
async fn connecting_again_returns_the_live_subscription_and_two_concurrent_connects_leave_one() {
    let stack = TestStack::start().await;
    let user = new_user(&stack);
    let (a, b) = tokio::join!(
        call(&stack, reqwest::Method::POST, Some(&user.token)),
        call(&stack, reqwest::Method::POST, Some(&user.token))
    );
    assert_eq!(
        (a.status(), b.status()),
        (reqwest::StatusCode::OK, reqwest::StatusCode::OK)
    );
    let (a, b): (serde_json::Value, serde_json::Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["subscription_id"], b["subscription_id"]);
    assert_eq!(live_subscriptions(&stack, &user).len(), 1);

    let again: serde_json::Value = json_of(&stack, reqwest::Method::POST, &user.token).await;
    assert_eq!(again["subscription_id"], a["subscription_id"]);
    assert_eq!(live_subscriptions(&stack, &user).len(), 1);
}

#[tokio::test]
async fn tokens_that_are_wrong_in_any_way_are_refused_with_401() {
    let stack = TestStack::start().await;
    let user = new_user(&stack);
    let sim = stack.sim.sim();
    assert_eq!(call(&stack, reqwest::Method::POST, None).await.status(), 401);
    let mut variants = Vec::new();
    for tamper in [
        Tamper::UnknownKey,
        Tamper::WrongKey,
        Tamper::AlgNone,
        Tamper::Hs256,
        Tamper::BadSignature,
    ] {
        variants.push(ApiToken {
            tamper: Some(tamper),
            ..ApiToken::new(user.created.user_id.clone())
        });
    }
    variants.push(ApiToken {
        audience: graph_sim::Audience::Other("00000003-0000-0000-c000-000000000000".into()),
        ..ApiToken::new(user.created.user_id.clone())
    });
    variants.push(ApiToken {
        issuer: Some("https://evil.example/tenant/v2.0".into()),
        ..ApiToken::new(user.created.user_id.clone())
    });
    variants.push(ApiToken {
        issued_at_offset: chrono::Duration::hours(-3),
        ..ApiToken::new(user.created.user_id.clone())
    });
    for spec in variants {
        let token = sim.mint_api_token(&spec).unwrap().token;
        let r = call(&stack, reqwest::Method::POST, Some(&token)).await;
        assert_eq!(r.status(), 401, "{:?}", spec.tamper);
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
    }
    assert!(live_subscriptions(&stack, &user).is_empty());
}

#[tokio::test]
async fn a_rotated_signing_key_is_followed() {
    let stack = TestStack::start().await;
    let user = new_user(&stack);
    assert_eq!(
        status_of(&stack, reqwest::Method::GET, &user.token).await,
        404,
        "not connected yet"
    );
    stack.sim.sim().rotate_signing_key().unwrap();
    // The keys were fetched for the GET above; an unknown kid may trigger a refetch once a minute.
    stack.clock.advance(chrono::Duration::seconds(61));
    let fresh = stack
        .sim
        .sim()
        .mint_api_token(&ApiToken::new(user.created.user_id.clone()))
        .unwrap()
        .token;
    assert_eq!(status_of(&stack, reqwest::Method::POST, &fresh).await, 200);
}

#[tokio::test]
async fn entra_errors_become_answers_the_client_can_act_on() {
    let stack = TestStack::start().await;
    let sim = stack.sim.sim();

    let mfa = new_user(&stack);
    sim.set_auth_failure(&mfa.created.user_id, AuthFailure::MfaRequired, Repeat::Sticky)
        .unwrap();
    let r = call(&stack, reqwest::Method::POST, Some(&mfa.token)).await;
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains("insufficient_claims") && challenge.contains("claims=\""),
        "{challenge}"
    );

    let consent = new_user(&stack);
    sim.set_auth_failure(
        &consent.created.user_id,
        AuthFailure::ConsentRequired,
        Repeat::Sticky,
    )
    .unwrap();
    let r = call(&stack, reqwest::Method::POST, Some(&consent.token)).await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "consent_required");

    let busy = new_user(&stack);
    sim.set_auth_failure(
        &busy.created.user_id,
        AuthFailure::TemporarilyUnavailable {
            http_503: false,
            retry_after: Some(7),
        },
        Repeat::Sticky,
    )
    .unwrap();
    let r = call(&stack, reqwest::Method::POST, Some(&busy.token)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
}

#[tokio::test]
async fn disconnect_leaves_no_token_no_subscription_and_only_the_tombstone_and_is_idempotent() {
    let stack = TestStack::start().await;
    let user = new_user(&stack);
    assert_eq!(status_of(&stack, reqwest::Method::POST, &user.token).await, 200);
    assert_eq!(status_of(&stack, reqwest::Method::DELETE, &user.token).await, 204);

    assert!(live_subscriptions(&stack, &user).is_empty());
    assert!(vault(&stack).load(&user_key(&user)).await.unwrap().is_none());
    let status: serde_json::Value = json_of(&stack, reqwest::Method::GET, &user.token).await;
    assert_eq!(status["state"], "disconnected");
    assert_eq!(status["subscription_id"], serde_json::Value::Null);

    assert_eq!(status_of(&stack, reqwest::Method::DELETE, &user.token).await, 204);

    // A reconnect continues: same drive key, the next generation, a new subscription.
    let again: serde_json::Value = json_of(&stack, reqwest::Method::POST, &user.token).await;
    assert_eq!(live_subscriptions(&stack, &user).len(), 1);
    assert_eq!(again["walk"], "baseline");
}

#[tokio::test]
async fn graphs_create_errors_become_clear_answers() {
    // Graph cannot reach the notification URL: its validation fails, connect says so.
    let stack = graphfeed_tests::TestStack::start_with(graphfeed_tests::StackOptions {
        overrides: vec![(
            "NOTIFICATION_URL".into(),
            "http://127.0.0.1:9/notifications".into(),
        )],
        ..Default::default()
    })
    .await;
    let user = new_user(&stack);
    let r = call(&stack, reqwest::Method::POST, Some(&user.token)).await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "notification_url_unreachable");

    // Throttled: 503 with Retry-After. Quota: 409 with a message.
    let stack = TestStack::start().await;
    let sim = stack.sim.sim();
    let user = new_user(&stack);
    let fault = |status, retry_after, body: Option<&str>| graph_sim::Fault {
        path_prefix: "/v1.0/subscriptions".into(),
        method: Some("POST".into()),
        status,
        count: 1,
        retry_after,
        body: body.map(|b| serde_json::from_str(b).unwrap()),
        delay_ms: None,
    };
    sim.add_fault(fault(429, Some(9), None));
    let r = call(&stack, reqwest::Method::POST, Some(&user.token)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "9");
    sim.add_fault(fault(
        403,
        None,
        Some(r#"{"error":{"code":"ExtensionError","message":"Operation: Create; Exception: [Status Code: Forbidden; Reason: Maximum number of subscriptions has been reached]"}}"#),
    ));
    let r = call(&stack, reqwest::Method::POST, Some(&user.token)).await;
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "subscription_quota_reached");
    // Once Graph accepts, the same user connects.
    assert_eq!(status_of(&stack, reqwest::Method::POST, &user.token).await, 200);
}

#[tokio::test]
async fn a_foreign_subscription_on_the_drive_is_replaced_by_one_notify_can_verify() {
    let stack = TestStack::start().await;
    let user = new_user(&stack);
    // Someone made a subscription for this drive with a clientState graphfeed cannot verify
    // (a shared secret, as the peers do), so Graph answers graphfeed's create with 409.
    let graph = shared::graph::GraphClient::new(&shared::config::GraphConfig {
        base_url: stack.sim.graph_base_url().parse().unwrap(),
        timeout: Duration::from_secs(20),
    })
    .unwrap();
    let foreign_state = shared::client_state::KeyRing::single(&"9".repeat(64))
        .unwrap()
        .mint(
            &shared::ids::TenantId::parse(&user.created.tenant_id).unwrap(),
            &shared::ids::DriveKey::random(),
        );
    let notification_url = stack.url("/notifications");
    let foreign = graph
        .create_subscription(
            &secrecy::SecretString::from(user.created.access_token.clone()),
            &shared::graph::NewSubscription {
                resource: "me/drive/root",
                notification_url: &notification_url,
                lifecycle_notification_url: None,
                expiration: chrono::Utc::now() + chrono::Duration::days(1),
                client_state: &foreign_state,
            },
        )
        .await
        .unwrap();

    let body: serde_json::Value = json_of(&stack, reqwest::Method::POST, &user.token).await;
    let subs = live_subscriptions(&stack, &user);
    assert_eq!(subs.len(), 1);
    assert_ne!(subs[0].id, foreign.id, "the unverifiable one is gone");
    assert_eq!(body["subscription_id"], subs[0].id.as_str());
    let ring = graphfeed_tests::dev_ring();
    let verified = ring
        .verify(subs[0].client_state.as_deref().unwrap(), &user_key(&user).tenant)
        .unwrap();
    assert_eq!(
        verified.drive_key.to_string(),
        body["drive_key"].as_str().unwrap()
    );
}

#[tokio::test]
async fn a_connect_inside_the_renewal_window_renews_with_graphs_expiry() {
    let stack = TestStack::start().await;
    let user = new_user(&stack);
    let first: serde_json::Value = json_of(&stack, reqwest::Method::POST, &user.token).await;
    // 27 days on, the subscription has less than 72 hours left.
    stack.clock.advance(chrono::Duration::days(27));
    let token = stack
        .sim
        .sim()
        .mint_api_token(&ApiToken::new(user.created.user_id.clone()))
        .unwrap()
        .token;
    let second: serde_json::Value = json_of(&stack, reqwest::Method::POST, &token).await;
    assert_eq!(
        second["subscription_id"], first["subscription_id"],
        "renewed, not recreated"
    );
    let subs = live_subscriptions(&stack, &user);
    assert_eq!(subs.len(), 1);
    let renewed: chrono::DateTime<chrono::Utc> = second["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(renewed, subs[0].expiration);
    assert!(
        renewed
            > first["expires_at"]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
    );
}

#[tokio::test]
async fn a_reconnect_that_still_has_a_delta_link_queues_a_catch_up_instead_of_a_baseline() {
    use shared::store::DriveStatus;
    let stack = TestStack::start().await;
    let user = new_user(&stack);
    let first: serde_json::Value = json_of(&stack, reqwest::Method::POST, &user.token).await;
    assert_eq!(first["walk"], "baseline");
    // The processor completed the baseline and stored a deltaLink.
    change_drive_state(&stack, first["drive_key"].as_str().unwrap(), |state| {
        state.delta_link = Some("http://127.0.0.1/v1.0/drives/d/root/delta?token=x".into());
        state.state = DriveStatus::Active;
    })
    .await;
    stack.drain().await;

    let again: serde_json::Value = json_of(&stack, reqwest::Method::POST, &user.token).await;
    assert_eq!(again["walk"], "catch-up");
    let queued = stack.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(queued[0].envelope.kind, Kind::CatchUp);
}

#[tokio::test]
async fn a_connect_that_failed_after_storing_the_token_leaves_nothing_after_disconnect() {
    let stack = TestStack::start().await;
    let user = new_user(&stack);
    stack.sim.sim().add_fault(graph_sim::Fault {
        path_prefix: "/v1.0/me/drive".into(),
        method: Some("GET".into()),
        status: 404,
        count: 1,
        retry_after: None,
        body: None,
        delay_ms: None,
    });
    let r = call(&stack, reqwest::Method::POST, Some(&user.token)).await;
    assert_eq!(r.status(), 404);
    assert!(
        vault(&stack).load(&user_key(&user)).await.unwrap().is_some(),
        "the token was stored before the drive call"
    );
    assert_eq!(status_of(&stack, reqwest::Method::DELETE, &user.token).await, 204);
    assert!(vault(&stack).load(&user_key(&user)).await.unwrap().is_none());
}

#[tokio::test]
async fn a_user_who_revoked_consent_can_still_disconnect_and_the_subscription_goes_too() {
    let stack = TestStack::start().await;
    let user = new_user(&stack);
    assert_eq!(status_of(&stack, reqwest::Method::POST, &user.token).await, 200);
    // On-behalf-of now fails; the stored refresh token still gets a Graph token.
    stack
        .sim
        .sim()
        .set_auth_failure(
            &user.created.user_id,
            AuthFailure::ConsentRequired,
            Repeat::Times(1),
        )
        .unwrap();
    assert_eq!(status_of(&stack, reqwest::Method::DELETE, &user.token).await, 204);
    assert!(live_subscriptions(&stack, &user).is_empty());
    assert!(vault(&stack).load(&user_key(&user)).await.unwrap().is_none());
    let status: serde_json::Value = json_of(&stack, reqwest::Method::GET, &user.token).await;
    assert_eq!(status["state"], "disconnected");
}

#[tokio::test]
async fn reconnecting_clears_needs_reauth_and_reauthorizes_the_subscription() {
    use shared::store::DriveStatus;
    let stack = TestStack::start().await;
    let user = new_user(&stack);
    let first: serde_json::Value = json_of(&stack, reqwest::Method::POST, &user.token).await;
    change_drive_state(&stack, first["drive_key"].as_str().unwrap(), |state| {
        state.state = DriveStatus::NeedsReauth
    })
    .await;
    let status: serde_json::Value = json_of(&stack, reqwest::Method::GET, &user.token).await;
    assert_eq!(status["state"], "needs_reauth");

    stack.clock.advance(chrono::Duration::hours(1));
    let token = stack
        .sim
        .sim()
        .mint_api_token(&ApiToken::new(user.created.user_id.clone()))
        .unwrap()
        .token;
    let again: serde_json::Value = json_of(&stack, reqwest::Method::POST, &token).await;
    assert_eq!(again["subscription_id"], first["subscription_id"]);
    assert_ne!(
        again["expires_at"], first["expires_at"],
        "the subscription was PATCHed (renewed and reauthorized)"
    );
    let status: serde_json::Value = json_of(&stack, reqwest::Method::GET, &token).await;
    assert_eq!(
        (status["reason"].clone(), status["state"].clone()),
        (serde_json::Value::Null, serde_json::json!("baseline_pending"))
    );
}
