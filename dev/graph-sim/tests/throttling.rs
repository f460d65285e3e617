//! Throttling (graph-protocol.md §8, §10 item 13): 429/503/509 with OneDrive's bodies and
//! Retry-After for a tenant or a drive, penalties for ignoring Retry-After, and the counters.

mod support;

use chrono::Duration;
use graph_sim::errors::{MSG_BANDWIDTH_LIMIT, MSG_SERVICE_NOT_AVAILABLE, MSG_THROTTLED};
use graph_sim::{NewUser, Throttle};
use reqwest::Method;
use serde_json::json;
use support::*;

fn throttle(
    tenant_id: &str,
    drive_id: Option<&str>,
    status: u16,
    retry_after: Option<u64>,
    seconds: i64,
) -> Throttle {
    Throttle {
        tenant_id: tenant_id.to_owned(),
        drive_id: drive_id.map(str::to_owned),
        status,
        retry_after,
        for_duration: Duration::seconds(seconds),
    }
}

#[tokio::test]
async fn a_throttled_tenant_gets_429_with_retry_after_on_delta_items_and_subscriptions() {
    let running = start_sim().await;
    let hook = Receiver::start().await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let (status, created) = graph
        .create(subscription_body(&running, "me/drive/root", &hook.url("/"), 600))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let sim = running.sim();
    sim.throttle(throttle(&user.tenant_id, None, 429, Some(60), 600))
        .expect("throttle");
    let base = running.graph_base_url();
    let calls = [
        (Method::GET, format!("{base}/me/drive/root/delta"), None),
        (
            Method::GET,
            format!("{base}/drives/{}/items/{}", user.drive_id, user.root_id),
            None,
        ),
        (
            Method::POST,
            format!("{base}/subscriptions"),
            Some(subscription_body(&running, "me/drive/root", &hook.url("/b"), 600)),
        ),
        (
            Method::PATCH,
            format!("{base}/subscriptions/{id}"),
            Some(json!({"expirationDateTime": (sim.now() + Duration::hours(20)).to_rfc3339()})),
        ),
    ];

    for (method, url, body) in calls {
        let answer = send(method, &url, Some(&user.access_token), body).await;
        assert_eq!(answer.status, 429, "{url}: {}", answer.body);
        assert_eq!(answer.body["error"]["code"], "activityLimitReached");
        assert_eq!(answer.body["error"]["message"], MSG_THROTTLED);
        assert_eq!(answer.body["error"]["innerError"]["code"], "throttledRequest");
        assert!(answer.body["error"]["innerError"]["request-id"].is_string());
        assert_eq!(answer.header("retry-after"), Some("60"));
        sim.advance(Duration::seconds(60));
    }

    let counters = sim.counters();
    assert_eq!((counters.throttled_answers, counters.throttle_violations), (4, 0));
    assert_eq!(sim.subscriptions().len(), 1, "nothing was created");
    // 240 s passed; the last 360 s end with a Retry-After of the remaining time at most.
    sim.advance(Duration::seconds(300));
    let last = send(
        Method::GET,
        &format!("{base}/me/drive"),
        Some(&user.access_token),
        None,
    )
    .await;
    assert_eq!((last.status, last.header("retry-after")), (429, Some("60")));
    sim.advance(Duration::seconds(60));
    let free = send(
        Method::GET,
        &format!("{base}/me/drive"),
        Some(&user.access_token),
        None,
    )
    .await;
    assert_eq!(free.status, 200, "{}", free.body);
    assert!(sim.throttles().is_empty());
}

#[tokio::test]
async fn ignoring_retry_after_counts_a_violation_and_extends_the_throttle_by_half() {
    let running = start_sim().await;
    let user = new_user(&running);
    let sim = running.sim();
    let started = sim.now();
    sim.throttle(throttle(&user.tenant_id, None, 503, Some(0), 100))
        .expect("throttle");
    let delta = format!("{}/me/drive/root/delta", running.graph_base_url());

    let first = send(Method::GET, &delta, Some(&user.access_token), None).await;
    let impatient = send(Method::GET, &delta, Some(&user.access_token), None).await;

    assert_eq!(first.status, 503);
    assert_eq!(first.body["error"]["code"], "serviceNotAvailable");
    assert_eq!(first.body["error"]["message"], MSG_SERVICE_NOT_AVAILABLE);
    assert_eq!(first.header("retry-after"), Some("100"));
    assert_eq!(impatient.header("retry-after"), Some("150"), "penalty: +50 s");
    assert_eq!(sim.counters().throttle_violations, 1);
    let status = sim.throttles().remove(0);
    assert_eq!((status.violations, status.answered), (1, 2));
    // The sim clock also runs in real time: allow a second of it.
    let lasts = (status.until - started).num_milliseconds();
    assert!((150_000..151_000).contains(&lasts), "{lasts} ms");

    sim.advance(Duration::seconds(150));
    let after = send(Method::GET, &delta, Some(&user.access_token), None).await;
    assert_eq!(after.status, 200, "waited as told: {}", after.body);
    assert_eq!(sim.counters().throttle_violations, 1);
}

