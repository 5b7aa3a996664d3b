//! Decoding PostgreSQL 15 WAL records into their parts: header, block references
//! (relation, fork, block, flags, page image, per-block data), main data, origin and
//! top-level transaction id. Mirrors `DecodeXLogRecord` (xlogreader.c).
//!
//! Input is one complete record's bytes (as reassembled from pages by
//! [`crate::format::RecordBoundaryTracker`]'s callers); decoding never panics:
//! malformed input is a [`DecodeError`] carrying the record's LSN.
//!
//! - [`decode_record`] / [`decode_record_bytes`]: one record's bytes → [`DecodedRecord`];
//!   the parts are zero-copy slices of the record's [`Bytes`].
//! - [`decode_record_ref`]: the same decoder over a borrowed `&[u8]`, into a
//!   [`DecodedRecordRef`] whose parts borrow the bytes: no allocation at all, for redo
//!   of stored records in a tight loop. Block references live inline in a fixed array
//!   ([`BlockRefs`], at most XLR_MAX_BLOCK_ID + 1 of them) in either form.
//! - [`BlockImage::restore`]: a full-page image back to its 8 KiB page (decompression
//!   with pglz, LZ4 or zstd, hole re-inserted), as `RestoreBlockImage` does.
//! - [`WalStreamDecoder`] (fed WAL bytes as they arrive, e.g. from safekeepers) and
//!   [`WalRecordReader`] (pulls from any [`WalRead`](crate::format::WalRead) source, e.g.
//!   a `pg_wal` directory through [`PgWalDir`]): records in LSN order, reassembled
//!   across pages in one pass with bounded memory; [`RawRecord`] is a record not yet
//!   decoded (its bytes as written, for storing).
//! - [`record_type_name`]: "Heap/INSERT", as `pg_waldump` names record types.

mod image;
mod names;
mod pglz;
mod reader;
mod record;

#[cfg(test)]
mod tests;

pub use image::ImageError;
pub use names::{record_type_name, rmgr_name};
pub use pglz::{PglzError, pglz_decompress};
pub use reader::{
    PgWalDir, READ_CHUNK_BYTES, RawRecord, WalReadError, WalRecordReader, WalStreamDecoder,
};
pub use record::{
    BKPBLOCK_FORK_MASK, BKPBLOCK_HAS_DATA, BKPBLOCK_HAS_IMAGE, BKPBLOCK_SAME_REL,
    BKPBLOCK_WILL_INIT, BKPIMAGE_APPLY, BKPIMAGE_COMPRESS_LZ4, BKPIMAGE_COMPRESS_PGLZ,
    BKPIMAGE_COMPRESS_ZSTD, BKPIMAGE_HAS_HOLE, BLCKSZ, XLR_BLOCK_ID_ORIGIN,
    XLR_BLOCK_ID_TOPLEVEL_XID, XLR_MAX_BLOCK_ID, decode_record, decode_record_at,
    decode_record_bytes, decode_record_ref, standard_record_end,
};

use std::fmt;
use std::ops::{Deref, Range};

use bytes::Bytes;

use crate::Lsn;

/// Identifies a relation's storage: tablespace, database and relfilenode OIDs
/// (RelFileNode in PG15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelFileNode {
    pub spc_node: u32,
    pub db_node: u32,
    pub rel_node: u32,
}

/// A relation fork (ForkNumber).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ForkNumber {
    Main = 0,
    Fsm = 1,
    VisibilityMap = 2,
    Init = 3,
}

/// How a full-page image is stored (BKPIMAGE_COMPRESS_* in PG15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageCompression {
    None,
    Pglz,
    Lz4,
    Zstd,
}

/// What the parts of a decoded record (block data, images, main data) are: [`Bytes`]
/// slices sharing the record's buffer, for records that are kept, or `&[u8]` slices
/// borrowing it, for records decoded, redone and dropped (no reference counting, no
/// allocation).
pub trait RecordBytes: Deref<Target = [u8]> + Clone + Default {
    /// The sub-slice `range` of these bytes (always in bounds: the decoder checked).
    fn part(&self, range: Range<usize>) -> Self;

