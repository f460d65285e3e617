//! The OAuth 2.0 device authorization grant (Entra's `v2-oauth2-device-code`, RFC 8628), for
//! public client apps such as graphfeed's CLI:
//!
//! 1. `POST /{tenant}/oauth2/v2.0/devicecode` (`client_id`, `scope`) issues a device code and a
//!    user code, valid for [`crate::Timing::device_code_lifetime`] (Entra: 15 minutes) of sim time;
//! 2. a simulated user approves or declines the user code through the control API
//!    ([`crate::Sim::approve_device_code`], [`crate::Sim::deny_device_code`],
//!    [`crate::Sim::approve_next_device_code`]) instead of a browser sign-in;
//! 3. the client polls `POST /{tenant}/oauth2/v2.0/token` with
//!    `grant_type=urn:ietf:params:oauth:grant-type:device_code`: `authorization_pending` until
//!    approved, `slow_down` when it polls sooner than `interval` (real time) after its previous
//!    poll, `authorization_declined`, `expired_token` once the sim clock passes the expiry, and
//!    `bad_verification_code` for a code the simulator never issued or one already redeemed. The
//!    first poll after approval gets the tokens ([`super::grants`]).
//!
//! This module keeps the codes; the token endpoint's rules are in [`super::grants`].

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// `grant_type` of a device-code poll.
pub const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Every device code the simulator issues starts with this.
pub const DEVICE_CODE_PREFIX: &str = "simdc.";
/// Characters of user codes: capitals and digits without the look-alikes 0/O, 1/I.
const USER_CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Entra's user codes are 8 or 9 characters (`YZMYLD4K`, `BPPVYQZMA`).
const USER_CODE_LENGTH: usize = 9;
/// Codes expired this long ago are forgotten (a poll then gets `bad_verification_code`).
const FORGET_AFTER: chrono::Duration = chrono::Duration::hours(24);

/// Where a device code stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceCodeStatus {
    /// Waiting for the user.
    Pending,
    /// Approved; the next poll gets the tokens.
    Approved,
    /// Declined by the user.
    Declined,
    /// Its tokens were handed out.
    Redeemed,
}

impl DeviceCodeStatus {
    /// The snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::Redeemed => "redeemed",
        }
    }
}

/// One device code.
#[derive(Debug, Clone)]
pub(crate) struct DeviceCode {
    pub device_code: String,
    pub user_code: String,
    pub client_id: String,
    /// The tenant segment of the `devicecode` request (`organizations`, a GUID, ...); polls must
    /// use the same one, and only users it admits can approve.
    pub tenant: String,
    /// The `scope` of the `devicecode` request, verbatim.
    pub scope: String,
    /// Issue order.
    pub serial: u64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub status: DeviceCodeStatus,
    /// The approving user.
    pub user_id: Option<String>,
    /// When it was last polled (real time), for `slow_down`.
    pub last_poll: Option<Instant>,
}

impl DeviceCode {
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }

    pub fn info(&self, now: DateTime<Utc>) -> DeviceCodeInfo {
        DeviceCodeInfo {
            user_code: self.user_code.clone(),
            client_id: self.client_id.clone(),
            tenant: self.tenant.clone(),
            scope: self.scope.clone(),
            status: self.status,
            user_id: self.user_id.clone(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            expired: self.expired(now),
        }
    }
}

/// What the control API and [`crate::Sim`] show of a device code (never the device code itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceCodeInfo {
    pub user_code: String,
    pub client_id: String,
    /// The tenant segment the code was asked for.
    pub tenant: String,
    pub scope: String,
    pub status: DeviceCodeStatus,
    /// Who approved it, once approved.
    pub user_id: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The sim clock has passed `expires_at`.
    pub expired: bool,
}

/// The device codes issued and not yet forgotten, by device code and by user code.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeviceCodes {
    by_device_code: HashMap<String, DeviceCode>,
    by_user_code: HashMap<String, String>,
    next_serial: u64,
}

