//! Delta quirks (graph-protocol.md §5.2, §5.3, §10 items 10–11): variable and tiny pages, empty
//! pages with a nextLink, repeated items, child-before-parent order, business cTag omission, and
//! the walk plans kept per drive (410 when a forgotten walk's drive changed).

mod support;

use std::collections::{BTreeSet, HashMap};

use graph_sim::{CreatedUser, DeltaQuirks, NewItem, NewUser, Populate, RunningSim};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

async fn sim_with_page_size(size: usize) -> RunningSim {
    start_sim_with(|config| config.timing.delta_page_size = size).await
}

fn create(
    running: &RunningSim,
    user: &CreatedUser,
    parent: Option<&str>,
    name: &str,
    folder: bool,
) -> String {
    running
        .sim()
        .create_item(
            &user.drive_id,
            &NewItem {
                parent_id: parent.map(str::to_owned),
                name: name.to_owned(),
                folder,
                size: if folder { 0 } else { 7 },
            },
        )
        .expect("item")
        .id
}

fn first_link(running: &RunningSim) -> String {
    format!("{}/me/drive/root/delta", running.graph_base_url())
}

async fn latest_link(running: &RunningSim, user: &CreatedUser) -> String {
    let answer = send(
        Method::GET,
        &format!("{}?token=latest", first_link(running)),
        Some(&user.access_token),
        None,
    )
    .await;
    answer.body["@odata.deltaLink"]
        .as_str()
        .expect("deltaLink")
        .to_owned()
}

fn set_quirks(running: &RunningSim, user: &CreatedUser, quirks: DeltaQuirks) {
    running
        .sim()
        .set_delta_quirks(&user.drive_id, quirks)
        .expect("quirks");
}

#[tokio::test]
async fn variable_pages_hold_one_to_page_size_items_ignore_top_and_repeat_for_the_same_seed() {
    let running = sim_with_page_size(10).await;
    let user = new_user(&running);
    running
        .sim()
        .populate(
            &user.drive_id,
            Populate {
                files: 150,
                folders: 10,
                seed: 1,
            },
        )
        .expect("populate");
    set_quirks(
        &running,
        &user,
        DeltaQuirks {
            seed: 5,
            variable_page_sizes: true,
            ..DeltaQuirks::default()
        },
    );

    let first = format!("{}?$top=2", first_link(&running));
    let walk = delta_walk(&user.access_token, &first).await;
    let again = delta_walk(&user.access_token, &first).await;

    let sizes = walk.page_sizes();
    assert!(sizes.iter().all(|size| (1..=10).contains(size)), "{sizes:?}");
    assert!(sizes.iter().any(|size| *size > 2), "$top is ignored: {sizes:?}");
    assert!(sizes.iter().collect::<BTreeSet<_>>().len() > 3, "{sizes:?}");
    let ids = walk.ids();
    assert_eq!(ids.len(), 161, "each item once");
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 161);
    assert_eq!(again.page_sizes(), sizes, "the same seed, the same pages");
    assert_eq!(again.ids(), ids);
}

#[tokio::test]
async fn a_page_holding_a_deleted_item_has_at_most_seven_items() {
    let running = sim_with_page_size(50).await;
    let user = new_user(&running);
    let files: Vec<String> = (0..120)
        .map(|n| create(&running, &user, None, &format!("f{n:03}.txt"), false))
        .collect();
    let since = latest_link(&running, &user).await;
    for file in &files[..60] {
        running
            .sim()
            .modify_item(&user.drive_id, file, Some(9))
            .expect("modify");
    }
    for file in &files[100..110] {
        running.sim().delete_item(&user.drive_id, file).expect("delete");
    }
    set_quirks(
        &running,
        &user,
        DeltaQuirks {
            tiny_pages_around_deletes: true,
            ..DeltaQuirks::default()
        },
    );

    let walk = delta_walk(&user.access_token, &since).await;

    assert_eq!(walk.ids().len(), 71, "60 modified, 10 deleted, the root");
    for page in &walk.pages {
        if page.iter().any(|item| item.get("deleted").is_some()) {
            assert!(page.len() <= 7, "{} items on a page with a delete", page.len());
        }
    }
    assert_eq!(walk.pages[0].len(), 50, "pages without deletes stay full");
}

