//! Drive delta (graph-protocol.md §5): one page at a time, links followed verbatim.
//!
//! - The first call of a drive is `GET /drives/{id}/root/delta` (a full enumeration); every
//!   later call GETs a link Graph gave (`@odata.nextLink` or `@odata.deltaLink`) exactly as
//!   given: the link forms vary (`delta(token='…')`, `?token=…`) and carry their own options.
//! - A link must point at the configured Graph origin: the bearer token is never sent elsewhere.
//! - An item is read into [`ItemState`], the compact form the index and the staging area keep:
//!   delta has no `parentReference.path`, may omit `name`, `cTag` and `size` on deletes (and
//!   `cTag` on business drives), and marks the root with a `root` facet.
//! - HTTP 410 with a code starting with `resync` (top level or anywhere in the inner-error chain)
//!   is [`DeltaError::Resync`], carrying the `Location` that restarts the enumeration (§5.4).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::graph::GraphError;

/// An item as graphfeed keeps it (in the index and while staged). Absent fields stay absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemState {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default)]
    pub folder: bool,
    #[serde(default)]
    pub root: bool,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<DateTime<Utc>>,
}

/// A driveItem as the delta feed sends it (the fields graphfeed reads).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawItem {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "eTag")]
    etag: Option<String>,
    #[serde(default, rename = "cTag")]
    ctag: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    parent_reference: Option<RawParent>,
    #[serde(default)]
    folder: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    root: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    deleted: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    last_modified_date_time: Option<DateTime<chrono::FixedOffset>>,
}

#[derive(Debug, Deserialize)]
struct RawParent {
    #[serde(default)]
    id: Option<String>,
}

impl From<RawItem> for ItemState {
    fn from(raw: RawItem) -> Self {
        Self {
            id: raw.id,
            parent_id: raw.parent_reference.and_then(|p| p.id),
            name: raw.name,
            etag: raw.etag,
            ctag: raw.ctag,
            size: raw.size,
            folder: raw.folder.is_some(),
            root: raw.root.is_some(),
            deleted: raw.deleted.is_some(),
            modified: raw.last_modified_date_time.map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// One delta page: its items in the order Graph sent them, and exactly one of the two links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPage {
    pub items: Vec<ItemState>,
    pub next: NextStep,
}

/// Where a walk goes after a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// `@odata.nextLink`: more pages now.
    Next(String),
    /// `@odata.deltaLink`: the walk is complete; keep this for next time.
    Done(String),
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(default)]
    value: Vec<RawItem>,
    #[serde(default, rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(default, rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

/// Why a delta page could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeltaError {
    /// 410 with a `resync…` code: restart with a full enumeration from `location` (§5.4).
    #[error("the delta token can no longer be served ({code}); a full resync is required")]
    Resync { code: String, location: Option<String> },
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("a delta page had neither a nextLink nor a deltaLink")]
    NoLink,
    #[error("a delta link points outside the configured Graph origin; refusing to follow it")]
    ForeignLink,
}

/// Parses a delta page body.
pub fn parse_page(body: &[u8]) -> Result<DeltaPage, DeltaError> {
    let raw: RawPage = serde_json::from_slice(body).map_err(|e| {
        DeltaError::Graph(GraphError::Decode {
            reason: format!("delta page: {e}"),
        })
    })?;
    let next = match (raw.next_link, raw.delta_link) {
        (Some(next), _) => NextStep::Next(next),
        (None, Some(delta)) => NextStep::Done(delta),
        (None, None) => return Err(DeltaError::NoLink),
    };
    Ok(DeltaPage {
        items: raw.value.into_iter().map(ItemState::from).collect(),
        next,
    })
}

/// Turns a Graph error into a resync when it is a 410 whose code (or an inner code) starts
/// with `resync`.
pub fn classify(error: GraphError, location: Option<String>) -> DeltaError {
    if let GraphError::Api {
        status: 410,
        code,
        inner_codes,
        ..
    } = &error
    {
        let resync = std::iter::once(code)
            .chain(inner_codes.iter())
            .find(|c| c.to_ascii_lowercase().starts_with("resync"));
        if let Some(code) = resync {
            return DeltaError::Resync {
                code: code.clone(),
                location,
            };
        }
    }
    DeltaError::Graph(error)
}

/// The first delta call of a drive: a full enumeration from its root.
pub fn initial_path(drive_id: &str) -> String {
    format!("drives/{drive_id}/root/delta")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_items_in_order_and_reads_the_facets_delta_sends() {
        let body = br#"{"value":[
            {"id":"c","name":"c.txt","eTag":"e1","cTag":"t1","size":5,"file":{},"parentReference":{"id":"p","driveId":"d"},"lastModifiedDateTime":"2026-11-22T10:00:00+01:00"},
            {"id":"p","name":"folder","folder":{"childCount":0},"parentReference":{"id":"r"}},
            {"id":"r","name":"root","folder":{},"root":{}},
            {"id":"gone","deleted":{},"parentReference":{"id":"p"}}
        ],"@odata.nextLink":"https://graph.example/v1.0/drives/d/root/delta(token='abc')"}"#;
        let page = parse_page(body).unwrap();
        let ids: Vec<_> = page.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["c", "p", "r", "gone"]);
        assert_eq!(page.items[0].parent_id.as_deref(), Some("p"));
        assert_eq!(
            page.items[0].modified,
            Some("2026-11-22T09:00:00Z".parse().unwrap())
        );
        assert!(page.items[1].folder && !page.items[1].root);
        assert!(page.items[2].root);
        assert!(page.items[3].deleted && page.items[3].name.is_none() && page.items[3].ctag.is_none());
        assert_eq!(
            page.next,
            NextStep::Next("https://graph.example/v1.0/drives/d/root/delta(token='abc')".into())
        );
    }

    #[test]
    fn the_last_page_carries_the_delta_link_and_a_page_with_no_link_is_an_error() {
        let page = parse_page(br#"{"value":[],"@odata.deltaLink":"https://g/x?token=1"}"#).unwrap();
        assert_eq!(page.next, NextStep::Done("https://g/x?token=1".into()));
        assert!(matches!(parse_page(br#"{"value":[]}"#), Err(DeltaError::NoLink)));
    }

    #[test]
    fn a_410_with_a_resync_code_anywhere_in_the_chain_is_a_resync() {
        let body = br#"{"error":{"code":"invalidRequest","message":"m","innerError":{"code":"resyncChangesApplyDifferences"}}}"#;
        let err = crate::graph::error_from_parts(reqwest::StatusCode::GONE, None, None, body);
        assert!(matches!(
            classify(err, Some("https://g/loc".into())),
            DeltaError::Resync { ref code, location: Some(ref l) } if code == "resyncChangesApplyDifferences" && l == "https://g/loc"
        ));
        let other = crate::graph::error_from_parts(
            reqwest::StatusCode::GONE,
            None,
            None,
            br#"{"error":{"code":"gone","message":"m"}}"#,
        );
        assert!(matches!(classify(other, None), DeltaError::Graph(_)));
    }
}
