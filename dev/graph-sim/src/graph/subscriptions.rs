//! `/v1.0/subscriptions`: create, list, get, update, delete and reauthorize (graph-protocol.md
//! §1.1). The rules live in [`crate::subscriptions`]; these handlers order the checks, run the
//! validation handshakes outside the state lock, and shape the responses.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use url::Url;

use super::{Caller, ODATA_BASE};
use crate::errors::GraphError;
use crate::identity::Grant;
use crate::sim::Sim;
use crate::state::State as SimState;
use crate::subscriptions::{
    Subscription, duplicate_error, effective_expiration, find_duplicate, parse_create, parse_update,
    quota_error, resolve_resource,
};
use crate::validation;

type GraphResult<T> = Result<T, GraphError>;

fn entity(subscription: &Subscription) -> Json<Value> {
    let mut body = subscription.to_graph_json();
    if let Some(object) = body.as_object_mut() {
        object.insert(
            "@odata.context".to_owned(),
            json!(format!("{ODATA_BASE}#subscriptions/$entity")),
        );
    }
    Json(body)
}

/// Subscriptions a caller may see and manage: those of its app in its tenant.
fn visible(subscription: &Subscription, caller: &Grant) -> bool {
    subscription.application_id == caller.app_id && subscription.tenant_id == caller.tenant_id
}

fn find_visible<'a>(state: &'a mut SimState, id: &str, caller: &Grant) -> GraphResult<&'a mut Subscription> {
    state
        .subscriptions
        .get_mut(id)
        .filter(|subscription| visible(subscription, caller))
        .ok_or_else(GraphError::subscription_not_found)
}

/// One validation handshake, counted (§2).
async fn validate(sim: &Sim, url: &Url) -> GraphResult<()> {
    sim.lock().counters.validation_handshakes += 1;
    let outcome = validation::handshake(sim.http(), url, sim.config().timing.validation).await;
    outcome.map_err(|failure| {
        tracing::info!(%url, ?failure, "validation handshake failed");
        sim.lock().counters.validation_failures += 1;
        failure.to_graph_error()
    })
}

/// The checks that need state: the resource, the expiration, duplicates and the quota.
fn admit(sim: &Sim, state: &mut SimState, candidate: &Subscription) -> GraphResult<()> {
    if let Some(existing) = find_duplicate(state.subscriptions.values(), candidate, sim.now()) {
        return Err(duplicate_error(existing));
    }
    if let Some(max) = state.settings.max_subscriptions_per_drive {
        let on_drive = state
            .subscriptions
            .values()
            .filter(|subscription| subscription.target.drive_id == candidate.target.drive_id)
            .count();
        if on_drive >= max {
            return Err(quota_error());
        }
    }
    Ok(())
}

/// `POST /subscriptions` → 201 with the subscription (§1.1, §1.2).
pub(crate) async fn create(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    body: Bytes,
) -> GraphResult<(StatusCode, Json<Value>)> {
    let request = parse_create(&body, sim.config().allow_http_loopback)?;
    let now = sim.now();
    let candidate = {
        let mut state = sim.lock();
        state.purge_expired(now);
        let target = resolve_resource(&request.resource, &caller, &state.identity, &state.drives)?;
        let expiration = effective_expiration(request.expiration, now)?;
        let candidate = Subscription::new(&request, &caller, target, expiration, now);
        admit(&sim, &mut state, &candidate)?;
        candidate
    };
    // §2: the notification URL is validated, and the lifecycle URL gets its own handshake even
    // when it is the same URL.
    validate(&sim, &request.notification_url.parsed).await?;
    if let Some(lifecycle_url) = &request.lifecycle_notification_url {
        validate(&sim, &lifecycle_url.parsed).await?;
    }
    let mut state = sim.lock();
    state.purge_expired(sim.now());
    // Another create may have won the race while the handshakes ran.
    admit(&sim, &mut state, &candidate)?;
    state.insert_subscription(candidate.clone());
    tracing::info!(subscription_id = %candidate.id, drive_id = %candidate.target.drive_id, "subscription created");
    Ok((StatusCode::CREATED, entity(&candidate)))
}

/// `GET /subscriptions`: the caller's app's subscriptions in its tenant.
pub(crate) async fn list(State(sim): State<Sim>, Caller(caller): Caller) -> Json<Value> {
    let mut mine: Vec<Subscription> = sim
        .subscriptions()
        .into_iter()
        .filter(|subscription| visible(subscription, &caller))
        .collect();
    mine.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Json(json!({
        "@odata.context": format!("{ODATA_BASE}#subscriptions"),
        "value": mine.iter().map(Subscription::to_graph_json).collect::<Vec<_>>(),
    }))
}

/// `GET /subscriptions/{id}`; 404 once expired or deleted (§1.6).
pub(crate) async fn get_one(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> GraphResult<Json<Value>> {
    let now = sim.now();
    let mut state = sim.lock();
    state.purge_expired(now);
    Ok(entity(find_visible(&mut state, &id, &caller)?))
}

/// `PATCH /subscriptions/{id}`: a new expiration and/or notificationUrl (§1.1). Only a new URL is
/// validated (§2: a renewal carrying just `expirationDateTime` sends no handshake), and before
/// anything changes; on failure nothing does. A PATCH also reauthorizes (§4); a new expiration
/// restarts the automatic reauthorization schedule.
pub(crate) async fn update(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> GraphResult<Json<Value>> {
    let now = sim.now();
    {
        let mut state = sim.lock();
        state.purge_expired(now);
        find_visible(&mut state, &id, &caller)?;
    }
    let request = parse_update(&body, sim.config().allow_http_loopback)?;
    let expiration = request
        .expiration
        .map(|requested| effective_expiration(requested, now))
        .transpose()?;
    if let Some(url) = &request.notification_url {
        validate(&sim, &url.parsed).await?;
    }
    let mut state = sim.lock();
    state.purge_expired(sim.now());
    let subscription = find_visible(&mut state, &id, &caller)?;
    if let Some(expiration) = expiration {
        subscription.expiration = expiration;
        subscription.reauthorization_reminded_at = None;
    }
    if let Some(url) = request.notification_url {
        subscription.notification_url = url.given;
    }
    subscription.needs_reauthorization = false;
    let body = entity(subscription);
    if let Some(expiration) = expiration {
        state.note_expiration(expiration);
    }
    Ok(body)
}

/// `DELETE /subscriptions/{id}` → 204; no notifications from then on.
pub(crate) async fn delete(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> GraphResult<StatusCode> {
    let now = sim.now();
    let mut state = sim.lock();
    state.purge_expired(now);
    find_visible(&mut state, &id, &caller)?;
    state.subscriptions.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /subscriptions/{id}/reauthorize` → 204 (§1.1, §4). Clears the mark but not the
/// automatic schedule: reminders continue until a PATCH moves the expiry.
pub(crate) async fn reauthorize(
    State(sim): State<Sim>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> GraphResult<StatusCode> {
    let now = sim.now();
    let mut state = sim.lock();
    state.purge_expired(now);
    let subscription = find_visible(&mut state, &id, &caller)?;
    subscription.needs_reauthorization = false;
    subscription.last_reauthorized_at = Some(now);
    Ok(StatusCode::NO_CONTENT)
}
