//! graph-sim: a local Microsoft Graph and Entra ID simulator for graphfeed's tests and `make local`.
//!
//! It serves Graph under `/v1.0` (subscriptions with their real rules and error texts, the
//! validation handshake, drives, the drive delta feed with OneDrive's paging and content quirks
//! ([`delta`]), simple uploads and upload sessions with their upload URLs ([`uploads`]),
//! throttling with Retry-After and penalties ([`throttle`])), Entra ID at the root of the same app
//! (OIDC metadata, JWKS with key rotation, the token endpoint for on-behalf-of, refresh, client
//! credentials and the device-code flow of public client apps; see [`entra`]) and a control API
//! under `/_sim`
//! (users, tenants, apps and tokens, drive changes and bulk populates, delta quirks, the clock,
//! faults, throttles, settings, injected auth failures, counters, the delivery log, bulk-seeded
//! subscriptions for benchmarks). Drive changes become change notifications delivered to webhooks
//! with Graph's batching, deadlines, retries and throttling states; lifecycle notifications
//! (`reauthorizationRequired` on §4's schedule, `subscriptionRemoved`, `missed`) go to lifecycle
//! URLs the same way. The rules come from `shared/reference/graph-protocol.md`; each module names
//! its sections.
//!
//! A [`Latency`] ([`SimConfig::latency`], [`Sim::set_latency`], `--latency-ms`) adds a real-time
//! delay to every Graph call and every token-endpoint call, so a benchmark sees cloud-like round
//! trips; requests wait side by side, never in a queue.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let running = graph_sim::start(graph_sim::SimConfig::default(), "127.0.0.1:0".parse()?).await?;
//! let user = running.sim().create_user(graph_sim::NewUser::default())?;
//! // A user's token for graphfeed's API, as a client app would send it:
//! let api_token = running.sim().mint_api_token(&graph_sim::ApiToken::new(&user.user_id))?;
//! // ... point graphfeed at running.graph_base_url() and running.authority_host() ...
//! running.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! All simulated time is read from [`SimConfig::clock`], a [`shared::clock::OffsetClock`]: give
//! the same clock to graphfeed and to the simulator and advance it once for both.

pub mod control;
pub mod delivery;
pub mod delta;
pub mod drive;
pub mod entra;
pub mod errors;
pub mod faults;
pub mod graph;
pub mod identity;
mod rng;
mod sim;
pub mod state;
pub mod subscriptions;
pub mod throttle;
pub mod time;
pub mod uploads;
pub mod validation;

use std::net::SocketAddr;
use std::time::Duration as StdDuration;

use axum::Router;
use chrono::Duration;
use shared::clock::OffsetClock;

pub use crate::delivery::{DeliveryAttempt, EndpointReport, NotificationKind, Outcome};
pub use crate::delta::DeltaQuirks;
pub use crate::drive::{
    ConflictBehavior, Content, DeltaCursor, DeltaToken, Item, ItemUpdate, JournalEntry, NewItem, Populate,
    Populated,
};
pub use crate::entra::device::{DeviceCodeInfo, DeviceCodeStatus};
pub use crate::entra::errors::EntraError;
pub use crate::entra::jwt::{ApiToken, Audience, MintedToken, Tamper, TokenVersion};
pub use crate::entra::keys::SigningKeyInfo;
pub use crate::entra::{
    AuthFailure, CONSUMER_TENANT_ID, ClientApp, DEFAULT_API_SCOPE, DEFAULT_APP_ID_URI, DEFAULT_CLIENT_APP_ID,
    DEFAULT_CLIENT_APP_NAME, DEFAULT_CLIENT_SECRET, RegisterApp, RegisterClientApp, RegisteredApp, Repeat,
};
pub use crate::errors::SimError;
pub use crate::faults::Fault;
pub use crate::identity::{DEFAULT_APP_ID, IssuedToken, Tenant};
pub use crate::sim::{CreatedUser, NewSimError, NewTenant, NewUser, SeedSubscription, Sim};
pub use crate::state::{Counters, Settings};
pub use crate::subscriptions::{LifecycleEvent, Subscription};
pub use crate::throttle::{Throttle, ThrottleStatus};
pub use crate::uploads::{Destination, UploadSessionInfo};

