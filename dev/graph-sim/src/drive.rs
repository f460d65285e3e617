//! Drives and their items: the state that change notifications and the delta feed report on.
//!
//! Each drive keeps every item it ever had (deleted ones keep a `deleted` mark, as delta needs
//! them) and a change journal: an ordered list of (sequence, item id), one entry per item touched
//! by a change. Ids follow the real shapes: a personal drive id is 16 lowercase hex characters, a
//! business drive id is `b!` plus 64 base64url characters (graph-protocol.md §10 item 3 relies on
//! telling them apart).
//!
//! Items live in a vector indexed by id (a "slot" per item, never reused), so a delta walk can be
//! planned once and then served page by page without rescanning the drive: a walk's plan
//! ([`crate::delta`]) is made when its first page is asked for and kept, per drive, for the last
//! [`WALKS_KEPT`] walks. A later page whose plan was forgotten is planned again if the drive has not
//! changed since the walk started, and is otherwise answered 410 `resyncRequired` (§5.4).
//! [`Drive::populate`] bulk-creates a seeded tree (100,000 items in well under a second in release
//! builds) for benchmarks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::delta::{DeltaQuirks, WalkPlan, shape_walk};
use crate::errors::SimError;
use crate::rng::{Rng, stable_hash};

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
const DELTA_PAGE_TAG: &str = "gspage2";

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
/// position when the walk started), the page asked for, and the quirks the walk was planned with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaCursor {
    pub drive_id: String,
    pub epoch: u64,
    pub since: Option<u64>,
    pub upto: u64,
    /// The last id already served; empty before the first page (informative only).
    pub after: String,
    /// The page of the walk this cursor asks for (0: the first).
    pub page: usize,
    /// The journal position through which changes made during the walk were already served again
    /// (`repeat_items`); `upto` at first.
    pub seen: u64,
    /// The quirks the walk is planned with; `page_size` is fixed once the walk starts.
    pub quirks: DeltaQuirks,
}

impl DeltaCursor {
    /// The opaque form: base64url of
    /// `gspage2:{epoch}:{since or -}:{upto}:{page}:{seen}:{page size or -}:{quirk bits}:{seed}:{after}:{drive id}`.
    pub fn encode(&self) -> String {
        let dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
        let since = dash(self.since.map(|seq| seq.to_string()));
        let page_size = dash(self.quirks.page_size.map(|size| size.to_string()));
        b64_encode(&format!(
            "{DELTA_PAGE_TAG}:{}:{since}:{}:{}:{}:{page_size}:{}:{}:{}:{}",
            self.epoch,
            self.upto,
            self.page,
            self.seen,
            self.quirks.bits(),
            self.quirks.seed,
            self.after,
            self.drive_id
        ))
    }

    /// Reads a cursor this simulator encoded; `None` for anything else.
    pub fn decode(token: &str) -> Option<Self> {
        let text = b64_decode(token)?;
        let mut parts = text.splitn(11, ':');
        if parts.next()? != DELTA_PAGE_TAG {
            return None;
        }
        let epoch = parts.next()?.parse().ok()?;
        let since = match parts.next()? {
            "-" => None,
            seq => Some(seq.parse().ok()?),
        };
        let upto = parts.next()?.parse().ok()?;
        let page = parts.next()?.parse().ok()?;
        let seen = parts.next()?.parse().ok()?;
        let page_size = match parts.next()? {
            "-" => None,
            size => Some(size.parse().ok()?),
        };
        let bits = parts.next()?.parse().ok()?;
        let seed = parts.next()?.parse().ok()?;
        let after = parts.next()?.to_owned();
        let drive_id = parts.next()?.to_owned();
        let quirks = DeltaQuirks {
            seed,
            page_size,
            ..DeltaQuirks::default()
        }
        .with_bits(bits);
        Some(Self {
            drive_id,
            epoch,
            since,
            upto,
            after,
            page,
            seen,
            quirks,
        })
    }
}

/// One page of a delta walk.
#[derive(Debug, Clone)]
pub struct DeltaPage<'a> {
    /// The planned items of the page, in plan order (id order unless `child_before_parent`), each
    /// in its current state. Graph's answer lists them reversed unless `child_before_parent`.
    pub items: Vec<&'a Item>,
    /// Items served on an earlier page of this walk and changed since (`repeat_items` only), in
    /// their new state; they follow `items` in the answer.
    pub repeated: Vec<&'a Item>,
    /// The cursor of the next page; `None` on the last page.
    pub next: Option<DeltaCursor>,
    /// On the last page: the position the deltaLink holds (where the walk started).
    pub delta_token: Option<DeltaToken>,
}

