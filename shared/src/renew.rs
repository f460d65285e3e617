//! renew: keeps every subscription alive, recovers the lost ones, and says when a person is
//! needed. One run (the EventBridge schedule, hourly by default):
//!
//! 1. reads the subscriptions due within the renewal window from the expiry index, shard by
//!    shard and page by page (and, while the clientState key ring lists retired keys, every
//!    subscription made under one);
//! 2. renews them earliest first, [`RenewSettings::concurrency`] (64) at a time, paced under Graph's
//!    subscription-API limits, starting none once the invocation's deadline is near (the rest
//!    are left for the next run);
//! 3. walks the safety net: a drive with no completed walk in 24 hours gets one walk queued,
//!    at most one a day;
//! 4. reads the fleet's minimum time to expiry (the alarm's metric).
//!
//! Each renewal is [`Renewer::renew_drive`], the one copy of the renewal rules that
//! process-changes also uses for `reauthorizationRequired`. Per Graph's answer: 200 stores the
//! expiry Graph returned; 404 recreates the subscription and queues a catch-up walk; 409 on that
//! create adopts (see [`crate::subscriptions`]); 403 quota marks the drive `expired`; 401
//! refreshes the token once and retries, then marks the drive `needs_reauth` (as does a refresh
//! token Entra refuses); a subscription made under a retired clientState key is deleted and
//! made again, with a catch-up walk; 429/503 throttle the tenant (no Graph call for it before
//! Retry-After, in this run or the next) and back the subscription off; anything else is
//! counted and retried next run. One subscription's failure, or panic, never stops the run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use secrecy::SecretString;
use serde::Serialize;

use crate::client_state::KeyStore;
use crate::clock::SharedClock;
use crate::config::{ConfigError, Env};
use crate::connect::NotificationUrls;
use crate::envelope::{Envelope, Kind};
use crate::fleet::{FleetIndex, shards};
use crate::graph::{GraphClient, GraphError};
use crate::ids::{DriveKey, ObjectId, TenantId, UserKey};
use crate::process::{LifecycleActions, LifecycleError};
use crate::queue::{NotificationQueue, OutgoingMessage, send_all};
use crate::store::{
    ConnectionStore, DriveState, DriveStatus, StoreError, SubscriptionHealth, SubscriptionRecord,
    record_subscription_health,
};
use crate::subscriptions::{Action, SubscriptionError, Subscriptions};
use crate::telemetry::Unit;
use crate::tokens::{AccessTokenSource, TokenError};
use crate::walk_store::WalkStore;

/// `RENEW_CONCURRENCY`'s default: renewals in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// `RENEW_MAX_PER_SECOND`'s default. Graph allows 5,000 subscription calls per 20 s per app
/// across all tenants (250/s, graph-protocol.md §1.5); 200 leaves room for connect and for
/// lifecycle renewals.
pub const DEFAULT_MAX_PER_SECOND: u32 = 200;
/// Renewals per second for one tenant: Graph allows 1,000 per 20 s per app and tenant (50/s).
pub const DEFAULT_PER_TENANT_PER_SECOND: u32 = 40;
/// `RENEW_JITTER_MINUTES`'s default: up to 12 hours taken off each asked-for lifetime.
pub const DEFAULT_JITTER: Duration = Duration::hours(12);
/// A drive with no completed walk for this long gets a safety-net walk (at most one a day).
pub const SAFETY_NET_AFTER: Duration = Duration::hours(24);
/// No renewal starts once the deadline is this close (one renewal's calls fit in it).
pub const DEADLINE_RESERVE: std::time::Duration = std::time::Duration::from_secs(15);
/// A throttled tenant without a Retry-After waits this long.
const DEFAULT_THROTTLE: Duration = Duration::minutes(5);

/// How a run behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewSettings {
    /// Subscriptions expiring within this are renewed (`RENEW_WINDOW_MINUTES`, default 72 h).
    pub window: Duration,
    pub concurrency: usize,
    pub max_per_second: u32,
    pub per_tenant_per_second: u32,
    pub jitter: Duration,
    pub reserve: std::time::Duration,
    pub safety_net_after: Duration,
}

impl Default for RenewSettings {
    fn default() -> Self {
        Self {
            window: crate::connect::DEFAULT_RENEW_WINDOW,
            concurrency: DEFAULT_CONCURRENCY,
            max_per_second: DEFAULT_MAX_PER_SECOND,
            per_tenant_per_second: DEFAULT_PER_TENANT_PER_SECOND,
            jitter: DEFAULT_JITTER,
            reserve: DEADLINE_RESERVE,
            safety_net_after: SAFETY_NET_AFTER,
        }
    }
}

/// `RENEW_WINDOW_MINUTES`: subscriptions expiring within this many minutes are renewed.
pub const RENEW_WINDOW_MINUTES: &str = "RENEW_WINDOW_MINUTES";
/// `RENEW_CONCURRENCY`: renewals in flight at once.
pub const RENEW_CONCURRENCY: &str = "RENEW_CONCURRENCY";
/// `RENEW_MAX_PER_SECOND`: renewals started per second, across tenants.
pub const RENEW_MAX_PER_SECOND: &str = "RENEW_MAX_PER_SECOND";
/// `RENEW_JITTER_MINUTES`: up to this many minutes are taken off each asked-for lifetime.
pub const RENEW_JITTER_MINUTES: &str = "RENEW_JITTER_MINUTES";

