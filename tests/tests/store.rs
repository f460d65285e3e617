//! Connection state against moto's DynamoDB, in the template's table: versioned writes that a
//! racing writer cannot overwrite, a stable drive key, and the disconnect tombstone.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use graphfeed_tests::TestStack;
use shared::ids::{DriveKey, ObjectId, TenantId, UserKey};
use shared::store::{
    ConnectionStore, DriveStatus, DynamoStore, StoreError, UserRecord, begin_connection, tombstone,
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
    let (connected, _) = begin_connection(&store, &drive, &who, "drive-1").await.unwrap();
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
    let (reconnected, _) = begin_connection(&store, &drive, &who, "drive-1").await.unwrap();
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
    let record = shared::store::SubscriptionRecord {
        drive_key: drive,
        subscription_id: "s-1".into(),
        expires_at: "2026-12-20T10:00:00Z".parse().unwrap(),
        key_id: "local".into(),
        resource: "me/drive/root".into(),
        generation: 1,
        version: 1,
    };
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
}
