//! Test support for graphfeed's integration scenarios: a moto server per test binary, a fresh
//! local stack (uniquely named queues and secrets, from template.yaml) per test, a graph-sim per
//! test, and an HTTP proxy in front of moto that can be told to fail, for fault tests.
//!
//! moto is started through `dev/moto/serve` (moto from `make venv`, with DynamoDB's atomic
//! conditional writes) unless `AWS_ENDPOINT_URL` names one already; a watchdog shell stops it when the test binary exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use local_stack::template::Template;
use local_stack::{Running, ServeConfig};
use shared::client_state::{DEV_CLIENT_STATE_KEY_HEX, KeyRing, LOCAL_KEY_ID};
use shared::clock::OffsetClock;
use shared::config::Env;
use shared::envelope::Envelope;

pub use local_stack::local_parameters;

pub const REGION: &str = "us-east-1";

/// The development key ring, as the local stack stores it.
pub fn dev_ring_json() -> String {
    format!(r#"{{"active":"{LOCAL_KEY_ID}","{LOCAL_KEY_ID}":"{DEV_CLIENT_STATE_KEY_HEX}"}}"#)
}

pub fn dev_ring() -> KeyRing {
    KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).unwrap()
}

/// Quiet logs unless `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        shared::telemetry::init();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {addr} after 10 s");
}

/// The moto endpoint for this test binary.
pub fn moto_endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        if let Ok(e) = std::env::var("AWS_ENDPOINT_URL") {
            return e;
        }
        let bin = std::env::var("MOTO_SERVER")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../dev/moto/serve").to_owned());
        assert!(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/moto_server")).exists() || std::env::var("MOTO_SERVER").is_ok(),
            "moto is not installed in .venv: run `make venv` (or `make test`)"
        );
        let port = free_port();
        // The watchdog stops moto once this test process (the shell's parent) is gone.
        let script = format!(
            "'{bin}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; while kill -0 $PPID 2>/dev/null; do sleep 1; done; kill $m"
        );
        // Never waited on by design: the watchdog outlives no one (it exits right after this
        // process), and a zombie of a process that is exiting costs nothing.
        #[allow(clippy::zombie_processes)]
        let _watchdog = std::process::Command::new("sh").args(["-c", &script]).spawn().expect("spawning moto");
        wait_for(SocketAddr::from(([127, 0, 0, 1], port)));
        format!("http://127.0.0.1:{port}")
    })
}

pub async fn aws_at(endpoint: &str) -> aws_config::SdkConfig {
    local_stack::local_aws(endpoint, REGION).await
}

pub async fn aws() -> aws_config::SdkConfig {
    aws_at(moto_endpoint()).await
}

/// A unique stack name: queues and secrets of one test never meet another's.
pub fn unique_stack() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A local stack serving the template's routes, with its own queues.
pub struct TestStack {
    pub running: Running,
    pub aws: aws_config::SdkConfig,
    pub clock: OffsetClock,
    /// The Graph and Entra the stack's functions talk to.
    pub sim: graph_sim::RunningSim,
}

/// How to start a [`TestStack`].
pub struct StackOptions {
    /// The AWS endpoint notify uses (moto, or a faulty proxy in front of it).
    pub endpoint: String,
    pub overrides: Vec<(String, String)>,
    /// The key secret's value (the dev ring unless set).
    pub key_secret: String,
    pub clock: OffsetClock,
    /// Run process-changes on the notifications queue (off: tests read the queue themselves).
    pub run_process_changes: bool,
    /// Fire renew on this period (off: tests call `running.renew` themselves).
    pub renew_every: Option<Duration>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            endpoint: moto_endpoint().to_owned(),
            overrides: Vec::new(),
            key_secret: dev_ring_json(),
            clock: OffsetClock::new(),
            run_process_changes: false,
            renew_every: None,
        }
    }
}

