//! Writing files through Graph (graph-protocol.md §9): simple uploads, upload sessions and their
//! upload URLs, with the fragment rules, conflicts, resumption and expiry.

mod support;

use aws_lc_rs::digest;
use reqwest::Method;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const KIB320: usize = 327_680;
const MIB: usize = 1024 * 1024;

/// `len` bytes that differ from file to file (`seed`) and along the file.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|index| (index % 251) as u8 ^ seed.wrapping_mul(37) ^ ((index / 251) % 256) as u8)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect()
}

fn text<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {body}"))
}

fn inner_code(body: &Value) -> Option<&str> {
    body["error"]["innerError"]["code"].as_str()
}

/// `PUT {graph}{path}` with a raw body, as `user`.
async fn put(
    running: &graph_sim::RunningSim,
    user: &graph_sim::CreatedUser,
    path: &str,
    body: Vec<u8>,
) -> Answer {
    send_bytes(
        Method::PUT,
        &format!("{}{path}", running.graph_base_url()),
        Some(&user.access_token),
        body,
    )
    .await
}

/// `POST {graph}{path}` (a createUploadSession) with an optional JSON body, as `user`.
async fn create_session(
    running: &graph_sim::RunningSim,
    user: &graph_sim::CreatedUser,
    path: &str,
    body: Option<Value>,
) -> String {
    let answer = send(
        Method::POST,
        &format!("{}{path}", running.graph_base_url()),
        Some(&user.access_token),
        body,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["nextExpectedRanges"], json!(["0-"]));
    let url = text(&answer.body, "uploadUrl").to_owned();
    assert!(
        url.starts_with(&format!("{}/_upload/", running.authority_host())),
        "{url}"
    );
    url
}

/// `PUT {uploadUrl}` with `Content-Range: bytes {start}-{end}/{total}` and no Authorization.
async fn fragment(url: &str, start: usize, bytes: &[u8], total: usize) -> Answer {
    let end = start + bytes.len() - 1;
    answer_of(
        http()
            .put(url)
            .header("content-range", format!("bytes {start}-{end}/{total}"))
            .body(bytes.to_vec()),
    )
    .await
}

/// Sends `file` in fragments of `chunk` bytes; returns every answer.
async fn upload_all(url: &str, file: &[u8], chunk: usize) -> Vec<Answer> {
    let mut answers = Vec::new();
    for (index, piece) in file.chunks(chunk).enumerate() {
        answers.push(fragment(url, index * chunk, piece, file.len()).await);
    }
    answers
}

