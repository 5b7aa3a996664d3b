//! A timeline's WAL on a safekeeper's disk: Postgres-named 16 MiB segments written
//! through the io crate's O_DIRECT, group-committed [`SegmentedLog`], plus the record
//! boundary tracking that decides what a flush acknowledges.
//!
//! At open, the true end of WAL is found by scanning records from the control file's
//! hint; whatever follows (a torn or unacknowledged tail) is durably zeroed.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tarn_io::{IoError, SegmentNaming, SegmentedLog, SegmentedLogConfig};

use crate::Lsn;
use crate::format::{
    RecordBoundaryTracker, WalFormatError, WalStreamParams, find_end_of_wal,
    parse_segment_file_name, segment_file_name,
};

use super::ControlState;
use super::padding_gap;

/// Postgres timeline id used in segment names: tarn timelines are separate logs, each
/// starting at Postgres timeline 1.
const POSTGRES_TIMELINE: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("scanning WAL in {dir} for its end failed: {detail}")]
    Recovery { dir: PathBuf, detail: String },
    #[error("WAL received at {lsn} is invalid: {source}")]
    InvalidWal { lsn: Lsn, source: WalFormatError },
    #[error("WAL write at {lsn}: {detail}")]
    Misplaced { lsn: Lsn, detail: String },
    #[error("stored WAL is corrupt at {lsn}: {source}")]
    Corrupt { lsn: Lsn, source: WalFormatError },
    #[error("timeline in {dir} has no WAL yet")]
    NoWal { dir: PathBuf },
}

struct PostgresSegmentNaming {
    segment_size_bytes: u64,
}

impl SegmentNaming for PostgresSegmentNaming {
    fn file_name(&self, segment_no: u64) -> String {
        segment_file_name(POSTGRES_TIMELINE, segment_no, self.segment_size_bytes)
    }
    fn parse_file_name(&self, file_name: &str) -> Option<u64> {
        let parsed = parse_segment_file_name(file_name, self.segment_size_bytes).ok()?;
        (parsed.timeline == POSTGRES_TIMELINE).then_some(parsed.segno)
    }
}

pub struct WalStorage {
    dir: PathBuf,
    log: SegmentedLog,
    params: WalStreamParams,
    /// Fed every byte written, in order; `None` until the WAL's start is known.
    tracker: RefCell<Option<RecordBoundaryTracker>>,
    /// Bumped by every truncation, so a flush that raced with one is recognised.
    truncations: Cell<u64>,
}

/// A flush about to start: what it will make durable.
pub struct PreparedFlush {
    /// End of the last complete record written so far.
    pub record_end: Lsn,
    truncations: u64,
}

