//! Records out of a WAL byte stream: [`WalStreamDecoder`] is fed bytes as they arrive
//! (the pageserver ingesting what safekeepers send), [`WalRecordReader`] pulls them from
//! a [`WalRead`] source (a `pg_wal` directory through [`PgWalDir`], a safekeeper's
//! segments, memory).
//!
//! [`RecordBoundaryTracker`] does all the checking (page headers, record headers, the
//! xl_prev chain, CRCs) and says where each record starts and ends; the decoder only
//! copies each completed record's bytes out of the stream without its page headers and
//! decodes them. One pass: every byte is CRC'd once and copied once into its record's
//! buffer. Memory is bounded by one incomplete record plus the chunk being fed: the
//! bytes of the current chunk are used in place, and only the tail that belongs to an
//! unfinished record is kept for the next chunk.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::Lsn;
use crate::format::{
    CompleteRecord, PageHeader, RecordBoundaryTracker, ScanStop, WalFormatError, WalRead,
    WalStreamParams, XLOG_BLCKSZ, segment_file_name,
};

use super::{DecodeError, DecodedRecord, decode_record_at};

/// Bytes a [`WalRecordReader`] asks its source for at a time: the size of a walsender
/// message, big enough that per-read costs vanish next to CRC work, small enough to
/// keep memory flat.
pub const READ_CHUNK_BYTES: usize = 128 * 1024;

/// Why reading records stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WalReadError {
    /// A record passed every framing check and its CRC but does not decode: corruption
    /// the CRC missed, or a writer that is not PG15.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("reading WAL at {lsn} failed: {source}")]
    Io { lsn: Lsn, source: io::Error },
    #[error("cannot read WAL from the given start: {0}")]
    InvalidStart(WalFormatError),
}

/// One complete, CRC-valid record as it is in the WAL, page headers removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Where it starts (ReadRecPtr).
    pub lsn: Lsn,
    /// Where the next record starts (EndRecPtr).
    pub end_lsn: Lsn,
    /// The record: header, fragment headers, payloads.
    pub bytes: Bytes,
}

impl RawRecord {
    /// Decodes it; the parts of the result share its bytes.
    pub fn decode(&self) -> Result<DecodedRecord, DecodeError> {
        decode_record_at(self.lsn, self.end_lsn, self.bytes.clone())
    }
}

/// Turns a WAL byte stream fed in arbitrary chunks into decoded records, in order.
///
/// Feed bytes with [`feed`](Self::feed), then take the records it completed with
/// [`next_record`](Self::next_record) until it returns `None` (records queue up until
/// taken: take them after each feed to keep memory bounded).
#[derive(Debug)]
pub struct WalStreamDecoder {
    tracker: RecordBoundaryTracker,
    /// Stream bytes from `kept_start` to the tracker's position that a record still
    /// being read may need (its beginning, page headers included).
    kept: Vec<u8>,
    kept_start: Lsn,
    /// Records completed by the last feed, found by the tracker; scratch reused.
    completed: Vec<CompleteRecord>,
    /// Completed records (page headers removed), not yet taken; an error if their
    /// bytes could not be found (a bug, reported when the record is taken).
    ready: VecDeque<Result<RawRecord, DecodeError>>,
}

impl WalStreamDecoder {
    /// A decoder whose first fed byte is at `start`: a record boundary, or a page start
    /// with `prev_record_start == None`, from which a record continued from an earlier
    /// page is skipped. See [`RecordBoundaryTracker::new`].
    pub fn new(
        start: Lsn,
        prev_record_start: Option<Lsn>,
        params: WalStreamParams,
    ) -> Result<Self, WalFormatError> {
        Ok(WalStreamDecoder {
            tracker: RecordBoundaryTracker::new(start, prev_record_start, params)?,
            kept: Vec::new(),
            kept_start: start,
            completed: Vec::new(),
            ready: VecDeque::new(),
        })
    }

