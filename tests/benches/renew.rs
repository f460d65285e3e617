//! renew's benchmark (`make bench-renew`):
//!
//! 1. **A fleet due at once.** 10,000 subscriptions in 100 tenants, all inside the renewal window,
//!    in graph-sim run as its own process (the release binary) with 50 ms added to every Graph
//!    and token call; the stores and the token vault in memory. One run with renew's production
//!    settings (64 in flight, at most 200 renewals a second, 40 a second per tenant) and Lambda's
//!    300 s timeout as its deadline. Reports the time (target: within 60 s, one invocation) and
//!    the peak heap beyond the stores (target: at most 128 MB).
//! 2. **AWS calls per renewal.** The real adapters (DynamoDB, the KMS vault, SQS, Secrets
//!    Manager) against moto, through a proxy that counts each call by operation: users connected
//!    through `POST /connect`, 27 days on, one renew run.
//!
//! Needs `target/release/graph-sim` (`make bench-renew` builds it) and moto (`make venv`).
//! Run by `cargo test --all-targets` (without `--bench`), it is a quick smoke run instead: 300
//! subscriptions, an in-process graph-sim, the same assertions, no figures worth quoting.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark binary: a panic is the report

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use graphfeed_tests::bench::{SimProcess, start_in_process_sim, start_sim};
use graphfeed_tests::{FaultyProxy, StackOptions, TestStack};
use peak_alloc::PeakAlloc;
use secrecy::SecretString;
use shared::config::GraphConfig;
use shared::connect::NotificationUrls;
use shared::entra::{EntraClient, EntraConfig};
use shared::graph::GraphClient;
use shared::ids::{DriveKey, ObjectId, TenantId, UserKey};
use shared::queue::MemoryQueue;
use shared::renew::{RenewSettings, Renewer};
use shared::store::{ConnectionStore, DriveState, DriveStatus, MemoryStore, SubscriptionRecord, UserRecord};
use shared::tokens::RefreshingTokens;
use shared::vault::{MemoryVault, TokenVault};
use shared::walk_store::MemoryWalkStore;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

const LATENCY_MS: u64 = 50;

struct Member {
    user: UserKey,
    drive_id: String,
    drive_key: DriveKey,
    refresh_token: String,
}

