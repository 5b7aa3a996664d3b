//! The nbtree page format of PostgreSQL 15 (`access/nbtree.h`, `access/itup.h`,
//! `storage/itemptr.h`): the special space every btree page ends with
//! (BTPageOpaqueData), the metapage (BTMetaPageData), index tuples with their pivot
//! and posting-list representations, and the page-level helpers of nbtpage.c that
//! redo repeats (`_bt_pageinit`, `BTPageSetDeleted`). The posting list routines of
//! nbtdedup.c live in [`posting`].
//!
//! ```text
//! IndexTupleData:     0 t_tid (bi_hi u16, bi_lo u16, ip_posid u16)   6 t_info u16
//! t_info:             size (13 bits) | INDEX_ALT_TID_MASK | INDEX_VAR_MASK | INDEX_NULL_MASK
//! posting tuple:      t_info has INDEX_ALT_TID_MASK, t_tid = (posting offset, n | BT_IS_POSTING)
//! pivot tuple:        t_info has INDEX_ALT_TID_MASK, t_tid = (downlink, natts [| HEAP_TID_ATTR])
//! BTPageOpaqueData:   0 btpo_prev  4 btpo_next  8 btpo_level  12 btpo_flags  14 btpo_cycleid
//! ```
//!
//! Index tuples are read from bytes Postgres trusts (pages and records): every
//! accessor here checks that what it reads lies inside the tuple and returns a
//! [`BtreeError`] where C would read or write outside it.

pub mod posting;

use crate::page::{
    BLCKSZ, ITEM_ID_SIZE, MAXIMUM_ALIGNOF, Page, PageError, SIZE_OF_PAGE_HEADER, max_align,
};

// btpo_flags bits (nbtree.h).
pub const BTP_LEAF: u16 = 1 << 0;
pub const BTP_ROOT: u16 = 1 << 1;
pub const BTP_DELETED: u16 = 1 << 2;
pub const BTP_META: u16 = 1 << 3;
pub const BTP_HALF_DEAD: u16 = 1 << 4;
pub const BTP_SPLIT_END: u16 = 1 << 5;
pub const BTP_HAS_GARBAGE: u16 = 1 << 6;
pub const BTP_INCOMPLETE_SPLIT: u16 = 1 << 7;
pub const BTP_HAS_FULLXID: u16 = 1 << 8;

/// `P_NONE`: no sibling.
pub const P_NONE: u32 = 0;
/// `P_HIKEY`: the high key's offset on a page that is not rightmost.
pub const P_HIKEY: u16 = 1;
/// `P_FIRSTKEY`: the first data key on a page with a high key.
pub const P_FIRSTKEY: u16 = 2;

/// `BTREE_METAPAGE`: the metapage is block 0.
pub const BTREE_METAPAGE: u32 = 0;
/// `BTREE_MAGIC`.
pub const BTREE_MAGIC: u32 = 0x053162;
/// `BTREE_NOVAC_VERSION`: the oldest metapage version redo may write.
pub const BTREE_NOVAC_VERSION: u32 = 3;

/// `sizeof(BTPageOpaqueData)`.
pub const SIZE_OF_BT_PAGE_OPAQUE: usize = 16;
/// `sizeof(BTMetaPageData)`: six u32s, the delpages u32, padding, an f64 and a bool,
/// padded to 8.
pub const SIZE_OF_BT_META_PAGE_DATA: usize = 48;
/// `sizeof(BTDeletedPageData)`: the safexid (a FullTransactionId).
pub const SIZE_OF_BT_DELETED_PAGE_DATA: usize = 8;

/// `sizeof(IndexTupleData)`: t_tid and t_info.
pub const SIZE_OF_INDEX_TUPLE_DATA: usize = 8;
/// `sizeof(ItemPointerData)`.
pub const SIZE_OF_ITEM_POINTER: usize = 6;
/// Offset of t_info in IndexTupleData.
const T_INFO: usize = 6;

// t_info bits (itup.h, nbtree.h).
pub const INDEX_SIZE_MASK: u16 = 0x1FFF;
/// INDEX_AM_RESERVED_BIT, which nbtree calls INDEX_ALT_TID_MASK: t_tid is not a heap
/// TID but a pivot's or posting list's metadata.
pub const INDEX_ALT_TID_MASK: u16 = 0x2000;

