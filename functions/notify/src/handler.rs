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

/// The most time notify spends making notifications durable before it answers 503: Graph's
/// deadline is 3 s (graph-protocol.md §3.3), and API Gateway and a cold start take their share.
pub const ENQUEUE_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

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
            match tokio::time::timeout(ENQUEUE_BUDGET, send_all(self.queue.as_ref(), &decision.messages))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(shared::queue::QueueError::Call(format!(
                    "no answer from the queue within {ENQUEUE_BUDGET:?}"
                ))),
            }
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
        if decision.unverifiable > 0 && enqueued.is_ok() {
            // Possibly genuine, under a key rotated in after this container read the secret:
            // Graph redelivers, by then the container may refetch (at most once a minute).
            tracing::warn!(
                unverifiable = decision.unverifiable,
                "notifications under an unknown key id; asking Graph to redeliver"
            );
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "keyRefreshPending",
                "Some notifications could not be verified yet; retry later.",
            );
        }
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
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use shared::client_state::{DEV_CLIENT_STATE_KEY_HEX, KeyRing};
    use shared::clock::OffsetClock;
    use shared::envelope::{Envelope, Kind};
    use shared::ids::DriveKey;
    use shared::queue::{EntryFailure, OutgoingMessage, QueueError};

    use super::*;

    const VALIDATION: &str = include_str!("../../../events/notify-validation.json");
    const NOTIFICATIONS: &str = include_str!("../../../events/notify-notifications.json");
    const LIFECYCLE: &str = include_str!("../../../events/notify-lifecycle.json");

    /// Records what it is sent; refuses everything while `failing` is set.
    #[derive(Default)]
    struct RecordingQueue {
        sent: Mutex<Vec<OutgoingMessage>>,
        failing: std::sync::atomic::AtomicBool,
    }

    impl NotificationQueue for RecordingQueue {
        fn send_batch<'a>(
            &'a self,
            batch: &'a [OutgoingMessage],
        ) -> BoxFuture<'a, Result<Vec<EntryFailure>, QueueError>> {
            let failing = self.failing.load(std::sync::atomic::Ordering::SeqCst);
            if !failing {
                self.sent.lock().unwrap().extend_from_slice(batch);
            }
            Box::pin(async move {
                if failing {
                    Err(QueueError::Call("SQS is down".into()))
                } else {
                    Ok(vec![])
                }
            })
        }
    }

    fn notify(queue: Arc<RecordingQueue>) -> Notify {
        let clock: SharedClock = Arc::new(OffsetClock::new());
        let keys = KeyStore::fixed(KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).unwrap(), clock.clone());
        Notify::new(queue, Arc::new(keys), clock)
    }

    fn event(json: &str) -> Request {
        lambda_http::request::from_str(json).unwrap()
    }

    fn with_body(template: &str, body: &str) -> Request {
        let mut v: serde_json::Value = serde_json::from_str(template).unwrap();
        v["body"] = body.into();
        event(&v.to_string())
    }

    fn body_text(r: &Response<Body>) -> String {
        String::from_utf8(r.body().as_ref().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_validation_request_is_echoed_decoded_as_plain_text_before_any_parsing() {
        let queue = Arc::new(RecordingQueue::default());
        let r = notify(queue.clone()).handle(event(VALIDATION)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(
            body_text(&r),
            "Validation: Testing client application reachability for subscription Request-Id: 5731e5c5-6b0d-4b9c-8a44-2f1e0d9c8b7a"
        );
        assert!(queue.sent.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_lifecycle_route_answers_the_validation_handshake_too() {
        let v = VALIDATION.replace("\"/notifications\"", "\"/lifecycle\"");
        let r = notify(Arc::default()).handle(event(&v)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(body_text(&r).starts_with("Validation: Testing"));
    }

    #[tokio::test]
    async fn the_sample_batch_becomes_one_message_per_drive_and_the_forged_one_is_dropped() {
        let queue = Arc::new(RecordingQueue::default());
        let r = notify(queue.clone()).handle(event(NOTIFICATIONS)).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let sent = queue.sent.lock().unwrap();
        assert_eq!(
            sent.len(),
            2,
            "two genuine drives; the shared 'secretClientValue' one is dropped"
        );
        let envelopes: Vec<Envelope> = sent
            .iter()
            .map(|m| Envelope::from_json(&m.body).unwrap())
            .collect();
        let a = DriveKey::parse("Xx4tPEtaaXiHlqW0w9Lh8A").unwrap();
        let b = DriveKey::parse("ABEiM0RVZneImaq7zN3u_w").unwrap();
        let ea = envelopes.iter().find(|e| e.drive_key == a).unwrap();
        let eb = envelopes.iter().find(|e| e.drive_key == b).unwrap();
        assert_eq!((ea.kind, ea.notifications), (Kind::Notification, 2));
        assert_eq!(eb.tenant_id.as_str(), "0c9b8a7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d");
        assert!(
            eb.subscriptions[0].expires_at.is_some(),
            "the legacy expirationDateTime name is read"
        );
        for m in sent.iter() {
            assert_eq!(Envelope::from_json(&m.body).unwrap().drive_key, m.group);
        }
    }

    #[tokio::test]
    async fn the_lifecycle_sample_is_enqueued_as_its_own_kind() {
        let queue = Arc::new(RecordingQueue::default());
        let r = notify(queue.clone()).handle(event(LIFECYCLE)).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let sent = queue.sent.lock().unwrap();
        let e = Envelope::from_json(&sent[0].body).unwrap();
        assert_eq!(e.kind, Kind::Lifecycle);
        assert_eq!(sent.len(), 1);
    }

    #[tokio::test]
    async fn malformed_json_gets_400_with_a_json_error_body() {
        let r = notify(Arc::default())
            .handle(with_body(NOTIFICATIONS, "{\"value\": ["))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_str(&body_text(&r)).unwrap();
        assert_eq!(body["error"]["code"], "malformedPayload");
    }

    #[tokio::test]
    async fn a_body_over_one_mebibyte_gets_413() {
        let big = format!("{{\"value\":[],\"pad\":\"{}\"}}", "x".repeat(MAX_BODY_BYTES));
        let r = notify(Arc::default())
            .handle(with_body(NOTIFICATIONS, &big))
            .await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn an_empty_collection_gets_202_and_enqueues_nothing() {
        let queue = Arc::new(RecordingQueue::default());
        let r = notify(queue.clone())
            .handle(with_body(NOTIFICATIONS, r#"{"value":[]}"#))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert!(queue.sent.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn when_the_queue_fails_the_answer_is_503_so_graph_redelivers() {
        let queue = Arc::new(RecordingQueue::default());
        queue.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = notify(queue.clone()).handle(event(NOTIFICATIONS)).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            !body_text(&r).contains("SQS is down"),
            "internal errors stay in the logs"
        );
    }

    /// Accepts every entry but the first of each call (on the first try and on the retry).
    struct RefusesFirstEntry;

    impl NotificationQueue for RefusesFirstEntry {
        fn send_batch<'a>(
            &'a self,
            _: &'a [OutgoingMessage],
        ) -> BoxFuture<'a, Result<Vec<EntryFailure>, QueueError>> {
            Box::pin(async {
                Ok(vec![EntryFailure {
                    index: 0,
                    code: "InternalError".into(),
                    sender_fault: false,
                }])
            })
        }
    }

    #[tokio::test]
    async fn when_sqs_accepts_only_part_of_a_batch_the_answer_is_503() {
        let clock: SharedClock = Arc::new(OffsetClock::new());
        let keys = KeyStore::fixed(KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).unwrap(), clock.clone());
        let notify = Notify::new(Arc::new(RefusesFirstEntry), Arc::new(keys), clock);
        let r = notify.handle(event(NOTIFICATIONS)).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_notification_under_a_key_not_yet_fetched_gets_503_so_graph_redelivers() {
        let clock = OffsetClock::new();
        let source = Arc::new(shared::secrets::StaticSecret::new(format!(
            r#"{{"active":"k1","k1":"{}"}}"#,
            "1".repeat(64)
        )));
        let keys = KeyStore::load(source, Arc::new(clock.clone())).await.unwrap();
        let queue = Arc::new(RecordingQueue::default());
        let notify = Notify::new(queue.clone(), Arc::new(keys), Arc::new(clock));
        // The samples are signed under key id "local", which this container has not fetched, and
        // it fetched the secret less than a minute ago.
        let r = notify.handle(event(NOTIFICATIONS)).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(queue.sent.lock().unwrap().is_empty());
    }

    /// A log sink for one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn no_client_state_token_or_body_reaches_the_logs() {
        let sink = Captured::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .json()
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let queue = Arc::new(RecordingQueue::default());
        let notify = notify(queue.clone());
        for sample in [VALIDATION, NOTIFICATIONS, LIFECYCLE] {
            notify.handle(event(sample)).await;
        }
        notify
            .handle(with_body(NOTIFICATIONS, r#"{"value":"v1.local.SECRET"}"#))
            .await;
        queue.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        notify.handle(event(NOTIFICATIONS)).await;

        let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(logs.contains("notifications judged"), "the capture works: {logs}");
        assert!(!logs.contains("v1.local."), "a clientState was logged");
        assert!(!logs.contains("secretClientValue"), "a clientState was logged");
        assert!(
            !logs.contains("Testing client application"),
            "the validation token was logged"
        );
        assert!(!logs.contains("SECRET"), "a body fragment was logged");
        assert!(!logs.contains("b!3xYz"), "a resource from a body was logged");
    }

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
