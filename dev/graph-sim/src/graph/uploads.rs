//! Writing files through Graph (graph-protocol.md §9), on `/me/drive/…` and `/drives/{id}/…`:
//!
//! - simple upload: `PUT …/root:/{path}:/content`, `PUT …/items/{parent-id}:/{name}:/content`
//!   (201 with the new driveItem, 200 when an existing file's content was replaced) and `PUT
//!   …/items/{item-id}/content` (200). `?@microsoft.graph.conflictBehavior=fail|replace|rename`,
//!   default `replace`. Bodies over [`crate::UploadLimits::simple_max_bytes`] are 413;
//! - upload sessions: `POST …/root:/{path}:/createUploadSession`, `POST
//!   …/items/{parent-id}:/{name}:/createUploadSession` and, for an existing file, `POST
//!   …/items/{item-id}/createUploadSession`, with the optional body
//!   `{"item":{"@microsoft.graph.conflictBehavior","fileSize"},"deferCommit"}` (conflict
//!   behaviour default `fail`) → 200 `{"uploadUrl","expirationDateTime","nextExpectedRanges":["0-"]}`;
//! - the upload URL `{public url}/_upload/{id}` (not under `/v1.0`, no `Authorization`: a request
//!   that sends one is 401): `PUT` a fragment (202 with the next expected range, or 201/200 with
//!   the driveItem after the last byte, or 409 `nameAlreadyExists`), `GET` the status, `DELETE`
//!   to cancel (204), `POST` (empty) to commit a `deferCommit` session. After expiry, cancel or
//!   commit it is 404 `itemNotFound` / `uploadSessionNotFound`. The rules of a fragment are in
//!   [`crate::uploads`];
//! - items by path: `GET …/root:/{path}` (or `…:`) and `GET …/items/{folder-id}:/{path}:`; `PUT`
//!   on the same paths with `{"@microsoft.graph.sourceUrl":"{uploadUrl}",
//!   "@microsoft.graph.conflictBehavior"}` commits a complete session there (§9.3's recovery from
//!   a conflict).
//!
//! A path's folders must exist (404 `itemNotFound` otherwise; the simulator does not create
//! them). Writes need a token that may write ([`crate::identity::Grant::may_write`]: a
//! control-API token, or one whose scopes include `Files.ReadWrite`/`.All` or a `Sites` write
//! scope), else 403 `accessDenied`. Files go through the drive's own create and modify, so they
//! get journal entries (delta) and change notifications like any other change. No byte is kept:
//! a file's size and SHA-256 (`file.hashes.sha256Hash`) are.

use crate::graph::{answer_of, begin_call, fault_error, stamp};
use std::collections::HashMap;
use std::pin::Pin;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::drives::{item_json, my_drive_id, owned_drive};
use super::{Caller, ODATA_BASE};
use crate::drive::{ConflictBehavior, Content, Drive, Item};
use crate::errors::{GraphError, SimError};
use crate::faults;
use crate::identity::Grant;
use crate::sim::Sim;
use crate::state::State as SimState;
use crate::time::graph_timestamp;
use crate::uploads::{ContentRange, Destination, Sha256, UPLOAD_URL_PREFIX, UploadSession};

type GraphResult<T> = Result<T, GraphError>;

/// The query parameter (and body annotation) naming the conflict behaviour.
const CONFLICT_BEHAVIOR: &str = "@microsoft.graph.conflictBehavior";
/// The body annotation of an explicit commit (§9.3).
const SOURCE_URL: &str = "@microsoft.graph.sourceUrl";
/// The largest JSON body of `createUploadSession` or a commit.
const JSON_BODY_LIMIT: usize = 64 * 1024;
/// A refused request's body of at most this many bytes is read and thrown away before the answer,
/// so a client still sending it gets the answer rather than a reset connection; a larger one is
/// answered at once.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// The upload URL: `{public url}/_upload/{session id}`.
pub(crate) fn upload_url(sim: &Sim, session_id: &str) -> String {
    format!("{}{UPLOAD_URL_PREFIX}/{session_id}", sim.authority_host())
}

