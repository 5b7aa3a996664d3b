//! The correctness bar of tarn's native redo (`tarn_pages`): Postgres's own
//! `wal_consistency_checking`, run by us.
//!
//! A fresh PostgreSQL 15 gets the workload's tables, checkpoints and stops cleanly; a
//! copy of its relation files is the base state at the shutdown checkpoint X. It then
//! runs a workload of heap, btree and sequence changes with
//! `wal_consistency_checking = 'all'` and `full_page_writes = off`, so every block
//! reference of every record carries the page as the primary left it. We read every record after X from
//! `pg_wal` with tarn's decoder, keep our own map of pages (loaded from the base copy,
//! zeros beyond a file's end), and for each block reference:
//! - an image marked BKPIMAGE_APPLY is restored (through `apply_record`);
//! - a record type with native redo is redone with `tarn_pages::redo`, then the replayed
//!   page and the logged image are both masked with the rmgr's mask, as
//!   verifyBackupPageConsistency does, and compared byte for byte; visibility map pages
//!   are also compared unmasked but for the LSN (heap_mask hides all their bits);
//! - other record types keep the map right by taking the logged image as the page's
//!   new state, and are counted as "not yet redone".
//!
//! Heap records' visibility map clears (no block reference) are applied from
//! `implicit_vm_clears`, and smgr truncation drops pages, as recovery would.
//!
//! Finally every replayed heap, btree and visibility map page is compared with the file
//! Postgres wrote at its clean shutdown (VM pages byte for byte, the others under their
//! masks and with equal pd_lsn), which checks the implicit effects too. Any mismatch
//! for a supported record type fails the test, as does a record type the test claims
//! to cover (every Heap, Heap2 and Btree type that changes pages, Sequence/LOG) that the
//! workload did not produce and check at least once, or a record of a type that must
//! register no block (Standby, XLOG other than FPIs, Btree/REUSE_PAGE) that has one.
//!
//! A second test runs the same oracle over the TPC-C-like mix of tpcc-lite (with
//! `fk.sql`'s foreign-key multixacts and serial columns), then DDL: rewrites,
//! TRUNCATE, VACUUM FULL, CLUSTER, CREATE/DROP DATABASE, TOAST, rolled-back and
//! subtransaction-aborted work.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use tarn_pages::mask::{mask_for_consistency_check, mask_page_lsn_and_checksum};
use tarn_pages::redo::btree::{BtreeRecord, InsertKind, SplitRecord, UnlinkRecord};
use tarn_pages::redo::heap::{
    XLH_DELETE_IS_PARTITION_MOVE, XLH_DELETE_IS_SUPER, XLH_INSERT_ALL_FROZEN_SET,
    XLH_INSERT_IS_SPECULATIVE, XLH_LOCK_ALL_FROZEN_CLEARED, XLH_UPDATE_PREFIX_FROM_OLD,
    XLH_UPDATE_SUFFIX_FROM_OLD, XLHL_XMAX_IS_MULTI,
};
use tarn_pages::redo::{
    Heap2Record, HeapRecord, RM_BTREE_ID, RM_HEAP_ID, RM_HEAP2_ID, RM_SMGR_ID, RedoError,
    is_supported, parse_btree_record, parse_heap_record, parse_heap2_record, registers_no_blocks,
};
use tarn_pages::vm::{implicit_vm_clears, truncate_vm_page, vm_blocks_after_truncate};
use tarn_pages::{Page, PageTag, RedoSettings, apply_record_with};
use tarn_tests::pgdata::{
    self, DiffFormat, copy_tree, describe_diff, pg_controldata, redo_settings, wal_stream_params,
};
use tarn_tests::{PgCluster, StopMode, TempDir, free_port, pg};
use tarn_wal::Lsn;
use tarn_wal::decode::{
    BlockRef, DecodedRecord, ForkNumber, PgWalDir, RelFileNode, WalRecordReader,
};
use tarn_wal::format::ScanStop;

/// Timeline of a freshly initialised cluster.
const TIMELINE: u32 = 1;
/// Tablespace OIDs of `global/` and `base/`.
const GLOBALTABLESPACE_OID: u32 = 1664;
const DEFAULTTABLESPACE_OID: u32 = 1663;
/// XLOG_SMGR_TRUNCATE and its flags (storage_xlog.h).
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
const SMGR_TRUNCATE_HEAP: u32 = 0x1;
const SMGR_TRUNCATE_VM: u32 = 0x2;
/// Mismatches described in full in the failure message; the rest are counted.
const MAX_REPORTED_FAILURES: usize = 20;
/// How mismatches are described: differing byte runs shown per mismatch, and bytes of
/// each.
const DIFF: DiffFormat = DiffFormat {
    names: ("replayed", "logged"),
    run_names: ("replayed", "logged"),
    max_runs: 8,
    run_bytes: 16,
};
/// How long the concurrent sessions hold their locks for the others to meet them.
const LOCK_HOLD: Duration = Duration::from_secs(3);
/// Head start of the lock holder before the second session arrives.
const LOCK_HEAD_START: Duration = Duration::from_secs(1);

/// Settings for both runs: keep every WAL segment, no timed checkpoints.
const BASE_SETTINGS: [(&str, &str); 5] = [
    ("wal_keep_size", "4GB"),
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "1h"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
];

/// The tables as they exist in the base state (before X).
const SCHEMA_SQL: &str = "
CREATE TABLE oracle_heap (id int PRIMARY KEY, k int, v int, pad text) WITH (fillfactor = 70);
CREATE INDEX oracle_heap_k ON oracle_heap (k);
INSERT INTO oracle_heap SELECT g, g, 0, repeat('p', 40 + g % 120) FROM generate_series(1, 20000) g;
CREATE TABLE oracle_frozen (id int, note text);
INSERT INTO oracle_frozen SELECT g, 'frozen ' || g FROM generate_series(1, 5000) g;
VACUUM FREEZE oracle_frozen;
VACUUM oracle_heap;
CREATE TABLE oracle_toast (id int PRIMARY KEY, doc text);
ALTER TABLE oracle_toast ALTER doc SET STORAGE EXTERNAL;
CREATE TABLE oracle_upsert (id int PRIMARY KEY, n int);
CREATE TABLE oracle_shrink (id int, pad text);
INSERT INTO oracle_shrink SELECT g, repeat('s', 200) FROM generate_series(1, 6000) g;
CREATE TABLE oracle_parted (id int, part int, note text) PARTITION BY LIST (part);
CREATE TABLE oracle_parted_1 PARTITION OF oracle_parted FOR VALUES IN (1);
CREATE TABLE oracle_parted_2 PARTITION OF oracle_parted FOR VALUES IN (2);
INSERT INTO oracle_parted SELECT g, 1, 'row ' || g FROM generate_series(1, 2000) g;
CREATE TABLE oracle_race (id int PRIMARY KEY);
CREATE TABLE oracle_dup (id int, grp int, note text);
CREATE INDEX oracle_dup_grp ON oracle_dup (grp);
CREATE INDEX oracle_dup_id ON oracle_dup (id);
CREATE TABLE oracle_meta (id int PRIMARY KEY);
INSERT INTO oracle_meta SELECT generate_series(1, 700);
CREATE TABLE oracle_wide (id int, k text);
CREATE INDEX oracle_wide_k ON oracle_wide (k);
INSERT INTO oracle_wide SELECT g, lpad(g::text, 200, '0') FROM generate_series(1, 6000) g;
CREATE SEQUENCE oracle_seq;
CREATE TABLE oracle_serial (id serial PRIMARY KEY, note text);
";

