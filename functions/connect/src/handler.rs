//! Translates the user-facing routes (`POST/GET/DELETE /connect`, `GET /changes`) into
//! `shared::connect` calls and their errors into answers a client can act on:
//!
//! | outcome | answer |
//! |---|---|
//! | token refused (signature, issuer, audience, expiry, alg, scope) | 401 + `WWW-Authenticate: Bearer error="invalid_token"` |
//! | Entra's keys unavailable | 503 + `Retry-After` |
//! | MFA / Conditional Access claims challenge | 401 + `WWW-Authenticate: Bearer error="insufficient_claims", claims="<base64>"` |
//! | consent missing (AADSTS65001) | 403 `consent_required` |
//! | grant dead (sign in again) | 401 `interaction_required` |
//! | Entra or Graph busy (`temporarily_unavailable`, 429, 5xx) | 503 + `Retry-After` |
//! | Graph could not validate the notification URL | 502 `notification_url_unreachable` |
//! | Graph's subscription quota | 409 `subscription_quota_reached` |
//! | `GET /changes` with a bad `after` or `limit` | 400 `invalid_request`, naming the parameter |
//! | not connected (or disconnected) | 404 `not_connected` |
//! | anything else | 500 / 503 with a fixed message; details stay in the logs |

use std::time::Duration;

use base64::Engine as _;
use lambda_http::http::{Method, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::json;
use shared::auth::TokenValidator;
use shared::connect::{ConnectError, Connector, NotificationUrls};
use shared::entra::EntraError;
use shared::graph::GraphError;
use shared::telemetry::{Metrics, Unit};

/// `NOTIFICATION_URL` / `LIFECYCLE_NOTIFICATION_URL` when set.
#[derive(Debug, Clone, Default)]
pub struct ConfiguredUrls {
    pub notification: Option<String>,
    pub lifecycle: Option<String>,
}

/// The connect handler.
pub struct Connect {
    validator: TokenValidator,
    connector: Connector,
    urls: ConfiguredUrls,
    metrics: Metrics,
}

impl Connect {
    pub fn new(validator: TokenValidator, connector: Connector, urls: ConfiguredUrls) -> Self {
        Self {
            validator,
            connector,
            urls,
            metrics: Metrics::new("connect"),
        }
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Answers one request. Never fails: every outcome is an HTTP response.
    #[tracing::instrument(name = "connect", skip_all, fields(method = %request.method()))]
    pub async fn handle(&self, request: Request) -> Response<Body> {
        let method = request.method().clone();
        let changes = is_changes_route(&request);
        let response = self.answer(request).await;
        self.count(&method, changes, response.status());
        response
    }

    /// One EMF line per request: what was asked, and whether it failed (4xx a caller's, 5xx ours).
    fn count(&self, method: &Method, changes: bool, status: StatusCode) {
        let ok = status.is_success();
        let one = |yes: bool| if yes { 1.0 } else { 0.0 };
        self.metrics.emit(&[
            ("Connects", one(ok && *method == Method::POST), Unit::Count),
            ("Disconnects", one(ok && *method == Method::DELETE), Unit::Count),
            (
                "StatusReads",
                one(ok && *method == Method::GET && !changes),
                Unit::Count,
            ),
            ("ChangeReads", one(ok && changes), Unit::Count),
            ("ConnectRefused", one(status.is_client_error()), Unit::Count),
            ("ConnectFailures", one(status.is_server_error()), Unit::Count),
        ]);
    }

    async fn answer(&self, request: Request) -> Response<Body> {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let caller = match self.validator.validate(authorization).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(reason = %e, "token refused");
                let code = if e.is_keys_unavailable() {
                    "temporarily_unavailable"
                } else {
                    "invalid_token"
                };
                let mut r = error(
                    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
                    code,
                    e.description(),
                );
                if let Some(v) = e
                    .www_authenticate()
                    .and_then(|v| header::HeaderValue::from_str(&v).ok())
                {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                if let Some(after) = e.retry_after() {
                    set_retry_after(&mut r, after);
                }
                return r;
            }
        };
        tracing::Span::current().record("method", tracing::field::display(request.method()));
        if is_changes_route(&request) {
            return match changes_query(&request) {
                Ok((after, limit)) => self
                    .connector
                    .changes(&caller.user, after, limit)
                    .await
                    .map(|page| json_response(StatusCode::OK, &json!(page)))
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "changes read failed");
                        answer_error(&e)
                    }),
                Err(message) => error(StatusCode::BAD_REQUEST, "invalid_request", &message),
            };
        }
        let outcome = match *request.method() {
            Method::POST => {
                let urls = self.notification_urls(&request);
                self.connector
                    .connect(&caller.user, &caller.raw, &urls)
                    .await
                    .map(|c| json_response(StatusCode::OK, &json!(c)))
            }
            Method::GET => self
                .connector
                .status(&caller.user)
                .await
                .map(|s| json_response(StatusCode::OK, &json!(s))),
            Method::DELETE => self
                .connector
                .disconnect(&caller.user, &caller.raw)
                .await
                .map(|()| empty(StatusCode::NO_CONTENT)),
            _ => Ok(error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Use POST, GET or DELETE.",
            )),
        };
        outcome.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "connect call failed");
            answer_error(&e)
        })
    }

    /// The configured URLs, or, when unset, URLs on this request's own API domain (which avoids
    /// a circular reference between the API and the function in the template).
    fn notification_urls(&self, request: &Request) -> NotificationUrls {
        let base = request_base(request);
        NotificationUrls {
            notification: self
                .urls
                .notification
                .clone()
                .unwrap_or_else(|| format!("{base}/notifications")),
            lifecycle: self
                .urls
                .lifecycle
                .clone()
                .unwrap_or_else(|| format!("{base}/lifecycle")),
        }
    }
}

