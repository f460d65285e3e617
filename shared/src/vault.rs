//! The token vault: each user's refresh token, encrypted under KMS, in the one table.
//!
//! **Envelope encryption.** Every [`TokenVault::store`] asks KMS for a fresh AES-256 data key
//! (`GenerateDataKey`) under an *encryption context* that names the owner and the purpose:
//!
//! ```text
//! {"graphfeed:tenant": <tid>, "graphfeed:user": <oid>, "graphfeed:purpose": "refresh-token"}
//! ```
//!
//! The token is sealed locally with AES-256-GCM under that data key and a random 96-bit nonce,
//! with the same context (canonically encoded, see [`associated_data`]) as associated data. Only
//! the KMS-encrypted copy of the data key is kept, in the record beside the ciphertext; the
//! plaintext data key is zeroized as soon as the token is sealed. KMS binds the encrypted data key
//! to the context, so a record copied into another user's item cannot even be unwrapped, and the
//! GCM tag binds the ciphertext to the context, so a ciphertext spliced into another user's record
//! (under that user's data key) fails too. Both end in [`VaultError::Tampered`]: never a panic,
//! never another user's token.
//!
//! **Record** (docs/data-model.md): pk `USER#<tid>#<oid>`, sk `TOKEN#refresh`, `kind` `token`,
//! `format` (N, 1), `kms_key_id` (S, the key ARN KMS answered), `edk` (B), `nonce` (B, 12),
//! `ciphertext` (B, token ‖ 16-byte tag), `version` (N), `updated_at` (S, RFC 3339).
//!
//! **Versions.** Entra rotates the refresh token on every use, so every refresh replaces the
//! record. The first store is conditioned on `attribute_not_exists(pk)`, every later one on
//! `version = :expected`; a lost race is [`VaultError::Conflict`] and the caller re-reads (the
//! winner's token is the current one).
//!
//! **Warm cache.** A decrypted token may be kept in the container for a short, bounded time
//! ([`VaultConfig::cache_ttl`], default 5 minutes, at most 15), so one user costs at most one
//! KMS `Decrypt` per window. The record is still read on every load (strongly consistent, cheap),
//! and the cache answers only when the stored version *and nonce* are the ones it decrypted: a
//! refresh or shred by another container, or a record swapped in behind our back, is seen at once.
//!
//! **Secrets.** Plaintext tokens live only in [`SecretString`]s; data keys and plaintext buffers
//! are [`Zeroizing`] and the AES key schedule zeroizes on drop (aes-gcm's `zeroize` feature).
//! Copies inside the AWS SDK's response buffers are out of our reach; they are short-lived. No
//! `Debug` here shows a token, and nothing logs one.
//!
//! **Crypto-shred.** [`TokenVault::shred`] deletes the record: the data key only ever existed
//! encrypted in that record, so nothing left anywhere can open the token. (A point-in-time
//! restore of the table could bring the record back during PITR's window, 35 days at most; no
//! running function reads a restored copy, which lands in a new table.)

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::clock::SharedClock;
use crate::config::{ConfigError, Env, KMS_KEY_ID, TABLE_NAME, TOKEN_CACHE_SECONDS};
use crate::ids::UserKey;

/// The record format this code writes and reads.
pub const FORMAT: u64 = 1;
/// The vault record's sort key under the user's partition.
pub const TOKEN_SORT_KEY: &str = "TOKEN#refresh";
/// The record's `kind`.
pub const KIND: &str = "token";
/// Encryption-context keys and the purpose value. Key policies and IAM conditions
/// (`kms:EncryptionContext:graphfeed:purpose`) may name them, so they never change.
pub const CONTEXT_TENANT: &str = "graphfeed:tenant";
pub const CONTEXT_USER: &str = "graphfeed:user";
pub const CONTEXT_PURPOSE: &str = "graphfeed:purpose";
pub const PURPOSE_REFRESH_TOKEN: &str = "refresh-token";
/// AES-GCM's 96-bit nonce.
pub const NONCE_LEN: usize = 12;
/// How long a decrypted token may stay in a warm container unless configured otherwise.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// The longest cache window `TOKEN_CACHE_SECONDS` may ask for: a revoked or shredded token must
/// not outlive its record in memory for long.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(15 * 60);

const DATA_KEY_LEN: usize = 32;
/// Versions the associated data, so a later format cannot be confused with this one.
const AAD_DOMAIN: &[u8] = b"graphfeed/vault/v1";
/// Bounds the cache's memory in a container that serves many users.
const CACHE_CAPACITY: usize = 4096;

// ---- the port ---------------------------------------------------------------------------------

/// A token as stored, with the version a replacing write must name.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub token: SecretString,
    pub version: u64,
}

