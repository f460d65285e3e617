//! The fleet indexes renew reads: subscriptions by expiry (`gsi1`) and drives by the hour of
//! their last completed walk (`gsi2`), each sharded over [`EXPIRY_SHARDS`] partition keys so no
//! one partition holds the fleet; and the safety net's once-a-day claim (docs/data-model.md).
//!
//! Pages are read with an opaque cursor (the last sort key read), so a run can stop anywhere
//! and the indexes are never read whole into memory by the store.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::ids::DriveKey;
use crate::store::{
    DriveState, DynamoStore, EXPIRY_SHARDS, MemoryStore, StoreError, SubscriptionRecord, call_error,
    drive_pk, from_item, guard, is_condition_failure, key, shard_of, walk_sort_key,
};

/// Items of one index page, and where the next page starts (none after the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub cursor: Option<String>,
}

/// Most items a page holds.
pub const PAGE_SIZE: usize = 500;

/// What renew reads and claims across the fleet.
pub trait FleetIndex: Send + Sync {
    /// Unparked subscriptions of `shard` that expire before `before`, earliest first, after
    /// `cursor`.
    fn expiring<'a>(
        &'a self,
        shard: u8,
        before: DateTime<Utc>,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page<SubscriptionRecord>, StoreError>>;

    /// The earliest expiry among `shard`'s unparked subscriptions.
    fn earliest_expiry(&self, shard: u8) -> BoxFuture<'_, Result<Option<DateTime<Utc>>, StoreError>>;

    /// Walkable drives of `shard` whose last completed walk (or connection, before a first walk)
    /// was in an hour before `before`'s, after `cursor`.
    fn idle<'a>(
        &'a self,
        shard: u8,
        before: DateTime<Utc>,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page<DriveKey>, StoreError>>;

    /// Claims the drive's safety-net walk: true unless one was claimed after `since`.
    fn claim_safety_net<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

/// Every shard number.
pub fn shards() -> impl Iterator<Item = u8> {
    0..EXPIRY_SHARDS
}

fn expiry_cutoff(before: DateTime<Utc>) -> String {
    // `<time>#` sorts before every `<time>#<drive key>`: strictly earlier expiries only.
    format!("{}#", before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn walk_cutoff(before: DateTime<Utc>) -> String {
    format!("{}#", before.format("%Y-%m-%dT%H"))
}

/// The drive key a sort key `<…>#<drive key>` ends with.
fn drive_key_of(sort_key: &str) -> Result<DriveKey, StoreError> {
    sort_key
        .rsplit_once('#')
        .and_then(|(_, k)| DriveKey::parse(k).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("index sort key {sort_key:?} names no drive key")))
}

impl DynamoStore {
    /// One page of `index` where `<pk attribute> = pk` and `<sk attribute> < cutoff`, after
    /// `cursor`, ascending.
    async fn index_page(
        &self,
        index: &str,
        pk: String,
        cutoff: String,
        cursor: Option<&str>,
        limit: usize,
        base_sk: &str,
    ) -> Result<(Vec<HashMap<String, AttributeValue>>, Option<String>), StoreError> {
        let (pk_attr, sk_attr) = (format!("{index}pk"), format!("{index}sk"));
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression("#pk = :pk AND #sk < :cutoff")
            .expression_attribute_names("#pk", &pk_attr)
            .expression_attribute_names("#sk", &sk_attr)
            .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
            .expression_attribute_values(":cutoff", AttributeValue::S(cutoff))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX));
        if let Some(after) = cursor {
            let drive = drive_key_of(after)?;
            let mut start = key(drive_pk(&drive), base_sk);
            start.insert(pk_attr.clone(), AttributeValue::S(pk));
            start.insert(sk_attr.clone(), AttributeValue::S(after.to_owned()));
            request = request.set_exclusive_start_key(Some(start));
        }
        let out = request.send().await.map_err(call_error)?;
        let items = out.items.unwrap_or_default();
        let cursor = match out.last_evaluated_key {
            Some(last) => match last.get(&sk_attr) {
                Some(AttributeValue::S(sk)) => Some(sk.clone()),
                _ => None,
            },
            None => None,
        };
        Ok((items, cursor))
    }
}