// The offset-number half of t_tid when INDEX_ALT_TID_MASK is set.
pub const BT_OFFSET_MASK: u16 = 0x0FFF;
pub const BT_STATUS_OFFSET_MASK: u16 = 0xF000;
pub const BT_PIVOT_HEAP_TID_ATTR: u16 = 0x1000;
pub const BT_IS_POSTING: u16 = 0x2000;

/// `BTMaxItemSize(page)` for a standard 8 KiB page: a third of a page less room for
/// three line pointers and three heap TIDs, MAXALIGNed down (2704).
pub const BT_MAX_ITEM_SIZE: usize = max_align_down(
    (BLCKSZ
        - max_align(SIZE_OF_PAGE_HEADER + 3 * ITEM_ID_SIZE + 3 * SIZE_OF_ITEM_POINTER)
        - max_align(SIZE_OF_BT_PAGE_OPAQUE))
        / 3,
);

/// MAXALIGN_DOWN.
pub const fn max_align_down(len: usize) -> usize {
    len & !(MAXIMUM_ALIGNOF - 1)
}

/// A btree page or tuple that cannot be what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtreeError {
    #[error("the special space at {special} has no room for a btree page opaque")]
    NoOpaque { special: u16 },
    #[error("an index tuple needs {needed} bytes, only {available} are there")]
    ShortTuple { needed: usize, available: usize },
    #[error("index tuple size {size} is impossible with {available} bytes available")]
    BadTupleSize { size: usize, available: usize },
    #[error("the index tuple is not a posting list tuple")]
    NotPosting,
    #[error("posting list of {count} TIDs at {offset} does not fit a {size}-byte tuple")]
    PostingOutOfBounds {
        offset: usize,
        count: usize,
        size: usize,
    },
    #[error("posting list tuple with {nhtids} items cannot be split at offset {postingoff}")]
    BadPostingSplit { nhtids: usize, postingoff: usize },
    #[error("cannot delete TIDs {deletetids:?} from a posting list of {nhtids} TIDs")]
    BadDeletedTids { nhtids: usize, deletetids: Vec<u16> },
    #[error("a posting list of {nhtids} TIDs cannot be formed")]
    BadPostingCount { nhtids: usize },
    #[error("index tuple of {size} bytes exceeds INDEX_SIZE_MASK")]
    TupleTooLarge { size: usize },
    #[error("deduplication cannot fit {size} bytes into a posting list of at most {max} bytes")]
    PostingTooLarge { size: usize, max: usize },
    #[error("deduplication has no pending posting list")]
    NoPendingPosting,
    #[error(transparent)]
    Page(#[from] PageError),
}

/// ItemPointerData: a heap TID, or the metadata pivot and posting tuples keep in
/// t_tid. Ordered as ItemPointerCompare orders TIDs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemPointer {
    pub block: u32,
    pub offset: u16,
}

impl ItemPointer {
    /// Reads {bi_hi, bi_lo, ip_posid} from the first six bytes of `bytes`.
    pub fn read(bytes: &[u8; SIZE_OF_ITEM_POINTER]) -> ItemPointer {
        let bi_hi = u16::from_le_bytes([bytes[0], bytes[1]]);
        let bi_lo = u16::from_le_bytes([bytes[2], bytes[3]]);
        ItemPointer {
            block: (u32::from(bi_hi) << 16) | u32::from(bi_lo),
            offset: u16::from_le_bytes([bytes[4], bytes[5]]),
        }
    }

    pub fn to_bytes(self) -> [u8; SIZE_OF_ITEM_POINTER] {
        let hi = ((self.block >> 16) as u16).to_le_bytes();
        let lo = (self.block as u16).to_le_bytes();
        let posid = self.offset.to_le_bytes();
        [hi[0], hi[1], lo[0], lo[1], posid[0], posid[1]]
    }
}

