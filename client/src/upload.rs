//! `graphfeed upload`: a local file into the signed-in user's OneDrive (graph-protocol.md §9).
//!
//! - Up to 4 MiB: one simple upload, `PUT {graph}/me/drive/root:/{path}:/content`.
//! - Larger: an upload session (`POST …/root:/{path}:/createUploadSession`), then fragments of a
//!   multiple of 320 KiB (327,680 bytes; 10 MiB by default) sent in order to the upload URL with
//!   `Content-Range` and `Content-Length` and **no** `Authorization` (the URL is pre-authorised;
//!   a bearer token there is refused).
//!
//! Resuming: before the first fragment the session (upload URL, expiry, local path, size, mtime,
//! destination) is saved to `uploads/<hash>.json` (mode 0600: the URL is a credential). The same
//! upload run again, even after the process was killed, asks the upload URL where it stands
//! (`GET`, `nextExpectedRanges`) and sends only what is missing. A session that is gone (404)
//! is forgotten and the upload starts again from byte 0; a local file whose size or mtime changed
//! cancels the old session (`DELETE`) and starts again. A refused fragment (416, 409) re-reads
//! the session's state and continues from there; 429 and 5xx are retried with backoff,
//! honouring `Retry-After`. A name conflict (409 `nameAlreadyExists`) keeps the complete session,
//! so running the command again with `--conflict replace` or `rename` commits it without sending
//! the bytes again (§9.3, `@microsoft.graph.sourceUrl`).

use std::fmt;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::auth::{Resource, Session};
use crate::changes::human_size;
use crate::config::{BaseUrl, Paths};
use crate::console::Console;
use crate::error::Error;
use crate::secure_file;

const MIB: u64 = 1024 * 1024;
/// The largest file sent as one simple upload (OneDrive's documented 4 MB).
pub const SIMPLE_UPLOAD_MAX: u64 = 4 * MIB;
/// Every fragment but the last is a multiple of this (§9.2: 320 KiB).
pub const FRAGMENT_UNIT: u64 = 327_680;
/// Each request must be smaller than 60 MiB (§9.2): the largest multiple of 320 KiB below it.
pub const MAX_FRAGMENT: u64 = (60 * MIB - 1) / FRAGMENT_UNIT * FRAGMENT_UNIT;
const _: () = assert!(MAX_FRAGMENT < 60 * MIB && MAX_FRAGMENT.is_multiple_of(FRAGMENT_UNIT));
/// Tries of one request on 429, 5xx or a dropped connection before giving up.
const ATTEMPTS: u32 = 5;
/// Refused fragments (416/409) in a row answered by re-reading the session before giving up.
const RECOVERIES: u32 = 5;
/// The longest `Retry-After` waited out.
const LONGEST_WAIT: Duration = Duration::from_secs(60);
const SAVED_VERSION: u32 = 1;
const CONFLICT_BEHAVIOR: &str = "@microsoft.graph.conflictBehavior";

/// What to do when the name is taken (`@microsoft.graph.conflictBehavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Conflict {
    /// Refuse: the upload fails and nothing in OneDrive changes.
    #[default]
    Fail,
    /// Overwrite the file in OneDrive.
    Replace,
    /// Keep both: OneDrive gives the new file another name.
    Rename,
}

impl Conflict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Replace => "replace",
            Self::Rename => "rename",
        }
    }
}

/// A fragment length: a multiple of 320 KiB, from 320 KiB to just under 60 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentSize(u64);

impl FragmentSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// `mib` MiB rounded down to a multiple of 320 KiB (`5`, `10`, `1.25` are exact).
    pub fn from_mib(mib: f64) -> Result<Self, String> {
        #[allow(clippy::cast_precision_loss)] // small constants
        let (unit, max) = (FRAGMENT_UNIT as f64, MAX_FRAGMENT as f64);
        if !mib.is_finite() || mib * (MIB as f64) < unit {
            return Err(format!("a fragment is at least 0.3125 MiB (320 KiB); got {mib}"));
        }
        let bytes = mib * (MIB as f64);
        if bytes > max + unit - 1.0 {
            return Err(format!(
                "a fragment must be smaller than 60 MiB (at most {} MiB); got {mib}",
                MAX_FRAGMENT / FRAGMENT_UNIT * 5 / 16
            ));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked above
        let units = (bytes / unit).floor() as u64;
        Ok(Self((units * FRAGMENT_UNIT).min(MAX_FRAGMENT)))
    }
}

impl Default for FragmentSize {
    /// 32 × 320 KiB = 10 MiB (§9.4: 10 MiB on fast links).
    fn default() -> Self {
        Self(32 * FRAGMENT_UNIT)
    }
}

impl FromStr for FragmentSize {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mib: f64 = raw
            .trim()
            .parse()
            .map_err(|_| format!("'{raw}' is not a number of MiB"))?;
        Self::from_mib(mib)
    }
}

