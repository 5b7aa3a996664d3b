//! SLRU page arithmetic and the page changes of CLOG (clog.c) and multixact
//! (multixact.c) redo, plus the transaction id comparisons of transam.c.
//!
//! SLRU pages are raw 8 KiB arrays (no page header); a segment holds
//! [`SLRU_PAGES_PER_SEGMENT`] of them.

use crate::page::{BLCKSZ, Page};

use super::delta::MemberWrite;

/// SLRU_PAGES_PER_SEGMENT (slru.h).
pub const SLRU_PAGES_PER_SEGMENT: u32 = 32;

/// CLOG_BITS_PER_XACT, CLOG_XACTS_PER_BYTE, CLOG_XACTS_PER_PAGE (clog.c).
const CLOG_BITS_PER_XACT: u32 = 2;
const CLOG_XACTS_PER_BYTE: u32 = 4;
pub const CLOG_XACTS_PER_PAGE: u32 = BLCKSZ as u32 * CLOG_XACTS_PER_BYTE;
const CLOG_XACT_BITMASK: u8 = (1 << CLOG_BITS_PER_XACT) - 1;

/// MULTIXACT_OFFSETS_PER_PAGE (multixact.c).
pub const MULTIXACT_OFFSETS_PER_PAGE: u32 = (BLCKSZ / 4) as u32;
/// The member layout of multixact.c: groups of 4 flag bytes and 4 xids.
const MXACT_MEMBER_BITS_PER_XACT: u32 = 8;
const MULTIXACT_FLAGBYTES_PER_GROUP: u32 = 4;
const MULTIXACT_MEMBERS_PER_MEMBERGROUP: u32 = MULTIXACT_FLAGBYTES_PER_GROUP;
const MULTIXACT_MEMBERGROUP_SIZE: u32 =
    4 * MULTIXACT_MEMBERS_PER_MEMBERGROUP + MULTIXACT_FLAGBYTES_PER_GROUP;
const MULTIXACT_MEMBERGROUPS_PER_PAGE: u32 = BLCKSZ as u32 / MULTIXACT_MEMBERGROUP_SIZE;
pub const MULTIXACT_MEMBERS_PER_PAGE: u32 =
    MULTIXACT_MEMBERGROUPS_PER_PAGE * MULTIXACT_MEMBERS_PER_MEMBERGROUP;

/// FirstNormalTransactionId.
pub const FIRST_NORMAL_TRANSACTION_ID: u32 = 3;
/// FirstMultiXactId.
pub const FIRST_MULTIXACT_ID: u32 = 1;

/// MaxMultiXactId and MaxMultiXactOffset (multixact.h).
pub const MAX_MULTIXACT_ID: u32 = u32::MAX;
pub const MAX_MULTIXACT_OFFSET: u32 = u32::MAX;

/// An SLRU page number as (segment, page within the segment).
pub fn segment_and_page(pageno: u32) -> (u32, u32) {
    (
        pageno / SLRU_PAGES_PER_SEGMENT,
        pageno % SLRU_PAGES_PER_SEGMENT,
    )
}

/// TransactionIdToPage (clog.c).
pub fn clog_page(xid: u32) -> u32 {
    xid / CLOG_XACTS_PER_PAGE
}

/// Mirrors TransactionIdSetStatusBit (clog.c) without its assertions: the xid's two
/// bits on its CLOG page become `status`. (Its recovery special case — a
/// sub-committed status does not overwrite committed — never applies: redo sets only
/// committed or aborted, the sub-committed step of TransactionIdSetTreeStatus is
/// internal to one record.)
pub fn clog_set_status(page: &mut Page, xid: u32, status: u8) {
    let in_page = xid % CLOG_XACTS_PER_PAGE;
    let byte = (in_page / CLOG_XACTS_PER_BYTE) as usize;
    let shift = (in_page % CLOG_XACTS_PER_BYTE) * CLOG_BITS_PER_XACT;
    let bytes = page.as_bytes_mut();
    bytes[byte] =
        (bytes[byte] & !(CLOG_XACT_BITMASK << shift)) | ((status & CLOG_XACT_BITMASK) << shift);
}