/// The session id in an upload URL of this simulator.
fn session_id_of(url: &str) -> Option<&str> {
    let (_, id) = url.trim().rsplit_once(&format!("{UPLOAD_URL_PREFIX}/"))?;
    let id = id.split(['?', '#']).next().unwrap_or(id);
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Which drive a Graph upload route names.
#[derive(Debug, Clone)]
enum DriveRef {
    Me,
    Id(String),
}

/// The folder a path starts from.
#[derive(Debug, Clone)]
enum Base {
    Root,
    Item(String),
}

/// What the tail of the address asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// The item itself (`root:/{path}` or `…:`).
    Item,
    /// `…/content`.
    Content,
    /// `…/createUploadSession`.
    CreateUploadSession,
}

/// An item addressed by id or by a path below a folder.
#[derive(Debug, Clone)]
enum Address {
    ById {
        item_id: String,
        action: Action,
    },
    ByPath {
        base: Base,
        path: String,
        action: Action,
    },
}

fn unknown_segment(segment: &str) -> GraphError {
    GraphError::new(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        format!("Resource not found for the segment '{segment}'."),
    )
}

/// Splits `a/b.txt:/content` into the path and the action; `a/b.txt:` and `a/b.txt` address the
/// item itself.
fn split_action(rest: &str) -> GraphResult<(String, Action)> {
    let lower = rest.to_ascii_lowercase();
    for (suffix, action) in [
        (":/content", Action::Content),
        (":/createuploadsession", Action::CreateUploadSession),
    ] {
        if lower.ends_with(suffix) {
            return Ok((rest[..rest.len() - suffix.len()].to_owned(), action));
        }
    }
    if let Some((_, tail)) = rest.rsplit_once(":/") {
        return Err(unknown_segment(tail));
    }
    Ok((rest.trim_end_matches(':').to_owned(), Action::Item))
}

/// `…/items/{item_id}/{rest}`: a path below the folder `{item_id}:`, or an action on the item.
fn item_address(item_id: &str, rest: &str) -> GraphResult<Address> {
    if let Some(folder) = item_id.strip_suffix(':') {
        let (path, action) = split_action(rest)?;
        return Ok(Address::ByPath {
            base: Base::Item(folder.to_owned()),
            path,
            action,
        });
    }
    let action = match rest.to_ascii_lowercase().as_str() {
        "content" => Action::Content,
        "createuploadsession" => Action::CreateUploadSession,
        _ => return Err(unknown_segment(rest)),
    };
    Ok(Address::ById {
        item_id: item_id.to_owned(),
        action,
    })
}

/// A Graph upload request, as the handlers received it.
struct Call {
    sim: Sim,
    caller: Grant,
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
}

