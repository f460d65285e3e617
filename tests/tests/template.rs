//! What `template.yaml` means, checked where `cfn-lint` and `sam validate --lint` cannot look:
//! a misspelt value, a wrong route, a policy one action too wide, a key given as a default.
//!
//! The template is read with `serde_yaml` and turned into CloudFormation's JSON form, so the
//! short tags (`!Ref X`, `!GetAtt X.Arn`, `!Sub ...`) become `{"Ref": "X"}`,
//! `{"Fn::GetAtt": ["X", "Arn"]}` and `{"Fn::Sub": "..."}` and compare like any other value.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};

// ---- reading the template -------------------------------------------------------------------

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn template() -> Value {
    let text =
        std::fs::read_to_string(repository_root().join("template.yaml")).expect("template.yaml is readable");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("template.yaml is YAML");
    cloudformation_json(yaml)
}

/// YAML → JSON, turning CloudFormation's short tags into their long (JSON) form.
fn cloudformation_json(yaml: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::from_str(&n.to_string()).expect("a YAML number is a JSON number"),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(cloudformation_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        other => serde_yaml::to_string(&other).expect("a key").trim().to_owned(),
                    };
                    (key, cloudformation_json(v))
                })
                .collect(),
        ),
        Y::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            let arg = cloudformation_json(tagged.value);
            match (name, arg) {
                ("Ref", arg) => json!({ "Ref": arg }),
                ("Condition", arg) => json!({ "Condition": arg }),
                // `!GetAtt Res.Attr` is the string form of `Fn::GetAtt: [Res, Attr]`.
                ("GetAtt", Value::String(s)) => {
                    let (resource, attribute) = s.split_once('.').expect("!GetAtt Resource.Attribute");
                    json!({ "Fn::GetAtt": [resource, attribute] })
                }
                (other, arg) => json!({ format!("Fn::{other}"): arg }),
            }
        }
    }
}

fn reference(id: &str) -> Value {
    json!({ "Ref": id })
}

fn arn_of(id: &str) -> Value {
    json!({ "Fn::GetAtt": [id, "Arn"] })
}

fn sub(text: &str) -> Value {
    json!({ "Fn::Sub": text })
}

fn resource<'t>(t: &'t Value, id: &str) -> &'t Value {
    t["Resources"]
        .get(id)
        .unwrap_or_else(|| panic!("the template has no resource {id}"))
}

fn properties<'t>(t: &'t Value, id: &str) -> &'t Value {
    &resource(t, id)["Properties"]
}

fn resources_of<'t>(t: &'t Value, kind: &str) -> Vec<(&'t str, &'t Value)> {
    t["Resources"]
        .as_object()
        .expect("Resources is a mapping")
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(id, r)| (id.as_str(), r))
        .collect()
}

/// A function's property, or the one it inherits from `Globals.Function`.
fn effective<'t>(t: &'t Value, function: &str, property: &str) -> &'t Value {
    match properties(t, function).get(property) {
        Some(v) => v,
        None => &t["Globals"]["Function"][property],
    }
}

fn as_list(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        one => vec![one.clone()],
    }
}

/// Whether `key` is a mapping key anywhere under `value` (to find intrinsics that must not be there).
fn contains_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| k == key || contains_key(v, key)),
        Value::Array(items) => items.iter().any(|v| contains_key(v, key)),
        _ => false,
    }
}

// ---- the HTTP edge --------------------------------------------------------------------------

