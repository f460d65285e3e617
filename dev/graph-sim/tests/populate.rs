//! Bulk populate for benchmarks, delta over a 100,000-item drive without rescanning it per page,
//! and the binary's `--delta-page-size` / `--delta-quirks` flags.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graph_sim::{DeltaQuirks, Populate};
use reqwest::Method;
use serde_json::json;
use support::*;

#[tokio::test]
async fn a_hundred_thousand_items_are_populated_fast_and_walked_in_pages_each_once() {
    let running = start_sim().await;
    let user = new_user(&running);
    let sim = running.sim();

    let started = Instant::now();
    let populated = sim
        .populate(
            &user.drive_id,
            Populate {
                files: 95_000,
                folders: 5_000,
                seed: 7,
            },
        )
        .expect("populate");
    let populate_time = started.elapsed();

    assert_eq!(populated.live_items, 100_001);
    assert_eq!(populated.last_seq - populated.first_seq + 1, 100_000);
    // Debug builds on a busy machine: generous. A release build takes a fraction of this.
    assert!(populate_time < Duration::from_secs(10), "{populate_time:?}");

    sim.set_delta_quirks(
        &user.drive_id,
        DeltaQuirks {
            page_size: Some(1_000),
            ..DeltaQuirks::default()
        },
    )
    .expect("quirks");
    let first = format!("{}/drives/{}/root/delta", running.graph_base_url(), user.drive_id);
    let started = Instant::now();
    let walk = delta_walk(&user.access_token, &first).await;
    let walk_time = started.elapsed();

    assert_eq!(walk.pages.len(), 101);
    let ids = walk.ids();
    assert_eq!(ids.len(), 100_001);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 100_001);
    // About 40 ms a page of 1,000 in a debug build, whatever the drive size (the walk is planned
    // once; the drive unit tests check that); generous for a busy machine.
    assert!(walk_time < Duration::from_secs(90), "{walk_time:?}");

    // A change after the walk: the next walk serves it and its ancestors only.
    let file = walk
        .items()
        .into_iter()
        .find(|item| item.get("file").is_some())
        .expect("a file");
    let file_id = file["id"].as_str().expect("id").to_owned();
    sim.modify_item(&user.drive_id, &file_id, Some(1))
        .expect("modify");
    let changes = delta_walk(&user.access_token, &walk.delta_link).await;
    assert!(changes.ids().contains(&file_id));
    assert!(changes.ids().len() < 50, "{}", changes.ids().len());
}

#[tokio::test]
async fn populate_over_http_builds_a_seeded_tree_and_notifies_a_root_subscription_once() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let twin = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let (status, _) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 600))
        .await;
    assert_eq!(status, 201);
    let since = graph
        .call(Method::GET, "/me/drive/root/delta?token=latest", None)
        .await
        .1["@odata.deltaLink"]
        .as_str()
        .expect("deltaLink")
        .to_owned();
    let body = json!({"files": 50, "folders": 10, "seed": 1});

    let answer = control_call(
        &running,
        Method::POST,
        &format!("/drives/{}/populate", user.drive_id),
        Some(body.clone()),
    )
    .await;

    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.body["files"], 50);
    assert_eq!(answer.body["folders"], 10);
    assert_eq!(answer.body["live_items"], 61);
    hook.wait_for_notifications(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hook.notifications().len(), 1, "one notification for the batch");
    let changes = delta_walk(&user.access_token, &since).await;
    assert_eq!(changes.ids().len(), 61, "every new item and the root");

    // The same seed gives the same tree shape on another drive.
    control_call(
        &running,
        Method::POST,
        &format!("/drives/{}/populate", twin.drive_id),
        Some(body),
    )
    .await;
    let shape = |drive_id: &str, token: &str| {
        let first = format!("{}/drives/{drive_id}/root/delta", running.graph_base_url());
        let token = token.to_owned();
        async move {
            let items = delta_walk(&token, &first).await.items();
            let names: HashMap<String, String> = items
                .iter()
                .map(|item| {
                    (
                        item["id"].as_str().unwrap_or_default().to_owned(),
                        item["name"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            items
                .iter()
                .filter(|item| item.get("root").is_none())
                .map(|item| {
                    let parent = item["parentReference"]["id"].as_str().unwrap_or_default();
                    let name = item["name"].as_str().unwrap_or_default().to_owned();
                    (name, names.get(parent).cloned().unwrap_or_default())
                })
                .collect::<BTreeSet<(String, String)>>()
        }
    };
    let ours = shape(&user.drive_id, &user.access_token).await;
    assert_eq!(ours.len(), 60);
    assert_eq!(ours, shape(&twin.drive_id, &twin.access_token).await);
    let too_many = control_call(
        &running,
        Method::POST,
        &format!("/drives/{}/populate", user.drive_id),
        Some(json!({"files": 3_000_000})),
    )
    .await;
    assert_eq!(too_many.status, 400);
}

#[tokio::test]
async fn the_binary_serves_delta_with_its_page_size_and_quirk_flags() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_graph-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--delta-page-size",
            "3",
            "--delta-quirks",
            "empty_pages",
            "--delta-quirks-seed",
            "4",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("ready line");
    let host = line
        .trim()
        .strip_prefix("graph-sim listening on ")
        .and_then(|rest| rest.split_once(' '))
        .map(|(host, _)| host.to_owned())
        .expect("ready line shape");

    let user = send(Method::POST, &format!("{host}/_sim/users"), None, Some(json!({}))).await;
    let drive_id = user.body["drive_id"].as_str().expect("drive").to_owned();
    let token = user.body["access_token"].as_str().expect("token").to_owned();
    let populated = send(
        Method::POST,
        &format!("{host}/_sim/drives/{drive_id}/populate"),
        None,
        Some(json!({"files": 20, "folders": 2})),
    )
    .await;
    assert_eq!(populated.status, 201, "{}", populated.body);
    let quirks = send(
        Method::GET,
        &format!("{host}/_sim/drives/{drive_id}/delta-quirks"),
        None,
        None,
    )
    .await;
    let walk = delta_walk(&token, &format!("{host}/v1.0/me/drive/root/delta")).await;

    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        (quirks.body["empty_pages"].clone(), quirks.body["seed"].clone()),
        (json!(true), json!(4))
    );
    assert!(
        walk.page_sizes().iter().all(|size| *size <= 3),
        "{:?}",
        walk.page_sizes()
    );
    assert!(walk.page_sizes().contains(&0), "{:?}", walk.page_sizes());
    assert_eq!(walk.ids().len(), 23);
}
