//! [`SegmentedLog`]: an append-mostly byte log stored as fixed-size segment files in
//! one directory, written with O_DIRECT and group commit. It owns the files of its
//! directory, the in-memory unwritten tail, durability bookkeeping and segment
//! preallocation; it knows nothing about what the bytes mean (the WAL layer does).
//!
//! Positions are absolute `u64` byte offsets; segment `n` holds
//! `[n × segment_size_bytes, (n+1) × segment_size_bytes)` in the file named by the
//! caller's [`SegmentNaming`].
//!
//! How the bytes move:
//! - `write` copies bytes into `mem`, an aligned in-memory image of
//!   `[mem_start, written_end)`; `mem_start` is block-aligned, so the partial tail block
//!   stays in memory and is rewritten whole by the next write (O_DIRECT needs 4096-aligned
//!   offsets and lengths). Overwriting bytes already on disk (`pos < mem_start`) is a
//!   read-modify-write of the touched blocks.
//! - A *round* (group commit) snapshots `[align_down(unsubmitted_from), written_end)`,
//!   writes it with one write per touched segment, fdatasyncs every segment written
//!   since the last round, and publishes the new durable end. One round runs at a time;
//!   `append_durable`/`sync` callers that arrive while a round is in flight wait for it
//!   and are then all covered by the next one.
//! - Segments are created as durable zeros (written, fdatasynced, renamed into place);
//!   after a round touches segment `n`, segment `n+1` is prepared in the background.
//!
//! The log runs on one glommio executor (`!Send`); share it between tasks with `Rc`.

mod notify;
mod segment_file;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::sync::Semaphore;

use crate::aligned::{AlignedBuf, BLOCK_SIZE_BYTES, align_down, align_up};
use crate::error::IoError;
use notify::LocalNotify;
use segment_file::{SegmentFile, close_shared, create_zeroed_segment, probe_direct_io, sync_dir};

const BLOCK: u64 = BLOCK_SIZE_BYTES as u64;

/// Largest segment: Postgres allows WAL segments up to 1 GiB.
pub const MAX_SEGMENT_SIZE_BYTES: u64 = 1 << 30;

/// Largest single `write`/`append_durable`: a walsender message is ≤ 128 KiB, so 4 MiB
/// leaves room for batching callers while keeping one write's copy bounded.
pub const MAX_WRITE_BYTES: usize = 4 << 20;

/// Largest in-memory unwritten tail. A write that would grow it beyond this first
/// runs a round (backpressure), so memory per log stays bounded and a round's batch
/// fits one `MAX_IO_BYTES` write per segment.
pub const MAX_BUFFERED_BYTES: usize = 8 << 20;

/// Largest single `read`/`read_raw`: callers read records or pages, not whole logs.
pub const MAX_READ_BYTES: usize = 64 << 20;

/// Open segment files kept cached: the tail segment, the one being preallocated, a
/// few for readers. Others are reopened on demand.
pub const MAX_OPEN_SEGMENT_FILES: usize = 8;

/// Directory entries examined by `open`: a WAL directory holds at most thousands of
/// segments; more means the wrong directory was given.
pub const MAX_DIR_ENTRIES: usize = 1 << 20;

/// Rounds a `sync`/`append_durable` caller takes part in before giving up. Normally
/// ≤ 2 (wait for the in-flight round, then be covered by the next); more happens only
/// if round leaders keep being cancelled.
const MAX_SYNC_ATTEMPTS: usize = 8;

/// Rounds a `write` waits through for buffer space (see [`MAX_BUFFERED_BYTES`]). One
/// round empties the buffer; more only if other tasks refill it first.
const MAX_BACKPRESSURE_ROUNDS: usize = 8;

/// After a failed background preallocation (typically a full disk), wait this long
/// before trying again in the background.
const PREALLOC_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits for a background preallocation of the same segment before creating it inline.
const MAX_SEGMENT_OPEN_ATTEMPTS: usize = 3;

/// Suffix of a segment being created; leftovers from a crash are deleted by `open`.
const TMP_SUFFIX: &str = ".partial";

/// Maps segment numbers to file names and back. The WAL layer names them like
/// Postgres (`000000010000000000000001`); `parse_file_name` must invert `file_name`
/// and return `None` for files that are not segments.
pub trait SegmentNaming: Send + Sync {
    fn file_name(&self, segment_no: u64) -> String;
    fn parse_file_name(&self, file_name: &str) -> Option<u64>;
}

/// Segment `n` is named `n` in 16 upper-case hex digits.
#[derive(Clone, Copy, Debug, Default)]
pub struct HexSegmentNaming;

impl SegmentNaming for HexSegmentNaming {
    fn file_name(&self, segment_no: u64) -> String {
        format!("{segment_no:016X}")
    }
    fn parse_file_name(&self, file_name: &str) -> Option<u64> {
        if file_name.len() != 16 || !file_name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(file_name, 16).ok()
    }
}

#[derive(Clone)]
pub struct SegmentedLogConfig {
    /// Size of every segment file; a multiple of 4096, at most [`MAX_SEGMENT_SIZE_BYTES`].
    pub segment_size_bytes: u64,
    pub naming: Arc<dyn SegmentNaming>,
    /// Prepare segment `n+1` in the background once segment `n` is written to, so an
    /// append rarely waits for a segment to be zero-filled.
    pub preallocate_ahead: bool,
}

impl SegmentedLogConfig {
    pub fn new(segment_size_bytes: u64, naming: impl SegmentNaming + 'static) -> Self {
        SegmentedLogConfig {
            segment_size_bytes,
            naming: Arc::new(naming),
            preallocate_ahead: true,
        }
    }
}

impl fmt::Debug for SegmentedLogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentedLogConfig")
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("segment_0_name", &self.naming.file_name(0))
            .field("preallocate_ahead", &self.preallocate_ahead)
            .finish()
    }
}

