//! The `graphfeed` binary end to end, as a person runs it: against a [`TestStack`] (moto,
//! graph-sim as Entra and Graph, graphfeed's real handlers on a local port, the walker running),
//! with its configuration directory in a fresh temporary directory per test and its settings in
//! the environment. The simulated user approves device codes through graph-sim's control API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use graph_sim::{CreatedUser, DeviceCodeStatus, Latency, NewItem, NewUser};
use graphfeed_tests::{StackOptions, TestStack};
use serde_json::Value;
use sha2::Digest as _;
use shared::changes::{Change, ItemKind};

const MIB: usize = 1024 * 1024;
/// Every environment variable the binary reads; the tests set their own.
const SETTINGS_ENV: [&str; 7] = [
    "GRAPHFEED_API_URL",
    "ENTRA_AUTHORITY_HOST",
    "GRAPHFEED_TENANT",
    "GRAPHFEED_CLIENT_ID",
    "GRAPHFEED_API_SCOPE",
    "GRAPH_BASE_URL",
    "GRAPHFEED_CONFIG_DIR",
];

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "graphfeed-cli-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary, pointed at one stack, with its own configuration directory.
struct Graphfeed {
    dir: TempDir,
    env: Vec<(String, String)>,
}

impl Graphfeed {
    fn at(stack: &TestStack) -> Self {
        let dir = TempDir::new();
        let env = vec![
            ("GRAPHFEED_API_URL".to_owned(), stack.url("")),
            ("ENTRA_AUTHORITY_HOST".to_owned(), stack.sim.authority_host()),
            ("GRAPH_BASE_URL".to_owned(), stack.sim.graph_base_url()),
            ("GRAPHFEED_CONFIG_DIR".to_owned(), dir.0.display().to_string()),
        ];
        Self { dir, env }
    }

    /// With no stack: for help, usage and sign-in errors.
    fn offline() -> Self {
        let dir = TempDir::new();
        let env = vec![("GRAPHFEED_CONFIG_DIR".to_owned(), dir.0.display().to_string())];
        Self { dir, env }
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.0.join("graphfeed")
    }

    fn tokens(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.config_dir().join("tokens.json")).unwrap()).unwrap()
    }

    fn saved_sessions(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.config_dir().join("uploads")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A file of `len` random bytes in the test's directory; returns its path and SHA-256
    /// (uppercase hex, as Graph shows it).
    fn file(&self, name: &str, len: usize) -> (PathBuf, String) {
        let mut state = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
                % u128::from(u64::MAX),
        )
        .unwrap()
            | 1;
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            // xorshift64*: fast, and random enough that no compression or dedup can help.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            bytes.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        bytes.truncate(len);
        let path = self.dir.0.join(name);
        std::fs::write(&path, &bytes).unwrap();
        (path, hex::encode_upper(sha2::Sha256::digest(&bytes)))
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_graphfeed"));
        command.args(args);
        for name in SETTINGS_ENV {
            command.env_remove(name);
        }
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Run {
        let output = tokio::time::timeout(Duration::from_secs(120), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("graphfeed {args:?} took over 120 s"))
            .unwrap();
        Run::from(output)
    }

    /// `graphfeed changes`, run again until its output shows `text` (at most 30 s).
    async fn changes_until(&self, text: &str) -> Run {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.run(&["changes"]).await.ok();
            if run.stdout.contains(text) || Instant::now() > deadline {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        self.command(args).spawn().unwrap()
    }

    /// `graphfeed login`, approved as a new simulated user; returns the user.
    async fn login(&self, stack: &TestStack) -> (CreatedUser, Run) {
        let sim = stack.sim.sim();
        let user = sim.create_user(NewUser::default()).unwrap();
        let child = self.spawn(&["login"]);
        wait_until(Duration::from_secs(20), "a pending device code", || {
            sim.device_codes()
                .iter()
                .any(|code| code.status == DeviceCodeStatus::Pending)
        })
        .await;
        sim.approve_next_device_code(&user.user_id).unwrap();
        let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("login finishes after approval")
            .unwrap();
        let run = Run::from(output);
        assert_eq!(run.code, Some(0), "login: {run:?}");
        (user, run)
    }
}

/// A finished run of the binary.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{self:?}");
        self
    }
}

async fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "no {what} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stack(run_process_changes: bool) -> TestStack {
    TestStack::start_with(StackOptions {
        run_process_changes,
        ..StackOptions::default()
    })
    .await
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Reads the changes queue until the baseline of a fresh connection is complete.
async fn wait_for_baseline(stack: &TestStack) {
    let events = stack
        .read_changes(Duration::from_secs(30), |events| {
            events.iter().any(|e| e.change == Change::BaselineComplete)
        })
        .await;
    assert!(
        events.iter().any(|e| e.change == Change::BaselineComplete),
        "{events:?}"
    );
}

#[tokio::test]
async fn login_through_a_device_code_caches_both_tokens_privately_then_connect_and_status_work() {
    let stack = stack(true).await;
    let graphfeed = Graphfeed::at(&stack);

    let (user, login) = graphfeed.login(&stack).await;

    let code = &stack.sim.sim().device_codes()[0];
    assert!(login.stderr.contains("/_sim/devicelogin"), "{login:?}");
    assert!(login.stderr.contains(&code.user_code), "{login:?}");
    assert!(login.stdout.starts_with("Signed in as "), "{login:?}");
    let cache_path = graphfeed.config_dir().join("tokens.json");
    #[cfg(unix)]
    assert_eq!(mode(&cache_path), 0o600);
    let tokens = graphfeed.tokens();
    let api = tokens["api"]["access_token"].as_str().unwrap();
    let graph = tokens["graph"]["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(api.split('.').count(), 3, "the API token is a JWT");
    assert!(graph.starts_with("simgraph."), "a Graph token");
    assert!(refresh.starts_with("simrt."));
    assert_eq!(
        tokens["graph"]["scope"],
        "https://graph.microsoft.com/Files.ReadWrite"
    );
    for secret in [api, graph, refresh] {
        assert!(
            !login.stdout.contains(secret) && !login.stderr.contains(secret),
            "a token was printed"
        );
    }

    let connected = graphfeed.run(&["connect"]).await.ok();
    assert!(
        connected
            .stdout
            .contains(&format!("Connected: drive {}", user.drive_id)),
        "{connected:?}"
    );
    let live: Vec<_> = stack
        .sim
        .sim()
        .subscriptions()
        .into_iter()
        .filter(|s| s.creator_id == user.user_id)
        .collect();
    assert_eq!(live.len(), 1, "connect made the user's subscription");

    let status = graphfeed.run(&["status"]).await.ok();
    assert!(status.stdout.contains("state:"), "{status:?}");
    assert!(
        status.stdout.contains(&format!("subscription: {}", live[0].id)),
        "{status:?}"
    );
    let json: Value = serde_json::from_str(&graphfeed.run(&["status", "--json"]).await.ok().stdout).unwrap();
    assert_eq!(json["drive_id"], user.drive_id);
    assert!(
        matches!(json["state"].as_str(), Some("baseline_pending" | "active")),
        "{json}"
    );

    let disconnected = graphfeed.run(&["disconnect"]).await.ok();
    assert!(
        disconnected.stdout.starts_with("Disconnected"),
        "{disconnected:?}"
    );
    assert!(
        stack.sim.sim().subscription(&live[0].id).is_none(),
        "disconnect deleted the subscription"
    );
    assert!(cache_path.exists(), "disconnecting keeps the sign-in");
    // A saved upload session (its URL works without a token) goes with the sign-in.
    let saved = graphfeed.config_dir().join("uploads").join("saved.json");
    std::fs::create_dir_all(saved.parent().unwrap()).unwrap();
    std::fs::write(&saved, "{}").unwrap();
    let logged_out = graphfeed.run(&["logout"]).await.ok();
    assert!(logged_out.stdout.starts_with("Signed out"), "{logged_out:?}");
    assert!(!cache_path.exists());
    assert!(!saved.exists(), "logout forgets saved upload sessions");
}

#[tokio::test]
async fn a_busy_graphfeed_is_retried_once_after_its_retry_after_then_reported_busy() {
    let stack = stack(false).await;
    let sim = stack.sim.sim();
    let graphfeed = Graphfeed::at(&stack);
    graphfeed.login(&stack).await;
    sim.add_fault(graph_sim::Fault {
        path_prefix: "/v1.0/".into(),
        method: None,
        status: 503,
        count: 1000,
        retry_after: Some(1),
        body: None,
        delay_ms: None,
    });

    let busy = graphfeed.run(&["connect"]).await;

    assert_eq!(busy.code, Some(1), "{busy:?}");
    assert!(busy.stderr.contains("graphfeed is busy"), "{busy:?}");
    assert!(busy.stderr.contains("trying again in "), "one retry: {busy:?}");
    assert!(busy.stderr.contains("hint: try again in "), "{busy:?}");
    sim.clear_faults();
    graphfeed.run(&["connect"]).await.ok();
}

#[tokio::test]
async fn a_killed_upload_of_25_mib_resumes_where_it_stopped_and_its_created_event_reaches_the_changes_queue()
{
    const TOTAL: usize = 25 * MIB;
    let stack = stack(true).await;
    let sim = stack.sim.sim();
    let graphfeed = Graphfeed::at(&stack);
    let (user, _) = graphfeed.login(&stack).await;
    graphfeed.run(&["connect"]).await.ok();
    wait_for_baseline(&stack).await;
    let (file, sha256) = graphfeed.file("big.bin", TOTAL);
    let path = file.to_str().unwrap();
    // 20 fragments of 1.25 MiB, each 150 ms late: the first run takes 3 s or more.
    sim.set_latency(Latency {
        graph: Duration::from_millis(150),
        token: Duration::ZERO,
    });
    let fragment = 1_310_720;

    let mut first = graphfeed.spawn(&["upload", path, "--fragment-mib", "1.25"]);
    wait_until(Duration::from_secs(60), "3 fragments received", || {
        sim.upload_sessions()
            .first()
            .is_some_and(|s| s.received >= 3 * fragment)
    })
    .await;
    first.start_kill().unwrap();
    let killed = first.wait().await.unwrap();
    assert_eq!(killed.code(), None, "killed by a signal");
    // A fragment already on the wire may still land; then the session stands still.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sessions = sim.upload_sessions();
    assert_eq!(sessions.len(), 1);
    let at_kill = sessions[0].received;
    assert!(at_kill > 0 && at_kill < TOTAL as u64, "{at_kill}");
    let saved = graphfeed.saved_sessions();
    assert_eq!(saved.len(), 1, "the session was saved before the first fragment");
    #[cfg(unix)]
    assert_eq!(mode(&saved[0]), 0o600);
    sim.set_latency(Latency::default());

    let second = graphfeed
        .run(&["upload", path, "--fragment-mib", "1.25"])
        .await
        .ok();

    assert!(
        second.stderr.contains(&format!("at byte {at_kill} of {TOTAL}")),
        "the second run resumed at the session's next expected byte: {second:?}"
    );
    assert!(second.stdout.starts_with("Uploaded /big.bin (id "), "{second:?}");
    assert!(second.stdout.contains(&format!("{TOTAL} bytes")), "{second:?}");
    let counters = sim.counters();
    assert_eq!(counters.upload_sessions_created, 1, "one session for both runs");
    assert_eq!(counters.upload_sessions_completed, 1);
    assert_eq!(
        counters.upload_bytes_accepted, TOTAL as u64,
        "every byte was accepted exactly once: the second run did not start over"
    );
    assert_eq!(counters.simple_uploads, 0);
    let item = sim.item_by_path(&user.drive_id, "big.bin").unwrap();
    assert_eq!(item.size, TOTAL as u64);
    assert_eq!(item.sha256.as_deref(), Some(sha256.as_str()));
    assert!(second.stdout.contains(&item.id), "{second:?}");
    assert!(
        graphfeed.saved_sessions().is_empty(),
        "the finished session is forgotten"
    );

    let events = stack
        .read_changes(Duration::from_secs(30), |events| {
            events.iter().any(|e| e.name.as_deref() == Some("big.bin"))
        })
        .await;
    let created = events
        .iter()
        .find(|e| e.name.as_deref() == Some("big.bin"))
        .unwrap_or_else(|| panic!("no event for big.bin: {events:?}"));
    assert_eq!(created.change, Change::Created);
    assert_eq!(created.kind, Some(ItemKind::File));
    assert_eq!(created.size, Some(26_214_400));
    assert_eq!(created.path.as_deref(), Some("/big.bin"));
    assert_eq!(created.item_id.as_deref(), Some(item.id.as_str()));
}

#[tokio::test]
async fn a_saved_session_that_graph_no_longer_knows_is_forgotten_and_the_upload_restarts_from_byte_zero() {
    const TOTAL: usize = 6 * MIB;
    let stack = stack(false).await;
    let sim = stack.sim.sim();
    let graphfeed = Graphfeed::at(&stack);
    let (user, _) = graphfeed.login(&stack).await;
    let (file, sha256) = graphfeed.file("restart.bin", TOTAL);
    let path = file.to_str().unwrap();
    sim.set_latency(Latency {
        graph: Duration::from_millis(150),
        token: Duration::ZERO,
    });
    let mut first = graphfeed.spawn(&["upload", path, "--fragment-mib", "0.3125"]);
    wait_until(Duration::from_secs(60), "2 fragments received", || {
        sim.upload_sessions()
            .first()
            .is_some_and(|s| s.received >= 2 * 327_680)
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    sim.set_latency(Latency::default());
    let id = sim.upload_sessions()[0].id.clone();
    let deleted = reqwest::Client::new()
        .delete(format!("{}/uploads/{id}", stack.sim.control_url()))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());

    let second = graphfeed.run(&["upload", path]).await.ok();

    assert!(
        second
            .stderr
            .contains("expired or was deleted; starting a new one from byte 0"),
        "{second:?}"
    );
    let counters = sim.counters();
    assert_eq!(counters.upload_sessions_created, 2);
    assert_eq!(counters.upload_sessions_completed, 1);
    let item = sim.item_by_path(&user.drive_id, "restart.bin").unwrap();
    assert_eq!(item.size, TOTAL as u64);
    assert_eq!(item.sha256.as_deref(), Some(sha256.as_str()));
    assert!(graphfeed.saved_sessions().is_empty());
}

#[tokio::test]
async fn a_name_that_is_taken_is_a_clear_error_with_exit_code_1_until_conflict_replace_is_given() {
    let stack = stack(false).await;
    let sim = stack.sim.sim();
    let graphfeed = Graphfeed::at(&stack);
    let (user, _) = graphfeed.login(&stack).await;
    for name in ["taken.bin", "small.txt"] {
        sim.create_item(
            &user.drive_id,
            &NewItem {
                parent_id: None,
                name: name.into(),
                folder: false,
                size: 5,
            },
        )
        .unwrap();
    }
    let (large, sha256) = graphfeed.file("taken.bin", 5 * MIB);
    let (small, _) = graphfeed.file("small.txt", 100);

    for file in [&large, &small] {
        let refused = graphfeed.run(&["upload", file.to_str().unwrap()]).await;
        assert_eq!(refused.code, Some(1), "{refused:?}");
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            refused.stderr.contains(&format!(
                "error: /{name} already exists in OneDrive; use --conflict replace or --conflict rename"
            )),
            "{refused:?}"
        );
        assert!(refused.stderr.contains("\nhint: "), "{refused:?}");
    }
    assert_eq!(
        sim.counters().upload_bytes_accepted,
        0,
        "no byte was sent for a name that is taken"
    );

    graphfeed
        .run(&["upload", large.to_str().unwrap(), "--conflict", "replace"])
        .await
        .ok();
    let item = sim.item_by_path(&user.drive_id, "taken.bin").unwrap();
    assert_eq!(item.size, 5 * MIB as u64);
    assert_eq!(item.sha256.as_deref(), Some(sha256.as_str()));
}

#[tokio::test]
async fn a_local_file_changed_since_the_interruption_cancels_the_old_session_and_starts_again() {
    let stack = stack(false).await;
    let sim = stack.sim.sim();
    let graphfeed = Graphfeed::at(&stack);
    let (user, _) = graphfeed.login(&stack).await;
    let (file, _) = graphfeed.file("edited.bin", 6 * MIB);
    let path = file.to_str().unwrap();
    sim.set_latency(Latency {
        graph: Duration::from_millis(150),
        token: Duration::ZERO,
    });
    let mut first = graphfeed.spawn(&["upload", path, "--fragment-mib", "0.3125"]);
    wait_until(Duration::from_secs(60), "a fragment received", || {
        sim.upload_sessions().first().is_some_and(|s| s.received > 0)
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    sim.set_latency(Latency::default());
    let old = sim.upload_sessions()[0].id.clone();
    let (_, sha256) = graphfeed.file("edited.bin", 5 * MIB);

    let second = graphfeed.run(&["upload", path]).await.ok();

    assert!(
        second.stderr.contains("changed since its upload was interrupted"),
        "{second:?}"
    );
    assert!(
        sim.upload_sessions().iter().all(|s| s.id != old),
        "the old session was cancelled"
    );
    assert_eq!(sim.counters().upload_sessions_created, 2);
    let item = sim.item_by_path(&user.drive_id, "edited.bin").unwrap();
    assert_eq!(item.size, 5 * MIB as u64);
    assert_eq!(item.sha256.as_deref(), Some(sha256.as_str()));
}

#[tokio::test]
async fn fragments_answered_503_and_416_are_retried_from_where_the_session_stands() {
    let stack = stack(false).await;
    let sim = stack.sim.sim();
    let graphfeed = Graphfeed::at(&stack);
    let (user, _) = graphfeed.login(&stack).await;
    let (file, sha256) = graphfeed.file("flaky.bin", 5 * MIB);
    for (status, retry_after) in [(503, Some(1)), (416, None)] {
        sim.add_fault(graph_sim::Fault {
            path_prefix: "/_upload/".into(),
            method: Some("PUT".into()),
            status,
            count: 1,
            retry_after,
            body: None,
            delay_ms: None,
        });
    }

    let uploaded = graphfeed
        .run(&["upload", file.to_str().unwrap(), "--fragment-mib", "1.25"])
        .await
        .ok();

    assert!(uploaded.stdout.starts_with("Uploaded /flaky.bin"), "{uploaded:?}");
    let counters = sim.counters();
    assert_eq!(counters.faults_injected, 2);
    assert_eq!(
        counters.upload_bytes_accepted,
        5 * MIB as u64,
        "every byte accepted once"
    );
    // The simulator refuses an overlapping fragment, so bytes alone cannot show a resend: four
    // fragments of 1.25 MiB accepted, and no refusal beyond the two faults, means none was sent
    // again.
    assert_eq!(counters.upload_fragments_accepted, 4, "no fragment sent twice");
    assert_eq!(
        counters.upload_fragments_rejected, 2,
        "only the two injected faults"
    );
    let item = sim.item_by_path(&user.drive_id, "flaky.bin").unwrap();
    assert_eq!(item.sha256.as_deref(), Some(sha256.as_str()));
}

#[tokio::test]
async fn a_name_taken_during_the_upload_keeps_the_sent_bytes_for_a_run_with_conflict_replace() {
    let stack = stack(false).await;
    let sim = stack.sim.sim();
    let graphfeed = Graphfeed::at(&stack);
    let (user, _) = graphfeed.login(&stack).await;
    let (file, sha256) = graphfeed.file("race.bin", 5 * MIB);
    let path = file.to_str().unwrap();
    sim.set_latency(Latency {
        graph: Duration::from_millis(100),
        token: Duration::ZERO,
    });
    let first = graphfeed.spawn(&["upload", path, "--fragment-mib", "0.3125"]);
    wait_until(Duration::from_secs(60), "a fragment received", || {
        sim.upload_sessions().first().is_some_and(|s| s.received > 0)
    })
    .await;
    sim.create_item(
        &user.drive_id,
        &NewItem {
            parent_id: None,
            name: "race.bin".into(),
            folder: false,
            size: 5,
        },
    )
    .unwrap();
    let refused = Run::from(first.wait_with_output().await.unwrap());
    sim.set_latency(Latency::default());
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("/race.bin already exists in OneDrive"),
        "{refused:?}"
    );

    let replaced = graphfeed
        .run(&["upload", path, "--conflict", "replace"])
        .await
        .ok();

    assert!(
        replaced.stderr.contains("was sent earlier; committing the file"),
        "{replaced:?}"
    );
    assert_eq!(
        sim.counters().upload_bytes_accepted,
        5 * MIB as u64,
        "the bytes were not sent again"
    );
    let item = sim.item_by_path(&user.drive_id, "race.bin").unwrap();
    assert_eq!(item.size, 5 * MIB as u64);
    assert_eq!(item.sha256.as_deref(), Some(sha256.as_str()));
    assert!(graphfeed.saved_sessions().is_empty());
}

#[tokio::test]
async fn a_declined_or_expired_device_code_ends_login_saying_so() {
    let stack = stack(false).await;
    let sim = stack.sim.sim();
    let graphfeed = Graphfeed::at(&stack);
    let pending = || {
        sim.device_codes()
            .into_iter()
            .filter(|code| code.status == DeviceCodeStatus::Pending && !code.expired)
            .map(|code| code.user_code)
            .next()
    };

    let declined = graphfeed.spawn(&["login"]);
    wait_until(Duration::from_secs(20), "a pending device code", || {
        pending().is_some()
    })
    .await;
    sim.deny_device_code(&pending().unwrap()).unwrap();
    let declined = Run::from(declined.wait_with_output().await.unwrap());
    assert_eq!(declined.code, Some(1), "{declined:?}");
    assert!(
        declined.stderr.contains("error: sign-in was declined"),
        "{declined:?}"
    );

    let expired = graphfeed.spawn(&["login"]);
    wait_until(Duration::from_secs(20), "a pending device code", || {
        pending().is_some()
    })
    .await;
    sim.advance(chrono::Duration::minutes(16));
    let expired = Run::from(expired.wait_with_output().await.unwrap());
    assert_eq!(expired.code, Some(1), "{expired:?}");
    assert!(
        expired
            .stderr
            .contains("error: the sign-in code expired before it was approved"),
        "{expired:?}"
    );
    assert!(!graphfeed.config_dir().join("tokens.json").exists());
}

#[tokio::test]
async fn a_file_of_at_most_4_mib_goes_up_in_one_simple_put() {
    let stack = stack(false).await;
    let sim = stack.sim.sim();
    let graphfeed = Graphfeed::at(&stack);
    let (user, _) = graphfeed.login(&stack).await;
    sim.create_item(
        &user.drive_id,
        &NewItem {
            parent_id: None,
            name: "Docs".into(),
            folder: true,
            size: 0,
        },
    )
    .unwrap();
    let (file, sha256) = graphfeed.file("four.bin", 4 * MIB);

    let uploaded = graphfeed
        .run(&["upload", file.to_str().unwrap(), "--to", "/Docs"])
        .await
        .ok();

    assert!(
        uploaded.stdout.starts_with("Uploaded /Docs/four.bin (id "),
        "{uploaded:?}"
    );
    let counters = sim.counters();
    assert_eq!(counters.simple_uploads, 1);
    assert_eq!(counters.upload_sessions_created, 0);
    let item = sim.item_by_path(&user.drive_id, "Docs/four.bin").unwrap();
    assert_eq!(item.size, 4 * MIB as u64);
    assert_eq!(item.sha256.as_deref(), Some(sha256.as_str()));
    let missing = graphfeed
        .run(&["upload", file.to_str().unwrap(), "--to", "/Nowhere"])
        .await;
    assert_eq!(missing.code, Some(1));
    assert!(
        missing
            .stderr
            .contains("the folder /Nowhere does not exist in OneDrive"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn an_expired_api_token_is_refreshed_and_a_refused_one_refreshed_once_rotating_the_refresh_token() {
    let stack = stack(false).await;
    let graphfeed = Graphfeed::at(&stack);
    graphfeed.login(&stack).await;
    let cache = graphfeed.config_dir().join("tokens.json");
    let before = graphfeed.tokens();
    let mut expired = before.clone();
    expired["api"]["expires_at"] = "2020-01-01T00:00:00Z".into();
    std::fs::write(&cache, expired.to_string()).unwrap();

    let refreshes = || stack.sim.sim().counters().token_requests_of("refresh_token");
    let refreshes_before = refreshes();

    // Not connected yet: graphfeed accepted the refreshed token and says what to do next.
    let status = graphfeed.run(&["status"]).await;
    assert_eq!(
        refreshes(),
        refreshes_before + 1,
        "the expired token was refreshed once"
    );

    assert_eq!(status.code, Some(1), "{status:?}");
    assert!(status.stderr.contains("not_connected"), "{status:?}");
    assert!(
        status.stderr.contains("hint: run `graphfeed connect`"),
        "{status:?}"
    );
    let after = graphfeed.tokens();
    assert_ne!(after["api"]["access_token"], before["api"]["access_token"]);
    assert_ne!(after["refresh_token"], before["refresh_token"], "rotated");
    #[cfg(unix)]
    assert_eq!(mode(&cache), 0o600);

    let mut refused = after.clone();
    refused["api"]["access_token"] = "not-a-token".into();
    std::fs::write(&cache, refused.to_string()).unwrap();
    let status = graphfeed.run(&["status"]).await;
    assert!(
        status.stderr.contains("not_connected"),
        "a 401 refreshed once: {status:?}"
    );
    assert_eq!(
        refreshes(),
        refreshes_before + 2,
        "the refused token was refreshed once"
    );
    assert_ne!(graphfeed.tokens()["api"]["access_token"], "not-a-token");
}

#[tokio::test]
async fn graphfeed_changes_prints_the_created_event_of_an_upload() {
    let stack = stack(true).await;
    let graphfeed = Graphfeed::at(&stack);
    graphfeed.login(&stack).await;
    graphfeed.run(&["connect"]).await.ok();
    // A file made while the baseline walk runs is part of the baseline, not a `created` event.
    graphfeed.changes_until("baseline-complete").await;
    let (file, _) = graphfeed.file("hello.txt", 2048);
    graphfeed.run(&["upload", file.to_str().unwrap()]).await.ok();

    let printed = graphfeed.changes_until("created /hello.txt").await;

    let lines: Vec<&str> = printed.stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with("baseline-complete")),
        "{printed:?}"
    );
    let created = lines
        .iter()
        .find(|l| l.contains("created /hello.txt"))
        .unwrap_or_else(|| panic!("no created event: {printed:?}"));
    assert!(created.starts_with('#'), "{created}");
    assert!(created.ends_with("(file, 2 KiB)"), "{created}");
    assert!(printed.stderr.contains("--after "), "{printed:?}");
    let json = graphfeed.run(&["changes", "--json"]).await.ok();
    let events: Vec<Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hello = events.iter().find(|e| e["name"] == "hello.txt").unwrap();
    assert_eq!(hello["change"], "created");
    let sequence = hello["sequence"].as_u64().unwrap();
    let later = graphfeed
        .run(&["changes", "--after", &sequence.to_string()])
        .await
        .ok();
    assert!(!later.stdout.contains("hello.txt"), "{later:?}");
}

/// `graphfeed changes --follow …` running in the background, its stdout and stderr read line by
/// line as they come.
#[cfg(unix)]
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    printed: Vec<String>,
}

#[cfg(unix)]
impl Follower {
    fn spawn(graphfeed: &Graphfeed, args: &[&str]) -> Self {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_graphfeed"));
        command.args(["changes", "--follow"]).args(args);
        for name in SETTINGS_ENV {
            command.env_remove(name);
        }
        let mut child = command
            .envs(graphfeed.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let send = send.clone();
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(stream).lines() {
                    if send.send(line.unwrap()).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            printed: Vec::new(),
        }
    }

    /// Waits (blocking: the runtime's other worker serves the stack) until a line shows `text`.
    fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        tokio::task::block_in_place(|| {
            while !self.printed.iter().any(|l| l.contains(text)) {
                assert!(Instant::now() < deadline, "no '{text}' in {:?}", self.printed);
                if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                    self.printed.push(line);
                }
            }
        });
    }

    /// Ctrl-C (through the shell's own `kill`: a minimal machine may have no kill executable);
    /// the exit code and everything printed.
    fn interrupt(mut self) -> (Option<i32>, Vec<String>) {
        let interrupted = std::process::Command::new("sh")
            .args(["-c", &format!("kill -INT {}", self.child.id())])
            .status()
            .unwrap();
        assert!(interrupted.success());
        let status = tokio::task::block_in_place(|| self.child.wait()).unwrap();
        // The readers end with the process; collect what they still had.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.printed.push(line);
        }
        (status.code(), std::mem::take(&mut self.printed))
    }
}