/// Deadlines, windows and thresholds. Fields named for real time are real-time budgets (HTTP
/// deadlines); the rest are on the simulated clock. Defaults are Graph's values
/// (graph-protocol.md §2, §3.3); tests may shorten the real-time ones with [`Timing::fast`].
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Real time the endpoint has to answer a validation handshake (§2: 10 s).
    pub validation: StdDuration,
    /// Real time for a first delivery attempt; a 2xx within it is delivered (§3.3: 3 s).
    pub first_delivery: StdDuration,
    /// Real time for each retry (§3.3: 10 s).
    pub retry: StdDuration,
    /// Real time the delivery task waits after new work arrives, so a burst shares one POST.
    pub batch_window: StdDuration,
    /// Real-time period at which the delivery task looks for due work without being woken.
    pub tick: StdDuration,
    /// Most notifications in one POST.
    pub max_batch: usize,
    /// Sim-time waits before retry 1, 2, ...; the last one repeats.
    pub retry_backoff: Vec<Duration>,
    /// Sim time after the first attempt when a failing notification is dropped (§3.3: 4 h).
    pub retry_for: Duration,
    /// The rolling sim-time window of endpoint health (§3.3: 10 min).
    pub health_window: Duration,
    /// Responses needed in the window before the endpoint's state is judged.
    pub health_min_samples: usize,
    /// More than this share of responses slower than `first_delivery` → `slow` (§3.3: 10%).
    pub slow_fraction: f64,
    /// More than this share slower than `retry` → `drop` (§3.3: 15%).
    pub drop_fraction: f64,
    /// How long new notifications wait while the endpoint is `slow` (§3.3: 10 min, sim).
    pub slow_delay: Duration,
    /// How long new notifications are dropped while the endpoint is in `drop` (§3.3: 10 min, sim).
    pub drop_period: Duration,
    /// Sim-time lifetime of issued access tokens (1 h).
    pub token_lifetime: Duration,
    /// How long a refresh token keeps working after a refresh redeemed it for a new one (sim
    /// time, default 10 minutes); `None` keeps it working for good, as Entra does. See
    /// the rotation policy in the README's Entra section.
    pub refresh_token_reuse_grace: Option<Duration>,
    /// Most items in one delta page (§5.3: 200 for OneDrive collections); `$top` is ignored.
    /// [`DeltaQuirks::page_size`] overrides it per drive.
    pub delta_page_size: usize,
    /// `reauthorizationRequired` is sent automatically once a subscription with a
    /// lifecycleNotificationUrl has at most this long left (§4: 180 minutes), then at halving
    /// intervals; `None` never sends it by itself (see [`crate::subscriptions::next_reauthorization`]).
    pub reauthorization_start: Option<Duration>,
    /// Below this much time left the reminders come at a steady interval instead (§4: 60 minutes).
    pub reauthorization_steady_below: Duration,
    /// The steady interval (§4: every 15 minutes).
    pub reauthorization_steady_interval: Duration,
    /// How long a device code can be approved and redeemed (sim time; Entra's `expires_in`, 900 s).
    pub device_code_lifetime: Duration,
    /// The `interval` of a device code: a poll of the token endpoint sooner than this after the
    /// previous poll of the same code is answered `slow_down`. **Real time**, since a polling
    /// client sleeps in real time (Entra: 5 s; the JSON carries whole seconds, rounded up; zero
    /// never answers `slow_down`).
    pub device_code_interval: StdDuration,
    /// How long an upload session's URL works (sim time from its creation, not extended by
    /// fragments; the answers' `expirationDateTime`). OneDrive's are seen to last 24 hours (§9).
    pub upload_session_lifetime: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            validation: StdDuration::from_secs(10),
            first_delivery: StdDuration::from_secs(3),
            retry: StdDuration::from_secs(10),
            batch_window: StdDuration::from_millis(50),
            tick: StdDuration::from_millis(50),
            max_batch: 100,
            retry_backoff: (0..8).map(|step| Duration::minutes(1 << step)).collect(),
            retry_for: Duration::hours(4),
            health_window: Duration::minutes(10),
            health_min_samples: 10,
            slow_fraction: 0.10,
            drop_fraction: 0.15,
            slow_delay: Duration::minutes(10),
            drop_period: Duration::minutes(10),
            token_lifetime: Duration::hours(1),
            refresh_token_reuse_grace: Some(Duration::minutes(10)),
            delta_page_size: 200,
            reauthorization_start: Some(Duration::minutes(180)),
            reauthorization_steady_below: Duration::minutes(60),
            reauthorization_steady_interval: Duration::minutes(15),
            device_code_lifetime: Duration::minutes(15),
            device_code_interval: StdDuration::from_secs(5),
            upload_session_lifetime: Duration::hours(24),
        }
    }
}