#[test]
fn notify_routes_are_post_notifications_and_post_lifecycle_on_the_http_api_without_authorizer() {
    let t = template();
    assert_eq!(resource(&t, "HttpApi")["Type"], "AWS::Serverless::HttpApi");
    let api = properties(&t, "HttpApi");
    assert!(
        api.get("Auth").is_none(),
        "Graph calls anonymously; an authorizer breaks the handshake"
    );

    let events = properties(&t, "NotifyFunction")["Events"]
        .as_object()
        .expect("notify has events");
    let routes: BTreeSet<(String, String)> = events
        .values()
        .map(|event| {
            assert_eq!(event["Type"], "HttpApi");
            let p = &event["Properties"];
            assert_eq!(p["ApiId"], reference("HttpApi"));
            assert_eq!(
                p["PayloadFormatVersion"], "2.0",
                "lambda_http expects payload format 2.0"
            );
            assert!(
                p.get("Auth").is_none(),
                "a route authorizer would reject Graph too"
            );
            (
                p["Method"].as_str().expect("a method").to_owned(),
                p["Path"].as_str().expect("a path").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        BTreeSet::from([
            ("POST".to_owned(), "/notifications".to_owned()),
            ("POST".to_owned(), "/lifecycle".to_owned()),
        ])
    );
}

#[test]
fn the_http_api_throttles_every_route_generously_by_default() {
    let t = template();
    let settings = &properties(&t, "HttpApi")["DefaultRouteSettings"];
    let number_behind = |v: &Value| -> f64 {
        let default = match v.get("Ref").and_then(Value::as_str) {
            Some(parameter) => &t["Parameters"][parameter]["Default"],
            None => v,
        };
        default
            .as_f64()
            .expect("a number, or a Number parameter with a default")
    };
    let rate = number_behind(&settings["ThrottlingRateLimit"]);
    let burst = number_behind(&settings["ThrottlingBurstLimit"]);
    assert!(
        rate >= 100.0,
        "Graph delivers in bursts; rate {rate} is too tight"
    );
    assert!(
        burst >= rate,
        "burst {burst} should absorb at least a second of the rate {rate}"
    );
}

#[test]
fn nothing_but_the_http_api_routes_is_exposed() {
    let t = template();
    for kind in [
        "AWS::Lambda::Url",
        "AWS::Lambda::Permission",
        "AWS::Serverless::Api",
        "AWS::SQS::QueuePolicy",
        "AWS::SecretsManager::ResourcePolicy",
    ] {
        assert!(
            resources_of(&t, kind).is_empty(),
            "{kind} would open another way in"
        );
    }
    for (id, _) in resources_of(&t, "AWS::Serverless::Function") {
        assert!(
            properties(&t, id).get("FunctionUrlConfig").is_none(),
            "{id} has a function URL"
        );
    }
    assert!(t["Globals"]["Function"].get("FunctionUrlConfig").is_none());
}

// ---- functions ------------------------------------------------------------------------------

#[test]
fn every_function_is_arm64_provided_al2023_built_with_cargo_lambda_and_logs_json() {
    let t = template();
    let functions = resources_of(&t, "AWS::Serverless::Function");
    assert!(!functions.is_empty());
    let mut binaries = BTreeSet::new();
    for (id, function) in functions {
        assert_eq!(effective(&t, id, "Runtime"), "provided.al2023", "{id}");
        assert_eq!(effective(&t, id, "Architectures"), &json!(["arm64"]), "{id}");
        assert_eq!(effective(&t, id, "Handler"), "bootstrap", "{id}");
        assert_eq!(
            effective(&t, id, "LoggingConfig"),
            &json!({ "LogFormat": "JSON", "ApplicationLogLevel": "INFO", "SystemLogLevel": "WARN" }),
            "{id}"
        );

        assert_eq!(function["Metadata"]["BuildMethod"], "rust-cargolambda", "{id}");
        let binary = function["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .expect("a Binary");
        assert!(
            binaries.insert(binary.to_owned()),
            "{id}: binary {binary} is built by two functions"
        );

        // CodeUri is the function's own workspace member, which declares that binary.
        let code_uri = properties(&t, id)["CodeUri"].as_str().expect("a CodeUri");
        let manifest = std::fs::read_to_string(repository_root().join(code_uri).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{id}: CodeUri {code_uri} has no Cargo.toml: {e}"));
        assert!(
            manifest
                .lines()
                .any(|line| line.replace(' ', "") == format!("name=\"{binary}\"")),
            "{id}: {code_uri}/Cargo.toml does not name binary {binary}"
        );
    }
}

#[test]
fn every_function_has_a_log_group_kept_for_the_retention_parameter() {
    let t = template();
    let groups = resources_of(&t, "AWS::Logs::LogGroup");
    for (id, _) in resources_of(&t, "AWS::Serverless::Function") {
        let name = sub(&format!("/aws/lambda/${{{id}}}"));
        let (_, group) = groups
            .iter()
            .find(|(_, g)| g["Properties"]["LogGroupName"] == name)
            .unwrap_or_else(|| panic!("{id} has no explicit log group"));
        assert_eq!(
            group["Properties"]["RetentionInDays"],
            reference("LogRetentionDays"),
            "{id}"
        );
    }

    let retention = &t["Parameters"]["LogRetentionDays"];
    assert_eq!(retention["Type"], "Number");
    assert_eq!(retention["Default"], 30);
    let valid = [
        1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288,
        3653,
    ];
    for allowed in retention["AllowedValues"].as_array().expect("AllowedValues") {
        let days = allowed.as_i64().expect("a number of days");
        assert!(
            valid.contains(&days),
            "CloudWatch Logs does not accept {days} days"
        );
    }
}

#[test]
fn notify_answers_well_within_graphs_deadlines() {
    let t = template();
    let timeout = effective(&t, "NotifyFunction", "Timeout")
        .as_i64()
        .expect("a timeout");
    // Graph wants a notification answered within 3 s and a validation within 10 s: notify must
    // outlive a cold start but never hang past the point Graph has given up.
    assert!((3..10).contains(&timeout), "notify's timeout {timeout} s");
}

#[test]
fn notify_is_told_its_queue_and_secret_by_environment() {
    let t = template();
    let variables = properties(&t, "NotifyFunction")["Environment"]["Variables"].clone();
    let mut expected = Map::new();
    expected.insert(
        shared::config::NOTIFICATIONS_QUEUE_URL.into(),
        reference("NotificationsQueue"),
    );
    expected.insert(
        shared::config::CLIENT_STATE_KEYS_SECRET_ARN.into(),
        reference("ClientStateKeysSecret"),
    );
    expected.insert("RUST_LOG".into(), json!("info"));
    assert_eq!(variables, Value::Object(expected));
}

#[test]
fn notify_may_only_send_to_its_queue_and_read_its_secret() {
    let t = template();
    let notify = properties(&t, "NotifyFunction");
    assert!(
        notify.get("Role").is_none(),
        "a custom role would bypass the policies below"
    );
    assert!(notify.get("PermissionsBoundary").is_none());
    assert!(t["Globals"]["Function"].get("Policies").is_none());

    let mut grants = BTreeSet::new();
    for policy in as_list(&notify["Policies"]) {
        // Inline documents only: a string is a managed policy, any other object a SAM policy
        // template, and both grant more than notify needs.
        let statements = policy
            .get("Statement")
            .unwrap_or_else(|| panic!("not an inline policy document: {policy}"));
        for statement in as_list(statements) {
            assert_eq!(statement["Effect"], "Allow");
            assert!(statement.get("NotAction").is_none() && statement.get("NotResource").is_none());
            assert!(statement.get("Condition").is_none());
            for action in as_list(&statement["Action"]) {
                for resource in as_list(&statement["Resource"]) {
                    grants.insert((
                        action.as_str().expect("an action").to_owned(),
                        resource.to_string(),
                    ));
                }
            }
        }
    }
    assert_eq!(
        grants,
        BTreeSet::from([
            (
                "sqs:SendMessage".to_owned(),
                arn_of("NotificationsQueue").to_string()
            ),
            (
                "secretsmanager:GetSecretValue".to_owned(),
                reference("ClientStateKeysSecret").to_string()
            ),
        ])
    );
}

// ---- the notifications queue ------------------------------------------------------------------

#[test]
fn the_notifications_queue_is_high_throughput_fifo_without_content_based_deduplication() {
    let t = template();
    assert_eq!(resource(&t, "NotificationsQueue")["Type"], "AWS::SQS::Queue");
    let queue = properties(&t, "NotificationsQueue");
    assert_eq!(queue["QueueName"], sub("${AWS::StackName}-notifications.fifo"));
    assert_eq!(queue["FifoQueue"], true);
    // Two drive notifications for two different changes are byte-identical.
    assert_eq!(queue["ContentBasedDeduplication"], false);
    assert_eq!(queue["DeduplicationScope"], "messageGroup");
    assert_eq!(queue["FifoThroughputLimit"], "perMessageGroupId");
    assert_eq!(queue["MessageRetentionPeriod"], 1_209_600);
    assert_eq!(queue["SqsManagedSseEnabled"], true);
    let visibility = queue["VisibilityTimeout"].as_i64().expect("a visibility timeout");
    assert!(
        (30..=43_200).contains(&visibility),
        "visibility timeout {visibility} s"
    );
}

#[test]
fn the_notifications_queue_redrives_to_a_fifo_dead_letter_queue() {
    let t = template();
    let queue = properties(&t, "NotificationsQueue");
    assert_eq!(
        queue["RedrivePolicy"]["deadLetterTargetArn"],
        arn_of("NotificationsDeadLetterQueue")
    );

    let dlq = properties(&t, "NotificationsDeadLetterQueue");
    assert_eq!(dlq["QueueName"], sub("${AWS::StackName}-notifications-dlq.fifo"));
    assert_eq!(dlq["FifoQueue"], true);
    assert_eq!(dlq["MessageRetentionPeriod"], 1_209_600);
    assert_eq!(dlq["SqsManagedSseEnabled"], true);
    assert!(
        dlq.get("RedrivePolicy").is_none(),
        "a dead-letter queue dead-letters nowhere"
    );

    // Only the notifications queue may dead-letter here: its ARN, spelt from its name.
    let name = queue["QueueName"]["Fn::Sub"]
        .as_str()
        .expect("the queue's name is a !Sub");
    assert_eq!(
        dlq["RedriveAllowPolicy"],
        json!({
            "redrivePermission": "byQueue",
            "sourceQueueArns": [sub(&format!("arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{name}"))],
        })
    );
}

#[test]
fn what_the_local_bootstrap_creates_is_spelt_out_literally() {
    let t = template();
    assert!(t.get("Mappings").is_none());
    // The one condition decides whether the alarms get a topic of their own.
    let conditions: BTreeSet<&str> = t["Conditions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(conditions, BTreeSet::from(["CreateAlarmTopic"]));

    // dev/local-stack's bootstrap creates these types, reading their properties literally.
    for kind in [
        "AWS::SQS::Queue",
        "AWS::SecretsManager::Secret",
        "AWS::DynamoDB::Table",
        "AWS::KMS::Key",
        "AWS::KMS::Alias",
    ] {
        for (id, resource) in resources_of(&t, kind) {
            for intrinsic in ["Fn::If", "Fn::FindInMap", "Fn::ImportValue", "Fn::Select"] {
                assert!(
                    !contains_key(&resource["Properties"], intrinsic),
                    "{id} uses {intrinsic}"
                );
            }
        }
    }
    // What the functions use is always there; only the alarm topic and its key are conditional.
    for kind in [
        "AWS::SQS::Queue",
        "AWS::SecretsManager::Secret",
        "AWS::DynamoDB::Table",
    ] {
        for (id, resource) in resources_of(&t, kind) {
            assert!(resource.get("Condition").is_none(), "{id} is conditional");
        }
    }
    for id in ["TokenKey", "TokenKeyAlias"] {
        assert!(resource(&t, id).get("Condition").is_none(), "{id} is conditional");
    }
}

// ---- secrets ----------------------------------------------------------------------------------

#[test]
fn the_client_state_keys_are_generated_never_a_parameter_default() {
    let t = template();
    assert_eq!(
        resource(&t, "ClientStateKeysSecret")["Type"],
        "AWS::SecretsManager::Secret"
    );
    let secret = properties(&t, "ClientStateKeysSecret");
    assert!(
        secret.get("SecretString").is_none(),
        "the keys must be generated, not written down"
    );

    let generate = &secret["GenerateSecretString"];
    let skeleton: Value =
        serde_json::from_str(generate["SecretStringTemplate"].as_str().expect("a template"))
            .expect("SecretStringTemplate is JSON");
    let generated_key = generate["GenerateStringKey"]
        .as_str()
        .expect("a GenerateStringKey");
    assert_eq!(
        skeleton,
        json!({ "active": generated_key }),
        "the generated key is the active one"
    );
    assert!(generate["PasswordLength"].as_i64().expect("a length") >= 32);
    assert_eq!(
        generate["ExcludePunctuation"], true,
        "punctuation would need escaping in JSON"
    );

    // What Secrets Manager stores (64 letters and digits under the generated key) is a ring the
    // functions accept.
    let stored = json!({ "active": generated_key, generated_key: "Zq7".repeat(21) + "x" }).to_string();
    let ring =
        shared::client_state::KeyRing::from_secret_json(&stored).expect("the generated secret is a key ring");
    assert_eq!(ring.active().as_str(), generated_key);

    for (name, parameter) in t["Parameters"].as_object().into_iter().flatten() {
        let lower = name.to_lowercase();
        if ["secret", "key", "token", "password", "clientstate"]
            .iter()
            .any(|word| lower.contains(word))
        {
            assert!(
                parameter.get("Default").is_none(),
                "parameter {name} has a default"
            );
            assert_eq!(parameter["NoEcho"], true, "parameter {name} would be echoed");
        }
    }
}

// ---- the table and the token vault's key --------------------------------------------------------

fn key_schema(owner: &Value) -> Vec<(String, String)> {
    as_list(&owner["KeySchema"])
        .iter()
        .map(|k| {
            (
                k["AttributeName"].as_str().expect("an attribute name").to_owned(),
                k["KeyType"].as_str().expect("a key type").to_owned(),
            )
        })
        .collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

#[test]
fn the_table_is_keyed_by_pk_and_sk_with_the_expiry_and_walk_indexes_and_ttl_on_demand() {
    let t = template();
    assert_eq!(resource(&t, "Table")["Type"], "AWS::DynamoDB::Table");
    let table = properties(&t, "Table");
    assert_eq!(table["BillingMode"], "PAY_PER_REQUEST");
    assert!(table.get("ProvisionedThroughput").is_none());
    assert_eq!(key_schema(table), [pair("pk", "HASH"), pair("sk", "RANGE")]);

    let definitions: BTreeSet<(String, String)> = as_list(&table["AttributeDefinitions"])
        .iter()
        .map(|d| {
            pair(
                d["AttributeName"].as_str().expect("a name"),
                d["AttributeType"].as_str().expect("a type"),
            )
        })
        .collect();
    // Exactly the key attributes (CloudFormation refuses a definition no key uses).
    assert_eq!(
        definitions,
        BTreeSet::from([
            pair("pk", "S"),
            pair("sk", "S"),
            pair("gsi1pk", "S"),
            pair("gsi1sk", "S"),
            pair("gsi2pk", "S"),
            pair("gsi2sk", "S"),
        ])
    );

    let indexes = as_list(&table["GlobalSecondaryIndexes"]);
    let names: Vec<&str> = indexes
        .iter()
        .map(|i| i["IndexName"].as_str().expect("an index name"))
        .collect();
    assert_eq!(names, ["gsi1", "gsi2"]);
    let gsi1 = &indexes[0];
    assert_eq!(gsi1["IndexName"], "gsi1");
    assert_eq!(
        key_schema(gsi1),
        [pair("gsi1pk", "HASH"), pair("gsi1sk", "RANGE")]
    );
    assert_eq!(gsi1["Projection"], json!({ "ProjectionType": "ALL" }));
    assert!(table.get("LocalSecondaryIndexes").is_none());

    assert_eq!(
        table["TimeToLiveSpecification"],
        json!({ "AttributeName": "ttl", "Enabled": true })
    );
}

#[test]
fn the_table_survives_mistakes_recovers_to_a_point_in_time_and_is_encrypted() {
    let t = template();
    let table = properties(&t, "Table");
    assert_eq!(
        table["PointInTimeRecoverySpecification"],
        json!({ "PointInTimeRecoveryEnabled": true })
    );
    assert_eq!(table["DeletionProtectionEnabled"], true);
    assert_eq!(table["SSESpecification"]["SSEEnabled"], true);
    // A stack deletion or replacement must not take every connection with it.
    assert_eq!(resource(&t, "Table")["DeletionPolicy"], "Retain");
    assert_eq!(resource(&t, "Table")["UpdateReplacePolicy"], "Retain");
    // CloudFormation names it: two stacks never collide and the local bootstrap derives it.
    assert!(table.get("TableName").is_none());
    assert!(resource(&t, "Table").get("Condition").is_none());
}

#[test]
fn the_token_key_is_symmetric_rotated_and_administered_by_the_account() {
    let t = template();
    assert_eq!(resource(&t, "TokenKey")["Type"], "AWS::KMS::Key");
    let key = properties(&t, "TokenKey");
    assert_eq!(key["KeySpec"], "SYMMETRIC_DEFAULT");
    assert_eq!(key["KeyUsage"], "ENCRYPT_DECRYPT");
    assert_eq!(key["EnableKeyRotation"], true);
    assert!(
        key.get("Origin").is_none() || key["Origin"] == "AWS_KMS",
        "no imported key material"
    );
    assert!(key.get("MultiRegion").is_none_or(|m| m == false));
    let pending = key["PendingWindowInDays"].as_i64().unwrap_or(30);
    assert!(
        pending >= 30,
        "a mistaken deletion needs the longest window to undo, not {pending} days"
    );
    // Every stored token dies with the key.
    assert_eq!(resource(&t, "TokenKey")["DeletionPolicy"], "Retain");
    assert_eq!(resource(&t, "TokenKey")["UpdateReplacePolicy"], "Retain");

    let policy = &key["KeyPolicy"];
    assert_eq!(policy["Version"], "2012-10-17");
    let statements = as_list(&policy["Statement"]);
    let allows: Vec<&Value> = statements.iter().filter(|s| s["Effect"] == "Allow").collect();
    // Only the account: it administers the key and delegates use to IAM (function policies).
    assert_eq!(allows.len(), 1);
    assert_eq!(
        allows[0]["Principal"],
        json!({ "AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root") })
    );
    assert!(allows[0].get("Condition").is_none());
    for statement in &statements {
        assert!(
            statement["Effect"] == "Deny" || statement["Principal"] != "*",
            "an Allow to everyone: {statement}"
        );
    }
}

#[test]
fn the_token_key_refuses_any_use_without_the_vaults_purpose() {
    use shared::vault::{CONTEXT_PURPOSE, PURPOSE_REFRESH_TOKEN};
    let t = template();
    let statements = as_list(&properties(&t, "TokenKey")["KeyPolicy"]["Statement"]);
    let deny = statements
        .iter()
        .find(|s| s["Effect"] == "Deny")
        .expect("a Deny statement guarding the purpose");
    assert_eq!(deny["Principal"], "*");
    let actions: BTreeSet<String> = as_list(&deny["Action"])
        .iter()
        .map(|a| a.as_str().expect("an action").to_owned())
        .collect();
    for needed in [
        "kms:Decrypt",
        "kms:Encrypt",
        "kms:GenerateDataKey*",
        "kms:ReEncrypt*",
    ] {
        assert!(actions.contains(needed), "the guard misses {needed}");
    }
    // The condition names exactly the context the vault sends (shared::vault).
    assert_eq!(
        deny["Condition"],
        json!({ "StringNotEquals": { format!("kms:EncryptionContext:{CONTEXT_PURPOSE}"): PURPOSE_REFRESH_TOKEN } })
    );
}

#[test]
fn the_token_key_alias_is_named_after_the_stack() {
    let t = template();
    assert_eq!(resource(&t, "TokenKeyAlias")["Type"], "AWS::KMS::Alias");
    let alias = properties(&t, "TokenKeyAlias");
    assert_eq!(alias["AliasName"], sub("alias/${AWS::StackName}-tokens"));
    assert_eq!(alias["TargetKeyId"], reference("TokenKey"));
}

#[test]
fn no_secret_is_written_into_the_template() {
    let t = template();
    // A secret's value is generated (GenerateSecretString) or given at deploy time as a NoEcho
    // parameter, never written here.
    for (id, _) in resources_of(&t, "AWS::SecretsManager::Secret") {
        let Some(value) = properties(&t, id).get("SecretString") else {
            continue;
        };
        let parameter = value["Ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: SecretString is written into the template"));
        assert_eq!(
            t["Parameters"][parameter]["NoEcho"], true,
            "{id}: {parameter} would be echoed"
        );
        assert!(
            t["Parameters"][parameter].get("Default").is_none(),
            "{id}: {parameter} has a default"
        );
    }
    for (id, _) in resources_of(&t, "AWS::KMS::Key") {
        assert!(properties(&t, id).get("KeyMaterial").is_none(), "{id}");
    }
    // A function is told where a secret or key is (a reference), never its value.
    for (id, _) in resources_of(&t, "AWS::Serverless::Function") {
        let variables = properties(&t, id)["Environment"]["Variables"].clone();
        for (name, value) in variables.as_object().into_iter().flatten() {
            let upper = name.to_uppercase();
            if ["SECRET", "TOKEN", "PASSWORD", "KEY"]
                .iter()
                .any(|w| upper.contains(w))
            {
                assert!(
                    value.is_object(),
                    "{id}: {name} is a literal; give a !Ref or !GetAtt to where it is kept"
                );
            }
        }
    }
}

#[test]
fn outputs_name_the_table_and_the_token_key() {
    let t = template();
    let outputs = &t["Outputs"];
    assert_eq!(outputs["TableName"]["Value"], reference("Table"));
    assert_eq!(outputs["TokenKeyArn"]["Value"], arn_of("TokenKey"));
}

// ---- outputs ------------------------------------------------------------------------------------

#[test]
fn outputs_name_the_notification_urls() {
    let t = template();
    let outputs = t["Outputs"].as_object().expect("Outputs");
    let names: BTreeSet<&str> = outputs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "ApiUrl",
            "NotificationUrl",
            "LifecycleNotificationUrl",
            "NotificationsQueueUrl",
            "NotificationsDeadLetterQueueUrl",
            "ChangesQueueUrl",
            "ChangesQueueArn",
            "ClientStateKeysSecretArn",
            "TableName",
            "TokenKeyArn",
            "AlarmTopicArn",
        ])
    );
    for (name, output) in outputs {
        assert!(
            output.get("Export").is_none(),
            "{name} is exported to other stacks"
        );
    }

    let base = "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/";
    assert_eq!(outputs["ApiUrl"]["Value"], sub(base));
    // The URLs given to Graph are the routes notify serves.
    let events = &properties(&t, "NotifyFunction")["Events"];
    let path = |event: &str| {
        events[event]["Properties"]["Path"]
            .as_str()
            .expect("a path")
            .to_owned()
    };
    assert_eq!(
        outputs["NotificationUrl"]["Value"],
        sub(&format!("{}{}", base, &path("Notifications")[1..]))
    );
    assert_eq!(
        outputs["LifecycleNotificationUrl"]["Value"],
        sub(&format!("{}{}", base, &path("LifecycleNotifications")[1..]))
    );
    assert_eq!(
        outputs["NotificationsQueueUrl"]["Value"],
        reference("NotificationsQueue")
    );
    assert_eq!(
        outputs["NotificationsDeadLetterQueueUrl"]["Value"],
        reference("NotificationsDeadLetterQueue")
    );
    assert_eq!(
        outputs["ClientStateKeysSecretArn"]["Value"],
        reference("ClientStateKeysSecret")
    );
    // The changes queue is the downstream contract: consumers find it here.
    assert_eq!(outputs["ChangesQueueUrl"]["Value"], reference("ChangesQueue"));
    assert_eq!(outputs["ChangesQueueArn"]["Value"], arn_of("ChangesQueue"));
}

// ---- samconfig.toml -----------------------------------------------------------------------------

#[test]
fn samconfig_deploys_with_iam_capability_and_never_names_a_region_or_profile() {
    let text = std::fs::read_to_string(repository_root().join("samconfig.toml")).expect("samconfig.toml");
    let settings: BTreeSet<String> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().replace(' ', ""))
        .filter(|line| line.contains('='))
        .collect();
    for expected in [
        "version=0.1",
        "stack_name=\"graphfeed\"",
        "parallel=false",
        "lint=true",
        "capabilities=\"CAPABILITY_IAM\"",
        "confirm_changeset=true",
        "resolve_s3=true",
        "fail_on_empty_changeset=false",
    ] {
        assert!(settings.contains(expected), "samconfig.toml lacks {expected}");
    }
    for forbidden in ["region=", "profile="] {
        assert!(
            !settings.iter().any(|s| s.starts_with(forbidden)),
            "samconfig.toml sets {forbidden}"
        );
    }
}

