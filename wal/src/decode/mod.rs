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
    decode_record_bytes, standard_record_end,
};

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

/// A full-page image carried by a block reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockImage {
    /// The image as stored in the record (compressed and/or with its hole removed).
    pub stored: Bytes,
    pub hole_offset: u16,
    pub hole_length: u16,
    /// BKPIMAGE_APPLY: redo must restore this image. Without it the image is only for
    /// `wal_consistency_checking` (the page as it is after the record is applied).
    pub apply: bool,
    pub compression: ImageCompression,
}

/// One block reference of a record (DecodedBkpBlock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// The block id within the record (0..=XLR_MAX_BLOCK_ID).
    pub block_id: u8,
    pub rel: RelFileNode,
    pub fork: ForkNumber,
    pub block: u32,
    /// BKPBLOCK_WILL_INIT: redo initialises the page from scratch.
    pub will_init: bool,
    pub image: Option<BlockImage>,
    /// Per-block data (BKPBLOCK_HAS_DATA), empty if none.
    pub data: Bytes,
}

/// A decoded WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    pub lsn: Lsn,
    /// EndRecPtr: MAXALIGNed end of the record.
    pub end_lsn: Lsn,
    pub xid: u32,
    pub prev: Lsn,
    /// xl_info (the rmgr-specific bits are `info & 0xF0`; the low bits are XLR_* flags).
    pub info: u8,
    pub rmid: u8,
    pub total_len: u32,
    pub blocks: Vec<BlockRef>,
    pub main_data: Bytes,
    pub origin: Option<u16>,
    pub toplevel_xid: Option<u32>,
}

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

impl BlockImage {
    /// Bytes the image occupies in the record (bimg_len): what `pg_waldump` counts as
    /// FPI size.
    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }
}

impl DecodedRecord {
    /// The rmgr-specific bits of xl_info (`info & XLR_RMGR_INFO_MASK`).
    pub const fn rmgr_info(&self) -> u8 {
        self.info & !crate::format::XLR_INFO_MASK
    }

    /// The record type as `pg_waldump` prints it, e.g. "Heap/INSERT+INIT".
    pub fn type_name(&self) -> String {
        record_type_name(self.rmid, self.info)
    }

    /// The block reference with id `block_id` (XLogRecHasBlockRef / XLogRecGetBlock).
    pub fn block(&self, block_id: u8) -> Option<&BlockRef> {
        self.blocks.iter().find(|block| block.block_id == block_id)
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
