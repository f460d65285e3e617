//! Test helpers: a fresh simulator per test, a Graph client, and a tiny webhook receiver whose
//! behaviour (validation answers, notification replies) each test scripts.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use graph_sim::{CreatedUser, NewUser, RunningSim, SimConfig, Timing};
use serde_json::{Value, json};

/// Quiet unless TEST_LOG is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("debug")
            .try_init();
    }
}

/// A simulator with short real-time deadlines and loopback HTTP allowed.
pub async fn start_sim() -> RunningSim {
    start_sim_with(|_| {}).await
}

pub async fn start_sim_with(adjust: impl FnOnce(&mut SimConfig)) -> RunningSim {
    init_logs();
    let mut config = SimConfig {
        allow_http_loopback: true,
        timing: Timing::fast(),
        ..SimConfig::default()
    };
    adjust(&mut config);
    graph_sim::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim starts")
}

pub fn new_user(running: &RunningSim) -> CreatedUser {
    running.sim().create_user(NewUser::default()).expect("user")
}

/// A Graph client bound to one simulator and one token.
#[derive(Clone)]
pub struct Graph {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Graph {
    pub fn new(running: &RunningSim, token: &str) -> Self {
        Self {
            base: running.graph_base_url(),
            token: token.to_owned(),
            http: reqwest::Client::builder().no_proxy().build().expect("client"),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("graph answers");
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("json body")
        };
        (status, value)
    }

    pub async fn create(&self, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, "/subscriptions", Some(body))
            .await
    }
}

/// A valid creation body for `resource` delivering to `url`, expiring in `minutes`.
pub fn subscription_body(running: &RunningSim, resource: &str, url: &str, minutes: i64) -> Value {
    let expiration = running.sim().now() + chrono::Duration::minutes(minutes);
    json!({
        "changeType": "updated",
        "notificationUrl": url,
        "resource": resource,
        "expirationDateTime": expiration.to_rfc3339(),
        "clientState": "client-state-secret",
    })
}

pub fn error_of(body: &Value) -> (String, String) {
    (
        body["error"]["code"].as_str().unwrap_or_default().to_owned(),
        body["error"]["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// How the receiver answers a validation handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// 200 with the decoded token: the correct answer.
    Echo,
    /// 200 with the token still form-encoded.
    EchoEncoded,
    /// This status with the decoded token.
    Status(u16),
    /// Wait this long, then echo.
    Sleep(Duration),
}

/// How the receiver answers a notification POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
}

impl Reply {
    pub const ACCEPTED: Reply = Reply {
        status: 202,
        delay: Duration::ZERO,
    };

    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
        }
    }

    pub fn slow(delay: Duration) -> Self {
        Self { status: 202, delay }
    }
}

/// What a handshake looked like on the wire.
#[derive(Debug, Clone)]
pub struct SeenValidation {
    pub path: String,
    pub raw_query: String,
    pub token: String,
    pub content_type: String,
    pub accept: String,
    pub body_len: usize,
}

#[derive(Debug)]
struct ReceiverState {
    validation: Validation,
    scripted: VecDeque<Reply>,
    default_reply: Reply,
    validations: Vec<SeenValidation>,
    /// Every notification POST body, recorded on arrival (so a late answer still counts).
    posts: Vec<Value>,
}

