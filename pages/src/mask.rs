//! The masks `wal_consistency_checking` applies before comparing a replayed page with
//! the page image the primary logged (`access/common/bufmask.c`, heap_mask in
//! heapam.c, btree_mask in nbtxlog.c), and the choice of mask by rmgr that
//! verifyBackupPageConsistency (xlogrecovery.c) makes: both pages get the record's
//! rmgr's `rm_mask`, and rmgrs without one are compared unmasked.
//!
//! Masked bytes are set to MASK_MARKER (0). Where C would write outside the page for a
//! corrupt line pointer, these return a [`MaskError`].

use crate::heap_tuple::{HEAP_XACT_MASK, HEAP_XMAX_COMMITTED, HEAP_XMAX_INVALID, HeapTupleHeader};
use crate::page::{
    BLCKSZ, LP_UNUSED, Page, SIZE_OF_PAGE_HEADER, SIZEOF_HEAP_TUPLE_HEADER, max_align,
};
use crate::redo::{RM_BTREE_ID, RM_HEAP_ID, RM_HEAP2_ID, RM_SEQ_ID};

/// MASK_MARKER (bufmask.h).
pub const MASK_MARKER: u8 = 0;

// btpo_flags bits (nbtree.h) that btree_mask needs.
const BTP_LEAF: u16 = 1 << 0;
const BTP_SPLIT_END: u16 = 1 << 5;
const BTP_HAS_GARBAGE: u16 = 1 << 6;
/// Offsets of btpo_flags and btpo_cycleid in BTPageOpaqueData {btpo_prev, btpo_next,
/// btpo_level, btpo_flags, btpo_cycleid}.
const BTPO_FLAGS: usize = 12;
const BTPO_CYCLEID: usize = 14;
const SIZE_OF_BT_PAGE_OPAQUE: usize = 16;

/// A page the masks cannot be applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("invalid page pd_lower {lower} pd_upper {upper} pd_special {special}")]
    InvalidPage {
        lower: u16,
        upper: u16,
        special: u16,
    },
    #[error("line pointer {offnum} (offset {offset}, length {len}) lies outside the page")]
    ItemOutsidePage {
        offnum: u16,
        offset: usize,
        len: usize,
    },
    #[error("the special space at {special} has no room for a btree page opaque")]
    NoBtreeOpaque { special: u16 },
    #[error("the {rmgr} rmgr's rm_mask is not ported")]
    NotPorted { rmgr: &'static str },
}

/// Mirrors mask_page_lsn_and_checksum (bufmask.c).
pub fn mask_page_lsn_and_checksum(page: &mut Page) {
    page.set_lsn(tarn_wal::Lsn(u64::from(MASK_MARKER)));
    page.set_checksum(u16::from(MASK_MARKER));
}

/// Mirrors mask_page_hint_bits (bufmask.c): pd_prune_xid, PD_PAGE_FULL,
/// PD_HAS_FREE_LINES and PD_ALL_VISIBLE are hints (or, for PD_ALL_VISIBLE, may lag
/// on replay).
pub fn mask_page_hint_bits(page: &mut Page) {
    page.set_prune_xid(u32::from(MASK_MARKER));
    page.set_full(false);
    page.set_has_free_line_pointers(false);
    page.set_all_visible(false);
}

/// Mirrors mask_unused_space (bufmask.c): the free space between pd_lower and
/// pd_upper.
pub fn mask_unused_space(page: &mut Page) -> Result<(), MaskError> {
    let (lower, upper, special) = (page.lower(), page.upper(), page.special());
    if lower > upper
        || special < upper
        || usize::from(lower) < SIZE_OF_PAGE_HEADER
        || usize::from(special) > BLCKSZ
    {
        return Err(MaskError::InvalidPage {
            lower,
            upper,
            special,
        });
    }
    page.as_bytes_mut()[usize::from(lower)..usize::from(upper)].fill(MASK_MARKER);
    Ok(())
}

/// Mirrors mask_lp_flags (bufmask.c): every used line pointer reads as LP_UNUSED.
pub fn mask_lp_flags(page: &mut Page) {
    for offnum in 1..=page.max_offset_number() {
        let Ok(item_id) = page.item_id(offnum) else {
            break;
        };
        if item_id.is_used() {
            // set_item_id cannot fail for an offset item_id accepted.
            let _ = page.set_item_id(offnum, item_id.with_flags(LP_UNUSED));
        }
    }
}

/// Mirrors mask_page_content (bufmask.c): everything after the header, and pd_lower
/// and pd_upper.
pub fn mask_page_content(page: &mut Page) {
    page.as_bytes_mut()[SIZE_OF_PAGE_HEADER..].fill(MASK_MARKER);
    page.set_lower(u16::from(MASK_MARKER));
    page.set_upper(u16::from(MASK_MARKER));
}