async fn json(http: &reqwest::Client, url: String, body: serde_json::Value) -> serde_json::Value {
    http.post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `count` users in `tenants` tenants, each with a refresh token, made through the control API.
async fn members(http: &reqwest::Client, base: &str, count: usize, tenants: usize) -> Vec<Member> {
    let mut tenant_ids = Vec::new();
    for _ in 0..tenants {
        let first = json(http, format!("{base}/_sim/users"), serde_json::json!({})).await;
        tenant_ids.push(first["tenant_id"].as_str().unwrap().to_owned());
    }
    futures::stream::iter(0..count)
        .map(|n| {
            let tenant = tenant_ids[n % tenants].clone();
            async move {
                let user = json(
                    http,
                    format!("{base}/_sim/users"),
                    serde_json::json!({"tenant_id": tenant}),
                )
                .await;
                let user_id = user["user_id"].as_str().unwrap().to_owned();
                let issued = json(
                    http,
                    format!("{base}/_sim/users/{user_id}/refresh-token"),
                    serde_json::json!({}),
                )
                .await;
                Member {
                    user: UserKey::new(
                        TenantId::parse(&tenant).unwrap(),
                        ObjectId::parse(&user_id).unwrap(),
                    ),
                    drive_id: user["drive_id"].as_str().unwrap().to_owned(),
                    drive_key: DriveKey::random(),
                    refresh_token: issued["refresh_token"].as_str().unwrap().to_owned(),
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

async fn fleet(http: &reqwest::Client, sim: &SimProcess, full: bool) {
    let (count, tenants) = if full { (10_000, 100) } else { (300, 10) };
    let base = &sim.base;
    http.patch(format!("{base}/_sim/settings"))
        .json(&serde_json::json!({"latency_ms": LATENCY_MS}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let setup = Instant::now();
    let members = members(http, base, count, tenants).await;
    let ring = graphfeed_tests::dev_ring();
    let urls = NotificationUrls {
        notification: "https://graphfeed.example/notifications".into(),
        lifecycle: "https://graphfeed.example/lifecycle".into(),
    };
    // Every subscription due: 2 days left, inside the 72-hour window.
    let expiry = chrono::Utc::now() + chrono::Duration::days(2);
    let seeds: Vec<serde_json::Value> = members
        .iter()
        .map(|m| {
            serde_json::json!({
                "user_id": m.user.object.as_str(),
                "tenant_id": m.user.tenant.as_str(),
                "resource": "me/drive/root",
                "notification_url": urls.notification,
                "lifecycle_notification_url": urls.lifecycle,
                "client_state": ring.mint(&m.user.tenant, &m.drive_key).expose(),
                "expiration_date_time": expiry.to_rfc3339(),
            })
        })
        .collect();
    let seeded = json(
        http,
        format!("{base}/_sim/subscriptions/seed"),
        serde_json::json!({ "subscriptions": seeds }),
    )
    .await;
    let seeded = seeded["value"].as_array().unwrap();
    assert_eq!(seeded.len(), count);

    let store = Arc::new(MemoryStore::new());
    let vault = Arc::new(MemoryVault::new());
    let now = chrono::Utc::now();
    for (m, sub) in members.iter().zip(seeded) {
        store
            .create_user(
                &m.user,
                &UserRecord {
                    drive_key: m.drive_key,
                    drive_id: m.drive_id.clone(),
                    drive_type: "personal".into(),
                    created_at: now,
                },
            )
            .await
            .unwrap();
        store
            .put_drive(&DriveState {
                state: DriveStatus::Active,
                delta_link: Some(format!("{base}/v1.0/drives/{}/root/delta?token=x", m.drive_id)),
                last_walk_completed_at: Some(now),
                connected_at: Some(now),
                ..DriveState::first(
                    m.drive_key,
                    m.user.tenant.as_str(),
                    m.user.object.as_str(),
                    &m.drive_id,
                )
            })
            .await
            .unwrap();
        store
            .put_subscription(&SubscriptionRecord::first(
                m.drive_key,
                sub["id"].as_str().unwrap(),
                sub["expiration"].as_str().unwrap().parse().unwrap(),
                shared::client_state::LOCAL_KEY_ID,
                "me/drive/root",
                1,
            ))
            .await
            .unwrap();
        vault
            .store(&m.user, &SecretString::from(m.refresh_token.clone()), None)
            .await
            .unwrap();
    }
    let setup = setup.elapsed();

    let clock = shared::clock::system();
    let entra = EntraClient::new(
        EntraConfig {
            authority_host: base.parse().unwrap(),
            tenant: "organizations".into(),
            client_id: graph_sim::DEFAULT_APP_ID.into(),
            scopes: "offline_access Files.Read.All".into(),
        },
        SecretString::from(graph_sim::DEFAULT_CLIENT_SECRET.to_owned()),
        clock.clone(),
    )
    .unwrap();
    let renewer = Renewer {
        graph: GraphClient::new(&GraphConfig {
            base_url: format!("{base}/v1.0").parse().unwrap(),
            timeout: Duration::from_secs(30),
        })
        .unwrap(),
        store: store.clone(),
        fleet: store.clone(),
        throttles: Arc::new(MemoryWalkStore::new()),
        keys: Arc::new(shared::client_state::KeyStore::fixed(ring, clock.clone())),
        tokens: Arc::new(RefreshingTokens::new(
            Arc::new(entra),
            vault.clone(),
            clock.clone(),
        )),
        queue: Arc::new(MemoryQueue::new()),
        clock,
        urls,
        settings: RenewSettings::default(),
    };

    let before = HEAP.current_usage();
    HEAP.reset_peak_usage();
    let started = Instant::now();
    // Lambda's timeout for renew (template.yaml): 300 s.
    let summary = renewer.run(Instant::now() + Duration::from_secs(300)).await;
    let elapsed = started.elapsed();
    let peak = HEAP.peak_usage().saturating_sub(before);
    assert_eq!(
        (summary.due, summary.renewed, summary.failures()),
        (count as u64, count as u64, 0),
        "{summary:?}"
    );
    assert!(summary.complete);
    let counters: serde_json::Value = http
        .get(format!("{base}/_sim/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patches = counters["graph_calls"]["PATCH /v1.0/subscriptions/{id}"]
        .as_u64()
        .unwrap();
    assert_eq!(patches, count as u64, "one PATCH per subscription");
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "renewing {count} due subscriptions in {tenants} tenants (graph-sim in its own process, +{LATENCY_MS} ms per Graph and token call, stores in memory; setup {:.1} s)",
        setup.as_secs_f64()
    );
    println!(
        "  time:           {:.1} s in one run   (target <= 60 s)",
        elapsed.as_secs_f64()
    );
    println!(
        "  renewals/s:     {:.0}   (paced at {} per second, Graph allows 250)",
        count as f64 / elapsed.as_secs_f64(),
        RenewSettings::default().max_per_second
    );
    println!(
        "  peak heap:      {:.1} MiB beyond the stores   (target <= 128 MB)",
        mib(peak)
    );
    println!(
        "  Graph calls:    {patches} PATCH, {} token",
        counters["token_requests"]["refresh_token"]
    );
}

async fn aws_calls(full: bool) {
    let users = if full { 40 } else { 4 };
    let proxy = FaultyProxy::start(graphfeed_tests::moto_endpoint()).await;
    let stack = TestStack::start_with(StackOptions {
        endpoint: proxy.endpoint.clone(),
        ..StackOptions::default()
    })
    .await;
    for _ in 0..users {
        let user = stack.sign_in_new_user();
        stack.connect(&user).await;
    }
    // Keep the safety net out of the count: every drive walked an hour ago.
    let store = stack.drive_store();
    stack.clock.advance(chrono::Duration::days(27));
    let walked = stack.sim.sim().now() - chrono::Duration::hours(1);
    let table = stack.running.renew_env.get("TABLE_NAME").unwrap().to_owned();
    let ddb = aws_sdk_dynamodb::Client::new(&stack.aws);
    let drives = ddb
        .scan()
        .table_name(&table)
        .filter_expression("sk = :state")
        .expression_attribute_values(
            ":state",
            aws_sdk_dynamodb::types::AttributeValue::S("STATE".into()),
        )
        .send()
        .await
        .unwrap();
    for item in drives.items.unwrap_or_default() {
        let key = match item.get("drive_key") {
            Some(aws_sdk_dynamodb::types::AttributeValue::S(k)) => DriveKey::parse(k).unwrap(),
            _ => continue,
        };
        let mut state = store.drive(&key).await.unwrap().unwrap();
        state.last_walk_completed_at = Some(walked);
        state.version += 1;
        store.put_drive(&state).await.unwrap();
    }
    proxy.take_calls();
    let summary = stack
        .running
        .renew
        .handle(serde_json::json!({}), Instant::now() + Duration::from_secs(300))
        .await;
    let calls = proxy.take_calls();
    assert_eq!(
        (summary.renewed, summary.failures()),
        (users as u64, 0),
        "{summary:?}"
    );
    let total: u64 = calls.values().sum();
    println!("AWS calls of one renew run renewing {users} subscriptions (real adapters on moto):");
    for (operation, n) in &calls {
        println!(
            "  {operation:<40} {n:>5}   {:.2} per renewal",
            *n as f64 / users as f64
        );
    }
    println!(
        "  {:<40} {total:>5}   {:.2} per renewal (the run's index reads included)",
        "total",
        total as f64 / users as f64
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this as a smoke test.
    let full = std::env::args().any(|a| a == "--bench");
    let http = reqwest::Client::new();
    let sim = if full {
        start_sim(&[])
    } else {
        start_in_process_sim().await
    };
    fleet(&http, &sim, full).await;
    aws_calls(full).await;
}