    /// Consumes the next bytes of the stream. Records they complete become available to
    /// [`next_record`](Self::next_record). On error (bytes that are not valid WAL: the
    /// end of the written WAL, or corruption) the records before the bad bytes are still
    /// available, and the error is sticky, as the tracker's.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), WalFormatError> {
        let chunk_start = self.tracker.position();
        debug_assert_eq!(self.kept_start.0 + self.kept.len() as u64, chunk_start.0);
        let mut completed = std::mem::take(&mut self.completed);
        let result = self
            .tracker
            .feed_with(chunk, |record| completed.push(record));
        // On error the tracker stops at the bad bytes; nothing after them is kept.
        let consumed = usize::try_from(self.tracker.position().0 - chunk_start.0)
            .map_or(chunk.len(), |consumed| consumed.min(chunk.len()));
        let stream = StreamView {
            kept: &self.kept,
            kept_start: self.kept_start,
            chunk: &chunk[..consumed],
        };
        for record in completed.drain(..) {
            // The tracker has consumed every byte of a record it reports, so they are in
            // `kept` or `chunk`; if not, that is a bug here, reported with the record.
            let raw = match stream.record_bytes(record.start, record.header.tot_len) {
                Some(bytes) => Ok(RawRecord {
                    lsn: record.start,
                    end_lsn: record.end,
                    bytes,
                }),
                None => Err(DecodeError::new(
                    record.start,
                    "the record's bytes are missing from the stream decoder's buffer (a bug)",
                )),
            };
            self.ready.push_back(raw);
        }
        self.completed = completed;
        self.keep_unfinished(chunk_start, &chunk[..consumed]);
        result
    }

    /// The next completed record, decoded. A record that fails to decode is returned as
    /// an error and skipped; the ones after it are still returned.
    pub fn next_record(&mut self) -> Option<Result<DecodedRecord, DecodeError>> {
        Some(self.next_raw_record()?.and_then(|raw| raw.decode()))
    }

    /// The next completed record, not decoded: its bytes as Postgres wrote them (what
    /// a store of WAL records keeps). CRC-checked, like every record here.
    pub fn next_raw_record(&mut self) -> Option<Result<RawRecord, DecodeError>> {
        self.ready.pop_front()
    }

    /// Number of completed records not yet taken.
    pub fn ready_records(&self) -> usize {
        self.ready.len()
    }

    /// Bytes held for records not yet complete (their beginnings, page headers
    /// included): one record at most, so bounded by XLogRecordMaxSize.
    pub fn buffered_bytes(&self) -> usize {
        self.kept.len()
    }

    /// LSN of the next byte to feed.
    pub fn position(&self) -> Lsn {
        self.tracker.position()
    }

    /// End (EndRecPtr) of the last complete record fed; see
    /// [`RecordBoundaryTracker::complete_end`].
    pub fn complete_end(&self) -> Lsn {
        self.tracker.complete_end()
    }

    /// Start of the last complete record fed.
    pub fn last_record_start(&self) -> Option<Lsn> {
        self.tracker.last_record_start()
    }

    /// The error that stopped the stream, if one did.
    pub fn error(&self) -> Option<&WalFormatError> {
        self.tracker.error()
    }

    /// Keeps the bytes from the start of a record not yet complete to the position. Any
    /// such record starts at or after the end of the last complete one.
    fn keep_unfinished(&mut self, chunk_start: Lsn, consumed_chunk: &[u8]) {
        let position = self.tracker.position();
        // After an XLOG_SWITCH the complete end is the next segment, ahead of position.
        let keep_from = self
            .tracker
            .complete_end()
            .min(position)
            .max(self.kept_start);
        if keep_from >= chunk_start {
            let from = usize::try_from(keep_from.0 - chunk_start.0).unwrap_or(usize::MAX);
            self.kept.clear();
            self.kept
                .extend_from_slice(consumed_chunk.get(from..).unwrap_or_default());
        } else {
            // Only the unfinished tail moves; bytes appended to a long record that
            // spans many chunks are not moved again (amortised linear).
            let drop = usize::try_from(keep_from.0 - self.kept_start.0)
                .unwrap_or(usize::MAX)
                .min(self.kept.len());
            self.kept.drain(..drop);
            self.kept.extend_from_slice(consumed_chunk);
        }
        self.kept_start = keep_from;
        debug_assert_eq!(self.kept_start.0 + self.kept.len() as u64, position.0);
    }
}

