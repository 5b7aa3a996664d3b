//! The one error type of the framing layer: what is wrong with the WAL and where.

use crate::{Lsn, SystemId};

use super::{
    MAX_SEGMENT_SIZE_BYTES, MIN_SEGMENT_SIZE_BYTES, SIZE_OF_XLOG_RECORD, XLOG_RECORD_MAX_SIZE,
};

/// Something in the WAL (or in how a reader was positioned) is not valid PostgreSQL 15
/// WAL. Every variant names the LSN of the page or record it is about, and the message
/// follows Postgres's own wording where there is one, so the two can be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalFormatError {
    #[error(
        "invalid WAL segment size {segment_size_bytes} bytes: must be a power of two between \
         {MIN_SEGMENT_SIZE_BYTES} and {MAX_SEGMENT_SIZE_BYTES}"
    )]
    InvalidSegmentSize { segment_size_bytes: u64 },

    #[error("cannot start reading WAL at {lsn}: {reason}")]
    InvalidStart { lsn: Lsn, reason: &'static str },

    #[error("invalid magic number {magic:04X} in WAL page at {page}")]
    PageMagic { page: Lsn, magic: u16 },

    #[error("invalid info bits {info:04X} in WAL page at {page}")]
    PageInfoBits { page: Lsn, info: u16 },

    #[error("WAL page at {page} begins a segment but has no long header (info bits {info:04X})")]
    MissingLongHeader { page: Lsn, info: u16 },

    #[error(
        "WAL page at {page} is from a different database system: system identifier {found}, \
         expected {expected}"
    )]
    SystemIdMismatch {
        page: Lsn,
        found: SystemId,
        expected: SystemId,
    },

    #[error("WAL page at {page} declares segment size {found} bytes, expected {expected}")]
    SegmentSizeMismatch {
        page: Lsn,
        found: u32,
        expected: u64,
    },

    #[error("WAL page at {page} declares XLOG_BLCKSZ {found}, expected 8192")]
    BlockSizeMismatch { page: Lsn, found: u32 },

    #[error("unexpected pageaddr {found} in WAL page at {page} (stale or recycled segment)")]
    PageAddress { page: Lsn, found: Lsn },

    #[error("out-of-sequence timeline ID {found} (after {previous}) in WAL page at {page}")]
    TimelineBackwards {
        page: Lsn,
        found: u32,
        previous: u32,
    },

    #[error("WAL page header at {page} is truncated")]
    TruncatedPageHeader { page: Lsn },

    #[error("record at {record} continues onto the page at {page}, which has no contrecord flag")]
    MissingContrecord { record: Lsn, page: Lsn },

    #[error(
        "invalid contrecord length {found} (expected {expected}) in the page at {page} that \
         continues the record at {record}"
    )]
    ContrecordLength {
        record: Lsn,
        page: Lsn,
        found: u32,
        expected: u32,
    },

    #[error("contrecord is requested by {record}: the page at {page} begins with a continuation")]
    UnexpectedContrecord { record: Lsn, page: Lsn },

    #[error(
        "invalid record length {tot_len} at {record}: a record is {SIZE_OF_XLOG_RECORD} to \
         {XLOG_RECORD_MAX_SIZE} bytes (0 usually marks the end of WAL)"
    )]
    RecordLength { record: Lsn, tot_len: u32 },

    #[error("invalid resource manager ID {rmid} at {record}")]
    ResourceManager { record: Lsn, rmid: u8 },

    #[error("record with incorrect prev-link {found} at {record}: expected {expected}")]
    PrevLink {
        record: Lsn,
        found: Lsn,
        expected: Lsn,
    },

    #[error("record with incorrect prev-link {found} at {record}: not before the record")]
    PrevLinkNotBefore { record: Lsn, found: Lsn },

    #[error(
        "incorrect resource manager data checksum in record at {record}: stored {stored:08X}, \
         computed {computed:08X}"
    )]
    RecordCrc {
        record: Lsn,
        stored: u32,
        computed: u32,
    },
}

impl WalFormatError {
    /// The start LSN of the record this error is about, if it is about a record rather
    /// than a page or a reader's configuration.
    pub fn record_lsn(&self) -> Option<Lsn> {
        use WalFormatError::*;
        match *self {
            MissingContrecord { record, .. }
            | ContrecordLength { record, .. }
            | UnexpectedContrecord { record, .. }
            | RecordLength { record, .. }
            | ResourceManager { record, .. }
            | PrevLink { record, .. }
            | PrevLinkNotBefore { record, .. }
            | RecordCrc { record, .. } => Some(record),
            _ => None,
        }
    }

    /// The LSN of the page whose header this error is about, if any.
    pub fn page_lsn(&self) -> Option<Lsn> {
        use WalFormatError::*;
        match *self {
            PageMagic { page, .. }
            | PageInfoBits { page, .. }
            | MissingLongHeader { page, .. }
            | SystemIdMismatch { page, .. }
            | SegmentSizeMismatch { page, .. }
            | BlockSizeMismatch { page, .. }
            | PageAddress { page, .. }
            | TimelineBackwards { page, .. }
            | TruncatedPageHeader { page }
            | MissingContrecord { page, .. }
            | ContrecordLength { page, .. }
            | UnexpectedContrecord { page, .. } => Some(page),
            _ => None,
        }
    }
}
