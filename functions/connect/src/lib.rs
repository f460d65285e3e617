//! connect: the user-facing routes (`POST /connect`, `GET /connect`, `DELETE /connect`, and
//! `GET /changes`, the caller's change events from the change log).
//!
//! [`handler`] translates requests into calls on `shared::connect`; [`wire`] builds it from
//! configuration once per cold start, for the Lambda binary and the local stack alike.

pub mod handler;

use std::sync::Arc;

use shared::auth::{AuthConfig, TokenValidator};
use shared::client_state::{KeyStore, KeyStoreError};
use shared::clock::SharedClock;
use shared::config::{ClientStateKeys, ConfigError, Env, FifoQueueUrl, GraphConfig, NOTIFICATIONS_QUEUE_URL};
use shared::connect::Connector;
use shared::entra::{EntraClient, EntraConfig, EntraError};
use shared::graph::{GraphClient, GraphError};
use shared::queue::SqsQueue;
use shared::renew::RenewSettings;
use shared::secrets::SecretError;
use shared::store::DynamoStore;
use shared::vault::{KmsDynamoVault, VaultConfig};
use shared::walk_store::DynamoWalkStore;

pub use handler::Connect;

pub use shared::entra::{ENTRA_CLIENT_SECRET, ENTRA_CLIENT_SECRET_ARN};
pub const NOTIFICATION_URL: &str = "NOTIFICATION_URL";
pub const LIFECYCLE_NOTIFICATION_URL: &str = "LIFECYCLE_NOTIFICATION_URL";
pub use shared::renew::RENEW_WINDOW_MINUTES;

/// Why connect could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connect is misconfigured: {0}")]
    Config(#[from] ConfigError),
    #[error("connect could not read a secret: {0}")]
    Secret(#[from] SecretError),
    #[error("connect could not read its Entra client secret: {0}")]
    ClientSecret(#[from] shared::entra::ClientSecretError),
    #[error("connect could not load its clientState keys: {0}")]
    Keys(#[from] KeyStoreError),
    #[error("connect could not build its Entra client: {0}")]
    Entra(#[from] EntraError),
    #[error("connect could not build its Graph client: {0}")]
    Graph(#[from] GraphError),
}

/// Builds connect from the environment.
pub async fn wire(
    env: &Env,
    aws: &aws_config::SdkConfig,
    clock: SharedClock,
) -> Result<Connect, StartupError> {
    let auth = AuthConfig::from_env(env)?;
    let entra = EntraConfig::from_env(env)?;
    let client_secret = shared::entra::client_secret(env, aws).await?;
    let queue_url = FifoQueueUrl::parse(NOTIFICATIONS_QUEUE_URL, env.required(NOTIFICATIONS_QUEUE_URL)?)?;
    let vault_config = VaultConfig::from_env(env)?;
    let keys = KeyStore::from_config(&ClientStateKeys::from_env(env)?, aws, clock.clone()).await?;
    let renew = RenewSettings::from_env(env)?;
    let urls = handler::ConfiguredUrls {
        notification: env.get(NOTIFICATION_URL).map(str::to_owned),
        lifecycle: env.get(LIFECYCLE_NOTIFICATION_URL).map(str::to_owned),
    };
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| {
            StartupError::Entra(EntraError::Transport {
                reason: e.to_string(),
            })
        })?;
    let connector = Connector {
        entra: EntraClient::new(entra, client_secret, clock.clone())?,
        graph: GraphClient::new(&GraphConfig::from_env(env)?)?,
        vault: Arc::new(KmsDynamoVault::from_sdk_config(aws, &vault_config, clock.clone())),
        store: Arc::new(DynamoStore::new(
            aws_sdk_dynamodb::Client::new(aws),
            vault_config.table_name.clone(),
        )),
        queue: Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(aws), queue_url.as_str())),
        keys: Arc::new(keys),
        clock: clock.clone(),
        renew_window: renew.window,
        jitter: renew.jitter,
        // Reads only: the retention and clock matter to writers.
        log: Arc::new(DynamoWalkStore::new(
            aws_sdk_dynamodb::Client::new(aws),
            vault_config.table_name.clone(),
            chrono::Duration::days(7),
            clock.clone(),
        )),
    };
    Ok(Connect::new(
        TokenValidator::new(auth, http, clock),
        connector,
        urls,
    ))
}
