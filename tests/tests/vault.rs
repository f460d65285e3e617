//! The token vault against moto: KMS envelope encryption, versioned writes, crypto-shred and the
//! warm cache, on the table and key that `template.yaml` defines (bootstrapped per test under a
//! unique stack name).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use graphfeed_tests::{REGION, aws, init_logs, unique_stack};
use local_stack::bootstrap::{Options, Stack, bootstrap};
use local_stack::template::Template;
use secrecy::{ExposeSecret, SecretString};
use shared::clock::OffsetClock;
use shared::config::{Env, KMS_KEY_ID, TABLE_NAME};
use shared::ids::{ObjectId, TenantId, UserKey};
use shared::vault::{KmsCalls, KmsDynamoVault, TOKEN_SORT_KEY, TokenVault, VaultConfig, VaultError};

const TENANT: &str = "7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c";

struct Fixture {
    aws: aws_config::SdkConfig,
    stack: Stack,
    config: VaultConfig,
    clock: OffsetClock,
    dynamodb: aws_sdk_dynamodb::Client,
}

impl Fixture {
    /// A fresh stack (table, key, alias) in moto.
    async fn new() -> Self {
        init_logs();
        let aws = aws().await;
        let stack = bootstrap(
            &Template::repository().unwrap(),
            &aws,
            &Options {
                stack: unique_stack(),
                region: REGION.into(),
                secret_values: BTreeMap::new(),
                parameters: graphfeed_tests::local_parameters(),
            },
        )
        .await
        .unwrap();
        let env = Env::from_pairs([
            (TABLE_NAME, stack.reference("Table").unwrap()),
            (KMS_KEY_ID, stack.created["TokenKey"].arn.as_str()),
        ]);
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&aws),
            config: VaultConfig::from_env(&env).unwrap(),
            clock: OffsetClock::new(),
            aws,
            stack,
        }
    }

    /// A vault as one warm container holds it: each call stands for another container.
    fn vault(&self) -> KmsDynamoVault {
        KmsDynamoVault::from_sdk_config(&self.aws, &self.config, Arc::new(self.clock.clone()))
    }

    fn table(&self) -> &str {
        &self.config.table_name
    }

    fn key(user: &UserKey) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S(format!("USER#{user}"))),
            ("sk".to_owned(), AttributeValue::S(TOKEN_SORT_KEY.to_owned())),
        ])
    }

    /// The raw stored item, as DynamoDB holds it.
    async fn raw(&self, user: &UserKey) -> Option<HashMap<String, AttributeValue>> {
        self.dynamodb
            .get_item()
            .table_name(self.table())
            .set_key(Some(Self::key(user)))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
    }

    async fn put_raw(&self, item: HashMap<String, AttributeValue>) {
        self.dynamodb
            .put_item()
            .table_name(self.table())
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }

    /// Every item under the user's partition.
    async fn partition(&self, user: &UserKey) -> Vec<HashMap<String, AttributeValue>> {
        self.dynamodb
            .query()
            .table_name(self.table())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(format!("USER#{user}")))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default()
    }
}

fn new_user() -> UserKey {
    UserKey::new(
        TenantId::parse(TENANT).unwrap(),
        ObjectId::parse(&uuid::Uuid::new_v4().to_string()).unwrap(),
    )
}

