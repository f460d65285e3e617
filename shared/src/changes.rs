//! Change events: what downstream services consume, and how they are derived from delta.
//!
//! A walk stages what delta said (graph-protocol.md §5.2: latest state only, the same id may
//! repeat and the last occurrence wins, parents may come after their children, no
//! `parentReference.path`). When the walk reaches its deltaLink, [`derive`] compares the staged
//! items with the drive's item index and yields one event per real change, with paths rebuilt
//! from parent ids. The derivation is a pure function of (staged items in order, index): a replay
//! of the same walk derives the same events in the same order, which is what lets the change log
//! assign each event its sequence number exactly once.
//!
//! The event (version 1, JSON, camelCase as Graph names the fields) is documented in the README
//! ("Change events"); [`ChangeEvent`] is its one definition.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::delta::ItemState;

/// The change-event version this code writes.
pub const EVENT_VERSION: u32 = 1;

/// What happened. Markers (`baseline-complete`, `resync-started`, `resync-finished`) carry no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Created,
    /// Content (`cTag` changed) or metadata (`eTag` only): see [`ChangeEvent::update`].
    Updated,
    Renamed,
    Moved,
    Deleted,
    BaselineComplete,
    ResyncStarted,
    ResyncFinished,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Renamed => "renamed",
            Change::Moved => "moved",
            Change::Deleted => "deleted",
            Change::BaselineComplete => "baseline-complete",
            Change::ResyncStarted => "resync-started",
            Change::ResyncFinished => "resync-finished",
        }
    }
}

/// For `updated`: what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Update {
    /// The content changed (`cTag` moved; without a `cTag`, the `eTag` of a file moved).
    Content,
    /// Only metadata changed (`eTag` moved, `cTag` the same).
    Metadata,
}

/// `file` or `folder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemKind {
    File,
    Folder,
}

/// One change event: a log entry and a message on the changes queue.
///
/// Idempotency key: (`driveId`, `sequence`). A replayed event carries its original sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeEvent {
    pub v: u32,
    pub drive_id: String,
    /// Per drive, from 1, gap-free, never reused (kept across reconnects).
    pub sequence: u64,
    pub change: Change,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// `/folder/name.txt` from the drive root; absent when a parent is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For `renamed` and `moved`: the path before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ItemKind>,
    #[serde(default, rename = "eTag", skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, rename = "cTag", skip_serializing_if = "Option::is_none")]
    pub ctag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_date_time: Option<DateTime<Utc>>,
}

impl ChangeEvent {
    /// A marker event (no item).
    pub fn marker(drive_id: &str, change: Change) -> Self {
        Self {
            v: EVENT_VERSION,
            drive_id: drive_id.to_owned(),
            sequence: 0,
            change,
            update: None,
            item_id: None,
            parent_id: None,
            path: None,
            previous_path: None,
            name: None,
            kind: None,
            etag: None,
            ctag: None,
            size: None,
            last_modified_date_time: None,
        }
    }

    fn about(drive_id: &str, change: Change, item: &ItemState, path: Option<String>) -> Self {
        Self {
            item_id: Some(item.id.clone()),
            parent_id: item.parent_id.clone(),
            path,
            name: item.name.clone(),
            kind: Some(if item.folder {
                ItemKind::Folder
            } else {
                ItemKind::File
            }),
            etag: item.etag.clone(),
            ctag: item.ctag.clone(),
            size: item.size,
            last_modified_date_time: item.modified,
            ..Self::marker(drive_id, change)
        }
    }

    /// The idempotency key downstream services deduplicate on: `<driveId>:<sequence>`.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.drive_id, self.sequence)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("an event always serialises"))
    }
}

/// The staged items of a walk, reduced to the last occurrence of each id, in the order of those
/// last occurrences.
pub fn last_occurrences(staged: impl IntoIterator<Item = ItemState>) -> Vec<ItemState> {
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut items: Vec<Option<ItemState>> = Vec::new();
    for item in staged {
        if let Some(previous) = position.get(&item.id).copied()
            && let Some(slot) = items.get_mut(previous)
        {
            *slot = None;
        }
        position.insert(item.id.clone(), items.len());
        items.push(Some(item));
    }
    items.into_iter().flatten().collect()
}

