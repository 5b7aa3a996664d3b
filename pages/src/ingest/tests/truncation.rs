//! CLOG/TRUNCATE and MultiXact/TRUNCATE_ID: which segments go (segment-granular, modulo
//! the wraparound of page numbers and member offsets), reads on either side of the
//! record, the checkpoint state, segments that come back, and malformed records.
//! `tests/tests/slru_truncation.rs` checks the same against a real Postgres.

use std::collections::BTreeSet;

use super::*;
use crate::reconstruct::get_slru_segment_size;

const CLOG: SlruKind = SlruKind::Clog;
const OFFSETS: SlruKind = SlruKind::MultiXactOffsets;
const MEMBERS: SlruKind = SlruKind::MultiXactMembers;
/// Multixacts per offsets segment, members per members segment.
const MULTIS_PER_SEGMENT: u32 = 2048 * 32;
const MEMBERS_PER_SEGMENT: u32 = 1636 * 32;

fn zero_clog_page(h: &mut Harness, pageno: u32) -> Lsn {
    h.ok(0, RM_CLOG_ID, CLOG_ZEROPAGE, &[], &le(&[pageno]))
}

fn zero_offsets_page(h: &mut Harness, pageno: u32) -> Lsn {
    h.ok(
        0,
        RM_MULTIXACT_ID,
        XLOG_MULTIXACT_ZERO_OFF_PAGE,
        &[],
        &le(&[pageno]),
    )
}

fn zero_members_page(h: &mut Harness, pageno: u32) -> Lsn {
    h.ok(
        0,
        RM_MULTIXACT_ID,
        XLOG_MULTIXACT_ZERO_MEM_PAGE,
        &[],
        &le(&[pageno]),
    )
}

/// xl_clog_truncate.
fn truncate_clog(h: &mut Harness, pageno: u32) -> Lsn {
    h.ok(
        0,
        RM_CLOG_ID,
        CLOG_TRUNCATE,
        &[],
        &le(&[pageno, pageno * 32768, 5]),
    )
}

/// xl_multixact_truncate.
fn truncate_multixacts(
    h: &mut Harness,
    offsets: (u32, u32),
    members: (u32, u32),
    oldest_multi_db: u32,
) -> Lsn {
    h.ok(
        0,
        RM_MULTIXACT_ID,
        XLOG_MULTIXACT_TRUNCATE_ID,
        &[],
        &le(&[oldest_multi_db, offsets.0, offsets.1, members.0, members.1]),
    )
}

/// The SLRU's directory at `lsn`.
fn segments(h: &Harness, slru: SlruKind, lsn: Lsn) -> BTreeSet<u32> {
    let data = h.store.get(Key::slru_dir(slru), lsn).expect("read");
    let (_, bytes) = data.image.expect("an SLRU directory");
    SlruDir::decode(&bytes).expect("decode").0
}

fn set(segnos: &[u32]) -> BTreeSet<u32> {
    segnos.iter().copied().collect()
}

/// The segment's size, `None` if it does not exist at `lsn`.
fn segment_size(h: &Harness, slru: SlruKind, segno: u32, lsn: Lsn) -> Option<u32> {
    match get_slru_segment_size(&h.store, slru, segno, lsn) {
        Ok(size) => Some(size),
        Err(ReconstructError::SlruSegmentNotFound { .. }) => None,
        Err(other) => panic!("size of {slru:?} {segno:04X} at {lsn}: {other}"),
    }
}

fn checkpoint_at(h: &Harness, lsn: Lsn) -> CheckpointState {
    let data = h.store.get(Key::checkpoint(), lsn).expect("read");
    CheckpointState::from_bytes(&data.image.expect("checkpoint state").1).expect("decode")
}

fn commit(h: &mut Harness, xid: u32, subxacts: &[u32]) -> Lsn {
    h.ok(
        xid,
        RM_XACT_ID,
        XLOG_XACT_COMMIT | XACT_HAS_INFO,
        &[],
        &xact_completion(subxacts, &[]),
    )
}

