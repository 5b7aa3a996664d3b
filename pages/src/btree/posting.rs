//! Posting list tuples (nbtdedup.c), as btree redo rebuilds them: forming one from a
//! base tuple and heap TIDs (`_bt_form_posting`), removing TIDs from one
//! (`_bt_update_posting`), splitting one around a new item's TID
//! (`_bt_swap_posting`), and the pending-posting-list state of a deduplication pass
//! (`_bt_dedup_start_pending`, `_bt_dedup_save_htid`, `_bt_dedup_finish_pending`).
//!
//! Tuples are built the way Postgres builds them, in zeroed memory (palloc0), so the
//! alignment padding after a posting list is zeros, as on the primary.

use super::{
    BT_IS_POSTING, BT_OFFSET_MASK, BtreeError, INDEX_ALT_TID_MASK, INDEX_SIZE_MASK, IndexTuple,
    ItemPointer, SIZE_OF_ITEM_POINTER, set_info, set_tid,
};
use crate::page::{AddItemFlags, BLCKSZ, MAX_INDEX_TUPLES_PER_PAGE, Page, max_align};

/// Most heap TIDs one tuple can hold (bounded by the page, not by BT_OFFSET_MASK).
const MAX_TIDS_PER_TUPLE: usize = BLCKSZ / SIZE_OF_ITEM_POINTER;

/// The tuple header shared by _bt_form_posting and _bt_update_posting: `out` becomes
/// the first `keysize` bytes of `base` in a zeroed buffer of the final size, with
/// t_info's size and t_tid's posting metadata set for `nhtids` TIDs. Returns where
/// the TIDs go.
fn posting_shell(
    base: &IndexTuple<'_>,
    keysize: usize,
    nhtids: usize,
    out: &mut Vec<u8>,
) -> Result<usize, BtreeError> {
    if nhtids == 0 || nhtids > usize::from(BT_OFFSET_MASK) {
        return Err(BtreeError::BadPostingCount { nhtids });
    }
    let newsize = if nhtids > 1 {
        max_align(keysize + nhtids * SIZE_OF_ITEM_POINTER)
    } else {
        keysize
    };
    if newsize > usize::from(INDEX_SIZE_MASK) {
        return Err(BtreeError::TupleTooLarge { size: newsize });
    }
    out.clear();
    out.resize(newsize, 0);
    out[..keysize].copy_from_slice(&base.bytes()[..keysize]);
    let mut info = (base.info() & !INDEX_SIZE_MASK) | newsize as u16;
    if nhtids > 1 {
        // BTreeTupleSetPosting.
        info |= INDEX_ALT_TID_MASK;
        set_info(out, info)?;
        set_tid(
            out,
            ItemPointer {
                block: keysize as u32,
                offset: nhtids as u16 | BT_IS_POSTING,
            },
        )?;
        Ok(keysize)
    } else {
        // A standard non-pivot tuple: the one TID goes into t_tid.
        info &= !INDEX_ALT_TID_MASK;
        set_info(out, info)?;
        Ok(0)
    }
}

/// Mirrors _bt_form_posting (nbtdedup.c): `out` becomes a tuple with `base`'s key and
/// `htids` as its heap TIDs (a posting list tuple if there are several).
pub fn form_posting(
    base: &IndexTuple<'_>,
    htids: &[ItemPointer],
    out: &mut Vec<u8>,
) -> Result<(), BtreeError> {
    let keysize = base.key_size()?;
    let at = posting_shell(base, keysize, htids.len(), out)?;
    for (n, tid) in htids.iter().enumerate() {
        let pos = at + n * SIZE_OF_ITEM_POINTER;
        out[pos..pos + SIZE_OF_ITEM_POINTER].copy_from_slice(&tid.to_bytes());
    }
    Ok(())
}

