//! Delivering change and lifecycle notifications the way Graph does (graph-protocol.md §3.2, §3.3,
//! §10 items 6-8).
//!
//! This module owns the outbox (notifications waiting for an attempt), the delivery log, the
//! per-URL endpoint health (normal / slow / drop), and the task that sends batches:
//! - pending notifications for one URL are sent together, up to `max_batch` per POST, after a short
//!   real-time batching window, so one POST can mix subscriptions and tenants (§3.2);
//! - a 2xx within the first-attempt deadline (3 s) is delivered; anything else is retried with
//!   exponential backoff in *sim* time for up to 4 sim hours, each retry with a 10 s deadline (§3.3);
//! - an answer that arrives after the deadline is still a failure, so the notification is sent
//!   again: the endpoint sees a duplicate, as it would from Graph (§3.2);
//! - an endpoint that is slow too often is put in the `slow` state (new notifications held 10 sim
//!   minutes) or the `drop` state (new notifications dropped for 10 sim minutes) (§3.3).
//!
//! Every due time is on the simulated clock, so advancing it flushes retries at once; only the
//! HTTP deadlines and the batching window are real time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use axum::http::header;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Timing;
use crate::sim::Sim;
use crate::state::Counters;

/// At most this many attempts are kept in the delivery log; older ones are forgotten.
const LOG_LIMIT: usize = 10_000;

/// Which URL of a subscription a notification goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A change notification, to `notificationUrl` (§3.1).
    Change,
    /// A lifecycle notification, to `lifecycleNotificationUrl` (§4).
    Lifecycle,
}

/// A new notification for one URL.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub url: String,
    pub kind: NotificationKind,
    pub subscription_id: String,
    pub payload: Value,
}

/// A notification waiting for its next attempt.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub url: String,
    pub kind: NotificationKind,
    pub subscription_id: String,
    pub payload: Value,
    /// Sim time of the next attempt.
    pub due: DateTime<Utc>,
    /// Attempts made so far.
    pub attempts: u32,
    pub first_enqueued: DateTime<Utc>,
    /// The last attempt timed out, so the endpoint may already have this notification.
    pub maybe_received: bool,
    /// Real time it was queued: a group is sent once its oldest member has waited the batching
    /// window, taking everything due for the same URL with it.
    pub queued_at: Instant,
}

/// Notifications sent in one POST.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub generation: u64,
    pub url: String,
    pub kind: NotificationKind,
    /// 1 for a first attempt.
    pub attempt: u32,
    pub items: Vec<Pending>,
    pub deadline: std::time::Duration,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx within the deadline.
    Delivered,
    /// A non-2xx answer within the deadline.
    Rejected,
    /// No answer within the deadline (a late answer is recorded separately).
    TimedOut,
    /// The connection failed (refused, reset, DNS).
    ConnectionFailed,
}

/// One POST to a notification URL, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryAttempt {
    /// Position in the log, from 1.
    pub seq: u64,
    pub url: String,
    pub kind: NotificationKind,
    /// 1 for the first attempt of these notifications.
    pub attempt: u32,
    pub notification_count: usize,
    pub subscription_ids: Vec<String>,
    pub outcome: Outcome,
    /// The HTTP status, when the endpoint answered within the deadline.
    pub status: Option<u16>,
    /// What went wrong, for timeouts and connection failures.
    pub error: Option<String>,
    pub latency_ms: u64,
    /// Sim time when the attempt finished.
    pub sim_time: DateTime<Utc>,
    /// The status of an answer that came after the deadline (a "late ack"), if one came.
    pub late_status: Option<u16>,
    pub late_latency_ms: Option<u64>,
}

/// The throttling state of a notification URL (§3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "until")]
pub enum HealthState {
    Normal,
    /// New notifications are held until `slow_delay` after they arise.
    Slow(DateTime<Utc>),
    /// New notifications are dropped until the given sim time, then the endpoint is probed.
    Drop(DateTime<Utc>),
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: DateTime<Utc>,
    /// Slower than the first-attempt deadline (3 s), or timed out.
    slow: bool,
    /// Slower than the retry deadline (10 s), or timed out on a retry.
    very_slow: bool,
}

#[derive(Debug, Clone)]
struct EndpointHealth {
    state: HealthState,
    samples: VecDeque<Sample>,
}

impl Default for EndpointHealth {
    fn default() -> Self {
        Self {
            state: HealthState::Normal,
            samples: VecDeque::new(),
        }
    }
}