/// The btree- and sequence-heavy workload, after the heap one.
const BTREE_WORKLOAD_SQL: &[&str] = &[
    // Index builds write their pages as full-page images (XLOG/FPI); later records
    // are redone on top of them.
    "REINDEX INDEX oracle_heap_k",
    "CREATE INDEX oracle_heap_k_id ON oracle_heap (k, id)",
    // Seven keys, many duplicates: deduplication (DEDUP) makes posting lists, and
    // leaf pages full of them split.
    "INSERT INTO oracle_dup SELECT g, g % 7, 'n' FROM generate_series(1, 40000) g",
    // VACUUM removes whole posting lists of key 0 and some TIDs from those of key 1
    // (VACUUM with updated tuples), leaving the other keys' leaves full.
    "DELETE FROM oracle_dup WHERE grp = 0 OR (grp = 1 AND id % 5 = 0)",
    "VACUUM oracle_dup",
    // New rows of keys 2..6 land in the freed heap space, so their TIDs fall inside
    // existing posting lists on full leaves: posting list splits, alone
    // (INSERT_POST) and within page splits.
    "INSERT INTO oracle_dup SELECT g, 2 + g % 5, 'm' FROM generate_series(40001, 48000) g",
    // Non-HOT updates leave logically unchanged duplicates in oracle_dup_grp:
    // bottom-up deletion (DELETE, with posting list updates).
    "UPDATE oracle_dup SET id = id + 1000000 WHERE id % 3 = 0",
    "UPDATE oracle_dup SET id = id + 1000000 WHERE id % 3 = 0",
    "UPDATE oracle_dup SET id = id + 1000000 WHERE id % 3 = 0",
    "UPDATE oracle_dup SET id = id + 1000000 WHERE id % 3 = 0",
    // The left one of oracle_meta's two leaves empties: page deletion (MARK_PAGE_HALFDEAD,
    // UNLINK_PAGE_META as the fast root moves to the remaining leaf, META_CLEANUP).
    "DELETE FROM oracle_meta WHERE id <= 400",
    "VACUUM oracle_meta",
    // Whole subtrees of the three-level oracle_wide_k empty: internal pages are
    // unlinked too (UNLINK_PAGE rebuilding the half-dead leaf).
    "DELETE FROM oracle_wide WHERE id BETWEEN 1000 AND 4500",
    "VACUUM oracle_wide",
    // Sequences: nextval logs every 32 values; CREATE, ALTER ... RESTART and setval
    // log the whole tuple on a new or the same page.
    "SELECT count(nextval('oracle_seq')) FROM generate_series(1, 200)",
    "CREATE SEQUENCE oracle_seq2 START 100 INCREMENT 7",
    "SELECT nextval('oracle_seq2')",
    "ALTER SEQUENCE oracle_seq RESTART WITH 5",
    "SELECT nextval('oracle_seq')",
    "SELECT setval('oracle_seq2', 1000)",
    "INSERT INTO oracle_serial (note) SELECT 'serial' FROM generate_series(1, 300)",
];

/// After everything else, when the deleted pages' safexids are old enough: a second
/// VACUUM puts them in the free space map, and splits reuse them (REUSE_PAGE); the
/// split of oracle_meta's only leaf, the fast root, moves the fast root up
/// (INSERT_META).
const BTREE_REUSE_SQL: &[&str] = &[
    "VACUUM oracle_meta",
    "VACUUM oracle_wide",
    "INSERT INTO oracle_meta SELECT generate_series(10001, 11000)",
    "INSERT INTO oracle_wide SELECT g, lpad(g::text, 200, '0') FROM generate_series(1000, 4500) g",
];

/// The heap-heavy workload after X, in order.
const WORKLOAD_SQL: &[&str] = &[
    // HOT updates (fillfactor 70 leaves room), clearing VM bits set by VACUUM.
    "UPDATE oracle_heap SET v = v + 1 WHERE id % 10 = 0",
    // Non-HOT: an indexed column changes.
    "UPDATE oracle_heap SET k = k + 100000 WHERE id % 37 = 0",
    // Growing rows move to other pages.
    "UPDATE oracle_heap SET pad = repeat('q', 1500) WHERE id % 101 = 0",
    "DELETE FROM oracle_heap WHERE id % 13 = 0",
    // Rolled-back and subtransaction-aborted work.
    "BEGIN; INSERT INTO oracle_heap SELECT g, g, 0, 'rolled back' FROM generate_series(100001, 100500) g; ROLLBACK",
    "BEGIN; UPDATE oracle_heap SET v = -1 WHERE id BETWEEN 1 AND 300; SAVEPOINT s; \
     DELETE FROM oracle_heap WHERE id BETWEEN 301 AND 600; ROLLBACK TO s; \
     UPDATE oracle_heap SET v = -2 WHERE id BETWEEN 601 AND 700; \
     SAVEPOINT t; INSERT INTO oracle_heap VALUES (200001, 1, 1, 'sub'); RELEASE t; COMMIT",
    // Row locks.
    "SELECT count(*) FROM (SELECT * FROM oracle_heap WHERE id < 500 FOR UPDATE) s",
    "SELECT count(*) FROM (SELECT * FROM oracle_heap WHERE id BETWEEN 500 AND 900 FOR SHARE) s",
    "SELECT count(*) FROM (SELECT * FROM oracle_heap WHERE id BETWEEN 900 AND 1000 FOR NO KEY UPDATE) s",
    // Locks on all-frozen pages clear ALL_FROZEN in the VM.
    "SELECT count(*) FROM (SELECT * FROM oracle_frozen WHERE id < 300 FOR KEY SHARE) s",
    // TOAST.
    "INSERT INTO oracle_toast SELECT g, repeat(md5(g::text), 300) FROM generate_series(1, 200) g",
    "UPDATE oracle_toast SET doc = doc || 'x' WHERE id % 3 = 0",
    // Speculative insertion (INSERT + CONFIRM).
    "INSERT INTO oracle_upsert SELECT g, 0 FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING",
    "INSERT INTO oracle_upsert SELECT g, 1 FROM generate_series(500, 1500) g \
     ON CONFLICT (id) DO UPDATE SET n = oracle_upsert.n + 1",
    // VACUUM that truncates the relation's tail (smgr truncate).
    "DELETE FROM oracle_shrink WHERE id > 1000",
    "VACUUM oracle_shrink",
    "VACUUM oracle_heap",
    "VACUUM FREEZE oracle_heap",
    "UPDATE oracle_frozen SET note = note || '!' WHERE id % 50 = 0",
    "VACUUM (FREEZE, DISABLE_PAGE_SKIPPING) oracle_frozen",
    "INSERT INTO oracle_heap SELECT g, g, 0, 'late' FROM generate_series(300001, 302000) g",
    // Rows moving between partitions (XLH_DELETE_IS_PARTITION_MOVE).
    "UPDATE oracle_parted SET part = 2 WHERE id % 4 = 0",
    // A rewrite: new relation files written as full-page images.
    "VACUUM FULL oracle_toast",
];

