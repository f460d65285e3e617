//! The delta walker against graph-sim over HTTP, with the stores in memory: baseline, each kind
//! of change, crash and resume, replays, 410 resync, concurrent walkers, throttling, running out
//! of time. The same walker runs against moto in `process.rs`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use graph_sim::{CreatedUser, NewItem, NewUser};
use secrecy::SecretString;
use shared::changes::{Change, ChangeEvent, Update};
use shared::clock::OffsetClock;
use shared::config::GraphConfig;
use shared::delta::ItemState;
use shared::graph::GraphClient;
use shared::ids::DriveKey;
use shared::queue::MemoryQueue;
use shared::store::{ConnectionStore, DriveState, DriveStatus, MemoryStore, WalkMode};
use shared::tokens::StaticToken;
use shared::walk_store::{IndexEntry, LogEntry, MemoryWalkStore, Scope, WalkStore};
use shared::walker::{WalkError, WalkLimits, WalkOutcome, WalkStats, Walker};

struct Harness {
    sim: graph_sim::RunningSim,
    user: CreatedUser,
    drive_key: DriveKey,
    drives: Arc<MemoryStore>,
    data: Arc<MemoryWalkStore>,
    changes: Arc<MemoryQueue>,
    clock: OffsetClock,
}

async fn harness(page_size: usize) -> Harness {
    graphfeed_tests::init_logs();
    let clock = OffsetClock::new();
    let timing = graph_sim::Timing {
        delta_page_size: page_size,
        ..graph_sim::Timing::fast()
    };
    let sim = graphfeed_tests::start_sim_with(&clock, timing).await;
    let user = sim.sim().create_user(NewUser::default()).unwrap();
    let drive_key = DriveKey::random();
    let drives = Arc::new(MemoryStore::new());
    drives
        .put_drive(&DriveState::first(
            drive_key,
            &user.tenant_id,
            &user.user_id,
            &user.drive_id,
        ))
        .await
        .unwrap();
    Harness {
        sim,
        user,
        drive_key,
        drives,
        data: Arc::new(MemoryWalkStore::new()),
        changes: Arc::new(MemoryQueue::new()),
        clock,
    }
}

impl Harness {
    fn walker_with(&self, data: Arc<dyn WalkStore>) -> Walker {
        let config = GraphConfig {
            base_url: self.sim.graph_base_url().parse().unwrap(),
            timeout: Duration::from_secs(5),
        };
        Walker {
            graph: GraphClient::new(&config).unwrap(),
            tokens: Arc::new(StaticToken(SecretString::from(self.user.access_token.clone()))),
            drives: self.drives.clone(),
            data,
            changes: self.changes.clone(),
            clock: Arc::new(self.clock.clone()),
            limits: WalkLimits {
                reserve: Duration::ZERO,
                ..WalkLimits::default()
            },
        }
    }

    fn walker(&self) -> Walker {
        self.walker_with(self.data.clone())
    }

    async fn walk(&self) -> Result<WalkOutcome, WalkError> {
        self.walker()
            .walk(&self.drive_key, far(), &mut WalkStats::default())
            .await
    }

    fn file(&self, parent: Option<&str>, name: &str) -> String {
        self.sim
            .sim()
            .create_item(
                &self.user.drive_id,
                &NewItem {
                    parent_id: parent.map(str::to_owned),
                    name: name.into(),
                    folder: false,
                    size: 3,
                },
            )
            .unwrap()
            .id
    }

    fn folder(&self, parent: Option<&str>, name: &str) -> String {
        self.sim
            .sim()
            .create_item(
                &self.user.drive_id,
                &NewItem {
                    parent_id: parent.map(str::to_owned),
                    name: name.into(),
                    folder: true,
                    size: 0,
                },
            )
            .unwrap()
            .id
    }

