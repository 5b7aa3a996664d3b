//! CLOG and multixact truncation against a real PostgreSQL 15: ingest follows Postgres
//! as vacuum removes pg_xact and pg_multixact segments, across the wraparound of all
//! three SLRUs.
//!
//! Reaching a truncation by consuming ids would take a million transactions per
//! pg_xact segment, so the cluster is moved close to the end of each id space first,
//! as pg_upgrade does: initdb, everything frozen (template0 made connectable for
//! that), a clean stop, then `pg_resetwal` sets nextXid to the first xid of the last
//! CLOG page, nextMulti to the first multixact of the last offsets page and
//! nextMultiOffset to the first member of the last members page. The data directory
//! is copied then (the store's base), and from its checkpoint on every WAL record is
//! ingested. On the restarted cluster: every database is frozen again (the reset left
//! their horizons "in the future", so vacuum would not truncate yet); 33 000
//! transactions carry the xids past 2^32; one transaction locks 2 500 rows and
//! updates each in its own subtransaction, about 5 000 multixacts whose ids and member
//! offsets wrap too; a CHECKPOINT, and the SLRU files are copied ("before"). Then
//! `VACUUM FREEZE` in postgres, template1 and template0: the last one moves the oldest
//! datfrozenxid and datminmxid past the wraparound, and Postgres logs a CLOG/TRUNCATE
//! (removing pg_xact/0FFF) and a MultiXact/TRUNCATE_ID (offsets FFFF, members 14078,
//! the last segment of each). A CHECKPOINT and a clean stop.
//!
//! Checks: ingest never stops; the store's SLRU directories and every segment's bytes
//! equal the files at the "before" LSN and at the end; each removed segment exists
//! just below its truncation record and not after it; the checkpoint state follows
//! MultiXact/TRUNCATE_ID (oldestMulti, which pg_control then shows too) and not
//! CLOG/TRUNCATE; a basebackup at the end holds exactly the data directory's segments,
//! and Postgres boots on it, reads and writes multixacts, and vacuums every database.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tarn_pages::basebackup::{BasebackupOptions, DirectorySink, EndpointConfig, write_basebackup};
use tarn_pages::ingest::import::import_data_dir;
use tarn_pages::ingest::{
    CheckpointState, DEFAULT_IMAGE_THRESHOLD_DELTAS, IngestConfig, Ingester, SlruDir,
};
use tarn_pages::reconstruct::{get_page_at_lsn, get_slru_segment_size, materializer};
use tarn_pages::store::{Key, SlruKind, StoreConfig, TimelineStore};
use tarn_pages::{BLCKSZ, Page};
use tarn_tests::pgdata::{
    DiffFormat, copy_tree, describe_diff, pg_controldata, redo_settings, run_as_owner,
    wal_stream_params,
};
use tarn_tests::{PgCluster, StopMode, TempDir, free_port, pg};
use tarn_wal::Lsn;
use tarn_wal::decode::{PgWalDir, WalRecordReader};
use tarn_wal::format::ScanStop;

