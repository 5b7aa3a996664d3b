//! Redo of hand-built records against page layouts computed from heapam.c by hand.

use bytes::Bytes;
use tarn_wal::Lsn;
use tarn_wal::decode::{
    BlockImage, BlockRef, DecodedRecord, ForkNumber, ImageCompression, RelFileNode,
};

use super::heap::*;
use super::heap2::*;
use super::*;
use crate::heap_tuple::*;
use crate::mask::{btree_mask, heap_mask};
use crate::page::{
    AddItemFlags, ItemId, LP_DEAD, LP_NORMAL, LP_REDIRECT, LP_UNUSED, PD_ALL_VISIBLE,
};
use crate::redo::test_records::{self, RecordAt};
use crate::vm::{self, VISIBILITYMAP_ALL_FROZEN, VISIBILITYMAP_VALID_BITS, VmClear};

const LSN: Lsn = Lsn(0x0100_0000);
const END_LSN: Lsn = Lsn(0x0100_0058);
const XID: u32 = 742;
const HEAP_BLOCK: u32 = 7;

fn rel() -> RelFileNode {
    RelFileNode {
        spc_node: 1663,
        db_node: 5,
        rel_node: 16384,
    }
}

fn block_ref(block_id: u8, block: u32, will_init: bool, data: Vec<u8>) -> BlockRef {
    test_records::block_ref(rel(), block_id, block, will_init, data)
}

fn record(rmid: u8, info: u8, blocks: Vec<BlockRef>, main_data: Vec<u8>) -> DecodedRecord {
    RecordAt {
        lsn: LSN,
        end_lsn: END_LSN,
        xid: XID,
    }
    .record(rmid, info, blocks, main_data)
}

fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// xl_heap_header + tuple data after the 23-byte header.
fn xl_tuple(infomask2: u16, infomask: u16, hoff: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(le16(infomask2));
    out.extend(le16(infomask));
    out.push(hoff);
    out.extend(body);
    out
}

/// A heap page with tuples built as Postgres stores them: header fields given,
/// t_hoff 24 (one padding byte), then `body`.
fn heap_page(tuples: &[(u32, u16, &[u8])]) -> Page {
    let mut page = Page::zeroed();
    page.init(0);
    page.set_lsn(Lsn(0x00F0_0000));
    for (index, (xmin, infomask, body)) in tuples.iter().enumerate() {
        let mut tuple = vec![0u8; 24];
        tuple.extend_from_slice(body);
        {
            let mut header = HeapTupleHeader::new(&mut tuple).expect("header");
            header.set_xmin(*xmin);
            header.set_field3(5);
            header.set_ctid(HEAP_BLOCK, index as u16 + 1);
            header.set_infomask2(2);
            header.set_infomask(*infomask);
            header.set_hoff(24);
        }
        page.add_item_extended(
            &tuple,
            0,
            AddItemFlags {
                overwrite: false,
                is_heap: true,
            },
        )
        .expect("add");
    }
    page
}

fn tuple(page: &mut Page, offnum: u16) -> HeapTupleHeader<'_> {
    HeapTupleHeader::new(page.item_mut(offnum).expect("item")).expect("header")
}

