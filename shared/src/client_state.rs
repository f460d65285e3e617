//! Per-subscription clientState secrets, verifiable without a database read.
//!
//! Graph echoes a subscription's `clientState` in every notification and never lets it change
//! (a PATCH cannot set it), and it assigns the subscription id only after create. So graphfeed
//! binds the clientState to what it knows *before* create: the drive key and the tenant, under a
//! key the functions hold. The format (at most 3 + 16 + 1 + 59 = 79 characters, well under
//! Graph's 128):
//!
//! ```text
//! v1.<key id>.<base64url(drive key[16] ‖ nonce[12] ‖ mac[16])>
//! mac = HMAC-SHA256(key, "graphfeed/clientState/v1" ‖ 0 ‖ key id ‖ 0 ‖ tenant id ‖ 0 ‖ drive key ‖ nonce)[..16]
//! ```
//!
//! - The **tenant id** is covered by the MAC but not carried: it comes from the notification's
//!   `tenantId`, so a clientState replayed under another tenant fails.
//! - The **nonce** makes every subscription's secret different, even for one drive reconnected.
//! - The **drive key** it carries becomes the SQS `MessageGroupId`.
//! - Comparison is constant-time ([`subtle`]).
//!
//! Keys form a [`KeyRing`]: key id → key, one active id for minting, any number of others that
//! still verify. Rotation: add the new key (inactive) to the secret; wait over a minute (a
//! container refetches when it meets an unknown key id, at most once a minute, and answers 503
//! meanwhile so Graph redelivers); make it active; list the old id under `retired` (renew replaces its subscriptions); remove it only
//! when no subscription made with it is left. The README's "clientState" section is the
//! operator's version of this.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::clock::SharedClock;
use crate::ids::{DriveKey, KeyId, TenantId};
use crate::secrets::{SecretError, SecretSource};

const VERSION: &str = "v1";
const DOMAIN: &[u8] = b"graphfeed/clientState/v1";
const NONCE_LEN: usize = 12;
const MAC_LEN: usize = 16;
const PAYLOAD_LEN: usize = DriveKey::LEN + NONCE_LEN + MAC_LEN;

/// The fixed development key (32 bytes, the ASCII of `graphfeed-dev-clientstate-key-01`), used
/// only outside AWS when neither `CLIENT_STATE_KEYS_SECRET_ARN` nor `CLIENT_STATE_KEY` is set,
/// so the samples in `events/` verify. Never use it in a deployment.
pub const DEV_CLIENT_STATE_KEY_HEX: &str = "6772617068666565642d6465762d636c69656e7473746174652d6b65792d3031";
/// The key id under which a single env-provided key (`CLIENT_STATE_KEY` or the dev key) is held.
pub const LOCAL_KEY_ID: &str = "local";

/// A clientState value: a secret, never logged.
pub struct ClientState(SecretString);

impl ClientState {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientState([REDACTED])")
    }
}

/// What a genuine clientState tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub drive_key: DriveKey,
    pub key_id: KeyId,
}

/// Why a clientState was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the clientState is not in graphfeed's format")]
    Malformed,
    #[error("the clientState names key id {0}, which this function does not hold")]
    UnknownKey(KeyId),
    #[error("the clientState's MAC does not match")]
    BadMac,
}

/// Why a key ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    #[error("the clientState key secret is not JSON of the form {{\"active\":\"k1\",\"k1\":\"<key>\"}}: {0}")]
    NotJson(String),
    #[error("the clientState key secret names active key {0:?}, which it does not contain")]
    ActiveMissing(String),
    #[error("clientState key {id:?}: {reason}")]
    BadKey { id: String, reason: String },
}

struct Key(SecretBox<[u8]>);

