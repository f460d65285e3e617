//! The Graph surface under `/v1.0`: routing, the middleware every Graph call passes through, and
//! bearer-token authentication (opaque `simgraph.` tokens only: a JWT, e.g. a token for
//! graphfeed's API, is unknown here and 401 `InvalidAuthenticationToken`, as Graph refuses a token
//! for another audience).
//!
//! The middleware first waits out the configured [`crate::Latency`] (real time, no lock held),
//! then gives every response a `request-id` header and echoes `client-request-id`, counts the
//! call by route template (and delta calls by drive), answers with an injected fault when one
//! matches (after the fault's own delay, if any), else with a throttle's error when one covers the
//! call's tenant or drive ([`crate::throttle`]), and writes every [`GraphError`] in Graph's
//! envelope with this request's ids (graph-protocol.md §1.6).

pub mod drives;
pub mod subscriptions;
pub mod uploads;

use axum::Router;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;

use crate::errors::{GraphError, RequestIds};
use crate::faults;
use crate::identity::Grant;
use crate::sim::Sim;
use crate::state::State as SimState;
use crate::throttle::CallTarget;
use crate::time::inner_error_date;

const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");

/// Where the Graph routes are mounted.
pub(crate) const GRAPH_PREFIX: &str = "/v1.0";

/// The prefix Graph's `@odata.context` values start with.
pub(crate) const ODATA_BASE: &str = "https://graph.microsoft.com/v1.0/$metadata";

/// The Graph routes, to be nested under [`GRAPH_PREFIX`].
pub(crate) fn router(sim: Sim) -> Router<Sim> {
    Router::new()
        .route(
            "/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/subscriptions/{id}",
            get(subscriptions::get_one)
                .patch(subscriptions::update)
                .delete(subscriptions::delete),
        )
        .route(
            "/subscriptions/{id}/reauthorize",
            axum::routing::post(subscriptions::reauthorize),
        )
        .route("/me/drive", get(drives::my_drive))
        .route("/me/drive/root", get(drives::my_root))
        .route("/me/drive/root/delta", get(drives::my_delta))
        .route("/me/drive/root/{call}", get(drives::my_delta_call))
        .route(
            "/me/drive/root:/{*path}",
            get(uploads::me_root_path)
                .put(uploads::me_root_path)
                .post(uploads::me_root_path),
        )
        .route("/me/drive/items/{item_id}", get(drives::my_item))
        .route(
            "/me/drive/items/{item_id}/{*rest}",
            get(uploads::me_item_path)
                .put(uploads::me_item_path)
                .post(uploads::me_item_path),
        )
        .route("/drives/{drive_id}", get(drives::drive))
        .route("/drives/{drive_id}/root", get(drives::root))
        .route("/drives/{drive_id}/root/delta", get(drives::delta))
        .route("/drives/{drive_id}/root/{call}", get(drives::delta_call))
        .route(
            "/drives/{drive_id}/root:/{*path}",
            get(uploads::drive_root_path)
                .put(uploads::drive_root_path)
                .post(uploads::drive_root_path),
        )
        .route("/drives/{drive_id}/items/{item_id}", get(drives::item))
        .route(
            "/drives/{drive_id}/items/{item_id}/{*rest}",
            get(uploads::drive_item_path)
                .put(uploads::drive_item_path)
                .post(uploads::drive_item_path),
        )
        .fallback(unknown_segment)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(sim, graph_middleware))
}

async fn graph_middleware(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let ids = begin_call(&sim, request.headers()).await;
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |matched| matched.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let now = sim.now();
    let (fault, throttled) = {
        let mut state = sim.lock();
        *state
            .counters
            .graph_calls
            .entry(format!("{method} {route}"))
            .or_default() += 1;
        let segments: Vec<String> = request
            .uri()
            .path()
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(percent_decode)
            .collect();
        let caller = bearer_token(request.headers())
            .and_then(|token| state.identity.authenticate(&token, now).cloned());
        let target = call_target(&state, &segments, caller.as_ref());
        if is_delta_call(&segments)
            && let Some(drive_id) = target.as_ref().and_then(|target| target.drive_id.clone())
        {
            *state.counters.delta_calls_by_drive.entry(drive_id).or_default() += 1;
        }
        // Nesting strips the prefix from the URI; faults are written against the full path.
        let path = format!("{GRAPH_PREFIX}{}", request.uri().path());
        let fault = faults::take_matching(&mut state.faults, &method, &path);
        if fault.is_some() {
            state.counters.faults_injected += 1;
        }
        let state = &mut *state;
        let throttled = match (&fault, &target) {
            (None, Some(target)) if caller.is_some() => {
                state.throttles.check(target, now, &mut state.counters)
            }
            _ => None,
        };
        (fault, throttled)
    };
    let mut response = match (fault, throttled) {
        (Some(fault), _) => fault_error(fault).await.to_response(&ids),
        (None, Some(throttled)) => throttled.to_response(&ids),
        (None, None) => answer_of(next, request, &ids).await,
    };
    stamp(&mut response, &ids);
    response
}