#[test]
fn clog_truncation_removes_the_segments_wholly_before_the_cutoff() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    for pageno in [0, 1, 32, 64, 65] {
        zero_clog_page(&mut h, pageno);
    }
    let before = commit(&mut h, 1000, &[40_000]);
    assert_eq!(segments(&h, CLOG, before), set(&[0, 1, 2]));

    // A cutoff inside segment 1 removes only segment 0.
    let first = truncate_clog(&mut h, 63);
    assert_eq!(segments(&h, CLOG, first), set(&[1, 2]));
    assert_eq!(segment_size(&h, CLOG, 0, first), None);
    assert_eq!(segment_size(&h, CLOG, 0, before), Some(2));
    assert!(matches!(
        get_page_at_lsn(&h.store, clog_key(1), first),
        Err(ReconstructError::SlruSegmentNotFound { segno: 0, .. })
    ));
    // Below the record the segment and its bits are still there.
    let page = h.page(clog_key(1), before);
    assert_eq!(clog_status(&page, 40_000), TRANSACTION_STATUS_COMMITTED);
    assert_eq!(
        clog_status(&h.page(clog_key(0), before), 1000),
        TRANSACTION_STATUS_COMMITTED
    );

    // The cutoff at segment 2's first page removes segment 1 too.
    let second = truncate_clog(&mut h, 64);
    assert_eq!(segments(&h, CLOG, second), set(&[2]));
    assert_eq!(segments(&h, CLOG, first), set(&[1, 2]));
    assert_eq!(segment_size(&h, CLOG, 2, second), Some(2));
    // Again: nothing left to remove, nothing written but the record's LSN.
    let third = truncate_clog(&mut h, 64);
    assert_eq!(segments(&h, CLOG, third), set(&[2]));

    let stats = h.ingester.stats();
    assert_eq!(
        (stats.slru_truncations, stats.slru_segments_removed),
        (3, 2)
    );
    // AdvanceOldestClogXid is in-memory only: the checkpoint state does not move.
    assert_eq!(checkpoint_at(&h, third), checkpoint_at(&h, before));
}

#[test]
fn clog_truncation_compares_pages_modulo_the_wraparound() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    // Segments 0, 1, 2049, 2050 and 0FFF (its last page: the first 31 are filled
    // in as zeros), then 2, the latest page.
    for pageno in [0, 32, 2049 * 32, 2050 * 32, 0xFFF * 32 + 31, 64] {
        zero_clog_page(&mut h, pageno);
    }
    let before = Lsn(h.next_lsn);
    assert_eq!(segment_size(&h, CLOG, 0xFFF, before), Some(32));
    assert_eq!(h.page(clog_key(0xFFF * 32), before), Page::zeroed());
    let lsn = truncate_clog(&mut h, 64);
    // Older modulo 2^32: 0, 1 and 0FFF. Segment 2 holds the cutoff; 2049 and 2050 are
    // (at least partly) less than 2^31 xids ahead of it.
    assert_eq!(segments(&h, CLOG, lsn), set(&[2, 2049, 2050]));
    assert_eq!(
        segments(&h, CLOG, before),
        set(&[0, 1, 2, 2049, 2050, 0xFFF])
    );
    assert_eq!(h.ingester.stats().slru_segments_removed, 3);
}

