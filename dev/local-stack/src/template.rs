//! Reads `template.yaml`, the one description of graphfeed's AWS shape, so the local stack and
//! the tests use exactly the queues, secrets and routes a deployment gets.
//!
//! It understands the CloudFormation short tags the template uses (`!Ref`, `!GetAtt`, `!Sub`)
//! against a map of what the bootstrap created; everything else is read literally.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml::Value;

/// A template problem.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("template.yaml is not valid YAML: {0}")]
    Yaml(String),
    #[error("template.yaml: {0}")]
    Shape(String),
    #[error("template.yaml refers to {0}, which the local stack cannot resolve")]
    Unresolved(String),
}

/// An HTTP API route and the function behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: String,
    pub path: String,
    pub function: String,
}

/// What a created resource answers to `!Ref` and `!GetAtt X.Arn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Physical {
    pub reference: String,
    pub arn: String,
}

/// The parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    resources: BTreeMap<String, Value>,
    parameter_defaults: BTreeMap<String, String>,
    /// `Globals.Function`: what every function inherits unless it says otherwise.
    function_globals: Value,
}

impl Template {
    /// The repository's `template.yaml` (found from this crate's location).
    pub fn repository() -> Result<Self, TemplateError> {
        Self::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml"))
    }

    pub fn load(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|e| TemplateError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let doc: Value = serde_yaml::from_str(text).map_err(|e| TemplateError::Yaml(e.to_string()))?;
        let resources = doc
            .get("Resources")
            .and_then(Value::as_mapping)
            .ok_or_else(|| TemplateError::Shape("no Resources section".into()))?
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
            .collect();
        let parameter_defaults = doc
            .get("Parameters")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                let default = match v.get("Default")? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((k.as_str()?.to_owned(), default))
            })
            .collect();
        let function_globals = doc
            .get("Globals")
            .and_then(|g| g.get("Function"))
            .cloned()
            .unwrap_or(Value::Null);
        Ok(Self {
            resources,
            parameter_defaults,
            function_globals,
        })
    }

    /// Every parameter that has a `Default`, with it.
    pub fn parameter_defaults(&self) -> BTreeMap<String, String> {
        self.parameter_defaults.clone()
    }

    /// `(logical id, properties)` of every resource of `kind`, in logical-id order.
    pub fn resources_of(&self, kind: &str) -> Vec<(&str, &Value)> {
        static EMPTY: Value = Value::Null;
        self.resources
            .iter()
            .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
            .map(|(id, r)| (id.as_str(), r.get("Properties").unwrap_or(&EMPTY)))
            .collect()
    }

    /// Every `HttpApi` event of every function: the routes API Gateway would serve.
    pub fn http_routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        for (function, props) in self.resources_of("AWS::Serverless::Function") {
            let Some(events) = props.get("Events").and_then(Value::as_mapping) else {
                continue;
            };
            for event in events.values() {
                if event.get("Type").and_then(Value::as_str) != Some("HttpApi") {
                    continue;
                }
                let p = event.get("Properties");
                let field = |name: &str| {
                    p.and_then(|p| p.get(name))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                if let (Some(method), Some(path)) = (field("Method"), field("Path")) {
                    routes.push(Route {
                        method: method.to_uppercase(),
                        path,
                        function: function.to_owned(),
                    });
                }
            }
        }
        routes
    }

    /// A resource's `Properties`, if the template has that resource.
    pub fn properties(&self, logical_id: &str) -> Option<&Value> {
        self.resources.get(logical_id)?.get("Properties")
    }

    /// A function's property, or the one it inherits from `Globals.Function`, unresolved.
    pub fn function_property(&self, function: &str, property: &str) -> Option<&Value> {
        self.properties(function)
            .and_then(|p| p.get(property))
            .or_else(|| self.function_globals.get(property))
    }

    /// A function's `Environment.Variables`, unresolved.
    pub fn function_environment(&self, function: &str) -> Vec<(String, Value)> {
        self.resources
            .get(function)
            .and_then(|r| r.get("Properties"))
            .and_then(|p| p.get("Environment"))
            .and_then(|e| e.get("Variables"))
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Resolves intrinsic functions against the pseudo parameters and what was created.
#[derive(Debug, Clone)]
pub struct Resolver<'a> {
    pub stack: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub created: &'a BTreeMap<String, Physical>,
}