/// The status bits of `xid` on its CLOG page (TransactionIdGetStatus).
pub fn clog_status(page: &Page, xid: u32) -> u8 {
    let in_page = xid % CLOG_XACTS_PER_PAGE;
    let byte = page.as_bytes()[(in_page / CLOG_XACTS_PER_BYTE) as usize];
    (byte >> ((in_page % CLOG_XACTS_PER_BYTE) * CLOG_BITS_PER_XACT)) & CLOG_XACT_BITMASK
}

/// MultiXactIdToOffsetPage / MultiXactIdToOffsetEntry.
pub fn multixact_offset_position(multi: u32) -> (u32, u16) {
    (
        multi / MULTIXACT_OFFSETS_PER_PAGE,
        (multi % MULTIXACT_OFFSETS_PER_PAGE) as u16,
    )
}

/// MXOffsetToMemberPage.
pub fn member_page(offset: u32) -> u32 {
    offset / MULTIXACT_MEMBERS_PER_PAGE
}

/// MXOffsetToMemberSegment.
pub fn member_segment(offset: u32) -> u32 {
    member_page(offset) / SLRU_PAGES_PER_SEGMENT
}

/// PreviousMultiXactId: the multixact before `multi`, skipping InvalidMultiXactId.
pub fn previous_multixact_id(multi: u32) -> u32 {
    if multi == FIRST_MULTIXACT_ID {
        MAX_MULTIXACT_ID
    } else {
        multi.wrapping_sub(1)
    }
}

/// Mirrors CLOGPagePrecedes (clog.c): whether CLOG page `page1` is older than `page2`
/// for truncation: an xid of `page1` precedes, modulo 2^32, both the first and the
/// last xid of `page2` (each offset by FirstNormalTransactionId + 1, so that all are
/// normal xids).
pub fn clog_page_precedes(page1: u32, page2: u32) -> bool {
    let xid1 = page1
        .wrapping_mul(CLOG_XACTS_PER_PAGE)
        .wrapping_add(FIRST_NORMAL_TRANSACTION_ID + 1);
    let xid2 = page2
        .wrapping_mul(CLOG_XACTS_PER_PAGE)
        .wrapping_add(FIRST_NORMAL_TRANSACTION_ID + 1);
    xid_precedes(xid1, xid2) && xid_precedes(xid1, xid2.wrapping_add(CLOG_XACTS_PER_PAGE - 1))
}

/// Mirrors MultiXactOffsetPagePrecedes (multixact.c), the offsets SLRU's analogue of
/// [`clog_page_precedes`].
pub fn multixact_offset_page_precedes(page1: u32, page2: u32) -> bool {
    let multi1 = page1
        .wrapping_mul(MULTIXACT_OFFSETS_PER_PAGE)
        .wrapping_add(FIRST_MULTIXACT_ID + 1);
    let multi2 = page2
        .wrapping_mul(MULTIXACT_OFFSETS_PER_PAGE)
        .wrapping_add(FIRST_MULTIXACT_ID + 1);
    multi_precedes(multi1, multi2)
        && multi_precedes(multi1, multi2.wrapping_add(MULTIXACT_OFFSETS_PER_PAGE - 1))
}

/// Mirrors SlruMayDeleteSegment (slru.c, PG15): the segment whose first page is
/// `segpage` may go only if both its first and its last page precede the cutoff page
/// (a segment holding the cutoff, or the wraparound point, stays).
pub fn slru_may_delete_segment(
    page_precedes: impl Fn(u32, u32) -> bool,
    segpage: u32,
    cutoff_page: u32,
) -> bool {
    let seg_last_page = segpage.wrapping_add(SLRU_PAGES_PER_SEGMENT - 1);
    page_precedes(segpage, cutoff_page) && page_precedes(seg_last_page, cutoff_page)
}

/// Whether PerformMembersTruncation (multixact.c) deletes members segment `segno` when
/// truncating the member offsets [start, end): its loop deletes every segment from
/// `start`'s up to (not including) `end`'s, going on from the last segment
/// (MXOffsetToMemberSegment(MaxMultiXactOffset)) to segment 0.
pub fn member_segment_truncated(segno: u32, start: u32, end: u32) -> bool {
    let max_segment = member_segment(MAX_MULTIXACT_OFFSET);
    let (first, stop) = (member_segment(start), member_segment(end));
    if first <= stop {
        (first..stop).contains(&segno)
    } else {
        (first..=max_segment).contains(&segno) || segno < stop
    }
}

