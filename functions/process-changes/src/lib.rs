//! process-changes: the per-drive delta reconciler, triggered by the notifications FIFO queue.
//!
//! [`handler`] translates an SQS batch into a call on `shared::process`; [`wire`] builds the
//! processor from configuration once per cold start, for the Lambda binary, the local stack and
//! the tests alike.

pub mod handler;

use std::sync::Arc;

use shared::client_state::{KeyStore, KeyStoreError};
use shared::clock::SharedClock;
use shared::config::{ClientStateKeys, ConfigError, Env, FifoQueueUrl, GraphConfig, NOTIFICATIONS_QUEUE_URL};
use shared::connect::NotificationUrls;
use shared::entra::{ClientSecretError, EntraClient, EntraConfig, EntraError};
use shared::graph::{GraphClient, GraphError};
use shared::process::{Processor, SqsBatchControl};
use shared::queue::SqsQueue;
use shared::renew::{RenewSettings, Renewer};
use shared::store::DynamoStore;
use shared::telemetry::Metrics;
use shared::tokens::RefreshingTokens;
use shared::vault::{KmsDynamoVault, VaultConfig};
use shared::walk_store::DynamoWalkStore;
use shared::walker::{WalkLimits, Walker};

pub use handler::ProcessChanges;

/// The changes FIFO queue: graphfeed's output, read by downstream services.
pub const CHANGES_QUEUE_URL: &str = "CHANGES_QUEUE_URL";
/// The notifications queue's dead-letter queue: poison messages are moved there at once.
pub const DEAD_LETTER_QUEUE_URL: &str = "DEAD_LETTER_QUEUE_URL";
/// Days the change log keeps each event (default 7).
pub const CHANGE_LOG_RETENTION_DAYS: &str = "CHANGE_LOG_RETENTION_DAYS";
/// Where Graph sends notifications: needed to recreate a removed subscription.
pub const NOTIFICATION_URL: &str = "NOTIFICATION_URL";
pub const LIFECYCLE_NOTIFICATION_URL: &str = "LIFECYCLE_NOTIFICATION_URL";

/// Why process-changes could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("process-changes is misconfigured: {0}")]
    Config(#[from] ConfigError),
    #[error("process-changes could not read its Entra client secret: {0}")]
    ClientSecret(#[from] ClientSecretError),
    #[error("process-changes could not load its clientState keys: {0}")]
    Keys(#[from] KeyStoreError),
    #[error("process-changes could not build its Entra client: {0}")]
    Entra(#[from] EntraError),
    #[error("process-changes could not build its Graph client: {0}")]
    Graph(#[from] GraphError),
}

/// The change log's retention from `CHANGE_LOG_RETENTION_DAYS` (1 to 365, default 7).
pub fn log_retention(env: &Env) -> Result<chrono::Duration, ConfigError> {
    match env.get(CHANGE_LOG_RETENTION_DAYS) {
        None => Ok(chrono::Duration::days(7)),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=365).contains(d))
            .map(chrono::Duration::days)
            .ok_or(ConfigError::Invalid {
                var: CHANGE_LOG_RETENTION_DAYS,
                reason: format!("must be a number of days from 1 to 365 (got {raw:?})"),
            }),
    }
}

/// Builds process-changes from the environment.
pub async fn wire(
    env: &Env,
    aws: &aws_config::SdkConfig,
    clock: SharedClock,
) -> Result<ProcessChanges, StartupError> {
    let vault_config = VaultConfig::from_env(env)?;
    let notifications_url =
        FifoQueueUrl::parse(NOTIFICATIONS_QUEUE_URL, env.required(NOTIFICATIONS_QUEUE_URL)?)?;
    let changes_url = FifoQueueUrl::parse(CHANGES_QUEUE_URL, env.required(CHANGES_QUEUE_URL)?)?;
    let dead_letter_url = FifoQueueUrl::parse(DEAD_LETTER_QUEUE_URL, env.required(DEAD_LETTER_QUEUE_URL)?)?;
    let retention = log_retention(env)?;
    let entra = EntraClient::new(
        EntraConfig::from_env(env)?,
        shared::entra::client_secret(env, aws).await?,
        clock.clone(),
    )?;
    let graph = GraphClient::new(&GraphConfig::from_env(env)?)?;
    let keys = KeyStore::from_config(&ClientStateKeys::from_env(env)?, aws, clock.clone()).await?;
    let urls = NotificationUrls {
        notification: env.required(NOTIFICATION_URL)?.to_owned(),
        lifecycle: env.required(LIFECYCLE_NOTIFICATION_URL)?.to_owned(),
    };
    let sqs = aws_sdk_sqs::Client::new(aws);
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let vault = Arc::new(KmsDynamoVault::from_sdk_config(aws, &vault_config, clock.clone()));
    let tokens = Arc::new(RefreshingTokens::new(Arc::new(entra), vault, clock.clone()));
    let drives = Arc::new(DynamoStore::new(
        dynamodb.clone(),
        vault_config.table_name.clone(),
    ));
    let data = Arc::new(DynamoWalkStore::new(
        dynamodb,
        vault_config.table_name.clone(),
        retention,
        clock.clone(),
    ));
    let notifications = Arc::new(SqsQueue::new(sqs.clone(), notifications_url.as_str()));
    let walker = Walker {
        graph: graph.clone(),
        tokens: tokens.clone(),
        drives: drives.clone(),
        data: data.clone(),
        changes: Arc::new(SqsQueue::new(sqs.clone(), changes_url.as_str())),
        clock: clock.clone(),
        limits: WalkLimits::default(),
    };
    // reauthorizationRequired renews with renew's own rules and settings.
    let renewer = Renewer {
        graph,
        store: drives.clone(),
        fleet: drives,
        throttles: data,
        keys: Arc::new(keys),
        tokens,
        queue: notifications.clone(),
        clock,
        urls,
        settings: RenewSettings::from_env(env)?,
    };
    Ok(ProcessChanges::new(Processor {
        walker,
        notifications,
        control: Arc::new(SqsBatchControl::new(
            sqs,
            notifications_url.as_str(),
            dead_letter_url.as_str(),
        )),
        lifecycle: Arc::new(renewer),
        metrics: Metrics::new("process-changes"),
    }))
}
