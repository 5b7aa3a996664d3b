//! Ingest and reconstruct on hand-built records: each test builds the WAL records of a
//! scenario byte for byte (as XLogRecordAssemble lays them out), ingests them into a
//! store in a temporary directory and reads the pages back at several LSNs.
//! `tests/tests/pages_datafiles.rs` checks the same against a real Postgres.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tarn_wal::Lsn;
use tarn_wal::decode::{ForkNumber, RawRecord, RelFileNode, decode_record};

use super::slru::{clog_status, segment_and_page};
use super::*;
use crate::page::BLCKSZ;
use crate::reconstruct::{PageReader, ReconstructError, get_page_at_lsn, get_rel_size, rel_exists};
use crate::store::StoreConfig;
use crate::vm::VISIBILITYMAP_VALID_BITS;

mod truncation;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tarn-ingest-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const REL: RelFileNode = RelFileNode {
    spc_node: DEFAULTTABLESPACE_OID,
    db_node: 5,
    rel_node: 16384,
};

/// A block reference to build: an optional full-page image (BKPIMAGE_APPLY, no hole).
struct TestBlock {
    block_id: u8,
    rel: RelFileNode,
    fork: ForkNumber,
    block: u32,
    will_init: bool,
    image: Option<Page>,
}

/// Builds and ingests records at increasing LSNs.
struct Harness {
    _dir: TempDir,
    store: TimelineStore,
    ingester: Ingester,
    next_lsn: u64,
}

impl Harness {
    fn new(threshold: u32) -> Harness {
        let dir = TempDir::new("ingest");
        let store = TimelineStore::create(dir.path(), Lsn(0x0100_0000), StoreConfig::default())
            .expect("store");
        Harness {
            _dir: dir,
            store,
            ingester: Ingester::new(IngestConfig {
                settings: RedoSettings::default(),
                image_threshold_deltas: threshold,
            }),
            next_lsn: 0x0100_0028,
        }
    }

    /// Encodes a record as XLogRecordAssemble does, ingests it, returns its end LSN.
    fn ingest(
        &mut self,
        xid: u32,
        rmid: u8,
        info: u8,
        blocks: &[TestBlock],
        main: &[u8],
    ) -> Result<Lsn, IngestError> {
        let raw = self.build(xid, rmid, info, blocks, main);
        self.next_lsn = raw.end_lsn.0;
        self.ingester
            .ingest(&mut self.store, &raw)
            .map(|()| raw.end_lsn)
    }

    fn ok(&mut self, xid: u32, rmid: u8, info: u8, blocks: &[TestBlock], main: &[u8]) -> Lsn {
        self.ingest(xid, rmid, info, blocks, main)
            .unwrap_or_else(|error| panic!("ingest failed: {error}"))
    }

    fn build(&self, xid: u32, rmid: u8, info: u8, blocks: &[TestBlock], main: &[u8]) -> RawRecord {
        let mut headers = Vec::new();
        let mut payload = Vec::new();
        for block in blocks {
            let mut fork_flags = block.fork as u8;
            if block.image.is_some() {
                fork_flags |= 0x10;
            }
            if block.will_init {
                fork_flags |= 0x40;
            }
            headers.push(block.block_id);
            headers.push(fork_flags);
            headers.extend_from_slice(&0u16.to_le_bytes());
            if let Some(image) = &block.image {
                headers.extend_from_slice(&(BLCKSZ as u16).to_le_bytes());
                headers.extend_from_slice(&0u16.to_le_bytes());
                headers.push(0x02); // BKPIMAGE_APPLY
                payload.extend_from_slice(image.as_bytes());
            }
            for field in [
                block.rel.spc_node,
                block.rel.db_node,
                block.rel.rel_node,
                block.block,
            ] {
                headers.extend_from_slice(&field.to_le_bytes());
            }
        }
        if !main.is_empty() {
            if main.len() <= 255 {
                headers.push(255);
                headers.push(main.len() as u8);
            } else {
                headers.push(254);
                headers.extend_from_slice(&(main.len() as u32).to_le_bytes());
            }
            payload.extend_from_slice(main);
        }
        let tot_len = 24 + headers.len() + payload.len();
        let mut bytes = Vec::with_capacity(tot_len);
        bytes.extend_from_slice(&(tot_len as u32).to_le_bytes());
        bytes.extend_from_slice(&xid.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.push(info);
        bytes.push(rmid);
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&headers);
        bytes.extend_from_slice(&payload);
        let lsn = Lsn(self.next_lsn);
        let decoded = decode_record(lsn, &bytes).expect("the test record decodes");
        RawRecord {
            lsn,
            end_lsn: decoded.end_lsn,
            bytes: Bytes::from(bytes),
        }
    }

