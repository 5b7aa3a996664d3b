//! [`find_end_of_wal`]: where the valid WAL in storage ends.
//!
//! At restart the safekeeper holds WAL up to some point, possibly with a torn tail (a
//! record half written, or written over zeros or stale bytes). It keeps everything up
//! to the end of the last complete valid record and discards the rest; that end is
//! what Postgres's own recovery would find reading the same bytes.

use std::io;

use crate::Lsn;

use super::WalFormatError;
use super::page::WalStreamParams;
use super::tracker::RecordBoundaryTracker;

/// Bytes asked for per read. Big enough that per-read overhead vanishes next to CRC
/// work, small enough to keep the scan's memory flat.
const SCAN_READ_BYTES: usize = 256 * 1024;

/// A source of stored WAL.
pub trait WalRead {
    /// Reads the WAL starting at `lsn` into `buf`, returning how many bytes were
    /// available: fewer than `buf.len()` (0 included) at the end of what is stored.
    /// Bytes past the end may also be returned as zeros. A request never crosses a
    /// segment boundary.
    fn read_wal(&mut self, lsn: Lsn, buf: &mut [u8]) -> io::Result<usize>;
}

impl<F> WalRead for F
where
    F: FnMut(Lsn, &mut [u8]) -> io::Result<usize>,
{
    fn read_wal(&mut self, lsn: Lsn, buf: &mut [u8]) -> io::Result<usize> {
        self(lsn, buf)
    }
}

/// Why a scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// Reached the caller's limit.
    Limit,
    /// The storage had no more bytes.
    EndOfStorage,
    /// The bytes at the reported position are not valid WAL (zeros, a torn or stale
    /// record, a bad page header). This is the normal end of a log whose tail was
    /// never written, too.
    Invalid(WalFormatError),
}

/// Result of [`find_end_of_wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndOfWal {
    /// End (EndRecPtr) of the last complete valid record; `start` if there is none.
    /// WAL from here on is to be discarded.
    pub end: Lsn,
    /// Start of that record (or `start_prev` if none was read after `start`).
    pub last_record_start: Option<Lsn>,
    /// Number of complete records read.
    pub records: u64,
    pub stop: ScanStop,
}

#[derive(Debug, thiserror::Error)]
pub enum FindEndOfWalError {
    #[error("cannot scan for the end of WAL: {0}")]
    InvalidStart(WalFormatError),
    #[error("reading WAL at {lsn} failed: {source}")]
    Read { lsn: Lsn, source: io::Error },
}

/// Scans WAL forward from `start` and returns the end of the last complete, valid
/// record before the first invalid, zeroed or incomplete one, or before `limit`.
///
/// `start` and `start_prev` are as for [`RecordBoundaryTracker::new`]: a known record
/// boundary with the previous record's start when known, or a page (typically segment)
/// start from which a continued record is skipped. Bytes at or past `limit` are not
/// read (`Lsn::MAX` for no limit). Only storage errors are errors; invalid WAL is just
/// where the log ends ([`ScanStop::Invalid`] says why).
///
/// A record ending in an XLOG_SWITCH makes `end` the end of its segment even if the
/// padding after it is not all stored: Postgres never reads that padding.
pub fn find_end_of_wal<R: WalRead + ?Sized>(
    read: &mut R,
    start: Lsn,
    start_prev: Option<Lsn>,
    limit: Lsn,
    params: WalStreamParams,
) -> Result<EndOfWal, FindEndOfWalError> {
    let mut tracker = RecordBoundaryTracker::new(start, start_prev, params)
        .map_err(FindEndOfWalError::InvalidStart)?;
    let mut buf = vec![0u8; SCAN_READ_BYTES];
    // Bounded: every iteration consumes at least one byte below `limit`, or returns.
    let stop = loop {
        let pos = tracker.position();
        if pos >= limit {
            break ScanStop::Limit;
        }
        let segment_left =
            params.segment_size_bytes - pos.segment_offset(params.segment_size_bytes);
        let want = (SCAN_READ_BYTES as u64)
            .min(limit.0 - pos.0)
            .min(segment_left) as usize;
        let got = read
            .read_wal(pos, &mut buf[..want])
            .map_err(|source| FindEndOfWalError::Read { lsn: pos, source })?;
        if got == 0 {
            break ScanStop::EndOfStorage;
        }
        if let Err(err) = tracker.feed(&buf[..got.min(want)]) {
            break ScanStop::Invalid(err);
        }
    };
    Ok(EndOfWal {
        end: tracker.complete_end(),
        last_record_start: tracker.last_record_start(),
        records: tracker.records_completed(),
        stop,
    })
}