impl Key {
    /// 64 hex characters are 32 bytes of key; any other value of at least 32 characters (what a
    /// CloudFormation-generated secret holds) is used as its UTF-8 bytes.
    fn parse(id: &str, material: &str) -> Result<Self, KeyRingError> {
        let bytes = if material.len() == 64 && material.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(material).map_err(|e| KeyRingError::BadKey {
                id: id.into(),
                reason: e.to_string(),
            })?
        } else if material.len() >= 32 {
            material.as_bytes().to_vec()
        } else {
            return Err(KeyRingError::BadKey {
                id: id.into(),
                reason: "a key is 64 hex characters or at least 32 characters of random text".into(),
            });
        };
        Ok(Self(SecretBox::new(bytes.into_boxed_slice())))
    }

    fn mac(&self, key_id: &KeyId, tenant: &TenantId, drive_key: &DriveKey, nonce: &[u8]) -> [u8; MAC_LEN] {
        // HMAC accepts keys of any length, so new_from_slice cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.0.expose_secret()) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(DOMAIN);
        mac.update(&[0]);
        mac.update(key_id.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(tenant.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(drive_key.as_bytes());
        mac.update(nonce);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}

/// The clientState keys a function holds: key id → key, with one active id.
pub struct KeyRing {
    keys: BTreeMap<KeyId, Key>,
    active: KeyId,
    retired: BTreeSet<KeyId>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .field("retired", &self.retired)
            .finish()
    }
}

#[derive(Deserialize)]
struct SecretDocument {
    active: String,
    #[serde(default)]
    retired: Vec<String>,
    #[serde(flatten)]
    keys: BTreeMap<String, serde_json::Value>,
}

impl KeyRing {
    /// A ring of one key (`CLIENT_STATE_KEY`, or the development key), under [`LOCAL_KEY_ID`].
    pub fn single(hex_or_text: &str) -> Result<Self, KeyRingError> {
        let id = KeyId::parse(LOCAL_KEY_ID).map_err(|e| KeyRingError::BadKey {
            id: LOCAL_KEY_ID.into(),
            reason: e.to_string(),
        })?;
        let key = Key::parse(LOCAL_KEY_ID, hex_or_text)?;
        Ok(Self {
            keys: BTreeMap::from([(id.clone(), key)]),
            active: id,
            retired: BTreeSet::new(),
        })
    }

    /// The ring held in the Secrets Manager secret: `{"active":"k2","retired":["k0"],"k1":"...","k2":"..."}`.
    /// Every member other than `active` and `retired` is a key id and its key.
    pub fn from_secret_json(json: &str) -> Result<Self, KeyRingError> {
        let doc: SecretDocument =
            serde_json::from_str(json).map_err(|e| KeyRingError::NotJson(e.to_string()))?;
        let mut keys = BTreeMap::new();
        for (id, value) in doc.keys {
            let material = value.as_str().ok_or_else(|| KeyRingError::BadKey {
                id: id.clone(),
                reason: "the key is not a string".into(),
            })?;
            let key_id = KeyId::parse(&id).map_err(|e| KeyRingError::BadKey {
                id: id.clone(),
                reason: e.to_string(),
            })?;
            keys.insert(key_id, Key::parse(&id, material)?);
        }
        let active =
            KeyId::parse(&doc.active).map_err(|_| KeyRingError::ActiveMissing(doc.active.clone()))?;
        if !keys.contains_key(&active) {
            return Err(KeyRingError::ActiveMissing(doc.active));
        }
        let retired = doc.retired.iter().filter_map(|r| KeyId::parse(r).ok()).collect();
        Ok(Self {
            keys,
            active,
            retired,
        })
    }

    pub fn active(&self) -> &KeyId {
        &self.active
    }

    /// A key that still verifies but whose subscriptions renew must replace.
    pub fn is_retired(&self, id: &KeyId) -> bool {
        self.retired.contains(id)
    }

    /// Whether any key is retired (renew then replaces the subscriptions made with one).
    pub fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    pub fn contains(&self, id: &KeyId) -> bool {
        self.keys.contains_key(id)
    }

    /// A fresh clientState for a new subscription on `drive_key` in `tenant`, under the active key.
    pub fn mint(&self, tenant: &TenantId, drive_key: &DriveKey) -> ClientState {
        let nonce: [u8; NONCE_LEN] = rand::random();
        self.mint_with_nonce(tenant, drive_key, nonce)
    }

    fn mint_with_nonce(
        &self,
        tenant: &TenantId,
        drive_key: &DriveKey,
        nonce: [u8; NONCE_LEN],
    ) -> ClientState {
        let Some(key) = self.keys.get(&self.active) else {
            unreachable!("the active key is checked when the ring is built")
        };
        let mac = key.mac(&self.active, tenant, drive_key, &nonce);
        let mut payload = Vec::with_capacity(PAYLOAD_LEN);
        payload.extend_from_slice(drive_key.as_bytes());
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(&mac);
        let text = format!("{VERSION}.{}.{}", self.active, URL_SAFE_NO_PAD.encode(payload));
        ClientState(SecretString::from(text))
    }

    /// Checks a clientState received with a notification from `tenant`.
    pub fn verify(&self, client_state: &str, tenant: &TenantId) -> Result<Verified, Rejection> {
        let mut parts = client_state.splitn(3, '.');
        let (Some(VERSION), Some(kid), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Rejection::Malformed);
        };
        let key_id = KeyId::parse(kid).map_err(|_| Rejection::Malformed)?;
        let mut buf = [0u8; PAYLOAD_LEN + 3];
        let n = URL_SAFE_NO_PAD
            .decode_slice(payload, &mut buf)
            .map_err(|_| Rejection::Malformed)?;
        if n != PAYLOAD_LEN {
            return Err(Rejection::Malformed);
        }
        let Some(key) = self.keys.get(&key_id) else {
            return Err(Rejection::UnknownKey(key_id));
        };
        let mut dk = [0u8; DriveKey::LEN];
        dk.copy_from_slice(&buf[..DriveKey::LEN]);
        let drive_key = DriveKey::from_bytes(dk);
        let nonce = &buf[DriveKey::LEN..DriveKey::LEN + NONCE_LEN];
        let expected = key.mac(&key_id, tenant, &drive_key, nonce);
        let got = &buf[DriveKey::LEN + NONCE_LEN..PAYLOAD_LEN];
        if bool::from(expected.ct_eq(got)) {
            Ok(Verified { drive_key, key_id })
        } else {
            Err(Rejection::BadMac)
        }
    }
}

