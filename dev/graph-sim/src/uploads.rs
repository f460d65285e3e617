//! Uploads (graph-protocol.md §9): the upload-session model and the fragment rules, free of HTTP
//! (the handlers are in [`crate::graph::uploads`]).
//!
//! A session remembers where its file goes, how many bytes it has received and a running SHA-256
//! of them, never the bytes: fragments must come in order, so the hash of the received prefix
//! and its length are all a commit needs. A fragment is hashed into a copy of the running hash
//! while it streams in and only replaces the session's hash once all of it has arrived, so the
//! bytes of an interrupted request are discarded (§9.3).
//!
//! Rules of a fragment (`PUT {uploadUrl}` with `Content-Range: bytes {start}-{end}/{total}`):
//! the range must lie in the file (416 `invalidRange`); Content-Length must be its length (400);
//! it must be shorter than [`crate::UploadLimits::fragment_max_bytes`] (413
//! `maxFragmentLengthExceeded`); `total` must be the session's (400 `fragmentLengthMismatch`); it
//! must start where the received bytes end (earlier: 416 `fragmentOverlap`, later: 416
//! `fragmentOutOfOrder`); and every fragment but the last must be a multiple of
//! [`crate::UploadLimits::fragment_multiple`] (400 `invalidRange`).

use aws_lc_rs::digest;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::UploadLimits;
use crate::drive::{ConflictBehavior, Content};
use crate::errors::GraphError;

/// Where upload URLs live: `{public url}/_upload/{session id}`, outside `/v1.0` like OneDrive's
/// `https://….up.1drv.com/up/…`.
pub const UPLOAD_URL_PREFIX: &str = "/_upload";

/// A running SHA-256.
#[derive(Clone)]
pub struct Sha256(digest::Context);

