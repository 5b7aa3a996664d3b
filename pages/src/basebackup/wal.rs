//! The basebackup's `pg_wal`: one crafted XLOG_CHECKPOINT_SHUTDOWN record at the backup
//! LSN in an otherwise empty segment, which is all a cleanly shut down PostgreSQL 15
//! reads at startup (ReadCheckpointRecord: the segment's first page header, then the
//! record's page(s)).
//!
//! Where the record goes: at the backup LSN rounded up to a MAXALIGN boundary, or just
//! after the page header when that lands on a page start (or inside a header), as
//! CreateCheckPoint places a shutdown checkpoint. A shutdown checkpoint's `redo` is its
//! own LSN. Every page of the backup has an LSN at or below the backup LSN, so at or
//! below the record: nothing the record claims is missing.
//!
//! The record is written as XLogInsert would: it crosses a page boundary with a
//! continuation header (XLP_FIRST_IS_CONTRECORD, `xlp_rem_len`), and when it crosses a
//! segment boundary the next segment holds its end (two segment files, the only case
//! with more than one). Pages before the record stay zero: a reader positioned on the
//! checkpoint never reads them, and Postgres writes the rest of the segment as it goes.
//! The record's own page says that the bytes before the record continue an earlier
//! record (XLP_FIRST_IS_CONTRECORD with `xlp_rem_len` up to the record), so a reader
//! that starts at that page, as pg_waldump and stream decoders do, skips straight to
//! the checkpoint; Postgres positioned on the record itself ignores it.

use std::collections::BTreeMap;

use tarn_wal::Lsn;
use tarn_wal::SystemId;
use tarn_wal::format::{LongPageHeader, PageHeader};
use tarn_wal::format::{
    RM_XLOG_ID, RecordCrc, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_RECORD, SIZE_OF_XLOG_SHORT_PHD,
    XLOG_BLCKSZ, XLOG_PAGE_MAGIC, XLP_BKP_REMOVABLE, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
    XLR_BLOCK_ID_DATA_SHORT, XLogRecordHeader, max_align, segment_file_name,
};

use crate::ingest::{CheckpointState, SIZE_OF_CHECKPOINT};

/// XLOG_CHECKPOINT_SHUTDOWN (pg_control.h): the XLOG rmgr's info for a shutdown
/// checkpoint.
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
/// XLOG_BLCKSZ as a `usize`.
const PAGE_BYTES: usize = XLOG_BLCKSZ as usize;

/// The size of the page header of the page holding `lsn`.
fn page_header_bytes(lsn: u64, segment_size_bytes: u64) -> u64 {
    if lsn % segment_size_bytes < XLOG_BLCKSZ {
        SIZE_OF_XLOG_LONG_PHD as u64
    } else {
        SIZE_OF_XLOG_SHORT_PHD as u64
    }
}

/// Where a record inserted at `lsn` starts: MAXALIGNed, and past the page header.
pub fn checkpoint_record_lsn(lsn: Lsn, segment_size_bytes: u64) -> Lsn {
    let at = max_align(lsn.0);
    let in_page = at % XLOG_BLCKSZ;
    let header = page_header_bytes(at, segment_size_bytes);
    if in_page < header {
        Lsn(at - in_page + header)
    } else {
        Lsn(at)
    }
}

/// The CheckPoint a shutdown checkpoint at `record_lsn` writes, from the counters the
/// store tracked: `redo` is the record itself, the previous timeline is this one, and
/// there is no oldest active transaction (CreateCheckPoint leaves it invalid when
/// shutting down). Padding is zero, as Postgres's MemSet leaves it.
pub fn shutdown_checkpoint(
    state: &CheckpointState,
    record_lsn: Lsn,
    time: i64,
) -> [u8; SIZE_OF_CHECKPOINT] {
    use crate::ingest::checkpoint_offsets::*;
    let mut out = [0u8; SIZE_OF_CHECKPOINT];
    let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
    put(REDO, &record_lsn.0.to_le_bytes());
    put(THIS_TIMELINE, &state.this_timeline().to_le_bytes());
    put(PREV_TIMELINE, &state.this_timeline().to_le_bytes());
    put(FULL_PAGE_WRITES, &[u8::from(state.full_page_writes())]);
    put(NEXT_XID, &state.next_full_xid().to_le_bytes());
    put(NEXT_OID, &state.next_oid().to_le_bytes());
    put(NEXT_MULTI, &state.next_multi().to_le_bytes());
    put(NEXT_MULTI_OFFSET, &state.next_multi_offset().to_le_bytes());
    put(OLDEST_XID, &state.oldest_xid().to_le_bytes());
    put(OLDEST_XID_DB, &state.oldest_xid_db().to_le_bytes());
    put(OLDEST_MULTI, &state.oldest_multi().to_le_bytes());
    put(OLDEST_MULTI_DB, &state.oldest_multi_db().to_le_bytes());
    put(TIME, &time.to_le_bytes());
    put(
        OLDEST_COMMIT_TS_XID,
        &state.oldest_commit_ts_xid().to_le_bytes(),
    );
    put(
        NEWEST_COMMIT_TS_XID,
        &state.newest_commit_ts_xid().to_le_bytes(),
    );
    put(OLDEST_ACTIVE_XID, &0u32.to_le_bytes());
    out
}

