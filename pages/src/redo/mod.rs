//! Native redo: the effect of one WAL record on one page, as Postgres's redo routines
//! produce it, byte for byte.
//!
//! [`apply_record`] takes a decoded record, one of its block ids and the page as it was
//! before the record (zeros for a page beyond the relation's end or one the record
//! initialises), and leaves the page as Postgres's replay would. It is a pure function
//! of its inputs: everything a redo routine reads besides the page comes from the
//! record itself or from [`RedoSettings`].
//!
//! Redo's effects on pages the record has no block reference for — the visibility map
//! bits that heap insert/update/delete/lock clear — are exposed separately as
//! [`crate::vm::implicit_vm_clears`], for the ingest layer to apply to the VM page.
//!
//! Records of a type tarn has not ported are an explicit [`RedoError::Unsupported`]
//! naming the rmgr, info and LSN: never a silently wrong page.
//!
//! Redo runs in a tight loop when a page is rebuilt from its deltas, so it allocates
//! nothing per record: [`apply_record_ref`] takes a record decoded in place
//! ([`DecodedRecordRef`]), offset arrays are read from the record where they lie
//! ([`OffsetNumbers`]), and what needs working memory — a heap tuple assembled before
//! PageAddItem, the temporary page of a btree split or deduplication, posting lists —
//! uses a [`RedoScratch`] the caller keeps from record to record (or fixed arrays on
//! the stack, bounded by MaxHeapTuplesPerPage / MaxIndexTuplesPerPage). Errors may
//! allocate: they end the replay.

pub mod btree;
pub mod heap;
pub mod heap2;
pub mod seq;
mod xlog;

use std::fmt;

use tarn_wal::Lsn;
use tarn_wal::decode::{
    BlockRef, DecodedRecord, DecodedRecordRef, ForkNumber, ImageError, RecordBytes, RelFileNode,
    rmgr_name,
};

use crate::btree::posting::{DedupInterval, DedupState};
use crate::btree::{BT_MAX_ITEM_SIZE, BtreeError};
use crate::page::{BLCKSZ, Page, PageError};

pub use btree::{BtreeRecord, parse_btree_record};
pub use heap::{HeapRecord, parse_heap_record};
pub use heap2::{Heap2Record, parse_heap2_record};

/// Resource manager ids (rmgrlist.h) of the rmgrs this crate knows about.
pub const RM_XLOG_ID: u8 = 0;
pub const RM_SMGR_ID: u8 = 2;
pub const RM_STANDBY_ID: u8 = 8;
pub const RM_HEAP2_ID: u8 = 9;
pub const RM_HEAP_ID: u8 = 10;
pub const RM_BTREE_ID: u8 = 11;
pub const RM_SEQ_ID: u8 = 15;

/// The low bits of xl_info that belong to the WAL machinery, not the rmgr.
const XLR_INFO_MASK: u8 = 0x0F;

/// Cluster settings that change what redo writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedoSettings {
    /// The cluster was initialised with data checksums (pg_control).
    pub data_checksums: bool,
    /// `wal_log_hints` is on (XLOG_PARAMETER_CHANGE / pg_control).
    pub wal_log_hints: bool,
}

impl RedoSettings {
    /// XLogHintBitIsNeeded(): whether hint-bit-only changes are WAL-logged, which
    /// decides whether XLOG_HEAP2_VISIBLE bumps the heap page's LSN.
    pub fn hint_bits_need_wal(&self) -> bool {
        self.data_checksums || self.wal_log_hints
    }
}

/// Which page: relation, fork and block number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageTag {
    pub rel: RelFileNode,
    pub fork: ForkNumber,
    pub block: u32,
}

impl PageTag {
    pub fn of<D>(block: &BlockRef<D>) -> PageTag {
        PageTag {
            rel: block.rel,
            fork: block.fork,
            block: block.block,
        }
    }
}

impl fmt::Display for PageTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fork = match self.fork {
            ForkNumber::Main => "main",
            ForkNumber::Fsm => "fsm",
            ForkNumber::VisibilityMap => "vm",
            ForkNumber::Init => "init",
        };
        write!(
            f,
            "rel {}/{}/{} fork {fork} blk {}",
            self.rel.spc_node, self.rel.db_node, self.rel.rel_node, self.block
        )
    }
}