impl RenewSettings {
    /// Reads the `RENEW_*` variables; each is optional, with the defaults above.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let number = |var: &'static str,
                      range: std::ops::RangeInclusive<i64>,
                      what: &str|
         -> Result<Option<i64>, ConfigError> {
            env.get(var)
                .map(|raw| {
                    raw.trim()
                        .parse::<i64>()
                        .ok()
                        .filter(|n| range.contains(n))
                        .ok_or_else(|| ConfigError::Invalid {
                            var,
                            reason: format!(
                                "must be a number of {what} from {} to {} (got {raw:?})",
                                range.start(),
                                range.end()
                            ),
                        })
                })
                .transpose()
        };
        Ok(Self {
            // Up to 30 days: a window longer than a subscription's life (42,300 minutes) renews
            // every subscription on every run, which is how `make local` shows renewals; the
            // template allows at most 40,000.
            window: number(RENEW_WINDOW_MINUTES, 1..=43_200, "minutes")?
                .map_or(defaults.window, Duration::minutes),
            concurrency: number(RENEW_CONCURRENCY, 1..=256, "renewals")?
                .map_or(defaults.concurrency, |n| n as usize),
            max_per_second: number(RENEW_MAX_PER_SECOND, 1..=250, "renewals per second")?
                .map_or(defaults.max_per_second, |n| n as u32),
            jitter: number(RENEW_JITTER_MINUTES, 0..=1_440, "minutes")?
                .map_or(defaults.jitter, Duration::minutes),
            ..defaults
        })
    }
}

/// The backoff after the n-th failure in a row: 1 minute doubling, at most 6 hours (a
/// subscription is due 72 hours before it lapses, so a backoff never outlasts the window).
pub fn retry_delay(failures: u32) -> Duration {
    let minutes = 1i64 << failures.saturating_sub(1).min(9);
    Duration::minutes(minutes.min(360))
}

/// Why a renewal failed (the `reason` of the `RenewalsFailed…` metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Graph's subscription quota: the drive is `expired`; a person must free subscriptions.
    Quota,
    /// 429/503/509: the tenant waits until then.
    Throttled {
        until: DateTime<Utc>,
    },
    /// The user must sign in again: the drive is `needs_reauth`.
    NeedsReauth,
    /// Any other Graph answer.
    Graph(String),
    /// Entra or the token vault failed (not the user's grant).
    Token(String),
    Store(String),
    /// The catch-up walk could not be queued (the subscription itself is fine).
    Queue(String),
    Panic,
}

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Quota => "quota",
            Failure::Throttled { .. } => "throttled",
            Failure::NeedsReauth => "needs_reauth",
            Failure::Graph(_) => "graph",
            Failure::Token(_) => "token",
            Failure::Store(_) => "store",
            Failure::Queue(_) => "queue",
            Failure::Panic => "panic",
        }
    }
}

/// Why a due subscription was left for a later run without a Graph call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// The invocation's deadline was near.
    Deadline,
    /// Its tenant is throttled.
    Throttled,
    /// Its backoff after earlier failures has not passed.
    Backoff,
}

/// What became of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// PATCHed; Graph's new expiry is stored.
    Renewed,
    /// Graph no longer knew it (404): made again, catch-up walk queued.
    Recreated,
    /// Made under a retired clientState key: deleted and made again, catch-up walk queued.
    Replaced,
    /// Renewed meanwhile by someone else (the index lags): nothing to do.
    Kept,
    /// Its drive needs the user: left out of the expiry index until they connect again.
    Parked,
    /// Its drive is disconnected or gone: the record is removed.
    Dropped,
    Deferred(Deferral),
    Failed(Failure),
}

/// What a run did: the function's answer, and its metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Subscriptions found due (or under a retired key).
    pub due: u64,
    pub renewed: u64,
    pub recreated: u64,
    pub replaced: u64,
    pub kept: u64,
    pub parked: u64,
    pub dropped: u64,
    /// Left for the next run, by why.
    pub deferred: BTreeMap<String, u64>,
    /// Failed, by reason.
    pub failed: BTreeMap<String, u64>,
    pub safety_net_walks: u64,
    /// Seconds until the earliest expiry among the subscriptions renew keeps (negative once
    /// one has lapsed); none when there are none.
    pub min_time_to_expiry_seconds: Option<i64>,
    /// Whether every due subscription was handled (none left for the deadline).
    pub complete: bool,
}