// ---- connect ---------------------------------------------------------------------------------

#[test]
fn connect_serves_the_user_routes_and_may_touch_only_its_table_key_queue_secrets_and_read_change_logs() {
    let t = template();
    let connect = properties(&t, "ConnectFunction");
    let mut routes = BTreeSet::new();
    for event in connect["Events"].as_object().expect("events").values() {
        assert_eq!(event["Type"], "HttpApi");
        assert_eq!(event["Properties"]["ApiId"], reference("HttpApi"));
        routes.insert(format!(
            "{} {}",
            event["Properties"]["Method"].as_str().unwrap(),
            event["Properties"]["Path"].as_str().unwrap()
        ));
    }
    assert_eq!(
        routes,
        BTreeSet::from([
            "DELETE /connect".to_owned(),
            "GET /changes".to_owned(),
            "GET /connect".to_owned(),
            "POST /connect".to_owned()
        ])
    );

    let mut grants = BTreeSet::new();
    for policy in as_list(&connect["Policies"]) {
        for statement in as_list(&policy["Statement"]) {
            assert_eq!(statement["Effect"], "Allow");
            for action in as_list(&statement["Action"]) {
                for resource in as_list(&statement["Resource"]) {
                    grants.insert((
                        action.as_str().unwrap().to_owned(),
                        resource.to_string(),
                        statement["Condition"].to_string(),
                    ));
                }
            }
        }
    }
    let none = Value::Null.to_string();
    let own_items =
        json!({"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["USER#*", "DRIVE#*"]}}).to_string();
    let change_logs = json!({"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["LOG#*"]}}).to_string();
    let purpose = json!({
        "StringEquals": {"kms:EncryptionContext:graphfeed:purpose": "refresh-token"},
        "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["graphfeed:tenant", "graphfeed:user", "graphfeed:purpose"]}
    })
    .to_string();
    let expected: BTreeSet<(String, String, String)> = [
        ("dynamodb:GetItem", arn_of("Table"), &own_items),
        // GET /changes: a query on a change log, never an index.
        ("dynamodb:Query", arn_of("Table"), &change_logs),
        ("dynamodb:PutItem", arn_of("Table"), &own_items),
        ("dynamodb:DeleteItem", arn_of("Table"), &own_items),
        ("kms:GenerateDataKey", arn_of("TokenKey"), &purpose),
        ("kms:Decrypt", arn_of("TokenKey"), &purpose),
        ("sqs:SendMessage", arn_of("NotificationsQueue"), &none),
        (
            "secretsmanager:GetSecretValue",
            reference("ClientStateKeysSecret"),
            &none,
        ),
        (
            "secretsmanager:GetSecretValue",
            reference("EntraClientSecretSecret"),
            &none,
        ),
    ]
    .into_iter()
    .map(|(a, r, c)| (a.to_owned(), r.to_string(), c.clone()))
    .collect();
    assert_eq!(grants, expected);

    let env = &connect["Environment"]["Variables"];
    assert_eq!(env["TABLE_NAME"], reference("Table"));
    assert_eq!(env["KMS_KEY_ID"], arn_of("TokenKey"));
    assert_eq!(
        env["ENTRA_CLIENT_SECRET_ARN"],
        reference("EntraClientSecretSecret")
    );
    assert!(
        env.get("NOTIFICATION_URL").is_none(),
        "derived from the request's own domain: a !Ref to the API would be circular"
    );
}

// ---- process-changes -------------------------------------------------------------------------

/// A number, or the default of the Number parameter it `!Ref`s.
fn number_behind(t: &Value, value: &Value) -> i64 {
    let value = match value.get("Ref").and_then(Value::as_str) {
        Some(parameter) => {
            assert_eq!(t["Parameters"][parameter]["Type"], "Number", "{parameter}");
            &t["Parameters"][parameter]["Default"]
        }
        None => value,
    };
    value
        .as_i64()
        .unwrap_or_else(|| panic!("{value} is not a whole number or a Number parameter with a default"))
}

/// The one event source mapping that invokes `function`.
fn event_source_mapping<'t>(t: &'t Value, function: &str) -> &'t Value {
    let mappings: Vec<_> = resources_of(t, "AWS::Lambda::EventSourceMapping")
        .into_iter()
        .filter(|(_, m)| m["Properties"]["FunctionName"] == reference(function))
        .collect();
    assert_eq!(
        mappings.len(),
        1,
        "{function} should have exactly one event source mapping"
    );
    &mappings[0].1["Properties"]
}

/// Every (action, resource, condition) a function's inline policies allow, all inline documents.
fn grants_of(t: &Value, function: &str) -> BTreeSet<(String, String, String)> {
    let mut grants = BTreeSet::new();
    for policy in as_list(&properties(t, function)["Policies"]) {
        let statements = policy
            .get("Statement")
            .unwrap_or_else(|| panic!("{function}: not an inline policy document: {policy}"));
        for statement in as_list(statements) {
            assert_eq!(statement["Effect"], "Allow", "{function}");
            assert!(
                statement.get("NotAction").is_none() && statement.get("NotResource").is_none(),
                "{function}"
            );
            for action in as_list(&statement["Action"]) {
                for resource in as_list(&statement["Resource"]) {
                    grants.insert((
                        action.as_str().expect("an action").to_owned(),
                        resource.to_string(),
                        statement["Condition"].to_string(),
                    ));
                }
            }
        }
    }
    grants
}

#[test]
fn process_changes_reads_the_notifications_queue_ten_at_a_time_reporting_batch_item_failures() {
    let t = template();
    // Not a SAM `Events: SQS`: that attaches AWSLambdaSQSQueueExecutionRole, which reaches every
    // queue in the account.
    assert!(
        properties(&t, "ProcessChangesFunction").get("Events").is_none(),
        "an SAM SQS event would grant the poller every queue in the account"
    );
    let mapping = event_source_mapping(&t, "ProcessChangesFunction");
    assert_eq!(mapping["EventSourceArn"], arn_of("NotificationsQueue"));
    assert_eq!(mapping["BatchSize"], 10, "a FIFO queue's most per batch");
    assert_eq!(
        mapping["FunctionResponseTypes"],
        json!(["ReportBatchItemFailures"])
    );
    assert!(mapping.get("Enabled").is_none_or(|e| e == true));
    assert!(
        mapping.get("MaximumBatchingWindowInSeconds").is_none(),
        "FIFO queues take no batching window"
    );
    assert!(
        mapping.get("FilterCriteria").is_none(),
        "a filtered-out message is deleted unseen"
    );

    // A bound on concurrent walks, inside what an event source mapping accepts (2 to 1000).
    let concurrency = number_behind(&t, &mapping["ScalingConfig"]["MaximumConcurrency"]);
    assert!(
        (2..=1000).contains(&concurrency),
        "MaximumConcurrency {concurrency}"
    );
    assert_eq!(concurrency, 20);

    assert_eq!(effective(&t, "ProcessChangesFunction", "Timeout"), 60);
    assert_eq!(effective(&t, "ProcessChangesFunction", "MemorySize"), 256);
    assert_eq!(
        resource(&t, "ProcessChangesFunction")["Metadata"]["BuildProperties"]["Binary"],
        "process-changes"
    );
    assert_eq!(
        properties(&t, "ProcessChangesFunction")["CodeUri"],
        "functions/process-changes"
    );
}

#[test]
fn the_notifications_queue_hides_a_batch_for_at_least_six_times_process_changes_timeout() {
    let t = template();
    let timeout = effective(&t, "ProcessChangesFunction", "Timeout")
        .as_i64()
        .expect("a timeout");
    let visibility = properties(&t, "NotificationsQueue")["VisibilityTimeout"]
        .as_i64()
        .expect("a visibility timeout");
    // Lambda's advice for an SQS source: a batch retried after a throttle stays hidden meanwhile.
    assert!(
        visibility >= 6 * timeout,
        "visibility {visibility} s is under 6 x process-changes' {timeout} s"
    );
    assert!(visibility <= 43_200, "SQS's most is 12 hours");
}

#[test]
fn a_notification_reaches_the_dead_letter_queue_only_after_about_a_day_of_backoff() {
    let t = template();
    let receives = properties(&t, "NotificationsQueue")["RedrivePolicy"]["maxReceiveCount"]
        .as_i64()
        .expect("a maxReceiveCount");
    assert!(receives >= 100, "maxReceiveCount {receives}");
    // process-changes backs a failed message off for min(2^n s, 900 s), +-20%, after its n-th
    // receive (or Graph's longer Retry-After): the DLQ may only see what failed for most of a day.
    let most = shared::process::MAX_RETRY_DELAY.as_secs() as f64;
    let nominal: f64 = (1..=receives).map(|n| 2_f64.powi(n as i32).min(most)).sum();
    assert!(
        nominal >= 22.0 * 3600.0,
        "{receives} receives span only {nominal} s of backoff"
    );
    assert!(
        0.8 * nominal >= 18.0 * 3600.0,
        "{receives} receives span only {} s with the jitter",
        0.8 * nominal
    );
}

#[test]
fn process_changes_is_told_every_store_queue_secret_and_url_by_environment() {
    let t = template();
    let variables = properties(&t, "ProcessChangesFunction")["Environment"]["Variables"].clone();
    let base = "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}";
    // The URLs it gives Graph on a re-subscribe are the routes notify serves (and the outputs).
    let outputs = &t["Outputs"];
    assert_eq!(variables["NOTIFICATION_URL"], outputs["NotificationUrl"]["Value"]);
    assert_eq!(
        variables["LIFECYCLE_NOTIFICATION_URL"],
        outputs["LifecycleNotificationUrl"]["Value"]
    );
    let expected = json!({
        "TABLE_NAME": reference("Table"),
        "KMS_KEY_ID": arn_of("TokenKey"),
        "NOTIFICATIONS_QUEUE_URL": reference("NotificationsQueue"),
        "CHANGES_QUEUE_URL": reference("ChangesQueue"),
        "DEAD_LETTER_QUEUE_URL": reference("NotificationsDeadLetterQueue"),
        "ENTRA_TENANT_ID": reference("EntraTenantId"),
        "ENTRA_CLIENT_ID": reference("EntraClientId"),
        "ENTRA_CLIENT_SECRET_ARN": reference("EntraClientSecretSecret"),
        "CLIENT_STATE_KEYS_SECRET_ARN": reference("ClientStateKeysSecret"),
        "NOTIFICATION_URL": sub(&format!("{base}/notifications")),
        "LIFECYCLE_NOTIFICATION_URL": sub(&format!("{base}/lifecycle")),
        "CHANGE_LOG_RETENTION_DAYS": reference("ChangeLogRetentionDays"),
        "RUST_LOG": "info",
    });
    assert_eq!(variables, expected);
    assert_eq!(number_behind(&t, &reference("ChangeLogRetentionDays")), 7);
}

#[test]
fn process_changes_may_touch_only_its_table_key_queues_and_secrets() {
    let t = template();
    let function = properties(&t, "ProcessChangesFunction");
    assert!(function.get("Role").is_none() && function.get("PermissionsBoundary").is_none());

    let none = Value::Null.to_string();
    // The same grant on the token key as connect's: the vault's purpose and its three keys only.
    let purpose = json!({
        "StringEquals": {"kms:EncryptionContext:graphfeed:purpose": "refresh-token"},
        "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["graphfeed:tenant", "graphfeed:user", "graphfeed:purpose"]}
    })
    .to_string();
    let table_actions = [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
        "dynamodb:BatchGetItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:TransactWriteItems",
        "dynamodb:ConditionCheckItem",
    ];
    let queue_actions = [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:SendMessage",
    ];
    let mut expected: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut grant = |action: &str, resource: Value, condition: &str| {
        expected.insert((action.to_owned(), resource.to_string(), condition.to_owned()));
    };
    for action in table_actions {
        // Every kind of item (DRIVE#, USER#, IDX#, LOG#, STAGE#, TENANT#), but the table only:
        // never an index (the expiry index is renew's).
        grant(action, arn_of("Table"), &none);
    }
    grant("kms:GenerateDataKey", arn_of("TokenKey"), &purpose);
    grant("kms:Decrypt", arn_of("TokenKey"), &purpose);
    for action in queue_actions {
        grant(action, arn_of("NotificationsQueue"), &none);
    }
    grant("sqs:SendMessage", arn_of("ChangesQueue"), &none);
    grant("sqs:SendMessage", arn_of("NotificationsDeadLetterQueue"), &none);
    grant(
        "secretsmanager:GetSecretValue",
        reference("ClientStateKeysSecret"),
        &none,
    );
    grant(
        "secretsmanager:GetSecretValue",
        reference("EntraClientSecretSecret"),
        &none,
    );
    assert_eq!(grants_of(&t, "ProcessChangesFunction"), expected);
}

#[test]
fn notify_keeps_reserved_concurrency_so_walks_cannot_starve_graphs_acknowledgement() {
    let t = template();
    let reserved = &properties(&t, "NotifyFunction")["ReservedConcurrentExecutions"];
    assert_eq!(reserved, &reference("NotifyReservedConcurrency"));
    let parameter = &t["Parameters"]["NotifyReservedConcurrency"];
    assert_eq!(number_behind(&t, reserved), 20);
    assert!(
        parameter["MinValue"].as_i64().is_some_and(|m| m >= 1),
        "0 would throttle every notification"
    );
    // A new account's quota of 10 leaves nothing to reserve: the operator must be told.
    let description = parameter["Description"].as_str().expect("a description");
    assert!(
        description.contains("100") && description.contains("10 "),
        "{description}"
    );

    // Walks are bounded by their mapping, not by a reservation that would idle unused.
    assert!(
        properties(&t, "ProcessChangesFunction")
            .get("ReservedConcurrentExecutions")
            .is_none()
    );
}

// ---- the changes queue ------------------------------------------------------------------------

#[test]
fn the_changes_queue_is_high_throughput_fifo_kept_for_fourteen_days() {
    let t = template();
    assert_eq!(resource(&t, "ChangesQueue")["Type"], "AWS::SQS::Queue");
    let queue = properties(&t, "ChangesQueue");
    let name = queue["QueueName"]["Fn::Sub"].as_str().expect("a !Sub name");
    assert!(name.ends_with("changes.fifo"), "{name}");
    assert_eq!(queue["QueueName"], sub("${AWS::StackName}-changes.fifo"));
    assert_eq!(queue["FifoQueue"], true);
    // Two different change events can be byte-identical: the publisher deduplicates by id.
    assert_eq!(queue["ContentBasedDeduplication"], false);
    assert_eq!(queue["DeduplicationScope"], "messageGroup");
    assert_eq!(queue["FifoThroughputLimit"], "perMessageGroupId");
    // The downstream contract: a consumer down for two weeks loses nothing.
    assert_eq!(queue["MessageRetentionPeriod"], 1_209_600);
    assert_eq!(queue["SqsManagedSseEnabled"], true);
    // Only process-changes publishes to it.
    let changes = arn_of("ChangesQueue").to_string();
    for (id, _) in resources_of(&t, "AWS::Serverless::Function") {
        let sends = grants_of(&t, id)
            .iter()
            .any(|(action, resource, _)| action == "sqs:SendMessage" && *resource == changes);
        assert_eq!(sends, id == "ProcessChangesFunction", "{id}");
    }
}

// ---- renew -------------------------------------------------------------------------------------

/// The period of an EventBridge rate expression: `rate(1 hour)`, `rate(15 minutes)`, `rate(2 days)`.
fn rate_period(expression: &str) -> Duration {
    let inner = expression
        .strip_prefix("rate(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{expression:?} is not a rate expression"));
    let (value, unit) = inner
        .split_once(' ')
        .unwrap_or_else(|| panic!("{expression:?} is not rate(<value> <unit>)"));
    let value: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("{expression:?}: {value:?} is not a whole number"));
    // EventBridge wants the singular unit with 1 and the plural with more.
    let unit_seconds = match (unit, value) {
        ("minute", 1) | ("minutes", 2..) => 60,
        ("hour", 1) | ("hours", 2..) => 3600,
        ("day", 1) | ("days", 2..) => 86_400,
        _ => panic!("{expression:?}: EventBridge refuses {value} {unit}"),
    };
    Duration::from_secs(value * unit_seconds)
}

