//! The `make local` demo: what connect will do for a real user, done by hand against graph-sim,
//! so a newcomer sees the whole notify path work: a simulated user is subscribed (Graph's
//! validation handshake reaches the local notify), a file changes, Graph delivers the
//! notification, notify verifies and enqueues it, and the message is shown as it lands on the
//! notifications queue.
//!
//! Until process-changes exists, the demo is the queue's consumer: it prints and deletes each
//! message. Later issues replace this with the real connect route and the real processor.

#![allow(clippy::print_stdout)]

use std::time::Duration;

use chrono::Utc;
use secrecy::SecretString;
use shared::client_state::KeyStore;
use shared::config::{ClientStateKeys, Env, GraphConfig};
use shared::envelope::Envelope;
use shared::graph::{GraphClient, NewSubscription};
use shared::ids::{DriveKey, TenantId};

/// Runs the demo until aborted. Failures are printed, never fatal to the local stack.
pub async fn run(
    sim: graph_sim::Sim,
    graph_base_url: String,
    env: Env,
    aws: aws_config::SdkConfig,
    queue_url: String,
) {
    if let Err(e) = subscribe_and_change(&sim, &graph_base_url, &env, &aws).await {
        println!("demo: stopped: {e:#}");
        return;
    }
    watch_queue(&aws, &queue_url).await;
}

async fn subscribe_and_change(
    sim: &graph_sim::Sim,
    graph_base_url: &str,
    env: &Env,
    aws: &aws_config::SdkConfig,
) -> anyhow::Result<()> {
    let user = sim.create_user(graph_sim::NewUser {
        display_name: Some("Demo User".into()),
        ..Default::default()
    })?;
    let tenant = TenantId::parse(&user.tenant_id)?;
    let keys = KeyStore::from_config(&ClientStateKeys::from_env(env)?, aws, shared::clock::system()).await?;
    let client_state = keys.ring().mint(&tenant, &DriveKey::random());
    let graph = GraphClient::new(&GraphConfig::from_env(
        &env.clone().with("GRAPH_BASE_URL", graph_base_url),
    )?)?;
    let notification_url = env.required("NOTIFICATION_URL")?;
    let subscription = graph
        .create_subscription(
            &SecretString::from(user.access_token.clone()),
            &NewSubscription {
                resource: "me/drive/root",
                notification_url,
                lifecycle_notification_url: env.get("LIFECYCLE_NOTIFICATION_URL"),
                expiration: Utc::now() + chrono::Duration::days(3),
                client_state: &client_state,
            },
        )
        .await?;
    println!(
        "demo: subscribed drive {} of a simulated user; Graph's validation handshake reached notify; subscription {} expires {}",
        user.drive_id, subscription.id, subscription.expiration_date_time
    );
    let item = sim.create_item(
        &user.drive_id,
        &graph_sim::NewItem {
            parent_id: None,
            name: "hello.txt".into(),
            folder: false,
            size: 12,
        },
    )?;
    println!(
        "demo: created {} in the drive; Graph will notify {notification_url}",
        item.name
    );
    println!(
        "demo: change more with `curl -X POST {}/_sim/drives/{}/items -H 'content-type: application/json' -d '{{\"name\":\"more.txt\"}}'`",
        graph_base_url.trim_end_matches("/v1.0"),
        user.drive_id
    );
    Ok(())
}

async fn watch_queue(aws: &aws_config::SdkConfig, queue_url: &str) {
    let sqs = aws_sdk_sqs::Client::new(aws);
    loop {
        let received = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(5)
            .send()
            .await;
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                println!(
                    "demo: reading the notifications queue failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        for m in messages {
            match Envelope::from_json(m.body().unwrap_or_default()) {
                Ok(e) => println!(
                    "demo: queued {:?} for drive {} (tenant {}): {} notification(s), received {}",
                    e.kind, e.drive_key, e.tenant_id, e.notifications, e.received_at
                ),
                Err(e) => println!("demo: a message that is not an envelope: {e}"),
            }
            if let Some(handle) = m.receipt_handle() {
                let _ = sqs
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await;
            }
        }
    }
}
