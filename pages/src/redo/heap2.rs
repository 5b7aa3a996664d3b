//! Redo of the Heap2 rmgr (heap2_redo in heapam.c): PRUNE, VACUUM, FREEZE_PAGE,
//! VISIBLE (heap page and visibility map page), MULTI_INSERT and LOCK_UPDATED.
//! NEW_CID has no page effect and no block reference; REWRITE writes logical rewrite
//! mapping files, not pages, and is not supported.

use tarn_wal::decode::{DecodedRecord, ForkNumber, RecordBytes};

use super::heap::{
    TupleBuilder, XLH_INSERT_ALL_FROZEN_SET, XLH_INSERT_ALL_VISIBLE_CLEARED, XLOG_HEAP_INIT_PAGE,
    XLOG_HEAP_OPMASK, add_tuple, check_new_offnum, fix_infomask_from_infobits, normal_tuple,
    tuple_of,
};
use super::{
    BlockRedo, BufferAction, Fields, OffsetNumbers, PageFault, ReadMode, RedoError, RedoScratch,
    malformed,
};
use crate::heap_tuple::{
    FIRST_COMMAND_ID, FROZEN_TRANSACTION_ID, HEAP_KEYS_UPDATED, HEAP_MOVED, HEAP_XMAX_BITS,
    INVALID_TRANSACTION_ID,
};
use crate::page::{ItemId, Page};
use crate::vm;

// XLOG_HEAP2_* opcodes (heapam_xlog.h).
pub const XLOG_HEAP2_REWRITE: u8 = 0x00;
pub const XLOG_HEAP2_PRUNE: u8 = 0x10;
pub const XLOG_HEAP2_VACUUM: u8 = 0x20;
pub const XLOG_HEAP2_FREEZE_PAGE: u8 = 0x30;
pub const XLOG_HEAP2_VISIBLE: u8 = 0x40;
pub const XLOG_HEAP2_MULTI_INSERT: u8 = 0x50;
pub const XLOG_HEAP2_LOCK_UPDATED: u8 = 0x60;
pub const XLOG_HEAP2_NEW_CID: u8 = 0x70;

// xl_heap_freeze_tuple.frzflags.
pub const XLH_FREEZE_XVAC: u8 = 0x02;
pub const XLH_INVALID_XVAC: u8 = 0x04;

/// sizeof(xl_heap_freeze_tuple): {xmax u32, offset u16, t_infomask2 u16, t_infomask u16,
/// frzflags u8} padded to 4-byte alignment.
const SIZE_OF_FREEZE_TUPLE: usize = 12;
/// SizeOfMultiInsertTuple: xl_multi_insert_tuple {datalen, t_infomask2, t_infomask,
/// t_hoff}.
const SIZE_OF_MULTI_INSERT_TUPLE: usize = 7;

/// The main data of a Heap2 rmgr record (borrowing the record's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heap2Record<'a> {
    /// xl_heap_prune; the offsets are in block 0's data.
    Prune {
        latest_removed_xid: u32,
        nredirected: u16,
        ndead: u16,
    },
    /// xl_heap_vacuum; the offsets are in block 0's data.
    Vacuum { nunused: u16 },
    /// xl_heap_freeze_page; the freeze plans are in block 0's data.
    FreezePage { cutoff_xid: u32, ntuples: u16 },
    /// xl_heap_visible: block 0 is the VM page, block 1 the heap page.
    Visible { cutoff_xid: u32, flags: u8 },
    /// xl_heap_multi_insert; `offsets` is empty when the page is initialised (the
    /// tuples then go to offsets 1..=ntuples).
    MultiInsert {
        flags: u8,
        ntuples: u16,
        offsets: OffsetNumbers<'a>,
        init_page: bool,
    },
    /// xl_heap_lock_updated.
    LockUpdated {
        xmax: u32,
        offnum: u16,
        infobits_set: u8,
        flags: u8,
    },
    /// xl_heap_new_cid: for logical decoding only.
    NewCid,
    /// Logical rewrite mapping data.
    Rewrite,
}

