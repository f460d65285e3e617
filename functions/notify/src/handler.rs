//! Translates API Gateway (HTTP API, payload v2) requests into notify's decisions and back.
//!
//! 1. `?validationToken=` → 200 `text/plain` with the token decoded by form-urlencoded rules,
//!    before any body parsing (the body is empty). Both routes.
//! 2. A body over 1 MiB → 413; a body that is not a notification collection → 400 (JSON error).
//! 3. Otherwise every notification is judged ([`shared::intake`]), genuine ones are enqueued,
//!    and the answer is 202 only once SQS accepted all of them; if it did not, 503 so Graph
//!    redelivers. Nothing is acknowledged before it is durable.
//!
//! Nothing here logs a clientState, a token or a body, and no error reaches the caller as a panic
//! or a debug dump.

use std::sync::Arc;

use lambda_http::http::{StatusCode, header};
use lambda_http::{Body, Request, Response};
use serde_json::json;
use shared::client_state::KeyStore;
use shared::clock::SharedClock;
use shared::intake::decide_with_refresh;
use shared::notification::MAX_BODY_BYTES;
use shared::queue::{NotificationQueue, send_all};
use shared::telemetry::{Metrics, Unit};

/// The notify handler: the queue, the clientState keys and the clock, built once per cold start.
pub struct Notify {
    queue: Arc<dyn NotificationQueue>,
    keys: Arc<KeyStore>,
    clock: SharedClock,
    metrics: Metrics,
}

/// The query parameter Graph's validation handshake carries (graph-protocol.md §2).
const VALIDATION_TOKEN: &str = "validationToken";

impl Notify {
    pub fn new(queue: Arc<dyn NotificationQueue>, keys: Arc<KeyStore>, clock: SharedClock) -> Self {
        Self {
            queue,
            keys,
            clock,
            metrics: Metrics::new("notify"),
        }
    }

    /// Answers one request. Never fails: every outcome is an HTTP response.
    #[tracing::instrument(name = "notify", skip_all, fields(path = %request.uri().path()))]
    pub async fn handle(&self, request: Request) -> Response<Body> {
        if let Some(token) = validation_token(request.uri().query()) {
            tracing::info!("validation handshake answered");
            return text(StatusCode::OK, token);
        }
        let body: &[u8] = request.body().as_ref();
        if body.len() > MAX_BODY_BYTES {
            tracing::warn!(bytes = body.len(), "notification body too large");
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payloadTooLarge",
                "The body is larger than 1 MiB.",
            );
        }
        let received_at = self.clock.now();
        let decision = match decide_with_refresh(body, received_at, &self.keys).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, bytes = body.len(), "malformed notification body");
                self.metrics.emit(&[("NotificationsMalformed", 1.0, Unit::Count)]);
                return error(StatusCode::BAD_REQUEST, "malformedPayload", &e.to_string());
            }
        };
        let enqueued = if decision.messages.is_empty() {
            Ok(())
        } else {
            send_all(self.queue.as_ref(), &decision.messages).await
        };
        self.metrics.emit(&[
            ("NotificationsAccepted", decision.accepted as f64, Unit::Count),
            ("LifecycleNotifications", decision.lifecycle as f64, Unit::Count),
            (
                "NotificationsRejectedClientState",
                decision.rejected_client_state as f64,
                Unit::Count,
            ),
            (
                "NotificationsRejectedMalformed",
                decision.rejected_malformed as f64,
                Unit::Count,
            ),
            (
                "EnqueueFailures",
                if enqueued.is_err() { 1.0 } else { 0.0 },
                Unit::Count,
            ),
        ]);
        tracing::info!(
            accepted = decision.accepted,
            lifecycle = decision.lifecycle,
            rejected_client_state = decision.rejected_client_state,
            rejected_malformed = decision.rejected_malformed,
            messages = decision.messages.len(),
            "notifications judged"
        );
        match enqueued {
            Ok(()) => empty(StatusCode::ACCEPTED),
            Err(e) => {
                tracing::error!(error = %e, "notifications not durable; asking Graph to redeliver");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queueUnavailable",
                    "The notifications could not be queued; retry later.",
                )
            }
        }
    }
}

/// The decoded `validationToken`, if the query carries one. Decoded with
/// application/x-www-form-urlencoded rules: `+` is a space, `%3a` is `:`.
fn validation_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == VALIDATION_TOKEN)
        .map(|(_, v)| v.into_owned())
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    response(status, Some("text/plain"), Body::Text(body))
}

fn empty(status: StatusCode) -> Response<Body> {
    response(status, None, Body::Empty)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    response(status, Some("application/json"), Body::Text(body))
}

fn response(status: StatusCode, content_type: Option<&str>, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    if let Some(ct) = content_type.and_then(|c| header::HeaderValue::from_str(c).ok()) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validation_token_is_decoded_with_form_rules() {
        let q = "validationToken=Validation%3a+Testing+client+application+reachability+for+subscription+Request-Id%3a+5731e5c5";
        assert_eq!(
            validation_token(Some(q)).unwrap(),
            "Validation: Testing client application reachability for subscription Request-Id: 5731e5c5"
        );
        assert_eq!(validation_token(Some("other=1")), None);
        assert_eq!(validation_token(None), None);
        assert_eq!(
            validation_token(Some("a=1&validationToken=x%2By")).unwrap(),
            "x+y"
        );
    }
}