impl TestStack {
    pub async fn start() -> Self {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Self {
        init_logs();
        let notify_aws = aws_at(&options.endpoint).await;
        let template = Template::repository().unwrap();
        let sim = start_sim(&options.clock).await;
        let overrides = Env::from_pairs(options.overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .with("GRAPH_BASE_URL", &sim.graph_base_url())
            .with("ENTRA_AUTHORITY_HOST", &sim.authority_host());
        let running = local_stack::serve(
            &template,
            ServeConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                stack: unique_stack(),
                region: REGION.into(),
                aws: notify_aws,
                overrides,
                secret_values: BTreeMap::from([("ClientStateKeysSecret".to_owned(), options.key_secret)]),
                parameters: local_parameters(),
                clock: Arc::new(options.clock.clone()),
                run_process_changes: options.run_process_changes,
                renew_every: options.renew_every,
            },
        )
        .await
        .unwrap();
        // Reads go straight to moto, whatever endpoint notify was given.
        let aws = aws().await;
        Self {
            running,
            aws,
            clock: options.clock,
            sim,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    pub fn queue_url(&self) -> String {
        self.running
            .stack
            .reference("NotificationsQueue")
            .unwrap()
            .to_owned()
    }

    /// Everything on the notifications queue now, read as the processor would (and deleted).
    pub async fn drain(&self) -> Vec<Received> {
        drain(&self.aws, &self.queue_url(), Duration::from_millis(300)).await
    }

    /// Everything on the notifications queue now, as SQS returned it (and deleted), for tests
    /// that hand messages to process-changes themselves.
    pub async fn drain_raw(&self) -> Vec<aws_sdk_sqs::types::Message> {
        let sqs = aws_sdk_sqs::Client::new(&self.aws);
        let mut out = Vec::new();
        let mut idle_since = tokio::time::Instant::now();
        while idle_since.elapsed() < Duration::from_millis(300) {
            let got = sqs
                .receive_message()
                .queue_url(self.queue_url())
                .max_number_of_messages(10)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            if got.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            idle_since = tokio::time::Instant::now();
            for m in got {
                sqs.delete_message()
                    .queue_url(self.queue_url())
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
                out.push(m);
            }
        }
        out
    }

    /// Waits up to `timeout` until at least `count` messages arrived; returns all read.
    pub async fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut all = Vec::new();
        while all.len() < count && tokio::time::Instant::now() < deadline {
            all.extend(self.drain().await);
        }
        all
    }
}

/// Reads (and deletes) change events from the changes queue at `url`, as a downstream consumer
/// would, until `done` holds or `timeout` passes.
pub async fn read_changes(
    aws: &aws_config::SdkConfig,
    url: &str,
    timeout: Duration,
    mut done: impl FnMut(&[shared::changes::ChangeEvent]) -> bool,
) -> Vec<shared::changes::ChangeEvent> {
    let sqs = aws_sdk_sqs::Client::new(aws);
    let deadline = std::time::Instant::now() + timeout;
    let mut events = Vec::new();
    while !done(&events) && std::time::Instant::now() < deadline {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in got.messages.unwrap_or_default() {
            events.push(serde_json::from_str(m.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    events
}

/// A user graph-sim created, with their access token for graphfeed's API (valid for an hour).
pub struct SignedInUser {
    pub created: graph_sim::CreatedUser,
    pub token: String,
}

impl TestStack {
    /// A new simulated user, signed in: what a client app holds before `POST /connect`.
    pub fn sign_in_new_user(&self) -> SignedInUser {
        let created = self.sim.sim().create_user(graph_sim::NewUser::default()).unwrap();
        let token = self
            .sim
            .sim()
            .mint_api_token(&graph_sim::ApiToken::new(created.user_id.clone()))
            .unwrap()
            .token;
        SignedInUser { created, token }
    }
}

impl TestStack {
    /// Connects `user` through `POST /connect` (asserting 200) and returns their drive key.
    pub async fn connect(&self, user: &SignedInUser) -> shared::ids::DriveKey {
        let response = reqwest::Client::new()
            .post(self.url("/connect"))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "POST /connect");
        let body: serde_json::Value = response.json().await.unwrap();
        shared::ids::DriveKey::parse(body["drive_key"].as_str().unwrap()).unwrap()
    }

    /// The live subscriptions `user` made in graph-sim.
    pub fn live_subscriptions(&self, user: &SignedInUser) -> Vec<graph_sim::Subscription> {
        self.sim
            .sim()
            .subscriptions()
            .into_iter()
            .filter(|s| s.creator_id == user.created.user_id)
            .collect()
    }

    /// The changes queue's URL (graphfeed's output).
    pub fn changes_queue(&self) -> String {
        self.running.stack.reference("ChangesQueue").unwrap().to_owned()
    }

    /// Reads (and deletes) change events from the changes queue, as a downstream consumer would,
    /// until `done` holds or `timeout` passes.
    pub async fn read_changes(
        &self,
        timeout: Duration,
        done: impl FnMut(&[shared::changes::ChangeEvent]) -> bool,
    ) -> Vec<shared::changes::ChangeEvent> {
        read_changes(&self.aws, &self.changes_queue(), timeout, done).await
    }

    /// Creates a 5-byte file at the root of `user`'s drive; returns its item id.
    pub fn new_file(&self, user: &SignedInUser, name: &str) -> String {
        self.sim
            .sim()
            .create_item(
                &user.created.drive_id,
                &graph_sim::NewItem {
                    parent_id: None,
                    name: name.into(),
                    folder: false,
                    size: 5,
                },
            )
            .unwrap()
            .id
    }

    /// The connection store process-changes uses (moto).
    pub fn drive_store(&self) -> shared::store::DynamoStore {
        shared::store::DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&self.aws),
            self.running.process_env.get("TABLE_NAME").unwrap(),
        )
    }

    /// The walk store process-changes uses (moto): index, log, cursor.
    pub fn walk_store(&self) -> shared::walk_store::DynamoWalkStore {
        shared::walk_store::DynamoWalkStore::new(
            aws_sdk_dynamodb::Client::new(&self.aws),
            self.running.process_env.get("TABLE_NAME").unwrap(),
            chrono::Duration::days(7),
            shared::clock::system(),
        )
    }
}

/// A message read from the notifications queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub envelope: Envelope,
    pub group_id: String,
    pub dedup_id: String,
}

/// Receives and deletes until the queue has been empty for `quiet`.
pub async fn drain(aws: &aws_config::SdkConfig, queue_url: &str, quiet: Duration) -> Vec<Received> {
    let sqs = aws_sdk_sqs::Client::new(aws);
    let mut out = Vec::new();
    let mut idle_since = tokio::time::Instant::now();
    while idle_since.elapsed() < quiet {
        let got = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .visibility_timeout(30)
            .send()
            .await
            .unwrap();
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        idle_since = tokio::time::Instant::now();
        for m in messages {
            let attrs = m.attributes.clone().unwrap_or_default();
            out.push(Received {
                envelope: Envelope::from_json(m.body().unwrap()).unwrap(),
                group_id: attrs
                    .get(&MessageSystemAttributeName::MessageGroupId)
                    .cloned()
                    .unwrap_or_default(),
                dedup_id: attrs
                    .get(&MessageSystemAttributeName::MessageDeduplicationId)
                    .cloned()
                    .unwrap_or_default(),
            });
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    out
}

/// A graph-sim on a free port, sharing `clock`, accepting http on loopback.
pub async fn start_sim(clock: &OffsetClock) -> graph_sim::RunningSim {
    start_sim_with(clock, graph_sim::Timing::fast()).await
}

/// A graph-sim with the given timing.
pub async fn start_sim_with(clock: &OffsetClock, timing: graph_sim::Timing) -> graph_sim::RunningSim {
    let config = graph_sim::SimConfig {
        allow_http_loopback: true,
        clock: clock.clone(),
        timing,
        ..Default::default()
    };
    graph_sim::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap()
}

/// An HTTP proxy in front of moto that answers 503 to everything while `failing` is set: SQS
/// (and everything else behind it) is down as far as the client can tell.
pub struct FaultyProxy {
    pub endpoint: String,
    failing: Arc<AtomicBool>,
    calls: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
}

#[derive(Clone)]
struct ProxyState {
    client: reqwest::Client,
    target: String,
    failing: Arc<AtomicBool>,
    calls: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
}

impl FaultyProxy {
    pub async fn start(target: &str) -> Self {
        let failing = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let state = ProxyState {
            client: reqwest::Client::new(),
            target: target.to_owned(),
            failing: failing.clone(),
            calls: calls.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            endpoint,
            failing,
            calls,
        }
    }

    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// The AWS calls forwarded since the last take, by operation (`X-Amz-Target`, e.g.
    /// `DynamoDB_20120810.GetItem`, `TrentService.Decrypt`, `AmazonSQS.SendMessageBatch`).
    pub fn take_calls(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

async fn forward(
    axum::extract::State(state): axum::extract::State<ProxyState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.failing.load(Ordering::SeqCst) {
        let body = r#"{"__type":"com.amazonaws.sqs#ServiceUnavailable","message":"injected fault"}"#;
        return (
            http::StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "application/x-amz-json-1.0")],
            body,
        )
            .into_response();
    }
    let (parts, body) = request.into_parts();
    let operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(other)")
        .to_owned();
    *state.calls.lock().unwrap().entry(operation).or_default() += 1;
    let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut outgoing = state
        .client
        .request(parts.method.clone(), format!("{}{path}", state.target))
        .body(bytes);
    for (name, value) in &parts.headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            outgoing = outgoing.header(name, value);
        }
    }
    match outgoing.send().await {
        Ok(r) => {
            let status = r.status();
            let headers = r.headers().clone();
            let body = r.bytes().await.unwrap_or_default();
            let mut response = (status, body).into_response();
            for (name, value) in &headers {
                if name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        Err(_) => http::StatusCode::BAD_GATEWAY.into_response(),
    }
}