/// Counters since `open`; they show batching (`syncs` ≪ `appends` under load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentedLogStats {
    /// `append_durable` calls.
    pub appends: u64,
    /// Bytes passed to `append_durable`.
    pub append_bytes: u64,
    /// Log-data write syscalls (rounds, read-modify-writes, truncate's zeroing);
    /// segment preallocation is not counted here.
    pub writes: u64,
    /// Bytes of those writes, block padding included.
    pub write_bytes: u64,
    /// fdatasync calls on segment files for log data (not preallocation).
    pub syncs: u64,
    /// Group-commit rounds completed.
    pub rounds: u64,
    /// Segment files created (zero-filled), inline or in the background.
    pub segments_created: u64,
}

/// See the module docs. Not `Send`: it lives on one executor; share it with `Rc`.
pub struct SegmentedLog {
    inner: Rc<Inner>,
}

struct Inner {
    dir: PathBuf,
    segment_size_bytes: u64,
    naming: Arc<dyn SegmentNaming>,
    preallocate_ahead: bool,
    /// O_DIRECT is unusable here (probe failed): open every file buffered.
    buffered: bool,
    state: RefCell<State>,
    /// Serialises disk writes of log data (rounds, read-modify-writes, truncate), so
    /// two writes of the same block never race and rounds see a stable disk.
    io_lock: Semaphore,
    /// Notified when a round ends (success, failure or cancellation).
    round_done: LocalNotify,
    /// Notified when a background preallocation ends.
    prealloc_done: LocalNotify,
}

struct State {
    /// `None` until [`SegmentedLog::set_written_end`]; then every byte below it has
    /// been written (buffered in `mem` or on disk).
    written_end: Option<u64>,
    /// Every byte below it is durable with its latest content.
    durable_end: u64,
    /// Block-aligned start of `mem`; invariant `mem_start ≤ written_end`.
    mem_start: u64,
    /// Latest content of `[mem_start, written_end)`; `mem.len() == written_end - mem_start`.
    mem: AlignedBuf,
    /// Lowest position whose latest content has not been handed to a completed disk
    /// write; invariant `mem_start ≤ unsubmitted_from ≤ written_end`.
    unsubmitted_from: u64,
    /// Incremented by every mutation (write, truncate).
    write_seq: u64,
    /// Mutations with `seq ≤ durable_seq` are durable.
    durable_seq: u64,
    /// Lowest position written since the current round's snapshot: such bytes are not
    /// covered by that round.
    lowest_write_since_snapshot: u64,
    round_in_progress: bool,
    /// Segments written since their last fdatasync.
    dirty_segments: BTreeSet<u64>,
    /// Segment files that exist and belong to the log.
    segments: BTreeSet<u64>,
    /// Segment files found by `open` past the declared end: stale bytes, left on disk
    /// until replaced by a fresh zero-filled segment or removed by `truncate`.
    stale_segments: BTreeSet<u64>,
    files: BTreeMap<u64, Rc<SegmentFile>>,
    prealloc_in_flight: Option<u64>,
    /// When background preallocation last failed: retrying every round on a full disk
    /// would spin (and log) uselessly, so it waits `PREALLOC_RETRY_AFTER`.
    prealloc_failed_at: Option<std::time::Instant>,
    /// Set by a failed write/fdatasync; every later operation fails with it.
    failure: Option<String>,
    direct_io: Option<bool>,
    stats: SegmentedLogStats,
}

/// One segment's part of a round's snapshot.
struct Piece {
    segment_no: u64,
    offset_in_segment: u64,
    data: AlignedBuf,
}

enum WriteAction {
    Done(u64),
    NeedRoom(u64),
    OnDisk,
}

