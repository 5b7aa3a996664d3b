//! Redo of the Btree rmgr (btree_redo in nbtxlog.c), every record type:
//! INSERT_LEAF, INSERT_UPPER, INSERT_META, INSERT_POST, SPLIT_L, SPLIT_R, DEDUP,
//! VACUUM, DELETE, MARK_PAGE_HALFDEAD, UNLINK_PAGE, UNLINK_PAGE_META, NEWROOT and
//! META_CLEANUP. REUSE_PAGE only resolves hot standby conflicts: it has no block
//! reference and changes no page.
//!
//! Postgres redoes a record's blocks one after the other, each from the record and
//! its own page; so does [`redo`], for the one block it is asked about. Which block
//! ids a record type reads (and when) follows nbtxlog.c: a block Postgres's redo
//! would not read is reported as malformed rather than silently left alone.

use tarn_wal::decode::{DecodedRecord, RecordBytes, RelFileNode};

use super::{
    BlockRedo, BufferAction, Fields, OffsetNumbers, PageFault, ReadMode, RedoError, RedoScratch,
    malformed,
};
use crate::btree::posting::{DedupInterval, swap_posting, update_posting};
use crate::btree::{
    BT_MAX_ITEM_SIZE, BTP_HALF_DEAD, BTP_HAS_GARBAGE, BTP_INCOMPLETE_SPLIT, BTP_LEAF, BTP_META,
    BTP_ROOT, BTREE_MAGIC, BTREE_METAPAGE, BtMetaPageData, BtPageOpaque, BtreeError, IndexTuple,
    P_HIKEY, P_NONE, SIZE_OF_BT_META_PAGE_DATA, bt_page_set_deleted, bt_pageinit, downlink,
    index_tuple_size, set_downlink, top_parent_high_key,
};
use crate::page::{AddItemFlags, BLCKSZ, MAX_INDEX_TUPLES_PER_PAGE, Page, PageError, max_align};

// XLOG_BTREE_* opcodes (nbtxlog.h).
pub const XLOG_BTREE_INSERT_LEAF: u8 = 0x00;
pub const XLOG_BTREE_INSERT_UPPER: u8 = 0x10;
pub const XLOG_BTREE_INSERT_META: u8 = 0x20;
pub const XLOG_BTREE_SPLIT_L: u8 = 0x30;
pub const XLOG_BTREE_SPLIT_R: u8 = 0x40;
pub const XLOG_BTREE_INSERT_POST: u8 = 0x50;
pub const XLOG_BTREE_DEDUP: u8 = 0x60;
pub const XLOG_BTREE_DELETE: u8 = 0x70;
pub const XLOG_BTREE_UNLINK_PAGE: u8 = 0x80;
pub const XLOG_BTREE_UNLINK_PAGE_META: u8 = 0x90;
pub const XLOG_BTREE_NEWROOT: u8 = 0xA0;
pub const XLOG_BTREE_MARK_PAGE_HALFDEAD: u8 = 0xB0;
pub const XLOG_BTREE_VACUUM: u8 = 0xC0;
pub const XLOG_BTREE_REUSE_PAGE: u8 = 0xD0;
pub const XLOG_BTREE_META_CLEANUP: u8 = 0xE0;

/// sizeof(xl_btree_metadata): six u32s and a bool, padded to 4.
const SIZE_OF_BTREE_METADATA: usize = 28;
/// sizeof(BTDedupInterval).
const SIZE_OF_DEDUP_INTERVAL: usize = 4;

/// Which of the four insert records: they share xl_btree_insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertKind {
    /// INSERT_LEAF: a plain leaf insertion.
    Leaf,
    /// INSERT_UPPER: a downlink into an internal page, finishing a child's split.
    Upper,
    /// INSERT_META: as UPPER, and the metapage's fast root moves.
    Meta,
    /// INSERT_POST: a leaf insertion that splits a posting list.
    Post,
}

/// xl_btree_split, for SPLIT_L (`newitemonleft`) and SPLIT_R.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitRecord {
    pub newitemonleft: bool,
    pub level: u32,
    pub firstrightoff: u16,
    pub newitemoff: u16,
    pub postingoff: u16,
}

/// xl_btree_unlink_page, for UNLINK_PAGE and UNLINK_PAGE_META (`with_meta`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnlinkRecord {
    pub with_meta: bool,
    pub leftsib: u32,
    pub rightsib: u32,
    pub level: u32,
    pub safexid: u64,
    pub leafleftsib: u32,
    pub leafrightsib: u32,
    pub leaftopparent: u32,
}