impl Sha256 {
    pub fn new() -> Self {
        Self(digest::Context::new(&digest::SHA256))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything so far, in uppercase hex (Graph's `sha256Hash` form).
    pub fn hex(&self) -> String {
        self.0
            .clone()
            .finish()
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect()
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256(..)")
    }
}

/// Where a session's file goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Destination {
    /// A new file `name` in the folder `parent_id` (the conflict behaviour decides if the name is
    /// taken by then).
    New { parent_id: String, name: String },
    /// New content for an existing file.
    Existing { item_id: String },
}

/// An upload session.
#[derive(Debug, Clone)]
pub struct UploadSession {
    /// The opaque last segment of its URL.
    pub id: String,
    pub drive_id: String,
    pub destination: Destination,
    /// `item.@microsoft.graph.conflictBehavior` (default `fail`).
    pub conflict_behavior: ConflictBehavior,
    /// `deferCommit`: the last fragment does not create the file; a zero-length `POST` (or a
    /// `PUT` without `Content-Range`) to the upload URL does.
    pub defer_commit: bool,
    /// The file's size: `item.fileSize` when given, else the total of the first accepted fragment.
    pub total: Option<u64>,
    /// Bytes received so far (all of `0..received`).
    pub received: u64,
    pub hash: Sha256,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What the control API and [`crate::Sim::upload_sessions`] show of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadSessionInfo {
    pub id: String,
    pub upload_url: String,
    pub drive_id: String,
    pub destination: Destination,
    pub conflict_behavior: ConflictBehavior,
    pub defer_commit: bool,
    pub received: u64,
    pub total: Option<u64>,
    /// Every byte arrived (waiting for a deferred commit, or for a retry after a 409).
    pub complete: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl UploadSession {
    /// A session with nothing received yet, expiring `lifetime` after `now`.
    pub fn new(
        drive_id: &str,
        destination: Destination,
        conflict_behavior: ConflictBehavior,
        defer_commit: bool,
        declared_size: Option<u64>,
        now: DateTime<Utc>,
        lifetime: chrono::Duration,
    ) -> Self {
        Self {
            id: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            drive_id: drive_id.to_owned(),
            destination,
            conflict_behavior,
            defer_commit,
            total: declared_size,
            received: 0,
            hash: Sha256::new(),
            created_at: now,
            expires_at: now + lifetime,
        }
    }

    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }

    pub fn complete(&self) -> bool {
        self.total == Some(self.received)
    }

    /// `nextExpectedRanges`: `["{received}-"]`, or none once complete.
    pub fn next_expected_ranges(&self) -> Vec<String> {
        if self.complete() {
            Vec::new()
        } else {
            vec![format!("{}-", self.received)]
        }
    }

    /// The file's content once complete.
    pub fn content(&self) -> Option<Content> {
        self.complete().then(|| Content {
            size: self.received,
            sha256: self.hash.hex(),
        })
    }

    pub fn info(&self, upload_url: String) -> UploadSessionInfo {
        UploadSessionInfo {
            id: self.id.clone(),
            upload_url,
            drive_id: self.drive_id.clone(),
            destination: self.destination.clone(),
            conflict_behavior: self.conflict_behavior,
            defer_commit: self.defer_commit,
            received: self.received,
            total: self.total,
            complete: self.complete(),
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }

    /// Checks a fragment against the session and the limits before any of its bytes are read.
    pub fn check_fragment(
        &self,
        range: ContentRange,
        content_length: u64,
        limits: &UploadLimits,
    ) -> Result<(), GraphError> {
        let length = range.len();
        if content_length != length {
            return Err(GraphError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalidRequest",
                format!("Content-Length is {content_length} but the Content-Range covers {length} bytes."),
            ));
        }
        if length >= limits.fragment_max_bytes {
            return Err(GraphError::fragment_too_large(length, limits.fragment_max_bytes));
        }
        if self.total.is_some_and(|total| total != range.total) {
            return Err(GraphError::fragment_length_mismatch());
        }
        if range.start < self.received {
            return Err(GraphError::fragment_overlap());
        }
        if range.start > self.received {
            return Err(GraphError::fragment_out_of_order());
        }
        let last = range.end + 1 == range.total;
        if let Some(multiple) = limits.fragment_multiple.filter(|&multiple| multiple > 0)
            && !last
            && !length.is_multiple_of(multiple)
        {
            return Err(GraphError::fragment_not_a_multiple(length, multiple));
        }
        Ok(())
    }
}

/// `Content-Range: bytes {start}-{end}/{total}` (inclusive end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
    pub total: u64,
}

impl ContentRange {
    /// Reads the header; a malformed one (or `*` as the total, which Graph does not take) is 400,
    /// a range outside the file 416.
    pub fn parse(raw: &str) -> Result<Self, GraphError> {
        let malformed = || {
            GraphError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalidRequest",
                format!("Content-Range '{raw}' is not of the form 'bytes {{start}}-{{end}}/{{total}}'."),
            )
        };
        let rest = raw.trim().strip_prefix("bytes ").ok_or_else(malformed)?;
        let (range, total) = rest.split_once('/').ok_or_else(malformed)?;
        let (start, end) = range.split_once('-').ok_or_else(malformed)?;
        let number = |text: &str| text.trim().parse::<u64>().map_err(|_| malformed());
        let (start, end, total) = (number(start)?, number(end)?, number(total)?);
        if end < start || end >= total {
            return Err(GraphError::invalid_range(format!(
                "The range {start}-{end} is not within a file of {total} bytes."
            )));
        }
        Ok(Self { start, end, total })
    }

    /// How many bytes the range covers.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never true: a valid range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB320: u64 = 327_680;

    fn session(received: u64, total: Option<u64>) -> UploadSession {
        let mut session = UploadSession::new(
            "drive",
            Destination::New {
                parent_id: "root".to_owned(),
                name: "a.bin".to_owned(),
            },
            ConflictBehavior::Fail,
            false,
            total,
            Utc::now(),
            chrono::Duration::hours(24),
        );
        session.received = received;
        session
    }

