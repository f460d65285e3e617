//! Token signing keys: RSA-2048 key pairs, their JWKS form, and the key ring that rotates them
//! (graph-protocol.md §7.4, §10 item 15).
//!
//! Entra publishes several keys and signs with one; a rotation adds a new key that becomes the
//! signing key while the old one stays published for an overlap, and the old one disappears
//! later. [`KeyRing`] models exactly that. The first key is always the fixed development key in
//! `dev/graph-sim/keys/dev-signing-key.pem` (local use only), so tokens minted by any simulator
//! instance, today or in years, verify against the same published key until a test rotates it.
//!
//! Like Entra, a key's `kid` and `x5t` are the same base64url SHA-1 thumbprint. Entra takes it
//! over the key's X.509 certificate; the simulator has no certificate and takes it over the
//! DER `SubjectPublicKeyInfo` instead (so there is no `x5c` either).

use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, KeyPair as _, RsaKeyPair, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

/// The fixed development signing key (PKCS#8 PEM). **For local use only**: it is public, so a
/// token signed with it proves nothing outside a test or `make local`.
pub const DEV_SIGNING_KEY_PEM: &str = include_str!("../../keys/dev-signing-key.pem");

/// Why a key could not be loaded, generated or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PKCS#8 PEM RSA private key: {0}")]
    Pem(String),
    #[error("the RSA key was rejected: {0}")]
    Rejected(String),
    #[error("RSA key generation failed")]
    Generate,
    #[error("signing failed")]
    Sign,
}

/// One RSA signing key with its published (JWKS) form precomputed.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    n: String,
    e: String,
    public_pem: String,
    key_pair: Arc<RsaKeyPair>,
    created_at: DateTime<Utc>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// What the control API and [`crate::Sim::signing_keys`] say about a key (never the private part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SigningKeyInfo {
    /// Also the `x5t` value.
    pub kid: String,
    /// True for the key new tokens are signed with.
    pub current: bool,
    /// The public key, `-----BEGIN PUBLIC KEY-----` PEM.
    pub public_key_pem: String,
    /// Sim time the key joined the ring (the development key: when the ring was made).
    pub created_at: DateTime<Utc>,
}

fn pem_body(pem: &str, label: &str) -> Result<Vec<u8>, KeyError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| KeyError::Pem(format!("no '{begin}' line")))?
        + begin.len();
    let stop = pem[start..]
        .find(&end)
        .ok_or_else(|| KeyError::Pem(format!("no '{end}' line")))?
        + start;
    let base64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(base64)
        .map_err(|error| KeyError::Pem(error.to_string()))
}

fn to_pem(der: &[u8], label: &str) -> String {
    let encoded = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

impl SigningKey {
    fn from_key_pair(key_pair: RsaKeyPair, created_at: DateTime<Utc>) -> Result<Self, KeyError> {
        let public = key_pair.public_key();
        let spki = public
            .as_der()
            .map_err(|_| KeyError::Rejected("cannot encode the public key".to_owned()))?;
        let kid = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, spki.as_ref()));
        Ok(Self {
            kid,
            n: URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            e: URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            public_pem: to_pem(spki.as_ref(), "PUBLIC KEY"),
            key_pair: Arc::new(key_pair),
            created_at,
        })
    }

    /// Loads a PKCS#8 (`-----BEGIN PRIVATE KEY-----`) RSA key.
    pub fn from_pkcs8_pem(pem: &str, created_at: DateTime<Utc>) -> Result<Self, KeyError> {
        let der = pem_body(pem, "PRIVATE KEY")?;
        let key_pair = RsaKeyPair::from_pkcs8(&der).map_err(|error| KeyError::Rejected(error.to_string()))?;
        Self::from_key_pair(key_pair, created_at)
    }

    /// The fixed development key ([`DEV_SIGNING_KEY_PEM`]).
    pub fn development(created_at: DateTime<Utc>) -> Result<Self, KeyError> {
        Self::from_pkcs8_pem(DEV_SIGNING_KEY_PEM, created_at)
    }

    /// A fresh RSA-2048 key.
    pub fn generate(created_at: DateTime<Utc>) -> Result<Self, KeyError> {
        let key_pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
        Self::from_key_pair(key_pair, created_at)
    }

    /// The key id, which is also its `x5t`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a `-----BEGIN PUBLIC KEY-----` PEM.
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// The JWKS entry, with the `issuer` property Entra puts on each key (§7.4: "use the JWKS
    /// key's issuer property to limit key scope").
    pub fn jwk(&self, issuer: &str) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": self.n,
            "e": self.e,
            "issuer": issuer,
        })
    }

    /// An RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signature over `message`.
    pub fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut signature = vec![0; self.key_pair.public_modulus_len()];
        self.key_pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| KeyError::Sign)?;
        Ok(signature)
    }

    /// True when `signature` is this key's RS256 signature over `message`.
    pub fn verify_rs256(&self, message: &[u8], signature: &[u8]) -> bool {
        let (Ok(n), Ok(e)) = (URL_SAFE_NO_PAD.decode(&self.n), URL_SAFE_NO_PAD.decode(&self.e)) else {
            return false;
        };
        RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
            .is_ok()
    }

    fn info(&self, current: bool) -> SigningKeyInfo {
        SigningKeyInfo {
            kid: self.kid.clone(),
            current,
            public_key_pem: self.public_pem.clone(),
            created_at: self.created_at,
        }
    }
}