#[cfg(unix)]
impl Drop for Follower {
    fn drop(&mut self) {
        // A failed assertion must not leave a follower polling for ever.
        let _ = self.child.kill();
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_follow_prints_new_events_as_they_come_and_ctrl_c_ends_it_cleanly() {
    let stack = stack(true).await;
    let graphfeed = Graphfeed::at(&stack);
    graphfeed.login(&stack).await;
    graphfeed.run(&["connect"]).await.ok();
    graphfeed.changes_until("baseline-complete").await;
    let mut follower = Follower::spawn(&graphfeed, &["--interval", "1"]);
    follower.wait_for("baseline-complete");

    let (file, _) = graphfeed.file("later.txt", 10);
    graphfeed.run(&["upload", file.to_str().unwrap()]).await.ok();
    follower.wait_for("created /later.txt (file, 10 B)");
    let (code, printed) = follower.interrupt();

    assert_eq!(code, Some(0), "Ctrl-C ends --follow without an error");
    assert!(
        printed
            .iter()
            .any(|l| l.contains("continue with `graphfeed changes --after ")),
        "{printed:?}"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_follow_keeps_polling_while_graphfeed_is_busy_and_prints_what_comes_after() {
    // Every AWS call of the stack goes through a proxy that can make AWS answer 503, so
    // graphfeed's own GET /changes answers 503 while it fails.
    let proxy = graphfeed_tests::FaultyProxy::start(graphfeed_tests::moto_endpoint()).await;
    let stack = TestStack::start_with(StackOptions {
        endpoint: proxy.endpoint.clone(),
        run_process_changes: true,
        ..StackOptions::default()
    })
    .await;
    let graphfeed = Graphfeed::at(&stack);
    graphfeed.login(&stack).await;
    graphfeed.run(&["connect"]).await.ok();
    graphfeed.changes_until("baseline-complete").await;

    proxy.fail(true);
    let mut follower = Follower::spawn(&graphfeed, &["--after", "1", "--interval", "1"]);
    follower.wait_for("still following");
    assert!(
        follower.child.try_wait().unwrap().is_none(),
        "a busy graphfeed ended --follow: {:?}",
        follower.printed
    );

    proxy.fail(false);
    let (file, _) = graphfeed.file("after-the-outage.txt", 10);
    graphfeed.run(&["upload", file.to_str().unwrap()]).await.ok();
    follower.wait_for("created /after-the-outage.txt (file, 10 B)");
    let (code, _) = follower.interrupt();
    assert_eq!(code, Some(0), "Ctrl-C ends --follow without an error");
}

#[tokio::test]
async fn every_command_has_help_that_says_what_it_does() {
    let graphfeed = Graphfeed::offline();
    let top = graphfeed.run(&["--help"]).await.ok();
    assert!(top.stdout.contains("sign in"), "{top:?}");
    assert!(top.stdout.contains("Example"), "{top:?}");
    for (command, says) in [
        ("login", "Sign in with a device code"),
        ("logout", "Forget the cached tokens"),
        ("configure", "Save settings to config.json"),
        ("connect", "Connect your OneDrive to graphfeed"),
        ("status", "Show your connection's state"),
        ("disconnect", "Disconnect your OneDrive from graphfeed"),
        ("upload", "Upload a file to your OneDrive"),
        ("changes", "Print change events from graphfeed"),
    ] {
        let help = graphfeed.run(&[command, "--help"]).await.ok();
        assert!(help.stdout.contains(says), "{command}: {help:?}");
        assert!(help.stdout.contains("Example"), "{command}: {help:?}");
    }
}

#[tokio::test]
async fn without_a_sign_in_a_command_says_to_log_in_and_a_bad_setting_exits_with_2() {
    let graphfeed = Graphfeed::offline();

    let status = graphfeed.run(&["status"]).await;
    assert_eq!(status.code, Some(1));
    assert!(
        status
            .stderr
            .starts_with("error: Not signed in: run `graphfeed login`.\nhint: "),
        "{status:?}"
    );

    let bad = graphfeed.run(&["--api-url", "ftp://nowhere", "status"]).await;
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("api_url from flag --api-url"), "{bad:?}");
}

#[tokio::test]
async fn configure_saves_settings_and_show_names_where_each_came_from() {
    let graphfeed = Graphfeed::offline();

    graphfeed
        .run(&[
            "configure",
            "--api-url",
            "https://api.example/",
            "--tenant",
            "contoso.com",
        ])
        .await
        .ok();
    let shown = graphfeed.run(&["configure", "--show"]).await.ok();

    let line = |key: &str| {
        shown
            .stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key}: {shown:?}"))
            .to_owned()
    };
    assert!(
        line("api_url").contains("https://api.example  (config file "),
        "{shown:?}"
    );
    assert!(line("tenant").contains("contoso.com"), "{shown:?}");
    assert!(line("graph_url").ends_with("(default)"), "{shown:?}");
    let flagged = graphfeed
        .run(&["configure", "--show", "--tenant", "organizations"])
        .await
        .ok();
    assert!(
        flagged.stdout.contains("organizations  (flag --tenant)"),
        "{flagged:?}"
    );
    #[cfg(unix)]
    assert_eq!(mode(&graphfeed.config_dir().join("config.json")), 0o600);
}
