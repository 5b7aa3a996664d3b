//! [`RecordBoundaryTracker`]: finds record boundaries in a WAL byte stream fed in
//! arbitrary chunks.
//!
//! The safekeeper acknowledges a flush only at the end of a complete record, and at
//! restart must find where the valid WAL it stored ends. Both need the same thing: walk
//! page headers and record headers, check what Postgres's reader checks, and CRC each
//! record, without ever holding a whole record. The tracker is a state machine over the
//! byte stream: it keeps at most one page header (40 bytes) and one record header
//! (24 bytes) and folds record bodies into a running CRC, so it never allocates and
//! touches each byte once. Chunks may end anywhere: inside a page header, a record
//! header or a body.

use crate::Lsn;

use super::page::{
    PageHeader, PageValidator, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD, WalStreamParams,
};
use super::record::{RecordCrc, SIZE_OF_XLOG_RECORD, XLogRecordHeader, check_total_length};
use super::{WalFormatError, XLOG_BLCKSZ, max_align};

/// Highest LSN a tracker may start at. Real WAL positions are far below it; the bound
/// keeps position arithmetic from overflowing whatever a caller passes.
const MAX_START_LSN: Lsn = Lsn(u64::MAX / 2);

/// A complete, CRC-valid record the tracker has just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompleteRecord {
    /// LSN of the record's first header byte (ReadRecPtr).
    pub start: Lsn,
    /// Where the next record begins (EndRecPtr): the MAXALIGNed end of the record, or
    /// the end of its segment for an XLOG_SWITCH.
    pub end: Lsn,
    pub header: XLogRecordHeader,
}

/// What the next bytes of the stream are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Started at a page boundary without knowing whether a record begins there: the
    /// page header's XLP_FIRST_IS_CONTRECORD/xlp_rem_len say how much continuation data
    /// to skip (XLogFindNextRecord). Only ever entered at a page start.
    FindFirstRecord,
    /// A record begins at the position (after the page header if at a page start).
    RecordStart,
    /// Inside a record header; `record_header_len` bytes of it are read.
    RecordHeader,
    /// Inside a record body; `body_remaining` bytes are left.
    RecordBody,
    /// Bytes up to `until` belong to no record: alignment padding, the rest of a
    /// segment after XLOG_SWITCH, or continuation data skipped while finding the first
    /// record. They are not interpreted, page headers included (Postgres zeroes the
    /// page headers after a switch).
    Skip { until: Lsn, then: AfterSkip },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterSkip {
    RecordStart,
    FindFirstRecord,
}

/// Streaming finder of record boundaries in PostgreSQL 15 WAL. See the module docs.
///
/// Errors are sticky: after `feed` fails, every later call returns the same error and
/// consumes nothing. To go on past a torn tail, start a new tracker at
/// [`complete_end`](Self::complete_end) with
/// [`last_record_start`](Self::last_record_start) as the previous record.
#[derive(Clone, Debug)]
pub struct RecordBoundaryTracker {
    pages: PageValidator,
    segment_size_bytes: u64,
    /// LSN of the next byte to be fed.
    pos: Lsn,
    phase: Phase,

    /// Bytes of the page header being read; `Some(n)` while one is being read.
    page_header: [u8; SIZE_OF_XLOG_LONG_PHD],
    page_header_len: Option<usize>,

    /// The record being read.
    record_start: Lsn,
    record_header: [u8; SIZE_OF_XLOG_RECORD],
    record_header_len: usize,
    /// xl_tot_len, valid once 4 header bytes are read.
    record_tot_len: u32,
    body_remaining: u32,
    crc: RecordCrc,

    complete_end: Lsn,
    /// Start of the last complete record: the expected xl_prev of the next one. `None`
    /// until one is read when started without a known previous record, in which case
    /// the first record's xl_prev is only checked to be before it (random access).
    last_record_start: Option<Lsn>,
    records_completed: u64,
    failed: Option<WalFormatError>,
}

