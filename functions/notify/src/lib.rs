//! notify: Graph's webhook receiver (routes `POST /notifications` and `POST /lifecycle`).
//!
//! [`handler`] translates API Gateway requests into calls on `shared::intake` and the queue;
//! [`wire`] builds the handler from configuration once per cold start, for the Lambda binary
//! (`main.rs`) and the local stack alike.

pub mod handler;

use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::client_state::{KeyStore, KeyStoreError};
use shared::clock::SharedClock;
use shared::config::{ConfigError, Env, NotifyConfig};
use shared::queue::SqsQueue;

pub use handler::Notify;

/// Why notify could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("notify is misconfigured: {0}")]
    Config(#[from] ConfigError),
    #[error("notify could not load its clientState keys: {0}")]
    Keys(#[from] KeyStoreError),
}

/// Builds notify from the environment: typed config, the SQS adapter, the key store (one secret
/// read). Logs how long the secret fetch took, separately from the rest of init.
pub async fn wire(
    env: &Env,
    aws: &aws_config::SdkConfig,
    clock: SharedClock,
) -> Result<Notify, StartupError> {
    let config = NotifyConfig::from_env(env)?;
    let started = Instant::now();
    let keys = KeyStore::from_config(&config.client_state_keys, aws, clock.clone()).await?;
    tracing::info!(
        secret_fetch_ms = started.elapsed().as_secs_f64() * 1000.0,
        key_source = match config.client_state_keys {
            shared::config::ClientStateKeys::SecretArn(_) => "secrets-manager",
            shared::config::ClientStateKeys::Single(_) => "env",
        },
        "clientState keys loaded"
    );
    let queue = SqsQueue::new(sqs_client(aws), config.notifications_queue_url.as_str());
    Ok(Notify::new(Arc::new(queue), Arc::new(keys), clock))
}

/// An SQS client whose every call fits notify's budget: Graph counts an answer later than 3 s as
/// a failure and, when that happens often, marks the endpoint slow and then drops notifications
/// (graph-protocol.md §3.3). So a failing SQS must produce a fast 503, not a slow one: short
/// per-attempt timeouts and one quick SDK retry.
fn sqs_client(aws: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    use aws_sdk_sqs::config::retry::RetryConfig;
    use aws_sdk_sqs::config::timeout::TimeoutConfig;
    let config = aws_sdk_sqs::config::Builder::from(aws)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(Duration::from_millis(50)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(500))
                .operation_attempt_timeout(Duration::from_millis(700))
                .operation_timeout(Duration::from_millis(1500))
                .build(),
        )
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}