/// Why redo could not produce a page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedoError {
    /// No native redo for this record type yet.
    #[error("no native redo for {rmgr} record with info {info:#04x} at {lsn}")]
    Unsupported { rmgr: String, info: u8, lsn: Lsn },
    /// The caller asked for a block the record does not reference.
    #[error("{record} record at {lsn} has no block reference {block_id}")]
    NoSuchBlock {
        record: String,
        lsn: Lsn,
        block_id: u8,
    },
    /// The record's own bytes do not make sense (too short, inconsistent counts).
    #[error("malformed {record} record at {lsn}: {detail}")]
    Malformed {
        record: String,
        lsn: Lsn,
        detail: String,
    },
    /// The page is not in a state the record can apply to (where Postgres would
    /// PANIC or ERROR during recovery), or its image does not restore.
    #[error("redo of {record} record at {lsn} failed on {page}: {fault}")]
    Page {
        record: String,
        lsn: Lsn,
        page: PageTag,
        fault: PageFault,
    },
}

/// What was wrong with a page during redo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageFault {
    #[error(transparent)]
    Layout(#[from] PageError),
    #[error("its full-page image does not restore: {0}")]
    Image(ImageError),
    #[error("the block has no full-page image to restore")]
    MissingImage,
    #[error(
        "the page is not initialized: Postgres would skip it as an invalid page, which \
         recovery only tolerates if the relation is later dropped or truncated"
    )]
    NotInitialized,
    #[error("block with WILL_INIT flag in WAL record must be zeroed by redo routine")]
    WillInitNotZeroed,
    #[error("block to be initialized in redo routine must be marked with WILL_INIT flag")]
    ZeroedWithoutWillInit,
    #[error("invalid lp: offset {offnum}, the page has {max} line pointers")]
    InvalidLinePointer { offnum: u16, max: u16 },
    #[error("invalid max offset number: offset {offnum} on a page with {max} line pointers")]
    InvalidMaxOffset { offnum: u16, max: u16 },
    #[error("failed to add tuple at offset {offnum}: {source}")]
    AddTuple { offnum: u16, source: PageError },
    #[error("item at offset {offnum} is {len} bytes, too short for a heap tuple header")]
    ShortTuple { offnum: u16, len: usize },
    #[error(
        "wrong tuple length: the tuple at offset {offnum} has {old} data bytes, the record {new}"
    )]
    WrongTupleLength { offnum: u16, old: usize, new: usize },
    #[error("the record's {what} does not fit the page's tuple at offset {offnum}")]
    TupleMismatch { offnum: u16, what: &'static str },
    #[error("visibility map block {vm_block} does not hold the bits of heap block {heap_block}")]
    WrongVmBlock { vm_block: u32, heap_block: u32 },
    #[error(transparent)]
    Btree(#[from] BtreeError),
    #[error("deduplication formed posting lists {produced:?}, the primary logged {logged:?}")]
    DedupIntervals {
        produced: Vec<DedupInterval>,
        logged: Vec<DedupInterval>,
    },
    #[error("failed to update partially dead item at offset {offnum}: it no longer fits")]
    UpdatedItemDoesNotFit { offnum: u16 },
}

/// Working memory redo reuses from record to record, so that replaying a chain of
/// deltas allocates nothing per record: created empty (no allocation), each buffer
/// is allocated at its largest size the first time a record needs it.
#[derive(Debug, Default)]
pub struct RedoScratch {
    /// A heap tuple being assembled (the `tbuf` of the heap redo routines), or a btree
    /// item a posting list split changes.
    tuple: Vec<u8>,
    /// A btree posting list being rebuilt.
    posting: Vec<u8>,
    /// The temporary page of a btree split or deduplication
    /// (PageGetTempPageCopySpecial); it trades places with the page it replaces.
    page: Option<Page>,
    /// The state of a btree deduplication pass.
    dedup: DedupState,
}

impl RedoScratch {
    pub fn new() -> RedoScratch {
        RedoScratch::default()
    }

    /// The tuple buffer, empty, with room for the largest heap tuple or index item.
    pub(crate) fn tuple(&mut self) -> &mut Vec<u8> {
        clear_with_room(&mut self.tuple, BLCKSZ)
    }

    /// The tuple and posting list buffers, both empty, with room for a page's worth.
    pub(crate) fn tuple_and_posting(&mut self) -> (&mut Vec<u8>, &mut Vec<u8>) {
        (
            clear_with_room(&mut self.tuple, BLCKSZ),
            clear_with_room(&mut self.posting, BLCKSZ),
        )
    }

    /// The posting list buffer, empty.
    pub(crate) fn posting(&mut self) -> &mut Vec<u8> {
        clear_with_room(&mut self.posting, BLCKSZ)
    }

    /// The tuple and posting list buffers, empty, and the temporary page (holding
    /// whatever it last held).
    pub(crate) fn tuple_posting_and_temp_page(
        &mut self,
    ) -> (&mut Vec<u8>, &mut Vec<u8>, &mut Page) {
        (
            clear_with_room(&mut self.tuple, BLCKSZ),
            clear_with_room(&mut self.posting, BLCKSZ),
            self.page.get_or_insert_with(Page::zeroed),
        )
    }

    /// The temporary page (its contents are whatever it last held) and the
    /// deduplication state, reset.
    pub(crate) fn temp_page_and_dedup(&mut self) -> (&mut Page, &mut DedupState) {
        self.dedup.reset(BT_MAX_ITEM_SIZE);
        (self.page.get_or_insert_with(Page::zeroed), &mut self.dedup)
    }
}

/// `buffer` emptied, with capacity for `room` bytes (allocated once, then kept).
fn clear_with_room(buffer: &mut Vec<u8>, room: usize) -> &mut Vec<u8> {
    buffer.clear();
    buffer.reserve(room);
    buffer
}

/// Applies `record`'s change to block `block_id`'s page with default settings (no data
/// checksums, `wal_log_hints` off). See [`apply_record_with`].
pub fn apply_record<D: RecordBytes>(
    record: &DecodedRecord<D>,
    block_id: u8,
    page: &mut Page,
) -> Result<(), RedoError> {
    apply_record_with(record, block_id, page, &RedoSettings::default())
}

/// Applies `record`'s change to block `block_id`'s page. `page` holds the block as it
/// was before the record (zeros beyond the relation's end); afterwards it holds what
/// Postgres's replay leaves in its buffer, pd_lsn included (the record's EndRecPtr, or
/// unchanged where the redo routine does not set it).
///
/// A block whose image has BKPIMAGE_APPLY is restored from the image instead of redone,
/// as XLogReadBufferForRedoExtended does (for supported record types only: others are
/// [`RedoError::Unsupported`] even then). On error, `page` may have been partly
/// changed.
///
/// Uses fresh working memory; [`apply_record_ref`] is the form for loops.
pub fn apply_record_with<D: RecordBytes>(
    record: &DecodedRecord<D>,
    block_id: u8,
    page: &mut Page,
    settings: &RedoSettings,
) -> Result<(), RedoError> {
    apply_record_ref(
        &record.borrowed(),
        block_id,
        page,
        settings,
        &mut RedoScratch::new(),
    )
}

/// [`apply_record_with`] for a record decoded in place, with working memory kept by
/// the caller: allocates nothing once `scratch` has served every kind of record
/// (errors aside).
pub fn apply_record_ref(
    record: &DecodedRecordRef<'_>,
    block_id: u8,
    page: &mut Page,
    settings: &RedoSettings,
    scratch: &mut RedoScratch,
) -> Result<(), RedoError> {
    let block = record
        .block(block_id)
        .ok_or_else(|| RedoError::NoSuchBlock {
            record: record.type_name(),
            lsn: record.lsn,
            block_id,
        })?;
    let redo = BlockRedo {
        record,
        block,
        settings,
    };
    match record.rmid {
        RM_XLOG_ID => xlog::redo(&redo, page),
        RM_HEAP_ID => heap::redo(&redo, page, scratch),
        RM_HEAP2_ID => heap2::redo(&redo, page, scratch),
        RM_BTREE_ID => btree::redo(&redo, page, scratch),
        RM_SEQ_ID => seq::redo(&redo, page),
        _ => Err(redo.unsupported()),
    }
}

/// Whether [`apply_record`] has native redo for records of this rmgr and info (the
/// record types listed in the crate docs).
pub fn is_supported(rmid: u8, info: u8) -> bool {
    let rmgr_info = info & !XLR_INFO_MASK;
    match rmid {
        RM_XLOG_ID => matches!(rmgr_info, xlog::XLOG_FPI | xlog::XLOG_FPI_FOR_HINT),
        RM_HEAP_ID => heap::is_supported(rmgr_info),
        RM_HEAP2_ID => heap2::is_supported(rmgr_info),
        RM_BTREE_ID => btree::is_supported(rmgr_info),
        RM_SEQ_ID => seq::is_supported(rmgr_info),
        _ => false,
    }
}

/// Whether records of this rmgr and info never register a block reference, so that
/// redo changes no relation page through them and [`apply_record`] answers
/// [`RedoError::NoSuchBlock`] for any block id: the Standby rmgr's records (locks,
/// running transactions, invalidations), the XLOG rmgr's records other than the FPI
/// kinds (checkpoints, NEXTOID, SWITCH, PARAMETER_CHANGE, ...) and Btree/REUSE_PAGE
/// (hot standby conflicts only).
pub fn registers_no_blocks(rmid: u8, info: u8) -> bool {
    let rmgr_info = info & !XLR_INFO_MASK;
    match rmid {
        RM_STANDBY_ID => true,
        RM_XLOG_ID => !matches!(rmgr_info, xlog::XLOG_FPI | xlog::XLOG_FPI_FOR_HINT),
        RM_BTREE_ID => rmgr_info == btree::XLOG_BTREE_REUSE_PAGE,
        _ => false,
    }
}

/// One block of one record being redone: what every redo routine needs at hand.
pub(crate) struct BlockRedo<'a> {
    pub record: &'a DecodedRecordRef<'a>,
    pub block: &'a BlockRef<&'a [u8]>,
    pub settings: &'a RedoSettings,
}