#[test]
fn native_redo_matches_postgres_page_images() {
    let oracle = run_oracle(
        "redo-oracle",
        |cluster| {
            cluster.psql(SCHEMA_SQL).expect("schema");
        },
        run_workload,
    );
    let report = oracle.report();
    eprintln!("{report}");
    oracle.assert_passed(&report);
}

/// The same oracle over a TPC-C-like mix with foreign-key multixacts and serial
/// columns, then DDL: table and index rewrites, TRUNCATE, VACUUM FULL, CLUSTER,
/// CREATE/DROP DATABASE, TOAST, and rolled-back and subtransaction-aborted work.
#[test]
fn native_redo_matches_postgres_under_tpcc_and_ddl() {
    let oracle = run_oracle(
        "redo-oracle-tpcc",
        load_tpcc_schema,
        run_tpcc_and_ddl_workload,
    );
    let report = oracle.report();
    eprintln!("{report}");
    oracle.assert_consistent(&report);
    for name in [
        "Heap/INSERT",
        "Heap/UPDATE",
        "Heap/HOT_UPDATE",
        "Heap/DELETE",
        "Heap/LOCK",
        "Heap2/PRUNE",
        "Btree/INSERT_LEAF",
        "Sequence/LOG",
    ] {
        let count = oracle.stats.get(name).map_or(0, |stats| stats.checked);
        assert!(count > 0, "no {name} record was checked:\n{report}");
    }
    assert!(
        oracle.features.contains_key("xmax is multi"),
        "no multixact from the foreign-key lockers:\n{report}"
    );
}

/// Brings up a fresh cluster, runs `schema` to make the base state X (a clean
/// shutdown), then `workload` with every record carrying its pages' after-images, and
/// replays everything after X through the oracle, ending with the comparison against
/// the data directory.
fn run_oracle(
    name: &str,
    schema: impl FnOnce(&PgCluster),
    workload: impl FnOnce(&PgCluster, &TempDir),
) -> Oracle {
    let dir = TempDir::new(name);
    let bins = pg();
    let mut cluster = PgCluster::init(&bins, &dir.join("data")).expect("initdb");

    // The base state: the workload's tables, then a clean stop.
    cluster.set_settings(&BASE_SETTINGS).expect("settings");
    cluster.start(free_port()).expect("start");
    schema(&cluster);
    cluster.psql("CHECKPOINT").expect("checkpoint");
    cluster.stop(StopMode::Fast).expect("clean stop");
    let control = pg_controldata(&bins.tool("pg_controldata"), cluster.data_dir());
    assert_eq!(control["Database cluster state"], "shut down");
    let base_lsn: Lsn = control["Latest checkpoint location"]
        .parse()
        .expect("checkpoint LSN");
    let base_dir = dir.join("base-copy");
    for sub in ["base", "global"] {
        copy_tree(&cluster.data_dir().join(sub), &base_dir.join(sub)).expect("copy base state");
    }

    // The workload, every heap record carrying its page image.
    let mut settings: Vec<(&str, &str)> = BASE_SETTINGS.to_vec();
    settings.push(("wal_consistency_checking", "all"));
    settings.push(("full_page_writes", "off"));
    cluster.set_settings(&settings).expect("settings");
    cluster.start(free_port()).expect("restart");
    workload(&cluster, &dir);
    cluster.stop(StopMode::Fast).expect("clean stop");
    let control = pg_controldata(&bins.tool("pg_controldata"), cluster.data_dir());
    let final_checkpoint: Lsn = control["Latest checkpoint location"]
        .parse()
        .expect("checkpoint LSN");
    let redo_settings = redo_settings(&control);

    // Replay every record after X.
    let params = wal_stream_params(&control);
    let segment_size_bytes = params.segment_size_bytes;
    let wal = PgWalDir::new(
        cluster.data_dir().join("pg_wal"),
        TIMELINE,
        segment_size_bytes,
    );
    let mut reader = WalRecordReader::new(wal, base_lsn, None, params).expect("reader");
    let mut oracle = Oracle::new(base_dir, redo_settings);
    let mut last_record = None;
    while let Some(record) = reader.next_record().expect("read WAL") {
        if record.lsn == base_lsn {
            continue; // the base state's own shutdown checkpoint
        }
        oracle.replay(&record);
        last_record = Some(record.lsn);
    }
    assert!(
        matches!(reader.stop(), Some(ScanStop::Invalid(_))),
        "WAL ended by {:?}",
        reader.stop()
    );
    assert_eq!(
        last_record,
        Some(final_checkpoint),
        "replay reached the final shutdown checkpoint"
    );

    // The pages as Postgres left them at its clean shutdown.
    oracle.compare_final_state(cluster.data_dir());
    oracle
}