/// The stream bytes available while a chunk is processed: the kept bytes, then the
/// chunk, contiguous in LSN.
struct StreamView<'a> {
    kept: &'a [u8],
    kept_start: Lsn,
    chunk: &'a [u8],
}

impl StreamView<'_> {
    /// The bytes from `lsn` on that lie in one of the two parts (as many as there are
    /// up to the end of that part); `None` outside the view.
    fn bytes_at(&self, lsn: Lsn) -> Option<&[u8]> {
        let offset = usize::try_from(lsn.checked_sub(self.kept_start)?).ok()?;
        if offset < self.kept.len() {
            self.kept.get(offset..)
        } else {
            self.chunk.get(offset - self.kept.len()..)
        }
    }

    /// The `tot_len` bytes of the record starting at `start`, without the page headers
    /// between them. Page header sizes come from the headers themselves, which the
    /// tracker has validated.
    fn record_bytes(&self, start: Lsn, tot_len: u32) -> Option<Bytes> {
        let tot_len = tot_len as usize;
        let mut out = Vec::with_capacity(tot_len);
        let mut pos = start;
        // Bounded: each round copies at least one byte (or returns None).
        while out.len() < tot_len {
            if pos.0.is_multiple_of(XLOG_BLCKSZ) {
                // The header may straddle the two parts: read its info byte by byte.
                let info_at = |offset| Some(*self.bytes_at(pos.plus(offset))?.first()?);
                let info = u16::from_le_bytes([info_at(2)?, info_at(3)?]);
                pos = pos.plus(PageHeader::size_for_info(info) as u64);
            }
            let in_page = (XLOG_BLCKSZ - pos.0 % XLOG_BLCKSZ) as usize;
            let available = self.bytes_at(pos)?;
            let n = (tot_len - out.len()).min(in_page).min(available.len());
            if n == 0 {
                return None;
            }
            out.extend_from_slice(&available[..n]);
            pos = pos.plus(n as u64);
        }
        Some(Bytes::from(out))
    }
}

/// Reads decoded records from a [`WalRead`] source, from a start LSN, in order.
///
/// [`next_record`](Self::next_record) returns `Ok(None)` when it cannot go on;
/// [`stop`](Self::stop) says why: the source had no more bytes (call again when it
/// has: a streaming source), the limit was reached, or the bytes are not valid WAL
/// (the usual end of a `pg_wal` directory, or corruption; final).
pub struct WalRecordReader<R> {
    source: R,
    decoder: WalStreamDecoder,
    segment_size_bytes: u64,
    buf: Vec<u8>,
    limit: Lsn,
    stop: Option<ScanStop>,
}

impl<R: WalRead> WalRecordReader<R> {
    /// A reader starting at `start`: a record boundary (with the previous record's start
    /// when known, checked against xl_prev), or any page start, e.g. a segment start,
    /// with `prev_record_start == None`.
    pub fn new(
        source: R,
        start: Lsn,
        prev_record_start: Option<Lsn>,
        params: WalStreamParams,
    ) -> Result<Self, WalReadError> {
        let decoder = WalStreamDecoder::new(start, prev_record_start, params)
            .map_err(WalReadError::InvalidStart)?;
        Ok(WalRecordReader {
            source,
            decoder,
            segment_size_bytes: params.segment_size_bytes,
            buf: vec![0u8; READ_CHUNK_BYTES],
            limit: Lsn::MAX,
            stop: None,
        })
    }

    /// Reads no bytes at or past `limit` (records ending after it are not returned).
    pub fn with_limit(mut self, limit: Lsn) -> Self {
        self.limit = limit;
        self
    }

