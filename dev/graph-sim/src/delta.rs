//! The shape of a delta walk: which entries it serves in which order and how they are cut into
//! pages, including the quirks real OneDrive shows (graph-protocol.md §5.2, §5.3, §10 items 10–11).
//!
//! A walk is planned once, when its first page is asked for, from the drive as it is then (see
//! [`crate::drive::Drive::try_delta_page`]): the item set (every live item, or the items changed
//! since a token plus all their ancestors), sorted by id, then shaped here by [`DeltaQuirks`].
//! Every quirk is off by default and deterministic given its seed, the drive and the walk's journal
//! positions, so a test that sets a seed sees the same pages every run:
//!
//! - `variable_page_sizes`: each page holds between 1 and the page size items (§5.3, "the number
//!   of objects in each page can vary");
//! - `tiny_pages_around_deletes`: a page that would hold a deleted item holds at most
//!   [`TINY_PAGE`] items (§5.3: pages of about 7 with deleted items);
//! - `empty_pages`: `{"value":[]}` pages that still carry a nextLink, before about one page in four
//!   and at least once per walk that has items (§5.1: keep following the nextLink);
//! - `repeat_items`: about one entry in twenty (at least one) is served again on a later page, and
//!   an item changed during the walk after it was served comes again on the next page in its new
//!   state (§5.2: "use the last occurrence you see");
//! - `child_before_parent`: deepest items first, so a child comes on an earlier page than its
//!   parent (and pages are not reversed) (§5.2: "don't assume parent-before-child");
//! - `business_omits_ctag`: on business drives delta items carry no `cTag` even when created or
//!   modified (§5.2 ODB table). Off by default because graphfeed's content detection reads cTag.
//!
//! Always on (not quirks): `$top` is ignored, deleted items lack `cTag` and `size` (personal) or
//! `cTag` and `name` (business), ancestors come with every changed item, no `parentReference.path`.

use std::collections::HashMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// The most items a page that holds a deleted item has with `tiny_pages_around_deletes` (§5.3).
pub const TINY_PAGE: usize = 7;

/// Empty pages go before about one page in this many.
const EMPTY_PAGE_ODDS: u64 = 4;

/// About one entry in this many is repeated.
const REPEAT_ONE_IN: usize = 20;

/// Delta quirks (graph-protocol.md §10 items 10–11), all off by default. Set them for every drive
/// with [`crate::SimConfig::delta_quirks`] or [`crate::Sim::set_default_delta_quirks`], for one
/// drive with [`crate::Sim::set_delta_quirks`], or over HTTP (`POST /_sim/delta-quirks`,
/// `POST /_sim/drives/{id}/delta-quirks`, body: this struct in snake_case, every field optional).
/// A walk keeps the quirks it started with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeltaQuirks {
    /// Seeds every random choice (mixed with the drive id and the walk's journal positions).
    pub seed: u64,
    /// Most items per page; [`crate::Timing::delta_page_size`] when `None`.
    pub page_size: Option<usize>,
    pub variable_page_sizes: bool,
    pub tiny_pages_around_deletes: bool,
    pub empty_pages: bool,
    pub repeat_items: bool,
    pub child_before_parent: bool,
    pub business_omits_ctag: bool,
}

/// A quirk name [`DeltaQuirks::from_names`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown delta quirk '{0}' (known: all, variable_page_sizes, tiny_pages_around_deletes, empty_pages, \
     repeat_items, child_before_parent, business_omits_ctag)"
)]
pub struct UnknownQuirk(pub String);

const FLAG_NAMES: [&str; 6] = [
    "variable_page_sizes",
    "tiny_pages_around_deletes",
    "empty_pages",
    "repeat_items",
    "child_before_parent",
    "business_omits_ctag",
];

impl DeltaQuirks {
    /// Every quirk on, `business_omits_ctag` included.
    pub fn all(seed: u64) -> Self {
        Self {
            seed,
            page_size: None,
            variable_page_sizes: true,
            tiny_pages_around_deletes: true,
            empty_pages: true,
            repeat_items: true,
            child_before_parent: true,
            business_omits_ctag: true,
        }
    }