    /// The events published so far, in order.
    fn events(&self) -> Vec<ChangeEvent> {
        self.changes
            .sent()
            .iter()
            .map(|m| serde_json::from_str(&m.body).unwrap())
            .collect()
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            drive_key: &self.drive_key,
            generation: 1,
        }
    }

    async fn log(&self) -> Vec<LogEntry> {
        self.data.log_after(self.scope(), 0, 100_000).await.unwrap()
    }

    async fn state(&self) -> DriveState {
        self.drives.drive(&self.drive_key).await.unwrap().unwrap()
    }

    fn delta_calls(&self) -> u64 {
        let counters = self.sim.sim().counters();
        counters
            .graph_calls
            .iter()
            // `root/delta?token=` and `root/delta(token='…')` (counted as `root/{call}`).
            .filter(|(route, _)| route.contains("delta") || route.ends_with("root/{call}"))
            .map(|(_, n)| n)
            .sum()
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

fn changes(events: &[ChangeEvent]) -> Vec<(Change, Option<Update>, Option<String>)> {
    events
        .iter()
        .map(|e| (e.change, e.update, e.path.clone()))
        .collect()
}

#[tokio::test]
async fn a_baseline_fills_the_index_and_emits_only_the_baseline_marker() {
    let h = harness(4).await;
    let docs = h.folder(None, "Docs");
    for i in 0..9 {
        h.file(Some(&docs), &format!("f{i}.txt"));
    }
    let outcome = h.walk().await.unwrap();
    assert!(matches!(
        outcome,
        WalkOutcome::Completed {
            mode: WalkMode::Baseline,
            events: 1,
            ..
        }
    ));
    assert_eq!(changes(&h.events()), vec![(Change::BaselineComplete, None, None)]);
    assert_eq!(h.events()[0].sequence, 1);
    // root + Docs + 9 files
    assert_eq!(h.data.index_len(h.scope()), 11);
    let state = h.state().await;
    assert_eq!(state.state, DriveStatus::Active);
    assert!(state.delta_link.is_some() && state.checkpoint.is_none());
    assert_eq!(state.seq_high_water, 1);
}

#[tokio::test]
async fn rename_move_content_change_and_delete_each_produce_the_right_event() {
    let h = harness(50).await;
    let a = h.folder(None, "A");
    let b = h.folder(None, "B");
    let f = h.file(Some(&a), "f.txt");
    let g = h.file(Some(&a), "g.txt");
    let x = h.file(Some(&a), "x.txt");
    h.walk().await.unwrap();
    let sim = h.sim.sim();
    let drive = &h.user.drive_id;
    sim.update_item(
        drive,
        &f,
        &graph_sim::ItemUpdate {
            name: Some("renamed.txt".into()),
            parent_id: None,
        },
    )
    .unwrap();
    sim.update_item(
        drive,
        &g,
        &graph_sim::ItemUpdate {
            name: None,
            parent_id: Some(b.clone()),
        },
    )
    .unwrap();
    sim.modify_item(drive, &x, Some(99)).unwrap();
    let created = h.file(Some(&b), "new.txt");
    sim.delete_item(drive, &created).unwrap();
    let y = h.file(Some(&b), "y.txt");
    h.walk().await.unwrap();
    sim.delete_item(drive, &y).unwrap();
    h.walk().await.unwrap();
    let events = h.events();
    let got = changes(&events[1..]);
    assert!(
        got.contains(&(Change::Renamed, None, Some("/A/renamed.txt".into()))),
        "{got:?}"
    );
    assert!(
        got.contains(&(Change::Moved, None, Some("/B/g.txt".into()))),
        "{got:?}"
    );
    assert!(
        got.contains(&(Change::Updated, Some(Update::Content), Some("/A/x.txt".into()))),
        "{got:?}"
    );
    assert!(
        got.contains(&(Change::Created, None, Some("/B/y.txt".into()))),
        "{got:?}"
    );
    assert_eq!(
        got.last(),
        Some(&(Change::Deleted, None, Some("/B/y.txt".into())))
    );
    // Created and deleted between two walks: delta shows only the delete of an unknown item.
    assert!(!got.iter().any(|(_, _, p)| p.as_deref() == Some("/B/new.txt")));
    let renamed = events.iter().find(|e| e.change == Change::Renamed).unwrap();
    assert_eq!(renamed.previous_path.as_deref(), Some("/A/f.txt"));
    assert_eq!(renamed.item_id.as_deref(), Some(f.as_str()));
    // Sequences: 1.. without gaps, in order.
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>());
}

/// A store that fails the n-th staging write, as a crash mid-walk would leave things.
struct CrashAfter {
    inner: Arc<MemoryWalkStore>,
    stage_writes: AtomicU32,
    crash_at: u32,
    /// Staged pages read back as gone (expired by TTL).
    lose_staged: bool,
    /// Change-log writes fail (the walk stops after its last page, before logging).
    fail_log: bool,
}

