//! Typed configuration, read once per cold start, failing fast with the variable's name.
//!
//! The names are one contract for every function, the local stack and the tests (see the
//! README's configuration reference). Each function requires only the ones it uses.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::client_state::DEV_CLIENT_STATE_KEY_HEX;

pub const GRAPH_BASE_URL: &str = "GRAPH_BASE_URL";
pub const ENTRA_AUTHORITY_HOST: &str = "ENTRA_AUTHORITY_HOST";
pub const NOTIFICATIONS_QUEUE_URL: &str = "NOTIFICATIONS_QUEUE_URL";
pub const CLIENT_STATE_KEYS_SECRET_ARN: &str = "CLIENT_STATE_KEYS_SECRET_ARN";
pub const CLIENT_STATE_KEY: &str = "CLIENT_STATE_KEY";
/// The one DynamoDB table (docs/data-model.md).
pub const TABLE_NAME: &str = "TABLE_NAME";
/// The KMS key the token vault encrypts under: a key id, key ARN, alias name or alias ARN.
pub const KMS_KEY_ID: &str = "KMS_KEY_ID";
/// How long a warm container may keep a decrypted token (seconds; `0` turns the cache off).
pub const TOKEN_CACHE_SECONDS: &str = "TOKEN_CACHE_SECONDS";
pub const DEFAULT_GRAPH_BASE_URL: &str = "https://graph.microsoft.com/v1.0";
pub const DEFAULT_ENTRA_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// A configuration problem, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is required but not set")]
    Missing { var: &'static str },
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// A snapshot of the environment. Tests build one from pairs instead of touching the process env.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Self(std::env::vars().collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// Every variable, as set.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A copy with `var` set to `value`.
    pub fn with(mut self, var: &str, value: &str) -> Self {
        self.0.insert(var.to_owned(), value.to_owned());
        self
    }

    /// A set, non-blank value.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub fn required(&self, var: &'static str) -> Result<&str, ConfigError> {
        self.get(var).ok_or(ConfigError::Missing { var })
    }

    /// An absolute http(s) URL, or the default when unset.
    pub fn url_or(&self, var: &'static str, default: &str) -> Result<Url, ConfigError> {
        parse_url(var, self.get(var).unwrap_or(default))
    }

    /// Whether this process runs inside AWS Lambda proper (not an emulator that sets only the
    /// function name): the runtime sets `AWS_EXECUTION_ENV`.
    pub fn in_aws(&self) -> bool {
        self.get("AWS_EXECUTION_ENV")
            .is_some_and(|v| v.starts_with("AWS_Lambda"))
    }
}

pub(crate) fn parse_url(var: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|e| ConfigError::Invalid {
        var,
        reason: format!("{e} (got {raw:?})"),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::Invalid {
            var,
            reason: format!("must be an http(s) URL (got {raw:?})"),
        });
    }
    Ok(url)
}

/// An SQS FIFO queue URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FifoQueueUrl(String);

impl FifoQueueUrl {
    pub fn parse(var: &'static str, raw: &str) -> Result<Self, ConfigError> {
        let url = parse_url(var, raw)?;
        if !url.path().ends_with(".fifo") {
            return Err(ConfigError::Invalid {
                var,
                reason: format!("must be a FIFO queue URL ending in .fifo (got {raw:?})"),
            });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the clientState keys come from.
pub enum ClientStateKeys {
    /// The Secrets Manager secret holding the key ring (in AWS).
    SecretArn(String),
    /// One key from `CLIENT_STATE_KEY` (64 hex characters), or the documented development key.
    Single(SecretString),
}

impl std::fmt::Debug for ClientStateKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SecretArn(arn) => f.debug_tuple("SecretArn").field(arn).finish(),
            Self::Single(_) => f.write_str("Single([REDACTED])"),
        }
    }
}