#[test]
fn insert_with_init_page_builds_the_first_tuple() {
    let data = xl_tuple(
        3,
        HEAP_XMAX_INVALID | HEAP_HASVARWIDTH,
        24,
        &[0, 1, 2, 3, 4, 5, 6, 7, 8],
    );
    let mut main = le16(1).to_vec();
    main.push(0);
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_INSERT | XLOG_HEAP_INIT_PAGE,
        vec![block_ref(0, HEAP_BLOCK, true, data)],
        main,
    );
    let mut page = Page::zeroed();
    page.as_bytes_mut().fill(0x55); // WILL_INIT: whatever was there is ignored
    apply_record(&rec, 0, &mut page).expect("redo");

    assert_eq!(
        (page.lower(), page.upper(), page.special()),
        (28, 8160, 8192)
    );
    assert_eq!(page.lsn(), END_LSN);
    let id = page.item_id(1).expect("lp");
    assert_eq!(
        (id.lp_off(), id.lp_flags(), id.lp_len()),
        (8160, LP_NORMAL, 32)
    );
    let b = &page.as_bytes()[8160..8192];
    let mut want = Vec::new();
    want.extend(le32(XID)); // t_xmin
    want.extend(le32(0)); // t_xmax
    want.extend(le32(0)); // t_cid = FirstCommandId
    want.extend([0, 0, HEAP_BLOCK as u8, 0, 1, 0]); // t_ctid = (7, 1)
    want.extend(le16(3));
    want.extend(le16(HEAP_XMAX_INVALID | HEAP_HASVARWIDTH));
    want.push(24);
    want.extend([0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(b, &want[..]);
    // Nothing else on the page: zeros between the header and the tuple.
    assert!(page.as_bytes()[28..8160].iter().all(|&x| x == 0));
}

#[test]
fn insert_into_an_existing_page_and_lsn_interlock() {
    let mut page = heap_page(&[(100, HEAP_XMIN_COMMITTED, b"aaaaaaaa")]);
    page.set_all_visible(true);
    let data = xl_tuple(2, HEAP_XMAX_INVALID | HEAP_COMBOCID, 24, &[0; 5]);
    let mut main = le16(2).to_vec();
    main.push(XLH_INSERT_ALL_VISIBLE_CLEARED);
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_INSERT,
        vec![block_ref(0, HEAP_BLOCK, false, data)],
        main,
    );
    let before = page.clone();
    apply_record(&rec, 0, &mut page).expect("redo");
    assert!(!page.is_all_visible());
    assert_eq!(page.max_offset_number(), 2);
    let mut t = tuple(&mut page, 2);
    assert_eq!(
        t.infomask(),
        HEAP_XMAX_INVALID,
        "SetCmin clears HEAP_COMBOCID"
    );
    assert_eq!(t.ctid(), (HEAP_BLOCK, 2));
    t.set_xmin(XID);

    // A page already at or past the record's end is left alone (BLK_DONE).
    let mut done = before.clone();
    done.set_lsn(END_LSN);
    let snapshot = done.clone();
    apply_record(&rec, 0, &mut done).expect("redo");
    assert_eq!(done, snapshot);

    // A never-initialised page cannot take a non-init insert.
    let mut new = Page::zeroed();
    let err = apply_record(&rec, 0, &mut new).expect_err("uninitialised page");
    assert!(matches!(
        err,
        RedoError::Page {
            fault: PageFault::NotInitialized,
            ..
        }
    ));
    // Beyond the first free offset: "invalid max offset number".
    let mut main = le16(5).to_vec();
    main.push(0);
    let far = record(
        RM_HEAP_ID,
        XLOG_HEAP_INSERT,
        vec![block_ref(0, HEAP_BLOCK, false, xl_tuple(2, 0, 24, &[1]))],
        main,
    );
    let mut page = before;
    let err = apply_record(&far, 0, &mut page).expect_err("offset 5 on a 1-item page");
    assert!(matches!(
        err,
        RedoError::Page {
            fault: PageFault::InvalidMaxOffset { offnum: 5, max: 1 },
            ..
        }
    ));
}

#[test]
fn will_init_must_match_the_record() {
    let mut main = le16(1).to_vec();
    main.push(0);
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_INSERT,
        vec![block_ref(0, HEAP_BLOCK, true, xl_tuple(2, 0, 24, &[1]))],
        main.clone(),
    );
    let mut page = heap_page(&[]);
    assert!(matches!(
        apply_record(&rec, 0, &mut page),
        Err(RedoError::Page {
            fault: PageFault::WillInitNotZeroed,
            ..
        })
    ));
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_INSERT | XLOG_HEAP_INIT_PAGE,
        vec![block_ref(0, HEAP_BLOCK, false, xl_tuple(2, 0, 24, &[1]))],
        main,
    );
    assert!(matches!(
        apply_record(&rec, 0, &mut page),
        Err(RedoError::Page {
            fault: PageFault::ZeroedWithoutWillInit,
            ..
        })
    ));
}