impl WalkStore for CrashAfter {
    fn index_get<'a>(
        &'a self,
        scope: Scope<'a>,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<std::collections::HashMap<String, ItemState>, shared::store::StoreError>> {
        self.inner.index_get(scope, ids)
    }
    fn index_put<'a>(
        &'a self,
        scope: Scope<'a>,
        items: &'a [ItemState],
        walk_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), shared::store::StoreError>> {
        self.inner.index_put(scope, items, walk_id)
    }
    fn index_all<'a>(
        &'a self,
        scope: Scope<'a>,
    ) -> BoxFuture<'a, Result<Vec<IndexEntry>, shared::store::StoreError>> {
        self.inner.index_all(scope)
    }
    fn stage<'a>(
        &'a self,
        scope: Scope<'a>,
        key: &'a str,
        items: &'a [ItemState],
    ) -> BoxFuture<'a, Result<(), shared::store::StoreError>> {
        if self.stage_writes.fetch_add(1, Ordering::SeqCst) + 1 == self.crash_at {
            return Box::pin(async { Err(shared::store::StoreError::Call("simulated crash".into())) });
        }
        self.inner.stage(scope, key, items)
    }
    fn staged<'a>(
        &'a self,
        scope: Scope<'a>,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ItemState>, shared::store::StoreError>> {
        if self.lose_staged {
            return Box::pin(async {
                Err(shared::store::StoreError::Corrupt(
                    "staged chunk is missing".into(),
                ))
            });
        }
        self.inner.staged(scope, keys)
    }
    fn log_append<'a>(
        &'a self,
        scope: Scope<'a>,
        entries: &'a [LogEntry],
    ) -> BoxFuture<'a, Result<(), shared::store::StoreError>> {
        if self.fail_log {
            return Box::pin(async { Err(shared::store::StoreError::Call("simulated outage".into())) });
        }
        self.inner.log_append(scope, entries)
    }
    fn log_after<'a>(
        &'a self,
        scope: Scope<'a>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, shared::store::StoreError>> {
        self.inner.log_after(scope, after, limit)
    }
    fn published<'a>(
        &'a self,
        drive_key: &'a DriveKey,
    ) -> BoxFuture<'a, Result<u64, shared::store::StoreError>> {
        self.inner.published(drive_key)
    }
    fn set_published<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        sequence: u64,
    ) -> BoxFuture<'a, Result<(), shared::store::StoreError>> {
        self.inner.set_published(drive_key, sequence)
    }
    fn purge<'a>(&'a self, scope: Scope<'a>) -> BoxFuture<'a, Result<u64, shared::store::StoreError>> {
        self.inner.purge(scope)
    }
    fn throttled_until<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<Option<chrono::DateTime<chrono::Utc>>, shared::store::StoreError>> {
        self.inner.throttled_until(tenant)
    }
    fn throttle<'a>(
        &'a self,
        tenant: &'a str,
        until: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<(), shared::store::StoreError>> {
        self.inner.throttle(tenant, until)
    }
}

#[tokio::test]
async fn a_crash_after_page_k_resumes_from_the_checkpoint_and_loses_nothing() {
    let h = harness(3).await;
    h.walk().await.unwrap();
    let mut created = Vec::new();
    for i in 0..20 {
        created.push(h.file(None, &format!("c{i}.txt")));
    }
    let calls_before = h.delta_calls();
    let crashing = Arc::new(CrashAfter {
        inner: h.data.clone(),
        stage_writes: AtomicU32::new(0),
        crash_at: 4,
        lose_staged: false,
        fail_log: false,
    });
    let first = h
        .walker_with(crashing)
        .walk(&h.drive_key, far(), &mut WalkStats::default())
        .await;
    assert!(matches!(first, Err(WalkError::Transient(_))), "{first:?}");
    let checkpoint = h.state().await.checkpoint.unwrap();
    assert_eq!(
        checkpoint.pages, 3,
        "three pages were checkpointed before the crash"
    );
    let calls_at_crash = h.delta_calls() - calls_before;
    h.walk().await.unwrap();
    let calls_total = h.delta_calls() - calls_before;
    // 21 items (20 files and the root as their ancestor) in pages of 3 = 7 pages; the resume
    // re-reads only the page that was being staged when it crashed.
    assert_eq!(calls_at_crash, 4);
    assert_eq!(
        calls_total, 8,
        "the resume started from the checkpoint, not from the start"
    );
    let created_events: Vec<String> = h
        .events()
        .iter()
        .filter(|e| e.change == Change::Created)
        .map(|e| e.item_id.clone().unwrap())
        .collect();
    let mut expected = created.clone();
    expected.sort();
    let mut got = created_events.clone();
    got.sort();
    assert_eq!(got, expected, "every created file has exactly one event");
}

