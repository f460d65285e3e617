//! Stands in for EventBridge: fires renew on the template's schedule (`rate(N unit)`), or on a
//! period the caller chooses (`RENEW_EVERY_SECONDS` in `make local`), so a test or a person can
//! watch renewals happen. moto never fires schedules.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use std::collections::BTreeMap;

use crate::template::{Template, TemplateError};

/// The schedule event renew is invoked with: `events/renew-schedule.json`'s shape.
pub fn schedule_event(now: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    serde_json::json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/graphfeed-local-renew"],
        "detail": {}
    })
}

/// Parses an EventBridge rate expression: `rate(1 hour)`, `rate(30 minutes)`, `rate(2 days)`.
pub fn parse_rate(expression: &str) -> Option<Duration> {
    let inner = expression.trim().strip_prefix("rate(")?.strip_suffix(')')?;
    let (value, unit) = inner.trim().split_once(' ')?;
    let value: u64 = value.parse().ok().filter(|v| *v > 0)?;
    let seconds = match unit.trim() {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(value * seconds))
}

/// The period of `function`'s `Schedule` event in the template: a literal rate expression, or
/// a `!Ref` to a parameter (given in `parameters`, else its default).
pub fn function_schedule(
    template: &Template,
    function: &str,
    parameters: &BTreeMap<String, String>,
) -> Result<Duration, TemplateError> {
    let events = template
        .function_property(function, "Events")
        .and_then(|e| e.as_mapping())
        .ok_or_else(|| TemplateError::Shape(format!("{function} has no Events")))?;
    for event in events.values() {
        if event.get("Type").and_then(|t| t.as_str()) != Some("Schedule") {
            continue;
        }
        let Some(expression) = event.get("Properties").and_then(|p| p.get("Schedule")) else {
            continue;
        };
        // A `!Ref` first: serde_yaml's `as_str` looks through tags.
        let expression = match crate::template::reference_name(expression) {
            Some(name) => parameters
                .get(name)
                .cloned()
                .or_else(|| template.parameter_defaults().get(name).cloned())
                .ok_or_else(|| TemplateError::Unresolved(name.to_owned()))?,
            None => expression
                .as_str()
                .ok_or_else(|| TemplateError::Unresolved(format!("{function}'s schedule")))?
                .to_owned(),
        };
        return parse_rate(&expression).ok_or_else(|| {
            TemplateError::Shape(format!(
                "{function}'s schedule {expression:?} is not a rate expression the local stack can run"
            ))
        });
    }
    Err(TemplateError::Shape(format!("{function} has no Schedule event")))
}

/// What runs on each tick: gets the invocation's deadline, answers with a summary to log.
pub type Tick = Arc<dyn Fn(Instant) -> futures::future::BoxFuture<'static, serde_json::Value> + Send + Sync>;

/// A running timer.
pub struct TimerHandle {
    stop: watch::Sender<bool>,
    runs: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TimerHandle {
    /// How many runs have finished.
    pub fn runs(&self) -> u64 {
        *self.runs.borrow()
    }

    /// Waits until at least `n` runs have finished, or `timeout` passes.
    pub async fn wait_for_runs(&self, n: u64, timeout: Duration) -> bool {
        let mut runs = self.runs.clone();
        tokio::time::timeout(timeout, runs.wait_for(|r| *r >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn stop(self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// Fires `tick` every `every` (the first after one period, as EventBridge does), one run at a
/// time (renew's reserved concurrency is 1): a run longer than the period delays the next.
pub fn spawn_timer(name: &'static str, every: Duration, timeout: Duration, tick: Tick) -> TimerHandle {
    let (stop, mut stopped) = watch::channel(false);
    let (count, runs) = watch::channel(0u64);
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopped.changed() => return,
            }
            let summary = tick(Instant::now() + timeout).await;
            tracing::info!(function = name, summary = %summary, "scheduled run finished");
            count.send_modify(|n| *n += 1);
        }
    });
    TimerHandle { stop, runs, task }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rate_expressions_parse_and_others_are_refused() {
        assert_eq!(parse_rate("rate(1 hour)"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_rate("rate(30 minutes)"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_rate("rate(2 days)"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_rate("rate(0 hours)"), None);
        assert_eq!(parse_rate("cron(0 * * * ? *)"), None);
        assert_eq!(parse_rate("rate(5 fortnights)"), None);
    }

    #[test]
    fn the_repository_template_schedules_renew_hourly() {
        let template = Template::repository().unwrap();
        assert_eq!(
            function_schedule(&template, "RenewFunction", &BTreeMap::new()).unwrap(),
            Duration::from_secs(3600)
        );
    }

    #[tokio::test]
    async fn a_timer_fires_on_its_period_one_run_at_a_time() {
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = calls.clone();
        let tick: Tick = Arc::new(move |_deadline| {
            let seen = seen.clone();
            Box::pin(async move {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                serde_json::json!({})
            })
        });
        let timer = spawn_timer("test", Duration::from_millis(30), Duration::from_secs(1), tick);
        assert!(timer.wait_for_runs(3, Duration::from_secs(5)).await);
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 3);
        timer.stop();
    }
}
