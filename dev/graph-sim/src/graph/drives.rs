//! Read-only drive endpoints: `me/drive`, `drives/{id}`, their roots and items by id, in Graph's
//! `drive` and `driveItem` shapes, and `root/delta?token=latest`. Only the owner may read a drive;
//! app-only tokens are refused. Full delta paging and uploads come in a later issue and will live
//! beside these.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};

use super::{Caller, ODATA_BASE};
use crate::drive::{Drive, Item};
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
            object.insert("file".to_owned(), json!({}));
        }
        if item.id == drive.root_id {
            object.insert("root".to_owned(), json!({}));
        }
    }
    body
}

fn owned_drive<'a>(state: &'a SimState, drive_id: &str, caller: &Grant) -> GraphResult<&'a Drive> {
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

fn my_drive_id(state: &SimState, caller: &Grant) -> GraphResult<String> {
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

/// `delta` with `token=latest` (graph-protocol.md §5.1): no items, and a deltaLink whose token is
/// the drive's current journal position. Any other token (or none) is not simulated yet: 501.
fn latest_delta(sim: &Sim, drive: &Drive, query: &HashMap<String, String>) -> GraphResult<Json<Value>> {
    match query.get("token").map(String::as_str) {
        Some("latest") => Ok(Json(json!({
            "@odata.context": format!("{ODATA_BASE}#Collection(driveItem)"),
            "value": [],
            "@odata.deltaLink": format!(
                "{}/drives/{}/root/delta?token={}",
                sim.graph_base_url(),
                drive.id,
                drive.latest_delta_token().encode()
            ),
        }))),
        _ => Err(GraphError::not_implemented(
            "graph-sim serves delta only with token=latest so far.",
        )),
    }
}

/// `GET /me/drive/root/delta`.
pub(crate) async fn my_delta(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult<Json<Value>> {
    let state = sim.lock();
    let drive_id = my_drive_id(&state, &caller)?;
    latest_delta(&sim, owned_drive(&state, &drive_id, &caller)?, &query)
}

/// `GET /drives/{drive_id}/root/delta`.
pub(crate) async fn delta(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path(drive_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult<Json<Value>> {
    let state = sim.lock();
    latest_delta(&sim, owned_drive(&state, &drive_id, &caller)?, &query)
}
