//! `make local`: graphfeed on one machine.
//!
//! Starts moto (unless `AWS_ENDPOINT_URL` points elsewhere) and graph-sim (unless
//! `GRAPH_BASE_URL` and `ENTRA_AUTHORITY_HOST` point elsewhere), bootstraps the template's
//! resources, serves the functions on `http://127.0.0.1:${GRAPHFEED_PORT:-3000}` with the
//! template's routes, prints one line when ready, and runs until Ctrl-C or SIGTERM; what it
//! started stops with it. process-changes runs on the notifications queue through the SQS
//! event-source emulator. With graph-sim local, a demo connects a simulated user, changes files
//! and shows each change event as process-changes logs it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use local_stack::template::Template;
use local_stack::{DEFAULT_REGION, ServeConfig, local_aws, serve};
use shared::client_state::{DEV_CLIENT_STATE_KEY_HEX, LOCAL_KEY_ID};
use shared::clock::{OffsetClock, SharedClock};
use shared::config::Env;

#[derive(Parser, Debug)]
#[command(
    name = "local-stack",
    about = "Runs graphfeed locally: moto, graph-sim and the functions behind template.yaml's routes."
)]
struct Args {
    /// Port of the local HTTP API.
    #[arg(long, env = "GRAPHFEED_PORT", default_value_t = 3000)]
    port: u16,
    /// Port for graph-sim when the local stack starts it.
    #[arg(long, env = "GRAPH_SIM_PORT", default_value_t = 3001)]
    graph_sim_port: u16,
    /// Port for moto when the local stack starts it.
    #[arg(long, env = "MOTO_PORT", default_value_t = 5050)]
    moto_port: u16,
    /// moto's server executable: `dev/moto/serve` runs moto (installed into .venv by `make venv`)
    /// with DynamoDB's atomic conditional writes.
    #[arg(long, env = "MOTO_SERVER", default_value = "dev/moto/serve")]
    moto_server: PathBuf,
    /// Stands in for the CloudFormation stack name (queue names derive from it).
    #[arg(long, env = "GRAPHFEED_STACK", default_value = "graphfeed-local")]
    stack: String,
    /// The SAM template.
    #[arg(long, default_value = "template.yaml")]
    template: PathBuf,
    /// Skip the demo (connect a simulated user, change a file, show the notification).
    #[arg(long, env = "GRAPHFEED_NO_DEMO")]
    no_demo: bool,
}

#[tokio::main]
#[allow(clippy::print_stdout)]
async fn main() -> Result<()> {
    shared::telemetry::init();
    let args = Args::parse();
    let env = Env::process();
    let region = env.get("AWS_REGION").unwrap_or(DEFAULT_REGION).to_owned();
    let template = Template::load(&args.template).context("reading the SAM template")?;
    let clock = OffsetClock::new();

    // AWS: the given endpoint, or moto started here (killed when this process ends).
    let mut moto = None;
    let endpoint = match env.get("AWS_ENDPOINT_URL") {
        Some(e) => e.to_owned(),
        None => {
            let child = tokio::process::Command::new(&args.moto_server)
                .args(["-H", "127.0.0.1", "-p", &args.moto_port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| {
                    format!(
                        "starting moto from {} (run `make venv` first)",
                        args.moto_server.display()
                    )
                })?;
            let mut child = child;
            let endpoint = format!("http://127.0.0.1:{}", args.moto_port);
            wait_for_moto(&mut child, SocketAddr::from(([127, 0, 0, 1], args.moto_port))).await?;
            moto = Some(child);
            endpoint
        }
    };
    let aws = local_aws(&endpoint, &region).await;

    // Graph and Entra: the given endpoints, or graph-sim in this process.
    let mut overrides = env.clone();
    let sim = match (env.get("GRAPH_BASE_URL"), env.get("ENTRA_AUTHORITY_HOST")) {
        (Some(_), Some(_)) => None,
        (Some(_), None) | (None, Some(_)) => {
            bail!(
                "set both GRAPH_BASE_URL and ENTRA_AUTHORITY_HOST to use another Graph, or neither to use graph-sim"
            )
        }
        (None, None) => {
            let config = graph_sim::SimConfig {
                allow_http_loopback: true,
                clock: clock.clone(),
                ..Default::default()
            };
            let running = graph_sim::start(config, SocketAddr::from(([127, 0, 0, 1], args.graph_sim_port)))
                .await
                .context("starting graph-sim")?;
            local_stack::create_sample_user(&running.sim()).context("creating the sample user of events/")?;
            overrides = overrides
                .with("GRAPH_BASE_URL", &running.graph_base_url())
                .with("ENTRA_AUTHORITY_HOST", &running.authority_host());
            Some(running)
        }
    };
    let base = format!("http://127.0.0.1:{}", args.port);
    if overrides.get("NOTIFICATION_URL").is_none() {
        overrides = overrides.with("NOTIFICATION_URL", &format!("{base}/notifications"));
    }
    if overrides.get("LIFECYCLE_NOTIFICATION_URL").is_none() {
        overrides = overrides.with("LIFECYCLE_NOTIFICATION_URL", &format!("{base}/lifecycle"));
    }

    // Locally the key secret holds the documented development key, so events/ samples verify.
    let dev_ring = format!(r#"{{"active":"{LOCAL_KEY_ID}","{LOCAL_KEY_ID}":"{DEV_CLIENT_STATE_KEY_HEX}"}}"#);
    let shared_clock: SharedClock = Arc::new(clock.clone());
    let renew_every = renew_period(&env, &template)?;
    let running = serve(
        &template,
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], args.port)),
            stack: args.stack.clone(),
            region: region.clone(),
            aws: aws.clone(),
            overrides,
            secret_values: BTreeMap::from([("ClientStateKeysSecret".to_owned(), dev_ring)]),
            parameters: local_stack::local_parameters(),
            clock: shared_clock,
            run_process_changes: true,
            renew_every: Some(renew_every),
        },
    )
    .await
    .context("starting the functions")?;

    // Each function's resolved environment, for `cargo lambda watch --env-file .local/<fn>.env`.
    write_env_file(
        "notify",
        &running.notify_env,
        &aws_endpoint_env(&endpoint, &region),
    )?;
    write_env_file(
        "connect",
        &running.connect_env,
        &aws_endpoint_env(&endpoint, &region),
    )?;
    write_env_file(
        "process-changes",
        &running.process_env,
        &aws_endpoint_env(&endpoint, &region),
    )?;
    write_env_file("renew", &running.renew_env, &aws_endpoint_env(&endpoint, &region))?;
    println!(
        "renew runs every {} s (RENEW_EVERY_SECONDS), renewing subscriptions within {} minutes of expiry (RENEW_WINDOW_MINUTES)",
        renew_every.as_secs(),
        running.renew_env.get("RENEW_WINDOW_MINUTES").unwrap_or("4320")
    );

    let routes: Vec<String> = template
        .http_routes()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    println!(
        "graphfeed local stack ready on {} ({}) | AWS {} | Graph {}",
        running.url(),
        routes.join(", "),
        endpoint,
        running
            .notify_env
            .get("GRAPH_BASE_URL")
            .unwrap_or("(notify makes no Graph call)")
    );

    let demo = match (&sim, args.no_demo) {
        (Some(sim), false) => Some(tokio::spawn(local_stack::demo::run(
            sim.sim(),
            running.url(),
            sim.control_url(),
        ))),
        (None, false) => {
            println!(
                "demo skipped: GRAPH_BASE_URL points at another Graph (the demo drives graph-sim's control API)"
            );
            None
        }
        _ => None,
    };

    shutdown_signal().await;
    println!("stopping");
    if let Some(d) = demo {
        d.abort();
    }
    running.stop();
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    if let Some(mut moto) = moto {
        let _ = moto.kill().await;
    }
    Ok(())
}

