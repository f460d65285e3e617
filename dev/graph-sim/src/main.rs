//! `graph-sim`: runs the Graph and Entra simulator until SIGTERM or Ctrl-C. Wiring only; see the
//! library.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;

use clap::Parser;
use graph_sim::{SimConfig, start};

/// A local Microsoft Graph and Entra ID simulator: Graph under /v1.0, Entra under /{tenant}/, control
/// under /_sim.
#[derive(Debug, Parser)]
#[command(name = "graph-sim", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "GRAPH_SIM_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Accept http:// notification URLs on 127.0.0.1, localhost and [::1] (Graph requires https).
    #[arg(long, env = "GRAPH_SIM_ALLOW_HTTP_LOOPBACK")]
    allow_http_loopback: bool,
    /// The base URL clients reach the simulator at, for Entra issuers and delta links
    /// (default: http://<bound address>).
    #[arg(long, env = "GRAPH_SIM_PUBLIC_URL")]
    public_url: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let config = SimConfig {
        allow_http_loopback: args.allow_http_loopback,
        public_url: args.public_url,
        ..SimConfig::default()
    };
    let running = start(config, args.listen).await?;
    ready_line(&running.authority_host(), &running.graph_base_url())?;

    wait_for_stop().await?;
    tracing::info!("stopping");
    running.shutdown().await;
    Ok(())
}

/// The one line scripts wait for.
#[allow(clippy::print_stdout)]
fn ready_line(host: &str, graph: &str) -> std::io::Result<()> {
    println!("graph-sim listening on {host} (graph: {graph})");
    std::io::stdout().flush()
}

async fn wait_for_stop() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