/// Why a vault call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    /// The record is not at the version the write expected: another writer got there first (or
    /// the record was shredded). Re-read with [`TokenVault::load`] and decide again.
    #[error(
        "the stored token is not at the expected version ({}, found {}); re-read it and retry",
        version_text(.expected),
        version_text(.found)
    )]
    Conflict {
        expected: Option<u64>,
        found: Option<u64>,
    },
    /// The record does not authenticate under its owner's encryption context: it was copied from
    /// another user's record or altered. Treat the user as needing to sign in again.
    #[error(
        "the stored token of {user} does not authenticate under its owner's encryption context \
         (moved from another user's record, or altered); refusing it"
    )]
    Tampered { user: String },
    /// The record lacks an attribute or has one of the wrong type.
    #[error("the stored token record is malformed: {0}")]
    Malformed(String),
    /// A record written by a later (or unknown) format.
    #[error("the stored token record has format {found}; this version reads format {FORMAT}")]
    UnsupportedFormat { found: u64 },
    /// A KMS call failed; `transient` says whether trying later can help.
    #[error("KMS {operation} failed: {reason}")]
    Kms {
        operation: &'static str,
        reason: String,
        transient: bool,
    },
    /// A DynamoDB call failed; `transient` says whether trying later can help.
    #[error("DynamoDB {operation} failed: {reason}")]
    Table {
        operation: &'static str,
        reason: String,
        transient: bool,
    },
}

fn version_text(version: &Option<u64>) -> String {
    version.map_or_else(|| "none".to_owned(), |v| format!("version {v}"))
}

impl VaultError {
    /// Whether the same call may succeed later (throttling, a timeout, a 5xx). A
    /// [`VaultError::Conflict`] is not: the caller must re-read first.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Kms { transient: true, .. } | Self::Table { transient: true, .. }
        )
    }
}

/// Where each user's refresh token is kept.
pub trait TokenVault: Send + Sync {
    /// The user's current token and its version, or `None` when none is stored (never connected,
    /// or shredded). A record that fails to authenticate is [`VaultError::Tampered`].
    fn load<'a>(&'a self, user: &'a UserKey) -> BoxFuture<'a, Result<Option<StoredToken>, VaultError>>;

    /// Replaces the user's token. `expected_version` is the version [`TokenVault::load`] returned,
    /// or `None` when it found nothing; if the record has moved on since, nothing is written and
    /// the answer is [`VaultError::Conflict`]. Returns the new version.
    fn store<'a>(
        &'a self,
        user: &'a UserKey,
        token: &'a SecretString,
        expected_version: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, VaultError>>;

    /// Crypto-shreds the user's token: the record (and with it the only copy of its data key) is
    /// deleted and any cached plaintext dropped. Idempotent: shredding nothing is fine.
    fn shred<'a>(&'a self, user: &'a UserKey) -> BoxFuture<'a, Result<(), VaultError>>;
}

// ---- configuration ----------------------------------------------------------------------------

/// What the vault needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    pub table_name: String,
    /// A key id, key ARN, alias name (`alias/...`) or alias ARN.
    pub kms_key_id: String,
    /// How long a decrypted token may stay in the container; zero turns the cache off.
    pub cache_ttl: Duration,
}

impl VaultConfig {
    /// `TABLE_NAME` and `KMS_KEY_ID` (required), `TOKEN_CACHE_SECONDS` (optional, at most 900).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let table_name = env.required(TABLE_NAME)?;
        let valid_table = (3..=255).contains(&table_name.len())
            && table_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid_table {
            return Err(ConfigError::Invalid {
                var: TABLE_NAME,
                reason: format!(
                    "a DynamoDB table name is 3 to 255 letters, digits, '_', '-' or '.' (got {table_name:?})"
                ),
            });
        }
        let kms_key_id = env.required(KMS_KEY_ID)?;
        if kms_key_id.len() > 2048 || kms_key_id.chars().any(char::is_whitespace) {
            return Err(ConfigError::Invalid {
                var: KMS_KEY_ID,
                reason: "must be a KMS key id, key ARN, alias name or alias ARN".into(),
            });
        }
        let cache_ttl = match env.get(TOKEN_CACHE_SECONDS) {
            None => DEFAULT_CACHE_TTL,
            Some(raw) => {
                let seconds: u64 = raw.parse().map_err(|_| ConfigError::Invalid {
                    var: TOKEN_CACHE_SECONDS,
                    reason: format!("must be a whole number of seconds (got {raw:?})"),
                })?;
                let ttl = Duration::from_secs(seconds);
                if ttl > MAX_CACHE_TTL {
                    return Err(ConfigError::Invalid {
                        var: TOKEN_CACHE_SECONDS,
                        reason: format!("at most {} seconds (got {seconds})", MAX_CACHE_TTL.as_secs()),
                    });
                }
                ttl
            }
        };
        Ok(Self {
            table_name: table_name.to_owned(),
            kms_key_id: kms_key_id.to_owned(),
            cache_ttl,
        })
    }
}

