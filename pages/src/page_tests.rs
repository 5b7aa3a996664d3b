//! Unit tests of the bufpage.c ports against layouts computed by hand from the C code.

use super::*;

const HEAP: AddItemFlags = AddItemFlags {
    overwrite: false,
    is_heap: true,
};
const OVERWRITE_HEAP: AddItemFlags = AddItemFlags {
    overwrite: true,
    is_heap: true,
};
const INDEX: AddItemFlags = AddItemFlags {
    overwrite: false,
    is_heap: false,
};

/// Compares two pages, reporting the first differing bytes instead of 8 KiB dumps.
#[track_caller]
fn assert_same_bytes(got: &Page, want: &Page) {
    let diffs: Vec<String> = got
        .as_bytes()
        .iter()
        .zip(want.as_bytes().iter())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .take(8)
        .map(|(at, (a, b))| format!("@{at}: got {a:#04x} want {b:#04x}"))
        .collect();
    assert!(diffs.is_empty(), "pages differ: {}", diffs.join(", "));
}

fn item(len: usize, fill: u8) -> Vec<u8> {
    vec![fill; len]
}

fn new_page(special: usize) -> Page {
    let mut page = Page::zeroed();
    page.init(special);
    page
}

fn lp(page: &Page, offnum: u16) -> (usize, u8, usize) {
    let id = page.item_id(offnum).expect("line pointer");
    (id.lp_off(), id.lp_flags(), id.lp_len())
}

#[test]
fn page_init_lays_out_an_empty_page() {
    let mut page = Page::zeroed();
    page.as_bytes_mut().fill(0xAA);
    page.init(10); // MAXALIGNed to 16
    let b = page.as_bytes();
    // pd_lsn, pd_checksum, pd_flags zero; lower 24, upper = special = 8176, 0x2004.
    assert_eq!(&b[0..12], &[0; 12]);
    assert_eq!(&b[12..14], &24u16.to_le_bytes());
    assert_eq!(&b[14..16], &8176u16.to_le_bytes());
    assert_eq!(&b[16..18], &8176u16.to_le_bytes());
    assert_eq!(&b[18..20], &[0x04, 0x20]);
    assert!(b[20..].iter().all(|&x| x == 0), "everything else zeroed");
    assert_eq!(page.page_size(), 8192);
    assert_eq!(page.layout_version(), 4);
    assert!(!page.is_new());
    assert!(page.is_empty());
    assert_eq!(page.max_offset_number(), 0);
    assert!(Page::zeroed().is_new());
}

#[test]
fn header_fields_are_little_endian_at_their_offsets() {
    let mut page = Page::zeroed();
    page.set_lsn(tarn_wal::Lsn(0x0000_0001_0203_0405));
    page.set_checksum(0xBEEF);
    page.set_flags(PD_ALL_VISIBLE);
    page.set_prune_xid(0x0A0B_0C0D);
    let b = page.as_bytes();
    // xlogid (high half) first, then xrecoff.
    assert_eq!(&b[0..8], &[1, 0, 0, 0, 0x05, 0x04, 0x03, 0x02]);
    assert_eq!(&b[8..10], &[0xEF, 0xBE]);
    assert_eq!(&b[10..12], &[4, 0]);
    assert_eq!(&b[20..24], &[0x0D, 0x0C, 0x0B, 0x0A]);
    assert_eq!(page.lsn(), tarn_wal::Lsn(0x0000_0001_0203_0405));
}

#[test]
fn item_id_packs_bitfields_low_bits_first() {
    // lp_off:15 | lp_flags:2 | lp_len:15
    let id = ItemId::normal(8152, 40);
    assert_eq!(id.raw(), 8152 | (1 << 15) | (40 << 17));
    assert_eq!(
        (id.lp_off(), id.lp_flags(), id.lp_len()),
        (8152, LP_NORMAL, 40)
    );
    let redirect = ItemId::redirect(7);
    assert_eq!(redirect.raw(), 7 | (2 << 15));
    assert!(redirect.is_redirected() && !redirect.has_storage());
    assert_eq!(ItemId::dead().raw(), 3 << 15);
    assert_eq!(
        ItemId::normal(8152, 40).with_flags(LP_UNUSED).raw(),
        8152 | (40 << 17)
    );
}

