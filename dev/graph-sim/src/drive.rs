//! Drives and their items: the state that change notifications (and the delta feed)
//! report on.
//!
//! Each drive keeps every item it ever had (deleted ones keep a `deleted` mark, as delta will need
//! them) and a change journal: an ordered list of (sequence, item id), one entry per item touched
//! by a change. Ids follow the real shapes: a personal drive id is 16 lowercase hex characters, a
//! business drive id is `b!` plus 64 base64url characters (graph-protocol.md §10 item 3 relies on
//! telling them apart).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::errors::SimError;

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn random_bytes(count: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(count + 16);
    while bytes.len() < count {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    bytes.truncate(count);
    bytes
}

fn random_from(alphabet: &[u8], count: usize) -> String {
    random_bytes(count)
        .into_iter()
        .map(|byte| char::from(alphabet[usize::from(byte) % alphabet.len()]))
        .collect()
}

/// A new drive id: 16 lowercase hex characters (personal) or `b!` + 64 base64url characters
/// (business).
pub fn new_drive_id(business: bool) -> String {
    if business {
        format!("b!{}", random_from(BASE64URL, 64))
    } else {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        hex[..16].to_owned()
    }
}

/// A position in a drive's change journal, as carried by a delta link's `token`: "every change
/// with a larger sequence number is new to whoever holds this". Opaque outside the simulator
/// (graph-protocol.md §5.1: links are followed verbatim); `token=latest` and the last page of a
/// delta walk hand out the current position, and a delta call with it serves the changes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaToken {
    pub drive_id: String,
    /// The last journal sequence already seen (0: nothing).
    pub seq: u64,
    /// The drive's token epoch when issued; expiring the drive's tokens moves the epoch, and a
    /// token of an older epoch is answered with 410 `resyncRequired` (§5.4).
    pub epoch: u64,
}

const DELTA_TOKEN_TAG: &str = "gsdelta2";
const DELTA_PAGE_TAG: &str = "gspage1";

fn b64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn b64_decode(token: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

impl DeltaToken {
    /// The opaque form: base64url of `gsdelta2:{epoch}:{seq}:{drive id}`.
    pub fn encode(&self) -> String {
        b64_encode(&format!(
            "{DELTA_TOKEN_TAG}:{}:{}:{}",
            self.epoch, self.seq, self.drive_id
        ))
    }

    /// Reads a token this simulator encoded; `None` for anything else.
    pub fn decode(token: &str) -> Option<Self> {
        let text = b64_decode(token)?;
        let mut parts = text.splitn(4, ':');
        if parts.next()? != DELTA_TOKEN_TAG {
            return None;
        }
        let epoch = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let drive_id = parts.next()?.to_owned();
        Some(Self { drive_id, seq, epoch })
    }
}

/// Where a delta walk is between two pages, as carried by a nextLink's `token`: which items the
/// walk covers (`since`: all live items when `None`, else the items changed after that journal
/// position and their ancestors), the journal position the final deltaLink will hold (`upto`, the
/// position when the walk started) and the last item id served (pages go in id order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaCursor {
    pub drive_id: String,
    pub epoch: u64,
    pub since: Option<u64>,
    pub upto: u64,
    /// The last id already served; empty before the first page.
    pub after: String,
}

impl DeltaCursor {
    /// The opaque form: base64url of `gspage1:{epoch}:{since or -}:{upto}:{after}:{drive id}`.
    pub fn encode(&self) -> String {
        let since = self.since.map_or_else(|| "-".to_owned(), |seq| seq.to_string());
        b64_encode(&format!(
            "{DELTA_PAGE_TAG}:{}:{since}:{}:{}:{}",
            self.epoch, self.upto, self.after, self.drive_id
        ))
    }

