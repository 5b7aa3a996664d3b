//! Synthetic PostgreSQL 15 WAL: valid page headers, records that cross pages and
//! segments, a correct xl_prev chain and CRCs, deterministic for a seed.
//!
//! For the Paxos simulation, safekeeper tests and the WAL load generator, which need
//! WAL that every check of a real reader accepts without running Postgres. Records are
//! shaped like RM_LOGICALMSG records (rmid 21, info 0) whose body is one main-data
//! block (XLR_BLOCK_ID_DATA_SHORT/LONG + length) of pseudo-random bytes; the bytes are
//! not a well-formed xl_logical_message, so a decoder that interprets logical messages
//! must not be fed this WAL.

use std::mem;

use crate::{Lsn, SystemId};

use super::page::{
    LongPageHeader, PageHeader, SIZE_OF_XLOG_LONG_PHD, WalStreamParams, XLOG_PAGE_MAGIC,
    XLP_BKP_REMOVABLE, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
};
use super::record::{
    RM_LOGICALMSG_ID, RM_XLOG_ID, SIZE_OF_XLOG_RECORD, XLOG_RECORD_MAX_SIZE, XLOG_SWITCH,
    XLR_BLOCK_ID_DATA_LONG, XLR_BLOCK_ID_DATA_SHORT, XLogRecordHeader, record_crc,
};
use super::tracker::check_start;
use super::{WalFormatError, XLOG_BLCKSZ, max_align};

/// Timeline written into every page header.
pub const SYNTH_TIMELINE: u32 = 1;

/// Largest payload [`WalGenerator::append_record`] accepts: the record (header, 5-byte
/// main-data header, payload) must fit XLogRecordMaxSize.
pub const MAX_PAYLOAD_BYTES: usize = XLOG_RECORD_MAX_SIZE as usize - SIZE_OF_XLOG_RECORD - 5;

/// Writes WAL the way Postgres's CopyXLogRecordToWAL/AdvanceXLInsertBuffer (xlog.c) lay
/// it out, into an in-memory buffer the caller drains with
/// [`take_bytes`](Self::take_bytes).
#[derive(Clone, Debug)]
pub struct WalGenerator {
    segment_size_bytes: u64,
    system_id: SystemId,
    /// Next byte to write: the end (EndRecPtr) of the last record.
    pos: Lsn,
    last_record_start: Option<Lsn>,
    /// Produced bytes not yet taken; `buf[0]` is at `buf_start`.
    buf_start: Lsn,
    buf: Vec<u8>,
    /// Scratch space for the record being built, reused between records.
    record: Vec<u8>,
    rng: SplitMix64,
}

impl WalGenerator {
    /// A generator whose first record starts at `start` (a record boundary, e.g. a
    /// segment start; at a page start the page header is written first).
    /// `prev_record_start` becomes the first record's xl_prev (0 when `None`).
    pub fn new(
        start: Lsn,
        prev_record_start: Option<Lsn>,
        system_id: SystemId,
        segment_size_bytes: u64,
        seed: u64,
    ) -> Result<Self, WalFormatError> {
        WalStreamParams::new(segment_size_bytes, Some(system_id))?;
        check_start(start, prev_record_start, segment_size_bytes)?;
        Ok(WalGenerator {
            segment_size_bytes,
            system_id,
            pos: start,
            last_record_start: prev_record_start,
            buf_start: start,
            buf: Vec::new(),
            record: Vec::new(),
            rng: SplitMix64(seed),
        })
    }

    /// Parameters a reader of this WAL checks page headers against.
    pub fn stream_params(&self) -> WalStreamParams {
        WalStreamParams {
            segment_size_bytes: self.segment_size_bytes,
            system_id: Some(self.system_id),
        }
    }

