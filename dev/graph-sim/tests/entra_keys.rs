//! Entra's discovery side and the API tokens: OIDC metadata (v1, v2, every tenant form), JWKS
//! with rotation, and minted tokens verified the way graphfeed verifies them (`jsonwebtoken`).

mod support;

use graph_sim::{ApiToken, Audience, Tamper, TokenVersion};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use support::*;

/// The development key's id, as documented in the README.
const DEV_KID: &str = include_str!("../keys/dev-signing-key.kid");

async fn jwks(running: &graph_sim::RunningSim, path: &str) -> JwkSet {
    let answer = get_json(running, path).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_value(answer.body).expect("a JWK set")
}

/// Verifies like graphfeed: key by `kid` from the JWKS, RS256 only, audience and issuer exact,
/// `exp` and `nbf` checked.
fn verify(token: &str, keys: &JwkSet, audience: &str, issuer: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = keys.find(&kid).ok_or_else(|| format!("unknown kid {kid}"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key: {e}"))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_nbf = true;
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("decode: {e}"))
}

#[tokio::test]
async fn v2_metadata_names_the_tenant_issuer_and_the_v2_key_path() {
    let running = start_sim().await;
    let user = new_user(&running);
    let host = running.authority_host();

    let answer = get_json(
        &running,
        &format!("/{}/v2.0/.well-known/openid-configuration", user.tenant_id),
    )
    .await;

    assert_eq!(answer.status, 200);
    let document = answer.body;
    assert_eq!(document["issuer"], format!("{host}/{}/v2.0", user.tenant_id));
    assert_eq!(
        document["jwks_uri"],
        format!("{host}/{}/discovery/v2.0/keys", user.tenant_id)
    );
    assert_eq!(
        document["token_endpoint"],
        format!("{host}/{}/oauth2/v2.0/token", user.tenant_id)
    );
    assert_eq!(
        document["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
}

#[tokio::test]
async fn multi_tenant_metadata_keeps_entras_tenantid_placeholder() {
    let running = start_sim().await;
    let host = running.authority_host();

    for tenant in ["common", "organizations"] {
        let v2 = get_json(
            &running,
            &format!("/{tenant}/v2.0/.well-known/openid-configuration"),
        )
        .await;
        assert_eq!(v2.body["issuer"], format!("{host}/{{tenantid}}/v2.0"));
        assert_eq!(
            v2.body["jwks_uri"],
            format!("{host}/{tenant}/discovery/v2.0/keys")
        );
        let v1 = get_json(&running, &format!("/{tenant}/.well-known/openid-configuration")).await;
        assert_eq!(v1.body["issuer"], "https://sts.windows.net/{tenantid}/");
    }
    let consumers = get_json(&running, "/consumers/v2.0/.well-known/openid-configuration").await;
    assert_eq!(
        consumers.body["issuer"],
        format!("{host}/{}/v2.0", graph_sim::CONSUMER_TENANT_ID)
    );
}

#[tokio::test]
async fn v1_metadata_has_the_sts_windows_net_issuer_and_the_v1_key_path() {
    let running = start_sim().await;
    let user = new_user(&running);

    let answer = get_json(
        &running,
        &format!("/{}/.well-known/openid-configuration", user.tenant_id),
    )
    .await;

    assert_eq!(
        answer.body["issuer"],
        format!("https://sts.windows.net/{}/", user.tenant_id)
    );
    assert_eq!(
        answer.body["jwks_uri"],
        format!("{}/{}/discovery/keys", running.authority_host(), user.tenant_id)
    );
}

#[tokio::test]
async fn a_tenant_segment_the_simulator_cannot_serve_gets_aadsts90002() {
    let running = start_sim().await;

    let answer = get_json(
        &running,
        "/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration",
    )
    .await;

    assert_eq!(answer.status, 400);
    let (error, code, _) = entra_error(&answer);
    assert_eq!((error.as_str(), code), ("invalid_request", 90002));
}

#[tokio::test]
async fn jwks_serves_rsa_signing_keys_with_kid_x5t_and_issuer_on_both_paths() {
    let running = start_sim().await;
    let user = new_user(&running);
    let host = running.authority_host();

    for path in [
        format!("/{}/discovery/v2.0/keys", user.tenant_id),
        format!("/{}/discovery/keys", user.tenant_id),
    ] {
        let answer = get_json(&running, &path).await;
        let key = &answer.body["keys"][0];
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["e"], "AQAB");
        assert_eq!(key["kid"], key["x5t"]);
        assert!(key["n"].as_str().expect("n").len() > 300, "a 2048-bit modulus");
        assert_eq!(key["issuer"], format!("{host}/{}/v2.0", user.tenant_id));
    }
    let common = get_json(&running, "/common/discovery/v2.0/keys").await;
    assert_eq!(
        common.body["keys"][0]["issuer"],
        format!("{host}/{{tenantid}}/v2.0")
    );
}

#[tokio::test]
async fn the_first_signing_key_is_the_documented_development_key() {
    let running = start_sim().await;

    let keys = running.sim().signing_keys();

    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid, DEV_KID.trim());
    assert!(keys[0].current);
    assert_eq!(
        keys[0].public_key_pem,
        include_str!("../keys/dev-signing-key.pub.pem"),
        "the committed public key is the development key's"
    );
}

#[tokio::test]
async fn jwks_rotation_publishes_both_keys_during_the_overlap_and_retiring_removes_the_old_one() {
    let running = start_sim().await;
    let user = new_user(&running);
    let sim = running.sim();
    let path = format!("/{}/discovery/v2.0/keys", user.tenant_id);
    let issuer = sim.issuer_v2(&user.tenant_id);
    let before = sim.mint_api_token(&ApiToken::new(&user.user_id)).expect("token");

    let (status, rotated) = {
        let answer = http()
            .post(format!("{}/keys/rotate", running.control_url()))
            .send()
            .await
            .expect("answer");
        (
            answer.status().as_u16(),
            answer.json::<Value>().await.expect("json"),
        )
    };
    assert_eq!(status, 201);
    let new_kid = rotated["kid"].as_str().expect("kid").to_owned();
    assert_ne!(new_kid, DEV_KID.trim());

    let overlap = jwks(&running, &path).await;
    let kids: Vec<String> = overlap
        .keys
        .iter()
        .filter_map(|key| key.common.key_id.clone())
        .collect();
    assert_eq!(kids, vec![DEV_KID.trim().to_owned(), new_kid.clone()]);
    let after = sim.mint_api_token(&ApiToken::new(&user.user_id)).expect("token");
    assert_eq!(after.header["kid"], new_kid, "new tokens use the new key");
    for token in [&before.token, &after.token] {
        verify(token, &overlap, graph_sim::DEFAULT_APP_ID, &issuer).expect("both verify during the overlap");
    }

    let retired = sim.retire_old_signing_keys();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].kid, DEV_KID.trim());
    let later = jwks(&running, &path).await;
    assert_eq!(later.keys.len(), 1);
    assert!(verify(&before.token, &later, graph_sim::DEFAULT_APP_ID, &issuer).is_err());
    verify(&after.token, &later, graph_sim::DEFAULT_APP_ID, &issuer).expect("the new key stays");
}