    /// Reads a comma-separated list of quirk names (`all` for every one), e.g. for the binary's
    /// `--delta-quirks empty_pages,repeat_items`. The seed stays 0.
    pub fn from_names(list: &str) -> Result<Self, UnknownQuirk> {
        let mut quirks = Self::default();
        for name in list.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            if name == "all" {
                quirks = Self::all(quirks.seed);
                continue;
            }
            let flag = FLAG_NAMES
                .iter()
                .position(|known| *known == name)
                .ok_or_else(|| UnknownQuirk(name.to_owned()))?;
            quirks.set_flag(flag, true);
        }
        Ok(quirks)
    }

    fn flag(&self, index: usize) -> bool {
        match index {
            0 => self.variable_page_sizes,
            1 => self.tiny_pages_around_deletes,
            2 => self.empty_pages,
            3 => self.repeat_items,
            4 => self.child_before_parent,
            5 => self.business_omits_ctag,
            _ => false,
        }
    }

    fn set_flag(&mut self, index: usize, on: bool) {
        match index {
            0 => self.variable_page_sizes = on,
            1 => self.tiny_pages_around_deletes = on,
            2 => self.empty_pages = on,
            3 => self.repeat_items = on,
            4 => self.child_before_parent = on,
            5 => self.business_omits_ctag = on,
            _ => {}
        }
    }

    /// The flags as a bit set, for delta cursors.
    pub(crate) fn bits(&self) -> u8 {
        (0..FLAG_NAMES.len())
            .filter(|index| self.flag(*index))
            .fold(0, |bits, index| bits | (1 << index))
    }

    /// The inverse of [`DeltaQuirks::bits`].
    pub(crate) fn with_bits(mut self, bits: u8) -> Self {
        for index in 0..FLAG_NAMES.len() {
            self.set_flag(index, bits & (1 << index) != 0);
        }
        self
    }
}

/// A planned walk: the item slots to serve in order (repeats allowed) and where pages end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalkPlan {
    pub entries: Vec<u32>,
    /// The end offset of each page in `entries`; page `i` starts where page `i - 1` ends. Empty
    /// pages have equal start and end.
    pub ends: Vec<usize>,
    /// With `repeat_items`: each slot's first position in `entries`.
    pub first_position: HashMap<u32, usize>,
}

impl WalkPlan {
    pub fn pages(&self) -> usize {
        self.ends.len()
    }

    /// The entries of page `page`, `None` past the last page.
    pub fn page(&self, page: usize) -> Option<Range<usize>> {
        let end = *self.ends.get(page)?;
        let start = match page.checked_sub(1) {
            Some(previous) => self.ends.get(previous).copied().unwrap_or(0),
            None => 0,
        };
        Some(start..end)
    }
}

/// Orders, repeats and pages a walk's entries (already in id order) as `quirks` ask.
pub(crate) fn shape_walk(
    mut entries: Vec<u32>,
    deleted: impl Fn(u32) -> bool,
    depth: impl Fn(u32) -> usize,
    quirks: &DeltaQuirks,
    page_size: usize,
    rng: &mut Rng,
) -> WalkPlan {
    let page_size = page_size.max(1);
    if quirks.child_before_parent {
        // Stable: id order within one depth.
        entries.sort_by_key(|slot| std::cmp::Reverse(depth(*slot)));
    }
    if quirks.repeat_items && entries.len() >= 2 {
        entries = with_repeats(entries, rng);
    }
    let mut ends = Vec::new();
    let mut start = 0;
    let mut empty_inserted = false;
    while start < entries.len() {
        if quirks.empty_pages && rng.chance(1, EMPTY_PAGE_ODDS) {
            ends.push(start);
            empty_inserted = true;
        }
        let mut size = if quirks.variable_page_sizes {
            1 + rng.below(page_size)
        } else {
            page_size
        };
        let window = start..(start + size).min(entries.len());
        if quirks.tiny_pages_around_deletes
            && entries
                .get(window)
                .is_some_and(|page| page.iter().any(|slot| deleted(*slot)))
        {
            size = size.min(TINY_PAGE);
        }
        let end = (start + size).min(entries.len());
        ends.push(end);
        start = end;
    }
    if ends.is_empty() {
        // An empty walk is one empty page carrying the deltaLink.
        ends.push(0);
    } else if quirks.empty_pages && !empty_inserted {
        let before = rng.below(ends.len());
        let at = match before.checked_sub(1) {
            Some(previous) => ends.get(previous).copied().unwrap_or(0),
            None => 0,
        };
        ends.insert(before, at);
    }
    let mut first_position = HashMap::new();
    if quirks.repeat_items {
        for (position, slot) in entries.iter().enumerate() {
            first_position.entry(*slot).or_insert(position);
        }
    }
    WalkPlan {
        entries,
        ends,
        first_position,
    }
}

