//! Read-only drive endpoints: `me/drive`, `drives/{id}`, their roots and items by id, in Graph's
//! `drive` and `driveItem` shapes, and the drive delta feed (`root/delta`: full enumeration,
//! changes since a token, `token=latest`, 410 resync; graph-protocol.md §5) with the drive's delta
//! quirks ([`crate::delta`]). Only the owner may read a drive; app-only tokens are refused.
//! Writes (uploads, items by path) are in [`super::uploads`].

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Caller, ODATA_BASE};
use crate::delta::DeltaQuirks;
use crate::drive::{DeltaCursor, DeltaToken, Drive, Item};
use crate::errors::GraphError;
use crate::identity::Grant;
use crate::sim::Sim;
use crate::state::State as SimState;
use crate::time::graph_timestamp;

type GraphResult<T> = Result<T, GraphError>;

fn drive_type(drive: &Drive) -> &'static str {
    if drive.business { "business" } else { "personal" }
}

fn drive_json(state: &SimState, drive: &Drive) -> Value {
    let display_name = state
        .identity
        .users
        .get(&drive.owner_user_id)
        .map(|user| user.display_name.clone());
    json!({
        "@odata.context": format!("{ODATA_BASE}#drives/$entity"),
        "id": drive.id,
        "driveType": drive_type(drive),
        "owner": {"user": {"id": drive.owner_user_id, "displayName": display_name}},
    })
}

/// A driveItem as Graph renders it: `folder` or `file` facet, `root` facet on the root, and a
/// `parentReference` without `path` (graph-protocol.md §10 item 11).
pub(crate) fn item_json(drive: &Drive, item: &Item) -> Value {
    let mut body = json!({
        "@odata.context": format!("{ODATA_BASE}#drives('{}')/items/$entity", drive.id),
        "id": item.id,
        "name": item.name,
        "eTag": item.etag,
        "cTag": item.ctag,
        "size": item.size,
        "lastModifiedDateTime": graph_timestamp(item.last_modified_date_time),
        "parentReference": {"driveId": drive.id, "driveType": drive_type(drive), "id": item.parent_id},
    });
    if let Some(object) = body.as_object_mut() {
        if item.folder {
            object.insert(
                "folder".to_owned(),
                json!({"childCount": drive.child_count(&item.id)}),
            );
        } else {
            object.insert("file".to_owned(), file_facet(item));
        }
        if item.id == drive.root_id {
            object.insert("root".to_owned(), json!({}));
        }
    }
    body
}

/// The `file` facet: `{"hashes":{"sha256Hash"}}` for content uploaded through Graph (Graph has
/// `sha256Hash` on business drives; the simulator shows it on both kinds), else `{}`.
fn file_facet(item: &Item) -> Value {
    match &item.sha256 {
        Some(hash) if !item.deleted => json!({"hashes": {"sha256Hash": hash}}),
        _ => json!({}),
    }
}

pub(crate) fn owned_drive<'a>(state: &'a SimState, drive_id: &str, caller: &Grant) -> GraphResult<&'a Drive> {
    let drive = state
        .drives
        .get(drive_id)
        .or_else(|| state.drives.get(&drive_id.to_ascii_lowercase()))
        .ok_or_else(GraphError::item_not_found)?;
    if drive.owner_user_id == caller.user_id && drive.tenant_id == caller.tenant_id {
        Ok(drive)
    } else {
        Err(GraphError::access_denied())
    }
}

pub(crate) fn my_drive_id(state: &SimState, caller: &Grant) -> GraphResult<String> {
    if caller.app_only {
        return Err(GraphError::delegated_only());
    }
    state
        .identity
        .users
        .get(&caller.user_id)
        .map(|user| user.drive_id.clone())
        .ok_or_else(GraphError::item_not_found)
}

/// `GET /me/drive`.
pub(crate) async fn my_drive(State(sim): State<Sim>, Caller(caller): Caller) -> GraphResult<Json<Value>> {
    let state = sim.lock();
    let drive_id = my_drive_id(&state, &caller)?;
    Ok(Json(drive_json(&state, owned_drive(&state, &drive_id, &caller)?)))
}