    /// Reads a cursor this simulator encoded; `None` for anything else.
    pub fn decode(token: &str) -> Option<Self> {
        let text = b64_decode(token)?;
        let mut parts = text.splitn(6, ':');
        if parts.next()? != DELTA_PAGE_TAG {
            return None;
        }
        let epoch = parts.next()?.parse().ok()?;
        let since = match parts.next()? {
            "-" => None,
            seq => Some(seq.parse().ok()?),
        };
        let upto = parts.next()?.parse().ok()?;
        let after = parts.next()?.to_owned();
        let drive_id = parts.next()?.to_owned();
        Some(Self {
            drive_id,
            epoch,
            since,
            upto,
            after,
        })
    }
}

/// One page of a delta walk: the items to serve, and the cursor of the next page (`None`: this
/// was the last page, the deltaLink follows).
#[derive(Debug, Clone)]
pub struct DeltaPage<'a> {
    pub items: Vec<&'a Item>,
    pub next: Option<DeltaCursor>,
}

/// One file or folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub id: String,
    pub drive_id: String,
    /// `None` only for the root.
    pub parent_id: Option<String>,
    pub name: String,
    /// Changes on every change to the item.
    pub etag: String,
    /// Changes only when the content changes (and on creation).
    pub ctag: String,
    pub size: u64,
    pub folder: bool,
    pub deleted: bool,
    /// Sim time of the last change.
    pub last_modified_date_time: DateTime<Utc>,
    /// The journal sequence of the last change.
    pub change_seq: u64,
    #[serde(skip)]
    etag_version: u64,
    #[serde(skip)]
    ctag_version: u64,
}

impl Item {
    fn bump(&mut self, content: bool, seq: u64, now: DateTime<Utc>) {
        self.etag_version += 1;
        self.etag = format!("{},{}", self.id, self.etag_version);
        if content {
            self.ctag_version += 1;
            self.ctag = format!("c:{},{}", self.id, self.ctag_version);
        }
        self.change_seq = seq;
        self.last_modified_date_time = now;
    }
}

/// One journal entry: the item touched by change number `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub item_id: String,
}

/// What a change touched: the items whose state changed, and the folders whose subtree lost or
/// gained an item. A subscription covering any of them is notified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The item as it is after the change (the one the caller named).
    pub item: Item,
    /// Items and former parents whose subscriptions must hear about it.
    pub touched: Vec<String>,
}

/// A drive with its items and change journal.
#[derive(Debug, Clone)]
pub struct Drive {
    pub id: String,
    pub owner_user_id: String,
    pub tenant_id: String,
    pub business: bool,
    pub root_id: String,
    items: HashMap<String, Item>,
    journal: Vec<JournalEntry>,
    next_seq: u64,
    next_item_number: u64,
    /// Delta tokens of an older epoch are expired (410 `resyncRequired`).
    delta_epoch: u64,
}

/// The fields a new item gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// The parent folder; the root when absent.
    #[serde(default)]
    pub parent_id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub folder: bool,
    #[serde(default)]
    pub size: u64,
}

/// A rename and/or move.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub parent_id: Option<String>,
}

impl Drive {
    /// A new drive holding only its root folder.
    pub fn new(owner_user_id: &str, tenant_id: &str, business: bool, now: DateTime<Utc>) -> Self {
        let id = new_drive_id(business);
        let mut drive = Self {
            id,
            owner_user_id: owner_user_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            business,
            root_id: String::new(),
            items: HashMap::new(),
            journal: Vec::new(),
            next_seq: 1,
            next_item_number: 101,
            delta_epoch: 0,
        };
        let root_id = drive.new_item_id();
        let mut root = Item {
            id: root_id.clone(),
            drive_id: drive.id.clone(),
            parent_id: None,
            name: "root".to_owned(),
            etag: String::new(),
            ctag: String::new(),
            size: 0,
            folder: true,
            deleted: false,
            last_modified_date_time: now,
            change_seq: 0,
            etag_version: 0,
            ctag_version: 0,
        };
        let seq = drive.journal_append(&root_id);
        root.bump(true, seq, now);
        drive.items.insert(root_id.clone(), root);
        drive.root_id = root_id;
        drive
    }

