//! The connect samples in `events/` carry a token for the local stack's sample user, signed by
//! graph-sim's fixed development key, valid for years: `make local` creates that user, so
//! `cargo lambda invoke connect --data-file events/connect-post.json` connects it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use local_stack::{SAMPLE_TENANT_ID, SAMPLE_USER_ID};

/// (method, path, file, text): the user routes' samples.
const SAMPLES: [(&str, &str, &str, &str); 4] = [
    (
        "POST",
        "/connect",
        "connect-post.json",
        include_str!("../../events/connect-post.json"),
    ),
    (
        "GET",
        "/connect",
        "connect-get.json",
        include_str!("../../events/connect-get.json"),
    ),
    (
        "DELETE",
        "/connect",
        "connect-delete.json",
        include_str!("../../events/connect-delete.json"),
    ),
    (
        "GET",
        "/changes",
        "changes-get.json",
        include_str!("../../events/changes-get.json"),
    ),
];
const LOCAL_SIM: &str = "http://127.0.0.1:3001";

#[test]
fn the_connect_samples_carry_a_token_that_verifies_for_years_under_the_dev_key() {
    let public = include_bytes!("../../dev/graph-sim/keys/dev-signing-key.pub.pem");
    let key = DecodingKey::from_rsa_pem(public).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[graph_sim::DEFAULT_APP_ID]);
    validation.set_issuer(&[format!("{LOCAL_SIM}/{SAMPLE_TENANT_ID}/v2.0")]);
    for (method, path, name, text) in SAMPLES {
        let event: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(event["requestContext"]["http"]["method"], method, "{name}");
        assert_eq!(event["rawPath"], path, "{name}");
        assert_eq!(event["routeKey"], format!("{method} {path}"), "{name}");
        let bearer = event["headers"]["authorization"]
            .as_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap();
        let token = jsonwebtoken::decode::<serde_json::Value>(bearer, &key, &validation).unwrap();
        assert_eq!(token.claims["tid"], SAMPLE_TENANT_ID, "{name}");
        assert_eq!(token.claims["oid"], SAMPLE_USER_ID, "{name}");
        assert_eq!(token.claims["scp"], "access_as_user", "{name}");
        let years_left =
            (token.claims["exp"].as_i64().unwrap() - chrono::Utc::now().timestamp()) / (365 * 24 * 3600);
        assert!(years_left >= 5, "{name}: the sample token expires too soon");
    }
}

/// Rewrites the samples (run by hand: `cargo test -p graphfeed-tests --test samples -- --ignored`).
#[tokio::test]
#[ignore = "writes events/connect-*.json"]
async fn regenerate_connect_samples() {
    let config = graph_sim::SimConfig {
        public_url: Some(LOCAL_SIM.into()),
        ..Default::default()
    };
    let sim = graph_sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    local_stack::create_sample_user(&sim.sim()).unwrap();
    let token = sim
        .sim()
        .mint_api_token(&graph_sim::ApiToken::new(SAMPLE_USER_ID).lifetime(chrono::Duration::days(3650)))
        .unwrap()
        .token;
    for (method, path, name, _) in SAMPLES {
        let query: serde_json::Map<String, serde_json::Value> = if path == "/changes" {
            [("after", "0"), ("limit", "100")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect()
        } else {
            serde_json::Map::new()
        };
        let raw_query = query
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .collect::<Vec<_>>()
            .join("&");
        let mut event = serde_json::json!({
            "version": "2.0",
            "routeKey": format!("{method} {path}"),
            "rawPath": path,
            "rawQueryString": raw_query,
            "headers": {
                "accept": "application/json",
                "authorization": format!("Bearer {token}"),
                "host": "127.0.0.1:3000",
                "user-agent": "graphfeed-client/0.1.0",
                "x-forwarded-proto": "http"
            },
            "requestContext": {
                "accountId": "123456789012", "apiId": "abc123def4", "domainName": "127.0.0.1:3000", "domainPrefix": "127",
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "graphfeed-client/0.1.0"},
                "requestId": "Cn3cTy0AAAAEXAMPLE=", "routeKey": format!("{method} {path}"), "stage": "$default",
                "time": "22/Nov/2026:10:00:00 +0000", "timeEpoch": 1795341600000u64
            },
            "isBase64Encoded": false
        });
        if !query.is_empty() {
            event["queryStringParameters"] = query.into();
        }
        let file = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::write(file, serde_json::to_string_pretty(&event).unwrap() + "\n").unwrap();
    }
}