/// A later page of a walk whose plan is gone and whose drive changed since it started: it cannot
/// be served consistently any more (410 `resyncRequired`, §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the delta walk can no longer be served")]
pub struct WalkLost;

/// How many planned walks a drive keeps.
pub const WALKS_KEPT: usize = 16;

/// What identifies a walk's plan: the same key on an unchanged drive always plans the same walk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WalkKey {
    epoch: u64,
    since: Option<u64>,
    upto: u64,
    quirks: DeltaQuirks,
}

impl WalkKey {
    fn of(cursor: &DeltaCursor) -> Self {
        Self {
            epoch: cursor.epoch,
            since: cursor.since,
            upto: cursor.upto,
            quirks: cursor.quirks,
        }
    }
}

/// The last [`WALKS_KEPT`] plans of a drive, most recently used last, and how many walks were
/// planned. Behind a mutex so serving a page needs only `&Drive` (the state lock already
/// serialises access). A cloned drive starts with an empty cache, as its items may diverge from
/// the original's.
#[derive(Default)]
struct WalkCache(Mutex<Walks>);

#[derive(Default)]
struct Walks {
    plans: VecDeque<(WalkKey, Arc<WalkPlan>)>,
    planned: u64,
}

impl WalkCache {
    fn walks(&self) -> std::sync::MutexGuard<'_, Walks> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, key: &WalkKey) -> Option<Arc<WalkPlan>> {
        let mut walks = self.walks();
        let index = walks.plans.iter().position(|(known, _)| known == key)?;
        let entry = walks.plans.remove(index)?;
        let plan = entry.1.clone();
        walks.plans.push_back(entry);
        Some(plan)
    }

    fn put(&self, key: WalkKey, plan: Arc<WalkPlan>) {
        let mut walks = self.walks();
        walks.planned += 1;
        walks.plans.retain(|(known, _)| *known != key);
        walks.plans.push_back((key, plan));
        while walks.plans.len() > WALKS_KEPT {
            walks.plans.pop_front();
        }
    }

    /// Forgets every plan, keeping the count.
    fn forget(&self) {
        self.walks().plans.clear();
    }
}

impl Clone for WalkCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for WalkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let walks = self.walks();
        write!(
            f,
            "WalkCache({} plans kept, {} planned)",
            walks.plans.len(),
            walks.planned
        )
    }
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
    /// The SHA-256 of the content (uppercase hex, as Graph's `file.hashes.sha256Hash`), for files
    /// whose content came through Graph (a simple upload or an upload session); `None` for
    /// folders, files made by the control API or a populate, and after a control-API modify.
    pub sha256: Option<String>,
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
    /// Every item ever created, by slot (never reused).
    items: Vec<Item>,
    /// Item id → slot.
    index: HashMap<String, u32>,
    journal: Vec<JournalEntry>,
    next_seq: u64,
    next_item_number: u64,
    /// Delta tokens of an older epoch are expired (410 `resyncRequired`).
    delta_epoch: u64,
    /// Numbers the names of populated items, so repeated populates never collide.
    populated: u64,
    walks: WalkCache,
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

/// What to do when an uploaded file's name is taken in its folder
/// (`@microsoft.graph.conflictBehavior`): the default is `replace` for a simple upload (`PUT
/// …/content`) and `fail` for an upload session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictBehavior {
    Fail,
    Replace,
    Rename,
}

impl ConflictBehavior {
    /// `fail`, `replace` or `rename`, in any case.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "fail" => Some(Self::Fail),
            "replace" => Some(Self::Replace),
            "rename" => Some(Self::Rename),
            _ => None,
        }
    }
}

/// An uploaded file's content as the simulator keeps it: its length and SHA-256 (uppercase hex),
/// never the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub size: u64,
    pub sha256: String,
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

/// Most items one [`Drive::populate`] may create.
pub const POPULATE_MAX: usize = 2_000_000;

/// A bulk-populate request ([`crate::Sim::populate`], `POST /_sim/drives/{id}/populate`): this
/// many files and folders in a random tree under the root. The tree's shape, names and sizes
/// follow from `seed`; business item ids are random.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Populate {
    pub files: usize,
    pub folders: usize,
    pub seed: u64,
}

/// What a populate created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Populated {
    pub files: usize,
    pub folders: usize,
    /// Live items in the drive afterwards, the root included.
    pub live_items: usize,
    /// The journal sequences of the first and last created item (both 0 when nothing was created).
    pub first_seq: u64,
    pub last_seq: u64,
}