#[tokio::test]
async fn a_walk_replayed_three_times_gives_the_same_index_and_log_and_never_a_second_sequence() {
    let h = harness(4).await;
    h.walk().await.unwrap();
    for i in 0..10 {
        h.file(None, &format!("r{i}.txt"));
    }
    h.walk().await.unwrap();
    let log = h.log().await;
    let index = {
        let mut all = h.data.index_all(h.scope()).await.unwrap();
        all.sort_by(|a, b| a.item.id.cmp(&b.item.id));
        all.into_iter().map(|e| e.item).collect::<Vec<_>>()
    };
    for _ in 0..3 {
        h.walk().await.unwrap();
    }
    assert_eq!(h.log().await, log);
    let mut again = h.data.index_all(h.scope()).await.unwrap();
    again.sort_by(|a, b| a.item.id.cmp(&b.item.id));
    assert_eq!(again.into_iter().map(|e| e.item).collect::<Vec<_>>(), index);
    // Published once each.
    let sequences: Vec<u64> = h.events().iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=log.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_outbox_entry_logged_but_not_sent_is_sent_by_the_next_walk_with_its_original_sequence() {
    let h = harness(10).await;
    h.walk().await.unwrap();
    h.file(None, "late.txt");
    h.walk().await.unwrap();
    // Pretend the send of sequence 2 never happened: roll the cursor back by re-creating the store
    // view: a fresh queue and a published cursor of 1.
    let data = Arc::new(MemoryWalkStore::new());
    for entry in h.log().await {
        data.log_append(h.scope(), &[entry]).await.unwrap();
    }
    data.set_published(&h.drive_key, 1).await.unwrap();
    let replay = Harness {
        sim: h.sim,
        user: h.user.clone(),
        drive_key: h.drive_key,
        drives: h.drives.clone(),
        data: data.clone(),
        changes: Arc::new(MemoryQueue::new()),
        clock: h.clock.clone(),
    };
    replay.walk().await.unwrap();
    let resent = replay.events();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].sequence, 2);
    assert_eq!(resent[0].name.as_deref(), Some("late.txt"));
}

#[tokio::test]
async fn a_410_resyncs_with_a_full_enumeration_and_turns_what_it_did_not_see_into_deletes() {
    let h = harness(5).await;
    let keep = h.file(None, "keep.txt");
    let gone = h.file(None, "gone.txt");
    h.walk().await.unwrap();
    h.sim.sim().delete_item(&h.user.drive_id, &gone).unwrap();
    h.sim.sim().expire_delta_tokens(&h.user.drive_id).unwrap();
    let outcome = h.walk().await.unwrap();
    assert!(
        matches!(
            outcome,
            WalkOutcome::Completed {
                mode: WalkMode::Resync,
                ..
            }
        ),
        "{outcome:?}"
    );
    let events = h.events();
    let got = changes(&events[1..]);
    assert_eq!(
        got,
        vec![
            (Change::ResyncStarted, None, None),
            (Change::Deleted, None, Some("/gone.txt".into())),
            (Change::ResyncFinished, None, None),
        ]
    );
    assert!(
        !events
            .iter()
            .any(|e| e.item_id.as_deref() == Some(keep.as_str()) && e.change == Change::Deleted)
    );
    assert_eq!(h.state().await.state, DriveStatus::Active);
}