/// Parses a Heap2 rmgr record's main data.
pub fn parse_heap2_record<D: RecordBytes>(
    record: &DecodedRecord<D>,
) -> Result<Heap2Record<'_>, RedoError> {
    let info = record.rmgr_info();
    let data = Fields::new(&record.main_data, "main data");
    let parsed = (|| -> Result<Heap2Record<'_>, String> {
        Ok(match info & XLOG_HEAP_OPMASK {
            XLOG_HEAP2_PRUNE => {
                data.require(8)?;
                Heap2Record::Prune {
                    latest_removed_xid: data.u32(0)?,
                    nredirected: data.u16(4)?,
                    ndead: data.u16(6)?,
                }
            }
            XLOG_HEAP2_VACUUM => {
                data.require(2)?;
                Heap2Record::Vacuum {
                    nunused: data.u16(0)?,
                }
            }
            XLOG_HEAP2_FREEZE_PAGE => {
                data.require(6)?;
                Heap2Record::FreezePage {
                    cutoff_xid: data.u32(0)?,
                    ntuples: data.u16(4)?,
                }
            }
            XLOG_HEAP2_VISIBLE => {
                data.require(5)?;
                Heap2Record::Visible {
                    cutoff_xid: data.u32(0)?,
                    flags: data.u8(4)?,
                }
            }
            XLOG_HEAP2_MULTI_INSERT => {
                // {flags u8, pad, ntuples u16, offsets[]}
                data.require(4)?;
                let ntuples = data.u16(2)?;
                let init_page = info & XLOG_HEAP_INIT_PAGE != 0;
                let offsets = if init_page {
                    OffsetNumbers::default()
                } else {
                    data.u16s(4, usize::from(ntuples))?
                };
                Heap2Record::MultiInsert {
                    flags: data.u8(0)?,
                    ntuples,
                    offsets,
                    init_page,
                }
            }
            XLOG_HEAP2_LOCK_UPDATED => {
                data.require(8)?;
                Heap2Record::LockUpdated {
                    xmax: data.u32(0)?,
                    offnum: data.u16(4)?,
                    infobits_set: data.u8(6)?,
                    flags: data.u8(7)?,
                }
            }
            XLOG_HEAP2_NEW_CID => Heap2Record::NewCid,
            _ => Heap2Record::Rewrite,
        })
    })();
    parsed.map_err(|detail| malformed(record, detail))
}

pub(crate) fn is_supported(rmgr_info: u8) -> bool {
    rmgr_info & XLOG_HEAP_OPMASK != XLOG_HEAP2_REWRITE
}

pub(crate) fn redo(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    scratch: &mut RedoScratch,
) -> Result<(), RedoError> {
    match parse_heap2_record(redo.record)? {
        Heap2Record::Prune {
            nredirected, ndead, ..
        } => prune(redo, page, nredirected, ndead),
        Heap2Record::Vacuum { nunused } => vacuum(redo, page, nunused),
        Heap2Record::FreezePage { ntuples, .. } => freeze_page(redo, page, ntuples),
        Heap2Record::Visible { cutoff_xid, flags } => visible(redo, page, cutoff_xid, flags),
        Heap2Record::MultiInsert {
            flags,
            ntuples,
            offsets,
            init_page,
        } => multi_insert(
            redo,
            page,
            flags,
            ntuples,
            offsets,
            init_page,
            scratch.tuple(),
        ),
        Heap2Record::LockUpdated {
            xmax,
            offnum,
            infobits_set,
            ..
        } => lock_updated(redo, page, xmax, offnum, infobits_set),
        Heap2Record::NewCid => Err(redo.malformed("Heap2/NEW_CID references no block")),
        Heap2Record::Rewrite => Err(redo.unsupported()),
    }
}

fn only_block_0(redo: &BlockRedo<'_>) -> Result<(), RedoError> {
    if redo.block.block_id != 0 {
        return Err(redo.malformed(format!("{} changes only block 0", redo.record.type_name())));
    }
    Ok(())
}

/// Checks that `offnum` names an existing line pointer (what PageGetItemId leaves to
/// the writer of the record).
fn existing_offnum(redo: &BlockRedo<'_>, page: &Page, offnum: u16) -> Result<ItemId, RedoError> {
    page.item_id_checked(offnum).map_err(|_| {
        redo.fault(PageFault::InvalidLinePointer {
            offnum,
            max: page.max_offset_number(),
        })
    })
}