impl SegmentedLog {
    /// Opens (creating if needed) the log in `dir` and lists its segments. The written
    /// end is not known yet: scan with [`SegmentedLog::read_raw`], then declare it with
    /// [`SegmentedLog::set_written_end`] (0 or any start position for a new log).
    /// Leftover `*.partial` files of an interrupted segment creation are removed.
    pub async fn open(dir: impl AsRef<Path>, config: SegmentedLogConfig) -> Result<Self, IoError> {
        let dir = dir.as_ref().to_path_buf();
        let size = config.segment_size_bytes;
        if size == 0 || !size.is_multiple_of(BLOCK) || size > MAX_SEGMENT_SIZE_BYTES {
            return Err(IoError::InvalidArgument {
                path: dir,
                pos: 0,
                reason: format!(
                    "segment_size_bytes {size} must be a non-zero multiple of {BLOCK} and at most {MAX_SEGMENT_SIZE_BYTES}"
                ),
            });
        }
        // Directory listing and creation are rare metadata operations: done inline.
        std::fs::create_dir_all(&dir).map_err(|e| IoError::os("creating directory", &dir, 0, e))?;
        let entries =
            std::fs::read_dir(&dir).map_err(|e| IoError::os("listing directory", &dir, 0, e))?;
        let max_segment_no = u64::MAX / size - 1;
        let mut segments = BTreeSet::new();
        for (i, entry) in entries.enumerate() {
            if i >= MAX_DIR_ENTRIES {
                return Err(IoError::Overloaded {
                    dir,
                    pos: 0,
                    reason: format!("more than {MAX_DIR_ENTRIES} directory entries"),
                });
            }
            let entry = entry.map_err(|e| IoError::os("listing directory", &dir, 0, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.ends_with(TMP_SUFFIX) {
                std::fs::remove_file(&path)
                    .map_err(|e| IoError::os("removing leftover", &path, 0, e))?;
                continue;
            }
            let Some(segment_no) = config.naming.parse_file_name(&name) else {
                continue;
            };
            if config.naming.file_name(segment_no) != name || segment_no > max_segment_no {
                continue;
            }
            let len = entry
                .metadata()
                .map_err(|e| IoError::os("reading metadata of", &path, 0, e))?
                .len();
            if len != size {
                return Err(IoError::InvalidArgument {
                    path,
                    pos: segment_no * size,
                    reason: format!(
                        "segment file is {len} bytes, expected segment_size_bytes {size}"
                    ),
                });
            }
            segments.insert(segment_no);
        }
        let buffered = match probe_direct_io(&dir).await? {
            None => false,
            Some(reason) => {
                tracing::warn!(
                    dir = %dir.display(),
                    reason,
                    "O_DIRECT does not work for this log: falling back to buffered writes + \
                     fdatasync. Durability is kept, but writes go through the page cache"
                );
                true
            }
        };
        Ok(SegmentedLog {
            inner: Rc::new(Inner {
                dir,
                segment_size_bytes: size,
                naming: config.naming,
                preallocate_ahead: config.preallocate_ahead,
                buffered,
                state: RefCell::new(State {
                    written_end: None,
                    durable_end: 0,
                    mem_start: 0,
                    mem: AlignedBuf::with_capacity(BLOCK_SIZE_BYTES),
                    unsubmitted_from: 0,
                    write_seq: 0,
                    durable_seq: 0,
                    lowest_write_since_snapshot: u64::MAX,
                    round_in_progress: false,
                    dirty_segments: BTreeSet::new(),
                    segments,
                    stale_segments: BTreeSet::new(),
                    files: BTreeMap::new(),
                    prealloc_in_flight: None,
                    prealloc_failed_at: None,
                    failure: None,
                    direct_io: None,
                    stats: SegmentedLogStats::default(),
                }),
                io_lock: Semaphore::new(1),
                round_done: LocalNotify::default(),
                prealloc_done: LocalNotify::default(),
            }),
        })
    }

    /// Declares where the log's content ends (found by the caller, e.g. by scanning
    /// records), once, before any write. Loads the partial tail block into memory and
    /// fdatasyncs the segments that could hold not-yet-durable bytes of a previous run.
    /// Segments past `end` are treated as stale: they are not read by `read` and are
    /// replaced by fresh zero-filled ones before being written. Bytes on disk after `end`
    /// are left as found: call [`SegmentedLog::truncate`]`(end)` to erase them durably.
    pub async fn set_written_end(&self, end: u64) -> Result<(), IoError> {
        let inner = &self.inner;
        let size = inner.segment_size_bytes;
        let segment_of_tail = {
            let mut st = inner.state.borrow_mut();
            inner.check_ok(&st, end)?;
            if let Some(current) = st.written_end {
                return Err(inner.invalid(end, format!("written end already set to {current}")));
            }
            if end > u64::MAX - 2 * size {
                return Err(inner.invalid(end, "end too large".into()));
            }
            let first_stale = end.div_ceil(size);
            let stale: Vec<u64> = st.segments.range(first_stale..).copied().collect();
            if !stale.is_empty() {
                tracing::info!(
                    dir = %inner.dir.display(),
                    end,
                    stale_segments = stale.len(),
                    "segments past the written end will be replaced before reuse"
                );
            }
            for s in stale {
                st.segments.remove(&s);
                st.stale_segments.insert(s);
            }
            (end > 0).then(|| (end - 1) / size)
        };

        let tail_start = align_down(end);
        let mut tail = AlignedBuf::zeroed((end - tail_start) as usize);
        if end > tail_start && inner.state.borrow().segments.contains(&(end / size)) {
            inner.read_disk_into(tail_start, &mut tail).await?;
        }
        // A previous run may have written bytes that never reached an fdatasync; they
        // can only be in the last round's batch, i.e. within MAX_BUFFERED_BYTES + one
        // block below the end.
        if let Some(last) = segment_of_tail {
            let first = end.saturating_sub(MAX_BUFFERED_BYTES as u64 + BLOCK) / size;
            let to_sync: Vec<u64> = inner
                .state
                .borrow()
                .segments
                .range(first..=last)
                .copied()
                .collect();
            for s in to_sync {
                let file = inner.file_for_read(s, end).await?;
                file.sync().await.map_err(|e| inner.fail(e))?;
                inner.state.borrow_mut().stats.syncs += 1;
            }
        }

        let mut st = inner.state.borrow_mut();
        st.written_end = Some(end);
        st.durable_end = end;
        st.mem_start = tail_start;
        st.mem = tail;
        st.unsubmitted_from = end;
        Ok(())
    }

    /// Buffers `bytes` at `pos`. `pos` may be anywhere up to the written end
    /// (overwriting written bytes is allowed); past it is a [`IoError::Gap`]. Bytes
    /// already on disk are rewritten before this returns; others are written by the
    /// next round. Not durable until [`SegmentedLog::sync`].
    pub async fn write(&self, pos: u64, bytes: &[u8]) -> Result<(), IoError> {
        self.inner.write(pos, bytes).await.map(|_| ())
    }

    /// Makes everything written so far durable; returns the durable end.
    pub async fn sync(&self) -> Result<u64, IoError> {
        let (seq, pos) = {
            let st = self.inner.state.borrow();
            let end = st.written_end.ok_or_else(|| self.inner.end_unknown(0))?;
            (st.write_seq, end)
        };
        self.inner.sync_to_seq(seq, pos).await
    }

    /// `write` + group-committed `sync`: appends pending while a round is in flight are
    /// batched into the next round. Returns the durable end, which is ≥ `pos +
    /// bytes.len()` unless a concurrent overwrite or truncate moved it below.
    pub async fn append_durable(&self, pos: u64, bytes: &[u8]) -> Result<u64, IoError> {
        {
            let mut st = self.inner.state.borrow_mut();
            st.stats.appends += 1;
            st.stats.append_bytes += bytes.len() as u64;
        }
        let seq = self.inner.write(pos, bytes).await?;
        self.inner.sync_to_seq(seq, pos).await
    }

    /// Durably sets the end to `pos`: bytes from `pos` to the end of its segment become
    /// zeros and later segment files are deleted (directory fsynced), so stale bytes
    /// cannot reappear after a crash. Costs up to one segment of zero writes.
    pub async fn truncate(&self, pos: u64) -> Result<(), IoError> {
        self.inner.truncate(pos).await
    }

    /// Reads `len` bytes at `pos`, all below the written end; sees the latest writes
    /// (buffered bytes come from memory, the rest from disk).
    pub async fn read(&self, pos: u64, len: usize) -> Result<Vec<u8>, IoError> {
        self.inner.read(pos, len).await
    }

    /// Reads up to `len` bytes at `pos` straight from the segment files, ignoring the
    /// written end and unwritten buffered bytes: for scanning a log whose end is not
    /// known yet. Returns fewer bytes only if a segment file is shorter than expected;
    /// a missing segment is [`IoError::MissingSegment`].
    pub async fn read_raw(&self, pos: u64, len: usize) -> Result<Vec<u8>, IoError> {
        self.inner.read_raw(pos, len).await
    }

    /// Segment numbers of the log's files (before `set_written_end`: all found).
    pub fn segments(&self) -> Vec<u64> {
        self.inner.state.borrow().segments.iter().copied().collect()
    }

    pub fn written_end(&self) -> Option<u64> {
        self.inner.state.borrow().written_end
    }

    pub fn durable_end(&self) -> u64 {
        self.inner.state.borrow().durable_end
    }

    pub fn segment_size_bytes(&self) -> u64 {
        self.inner.segment_size_bytes
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether O_DIRECT is in effect (`None` until a segment file was opened).
    pub fn direct_io(&self) -> Option<bool> {
        self.inner.state.borrow().direct_io
    }

    pub fn stats(&self) -> SegmentedLogStats {
        self.inner.state.borrow().stats
    }

    /// Waits for a background preallocation to finish and closes cached files. Does
    /// not sync: call [`SegmentedLog::sync`] first if buffered bytes must persist.
    pub async fn close(self) -> Result<(), IoError> {
        let inner = &self.inner;
        let in_flight = inner.state.borrow().prealloc_in_flight.is_some();
        if in_flight {
            let epoch = inner.prealloc_done.epoch();
            if inner.state.borrow().prealloc_in_flight.is_some() {
                let _ = inner.prealloc_done.wait_past(epoch).await;
            }
        }
        let files = std::mem::take(&mut inner.state.borrow_mut().files);
        let mut first_error = None;
        for (_, file) in files {
            if let Err(e) = close_shared(file).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl fmt::Debug for SegmentedLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.borrow();
        f.debug_struct("SegmentedLog")
            .field("dir", &self.inner.dir)
            .field("segment_size_bytes", &self.inner.segment_size_bytes)
            .field("written_end", &st.written_end)
            .field("durable_end", &st.durable_end)
            .field("failure", &st.failure)
            .finish()
    }
}

/// Ends a round however it ends (success, error, or the leader's future being
/// dropped): restores the snapshot's bookkeeping unless the round succeeded, clears
/// `round_in_progress` and wakes the waiters so one of them can lead the next round.
struct RoundGuard<'a> {
    inner: &'a Inner,
    /// (snapshot start, segments that were dirty at the snapshot) until success.
    restore: Option<(u64, BTreeSet<u64>)>,
}

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        {
            let mut st = self.inner.state.borrow_mut();
            if let Some((from, dirty)) = self.restore.take() {
                st.unsubmitted_from = st.unsubmitted_from.min(from);
                st.dirty_segments.extend(dirty);
            }
            st.round_in_progress = false;
        }
        self.inner.round_done.notify_all();
    }
}

impl Inner {
    fn segment_path(&self, segment_no: u64) -> PathBuf {
        self.dir.join(self.naming.file_name(segment_no))
    }