    /// The next record, `Ok(None)` when reading stopped (see [`stop`](Self::stop)). A
    /// record that passes its CRC but fails to decode is an error; reading can go on
    /// after it.
    pub fn next_record(&mut self) -> Result<Option<DecodedRecord>, WalReadError> {
        match self.next_raw_record()? {
            Some(raw) => Ok(Some(raw.decode()?)),
            None => Ok(None),
        }
    }

    /// [`next_record`](Self::next_record) without decoding.
    pub fn next_raw_record(&mut self) -> Result<Option<RawRecord>, WalReadError> {
        // Bounded: every round returns or feeds at least one byte below the limit.
        loop {
            if let Some(record) = self.decoder.next_raw_record() {
                return Ok(Some(record?));
            }
            if let Some(error) = self.decoder.error() {
                self.stop = Some(ScanStop::Invalid(error.clone()));
                return Ok(None);
            }
            let position = self.decoder.position();
            if position >= self.limit {
                self.stop = Some(ScanStop::Limit);
                return Ok(None);
            }
            let segment_left =
                self.segment_size_bytes - position.segment_offset(self.segment_size_bytes);
            let want = (READ_CHUNK_BYTES as u64)
                .min(self.limit.0 - position.0)
                .min(segment_left) as usize;
            let got = self
                .source
                .read_wal(position, &mut self.buf[..want])
                .map_err(|source| WalReadError::Io {
                    lsn: position,
                    source,
                })?;
            if got == 0 {
                self.stop = Some(ScanStop::EndOfStorage);
                return Ok(None);
            }
            self.stop = None;
            // An error is remembered by the decoder and reported once the records
            // before it are returned.
            let _ = self.decoder.feed(&self.buf[..got.min(want)]);
        }
    }

    /// Why the last [`next_record`](Self::next_record) returned `Ok(None)`.
    pub fn stop(&self) -> Option<&ScanStop> {
        self.stop.as_ref()
    }

    /// End (EndRecPtr) of the last record read: where reading would resume.
    pub fn complete_end(&self) -> Lsn {
        self.decoder.complete_end()
    }

    /// Start of the last record read.
    pub fn last_record_start(&self) -> Option<Lsn> {
        self.decoder.last_record_start()
    }

    pub fn source(&self) -> &R {
        &self.source
    }

    pub fn into_source(self) -> R {
        self.source
    }
}

impl<R: WalRead> Iterator for WalRecordReader<R> {
    type Item = Result<DecodedRecord, WalReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// WAL segments of one timeline in a directory laid out as `pg_wal` (files named
/// TTTTTTTTXXXXXXXXYYYYYYYY). A missing segment reads as the end of WAL.
#[derive(Debug)]
pub struct PgWalDir {
    dir: PathBuf,
    timeline: u32,
    segment_size_bytes: u64,
    open: Option<(u64, File)>,
}

impl PgWalDir {
    pub fn new(dir: impl AsRef<Path>, timeline: u32, segment_size_bytes: u64) -> Self {
        PgWalDir {
            dir: dir.as_ref().to_path_buf(),
            timeline,
            segment_size_bytes,
            open: None,
        }
    }
}

impl WalRead for PgWalDir {
    fn read_wal(&mut self, lsn: Lsn, buf: &mut [u8]) -> io::Result<usize> {
        let segno = lsn.segment_number(self.segment_size_bytes);
        if self.open.as_ref().map(|(open, _)| *open) != Some(segno) {
            self.open = None;
            let name = segment_file_name(self.timeline, segno, self.segment_size_bytes);
            match File::open(self.dir.join(name)) {
                Ok(file) => self.open = Some((segno, file)),
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(error) => return Err(error),
            }
        }
        let Some((_, file)) = &self.open else {
            return Ok(0);
        };
        let offset = lsn.segment_offset(self.segment_size_bytes);
        let within_segment = self.segment_size_bytes - offset;
        let len = buf
            .len()
            .min(usize::try_from(within_segment).unwrap_or(usize::MAX));
        let mut filled = 0;
        // Bounded: each round fills at least one byte or stops.
        while filled < len {
            match file.read_at(&mut buf[filled..len], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(filled)
    }
}