/// Where the key ring comes from, and how it is refreshed when a notification names a key id the
/// function does not hold yet (a rotation that happened after this container started).
pub struct KeyStore {
    ring: RwLock<Arc<KeyRing>>,
    source: Option<Arc<dyn SecretSource>>,
    clock: SharedClock,
    last_fetch: std::sync::Mutex<DateTime<Utc>>,
}

/// The shortest time between two refetches of the key secret.
pub const REFETCH_INTERVAL: Duration = Duration::seconds(60);

impl KeyStore {
    /// A store whose ring never changes (env-provided keys).
    pub fn fixed(ring: KeyRing, clock: SharedClock) -> Self {
        let now = clock.now();
        Self {
            ring: RwLock::new(Arc::new(ring)),
            source: None,
            clock,
            last_fetch: std::sync::Mutex::new(now),
        }
    }

    /// Reads the ring from `source` now (once per cold start) and keeps the source for refetches.
    pub async fn load(source: Arc<dyn SecretSource>, clock: SharedClock) -> Result<Self, KeyStoreError> {
        let ring = fetch_ring(source.as_ref()).await?;
        let now = clock.now();
        Ok(Self {
            ring: RwLock::new(Arc::new(ring)),
            source: Some(source),
            clock,
            last_fetch: std::sync::Mutex::new(now),
        })
    }

    /// The ring as it is now.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Refetches the ring if the last attempt was at least [`REFETCH_INTERVAL`] ago (a failed
    /// attempt counts, so forged key ids cannot turn into a stream of Secrets Manager calls).
    /// A failed refetch keeps the old ring and is reported.
    pub async fn refresh_if_allowed(&self) -> Result<Refresh, KeyStoreError> {
        let Some(source) = &self.source else {
            return Ok(Refresh::NotRefreshable);
        };
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
            let now = self.clock.now();
            if now - *last < REFETCH_INTERVAL {
                return Ok(Refresh::NotYet);
            }
            *last = now;
        }
        let ring = fetch_ring(source.as_ref()).await?;
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
        Ok(Refresh::Refreshed)
    }
}

impl KeyStore {
    /// The store the configuration asks for: the Secrets Manager secret (read now, once per cold
    /// start, and refetched on an unknown key id), or a fixed single key.
    pub async fn from_config(
        keys: &crate::config::ClientStateKeys,
        aws: &aws_config::SdkConfig,
        clock: SharedClock,
    ) -> Result<Self, KeyStoreError> {
        match keys {
            crate::config::ClientStateKeys::SecretArn(arn) => {
                let client = secrets_client(aws);
                let source = Arc::new(crate::secrets::SecretsManagerSecret::new(client, arn.clone()));
                Self::load(source, clock).await
            }
            crate::config::ClientStateKeys::Single(key) => {
                Ok(Self::fixed(KeyRing::single(key.expose_secret())?, clock))
            }
        }
    }
}

/// What a refetch request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// A fresh ring is installed.
    Refreshed,
    /// The last attempt was less than [`REFETCH_INTERVAL`] ago.
    NotYet,
    /// The ring comes from fixed configuration; there is nothing to refetch.
    NotRefreshable,
}

/// Why the key ring could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Ring(#[from] KeyRingError),
}

/// A Secrets Manager client that answers inside notify's budget: a key fetch happens on a cold
/// start and on an unknown key id, both inside a request Graph gives 3 s.
fn secrets_client(aws: &aws_config::SdkConfig) -> aws_sdk_secretsmanager::Client {
    use aws_sdk_secretsmanager::config::retry::RetryConfig;
    use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
    let config = aws_sdk_secretsmanager::config::Builder::from(aws)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(std::time::Duration::from_millis(50)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_millis(500))
                .operation_attempt_timeout(std::time::Duration::from_millis(600))
                .operation_timeout(std::time::Duration::from_millis(1200))
                .build(),
        )
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