#[test]
fn clog_truncation_past_the_latest_page_is_refused_as_apparent_wraparound() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    zero_clog_page(&mut h, 64);
    // The latest page is now 0, which precedes the cutoff 64: SimpleLruTruncate logs
    // "apparent wraparound" and removes nothing.
    let before = zero_clog_page(&mut h, 0);
    let lsn = truncate_clog(&mut h, 64);
    assert_eq!(segments(&h, CLOG, lsn), set(&[0, 2]));
    assert_eq!(segments(&h, CLOG, before), set(&[0, 2]));
    let stats = h.ingester.stats();
    assert_eq!(
        (stats.slru_truncations_refused, stats.slru_segments_removed),
        (1, 0)
    );
    // A fresh ingester derives the latest page from nextXid (StartupCLOG): xid 64 *
    // 32768 + 5 is on page 64, which does not precede the cutoff.
    commit(&mut h, 64 * 32768 + 5, &[]);
    h.ingester = Ingester::new(h.ingester.config().clone());
    let lsn = truncate_clog(&mut h, 64);
    assert_eq!(segments(&h, CLOG, lsn), set(&[2]));
}

#[test]
fn a_removed_segment_comes_back_as_zero_pages() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    zero_clog_page(&mut h, 0);
    commit(&mut h, 1000, &[40_000]); // page 1 was never zeroed: it reads as zeros
    zero_clog_page(&mut h, 32);
    let before = zero_clog_page(&mut h, 64);
    assert_eq!(segment_size(&h, CLOG, 0, before), Some(2));
    let removed = truncate_clog(&mut h, 64);
    assert_eq!(segments(&h, CLOG, removed), set(&[2]));

    // Page 2 of segment 0 is written again (as after the xids wrapped): the segment
    // exists again with pages 0-2, all zeros, whatever the old incarnation held.
    let back = zero_clog_page(&mut h, 2);
    assert_eq!(segments(&h, CLOG, back), set(&[0, 2]));
    assert_eq!(segment_size(&h, CLOG, 0, back), Some(3));
    for pageno in 0..3 {
        assert_eq!(
            h.page(clog_key(pageno), back),
            Page::zeroed(),
            "page {pageno}"
        );
    }
    assert_eq!(
        clog_status(&h.page(clog_key(0), before), 1000),
        TRANSACTION_STATUS_COMMITTED
    );
    // A commit on a page past the new end, without ZEROPAGE: the page reads as zeros
    // but for its bits.
    let committed = commit(&mut h, 3 * 32768 + 7, &[]);
    let page = h.page(clog_key(3), committed);
    assert_eq!(
        clog_status(&page, 3 * 32768 + 7),
        TRANSACTION_STATUS_COMMITTED
    );
    let mut expected = Page::zeroed();
    slru::clog_set_status(&mut expected, 3 * 32768 + 7, TRANSACTION_STATUS_COMMITTED);
    assert_eq!(page, expected);
}

#[test]
fn multixact_truncation_removes_offsets_and_members_segments() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    for pageno in [0, 32, 64] {
        zero_offsets_page(&mut h, pageno);
        zero_members_page(&mut h, pageno);
    }
    let before = Lsn(h.next_lsn);
    // End at the first multixact of segment 2: PerformOffsetsTruncation steps back one
    // multixact, to the last page of segment 1, which therefore stays.
    let first = truncate_multixacts(
        &mut h,
        (1, 2 * MULTIS_PER_SEGMENT),
        (0, MEMBERS_PER_SEGMENT),
        5,
    );
    assert_eq!(segments(&h, OFFSETS, first), set(&[1, 2]));
    assert_eq!(segments(&h, MEMBERS, first), set(&[1, 2]));
    let state = checkpoint_at(&h, first);
    assert_eq!(
        (state.oldest_multi(), state.oldest_multi_db()),
        (2 * MULTIS_PER_SEGMENT, 5)
    );
    // Nothing had written the checkpoint state before.
    assert!(
        h.store
            .get(Key::checkpoint(), before)
            .expect("read")
            .image
            .is_none()
    );

    let second = truncate_multixacts(
        &mut h,
        (2 * MULTIS_PER_SEGMENT, 2 * MULTIS_PER_SEGMENT + 5),
        (MEMBERS_PER_SEGMENT, 2 * MEMBERS_PER_SEGMENT + 7),
        4,
    );
    assert_eq!(segments(&h, OFFSETS, second), set(&[2]));
    assert_eq!(segments(&h, MEMBERS, second), set(&[2]));
    for (slru, segno) in [(OFFSETS, 1), (MEMBERS, 1)] {
        assert_eq!(segment_size(&h, slru, segno, first), Some(1));
        assert_eq!(segment_size(&h, slru, segno, second), None);
    }
    assert_eq!(
        (
            checkpoint_at(&h, second).oldest_multi(),
            checkpoint_at(&h, second).oldest_multi_db()
        ),
        (2 * MULTIS_PER_SEGMENT + 5, 4)
    );
    let stats = h.ingester.stats();
    assert_eq!(
        (stats.slru_truncations, stats.slru_segments_removed),
        (2, 4)
    );
}