#[test]
fn add_item_places_items_downward_from_special() {
    let mut page = new_page(0);
    // Garbage where the padding of the first item will be: PageAddItem copies only
    // `size` bytes, so padding keeps its old contents.
    page.as_bytes_mut()[8160 + 30..8192].fill(0xEE);
    assert_eq!(page.add_item_extended(&item(30, 1), 0, HEAP), Ok(1));
    assert_eq!(page.add_item_extended(&item(40, 2), 0, HEAP), Ok(2));
    assert_eq!(page.add_item_extended(&item(8, 3), 0, HEAP), Ok(3));
    assert_eq!(lp(&page, 1), (8160, LP_NORMAL, 30));
    assert_eq!(lp(&page, 2), (8120, LP_NORMAL, 40));
    assert_eq!(lp(&page, 3), (8112, LP_NORMAL, 8));
    assert_eq!((page.lower(), page.upper()), (36, 8112));
    let b = page.as_bytes();
    assert!(b[8160..8190].iter().all(|&x| x == 1));
    assert_eq!(&b[8190..8192], &[0xEE, 0xEE]);
    assert!(b[8120..8160].iter().all(|&x| x == 2));
    // Line pointer bytes.
    assert_eq!(&b[24..28], &ItemId::normal(8160, 30).raw().to_le_bytes());
    assert_eq!(page.free_space(), 8112 - 36 - 4);
    assert_eq!(page.exact_free_space(), 8112 - 36);
}

#[test]
fn add_item_at_an_offset_shifts_later_line_pointers() {
    let mut page = new_page(16);
    page.add_item_extended(&item(16, 1), 0, INDEX).expect("add");
    page.add_item_extended(&item(16, 2), 0, INDEX).expect("add");
    // Insert at 1 without overwrite: the old 1 and 2 become 2 and 3.
    assert_eq!(page.add_item_extended(&item(24, 3), 1, INDEX), Ok(1));
    assert_eq!(lp(&page, 1), (8176 - 32 - 24, LP_NORMAL, 24));
    assert_eq!(lp(&page, 2), (8160, LP_NORMAL, 16));
    assert_eq!(lp(&page, 3), (8144, LP_NORMAL, 16));
    assert_eq!(page.lower(), 36);
    // Beyond the first free slot is refused.
    assert_eq!(
        page.add_item_extended(&item(8, 4), 5, INDEX),
        Err(PageError::OffsetTooLarge {
            offnum: 5,
            limit: 4
        })
    );
}

#[test]
fn add_item_overwrite_and_free_line_pointer_search() {
    let mut page = new_page(0);
    for fill in 1..=3 {
        page.add_item_extended(&item(24, fill), 0, HEAP)
            .expect("add");
    }
    // Overwriting a used slot is refused, page unchanged.
    let before = page.clone();
    assert_eq!(
        page.add_item_extended(&item(24, 9), 2, OVERWRITE_HEAP),
        Err(PageError::ItemIdInUse { offnum: 2 })
    );
    assert_eq!(page, before);
    // Free slot 2, then PageAddItem with no offset finds it only if the hint says so.
    page.set_item_id(2, ItemId::UNUSED).expect("set");
    assert_eq!(page.add_item_extended(&item(8, 4), 0, HEAP), Ok(4));
    page.set_has_free_line_pointers(true);
    assert_eq!(page.add_item_extended(&item(8, 5), 0, HEAP), Ok(2));
    // Overwrite into the unused slot does not grow the array.
    page.set_item_id(3, ItemId::UNUSED).expect("set");
    let lower = page.lower();
    assert_eq!(
        page.add_item_extended(&item(8, 6), 3, OVERWRITE_HEAP),
        Ok(3)
    );
    assert_eq!(page.lower(), lower);
    // A wrong hint is reset when the search finds nothing.
    page.set_has_free_line_pointers(true);
    assert_eq!(page.add_item_extended(&item(8, 7), 0, HEAP), Ok(5));
    assert!(!page.has_free_line_pointers());
}