/// Mirrors _bt_update_posting (nbtdedup.c): `out` becomes `orig`, a posting list tuple,
/// without the TIDs at the (ascending) posting list positions `deletetids`.
pub fn update_posting(
    orig: &IndexTuple<'_>,
    deletetids: impl ExactSizeIterator<Item = u16> + Clone,
    out: &mut Vec<u8>,
) -> Result<(), BtreeError> {
    let tids = orig.posting()?;
    let bad = || BtreeError::BadDeletedTids {
        nhtids: tids.len(),
        deletetids: deletetids.clone().collect(),
    };
    let ndeleted = deletetids.len();
    let nhtids = tids
        .len()
        .checked_sub(ndeleted)
        .filter(|&n| n > 0)
        .ok_or_else(bad)?;
    let at = posting_shell(orig, orig.posting_offset(), nhtids, out)?;
    let mut kept = 0usize;
    let mut deleted = 0usize;
    let mut next_delete = deletetids.clone().peekable();
    for (i, tid) in tids.iter().enumerate() {
        if next_delete
            .peek()
            .is_some_and(|&delete| usize::from(delete) == i)
        {
            next_delete.next();
            deleted += 1;
            continue;
        }
        if kept == nhtids {
            return Err(bad());
        }
        let pos = at + kept * SIZE_OF_ITEM_POINTER;
        out[pos..pos + SIZE_OF_ITEM_POINTER].copy_from_slice(&tid.to_bytes());
        kept += 1;
    }
    if kept != nhtids || deleted != ndeleted {
        return Err(bad());
    }
    Ok(())
}

/// Mirrors _bt_swap_posting (nbtdedup.c): the posting list split of an insertion whose
/// new item's heap TID falls inside `oposting`'s list at `postingoff`. `nposting`
/// becomes the new posting list (same size as `oposting`) with the new item's TID in
/// place, and `newitem` (a private copy) gets `oposting`'s old maximum TID.
pub fn swap_posting(
    newitem: &mut [u8],
    oposting: &IndexTuple<'_>,
    postingoff: usize,
    nposting: &mut Vec<u8>,
) -> Result<(), BtreeError> {
    let tids = oposting.posting()?;
    let nhtids = tids.len();
    let last = match tids.get(nhtids.wrapping_sub(1)) {
        Some(last) if postingoff > 0 && postingoff < nhtids => last,
        _ => return Err(BtreeError::BadPostingSplit { nhtids, postingoff }),
    };
    let newitem_tid = IndexTuple::parse(newitem)?.tid();
    nposting.clear();
    nposting.extend_from_slice(oposting.bytes());
    let list = oposting.posting_offset();
    let replacepos = list + postingoff * SIZE_OF_ITEM_POINTER;
    // Shift the TIDs from postingoff one place right, losing the maximum TID.
    let nmovebytes = (nhtids - postingoff - 1) * SIZE_OF_ITEM_POINTER;
    nposting.copy_within(
        replacepos..replacepos + nmovebytes,
        replacepos + SIZE_OF_ITEM_POINTER,
    );
    nposting[replacepos..replacepos + SIZE_OF_ITEM_POINTER]
        .copy_from_slice(&newitem_tid.to_bytes());
    set_tid(newitem, last)?;
    Ok(())
}

/// BTDedupInterval: a run of `nitems` tuples from `baseoff` on that became one
/// posting list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupInterval {
    pub baseoff: u16,
    pub nitems: u16,
}

/// The parts of BTDedupStateData that a deduplication pass in redo uses: the pending
/// posting list and the intervals finished so far. Its buffers are kept across
/// passes ([`DedupState::reset`]), so a pass allocates nothing after the first.
#[derive(Debug, Default)]
pub struct DedupState {
    /// Largest posting list tuple to form.
    maxpostingsize: usize,
    /// Whether a pending list is started (its base tuple is `base`).
    pending: bool,
    /// The pending list's base tuple (IndexTupleSize bytes).
    base: Vec<u8>,
    baseoff: u16,
    /// Size of the base tuple without its posting list.
    basetupsize: usize,
    htids: Vec<ItemPointer>,
    /// Tuples merged into the pending list so far.
    nitems: usize,
    intervals: Vec<DedupInterval>,
    /// The posting list tuple being formed.
    posting: Vec<u8>,
}

impl DedupState {
    pub fn new(maxpostingsize: usize) -> DedupState {
        let mut state = DedupState::default();
        state.reset(maxpostingsize);
        state
    }

    /// Starts a new pass, keeping the buffers (sized for any page the first time).
    pub fn reset(&mut self, maxpostingsize: usize) {
        self.maxpostingsize = maxpostingsize;
        self.pending = false;
        self.baseoff = 0;
        self.basetupsize = 0;
        self.nitems = 0;
        self.base.clear();
        self.base.reserve(BLCKSZ);
        self.htids.clear();
        self.htids.reserve(MAX_TIDS_PER_TUPLE);
        self.intervals.clear();
        self.intervals.reserve(MAX_INDEX_TUPLES_PER_PAGE);
        self.posting.clear();
        self.posting.reserve(BLCKSZ);
    }

