//! The walker's benchmark (`make bench-walk`):
//!
//! 1. **Enumeration.** A 100,000-item drive in graph-sim, run as its own process (the release
//!    binary, 200 items per delta page as OneDrive sends), walked as a baseline over loopback with
//!    the index, log and drive state in memory. Reports items per second, and the walker's peak
//!    heap beyond what it keeps (the index and log it holds): pages are streamed, not collected.
//! 2. **DynamoDB cost.** The real DynamoDB adapter against moto: a 2,000-item baseline, then 1,000
//!    items changed and walked incrementally. Reports DynamoDB write calls and items written per
//!    changed item (index writes are batched 25 per call, log entries 100 per transaction).
//!
//! Needs `target/release/graph-sim` (`make bench-walk` builds it) and moto (`make venv`).
//! Run by `cargo test --all-targets` (without `--bench`), it is a quick smoke run instead: a
//! 2,000-item drive from an in-process graph-sim, the same assertions, no figures worth quoting.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark binary: a panic is the report

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use peak_alloc::PeakAlloc;
use secrecy::SecretString;
use shared::config::GraphConfig;
use shared::graph::GraphClient;
use shared::ids::{DriveKey, UserKey};
use shared::queue::MemoryQueue;
use shared::store::{ConnectionStore, DriveState, MemoryStore, StoreError, SubscriptionRecord, UserRecord};
use shared::tokens::StaticToken;
use shared::walk_store::{DynamoWalkStore, MemoryWalkStore, Scope, WalkStore};
use shared::walker::{WalkLimits, WalkOutcome, WalkStats, Walker};

use graphfeed_tests::bench::{SimProcess, SimUser, new_user, start_in_process_sim, start_sim};

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

/// Items and folders of the enumerated drive: the benchmark's, or the smoke run's.
fn sizes(full: bool) -> (usize, usize) {
    if full { (100_000, 2_000) } else { (2_000, 100) }
}

async fn populate(http: &reqwest::Client, base: &str, drive_id: &str, files: usize, folders: usize) {
    http.post(format!("{base}/_sim/drives/{drive_id}/populate"))
        .json(&serde_json::json!({"files": files, "folders": folders, "seed": 7}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

fn drive_state(user: &SimUser, drive_key: DriveKey) -> DriveState {
    DriveState::first(drive_key, &user.tenant_id, &user.user_id, &user.drive_id)
}

fn walker(base: &str, user: &SimUser, drives: Arc<dyn ConnectionStore>, data: Arc<dyn WalkStore>) -> Walker {
    Walker {
        graph: GraphClient::new(&GraphConfig {
            base_url: format!("{base}/v1.0").parse().unwrap(),
            timeout: Duration::from_secs(30),
        })
        .unwrap(),
        tokens: Arc::new(StaticToken(SecretString::from(user.access_token.clone()))),
        drives,
        data,
        changes: Arc::new(MemoryQueue::new()),
        clock: shared::clock::system(),
        limits: WalkLimits::default(),
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

async fn enumeration(http: &reqwest::Client, sim: &SimProcess, full: bool) {
    let (items, folders) = sizes(full);
    let user = new_user(http, &sim.base).await;
    populate(http, &sim.base, &user.drive_id, items - folders - 1, folders).await;
    let drive_key = DriveKey::random();
    let drives = Arc::new(MemoryStore::new());
    drives.put_drive(&drive_state(&user, drive_key)).await.unwrap();
    let data = Arc::new(MemoryWalkStore::new());
    let walker = walker(&sim.base, &user, drives.clone(), data.clone());
    let before = HEAP.current_usage();
    HEAP.reset_peak_usage();
    let started = Instant::now();
    let outcome = walker
        .walk(&drive_key, far(), &mut WalkStats::default())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let peak = HEAP.peak_usage();
    let kept = HEAP.current_usage().saturating_sub(before);
    let scope = Scope {
        drive_key: &drive_key,
        generation: 1,
    };
    let indexed = data.index_len(scope);
    let WalkOutcome::Completed { pages, .. } = outcome else {
        panic!("the walk did not complete: {outcome:?}");
    };
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "enumeration of a {indexed}-item drive (graph-sim in its own process, 200 items per page, stores in memory)"
    );
    println!("  pages:                 {pages}");
    println!("  time:                  {:.2} s", elapsed.as_secs_f64());
    println!(
        "  items per second:      {:.0}   (target >= 20,000)",
        indexed as f64 / elapsed.as_secs_f64()
    );
    println!("  index + log kept:      {:.1} MiB", mib(kept));
    println!(
        "  peak beyond the index: {:.1} MiB   (target <= 64 MiB; peak heap {:.1} MiB less what the walk kept)",
        mib(peak.saturating_sub(before).saturating_sub(kept)),
        mib(peak.saturating_sub(before))
    );
    assert_eq!(indexed, items, "every item of the drive is in the index");
}

/// Counts drive-state writes (the checkpoint and the commit) around the real DynamoDB store.
struct CountingDrives {
    inner: shared::store::DynamoStore,
    puts: AtomicU64,
}

impl ConnectionStore for CountingDrives {
    fn user(&self, user: &UserKey) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>> {
        self.inner.user(user)
    }
    fn create_user<'a>(
        &'a self,
        user: &'a UserKey,
        record: &'a UserRecord,
    ) -> BoxFuture<'a, Result<UserRecord, StoreError>> {
        self.inner.create_user(user, record)
    }
    fn drive(&self, drive_key: &DriveKey) -> BoxFuture<'_, Result<Option<DriveState>, StoreError>> {
        self.inner.drive(drive_key)
    }
    fn put_drive<'a>(&'a self, next: &'a DriveState) -> BoxFuture<'a, Result<(), StoreError>> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.put_drive(next)
    }
    fn subscription(
        &self,
        drive_key: &DriveKey,
    ) -> BoxFuture<'_, Result<Option<SubscriptionRecord>, StoreError>> {
        self.inner.subscription(drive_key)
    }
    fn put_subscription<'a>(&'a self, next: &'a SubscriptionRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.put_subscription(next)
    }
    fn delete_subscription<'a>(&'a self, drive_key: &'a DriveKey) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete_subscription(drive_key)
    }
    fn delete_subscription_version<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        version: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete_subscription_version(drive_key, version)
    }
}

