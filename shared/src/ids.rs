//! Newtypes for the identifiers graphfeed passes around. Each one parses, so an invalid value
//! cannot exist past the edge that received it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must be a GUID")]
    NotAGuid { kind: &'static str },
    #[error("{kind} is empty or longer than {max} characters")]
    BadLength { kind: &'static str, max: usize },
    #[error("{kind} may contain only letters, digits, '-' and '_'")]
    BadCharacters { kind: &'static str },
    #[error("a drive key is 22 base64url characters (16 bytes)")]
    BadDriveKey,
}

/// An Entra tenant id (`tid`), always a GUID, kept in lower-case hyphenated form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let guid =
            uuid::Uuid::try_parse(raw.trim()).map_err(|_| IdError::NotAGuid { kind: "a tenant id" })?;
        Ok(Self(guid.hyphenated().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Graph subscription id. Graph documents it as a GUID; we only require a short, printable,
/// non-empty string so a changed format at Graph's side does not drop notifications.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(String);

impl SubscriptionId {
    const MAX: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() || raw.len() > Self::MAX {
            return Err(IdError::BadLength {
                kind: "a subscription id",
                max: Self::MAX,
            });
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(IdError::BadCharacters {
                kind: "a subscription id",
            });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The short, opaque key graphfeed gives each connected drive: 16 random bytes, written as 22
/// base64url characters. It is carried inside the clientState (so notify learns it without a
/// database read) and is the SQS `MessageGroupId`, so every walk trigger of one drive lands in
/// one message group and one drive has one walker at a time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriveKey([u8; 16]);

impl DriveKey {
    pub const LEN: usize = 16;

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh random key, for a newly connected drive.
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| IdError::BadDriveKey)?;
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| IdError::BadDriveKey)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for DriveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

/// The id of one clientState key in the key ring (`k1`, `2026-11`, ...): 1 to 16 characters of
/// letters, digits, `-` and `_`, so it packs into a clientState without escaping.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub const MAX: usize = 16;

    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() || raw.len() > Self::MAX {
            return Err(IdError::BadLength {
                kind: "a key id",
                max: Self::MAX,
            });
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(IdError::BadCharacters { kind: "a key id" });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An Entra object id (`oid`), a GUID kept in lower-case hyphenated form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(String);

impl ObjectId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let guid =
            uuid::Uuid::try_parse(raw.trim()).map_err(|_| IdError::NotAGuid { kind: "an object id" })?;
        Ok(Self(guid.hyphenated().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A signed-in user: tenant (`tid`) and object id (`oid`). `sub` is pairwise per app, so it is
/// never used (graph-protocol.md §7.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserKey {
    pub tenant: TenantId,
    pub object: ObjectId,
}

impl UserKey {
    pub fn new(tenant: TenantId, object: ObjectId) -> Self {
        Self { tenant, object }
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.tenant, self.object)
    }
}

macro_rules! string_id_impls {
    ($($ty:ident),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.0)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    )*};
}
string_id_impls!(TenantId, ObjectId, SubscriptionId, KeyId);

impl fmt::Debug for DriveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DriveKey({self})")
    }
}

impl Serialize for DriveKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DriveKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_id_is_normalised_to_lower_case() {
        let t = TenantId::parse("9188040D-6C67-4C5B-B112-36A304B66DAD").unwrap();
        assert_eq!(t.as_str(), "9188040d-6c67-4c5b-b112-36a304b66dad");
        assert!(TenantId::parse("contoso.onmicrosoft.com").is_err());
    }

    #[test]
    fn a_drive_key_round_trips_through_its_22_character_form() {
        let key = DriveKey::random();
        let text = key.to_string();
        assert_eq!(text.len(), 22);
        assert_eq!(DriveKey::parse(&text).unwrap(), key);
        assert_eq!(DriveKey::parse("short"), Err(IdError::BadDriveKey));
    }

    #[test]
    fn key_ids_and_subscription_ids_refuse_separators() {
        assert!(KeyId::parse("k1").is_ok());
        assert!(KeyId::parse("k.1").is_err());
        assert!(KeyId::parse("").is_err());
        assert!(SubscriptionId::parse("7f105c7d-2dc5-4530-97cd-4e7ae6534c07").is_ok());
        assert!(SubscriptionId::parse("a b").is_err());
    }
}