#[test]
fn add_item_limits() {
    let mut page = new_page(0);
    assert_eq!(
        page.add_item_extended(&item(8, 1), 292, OVERWRITE_HEAP),
        Err(PageError::OffsetTooLarge {
            offnum: 292,
            limit: 1
        })
    );
    for _ in 0..291 {
        page.add_item_extended(&item(1, 1), 0, INDEX).expect("add");
    }
    assert_eq!(
        page.add_item_extended(&item(1, 1), 0, HEAP),
        Err(PageError::TooManyHeapTuples { offnum: 292 })
    );
    assert_eq!(page.heap_free_space(), 0, "291 line pointers and none free");
    assert!(page.free_space() > 0);
    page.set_item_id(5, ItemId::UNUSED).expect("set");
    page.set_has_free_line_pointers(true);
    assert_eq!(page.heap_free_space(), page.free_space());

    let mut full = new_page(0);
    assert_eq!(
        full.add_item_extended(&item(8161, 1), 0, INDEX),
        Err(PageError::NoSpace {
            size: 8161,
            lower: 24,
            upper: 8192
        })
    );
    // MAXALIGN(8160) + 24 + 4 bytes of line pointer: exactly full.
    assert_eq!(full.add_item_extended(&item(8160, 1), 0, INDEX), Ok(1));
    // Corrupt pointers are refused (PANIC in Postgres).
    let mut corrupt = new_page(0);
    corrupt.set_lower(8000);
    corrupt.set_upper(100);
    assert!(matches!(
        corrupt.add_item_extended(&item(8, 1), 0, HEAP),
        Err(PageError::CorruptPointers { .. })
    ));
}

/// The page PageRepairFragmentation must produce, computed naively: tuples with
/// storage in line pointer order, packed down from pd_special, bytes below the new
/// pd_upper untouched.
fn naive_repair(page: &Page) -> Page {
    let mut expected = page.clone();
    let special = usize::from(page.special());
    let mut upper = special;
    let nline = page.max_offset_number();
    let mut last_used = 0;
    for offnum in 1..=nline {
        let id = page.item_id(offnum).expect("lp");
        if id.is_used() {
            last_used = offnum;
            if id.has_storage() {
                let len = max_align(id.lp_len());
                upper -= len;
                expected.as_bytes_mut()[upper..upper + len]
                    .copy_from_slice(&page.as_bytes()[id.lp_off()..id.lp_off() + len]);
                expected
                    .set_item_id(offnum, id.with_off(upper))
                    .expect("lp");
            }
        } else {
            expected.set_item_id(offnum, ItemId::UNUSED).expect("lp");
        }
    }
    let trailing = usize::from(nline - last_used);
    let any_unused_kept =
        (1..=last_used).any(|offnum| !page.item_id(offnum).expect("lp").is_used());
    expected.set_has_free_line_pointers(any_unused_kept);
    expected.set_upper(upper as u16);
    expected.set_lower(page.lower() - (trailing * ITEM_ID_SIZE) as u16);
    expected
}

#[test]
fn repair_fragmentation_presorted_keeps_tail_tuples_in_place() {
    let mut page = new_page(0);
    for (fill, len) in [(1u8, 30usize), (2, 50), (3, 20), (4, 44), (5, 8)] {
        page.add_item_extended(&item(len, fill), 0, HEAP)
            .expect("add");
    }
    // 1: 8160 (32), 2: 8104 (56), 3: 8080 (24), 4: 8032 (48), 5: 8024 (8)
    assert_eq!(lp(&page, 4).0, 8032);
    page.set_item_id(2, ItemId::UNUSED).expect("set");
    page.set_item_id(4, ItemId::dead()).expect("set");
    let expected = naive_repair(&page);
    page.repair_fragmentation().expect("repair");
    assert_eq!(lp(&page, 1), (8160, LP_NORMAL, 30));
    assert_eq!(lp(&page, 3), (8136, LP_NORMAL, 20));
    assert_eq!(lp(&page, 4), (0, LP_DEAD, 0));
    assert_eq!(lp(&page, 5), (8128, LP_NORMAL, 8));
    assert_eq!(page.upper(), 8128);
    assert_eq!(page.lower(), 44, "no trailing unused line pointers");
    assert!(page.has_free_line_pointers(), "line pointer 2 is free");
    assert_same_bytes(&page, &expected);
    assert!(page.as_bytes()[8136..8156].iter().all(|&x| x == 3));
}