impl ClientStateKeys {
    /// `CLIENT_STATE_KEYS_SECRET_ARN` wins; else `CLIENT_STATE_KEY`; else, outside AWS only, the
    /// development key (so the samples in `events/` verify). Inside AWS a missing ARN is an error.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        if let Some(arn) = env.get(CLIENT_STATE_KEYS_SECRET_ARN) {
            if !arn.starts_with("arn:") {
                return Err(ConfigError::Invalid {
                    var: CLIENT_STATE_KEYS_SECRET_ARN,
                    reason: "must be a Secrets Manager ARN (arn:...)".into(),
                });
            }
            return Ok(Self::SecretArn(arn.to_owned()));
        }
        if let Some(hex_key) = env.get(CLIENT_STATE_KEY) {
            if hex_key.len() != 64 || !hex_key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid {
                    var: CLIENT_STATE_KEY,
                    reason: "must be 64 hex characters (32 random bytes), e.g. from `openssl rand -hex 32`"
                        .into(),
                });
            }
            return Ok(Self::Single(SecretString::from(hex_key.to_owned())));
        }
        if env.in_aws() {
            return Err(ConfigError::Missing {
                var: CLIENT_STATE_KEYS_SECRET_ARN,
            });
        }
        Ok(Self::Single(SecretString::from(DEV_CLIENT_STATE_KEY_HEX)))
    }
}

/// What notify needs.
#[derive(Debug)]
pub struct NotifyConfig {
    pub notifications_queue_url: FifoQueueUrl,
    pub client_state_keys: ClientStateKeys,
}

impl NotifyConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            notifications_queue_url: FifoQueueUrl::parse(
                NOTIFICATIONS_QUEUE_URL,
                env.required(NOTIFICATIONS_QUEUE_URL)?,
            )?,
            client_state_keys: ClientStateKeys::from_env(env)?,
        })
    }
}

/// What a Graph client needs.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    pub base_url: Url,
    pub timeout: Duration,
}

impl GraphConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            base_url: env.url_or(GRAPH_BASE_URL, DEFAULT_GRAPH_BASE_URL)?,
            timeout: Duration::from_secs(20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEUE: &str = "http://127.0.0.1:5000/123456789012/graphfeed-notifications.fifo";

    #[test]
    fn a_missing_queue_url_is_named() {
        let err = NotifyConfig::from_env(&Env::default()).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing {
                var: NOTIFICATIONS_QUEUE_URL
            }
        );
        assert_eq!(err.to_string(), "NOTIFICATIONS_QUEUE_URL is required but not set");
    }

    #[test]
    fn a_standard_queue_is_refused_because_ordering_per_drive_needs_fifo() {
        let env = Env::from_pairs([(NOTIFICATIONS_QUEUE_URL, "https://sqs.eu-west-1.amazonaws.com/1/q")]);
        let err = NotifyConfig::from_env(&env).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    var: NOTIFICATIONS_QUEUE_URL,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn locally_the_development_key_is_the_default() {
        let env = Env::from_pairs([(NOTIFICATIONS_QUEUE_URL, QUEUE)]);
        let cfg = NotifyConfig::from_env(&env).unwrap();
        assert!(matches!(cfg.client_state_keys, ClientStateKeys::Single(_)));
    }

    #[test]
    fn inside_aws_the_key_secret_arn_is_required() {
        let env = Env::from_pairs([
            (NOTIFICATIONS_QUEUE_URL, QUEUE),
            ("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023"),
        ]);
        let err = NotifyConfig::from_env(&env).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing {
                var: CLIENT_STATE_KEYS_SECRET_ARN
            }
        );
    }

    #[test]
    fn a_malformed_client_state_key_is_named() {
        let env = Env::from_pairs([(NOTIFICATIONS_QUEUE_URL, QUEUE), (CLIENT_STATE_KEY, "abc")]);
        let err = NotifyConfig::from_env(&env).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                var: CLIENT_STATE_KEY,
                ..
            }
        ));
    }

    #[test]
    fn graph_base_url_defaults_to_microsoft_graph_v1() {
        let cfg = GraphConfig::from_env(&Env::default()).unwrap();
        assert_eq!(cfg.base_url.as_str(), "https://graph.microsoft.com/v1.0");
        let bad = GraphConfig::from_env(&Env::from_pairs([(GRAPH_BASE_URL, "ftp://x")])).unwrap_err();
        assert!(matches!(
            bad,
            ConfigError::Invalid {
                var: GRAPH_BASE_URL,
                ..
            }
        ));
    }
}