impl EndpointHealth {
    /// Re-evaluates the state over the rolling window (§3.3): >15% very slow → drop, >10% slow →
    /// slow, once at least `health_min_samples` responses are in the window.
    fn evaluate(&mut self, now: DateTime<Utc>, timing: &Timing) {
        let horizon = now - timing.health_window;
        while self.samples.front().is_some_and(|sample| sample.at < horizon) {
            self.samples.pop_front();
        }
        if let HealthState::Drop(until) = self.state
            && now < until
        {
            return;
        }
        let total = self.samples.len();
        if total >= timing.health_min_samples.max(1) {
            let fraction = |count: usize| count as f64 / total as f64;
            let slow = fraction(self.samples.iter().filter(|s| s.slow).count());
            let very_slow = fraction(self.samples.iter().filter(|s| s.very_slow).count());
            self.state = if very_slow > timing.drop_fraction {
                HealthState::Drop(now + timing.drop_period)
            } else if slow > timing.slow_fraction {
                match self.state {
                    HealthState::Slow(until) if now < until => HealthState::Slow(until),
                    _ => HealthState::Slow(now + timing.slow_delay),
                }
            } else {
                HealthState::Normal
            };
        } else {
            self.state = match self.state {
                HealthState::Slow(until) | HealthState::Drop(until) if now < until => self.state,
                _ => HealthState::Normal,
            };
        }
    }
}

/// The health of one notification URL, as the control API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointReport {
    pub url: String,
    /// `normal`, `slow` or `drop`.
    pub state: &'static str,
    /// When a slow or drop period ends (sim time).
    pub until: Option<DateTime<Utc>>,
    /// Responses in the rolling window.
    pub samples: usize,
    pub slow_samples: usize,
    pub very_slow_samples: usize,
}

/// The outbox, the log and the endpoint health. Lives inside [`crate::state::State`].
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    pending: Vec<Pending>,
    in_flight: usize,
    log: VecDeque<DeliveryAttempt>,
    next_log_seq: u64,
    endpoints: HashMap<String, EndpointHealth>,
}

impl Deliveries {
    /// Queues one notification for `url`, honouring the endpoint's state: held in `slow`,
    /// dropped (unrecoverably) in `drop` (§3.3).
    pub fn enqueue(
        &mut self,
        counters: &mut Counters,
        timing: &Timing,
        now: DateTime<Utc>,
        outgoing: Outgoing,
    ) {
        counters.notifications_enqueued += 1;
        let Outgoing {
            url,
            kind,
            subscription_id,
            payload,
        } = outgoing;
        let health = self.endpoints.entry(url.clone()).or_default();
        health.evaluate(now, timing);
        let due = match health.state {
            HealthState::Drop(_) => {
                counters.notifications_dropped += 1;
                counters.notifications_dropped_throttled += 1;
                return;
            }
            HealthState::Slow(_) => now + timing.slow_delay,
            HealthState::Normal => now,
        };
        self.pending.push(Pending {
            url,
            kind,
            subscription_id,
            payload,
            due,
            attempts: 0,
            first_enqueued: now,
            maybe_received: false,
            queued_at: Instant::now(),
        });
    }

    /// Notifications queued or being sent.
    pub fn outstanding(&self) -> usize {
        self.pending.len() + self.in_flight
    }

