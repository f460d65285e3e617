//! The local stack: graphfeed's functions served on one machine, shaped by `template.yaml`.
//!
//! - [`template`] reads the template; [`bootstrap`] creates its queues, secrets, table and KMS
//!   key in moto (or
//!   any endpoint `AWS_ENDPOINT_URL` names);
//! - [`gateway`] serves the template's HTTP API routes, handing each request in-process to the
//!   function's real handler;
//! - [`poller`] stands in for an SQS event source mapping (process-changes' on the notifications
//!   queue): receive, invoke the handler in-process, delete what it did not report failed;
//! - [`schedule`] stands in for EventBridge: a timer firing renew on the template's schedule;
//! - [`serve`] puts them together for `make local` and for the integration tests.

pub mod bootstrap;
pub mod demo;
pub mod gateway;
pub mod poller;
pub mod schedule;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use shared::clock::SharedClock;
use shared::config::Env;

use crate::bootstrap::{Options, Stack};
use crate::gateway::HttpFunction;
use crate::template::Template;

/// The region the local stack uses when `AWS_REGION` is unset.
pub const DEFAULT_REGION: &str = "us-east-1";

/// An SDK config for a local AWS endpoint (moto), with dummy credentials when none are set.
pub async fn local_aws(endpoint: &str, region: &str) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region.to_owned()));
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "local-stack",
        ));
    }
    loader.load().await
}

/// The template parameters a local stack runs with: graph-sim's default API app, multi-tenant
/// (graph-sim makes a new tenant per user).
pub fn local_parameters() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("EntraTenantId".to_owned(), "organizations".to_owned()),
        ("EntraClientId".to_owned(), graph_sim::DEFAULT_APP_ID.to_owned()),
        (
            "EntraClientSecret".to_owned(),
            graph_sim::DEFAULT_CLIENT_SECRET.to_owned(),
        ),
    ])
}

/// The simulated user the connect samples in `events/` name: `make local` creates it in
/// graph-sim, so `cargo lambda invoke connect --data-file events/connect-post.json` connects it.
pub const SAMPLE_TENANT_ID: &str = "7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c";
pub const SAMPLE_USER_ID: &str = "3c1e5b9a-7d2f-4e8a-b6c4-0f9e8d7c6b5a";

/// Creates the sample user in a local graph-sim.
pub fn create_sample_user(sim: &graph_sim::Sim) -> Result<graph_sim::CreatedUser, graph_sim::SimError> {
    sim.create_user(graph_sim::NewUser {
        tenant_id: Some(SAMPLE_TENANT_ID.to_owned()),
        user_id: Some(SAMPLE_USER_ID.to_owned()),
        display_name: Some("Sample User".to_owned()),
        ..Default::default()
    })
}

/// What to serve.
pub struct ServeConfig {
    /// Where to listen; port 0 picks one.
    pub listen: SocketAddr,
    /// Stands in for the CloudFormation stack name.
    pub stack: String,
    pub region: String,
    pub aws: aws_config::SdkConfig,
    /// Values that win over what the template gives each function (the user's environment).
    pub overrides: Env,
    /// Secret values to store instead of generating them (logical id → value).
    pub secret_values: BTreeMap<String, String>,
    /// Template parameter values ([`local_parameters`] for graph-sim).
    pub parameters: BTreeMap<String, String>,
    pub clock: SharedClock,
    /// Run process-changes on the notifications queue (the SQS event source emulator), as
    /// `make local` does. Tests that read the notifications queue themselves leave it off.
    pub run_process_changes: bool,
    /// Fire renew every this often (`make local`: the template's schedule, or
    /// `RENEW_EVERY_SECONDS`); `None` leaves it to the caller (tests call it directly).
    pub renew_every: Option<std::time::Duration>,
}

/// A running local stack.
pub struct Running {
    pub addr: SocketAddr,
    pub stack: Stack,
    /// The environment notify was built from.
    pub notify_env: Env,
    /// The environment connect was built from.
    pub connect_env: Env,
    /// The environment process-changes was built from.
    pub process_env: Env,
    /// process-changes, built from `process_env` (tests invoke it directly).
    pub process_changes: Arc<process_changes::ProcessChanges>,
    /// The event source emulator feeding it, when [`ServeConfig::run_process_changes`] is set.
    pub poller: Option<poller::PollerHandle>,
    /// The environment renew was built from.
    pub renew_env: Env,
    /// renew, built from `renew_env` (tests invoke it directly).
    pub renew: Arc<renew::Renew>,
    /// The schedule firing it, when [`ServeConfig::renew_every`] is set.
    pub renew_timer: Option<schedule::TimerHandle>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (and polling, and the schedule).
    pub fn stop(self) {
        if let Some(timer) = self.renew_timer {
            timer.stop();
        }
        self.server.abort();
    }

    /// The ARN and URL process-changes is mapped to, as the template says.
    pub fn process_changes_source(
        &self,
        template: &Template,
    ) -> Result<poller::PollerConfig, template::TemplateError> {
        poller::PollerConfig::from_template(template, &self.stack, "ProcessChangesFunction")
    }
}

