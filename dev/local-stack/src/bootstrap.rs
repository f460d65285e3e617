//! Creates, in whatever AWS endpoint `AWS_ENDPOINT_URL` names (moto locally), the queues and
//! secrets `template.yaml` defines, with the template's own names and settings. The local stack
//! and every integration test use it, so local runs have the deployment's shapes. Idempotent:
//! running it twice against one endpoint finds what exists.
//!
//! Supported resource types: `AWS::SQS::Queue` and `AWS::SecretsManager::Secret`. Later issues
//! add the DynamoDB table and the KMS key here when the template gains them. Everything else
//! (functions, the HTTP API, log groups) is served or irrelevant locally.

use std::collections::BTreeMap;

use aws_sdk_sqs::types::QueueAttributeName;
use serde_yaml::Value;

use crate::template::{Physical, Resolver, Template, TemplateError};

/// A bootstrap failure.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("creating {logical_id}: {reason}")]
    Aws { logical_id: String, reason: String },
}

/// What to bootstrap.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stands in for `AWS::StackName` (queue names derive from it): unique per test.
    pub stack: String,
    pub region: String,
    /// Secret values to store instead of generating them (logical id → value).
    pub secret_values: BTreeMap<String, String>,
}

/// What was created: logical id → what `!Ref` and `!GetAtt .Arn` give.
#[derive(Debug, Clone)]
pub struct Stack {
    pub stack: String,
    pub region: String,
    pub account: String,
    pub created: BTreeMap<String, Physical>,
}

/// CloudFormation queue properties and the SQS attribute each becomes.
const QUEUE_ATTRIBUTES: &[(&str, &str)] = &[
    ("FifoQueue", "FifoQueue"),
    ("ContentBasedDeduplication", "ContentBasedDeduplication"),
    ("DeduplicationScope", "DeduplicationScope"),
    ("FifoThroughputLimit", "FifoThroughputLimit"),
    ("MessageRetentionPeriod", "MessageRetentionPeriod"),
    ("VisibilityTimeout", "VisibilityTimeout"),
    ("DelaySeconds", "DelaySeconds"),
    ("MaximumMessageSize", "MaximumMessageSize"),
    ("ReceiveMessageWaitTimeSeconds", "ReceiveMessageWaitTimeSeconds"),
    ("SqsManagedSseEnabled", "SqsManagedSseEnabled"),
];
/// Attributes that refer to other queues, set once every queue exists.
const QUEUE_POLICIES: &[(&str, &str)] = &[
    ("RedrivePolicy", "RedrivePolicy"),
    ("RedriveAllowPolicy", "RedriveAllowPolicy"),
];

fn aws_error(logical_id: &str, e: impl std::error::Error + 'static) -> BootstrapError {
    BootstrapError::Aws {
        logical_id: logical_id.to_owned(),
        reason: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
    }
}