/// Copies about one entry in [`REPEAT_ONE_IN`] (at least one) to a later position.
fn with_repeats(entries: Vec<u32>, rng: &mut Rng) -> Vec<u32> {
    let len = entries.len();
    let count = (len / REPEAT_ONE_IN).max(1);
    let mut copies: Vec<(usize, u32)> = (0..count)
        .filter_map(|_| {
            let from = rng.below(len - 1);
            let after = from + 1 + rng.below(len - from - 1);
            entries.get(from).map(|slot| (after, *slot))
        })
        .collect();
    copies.sort_by_key(|(after, _)| *after);
    let mut copies = copies.into_iter().peekable();
    let mut out = Vec::with_capacity(len + count);
    for (position, slot) in entries.into_iter().enumerate() {
        out.push(slot);
        while let Some((_, copy)) = copies.next_if(|(after, _)| *after == position) {
            out.push(copy);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(len: u32, quirks: &DeltaQuirks, page_size: usize, deleted: &[u32]) -> WalkPlan {
        let mut rng = Rng::new(quirks.seed);
        shape_walk(
            (0..len).collect(),
            |slot| deleted.contains(&slot),
            |slot| slot as usize % 3,
            quirks,
            page_size,
            &mut rng,
        )
    }

    fn page_sizes(plan: &WalkPlan) -> Vec<usize> {
        (0..plan.pages())
            .filter_map(|page| plan.page(page))
            .map(|range| range.len())
            .collect()
    }

    #[test]
    fn without_quirks_pages_are_full_in_order_and_an_empty_walk_is_one_empty_page() {
        let plan = shape(7, &DeltaQuirks::default(), 3, &[]);
        assert_eq!(plan.entries, (0..7).collect::<Vec<_>>());
        assert_eq!(page_sizes(&plan), [3, 3, 1]);
        assert_eq!(page_sizes(&shape(0, &DeltaQuirks::default(), 3, &[])), [0]);
    }

    #[test]
    fn variable_pages_hold_between_one_and_the_page_size_and_repeat_with_the_seed() {
        let quirks = DeltaQuirks {
            seed: 42,
            variable_page_sizes: true,
            ..DeltaQuirks::default()
        };
        let plan = shape(1000, &quirks, 50, &[]);
        let sizes = page_sizes(&plan);
        assert!(sizes.iter().all(|size| (1..=50).contains(size)), "{sizes:?}");
        assert!(sizes.iter().collect::<std::collections::BTreeSet<_>>().len() > 5);
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert_eq!(plan, shape(1000, &quirks, 50, &[]));
        assert_ne!(plan, shape(1000, &DeltaQuirks { seed: 43, ..quirks }, 50, &[]));
    }

    #[test]
    fn a_page_holding_a_deleted_item_has_at_most_seven_items() {
        let quirks = DeltaQuirks {
            tiny_pages_around_deletes: true,
            ..DeltaQuirks::default()
        };
        let plan = shape(100, &quirks, 40, &[50]);
        let holding = (0..plan.pages())
            .filter_map(|page| plan.page(page))
            .find(|range| range.contains(&50))
            .expect("a page holds it");
        assert!(holding.len() <= TINY_PAGE, "{holding:?}");
        assert_eq!(page_sizes(&plan).first(), Some(&40));
    }

    #[test]
    fn empty_pages_come_at_least_once_and_never_last() {
        for seed in 0..50 {
            let quirks = DeltaQuirks {
                seed,
                empty_pages: true,
                ..DeltaQuirks::default()
            };
            let sizes = page_sizes(&shape(10, &quirks, 3, &[]));
            assert!(sizes.contains(&0), "{seed}: {sizes:?}");
            assert_ne!(sizes.last(), Some(&0), "{seed}: {sizes:?}");
            assert_eq!(sizes.iter().sum::<usize>(), 10);
        }
    }

    #[test]
    fn repeated_entries_come_again_later_and_deepest_entries_come_first() {
        let quirks = DeltaQuirks {
            seed: 9,
            repeat_items: true,
            child_before_parent: true,
            ..DeltaQuirks::default()
        };
        let plan = shape(60, &quirks, 10, &[]);
        assert!(plan.entries.len() > 60);
        let mut seen = std::collections::HashSet::new();
        let repeated: Vec<u32> = plan
            .entries
            .iter()
            .filter(|slot| !seen.insert(**slot))
            .copied()
            .collect();
        assert!(!repeated.is_empty());
        for slot in repeated {
            assert!(
                plan.first_position[&slot] < plan.entries.iter().rposition(|s| *s == slot).expect("again")
            );
        }
        let unique: Vec<u32> = {
            let mut seen = std::collections::HashSet::new();
            plan.entries
                .iter()
                .filter(|slot| seen.insert(**slot))
                .copied()
                .collect()
        };
        let depths: Vec<usize> = unique.iter().map(|slot| *slot as usize % 3).collect();
        assert!(depths.windows(2).all(|pair| pair[0] >= pair[1]), "{depths:?}");
    }

    #[test]
    fn quirk_names_and_bits_round_trip() {
        let quirks = DeltaQuirks::from_names("empty_pages, repeat_items").expect("known");
        assert!(quirks.empty_pages && quirks.repeat_items && !quirks.variable_page_sizes);
        assert_eq!(DeltaQuirks::default().with_bits(quirks.bits()), quirks);
        assert_eq!(DeltaQuirks::from_names("all").expect("all"), DeltaQuirks::all(0));
        assert_eq!(
            DeltaQuirks::from_names("sideways"),
            Err(UnknownQuirk("sideways".to_owned()))
        );
    }
}
