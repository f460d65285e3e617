//! Connection state against moto's DynamoDB, in the template's table: versioned writes that a
//! racing writer cannot overwrite, a stable drive key, the disconnect tombstone, and the fleet
//! indexes renew reads (expiry, last walk, the safety-net claim).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use futures::StreamExt as _;
use graphfeed_tests::TestStack;
use shared::fleet::{FleetIndex, PAGE_SIZE};
use shared::ids::{DriveKey, ObjectId, TenantId, UserKey};
use shared::store::{
    ConnectionStore, DriveState, DriveStatus, DynamoStore, StoreError, SubscriptionRecord, UserRecord,
    begin_connection, tombstone,
};

fn store(stack: &TestStack) -> DynamoStore {
    let table = stack.running.connect_env.get("TABLE_NAME").unwrap().to_owned();
    DynamoStore::new(aws_sdk_dynamodb::Client::new(&stack.aws), table)
}

fn user() -> UserKey {
    UserKey::new(
        TenantId::parse(&uuid::Uuid::new_v4().to_string()).unwrap(),
        ObjectId::parse(&uuid::Uuid::new_v4().to_string()).unwrap(),
    )
}

#[tokio::test]
async fn two_racing_first_connects_agree_on_one_drive_key() {
    let stack = TestStack::start().await;
    let store = store(&stack);
    let who = user();
    let record = |key| UserRecord {
        drive_key: key,
        drive_id: "d".into(),
        drive_type: "personal".into(),
        created_at: chrono::Utc::now(),
    };
    let (a, b) = (record(DriveKey::random()), record(DriveKey::random()));
    let (ra, rb) = tokio::join!(store.create_user(&who, &a), store.create_user(&who, &b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.drive_key, rb.drive_key);
    assert_eq!(store.user(&who).await.unwrap().unwrap().drive_key, ra.drive_key);
}

#[tokio::test]
async fn a_walk_racing_a_disconnect_writes_nothing() {
    let stack = TestStack::start().await;
    let store = store(&stack);
    let (who, drive) = (user(), DriveKey::random());
    let (connected, _) = begin_connection(&store, &drive, &who, "drive-1", chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(
        (connected.generation, connected.state),
        (1, DriveStatus::BaselinePending)
    );

    // A walk read the state, then the user disconnected.
    let seen_by_walk = store.drive(&drive).await.unwrap().unwrap();
    tombstone(&store, &drive).await.unwrap();

    // The walk now tries to commit its deltaLink on what it saw: refused, nothing written.
    let late = shared::store::DriveState {
        delta_link: Some("https://graph.microsoft.com/v1.0/drives/d/root/delta?token=abc".into()),
        state: DriveStatus::Active,
        version: seen_by_walk.version + 1,
        ..seen_by_walk
    };
    assert!(matches!(store.put_drive(&late).await, Err(StoreError::Conflict)));
    let after = store.drive(&drive).await.unwrap().unwrap();
    assert_eq!(
        (after.state, after.generation, after.delta_link),
        (DriveStatus::Disconnected, 2, None)
    );

    // A second disconnect is fine; a reconnect takes the next generation and keeps the sequence.
    tombstone(&store, &drive).await.unwrap();
    let mut with_sequence = store.drive(&drive).await.unwrap().unwrap();
    with_sequence.seq_high_water = 41;
    with_sequence.version += 1;
    store.put_drive(&with_sequence).await.unwrap();
    let (reconnected, _) = begin_connection(&store, &drive, &who, "drive-1", chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(
        (
            reconnected.generation,
            reconnected.state,
            reconnected.seq_high_water
        ),
        (3, DriveStatus::BaselinePending, 41)
    );
}

#[tokio::test]
async fn a_subscription_record_is_indexed_by_expiry_on_a_sharded_key() {
    let stack = TestStack::start().await;
    let store = store(&stack);
    let drive = DriveKey::random();
    let record = SubscriptionRecord::first(
        drive,
        "s-1",
        "2026-12-20T10:00:00Z".parse().unwrap(),
        "local",
        "me/drive/root",
        1,
    );
    store.put_subscription(&record).await.unwrap();
    assert!(
        matches!(store.put_subscription(&record).await, Err(StoreError::Conflict)),
        "version 1 exists already"
    );
    let table = stack.running.connect_env.get("TABLE_NAME").unwrap().to_owned();
    let found = aws_sdk_dynamodb::Client::new(&stack.aws)
        .query()
        .table_name(table)
        .index_name("gsi1")
        .key_condition_expression("gsi1pk = :shard AND gsi1sk < :before")
        .expression_attribute_values(
            ":shard",
            aws_sdk_dynamodb::types::AttributeValue::S(record.expiry_shard()),
        )
        .expression_attribute_values(
            ":before",
            aws_sdk_dynamodb::types::AttributeValue::S("2026-12-21".into()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(found.count, 1);
    assert!(record.expiry_shard().starts_with("EXP#"));

    // A conditional delete of another version keeps the record; of its own version, deletes it.
    store.delete_subscription_version(&drive, 2).await.unwrap();
    assert!(store.subscription(&drive).await.unwrap().is_some());
    store.delete_subscription_version(&drive, 1).await.unwrap();
    assert!(store.subscription(&drive).await.unwrap().is_none());
}

fn key_on_shard(shard: u8, n: u16) -> DriveKey {
    let mut bytes = [0u8; 16];
    bytes[0] = shard;
    bytes[1..3].copy_from_slice(&n.to_be_bytes());
    bytes[3] = 0x5a;
    DriveKey::from_bytes(bytes)
}

fn subscription(drive_key: DriveKey, expires_at: chrono::DateTime<chrono::Utc>) -> SubscriptionRecord {
    SubscriptionRecord::first(
        drive_key,
        format!("s-{drive_key}"),
        expires_at,
        "local",
        "me/drive/root",
        1,
    )
}

#[tokio::test]
async fn the_expiry_index_pages_a_shard_earliest_first_and_leaves_out_parked_and_later_subscriptions() {
    let stack = TestStack::start().await;
    let store = store(&stack);
    let now = chrono::Utc::now();
    let due = PAGE_SIZE + 2;
    let writes = (0..due).map(|n| {
        let record = subscription(
            key_on_shard(3, n as u16),
            now + chrono::Duration::seconds(n as i64),
        );
        let store = &store;
        async move { store.put_subscription(&record).await.unwrap() }
    });
    futures::stream::iter(writes)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    store
        .put_subscription(&subscription(
            key_on_shard(3, 9000),
            now + chrono::Duration::days(10),
        ))
        .await
        .unwrap();
    store
        .put_subscription(&SubscriptionRecord {
            parked: true,
            ..subscription(key_on_shard(3, 9001), now - chrono::Duration::days(1))
        })
        .await
        .unwrap();
    store
        .put_subscription(&subscription(key_on_shard(4, 1), now))
        .await
        .unwrap();

    let before = now + chrono::Duration::days(3);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.expiring(3, before, cursor.as_deref()).await.unwrap();
        pages += 1;
        seen.extend(page.items);
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert!(pages >= 2, "{due} items need more than one page of {PAGE_SIZE}");
    assert_eq!(seen.len(), due);
    assert!(seen.windows(2).all(|w| w[0].expires_at <= w[1].expires_at));
    assert!(seen.iter().all(|r| !r.parked && r.drive_key.as_bytes()[0] == 3));
    assert_eq!(
        store.earliest_expiry(3).await.unwrap().map(|t| t.timestamp()),
        Some(now.timestamp())
    );
    assert_eq!(store.earliest_expiry(5).await.unwrap(), None);
}

#[tokio::test]
async fn the_walk_index_lists_idle_walkable_drives_and_the_safety_net_claim_holds_for_a_day() {
    let stack = TestStack::start().await;
    let store = store(&stack);
    let now = chrono::Utc::now();
    let day_ago = now - chrono::Duration::hours(24);
    let who = user();
    let state = |n: u16, completed: Option<chrono::DateTime<chrono::Utc>>, status: DriveStatus| DriveState {
        state: status,
        last_walk_completed_at: completed,
        connected_at: Some(now - chrono::Duration::days(30)),
        ..DriveState::first(key_on_shard(6, n), who.tenant.as_str(), who.object.as_str(), "d")
    };
    let idle = state(1, Some(now - chrono::Duration::hours(30)), DriveStatus::Active);
    let never_walked = state(2, None, DriveStatus::BaselinePending);
    let recent = state(3, Some(now - chrono::Duration::hours(2)), DriveStatus::Active);
    let waiting_for_user = state(4, Some(now - chrono::Duration::days(5)), DriveStatus::NeedsReauth);
    let gone = state(
        5,
        Some(now - chrono::Duration::days(5)),
        DriveStatus::Disconnected,
    );
    for s in [&idle, &never_walked, &recent, &waiting_for_user, &gone] {
        store.put_drive(s).await.unwrap();
    }
    let page = store.idle(6, day_ago, None).await.unwrap();
    let mut found = page.items.clone();
    found.sort_by_key(|k| k.to_string());
    let mut expected = vec![idle.drive_key, never_walked.drive_key];
    expected.sort_by_key(|k| k.to_string());
    assert_eq!(found, expected);
    assert_eq!(page.cursor, None);

    // A drive that leaves the walkable states leaves the index.
    store
        .put_drive(&DriveState {
            state: DriveStatus::NeedsReauth,
            version: idle.version + 1,
            ..idle.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        store.idle(6, day_ago, None).await.unwrap().items,
        vec![never_walked.drive_key]
    );

    assert!(
        store
            .claim_safety_net(&idle.drive_key, now, day_ago)
            .await
            .unwrap()
    );
    let later = now + chrono::Duration::hours(23);
    assert!(
        !store
            .claim_safety_net(&idle.drive_key, later, later - chrono::Duration::hours(24))
            .await
            .unwrap()
    );
    let next_day = now + chrono::Duration::hours(25);
    assert!(
        store
            .claim_safety_net(&idle.drive_key, next_day, next_day - chrono::Duration::hours(24))
            .await
            .unwrap()
    );
}
