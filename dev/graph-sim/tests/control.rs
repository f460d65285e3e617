//! The control API (`/_sim`), faults and counters, and the binary's start-up contract.

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

async fn control(base: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = client().request(method, format!("{base}{path}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("control answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("json")
        },
    )
}

#[tokio::test]
async fn a_fault_fails_the_next_matching_calls_with_graphs_code_and_retry_after() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let (_, created) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 60))
        .await;
    let path = format!("/subscriptions/{}", created["id"].as_str().expect("id"));
    let base = running.control_url();
    let fault = json!({"path_prefix": "/v1.0/subscriptions", "method": "PATCH", "status": 503, "count": 2, "retry_after": 5});
    assert_eq!(control(&base, Method::POST, "/faults", Some(fault)).await.0, 201);
    let renew = json!({"expirationDateTime": running.sim().now() + chrono::Duration::hours(2)});

    for _ in 0..2 {
        let response = graph
            .http
            .patch(format!("{}{path}", graph.base))
            .bearer_auth(&graph.token)
            .json(&renew)
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "5");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "serviceNotAvailable");
    }
    assert_eq!(
        graph.call(Method::GET, &path, None).await.0,
        200,
        "GET does not match the PATCH fault"
    );
    assert_eq!(
        graph.call(Method::PATCH, &path, Some(renew)).await.0,
        200,
        "the fault is used up"
    );

    let throttle = json!({"path_prefix": "/v1.0/", "status": 429});
    control(&base, Method::POST, "/faults", Some(throttle)).await;
    let (status, body) = graph.call(Method::GET, "/subscriptions", None).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (429, Some("activityLimitReached"))
    );
    control(
        &base,
        Method::POST,
        "/faults",
        Some(json!({"path_prefix": "/v1.0/", "status": 500, "count": 9})),
    )
    .await;
    assert_eq!(control(&base, Method::DELETE, "/faults", None).await.0, 204);
    assert_eq!(graph.call(Method::GET, "/subscriptions", None).await.0, 200);

    let (_, counters) = control(&base, Method::GET, "/counters", None).await;
    assert_eq!(counters["graph_calls"]["PATCH /v1.0/subscriptions/{id}"], 3);
    assert_eq!(counters["graph_calls"]["POST /v1.0/subscriptions"], 1);
    assert_eq!(counters["graph_calls"]["GET /v1.0/subscriptions"], 2);
    assert_eq!(counters["faults_injected"], 3);
    assert_eq!(counters["validation_handshakes"], 1);
}

#[tokio::test]
async fn a_fault_can_carry_its_own_body() {
    let running = start_sim().await;
    let user = new_user(&running);
    running.sim().add_fault(graph_sim::Fault {
        path_prefix: "/v1.0/me/drive".to_owned(),
        method: None,
        status: 509,
        count: 1,
        retry_after: None,
        body: Some(json!({"error": {"code": "bandwidthLimitExceeded", "message": "custom"}})),
        delay_ms: None,
    });

    let (status, body) = Graph::new(&running, &user.access_token)
        .call(Method::GET, "/me/drive", None)
        .await;

    assert_eq!(status.as_u16(), 509);
    assert_eq!(
        body,
        json!({"error": {"code": "bandwidthLimitExceeded", "message": "custom"}})
    );
}

#[tokio::test]
async fn a_delayed_fault_answers_late_without_holding_up_other_calls() {
    let running = start_sim().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let fault = json!({"path_prefix": "/v1.0/me/drive/root", "status": 503, "delay_ms": 400});
    let (status, armed) = control(&running.control_url(), Method::POST, "/faults", Some(fault)).await;
    assert_eq!((status, &armed["delay_ms"]), (201, &json!(400)));

    let started = std::time::Instant::now();
    let slow = tokio::spawn({
        let graph = graph.clone();
        async move {
            let answer = graph.call(Method::GET, "/me/drive/root", None).await;
            (answer, started.elapsed())
        }
    });
    // Let the faulted call take its fault before the other call starts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = graph.call(Method::GET, "/me/drive", None).await;
    let other_done = started.elapsed();
    let ((slow_status, slow_body), slow_done) = slow.await.expect("join");

    assert_eq!(status, 200);
    assert!(
        other_done < Duration::from_millis(400),
        "the other call waited: {other_done:?}"
    );
    assert_eq!(slow_status, 503);
    assert_eq!(slow_body["error"]["code"], "serviceNotAvailable");
    assert!(
        slow_done >= Duration::from_millis(400),
        "answered after {slow_done:?}"
    );
    assert_eq!(running.sim().counters().faults_injected, 1);
}