impl RunSummary {
    fn count(&mut self, outcome: &Renewal) {
        match outcome {
            Renewal::Renewed => self.renewed += 1,
            Renewal::Recreated => self.recreated += 1,
            Renewal::Replaced => self.replaced += 1,
            Renewal::Kept => self.kept += 1,
            Renewal::Parked => self.parked += 1,
            Renewal::Dropped => self.dropped += 1,
            Renewal::Deferred(d) => {
                let why = match d {
                    Deferral::Deadline => "deadline",
                    Deferral::Throttled => "throttled",
                    Deferral::Backoff => "backoff",
                };
                *self.deferred.entry(why.into()).or_default() += 1;
            }
            Renewal::Failed(f) => *self.failed.entry(f.reason().into()).or_default() += 1,
        }
    }

    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }

    /// The run as EMF metrics (namespace `graphfeed`, dimension `Function` = `renew`).
    pub fn metrics(&self) -> Vec<(String, f64, Unit)> {
        let mut m = vec![
            ("RenewalsDue".to_owned(), self.due as f64, Unit::Count),
            (
                "RenewalsOk".to_owned(),
                (self.renewed + self.recreated + self.replaced + self.kept) as f64,
                Unit::Count,
            ),
            (
                "SubscriptionsRecreated".to_owned(),
                self.recreated as f64,
                Unit::Count,
            ),
            (
                "SubscriptionsReplaced".to_owned(),
                self.replaced as f64,
                Unit::Count,
            ),
            ("SubscriptionsParked".to_owned(), self.parked as f64, Unit::Count),
            (
                "RenewalsDeferred".to_owned(),
                self.deferred.values().sum::<u64>() as f64,
                Unit::Count,
            ),
            ("RenewalsFailed".to_owned(), self.failures() as f64, Unit::Count),
            (
                "SafetyNetWalks".to_owned(),
                self.safety_net_walks as f64,
                Unit::Count,
            ),
        ];
        for (reason, name) in [
            ("quota", "RenewalsFailedQuota"),
            ("throttled", "RenewalsFailedThrottled"),
            ("needs_reauth", "RenewalsFailedNeedsReauth"),
            ("graph", "RenewalsFailedGraph"),
            ("token", "RenewalsFailedToken"),
            ("store", "RenewalsFailedStore"),
            ("queue", "RenewalsFailedQueue"),
            ("panic", "RenewalsFailedPanic"),
        ] {
            let n = self.failed.get(reason).copied().unwrap_or(0);
            m.push((name.to_owned(), n as f64, Unit::Count));
        }
        if let Some(s) = self.min_time_to_expiry_seconds {
            m.push(("MinTimeToExpirySeconds".to_owned(), s as f64, Unit::Seconds));
        }
        m
    }
}

/// Spaces Graph calls: at most `max_per_second` overall and `per_tenant_per_second` per tenant.
struct Pacer {
    interval: std::time::Duration,
    per_tenant: std::time::Duration,
    next: Mutex<(Instant, HashMap<String, Instant>)>,
}

impl Pacer {
    fn new(settings: &RenewSettings) -> Self {
        let every = |per_second: u32| std::time::Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        Self {
            interval: every(settings.max_per_second),
            per_tenant: every(settings.per_tenant_per_second),
            next: Mutex::new((Instant::now(), HashMap::new())),
        }
    }