/// The XLOG_CHECKPOINT_SHUTDOWN record carrying `checkpoint`, with `prev` as xl_prev:
/// header, a short main-data header and the CheckPoint, 114 bytes, CRC-32C over the
/// body then the header as Postgres computes it.
pub fn checkpoint_record(checkpoint: &[u8; SIZE_OF_CHECKPOINT], prev: Lsn) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + SIZE_OF_CHECKPOINT);
    body.push(XLR_BLOCK_ID_DATA_SHORT);
    body.push(SIZE_OF_CHECKPOINT as u8);
    body.extend_from_slice(checkpoint);
    let mut header = XLogRecordHeader {
        tot_len: (SIZE_OF_XLOG_RECORD + body.len()) as u32,
        xid: 0,
        prev,
        info: XLOG_CHECKPOINT_SHUTDOWN,
        rmid: RM_XLOG_ID,
        crc: 0,
    };
    let mut crc = RecordCrc::new();
    crc.update(&body);
    header.crc = crc.finish(&header.encode());
    let mut record = header.encode().to_vec();
    record.extend_from_slice(&body);
    record
}

/// One segment file of the crafted `pg_wal`: all zeros but for the pages it lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalSegment {
    pub segno: u64,
    pub file_name: String,
    pub size_bytes: u64,
    /// Non-zero pages by their offset in the segment.
    pages: BTreeMap<u64, Box<[u8; PAGE_BYTES]>>,
}

impl WalSegment {
    /// The non-zero pages, in order: `(offset in the segment, page)`.
    pub fn pages(&self) -> impl Iterator<Item = (u64, &[u8; PAGE_BYTES])> {
        self.pages.iter().map(|(offset, page)| (*offset, &**page))
    }

    /// The whole file (for tests and small segments).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size_bytes as usize];
        for (offset, page) in self.pages() {
            out[offset as usize..offset as usize + PAGE_BYTES].copy_from_slice(page);
        }
        out
    }
}

/// The crafted `pg_wal` contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CraftedWal {
    /// Where the checkpoint record starts (`checkPoint` in pg_control).
    pub record_lsn: Lsn,
    /// Where it ends, MAXALIGNed (EndRecPtr: Postgres writes its next record here).
    pub end_lsn: Lsn,
    pub segments: Vec<WalSegment>,
}

/// What every page header of the crafted WAL shares.
#[derive(Clone, Copy, Debug)]
pub struct WalStream {
    pub timeline: u32,
    pub system_id: u64,
    pub segment_size_bytes: u64,
}

