//! Throttling (graph-protocol.md §8, §10 item 13): a tenant, or one drive of it, answers every
//! Graph call with 429, 503 or 509 for a stretch of sim time.
//!
//! While a [`Throttle`] is active, every Graph call for its tenant (or only for its drive) — delta,
//! drive and item reads, and subscription calls whose resource is on that drive — gets OneDrive's
//! error body for the status (429 `activityLimitReached` with inner `throttledRequest`, 503
//! `serviceNotAvailable`, 509 `bandwidthLimitExceeded`) and, when `retry_after` is set, a
//! `Retry-After` of the throttle's remaining seconds (at most `retry_after`, unless it is 0). A call made before
//! the Retry-After it was given has passed is a *violation*: it is counted
//! (`throttle_violations`) and extends the throttle by half its original duration (§8: "failure
//! to honor Retry-After may result in more throttling"). Every throttled answer counts in
//! `throttled_answers`. Time is the sim clock: a client that does not advance the clock before
//! retrying always violates.
//!
//! Which call belongs to which drive is decided by the Graph middleware ([`crate::graph`]):
//! `/drives/{id}/…` by the path, `/subscriptions/{id}…` by the subscription's drive, everything
//! else (`/me/…`, creating and listing subscriptions) by the caller's own drive. Unauthenticated
//! calls are not throttled (they get their 401).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::errors::{GraphError, SimError};
use crate::state::Counters;

/// The longest throttle (before penalties).
const MAX_DAYS: i64 = 366;

/// A throttle to start (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    pub tenant_id: String,
    /// Only this drive of the tenant; every drive of the tenant when `None`.
    pub drive_id: Option<String>,
    /// 429, 503 or 509.
    pub status: u16,
    /// Send `Retry-After` with the remaining seconds, at most this many (0: no cap); no header
    /// when `None` (the client must back off on its own, §8).
    pub retry_after: Option<u64>,
    /// How long it lasts (sim time), before penalties.
    pub for_duration: Duration,
}

/// An active throttle, as [`crate::Sim::throttles`] and `GET /_sim/throttles` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThrottleStatus {
    pub tenant_id: String,
    pub drive_id: Option<String>,
    pub status: u16,
    pub retry_after: Option<u64>,
    pub started_at: DateTime<Utc>,
    /// When it ends, penalties included (sim time).
    pub until: DateTime<Utc>,
    /// Calls made before the Retry-After they were given had passed.
    pub violations: u64,
    /// Calls answered with the throttle's status.
    pub answered: u64,
    /// No call should come before this (the last Retry-After given), if a Retry-After was sent.
    pub retry_not_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
struct Active {
    spec: Throttle,
    status: ThrottleStatus,
}

/// The throttles in force. Lives in [`crate::state::State`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Throttles {
    active: Vec<Active>,
}

/// The tenant and drive a Graph call is for (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallTarget {
    pub tenant_id: String,
    pub drive_id: Option<String>,
}

impl Throttle {
    /// Checks the status and the duration.
    pub fn validate(&self) -> Result<(), SimError> {
        if !matches!(self.status, 429 | 503 | 509) {
            return Err(SimError::BadRequest(format!(
                "a throttle answers 429, 503 or 509, not {}",
                self.status
            )));
        }
        if self.for_duration <= Duration::zero() || self.for_duration > Duration::days(MAX_DAYS) {
            return Err(SimError::BadRequest(format!(
                "a throttle lasts more than nothing and at most {MAX_DAYS} days"
            )));
        }
        if self.tenant_id.trim().is_empty() {
            return Err(SimError::BadRequest("a throttle needs a tenant_id".to_owned()));
        }
        Ok(())
    }
}

impl Throttles {
    /// Starts a throttle; one with the same tenant and drive is replaced.
    pub fn add(&mut self, spec: Throttle, now: DateTime<Utc>) -> ThrottleStatus {
        self.active.retain(|active| {
            (&active.spec.tenant_id, &active.spec.drive_id) != (&spec.tenant_id, &spec.drive_id)
        });
        let status = ThrottleStatus {
            tenant_id: spec.tenant_id.clone(),
            drive_id: spec.drive_id.clone(),
            status: spec.status,
            retry_after: spec.retry_after,
            started_at: now,
            until: now + spec.for_duration,
            violations: 0,
            answered: 0,
            retry_not_before: None,
        };
        self.active.push(Active {
            spec,
            status: status.clone(),
        });
        status
    }

    /// The throttles still in force at `now`.
    pub fn statuses(&mut self, now: DateTime<Utc>) -> Vec<ThrottleStatus> {
        self.expire(now);
        self.active.iter().map(|active| active.status.clone()).collect()
    }

    pub fn clear(&mut self) {
        self.active.clear();
    }

    fn expire(&mut self, now: DateTime<Utc>) {
        self.active.retain(|active| now < active.status.until);
    }

