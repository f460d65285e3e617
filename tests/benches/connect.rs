//! connect's in-process latency against graph-sim (Graph + Entra) and moto, and the KMS calls
//! one connect costs.
//!
//! Each iteration is a new user: token validation, on-behalf-of, refresh token into the vault
//! (KMS GenerateDataKey), `GET /me/drive`, user and drive records, subscription create (with
//! Graph's validation handshakes against the local notify) and the baseline enqueue.
//!
//! Run: `make bench-connect` (or `cargo bench -p graphfeed-tests --bench connect`).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use graphfeed_tests::TestStack;
use lambda_http::http::{Request, header};
use shared::auth::{AuthConfig, TokenValidator};
use shared::client_state::KeyStore;
use shared::config::{ClientStateKeys, GraphConfig};
use shared::connect::{Connector, DEFAULT_RENEW_WINDOW};
use shared::entra::{EntraClient, EntraConfig};
use shared::graph::GraphClient;
use shared::queue::SqsQueue;
use shared::store::DynamoStore;
use shared::vault::{KmsDynamoVault, VaultConfig};

const USERS: usize = 40;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let stack = TestStack::start().await;
    let env = stack.running.connect_env.clone();
    let clock = shared::clock::system();
    let vault = Arc::new(KmsDynamoVault::from_sdk_config(
        &stack.aws,
        &VaultConfig::from_env(&env).unwrap(),
        clock.clone(),
    ));
    let connector = Connector {
        entra: EntraClient::new(
            EntraConfig::from_env(&env).unwrap(),
            graph_sim::DEFAULT_CLIENT_SECRET.to_owned().into(),
            clock.clone(),
        )
        .unwrap(),
        graph: GraphClient::new(&GraphConfig::from_env(&env).unwrap()).unwrap(),
        vault: vault.clone(),
        store: Arc::new(DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&stack.aws),
            env.get("TABLE_NAME").unwrap(),
        )),
        queue: Arc::new(SqsQueue::new(
            aws_sdk_sqs::Client::new(&stack.aws),
            env.get("NOTIFICATIONS_QUEUE_URL").unwrap(),
        )),
        keys: Arc::new(
            KeyStore::from_config(
                &ClientStateKeys::from_env(&env).unwrap(),
                &stack.aws,
                clock.clone(),
            )
            .await
            .unwrap(),
        ),
        clock: clock.clone(),
        jitter: chrono::Duration::zero(),
        renew_window: DEFAULT_RENEW_WINDOW,
        log: Arc::new(shared::walk_store::DynamoWalkStore::new(
            aws_sdk_dynamodb::Client::new(&stack.aws),
            env.get("TABLE_NAME").unwrap(),
            chrono::Duration::days(7),
            clock.clone(),
        )),
    };
    let validator = TokenValidator::new(
        AuthConfig::from_env(&env).unwrap(),
        reqwest::Client::new(),
        clock.clone(),
    );
    let urls = connect::handler::ConfiguredUrls {
        notification: env.get("NOTIFICATION_URL").map(str::to_owned),
        lifecycle: env.get("LIFECYCLE_NOTIFICATION_URL").map(str::to_owned),
    };
    let connect = connect::Connect::new(validator, connector, urls);

    let mut latencies = Vec::with_capacity(USERS);
    let before = vault.kms_calls();
    for i in 0..USERS {
        let token = stack.sign_in_new_user().token;
        let request = Request::builder()
            .method("POST")
            .uri(format!("{}/connect", stack.running.url()))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(lambda_http::Body::Empty)
            .unwrap();
        let started = Instant::now();
        let response = connect.handle(request).await;
        let took = started.elapsed();
        assert_eq!(
            response.status(),
            200,
            "connect {i} failed: {:?}",
            response.body()
        );
        latencies.push(took);
    }
    let calls = vault.kms_calls().since(before);
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let mean: Duration = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "connect, {USERS} new users, in-process against graph-sim and moto (graph-sim in this process; moto is Python):"
    );
    println!(
        "  latency mean {:.1} ms, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        ms(mean),
        ms(pct(0.5)),
        ms(pct(0.95)),
        ms(pct(1.0))
    );
    println!(
        "  KMS calls per connect: GenerateDataKey {:.2}, Decrypt {:.2}",
        calls.generate_data_key as f64 / USERS as f64,
        calls.decrypt as f64 / USERS as f64
    );
    assert_eq!(
        calls.generate_data_key, USERS as u64,
        "one GenerateDataKey per connect"
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
