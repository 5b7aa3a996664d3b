//! Visibility map pages (`access/heap/visibilitymap.c`): two bits per heap block
//! (ALL_VISIBLE, ALL_FROZEN) in the contents of standard pages with no special space.
//!
//! Besides XLOG_HEAP2_VISIBLE, which references its VM page like any block, heap redo
//! clears VM bits of pages the record does not reference: heap insert, multi-insert,
//! update and delete with `*_ALL_VISIBLE_CLEARED`, lock and lock-updated with
//! `XLH_LOCK_ALL_FROZEN_CLEARED`. [`implicit_vm_clears`] lists those effects of a
//! record; [`clear_vm_bits`] applies one to the VM page. Postgres makes these changes
//! whatever the heap page's LSN, and does not bump the VM page's LSN for them.

use tarn_wal::Lsn;
use tarn_wal::decode::{DecodedRecord, ForkNumber, RecordBytes, RelFileNode};

use crate::page::{BLCKSZ, Page, SIZE_OF_PAGE_HEADER, max_align};
use crate::redo::heap::{
    XLH_DELETE_ALL_VISIBLE_CLEARED, XLH_INSERT_ALL_VISIBLE_CLEARED, XLH_LOCK_ALL_FROZEN_CLEARED,
    XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED, XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED,
};
use crate::redo::{
    Heap2Record, HeapRecord, PageTag, RM_HEAP_ID, RM_HEAP2_ID, RedoError, parse_heap_record,
    parse_heap2_record,
};

/// VISIBILITYMAP_ALL_VISIBLE.
pub const VISIBILITYMAP_ALL_VISIBLE: u8 = 0x01;
/// VISIBILITYMAP_ALL_FROZEN.
pub const VISIBILITYMAP_ALL_FROZEN: u8 = 0x02;
/// VISIBILITYMAP_VALID_BITS.
pub const VISIBILITYMAP_VALID_BITS: u8 = 0x03;

const BITS_PER_HEAPBLOCK: u32 = 2;
const HEAPBLOCKS_PER_BYTE: u32 = 8 / BITS_PER_HEAPBLOCK;
/// MAPSIZE: bitmap bytes per VM page (the page minus its MAXALIGNed header).
pub const MAPSIZE: usize = BLCKSZ - max_align(SIZE_OF_PAGE_HEADER);
/// HEAPBLOCKS_PER_PAGE: heap blocks one VM page covers (32,672).
pub const HEAPBLOCKS_PER_PAGE: u32 = MAPSIZE as u32 * HEAPBLOCKS_PER_BYTE;

/// HEAPBLK_TO_MAPBLOCK: the VM block holding `heap_block`'s bits.
pub fn heap_block_to_vm_block(heap_block: u32) -> u32 {
    heap_block / HEAPBLOCKS_PER_PAGE
}

/// HEAPBLK_TO_MAPBYTE.
fn map_byte(heap_block: u32) -> usize {
    ((heap_block % HEAPBLOCKS_PER_PAGE) / HEAPBLOCKS_PER_BYTE) as usize
}

/// HEAPBLK_TO_OFFSET.
fn map_offset(heap_block: u32) -> u32 {
    (heap_block % HEAPBLOCKS_PER_BYTE) * BITS_PER_HEAPBLOCK
}

/// vm_readbuf's "initialize the page if necessary": a VM page read as zeros (beyond
/// the fork's end, or never written) is PageInit'd before use.
fn init_if_new(vm_page: &mut Page) {
    if vm_page.is_new() {
        vm_page.init(0);
    }
}

/// The VISIBILITYMAP_* bits of `heap_block` on its VM page (visibilitymap_get_status).
pub fn vm_status(vm_page: &Page, heap_block: u32) -> u8 {
    let byte = vm_page.contents()[map_byte(heap_block)];
    (byte >> map_offset(heap_block)) & VISIBILITYMAP_VALID_BITS
}

/// Mirrors visibilitymap_clear (after visibilitymap_pin's vm_readbuf): clears `flags`
/// of `heap_block` on its VM page, initialising an all-zero page first. The page LSN
/// is not changed. Returns whether any bit was cleared.
pub fn clear_vm_bits(vm_page: &mut Page, heap_block: u32, flags: u8) -> bool {
    init_if_new(vm_page);
    let mask = ((u32::from(flags & VISIBILITYMAP_VALID_BITS)) << map_offset(heap_block)) as u8;
    let byte = &mut vm_page.contents_mut()[map_byte(heap_block)];
    if *byte & mask != 0 {
        *byte &= !mask;
        true
    } else {
        false
    }
}

/// Mirrors visibilitymap_set during recovery: sets `flags` of `heap_block` and stamps
/// `lsn` into the page, but only if that changes the bits. Returns whether it did.
pub fn set_vm_bits(vm_page: &mut Page, heap_block: u32, flags: u8, lsn: Lsn) -> bool {
    let byte_index = map_byte(heap_block);
    let offset = map_offset(heap_block);
    let byte = vm_page.contents()[byte_index];
    if u32::from(flags) != (u32::from(byte) >> offset) & u32::from(VISIBILITYMAP_VALID_BITS) {
        vm_page.contents_mut()[byte_index] = byte | ((u32::from(flags) << offset) as u8);
        vm_page.set_lsn(lsn);
        true
    } else {
        false
    }
}