/// Runs the SQL workload (with concurrent sessions for multixacts and locks on updated
/// rows), then pgbench.
fn run_workload(cluster: &PgCluster, dir: &TempDir) {
    for sql in WORKLOAD_SQL.iter().chain(BTREE_WORKLOAD_SQL) {
        cluster
            .psql(sql)
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }
    // Concurrent lockers: shared locks from two transactions make a multixact; a key
    // share lock on a row another transaction is updating locks the updated version
    // too (XLOG_HEAP2_LOCK_UPDATED).
    thread::scope(|scope| {
        let holder = scope.spawn(|| {
            cluster.psql(&format!(
                "BEGIN; SELECT count(*) FROM (SELECT * FROM oracle_heap WHERE id BETWEEN 2000 AND 2100 FOR SHARE) s; \
                 UPDATE oracle_heap SET v = v + 5 WHERE id BETWEEN 3000 AND 3050; \
                 SELECT pg_sleep({}); COMMIT",
                LOCK_HOLD.as_secs_f64()
            ))
        });
        thread::sleep(LOCK_HEAD_START);
        cluster
            .psql(
                "BEGIN; SELECT count(*) FROM (SELECT * FROM oracle_heap WHERE id BETWEEN 2000 AND 2100 FOR SHARE) s; \
                 SELECT count(*) FROM (SELECT * FROM oracle_heap WHERE id BETWEEN 3000 AND 3050 FOR KEY SHARE) s; \
                 COMMIT",
            )
            .expect("second locker");
        holder
            .join()
            .expect("lock holder thread")
            .expect("lock holder");
    });
    cluster
        .psql("VACUUM oracle_heap")
        .expect("vacuum after multixacts");

    // Racing speculative insertions: a loser deletes its own tuple (super-delete).
    let race_script = dir.join("race.sql");
    fs::write(
        &race_script,
        "\\set k random(1, 20)\n\
         INSERT INTO oracle_race VALUES (:k) ON CONFLICT DO NOTHING;\n\
         DELETE FROM oracle_race WHERE id = :k;\n",
    )
    .expect("write race.sql");
    let race_script = race_script.to_str().expect("UTF-8 path");
    cluster
        .pgbench(&["-n", "-c", "2", "-j", "2", "-T", "2", "-f", race_script])
        .expect("pgbench race");

    cluster
        .pgbench(&["-i", "-s", "1", "-q"])
        .expect("pgbench -i");
    cluster
        .pgbench(&["-c", "2", "-j", "2", "-T", "5"])
        .expect("pgbench run");
    cluster
        .psql("VACUUM pgbench_accounts; VACUUM FREEZE pgbench_branches, pgbench_tellers; DELETE FROM pgbench_history WHERE aid % 2 = 0; VACUUM pgbench_history")
        .expect("vacuum pgbench tables");
    for sql in BTREE_REUSE_SQL {
        cluster
            .psql(sql)
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }
}

/// The TPC-C-like reference workload (tpcc-lite): schema, loaded at one warehouse,
/// and the transaction scripts with their pgbench weights.
const TPCC_SCHEMA_SQL: &str = include_str!("../data/tpcc-lite/schema.sql");
const TPCC_SCRIPTS: [(&str, &str, u32); 6] = [
    (
        "neworder.sql",
        include_str!("../data/tpcc-lite/neworder.sql"),
        45,
    ),
    (
        "payment.sql",
        include_str!("../data/tpcc-lite/payment.sql"),
        43,
    ),
    (
        "delivery.sql",
        include_str!("../data/tpcc-lite/delivery.sql"),
        4,
    ),
    (
        "orderstatus.sql",
        include_str!("../data/tpcc-lite/orderstatus.sql"),
        4,
    ),
    (
        "stocklevel.sql",
        include_str!("../data/tpcc-lite/stocklevel.sql"),
        4,
    ),
    // Concurrent foreign-key checks share-lock the same parent rows: multixacts.
    ("fk.sql", include_str!("../data/tpcc-lite/fk.sql"), 30),
];
/// Warehouses loaded (the reference loads 4; the scripts pick among 1..=4).
const TPCC_WAREHOUSES: u32 = 1;
/// How long, and with how many clients, pgbench runs the mix.
const TPCC_SECONDS: &str = "12";
const TPCC_CLIENTS: &str = "3";

/// The tables fk.sql works on, and those the DDL workload starts from.
const TPCC_EXTRA_SCHEMA_SQL: &str = "
CREATE TABLE fk_parent (id int PRIMARY KEY, note text);
INSERT INTO fk_parent SELECT g, 'parent ' || g FROM generate_series(1, 10) g;
CREATE TABLE fk_child (id serial PRIMARY KEY, parent_id int NOT NULL REFERENCES fk_parent, v int);
CREATE TABLE fk_other (id int PRIMARY KEY, v int);
INSERT INTO fk_other SELECT g, 0 FROM generate_series(1, 10) g;
CREATE TABLE ddl_base (id int PRIMARY KEY, k int, note text);
CREATE INDEX ddl_base_k ON ddl_base (k);
INSERT INTO ddl_base SELECT g, g % 100, repeat('b', 50 + g % 50) FROM generate_series(1, 5000) g;
VACUUM ddl_base;
";

/// DDL and maintenance after the TPC-C-like mix, in order.
const DDL_WORKLOAD_SQL: &[&str] = &[
    // Tables and indexes born after X: their pages exist only in WAL.
    "CREATE TABLE ddl_t (id serial PRIMARY KEY, k int, v int, doc text) WITH (fillfactor = 80)",
    "INSERT INTO ddl_t (k, v, doc) SELECT g % 50, 0, repeat('d', 100) FROM generate_series(1, 3000) g",
    "CREATE INDEX ddl_t_k ON ddl_t (k)",
    // A large text column, out of line (TOAST), uncompressible so it really is chunked.
    "ALTER TABLE ddl_t ADD COLUMN big text",
    "UPDATE ddl_t SET big = (SELECT string_agg(md5(g::text || ddl_t.id), '') FROM generate_series(1, 200) g) \
     WHERE id % 25 = 0",
    // HOT (unindexed column) and non-HOT (indexed column) updates.
    "UPDATE ddl_t SET v = v + 1 WHERE id % 3 = 0",
    "UPDATE ddl_t SET k = k + 1000 WHERE id % 7 = 0",
    "UPDATE ddl_base SET note = note || '+' WHERE id % 4 = 0",
    "UPDATE ddl_base SET k = k + 500 WHERE id % 9 = 0",
    // Rolled-back and subtransaction-aborted work, DDL included.
    "BEGIN; INSERT INTO ddl_t (k, v, doc) SELECT 1, 1, 'gone' FROM generate_series(1, 500); \
     CREATE TABLE ddl_gone (id int); INSERT INTO ddl_gone VALUES (1); ROLLBACK",
    "BEGIN; UPDATE ddl_base SET note = 'kept' WHERE id BETWEEN 1 AND 200; SAVEPOINT a; \
     DELETE FROM ddl_base WHERE id BETWEEN 201 AND 600; UPDATE ddl_t SET k = -1 WHERE id < 100; \
     ROLLBACK TO a; SAVEPOINT b; INSERT INTO ddl_t (k, v, doc) VALUES (7, 7, 'sub'); RELEASE b; \
     SAVEPOINT c; CREATE INDEX ddl_base_note ON ddl_base (note); ROLLBACK TO c; COMMIT",
    "DELETE FROM ddl_t WHERE id % 5 = 0",
    "VACUUM ddl_t",
    // Rewrites: a column type change, VACUUM FULL and CLUSTER write new relation
    // files (and their indexes and TOAST tables) as full-page images.
    "ALTER TABLE ddl_t ALTER COLUMN v TYPE bigint",
    "VACUUM FULL ddl_t",
    "CLUSTER ddl_base USING ddl_base_k",
    "ALTER TABLE ddl_base ADD COLUMN extra int DEFAULT 5",
    "ALTER TABLE ddl_base DROP COLUMN extra",
    "DROP INDEX ddl_t_k",
    "CREATE UNIQUE INDEX ddl_t_id_k ON ddl_t (id, k)",
    "REINDEX TABLE ddl_t",
    // TRUNCATE: a new relation file; in the creating transaction, the file itself
    // is truncated (smgr truncate).
    "TRUNCATE ddl_base",
    "INSERT INTO ddl_base SELECT g, g, 'after truncate' FROM generate_series(1, 500) g",
    "BEGIN; CREATE TABLE ddl_tmp (id int PRIMARY KEY, note text); \
     INSERT INTO ddl_tmp SELECT g, 'x' FROM generate_series(1, 2000) g; TRUNCATE ddl_tmp; \
     INSERT INTO ddl_tmp VALUES (1, 'y'); COMMIT",
    "VACUUM ddl_base",
    "VACUUM ANALYZE",
    "DROP TABLE ddl_tmp",
    "DROP TABLE ddl_t",
    // A database copied page by page from template1 in WAL, used, then dropped.
    "CREATE DATABASE oracle_db",
];

