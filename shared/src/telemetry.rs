//! Logs and metrics.
//!
//! Logs are `tracing` events: JSON on Lambda (or when `LOG_FORMAT=json`), compact text locally,
//! filtered by `RUST_LOG` (default `info`). They carry fields (drive key, subscription id,
//! counts), never a token, a clientState or a notification body.
//!
//! Metrics are CloudWatch embedded metric format (EMF) lines on stdout: CloudWatch Logs turns
//! them into metrics with no API call on the hot path.

use std::io::Write as _;

use serde_json::{Map, Value, json};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber once. Safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").map(|v| v == "json").unwrap_or(false)
        || std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_ansi(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

/// A metric's unit, as CloudWatch names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Seconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
        }
    }
}

/// Emits metrics for one function, as EMF.
#[derive(Debug, Clone)]
pub struct Metrics {
    namespace: String,
    function: String,
    /// On Lambda the EMF line goes to stdout for CloudWatch; elsewhere it is a debug log line,
    /// so local output stays readable.
    to_stdout: bool,
}

impl Metrics {
    pub const NAMESPACE: &'static str = "graphfeed";

    pub fn new(function: impl Into<String>) -> Self {
        Self {
            namespace: Self::NAMESPACE.into(),
            function: function.into(),
            to_stdout: std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some(),
        }
    }

    /// One EMF document holding `values`, dimensioned by function.
    pub fn render(&self, timestamp_ms: i64, values: &[(&str, f64, Unit)]) -> String {
        let definitions: Vec<Value> = values
            .iter()
            .map(|(n, _, u)| json!({"Name": n, "Unit": u.as_str()}))
            .collect();
        let mut doc = Map::new();
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["Function"]],
                    "Metrics": definitions,
                }]
            }),
        );
        doc.insert("Function".into(), Value::String(self.function.clone()));
        for (name, value, _) in values {
            doc.insert((*name).into(), json!(value));
        }
        Value::Object(doc).to_string()
    }

    /// Writes the EMF line to stdout (where the Lambda runtime ships it to CloudWatch Logs).
    /// Metrics with nothing to say (all zero) are still written, so dashboards see the zeros.
    pub fn emit(&self, values: &[(&str, f64, Unit)]) {
        let line = self.render(chrono::Utc::now().timestamp_millis(), values);
        if self.to_stdout {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        } else {
            tracing::debug!(target: "metrics", emf = %line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_cloudwatch_embedded_metric_format() {
        let m = Metrics::new("notify");
        let line = m.render(1_700_000_000_000, &[("NotificationsRejected", 2.0, Unit::Count)]);
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], "graphfeed");
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "NotificationsRejected"
        );
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "Function"
        );
        assert_eq!(doc["NotificationsRejected"], 2.0);
        assert_eq!(doc["Function"], "notify");
    }
}