    /// Personal item ids look like `D4648F06C91D9D3D!101`; business ones like `01` + 32 base32
    /// characters.
    fn new_item_id(&mut self) -> String {
        if self.business {
            format!("01{}", random_from(BASE32, 32))
        } else {
            let number = self.next_item_number;
            self.next_item_number += 1;
            format!("{}!{number}", self.id.to_uppercase())
        }
    }

    fn journal_append(&mut self, item_id: &str) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.journal.push(JournalEntry {
            seq,
            item_id: item_id.to_owned(),
        });
        seq
    }

    /// The item, deleted or not.
    pub fn item(&self, id: &str) -> Option<&Item> {
        self.items.get(id)
    }

    /// How many live items a folder holds directly.
    pub fn child_count(&self, id: &str) -> usize {
        self.items
            .values()
            .filter(|item| !item.deleted && item.parent_id.as_deref() == Some(id))
            .count()
    }

    /// The change journal, oldest first.
    pub fn journal(&self) -> &[JournalEntry] {
        &self.journal
    }

    /// The sequence number the next change will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The drive's current journal position, what `delta?token=latest` hands out.
    pub fn latest_delta_token(&self) -> DeltaToken {
        DeltaToken {
            drive_id: self.id.clone(),
            seq: self.latest_seq(),
            epoch: self.delta_epoch,
        }
    }

    /// The sequence number of the last change (0: none).
    pub fn latest_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// The epoch delta tokens are issued in now.
    pub fn delta_epoch(&self) -> u64 {
        self.delta_epoch
    }

    /// Expires every delta token and cursor issued so far: they answer 410 from now on.
    pub fn expire_delta_tokens(&mut self) {
        self.delta_epoch += 1;
    }

    /// The first page of a walk: a full enumeration (`since` = `None`) or the changes after a
    /// journal position, ending at the current position.
    pub fn delta_start(&self, since: Option<u64>) -> DeltaCursor {
        DeltaCursor {
            drive_id: self.id.clone(),
            epoch: self.delta_epoch,
            since,
            upto: self.latest_seq(),
            after: String::new(),
        }
    }

    /// The ids a walk covers, in id order: every live item (full enumeration), or every item
    /// (deleted ones too) changed after `since` plus all the ancestors of each (graph-protocol.md
    /// §5.2: "we always return all of the items in the hierarchy above the modified items").
    /// Computed afresh on each page; whatever a change during the walk hides from it has a journal
    /// sequence after the walk's `upto`, so the next walk serves it.
    fn delta_ids(&self, since: Option<u64>) -> BTreeSet<&str> {
        let mut ids = BTreeSet::new();
        for item in self.items.values() {
            let wanted = match since {
                None => !item.deleted,
                Some(seq) => item.change_seq > seq,
            };
            if !wanted {
                continue;
            }
            ids.insert(item.id.as_str());
            if since.is_some() {
                let mut parent = item.parent_id.as_deref();
                for _ in 0..=self.items.len() {
                    let Some(parent_id) = parent else { break };
                    ids.insert(parent_id);
                    parent = self.items.get(parent_id).and_then(|p| p.parent_id.as_deref());
                }
            }
        }
        ids
    }

    /// The page of a walk that `cursor` points at, at most `page_size` items, each in its current
    /// state (latest state only, each id once per walk).
    pub fn delta_page(&self, cursor: &DeltaCursor, page_size: usize) -> DeltaPage<'_> {
        let page_size = page_size.max(1);
        let ids = self.delta_ids(cursor.since);
        let mut remaining = ids.range::<str, _>((
            std::ops::Bound::Excluded(cursor.after.as_str()),
            std::ops::Bound::Unbounded,
        ));
        let items: Vec<&Item> = remaining
            .by_ref()
            .take(page_size)
            .filter_map(|id| self.items.get(*id))
            .collect();
        let more = remaining.next().is_some();
        let next = match items.last() {
            Some(last) if more => Some(DeltaCursor {
                after: last.id.clone(),
                ..cursor.clone()
            }),
            _ => None,
        };
        DeltaPage { items, next }
    }

    fn live(&self, id: &str) -> Result<&Item, SimError> {
        match self.items.get(id) {
            Some(item) if !item.deleted => Ok(item),
            _ => Err(SimError::NotFound(format!(
                "item {id} not found in drive {}",
                self.id
            ))),
        }
    }

    fn live_folder(&self, id: &str) -> Result<&Item, SimError> {
        let item = self.live(id)?;
        if item.folder {
            Ok(item)
        } else {
            Err(SimError::BadRequest(format!("item {id} is not a folder")))
        }
    }

    /// True when `ancestor_id` is `item_id` or one of its ancestors.
    pub fn is_within(&self, item_id: &str, ancestor_id: &str) -> bool {
        let mut current = Some(item_id);
        // A parent chain is at most as long as the drive has items; the bound guards against a
        // cycle that a bug could create.
        for _ in 0..=self.items.len() {
            match current {
                Some(id) if id == ancestor_id => return true,
                Some(id) => current = self.items.get(id).and_then(|item| item.parent_id.as_deref()),
                None => return false,
            }
        }
        false
    }

    fn ensure_name_free(&self, parent_id: &str, name: &str, except: Option<&str>) -> Result<(), SimError> {
        let taken = self.items.values().any(|item| {
            !item.deleted
                && item.parent_id.as_deref() == Some(parent_id)
                && item.name.eq_ignore_ascii_case(name)
                && Some(item.id.as_str()) != except
        });
        if taken {
            Err(SimError::Conflict(format!(
                "an item named '{name}' already exists in folder {parent_id}"
            )))
        } else {
            Ok(())
        }
    }

    fn check_name(name: &str) -> Result<(), SimError> {
        if name.trim().is_empty() || name.contains('/') || name.contains('\\') {
            Err(SimError::BadRequest(format!("'{name}' is not a valid item name")))
        } else {
            Ok(())
        }
    }

    /// Creates a file or folder under `parent_id` (the root when `None`).
    pub fn create_item(&mut self, new: &NewItem, now: DateTime<Utc>) -> Result<Change, SimError> {
        let parent_id = new.parent_id.clone().unwrap_or_else(|| self.root_id.clone());
        self.live_folder(&parent_id)?;
        Self::check_name(&new.name)?;
        self.ensure_name_free(&parent_id, &new.name, None)?;
        let id = self.new_item_id();
        let mut item = Item {
            id: id.clone(),
            drive_id: self.id.clone(),
            parent_id: Some(parent_id),
            name: new.name.clone(),
            etag: String::new(),
            ctag: String::new(),
            size: if new.folder { 0 } else { new.size },
            folder: new.folder,
            deleted: false,
            last_modified_date_time: now,
            change_seq: 0,
            etag_version: 0,
            ctag_version: 0,
        };
        let seq = self.journal_append(&id);
        item.bump(true, seq, now);
        self.items.insert(id.clone(), item.clone());
        Ok(Change {
            item,
            touched: vec![id],
        })
    }

    /// Changes a file's content: new eTag and cTag, optionally a new size.
    pub fn modify_item(
        &mut self,
        id: &str,
        size: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Change, SimError> {
        if self.live(id)?.folder {
            return Err(SimError::BadRequest(format!(
                "item {id} is a folder; only files have content"
            )));
        }
        let seq = self.journal_append(id);
        let item = self
            .items
            .get_mut(id)
            .ok_or_else(|| SimError::NotFound(id.to_owned()))?;
        if let Some(size) = size {
            item.size = size;
        }
        item.bump(true, seq, now);
        Ok(Change {
            item: item.clone(),
            touched: vec![id.to_owned()],
        })
    }

    /// Renames and/or moves an item: a new eTag, the same cTag.
    pub fn update_item(
        &mut self,
        id: &str,
        update: &ItemUpdate,
        now: DateTime<Utc>,
    ) -> Result<Change, SimError> {
        if id == self.root_id {
            return Err(SimError::BadRequest(
                "the root cannot be renamed or moved".to_owned(),
            ));
        }
        let current = self.live(id)?.clone();
        let old_parent = current.parent_id.clone().unwrap_or_else(|| self.root_id.clone());
        let new_parent = update.parent_id.clone().unwrap_or_else(|| old_parent.clone());
        let new_name = update.name.clone().unwrap_or_else(|| current.name.clone());
        if update.name.is_none() && update.parent_id.is_none() {
            return Err(SimError::BadRequest(
                "give a new name, a new parent_id, or both".to_owned(),
            ));
        }
        Self::check_name(&new_name)?;
        self.live_folder(&new_parent)?;
        if self.is_within(&new_parent, id) {
            return Err(SimError::BadRequest(
                "a folder cannot be moved into itself".to_owned(),
            ));
        }
        self.ensure_name_free(&new_parent, &new_name, Some(id))?;
        let seq = self.journal_append(id);
        let item = self
            .items
            .get_mut(id)
            .ok_or_else(|| SimError::NotFound(id.to_owned()))?;
        item.name = new_name;
        item.parent_id = Some(new_parent);
        item.bump(false, seq, now);
        Ok(Change {
            item: item.clone(),
            touched: vec![id.to_owned(), old_parent],
        })
    }

    /// Deletes an item and, for a folder, everything under it. Each gets a journal entry.
    pub fn delete_item(&mut self, id: &str, now: DateTime<Utc>) -> Result<Change, SimError> {
        if id == self.root_id {
            return Err(SimError::BadRequest("the root cannot be deleted".to_owned()));
        }
        self.live(id)?;
        // Children first, so the journal lists a folder after its contents.
        let mut doomed: Vec<String> = self
            .items
            .values()
            .filter(|item| !item.deleted && item.id != id && self.is_within(&item.id, id))
            .map(|item| item.id.clone())
            .collect();
        doomed.sort();
        doomed.push(id.to_owned());
        for doomed_id in &doomed {
            let seq = self.journal_append(doomed_id);
            if let Some(item) = self.items.get_mut(doomed_id) {
                item.deleted = true;
                item.bump(false, seq, now);
            }
        }
        let item = self
            .items
            .get(id)
            .cloned()
            .ok_or_else(|| SimError::NotFound(id.to_owned()))?;
        Ok(Change {
            item,
            touched: vec![id.to_owned()],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(parent: Option<&str>, name: &str) -> NewItem {
        NewItem {
            parent_id: parent.map(str::to_owned),
            name: name.to_owned(),
            folder: false,
            size: 10,
        }
    }

    fn folder(parent: Option<&str>, name: &str) -> NewItem {
        NewItem {
            parent_id: parent.map(str::to_owned),
            name: name.to_owned(),
            folder: true,
            size: 0,
        }
    }

    #[test]
    fn a_delta_token_round_trips_and_tracks_the_journal() {
        let now = Utc::now();
        let mut drive = Drive::new("u", "t", true, now);
        let before = drive.latest_delta_token();
        drive.create_item(&file(None, "a.txt"), now).expect("create");
        let after = drive.latest_delta_token();
        assert_eq!(after.seq, before.seq + 1);
        assert_eq!(
            after.seq,
            drive.journal().last().map(|entry| entry.seq).unwrap_or_default()
        );
        assert_eq!(DeltaToken::decode(&after.encode()), Some(after.clone()));
        assert!(!after.encode().contains(&drive.id), "opaque");
        assert_eq!(DeltaToken::decode("latest"), None);
    }

    #[test]
    fn a_delta_cursor_round_trips_and_pages_in_id_order_without_repeats() {
        let now = Utc::now();
        let mut drive = Drive::new("u", "t", false, now);
        for n in 0..5 {
            drive
                .create_item(&file(None, &format!("{n}")), now)
                .expect("create");
        }
        let mut cursor = drive.delta_start(None);
        assert_eq!(DeltaCursor::decode(&cursor.encode()), Some(cursor.clone()));
        assert_eq!(DeltaToken::decode(&cursor.encode()), None);
        let mut seen = Vec::new();
        loop {
            let page = drive.delta_page(&cursor, 2);
            seen.extend(page.items.iter().map(|item| item.id.clone()));
            match page.next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!((seen.len(), sorted), (6, seen));
    }

    #[test]
    fn drive_ids_have_the_personal_and_business_shapes() {
        let personal = new_drive_id(false);
        assert_eq!(personal.len(), 16);
        assert!(
            personal
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let business = new_drive_id(true);
        assert!(business.starts_with("b!"));
        assert_eq!(business.len(), 66);
        assert!(
            business[2..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn modifying_content_changes_etag_and_ctag_but_renaming_changes_only_the_etag() {
        let now = Utc::now();
        let mut drive = Drive::new("u", "t", false, now);
        let created = drive.create_item(&file(None, "a.txt"), now).expect("create").item;
        let modified = drive
            .modify_item(&created.id, Some(20), now)
            .expect("modify")
            .item;
        assert_ne!(modified.etag, created.etag);
        assert_ne!(modified.ctag, created.ctag);
        assert_eq!(modified.size, 20);
        let renamed = drive
            .update_item(
                &created.id,
                &ItemUpdate {
                    name: Some("b.txt".to_owned()),
                    parent_id: None,
                },
                now,
            )
            .expect("rename")
            .item;
        assert_ne!(renamed.etag, modified.etag);
        assert_eq!(renamed.ctag, modified.ctag);
        assert!(renamed.change_seq > modified.change_seq);
    }

    #[test]
    fn deleting_a_folder_deletes_its_subtree_and_journals_each_item() {
        let now = Utc::now();
        let mut drive = Drive::new("u", "t", false, now);
        let docs = drive
            .create_item(&folder(None, "docs"), now)
            .expect("folder")
            .item;
        let inner = drive
            .create_item(&file(Some(&docs.id), "x"), now)
            .expect("file")
            .item;
        let before = drive.journal().len();
        drive.delete_item(&docs.id, now).expect("delete");
        assert_eq!(drive.journal().len(), before + 2);
        assert_eq!(
            drive.journal().last().map(|e| e.item_id.as_str()),
            Some(docs.id.as_str())
        );
        assert!(drive.item(&inner.id).is_some_and(|item| item.deleted));
        assert!(drive.modify_item(&inner.id, None, now).is_err());
    }

    #[test]
    fn a_folder_cannot_be_moved_into_its_own_subtree_and_names_are_unique_per_folder() {
        let now = Utc::now();
        let mut drive = Drive::new("u", "t", false, now);
        let a = drive.create_item(&folder(None, "a"), now).expect("a").item;
        let b = drive.create_item(&folder(Some(&a.id), "b"), now).expect("b").item;
        let into_child = ItemUpdate {
            name: None,
            parent_id: Some(b.id.clone()),
        };
        assert!(matches!(
            drive.update_item(&a.id, &into_child, now),
            Err(SimError::BadRequest(_))
        ));
        assert!(matches!(
            drive.create_item(&folder(None, "A"), now),
            Err(SimError::Conflict(_))
        ));
        assert!(drive.is_within(&b.id, &drive.root_id.clone()));
        assert!(!drive.is_within(&a.id, &b.id));
    }
}