const TIMELINE: u32 = 1;
const SETTINGS: [(&str, &str); 7] = [
    ("wal_keep_size", "1GB"),
    ("max_wal_size", "1GB"),
    ("checkpoint_timeout", "1h"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("autovacuum", "off"),
];
/// The first xid of the last CLOG page (page 131071, segment 0FFF): TrimCLOG and
/// ExtendCLOG then need no page that does not exist, and 32 768 xids reach 2^32.
const NEXT_XID: u32 = 0xFFFF_8000;
/// Transactions run: past the wraparound of the xid counter.
const XIDS_BURNED: u32 = 33_000;
/// The first multixact of the last offsets page (page 2097151, segment FFFF).
const NEXT_MULTI: u32 = 0xFFFF_F800;
/// The first member offset of the last members page (page 2625285, segment 14078):
/// 1 036 members to the wraparound.
const NEXT_MULTI_OFFSET: u32 = 2_625_285 * 1636;
/// Rows locked and then updated one per subtransaction: a multixact each (at least).
const MULTIXACT_ROWS: u32 = 2500;
/// What the truncations remove: the last segment of each SLRU.
const REMOVED: [(SlruKind, u32); 3] = [
    (SlruKind::Clog, 0xFFF),
    (SlruKind::MultiXactOffsets, 0xFFFF),
    (SlruKind::MultiXactMembers, 0x14078),
];
const SLRUS: [SlruKind; 3] = [
    SlruKind::Clog,
    SlruKind::MultiXactOffsets,
    SlruKind::MultiXactMembers,
];
const DATABASES: [&str; 3] = ["template0", "template1", "postgres"];
const RM_CLOG_ID: u8 = 3;
const RM_MULTIXACT_ID: u8 = 6;
const CLOG_TRUNCATE: u8 = 0x10;
const XLOG_MULTIXACT_TRUNCATE_ID: u8 = 0x30;
const DIFF: DiffFormat = DiffFormat {
    names: ("tarn", "postgres"),
    run_names: ("tarn", "pg"),
    max_runs: 6,
    run_bytes: 12,
};

fn lsn(text: &str) -> Lsn {
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an LSN: {e:?}"))
}

fn value(cluster: &PgCluster, db: &str, sql: &str) -> String {
    cluster
        .psql_db(db, sql)
        .unwrap_or_else(|e| panic!("{sql} on {db}: {e}"))
}

fn freeze(cluster: &PgCluster, databases: &[&str]) {
    for db in databases {
        value(cluster, db, "VACUUM FREEZE");
    }
}

/// An SLRU's segment files under `root` (a data directory), by segment number.
fn slru_files(root: &Path, slru: SlruKind) -> BTreeMap<u32, Vec<u8>> {
    let dir = root.join(slru.dir_name());
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .filter_map(|entry| {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().into_string().ok()?;
            // SlruScanDirectory's rule: 4 to 6 upper-case hex digits.
            let hex = (4..=6).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
            hex.then(|| {
                let segno = u32::from_str_radix(&name, 16).expect("hex");
                (segno, fs::read(entry.path()).expect("read segment"))
            })
        })
        .collect()
}

/// The SLRU's directory in the store at `lsn`.
fn store_segments(store: &TimelineStore, slru: SlruKind, lsn: Lsn) -> BTreeSet<u32> {
    let data = store.get(Key::slru_dir(slru), lsn).expect("read");
    assert!(data.deltas.is_empty(), "the SLRU directory is an image");
    data.image
        .map(|(_, bytes)| SlruDir::decode(&bytes).expect("decode SLRU directory").0)
        .unwrap_or_default()
}

fn segment_exists(store: &TimelineStore, slru: SlruKind, segno: u32, lsn: Lsn) -> bool {
    get_slru_segment_size(store, slru, segno, lsn).is_ok()
}

/// Compares the store at `lsn` with the SLRU files under `root`: the same segments,
/// each of the same size and with the same bytes. Returns the failures.
fn compare_slrus(store: &TimelineStore, lsn: Lsn, root: &Path, what: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for slru in SLRUS {
        let files = slru_files(root, slru);
        let listed = store_segments(store, slru, lsn);
        let on_disk: BTreeSet<u32> = files.keys().copied().collect();
        if listed != on_disk {
            failures.push(format!(
                "{what}: {} lists {listed:X?} in tarn, {on_disk:X?} on disk",
                slru.dir_name()
            ));
        }
        for (segno, bytes) in files {
            let pages = (bytes.len() / BLCKSZ) as u32;
            match get_slru_segment_size(store, slru, segno, lsn) {
                Ok(size) if size == pages => {}
                Ok(size) => failures.push(format!(
                    "{what}: {}/{segno:04X} has {size} pages in tarn, {pages} on disk",
                    slru.dir_name()
                )),
                Err(error) => {
                    failures.push(format!("{what}: {}/{segno:04X}: {error}", slru.dir_name()));
                    continue;
                }
            }
            for (blk, theirs) in bytes.chunks_exact(BLCKSZ).enumerate() {
                let theirs = Page::from_bytes(theirs).expect("a page");
                let key = Key::slru_page(slru, segno, blk as u32);
                match get_page_at_lsn(store, key, lsn) {
                    Ok(ours) if ours == theirs => {}
                    Ok(ours) => failures.push(format!(
                        "{what}: {}/{segno:04X} page {blk}: {}",
                        slru.dir_name(),
                        describe_diff(&ours, &theirs, &DIFF)
                    )),
                    Err(error) => failures.push(format!(
                        "{what}: {}/{segno:04X} page {blk}: {error}",
                        slru.dir_name()
                    )),
                }
            }
        }
    }
    failures
}

fn checkpoint_at(store: &TimelineStore, lsn: Lsn) -> CheckpointState {
    let data = store.get(Key::checkpoint(), lsn).expect("read");
    CheckpointState::from_bytes(&data.image.expect("checkpoint state").1).expect("decode")
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// A truncation record as ingested.
struct Truncation {
    lsn: Lsn,
    end_lsn: Lsn,
    rmid: u8,
    main_data: Vec<u8>,
}

#[test]
fn ingest_follows_postgres_truncating_pg_xact_and_pg_multixact() {
    let dir = TempDir::new("slrutrunc");
    let bins = pg();
    let controldata = bins.tool("pg_controldata");
    let mut cluster = PgCluster::init(&bins, &dir.join("data")).expect("initdb");
    cluster.set_settings(&SETTINGS).expect("settings");
    let data_dir = cluster.data_dir().to_path_buf();
    let owner = {
        let metadata = fs::metadata(&data_dir).expect("data directory");
        (metadata.uid(), metadata.gid())
    };

    // ---- near the end of every id space ---------------------------------------------
    // Everything initdb wrote is frozen first: after the reset, its xids would be "in
    // the future".
    cluster.start(free_port()).expect("start");
    value(
        &cluster,
        "postgres",
        "ALTER DATABASE template0 ALLOW_CONNECTIONS true",
    );
    freeze(&cluster, &DATABASES);
    cluster.stop(StopMode::Fast).expect("clean stop");
    let reset = run_as_owner(
        &bins.tool("pg_resetwal"),
        &[
            "-x",
            &NEXT_XID.to_string(),
            "-m",
            &format!("{NEXT_MULTI},{NEXT_MULTI}"),
            "-O",
            &NEXT_MULTI_OFFSET.to_string(),
            "-D",
            &data_dir.to_string_lossy(),
        ],
    );
    assert!(reset.status.success(), "pg_resetwal: {reset:?}");
    let base = dir.join("base");
    copy_tree(&data_dir, &base).expect("copy the reset data directory");

    // ---- the workload -----------------------------------------------------------------
    cluster.start(free_port()).expect("start after the reset");
    // The horizons the reset left in the future get current values (no truncation:
    // vac_truncate_clog waits until no database is in the future).
    freeze(&cluster, &DATABASES);
    value(
        &cluster,
        "postgres",
        &format!(
            "CREATE PROCEDURE burn(n int) LANGUAGE plpgsql AS $$ \
             BEGIN FOR i IN 1..n LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$; \
             CALL burn({XIDS_BURNED});"
        ),
    );
    let next_xid: u64 = value(&cluster, "postgres", "SELECT pg_current_xact_id()")
        .parse()
        .expect("an xid");
    assert!(next_xid > 1 << 32, "xids wrapped: {next_xid}");
    // Each row's xmax: a multixact of the top transaction's key-share lock and one
    // subtransaction's update.
    value(
        &cluster,
        "postgres",
        &format!(
            "CREATE TABLE mx (id int PRIMARY KEY, v int); \
             INSERT INTO mx SELECT g, 0 FROM generate_series(1, {MULTIXACT_ROWS}) g; \
             BEGIN; \
             SELECT count(*) FROM (SELECT 1 FROM mx FOR KEY SHARE) s; \
             DO $$ BEGIN FOR i IN 1..{MULTIXACT_ROWS} LOOP \
               BEGIN UPDATE mx SET v = v + 1 WHERE id = i; \
               EXCEPTION WHEN OTHERS THEN RAISE; END; \
             END LOOP; END $$; \
             COMMIT;"
        ),
    );
    value(&cluster, "postgres", "CHECKPOINT");
    let before_lsn = lsn(&value(
        &cluster,
        "postgres",
        "SELECT pg_current_wal_insert_lsn()",
    ));
    let before = dir.join("before");
    for slru in SLRUS {
        copy_tree(
            &data_dir.join(slru.dir_name()),
            &before.join(slru.dir_name()),
        )
        .expect("copy an SLRU directory");
    }
    // The database holding the multixacts first, so that none is truncated away while
    // a tuple still refers to it; template0 last moves the oldest horizons.
    freeze(&cluster, &["postgres", "template1", "template0"]);
    value(&cluster, "postgres", "CHECKPOINT");
    cluster.stop(StopMode::Fast).expect("clean stop");
    let control = pg_controldata(&controldata, &data_dir);
    assert_eq!(control["Database cluster state"], "shut down");
    let next_multi: u32 = control["Latest checkpoint's NextMultiXactId"]
        .parse()
        .expect("a multixact");
    assert!(
        next_multi < NEXT_MULTI && next_multi > MULTIXACT_ROWS,
        "multixacts wrapped: next {next_multi}"
    );
    for (slru, segno) in REMOVED {
        assert!(
            slru_files(&before, slru).contains_key(&segno),
            "{}/{segno:04X} existed before the vacuum",
            slru.dir_name()
        );
        assert!(
            !slru_files(&data_dir, slru).contains_key(&segno),
            "Postgres removed {}/{segno:04X}",
            slru.dir_name()
        );
    }
    let shutdown_checkpoint = lsn(&control["Latest checkpoint location"]);

    // ---- ingest -----------------------------------------------------------------------
    let base_lsn = lsn(&pg_controldata(&controldata, &base)["Latest checkpoint location"]);
    let params = wal_stream_params(&control);
    let mut store = TimelineStore::create(
        &dir.join("store"),
        Lsn(base_lsn.0 - 1),
        StoreConfig {
            image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
            ..StoreConfig::default()
        },
    )
    .expect("create store");
    import_data_dir(&mut store, &base, base_lsn).expect("import the reset data directory");
    let mut ingester = Ingester::new(IngestConfig {
        settings: redo_settings(&control),
        image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
    });
    let mut reader = WalRecordReader::new(
        PgWalDir::new(data_dir.join("pg_wal"), TIMELINE, params.segment_size_bytes),
        base_lsn,
        None,
        params,
    )
    .expect("WAL reader");
    let mut starts = Vec::new();
    let mut truncations = Vec::new();
    let mut materialize = materializer();
    while let Some(raw) = reader.next_raw_record().expect("read WAL") {
        let record = raw.decode().expect("decode");
        ingester
            .ingest_decoded(&mut store, &record, &raw.bytes)
            .unwrap_or_else(|e| panic!("ingest failed: {e}"));
        starts.push(raw.lsn);
        let rmgr_info = record.info & 0xF0;
        if (record.rmid, rmgr_info) == (RM_CLOG_ID, CLOG_TRUNCATE)
            || (record.rmid, rmgr_info) == (RM_MULTIXACT_ID, XLOG_MULTIXACT_TRUNCATE_ID)
        {
            truncations.push(Truncation {
                lsn: record.lsn,
                end_lsn: record.end_lsn,
                rmid: record.rmid,
                main_data: record.main_data.to_vec(),
            });
        }
        if store.open_layer_bytes() > 32 << 20 {
            store.freeze(store.last_lsn()).expect("freeze");
            store.flush().expect("flush");
            store.compact(&mut materialize).expect("compact");
        }
    }
    assert!(
        matches!(reader.stop(), Some(ScanStop::Invalid(_))),
        "WAL ended by {:?}",
        reader.stop()
    );
    assert_eq!(starts.last(), Some(&shutdown_checkpoint));
    store.freeze(store.last_lsn()).expect("freeze");
    store.flush().expect("flush");
    let end_lsn = store.last_lsn();
    let stats = ingester.stats().clone();
    eprintln!(
        "ingested {} records from {base_lsn} to {end_lsn}: {stats:?}",
        stats.records
    );
    assert_eq!(stats.slru_truncations, truncations.len() as u64);
    assert_eq!(stats.slru_segments_removed, REMOVED.len() as u64);
    assert_eq!(stats.slru_truncations_refused, 0);

    // ---- the segments, before the vacuum and at the end ---------------------------------
    let mut failures = compare_slrus(&store, before_lsn, &before, "before the vacuum");
    failures.extend(compare_slrus(&store, end_lsn, &data_dir, "at the end"));

    // ---- each truncation record ------------------------------------------------------
    let mut removed_by_records = BTreeSet::new();
    for truncation in &truncations {
        let slrus: &[SlruKind] = if truncation.rmid == RM_CLOG_ID {
            &[SlruKind::Clog]
        } else {
            &[SlruKind::MultiXactOffsets, SlruKind::MultiXactMembers]
        };
        for slru in SLRUS {
            let below = store_segments(&store, slru, truncation.lsn);
            let after = store_segments(&store, slru, truncation.end_lsn);
            assert!(after.is_subset(&below), "{} only shrinks", slru.dir_name());
            for segno in below.difference(&after) {
                assert!(
                    slrus.contains(&slru),
                    "a truncation of another SLRU removed {}/{segno:04X}",
                    slru.dir_name()
                );
                assert!(segment_exists(&store, slru, *segno, truncation.lsn));
                assert!(!segment_exists(&store, slru, *segno, truncation.end_lsn));
                removed_by_records.insert((slru as u8, *segno));
            }
        }
        let below = checkpoint_at(&store, truncation.lsn);
        let after = checkpoint_at(&store, truncation.end_lsn);
        if truncation.rmid == RM_CLOG_ID {
            assert_eq!(after, below, "CLOG/TRUNCATE leaves the checkpoint state");
        } else {
            // xl_multixact_truncate: oldestMultiDB, startTruncOff, endTruncOff, ...
            let data = &truncation.main_data;
            assert_eq!(
                (after.oldest_multi(), after.oldest_multi_db()),
                (le32(data, 8), le32(data, 0)),
                "SetMultiXactIdLimit(endTruncOff, oldestMultiDB)"
            );
        }
    }
    let expected: BTreeSet<(u8, u32)> = REMOVED
        .iter()
        .map(|(slru, segno)| (*slru as u8, *segno))
        .collect();
    assert_eq!(removed_by_records, expected);

    // The checkpoint state against pg_control: the final checkpoints carry the
    // oldestMulti the truncation set.
    let state = checkpoint_at(&store, end_lsn);
    let last_multixact_truncation = truncations
        .iter()
        .rfind(|t| t.rmid == RM_MULTIXACT_ID)
        .expect("a MultiXact/TRUNCATE_ID record");
    assert_eq!(
        control["Latest checkpoint's oldestMultiXid"],
        le32(&last_multixact_truncation.main_data, 8).to_string()
    );
    for (field, ours) in [
        ("Latest checkpoint's oldestMultiXid", state.oldest_multi()),
        (
            "Latest checkpoint's oldestMulti's DB",
            state.oldest_multi_db(),
        ),
        ("Latest checkpoint's oldestXID", state.oldest_xid()),
        ("Latest checkpoint's oldestXID's DB", state.oldest_xid_db()),
        ("Latest checkpoint's NextMultiXactId", state.next_multi()),
        (
            "Latest checkpoint's NextMultiOffset",
            state.next_multi_offset(),
        ),
    ] {
        if control[field] != ours.to_string() {
            failures.push(format!(
                "{field}: tarn {ours}, pg_control {}",
                control[field]
            ));
        }
    }

    // ---- a basebackup at the end -------------------------------------------------------
    let backup_dir = dir.join("backup");
    let options = BasebackupOptions {
        prev_record_lsn: starts
            .iter()
            .copied()
            .filter(|start| *start < shutdown_checkpoint)
            .max(),
        time: Some(1_750_000_000),
        ..BasebackupOptions::for_endpoint(&EndpointConfig {
            fsync: false,
            full_page_writes: false,
            ..EndpointConfig::default()
        })
    };
    let mut sink = DirectorySink::create(&backup_dir)
        .and_then(|sink| sink.with_owner(owner.0, owner.1))
        .expect("backup directory");
    let summary = write_basebackup(&store, shutdown_checkpoint, &options, &mut sink)
        .unwrap_or_else(|e| panic!("basebackup: {e}"));
    eprintln!("basebackup at {shutdown_checkpoint}: {summary:?}");
    for slru in SLRUS {
        let ours = slru_files(&backup_dir, slru);
        let theirs = slru_files(&data_dir, slru);
        if ours != theirs {
            failures.push(format!(
                "the basebackup's {} holds {:X?}, the data directory {:X?} (or bytes differ)",
                slru.dir_name(),
                ours.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let mut booted = PgCluster::open(&bins, &backup_dir).expect("open the backup");
    booted
        .start(free_port())
        .expect("Postgres starts on the backup");
    let log = fs::read_to_string(booted.log_path()).expect("postgres log");
    assert!(
        log.contains("database system was shut down at") && !log.contains("redo starts"),
        "the backup boots as cleanly shut down, without replay:\n{log}"
    );
    assert_eq!(
        value(&booted, "postgres", "SELECT count(*) FROM mx WHERE v = 1"),
        MULTIXACT_ROWS.to_string()
    );
    // New multixacts on the truncated SLRUs, then a vacuum of every database (which
    // reads pg_multixact from the oldest multixact pg_control names).
    value(
        &booted,
        "postgres",
        "BEGIN; SELECT count(*) FROM (SELECT 1 FROM mx WHERE id <= 10 FOR KEY SHARE) s; \
         SAVEPOINT a; UPDATE mx SET v = v + 1 WHERE id <= 10; COMMIT;",
    );
    assert_eq!(
        value(&booted, "postgres", "SELECT count(*) FROM mx WHERE v = 2"),
        "10"
    );
    freeze(&booted, &["postgres", "template1", "template0"]);
    value(&booted, "postgres", "CHECKPOINT");
    booted
        .stop(StopMode::Fast)
        .expect("clean stop of the booted backup");
    let booted_control = pg_controldata(&controldata, &backup_dir);
    assert_eq!(booted_control["Database cluster state"], "shut down");
}