// ---- encryption context and record (pure) -----------------------------------------------------

/// The KMS encryption context binding a token to its owner and purpose.
pub fn encryption_context(user: &UserKey) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CONTEXT_TENANT.to_owned(), user.tenant.as_str().to_owned()),
        (CONTEXT_USER.to_owned(), user.object.as_str().to_owned()),
        (CONTEXT_PURPOSE.to_owned(), PURPOSE_REFRESH_TOKEN.to_owned()),
    ])
}

/// The AES-GCM associated data: the encryption context, canonically encoded (domain, then each
/// pair in key order, every field length-prefixed so no two contexts encode alike).
pub fn associated_data(user: &UserKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(160);
    aad.extend_from_slice(AAD_DOMAIN);
    for (key, value) in encryption_context(user) {
        for field in [key.as_bytes(), value.as_bytes()] {
            // Context fields are short (GUIDs and fixed names), far below u16::MAX.
            let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
            aad.extend_from_slice(&len.to_be_bytes());
            aad.extend_from_slice(field);
        }
    }
    aad
}

/// The user's partition key, `USER#<tid>#<oid>`.
pub fn partition_key(user: &UserKey) -> String {
    format!("USER#{user}")
}

fn item_key(user: &UserKey) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(partition_key(user))),
        ("sk".to_owned(), AttributeValue::S(TOKEN_SORT_KEY.to_owned())),
    ])
}

/// The stored form of one sealed token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub format: u64,
    /// The key KMS used (its ARN, as GenerateDataKey answered); Decrypt names it.
    pub kms_key_id: String,
    pub encrypted_data_key: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
    /// The sealed token followed by its 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("format", &self.format)
            .field("kms_key_id", &self.kms_key_id)
            .field("edk_len", &self.encrypted_data_key.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .field("version", &self.version)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

impl TokenRecord {
    /// The DynamoDB item for `user`.
    pub fn to_item(&self, user: &UserKey) -> HashMap<String, AttributeValue> {
        let mut item = item_key(user);
        item.extend([
            ("kind".to_owned(), AttributeValue::S(KIND.to_owned())),
            ("format".to_owned(), AttributeValue::N(self.format.to_string())),
            (
                "kms_key_id".to_owned(),
                AttributeValue::S(self.kms_key_id.clone()),
            ),
            (
                "edk".to_owned(),
                AttributeValue::B(Blob::new(self.encrypted_data_key.clone())),
            ),
            (
                "nonce".to_owned(),
                AttributeValue::B(Blob::new(self.nonce.to_vec())),
            ),
            (
                "ciphertext".to_owned(),
                AttributeValue::B(Blob::new(self.ciphertext.clone())),
            ),
            ("version".to_owned(), AttributeValue::N(self.version.to_string())),
            (
                "updated_at".to_owned(),
                AttributeValue::S(
                    self.updated_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ),
            ),
        ]);
        item
    }

    /// Reads a stored item. The format is checked first, so a later format's other attributes
    /// are never misread as this one's.
    pub fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Self, VaultError> {
        let format = number(item, "format")?;
        if format != FORMAT {
            return Err(VaultError::UnsupportedFormat { found: format });
        }
        let nonce = binary(item, "nonce")?;
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| VaultError::Malformed(format!("nonce is not {NONCE_LEN} bytes")))?;
        let updated_at = string(item, "updated_at")?;
        let updated_at = DateTime::parse_from_rfc3339(updated_at)
            .map_err(|e| VaultError::Malformed(format!("updated_at is not RFC 3339: {e}")))?
            .with_timezone(&Utc);
        Ok(Self {
            format,
            kms_key_id: string(item, "kms_key_id")?.to_owned(),
            encrypted_data_key: binary(item, "edk")?.to_vec(),
            nonce,
            ciphertext: binary(item, "ciphertext")?.to_vec(),
            version: number(item, "version")?,
            updated_at,
        })
    }
}

fn attribute<'i>(
    item: &'i HashMap<String, AttributeValue>,
    name: &str,
) -> Result<&'i AttributeValue, VaultError> {
    item.get(name)
        .ok_or_else(|| VaultError::Malformed(format!("{name} is missing")))
}

fn string<'i>(item: &'i HashMap<String, AttributeValue>, name: &str) -> Result<&'i str, VaultError> {
    match attribute(item, name)? {
        AttributeValue::S(s) => Ok(s),
        _ => Err(VaultError::Malformed(format!("{name} is not a string"))),
    }
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Result<u64, VaultError> {
    match attribute(item, name)? {
        AttributeValue::N(n) => n
            .parse()
            .map_err(|_| VaultError::Malformed(format!("{name} is not a whole number"))),
        _ => Err(VaultError::Malformed(format!("{name} is not a number"))),
    }
}