    fn tmp_path(&self, segment_no: u64) -> PathBuf {
        self.dir
            .join(format!("{}{TMP_SUFFIX}", self.naming.file_name(segment_no)))
    }

    fn invalid(&self, pos: u64, reason: String) -> IoError {
        IoError::InvalidArgument {
            path: self.dir.clone(),
            pos,
            reason,
        }
    }

    fn end_unknown(&self, pos: u64) -> IoError {
        IoError::EndUnknown {
            dir: self.dir.clone(),
            pos,
        }
    }

    fn check_ok(&self, st: &State, pos: u64) -> Result<(), IoError> {
        match &st.failure {
            Some(cause) => Err(IoError::Failed {
                dir: self.dir.clone(),
                pos,
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records a failure that leaves disk contents or durability unknown; from now on
    /// the log refuses IO.
    fn fail(&self, err: IoError) -> IoError {
        let mut st = self.state.borrow_mut();
        if st.failure.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %err, "segmented log stopped: IO failure");
            st.failure = Some(err.to_string());
        }
        err
    }

    fn note_direct_io(&self, file: &SegmentFile) {
        let mut st = self.state.borrow_mut();
        if file.is_direct() {
            st.direct_io.get_or_insert(true);
        } else if st.direct_io != Some(false) {
            st.direct_io = Some(false);
            tracing::warn!(
                file = %file.path().display(),
                "O_DIRECT is not available on this filesystem (e.g. tmpfs): falling back to \
                 buffered writes + fdatasync. Durability is kept, but writes go through the \
                 page cache; put the log on a filesystem with O_DIRECT support (ext4, xfs)"
            );
        }
    }

    /// Splits `[from, to)` at segment boundaries: (segment, offset in segment, length).
    fn split(&self, from: u64, to: u64) -> Vec<(u64, u64, u64)> {
        let size = self.segment_size_bytes;
        let mut out = Vec::new();
        let mut at = from;
        // Bound: to - from ≤ MAX_READ_BYTES/MAX_BUFFERED_BYTES, so at most that many
        // segments plus one.
        while at < to {
            let segment_no = at / size;
            let seg_end = (segment_no + 1) * size;
            let stop = to.min(seg_end);
            out.push((segment_no, at - segment_no * size, stop - at));
            at = stop;
        }
        out
    }

    async fn write(self: &Rc<Self>, pos: u64, bytes: &[u8]) -> Result<u64, IoError> {
        if bytes.len() > MAX_WRITE_BYTES {
            return Err(self.invalid(
                pos,
                format!(
                    "write of {} bytes exceeds MAX_WRITE_BYTES {MAX_WRITE_BYTES}",
                    bytes.len()
                ),
            ));
        }
        let len = bytes.len() as u64;
        if pos
            .checked_add(len)
            .is_none_or(|e| e > u64::MAX - 2 * self.segment_size_bytes)
        {
            return Err(self.invalid(pos, "position overflows".into()));
        }
        for _ in 0..MAX_BACKPRESSURE_ROUNDS {
            let action = {
                let mut st = self.state.borrow_mut();
                self.check_ok(&st, pos)?;
                let end = st.written_end.ok_or_else(|| self.end_unknown(pos))?;
                if pos > end {
                    return Err(IoError::Gap {
                        dir: self.dir.clone(),
                        pos,
                        written_end: end,
                    });
                }
                if len == 0 {
                    WriteAction::Done(st.write_seq)
                } else if pos < st.mem_start {
                    WriteAction::OnDisk
                } else if end.max(pos + len) - st.mem_start <= MAX_BUFFERED_BYTES as u64 {
                    WriteAction::Done(Self::apply_in_memory(&mut st, pos, bytes))
                } else {
                    WriteAction::NeedRoom(st.write_seq)
                }
            };
            match action {
                WriteAction::Done(seq) => return Ok(seq),
                WriteAction::OnDisk => return self.write_on_disk(pos, bytes).await,
                WriteAction::NeedRoom(seq) => {
                    self.sync_to_seq(seq, pos).await?;
                }
            }
        }
        Err(IoError::Overloaded {
            dir: self.dir.clone(),
            pos,
            reason: format!(
                "no buffer room after {MAX_BACKPRESSURE_ROUNDS} rounds (MAX_BUFFERED_BYTES {MAX_BUFFERED_BYTES})"
            ),
        })
    }

    /// Copies `bytes` at `pos ≥ mem_start` into memory and updates the bookkeeping.
    fn apply_in_memory(st: &mut State, pos: u64, bytes: &[u8]) -> u64 {
        let end = st.written_end.unwrap_or(pos);
        let offset = (pos - st.mem_start) as usize;
        let needed = offset + bytes.len();
        if needed > st.mem.len() {
            st.mem.resize(needed);
        }
        st.mem[offset..needed].copy_from_slice(bytes);
        st.written_end = Some(end.max(pos + bytes.len() as u64));
        Self::note_mutation(st, pos)
    }

    fn note_mutation(st: &mut State, pos: u64) -> u64 {
        st.durable_end = st.durable_end.min(pos);
        // Bytes below mem_start are written to disk directly by their writer.
        st.unsubmitted_from = st.unsubmitted_from.min(pos.max(st.mem_start));
        st.lowest_write_since_snapshot = st.lowest_write_since_snapshot.min(pos);
        st.write_seq += 1;
        st.write_seq
    }

    /// Overwrite of bytes below `mem_start` (already on disk): read-modify-write of
    /// the touched blocks, under the IO lock so no round writes them concurrently.
    async fn write_on_disk(self: &Rc<Self>, pos: u64, bytes: &[u8]) -> Result<u64, IoError> {
        let _permit = self.lock_io(pos).await?;
        let len = bytes.len() as u64;
        let (disk_to, seq) = {
            let mut st = self.state.borrow_mut();
            self.check_ok(&st, pos)?;
            let end = st.written_end.ok_or_else(|| self.end_unknown(pos))?;
            if pos > end {
                return Err(IoError::Gap {
                    dir: self.dir.clone(),
                    pos,
                    written_end: end,
                });
            }
            let disk_to = (pos + len).min(st.mem_start);
            let seq = if pos + len > st.mem_start {
                // The part at or above mem_start goes to memory like any write.
                let split = (st.mem_start - pos) as usize;
                let mem_start = st.mem_start;
                Self::apply_in_memory(&mut st, mem_start, &bytes[split..]);
                Self::note_mutation(&mut st, pos)
            } else {
                Self::note_mutation(&mut st, pos)
            };
            (disk_to, seq)
        };
        if pos >= disk_to {
            return Ok(seq); // a truncate lowered mem_start while we waited
        }
        for (segment_no, offset, piece_len) in self.split(pos, disk_to) {
            let block_from = align_down(offset);
            let block_to = align_up(offset + piece_len);
            let mut buf = AlignedBuf::zeroed((block_to - block_from) as usize);
            let file = self.file_for_write(segment_no, pos).await?;
            let result = async {
                if offset != block_from {
                    file.read_exact_at(block_from, &mut buf[..BLOCK_SIZE_BYTES])
                        .await?;
                }
                if offset + piece_len != block_to {
                    let last = buf.len() - BLOCK_SIZE_BYTES;
                    file.read_exact_at(block_to - BLOCK, &mut buf[last..])
                        .await?;
                }
                let src_from = (segment_no * self.segment_size_bytes + offset - pos) as usize;
                let dst = (offset - block_from) as usize;
                buf[dst..dst + piece_len as usize]
                    .copy_from_slice(&bytes[src_from..src_from + piece_len as usize]);
                file.write_all_at(block_from, &buf).await
            }
            .await;
            // The blocks may be half-rewritten and memory does not hold them: stop.
            result.map_err(|e| self.fail(e))?;
            let mut st = self.state.borrow_mut();
            st.dirty_segments.insert(segment_no);
            st.stats.writes += 1;
            st.stats.write_bytes += buf.len() as u64;
        }
        Ok(seq)
    }

    async fn lock_io(&self, pos: u64) -> Result<glommio::sync::Permit<'_>, IoError> {
        self.io_lock
            .acquire_permit(1)
            .await
            .map_err(|e| IoError::Overloaded {
                dir: self.dir.clone(),
                pos,
                reason: format!("IO lock closed: {e}"),
            })
    }

    /// Returns once mutation `seq` is durable, leading or joining rounds.
    async fn sync_to_seq(self: &Rc<Self>, seq: u64, pos: u64) -> Result<u64, IoError> {
        for _ in 0..MAX_SYNC_ATTEMPTS {
            let wait_epoch = {
                let mut st = self.state.borrow_mut();
                self.check_ok(&st, pos)?;
                if st.durable_seq >= seq {
                    return Ok(st.durable_end);
                }
                if st.round_in_progress {
                    Some(self.round_done.epoch())
                } else {
                    st.round_in_progress = true;
                    None
                }
            };
            match wait_epoch {
                Some(epoch) => self.round_done.wait_past(epoch).await.map_err(|waiters| {
                    IoError::Overloaded {
                        dir: self.dir.clone(),
                        pos,
                        reason: format!("{waiters} tasks already wait for a round (limit reached)"),
                    }
                })?,
                None => self.run_round(pos).await?,
            }
        }
        Err(IoError::Overloaded {
            dir: self.dir.clone(),
            pos,
            reason: format!(
                "not durable after {MAX_SYNC_ATTEMPTS} rounds (round leaders cancelled?)"
            ),
        })
    }

    /// One group-commit round. The caller has set `round_in_progress`.
    async fn run_round(self: &Rc<Self>, pos: u64) -> Result<(), IoError> {
        let mut guard = RoundGuard {
            inner: self,
            restore: None,
        };
        let _permit = self.lock_io(pos).await?;
        let (from, end, seq, pieces, dirty) = {
            let mut st = self.state.borrow_mut();
            self.check_ok(&st, pos)?;
            let end = st.written_end.ok_or_else(|| self.end_unknown(pos))?;
            debug_assert!(st.mem_start <= st.unsubmitted_from && st.unsubmitted_from <= end);
            let from = align_down(st.unsubmitted_from).max(st.mem_start);
            let mut pieces = Vec::new();
            for (segment_no, offset_in_segment, len) in self.split(from, end) {
                let at = (segment_no * self.segment_size_bytes + offset_in_segment - st.mem_start)
                    as usize;
                pieces.push(Piece {
                    segment_no,
                    offset_in_segment,
                    data: AlignedBuf::from_slice(&st.mem[at..at + len as usize]),
                });
            }
            st.unsubmitted_from = end;
            st.lowest_write_since_snapshot = u64::MAX;
            let dirty = std::mem::take(&mut st.dirty_segments);
            (from, end, st.write_seq, pieces, dirty)
        };
        guard.restore = Some((from, dirty.clone()));

        let mut to_sync = dirty;
        let mut last_segment = None;
        for piece in &pieces {
            let file = self.file_for_write(piece.segment_no, pos).await?;
            let data = piece.data.as_block_padded_slice();
            // A failed write leaves its blocks unknown but memory still holds them and
            // the guard re-queues them; the failure is still fatal (we cannot tell what
            // the device did), so stop loudly.
            file.write_all_at(piece.offset_in_segment, data)
                .await
                .map_err(|e| self.fail(e))?;
            let mut st = self.state.borrow_mut();
            st.stats.writes += 1;
            st.stats.write_bytes += data.len() as u64;
            to_sync.insert(piece.segment_no);
            last_segment = Some(piece.segment_no);
        }
        for &segment_no in &to_sync {
            let file = self.file_for_write(segment_no, pos).await?;
            file.sync().await.map_err(|e| self.fail(e))?;
            self.state.borrow_mut().stats.syncs += 1;
        }

        {
            let mut st = self.state.borrow_mut();
            st.durable_seq = st.durable_seq.max(seq);
            st.durable_end = end.min(st.lowest_write_since_snapshot);
            let written_end = st.written_end.unwrap_or(end);
            let new_mem_start = align_down(st.unsubmitted_from.min(written_end));
            if new_mem_start > st.mem_start {
                let drop_bytes = (new_mem_start - st.mem_start) as usize;
                st.mem.drain_front(drop_bytes);
                st.mem_start = new_mem_start;
            }
            st.stats.rounds += 1;
        }
        guard.restore = None;
        drop(guard);
        if let Some(segment_no) = last_segment {
            self.maybe_start_prealloc(segment_no + 1);
        }
        Ok(())
    }

    /// The open file of a segment that exists or is about to be written, creating it
    /// (zero-filled) if needed. Called with the IO lock held.
    async fn file_for_write(
        self: &Rc<Self>,
        segment_no: u64,
        pos: u64,
    ) -> Result<Rc<SegmentFile>, IoError> {
        for _ in 0..MAX_SEGMENT_OPEN_ATTEMPTS {
            enum Next {
                Open,
                WaitPrealloc(u64),
                Create,
            }
            let next = {
                let st = self.state.borrow();
                if let Some(file) = st.files.get(&segment_no) {
                    return Ok(file.clone());
                }
                if st.segments.contains(&segment_no) {
                    Next::Open
                } else if st.prealloc_in_flight == Some(segment_no) {
                    Next::WaitPrealloc(self.prealloc_done.epoch())
                } else {
                    Next::Create
                }
            };
            match next {
                Next::Open => return self.open_cached(segment_no, pos).await,
                Next::WaitPrealloc(epoch) => {
                    let _ = self.prealloc_done.wait_past(epoch).await;
                }
                Next::Create => {
                    create_zeroed_segment(
                        &self.dir,
                        &self.segment_path(segment_no),
                        &self.tmp_path(segment_no),
                        self.segment_size_bytes,
                        self.buffered,
                    )
                    .await?;
                    {
                        let mut st = self.state.borrow_mut();
                        st.segments.insert(segment_no);
                        st.stale_segments.remove(&segment_no);
                        st.stats.segments_created += 1;
                    }
                    return self.open_cached(segment_no, pos).await;
                }
            }
        }
        Err(IoError::Overloaded {
            dir: self.dir.clone(),
            pos,
            reason: format!(
                "segment {} still not available after {MAX_SEGMENT_OPEN_ATTEMPTS} attempts",
                self.segment_path(segment_no).display()
            ),
        })
    }

    /// The open file of an existing log segment (for reads: never creates).
    async fn file_for_read(&self, segment_no: u64, pos: u64) -> Result<Rc<SegmentFile>, IoError> {
        let (cached, exists) = {
            let st = self.state.borrow();
            (
                st.files.get(&segment_no).cloned(),
                st.segments.contains(&segment_no),
            )
        };
        match (cached, exists) {
            (Some(file), _) => Ok(file),
            (None, true) => self.open_cached(segment_no, pos).await,
            (None, false) => Err(IoError::MissingSegment {
                path: self.segment_path(segment_no),
                pos,
            }),
        }
    }

    async fn open_cached(&self, segment_no: u64, pos: u64) -> Result<Rc<SegmentFile>, IoError> {
        let path = self.segment_path(segment_no);
        let Some(file) = SegmentFile::open_existing(&path, self.buffered).await? else {
            return Err(IoError::MissingSegment { path, pos });
        };
        self.note_direct_io(&file);
        let file = Rc::new(file);
        let mut st = self.state.borrow_mut();
        if st.files.len() >= MAX_OPEN_SEGMENT_FILES {
            // Evict the lowest-numbered clean segment: appends move forward, so low
            // segments are the coldest. glommio closes a dropped file asynchronously.
            let victim = st
                .files
                .keys()
                .copied()
                .find(|s| !st.dirty_segments.contains(s))
                .or_else(|| st.files.keys().next().copied());
            if let Some(victim) = victim {
                st.files.remove(&victim);
            }
        }
        st.files.insert(segment_no, file.clone());
        Ok(file)
    }

    fn maybe_start_prealloc(self: &Rc<Self>, segment_no: u64) {
        if !self.preallocate_ahead {
            return;
        }
        {
            let mut st = self.state.borrow_mut();
            let backing_off = st
                .prealloc_failed_at
                .is_some_and(|t| t.elapsed() < PREALLOC_RETRY_AFTER);
            if st.failure.is_some()
                || st.segments.contains(&segment_no)
                || st.prealloc_in_flight.is_some()
                || backing_off
            {
                return;
            }
            st.prealloc_in_flight = Some(segment_no);
        }
        let weak = Rc::downgrade(self);
        let dir = self.dir.clone();
        let final_path = self.segment_path(segment_no);
        let tmp_path = self.tmp_path(segment_no);
        let size = self.segment_size_bytes;
        let buffered = self.buffered;
        glommio::spawn_local(async move {
            let result = create_zeroed_segment(&dir, &final_path, &tmp_path, size, buffered).await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            {
                let mut st = inner.state.borrow_mut();
                st.prealloc_in_flight = None;
                match result {
                    Ok(_) => {
                        st.prealloc_failed_at = None;
                        st.segments.insert(segment_no);
                        st.stale_segments.remove(&segment_no);
                        st.stats.segments_created += 1;
                    }
                    Err(e) => {
                        st.prealloc_failed_at = Some(std::time::Instant::now());
                        tracing::warn!(
                            error = %e,
                            "background preallocation failed; the first write into the segment will retry it"
                        )
                    }
                }
            }
            inner.prealloc_done.notify_all();
        })
        .detach();
    }

    async fn truncate(self: &Rc<Self>, pos: u64) -> Result<(), IoError> {
        let _permit = self.lock_io(pos).await?;
        // Let a background preallocation finish so that its segment, if past `pos`, is
        // deleted below instead of appearing afterwards. Rounds cannot start another
        // one while we hold the IO lock, so one wait suffices.
        if self.state.borrow().prealloc_in_flight.is_some() {
            let epoch = self.prealloc_done.epoch();
            let _ = self.prealloc_done.wait_past(epoch).await;
        }
        let size = self.segment_size_bytes;
        let (mem_start, segment_exists) = {
            let st = self.state.borrow();
            self.check_ok(&st, pos)?;
            let end = st.written_end.ok_or_else(|| self.end_unknown(pos))?;
            if pos > end {
                return Err(self.invalid(pos, format!("truncate past the written end {end}")));
            }
            (st.mem_start, st.segments.contains(&(pos / size)))
        };
        let segment_no = pos / size;
        let segment_start = segment_no * size;
        let head_start = align_down(pos);
        let mut head = AlignedBuf::zeroed((pos - head_start) as usize);
        if pos > head_start {
            if head_start >= mem_start {
                let st = self.state.borrow();
                let at = (head_start - mem_start) as usize;
                let n = head.len();
                head.copy_from_slice(&st.mem[at..at + n]);
            } else if segment_exists {
                self.read_disk_into(head_start, &mut head).await?;
            }
        }

        let result = async {
            // A truncation at a segment start empties that segment: delete it too.
            let keep_segment = pos > segment_start && segment_exists;
            if keep_segment {
                let file = self.file_for_write(segment_no, pos).await?;
                let mut writes = 0;
                if pos > head_start {
                    file.write_all_at(head_start - segment_start, head.as_block_padded_slice())
                        .await?;
                    writes += 1;
                }
                let zero_from = align_up(pos);
                let segment_end = segment_start + size;
                if zero_from < segment_end {
                    writes += file
                        .write_zeros(zero_from - segment_start, segment_end - zero_from)
                        .await?;
                }
                let mut st = self.state.borrow_mut();
                st.stats.writes += writes;
                st.stats.write_bytes += segment_end - head_start;
                st.dirty_segments.insert(segment_no);
            }
            let first_removed = if keep_segment {
                segment_no + 1
            } else {
                segment_no
            };
            // Make everything kept durable before deleting what follows it.
            let to_sync: Vec<u64> = {
                let mut st = self.state.borrow_mut();
                let dirty = std::mem::take(&mut st.dirty_segments);
                dirty.into_iter().filter(|&s| s < first_removed).collect()
            };
            for s in to_sync {
                let file = self.file_for_write(s, pos).await?;
                file.sync().await?;
                self.state.borrow_mut().stats.syncs += 1;
            }
            let doomed: Vec<u64> = {
                let mut st = self.state.borrow_mut();
                let mut doomed: Vec<u64> = st.segments.range(first_removed..).copied().collect();
                doomed.extend(st.stale_segments.range(first_removed..).copied());
                for s in &doomed {
                    st.segments.remove(s);
                    st.stale_segments.remove(s);
                    st.files.remove(s);
                }
                doomed
            };
            for s in &doomed {
                let path = self.segment_path(*s);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(IoError::os("removing", path, *s * size, e)),
                }
            }
            if !doomed.is_empty() {
                sync_dir(&self.dir).await?;
            }
            Ok(())
        }
        .await;
        // Disk state between pos and the old end is unknown after a failure.
        result.map_err(|e| self.fail(e))?;

        let mut st = self.state.borrow_mut();
        st.written_end = Some(pos);
        st.mem = head;
        st.mem_start = head_start;
        st.unsubmitted_from = pos;
        Self::note_mutation(&mut st, pos);
        st.durable_end = pos;
        st.durable_seq = st.write_seq;
        Ok(())
    }

