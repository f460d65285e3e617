//! The token endpoint: on-behalf-of, refresh with rotation, client credentials, client
//! authentication, injected failures and their exact bodies (graph-protocol.md §7, §10 item 14).

mod support;

use base64::Engine as _;
use graph_sim::{ApiToken, Audience, AuthFailure, RegisterApp, Repeat, Tamper};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

const SCOPES: &str = "https://graph.microsoft.com/Files.Read.All offline_access";

/// A token request form.
type Form<'a> = Vec<(&'a str, &'a str)>;

fn api_token(running: &graph_sim::RunningSim, spec: ApiToken) -> String {
    running.sim().mint_api_token(&spec).expect("minted").token
}

/// A successful OBO for a fresh user; returns (user, body).
async fn connected(running: &graph_sim::RunningSim) -> (graph_sim::CreatedUser, Value) {
    let user = new_user(running);
    let assertion = api_token(running, ApiToken::new(&user.user_id));
    let answer = token_request(running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    (user, answer.body)
}

#[tokio::test]
async fn obo_exchanges_an_api_token_for_a_graph_token_that_graph_accepts() {
    let running = start_sim().await;
    let user = new_user(&running);
    let assertion = api_token(&running, ApiToken::new(&user.user_id));

    let answer = token_request(
        &running,
        &user.tenant_id,
        &obo_form(&assertion, "offline_access Files.Read.All"),
    )
    .await;

    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = &answer.body;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "https://graph.microsoft.com/Files.Read.All");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    assert!(body["refresh_token"].as_str().is_some_and(|rt| !rt.is_empty()));
    assert_eq!(answer.header("cache-control"), Some("no-store, no-cache"));
    let graph_token = body["access_token"].as_str().expect("access token");
    let (status, drive) = Graph::new(&running, graph_token)
        .call(Method::GET, "/me/drive", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(drive["id"], user.drive_id);
    let counters = running.sim().counters();
    assert_eq!(counters.token_requests.get("on_behalf_of"), Some(&1));
    assert!(counters.token_errors.is_empty());
}

#[tokio::test]
async fn obo_without_offline_access_returns_no_refresh_token() {
    let running = start_sim().await;
    let user = new_user(&running);
    let assertion = api_token(&running, ApiToken::new(&user.user_id));

    let answer = token_request(
        &running,
        "common",
        &obo_form(&assertion, "https://graph.microsoft.com/Files.Read.All"),
    )
    .await;

    assert_eq!(answer.status, 200);
    assert!(answer.body.get("refresh_token").is_none());
}

#[tokio::test]
async fn obo_accepts_a_v1_app_id_uri_assertion_and_http_basic_client_authentication() {
    let running = start_sim().await;
    let user = new_user(&running);
    let assertion = api_token(&running, ApiToken::new(&user.user_id).v1());
    let form: Vec<(&str, &str)> = obo_form(&assertion, SCOPES)
        .into_iter()
        .filter(|(name, _)| *name != "client_id" && *name != "client_secret")
        .collect();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        graph_sim::DEFAULT_APP_ID,
        graph_sim::DEFAULT_CLIENT_SECRET
    ));

    let answer = token_request_with(&running, "organizations", &form, |request| {
        request.header("authorization", format!("Basic {basic}"))
    })
    .await;

    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn obo_with_a_wrong_audience_assertion_is_refused() {
    let running = start_sim().await;
    let user = new_user(&running);
    let assertion = api_token(
        &running,
        ApiToken::new(&user.user_id).audience(Audience::Other("00000003-0000-0000-c000-000000000000".into())),
    );

    let answer = token_request(&running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;

    assert_eq!(answer.status, 400);
    let (error, code, description) = entra_error(&answer);
    assert_eq!((error.as_str(), code), ("invalid_grant", 500131));
    assert!(description.contains(
        "Assertion audience does not match the Client app presenting the assertion. The audience in the \
         assertion was '00000003-0000-0000-c000-000000000000' and the expected audience is"
    ));
    assert_eq!(
        running.sim().counters().token_errors.get("invalid_grant"),
        Some(&1)
    );
}

#[tokio::test]
async fn obo_with_an_expired_or_premature_assertion_is_refused_with_aadsts500133() {
    let running = start_sim().await;
    let user = new_user(&running);

    for spec in [
        ApiToken::new(&user.user_id).expired(),
        ApiToken::new(&user.user_id).not_before(chrono::Duration::minutes(5)),
    ] {
        let assertion = api_token(&running, spec);
        let answer = token_request(&running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;
        let (error, code, description) = entra_error(&answer);
        assert_eq!((error.as_str(), code), ("invalid_grant", 500133));
        assert!(description.contains("Assertion is not within its valid time range."));
    }

    let fresh = api_token(&running, ApiToken::new(&user.user_id));
    running.sim().advance(chrono::Duration::minutes(61));
    let answer = token_request(&running, &user.tenant_id, &obo_form(&fresh, SCOPES)).await;
    assert_eq!(entra_error(&answer).1, 500133, "the sim clock decides");
}

#[tokio::test]
async fn obo_with_a_tampered_assertion_is_refused_with_aadsts50013() {
    let running = start_sim().await;
    let user = new_user(&running);

    for tamper in [
        Tamper::UnknownKey,
        Tamper::WrongKey,
        Tamper::AlgNone,
        Tamper::Hs256,
        Tamper::BadSignature,
        Tamper::Kid("nope".into()),
    ] {
        let assertion = api_token(&running, ApiToken::new(&user.user_id).tamper(tamper.clone()));
        let answer = token_request(&running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;
        assert_eq!(answer.status, 400);
        let (error, code, _) = entra_error(&answer);
        assert_eq!((error.as_str(), code), ("invalid_grant", 50013), "{tamper:?}");
    }
    let wrong_issuer = api_token(
        &running,
        ApiToken::new(&user.user_id).issuer("https://evil.example/x/v2.0"),
    );
    let answer = token_request(&running, &user.tenant_id, &obo_form(&wrong_issuer, SCOPES)).await;
    assert_eq!(entra_error(&answer).1, 50013);
    let garbage = token_request(&running, &user.tenant_id, &obo_form("not-a-jwt", SCOPES)).await;
    assert_eq!(entra_error(&garbage).0, "invalid_request");
    assert_eq!(entra_error(&garbage).1, 50027);
}

#[tokio::test]
async fn a_wrong_client_secret_is_invalid_client_with_http_401() {
    let running = start_sim().await;
    let user = new_user(&running);
    let assertion = api_token(&running, ApiToken::new(&user.user_id));
    let mut form = obo_form(&assertion, SCOPES);
    for pair in &mut form {
        if pair.0 == "client_secret" {
            pair.1 = "wrong";
        }
    }

    let answer = token_request(&running, &user.tenant_id, &form).await;

    assert_eq!(answer.status, 401);
    let (error, code, description) = entra_error(&answer);
    assert_eq!((error.as_str(), code), ("invalid_client", 7000215));
    assert!(description.starts_with(&format!(
        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the \
         client secret value, not the client secret ID, for a secret added to app '{}'.",
        graph_sim::DEFAULT_APP_ID
    )));
}

#[tokio::test]
async fn requests_missing_what_entra_requires_get_entras_errors() {
    let running = start_sim().await;
    let user = new_user(&running);
    let assertion = api_token(&running, ApiToken::new(&user.user_id));
    let tenant = user.tenant_id.as_str();
    let without = |name: &str| -> Form<'_> {
        obo_form(&assertion, SCOPES)
            .into_iter()
            .filter(|(field, _)| *field != name)
            .collect()
    };

    let cases: Vec<(Form<'_>, u16, &str, u64)> = vec![
        (without("grant_type"), 400, "invalid_request", 900144),
        (without("client_id"), 400, "invalid_request", 900144),
        (without("client_secret"), 401, "invalid_client", 7000218),
        (without("assertion"), 400, "invalid_request", 900144),
        (without("requested_token_use"), 400, "invalid_request", 900144),
        (without("scope"), 400, "invalid_request", 900144),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", graph_sim::DEFAULT_APP_ID),
                ("client_secret", graph_sim::DEFAULT_CLIENT_SECRET),
            ],
            400,
            "unsupported_grant_type",
            70003,
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", "99999999-9999-9999-9999-999999999999"),
                ("client_secret", "x"),
            ],
            400,
            "unauthorized_client",
            700016,
        ),
    ];
    for (form, status, error, code) in cases {
        let answer = token_request(&running, tenant, &form).await;
        assert_eq!(answer.status, status, "{}", answer.body);
        let (got_error, got_code, _) = entra_error(&answer);
        assert_eq!((got_error.as_str(), got_code), (error, code), "{}", answer.body);
    }
    let unknown_tenant = token_request(
        &running,
        "11111111-1111-1111-1111-111111111111",
        &obo_form(&assertion, SCOPES),
    )
    .await;
    assert_eq!(entra_error(&unknown_tenant).1, 90002);
    let other_resource = token_request(
        &running,
        tenant,
        &obo_form(&assertion, "api://other/x offline_access"),
    )
    .await;
    assert_eq!(entra_error(&other_resource).0, "invalid_scope");
    let counters = running.sim().counters();
    assert_eq!(counters.token_requests.get("(missing)"), Some(&1));
    assert_eq!(counters.token_requests.get("password"), Some(&1));
}