impl RecordBoundaryTracker {
    /// Creates a tracker whose first fed byte is at `start`.
    ///
    /// `start` is either a record boundary (an EndRecPtr: possibly a page start, never
    /// inside a page header), or any page start with `prev_record_start == None`, where
    /// a record continued from the previous page is skipped as Postgres's
    /// XLogFindNextRecord does. `prev_record_start` is the start of the record that ends
    /// at `start`, when known; it is checked against the next record's xl_prev.
    pub fn new(
        start: Lsn,
        prev_record_start: Option<Lsn>,
        params: WalStreamParams,
    ) -> Result<Self, WalFormatError> {
        let pages = PageValidator::new(params)?;
        let phase = initial_phase(start, prev_record_start, params.segment_size_bytes)?;
        Ok(RecordBoundaryTracker {
            pages,
            segment_size_bytes: params.segment_size_bytes,
            pos: start,
            phase,
            page_header: [0; SIZE_OF_XLOG_LONG_PHD],
            page_header_len: None,
            record_start: start,
            record_header: [0; SIZE_OF_XLOG_RECORD],
            record_header_len: 0,
            record_tot_len: 0,
            body_remaining: 0,
            crc: RecordCrc::new(),
            complete_end: start,
            last_record_start: prev_record_start,
            records_completed: 0,
            failed: None,
        })
    }