/// `GET|PUT|POST /me/drive/root:/{*path}`.
pub(crate) async fn me_root_path(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    method: Method,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> GraphResult<Response> {
    let (path, action) = split_action(&path)?;
    let call = Call {
        sim,
        caller,
        method,
        query,
        headers,
        body,
    };
    let address = Address::ByPath {
        base: Base::Root,
        path,
        action,
    };
    dispatch(call, DriveRef::Me, address).await
}

/// `GET|PUT|POST /me/drive/items/{item_id}/{*rest}`.
pub(crate) async fn me_item_path(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    method: Method,
    Path((item_id, rest)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> GraphResult<Response> {
    let address = item_address(&item_id, &rest)?;
    let call = Call {
        sim,
        caller,
        method,
        query,
        headers,
        body,
    };
    dispatch(call, DriveRef::Me, address).await
}

/// `GET|PUT|POST /drives/{drive_id}/root:/{*path}`.
pub(crate) async fn drive_root_path(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    method: Method,
    Path((drive_id, path)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> GraphResult<Response> {
    let (path, action) = split_action(&path)?;
    let call = Call {
        sim,
        caller,
        method,
        query,
        headers,
        body,
    };
    let address = Address::ByPath {
        base: Base::Root,
        path,
        action,
    };
    dispatch(call, DriveRef::Id(drive_id), address).await
}

/// `GET|PUT|POST /drives/{drive_id}/items/{item_id}/{*rest}`.
pub(crate) async fn drive_item_path(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    method: Method,
    Path((drive_id, item_id, rest)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> GraphResult<Response> {
    let address = item_address(&item_id, &rest)?;
    let call = Call {
        sim,
        caller,
        method,
        query,
        headers,
        body,
    };
    dispatch(call, DriveRef::Id(drive_id), address).await
}

/// Where a write goes, resolved against the drive.
#[derive(Debug, Clone)]
enum Target {
    /// A new file `name` in the folder `parent_id` (unless the name is taken).
    New { parent_id: String, name: String },
    /// An existing file.
    Existing { item_id: String },
}

impl Target {
    fn destination(self) -> Destination {
        match self {
            Self::New { parent_id, name } => Destination::New { parent_id, name },
            Self::Existing { item_id } => Destination::Existing { item_id },
        }
    }
}

fn drive_of(state: &SimState, drive: &DriveRef, caller: &Grant) -> GraphResult<String> {
    let drive_id = match drive {
        DriveRef::Me => my_drive_id(state, caller)?,
        DriveRef::Id(id) => id.clone(),
    };
    Ok(owned_drive(state, &drive_id, caller)?.id.clone())
}

fn base_folder<'a>(drive: &'a Drive, base: &Base) -> GraphResult<&'a Item> {
    let id = match base {
        Base::Root => drive.root_id.as_str(),
        Base::Item(id) => id.as_str(),
    };
    drive
        .item(id)
        .filter(|item| !item.deleted && item.folder)
        .ok_or_else(GraphError::item_not_found)
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|segment| !segment.is_empty()).collect()
}

/// The live item at `path` below `base`.
fn item_at<'a>(drive: &'a Drive, base: &Base, path: &str) -> GraphResult<&'a Item> {
    let mut current = base_folder(drive, base)?;
    for segment in segments(path) {
        current = drive
            .child_named(&current.id, segment)
            .ok_or_else(GraphError::item_not_found)?;
    }
    Ok(current)
}

/// The folder and name a path below `base` puts a file at: every folder on the way must exist.
fn new_file_at(drive: &Drive, base: &Base, path: &str) -> GraphResult<Target> {
    let parts = segments(path);
    let Some((name, folders)) = parts.split_last() else {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "The path must name a file.",
        ));
    };
    let mut parent = base_folder(drive, base)?;
    for folder in folders {
        parent = drive
            .child_named(&parent.id, folder)
            .filter(|item| item.folder)
            .ok_or_else(GraphError::item_not_found)?;
    }
    Ok(Target::New {
        parent_id: parent.id.clone(),
        name: (*name).to_owned(),
    })
}

/// An existing live file, for `…/items/{id}/content` and `…/items/{id}/createUploadSession`.
fn existing_file(drive: &Drive, item_id: &str) -> GraphResult<Target> {
    let item = drive
        .item(item_id)
        .filter(|item| !item.deleted)
        .ok_or_else(GraphError::item_not_found)?;
    if item.folder {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "The item is a folder; only files have content.",
        ));
    }
    Ok(Target::Existing {
        item_id: item.id.clone(),
    })
}

fn conflict_behavior(raw: Option<&str>, default: ConflictBehavior) -> GraphResult<ConflictBehavior> {
    match raw {
        None => Ok(default),
        Some(raw) => ConflictBehavior::parse(raw).ok_or_else(|| {
            GraphError::new(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                format!("'{raw}' is not a conflict behavior; use fail, replace or rename."),
            )
        }),
    }
}

/// A drive refusal as Graph words it.
fn drive_error(error: SimError) -> GraphError {
    match error {
        SimError::NotFound(_) => GraphError::item_not_found(),
        SimError::Conflict(_) => GraphError::name_already_exists(),
        SimError::BadRequest(message) => GraphError::new(StatusCode::BAD_REQUEST, "invalidRequest", message),
    }
}