/// Writes one offsets entry (a MultiXactOffset) of a pg_multixact/offsets page.
pub fn set_multixact_offset(page: &mut Page, entry: u16, offset: u32) {
    let at = usize::from(entry) * 4;
    page.as_bytes_mut()[at..at + 4].copy_from_slice(&offset.to_le_bytes());
}

/// Mirrors the member loop of RecordNewMultiXact: the member's xid into its slot and
/// its status into its flag byte (MXOffsetToMemberOffset, MXOffsetToFlagsOffset,
/// MXOffsetToFlagsBitShift).
pub fn set_multixact_member(page: &mut Page, member: &MemberWrite) {
    let offset = member.offset;
    let flags_off = ((offset / MULTIXACT_MEMBERS_PER_MEMBERGROUP)
        % MULTIXACT_MEMBERGROUPS_PER_PAGE)
        * MULTIXACT_MEMBERGROUP_SIZE;
    let bshift = (offset % MULTIXACT_MEMBERS_PER_MEMBERGROUP) * MXACT_MEMBER_BITS_PER_XACT;
    let member_off = flags_off
        + MULTIXACT_FLAGBYTES_PER_GROUP
        + (offset % MULTIXACT_MEMBERS_PER_MEMBERGROUP) * 4;
    let bytes = page.as_bytes_mut();
    let member_off = member_off as usize;
    bytes[member_off..member_off + 4].copy_from_slice(&member.xid.to_le_bytes());
    let flags_off = flags_off as usize;
    let mut flags = u32::from_le_bytes([
        bytes[flags_off],
        bytes[flags_off + 1],
        bytes[flags_off + 2],
        bytes[flags_off + 3],
    ]);
    flags &= !(((1u32 << MXACT_MEMBER_BITS_PER_XACT) - 1) << bshift);
    flags |= u32::from(member.status) << bshift;
    bytes[flags_off..flags_off + 4].copy_from_slice(&flags.to_le_bytes());
}

/// TransactionIdIsNormal.
fn xid_is_normal(xid: u32) -> bool {
    xid >= FIRST_NORMAL_TRANSACTION_ID
}

/// TransactionIdPrecedes (transam.c): modulo-2^32 unless either is a permanent xid.
pub fn xid_precedes(a: u32, b: u32) -> bool {
    if !xid_is_normal(a) || !xid_is_normal(b) {
        return a < b;
    }
    (a.wrapping_sub(b) as i32) < 0
}

/// TransactionIdFollowsOrEquals.
pub fn xid_follows_or_equals(a: u32, b: u32) -> bool {
    if !xid_is_normal(a) || !xid_is_normal(b) {
        return a >= b;
    }
    (a.wrapping_sub(b) as i32) >= 0
}