/// The TPC-C-like base state: the reference schema at [`TPCC_WAREHOUSES`], plus the
/// foreign-key and DDL tables.
fn load_tpcc_schema(cluster: &PgCluster) {
    let schema = TPCC_SCHEMA_SQL.replace("\\set W 4", &format!("\\set W {TPCC_WAREHOUSES}"));
    assert_ne!(schema, TPCC_SCHEMA_SQL, "tpcc-lite schema sets W");
    cluster.psql(&schema).expect("tpcc-lite schema");
    cluster
        .psql(TPCC_EXTRA_SCHEMA_SQL)
        .expect("foreign-key and DDL tables");
    cluster.psql("VACUUM ANALYZE").expect("vacuum after load");
}

/// pgbench over the TPC-C-like mix with fk.sql, then the DDL workload.
fn run_tpcc_and_ddl_workload(cluster: &PgCluster, dir: &TempDir) {
    let mut args: Vec<String> = ["-n", "-c", TPCC_CLIENTS, "-j", "2", "-T", TPCC_SECONDS]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
    for (name, script, weight) in TPCC_SCRIPTS {
        let script = script.replace("random(1,4)", &format!("random(1,{TPCC_WAREHOUSES})"));
        let path = dir.join(name);
        fs::write(&path, script).expect("write pgbench script");
        args.push("-f".to_string());
        args.push(format!("{}@{weight}", path.to_str().expect("UTF-8 path")));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.pgbench(&args).expect("pgbench tpcc-lite");
    let children = cluster
        .psql("SELECT count(*) FROM fk_child")
        .expect("count fk_child");
    assert!(children != "0", "fk.sql ran");

    for sql in DDL_WORKLOAD_SQL {
        cluster
            .psql(sql)
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }
    cluster
        .psql_db(
            "oracle_db",
            "CREATE TABLE in_db (id serial PRIMARY KEY, note text); \
             INSERT INTO in_db (note) SELECT 'n' || g FROM generate_series(1, 1000) g; \
             UPDATE in_db SET note = note || '!' WHERE id % 2 = 0; VACUUM in_db",
        )
        .expect("work in the new database");
    cluster
        .psql("DROP DATABASE oracle_db")
        .expect("drop database");
}

/// Per record type: what the oracle did with its block references.
#[derive(Default, Debug)]
struct TypeStats {
    records: u64,
    /// Blocks redone natively and compared with the logged image.
    checked: u64,
    /// Blocks restored from a BKPIMAGE_APPLY image.
    restored: u64,
    /// Blocks of records without native redo, taken from the logged image.
    not_yet_redone: u64,
    /// Blocks redone but not compared: no image, or the page was ahead of the record.
    unchecked: u64,
}

/// A page of the map and which rmgr last changed it through a block reference.
struct TrackedPage {
    page: Page,
    last_rmid: Option<u8>,
}

struct Oracle {
    base_dir: PathBuf,
    settings: RedoSettings,
    pages: HashMap<PageTag, TrackedPage>,
    /// Lowest block each fork was truncated to: base files beyond it are stale.
    truncated_at: HashMap<(RelFileNode, ForkNumber), u32>,
    /// Pages whose state we lost (an unsupported record without an image).
    unknown: HashSet<PageTag>,
    stats: BTreeMap<String, TypeStats>,
    vm_strict_checked: u64,
    implicit_vm_clears: u64,
    /// Records of types that must register no block (and had none).
    blockless_records: u64,
    /// Record variants seen (flags that select different redo paths).
    features: BTreeMap<&'static str, u64>,
    final_pages_compared: u64,
    final_vm_pages_compared: u64,
    final_pages_skipped: u64,
    failures: Vec<String>,
    failure_count: usize,
    records: u64,
}

impl Oracle {
    fn new(base_dir: PathBuf, settings: RedoSettings) -> Oracle {
        Oracle {
            base_dir,
            settings,
            pages: HashMap::new(),
            truncated_at: HashMap::new(),
            unknown: HashSet::new(),
            stats: BTreeMap::new(),
            vm_strict_checked: 0,
            implicit_vm_clears: 0,
            blockless_records: 0,
            features: BTreeMap::new(),
            final_pages_compared: 0,
            final_vm_pages_compared: 0,
            final_pages_skipped: 0,
            failures: Vec::new(),
            failure_count: 0,
            records: 0,
        }
    }

    fn fail(&mut self, message: String) {
        self.failure_count += 1;
        if self.failures.len() < MAX_REPORTED_FAILURES {
            self.failures.push(message);
        }
    }

    fn base_page(&self, tag: PageTag) -> Page {
        if self
            .truncated_at
            .get(&(tag.rel, tag.fork))
            .is_some_and(|&at| tag.block >= at)
        {
            return Page::zeroed();
        }
        read_block(&self.base_dir, tag)
            .unwrap_or_else(|error| panic!("reading {tag} from the base copy: {error}"))
            .unwrap_or_else(Page::zeroed)
    }

    fn page_mut(&mut self, tag: PageTag) -> &mut TrackedPage {
        if !self.pages.contains_key(&tag) {
            let page = self.base_page(tag);
            self.pages.insert(
                tag,
                TrackedPage {
                    page,
                    last_rmid: None,
                },
            );
        }
        self.pages.get_mut(&tag).expect("just inserted")
    }

    fn replay(&mut self, record: &DecodedRecord) {
        self.records += 1;
        let type_name = record.type_name();
        self.stats.entry(type_name.clone()).or_default().records += 1;

        if record.rmid == RM_SMGR_ID && record.rmgr_info() == XLOG_SMGR_TRUNCATE {
            self.smgr_truncate(record);
        }
        if matches!(record.rmid, RM_HEAP_ID | RM_HEAP2_ID) {
            match implicit_vm_clears(record) {
                Ok(clears) => {
                    for clear in clears {
                        self.implicit_vm_clears += 1;
                        let tracked = self.page_mut(clear.vm_page());
                        clear.apply(&mut tracked.page);
                    }
                }
                Err(error) => self.fail(format!("{type_name} at {}: {error}", record.lsn)),
            }
        }
        for feature in record_features(record) {
            *self.features.entry(feature).or_default() += 1;
        }
        if registers_no_blocks(record.rmid, record.info) {
            // No page to change: redo reports that it has no such block.
            self.blockless_records += 1;
            if !record.blocks.is_empty() {
                self.fail(format!(
                    "{type_name} at {} has {} block references; it should have none",
                    record.lsn,
                    record.blocks.len()
                ));
            }
            let result = apply_record_with(record, 0, &mut Page::zeroed(), &self.settings);
            if !matches!(result, Err(RedoError::NoSuchBlock { .. })) {
                self.fail(format!(
                    "{type_name} at {}: redo of a block it does not have gave {result:?}",
                    record.lsn
                ));
            }
        }
        let supported = is_supported(record.rmid, record.info);
        for block in &record.blocks {
            if supported {
                self.redo_block(record, &type_name, block);
            } else {
                self.take_logged_image(record, &type_name, block);
            }
        }
    }

    /// Native redo of one block, then the consistency check against its image.
    fn redo_block(&mut self, record: &DecodedRecord, type_name: &str, block: &BlockRef) {
        let tag = PageTag::of(block);
        if self.unknown.contains(&tag) {
            self.fail(format!(
                "{type_name} at {} touches {tag}, whose state was lost earlier",
                record.lsn
            ));
            return;
        }
        let settings = self.settings;
        let tracked = self.page_mut(tag);
        let mut replayed = tracked.page.clone();
        let result = apply_record_with(record, block.block_id, &mut replayed, &settings);
        tracked.page = replayed.clone();
        tracked.last_rmid = Some(record.rmid);
        if let Err(error) = result {
            // Keep the map usable for later records.
            if let Some(image) = logged_image(record, block) {
                self.page_mut(tag).page = image;
            }
            self.fail(format!(
                "{type_name} at {} (end {}), block {} ({tag}): redo failed: {error}",
                record.lsn, record.end_lsn, block.block_id
            ));
            return;
        }
        let stats = self.stats.entry(type_name.to_string()).or_default();
        let Some(image) = &block.image else {
            stats.unchecked += 1;
            return;
        };
        if image.apply {
            stats.restored += 1;
            return;
        }
        // verifyBackupPageConsistency: pages already ahead of the record are skipped.
        if replayed.lsn() > record.end_lsn {
            stats.unchecked += 1;
            return;
        }
        let Some(logged) = logged_image(record, block) else {
            self.fail(format!(
                "{type_name} at {}: block {} image does not restore",
                record.lsn, block.block_id
            ));
            return;
        };
        stats.checked += 1;
        let mut mismatched = false;
        if block.fork == ForkNumber::VisibilityMap {
            // heap_mask masks a VM page's whole bitmap as free space: compare the bits
            // too, masking only what the primary sets after taking the image.
            self.vm_strict_checked += 1;
            let (mut a, mut b) = (replayed.clone(), logged.clone());
            mask_page_lsn_and_checksum(&mut a);
            mask_page_lsn_and_checksum(&mut b);
            if a != b {
                mismatched = true;
                let diff = describe_diff(&a, &b, &DIFF);
                self.fail(format!(
                    "VM MISMATCH (LSN-masked) {type_name} at {} (end {}), block {} ({tag}): {diff}",
                    record.lsn, record.end_lsn, block.block_id
                ));
            }
        }
        let (mut a, mut b) = (replayed.clone(), logged.clone());
        let masked = mask_for_consistency_check(record.rmid, &mut a, tag.block)
            .and_then(|()| mask_for_consistency_check(record.rmid, &mut b, tag.block));
        if let Err(error) = masked {
            self.fail(format!(
                "{type_name} at {}: block {} ({tag}) cannot be masked: {error}",
                record.lsn, block.block_id
            ));
            return;
        }
        if a != b {
            mismatched = true;
            let diff = describe_diff(&a, &b, &DIFF);
            self.fail(format!(
                "MISMATCH {type_name} at {} (end {}), block {} ({tag}): {diff}",
                record.lsn, record.end_lsn, block.block_id
            ));
        }
        if mismatched {
            // Go on from the primary's page, so that each reported mismatch is a
            // record of its own and not the echo of an earlier one.
            let mut page = logged;
            page.set_lsn(replayed.lsn());
            self.page_mut(tag).page = page;
        }
    }

    /// A record without native redo: its logged image is the page after it.
    fn take_logged_image(&mut self, record: &DecodedRecord, type_name: &str, block: &BlockRef) {
        let tag = PageTag::of(block);
        let stats = self.stats.entry(type_name.to_string()).or_default();
        match logged_image(record, block) {
            Some(mut page) => {
                stats.not_yet_redone += 1;
                if !page.is_new() {
                    page.set_lsn(record.end_lsn);
                }
                self.unknown.remove(&tag);
                let tracked = self.page_mut(tag);
                tracked.page = page;
                tracked.last_rmid = Some(record.rmid);
            }
            None => {
                stats.unchecked += 1;
                self.pages.remove(&tag);
                self.unknown.insert(tag);
            }
        }
    }

    /// Mirrors smgr_redo's XLOG_SMGR_TRUNCATE for the page map: blocks at or beyond the
    /// new length go away, and the VM's last remaining page loses the truncated bits
    /// (visibilitymap_prepare_truncate).
    fn smgr_truncate(&mut self, record: &DecodedRecord) {
        let data = &record.main_data;
        assert!(data.len() >= 20, "xl_smgr_truncate at {}", record.lsn);
        let u32_at =
            |at: usize| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let blkno = u32_at(0);
        let rel = RelFileNode {
            spc_node: u32_at(4),
            db_node: u32_at(8),
            rel_node: u32_at(12),
        };
        let flags = u32_at(16);
        if flags & SMGR_TRUNCATE_HEAP != 0 {
            self.truncate_fork(rel, ForkNumber::Main, blkno);
        }
        if flags & SMGR_TRUNCATE_VM != 0 {
            let (keep, partial) = vm_blocks_after_truncate(blkno);
            if partial {
                let tag = PageTag {
                    rel,
                    fork: ForkNumber::VisibilityMap,
                    block: keep - 1,
                };
                let truncated_below = self
                    .truncated_at
                    .get(&(rel, ForkNumber::VisibilityMap))
                    .is_some_and(|&at| tag.block >= at);
                let exists = self.pages.contains_key(&tag)
                    || (!truncated_below
                        && read_block(&self.base_dir, tag)
                            .expect("read base copy")
                            .is_some());
                if exists {
                    truncate_vm_page(&mut self.page_mut(tag).page, blkno);
                }
            }
            self.truncate_fork(rel, ForkNumber::VisibilityMap, keep);
        }
        self.truncate_fork(rel, ForkNumber::Fsm, 0);
    }

    fn truncate_fork(&mut self, rel: RelFileNode, fork: ForkNumber, nblocks: u32) {
        self.pages
            .retain(|tag, _| !(tag.rel == rel && tag.fork == fork && tag.block >= nblocks));
        let at = self.truncated_at.entry((rel, fork)).or_insert(nblocks);
        *at = (*at).min(nblocks);
    }

    /// Compares every replayed page with what Postgres wrote at its clean shutdown:
    /// heap and btree pages under their masks, VM pages byte for byte.
    fn compare_final_state(&mut self, data_dir: &Path) {
        let mut tags: Vec<PageTag> = self.pages.keys().copied().collect();
        tags.sort();
        for tag in tags {
            if tag.fork == ForkNumber::Fsm {
                continue;
            }
            let Some(on_disk) = read_block(data_dir, tag).expect("read data directory") else {
                self.final_pages_skipped += 1; // dropped or truncated since
                continue;
            };
            let (page, last_rmid) = {
                let tracked = &self.pages[&tag];
                (tracked.page.clone(), tracked.last_rmid)
            };
            let (mut ours, mut theirs) = (page, on_disk);
            let lsns = (ours.lsn(), theirs.lsn());
            let what = if tag.fork == ForkNumber::VisibilityMap {
                self.final_vm_pages_compared += 1;
                "VM page"
            } else {
                let masked = match last_rmid {
                    Some(rmid @ (RM_HEAP_ID | RM_HEAP2_ID | RM_BTREE_ID)) => {
                        mask_for_consistency_check(rmid, &mut ours, tag.block)
                            .and_then(|()| mask_for_consistency_check(rmid, &mut theirs, tag.block))
                    }
                    // nextval changes the sequence tuple in place without WAL between
                    // the records it logs every SEQ_LOG_VALS values (recovery may skip
                    // up to that many): the file is ahead of the last record by design.
                    // Sequence pages are checked at every record instead.
                    _ => {
                        self.final_pages_skipped += 1;
                        continue;
                    }
                };
                if let Err(error) = masked {
                    self.fail(format!("final state of {tag} cannot be masked: {error}"));
                    continue;
                }
                self.final_pages_compared += 1;
                "page"
            };
            // The masks hide pd_lsn; at a clean shutdown it must be exactly what redo
            // stamped (the EndRecPtr of the page's last WAL-logged change).
            if lsns.0 != lsns.1 {
                self.fail(format!(
                    "FINAL STATE LSN MISMATCH: {what} {tag} (last changed by rmgr {last_rmid:?}) \
                     has pd_lsn {} after replay, {} in the data directory",
                    lsns.0, lsns.1
                ));
            }
            if ours != theirs {
                let diff = describe_diff(&ours, &theirs, &DIFF);
                self.fail(format!(
                    "FINAL STATE MISMATCH: {what} {tag} (last changed by rmgr {:?}) differs from \
                     the data directory after shutdown: {diff}",
                    last_rmid
                ));
            }
        }
    }

    fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "redo oracle: {} records replayed; {} implicit VM clears; {} VM pages also \
             compared unmasked but for the LSN; {} records that register no block \
             (Standby, XLOG but FPIs, Btree/REUSE_PAGE) had none",
            self.records, self.implicit_vm_clears, self.vm_strict_checked, self.blockless_records
        );
        let _ = writeln!(
            out,
            "{:<32} {:>8} {:>8} {:>8} {:>10} {:>9}",
            "record type", "records", "checked", "restored", "not redone", "unchecked"
        );
        for (name, stats) in &self.stats {
            let blocks = stats.checked + stats.restored + stats.not_yet_redone + stats.unchecked;
            if blocks == 0 && !name.starts_with("Btree/") {
                continue; // no block references
            }
            let _ = writeln!(
                out,
                "{:<32} {:>8} {:>8} {:>8} {:>10} {:>9}",
                name,
                stats.records,
                stats.checked,
                stats.restored,
                stats.not_yet_redone,
                stats.unchecked
            );
        }
        let blockless: Vec<String> = self
            .stats
            .iter()
            .filter(|(_, stats)| {
                stats.checked + stats.restored + stats.not_yet_redone + stats.unchecked == 0
            })
            .map(|(name, stats)| format!("{name} {}", stats.records))
            .collect();
        let _ = writeln!(
            out,
            "records without block references: {}",
            blockless.join(", ")
        );
        let features: Vec<String> = self
            .features
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        let _ = writeln!(out, "record variants: {}", features.join(", "));
        let _ = writeln!(
            out,
            "final state: {} heap/btree pages and {} VM pages compared with the data \
             directory, {} skipped",
            self.final_pages_compared, self.final_vm_pages_compared, self.final_pages_skipped
        );
        out
    }

    /// No mismatch or redo failure, and something was checked.
    fn assert_consistent(&self, report: &str) {
        assert!(
            self.failure_count == 0,
            "{} failures (first {} shown):\n{}\n\n{report}",
            self.failure_count,
            self.failures.len(),
            self.failures.join("\n")
        );
        let checked: u64 = self.stats.values().map(|stats| stats.checked).sum();
        assert!(checked > 0, "no supported record was checked:\n{report}");
        assert!(self.final_pages_compared > 0 && self.final_vm_pages_compared > 0);
    }

    fn assert_passed(&self, report: &str) {
        self.assert_consistent(report);
        // The workload must have exercised what this test claims to cover.
        for name in [
            "Heap/INSERT",
            "Heap/INSERT+INIT",
            "Heap/UPDATE",
            "Heap/HOT_UPDATE",
            "Heap/DELETE",
            "Heap/LOCK",
            "Heap/INPLACE",
            "Heap/HEAP_CONFIRM",
            "Heap2/LOCK_UPDATED",
            "Heap2/PRUNE",
            "Heap2/VACUUM",
            "Heap2/VISIBLE",
            "Heap2/FREEZE_PAGE",
            "Heap2/MULTI_INSERT",
            "Heap2/MULTI_INSERT+INIT",
            // Every Btree record type that changes pages.
            "Btree/INSERT_LEAF",
            "Btree/INSERT_UPPER",
            "Btree/INSERT_META",
            "Btree/INSERT_POST",
            "Btree/SPLIT_L",
            "Btree/SPLIT_R",
            "Btree/DEDUP",
            "Btree/VACUUM",
            "Btree/DELETE",
            "Btree/MARK_PAGE_HALFDEAD",
            "Btree/UNLINK_PAGE",
            "Btree/UNLINK_PAGE_META",
            "Btree/NEWROOT",
            "Btree/META_CLEANUP",
            "Sequence/LOG",
        ] {
            let count = self.stats.get(name).map_or(0, |stats| stats.checked);
            assert!(count > 0, "no {name} record was checked:\n{report}");
        }
        // Btree/REUSE_PAGE has no block reference, so nothing to check but that it
        // has none (above); the workload recycles deleted pages to produce it.
        let reused = self
            .stats
            .get("Btree/REUSE_PAGE")
            .map_or(0, |stats| stats.records);
        assert!(reused > 0, "no Btree/REUSE_PAGE record:\n{report}");
        assert!(
            self.blockless_records > 0,
            "no record that registers no block:\n{report}"
        );
        for feature in REQUIRED_FEATURES {
            assert!(
                self.features.contains_key(feature),
                "no record with {feature}:\n{report}"
            );
        }
        assert!(
            self.implicit_vm_clears > 0,
            "no implicit VM clear:\n{report}"
        );
        assert!(self.final_pages_compared > 0 && self.final_vm_pages_compared > 0);
    }
}