impl WalStorage {
    /// Opens (or creates) the WAL of the timeline in `dir`, recovering its end.
    /// Returns the storage and the end of valid WAL (`Lsn::INVALID` if there is none).
    pub async fn open(
        dir: &Path,
        control: &ControlState,
    ) -> Result<(WalStorage, Lsn), StorageError> {
        let params = WalStreamParams::new(control.segment_size_bytes, Some(control.system_id))
            .map_err(|e| StorageError::Recovery {
                dir: dir.to_path_buf(),
                detail: e.to_string(),
            })?;
        let naming = PostgresSegmentNaming {
            segment_size_bytes: control.segment_size_bytes,
        };
        let log = SegmentedLog::open(
            dir,
            SegmentedLogConfig::new(control.segment_size_bytes, naming),
        )
        .await?;
        let storage = WalStorage {
            dir: dir.to_path_buf(),
            log,
            params,
            tracker: RefCell::new(None),
            truncations: Cell::new(0),
        };
        if control.timeline_start_lsn == Lsn::INVALID {
            return Ok((storage, Lsn::INVALID));
        }
        let hint = if control.flush_lsn_hint == Lsn::INVALID {
            control.timeline_start_lsn
        } else {
            control.flush_lsn_hint
        };
        // Recovery runs before the timeline serves anyone, so plain blocking reads of the
        // segment files are fine here.
        let seg = control.segment_size_bytes;
        let dir_for_read = dir.to_path_buf();
        let mut read = move |lsn: Lsn, buf: &mut [u8]| -> io::Result<usize> {
            let name = segment_file_name(POSTGRES_TIMELINE, lsn.segment_number(seg), seg);
            match File::open(dir_for_read.join(name)) {
                Ok(f) => f.read_at(buf, lsn.segment_offset(seg)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(e),
            }
        };
        let end = find_end_of_wal(&mut read, hint, None, Lsn::MAX, params).map_err(|e| {
            StorageError::Recovery {
                dir: dir.to_path_buf(),
                detail: e.to_string(),
            }
        })?;
        tracing::info!(
            dir = %dir.display(),
            "recovered WAL: {} records after {hint}, end of WAL {} ({:?})",
            end.records,
            end.end,
            end.stop
        );
        storage.log.set_written_end(end.end.0).await?;
        // Whatever lies past the last valid record was never acknowledged: erase it so
        // it can never be mistaken for WAL.
        storage.log.truncate(end.end.0).await?;
        let tracker =
            RecordBoundaryTracker::new(end.end, end.last_record_start, params).map_err(|e| {
                StorageError::Recovery {
                    dir: dir.to_path_buf(),
                    detail: e.to_string(),
                }
            })?;
        *storage.tracker.borrow_mut() = Some(tracker);
        Ok((storage, end.end))
    }

    /// Durably discards WAL at and after `lsn`; on a log with no WAL yet, sets where
    /// it starts.
    pub async fn truncate(&self, lsn: Lsn) -> Result<(), StorageError> {
        self.truncations.set(self.truncations.get() + 1);
        let prev = {
            let t = self.tracker.borrow();
            t.as_ref().and_then(|t| {
                (t.complete_end() == lsn)
                    .then(|| t.last_record_start())
                    .flatten()
            })
        };
        if self.log.written_end().is_none() {
            self.log.set_written_end(lsn.0).await?;
        }
        self.log.truncate(lsn.0).await?;
        let tracker = RecordBoundaryTracker::new(lsn, prev, self.params)
            .map_err(|source| StorageError::InvalidWal { lsn, source })?;
        *self.tracker.borrow_mut() = Some(tracker);
        Ok(())
    }

    /// Writes WAL at `lsn` (buffered; durable after [`WalStorage::flush`]).
    pub async fn write(&self, lsn: Lsn, wal: &[u8]) -> Result<(), StorageError> {
        let gap = {
            let mut guard = self.tracker.borrow_mut();
            let tracker = guard.as_mut().ok_or_else(|| StorageError::NoWal {
                dir: self.dir.clone(),
            })?;
            let gap = padding_gap(tracker.position(), lsn)
                .map_err(|detail| StorageError::Misplaced { lsn, detail })?;
            if gap > 0 {
                tracker
                    .feed(&[0u8; 8][..gap])
                    .map_err(|source| StorageError::InvalidWal { lsn, source })?;
            }
            tracker
                .feed(wal)
                .map_err(|source| StorageError::InvalidWal { lsn, source })?;
            gap
        };
        if gap > 0 {
            self.log.write(lsn.0 - gap as u64, &[0u8; 8][..gap]).await?;
        }
        self.log.write(lsn.0, wal).await?;
        Ok(())
    }

    /// Notes what the next [`WalStorage::sync`] will cover; call it before the sync,
    /// while no write can slip in between.
    pub fn prepare_flush(&self) -> PreparedFlush {
        let record_end = self
            .tracker
            .borrow()
            .as_ref()
            .map_or(Lsn::INVALID, |t| t.complete_end());
        PreparedFlush {
            record_end,
            truncations: self.truncations.get(),
        }
    }

    /// Makes everything written durable (group commit: concurrent callers share one
    /// write and one fdatasync).
    pub async fn sync(&self) -> Result<(), StorageError> {
        if self.log.written_end().is_some() {
            self.log.sync().await?;
        }
        Ok(())
    }

    /// False if WAL was truncated since `prepared`: its record end may describe bytes
    /// that no longer exist.
    pub fn still_valid(&self, prepared: &PreparedFlush) -> bool {
        self.truncations.get() == prepared.truncations
    }

    /// Reads stored WAL starting at a record boundary, checked record by record
    /// (CRCs, headers, xl_prev chain) as it is served, and cut at the end of the last
    /// complete record so the next read starts on a boundary too. Recovery only scans
    /// from the control file's hint (where a crash can tear WAL); this catches damage
    /// that happened at rest below it before it reaches a peer.
    pub async fn read_verified(&self, lsn: Lsn, len: usize) -> Result<Vec<u8>, StorageError> {
        let mut wal = self.log.read(lsn.0, len).await?;
        let mut tracker = RecordBoundaryTracker::new(lsn, None, self.params)
            .map_err(|source| StorageError::Corrupt { lsn, source })?;
        if let Err(source) = tracker.feed(&wal) {
            return Err(StorageError::Corrupt {
                lsn: source.record_lsn().unwrap_or(lsn),
                source,
            });
        }
        let complete = tracker.complete_end();
        // A record longer than one read is served whole-chunk; the receiver's own
        // tracker still checks it before acknowledging anything.
        if complete > lsn {
            wal.truncate(((complete.0 - lsn.0) as usize).min(wal.len()));
        }
        Ok(wal)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
