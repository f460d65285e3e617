//! The token endpoint's errors, in Entra's shape (graph-protocol.md §7.3):
//! `{"error","error_description":"AADSTS…: … Trace ID: … Correlation ID: … Timestamp: …",
//! "error_codes":[…],"timestamp","trace_id","correlation_id","error_uri"}` plus `suberror` and
//! `claims` on claims challenges. HTTP 400, except `invalid_client` (401) and an injected
//! `temporarily_unavailable` that asks for 503.
//!
//! The texts graphfeed may match on are Entra's own (as seen in the field, see the sources in
//! §7.3) and live here as constants or functions, so tests and handlers share one spelling. Where
//! the simulator needs an error Entra words in a way not on record, the text says so plainly and
//! keeps Entra's `error` and code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The `claims` challenge returned with AADSTS50076 / AADSTS50079: a JSON string, as Entra sends it.
pub const MFA_CLAIMS_CHALLENGE: &str =
    r#"{"access_token":{"capolids":{"essential":true,"values":["7e5b1f7c-1a8e-4c1e-9a55-2f1d0c5e6b7a"]}}}"#;

/// AADSTS50076 (MFA required by Conditional Access), for a resource.
pub fn mfa_required_message(resource_app_id: &str) -> String {
    format!(
        "Due to a configuration change made by your administrator, or because you moved to a new location, \
         you must use multi-factor authentication to access '{resource_app_id}'."
    )
}

/// AADSTS50079 (the user must enroll in MFA): `interaction_required` with claims.
pub fn interaction_required_message(resource_app_id: &str) -> String {
    format!(
        "Due to a configuration change made by your administrator, or because you moved to a new location, \
         you must enroll in multi-factor authentication to access '{resource_app_id}'."
    )
}

/// AADSTS65001 DelegationDoesNotExist.
pub fn consent_required_message(client_id: &str, app_name: &str) -> String {
    format!(
        "The user or administrator has not consented to use the application with ID '{client_id}' named \
         '{app_name}'. Send an interactive authorization request for this user and resource."
    )
}

/// AADSTS700082 ExpiredOrRevokedGrantInactiveToken (90 days of inactivity).
pub fn inactive_refresh_token_message(issued_at: DateTime<Utc>) -> String {
    format!(
        "The refresh token has expired due to inactivity. The token was issued on {} and was inactive for \
         90.00:00:00.",
        entra_instant(issued_at)
    )
}

/// AADSTS70008 ExpiredOrRevokedGrant.
pub const MSG_EXPIRED_GRANT: &str = "The provided authorization code or refresh token has expired due to \
                                     inactivity. Send a new interactive authorization request for this user \
                                     and resource.";

/// AADSTS50173 FreshTokenNeeded (tokens revoked, e.g. a password reset or "revoke sessions").
pub fn revoked_grant_message(issued_at: DateTime<Utc>, valid_from: DateTime<Utc>) -> String {
    format!(
        "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might \
         have changed or reset their password. The grant was issued on '{}' and the TokensValidFrom date \
         (before which tokens are not valid) for this user is '{}'.",
        entra_instant(issued_at),
        entra_instant(valid_from)
    )
}

/// AADSTS70016 `authorization_pending` (as seen in the field, 2022).
pub const MSG_AUTHORIZATION_PENDING: &str =
    "The provided request has not yet been authorized by the user. The user must input their code.";

/// AADSTS70020 `expired_token` (as seen in the field: Azure/azure-cli#22251).
pub const MSG_DEVICE_CODE_EXPIRED: &str =
    "The provided value for the input parameter 'device_code' is not valid. This device code has expired.";

/// AADSTS65004 UserDeclinedConsent, the error-code reference's text (Entra's text for a declined
/// device code is not on record).
pub const MSG_AUTHORIZATION_DECLINED: &str = "User declined to consent to access the app.";

/// AADSTS70018 BadVerificationCode, the error-code reference's text.
pub const MSG_BAD_VERIFICATION_CODE: &str = "Invalid verification code due to User typing in wrong user code for \
                                             device code flow. Authorization is not approved.";

/// AADSTS9002313: a refresh token (or other grant) that is not one at all.
pub const MSG_MALFORMED_GRANT: &str = "Invalid request. Request is malformed or invalid.";

/// AADSTS7000215: a wrong client secret.
pub fn invalid_client_secret_message(client_id: &str) -> String {
    format!(
        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret \
         value, not the client secret ID, for a secret added to app '{client_id}'."
    )
}

