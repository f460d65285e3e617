//! process-changes' batch rules with the real walker against graph-sim and the stores in
//! memory: burst coalescing, per-drive failures and visibility, poison messages, panics that stay
//! inside their drive, continuations, lifecycle events. `process_e2e.rs` runs the same processor
//! against moto through the SQS event-source emulator.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use graph_sim::{CreatedUser, NewItem, NewUser};
use secrecy::SecretString;
use shared::changes::{Change, ChangeEvent};
use shared::clock::{Clock, OffsetClock};
use shared::config::GraphConfig;
use shared::envelope::{Envelope, Kind};
use shared::graph::GraphClient;
use shared::ids::{DriveKey, TenantId};
use shared::notification::LifecycleEvent;
use shared::process::{BatchControl, InMessage, LifecycleActions, LifecycleError, Processor};
use shared::queue::{MemoryQueue, QueueError};
use shared::store::{ConnectionStore, DriveState, DriveStatus, MemoryStore};
use shared::telemetry::Metrics;
use shared::tokens::StaticToken;
use shared::walk_store::MemoryWalkStore;
use shared::walker::{WalkLimits, Walker};

#[derive(Default)]
struct RecordingControl {
    delays: Mutex<Vec<(String, Duration)>>,
    dead: Mutex<Vec<(String, String)>>,
}

impl BatchControl for RecordingControl {
    fn delay<'a>(&'a self, messages: &'a [(String, Duration)]) -> BoxFuture<'a, Result<(), QueueError>> {
        self.delays.lock().unwrap().extend(messages.iter().cloned());
        Box::pin(async { Ok(()) })
    }

    fn dead_letter<'a>(
        &'a self,
        message: &'a InMessage,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        self.dead
            .lock()
            .unwrap()
            .push((message.message_id.clone(), reason.to_owned()));
        Box::pin(async { Ok(()) })
    }
}

/// Records renewals; panics for a drive named in `panic_for`.
#[derive(Default)]
struct FakeLifecycle {
    renewed: Mutex<Vec<DriveKey>>,
    panic_for: Mutex<Option<DriveKey>>,
    /// Answer every renewal with this failure: `fault` or `reauth`.
    fail_with: Mutex<Option<&'static str>>,
}

impl LifecycleActions for FakeLifecycle {
    fn renew<'a>(&'a self, state: &'a DriveState) -> BoxFuture<'a, Result<(), LifecycleError>> {
        Box::pin(async move {
            if *self.panic_for.lock().unwrap() == Some(state.drive_key) {
                panic!("a bug in one drive's handling");
            }
            match *self.fail_with.lock().unwrap() {
                Some("fault") => return Err(LifecycleError::Fault("Graph refused for good".into())),
                Some(_) => return Err(LifecycleError::NeedsReauth),
                None => {}
            }
            self.renewed.lock().unwrap().push(state.drive_key);
            Ok(())
        })
    }
}

struct Drive {
    user: CreatedUser,
    key: DriveKey,
}

struct Harness {
    sim: graph_sim::RunningSim,
    clock: OffsetClock,
    drives: Arc<MemoryStore>,
    changes: Arc<MemoryQueue>,
    notifications: Arc<MemoryQueue>,
    control: Arc<RecordingControl>,
    lifecycle: Arc<FakeLifecycle>,
    processor: Processor,
    next_id: Mutex<u64>,
}

async fn harness() -> Harness {
    graphfeed_tests::init_logs();
    let clock = OffsetClock::new();
    let timing = graph_sim::Timing {
        delta_page_size: 20,
        ..graph_sim::Timing::fast()
    };
    let sim = graphfeed_tests::start_sim_with(&clock, timing).await;
    let drives = Arc::new(MemoryStore::new());
    let changes = Arc::new(MemoryQueue::new());
    let notifications = Arc::new(MemoryQueue::new());
    let control = Arc::new(RecordingControl::default());
    let lifecycle = Arc::new(FakeLifecycle::default());
    // Every user of this harness is in one tenant, so one token from the sim serves them all.
    let config = GraphConfig {
        base_url: sim.graph_base_url().parse().unwrap(),
        timeout: Duration::from_secs(5),
    };
    let processor = Processor {
        walker: Walker {
            graph: GraphClient::new(&config).unwrap(),
            tokens: Arc::new(StaticToken(SecretString::from(String::new()))),
            drives: drives.clone(),
            data: Arc::new(MemoryWalkStore::new()),
            changes: changes.clone(),
            clock: Arc::new(clock.clone()),
            limits: WalkLimits {
                reserve: Duration::from_millis(200),
                ..WalkLimits::default()
            },
        },
        notifications: notifications.clone(),
        control: control.clone(),
        lifecycle: lifecycle.clone(),
        metrics: Metrics::new("process-changes"),
    };
    Harness {
        sim,
        clock,
        drives,
        changes,
        notifications,
        control,
        lifecycle,
        processor,
        next_id: Mutex::new(0),
    }
}

