//! Calls to graphfeed's API (`/connect`, `/changes`) with the API token as Bearer, and its error
//! body `{"error":{"code","message"}}` turned into an [`Error`] whose hint says what to do next.
//!
//! A 401 is answered by refreshing the token once and retrying (a token can be refused before its
//! cached expiry, e.g. after a key rotation); a 503 or a 429 (API Gateway's throttle) by waiting
//! its `Retry-After` (at most 30 s) and retrying once, then reporting graphfeed busy.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret as _;
use serde_json::Value;

use crate::auth::{Resource, Session};
use crate::config::BaseUrl;
use crate::console::Console;
use crate::error::{Error, describe};

/// The longest `Retry-After` a command waits out before giving up and saying when to try again.
const LONGEST_WAIT: Duration = Duration::from_secs(30);
/// How long to wait after a 503 that names no time.
const DEFAULT_WAIT: Duration = Duration::from_secs(2);

/// `Retry-After` in seconds (the form Graph, Entra and graphfeed send).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A successful answer: its status and its JSON body (`Null` when empty, e.g. a 204).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// graphfeed's API, as the signed-in user.
pub struct Api<'s, 'a> {
    http: &'a reqwest::Client,
    base: &'a BaseUrl,
    session: &'s mut Session<'a>,
}

impl<'s, 'a> Api<'s, 'a> {
    pub fn new(http: &'a reqwest::Client, base: &'a BaseUrl, session: &'s mut Session<'a>) -> Self {
        Self { http, base, session }
    }

    /// `method {api_url}{path}?{query}`; a 2xx answer, or the error it came to.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        console: &mut Console<'_>,
    ) -> Result<Answer, Error> {
        let url = self.base.join(path);
        let mut token = self.session.access_token(Resource::Api).await?;
        let mut waited = false;
        loop {
            let response = self
                .http
                .request(method.clone(), &url)
                .query(query)
                .bearer_auth(token.expose_secret())
                .send()
                .await
                .map_err(|e| Error::unreachable("graphfeed's API", &url, e))?;
            let status = response.status().as_u16();
            let wait = retry_after(response.headers());
            let text = response.text().await.map_err(|e| Error::BadAnswer {
                service: "graphfeed's API",
                detail: describe(e),
            })?;
            let body: Value = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::Null)
            };
            if (200..300).contains(&status) {
                return Ok(Answer { status, body });
            }
            let failure = ApiFailure::read(status, &body, &url);
            if status == 401
                && failure.refreshable()
                && let Some(fresh) = self.session.refresh_after_rejection(Resource::Api).await?
            {
                token = fresh;
                continue;
            }
            if (status == 503 || status == 429) && !waited {
                waited = true;
                let pause = wait.unwrap_or(DEFAULT_WAIT);
                if pause <= LONGEST_WAIT {
                    console.note(format!(
                        "graphfeed is busy ({}); trying again in {} s...",
                        failure.message,
                        pause.as_secs().max(1)
                    ));
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            return Err(failure.into_error(wait));
        }
    }
}

/// graphfeed's error body, or what stands in for it.
#[derive(Debug)]
struct ApiFailure {
    status: u16,
    code: String,
    message: String,
}

impl ApiFailure {
    fn read(status: u16, body: &Value, url: &str) -> Self {
        let code = body["error"]["code"].as_str().map(str::to_owned);
        let message = body["error"]["message"].as_str().map(str::to_owned);
        match (code, message) {
            (Some(code), message) => Self {
                status,
                message: message.unwrap_or_else(|| code.clone()),
                code,
            },
            // No graphfeed error body: a route this API does not have, or a proxy's answer.
            (None, _) if status == 404 || status == 405 => Self {
                status,
                code: "route_not_found".to_owned(),
                message: format!("{url} is not a route of this graphfeed"),
            },
            (None, _) if status == 401 => Self {
                status,
                code: "invalid_token".to_owned(),
                message: "the API token was refused".to_owned(),
            },
            (None, _) => Self {
                status,
                code: format!("http_{status}"),
                message: format!("{url} answered {status}"),
            },
        }
    }

    /// A 401 that a new token may fix (not one that needs the person: sign-in or MFA).
    fn refreshable(&self) -> bool {
        !matches!(self.code.as_str(), "interaction_required" | "insufficient_claims")
    }

    fn into_error(self, retry_after: Option<Duration>) -> Error {
        if self.status == 503 || self.status == 429 || self.code == "temporarily_unavailable" {
            return Error::Busy {
                service: "graphfeed",
                detail: self.message,
                retry_after,
            };
        }
        Error::Api {
            status: self.status,
            code: self.code,
            message: self.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn graphfeeds_error_body_gives_the_code_and_message() {
        let body = json!({"error": {"code": "not_connected", "message": "This user is not connected; POST /connect first."}});
        let error = ApiFailure::read(404, &body, "http://x/connect").into_error(None);
        assert_eq!(
            error.to_string(),
            "graphfeed answered 404 not_connected: This user is not connected; POST /connect first."
        );
        assert_eq!(error.hint(), "run `graphfeed connect`");
    }

    #[test]
    fn a_404_without_graphfeeds_body_is_a_missing_route() {
        let error = ApiFailure::read(404, &Value::Null, "http://x/changes").into_error(None);
        assert!(error.to_string().contains("route_not_found"), "{error}");
        assert!(error.hint().contains("--api-url"));
    }

    #[test]
    fn api_gateways_429_throttle_is_busy_too() {
        let body = serde_json::json!({"message": "Too Many Requests"});
        let error = ApiFailure::read(429, &body, "u").into_error(None);
        assert!(matches!(error, Error::Busy { .. }), "{error}");
    }

    #[test]
    fn a_503_is_busy_with_its_retry_after() {
        let body = json!({"error": {"code": "temporarily_unavailable", "message": "Microsoft Graph is busy; retry later."}});
        let error = ApiFailure::read(503, &body, "u").into_error(Some(Duration::from_secs(9)));
        assert!(matches!(error, Error::Busy { .. }));
        assert_eq!(error.hint(), "try again in 9 s");
    }

    #[test]
    fn only_a_401_a_new_token_can_fix_is_retried_after_a_refresh() {
        let failure = |code: &str| ApiFailure::read(401, &json!({"error": {"code": code}}), "u");
        assert!(failure("invalid_token").refreshable());
        assert!(!failure("interaction_required").refreshable());
        assert!(!failure("insufficient_claims").refreshable());
    }
}
