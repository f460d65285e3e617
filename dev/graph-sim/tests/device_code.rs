//! The device authorization grant of public client apps (graphfeed's CLI): `devicecode`, approval
//! by a simulated user, polling with Entra's errors, and the multi-resource refresh tokens it
//! yields (a login for graphfeed's API, then a Graph token from the same refresh token).

mod support;

use std::time::Duration;

use graph_sim::{DEFAULT_APP_ID, DEFAULT_APP_ID_URI, DEFAULT_CLIENT_APP_ID};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn api_scope() -> String {
    format!("{DEFAULT_APP_ID_URI}/access_as_user offline_access")
}

async fn device_code(running: &graph_sim::RunningSim, tenant: &str, scope: &str) -> Answer {
    form_request(
        running,
        &format!("/{tenant}/oauth2/v2.0/devicecode"),
        &[("client_id", DEFAULT_CLIENT_APP_ID), ("scope", scope)],
    )
    .await
}

async fn poll(running: &graph_sim::RunningSim, tenant: &str, device_code: &str) -> Answer {
    token_request(
        running,
        tenant,
        &[
            ("grant_type", DEVICE_GRANT),
            ("client_id", DEFAULT_CLIENT_APP_ID),
            ("device_code", device_code),
        ],
    )
    .await
}

async fn approve(running: &graph_sim::RunningSim, user_code: &str, user_id: &str) -> Answer {
    control_call(
        running,
        Method::POST,
        "/devicecode/approve",
        Some(json!({"user_code": user_code, "user_id": user_id})),
    )
    .await
}

fn text<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {body}"))
}

/// A whole device-code login through `organizations`: code, approval as `user`, one poll.
async fn login(running: &graph_sim::RunningSim, user: &graph_sim::CreatedUser, scope: &str) -> Value {
    let issued = device_code(running, "organizations", scope).await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let approved = approve(running, text(&issued.body, "user_code"), &user.user_id).await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    let tokens = poll(running, "organizations", text(&issued.body, "device_code")).await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    tokens.body
}

/// The refresh grant of the public client: no secret.
async fn refresh(running: &graph_sim::RunningSim, refresh_token: &str, scope: &str) -> Answer {
    token_request(
        running,
        "organizations",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", DEFAULT_CLIENT_APP_ID),
            ("refresh_token", refresh_token),
            ("scope", scope),
        ],
    )
    .await
}

