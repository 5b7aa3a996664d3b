//! Basebackups of a hand-built store: what files come out, at which LSN, with which
//! checksums, and the errors for what is missing. (The boot of real Postgres on a
//! backup is tests/tests/basebackup.rs.)

use std::path::PathBuf;

use bytes::Bytes;
use tarn_wal::Lsn;
use tarn_wal::decode::{ForkNumber, RelFileNode};

use super::control::tests::sample_control_file;
use super::tar::tests::MemorySink;
use super::*;
use crate::ingest::{SIZE_OF_CHECKPOINT, SizeValue};
use crate::page::Page;
use crate::store::{StoreConfig, Value};

const SYSTEM_ID: u64 = 0x7000_0000_1234_5678;
const BASE: Lsn = Lsn(0x0100_0028);
const LATER: Lsn = Lsn(0x0100_3F10);
const TABLE: RelFileNode = RelFileNode {
    spc_node: DEFAULTTABLESPACE_OID,
    db_node: 5,
    rel_node: 16384,
};
const UNLOGGED: RelFileNode = RelFileNode {
    spc_node: DEFAULTTABLESPACE_OID,
    db_node: 5,
    rel_node: 16390,
};
const SHARED: RelFileNode = RelFileNode {
    spc_node: GLOBALTABLESPACE_OID,
    db_node: 0,
    rel_node: 1262,
};

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tarn-basebackup-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn page(lsn: Lsn, fill: u8) -> Bytes {
    let mut page = Page::zeroed();
    page.init(0);
    page.set_lsn(lsn);
    page.as_bytes_mut()[4000..4100].fill(fill);
    Bytes::copy_from_slice(page.as_bytes())
}

fn image(bytes: impl Into<Bytes>) -> Value {
    Value::Image(bytes.into())
}

fn checkpoint_state() -> Vec<u8> {
    let mut bytes = vec![0u8; SIZE_OF_CHECKPOINT];
    bytes[0..8].copy_from_slice(&BASE.0.to_le_bytes());
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    bytes[12..16].copy_from_slice(&1u32.to_le_bytes());
    let mut state = CheckpointState::from_bytes(&bytes).expect("88 bytes");
    state.set_next_full_xid(750);
    state.set_next_oid(16400);
    state.set_next_multi(1);
    state.set_oldest_xid(722);
    state.set_oldest_xid_db(1);
    state.set_oldest_multi(1);
    state.set_oldest_multi_db(1);
    state.as_bytes().to_vec()
}

fn rel_dir(entries: &[(u32, ForkNumber)]) -> Vec<u8> {
    RelDir(entries.iter().copied().collect()).encode()
}

fn size(nblocks: u32) -> Vec<u8> {
    SizeValue::Exists(nblocks).encode()
}

/// A store with a shared catalog, a table (1 block at BASE, 2 at LATER), an unlogged
/// relation, SLRUs and a prepared transaction. `table_page_lsn` is the LSN stamped in
/// the table's first block at BASE.
fn build_store(dir: &Scratch, table_page_lsn: Lsn, with_control: bool) -> TimelineStore {
    let mut store =
        TimelineStore::create(&dir.0, Lsn(BASE.0 - 1), StoreConfig::default()).expect("store");
    let mut put = |key: Key, value: Value| store.put(key, BASE, value).expect("put");
    if with_control {
        put(
            Key::control_file(),
            image(sample_control_file(SYSTEM_ID, true)),
        );
    }
    put(Key::checkpoint(), image(checkpoint_state()));
    let dbs = DbDir(
        [
            (GLOBALTABLESPACE_OID, 0),
            (DEFAULTTABLESPACE_OID, 1),
            (DEFAULTTABLESPACE_OID, 5),
        ]
        .into_iter()
        .collect(),
    );
    put(Key::db_dir(), image(dbs.encode()));
    for (spc, db, fill) in [
        (GLOBALTABLESPACE_OID, 0, 1u8),
        (DEFAULTTABLESPACE_OID, 1, 2),
        (DEFAULTTABLESPACE_OID, 5, 3),
    ] {
        put(Key::relmap_file(spc, db), image(vec![fill; 512]));
    }
    put(
        Key::rel_dir(GLOBALTABLESPACE_OID, 0),
        image(rel_dir(&[(1262, ForkNumber::Main)])),
    );
    put(Key::rel_size(SHARED, ForkNumber::Main), image(size(1)));
    put(
        Key::rel_block(SHARED, ForkNumber::Main, 0),
        image(page(BASE, 9)),
    );
    put(Key::rel_dir(DEFAULTTABLESPACE_OID, 1), image(rel_dir(&[])));
    put(
        Key::rel_dir(DEFAULTTABLESPACE_OID, 5),
        image(rel_dir(&[
            (16384, ForkNumber::Main),
            (16384, ForkNumber::VisibilityMap),
            (16390, ForkNumber::Main),
            (16390, ForkNumber::Init),
        ])),
    );
    put(Key::rel_size(TABLE, ForkNumber::Main), image(size(1)));
    put(
        Key::rel_block(TABLE, ForkNumber::Main, 0),
        image(page(table_page_lsn, 4)),
    );
    // A VM fork of one block never written: it reads as zeros.
    put(
        Key::rel_size(TABLE, ForkNumber::VisibilityMap),
        image(size(1)),
    );
    put(Key::rel_size(UNLOGGED, ForkNumber::Init), image(size(1)));
    put(
        Key::rel_block(UNLOGGED, ForkNumber::Init, 0),
        image(page(BASE, 5)),
    );
    // What the relation held before (its main fork is not WAL-logged): ignored.
    put(Key::rel_size(UNLOGGED, ForkNumber::Main), image(size(3)));
    for (slru, fill) in [
        (SlruKind::Clog, 0x55u8),
        (SlruKind::MultiXactOffsets, 0x66),
        (SlruKind::MultiXactMembers, 0x77),
    ] {
        put(
            Key::slru_dir(slru),
            image(SlruDir([0].into_iter().collect()).encode()),
        );
        put(Key::slru_segment_size(slru, 0), image(size(1)));
        put(Key::slru_page(slru, 0, 0), image(vec![fill; BLCKSZ]));
    }
    put(
        Key::twophase_dir(),
        image(TwoPhaseDir([700].into_iter().collect()).encode()),
    );
    put(Key::twophase_file(700), image(b"prepared state".to_vec()));
    // Later: the table grows by a block and its first block changes.
    store
        .put(
            Key::rel_size(TABLE, ForkNumber::Main),
            LATER,
            image(size(2)),
        )
        .expect("put");
    store
        .put(
            Key::rel_block(TABLE, ForkNumber::Main, 0),
            LATER,
            image(page(LATER, 6)),
        )
        .expect("put");
    store
        .put(
            Key::rel_block(TABLE, ForkNumber::Main, 1),
            LATER,
            image(page(LATER, 7)),
        )
        .expect("put");
    store
}

