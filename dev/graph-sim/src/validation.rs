//! The validation handshake Graph performs before it accepts a notification URL
//! (graph-protocol.md §2, §10 item 1).
//!
//! Graph POSTs `{url}?validationToken=<token>` (the existing query string kept) with an empty body,
//! `Content-Type: text/plain; charset=utf-8` and `Accept: text/plain`. The token is written with
//! application/x-www-form-urlencoded rules, so spaces travel as `+` and `:` as `%3A`; the endpoint
//! must answer 200 with the *decoded* token as its whole body within the deadline (10 s).

use std::time::Duration;

use axum::http::header;
use url::Url;

use crate::errors::{self, GraphError};

/// Why a handshake failed; each maps to the real error Graph returns (§1.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// A status other than 200, or no answer at all (connection refused, DNS, TLS).
    NotOk(Option<u16>),
    /// No complete answer within the deadline.
    TimedOut,
    /// 200, but the body was not exactly the decoded token (an encoded echo lands here).
    Mismatch,
}

impl HandshakeFailure {
    /// The error the subscription create or PATCH returns (§1.6).
    pub fn to_graph_error(&self) -> GraphError {
        match self {
            HandshakeFailure::NotOk(_) => GraphError::validation_error(errors::MSG_VALIDATION_NOT_200),
            HandshakeFailure::TimedOut => GraphError::invalid_request(errors::MSG_VALIDATION_TIMED_OUT),
            HandshakeFailure::Mismatch => GraphError::invalid_request(errors::MSG_VALIDATION_MISMATCH),
        }
    }
}

/// A fresh opaque token in the shape Graph uses today (§2 item 1); clients must treat it as opaque.
pub fn new_token() -> String {
    format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    )
}

/// `url` with `validationToken=<form-encoded token>` appended to whatever query it already has.
pub fn handshake_url(url: &Url, token: &str) -> Url {
    // form_urlencoded writes a space as '+' and ':' as "%3A", exactly as Graph does; the existing
    // query is kept byte for byte because Graph sends it back unchanged (§1.2).
    let pair = form_urlencoded::Serializer::new(String::new())
        .append_pair("validationToken", token)
        .finish();
    let query = match url.query() {
        Some(existing) if !existing.is_empty() => format!("{existing}&{pair}"),
        _ => pair,
    };
    let mut with_token = url.clone();
    with_token.set_query(Some(&query));
    with_token
}

/// Runs one handshake against `url` with the given deadline.
pub async fn handshake(
    client: &reqwest::Client,
    url: &Url,
    deadline: Duration,
) -> Result<(), HandshakeFailure> {
    let token = new_token();
    let target = handshake_url(url, &token);
    let sent = client
        .post(target.as_str())
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::ACCEPT, "text/plain")
        .header(header::CONTENT_LENGTH, "0")
        .body(Vec::<u8>::new())
        .send();
    let answer = async {
        let response = sent.await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    };
    match tokio::time::timeout(deadline, answer).await {
        Err(_) => Err(HandshakeFailure::TimedOut),
        Ok(Err(error)) if error.is_timeout() => Err(HandshakeFailure::TimedOut),
        Ok(Err(error)) => {
            tracing::debug!(%url, error = %error, "validation request could not be sent");
            Err(HandshakeFailure::NotOk(None))
        }
        Ok(Ok((status, _))) if status != 200 => Err(HandshakeFailure::NotOk(Some(status))),
        Ok(Ok((_, body))) if body.as_ref() == token.as_bytes() => Ok(()),
        Ok(Ok(_)) => Err(HandshakeFailure::Mismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_form_encoded_and_the_existing_query_is_kept() {
        let url = Url::parse("https://example.test/hook?tenant=a%20b&x=1").expect("url");
        let token = "Validation: Testing client application reachability for subscription Request-Id: 42";
        let with_token = handshake_url(&url, token);
        assert_eq!(
            with_token.as_str(),
            "https://example.test/hook?tenant=a%20b&x=1&validationToken=Validation%3A+Testing+client+\
             application+reachability+for+subscription+Request-Id%3A+42"
        );
        let decoded = with_token
            .query_pairs()
            .find(|(name, _)| name == "validationToken")
            .map(|(_, value)| value.into_owned());
        assert_eq!(decoded.as_deref(), Some(token));
    }

    #[test]
    fn each_failure_maps_to_its_real_error() {
        let not_ok = HandshakeFailure::NotOk(Some(500)).to_graph_error();
        assert_eq!(
            (not_ok.code.as_str(), not_ok.message.as_str()),
            ("ValidationError", errors::MSG_VALIDATION_NOT_200)
        );
        let timed_out = HandshakeFailure::TimedOut.to_graph_error();
        assert_eq!(
            (timed_out.code.as_str(), timed_out.message.as_str()),
            ("InvalidRequest", errors::MSG_VALIDATION_TIMED_OUT)
        );
        let mismatch = HandshakeFailure::Mismatch.to_graph_error();
        assert_eq!(
            (mismatch.code.as_str(), mismatch.message.as_str()),
            ("InvalidRequest", errors::MSG_VALIDATION_MISMATCH)
        );
    }
}