/// What reading the block for redo found (XLogRedoAction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BufferAction {
    /// The page is older than the record: apply the change (BLK_NEEDS_REDO).
    NeedsRedo,
    /// The page was restored from the record's full-page image (BLK_RESTORED).
    Restored,
    /// The page already reflects the record (BLK_DONE).
    Done,
}

/// How the redo routine asks for its block (ReadBufferMode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// RBM_NORMAL: the page must exist and be initialised.
    Normal,
    /// RBM_ZERO_AND_LOCK: the routine initialises the page (XLogInitBufferForRedo).
    ZeroAndLock,
    /// RBM_ZERO_ON_ERROR: a missing page reads as zeros (the visibility map).
    ZeroOnError,
}

impl<'a> BlockRedo<'a> {
    /// EndRecPtr: what redo stamps into pd_lsn.
    pub fn end_lsn(&self) -> Lsn {
        self.record.end_lsn
    }

    /// XLogRecGetXid.
    pub fn xid(&self) -> u32 {
        self.record.xid
    }

    /// The rmgr-specific bits of xl_info.
    pub fn rmgr_info(&self) -> u8 {
        self.record.info & !XLR_INFO_MASK
    }

    pub fn tag(&self) -> PageTag {
        PageTag::of(self.block)
    }

    pub fn unsupported(&self) -> RedoError {
        RedoError::Unsupported {
            rmgr: rmgr_name(self.record.rmid),
            info: self.record.info,
            lsn: self.record.lsn,
        }
    }

