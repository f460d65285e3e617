//! Creates, in whatever AWS endpoint `AWS_ENDPOINT_URL` names (moto locally), the queues and
//! secrets `template.yaml` defines, with the template's own names and settings. The local stack
//! and every integration test use it, so local runs have the deployment's shapes. Idempotent:
//! running it twice against one endpoint finds what exists.
//!
//! Supported resource types: `AWS::SQS::Queue`, `AWS::SecretsManager::Secret`, `AWS::KMS::Key`,
//! `AWS::KMS::Alias` and `AWS::DynamoDB::Table`. Everything else (functions, the HTTP API, log
//! groups) is served or irrelevant locally.
//!
//! A KMS key has no name to find it by, so each is tagged with its stack and logical id and
//! found again through the template's alias for it (one call) or, failing that, by its tags. A
//! table without `TableName` is named `<stack>-<logical id>`, as queues are.

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
    /// Template parameter values (name → value), over the template's defaults.
    pub parameters: BTreeMap<String, String>,
}

/// What was created: logical id → what `!Ref` and `!GetAtt .Arn` give. Parameters resolve the
/// same way, so a NoEcho parameter's value is in here: `Debug` shows the names only.
#[derive(Clone)]
pub struct Stack {
    pub stack: String,
    pub region: String,
    pub account: String,
    pub created: BTreeMap<String, Physical>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("stack", &self.stack)
            .field("region", &self.region)
            .field("account", &self.account)
            .field("created", &self.created.keys().collect::<Vec<_>>())
            .finish()
    }
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
    // Parameters resolve like resources: `!Ref Name` gives the value (the template's default
    // unless given).
    let mut created: BTreeMap<String, Physical> = template
        .parameter_defaults()
        .into_iter()
        .chain(options.parameters.clone())
        .map(|(name, value)| {
            (
                name,
                Physical {
                    reference: value.clone(),
                    arn: value,
                },
            )
        })
        .collect();
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

    // Keys before tables: a table's SSESpecification may name a key.
    let kms = aws_sdk_kms::Client::new(aws);
    for (id, props) in template.resources_of("AWS::KMS::Key") {
        let physical = kms_key(&kms, template, options, &account, &created, id, props).await?;
        created.insert(id.to_owned(), physical);
    }
    for (id, props) in template.resources_of("AWS::KMS::Alias") {
        let physical = kms_alias(&kms, options, &account, &created, id, props).await?;
        created.insert(id.to_owned(), physical);
    }

    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    for (id, props) in template.resources_of("AWS::DynamoDB::Table") {
        let physical = table(&dynamodb, options, &account, &created, id, props).await?;
        created.insert(id.to_owned(), physical);
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

// ---- KMS ----------------------------------------------------------------------------------------

/// The tags that let a later bootstrap of the same stack find a key again.
const STACK_TAG: &str = "graphfeed:local-stack";
const LOGICAL_ID_TAG: &str = "graphfeed:logical-id";

/// A symmetric (or as `KeySpec` says) KMS key with the template's policy, tags and rotation;
/// found again when this stack already has it.
async fn kms_key(
    kms: &aws_sdk_kms::Client,
    template: &Template,
    options: &Options,
    account: &str,
    created: &BTreeMap<String, Physical>,
    id: &str,
    props: &Value,
) -> Result<Physical, BootstrapError> {
    let resolver = resolver(options, account, created);
    if let Some(found) = find_kms_key(kms, template, options, &resolver, id).await? {
        return Ok(found);
    }

    let mut request = kms.create_key();
    if let Some(v) = props.get("Description") {
        request = request.description(resolver.string(v)?);
    }
    if let Some(v) = props.get("KeyUsage") {
        request = request.key_usage(aws_sdk_kms::types::KeyUsageType::from(
            resolver.string(v)?.as_str(),
        ));
    }
    if let Some(v) = props.get("KeySpec") {
        request = request.key_spec(aws_sdk_kms::types::KeySpec::from(resolver.string(v)?.as_str()));
    }
    if let Some(v) = props.get("KeyPolicy") {
        request = request.policy(resolver.json(v)?.to_string());
    }
    let mut tags = vec![
        (STACK_TAG.to_owned(), options.stack.clone()),
        (LOGICAL_ID_TAG.to_owned(), id.to_owned()),
    ];
    for tag in sequence(props, "Tags") {
        tags.push((
            required(&resolver, id, tag, "Key")?,
            required(&resolver, id, tag, "Value")?,
        ));
    }
    for (key, value) in tags {
        let tag = aws_sdk_kms::types::Tag::builder()
            .tag_key(key)
            .tag_value(value)
            .build()
            .map_err(|e| aws_error(id, e))?;
        request = request.tags(tag);
    }
    let metadata = request
        .send()
        .await
        .map_err(|e| aws_error(id, e))?
        .key_metadata
        .ok_or_else(|| BootstrapError::Aws {
            logical_id: id.to_owned(),
            reason: "CreateKey returned no key metadata".into(),
        })?;
    if flag(&resolver, props.get("EnableKeyRotation"))? {
        kms.enable_key_rotation()
            .key_id(metadata.key_id())
            .send()
            .await
            .map_err(|e| aws_error(id, e))?;
    }
    Ok(Physical {
        reference: metadata.key_id().to_owned(),
        arn: metadata.arn().unwrap_or_default().to_owned(),
    })
}

/// This stack's key `id`, if an earlier bootstrap made it: through an alias the template gives
/// it (one DescribeKey), else by the tags every key made here carries.
async fn find_kms_key(
    kms: &aws_sdk_kms::Client,
    template: &Template,
    options: &Options,
    resolver: &Resolver<'_>,
    id: &str,
) -> Result<Option<Physical>, BootstrapError> {
    let physical = |m: &aws_sdk_kms::types::KeyMetadata| Physical {
        reference: m.key_id().to_owned(),
        arn: m.arn().unwrap_or_default().to_owned(),
    };
    let mut aliased = false;
    for (_, alias) in template.resources_of("AWS::KMS::Alias") {
        if !targets(alias.get("TargetKeyId"), id) {
            continue;
        }
        let Some(name) = alias.get("AliasName") else {
            continue;
        };
        aliased = true;
        if let Ok(out) = kms.describe_key().key_id(resolver.string(name)?).send().await
            && let Some(m) = out.key_metadata
        {
            return Ok(Some(physical(&m)));
        }
    }
    // The alias is made right after its key, so no alias means no key (a bootstrap stopped in
    // between leaves one unused key behind, which costs nothing locally). Scanning every key's
    // tags on each fresh test stack would grow with the emulator's history.
    if aliased {
        return Ok(None);
    }

    let mut marker = None;
    loop {
        let page = kms
            .list_keys()
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| aws_error(id, e))?;
        for key in page.keys() {
            let Some(key_id) = key.key_id() else {
                continue;
            };
            let tags = kms
                .list_resource_tags()
                .key_id(key_id)
                .send()
                .await
                .map_err(|e| aws_error(id, e))?;
            let has = |k: &str, v: &str| tags.tags().iter().any(|t| t.tag_key() == k && t.tag_value() == v);
            if has(STACK_TAG, &options.stack) && has(LOGICAL_ID_TAG, id) {
                let described = kms
                    .describe_key()
                    .key_id(key_id)
                    .send()
                    .await
                    .map_err(|e| aws_error(id, e))?;
                return Ok(described.key_metadata.as_ref().map(physical));
            }
        }
        match page.next_marker {
            Some(next) if page.truncated => marker = Some(next),
            _ => return Ok(None),
        }
    }
}

