//! Btree and sequence redo of hand-built records. The expected pages are built with
//! the same bufpage primitives, following the C step by step; byte-exactness against
//! Postgres itself is the redo oracle's job (tests/tests/redo_oracle.rs).

use tarn_wal::Lsn;
use tarn_wal::decode::{BlockRef, DecodedRecord, RelFileNode};

use super::*;
use crate::btree::posting::form_posting;
use crate::btree::{
    BTP_DELETED, BTP_HAS_FULLXID, BTP_ROOT, ItemPointer, SIZE_OF_BT_PAGE_OPAQUE, set_info, set_tid,
};
use crate::redo::seq::{SEQ_MAGIC, XLOG_SEQ_LOG};
use crate::redo::test_records::{self, RecordAt};
use crate::redo::{RM_BTREE_ID, RM_SEQ_ID, RM_STANDBY_ID, apply_record, registers_no_blocks};

const LSN: Lsn = Lsn(0x0200_0000);
const END_LSN: Lsn = Lsn(0x0200_0080);

fn rel() -> RelFileNode {
    RelFileNode {
        spc_node: 1663,
        db_node: 5,
        rel_node: 16500,
    }
}

fn block_ref(block_id: u8, block: u32, will_init: bool, data: Vec<u8>) -> BlockRef {
    test_records::block_ref(rel(), block_id, block, will_init, data)
}

fn record(rmid: u8, info: u8, blocks: Vec<BlockRef>, main_data: Vec<u8>) -> DecodedRecord {
    RecordAt {
        lsn: LSN,
        end_lsn: END_LSN,
        xid: 900,
    }
    .record(rmid, info, blocks, main_data)
}

fn tid(block: u32, offset: u16) -> ItemPointer {
    ItemPointer { block, offset }
}

/// A 16-byte leaf tuple with an int4 key.
fn leaf(key: u32, heap: ItemPointer) -> Vec<u8> {
    let mut tuple = vec![0u8; 16];
    set_tid(&mut tuple, heap).expect("tid");
    set_info(&mut tuple, 16).expect("info");
    tuple[8..12].copy_from_slice(&key.to_le_bytes());
    tuple
}

fn posting(key: u32, tids: &[ItemPointer]) -> Vec<u8> {
    let base = leaf(key, tids[0]);
    let mut out = Vec::new();
    form_posting(&IndexTuple::parse(&base).expect("base"), tids, &mut out).expect("posting");
    out
}

/// A 16-byte pivot tuple with a downlink.
fn pivot(key: u32, child: u32) -> Vec<u8> {
    let mut tuple = leaf(key, tid(child, 1));
    set_info(&mut tuple, 16 | crate::btree::INDEX_ALT_TID_MASK).expect("info");
    tuple
}

fn btree_page(opaque: BtPageOpaque, items: &[Vec<u8>]) -> Page {
    let mut page = Page::zeroed();
    bt_pageinit(&mut page);
    opaque.write(&mut page).expect("opaque");
    for item in items {
        page.add_item_extended(item, 0, AddItemFlags::default())
            .expect("add");
    }
    page.set_lsn(Lsn(0x0100_0000));
    page
}

fn leaf_opaque(prev: u32, next: u32) -> BtPageOpaque {
    BtPageOpaque {
        prev,
        next,
        level: 0,
        flags: BTP_LEAF,
        cycleid: 0,
    }
}

fn items(page: &Page) -> Vec<Vec<u8>> {
    (1..=page.max_offset_number())
        .map(|offnum| page.item(offnum).expect("item").to_vec())
        .collect()
}

fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

fn metadata(root: u32, level: u32, fastroot: u32, fastlevel: u32, delpages: u32) -> Vec<u8> {
    let mut data = Vec::new();
    for value in [4, root, level, fastroot, fastlevel, delpages] {
        data.extend(le32(value));
    }
    data.extend([1, 0, 0, 0]); // allequalimage, padding
    data
}