    pub fn malformed(&self, detail: impl Into<String>) -> RedoError {
        malformed(self.record, detail)
    }

    pub fn fault(&self, fault: impl Into<PageFault>) -> RedoError {
        RedoError::Page {
            record: self.record.type_name(),
            lsn: self.record.lsn,
            page: self.tag(),
            fault: fault.into(),
        }
    }

    /// Another block reference of the same record (e.g. the heap block a visibility
    /// map change is about).
    pub fn other_block(&self, block_id: u8) -> Result<&BlockRef<&'a [u8]>, RedoError> {
        self.record
            .block(block_id)
            .ok_or_else(|| RedoError::NoSuchBlock {
                record: self.record.type_name(),
                lsn: self.record.lsn,
                block_id,
            })
    }

    /// Restores the block's full-page image into `page`, then stamps EndRecPtr into
    /// it unless it is an all-zero (new) page, as XLogReadBufferForRedoExtended does.
    pub fn restore_image(&self, page: &mut Page) -> Result<(), RedoError> {
        let image = self
            .block
            .image
            .as_ref()
            .ok_or_else(|| self.fault(PageFault::MissingImage))?;
        image
            .restore_into(page.as_bytes_mut())
            .map_err(|error| self.fault(PageFault::Image(error)))?;
        if !page.is_new() {
            page.set_lsn(self.end_lsn());
        }
        Ok(())
    }

    /// Mirrors XLogReadBufferForRedoExtended (xlogutils.c) for this block: restores
    /// an image marked BKPIMAGE_APPLY, zeroes the page in [`ReadMode::ZeroAndLock`],
    /// and otherwise compares the page's LSN with the record's end.
    pub fn read_buffer_for_redo(
        &self,
        page: &mut Page,
        mode: ReadMode,
    ) -> Result<BufferAction, RedoError> {
        let zero_mode = mode == ReadMode::ZeroAndLock;
        if self.block.will_init && !zero_mode {
            return Err(self.fault(PageFault::WillInitNotZeroed));
        }
        if !self.block.will_init && zero_mode {
            return Err(self.fault(PageFault::ZeroedWithoutWillInit));
        }
        if self.block.image.as_ref().is_some_and(|image| image.apply) {
            self.restore_image(page)?;
            return Ok(BufferAction::Restored);
        }
        if zero_mode {
            page.as_bytes_mut().fill(0);
        } else if mode == ReadMode::Normal && page.is_new() {
            // XLogReadBufferExtended returns InvalidBuffer (BLK_NOTFOUND) and records
            // an invalid page; recovery fails at its end unless the relation goes
            // away. A page server has no later to wait for.
            return Err(self.fault(PageFault::NotInitialized));
        }
        if self.end_lsn() <= page.lsn() {
            Ok(BufferAction::Done)
        } else {
            Ok(BufferAction::NeedsRedo)
        }
    }

    /// XLogReadBufferForRedo: [`ReadMode::Normal`].
    pub fn read_for_redo(&self, page: &mut Page) -> Result<BufferAction, RedoError> {
        self.read_buffer_for_redo(page, ReadMode::Normal)
    }
}