/// Answers one Graph upload call; a refusal before the body is read drains the body first.
async fn dispatch(call: Call, drive: DriveRef, address: Address) -> GraphResult<Response> {
    let action = match &address {
        Address::ById { action, .. } | Address::ByPath { action, .. } => *action,
    };
    let resolved = match resolve(&call, &drive, &address, action) {
        Ok(Resolved::Write(drive_id, target)) => (drive_id, target),
        Ok(Resolved::Answer(response)) => return Ok(response),
        Err(error) => {
            drain(&call.headers, call.body).await;
            return Err(error);
        }
    };
    let (drive_id, resolved) = resolved;
    match (&call.method, action) {
        (&Method::PUT, Action::Content) => simple_upload(call, &drive_id, resolved).await,
        (&Method::POST, Action::CreateUploadSession) => create_session(call, &drive_id, resolved).await,
        (&Method::PUT, Action::Item) => commit_from_source(call, &drive_id, resolved).await,
        _ => {
            drain(&call.headers, call.body).await;
            Err(method_not_allowed())
        }
    }
}

/// What resolving an upload call came to.
enum Resolved {
    /// A write to the drive.
    Write(String, Target),
    /// A read, already answered.
    Answer(Response),
}

/// Checks the caller may write (for anything but `GET`) and resolves the drive and the item or
/// place the call addresses.
fn resolve(call: &Call, drive: &DriveRef, address: &Address, action: Action) -> GraphResult<Resolved> {
    let writes = call.method != Method::GET;
    if writes && !call.caller.may_write() {
        return Err(GraphError::write_denied());
    }
    let (drive_id, resolved) = {
        let state = call.sim.lock();
        let drive_id = drive_of(&state, drive, &call.caller)?;
        let drive = state
            .drives
            .get(&drive_id)
            .ok_or_else(GraphError::item_not_found)?;
        let resolved = match (&call.method, action, address) {
            (&Method::GET, Action::Item, Address::ByPath { base, path, .. }) => {
                return Ok(Resolved::Answer(
                    axum::Json(item_json(drive, item_at(drive, base, path)?)).into_response(),
                ));
            }
            (&Method::GET, Action::Content, _) => {
                return Err(GraphError::not_implemented(
                    "graph-sim keeps no file content, so it cannot be downloaded.",
                ));
            }
            (&Method::PUT | &Method::POST, _, Address::ById { item_id, .. }) => {
                existing_file(drive, item_id)?
            }
            (&Method::PUT | &Method::POST, _, Address::ByPath { base, path, .. }) => {
                new_file_at(drive, base, path)?
            }
            _ => return Err(method_not_allowed()),
        };
        (drive_id, resolved)
    };
    Ok(Resolved::Write(drive_id, resolved))
}

fn method_not_allowed() -> GraphError {
    GraphError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "BadRequest",
        "Specified HTTP method is not allowed for the request target.",
    )
}

/// `Content-Length`, when sent.
fn content_length(headers: &HeaderMap) -> GraphResult<Option<u64>> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    GraphError::new(
                        StatusCode::BAD_REQUEST,
                        "invalidRequest",
                        "Content-Length is not a number.",
                    )
                })
        })
        .transpose()
}

/// The next data chunk of a body; `None` at its end, an error when it broke off.
async fn next_chunk(body: &mut Body) -> Option<Result<Bytes, axum::Error>> {
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await?;
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
            }
            Err(error) => return Some(Err(error)),
        }
    }
}

/// Hashes a body as it streams in, keeping none of it: the byte count, or 413 as soon as it
/// passes `limit`, or 400 when it broke off.
async fn hash_body(
    body: &mut Body,
    hash: &mut Sha256,
    limit: u64,
    too_large: impl Fn() -> GraphError,
) -> GraphResult<u64> {
    let mut received: u64 = 0;
    while let Some(chunk) = next_chunk(body).await {
        let chunk = chunk.map_err(|_| GraphError::body_interrupted())?;
        received += chunk.len() as u64;
        if received > limit {
            return Err(too_large());
        }
        hash.update(&chunk);
    }
    Ok(received)
}