/// The parent ids a derivation needs from the index beyond `ids`: ask the index for them, then
/// for the parents of what it returned, until nothing new is needed.
pub fn missing_ancestors<'a>(
    known: impl Fn(&str) -> bool,
    items: impl IntoIterator<Item = &'a ItemState>,
) -> HashSet<String> {
    items
        .into_iter()
        .filter_map(|i| i.parent_id.as_deref())
        .filter(|p| !known(p))
        .map(str::to_owned)
        .collect()
}

/// The deepest folder nesting graphfeed follows when it rebuilds a path (OneDrive's own limit is
/// far lower); beyond it, or on a cycle, the path is left out.
const MAX_DEPTH: usize = 512;

/// A view of the drive: `new` (staged over index) or `old` (index only).
struct View<'a> {
    staged: Option<&'a HashMap<&'a str, &'a ItemState>>,
    index: &'a HashMap<String, ItemState>,
}

impl View<'_> {
    fn get(&self, id: &str) -> Option<&ItemState> {
        self.staged
            .and_then(|s| s.get(id).copied())
            .or_else(|| self.index.get(id))
            .filter(|i| !i.deleted)
    }

    /// `/a/b/name`, from parent ids; `None` when an ancestor is unknown.
    fn path(&self, item: &ItemState) -> Option<String> {
        if item.root {
            return Some("/".to_owned());
        }
        let mut names = vec![item.name.clone()?];
        let mut parent = item.parent_id.clone();
        for _ in 0..MAX_DEPTH {
            let id = parent?;
            let p = self.get(&id)?;
            if p.root {
                names.reverse();
                return Some(format!("/{}", names.join("/")));
            }
            names.push(p.name.clone()?);
            parent = p.parent_id.clone();
        }
        None
    }

    fn depth(&self, item: &ItemState) -> usize {
        let mut depth = 0;
        let mut parent = item.parent_id.clone();
        while let Some(id) = parent {
            depth += 1;
            if depth >= MAX_DEPTH {
                break;
            }
            parent = self.get(&id).and_then(|p| p.parent_id.clone());
        }
        depth
    }
}

/// Derives a walk's change events (without sequence numbers).
///
/// - `staged`: the walk's items, reduced with [`last_occurrences`];
/// - `index`: the index entries of those items and of every ancestor either view needs (see
///   [`missing_ancestors`]); for a resync, the whole index;
/// - `resync`: the walk was a full enumeration after a 410: index items it did not return are
///   deleted, and the events are framed by `resync-started` and `resync-finished`.
///
/// Order: creations and updates parents first, then deletes children first.
pub fn derive(
    drive_id: &str,
    staged: &[ItemState],
    index: &HashMap<String, ItemState>,
    resync: bool,
) -> Vec<ChangeEvent> {
    let staged_map: HashMap<&str, &ItemState> = staged.iter().map(|i| (i.id.as_str(), i)).collect();
    let new = View {
        staged: Some(&staged_map),
        index,
    };
    let old = View { staged: None, index };
    let mut upserts: Vec<(usize, usize, ChangeEvent)> = Vec::new();
    let mut deletes: Vec<(usize, usize, ChangeEvent)> = Vec::new();
    for (position, item) in staged.iter().enumerate() {
        if item.root {
            continue;
        }
        let before = old.get(&item.id);
        if item.deleted {
            if let Some(before) = before {
                let mut gone = before.clone();
                gone.etag = item.etag.clone().or(gone.etag);
                gone.modified = item.modified.or(gone.modified);
                deletes.push((
                    old.depth(before),
                    position,
                    ChangeEvent::about(drive_id, Change::Deleted, &gone, old.path(before)),
                ));
            }
            continue;
        }
        let depth = new.depth(item);
        let path = new.path(item);
        let Some(before) = before else {
            upserts.push((
                depth,
                position,
                ChangeEvent::about(drive_id, Change::Created, item, path),
            ));
            continue;
        };
        let moved = item.parent_id.is_some() && item.parent_id != before.parent_id;
        let renamed = item.name.is_some() && item.name != before.name;
        if moved || renamed {
            let mut event = ChangeEvent::about(
                drive_id,
                if moved { Change::Moved } else { Change::Renamed },
                item,
                path.clone(),
            );
            event.previous_path = old.path(before);
            upserts.push((depth, position, event));
        }
        let content = match (&before.ctag, &item.ctag) {
            (Some(a), Some(b)) => a != b,
            // No cTag to compare (business drives omit it): a file whose eTag moved may have new content.
            _ => !item.folder && before.etag != item.etag && !(moved || renamed),
        };
        let update = if content {
            Some(Update::Content)
        } else if !(moved || renamed) && before.etag != item.etag {
            Some(Update::Metadata)
        } else {
            None
        };
        if let Some(update) = update {
            let mut event = ChangeEvent::about(drive_id, Change::Updated, item, path);
            event.update = Some(update);
            upserts.push((depth, position, event));
        }
    }
    if resync {
        let mut unseen: Vec<&ItemState> = index
            .values()
            .filter(|i| !i.deleted && !i.root && !staged_map.contains_key(i.id.as_str()))
            .collect();
        unseen.sort_by(|a, b| a.id.cmp(&b.id));
        for item in unseen {
            deletes.push((
                old.depth(item),
                staged.len(),
                ChangeEvent::about(drive_id, Change::Deleted, item, old.path(item)),
            ));
        }
    }
    upserts.sort_by_key(|(depth, position, _)| (*depth, *position));
    deletes.sort_by_key(|(depth, position, _)| (std::cmp::Reverse(*depth), *position));
    let mut events = Vec::with_capacity(upserts.len() + deletes.len() + 2);
    if resync {
        events.push(ChangeEvent::marker(drive_id, Change::ResyncStarted));
    }
    events.extend(upserts.into_iter().map(|(_, _, e)| e));
    events.extend(deletes.into_iter().map(|(_, _, e)| e));
    if resync {
        events.push(ChangeEvent::marker(drive_id, Change::ResyncFinished));
    }
    events
}

