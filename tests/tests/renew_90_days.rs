//! Ninety days of graphfeed in about a minute: graph-sim's clock and graphfeed's move together in
//! 12-hour steps, with a scheduled renew run after each, while two users in two tenants keep
//! changing files. Every subscription is renewed before Graph would delete it (three times each
//! over the 90 days), two runs in a row that Graph answers 503 are survived, and every change
//! reaches the changes queue through notify, SQS and process-changes: nothing missed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashSet;
use std::time::{Duration, Instant};

use graphfeed_tests::{StackOptions, TestStack};
use shared::changes::Change;
use shared::store::ConnectionStore;

const STEP: chrono::Duration = chrono::Duration::hours(12);
const STEPS: u32 = 180;

#[tokio::test]
async fn ninety_days_of_scheduled_runs_end_with_no_expired_subscription_and_no_missed_change() {
    let stack = TestStack::start_with(StackOptions {
        run_process_changes: true,
        ..StackOptions::default()
    })
    .await;
    let users = [stack.sign_in_new_user(), stack.sign_in_new_user()];
    let mut drives = Vec::new();
    for user in &users {
        drives.push(stack.connect(user).await);
    }
    let baselines = stack
        .read_changes(Duration::from_secs(30), |e| e.len() >= 2)
        .await;
    assert!(baselines.iter().all(|e| e.change == Change::BaselineComplete));
    let store = stack.drive_store();
    let first_ids: Vec<String> = {
        let mut ids = Vec::new();
        for d in &drives {
            ids.push(store.subscription(d).await.unwrap().unwrap().subscription_id);
        }
        ids
    };

    let mut renewed = 0;
    let mut failed_runs_in_a_row = 0;
    let mut most_failed_runs_in_a_row = 0;
    let mut outage_injected = false;
    let mut lowest_time_to_expiry = i64::MAX;
    let started = Instant::now();
    let mut expected = HashSet::new();
    for step in 1..=STEPS {
        stack.clock.advance(STEP);
        // Each user changes a file; every 5 days all the events so far must have arrived.
        for (n, user) in users.iter().enumerate() {
            expected.insert(stack.new_file(user, &format!("step-{step:03}-user-{n}.txt")));
        }
        // The first time the first user's renewal is due, Graph answers its next two PATCHes
        // with 503: that renewal fails in two runs in a row.
        let first = store.subscription(&drives[0]).await.unwrap().unwrap();
        if !outage_injected
            && first.expires_at < stack.sim.sim().now() + shared::connect::DEFAULT_RENEW_WINDOW
        {
            outage_injected = true;
            stack.sim.sim().add_fault(graph_sim::Fault {
                path_prefix: format!("/v1.0/subscriptions/{}", first.subscription_id),
                method: Some("PATCH".into()),
                status: 503,
                count: 2,
                retry_after: None,
                body: None,
                delay_ms: None,
            });
        }
        let run_started = Instant::now();
        let summary = stack
            .running
            .renew
            .handle(serde_json::json!({}), Instant::now() + Duration::from_secs(60))
            .await;
        if std::env::var_os("RENEW_90_TRACE").is_some() {
            eprintln!(
                "step {step}: run {:?} total {:?}",
                run_started.elapsed(),
                started.elapsed()
            );
        }
        renewed += summary.renewed;
        if summary.failures() > 0 {
            failed_runs_in_a_row += 1;
            most_failed_runs_in_a_row = most_failed_runs_in_a_row.max(failed_runs_in_a_row);
            assert!(
                summary.failed.keys().all(|k| k == "throttled"),
                "step {step}: {summary:?}"
            );
        } else {
            failed_runs_in_a_row = 0;
        }
        assert_eq!(
            summary.recreated + summary.replaced,
            0,
            "step {step}: nothing lapsed, so nothing was recreated"
        );
        lowest_time_to_expiry = lowest_time_to_expiry.min(summary.min_time_to_expiry_seconds.unwrap());

        if step % 10 == 0 || step == STEPS {
            let events = stack
                .read_changes(Duration::from_secs(60), |events| {
                    let seen: HashSet<&str> = events.iter().filter_map(|e| e.item_id.as_deref()).collect();
                    expected.iter().all(|id| seen.contains(id.as_str()))
                })
                .await;
            let seen: HashSet<String> = events.iter().filter_map(|e| e.item_id.clone()).collect();
            let missed: Vec<&String> = expected.difference(&seen).collect();
            assert!(
                missed.is_empty(),
                "by day {}: changes missed: {missed:?}",
                step / 2
            );
            expected.clear();
        }
    }

    let counters = stack.sim.sim().counters();
    assert_eq!(
        counters.subscriptions_expired, 0,
        "Graph never deleted a lapsed subscription"
    );
    assert_eq!(
        counters.auto_reauthorizations, 0,
        "renewed long before Graph would ask"
    );
    assert!(outage_injected);
    assert_eq!(most_failed_runs_in_a_row, 2, "the 503 outage lasted two runs");
    // About 29 days of life, renewed 72 hours before the end: three renewals each in 90 days.
    assert!(renewed >= 6, "{renewed} renewals");
    assert!(
        lowest_time_to_expiry > 36 * 3600,
        "the closest any subscription came to lapsing: {lowest_time_to_expiry} s"
    );
    for (user, (drive, first)) in users.iter().zip(drives.iter().zip(&first_ids)) {
        let live = stack.live_subscriptions(user);
        assert_eq!(live.len(), 1);
        assert_eq!(&live[0].id, first, "the same subscription, renewed for 90 days");
        let record = store.subscription(drive).await.unwrap().unwrap();
        assert_eq!(record.expires_at, live[0].expiration);
    }
    eprintln!(
        "90 simulated days in {:.1} s: {renewed} renewals, closest to lapsing {:.1} h",
        started.elapsed().as_secs_f64(),
        lowest_time_to_expiry as f64 / 3600.0
    );
}