/// Whether `value` is `!Ref id` (or `{Ref: id}`, or `!GetAtt id.Arn`).
fn targets(value: Option<&Value>, id: &str) -> bool {
    let Some(value) = value else {
        return false;
    };
    let (tag, arg) = match value {
        Value::Tagged(t) => (t.tag.to_string(), t.value.as_str()),
        Value::Mapping(m) if m.len() == 1 => match m.iter().next() {
            Some((k, v)) => (
                format!("!{}", k.as_str().unwrap_or_default().trim_start_matches("Fn::")),
                v.as_str(),
            ),
            None => return false,
        },
        _ => return false,
    };
    match (tag.as_str(), arg) {
        ("!Ref", Some(arg)) => arg == id,
        ("!GetAtt", Some(arg)) => arg == format!("{id}.Arn"),
        _ => false,
    }
}

/// An alias, pointed at its target whether or not it existed.
async fn kms_alias(
    kms: &aws_sdk_kms::Client,
    options: &Options,
    account: &str,
    created: &BTreeMap<String, Physical>,
    id: &str,
    props: &Value,
) -> Result<Physical, BootstrapError> {
    let resolver = resolver(options, account, created);
    let name = required(&resolver, id, props, "AliasName")?;
    let target = required(&resolver, id, props, "TargetKeyId")?;
    match kms
        .create_alias()
        .alias_name(&name)
        .target_key_id(&target)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_already_exists_exception()) =>
        {
            kms.update_alias()
                .alias_name(&name)
                .target_key_id(&target)
                .send()
                .await
                .map_err(|e| aws_error(id, e))?;
        }
        Err(e) => return Err(aws_error(id, e)),
    }
    Ok(Physical {
        arn: format!("arn:aws:kms:{}:{account}:{name}", options.region),
        reference: name,
    })
}

