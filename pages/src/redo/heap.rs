//! Redo of the Heap rmgr (heap_redo in heapam.c): INSERT, DELETE, UPDATE, HOT_UPDATE,
//! CONFIRM, LOCK and INPLACE. TRUNCATE has no page effect (it exists for logical
//! decoding) and no block reference.

use super::{
    BlockRedo, BufferAction, Fields, PageFault, ReadMode, RedoError, RedoScratch, malformed,
};
use crate::heap_tuple::{
    FIRST_COMMAND_ID, HEAP_HOT_UPDATED, HEAP_KEYS_UPDATED, HEAP_MOVED, HEAP_XMAX_BITS,
    HEAP_XMAX_EXCL_LOCK, HEAP_XMAX_IS_MULTI, HEAP_XMAX_KEYSHR_LOCK, HEAP_XMAX_LOCK_ONLY,
    HeapTupleHeader, INVALID_TRANSACTION_ID, xmax_is_locked_only,
};
use crate::page::{AddItemFlags, MAX_HEAP_TUPLE_SIZE, Page, SIZEOF_HEAP_TUPLE_HEADER};
use tarn_wal::decode::{DecodedRecord, RecordBytes};

// XLOG_HEAP_* opcodes (heapam_xlog.h).
pub const XLOG_HEAP_INSERT: u8 = 0x00;
pub const XLOG_HEAP_DELETE: u8 = 0x10;
pub const XLOG_HEAP_UPDATE: u8 = 0x20;
pub const XLOG_HEAP_TRUNCATE: u8 = 0x30;
pub const XLOG_HEAP_HOT_UPDATE: u8 = 0x40;
pub const XLOG_HEAP_CONFIRM: u8 = 0x50;
pub const XLOG_HEAP_LOCK: u8 = 0x60;
pub const XLOG_HEAP_INPLACE: u8 = 0x70;
pub const XLOG_HEAP_OPMASK: u8 = 0x70;
/// The record's block 0 is (re)initialised before the change.
pub const XLOG_HEAP_INIT_PAGE: u8 = 0x80;

// xl_heap_insert / xl_heap_multi_insert flags.
pub const XLH_INSERT_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
pub const XLH_INSERT_LAST_IN_MULTI: u8 = 1 << 1;
pub const XLH_INSERT_IS_SPECULATIVE: u8 = 1 << 2;
pub const XLH_INSERT_CONTAINS_NEW_TUPLE: u8 = 1 << 3;
pub const XLH_INSERT_ON_TOAST_RELATION: u8 = 1 << 4;
pub const XLH_INSERT_ALL_FROZEN_SET: u8 = 1 << 5;

// xl_heap_update flags.
pub const XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
pub const XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED: u8 = 1 << 1;
pub const XLH_UPDATE_CONTAINS_OLD_TUPLE: u8 = 1 << 2;
pub const XLH_UPDATE_CONTAINS_OLD_KEY: u8 = 1 << 3;
pub const XLH_UPDATE_CONTAINS_NEW_TUPLE: u8 = 1 << 4;
pub const XLH_UPDATE_PREFIX_FROM_OLD: u8 = 1 << 5;
pub const XLH_UPDATE_SUFFIX_FROM_OLD: u8 = 1 << 6;

// xl_heap_delete flags.
pub const XLH_DELETE_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
pub const XLH_DELETE_CONTAINS_OLD_TUPLE: u8 = 1 << 1;
pub const XLH_DELETE_CONTAINS_OLD_KEY: u8 = 1 << 2;
pub const XLH_DELETE_IS_SUPER: u8 = 1 << 3;
pub const XLH_DELETE_IS_PARTITION_MOVE: u8 = 1 << 4;

// infobits_set (xl_heap_delete, xl_heap_update, xl_heap_lock, xl_heap_lock_updated).
pub const XLHL_XMAX_IS_MULTI: u8 = 0x01;
pub const XLHL_XMAX_LOCK_ONLY: u8 = 0x02;
pub const XLHL_XMAX_EXCL_LOCK: u8 = 0x04;
pub const XLHL_XMAX_KEYSHR_LOCK: u8 = 0x08;
pub const XLHL_KEYS_UPDATED: u8 = 0x10;