impl fmt::Display for FragmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human_size(self.0))
    }
}

/// The fragments from `start` to the end of a `total`-byte file, as inclusive `(first, last)`
/// byte ranges: `size` bytes each, the last one shorter.
pub fn fragments(total: u64, size: FragmentSize, start: u64) -> impl Iterator<Item = (u64, u64)> {
    let step = size.bytes().max(1);
    let mut next = start;
    std::iter::from_fn(move || {
        if next >= total {
            return None;
        }
        let first = next;
        let last = first.saturating_add(step).min(total) - 1;
        next = last + 1;
        Some((first, last))
    })
}

/// Where to continue: the start of the first of `nextExpectedRanges` (`"26214400-"`,
/// `"12345-55232"`), or `None` when nothing is missing.
pub fn next_expected(ranges: &[String]) -> Result<Option<u64>, String> {
    let Some(first) = ranges.first() else {
        return Ok(None);
    };
    let start = first.split('-').next().unwrap_or_default().trim();
    start
        .parse()
        .map(Some)
        .map_err(|_| format!("nextExpectedRanges holds '{first}', not a byte range"))
}

/// A place in OneDrive: folders below the root, and a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePath {
    folders: Vec<String>,
    name: String,
}

impl RemotePath {
    /// `folder` is `/`, `Documents` or `/Documents/2026/`; `name` a file name.
    pub fn new(folder: &str, name: &str) -> Result<Self, String> {
        let folders: Vec<String> = folder
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(str::to_owned)
            .collect();
        for segment in folders.iter().chain(std::iter::once(&name.to_owned())) {
            check_name(segment)?;
        }
        Ok(Self {
            folders,
            name: name.to_owned(),
        })
    }

    /// The same folder, another name (OneDrive's, after a rename).
    fn with_name(&self, name: &str) -> Self {
        Self {
            folders: self.folders.clone(),
            name: name.to_owned(),
        }
    }

    pub fn folder(&self) -> String {
        format!("/{}", self.folders.join("/"))
    }

    /// `{graph}/me/drive/root:/{path}` (the item), or `…:/{action}`; every segment encoded.
    fn url(&self, graph: &BaseUrl, action: Option<&str>) -> url::Url {
        let mut url = graph.url();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["me", "drive", "root:"]);
            segments.extend(&self.folders);
            match action {
                Some(action) => {
                    segments.push(&format!("{}:", self.name)).push(action);
                }
                None => {
                    segments.push(&self.name);
                }
            }
        }
        url
    }
}

impl fmt::Display for RemotePath {
    /// `/Documents/a.bin`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for folder in &self.folders {
            write!(f, "/{folder}")?;
        }
        write!(f, "/{}", self.name)
    }
}

/// OneDrive's rules for a name: not empty, not `.` or `..`, none of `" * : < > ? / \ |`.
fn check_name(name: &str) -> Result<(), String> {
    const FORBIDDEN: &[char] = &['"', '*', ':', '<', '>', '?', '/', '\\', '|'];
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("'{name}' is not a name OneDrive takes"));
    }
    if let Some(bad) = name.chars().find(|c| FORBIDDEN.contains(c) || c.is_control()) {
        return Err(format!(
            "OneDrive does not allow '{}' in names ('{name}')",
            bad.escape_default()
        ));
    }
    Ok(())
}

/// A local file as it was when the upload began.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalFile {
    path: PathBuf,
    size: u64,
    /// mtime as (seconds, nanoseconds) since the epoch.
    modified: (i64, u32),
}

impl LocalFile {
    fn stat(path: &Path) -> Result<Self, Error> {
        let path = std::fs::canonicalize(path).map_err(|e| Error::file("read", path, e))?;
        let metadata = std::fs::metadata(&path).map_err(|e| Error::file("read", &path, e))?;
        if !metadata.is_file() {
            return Err(Error::Usage(format!("{} is not a file", path.display())));
        }
        let modified = metadata.modified().map_err(|e| Error::file("read", &path, e))?;
        let modified = match modified.duration_since(UNIX_EPOCH) {
            Ok(after) => (
                i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                after.subsec_nanos(),
            ),
            Err(before) => (
                -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
                before.duration().subsec_nanos(),
            ),
        };
        Ok(Self {
            path,
            size: metadata.len(),
            modified,
        })
    }

    fn name(&self) -> Result<&str, Error> {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Usage(format!("{} has no name OneDrive can take", self.path.display())))
    }

    fn read(&self, first: u64, last: u64) -> Result<Vec<u8>, Error> {
        let length = usize::try_from(last - first + 1)
            .map_err(|_| Error::Usage("a fragment does not fit in memory".to_owned()))?;
        let mut buffer = vec![0; length];
        let mut file = File::open(&self.path).map_err(|e| Error::file("read", &self.path, e))?;
        file.seek(SeekFrom::Start(first))
            .and_then(|_| file.read_exact(&mut buffer))
            .map_err(|e| Error::file("read", &self.path, e))?;
        Ok(buffer)
    }
}