fn binary<'i>(item: &'i HashMap<String, AttributeValue>, name: &str) -> Result<&'i [u8], VaultError> {
    match attribute(item, name)? {
        AttributeValue::B(b) => Ok(b.as_ref()),
        _ => Err(VaultError::Malformed(format!("{name} is not binary"))),
    }
}

// ---- sealing (pure) ---------------------------------------------------------------------------

/// Seals `plaintext` with AES-256-GCM under `data_key`. Fails only for a data key that is not 32
/// bytes (KMS answered something other than AES-256).
fn seal(
    data_key: &[u8],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let bad_key = || VaultError::Malformed("KMS returned a data key that is not 32 bytes".into());
    if data_key.len() != DATA_KEY_LEN {
        return Err(bad_key());
    }
    let cipher = Aes256Gcm::new_from_slice(data_key).map_err(|_| bad_key())?;
    // Room for the tag up front, so the buffer never reallocates and leaves plaintext behind.
    let mut buffer = Zeroizing::new(Vec::with_capacity(plaintext.len() + 16));
    buffer.extend_from_slice(plaintext);
    cipher
        .encrypt_in_place(&Nonce::<Aes256Gcm>::from(*nonce), aad, &mut *buffer)
        .map_err(|_| VaultError::Malformed("the token is too long to seal".into()))?;
    Ok(std::mem::take(&mut *buffer))
}

/// Opens a sealed token; `None` when it does not authenticate (wrong key, context or bytes).
fn open(data_key: &[u8], nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext: &[u8]) -> Option<SecretString> {
    let cipher = Aes256Gcm::new_from_slice(data_key).ok()?;
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place(&Nonce::<Aes256Gcm>::from(*nonce), aad, &mut *buffer)
        .ok()?;
    let text = std::str::from_utf8(&buffer).ok()?;
    // An exact-size copy owned by the secret; `buffer` (with its spare capacity) is zeroized.
    Some(SecretString::from(Box::<str>::from(text)))
}

// ---- the warm cache ---------------------------------------------------------------------------

struct CacheEntry {
    version: u64,
    nonce: [u8; NONCE_LEN],
    token: SecretString,
    cached_at: DateTime<Utc>,
}

/// Decrypted tokens by user, each valid for one stored version and nonce and for `ttl`.
struct TokenCache {
    ttl: chrono::Duration,
    entries: Mutex<HashMap<UserKey, CacheEntry>>,
}

impl TokenCache {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl: chrono::Duration::from_std(ttl.min(MAX_CACHE_TTL))
                .unwrap_or_else(|_| chrono::Duration::zero()),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn fresh(&self, entry: &CacheEntry, now: DateTime<Utc>) -> bool {
        // `now >= cached_at` too, so a wall clock stepped backwards cannot stretch the window.
        now >= entry.cached_at && now < entry.cached_at + self.ttl
    }

    fn get(
        &self,
        user: &UserKey,
        version: u64,
        nonce: &[u8; NONCE_LEN],
        now: DateTime<Utc>,
    ) -> Option<SecretString> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(user)?;
        if entry.version == version && &entry.nonce == nonce && self.fresh(entry, now) {
            return Some(entry.token.clone());
        }
        entries.remove(user);
        None
    }

    fn put(
        &self,
        user: &UserKey,
        version: u64,
        nonce: [u8; NONCE_LEN],
        token: &SecretString,
        now: DateTime<Utc>,
    ) {
        if self.ttl <= chrono::Duration::zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_CAPACITY && !entries.contains_key(user) {
            entries.retain(|_, e| now >= e.cached_at && now < e.cached_at + self.ttl);
            if entries.len() >= CACHE_CAPACITY {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.cached_at)
                    .map(|(u, _)| u.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(
            user.clone(),
            CacheEntry {
                version,
                nonce,
                token: token.clone(),
                cached_at: now,
            },
        );
    }

    fn evict(&self, user: &UserKey) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(user);
    }

    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

// ---- the KMS + DynamoDB adapter ---------------------------------------------------------------

/// KMS requests a vault has made (including failed ones), for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KmsCalls {
    pub generate_data_key: u64,
    pub decrypt: u64,
}

impl KmsCalls {
    /// The calls made after `earlier` was taken.
    pub fn since(self, earlier: KmsCalls) -> KmsCalls {
        KmsCalls {
            generate_data_key: self.generate_data_key.saturating_sub(earlier.generate_data_key),
            decrypt: self.decrypt.saturating_sub(earlier.decrypt),
        }
    }
}