    fn page(&self, key: Key, lsn: Lsn) -> Page {
        get_page_at_lsn(&self.store, key, lsn)
            .unwrap_or_else(|error| panic!("{key:?} at {lsn}: {error}"))
    }
}

fn le(fields: &[u32]) -> Vec<u8> {
    fields.iter().flat_map(|f| f.to_le_bytes()).collect()
}

fn smgr_create(rel: RelFileNode, fork: ForkNumber) -> Vec<u8> {
    le(&[rel.spc_node, rel.db_node, rel.rel_node, fork as u32])
}

fn heap_page(marker: u8) -> Page {
    let mut page = Page::zeroed();
    page.init(0);
    page.as_bytes_mut()[BLCKSZ - 1] = marker;
    page
}

fn fpi(rel: RelFileNode, fork: ForkNumber, block: u32, page: Page) -> TestBlock {
    TestBlock {
        block_id: 0,
        rel,
        fork,
        block,
        will_init: false,
        image: Some(page),
    }
}

/// xl_xact_commit/abort with XLOG_XACT_HAS_INFO: subxacts and dropped relations.
fn xact_completion(subxacts: &[u32], dropped: &[RelFileNode]) -> Vec<u8> {
    let mut xinfo = 0u32;
    if !subxacts.is_empty() {
        xinfo |= 1 << 1;
    }
    if !dropped.is_empty() {
        xinfo |= 1 << 2;
    }
    let mut out = vec![0u8; 8]; // xact_time
    out.extend_from_slice(&xinfo.to_le_bytes());
    if !subxacts.is_empty() {
        out.extend_from_slice(&(subxacts.len() as u32).to_le_bytes());
        out.extend_from_slice(&le(subxacts));
    }
    if !dropped.is_empty() {
        out.extend_from_slice(&(dropped.len() as u32).to_le_bytes());
        for rel in dropped {
            out.extend_from_slice(&le(&[rel.spc_node, rel.db_node, rel.rel_node]));
        }
    }
    out
}

const XACT_HAS_INFO: u8 = 0x80;

fn clog_key(pageno: u32) -> Key {
    let (segno, blk) = segment_and_page(pageno);
    Key::slru_page(SlruKind::Clog, segno, blk)
}

#[test]
fn commits_and_aborts_set_clog_bits_of_the_whole_tree() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    h.ok(0, RM_CLOG_ID, CLOG_ZEROPAGE, &[], &le(&[0]));
    h.ok(0, RM_CLOG_ID, CLOG_ZEROPAGE, &[], &le(&[1]));
    let committed = h.ok(
        1000,
        RM_XACT_ID,
        XLOG_XACT_COMMIT | XACT_HAS_INFO,
        &[],
        &xact_completion(&[1001, 40_000], &[]),
    );
    let aborted = h.ok(1002, RM_XACT_ID, XLOG_XACT_ABORT, &[], &[0u8; 8]);
    let page0 = h.page(clog_key(0), aborted);
    assert_eq!(clog_status(&page0, 1000), TRANSACTION_STATUS_COMMITTED);
    assert_eq!(clog_status(&page0, 1001), TRANSACTION_STATUS_COMMITTED);
    assert_eq!(clog_status(&page0, 1002), TRANSACTION_STATUS_ABORTED);
    assert_eq!(clog_status(&page0, 999), 0);
    assert_eq!(
        clog_status(&h.page(clog_key(1), committed), 40_000),
        TRANSACTION_STATUS_COMMITTED
    );
    // Before the commit, nothing.
    let before = Lsn(committed.0 - 1);
    assert_eq!(clog_status(&h.page(clog_key(0), before), 1000), 0);
    // nextXid is past the newest xid of the tree.
    let state = CheckpointState::from_bytes(
        &load_image(&h.store, Key::checkpoint())
            .expect("read")
            .expect("checkpoint"),
    )
    .expect("decode");
    assert_eq!(state.next_full_xid(), 40_001);
    // A page beyond the segment's size does not exist.
    assert!(matches!(
        get_page_at_lsn(&h.store, clog_key(2), aborted),
        Err(ReconstructError::BeyondEof { .. })
    ));
}