impl FleetIndex for DynamoStore {
    fn expiring<'a>(
        &'a self,
        shard: u8,
        before: DateTime<Utc>,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page<SubscriptionRecord>, StoreError>> {
        Box::pin(async move {
            let (items, cursor) = self
                .index_page(
                    "gsi1",
                    format!("EXP#{shard}"),
                    expiry_cutoff(before),
                    cursor,
                    PAGE_SIZE,
                    "SUB",
                )
                .await?;
            let items = items.into_iter().map(from_item).collect::<Result<_, _>>()?;
            Ok(Page { items, cursor })
        })
    }

    fn earliest_expiry(&self, shard: u8) -> BoxFuture<'_, Result<Option<DateTime<Utc>>, StoreError>> {
        Box::pin(async move {
            let (items, _) = self
                .index_page("gsi1", format!("EXP#{shard}"), "~".to_owned(), None, 1, "SUB")
                .await?;
            let first: Option<SubscriptionRecord> = items.into_iter().next().map(from_item).transpose()?;
            Ok(first.map(|r| r.expires_at))
        })
    }

    fn idle<'a>(
        &'a self,
        shard: u8,
        before: DateTime<Utc>,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page<DriveKey>, StoreError>> {
        Box::pin(async move {
            let (items, cursor) = self
                .index_page(
                    "gsi2",
                    format!("WALK#{shard}"),
                    walk_cutoff(before),
                    cursor,
                    PAGE_SIZE,
                    "STATE",
                )
                .await?;
            let items = items
                .iter()
                .map(|item| match item.get("gsi2sk") {
                    Some(AttributeValue::S(sk)) => drive_key_of(sk),
                    _ => Err(StoreError::Corrupt("a walk index entry has no gsi2sk".into())),
                })
                .collect::<Result<_, _>>()?;
            Ok(Page { items, cursor })
        })
    }

    fn claim_safety_net<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut item = key(drive_pk(drive_key), "NUDGE");
            item.insert("kind".into(), AttributeValue::S("safety-net".into()));
            item.insert("at".into(), AttributeValue::N(now.timestamp().to_string()));
            // Gone by itself two days later (the claim only matters for one).
            item.insert(
                "ttl".into(),
                AttributeValue::N((now + chrono::Duration::days(2)).timestamp().to_string()),
            );
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk) OR #at <= :since")
                .expression_attribute_names("#at", "at")
                .expression_attribute_values(":since", AttributeValue::N(since.timestamp().to_string()))
                .send()
                .await;
            match put {
                Ok(_) => Ok(true),
                Err(e) if is_condition_failure(&e) => Ok(false),
                Err(e) => Err(call_error(e)),
            }
        })
    }
}

impl FleetIndex for MemoryStore {
    fn expiring<'a>(
        &'a self,
        shard: u8,
        before: DateTime<Utc>,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page<SubscriptionRecord>, StoreError>> {
        let cutoff = expiry_cutoff(before);
        let mut found: Vec<(String, SubscriptionRecord)> = guard(&self.subscriptions)
            .values()
            .filter(|s| !s.parked && shard_of(&s.drive_key) == shard)
            .map(|s| (s.expiry_sort_key(), s.clone()))
            .filter(|(sk, _)| *sk < cutoff && cursor.is_none_or(|after| sk.as_str() > after))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Box::pin(async move { Ok(page_of(found)) })
    }

    fn earliest_expiry(&self, shard: u8) -> BoxFuture<'_, Result<Option<DateTime<Utc>>, StoreError>> {
        let earliest = guard(&self.subscriptions)
            .values()
            .filter(|s| !s.parked && shard_of(&s.drive_key) == shard)
            .map(|s| s.expires_at)
            .min();
        Box::pin(async move { Ok(earliest) })
    }

    fn idle<'a>(
        &'a self,
        shard: u8,
        before: DateTime<Utc>,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page<DriveKey>, StoreError>> {
        let cutoff = walk_cutoff(before);
        let mut found: Vec<(String, DriveKey)> = guard(&self.drives)
            .values()
            .filter(|d: &&DriveState| d.walkable() && shard_of(&d.drive_key) == shard)
            .map(|d| (walk_sort_key(&d.drive_key, d.last_seen_at()), d.drive_key))
            .filter(|(sk, _)| *sk < cutoff && cursor.is_none_or(|after| sk.as_str() > after))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Box::pin(async move { Ok(page_of(found)) })
    }

    fn claim_safety_net<'a>(
        &'a self,
        drive_key: &'a DriveKey,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut nudges = guard(&self.nudges);
        // Second precision, as the DynamoDB adapter stores it.
        let claimed = match nudges.get(drive_key) {
            Some(at) if at.timestamp() > since.timestamp() => false,
            _ => {
                nudges.insert(*drive_key, now);
                true
            }
        };
        Box::pin(async move { Ok(claimed) })
    }
}