/// `uploads/<hash>.json`: an upload session to come back to. Not `Debug`: the URL is a credential.
#[derive(Serialize, Deserialize)]
struct SavedSession {
    version: u32,
    upload_url: String,
    #[serde(default)]
    expiration_date_time: Option<String>,
    file: PathBuf,
    size: u64,
    modified: (i64, u32),
    destination: String,
    created_at: DateTime<Utc>,
}

impl SavedSession {
    fn load(path: &Path) -> Result<Option<Self>, Error> {
        let Some(bytes) = secure_file::read_if_exists(path).map_err(|e| Error::file("read", path, e))? else {
            return Ok(None);
        };
        // One this version cannot read is as good as none: the upload starts afresh.
        Ok(serde_json::from_slice::<Self>(&bytes)
            .ok()
            .filter(|saved| saved.version == SAVED_VERSION))
    }

    fn save(&self, path: &Path) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::file("write", path, std::io::Error::other(e)))?;
        secure_file::write_private(path, &json).map_err(|e| Error::file("write", path, e))
    }
}

/// The file an upload's session is saved in: one per Graph, account, local file and destination.
fn saved_session_path(
    paths: &Paths,
    graph: &BaseUrl,
    account: Option<&str>,
    local: &Path,
    remote: &RemotePath,
) -> PathBuf {
    let mut hash = Sha256::new();
    for part in [
        graph.as_str(),
        account.unwrap_or_default(),
        &local.to_string_lossy(),
        &remote.to_string(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hex::encode(hash.finalize());
    paths.uploads_dir().join(format!("{}.json", &digest[..32]))
}

/// What to upload, and how.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub file: PathBuf,
    /// The destination folder (`/` for the root).
    pub folder: String,
    pub conflict: Conflict,
    pub fragment: FragmentSize,
    /// No progress bar and no notes.
    pub quiet: bool,
}

/// The file in OneDrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub path: String,
    pub id: String,
    pub size: u64,
    /// `Some(byte)` when an earlier, interrupted upload was continued from that byte.
    pub resumed_from: Option<u64>,
}

/// Graph's error body `{"error":{"code","message","innerError":{"code"}}}`.
#[derive(Debug, Default)]
struct GraphFailure {
    status: u16,
    code: String,
    inner_code: Option<String>,
    message: String,
}

impl GraphFailure {
    fn read(status: u16, body: &Value) -> Self {
        let error = &body["error"];
        Self {
            status,
            code: error["code"]
                .as_str()
                .map_or_else(|| format!("http_{status}"), str::to_owned),
            inner_code: error["innerError"]["code"].as_str().map(str::to_owned),
            message: error["message"]
                .as_str()
                .map_or_else(|| format!("answered {status}"), str::to_owned),
        }
    }

    fn is(&self, code: &str) -> bool {
        self.code == code || self.inner_code.as_deref() == Some(code)
    }

    /// §9.3: `nameAlreadyExists` (older OneDrive: `upload_name_conflict`).
    fn is_name_conflict(&self) -> bool {
        self.status == 409 && (self.is("nameAlreadyExists") || self.is("upload_name_conflict"))
    }

    fn into_error(self) -> Error {
        Error::Graph {
            status: self.status,
            code: self.inner_code.unwrap_or(self.code),
            message: self.message,
        }
    }
}

/// An HTTP answer read whole.
struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<Duration>,
}

impl Reply {
    fn retryable(&self) -> bool {
        self.status == 429 || self.status >= 500
    }

    fn failure(&self) -> GraphFailure {
        GraphFailure::read(self.status, &self.body)
    }
}

async fn read_reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let retry_after = crate::api::retry_after(response.headers());
    let body = match response.bytes().await {
        Ok(bytes) if !bytes.is_empty() => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Reply {
        status,
        body,
        retry_after,
    }
}

/// How long to wait before try `attempt` (1-based) of a request: `Retry-After` when given, else
/// 1, 2, 4, 8… s (at most 30).
fn pause(retry_after: Option<Duration>, attempt: u32) -> Duration {
    retry_after.map_or_else(
        || Duration::from_secs(1 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30)),
        |after| after.min(LONGEST_WAIT),
    )
}

/// A request body that can be sent again.
enum Body {
    Empty,
    Json(Value),
    Bytes(Vec<u8>),
}

/// The Graph side of an upload: authenticated calls, and the unauthenticated upload URL.
struct Graph<'s, 'a> {
    http: &'a reqwest::Client,
    base: &'a BaseUrl,
    session: &'s mut Session<'a>,
}