/// The ItemPointer at `at` in `bytes`, checked.
fn item_pointer_at(bytes: &[u8], at: usize) -> Result<ItemPointer, BtreeError> {
    let raw: &[u8; SIZE_OF_ITEM_POINTER] = bytes
        .get(at..at + SIZE_OF_ITEM_POINTER)
        .and_then(|slice| slice.try_into().ok())
        .ok_or(BtreeError::ShortTuple {
            needed: at + SIZE_OF_ITEM_POINTER,
            available: bytes.len(),
        })?;
    Ok(ItemPointer::read(raw))
}

/// IndexTupleSize of the tuple at the start of `bytes` (which must hold at least an
/// IndexTupleData): the size t_info claims, not checked against `bytes`.
pub fn index_tuple_size(bytes: &[u8]) -> Result<usize, BtreeError> {
    if bytes.len() < SIZE_OF_INDEX_TUPLE_DATA {
        return Err(BtreeError::ShortTuple {
            needed: SIZE_OF_INDEX_TUPLE_DATA,
            available: bytes.len(),
        });
    }
    Ok(usize::from(
        u16::from_le_bytes([bytes[T_INFO], bytes[T_INFO + 1]]) & INDEX_SIZE_MASK,
    ))
}

/// An index tuple: exactly IndexTupleSize bytes, at least an IndexTupleData.
#[derive(Clone, Copy, Debug)]
pub struct IndexTuple<'a> {
    bytes: &'a [u8],
}

impl<'a> IndexTuple<'a> {
    /// The index tuple at the start of `bytes`: its size must lie within `bytes` and
    /// cover the header.
    pub fn parse(bytes: &'a [u8]) -> Result<IndexTuple<'a>, BtreeError> {
        let size = index_tuple_size(bytes)?;
        if size < SIZE_OF_INDEX_TUPLE_DATA || size > bytes.len() {
            return Err(BtreeError::BadTupleSize {
                size,
                available: bytes.len(),
            });
        }
        Ok(IndexTuple {
            bytes: &bytes[..size],
        })
    }

    /// The tuple's IndexTupleSize bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// IndexTupleSize.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    pub fn info(&self) -> u16 {
        u16::from_le_bytes([self.bytes[T_INFO], self.bytes[T_INFO + 1]])
    }

    /// t_tid as stored (a heap TID only for plain non-pivot tuples).
    pub fn tid(&self) -> ItemPointer {
        match item_pointer_at(self.bytes, 0) {
            Ok(tid) => tid,
            Err(_) => unreachable!("parse checked the header"),
        }
    }

    /// BTreeTupleIsPivot.
    pub fn is_pivot(&self) -> bool {
        self.info() & INDEX_ALT_TID_MASK != 0 && self.tid().offset & BT_IS_POSTING == 0
    }

    /// BTreeTupleIsPosting.
    pub fn is_posting(&self) -> bool {
        self.info() & INDEX_ALT_TID_MASK != 0 && self.tid().offset & BT_IS_POSTING != 0
    }

    /// BTreeTupleGetNPosting (of a posting tuple).
    pub fn n_posting(&self) -> usize {
        usize::from(self.tid().offset & BT_OFFSET_MASK)
    }

    /// BTreeTupleGetPostingOffset (of a posting tuple).
    pub fn posting_offset(&self) -> usize {
        self.tid().block as usize
    }

    /// The heap TIDs of a posting list tuple (BTreeTupleGetPosting), checked to lie
    /// inside the tuple, read in place.
    pub fn posting(&self) -> Result<PostingList<'a>, BtreeError> {
        if !self.is_posting() {
            return Err(BtreeError::NotPosting);
        }
        let (offset, count) = (self.posting_offset(), self.n_posting());
        let end = offset + count * SIZE_OF_ITEM_POINTER;
        if offset < SIZE_OF_INDEX_TUPLE_DATA || end > self.size() {
            return Err(BtreeError::PostingOutOfBounds {
                offset,
                count,
                size: self.size(),
            });
        }
        Ok(PostingList {
            bytes: &self.bytes[offset..end],
        })
    }

    /// The key part of a non-pivot tuple: everything before the posting list, or the
    /// whole tuple (the keysize of _bt_form_posting).
    pub fn key_size(&self) -> Result<usize, BtreeError> {
        if self.is_posting() {
            let offset = self.posting_offset();
            if offset < SIZE_OF_INDEX_TUPLE_DATA || offset > self.size() {
                return Err(BtreeError::PostingOutOfBounds {
                    offset,
                    count: self.n_posting(),
                    size: self.size(),
                });
            }
            Ok(offset)
        } else {
            Ok(self.size())
        }
    }
}