#[tokio::test]
async fn users_and_drive_changes_can_be_arranged_over_http() {
    let running = start_sim().await;
    let base = running.control_url();

    let (status, user) = control(
        &base,
        Method::POST,
        "/users",
        Some(json!({"display_name": "Ada"})),
    )
    .await;
    assert_eq!(status, 201);
    for field in [
        "tenant_id",
        "user_id",
        "drive_id",
        "root_id",
        "access_token",
        "app_id",
    ] {
        assert!(user[field].is_string(), "{field} in {user}");
    }
    assert_eq!(user["app_id"], graph_sim::DEFAULT_APP_ID);
    let drive_id = user["drive_id"].as_str().expect("drive");
    assert!(drive_id.len() == 16 && drive_id.chars().all(|c| c.is_ascii_hexdigit()));
    let (status, colleague) = control(
        &base,
        Method::POST,
        "/users",
        Some(json!({"tenant_id": user["tenant_id"]})),
    )
    .await;
    assert_eq!((status, &colleague["tenant_id"]), (201, &user["tenant_id"]));

    let items = format!("/drives/{drive_id}/items");
    let (status, folder) = control(
        &base,
        Method::POST,
        &items,
        Some(json!({"name": "docs", "folder": true})),
    )
    .await;
    assert_eq!(status, 201);
    let (_, file) = control(
        &base,
        Method::POST,
        &items,
        Some(json!({"parent_id": folder["id"], "name": "a.txt", "size": 10})),
    )
    .await;
    assert_eq!(file["parent_id"], folder["id"]);
    let file_path = format!("{items}/{}", file["id"].as_str().expect("id"));
    let (_, modified) = control(
        &base,
        Method::POST,
        &format!("{file_path}/modify"),
        Some(json!({"size": 20})),
    )
    .await;
    assert_ne!(modified["etag"], file["etag"]);
    assert_ne!(modified["ctag"], file["ctag"]);
    assert_eq!(modified["size"], 20);
    let (_, renamed) = control(
        &base,
        Method::PATCH,
        &file_path,
        Some(json!({"name": "b.txt", "parent_id": user["root_id"]})),
    )
    .await;
    assert_ne!(renamed["etag"], modified["etag"]);
    assert_eq!(renamed["ctag"], modified["ctag"]);
    assert_eq!(renamed["parent_id"], user["root_id"]);
    let (status, deleted) = control(&base, Method::DELETE, &file_path, None).await;
    assert_eq!((status, &deleted["deleted"]), (200, &json!(true)));
    let (_, journal) = control(&base, Method::GET, &format!("/drives/{drive_id}/journal"), None).await;
    let touched: Vec<&str> = journal["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["item_id"].as_str())
        .collect();
    assert_eq!(
        touched.len(),
        6,
        "root, folder, file created, modified, moved, deleted: {touched:?}"
    );

    let (status, error) = control(
        &base,
        Method::POST,
        "/drives/nope/items",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("notFound")));

    let token_path = format!("/users/{}/token", user["user_id"].as_str().expect("user"));
    let (status, token) = control(&base, Method::POST, &token_path, None).await;
    assert_eq!(status, 200);
    assert!(
        token["access_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("simgraph.") && t != user["access_token"])
    );
    let graph = Graph::new(&running, token["access_token"].as_str().expect("token"));
    let (status, drive) = graph.call(Method::GET, "/me/drive", None).await;
    assert_eq!(
        (status.as_u16(), &drive["id"], &drive["driveType"]),
        (200, &user["drive_id"], &json!("personal"))
    );
}

#[tokio::test]
async fn the_clock_advances_through_control_and_reset_forgets_everything() {
    let running = start_sim().await;
    let base = running.control_url();
    let user = new_user(&running);
    let (_, before) = control(&base, Method::GET, "/clock", None).await;

    let (status, advanced) = control(
        &base,
        Method::POST,
        "/clock/advance",
        Some(json!({"seconds": 3600})),
    )
    .await;

    assert_eq!(status, 200);
    let parse = |v: &Value| {
        v["now"]
            .as_str()
            .expect("now")
            .parse::<chrono::DateTime<chrono::Utc>>()
            .expect("time")
    };
    let moved = parse(&advanced) - parse(&before);
    assert!(
        moved >= chrono::Duration::hours(1)
            && moved < chrono::Duration::hours(1) + chrono::Duration::seconds(5)
    );
    assert_eq!(
        control(
            &base,
            Method::POST,
            "/clock/advance",
            Some(json!({"seconds": -5}))
        )
        .await
        .0,
        400
    );

    assert_eq!(control(&base, Method::POST, "/reset", None).await.0, 204);
    assert!(running.sim().issue_token(&user.user_id, None).is_err());
    let (_, counters) = control(&base, Method::GET, "/counters", None).await;
    assert_eq!(counters["graph_calls"], json!({}));
}

#[tokio::test]
async fn deliveries_and_endpoints_are_visible_through_control() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    hook.set_reply(Reply::status(500));
    let user = new_user(&running);
    Graph::new(&running, &user.access_token)
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 60))
        .await;
    running
        .sim()
        .create_item(
            &user.drive_id,
            &graph_sim::NewItem {
                name: "a".into(),
                ..Default::default()
            },
        )
        .expect("item");
    let sim = running.sim();
    eventually("one attempt", || !sim.deliveries().is_empty()).await;

    let (_, deliveries) = control(&running.control_url(), Method::GET, "/deliveries", None).await;
    let (_, endpoints) = control(&running.control_url(), Method::GET, "/endpoints", None).await;

    let attempt = &deliveries[0];
    assert_eq!(attempt["url"], hook.url("/"));
    assert_eq!(
        (attempt["attempt"].as_u64(), attempt["status"].as_u64()),
        (Some(1), Some(500))
    );
    assert_eq!(
        (
            attempt["outcome"].as_str(),
            attempt["notification_count"].as_u64()
        ),
        (Some("rejected"), Some(1))
    );
    assert!(attempt["latency_ms"].is_u64() && attempt["sim_time"].is_string());
    assert_eq!(endpoints[0]["url"], hook.url("/"));
    assert_eq!(endpoints[0]["state"], "normal");
}