/// A Number parameter's `(Default, MinValue, MaxValue)`.
fn number_parameter(t: &Value, name: &str) -> (i64, i64, i64) {
    let parameter = &t["Parameters"][name];
    assert_eq!(parameter["Type"], "Number", "{name}");
    let field = |field: &str| {
        parameter[field]
            .as_i64()
            .unwrap_or_else(|| panic!("{name} has no whole {field}"))
    };
    (field("Default"), field("MinValue"), field("MaxValue"))
}

#[test]
fn rate_expressions_parse_as_eventbridge_reads_them() {
    assert_eq!(rate_period("rate(1 hour)"), Duration::from_secs(3600));
    assert_eq!(rate_period("rate(15 minutes)"), Duration::from_secs(900));
    assert_eq!(rate_period("rate(2 days)"), Duration::from_secs(172_800));
    for refused in [
        "rate(1 hours)",
        "rate(2 hour)",
        "rate(0 minutes)",
        "cron(0 * * * ? *)",
    ] {
        assert!(
            std::panic::catch_unwind(|| rate_period(refused)).is_err(),
            "{refused} parsed"
        );
    }
}

#[test]
fn renew_runs_one_at_a_time_for_up_to_five_minutes_and_lambda_does_not_retry_a_failed_run() {
    let t = template();
    let function = resource(&t, "RenewFunction");
    assert_eq!(function["Type"], "AWS::Serverless::Function");
    assert_eq!(function["Metadata"]["BuildMethod"], "rust-cargolambda");
    assert_eq!(function["Metadata"]["BuildProperties"]["Binary"], "renew");
    let renew = properties(&t, "RenewFunction");
    assert_eq!(renew["CodeUri"], "functions/renew");
    assert_eq!(effective(&t, "RenewFunction", "Timeout"), 300);
    assert_eq!(effective(&t, "RenewFunction", "MemorySize"), 256);
    // Two runs at once would PATCH the same subscriptions twice.
    assert_eq!(renew["ReservedConcurrentExecutions"], 1);
    // The next scheduled run is the retry: one run is one invocation.
    assert_eq!(renew["EventInvokeConfig"]["MaximumRetryAttempts"], 0);
    assert!(renew.get("Role").is_none() && renew.get("PermissionsBoundary").is_none());
}