    /// Removes every due notification and groups them into batches per (URL, kind, attempt).
    /// Change notifications whose subscription is gone are dropped: Graph stops delivering once a
    /// subscription expires or is deleted.
    pub fn take_due(
        &mut self,
        counters: &mut Counters,
        timing: &Timing,
        now: DateTime<Utc>,
        generation: u64,
        is_alive: impl Fn(&str) -> bool,
    ) -> Vec<Batch> {
        let mut groups: BTreeMap<(String, NotificationKind, u32), Vec<Pending>> = BTreeMap::new();
        let mut waiting = Vec::with_capacity(self.pending.len());
        for pending in self.pending.drain(..) {
            if pending.kind == NotificationKind::Change && !is_alive(&pending.subscription_id) {
                counters.notifications_dropped += 1;
                counters.notifications_dropped_subscription_gone += 1;
            } else if pending.due <= now {
                groups
                    .entry((pending.url.clone(), pending.kind, pending.attempts + 1))
                    .or_default()
                    .push(pending);
            } else {
                waiting.push(pending);
            }
        }
        // A group none of whose members has waited the batching window yet stays for the next look,
        // so a burst of changes is sent as one POST (§3.2).
        let ready_before = Instant::now().checked_sub(timing.batch_window);
        let (ready, early): (Vec<_>, Vec<_>) = groups.into_iter().partition(|(_, items)| {
            ready_before.is_none_or(|limit| items.iter().any(|pending| pending.queued_at <= limit))
        });
        waiting.extend(early.into_iter().flat_map(|(_, items)| items));
        self.pending = waiting;
        let mut batches = Vec::new();
        for ((url, kind, attempt), items) in ready {
            let deadline = if attempt == 1 {
                timing.first_delivery
            } else {
                timing.retry
            };
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                let chunk: Vec<Pending> = items.by_ref().take(timing.max_batch.max(1)).collect();
                self.in_flight += chunk.len();
                if attempt > 1 {
                    counters.notifications_retried += chunk.len() as u64;
                }
                counters.notifications_duplicated += chunk.iter().filter(|p| p.maybe_received).count() as u64;
                batches.push(Batch {
                    generation,
                    url: url.clone(),
                    kind,
                    attempt,
                    items: chunk,
                    deadline,
                });
            }
        }
        batches
    }

    /// Records an attempt's result: the log, the endpoint's health, and either the end of the
    /// notifications or their next retry. Returns the log sequence of the attempt.
    pub fn finish(
        &mut self,
        counters: &mut Counters,
        timing: &Timing,
        now: DateTime<Utc>,
        batch: Batch,
        result: &AttemptResult,
    ) -> u64 {
        self.in_flight = self.in_flight.saturating_sub(batch.items.len());
        counters.delivery_attempts += 1;
        let latency = result.latency;
        let timed_out = result.outcome == Outcome::TimedOut;
        let health = self.endpoints.entry(batch.url.clone()).or_default();
        health.samples.push_back(Sample {
            at: now,
            slow: timed_out || latency > timing.first_delivery,
            very_slow: (timed_out && batch.attempt > 1) || latency > timing.retry,
        });
        health.evaluate(now, timing);

        self.next_log_seq += 1;
        let seq = self.next_log_seq;
        self.log.push_back(DeliveryAttempt {
            seq,
            url: batch.url.clone(),
            kind: batch.kind,
            attempt: batch.attempt,
            notification_count: batch.items.len(),
            subscription_ids: batch.items.iter().map(|p| p.subscription_id.clone()).collect(),
            outcome: result.outcome,
            status: result.status,
            error: result.error.clone(),
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            sim_time: now,
            late_status: None,
            late_latency_ms: None,
        });
        while self.log.len() > LOG_LIMIT {
            self.log.pop_front();
        }

        let count = batch.items.len() as u64;
        if result.outcome == Outcome::Delivered {
            counters.notifications_delivered += count;
            return seq;
        }
        counters.delivery_failures += 1;
        for mut pending in batch.items {
            pending.attempts = batch.attempt;
            pending.maybe_received = timed_out;
            let index = usize::try_from(batch.attempt.saturating_sub(1)).unwrap_or(usize::MAX);
            let backoff = timing
                .retry_backoff
                .get(index)
                .or_else(|| timing.retry_backoff.last())
                .copied()
                .unwrap_or_else(|| chrono::Duration::minutes(1));
            // §3.3: retried "for up to 4 hours" (the last try at the 4-hour mark), then gone.
            let give_up_at = pending.first_enqueued + timing.retry_for;
            if now >= give_up_at {
                counters.notifications_dropped += 1;
                counters.notifications_dropped_after_retries += 1;
            } else {
                pending.due = (now + backoff).min(give_up_at);
                self.pending.push(pending);
            }
        }
        seq
    }

    /// Adds the late answer of a timed-out attempt to its log entry.
    pub fn record_late_answer(&mut self, counters: &mut Counters, seq: u64, status: u16, latency_ms: u64) {
        counters.late_answers += 1;
        if let Some(entry) = self.log.iter_mut().find(|entry| entry.seq == seq) {
            entry.late_status = Some(status);
            entry.late_latency_ms = Some(latency_ms);
        }
    }

    /// The delivery log, oldest first.
    pub fn log(&self) -> Vec<DeliveryAttempt> {
        self.log.iter().cloned().collect()
    }

    /// Every known endpoint's state, re-evaluated at `now`.
    pub fn endpoints(&mut self, timing: &Timing, now: DateTime<Utc>) -> Vec<EndpointReport> {
        let mut reports: Vec<EndpointReport> = self
            .endpoints
            .iter_mut()
            .map(|(url, health)| {
                health.evaluate(now, timing);
                let (state, until) = match health.state {
                    HealthState::Normal => ("normal", None),
                    HealthState::Slow(until) => ("slow", Some(until)),
                    HealthState::Drop(until) => ("drop", Some(until)),
                };
                EndpointReport {
                    url: url.clone(),
                    state,
                    until,
                    samples: health.samples.len(),
                    slow_samples: health.samples.iter().filter(|s| s.slow).count(),
                    very_slow_samples: health.samples.iter().filter(|s| s.very_slow).count(),
                }
            })
            .collect();
        reports.sort_by(|a, b| a.url.cmp(&b.url));
        reports
    }
}