#[test]
fn insert_leaf_and_the_lsn_interlock() {
    let mut page = btree_page(
        leaf_opaque(P_NONE, P_NONE),
        &[leaf(1, tid(1, 1)), leaf(3, tid(1, 3))],
    );
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_INSERT_LEAF,
        vec![block_ref(0, 1, false, leaf(2, tid(1, 2)))],
        le16(2).to_vec(),
    );
    apply_record(&rec, 0, &mut page).expect("insert");
    assert_eq!(
        items(&page),
        [leaf(1, tid(1, 1)), leaf(2, tid(1, 2)), leaf(3, tid(1, 3))]
    );
    assert_eq!(page.lsn(), END_LSN);
    // Already applied: BLK_DONE leaves the page alone.
    let before = page.clone();
    apply_record(&rec, 0, &mut page).expect("done");
    assert_eq!(page, before);
    // A leaf insert reads no child and no metapage.
    let mut other = Page::zeroed();
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_INSERT_LEAF,
        vec![
            block_ref(0, 1, false, leaf(2, tid(1, 2))),
            block_ref(1, 4, false, Vec::new()),
        ],
        le16(2).to_vec(),
    );
    assert!(matches!(
        apply_record(&rec, 1, &mut other),
        Err(RedoError::Malformed { .. })
    ));
}

#[test]
fn insert_upper_clears_the_childs_incomplete_split_and_insert_meta_writes_the_metapage() {
    let mut child = btree_page(
        BtPageOpaque {
            flags: BTP_LEAF | BTP_INCOMPLETE_SPLIT,
            ..leaf_opaque(P_NONE, 7)
        },
        &[leaf(1, tid(1, 1))],
    );
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_INSERT_META,
        vec![
            block_ref(0, 3, false, pivot(5, 7)),
            block_ref(1, 6, false, Vec::new()),
            block_ref(2, 0, true, metadata(3, 1, 3, 1, 0)),
        ],
        le16(2).to_vec(),
    );
    apply_record(&rec, 1, &mut child).expect("child");
    assert_eq!(BtPageOpaque::read(&child).expect("opaque").flags, BTP_LEAF);
    assert_eq!(child.lsn(), END_LSN);

    let mut meta = Page::zeroed();
    apply_record(&rec, 2, &mut meta).expect("meta");
    assert_eq!(
        (meta.lower(), meta.upper(), meta.special()),
        (72, 8176, 8176)
    );
    assert_eq!(
        BtMetaPageData::read(&meta),
        BtMetaPageData {
            magic: BTREE_MAGIC,
            version: 4,
            root: 3,
            level: 1,
            fastroot: 3,
            fastlevel: 1,
            last_cleanup_num_delpages: 0,
            last_cleanup_num_heap_tuples: -1.0,
            allequalimage: true,
        }
    );
    assert_eq!(BtPageOpaque::read(&meta).expect("opaque").flags, BTP_META);
    assert_eq!(meta.lsn(), END_LSN);
}

#[test]
fn insert_post_splits_the_posting_list_before_the_new_item() {
    let list = posting(5, &[tid(1, 1), tid(1, 3), tid(2, 1)]);
    let mut page = btree_page(leaf_opaque(P_NONE, P_NONE), &[list]);
    let mut data = le16(1).to_vec();
    data.extend(leaf(5, tid(1, 2)));
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_INSERT_POST,
        vec![block_ref(0, 1, false, data)],
        le16(2).to_vec(),
    );
    apply_record(&rec, 0, &mut page).expect("insert post");
    assert_eq!(
        items(&page),
        [
            posting(5, &[tid(1, 1), tid(1, 2), tid(1, 3)]),
            leaf(5, tid(2, 1))
        ]
    );
    // A posting offset outside the list is the ERROR Postgres raises.
    let mut page = btree_page(
        leaf_opaque(P_NONE, P_NONE),
        &[posting(5, &[tid(1, 1), tid(1, 3)])],
    );
    let mut data = le16(2).to_vec();
    data.extend(leaf(5, tid(1, 2)));
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_INSERT_POST,
        vec![block_ref(0, 1, false, data)],
        le16(2).to_vec(),
    );
    assert!(matches!(
        apply_record(&rec, 0, &mut page),
        Err(RedoError::Page {
            fault: PageFault::Btree(BtreeError::BadPostingSplit { .. }),
            ..
        })
    ));
}

/// The bytes pd_upper..pd_special of a page holding `items` (what _bt_split logs for
/// the right page).
fn page_contents(opaque: BtPageOpaque, items: &[Vec<u8>]) -> Vec<u8> {
    let page = btree_page(opaque, items);
    page.as_bytes()[usize::from(page.upper())..usize::from(page.special())].to_vec()
}

fn split_main(level: u32, firstrightoff: u16, newitemoff: u16, postingoff: u16) -> Vec<u8> {
    let mut main = le32(level).to_vec();
    main.extend(le16(firstrightoff));
    main.extend(le16(newitemoff));
    main.extend(le16(postingoff));
    main
}

