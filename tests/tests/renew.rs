//! renew against moto (real adapters: DynamoDB, KMS vault, SQS, Secrets Manager) and graph-sim
//! over HTTP: each Graph answer takes its path, one user's failure never delays or stops
//! another's, the deadline leaves the rest for the next run, and the daily safety net.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use graph_sim::Fault;
use graphfeed_tests::{SignedInUser, StackOptions, TestStack};
use shared::envelope::Kind;
use shared::ids::DriveKey;
use shared::renew::RunSummary;
use shared::store::{ConnectionStore, DriveStatus, SubscriptionRecord};
use shared::walk_store::WalkStore;

async fn stack_with(overrides: &[(&str, &str)]) -> TestStack {
    TestStack::start_with(StackOptions {
        overrides: overrides
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..StackOptions::default()
    })
    .await
}

/// One renew run with plenty of time.
async fn run(stack: &TestStack) -> RunSummary {
    run_until(stack, Instant::now() + Duration::from_secs(120)).await
}

async fn run_until(stack: &TestStack, deadline: Instant) -> RunSummary {
    let event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(events_dir().join("renew-schedule.json")).unwrap())
            .unwrap();
    stack.running.renew.handle(event, deadline).await
}

fn events_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")
}

async fn record(stack: &TestStack, drive_key: &DriveKey) -> SubscriptionRecord {
    stack
        .drive_store()
        .subscription(drive_key)
        .await
        .unwrap()
        .unwrap()
}

async fn state(stack: &TestStack, drive_key: &DriveKey) -> shared::store::DriveState {
    stack.drive_store().drive(drive_key).await.unwrap().unwrap()
}

fn patches(stack: &TestStack) -> u64 {
    stack
        .sim
        .sim()
        .counters()
        .graph_calls_of("PATCH /v1.0/subscriptions/{id}")
}

fn live(stack: &TestStack, user: &SignedInUser) -> Vec<graph_sim::Subscription> {
    stack.live_subscriptions(user)
}

fn fault_on(subscription_id: &str, status: u16, count: u32, retry_after: Option<u64>) -> Fault {
    Fault {
        path_prefix: format!("/v1.0/subscriptions/{subscription_id}"),
        method: Some("PATCH".into()),
        status,
        count,
        retry_after,
        body: None,
        delay_ms: None,
    }
}

/// Kinds of the messages queued for `drive_key` (the notifications queue, drained).
async fn queued_kinds(stack: &TestStack, drive_key: &DriveKey) -> Vec<Kind> {
    stack
        .drain()
        .await
        .into_iter()
        .filter(|m| m.group_id == drive_key.to_string())
        .map(|m| m.envelope.kind)
        .collect()
}