/// The heap TIDs of a posting list tuple, as they lie in it (BTreeTupleGetPosting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostingList<'a> {
    /// A whole number of ItemPointerData.
    bytes: &'a [u8],
}

impl<'a> PostingList<'a> {
    pub fn len(&self) -> usize {
        self.bytes.len() / SIZE_OF_ITEM_POINTER
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// BTreeTupleGetPostingN.
    pub fn get(&self, n: usize) -> Option<ItemPointer> {
        item_pointer_at(self.bytes, n * SIZE_OF_ITEM_POINTER).ok()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = ItemPointer> + Clone + 'a {
        self.bytes.chunks_exact(SIZE_OF_ITEM_POINTER).map(|raw| {
            let raw: &[u8; SIZE_OF_ITEM_POINTER] = match raw.try_into() {
                Ok(raw) => raw,
                Err(_) => unreachable!("chunks_exact yields whole item pointers"),
            };
            ItemPointer::read(raw)
        })
    }

    /// The TIDs as stored, 6 bytes each.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Writes t_tid of the tuple in `tuple`.
pub fn set_tid(tuple: &mut [u8], tid: ItemPointer) -> Result<(), BtreeError> {
    let available = tuple.len();
    tuple
        .get_mut(..SIZE_OF_ITEM_POINTER)
        .ok_or(BtreeError::ShortTuple {
            needed: SIZE_OF_ITEM_POINTER,
            available,
        })?
        .copy_from_slice(&tid.to_bytes());
    Ok(())
}

/// Writes t_info of the tuple in `tuple`.
pub fn set_info(tuple: &mut [u8], info: u16) -> Result<(), BtreeError> {
    let available = tuple.len();
    tuple
        .get_mut(T_INFO..T_INFO + 2)
        .ok_or(BtreeError::ShortTuple {
            needed: SIZE_OF_INDEX_TUPLE_DATA,
            available,
        })?
        .copy_from_slice(&info.to_le_bytes());
    Ok(())
}

/// BTreeTupleGetDownLink: the block half of a pivot tuple's t_tid.
pub fn downlink(tuple: &[u8]) -> Result<u32, BtreeError> {
    Ok(item_pointer_at(tuple, 0)?.block)
}

/// BTreeTupleSetDownLink: sets the block half of t_tid, keeping the offset half.
pub fn set_downlink(tuple: &mut [u8], block: u32) -> Result<(), BtreeError> {
    let mut tid = item_pointer_at(tuple, 0)?;
    tid.block = block;
    set_tid(tuple, tid)
}

/// The dummy high key of a half-dead leaf page: an IndexTupleData of its own size,
/// a pivot with no attributes whose downlink is the top parent of the subtree being
/// deleted (the trunctuple of btree_xlog_mark_page_halfdead, BTreeTupleSetTopParent).
pub fn top_parent_high_key(topparent: u32) -> [u8; SIZE_OF_INDEX_TUPLE_DATA] {
    let mut tuple = [0u8; SIZE_OF_INDEX_TUPLE_DATA];
    // BTreeTupleSetNAtts(itup, 0, false): ALT_TID set, offset half = 0 attributes.
    let info = SIZE_OF_INDEX_TUPLE_DATA as u16 | INDEX_ALT_TID_MASK;
    tuple[..SIZE_OF_ITEM_POINTER].copy_from_slice(
        &ItemPointer {
            block: topparent,
            offset: 0,
        }
        .to_bytes(),
    );
    tuple[T_INFO..].copy_from_slice(&info.to_le_bytes());
    tuple
}

/// BTPageOpaqueData: the special space of every btree page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BtPageOpaque {
    pub prev: u32,
    pub next: u32,
    pub level: u32,
    pub flags: u16,
    pub cycleid: u16,
}

impl BtPageOpaque {
    fn position(page: &Page) -> Result<usize, BtreeError> {
        let special = usize::from(page.special());
        if special < SIZE_OF_PAGE_HEADER || special + SIZE_OF_BT_PAGE_OPAQUE > BLCKSZ {
            return Err(BtreeError::NoOpaque {
                special: page.special(),
            });
        }
        Ok(special)
    }