/// The published keys, oldest first, and which one signs.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
    current: usize,
}

impl KeyRing {
    /// A ring holding one key, which signs.
    pub fn new(first: SigningKey) -> Self {
        Self {
            keys: vec![first],
            current: 0,
        }
    }

    /// The key new tokens are signed with.
    pub fn current(&self) -> &SigningKey {
        // `current` always indexes `keys`, which is never empty; the fallback keeps this total.
        self.keys.get(self.current).unwrap_or_else(|| &self.keys[0])
    }

    /// Every published key, oldest first.
    pub fn published(&self) -> &[SigningKey] {
        &self.keys
    }

    /// The published key with this `kid`.
    pub fn find(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|key| key.kid == kid)
    }

    /// Publishes `key` and signs with it from now on; the previous keys stay published.
    pub fn rotate(&mut self, key: SigningKey) -> SigningKeyInfo {
        self.keys.push(key);
        self.current = self.keys.len() - 1;
        self.current().info(true)
    }

    /// Unpublishes every key but the signing one; returns what was removed.
    pub fn retire_old(&mut self) -> Vec<SigningKeyInfo> {
        let current = self.current().clone();
        let retired = self
            .keys
            .iter()
            .filter(|key| key.kid != current.kid)
            .map(|key| key.info(false))
            .collect();
        self.keys = vec![current];
        self.current = 0;
        retired
    }

    /// What each published key looks like from outside.
    pub fn infos(&self) -> Vec<SigningKeyInfo> {
        self.keys
            .iter()
            .enumerate()
            .map(|(index, key)| key.info(index == self.current))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_key_loads_and_its_kid_is_stable() {
        let now = Utc::now();
        let first = SigningKey::development(now).expect("dev key");
        let again = SigningKey::development(now).expect("dev key");
        assert_eq!(first.kid(), again.kid());
        assert_eq!(first.kid().len(), 27, "base64url of a 20-byte SHA-1");
        assert!(first.public_key_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let jwk = first.jwk("https://issuer");
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(jwk["x5t"], jwk["kid"]);
    }

    #[test]
    fn a_signature_verifies_with_its_own_key_only() {
        let now = Utc::now();
        let dev = SigningKey::development(now).expect("dev key");
        let other = SigningKey::generate(now).expect("generated");
        let signature = dev.sign_rs256(b"message").expect("sign");
        assert!(dev.verify_rs256(b"message", &signature));
        assert!(!dev.verify_rs256(b"other message", &signature));
        assert!(!other.verify_rs256(b"message", &signature));
    }

    #[test]
    fn rotation_keeps_the_old_key_published_until_it_is_retired() {
        let now = Utc::now();
        let dev = SigningKey::development(now).expect("dev key");
        let mut ring = KeyRing::new(dev.clone());
        let new = ring.rotate(SigningKey::generate(now).expect("generated"));
        assert_eq!(ring.published().len(), 2);
        assert_eq!(ring.current().kid(), new.kid);
        assert!(ring.find(dev.kid()).is_some());
        let retired = ring.retire_old();
        assert_eq!(retired.len(), 1);
        assert_eq!(retired[0].kid, dev.kid());
        assert!(ring.find(dev.kid()).is_none());
        assert_eq!(ring.infos().len(), 1);
        assert!(ring.infos()[0].current);
    }
}