/// Verifies an Entra JWT like graphfeed does (key by `kid`, RS256, audience and issuer exact).
async fn verified(running: &graph_sim::RunningSim, token: &str, tenant_id: &str, audience: &str) -> Value {
    let keys = get_json(running, &format!("/{tenant_id}/discovery/v2.0/keys")).await;
    let keys: JwkSet = serde_json::from_value(keys.body).expect("a JWK set");
    let header = jsonwebtoken::decode_header(token).expect("a JWT");
    let jwk = keys.find(&header.kid.expect("kid")).expect("published key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[format!("{}/{tenant_id}/v2.0", running.authority_host())]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).expect("key"), &validation)
        .expect("verifies")
        .claims
}

#[tokio::test]
async fn a_device_code_has_entras_fields_and_a_verification_page_on_the_simulator() {
    let running = start_sim().await;

    let answer = device_code(&running, "organizations", &api_scope()).await;

    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = &answer.body;
    let user_code = text(body, "user_code");
    assert_eq!(user_code.len(), 9);
    assert!(
        user_code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    );
    assert!(text(body, "device_code").starts_with("simdc."));
    let verification_uri = format!("{}/_sim/devicelogin", running.authority_host());
    assert_eq!(body["verification_uri"], verification_uri);
    assert_eq!(
        (body["expires_in"].as_u64(), body["interval"].as_u64()),
        (Some(900), Some(1))
    );
    assert_eq!(
        body["message"],
        format!(
            "To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to \
             authenticate."
        )
    );
    let page = http()
        .get(&verification_uri)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(page.contains(user_code), "{page}");
    let listed = control_call(&running, Method::GET, "/devicecode", None).await;
    assert_eq!(listed.body["value"][0]["user_code"], user_code);
    assert_eq!(listed.body["value"][0]["status"], "pending");
    assert!(
        listed.body["value"][0].get("device_code").is_none(),
        "never shown"
    );
    assert_eq!(running.sim().counters().device_codes_issued, 1);
}

#[tokio::test]
async fn polling_is_pending_until_approved_then_yields_an_api_token_and_a_refresh_token_once() {
    let running = start_sim().await;
    let user = new_user(&running);
    let issued = device_code(&running, "organizations", &api_scope()).await;
    let device = text(&issued.body, "device_code").to_owned();

    let pending = poll(&running, "organizations", &device).await;
    let (error, code, description) = entra_error(&pending);
    assert_eq!(
        (pending.status, error.as_str(), code),
        (400, "authorization_pending", 70016)
    );
    assert!(description.starts_with(
        "AADSTS70016: The provided request has not yet been authorized by the user. The user must input their code."
    ));
    let approved = approve(&running, text(&issued.body, "user_code"), &user.user_id).await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.body["status"], "approved");
    let tokens = poll(&running, "organizations", &device).await;

    assert_eq!(tokens.status, 200, "{}", tokens.body);
    let body = &tokens.body;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], format!("{DEFAULT_APP_ID_URI}/access_as_user"));
    assert_eq!(body["expires_in"], 3599);
    assert!(text(body, "refresh_token").starts_with("simrt."));
    assert!(body.get("id_token").is_none(), "no openid, no id token");
    let claims = verified(
        &running,
        text(body, "access_token"),
        &user.tenant_id,
        DEFAULT_APP_ID,
    )
    .await;
    assert_eq!(claims["azp"], DEFAULT_CLIENT_APP_ID);
    assert_eq!(claims["scp"], "access_as_user");
    assert_eq!(
        (&claims["oid"], &claims["tid"]),
        (&json!(user.user_id), &json!(user.tenant_id))
    );
    assert_eq!(claims["ver"], "2.0");
    let again = poll(&running, "organizations", &device).await;
    assert_eq!(entra_error(&again).1, 70018, "a redeemed code is spent");
    let counters = running.sim().counters();
    assert_eq!(counters.device_code_polls, 3);
    assert_eq!(counters.token_requests.get("device_code"), Some(&3));
}