    /// Offset of the pending list's base tuple.
    pub fn baseoff(&self) -> u16 {
        self.baseoff
    }

    /// Tuples in the pending list.
    pub fn nitems(&self) -> usize {
        self.nitems
    }

    /// The posting lists formed so far.
    pub fn intervals(&self) -> &[DedupInterval] {
        &self.intervals
    }

    /// Mirrors _bt_dedup_start_pending: `base` starts a new pending list.
    pub fn start_pending(&mut self, base: &IndexTuple<'_>, baseoff: u16) -> Result<(), BtreeError> {
        self.htids.clear();
        if base.is_posting() {
            self.htids.extend(base.posting()?.iter());
            self.basetupsize = base.posting_offset();
        } else {
            self.htids.push(base.tid());
            self.basetupsize = base.size();
        }
        self.nitems = 1;
        self.base.clear();
        self.base.extend_from_slice(base.bytes());
        self.pending = true;
        self.baseoff = baseoff;
        Ok(())
    }

    /// Mirrors _bt_dedup_save_htid: adds `itup`'s TIDs to the pending list unless the
    /// merged tuple would exceed the size limit (then returns false).
    pub fn save_htid(&mut self, itup: &IndexTuple<'_>) -> Result<bool, BtreeError> {
        let posting = if itup.is_posting() {
            Some(itup.posting()?)
        } else {
            None
        };
        let nhtids = posting.map_or(1, |tids| tids.len());
        let merged =
            max_align(self.basetupsize + (self.htids.len() + nhtids) * SIZE_OF_ITEM_POINTER);
        if merged > self.maxpostingsize {
            return Ok(false);
        }
        self.nitems += 1;
        match posting {
            Some(tids) => self.htids.extend(tids.iter()),
            None => self.htids.push(itup.tid()),
        }
        Ok(true)
    }