#[tokio::test]
async fn a_drive_throttle_spares_the_tenants_other_drives_and_509_has_no_retry_after_without_one() {
    let running = start_sim().await;
    let sim = running.sim();
    let user = new_user(&running);
    let colleague = sim
        .create_user(NewUser {
            tenant_id: Some(user.tenant_id.clone()),
            ..Default::default()
        })
        .expect("colleague");
    let stranger = new_user(&running);
    sim.throttle(throttle(&user.tenant_id, Some(&user.drive_id), 509, None, 60))
        .expect("throttle");
    let delta = |drive: &str| format!("{}/drives/{drive}/root/delta", running.graph_base_url());

    let throttled = send(
        Method::GET,
        &delta(&user.drive_id),
        Some(&user.access_token),
        None,
    )
    .await;
    let again = send(
        Method::GET,
        &delta(&user.drive_id),
        Some(&user.access_token),
        None,
    )
    .await;

    assert_eq!(throttled.status, 509);
    assert_eq!(throttled.body["error"]["code"], "bandwidthLimitExceeded");
    assert_eq!(throttled.body["error"]["message"], MSG_BANDWIDTH_LIMIT);
    assert_eq!(throttled.header("retry-after"), None);
    assert_eq!(again.status, 509);
    assert_eq!(
        sim.counters().throttle_violations,
        0,
        "no Retry-After, no violation"
    );
    for other in [&colleague, &stranger] {
        let answer = send(
            Method::GET,
            &delta(&other.drive_id),
            Some(&other.access_token),
            None,
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let unauthenticated = send(Method::GET, &delta(&user.drive_id), None, None).await;
    assert_eq!(unauthenticated.status, 401);
    assert!(
        sim.throttle(throttle(&stranger.tenant_id, Some(&user.drive_id), 429, None, 60))
            .is_err(),
        "the drive must be the tenant's"
    );
    assert!(
        sim.throttle(throttle(&user.tenant_id, None, 500, None, 60))
            .is_err()
    );
}

#[tokio::test]
async fn delta_calls_are_counted_per_drive_whatever_the_answer() {
    let running = start_sim().await;
    let user = new_user(&running);
    let other = new_user(&running);
    let sim = running.sim();
    let base = running.graph_base_url();
    let token = Some(user.access_token.as_str());

    let first = send(Method::GET, &format!("{base}/me/drive/root/delta"), token, None).await;
    let latest = send(
        Method::GET,
        &format!("{base}/drives/{}/root/delta?token=latest", user.drive_id),
        token,
        None,
    )
    .await;
    let link = latest.body["@odata.deltaLink"]
        .as_str()
        .expect("deltaLink")
        .to_owned();
    sim.expire_delta_tokens(&user.drive_id).expect("expire");
    let gone = send(Method::GET, &link, token, None).await;
    sim.throttle(throttle(&user.tenant_id, None, 429, Some(5), 60))
        .expect("throttle");
    let throttled = send(Method::GET, &format!("{base}/me/drive/root/delta"), token, None).await;
    send(Method::GET, &format!("{base}/me/drive"), token, None).await;
    send(
        Method::GET,
        &format!("{base}/me/drive/root/delta"),
        Some(&other.access_token),
        None,
    )
    .await;

    assert_eq!(
        (first.status, latest.status, gone.status, throttled.status),
        (200, 200, 410, 429)
    );
    let counters = sim.counters();
    assert_eq!(counters.delta_calls_by_drive.get(&user.drive_id), Some(&4));
    assert_eq!(counters.delta_calls_by_drive.get(&other.drive_id), Some(&1));
    assert_eq!(counters.delta_resyncs, 1);
    assert_eq!(counters.throttled_answers, 2, "the delta call and /me/drive");
    assert_eq!(
        counters.throttle_violations, 1,
        "/me/drive came before the Retry-After"
    );
}

#[tokio::test]
async fn throttles_are_started_listed_and_cleared_over_http() {
    let running = start_sim().await;
    let user = new_user(&running);

    let started = control_call(
        &running,
        Method::POST,
        "/throttles",
        Some(json!({"tenant_id": user.tenant_id, "drive_id": user.drive_id, "status": 429, "retry_after": 30, "for_seconds": 90})),
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.body);
    assert_eq!(started.body["status"], 429);
    assert_eq!(started.body["drive_id"], user.drive_id.as_str());
    let listed = control_call(&running, Method::GET, "/throttles", None).await;
    assert_eq!(listed.body["value"].as_array().map(Vec::len), Some(1));
    let answer = send(
        Method::GET,
        &format!("{}/me/drive/root/delta", running.graph_base_url()),
        Some(&user.access_token),
        None,
    )
    .await;
    assert_eq!((answer.status, answer.header("retry-after")), (429, Some("30")));
    let counters = control_call(&running, Method::GET, "/counters", None).await;
    assert_eq!(counters.body["throttled_answers"], 1);
    assert_eq!(counters.body["throttle_violations"], 0);
    assert_eq!(counters.body["delta_calls_by_drive"][&user.drive_id], 1);

    let bad = control_call(
        &running,
        Method::POST,
        "/throttles",
        Some(json!({"tenant_id": user.tenant_id, "status": 418, "for_seconds": 5})),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        control_call(&running, Method::DELETE, "/throttles", None)
            .await
            .status,
        204
    );
    assert!(running.sim().throttles().is_empty());
}
