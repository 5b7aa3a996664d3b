//! Round trips between [`WalGenerator`] and the readers, and what the readers make of
//! damaged WAL.

use std::io;

use super::synth::WalGenerator;
use super::*;
use crate::{Lsn, SystemId};

const MIB: u64 = 1024 * 1024;
const SEG: u64 = MIB;
const SYSID: SystemId = SystemId(0x7000_0000_1234_5678);

/// Deterministic test randomness (xorshift64*), so failures reproduce from the seed.
struct TestRng(u64);

impl TestRng {
    fn new(seed: u64) -> Self {
        TestRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    /// Sizes spread over orders of magnitude, `1..=max`.
    fn log_size(&mut self, max: u64) -> u64 {
        let bits = self.range(0, 64 - max.leading_zeros() as u64);
        self.range(1, (1u64 << bits).clamp(1, max))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rec {
    start: Lsn,
    end: Lsn,
}

/// A generated WAL stream and its records.
struct Stream {
    start: Lsn,
    bytes: Vec<u8>,
    records: Vec<Rec>,
    params: WalStreamParams,
}

impl Stream {
    fn lsn_at(&self, index: usize) -> Lsn {
        Lsn(self.start.0 + index as u64)
    }
    fn index_of(&self, lsn: Lsn) -> usize {
        (lsn.0 - self.start.0) as usize
    }
    fn end(&self) -> Lsn {
        self.lsn_at(self.bytes.len())
    }
}

/// Generates records with sizes from `sizes` (None = XLOG_SWITCH) starting at `start`.
fn generate(
    start: Lsn,
    prev: Option<Lsn>,
    seed: u64,
    sizes: impl IntoIterator<Item = Option<usize>>,
) -> Stream {
    let mut generator = WalGenerator::new(start, prev, SYSID, SEG, seed).expect("generator");
    let mut records = Vec::new();
    for size in sizes {
        let range = match size {
            Some(len) => Some(generator.append_record(len)),
            None => generator.append_switch(),
        };
        if let Some((start, end)) = range {
            records.push(Rec { start, end });
        }
    }
    let params = generator.stream_params();
    let (first, bytes) = generator.take_bytes();
    assert_eq!(first, start);
    Stream {
        start,
        bytes,
        records,
        params,
    }
}

/// A mix of sizes: mostly small, some multi-page, a few up to 300 KiB, some switches.
fn mixed_sizes(seed: u64, count: usize) -> Vec<Option<usize>> {
    let mut rng = TestRng::new(seed);
    (0..count)
        .map(|_| match rng.range(0, 99) {
            0 => None,
            1..=4 => Some(rng.range(100 * 1024, 300 * 1024) as usize),
            5..=20 => Some(rng.range(4 * 1024, 40 * 1024) as usize),
            _ => Some(rng.log_size(2000) as usize),
        })
        .collect()
}

/// Feeds `bytes` to a tracker in chunks of sizes drawn by `chunk_size`; returns the
/// records it reported and the tracker.
fn track(
    start: Lsn,
    prev: Option<Lsn>,
    params: WalStreamParams,
    bytes: &[u8],
    mut chunk_size: impl FnMut() -> usize,
) -> (Vec<Rec>, RecordBoundaryTracker, Result<(), WalFormatError>) {
    let mut tracker = RecordBoundaryTracker::new(start, prev, params).expect("tracker");
    let mut seen = Vec::new();
    let mut rest = bytes;
    let mut result = Ok(());
    while !rest.is_empty() {
        let n = chunk_size().clamp(1, rest.len());
        result = tracker.feed_with(&rest[..n], |r| {
            seen.push(Rec {
                start: r.start,
                end: r.end,
            })
        });
        if result.is_err() {
            break;
        }
        rest = &rest[n..];
    }
    (seen, tracker, result)
}

/// A [`WalRead`] over an in-memory stream; past its end it returns `zeros_after`
/// zero bytes and then nothing, like a preallocated file.
fn memory_reader(
    stream_start: Lsn,
    bytes: &[u8],
    zeros_after: u64,
) -> impl FnMut(Lsn, &mut [u8]) -> io::Result<usize> + '_ {
    move |lsn, buf| {
        let offset = (lsn.0 - stream_start.0) as usize;
        let stored = bytes.get(offset..).unwrap_or(&[]);
        let n = stored.len().min(buf.len());
        buf[..n].copy_from_slice(&stored[..n]);
        let zero_end = (bytes.len() as u64 + zeros_after).saturating_sub(offset as u64 + n as u64);
        let z = (zero_end as usize).min(buf.len() - n);
        buf[n..n + z].fill(0);
        Ok(n + z)
    }
}

#[test]
fn generator_round_trips_through_tracker_with_random_chunking() {
    for seed in 0..6u64 {
        let start = Lsn(SEG); // segment 1, as after initdb
        let stream = generate(start, None, seed, mixed_sizes(seed, 400));
        assert!(
            stream.end().0 > start.0 + 3 * SEG,
            "seed {seed}: stream must cross segments"
        );
        let mut rng = TestRng::new(seed ^ 0xC0FFEE);
        let (seen, tracker, result) = track(start, None, stream.params, &stream.bytes, || {
            rng.log_size(200 * 1024) as usize
        });
        result.expect("valid WAL");
        assert_eq!(seen, stream.records, "seed {seed}");
        let last = stream.records.last().expect("records");
        assert_eq!(tracker.complete_end(), last.end);
        assert_eq!(tracker.last_record_start(), Some(last.start));
        assert_eq!(tracker.position(), stream.end());
        assert_eq!(tracker.records_completed(), stream.records.len() as u64);
    }
}

#[test]
fn byte_at_a_time_and_whole_stream_agree() {
    let stream = generate(
        Lsn(SEG + 8192 * 3 + 200),
        Some(Lsn(SEG + 8192 * 3 + 40)),
        9,
        mixed_sizes(9, 80),
    );
    let (one, _, r1) = track(
        stream.start,
        Some(Lsn(SEG + 8192 * 3 + 40)),
        stream.params,
        &stream.bytes,
        || 1,
    );
    r1.expect("byte at a time");
    let (all, _, r2) = track(
        stream.start,
        Some(Lsn(SEG + 8192 * 3 + 40)),
        stream.params,
        &stream.bytes,
        || usize::MAX,
    );
    r2.expect("one chunk");
    assert_eq!(one, stream.records);
    assert_eq!(all, stream.records);
}

#[test]
fn record_ends_follow_postgres_rules() {
    // Exhaust the positions around a page end: records whose header or body splits at
    // every 8-byte offset, ending exactly at a page end, and right after a long header.
    let start = Lsn(SEG);
    let mut sizes = Vec::new();
    for first in 0..1100 {
        sizes.push(Some(first));
    }
    let stream = generate(start, None, 1, sizes);
    for (i, r) in stream.records.iter().enumerate() {
        assert_eq!(r.end.0 % 8, 0);
        assert!(
            r.end.0.is_multiple_of(XLOG_BLCKSZ)
                || r.end.0 % XLOG_BLCKSZ >= SIZE_OF_XLOG_SHORT_PHD as u64
        );
        if let Some(next) = stream.records.get(i + 1) {
            // The next record starts at the end, or right after the header of the page
            // that starts there.
            let header = if r.end.0.is_multiple_of(SEG) { 40 } else { 24 };
            let expected = if r.end.0.is_multiple_of(XLOG_BLCKSZ) {
                r.end.0 + header
            } else {
                r.end.0
            };
            assert_eq!(next.start.0, expected, "record {i}");
        }
    }
    let (seen, _, result) = track(start, None, stream.params, &stream.bytes, || 4096);
    result.expect("valid");
    assert_eq!(seen, stream.records);
    // Some record must have ended exactly at a page end, and some header must have
    // been split across pages, or this test does not test what it says.
    assert!(
        stream
            .records
            .iter()
            .any(|r| r.end.0.is_multiple_of(XLOG_BLCKSZ))
    );
    assert!(
        stream
            .records
            .iter()
            .any(|r| XLOG_BLCKSZ - r.start.0 % XLOG_BLCKSZ < 24)
    );
}

#[test]
fn huge_records_span_segments() {
    let start = Lsn(3 * SEG + 8192 * 100 + 64);
    let stream = generate(
        start,
        Some(Lsn(3 * SEG + 8192 * 100 + 24)),
        5,
        [Some(300 * 1024), Some(2_500_000), Some(8)],
    );
    assert!(
        stream.records[1].end.segment_number(SEG) - stream.records[1].start.segment_number(SEG)
            >= 2
    );
    let mut rng = TestRng::new(77);
    let (seen, _, result) = track(
        start,
        Some(Lsn(3 * SEG + 8192 * 100 + 24)),
        stream.params,
        &stream.bytes,
        || rng.log_size(200 * 1024) as usize,
    );
    result.expect("valid");
    assert_eq!(seen, stream.records);
}

#[test]
fn xlog_switch_ends_at_the_segment_end() {
    let start = Lsn(SEG);
    let stream = generate(
        start,
        None,
        3,
        [
            Some(100),
            None,
            Some(50),
            Some(20_000),
            None,
            None,
            Some(10),
        ],
    );
    // The third switch would sit at a segment start, where Postgres inserts nothing.
    assert_eq!(stream.records.len(), 6);
    let switch = stream.records[1];
    assert_eq!(switch.end, Lsn(2 * SEG));
    assert_eq!(stream.records[2].start, Lsn(2 * SEG + 40));
    assert_eq!(stream.records[4].end, Lsn(3 * SEG));
    // After a switch the rest of the segment is zeros, page headers included.
    let padding =
        &stream.bytes[stream.index_of(Lsn(switch.start.0 + 24))..stream.index_of(Lsn(2 * SEG))];
    assert!(padding.iter().all(|&b| b == 0));
    // The tracker reports the segment end as soon as the switch record is complete.
    let mut tracker = RecordBoundaryTracker::new(start, None, stream.params).expect("tracker");
    let upto_switch = stream.index_of(Lsn(switch.start.0 + 24));
    tracker.feed(&stream.bytes[..upto_switch]).expect("feed");
    assert_eq!(tracker.complete_end(), Lsn(2 * SEG));
    assert_eq!(tracker.position(), Lsn(switch.start.0 + 24));
    tracker.feed(&stream.bytes[upto_switch..]).expect("feed");
    assert_eq!(tracker.complete_end(), stream.records[5].end);
    // find_end_of_wal, with storage ending inside the padding: the switch still ends
    // at its segment end.
    let cut = &stream.bytes[..upto_switch + 5000];
    let eow = find_end_of_wal(
        &mut memory_reader(start, cut, 0),
        start,
        None,
        Lsn::MAX,
        stream.params,
    )
    .expect("scan");
    assert_eq!(eow.end, Lsn(2 * SEG));
    assert_eq!(eow.last_record_start, Some(switch.start));
    assert_eq!(eow.stop, ScanStop::EndOfStorage);
}

#[test]
fn starting_at_a_segment_start_skips_the_continued_record() {
    // Records of varied sizes, so that segment starts fall inside records of all kinds,
    // including ones whose continuation fills whole pages past the segment start.
    let mut multi_page_continuations = 0;
    for seed in 0..4u64 {
        let mut rng = TestRng::new(seed);
        let sizes: Vec<_> = (0..300)
            .map(|i| {
                Some(if i % 8 == 0 {
                    100_000
                } else {
                    rng.log_size(60_000) as usize
                })
            })
            .collect();
        let stream = generate(Lsn(SEG), None, seed, sizes);
        let last_segment = stream.end().segment_number(SEG);
        for segno in 2..=last_segment {
            let seg_start = Lsn(segno * SEG);
            let bytes = &stream.bytes[stream.index_of(seg_start)..];
            let (seen, tracker, result) = track(seg_start, None, stream.params, bytes, || 10_000);
            result.expect("valid");
            // Postgres's XLogFindNextRecord: the first record starting in the segment,
            // found by skipping the continuation (never by guessing from the data).
            let expected: Vec<Rec> = stream
                .records
                .iter()
                .copied()
                .filter(|r| r.start > seg_start)
                .collect();
            assert_eq!(seen, expected, "seed {seed} segment {segno}");
            let last = stream.records.last().expect("records");
            if last.start > seg_start {
                assert_eq!(tracker.complete_end(), last.end);
            }
            if stream
                .records
                .iter()
                .any(|r| r.start < seg_start && r.end.0 > seg_start.0 + 2 * XLOG_BLCKSZ)
            {
                multi_page_continuations += 1;
            }
        }
    }
    assert!(
        multi_page_continuations > 0,
        "no segment start inside a multi-page continuation"
    );
}

#[test]
fn page_start_with_known_prev_rejects_a_continuation() {
    let stream = generate(Lsn(SEG), None, 4, [Some(20_000), Some(10)]);
    let page = Lsn(SEG + XLOG_BLCKSZ);
    let bytes = &stream.bytes[stream.index_of(page)..];
    let (_, _, result) = track(
        page,
        Some(stream.records[0].start),
        stream.params,
        bytes,
        || 100,
    );
    assert_eq!(
        result,
        Err(WalFormatError::UnexpectedContrecord {
            record: Lsn(page.0 + 24),
            page
        })
    );
}

#[test]
fn a_flipped_byte_names_its_record_and_the_end_stops_before_it() {
    let start = Lsn(SEG);
    let stream = generate(start, None, 11, mixed_sizes(11, 150));
    let mut rng = TestRng::new(0xF11E);
    for trial in 0..300 {
        let k = rng.range(0, stream.records.len() as u64 - 1) as usize;
        let victim = stream.records[k];
        let byte = record_byte_lsn(&stream, victim, &mut rng);
        let mut damaged = stream.bytes.clone();
        damaged[stream.index_of(byte)] ^= 1 << rng.range(0, 7);

        let (seen, mut tracker, result) = track(start, None, stream.params, &damaged, || 65_536);
        let prev_end = if k == 0 {
            start
        } else {
            stream.records[k - 1].end
        };
        assert_eq!(
            seen,
            stream.records[..k],
            "trial {trial}: flipped {byte} in record {k}"
        );
        assert_eq!(tracker.complete_end(), prev_end);
        let eow = find_end_of_wal(
            &mut memory_reader(start, &damaged, 0),
            start,
            None,
            Lsn::MAX,
            stream.params,
        )
        .expect("scan");
        assert_eq!(eow.end, prev_end, "trial {trial}");
        assert_eq!(
            eow.last_record_start,
            k.checked_sub(1).map(|p| stream.records[p].start)
        );
        match result {
            Err(err) => {
                assert_eq!(
                    err.record_lsn(),
                    Some(victim.start),
                    "trial {trial}: flipped {byte} in record {k}: {err}"
                );
                // Sticky: further input is refused with the same error.
                assert_eq!(tracker.feed(&[0; 8]), Err(err.clone()));
                assert_eq!(tracker.error(), Some(&err));
                assert_eq!(eow.stop, ScanStop::Invalid(err));
            }
            // A length made larger can reach past the end of the stream: the record is
            // then merely incomplete.
            Ok(()) => assert_eq!(
                eow.stop,
                ScanStop::EndOfStorage,
                "trial {trial}: flipped {byte} in record {k}"
            ),
        }
    }
}

/// LSN of a random byte of `record` (its header or body, never page headers or padding).
fn record_byte_lsn(stream: &Stream, record: Rec, rng: &mut TestRng) -> Lsn {
    let mut lsns = Vec::new();
    let mut lsn = record.start.0;
    let tot_len = {
        let i = stream.index_of(record.start);
        u32::from_le_bytes(stream.bytes[i..i + 4].try_into().expect("4 bytes"))
    };
    let mut left = tot_len;
    while left > 0 {
        if lsn.is_multiple_of(XLOG_BLCKSZ) {
            lsn += if lsn.is_multiple_of(SEG) { 40 } else { 24 };
        }
        lsns.push(lsn);
        lsn += 1;
        left -= 1;
    }
    Lsn(lsns[rng.range(0, lsns.len() as u64 - 1) as usize])
}

#[test]
fn damaged_page_headers_are_reported_with_the_page() {
    let start = Lsn(SEG);
    let stream = generate(start, None, 12, (0..200).map(|_| Some(3000)));
    // A page that begins with a continuation.
    let page = (5..100)
        .map(|p| Lsn(SEG + p * XLOG_BLCKSZ))
        .find(|page| stream.bytes[stream.index_of(*page) + 2] & XLP_FIRST_IS_CONTRECORD as u8 != 0)
        .expect("a continued page");
    let at = stream.index_of(page);
    type Case = (usize, u8, fn(&WalFormatError) -> bool);
    let cases: [Case; 5] = [
        (0, 0x01, |e| matches!(e, WalFormatError::PageMagic { .. })),
        (3, 0x80, |e| {
            matches!(e, WalFormatError::PageInfoBits { .. })
        }),
        (9, 0x01, |e| matches!(e, WalFormatError::PageAddress { .. })),
        (16, 0x01, |e| {
            matches!(e, WalFormatError::ContrecordLength { .. })
        }),
        (2, XLP_FIRST_IS_CONTRECORD as u8, |e| {
            matches!(
                e,
                WalFormatError::MissingContrecord { .. }
                    | WalFormatError::UnexpectedContrecord { .. }
            )
        }),
    ];
    for (offset, mask, expected) in cases {
        let mut damaged = stream.bytes.clone();
        damaged[at + offset] ^= mask;
        let (_, _, result) = track(start, None, stream.params, &damaged, || 777);
        let err = result.expect_err("detected");
        assert!(expected(&err), "offset {offset}: {err}");
        assert_eq!(err.page_lsn(), Some(page), "offset {offset}: {err}");
    }
    // The timeline going backwards after a higher one.
    let mut damaged = stream.bytes.clone();
    damaged[at + 4] = 2;
    let (_, _, result) = track(start, None, stream.params, &damaged, || 777);
    let next = Lsn(page.0 + XLOG_BLCKSZ);
    assert_eq!(
        result,
        Err(WalFormatError::TimelineBackwards {
            page: next,
            found: 1,
            previous: 2
        })
    );
    // A different system id in a segment's long header.
    let other = WalStreamParams {
        system_id: Some(SystemId(1)),
        ..stream.params
    };
    let (_, _, result) = track(start, None, other, &stream.bytes, || 777);
    assert!(matches!(result, Err(WalFormatError::SystemIdMismatch { page, .. }) if page == start));
    // Unknown system id: accepted.
    let unknown = WalStreamParams {
        system_id: None,
        ..stream.params
    };
    let (_, _, result) = track(start, None, unknown, &stream.bytes, || 777);
    result.expect("sysid not checked when unknown");
}

#[test]
fn truncated_tail_ends_at_the_last_complete_record() {
    let start = Lsn(SEG);
    let stream = generate(start, None, 13, mixed_sizes(13, 120));
    let mut rng = TestRng::new(1313);
    for _ in 0..200 {
        let cut = rng.range(0, stream.bytes.len() as u64) as usize;
        let cut_lsn = stream.lsn_at(cut);
        let complete: Vec<Rec> = stream
            .records
            .iter()
            .copied()
            .filter(|r| last_byte(&stream, *r) < cut_lsn)
            .collect();
        let expected_end = complete.last().map_or(start, |r| r.end);
        let (seen, tracker, result) =
            track(start, None, stream.params, &stream.bytes[..cut], || 5000);
        result.expect("a truncated stream is not an error");
        assert_eq!(seen, complete);
        assert_eq!(tracker.complete_end(), expected_end, "cut at {cut_lsn}");
        for zeros_after in [0, 3 * SEG] {
            let eow = find_end_of_wal(
                &mut memory_reader(start, &stream.bytes[..cut], zeros_after),
                start,
                None,
                Lsn::MAX,
                stream.params,
            )
            .expect("scan");
            assert_eq!(
                eow.end, expected_end,
                "cut at {cut_lsn}, zeros {zeros_after}"
            );
            assert_eq!(eow.records, complete.len() as u64);
            if zeros_after == 0 {
                assert_eq!(eow.stop, ScanStop::EndOfStorage);
            } else {
                assert!(matches!(eow.stop, ScanStop::Invalid(_)), "{:?}", eow.stop);
            }
        }
    }
}

/// LSN of the last byte of a record (before padding).
fn last_byte(stream: &Stream, record: Rec) -> Lsn {
    let i = stream.index_of(record.start);
    let mut left = u32::from_le_bytes(stream.bytes[i..i + 4].try_into().expect("4 bytes")) as u64;
    let mut lsn = record.start.0;
    loop {
        if lsn.is_multiple_of(XLOG_BLCKSZ) {
            lsn += if lsn.is_multiple_of(SEG) { 40 } else { 24 };
        }
        let n = left.min(XLOG_BLCKSZ - lsn % XLOG_BLCKSZ);
        lsn += n;
        left -= n;
        if left == 0 {
            return Lsn(lsn - 1);
        }
    }
}

#[test]
fn zeroed_tail_ends_at_the_last_complete_record() {
    let start = Lsn(SEG);
    let stream = generate(start, None, 14, mixed_sizes(14, 120));
    for (k, victim) in stream.records.iter().enumerate().skip(1).step_by(7) {
        // Zero from the record's start (or from inside it) to the end: storage
        // preallocated with zeros and written only partially.
        for from in [
            victim.start,
            Lsn(victim.start.0 + 8),
            Lsn((victim.start.0 + victim.end.0) / 2),
        ] {
            let mut damaged = stream.bytes.clone();
            let i = stream.index_of(from);
            damaged[i..].fill(0);
            let eow = find_end_of_wal(
                &mut memory_reader(start, &damaged, 0),
                start,
                None,
                Lsn::MAX,
                stream.params,
            )
            .expect("scan");
            // The record survives if only its padding was zeroed (after a switch, the
            // padding is the rest of the segment).
            let intact = if last_byte(&stream, *victim) < from {
                k
            } else {
                k - 1
            };
            assert_eq!(
                eow.end, stream.records[intact].end,
                "record {k} zeroed from {from}"
            );
            assert_eq!(eow.last_record_start, Some(stream.records[intact].start));
            assert!(matches!(eow.stop, ScanStop::Invalid(_)));
        }
    }
}

#[test]
fn find_end_of_wal_honours_the_limit_and_a_known_boundary() {
    let start = Lsn(SEG);
    let stream = generate(start, None, 15, mixed_sizes(15, 100));
    let mid = stream.records[40];
    // Everything of record 70 but its last byte is below the limit.
    let limit = last_byte(&stream, stream.records[70]);
    let mut reads = Vec::new();
    let bytes = &stream.bytes;
    let mut reader = |lsn: Lsn, buf: &mut [u8]| {
        reads.push((lsn, buf.len()));
        memory_reader(start, bytes, 0)(lsn, buf)
    };
    let eow =
        find_end_of_wal(&mut reader, mid.end, Some(mid.start), limit, stream.params).expect("scan");
    assert_eq!(eow.end, stream.records[69].end);
    assert_eq!(eow.records, 29);
    assert_eq!(eow.stop, ScanStop::Limit);
    for (lsn, len) in reads {
        assert!(lsn.0 + len as u64 <= limit.0, "read past the limit");
        assert_eq!(
            lsn.segment_number(SEG),
            Lsn(lsn.0 + len as u64 - 1).segment_number(SEG),
            "read crosses a segment"
        );
    }
    // Storage errors are errors, not the end of WAL.
    let mut failing =
        |_: Lsn, _: &mut [u8]| -> io::Result<usize> { Err(io::Error::other("disk on fire")) };
    assert!(matches!(
        find_end_of_wal(&mut failing, start, None, Lsn::MAX, stream.params),
        Err(FindEndOfWalError::Read { lsn, .. }) if lsn == start
    ));
    assert!(matches!(
        find_end_of_wal(
            &mut failing,
            Lsn(start.0 + 4),
            None,
            Lsn::MAX,
            stream.params
        ),
        Err(FindEndOfWalError::InvalidStart(_))
    ));
}

#[test]
fn stale_recycled_segment_after_the_end_is_not_wal() {
    // Postgres recycles old segments by renaming them: past the end of WAL a reader
    // finds old pages, valid in every way except their pageaddr.
    // The old segment held the same record layout four segments earlier, so past the
    // new end there are records with valid lengths and CRCs: only xl_prev and pageaddr
    // tell they are stale.
    let old = generate(Lsn(5 * SEG), None, 16, (0..30).map(|_| Some(30_000)));
    let new = generate(Lsn(SEG), None, 17, (0..20).map(|_| Some(30_000)));
    let mut bytes = old.bytes.clone();
    bytes[..new.bytes.len()].copy_from_slice(&new.bytes);
    let eow = find_end_of_wal(
        &mut memory_reader(Lsn(SEG), &bytes, 0),
        Lsn(SEG),
        None,
        Lsn::MAX,
        new.params,
    )
    .expect("scan");
    assert_eq!(eow.end, new.records.last().expect("records").end);
    assert!(
        matches!(
            eow.stop,
            ScanStop::Invalid(WalFormatError::PrevLink { .. } | WalFormatError::PageAddress { .. })
        ),
        "{:?}",
        eow.stop
    );
}

#[test]
fn overwrite_contrecord_abandons_the_partial_record() {
    // WAL ended at a crash inside a record spanning into page P; recovery wrote a new
    // record at P flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD, chained to the last
    // complete record.
    let start = Lsn(SEG);
    let before = generate(start, None, 18, [Some(3000), Some(3000), Some(9000)]);
    let partial = before.records[2];
    let page = Lsn((partial.start.0 / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ);
    let mut generator =
        WalGenerator::new(page, Some(before.records[1].start), SYSID, SEG, 19).expect("generator");
    let (after_start, after_end) = generator.append_record(100);
    let (_, after_bytes) = generator.take_bytes();
    let mut bytes = before.bytes[..before.index_of(page)].to_vec();
    bytes.extend_from_slice(&after_bytes);
    let info_at = before.index_of(page) + 2;
    bytes[info_at] |= XLP_FIRST_IS_OVERWRITE_CONTRECORD as u8;
    let (seen, tracker, result) = track(start, None, before.params, &bytes, || 1000);
    result.expect("valid");
    assert_eq!(
        seen,
        vec![
            before.records[0],
            before.records[1],
            Rec {
                start: after_start,
                end: after_end
            }
        ]
    );
    assert_eq!(tracker.complete_end(), after_end);
}

#[test]
fn invalid_starts_and_params_are_rejected() {
    let params = WalStreamParams {
        segment_size_bytes: SEG,
        system_id: None,
    };
    for (start, prev) in [
        (Lsn(SEG + 4), None),                 // not MAXALIGNed
        (Lsn(SEG + 24), None),                // inside the long header of a segment
        (Lsn(SEG + XLOG_BLCKSZ + 16), None),  // inside a short header
        (Lsn(SEG + 64), Some(Lsn(SEG + 64))), // prev not before
        (Lsn(u64::MAX - 7), None),
    ] {
        assert!(
            matches!(
                RecordBoundaryTracker::new(start, prev, params),
                Err(WalFormatError::InvalidStart { .. })
            ),
            "{start} {prev:?}"
        );
        assert!(WalGenerator::new(start, prev, SYSID, SEG, 0).is_err());
    }
    RecordBoundaryTracker::new(Lsn(SEG + 40), None, params).expect("after the long header");
    RecordBoundaryTracker::new(Lsn(SEG + XLOG_BLCKSZ + 24), None, params)
        .expect("after a short header");
    for bad in [0, 4096, 3 * MIB, 2048 * MIB] {
        let params = WalStreamParams {
            segment_size_bytes: bad,
            system_id: None,
        };
        assert!(matches!(
            RecordBoundaryTracker::new(Lsn(SEG), None, params),
            Err(WalFormatError::InvalidSegmentSize { .. })
        ));
    }
}

#[test]
fn garbage_never_panics() {
    let params = WalStreamParams {
        segment_size_bytes: SEG,
        system_id: None,
    };
    let mut rng = TestRng::new(99);
    let valid = generate(Lsn(SEG), None, 20, mixed_sizes(20, 40));
    for trial in 0..300 {
        // Random bytes, or valid WAL with random bytes scribbled over a random stretch.
        let mut bytes = if trial % 2 == 0 {
            vec![0u8; rng.range(1, 100_000) as usize]
        } else {
            valid.bytes.clone()
        };
        let from = rng.range(0, bytes.len() as u64 - 1) as usize;
        let to = (from + rng.range(1, 5000) as usize).min(bytes.len());
        for b in &mut bytes[from..to] {
            *b = rng.next() as u8;
        }
        let start = if trial % 4 < 2 {
            Lsn(SEG)
        } else {
            Lsn(SEG + XLOG_BLCKSZ)
        };
        let mut sizes = TestRng::new(trial);
        let (_, tracker, _) = track(start, None, params, &bytes, || {
            sizes.log_size(10_000) as usize
        });
        assert!(tracker.position() <= Lsn(start.0 + bytes.len() as u64));
    }
    // A garbage xl_tot_len beyond XLogRecordMaxSize is refused before trusting it.
    let mut bytes = valid.bytes[..100].to_vec();
    bytes[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    let (_, _, result) = track(Lsn(SEG), None, params, &bytes, || 3);
    assert_eq!(
        result,
        Err(WalFormatError::RecordLength {
            record: Lsn(SEG + 40),
            tot_len: u32::MAX
        })
    );
}

#[test]
fn generator_is_deterministic_and_drains() {
    let run = |seed| generate(Lsn(SEG), None, seed, mixed_sizes(5, 50)).bytes;
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    let mut generator = WalGenerator::new(Lsn(SEG), None, SYSID, SEG, 0).expect("generator");
    let (s1, e1) = generator.append_record(1);
    assert_eq!((s1, e1), (Lsn(SEG + 40), Lsn(SEG + 40 + 24 + 8)));
    let (s2, e2) = generator.append_record(300);
    assert_eq!(
        generator.bytes_from(s2).map(<[u8]>::len),
        Some((e2.0 - s2.0) as usize)
    );
    let (first, taken) = generator.take_bytes();
    assert_eq!((first, taken.len() as u64), (Lsn(SEG), e2.0 - SEG));
    assert!(generator.bytes().is_empty());
    assert_eq!(generator.buffered_start(), e2);
    let (s3, _) = generator.append_record(70_000);
    assert_eq!(s3, e2);
    assert_eq!(generator.bytes_from(s2), None);
    // Main data headers: short form up to 255 bytes, long form beyond.
    let i = generator.bytes_from(s3).expect("bytes");
    assert_eq!(i[24], XLR_BLOCK_ID_DATA_LONG);
    assert_eq!(u32::from_le_bytes(i[25..29].try_into().expect("4")), 70_000);
    let j = &taken[(s2.0 - SEG) as usize..];
    assert_eq!(j[24..26], [XLR_BLOCK_ID_DATA_LONG, 0x2C]);
    assert_eq!(
        taken[(s1.0 - SEG) as usize + 24..][..2],
        [XLR_BLOCK_ID_DATA_SHORT, 1]
    );
}

/// Throughput of generation and tracking; run with
/// `cargo test --release -p tarn-wal format::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check"]
fn throughput() {
    for payload in [100usize, 8 * 1024, 128 * 1024] {
        let total_bytes = 256 * MIB;
        let began = std::time::Instant::now();
        let mut generator =
            WalGenerator::new(Lsn(SEG), None, SYSID, 16 * MIB, 1).expect("generator");
        while generator.end().0 - SEG < total_bytes {
            generator.append_record(payload);
        }
        let (_, bytes) = generator.take_bytes();
        let generated = began.elapsed();
        let params = WalStreamParams {
            segment_size_bytes: 16 * MIB,
            system_id: Some(SYSID),
        };
        let began = std::time::Instant::now();
        let mut tracker = RecordBoundaryTracker::new(Lsn(SEG), None, params).expect("tracker");
        for chunk in bytes.chunks(128 * 1024) {
            tracker.feed(chunk).expect("valid");
        }
        let tracked = began.elapsed();
        let mib = bytes.len() as f64 / MIB as f64;
        println!(
            "payload {payload:>6} B: generate {:>6.0} MiB/s, track {:>6.0} MiB/s ({} records)",
            mib / generated.as_secs_f64(),
            mib / tracked.as_secs_f64(),
            tracker.records_completed()
        );
    }
}
