//! The WAL stream decoder on two kinds of input, chosen by the first byte:
//! - raw: the bytes are fed as WAL (any garbage) in chunks whose size the second byte
//!   picks; records must come out in LSN order, each decoding or failing cleanly;
//! - laid out: the bytes describe records (rmid, info, body), which the target lays out
//!   as valid WAL pages two pages before a segment end (page headers, continuation
//!   records, CRCs, the xl_prev chain); the decoder, fed in chunks, must return exactly
//!   those records' bytes at exactly their LSNs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tarn_wal::decode::WalStreamDecoder;
use tarn_wal::format::{
    LongPageHeader, PageHeader, SIZE_OF_XLOG_LONG_PHD, WalStreamParams, XLOG_BLCKSZ,
    XLOG_PAGE_MAGIC, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER, XLogRecordHeader, max_align,
    record_crc,
};
use tarn_wal::{Lsn, SystemId};

/// The smallest segment size, so that inputs of a few KiB cross segment boundaries.
const SEGMENT_BYTES: u64 = 1 << 20;
/// Laid-out WAL starts this many pages before the end of segment 1.
const PAGES_BEFORE_SEGMENT_END: u64 = 2;

fuzz_target!(|data: &[u8]| {
    let [mode, chunk_seed, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk_seed) * 37 + 1;
    let params = WalStreamParams {
        segment_size_bytes: SEGMENT_BYTES,
        system_id: None,
    };
    if mode & 1 == 0 {
        raw_stream(rest, chunk, params, mode & 2 != 0);
    } else {
        laid_out(rest, chunk, params);
    }
});

fn raw_stream(wal: &[u8], chunk: usize, params: WalStreamParams, at_boundary: bool) {
    // A segment start (a continued record is skipped) or a record boundary after it.
    let (start, prev) = if at_boundary {
        (Lsn(SEGMENT_BYTES + 40), Some(Lsn(SEGMENT_BYTES - 80)))
    } else {
        (Lsn(SEGMENT_BYTES), None)
    };
    let Ok(mut decoder) = WalStreamDecoder::new(start, prev, params) else {
        panic!("valid start");
    };
    let mut last = None;
    for piece in wal.chunks(chunk) {
        let failed = decoder.feed(piece).is_err();
        while let Some(raw) = decoder.next_raw_record() {
            let Ok(raw) = raw else {
                panic!("bytes of a reported record are found")
            };
            assert!(Some(raw.lsn) > last, "records in LSN order");
            assert!(raw.end_lsn > raw.lsn);
            last = Some(raw.lsn);
            let _ = raw.decode();
        }
        if failed {
            break;
        }
    }
}

fn laid_out(spec: &[u8], chunk: usize, params: WalStreamParams) {
    // Records: rmid, info, u16 body length, body.
    let mut records = Vec::new();
    let mut rest = spec;
    while let [rmid, info, len_lo, len_hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*len_lo, *len_hi])).min(tail.len());
        let mut info = *info;
        let rmid = rmid % 22;
        if rmid == 0 && info & 0xF0 == 0x40 {
            // Not XLOG_SWITCH: its padding to the segment end would be megabytes.
            info ^= 0x10;
        }
        records.push((rmid, info, &tail[..len]));
        rest = &tail[len..];
    }
    let start = Lsn(2 * SEGMENT_BYTES - PAGES_BEFORE_SEGMENT_END * XLOG_BLCKSZ);
    let (wal, expected) = lay_out(start, &records);
    let Ok(mut decoder) = WalStreamDecoder::new(start, None, params) else {
        panic!("valid start");
    };
    let mut got = Vec::new();
    for piece in wal.chunks(chunk) {
        if let Err(error) = decoder.feed(piece) {
            panic!("laid-out WAL is valid: {error}");
        }
        while let Some(raw) = decoder.next_raw_record() {
            let Ok(raw) = raw else {
                panic!("bytes of a reported record are found")
            };
            got.push(raw);
        }
    }
    assert_eq!(got.len(), expected.len(), "every record comes out");
    for (raw, (lsn, end, bytes)) in got.iter().zip(&expected) {
        assert_eq!((raw.lsn, raw.end_lsn), (*lsn, *end));
        assert_eq!(&raw.bytes[..], &bytes[..], "record at {lsn}");
        let _ = raw.decode();
    }
}

/// Lays out records as Postgres's CopyXLogRecordToWAL does, from page start `start`.
/// Returns the WAL and each record's (start, end, bytes).
fn lay_out(start: Lsn, records: &[(u8, u8, &[u8])]) -> (Vec<u8>, Vec<(Lsn, Lsn, Vec<u8>)>) {
    let mut wal = Vec::new();
    let mut pos = start.0;
    let mut prev = Lsn(0);
    let mut expected = Vec::new();
    for (rmid, info, body) in records {
        let mut record = vec![0u8; 24];
        record.extend_from_slice(body);
        let header = XLogRecordHeader {
            tot_len: record.len() as u32,
            xid: 7,
            prev,
            info: *info,
            rmid: *rmid,
            crc: 0,
        };
        record[..24].copy_from_slice(&header.encode());
        let crc = record_crc(&record);
        record[20..24].copy_from_slice(&crc.to_le_bytes());
        if pos.is_multiple_of(XLOG_BLCKSZ) {
            pos += page_header(&mut wal, pos, 0);
        }
        let record_start = pos;
        let mut left = &record[..];
        loop {
            let n = left.len().min((XLOG_BLCKSZ - pos % XLOG_BLCKSZ) as usize);
            wal.extend_from_slice(&left[..n]);
            pos += n as u64;
            left = &left[n..];
            if left.is_empty() {
                break;
            }
            pos += page_header(&mut wal, pos, left.len() as u32);
        }
        let end = max_align(pos);
        wal.resize(wal.len() + (end - pos) as usize, 0);
        pos = end;
        prev = Lsn(record_start);
        expected.push((Lsn(record_start), Lsn(end), record));
    }
    (wal, expected)
}

fn page_header(wal: &mut Vec<u8>, pos: u64, rem_len: u32) -> u64 {
    let long = pos.is_multiple_of(SEGMENT_BYTES);
    let header = PageHeader {
        magic: XLOG_PAGE_MAGIC,
        info: if long { XLP_LONG_HEADER } else { 0 }
            | if rem_len > 0 {
                XLP_FIRST_IS_CONTRECORD
            } else {
                0
            },
        timeline: 1,
        page_addr: Lsn(pos),
        rem_len,
        long: long.then_some(LongPageHeader {
            system_id: SystemId(1),
            segment_size_bytes: SEGMENT_BYTES as u32,
            xlog_blcksz: XLOG_BLCKSZ as u32,
        }),
    };
    let mut bytes = [0u8; SIZE_OF_XLOG_LONG_PHD];
    header.encode(&mut bytes);
    wal.extend_from_slice(&bytes[..header.size()]);
    header.size() as u64
}