#[test]
fn block_references_beyond_the_end_extend_and_truncation_cuts() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    h.ok(
        0,
        RM_SMGR_ID,
        XLOG_SMGR_CREATE,
        &[],
        &smgr_create(REL, ForkNumber::Main),
    );
    let created = Lsn(h.next_lsn);
    assert_eq!(
        get_rel_size(&h.store, REL, ForkNumber::Main, created).expect("size"),
        0
    );
    let lsn = h.ok(
        0,
        RM_XLOG_ID,
        XLOG_FPI,
        &[fpi(REL, ForkNumber::Main, 3, heap_page(3))],
        &[],
    );
    assert_eq!(
        get_rel_size(&h.store, REL, ForkNumber::Main, lsn).expect("size"),
        4
    );
    for blk in 0..3 {
        assert!(
            h.page(Key::rel_block(REL, ForkNumber::Main, blk), lsn)
                .is_new(),
            "gap block {blk}"
        );
    }
    let page = h.page(Key::rel_block(REL, ForkNumber::Main, 3), lsn);
    assert_eq!(page.as_bytes()[BLCKSZ - 1], 3);
    assert_eq!(
        page.lsn(),
        lsn,
        "a restored image gets the record's end LSN"
    );

    // Truncate to 2, then extend to 6: block 3 is a zero page again, not the old image.
    let truncated = h.ok(
        0,
        RM_SMGR_ID,
        XLOG_SMGR_TRUNCATE,
        &[],
        &le(&[2, REL.spc_node, REL.db_node, REL.rel_node, 1]),
    );
    assert_eq!(
        get_rel_size(&h.store, REL, ForkNumber::Main, truncated).expect("size"),
        2
    );
    assert!(matches!(
        get_page_at_lsn(
            &h.store,
            Key::rel_block(REL, ForkNumber::Main, 3),
            truncated
        ),
        Err(ReconstructError::BeyondEof { nblocks: 2, .. })
    ));
    let extended = h.ok(
        0,
        RM_XLOG_ID,
        XLOG_FPI,
        &[fpi(REL, ForkNumber::Main, 5, heap_page(5))],
        &[],
    );
    assert!(
        h.page(Key::rel_block(REL, ForkNumber::Main, 3), extended)
            .is_new()
    );
    assert_eq!(
        h.page(Key::rel_block(REL, ForkNumber::Main, 3), lsn)
            .as_bytes()[BLCKSZ - 1],
        3,
        "history stays"
    );
    // A truncation to more blocks than exist changes nothing (mdtruncate in recovery).
    let grown = h.ok(
        0,
        RM_SMGR_ID,
        XLOG_SMGR_TRUNCATE,
        &[],
        &le(&[100, REL.spc_node, REL.db_node, REL.rel_node, 1]),
    );
    assert_eq!(
        get_rel_size(&h.store, REL, ForkNumber::Main, grown).expect("size"),
        6
    );
}

#[test]
fn truncation_clears_the_truncated_blocks_bits_on_the_last_vm_page() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    let mut vm = Page::zeroed();
    vm.init(0);
    vm.contents_mut()[..16].fill(0xFF);
    h.ok(
        0,
        RM_XLOG_ID,
        XLOG_FPI,
        &[fpi(REL, ForkNumber::VisibilityMap, 0, vm)],
        &[],
    );
    h.ok(
        0,
        RM_XLOG_ID,
        XLOG_FPI,
        &[fpi(REL, ForkNumber::Main, 9, heap_page(9))],
        &[],
    );
    let lsn = h.ok(
        0,
        RM_SMGR_ID,
        XLOG_SMGR_TRUNCATE,
        &[],
        &le(&[5, REL.spc_node, REL.db_node, REL.rel_node, 3]),
    );
    let page = h.page(Key::rel_block(REL, ForkNumber::VisibilityMap, 0), lsn);
    // Heap blocks 0-3 in byte 0, block 4 in the low bits of byte 1.
    assert_eq!(&page.contents()[..3], &[0xFF, VISIBILITYMAP_VALID_BITS, 0]);
    assert!(page.contents()[3..].iter().all(|b| *b == 0));
    assert_eq!(
        get_rel_size(&h.store, REL, ForkNumber::VisibilityMap, lsn).expect("size"),
        1
    );
    assert_eq!(
        get_rel_size(&h.store, REL, ForkNumber::Main, lsn).expect("size"),
        5
    );
}