/// `GET /changes` (any stage): the change-log route on this function.
fn is_changes_route(request: &Request) -> bool {
    request.method() == Method::GET && request.uri().path().trim_end_matches('/').ends_with("/changes")
}

/// `GET /changes` reads at most this many events per call when `limit` is not given.
pub const DEFAULT_CHANGES_LIMIT: usize = 100;
/// ... and never more than this.
pub const MAX_CHANGES_LIMIT: usize = 500;

/// `after` (a sequence, default 0) and `limit` (1 to [`MAX_CHANGES_LIMIT`]) from the query string.
fn changes_query(request: &Request) -> Result<(u64, usize), String> {
    let query = request.query_string_parameters();
    let after = match query.first("after") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| "after must be a sequence number (0 or more).".to_owned())?,
    };
    let limit = match query.first("limit") {
        None => DEFAULT_CHANGES_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_CHANGES_LIMIT).contains(l))
            .ok_or_else(|| format!("limit must be a number from 1 to {MAX_CHANGES_LIMIT}."))?,
    };
    Ok((after, limit))
}

fn request_base(request: &Request) -> String {
    let (host, stage) = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => (ctx.domain_name.clone(), ctx.stage.clone()),
        _ => (None, None),
    };
    let host = host
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let scheme = request
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("https");
    let stage = stage
        .filter(|s| s != "$default")
        .map(|s| format!("/{s}"))
        .unwrap_or_default();
    format!("{scheme}://{host}{stage}")
}

