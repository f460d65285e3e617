//! Tenants (business and personal side by side, the consumer tenant) and `delta?token=latest`.

mod support;

use graph_sim::{ApiToken, DeltaToken, NewTenant, NewUser};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn a_business_and_a_personal_tenant_coexist_with_their_own_drives_and_tokens() {
    let running = start_sim().await;
    let sim = running.sim();
    let business = sim
        .create_tenant(NewTenant {
            tenant_id: None,
            business: true,
        })
        .expect("business tenant");
    let personal = sim.create_tenant(NewTenant::default()).expect("personal tenant");

    let worker = sim
        .create_user(NewUser {
            tenant_id: Some(business.id.clone()),
            ..Default::default()
        })
        .expect("business user");
    let home = sim
        .create_user(NewUser {
            tenant_id: Some(personal.id.clone()),
            user_principal_name: Some("home@example.com".into()),
            ..Default::default()
        })
        .expect("personal user");

    assert!(worker.business && worker.drive_id.starts_with("b!"));
    assert!(!home.business && home.drive_id.len() == 16);
    assert_eq!(home.user_principal_name, "home@example.com");
    let (status, drive) = Graph::new(&running, &worker.access_token)
        .call(Method::GET, "/me/drive", None)
        .await;
    assert_eq!(
        (status.as_u16(), drive["driveType"].as_str()),
        (200, Some("business"))
    );
    let (status, _) = Graph::new(&running, &worker.access_token)
        .call(Method::GET, &format!("/drives/{}", home.drive_id), None)
        .await;
    assert_eq!(
        status.as_u16(),
        403,
        "a user of one tenant cannot read another's drive"
    );
    let worker_token = sim
        .mint_api_token(&ApiToken::new(&worker.user_id))
        .expect("token");
    let home_token = sim.mint_api_token(&ApiToken::new(&home.user_id)).expect("token");
    assert_eq!(worker_token.claims["tid"], business.id);
    assert_eq!(home_token.claims["tid"], personal.id);
    assert_eq!(home_token.claims["iss"], sim.issuer_v2(&personal.id));
}

#[tokio::test]
async fn creating_a_tenant_is_idempotent_for_its_kind_and_conflicts_across_kinds() {
    let running = start_sim().await;
    let control = running.control_url();
    let id = "44444444-4444-4444-4444-444444444444";

    let first = http()
        .post(format!("{control}/tenants"))
        .json(&json!({"tenant_id": id, "business": true}))
        .send()
        .await
        .expect("answer");
    assert_eq!(first.status(), 201);
    assert_eq!(
        first.json::<Value>().await.expect("json"),
        json!({"id": id, "business": true})
    );
    let again = http()
        .post(format!("{control}/tenants"))
        .json(&json!({"tenant_id": id, "business": true}))
        .send()
        .await
        .expect("answer");
    assert_eq!(again.status(), 201);
    let other_kind = http()
        .post(format!("{control}/tenants"))
        .json(&json!({"tenant_id": id}))
        .send()
        .await
        .expect("answer");
    assert_eq!(other_kind.status(), 409);
}

#[tokio::test]
async fn the_consumer_tenant_holds_personal_accounts_only() {
    let running = start_sim().await;
    let sim = running.sim();

    let personal = sim
        .create_user(NewUser {
            tenant_id: Some(graph_sim::CONSUMER_TENANT_ID.into()),
            ..Default::default()
        })
        .expect("personal account");
    let refused = sim.create_user(NewUser {
        tenant_id: Some(graph_sim::CONSUMER_TENANT_ID.into()),
        business: Some(true),
        ..Default::default()
    });

    assert!(!personal.business);
    assert!(personal.user_principal_name.ends_with("@outlook.com"));
    assert!(matches!(refused, Err(graph_sim::SimError::Conflict(_))));
    assert!(
        sim.create_tenant(NewTenant {
            tenant_id: Some(graph_sim::CONSUMER_TENANT_ID.into()),
            business: true,
        })
        .is_err()
    );
}

#[tokio::test]
async fn delta_with_token_latest_gives_an_empty_value_and_a_delta_link() {
    let running = start_sim().await;
    let sim = running.sim();
    let user = sim
        .create_user(NewUser {
            business: Some(true),
            ..Default::default()
        })
        .expect("user");
    let graph = Graph::new(&running, &user.access_token);

    let (status, body) = graph
        .call(Method::GET, "/me/drive/root/delta?token=latest", None)
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], json!([]));
    assert!(body.get("@odata.nextLink").is_none());
    let link = body["@odata.deltaLink"].as_str().expect("deltaLink");
    let prefix = format!(
        "{}/drives/{}/root/delta?token=",
        running.graph_base_url(),
        user.drive_id
    );
    assert!(link.starts_with(&prefix), "{link}");
    let token = DeltaToken::decode(&link[prefix.len()..]).expect("the simulator's own token");
    let last_seq = sim
        .journal(&user.drive_id)
        .expect("journal")
        .last()
        .map(|entry| entry.seq);
    assert_eq!(Some(token.seq), last_seq);
    assert_eq!(token.drive_id, user.drive_id);

    sim.create_item(
        &user.drive_id,
        &graph_sim::NewItem {
            name: "a.txt".into(),
            size: 1,
            ..Default::default()
        },
    )
    .expect("item");
    let (_, by_drive) = graph
        .call(
            Method::GET,
            &format!("/drives/{}/root/delta?token=latest", user.drive_id),
            None,
        )
        .await;
    let later = by_drive["@odata.deltaLink"].as_str().expect("deltaLink");
    let later = DeltaToken::decode(&later[prefix.len()..]).expect("token");
    assert_eq!(later.seq, token.seq + 1, "the position moved with the journal");
    assert_eq!(
        sim.counters().graph_calls.get("GET /v1.0/me/drive/root/delta"),
        Some(&1)
    );
}

#[tokio::test]
async fn delta_on_another_users_drive_is_refused() {
    let running = start_sim().await;
    let user = new_user(&running);
    let other = new_user(&running);
    let graph = Graph::new(&running, &user.access_token);

    let (status, body) = graph.call(Method::GET, "/me/drive/root/delta", None).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    let (status, _) = graph
        .call(
            Method::GET,
            &format!("/drives/{}/root/delta?token=latest", other.drive_id),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 403);
}

#[tokio::test]
async fn a_configured_public_url_names_issuers_and_delta_links() {
    let running =
        start_sim_with(|config| config.public_url = Some("http://graph-sim.local:8790/".into())).await;
    let user = new_user(&running);

    assert_eq!(running.authority_host(), "http://graph-sim.local:8790");
    assert_eq!(running.graph_base_url(), "http://graph-sim.local:8790/v1.0");
    let minted = running
        .sim()
        .mint_api_token(&ApiToken::new(&user.user_id))
        .expect("token");
    assert_eq!(
        minted.claims["iss"],
        format!("http://graph-sim.local:8790/{}/v2.0", user.tenant_id)
    );
}