fn options() -> BasebackupOptions {
    BasebackupOptions {
        time: Some(1_700_000_000),
        ..BasebackupOptions::default()
    }
}

fn backup(store: &TimelineStore, lsn: Lsn) -> (BasebackupSummary, MemorySink) {
    let mut sink = MemorySink::default();
    let summary = write_basebackup(store, lsn, &options(), &mut sink).expect("basebackup");
    assert!(sink.finished);
    (summary, sink)
}

fn file<'a>(sink: &'a MemorySink, path: &str) -> &'a [u8] {
    sink.entries
        .iter()
        .find(|(name, _)| name == path)
        .and_then(|(_, data)| data.as_deref())
        .unwrap_or_else(|| panic!("{path} is not in the backup"))
}

fn has_directory(sink: &MemorySink, path: &str) -> bool {
    sink.entries
        .iter()
        .any(|(name, data)| name == path && data.is_none())
}

#[test]
fn holds_a_bootable_data_directory_at_the_latest_lsn() {
    let dir = Scratch::new("latest");
    let store = build_store(&dir, BASE, true);
    let (summary, sink) = backup(&store, Lsn::INVALID);
    assert_eq!(summary.lsn, LATER);
    assert_eq!(summary.checkpoint_lsn, LATER);
    assert!(summary.data_checksums);
    for dir in PGDATA_DIRECTORIES.iter().chain(&["base/1", "base/5"]) {
        assert!(has_directory(&sink, dir), "directory {dir}");
    }
    assert_eq!(file(&sink, "PG_VERSION"), b"15\n");
    assert_eq!(file(&sink, "base/5/PG_VERSION"), b"15\n");
    assert_eq!(file(&sink, "base/1/PG_VERSION"), b"15\n");
    assert_eq!(file(&sink, "global/pg_filenode.map"), &[1u8; 512][..]);
    assert_eq!(file(&sink, "base/5/pg_filenode.map"), &[3u8; 512][..]);
    assert!(
        String::from_utf8_lossy(file(&sink, "postgresql.conf")).contains("wal_level = replica")
    );

    // The table at LATER, checksummed for its block numbers.
    let table = file(&sink, "base/5/16384");
    assert_eq!(table.len(), 2 * BLCKSZ);
    for blk in 0..2u32 {
        let page = Page::from_bytes(&table[blk as usize * BLCKSZ..][..BLCKSZ]).expect("page");
        assert_eq!(page.lsn(), LATER);
        assert_eq!(page.checksum(), pg_checksum_page(&page, blk), "block {blk}");
        assert_ne!(page.checksum(), 0);
    }
    assert_eq!(file(&sink, "base/5/16384_vm"), &[0u8; BLCKSZ][..]);
    // The unlogged relation: init fork, and a main fork reset from it.
    assert_eq!(
        file(&sink, "base/5/16390_init"),
        file(&sink, "base/5/16390")
    );
    assert_eq!(file(&sink, "base/5/16390").len(), BLCKSZ);
    assert_eq!(summary.unlogged_relations, 1);
    assert_eq!(file(&sink, "global/1262").len(), BLCKSZ);

    assert_eq!(file(&sink, "pg_xact/0000"), &[0x55u8; BLCKSZ][..]);
    assert_eq!(
        file(&sink, "pg_multixact/offsets/0000"),
        &[0x66u8; BLCKSZ][..]
    );
    assert_eq!(
        file(&sink, "pg_multixact/members/0000"),
        &[0x77u8; BLCKSZ][..]
    );
    let twophase = file(&sink, "pg_twophase/000002BC");
    assert_eq!(&twophase[..14], b"prepared state");
    assert_eq!(
        twophase[14..],
        crc32c::crc32c(b"prepared state").to_le_bytes()
    );

    // pg_control points at the crafted checkpoint, which the segment holds.
    let control = ControlFile::parse(file(&sink, "global/pg_control")).expect("pg_control");
    assert_eq!(control.checkpoint_lsn(), LATER);
    assert_eq!(control.state(), control::DB_SHUTDOWNED);
    let segment = file(&sink, "pg_wal/000000010000000000000001");
    assert_eq!(segment.len(), 16 << 20);
    let at = (LATER.0 % (16 << 20)) as usize;
    let header = tarn_wal::format::XLogRecordHeader::decode(
        segment[at..at + 24].try_into().expect("24 bytes"),
    );
    assert_eq!((header.tot_len, header.rmid), (114, 0));
    assert_eq!(
        header.prev, BASE,
        "xl_prev: the last checkpoint's redo point"
    );
    assert_eq!(
        &control_checkpoint(file(&sink, "global/pg_control"))[..],
        &segment[at + 26..at + 114]
    );
    // pg_control is the last entry.
    assert_eq!(
        sink.entries.last().map(|(name, _)| name.as_str()),
        Some("global/pg_control")
    );
}

