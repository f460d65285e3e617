//! The two error vocabularies of the simulator.
//!
//! [`GraphError`] is what a Graph call fails with: a status, Graph's `code` and `message`, rendered
//! in Graph's envelope `{"error":{"code","message","innerError":{"date","request-id",
//! "client-request-id"}}}` (graph-protocol.md §1.6). The texts that graphfeed's code may match on
//! are the real ones and live here as constants, so tests and handlers share one spelling.
//!
//! [`SimError`] is what a control call (`/_sim/...`) or a [`crate::Sim`] method fails with.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// §1.6: GET/PATCH/DELETE of an expired or removed subscription.
pub const MSG_NOT_FOUND: &str = "The object was not found.";
/// §1.6: bad or incomplete creation payload.
pub const MSG_BAD_PAYLOAD: &str = "Could not process subscription creation payload. Are all property names spelled and camelCased properly?";
/// §1.1: a PATCH that carries neither property.
pub const MSG_PATCH_NEEDS_PROPERTY: &str =
    "Subscription must contain either the 'expirationDateTime' or 'notificationUrl' property and its value.";
/// §1.6: `includeResourceData` on a drive.
pub const MSG_NO_RICH_NOTIFICATIONS: &str = "File Services workload is not enabled for rich notifications.";
/// §1.6: the endpoint answered the handshake with something other than 200 (or could not be reached).
pub const MSG_VALIDATION_NOT_200: &str = "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.";
/// §1.6: the endpoint did not answer the handshake within the deadline.
pub const MSG_VALIDATION_TIMED_OUT: &str = "Subscription validation request timed out.";
/// §1.6: the endpoint answered 200 with a body other than the decoded token.
pub const MSG_VALIDATION_MISMATCH: &str =
    "Subscription validation request failed. Response must exactly match validationToken query parameter.";
/// §1.5: the observed OneDrive quota error.
pub const MSG_QUOTA: &str = "Operation: Create; Exception: [Status Code: Forbidden; Reason: Maximum number of subscriptions has been reached]";
/// §5.4: the 410 for a delta token that can no longer be served.
pub const MSG_RESYNC_REQUIRED: &str = "Resync required. Replace any local items with the server's version (including deletes) if you're sure that the service was up to date with your local changes when you last sync'd. Upload any local changes that the server doesn't know about.";
/// §8 (ODAD errors.md): the 429 of a throttled app or user (inner code `throttledRequest`).
pub const MSG_THROTTLED: &str = "The app or user has been throttled.";
/// §8 (ODAD errors.md): 503 `serviceNotAvailable`.
pub const MSG_SERVICE_NOT_AVAILABLE: &str =
    "The service is not available. Try the request again after a delay. There may be a Retry-After header.";
/// §8 (ODAD errors.md): 509 Bandwidth Limit Exceeded.
pub const MSG_BANDWIDTH_LIMIT: &str = "Your app has been throttled for exceeding the maximum bandwidth cap. Your app can retry the request again after more time has elapsed.";
/// A missing, unknown or expired bearer token.
pub const MSG_TOKEN_INVALID: &str = "Access token has expired or is not yet valid.";
/// `/me` called with an app-only token.
pub const MSG_DELEGATED_ONLY: &str = "/me request is only valid with delegated authentication flow.";
/// A resource that belongs to someone else.
pub const MSG_ACCESS_DENIED: &str =
    "Access denied. You do not have permission to perform this action or access this resource.";

/// §9.3 / ODAD errors.md: `nameAlreadyExists`.
pub const MSG_NAME_ALREADY_EXISTS: &str = "The specified item name already exists.";
/// ODAD errors.md `uploadSessionNotFound`.
pub const MSG_UPLOAD_SESSION_NOT_FOUND: &str = "Upload session not found.";
/// ODAD errors.md: the example body of `invalidRange` / `fragmentOverlap`.
pub const MSG_FRAGMENT_OVERLAP: &str = "Uploaded fragment overlaps with existing data.";
/// ODAD errors.md `fragmentOutOfOrder`.
pub const MSG_FRAGMENT_OUT_OF_ORDER: &str = "Uploaded fragment is out of order.";
/// ODAD errors.md `fragmentLengthMismatch`.
pub const MSG_FRAGMENT_LENGTH_MISMATCH: &str =
    "Declared total size for this fragment is different from that of the upload session.";

