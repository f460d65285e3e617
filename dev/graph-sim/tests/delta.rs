//! The drive delta feed (graph-protocol.md §5, §10 items 10–12): full enumeration in pages,
//! changes since a deltaLink with their ancestors, deleted items, link forms, 410 resync.

mod support;

use std::collections::{BTreeSet, HashMap};

use graph_sim::errors::MSG_RESYNC_REQUIRED;
use graph_sim::{CreatedUser, ItemUpdate, NewItem, NewUser, RunningSim};
use reqwest::Method;
use serde_json::Value;
use support::*;

/// One delta answer: status, `Location` header, body.
struct Page {
    status: u16,
    location: Option<String>,
    body: Value,
}

/// `GET` an absolute link exactly as given.
async fn get_link(graph: &Graph, url: &str) -> Page {
    let response = graph
        .http
        .get(url)
        .bearer_auth(&graph.token)
        .send()
        .await
        .expect("graph answers");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Page {
        status,
        location,
        body,
    }
}

/// Follows nextLinks from `first` to the deltaLink. Returns every item served (in order), every
/// link followed after the first, and the deltaLink.
async fn walk(graph: &Graph, first: &str) -> (Vec<Value>, Vec<String>, String) {
    let mut items = Vec::new();
    let mut links = Vec::new();
    let mut url = first.to_owned();
    for _ in 0..1000 {
        let page = get_link(graph, &url).await;
        assert_eq!(page.status, 200, "{url}: {}", page.body);
        let next = page.body.get("@odata.nextLink").and_then(Value::as_str);
        let delta = page.body.get("@odata.deltaLink").and_then(Value::as_str);
        assert!(
            next.is_some() != delta.is_some(),
            "a page has a nextLink or a deltaLink: {}",
            page.body
        );
        items.extend(page.body["value"].as_array().expect("value").iter().cloned());
        match (next, delta) {
            (Some(next), _) => {
                links.push(next.to_owned());
                url = next.to_owned();
            }
            (None, Some(delta)) => {
                links.push(delta.to_owned());
                return (items, links, delta.to_owned());
            }
            _ => unreachable!(),
        }
    }
    panic!("the walk never ended");
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect()
}

fn by_id(items: &[Value]) -> HashMap<String, Value> {
    items
        .iter()
        .map(|item| (item["id"].as_str().expect("id").to_owned(), item.clone()))
        .collect()
}

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