#[test]
fn delete_sets_xmax_and_the_prune_hint() {
    let mut page = heap_page(&[
        (100, HEAP_XMIN_COMMITTED | HEAP_XMAX_INVALID, b"row one!"),
        (101, HEAP_XMIN_COMMITTED | HEAP_XMAX_INVALID, b"row two!"),
    ]);
    tuple(&mut page, 2).set_infomask2(2 | HEAP_HOT_UPDATED | HEAP_KEYS_UPDATED);
    page.set_all_visible(true);
    let mut main = Vec::new();
    main.extend(le32(XID));
    main.extend(le16(2));
    main.push(XLHL_KEYS_UPDATED);
    main.push(XLH_DELETE_ALL_VISIBLE_CLEARED);
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_DELETE,
        vec![block_ref(0, HEAP_BLOCK, false, Vec::new())],
        main,
    );
    apply_record(&rec, 0, &mut page).expect("redo");
    assert_eq!(page.prune_xid(), XID);
    assert!(!page.is_all_visible());
    let t = tuple(&mut page, 2);
    assert_eq!(t.xmax(), XID);
    assert_eq!(t.field3(), 0);
    assert_eq!(t.infomask(), HEAP_XMIN_COMMITTED, "xmax bits cleared");
    assert_eq!(
        t.infomask2(),
        2 | HEAP_KEYS_UPDATED,
        "HOT cleared, keys updated"
    );
    assert_eq!(t.ctid(), (HEAP_BLOCK, 2));

    // A line pointer that is not normal: "invalid lp".
    page.set_item_id(1, ItemId::dead()).expect("set");
    let mut main = Vec::new();
    main.extend(le32(XID));
    main.extend(le16(1));
    main.extend([0, 0]);
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_DELETE,
        vec![block_ref(0, HEAP_BLOCK, false, Vec::new())],
        main,
    );
    page.set_lsn(Lsn(1));
    assert!(matches!(
        apply_record(&rec, 0, &mut page),
        Err(RedoError::Page {
            fault: PageFault::InvalidLinePointer { offnum: 1, .. },
            ..
        })
    ));
}

fn update_main(old_offnum: u16, flags: u8, new_offnum: u16, infobits: u8) -> Vec<u8> {
    let mut main = Vec::new();
    main.extend(le32(XID)); // old_xmax
    main.extend(le16(old_offnum));
    main.push(infobits);
    main.push(flags);
    main.extend(le32(0)); // new_xmax
    main.extend(le16(new_offnum));
    main
}

#[test]
fn hot_update_on_one_page_uses_prefix_and_suffix_of_the_old_tuple() {
    let mut page = heap_page(&[(
        100,
        HEAP_XMIN_COMMITTED | HEAP_XMAX_INVALID,
        b"AAAABBBBCCCC",
    )]);
    let mut data = Vec::new();
    data.extend(le16(4)); // prefixlen
    data.extend(le16(4)); // suffixlen
    data.extend(xl_tuple(
        2 | HEAP_ONLY_TUPLE,
        HEAP_XMAX_INVALID | HEAP_UPDATED,
        24,
        &[0x77],
    ));
    data.extend(b"XXXX");
    let flags = XLH_UPDATE_PREFIX_FROM_OLD | XLH_UPDATE_SUFFIX_FROM_OLD;
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_HOT_UPDATE,
        vec![block_ref(0, HEAP_BLOCK, false, data)],
        update_main(1, flags, 2, 0),
    );
    apply_record(&rec, 0, &mut page).expect("redo");
    assert_eq!(page.lsn(), END_LSN);
    assert_eq!(page.prune_xid(), XID);
    {
        let old = tuple(&mut page, 1);
        assert_eq!(old.xmax(), XID);
        assert_eq!(old.ctid(), (HEAP_BLOCK, 2));
        assert_eq!(old.infomask(), HEAP_XMIN_COMMITTED);
        assert_eq!(old.infomask2(), 2 | HEAP_HOT_UPDATED);
    }
    let id = page.item_id(2).expect("lp");
    assert_eq!(id.lp_len(), 23 + 1 + 4 + 4 + 4);
    let new = tuple(&mut page, 2);
    assert_eq!(new.xmin(), XID);
    assert_eq!(new.xmax(), 0);
    assert_eq!(new.ctid(), (HEAP_BLOCK, 2));
    assert_eq!(new.infomask2(), 2 | HEAP_ONLY_TUPLE);
    assert_eq!(&new.bytes()[23..], b"\x77AAAAXXXXCCCC");
}