#[derive(Debug, Default)]
struct KmsCounters {
    generate_data_key: AtomicU64,
    decrypt: AtomicU64,
}

/// The vault over KMS (envelope encryption) and the DynamoDB table.
pub struct KmsDynamoVault {
    kms: aws_sdk_kms::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    key_id: String,
    cache: TokenCache,
    clock: SharedClock,
    calls: KmsCounters,
}

impl fmt::Debug for KmsDynamoVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsDynamoVault")
            .field("table", &self.table)
            .field("key_id", &self.key_id)
            .field("cache_ttl", &self.cache.ttl)
            .field("calls", &self.kms_calls())
            .finish_non_exhaustive()
    }
}

impl KmsDynamoVault {
    pub fn new(
        kms: aws_sdk_kms::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        config: &VaultConfig,
        clock: SharedClock,
    ) -> Self {
        Self {
            kms,
            dynamodb,
            table: config.table_name.clone(),
            key_id: config.kms_key_id.clone(),
            cache: TokenCache::new(config.cache_ttl),
            clock,
            calls: KmsCounters::default(),
        }
    }

    /// Builds both clients from one SDK config (built once per cold start).
    pub fn from_sdk_config(aws: &aws_config::SdkConfig, config: &VaultConfig, clock: SharedClock) -> Self {
        Self::new(
            aws_sdk_kms::Client::new(aws),
            aws_sdk_dynamodb::Client::new(aws),
            config,
            clock,
        )
    }

    /// The KMS requests made so far.
    pub fn kms_calls(&self) -> KmsCalls {
        KmsCalls {
            generate_data_key: self.calls.generate_data_key.load(Ordering::Relaxed),
            decrypt: self.calls.decrypt.load(Ordering::Relaxed),
        }
    }

    /// How many users' tokens the warm cache holds now.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    async fn load_token(&self, user: &UserKey) -> Result<Option<StoredToken>, VaultError> {
        // Strongly consistent: a token refreshed a moment ago by another container must be seen,
        // or we would use (and so revoke) a superseded refresh token.
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(item_key(user)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| table_error("GetItem", e))?;
        let Some(item) = out.item else {
            self.cache.evict(user);
            return Ok(None);
        };
        let record = TokenRecord::from_item(&item)?;
        if let Some(token) = self
            .cache
            .get(user, record.version, &record.nonce, self.clock.now())
        {
            tracing::debug!(version = record.version, "token vault: warm cache hit");
            return Ok(Some(StoredToken {
                token,
                version: record.version,
            }));
        }

        let context = encryption_context(user);
        self.calls.decrypt.fetch_add(1, Ordering::Relaxed);
        let decrypted = self
            .kms
            .decrypt()
            // Naming the key makes KMS refuse a record re-pointed at a key we did not choose.
            .key_id(&record.kms_key_id)
            .ciphertext_blob(Blob::new(record.encrypted_data_key.clone()))
            .set_encryption_context(Some(context.into_iter().collect()))
            .send()
            .await;
        let out = match decrypted {
            Ok(out) => out,
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_invalid_ciphertext_exception() || s.is_incorrect_key_exception()
                }) =>
            {
                return Err(tampered(user));
            }
            Err(e) => return Err(kms_error("Decrypt", e)),
        };
        let data_key = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        let token = open(
            &data_key,
            &record.nonce,
            &associated_data(user),
            &record.ciphertext,
        )
        .ok_or_else(|| tampered(user))?;
        drop(data_key);
        self.cache
            .put(user, record.version, record.nonce, &token, self.clock.now());
        Ok(Some(StoredToken {
            token,
            version: record.version,
        }))
    }

    async fn store_token(
        &self,
        user: &UserKey,
        token: &SecretString,
        expected: Option<u64>,
    ) -> Result<u64, VaultError> {
        let version = match expected {
            None => 1,
            Some(v) => v
                .checked_add(1)
                .ok_or_else(|| VaultError::Malformed("the token version cannot grow further".into()))?,
        };

        // A fresh data key per write: a nonce is never reused under one key, and a record's
        // data key is shredded with it.
        self.calls.generate_data_key.fetch_add(1, Ordering::Relaxed);
        let out = self
            .kms
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(encryption_context(user).into_iter().collect()))
            .send()
            .await
            .map_err(|e| kms_error("GenerateDataKey", e))?;
        let data_key = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        let encrypted_data_key = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| VaultError::Malformed("KMS returned no encrypted data key".into()))?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ciphertext = seal(
            &data_key,
            &nonce,
            &associated_data(user),
            token.expose_secret().as_bytes(),
        )?;
        drop(data_key);

        let now = self.clock.now();
        let record = TokenRecord {
            format: FORMAT,
            kms_key_id: out.key_id.unwrap_or_else(|| self.key_id.clone()),
            encrypted_data_key,
            nonce,
            ciphertext,
            version,
            updated_at: now,
        };
        let mut put = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(record.to_item(user)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        put = match expected {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(v) => put
                .condition_expression("version = :expected")
                .expression_attribute_values(":expected", AttributeValue::N(v.to_string())),
        };
        if let Err(e) = put.send().await {
            if let Some(PutItemError::ConditionalCheckFailedException(failed)) = e.as_service_error() {
                // What we may have cached is stale now; the winner's token is current.
                self.cache.evict(user);
                let found = failed.item().and_then(|item| number(item, "version").ok());
                return Err(VaultError::Conflict { expected, found });
            }
            return Err(table_error("PutItem", e));
        }
        self.cache.put(user, version, nonce, token, now);
        Ok(version)
    }

    async fn shred_token(&self, user: &UserKey) -> Result<(), VaultError> {
        // Drop the plaintext first: even if the delete fails, this container forgets the token.
        self.cache.evict(user);
        self.dynamodb
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(item_key(user)))
            .send()
            .await
            .map_err(|e| table_error("DeleteItem", e))?;
        Ok(())
    }
}