    /// Mirrors _bt_dedup_finish_pending: appends the pending list to `newpage`, as the
    /// base tuple unchanged if nothing was merged into it, else as a new posting list
    /// tuple (which finishes an interval).
    pub fn finish_pending(&mut self, newpage: &mut Page) -> Result<(), BtreeError> {
        if !self.pending {
            return Err(BtreeError::NoPendingPosting);
        }
        self.pending = false;
        let base = IndexTuple::parse(&self.base)?;
        let tupoff = newpage.max_offset_number() + 1;
        if self.nitems == 1 {
            newpage.add_item_extended(base.bytes(), tupoff, AddItemFlags::default())?;
        } else {
            form_posting(&base, &self.htids, &mut self.posting)?;
            if self.posting.len() > self.maxpostingsize {
                return Err(BtreeError::PostingTooLarge {
                    size: self.posting.len(),
                    max: self.maxpostingsize,
                });
            }
            newpage.add_item_extended(&self.posting, tupoff, AddItemFlags::default())?;
            self.intervals.push(DedupInterval {
                baseoff: self.baseoff,
                nitems: self.nitems as u16,
            });
        }
        self.htids.clear();
        self.nitems = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::SIZE_OF_INDEX_TUPLE_DATA;

    fn tid(block: u32, offset: u16) -> ItemPointer {
        ItemPointer { block, offset }
    }

    fn tids_of(tuple: &IndexTuple<'_>) -> Vec<ItemPointer> {
        tuple.posting().expect("tids").iter().collect()
    }

    fn form(base: &IndexTuple<'_>, htids: &[ItemPointer]) -> Result<Vec<u8>, BtreeError> {
        let mut out = Vec::new();
        form_posting(base, htids, &mut out).map(|()| out)
    }

    fn update(orig: &IndexTuple<'_>, deletetids: &[u16]) -> Result<Vec<u8>, BtreeError> {
        let mut out = Vec::new();
        update_posting(orig, deletetids.iter().copied(), &mut out).map(|()| out)
    }

    fn swap(
        newitem: &mut [u8],
        oposting: &IndexTuple<'_>,
        postingoff: usize,
    ) -> Result<Vec<u8>, BtreeError> {
        let mut out = Vec::new();
        swap_posting(newitem, oposting, postingoff, &mut out).map(|()| out)
    }

    /// A plain leaf tuple: header, an int4 key, padding to 16 bytes.
    fn leaf_tuple(key: u32, heap: ItemPointer) -> Vec<u8> {
        let mut tuple = vec![0u8; 16];
        set_tid(&mut tuple, heap).expect("tid");
        set_info(&mut tuple, 16).expect("info");
        tuple[SIZE_OF_INDEX_TUPLE_DATA..12].copy_from_slice(&key.to_le_bytes());
        tuple
    }

    #[test]
    fn form_update_and_swap_posting_lists() {
        let base = leaf_tuple(5, tid(1, 1));
        let base = IndexTuple::parse(&base).expect("base");
        let tids = [tid(1, 1), tid(1, 3), tid(2, 1), tid(4, 9)];
        let posting = form(&base, &tids).expect("form");
        // 16 key bytes + 4 TIDs = 40 bytes, MAXALIGNed.
        assert_eq!(posting.len(), 40);
        let parsed = IndexTuple::parse(&posting).expect("parse");
        assert!(parsed.is_posting());
        assert_eq!(parsed.info(), 40 | INDEX_ALT_TID_MASK);
        assert_eq!(parsed.posting_offset(), 16);
        assert_eq!(tids_of(&parsed), tids);
        assert_eq!(&posting[8..12], &5u32.to_le_bytes());

        // Delete the 2nd and 4th TIDs: still a posting list.
        let updated = update(&parsed, &[1, 3]).expect("update");
        let updated = IndexTuple::parse(&updated).expect("parse");
        assert_eq!(updated.size(), 32);
        assert_eq!(tids_of(&updated), [tids[0], tids[2]]);
        // Down to one TID: a plain tuple again.
        let single = update(&parsed, &[0, 1, 3]).expect("update");
        let single = IndexTuple::parse(&single).expect("parse");
        assert_eq!(single.size(), 16);
        assert!(!single.is_posting() && !single.is_pivot());
        assert_eq!(single.tid(), tids[2]);
        assert!(update(&parsed, &[0, 1, 2, 3]).is_err());
        assert!(update(&parsed, &[3, 1]).is_err(), "unsorted");
        assert!(update(&parsed, &[7]).is_err(), "out of range");

        // A new item at (1, 2) splits the list after its first TID.
        let mut newitem = leaf_tuple(5, tid(1, 2));
        let nposting = swap(&mut newitem, &parsed, 1).expect("swap");
        let nposting = IndexTuple::parse(&nposting).expect("parse");
        assert_eq!(
            tids_of(&nposting),
            [tid(1, 1), tid(1, 2), tid(1, 3), tid(2, 1)]
        );
        assert_eq!(IndexTuple::parse(&newitem).expect("parse").tid(), tid(4, 9));
        let mut newitem = leaf_tuple(5, tid(1, 2));
        assert!(swap(&mut newitem, &parsed, 0).is_err());
        assert!(swap(&mut newitem, &parsed, 4).is_err());
    }

    #[test]
    fn dedup_state_merges_until_the_size_limit() {
        let mut page = Page::zeroed();
        page.init(16);
        let a = leaf_tuple(1, tid(1, 1));
        let b = leaf_tuple(1, tid(1, 2));
        let c = leaf_tuple(1, tid(1, 3));
        // A limit that fits two TIDs (16 + 12 = 28 -> 32) but not three (34 -> 40).
        let mut state = DedupState::new(32);
        state
            .start_pending(&IndexTuple::parse(&a).expect("a"), 1)
            .expect("start");
        assert!(
            state
                .save_htid(&IndexTuple::parse(&b).expect("b"))
                .expect("save")
        );
        assert!(
            !state
                .save_htid(&IndexTuple::parse(&c).expect("c"))
                .expect("save")
        );
        state.finish_pending(&mut page).expect("finish");
        state
            .start_pending(&IndexTuple::parse(&c).expect("c"), 3)
            .expect("start");
        state.finish_pending(&mut page).expect("finish");
        assert_eq!(
            state.intervals(),
            [DedupInterval {
                baseoff: 1,
                nitems: 2
            }]
        );
        assert_eq!(page.max_offset_number(), 2);
        let first = IndexTuple::parse(page.item(1).expect("item")).expect("parse");
        assert_eq!(tids_of(&first), [tid(1, 1), tid(1, 2)]);
        assert_eq!(page.item(2).expect("item"), &c[..]);
        assert!(matches!(
            state.finish_pending(&mut page),
            Err(BtreeError::NoPendingPosting)
        ));
    }
}