#[test]
fn renew_runs_hourly_on_an_enabled_schedule_and_sees_each_subscription_72_times_before_it_lapses() {
    let t = template();
    let events = properties(&t, "RenewFunction")["Events"]
        .as_object()
        .expect("renew has events");
    assert_eq!(events.len(), 1, "only its schedule invokes renew");
    let event = events.values().next().expect("an event");
    assert_eq!(event["Type"], "Schedule", "an EventBridge rule");
    assert_eq!(event["Properties"]["Enabled"], true);
    // A literal rate expression: the local stack reads its period from here.
    let expression = event["Properties"]["Schedule"]
        .as_str()
        .expect("a literal rate expression");
    let period = rate_period(expression);
    assert_eq!(period, Duration::from_secs(3600));
    // The renew alarms count in hours; renew's one reserved execution would throttle runs that
    // come closer than its timeout.
    let timeout = effective(&t, "RenewFunction", "Timeout")
        .as_u64()
        .expect("a timeout");
    assert!(period > Duration::from_secs(timeout));

    // Renewal starts RenewWindowMinutes before expiry: that many hourly runs see a subscription.
    let window = Duration::from_secs(60 * number_behind(&t, &reference("RenewWindowMinutes")) as u64);
    let runs = window.as_secs() / period.as_secs();
    assert_eq!(runs, 72);
}

