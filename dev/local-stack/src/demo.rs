//! The `make local` demo: a simulated user signs in (graph-sim mints their access token for
//! graphfeed's API) and connects through the real `POST /connect` route: on-behalf-of exchange,
//! refresh token into the KMS vault, subscription through Graph's validation handshake with the
//! local notify, baseline queued. Then a file changes, Graph notifies, notify verifies and
//! enqueues, and the messages are shown as they land on the notifications queue.
//!
//! Until process-changes exists, the demo is the queue's consumer: it prints and deletes each
//! message. Later issues replace this with the real processor.

#![allow(clippy::print_stdout)]

use std::time::Duration;

/// Runs the demo until aborted. Failures are printed, never fatal to the local stack.
pub async fn run(
    sim: graph_sim::Sim,
    api_url: String,
    control_url: String,
    aws: aws_config::SdkConfig,
    queue_url: String,
) {
    if let Err(e) = connect_and_change(&sim, &api_url, &control_url).await {
        println!("demo: stopped: {e:#}");
        return;
    }
    watch_queue(&aws, &queue_url).await;
}

async fn connect_and_change(sim: &graph_sim::Sim, api_url: &str, control_url: &str) -> anyhow::Result<()> {
    let user = sim.create_user(graph_sim::NewUser {
        display_name: Some("Demo User".into()),
        ..Default::default()
    })?;
    let token = sim
        .mint_api_token(&graph_sim::ApiToken::new(user.user_id.clone()))?
        .token;
    let response = reqwest::Client::new()
        .post(format!("{api_url}/connect"))
        .bearer_auth(&token)
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("POST /connect answered {status}: {body}");
    }
    println!(
        "demo: connected a simulated user through POST /connect: drive {}, subscription {} (expires {}), {} walk queued",
        body["drive_id"].as_str().unwrap_or("?"),
        body["subscription_id"].as_str().unwrap_or("?"),
        body["expires_at"].as_str().unwrap_or("?"),
        body["walk"].as_str().unwrap_or("?"),
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
        "demo: created {} in the drive; Graph will notify graphfeed",
        item.name
    );
    println!(
        "demo: change more with `curl -X POST {control_url}/drives/{}/items -H 'content-type: application/json' -d '{{\"name\":\"more.txt\"}}'`",
        user.drive_id
    );
    println!(
        "demo: a token for this user: `curl -s -X POST {control_url}/users/{}/api-token`, then `curl -H \"Authorization: Bearer $TOKEN\" {api_url}/connect`",
        user.user_id
    );
    Ok(())
}

use shared::envelope::Envelope;

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
