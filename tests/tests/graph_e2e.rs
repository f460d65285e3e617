//! End to end with the Graph simulator: a subscription created through graphfeed's Graph client
//! passes the real validation handshake against the local notify, a drive change becomes a
//! notification in Graph's shape, and it ends up on the notifications queue, also when SQS was
//! down at first and Graph had to redeliver.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use chrono::Utc;
use graphfeed_tests::{
    FaultyProxy, StackOptions, TestStack, dev_ring, moto_endpoint, start_sim, start_sim_with,
};
use secrecy::SecretString;
use shared::config::GraphConfig;
use shared::graph::{GraphClient, NewSubscription, Subscription};
use shared::ids::{DriveKey, TenantId};

struct Connected {
    user: graph_sim::CreatedUser,
    drive_key: DriveKey,
    subscription: Subscription,
}

/// What connect will do: mint a clientState for the drive and subscribe at the local notify.
async fn connect(stack: &TestStack, sim: &graph_sim::RunningSim) -> Connected {
    let user = sim.sim().create_user(graph_sim::NewUser::default()).unwrap();
    let drive_key = DriveKey::random();
    let client_state = dev_ring().mint(&TenantId::parse(&user.tenant_id).unwrap(), &drive_key);
    let graph = GraphClient::new(&GraphConfig {
        base_url: sim.graph_base_url().parse().unwrap(),
        timeout: Duration::from_secs(20),
    })
    .unwrap();
    let notification_url = stack.url("/notifications");
    let lifecycle_url = stack.url("/lifecycle");
    let subscription = graph
        .create_subscription(
            &SecretString::from(user.access_token.clone()),
            &NewSubscription {
                resource: "me/drive/root",
                notification_url: &notification_url,
                lifecycle_notification_url: Some(&lifecycle_url),
                expiration: Utc::now() + chrono::Duration::days(2),
                client_state: &client_state,
            },
        )
        .await
        .expect("the validation handshake passes against notify");
    Connected {
        user,
        drive_key,
        subscription,
    }
}

#[tokio::test]
async fn a_drive_change_travels_from_graph_through_notify_to_the_queue() {
    let stack = TestStack::start().await;
    let sim = start_sim(&stack.clock).await;
    let c = connect(&stack, &sim).await;
    assert_eq!(c.subscription.notification_url, stack.url("/notifications"));

    sim.sim()
        .create_item(
            &c.user.drive_id,
            &graph_sim::NewItem {
                parent_id: None,
                name: "report.docx".into(),
                folder: false,
                size: 10,
            },
        )
        .unwrap();

    let got = stack.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.drive_key, c.drive_key);
    assert_eq!(got[0].envelope.tenant_id.as_str(), c.user.tenant_id);
    assert_eq!(got[0].envelope.subscriptions[0].id.as_str(), c.subscription.id);
    assert_eq!(got[0].group_id, c.drive_key.to_string());
}

#[tokio::test]
async fn a_lifecycle_event_from_graph_reaches_the_queue_in_the_drives_group() {
    let stack = TestStack::start().await;
    let sim = start_sim(&stack.clock).await;
    let c = connect(&stack, &sim).await;
    sim.sim()
        .send_lifecycle(
            &c.subscription.id,
            graph_sim::LifecycleEvent::ReauthorizationRequired,
        )
        .unwrap();
    let got = stack.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.kind, shared::envelope::Kind::Lifecycle);
    assert_eq!(got[0].group_id, c.drive_key.to_string());
}

#[tokio::test]
async fn when_sqs_is_down_graph_redelivers_and_nothing_is_lost() {
    let proxy = FaultyProxy::start(moto_endpoint()).await;
    let stack = TestStack::start_with(StackOptions {
        endpoint: proxy.endpoint.clone(),
        ..Default::default()
    })
    .await;
    // Graph's real 3 s deadline: notify must answer its 503 inside it.
    let sim = start_sim_with(&stack.clock, graph_sim::Timing::default()).await;
    let c = connect(&stack, &sim).await;

    proxy.fail(true);
    sim.sim()
        .create_item(
            &c.user.drive_id,
            &graph_sim::NewItem {
                parent_id: None,
                name: "a.txt".into(),
                folder: false,
                size: 1,
            },
        )
        .unwrap();
    // Graph's first attempt gets a 5xx from notify.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !sim
        .sim()
        .deliveries()
        .iter()
        .any(|d| d.status.is_some_and(|s| s >= 500))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Graph never saw notify fail: {:?}",
            sim.sim().deliveries()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.fail(false);
    assert!(
        stack.drain().await.is_empty(),
        "nothing was acknowledged while SQS was down"
    );

    // Graph retries with backoff (minutes of its time): move both clocks on.
    sim.sim().advance(chrono::Duration::minutes(2));
    let got = stack.wait_for_messages(1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "the redelivered notification is on the queue");
    assert_eq!(got[0].envelope.drive_key, c.drive_key);
    assert!(
        sim.sim()
            .deliveries()
            .iter()
            .any(|d| d.attempt >= 2 && d.status == Some(202))
    );
}