#[tokio::test]
async fn an_api_token_is_refused_by_graph_but_the_refresh_token_gets_a_graph_token_that_writes() {
    let running = start_sim().await;
    let user = new_user(&running);
    let login = login(&running, &user, &api_scope()).await;
    let (status, body) = Graph::new(&running, text(&login, "access_token"))
        .call(Method::GET, "/me/drive", None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(error_of(&body).0, "InvalidAuthenticationToken");

    let graph = refresh(
        &running,
        text(&login, "refresh_token"),
        "https://graph.microsoft.com/Files.ReadWrite offline_access",
    )
    .await;

    assert_eq!(graph.status, 200, "{}", graph.body);
    assert_eq!(graph.body["scope"], "https://graph.microsoft.com/Files.ReadWrite");
    let graph_token = text(&graph.body, "access_token");
    assert!(graph_token.starts_with("simgraph."));
    let client = Graph::new(&running, graph_token);
    let (status, drive) = client.call(Method::GET, "/me/drive", None).await;
    assert_eq!((status.as_u16(), &drive["id"]), (200, &json!(user.drive_id)));
    let uploaded = send_bytes(
        Method::PUT,
        &format!("{}/me/drive/root:/hello.txt:/content", running.graph_base_url()),
        Some(graph_token),
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(uploaded.status, 201, "{}", uploaded.body);
    let back = refresh(
        &running,
        text(&graph.body, "refresh_token"),
        &format!("{DEFAULT_APP_ID_URI}/access_as_user"),
    )
    .await;
    assert_eq!(back.status, 200, "{}", back.body);
    verified(
        &running,
        text(&back.body, "access_token"),
        &user.tenant_id,
        DEFAULT_APP_ID,
    )
    .await;
    let two_resources = refresh(
        &running,
        text(&back.body, "refresh_token"),
        &format!("{DEFAULT_APP_ID_URI}/access_as_user Files.ReadWrite"),
    )
    .await;
    let (error, code, description) = entra_error(&two_resources);
    assert_eq!((error.as_str(), code), ("invalid_scope", 28000));
    assert!(description.contains("because it contains more than one resource"));
}

#[tokio::test]
async fn a_graph_token_without_a_write_scope_reads_but_cannot_upload() {
    let running = start_sim().await;
    let user = new_user(&running);
    let login = login(&running, &user, "Files.Read offline_access").await;
    assert_eq!(login["scope"], "https://graph.microsoft.com/Files.Read");
    let token = text(&login, "access_token");
    let (status, _) = Graph::new(&running, token)
        .call(Method::GET, "/me/drive/root", None)
        .await;
    assert_eq!(status, 200);

    let upload = send_bytes(
        Method::PUT,
        &format!("{}/me/drive/root:/a.txt:/content", running.graph_base_url()),
        Some(token),
        b"x".to_vec(),
    )
    .await;

    assert_eq!(upload.status, 403, "{}", upload.body);
    assert_eq!(error_of(&upload.body).0, "accessDenied");
}

#[tokio::test]
async fn polling_sooner_than_the_interval_is_slow_down() {
    let running = start_sim_with(|config| {
        config.timing.device_code_interval = Duration::from_millis(800);
    })
    .await;
    let issued = device_code(&running, "common", "User.Read").await;
    assert_eq!(issued.body["interval"], 1, "whole seconds, rounded up");
    let device = text(&issued.body, "device_code").to_owned();

    let first = poll(&running, "common", &device).await;
    let second = poll(&running, "common", &device).await;
    tokio::time::sleep(Duration::from_millis(850)).await;
    let third = poll(&running, "common", &device).await;

    assert_eq!(entra_error(&first).0, "authorization_pending");
    assert_eq!(second.status, 400);
    assert_eq!(entra_error(&second).0, "slow_down");
    assert_eq!(entra_error(&third).0, "authorization_pending");
    let counters = running.sim().counters();
    assert_eq!(
        (counters.device_code_polls, counters.device_code_slow_downs),
        (3, 1)
    );
    assert_eq!(counters.token_errors.get("slow_down"), Some(&1));
}

#[tokio::test]
async fn a_code_expires_after_fifteen_sim_minutes_and_can_then_not_be_approved() {
    let running = start_sim().await;
    let user = new_user(&running);
    let issued = device_code(&running, "organizations", &api_scope()).await;
    running.sim().advance(chrono::Duration::minutes(15));

    let expired = poll(&running, "organizations", text(&issued.body, "device_code")).await;
    let approved = approve(&running, text(&issued.body, "user_code"), &user.user_id).await;

    let (error, code, description) = entra_error(&expired);
    assert_eq!((error.as_str(), code), ("expired_token", 70020));
    assert!(description.starts_with(
        "AADSTS70020: The provided value for the input parameter 'device_code' is not valid. This device code has \
         expired."
    ));
    assert_eq!(approved.status, 409, "{}", approved.body);
}

#[tokio::test]
async fn a_declined_code_is_authorization_declined_and_an_unknown_one_bad_verification_code() {
    let running = start_sim().await;
    let issued = device_code(&running, "organizations", &api_scope()).await;
    let denied = control_call(
        &running,
        Method::POST,
        "/devicecode/deny",
        Some(json!({"user_code": text(&issued.body, "user_code").to_lowercase()})),
    )
    .await;
    assert_eq!(denied.body["status"], "declined");

    let declined = poll(&running, "organizations", text(&issued.body, "device_code")).await;
    let unknown = poll(&running, "organizations", "simdc.nothing").await;
    let other_tenant = poll(&running, "common", text(&issued.body, "device_code")).await;

    assert_eq!(entra_error(&declined).0, "authorization_declined");
    let (error, code, _) = entra_error(&unknown);
    assert_eq!((error.as_str(), code), ("bad_verification_code", 70018));
    assert_eq!(entra_error(&other_tenant).0, "bad_verification_code");
}

#[tokio::test]
async fn approve_next_takes_the_oldest_pending_code_and_the_tenant_path_must_admit_the_user() {
    let running = start_sim().await;
    let user = new_user(&running);
    let first = device_code(&running, "organizations", "User.Read").await;
    let _second = device_code(&running, "organizations", "User.Read").await;
    let personal = device_code(&running, "consumers", "User.Read").await;

    let next = control_call(
        &running,
        Method::POST,
        "/devicecode/approve-next",
        Some(json!({"user_id": user.user_id})),
    )
    .await;
    let refused = approve(&running, text(&personal.body, "user_code"), &user.user_id).await;

    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(next.body["user_code"], first.body["user_code"]);
    assert_eq!(next.body["user_id"], json!(user.user_id));
    assert_eq!(refused.status, 409, "{}", refused.body);
    let tokens = poll(&running, "organizations", text(&first.body, "device_code")).await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    let nobody = approve(&running, text(&personal.body, "user_code"), "no-such-user").await;
    assert_eq!(nobody.status, 404);
}

#[tokio::test]
async fn openid_adds_an_id_token_and_the_first_resource_of_several_gets_the_token() {
    let running = start_sim().await;
    let user = new_user(&running);

    let login = login(
        &running,
        &user,
        &format!("openid profile offline_access {DEFAULT_APP_ID_URI}/access_as_user https://graph.microsoft.com/Files.ReadWrite"),
    )
    .await;

    assert_eq!(login["scope"], format!("{DEFAULT_APP_ID_URI}/access_as_user"));
    let id_claims = verified(
        &running,
        text(&login, "id_token"),
        &user.tenant_id,
        DEFAULT_CLIENT_APP_ID,
    )
    .await;
    assert_eq!(id_claims["oid"], json!(user.user_id));
    assert_eq!(id_claims["preferred_username"], json!(user.user_principal_name));
}

#[tokio::test]
async fn the_device_endpoints_refuse_bad_clients_scopes_and_secrets_with_entras_codes() {
    let running = start_sim().await;
    let form = |client: &'static str, scope: &'static str| vec![("client_id", client), ("scope", scope)];
    let path = "/organizations/oauth2/v2.0/devicecode";

    let unknown_client = form_request(
        &running,
        path,
        &form("11111111-2222-3333-4444-555555555555", "User.Read"),
    )
    .await;
    let bad_scope = form_request(&running, path, &form(DEFAULT_CLIENT_APP_ID, "api://nobody/x")).await;
    let no_scope = form_request(&running, path, &[("client_id", DEFAULT_CLIENT_APP_ID)]).await;
    let unknown_tenant = device_code(&running, "contoso.example", "User.Read").await;
    let with_secret = token_request(
        &running,
        "organizations",
        &[
            ("grant_type", DEVICE_GRANT),
            ("client_id", DEFAULT_CLIENT_APP_ID),
            ("client_secret", "s"),
            ("device_code", "simdc.x"),
        ],
    )
    .await;
    let obo_by_public_client = token_request(
        &running,
        "organizations",
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("client_id", DEFAULT_CLIENT_APP_ID),
            ("assertion", "x.y.z"),
            ("scope", "Files.Read.All"),
            ("requested_token_use", "on_behalf_of"),
        ],
    )
    .await;

    assert_eq!(entra_error(&unknown_client).1, 700016);
    assert_eq!(entra_error(&bad_scope).1, 70011);
    assert_eq!(entra_error(&no_scope).1, 900144);
    assert_eq!(entra_error(&unknown_tenant).1, 90002);
    assert_eq!(with_secret.status, 401);
    let (error, code, _) = entra_error(&with_secret);
    assert_eq!((error.as_str(), code), ("invalid_client", 700025));
    assert_eq!(entra_error(&obo_by_public_client).1, 7000218);
}

#[tokio::test]
async fn another_public_client_app_can_be_registered_and_its_codes_are_its_own() {
    let running = start_sim().await;
    let user = new_user(&running);
    let other = "88888888-2222-3333-4444-555555555555";
    let registered = control_call(
        &running,
        Method::POST,
        "/client-apps",
        Some(json!({"client_id": other, "display_name": "another CLI"})),
    )
    .await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    let issued = form_request(
        &running,
        "/organizations/oauth2/v2.0/devicecode",
        &[("client_id", other), ("scope", "User.Read")],
    )
    .await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    running
        .sim()
        .approve_device_code(text(&issued.body, "user_code"), &user.user_id)
        .expect("approved");

    let by_default_client = poll(&running, "organizations", text(&issued.body, "device_code")).await;
    let by_owner = token_request(
        &running,
        "organizations",
        &[
            ("grant_type", DEVICE_GRANT),
            ("client_id", other),
            ("device_code", text(&issued.body, "device_code")),
        ],
    )
    .await;

    assert_eq!(entra_error(&by_default_client).1, 70000);
    assert_eq!(by_owner.status, 200, "{}", by_owner.body);
    let listed = control_call(&running, Method::GET, "/client-apps", None).await;
    assert_eq!(listed.body["value"].as_array().map(Vec::len), Some(2));
}
