//! PostgreSQL 15 WAL framing: where pages and records begin and end.
//!
//! This module owns the byte layout that every WAL consumer in tarn agrees on:
//! - [`page`]: the 24/40-byte page headers that start every 8 KiB WAL page, and their
//!   validation against the stream they belong to;
//! - [`record`]: the 24-byte `XLogRecord` header and its CRC-32C;
//! - [`segment`]: segment sizes and segment file names;
//! - [`RecordBoundaryTracker`]: a streaming, allocation-free state machine that is fed
//!   WAL in arbitrary chunks and reports where each complete, CRC-valid record ends;
//! - [`find_end_of_wal`]: the restart-time scan that finds the end of the last valid
//!   record in stored WAL, so a torn tail can be discarded;
//! - [`synth`]: a generator of valid synthetic WAL for simulations, tests and load.
//!
//! It does not decode record bodies (block references, main data): that belongs to a
//! decoder built on top of the page and record header pieces here.
//!
//! The format reference is Postgres itself: `access/xlog_internal.h` (page headers,
//! segment names), `access/xlogrecord.h` (record header), `access/xlogreader.c` (what
//! a reader checks and in which order) and `xloginsert.c`/`xlog.c` (how a writer lays
//! records out).

mod end_of_wal;
mod error;
pub mod page;
pub mod record;
pub mod segment;
pub mod synth;
mod tracker;

#[cfg(test)]
mod tests;

pub use end_of_wal::{EndOfWal, FindEndOfWalError, ScanStop, WalRead, find_end_of_wal};
pub use error::WalFormatError;
pub use page::{
    LongPageHeader, PageHeader, PageValidator, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD,
    WalStreamParams, XLOG_PAGE_MAGIC, XLP_ALL_FLAGS, XLP_BKP_REMOVABLE, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
};
pub use record::{
    RM_LOGICALMSG_ID, RM_XLOG_ID, RecordCrc, SIZE_OF_XLOG_RECORD, XLOG_RECORD_MAX_SIZE,
    XLOG_SWITCH, XLR_BLOCK_ID_DATA_LONG, XLR_BLOCK_ID_DATA_SHORT, XLR_INFO_MASK, XLogRecordHeader,
    record_crc,
};
pub use segment::{
    DEFAULT_SEGMENT_SIZE_BYTES, MAX_SEGMENT_SIZE_BYTES, MIN_SEGMENT_SIZE_BYTES,
    ParseSegmentFileNameError, SegmentFileName, is_valid_segment_size, parse_segment_file_name,
    segment_file_name,
};
pub use tracker::{CompleteRecord, RecordBoundaryTracker};

/// Size of a WAL page (XLOG_BLCKSZ). Postgres makes it a compile-time option; tarn
/// supports only the default, and page headers are checked against it.
pub const XLOG_BLCKSZ: u64 = 8192;

/// Alignment of record starts (MAXIMUM_ALIGNOF on every platform Postgres 15 runs on
/// that tarn supports).
pub const MAXIMUM_ALIGNOF: u64 = 8;

/// Rounds up to a multiple of [`MAXIMUM_ALIGNOF`] (Postgres's MAXALIGN).
pub const fn max_align(value: u64) -> u64 {
    (value + (MAXIMUM_ALIGNOF - 1)) & !(MAXIMUM_ALIGNOF - 1)
}