/// What the index holds after a walk: each staged item's new state (deleted ones marked).
/// For a resync, index items the enumeration did not return are marked deleted too.
pub fn index_updates(
    staged: &[ItemState],
    index: &HashMap<String, ItemState>,
    resync: bool,
) -> Vec<ItemState> {
    let mut updates: Vec<ItemState> = staged
        .iter()
        .map(|item| {
            if item.deleted {
                // Keep what the index knew (name, parent) for a later path; mark it deleted.
                let mut gone = index.get(&item.id).cloned().unwrap_or_else(|| item.clone());
                gone.deleted = true;
                gone.etag = item.etag.clone().or(gone.etag);
                gone
            } else {
                item.clone()
            }
        })
        .collect();
    if resync {
        let seen: HashSet<&str> = staged.iter().map(|i| i.id.as_str()).collect();
        let mut unseen: Vec<ItemState> = index
            .values()
            .filter(|i| !i.deleted && !seen.contains(i.id.as_str()))
            .map(|i| ItemState {
                deleted: true,
                ..i.clone()
            })
            .collect();
        unseen.sort_by(|a, b| a.id.cmp(&b.id));
        updates.extend(unseen);
    }
    updates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, parent: Option<&str>, name: &str, etag: &str, ctag: &str) -> ItemState {
        ItemState {
            id: id.into(),
            parent_id: parent.map(Into::into),
            name: Some(name.into()),
            etag: Some(etag.into()),
            ctag: Some(ctag.into()),
            size: Some(1),
            folder: false,
            root: false,
            deleted: false,
            modified: None,
        }
    }

    fn folder(id: &str, parent: Option<&str>, name: &str, etag: &str) -> ItemState {
        ItemState {
            folder: true,
            root: parent.is_none(),
            ..item(id, parent, name, etag, "c")
        }
    }

    fn index(items: &[ItemState]) -> HashMap<String, ItemState> {
        items.iter().map(|i| (i.id.clone(), i.clone())).collect()
    }

    type Summary = (Change, Option<Update>, Option<String>, Option<String>);

    fn summary(events: &[ChangeEvent]) -> Vec<Summary> {
        events
            .iter()
            .map(|e| (e.change, e.update, e.path.clone(), e.previous_path.clone()))
            .collect()
    }

    fn base() -> Vec<ItemState> {
        vec![
            folder("r", None, "root", "r1"),
            folder("a", Some("r"), "A", "a1"),
            folder("b", Some("r"), "B", "b1"),
            item("f", Some("a"), "f.txt", "f1", "fc1"),
        ]
    }

    #[test]
    fn a_new_item_whose_parent_arrives_after_it_is_created_with_the_full_path() {
        let staged = last_occurrences(vec![
            item("n", Some("d"), "n.txt", "n1", "nc1"),
            folder("d", Some("a"), "D", "d1"),
            folder("a", Some("r"), "A", "a1"),
        ]);
        let events = derive("drive", &staged, &index(&base()), false);
        assert_eq!(
            summary(&events),
            vec![
                (Change::Created, None, Some("/A/D".into()), None),
                (Change::Created, None, Some("/A/D/n.txt".into()), None),
            ]
        );
    }

    #[test]
    fn rename_move_content_and_metadata_changes_each_get_their_event() {
        let idx = index(&base());
        let renamed = derive("d", &[item("f", Some("a"), "g.txt", "f2", "fc1")], &idx, false);
        assert_eq!(
            summary(&renamed),
            vec![(
                Change::Renamed,
                None,
                Some("/A/g.txt".into()),
                Some("/A/f.txt".into())
            )]
        );
        let moved = derive("d", &[item("f", Some("b"), "f.txt", "f2", "fc1")], &idx, false);
        assert_eq!(
            summary(&moved),
            vec![(
                Change::Moved,
                None,
                Some("/B/f.txt".into()),
                Some("/A/f.txt".into())
            )]
        );
        let content = derive("d", &[item("f", Some("a"), "f.txt", "f2", "fc2")], &idx, false);
        assert_eq!(
            summary(&content),
            vec![(
                Change::Updated,
                Some(Update::Content),
                Some("/A/f.txt".into()),
                None
            )]
        );
        let metadata = derive("d", &[item("f", Some("a"), "f.txt", "f2", "fc1")], &idx, false);
        assert_eq!(
            summary(&metadata),
            vec![(
                Change::Updated,
                Some(Update::Metadata),
                Some("/A/f.txt".into()),
                None
            )]
        );
    }

    #[test]
    fn an_ancestor_sent_again_unchanged_yields_nothing() {
        let events = derive("d", &[folder("a", Some("r"), "A", "a1")], &index(&base()), false);
        assert!(events.is_empty());
    }

    #[test]
    fn the_last_occurrence_of_a_repeated_item_wins() {
        let staged = last_occurrences(vec![
            item("f", Some("a"), "old.txt", "f2", "fc1"),
            item("f", Some("a"), "new.txt", "f3", "fc1"),
        ]);
        assert_eq!(staged.len(), 1);
        let events = derive("d", &staged, &index(&base()), false);
        assert_eq!(events[0].name.as_deref(), Some("new.txt"));
    }

    #[test]
    fn a_delete_without_a_name_takes_its_path_from_the_index_and_an_unknown_delete_is_silent() {
        let mut gone = item("f", None, "", "f9", "");
        gone.name = None;
        gone.ctag = None;
        gone.deleted = true;
        let mut unknown = gone.clone();
        unknown.id = "never-seen".into();
        let events = derive("d", &[gone, unknown], &index(&base()), false);
        assert_eq!(
            summary(&events),
            vec![(Change::Deleted, None, Some("/A/f.txt".into()), None)]
        );
        assert_eq!(events[0].name.as_deref(), Some("f.txt"));
    }

    #[test]
    fn a_resync_deletes_what_the_enumeration_did_not_return_between_markers() {
        let staged = vec![folder("r", None, "root", "r1"), folder("a", Some("r"), "A", "a1")];
        let idx = index(&base());
        let events = derive("d", &staged, &idx, true);
        assert_eq!(
            summary(&events),
            vec![
                (Change::ResyncStarted, None, None, None),
                (Change::Deleted, None, Some("/A/f.txt".into()), None),
                (Change::Deleted, None, Some("/B".into()), None),
                (Change::ResyncFinished, None, None, None),
            ]
        );
        let updates = index_updates(&staged, &idx, true);
        let deleted: Vec<_> = updates
            .iter()
            .filter(|i| i.deleted)
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(deleted, ["b", "f"]);
    }

    #[test]
    fn the_derivation_is_deterministic_for_a_replay() {
        let staged = vec![
            item("x", Some("a"), "x", "x1", "xc"),
            item("y", Some("b"), "y", "y1", "yc"),
            item("f", Some("b"), "f.txt", "f2", "fc2"),
        ];
        let idx = index(&base());
        assert_eq!(
            derive("d", &staged, &idx, false),
            derive("d", &staged, &idx, false)
        );
    }

    #[test]
    fn without_ctags_a_file_whose_etag_moved_is_reported_as_a_content_update() {
        let mut before = item("f", Some("a"), "f.txt", "f1", "");
        before.ctag = None;
        let mut after = before.clone();
        after.etag = Some("f2".into());
        let mut idx = index(&base());
        idx.insert("f".into(), before);
        let events = derive("d", &[after], &idx, false);
        assert_eq!(events[0].update, Some(Update::Content));
    }
}