/// §1.3/§1.6: an expiration beyond the resource's maximum.
pub fn expiration_too_far_message(max_minutes: i64) -> String {
    format!("Subscription expiration can only be {max_minutes} minutes in the future.")
}

/// §1.6: the 409 for a second subscription with the same combination.
pub fn duplicate_message(existing_id: &str) -> String {
    format!("Subscription Id {existing_id} already exists for the requested combination")
}

/// §1.4: the text Graph gives for a resource it will not subscribe to (a file, a business folder).
pub fn unsupported_resource_message(resource: &str) -> String {
    format!("resource '{resource}' is not supported.")
}

/// The request-scoped identifiers that Graph puts in `innerError` and the `request-id` header.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: String,
    pub client_request_id: String,
    /// `innerError.date`, already rendered (sim time).
    pub date: String,
}

/// A failed Graph call.
#[derive(Debug, Clone)]
pub struct GraphError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// Seconds for a `Retry-After` header (faults, throttling).
    pub retry_after: Option<u64>,
    /// A body to send verbatim instead of the envelope (fault injection). Boxed, like `resync`,
    /// to keep `Result<_, GraphError>` small.
    pub raw_body: Option<Box<Value>>,
    /// `innerError.code` and a `Location` header, for the 410 resync of delta (§5.4). Boxed to
    /// keep `Result<_, GraphError>` small.
    pub resync: Option<Box<Resync>>,
    /// `innerError.code` (e.g. `throttledRequest`), when not a resync.
    pub inner_code: Option<&'static str>,
}

/// The extras of a delta 410 (§5.4).
#[derive(Debug, Clone)]
pub struct Resync {
    /// `innerError.code`, e.g. `resyncChangesApplyDifferences`.
    pub inner_code: String,
    /// The `Location` header: a link that starts a fresh enumeration.
    pub location: String,
}