#[test]
fn renews_limits_default_to_a_72_hour_window_64_calls_in_flight_and_200_calls_a_second() {
    let t = template();
    let window = number_parameter(&t, "RenewWindowMinutes");
    assert_eq!(window, (4320, 60, 40_000));
    // Under a drive subscription's 42,300-minute life, or every run renews everything.
    assert!(window.2 < 42_300);
    assert_eq!(number_parameter(&t, "RenewConcurrency"), (64, 1, 256));
    let rate = number_parameter(&t, "RenewMaxPerSecond");
    assert_eq!(rate, (200, 1, 250));
    // Graph: 5,000 subscription calls per 20 s per app, all tenants together.
    assert_eq!(rate.2, 5_000 / 20);
    let description = t["Parameters"]["RenewMaxPerSecond"]["Description"]
        .as_str()
        .expect("a description");
    for needed in ["5,000", "250/s", "graph-protocol.md §1.5"] {
        assert!(description.contains(needed), "{description}");
    }
}

#[test]
fn renew_is_told_its_table_key_queue_secrets_urls_and_limits_by_environment() {
    let t = template();
    let variables = properties(&t, "RenewFunction")["Environment"]["Variables"].clone();
    // A recreated subscription points Graph at the routes notify serves, as process-changes' does.
    let outputs = &t["Outputs"];
    assert_eq!(variables["NOTIFICATION_URL"], outputs["NotificationUrl"]["Value"]);
    assert_eq!(
        variables["LIFECYCLE_NOTIFICATION_URL"],
        outputs["LifecycleNotificationUrl"]["Value"]
    );
    let base = "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}";
    let expected = json!({
        "TABLE_NAME": reference("Table"),
        "KMS_KEY_ID": arn_of("TokenKey"),
        "NOTIFICATIONS_QUEUE_URL": reference("NotificationsQueue"),
        "ENTRA_TENANT_ID": reference("EntraTenantId"),
        "ENTRA_CLIENT_ID": reference("EntraClientId"),
        "ENTRA_CLIENT_SECRET_ARN": reference("EntraClientSecretSecret"),
        "CLIENT_STATE_KEYS_SECRET_ARN": reference("ClientStateKeysSecret"),
        "NOTIFICATION_URL": sub(&format!("{base}/notifications")),
        "LIFECYCLE_NOTIFICATION_URL": sub(&format!("{base}/lifecycle")),
        "RENEW_WINDOW_MINUTES": reference("RenewWindowMinutes"),
        "RENEW_CONCURRENCY": reference("RenewConcurrency"),
        "RENEW_MAX_PER_SECOND": reference("RenewMaxPerSecond"),
        "RUST_LOG": "info",
    });
    assert_eq!(variables, expected);
    // A reconnect inside the window renews, as renew would: one window for both.
    assert_eq!(
        properties(&t, "ConnectFunction")["Environment"]["Variables"]["RENEW_WINDOW_MINUTES"],
        reference("RenewWindowMinutes")
    );
}