impl Graph<'_, '_> {
    /// A Graph call as the user: a 401 refreshes the token once, 429/5xx and dropped connections
    /// are retried with backoff. Any other answer is returned for the caller to read.
    async fn call(&mut self, method: Method, url: &url::Url, body: &Body) -> Result<Reply, Error> {
        let mut token = self.session.access_token(Resource::Graph).await?;
        let mut attempt = 1;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose_secret());
            request = match body {
                Body::Empty => request,
                Body::Json(value) => request.json(value),
                Body::Bytes(bytes) => request
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(bytes.clone()),
            };
            let reply = match request.send().await {
                Ok(response) => read_reply(response).await,
                Err(_) if attempt < ATTEMPTS => {
                    tokio::time::sleep(pause(None, attempt)).await;
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(Error::unreachable("Microsoft Graph", self.base.as_str(), e)),
            };
            if reply.status == 401
                && let Some(fresh) = self.session.refresh_after_rejection(Resource::Graph).await?
            {
                token = fresh;
                continue;
            }
            if reply.retryable() && attempt < ATTEMPTS {
                tokio::time::sleep(pause(reply.retry_after, attempt)).await;
                attempt += 1;
                continue;
            }
            return Ok(reply);
        }
    }

    /// A call to the upload URL: never with `Authorization` (§9.2). Dropped connections, 429 and
    /// 5xx are retried here only for GET and DELETE; a fragment's caller decides for itself.
    async fn upload_url(
        &self,
        method: Method,
        url: &str,
        fragment: Option<(u64, u64, u64, Vec<u8>)>,
    ) -> Result<Reply, Error> {
        let retry = fragment.is_none();
        let mut attempt = 1;
        loop {
            let mut request = self.http.request(method.clone(), url);
            if let Some((first, last, total, bytes)) = &fragment {
                request = request
                    .header(
                        reqwest::header::CONTENT_RANGE,
                        format!("bytes {first}-{last}/{total}"),
                    )
                    .header(reqwest::header::CONTENT_LENGTH, bytes.len())
                    .body(bytes.clone());
            }
            match request.send().await {
                Ok(response) => {
                    let reply = read_reply(response).await;
                    if retry && reply.retryable() && attempt < ATTEMPTS {
                        tokio::time::sleep(pause(reply.retry_after, attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Ok(reply);
                }
                Err(_) if retry && attempt < ATTEMPTS => {
                    tokio::time::sleep(pause(None, attempt)).await;
                    attempt += 1;
                }
                // The upload URL is a credential: the error names the host's service, not the URL.
                Err(e) => return Err(Error::unreachable("the upload session", "its upload URL", e)),
            }
        }
    }
}

/// Where a session stands.
enum SessionState {
    /// Still there; the next byte it expects, or `None` when it has them all.
    Open(Option<u64>),
    /// Expired, cancelled or committed: 404.
    Gone,
}

/// How sending the fragments ended.
enum Sent {
    Done(Value),
    /// Every byte is there but no file was made: commit explicitly.
    Complete,
    Gone,
}

/// The progress bar on stderr (hidden when stderr is not a terminal, or with `--quiet`).
struct Progress(ProgressBar);

impl Progress {
    fn new(total: u64, visible: bool) -> Self {
        if !visible {
            return Self(ProgressBar::hidden());
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(bar)
    }

    fn note(&self, console: &mut Console<'_>, text: &str) {
        self.0.suspend(|| console.note(text));
    }
}

/// Uploads the file; see the module's documentation.
pub async fn upload<'a>(
    http: &'a reqwest::Client,
    graph_base: &'a BaseUrl,
    paths: &Paths,
    session: &mut Session<'a>,
    request: &UploadRequest,
    console: &mut Console<'_>,
) -> Result<Uploaded, Error> {
    let local = LocalFile::stat(&request.file)?;
    let remote = RemotePath::new(&request.folder, local.name()?).map_err(Error::Usage)?;
    let account = session.account().object_id.clone();
    let mut graph = Graph {
        http,
        base: graph_base,
        session,
    };
    let saved_path = saved_session_path(paths, graph_base, account.as_deref(), &local.path, &remote);
    if local.size <= SIMPLE_UPLOAD_MAX {
        // A session saved while the file was larger is of no use now; its URL is a credential.
        let _ = secure_file::remove_if_exists(&saved_path);
        return simple_upload(&mut graph, &local, &remote, request.conflict).await;
    }
    let progress = Progress::new(local.size, !request.quiet && console.stderr_is_terminal);
    let say = |console: &mut Console<'_>, text: String| {
        if !request.quiet {
            progress.note(console, &text);
        }
    };

    let mut resumed_from = None;
    let (mut url, mut next) = match resume(&graph, &local, &remote, &saved_path).await? {
        Resume::At { url, next } => {
            match next {
                Some(byte) => say(
                    console,
                    format!(
                        "Resuming the upload of {} to {remote} at byte {byte} of {} ({}% done).",
                        local.path.display(),
                        local.size,
                        byte.saturating_mul(100) / local.size.max(1)
                    ),
                ),
                None => say(
                    console,
                    format!("Every byte of {remote} was sent earlier; committing the file."),
                ),
            }
            resumed_from = Some(next.unwrap_or(local.size));
            (url, next)
        }
        Resume::Fresh(why) => {
            if let Some(why) = why {
                say(console, why);
            }
            let url = new_session(&mut graph, &local, &remote, request.conflict, &saved_path).await?;
            say(
                console,
                format!(
                    "Uploading {} ({}) to {remote} in fragments of {}; if it is interrupted, run the same \
                     command again to resume.",
                    local.path.display(),
                    human_size(local.size),
                    request.fragment
                ),
            );
            (url, Some(0))
        }
    };
    let mut restarted = false;
    loop {
        let sent = match next {
            Some(start) => {
                progress.0.set_position(start);
                let job = Job {
                    local: &local,
                    remote: &remote,
                    size: request.fragment,
                };
                send_fragments(&graph, &job, &url, start, &progress, console).await?
            }
            None => commit(&mut graph, &remote, &url, request.conflict).await?,
        };
        match sent {
            Sent::Done(item) => {
                progress.0.finish_and_clear();
                if let Err(e) = secure_file::remove_if_exists(&saved_path) {
                    console.note(format!(
                        "note: cannot delete the finished session's file {}: {e}",
                        saved_path.display()
                    ));
                }
                return finished(&item, &remote, local.size, resumed_from);
            }
            Sent::Complete => next = None,
            Sent::Gone if !restarted => {
                restarted = true;
                say(
                    console,
                    "The upload session expired or was deleted; starting a new one from byte 0.".to_owned(),
                );
                secure_file::remove_if_exists(&saved_path)
                    .map_err(|e| Error::file("delete", &saved_path, e))?;
                url = new_session(&mut graph, &local, &remote, request.conflict, &saved_path).await?;
                next = Some(0);
                resumed_from = None;
            }
            Sent::Gone => {
                return Err(Error::UploadFailed {
                    path: remote.to_string(),
                    reason: "the upload session disappeared twice".to_owned(),
                });
            }
        }
    }
}

/// The uploaded item as the command reports it.
fn finished(
    item: &Value,
    remote: &RemotePath,
    size: u64,
    resumed_from: Option<u64>,
) -> Result<Uploaded, Error> {
    let id = item["id"].as_str().ok_or_else(|| Error::BadAnswer {
        service: "Microsoft Graph",
        detail: "the finished upload's driveItem has no id".to_owned(),
    })?;
    let name = item["name"].as_str().unwrap_or(&remote.name);
    Ok(Uploaded {
        path: remote.with_name(name).to_string(),
        id: id.to_owned(),
        size: item["size"].as_u64().unwrap_or(size),
        resumed_from,
    })
}

/// The errors of a write at `remote` that the user can act on.
fn write_error(failure: GraphFailure, remote: &RemotePath) -> Error {
    match failure.status {
        409 if failure.is_name_conflict() => Error::NameConflict {
            path: remote.to_string(),
        },
        404 => Error::FolderNotFound {
            folder: remote.folder(),
        },
        507 => Error::QuotaExceeded {
            path: remote.to_string(),
            message: failure.message,
        },
        _ => failure.into_error(),
    }
}

/// `PUT …/root:/{path}:/content?@microsoft.graph.conflictBehavior=…` with the whole file.
async fn simple_upload(
    graph: &mut Graph<'_, '_>,
    local: &LocalFile,
    remote: &RemotePath,
    conflict: Conflict,
) -> Result<Uploaded, Error> {
    let bytes = if local.size == 0 {
        Vec::new()
    } else {
        local.read(0, local.size - 1)?
    };
    let mut url = remote.url(graph.base, Some("content"));
    url.query_pairs_mut()
        .append_pair(CONFLICT_BEHAVIOR, conflict.as_str());
    let reply = graph.call(Method::PUT, &url, &Body::Bytes(bytes)).await?;
    if matches!(reply.status, 200 | 201) {
        return finished(&reply.body, remote, local.size, None);
    }
    Err(write_error(reply.failure(), remote))
}

enum Resume {
    /// A saved session that is still there.
    At { url: String, next: Option<u64> },
    /// None to resume; why, when there was one.
    Fresh(Option<String>),
}

/// The saved session of this upload, if it can still be used.
async fn resume(
    graph: &Graph<'_, '_>,
    local: &LocalFile,
    remote: &RemotePath,
    saved_path: &Path,
) -> Result<Resume, Error> {
    let Some(saved) = SavedSession::load(saved_path)? else {
        return Ok(Resume::Fresh(None));
    };
    let forget =
        || secure_file::remove_if_exists(saved_path).map_err(|e| Error::file("delete", saved_path, e));
    if saved.size != local.size || saved.modified != local.modified || saved.destination != remote.to_string()
    {
        // Its bytes are of another version of the file: cancel it rather than let it linger.
        let _ = graph.upload_url(Method::DELETE, &saved.upload_url, None).await;
        forget()?;
        return Ok(Resume::Fresh(Some(format!(
            "{} changed since its upload was interrupted; cancelled that upload session and starting again.",
            local.path.display()
        ))));
    }
    match session_state(graph, &saved.upload_url).await? {
        SessionState::Open(next) => Ok(Resume::At {
            url: saved.upload_url,
            next,
        }),
        SessionState::Gone => {
            forget()?;
            Ok(Resume::Fresh(Some(
                "The saved upload session has expired or was deleted; starting a new one from byte 0."
                    .to_owned(),
            )))
        }
    }
}

/// `GET {uploadUrl}`: where the session stands (§9.3).
async fn session_state(graph: &Graph<'_, '_>, url: &str) -> Result<SessionState, Error> {
    let reply = graph.upload_url(Method::GET, url, None).await?;
    match reply.status {
        200 => {
            let ranges: Vec<String> =
                serde_json::from_value(reply.body["nextExpectedRanges"].clone()).unwrap_or_default();
            let next = next_expected(&ranges).map_err(|detail| Error::BadAnswer {
                service: "the upload session",
                detail,
            })?;
            Ok(SessionState::Open(next))
        }
        404 => Ok(SessionState::Gone),
        _ => Err(reply.failure().into_error()),
    }
}

/// A new upload session, saved before any byte is sent. With `--conflict fail` a name that is
/// already taken is refused now, not after the whole file went up.
async fn new_session(
    graph: &mut Graph<'_, '_>,
    local: &LocalFile,
    remote: &RemotePath,
    conflict: Conflict,
    saved_path: &Path,
) -> Result<String, Error> {
    if conflict == Conflict::Fail {
        let existing = graph
            .call(Method::GET, &remote.url(graph.base, None), &Body::Empty)
            .await?;
        if existing.status == 200 {
            return Err(Error::NameConflict {
                path: remote.to_string(),
            });
        }
    }
    let body = json!({"item": {CONFLICT_BEHAVIOR: conflict.as_str(), "fileSize": local.size}});
    let reply = graph
        .call(
            Method::POST,
            &remote.url(graph.base, Some("createUploadSession")),
            &Body::Json(body),
        )
        .await?;
    if reply.status != 200 && reply.status != 201 {
        return Err(write_error(reply.failure(), remote));
    }
    let url = reply.body["uploadUrl"]
        .as_str()
        .ok_or_else(|| Error::BadAnswer {
            service: "Microsoft Graph",
            detail: "createUploadSession answered without an uploadUrl".to_owned(),
        })?
        .to_owned();
    SavedSession {
        version: SAVED_VERSION,
        upload_url: url.clone(),
        expiration_date_time: reply.body["expirationDateTime"].as_str().map(str::to_owned),
        file: local.path.clone(),
        size: local.size,
        modified: local.modified,
        destination: remote.to_string(),
        created_at: Utc::now(),
    }
    .save(saved_path)?;
    Ok(url)
}

/// What a session upload sends, and where.
#[derive(Clone, Copy)]
struct Job<'j> {
    local: &'j LocalFile,
    remote: &'j RemotePath,
    size: FragmentSize,
}