async fn status_json(stack: &TestStack, user: &SignedInUser) -> serde_json::Value {
    let token = stack
        .sim
        .sim()
        .mint_api_token(&graph_sim::ApiToken::new(user.created.user_id.clone()))
        .unwrap()
        .token;
    reqwest::Client::new()
        .get(stack.url("/connect"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A connected user whose subscription is due (27 days on), with Graph's next `count` PATCHes of
/// it answered `status`.
async fn due_with_fault(status: u16, count: u32) -> (TestStack, SignedInUser, DriveKey) {
    let stack = stack_with(&[]).await;
    let (user, drive_key) = connected(&stack).await;
    let sub = record(&stack, &drive_key).await;
    stack.clock.advance(chrono::Duration::days(27));
    stack
        .sim
        .sim()
        .add_fault(fault_on(&sub.subscription_id, status, count, None));
    (stack, user, drive_key)
}

/// A connected user, their connect messages drained.
async fn connected(stack: &TestStack) -> (SignedInUser, DriveKey) {
    let user = stack.sign_in_new_user();
    let drive_key = stack.connect(&user).await;
    stack.drain().await;
    (user, drive_key)
}

#[tokio::test]
async fn a_due_subscription_is_renewed_by_patch_and_keeps_the_expiry_graph_returned() {
    let stack = stack_with(&[]).await;
    let (user, drive_key) = connected(&stack).await;
    let before = record(&stack, &drive_key).await;

    let idle = run(&stack).await;
    assert_eq!(
        (idle.due, idle.renewed, patches(&stack)),
        (0, 0, 0),
        "not due yet"
    );
    let left = idle.min_time_to_expiry_seconds.unwrap();
    assert!(
        left > 28 * 86_400 && left < 30 * 86_400,
        "about 29 days left: {left} s"
    );

    // 27 days on, less than 72 hours are left.
    stack.clock.advance(chrono::Duration::days(27));
    let summary = run(&stack).await;
    assert_eq!((summary.due, summary.renewed, summary.failures()), (1, 1, 0));
    assert!(summary.complete);
    assert_eq!(patches(&stack), 1);
    let after = record(&stack, &drive_key).await;
    assert_eq!(
        after.subscription_id, before.subscription_id,
        "renewed, not recreated"
    );
    let graph = live(&stack, &user);
    assert_eq!(graph.len(), 1);
    assert_eq!(
        after.expires_at, graph[0].expiration,
        "the stored expiry is Graph's"
    );
    assert!(after.expires_at > before.expires_at + chrono::Duration::days(26));
    assert!(summary.min_time_to_expiry_seconds.unwrap() > 28 * 86_400);
    assert_eq!(
        state(&stack, &drive_key).await.state,
        DriveStatus::BaselinePending
    );
}

#[tokio::test]
async fn a_subscription_graph_no_longer_knows_is_recreated_and_a_catch_up_walk_is_queued() {
    let stack = stack_with(&[]).await;
    let (user, drive_key) = connected(&stack).await;
    let before = record(&stack, &drive_key).await;
    stack
        .sim
        .sim()
        .remove_subscription(&before.subscription_id)
        .unwrap();
    stack.clock.advance(chrono::Duration::days(27));
    stack.drain().await;

    let summary = run(&stack).await;
    assert_eq!((summary.recreated, summary.failures()), (1, 0), "{summary:?}");
    let after = record(&stack, &drive_key).await;
    assert_ne!(after.subscription_id, before.subscription_id);
    let graph = live(&stack, &user);
    assert_eq!(graph.len(), 1);
    assert_eq!(graph[0].id, after.subscription_id);
    // The catch-up walk (and, 27 days without a walk, the safety net's).
    assert!(queued_kinds(&stack, &drive_key).await.contains(&Kind::CatchUp));
}

#[tokio::test]
async fn a_409_on_the_recreate_adopts_the_subscription_graph_already_has_for_the_drive() {
    let stack = stack_with(&[]).await;
    let (user, drive_key) = connected(&stack).await;
    let before = record(&stack, &drive_key).await;
    stack
        .sim
        .sim()
        .remove_subscription(&before.subscription_id)
        .unwrap();
    // Another subscription for the drive exists (made by a connect whose record was lost), with
    // a clientState graphfeed minted for this drive.
    let ring = graphfeed_tests::dev_ring();
    let tenant = shared::ids::TenantId::parse(&user.created.tenant_id).unwrap();
    let client_state = ring.mint(&tenant, &drive_key);
    let graph = shared::graph::GraphClient::new(&shared::config::GraphConfig {
        base_url: stack.sim.graph_base_url().parse().unwrap(),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let token = secrecy::SecretString::from(user.created.access_token.clone());
    let other = graph
        .create_subscription(
            &token,
            &shared::graph::NewSubscription {
                resource: &before.resource,
                notification_url: &stack.url("/notifications"),
                lifecycle_notification_url: Some(&stack.url("/lifecycle")),
                expiration: stack.sim.sim().now() + chrono::Duration::days(29),
                client_state: &client_state,
            },
        )
        .await
        .unwrap();
    stack.clock.advance(chrono::Duration::days(27));

    let summary = run(&stack).await;
    assert_eq!((summary.recreated, summary.failures()), (1, 0), "{summary:?}");
    let after = record(&stack, &drive_key).await;
    assert_eq!(after.subscription_id, other.id, "adopted, not duplicated");
    assert_eq!(live(&stack, &user).len(), 1);
}

#[tokio::test]
async fn the_subscription_quota_marks_the_drive_expired_until_a_run_can_recreate_it() {
    let stack = stack_with(&[]).await;
    let (user, drive_key) = connected(&stack).await;
    let before = record(&stack, &drive_key).await;
    stack
        .sim
        .sim()
        .remove_subscription(&before.subscription_id)
        .unwrap();
    stack.sim.sim().set_max_subscriptions_per_drive(Some(0));
    // Past the expiry: Graph's subscription is long gone.
    stack.clock.advance(chrono::Duration::days(30));

    let summary = run(&stack).await;
    assert_eq!(summary.failed.get("quota"), Some(&1), "{summary:?}");
    let drive = state(&stack, &drive_key).await;
    assert_eq!(drive.state, DriveStatus::Expired);
    let status = status_json(&stack, &user).await;
    assert_eq!(status["state"], "expired");
    assert!(status["reason"].as_str().unwrap().contains("quota"), "{status}");
    assert!(
        summary.min_time_to_expiry_seconds.unwrap() < 0,
        "the alarm's metric shows it"
    );

    // The quota is freed; after the backoff the next run recreates it and the drive is well.
    stack.sim.sim().set_max_subscriptions_per_drive(None);
    stack.clock.advance(chrono::Duration::minutes(2));
    let summary = run(&stack).await;
    assert_eq!((summary.recreated, summary.failures()), (1, 0), "{summary:?}");
    assert_eq!(
        state(&stack, &drive_key).await.state,
        DriveStatus::BaselinePending
    );
    assert_eq!(
        status_json(&stack, &user).await["reason"],
        serde_json::Value::Null
    );
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_the_retry_renews() {
    let (stack, _user, _drive_key) = due_with_fault(401, 1).await;
    let refreshes = || stack.sim.sim().counters().token_requests_of("refresh_token");
    let before = refreshes();

    let summary = run(&stack).await;
    assert_eq!((summary.renewed, summary.failures()), (1, 0), "{summary:?}");
    assert_eq!(patches(&stack), 2, "the refused PATCH and its retry");
    assert_eq!(refreshes() - before, 2, "the first token, then one fresh one");
}

#[tokio::test]
async fn a_401_with_a_fresh_token_marks_the_drive_needs_reauth_and_parks_its_subscription() {
    let (stack, user, drive_key) = due_with_fault(401, 2).await;

    let summary = run(&stack).await;
    assert_eq!(summary.failed.get("needs_reauth"), Some(&1), "{summary:?}");
    assert_eq!(status_json(&stack, &user).await["state"], "needs_reauth");
    assert!(record(&stack, &drive_key).await.parked);

    // Parked: later runs leave it alone, and it no longer holds down the fleet's minimum.
    stack.clock.advance(chrono::Duration::hours(1));
    let again = run(&stack).await;
    assert_eq!((again.due, again.min_time_to_expiry_seconds), (0, None));
    assert_eq!(patches(&stack), 2);

    // The user signs in again: connect renews and unparks it.
    let token = stack
        .sim
        .sim()
        .mint_api_token(&graph_sim::ApiToken::new(user.created.user_id.clone()))
        .unwrap()
        .token;
    stack
        .connect(&SignedInUser {
            created: user.created.clone(),
            token,
        })
        .await;
    assert!(!record(&stack, &drive_key).await.parked);
    assert_eq!(status_json(&stack, &user).await["state"], "baseline_pending");
}

#[tokio::test]
async fn a_refresh_token_entra_refuses_marks_the_drive_needs_reauth_without_a_graph_call() {
    let stack = stack_with(&[]).await;
    let (user, drive_key) = connected(&stack).await;
    stack.clock.advance(chrono::Duration::days(27));
    stack
        .sim
        .sim()
        .revoke_refresh_tokens(&user.created.user_id)
        .unwrap();

    let summary = run(&stack).await;
    assert_eq!(summary.failed.get("needs_reauth"), Some(&1), "{summary:?}");
    assert_eq!(patches(&stack), 0);
    assert_eq!(state(&stack, &drive_key).await.state, DriveStatus::NeedsReauth);
}

#[tokio::test]
async fn a_subscription_made_under_a_retired_client_state_key_is_replaced_and_caught_up() {
    let k1 = "1111111111111111111111111111111111111111111111111111111111111111";
    let k2 = "2222222222222222222222222222222222222222222222222222222222222222";
    let stack = TestStack::start_with(StackOptions {
        key_secret: format!(r#"{{"active":"k1","k1":"{k1}"}}"#),
        ..StackOptions::default()
    })
    .await;
    let (user, drive_key) = connected(&stack).await;
    let before = record(&stack, &drive_key).await;
    assert_eq!(before.key_id, "k1");

    // The operator rotates: k2 active, k1 retired.
    let secrets = aws_sdk_secretsmanager::Client::new(&stack.aws);
    secrets
        .put_secret_value()
        .secret_id(
            stack
                .running
                .renew_env
                .get("CLIENT_STATE_KEYS_SECRET_ARN")
                .unwrap(),
        )
        .secret_string(format!(
            r#"{{"active":"k2","retired":["k1"],"k1":"{k1}","k2":"{k2}"}}"#
        ))
        .send()
        .await
        .unwrap();
    // An hour later (not due for weeks), the next run replaces it.
    stack.clock.advance(chrono::Duration::hours(1));
    let summary = run(&stack).await;
    assert_eq!(
        (summary.due, summary.replaced, summary.failures()),
        (1, 1, 0),
        "{summary:?}"
    );
    let after = record(&stack, &drive_key).await;
    assert_eq!(after.key_id, "k2");
    assert_ne!(after.subscription_id, before.subscription_id);
    let graph = live(&stack, &user);
    assert_eq!(graph.len(), 1, "the old one was deleted");
    assert_eq!(graph[0].id, after.subscription_id);
    assert_eq!(queued_kinds(&stack, &drive_key).await, vec![Kind::CatchUp]);

    // Done: the next run has nothing to replace.
    stack.clock.advance(chrono::Duration::hours(1));
    assert_eq!(run(&stack).await.due, 0);
}

#[tokio::test]
async fn a_throttled_tenant_waits_for_its_retry_after_while_another_tenant_is_renewed() {
    let stack = stack_with(&[]).await;
    let (a, drive_a) = connected(&stack).await;
    let (_b, drive_b) = connected(&stack).await;
    let sub_a = record(&stack, &drive_a).await;
    stack.clock.advance(chrono::Duration::days(27));
    stack
        .sim
        .sim()
        .add_fault(fault_on(&sub_a.subscription_id, 429, 1, Some(600)));

    let summary = run(&stack).await;
    assert_eq!(
        (summary.renewed, summary.failed.get("throttled")),
        (1, Some(&1)),
        "{summary:?}"
    );
    assert!(record(&stack, &drive_b).await.expires_at > sub_a.expires_at + chrono::Duration::days(20));
    assert_eq!(status_json(&stack, &a).await["state"], "renewing");
    let tenant_until = stack
        .walk_store()
        .throttled_until(&a.created.tenant_id)
        .await
        .unwrap();
    assert!(
        tenant_until.is_some(),
        "the tenant's throttle is shared with the walker"
    );

    // Five minutes later the tenant is still throttled: no Graph call for it.
    stack.clock.advance(chrono::Duration::minutes(5));
    let calls = patches(&stack);
    let waiting = run(&stack).await;
    assert_eq!(waiting.deferred.values().sum::<u64>(), 1, "{waiting:?}");
    assert_eq!(patches(&stack), calls);

    // After the Retry-After it is renewed, and the drive is well again.
    stack.clock.advance(chrono::Duration::minutes(6));
    let done = run(&stack).await;
    assert_eq!((done.renewed, done.failures()), (1, 0), "{done:?}");
    assert_eq!(status_json(&stack, &a).await["state"], "baseline_pending");
}

#[tokio::test]
async fn two_failed_runs_in_a_row_on_graph_503_are_survived() {
    let (stack, user, drive_key) = due_with_fault(503, 2).await;

    for _ in 0..2 {
        let failed = run(&stack).await;
        assert_eq!(failed.failures(), 1, "{failed:?}");
        assert_eq!(status_json(&stack, &user).await["state"], "renewing");
        stack.clock.advance(chrono::Duration::hours(1));
    }
    let summary = run(&stack).await;
    assert_eq!((summary.renewed, summary.failures()), (1, 0), "{summary:?}");
    assert_eq!(live(&stack, &user).len(), 1);
    assert_eq!(stack.sim.sim().counters().subscriptions_expired, 0);
    let after = record(&stack, &drive_key).await;
    assert_eq!(
        (after.failures, after.retry_at),
        (0, None),
        "a success clears the backoff"
    );
    assert_eq!(status_json(&stack, &user).await["state"], "baseline_pending");
}

#[tokio::test]
async fn any_other_graph_answer_is_counted_backed_off_and_retried_next_run() {
    let (stack, _user, drive_key) = due_with_fault(500, 1).await;

    let failed = run(&stack).await;
    assert_eq!(failed.failed.get("graph"), Some(&1), "{failed:?}");
    let backed_off = record(&stack, &drive_key).await;
    assert_eq!(backed_off.failures, 1);
    assert!(backed_off.retry_at.is_some());
    // Within the backoff, no call.
    let calls = patches(&stack);
    let waiting = run(&stack).await;
    assert_eq!(waiting.deferred.get("backoff"), Some(&1), "{waiting:?}");
    assert_eq!(patches(&stack), calls);
    stack.clock.advance(chrono::Duration::minutes(2));
    assert_eq!(run(&stack).await.renewed, 1);
}

#[tokio::test]
async fn a_failing_user_neither_stops_nor_delays_the_others() {
    let stack = stack_with(&[("RENEW_CONCURRENCY", "4")]).await;
    let mut users = Vec::new();
    for _ in 0..5 {
        users.push(connected(&stack).await);
    }
    let slow = record(&stack, &users[0].1).await;
    stack.clock.advance(chrono::Duration::days(27));
    // The first user's PATCH hangs for 4 s, then fails.
    stack.sim.sim().add_fault(Fault {
        delay_ms: Some(4000),
        ..fault_on(&slow.subscription_id, 500, 1, None)
    });

    let started = Instant::now();
    let run = tokio::spawn({
        let renew = stack.running.renew.clone();
        async move {
            renew
                .handle(serde_json::json!({}), Instant::now() + Duration::from_secs(120))
                .await
        }
    });
    // Well before the slow call returns, every other user is renewed.
    let store = stack.drive_store();
    let others: Vec<DriveKey> = users[1..].iter().map(|(_, k)| *k).collect();
    let mut renewed_at = None;
    while started.elapsed() < Duration::from_secs(10) {
        let mut all = true;
        for k in &others {
            let r = store.subscription(k).await.unwrap().unwrap();
            all &= r.expires_at > slow.expires_at + chrono::Duration::days(20);
        }
        if all {
            renewed_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewed_at = renewed_at.expect("the other users were renewed");
    assert!(
        renewed_at < Duration::from_secs(3),
        "others waited for the slow one: {renewed_at:?}"
    );
    let summary = run.await.unwrap();
    assert_eq!(
        (summary.renewed, summary.failed.get("graph")),
        (4, Some(&1)),
        "{summary:?}"
    );
}

#[tokio::test]
async fn near_the_deadline_no_renewal_starts_and_the_next_run_does_the_rest() {
    let stack = stack_with(&[("RENEW_CONCURRENCY", "1"), ("RENEW_MAX_PER_SECOND", "1")]).await;
    let mut drives = Vec::new();
    for _ in 0..6 {
        drives.push(connected(&stack).await.1);
    }
    stack.clock.advance(chrono::Duration::days(27));
    // One renewal a second, and 2.5 s before the 15 s reserve is reached.
    let cut = run_until(
        &stack,
        Instant::now() + shared::renew::DEADLINE_RESERVE + Duration::from_millis(2500),
    )
    .await;
    assert!(!cut.complete);
    let deferred = cut.deferred.get("deadline").copied().unwrap_or(0);
    assert_eq!(cut.renewed + deferred, 6, "{cut:?}");
    assert!((2..=4).contains(&cut.renewed), "{cut:?}");

    let rest = run(&stack).await;
    assert_eq!((rest.renewed, rest.kept), (deferred, 0), "{rest:?}");
    assert!(rest.complete);
    for k in &drives {
        assert!(record(&stack, k).await.expires_at > stack.sim.sim().now() + chrono::Duration::days(26));
    }
}

#[tokio::test]
async fn the_safety_net_queues_one_walk_a_day_for_a_drive_with_no_completed_walk() {
    let stack = stack_with(&[]).await;
    let (_user, drive_key) = connected(&stack).await;
    assert_eq!(run(&stack).await.safety_net_walks, 0, "connected just now");

    stack.clock.advance(chrono::Duration::hours(25));
    assert_eq!(run(&stack).await.safety_net_walks, 1);
    assert_eq!(queued_kinds(&stack, &drive_key).await, vec![Kind::SafetyNet]);

    // Still no completed walk an hour later: at most one a day.
    stack.clock.advance(chrono::Duration::hours(1));
    assert_eq!(run(&stack).await.safety_net_walks, 0);

    // A walk completes: the drive is not idle for another 24 hours.
    let mut drive = state(&stack, &drive_key).await;
    drive.last_walk_completed_at = Some(stack.sim.sim().now());
    drive.delta_link = Some("https://graph.microsoft.com/v1.0/drives/d/root/delta?token=t".into());
    drive.state = DriveStatus::Active;
    drive.version += 1;
    stack.drive_store().put_drive(&drive).await.unwrap();
    stack.clock.advance(chrono::Duration::hours(23));
    assert_eq!(run(&stack).await.safety_net_walks, 0);
    stack.clock.advance(chrono::Duration::hours(2));
    assert_eq!(run(&stack).await.safety_net_walks, 1);
}

#[tokio::test]
async fn a_leftover_subscription_of_a_disconnected_drive_is_dropped() {
    let stack = stack_with(&[]).await;
    let (_user, drive_key) = connected(&stack).await;
    shared::store::tombstone(&stack.drive_store(), &drive_key)
        .await
        .unwrap();
    stack.clock.advance(chrono::Duration::days(27));
    let summary = run(&stack).await;
    assert_eq!((summary.dropped, patches(&stack)), (1, 0), "{summary:?}");
    assert!(
        stack
            .drive_store()
            .subscription(&drive_key)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn the_local_stack_fires_renew_on_its_schedule_with_the_window_it_is_given() {
    let stack = TestStack::start_with(StackOptions {
        overrides: vec![("RENEW_WINDOW_MINUTES".into(), "43200".into())],
        renew_every: Some(Duration::from_millis(300)),
        ..StackOptions::default()
    })
    .await;
    let (_user, drive_key) = connected(&stack).await;
    let before = record(&stack, &drive_key).await;
    let timer = stack.running.renew_timer.as_ref().unwrap();
    let runs = timer.runs();
    assert!(timer.wait_for_runs(runs + 2, Duration::from_secs(20)).await);
    // A window longer than the subscription's life: every run renews it.
    assert!(patches(&stack) >= 1);
    assert!(record(&stack, &drive_key).await.version > before.version);
}