/// Lays `record` out at `record_lsn` (a record start, see [`checkpoint_record_lsn`])
/// in segments of `stream`.
pub fn craft_wal(record: &[u8], record_lsn: Lsn, stream: WalStream) -> CraftedWal {
    let segment_size = stream.segment_size_bytes;
    let mut segments: BTreeMap<u64, WalSegment> = BTreeMap::new();
    let mut at = record_lsn.0;
    let mut rest = record;
    let mut continued = false;
    loop {
        let segno = at / segment_size;
        let page_offset = at % segment_size - at % XLOG_BLCKSZ;
        let segment = segments.entry(segno).or_insert_with(|| WalSegment {
            segno,
            file_name: segment_file_name(stream.timeline, segno, segment_size),
            size_bytes: segment_size,
            pages: BTreeMap::new(),
        });
        let in_page = (at % XLOG_BLCKSZ) as usize;
        let rem_len = if continued {
            rest.len() as u32
        } else {
            // The bytes before the record on its page: a reader starting at the page
            // (pg_waldump, a decoder following a stream) skips them as the end of an
            // earlier record instead of stumbling on zeros.
            (in_page as u64).saturating_sub(page_header_bytes(at, segment_size)) as u32
        };
        let page = segment
            .pages
            .entry(page_offset)
            .or_insert_with(|| page_with_header(stream, segno, page_offset, rem_len));
        let n = rest.len().min(PAGE_BYTES - in_page);
        page[in_page..in_page + n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        at += n as u64;
        if rest.is_empty() {
            break;
        }
        // `at` is the next page's start: its header comes before the rest.
        continued = true;
        at += page_header_bytes(at, segment_size);
    }
    // Every segment starts with a long header, which readers check first.
    for segment in segments.values_mut() {
        segment
            .pages
            .entry(0)
            .or_insert_with(|| page_with_header(stream, segment.segno, 0, 0));
    }
    CraftedWal {
        record_lsn,
        end_lsn: Lsn(max_align(at)),
        segments: segments.into_values().collect(),
    }
}

/// A zero page with the header AdvanceXLInsertBuffer would give it; `rem_len > 0`
/// marks a page that starts with the rest of a record.
fn page_with_header(
    stream: WalStream,
    segno: u64,
    page_offset: u64,
    rem_len: u32,
) -> Box<[u8; PAGE_BYTES]> {
    let mut info = XLP_BKP_REMOVABLE;
    if rem_len > 0 {
        info |= XLP_FIRST_IS_CONTRECORD;
    }
    let long = (page_offset == 0).then_some(LongPageHeader {
        system_id: SystemId(stream.system_id),
        segment_size_bytes: stream.segment_size_bytes as u32,
        xlog_blcksz: XLOG_BLCKSZ as u32,
    });
    if long.is_some() {
        info |= XLP_LONG_HEADER;
    }
    let header = PageHeader {
        magic: XLOG_PAGE_MAGIC,
        info,
        timeline: stream.timeline,
        page_addr: Lsn(segno * stream.segment_size_bytes + page_offset),
        rem_len,
        long,
    };
    let mut page = Box::new([0u8; PAGE_BYTES]);
    header.encode(&mut page[..]);
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use tarn_wal::decode::{WalRecordReader, decode_record_at};
    use tarn_wal::format::WalStreamParams;

    const SEGMENT: u64 = 1 << 20;

    fn state() -> CheckpointState {
        let mut bytes = [0u8; SIZE_OF_CHECKPOINT];
        bytes[0..8].copy_from_slice(&0x0120_0000u64.to_le_bytes());
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        bytes[12..16].copy_from_slice(&1u32.to_le_bytes());
        bytes[16] = 1;
        bytes[17] = 0xAA; // garbage padding must not survive
        let mut state = CheckpointState::from_bytes(&bytes).expect("88 bytes");
        state.set_next_full_xid((2u64 << 32) | 900);
        state.set_next_oid(24576);
        state.set_next_multi(3);
        state.set_next_multi_offset(5);
        state.set_oldest_xid(722);
        state.set_oldest_xid_db(1);
        state.set_oldest_multi(1);
        state.set_oldest_multi_db(1);
        state.set_oldest_active_xid(899);
        state
    }

    fn stream() -> WalStream {
        WalStream {
            timeline: 1,
            system_id: 0x7000_0000_0000_0042,
            segment_size_bytes: SEGMENT,
        }
    }

    /// Reads the crafted WAL back as Postgres would: positioned on the record with no
    /// known predecessor, page headers validated, CRC checked, then decoded.
    fn read_back(wal: &CraftedWal) -> CheckpointState {
        let from_record = read_back_from(wal, wal.record_lsn);
        // From the start of the record's page, the bytes before it are skipped.
        let page_start = Lsn(wal.record_lsn.0 - wal.record_lsn.0 % XLOG_BLCKSZ);
        assert_eq!(read_back_from(wal, page_start), from_record);
        from_record
    }

    fn read_back_from(wal: &CraftedWal, start: Lsn) -> CheckpointState {
        let files: Vec<(u64, Vec<u8>)> = wal
            .segments
            .iter()
            .map(|segment| (segment.segno, segment.to_bytes()))
            .collect();
        let source = |lsn: Lsn, buf: &mut [u8]| -> io::Result<usize> {
            let segno = lsn.0 / SEGMENT;
            let Some((_, bytes)) = files.iter().find(|(n, _)| *n == segno) else {
                return Ok(0);
            };
            let at = (lsn.0 % SEGMENT) as usize;
            let n = buf.len().min(bytes.len() - at);
            buf[..n].copy_from_slice(&bytes[at..at + n]);
            Ok(n)
        };
        let params =
            WalStreamParams::new(SEGMENT, Some(SystemId(stream().system_id))).expect("params");
        let mut reader = WalRecordReader::new(source, start, None, params)
            .expect("reader")
            .with_limit(wal.end_lsn);
        let raw = reader
            .next_raw_record()
            .expect("valid WAL")
            .unwrap_or_else(|| panic!("no checkpoint record: {:?}", reader.stop()));
        assert_eq!(raw.lsn, wal.record_lsn);
        assert_eq!(raw.end_lsn, wal.end_lsn);
        let decoded = decode_record_at(raw.lsn, raw.end_lsn, raw.bytes).expect("decodes");
        assert_eq!(
            (decoded.rmid, decoded.info),
            (RM_XLOG_ID, XLOG_CHECKPOINT_SHUTDOWN)
        );
        assert!(decoded.blocks.is_empty());
        CheckpointState::from_bytes(&decoded.main_data).expect("a CheckPoint")
    }

    fn craft_at(lsn: Lsn) -> CraftedWal {
        let record_lsn = checkpoint_record_lsn(lsn, SEGMENT);
        let checkpoint = shutdown_checkpoint(&state(), record_lsn, 1_700_000_000);
        let record = checkpoint_record(&checkpoint, Lsn(0x0020_0000));
        assert_eq!(record.len(), 114);
        craft_wal(&record, record_lsn, stream())
    }

    #[test]
    fn record_positions() {
        // Inside a page: as given, MAXALIGNed.
        assert_eq!(
            checkpoint_record_lsn(Lsn(0x0020_0100), SEGMENT),
            Lsn(0x0020_0100)
        );
        assert_eq!(
            checkpoint_record_lsn(Lsn(0x0020_0101), SEGMENT),
            Lsn(0x0020_0108)
        );
        // A page start: after the short header; a segment start: after the long one.
        assert_eq!(
            checkpoint_record_lsn(Lsn(0x0020_2000), SEGMENT),
            Lsn(0x0020_2018)
        );
        assert_eq!(
            checkpoint_record_lsn(Lsn(0x0020_0000), SEGMENT),
            Lsn(0x0020_0028)
        );
        // Inside a header: after it.
        assert_eq!(
            checkpoint_record_lsn(Lsn(0x0020_2010), SEGMENT),
            Lsn(0x0020_2018)
        );
        assert_eq!(
            checkpoint_record_lsn(Lsn(0x0020_0018), SEGMENT),
            Lsn(0x0020_0028)
        );
        // The first record of a page.
        assert_eq!(
            checkpoint_record_lsn(Lsn(0x0020_2018), SEGMENT),
            Lsn(0x0020_2018)
        );
    }

    #[test]
    fn a_record_inside_one_page_reads_back() {
        let wal = craft_at(Lsn(0x0030_4560));
        assert_eq!(wal.segments.len(), 1);
        assert_eq!(wal.segments[0].file_name, "000000010000000000000003");
        let state = read_back(&wal);
        assert_eq!(state.redo(), Lsn(0x0030_4560));
        assert_eq!(state.next_full_xid(), (2u64 << 32) | 900);
        assert_eq!(state.next_oid(), 24576);
        assert_eq!(state.oldest_active_xid(), 0);
        assert_eq!(state.prev_timeline(), 1);
        assert_eq!(state.time(), 1_700_000_000);
        assert_eq!(state.as_bytes()[17], 0, "padding is zero");
    }

    #[test]
    fn records_at_page_and_segment_starts_follow_the_header() {
        let wal = craft_at(Lsn(0x0030_6000));
        assert_eq!(wal.record_lsn, Lsn(0x0030_6018));
        assert_eq!(read_back(&wal).redo(), Lsn(0x0030_6018));
        let wal = craft_at(Lsn(0x0040_0000));
        assert_eq!(wal.record_lsn, Lsn(0x0040_0028));
        assert_eq!(wal.segments.len(), 1);
        assert_eq!(read_back(&wal).redo(), Lsn(0x0040_0028));
    }

    #[test]
    fn a_record_crossing_a_page_continues_on_the_next() {
        let lsn = Lsn(0x0030_6000 - 48);
        let wal = craft_at(lsn);
        assert_eq!(wal.record_lsn, lsn);
        assert_eq!(wal.segments.len(), 1);
        let segment = &wal.segments[0];
        let next = segment.to_bytes();
        let header = PageHeader::decode(&next[0x6000..]).expect("header");
        assert!(header.is_contrecord());
        assert_eq!(header.rem_len, 114 - 48);
        assert_eq!(wal.end_lsn, Lsn(0x0030_6018 + 66).max_align());
        assert_eq!(read_back(&wal).redo(), lsn);
    }

    #[test]
    fn a_record_crossing_a_segment_ends_in_the_next_segment() {
        let lsn = Lsn(0x0040_0000 - 16);
        let wal = craft_at(lsn);
        assert_eq!(wal.segments.len(), 2);
        assert_eq!(wal.segments[1].file_name, "000000010000000000000004");
        let first_page = wal.segments[1].to_bytes();
        let header = PageHeader::decode(&first_page).expect("long header");
        assert!(header.long.is_some() && header.is_contrecord());
        assert_eq!(header.rem_len, 114 - 16);
        assert_eq!(read_back(&wal).redo(), lsn);
    }
}