/// Why the local stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error(transparent)]
    Notify(#[from] notify::StartupError),
    #[error(transparent)]
    Connect(#[from] connect::StartupError),
    #[error(transparent)]
    ProcessChanges(#[from] process_changes::StartupError),
    #[error(transparent)]
    Renew(#[from] renew::StartupError),
    #[error(transparent)]
    Gateway(#[from] gateway::GatewayError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

/// Bootstraps the template's resources, builds each function from the environment the template
/// gives it (overridden by `overrides`), and serves the template's routes.
pub async fn serve(template: &Template, config: ServeConfig) -> Result<Running, ServeError> {
    let options = Options {
        stack: config.stack.clone(),
        region: config.region.clone(),
        secret_values: config.secret_values.clone(),
        parameters: config.parameters.clone(),
    };
    let stack = bootstrap::bootstrap(template, &config.aws, &options).await?;

    // Bind first: the notification URLs default to this server's own routes.
    let listen_error = |e: std::io::Error| ServeError::Listen {
        addr: config.listen,
        reason: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let mut overrides = config.overrides.clone();
    for (var, path) in [
        ("NOTIFICATION_URL", "/notifications"),
        ("LIFECYCLE_NOTIFICATION_URL", "/lifecycle"),
    ] {
        if overrides.get(var).is_none() {
            overrides = overrides.with(var, &format!("http://{addr}{path}"));
        }
    }

    let notify_env = function_env(&stack, template, "NotifyFunction", &overrides)?;
    let notify = notify::wire(&notify_env, &config.aws, config.clock.clone()).await?;
    let connect_env = function_env(&stack, template, "ConnectFunction", &overrides)?;
    let connect = connect::wire(&connect_env, &config.aws, config.clock.clone()).await?;
    let process_env = function_env(&stack, template, "ProcessChangesFunction", &overrides)?;
    let process = Arc::new(process_changes::wire(&process_env, &config.aws, config.clock.clone()).await?);
    let poller = if config.run_process_changes {
        let source = poller::PollerConfig::from_template(template, &stack, "ProcessChangesFunction")?;
        let handler = process.clone();
        Some(poller::spawn_poller(
            aws_sdk_sqs::Client::new(&config.aws),
            source,
            poller::sqs_handler(move |event, deadline| {
                let handler = handler.clone();
                async move { Ok(handler.handle(event, deadline).await) }
            }),
        ))
    } else {
        None
    };
    let renew_env = function_env(&stack, template, "RenewFunction", &overrides)?;
    let renew = Arc::new(renew::wire(&renew_env, &config.aws, config.clock.clone()).await?);
    let renew_timer = config.renew_every.map(|every| {
        let timeout = template
            .function_property("RenewFunction", "Timeout")
            .and_then(|t| t.as_u64())
            .map_or(
                std::time::Duration::from_secs(300),
                std::time::Duration::from_secs,
            );
        let handler = renew.clone();
        let clock = config.clock.clone();
        let tick: schedule::Tick = Arc::new(move |deadline| {
            let handler = handler.clone();
            let event = schedule::schedule_event(clock.now());
            Box::pin(async move {
                let summary = handler.handle(event, deadline).await;
                serde_json::to_value(summary).unwrap_or_default()
            })
        });
        schedule::spawn_timer("renew", every, timeout, tick)
    });
    let mut functions: HashMap<String, Arc<dyn HttpFunction>> = HashMap::new();
    functions.insert("NotifyFunction".into(), Arc::new(notify));
    functions.insert("ConnectFunction".into(), Arc::new(connect));

    let router = gateway::router(&template.http_routes(), &functions)?;
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the local HTTP API stopped");
        }
    });
    Ok(Running {
        addr,
        stack,
        notify_env,
        connect_env,
        process_env,
        process_changes: process,
        poller,
        renew_env,
        renew,
        renew_timer,
        server,
    })
}

/// The template's environment for `function`, resolved against `stack`, with `overrides` on top.
/// A `CLIENT_STATE_KEY` override replaces the template's key secret (the user chose a key).
/// An overridden variable is not resolved, so one naming what the local stack does not create
/// (process-changes' `NOTIFICATION_URL`, a `!Sub` on the HTTP API) is fine once overridden.
pub fn function_env(
    stack: &Stack,
    template: &Template,
    function: &str,
    overrides: &Env,
) -> Result<Env, template::TemplateError> {
    let mut pairs = BTreeMap::new();
    for (name, value) in template.function_environment(function) {
        if overrides.get(&name).is_none() {
            let resolved = stack.resolve(&value)?;
            pairs.insert(name, resolved);
        }
    }
    if overrides.get(shared::config::CLIENT_STATE_KEY).is_some()
        && overrides
            .get(shared::config::CLIENT_STATE_KEYS_SECRET_ARN)
            .is_none()
    {
        pairs.remove(shared::config::CLIENT_STATE_KEYS_SECRET_ARN);
    }
    for (k, v) in overrides.iter() {
        pairs.insert(k.to_owned(), v.to_owned());
    }
    Ok(Env::from_pairs(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
}