#[test]
fn renew_may_touch_only_its_items_both_indexes_the_token_key_the_notifications_queue_and_its_secrets() {
    let t = template();
    let none = Value::Null.to_string();
    // Drive state, subscriptions and the safety-net marker (DRIVE#), the token it reseals
    // (USER#) and the tenant throttle (TENANT#): never an item index, staged page or change log.
    let own_items = json!({
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["USER#*", "DRIVE#*", "TENANT#*"]}
    })
    .to_string();
    let purpose = json!({
        "StringEquals": {"kms:EncryptionContext:graphfeed:purpose": "refresh-token"},
        "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["graphfeed:tenant", "graphfeed:user", "graphfeed:purpose"]}
    })
    .to_string();
    let mut expected: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut grant = |action: &str, resource: Value, condition: &str| {
        expected.insert((action.to_owned(), resource.to_string(), condition.to_owned()));
    };
    for action in [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
    ] {
        grant(action, arn_of("Table"), &own_items);
    }
    // The indexes' partition keys are EXP#n and WALK#n: the table's condition cannot apply.
    grant("dynamodb:Query", sub("${Table.Arn}/index/gsi1"), &none);
    grant("dynamodb:Query", sub("${Table.Arn}/index/gsi2"), &none);
    grant("kms:GenerateDataKey", arn_of("TokenKey"), &purpose);
    grant("kms:Decrypt", arn_of("TokenKey"), &purpose);
    // Catch-up and safety-net walks: the notifications queue only.
    grant("sqs:SendMessage", arn_of("NotificationsQueue"), &none);
    grant(
        "secretsmanager:GetSecretValue",
        reference("ClientStateKeysSecret"),
        &none,
    );
    grant(
        "secretsmanager:GetSecretValue",
        reference("EntraClientSecretSecret"),
        &none,
    );
    let grants = grants_of(&t, "RenewFunction");
    assert_eq!(grants, expected);

    // Exactly connect's grant on the token key.
    let kms = |grants: BTreeSet<(String, String, String)>| -> BTreeSet<(String, String, String)> {
        grants
            .into_iter()
            .filter(|(action, _, _)| action.starts_with("kms:"))
            .collect()
    };
    assert_eq!(kms(grants), kms(grants_of(&t, "ConnectFunction")));
}

#[test]
fn no_function_may_use_a_wildcard_action_or_resource() {
    let t = template();
    for (id, _) in resources_of(&t, "AWS::Serverless::Function") {
        for (action, resource, _) in grants_of(&t, id) {
            assert!(!action.contains('*'), "{id} may {action}");
            assert!(!resource.contains('*'), "{id} may {action} on {resource}");
        }
    }
}

#[test]
fn the_walk_index_is_keyed_by_shard_and_hour_and_projects_keys_only() {
    let t = template();
    let indexes = as_list(&properties(&t, "Table")["GlobalSecondaryIndexes"]);
    let gsi2 = indexes
        .iter()
        .find(|index| index["IndexName"] == "gsi2")
        .expect("the walk index gsi2");
    assert_eq!(
        key_schema(gsi2),
        [pair("gsi2pk", "HASH"), pair("gsi2sk", "RANGE")]
    );
    // A drive-state write that leaves the hour alone then costs no index write.
    assert_eq!(gsi2["Projection"], json!({ "ProjectionType": "KEYS_ONLY" }));
    assert!(gsi2.get("ProvisionedThroughput").is_none());
}

// ---- alarms -------------------------------------------------------------------------------------

/// What an alarm watches, and when it fires.
struct ExpectedAlarm {
    id: &'static str,
    namespace: &'static str,
    metric: &'static str,
    dimension: (&'static str, Value),
    statistic: &'static str,
    period: i64,
    evaluation_periods: i64,
    datapoints_to_alarm: Option<i64>,
    threshold: f64,
    comparison: &'static str,
    missing_data: &'static str,
}

/// The functions' own metrics: embedded metric format, namespace `graphfeed`, one dimension
/// `Function` naming the function.
fn graphfeed(function: &str) -> (&'static str, Value) {
    assert!(
        ["notify", "connect", "process-changes", "renew"].contains(&function),
        "no function {function} emits metrics"
    );
    ("Function", json!(function))
}

fn expected_alarms() -> Vec<ExpectedAlarm> {
    let renew_function = ("FunctionName", reference("RenewFunction"));
    vec![
        ExpectedAlarm {
            id: "DeadLetterQueueNotEmptyAlarm",
            namespace: "AWS/SQS",
            metric: "ApproximateNumberOfMessagesVisible",
            dimension: (
                "QueueName",
                json!({ "Fn::GetAtt": ["NotificationsDeadLetterQueue", "QueueName"] }),
            ),
            statistic: "Maximum",
            period: 300,
            evaluation_periods: 1,
            datapoints_to_alarm: None,
            threshold: 0.0,
            comparison: "GreaterThanThreshold",
            missing_data: "notBreaching",
        },
        ExpectedAlarm {
            id: "RenewFailuresAlarm",
            namespace: "graphfeed",
            metric: "RenewalsFailed",
            dimension: graphfeed("renew"),
            statistic: "Sum",
            period: 3600,
            // One transient failure does not page; two failed runs do.
            evaluation_periods: 3,
            datapoints_to_alarm: Some(2),
            threshold: 0.0,
            comparison: "GreaterThanThreshold",
            missing_data: "notBreaching",
        },
        ExpectedAlarm {
            id: "SubscriptionExpiryAlarm",
            namespace: "graphfeed",
            metric: "MinTimeToExpirySeconds",
            dimension: graphfeed("renew"),
            statistic: "Minimum",
            period: 3600,
            evaluation_periods: 1,
            datapoints_to_alarm: None,
            threshold: 86_400.0,
            comparison: "LessThanThreshold",
            missing_data: "notBreaching",
        },
        ExpectedAlarm {
            id: "RenewNotRunningAlarm",
            namespace: "AWS/Lambda",
            metric: "Invocations",
            dimension: renew_function.clone(),
            statistic: "Sum",
            period: 3600,
            evaluation_periods: 2,
            datapoints_to_alarm: None,
            threshold: 1.0,
            comparison: "LessThanThreshold",
            // No invocation means no data point at all: that silence is what this alarm is for.
            missing_data: "breaching",
        },
        ExpectedAlarm {
            id: "RenewErrorsAlarm",
            namespace: "AWS/Lambda",
            metric: "Errors",
            dimension: renew_function,
            statistic: "Sum",
            period: 3600,
            evaluation_periods: 1,
            datapoints_to_alarm: None,
            threshold: 0.0,
            comparison: "GreaterThanThreshold",
            missing_data: "notBreaching",
        },
        ExpectedAlarm {
            id: "ClientStateRejectionsAlarm",
            namespace: "graphfeed",
            metric: "NotificationsRejectedClientState",
            dimension: graphfeed("notify"),
            statistic: "Sum",
            period: 300,
            evaluation_periods: 1,
            datapoints_to_alarm: None,
            threshold: 10.0,
            comparison: "GreaterThanOrEqualToThreshold",
            missing_data: "notBreaching",
        },
        ExpectedAlarm {
            id: "ProcessChangesErrorsAlarm",
            namespace: "graphfeed",
            metric: "WalkFailures",
            dimension: graphfeed("process-changes"),
            statistic: "Sum",
            period: 900,
            evaluation_periods: 1,
            datapoints_to_alarm: None,
            threshold: 50.0,
            comparison: "GreaterThanThreshold",
            missing_data: "notBreaching",
        },
    ]
}

/// Where every alarm sends: the given topic, or the stack's own when none is given.
fn alarm_topic() -> Value {
    json!({ "Fn::If": ["CreateAlarmTopic", reference("AlarmTopic"), reference("AlarmTopicArn")] })
}

#[test]
fn every_alarm_watches_the_metric_its_function_emits_and_fires_when_it_should() {
    let t = template();
    let alarms: BTreeSet<&str> = resources_of(&t, "AWS::CloudWatch::Alarm")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let expected = expected_alarms();
    assert_eq!(alarms, expected.iter().map(|a| a.id).collect::<BTreeSet<_>>());
    for want in expected {
        let id = want.id;
        let alarm = properties(&t, id);
        assert_eq!(alarm["Namespace"], want.namespace, "{id}");
        assert_eq!(alarm["MetricName"], want.metric, "{id}");
        assert_eq!(
            alarm["Dimensions"],
            json!([{ "Name": want.dimension.0, "Value": want.dimension.1 }]),
            "{id}"
        );
        assert_eq!(alarm["Statistic"], want.statistic, "{id}");
        assert_eq!(alarm["Period"], want.period, "{id}");
        assert_eq!(alarm["EvaluationPeriods"], want.evaluation_periods, "{id}");
        assert_eq!(
            alarm["DatapointsToAlarm"].as_i64(),
            want.datapoints_to_alarm,
            "{id}"
        );
        assert_eq!(alarm["Threshold"].as_f64(), Some(want.threshold), "{id}");
        assert_eq!(alarm["ComparisonOperator"], want.comparison, "{id}");
        assert_eq!(alarm["TreatMissingData"], want.missing_data, "{id}");
        assert!(alarm.get("Metrics").is_none(), "{id}: one metric, no math");
    }
}

#[test]
fn every_alarm_notifies_the_alarm_topic_on_alarm_and_on_ok_and_says_where_to_look() {
    let t = template();
    let operations = std::fs::read_to_string(repository_root().join("docs/operations.md"))
        .expect("docs/operations.md is readable");
    for (id, _) in resources_of(&t, "AWS::CloudWatch::Alarm") {
        let alarm = properties(&t, id);
        assert_eq!(alarm["AlarmActions"], json!([alarm_topic()]), "{id}");
        assert_eq!(alarm["OKActions"], json!([alarm_topic()]), "{id}");
        assert!(alarm.get("InsufficientDataActions").is_none(), "{id}");
        assert!(alarm.get("ActionsEnabled").is_none_or(|e| e == true), "{id}");

        // The description says what it means and points at the runbook's section for it.
        let description = alarm["AlarmDescription"].as_str().expect("a description");
        assert!(
            description.len() <= 1024,
            "{id}: CloudWatch keeps 1024 characters"
        );
        let name = id.strip_suffix("Alarm").expect("named ...Alarm");
        assert!(
            description.contains(&format!("docs/operations.md, \"{name}\"")),
            "{id}: {description}"
        );
        assert!(
            operations.lines().any(|line| line == format!("### {name}")),
            "docs/operations.md has no section ### {name}"
        );
    }
}

/// References to `guarded` resources outside the true branch of an `Fn::If` on `condition`.
fn unguarded_references(value: &Value, condition: &str, guarded: &BTreeSet<&str>, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(arguments)) = map.get("Fn::If")
                && arguments.first() == Some(&json!(condition))
            {
                // The true branch exists only with the resources; the false branch must not name them.
                if let Some(otherwise) = arguments.get(2) {
                    unguarded_references(otherwise, condition, guarded, found);
                }
                return;
            }
            if let Some(Value::String(id)) = map.get("Ref")
                && guarded.contains(id.as_str())
            {
                found.push(id.clone());
            }
            if let Some(Value::Array(parts)) = map.get("Fn::GetAtt")
                && let Some(Value::String(id)) = parts.first()
                && guarded.contains(id.as_str())
            {
                found.push(id.clone());
            }
            if let Some(Value::String(text)) = map.get("Fn::Sub") {
                for id in guarded {
                    if text.contains(&format!("${{{id}}}")) || text.contains(&format!("${{{id}.")) {
                        found.push((*id).to_owned());
                    }
                }
            }
            for nested in map.values() {
                unguarded_references(nested, condition, guarded, found);
            }
        }
        Value::Array(items) => {
            for nested in items {
                unguarded_references(nested, condition, guarded, found);
            }
        }
        _ => {}
    }
}