    /// BTPageGetOpaque: the opaque at pd_special.
    pub fn read(page: &Page) -> Result<BtPageOpaque, BtreeError> {
        let at = BtPageOpaque::position(page)?;
        let b = &page.as_bytes()[at..at + SIZE_OF_BT_PAGE_OPAQUE];
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(BtPageOpaque {
            prev: u32_at(0),
            next: u32_at(4),
            level: u32_at(8),
            flags: u16::from_le_bytes([b[12], b[13]]),
            cycleid: u16::from_le_bytes([b[14], b[15]]),
        })
    }

    pub fn write(&self, page: &mut Page) -> Result<(), BtreeError> {
        let at = BtPageOpaque::position(page)?;
        let b = &mut page.as_bytes_mut()[at..at + SIZE_OF_BT_PAGE_OPAQUE];
        b[0..4].copy_from_slice(&self.prev.to_le_bytes());
        b[4..8].copy_from_slice(&self.next.to_le_bytes());
        b[8..12].copy_from_slice(&self.level.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.cycleid.to_le_bytes());
        Ok(())
    }

    /// Reads the page's opaque, lets `change` edit it and writes it back.
    pub fn update(
        page: &mut Page,
        change: impl FnOnce(&mut BtPageOpaque),
    ) -> Result<(), BtreeError> {
        let mut opaque = BtPageOpaque::read(page)?;
        change(&mut opaque);
        opaque.write(page)
    }

    /// P_RIGHTMOST.
    pub fn is_rightmost(&self) -> bool {
        self.next == P_NONE
    }

    /// P_ISLEAF.
    pub fn is_leaf(&self) -> bool {
        self.flags & BTP_LEAF != 0
    }

    /// P_FIRSTDATAKEY: the rightmost page has no high key.
    pub fn first_data_key(&self) -> u16 {
        if self.is_rightmost() {
            P_HIKEY
        } else {
            P_FIRSTKEY
        }
    }
}

/// Mirrors _bt_pageinit (nbtpage.c): PageInit with a btree opaque as special space.
pub fn bt_pageinit(page: &mut Page) {
    page.init(SIZE_OF_BT_PAGE_OPAQUE);
}

/// Mirrors BTPageSetDeleted (nbtree.h): marks the page deleted, stores the safexid
/// as its only content and empties it.
pub fn bt_page_set_deleted(page: &mut Page, safexid: u64) -> Result<(), BtreeError> {
    BtPageOpaque::update(page, |opaque| {
        opaque.flags &= !BTP_HALF_DEAD;
        opaque.flags |= BTP_DELETED | BTP_HAS_FULLXID;
    })?;
    page.set_lower((max_align(SIZE_OF_PAGE_HEADER) + SIZE_OF_BT_DELETED_PAGE_DATA) as u16);
    page.set_upper(page.special());
    page.contents_mut()[..SIZE_OF_BT_DELETED_PAGE_DATA].copy_from_slice(&safexid.to_le_bytes());
    Ok(())
}

/// BTMetaPageData, at PageGetContents of block 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BtMetaPageData {
    pub magic: u32,
    pub version: u32,
    pub root: u32,
    pub level: u32,
    pub fastroot: u32,
    pub fastlevel: u32,
    pub last_cleanup_num_delpages: u32,
    /// Deprecated since PG14; redo always writes -1.0.
    pub last_cleanup_num_heap_tuples: f64,
    pub allequalimage: bool,
}