/// Creates every supported resource of `template`.
pub async fn bootstrap(
    template: &Template,
    aws: &aws_config::SdkConfig,
    options: &Options,
) -> Result<Stack, BootstrapError> {
    let sqs = aws_sdk_sqs::Client::new(aws);
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    let mut created = BTreeMap::new();
    let mut account = "123456789012".to_owned();

    // Pass 1: queues with their own settings; their ARNs tell us the account.
    for (id, props) in template.resources_of("AWS::SQS::Queue") {
        let resolver = resolver(options, &account, &created);
        let name = match props.get("QueueName") {
            Some(v) => resolver.string(v)?,
            None => format!("{}-{id}", options.stack),
        };
        let mut request = sqs.create_queue().queue_name(&name);
        for (property, attribute) in QUEUE_ATTRIBUTES {
            if let Some(v) = props.get(*property) {
                request = request.attributes(QueueAttributeName::from(*attribute), resolver.string(v)?);
            }
        }
        let url = request
            .send()
            .await
            .map_err(|e| aws_error(id, e))?
            .queue_url
            .unwrap_or_default();
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| aws_error(id, e))?;
        let arn = attrs
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .unwrap_or_default();
        if let Some(acct) = arn.split(':').nth(4) {
            account = acct.to_owned();
        }
        created.insert(id.to_owned(), Physical { reference: url, arn });
    }

    // Pass 2: attributes that name other queues.
    for (id, props) in template.resources_of("AWS::SQS::Queue") {
        let resolver = resolver(options, &account, &created);
        let Some(url) = created.get(id).map(|p| p.reference.clone()) else {
            continue;
        };
        for (property, attribute) in QUEUE_POLICIES {
            if let Some(v) = props.get(*property) {
                let value = resolver.json(v)?.to_string();
                sqs.set_queue_attributes()
                    .queue_url(&url)
                    .attributes(QueueAttributeName::from(*attribute), value)
                    .send()
                    .await
                    .map_err(|e| aws_error(id, e))?;
            }
        }
    }

    for (id, props) in template.resources_of("AWS::SecretsManager::Secret") {
        let resolver = resolver(options, &account, &created);
        let name = match props.get("Name") {
            Some(v) => resolver.string(v)?,
            None => format!("{}-{id}", options.stack),
        };
        let value = match options.secret_values.get(id) {
            Some(v) => v.clone(),
            None => secret_value(id, props, &resolver)?,
        };
        let arn = match secrets
            .create_secret()
            .name(&name)
            .secret_string(&value)
            .send()
            .await
        {
            Ok(out) => out.arn.unwrap_or_default(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_exists_exception()) =>
            {
                let found = secrets
                    .describe_secret()
                    .secret_id(&name)
                    .send()
                    .await
                    .map_err(|e| aws_error(id, e))?;
                if options.secret_values.contains_key(id) {
                    secrets
                        .put_secret_value()
                        .secret_id(&name)
                        .secret_string(&value)
                        .send()
                        .await
                        .map_err(|e| aws_error(id, e))?;
                }
                found.arn.unwrap_or_default()
            }
            Err(e) => return Err(aws_error(id, e)),
        };
        created.insert(
            id.to_owned(),
            Physical {
                reference: arn.clone(),
                arn,
            },
        );
    }

    Ok(Stack {
        stack: options.stack.clone(),
        region: options.region.clone(),
        account,
        created,
    })
}

fn resolver<'a>(
    options: &'a Options,
    account: &'a str,
    created: &'a BTreeMap<String, Physical>,
) -> Resolver<'a> {
    Resolver {
        stack: &options.stack,
        region: &options.region,
        account,
        created,
    }
}

/// A secret's literal `SecretString`, or one made as `GenerateSecretString` describes.
fn secret_value(id: &str, props: &Value, resolver: &Resolver<'_>) -> Result<String, BootstrapError> {
    if let Some(v) = props.get("SecretString") {
        return Ok(resolver.string(v)?);
    }
    let Some(generate) = props.get("GenerateSecretString") else {
        return Err(
            TemplateError::Shape(format!("{id} has neither SecretString nor GenerateSecretString")).into(),
        );
    };
    let length = generate
        .get("PasswordLength")
        .and_then(Value::as_u64)
        .unwrap_or(32) as usize;
    let password = random_alphanumeric(length);
    match (
        generate.get("SecretStringTemplate"),
        generate.get("GenerateStringKey"),
    ) {
        (Some(template), Some(key)) => {
            let mut doc: serde_json::Value = serde_json::from_str(&resolver.string(template)?)
                .map_err(|e| TemplateError::Shape(format!("{id}: SecretStringTemplate is not JSON: {e}")))?;
            doc[resolver.string(key)?] = password.into();
            Ok(doc.to_string())
        }
        _ => Ok(password),
    }
}

fn random_alphanumeric(length: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..length)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Stack {
    /// A function's environment as the template defines it, resolved against this stack.
    pub fn function_environment(
        &self,
        template: &Template,
        function: &str,
    ) -> Result<Vec<(String, String)>, TemplateError> {
        let resolver = Resolver {
            stack: &self.stack,
            region: &self.region,
            account: &self.account,
            created: &self.created,
        };
        template
            .function_environment(function)
            .into_iter()
            .map(|(k, v)| Ok((k, resolver.string(&v)?)))
            .collect()
    }

    /// What `!Ref logical_id` gives (a queue URL, a secret ARN).
    pub fn reference(&self, logical_id: &str) -> Option<&str> {
        self.created.get(logical_id).map(|p| p.reference.as_str())
    }
}