impl Harness {
    /// A connected drive (baseline pending) whose tokens the walker uses.
    async fn drive(&mut self) -> Drive {
        let user = self.sim.sim().create_user(NewUser::default()).unwrap();
        // The walker takes tokens from one static source: make it this user's (tests use one
        // drive each, or drives of the same user set up before walking).
        self.processor.walker.tokens = Arc::new(StaticToken(SecretString::from(user.access_token.clone())));
        let key = DriveKey::random();
        self.drives
            .put_drive(&DriveState::first(
                key,
                &user.tenant_id,
                &user.user_id,
                &user.drive_id,
            ))
            .await
            .unwrap();
        Drive { user, key }
    }

    fn message(&self, drive: &Drive, kind: Kind, lifecycle: Option<LifecycleEvent>) -> InMessage {
        let mut envelope = Envelope::new(
            kind,
            drive.key,
            TenantId::parse(&drive.user.tenant_id).unwrap(),
            self.clock.now(),
        );
        envelope.lifecycle_event = lifecycle;
        let mut id = self.next_id.lock().unwrap();
        *id += 1;
        InMessage {
            message_id: format!("m{id}"),
            receipt_handle: format!("r{id}"),
            body: envelope.to_json(),
            group_id: Some(drive.key.to_string()),
            receive_count: 1,
        }
    }

    fn file(&self, drive: &Drive, name: &str) -> String {
        self.sim
            .sim()
            .create_item(
                &drive.user.drive_id,
                &NewItem {
                    parent_id: None,
                    name: name.into(),
                    folder: false,
                    size: 1,
                },
            )
            .unwrap()
            .id
    }

    fn events(&self) -> Vec<ChangeEvent> {
        self.changes
            .sent()
            .iter()
            .map(|m| serde_json::from_str(&m.body).unwrap())
            .collect()
    }