// ---- DynamoDB -----------------------------------------------------------------------------------

/// A table with the template's keys, indexes, billing, encryption, deletion protection, TTL and
/// point-in-time recovery; an existing one is described instead (and its TTL and PITR ensured).
async fn table(
    dynamodb: &aws_sdk_dynamodb::Client,
    options: &Options,
    account: &str,
    created: &BTreeMap<String, Physical>,
    id: &str,
    props: &Value,
) -> Result<Physical, BootstrapError> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, LocalSecondaryIndex, ScalarAttributeType,
        SseSpecification, SseType,
    };

    let resolver = resolver(options, account, created);
    let name = match props.get("TableName") {
        Some(v) => resolver.string(v)?,
        None => format!("{}-{id}", options.stack),
    };
    let mut request = dynamodb
        .create_table()
        .table_name(&name)
        .set_key_schema(Some(key_schema(&resolver, id, props)?));
    for definition in sequence(props, "AttributeDefinitions") {
        let attribute = AttributeDefinition::builder()
            .attribute_name(required(&resolver, id, definition, "AttributeName")?)
            .attribute_type(ScalarAttributeType::from(
                required(&resolver, id, definition, "AttributeType")?.as_str(),
            ))
            .build()
            .map_err(|e| aws_error(id, e))?;
        request = request.attribute_definitions(attribute);
    }
    let billing = match props.get("BillingMode") {
        Some(v) => resolver.string(v)?,
        None => "PROVISIONED".to_owned(),
    };
    request = request.billing_mode(BillingMode::from(billing.as_str()));
    if let Some(throughput) = props.get("ProvisionedThroughput") {
        request = request.provisioned_throughput(provisioned_throughput(&resolver, id, throughput)?);
    }
    for index in sequence(props, "GlobalSecondaryIndexes") {
        let mut gsi = GlobalSecondaryIndex::builder()
            .index_name(required(&resolver, id, index, "IndexName")?)
            .set_key_schema(Some(key_schema(&resolver, id, index)?))
            .projection(projection(&resolver, index)?);
        if let Some(throughput) = index.get("ProvisionedThroughput") {
            gsi = gsi.provisioned_throughput(provisioned_throughput(&resolver, id, throughput)?);
        }
        request = request.global_secondary_indexes(gsi.build().map_err(|e| aws_error(id, e))?);
    }
    for index in sequence(props, "LocalSecondaryIndexes") {
        let lsi = LocalSecondaryIndex::builder()
            .index_name(required(&resolver, id, index, "IndexName")?)
            .set_key_schema(Some(key_schema(&resolver, id, index)?))
            .projection(projection(&resolver, index)?)
            .build()
            .map_err(|e| aws_error(id, e))?;
        request = request.local_secondary_indexes(lsi);
    }
    if let Some(sse) = props.get("SSESpecification") {
        let mut spec = SseSpecification::builder().enabled(flag(&resolver, sse.get("SSEEnabled"))?);
        if let Some(v) = sse.get("SSEType") {
            spec = spec.sse_type(SseType::from(resolver.string(v)?.as_str()));
        }
        if let Some(v) = sse.get("KMSMasterKeyId") {
            spec = spec.kms_master_key_id(resolver.string(v)?);
        }
        request = request.sse_specification(spec.build());
    }
    if props.get("DeletionProtectionEnabled").is_some() {
        request =
            request.deletion_protection_enabled(flag(&resolver, props.get("DeletionProtectionEnabled"))?);
    }

    let arn = match request.send().await {
        Ok(out) => out
            .table_description
            .and_then(|d| d.table_arn)
            .unwrap_or_default(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            String::new()
        }
        Err(e) => return Err(aws_error(id, e)),
    };
    let arn = wait_until_active(dynamodb, &name, id).await?.unwrap_or(arn);

    if let Some(ttl) = props.get("TimeToLiveSpecification")
        && flag(&resolver, ttl.get("Enabled"))?
    {
        let attribute = required(&resolver, id, ttl, "AttributeName")?;
        let current = dynamodb
            .describe_time_to_live()
            .table_name(&name)
            .send()
            .await
            .map_err(|e| aws_error(id, e))?;
        let enabled = current.time_to_live_description.is_some_and(|d| {
            d.attribute_name() == Some(attribute.as_str())
                && matches!(
                    d.time_to_live_status(),
                    Some(aws_sdk_dynamodb::types::TimeToLiveStatus::Enabled)
                        | Some(aws_sdk_dynamodb::types::TimeToLiveStatus::Enabling)
                )
        });
        if !enabled {
            let spec = aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .attribute_name(attribute)
                .enabled(true)
                .build()
                .map_err(|e| aws_error(id, e))?;
            dynamodb
                .update_time_to_live()
                .table_name(&name)
                .time_to_live_specification(spec)
                .send()
                .await
                .map_err(|e| aws_error(id, e))?;
        }
    }
    if let Some(pitr) = props.get("PointInTimeRecoverySpecification")
        && flag(&resolver, pitr.get("PointInTimeRecoveryEnabled"))?
    {
        let spec = aws_sdk_dynamodb::types::PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(|e| aws_error(id, e))?;
        dynamodb
            .update_continuous_backups()
            .table_name(&name)
            .point_in_time_recovery_specification(spec)
            .send()
            .await
            .map_err(|e| aws_error(id, e))?;
    }

    Ok(Physical { reference: name, arn })
}