    async fn read(&self, pos: u64, len: usize) -> Result<Vec<u8>, IoError> {
        if len > MAX_READ_BYTES {
            return Err(self.invalid(
                pos,
                format!("read of {len} bytes exceeds MAX_READ_BYTES {MAX_READ_BYTES}"),
            ));
        }
        let mut out = vec![0u8; len];
        let disk_to = {
            let st = self.state.borrow();
            self.check_ok(&st, pos)?;
            let end = st.written_end.ok_or_else(|| self.end_unknown(pos))?;
            let read_end =
                pos.checked_add(len as u64)
                    .filter(|&e| e <= end)
                    .ok_or(IoError::ReadPastEnd {
                        dir: self.dir.clone(),
                        pos,
                        len: len as u64,
                        written_end: end,
                    })?;
            // Copy the in-memory part now: after an await it may have moved to disk.
            let mem_from = pos.max(st.mem_start);
            if mem_from < read_end {
                let src = (mem_from - st.mem_start) as usize;
                let dst = (mem_from - pos) as usize;
                let n = (read_end - mem_from) as usize;
                out[dst..dst + n].copy_from_slice(&st.mem[src..src + n]);
            }
            read_end.min(st.mem_start)
        };
        if pos < disk_to {
            let n = (disk_to - pos) as usize;
            self.read_disk_into(pos, &mut out[..n]).await?;
        }
        Ok(out)
    }