/// What one POST came to.
#[derive(Debug, Clone)]
pub(crate) struct AttemptResult {
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency: std::time::Duration,
}

/// The delivery task: wakes when work arrives, when the clock is advanced through the simulator,
/// and on a short real-time tick (the clock may also be advanced by a clone held elsewhere), then
/// starts every due batch. Runs until aborted; aborting it also aborts the attempts in flight.
pub(crate) async fn run(sim: Sim) {
    let mut attempts = tokio::task::JoinSet::new();
    let (batch_window, tick) = (sim.config().timing.batch_window, sim.config().timing.tick);
    loop {
        tokio::select! {
            () = sim.woken() => {
                // Let a burst of changes gather so they share one POST (§3.2).
                tokio::time::sleep(batch_window).await;
            }
            () = tokio::time::sleep(tick) => {}
        }
        while attempts.try_join_next().is_some() {}
        for batch in sim.take_due_batches() {
            attempts.spawn(attempt(sim.clone(), batch));
        }
    }
}

/// Sends one batch, records the result, and if the deadline passed keeps listening (up to the
/// retry deadline) to log a late answer.
async fn attempt(sim: Sim, batch: Batch) {
    let body = json!({ "value": batch.items.iter().map(|p| p.payload.clone()).collect::<Vec<_>>() });
    let timing = &sim.config().timing;
    let late_limit = batch.deadline + timing.retry;
    let started = Instant::now();
    let mut request = Box::pin(
        sim.http()
            .post(&batch.url)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string())
            .timeout(late_limit)
            .send(),
    );
    let result = match tokio::time::timeout(batch.deadline, &mut request).await {
        Ok(Ok(response)) => {
            let status = response.status();
            AttemptResult {
                outcome: if status.is_success() {
                    Outcome::Delivered
                } else {
                    Outcome::Rejected
                },
                status: Some(status.as_u16()),
                error: None,
                latency: started.elapsed(),
            }
        }
        Ok(Err(error)) if error.is_timeout() => timed_out(started),
        Ok(Err(error)) => AttemptResult {
            outcome: Outcome::ConnectionFailed,
            status: None,
            error: Some(error_chain(&error)),
            latency: started.elapsed(),
        },
        Err(_) => timed_out(started),
    };
    let answered_late = result.outcome == Outcome::TimedOut;
    let seq = sim.finish_batch(batch, &result);
    if answered_late && let (Some(seq), Ok(response)) = (seq, request.await) {
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        sim.record_late_answer(seq, response.status().as_u16(), latency_ms);
    }
}