fn control_checkpoint(control: &[u8]) -> [u8; SIZE_OF_CHECKPOINT] {
    control[40..128].try_into().expect("88 bytes")
}

#[test]
fn an_older_lsn_gets_the_older_state() {
    let dir = Scratch::new("older");
    let store = build_store(&dir, BASE, true);
    let (summary, sink) = backup(&store, BASE);
    // BASE is 40 bytes into a segment: the first record after the long header.
    assert_eq!(summary.checkpoint_lsn, BASE);
    let table = file(&sink, "base/5/16384");
    assert_eq!(table.len(), BLCKSZ);
    let page = Page::from_bytes(table).expect("page");
    assert_eq!(page.lsn(), BASE);
    // The checkpoint's redo is BASE itself: no real record below is known.
    let segment = file(&sink, "pg_wal/000000010000000000000001");
    let header =
        tarn_wal::format::XLogRecordHeader::decode(segment[40..64].try_into().expect("24 bytes"));
    assert_eq!(header.prev, Lsn::INVALID);
}

#[test]
fn the_tar_stream_unpacks_to_the_same_entries() {
    let dir = Scratch::new("tar");
    let store = build_store(&dir, BASE, true);
    let (_, direct) = backup(&store, LATER);
    let mut tar = TarWriter::new(Vec::new(), 1_700_000_000);
    write_basebackup(&store, LATER, &options(), &mut tar).expect("tar backup");
    let archive = tar.into_inner();
    let mut unpacker = TarUnpacker::new(MemorySink::default());
    std::io::Write::write_all(&mut unpacker, &archive).expect("unpack");
    let unpacked = unpacker.finish().expect("complete");
    assert_eq!(unpacked.entries, direct.entries);
}

#[test]
fn errors_name_what_is_wrong() {
    let dir = Scratch::new("errors");
    let store = build_store(&dir, BASE, true);
    let beyond = Lsn(LATER.0 + 8);
    let error = write_basebackup(&store, beyond, &options(), &mut MemorySink::default())
        .expect_err("beyond the store");
    assert_eq!(
        error.to_string(),
        format!("{beyond} is beyond the last ingested LSN {LATER}")
    );
    let with_ingested = BasebackupOptions {
        ingested_lsn: Some(BASE),
        ..options()
    };
    let error = write_basebackup(&store, LATER, &with_ingested, &mut MemorySink::default())
        .expect_err("beyond what the caller ingested");
    assert!(
        matches!(error, BasebackupError::BeyondIngested { .. }),
        "{error}"
    );

    let dir = Scratch::new("no-control");
    let store = build_store(&dir, BASE, false);
    let error = write_basebackup(&store, LATER, &options(), &mut MemorySink::default())
        .expect_err("no pg_control");
    assert!(
        error.to_string().starts_with(&format!(
            "no control file (pg_control) in the store at {LATER}"
        )),
        "{error}"
    );

    let dir = Scratch::new("future");
    let store = build_store(&dir, Lsn(BASE.0 + 0x100), true);
    let error = write_basebackup(&store, BASE, &options(), &mut MemorySink::default())
        .expect_err("a page newer than the backup");
    assert!(
        matches!(error, BasebackupError::PageFromTheFuture { .. }),
        "{error}"
    );
    // At LATER the page was replaced: fine.
    backup(&store, LATER);
}