    /// Reads exactly `out.len()` bytes of existing segments from disk.
    async fn read_disk_into(&self, pos: u64, out: &mut [u8]) -> Result<(), IoError> {
        let mut done = 0usize;
        for (segment_no, offset, len) in self.split(pos, pos + out.len() as u64) {
            let file = self.file_for_read(segment_no, pos + done as u64).await?;
            file.read_exact_at(offset, &mut out[done..done + len as usize])
                .await?;
            done += len as usize;
        }
        Ok(())
    }

    async fn read_raw(&self, pos: u64, len: usize) -> Result<Vec<u8>, IoError> {
        if len > MAX_READ_BYTES {
            return Err(self.invalid(
                pos,
                format!("read of {len} bytes exceeds MAX_READ_BYTES {MAX_READ_BYTES}"),
            ));
        }
        let Some(read_end) = pos.checked_add(len as u64) else {
            return Err(self.invalid(pos, "position overflows".into()));
        };
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        for (segment_no, offset, piece_len) in self.split(pos, read_end) {
            let at = pos + done as u64;
            let live = self.state.borrow().segments.contains(&segment_no);
            let buf = &mut out[done..done + piece_len as usize];
            let got = if live {
                self.file_for_read(segment_no, at)
                    .await?
                    .read_at(offset, buf)
                    .await?
            } else {
                // Not a log segment (yet): e.g. a stale one past the end. Read it without
                // caching so it cannot be mistaken for a live file later.
                let path = self.segment_path(segment_no);
                let Some(file) = SegmentFile::open_existing(&path, self.buffered).await? else {
                    return Err(IoError::MissingSegment { path, pos: at });
                };
                let got = file.read_at(offset, buf).await;
                let closed = file.close().await;
                let got = got?;
                closed?;
                got
            };
            done += got;
            if got < piece_len as usize {
                break;
            }
        }
        out.truncate(done);
        Ok(out)
    }
}