    /// The slots of an empty [`BlockRefs`].
    fn unused_slots() -> [BlockRef<Self>; MAX_BLOCK_REFS] {
        std::array::from_fn(|_| BlockRef::default())
    }
}

impl RecordBytes for Bytes {
    fn part(&self, range: Range<usize>) -> Bytes {
        self.slice(range)
    }
}

impl RecordBytes for &[u8] {
    fn part(&self, range: Range<usize>) -> Self {
        &self[range]
    }

    /// A copy of a constant: a record decoded in place is set up once per replay,
    /// and element-by-element construction would cost as much as decoding it.
    fn unused_slots() -> [BlockRef<Self>; MAX_BLOCK_REFS] {
        const UNUSED: BlockRef<&[u8]> = BlockRef {
            block_id: 0,
            rel: RelFileNode {
                spc_node: 0,
                db_node: 0,
                rel_node: 0,
            },
            fork: ForkNumber::Main,
            block: 0,
            will_init: false,
            image: None,
            data: &[],
        };
        [UNUSED; MAX_BLOCK_REFS]
    }
}

/// A full-page image carried by a block reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockImage<D = Bytes> {
    /// The image as stored in the record (compressed and/or with its hole removed).
    pub stored: D,
    pub hole_offset: u16,
    pub hole_length: u16,
    /// BKPIMAGE_APPLY: redo must restore this image. Without it the image is only for
    /// `wal_consistency_checking` (the page as it is after the record is applied).
    pub apply: bool,
    pub compression: ImageCompression,
}

/// One block reference of a record (DecodedBkpBlock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRef<D = Bytes> {
    /// The block id within the record (0..=XLR_MAX_BLOCK_ID).
    pub block_id: u8,
    pub rel: RelFileNode,
    pub fork: ForkNumber,
    pub block: u32,
    /// BKPBLOCK_WILL_INIT: redo initialises the page from scratch.
    pub will_init: bool,
    pub image: Option<BlockImage<D>>,
    /// Per-block data (BKPBLOCK_HAS_DATA), empty if none.
    pub data: D,
}

/// How many block references a record can have: ids 0..=XLR_MAX_BLOCK_ID.
pub const MAX_BLOCK_REFS: usize = XLR_MAX_BLOCK_ID as usize + 1;

/// A record's block references, in increasing block id order, stored inline (as
/// DecodedXLogRecord's blocks[] array is): decoding needs no allocation. Reads as a
/// slice.
#[derive(Clone)]
pub struct BlockRefs<D = Bytes> {
    len: u8,
    slots: [BlockRef<D>; MAX_BLOCK_REFS],
}

/// A decoded WAL record. `D` is what its parts are (see [`RecordBytes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord<D = Bytes> {
    pub lsn: Lsn,
    /// EndRecPtr: MAXALIGNed end of the record.
    pub end_lsn: Lsn,
    pub xid: u32,
    pub prev: Lsn,
    /// xl_info (the rmgr-specific bits are `info & 0xF0`; the low bits are XLR_* flags).
    pub info: u8,
    pub rmid: u8,
    pub total_len: u32,
    pub blocks: BlockRefs<D>,
    pub main_data: D,
    pub origin: Option<u16>,
    pub toplevel_xid: Option<u32>,
}

/// A decoded record whose parts borrow the record's bytes ([`decode_record_ref`]).
pub type DecodedRecordRef<'a> = DecodedRecord<&'a [u8]>;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("cannot decode WAL record at {lsn}: {detail}")]
pub struct DecodeError {
    pub lsn: Lsn,
    pub detail: String,
}

impl DecodeError {
    pub fn new(lsn: Lsn, detail: impl Into<String>) -> Self {
        DecodeError {
            lsn,
            detail: detail.into(),
        }
    }
}

impl ForkNumber {
    /// MAX_FORKNUM: the highest fork number PG15 knows.
    pub const MAX: u8 = ForkNumber::Init as u8;