    /// The answer for a call to `target` at `now`, if a throttle covers it: a drive throttle
    /// before a tenant-wide one. Counts the answer and any violation, and applies the penalty.
    pub fn check(
        &mut self,
        target: &CallTarget,
        now: DateTime<Utc>,
        counters: &mut Counters,
    ) -> Option<GraphError> {
        if self.active.is_empty() {
            return None;
        }
        self.expire(now);
        let covers = |active: &Active| {
            active.spec.tenant_id.eq_ignore_ascii_case(&target.tenant_id)
                && match &active.spec.drive_id {
                    None => true,
                    Some(drive) => target.drive_id.as_deref() == Some(drive.as_str()),
                }
        };
        let index = self
            .active
            .iter()
            .position(|active| covers(active) && active.spec.drive_id.is_some())
            .or_else(|| self.active.iter().position(covers))?;
        let active = self.active.get_mut(index)?;
        let status = &mut active.status;
        counters.throttled_answers += 1;
        status.answered += 1;
        if status.retry_not_before.is_some_and(|not_before| now < not_before) {
            counters.throttle_violations += 1;
            status.violations += 1;
            let penalty = active.spec.for_duration / 2;
            status.until = status.until.checked_add_signed(penalty).unwrap_or(status.until);
        }
        let retry_after = active.spec.retry_after.map(|cap| {
            let remaining_ms = (status.until - now).num_milliseconds().max(0);
            let remaining = u64::try_from((remaining_ms + 999) / 1000).unwrap_or(1).max(1);
            if cap == 0 { remaining } else { remaining.min(cap) }
        });
        if let Some(seconds) = retry_after {
            status.retry_not_before = i64::try_from(seconds)
                .ok()
                .and_then(Duration::try_seconds)
                .and_then(|wait| now.checked_add_signed(wait));
        }
        Some(GraphError::throttled(active.spec.status, retry_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(drive: Option<&str>, retry_after: Option<u64>) -> Throttle {
        Throttle {
            tenant_id: "t".to_owned(),
            drive_id: drive.map(str::to_owned),
            status: 429,
            retry_after,
            for_duration: Duration::seconds(100),
        }
    }

    fn target(drive: &str) -> CallTarget {
        CallTarget {
            tenant_id: "t".to_owned(),
            drive_id: Some(drive.to_owned()),
        }
    }

    #[test]
    fn a_throttle_answers_with_the_remaining_seconds_until_it_ends() {
        let (mut throttles, mut counters, now) = (Throttles::default(), Counters::default(), Utc::now());
        throttles.add(spec(None, Some(1_000)), now);
        let error = throttles
            .check(&target("d"), now, &mut counters)
            .expect("throttled");
        assert_eq!(
            (error.status.as_u16(), error.code.as_str(), error.retry_after),
            (429, "activityLimitReached", Some(100))
        );
        // Honouring the Retry-After: the throttle is over.
        let later = now + Duration::seconds(100);
        assert!(throttles.check(&target("d"), later, &mut counters).is_none());
        assert!(throttles.statuses(later).is_empty());
        assert_eq!((counters.throttled_answers, counters.throttle_violations), (1, 0));
    }

    #[test]
    fn a_call_before_the_retry_after_is_a_violation_and_extends_the_throttle_by_half() {
        let (mut throttles, mut counters, now) = (Throttles::default(), Counters::default(), Utc::now());
        throttles.add(spec(Some("d"), Some(10)), now);
        let first = throttles
            .check(&target("d"), now, &mut counters)
            .expect("throttled");
        assert_eq!(first.retry_after, Some(10));
        let early = now + Duration::seconds(5);
        throttles
            .check(&target("d"), early, &mut counters)
            .expect("throttled");
        assert_eq!(counters.throttle_violations, 1);
        let status = throttles.statuses(early).remove(0);
        assert_eq!(status.until, now + Duration::seconds(150));
        // Waiting exactly as told is no violation.
        let patient = early + Duration::seconds(10);
        throttles
            .check(&target("d"), patient, &mut counters)
            .expect("throttled");
        assert_eq!(counters.throttle_violations, 1);
        assert!(
            throttles
                .check(&target("other"), patient, &mut counters)
                .is_none()
        );
    }

    #[test]
    fn without_retry_after_there_is_no_header_and_no_violation() {
        let (mut throttles, mut counters, now) = (Throttles::default(), Counters::default(), Utc::now());
        throttles.add(
            Throttle {
                status: 503,
                ..spec(None, None)
            },
            now,
        );
        for _ in 0..3 {
            let error = throttles
                .check(&target("d"), now, &mut counters)
                .expect("throttled");
            assert_eq!((error.status.as_u16(), error.retry_after), (503, None));
        }
        assert_eq!(counters.throttle_violations, 0);
        assert!(spec(None, None).validate().is_ok());
        assert!(
            Throttle {
                status: 500,
                ..spec(None, None)
            }
            .validate()
            .is_err()
        );
    }
}