pub(crate) fn malformed<D: RecordBytes>(
    record: &DecodedRecord<D>,
    detail: impl Into<String>,
) -> RedoError {
    RedoError::Malformed {
        record: record.type_name(),
        lsn: record.lsn,
        detail: detail.into(),
    }
}

/// Little-endian reads from a record's main data or block data, with the bounds
/// checks C leaves to the writer.
pub(crate) struct Fields<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub fn new(bytes: &'a [u8], what: &'static str) -> Fields<'a> {
        Fields { bytes, what }
    }

    /// Checks that the struct is at least `len` bytes (SizeOfHeap*).
    pub fn require(&self, len: usize) -> Result<(), String> {
        if self.bytes.len() < len {
            return Err(format!(
                "{} is {} bytes, expected at least {len}",
                self.what,
                self.bytes.len()
            ));
        }
        Ok(())
    }

    fn slice(&self, at: usize, len: usize) -> Result<&'a [u8], String> {
        self.bytes.get(at..at + len).ok_or_else(|| {
            format!(
                "{} is {} bytes, too short for a field at {at}..{}",
                self.what,
                self.bytes.len(),
                at + len
            )
        })
    }

    pub fn u8(&self, at: usize) -> Result<u8, String> {
        Ok(self.slice(at, 1)?[0])
    }

    pub fn u16(&self, at: usize) -> Result<u16, String> {
        let b = self.slice(at, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&self, at: usize) -> Result<u32, String> {
        let b = self.slice(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `count` OffsetNumbers (u16) starting at `at`, read in place.
    pub fn u16s(&self, at: usize, count: usize) -> Result<OffsetNumbers<'a>, String> {
        Ok(OffsetNumbers {
            bytes: self.slice(at, count * 2)?,
        })
    }
}

/// An array of OffsetNumbers (or other uint16s) as a record carries it: little-endian
/// and unaligned, read where it lies.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct OffsetNumbers<'a> {
    /// An even number of bytes.
    bytes: &'a [u8],
}

impl<'a> OffsetNumbers<'a> {
    pub fn len(&self) -> usize {
        self.bytes.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<u16> {
        let pair = self.bytes.get(index * 2..index * 2 + 2)?;
        Some(u16::from_le_bytes([pair[0], pair[1]]))
    }

    /// The first `mid` numbers and the rest (`mid` at most [`len`](Self::len)).
    pub fn split_at(&self, mid: usize) -> (OffsetNumbers<'a>, OffsetNumbers<'a>) {
        let (head, tail) = self.bytes.split_at((mid * 2).min(self.bytes.len()));
        (OffsetNumbers { bytes: head }, OffsetNumbers { bytes: tail })
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = u16> + Clone + 'a {
        self.bytes
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
    }
}

impl fmt::Debug for OffsetNumbers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
pub(crate) mod test_records;
#[cfg(test)]
mod tests;