/// xl_heap_lock / xl_heap_lock_updated flag: ALL_FROZEN was cleared in the VM.
pub const XLH_LOCK_ALL_FROZEN_CLEARED: u8 = 0x01;

/// SizeOfHeapHeader: xl_heap_header {t_infomask2, t_infomask, t_hoff}.
pub(crate) const SIZE_OF_HEAP_HEADER: usize = 5;

/// The main data of a Heap rmgr record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapRecord {
    /// xl_heap_insert.
    Insert {
        offnum: u16,
        flags: u8,
        init_page: bool,
    },
    /// xl_heap_delete.
    Delete {
        xmax: u32,
        offnum: u16,
        infobits_set: u8,
        flags: u8,
    },
    /// xl_heap_update, for UPDATE (`hot == false`) and HOT_UPDATE.
    Update {
        hot: bool,
        init_page: bool,
        old_xmax: u32,
        old_offnum: u16,
        old_infobits_set: u8,
        flags: u8,
        new_xmax: u32,
        new_offnum: u16,
    },
    /// xl_heap_truncate: no page effect.
    Truncate,
    /// xl_heap_confirm.
    Confirm { offnum: u16 },
    /// xl_heap_lock.
    Lock {
        locking_xid: u32,
        offnum: u16,
        infobits_set: u8,
        flags: u8,
    },
    /// xl_heap_inplace.
    Inplace { offnum: u16 },
}

/// Parses a Heap rmgr record's main data.
pub fn parse_heap_record<D: RecordBytes>(
    record: &DecodedRecord<D>,
) -> Result<HeapRecord, RedoError> {
    let info = record.rmgr_info();
    let init_page = info & XLOG_HEAP_INIT_PAGE != 0;
    let data = Fields::new(&record.main_data, "main data");
    let parsed = (|| -> Result<HeapRecord, String> {
        Ok(match info & XLOG_HEAP_OPMASK {
            XLOG_HEAP_INSERT => {
                data.require(3)?;
                HeapRecord::Insert {
                    offnum: data.u16(0)?,
                    flags: data.u8(2)?,
                    init_page,
                }
            }
            XLOG_HEAP_DELETE => {
                data.require(8)?;
                HeapRecord::Delete {
                    xmax: data.u32(0)?,
                    offnum: data.u16(4)?,
                    infobits_set: data.u8(6)?,
                    flags: data.u8(7)?,
                }
            }
            op @ (XLOG_HEAP_UPDATE | XLOG_HEAP_HOT_UPDATE) => {
                data.require(14)?;
                HeapRecord::Update {
                    hot: op == XLOG_HEAP_HOT_UPDATE,
                    init_page,
                    old_xmax: data.u32(0)?,
                    old_offnum: data.u16(4)?,
                    old_infobits_set: data.u8(6)?,
                    flags: data.u8(7)?,
                    new_xmax: data.u32(8)?,
                    new_offnum: data.u16(12)?,
                }
            }
            XLOG_HEAP_TRUNCATE => HeapRecord::Truncate,
            XLOG_HEAP_CONFIRM => {
                data.require(2)?;
                HeapRecord::Confirm {
                    offnum: data.u16(0)?,
                }
            }
            XLOG_HEAP_LOCK => {
                data.require(8)?;
                HeapRecord::Lock {
                    locking_xid: data.u32(0)?,
                    offnum: data.u16(4)?,
                    infobits_set: data.u8(6)?,
                    flags: data.u8(7)?,
                }
            }
            _ => {
                data.require(2)?;
                HeapRecord::Inplace {
                    offnum: data.u16(0)?,
                }
            }
        })
    })();
    parsed.map_err(|detail| malformed(record, detail))
}

/// Every Heap opcode has native redo (TRUNCATE's is a no-op without block references).
pub(crate) fn is_supported(_rmgr_info: u8) -> bool {
    true
}