/// A webhook endpoint on 127.0.0.1.
#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            validation: Validation::Echo,
            scripted: VecDeque::new(),
            default_reply: Reply::ACCEPTED,
            validations: Vec::new(),
            posts: Vec::new(),
        }));
        let app = axum::Router::new().fallback(receive).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, state }
    }

    /// A URL on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn with<T>(&self, f: impl FnOnce(&mut ReceiverState) -> T) -> T {
        f(&mut self.state.lock().expect("receiver lock"))
    }

    pub fn set_validation(&self, validation: Validation) {
        self.with(|s| s.validation = validation);
    }

    /// The reply for every notification not covered by a script.
    pub fn set_reply(&self, reply: Reply) {
        self.with(|s| s.default_reply = reply);
    }

    /// Replies for the next notification POSTs, in order.
    pub fn script(&self, replies: &[Reply]) {
        self.with(|s| s.scripted.extend(replies.iter().copied()));
    }

    pub fn validations(&self) -> Vec<SeenValidation> {
        self.with(|s| s.validations.clone())
    }

    pub fn posts(&self) -> Vec<Value> {
        self.with(|s| s.posts.clone())
    }

    /// Every notification received, across all POSTs.
    pub fn notifications(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .flat_map(|post| post["value"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until at least `count` notifications have arrived (or panics after 10 s).
    pub async fn wait_for_notifications(&self, count: usize) -> Vec<Value> {
        for _ in 0..500 {
            let seen = self.notifications();
            if seen.len() >= count {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("expected {count} notifications, got {:?}", self.notifications());
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    uri: axum::http::Uri,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if let Some((_, token)) = query.iter().find(|(name, _)| name == "validationToken") {
        let raw_query = uri.query().unwrap_or_default().to_owned();
        let validation = {
            let mut state = state.lock().expect("receiver lock");
            state.validations.push(SeenValidation {
                path: uri.path().to_owned(),
                raw_query: raw_query.clone(),
                token: token.clone(),
                content_type: header("content-type"),
                accept: header("accept"),
                body_len: body.len(),
            });
            state.validation
        };
        let encoded = raw_query
            .split('&')
            .find_map(|pair| pair.strip_prefix("validationToken="))
            .unwrap_or_default()
            .to_owned();
        return match validation {
            Validation::Echo => (StatusCode::OK, token.clone()).into_response(),
            Validation::EchoEncoded => (StatusCode::OK, encoded).into_response(),
            Validation::Status(status) => {
                (StatusCode::from_u16(status).expect("status"), token.clone()).into_response()
            }
            Validation::Sleep(delay) => {
                tokio::time::sleep(delay).await;
                (StatusCode::OK, token.clone()).into_response()
            }
        };
    }
    let reply = {
        let mut state = state.lock().expect("receiver lock");
        state
            .posts
            .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
        let default_reply = state.default_reply;
        state.scripted.pop_front().unwrap_or(default_reply)
    };
    tokio::time::sleep(reply.delay).await;
    StatusCode::from_u16(reply.status)
        .expect("status")
        .into_response()
}

/// Polls `check` every 20 ms for up to 10 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// An HTTP answer: status, headers and the JSON body (`Null` when empty).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("json body, got {text}"))
    };
    Answer {
        status,
        headers,
        body,
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

/// `GET {authority}{path}`.
pub async fn get_json(running: &RunningSim, path: &str) -> Answer {
    answer(
        http()
            .get(format!("{}{path}", running.authority_host()))
            .send()
            .await
            .expect("answer"),
    )
    .await
}

/// A form POST to `{authority}/{tenant}/oauth2/v2.0/token`.
pub async fn token_request(running: &RunningSim, tenant: &str, form: &[(&str, &str)]) -> Answer {
    token_request_with(running, tenant, form, |request| request).await
}

pub async fn token_request_with(
    running: &RunningSim,
    tenant: &str,
    form: &[(&str, &str)],
    adjust: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Answer {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter())
        .finish();
    let request = http()
        .post(format!("{}/{tenant}/oauth2/v2.0/token", running.authority_host()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    answer(adjust(request).send().await.expect("answer")).await
}

/// A form POST to `{authority}{path}` (e.g. `/organizations/oauth2/v2.0/devicecode`).
pub async fn form_request(running: &RunningSim, path: &str, form: &[(&str, &str)]) -> Answer {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter())
        .finish();
    let request = http()
        .post(format!("{}{path}", running.authority_host()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    answer(request.send().await.expect("answer")).await
}

/// Any request, built by the caller, read as an [`Answer`].
pub async fn answer_of(request: reqwest::RequestBuilder) -> Answer {
    answer(request.send().await.expect("answers")).await
}

/// The form of an on-behalf-of request by the default app.
pub fn obo_form<'a>(assertion: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("client_id", graph_sim::DEFAULT_APP_ID),
        ("client_secret", graph_sim::DEFAULT_CLIENT_SECRET),
        ("assertion", assertion),
        ("scope", scope),
        ("requested_token_use", "on_behalf_of"),
    ]
}

/// The form of a refresh request by the default app.
pub fn refresh_form(refresh_token: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "refresh_token"),
        ("client_id", graph_sim::DEFAULT_APP_ID),
        ("client_secret", graph_sim::DEFAULT_CLIENT_SECRET),
        ("refresh_token", refresh_token),
        (
            "scope",
            "https://graph.microsoft.com/Files.Read.All offline_access",
        ),
    ]
}

/// Asserts Entra's error shape and returns (error, AADSTS code, description).
pub fn entra_error(answer: &Answer) -> (String, u64, String) {
    let body = &answer.body;
    for field in [
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
        "error_description",
    ] {
        assert!(body[field].is_string(), "{field} missing in {body}");
    }
    let code = body["error_codes"][0].as_u64().expect("error_codes");
    let description = body["error_description"]
        .as_str()
        .expect("description")
        .to_owned();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "description starts with the code: {description}"
    );
    assert!(description.contains("\r\nTrace ID: "), "{description}");
    (
        body["error"].as_str().expect("error").to_owned(),
        code,
        description,
    )
}

/// Any call with an optional bearer token and JSON body, the URL taken verbatim.
pub async fn send(method: reqwest::Method, url: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    let mut request = http().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    answer(request.send().await.expect("answers")).await
}

/// A call with a raw body (an upload), an optional bearer token, the URL taken verbatim.
pub async fn send_bytes(method: reqwest::Method, url: &str, token: Option<&str>, body: Vec<u8>) -> Answer {
    let mut request = http().request(method, url).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request.send().await.expect("answers")).await
}

/// A control call: `{control_url}{path}`.
pub async fn control_call(
    running: &RunningSim,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    send(method, &format!("{}{path}", running.control_url()), None, body).await
}

/// A delta walk as the client saw it: every page's `value`, and the deltaLink.
#[derive(Debug, Clone)]
pub struct DeltaWalk {
    pub pages: Vec<Vec<Value>>,
    pub delta_link: String,
}

impl DeltaWalk {
    /// Every item served, in order, repeats included.
    pub fn items(&self) -> Vec<Value> {
        self.pages.iter().flatten().cloned().collect()
    }

    /// Every id served, in order, repeats included.
    pub fn ids(&self) -> Vec<String> {
        self.items()
            .iter()
            .map(|item| item["id"].as_str().expect("id").to_owned())
            .collect()
    }

    pub fn page_sizes(&self) -> Vec<usize> {
        self.pages.iter().map(Vec::len).collect()
    }
}

/// Follows nextLinks verbatim from `first` (an absolute URL) to the deltaLink.
pub async fn delta_walk(token: &str, first: &str) -> DeltaWalk {
    delta_walk_with(token, first, |_, _| {}).await
}

/// [`delta_walk`], calling `between(page index, page)` after each page that has a nextLink.
pub async fn delta_walk_with(token: &str, first: &str, mut between: impl FnMut(usize, &Value)) -> DeltaWalk {
    let mut pages = Vec::new();
    let mut url = first.to_owned();
    for index in 0..100_000 {
        let page = send(reqwest::Method::GET, &url, Some(token), None).await;
        assert_eq!(page.status, 200, "{url}: {}", page.body);
        pages.push(page.body["value"].as_array().expect("value").clone());
        let next = page.body.get("@odata.nextLink").and_then(Value::as_str);
        let delta = page.body.get("@odata.deltaLink").and_then(Value::as_str);
        assert!(
            next.is_some() != delta.is_some(),
            "nextLink xor deltaLink: {}",
            page.body
        );
        match (next, delta) {
            (Some(next), _) => {
                between(index, &page.body);
                url = next.to_owned();
            }
            (None, Some(delta)) => {
                return DeltaWalk {
                    pages,
                    delta_link: delta.to_owned(),
                };
            }
            _ => unreachable!(),
        }
    }
    panic!("the walk never ended");
}