/// A request written by hand on a socket, for what reqwest will not send: a body shorter than its
/// Content-Length (`send` bytes of it, then, with `close`, the write side closed). Returns the
/// status line's code, if the server answered within 5 s.
async fn raw_put(url: &str, headers: &[(&str, String)], send: &[u8], close: bool) -> Option<u16> {
    let url = url::Url::parse(url).expect("url");
    let address = format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port_or_known_default().expect("port")
    );
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let mut head = format!(
        "PUT {} HTTP/1.1\r\nHost: {}\r\n",
        url.path(),
        url.host_str().expect("host")
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(send).await.expect("body");
    if close {
        stream.shutdown().await.expect("close the write side");
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
}

#[tokio::test]
async fn a_simple_upload_creates_a_file_that_delta_and_change_notifications_see() {
    let running = start_sim().await;
    let user = new_user(&running);
    let receiver = Receiver::start().await;
    let (status, _) = Graph::new(&running, &user.access_token)
        .create(subscription_body(
            &running,
            "me/drive/root",
            &receiver.url("/hook"),
            60,
        ))
        .await;
    assert_eq!(status, 201);
    let latest = send(
        Method::GET,
        &format!("{}/me/drive/root/delta?token=latest", running.graph_base_url()),
        Some(&user.access_token),
        None,
    )
    .await;
    let body = b"hello, graph".to_vec();

    let created = put(
        &running,
        &user,
        "/me/drive/root:/hello.txt:/content",
        body.clone(),
    )
    .await;

    assert_eq!(created.status, 201, "{}", created.body);
    let item = &created.body;
    assert_eq!(
        (item["name"].as_str(), item["size"].as_u64()),
        (Some("hello.txt"), Some(12))
    );
    assert_eq!(item["file"]["hashes"]["sha256Hash"], sha256_hex(&body));
    assert_eq!(item["parentReference"]["id"], json!(user.root_id));
    assert!(created.header("request-id").is_some());
    receiver.wait_for_notifications(1).await;
    let changes = delta_walk(&user.access_token, text(&latest.body, "@odata.deltaLink")).await;
    assert!(
        changes.ids().contains(&text(item, "id").to_owned()),
        "{:?}",
        changes.ids()
    );
    let kept = running
        .sim()
        .item_by_path(&user.drive_id, "/HELLO.txt")
        .expect("by path");
    assert_eq!((kept.size, kept.sha256), (12, Some(sha256_hex(&body))));
    let counters = running.sim().counters();
    assert_eq!((counters.simple_uploads, counters.upload_bytes_accepted), (1, 12));
}

#[tokio::test]
async fn a_simple_upload_replaces_by_default_and_fails_or_renames_when_asked() {
    let running = start_sim().await;
    let user = new_user(&running);
    let first = put(&running, &user, "/me/drive/root:/a.txt:/content", b"one".to_vec()).await;
    let id = text(&first.body, "id").to_owned();

    let replaced = put(
        &running,
        &user,
        "/me/drive/root:/A.TXT:/content",
        b"two!".to_vec(),
    )
    .await;
    let failed = put(
        &running,
        &user,
        "/me/drive/root:/a.txt:/content?@microsoft.graph.conflictBehavior=fail",
        b"three".to_vec(),
    )
    .await;
    let renamed = put(
        &running,
        &user,
        "/me/drive/root:/a.txt:/content?@microsoft.graph.conflictBehavior=rename",
        b"four".to_vec(),
    )
    .await;
    let by_id = put(
        &running,
        &user,
        &format!("/me/drive/items/{id}/content"),
        b"five5".to_vec(),
    )
    .await;

    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(replaced.body["id"], json!(id));
    assert_eq!(replaced.body["size"], 4);
    assert_ne!(replaced.body["eTag"], first.body["eTag"]);
    assert_ne!(replaced.body["cTag"], first.body["cTag"]);
    assert_eq!(failed.status, 409);
    assert_eq!(error_of(&failed.body).0, "nameAlreadyExists");
    assert_eq!(renamed.status, 201);
    assert_eq!(renamed.body["name"], "a 1.txt");
    assert_eq!((by_id.status, &by_id.body["size"]), (200, &json!(5)));
    assert_eq!(by_id.body["file"]["hashes"]["sha256Hash"], sha256_hex(b"five5"));
}

#[tokio::test]
async fn every_address_form_reaches_the_same_drive() {
    let running = start_sim().await;
    let user = new_user(&running);
    let docs = running
        .sim()
        .create_item(
            &user.drive_id,
            &graph_sim::NewItem {
                name: "Docs".into(),
                folder: true,
                ..Default::default()
            },
        )
        .expect("folder");
    let drive = &user.drive_id;

    let in_folder = put(
        &running,
        &user,
        "/me/drive/root:/Docs/a.txt:/content",
        b"a".to_vec(),
    )
    .await;
    let by_parent = put(
        &running,
        &user,
        &format!("/me/drive/items/{}:/b.txt:/content", docs.id),
        b"b".to_vec(),
    )
    .await;
    let by_drive = put(
        &running,
        &user,
        &format!("/drives/{drive}/root:/Docs/c.txt:/content"),
        b"c".to_vec(),
    )
    .await;
    let by_drive_parent = put(
        &running,
        &user,
        &format!("/drives/{drive}/items/{}:/d.txt:/content", docs.id),
        b"d".to_vec(),
    )
    .await;
    let by_path = send(
        Method::GET,
        &format!("{}/me/drive/root:/docs/B.txt", running.graph_base_url()),
        Some(&user.access_token),
        None,
    )
    .await;
    let control = control_call(
        &running,
        Method::GET,
        &format!("/drives/{drive}/by-path?path=Docs/d.txt"),
        None,
    )
    .await;

    for answer in [&in_folder, &by_parent, &by_drive, &by_drive_parent] {
        assert_eq!(answer.status, 201, "{}", answer.body);
        assert_eq!(answer.body["parentReference"]["id"], json!(docs.id));
    }
    assert_eq!(
        (by_path.status, &by_path.body["id"]),
        (200, &by_parent.body["id"])
    );
    assert_eq!(control.body["id"], by_drive_parent.body["id"]);
    assert_eq!(control.body["sha256"], sha256_hex(b"d"));
    let (status, folder) = Graph::new(&running, &user.access_token)
        .call(Method::GET, &format!("/me/drive/items/{}", docs.id), None)
        .await;
    assert_eq!(
        (status.as_u16(), &folder["folder"]["childCount"]),
        (200, &json!(4))
    );
}

#[tokio::test]
async fn a_simple_upload_over_4_mib_is_413_and_a_missing_folder_404() {
    let running = start_sim().await;
    let user = new_user(&running);

    let too_large = put(
        &running,
        &user,
        "/me/drive/root:/big.bin:/content",
        content(4 * MIB + 1, 1),
    )
    .await;
    let just_fits = put(
        &running,
        &user,
        "/me/drive/root:/fits.bin:/content",
        content(4 * MIB, 1),
    )
    .await;
    let no_folder = put(
        &running,
        &user,
        "/me/drive/root:/Nope/a.txt:/content",
        b"a".to_vec(),
    )
    .await;
    let other_drive = new_user(&running);
    let not_mine = put(
        &running,
        &user,
        &format!("/drives/{}/root:/a.txt:/content", other_drive.drive_id),
        b"a".to_vec(),
    )
    .await;

    assert_eq!(too_large.status, 413, "{}", too_large.body);
    assert_eq!(error_of(&too_large.body).0, "invalidRequest");
    assert_eq!(inner_code(&too_large.body), Some("maxStreamSizeExceeded"));
    assert_eq!(just_fits.status, 201);
    assert_eq!(no_folder.status, 404);
    assert_eq!(error_of(&no_folder.body).0, "itemNotFound");
    assert_eq!(not_mine.status, 403);
    assert_eq!(running.sim().counters().simple_uploads, 1);
}

#[tokio::test]
async fn an_upload_session_takes_25_mib_in_fragments_and_commits_it_with_its_hash() {
    let running = start_sim().await;
    let user = new_user(&running);
    let file = content(25 * MIB, 7);
    let url = create_session(
        &running,
        &user,
        "/me/drive/root:/video.mp4:/createUploadSession",
        None,
    )
    .await;

    let answers = upload_all(&url, &file, 10 * MIB).await;

    let statuses: Vec<u16> = answers.iter().map(|answer| answer.status).collect();
    assert_eq!(statuses, vec![202, 202, 201], "{}", answers[2].body);
    assert_eq!(
        answers[0].body["nextExpectedRanges"],
        json!([format!("{}-", 10 * MIB)])
    );
    assert!(answers[0].body["expirationDateTime"].is_string());
    let item = &answers[2].body;
    assert_eq!(
        (item["name"].as_str(), item["size"].as_u64()),
        (Some("video.mp4"), Some(25 * MIB as u64))
    );
    assert_eq!(item["file"]["hashes"]["sha256Hash"], sha256_hex(&file));
    let gone = send(Method::GET, &url, None, None).await;
    assert_eq!(gone.status, 404);
    assert_eq!(inner_code(&gone.body), Some("uploadSessionNotFound"));
    let counters = running.sim().counters();
    assert_eq!(
        (
            counters.upload_sessions_created,
            counters.upload_fragments_accepted,
            counters.upload_sessions_completed,
            counters.upload_bytes_accepted
        ),
        (1, 3, 1, 25 * MIB as u64)
    );
}

#[tokio::test]
async fn fragments_that_overlap_skip_ahead_change_the_total_or_are_misaligned_move_nothing() {
    let running = start_sim().await;
    let user = new_user(&running);
    let file = content(3 * KIB320, 3);
    let url = create_session(
        &running,
        &user,
        "/me/drive/root:/a.bin:/createUploadSession",
        Some(json!({"item": {"@microsoft.graph.conflictBehavior": "rename", "fileSize": file.len()}})),
    )
    .await;
    assert_eq!(fragment(&url, 0, &file[..KIB320], file.len()).await.status, 202);

    let overlap = fragment(&url, 0, &file[..KIB320], file.len()).await;
    let out_of_order = fragment(&url, 2 * KIB320, &file[2 * KIB320..], file.len()).await;
    let other_total = fragment(&url, KIB320, &file[KIB320..2 * KIB320], file.len() + 1).await;
    let misaligned = fragment(&url, KIB320, &file[KIB320..KIB320 + 1000], file.len()).await;
    let with_token = answer_of(
        http()
            .put(&url)
            .bearer_auth(&user.access_token)
            .header(
                "content-range",
                format!("bytes {KIB320}-{}/{}", 2 * KIB320 - 1, file.len()),
            )
            .body(file[KIB320..2 * KIB320].to_vec()),
    )
    .await;
    let status = send(Method::GET, &url, None, None).await;

    assert_eq!(
        (overlap.status, inner_code(&overlap.body)),
        (416, Some("fragmentOverlap"))
    );
    assert_eq!(error_of(&overlap.body).0, "invalidRange");
    assert_eq!(
        (out_of_order.status, inner_code(&out_of_order.body)),
        (416, Some("fragmentOutOfOrder"))
    );
    assert_eq!(
        (other_total.status, inner_code(&other_total.body)),
        (400, Some("fragmentLengthMismatch"))
    );
    assert_eq!(
        (misaligned.status, error_of(&misaligned.body).0.as_str()),
        (400, "invalidRange")
    );
    assert_eq!(with_token.status, 401);
    assert_eq!(error_of(&with_token.body).0, "unauthenticated");
    assert_eq!(status.body["nextExpectedRanges"], json!([format!("{KIB320}-")]));
    assert_eq!(running.sim().counters().upload_fragments_rejected, 5);
    let rest = upload_all(&url, &file, KIB320).await;
    assert_eq!(rest[0].status, 416, "the first fragment again overlaps");
    assert_eq!((rest[1].status, rest[2].status), (202, 201));
}

#[tokio::test]
async fn an_interrupted_fragment_keeps_nothing_and_the_upload_resumes_where_get_says() {
    let running = start_sim().await;
    let user = new_user(&running);
    let file = content(2 * KIB320, 9);
    let url = create_session(
        &running,
        &user,
        "/me/drive/root:/b.bin:/createUploadSession",
        None,
    )
    .await;
    let headers = [
        ("Content-Length", KIB320.to_string()),
        ("Content-Range", format!("bytes 0-{}/{}", KIB320 - 1, file.len())),
    ];

    raw_put(&url, &headers, &file[..1000], true).await;
    eventually("the broken fragment is counted", || {
        running.sim().counters().upload_fragments_rejected == 1
    })
    .await;
    let status = send(Method::GET, &url, None, None).await;
    let oversized = raw_put(
        &url,
        &[
            ("Content-Length", (60 * MIB).to_string()),
            ("Content-Range", format!("bytes 0-{}/{}", 60 * MIB - 1, 61 * MIB)),
        ],
        &[],
        false,
    )
    .await;

    assert_eq!(status.status, 200);
    assert_eq!(status.body["nextExpectedRanges"], json!(["0-"]));
    assert_eq!(oversized, Some(413));
    let answers = upload_all(&url, &file, KIB320).await;
    assert_eq!((answers[0].status, answers[1].status), (202, 201));
    assert_eq!(answers[1].body["file"]["hashes"]["sha256Hash"], sha256_hex(&file));
}

#[tokio::test]
async fn a_cancelled_expired_or_dropped_session_is_404_on_its_url() {
    let running = start_sim().await;
    let user = new_user(&running);
    let path = "/me/drive/root:/c.bin:/createUploadSession";
    let cancelled = create_session(&running, &user, path, None).await;
    let expired = create_session(&running, &user, path, None).await;

    let cancel = send(Method::DELETE, &cancelled, None, None).await;
    let listed = control_call(&running, Method::GET, "/uploads", None).await;
    running.sim().advance(chrono::Duration::hours(24));
    let mut later = user.clone();
    later.access_token = running
        .sim()
        .issue_token(&user.user_id, None)
        .expect("a fresh token")
        .access_token;
    let dropped = create_session(&running, &later, path, None).await;
    let drop_id = dropped.rsplit('/').next().expect("id").to_owned();
    let drop = control_call(&running, Method::DELETE, &format!("/uploads/{drop_id}"), None).await;

    assert_eq!(cancel.status, 204);
    assert_eq!(listed.body["value"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed.body["value"][0]["upload_url"], json!(expired));
    assert_eq!(drop.status, 204);
    for url in [&cancelled, &expired, &dropped] {
        let answer = fragment(url, 0, b"x", 1).await;
        assert_eq!(answer.status, 404, "{url}");
        assert_eq!(error_of(&answer.body).0, "itemNotFound");
    }
    assert!(running.sim().upload_sessions().is_empty());
}

#[tokio::test]
async fn a_name_taken_at_the_last_fragment_is_409_and_a_source_url_commit_renames() {
    let running = start_sim().await;
    let user = new_user(&running);
    put(
        &running,
        &user,
        "/me/drive/root:/report.pdf:/content",
        b"old".to_vec(),
    )
    .await;
    let url = create_session(
        &running,
        &user,
        "/me/drive/root:/report.pdf:/createUploadSession",
        None,
    )
    .await;

    let last = fragment(&url, 0, b"new content", 11).await;
    let status = send(Method::GET, &url, None, None).await;
    let committed = send(
        Method::PUT,
        &format!("{}/me/drive/root:/report.pdf", running.graph_base_url()),
        Some(&user.access_token),
        Some(json!({
            "@microsoft.graph.conflictBehavior": "rename",
            "@microsoft.graph.sourceUrl": url,
        })),
    )
    .await;

    assert_eq!(last.status, 409, "{}", last.body);
    assert_eq!(error_of(&last.body).0, "nameAlreadyExists");
    assert_eq!(status.body["nextExpectedRanges"], json!([]));
    assert_eq!(committed.status, 201, "{}", committed.body);
    assert_eq!(committed.body["name"], "report 1.pdf");
    assert_eq!(committed.body["size"], 11);
    assert_eq!(send(Method::GET, &url, None, None).await.status, 404);
}

#[tokio::test]
async fn defer_commit_waits_for_an_empty_post_and_a_session_can_replace_an_existing_file() {
    let running = start_sim().await;
    let user = new_user(&running);
    let deferred = create_session(
        &running,
        &user,
        "/me/drive/root:/later.txt:/createUploadSession",
        Some(json!({"deferCommit": true})),
    )
    .await;

    let last = fragment(&deferred, 0, b"abc", 3).await;
    let before = running.sim().item_by_path(&user.drive_id, "later.txt");
    let commit = answer_of(http().post(&deferred)).await;

    assert_eq!((last.status, &last.body["nextExpectedRanges"]), (202, &json!([])));
    assert!(before.is_err(), "nothing before the commit");
    assert_eq!(commit.status, 201, "{}", commit.body);
    let id = text(&commit.body, "id").to_owned();
    let replace = create_session(
        &running,
        &user,
        &format!("/drives/{}/items/{id}/createUploadSession", user.drive_id),
        None,
    )
    .await;
    let replaced = fragment(&replace, 0, b"abcdef", 6).await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(
        (&replaced.body["id"], &replaced.body["size"]),
        (&json!(id), &json!(6))
    );
}

#[tokio::test]
async fn an_injected_fault_on_the_upload_url_fails_one_fragment_and_a_retry_succeeds() {
    let running = start_sim().await;
    let user = new_user(&running);
    let url = create_session(
        &running,
        &user,
        "/me/drive/root:/d.bin:/createUploadSession",
        None,
    )
    .await;
    running.sim().add_fault(graph_sim::Fault {
        path_prefix: "/_upload/".into(),
        method: Some("PUT".into()),
        status: 503,
        count: 1,
        retry_after: Some(2),
        body: None,
        delay_ms: None,
    });

    let failed = fragment(&url, 0, b"xyz", 3).await;
    let retried = fragment(&url, 0, b"xyz", 3).await;

    assert_eq!((failed.status, failed.header("retry-after")), (503, Some("2")));
    assert_eq!(error_of(&failed.body).0, "serviceNotAvailable");
    assert_eq!(retried.status, 201, "{}", retried.body);
}
