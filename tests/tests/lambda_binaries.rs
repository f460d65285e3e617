//! The four function binaries SAM deploys, not just their handlers: run under `cargo lambda watch`
//! (the Lambda runtime API emulator, which builds and starts `notify`, `connect`,
//! `process-changes` and `renew` through their real `main`s) and invoked with
//! `cargo lambda invoke --data-file events/...`, against moto and graph-sim.
//!
//! graph-sim listens on 127.0.0.1:3001, as under `make local`: the connect samples in `events/`
//! carry a token issued there. Graph calls notify through cargo-lambda's function-URL emulation,
//! so the subscription's validation handshake and the change notifications reach the notify
//! binary. The notifications queue is drained by the test and handed to the process-changes
//! binary as Lambda's SQS event source would, and the change events are read from the changes
//! queue as a downstream consumer would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use graphfeed_tests::{
    REGION, aws, dev_ring_json, free_port, init_logs, moto_endpoint, read_changes, unique_stack,
};
use local_stack::bootstrap::{Options, bootstrap};
use local_stack::template::Template;
use serde_json::{Value, json};
use shared::changes::Change;
use shared::config::Env;

const SIM_PORT: u16 = 3001;
const FUNCTIONS: [(&str, &str); 4] = [
    ("notify", "NotifyFunction"),
    ("connect", "ConnectFunction"),
    ("process-changes", "ProcessChangesFunction"),
    ("renew", "RenewFunction"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo lambda watch` and the functions it started, stopped (the whole process group) on drop.
struct Watch {
    child: Child,
    port: u16,
}

impl Watch {
    fn start(env_file: &Path, port: u16) -> Self {
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("graphfeed-watch-{port}.log"))).unwrap();
        let child = Command::new(root().join(".venv/bin/cargo-lambda"))
            .args([
                "lambda",
                "watch",
                "--ignore-changes",
                "--quiet",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(port.to_string())
            .args(["--timeout", "300", "--env-file"])
            .arg(env_file)
            .current_dir(root())
            // cargo-lambda finds its tools through the venv first, as `make` arranges.
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    root().join(".venv/bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("cargo lambda watch (run `make venv`)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
            assert!(
                Instant::now() < deadline,
                "cargo lambda watch does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }

    /// `cargo lambda invoke <function> --data-file <file>` (or `--data-ascii`): the function's
    /// answer as JSON.
    fn invoke(&self, function: &str, data: Data<'_>) -> Value {
        let mut command = Command::new(root().join(".venv/bin/cargo-lambda"));
        command
            .args(["lambda", "invoke", "-A", "127.0.0.1", "-P"])
            .arg(self.port.to_string())
            .arg(function)
            .current_dir(root())
            .stdin(Stdio::null());
        match data {
            Data::File(file) => command.args(["--data-file", file]),
            Data::Json(json) => command.args(["--data-ascii", &json.to_string()]),
        };
        let out = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo lambda invoke {function} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{function} answered {stdout}: {e}"))
    }

    fn function_url(&self, function: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}/lambda-url/{function}{path}", self.port)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // cargo-lambda stops the functions it started (each in its own session) on SIGINT, as
        // on Ctrl-C; SIGTERM alone leaves it waiting. Whatever is left after 10 s is killed.
        let pid = self.child.id().to_string();
        // The shell's own `kill`: a minimal machine may have no kill executable.
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -INT {pid}")])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -KILL -{pid}")])
            .status();
        let _ = self.child.wait();
    }
}

enum Data<'a> {
    File(&'a str),
    Json(Value),
}

/// An API Gateway v2 answer's status and body.
fn http(answer: &Value) -> (u64, String) {
    (
        answer["statusCode"].as_u64().unwrap_or(0),
        answer["body"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Messages on `queue` now (received with their attributes, then deleted, as Lambda's event
/// source deletes what the function did not report failed) as an SQS event shaped like
/// `events/process-changes-sqs.json`.
async fn sqs_event(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    want: usize,
    timeout: Duration,
) -> (Value, Vec<String>) {
    let sample: Value = serde_json::from_str(include_str!("../../events/process-changes-sqs.json")).unwrap();
    let template = &sample["Records"][0];
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    let mut handles = Vec::new();
    while records.len() < want && Instant::now() < deadline {
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        for m in got.messages.unwrap_or_default() {
            let mut record = template.clone();
            record["messageId"] = m.message_id().unwrap().into();
            record["receiptHandle"] = m.receipt_handle().unwrap().into();
            record["body"] = m.body().unwrap().into();
            let attributes: BTreeMap<String, String> = m
                .attributes()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect();
            record["attributes"] = json!(attributes);
            handles.push(m.receipt_handle().unwrap().to_owned());
            records.push(record);
        }
    }
    (json!({ "Records": records }), handles)
}

async fn delete(sqs: &aws_sdk_sqs::Client, queue: &str, handles: &[String]) {
    for h in handles {
        sqs.delete_message()
            .queue_url(queue)
            .receipt_handle(h)
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_lambda_binaries_under_cargo_lambda_answer_the_events_samples_and_carry_a_change_end_to_end()
{
    init_logs();
    // graph-sim where the samples' token was issued.
    let sim = graph_sim::start(
        graph_sim::SimConfig {
            allow_http_loopback: true,
            ..Default::default()
        },
        SocketAddr::from(([127, 0, 0, 1], SIM_PORT)),
    )
    .await
    .unwrap_or_else(|e| {
        panic!("graph-sim cannot listen on 127.0.0.1:{SIM_PORT} (is `make local` running?): {e}")
    });
    let sample_user = local_stack::create_sample_user(&sim.sim()).unwrap();

    // The template's resources in moto, and the environment the template gives each function.
    let template = Template::repository().unwrap();
    let aws = aws().await;
    let stack = bootstrap(
        &template,
        &aws,
        &Options {
            stack: unique_stack(),
            region: REGION.into(),
            secret_values: BTreeMap::from([("ClientStateKeysSecret".to_owned(), dev_ring_json())]),
            parameters: graphfeed_tests::local_parameters(),
        },
    )
    .await
    .unwrap();
    // The env file names the function-URL port, so the port is chosen first.
    let port = free_port();
    let env_dir = std::env::temp_dir().join(unique_stack());
    std::fs::create_dir_all(&env_dir).unwrap();
    let env_file = env_dir.join("functions.env");
    let overrides = Env::from_pairs([
        ("GRAPH_BASE_URL", sim.graph_base_url().as_str()),
        ("ENTRA_AUTHORITY_HOST", sim.authority_host().as_str()),
        (
            "NOTIFICATION_URL",
            &format!("http://127.0.0.1:{port}/lambda-url/notify/notifications"),
        ),
        (
            "LIFECYCLE_NOTIFICATION_URL",
            &format!("http://127.0.0.1:{port}/lambda-url/notify/lifecycle"),
        ),
        // Every subscription is due, so the schedule sample renews the one the test made.
        ("RENEW_WINDOW_MINUTES", "43200"),
        ("AWS_ENDPOINT_URL", moto_endpoint()),
        ("AWS_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("RUST_LOG", "info"),
    ]);
    let mut union: BTreeMap<String, String> = BTreeMap::new();
    for (_, id) in FUNCTIONS {
        for (k, v) in local_stack::function_env(&stack, &template, id, &overrides)
            .unwrap()
            .iter()
        {
            let previous = union.insert(k.to_owned(), v.to_owned());
            assert!(
                previous.as_deref().is_none_or(|p| p == v),
                "{k} differs between functions: one env file cannot serve them all"
            );
        }
    }
    let lines: Vec<String> = union.iter().map(|(k, v)| format!("{k}={v}")).collect();
    std::fs::write(&env_file, lines.join("\n") + "\n").unwrap();
    let watch = Watch::start(&env_file, port);
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let notifications = stack.reference("NotificationsQueue").unwrap().to_owned();
    let changes_queue = stack.reference("ChangesQueue").unwrap().to_owned();

    // notify: the validation echo, and a batch of notifications (the forged one dropped).
    let (status, body) = http(&watch.invoke("notify", Data::File("events/notify-validation.json")));
    assert_eq!(status, 200);
    assert!(body.starts_with("Validation: "), "{body}");
    let (status, _) = http(&watch.invoke("notify", Data::File("events/notify-notifications.json")));
    assert_eq!(status, 202);
    // Wait for more than the two genuine ones, so a forged third would be seen.
    let (queued, handles) = sqs_event(&sqs, &notifications, 3, Duration::from_secs(5)).await;
    assert_eq!(
        queued["Records"].as_array().unwrap().len(),
        2,
        "the forged clientState is dropped"
    );

    // process-changes: the sample batch names drives nobody connected: acknowledged, no failure.
    let answer = watch.invoke("process-changes", Data::File("events/process-changes-sqs.json"));
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    // The same for what notify just queued, handed over as Lambda's event source would.
    let answer = watch.invoke("process-changes", Data::Json(queued));
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    delete(&sqs, &notifications, &handles).await;

    // connect: the sample user connects; Graph's validation handshake reached the notify binary.
    let (status, body) = http(&watch.invoke("connect", Data::File("events/connect-post.json")));
    assert_eq!(status, 200, "{body}");
    let connected: Value = serde_json::from_str(&body).unwrap();
    let subscriptions: Vec<_> = sim
        .sim()
        .subscriptions()
        .into_iter()
        .filter(|s| s.creator_id == sample_user.user_id)
        .collect();
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(
        subscriptions[0].id,
        connected["subscription_id"].as_str().unwrap()
    );
    assert_eq!(
        subscriptions[0].notification_url,
        watch.function_url("notify", "/notifications")
    );

    // The baseline walk connect queued, by the process-changes binary.
    let (baseline, handles) = sqs_event(&sqs, &notifications, 1, Duration::from_secs(10)).await;
    let answer = watch.invoke("process-changes", Data::Json(baseline));
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    delete(&sqs, &notifications, &handles).await;
    let events = read_changes(&aws, &changes_queue, Duration::from_secs(20), |e| !e.is_empty()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].change, Change::BaselineComplete);

    // A file arrives: Graph notifies the notify binary, which queues; process-changes walks.
    let item = sim
        .sim()
        .create_item(
            &sample_user.drive_id,
            &graph_sim::NewItem {
                parent_id: None,
                name: "from-the-binaries.txt".into(),
                folder: false,
                size: 42,
            },
        )
        .unwrap();
    let (notified, handles) = sqs_event(&sqs, &notifications, 1, Duration::from_secs(20)).await;
    assert!(
        !notified["Records"].as_array().unwrap().is_empty(),
        "Graph's notification never reached the queue"
    );
    let answer = watch.invoke("process-changes", Data::Json(notified));
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    delete(&sqs, &notifications, &handles).await;
    let events = read_changes(&aws, &changes_queue, Duration::from_secs(20), |e| !e.is_empty()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].change, Change::Created);
    assert_eq!(events[0].item_id.as_deref(), Some(item.id.as_str()));
    assert_eq!(events[0].path.as_deref(), Some("/from-the-binaries.txt"));
    assert_eq!(events[0].sequence, 2);

    // connect's other routes: the change log, and the status.
    let (status, body) = http(&watch.invoke("connect", Data::File("events/changes-get.json")));
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let sequences: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2]);
    let (status, body) = http(&watch.invoke("connect", Data::File("events/connect-get.json")));
    assert_eq!(status, 200, "{body}");
    let status_body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status_body["state"], "active");

    // renew: the schedule sample renews the subscription (every one is due in this window).
    let patches = || {
        sim.sim()
            .counters()
            .graph_calls_of("PATCH /v1.0/subscriptions/{id}")
    };
    let patches_before = patches();
    let summary = watch.invoke("renew", Data::File("events/renew-schedule.json"));
    assert_eq!(summary["renewed"], 1, "{summary}");
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(patches(), patches_before + 1);

    // And disconnect: the subscription is gone from Graph.
    let (status, body) = http(&watch.invoke("connect", Data::File("events/connect-delete.json")));
    assert_eq!(status, 204, "{body}");
    assert!(
        sim.sim()
            .subscriptions()
            .iter()
            .all(|s| s.creator_id != sample_user.user_id),
        "the subscription outlived the disconnect"
    );
    std::fs::remove_dir_all(env_dir).ok();
}