async fn dynamodb_cost(http: &reqwest::Client, sim: &SimProcess, full: bool) {
    let changes = if full { 1_000 } else { 100 };
    let aws = graphfeed_tests::aws().await;
    let ddb = aws_sdk_dynamodb::Client::new(&aws);
    let table = format!("bench-walk-{}", graphfeed_tests::unique_stack());
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    ddb.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("sk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("sk")
                .key_type(KeyType::Range)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let user = new_user(http, &sim.base).await;
    populate(http, &sim.base, &user.drive_id, 1_900, 100).await;
    let drive_key = DriveKey::random();
    let drives = Arc::new(CountingDrives {
        inner: shared::store::DynamoStore::new(ddb.clone(), table.clone()),
        puts: AtomicU64::new(0),
    });
    drives.put_drive(&drive_state(&user, drive_key)).await.unwrap();
    let data = Arc::new(DynamoWalkStore::new(
        ddb,
        table,
        chrono::Duration::days(7),
        shared::clock::system(),
    ));
    let walker = walker(&sim.base, &user, drives.clone(), data.clone());
    walker
        .walk(&drive_key, far(), &mut WalkStats::default())
        .await
        .unwrap();
    // Change 1,000 files' content (100 in the smoke run).
    let scope = Scope {
        drive_key: &drive_key,
        generation: 1,
    };
    let files: Vec<String> = data
        .index_all(scope)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.item.folder && !e.item.root)
        .map(|e| e.item.id)
        .take(changes)
        .collect();
    for id in &files {
        http.post(format!(
            "{}/_sim/drives/{}/items/{id}/modify",
            sim.base, user.drive_id
        ))
        .json(&serde_json::json!({"size": 42}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    }
    let counters = data.counters();
    let (calls0, items0, reads0) = (
        counters.write_calls.load(Ordering::Relaxed),
        counters.items_written.load(Ordering::Relaxed),
        counters.read_calls.load(Ordering::Relaxed),
    );
    let puts0 = drives.puts.load(Ordering::Relaxed);
    let started = Instant::now();
    let outcome = walker
        .walk(&drive_key, far(), &mut WalkStats::default())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let WalkOutcome::Completed { events, pages, .. } = outcome else {
        panic!("the walk did not complete: {outcome:?}");
    };
    let calls = counters.write_calls.load(Ordering::Relaxed) - calls0;
    let items = counters.items_written.load(Ordering::Relaxed) - items0;
    let reads = counters.read_calls.load(Ordering::Relaxed) - reads0;
    let state_puts = drives.puts.load(Ordering::Relaxed) - puts0;
    let changed = files.len() as f64;
    println!(
        "DynamoDB cost of an incremental walk with the real adapter (moto): {} files changed",
        files.len()
    );
    println!(
        "  events logged and sent:   {events} over {pages} delta pages in {:.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  write calls:              {} walk-store + {state_puts} drive-state = {:.3} per changed item",
        calls,
        (calls + state_puts) as f64 / changed
    );
    println!(
        "  items written:            {items} walk-store + {state_puts} drive-state = {:.2} per changed item (staging, log, index, cursor)",
        (items + state_puts) as f64 / changed
    );
    println!("  read calls:               {reads} walk-store");
    assert_eq!(events, files.len() as u64, "one content event per changed file");
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this as a smoke test.
    let full = std::env::args().any(|a| a == "--bench");
    let http = reqwest::Client::new();
    let sim = if full {
        start_sim(&["--delta-page-size", "200"])
    } else {
        start_in_process_sim().await
    };
    enumeration(&http, &sim, full).await;
    dynamodb_cost(&http, &sim, full).await;
}