impl TokenVault for KmsDynamoVault {
    fn load<'a>(&'a self, user: &'a UserKey) -> BoxFuture<'a, Result<Option<StoredToken>, VaultError>> {
        Box::pin(self.load_token(user))
    }

    fn store<'a>(
        &'a self,
        user: &'a UserKey,
        token: &'a SecretString,
        expected_version: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, VaultError>> {
        Box::pin(self.store_token(user, token, expected_version))
    }

    fn shred<'a>(&'a self, user: &'a UserKey) -> BoxFuture<'a, Result<(), VaultError>> {
        Box::pin(self.shred_token(user))
    }
}

fn tampered(user: &UserKey) -> VaultError {
    // Worth an alarm: someone with write access to the table moved or altered a record.
    tracing::warn!(tenant = %user.tenant, user = %user.object, "token vault: a stored token failed authentication");
    VaultError::Tampered {
        user: user.to_string(),
    }
}

/// Error codes after which the same call may succeed later (the SDK has already retried).
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
    "InternalServerError",
    "ServiceUnavailable",
];

// One `SdkError` type serves both SDKs (both re-export aws-smithy-runtime-api's).
type SdkError<E> = aws_sdk_dynamodb::error::SdkError<E>;

fn is_transient<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(s) => {
            s.raw().status().is_server_error() || s.err().code().is_some_and(|c| TRANSIENT_CODES.contains(&c))
        }
        _ => false,
    }
}

fn kms_error<E>(operation: &'static str, e: SdkError<E>) -> VaultError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    VaultError::Kms {
        operation,
        transient: is_transient(&e),
        reason: aws_sdk_kms::error::DisplayErrorContext(e).to_string(),
    }
}

fn table_error<E>(operation: &'static str, e: SdkError<E>) -> VaultError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    VaultError::Table {
        operation,
        transient: is_transient(&e),
        reason: aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
    }
}

// ---- an in-memory fake, for unit tests of the logic around the vault --------------------------

/// A vault in memory with the same version rules (no encryption): for unit tests of callers.
#[derive(Debug, Default)]
pub struct MemoryVault {
    tokens: Mutex<HashMap<UserKey, StoredToken>>,
}

impl MemoryVault {
    pub fn new() -> Self {
        Self::default()
    }
}