fn timed_out(started: Instant) -> AttemptResult {
    AttemptResult {
        outcome: Outcome::TimedOut,
        status: None,
        error: Some("timed out".to_owned()),
        latency: started.elapsed(),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            health_min_samples: 4,
            batch_window: std::time::Duration::ZERO,
            ..Timing::default()
        }
    }

    fn result(outcome: Outcome, latency_ms: u64) -> AttemptResult {
        AttemptResult {
            outcome,
            status: (outcome == Outcome::Delivered).then_some(202),
            error: None,
            latency: std::time::Duration::from_millis(latency_ms),
        }
    }

    fn enqueue(deliveries: &mut Deliveries, counters: &mut Counters, now: DateTime<Utc>, subscription: &str) {
        let outgoing = Outgoing {
            url: "https://hook".to_owned(),
            kind: NotificationKind::Change,
            subscription_id: subscription.to_owned(),
            payload: json!({}),
        };
        deliveries.enqueue(counters, &timing(), now, outgoing);
    }

    #[test]
    fn due_notifications_for_one_url_share_a_batch() {
        let (mut deliveries, mut counters, now) = (Deliveries::default(), Counters::default(), Utc::now());
        for subscription in ["a", "b", "c"] {
            enqueue(&mut deliveries, &mut counters, now, subscription);
        }
        let batches = deliveries.take_due(&mut counters, &timing(), now, 0, |_| true);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].items.len(), 3);
        assert_eq!(batches[0].deadline, timing().first_delivery);
        assert_eq!(deliveries.outstanding(), 3);
    }

    #[test]
    fn a_burst_waits_for_the_batching_window_of_its_oldest_member() {
        let (mut deliveries, mut counters, now) = (Deliveries::default(), Counters::default(), Utc::now());
        let windowed = Timing {
            batch_window: std::time::Duration::from_secs(60),
            ..timing()
        };
        enqueue(&mut deliveries, &mut counters, now, "a");
        assert!(
            deliveries
                .take_due(&mut counters, &windowed, now, 0, |_| true)
                .is_empty()
        );
        enqueue(&mut deliveries, &mut counters, now, "b");
        let batches = deliveries.take_due(&mut counters, &timing(), now, 0, |_| true);
        assert_eq!(batches.iter().map(|b| b.items.len()).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_failed_attempt_is_retried_with_exponential_backoff_and_dropped_after_four_hours() {
        let (mut deliveries, mut counters, start) = (Deliveries::default(), Counters::default(), Utc::now());
        enqueue(&mut deliveries, &mut counters, start, "a");
        let mut now = start;
        let mut retries_at = Vec::new();
        loop {
            let batches = deliveries.take_due(&mut counters, &timing(), now, 0, |_| true);
            let Some(batch) = batches.into_iter().next() else {
                break;
            };
            deliveries.finish(
                &mut counters,
                &timing(),
                now,
                batch,
                &result(Outcome::Rejected, 5),
            );
            match deliveries.pending.first() {
                Some(pending) => {
                    retries_at.push((pending.due - now).num_minutes());
                    now = pending.due;
                }
                None => break,
            }
        }
        // 1+2+4+...+64 = 127 minutes; the last retry is at the 4-hour mark.
        assert_eq!(retries_at, vec![1, 2, 4, 8, 16, 32, 64, 240 - 127]);
        assert_eq!(counters.notifications_dropped_after_retries, 1);
        assert_eq!(deliveries.outstanding(), 0);
    }

    #[test]
    fn notifications_of_a_deleted_subscription_are_not_sent() {
        let (mut deliveries, mut counters, now) = (Deliveries::default(), Counters::default(), Utc::now());
        enqueue(&mut deliveries, &mut counters, now, "gone");
        assert!(
            deliveries
                .take_due(&mut counters, &timing(), now, 0, |_| false)
                .is_empty()
        );
        assert_eq!(counters.notifications_dropped_subscription_gone, 1);
    }

    #[test]
    fn mostly_slow_responses_make_an_endpoint_slow_and_new_notifications_wait_ten_minutes() {
        let (mut deliveries, mut counters, now) = (Deliveries::default(), Counters::default(), Utc::now());
        for round in 0..4 {
            enqueue(&mut deliveries, &mut counters, now, "a");
            let batch = deliveries
                .take_due(&mut counters, &timing(), now, 0, |_| true)
                .remove(0);
            let latency = if round == 0 { 3_500 } else { 10 };
            deliveries.finish(
                &mut counters,
                &timing(),
                now,
                batch,
                &result(Outcome::Delivered, latency),
            );
        }
        let report = deliveries.endpoints(&timing(), now).remove(0);
        assert_eq!(
            (report.state, report.samples, report.slow_samples),
            ("slow", 4, 1)
        );
        enqueue(&mut deliveries, &mut counters, now, "a");
        assert!(
            deliveries
                .take_due(&mut counters, &timing(), now, 0, |_| true)
                .is_empty()
        );
        let later = now + chrono::Duration::minutes(10);
        assert_eq!(
            deliveries
                .take_due(&mut counters, &timing(), later, 0, |_| true)
                .len(),
            1
        );
    }

    #[test]
    fn retries_that_time_out_put_an_endpoint_in_drop_and_new_notifications_are_lost() {
        let (mut deliveries, mut counters, now) = (Deliveries::default(), Counters::default(), Utc::now());
        let health = deliveries.endpoints.entry("https://hook".to_owned()).or_default();
        for _ in 0..4 {
            health.samples.push_back(Sample {
                at: now,
                slow: true,
                very_slow: true,
            });
        }
        enqueue(&mut deliveries, &mut counters, now, "a");
        assert_eq!(counters.notifications_dropped_throttled, 1);
        assert_eq!(deliveries.endpoints(&timing(), now)[0].state, "drop");
        // After the drop period the old samples have left the window: the endpoint is probed again.
        let later = now + chrono::Duration::minutes(11);
        assert_eq!(deliveries.endpoints(&timing(), later)[0].state, "normal");
        enqueue(&mut deliveries, &mut counters, later, "a");
        assert_eq!(deliveries.outstanding(), 1);
    }
}