impl GraphError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
            raw_body: None,
            resync: None,
            inner_code: None,
        }
    }

    /// 410 `resyncRequired` / `resyncChangesApplyDifferences` for an expired delta token, with a
    /// `Location` that starts a fresh enumeration (§5.4).
    pub fn resync_required(location: String) -> Self {
        Self {
            resync: Some(Box::new(Resync {
                inner_code: "resyncChangesApplyDifferences".to_owned(),
                location,
            })),
            ..Self::new(StatusCode::GONE, "resyncRequired", MSG_RESYNC_REQUIRED)
        }
    }

    /// 400 `InvalidRequest`, the code of most subscription rule violations (§1.6).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }

    /// 400 `ValidationError`: the handshake got a non-200 answer or none (§1.6).
    pub fn validation_error(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationError", message)
    }

    /// 404 `ResourceNotFound` "The object was not found." (§1.6).
    pub fn subscription_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "ResourceNotFound", MSG_NOT_FOUND)
    }

    /// 401 `InvalidAuthenticationToken`.
    pub fn invalid_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            MSG_TOKEN_INVALID,
        )
    }

    /// 403 for a drive or item of another user.
    pub fn access_denied() -> Self {
        Self::new(StatusCode::FORBIDDEN, "accessDenied", MSG_ACCESS_DENIED)
    }

    /// 400 for `/me` with an app-only (client credentials) token: Graph's text.
    pub fn delegated_only() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", MSG_DELEGATED_ONLY)
    }

    /// 501 for what the simulator does not do yet.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "notImplemented", message)
    }

    /// 404 for a drive or item that does not exist.
    pub fn item_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "The resource could not be found.",
        )
    }

    /// 409 `nameAlreadyExists` (§9.3): an upload whose name is taken, with `fail`.
    pub fn name_already_exists() -> Self {
        Self::new(StatusCode::CONFLICT, "nameAlreadyExists", MSG_NAME_ALREADY_EXISTS)
    }

    /// 403 `accessDenied` for a write with a token whose scopes do not allow writing files.
    pub fn write_denied() -> Self {
        Self::new(StatusCode::FORBIDDEN, "accessDenied", MSG_ACCESS_DENIED)
    }

    /// 413 for a simple upload larger than its limit (inner `maxStreamSizeExceeded`).
    pub fn simple_upload_too_large(max_bytes: u64) -> Self {
        Self {
            inner_code: Some("maxStreamSizeExceeded"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalidRequest",
                format!(
                    "Maximum stream size exceeded. A simple upload may carry at most {max_bytes} bytes; use an \
                     upload session for larger files."
                ),
            )
        }
    }

    /// 404 on an upload URL whose session is gone: cancelled, committed or expired (§9.3).
    pub fn upload_session_not_found() -> Self {
        Self {
            inner_code: Some("uploadSessionNotFound"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "itemNotFound",
                MSG_UPLOAD_SESSION_NOT_FOUND,
            )
        }
    }

    /// 401 for an upload-URL request that carries `Authorization` (§9.2: the URL is
    /// pre-authenticated; sending the header "can cause 401").
    pub fn upload_url_with_authorization() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "The upload URL is pre-authenticated: do not send an Authorization header to it.",
        )
    }

    /// 411: a fragment or upload without `Content-Length`.
    pub fn length_required() -> Self {
        Self::new(
            StatusCode::LENGTH_REQUIRED,
            "invalidRequest",
            "A Content-Length header is required on the request.",
        )
    }

    /// 416 `invalidRange` / `fragmentOverlap` (§9.2): bytes the session already has.
    pub fn fragment_overlap() -> Self {
        Self {
            inner_code: Some("fragmentOverlap"),
            ..Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalidRange",
                MSG_FRAGMENT_OVERLAP,
            )
        }
    }

    /// 416 `invalidRange` / `fragmentOutOfOrder` (§9.2): a fragment after a gap.
    pub fn fragment_out_of_order() -> Self {
        Self {
            inner_code: Some("fragmentOutOfOrder"),
            ..Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalidRange",
                MSG_FRAGMENT_OUT_OF_ORDER,
            )
        }
    }

    /// 400 `invalidRequest` / `fragmentLengthMismatch` (§9.2): a total unlike the session's.
    pub fn fragment_length_mismatch() -> Self {
        Self {
            inner_code: Some("fragmentLengthMismatch"),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                MSG_FRAGMENT_LENGTH_MISMATCH,
            )
        }
    }

    /// 413 `invalidRequest` / `maxFragmentLengthExceeded` (§9.2: each request < 60 MiB).
    pub fn fragment_too_large(length: u64, max_bytes: u64) -> Self {
        Self {
            inner_code: Some("maxFragmentLengthExceeded"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalidRequest",
                format!(
                    "The fragment is {length} bytes; each fragment must be smaller than {max_bytes} bytes."
                ),
            )
        }
    }

    /// 400 `invalidRange`: a fragment other than the last whose length is not a multiple of
    /// 320 KiB (§9.2 says such uploads may fail to commit; the simulator refuses them at once).
    pub fn fragment_not_a_multiple(length: u64, multiple: u64) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalidRange",
            format!(
                "Every fragment but the last must be a multiple of {multiple} bytes (320 KiB); this one is \
                 {length} bytes."
            ),
        )
    }

    /// 416 `invalidRange` for a Content-Range that does not describe bytes of the file.
    pub fn invalid_range(message: impl Into<String>) -> Self {
        Self::new(StatusCode::RANGE_NOT_SATISFIABLE, "invalidRange", message)
    }

    /// 400 `invalidRequest` / `uploadSessionIncomplete`: a commit before every byte arrived.
    pub fn upload_session_incomplete() -> Self {
        Self {
            inner_code: Some("uploadSessionIncomplete"),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "Upload session incomplete.",
            )
        }
    }

    /// 400 for a request body that ended early (the client went away): nothing of it is kept.
    pub fn body_interrupted() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "The request body ended before all of its bytes arrived; none of them were kept.",
        )
    }

    /// An injected fault: Graph's code for the status (§8), a Retry-After when asked.
    pub fn fault(status: StatusCode, retry_after: Option<u64>, body: Option<Value>) -> Self {
        let (code, message) = match status.as_u16() {
            429 => ("activityLimitReached", "The request has been throttled."),
            503 => (
                "serviceNotAvailable",
                "The service is temporarily unavailable. Please try again later.",
            ),
            509 => ("bandwidthLimitExceeded", "Bandwidth limit exceeded."),
            500 => ("generalException", "An unspecified error has occurred."),
            502 | 504 => ("serviceNotAvailable", "The service is temporarily unavailable."),
            401 => ("InvalidAuthenticationToken", MSG_TOKEN_INVALID),
            403 => ("accessDenied", MSG_ACCESS_DENIED),
            404 => ("itemNotFound", "The resource could not be found."),
            409 => ("conflict", "The request conflicts with the current state."),
            400 => ("invalidRequest", "The request is malformed or incorrect."),
            _ => ("generalException", "An injected fault."),
        };
        Self {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            retry_after,
            raw_body: body.map(Box::new),
            resync: None,
            inner_code: None,
        }
    }

    /// A throttled call (§8, ODAD errors.md): 429 `activityLimitReached` with inner code
    /// `throttledRequest`, 503 `serviceNotAvailable`, 509 `bandwidthLimitExceeded`; a
    /// `Retry-After` when given.
    pub fn throttled(status: u16, retry_after: Option<u64>) -> Self {
        let (status, code, message, inner) = match status {
            429 => (
                StatusCode::TOO_MANY_REQUESTS,
                "activityLimitReached",
                MSG_THROTTLED,
                Some("throttledRequest"),
            ),
            509 => (
                StatusCode::from_u16(509).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "bandwidthLimitExceeded",
                MSG_BANDWIDTH_LIMIT,
                None,
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                MSG_SERVICE_NOT_AVAILABLE,
                None,
            ),
        };
        Self {
            retry_after,
            inner_code: inner,
            ..Self::new(status, code, message)
        }
    }

    /// Graph's error envelope (§1.6).
    pub fn envelope(&self, ids: &RequestIds) -> Value {
        let mut body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {
                    "date": ids.date,
                    "request-id": ids.request_id,
                    "client-request-id": ids.client_request_id,
                }
            }
        });
        let inner_code = self
            .resync
            .as_ref()
            .map(|resync| resync.inner_code.as_str())
            .or(self.inner_code);
        if let Some(code) = inner_code
            && let Some(inner) = body
                .pointer_mut("/error/innerError")
                .and_then(Value::as_object_mut)
        {
            inner.insert("code".to_owned(), json!(code));
        }
        body
    }

    /// The full response, with the ids of the request it answers.
    pub fn to_response(&self, ids: &RequestIds) -> Response {
        let body = self
            .raw_body
            .as_deref()
            .cloned()
            .unwrap_or_else(|| self.envelope(ids));
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(resync) = &self.resync
            && let Ok(value) = HeaderValue::from_str(&resync.location)
        {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }
}

impl IntoResponse for GraphError {
    /// Renders with fresh ids; the Graph middleware re-renders with the request's own ids, found
    /// through the copy of the error left in the response's extensions.
    fn into_response(self) -> Response {
        let ids = RequestIds {
            request_id: uuid::Uuid::new_v4().to_string(),
            client_request_id: uuid::Uuid::new_v4().to_string(),
            date: crate::time::inner_error_date(chrono::Utc::now()),
        };
        let mut response = self.to_response(&ids);
        response.extensions_mut().insert(self);
        response
    }
}

/// A failed control call or [`crate::Sim`] method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be carried out as written.
    #[error("{0}")]
    BadRequest(String),
    /// The request contradicts the current state.
    #[error("{0}")]
    Conflict(String),
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            SimError::NotFound(_) => (StatusCode::NOT_FOUND, "notFound"),
            SimError::BadRequest(_) => (StatusCode::BAD_REQUEST, "badRequest"),
            SimError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        };
        (
            status,
            axum::Json(json!({"error": {"code": code, "message": self.to_string()}})),
        )
            .into_response()
    }
}