/// Waits for the table to be ACTIVE (moto is at once; DynamoDB takes seconds); returns its ARN.
async fn wait_until_active(
    dynamodb: &aws_sdk_dynamodb::Client,
    name: &str,
    id: &str,
) -> Result<Option<String>, BootstrapError> {
    for _ in 0..600 {
        let table = dynamodb
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| aws_error(id, e))?
            .table;
        let active = table
            .as_ref()
            .and_then(|t| t.table_status())
            .is_some_and(|s| *s == aws_sdk_dynamodb::types::TableStatus::Active);
        if active {
            return Ok(table.and_then(|t| t.table_arn));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(BootstrapError::Aws {
        logical_id: id.to_owned(),
        reason: format!("table {name} did not become ACTIVE within a minute"),
    })
}

fn key_schema(
    resolver: &Resolver<'_>,
    id: &str,
    owner: &Value,
) -> Result<Vec<aws_sdk_dynamodb::types::KeySchemaElement>, BootstrapError> {
    sequence(owner, "KeySchema")
        .iter()
        .map(|element| {
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name(required(resolver, id, element, "AttributeName")?)
                .key_type(aws_sdk_dynamodb::types::KeyType::from(
                    required(resolver, id, element, "KeyType")?.as_str(),
                ))
                .build()
                .map_err(|e| aws_error(id, e))
        })
        .collect()
}

fn projection(
    resolver: &Resolver<'_>,
    index: &Value,
) -> Result<aws_sdk_dynamodb::types::Projection, BootstrapError> {
    let projection = index.get("Projection").unwrap_or(&Value::Null);
    let mut builder = aws_sdk_dynamodb::types::Projection::builder();
    if let Some(v) = projection.get("ProjectionType") {
        builder = builder.projection_type(aws_sdk_dynamodb::types::ProjectionType::from(
            resolver.string(v)?.as_str(),
        ));
    }
    for attribute in sequence(projection, "NonKeyAttributes") {
        builder = builder.non_key_attributes(resolver.string(attribute)?);
    }
    Ok(builder.build())
}

fn provisioned_throughput(
    resolver: &Resolver<'_>,
    id: &str,
    throughput: &Value,
) -> Result<aws_sdk_dynamodb::types::ProvisionedThroughput, BootstrapError> {
    let units = |name: &str| -> Result<i64, BootstrapError> {
        let raw = required(resolver, id, throughput, name)?;
        raw.parse()
            .map_err(|_| TemplateError::Shape(format!("{id}: {name} is not a number ({raw:?})")).into())
    };
    aws_sdk_dynamodb::types::ProvisionedThroughput::builder()
        .read_capacity_units(units("ReadCapacityUnits")?)
        .write_capacity_units(units("WriteCapacityUnits")?)
        .build()
        .map_err(|e| aws_error(id, e))
}

// ---- property helpers ---------------------------------------------------------------------------

/// The list under `name`, or nothing.
fn sequence<'v>(owner: &'v Value, name: &str) -> &'v [Value] {
    owner
        .get(name)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A property that must be there, as a string.
