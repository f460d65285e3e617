//! The `make local` demo: a simulated user signs in (graph-sim mints their access token for
//! graphfeed's API) and connects through the real `POST /connect` route: on-behalf-of exchange,
//! refresh token into the KMS vault, subscription through Graph's validation handshake with the
//! local notify, baseline queued. process-changes (fed by the local SQS event-source emulator)
//! walks the drive. Then the demo changes files (create, rename, edit, delete) and prints each
//! change event as process-changes logs it.
//!
//! A `graphfeed login` (the client's device-code sign-in) is approved as the demo user, so a
//! person can upload files as that user and watch the events arrive.
//!
//! Events are read through `GET /changes` (served from the drive's change log), as the client
//! reads them, not from the changes queue, so the queue is left whole for a downstream consumer
//! you run yourself.

#![allow(clippy::print_stdout)]

use std::time::Duration;

use shared::changes::ChangeEvent;

/// One change the demo makes to the drive.
type Step = Box<dyn Fn(&graph_sim::Sim, &str) -> Result<(), graph_sim::SimError> + Send>;

/// Runs the demo until aborted. Failures are printed, never fatal to the local stack.
pub async fn run(sim: graph_sim::Sim, api_url: String, control_url: String) {
    let (user, token) = match connect(&sim, &api_url, &control_url).await {
        Ok(c) => c,
        Err(e) => {
            println!("demo: stopped: {e:#}");
            return;
        }
    };
    tokio::spawn(approve_client_sign_ins(sim.clone(), user.user_id.clone()));
    let mut watcher = ChangesReader {
        http: reqwest::Client::new(),
        api_url: api_url.clone(),
        sim: sim.clone(),
        user_id: user.user_id.clone(),
        token,
        seen: 0,
    };
    // The baseline first, then one change of each kind, each shown as its event arrives.
    watcher.wait_for(1).await;
    let steps: [(&str, Step); 4] = [
        (
            "create hello.txt",
            Box::new(|sim, drive| sim.create_item(drive, &new_file("hello.txt")).map(|_| ())),
        ),
        (
            "rename it to hello-world.txt",
            Box::new(|sim, drive| {
                let id = find(sim, drive, "hello.txt")?;
                sim.update_item(
                    drive,
                    &id,
                    &graph_sim::ItemUpdate {
                        name: Some("hello-world.txt".into()),
                        parent_id: None,
                    },
                )
                .map(|_| ())
            }),
        ),
        (
            "edit its content",
            Box::new(|sim, drive| {
                let id = find(sim, drive, "hello-world.txt")?;
                sim.modify_item(drive, &id, Some(42)).map(|_| ())
            }),
        ),
        (
            "delete it",
            Box::new(|sim, drive| {
                let id = find(sim, drive, "hello-world.txt")?;
                sim.delete_item(drive, &id).map(|_| ())
            }),
        ),
    ];
    for (what, step) in steps {
        println!("demo: {what}");
        if let Err(e) = step(&sim, &user.drive_id) {
            println!("demo: could not {what}: {e}");
            return;
        }
        let target = watcher.seen + 1;
        watcher.wait_for(target).await;
    }
    println!(
        "demo: change more with `curl -X POST {control_url}/drives/{}/items -H 'content-type: application/json' -d '{{\"name\":\"more.txt\"}}'`; events keep appearing here",
        user.drive_id
    );
    println!(
        "demo: or as this user with the client, in another terminal: `cargo run -q -p graphfeed-client -- login` (approved here as the demo user), then `… -- upload <file>` and `… -- changes --follow`"
    );
    watcher.wait_for(u64::MAX).await;
}

/// Signs in the client as the demo user: graph-sim has no sign-in page, so each pending device
/// code (`graphfeed login`) is approved for the demo user as it appears.
async fn approve_client_sign_ins(sim: graph_sim::Sim, user_id: String) {
    let mut tried = std::collections::HashSet::new();
    loop {
        for code in sim.device_codes() {
            if code.status == graph_sim::DeviceCodeStatus::Pending
                && !code.expired
                && tried.insert(code.user_code.clone())
            {
                match sim.approve_device_code(&code.user_code, &user_id) {
                    Ok(_) => println!(
                        "demo: approved sign-in code {} (graphfeed login) as the demo user",
                        code.user_code
                    ),
                    Err(e) => println!("demo: could not approve sign-in code {}: {e}", code.user_code),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn new_file(name: &str) -> graph_sim::NewItem {
    graph_sim::NewItem {
        parent_id: None,
        name: name.into(),
        folder: false,
        size: 12,
    }
}

fn find(sim: &graph_sim::Sim, drive: &str, name: &str) -> Result<String, graph_sim::SimError> {
    sim.journal(drive)?
        .iter()
        .rev()
        .filter_map(|entry| sim.item(drive, &entry.item_id).ok())
        .find(|item| item.name == name && !item.deleted)
        .map(|item| item.id)
        .ok_or_else(|| graph_sim::SimError::NotFound(format!("{name} is not in the drive")))
}

async fn connect(
    sim: &graph_sim::Sim,
    api_url: &str,
    control_url: &str,
) -> anyhow::Result<(graph_sim::CreatedUser, String)> {
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
    println!(
        "demo: a token for this user: `curl -s -X POST {control_url}/users/{}/api-token`, then `curl -H \"Authorization: Bearer $TOKEN\" {api_url}/connect`",
        user.user_id
    );
    Ok((user, token))
}

/// Prints the demo user's change events as they appear, read through `GET /changes` as the
/// client reads them.
struct ChangesReader {
    http: reqwest::Client,
    api_url: String,
    sim: graph_sim::Sim,
    user_id: String,
    /// The demo user's API token, minted again when the API refuses it (it lasts an hour).
    token: String,
    seen: u64,
}

impl ChangesReader {
    /// Prints new entries until the log reaches `sequence` (gives up on a step after 30 s).
    async fn wait_for(&mut self, sequence: u64) {
        let mut idle = 0;
        while self.seen < sequence {
            match self.poll().await {
                Ok(0) => {
                    idle += 1;
                    if sequence != u64::MAX && idle > 60 {
                        println!("demo: no change event for 30 s; is process-changes running?");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(_) => idle = 0,
                Err(e) => {
                    println!("demo: reading GET /changes failed: {e:#}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    async fn poll(&mut self) -> anyhow::Result<usize> {
        let response = self
            .http
            .get(format!("{}/changes", self.api_url))
            .query(&[("after", self.seen)])
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            self.token = self
                .sim
                .mint_api_token(&graph_sim::ApiToken::new(self.user_id.clone()))?
                .token;
            return Ok(0);
        }
        let page: serde_json::Value = response.json().await?;
        if !status.is_success() {
            anyhow::bail!("GET /changes answered {status}: {page}");
        }
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            match serde_json::from_value::<ChangeEvent>(event.clone()) {
                Ok(e) => println!(
                    "demo: change event #{}: {}{} {}",
                    e.sequence,
                    e.change.as_str(),
                    e.update
                        .map(|u| format!(" ({u:?})").to_lowercase())
                        .unwrap_or_default(),
                    match (&e.previous_path, &e.path) {
                        (Some(before), Some(after)) => format!("{before} -> {after}"),
                        (None, Some(path)) => path.clone(),
                        _ => String::new(),
                    }
                ),
                Err(e) => println!("demo: an event the demo cannot read: {e}"),
            }
        }
        self.seen = page["next"].as_u64().unwrap_or(self.seen);
        Ok(events.len())
    }
}