/// AADSTS500131: an OBO assertion for another audience.
pub fn assertion_audience_message(audience: &str, client_id: &str, app_name: &str) -> String {
    format!(
        "Assertion audience does not match the Client app presenting the assertion. The audience in the \
         assertion was '{audience}' and the expected audience is '{client_id}' or one of the Application Uris \
         of this application with App ID '{client_id}'({app_name}). The downstream client must request a \
         token for the expected audience (the application that made the OBO request) and this application \
         should use that token as the assertion."
    )
}

/// AADSTS500133: an expired (or not yet valid) OBO assertion.
pub fn assertion_time_message(now: DateTime<Utc>, expires: DateTime<Utc>) -> String {
    format!(
        "Assertion is not within its valid time range. Ensure that the access token is not expired before \
         using it for user assertion, or request a new token. Current time: {}, expiry time of assertion {}.",
        entra_instant(now),
        entra_instant(expires)
    )
}

/// `2024-06-20T11:53:16.0381024Z`, the form Entra writes instants in inside messages.
pub fn entra_instant(at: DateTime<Utc>) -> String {
    crate::time::graph_timestamp(at)
}

/// `2024-06-20 11:53:16Z`, the form of the `timestamp` field and the description's trailer.
pub fn entra_timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// A failed token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraError {
    pub status: StatusCode,
    /// The OAuth `error`: `invalid_grant`, `invalid_client`, `interaction_required`, ...
    pub error: String,
    /// The AADSTS number.
    pub code: u32,
    /// The text after `AADSTS<code>: `.
    pub message: String,
    pub suberror: Option<String>,
    /// A claims challenge (a JSON document as a string).
    pub claims: Option<String>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl EntraError {
    /// HTTP 400 with this `error`, code and text.
    pub fn new(error: &str, code: u32, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: error.to_owned(),
            code,
            message: message.into(),
            suberror: None,
            claims: None,
            retry_after: None,
        }
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// AADSTS900144: a required parameter is missing.
    pub fn missing_parameter(name: &str) -> Self {
        Self::new(
            "invalid_request",
            900_144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    /// AADSTS7000218: no client secret (and no certificate assertion, which the simulator does not take).
    pub fn missing_client_secret() -> Self {
        Self::new(
            "invalid_client",
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
        .with_status(StatusCode::UNAUTHORIZED)
    }

    /// AADSTS7000215: the client secret is wrong (401).
    pub fn invalid_client_secret(client_id: &str) -> Self {
        Self::new(
            "invalid_client",
            7_000_215,
            invalid_client_secret_message(client_id),
        )
        .with_status(StatusCode::UNAUTHORIZED)
    }

    /// AADSTS700016: no app with this client id.
    pub fn unknown_client(client_id: &str, tenant: &str) -> Self {
        Self::new(
            "unauthorized_client",
            700_016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can \
                 happen if the application has not been installed by the administrator of the tenant or \
                 consented to by any user in the tenant. You may have sent your authentication request to the \
                 wrong tenant."
            ),
        )
    }

    /// AADSTS70003: a grant type the simulator does not serve.
    pub fn unsupported_grant_type(grant_type: &str) -> Self {
        Self::new(
            "unsupported_grant_type",
            70_003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        )
    }

    /// AADSTS90002: a tenant that does not exist.
    pub fn tenant_not_found(tenant: &str) -> Self {
        Self::new(
            "invalid_request",
            90_002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing \
                 into the correct cloud. Check with your subscription administrator, this may happen if there \
                 are no active subscriptions for the tenant."
            ),
        )
    }

    /// AADSTS50027: the OBO assertion is not a JWT.
    pub fn malformed_assertion() -> Self {
        Self::new("invalid_request", 50_027, "JWT token is invalid or malformed.")
    }

    /// AADSTS50013: the OBO assertion's key is not published.
    pub fn assertion_key_not_found(kid: &str) -> Self {
        Self::new(
            "invalid_grant",
            50_013,
            format!(
                "Assertion failed signature validation. [Reason - The key was not found., Key id: '{kid}']"
            ),
        )
    }

    /// AADSTS50013: the OBO assertion's signature (or algorithm) is wrong.
    pub fn assertion_bad_signature() -> Self {
        Self::new(
            "invalid_grant",
            50_013,
            "Assertion contains an invalid signature. [Reason - The provided signature value did not match the \
             expected signature value.]",
        )
    }

    /// AADSTS50013: the OBO assertion's issuer is not this authority's (text not on record).
    pub fn assertion_issuer(issuer: &str) -> Self {
        Self::new(
            "invalid_grant",
            50_013,
            format!(
                "Assertion is invalid. [Reason - The issuer '{issuer}' is not valid for the assertion's tenant.]"
            ),
        )
    }

    /// AADSTS500131: the OBO assertion is for another audience.
    pub fn assertion_audience(audience: &str, client_id: &str, app_name: &str) -> Self {
        Self::new(
            "invalid_grant",
            500_131,
            assertion_audience_message(audience, client_id, app_name),
        )
    }

    /// AADSTS500133: the OBO assertion has expired or is not yet valid.
    pub fn assertion_time(now: DateTime<Utc>, expires: DateTime<Utc>) -> Self {
        Self::new("invalid_grant", 500_133, assertion_time_message(now, expires))
    }

    /// AADSTS50034: the assertion's user does not exist in its tenant.
    pub fn user_not_found(tenant_id: &str) -> Self {
        Self::new(
            "invalid_grant",
            50_034,
            format!(
                "The user account {{EUII Hidden}} does not exist in the {tenant_id} directory. To sign into this \
                 application, the account must be added to the directory."
            ),
        )
    }

    /// AADSTS50020: the user is not in the tenant the request was sent to.
    pub fn user_not_in_tenant(tenant: &str) -> Self {
        Self::new(
            "invalid_grant",
            50_020,
            format!(
                "User account '{{EUII Hidden}}' from identity provider does not exist in tenant '{tenant}' and \
                 cannot access the application in that tenant. The account needs to be added as an external \
                 user in the tenant first."
            ),
        )
    }

    /// AADSTS70011: a scope the simulator cannot grant.
    pub fn invalid_scope(scope: &str) -> Self {
        Self::new(
            "invalid_scope",
            70_011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope '{scope}' is not valid."
            ),
        )
    }

    /// AADSTS1002012: client credentials need a `/.default` scope.
    pub fn client_credentials_scope(scope: &str) -> Self {
        Self::new(
            "invalid_scope",
            1_002_012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope \
                 value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        )
    }

    /// AADSTS9002313: not a refresh token at all.
    pub fn malformed_grant() -> Self {
        Self::new("invalid_grant", 9_002_313, MSG_MALFORMED_GRANT)
    }

    /// AADSTS70008: a refresh token the simulator no longer honours (replaced past its grace, or
    /// from before a reset).
    pub fn expired_grant() -> Self {
        Self::new("invalid_grant", 70_008, MSG_EXPIRED_GRANT)
    }

    /// AADSTS70000: a refresh token presented by another client.
    pub fn grant_of_another_client() -> Self {
        Self::new("invalid_grant", 70_000, "Provided grant is invalid or malformed.")
    }

    /// AADSTS50173: the user's refresh tokens were revoked.
    pub fn revoked_grant(issued_at: DateTime<Utc>, valid_from: DateTime<Utc>) -> Self {
        Self::new(
            "invalid_grant",
            50_173,
            revoked_grant_message(issued_at, valid_from),
        )
    }

    /// AADSTS700082: the refresh token expired through inactivity.
    pub fn inactive_refresh_token(issued_at: DateTime<Utc>) -> Self {
        Self::new(
            "invalid_grant",
            700_082,
            inactive_refresh_token_message(issued_at),
        )
    }

    /// AADSTS50076 on OBO/refresh: `invalid_grant`, `suberror: basic_action` and a claims
    /// challenge (§7.3: "treat invalid_grant + claims present as a claims challenge").
    pub fn mfa_required() -> Self {
        Self {
            suberror: Some("basic_action".to_owned()),
            claims: Some(MFA_CLAIMS_CHALLENGE.to_owned()),
            ..Self::new(
                "invalid_grant",
                50_076,
                mfa_required_message(super::GRAPH_RESOURCE_APP_ID),
            )
        }
    }

    /// AADSTS50079 as in the OBO doc example: `interaction_required` with a claims challenge.
    pub fn interaction_required() -> Self {
        Self {
            suberror: Some("basic_action".to_owned()),
            claims: Some(MFA_CLAIMS_CHALLENGE.to_owned()),
            ..Self::new(
                "interaction_required",
                50_079,
                interaction_required_message(super::GRAPH_RESOURCE_APP_ID),
            )
        }
    }

    /// AADSTS65001 DelegationDoesNotExist: `invalid_grant`, `suberror: consent_required`.
    pub fn consent_required(client_id: &str, app_name: &str) -> Self {
        Self {
            suberror: Some("consent_required".to_owned()),
            ..Self::new(
                "invalid_grant",
                65_001,
                consent_required_message(client_id, app_name),
            )
        }
    }

    /// `temporarily_unavailable` (AADSTS90033), HTTP 400 or 503, with `Retry-After` when given.
    pub fn temporarily_unavailable(http_503: bool, retry_after: Option<u64>) -> Self {
        Self {
            retry_after,
            ..Self::new(
                "temporarily_unavailable",
                90_033,
                "A transient error has occurred. Please try again.",
            )
            .with_status(if http_503 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            })
        }
    }

    /// AADSTS700025: a public client presented a secret (or a client assertion).
    pub fn public_client_with_secret() -> Self {
        Self::new(
            "invalid_client",
            700_025,
            "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        )
        .with_status(StatusCode::UNAUTHORIZED)
    }

    /// AADSTS28000: a token request whose scopes name more than one resource.
    pub fn more_than_one_resource(scope: &str) -> Self {
        Self::new(
            "invalid_scope",
            28_000,
            format!(
                "Provided value for the input parameter scope is not valid because it contains more than one \
                 resource. Scope {scope} is not valid."
            ),
        )
    }

    /// AADSTS70016 `authorization_pending`: the user has not approved the device code yet.
    pub fn authorization_pending() -> Self {
        Self::new("authorization_pending", 70_016, MSG_AUTHORIZATION_PENDING)
    }

    /// `slow_down` (RFC 8628 §3.5; Entra documents no such answer, so code and text are the
    /// simulator's): a poll sooner than `interval` after the previous one.
    pub fn slow_down(interval_seconds: u64) -> Self {
        Self::new(
            "slow_down",
            70_016,
            format!(
                "The client is polling too often. Wait at least {interval_seconds} seconds between requests \
                 for this device code."
            ),
        )
    }

    /// AADSTS70020 `expired_token`: the device code's 15 minutes are over.
    pub fn device_code_expired() -> Self {
        Self::new("expired_token", 70_020, MSG_DEVICE_CODE_EXPIRED)
    }

    /// `authorization_declined`: the user declined (AADSTS65004 UserDeclinedConsent).
    pub fn authorization_declined() -> Self {
        Self::new("authorization_declined", 65_004, MSG_AUTHORIZATION_DECLINED)
    }

    /// AADSTS70018 `bad_verification_code`: a device code the simulator does not know, or one
    /// already redeemed or polled with another tenant segment.
    pub fn bad_verification_code() -> Self {
        Self::new("bad_verification_code", 70_018, MSG_BAD_VERIFICATION_CODE)
    }

    /// The JSON body, with this request's ids and the sim time.
    pub fn body(&self, trace_id: &str, correlation_id: &str, now: DateTime<Utc>) -> Value {
        let timestamp = entra_timestamp(now);
        let mut body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.message
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        if let Some(object) = body.as_object_mut() {
            if let Some(suberror) = &self.suberror {
                object.insert("suberror".to_owned(), json!(suberror));
            }
            if let Some(claims) = &self.claims {
                object.insert("claims".to_owned(), json!(claims));
            }
        }
        body
    }

    /// The full response.
    pub fn to_response(&self, trace_id: &str, correlation_id: &str, now: DateTime<Utc>) -> Response {
        let mut response =
            (self.status, axum::Json(self.body(trace_id, correlation_id, now))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mfa_challenge_has_entras_shape() {
        let now = crate::time::parse_timestamp("2026-05-01T10:11:12Z").expect("time");
        let body = EntraError::mfa_required().body("trace", "corr", now);
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(body["error_codes"], json!([50076]));
        assert_eq!(body["suberror"], "basic_action");
        assert_eq!(body["timestamp"], "2026-05-01 10:11:12Z");
        let description = body["error_description"].as_str().expect("description");
        assert!(description.starts_with("AADSTS50076: Due to a configuration change"));
        assert!(
            description
                .ends_with("\r\nTrace ID: trace\r\nCorrelation ID: corr\r\nTimestamp: 2026-05-01 10:11:12Z")
        );
        let claims: Value =
            serde_json::from_str(body["claims"].as_str().expect("claims string")).expect("json");
        assert_eq!(claims["access_token"]["capolids"]["essential"], true);
    }
}