async fn fetch_ring(source: &dyn SecretSource) -> Result<KeyRing, KeyStoreError> {
    let secret = source.fetch().await?;
    Ok(KeyRing::from_secret_json(secret.expose_secret())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("11111111-2222-3333-4444-555555555555").unwrap()
    }

    fn dev_ring() -> KeyRing {
        KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).unwrap()
    }

    #[test]
    fn a_minted_client_state_verifies_and_names_its_drive() {
        let ring = dev_ring();
        let drive = DriveKey::random();
        let cs = ring.mint(&tenant(), &drive);
        let verified = ring.verify(cs.expose(), &tenant()).unwrap();
        assert_eq!(verified.drive_key, drive);
        assert_eq!(verified.key_id.as_str(), LOCAL_KEY_ID);
    }

    #[test]
    fn a_client_state_stays_well_under_graphs_128_characters() {
        let ring = KeyRing::from_secret_json(&format!(
            r#"{{"active":"sixteen-chars-id","sixteen-chars-id":"{DEV_CLIENT_STATE_KEY_HEX}"}}"#
        ))
        .unwrap();
        let cs = ring.mint(&tenant(), &DriveKey::random());
        assert_eq!(cs.expose().len(), 79);
    }

    #[test]
    fn two_subscriptions_of_one_drive_get_different_secrets() {
        let ring = dev_ring();
        let drive = DriveKey::random();
        assert_ne!(
            ring.mint(&tenant(), &drive).expose(),
            ring.mint(&tenant(), &drive).expose()
        );
    }

    #[test]
    fn a_client_state_replayed_under_another_tenant_is_refused() {
        let ring = dev_ring();
        let cs = ring.mint(&tenant(), &DriveKey::random());
        let other = TenantId::parse("99999999-2222-3333-4444-555555555555").unwrap();
        assert_eq!(ring.verify(cs.expose(), &other), Err(Rejection::BadMac));
    }

    #[test]
    fn a_client_state_with_a_changed_drive_key_is_refused() {
        let ring = dev_ring();
        let cs = ring.mint(&tenant(), &DriveKey::from_bytes([7; 16]));
        let (head, payload) = cs.expose().rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        bytes[0] ^= 1;
        let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(ring.verify(&forged, &tenant()), Err(Rejection::BadMac));
    }

    #[test]
    fn garbage_and_shared_secrets_are_malformed() {
        let ring = dev_ring();
        for bad in [
            "",
            "secretClientValue",
            "v1.local",
            "v1.local.!!!",
            "v2.local.AAAA",
            "v1.a.b.c",
        ] {
            assert_eq!(ring.verify(bad, &tenant()), Err(Rejection::Malformed), "{bad}");
        }
    }

    #[test]
    fn a_client_state_under_an_unknown_key_id_says_so() {
        let other =
            KeyRing::from_secret_json(&format!(r#"{{"active":"k9","k9":"{}"}}"#, "a".repeat(40))).unwrap();
        let cs = other.mint(&tenant(), &DriveKey::random());
        let err = dev_ring().verify(cs.expose(), &tenant()).unwrap_err();
        assert_eq!(err, Rejection::UnknownKey(KeyId::parse("k9").unwrap()));
    }

    #[test]
    fn a_ring_keeps_verifying_an_inactive_key_after_rotation() {
        let k1 = "1".repeat(64);
        let k2 = "2".repeat(64);
        let before = KeyRing::from_secret_json(&format!(r#"{{"active":"k1","k1":"{k1}"}}"#)).unwrap();
        let after = KeyRing::from_secret_json(&format!(
            r#"{{"active":"k2","retired":["k1"],"k1":"{k1}","k2":"{k2}"}}"#
        ))
        .unwrap();
        let old = before.mint(&tenant(), &DriveKey::random());
        assert!(after.verify(old.expose(), &tenant()).is_ok());
        assert!(after.is_retired(&KeyId::parse("k1").unwrap()));
        assert_eq!(after.active().as_str(), "k2");
        assert!(
            after
                .mint(&tenant(), &DriveKey::random())
                .expose()
                .starts_with("v1.k2.")
        );
    }

    #[test]
    fn a_secret_naming_a_missing_active_key_is_refused() {
        let err = KeyRing::from_secret_json(&format!(r#"{{"active":"k2","k1":"{}"}}"#, "1".repeat(64)))
            .unwrap_err();
        assert_eq!(err, KeyRingError::ActiveMissing("k2".into()));
        assert!(matches!(
            KeyRing::single("too-short"),
            Err(KeyRingError::BadKey { .. })
        ));
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let ring = dev_ring();
        let cs = ring.mint(&tenant(), &DriveKey::random());
        assert_eq!(format!("{cs:?}"), "ClientState([REDACTED])");
        assert!(!format!("{ring:?}").contains(DEV_CLIENT_STATE_KEY_HEX));
    }
}