/// Variants the workload must produce: each takes its own path through redo.
const REQUIRED_FEATURES: &[&str] = &[
    "update prefix from old",
    "update suffix from old",
    "delete partition move",
    "insert speculative",
    "multi-insert all-frozen set",
    "lock clears all-frozen",
    "xmax is multi",
    "btree split with posting list split",
    "btree split with posting list split on the left",
    "btree split of an internal page",
    "btree vacuum updates posting lists",
    "btree delete updates posting lists",
    "btree unlink of an internal page",
    "btree new root above a split",
    "btree first root",
];

/// The redo-relevant variants of a heap record, by its flags.
fn record_features(record: &DecodedRecord) -> Vec<&'static str> {
    let mut features = Vec::new();
    let multi = |infobits: u8| infobits & XLHL_XMAX_IS_MULTI != 0;
    match record.rmid {
        RM_HEAP_ID => match parse_heap_record(record) {
            Ok(HeapRecord::Insert { flags, .. }) if flags & XLH_INSERT_IS_SPECULATIVE != 0 => {
                features.push("insert speculative");
            }
            Ok(HeapRecord::Delete {
                flags,
                infobits_set,
                ..
            }) => {
                if flags & XLH_DELETE_IS_SUPER != 0 {
                    features.push("delete super (speculative abort)");
                }
                if flags & XLH_DELETE_IS_PARTITION_MOVE != 0 {
                    features.push("delete partition move");
                }
                if multi(infobits_set) {
                    features.push("xmax is multi");
                }
            }
            Ok(HeapRecord::Update {
                flags,
                old_infobits_set,
                ..
            }) => {
                if flags & XLH_UPDATE_PREFIX_FROM_OLD != 0 {
                    features.push("update prefix from old");
                }
                if flags & XLH_UPDATE_SUFFIX_FROM_OLD != 0 {
                    features.push("update suffix from old");
                }
                if multi(old_infobits_set) {
                    features.push("xmax is multi");
                }
            }
            Ok(HeapRecord::Lock {
                flags,
                infobits_set,
                ..
            }) => {
                if flags & XLH_LOCK_ALL_FROZEN_CLEARED != 0 {
                    features.push("lock clears all-frozen");
                }
                if multi(infobits_set) {
                    features.push("xmax is multi");
                }
            }
            _ => {}
        },
        RM_HEAP2_ID => {
            if let Ok(Heap2Record::MultiInsert { flags, .. }) = parse_heap2_record(record)
                && flags & XLH_INSERT_ALL_FROZEN_SET != 0
            {
                features.push("multi-insert all-frozen set");
            }
        }
        RM_BTREE_ID => match parse_btree_record(record) {
            Ok(BtreeRecord::Split(SplitRecord {
                level,
                postingoff,
                firstrightoff,
                newitemoff,
                ..
            })) => {
                if postingoff != 0 {
                    features.push("btree split with posting list split");
                    // The split posting list is at newitemoff - 1: on the left page
                    // (rebuilt by redo from the original page) unless it moved right.
                    if newitemoff - 1 < firstrightoff {
                        features.push("btree split with posting list split on the left");
                    }
                }
                if level > 0 {
                    features.push("btree split of an internal page");
                }
            }
            Ok(BtreeRecord::Insert {
                kind: InsertKind::Post,
                ..
            }) => features.push("btree insert with posting list split"),
            Ok(BtreeRecord::Vacuum { nupdated, .. }) if nupdated > 0 => {
                features.push("btree vacuum updates posting lists");
            }
            Ok(BtreeRecord::Delete { nupdated, .. }) if nupdated > 0 => {
                features.push("btree delete updates posting lists");
            }
            Ok(BtreeRecord::Unlink(UnlinkRecord { level, .. })) if level > 0 => {
                features.push("btree unlink of an internal page");
            }
            Ok(BtreeRecord::Newroot { level, .. }) => {
                features.push(if level > 0 {
                    "btree new root above a split"
                } else {
                    "btree first root"
                });
            }
            _ => {}
        },
        _ => {}
    }
    features
}

/// The block's logged image as a page.
fn logged_image(record: &DecodedRecord, block: &BlockRef) -> Option<Page> {
    let image = record.restore_image(block.block_id).ok()?;
    Page::from_bytes(&image[..])
}

/// Block `tag` from a data directory: `None` if the file or the block does not exist.
fn read_block(data_dir: &Path, tag: PageTag) -> io::Result<Option<Page>> {
    match tag.rel.spc_node {
        GLOBALTABLESPACE_OID | DEFAULTTABLESPACE_OID => {}
        other => panic!("tablespace {other} is not used by this test"),
    }
    match pgdata::read_block(data_dir, tag.rel, tag.fork, tag.block) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        result => result,
    }
}