#[test]
fn split_left_with_a_posting_split_and_the_new_item_last() {
    // Leaf block 1, rightmost: key1, key2, posting key3 [(1,1), (1,5)], key4.
    let original = btree_page(
        BtPageOpaque {
            flags: BTP_LEAF | BTP_HAS_GARBAGE,
            cycleid: 9,
            ..leaf_opaque(P_NONE, 8)
        },
        &[
            pivot(9, 0), // high key
            leaf(1, tid(1, 7)),
            leaf(2, tid(1, 8)),
            posting(3, &[tid(1, 1), tid(1, 5)]),
            leaf(4, tid(1, 9)),
        ],
    );
    // The new item (3, (1, 3)) splits the posting list at offset 1 and goes after it,
    // at offset 5, which is also the first offset moving right: it ends the left page.
    let right_items = [pivot(9, 0), leaf(4, tid(1, 9))];
    let mut left_data = leaf(3, tid(1, 3)); // orignewitem
    left_data.extend(pivot(4, 0)); // left high key
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_SPLIT_L,
        vec![
            block_ref(0, 1, false, left_data),
            block_ref(1, 6, true, page_contents(leaf_opaque(1, 8), &right_items)),
            block_ref(2, 8, false, Vec::new()),
        ],
        split_main(0, 5, 5, 1),
    );

    let mut left = original.clone();
    apply_record(&rec, 0, &mut left).expect("left");
    assert_eq!(
        items(&left),
        [
            pivot(4, 0),
            leaf(1, tid(1, 7)),
            leaf(2, tid(1, 8)),
            posting(3, &[tid(1, 1), tid(1, 3)]),
            leaf(3, tid(1, 5)),
        ]
    );
    assert_eq!(
        BtPageOpaque::read(&left).expect("opaque"),
        BtPageOpaque {
            prev: P_NONE,
            next: 6,
            level: 0,
            flags: BTP_LEAF | BTP_INCOMPLETE_SPLIT,
            cycleid: 0,
        }
    );
    assert_eq!(left.lsn(), END_LSN);

    let mut right = Page::zeroed();
    apply_record(&rec, 1, &mut right).expect("right");
    let mut want = btree_page(leaf_opaque(1, 8), &right_items);
    want.set_lsn(END_LSN);
    assert_eq!(right, want, "rebuilt byte for byte");

    let mut sibling = btree_page(leaf_opaque(1, P_NONE), &[leaf(10, tid(3, 1))]);
    apply_record(&rec, 2, &mut sibling).expect("sibling");
    assert_eq!(BtPageOpaque::read(&sibling).expect("opaque").prev, 6);
    // A leaf split has no child whose split it finishes.
    assert!(matches!(
        apply_record(&rec, 3, &mut Page::zeroed()),
        Err(RedoError::NoSuchBlock { .. })
    ));
}

#[test]
fn split_right_of_an_internal_page_finishes_the_childs_split() {
    let original = btree_page(
        BtPageOpaque {
            level: 1,
            flags: BTP_ROOT,
            ..leaf_opaque(P_NONE, P_NONE)
        },
        &[pivot(0, 10), pivot(5, 11), pivot(9, 12)],
    );
    // The new downlink (7 -> 14) goes right, at offset 3 of the original page.
    let right_items = [pivot(7, 14), pivot(9, 12)];
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_SPLIT_R,
        vec![
            block_ref(0, 2, false, pivot(7, 0)),
            block_ref(
                1,
                15,
                true,
                page_contents(BtPageOpaque::default(), &right_items),
            ),
            block_ref(3, 11, false, Vec::new()),
        ],
        split_main(1, 3, 3, 0),
    );
    let mut left = original.clone();
    apply_record(&rec, 0, &mut left).expect("left");
    assert_eq!(items(&left), [pivot(7, 0), pivot(0, 10), pivot(5, 11)]);
    let opaque = BtPageOpaque::read(&left).expect("opaque");
    assert_eq!(
        (opaque.flags, opaque.next, opaque.level),
        (BTP_INCOMPLETE_SPLIT, 15, 1)
    );

    let mut right = Page::zeroed();
    apply_record(&rec, 1, &mut right).expect("right");
    assert_eq!(items(&right), right_items);
    assert_eq!(
        BtPageOpaque::read(&right).expect("opaque"),
        BtPageOpaque {
            prev: 2,
            next: P_NONE,
            level: 1,
            flags: 0,
            cycleid: 0
        }
    );

    let mut child = btree_page(
        BtPageOpaque {
            flags: BTP_LEAF | BTP_INCOMPLETE_SPLIT,
            ..leaf_opaque(3, 14)
        },
        &[leaf(5, tid(1, 1))],
    );
    apply_record(&rec, 3, &mut child).expect("child");
    assert_eq!(BtPageOpaque::read(&child).expect("opaque").flags, BTP_LEAF);
}

