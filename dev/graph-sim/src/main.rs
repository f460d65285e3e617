//! `graph-sim`: runs the Graph and Entra simulator until SIGTERM or Ctrl-C. Wiring only; see the
//! library.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;

use clap::Parser;
use graph_sim::{DeltaQuirks, Latency, SimConfig, Timing, start};

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
    /// Most items per delta page (Graph's default is 200; the hard maximum 1000).
    #[arg(long, env = "GRAPH_SIM_DELTA_PAGE_SIZE", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    delta_page_size: u32,
    /// Delta quirks for every drive, comma-separated: variable_page_sizes, tiny_pages_around_deletes,
    /// empty_pages, repeat_items, child_before_parent, business_omits_ctag, or all.
    #[arg(long, env = "GRAPH_SIM_DELTA_QUIRKS", value_parser = DeltaQuirks::from_names)]
    delta_quirks: Option<DeltaQuirks>,
    /// Seed of the delta quirks' random choices.
    #[arg(long, env = "GRAPH_SIM_DELTA_QUIRKS_SEED", default_value_t = 0)]
    delta_quirks_seed: u64,
    /// Live subscriptions allowed per drive (403 "Maximum number of subscriptions has been
    /// reached" beyond); no limit when absent.
    #[arg(long, env = "GRAPH_SIM_MAX_SUBSCRIPTIONS_PER_DRIVE")]
    max_subscriptions_per_drive: Option<usize>,
    /// Never send reauthorizationRequired by itself as subscriptions near expiry.
    #[arg(long, env = "GRAPH_SIM_NO_AUTO_REAUTHORIZATION")]
    no_auto_reauthorization: bool,
    /// Real milliseconds added to every Graph call (/v1.0) and every token-endpoint call before it
    /// is answered, like a round trip to the cloud (control calls, OIDC metadata, JWKS and
    /// notification delivery are not delayed).
    #[arg(long, env = "GRAPH_SIM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
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

    let defaults = Timing::default();
    let config = SimConfig {
        allow_http_loopback: args.allow_http_loopback,
        public_url: args.public_url,
        max_subscriptions_per_drive: args.max_subscriptions_per_drive,
        latency: Latency::uniform(std::time::Duration::from_millis(args.latency_ms)),
        delta_quirks: DeltaQuirks {
            seed: args.delta_quirks_seed,
            ..args.delta_quirks.unwrap_or_default()
        },
        timing: Timing {
            delta_page_size: usize::try_from(args.delta_page_size).unwrap_or(200),
            reauthorization_start: defaults
                .reauthorization_start
                .filter(|_| !args.no_auto_reauthorization),
            ..defaults
        },
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