    /// Waits for the next free slot for `tenant`.
    async fn wait(&self, tenant: &str) {
        let slot = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            // A call takes the next overall slot, and starts once its tenant's slot comes too. A
            // wait for the tenant does not move the overall schedule, so the overall rate stays
            // the limit however the tenants mix (calls may bunch a little; Graph counts per 20 s).
            let overall = now.max(next.0);
            next.0 = overall + self.interval;
            let slot = overall.max(next.1.get(tenant).copied().unwrap_or(now));
            next.1.insert(tenant.to_owned(), slot + self.per_tenant);
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

/// A tenant's stored throttle, read at most once per run.
type StoredThrottle = tokio::sync::OnceCell<Option<DateTime<Utc>>>;

/// What one run shares between its renewals.
struct RunContext {
    pacer: Pacer,
    /// Tenants found throttled in this run, and until when.
    throttled: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Each tenant's stored throttle, read once per run.
    stored: Mutex<HashMap<String, Arc<StoredThrottle>>>,
    deadline: Instant,
}

impl RunContext {
    fn stored_throttle(&self, tenant: &str) -> Arc<StoredThrottle> {
        self.stored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    fn throttled_until(&self, tenant: &str) -> Option<DateTime<Utc>> {
        self.throttled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .copied()
    }

    fn throttle(&self, tenant: &str, until: DateTime<Utc>) {
        let mut map = self
            .throttled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = map.entry(tenant.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }
}

/// Everything renew needs, built once per cold start.
pub struct Renewer {
    pub graph: GraphClient,
    pub store: Arc<dyn ConnectionStore>,
    pub fleet: Arc<dyn FleetIndex>,
    /// The tenant throttle the walker also honours.
    pub throttles: Arc<dyn WalkStore>,
    pub keys: Arc<KeyStore>,
    pub tokens: Arc<dyn AccessTokenSource>,
    /// The notifications queue: catch-up and safety-net walks.
    pub queue: Arc<dyn NotificationQueue>,
    pub clock: SharedClock,
    /// Where Graph notifies: a recreated subscription needs them.
    pub urls: NotificationUrls,
    pub settings: RenewSettings,
}

impl Renewer {
    fn rules(&self) -> Subscriptions<'_> {
        Subscriptions {
            graph: &self.graph,
            store: self.store.as_ref(),
            keys: &self.keys,
            clock: &self.clock,
            renew_window: self.settings.window,
            jitter: self.settings.jitter,
        }
    }

    /// One scheduled run; stops starting renewals once `deadline` is near.
    pub async fn run(&self, deadline: Instant) -> RunSummary {
        let ctx = RunContext {
            pacer: Pacer::new(&self.settings),
            throttled: Mutex::new(HashMap::new()),
            stored: Mutex::new(HashMap::new()),
            deadline,
        };
        let mut summary = RunSummary::default();
        // A warm container's ring may predate a rotation: read it again (at most once a minute).
        if let Err(e) = self.keys.refresh_if_allowed().await {
            tracing::warn!(error = %e, "the clientState key ring could not be read again; the cached ring is used");
        }
        let (due, listed_all, unchanged) = self.due(&ctx).await;
        summary.due = due.len() as u64;
        let outcomes: Vec<Renewal> = futures::stream::iter(due)
            .map(|record| {
                let ctx = &ctx;
                async move {
                    let drive_key = record.drive_key;
                    std::panic::AssertUnwindSafe(self.renew_due(record, ctx))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            tracing::error!(drive_key = %drive_key, "a renewal panicked; the run goes on");
                            Renewal::Failed(Failure::Panic)
                        })
                }
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        for outcome in &outcomes {
            summary.count(outcome);
        }
        summary.complete = listed_all && !summary.deferred.contains_key("deadline");
        summary.safety_net_walks = self.safety_net(&ctx, &mut summary).await;
        summary.min_time_to_expiry_seconds = self.min_time_to_expiry(&unchanged, &mut summary).await;
        tracing::info!(
            due = summary.due,
            renewed = summary.renewed,
            recreated = summary.recreated,
            replaced = summary.replaced,
            failed = summary.failures(),
            safety_net_walks = summary.safety_net_walks,
            min_time_to_expiry_s = summary.min_time_to_expiry_seconds,
            complete = summary.complete,
            "renew run finished"
        );
        summary
    }

    fn near_deadline(&self, ctx: &RunContext) -> bool {
        Instant::now() + self.settings.reserve >= ctx.deadline
    }

    /// The due subscriptions, earliest first; whether every shard was read to its end; and each
    /// shard's earliest expiry when this run leaves it as it was (nothing due in it), so the
    /// fleet's minimum needs no second read of that shard. A shard is paged only when its
    /// earliest expiry is due (or keys are retired): most runs read one item per shard.
    async fn due(
        &self,
        ctx: &RunContext,
    ) -> (Vec<SubscriptionRecord>, bool, Vec<Option<Option<DateTime<Utc>>>>) {
        let now = self.clock.now();
        let window_end = now + self.settings.window;
        let ring = self.keys.ring();
        // While keys are retired, every subscription is read: those made under one are due too.
        let retiring = ring.has_retired();
        let before = if retiring {
            now + Duration::days(36_500)
        } else {
            window_end
        };
        let mut due = Vec::new();
        let mut complete = true;
        let mut unchanged = Vec::new();
        for shard in shards() {
            if self.near_deadline(ctx) {
                return (sorted(due), false, unchanged);
            }
            match self.fleet.earliest_expiry(shard).await {
                Ok(earliest) if !retiring && earliest.is_none_or(|at| at >= window_end) => {
                    unchanged.push(Some(earliest));
                    continue;
                }
                Ok(_) => unchanged.push(None),
                Err(e) => {
                    tracing::error!(shard, error = %e, "the expiry index could not be read; the shard waits for the next run");
                    unchanged.push(None);
                    complete = false;
                    continue;
                }
            }
            let mut cursor: Option<String> = None;
            loop {
                if self.near_deadline(ctx) {
                    return (sorted(due), false, unchanged);
                }
                match self.fleet.expiring(shard, before, cursor.as_deref()).await {
                    Ok(page) => {
                        due.extend(page.items.into_iter().filter(|r| {
                            r.expires_at < window_end
                                || (retiring
                                    && crate::ids::KeyId::parse(&r.key_id).is_ok_and(|k| ring.is_retired(&k)))
                        }));
                        cursor = page.cursor;
                        if cursor.is_none() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(shard, error = %e, "the expiry index could not be read; the shard waits for the next run");
                        complete = false;
                        break;
                    }
                }
            }
        }
        (sorted(due), complete, unchanged)
    }

    /// One due subscription, with the checks that need no Graph call first.
    async fn renew_due(&self, record: SubscriptionRecord, ctx: &RunContext) -> Renewal {
        if self.near_deadline(ctx) {
            return Renewal::Deferred(Deferral::Deadline);
        }
        let drive_key = record.drive_key;
        let state = match self.store.drive(&drive_key).await {
            Ok(s) => s,
            Err(e) => return Renewal::Failed(Failure::Store(e.to_string())),
        };
        let state = match state {
            Some(s) if s.state != DriveStatus::Disconnected => s,
            _ => {
                // A disconnect that could not reach Graph left the record: Graph lets the
                // subscription lapse, and its notifications land on a tombstone. Only this
                // version goes: a reconnect racing this run may have written the next.
                return match self
                    .store
                    .delete_subscription_version(&drive_key, record.version)
                    .await
                {
                    Ok(()) => Renewal::Dropped,
                    Err(e) => Renewal::Failed(Failure::Store(e.to_string())),
                };
            }
        };
        if state.state == DriveStatus::NeedsReauth {
            return match self.park(&record).await {
                Ok(()) => Renewal::Parked,
                Err(e) => Renewal::Failed(Failure::Store(e.to_string())),
            };
        }
        let now = self.clock.now();
        if record.retry_at.is_some_and(|at| at > now) {
            return Renewal::Deferred(Deferral::Backoff);
        }
        if ctx
            .throttled_until(&state.tenant_id)
            .is_some_and(|until| until > now)
        {
            return Renewal::Deferred(Deferral::Throttled);
        }
        // The stored throttle (the walker's too) is read once per tenant and run; the tenant's
        // other renewals wait for that read.
        let stored = ctx
            .stored_throttle(&state.tenant_id)
            .get_or_try_init(|| self.throttles.throttled_until(&state.tenant_id))
            .await
            .copied();
        match stored {
            Ok(Some(until)) if until > now => {
                ctx.throttle(&state.tenant_id, until);
                return Renewal::Deferred(Deferral::Throttled);
            }
            Ok(_) => {}
            Err(e) => return Renewal::Failed(Failure::Store(e.to_string())),
        }
        ctx.pacer.wait(&state.tenant_id).await;
        if self.near_deadline(ctx) {
            return Renewal::Deferred(Deferral::Deadline);
        }
        let outcome = self.renew_drive(&state, Some(record), false).await;
        if let Renewal::Failed(Failure::Throttled { until }) = &outcome {
            ctx.throttle(&state.tenant_id, *until);
        }
        outcome
    }

    /// Renews one drive's subscription: the renewal rules, for the scheduled run (`force` false:
    /// a subscription renewed meanwhile is kept) and for `reauthorizationRequired` (`force`
    /// true: one PATCH reauthorizes, graph-protocol.md §4). Records what it found in the
    /// drive's state and the subscription's backoff.
    pub async fn renew_drive(
        &self,
        state: &DriveState,
        record: Option<SubscriptionRecord>,
        force: bool,
    ) -> Renewal {
        let user = match user_of(state) {
            Ok(u) => u,
            Err(e) => return Renewal::Failed(Failure::Store(e)),
        };
        let outcome = self.attempt(&user, state, record.as_ref(), force).await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(failure) => return self.failed(state, record.as_ref(), failure).await,
        };
        if matches!(outcome, Renewal::Recreated | Renewal::Replaced) {
            let envelope = Envelope::new(
                Kind::CatchUp,
                state.drive_key,
                user.tenant.clone(),
                self.clock.now(),
            );
            if let Err(e) = send_all(
                self.queue.as_ref(),
                &[OutgoingMessage::new(state.drive_key, envelope.to_json())],
            )
            .await
            {
                tracing::error!(drive_key = %state.drive_key, error = %e, "the catch-up walk could not be queued; the safety net walks the drive within a day");
                return Renewal::Failed(Failure::Queue(e.to_string()));
            }
        }
        // Only a drive in trouble has a state to set back (no read for the others).
        if matches!(state.state, DriveStatus::Renewing | DriveStatus::Expired)
            && let Err(e) = record_subscription_health(
                self.store.as_ref(),
                &state.drive_key,
                state.generation,
                &SubscriptionHealth::Healthy,
            )
            .await
        {
            tracing::warn!(drive_key = %state.drive_key, error = %e, "the drive's state could not be set back after a renewal");
        }
        outcome
    }

    /// The Graph part: a token, then renew, recreate or replace; a 401 refreshes once.
    async fn attempt(
        &self,
        user: &UserKey,
        state: &DriveState,
        record: Option<&SubscriptionRecord>,
        force: bool,
    ) -> Result<Renewal, Failure> {
        let resource = match record {
            Some(r) => r.resource.clone(),
            None => self.resource(user, state).await?,
        };
        let retired = record.is_some_and(|r| {
            crate::ids::KeyId::parse(&r.key_id).is_ok_and(|k| self.keys.ring().is_retired(&k))
        });
        let mut token = self.token(user).await?;
        let mut refreshed = false;
        loop {
            let result = match record {
                Some(current) if retired => self
                    .rules()
                    .replace(user, state, current, &resource, &self.urls, &token)
                    .await
                    .map(|_| Renewal::Replaced),
                _ => self
                    .rules()
                    .ensure(user, state, force, &resource, &self.urls, &token)
                    .await
                    .map(|ensured| match ensured.action {
                        Action::Kept => Renewal::Kept,
                        Action::Renewed => Renewal::Renewed,
                        Action::Created => Renewal::Recreated,
                    }),
            };
            match result {
                Ok(outcome) => return Ok(outcome),
                Err(SubscriptionError::Graph(e)) if e.status() == Some(401) && !refreshed => {
                    refreshed = true;
                    self.tokens.forget(user);
                    token = self.token(user).await?;
                }
                Err(SubscriptionError::Graph(e)) => return Err(self.classify(&e, state)),
                Err(SubscriptionError::Store(e)) => return Err(Failure::Store(e.to_string())),
            }
        }
    }

    async fn token(&self, user: &UserKey) -> Result<SecretString, Failure> {
        self.tokens.token(user).await.map_err(|e| match e {
            TokenError::NeedsReauth { .. } => Failure::NeedsReauth,
            other => Failure::Token(other.to_string()),
        })
    }

    fn classify(&self, e: &GraphError, state: &DriveState) -> Failure {
        if e.is_subscription_quota() {
            return Failure::Quota;
        }
        match e.status() {
            // A refreshed token still refused, or permission revoked: only the user can fix it.
            Some(401 | 403) => Failure::NeedsReauth,
            Some(429 | 503 | 509) => {
                let wait = e
                    .retry_after()
                    .and_then(|d| Duration::from_std(d).ok())
                    .unwrap_or(DEFAULT_THROTTLE);
                tracing::warn!(drive_key = %state.drive_key, tenant = %state.tenant_id, wait_s = wait.num_seconds(), "Graph is throttling the tenant's renewals");
                Failure::Throttled {
                    until: self.clock.now() + wait,
                }
            }
            _ => Failure::Graph(e.to_string()),
        }
    }

    /// Records a failure: the drive's state, the subscription's backoff, the tenant's throttle.
    async fn failed(
        &self,
        state: &DriveState,
        record: Option<&SubscriptionRecord>,
        failure: Failure,
    ) -> Renewal {
        let now = self.clock.now();
        tracing::warn!(drive_key = %state.drive_key, reason = failure.reason(), detail = ?failure, "a renewal failed");
        let lapsed = record.is_none_or(|r| r.expires_at <= now);
        let health = match &failure {
            Failure::NeedsReauth => Some((DriveStatus::NeedsReauth, "the user's sign-in can no longer renew the subscription: POST /connect again".to_owned())),
            Failure::Quota => Some((DriveStatus::Expired, "Graph's subscription quota is reached (403): no subscription could be made; renew tries again every run".to_owned())),
            Failure::Throttled { .. } | Failure::Graph(_) | Failure::Token(_) => Some((
                if lapsed { DriveStatus::Expired } else { DriveStatus::Renewing },
                format!("the last renewal failed ({}); renew tries again", failure.reason()),
            )),
            Failure::Store(_) | Failure::Queue(_) | Failure::Panic => None,
        };
        if let Failure::Throttled { until } = &failure
            && let Err(e) = self.throttles.throttle(&state.tenant_id, *until).await
        {
            tracing::warn!(tenant = %state.tenant_id, error = %e, "the tenant's throttle could not be recorded");
        }
        if let Some((status, reason)) = health {
            if let Err(e) = record_subscription_health(
                self.store.as_ref(),
                &state.drive_key,
                state.generation,
                &SubscriptionHealth::Trouble(status, reason),
            )
            .await
            {
                tracing::warn!(drive_key = %state.drive_key, error = %e, "the drive's state could not be recorded");
            }
            let update = match &failure {
                Failure::NeedsReauth => self.park_by_key(&state.drive_key).await,
                Failure::Throttled { until } => self.back_off(&state.drive_key, Some(*until)).await,
                _ => self.back_off(&state.drive_key, None).await,
            };
            if let Err(e) = update {
                tracing::warn!(drive_key = %state.drive_key, error = %e, "the subscription's backoff could not be recorded");
            }
        }
        Renewal::Failed(failure)
    }

    /// Re-reads and rewrites the drive's subscription record with `change`, on a lost race again.
    async fn update_record(
        &self,
        drive_key: &DriveKey,
        change: impl Fn(&SubscriptionRecord) -> Option<SubscriptionRecord>,
    ) -> Result<(), StoreError> {
        for _ in 0..4 {
            let Some(current) = self.store.subscription(drive_key).await? else {
                return Ok(());
            };
            let Some(next) = change(&current) else {
                return Ok(());
            };
            match self.store.put_subscription(&next).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict)
    }

    async fn park(&self, record: &SubscriptionRecord) -> Result<(), StoreError> {
        self.park_by_key(&record.drive_key).await
    }

    async fn park_by_key(&self, drive_key: &DriveKey) -> Result<(), StoreError> {
        self.update_record(drive_key, |current| {
            (!current.parked).then(|| SubscriptionRecord {
                parked: true,
                version: current.version + 1,
                ..current.clone()
            })
        })
        .await
    }

    async fn back_off(
        &self,
        drive_key: &DriveKey,
        at_least_until: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.update_record(drive_key, |current| {
            let failures = current.failures.saturating_add(1);
            let retry_at = (now + retry_delay(failures)).max(at_least_until.unwrap_or(now));
            Some(SubscriptionRecord {
                failures,
                retry_at: Some(retry_at),
                version: current.version + 1,
                ..current.clone()
            })
        })
        .await
    }

    /// The resource a drive subscribes to when no record names it: from the user's drive.
    async fn resource(&self, user: &UserKey, state: &DriveState) -> Result<String, Failure> {
        let drive_type = self
            .store
            .user(user)
            .await
            .map_err(|e| Failure::Store(e.to_string()))?
            .map(|u| u.drive_type)
            .unwrap_or_default();
        Ok(crate::graph::Drive {
            id: state.drive_id.clone(),
            drive_type,
        }
        .subscription_resource())
    }

    /// Queues one walk for each drive with no completed walk in [`RenewSettings::safety_net_after`],
    /// at most one a day per drive.
    async fn safety_net(&self, ctx: &RunContext, summary: &mut RunSummary) -> u64 {
        let now = self.clock.now();
        let cutoff = now - self.settings.safety_net_after;
        let mut messages = Vec::new();
        'shards: for shard in shards() {
            let mut cursor: Option<String> = None;
            loop {
                if self.near_deadline(ctx) {
                    summary.complete = false;
                    break 'shards;
                }
                let page = match self.fleet.idle(shard, cutoff, cursor.as_deref()).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(shard, error = %e, "the walk index could not be read; the shard waits for the next run");
                        *summary.failed.entry("store".into()).or_default() += 1;
                        break;
                    }
                };
                // A read and a conditional put per drive (a put with a condition has no batch
                // form): as many at once as renewals.
                let checked: Vec<_> = futures::stream::iter(page.items)
                    .map(|drive_key| async move {
                        let message = self.safety_net_message(&drive_key, now, cutoff).await;
                        (drive_key, message)
                    })
                    .buffer_unordered(self.settings.concurrency.max(1))
                    .collect()
                    .await;
                for (drive_key, message) in checked {
                    match message {
                        Ok(Some(m)) => messages.push(m),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(drive_key = %drive_key, error = %e, "no safety-net walk for the drive this run");
                            *summary.failed.entry("store".into()).or_default() += 1;
                        }
                    }
                }
                cursor = page.cursor;
                if cursor.is_none() {
                    break;
                }
            }
        }
        if messages.is_empty() {
            return 0;
        }
        match send_all(self.queue.as_ref(), &messages).await {
            Ok(()) => messages.len() as u64,
            Err(e) => {
                tracing::error!(error = %e, walks = messages.len(), "safety-net walks could not all be queued");
                *summary.failed.entry("queue".into()).or_default() += 1;
                0
            }
        }
    }

    /// The drive's safety-net message, when it is still idle (the index lags) and today's walk
    /// is not claimed yet.
    async fn safety_net_message(
        &self,
        drive_key: &DriveKey,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<OutgoingMessage>, StoreError> {
        let Some(state) = self.store.drive(drive_key).await? else {
            return Ok(None);
        };
        if !state.walkable() || state.last_seen_at().is_some_and(|at| at > cutoff) {
            return Ok(None);
        }
        if !self.fleet.claim_safety_net(drive_key, now, cutoff).await? {
            return Ok(None);
        }
        let Ok(tenant) = TenantId::parse(&state.tenant_id) else {
            return Ok(None);
        };
        let envelope = Envelope::new(Kind::SafetyNet, *drive_key, tenant, now);
        Ok(Some(OutgoingMessage::new(*drive_key, envelope.to_json())))
    }

    /// The fleet's minimum time to expiry: each shard's earliest, read again unless the run
    /// left the shard as it was.
    async fn min_time_to_expiry(
        &self,
        unchanged: &[Option<Option<DateTime<Utc>>>],
        summary: &mut RunSummary,
    ) -> Option<i64> {
        let mut earliest: Option<DateTime<Utc>> = None;
        for shard in shards() {
            let known = unchanged.get(usize::from(shard)).copied().flatten();
            let read = match known {
                Some(at) => Ok(at),
                None => self.fleet.earliest_expiry(shard).await,
            };
            match read {
                Ok(Some(at)) => earliest = Some(earliest.map_or(at, |e| e.min(at))),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(shard, error = %e, "the expiry index could not be read for the minimum time to expiry");
                    *summary.failed.entry("store".into()).or_default() += 1;
                }
            }
        }
        earliest.map(|at| (at - self.clock.now()).num_seconds())
    }
}