#[test]
fn dropped_relations_read_as_missing_after_the_commit_only() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    let before = h.ok(
        0,
        RM_XLOG_ID,
        XLOG_FPI,
        &[fpi(REL, ForkNumber::Main, 0, heap_page(1))],
        &[],
    );
    h.ok(0, RM_CLOG_ID, CLOG_ZEROPAGE, &[], &le(&[0]));
    let dropped = h.ok(
        700,
        RM_XACT_ID,
        XLOG_XACT_COMMIT | XACT_HAS_INFO,
        &[],
        &xact_completion(&[], &[REL]),
    );
    assert!(rel_exists(&h.store, REL, ForkNumber::Main, before).expect("exists"));
    assert!(matches!(
        get_page_at_lsn(&h.store, Key::rel_block(REL, ForkNumber::Main, 0), dropped),
        Err(ReconstructError::RelationNotFound { .. })
    ));
    let dir = RelDir::decode(
        &load_image(&h.store, Key::rel_dir(REL.spc_node, REL.db_node))
            .expect("read")
            .expect("dir"),
    )
    .expect("decode");
    assert!(dir.0.is_empty(), "{dir:?}");
    // Re-creating the relation starts from zeros, not from the old blocks.
    let recreated = h.ok(
        0,
        RM_SMGR_ID,
        XLOG_SMGR_CREATE,
        &[],
        &smgr_create(REL, ForkNumber::Main),
    );
    assert_eq!(
        get_rel_size(&h.store, REL, ForkNumber::Main, recreated).expect("size"),
        0
    );
}

#[test]
fn file_copy_copies_the_template_and_drop_database_removes_it() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    let template = RelFileNode { db_node: 1, ..REL };
    h.ok(
        0,
        RM_XLOG_ID,
        XLOG_FPI,
        &[fpi(template, ForkNumber::Main, 1, heap_page(7))],
        &[],
    );
    let mut relmap = vec![0u8; RELMAP_FILE_BYTES];
    relmap[0] = 0x17;
    let mut update = le(&[1, DEFAULTTABLESPACE_OID, RELMAP_FILE_BYTES as u32]);
    update.extend_from_slice(&relmap);
    h.ok(0, RM_RELMAP_ID, XLOG_RELMAP_UPDATE, &[], &update);
    // Changed after the copy: the copy must not see it.
    let copied = h.ok(
        0,
        RM_DBASE_ID,
        XLOG_DBASE_CREATE_FILE_COPY,
        &[],
        &le(&[2, DEFAULTTABLESPACE_OID, 1, DEFAULTTABLESPACE_OID]),
    );
    let later = h.ok(
        0,
        RM_XLOG_ID,
        XLOG_FPI,
        &[fpi(template, ForkNumber::Main, 1, heap_page(8))],
        &[],
    );
    let copy = RelFileNode { db_node: 2, ..REL };
    assert_eq!(
        get_rel_size(&h.store, copy, ForkNumber::Main, later).expect("size"),
        2
    );
    assert!(
        h.page(Key::rel_block(copy, ForkNumber::Main, 0), later)
            .is_new()
    );
    assert_eq!(
        h.page(Key::rel_block(copy, ForkNumber::Main, 1), later)
            .as_bytes()[BLCKSZ - 1],
        7
    );
    assert_eq!(
        load_image(&h.store, Key::relmap_file(DEFAULTTABLESPACE_OID, 2))
            .expect("read")
            .as_deref(),
        Some(&relmap[..])
    );
    let dbs = |h: &Harness| {
        DbDir::decode(
            &load_image(&h.store, Key::db_dir())
                .expect("read")
                .expect("db dir"),
        )
        .expect("decode")
    };
    assert!(dbs(&h).0.contains(&(DEFAULTTABLESPACE_OID, 2)));

    let mut drop = le(&[2, 1]);
    drop.extend_from_slice(&le(&[DEFAULTTABLESPACE_OID]));
    let dropped = h.ok(0, RM_DBASE_ID, XLOG_DBASE_DROP, &[], &drop);
    assert!(!dbs(&h).0.contains(&(DEFAULTTABLESPACE_OID, 2)));
    assert!(matches!(
        get_rel_size(&h.store, copy, ForkNumber::Main, dropped),
        Err(ReconstructError::RelationNotFound { .. })
    ));
    assert!(rel_exists(&h.store, copy, ForkNumber::Main, copied).expect("exists"));
    assert!(rel_exists(&h.store, template, ForkNumber::Main, dropped).expect("exists"));
}

