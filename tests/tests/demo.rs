//! The `make local` demo against the local stack: it connects its user through `POST /connect`
//! and then signs the client in as that user, approving each `graphfeed login` device code.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use graph_sim::DeviceCodeStatus;
use graphfeed_tests::{StackOptions, TestStack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_connects_its_user_and_approves_a_client_sign_in_as_that_user() {
    let stack = TestStack::start_with(StackOptions {
        run_process_changes: true,
        ..StackOptions::default()
    })
    .await;
    let sim = stack.sim.sim();
    let demo = tokio::spawn(local_stack::demo::run(
        sim.clone(),
        stack.url(""),
        stack.sim.control_url(),
    ));

    // The demo's user is connected: graph-sim holds the subscription it made.
    let deadline = Instant::now() + Duration::from_secs(30);
    let demo_user = loop {
        if let Some(subscription) = sim.subscriptions().first() {
            break subscription.creator_id.clone();
        }
        assert!(Instant::now() < deadline, "the demo never connected its user");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // What `graphfeed login` asks for.
    let issued: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/organizations/oauth2/v2.0/devicecode",
            stack.sim.authority_host()
        ))
        .form(&[
            ("client_id", graph_sim::DEFAULT_CLIENT_APP_ID.to_owned()),
            (
                "scope",
                format!(
                    "{}/{} offline_access",
                    graph_sim::DEFAULT_APP_ID_URI,
                    graph_sim::DEFAULT_API_SCOPE
                ),
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_code = issued["user_code"].as_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let code = sim
            .device_codes()
            .into_iter()
            .find(|code| code.user_code == user_code)
            .unwrap();
        if code.status == DeviceCodeStatus::Approved {
            assert_eq!(
                code.user_id.as_deref(),
                Some(demo_user.as_str()),
                "approved as the demo user"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the demo never approved {user_code}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    demo.abort();
}