/// The main data of a Btree rmgr record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BtreeRecord {
    /// xl_btree_insert.
    Insert {
        kind: InsertKind,
        offnum: u16,
    },
    Split(SplitRecord),
    /// xl_btree_dedup; the intervals are in block 0's data.
    Dedup {
        nintervals: u16,
    },
    /// xl_btree_vacuum; offsets and posting list updates are in block 0's data.
    Vacuum {
        ndeleted: u16,
        nupdated: u16,
    },
    /// xl_btree_delete; as VACUUM.
    Delete {
        latest_removed_xid: u32,
        ndeleted: u16,
        nupdated: u16,
    },
    /// xl_btree_mark_page_halfdead: block 0 is the leaf, block 1 the parent.
    MarkPageHalfdead {
        poffset: u16,
        leafblk: u32,
        leftblk: u32,
        rightblk: u32,
        topparent: u32,
    },
    Unlink(UnlinkRecord),
    /// xl_btree_newroot: block 0 the root, 1 its left child, 2 the metapage.
    Newroot {
        rootblk: u32,
        level: u32,
    },
    /// xl_btree_reuse_page: no block reference.
    ReusePage {
        rel: RelFileNode,
        block: u32,
        latest_removed_full_xid: u64,
    },
    /// META_CLEANUP: the metadata is in block 0's data.
    MetaCleanup,
}

/// Parses a Btree rmgr record's main data.
pub fn parse_btree_record<D: RecordBytes>(
    record: &DecodedRecord<D>,
) -> Result<BtreeRecord, RedoError> {
    let info = record.rmgr_info();
    let data = Fields::new(&record.main_data, "main data");
    let parsed = (|| -> Result<BtreeRecord, String> {
        let insert = |kind| -> Result<BtreeRecord, String> {
            data.require(2)?;
            Ok(BtreeRecord::Insert {
                kind,
                offnum: data.u16(0)?,
            })
        };
        Ok(match info {
            XLOG_BTREE_INSERT_LEAF => insert(InsertKind::Leaf)?,
            XLOG_BTREE_INSERT_UPPER => insert(InsertKind::Upper)?,
            XLOG_BTREE_INSERT_META => insert(InsertKind::Meta)?,
            XLOG_BTREE_INSERT_POST => insert(InsertKind::Post)?,
            XLOG_BTREE_SPLIT_L | XLOG_BTREE_SPLIT_R => {
                data.require(10)?;
                BtreeRecord::Split(SplitRecord {
                    newitemonleft: info == XLOG_BTREE_SPLIT_L,
                    level: data.u32(0)?,
                    firstrightoff: data.u16(4)?,
                    newitemoff: data.u16(6)?,
                    postingoff: data.u16(8)?,
                })
            }
            XLOG_BTREE_DEDUP => {
                data.require(2)?;
                BtreeRecord::Dedup {
                    nintervals: data.u16(0)?,
                }
            }
            XLOG_BTREE_VACUUM => {
                data.require(4)?;
                BtreeRecord::Vacuum {
                    ndeleted: data.u16(0)?,
                    nupdated: data.u16(2)?,
                }
            }
            XLOG_BTREE_DELETE => {
                data.require(8)?;
                BtreeRecord::Delete {
                    latest_removed_xid: data.u32(0)?,
                    ndeleted: data.u16(4)?,
                    nupdated: data.u16(6)?,
                }
            }
            XLOG_BTREE_MARK_PAGE_HALFDEAD => {
                // {poffset u16, pad, leafblk, leftblk, rightblk, topparent}
                data.require(20)?;
                BtreeRecord::MarkPageHalfdead {
                    poffset: data.u16(0)?,
                    leafblk: data.u32(4)?,
                    leftblk: data.u32(8)?,
                    rightblk: data.u32(12)?,
                    topparent: data.u32(16)?,
                }
            }
            XLOG_BTREE_UNLINK_PAGE | XLOG_BTREE_UNLINK_PAGE_META => {
                // {leftsib, rightsib, level, pad, safexid u64, leafleftsib,
                //  leafrightsib, leaftopparent}: the u64 is 8-aligned.
                data.require(36)?;
                BtreeRecord::Unlink(UnlinkRecord {
                    with_meta: info == XLOG_BTREE_UNLINK_PAGE_META,
                    leftsib: data.u32(0)?,
                    rightsib: data.u32(4)?,
                    level: data.u32(8)?,
                    safexid: u64::from(data.u32(16)?) | (u64::from(data.u32(20)?) << 32),
                    leafleftsib: data.u32(24)?,
                    leafrightsib: data.u32(28)?,
                    leaftopparent: data.u32(32)?,
                })
            }
            XLOG_BTREE_NEWROOT => {
                data.require(8)?;
                BtreeRecord::Newroot {
                    rootblk: data.u32(0)?,
                    level: data.u32(4)?,
                }
            }
            XLOG_BTREE_REUSE_PAGE => {
                // {RelFileNode, block, latestRemovedFullXid u64}
                data.require(24)?;
                BtreeRecord::ReusePage {
                    rel: RelFileNode {
                        spc_node: data.u32(0)?,
                        db_node: data.u32(4)?,
                        rel_node: data.u32(8)?,
                    },
                    block: data.u32(12)?,
                    latest_removed_full_xid: u64::from(data.u32(16)?)
                        | (u64::from(data.u32(20)?) << 32),
                }
            }
            XLOG_BTREE_META_CLEANUP => BtreeRecord::MetaCleanup,
            other => return Err(format!("btree_redo: unknown op code {other:#04x}")),
        })
    })();
    parsed.map_err(|detail| malformed(record, detail))
}