/// `GET /me/drive/root`.
pub(crate) async fn my_root(State(sim): State<Sim>, Caller(caller): Caller) -> GraphResult<Json<Value>> {
    let state = sim.lock();
    let drive_id = my_drive_id(&state, &caller)?;
    let drive = owned_drive(&state, &drive_id, &caller)?;
    let root = drive
        .item(&drive.root_id)
        .ok_or_else(GraphError::item_not_found)?;
    Ok(Json(item_json(drive, root)))
}

/// `GET /drives/{drive_id}`.
pub(crate) async fn drive(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path(drive_id): Path<String>,
) -> GraphResult<Json<Value>> {
    let state = sim.lock();
    Ok(Json(drive_json(&state, owned_drive(&state, &drive_id, &caller)?)))
}

/// `GET /drives/{drive_id}/root`.
pub(crate) async fn root(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path(drive_id): Path<String>,
) -> GraphResult<Json<Value>> {
    let state = sim.lock();
    let drive = owned_drive(&state, &drive_id, &caller)?;
    let root = drive
        .item(&drive.root_id)
        .ok_or_else(GraphError::item_not_found)?;
    Ok(Json(item_json(drive, root)))
}

/// `GET /drives/{drive_id}/items/{item_id}`; deleted items are 404.
pub(crate) async fn item(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path((drive_id, item_id)): Path<(String, String)>,
) -> GraphResult<Json<Value>> {
    let state = sim.lock();
    let drive = owned_drive(&state, &drive_id, &caller)?;
    let item = drive
        .item(&item_id)
        .filter(|item| !item.deleted)
        .ok_or_else(GraphError::item_not_found)?;
    Ok(Json(item_json(drive, item)))
}

/// `GET /me/drive/items/{item_id}`; deleted items are 404.
pub(crate) async fn my_item(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path(item_id): Path<String>,
) -> GraphResult<Json<Value>> {
    let state = sim.lock();
    let drive_id = my_drive_id(&state, &caller)?;
    let drive = owned_drive(&state, &drive_id, &caller)?;
    let item = drive
        .item(&item_id)
        .filter(|item| !item.deleted)
        .ok_or_else(GraphError::item_not_found)?;
    Ok(Json(item_json(drive, item)))
}

/// A driveItem as the delta feed renders it (graph-protocol.md §5.2, §10 item 11): no
/// `parentReference.path`, `folder.childCount` 0, and for a deleted item the `deleted` facet
/// without `cTag` and, on personal drives, `size` (business: `name`). With the
/// `business_omits_ctag` quirk, business items never carry `cTag`.
pub(crate) fn delta_item_json(drive: &Drive, item: &Item, quirks: &DeltaQuirks) -> Value {
    let mut parent = json!({"driveId": drive.id, "driveType": drive_type(drive)});
    if let (Some(parent_id), Some(object)) = (&item.parent_id, parent.as_object_mut()) {
        object.insert("id".to_owned(), json!(parent_id));
    }
    let mut body = json!({
        "id": item.id,
        "name": item.name,
        "eTag": item.etag,
        "cTag": item.ctag,
        "size": item.size,
        "lastModifiedDateTime": graph_timestamp(item.last_modified_date_time),
        "parentReference": parent,
    });
    if let Some(object) = body.as_object_mut() {
        if item.folder {
            object.insert("folder".to_owned(), json!({"childCount": 0}));
        } else {
            object.insert("file".to_owned(), file_facet(item));
        }
        if item.id == drive.root_id {
            object.insert("root".to_owned(), json!({}));
        }
        if item.deleted {
            object.insert("deleted".to_owned(), json!({}));
            object.remove("cTag");
            object.remove(if drive.business { "name" } else { "size" });
        } else if drive.business && quirks.business_omits_ctag {
            object.remove("cTag");
        }
    }
    body
}

