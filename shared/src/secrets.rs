//! Reading secrets: from AWS Secrets Manager in a deployment, from an env value locally.
//!
//! A function is given a secret's ARN (`CLIENT_STATE_KEYS_SECRET_ARN`, `ENTRA_CLIENT_SECRET_ARN`),
//! reads it once per cold start, and may read only that ARN (the template's policy says so).

use futures::future::BoxFuture;
use secrecy::SecretString;

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("could not read secret {arn} from Secrets Manager: {reason}")]
    Fetch { arn: String, reason: String },
    #[error("secret {arn} has no SecretString (binary secrets are not supported)")]
    NotAString { arn: String },
}

/// A place a secret can be read from.
pub trait SecretSource: Send + Sync {
    /// Reads the secret's current value.
    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, SecretError>>;
}

/// A secret held in AWS Secrets Manager, read by ARN.
pub struct SecretsManagerSecret {
    client: aws_sdk_secretsmanager::Client,
    arn: String,
}

impl SecretsManagerSecret {
    pub fn new(client: aws_sdk_secretsmanager::Client, arn: impl Into<String>) -> Self {
        Self {
            client,
            arn: arn.into(),
        }
    }
}

impl SecretSource for SecretsManagerSecret {
    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, SecretError>> {
        Box::pin(async move {
            let out = self
                .client
                .get_secret_value()
                .secret_id(&self.arn)
                .send()
                .await
                .map_err(|e| SecretError::Fetch {
                    arn: self.arn.clone(),
                    reason: aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string(),
                })?;
            let value = out.secret_string.ok_or_else(|| SecretError::NotAString {
                arn: self.arn.clone(),
            })?;
            Ok(SecretString::from(value))
        })
    }
}

/// A secret given directly (an env value locally, or a test's value).
pub struct StaticSecret(SecretString);

impl StaticSecret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }
}

impl SecretSource for StaticSecret {
    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, SecretError>> {
        let value = self.0.clone();
        Box::pin(async move { Ok(value) })
    }
}