/// Reads and throws away what is left of a refused request's body, so the answer reaches a client
/// that is still sending rather than a reset connection: unless its `Content-Length` says it is
/// longer than [`DRAIN_LIMIT`], and never more than that.
async fn drain(headers: &HeaderMap, mut body: Body) {
    if content_length(headers)
        .ok()
        .flatten()
        .is_some_and(|declared| declared > DRAIN_LIMIT)
    {
        return;
    }
    let mut drained: u64 = 0;
    while drained <= DRAIN_LIMIT {
        match next_chunk(&mut body).await {
            Some(Ok(chunk)) => drained += chunk.len() as u64,
            Some(Err(_)) | None => return,
        }
    }
}

/// Applies a write to the drive under the lock, queues its notifications, and answers with the
/// driveItem: 201 when an item was created, 200 when a file's content was replaced.
fn write_file(
    sim: &Sim,
    state: &mut SimState,
    drive_id: &str,
    target: &Target,
    content: &Content,
    behavior: ConflictBehavior,
) -> GraphResult<(StatusCode, Value, usize)> {
    let now = sim.now();
    let drive = state
        .drives
        .get_mut(drive_id)
        .ok_or_else(GraphError::item_not_found)?;
    let (change, created) = match target {
        Target::New { parent_id, name } => drive.put_file(parent_id, name, content, behavior, now),
        Target::Existing { item_id } => drive
            .replace_content(item_id, content, now)
            .map(|change| (change, false)),
    }
    .map_err(drive_error)?;
    let body = item_json(drive, &change.item);
    let queued = state.notify_change(drive_id, &change, now, &sim.config().timing);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, body, queued))
}

/// `PUT …/content`: the whole file in one body of at most the simple-upload limit.
async fn simple_upload(mut call: Call, drive_id: &str, target: Target) -> GraphResult<Response> {
    let behavior = match conflict_behavior(
        call.query.get(CONFLICT_BEHAVIOR).map(String::as_str),
        ConflictBehavior::Replace,
    ) {
        Ok(behavior) => behavior,
        Err(error) => {
            drain(&call.headers, call.body).await;
            return Err(error);
        }
    };
    let limit = call.sim.config().uploads.simple_max_bytes;
    let too_large = || GraphError::simple_upload_too_large(limit);
    let declared = match content_length(&call.headers) {
        Ok(declared) => declared,
        Err(error) => {
            drain(&call.headers, call.body).await;
            return Err(error);
        }
    };
    if declared.is_some_and(|declared| declared > limit) {
        drain(&call.headers, call.body).await;
        return Err(too_large());
    }
    let mut hash = Sha256::new();
    let size = match hash_body(&mut call.body, &mut hash, limit, too_large).await {
        Ok(size) => size,
        Err(error) => {
            drain(&call.headers, call.body).await;
            return Err(error);
        }
    };
    let content = Content {
        size,
        sha256: hash.hex(),
    };
    let (status, body, queued) = {
        let mut state = call.sim.lock();
        let written = write_file(&call.sim, &mut state, drive_id, &target, &content, behavior)?;
        state.counters.simple_uploads += 1;
        state.counters.upload_bytes_accepted += size;
        written
    };
    if queued > 0 {
        call.sim.wake();
    }
    Ok((status, axum::Json(body)).into_response())
}

/// Reads a small JSON body; an empty one is `{}`.
async fn json_body(body: Body) -> GraphResult<Value> {
    let bytes = axum::body::to_bytes(body, JSON_BODY_LIMIT)
        .await
        .map_err(|_| GraphError::body_interrupted())?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|_| {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "The request body is not valid JSON.",
        )
    })
}

/// The `{"expirationDateTime","nextExpectedRanges"}` of a session.
fn session_status(session: &UploadSession) -> Value {
    json!({
        "expirationDateTime": graph_timestamp(session.expires_at),
        "nextExpectedRanges": session.next_expected_ranges(),
    })
}