/// A refresh token shaped like Entra's, unique per call.
fn refresh_token() -> SecretString {
    SecretString::from(format!(
        "0.AXEAmrefresh-{}-{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte an item holds: names, strings, numbers and binary values.
fn item_bytes(item: &HashMap<String, AttributeValue>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (name, value) in item {
        bytes.extend_from_slice(name.as_bytes());
        match value {
            AttributeValue::S(s) | AttributeValue::N(s) => bytes.extend_from_slice(s.as_bytes()),
            AttributeValue::B(b) => bytes.extend_from_slice(b.as_ref()),
            other => bytes.extend_from_slice(format!("{other:?}").as_bytes()),
        }
    }
    bytes
}

#[tokio::test]
async fn a_token_stored_is_loaded_back() {
    let fx = Fixture::new().await;
    let user = new_user();
    let token = refresh_token();

    let version = fx.vault().store(&user, &token, None).await.unwrap();
    assert_eq!(version, 1);

    // Another container, with nothing cached, decrypts it.
    let other = fx.vault();
    let loaded = other.load(&user).await.unwrap().unwrap();
    assert_eq!(loaded.token.expose_secret(), token.expose_secret());
    assert_eq!(loaded.version, 1);
    assert_eq!(other.kms_calls().decrypt, 1);

    assert!(
        other.load(&new_user()).await.unwrap().is_none(),
        "a user never connected has no token"
    );
}

#[tokio::test]
async fn a_second_store_needs_the_right_version_and_a_stale_version_is_a_conflict() {
    let fx = Fixture::new().await;
    let vault = fx.vault();
    let user = new_user();
    let (first, second, third) = (refresh_token(), refresh_token(), refresh_token());

    assert!(matches!(
        vault.store(&user, &first, Some(1)).await,
        Err(VaultError::Conflict {
            expected: Some(1),
            found: None
        })
    ));
    assert_eq!(vault.store(&user, &first, None).await.unwrap(), 1);
    let again = vault.store(&user, &second, None).await.unwrap_err();
    assert!(
        matches!(again, VaultError::Conflict { expected: None, .. }),
        "{again}"
    );

    assert_eq!(vault.store(&user, &second, Some(1)).await.unwrap(), 2);
    let stale = vault.store(&user, &third, Some(1)).await.unwrap_err();
    assert!(
        matches!(
            stale,
            VaultError::Conflict {
                expected: Some(1),
                ..
            }
        ),
        "{stale}"
    );
    assert!(
        !stale.is_transient(),
        "a conflict needs a re-read, not a blind retry"
    );

    // The refused writes changed nothing.
    let loaded = fx.vault().load(&user).await.unwrap().unwrap();
    assert_eq!(loaded.version, 2);
    assert_eq!(loaded.token.expose_secret(), second.expose_secret());
}

#[tokio::test]
async fn two_containers_refreshing_one_version_at_once_leave_exactly_one_winner() {
    let fx = Fixture::new().await;
    let user = new_user();
    fx.vault().store(&user, &refresh_token(), None).await.unwrap();

    let (a, b) = (fx.vault(), fx.vault());
    let (ta, tb) = (refresh_token(), refresh_token());
    let (ra, rb) = tokio::join!(a.store(&user, &ta, Some(1)), b.store(&user, &tb, Some(1)));
    let winners: Vec<&SecretString> = [(&ra, &ta), (&rb, &tb)]
        .into_iter()
        .filter(|(r, _)| r.is_ok())
        .map(|(_, t)| t)
        .collect();
    assert_eq!(winners.len(), 1, "{ra:?} / {rb:?}");
    assert!(matches!(ra, Err(VaultError::Conflict { .. })) || matches!(rb, Err(VaultError::Conflict { .. })));

    let loaded = fx.vault().load(&user).await.unwrap().unwrap();
    assert_eq!(loaded.version, 2);
    assert_eq!(loaded.token.expose_secret(), winners[0].expose_secret());
}

#[tokio::test]
async fn the_stored_record_holds_no_plaintext_and_follows_the_data_model() {
    let fx = Fixture::new().await;
    let user = new_user();
    let token = refresh_token();
    fx.vault().store(&user, &token, None).await.unwrap();

    let item = fx.raw(&user).await.unwrap();
    let bytes = item_bytes(&item);
    let secret = token.expose_secret();
    assert!(
        !contains(&bytes, secret.as_bytes()),
        "the token is stored in the clear"
    );
    // Not even a recognisable piece of it.
    assert!(!contains(&bytes, &secret.as_bytes()[14..30]));

    let names: std::collections::BTreeSet<&str> = item.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "pk",
            "sk",
            "kind",
            "format",
            "kms_key_id",
            "edk",
            "nonce",
            "ciphertext",
            "version",
            "updated_at"
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(item["format"], AttributeValue::N("1".into()));
    assert_eq!(item["version"], AttributeValue::N("1".into()));
    assert_eq!(item["kind"], AttributeValue::S("token".into()));
    assert_eq!(
        item["kms_key_id"],
        AttributeValue::S(fx.stack.created["TokenKey"].arn.clone()),
        "the record names the key KMS used"
    );
    let AttributeValue::B(nonce) = &item["nonce"] else {
        panic!("nonce is binary")
    };
    assert_eq!(nonce.as_ref().len(), 12);
    let AttributeValue::B(ciphertext) = &item["ciphertext"] else {
        panic!("ciphertext is binary")
    };
    assert_eq!(
        ciphertext.as_ref().len(),
        secret.len() + 16,
        "token plus the GCM tag"
    );
}

#[tokio::test]
async fn a_record_moved_into_another_users_item_fails_closed() {
    let fx = Fixture::new().await;
    let (alice, mallory) = (new_user(), new_user());
    let (alice_token, mallory_token) = (refresh_token(), refresh_token());
    let vault = fx.vault();
    vault.store(&alice, &alice_token, None).await.unwrap();
    vault.store(&mallory, &mallory_token, None).await.unwrap();

    // Alice's whole record (encrypted data key, nonce, ciphertext) copied over Mallory's, at the
    // same version, so the cache cannot tell by the version alone.
    let mut moved = fx.raw(&alice).await.unwrap();
    moved.extend(Fixture::key(&mallory));
    fx.put_raw(moved).await;

    for reader in [&vault, &fx.vault()] {
        let err = reader.load(&mallory).await.unwrap_err();
        assert!(matches!(err, VaultError::Tampered { .. }), "{err}");
        assert!(!err.to_string().contains(alice_token.expose_secret()));
    }
    // Alice's own record is untouched and still hers.
    let loaded = fx.vault().load(&alice).await.unwrap().unwrap();
    assert_eq!(loaded.token.expose_secret(), alice_token.expose_secret());
}

#[tokio::test]
async fn a_ciphertext_spliced_under_another_users_data_key_fails_closed() {
    let fx = Fixture::new().await;
    let (alice, mallory) = (new_user(), new_user());
    let vault = fx.vault();
    vault.store(&alice, &refresh_token(), None).await.unwrap();
    vault.store(&mallory, &refresh_token(), None).await.unwrap();

    // Mallory's data key (which KMS will unwrap for Mallory) with Alice's nonce and ciphertext.
    let alice_item = fx.raw(&alice).await.unwrap();
    let mut spliced = fx.raw(&mallory).await.unwrap();
    for name in ["nonce", "ciphertext"] {
        spliced.insert(name.to_owned(), alice_item[name].clone());
    }
    fx.put_raw(spliced).await;

    let err = fx.vault().load(&mallory).await.unwrap_err();
    assert!(matches!(err, VaultError::Tampered { .. }), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn shred_leaves_nothing_and_is_idempotent() {
    let fx = Fixture::new().await;
    let user = new_user();
    let vault = fx.vault();
    vault.store(&user, &refresh_token(), None).await.unwrap();
    assert_eq!(vault.cached_tokens(), 1);

    vault.shred(&user).await.unwrap();
    assert!(fx.raw(&user).await.is_none());
    assert!(
        fx.partition(&user).await.is_empty(),
        "nothing of the token is left under the user"
    );
    assert_eq!(vault.cached_tokens(), 0, "no plaintext stays in memory");
    assert!(vault.load(&user).await.unwrap().is_none());

    vault.shred(&user).await.unwrap();
    fx.vault().shred(&new_user()).await.unwrap();

    // A reconnect starts the record afresh.
    let fresh = refresh_token();
    assert_eq!(vault.store(&user, &fresh, None).await.unwrap(), 1);
    assert_eq!(
        fx.vault()
            .load(&user)
            .await
            .unwrap()
            .unwrap()
            .token
            .expose_secret(),
        fresh.expose_secret()
    );
}

#[tokio::test]
async fn a_shred_by_another_container_is_seen_at_once_despite_the_cache() {
    let fx = Fixture::new().await;
    let user = new_user();
    let warm = fx.vault();
    warm.store(&user, &refresh_token(), None).await.unwrap();
    assert!(warm.load(&user).await.unwrap().is_some());

    fx.vault().shred(&user).await.unwrap();
    assert!(warm.load(&user).await.unwrap().is_none());
    assert_eq!(warm.cached_tokens(), 0);
}

#[tokio::test]
async fn within_the_cache_window_a_second_load_costs_no_kms_decrypt_and_after_it_one() {
    let fx = Fixture::new().await;
    let user = new_user();
    let token = refresh_token();
    fx.vault().store(&user, &token, None).await.unwrap();

    let vault = fx.vault();
    vault.load(&user).await.unwrap().unwrap();
    assert_eq!(vault.kms_calls().decrypt, 1);

    fx.clock.advance(chrono::Duration::minutes(4));
    let before = vault.kms_calls();
    let cached = vault.load(&user).await.unwrap().unwrap();
    assert_eq!(cached.token.expose_secret(), token.expose_secret());
    assert_eq!(vault.kms_calls().since(before), KmsCalls::default());

    fx.clock
        .advance(chrono::Duration::minutes(1) + chrono::Duration::seconds(1));
    let before = vault.kms_calls();
    let reloaded = vault.load(&user).await.unwrap().unwrap();
    assert_eq!(reloaded.token.expose_secret(), token.expose_secret());
    assert_eq!(
        vault.kms_calls().since(before),
        KmsCalls {
            generate_data_key: 0,
            decrypt: 1
        }
    );
}

#[tokio::test]
async fn a_refresh_by_another_container_is_seen_at_once_despite_the_cache() {
    let fx = Fixture::new().await;
    let user = new_user();
    let warm = fx.vault();
    warm.store(&user, &refresh_token(), None).await.unwrap();
    warm.load(&user).await.unwrap();

    let newer = refresh_token();
    fx.vault().store(&user, &newer, Some(1)).await.unwrap();

    let loaded = warm.load(&user).await.unwrap().unwrap();
    assert_eq!(loaded.version, 2);
    assert_eq!(loaded.token.expose_secret(), newer.expose_secret());
}

#[tokio::test]
async fn one_store_costs_exactly_one_generate_data_key_and_no_decrypt() {
    let fx = Fixture::new().await;
    let user = new_user();
    let vault = fx.vault();
    let token = refresh_token();

    vault.store(&user, &token, None).await.unwrap();
    assert_eq!(
        vault.kms_calls(),
        KmsCalls {
            generate_data_key: 1,
            decrypt: 0
        }
    );
    // The container that stored it reads it back from its cache.
    assert_eq!(
        vault.load(&user).await.unwrap().unwrap().token.expose_secret(),
        token.expose_secret()
    );
    let before = vault.kms_calls();
    vault.store(&user, &refresh_token(), Some(1)).await.unwrap();
    assert_eq!(
        vault.kms_calls().since(before),
        KmsCalls {
            generate_data_key: 1,
            decrypt: 0
        }
    );
}

#[tokio::test]
async fn the_vault_works_through_the_key_alias_too() {
    let fx = Fixture::new().await;
    let alias = fx.stack.reference("TokenKeyAlias").unwrap();
    assert_eq!(alias, format!("alias/{}-tokens", fx.stack.stack));
    let config = VaultConfig {
        kms_key_id: alias.to_owned(),
        ..fx.config.clone()
    };
    let vault = KmsDynamoVault::from_sdk_config(&fx.aws, &config, Arc::new(fx.clock.clone()));
    let user = new_user();
    let token = refresh_token();
    vault.store(&user, &token, None).await.unwrap();

    // The record names the key itself, so reading it needs no alias.
    assert_eq!(
        fx.raw(&user).await.unwrap()["kms_key_id"],
        AttributeValue::S(fx.stack.created["TokenKey"].arn.clone())
    );
    let loaded = fx.vault().load(&user).await.unwrap().unwrap();
    assert_eq!(loaded.token.expose_secret(), token.expose_secret());
}

#[tokio::test]
async fn the_local_bootstrap_makes_the_table_and_key_the_template_describes_and_finds_them_again() {
    let fx = Fixture::new().await;
    let table = fx
        .dynamodb
        .describe_table()
        .table_name(fx.table())
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    assert_eq!(fx.table(), format!("{}-Table", fx.stack.stack));
    let keys: Vec<(String, String)> = table
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name().to_owned(), k.key_type().as_str().to_owned()))
        .collect();
    assert_eq!(
        keys,
        [
            ("pk".to_owned(), "HASH".to_owned()),
            ("sk".to_owned(), "RANGE".to_owned())
        ]
    );
    let gsi = &table.global_secondary_indexes()[0];
    assert_eq!(gsi.index_name(), Some("gsi1"));
    assert_eq!(
        gsi.projection()
            .and_then(|p| p.projection_type())
            .map(|t| t.as_str()),
        Some("ALL")
    );
    assert_eq!(
        table
            .billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|m| m.as_str()),
        Some("PAY_PER_REQUEST")
    );
    assert_eq!(table.deletion_protection_enabled(), Some(true));
    let ttl = fx
        .dynamodb
        .describe_time_to_live()
        .table_name(fx.table())
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .unwrap();
    assert_eq!(ttl.attribute_name(), Some("ttl"));
    let backups = fx
        .dynamodb
        .describe_continuous_backups()
        .table_name(fx.table())
        .send()
        .await
        .unwrap()
        .continuous_backups_description
        .unwrap();
    assert_eq!(
        backups
            .point_in_time_recovery_description()
            .and_then(|p| p.point_in_time_recovery_status())
            .map(|s| s.as_str()),
        Some("ENABLED")
    );

    let kms = aws_sdk_kms::Client::new(&fx.aws);
    let key = &fx.stack.created["TokenKey"];
    let rotation = kms
        .get_key_rotation_status()
        .key_id(&key.reference)
        .send()
        .await
        .unwrap();
    assert!(rotation.key_rotation_enabled());

    // Bootstrapping the same stack again finds the same table, key and alias.
    let again = bootstrap(
        &Template::repository().unwrap(),
        &fx.aws,
        &Options {
            stack: fx.stack.stack.clone(),
            region: REGION.into(),
            secret_values: BTreeMap::new(),
            parameters: graphfeed_tests::local_parameters(),
        },
    )
    .await
    .unwrap();
    for id in ["Table", "TokenKey", "TokenKeyAlias"] {
        assert_eq!(again.created[id], fx.stack.created[id], "{id}");
    }
}