#[test]
fn dedup_merges_exactly_the_logged_intervals() {
    let page_items = [
        pivot(9, 0), // high key
        leaf(1, tid(1, 1)),
        posting(1, &[tid(1, 2), tid(1, 4)]),
        leaf(1, tid(2, 1)),
        leaf(2, tid(2, 2)),
        leaf(3, tid(2, 3)),
        leaf(3, tid(2, 4)),
    ];
    let opaque = BtPageOpaque {
        flags: BTP_LEAF | BTP_HAS_GARBAGE,
        ..leaf_opaque(P_NONE, 4)
    };
    let mut intervals = Vec::new();
    for (baseoff, nitems) in [(2u16, 3u16), (6, 2)] {
        intervals.extend(le16(baseoff));
        intervals.extend(le16(nitems));
    }
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_DEDUP,
        vec![block_ref(0, 3, false, intervals)],
        le16(2).to_vec(),
    );
    let mut page = btree_page(opaque, &page_items);
    apply_record(&rec, 0, &mut page).expect("dedup");
    assert_eq!(
        items(&page),
        [
            pivot(9, 0),
            posting(1, &[tid(1, 1), tid(1, 2), tid(1, 4), tid(2, 1)]),
            leaf(2, tid(2, 2)),
            posting(3, &[tid(2, 3), tid(2, 4)]),
        ]
    );
    assert_eq!(BtPageOpaque::read(&page).expect("opaque").flags, BTP_LEAF);

    // Intervals the page cannot produce are an error, not a different page.
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_DEDUP,
        vec![block_ref(0, 3, false, [le16(6), le16(5)].concat())],
        le16(1).to_vec(),
    );
    let mut page = btree_page(opaque, &page_items);
    assert!(matches!(
        apply_record(&rec, 0, &mut page),
        Err(RedoError::Page {
            fault: PageFault::DedupIntervals { .. },
            ..
        })
    ));
}

#[test]
fn vacuum_and_delete_update_posting_lists_then_delete_tuples() {
    let page_items = [
        posting(1, &[tid(1, 1), tid(1, 2), tid(1, 3)]),
        posting(2, &[tid(2, 1), tid(2, 2)]),
        leaf(3, tid(3, 1)),
        leaf(4, tid(3, 2)),
    ];
    let opaque = BtPageOpaque {
        flags: BTP_LEAF | BTP_HAS_GARBAGE,
        ..leaf_opaque(P_NONE, P_NONE)
    };
    // Delete offset 3; offset 1 loses its 2nd TID, offset 2 its 1st (becoming plain).
    let mut data = Vec::new();
    data.extend(le16(3));
    data.extend(le16(1));
    data.extend(le16(2));
    data.extend(le16(1));
    data.extend(le16(1));
    data.extend(le16(1));
    data.extend(le16(0));
    let want = [
        posting(1, &[tid(1, 1), tid(1, 3)]),
        leaf(2, tid(2, 2)),
        leaf(4, tid(3, 2)),
    ];
    for (info, main) in [
        (XLOG_BTREE_VACUUM, [le16(1), le16(2)].concat()),
        (
            XLOG_BTREE_DELETE,
            [le32(77).to_vec(), le16(1).to_vec(), le16(2).to_vec()].concat(),
        ),
    ] {
        let rec = record(
            RM_BTREE_ID,
            info,
            vec![block_ref(0, 2, false, data.clone())],
            main,
        );
        let mut page = btree_page(opaque, &page_items);
        apply_record(&rec, 0, &mut page).expect("vacuum");
        assert_eq!(items(&page), want);
        assert_eq!(BtPageOpaque::read(&page).expect("opaque").flags, BTP_LEAF);
        assert_eq!(page.lsn(), END_LSN);
    }
}

fn halfdead_main(poffset: u16, leftblk: u32, rightblk: u32, topparent: u32) -> Vec<u8> {
    let mut main = le16(poffset).to_vec();
    main.extend([0, 0]);
    for value in [5, leftblk, rightblk, topparent] {
        main.extend(le32(value));
    }
    main
}