#[test]
fn the_alarm_topic_is_created_only_when_no_topic_is_given_and_both_branches_resolve() {
    let t = template();
    let parameter = &t["Parameters"]["AlarmTopicArn"];
    assert_eq!(parameter["Type"], "String");
    assert_eq!(parameter["Default"], "");
    assert_eq!(
        t["Conditions"]["CreateAlarmTopic"],
        json!({ "Fn::Equals": [reference("AlarmTopicArn"), ""] })
    );

    // The topic and its key exist exactly when no topic is given.
    let conditional: BTreeSet<&str> = t["Resources"]
        .as_object()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r.get("Condition").is_some())
        .map(|(id, r)| {
            assert_eq!(r["Condition"], "CreateAlarmTopic", "{id}");
            id.as_str()
        })
        .collect();
    assert_eq!(
        conditional,
        BTreeSet::from(["AlarmTopic", "AlarmTopicKey", "AlarmTopicKeyAlias"])
    );
    assert_eq!(resource(&t, "AlarmTopic")["Type"], "AWS::SNS::Topic");

    // Whatever the condition, nothing names a resource that is not there: the alarms and the
    // output reach the topic only through the Fn::If whose false branch is the parameter.
    for (section, owners) in [("Resources", &t["Resources"]), ("Outputs", &t["Outputs"])] {
        for (id, owner) in owners.as_object().expect("a section") {
            if owner.get("Condition") == Some(&json!("CreateAlarmTopic")) {
                continue;
            }
            let mut found = Vec::new();
            unguarded_references(owner, "CreateAlarmTopic", &conditional, &mut found);
            assert!(found.is_empty(), "{section}.{id} names {found:?} unconditionally");
        }
    }
    assert_eq!(t["Outputs"]["AlarmTopicArn"]["Value"], alarm_topic());
}

#[test]
fn the_alarm_topic_is_encrypted_under_a_rotated_key_that_cloudwatch_may_use() {
    let t = template();
    let topic = properties(&t, "AlarmTopic");
    // Not the AWS managed alias/aws/sns: CloudWatch may not use it, and no alarm would arrive.
    assert_eq!(topic["KmsMasterKeyId"], arn_of("AlarmTopicKey"));

    assert_eq!(resource(&t, "AlarmTopicKey")["Type"], "AWS::KMS::Key");
    let key = properties(&t, "AlarmTopicKey");
    assert_eq!(key["EnableKeyRotation"], true);
    assert_eq!(key["KeySpec"], "SYMMETRIC_DEFAULT");
    let allows: Vec<Value> = as_list(&key["KeyPolicy"]["Statement"])
        .into_iter()
        .filter(|s| s["Effect"] == "Allow")
        .collect();
    assert_eq!(allows.len(), 2);
    assert_eq!(
        allows[0]["Principal"],
        json!({ "AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root") })
    );
    let cloudwatch = &allows[1];
    assert_eq!(
        cloudwatch["Principal"],
        json!({ "Service": "cloudwatch.amazonaws.com" })
    );
    assert_eq!(
        cloudwatch["Action"],
        json!(["kms:Decrypt", "kms:GenerateDataKey*"])
    );
    // For this account's alarms only.
    assert_eq!(
        cloudwatch["Condition"],
        json!({ "StringEquals": { "aws:SourceAccount": reference("AWS::AccountId") } })
    );

    let alias = properties(&t, "AlarmTopicKeyAlias");
    assert_eq!(alias["AliasName"], sub("alias/${AWS::StackName}-alarms"));
    assert_eq!(alias["TargetKeyId"], reference("AlarmTopicKey"));
}

// ---- production defaults ------------------------------------------------------------------------

#[test]
fn every_kms_key_rotates_its_material() {
    let t = template();
    let keys = resources_of(&t, "AWS::KMS::Key");
    assert!(keys.len() >= 2);
    for (id, _) in keys {
        assert_eq!(properties(&t, id)["EnableKeyRotation"], true, "{id}");
    }
}

#[test]
fn every_user_route_is_throttled_far_below_graphs_routes() {
    let t = template();
    let api = properties(&t, "HttpApi");
    // Every route but Graph's (notify's) is a user route (/connect, /changes): each carries its own,
    // tighter limits (a user's token costs an OBO exchange and a KMS call).
    let mut user_routes = BTreeSet::new();
    for (id, _) in resources_of(&t, "AWS::Serverless::Function") {
        if id == "NotifyFunction" {
            continue;
        }
        for event in properties(&t, id)["Events"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, event)| event)
            .filter(|event| event["Type"] == "HttpApi")
        {
            let p = &event["Properties"];
            user_routes.insert(format!(
                "{} {}",
                p["Method"].as_str().expect("a method"),
                p["Path"].as_str().expect("a path")
            ));
        }
    }
    assert!(user_routes.contains("POST /connect"));
    assert!(user_routes.contains("GET /changes"));
    let settings = api["RouteSettings"].as_object().expect("RouteSettings");
    assert_eq!(settings.keys().cloned().collect::<BTreeSet<_>>(), user_routes);
    for (route, setting) in settings {
        assert_eq!(
            setting["ThrottlingRateLimit"],
            reference("UserApiThrottleRate"),
            "{route}"
        );
        assert_eq!(
            setting["ThrottlingBurstLimit"],
            reference("UserApiThrottleRate"),
            "{route}"
        );
    }
    let user = number_behind(&t, &reference("UserApiThrottleRate"));
    let graph = number_behind(&t, &api["DefaultRouteSettings"]["ThrottlingRateLimit"]);
    assert_eq!(user, 20);
    assert!(user * 10 <= graph, "user routes {user}/s, Graph's {graph}/s");
}