#[test]
fn update_across_pages_redoes_each_block_on_its_own() {
    let old_page = heap_page(&[(100, HEAP_XMIN_COMMITTED | HEAP_XMAX_INVALID, b"old row!")]);
    let data = xl_tuple(2, HEAP_XMAX_INVALID | HEAP_UPDATED, 24, &[0, 1, 2, 3]);
    let flags = XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED | XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED;
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_UPDATE | XLOG_HEAP_INIT_PAGE,
        vec![
            block_ref(0, 9, true, data),
            block_ref(1, HEAP_BLOCK, false, Vec::new()),
        ],
        update_main(1, flags, 1, XLHL_XMAX_EXCL_LOCK),
    );
    let mut old = old_page.clone();
    old.set_all_visible(true);
    apply_record(&rec, 1, &mut old).expect("old page");
    assert!(!old.is_all_visible());
    {
        let t = tuple(&mut old, 1);
        assert_eq!(t.ctid(), (9, 1));
        assert_eq!(t.infomask(), HEAP_XMIN_COMMITTED | HEAP_XMAX_EXCL_LOCK);
        assert_eq!(t.infomask2() & HEAP_HOT_UPDATED, 0);
    }
    let mut new = Page::zeroed();
    apply_record(&rec, 0, &mut new).expect("new page");
    assert_eq!((new.lower(), new.upper()), (28, 8192 - 32));
    let t = tuple(&mut new, 1);
    assert_eq!((t.xmin(), t.ctid()), (XID, (9, 1)));

    let clears = vm::implicit_vm_clears(&rec).expect("clears");
    assert_eq!(
        clears,
        vec![
            VmClear {
                rel: rel(),
                heap_block: HEAP_BLOCK,
                flags: VISIBILITYMAP_VALID_BITS
            },
            VmClear {
                rel: rel(),
                heap_block: 9,
                flags: VISIBILITYMAP_VALID_BITS
            },
        ]
    );
}

#[test]
fn lock_confirm_inplace_and_lock_updated() {
    let base = heap_page(&[(100, HEAP_XMIN_COMMITTED | HEAP_XMAX_INVALID, b"12345678")]);
    // LOCK: a lock-only xmax clears HOT_UPDATED and points ctid at itself.
    let mut page = base.clone();
    tuple(&mut page, 1).set_infomask2(2 | HEAP_HOT_UPDATED);
    tuple(&mut page, 1).set_ctid(HEAP_BLOCK, 9);
    let mut main = Vec::new();
    main.extend(le32(XID));
    main.extend(le16(1));
    main.push(XLHL_XMAX_LOCK_ONLY | XLHL_XMAX_EXCL_LOCK);
    main.push(XLH_LOCK_ALL_FROZEN_CLEARED);
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_LOCK,
        vec![block_ref(0, HEAP_BLOCK, false, Vec::new())],
        main,
    );
    apply_record(&rec, 0, &mut page).expect("lock");
    {
        let t = tuple(&mut page, 1);
        assert_eq!(
            t.infomask(),
            HEAP_XMIN_COMMITTED | HEAP_XMAX_LOCK_ONLY | HEAP_XMAX_EXCL_LOCK
        );
        assert_eq!(t.infomask2(), 2);
        assert_eq!((t.xmax(), t.ctid(), t.field3()), (XID, (HEAP_BLOCK, 1), 0));
    }
    assert_eq!(
        vm::implicit_vm_clears(&rec).expect("clears"),
        vec![VmClear {
            rel: rel(),
            heap_block: HEAP_BLOCK,
            flags: VISIBILITYMAP_ALL_FROZEN
        }]
    );

    // LOCK_UPDATED: only the xmax bits.
    let mut page = base.clone();
    tuple(&mut page, 1).set_infomask2(2 | HEAP_HOT_UPDATED);
    let mut main = Vec::new();
    main.extend(le32(77));
    main.extend(le16(1));
    main.push(XLHL_XMAX_KEYSHR_LOCK | XLHL_XMAX_LOCK_ONLY);
    main.push(0);
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_LOCK_UPDATED,
        vec![block_ref(0, HEAP_BLOCK, false, Vec::new())],
        main,
    );
    apply_record(&rec, 0, &mut page).expect("lock updated");
    {
        let t = tuple(&mut page, 1);
        assert_eq!(
            t.infomask(),
            HEAP_XMIN_COMMITTED | HEAP_XMAX_KEYSHR_LOCK | HEAP_XMAX_LOCK_ONLY
        );
        assert_eq!(
            (t.xmax(), t.infomask2(), t.field3()),
            (77, 2 | HEAP_HOT_UPDATED, 5)
        );
    }

    // CONFIRM: the speculative token in ctid becomes the tuple's own TID.
    let mut page = base.clone();
    tuple(&mut page, 1).set_ctid(1234, SPEC_TOKEN_OFFSET_NUMBER);
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_CONFIRM,
        vec![block_ref(0, HEAP_BLOCK, false, Vec::new())],
        le16(1).to_vec(),
    );
    apply_record(&rec, 0, &mut page).expect("confirm");
    assert_eq!(tuple(&mut page, 1).ctid(), (HEAP_BLOCK, 1));

    // INPLACE: the data after t_hoff is replaced; its length must match.
    let mut page = base.clone();
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_INPLACE,
        vec![block_ref(0, HEAP_BLOCK, false, b"abcdefgh".to_vec())],
        le16(1).to_vec(),
    );
    apply_record(&rec, 0, &mut page).expect("inplace");
    assert_eq!(&tuple(&mut page, 1).bytes()[24..], b"abcdefgh");
    let mut page = base;
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_INPLACE,
        vec![block_ref(0, HEAP_BLOCK, false, b"short".to_vec())],
        le16(1).to_vec(),
    );
    assert!(matches!(
        apply_record(&rec, 0, &mut page),
        Err(RedoError::Page {
            fault: PageFault::WrongTupleLength { old: 8, new: 5, .. },
            ..
        })
    ));
}