#[test]
fn repair_fragmentation_truncates_trailing_unused_and_clears_hint() {
    let mut page = new_page(0);
    for fill in 1..=4u8 {
        page.add_item_extended(&item(24, fill), 0, HEAP)
            .expect("add");
    }
    page.set_item_id(3, ItemId::UNUSED).expect("set");
    page.set_item_id(4, ItemId::UNUSED).expect("set");
    page.set_has_free_line_pointers(true);
    page.repair_fragmentation().expect("repair");
    assert_eq!(page.lower(), 32);
    assert_eq!(page.upper(), 8192 - 48);
    assert!(!page.has_free_line_pointers());

    // No tuples with storage at all: pd_upper jumps to pd_special.
    let mut empty = new_page(0);
    empty.add_item_extended(&item(24, 1), 0, HEAP).expect("add");
    empty.add_item_extended(&item(24, 2), 0, HEAP).expect("add");
    empty.set_item_id(1, ItemId::redirect(2)).expect("set");
    empty.set_item_id(2, ItemId::UNUSED).expect("set");
    empty.repair_fragmentation().expect("repair");
    assert_eq!((empty.lower(), empty.upper()), (28, 8192));
}

#[test]
fn repair_fragmentation_unsorted_moves_tuples_into_line_pointer_order() {
    let mut page = new_page(0);
    for fill in 1..=8u8 {
        page.add_item_extended(&item(16 + usize::from(fill), fill), 0, HEAP)
            .expect("add");
    }
    // Free 2 and 3, then reuse slot 2 for a new tuple placed lowest on the page:
    // line pointer order is no longer descending offset order.
    page.set_item_id(2, ItemId::UNUSED).expect("set");
    page.set_item_id(3, ItemId::UNUSED).expect("set");
    page.add_item_extended(&item(40, 9), 2, OVERWRITE_HEAP)
        .expect("add");
    page.set_item_id(6, ItemId::dead()).expect("set");
    let expected = naive_repair(&page);
    page.repair_fragmentation().expect("repair");
    assert_same_bytes(&page, &expected);
    // Tuple 2 (the newest) now sits right below tuple 1.
    assert_eq!(lp(&page, 1).0, 8192 - 24);
    assert_eq!(lp(&page, 2).0, 8192 - 24 - 40);

    // Most tuples removed: the tuple-by-tuple copy path (nitems < maxoff / 4).
    let mut sparse = new_page(0);
    for fill in 1..=20u8 {
        sparse
            .add_item_extended(&item(8 * usize::from(fill % 3 + 1), fill), 0, HEAP)
            .expect("add");
    }
    for offnum in [
        1u16, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19,
    ] {
        sparse.set_item_id(offnum, ItemId::UNUSED).expect("set");
    }
    sparse.set_item_id(2, ItemId::UNUSED).expect("set");
    sparse
        .add_item_extended(&item(12, 99), 2, OVERWRITE_HEAP)
        .expect("add");
    let expected = naive_repair(&sparse);
    sparse.repair_fragmentation().expect("repair");
    assert_same_bytes(&sparse, &expected);
}

/// A small deterministic generator (xorshift) for randomised layout checks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn repair_fragmentation_matches_the_naive_layout_on_random_pages() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2000 {
        let mut page = new_page(0);
        // Random inserts, deletes (unused / dead / redirect) and reinserts.
        for _ in 0..rng.below(120) {
            let len = 1 + rng.below(200) as usize;
            let fill = rng.below(256) as u8;
            match rng.below(4) {
                0 if page.max_offset_number() > 0 => {
                    let offnum = 1 + rng.below(u64::from(page.max_offset_number())) as u16;
                    let state = match rng.below(3) {
                        0 => ItemId::UNUSED,
                        1 => ItemId::dead(),
                        _ => ItemId::redirect(1),
                    };
                    page.set_item_id(offnum, state).expect("set");
                    page.set_has_free_line_pointers(true);
                }
                _ => {
                    if page.add_item_extended(&item(len, fill), 0, HEAP).is_err() {
                        break;
                    }
                }
            }
        }
        let expected = naive_repair(&page);
        let mut repaired = page.clone();
        repaired.repair_fragmentation().expect("repair");
        assert_same_bytes(&repaired, &expected);
        let any_unused = (1..=repaired.max_offset_number())
            .any(|offnum| !repaired.item_id(offnum).expect("lp").is_used());
        assert_eq!(repaired.has_free_line_pointers(), any_unused);
    }
}