/// Every Btree opcode nbtxlog.c knows has native redo.
pub(crate) fn is_supported(rmgr_info: u8) -> bool {
    rmgr_info <= XLOG_BTREE_META_CLEANUP
}

pub(crate) fn redo(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    scratch: &mut RedoScratch,
) -> Result<(), RedoError> {
    let block_id = redo.block.block_id;
    match parse_btree_record(redo.record)? {
        BtreeRecord::Insert { kind, offnum } => match block_id {
            0 => insert(redo, page, kind, offnum, scratch),
            1 if kind != InsertKind::Leaf && kind != InsertKind::Post => {
                clear_incomplete_split(redo, page)
            }
            2 if kind == InsertKind::Meta => restore_meta(redo, page),
            _ => Err(not_read(redo)),
        },
        BtreeRecord::Split(split) => match block_id {
            0 => split_left(redo, page, &split, scratch),
            1 => split_right(redo, page, &split),
            2 => {
                let right = redo.other_block(1)?.block;
                set_sibling_link(redo, page, Link::Prev(right))
            }
            3 if split.level != 0 => clear_incomplete_split(redo, page),
            _ => Err(not_read(redo)),
        },
        BtreeRecord::Dedup { nintervals } => match block_id {
            0 => dedup(redo, page, nintervals, scratch),
            _ => Err(not_read(redo)),
        },
        BtreeRecord::Vacuum { ndeleted, nupdated }
        | BtreeRecord::Delete {
            ndeleted, nupdated, ..
        } => match block_id {
            0 => delete_items(redo, page, ndeleted, nupdated, scratch.posting()),
            _ => Err(not_read(redo)),
        },
        BtreeRecord::MarkPageHalfdead {
            poffset,
            leftblk,
            rightblk,
            topparent,
            ..
        } => match block_id {
            // mirrors btree_xlog_mark_page_halfdead (nbtxlog.c): the leaf is rewritten
            // as a half-dead page whose high key points to the subtree's top parent.
            0 => init_half_dead_leaf(redo, page, leftblk, rightblk, topparent),
            1 => remove_downlink(redo, page, poffset),
            _ => Err(not_read(redo)),
        },
        BtreeRecord::Unlink(unlink) => match block_id {
            // mirrors btree_xlog_unlink_page (nbtxlog.c)
            0 => init_deleted_page(redo, page, &unlink),
            1 if unlink.leftsib != P_NONE => {
                set_sibling_link(redo, page, Link::Next(unlink.rightsib))
            }
            2 => set_sibling_link(redo, page, Link::Prev(unlink.leftsib)),
            // The target was an internal page: the leaf's top parent link moves down.
            3 => init_half_dead_leaf(
                redo,
                page,
                unlink.leafleftsib,
                unlink.leafrightsib,
                unlink.leaftopparent,
            ),
            4 if unlink.with_meta => restore_meta(redo, page),
            _ => Err(not_read(redo)),
        },
        BtreeRecord::Newroot { level, .. } => match block_id {
            0 => new_root(redo, page, level),
            1 if level > 0 => clear_incomplete_split(redo, page),
            2 => restore_meta(redo, page),
            _ => Err(not_read(redo)),
        },
        BtreeRecord::ReusePage { .. } => {
            Err(redo.malformed("Btree/REUSE_PAGE references no block"))
        }
        BtreeRecord::MetaCleanup => match block_id {
            0 => restore_meta(redo, page),
            _ => Err(not_read(redo)),
        },
    }
}

/// A block reference Postgres's redo routine for this record would never read.
fn not_read(redo: &BlockRedo<'_>) -> RedoError {
    redo.malformed(format!(
        "block {} is not one that btree redo of this record reads",
        redo.block.block_id
    ))
}