#[tokio::test]
async fn empty_pages_carry_a_next_link_and_the_walk_still_covers_every_item() {
    let running = sim_with_page_size(4).await;
    let user = new_user(&running);
    for n in 0..30 {
        create(&running, &user, None, &format!("{n}.txt"), false);
    }
    set_quirks(
        &running,
        &user,
        DeltaQuirks {
            seed: 11,
            empty_pages: true,
            ..DeltaQuirks::default()
        },
    );
    let mut empty_with_next = 0;

    let walk = delta_walk_with(&user.access_token, &first_link(&running), |_, page| {
        if page["value"] == json!([]) && page["@odata.nextLink"].is_string() {
            empty_with_next += 1;
        }
    })
    .await;

    assert!(empty_with_next >= 1, "{:?}", walk.page_sizes());
    assert_ne!(
        walk.pages.last().map(Vec::len),
        Some(0),
        "the deltaLink page has items"
    );
    assert_eq!(walk.ids().into_iter().collect::<BTreeSet<_>>().len(), 31);
}

#[tokio::test]
async fn a_repeated_item_comes_again_and_its_last_occurrence_is_its_latest_state() {
    let running = sim_with_page_size(5).await;
    let user = new_user(&running);
    for n in 0..40 {
        create(&running, &user, None, &format!("{n:02}.txt"), false);
    }
    set_quirks(
        &running,
        &user,
        DeltaQuirks {
            seed: 3,
            repeat_items: true,
            ..DeltaQuirks::default()
        },
    );
    let sim = running.sim();
    let drive_id = user.drive_id.clone();
    let mut changed = None;

    let walk = delta_walk_with(&user.access_token, &first_link(&running), |index, page| {
        if index == 0 {
            // A file served on the first page changes while the walk goes on.
            let file = page["value"]
                .as_array()
                .expect("value")
                .iter()
                .find(|item| item.get("file").is_some())
                .expect("a file on page one");
            let id = file["id"].as_str().expect("id").to_owned();
            sim.modify_item(&drive_id, &id, Some(12345)).expect("modify");
            changed = Some(id);
        }
    })
    .await;

    let changed = changed.expect("changed");
    let items = walk.items();
    let occurrences: Vec<&Value> = items
        .iter()
        .filter(|item| item["id"] == changed.as_str())
        .collect();
    assert!(occurrences.len() >= 2, "served again after its change");
    assert_eq!(occurrences.last().expect("last")["size"], 12345);
    assert_ne!(occurrences[0]["size"], 12345);
    let ids = walk.ids();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 41, "every item");
    assert!(
        ids.len() > 42,
        "seeded repeats besides the changed file: {}",
        ids.len()
    );
}

#[tokio::test]
async fn child_before_parent_serves_a_new_file_on_an_earlier_page_than_its_new_folders() {
    let running = sim_with_page_size(1).await;
    let user = new_user(&running);
    let since = latest_link(&running, &user).await;
    let a = create(&running, &user, None, "a", true);
    let b = create(&running, &user, Some(&a), "b", true);
    let file = create(&running, &user, Some(&b), "deep.txt", false);
    set_quirks(
        &running,
        &user,
        DeltaQuirks {
            child_before_parent: true,
            ..DeltaQuirks::default()
        },
    );

    let walk = delta_walk(&user.access_token, &since).await;

    let page_of = |id: &str| {
        walk.pages
            .iter()
            .position(|page| page.iter().any(|item| item["id"] == id))
            .expect("served")
    };
    assert!(page_of(&file) < page_of(&b), "{:?}", walk.ids());
    assert!(page_of(&b) < page_of(&a));
    assert!(page_of(&a) < page_of(&user.root_id));
}

#[tokio::test]
async fn business_items_lack_ctag_only_with_the_quirk_and_deletes_follow_the_tables_always() {
    let running = start_sim().await;
    for business in [true, false] {
        let user = running
            .sim()
            .create_user(NewUser {
                business: Some(business),
                ..Default::default()
            })
            .expect("user");
        let file = create(&running, &user, None, "a.txt", false);
        let gone = create(&running, &user, None, "gone.txt", false);
        let since = latest_link(&running, &user).await;
        running.sim().delete_item(&user.drive_id, &gone).expect("delete");
        running
            .sim()
            .modify_item(&user.drive_id, &file, Some(3))
            .expect("modify");

        let plain = delta_walk(&user.access_token, &first_link(&running)).await;
        assert!(
            plain.items().iter().all(|item| item["cTag"].is_string()),
            "{business}"
        );

        set_quirks(
            &running,
            &user,
            DeltaQuirks {
                business_omits_ctag: true,
                ..DeltaQuirks::default()
            },
        );
        let full = delta_walk(&user.access_token, &first_link(&running)).await;
        let changes = delta_walk(&user.access_token, &since).await;
        let items: HashMap<String, Value> = changes
            .items()
            .into_iter()
            .map(|item| (item["id"].as_str().expect("id").to_owned(), item))
            .collect();
        if business {
            assert!(full.items().iter().all(|item| item.get("cTag").is_none()));
            assert!(items[&file].get("cTag").is_none(), "modify omits cTag");
            assert!(items[&gone].get("name").is_none() && items[&gone]["size"].is_u64());
        } else {
            assert!(full.items().iter().all(|item| item["cTag"].is_string()));
            assert!(items[&gone].get("size").is_none() && items[&gone]["name"].is_string());
        }
        assert!(items[&gone].get("cTag").is_none());
    }
}