#[test]
fn truncate_line_pointer_array_keeps_the_first_line_pointer() {
    let mut page = new_page(0);
    for fill in 1..=4u8 {
        page.add_item_extended(&item(8, fill), 0, HEAP)
            .expect("add");
    }
    // [unused, normal, unused, unused]: drop 3 and 4, keep the hint for 1.
    page.set_item_id(1, ItemId::UNUSED).expect("set");
    page.set_item_id(3, ItemId::UNUSED).expect("set");
    page.set_item_id(4, ItemId::UNUSED).expect("set");
    let upper = page.upper();
    page.truncate_line_pointer_array().expect("truncate");
    assert_eq!(page.lower(), 32);
    assert_eq!(page.upper(), upper, "tuple space untouched");
    assert!(page.has_free_line_pointers());

    // [unused, unused]: the first line pointer stays, and it is free.
    page.set_item_id(2, ItemId::UNUSED).expect("set");
    page.truncate_line_pointer_array().expect("truncate");
    assert_eq!(page.lower(), 28);
    assert!(page.has_free_line_pointers());

    // [normal, unused]: drop 2, no free line pointer left.
    let mut other = new_page(0);
    other.add_item_extended(&item(8, 1), 0, HEAP).expect("add");
    other.add_item_extended(&item(8, 2), 0, HEAP).expect("add");
    other.set_item_id(2, ItemId::UNUSED).expect("set");
    other.set_has_free_line_pointers(true);
    other.truncate_line_pointer_array().expect("truncate");
    assert_eq!(other.lower(), 28);
    assert!(!other.has_free_line_pointers());
}

fn index_page(lens: &[usize]) -> Page {
    let mut page = new_page(16);
    for (i, len) in lens.iter().enumerate() {
        page.add_item_extended(&item(*len, i as u8 + 1), 0, INDEX)
            .expect("add");
    }
    page
}

#[test]
fn index_tuple_delete_closes_both_gaps() {
    // special 8176; items: 1 @8160 (16), 2 @8136 (24), 3 @8128 (8)
    let mut page = index_page(&[16, 20, 8]);
    assert_eq!(lp(&page, 2), (8136, LP_NORMAL, 20));
    page.index_tuple_delete(2).expect("delete");
    assert_eq!(page.max_offset_number(), 2);
    assert_eq!(lp(&page, 1), (8160, LP_NORMAL, 16));
    assert_eq!(lp(&page, 2), (8152, LP_NORMAL, 8), "old 3 moved up by 24");
    assert_eq!((page.lower(), page.upper()), (32, 8152));
    assert!(page.as_bytes()[8152..8160].iter().all(|&x| x == 3));
    assert_eq!(
        page.index_tuple_delete(3),
        Err(PageError::InvalidOffset { offnum: 3, max: 2 })
    );
}

#[test]
fn index_multi_delete_compacts_survivors() {
    // 1 @8160(16) 2 @8144(16) 3 @8128(16) 4 @8104(24) 5 @8096(8)
    let mut page = index_page(&[16, 16, 16, 24, 8]);
    page.index_multi_delete(&[1, 3, 4]).expect("delete");
    assert_eq!(page.max_offset_number(), 2);
    assert_eq!(lp(&page, 1), (8160, LP_NORMAL, 16));
    assert_eq!(lp(&page, 2), (8152, LP_NORMAL, 8));
    assert_eq!(page.upper(), 8152);
    assert!(page.as_bytes()[8160..8176].iter().all(|&x| x == 2));
    assert!(page.as_bytes()[8152..8160].iter().all(|&x| x == 5));

    // Two items: retail deletes, last first.
    let mut page = index_page(&[16, 16, 16]);
    page.index_multi_delete(&[1, 3]).expect("delete");
    assert_eq!(page.max_offset_number(), 1);
    assert_eq!(lp(&page, 1), (8160, LP_NORMAL, 16));
    assert!(page.as_bytes()[8160..8176].iter().all(|&x| x == 2));

    let mut page = index_page(&[16, 16, 16, 16]);
    assert_eq!(
        page.index_multi_delete(&[3, 1, 2]),
        Err(PageError::IncorrectIndexOffsets)
    );
}