impl Resolver<'_> {
    /// A scalar (string, number, bool) or a `!Ref`/`!GetAtt`/`!Sub` as a string.
    pub fn string(&self, value: &Value) -> Result<String, TemplateError> {
        match value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Tagged(tagged) => {
                let tag = tagged.tag.to_string();
                let arg = tagged
                    .value
                    .as_str()
                    .ok_or_else(|| TemplateError::Unresolved(format!("{tag} with a non-string argument")))?;
                match tag.as_str() {
                    "!Ref" => self.reference(arg),
                    "!GetAtt" => self.attribute(arg),
                    "!Sub" => self.substitute(arg),
                    other => Err(TemplateError::Unresolved(other.to_owned())),
                }
            }
            Value::Mapping(m) if m.len() == 1 => {
                let (k, v) = m
                    .iter()
                    .next()
                    .ok_or_else(|| TemplateError::Unresolved("an empty mapping".into()))?;
                let arg = v
                    .as_str()
                    .ok_or_else(|| TemplateError::Unresolved(format!("{k:?}")))?;
                match k.as_str() {
                    Some("Ref") => self.reference(arg),
                    Some("Fn::GetAtt") => self.attribute(arg),
                    Some("Fn::Sub") => self.substitute(arg),
                    _ => Err(TemplateError::Unresolved(format!("{k:?}"))),
                }
            }
            other => Err(TemplateError::Unresolved(format!("{other:?}"))),
        }
    }

    /// A value with every intrinsic inside it resolved, as JSON (for policies such as
    /// `RedrivePolicy`).
    pub fn json(&self, value: &Value) -> Result<serde_json::Value, TemplateError> {
        Ok(match value {
            Value::Mapping(m) if !is_intrinsic(m) => {
                let mut out = serde_json::Map::new();
                for (k, v) in m {
                    let key = k
                        .as_str()
                        .ok_or_else(|| TemplateError::Shape("a non-string key".into()))?;
                    out.insert(key.to_owned(), self.json(v)?);
                }
                serde_json::Value::Object(out)
            }
            Value::Sequence(items) => {
                serde_json::Value::Array(items.iter().map(|v| self.json(v)).collect::<Result<_, _>>()?)
            }
            Value::Number(n) => {
                serde_json::from_str(&n.to_string()).map_err(|e| TemplateError::Shape(e.to_string()))?
            }
            Value::Bool(b) => serde_json::Value::Bool(*b),
            other => serde_json::Value::String(self.string(other)?),
        })
    }

    fn reference(&self, name: &str) -> Result<String, TemplateError> {
        match name {
            "AWS::StackName" => Ok(self.stack.to_owned()),
            "AWS::Region" => Ok(self.region.to_owned()),
            "AWS::AccountId" => Ok(self.account.to_owned()),
            "AWS::URLSuffix" => Ok("amazonaws.com".to_owned()),
            "AWS::Partition" => Ok("aws".to_owned()),
            _ => self
                .created
                .get(name)
                .map(|p| p.reference.clone())
                .ok_or_else(|| TemplateError::Unresolved(format!("!Ref {name}"))),
        }
    }

    fn attribute(&self, name: &str) -> Result<String, TemplateError> {
        match name.split_once('.') {
            Some((id, "Arn")) => self
                .created
                .get(id)
                .map(|p| p.arn.clone())
                .ok_or_else(|| TemplateError::Unresolved(format!("!GetAtt {name}"))),
            _ => Err(TemplateError::Unresolved(format!("!GetAtt {name}"))),
        }
    }

    fn substitute(&self, text: &str) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| TemplateError::Shape(format!("unclosed ${{ in {text:?}")))?;
            let name = &after[..end];
            out.push_str(&if name.contains('.') {
                self.attribute(name)?
            } else {
                self.reference(name)?
            });
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The name a `!Ref Name` (or `{Ref: Name}`) refers to.
pub fn reference_name(value: &Value) -> Option<&str> {
    match value {
        Value::Tagged(tagged) if matches!(tagged.tag.to_string().as_str(), "!Ref") => tagged.value.as_str(),
        Value::Mapping(m) if m.len() == 1 => m.get("Ref").and_then(Value::as_str),
        _ => None,
    }
}

fn is_intrinsic(m: &serde_yaml::Mapping) -> bool {
    m.len() == 1
        && m.keys()
            .next()
            .and_then(Value::as_str)
            .is_some_and(|k| k == "Ref" || k.starts_with("Fn::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
Resources:
  Q:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub ${AWS::StackName}-q.fifo
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt D.Arn
        maxReceiveCount: 5
  F:
    Type: AWS::Serverless::Function
    Properties:
      Environment:
        Variables:
          QUEUE_URL: !Ref Q
      Events:
        A:
          Type: HttpApi
          Properties: { Method: post, Path: /a }
        S:
          Type: Schedule
"#;

    #[test]
    fn routes_environment_and_intrinsics_are_read_from_the_template() {
        let t = Template::parse(SAMPLE).unwrap();
        assert_eq!(
            t.http_routes(),
            vec![Route {
                method: "POST".into(),
                path: "/a".into(),
                function: "F".into()
            }]
        );
        let created = BTreeMap::from([
            (
                "Q".to_owned(),
                Physical {
                    reference: "http://q".into(),
                    arn: "arn:q".into(),
                },
            ),
            (
                "D".to_owned(),
                Physical {
                    reference: "http://d".into(),
                    arn: "arn:d".into(),
                },
            ),
        ]);
        let r = Resolver {
            stack: "st",
            region: "eu-west-1",
            account: "123456789012",
            created: &created,
        };
        let (_, props) = t.resources_of("AWS::SQS::Queue")[0];
        assert_eq!(r.string(&props["QueueName"]).unwrap(), "st-q.fifo");
        assert_eq!(
            r.json(&props["RedrivePolicy"]).unwrap(),
            serde_json::json!({"deadLetterTargetArn": "arn:d", "maxReceiveCount": 5})
        );
        let env = t.function_environment("F");
        assert_eq!(r.string(&env[0].1).unwrap(), "http://q");
    }

    #[test]
    fn the_repository_template_parses_and_routes_notify() {
        let t = Template::repository().unwrap();
        let routes = t.http_routes();
        assert!(
            routes
                .iter()
                .any(|r| r.path == "/notifications" && r.function == "NotifyFunction")
        );
        assert!(
            routes
                .iter()
                .any(|r| r.path == "/lifecycle" && r.function == "NotifyFunction")
        );
    }
}