fn offsets(list: &[u16]) -> Vec<u8> {
    list.iter().flat_map(|o| o.to_le_bytes()).collect()
}

#[test]
fn prune_redirects_kills_frees_and_compacts() {
    let body = [7u8; 8];
    // Four 32-byte tuples at 8160, 8128, 8096, 8064.
    let mut page = heap_page(&[
        (1, 0, &body),
        (2, 0, &body),
        (3, 0, &[3u8; 8]),
        (4, 0, &body),
    ]);
    let mut main = Vec::new();
    main.extend(le32(0));
    main.extend(le16(1)); // nredirected
    main.extend(le16(1)); // ndead
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_PRUNE,
        vec![block_ref(0, HEAP_BLOCK, false, offsets(&[1, 3, 2, 4]))],
        main,
    );
    apply_record(&rec, 0, &mut page).expect("prune");
    let lp = |page: &Page, o| {
        let id = page.item_id(o).expect("lp");
        (id.lp_off(), id.lp_flags(), id.lp_len())
    };
    assert_eq!(lp(&page, 1), (3, LP_REDIRECT, 0));
    assert_eq!(lp(&page, 2), (0, LP_DEAD, 0));
    assert_eq!(lp(&page, 3), (8160, LP_NORMAL, 32), "moved to the end");
    assert_eq!(
        (page.lower(), page.upper()),
        (36, 8160),
        "trailing unused truncated"
    );
    assert!(!page.has_free_line_pointers());
    assert_eq!(tuple(&mut page, 3).xmin(), 3);
    assert_eq!(page.lsn(), END_LSN);
}

#[test]
fn vacuum_frees_dead_line_pointers_and_truncates() {
    let mut page = heap_page(&[(1, 0, b"a"), (2, 0, b"b"), (3, 0, b"c"), (4, 0, b"d")]);
    page.set_item_id(2, ItemId::dead()).expect("set");
    page.set_item_id(4, ItemId::dead()).expect("set");
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_VACUUM,
        vec![block_ref(0, HEAP_BLOCK, false, offsets(&[2, 4]))],
        le16(2).to_vec(),
    );
    let upper = page.upper();
    apply_record(&rec, 0, &mut page).expect("vacuum");
    assert_eq!(page.max_offset_number(), 3);
    assert_eq!(page.item_id(2).expect("lp").lp_flags(), LP_UNUSED);
    assert!(page.has_free_line_pointers());
    assert_eq!(page.upper(), upper, "VACUUM does not move tuples");
}