    /// The fork with number `fork`, if PG15 has one (`fork <= MAX_FORKNUM`).
    pub const fn from_u8(fork: u8) -> Option<ForkNumber> {
        match fork {
            0 => Some(ForkNumber::Main),
            1 => Some(ForkNumber::Fsm),
            2 => Some(ForkNumber::VisibilityMap),
            3 => Some(ForkNumber::Init),
            _ => None,
        }
    }
}

impl<D: RecordBytes> Default for BlockRef<D> {
    /// An unused slot of [`BlockRefs`].
    fn default() -> Self {
        BlockRef {
            block_id: 0,
            rel: RelFileNode::default(),
            fork: ForkNumber::Main,
            block: 0,
            will_init: false,
            image: None,
            data: D::default(),
        }
    }
}

impl<D: RecordBytes> BlockRef<D> {
    /// The same block reference with its parts borrowed.
    pub fn borrowed(&self) -> BlockRef<&[u8]> {
        BlockRef {
            block_id: self.block_id,
            rel: self.rel,
            fork: self.fork,
            block: self.block,
            will_init: self.will_init,
            image: self.image.as_ref().map(BlockImage::borrowed),
            data: &self.data,
        }
    }
}

impl<D: RecordBytes> BlockRefs<D> {
    pub fn new() -> Self {
        BlockRefs {
            len: 0,
            slots: D::unused_slots(),
        }
    }

    /// Appends `block`, whose id must be above every id so far and at most
    /// XLR_MAX_BLOCK_ID (which bounds the count); otherwise gives it back.
    pub fn push(&mut self, block: BlockRef<D>) -> Result<(), BlockRef<D>> {
        let increasing = self
            .last()
            .is_none_or(|last| block.block_id > last.block_id);
        if !increasing || block.block_id > XLR_MAX_BLOCK_ID {
            return Err(block);
        }
        // Ids increase and are at most XLR_MAX_BLOCK_ID: `len` < MAX_BLOCK_REFS here.
        self.slots[usize::from(self.len)] = block;
        self.len += 1;
        Ok(())
    }

    /// Drops every block reference (their slots keep nothing of them).
    pub fn clear(&mut self) {
        for slot in self.slots_mut() {
            *slot = BlockRef::default();
        }
        self.len = 0;
    }

    /// The block reference with id `block_id`.
    pub fn get(&self, block_id: u8) -> Option<&BlockRef<D>> {
        self.iter().find(|block| block.block_id == block_id)
    }

    fn slots_mut(&mut self) -> &mut [BlockRef<D>] {
        &mut self.slots[..usize::from(self.len)]
    }
}

impl<D: RecordBytes> Default for BlockRefs<D> {
    fn default() -> Self {
        BlockRefs::new()
    }
}

impl<D> Deref for BlockRefs<D> {
    type Target = [BlockRef<D>];

    fn deref(&self) -> &[BlockRef<D>] {
        &self.slots[..usize::from(self.len)]
    }
}

impl<'a, D> IntoIterator for &'a BlockRefs<D> {
    type Item = &'a BlockRef<D>;
    type IntoIter = std::slice::Iter<'a, BlockRef<D>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<D: fmt::Debug> fmt::Debug for BlockRefs<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<D: PartialEq> PartialEq for BlockRefs<D> {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl<D: Eq> Eq for BlockRefs<D> {}

impl<D: RecordBytes> FromIterator<BlockRef<D>> for BlockRefs<D> {
    /// For records built by hand. Panics if the ids do not increase or exceed
    /// XLR_MAX_BLOCK_ID, as no record can have them.
    fn from_iter<I: IntoIterator<Item = BlockRef<D>>>(blocks: I) -> Self {
        let mut out = BlockRefs::new();
        for block in blocks {
            if let Err(block) = out.push(block) {
                panic!(
                    "block id {} out of order or above XLR_MAX_BLOCK_ID",
                    block.block_id
                );
            }
        }
        out
    }
}

impl<D: RecordBytes> BlockImage<D> {
    /// Bytes the image occupies in the record (bimg_len): what `pg_waldump` counts as
    /// FPI size.
    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }

    /// The same image with its bytes borrowed.
    pub fn borrowed(&self) -> BlockImage<&[u8]> {
        BlockImage {
            stored: &self.stored,
            hole_offset: self.hole_offset,
            hole_length: self.hole_length,
            apply: self.apply,
            compression: self.compression,
        }
    }
}

impl<D: RecordBytes> Default for DecodedRecord<D> {
    /// An empty record (no blocks, no data) at LSN 0: something to decode into.
    fn default() -> Self {
        DecodedRecord {
            lsn: Lsn::INVALID,
            end_lsn: Lsn::INVALID,
            xid: 0,
            prev: Lsn::INVALID,
            info: 0,
            rmid: 0,
            total_len: 0,
            blocks: BlockRefs::new(),
            main_data: D::default(),
            origin: None,
            toplevel_xid: None,
        }
    }
}

impl<D: RecordBytes> DecodedRecord<D> {
    /// The rmgr-specific bits of xl_info (`info & XLR_RMGR_INFO_MASK`).
    pub const fn rmgr_info(&self) -> u8 {
        self.info & !crate::format::XLR_INFO_MASK
    }

    /// The record type as `pg_waldump` prints it, e.g. "Heap/INSERT+INIT".
    pub fn type_name(&self) -> String {
        record_type_name(self.rmid, self.info)
    }

    /// The block reference with id `block_id` (XLogRecHasBlockRef / XLogRecGetBlock).
    pub fn block(&self, block_id: u8) -> Option<&BlockRef<D>> {
        self.blocks.get(block_id)
    }

    /// Sum of the stored lengths of all page images (the FPI part of XLogRecGetLen).
    pub fn fpi_len(&self) -> u64 {
        self.blocks
            .iter()
            .filter_map(|block| block.image.as_ref())
            .map(|image| image.stored.len() as u64)
            .sum()
    }

    /// xl_tot_len without the page images: `pg_waldump`'s "record size" (XLogRecGetLen).
    pub fn rec_len(&self) -> u64 {
        u64::from(self.total_len).saturating_sub(self.fpi_len())
    }

    /// Whether this is an XLOG_SWITCH (the rest of its segment is unused).
    pub const fn is_xlog_switch(&self) -> bool {
        self.rmid == crate::format::RM_XLOG_ID && self.rmgr_info() == crate::format::XLOG_SWITCH
    }

    /// The same record with its parts borrowed (a copy of the header and block
    /// references, no allocation).
    pub fn borrowed(&self) -> DecodedRecordRef<'_> {
        let mut blocks = BlockRefs::new();
        for block in &self.blocks {
            // The ids already increase.
            let _ = blocks.push(block.borrowed());
        }
        DecodedRecord {
            lsn: self.lsn,
            end_lsn: self.end_lsn,
            xid: self.xid,
            prev: self.prev,
            info: self.info,
            rmid: self.rmid,
            total_len: self.total_len,
            blocks,
            main_data: &self.main_data,
            origin: self.origin,
            toplevel_xid: self.toplevel_xid,
        }
    }

    /// The page image of block `block_id`, restored to a full page. Mirrors
    /// RestoreBlockImage (xlogreader.c): fails if the record has no such block, the
    /// block has no image, or the image does not restore.
    pub fn restore_image(&self, block_id: u8) -> Result<Box<[u8; BLCKSZ]>, DecodeError> {
        let block = self.block(block_id).ok_or_else(|| {
            DecodeError::new(
                self.lsn,
                format!("could not restore image: no block {block_id} in the record"),
            )
        })?;
        let image = block.image.as_ref().ok_or_else(|| {
            DecodeError::new(
                self.lsn,
                format!("could not restore image: block {block_id} has no image"),
            )
        })?;
        image.restore().map_err(|error| {
            DecodeError::new(
                self.lsn,
                format!("could not restore image of block {block_id}: {error}"),
            )
        })
    }
}