#[test]
fn pushdown_bounds_chains_and_readers_can_ask_for_images() {
    let threshold = 3;
    let mut h = Harness::new(threshold);
    h.ok(0, RM_CLOG_ID, CLOG_ZEROPAGE, &[], &le(&[0]));
    let lsns: Vec<Lsn> = (1000..1010)
        .map(|xid| h.ok(xid, RM_XACT_ID, XLOG_XACT_COMMIT, &[], &[0u8; 8]))
        .collect();
    for (i, lsn) in lsns.iter().enumerate() {
        let data = h.store.get(clog_key(0), *lsn).expect("get");
        assert!(
            data.deltas.len() <= threshold as usize,
            "{} deltas at {lsn}",
            data.deltas.len()
        );
        let page = h.page(clog_key(0), *lsn);
        for j in 0..10 {
            let expected = if j <= i {
                TRANSACTION_STATUS_COMMITTED
            } else {
                0
            };
            assert_eq!(
                clog_status(&page, 1000 + j as u32),
                expected,
                "xid {} at commit {i}",
                1000 + j
            );
        }
    }
    assert!(h.ingester.stats().pushdown_images >= 2);

    // Without pushdown, a reader finds the long chain and the ingester writes an image
    // at the next record.
    let mut h = Harness::new(0);
    h.ok(0, RM_CLOG_ID, CLOG_ZEROPAGE, &[], &le(&[0]));
    let mut last = Lsn(0);
    for xid in 1000..1010 {
        last = h.ok(xid, RM_XACT_ID, XLOG_XACT_COMMIT, &[], &[0u8; 8]);
    }
    let reader = PageReader::new(threshold);
    reader
        .get_page_at_lsn(&h.store, clog_key(0), last)
        .expect("read");
    let metrics = reader.metrics();
    assert_eq!(
        (metrics.gets, metrics.max_deltas, metrics.over_threshold),
        (1, 11, 1)
    );
    for key in reader.take_image_requests() {
        h.ingester.request_image(key);
    }
    let next = h.ok(0, RM_XLOG_ID, XLOG_NOOP, &[], &[]);
    let data = h.store.get(clog_key(0), next).expect("get");
    assert!(data.image.is_some() && data.deltas.is_empty());
    assert_eq!(h.ingester.stats().requested_images, 1);
    assert_eq!(
        clog_status(&h.page(clog_key(0), next), 1009),
        TRANSACTION_STATUS_COMMITTED
    );
}