fn btree_fault<'r>(redo: &'r BlockRedo<'_>) -> impl Fn(BtreeError) -> RedoError + 'r {
    move |error| redo.fault(PageFault::Btree(error))
}

/// PageAddItem(page, item, len, offnum, false, false), which btree redo PANICs or
/// ERRORs on failing.
fn add_item(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    item: &[u8],
    offnum: u16,
) -> Result<(), RedoError> {
    page.add_item_extended(item, offnum, AddItemFlags::default())
        .map_err(|source| redo.fault(PageFault::AddTuple { offnum, source }))?;
    Ok(())
}

/// Pads `item` with zeros to MAXALIGN of its length: a tuple Postgres builds in a
/// buffer of IndexTupleSize bytes but copies MAXALIGN(IndexTupleSize) of (the two are
/// equal for every tuple nbtree forms).
fn pad_to_max_align(item: &mut Vec<u8>) {
    item.resize(max_align(item.len()), 0);
}

/// PageGetItem for an existing line pointer (1..=PageGetMaxOffsetNumber).
fn item_at<'p>(redo: &BlockRedo<'_>, page: &'p Page, offnum: u16) -> Result<&'p [u8], RedoError> {
    page.item_id_checked(offnum)
        .map_err(|error| redo.fault(error))?;
    page.item(offnum).map_err(|error| redo.fault(error))
}

/// The index tuple at `offnum`.
fn tuple_at<'p>(
    redo: &BlockRedo<'_>,
    page: &'p Page,
    offnum: u16,
) -> Result<IndexTuple<'p>, RedoError> {
    IndexTuple::parse(item_at(redo, page, offnum)?).map_err(btree_fault(redo))
}

fn update_opaque(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    change: impl FnOnce(&mut BtPageOpaque),
) -> Result<(), RedoError> {
    BtPageOpaque::update(page, change).map_err(btree_fault(redo))
}

fn read_opaque(redo: &BlockRedo<'_>, page: &Page) -> Result<BtPageOpaque, RedoError> {
    BtPageOpaque::read(page).map_err(btree_fault(redo))
}

// mirrors btree_xlog_insert (nbtxlog.c), the page inserted into (block 0)
fn insert(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    kind: InsertKind,
    offnum: u16,
    scratch: &mut RedoScratch,
) -> Result<(), RedoError> {
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    let data = redo.block.data;
    if kind != InsertKind::Post {
        // Simple retail insertion.
        add_item(redo, page, data, offnum)?;
    } else {
        // A posting list split: the data starts with the offset inside the posting
        // list, then 'orignewitem'; _bt_swap_posting repeats the primary's steps.
        let postingoff = Fields::new(data, "block data")
            .u16(0)
            .map_err(|detail| redo.malformed(detail))?;
        let (newitem, nposting) = scratch.tuple_and_posting();
        newitem.extend_from_slice(&data[2..]);
        let size = index_tuple_size(newitem).map_err(|error| redo.malformed(error.to_string()))?;
        if size != newitem.len() {
            return Err(redo.malformed(format!(
                "posting split new item of {size} bytes arrives with {} bytes",
                newitem.len()
            )));
        }
        let posting_offnum = offnum.saturating_sub(1);
        {
            let oposting = tuple_at(redo, page, posting_offnum)?;
            swap_posting(newitem, &oposting, usize::from(postingoff), nposting)
                .map_err(btree_fault(redo))?;
        }
        // Replace the existing posting list with its post-split version, in place.
        overwrite_in_place(redo, page, posting_offnum, nposting)?;
        // Insert the "final" new item, not orignewitem from the record.
        add_item(redo, page, newitem, offnum)?;
    }
    page.set_lsn(redo.end_lsn());
    Ok(())
}

/// `memcpy(PageGetItem(page, offnum), tuple, MAXALIGN(IndexTupleSize(tuple)))`.
fn overwrite_in_place(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    offnum: u16,
    tuple: &[u8],
) -> Result<(), RedoError> {
    let item_id = page
        .item_id_checked(offnum)
        .map_err(|error| redo.fault(error))?;
    let len = max_align(tuple.len());
    let at = item_id.lp_off();
    if at + len > BLCKSZ {
        return Err(redo.fault(crate::page::PageError::ItemOutsidePage {
            offnum,
            offset: at,
            len,
        }));
    }
    let target = &mut page.as_bytes_mut()[at..at + len];
    target[..tuple.len()].copy_from_slice(tuple);
    target[tuple.len()..].fill(0);
    Ok(())
}

