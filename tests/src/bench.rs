//! What the benchmarks (`tests/benches`) share: graph-sim as its own release process, and users
//! made through its control API.

#![allow(clippy::unwrap_used)] // benchmark support: a panic is the report

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// A graph-sim for a benchmark: its own (release) process, or in-process for a smoke run.
pub struct SimProcess {
    child: Option<Child>,
    /// Keeps an in-process simulator (the smoke run) alive.
    _in_process: Option<graph_sim::RunningSim>,
    pub base: String,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// graph-sim in this process (smoke runs: no figures worth quoting).
pub async fn start_in_process_sim() -> SimProcess {
    let clock = shared::clock::OffsetClock::new();
    let sim = crate::start_sim_with(&clock, graph_sim::Timing::fast()).await;
    let base = sim.graph_base_url().trim_end_matches("/v1.0").to_owned();
    SimProcess {
        child: None,
        _in_process: Some(sim),
        base,
    }
}

/// `target/release/graph-sim` in its own process, with `args` besides its listen address.
pub fn start_sim(args: &[&str]) -> SimProcess {
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/graph-sim");
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} is missing: run `cargo build --release -p graph-sim` (the make bench targets do)"
    );
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--allow-http-loopback"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "graph-sim listening on http://127.0.0.1:PORT (graph: http://127.0.0.1:PORT/v1.0)"
    let base = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected ready line: {line}"))
        .to_owned();
    SimProcess {
        child: Some(child),
        _in_process: None,
        base,
    }
}

/// A user graph-sim made.
pub struct SimUser {
    pub tenant_id: String,
    pub user_id: String,
    pub drive_id: String,
    pub access_token: String,
}

/// A new user (in a new tenant) through the control API.
pub async fn new_user(http: &reqwest::Client, base: &str) -> SimUser {
    let user: serde_json::Value = http
        .post(format!("{base}/_sim/users"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = |k: &str| user[k].as_str().unwrap().to_owned();
    SimUser {
        tenant_id: text("tenant_id"),
        user_id: text("user_id"),
        drive_id: text("drive_id"),
        access_token: text("access_token"),
    }
}