/// `POST …/createUploadSession` (§9.1).
async fn create_session(call: Call, drive_id: &str, target: Target) -> GraphResult<Response> {
    let body = json_body(call.body).await?;
    let item = &body["item"];
    let behavior = conflict_behavior(
        item[CONFLICT_BEHAVIOR]
            .as_str()
            .or_else(|| call.query.get(CONFLICT_BEHAVIOR).map(String::as_str)),
        ConflictBehavior::Fail,
    )?;
    let declared_size = match &item["fileSize"] {
        Value::Null => None,
        size => Some(size.as_u64().ok_or_else(|| {
            GraphError::new(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "item.fileSize must be a whole number of bytes.",
            )
        })?),
    };
    let defer_commit = body["deferCommit"].as_bool().unwrap_or(false);
    let now = call.sim.now();
    let lifetime = call.sim.config().timing.upload_session_lifetime;
    let session = UploadSession::new(
        drive_id,
        target.destination(),
        behavior,
        defer_commit,
        declared_size,
        now,
        lifetime,
    );
    let answer = json!({
        "@odata.context": format!("{ODATA_BASE}#microsoft.graph.uploadSession"),
        "uploadUrl": upload_url(&call.sim, &session.id),
        "expirationDateTime": graph_timestamp(session.expires_at),
        "nextExpectedRanges": session.next_expected_ranges(),
    });
    {
        let mut state = call.sim.lock();
        state.uploads.retain(|_, session| !session.expired(now));
        state.uploads.insert(session.id.clone(), session);
        state.counters.upload_sessions_created += 1;
    }
    Ok(axum::Json(answer).into_response())
}

/// The live session `id`; an expired one is forgotten first (404 from then on).
fn live_session<'a>(
    state: &'a mut SimState,
    id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> GraphResult<&'a mut UploadSession> {
    if state.uploads.get(id).is_some_and(|session| session.expired(now)) {
        state.uploads.remove(id);
    }
    state
        .uploads
        .get_mut(id)
        .ok_or_else(GraphError::upload_session_not_found)
}

/// Commits a complete session to `target` (its own destination when `None`), with `behavior`
/// (its own when `None`). The session is gone afterwards, unless the commit failed (a 409 leaves
/// it, complete, for a retry or an explicit commit).
fn commit_session(
    sim: &Sim,
    session_id: &str,
    target: Option<Target>,
    behavior: Option<ConflictBehavior>,
) -> GraphResult<Response> {
    let now = sim.now();
    let (status, body, queued) = {
        let mut state = sim.lock();
        let session = live_session(&mut state, session_id, now)?;
        let content = session
            .content()
            .ok_or_else(GraphError::upload_session_incomplete)?;
        let drive_id = session.drive_id.clone();
        let target = target.unwrap_or_else(|| match session.destination.clone() {
            Destination::New { parent_id, name } => Target::New { parent_id, name },
            Destination::Existing { item_id } => Target::Existing { item_id },
        });
        let behavior = behavior.unwrap_or(session.conflict_behavior);
        let written = write_file(sim, &mut state, &drive_id, &target, &content, behavior)?;
        state.uploads.remove(session_id);
        state.counters.upload_sessions_completed += 1;
        written
    };
    if queued > 0 {
        sim.wake();
    }
    Ok((status, axum::Json(body)).into_response())
}

/// `PUT …/root:/{path}` with `@microsoft.graph.sourceUrl`: commits a complete session of the
/// same drive at the path (§9.3), conflict behaviour from the body (default `fail`).
async fn commit_from_source(call: Call, drive_id: &str, target: Target) -> GraphResult<Response> {
    let body = json_body(call.body).await?;
    let Some(source) = body[SOURCE_URL].as_str() else {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "graph-sim only takes a PUT of an item that commits an upload session with \
             @microsoft.graph.sourceUrl.",
        ));
    };
    let behavior = conflict_behavior(body[CONFLICT_BEHAVIOR].as_str(), ConflictBehavior::Fail)?;
    let session_id = session_id_of(source).ok_or_else(GraphError::upload_session_not_found)?;
    let target = match (target, body["name"].as_str()) {
        (Target::New { parent_id, .. }, Some(name)) => Target::New {
            parent_id,
            name: name.to_owned(),
        },
        (target, _) => target,
    };
    {
        let now = call.sim.now();
        let mut state = call.sim.lock();
        let session = live_session(&mut state, session_id, now)?;
        if session.drive_id != drive_id {
            return Err(GraphError::new(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "The upload session belongs to another drive.",
            ));
        }
    }
    commit_session(&call.sim, session_id, Some(target), Some(behavior))
}