    /// Appends a record carrying `payload_len` bytes of main data and returns its start
    /// and end (EndRecPtr). `payload_len` 0 gives a header-only record.
    ///
    /// Panics if `payload_len` exceeds [`MAX_PAYLOAD_BYTES`] (Postgres could not write
    /// such a record either).
    pub fn append_record(&mut self, payload_len: usize) -> (Lsn, Lsn) {
        assert!(
            payload_len <= MAX_PAYLOAD_BYTES,
            "payload of {payload_len} bytes exceeds XLogRecordMaxSize"
        );
        let mut record = mem::take(&mut self.record);
        record.clear();
        record.resize(SIZE_OF_XLOG_RECORD, 0);
        // The main-data block header, as XLogRecordAssemble writes it.
        if payload_len > 0 {
            match u8::try_from(payload_len) {
                Ok(short_len) => record.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, short_len]),
                Err(_) => {
                    record.push(XLR_BLOCK_ID_DATA_LONG);
                    record.extend_from_slice(&(payload_len as u32).to_le_bytes());
                }
            }
        }
        let payload_start = record.len();
        record.resize(payload_start + payload_len, 0);
        self.rng.fill(&mut record[payload_start..]);
        let range = self.write_record(&mut record, RM_LOGICALMSG_ID, 0);
        self.record = record;
        range
    }

    /// Appends an XLOG_SWITCH record and zeroes the rest of its segment, as
    /// XLogInsertRecord does (page headers there are zeroed too). Returns its start and
    /// end (the next segment's start), or `None` when already at a segment start, where
    /// Postgres inserts nothing.
    pub fn append_switch(&mut self) -> Option<(Lsn, Lsn)> {
        if self.pos.segment_offset(self.segment_size_bytes) == 0 {
            return None;
        }
        let mut record = mem::take(&mut self.record);
        record.clear();
        record.resize(SIZE_OF_XLOG_RECORD, 0);
        let (start, _) = self.write_record(&mut record, RM_XLOG_ID, XLOG_SWITCH);
        self.record = record;
        let end = Lsn(self.pos.0.div_ceil(self.segment_size_bytes) * self.segment_size_bytes);
        self.buf
            .resize(self.buf.len() + (end.0 - self.pos.0) as usize, 0);
        self.pos = end;
        Some((start, end))
    }

    /// Where the next record starts: the end of the last one.
    pub fn end(&self) -> Lsn {
        self.pos
    }

    pub fn last_record_start(&self) -> Option<Lsn> {
        self.last_record_start
    }

    /// LSN of the first byte not yet taken.
    pub fn buffered_start(&self) -> Lsn {
        self.buf_start
    }

    /// The produced bytes not yet taken, from [`buffered_start`](Self::buffered_start)
    /// to [`end`](Self::end).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The produced bytes from `lsn` to [`end`](Self::end), if `lsn` is in the buffer.
    pub fn bytes_from(&self, lsn: Lsn) -> Option<&[u8]> {
        let offset = lsn.checked_sub(self.buf_start)?;
        self.buf.get(usize::try_from(offset).ok()?..)
    }

    /// Hands over the produced bytes and the LSN of the first; the buffer then starts
    /// empty at [`end`](Self::end).
    pub fn take_bytes(&mut self) -> (Lsn, Vec<u8>) {
        let start = mem::replace(&mut self.buf_start, self.pos);
        (start, mem::take(&mut self.buf))
    }

    /// Fills in the header of `record` (whose body follows its first 24 bytes), then
    /// writes it at the current position across as many pages as it needs, padded to
    /// MAXALIGN with zeros.
    fn write_record(&mut self, record: &mut [u8], rmid: u8, info: u8) -> (Lsn, Lsn) {
        let header = XLogRecordHeader {
            tot_len: record.len() as u32,
            xid: 0,
            prev: self.last_record_start.unwrap_or(Lsn::INVALID),
            info,
            rmid,
            crc: 0,
        };
        record[..SIZE_OF_XLOG_RECORD].copy_from_slice(&header.encode());
        let crc = record_crc(record);
        record[20..SIZE_OF_XLOG_RECORD].copy_from_slice(&crc.to_le_bytes());

        if self.pos.0.is_multiple_of(XLOG_BLCKSZ) {
            self.write_page_header(0);
        }
        let start = self.pos;
        let mut rest: &[u8] = record;
        loop {
            let page_left = (XLOG_BLCKSZ - self.pos.0 % XLOG_BLCKSZ) as usize;
            let n = rest.len().min(page_left);
            self.buf.extend_from_slice(&rest[..n]);
            self.pos = Lsn(self.pos.0 + n as u64);
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
            // xlp_rem_len counts the record bytes still to come, padding excluded.
            self.write_page_header(rest.len() as u32);
        }
        let end = Lsn(max_align(self.pos.0));
        self.buf
            .resize(self.buf.len() + (end.0 - self.pos.0) as usize, 0);
        self.pos = end;
        self.last_record_start = Some(start);
        (start, end)
    }

    /// Writes the header of the page starting at the current position. Flags as
    /// AdvanceXLInsertBuffer sets them with no backup running, plus the continuation.
    fn write_page_header(&mut self, rem_len: u32) {
        debug_assert_eq!(self.pos.0 % XLOG_BLCKSZ, 0);
        let segment_start = self.pos.segment_offset(self.segment_size_bytes) == 0;
        let mut info = XLP_BKP_REMOVABLE;
        if rem_len > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        if segment_start {
            info |= XLP_LONG_HEADER;
        }
        let header = PageHeader {
            magic: XLOG_PAGE_MAGIC,
            info,
            timeline: SYNTH_TIMELINE,
            page_addr: self.pos,
            rem_len,
            long: segment_start.then_some(LongPageHeader {
                system_id: self.system_id,
                segment_size_bytes: self.segment_size_bytes as u32,
                xlog_blcksz: XLOG_BLCKSZ as u32,
            }),
        };
        let mut bytes = [0u8; SIZE_OF_XLOG_LONG_PHD];
        header.encode(&mut bytes);
        self.buf.extend_from_slice(&bytes[..header.size()]);
        self.pos = Lsn(self.pos.0 + header.size() as u64);
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and enough for filler bytes.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut words = out.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let tail_len = tail.len();
        tail.copy_from_slice(&last[..tail_len]);
    }
}