pub(crate) fn redo(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    scratch: &mut RedoScratch,
) -> Result<(), RedoError> {
    match parse_heap_record(redo.record)? {
        HeapRecord::Insert {
            offnum,
            flags,
            init_page,
        } => insert(redo, page, offnum, flags, init_page, scratch.tuple()),
        HeapRecord::Delete {
            xmax,
            offnum,
            infobits_set,
            flags,
        } => delete(redo, page, xmax, offnum, infobits_set, flags),
        update @ HeapRecord::Update { .. } => self::update(redo, page, &update, scratch.tuple()),
        // heap_redo: TRUNCATE is logged for logical decoding only; it registers no
        // block, so there is no page to change.
        HeapRecord::Truncate => Err(redo.malformed("Heap/TRUNCATE references no block")),
        HeapRecord::Confirm { offnum } => confirm(redo, page, offnum),
        HeapRecord::Lock {
            locking_xid,
            offnum,
            infobits_set,
            flags,
        } => lock(redo, page, locking_xid, offnum, infobits_set, flags),
        HeapRecord::Inplace { offnum } => inplace(redo, page, offnum),
    }
}

/// Mirrors fix_infomask_from_infobits (heapam.c): infobits from a record to infomask
/// bits (the reverse of compute_infobits).
pub(crate) fn fix_infomask_from_infobits(infobits: u8, infomask: &mut u16, infomask2: &mut u16) {
    *infomask &=
        !(HEAP_XMAX_IS_MULTI | HEAP_XMAX_LOCK_ONLY | HEAP_XMAX_KEYSHR_LOCK | HEAP_XMAX_EXCL_LOCK);
    *infomask2 &= !HEAP_KEYS_UPDATED;
    if infobits & XLHL_XMAX_IS_MULTI != 0 {
        *infomask |= HEAP_XMAX_IS_MULTI;
    }
    if infobits & XLHL_XMAX_LOCK_ONLY != 0 {
        *infomask |= HEAP_XMAX_LOCK_ONLY;
    }
    if infobits & XLHL_XMAX_EXCL_LOCK != 0 {
        *infomask |= HEAP_XMAX_EXCL_LOCK;
    }
    // HEAP_XMAX_SHR_LOCK is not considered here, as in Postgres.
    if infobits & XLHL_XMAX_KEYSHR_LOCK != 0 {
        *infomask |= HEAP_XMAX_KEYSHR_LOCK;
    }
    if infobits & XLHL_KEYS_UPDATED != 0 {
        *infomask2 |= HEAP_KEYS_UPDATED;
    }
}

/// The normal line pointer `offnum` must exist, as the redo routines check before
/// touching a tuple ("invalid lp" PANIC in Postgres). Returns the tuple's bytes.
pub(crate) fn normal_tuple<'p>(
    redo: &BlockRedo<'_>,
    page: &'p mut Page,
    offnum: u16,
) -> Result<HeapTupleHeader<'p>, RedoError> {
    let max = page.max_offset_number();
    let item_id = if offnum >= 1 && offnum <= max {
        page.item_id(offnum).map_err(|error| redo.fault(error))?
    } else {
        return Err(redo.fault(PageFault::InvalidLinePointer { offnum, max }));
    };
    if !item_id.is_normal() {
        return Err(redo.fault(PageFault::InvalidLinePointer { offnum, max }));
    }
    tuple_of(redo, page, offnum)
}

/// The tuple line pointer `offnum` points at (PageGetItem), as a header.
pub(crate) fn tuple_of<'p>(
    redo: &BlockRedo<'_>,
    page: &'p mut Page,
    offnum: u16,
) -> Result<HeapTupleHeader<'p>, RedoError> {
    let bytes = page.item_mut(offnum).map_err(|error| redo.fault(error))?;
    let len = bytes.len();
    HeapTupleHeader::new(bytes).ok_or_else(|| redo.fault(PageFault::ShortTuple { offnum, len }))
}