/// How often renew runs: `RENEW_EVERY_SECONDS`, else the template's schedule.
fn renew_period(env: &Env, template: &Template) -> Result<std::time::Duration> {
    if let Some(raw) = env.get("RENEW_EVERY_SECONDS") {
        let seconds: u64 = raw.parse().ok().filter(|s| *s > 0).with_context(|| {
            format!("RENEW_EVERY_SECONDS must be a whole number of seconds above 0 (got {raw:?})")
        })?;
        return Ok(std::time::Duration::from_secs(seconds));
    }
    local_stack::schedule::function_schedule(template, "RenewFunction", &local_stack::local_parameters())
        .context("reading renew's schedule from template.yaml")
}

/// Waits until the moto we started listens. If it exits first (typically: the port is taken by
/// another process), fails instead of silently using whatever holds the port.
async fn wait_for_moto(child: &mut tokio::process::Child, addr: SocketAddr) -> Result<()> {
    for _ in 0..150 {
        if let Some(status) = child.try_wait()? {
            bail!(
                "moto exited ({status}) before listening on {addr}: is the port taken? Set MOTO_PORT, or AWS_ENDPOINT_URL to use a running moto"
            );
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            // Connected: but to ours? A moto that lost the race for the port exits promptly.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(status) = child.try_wait()? {
                bail!(
                    "moto exited ({status}): {addr} is taken by another process. Set MOTO_PORT, or AWS_ENDPOINT_URL to use it"
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("moto does not listen on {addr} after 15 s")
}

/// The AWS settings a function started outside this process needs to reach the same endpoint.
fn aws_endpoint_env(endpoint: &str, region: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
        ("AWS_REGION".into(), region.into()),
        (
            "AWS_ACCESS_KEY_ID".into(),
            std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into()),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into()),
        ),
    ]
}

/// Writes the variables the template gives `function` (resolved against the local stack) to
/// `.local/<function>.env`. Only names graphfeed reads are written, never the caller's whole env.
fn write_env_file(function: &str, env: &Env, aws: &[(String, String)]) -> Result<()> {
    const PREFIXES: [&str; 12] = [
        "ENTRA_",
        "GRAPH_",
        "NOTIFICATION",
        "LIFECYCLE_",
        "TABLE_NAME",
        "KMS_KEY_ID",
        "CLIENT_STATE_",
        "RENEW_",
        "RUST_LOG",
        "CHANGES_",
        "CHANGE_LOG_",
        "DEAD_LETTER_",
    ];
    let mut lines: Vec<String> = env
        .iter()
        .filter(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    lines.extend(aws.iter().map(|(k, v)| format!("{k}={v}")));
    lines.sort();
    std::fs::create_dir_all(".local").context("creating .local/")?;
    std::fs::write(format!(".local/{function}.env"), lines.join("\n") + "\n")
        .context("writing the env file")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