#[test]
fn multixacts_write_offsets_and_members() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    h.ok(
        0,
        RM_MULTIXACT_ID,
        XLOG_MULTIXACT_ZERO_OFF_PAGE,
        &[],
        &le(&[0]),
    );
    h.ok(
        0,
        RM_MULTIXACT_ID,
        XLOG_MULTIXACT_ZERO_MEM_PAGE,
        &[],
        &le(&[0]),
    );
    // Multixact 5 at member offset 9: members (xid 900, status 1), (xid 901, status 4).
    let lsn = h.ok(
        901,
        RM_MULTIXACT_ID,
        XLOG_MULTIXACT_CREATE_ID,
        &[],
        &le(&[5, 9, 2, 900, 1, 901, 4]),
    );
    let offsets = h.page(Key::slru_page(SlruKind::MultiXactOffsets, 0, 0), lsn);
    assert_eq!(
        &offsets.as_bytes()[20..28],
        &le(&[9, 11])[..],
        "its offset and the next one's"
    );
    let members = h.page(Key::slru_page(SlruKind::MultiXactMembers, 0, 0), lsn);
    // Offsets 9 and 10: group 2 (bytes 40..60), slots 1 and 2.
    assert_eq!(&members.as_bytes()[40..44], &[0, 1, 4, 0]);
    assert_eq!(&members.as_bytes()[48..56], &le(&[900, 901])[..]);
    let state = CheckpointState::from_bytes(
        &load_image(&h.store, Key::checkpoint())
            .expect("read")
            .expect("checkpoint"),
    )
    .expect("decode");
    assert_eq!((state.next_multi(), state.next_multi_offset()), (6, 11));
    assert_eq!(state.next_full_xid(), 902);
}

#[test]
fn checkpoint_records_set_the_counters_as_xlog_redo_does() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    let mut shutdown = [0u8; SIZE_OF_CHECKPOINT];
    shutdown[24..32].copy_from_slice(&800u64.to_le_bytes()); // nextXid
    shutdown[32..36].copy_from_slice(&20_000u32.to_le_bytes()); // nextOid
    shutdown[36..40].copy_from_slice(&4u32.to_le_bytes()); // nextMulti
    shutdown[44..48].copy_from_slice(&700u32.to_le_bytes()); // oldestXid
    h.ok(0, RM_XLOG_ID, XLOG_CHECKPOINT_SHUTDOWN, &[], &shutdown);
    h.ok(0, RM_XLOG_ID, XLOG_NEXTOID, &[], &le(&[28_192]));
    let mut online = shutdown;
    online[24..32].copy_from_slice(&750u64.to_le_bytes()); // older nextXid: ignored
    online[32..36].copy_from_slice(&1u32.to_le_bytes()); // nextOid: ignored
    online[36..40].copy_from_slice(&9u32.to_le_bytes()); // newer nextMulti: taken
    online[44..48].copy_from_slice(&710u32.to_le_bytes()); // newer oldestXid: taken
    let lsn = h.ok(0, RM_XLOG_ID, XLOG_CHECKPOINT_ONLINE, &[], &online);
    let state = CheckpointState::from_bytes(
        &h.store
            .get(Key::checkpoint(), lsn)
            .expect("get")
            .image
            .expect("image")
            .1,
    )
    .expect("decode");
    assert_eq!(state.next_full_xid(), 800);
    assert_eq!(state.next_oid(), 28_192);
    assert_eq!(state.next_multi(), 9);
    assert_eq!(state.oldest_xid(), 710);
}

#[test]
fn records_tarn_cannot_redo_are_errors_naming_type_and_lsn() {
    let mut h = Harness::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    let gin = TestBlock {
        block_id: 0,
        rel: REL,
        fork: ForkNumber::Main,
        block: 0,
        will_init: true,
        image: None,
    };
    let lsn = Lsn(h.next_lsn);
    let error = h
        .ingest(0, RM_GIN_ID, 0x00, &[gin], &[1, 2, 3, 4])
        .expect_err("Gin is not supported");
    let message = error.to_string();
    assert!(
        message.contains("Gin/") && message.contains(&lsn.to_string()),
        "{message}"
    );
    assert!(matches!(error, IngestError::Unsupported { .. }));
    // The failed record left nothing behind.
    assert!(matches!(
        get_rel_size(&h.store, REL, ForkNumber::Main, Lsn(h.next_lsn)),
        Err(ReconstructError::RelationNotFound { .. })
    ));
    let error = h
        .ingest(0, RM_COMMIT_TS_ID, 0x00, &[], &le(&[0]))
        .expect_err("pg_commit_ts is not kept");
    assert!(error.to_string().contains("CommitTs/ZEROPAGE"), "{error}");
    // Records without page effects pass.
    h.ok(0, RM_STANDBY_ID, 0x10, &[], &[0u8; 24]);
    assert!(no_page_effects(RM_STANDBY_ID, 0x10));
    assert!(!no_page_effects(RM_XACT_ID, XLOG_XACT_COMMIT));
}