#[tokio::test]
async fn quirks_are_set_per_drive_or_for_all_drives_over_http_and_a_walk_keeps_its_own() {
    let running = sim_with_page_size(2).await;
    let user = new_user(&running);
    let other = new_user(&running);
    for n in 0..6 {
        create(&running, &user, None, &format!("{n}.txt"), false);
    }
    let path = format!("/drives/{}/delta-quirks", user.drive_id);

    let set = control_call(
        &running,
        Method::POST,
        &path,
        Some(json!({"seed": 3, "empty_pages": true, "page_size": 3})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(
        (
            set.body["seed"].clone(),
            set.body["empty_pages"].clone(),
            set.body["page_size"].clone()
        ),
        (json!(3), json!(true), json!(3))
    );
    assert_eq!(set.body["repeat_items"], false);
    let all = control_call(
        &running,
        Method::POST,
        "/delta-quirks",
        Some(json!({"repeat_items": true})),
    )
    .await;
    assert_eq!(all.status, 200);
    let other_quirks = control_call(
        &running,
        Method::GET,
        &format!("/drives/{}/delta-quirks", other.drive_id),
        None,
    )
    .await;
    assert_eq!(other_quirks.body["repeat_items"], true, "the default applies");
    assert_eq!(
        control_call(&running, Method::GET, &path, None).await.body["repeat_items"],
        false
    );
    let bad = control_call(&running, Method::POST, &path, Some(json!({"sideways": true}))).await;
    assert_eq!(bad.status, 400);
    let unknown = control_call(&running, Method::POST, "/drives/nope/delta-quirks", None).await;
    assert_eq!(unknown.status, 404);

    // A walk started with page size 3 keeps it when the quirks change under it.
    let sim = running.sim();
    let drive_id = user.drive_id.clone();
    let walk = delta_walk_with(&user.access_token, &first_link(&running), |index, _| {
        if index == 0 {
            sim.set_delta_quirks(&drive_id, DeltaQuirks::default())
                .expect("quirks");
        }
    })
    .await;
    assert!(
        walk.page_sizes().iter().all(|size| *size <= 3),
        "{:?}",
        walk.page_sizes()
    );
    assert!(walk.page_sizes().contains(&3));

    let cleared = control_call(&running, Method::DELETE, &path, None).await;
    assert_eq!(cleared.body["repeat_items"], true, "back to the default");
}

#[tokio::test]
async fn a_later_page_of_a_forgotten_walk_is_planned_again_but_is_410_once_the_drive_changed() {
    let running = sim_with_page_size(2).await;
    let user = new_user(&running);
    for n in 0..5 {
        create(&running, &user, None, &format!("{n}.txt"), false);
    }
    let first_page = |seed: u64| {
        set_quirks(
            &running,
            &user,
            DeltaQuirks {
                seed,
                ..DeltaQuirks::default()
            },
        );
        let (url, token) = (first_link(&running), user.access_token.clone());
        async move { send(Method::GET, &url, Some(&token), None).await }
    };
    let next_of = |answer: Answer| {
        answer.body["@odata.nextLink"]
            .as_str()
            .expect("nextLink")
            .to_owned()
    };
    let kept = next_of(first_page(0).await);
    for seed in 1..=graph_sim::drive::WALKS_KEPT as u64 {
        first_page(seed).await;
    }

    let replanned = send(Method::GET, &kept, Some(&user.access_token), None).await;
    assert_eq!(replanned.status, 200, "unchanged drive: planned again");
    let kept = next_of(replanned);
    for seed in 100..100 + graph_sim::drive::WALKS_KEPT as u64 {
        first_page(seed).await;
    }
    create(&running, &user, None, "late.txt", false);

    let gone = send(Method::GET, &kept, Some(&user.access_token), None).await;
    assert_eq!(gone.status, 410, "{}", gone.body);
    assert_eq!(gone.body["error"]["code"], "resyncRequired");
    let location = gone.header("location").expect("Location").to_owned();
    let fresh = delta_walk(&user.access_token, &location).await;
    assert_eq!(fresh.ids().len(), 7, "the root, five files and the late one");
}