/// A user code as typed: capitals, no spaces or dashes.
pub fn normalise_user_code(raw: &str) -> String {
    raw.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn random_user_code() -> String {
    let mut code = String::with_capacity(USER_CODE_LENGTH);
    while code.len() < USER_CODE_LENGTH {
        for byte in uuid::Uuid::new_v4().as_bytes() {
            if code.len() == USER_CODE_LENGTH {
                break;
            }
            let index = usize::from(*byte) % USER_CODE_ALPHABET.len();
            code.push(char::from(USER_CODE_ALPHABET[index]));
        }
    }
    code
}

impl DeviceCodes {
    /// Issues a device code for `client_id` and `scope` through `tenant`, valid until
    /// `now + lifetime`. Forgets codes that expired long ago.
    pub fn issue(
        &mut self,
        client_id: &str,
        tenant: &str,
        scope: &str,
        now: DateTime<Utc>,
        lifetime: chrono::Duration,
    ) -> &DeviceCode {
        self.forget_expired(now);
        let user_code = loop {
            let candidate = random_user_code();
            if !self.by_user_code.contains_key(&candidate) {
                break candidate;
            }
        };
        let device_code = format!(
            "{DEVICE_CODE_PREFIX}{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.next_serial += 1;
        let code = DeviceCode {
            device_code: device_code.clone(),
            user_code: user_code.clone(),
            client_id: client_id.to_owned(),
            tenant: tenant.to_owned(),
            scope: scope.to_owned(),
            serial: self.next_serial,
            issued_at: now,
            expires_at: now + lifetime,
            status: DeviceCodeStatus::Pending,
            user_id: None,
            last_poll: None,
        };
        self.by_user_code.insert(user_code, device_code.clone());
        self.by_device_code.entry(device_code).or_insert(code)
    }

    fn forget_expired(&mut self, now: DateTime<Utc>) {
        let before = self.by_device_code.len();
        self.by_device_code
            .retain(|_, code| now < code.expires_at + FORGET_AFTER);
        if self.by_device_code.len() != before {
            let live = &self.by_device_code;
            self.by_user_code
                .retain(|_, device_code| live.contains_key(device_code));
        }
    }

    /// The code a poll presents.
    pub fn by_device_code_mut(&mut self, device_code: &str) -> Option<&mut DeviceCode> {
        self.by_device_code.get_mut(device_code)
    }

    /// The code a user typed (case, spaces and dashes ignored).
    pub fn by_user_code_mut(&mut self, user_code: &str) -> Option<&mut DeviceCode> {
        let device_code = self.by_user_code.get(&normalise_user_code(user_code))?;
        self.by_device_code.get_mut(device_code)
    }

    /// The user code of the oldest code still pending and not expired.
    pub fn oldest_pending(&self, now: DateTime<Utc>) -> Option<String> {
        self.by_device_code
            .values()
            .filter(|code| code.status == DeviceCodeStatus::Pending && !code.expired(now))
            .min_by_key(|code| code.serial)
            .map(|code| code.user_code.clone())
    }

    /// Every code not yet forgotten, oldest first.
    pub fn infos(&self, now: DateTime<Utc>) -> Vec<DeviceCodeInfo> {
        let mut codes: Vec<&DeviceCode> = self.by_device_code.values().collect();
        codes.sort_by_key(|code| code.serial);
        codes.into_iter().map(|code| code.info(now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_nine_unambiguous_capitals_and_found_however_typed() {
        let now = Utc::now();
        let mut codes = DeviceCodes::default();
        let issued = codes
            .issue(
                "client",
                "organizations",
                "Files.Read",
                now,
                chrono::Duration::minutes(15),
            )
            .clone();
        assert_eq!(issued.user_code.len(), USER_CODE_LENGTH);
        assert!(issued.user_code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)));
        assert!(issued.device_code.starts_with(DEVICE_CODE_PREFIX));
        let typed = format!(
            " {}-{} ",
            issued.user_code[..4].to_lowercase(),
            &issued.user_code[4..]
        );
        assert_eq!(
            codes.by_user_code_mut(&typed).map(|code| code.serial),
            Some(issued.serial)
        );
        assert_eq!(codes.oldest_pending(now), Some(issued.user_code.clone()));
        assert_eq!(
            codes.oldest_pending(issued.expires_at),
            None,
            "an expired code is not pending"
        );
    }

    #[test]
    fn codes_expired_a_day_ago_are_forgotten_when_the_next_is_issued() {
        let now = Utc::now();
        let mut codes = DeviceCodes::default();
        let old = codes
            .issue(
                "client",
                "common",
                "Files.Read",
                now,
                chrono::Duration::minutes(15),
            )
            .clone();
        let later = now + chrono::Duration::hours(25);
        codes.issue(
            "client",
            "common",
            "Files.Read",
            later,
            chrono::Duration::minutes(15),
        );
        assert!(codes.by_device_code_mut(&old.device_code).is_none());
        assert!(codes.by_user_code_mut(&old.user_code).is_none());
        assert_eq!(codes.infos(later).len(), 1);
    }
}