fn page_of<T>(mut found: Vec<(String, T)>) -> Page<T> {
    let more = found.len() > PAGE_SIZE;
    found.truncate(PAGE_SIZE);
    let cursor = if more {
        found.last().map(|(sk, _)| sk.clone())
    } else {
        None
    };
    Page {
        items: found.into_iter().map(|(_, item)| item).collect(),
        cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ConnectionStore;

    fn record(drive_key: DriveKey, expires_at: DateTime<Utc>) -> SubscriptionRecord {
        SubscriptionRecord::first(
            drive_key,
            format!("sub-{drive_key}"),
            expires_at,
            "k1",
            "me/drive/root",
            1,
        )
    }

    fn key_in(shard: u8, n: u8) -> DriveKey {
        let mut bytes = [n; 16];
        bytes[0] = shard;
        DriveKey::from_bytes(bytes)
    }

    #[tokio::test]
    async fn expiring_pages_one_shard_earliest_first_and_skips_parked_and_later_ones() {
        let store = MemoryStore::new();
        let now = Utc::now();
        // PAGE_SIZE + 3 due on shard 1, one later, one parked, one on shard 2.
        let due = PAGE_SIZE + 3;
        for n in 0..due {
            let mut bytes = [0u8; 16];
            bytes[0] = 1;
            bytes[1..9].copy_from_slice(&(n as u64).to_be_bytes());
            let k = DriveKey::from_bytes(bytes);
            store
                .put_subscription(&record(k, now + chrono::Duration::minutes(n as i64)))
                .await
                .unwrap();
        }
        store
            .put_subscription(&record(key_in(1, 200), now + chrono::Duration::days(20)))
            .await
            .unwrap();
        store
            .put_subscription(&SubscriptionRecord {
                parked: true,
                ..record(key_in(1, 201), now)
            })
            .await
            .unwrap();
        store.put_subscription(&record(key_in(2, 1), now)).await.unwrap();
        let before = now + chrono::Duration::days(3);
        let first = store.expiring(1, before, None).await.unwrap();
        assert_eq!(first.items.len(), PAGE_SIZE);
        assert!(first.items.windows(2).all(|w| w[0].expires_at <= w[1].expires_at));
        let second = store.expiring(1, before, first.cursor.as_deref()).await.unwrap();
        assert_eq!(second.items.len(), 3);
        assert_eq!(second.cursor, None);
        assert_eq!(
            store.earliest_expiry(1).await.unwrap().map(|t| t.timestamp()),
            Some(now.timestamp())
        );
        assert_eq!(store.earliest_expiry(3).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_safety_net_claim_holds_until_the_next_day() {
        let store = MemoryStore::new();
        let k = key_in(4, 4);
        let now = Utc::now();
        let day = chrono::Duration::hours(24);
        assert!(store.claim_safety_net(&k, now, now - day).await.unwrap());
        let later = now + chrono::Duration::hours(23);
        assert!(!store.claim_safety_net(&k, later, later - day).await.unwrap());
        let next_day = now + chrono::Duration::hours(24);
        assert!(
            store
                .claim_safety_net(&k, next_day, next_day - day)
                .await
                .unwrap()
        );
    }

    #[test]
    fn sort_keys_name_their_drive_key_and_cutoffs_exclude_the_cutoff_itself() {
        let k = key_in(7, 9);
        let at: DateTime<Utc> = "2026-11-22T10:59:59Z".parse().unwrap();
        let sk = walk_sort_key(&k, Some(at));
        assert!(sk.starts_with("2026-11-22T10#"));
        assert_eq!(drive_key_of(&sk).unwrap(), k);
        assert!(sk < walk_cutoff("2026-11-22T11:00:00Z".parse().unwrap()));
        assert!(sk >= walk_cutoff(at));
        assert!(walk_sort_key(&k, None) < walk_cutoff(at));
        let r = record(k, at);
        assert!(r.expiry_sort_key() >= expiry_cutoff(at));
        assert!(r.expiry_sort_key() < expiry_cutoff(at + chrono::Duration::seconds(1)));
    }
}