    fn range(start: u64, end: u64, total: u64) -> ContentRange {
        ContentRange { start, end, total }
    }

    fn refusal(result: Result<(), GraphError>) -> (u16, String, Option<&'static str>) {
        let error = result.expect_err("refused");
        (error.status.as_u16(), error.code, error.inner_code)
    }

    #[test]
    fn content_ranges_parse_and_must_lie_in_the_file() {
        assert_eq!(
            ContentRange::parse("bytes 0-25/128").map(|r| r.len()).ok(),
            Some(26)
        );
        assert_eq!(
            ContentRange::parse("bytes 0-9/*")
                .map_err(|e| e.status.as_u16())
                .err(),
            Some(400)
        );
        assert_eq!(
            ContentRange::parse("0-9/10").map_err(|e| e.status.as_u16()).err(),
            Some(400)
        );
        assert_eq!(
            ContentRange::parse("bytes 5-4/10")
                .map_err(|e| e.status.as_u16())
                .err(),
            Some(416)
        );
        assert_eq!(
            ContentRange::parse("bytes 0-10/10")
                .map_err(|e| e.status.as_u16())
                .err(),
            Some(416)
        );
    }

    #[test]
    fn a_fragment_must_continue_exactly_where_the_session_is() {
        let limits = UploadLimits::default();
        let at = session(KIB320, Some(3 * KIB320));
        assert!(
            at.check_fragment(range(KIB320, 2 * KIB320 - 1, 3 * KIB320), KIB320, &limits)
                .is_ok()
        );
        assert_eq!(
            refusal(at.check_fragment(range(0, KIB320 - 1, 3 * KIB320), KIB320, &limits)),
            (416, "invalidRange".to_owned(), Some("fragmentOverlap"))
        );
        assert_eq!(
            refusal(at.check_fragment(range(2 * KIB320, 3 * KIB320 - 1, 3 * KIB320), KIB320, &limits)),
            (416, "invalidRange".to_owned(), Some("fragmentOutOfOrder"))
        );
        assert_eq!(
            refusal(at.check_fragment(range(KIB320, 2 * KIB320 - 1, 4 * KIB320), KIB320, &limits)),
            (400, "invalidRequest".to_owned(), Some("fragmentLengthMismatch"))
        );
        assert_eq!(
            refusal(at.check_fragment(range(KIB320, 2 * KIB320 - 1, 3 * KIB320), 10, &limits)).0,
            400,
            "Content-Length must match the range"
        );
    }

    #[test]
    fn fragments_are_shorter_than_60_mib_and_multiples_of_320_kib_but_the_last() {
        let limits = UploadLimits::default();
        let fresh = session(0, None);
        let sixty = 60 * 1024 * 1024;
        assert_eq!(
            refusal(fresh.check_fragment(range(0, sixty - 1, 2 * sixty), sixty, &limits)),
            (
                413,
                "invalidRequest".to_owned(),
                Some("maxFragmentLengthExceeded")
            )
        );
        assert_eq!(
            refusal(fresh.check_fragment(range(0, 999, 5000), 1000, &limits)),
            (400, "invalidRange".to_owned(), None)
        );
        assert!(
            fresh.check_fragment(range(0, 999, 1000), 1000, &limits).is_ok(),
            "a last fragment of any length"
        );
        let lenient = UploadLimits {
            fragment_multiple: None,
            ..limits
        };
        assert!(fresh.check_fragment(range(0, 999, 5000), 1000, &lenient).is_ok());
    }

    #[test]
    fn a_complete_session_expects_nothing_and_hashes_what_it_received() {
        let mut done = session(0, Some(3));
        assert_eq!(done.next_expected_ranges(), vec!["0-"]);
        assert!(done.content().is_none());
        done.hash.update(b"abc");
        done.received = 3;
        assert!(done.next_expected_ranges().is_empty());
        assert_eq!(
            done.content().map(|content| content.sha256),
            Some("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD".to_owned())
        );
    }
}