#[tokio::test]
async fn refresh_rotates_the_refresh_token_and_the_old_one_stops_after_the_grace() {
    let running = start_sim().await;
    let (_, first) = connected(&running).await;
    let old = first["refresh_token"].as_str().expect("rt").to_owned();

    let answer = token_request(&running, "common", &refresh_form(&old)).await;

    assert_eq!(answer.status, 200, "{}", answer.body);
    let new = answer.body["refresh_token"]
        .as_str()
        .expect("a new refresh token")
        .to_owned();
    assert_ne!(new, old);
    assert_ne!(answer.body["access_token"], first["access_token"]);
    assert_eq!(answer.body["scope"], "https://graph.microsoft.com/Files.Read.All");
    let graph_token = answer.body["access_token"].as_str().expect("at");
    assert_eq!(
        Graph::new(&running, graph_token)
            .call(Method::GET, "/me/drive", None)
            .await
            .0,
        200
    );

    running.sim().advance(chrono::Duration::minutes(5));
    let within_grace = token_request(&running, "common", &refresh_form(&old)).await;
    assert_eq!(
        within_grace.status, 200,
        "a replaced token works for a short grace"
    );
    running.sim().advance(chrono::Duration::minutes(6));
    let after_grace = token_request(&running, "common", &refresh_form(&old)).await;
    let (error, code, _) = entra_error(&after_grace);
    assert_eq!((error.as_str(), code), ("invalid_grant", 70008));
    let newest = token_request(&running, "common", &refresh_form(&new)).await;
    assert_eq!(newest.status, 200, "the replacement still works");
    assert_eq!(
        running.sim().counters().token_requests.get("refresh_token"),
        Some(&4)
    );
}