#[test]
fn freeze_page_executes_the_freeze_plans() {
    let mut page = heap_page(&[
        (100, HEAP_XMIN_COMMITTED, b"abc"),
        (101, HEAP_XMIN_COMMITTED, b"def"),
    ]);
    tuple(&mut page, 2).set_xmax(55);
    let mut plans = Vec::new();
    plans.extend(le32(0)); // xmax
    plans.extend(le16(2)); // offset
    plans.extend(le16(2)); // t_infomask2
    plans.extend(le16(HEAP_XMIN_FROZEN | HEAP_XMAX_INVALID));
    plans.push(0); // frzflags
    plans.push(0); // padding to sizeof(xl_heap_freeze_tuple) == 12
    let mut main = le32(90).to_vec();
    main.extend(le16(1));
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_FREEZE_PAGE,
        vec![block_ref(0, HEAP_BLOCK, false, plans)],
        main,
    );
    apply_record(&rec, 0, &mut page).expect("freeze");
    let t = tuple(&mut page, 2);
    assert_eq!((t.xmin(), t.xmax()), (101, 0));
    assert_eq!(t.infomask(), HEAP_XMIN_FROZEN | HEAP_XMAX_INVALID);
    assert_eq!(tuple(&mut page, 1).infomask(), HEAP_XMIN_COMMITTED);
}

#[test]
fn visible_sets_the_heap_flag_and_the_vm_bits() {
    let heap_block = 5;
    let mut vm_ref = block_ref(0, 0, false, Vec::new());
    vm_ref.fork = ForkNumber::VisibilityMap;
    let mut main = le32(700).to_vec();
    main.push(VISIBILITYMAP_VALID_BITS);
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_VISIBLE,
        vec![vm_ref, block_ref(1, heap_block, false, Vec::new())],
        main,
    );
    let mut heap = heap_page(&[(1, 0, b"x")]);
    let lsn_before = heap.lsn();
    apply_record(&rec, 1, &mut heap).expect("heap page");
    assert!(heap.is_all_visible());
    assert_eq!(
        heap.lsn(),
        lsn_before,
        "hint bits are not WAL-logged by default"
    );
    let mut heap = heap_page(&[(1, 0, b"x")]);
    let checksums = RedoSettings {
        data_checksums: true,
        wal_log_hints: false,
    };
    apply_record_with(&rec, 1, &mut heap, &checksums).expect("heap page");
    assert_eq!(heap.lsn(), END_LSN);

    // The VM page beyond the fork's end reads as zeros and is initialised.
    let mut vm_page = Page::zeroed();
    apply_record(&rec, 0, &mut vm_page).expect("vm page");
    assert_eq!(
        (vm_page.lower(), vm_page.upper(), vm_page.special()),
        (24, 8192, 8192)
    );
    // Heap block 5: byte 1 of the map, bits 2..3.
    assert_eq!(vm_page.as_bytes()[24 + 1], 0b0000_1100);
    assert_eq!(vm_page.lsn(), END_LSN);
    assert_eq!(
        vm::vm_status(&vm_page, heap_block),
        VISIBILITYMAP_VALID_BITS
    );

    // Clearing, as heap redo does without a block reference: no LSN change.
    assert!(vm::clear_vm_bits(
        &mut vm_page,
        heap_block,
        VISIBILITYMAP_ALL_FROZEN
    ));
    assert_eq!(vm_page.as_bytes()[25], 0b0000_0100);
    assert!(!vm::clear_vm_bits(
        &mut vm_page,
        heap_block,
        VISIBILITYMAP_ALL_FROZEN
    ));
    assert_eq!(vm_page.lsn(), END_LSN);

    // Bits already set: the page (and its LSN) stay as they are.
    let mut set = Page::zeroed();
    set.init(0);
    set.as_bytes_mut()[25] = 0b0000_1100;
    set.set_lsn(Lsn(0x10));
    apply_record(&rec, 0, &mut set).expect("vm page");
    assert_eq!(set.lsn(), Lsn(0x10));
}