#[tokio::test]
async fn metadata_and_jwks_fetches_are_counted() {
    let running = start_sim().await;

    get_json(&running, "/common/v2.0/.well-known/openid-configuration").await;
    get_json(&running, "/common/discovery/v2.0/keys").await;
    get_json(&running, "/common/discovery/keys").await;

    let counters = running.sim().counters();
    assert_eq!(counters.oidc_metadata_fetches, 1);
    assert_eq!(counters.jwks_fetches, 2);
}

#[tokio::test]
async fn a_v2_token_carries_the_v2_issuer_the_client_id_audience_and_version_2() {
    let running = start_sim().await;
    let user = new_user(&running);
    let keys = jwks(&running, "/common/discovery/v2.0/keys").await;
    let now = running.sim().now().timestamp();

    let minted = running
        .sim()
        .mint_api_token(&ApiToken::new(&user.user_id))
        .expect("token");

    let issuer = format!("{}/{}/v2.0", running.authority_host(), user.tenant_id);
    let claims = verify(&minted.token, &keys, graph_sim::DEFAULT_APP_ID, &issuer).expect("verifies");
    assert_eq!(claims["ver"], "2.0");
    assert_eq!(claims["tid"], user.tenant_id);
    assert_eq!(claims["oid"], user.user_id);
    assert_eq!(claims["scp"], "access_as_user");
    assert_eq!(claims["azp"], graph_sim::DEFAULT_CLIENT_APP_ID);
    assert_eq!(claims["preferred_username"], user.user_principal_name);
    assert!(claims["sub"].is_string());
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["nbf"], now);
    assert_eq!(claims["exp"], now + 3600);
    assert_eq!(
        minted.header,
        json!({"typ": "JWT", "alg": "RS256", "kid": DEV_KID.trim()})
    );
    assert_eq!(running.sim().counters().api_tokens_minted, 1);
}