/// Checks that offnum is at most one past the last line pointer ("invalid max offset
/// number" PANIC in Postgres).
pub(crate) fn check_new_offnum(
    redo: &BlockRedo<'_>,
    page: &Page,
    offnum: u16,
) -> Result<(), RedoError> {
    let max = page.max_offset_number();
    if u32::from(max) + 1 < u32::from(offnum) {
        return Err(redo.fault(PageFault::InvalidMaxOffset { offnum, max }));
    }
    Ok(())
}

/// A heap tuple assembled in redo's local buffer (the `tbuf` union of the redo
/// routines, here [`RedoScratch`]'s): a zeroed 23-byte header followed by the data,
/// bounded by MaxHeapTupleSize.
pub(crate) struct TupleBuilder<'b> {
    bytes: &'b mut Vec<u8>,
}

impl<'b> TupleBuilder<'b> {
    /// Starts a tuple in `buffer` (whatever it held is dropped).
    pub fn new(buffer: &'b mut Vec<u8>) -> TupleBuilder<'b> {
        buffer.clear();
        buffer.resize(SIZEOF_HEAP_TUPLE_HEADER, 0);
        TupleBuilder { bytes: buffer }
    }

    /// Appends data after the header; fails if the tuple would outgrow the buffer.
    pub fn push(&mut self, data: &[u8]) -> Result<(), String> {
        if self.bytes.len() + data.len() > MAX_HEAP_TUPLE_SIZE {
            return Err(format!(
                "tuple of more than {} bytes exceeds MaxHeapTupleSize",
                self.bytes.len() + data.len()
            ));
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    pub fn header(&mut self) -> HeapTupleHeader<'_> {
        match HeapTupleHeader::new(self.bytes) {
            Some(header) => header,
            None => unreachable!("TupleBuilder always holds a whole header"),
        }
    }

    /// Sets t_infomask2, t_infomask and t_hoff from an xl_heap_header.
    pub fn set_xl_header(&mut self, infomask2: u16, infomask: u16, hoff: u8) {
        let mut header = self.header();
        header.set_infomask2(infomask2);
        header.set_infomask(infomask);
        header.set_hoff(hoff);
    }

    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

/// Adds a redone tuple at `offnum` as the heap redo routines do:
/// `PageAddItem(page, htup, newlen, offnum, true, true)`, PANIC on failure.
pub(crate) fn add_tuple(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    tuple: &[u8],
    offnum: u16,
) -> Result<(), RedoError> {
    let flags = AddItemFlags {
        overwrite: true,
        is_heap: true,
    };
    page.add_item_extended(tuple, offnum, flags)
        .map_err(|source| redo.fault(PageFault::AddTuple { offnum, source }))?;
    Ok(())
}

/// Reads an xl_heap_header (t_infomask2, t_infomask, t_hoff) at `at`.
fn xl_heap_header(data: &Fields<'_>, at: usize) -> Result<(u16, u16, u8), String> {
    Ok((data.u16(at)?, data.u16(at + 2)?, data.u8(at + 4)?))
}

// mirrors heap_xlog_insert (heapam.c)
fn insert(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    offnum: u16,
    flags: u8,
    init_page: bool,
    buffer: &mut Vec<u8>,
) -> Result<(), RedoError> {
    if redo.block.block_id != 0 {
        return Err(redo.malformed("Heap/INSERT changes only block 0"));
    }
    let action = if init_page {
        // XLogInitBufferForRedo, then PageInit whatever it returned.
        redo.read_buffer_for_redo(page, ReadMode::ZeroAndLock)?;
        page.init(0);
        BufferAction::NeedsRedo
    } else {
        redo.read_for_redo(page)?
    };
    if action != BufferAction::NeedsRedo {
        return Ok(());
    }
    check_new_offnum(redo, page, offnum)?;

    let data = Fields::new(redo.block.data, "block data");
    let mut tuple = TupleBuilder::new(buffer);
    let (infomask2, infomask, hoff) = (|| {
        data.require(SIZE_OF_HEAP_HEADER)?;
        let header = xl_heap_header(&data, 0)?;
        tuple.push(&redo.block.data[SIZE_OF_HEAP_HEADER..])?;
        Ok::<_, String>(header)
    })()
    .map_err(|detail| redo.malformed(detail))?;
    tuple.set_xl_header(infomask2, infomask, hoff);
    let mut header = tuple.header();
    header.set_xmin(redo.xid());
    header.set_cmin(FIRST_COMMAND_ID);
    header.set_ctid(redo.block.block, offnum);

    add_tuple(redo, page, tuple.bytes(), offnum)?;
    page.set_lsn(redo.end_lsn());
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 {
        page.set_all_visible(false);
    }
    Ok(())
}

// mirrors heap_xlog_delete (heapam.c)
fn delete(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    xmax: u32,
    offnum: u16,
    infobits_set: u8,
    flags: u8,
) -> Result<(), RedoError> {
    if redo.block.block_id != 0 {
        return Err(redo.malformed("Heap/DELETE changes only block 0"));
    }
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    {
        let mut htup = normal_tuple(redo, page, offnum)?;
        let mut infomask = htup.infomask() & !(HEAP_XMAX_BITS | HEAP_MOVED);
        let mut infomask2 = htup.infomask2() & !(HEAP_KEYS_UPDATED | HEAP_HOT_UPDATED);
        fix_infomask_from_infobits(infobits_set, &mut infomask, &mut infomask2);
        htup.set_infomask(infomask);
        htup.set_infomask2(infomask2);
        if flags & XLH_DELETE_IS_SUPER == 0 {
            htup.set_xmax(xmax);
        } else {
            htup.set_xmin(INVALID_TRANSACTION_ID);
        }
        htup.set_cmax(FIRST_COMMAND_ID, false);
        // Make sure t_ctid is set correctly.
        if flags & XLH_DELETE_IS_PARTITION_MOVE != 0 {
            htup.set_moved_partitions();
        } else {
            htup.set_ctid(redo.block.block, offnum);
        }
    }
    // Mark the page as a candidate for pruning.
    page.set_prunable(redo.xid());
    if flags & XLH_DELETE_ALL_VISIBLE_CLEARED != 0 {
        page.set_all_visible(false);
    }
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors heap_xlog_update (heapam.c)
fn update(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    record: &HeapRecord,
    buffer: &mut Vec<u8>,
) -> Result<(), RedoError> {
    let &HeapRecord::Update {
        hot,
        init_page,
        old_xmax,
        old_offnum,
        old_infobits_set,
        flags,
        new_xmax,
        new_offnum,
    } = record
    else {
        return Err(redo.malformed("not an update"));
    };
    let new_block = redo.other_block(0)?;
    let newblk = new_block.block;
    // The old tuple is on block 1 if the record has one, else on the new page.
    let oldblk = redo.record.block(1).map_or(newblk, |old| old.block);
    let same_page = oldblk == newblk;
    let old = OldTupleChange {
        hot,
        xmax: old_xmax,
        offnum: old_offnum,
        infobits_set: old_infobits_set,
        flags,
        newtid: (newblk, new_offnum),
    };
    let new = NewTupleChange {
        xmax: new_xmax,
        offnum: new_offnum,
        flags,
    };
    match (redo.block.block_id, same_page) {
        (0, true) => {
            // Old and new tuple on one page: one buffer, one action.
            if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
                return Ok(());
            }
            update_old_tuple(redo, page, &old)?;
            update_new_tuple(redo, page, &new, Some(old.offnum), buffer)
        }
        (0, false) => {
            let action = if init_page {
                redo.read_buffer_for_redo(page, ReadMode::ZeroAndLock)?;
                page.init(0);
                BufferAction::NeedsRedo
            } else {
                redo.read_for_redo(page)?
            };
            if action != BufferAction::NeedsRedo {
                return Ok(());
            }
            update_new_tuple(redo, page, &new, None, buffer)
        }
        (1, false) => {
            if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
                return Ok(());
            }
            update_old_tuple(redo, page, &old)
        }
        (1, true) => {
            Err(redo
                .malformed("block 1 is the same block as block 0; Postgres would never read it"))
        }
        (block_id, _) => Err(redo.malformed(format!(
            "an update changes blocks 0 and 1, not block {block_id}"
        ))),
    }
}

struct OldTupleChange {
    hot: bool,
    xmax: u32,
    offnum: u16,
    infobits_set: u8,
    flags: u8,
    newtid: (u32, u16),
}

struct NewTupleChange {
    xmax: u32,
    offnum: u16,
    flags: u8,
}

/// The old-tuple half of heap_xlog_update.
fn update_old_tuple(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    old: &OldTupleChange,
) -> Result<(), RedoError> {
    {
        let mut htup = normal_tuple(redo, page, old.offnum)?;
        let mut infomask = htup.infomask() & !(HEAP_XMAX_BITS | HEAP_MOVED);
        let mut infomask2 = htup.infomask2() & !HEAP_KEYS_UPDATED;
        if old.hot {
            infomask2 |= HEAP_HOT_UPDATED;
        } else {
            infomask2 &= !HEAP_HOT_UPDATED;
        }
        fix_infomask_from_infobits(old.infobits_set, &mut infomask, &mut infomask2);
        htup.set_infomask(infomask);
        htup.set_infomask2(infomask2);
        htup.set_xmax(old.xmax);
        htup.set_cmax(FIRST_COMMAND_ID, false);
        htup.set_ctid(old.newtid.0, old.newtid.1);
    }
    page.set_prunable(redo.xid());
    if old.flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED != 0 {
        page.set_all_visible(false);
    }
    page.set_lsn(redo.end_lsn());
    Ok(())
}

/// The new-tuple half of heap_xlog_update: rebuilds the tuple from the record and,
/// with prefix/suffix compression, from the old tuple at `old_offnum` on the same page
/// (read in place, as Postgres reads it through PageGetItem).
fn update_new_tuple(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    new: &NewTupleChange,
    old_offnum: Option<u16>,
    buffer: &mut Vec<u8>,
) -> Result<(), RedoError> {
    check_new_offnum(redo, page, new.offnum)?;
    let recdata = redo.block.data;
    let data = Fields::new(recdata, "block data");
    let old_tuple = match old_offnum {
        // update_old_tuple checked it is a normal line pointer with a header.
        Some(offnum) => Some(page.item(offnum).map_err(|error| redo.fault(error))?),
        None => None,
    };
    let mut tuple = TupleBuilder::new(buffer);
    let (infomask2, infomask, hoff) = (|| -> Result<(u16, u16, u8), String> {
        let mut pos = 0usize;
        let mut prefixlen = 0usize;
        let mut suffixlen = 0usize;
        if new.flags & XLH_UPDATE_PREFIX_FROM_OLD != 0 {
            prefixlen = usize::from(data.u16(pos)?);
            pos += 2;
        }
        if new.flags & XLH_UPDATE_SUFFIX_FROM_OLD != 0 {
            suffixlen = usize::from(data.u16(pos)?);
            pos += 2;
        }
        let (infomask2, infomask, hoff) = xl_heap_header(&data, pos)?;
        pos += SIZE_OF_HEAP_HEADER;
        let tuplen = recdata.len() - pos;
        let old = if prefixlen > 0 || suffixlen > 0 {
            Some(old_tuple.ok_or("prefix or suffix from an old tuple on another page")?)
        } else {
            None
        };
        if let (Some(old), true) = (old, prefixlen > 0) {
            // bitmap [+ padding] [+ oid] from the record, the prefix from the old
            // tuple, then the rest of the new data from the record
            let len = usize::from(hoff)
                .checked_sub(SIZEOF_HEAP_TUPLE_HEADER)
                .filter(|len| *len <= tuplen)
                .ok_or_else(|| {
                    format!("t_hoff {hoff} does not fit {tuplen} bytes of tuple data")
                })?;
            tuple.push(&recdata[pos..pos + len])?;
            pos += len;
            let old_hoff = usize::from(old[22]);
            let prefix = old.get(old_hoff..old_hoff + prefixlen).ok_or_else(|| {
                format!("prefix of {prefixlen} bytes is longer than the old tuple")
            })?;
            tuple.push(prefix)?;
            tuple.push(&recdata[pos..])?;
        } else {
            tuple.push(&recdata[pos..])?;
        }
        if let (Some(old), true) = (old, suffixlen > 0) {
            let suffix = old
                .len()
                .checked_sub(suffixlen)
                .map(|start| &old[start..])
                .ok_or_else(|| {
                    format!("suffix of {suffixlen} bytes is longer than the old tuple")
                })?;
            tuple.push(suffix)?;
        }
        Ok((infomask2, infomask, hoff))
    })()
    .map_err(|detail| redo.malformed(detail))?;
    tuple.set_xl_header(infomask2, infomask, hoff);
    let mut header = tuple.header();
    header.set_xmin(redo.xid());
    header.set_cmin(FIRST_COMMAND_ID);
    header.set_xmax(new.xmax);
    let newblk = redo.other_block(0)?.block;
    header.set_ctid(newblk, new.offnum);

    add_tuple(redo, page, tuple.bytes(), new.offnum)?;
    if new.flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED != 0 {
        page.set_all_visible(false);
    }
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors heap_xlog_confirm (heapam.c)
fn confirm(redo: &BlockRedo<'_>, page: &mut Page, offnum: u16) -> Result<(), RedoError> {
    if redo.block.block_id != 0 {
        return Err(redo.malformed("Heap/CONFIRM changes only block 0"));
    }
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    normal_tuple(redo, page, offnum)?.set_ctid(redo.block.block, offnum);
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors heap_xlog_lock (heapam.c)
fn lock(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    locking_xid: u32,
    offnum: u16,
    infobits_set: u8,
    _flags: u8,
) -> Result<(), RedoError> {
    if redo.block.block_id != 0 {
        return Err(redo.malformed("Heap/LOCK changes only block 0"));
    }
    // XLH_LOCK_ALL_FROZEN_CLEARED acts on the VM page: see vm::implicit_vm_clears.
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    let mut htup = normal_tuple(redo, page, offnum)?;
    let mut infomask = htup.infomask() & !(HEAP_XMAX_BITS | HEAP_MOVED);
    let mut infomask2 = htup.infomask2() & !HEAP_KEYS_UPDATED;
    fix_infomask_from_infobits(infobits_set, &mut infomask, &mut infomask2);
    htup.set_infomask(infomask);
    htup.set_infomask2(infomask2);
    // Clear the update flags only if the new infomask says there is no update.
    if xmax_is_locked_only(infomask) {
        htup.set_hot_updated(false);
        htup.set_ctid(redo.block.block, offnum);
    }
    htup.set_xmax(locking_xid);
    htup.set_cmax(FIRST_COMMAND_ID, false);
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors heap_xlog_inplace (heapam.c)
fn inplace(redo: &BlockRedo<'_>, page: &mut Page, offnum: u16) -> Result<(), RedoError> {
    if redo.block.block_id != 0 {
        return Err(redo.malformed("Heap/INPLACE changes only block 0"));
    }
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    let newtup = redo.block.data;
    let (hoff, old) = {
        let htup = normal_tuple(redo, page, offnum)?;
        let hoff = usize::from(htup.hoff());
        (hoff, htup.bytes().len().checked_sub(hoff))
    };
    if old != Some(newtup.len()) {
        return Err(redo.fault(PageFault::WrongTupleLength {
            offnum,
            old: old.unwrap_or(0),
            new: newtup.len(),
        }));
    }
    let tuple = page.item_mut(offnum).map_err(|error| redo.fault(error))?;
    tuple[hoff..].copy_from_slice(newtup);
    page.set_lsn(redo.end_lsn());
    Ok(())
}