// mirrors _bt_clear_incomplete_split (nbtxlog.c): the child whose split a downlink
// insertion finishes
fn clear_incomplete_split(redo: &BlockRedo<'_>, page: &mut Page) -> Result<(), RedoError> {
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    update_opaque(redo, page, |opaque| opaque.flags &= !BTP_INCOMPLETE_SPLIT)?;
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors _bt_restore_meta (nbtxlog.c): the metapage is rebuilt from the record
fn restore_meta(redo: &BlockRedo<'_>, page: &mut Page) -> Result<(), RedoError> {
    redo.read_buffer_for_redo(page, ReadMode::ZeroAndLock)?;
    let data = redo.block.data;
    if data.len() != SIZE_OF_BTREE_METADATA {
        return Err(redo.malformed(format!(
            "xl_btree_metadata is {} bytes, expected {SIZE_OF_BTREE_METADATA}",
            data.len()
        )));
    }
    if redo.block.block != BTREE_METAPAGE {
        return Err(redo.malformed(format!(
            "metapage data for block {}, not the metapage",
            redo.block.block
        )));
    }
    let fields = Fields::new(data, "xl_btree_metadata");
    let meta = (|| -> Result<BtMetaPageData, String> {
        Ok(BtMetaPageData {
            magic: BTREE_MAGIC,
            version: fields.u32(0)?,
            root: fields.u32(4)?,
            level: fields.u32(8)?,
            fastroot: fields.u32(12)?,
            fastlevel: fields.u32(16)?,
            last_cleanup_num_delpages: fields.u32(20)?,
            last_cleanup_num_heap_tuples: -1.0,
            allequalimage: fields.u8(24)? != 0,
        })
    })()
    .map_err(|detail| redo.malformed(detail))?;
    bt_pageinit(page);
    meta.write(page);
    update_opaque(redo, page, |opaque| opaque.flags = BTP_META)?;
    // pd_lower just past the metadata, so that the page's hole cannot eat it.
    page.set_lower(
        (max_align(crate::page::SIZE_OF_PAGE_HEADER) + SIZE_OF_BT_META_PAGE_DATA) as u16,
    );
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors _bt_restore_page (nbtxlog.c): `data` is what was a page's pd_upper ..
// pd_special, tuples in reverse item number order; they are added back in item
// number order so that each lands where it was.
fn restore_page(redo: &BlockRedo<'_>, page: &mut Page, data: &[u8]) -> Result<(), RedoError> {
    // Where each item starts (items are contiguous: one ends where the next starts).
    let mut starts = [0u16; MAX_INDEX_TUPLES_PER_PAGE + 1];
    let mut nitems = 0usize;
    let mut pos = 0usize;
    while pos < data.len() {
        let size =
            index_tuple_size(&data[pos..]).map_err(|error| redo.malformed(error.to_string()))?;
        let itemsz = max_align(size);
        if itemsz == 0 || pos + itemsz > data.len() {
            return Err(redo.malformed(format!(
                "page contents: item of {size} bytes at {pos} of {}",
                data.len()
            )));
        }
        if nitems == MAX_INDEX_TUPLES_PER_PAGE {
            return Err(redo.malformed("page contents: more than MaxIndexTuplesPerPage items"));
        }
        // pos < data.len(), and data is a block's data (u16 length).
        starts[nitems] = pos as u16;
        nitems += 1;
        pos += itemsz;
    }
    starts[nitems] = pos as u16;
    for i in (0..nitems).rev() {
        let item = &data[usize::from(starts[i])..usize::from(starts[i + 1])];
        add_item(redo, page, item, (nitems - i) as u16)?;
    }
    Ok(())
}

// mirrors btree_xlog_split (nbtxlog.c), the new right sibling (block 1), rebuilt
// from scratch
fn split_right(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    split: &SplitRecord,
) -> Result<(), RedoError> {
    redo.read_buffer_for_redo(page, ReadMode::ZeroAndLock)?;
    let origpagenumber = redo.other_block(0)?.block;
    let spagenumber = redo.record.block(2).map_or(P_NONE, |block| block.block);
    bt_pageinit(page);
    let opaque = BtPageOpaque {
        prev: origpagenumber,
        next: spagenumber,
        level: split.level,
        flags: if split.level == 0 { BTP_LEAF } else { 0 },
        cycleid: 0,
    };
    opaque.write(page).map_err(btree_fault(redo))?;
    restore_page(redo, page, redo.block.data)?;
    page.set_lsn(redo.end_lsn());
    Ok(())
}

/// The first MAXALIGN(IndexTupleSize) bytes of `data` from `pos` (a tuple the
/// primary logged with its padding).
fn logged_tuple<'d>(
    redo: &BlockRedo<'_>,
    data: &'d [u8],
    pos: usize,
    what: &str,
) -> Result<&'d [u8], RedoError> {
    let rest = data.get(pos..).unwrap_or_default();
    let size =
        index_tuple_size(rest).map_err(|error| redo.malformed(format!("{what}: {error}")))?;
    rest.get(..max_align(size)).ok_or_else(|| {
        redo.malformed(format!(
            "{what} of {size} bytes at {pos} overruns {} bytes of block data",
            data.len()
        ))
    })
}