fn answer_error(e: &ConnectError) -> Response<Body> {
    match e {
        ConnectError::Entra(EntraError::ClaimsChallenge { claims, .. }) => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "insufficient_claims",
                "Sign in again with the claims in WWW-Authenticate (MFA or Conditional Access).",
            );
            let value = format!(
                "Bearer error=\"insufficient_claims\", claims=\"{}\"",
                base64::engine::general_purpose::STANDARD.encode(claims)
            );
            if let Ok(v) = header::HeaderValue::from_str(&value) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            r
        }
        ConnectError::Entra(EntraError::ConsentRequired { .. }) => error(
            StatusCode::FORBIDDEN,
            "consent_required",
            "The user (or an administrator) has not consented to graphfeed's Microsoft Graph permissions. Grant consent, then connect again.",
        ),
        ConnectError::Entra(EntraError::GrantExpired { .. }) => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "interaction_required",
                "Sign in again, then connect again.",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(
                    "Bearer error=\"invalid_token\", error_description=\"sign in again\"",
                ),
            );
            r
        }
        ConnectError::Entra(EntraError::Unavailable { retry_after }) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "Microsoft Entra is busy; retry later.",
            );
            set_retry_after(&mut r, retry_after.unwrap_or(Duration::from_secs(5)));
            r
        }
        ConnectError::Entra(EntraError::Transport { .. }) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "Microsoft Entra could not be reached; retry later.",
            );
            set_retry_after(&mut r, Duration::from_secs(5));
            r
        }
        ConnectError::Graph(g) => graph_error(g),
        ConnectError::NotConnected => error(
            StatusCode::NOT_FOUND,
            "not_connected",
            "This user is not connected; POST /connect first.",
        ),
        ConnectError::Entra(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "graphfeed's Entra configuration was refused; the operator has been told.",
        ),
        ConnectError::DisconnectedMeanwhile => error(
            StatusCode::CONFLICT,
            "disconnected_meanwhile",
            "The user disconnected while this connect was under way; connect again if that was not intended.",
        ),
        ConnectError::NoRefreshToken => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "graphfeed's Graph scopes lack offline_access; the operator has been told.",
        ),
        ConnectError::Vault(v) if !v.is_transient() => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "graphfeed's token vault refused the request; the operator has been told.",
        ),
        ConnectError::Store(shared::store::StoreError::Corrupt(_)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "graphfeed's stored state could not be read; the operator has been told.",
        ),
        ConnectError::Vault(_) | ConnectError::Store(_) | ConnectError::Queue(_) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "graphfeed could not save the connection; retry later.",
            );
            set_retry_after(&mut r, Duration::from_secs(2));
            r
        }
    }
}

fn graph_error(g: &GraphError) -> Response<Body> {
    match (g.status(), g.code()) {
        (Some(404), _) => error(
            StatusCode::NOT_FOUND,
            "drive_not_found",
            "Microsoft Graph has no OneDrive for this user (not provisioned yet?); open OneDrive once, then connect again.",
        ),
        (Some(400), Some("ValidationError" | "InvalidRequest")) if is_validation_failure(g) => error(
            StatusCode::BAD_GATEWAY,
            "notification_url_unreachable",
            "Microsoft Graph could not validate graphfeed's notification URL; check NOTIFICATION_URL and that notify is deployed.",
        ),
        (Some(403), _) if g.to_string().contains("Maximum number of subscriptions") => error(
            StatusCode::CONFLICT,
            "subscription_quota_reached",
            "Microsoft Graph's subscription quota for this drive is reached; remove other subscriptions on it.",
        ),
        (Some(401 | 403), _) => error(
            StatusCode::FORBIDDEN,
            "graph_access_denied",
            "Microsoft Graph refused access to the drive with the granted permissions.",
        ),
        _ if g.is_retryable() => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "Microsoft Graph is busy; retry later.",
            );
            set_retry_after(&mut r, g.retry_after().unwrap_or(Duration::from_secs(5)));
            r
        }
        _ => error(
            StatusCode::BAD_GATEWAY,
            "graph_error",
            "Microsoft Graph refused the request.",
        ),
    }
}

fn is_validation_failure(g: &GraphError) -> bool {
    let text = g.to_string();
    text.contains("validation request") || text.contains("validationToken")
}

fn set_retry_after(r: &mut Response<Body>, after: Duration) {
    if let Ok(v) = header::HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    response(status, Some("application/json"), Body::Text(body.to_string()))
}

