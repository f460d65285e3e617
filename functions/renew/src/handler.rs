//! Translates a schedule event into one run of `shared::renew`, and its summary into metrics.

use std::time::Instant;

use shared::renew::{Renewer, RunSummary};
use shared::telemetry::Metrics;

/// The handler, built once per cold start.
pub struct Renew {
    renewer: Renewer,
    metrics: Metrics,
}

impl Renew {
    pub fn new(renewer: Renewer) -> Self {
        Self {
            renewer,
            metrics: Metrics::new("renew"),
        }
    }

    pub fn renewer(&self) -> &Renewer {
        &self.renewer
    }

    /// One run. The event (EventBridge's "Scheduled Event", or anything a person invokes it
    /// with) carries nothing renew needs: its content is not read. The answer is the run's
    /// summary, also emitted as metrics.
    pub async fn handle(&self, _event: serde_json::Value, deadline: Instant) -> RunSummary {
        let summary = self.renewer.run(deadline).await;
        let metrics = summary.metrics();
        let values: Vec<(&str, f64, shared::telemetry::Unit)> = metrics
            .iter()
            .map(|(name, value, unit)| (name.as_str(), *value, *unit))
            .collect();
        self.metrics.emit(&values);
        summary
    }
}