#[test]
fn multixact_truncation_wraps_around_offsets_and_members() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    // Offsets: the last page (2097151, segment FFFF), then page 0 after the wrap.
    // Members: the last page (2625285, blk 5 of segment 14078), then segments 0 and 1.
    zero_offsets_page(&mut h, 2_097_151);
    zero_members_page(&mut h, 2_625_285);
    zero_offsets_page(&mut h, 0);
    zero_members_page(&mut h, 0);
    let before = zero_members_page(&mut h, 32);
    assert_eq!(segments(&h, OFFSETS, before), set(&[0, 0xFFFF]));
    assert_eq!(segments(&h, MEMBERS, before), set(&[0, 1, 0x14078]));
    assert_eq!(segment_size(&h, MEMBERS, 0x14078, before), Some(6));

    // Multixacts [0xFFFFF800, 100) with members [4294966260, one segment and 10):
    // members go from the last segment round to 0 (segment 1 holds the end), and the
    // offsets cutoff (page 0) makes segment FFFF older.
    let lsn = truncate_multixacts(
        &mut h,
        (0xFFFF_F800, 100),
        (4_294_966_260, MEMBERS_PER_SEGMENT + 10),
        5,
    );
    assert_eq!(segments(&h, OFFSETS, lsn), set(&[0]));
    assert_eq!(segments(&h, MEMBERS, lsn), set(&[1]));
    assert_eq!(segment_size(&h, MEMBERS, 0x14078, lsn), None);
    assert_eq!(segment_size(&h, MEMBERS, 0x14078, before), Some(6));
    assert_eq!(checkpoint_at(&h, lsn).oldest_multi(), 100);

    // Truncating up to multixact 1: the cutoff is the page of MaxMultiXactId (one
    // back from 1), so segment 0 stays; the members range is empty.
    let again = truncate_multixacts(&mut h, (100, 1), (20, 30), 5);
    assert_eq!(segments(&h, OFFSETS, again), set(&[0]));
    assert_eq!(segments(&h, MEMBERS, again), set(&[1]));
    assert_eq!(checkpoint_at(&h, again).oldest_multi(), 1);
}

#[test]
fn malformed_truncation_records_are_parse_errors_naming_the_lsn() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    let before = zero_clog_page(&mut h, 0);
    for (rmid, info, main) in [
        (RM_CLOG_ID, CLOG_TRUNCATE, le(&[32, 1 << 20])),
        (
            RM_MULTIXACT_ID,
            XLOG_MULTIXACT_TRUNCATE_ID,
            le(&[5, 1, 2, 3]),
        ),
    ] {
        let lsn = Lsn(h.next_lsn);
        let error = h
            .ingest(0, rmid, info, &[], &main)
            .expect_err("a short record");
        assert!(
            matches!(&error, IngestError::Parse { lsn: at, .. } if *at == lsn),
            "{error}"
        );
        assert!(error.to_string().contains(&lsn.to_string()), "{error}");
    }
    assert_eq!(h.store.last_lsn(), before);
    assert_eq!(segments(&h, CLOG, before), set(&[0]));
}