fn empty(status: StatusCode) -> Response<Body> {
    response(status, None, Body::Empty)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, &json!({"error": {"code": code, "message": message}}))
}

fn response(status: StatusCode, content_type: Option<&str>, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    if let Some(ct) = content_type.and_then(|c| header::HeaderValue::from_str(c).ok()) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../../events/connect-post.json");
    const CHANGES_SAMPLE: &str = include_str!("../../../events/changes-get.json");

    fn request(event: &serde_json::Value) -> Request {
        lambda_http::request::from_str(&event.to_string()).unwrap()
    }

    #[test]
    fn get_changes_is_told_apart_from_get_connect_on_any_stage() {
        let mut event: serde_json::Value = serde_json::from_str(CHANGES_SAMPLE).unwrap();
        assert!(is_changes_route(&request(&event)));
        assert_eq!(changes_query(&request(&event)), Ok((0, 100)));
        event["rawPath"] = "/prod/changes".into();
        event["requestContext"]["stage"] = "prod".into();
        assert!(is_changes_route(&request(&event)));
        let get_connect: serde_json::Value =
            serde_json::from_str(include_str!("../../../events/connect-get.json")).unwrap();
        assert!(!is_changes_route(&request(&get_connect)));
    }

    #[test]
    fn changes_cursors_default_to_the_start_and_a_bad_one_names_the_parameter() {
        let mut event: serde_json::Value = serde_json::from_str(CHANGES_SAMPLE).unwrap();
        event["queryStringParameters"] = serde_json::json!({});
        event["rawQueryString"] = "".into();
        assert_eq!(changes_query(&request(&event)), Ok((0, DEFAULT_CHANGES_LIMIT)));
        for (query, named) in [
            ("after=-3", "after"),
            ("after=1e3", "after"),
            ("limit=0", "limit"),
            ("limit=501", "limit"),
        ] {
            let (k, v) = query.split_once('=').unwrap();
            event["queryStringParameters"] = serde_json::json!({ k: v });
            event["rawQueryString"] = query.into();
            let message = changes_query(&request(&event)).unwrap_err();
            assert!(message.starts_with(named), "{query}: {message}");
        }
        event["queryStringParameters"] = serde_json::json!({"after": "18446744073709551615", "limit": "500"});
        event["rawQueryString"] = "after=18446744073709551615&limit=500".into();
        assert_eq!(changes_query(&request(&event)), Ok((u64::MAX, MAX_CHANGES_LIMIT)));
    }

    #[test]
    fn without_configured_urls_they_come_from_the_requests_own_api_domain() {
        let mut event: serde_json::Value = serde_json::from_str(SAMPLE).unwrap();
        event["requestContext"]["domainName"] = "abc123.execute-api.eu-west-1.amazonaws.com".into();
        event["headers"]["x-forwarded-proto"] = "https".into();
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        assert_eq!(
            request_base(&request),
            "https://abc123.execute-api.eu-west-1.amazonaws.com"
        );
        event["requestContext"]["stage"] = "prod".into();
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        assert_eq!(
            request_base(&request),
            "https://abc123.execute-api.eu-west-1.amazonaws.com/prod"
        );
    }

    #[test]
    fn a_claims_challenge_carries_the_claims_base64_encoded_in_www_authenticate() {
        let e = ConnectError::Entra(EntraError::ClaimsChallenge {
            claims: r#"{"access_token":{}}"#.into(),
            description: "AADSTS50076".into(),
        });
        let r = answer_error(&e);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let header = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            header.contains(&base64::engine::general_purpose::STANDARD.encode(r#"{"access_token":{}}"#)),
            "{header}"
        );
    }

    #[test]
    fn storage_failures_never_show_internals() {
        let e = ConnectError::Store(shared::store::StoreError::Call(
            "arn:aws:dynamodb:secret-detail".into(),
        ));
        let r = answer_error(&e);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = String::from_utf8(r.body().as_ref().to_vec()).unwrap();
        assert!(!body.contains("secret-detail"));
    }
}
