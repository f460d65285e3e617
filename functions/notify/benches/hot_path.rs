//! notify's hot path for a 10-notification POST: parse, verify every clientState, build the
//! batch entries (target: at most 50 µs per request), and the same through the whole handler
//! with a queue that accepts instantly.
//!
//! Run: `make bench` (or `cargo bench -p notify --bench hot_path`).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::future::BoxFuture;
use shared::client_state::{DEV_CLIENT_STATE_KEY_HEX, KeyRing, KeyStore};
use shared::clock::SharedClock;
use shared::ids::{DriveKey, TenantId};
use shared::intake::decide;
use shared::queue::{EntryFailure, NotificationQueue, OutgoingMessage, QueueError};

const TENANTS: [&str; 2] = [
    "7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c",
    "0c9b8a7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d",
];

/// Ten notifications across four drives and two tenants, in Graph's real shape.
fn ten_notification_post(ring: &KeyRing) -> Vec<u8> {
    let drives: Vec<DriveKey> = (0..4).map(|i| DriveKey::from_bytes([i as u8 + 1; 16])).collect();
    let items: Vec<String> = (0..10)
        .map(|i| {
            let tenant = TENANTS[i % 2];
            let drive = drives[i % 4];
            let cs = ring.mint(&TenantId::parse(tenant).expect("tenant"), &drive);
            format!(
                r#"{{"subscriptionId":"2d6b1f5a-9c3e-4f7d-8a2b-6e4c1d9f3a{i:02}","clientState":"{}","resource":"drives/b!3xYzExampleDriveId/root/","tenantId":"{tenant}","resourceData":null,"subscriptionExpirationDateTime":"2026-12-20T08:00:00-08:00","changeType":"updated"}}"#,
                cs.expose()
            )
        })
        .collect();
    format!(r#"{{"value":[{}]}}"#, items.join(",")).into_bytes()
}

struct AcceptingQueue;

impl NotificationQueue for AcceptingQueue {
    fn send_batch<'a>(
        &'a self,
        _: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Result<Vec<EntryFailure>, QueueError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn hot_path(c: &mut Criterion) {
    let ring = KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).expect("dev key");
    let body = ten_notification_post(&ring);
    let now = chrono::Utc::now();
    c.bench_function("decide: parse + verify + build entries, 10 notifications", |b| {
        b.iter(|| {
            let d = decide(std::hint::black_box(&body), now, &ring).expect("valid body");
            assert_eq!(d.accepted, 10);
            d
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let clock: SharedClock = shared::clock::system();
    let keys = Arc::new(KeyStore::fixed(
        KeyRing::single(DEV_CLIENT_STATE_KEY_HEX).expect("dev key"),
        clock.clone(),
    ));
    let notify = notify::Notify::new(Arc::new(AcceptingQueue), keys, clock);
    let text = String::from_utf8(body).expect("utf-8");
    c.bench_function(
        "handler: 10-notification POST to 202 (queue accepts instantly)",
        |b| {
            b.iter(|| {
                let request = lambda_http::http::Request::builder()
                    .method("POST")
                    .uri("https://example.execute-api.eu-west-1.amazonaws.com/notifications")
                    .body(lambda_http::Body::Text(text.clone()))
                    .expect("request");
                let response = runtime.block_on(notify.handle(request));
                assert_eq!(response.status(), 202);
            })
        },
    );
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