    fn delta_calls(&self) -> u64 {
        self.sim
            .sim()
            .counters()
            .graph_calls
            .iter()
            .filter(|(route, _)| route.contains("delta") || route.ends_with("root/{call}"))
            .map(|(_, n)| n)
            .sum()
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

#[tokio::test]
async fn a_burst_of_1000_notifications_for_one_drive_costs_at_most_two_walks_and_misses_nothing() {
    let mut h = harness().await;
    let drive = h.drive().await;
    let baseline = h.message(&drive, Kind::Baseline, None);
    assert!(
        h.processor
            .process(vec![baseline], far())
            .await
            .failures
            .is_empty()
    );
    let file = h.file(&drive, "burst.txt");
    let burst: Vec<InMessage> = (0..1000)
        .map(|_| h.message(&drive, Kind::Notification, None))
        .collect();
    let calls_before = h.delta_calls();
    let mut walks = 0;
    let mut coalesced = 0;
    for (i, batch) in burst.chunks(10).enumerate() {
        if i == 50 {
            // A change in the middle of the burst: it needs (at most) one more walk.
            h.file(&drive, "during.txt");
        }
        let outcome = h.processor.process(batch.to_vec(), far()).await;
        assert!(outcome.failures.is_empty());
        walks += outcome.walks;
        coalesced += outcome.coalesced;
    }
    assert!(walks <= 2, "{walks} walks for a burst of 1,000");
    assert!(coalesced >= 980, "{coalesced} coalesced");
    assert!(
        h.delta_calls() - calls_before <= 2,
        "delta calls: {}",
        h.delta_calls() - calls_before
    );
    let created: Vec<_> = h
        .events()
        .into_iter()
        .filter(|e| e.change == Change::Created)
        .collect();
    assert!(
        created
            .iter()
            .any(|e| e.item_id.as_deref() == Some(file.as_str()))
    );
    // The change made during the burst came after the walk that covered the first ones started,
    // but all its notifications were received before: a later trigger (the safety net, the next
    // notification) walks again. Here the next notification does.
    let next = h.message(&drive, Kind::Notification, None);
    h.processor.process(vec![next], far()).await;
    assert!(h.events().iter().any(|e| e.name.as_deref() == Some("during.txt")));
}

#[tokio::test]
async fn a_failing_drive_returns_its_own_messages_and_nothing_else_with_the_retry_after_as_visibility() {
    let mut h = harness().await;
    let a = h.drive().await;
    let b_user = h.sim.sim().create_user(NewUser {
        tenant_id: Some(a.user.tenant_id.clone()),
        ..NewUser::default()
    });
    let b_user = b_user.unwrap();
    let b = Drive {
        key: DriveKey::random(),
        user: b_user.clone(),
    };
    h.drives
        .put_drive(&DriveState::first(
            b.key,
            &b_user.tenant_id,
            &b_user.user_id,
            &b_user.drive_id,
        ))
        .await
        .unwrap();
    // Drive A's delta answers 503 with a Retry-After; drive B only needs its subscription renewed.
    h.sim.sim().add_fault(graph_sim::Fault {
        path_prefix: format!("/v1.0/drives/{}", a.user.drive_id),
        method: Some("GET".into()),
        status: 503,
        count: 1,
        retry_after: Some(40),
        body: None,
        delay_ms: None,
    });
    let batch = vec![
        h.message(&a, Kind::Baseline, None),
        h.message(&b, Kind::Lifecycle, Some(LifecycleEvent::ReauthorizationRequired)),
        h.message(&a, Kind::Notification, None),
    ];
    let ids: Vec<String> = batch.iter().map(|m| m.message_id.clone()).collect();
    let outcome = h.processor.process(batch, far()).await;
    assert_eq!(outcome.failures, vec![ids[0].clone(), ids[2].clone()]);
    let delays = h.control.delays.lock().unwrap().clone();
    assert_eq!(delays.len(), 2);
    for (_, delay) in &delays {
        assert!(
            (Duration::from_secs(38)..=Duration::from_secs(41)).contains(delay),
            "{delay:?}"
        );
    }
    assert_eq!(*h.lifecycle.renewed.lock().unwrap(), vec![b.key]);
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letter_queue_at_once_and_is_acknowledged() {
    let h = harness().await;
    let poison = InMessage {
        message_id: "poison".into(),
        receipt_handle: "r".into(),
        body: r#"{"v":9,"kind":"notification"}"#.into(),
        group_id: Some("g".into()),
        receive_count: 1,
    };
    let garbage = InMessage {
        message_id: "garbage".into(),
        body: "not json".into(),
        ..poison.clone()
    };
    let outcome = h.processor.process(vec![poison, garbage], far()).await;
    assert!(outcome.failures.is_empty());
    assert_eq!(outcome.poison, 2);
    let dead = h.control.dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 2);
    assert!(dead[0].1.contains("version 9"), "{}", dead[0].1);
}

#[tokio::test]
async fn a_panic_in_one_drives_handling_never_fails_another_drives_messages() {
    let mut h = harness().await;
    let a = h.drive().await;
    let b = Drive {
        key: DriveKey::random(),
        user: a.user.clone(),
    };
    let mut state = h.drives.drive(&a.key).await.unwrap().unwrap();
    state.drive_key = b.key;
    state.version = 1;
    h.drives.put_drive(&state).await.unwrap();
    *h.lifecycle.panic_for.lock().unwrap() = Some(a.key);
    let batch = vec![
        h.message(&a, Kind::Lifecycle, Some(LifecycleEvent::ReauthorizationRequired)),
        h.message(&b, Kind::Baseline, None),
    ];
    let ids: Vec<String> = batch.iter().map(|m| m.message_id.clone()).collect();
    let outcome = h.processor.process(batch, far()).await;
    assert_eq!(outcome.failures, vec![ids[0].clone()]);
    assert!(h.events().iter().any(|e| e.change == Change::BaselineComplete));
}

#[tokio::test]
async fn a_walk_out_of_time_queues_a_continuation_on_the_drives_group_and_acknowledges() {
    let mut h = harness().await;
    let drive = h.drive().await;
    for i in 0..30 {
        h.file(&drive, &format!("f{i}"));
    }
    let baseline = h.message(&drive, Kind::Baseline, None);
    let outcome = h.processor.process(vec![baseline], Instant::now()).await;
    assert!(outcome.failures.is_empty());
    assert_eq!(outcome.continuations, 1);
    let queued = h.notifications.sent();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].group, drive.key);
    let continuation = Envelope::from_json(&queued[0].body).unwrap();
    assert_eq!(continuation.kind, Kind::Continuation);
    let next = InMessage {
        body: queued[0].body.clone(),
        ..h.message(&drive, Kind::Continuation, None)
    };
    assert!(h.processor.process(vec![next], far()).await.failures.is_empty());
    assert!(h.events().iter().any(|e| e.change == Change::BaselineComplete));
    // A continuation whose walk already finished does nothing.
    let stale = h.message(&drive, Kind::Continuation, None);
    assert_eq!(h.processor.process(vec![stale], far()).await.walks, 0);
}

