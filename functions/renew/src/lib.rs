//! renew: the scheduled run that keeps every drive's Graph subscription alive (issue 5).
//!
//! [`handler`] translates a schedule event into a call on `shared::renew` and its summary into
//! metrics; [`wire`] builds the renewer from configuration once per cold start, for the Lambda
//! binary, the local stack and the tests alike.

pub mod handler;

use std::sync::Arc;

use shared::client_state::{KeyStore, KeyStoreError};
use shared::clock::SharedClock;
use shared::config::{ClientStateKeys, ConfigError, Env, FifoQueueUrl, GraphConfig, NOTIFICATIONS_QUEUE_URL};
use shared::connect::NotificationUrls;
use shared::entra::{ClientSecretError, EntraClient, EntraConfig, EntraError};
use shared::graph::{GraphClient, GraphError};
use shared::queue::SqsQueue;
use shared::renew::{RenewSettings, Renewer};
use shared::store::DynamoStore;
use shared::tokens::RefreshingTokens;
use shared::vault::{KmsDynamoVault, VaultConfig};
use shared::walk_store::DynamoWalkStore;

pub use handler::Renew;
pub use shared::renew::{
    RENEW_CONCURRENCY, RENEW_JITTER_MINUTES, RENEW_MAX_PER_SECOND, RENEW_WINDOW_MINUTES,
};

/// Where Graph sends notifications: a recreated subscription needs them.
pub const NOTIFICATION_URL: &str = "NOTIFICATION_URL";
pub const LIFECYCLE_NOTIFICATION_URL: &str = "LIFECYCLE_NOTIFICATION_URL";

/// Why renew could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("renew is misconfigured: {0}")]
    Config(#[from] ConfigError),
    #[error("renew could not read its Entra client secret: {0}")]
    ClientSecret(#[from] ClientSecretError),
    #[error("renew could not load its clientState keys: {0}")]
    Keys(#[from] KeyStoreError),
    #[error("renew could not build its Entra client: {0}")]
    Entra(#[from] EntraError),
    #[error("renew could not build its Graph client: {0}")]
    Graph(#[from] GraphError),
}

/// Builds renew from the environment.
pub async fn wire(env: &Env, aws: &aws_config::SdkConfig, clock: SharedClock) -> Result<Renew, StartupError> {
    let settings = RenewSettings::from_env(env)?;
    let vault_config = VaultConfig::from_env(env)?;
    let notifications_url =
        FifoQueueUrl::parse(NOTIFICATIONS_QUEUE_URL, env.required(NOTIFICATIONS_QUEUE_URL)?)?;
    let urls = NotificationUrls {
        notification: env.required(NOTIFICATION_URL)?.to_owned(),
        lifecycle: env.required(LIFECYCLE_NOTIFICATION_URL)?.to_owned(),
    };
    let entra = EntraClient::new(
        EntraConfig::from_env(env)?,
        shared::entra::client_secret(env, aws).await?,
        clock.clone(),
    )?;
    let graph = GraphClient::new(&GraphConfig::from_env(env)?)?;
    let keys = KeyStore::from_config(&ClientStateKeys::from_env(env)?, aws, clock.clone()).await?;
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let vault = Arc::new(KmsDynamoVault::from_sdk_config(aws, &vault_config, clock.clone()));
    let store = Arc::new(DynamoStore::new(
        dynamodb.clone(),
        vault_config.table_name.clone(),
    ));
    // The tenant throttle lives with the walker's records; renew never writes the change log,
    // so the retention given here is never used.
    let throttles = Arc::new(DynamoWalkStore::new(
        dynamodb,
        vault_config.table_name.clone(),
        chrono::Duration::days(7),
        clock.clone(),
    ));
    Ok(Renew::new(Renewer {
        graph,
        store: store.clone(),
        fleet: store,
        throttles,
        keys: Arc::new(keys),
        tokens: Arc::new(RefreshingTokens::new(Arc::new(entra), vault, clock.clone())),
        queue: Arc::new(SqsQueue::new(
            aws_sdk_sqs::Client::new(aws),
            notifications_url.as_str(),
        )),
        clock,
        urls,
        settings,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn offline_aws() -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build()
    }

    fn env_without(var: &str) -> Env {
        let pairs = [
            ("TABLE_NAME", "graphfeed-table"),
            ("KMS_KEY_ID", "arn:aws:kms:us-east-1:123456789012:key/1"),
            (
                NOTIFICATIONS_QUEUE_URL,
                "https://sqs.us-east-1.amazonaws.com/123456789012/graphfeed-notifications.fifo",
            ),
            (NOTIFICATION_URL, "https://api.example/notifications"),
            (LIFECYCLE_NOTIFICATION_URL, "https://api.example/lifecycle"),
        ];
        Env::from_pairs(pairs.into_iter().filter(|(k, _)| *k != var))
    }

    #[tokio::test]
    async fn renew_refuses_to_start_without_the_urls_a_recreated_subscription_needs() {
        for var in [
            NOTIFICATION_URL,
            LIFECYCLE_NOTIFICATION_URL,
            NOTIFICATIONS_QUEUE_URL,
        ] {
            let error = wire(&env_without(var), &offline_aws(), shared::clock::system())
                .await
                .err()
                .unwrap();
            assert!(error.to_string().contains(var), "{error}");
        }
    }

    #[tokio::test]
    async fn renew_refuses_a_renewal_window_it_cannot_honour() {
        let env = env_without("").with(RENEW_WINDOW_MINUTES, "50000");
        let error = wire(&env, &offline_aws(), shared::clock::system())
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains(RENEW_WINDOW_MINUTES), "{error}");
    }

    #[test]
    fn the_schedule_sample_is_an_eventbridge_scheduled_event() {
        let event: aws_lambda_events::eventbridge::EventBridgeEvent =
            serde_json::from_str(include_str!("../../../events/renew-schedule.json")).unwrap();
        assert_eq!(event.detail_type, "Scheduled Event");
        assert_eq!(event.source, "aws.events");
    }
}