impl Timing {
    /// Graph's rules with short real-time deadlines (validation 1 s, first delivery 300 ms,
    /// retries 1 s, batching 20 ms, device-code polling every 1 s), so tests of timeouts run in
    /// well under a second each. Sim-time values are unchanged.
    pub fn fast() -> Self {
        Self {
            validation: StdDuration::from_secs(1),
            first_delivery: StdDuration::from_millis(300),
            retry: StdDuration::from_secs(1),
            batch_window: StdDuration::from_millis(20),
            tick: StdDuration::from_millis(20),
            device_code_interval: StdDuration::from_secs(1),
            ..Self::default()
        }
    }
}

/// Real time added to calls before they are answered, as a network round trip to the cloud would
/// (graphfeed's Lambdas talk to Graph and Entra over the internet). Zero, the default, adds
/// nothing. `graph` delays every call under `/v1.0` and every upload-URL call (faulted,
/// throttled and refused calls too; a fault's own `delay_ms` comes on top), `token` every call of
/// Entra's token and devicecode endpoints (`POST /{tenant}/oauth2/v2.0/token`, `…/devicecode`).
/// Control calls (`/_sim`),
/// OIDC metadata, JWKS, validation handshakes and notification delivery are never delayed.
///
/// The delay is a `tokio::time::sleep` taken with no lock held, so concurrent calls wait side by
/// side: 32 calls at 50 ms take about 50 ms, not 1.6 s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(into = "LatencyMillis")]
pub struct Latency {
    pub graph: StdDuration,
    pub token: StdDuration,
}

impl Latency {
    /// The same delay for Graph and for the token endpoint.
    pub fn uniform(each: StdDuration) -> Self {
        Self {
            graph: each,
            token: each,
        }
    }
}

/// How [`Latency`] appears in the settings document: `{"graph_ms": 50, "token_ms": 50}`.
#[derive(serde::Serialize)]
struct LatencyMillis {
    graph_ms: u64,
    token_ms: u64,
}

impl From<Latency> for LatencyMillis {
    fn from(latency: Latency) -> Self {
        let millis = |duration: StdDuration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self {
            graph_ms: millis(latency.graph),
            token_ms: millis(latency.token),
        }
    }
}

/// The size rules of uploads (graph-protocol.md §9). Defaults are OneDrive's documented limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// The largest body of a simple upload (`PUT …/content`); larger → 413. OneDrive's API docs
    /// say 4 MB (the default, 4 MiB here); newer Graph docs say 250 MB.
    pub simple_max_bytes: u64,
    /// Each fragment sent to an upload URL must be smaller than this (§9.2: 60 MiB); one this
    /// long or longer → 413 `maxFragmentLengthExceeded`.
    pub fragment_max_bytes: u64,
    /// Every fragment but the last must be a multiple of this (§9.2: 320 KiB = 327,680 bytes;
    /// otherwise "some files fail to commit"); the simulator refuses such a fragment at once with
    /// 400 `invalidRange`. `None` accepts any length.
    pub fragment_multiple: Option<u64>,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            simple_max_bytes: 4 * 1024 * 1024,
            fragment_max_bytes: 60 * 1024 * 1024,
            fragment_multiple: Some(320 * 1024),
        }
    }
}