/// What a delta request's token asks for.
enum DeltaRequest {
    Latest,
    Walk(DeltaCursor),
}

/// Reads the `token` of a delta call (from `?token=` or `delta(token='…')`) against the drive:
/// none starts a full enumeration; `latest`; a deltaLink token starts the changes since its
/// position; a nextLink token continues its walk. Tokens of an expired epoch are 410 with a
/// fresh-enumeration `Location` (§5.4).
fn read_delta_token(
    sim: &Sim,
    drive: &Drive,
    token: Option<&str>,
    quirks: DeltaQuirks,
) -> GraphResult<DeltaRequest> {
    let token = match token.map(str::trim) {
        None | Some("") => return Ok(DeltaRequest::Walk(drive.delta_start_with(None, quirks))),
        Some("latest") => return Ok(DeltaRequest::Latest),
        Some(token) => token,
    };
    let (drive_id, epoch, cursor) = if let Some(cursor) = DeltaCursor::decode(token) {
        (cursor.drive_id.clone(), cursor.epoch, cursor)
    } else if let Some(position) = DeltaToken::decode(token) {
        let cursor = drive.delta_start_with(Some(position.seq), quirks);
        (position.drive_id, position.epoch, cursor)
    } else if chrono::DateTime::parse_from_rfc3339(token).is_ok() {
        return Err(GraphError::not_implemented(
            "graph-sim does not serve timestamp delta tokens (ODB only).",
        ));
    } else {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "Invalid delta token.",
        ));
    };
    if drive_id != drive.id {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "The delta token belongs to another drive.",
        ));
    }
    if epoch != drive.delta_epoch() {
        return Err(resync(sim, drive, quirks));
    }
    Ok(DeltaRequest::Walk(cursor))
}

/// The 410 of §5.4, its `Location` starting a fresh enumeration.
fn resync(sim: &Sim, drive: &Drive, quirks: DeltaQuirks) -> GraphError {
    let fresh = drive.delta_start_with(None, quirks);
    GraphError::resync_required(delta_link(sim, drive, &fresh.encode(), false))
}

/// An absolute delta link, in the `?token=` form or the `delta(token='…')` form.
fn delta_link(sim: &Sim, drive: &Drive, token: &str, path_form: bool) -> String {
    let base = sim.graph_base_url();
    if path_form {
        format!("{base}/drives/{}/root/delta(token='{token}')", drive.id)
    } else {
        format!("{base}/drives/{}/root/delta?token={token}", drive.id)
    }
}