#[test]
fn mark_page_halfdead_moves_the_downlink_and_empties_the_leaf() {
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_MARK_PAGE_HALFDEAD,
        vec![
            block_ref(0, 5, true, Vec::new()),
            block_ref(1, 3, false, Vec::new()),
        ],
        halfdead_main(1, P_NONE, 6, crate::heap_tuple::INVALID_BLOCK_NUMBER),
    );
    let mut parent = btree_page(
        BtPageOpaque {
            level: 1,
            flags: BTP_ROOT,
            ..leaf_opaque(P_NONE, P_NONE)
        },
        &[pivot(0, 5), pivot(4, 6), pivot(8, 7)],
    );
    apply_record(&rec, 1, &mut parent).expect("parent");
    assert_eq!(items(&parent), [pivot(0, 6), pivot(8, 7)]);

    let mut leaf_page = btree_page(leaf_opaque(P_NONE, 6), &[pivot(4, 0), leaf(1, tid(1, 1))]);
    apply_record(&rec, 0, &mut leaf_page).expect("leaf");
    assert_eq!(
        BtPageOpaque::read(&leaf_page).expect("opaque"),
        BtPageOpaque {
            prev: P_NONE,
            next: 6,
            level: 0,
            flags: BTP_HALF_DEAD | BTP_LEAF,
            cycleid: 0
        }
    );
    assert_eq!(
        items(&leaf_page),
        [top_parent_high_key(crate::heap_tuple::INVALID_BLOCK_NUMBER).to_vec()]
    );
}

#[test]
fn unlink_page_meta_deletes_the_target_and_relinks_its_siblings() {
    let mut main = Vec::new();
    for value in [4u32, 9, 1, 0] {
        main.extend(le32(value)); // leftsib, rightsib, level, padding
    }
    main.extend(0x0000_0001_0000_0010u64.to_le_bytes()); // safexid
    for value in [20u32, 21, 22] {
        main.extend(le32(value)); // leafleftsib, leafrightsib, leaftopparent
    }
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_UNLINK_PAGE_META,
        vec![
            block_ref(0, 5, true, Vec::new()),
            block_ref(1, 4, false, Vec::new()),
            block_ref(2, 9, false, Vec::new()),
            block_ref(3, 30, true, Vec::new()),
            block_ref(4, 0, true, metadata(3, 2, 9, 1, 0)),
        ],
        main,
    );
    let mut target = Page::zeroed();
    apply_record(&rec, 0, &mut target).expect("target");
    assert_eq!(
        BtPageOpaque::read(&target).expect("opaque"),
        BtPageOpaque {
            prev: 4,
            next: 9,
            level: 1,
            flags: BTP_DELETED | BTP_HAS_FULLXID,
            cycleid: 0
        }
    );
    assert_eq!(
        (target.lower(), target.upper()),
        (32, 8192 - SIZE_OF_BT_PAGE_OPAQUE as u16)
    );
    assert_eq!(
        &target.as_bytes()[24..32],
        &0x0000_0001_0000_0010u64.to_le_bytes()
    );

    let internal = BtPageOpaque {
        level: 1,
        flags: 0,
        ..leaf_opaque(P_NONE, 5)
    };
    let mut left = btree_page(internal, &[pivot(1, 2)]);
    apply_record(&rec, 1, &mut left).expect("left");
    assert_eq!(BtPageOpaque::read(&left).expect("opaque").next, 9);
    let mut right = btree_page(
        BtPageOpaque {
            prev: 5,
            ..internal
        },
        &[pivot(1, 2)],
    );
    apply_record(&rec, 2, &mut right).expect("right");
    assert_eq!(BtPageOpaque::read(&right).expect("opaque").prev, 4);

    let mut leaf_page = Page::zeroed();
    apply_record(&rec, 3, &mut leaf_page).expect("leaf");
    let opaque = BtPageOpaque::read(&leaf_page).expect("opaque");
    assert_eq!(
        (opaque.prev, opaque.next, opaque.flags),
        (20, 21, BTP_HALF_DEAD | BTP_LEAF)
    );
    assert_eq!(items(&leaf_page), [top_parent_high_key(22).to_vec()]);

    let mut meta = Page::zeroed();
    apply_record(&rec, 4, &mut meta).expect("meta");
    assert_eq!(BtMetaPageData::read(&meta).fastroot, 9);
}

