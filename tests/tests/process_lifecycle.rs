//! Lifecycle notifications end to end: graph-sim sends them to the local notify, notify queues
//! them, process-changes (on the poller) acts with the shared subscription rules and the user's
//! refreshed token, everything stored in moto.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use graph_sim::{LifecycleEvent, NewItem};
use graphfeed_tests::{SignedInUser, StackOptions, TestStack};
use shared::ids::DriveKey;
use shared::store::ConnectionStore;

async fn connected_stack() -> (TestStack, SignedInUser, DriveKey) {
    let stack = TestStack::start_with(StackOptions {
        run_process_changes: true,
        ..StackOptions::default()
    })
    .await;
    let user = stack.sign_in_new_user();
    let drive_key = stack.connect(&user).await;
    (stack, user, drive_key)
}

/// Polls `check` every 100 ms for up to 20 s.
async fn eventually<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn reauthorization_required_renews_the_subscription_by_patch_with_a_new_expiry() {
    let (stack, _user, drive_key) = connected_stack().await;
    let before = stack
        .drive_store()
        .subscription(&drive_key)
        .await
        .unwrap()
        .unwrap();
    // Two days later, Graph asks for reauthorization. (Each asked-for expiry is up to 12 hours
    // short of the maximum, at random: two days on, the new one is at least 36 hours later.)
    stack.clock.advance(chrono::Duration::days(2));
    stack
        .sim
        .sim()
        .send_lifecycle(&before.subscription_id, LifecycleEvent::ReauthorizationRequired)
        .unwrap();
    let renewed = eventually(|| async {
        stack
            .drive_store()
            .subscription(&drive_key)
            .await
            .unwrap()
            .is_some_and(|s| s.expires_at > before.expires_at + chrono::Duration::hours(24))
    })
    .await;
    assert!(renewed, "the stored expiry moved on with the days that passed");
    let after = stack
        .drive_store()
        .subscription(&drive_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.subscription_id, before.subscription_id,
        "renewed, not replaced"
    );
    let graph = stack.sim.sim().subscription(&after.subscription_id).unwrap();
    assert_eq!(
        graph.expiration, after.expires_at,
        "the expiry Graph returned is the one stored"
    );
    let calls = stack.sim.sim().counters().graph_calls;
    assert!(
        !calls.keys().any(|k| k.contains("reauthorize")),
        "a PATCH renews and reauthorizes; /reauthorize is never also called: {calls:?}"
    );
}

#[tokio::test]
async fn subscription_removed_recreates_the_subscription_and_walks_so_a_change_meanwhile_is_not_lost() {
    let (stack, user, drive_key) = connected_stack().await;
    let before = stack
        .drive_store()
        .subscription(&drive_key)
        .await
        .unwrap()
        .unwrap();
    // Wait for the baseline, so the change below comes after it.
    assert!(
        eventually(|| async {
            stack
                .drive_store()
                .drive(&drive_key)
                .await
                .unwrap()
                .is_some_and(|d| d.delta_link.is_some())
        })
        .await
    );
    assert!(
        stack
            .sim
            .sim()
            .remove_subscription(&before.subscription_id)
            .unwrap()
    );
    // A change while no subscription exists: Graph cannot notify about it.
    let lost = stack
        .sim
        .sim()
        .create_item(
            &user.created.drive_id,
            &NewItem {
                parent_id: None,
                name: "while-removed.txt".into(),
                folder: false,
                size: 1,
            },
        )
        .unwrap();
    let recreated = eventually(|| async {
        stack
            .drive_store()
            .subscription(&drive_key)
            .await
            .unwrap()
            .is_some_and(|s| s.subscription_id != before.subscription_id)
    })
    .await;
    assert!(recreated, "a new subscription is stored");
    let after = stack
        .drive_store()
        .subscription(&drive_key)
        .await
        .unwrap()
        .unwrap();
    assert!(stack.sim.sim().subscription(&after.subscription_id).is_some());
    // The walk after recreating found the change made meanwhile.
    let walked = eventually(|| async {
        stack
            .drive_store()
            .drive(&drive_key)
            .await
            .unwrap()
            .is_some_and(|d| d.seq_high_water >= 2)
    })
    .await;
    assert!(walked, "the change made while removed was walked");
    let log = stack.walk_store();
    use shared::walk_store::WalkStore;
    let entries = log
        .log_after(
            shared::walk_store::Scope {
                drive_key: &drive_key,
                generation: after.generation,
            },
            0,
            10,
        )
        .await
        .unwrap();
    assert!(entries.iter().any(|e| e.event.contains(&lost.id)), "{entries:?}");
}