/// One delta answer (graph-protocol.md §5): `token=latest` gives no items and the current
/// position; otherwise one page of the walk with a nextLink or, on the last page, a deltaLink. A
/// page lists its planned items newest-id first (so children often come before their parents)
/// unless the walk has `child_before_parent` (already deepest first), then any items served again
/// because they changed during the walk (`repeat_items`). Link forms alternate from page to page,
/// so a client must follow them verbatim. A later page of a walk that can no longer be served is
/// 410 (§5.4).
fn serve_delta(
    sim: &Sim,
    state: &mut SimState,
    drive_id: &str,
    token: Option<&str>,
) -> GraphResult<Json<Value>> {
    let page_size = sim.config().timing.delta_page_size;
    let pages_served = state.counters.delta_pages_served;
    let quirks = state.settings.delta_quirks_for(drive_id);
    let answer = {
        let drive = state
            .drives
            .get(drive_id)
            .ok_or_else(GraphError::item_not_found)?;
        match read_delta_token(sim, drive, token, quirks) {
            Ok(DeltaRequest::Latest) => Ok(json!({
                "@odata.context": format!("{ODATA_BASE}#Collection(driveItem)"),
                "value": [],
                "@odata.deltaLink": delta_link(sim, drive, &drive.latest_delta_token().encode(), false),
            })),
            Ok(DeltaRequest::Walk(cursor)) => match drive.try_delta_page(&cursor, page_size) {
                Ok(page) => {
                    let walk_quirks = &cursor.quirks;
                    let planned: Box<dyn Iterator<Item = &&Item>> = if walk_quirks.child_before_parent {
                        Box::new(page.items.iter())
                    } else {
                        Box::new(page.items.iter().rev())
                    };
                    let value: Vec<Value> = planned
                        .chain(page.repeated.iter())
                        .map(|item| delta_item_json(drive, item, walk_quirks))
                        .collect();
                    let path_form = pages_served % 2 == 1;
                    let (key, link) = match (&page.next, &page.delta_token) {
                        (Some(next), _) => (
                            "@odata.nextLink",
                            delta_link(sim, drive, &next.encode(), path_form),
                        ),
                        (None, position) => {
                            let position = position.clone().unwrap_or_else(|| DeltaToken {
                                drive_id: drive.id.clone(),
                                seq: cursor.upto,
                                epoch: cursor.epoch,
                            });
                            (
                                "@odata.deltaLink",
                                delta_link(sim, drive, &position.encode(), path_form),
                            )
                        }
                    };
                    Ok(json!({
                        "@odata.context": format!("{ODATA_BASE}#Collection(driveItem)"),
                        "value": value,
                        key: link,
                    }))
                }
                Err(_) => Err(resync(sim, drive, quirks)),
            },
            Err(error) => Err(error),
        }
    };
    match answer {
        Ok(body) => {
            state.counters.delta_pages_served += 1;
            Ok(Json(body))
        }
        Err(error) => {
            if error.status == StatusCode::GONE {
                state.counters.delta_resyncs += 1;
            }
            Err(error)
        }
    }
}

/// The token of a `delta(token='…')` (or `delta(token=…)`) path segment; `None` for any other
/// segment.
fn token_of_segment(segment: &str) -> Option<&str> {
    let inner = segment.strip_prefix("delta(token=")?.strip_suffix(')')?;
    Some(
        inner
            .strip_prefix('\'')
            .and_then(|rest| rest.strip_suffix('\''))
            .unwrap_or(inner),
    )
}

fn unknown_segment(segment: &str) -> GraphError {
    GraphError::new(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        format!("Resource not found for the segment '{segment}'."),
    )
}

/// `GET /me/drive/root/delta`.
pub(crate) async fn my_delta(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult<Json<Value>> {
    let mut state = sim.lock();
    let drive_id = my_drive_id(&state, &caller)?;
    let drive_id = owned_drive(&state, &drive_id, &caller)?.id.clone();
    serve_delta(
        &sim,
        &mut state,
        &drive_id,
        query.get("token").map(String::as_str),
    )
}

/// `GET /me/drive/root/delta(token='…')`.
pub(crate) async fn my_delta_call(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path(segment): Path<String>,
) -> GraphResult<Json<Value>> {
    let token = token_of_segment(&segment).ok_or_else(|| unknown_segment(&segment))?;
    let mut state = sim.lock();
    let drive_id = my_drive_id(&state, &caller)?;
    let drive_id = owned_drive(&state, &drive_id, &caller)?.id.clone();
    serve_delta(&sim, &mut state, &drive_id, Some(token))
}

/// `GET /drives/{drive_id}/root/delta`.
pub(crate) async fn delta(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path(drive_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult<Json<Value>> {
    let mut state = sim.lock();
    let drive_id = owned_drive(&state, &drive_id, &caller)?.id.clone();
    serve_delta(
        &sim,
        &mut state,
        &drive_id,
        query.get("token").map(String::as_str),
    )
}

/// `GET /drives/{drive_id}/root/delta(token='…')`.
pub(crate) async fn delta_call(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path((drive_id, segment)): Path<(String, String)>,
) -> GraphResult<Json<Value>> {
    let token = token_of_segment(&segment).ok_or_else(|| unknown_segment(&segment))?;
    let mut state = sim.lock();
    let drive_id = owned_drive(&state, &drive_id, &caller)?.id.clone();
    serve_delta(&sim, &mut state, &drive_id, Some(token))
}