/// How a simulator behaves.
#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    /// Accept `http://` notification URLs on 127.0.0.1, localhost and [::1] (Graph requires
    /// HTTPS, §1.2; local runs have no certificate).
    pub allow_http_loopback: bool,
    /// The simulated clock. Share a clone with the code under test.
    pub clock: OffsetClock,
    pub timing: Timing,
    /// Live subscriptions allowed per drive; `None` means no limit (§1.5 lists none for driveItem).
    /// Beyond it a create is 403 `ExtensionError` "…Maximum number of subscriptions has been
    /// reached]". [`Sim::set_max_subscriptions_per_drive`] changes it at run time.
    pub max_subscriptions_per_drive: Option<usize>,
    /// Delta quirks for every drive (all off by default); [`Sim::set_default_delta_quirks`] and
    /// [`Sim::set_delta_quirks`] change them at run time.
    pub delta_quirks: DeltaQuirks,
    /// The base URL clients reach the simulator at (`http://graph-sim:8790`), used in Entra
    /// issuers, metadata and delta links. `http://{bound address}` when `None`.
    pub public_url: Option<String>,
    /// Real time added to Graph and token-endpoint calls (none by default); [`Sim::set_latency`]
    /// changes it at run time.
    pub latency: Latency,
    /// Size limits of simple uploads and upload-session fragments.
    pub uploads: UploadLimits,
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sim(#[from] NewSimError),
}

/// The whole HTTP app: Graph under `/v1.0`, upload URLs under `/_upload`, control under
/// `/_sim`, Entra at the root (`/{tenant}/...`).
pub fn app(sim: Sim) -> Router {
    Router::new()
        .nest(graph::GRAPH_PREFIX, graph::router(sim.clone()))
        .merge(graph::uploads::url_router(sim.clone()))
        .nest("/_sim", control::router())
        .merge(entra::http::router())
        .with_state(sim)
}

/// A simulator serving HTTP. Dropping it stops the server and the delivery task abruptly;
/// [`RunningSim::shutdown`] stops them gracefully.
#[derive(Debug)]
pub struct RunningSim {
    addr: SocketAddr,
    sim: Sim,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    delivery: Option<tokio::task::JoinHandle<()>>,
}

/// Binds `listen` (use port 0 for any free port) and starts serving and delivering.
pub async fn start(config: SimConfig, listen: SocketAddr) -> Result<RunningSim, StartError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind { addr: listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr: listen, source })?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let sim = Sim::new(config, &public_url)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = app(sim.clone());
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                // A dropped sender also means stop.
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "graph-sim server stopped with an error");
        }
    });
    let delivery = sim.spawn_delivery();
    tracing::info!(%addr, "graph-sim started");
    Ok(RunningSim {
        addr,
        sim,
        stop: Some(stop),
        server: Some(server),
        delivery: Some(delivery),
    })
}

impl RunningSim {
    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr/v1.0` (or the configured public URL + `/v1.0`), the Graph base URL to give
    /// graphfeed (`GRAPH_BASE_URL`).
    pub fn graph_base_url(&self) -> String {
        self.sim.graph_base_url().to_owned()
    }

    /// `http://addr` (or the configured public URL), the Entra authority host to give graphfeed
    /// (`ENTRA_AUTHORITY_HOST`).
    pub fn authority_host(&self) -> String {
        self.sim.authority_host().to_owned()
    }

    /// `http://addr/_sim`, the control API.
    pub fn control_url(&self) -> String {
        format!("http://{}/_sim", self.addr)
    }

    /// A handle for driving the simulator directly.
    pub fn sim(&self) -> Sim {
        self.sim.clone()
    }

    /// Stops delivering, then stops serving after in-flight requests finish (at most 5 s).
    pub async fn shutdown(mut self) {
        if let Some(delivery) = self.delivery.take() {
            delivery.abort();
            let _ = delivery.await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(StdDuration::from_secs(5), &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        for task in [self.delivery.take(), self.server.take()].into_iter().flatten() {
            task.abort();
        }
    }
}