// mirrors btree_xlog_split (nbtxlog.c), the original page (block 0), which keeps the
// left half: rebuilt in item number order on a temporary page, as _bt_split did, so
// that every tuple lands where it did on the primary
fn split_left(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    split: &SplitRecord,
    scratch: &mut RedoScratch,
) -> Result<(), RedoError> {
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    let rightpagenumber = redo.other_block(1)?.block;
    let isleaf = split.level == 0;
    let data = redo.block.data;
    let mut pos = 0usize;
    let (newitem, nposting, leftpage) = scratch.tuple_posting_and_temp_page();
    // InvalidOffsetNumber: no data key is ever at offset 0.
    let mut replacepostingoff = 0u16;
    if split.newitemonleft || split.postingoff != 0 {
        newitem.extend_from_slice(logged_tuple(redo, data, pos, "new item")?);
        pos += newitem.len();
        if split.postingoff != 0 {
            // The posting list is at the offset before the new item's.
            replacepostingoff = split.newitemoff.saturating_sub(1);
            let oposting = tuple_at(redo, page, replacepostingoff)?;
            swap_posting(newitem, &oposting, usize::from(split.postingoff), nposting)
                .map_err(btree_fault(redo))?;
            pad_to_max_align(nposting);
        }
    }
    let left_hikey = logged_tuple(redo, data, pos, "left high key")?;
    pos += left_hikey.len();
    if pos != data.len() {
        return Err(redo.malformed(format!(
            "{} bytes of block data after the left high key",
            data.len() - pos
        )));
    }

    let oopaque = read_opaque(redo, page)?;
    page.temp_copy_special_into(leftpage)
        .map_err(|error| redo.fault(error))?;
    add_item(redo, leftpage, left_hikey, P_HIKEY)?;
    let mut leftoff = P_HIKEY + 1;
    let mut off = oopaque.first_data_key();
    while off < split.firstrightoff {
        if off == replacepostingoff {
            // The replacement posting list instead of oposting (padded above).
            add_item(redo, leftpage, nposting, leftoff)?;
            leftoff += 1;
            off += 1;
            continue;
        } else if split.newitemonleft && off == split.newitemoff {
            add_item(redo, leftpage, newitem, leftoff)?;
            leftoff += 1;
        }
        let item = item_at(redo, page, off)?;
        add_item(redo, leftpage, item, leftoff)?;
        leftoff += 1;
        off += 1;
    }
    // The new item may go at the very end of the left page.
    if split.newitemonleft && off == split.newitemoff {
        add_item(redo, leftpage, newitem, leftoff)?;
    }
    // PageRestoreTempPage; the old page becomes the next temporary page.
    std::mem::swap(page, leftpage);
    update_opaque(redo, page, |opaque| {
        opaque.flags = BTP_INCOMPLETE_SPLIT | if isleaf { BTP_LEAF } else { 0 };
        opaque.next = rightpagenumber;
        opaque.cycleid = 0;
    })?;
    page.set_lsn(redo.end_lsn());
    Ok(())
}

/// A sibling link to repoint.
#[derive(Clone, Copy, Debug)]
enum Link {
    /// btpo_prev: the page to the right of a split's new page, or of a deleted page.
    Prev(u32),
    /// btpo_next: the page to the left of a deleted page.
    Next(u32),
}