/// Starts the binary with `args` and returns it with its ready line.
async fn start_binary(args: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_graph-sim"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
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
    (child, line)
}

#[tokio::test]
async fn the_latency_flag_sets_the_graph_and_token_latency() {
    let (mut child, line) = start_binary(&["--latency-ms", "75"]).await;
    let host = line
        .trim()
        .strip_prefix("graph-sim listening on ")
        .and_then(|rest| rest.split_once(' '))
        .map(|(host, _)| host.to_owned())
        .expect("ready line shape");

    let (status, settings) = control(&format!("{host}/_sim"), Method::GET, "/settings", None).await;
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(status, 200);
    assert_eq!(settings["latency"], json!({"graph_ms": 75, "token_ms": 75}));
}

#[tokio::test]
async fn the_binary_prints_one_ready_line_and_stops_on_sigterm() {
    let (mut child, line) = start_binary(&["--allow-http-loopback"]).await;

    let rest = line
        .trim()
        .strip_prefix("graph-sim listening on http://")
        .expect("ready line shape");
    let (addr, graph) = rest.split_once(" (graph: ").expect("graph part");
    assert_eq!(graph, format!("http://{addr}/v1.0)"));
    let (status, health) = control(&format!("http://{addr}/_sim"), Method::GET, "/health", None).await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        None
    })
    .await
    .expect("join");
    assert!(exit.is_some_and(|status| status.success()), "{exit:?}");
}