#[test]
fn newroot_rebuilds_the_root_from_its_contents() {
    let root_items = [pivot(0, 1), pivot(5, 2)];
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_NEWROOT,
        vec![
            block_ref(
                0,
                3,
                true,
                page_contents(BtPageOpaque::default(), &root_items),
            ),
            block_ref(1, 1, false, Vec::new()),
            block_ref(2, 0, true, metadata(3, 1, 3, 1, 0)),
        ],
        [le32(3), le32(1)].concat(),
    );
    let mut root = Page::zeroed();
    apply_record(&rec, 0, &mut root).expect("root");
    let mut want = btree_page(
        BtPageOpaque {
            level: 1,
            flags: BTP_ROOT,
            ..leaf_opaque(P_NONE, P_NONE)
        },
        &root_items,
    );
    want.set_lsn(END_LSN);
    assert_eq!(root, want);

    // The first root of an index is an empty leaf and reads no child.
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_NEWROOT,
        vec![
            block_ref(0, 1, true, Vec::new()),
            block_ref(2, 0, true, metadata(1, 0, 1, 0, 0)),
        ],
        [le32(1), le32(0)].concat(),
    );
    let mut root = Page::zeroed();
    apply_record(&rec, 0, &mut root).expect("first root");
    let opaque = BtPageOpaque::read(&root).expect("opaque");
    assert_eq!(opaque.flags, BTP_ROOT | BTP_LEAF);
    assert!(root.is_empty());
}

#[test]
fn reuse_page_and_standby_records_register_no_block() {
    let mut main = Vec::new();
    for value in [1663u32, 5, 16500, 7] {
        main.extend(le32(value));
    }
    main.extend(99u64.to_le_bytes());
    let rec = record(RM_BTREE_ID, XLOG_BTREE_REUSE_PAGE, Vec::new(), main);
    assert!(matches!(
        parse_btree_record(&rec),
        Ok(BtreeRecord::ReusePage {
            block: 7,
            latest_removed_full_xid: 99,
            ..
        })
    ));
    assert!(registers_no_blocks(RM_BTREE_ID, XLOG_BTREE_REUSE_PAGE));
    assert!(matches!(
        apply_record(&rec, 0, &mut Page::zeroed()),
        Err(RedoError::NoSuchBlock { block_id: 0, .. })
    ));
    let running_xacts = record(RM_STANDBY_ID, 0x10, Vec::new(), vec![0; 24]);
    assert!(registers_no_blocks(RM_STANDBY_ID, 0x10));
    assert!(
        registers_no_blocks(super::super::RM_XLOG_ID, 0x00),
        "checkpoint"
    );
    assert!(!registers_no_blocks(super::super::RM_XLOG_ID, 0xB0), "FPI");
    assert!(matches!(
        apply_record(&running_xacts, 0, &mut Page::zeroed()),
        Err(RedoError::NoSuchBlock { .. })
    ));
}

#[test]
fn sequence_log_reinitialises_the_page_with_the_logged_tuple() {
    let tuple: Vec<u8> = (0..48u8).collect();
    let mut main = Vec::new();
    for value in [1663u32, 5, 16600] {
        main.extend(le32(value));
    }
    main.extend(&tuple);
    let rec = DecodedRecord {
        blocks: [block_ref(0, 0, true, Vec::new())].into_iter().collect(),
        ..record(RM_SEQ_ID, XLOG_SEQ_LOG, Vec::new(), main)
    };
    let mut page = Page::zeroed();
    page.as_bytes_mut()[100] = 0xFF; // whatever was there goes
    apply_record(&rec, 0, &mut page).expect("seq");
    let mut want = Page::zeroed();
    want.init(4);
    want.as_bytes_mut()[8184..8188].copy_from_slice(&SEQ_MAGIC.to_le_bytes());
    want.add_item_extended(&tuple, 1, AddItemFlags::default())
        .expect("add");
    want.set_lsn(END_LSN);
    assert_eq!(page, want);
    // The block must be marked WILL_INIT, as XLogInitBufferForRedo requires.
    let rec = DecodedRecord {
        blocks: [block_ref(0, 0, false, Vec::new())].into_iter().collect(),
        ..rec
    };
    assert!(matches!(
        apply_record(&rec, 0, &mut page),
        Err(RedoError::Page {
            fault: PageFault::ZeroedWithoutWillInit,
            ..
        })
    ));
}