const POPULATE_EXTENSIONS: [&str; 6] = ["txt", "docx", "xlsx", "pdf", "jpg", "md"];

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
            items: Vec::new(),
            index: HashMap::new(),
            journal: Vec::new(),
            next_seq: 1,
            next_item_number: 101,
            delta_epoch: 0,
            populated: 0,
            walks: WalkCache::default(),
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
            sha256: None,
            folder: true,
            deleted: false,
            last_modified_date_time: now,
            change_seq: 0,
            etag_version: 0,
            ctag_version: 0,
        };
        let seq = drive.journal_append(&root_id);
        root.bump(true, seq, now);
        drive.insert(root);
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

    fn insert(&mut self, item: Item) {
        let slot = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        self.index.insert(item.id.clone(), slot);
        self.items.push(item);
    }

    fn slot(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    fn at(&self, slot: u32) -> Option<&Item> {
        self.items.get(slot as usize)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Item> {
        let slot = self.slot(id)?;
        self.items.get_mut(slot as usize)
    }

    /// The item, deleted or not.
    pub fn item(&self, id: &str) -> Option<&Item> {
        self.at(self.slot(id)?)
    }

    /// How many items the drive has ever had (deleted ones and the root included).
    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    /// How many live items a folder holds directly.
    pub fn child_count(&self, id: &str) -> usize {
        self.items
            .iter()
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
        self.walks.forget();
    }

    /// How many delta walks were planned (each plan reads the journal or the whole drive once;
    /// serving a page of a planned walk reads only that page's items).
    pub fn delta_walks_planned(&self) -> u64 {
        self.walks.walks().planned
    }

    /// The first page of a walk without quirks: a full enumeration (`since` = `None`) or the
    /// changes after a journal position, ending at the current position.
    pub fn delta_start(&self, since: Option<u64>) -> DeltaCursor {
        self.delta_start_with(since, DeltaQuirks::default())
    }

    /// The first page of a walk planned with `quirks`.
    pub fn delta_start_with(&self, since: Option<u64>, quirks: DeltaQuirks) -> DeltaCursor {
        DeltaCursor {
            drive_id: self.id.clone(),
            epoch: self.delta_epoch,
            since,
            upto: self.latest_seq(),
            after: String::new(),
            page: 0,
            seen: self.latest_seq(),
            quirks,
        }
    }

    /// The slots a walk covers, in id order: every live item (full enumeration), or every item
    /// (deleted ones too) changed after `since` plus all the ancestors of each (graph-protocol.md
    /// §5.2: "we always return all of the items in the hierarchy above the modified items"). Reads
    /// only the journal after `since`, not the whole drive.
    fn walk_entries(&self, since: Option<u64>) -> Vec<u32> {
        let mut slots: Vec<u32> = match since {
            None => (0..self.items.len())
                .filter(|slot| self.items.get(*slot).is_some_and(|item| !item.deleted))
                .filter_map(|slot| u32::try_from(slot).ok())
                .collect(),
            Some(seq) => {
                let start = self.journal.partition_point(|entry| entry.seq <= seq);
                let mut wanted = HashSet::new();
                let mut climbed = HashSet::new();
                for entry in self.journal.get(start..).unwrap_or_default() {
                    let Some(slot) = self.slot(&entry.item_id) else {
                        continue;
                    };
                    wanted.insert(slot);
                    let mut current = slot;
                    // Bounded: a parent chain is at most as long as the drive has items.
                    for _ in 0..=self.items.len() {
                        if !climbed.insert(current) {
                            break;
                        }
                        let parent = self
                            .at(current)
                            .and_then(|item| item.parent_id.as_deref())
                            .and_then(|parent| self.slot(parent));
                        match parent {
                            Some(parent) => {
                                wanted.insert(parent);
                                current = parent;
                            }
                            None => break,
                        }
                    }
                }
                wanted.into_iter().collect()
            }
        };
        slots.sort_by(|a, b| {
            let id = |slot: &u32| self.at(*slot).map(|item| item.id.as_str());
            id(a).cmp(&id(b))
        });
        slots
    }

    /// Every item's depth (the root 0), by slot.
    fn depths(&self) -> Vec<usize> {
        const UNKNOWN: usize = usize::MAX;
        let mut depth = vec![UNKNOWN; self.items.len()];
        let parent_of = |slot: usize| {
            self.items
                .get(slot)
                .and_then(|item| item.parent_id.as_deref())
                .and_then(|parent| self.slot(parent))
                .map(|parent| parent as usize)
        };
        for start in 0..self.items.len() {
            let mut path = Vec::new();
            let mut current = Some(start);
            let mut known = None;
            while let Some(slot) = current {
                match depth.get(slot) {
                    Some(&found) if found != UNKNOWN => {
                        known = Some(found);
                        break;
                    }
                    _ if path.len() > self.items.len() => break,
                    _ => {}
                }
                path.push(slot);
                current = parent_of(slot);
            }
            let first = known.map_or(0, |found| found + 1);
            for (at, slot) in (first..).zip(path.into_iter().rev()) {
                if let Some(entry) = depth.get_mut(slot) {
                    *entry = at;
                }
            }
        }
        depth
    }

    fn plan_walk(&self, cursor: &DeltaCursor, page_size: usize) -> WalkPlan {
        let quirks = &cursor.quirks;
        let depths = if quirks.child_before_parent {
            self.depths()
        } else {
            Vec::new()
        };
        let mut rng = Rng::new(
            quirks.seed
                ^ stable_hash(&self.id)
                ^ cursor.since.map_or(u64::MAX, |seq| seq.rotate_left(17))
                ^ cursor.upto.rotate_left(41),
        );
        shape_walk(
            self.walk_entries(cursor.since),
            |slot| self.at(slot).is_some_and(|item| item.deleted),
            |slot| depths.get(slot as usize).copied().unwrap_or(0),
            quirks,
            page_size,
            &mut rng,
        )
    }

    /// The page of a walk that `cursor` points at, each item in its current state: at most
    /// `page_size` items (the cursor's own page size wins once the walk started) without quirks,
    /// each id once per walk. The first page plans the walk; later pages reuse the plan, or plan
    /// again when it was forgotten and the drive has not changed. A first page whose drive changed
    /// since its cursor was made is planned on the current state (so a 410's `Location` always
    /// works). Fails only for a later page of a forgotten walk on a changed drive.
    pub fn try_delta_page(&self, cursor: &DeltaCursor, page_size: usize) -> Result<DeltaPage<'_>, WalkLost> {
        let mut cursor = cursor.clone();
        let page_size = cursor.quirks.page_size.unwrap_or(page_size).max(1);
        cursor.quirks.page_size = Some(page_size);
        let latest = self.latest_seq();
        let plan = match self.walks.get(&WalkKey::of(&cursor)) {
            Some(plan) => plan,
            None if cursor.page == 0 || latest == cursor.upto => {
                if cursor.page == 0 {
                    cursor.upto = latest;
                    cursor.seen = latest;
                }
                let plan = Arc::new(self.plan_walk(&cursor, page_size));
                self.walks.put(WalkKey::of(&cursor), plan.clone());
                plan
            }
            None => return Err(WalkLost),
        };
        let range = plan.page(cursor.page).ok_or(WalkLost)?;
        let full_enumeration = cursor.since.is_none();
        let planned = plan.entries.get(range.clone()).unwrap_or_default();
        let items: Vec<&Item> = planned
            .iter()
            .filter_map(|slot| self.at(*slot))
            // A full enumeration lists live items; one deleted during the walk is left out.
            .filter(|item| !(full_enumeration && item.deleted))
            .collect();
        let mut repeated = Vec::new();
        let mut seen = cursor.seen;
        if cursor.quirks.repeat_items {
            let on_page: HashSet<u32> = planned.iter().copied().collect();
            let mut added = HashSet::new();
            let start = self.journal.partition_point(|entry| entry.seq <= cursor.seen);
            for entry in self.journal.get(start..).unwrap_or_default() {
                let Some(slot) = self.slot(&entry.item_id) else {
                    continue;
                };
                let served_before = plan
                    .first_position
                    .get(&slot)
                    .is_some_and(|position| *position < range.start);
                if served_before
                    && !on_page.contains(&slot)
                    && added.insert(slot)
                    && let Some(item) = self.at(slot)
                {
                    repeated.push(item);
                }
            }
            seen = latest;
        }
        let last_id = repeated
            .last()
            .or(items.last())
            .map_or_else(|| cursor.after.clone(), |item| item.id.clone());
        let (next, delta_token) = if cursor.page + 1 < plan.pages() {
            let next = DeltaCursor {
                page: cursor.page + 1,
                seen,
                after: last_id,
                ..cursor.clone()
            };
            (Some(next), None)
        } else {
            let token = DeltaToken {
                drive_id: self.id.clone(),
                seq: cursor.upto,
                epoch: cursor.epoch,
            };
            (None, Some(token))
        };
        Ok(DeltaPage {
            items,
            repeated,
            next,
            delta_token,
        })
    }

    /// [`Drive::try_delta_page`], starting the walk again on the current state when its plan is
    /// lost (the HTTP handler answers 410 instead).
    pub fn delta_page(&self, cursor: &DeltaCursor, page_size: usize) -> DeltaPage<'_> {
        match self.try_delta_page(cursor, page_size) {
            Ok(page) => page,
            Err(WalkLost) => {
                let fresh = DeltaCursor {
                    page: 0,
                    ..cursor.clone()
                };
                match self.try_delta_page(&fresh, page_size) {
                    Ok(page) => page,
                    // Page 0 always plans; this arm only keeps the function total.
                    Err(WalkLost) => DeltaPage {
                        items: Vec::new(),
                        repeated: Vec::new(),
                        next: None,
                        delta_token: Some(self.latest_delta_token()),
                    },
                }
            }
        }
    }

    fn live(&self, id: &str) -> Result<&Item, SimError> {
        match self.item(id) {
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
                Some(id) => current = self.item(id).and_then(|item| item.parent_id.as_deref()),
                None => return false,
            }
        }
        false
    }

    fn ensure_name_free(&self, parent_id: &str, name: &str, except: Option<&str>) -> Result<(), SimError> {
        let taken = self.items.iter().any(|item| {
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

    fn new_item(
        &self,
        id: String,
        parent_id: String,
        name: String,
        folder: bool,
        size: u64,
        now: DateTime<Utc>,
    ) -> Item {
        Item {
            id,
            drive_id: self.id.clone(),
            parent_id: Some(parent_id),
            name,
            etag: String::new(),
            ctag: String::new(),
            size: if folder { 0 } else { size },
            sha256: None,
            folder,
            deleted: false,
            last_modified_date_time: now,
            change_seq: 0,
            etag_version: 0,
            ctag_version: 0,
        }
    }

    /// Creates a file or folder under `parent_id` (the root when `None`).
    pub fn create_item(&mut self, new: &NewItem, now: DateTime<Utc>) -> Result<Change, SimError> {
        let parent_id = new.parent_id.clone().unwrap_or_else(|| self.root_id.clone());
        self.live_folder(&parent_id)?;
        Self::check_name(&new.name)?;
        self.ensure_name_free(&parent_id, &new.name, None)?;
        let id = self.new_item_id();
        let mut item = self.new_item(id.clone(), parent_id, new.name.clone(), new.folder, new.size, now);
        let seq = self.journal_append(&id);
        item.bump(true, seq, now);
        self.insert(item.clone());
        Ok(Change {
            item,
            touched: vec![id],
        })
    }

    /// Creates `request.folders` folders and `request.files` files in a random tree under the
    /// root, fast (no per-item name scan): each folder goes under the root or an earlier new
    /// folder, each file under the root or any new folder. Every item gets a journal entry, so a
    /// delta walk from an older token serves them all. The change touches the root only.
    pub fn populate(
        &mut self,
        request: &Populate,
        now: DateTime<Utc>,
    ) -> Result<(Populated, Change), SimError> {
        let total = request.files.saturating_add(request.folders);
        if total > POPULATE_MAX {
            return Err(SimError::BadRequest(format!(
                "at most {POPULATE_MAX} items per populate, asked for {total}"
            )));
        }
        let root_id = self.root_id.clone();
        let root_names: HashSet<String> = self
            .items
            .iter()
            .filter(|item| !item.deleted && item.parent_id.as_deref() == Some(root_id.as_str()))
            .map(|item| item.name.to_lowercase())
            .collect();
        let mut rng = Rng::new(request.seed);
        // Business ids come from a generator salted per call, so they are unique but cheap.
        let mut id_rng = Rng::new(rng.next_u64() ^ stable_hash(&uuid::Uuid::new_v4().to_string()));
        self.items.reserve(total);
        self.index.reserve(total);
        self.journal.reserve(total);
        let mut folders: Vec<String> = Vec::with_capacity(request.folders);
        let first_seq = self.next_seq;
        for index in 0..total {
            let folder = index < request.folders;
            // Folders first (so files can go into any of them); a parent is the root or a folder
            // made before.
            let choice = rng.below(folders.len() + 1);
            let parent_id = match choice.checked_sub(1).and_then(|at| folders.get(at)) {
                Some(parent) => parent.clone(),
                None => root_id.clone(),
            };
            let name = loop {
                self.populated += 1;
                let name = if folder {
                    format!("Folder {:06}", self.populated)
                } else {
                    let extension = POPULATE_EXTENSIONS
                        .get(rng.below(POPULATE_EXTENSIONS.len()))
                        .copied()
                        .unwrap_or("txt");
                    format!("File {:06}.{extension}", self.populated)
                };
                if parent_id != root_id || !root_names.contains(&name.to_lowercase()) {
                    break name;
                }
            };
            let id = loop {
                let id = if self.business {
                    let mut id = String::with_capacity(34);
                    id.push_str("01");
                    for _ in 0..32 {
                        id.push(char::from(BASE32[id_rng.below(BASE32.len())]));
                    }
                    id
                } else {
                    self.new_item_id()
                };
                if !self.index.contains_key(&id) {
                    break id;
                }
            };
            let size = u64::try_from(rng.below(4 << 20)).unwrap_or(0);
            let mut item = self.new_item(id.clone(), parent_id, name, folder, size, now);
            let seq = self.journal_append(&id);
            item.bump(true, seq, now);
            if folder {
                folders.push(id);
            }
            self.insert(item);
        }
        let root = self
            .item(&root_id)
            .cloned()
            .ok_or_else(|| SimError::NotFound(root_id.clone()))?;
        let live_items = self.items.iter().filter(|item| !item.deleted).count();
        let populated = Populated {
            files: request.files,
            folders: request.folders,
            live_items,
            first_seq: if total == 0 { 0 } else { first_seq },
            last_seq: if total == 0 { 0 } else { self.latest_seq() },
        };
        Ok((
            populated,
            Change {
                item: root,
                touched: vec![root_id],
            },
        ))
    }

    /// Changes a file's content: new eTag and cTag, optionally a new size.
    pub fn modify_item(
        &mut self,
        id: &str,
        size: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Change, SimError> {
        self.set_content(id, now, |item| {
            if let Some(size) = size {
                item.size = size;
            }
            // The new content is not known to the simulator.
            item.sha256 = None;
        })
    }

    /// A file's new content, as `write` sets it: a journal entry, new eTag and cTag, same id.
    fn set_content(
        &mut self,
        id: &str,
        now: DateTime<Utc>,
        write: impl FnOnce(&mut Item),
    ) -> Result<Change, SimError> {
        if self.live(id)?.folder {
            return Err(SimError::BadRequest(format!(
                "item {id} is a folder; only files have content"
            )));
        }
        let seq = self.journal_append(id);
        let item = self
            .get_mut(id)
            .ok_or_else(|| SimError::NotFound(id.to_owned()))?;
        write(item);
        item.bump(true, seq, now);
        Ok(Change {
            item: item.clone(),
            touched: vec![id.to_owned()],
        })
    }

    /// The live item named `name` (case-insensitively, as OneDrive compares names) directly in
    /// the folder `parent_id`.
    pub fn child_named(&self, parent_id: &str, name: &str) -> Option<&Item> {
        self.items.iter().find(|item| {
            !item.deleted
                && item.parent_id.as_deref() == Some(parent_id)
                && item.name.eq_ignore_ascii_case(name)
        })
    }

    /// The live item at `path` below the root (`a/b/c.txt`; empty segments ignored, so `/a/` is
    /// the folder `a`; an empty path is the root).
    pub fn item_by_path(&self, path: &str) -> Result<&Item, SimError> {
        let mut current = self.live(&self.root_id)?;
        for segment in path.split('/').filter(|segment| !segment.is_empty()) {
            current = self
                .child_named(&current.id, segment)
                .ok_or_else(|| SimError::NotFound(format!("no item at '{path}' in drive {}", self.id)))?;
        }
        Ok(current)
    }

    /// `name` made unique in the folder the way OneDrive renames: `report 1.pdf`, `report 2.pdf`,
    /// … (the number goes before the extension; a folder or a name without one gets it at the end).
    pub fn unique_name(&self, parent_id: &str, name: &str) -> String {
        if self.child_named(parent_id, name).is_none() {
            return name.to_owned();
        }
        let (stem, extension) = match name.rfind('.') {
            Some(dot) if dot > 0 => name.split_at(dot),
            _ => (name, ""),
        };
        (1..=self.items.len() + 1)
            .map(|number| format!("{stem} {number}{extension}"))
            .find(|candidate| self.child_named(parent_id, candidate).is_none())
            .unwrap_or_else(|| format!("{stem} {}{extension}", uuid::Uuid::new_v4().simple()))
    }

    /// Puts an uploaded file named `name` in the folder `parent_id`: a new file, or, when a live
    /// item has that name, what `behavior` says: `Fail` → conflict; `Replace` → the file's content
    /// is replaced (same id, new eTag and cTag; a folder is never replaced: conflict); `Rename` → a
    /// new file under [`Drive::unique_name`]. Returns the change and whether an item was created.
    pub fn put_file(
        &mut self,
        parent_id: &str,
        name: &str,
        content: &Content,
        behavior: ConflictBehavior,
        now: DateTime<Utc>,
    ) -> Result<(Change, bool), SimError> {
        self.live_folder(parent_id)?;
        Self::check_name(name)?;
        let existing = self
            .child_named(parent_id, name)
            .map(|item| (item.id.clone(), item.folder));
        let name = match (existing, behavior) {
            (None, _) => name.to_owned(),
            (Some(_), ConflictBehavior::Rename) => self.unique_name(parent_id, name),
            (Some((id, false)), ConflictBehavior::Replace) => {
                return Ok((self.replace_content(&id, content, now)?, false));
            }
            (Some(_), ConflictBehavior::Fail | ConflictBehavior::Replace) => {
                return Err(SimError::Conflict(format!(
                    "an item named '{name}' already exists in folder {parent_id}"
                )));
            }
        };
        let id = self.new_item_id();
        let mut item = self.new_item(id.clone(), parent_id.to_owned(), name, false, content.size, now);
        item.sha256 = Some(content.sha256.clone());
        let seq = self.journal_append(&id);
        item.bump(true, seq, now);
        self.insert(item.clone());
        Ok((
            Change {
                item,
                touched: vec![id],
            },
            true,
        ))
    }

    /// Replaces a file's content with an upload: new size and hash, new eTag and cTag, same id.
    pub fn replace_content(
        &mut self,
        id: &str,
        content: &Content,
        now: DateTime<Utc>,
    ) -> Result<Change, SimError> {
        self.set_content(id, now, |item| {
            item.size = content.size;
            item.sha256 = Some(content.sha256.clone());
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
            .iter()
            .filter(|item| !item.deleted && item.id != id && self.is_within(&item.id, id))
            .map(|item| item.id.clone())
            .collect();
        doomed.sort();
        doomed.push(id.to_owned());
        for doomed_id in &doomed {
            let seq = self.journal_append(doomed_id);
            if let Some(item) = self.get_mut(doomed_id) {
                item.deleted = true;
                item.bump(false, seq, now);
            }
        }
        let item = self
            .item(id)
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

    fn walk_all(drive: &Drive, mut cursor: DeltaCursor, page_size: usize) -> (Vec<String>, DeltaToken) {
        let mut seen = Vec::new();
        loop {
            let page = drive.try_delta_page(&cursor, page_size).expect("page");
            seen.extend(
                page.items
                    .iter()
                    .chain(&page.repeated)
                    .map(|item| item.id.clone()),
            );
            match (page.next, page.delta_token) {
                (Some(next), _) => cursor = next,
                (None, Some(token)) => return (seen, token),
                (None, None) => panic!("a last page without a token"),
            }
        }
    }

    #[test]
    fn a_walk_of_a_populated_drive_is_planned_once_and_serves_each_item_once() {
        let now = Utc::now();
        for business in [false, true] {
            let mut drive = Drive::new("u", "t", business, now);
            let (populated, change) = drive
                .populate(
                    &Populate {
                        files: 18_000,
                        folders: 2_000,
                        seed: 3,
                    },
                    now,
                )
                .expect("populate");
            assert_eq!(
                (populated.live_items, change.touched.clone()),
                (20_001, vec![drive.root_id.clone()])
            );
            let (seen, token) = walk_all(&drive, drive.delta_start(None), 100);
            assert_eq!(seen.len(), 20_001);
            assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 20_001);
            assert_eq!(drive.delta_walks_planned(), 1, "200 pages, one plan");
            assert_eq!(token.seq, drive.latest_seq());
            // Changes since: the journal after the token, not the drive, is read.
            let file = seen
                .iter()
                .find(|id| drive.item(id).is_some_and(|item| !item.folder))
                .cloned()
                .expect("a file");
            drive.modify_item(&file, Some(1), now).expect("modify");
            let (changed, _) = walk_all(&drive, drive.delta_start(Some(token.seq)), 100);
            assert!(changed.contains(&file) && changed.contains(&drive.root_id));
            assert!(changed.len() < 40, "{}", changed.len());
        }
    }

    #[test]
    fn populate_names_are_unique_per_folder_and_the_seed_fixes_the_shape() {
        let now = Utc::now();
        let shape = |drive: &Drive| {
            let mut shape: Vec<(String, String)> = drive
                .items
                .iter()
                .filter(|item| item.id != drive.root_id)
                .map(|item| {
                    let parent = item
                        .parent_id
                        .as_deref()
                        .and_then(|id| drive.item(id))
                        .map(|parent| parent.name.clone())
                        .unwrap_or_default();
                    (item.name.clone(), parent)
                })
                .collect();
            shape.sort();
            shape
        };
        let request = Populate {
            files: 300,
            folders: 30,
            seed: 9,
        };
        let mut one = Drive::new("u", "t", false, now);
        let mut two = Drive::new("u", "t", true, now);
        one.create_item(&file(None, "File 000001.txt"), now)
            .expect("clash");
        one.populate(&request, now).expect("populate");
        two.populate(&request, now).expect("populate");
        one.populate(&request, now).expect("again");
        let mut names = HashSet::new();
        for item in one.items.iter().filter(|item| !item.deleted) {
            assert!(
                names.insert((item.parent_id.clone(), item.name.to_lowercase())),
                "{} twice in one folder",
                item.name
            );
        }
        assert_eq!(one.item_count(), 1 + 1 + 660);
        assert_eq!(shape(&two).len(), 330);
        let mut three = Drive::new("u", "t", false, now);
        three.populate(&request, now).expect("populate");
        assert_eq!(shape(&two), shape(&three), "the seed alone fixes the tree");
        assert!(
            Drive::new("u", "t", false, now)
                .populate(
                    &Populate {
                        files: POPULATE_MAX + 1,
                        ..Populate::default()
                    },
                    now
                )
                .is_err()
        );
    }

    #[test]
    fn a_later_page_of_a_forgotten_walk_is_lost_only_when_the_drive_changed() {
        let now = Utc::now();
        let mut drive = Drive::new("u", "t", false, now);
        for n in 0..5 {
            drive
                .create_item(&file(None, &format!("{n}")), now)
                .expect("create");
        }
        let first = drive.try_delta_page(&drive.delta_start(None), 2).expect("page");
        let next = first.next.expect("more");
        let mut clone = drive.clone();
        assert!(
            clone.try_delta_page(&next, 2).is_ok(),
            "a fresh cache plans the unchanged walk again"
        );
        clone.create_item(&file(None, "late"), now).expect("create");
        let forgetful = clone.clone();
        assert_eq!(forgetful.try_delta_page(&next, 2).map(|_| ()), Err(WalkLost));
        assert!(
            forgetful.try_delta_page(&drive.delta_start(None), 2).is_ok(),
            "a first page always plans"
        );
        assert_eq!(
            forgetful.delta_page(&next, 2).items.len(),
            2,
            "the lenient form starts again"
        );
    }

    fn content(size: u64, hash: &str) -> Content {
        Content {
            size,
            sha256: hash.to_owned(),
        }
    }

    #[test]
    fn putting_a_file_creates_replaces_renames_or_fails_on_a_taken_name() {
        let now = Utc::now();
        let mut drive = Drive::new("u", "t", false, now);
        let root = drive.root_id.clone();
        let (first, created) = drive
            .put_file(
                &root,
                "Report.pdf",
                &content(3, "AA"),
                ConflictBehavior::Fail,
                now,
            )
            .expect("new");
        assert!(created);
        assert_eq!((first.item.size, first.item.sha256.as_deref()), (3, Some("AA")));
        let (replaced, created) = drive
            .put_file(
                &root,
                "report.PDF",
                &content(5, "BB"),
                ConflictBehavior::Replace,
                now,
            )
            .expect("replace");
        assert!(!created);
        assert_eq!(replaced.item.id, first.item.id);
        assert_ne!(
            (&replaced.item.etag, &replaced.item.ctag),
            (&first.item.etag, &first.item.ctag)
        );
        assert_eq!(
            (replaced.item.size, replaced.item.name.as_str()),
            (5, "Report.pdf")
        );
        assert!(matches!(
            drive.put_file(
                &root,
                "Report.pdf",
                &content(1, "CC"),
                ConflictBehavior::Fail,
                now
            ),
            Err(SimError::Conflict(_))
        ));
        let (renamed, _) = drive
            .put_file(
                &root,
                "Report.pdf",
                &content(1, "CC"),
                ConflictBehavior::Rename,
                now,
            )
            .expect("rename");
        assert_eq!(renamed.item.name, "Report 1.pdf");
        let (again, _) = drive
            .put_file(
                &root,
                "Report.pdf",
                &content(1, "DD"),
                ConflictBehavior::Rename,
                now,
            )
            .expect("rename");
        assert_eq!(again.item.name, "Report 2.pdf");
        let docs = drive
            .create_item(&folder(None, "Docs"), now)
            .expect("folder")
            .item;
        assert!(matches!(
            drive.put_file(&root, "docs", &content(1, "EE"), ConflictBehavior::Replace, now),
            Err(SimError::Conflict(_))
        ));
        assert_eq!(drive.unique_name(&root, "Docs"), "Docs 1");
        assert_eq!(drive.unique_name(&root, ".profile"), ".profile");
        let (nested, _) = drive
            .put_file(&docs.id, "a.txt", &content(2, "FF"), ConflictBehavior::Fail, now)
            .expect("nested");
        assert_eq!(
            drive.item_by_path("/docs/A.TXT/").map(|item| &item.id),
            Ok(&nested.item.id)
        );
        assert_eq!(drive.item_by_path("").map(|item| &item.id), Ok(&root));
        assert!(drive.item_by_path("docs/missing.txt").is_err());
        assert!(
            drive
                .modify_item(&nested.item.id, Some(9), now)
                .expect("modify")
                .item
                .sha256
                .is_none(),
            "a control modify forgets the hash"
        );
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