#[tokio::test]
async fn without_a_grace_a_replaced_refresh_token_keeps_working_as_in_entra() {
    let running = start_sim_with(|config| config.timing.refresh_token_reuse_grace = None).await;
    let (_, first) = connected(&running).await;
    let old = first["refresh_token"].as_str().expect("rt").to_owned();
    assert_eq!(
        token_request(&running, "common", &refresh_form(&old))
            .await
            .status,
        200
    );

    running.sim().advance(chrono::Duration::days(30));

    assert_eq!(
        token_request(&running, "common", &refresh_form(&old))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn revoked_unknown_and_malformed_refresh_tokens_get_their_codes() {
    let running = start_sim().await;
    let (user, first) = connected(&running).await;
    let revoked = first["refresh_token"].as_str().expect("rt").to_owned();

    running
        .sim()
        .revoke_refresh_tokens(&user.user_id)
        .expect("revoked");

    let answer = token_request(&running, "common", &refresh_form(&revoked)).await;
    let (error, code, description) = entra_error(&answer);
    assert_eq!((error.as_str(), code), ("invalid_grant", 50173));
    assert!(description.contains("The provided grant has expired due to it being revoked"));
    let unknown = token_request(&running, "common", &refresh_form("simrt.0000")).await;
    assert_eq!(entra_error(&unknown).1, 70008);
    let malformed = token_request(&running, "common", &refresh_form("garbage")).await;
    assert_eq!(entra_error(&malformed).1, 9002313);
    let assertion = api_token(&running, ApiToken::new(&user.user_id));
    let again = token_request(&running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;
    let fresh = again.body["refresh_token"]
        .as_str()
        .expect("a new grant after revocation");
    assert_eq!(
        token_request(&running, "common", &refresh_form(fresh))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_refresh_token_unused_for_90_days_expires_with_aadsts700082() {
    let running = start_sim_with(|config| config.timing.refresh_token_reuse_grace = None).await;
    let (_, first) = connected(&running).await;
    let rt = first["refresh_token"].as_str().expect("rt").to_owned();

    running.sim().advance(chrono::Duration::days(91));

    let answer = token_request(&running, "common", &refresh_form(&rt)).await;
    let (error, code, description) = entra_error(&answer);
    assert_eq!((error.as_str(), code), ("invalid_grant", 700082));
    assert!(description.contains("and was inactive for 90.00:00:00."));
}

#[tokio::test]
async fn a_refresh_token_of_another_client_is_refused() {
    let running = start_sim().await;
    let (_, first) = connected(&running).await;
    running
        .sim()
        .register_app(RegisterApp {
            client_id: "22222222-2222-2222-2222-222222222222".into(),
            client_secret: "other-secret".into(),
            app_id_uri: None,
            api_scope: "access_as_user".into(),
            display_name: None,
        })
        .expect("registered");
    let rt = first["refresh_token"].as_str().expect("rt");

    let answer = token_request(
        &running,
        "common",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "22222222-2222-2222-2222-222222222222"),
            ("client_secret", "other-secret"),
            ("refresh_token", rt),
        ],
    )
    .await;

    assert_eq!(entra_error(&answer).1, 70000);
}

/// The body of an injected failure, with its volatile fields blanked.
fn stable(body: &Value) -> Value {
    let mut body = body.clone();
    for field in ["timestamp", "trace_id", "correlation_id"] {
        body[field] = json!("-");
    }
    let description = body["error_description"].as_str().unwrap_or_default();
    let head = description
        .split("\r\nTrace ID:")
        .next()
        .unwrap_or_default()
        .to_owned();
    body["error_description"] = json!(head);
    body
}

#[tokio::test]
async fn each_injected_failure_gives_its_exact_body() {
    let running = start_sim().await;
    let sim = running.sim();
    let user = new_user(&running);
    let claims = r#"{"access_token":{"capolids":{"essential":true,"values":["7e5b1f7c-1a8e-4c1e-9a55-2f1d0c5e6b7a"]}}}"#;
    let cases = [
        (
            AuthFailure::MfaRequired,
            400,
            json!({
                "error": "invalid_grant",
                "error_description": "AADSTS50076: Due to a configuration change made by your administrator, or \
                    because you moved to a new location, you must use multi-factor authentication to access \
                    '00000003-0000-0000-c000-000000000000'.",
                "error_codes": [50076],
                "error_uri": "https://login.microsoftonline.com/error?code=50076",
                "suberror": "basic_action",
                "claims": claims,
            }),
        ),
        (
            AuthFailure::ConsentRequired,
            400,
            json!({
                "error": "invalid_grant",
                "error_description": format!(
                    "AADSTS65001: The user or administrator has not consented to use the application with ID \
                     '{}' named 'graphfeed (local)'. Send an interactive authorization request for this user \
                     and resource.",
                    graph_sim::DEFAULT_APP_ID
                ),
                "error_codes": [65001],
                "error_uri": "https://login.microsoftonline.com/error?code=65001",
                "suberror": "consent_required",
            }),
        ),
        (
            AuthFailure::InteractionRequired,
            400,
            json!({
                "error": "interaction_required",
                "error_description": "AADSTS50079: Due to a configuration change made by your administrator, or \
                    because you moved to a new location, you must enroll in multi-factor authentication to access \
                    '00000003-0000-0000-c000-000000000000'.",
                "error_codes": [50079],
                "error_uri": "https://login.microsoftonline.com/error?code=50079",
                "suberror": "basic_action",
                "claims": claims,
            }),
        ),
        (
            AuthFailure::TemporarilyUnavailable {
                http_503: false,
                retry_after: None,
            },
            400,
            json!({
                "error": "temporarily_unavailable",
                "error_description": "AADSTS90033: A transient error has occurred. Please try again.",
                "error_codes": [90033],
                "error_uri": "https://login.microsoftonline.com/error?code=90033",
            }),
        ),
    ];
    for (failure, status, expected) in cases {
        sim.set_auth_failure(&user.user_id, failure.clone(), Repeat::Times(1))
            .expect("armed");
        let assertion = api_token(&running, ApiToken::new(&user.user_id));
        let answer = token_request(&running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;
        assert_eq!(answer.status, status, "{failure:?}");
        let mut want = expected.clone();
        for field in ["timestamp", "trace_id", "correlation_id"] {
            want[field] = json!("-");
        }
        assert_eq!(stable(&answer.body), want, "{failure:?}");
        entra_error(&answer);
        let next = token_request(&running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;
        assert_eq!(next.status, 200, "{failure:?} fired once");
    }
}

#[tokio::test]
async fn temporarily_unavailable_can_be_a_503_with_retry_after_and_sticky() {
    let running = start_sim().await;
    let user = new_user(&running);
    running
        .sim()
        .set_auth_failure(
            &user.user_id,
            AuthFailure::TemporarilyUnavailable {
                http_503: true,
                retry_after: Some(7),
            },
            Repeat::Sticky,
        )
        .expect("armed");
    let assertion = api_token(&running, ApiToken::new(&user.user_id));

    for _ in 0..3 {
        let answer = token_request(&running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.header("retry-after"), Some("7"));
        assert_eq!(entra_error(&answer).0, "temporarily_unavailable");
    }
    running.sim().clear_auth_failure(&user.user_id);
    let answer = token_request(&running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn an_inactive_refresh_token_failure_hits_refresh_only() {
    let running = start_sim().await;
    let (user, first) = connected(&running).await;
    let rt = first["refresh_token"].as_str().expect("rt").to_owned();
    running
        .sim()
        .set_auth_failure(&user.user_id, AuthFailure::InactiveRefreshToken, Repeat::Times(1))
        .expect("armed");

    let assertion = api_token(&running, ApiToken::new(&user.user_id));
    let obo = token_request(&running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;
    assert_eq!(obo.status, 200, "OBO has no refresh token to be inactive");
    let answer = token_request(&running, "common", &refresh_form(&rt)).await;

    let (error, code, description) = entra_error(&answer);
    assert_eq!((error.as_str(), code), ("invalid_grant", 700082));
    assert!(description.starts_with(
        "AADSTS700082: The refresh token has expired due to inactivity. The token was issued on "
    ));
}

#[tokio::test]
async fn auth_failures_can_be_armed_over_http() {
    let running = start_sim().await;
    let (user, first) = connected(&running).await;
    let rt = first["refresh_token"].as_str().expect("rt").to_owned();
    let control = running.control_url();
    let url = format!("{control}/users/{}/auth-failure", user.user_id);

    let armed = http()
        .post(&url)
        .json(&json!({"failure": "mfa_required", "count": 2}))
        .send()
        .await
        .expect("answer");
    assert_eq!(armed.status(), 204);
    for _ in 0..2 {
        let answer = token_request(&running, "common", &refresh_form(&rt)).await;
        assert_eq!(entra_error(&answer).1, 50076);
        assert!(answer.body["claims"].is_string());
    }
    assert_eq!(
        token_request(&running, "common", &refresh_form(&rt)).await.status,
        200
    );

    http()
        .post(&url)
        .json(&json!({"failure": "consent_required", "sticky": true}))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        entra_error(&token_request(&running, "common", &refresh_form(&rt)).await).1,
        65001
    );
    assert_eq!(http().delete(&url).send().await.expect("answer").status(), 204);
    assert_eq!(
        token_request(&running, "common", &refresh_form(&rt)).await.status,
        200
    );
    let bad = http()
        .post(&url)
        .json(&json!({"failure": "bored"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(bad.status(), 400);
    let revoke = http()
        .post(format!("{control}/users/{}/revoke-refresh-tokens", user.user_id))
        .send()
        .await
        .expect("answer");
    assert_eq!(revoke.status(), 204);
    assert_eq!(
        entra_error(&token_request(&running, "common", &refresh_form(&rt)).await).1,
        50173
    );
}

#[tokio::test]
async fn client_credentials_give_an_app_only_token_that_graph_refuses_on_drives() {
    let running = start_sim().await;
    let user = new_user(&running);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", graph_sim::DEFAULT_APP_ID),
        ("client_secret", graph_sim::DEFAULT_CLIENT_SECRET),
        ("scope", "https://graph.microsoft.com/.default"),
    ];

    let answer = token_request(&running, &user.tenant_id, &form).await;

    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.get("refresh_token").is_none());
    let graph = Graph::new(&running, answer.body["access_token"].as_str().expect("at"));
    let (status, body) = graph.call(Method::GET, "/me/drive", None).await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body).1,
        "/me request is only valid with delegated authentication flow."
    );
    let (status, _) = graph
        .call(Method::GET, &format!("/drives/{}", user.drive_id), None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = graph
        .create(subscription_body(
            &running,
            "me/drive/root",
            "https://example.com/hook",
            60,
        ))
        .await;
    assert_eq!(status, 400);
    let wrong_scope = token_request(
        &running,
        &user.tenant_id,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", graph_sim::DEFAULT_APP_ID),
            ("client_secret", graph_sim::DEFAULT_CLIENT_SECRET),
            ("scope", "Files.Read.All"),
        ],
    )
    .await;
    assert_eq!(entra_error(&wrong_scope).1, 1002012);
    let common = token_request(&running, "common", &form).await;
    assert_eq!(entra_error(&common).0, "invalid_request");
    assert_eq!(
        running.sim().counters().token_requests.get("client_credentials"),
        Some(&3)
    );
}

#[tokio::test]
async fn a_tenant_path_admits_only_its_own_users() {
    let running = start_sim().await;
    let sim = running.sim();
    let alice = new_user(&running);
    let bob = new_user(&running);
    let personal = sim
        .create_user(graph_sim::NewUser {
            tenant_id: Some(graph_sim::CONSUMER_TENANT_ID.into()),
            ..Default::default()
        })
        .expect("personal account");
    let alice_token = api_token(&running, ApiToken::new(&alice.user_id));
    let personal_token = api_token(&running, ApiToken::new(&personal.user_id));

    let wrong_tenant = token_request(&running, &bob.tenant_id, &obo_form(&alice_token, SCOPES)).await;
    assert_eq!(entra_error(&wrong_tenant).1, 50020);
    assert_eq!(
        token_request(&running, "common", &obo_form(&alice_token, SCOPES))
            .await
            .status,
        200
    );
    assert_eq!(
        token_request(&running, "organizations", &obo_form(&alice_token, SCOPES))
            .await
            .status,
        200
    );
    assert_eq!(
        entra_error(&token_request(&running, "consumers", &obo_form(&alice_token, SCOPES)).await).1,
        50020
    );
    assert_eq!(
        token_request(&running, "consumers", &obo_form(&personal_token, SCOPES))
            .await
            .status,
        200
    );
    assert_eq!(
        entra_error(&token_request(&running, "organizations", &obo_form(&personal_token, SCOPES)).await).1,
        50020
    );
}

#[tokio::test]
async fn a_registered_app_authenticates_with_its_own_secret_and_audience() {
    let running = start_sim().await;
    let user = new_user(&running);
    let registered: Value = http()
        .post(format!("{}/apps", running.control_url()))
        .json(&json!({
            "client_id": "33333333-3333-3333-3333-333333333333",
            "client_secret": "s3cret",
            "app_id_uri": "api://graphfeed.example",
        }))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(registered["api_scope"], "access_as_user");
    let assertion = api_token(
        &running,
        ApiToken::new(&user.user_id)
            .app("33333333-3333-3333-3333-333333333333")
            .audience(Audience::AppIdUri),
    );
    assert_eq!(
        running
            .sim()
            .mint_api_token(&ApiToken::new(&user.user_id).app("api://graphfeed.example"))
            .expect("by URI")
            .claims["aud"],
        "33333333-3333-3333-3333-333333333333"
    );

    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("client_id", "33333333-3333-3333-3333-333333333333"),
        ("client_secret", "s3cret"),
        ("assertion", assertion.as_str()),
        ("scope", SCOPES),
        ("requested_token_use", "on_behalf_of"),
    ];
    let answer = token_request(&running, &user.tenant_id, &form).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let for_default = token_request(&running, &user.tenant_id, &obo_form(&assertion, SCOPES)).await;
    assert_eq!(
        entra_error(&for_default).1,
        500131,
        "the default app is not the audience"
    );
    let apps: Value = http()
        .get(format!("{}/apps", running.control_url()))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(apps["value"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn the_correlation_id_echoes_client_request_id() {
    let running = start_sim().await;
    let correlation = "0c1d2e3f-4a5b-4c6d-8e9f-a0b1c2d3e4f5";

    let answer = token_request_with(
        &running,
        "common",
        &[("grant_type", "refresh_token")],
        |request| request.header("client-request-id", correlation),
    )
    .await;

    assert_eq!(answer.body["correlation_id"], correlation);
    assert_eq!(answer.header("x-ms-request-id"), answer.body["trace_id"].as_str());
}

#[tokio::test]
async fn a_directly_issued_refresh_token_works_in_the_refresh_grant() {
    let running = start_sim().await;
    let user = new_user(&running);
    let direct = running
        .sim()
        .issue_refresh_token(&user.user_id, None, None)
        .expect("refresh token");
    let over_http = control_call(
        &running,
        Method::POST,
        &format!("/users/{}/refresh-token", user.user_id),
        Some(json!({"scope": "offline_access Files.Read.All"})),
    )
    .await;
    assert_eq!(over_http.status, 201, "{}", over_http.body);

    for refresh_token in [
        direct.as_str(),
        over_http.body["refresh_token"].as_str().expect("token"),
    ] {
        let answer = token_request(&running, &user.tenant_id, &refresh_form(refresh_token)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let graph_token = answer.body["access_token"].as_str().expect("access token");
        let (status, drive) = Graph::new(&running, graph_token)
            .call(Method::GET, "/me/drive", None)
            .await;
        assert_eq!((status.as_u16(), &drive["id"]), (200, &json!(user.drive_id)));
    }
    let unknown_user = control_call(&running, Method::POST, "/users/nobody/refresh-token", None).await;
    assert_eq!(unknown_user.status, 404);
    let unregistered =
        running
            .sim()
            .issue_refresh_token(&user.user_id, Some("11111111-2222-3333-4444-555555555555"), None);
    assert!(
        matches!(unregistered, Err(graph_sim::SimError::NotFound(_))),
        "{unregistered:?}"
    );
}