#[tokio::test]
async fn two_walkers_on_one_drive_never_move_the_delta_link_back() {
    let h = harness(2).await;
    h.walk().await.unwrap();
    for round in 0..5 {
        for i in 0..6 {
            h.file(None, &format!("r{round}-{i}.txt"));
        }
        let (a, b) = (h.walker(), h.walker());
        let mut sa = WalkStats::default();
        let mut sb = WalkStats::default();
        let before = h.state().await;
        let (ra, rb) = tokio::join!(
            a.walk(&h.drive_key, far(), &mut sa),
            b.walk(&h.drive_key, far(), &mut sb)
        );
        // At least one finishes; a loser stops with a conflict rather than overwriting.
        assert!(ra.is_ok() || rb.is_ok(), "{ra:?} {rb:?}");
        for r in [&ra, &rb] {
            assert!(r.is_ok() || matches!(r, Err(WalkError::Conflict)), "{r:?}");
        }
        h.walk().await.unwrap();
        let after = h.state().await;
        assert!(after.version > before.version);
        assert!(after.seq_high_water >= before.seq_high_water);
    }
    // No change lost, none numbered twice.
    let created = h.events().iter().filter(|e| e.change == Change::Created).count();
    assert_eq!(created, 30);
    let sequences: Vec<u64> = h.events().iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_429_with_retry_after_makes_zero_graph_calls_before_it_expires() {
    let h = harness(5).await;
    h.walk().await.unwrap();
    h.file(None, "t.txt");
    h.sim.sim().add_fault(graph_sim::Fault {
        path_prefix: "/v1.0/drives".into(),
        method: Some("GET".into()),
        status: 429,
        count: 1,
        retry_after: Some(120),
        body: None,
        delay_ms: None,
    });
    let first = h.walk().await;
    assert!(matches!(first, Err(WalkError::Throttled { .. })), "{first:?}");
    let calls = h.delta_calls();
    for _ in 0..3 {
        assert!(matches!(h.walk().await, Err(WalkError::Throttled { .. })));
    }
    h.clock.advance(chrono::Duration::seconds(119));
    assert!(matches!(h.walk().await, Err(WalkError::Throttled { .. })));
    assert_eq!(
        h.delta_calls(),
        calls,
        "no Graph call while the tenant is throttled"
    );
    h.clock.advance(chrono::Duration::seconds(2));
    h.walk().await.unwrap();
    assert!(h.events().iter().any(|e| e.name.as_deref() == Some("t.txt")));
}

#[tokio::test]
async fn a_walk_that_runs_out_of_time_saves_its_checkpoint_and_the_next_one_finishes() {
    let h = harness(2).await;
    for i in 0..10 {
        h.file(None, &format!("b{i}.txt"));
    }
    let outcome = h
        .walker()
        .walk(&h.drive_key, Instant::now(), &mut WalkStats::default())
        .await
        .unwrap();
    assert_eq!(outcome, WalkOutcome::OutOfTime { pages: 0 });
    let mut walker = h.walker();
    walker.limits.max_pages = 3;
    // A walker whose page budget is exhausted abandons the walk instead of looping.
    let endless = walker.walk(&h.drive_key, far(), &mut WalkStats::default()).await;
    assert!(matches!(endless, Err(WalkError::Fault(_))), "{endless:?}");
    // The abandoned baseline starts over; as a restart, its end drops index entries it did not see.
    let restart = h.state().await.checkpoint.unwrap();
    assert_eq!((restart.pages, restart.chunks, restart.restarted), (0, 0, true));
    h.walk().await.unwrap();
    assert_eq!(h.data.index_len(h.scope()), 11);
}

#[tokio::test]
async fn a_walker_that_loses_the_checkpoint_race_cannot_overwrite_a_page_the_winner_staged() {
    let h = harness(3).await;
    h.walk().await.unwrap();
    for i in 0..9 {
        h.file(None, &format!("s{i}.txt"));
    }
    // A walk stops after two pages (as if its invocation ended), leaving its checkpoint.
    let crashing = Arc::new(CrashAfter {
        inner: h.data.clone(),
        stage_writes: AtomicU32::new(0),
        crash_at: 3,
        lose_staged: false,
        fail_log: false,
    });
    let stopped = h
        .walker_with(crashing)
        .walk(&h.drive_key, far(), &mut WalkStats::default())
        .await;
    assert!(stopped.is_err());
    let checkpoint = h.state().await.checkpoint.unwrap();
    // Another walker stages the same chunk number under its own attempt, then loses the race.
    let intruder = shared::store::Checkpoint {
        attempts: vec![(0, "intruder".into())],
        ..checkpoint.clone()
    };
    let bogus = vec![ItemState {
        id: "bogus".into(),
        parent_id: None,
        name: Some("bogus".into()),
        etag: None,
        ctag: None,
        size: None,
        folder: false,
        root: false,
        deleted: false,
        modified: None,
    }];
    for chunk in 0..checkpoint.chunks + 1 {
        h.data
            .stage(h.scope(), &intruder.chunk_key(chunk).unwrap(), &bogus)
            .await
            .unwrap();
    }
    h.walk().await.unwrap();
    let events = h.events();
    assert!(!events.iter().any(|e| e.item_id.as_deref() == Some("bogus")));
    assert_eq!(events.iter().filter(|e| e.change == Change::Created).count(), 9);
}

#[tokio::test]
async fn log_entries_above_the_committed_high_water_mark_are_never_sent() {
    let h = harness(10).await;
    h.walk().await.unwrap();
    let state = h.state().await;
    // An entry a walk wrote but never committed (it may still be retried, or lose a race).
    h.data
        .log_append(
            h.scope(),
            &[LogEntry {
                sequence: state.seq_high_water + 1,
                walk_id: "uncommitted".into(),
                event: r#"{"v":1,"driveId":"d","sequence":2,"change":"created"}"#.into(),
            }],
        )
        .await
        .unwrap();
    let sent = h.walker().drain(&state).await.unwrap();
    assert_eq!(sent, 0);
    assert_eq!(h.events().len(), 1, "only the committed baseline marker");
}

#[tokio::test]
async fn a_second_410_in_a_row_backs_off_instead_of_looping() {
    let h = harness(10).await;
    h.walk().await.unwrap();
    h.file(None, "x.txt");
    h.sim.sim().add_fault(graph_sim::Fault {
        path_prefix: "/v1.0/drives".into(),
        method: Some("GET".into()),
        status: 410,
        count: 2,
        retry_after: None,
        body: Some(serde_json::json!({"error": {"code": "resyncRequired", "message": "Resync required."}})),
        delay_ms: None,
    });
    let result = h.walk().await;
    assert!(
        matches!(result, Err(WalkError::Backoff { status: 410 })),
        "{result:?}"
    );
    // Once Graph serves pages again, the resync completes.
    let outcome = h.walk().await.unwrap();
    assert!(
        matches!(
            outcome,
            WalkOutcome::Completed {
                mode: WalkMode::Resync,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(h.events().iter().any(|e| e.name.as_deref() == Some("x.txt")));
}

/// A walk that read every page but could not log (the change log was unavailable).
async fn walk_stopped_before_logging(h: &Harness) {
    let stopped = h
        .walker_with(Arc::new(CrashAfter {
            inner: h.data.clone(),
            stage_writes: AtomicU32::new(0),
            crash_at: 0,
            lose_staged: false,
            fail_log: true,
        }))
        .walk(&h.drive_key, far(), &mut WalkStats::default())
        .await;
    assert!(matches!(stopped, Err(WalkError::Transient(_))), "{stopped:?}");
    let checkpoint = h.state().await.checkpoint.unwrap();
    assert!(checkpoint.delta_link.is_some() && checkpoint.logged.is_none());
}

#[tokio::test]
async fn a_walk_whose_staged_pages_expired_starts_over_and_still_loses_nothing() {
    let h = harness(3).await;
    h.walk().await.unwrap();
    for i in 0..7 {
        h.file(None, &format!("e{i}.txt"));
    }
    walk_stopped_before_logging(&h).await;
    let lost = h
        .walker_with(Arc::new(CrashAfter {
            inner: h.data.clone(),
            stage_writes: AtomicU32::new(0),
            crash_at: 0,
            lose_staged: true,
            fail_log: false,
        }))
        .walk(&h.drive_key, far(), &mut WalkStats::default())
        .await;
    assert!(matches!(lost, Err(WalkError::Transient(_))), "{lost:?}");
    assert!(
        h.state().await.checkpoint.is_none(),
        "the walk is dropped, not stuck"
    );
    h.walk().await.unwrap();
    let created = h.events().iter().filter(|e| e.change == Change::Created).count();
    assert_eq!(created, 7);
}

#[tokio::test]
async fn a_walk_past_its_last_page_finishes_without_graph_when_the_user_must_sign_in_again() {
    let h = harness(5).await;
    h.walk().await.unwrap();
    h.file(None, "before-reauth.txt");
    walk_stopped_before_logging(&h).await;
    let mut state = h.state().await;
    state.state = DriveStatus::NeedsReauth;
    state.version += 1;
    h.drives.put_drive(&state).await.unwrap();
    let calls = h.delta_calls();
    let outcome = h.walk().await.unwrap();
    assert!(matches!(outcome, WalkOutcome::Completed { .. }), "{outcome:?}");
    assert_eq!(h.delta_calls(), calls, "no Graph call");
    assert!(
        h.events()
            .iter()
            .any(|e| e.name.as_deref() == Some("before-reauth.txt"))
    );
}