async fn delta_link_now(graph: &Graph) -> String {
    let (status, body) = graph
        .call(Method::GET, "/me/drive/root/delta?token=latest", None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["@odata.deltaLink"].as_str().expect("deltaLink").to_owned()
}

#[tokio::test]
async fn a_full_enumeration_pages_to_a_delta_link_covering_every_item() {
    let running = sim_with_page_size(3).await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let docs = create(&running, &user, None, "docs", true);
    let mut expected: BTreeSet<String> = [user.root_id.clone(), docs.clone()].into();
    for n in 0..6 {
        expected.insert(create(&running, &user, Some(&docs), &format!("f{n}.txt"), false));
    }
    expected.insert(create(&running, &user, None, "top.txt", false));
    let gone = create(&running, &user, None, "gone.txt", false);
    running.sim().delete_item(&user.drive_id, &gone).expect("delete");

    let first = format!("{}/me/drive/root/delta?$top=1", running.graph_base_url());
    let (items, links, delta_link) = walk(&graph, &first).await;

    let served = ids(&items);
    assert_eq!(served.len(), expected.len(), "each id once: {served:?}");
    assert_eq!(served.into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(links.len(), 3, "9 items in pages of 3 ($top ignored)");
    for item in &items {
        assert!(item.get("deleted").is_none());
        assert!(item["parentReference"].get("path").is_none());
        assert_eq!(item["parentReference"]["driveId"], user.drive_id.as_str());
        assert!(item["eTag"].is_string() && item["cTag"].is_string() && item["size"].is_u64());
        assert!(item["lastModifiedDateTime"].is_string());
    }
    let items = by_id(&items);
    assert_eq!(items[&docs]["folder"]["childCount"], 0);
    assert_eq!(items[&docs]["parentReference"]["id"], user.root_id.as_str());
    assert!(items[&user.root_id].get("root").is_some());
    assert!(delta_link.starts_with(&format!(
        "{}/drives/{}/root/delta",
        running.graph_base_url(),
        user.drive_id
    )));
    let after = get_link(&graph, &delta_link).await;
    assert_eq!(
        (after.status, after.body["value"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    assert_eq!(running.sim().counters().delta_pages_served, 4);
}

#[tokio::test]
async fn a_change_after_a_delta_link_returns_the_changed_item_and_its_ancestors_only_each_once_without_path()
{
    let running = sim_with_page_size(2).await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let a = create(&running, &user, None, "a", true);
    let b = create(&running, &user, Some(&a), "b", true);
    let c = create(&running, &user, Some(&b), "c", true);
    let f = create(&running, &user, Some(&c), "f.txt", false);
    create(&running, &user, Some(&b), "sibling.txt", false);
    create(&running, &user, None, "other.txt", false);
    let (_, _, since) = walk(
        &graph,
        &format!("{}/me/drive/root/delta", running.graph_base_url()),
    )
    .await;

    running
        .sim()
        .modify_item(&user.drive_id, &f, Some(99))
        .expect("modify");
    running
        .sim()
        .modify_item(&user.drive_id, &f, Some(100))
        .expect("modify again");
    let (items, _, since) = walk(&graph, &since).await;

    let served = ids(&items);
    let expected: BTreeSet<String> =
        [f.clone(), c.clone(), b.clone(), a.clone(), user.root_id.clone()].into();
    assert_eq!(served.len(), expected.len(), "each id once: {served:?}");
    assert_eq!(served.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let items = by_id(&items);
    assert_eq!(items[&f]["size"], 100, "the latest state only");
    for item in items.values() {
        assert!(item["parentReference"].get("path").is_none());
        assert_eq!(item["parentReference"]["driveId"], user.drive_id.as_str());
    }
    assert_eq!(items[&f]["parentReference"]["id"], c.as_str());

    running
        .sim()
        .update_item(
            &user.drive_id,
            &b,
            &ItemUpdate {
                name: Some("b2".into()),
                parent_id: None,
            },
        )
        .expect("rename");
    let (items, _, _) = walk(&graph, &since).await;
    let served: BTreeSet<String> = ids(&items).into_iter().collect();
    assert_eq!(
        served,
        [b.clone(), a, user.root_id.clone()].into(),
        "a folder rename comes without its children"
    );
    assert_eq!(by_id(&items)[&b]["name"], "b2");
}

#[tokio::test]
async fn a_delete_shows_the_deleted_facet_without_ctag() {
    let running = start_sim().await;
    for business in [false, true] {
        let user = running
            .sim()
            .create_user(NewUser {
                business: Some(business),
                ..Default::default()
            })
            .expect("user");
        let graph = Graph::new(&running, &user.access_token);
        let folder = create(&running, &user, None, "folder", true);
        let inner = create(&running, &user, Some(&folder), "inner.txt", false);
        let since = delta_link_now(&graph).await;

        running
            .sim()
            .delete_item(&user.drive_id, &folder)
            .expect("delete");
        let (items, _, _) = walk(&graph, &since).await;

        let items = by_id(&items);
        for id in [&folder, &inner] {
            let item = &items[id];
            assert_eq!(item["deleted"], serde_json::json!({}), "{item}");
            assert!(item.get("cTag").is_none(), "{item}");
            assert!(item["eTag"].is_string());
            assert_eq!(item["parentReference"]["driveId"], user.drive_id.as_str());
            if business {
                assert!(item.get("name").is_none() && item.get("size").is_some(), "{item}");
            } else {
                assert!(item.get("size").is_none() && item.get("name").is_some(), "{item}");
            }
        }
        assert!(
            items[&user.root_id].get("deleted").is_none(),
            "the root is re-emitted as an ancestor"
        );
    }
}

#[tokio::test]
async fn links_in_both_forms_are_followed_verbatim() {
    let running = sim_with_page_size(1).await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    for n in 0..4 {
        create(&running, &user, None, &format!("{n}.txt"), false);
    }

    let first = format!("{}/drives/{}/root/delta", running.graph_base_url(), user.drive_id);
    let (items, links, delta_link) = walk(&graph, &first).await;

    assert_eq!(items.len(), 5);
    let base = format!("{}/drives/{}/root/delta", running.graph_base_url(), user.drive_id);
    assert!(
        links.iter().all(|link| link.starts_with(&base)),
        "absolute: {links:?}"
    );
    assert!(
        links.iter().any(|link| link.contains("/root/delta?token=")),
        "{links:?}"
    );
    assert!(
        links.iter().any(|link| link.contains("/root/delta(token='")),
        "{links:?}"
    );
    create(&running, &user, None, "later.txt", false);
    let (items, _, _) = walk(&graph, &delta_link).await;
    assert_eq!(items.len(), 2, "the new file and the root: {items:?}");

    let (status, body) = graph
        .call(Method::GET, "/me/drive/root/delta(token='not-a-token')", None)
        .await;
    assert_eq!(
        (status.as_u16(), error_of(&body).0.as_str()),
        (400, "invalidRequest")
    );
}

#[tokio::test]
async fn an_expired_token_is_410_with_resync_required_and_inner_error_and_a_location_that_re_enumerates() {
    let running = sim_with_page_size(2).await;
    let user = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);
    let file = create(&running, &user, None, "a.txt", false);
    create(&running, &user, None, "b.txt", false);
    let first = get_link(
        &graph,
        &format!("{}/me/drive/root/delta", running.graph_base_url()),
    )
    .await;
    let next_link = first.body["@odata.nextLink"]
        .as_str()
        .expect("nextLink")
        .to_owned();
    let delta_link = delta_link_now(&graph).await;

    let expired = http()
        .post(format!(
            "{}/drives/{}/expire-delta-tokens",
            running.control_url(),
            user.drive_id
        ))
        .send()
        .await
        .expect("control answers");
    assert_eq!(expired.status(), 200);
    running.sim().delete_item(&user.drive_id, &file).expect("delete");

    for link in [&delta_link, &next_link] {
        let gone = get_link(&graph, link).await;
        assert_eq!(gone.status, 410, "{}", gone.body);
        let error = &gone.body["error"];
        assert_eq!(error["code"], "resyncRequired");
        assert_eq!(error["message"], MSG_RESYNC_REQUIRED);
        assert_eq!(error["innerError"]["code"], "resyncChangesApplyDifferences");
        assert!(error["innerError"]["request-id"].is_string());
        let location = gone.location.expect("Location");
        assert!(location.starts_with(&running.graph_base_url()), "{location}");
        let (items, _, fresh) = walk(&graph, &location).await;
        let served: BTreeSet<String> = ids(&items).into_iter().collect();
        assert_eq!(
            served.len(),
            2,
            "the root and b.txt, not the deleted a.txt: {served:?}"
        );
        assert!(!served.contains(&file));
        assert_eq!(get_link(&graph, &fresh).await.status, 200, "new tokens work");
    }
    assert_eq!(running.sim().counters().delta_resyncs, 2);

    running.sim().expire_delta_tokens(&user.drive_id).expect("expire");
    assert_eq!(get_link(&graph, &delta_link).await.status, 410);
}