    /// Consumes the next bytes of the stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), WalFormatError> {
        self.feed_with(chunk, |_| {})
    }

    /// Consumes the next bytes of the stream and calls `on_record` for each record
    /// completed by them, in order. On error, the records before the error have been
    /// reported and nothing after it is consumed.
    pub fn feed_with<F: FnMut(CompleteRecord)>(
        &mut self,
        mut chunk: &[u8],
        mut on_record: F,
    ) -> Result<(), WalFormatError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        // Every step either consumes bytes or changes phase without consuming, and no
        // phase change can repeat without consuming, so this loop is bounded by the
        // chunk length.
        while !chunk.is_empty() {
            match self.step(chunk, &mut on_record) {
                Ok(consumed) => chunk = &chunk[consumed..],
                Err(err) => {
                    self.failed = Some(err.clone());
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Where the last complete valid record ends (its EndRecPtr); the start LSN until
    /// a record completes. After an XLOG_SWITCH this is the end of the segment, which
    /// can be ahead of [`position`](Self::position) until the padding has been fed.
    pub fn complete_end(&self) -> Lsn {
        self.complete_end
    }

    /// Start of the last complete record (or the previous record given at creation).
    pub fn last_record_start(&self) -> Option<Lsn> {
        self.last_record_start
    }

    /// LSN of the next byte to be fed: the start LSN plus all bytes consumed.
    pub fn position(&self) -> Lsn {
        self.pos
    }

    /// Number of complete records read.
    pub fn records_completed(&self) -> u64 {
        self.records_completed
    }

    /// The error that stopped the tracker, if one did.
    pub fn error(&self) -> Option<&WalFormatError> {
        self.failed.as_ref()
    }

    /// Consumes a prefix of `chunk` (possibly empty, when only the phase changes).
    fn step<F: FnMut(CompleteRecord)>(
        &mut self,
        chunk: &[u8],
        on_record: &mut F,
    ) -> Result<usize, WalFormatError> {
        if self.page_header_len.is_some() {
            return self.step_page_header(chunk);
        }
        let page_offset = self.pos.0 % XLOG_BLCKSZ;
        match self.phase {
            Phase::Skip { until, then } => {
                let n = len_within(until.0 - self.pos.0, chunk.len());
                self.advance(n);
                if self.pos == until {
                    self.phase = match then {
                        AfterSkip::RecordStart => {
                            // Continuation skipped while finding the first record ends
                            // at a boundary; after a record this is a no-op.
                            self.complete_end = self.complete_end.max(self.pos);
                            Phase::RecordStart
                        }
                        AfterSkip::FindFirstRecord => Phase::FindFirstRecord,
                    };
                }
                Ok(n)
            }
            // Everything else at a page start needs the page header first.
            _ if page_offset == 0 => {
                self.page_header_len = Some(0);
                Ok(0)
            }
            Phase::RecordStart | Phase::FindFirstRecord => {
                debug_assert_eq!(
                    self.phase,
                    Phase::RecordStart,
                    "FindFirstRecord only at page starts"
                );
                self.record_start = self.pos;
                self.record_header_len = 0;
                self.phase = Phase::RecordHeader;
                Ok(0)
            }
            Phase::RecordHeader => {
                let have = self.record_header_len;
                let n = len_within(XLOG_BLCKSZ - page_offset, chunk.len())
                    .min(SIZE_OF_XLOG_RECORD - have);
                self.record_header[have..have + n].copy_from_slice(&chunk[..n]);
                self.record_header_len += n;
                self.advance(n);
                // xl_tot_len is on the record's first page (records start MAXALIGNed, so
                // at least 8 bytes of the header precede any page break): check it
                // before trusting it to find the next page (as XLogDecodeNextRecord).
                if have < 4 && self.record_header_len >= 4 {
                    let tot_len = u32::from_le_bytes([
                        self.record_header[0],
                        self.record_header[1],
                        self.record_header[2],
                        self.record_header[3],
                    ]);
                    check_total_length(self.record_start, tot_len)?;
                    self.record_tot_len = tot_len;
                }
                if self.record_header_len == SIZE_OF_XLOG_RECORD {
                    let header = XLogRecordHeader::decode(&self.record_header);
                    header.validate(self.record_start, self.last_record_start)?;
                    self.crc = RecordCrc::new();
                    self.body_remaining = header.tot_len - SIZE_OF_XLOG_RECORD as u32;
                    self.phase = Phase::RecordBody;
                    if self.body_remaining == 0 {
                        self.finish_record(on_record)?;
                    }
                }
                Ok(n)
            }
            Phase::RecordBody => {
                let in_page = (XLOG_BLCKSZ - page_offset).min(u64::from(self.body_remaining));
                let n = len_within(in_page, chunk.len());
                self.crc.update(&chunk[..n]);
                // n <= body_remaining, a u32.
                self.body_remaining -= n as u32;
                self.advance(n);
                if self.body_remaining == 0 {
                    self.finish_record(on_record)?;
                }
                Ok(n)
            }
        }
    }

    /// Reads (part of) a page header, and acts on it once complete.
    fn step_page_header(&mut self, chunk: &[u8]) -> Result<usize, WalFormatError> {
        let have = self.page_header_len.unwrap_or(0);
        // The short header first; its info bits say whether 16 more bytes follow.
        let wanted = if have < SIZE_OF_XLOG_SHORT_PHD {
            SIZE_OF_XLOG_SHORT_PHD
        } else {
            PageHeader::size_for_info(u16::from_le_bytes([
                self.page_header[2],
                self.page_header[3],
            ]))
        };
        let n = (wanted - have).min(chunk.len());
        self.page_header[have..have + n].copy_from_slice(&chunk[..n]);
        self.advance(n);
        let have = have + n;
        let complete = have >= SIZE_OF_XLOG_SHORT_PHD
            && have
                == PageHeader::size_for_info(u16::from_le_bytes([
                    self.page_header[2],
                    self.page_header[3],
                ]));
        if !complete {
            self.page_header_len = Some(have);
            return Ok(n);
        }
        self.page_header_len = None;
        let page = Lsn(self.pos.0 - have as u64);
        let header = PageHeader::decode(&self.page_header[..have])
            .ok_or(WalFormatError::TruncatedPageHeader { page })?;
        self.pages.validate(page, &header)?;
        self.after_page_header(page, &header)?;
        Ok(n)
    }

    /// What a valid page header means for the record being read. Mirrors the page
    /// handling of XLogDecodeNextRecord and XLogFindNextRecord (xlogreader.c).
    fn after_page_header(&mut self, page: Lsn, header: &PageHeader) -> Result<(), WalFormatError> {
        match self.phase {
            Phase::FindFirstRecord => {
                if header.is_contrecord() {
                    // Record starts are MAXALIGNed, so the continuation occupies
                    // MAXALIGN(xlp_rem_len) bytes; if that fills the page, the next
                    // page's header tells how much is left.
                    let continuation = max_align(u64::from(header.rem_len));
                    let page_space = XLOG_BLCKSZ - header.size() as u64;
                    self.phase = if continuation >= page_space {
                        Phase::Skip {
                            until: Lsn(page.0 + XLOG_BLCKSZ),
                            then: AfterSkip::FindFirstRecord,
                        }
                    } else {
                        Phase::Skip {
                            until: Lsn(self.pos.0 + continuation),
                            then: AfterSkip::RecordStart,
                        }
                    };
                } else {
                    // Whatever preceded this page ended at or before its start.
                    self.complete_end = self.complete_end.max(page);
                    self.phase = Phase::RecordStart;
                }
            }
            Phase::RecordStart => {
                if header.is_contrecord() {
                    return Err(WalFormatError::UnexpectedContrecord {
                        record: self.pos,
                        page,
                    });
                }
            }
            Phase::RecordHeader | Phase::RecordBody => {
                if header.is_overwrite_contrecord() {
                    // The record being read was cut short when WAL ended at a crash, and
                    // recovery wrote new WAL over the place of its continuation. Postgres
                    // drops the partial record and reads a new one from this page.
                    self.phase = Phase::RecordStart;
                    if header.is_contrecord() {
                        return Err(WalFormatError::UnexpectedContrecord {
                            record: self.pos,
                            page,
                        });
                    }
                    return Ok(());
                }
                if !header.is_contrecord() {
                    return Err(WalFormatError::MissingContrecord {
                        record: self.record_start,
                        page,
                    });
                }
                let got = if self.phase == Phase::RecordHeader {
                    self.record_header_len as u32
                } else {
                    self.record_tot_len - self.body_remaining
                };
                let expected = self.record_tot_len - got;
                if header.rem_len == 0 || header.rem_len != expected {
                    return Err(WalFormatError::ContrecordLength {
                        record: self.record_start,
                        page,
                        found: header.rem_len,
                        expected,
                    });
                }
            }
            // Skipped bytes are never interpreted, so no header is read while skipping.
            Phase::Skip { .. } => {}
        }
        Ok(())
    }

    /// The last body byte was consumed: check the CRC and report the record.
    /// Mirrors ValidXLogRecord and the NextRecPtr computation of XLogDecodeNextRecord.
    fn finish_record<F: FnMut(CompleteRecord)>(
        &mut self,
        on_record: &mut F,
    ) -> Result<(), WalFormatError> {
        let header = XLogRecordHeader::decode(&self.record_header);
        let computed = self.crc.finish(&self.record_header);
        if computed != header.crc {
            return Err(WalFormatError::RecordCrc {
                record: self.record_start,
                stored: header.crc,
                computed,
            });
        }
        let mut end = max_align(self.pos.0);
        if header.is_xlog_switch() {
            // "Pretend it extends to end of segment."
            end = end.div_ceil(self.segment_size_bytes) * self.segment_size_bytes;
        }
        let end = Lsn(end);
        self.complete_end = end;
        self.last_record_start = Some(self.record_start);
        self.records_completed += 1;
        self.phase = Phase::Skip {
            until: end,
            then: AfterSkip::RecordStart,
        };
        on_record(CompleteRecord {
            start: self.record_start,
            end,
            header,
        });
        Ok(())
    }

    fn advance(&mut self, bytes: usize) {
        self.pos = Lsn(self.pos.0 + bytes as u64);
    }
}

/// Where reading starts.
fn initial_phase(
    start: Lsn,
    prev_record_start: Option<Lsn>,
    segment_size_bytes: u64,
) -> Result<Phase, WalFormatError> {
    check_start(start, prev_record_start, segment_size_bytes)?;
    Ok(
        if start.0.is_multiple_of(XLOG_BLCKSZ) && prev_record_start.is_none() {
            Phase::FindFirstRecord
        } else {
            Phase::RecordStart
        },
    )
}

/// Checks that WAL can be read (or written) from `start`: MAXALIGNed, not inside a
/// page header (the "invalid record offset" check of XLogDecodeNextRecord), and after
/// the previous record.
pub(super) fn check_start(
    start: Lsn,
    prev_record_start: Option<Lsn>,
    segment_size_bytes: u64,
) -> Result<(), WalFormatError> {
    let invalid = |reason| Err(WalFormatError::InvalidStart { lsn: start, reason });
    if start > MAX_START_LSN {
        return invalid("beyond any reachable WAL position");
    }
    if !start.0.is_multiple_of(super::MAXIMUM_ALIGNOF) {
        return invalid("records start MAXALIGNed (at multiples of 8)");
    }
    if matches!(prev_record_start, Some(prev) if prev >= start) {
        return invalid("the previous record must start before it");
    }
    let page_offset = start.0 % XLOG_BLCKSZ;
    let header_size = if start.0 % segment_size_bytes < XLOG_BLCKSZ {
        SIZE_OF_XLOG_LONG_PHD
    } else {
        SIZE_OF_XLOG_SHORT_PHD
    };
    if page_offset != 0 && page_offset < header_size as u64 {
        return invalid("it is inside a page header");
    }
    Ok(())
}

/// `min(limit, len)` as a slice length.
fn len_within(limit: u64, len: usize) -> usize {
    if limit < len as u64 {
        limit as usize
    } else {
        len
    }
}