impl TokenVault for MemoryVault {
    fn load<'a>(&'a self, user: &'a UserKey) -> BoxFuture<'a, Result<Option<StoredToken>, VaultError>> {
        let found = self
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn store<'a>(
        &'a self,
        user: &'a UserKey,
        token: &'a SecretString,
        expected_version: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, VaultError>> {
        let result = {
            let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
            let found = tokens.get(user).map(|t| t.version);
            if found == expected_version {
                let version = expected_version.map_or(1, |v| v + 1);
                tokens.insert(
                    user.clone(),
                    StoredToken {
                        token: token.clone(),
                        version,
                    },
                );
                Ok(version)
            } else {
                Err(VaultError::Conflict {
                    expected: expected_version,
                    found,
                })
            }
        };
        Box::pin(async move { result })
    }

    fn shred<'a>(&'a self, user: &'a UserKey) -> BoxFuture<'a, Result<(), VaultError>> {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(user);
        Box::pin(async move { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, OffsetClock};
    use crate::ids::{ObjectId, TenantId};

    fn user(tenant: &str, object: &str) -> UserKey {
        UserKey::new(TenantId::parse(tenant).unwrap(), ObjectId::parse(object).unwrap())
    }

    fn alice() -> UserKey {
        user(
            "7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c",
            "11111111-2222-4333-8444-555555555555",
        )
    }

    fn bob() -> UserKey {
        user(
            "7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c",
            "99999999-8888-4777-8666-555555555555",
        )
    }

    fn record() -> TokenRecord {
        TokenRecord {
            format: FORMAT,
            kms_key_id: "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab".into(),
            encrypted_data_key: vec![1, 2, 3, 4],
            nonce: [7; NONCE_LEN],
            ciphertext: vec![9; 40],
            version: 3,
            updated_at: DateTime::parse_from_rfc3339("2026-11-02T10:00:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn the_encryption_context_names_tenant_user_and_purpose() {
        let ctx = encryption_context(&alice());
        assert_eq!(ctx.len(), 3);
        assert_eq!(ctx[CONTEXT_TENANT], "7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c");
        assert_eq!(ctx[CONTEXT_USER], "11111111-2222-4333-8444-555555555555");
        assert_eq!(ctx[CONTEXT_PURPOSE], "refresh-token");
    }

    #[test]
    fn the_associated_data_is_stable_and_differs_per_user() {
        assert_eq!(associated_data(&alice()), associated_data(&alice()));
        assert_ne!(associated_data(&alice()), associated_data(&bob()));
        assert!(associated_data(&alice()).starts_with(AAD_DOMAIN));
        // The same ids in another tenant are another owner.
        let elsewhere = user(
            "0c9b8a7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d",
            "11111111-2222-4333-8444-555555555555",
        );
        assert_ne!(associated_data(&alice()), associated_data(&elsewhere));
    }

    #[test]
    fn a_record_round_trips_through_its_item_under_the_users_keys() {
        let item = record().to_item(&alice());
        assert_eq!(
            item["pk"],
            AttributeValue::S(
                "USER#7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c#11111111-2222-4333-8444-555555555555".into()
            )
        );
        assert_eq!(item["sk"], AttributeValue::S("TOKEN#refresh".into()));
        assert_eq!(item["kind"], AttributeValue::S("token".into()));
        assert_eq!(item["format"], AttributeValue::N("1".into()));
        assert_eq!(item["version"], AttributeValue::N("3".into()));
        assert_eq!(
            item["updated_at"],
            AttributeValue::S("2026-11-02T10:00:00.123Z".into())
        );
        assert!(matches!(item["edk"], AttributeValue::B(_)));
        assert!(matches!(item["nonce"], AttributeValue::B(_)));
        assert!(matches!(item["ciphertext"], AttributeValue::B(_)));
        assert_eq!(TokenRecord::from_item(&item).unwrap(), record());
    }

    #[test]
    fn a_record_of_another_format_is_refused_before_anything_else_is_read() {
        let item = HashMap::from([("format".to_owned(), AttributeValue::N("2".into()))]);
        assert!(matches!(
            TokenRecord::from_item(&item),
            Err(VaultError::UnsupportedFormat { found: 2 })
        ));
    }

    #[test]
    fn a_malformed_record_names_what_is_wrong() {
        let mut item = record().to_item(&alice());
        item.remove("edk");
        let err = TokenRecord::from_item(&item).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the stored token record is malformed: edk is missing"
        );

        let mut item = record().to_item(&alice());
        item.insert("nonce".into(), AttributeValue::B(Blob::new(vec![0; 8])));
        assert!(
            TokenRecord::from_item(&item)
                .unwrap_err()
                .to_string()
                .contains("nonce")
        );

        let mut item = record().to_item(&alice());
        item.insert("version".into(), AttributeValue::S("3".into()));
        assert!(
            TokenRecord::from_item(&item)
                .unwrap_err()
                .to_string()
                .contains("version")
        );
    }

    #[test]
    fn a_sealed_token_opens_only_with_its_key_nonce_and_owner() {
        let key = [42u8; 32];
        let nonce = [1u8; NONCE_LEN];
        let sealed = seal(&key, &nonce, &associated_data(&alice()), b"0.AXEA-refresh").unwrap();
        assert_eq!(sealed.len(), "0.AXEA-refresh".len() + 16);
        assert!(!sealed.windows(4).any(|w| w == b"AXEA"));

        let opened = open(&key, &nonce, &associated_data(&alice()), &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "0.AXEA-refresh");
        assert!(open(&key, &nonce, &associated_data(&bob()), &sealed).is_none());
        assert!(open(&[43u8; 32], &nonce, &associated_data(&alice()), &sealed).is_none());
        assert!(open(&key, &[2u8; NONCE_LEN], &associated_data(&alice()), &sealed).is_none());
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(open(&key, &nonce, &associated_data(&alice()), &flipped).is_none());
        assert!(open(&key[..16], &nonce, &associated_data(&alice()), &sealed).is_none());
        assert!(seal(&key[..16], &nonce, b"", b"x").is_err());
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        let stored = StoredToken {
            token: SecretString::from("0.AXEA-very-secret"),
            version: 1,
        };
        assert!(!format!("{stored:?}").contains("very-secret"));
        assert!(!format!("{:?}", record()).contains("[9, 9"));
    }

    #[test]
    fn the_cache_answers_only_for_the_same_version_and_nonce_within_its_window() {
        let clock = OffsetClock::new();
        let cache = TokenCache::new(Duration::from_secs(300));
        let token = SecretString::from("t");
        cache.put(&alice(), 2, [1; NONCE_LEN], &token, clock.now());
        assert!(cache.get(&alice(), 2, &[1; NONCE_LEN], clock.now()).is_some());
        assert!(cache.get(&alice(), 3, &[1; NONCE_LEN], clock.now()).is_none());
        assert_eq!(cache.len(), 0, "a stale entry is dropped");

        cache.put(&alice(), 2, [1; NONCE_LEN], &token, clock.now());
        assert!(cache.get(&alice(), 2, &[2; NONCE_LEN], clock.now()).is_none());

        cache.put(&alice(), 2, [1; NONCE_LEN], &token, clock.now());
        clock.advance(chrono::Duration::seconds(299));
        assert!(cache.get(&alice(), 2, &[1; NONCE_LEN], clock.now()).is_some());
        clock.advance(chrono::Duration::seconds(2));
        assert!(cache.get(&alice(), 2, &[1; NONCE_LEN], clock.now()).is_none());
    }

    #[test]
    fn a_zero_window_caches_nothing_and_the_cache_stays_bounded() {
        let now = Utc::now();
        let off = TokenCache::new(Duration::ZERO);
        off.put(&alice(), 1, [0; NONCE_LEN], &SecretString::from("t"), now);
        assert_eq!(off.len(), 0);

        let cache = TokenCache::new(Duration::from_secs(60));
        for i in 0..(CACHE_CAPACITY + 10) {
            let u = user(
                "7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c",
                &format!("00000000-0000-4000-8000-{i:012}"),
            );
            cache.put(&u, 1, [0; NONCE_LEN], &SecretString::from("t"), now);
        }
        assert_eq!(cache.len(), CACHE_CAPACITY);
    }

    #[test]
    fn vault_config_names_a_missing_or_malformed_variable() {
        let err = VaultConfig::from_env(&Env::default()).unwrap_err();
        assert_eq!(err, ConfigError::Missing { var: TABLE_NAME });
        let err =
            VaultConfig::from_env(&Env::from_pairs([(TABLE_NAME, "graphfeed-Table-1ABC")])).unwrap_err();
        assert_eq!(err, ConfigError::Missing { var: KMS_KEY_ID });
        let err = VaultConfig::from_env(&Env::from_pairs([(TABLE_NAME, "a b"), (KMS_KEY_ID, "alias/x")]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { var: TABLE_NAME, .. }));

        let env = Env::from_pairs([
            (TABLE_NAME, "graphfeed-Table-1ABC"),
            (KMS_KEY_ID, "alias/graphfeed-tokens"),
        ]);
        let config = VaultConfig::from_env(&env).unwrap();
        assert_eq!(config.cache_ttl, DEFAULT_CACHE_TTL);
        assert_eq!(config.kms_key_id, "alias/graphfeed-tokens");
        let config = VaultConfig::from_env(&env.clone().with(TOKEN_CACHE_SECONDS, "0")).unwrap();
        assert_eq!(config.cache_ttl, Duration::ZERO);
        for bad in ["901", "-1", "five"] {
            let err = VaultConfig::from_env(&env.clone().with(TOKEN_CACHE_SECONDS, bad)).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        var: TOKEN_CACHE_SECONDS,
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn the_memory_vault_keeps_the_same_version_rules() {
        let vault = MemoryVault::new();
        let token = SecretString::from("t1");
        assert!(vault.load(&alice()).await.unwrap().is_none());
        assert_eq!(vault.store(&alice(), &token, None).await.unwrap(), 1);
        assert!(matches!(
            vault.store(&alice(), &token, None).await,
            Err(VaultError::Conflict {
                expected: None,
                found: Some(1)
            })
        ));
        assert_eq!(vault.store(&alice(), &token, Some(1)).await.unwrap(), 2);
        vault.shred(&alice()).await.unwrap();
        vault.shred(&alice()).await.unwrap();
        assert!(vault.load(&alice()).await.unwrap().is_none());
    }

    #[test]
    fn a_conflict_says_to_re_read() {
        let err = VaultError::Conflict {
            expected: Some(1),
            found: Some(2),
        };
        assert_eq!(
            err.to_string(),
            "the stored token is not at the expected version (version 1, found version 2); re-read it and retry"
        );
        assert!(!err.is_transient());
    }
}