/// What every Graph-shaped call starts with (the Graph routes' and the upload URLs'
/// middleware): the configured latency, then the call's ids (`client-request-id` echoed, a new
/// `request-id`).
pub(crate) async fn begin_call(sim: &Sim, headers: &axum::http::HeaderMap) -> RequestIds {
    let latency = sim.lock().settings.latency.graph;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let client_request_id = headers
        .get(&CLIENT_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    RequestIds {
        request_id: uuid::Uuid::new_v4().to_string(),
        client_request_id,
        date: inner_error_date(sim.now()),
    }
}

/// An injected fault's answer, after its delay.
pub(crate) async fn fault_error(fault: faults::Fault) -> GraphError {
    if let Some(delay) = fault.delay_ms.filter(|&ms| ms > 0) {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    GraphError::fault(status, fault.retry_after, fault.body)
}

/// The handler's answer; a `GraphError` it left in the extensions becomes Graph's envelope.
pub(crate) async fn answer_of(next: Next, request: Request, ids: &RequestIds) -> Response {
    let response = next.run(request).await;
    match response.extensions().get::<GraphError>().cloned() {
        Some(error) => error.to_response(ids),
        None => response,
    }
}

/// Graph's `request-id` and `client-request-id` headers on an answer.
pub(crate) fn stamp(response: &mut Response, ids: &RequestIds) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&ids.request_id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&ids.client_request_id) {
        headers.insert(CLIENT_REQUEST_ID, value);
    }
}

/// Decodes `%XX` escapes of a path segment (drive ids may come as `b%21…`).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        let escaped = (byte == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                index += 3;
            }
            None => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Authorization: Bearer <token>`'s token.
fn bearer_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// `…/root/delta` or `…/root/delta(token=…)` under `/me/drive` or `/drives/{id}`.
fn is_delta_call(segments: &[String]) -> bool {
    let tail = match segments {
        [me, drive, root, call] if me == "me" && drive == "drive" && root == "root" => call,
        [drives, _, root, call] if drives == "drives" && root == "root" => call,
        _ => return false,
    };
    tail == "delta" || tail.starts_with("delta(")
}

/// The tenant and drive a call is for (see [`crate::throttle`]): the drive in a `/drives/{id}`
/// path, a subscription's drive for `/subscriptions/{id}`, otherwise the caller's own drive.
fn call_target(state: &SimState, segments: &[String], caller: Option<&Grant>) -> Option<CallTarget> {
    let own_drive = || {
        caller
            .and_then(|grant| state.identity.users.get(&grant.user_id))
            .map(|user| user.drive_id.clone())
    };
    let drive_id = match segments {
        [drives, id, ..] if drives == "drives" => {
            let known = state
                .drives
                .get(id.as_str())
                .or_else(|| state.drives.get(&id.to_ascii_lowercase()));
            Some(known.map_or_else(|| id.clone(), |drive| drive.id.clone()))
        }
        [subscriptions, id, ..] if subscriptions == "subscriptions" => state
            .subscriptions
            .get(id.as_str())
            .map(|subscription| subscription.target.drive_id.clone())
            .or_else(own_drive),
        _ => own_drive(),
    };
    let tenant_id = drive_id
        .as_deref()
        .and_then(|id| state.drives.get(id))
        .map(|drive| drive.tenant_id.clone())
        .or_else(|| caller.map(|grant| grant.tenant_id.clone()))?;
    Some(CallTarget { tenant_id, drive_id })
}

/// Graph's answer for a path it does not know.
async fn unknown_segment(request: Request) -> GraphError {
    let segment = request
        .uri()
        .path()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    GraphError::new(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        format!("Resource not found for the segment '{segment}'."),
    )
}

/// Graph's answer for a known path with a method it does not support.
async fn method_not_allowed() -> GraphError {
    GraphError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "BadRequest",
        "Specified HTTP method is not allowed for the request target.",
    )
}

/// The authenticated caller of a Graph request: `Authorization: Bearer <token>` with a token the
/// simulator issued that the sim clock has not passed.
#[derive(Debug, Clone)]
pub struct Caller(pub Grant);

impl FromRequestParts<Sim> for Caller {
    type Rejection = GraphError;

    async fn from_request_parts(parts: &mut Parts, sim: &Sim) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or_else(GraphError::invalid_token)?;
        let now = sim.now();
        let state = sim.lock();
        state
            .identity
            .authenticate(&token, now)
            .cloned()
            .map(Caller)
            .ok_or_else(GraphError::invalid_token)
    }
}