#[test]
fn multi_insert_with_init_and_with_offsets() {
    // Two tuples: 4 data bytes (header 7 + 4 = 11, next header SHORTALIGNed to 12), 2.
    let mut data = Vec::new();
    data.extend(le16(4));
    data.extend(le16(2));
    data.extend(le16(HEAP_XMAX_INVALID));
    data.push(24);
    data.extend([0, 9, 9, 9]);
    data.push(0xEE); // alignment padding, not part of any tuple
    data.extend(le16(2));
    data.extend(le16(2));
    data.extend(le16(HEAP_XMAX_INVALID));
    data.push(24);
    data.extend([0, 8]);
    let mut main = vec![XLH_INSERT_ALL_FROZEN_SET, 0];
    main.extend(le16(2));
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE,
        vec![block_ref(0, HEAP_BLOCK, true, data.clone())],
        main,
    );
    let mut page = Page::zeroed();
    apply_record(&rec, 0, &mut page).expect("multi insert");
    assert!(page.is_all_visible());
    assert_eq!(page.max_offset_number(), 2);
    assert_eq!(page.item_id(1).expect("lp").lp_len(), 27);
    assert_eq!(page.item_id(2).expect("lp").lp_len(), 25);
    assert_eq!(&tuple(&mut page, 1).bytes()[23..], &[0, 9, 9, 9]);
    assert_eq!(tuple(&mut page, 2).ctid(), (HEAP_BLOCK, 2));

    // Without init: explicit offsets follow ntuples in the main data.
    let mut main = vec![XLH_INSERT_ALL_VISIBLE_CLEARED, 0];
    main.extend(le16(2));
    main.extend(offsets(&[2, 3]));
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_MULTI_INSERT,
        vec![block_ref(0, HEAP_BLOCK, false, data)],
        main,
    );
    let mut page = heap_page(&[(1, 0, b"first")]);
    page.set_all_visible(true);
    apply_record(&rec, 0, &mut page).expect("multi insert");
    assert_eq!(page.max_offset_number(), 3);
    assert!(!page.is_all_visible());
    assert_eq!(tuple(&mut page, 3).ctid(), (HEAP_BLOCK, 3));
    assert_eq!(vm::implicit_vm_clears(&rec).expect("clears").len(), 1);
}

fn image_of(page: &Page, apply: bool) -> BlockImage {
    // Standard page: the hole between pd_lower and pd_upper is left out.
    let (lower, upper) = (usize::from(page.lower()), usize::from(page.upper()));
    let mut stored = page.as_bytes()[..lower].to_vec();
    stored.extend_from_slice(&page.as_bytes()[upper..]);
    BlockImage {
        stored: Bytes::from(stored),
        hole_offset: lower as u16,
        hole_length: (upper - lower) as u16,
        apply,
        compression: ImageCompression::None,
    }
}

#[test]
fn images_marked_apply_are_restored_whatever_the_record() {
    let source = heap_page(&[(1, 0, b"imaged row")]);
    // XLOG_FPI.
    let mut fpi_block = block_ref(0, HEAP_BLOCK, false, Vec::new());
    fpi_block.image = Some(image_of(&source, true));
    let rec = record(RM_XLOG_ID, 0xB0, vec![fpi_block.clone()], Vec::new());
    let mut page = Page::zeroed();
    apply_record(&rec, 0, &mut page).expect("fpi");
    let mut want = source.clone();
    want.set_lsn(END_LSN);
    assert_eq!(page, want);

    // A heap insert whose block carries an applied image is not redone.
    let mut main = le16(1).to_vec();
    main.push(0);
    let rec = record(RM_HEAP_ID, XLOG_HEAP_INSERT, vec![fpi_block], main);
    let mut page = heap_page(&[]);
    apply_record(&rec, 0, &mut page).expect("restored");
    assert_eq!(page, want);

    // XLOG_FPI without an image is malformed; FPI_FOR_HINT without one is a no-op.
    let bare = block_ref(0, HEAP_BLOCK, false, Vec::new());
    let rec = record(RM_XLOG_ID, 0xB0, vec![bare.clone()], Vec::new());
    assert!(matches!(
        apply_record(&rec, 0, &mut page),
        Err(RedoError::Malformed { .. })
    ));
    let rec = record(RM_XLOG_ID, 0xA0, vec![bare], Vec::new());
    let before = page.clone();
    apply_record(&rec, 0, &mut page).expect("fpi for hint");
    assert_eq!(page, before);
}

