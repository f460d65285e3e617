//! The walker against every delta quirk graph-sim has (graph-protocol.md §10 items 10–11):
//! variable, tiny and empty pages, repeated items, children before their parents, deletes
//! without names or cTags. Through rounds of random changes, the index must always equal the
//! drive, and the events must account for every change exactly once.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_sim::{DeltaQuirks, ItemUpdate, NewItem, NewUser};
use secrecy::SecretString;
use shared::changes::{Change, ChangeEvent};
use shared::clock::OffsetClock;
use shared::config::GraphConfig;
use shared::graph::GraphClient;
use shared::ids::DriveKey;
use shared::queue::MemoryQueue;
use shared::store::{ConnectionStore, DriveState, MemoryStore};
use shared::tokens::StaticToken;
use shared::walk_store::{MemoryWalkStore, Scope, WalkStore};
use shared::walker::{WalkLimits, WalkStats, Walker};

/// An item as the index and the drive are compared: name, parent id, eTag.
type Seen = (Option<String>, Option<String>, Option<String>);

/// A small deterministic generator, so a failure replays.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % below.max(1)
    }
}

async fn run_rounds(business: bool, seed: u64) {
    graphfeed_tests::init_logs();
    let clock = OffsetClock::new();
    let timing = graph_sim::Timing {
        delta_page_size: 9,
        ..graph_sim::Timing::fast()
    };
    let sim = graphfeed_tests::start_sim_with(&clock, timing).await;
    let user = sim
        .sim()
        .create_user(NewUser {
            business: Some(business),
            ..NewUser::default()
        })
        .unwrap();
    let drive = user.drive_id.clone();
    sim.sim()
        .set_delta_quirks(&drive, DeltaQuirks::all(seed))
        .unwrap();
    let drive_key = DriveKey::random();
    let drives = Arc::new(MemoryStore::new());
    drives
        .put_drive(&DriveState::first(
            drive_key,
            &user.tenant_id,
            &user.user_id,
            &drive,
        ))
        .await
        .unwrap();
    let data = Arc::new(MemoryWalkStore::new());
    let changes = Arc::new(MemoryQueue::new());
    let walker = Walker {
        graph: GraphClient::new(&GraphConfig {
            base_url: sim.graph_base_url().parse().unwrap(),
            timeout: Duration::from_secs(5),
        })
        .unwrap(),
        tokens: Arc::new(StaticToken(SecretString::from(user.access_token.clone()))),
        drives,
        data: data.clone(),
        changes: changes.clone(),
        clock: Arc::new(clock.clone()),
        limits: WalkLimits {
            reserve: Duration::ZERO,
            ..WalkLimits::default()
        },
    };
    let far = || Instant::now() + Duration::from_secs(600);
    let s = sim.sim();
    let mut rng = Lcg(seed);
    let mut folders = vec![user.root_id.clone()];
    let mut files: Vec<String> = Vec::new();
    // What the events must account for, item by item.
    let mut expected_created: BTreeSet<String> = BTreeSet::new();
    let mut expected_deleted: BTreeSet<String> = BTreeSet::new();
    for i in 0..12 {
        let parent = folders[rng.next(folders.len())].clone();
        let folder = s
            .create_item(
                &drive,
                &NewItem {
                    parent_id: Some(parent),
                    name: format!("d{i}"),
                    folder: true,
                    size: 0,
                },
            )
            .unwrap();
        folders.push(folder.id);
    }
    for i in 0..40 {
        let parent = folders[rng.next(folders.len())].clone();
        files.push(
            s.create_item(
                &drive,
                &NewItem {
                    parent_id: Some(parent),
                    name: format!("f{i}.txt"),
                    folder: false,
                    size: 1,
                },
            )
            .unwrap()
            .id,
        );
    }
    walker
        .walk(&drive_key, far(), &mut WalkStats::default())
        .await
        .unwrap();
    let scope = Scope {
        drive_key: &drive_key,
        generation: 1,
    };
    for round in 0..6 {
        for step in 0..15 {
            match rng.next(5) {
                0 => {
                    let parent = folders[rng.next(folders.len())].clone();
                    let id = s
                        .create_item(
                            &drive,
                            &NewItem {
                                parent_id: Some(parent),
                                name: format!("n{round}-{step}.txt"),
                                folder: false,
                                size: 2,
                            },
                        )
                        .unwrap()
                        .id;
                    expected_created.insert(id.clone());
                    files.push(id);
                }
                1 if !files.is_empty() => {
                    let id = files[rng.next(files.len())].clone();
                    s.update_item(
                        &drive,
                        &id,
                        &ItemUpdate {
                            name: Some(format!("r{round}-{step}.txt")),
                            parent_id: None,
                        },
                    )
                    .unwrap();
                }
                2 if !files.is_empty() => {
                    let id = files[rng.next(files.len())].clone();
                    let parent = folders[rng.next(folders.len())].clone();
                    s.update_item(
                        &drive,
                        &id,
                        &ItemUpdate {
                            name: None,
                            parent_id: Some(parent),
                        },
                    )
                    .unwrap();
                }
                3 if !files.is_empty() => {
                    let id = files[rng.next(files.len())].clone();
                    s.modify_item(&drive, &id, Some(rng.next(1000) as u64)).unwrap();
                }
                _ if files.len() > 5 => {
                    let id = files.remove(rng.next(files.len()));
                    s.delete_item(&drive, &id).unwrap();
                    // Created and deleted between two walks: delta may show nothing about it.
                    if !expected_created.remove(&id) {
                        expected_deleted.insert(id);
                    }
                }
                _ => {}
            }
        }
        walker
            .walk(&drive_key, far(), &mut WalkStats::default())
            .await
            .unwrap();
        // The index equals the drive: every live item with its name, parent and eTag.
        let index: BTreeMap<String, Seen> = data
            .index_all(scope)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| !e.item.deleted)
            .map(|e| (e.item.id.clone(), (e.item.name, e.item.parent_id, e.item.etag)))
            .collect();
        let live: BTreeMap<String, Seen> = folders
            .iter()
            .chain(files.iter())
            .map(|id| {
                let item = s.item(&drive, id).unwrap();
                (
                    item.id.clone(),
                    (Some(item.name), item.parent_id, Some(item.etag)),
                )
            })
            .collect();
        assert_eq!(index, live, "round {round}: the index is the drive");
    }
    let events: Vec<ChangeEvent> = changes
        .sent()
        .iter()
        .map(|m| serde_json::from_str(&m.body).unwrap())
        .collect();
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "gap-free, each once"
    );
    let created: BTreeSet<String> = events
        .iter()
        .filter(|e| e.change == Change::Created)
        .filter_map(|e| e.item_id.clone())
        .collect();
    let created_live: BTreeSet<String> = expected_created.intersection(&created).cloned().collect();
    assert_eq!(
        created_live, expected_created,
        "every created file that still exists has its created event"
    );
    let deleted: BTreeSet<String> = events
        .iter()
        .filter(|e| e.change == Change::Deleted)
        .filter_map(|e| e.item_id.clone())
        .collect();
    assert!(
        expected_deleted.is_subset(&deleted),
        "every deleted file that was indexed has its event"
    );
    for event in &events {
        if let Some(path) = &event.path {
            assert!(path.starts_with('/'), "{path}");
        }
    }
}

#[tokio::test]
async fn with_every_delta_quirk_on_a_personal_drive_the_index_stays_the_drive_and_no_change_is_lost() {
    run_rounds(false, 11).await;
}

#[tokio::test]
async fn with_every_delta_quirk_on_a_business_drive_without_ctags_the_index_stays_the_drive() {
    run_rounds(true, 29).await;
}