// mirrors heap_xlog_prune (heapam.c) and heap_page_prune_execute (pruneheap.c)
fn prune(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    nredirected: u16,
    ndead: u16,
) -> Result<(), RedoError> {
    only_block_0(redo)?;
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    let data = redo.block.data;
    if !data.len().is_multiple_of(2) {
        return Err(redo.malformed(format!(
            "{} bytes of offsets is not a whole number of OffsetNumbers",
            data.len()
        )));
    }
    let offsets = Fields::new(data, "block data")
        .u16s(0, data.len() / 2)
        .map_err(|detail| redo.malformed(detail))?;
    let nredirected = usize::from(nredirected);
    let ndead = usize::from(ndead);
    if nredirected * 2 + ndead > offsets.len() {
        return Err(redo.malformed(format!(
            "{nredirected} redirects and {ndead} dead items need more than {} offsets",
            offsets.len()
        )));
    }
    let (redirected, rest) = offsets.split_at(nredirected * 2);
    let (nowdead, nowunused) = rest.split_at(ndead);

    let mut redirected = redirected.iter();
    while let (Some(from), Some(to)) = (redirected.next(), redirected.next()) {
        existing_offnum(redo, page, from)?;
        page.set_item_id(from, ItemId::redirect(to))
            .map_err(|error| redo.fault(error))?;
    }
    for offnum in nowdead.iter() {
        existing_offnum(redo, page, offnum)?;
        page.set_item_id(offnum, ItemId::dead())
            .map_err(|error| redo.fault(error))?;
    }
    for offnum in nowunused.iter() {
        existing_offnum(redo, page, offnum)?;
        page.set_item_id(offnum, ItemId::UNUSED)
            .map_err(|error| redo.fault(error))?;
    }
    page.repair_fragmentation()
        .map_err(|error| redo.fault(error))?;
    // The prunability hint (pd_prune_xid) is left alone, as in Postgres.
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors heap_xlog_vacuum (heapam.c)
fn vacuum(redo: &BlockRedo<'_>, page: &mut Page, nunused: u16) -> Result<(), RedoError> {
    only_block_0(redo)?;
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    let nowunused = Fields::new(redo.block.data, "block data")
        .u16s(0, usize::from(nunused))
        .map_err(|detail| redo.malformed(detail))?;
    for offnum in nowunused.iter() {
        existing_offnum(redo, page, offnum)?;
        page.set_item_id(offnum, ItemId::UNUSED)
            .map_err(|error| redo.fault(error))?;
    }
    page.truncate_line_pointer_array()
        .map_err(|error| redo.fault(error))?;
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors heap_xlog_freeze_page (heapam.c) and heap_execute_freeze_tuple
fn freeze_page(redo: &BlockRedo<'_>, page: &mut Page, ntuples: u16) -> Result<(), RedoError> {
    only_block_0(redo)?;
    if redo.read_for_redo(page)? != BufferAction::NeedsRedo {
        return Ok(());
    }
    let data = Fields::new(redo.block.data, "block data");
    for index in 0..usize::from(ntuples) {
        let at = index * SIZE_OF_FREEZE_TUPLE;
        let plan = (|| -> Result<(u32, u16, u16, u16, u8), String> {
            Ok((
                data.u32(at)?,
                data.u16(at + 4)?,
                data.u16(at + 6)?,
                data.u16(at + 8)?,
                data.u8(at + 10)?,
            ))
        })()
        .map_err(|detail| redo.malformed(detail))?;
        let (xmax, offnum, infomask2, infomask, frzflags) = plan;
        existing_offnum(redo, page, offnum)?;
        let mut tuple = tuple_of(redo, page, offnum)?;
        tuple.set_xmax(xmax);
        if frzflags & XLH_FREEZE_XVAC != 0 {
            tuple.set_xvac(FROZEN_TRANSACTION_ID);
        }
        if frzflags & XLH_INVALID_XVAC != 0 {
            tuple.set_xvac(INVALID_TRANSACTION_ID);
        }
        tuple.set_infomask(infomask);
        tuple.set_infomask2(infomask2);
    }
    page.set_lsn(redo.end_lsn());
    Ok(())
}

// mirrors heap_xlog_visible (heapam.c): block 1 is the heap page, block 0 the VM page
fn visible(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    _cutoff_xid: u32,
    flags: u8,
) -> Result<(), RedoError> {
    match redo.block.block_id {
        1 => {
            // The heap page: set PD_ALL_VISIBLE. Its LSN moves only when hint bits
            // are WAL-logged; an FPI restored it otherwise (checksums/wal_log_hints).
            if redo.read_for_redo(page)? == BufferAction::NeedsRedo {
                page.set_all_visible(true);
                if redo.settings.hint_bits_need_wal() {
                    page.set_lsn(redo.end_lsn());
                }
            }
            Ok(())
        }
        0 => {
            let heap = redo.other_block(1)?;
            if redo.read_buffer_for_redo(page, ReadMode::ZeroOnError)? != BufferAction::NeedsRedo {
                return Ok(());
            }
            if page.is_new() {
                page.init(0);
            }
            // visibilitymap_pin would read the map page for the heap block; the
            // record's block 0 is that page in any WAL Postgres writes.
            let vm_block = vm::heap_block_to_vm_block(heap.block);
            if heap.rel != redo.block.rel
                || redo.block.fork != ForkNumber::VisibilityMap
                || redo.block.block != vm_block
            {
                return Err(redo.fault(PageFault::WrongVmBlock {
                    vm_block: redo.block.block,
                    heap_block: heap.block,
                }));
            }
            // Don't set the bit if replay has already passed this point.
            if redo.end_lsn() > page.lsn() {
                vm::set_vm_bits(page, heap.block, flags, redo.end_lsn());
            }
            Ok(())
        }
        block_id => Err(redo.malformed(format!(
            "Heap2/VISIBLE changes blocks 0 and 1, not block {block_id}"
        ))),
    }
}

// mirrors heap_xlog_multi_insert (heapam.c)
#[allow(clippy::too_many_arguments)]
fn multi_insert(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    flags: u8,
    ntuples: u16,
    offsets: OffsetNumbers<'_>,
    init_page: bool,
    buffer: &mut Vec<u8>,
) -> Result<(), RedoError> {
    only_block_0(redo)?;
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
    let tupdata = redo.block.data;
    let data = Fields::new(tupdata, "block data");
    let mut pos = 0usize;
    for index in 0..usize::from(ntuples) {
        let offnum = if init_page {
            1 + index as u16
        } else {
            offsets
                .get(index)
                .ok_or_else(|| redo.malformed(format!("no offset for tuple {index}")))?
        };
        check_new_offnum(redo, page, offnum)?;
        // Each xl_multi_insert_tuple is SHORTALIGNed within the block data.
        pos += pos % 2;
        let mut tuple = TupleBuilder::new(buffer);
        let header = (|| -> Result<(u16, u16, u8), String> {
            let datalen = usize::from(data.u16(pos)?);
            let header = (data.u16(pos + 2)?, data.u16(pos + 4)?, data.u8(pos + 6)?);
            let start = pos + SIZE_OF_MULTI_INSERT_TUPLE;
            let tuple_data = tupdata.get(start..start + datalen).ok_or_else(|| {
                format!("tuple {index} of {datalen} bytes runs past the block data")
            })?;
            tuple.push(tuple_data)?;
            pos = start + datalen;
            Ok(header)
        })()
        .map_err(|detail| redo.malformed(detail))?;
        tuple.set_xl_header(header.0, header.1, header.2);
        let mut htup = tuple.header();
        htup.set_xmin(redo.xid());
        htup.set_cmin(FIRST_COMMAND_ID);
        htup.set_ctid(redo.block.block, offnum);
        add_tuple(redo, page, tuple.bytes(), offnum)?;
    }
    if pos != tupdata.len() {
        return Err(redo.malformed(format!(
            "total tuple length mismatch: {pos} of {} bytes used",
            tupdata.len()
        )));
    }
    page.set_lsn(redo.end_lsn());
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 {
        page.set_all_visible(false);
    }
    // XLH_INSERT_ALL_FROZEN_SET implies that all tuples are visible.
    if flags & XLH_INSERT_ALL_FROZEN_SET != 0 {
        page.set_all_visible(true);
    }
    Ok(())
}

// mirrors heap_xlog_lock_updated (heapam.c)
fn lock_updated(
    redo: &BlockRedo<'_>,
    page: &mut Page,
    xmax: u32,
    offnum: u16,
    infobits_set: u8,
) -> Result<(), RedoError> {
    only_block_0(redo)?;
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
    htup.set_xmax(xmax);
    page.set_lsn(redo.end_lsn());
    Ok(())
}