#[tokio::test]
async fn subscription_removed_renews_then_walks_and_reauthorization_required_only_renews() {
    let mut h = harness().await;
    let drive = h.drive().await;
    h.processor
        .process(vec![h.message(&drive, Kind::Baseline, None)], far())
        .await;
    let reauth = h.message(
        &drive,
        Kind::Lifecycle,
        Some(LifecycleEvent::ReauthorizationRequired),
    );
    let outcome = h.processor.process(vec![reauth], far()).await;
    assert_eq!(outcome.walks, 0);
    let removed = h.message(&drive, Kind::Lifecycle, Some(LifecycleEvent::SubscriptionRemoved));
    let outcome = h.processor.process(vec![removed], far()).await;
    assert_eq!(outcome.walks, 1);
    let missed = h.message(&drive, Kind::Lifecycle, Some(LifecycleEvent::Missed));
    assert_eq!(h.processor.process(vec![missed], far()).await.walks, 1);
    assert_eq!(h.lifecycle.renewed.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn messages_for_a_disconnected_drive_are_acknowledged_without_a_graph_call() {
    let mut h = harness().await;
    let drive = h.drive().await;
    let mut state = h.drives.drive(&drive.key).await.unwrap().unwrap();
    state.state = DriveStatus::Disconnected;
    state.version += 1;
    h.drives.put_drive(&state).await.unwrap();
    let outcome = h
        .processor
        .process(vec![h.message(&drive, Kind::Notification, None)], far())
        .await;
    assert!(outcome.failures.is_empty());
    assert_eq!(outcome.walks, 0);
    assert_eq!(h.delta_calls(), 0);
}

#[tokio::test]
async fn a_lifecycle_action_that_fails_for_good_does_not_hold_back_the_drives_walk() {
    let mut h = harness().await;
    let drive = h.drive().await;
    h.processor
        .process(vec![h.message(&drive, Kind::Baseline, None)], far())
        .await;
    h.file(&drive, "after-baseline.txt");
    *h.lifecycle.fail_with.lock().unwrap() = Some("fault");
    let batch = vec![
        h.message(
            &drive,
            Kind::Lifecycle,
            Some(LifecycleEvent::ReauthorizationRequired),
        ),
        h.message(&drive, Kind::Notification, None),
    ];
    let outcome = h.processor.process(batch, far()).await;
    assert!(outcome.failures.is_empty(), "{outcome:?}");
    assert_eq!((outcome.lifecycle_faults, outcome.walks), (1, 1));
    assert!(
        h.events()
            .iter()
            .any(|e| e.name.as_deref() == Some("after-baseline.txt"))
    );
}

#[tokio::test]
async fn a_renewal_that_needs_the_user_marks_the_drive_needs_reauth() {
    let mut h = harness().await;
    let drive = h.drive().await;
    *h.lifecycle.fail_with.lock().unwrap() = Some("reauth");
    let outcome = h
        .processor
        .process(
            vec![h.message(
                &drive,
                Kind::Lifecycle,
                Some(LifecycleEvent::ReauthorizationRequired),
            )],
            far(),
        )
        .await;
    assert!(outcome.failures.is_empty());
    assert_eq!(outcome.needs_reauth, 1);
    let state = h.drives.drive(&drive.key).await.unwrap().unwrap();
    assert_eq!(state.state, DriveStatus::NeedsReauth);
}

#[tokio::test]
async fn a_purge_deletes_only_a_generation_before_the_current_one() {
    use shared::walk_store::{LogEntry, Scope};
    let mut h = harness().await;
    let drive = h.drive().await;
    let data = h.processor.walker.data.clone();
    let entry = |sequence| LogEntry {
        sequence,
        walk_id: "w".into(),
        event: format!("{{\"sequence\":{sequence}}}"),
    };
    for generation in [1, 2] {
        let scope = Scope {
            drive_key: &drive.key,
            generation,
        };
        data.log_append(scope, &[entry(generation)]).await.unwrap();
    }
    // The drive is at generation 2 (reconnected after a disconnect).
    let mut state = h.drives.drive(&drive.key).await.unwrap().unwrap();
    state.generation = 2;
    state.version += 1;
    h.drives.put_drive(&state).await.unwrap();
    let purge = |generation| {
        let mut m = h.message(&drive, Kind::Purge, None);
        let mut envelope = Envelope::from_json(&m.body).unwrap();
        envelope.generation = Some(generation);
        m.body = envelope.to_json();
        m
    };
    let outcome = h.processor.process(vec![purge(2), purge(1)], far()).await;
    assert!(outcome.failures.is_empty());
    let left = |generation| {
        let data = data.clone();
        let key = drive.key;
        async move {
            data.log_after(
                Scope {
                    drive_key: &key,
                    generation,
                },
                0,
                10,
            )
            .await
            .unwrap()
            .len()
        }
    };
    assert_eq!(left(1).await, 0, "the old generation is gone");
    assert_eq!(left(2).await, 1, "the current generation is untouched");
}