/// Mirrors the page part of visibilitymap_prepare_truncate (smgr truncate redo): on the
/// VM page that holds the bits of heap block `new_heap_nblocks` (the first block cut
/// off), clears the bits of every truncated heap block. The caller keeps the VM
/// blocks [`vm_blocks_after_truncate`] names and applies this only to the last of
/// them, only when the new size is not on a VM page boundary.
pub fn truncate_vm_page(vm_page: &mut Page, new_heap_nblocks: u32) {
    init_if_new(vm_page);
    let trunc_byte = map_byte(new_heap_nblocks);
    let trunc_offset = map_offset(new_heap_nblocks);
    let map = vm_page.contents_mut();
    map[trunc_byte + 1..MAPSIZE].fill(0);
    map[trunc_byte] &= ((1u32 << trunc_offset) - 1) as u8;
}

/// The number of VM blocks that remain after truncating the heap to
/// `new_heap_nblocks`, and whether the last of them needs [`truncate_vm_page`].
pub fn vm_blocks_after_truncate(new_heap_nblocks: u32) -> (u32, bool) {
    let trunc_block = heap_block_to_vm_block(new_heap_nblocks);
    if map_byte(new_heap_nblocks) != 0 || map_offset(new_heap_nblocks) != 0 {
        (trunc_block + 1, true)
    } else {
        (trunc_block, false)
    }
}

/// A visibility map change a heap record makes without referencing the VM page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmClear {
    /// The heap relation (its VM fork holds the bits).
    pub rel: RelFileNode,
    pub heap_block: u32,
    /// VISIBILITYMAP_* bits to clear.
    pub flags: u8,
}

impl VmClear {
    /// The VM page the bits are on.
    pub fn vm_page(&self) -> PageTag {
        PageTag {
            rel: self.rel,
            fork: ForkNumber::VisibilityMap,
            block: heap_block_to_vm_block(self.heap_block),
        }
    }

    /// Applies the change to the VM page (see [`clear_vm_bits`]).
    pub fn apply(&self, vm_page: &mut Page) -> bool {
        clear_vm_bits(vm_page, self.heap_block, self.flags)
    }
}

/// The visibility map bits `record`'s redo clears on pages it has no block reference
/// for, in the order Postgres clears them. Empty for records without such effects.
/// Mirrors the `visibilitymap_clear` calls of heap_xlog_insert, heap_xlog_delete,
/// heap_xlog_update, heap_xlog_lock, heap_xlog_multi_insert and
/// heap_xlog_lock_updated (heapam.c).
pub fn implicit_vm_clears<D: RecordBytes>(
    record: &DecodedRecord<D>,
) -> Result<Vec<VmClear>, RedoError> {
    let block0 = || {
        record.block(0).ok_or_else(|| RedoError::NoSuchBlock {
            record: record.type_name(),
            lsn: record.lsn,
            block_id: 0,
        })
    };
    let clear = |rel, heap_block, flags| VmClear {
        rel,
        heap_block,
        flags,
    };
    let mut clears = Vec::new();
    match record.rmid {
        RM_HEAP_ID => match parse_heap_record(record)? {
            HeapRecord::Insert { flags, .. } => {
                if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 {
                    let block = block0()?;
                    clears.push(clear(block.rel, block.block, VISIBILITYMAP_VALID_BITS));
                }
            }
            HeapRecord::Delete { flags, .. } => {
                if flags & XLH_DELETE_ALL_VISIBLE_CLEARED != 0 {
                    let block = block0()?;
                    clears.push(clear(block.rel, block.block, VISIBILITYMAP_VALID_BITS));
                }
            }
            HeapRecord::Update { flags, .. } => {
                let new = block0()?;
                let oldblk = record.block(1).map_or(new.block, |old| old.block);
                if flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED != 0 {
                    clears.push(clear(new.rel, oldblk, VISIBILITYMAP_VALID_BITS));
                }
                if flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED != 0 {
                    clears.push(clear(new.rel, new.block, VISIBILITYMAP_VALID_BITS));
                }
            }
            HeapRecord::Lock { flags, .. } => {
                if flags & XLH_LOCK_ALL_FROZEN_CLEARED != 0 {
                    let block = block0()?;
                    clears.push(clear(block.rel, block.block, VISIBILITYMAP_ALL_FROZEN));
                }
            }
            HeapRecord::Truncate | HeapRecord::Confirm { .. } | HeapRecord::Inplace { .. } => {}
        },
        RM_HEAP2_ID => match parse_heap2_record(record)? {
            Heap2Record::MultiInsert { flags, .. }
                if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 =>
            {
                let block = block0()?;
                clears.push(clear(block.rel, block.block, VISIBILITYMAP_VALID_BITS));
            }
            Heap2Record::LockUpdated { flags, .. } if flags & XLH_LOCK_ALL_FROZEN_CLEARED != 0 => {
                let block = block0()?;
                clears.push(clear(block.rel, block.block, VISIBILITYMAP_ALL_FROZEN));
            }
            _ => {}
        },
        _ => {}
    }
    Ok(clears)
}
