//! Latency: real time added to Graph and token-endpoint calls, and only to those.

mod support;

use std::time::{Duration, Instant};

use graph_sim::Latency;
use reqwest::Method;
use serde_json::json;
use support::*;

const FIFTY_MS: Duration = Duration::from_millis(50);

/// How long `call` takes.
async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let result = call.await;
    (result, started.elapsed())
}

/// The quickest of three runs of `call`: an undelayed call can still be slow once on a busy machine.
async fn quickest<F, Fut>(mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let (status, took) = timed(call()).await;
        assert_eq!(status, 200);
        best = best.min(took);
    }
    best
}

#[tokio::test]
async fn graph_and_token_calls_wait_out_the_latency_and_control_calls_do_not() {
    let running = start_sim_with(|config| config.latency = Latency::uniform(FIFTY_MS)).await;
    let user = new_user(&running);
    let refresh_token = running
        .sim()
        .issue_refresh_token(&user.user_id, None, None)
        .expect("refresh token");

    let ((status, _), graph_took) =
        timed(Graph::new(&running, &user.access_token).call(Method::GET, "/me/drive", None)).await;
    let (answer, token_took) = timed(token_request(
        &running,
        &user.tenant_id,
        &refresh_form(&refresh_token),
    ))
    .await;
    // One client, built before the clock starts: building one costs tens of milliseconds.
    let client = http();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.expect("answer").status().as_u16() }
    };
    let control_took = quickest(|| get(format!("{}/health", running.control_url()))).await;
    let jwks_took = quickest(|| {
        get(format!(
            "{}/{}/discovery/v2.0/keys",
            running.authority_host(),
            user.tenant_id
        ))
    })
    .await;

    assert_eq!(status, 200);
    assert!(graph_took >= FIFTY_MS, "Graph answered in {graph_took:?}");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        token_took >= FIFTY_MS,
        "the token endpoint answered in {token_took:?}"
    );
    assert!(control_took < FIFTY_MS, "/_sim answered in {control_took:?}");
    assert!(jwks_took < FIFTY_MS, "JWKS answered in {jwks_took:?}");
}

#[tokio::test]
async fn latency_can_be_changed_at_run_time_through_the_settings() {
    // Long enough that an undelayed call never takes as long, even on a busy machine.
    const LONG: Duration = Duration::from_millis(200);
    let running = start_sim().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    assert_eq!(
        running.sim().settings().latency,
        Latency::default(),
        "no latency unless configured"
    );

    let patched = control_call(
        &running,
        Method::PATCH,
        "/settings",
        Some(json!({"latency_ms": 200, "latency": {"token_ms": 0}})),
    )
    .await;
    let ((status, _), took) = timed(graph.call(Method::GET, "/me/drive", None)).await;

    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["latency"], json!({"graph_ms": 200, "token_ms": 0}));
    assert_eq!(status, 200);
    assert!(took >= LONG, "answered in {took:?}");

    let patched = control_call(
        &running,
        Method::PATCH,
        "/settings",
        Some(json!({"latency": {"token_ms": 20}})),
    )
    .await;
    assert_eq!(patched.body["latency"], json!({"graph_ms": 200, "token_ms": 20}));
    assert_eq!(
        patched.body["auto_reauthorization"], true,
        "the other settings are still there"
    );

    running.sim().set_latency(Latency::default());
    let ((status, _), took) = timed(graph.call(Method::GET, "/me/drive", None)).await;
    assert_eq!(status, 200);
    assert!(took < LONG, "answered in {took:?}");
}

#[tokio::test]
async fn concurrent_calls_wait_side_by_side_not_in_a_queue() {
    let latency = Duration::from_millis(200);
    let running = start_sim_with(|config| config.latency = Latency::uniform(latency)).await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let started = Instant::now();
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let graph = graph.clone();
            tokio::spawn(async move { graph.call(Method::GET, "/me/drive", None).await.0 })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("join"), 200);
    }
    let took = started.elapsed();

    // One after another they would take 32 × 200 ms = 6.4 s.
    assert!(took >= latency, "took {took:?}");
    assert!(took < Duration::from_secs(2), "the calls queued: {took:?}");
}