/// Mirrors heap_mask (heapam.c), the rm_mask of the Heap and Heap2 rmgrs (applied to
/// every page those records touch, visibility map pages included).
pub fn heap_mask(page: &mut Page, block: u32) -> Result<(), MaskError> {
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page)?;

    for offnum in 1..=page.max_offset_number() {
        let Ok(item_id) = page.item_id(offnum) else {
            break;
        };
        let offset = item_id.lp_off();
        if item_id.is_normal() {
            let header = page
                .as_bytes_mut()
                .get_mut(offset..offset + SIZEOF_HEAP_TUPLE_HEADER)
                .ok_or(MaskError::ItemOutsidePage {
                    offnum,
                    offset,
                    len: item_id.lp_len(),
                })?;
            let Some(mut htup) = HeapTupleHeader::new(header) else {
                unreachable!("the slice is exactly a tuple header");
            };
            // Hint bits may differ unless xmin is frozen; xmax hints always may.
            if !htup.xmin_frozen() {
                htup.set_infomask(htup.infomask() & !HEAP_XACT_MASK);
            } else {
                htup.set_infomask(htup.infomask() & !(HEAP_XMAX_INVALID | HEAP_XMAX_COMMITTED));
            }
            // Replay sets the command id to FirstCommandId.
            htup.set_field3(u32::from(MASK_MARKER));
            // A speculative insertion's ctid holds a token the primary never logs.
            if htup.is_speculative() {
                htup.set_ctid(block, offnum);
            }
        }
        // Padding after a tuple whose length is not MAXALIGNed.
        if item_id.has_storage() {
            let len = item_id.lp_len();
            let padded = max_align(len);
            if padded > len {
                page.as_bytes_mut()
                    .get_mut(offset + len..offset + padded)
                    .ok_or(MaskError::ItemOutsidePage {
                        offnum,
                        offset,
                        len,
                    })?
                    .fill(MASK_MARKER);
            }
        }
    }
    Ok(())
}

/// Mirrors btree_mask (nbtxlog.c), the rm_mask of the Btree rmgr.
pub fn btree_mask(page: &mut Page, _block: u32) -> Result<(), MaskError> {
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page)?;

    let special = usize::from(page.special());
    if special + SIZE_OF_BT_PAGE_OPAQUE > BLCKSZ {
        return Err(MaskError::NoBtreeOpaque {
            special: page.special(),
        });
    }
    let flags_at = special + BTPO_FLAGS;
    let flags = u16::from_le_bytes([page.as_bytes()[flags_at], page.as_bytes()[flags_at + 1]]);
    if flags & BTP_LEAF != 0 {
        // LP_DEAD hints on leaf pages are set without WAL.
        mask_lp_flags(page);
    }
    let flags = flags & !(BTP_HAS_GARBAGE | BTP_SPLIT_END);
    let bytes = page.as_bytes_mut();
    bytes[flags_at..flags_at + 2].copy_from_slice(&flags.to_le_bytes());
    bytes[special + BTPO_CYCLEID..special + BTPO_CYCLEID + 2].fill(0);
    Ok(())
}

/// Mirrors seq_mask (sequence.c), the rm_mask of the Sequence rmgr.
pub fn seq_mask(page: &mut Page, _block: u32) -> Result<(), MaskError> {
    mask_page_lsn_and_checksum(page);
    mask_unused_space(page)
}

/// An rmgr's `rm_mask` (rmgrlist.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmgrMask {
    /// The rmgr has no rm_mask: pages are compared as they are.
    None,
    Heap,
    Btree,
    Sequence,
    /// The rmgr has an rm_mask tarn has not ported (hash, gin, gist, spgist,
    /// brin, generic).
    NotPorted(&'static str),
}

/// The rm_mask of rmgr `rmid`.
pub fn rm_mask(rmid: u8) -> RmgrMask {
    match rmid {
        RM_HEAP2_ID | RM_HEAP_ID => RmgrMask::Heap,
        RM_BTREE_ID => RmgrMask::Btree,
        12 => RmgrMask::NotPorted("Hash"),
        13 => RmgrMask::NotPorted("Gin"),
        14 => RmgrMask::NotPorted("Gist"),
        RM_SEQ_ID => RmgrMask::Sequence,
        16 => RmgrMask::NotPorted("SPGist"),
        17 => RmgrMask::NotPorted("BRIN"),
        20 => RmgrMask::NotPorted("Generic"),
        _ => RmgrMask::None,
    }
}

/// Masks `page` (block number `block`) as verifyBackupPageConsistency does for a
/// record of rmgr `rmid`, before comparing replayed and logged pages.
pub fn mask_for_consistency_check(rmid: u8, page: &mut Page, block: u32) -> Result<(), MaskError> {
    match rm_mask(rmid) {
        RmgrMask::None => Ok(()),
        RmgrMask::Heap => heap_mask(page, block),
        RmgrMask::Btree => btree_mask(page, block),
        RmgrMask::Sequence => seq_mask(page, block),
        RmgrMask::NotPorted(rmgr) => Err(MaskError::NotPorted { rmgr }),
    }
}