/// The upload-URL routes, at the root of the app.
pub(crate) fn url_router(sim: Sim) -> Router<Sim> {
    Router::new()
        .route(
            &format!("{UPLOAD_URL_PREFIX}/{{session_id}}"),
            get(session_state)
                .put(put_fragment)
                .post(commit_deferred)
                .delete(cancel_session),
        )
        .layer(middleware::from_fn_with_state(sim, upload_url_middleware))
}

/// Like the Graph middleware, for upload URLs: the Graph latency, injected faults (matched on
/// the full path, `/_upload/…`), then the pre-authentication rule (a request with
/// `Authorization` is 401); errors in Graph's envelope with this request's ids, a `request-id`
/// header. A refused `PUT` counts as a rejected fragment.
async fn upload_url_middleware(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let ids = begin_call(&sim, request.headers()).await;
    let is_put = request.method() == Method::PUT;
    let fault = {
        let mut state = sim.lock();
        let fault = faults::take_matching(&mut state.faults, request.method().as_str(), request.uri().path());
        if fault.is_some() {
            state.counters.faults_injected += 1;
        }
        fault
    };
    let refused = match fault {
        Some(fault) => Some(fault_error(fault).await),
        None if request.headers().contains_key(header::AUTHORIZATION) => {
            Some(GraphError::upload_url_with_authorization())
        }
        None => None,
    };
    let mut response = match refused {
        Some(error) => {
            if is_put {
                sim.lock().counters.upload_fragments_rejected += 1;
            }
            let (parts, body) = request.into_parts();
            drain(&parts.headers, body).await;
            error.to_response(&ids)
        }
        None => answer_of(next, request, &ids).await,
    };
    stamp(&mut response, &ids);
    response
}

/// `GET {uploadUrl}`: `{"expirationDateTime","nextExpectedRanges"}` (§9.3, resuming).
async fn session_state(State(sim): State<Sim>, Path(session_id): Path<String>) -> GraphResult<Response> {
    let now = sim.now();
    let mut state = sim.lock();
    let session = live_session(&mut state, &session_id, now)?;
    Ok(axum::Json(session_status(session)).into_response())
}