impl BtMetaPageData {
    pub fn read(page: &Page) -> BtMetaPageData {
        let b = &page.contents()[..SIZE_OF_BT_META_PAGE_DATA];
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut heap_tuples = [0u8; 8];
        heap_tuples.copy_from_slice(&b[32..40]);
        BtMetaPageData {
            magic: u32_at(0),
            version: u32_at(4),
            root: u32_at(8),
            level: u32_at(12),
            fastroot: u32_at(16),
            fastlevel: u32_at(20),
            last_cleanup_num_delpages: u32_at(24),
            last_cleanup_num_heap_tuples: f64::from_le_bytes(heap_tuples),
            allequalimage: b[40] != 0,
        }
    }

    /// Writes the fields (not the padding between them) at PageGetContents.
    pub fn write(&self, page: &mut Page) {
        let b = &mut page.contents_mut()[..SIZE_OF_BT_META_PAGE_DATA];
        for (at, value) in [
            (0, self.magic),
            (4, self.version),
            (8, self.root),
            (12, self.level),
            (16, self.fastroot),
            (20, self.fastlevel),
            (24, self.last_cleanup_num_delpages),
        ] {
            b[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        b[32..40].copy_from_slice(&self.last_cleanup_num_heap_tuples.to_le_bytes());
        b[40] = u8::from(self.allequalimage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_postgres() {
        assert_eq!(BT_MAX_ITEM_SIZE, 2704);
        assert_eq!(
            max_align(SIZE_OF_PAGE_HEADER) + SIZE_OF_BT_META_PAGE_DATA,
            72,
            "pd_lower of a metapage"
        );
    }

    #[test]
    fn item_pointers_store_the_block_high_half_first() {
        let tid = ItemPointer {
            block: 0x0001_0002,
            offset: 7,
        };
        assert_eq!(tid.to_bytes(), [1, 0, 2, 0, 7, 0]);
        assert_eq!(ItemPointer::read(&tid.to_bytes()), tid);
    }

    #[test]
    fn tuples_are_checked_against_their_bytes() {
        let mut tuple = vec![0u8; 16];
        set_info(&mut tuple, 16).expect("info");
        let parsed = IndexTuple::parse(&tuple).expect("parse");
        assert_eq!(parsed.size(), 16);
        assert!(!parsed.is_pivot() && !parsed.is_posting());
        assert!(matches!(
            IndexTuple::parse(&tuple[..12]),
            Err(BtreeError::BadTupleSize { size: 16, .. })
        ));
        assert!(matches!(
            IndexTuple::parse(&tuple[..4]),
            Err(BtreeError::ShortTuple { .. })
        ));
        // A posting list claiming more TIDs than the tuple holds.
        set_info(&mut tuple, 16 | INDEX_ALT_TID_MASK).expect("info");
        set_tid(
            &mut tuple,
            ItemPointer {
                block: 8,
                offset: 3 | BT_IS_POSTING,
            },
        )
        .expect("tid");
        let parsed = IndexTuple::parse(&tuple).expect("parse");
        assert!(parsed.is_posting());
        assert!(matches!(
            parsed.posting(),
            Err(BtreeError::PostingOutOfBounds { count: 3, .. })
        ));
    }

    #[test]
    fn top_parent_high_key_is_an_attributeless_pivot() {
        let key = top_parent_high_key(42);
        let tuple = IndexTuple::parse(&key).expect("parse");
        assert!(tuple.is_pivot());
        assert_eq!(downlink(&key).expect("downlink"), 42);
        assert_eq!(tuple.tid().offset, 0);
    }

    #[test]
    fn deleted_pages_keep_only_the_safexid() {
        let mut page = Page::zeroed();
        bt_pageinit(&mut page);
        BtPageOpaque::update(&mut page, |o| o.flags = BTP_HALF_DEAD | BTP_LEAF).expect("opaque");
        bt_page_set_deleted(&mut page, 0x1_0000_0005).expect("delete");
        let opaque = BtPageOpaque::read(&page).expect("opaque");
        assert_eq!(opaque.flags, BTP_LEAF | BTP_DELETED | BTP_HAS_FULLXID);
        assert_eq!(
            (page.lower(), page.upper(), page.special()),
            (32, 8176, 8176)
        );
        assert_eq!(&page.as_bytes()[24..32], &0x1_0000_0005u64.to_le_bytes());
    }
}