#[test]
fn index_tuple_delete_no_compact_leaves_an_unused_line_pointer() {
    let mut page = index_page(&[16, 24, 8]);
    page.index_tuple_delete_no_compact(1).expect("delete");
    assert_eq!(page.max_offset_number(), 3);
    assert_eq!(lp(&page, 1), (0, LP_UNUSED, 0));
    assert_eq!(lp(&page, 2), (8152, LP_NORMAL, 24), "moved up by 16");
    assert_eq!(lp(&page, 3), (8144, LP_NORMAL, 8));
    assert_eq!(page.upper(), 8144);
    // The last line pointer is removed outright.
    page.index_tuple_delete_no_compact(3).expect("delete");
    assert_eq!(page.max_offset_number(), 2);
    assert_eq!(page.upper(), 8152);
}

#[test]
fn index_tuple_overwrite_shifts_data_before_the_tuple() {
    // 1 @8160(16) 2 @8144(16) 3 @8136(8)
    let mut page = index_page(&[16, 16, 8]);
    assert_eq!(page.index_tuple_overwrite(2, &item(30, 7)), Ok(true));
    // Grew by 16: tuple 2 now @8128, tuple 3 moved down to @8120.
    assert_eq!(lp(&page, 1), (8160, LP_NORMAL, 16));
    assert_eq!(lp(&page, 2), (8128, LP_NORMAL, 30));
    assert_eq!(lp(&page, 3), (8120, LP_NORMAL, 8));
    assert_eq!(page.upper(), 8120);
    assert!(page.as_bytes()[8120..8128].iter().all(|&x| x == 3));
    assert!(page.as_bytes()[8128..8158].iter().all(|&x| x == 7));
    // Shrink back.
    assert_eq!(page.index_tuple_overwrite(2, &item(4, 8)), Ok(true));
    assert_eq!(lp(&page, 2), (8152, LP_NORMAL, 4));
    assert_eq!(lp(&page, 3), (8144, LP_NORMAL, 8));
    assert_eq!(page.upper(), 8144);
    // Too big: false, page unchanged.
    let before = page.clone();
    assert_eq!(page.index_tuple_overwrite(2, &item(8200, 1)), Ok(false));
    assert_eq!(page, before);
}

#[test]
fn free_space_functions() {
    let mut page = new_page(0);
    assert_eq!(page.free_space(), 8192 - 24 - 4);
    assert_eq!(page.free_space_for_multiple_tuples(3), 8192 - 24 - 12);
    page.set_upper(26);
    assert_eq!(page.free_space(), 0);
    assert_eq!(page.exact_free_space(), 2);
    page.set_upper(20);
    assert_eq!(page.exact_free_space(), 0);
}

#[test]
fn prunable_keeps_the_oldest_xid() {
    let mut page = new_page(0);
    page.set_prunable(100);
    assert_eq!(page.prune_xid(), 100);
    page.set_prunable(200);
    assert_eq!(page.prune_xid(), 100);
    page.set_prunable(50);
    assert_eq!(page.prune_xid(), 50);
    // Wraparound: 0xFFFF_FFF0 precedes 50 modulo 2^32.
    page.set_prunable(0xFFFF_FFF0);
    assert_eq!(page.prune_xid(), 0xFFFF_FFF0);
}

#[test]
fn corrupt_line_pointers_are_errors_not_panics() {
    let mut page = new_page(0);
    page.add_item_extended(&item(16, 1), 0, HEAP).expect("add");
    page.set_item_id(1, ItemId::normal(8190, 30)).expect("set");
    assert!(matches!(
        page.repair_fragmentation(),
        Err(PageError::CorruptLinePointer { .. })
    ));
    assert!(page.item(1).is_err());
    assert!(page.index_tuple_delete(1).is_err());
    let mut page = new_page(0);
    page.set_special(8191);
    assert!(matches!(
        page.repair_fragmentation(),
        Err(PageError::CorruptPointers { .. })
    ));
}