#[test]
fn unsupported_records_and_missing_blocks_are_errors() {
    const RM_HASH_ID: u8 = 12;
    let rec = record(
        RM_HASH_ID,
        0x20,
        vec![block_ref(0, 1, false, Vec::new())],
        Vec::new(),
    );
    let mut page = heap_page(&[]);
    assert_eq!(
        apply_record(&rec, 0, &mut page),
        Err(RedoError::Unsupported {
            rmgr: "Hash".to_string(),
            info: 0x20,
            lsn: LSN
        })
    );
    assert!(!super::is_supported(RM_HASH_ID, 0x20));
    assert!(super::is_supported(RM_BTREE_ID, 0));
    assert!(!super::is_supported(RM_BTREE_ID, 0xF0));
    assert!(super::is_supported(RM_HEAP_ID, XLOG_HEAP_HOT_UPDATE | 0x02));
    assert!(!super::is_supported(RM_HEAP2_ID, XLOG_HEAP2_REWRITE));
    assert!(matches!(
        apply_record(&rec, 3, &mut page),
        Err(RedoError::NoSuchBlock { block_id: 3, .. })
    ));
}

#[test]
fn heap_mask_hides_hints_cid_and_padding() {
    let mut page = heap_page(&[(
        100,
        HEAP_XMIN_COMMITTED | HEAP_XMAX_INVALID | HEAP_HASNULL,
        b"abc",
    )]);
    page.set_prune_xid(9);
    page.set_flags(PD_ALL_VISIBLE | 0x0003);
    page.set_checksum(0x1234);
    // Garbage in the free space and in the padding after the 27-byte tuple.
    let lower = usize::from(page.lower());
    page.as_bytes_mut()[lower..lower + 10].fill(0xAB);
    page.as_bytes_mut()[8192 - 5..].fill(0xCD);
    heap_mask(&mut page, HEAP_BLOCK).expect("mask");
    assert_eq!(page.lsn(), Lsn(0));
    assert_eq!((page.checksum(), page.prune_xid(), page.flags()), (0, 0, 0));
    assert!(page.as_bytes()[lower..8192 - 32].iter().all(|&x| x == 0));
    assert!(page.as_bytes()[8192 - 5..].iter().all(|&x| x == 0));
    let t = tuple(&mut page, 1);
    assert_eq!(t.infomask(), HEAP_HASNULL, "HEAP_XACT_MASK bits masked");
    assert_eq!(t.field3(), 0);
    assert_eq!(t.xmin(), 100);

    // Frozen xmin keeps its hint bits but not the xmax ones.
    let mut page = heap_page(&[(100, HEAP_XMIN_FROZEN | HEAP_XMAX_INVALID, b"abc")]);
    heap_mask(&mut page, HEAP_BLOCK).expect("mask");
    assert_eq!(tuple(&mut page, 1).infomask(), HEAP_XMIN_FROZEN);

    // A speculative tuple's ctid becomes its own TID.
    let mut page = heap_page(&[(100, 0, b"abc")]);
    tuple(&mut page, 1).set_ctid(999, SPEC_TOKEN_OFFSET_NUMBER);
    heap_mask(&mut page, 3).expect("mask");
    assert_eq!(tuple(&mut page, 1).ctid(), (3, 1));
}

#[test]
fn btree_mask_hides_leaf_line_pointer_flags_and_opaque_hints() {
    let mut page = Page::zeroed();
    page.init(16);
    page.add_item_extended(&[1u8; 16], 0, AddItemFlags::default())
        .expect("add");
    page.set_item_id(1, page.item_id(1).expect("lp").with_flags(LP_DEAD))
        .expect("set");
    let special = usize::from(page.special());
    let flags: u16 = 1 | (1 << 5) | (1 << 6) | (1 << 1); // LEAF | SPLIT_END | HAS_GARBAGE | ROOT
    page.as_bytes_mut()[special + 12..special + 14].copy_from_slice(&flags.to_le_bytes());
    page.as_bytes_mut()[special + 14..special + 16].copy_from_slice(&77u16.to_le_bytes());
    btree_mask(&mut page, 1).expect("mask");
    assert_eq!(page.item_id(1).expect("lp").lp_flags(), LP_UNUSED);
    assert_eq!(
        page.item_id(1).expect("lp").lp_len(),
        16,
        "only the flags are masked"
    );
    assert_eq!(
        &page.as_bytes()[special + 12..special + 16],
        &[0b11, 0, 0, 0]
    );
}