#[tokio::test]
async fn a_v1_token_carries_the_sts_issuer_the_app_id_uri_audience_x5t_and_version_1() {
    let running = start_sim().await;
    let user = new_user(&running);
    let keys = jwks(&running, &format!("/{}/discovery/keys", user.tenant_id)).await;

    let minted = running
        .sim()
        .mint_api_token(
            &ApiToken::new(&user.user_id)
                .v1()
                .scopes(["access_as_user", "other"]),
        )
        .expect("token");

    let issuer = format!("https://sts.windows.net/{}/", user.tenant_id);
    let claims = verify(&minted.token, &keys, graph_sim::DEFAULT_APP_ID_URI, &issuer).expect("verifies");
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["aud"], graph_sim::DEFAULT_APP_ID_URI);
    assert_eq!(claims["appid"], graph_sim::DEFAULT_CLIENT_APP_ID);
    assert_eq!(claims["upn"], user.user_principal_name);
    assert_eq!(claims["scp"], "access_as_user other");
    assert_eq!(minted.header["x5t"], minted.header["kid"]);

    let with_client_id = running
        .sim()
        .mint_api_token(&ApiToken::new(&user.user_id).version(TokenVersion::V1))
        .expect("token");
    assert_eq!(with_client_id.claims["aud"], graph_sim::DEFAULT_APP_ID);
}

#[tokio::test]
async fn each_tampered_token_is_wrong_in_exactly_one_way() {
    let running = start_sim().await;
    let user = new_user(&running);
    let keys = jwks(&running, "/common/discovery/v2.0/keys").await;
    let issuer = running.sim().issuer_v2(&user.tenant_id);
    let sim = running.sim();
    let good = sim.mint_api_token(&ApiToken::new(&user.user_id)).expect("token");

    let cases = [
        (Tamper::UnknownKey, "unknown kid"),
        (Tamper::WrongKey, "decode: InvalidSignature"),
        (
            Tamper::Kid("someone-elses-kid".to_owned()),
            "unknown kid someone-elses-kid",
        ),
        (Tamper::AlgNone, "header"),
        (Tamper::Hs256, "decode: InvalidAlgorithm"),
        (Tamper::BadSignature, "decode: InvalidSignature"),
    ];
    for (tamper, expected) in cases {
        let minted = sim
            .mint_api_token(&ApiToken::new(&user.user_id).tamper(tamper.clone()))
            .expect("token");
        let refused = verify(&minted.token, &keys, graph_sim::DEFAULT_APP_ID, &issuer).expect_err("refused");
        assert!(refused.starts_with(expected), "{tamper:?}: {refused}");
        for claim in ["aud", "iss", "tid", "oid", "scp", "ver"] {
            assert_eq!(
                minted.claims[claim], good.claims[claim],
                "{tamper:?} keeps {claim}"
            );
        }
    }
    let none = sim
        .mint_api_token(&ApiToken::new(&user.user_id).tamper(Tamper::AlgNone))
        .expect("token");
    assert!(none.token.ends_with('.'), "alg none has an empty signature");
    assert_eq!(none.header["alg"], "none");
}