fn required(resolver: &Resolver<'_>, id: &str, owner: &Value, name: &str) -> Result<String, BootstrapError> {
    let value = owner
        .get(name)
        .ok_or_else(|| TemplateError::Shape(format!("{id} lacks {name}")))?;
    Ok(resolver.string(value)?)
}

/// A boolean property (`true`, or the string `"true"`); absent is false.
fn flag(resolver: &Resolver<'_>, value: Option<&Value>) -> Result<bool, BootstrapError> {
    match value {
        None => Ok(false),
        Some(v) => Ok(resolver.string(v)?.eq_ignore_ascii_case("true")),
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

    /// What `!Ref logical_id` gives (a queue URL, a secret ARN): `reference("ChangesQueue")`.
    pub fn reference(&self, logical_id: &str) -> Option<&str> {
        self.created.get(logical_id).map(|p| p.reference.as_str())
    }

    /// What `!GetAtt logical_id.Arn` gives.
    pub fn arn(&self, logical_id: &str) -> Option<&str> {
        self.created.get(logical_id).map(|p| p.arn.as_str())
    }

    /// A template value (a literal, `!Ref`, `!GetAtt` or `!Sub`) resolved against this stack.
    pub fn resolve(&self, value: &Value) -> Result<String, TemplateError> {
        Resolver {
            stack: &self.stack,
            region: &self.region,
            account: &self.account,
            created: &self.created,
        }
        .string(value)
    }
}
