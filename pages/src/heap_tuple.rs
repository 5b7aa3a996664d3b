//! The heap tuple header (HeapTupleHeaderData, `access/htup_details.h`) as it lies on a
//! page: field offsets, infomask bits and the macros redo uses to change them.
//!
//! ```text
//! 0  t_xmin   4  t_xmax   8  t_cid | t_xvac   12 t_ctid (bi_hi, bi_lo, ip_posid)
//! 18 t_infomask2   20 t_infomask   22 t_hoff   23 t_bits...
//! ```

use crate::page::SIZEOF_HEAP_TUPLE_HEADER;

// t_infomask bits.
pub const HEAP_HASNULL: u16 = 0x0001;
pub const HEAP_HASVARWIDTH: u16 = 0x0002;
pub const HEAP_HASEXTERNAL: u16 = 0x0004;
pub const HEAP_HASOID_OLD: u16 = 0x0008;
pub const HEAP_XMAX_KEYSHR_LOCK: u16 = 0x0010;
pub const HEAP_COMBOCID: u16 = 0x0020;
pub const HEAP_XMAX_EXCL_LOCK: u16 = 0x0040;
pub const HEAP_XMAX_LOCK_ONLY: u16 = 0x0080;
pub const HEAP_XMAX_SHR_LOCK: u16 = HEAP_XMAX_EXCL_LOCK | HEAP_XMAX_KEYSHR_LOCK;
pub const HEAP_LOCK_MASK: u16 = HEAP_XMAX_SHR_LOCK | HEAP_XMAX_EXCL_LOCK | HEAP_XMAX_KEYSHR_LOCK;
pub const HEAP_XMIN_COMMITTED: u16 = 0x0100;
pub const HEAP_XMIN_INVALID: u16 = 0x0200;
pub const HEAP_XMIN_FROZEN: u16 = HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID;
pub const HEAP_XMAX_COMMITTED: u16 = 0x0400;
pub const HEAP_XMAX_INVALID: u16 = 0x0800;
pub const HEAP_XMAX_IS_MULTI: u16 = 0x1000;
pub const HEAP_UPDATED: u16 = 0x2000;
pub const HEAP_MOVED_OFF: u16 = 0x4000;
pub const HEAP_MOVED_IN: u16 = 0x8000;
pub const HEAP_MOVED: u16 = HEAP_MOVED_OFF | HEAP_MOVED_IN;
/// Visibility-related bits (hint bits among them).
pub const HEAP_XACT_MASK: u16 = 0xFFF0;
/// Turned off whenever xmax changes.
pub const HEAP_XMAX_BITS: u16 = HEAP_XMAX_COMMITTED
    | HEAP_XMAX_INVALID
    | HEAP_XMAX_IS_MULTI
    | HEAP_LOCK_MASK
    | HEAP_XMAX_LOCK_ONLY;

// t_infomask2 bits.
pub const HEAP_NATTS_MASK: u16 = 0x07FF;
pub const HEAP_KEYS_UPDATED: u16 = 0x2000;
pub const HEAP_HOT_UPDATED: u16 = 0x4000;
pub const HEAP_ONLY_TUPLE: u16 = 0x8000;

/// `FirstCommandId`.
pub const FIRST_COMMAND_ID: u32 = 0;
/// `InvalidTransactionId`.
pub const INVALID_TRANSACTION_ID: u32 = 0;
/// `FrozenTransactionId`.
pub const FROZEN_TRANSACTION_ID: u32 = 2;
/// `InvalidBlockNumber`.
pub const INVALID_BLOCK_NUMBER: u32 = 0xFFFF_FFFF;
/// `SpecTokenOffsetNumber`: t_ctid's offset while an insertion is speculative.
pub const SPEC_TOKEN_OFFSET_NUMBER: u16 = 0xfffe;
/// `MovedPartitionsOffsetNumber`.
pub const MOVED_PARTITIONS_OFFSET_NUMBER: u16 = 0xfffd;
/// `MovedPartitionsBlockNumber`.
pub const MOVED_PARTITIONS_BLOCK_NUMBER: u32 = INVALID_BLOCK_NUMBER;

/// HEAP_XMAX_IS_LOCKED_ONLY: xmax, if valid, only locks the tuple.
pub fn xmax_is_locked_only(infomask: u16) -> bool {
    infomask & HEAP_XMAX_LOCK_ONLY != 0
        || infomask & (HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK) == HEAP_XMAX_EXCL_LOCK
}

mod field {
    pub const XMIN: usize = 0;
    pub const XMAX: usize = 4;
    pub const FIELD3: usize = 8;
    pub const CTID_BI_HI: usize = 12;
    pub const CTID_BI_LO: usize = 14;
    pub const CTID_POSID: usize = 16;
    pub const INFOMASK2: usize = 18;
    pub const INFOMASK: usize = 20;
    pub const HOFF: usize = 22;
}