#[tokio::test]
async fn claim_level_variants_fail_the_matching_check_only() {
    let running = start_sim().await;
    let user = new_user(&running);
    let keys = jwks(&running, "/common/discovery/v2.0/keys").await;
    let issuer = running.sim().issuer_v2(&user.tenant_id);
    let sim = running.sim();
    let check = |spec: ApiToken| {
        let minted = sim.mint_api_token(&spec).expect("token");
        verify(&minted.token, &keys, graph_sim::DEFAULT_APP_ID, &issuer)
    };

    assert!(check(ApiToken::new(&user.user_id)).is_ok());
    assert_eq!(
        check(ApiToken::new(&user.user_id).expired()),
        Err("decode: ExpiredSignature".to_owned())
    );
    assert_eq!(
        check(ApiToken::new(&user.user_id).not_before(chrono::Duration::minutes(10))),
        Err("decode: ImmatureSignature".to_owned())
    );
    assert_eq!(
        check(
            ApiToken::new(&user.user_id)
                .audience(Audience::Other("00000003-0000-0000-c000-000000000000".into()))
        ),
        Err("decode: InvalidAudience".to_owned())
    );
    assert_eq!(
        check(ApiToken::new(&user.user_id).issuer("https://evil.example/v2.0")),
        Err("decode: InvalidIssuer".to_owned())
    );
    let no_scope = sim
        .mint_api_token(&ApiToken::new(&user.user_id).scopes(Vec::<String>::new()))
        .expect("token");
    assert!(no_scope.claims.get("scp").is_none());
    let other_tenant = sim
        .mint_api_token(&ApiToken::new(&user.user_id).claim("tid", "not-a-guid"))
        .expect("token");
    assert_eq!(other_tenant.claims["tid"], "not-a-guid");
    assert_eq!(
        other_tenant.claims["iss"], issuer,
        "only the claim asked for changes"
    );
}

#[tokio::test]
async fn the_control_api_mints_api_tokens_and_manages_keys() {
    let running = start_sim().await;
    let user = new_user(&running);
    let control = running.control_url();

    let minted: Value = http()
        .post(format!("{control}/users/{}/api-token", user.user_id))
        .json(
            &json!({"version": "v1", "audience": "app_id_uri", "tamper": "alg_none", "lifetime_seconds": 60}),
        )
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(minted["claims"]["ver"], "1.0");
    assert_eq!(minted["claims"]["aud"], graph_sim::DEFAULT_APP_ID_URI);
    assert_eq!(minted["header"]["alg"], "none");
    assert_eq!(
        minted["claims"]["exp"].as_i64().expect("exp") - minted["claims"]["iat"].as_i64().expect("iat"),
        60
    );
    let plain = http()
        .post(format!("{control}/users/{}/api-token", user.user_id))
        .send()
        .await
        .expect("answer");
    assert_eq!(plain.status(), 200);
    let kid_override: Value = http()
        .post(format!("{control}/users/{}/api-token", user.user_id))
        .json(&json!({"tamper": {"kid": "abc"}, "claims": {"scp": "other"}, "remove_claims": ["oid"]}))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(kid_override["header"]["kid"], "abc");
    assert_eq!(kid_override["claims"]["scp"], "other");
    assert!(kid_override["claims"].get("oid").is_none());
    let unknown_user = http()
        .post(format!("{control}/users/nobody/api-token"))
        .send()
        .await
        .expect("answer");
    assert_eq!(unknown_user.status(), 404);

    let keys: Value = http()
        .get(format!("{control}/keys"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(keys["keys"][0]["kid"], DEV_KID.trim());
    http()
        .post(format!("{control}/keys/rotate"))
        .send()
        .await
        .expect("rotate");
    let retired: Value = http()
        .post(format!("{control}/keys/retire"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(retired["retired"][0]["kid"], DEV_KID.trim());
    assert_eq!(retired["keys"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_reset_brings_back_the_development_key_and_the_default_app() {
    let running = start_sim().await;
    let sim = running.sim();
    sim.rotate_signing_key().expect("rotated");
    sim.retire_old_signing_keys();
    sim.register_app(graph_sim::RegisterApp {
        client_id: "11111111-2222-3333-4444-555555555555".into(),
        client_secret: "s".into(),
        app_id_uri: None,
        api_scope: "access_as_user".into(),
        display_name: None,
    })
    .expect("registered");

    sim.reset();

    let keys = sim.signing_keys();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid, DEV_KID.trim());
    let apps = sim.apps();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].client_id, graph_sim::DEFAULT_APP_ID);
}
