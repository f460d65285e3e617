//! `graphfeed changes`: reads change events from `GET /changes?after=<cursor>&limit=<n>`, page
//! after page while `more` says another is ready, printing each on one line; `--follow` keeps
//! polling from the last cursor until Ctrl-C, through a busy or unreachable API. Nothing is remembered between runs: `--after` says
//! where to start, and the last cursor is printed for the next run.
//!
//! Events follow README "Change events" (version 1). Readers ignore unknown fields, and an event
//! this version cannot read is printed as its JSON rather than dropped.

use std::cell::Cell;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::api::Api;
use crate::console::Console;
use crate::error::Error;

/// The fields of a change event this client shows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeEvent {
    pub sequence: u64,
    pub change: String,
    #[serde(default)]
    pub update: Option<String>,
    #[serde(default)]
    pub item_id: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub previous_path: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
}

impl ChangeEvent {
    /// `#42 created /Documents/a.txt (file, 25 MiB)`, `#43 renamed /a.txt -> /b.txt (file, 5 B)`,
    /// `#44 updated (content) /b.txt (file, 6 B)`, `#1 baseline-complete`.
    pub fn line(&self) -> String {
        let mut line = format!("#{} {}", self.sequence, self.change);
        if let Some(update) = &self.update {
            line.push_str(&format!(" ({update})"));
        }
        let target = self
            .path
            .clone()
            .or_else(|| self.name.clone())
            .or_else(|| self.item_id.as_ref().map(|id| format!("item {id}")));
        if let Some(target) = target {
            match &self.previous_path {
                Some(previous) => line.push_str(&format!(" {previous} -> {target}")),
                None => line.push_str(&format!(" {target}")),
            }
        }
        let details: Vec<String> = self
            .kind
            .iter()
            .cloned()
            .chain(self.size.map(human_size))
            .collect();
        if !details.is_empty() {
            line.push_str(&format!(" ({})", details.join(", ")));
        }
        line
    }
}

/// `25 MiB`, `1.5 KiB`, `5 B`: binary units, one decimal unless whole.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)] // a size to show, not to compute with
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// One page of `GET /changes`.
#[derive(Debug, Deserialize)]
struct Page {
    events: Vec<Value>,
    next: u64,
    #[serde(default)]
    more: bool,
}

/// What to read and how to show it.
#[derive(Debug, Clone)]
pub struct ChangesRequest {
    pub after: u64,
    pub limit: u16,
    pub follow: bool,
    pub interval: Duration,
    pub json: bool,
}

/// Prints events after `request.after`; returns the cursor to continue from. With `follow`,
/// Ctrl-C ends it cleanly at any moment (during a request too), returning the last cursor.
pub async fn read(
    api: &mut Api<'_, '_>,
    request: &ChangesRequest,
    console: &mut Console<'_>,
) -> Result<u64, Error> {
    let cursor = Cell::new(request.after);
    if !request.follow {
        return pages(api, request, &cursor, console).await;
    }
    tokio::select! {
        result = pages(api, request, &cursor, console) => result,
        _ = tokio::signal::ctrl_c() => Ok(cursor.get()),
    }
}

/// Reads page after page from `cursor`, moving it after each page; with `follow`, never ends on
/// its own.
async fn pages(
    api: &mut Api<'_, '_>,
    request: &ChangesRequest,
    cursor: &Cell<u64>,
    console: &mut Console<'_>,
) -> Result<u64, Error> {
    loop {
        let answer = match api
            .call(
                Method::GET,
                "/changes",
                &[
                    ("after", cursor.get().to_string()),
                    ("limit", request.limit.to_string()),
                ],
                console,
            )
            .await
        {
            Ok(answer) => answer,
            // Following, a busy or unreachable API is a pause, not the end: say so and poll on.
            Err(e @ (Error::Busy { .. } | Error::Unreachable { .. })) if request.follow => {
                console.note(format!(
                    "{e}; still following, next try in {} s",
                    request.interval.as_secs().max(1)
                ));
                tokio::time::sleep(request.interval).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let page: Page = serde_json::from_value(answer.body).map_err(|e| Error::BadAnswer {
            service: "graphfeed's API",
            detail: format!("GET /changes did not answer a page of events ({e})"),
        })?;
        for event in &page.events {
            console.line(render(event, request.json))?;
        }
        // A page that says `more` but moved nowhere would loop at full speed: wait instead.
        let stuck = page.events.is_empty() && page.next == cursor.get();
        cursor.set(page.next);
        if page.more && !stuck {
            continue;
        }
        if !request.follow {
            return Ok(cursor.get());
        }
        tokio::time::sleep(request.interval).await;
    }
}

/// One event as a line: its JSON with `--json`, else [`ChangeEvent::line`] (or its JSON when it
/// cannot be read as an event).
fn render(event: &Value, json: bool) -> String {
    if json {
        return event.to_string();
    }
    match serde_json::from_value::<ChangeEvent>(event.clone()) {
        Ok(parsed) => parsed.line(),
        Err(_) => event.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn event(value: Value) -> ChangeEvent {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_created_file_reads_as_sequence_change_path_kind_and_size() {
        let line = event(json!({
            "v": 1, "driveId": "d", "sequence": 42, "change": "created", "itemId": "i",
            "path": "/Documents/a.txt", "name": "a.txt", "kind": "file", "size": 26_214_400u64,
            "somethingNew": true
        }))
        .line();
        assert_eq!(line, "#42 created /Documents/a.txt (file, 25 MiB)");
    }

    #[test]
    fn a_rename_shows_both_paths_and_an_update_its_kind() {
        let renamed = event(json!({"sequence": 3, "change": "renamed", "path": "/b.txt",
            "previousPath": "/a.txt", "kind": "file", "size": 5}));
        assert_eq!(renamed.line(), "#3 renamed /a.txt -> /b.txt (file, 5 B)");
        let updated = event(json!({"sequence": 4, "change": "updated", "update": "content",
            "path": "/b.txt", "kind": "file", "size": 1536}));
        assert_eq!(updated.line(), "#4 updated (content) /b.txt (file, 1.5 KiB)");
    }

    #[test]
    fn a_marker_is_its_sequence_and_name_alone() {
        let marker = event(json!({"v": 1, "driveId": "d", "sequence": 1, "change": "baseline-complete"}));
        assert_eq!(marker.line(), "#1 baseline-complete");
    }

    #[test]
    fn an_item_without_a_path_is_named_by_its_name_or_id() {
        let deleted = event(json!({"sequence": 9, "change": "deleted", "itemId": "ABC!1", "kind": "folder"}));
        assert_eq!(deleted.line(), "#9 deleted item ABC!1 (folder)");
    }

    #[test]
    fn json_output_is_the_event_verbatim_and_an_unreadable_event_is_shown_as_json() {
        let raw = json!({"sequence": 7, "change": "created", "extra": {"x": 1}});
        assert_eq!(render(&raw, true), raw.to_string());
        let odd = json!({"change": "created"});
        assert_eq!(render(&odd, false), odd.to_string());
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1 KiB");
        assert_eq!(human_size(10 * 1024 * 1024), "10 MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