/// A heap tuple header over the tuple's bytes (at least
/// [`SIZEOF_HEAP_TUPLE_HEADER`] of them; [`HeapTupleHeader::new`] checks).
pub struct HeapTupleHeader<'a> {
    bytes: &'a mut [u8],
}

impl<'a> HeapTupleHeader<'a> {
    /// `None` if `bytes` is shorter than a tuple header.
    pub fn new(bytes: &'a mut [u8]) -> Option<HeapTupleHeader<'a>> {
        (bytes.len() >= SIZEOF_HEAP_TUPLE_HEADER).then_some(HeapTupleHeader { bytes })
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    fn set_u16_at(&mut self, at: usize, value: u16) {
        self.bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = &self.bytes[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn set_u32_at(&mut self, at: usize, value: u32) {
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// The whole tuple (header and data).
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }

    /// HeapTupleHeaderGetRawXmin.
    pub fn xmin(&self) -> u32 {
        self.u32_at(field::XMIN)
    }

    /// HeapTupleHeaderSetXmin.
    pub fn set_xmin(&mut self, xid: u32) {
        self.set_u32_at(field::XMIN, xid);
    }

    /// HeapTupleHeaderGetRawXmax.
    pub fn xmax(&self) -> u32 {
        self.u32_at(field::XMAX)
    }

    /// HeapTupleHeaderSetXmax.
    pub fn set_xmax(&mut self, xid: u32) {
        self.set_u32_at(field::XMAX, xid);
    }

    /// The raw t_field3 (t_cid or t_xvac).
    pub fn field3(&self) -> u32 {
        self.u32_at(field::FIELD3)
    }

    pub fn set_field3(&mut self, value: u32) {
        self.set_u32_at(field::FIELD3, value);
    }

    /// HeapTupleHeaderSetCmin: t_cid = cid, and the cid is not a combo cid.
    pub fn set_cmin(&mut self, cid: u32) {
        self.set_field3(cid);
        let infomask = self.infomask() & !HEAP_COMBOCID;
        self.set_infomask(infomask);
    }

    /// HeapTupleHeaderSetCmax.
    pub fn set_cmax(&mut self, cid: u32, is_combo: bool) {
        self.set_field3(cid);
        let infomask = self.infomask();
        self.set_infomask(if is_combo {
            infomask | HEAP_COMBOCID
        } else {
            infomask & !HEAP_COMBOCID
        });
    }

    /// HeapTupleHeaderSetXvac.
    pub fn set_xvac(&mut self, xid: u32) {
        self.set_field3(xid);
    }

    /// t_ctid as (block, offset).
    pub fn ctid(&self) -> (u32, u16) {
        let hi = u32::from(self.u16_at(field::CTID_BI_HI));
        let lo = u32::from(self.u16_at(field::CTID_BI_LO));
        ((hi << 16) | lo, self.u16_at(field::CTID_POSID))
    }

    /// ItemPointerSet(&t_ctid, block, offset).
    pub fn set_ctid(&mut self, block: u32, offset: u16) {
        self.set_u16_at(field::CTID_BI_HI, (block >> 16) as u16);
        self.set_u16_at(field::CTID_BI_LO, block as u16);
        self.set_u16_at(field::CTID_POSID, offset);
    }

    pub fn infomask2(&self) -> u16 {
        self.u16_at(field::INFOMASK2)
    }

    pub fn set_infomask2(&mut self, value: u16) {
        self.set_u16_at(field::INFOMASK2, value);
    }

    pub fn infomask(&self) -> u16 {
        self.u16_at(field::INFOMASK)
    }

    pub fn set_infomask(&mut self, value: u16) {
        self.set_u16_at(field::INFOMASK, value);
    }

    /// t_hoff: header size including the null bitmap and padding.
    pub fn hoff(&self) -> u8 {
        self.bytes[field::HOFF]
    }

    pub fn set_hoff(&mut self, value: u8) {
        self.bytes[field::HOFF] = value;
    }

    /// HeapTupleHeaderXminFrozen.
    pub fn xmin_frozen(&self) -> bool {
        self.infomask() & HEAP_XMIN_FROZEN == HEAP_XMIN_FROZEN
    }

    /// HeapTupleHeaderIsSpeculative.
    pub fn is_speculative(&self) -> bool {
        self.u16_at(field::CTID_POSID) == SPEC_TOKEN_OFFSET_NUMBER
    }

    /// HeapTupleHeaderSetHotUpdated / HeapTupleHeaderClearHotUpdated.
    pub fn set_hot_updated(&mut self, on: bool) {
        let infomask2 = self.infomask2();
        self.set_infomask2(if on {
            infomask2 | HEAP_HOT_UPDATED
        } else {
            infomask2 & !HEAP_HOT_UPDATED
        });
    }

    /// HeapTupleHeaderSetMovedPartitions.
    pub fn set_moved_partitions(&mut self) {
        self.set_ctid(
            MOVED_PARTITIONS_BLOCK_NUMBER,
            MOVED_PARTITIONS_OFFSET_NUMBER,
        );
    }
}