/// `DELETE {uploadUrl}`: cancels the session (204; 404 from then on).
async fn cancel_session(State(sim): State<Sim>, Path(session_id): Path<String>) -> GraphResult<StatusCode> {
    let now = sim.now();
    let mut state = sim.lock();
    live_session(&mut state, &session_id, now)?;
    state.uploads.remove(&session_id);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST {uploadUrl}` (empty): commits a complete session (the business form of completing a
/// `deferCommit` upload, §9.3).
async fn commit_deferred(State(sim): State<Sim>, Path(session_id): Path<String>) -> GraphResult<Response> {
    commit_session(&sim, &session_id, None, None)
}

/// What receiving a fragment came to.
enum Received {
    /// More bytes are needed, or a `deferCommit` session waits for its commit: 202 with this body.
    Accepted(Value),
    /// The last byte arrived (or a zero-length `PUT` without `Content-Range` asked to commit).
    Commit,
}

/// `PUT {uploadUrl}`: a fragment (§9.2), or with no `Content-Range` and no body, the personal
/// form of completing a `deferCommit` session.
async fn put_fragment(
    State(sim): State<Sim>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
    mut body: Body,
) -> Response {
    // Counts the fragment as rejected unless it is accepted, even when the client goes away and
    // the server drops this future halfway.
    let mut rejection = Rejection {
        sim: sim.clone(),
        counted: false,
    };
    match receive(&sim, &session_id, &headers, &mut body).await {
        Ok(received) => {
            rejection.counted = true;
            match received {
                Received::Accepted(status) => (StatusCode::ACCEPTED, axum::Json(status)).into_response(),
                Received::Commit => match commit_session(&sim, &session_id, None, None) {
                    Ok(response) => response,
                    Err(error) => error.into_response(),
                },
            }
        }
        Err(error) => {
            drain(&headers, body).await;
            error.into_response()
        }
    }
}

/// Counts a rejected fragment when dropped, unless `counted` says the fragment was accepted.
struct Rejection {
    sim: Sim,
    counted: bool,
}

impl Drop for Rejection {
    fn drop(&mut self) {
        if !self.counted {
            self.sim.lock().counters.upload_fragments_rejected += 1;
        }
    }
}

/// Checks a fragment, streams it into a copy of the session's hash, and only then (if all of it
/// arrived and the session is still where the fragment starts) makes it part of the session.
async fn receive(sim: &Sim, session_id: &str, headers: &HeaderMap, body: &mut Body) -> GraphResult<Received> {
    let limits = sim.config().uploads;
    let length = content_length(headers)?.ok_or_else(GraphError::length_required)?;
    let Some(raw_range) = headers.get(header::CONTENT_RANGE) else {
        if length == 0 {
            return Ok(Received::Commit);
        }
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "A fragment needs a Content-Range header.",
        ));
    };
    let range = ContentRange::parse(raw_range.to_str().unwrap_or_default())?;
    let (start, mut hash) = {
        let now = sim.now();
        let mut state = sim.lock();
        let session = live_session(&mut state, session_id, now)?;
        session.check_fragment(range, length, &limits)?;
        (session.received, session.hash.clone())
    };
    let received = hash_body(body, &mut hash, length, GraphError::body_interrupted).await?;
    if received != length {
        return Err(GraphError::body_interrupted());
    }
    let now = sim.now();
    let mut state = sim.lock();
    let session = live_session(&mut state, session_id, now)?;
    if session.received != start {
        // Another request for the same range got there first.
        return Err(GraphError::fragment_overlap());
    }
    session.hash = hash;
    session.received = range.end + 1;
    session.total = Some(range.total);
    let answer = if session.complete() && !session.defer_commit {
        Received::Commit
    } else {
        Received::Accepted(session_status(session))
    };
    state.counters.upload_fragments_accepted += 1;
    state.counters.upload_bytes_accepted += length;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_a_path_and_an_action() {
        let (path, action) = split_action("Documents/report.pdf:/content").expect("content");
        assert_eq!((path.as_str(), action), ("Documents/report.pdf", Action::Content));
        let (path, action) = split_action("a.bin:/createUploadSession").expect("session");
        assert_eq!((path.as_str(), action), ("a.bin", Action::CreateUploadSession));
        let (path, action) = split_action("Documents/report.pdf:").expect("item");
        assert_eq!((path.as_str(), action), ("Documents/report.pdf", Action::Item));
        assert_eq!(
            split_action("a.txt:/children").map_err(|e| e.message).err(),
            Some("Resource not found for the segment 'children'.".to_owned())
        );
        assert!(matches!(
            item_address("ABC!101:", "a.txt:/content"),
            Ok(Address::ByPath {
                base: Base::Item(folder),
                action: Action::Content,
                ..
            }) if folder == "ABC!101"
        ));
        assert!(matches!(
            item_address("ABC!102", "createUploadSession"),
            Ok(Address::ById {
                action: Action::CreateUploadSession,
                ..
            })
        ));
        assert!(item_address("ABC!102", "children").is_err());
    }

    #[test]
    fn a_session_id_is_read_back_from_its_url() {
        assert_eq!(session_id_of("http://127.0.0.1:9/_upload/abc123"), Some("abc123"));
        assert_eq!(
            session_id_of("http://127.0.0.1:9/_upload/abc123?x=1"),
            Some("abc123")
        );
        assert_eq!(session_id_of("https://example.com/up/abc"), None);
    }
}