/// Sends the fragments from `start` in order until the file is made or the session is gone.
async fn send_fragments(
    graph: &Graph<'_, '_>,
    job: &Job<'_>,
    url: &str,
    start: u64,
    progress: &Progress,
    console: &mut Console<'_>,
) -> Result<Sent, Error> {
    let Job { local, remote, size } = *job;
    let total = local.size;
    let mut offset = start;
    let mut attempt = 1;
    let mut recoveries = 0;
    let failed = |reason: String| Error::UploadFailed {
        path: local.path.display().to_string(),
        reason,
    };
    while let Some((first, last)) = fragments(total, size, offset).next() {
        // A file edited mid-upload would commit a mix of old and new bytes: stop instead. The
        // next run sees the change and starts a new session.
        if LocalFile::stat(&local.path)? != *local {
            return Err(failed(
                "the file changed during the upload; run the same command again to upload it as it is now"
                    .to_owned(),
            ));
        }
        let bytes = local.read(first, last)?;
        let reply = match graph
            .upload_url(Method::PUT, url, Some((first, last, total, bytes)))
            .await
        {
            Ok(reply) => reply,
            Err(Error::Unreachable { detail, .. }) if attempt < ATTEMPTS => {
                progress.note(
                    console,
                    &format!("The connection failed ({detail}); trying again."),
                );
                tokio::time::sleep(pause(None, attempt)).await;
                attempt += 1;
                match session_state(graph, url).await? {
                    SessionState::Open(Some(next)) => offset = next,
                    SessionState::Open(None) => return Ok(Sent::Complete),
                    SessionState::Gone => return Ok(Sent::Gone),
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        match reply.status {
            202 => {
                let ranges: Vec<String> =
                    serde_json::from_value(reply.body["nextExpectedRanges"].clone()).unwrap_or_default();
                match next_expected(&ranges).map_err(failed)? {
                    Some(next) => offset = next,
                    None => return Ok(Sent::Complete),
                }
                attempt = 1;
                recoveries = 0;
                progress.0.set_position(offset);
            }
            200 | 201 => {
                progress.0.set_position(total);
                return Ok(Sent::Done(reply.body));
            }
            404 => return Ok(Sent::Gone),
            409 if reply.failure().is_name_conflict() => {
                progress.0.abandon();
                return Err(Error::NameConflict {
                    path: remote.to_string(),
                });
            }
            416 | 409 if recoveries < RECOVERIES => {
                recoveries += 1;
                match session_state(graph, url).await? {
                    SessionState::Open(Some(next)) => offset = next,
                    SessionState::Open(None) => return Ok(Sent::Complete),
                    SessionState::Gone => return Ok(Sent::Gone),
                }
            }
            _ if reply.retryable() && attempt < ATTEMPTS => {
                let wait = pause(reply.retry_after, attempt);
                progress.note(
                    console,
                    &format!(
                        "Microsoft Graph answered {}; trying again in {} s.",
                        reply.status,
                        wait.as_secs().max(1)
                    ),
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
                // The refused request's bytes may or may not have been kept: ask.
                match session_state(graph, url).await? {
                    SessionState::Open(Some(next)) => offset = next,
                    SessionState::Open(None) => return Ok(Sent::Complete),
                    SessionState::Gone => return Ok(Sent::Gone),
                }
            }
            _ => return Err(reply.failure().into_error()),
        }
    }
    // Nothing left to send, yet no driveItem: ask the session what it has.
    match session_state(graph, url).await? {
        SessionState::Open(Some(next)) => Err(failed(format!(
            "every fragment was sent but the session still expects byte {next}"
        ))),
        SessionState::Open(None) => Ok(Sent::Complete),
        SessionState::Gone => Ok(Sent::Gone),
    }
}

/// `PUT …/root:/{path}` with `@microsoft.graph.sourceUrl`: commits a session that has every byte
/// (§9.3), with this run's conflict behaviour.
async fn commit(
    graph: &mut Graph<'_, '_>,
    remote: &RemotePath,
    url: &str,
    conflict: Conflict,
) -> Result<Sent, Error> {
    let body = json!({
        "name": remote.name,
        CONFLICT_BEHAVIOR: conflict.as_str(),
        "@microsoft.graph.sourceUrl": url,
    });
    let reply = graph
        .call(Method::PUT, &remote.url(graph.base, None), &Body::Json(body))
        .await?;
    match reply.status {
        200 | 201 => Ok(Sent::Done(reply.body)),
        404 if reply.failure().is("uploadSessionNotFound") || reply.failure().is("itemNotFound") => {
            Ok(Sent::Gone)
        }
        _ => Err(write_error(reply.failure(), remote)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const KIB320: u64 = FRAGMENT_UNIT;

    #[test]
    fn fragments_are_multiples_of_320_kib_and_the_last_is_shorter() {
        let total = 25 * MIB + 1000;
        let plan: Vec<_> = fragments(total, FragmentSize::default(), 0).collect();
        assert_eq!(plan.len(), 3);
        for (first, last) in &plan[..plan.len() - 1] {
            assert_eq!((last - first + 1) % KIB320, 0);
            assert_eq!(last - first + 1, 10 * MIB);
        }
        let (first, last) = plan[plan.len() - 1];
        assert_eq!(last, total - 1);
        assert_eq!(last - first + 1, 5 * MIB + 1000);
        let covered: u64 = plan.iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(covered, total);
    }

    #[test]
    fn a_resumed_plan_starts_at_the_next_expected_range() {
        let total = 40 * MIB;
        let start = next_expected(&["26214400-".to_owned()]).unwrap().unwrap();
        let plan: Vec<_> = fragments(total, FragmentSize::default(), start).collect();
        assert_eq!(plan[0], (26_214_400, 26_214_400 + 10 * MIB - 1));
        assert_eq!(plan.last().map(|(_, last)| *last), Some(total - 1));
        assert_eq!(plan.len(), 2);
    }

    #[test]
    fn next_expected_ranges_give_the_first_missing_byte_or_none() {
        assert_eq!(next_expected(&["0-".to_owned()]), Ok(Some(0)));
        assert_eq!(
            next_expected(&["12345-55232".to_owned(), "77829-99375".to_owned()]),
            Ok(Some(12345))
        );
        assert_eq!(next_expected(&[]), Ok(None));
        assert!(next_expected(&["x-".to_owned()]).is_err());
    }

    #[test]
    fn the_fragment_size_is_rounded_down_to_320_kib_and_kept_under_60_mib() {
        assert_eq!(FragmentSize::default().bytes(), 32 * KIB320);
        assert_eq!(FragmentSize::default().bytes(), 10 * MIB);
        assert_eq!("5".parse::<FragmentSize>().unwrap().bytes(), 16 * KIB320);
        assert_eq!("1".parse::<FragmentSize>().unwrap().bytes(), 3 * KIB320);
        assert_eq!("1.25".parse::<FragmentSize>().unwrap().bytes(), 4 * KIB320);
        assert_eq!("0.3125".parse::<FragmentSize>().unwrap().bytes(), KIB320);
        assert!("0.2".parse::<FragmentSize>().is_err());
        assert!("60".parse::<FragmentSize>().is_err());
        assert_eq!("59.9".parse::<FragmentSize>().unwrap().bytes(), MAX_FRAGMENT);
        assert!("ten".parse::<FragmentSize>().is_err());
    }

    #[test]
    fn a_remote_path_is_encoded_segment_by_segment() {
        let graph = BaseUrl::parse("http://127.0.0.1:3001/v1.0/").unwrap();
        let remote = RemotePath::new("/My Docs/2026/", "a b#1.bin").unwrap();
        assert_eq!(remote.to_string(), "/My Docs/2026/a b#1.bin");
        assert_eq!(remote.folder(), "/My Docs/2026");
        assert_eq!(
            remote.url(&graph, Some("createUploadSession")).as_str(),
            "http://127.0.0.1:3001/v1.0/me/drive/root:/My%20Docs/2026/a%20b%231.bin:/createUploadSession"
        );
        assert_eq!(
            RemotePath::new("/", "x.txt").unwrap().url(&graph, None).as_str(),
            "http://127.0.0.1:3001/v1.0/me/drive/root:/x.txt"
        );
    }

    #[test]
    fn names_onedrive_refuses_are_refused_before_any_request() {
        assert!(RemotePath::new("/", "a:b").is_err());
        assert!(RemotePath::new("/..", "a").is_err());
        assert!(RemotePath::new("/ok", "a?").is_err());
        assert!(RemotePath::new("", "fine.txt").is_ok());
    }

    #[test]
    fn waits_honour_retry_after_and_otherwise_double() {
        assert_eq!(pause(Some(Duration::from_secs(7)), 1), Duration::from_secs(7));
        assert_eq!(pause(Some(Duration::from_secs(600)), 1), LONGEST_WAIT);
        assert_eq!(pause(None, 1), Duration::from_secs(1));
        assert_eq!(pause(None, 3), Duration::from_secs(4));
        assert_eq!(pause(None, 10), Duration::from_secs(30));
    }

    #[test]
    fn one_upload_has_one_saved_session_file_per_destination() {
        let paths = Paths {
            dir: PathBuf::from("/cfg/graphfeed"),
        };
        let graph = BaseUrl::parse("http://g/v1.0").unwrap();
        let to_root = RemotePath::new("/", "a.bin").unwrap();
        let to_docs = RemotePath::new("/Docs", "a.bin").unwrap();
        let a = saved_session_path(&paths, &graph, Some("oid"), Path::new("/x/a.bin"), &to_root);
        assert_eq!(
            a,
            saved_session_path(&paths, &graph, Some("oid"), Path::new("/x/a.bin"), &to_root)
        );
        assert_ne!(
            a,
            saved_session_path(&paths, &graph, Some("oid"), Path::new("/x/a.bin"), &to_docs)
        );
        assert_ne!(
            a,
            saved_session_path(&paths, &graph, Some("other"), Path::new("/x/a.bin"), &to_root)
        );
        assert!(a.starts_with("/cfg/graphfeed/uploads"));
    }

    #[test]
    fn a_name_conflict_and_a_missing_folder_read_as_what_to_do() {
        let remote = RemotePath::new("/Docs", "a.bin").unwrap();
        let conflict = GraphFailure {
            status: 409,
            code: "nameAlreadyExists".into(),
            ..GraphFailure::default()
        };
        assert!(matches!(
            write_error(conflict, &remote),
            Error::NameConflict { path } if path == "/Docs/a.bin"
        ));
        let missing = GraphFailure {
            status: 404,
            code: "itemNotFound".into(),
            ..GraphFailure::default()
        };
        assert!(matches!(
            write_error(missing, &remote),
            Error::FolderNotFound { folder } if folder == "/Docs"
        ));
    }
}