// mirrors the sibling updates of btree_xlog_split and btree_xlog_unlink_page
// (nbtxlog.c)
fn set_sibling_link(redo: &BlockRedo<'_>, page: &mut Page, link: Link) -> Result<(), RedoError> {
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    update_opaque(redo, page, |opaque| match link {
        Link::Prev(block) => opaque.prev = block,
        Link::Next(block) => opaque.next = block,
    })?;
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors btree_xlog_dedup (nbtxlog.c): the page is rebuilt on a temporary page by
// repeating the primary's deduplication pass, merging exactly the intervals it logged
fn dedup(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    nintervals: u16,
    scratch: &mut RedoScratch,
) -> Result<(), RedoError> {
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    // The logged intervals, read where they lie in the block data.
    let data = Fields::new(redo.block.data, "block data");
    let nintervals = usize::from(nintervals);
    let logged = |i: usize| -> Result<DedupInterval, String> {
        Ok(DedupInterval {
            baseoff: data.u16(i * SIZE_OF_DEDUP_INTERVAL)?,
            nitems: data.u16(i * SIZE_OF_DEDUP_INTERVAL + 2)?,
        })
    };
    if nintervals > 0 {
        // The last interval's end is the furthest read: check it before any change.
        logged(nintervals - 1).map_err(|detail| redo.malformed(detail))?;
    }
    let logged = |i: usize| logged(i).ok();

    let opaque = read_opaque(redo, page)?;
    // The primary's limit may be smaller; redo only needs one large enough
    // (BT_MAX_ITEM_SIZE, what the scratch's state is reset to).
    let (newpage, state) = scratch.temp_page_and_dedup();
    let minoff = opaque.first_data_key();
    let maxoff = page.max_offset_number();
    page.temp_copy_special_into(newpage)
        .map_err(|error| redo.fault(error))?;
    if !opaque.is_rightmost() {
        let hikey = item_at(redo, page, P_HIKEY)?;
        add_item(redo, newpage, hikey, P_HIKEY)?;
    }
    let fault = btree_fault(redo);
    for offnum in minoff..=maxoff {
        let itup = tuple_at(redo, page, offnum)?;
        let next = state.intervals().len();
        let next_logged = if next < nintervals {
            logged(next)
        } else {
            None
        };
        if offnum == minoff {
            state.start_pending(&itup, offnum).map_err(&fault)?;
        } else if let Some(interval) = next_logged
            && state.baseoff() == interval.baseoff
            && state.nitems() < usize::from(interval.nitems)
        {
            if !state.save_htid(&itup).map_err(&fault)? {
                return Err(fault(BtreeError::PostingTooLarge {
                    size: itup.size(),
                    max: BT_MAX_ITEM_SIZE,
                }));
            }
        } else {
            state.finish_pending(newpage).map_err(&fault)?;
            state.start_pending(&itup, offnum).map_err(&fault)?;
        }
    }
    state.finish_pending(newpage).map_err(&fault)?;
    let produced = state.intervals();
    let matches = produced.len() == nintervals
        && produced
            .iter()
            .enumerate()
            .all(|(i, interval)| logged(i) == Some(*interval));
    if !matches {
        return Err(redo.fault(PageFault::DedupIntervals {
            produced: produced.to_vec(),
            logged: (0..nintervals).filter_map(logged).collect(),
        }));
    }
    if opaque.flags & BTP_HAS_GARBAGE != 0 {
        BtPageOpaque::update(newpage, |o| o.flags &= !BTP_HAS_GARBAGE).map_err(&fault)?;
    }
    // PageRestoreTempPage; the old page becomes the next temporary page.
    std::mem::swap(page, newpage);
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors btree_xlog_vacuum and btree_xlog_delete (nbtxlog.c), which differ only in
// the locks they take: posting lists lose some TIDs (btree_xlog_updates), then whole
// tuples go
fn delete_items(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    ndeleted: u16,
    nupdated: u16,
    updated: &mut Vec<u8>,
) -> Result<(), RedoError> {
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    let data = Fields::new(redo.block.data, "block data");
    let (ndeleted, nupdated) = (usize::from(ndeleted), usize::from(nupdated));
    // The deleted offsets, the updated offsets, then one xl_btree_update
    // {ndeletedtids, posting list positions[]} per updated tuple. All of it is checked
    // to be there before the page changes.
    let (deleted, updatedoffsets) = (|| -> Result<_, String> {
        let deleted = data.u16s(0, ndeleted)?;
        let updatedoffsets = data.u16s(2 * ndeleted, nupdated)?;
        let mut pos = 2 * (ndeleted + nupdated);
        for _ in 0..nupdated {
            let ndeletedtids = usize::from(data.u16(pos)?);
            data.u16s(pos + 2, ndeletedtids)?;
            pos += 2 + 2 * ndeletedtids;
        }
        Ok((deleted, updatedoffsets))
    })()
    .map_err(|detail| redo.malformed(detail))?;

    // mirrors btree_xlog_updates (nbtxlog.c)
    let mut pos = 2 * (ndeleted + nupdated);
    for offnum in updatedoffsets.iter() {
        let deletetids = (|| -> Result<OffsetNumbers<'_>, String> {
            let ndeletedtids = usize::from(data.u16(pos)?);
            let deletetids = data.u16s(pos + 2, ndeletedtids)?;
            pos += 2 + 2 * ndeletedtids;
            Ok(deletetids)
        })()
        .map_err(|detail| redo.malformed(detail))?;
        {
            let origtuple = tuple_at(redo, page, offnum)?;
            update_posting(&origtuple, deletetids.iter(), updated).map_err(btree_fault(redo))?;
        }
        pad_to_max_align(updated);
        let fits = page
            .index_tuple_overwrite(offnum, updated)
            .map_err(|error| redo.fault(error))?;
        if !fits {
            return Err(redo.fault(PageFault::UpdatedItemDoesNotFit { offnum }));
        }
    }
    if !deleted.is_empty() {
        // PageIndexMultiDelete takes at most MaxIndexTuplesPerPage offsets.
        let mut itemnos = [0u16; MAX_INDEX_TUPLES_PER_PAGE];
        let itemnos = itemnos.get_mut(..deleted.len()).ok_or_else(|| {
            redo.fault(PageError::TooManyItems {
                count: deleted.len(),
            })
        })?;
        for (slot, offnum) in itemnos.iter_mut().zip(deleted.iter()) {
            *slot = offnum;
        }
        page.index_multi_delete(itemnos)
            .map_err(|error| redo.fault(error))?;
    }
    // The page has no LP_DEAD items any more.
    update_opaque(redo, page, |opaque| opaque.flags &= !BTP_HAS_GARBAGE)?;
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors btree_xlog_mark_page_halfdead (nbtxlog.c), the parent of the subtree being
// deleted (block 1): the target's downlink takes over its right sibling's, whose
// pivot goes
fn remove_downlink(redo: &BlockRedo<'_>, page: &mut Page, poffset: u16) -> Result<(), RedoError> {
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    let nextoffset = poffset.saturating_add(1);
    let rightsib = downlink(item_at(redo, page, nextoffset)?).map_err(btree_fault(redo))?;
    page.item_id_checked(poffset)
        .map_err(|error| redo.fault(error))?;
    let itup = page.item_mut(poffset).map_err(|error| redo.fault(error))?;
    set_downlink(itup, rightsib).map_err(btree_fault(redo))?;
    page.index_tuple_delete(nextoffset)
        .map_err(|error| redo.fault(error))?;
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors the half-dead leaf rebuilds of btree_xlog_mark_page_halfdead (block 0) and
// btree_xlog_unlink_page (block 3, when an internal page of the subtree went first):
// an empty leaf whose dummy high key links to the subtree's top parent
fn init_half_dead_leaf(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    prev: u32,
    next: u32,
    topparent: u32,
) -> Result<(), RedoError> {
    redo.read_buffer_for_redo(page, ReadMode::ZeroAndLock)?;
    bt_pageinit(page);
    let opaque = BtPageOpaque {
        prev,
        next,
        level: 0,
        flags: BTP_HALF_DEAD | BTP_LEAF,
        cycleid: 0,
    };
    opaque.write(page).map_err(btree_fault(redo))?;
    add_item(redo, page, &top_parent_high_key(topparent), P_HIKEY)?;
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors btree_xlog_unlink_page (nbtxlog.c), the target (block 0): rewritten as an
// empty deleted page holding its safexid
fn init_deleted_page(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    unlink: &UnlinkRecord,
) -> Result<(), RedoError> {
    redo.read_buffer_for_redo(page, ReadMode::ZeroAndLock)?;
    bt_pageinit(page);
    let opaque = BtPageOpaque {
        prev: unlink.leftsib,
        next: unlink.rightsib,
        level: unlink.level,
        flags: 0,
        cycleid: 0,
    };
    opaque.write(page).map_err(btree_fault(redo))?;
    bt_page_set_deleted(page, unlink.safexid).map_err(btree_fault(redo))?;
    if unlink.level == 0 {
        update_opaque(redo, page, |opaque| opaque.flags |= BTP_LEAF)?;
    }
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors btree_xlog_newroot (nbtxlog.c), the new root (block 0)
fn new_root(redo: &BlockRedo<'_>, page: &mut Page, level: u32) -> Result<(), RedoError> {
    redo.read_buffer_for_redo(page, ReadMode::ZeroAndLock)?;
    bt_pageinit(page);
    let opaque = BtPageOpaque {
        prev: P_NONE,
        next: P_NONE,
        level,
        flags: BTP_ROOT | if level == 0 { BTP_LEAF } else { 0 },
        cycleid: 0,
    };
    opaque.write(page).map_err(btree_fault(redo))?;
    if level > 0 {
        restore_page(redo, page, redo.block.data)?;
    }
    page.set_lsn(redo.end_lsn());
    Ok(())
}

#[cfg(test)]
#[path = "btree_tests.rs"]
mod tests;