/// MultiXactIdPrecedes and MultiXactOffsetPrecedes.
pub fn multi_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Mirrors AdvanceNextFullTransactionIdPastXid (varsup.c): the FullTransactionId
/// after `xid` if `xid` is at or past `next_full_xid`'s xid, keeping the epoch (one
/// more when the xid wrapped). `None` when the counter does not move.
pub fn advance_next_xid_past(next_full_xid: u64, xid: u32) -> Option<u64> {
    let next_xid = next_full_xid as u32;
    if !xid_follows_or_equals(xid, next_xid) {
        return None;
    }
    // TransactionIdAdvance: skip the permanent xids on wraparound.
    let mut advanced = xid.wrapping_add(1);
    if advanced < FIRST_NORMAL_TRANSACTION_ID {
        advanced = FIRST_NORMAL_TRANSACTION_ID;
    }
    let mut epoch = (next_full_xid >> 32) as u32;
    if advanced < next_xid {
        epoch = epoch.wrapping_add(1);
    }
    Some((u64::from(epoch) << 32) | u64::from(advanced))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clog_bits_are_two_per_xid_low_bits_first() {
        let mut page = Page::zeroed();
        clog_set_status(&mut page, 3, 1);
        clog_set_status(&mut page, 4, 2);
        clog_set_status(&mut page, CLOG_XACTS_PER_PAGE + 5, 1);
        // xid 3: byte 0 bits 6-7; xid 4: byte 1 bits 0-1; xid 32773: byte 1 bits 2-3.
        assert_eq!(page.as_bytes()[0], 0b0100_0000);
        assert_eq!(page.as_bytes()[1], 0b0000_0110);
        assert_eq!(clog_status(&page, 4), 2);
        clog_set_status(&mut page, 4, 1);
        assert_eq!(clog_status(&page, 4), 1);
        assert_eq!(clog_page(CLOG_XACTS_PER_PAGE * 3 + 1), 3);
    }

    #[test]
    fn multixact_layout_matches_multixact_c() {
        assert_eq!(MULTIXACT_MEMBERS_PER_PAGE, 1636);
        assert_eq!(MULTIXACT_OFFSETS_PER_PAGE, 2048);
        let mut page = Page::zeroed();
        // Member 5: group 1 (bytes 20..40), slot 1: flags byte 21, xid at 28.
        set_multixact_member(
            &mut page,
            &MemberWrite {
                offset: 5,
                xid: 0xAABBCCDD,
                status: 3,
            },
        );
        assert_eq!(page.as_bytes()[21], 3);
        assert_eq!(&page.as_bytes()[28..32], &0xAABBCCDDu32.to_le_bytes());
        assert_eq!(member_page(1636), 1);
        assert_eq!(multixact_offset_position(2049), (1, 1));
    }

    /// Mirrors SlruPagePrecedesTestOffset (slru.c, run by Postgres in assert-enabled
    /// builds) for one PagePrecedes function.
    fn page_precedes_test_offset(precedes: fn(u32, u32) -> bool, per_page: u32, offset: u32) {
        let lhs = per_page + offset; // skip the first page to avoid non-normal XIDs
        let rhs = lhs.wrapping_add(1 << 31);
        assert!(xid_precedes(lhs, rhs) && xid_precedes(rhs, lhs));
        assert!(!precedes(lhs / per_page, lhs / per_page));
        assert!(!precedes(lhs / per_page, rhs / per_page));
        assert!(!precedes(rhs / per_page, lhs / per_page));
        assert!(!precedes(
            lhs.wrapping_sub(per_page) / per_page,
            rhs / per_page
        ));
        let back = |pages: u32| lhs.wrapping_sub(pages * per_page) / per_page;
        assert!(precedes(rhs / per_page, back(3)));
        assert!(precedes(rhs / per_page, back(2)));
        assert!(precedes(rhs / per_page, back(1)) || !(1u32 << 31).is_multiple_of(per_page));
        assert!(
            precedes((lhs + per_page) / per_page, rhs / per_page)
                || !(1u32 << 31).is_multiple_of(per_page)
        );
        assert!(precedes((lhs + 2 * per_page) / per_page, rhs / per_page));
        assert!(precedes((lhs + 3 * per_page) / per_page, rhs / per_page));
        assert!(!precedes(rhs / per_page, (lhs + per_page) / per_page));

        // The newest xid assigned is in the last, then the first, page of the second
        // segment: that segment must not be deleted.
        for newest_page in [2 * SLRU_PAGES_PER_SEGMENT - 1, SLRU_PAGES_PER_SEGMENT] {
            let newest = newest_page * per_page + offset;
            let oldest = newest.wrapping_add(1).wrapping_sub(1 << 31);
            let oldest_page = oldest / per_page;
            assert!(!slru_may_delete_segment(
                precedes,
                newest_page - newest_page % SLRU_PAGES_PER_SEGMENT,
                oldest_page
            ));
        }
    }

    #[test]
    fn page_comparisons_pass_postgres_own_unit_tests() {
        for (precedes, per_page) in [
            (
                clog_page_precedes as fn(u32, u32) -> bool,
                CLOG_XACTS_PER_PAGE,
            ),
            (multixact_offset_page_precedes, MULTIXACT_OFFSETS_PER_PAGE),
        ] {
            for offset in [0, per_page / 2, per_page - 1] {
                page_precedes_test_offset(precedes, per_page, offset);
            }
        }
    }

    #[test]
    fn segments_go_only_when_wholly_before_the_cutoff() {
        // Cutoff at segment 2's first page: segments 0 and 1 go, 2 stays.
        let may = |segno: u32, cutoff| {
            slru_may_delete_segment(clog_page_precedes, segno * SLRU_PAGES_PER_SEGMENT, cutoff)
        };
        assert!(may(0, 64) && may(1, 64) && !may(2, 64));
        // A cutoff inside segment 1 keeps it.
        assert!(may(0, 63) && !may(1, 63));
        // Modulo 2^32: the last segment (0FFF) precedes page 0. Segments less than half
        // the xid space ahead of the cutoff stay (2049); so does the one starting 2^31
        // xids after the cutoff page (2050: CLOGPagePrecedes' edge case, part of its
        // first page is not expendable); every later one is older and goes.
        assert!(may(0xFFF, 0) && !may(0, 0));
        assert!(!may(2049, 64) && !may(2050, 64) && may(2051, 64));
        assert_eq!((0..4096).filter(|segno| !may(*segno, 64)).count(), 2049);
        // The offsets SLRU: its last segment precedes page 0 once multixacts wrapped.
        let off = |segno: u32, cutoff| {
            slru_may_delete_segment(
                multixact_offset_page_precedes,
                segno * SLRU_PAGES_PER_SEGMENT,
                cutoff,
            )
        };
        assert!(off(0xFFFF, 0) && !off(0, 0) && off(0, 32) && !off(1, 32));
        assert_eq!(previous_multixact_id(1), MAX_MULTIXACT_ID);
        assert_eq!(previous_multixact_id(70_000), 69_999);
    }

    #[test]
    fn members_truncation_follows_postgres_loop_over_the_wraparound() {
        // PerformMembersTruncation's loop, literally.
        let deleted_by_loop = |start: u32, end: u32| {
            let max_segment = member_segment(MAX_MULTIXACT_OFFSET);
            let mut segment = member_segment(start);
            let end_segment = member_segment(end);
            let mut deleted = Vec::new();
            while segment != end_segment {
                deleted.push(segment);
                segment = if segment == max_segment {
                    0
                } else {
                    segment + 1
                };
            }
            deleted
        };
        let per_segment = MULTIXACT_MEMBERS_PER_PAGE * SLRU_PAGES_PER_SEGMENT;
        assert_eq!(member_segment(MAX_MULTIXACT_OFFSET), 0x14078);
        for (start, end) in [
            (0, 0),
            (5, 10),
            (0, 2 * per_segment + 7),
            (per_segment - 1, per_segment),
            (u32::MAX - 1000, 5000),
            (u32::MAX - 1000, 3 * per_segment),
            (u32::MAX - 1000, u32::MAX),
        ] {
            let expected = deleted_by_loop(start, end);
            let candidates = (0..=0x14078u32).chain([0x14079, u32::MAX]);
            let ours: Vec<u32> = candidates
                .filter(|segno| member_segment_truncated(*segno, start, end))
                .collect();
            let mut expected_sorted = expected.clone();
            expected_sorted.sort_unstable();
            assert_eq!(ours, expected_sorted, "members [{start}, {end})");
        }
        assert_eq!(deleted_by_loop(u32::MAX - 1000, 5000), vec![0x14078]);
    }

    #[test]
    fn next_xid_advances_like_varsup() {
        assert_eq!(advance_next_xid_past(724, 723), None);
        assert_eq!(advance_next_xid_past(724, 724), Some(725));
        assert_eq!(advance_next_xid_past(724, 0), None);
        // Wraparound: xid 2^32-1 moves to the next epoch's first normal xid.
        let near_end = (5u64 << 32) | u64::from(u32::MAX - 1);
        assert_eq!(
            advance_next_xid_past(near_end, u32::MAX),
            Some((6u64 << 32) | 3)
        );
        assert!(xid_precedes(u32::MAX - 10, 5));
        assert!(!xid_precedes(5, u32::MAX - 10));
    }
}