fn sorted(mut due: Vec<SubscriptionRecord>) -> Vec<SubscriptionRecord> {
    due.sort_by_key(|a| a.expires_at);
    due
}

fn user_of(state: &DriveState) -> Result<UserKey, String> {
    let tenant = TenantId::parse(&state.tenant_id).map_err(|e| e.to_string())?;
    let object = ObjectId::parse(&state.user_oid).map_err(|e| e.to_string())?;
    Ok(UserKey::new(tenant, object))
}

/// process-changes' `reauthorizationRequired` and `subscriptionRemoved`: the same renewal.
impl LifecycleActions for Renewer {
    fn renew<'a>(&'a self, state: &'a DriveState) -> BoxFuture<'a, Result<(), LifecycleError>> {
        Box::pin(async move {
            let record = self
                .store
                .subscription(&state.drive_key)
                .await
                .map_err(|e| LifecycleError::Transient(e.to_string()))?;
            match self.renew_drive(state, record, true).await {
                Renewal::Failed(f) => Err(match f {
                    Failure::NeedsReauth => LifecycleError::NeedsReauth,
                    Failure::Throttled { until } => LifecycleError::Throttled(until),
                    Failure::Token(r) | Failure::Store(r) | Failure::Queue(r) => LifecycleError::Transient(r),
                    Failure::Graph(r) => LifecycleError::Transient(r),
                    Failure::Quota => LifecycleError::Fault("Graph's subscription quota is reached".into()),
                    Failure::Panic => LifecycleError::Fault("the renewal panicked".into()),
                }),
                outcome => {
                    tracing::info!(drive_key = %state.drive_key, outcome = ?outcome, "subscription renewed for a lifecycle event");
                    Ok(())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_settings_default_without_variables_and_refuse_values_out_of_range() {
        assert_eq!(
            RenewSettings::from_env(&Env::from_pairs([])).unwrap(),
            RenewSettings::default()
        );
        let set = RenewSettings::from_env(&Env::from_pairs([
            (RENEW_WINDOW_MINUTES, "90"),
            (RENEW_CONCURRENCY, "4"),
            (RENEW_MAX_PER_SECOND, "10"),
            (RENEW_JITTER_MINUTES, "0"),
        ]))
        .unwrap();
        assert_eq!(set.window, Duration::minutes(90));
        assert_eq!((set.concurrency, set.max_per_second), (4, 10));
        assert_eq!(set.jitter, Duration::zero());
        for (var, bad) in [
            (RENEW_WINDOW_MINUTES, "0"),
            (RENEW_WINDOW_MINUTES, "43201"),
            (RENEW_CONCURRENCY, "many"),
            (RENEW_MAX_PER_SECOND, "251"),
            (RENEW_JITTER_MINUTES, "-1"),
        ] {
            let e = RenewSettings::from_env(&Env::from_pairs([(var, bad)])).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn the_backoff_doubles_from_a_minute_and_stops_at_six_hours() {
        assert_eq!(retry_delay(1), Duration::minutes(1));
        assert_eq!(retry_delay(2), Duration::minutes(2));
        assert_eq!(retry_delay(5), Duration::minutes(16));
        assert_eq!(retry_delay(9), Duration::minutes(256));
        assert_eq!(retry_delay(10), Duration::minutes(360));
        assert_eq!(retry_delay(u32::MAX), Duration::minutes(360));
    }

    #[tokio::test]
    async fn the_pacer_spaces_calls_overall_and_per_tenant() {
        let pacer = Pacer::new(&RenewSettings {
            max_per_second: 100,
            per_tenant_per_second: 20,
            ..RenewSettings::default()
        });
        let started = Instant::now();
        for _ in 0..5 {
            pacer.wait("a").await;
        }
        // Five calls of one tenant at 20/s: the fifth waits four 50 ms intervals.
        assert!(started.elapsed() >= std::time::Duration::from_millis(195));
        let started = Instant::now();
        for t in ["b", "c", "d", "e", "f"] {
            pacer.wait(t).await;
        }
        // Five tenants at 100/s overall: about 10 ms apart, far less than per tenant.
        assert!(started.elapsed() < std::time::Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_tenant_waiting_for_its_slot_does_not_hold_up_the_other_tenants() {
        let pacer = Arc::new(Pacer::new(&RenewSettings {
            max_per_second: 100,
            per_tenant_per_second: 10,
            ..RenewSettings::default()
        }));
        // 20 tenants, each with two calls in a row, all asked for at once. The second call of
        // each waits 100 ms for its tenant, while the other tenants keep the 10 ms overall pace:
        // about 0.5 s in all (not 2 s, as when every tenant wait delayed everyone after it).
        let started = Instant::now();
        let calls = (0..40).map(|n| {
            let pacer = pacer.clone();
            async move { pacer.wait(&format!("t{}", n / 2)).await }
        });
        futures::future::join_all(calls).await;
        let took = started.elapsed();
        assert!(took >= std::time::Duration::from_millis(470), "{took:?}");
        assert!(took < std::time::Duration::from_millis(900), "{took:?}");
    }

    #[test]
    fn a_run_summary_becomes_metrics_by_reason() {
        let mut s = RunSummary::default();
        s.count(&Renewal::Renewed);
        s.count(&Renewal::Recreated);
        s.count(&Renewal::Failed(Failure::Quota));
        s.count(&Renewal::Failed(Failure::Throttled { until: Utc::now() }));
        s.count(&Renewal::Deferred(Deferral::Deadline));
        s.min_time_to_expiry_seconds = Some(3600);
        let m: HashMap<String, f64> = s.metrics().into_iter().map(|(n, v, _)| (n, v)).collect();
        assert_eq!(m["RenewalsOk"], 2.0);
        assert_eq!(m["RenewalsFailed"], 2.0);
        assert_eq!(m["RenewalsFailedQuota"], 1.0);
        assert_eq!(m["RenewalsFailedThrottled"], 1.0);
        assert_eq!(m["RenewalsFailedGraph"], 0.0);
        assert_eq!(m["RenewalsDeferred"], 1.0);
        assert_eq!(m["SubscriptionsRecreated"], 1.0);
        assert_eq!(m["MinTimeToExpirySeconds"], 3600.0);
    }
}
