//! tarn's ingest and GetPage@LSN against the files a real PostgreSQL 15 wrote.
//!
//! A fresh cluster is initialised and its data directory copied before the first
//! start: the catalogs initdb's bootstrap wrote without WAL exist only there. It then
//! runs with `full_page_writes = off` (and autovacuum off, so that nothing changes
//! after the final CHECKPOINT): pgbench, tables with indexes, updates and deletes,
//! VACUUM (with truncation), TRUNCATE, DROP TABLE, an unlogged table, multixacts,
//! CREATE DATABASE with both strategies (each with data), DROP DATABASE, and a part
//! run with `wal_consistency_checking = 'all'`; a CHECKPOINT; a clean stop.
//!
//! The store is seeded with the initdb copy at the LSN of the first WAL record (the
//! bootstrap checkpoint at the start of the first segment) and every record from there
//! is ingested. The copy is newer than that LSN (it is the state at initdb's end), so
//! until a block's first WAL reference the store reads it "from the future", as crash
//! recovery would; initdb runs with full_page_writes on, so every block it changes
//! after bootstrap gets a full-page image or is initialised by its first record, from
//! which replay is exact. Reads are only claimed exact from initdb's end onwards.
//!
//! Checks, at the CHECKPOINT's LSN:
//! - every block of every relation fork (main, vm, init; not fsm) in the data
//!   directory equals tarn's page after masking: heap_mask / btree_mask by page type
//!   (hint bits are set without WAL), visibility map pages byte for byte but for the
//!   LSN, and pd_lsn equal for heap, btree and VM pages;
//! - relation sizes match (file blocks vs the size key) — files may only be longer by
//!   all-zero blocks Postgres added without WAL (bulk extension); every relation tarn
//!   lists has a file and every file (but unlogged relations' non-init forks) is
//!   known to tarn;
//! - pg_xact and pg_multixact pages, pg_filenode.map files and the checkpoint
//!   counters;
//! - dropped relations and the dropped database read as "does not exist", but exist
//!   at an LSN before the drop;
//! - historic reads: every consistency image the checked part logged equals tarn's
//!   page at that record's end LSN, under the record's rmgr mask.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use tarn_pages::ingest::import::import_data_dir;
use tarn_pages::ingest::{
    CheckpointState, DEFAULT_IMAGE_THRESHOLD_DELTAS, DEFAULTTABLESPACE_OID, DbDir,
    GLOBALTABLESPACE_OID, IngestConfig, Ingester, RelDir,
};
use tarn_pages::mask::{
    btree_mask, heap_mask, mask_for_consistency_check, mask_page_lsn_and_checksum,
};
use tarn_pages::reconstruct::{
    PageReader, ReconstructError, get_rel_size, get_slru_segment_size, materializer, rel_exists,
};
use tarn_pages::store::{Key, SlruKind, StoreConfig, TimelineStore, Value};
use tarn_pages::{BLCKSZ, Page};
use tarn_tests::pgdata::{
    DiffFormat, RELSEG_BLOCKS, copy_tree, describe_diff, pg_controldata, read_block, redo_settings,
    wal_stream_params,
};
use tarn_tests::{PgCluster, StopMode, TempDir, free_port, pg};
use tarn_wal::Lsn;
use tarn_wal::decode::{ForkNumber, PgWalDir, RawRecord, RelFileNode, WalRecordReader};
use tarn_wal::format::ScanStop;

/// Timeline of a freshly initialised cluster.
const TIMELINE: u32 = 1;
/// The open layer is frozen and flushed (and compaction given a chance) at this size.
const FREEZE_AT_BYTES: usize = 32 << 20;
/// Mismatches described in full; the rest are counted.
const MAX_REPORTED_FAILURES: usize = 25;
/// How mismatches are described: differing byte runs shown per mismatch, and bytes of
/// each.
const DIFF: DiffFormat = DiffFormat {
    names: ("tarn", "postgres"),
    run_names: ("tarn", "pg"),
    max_runs: 6,
    run_bytes: 12,
};
/// How long the first locker holds its share locks for the second to join them.
const LOCK_HOLD: Duration = Duration::from_secs(3);
const LOCK_HEAD_START: Duration = Duration::from_secs(1);
/// SEQ_MAGIC (sequence.c): a sequence page's special space.
const SEQ_MAGIC: u32 = 0x1717;
/// sizeof(BTPageOpaqueData).
const BTREE_SPECIAL_BYTES: usize = 16;
/// Images and deltas written for the pushdown measurement.
const MEASURE_VALUES: u32 = 4096;

const SETTINGS: [(&str, &str); 7] = [
    ("wal_keep_size", "4GB"),
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "1h"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("autovacuum", "off"),
];

const TABLES_SQL: &str = "
CREATE TABLE items (id int PRIMARY KEY, k int, v text) WITH (fillfactor = 80);
CREATE INDEX items_k ON items (k);
INSERT INTO items SELECT g, g % 97, repeat(md5(g::text), 2) FROM generate_series(1, 30000) g;
UPDATE items SET v = v || 'u' WHERE id % 10 = 0;
UPDATE items SET k = k + 1000 WHERE id % 33 = 0;
DELETE FROM items WHERE id % 17 = 0;
VACUUM items;
UPDATE items SET k = -k WHERE id % 101 = 0;
CREATE TABLE shrink (id int, pad text);
INSERT INTO shrink SELECT g, repeat('s', 300) FROM generate_series(1, 20000) g;
VACUUM shrink;
DELETE FROM shrink WHERE id > 2500;
VACUUM shrink;
CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY, note text);
INSERT INTO scratch SELECT g, 'unlogged' FROM generate_series(1, 1000) g;
CREATE TABLE frozen (id int, note text);
INSERT INTO frozen SELECT g, 'f' || g FROM generate_series(1, 5000) g;
VACUUM FREEZE frozen;
UPDATE frozen SET note = note || '!' WHERE id % 100 = 0;
BEGIN; INSERT INTO items SELECT g, 0, 'rolled back' FROM generate_series(100001, 100300) g; ROLLBACK;
BEGIN; UPDATE items SET v = 'sub' WHERE id BETWEEN 1 AND 50; SAVEPOINT s;
  DELETE FROM items WHERE id BETWEEN 51 AND 100; ROLLBACK TO s;
  SAVEPOINT t; INSERT INTO items VALUES (200001, 1, 'released'); RELEASE t; COMMIT;
";

/// Run with `wal_consistency_checking = 'all'`: every block reference carries the page
/// as the primary left it.
const CONSISTENCY_SQL: &str = "
SET wal_consistency_checking = 'all';
UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 97 = 0;
UPDATE items SET v = v || 'c' WHERE id % 13 = 0;
UPDATE items SET k = k + 5 WHERE id % 29 = 0;
DELETE FROM items WHERE id % 23 = 0;
INSERT INTO items SELECT g, g % 11, 'checked' FROM generate_series(300001, 306000) g;
SELECT count(*) FROM (SELECT * FROM items WHERE id < 2000 FOR UPDATE) s;
VACUUM items;
UPDATE frozen SET note = 'again' WHERE id % 250 = 0;
DELETE FROM shrink WHERE id > 1500;
VACUUM shrink;
CREATE TABLE checked_new AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 3000) g;
CREATE INDEX checked_new_h ON checked_new (h);
INSERT INTO checked_new SELECT g, md5(g::text) FROM generate_series(3001, 6000) g;
";

/// What the workload did that the checks need.
struct Facts {
    dropped_table: RelFileNode,
    before_table_drop: Lsn,
    truncated_table_old: RelFileNode,
    before_truncate: Lsn,
    dropped_db: u32,
    dropped_db_table: RelFileNode,
    before_db_drop: Lsn,
    consistency_start: Lsn,
    consistency_end: Lsn,
    /// Databases whose catalogs came from a WAL_LOG copy (db_wal, and db_copy made
    /// from it by FILE_COPY): see [`Check::compare_page`].
    wal_log_copies: BTreeSet<u32>,
}

#[test]
fn ingest_reproduces_postgres_data_files() {
    let dir = TempDir::new("datafiles");
    let bins = pg();
    let mut cluster = PgCluster::init(&bins, &dir.join("data")).expect("initdb");
    let controldata = bins.tool("pg_controldata");

    // The files as initdb left them, before the first start.
    let initdb_copy = dir.join("initdb-copy");
    copy_tree(cluster.data_dir(), &initdb_copy).expect("copy the data directory after initdb");
    let initdb_control = pg_controldata(&controldata, &initdb_copy);
    assert_eq!(initdb_control["Database cluster state"], "shut down");

    cluster.set_settings(&SETTINGS).expect("settings");
    cluster.start(free_port()).expect("start");
    let workload_start = Instant::now();
    let facts = run_workload(&cluster);
    cluster.psql("CHECKPOINT").expect("checkpoint");
    let checkpoint_lsn: Lsn = cluster
        .psql("SELECT checkpoint_lsn FROM pg_control_checkpoint()")
        .expect("checkpoint LSN")
        .parse()
        .expect("an LSN");
    cluster.stop(StopMode::Fast).expect("clean stop");
    let workload_time = workload_start.elapsed();

    let control = pg_controldata(&controldata, cluster.data_dir());
    assert_eq!(control["Database cluster state"], "shut down");
    let shutdown_checkpoint: Lsn = control["Latest checkpoint location"]
        .parse()
        .expect("checkpoint LSN");
    let settings = redo_settings(&control);
    let params = wal_stream_params(&control);
    let segment_size_bytes = params.segment_size_bytes;
    let wal_dir = cluster.data_dir().join("pg_wal");
    let wal_start = Lsn(first_segment(&wal_dir, segment_size_bytes) * segment_size_bytes);

    // ---- ingest everything from the first segment --------------------------------
    let mut reader = WalRecordReader::new(
        PgWalDir::new(&wal_dir, TIMELINE, segment_size_bytes),
        wal_start,
        None,
        params,
    )
    .expect("WAL reader");
    let first = reader
        .next_raw_record()
        .expect("read WAL")
        .expect("a first record");
    let seed_lsn = first.lsn;
    let store_config = StoreConfig {
        image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
        ..StoreConfig::default()
    };
    let mut store = TimelineStore::create(&dir.join("store"), Lsn(seed_lsn.0 - 1), store_config)
        .expect("create store");
    let import =
        import_data_dir(&mut store, &initdb_copy, seed_lsn).expect("import initdb's files");
    let mut ingester = Ingester::new(IngestConfig {
        settings,
        image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
    });
    let ingest_start = Instant::now();
    let mut next = Some(first);
    let mut last: Option<RawRecord> = None;
    let mut wal_bytes = 0u64;
    let mut compactions = 0;
    let mut materialize = materializer();
    while let Some(raw) = next {
        ingester
            .ingest(&mut store, &raw)
            .unwrap_or_else(|error| panic!("ingest failed: {error}"));
        wal_bytes += raw.bytes.len() as u64;
        if store.open_layer_bytes() > FREEZE_AT_BYTES {
            store.freeze(store.last_lsn()).expect("freeze");
            store.flush().expect("flush");
            let report = store.compact(&mut materialize).expect("compact");
            if report.l0_layers_merged > 0 {
                compactions += 1;
            }
        }
        last = Some(raw);
        next = reader.next_raw_record().expect("read WAL");
    }
    let ingest_time = ingest_start.elapsed();
    assert!(
        matches!(reader.stop(), Some(ScanStop::Invalid(_))),
        "WAL ended by {:?}",
        reader.stop()
    );
    let last = last.expect("records");
    assert_eq!(
        last.lsn, shutdown_checkpoint,
        "ingest reached the shutdown checkpoint"
    );
    let end_lsn = last.end_lsn;
    store.freeze(store.last_lsn()).expect("freeze");
    store.flush().expect("flush");
    let stats = ingester.stats().clone();

    // ---- compare with the data directory --------------------------------------------
    let page_reader = PageReader::new(DEFAULT_IMAGE_THRESHOLD_DELTAS);
    let mut check = Check::default();
    let compare_start = Instant::now();
    check.wal_log_copies = facts.wal_log_copies.clone();
    check.relation_files(&store, &page_reader, cluster.data_dir(), checkpoint_lsn);
    check.slrus(&store, &page_reader, cluster.data_dir(), checkpoint_lsn);
    check.relmaps(&store, cluster.data_dir(), checkpoint_lsn);
    check.checkpoint(&store, &control, end_lsn);
    check.drops(&store, &page_reader, &facts, checkpoint_lsn);
    let compare_time = compare_start.elapsed();
    let final_reads = page_reader.metrics();

    // ---- historic reads against the consistency images ----------------------------------
    page_reader.reset_metrics();
    let mut reader = WalRecordReader::new(
        PgWalDir::new(&wal_dir, TIMELINE, segment_size_bytes),
        wal_start,
        None,
        params,
    )
    .expect("WAL reader");
    while let Some(record) = reader.next_record().expect("read WAL") {
        if record.lsn < facts.consistency_start || record.lsn >= facts.consistency_end {
            continue;
        }
        check.historic(&store, &page_reader, &record);
    }
    let historic_reads = page_reader.metrics();

    let measured = measure_pushdown_costs(&dir.join("measure"));

    let mut report = String::new();
    let _ = writeln!(
        report,
        "workload {:.1} s; WAL {:.1} MiB in {} records from {wal_start} to {end_lsn}; \
         ingest {:.1} s ({:.1} MiB/s), {compactions} compactions, {} layers",
        workload_time.as_secs_f64(),
        wal_bytes as f64 / (1 << 20) as f64,
        stats.records,
        ingest_time.as_secs_f64(),
        wal_bytes as f64 / (1 << 20) as f64 / ingest_time.as_secs_f64(),
        store.layer_count()
    );
    let _ = writeln!(report, "import of initdb's files at {seed_lsn}: {import:?}");
    let _ = writeln!(report, "ingest: {stats:?}");
    let _ = writeln!(
        report,
        "compared at the CHECKPOINT's LSN {checkpoint_lsn} in {:.1} s",
        compare_time.as_secs_f64()
    );
    check.report(&mut report);
    let _ = writeln!(report, "reads for the comparison: {final_reads}");
    let _ = writeln!(report, "historic reads: {historic_reads}");
    let _ = writeln!(report, "{measured}");
    eprintln!("{report}");
    check.assert_passed(&report);
}

/// The workload; returns what the checks need to know about it.
fn run_workload(cluster: &PgCluster) -> Facts {
    let lsn = |cluster: &PgCluster| -> Lsn {
        cluster
            .psql("SELECT pg_current_wal_insert_lsn()")
            .expect("current LSN")
            .parse()
            .expect("an LSN")
    };
    cluster
        .pgbench(&["-i", "-s", "2", "-q"])
        .expect("pgbench -i");
    cluster
        .pgbench(&["-c", "2", "-j", "2", "-T", "10"])
        .expect("pgbench run");
    cluster.psql(TABLES_SQL).expect("tables");

    // DROP TABLE and TRUNCATE (a new relfilenode; the old one is dropped at commit).
    let dropped_table = relation(
        cluster,
        "postgres",
        "CREATE TABLE drop_me AS SELECT g AS id FROM generate_series(1, 5000) g",
        "drop_me",
    );
    let before_table_drop = lsn(cluster);
    cluster.psql("DROP TABLE drop_me").expect("drop table");
    let truncated_table_old = relation(
        cluster,
        "postgres",
        "CREATE TABLE trunc_me AS SELECT g AS id FROM generate_series(1, 5000) g",
        "trunc_me",
    );
    let before_truncate = lsn(cluster);
    cluster
        .psql("TRUNCATE trunc_me; INSERT INTO trunc_me SELECT generate_series(1, 100)")
        .expect("truncate");

    // Multixacts: two transactions share-lock the same rows.
    thread::scope(|scope| {
        let holder = scope.spawn(|| {
            cluster.psql(&format!(
                "BEGIN; SELECT count(*) FROM (SELECT * FROM items WHERE id BETWEEN 1000 AND 1400 FOR SHARE) s; \
                 SELECT pg_sleep({}); COMMIT",
                LOCK_HOLD.as_secs_f64()
            ))
        });
        thread::sleep(LOCK_HEAD_START);
        cluster
            .psql("BEGIN; SELECT count(*) FROM (SELECT * FROM items WHERE id BETWEEN 1000 AND 1400 FOR SHARE) s; COMMIT")
            .expect("second locker");
        holder
            .join()
            .expect("lock holder thread")
            .expect("lock holder");
    });

    // CREATE DATABASE, both strategies, each with data of its own.
    cluster
        .psql("CREATE DATABASE db_wal STRATEGY wal_log")
        .expect("create database (wal_log)");
    cluster
        .psql_db(
            "db_wal",
            "CREATE TABLE w (id int PRIMARY KEY, v text); \
             INSERT INTO w SELECT g, md5(g::text) FROM generate_series(1, 8000) g; \
             CREATE INDEX w_v ON w (v); DELETE FROM w WHERE id % 9 = 0; VACUUM w",
        )
        .expect("db_wal data");
    cluster
        .psql("CREATE DATABASE db_copy TEMPLATE db_wal STRATEGY file_copy")
        .expect("create database (file_copy)");
    cluster
        .psql_db(
            "db_copy",
            "INSERT INTO w SELECT g, 'copy' FROM generate_series(10001, 13000) g; \
             UPDATE w SET v = v || '+' WHERE id % 5 = 0; \
             CREATE TABLE c AS SELECT g AS id FROM generate_series(1, 2000) g",
        )
        .expect("db_copy data");

    let wal_log_copies = cluster
        .psql("SELECT oid FROM pg_database WHERE datname IN ('db_wal', 'db_copy')")
        .expect("database oids")
        .lines()
        .map(|oid| oid.trim().parse().expect("an oid"))
        .collect();

    // DROP DATABASE.
    cluster
        .psql("CREATE DATABASE dropme")
        .expect("create dropme");
    let dropped_db_table = relation(
        cluster,
        "dropme",
        "CREATE TABLE d AS SELECT g AS id FROM generate_series(1, 3000) g",
        "d",
    );
    let dropped_db = dropped_db_table.db_node;
    let before_db_drop = lsn(cluster);
    cluster.psql("DROP DATABASE dropme").expect("drop database");

    let consistency_start = lsn(cluster);
    cluster
        .psql(CONSISTENCY_SQL)
        .expect("consistency-checked part");
    let consistency_end = lsn(cluster);

    Facts {
        dropped_table,
        before_table_drop,
        truncated_table_old,
        before_truncate,
        dropped_db,
        dropped_db_table,
        before_db_drop,
        consistency_start,
        consistency_end,
        wal_log_copies,
    }
}

/// Runs `create` in `db`, then returns `table`'s RelFileNode.
fn relation(cluster: &PgCluster, db: &str, create: &str, table: &str) -> RelFileNode {
    let out = cluster
        .psql_db(
            db,
            &format!(
                "{create}; SELECT (SELECT oid FROM pg_database WHERE datname = current_database()), \
                 pg_relation_filenode('{table}')"
            ),
        )
        .unwrap_or_else(|error| panic!("{create}: {error}"));
    let (db_oid, filenode) = out.trim().split_once('|').expect("two columns");
    RelFileNode {
        spc_node: DEFAULTTABLESPACE_OID,
        db_node: db_oid.parse().expect("db oid"),
        rel_node: filenode.parse().expect("filenode"),
    }
}

/// Per page category: pages compared and pages that differ.
#[derive(Default, Debug)]
struct Category {
    compared: u64,
    mismatched: u64,
}

#[derive(Default)]
struct Check {
    /// By category ("main/heap", "vm", "init/btree", "clog", "historic Heap/UPDATE" ...).
    categories: BTreeMap<String, Category>,
    /// Relation forks compared, by fork.
    forks: BTreeMap<&'static str, u64>,
    blocks: BTreeMap<&'static str, u64>,
    relations: BTreeSet<(u32, u32, u32)>,
    lsn_mismatches: u64,
    /// Blocks beyond tarn's size that Postgres wrote without WAL: zero pages (bulk
    /// extension) and empty visibility map pages (vm_extend), forks included.
    unlogged_blocks: u64,
    wal_log_copies: BTreeSet<u32>,
    /// VM pages of WAL_LOG copies with fewer bits in tarn, as in Postgres's replay.
    vm_bits_lost_by_wal_log_copy: u64,
    unlogged_forks_skipped: u64,
    sequence_pages_skipped: u64,
    slru_pages: u64,
    relmaps: u64,
    drop_checks: u64,
    failures: Vec<String>,
    failure_count: usize,
}

impl Check {
    fn fail(&mut self, message: String) {
        self.failure_count += 1;
        if self.failures.len() < MAX_REPORTED_FAILURES {
            self.failures.push(message);
        }
    }

    fn count(&mut self, category: &str, mismatched: bool) {
        let entry = self.categories.entry(category.to_string()).or_default();
        entry.compared += 1;
        if mismatched {
            entry.mismatched += 1;
        }
    }

    /// Every relation fork file of the data directory against tarn at `lsn`, and every
    /// relation tarn lists against the files.
    fn relation_files(
        &mut self,
        store: &TimelineStore,
        reader: &PageReader,
        data_dir: &Path,
        lsn: Lsn,
    ) {
        let mut on_disk: BTreeMap<(u32, u32), BTreeMap<(u32, ForkNumber), u32>> = BTreeMap::new();
        for (spc, db, dir) in database_dirs(data_dir) {
            on_disk.insert(
                (spc, db),
                relation_forks(&dir).expect("list relation files"),
            );
        }
        // tarn's view: databases and their relations.
        let db_dir =
            DbDir::decode(&image_at(store, Key::db_dir(), lsn).expect("database directory"))
                .expect("decode database directory");
        let tarn_dbs: BTreeSet<(u32, u32)> = db_dir.0.clone();
        let disk_dbs: BTreeSet<(u32, u32)> = on_disk.keys().copied().collect();
        if tarn_dbs != disk_dbs {
            self.fail(format!(
                "databases differ: tarn lists {tarn_dbs:?}, the data directory has {disk_dbs:?}"
            ));
        }
        for &(spc, db) in &tarn_dbs {
            let Some(files) = on_disk.get(&(spc, db)) else {
                continue;
            };
            let rel_dir = RelDir::decode(
                &image_at(store, Key::rel_dir(spc, db), lsn).expect("relation directory"),
            )
            .expect("decode relation directory");
            for &(rel_node, fork) in &rel_dir.0 {
                if !files.contains_key(&(rel_node, fork)) {
                    self.fail(format!(
                        "tarn lists relation {spc}/{db}/{rel_node} fork {fork:?}, the data directory has no such file"
                    ));
                }
            }
        }

        for ((spc, db), files) in &on_disk {
            let unlogged: BTreeSet<u32> = files
                .keys()
                .filter(|(_, fork)| *fork == ForkNumber::Init)
                .map(|(rel, _)| *rel)
                .collect();
            for (&(rel_node, fork), &file_blocks) in files {
                if fork == ForkNumber::Fsm {
                    continue;
                }
                if unlogged.contains(&rel_node) && fork != ForkNumber::Init {
                    // Not WAL-logged: Postgres rebuilds it from the init fork.
                    self.unlogged_forks_skipped += 1;
                    continue;
                }
                let rel = RelFileNode {
                    spc_node: *spc,
                    db_node: *db,
                    rel_node,
                };
                self.relation_fork(store, reader, data_dir, rel, fork, file_blocks, lsn);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn relation_fork(
        &mut self,
        store: &TimelineStore,
        reader: &PageReader,
        data_dir: &Path,
        rel: RelFileNode,
        fork: ForkNumber,
        file_blocks: u32,
        lsn: Lsn,
    ) {
        let fork_name = fork_name(fork);
        *self.forks.entry(fork_name).or_default() += 1;
        self.relations
            .insert((rel.spc_node, rel.db_node, rel.rel_node));
        let tarn_blocks = match get_rel_size(store, rel, fork, lsn) {
            Ok(nblocks) => nblocks,
            // vm_extend creates the fork without WAL (VACUUM pins VM pages of heap
            // pages it does not mark): an empty map is all Postgres could replay.
            Err(ReconstructError::RelationNotFound { .. }) if fork == ForkNumber::VisibilityMap => {
                0
            }
            Err(error) => {
                self.fail(format!(
                    "{rel:?} {fork_name} ({file_blocks} blocks on disk): {error}"
                ));
                return;
            }
        };
        if tarn_blocks > file_blocks {
            self.fail(format!(
                "SIZE MISMATCH {rel:?} {fork_name}: tarn has {tarn_blocks} blocks, the file {file_blocks}"
            ));
        }
        for blk in 0..file_blocks {
            let theirs = read_block(data_dir, rel, fork, blk)
                .expect("read data file")
                .expect("block within the file");
            if blk >= tarn_blocks {
                // Blocks Postgres added without WAL and never used: zero pages of bulk
                // extension, empty pages of vm_extend.
                let zeros = theirs.as_bytes().iter().all(|b| *b == 0);
                if zeros || (fork == ForkNumber::VisibilityMap && is_empty_vm_page(&theirs)) {
                    self.unlogged_blocks += 1;
                } else {
                    self.fail(format!(
                        "SIZE MISMATCH {rel:?} {fork_name}: tarn has {tarn_blocks} blocks, the file \
                         {file_blocks}, and block {blk} is not zeros"
                    ));
                    return;
                }
                continue;
            }
            *self.blocks.entry(fork_name).or_default() += 1;
            let key = Key::rel_block(rel, fork, blk);
            let ours = match reader.get_page_at_lsn(store, key, lsn) {
                Ok(page) => page,
                Err(error) => {
                    self.count(&format!("{fork_name}/unreadable"), true);
                    self.fail(format!("READ FAILED {key:?}: {error}"));
                    continue;
                }
            };
            self.compare_page(
                &format!("{rel:?} {fork_name} blk {blk}"),
                rel,
                fork,
                blk,
                ours,
                theirs,
            );
        }
    }

    /// Compares tarn's page with the file's under the masks of its page type.
    fn compare_page(
        &mut self,
        what: &str,
        rel: RelFileNode,
        fork: ForkNumber,
        blk: u32,
        ours: Page,
        theirs: Page,
    ) {
        let kind = page_kind(fork, &theirs);
        let category = match fork {
            ForkNumber::Main => format!("main/{kind}"),
            ForkNumber::Init => format!("init/{kind}"),
            ForkNumber::VisibilityMap => "vm".to_string(),
            ForkNumber::Fsm => unreachable!("the FSM is not compared"),
        };
        let (mut a, mut b) = (ours, theirs);
        let lsns = (a.lsn(), b.lsn());
        let masked = match kind {
            "heap" => heap_mask(&mut a, blk).and_then(|()| heap_mask(&mut b, blk)),
            "btree" => btree_mask(&mut a, blk).and_then(|()| btree_mask(&mut b, blk)),
            "sequence" => {
                // nextval changes the tuple without WAL between the records it logs
                // every 32 values: the file is ahead by design.
                self.sequence_pages_skipped += 1;
                return;
            }
            _ => {
                mask_page_lsn_and_checksum(&mut a);
                mask_page_lsn_and_checksum(&mut b);
                Ok(())
            }
        };
        if let Err(error) = masked {
            self.count(&category, true);
            self.fail(format!("{what} ({category}) cannot be masked: {error}"));
            return;
        }
        let mismatched = a != b;
        if mismatched
            && kind == "vm"
            && self.wal_log_copies.contains(&rel.db_node)
            && vm_bits_subset(&a, &b)
        {
            // RelationCopyStorageUsingBuffer logs copied VM pages with page_std, so
            // the bitmap (between pd_lower and pd_upper) is the image's hole: replay —
            // Postgres's and tarn's — has those bits cleared (always safe).
            self.vm_bits_lost_by_wal_log_copy += 1;
            self.count("vm/bits lost by WAL_LOG copy (as Postgres replays)", false);
            return;
        }
        self.count(&category, mismatched);
        if mismatched {
            let diff = describe_diff(&a, &b, &DIFF);
            self.fail(format!("PAGE MISMATCH {what} ({category}): {diff}"));
        }
        // Init forks are written before they are logged (btbuildempty, smgrwrite then
        // log_newpage): the file keeps pd_lsn 0, replay stamps the record's LSN.
        if fork != ForkNumber::Init && matches!(kind, "heap" | "btree" | "vm") && lsns.0 != lsns.1 {
            self.lsn_mismatches += 1;
            self.fail(format!(
                "LSN MISMATCH {what} ({category}): pd_lsn {} in tarn, {} in the file",
                lsns.0, lsns.1
            ));
        }
    }

    /// pg_xact and pg_multixact: segment sizes and pages, byte for byte.
    fn slrus(&mut self, store: &TimelineStore, reader: &PageReader, data_dir: &Path, lsn: Lsn) {
        for slru in [
            SlruKind::Clog,
            SlruKind::MultiXactOffsets,
            SlruKind::MultiXactMembers,
        ] {
            let dir = data_dir.join(slru.dir_name());
            let mut segments: Vec<(u32, PathBuf)> = fs::read_dir(&dir)
                .expect("list SLRU directory")
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let segno = u32::from_str_radix(entry.file_name().to_str()?, 16).ok()?;
                    Some((segno, entry.path()))
                })
                .collect();
            segments.sort();
            let category = format!("slru/{}", slru.dir_name());
            for (segno, path) in segments {
                let bytes = fs::read(&path).expect("read SLRU segment");
                let pages = (bytes.len() / BLCKSZ) as u32;
                match get_slru_segment_size(store, slru, segno, lsn) {
                    Ok(size) if size == pages => {}
                    Ok(size) => self.fail(format!(
                        "SLRU SIZE MISMATCH {} segment {segno:04X}: tarn {size} pages, file {pages}",
                        slru.dir_name()
                    )),
                    Err(error) => {
                        self.fail(format!("{} segment {segno:04X}: {error}", slru.dir_name()));
                        continue;
                    }
                }
                for blk in 0..pages {
                    let theirs = Page::from_bytes(
                        &bytes[blk as usize * BLCKSZ..(blk as usize + 1) * BLCKSZ],
                    )
                    .expect("a page");
                    self.slru_pages += 1;
                    match reader.get_page_at_lsn(store, Key::slru_page(slru, segno, blk), lsn) {
                        Ok(ours) => {
                            let mismatched = ours != theirs;
                            self.count(&category, mismatched);
                            if mismatched {
                                let diff = describe_diff(&ours, &theirs, &DIFF);
                                self.fail(format!(
                                    "SLRU MISMATCH {} segment {segno:04X} page {blk}: {diff}",
                                    slru.dir_name()
                                ));
                            }
                        }
                        Err(error) => {
                            self.count(&category, true);
                            self.fail(format!(
                                "{} segment {segno:04X} page {blk}: {error}",
                                slru.dir_name()
                            ));
                        }
                    }
                }
            }
        }
    }

    fn relmaps(&mut self, store: &TimelineStore, data_dir: &Path, lsn: Lsn) {
        for (spc, db, dir) in database_dirs(data_dir) {
            let theirs = fs::read(dir.join("pg_filenode.map")).expect("read pg_filenode.map");
            let ours = image_at(store, Key::relmap_file(spc, db), lsn);
            self.relmaps += 1;
            let mismatched = ours.as_deref() != Some(&theirs[..]);
            self.count("relmap", mismatched);
            if mismatched {
                self.fail(format!("RELMAP MISMATCH for {spc}/{db}"));
            }
        }
    }

    /// The checkpoint state after the last record against pg_control.
    fn checkpoint(&mut self, store: &TimelineStore, control: &BTreeMap<String, String>, lsn: Lsn) {
        let state = CheckpointState::from_bytes(
            &image_at(store, Key::checkpoint(), lsn).expect("checkpoint"),
        )
        .expect("decode checkpoint");
        let next_xid = format!(
            "{}:{}",
            state.next_full_xid() >> 32,
            state.next_full_xid() as u32
        );
        let ours = [
            (
                "Latest checkpoint's REDO location",
                state.redo().to_string(),
            ),
            ("Latest checkpoint's NextXID", next_xid),
            ("Latest checkpoint's NextOID", state.next_oid().to_string()),
            (
                "Latest checkpoint's NextMultiXactId",
                state.next_multi().to_string(),
            ),
            (
                "Latest checkpoint's NextMultiOffset",
                state.next_multi_offset().to_string(),
            ),
            (
                "Latest checkpoint's oldestXID",
                state.oldest_xid().to_string(),
            ),
            (
                "Latest checkpoint's oldestXID's DB",
                state.oldest_xid_db().to_string(),
            ),
            (
                "Latest checkpoint's oldestMultiXid",
                state.oldest_multi().to_string(),
            ),
            (
                "Latest checkpoint's oldestMulti's DB",
                state.oldest_multi_db().to_string(),
            ),
        ];
        for (name, value) in ours {
            let mismatched = control[name] != value;
            self.count("checkpoint field", mismatched);
            if mismatched {
                self.fail(format!(
                    "CHECKPOINT MISMATCH {name}: tarn {value}, pg_control {}",
                    control[name]
                ));
            }
        }
    }

    /// Dropped relations and the dropped database do not exist at `lsn`, but did before.
    fn drops(&mut self, store: &TimelineStore, reader: &PageReader, facts: &Facts, lsn: Lsn) {
        let cases = [
            (
                "dropped table",
                facts.dropped_table,
                facts.before_table_drop,
            ),
            (
                "truncated table's old file",
                facts.truncated_table_old,
                facts.before_truncate,
            ),
            (
                "table of the dropped database",
                facts.dropped_db_table,
                facts.before_db_drop,
            ),
        ];
        for (what, rel, before) in cases {
            self.drop_checks += 1;
            match rel_exists(store, rel, ForkNumber::Main, before) {
                Ok(true) => {}
                other => self.fail(format!(
                    "{what} {rel:?} should exist at {before}: {other:?}"
                )),
            }
            match reader.get_page_at_lsn(store, Key::rel_block(rel, ForkNumber::Main, 0), lsn) {
                Err(ReconstructError::RelationNotFound { .. }) => {}
                Err(other) => self.fail(format!(
                    "{what} {rel:?}: expected 'does not exist', got {other}"
                )),
                Ok(_) => self.fail(format!("{what} {rel:?} still reads at {lsn}")),
            }
            match get_rel_size(store, rel, ForkNumber::Main, lsn) {
                Err(ReconstructError::RelationNotFound { .. }) => {}
                other => self.fail(format!("{what} {rel:?}: size {other:?} after the drop")),
            }
        }
        let db_dir =
            DbDir::decode(&image_at(store, Key::db_dir(), lsn).expect("database directory"))
                .expect("decode");
        if db_dir
            .0
            .contains(&(DEFAULTTABLESPACE_OID, facts.dropped_db))
        {
            self.fail(format!(
                "dropped database {} is still listed",
                facts.dropped_db
            ));
        }
        let before = DbDir::decode(
            &image_at(store, Key::db_dir(), facts.before_db_drop).expect("database directory"),
        )
        .expect("decode");
        if !before
            .0
            .contains(&(DEFAULTTABLESPACE_OID, facts.dropped_db))
        {
            self.fail(format!(
                "database {} is not listed before its drop",
                facts.dropped_db
            ));
        }
    }

    /// One record of the consistency-checked part: each logged image against tarn's
    /// page at the record's end LSN, under the rmgr's mask (VM pages also unmasked but
    /// for the LSN).
    fn historic(
        &mut self,
        store: &TimelineStore,
        reader: &PageReader,
        record: &tarn_wal::decode::DecodedRecord,
    ) {
        let type_name = record.type_name();
        for block in &record.blocks {
            let Some(image) = &block.image else { continue };
            if image.apply || block.fork == ForkNumber::Fsm {
                continue;
            }
            let category = format!("historic {type_name}");
            let key = Key::rel_block(block.rel, block.fork, block.block);
            let logged =
                Page::from_bytes(&record.restore_image(block.block_id).expect("restore image")[..])
                    .expect("a page");
            let ours = match reader.get_page_at_lsn(store, key, record.end_lsn) {
                Ok(page) => page,
                Err(error) => {
                    self.count(&category, true);
                    self.fail(format!(
                        "HISTORIC READ FAILED {key:?} at {}: {error}",
                        record.end_lsn
                    ));
                    continue;
                }
            };
            let mut mismatched = false;
            if block.fork == ForkNumber::VisibilityMap {
                let (mut a, mut b) = (ours.clone(), logged.clone());
                mask_page_lsn_and_checksum(&mut a);
                mask_page_lsn_and_checksum(&mut b);
                if a != b {
                    mismatched = true;
                    self.fail(format!(
                        "HISTORIC VM MISMATCH {type_name} at {} {key:?}: {}",
                        record.lsn,
                        describe_diff(&a, &b, &DIFF)
                    ));
                }
            }
            let (mut a, mut b) = (ours, logged);
            let masked = mask_for_consistency_check(record.rmid, &mut a, block.block)
                .and_then(|()| mask_for_consistency_check(record.rmid, &mut b, block.block));
            match masked {
                Ok(()) if a != b => {
                    mismatched = true;
                    self.fail(format!(
                        "HISTORIC MISMATCH {type_name} at {} (end {}) {key:?}: {}",
                        record.lsn,
                        record.end_lsn,
                        describe_diff(&a, &b, &DIFF)
                    ));
                }
                Ok(()) => {}
                Err(error) => {
                    mismatched = true;
                    self.fail(format!(
                        "{type_name} at {}: cannot mask {key:?}: {error}",
                        record.lsn
                    ));
                }
            }
            self.count(&category, mismatched);
        }
    }

    fn report(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "relations: {} with {} forks {:?}; blocks compared {:?}; {} blocks Postgres \
             wrote without WAL beyond tarn's sizes; {} unlogged forks and {} sequence pages skipped; {} SLRU pages; {} \
             relmaps; {} drop checks; {} pd_lsn mismatches; {} VM pages of WAL_LOG copies with \
             bits lost as in Postgres's replay",
            self.relations.len(),
            self.forks.values().sum::<u64>(),
            self.forks,
            self.blocks,
            self.unlogged_blocks,
            self.unlogged_forks_skipped,
            self.sequence_pages_skipped,
            self.slru_pages,
            self.relmaps,
            self.drop_checks,
            self.lsn_mismatches,
            self.vm_bits_lost_by_wal_log_copy
        );
        let _ = writeln!(
            out,
            "{:<44} {:>9} {:>10}",
            "category", "compared", "mismatched"
        );
        for (name, category) in &self.categories {
            let _ = writeln!(
                out,
                "{name:<44} {:>9} {:>10}",
                category.compared, category.mismatched
            );
        }
    }

    fn assert_passed(&self, report: &str) {
        assert!(
            self.failure_count == 0,
            "{} failures (first {} shown):\n{}\n\n{report}",
            self.failure_count,
            self.failures.len(),
            self.failures.join("\n")
        );
        for needed in [
            "main/heap",
            "main/btree",
            "vm",
            "init/btree",
            "slru/pg_xact",
            "relmap",
        ] {
            assert!(
                self.categories.get(needed).is_some_and(|c| c.compared > 0),
                "nothing compared in {needed}:\n{report}"
            );
        }
        let historic: u64 = self
            .categories
            .iter()
            .filter(|(name, _)| name.starts_with("historic "))
            .map(|(_, c)| c.compared)
            .sum();
        assert!(historic > 0, "no historic read:\n{report}");
    }
}

/// A visibility map page as vm_extend adds it: PageInit'd, no bit set.
fn is_empty_vm_page(page: &Page) -> bool {
    usize::from(page.lower()) == 24
        && usize::from(page.upper()) == BLCKSZ
        && usize::from(page.special()) == BLCKSZ
        && page.as_bytes()[24..].iter().all(|b| *b == 0)
}

/// Whether every bit set in `ours`' bitmap is set in `theirs` (both LSN-masked VM pages
/// with equal headers).
fn vm_bits_subset(ours: &Page, theirs: &Page) -> bool {
    ours.as_bytes()[..24] == theirs.as_bytes()[..24]
        && ours.as_bytes()[24..]
            .iter()
            .zip(&theirs.as_bytes()[24..])
            .all(|(a, b)| a & !b == 0)
}

/// What kind of page the file holds, from its special space size.
fn page_kind(fork: ForkNumber, page: &Page) -> &'static str {
    if fork == ForkNumber::VisibilityMap {
        return "vm";
    }
    if page.as_bytes().iter().all(|b| *b == 0) {
        return "zero";
    }
    let special = usize::from(page.special());
    match BLCKSZ.checked_sub(special) {
        Some(0) => "heap",
        Some(BTREE_SPECIAL_BYTES) => "btree",
        Some(8) => {
            let magic = &page.as_bytes()[special..special + 4];
            if u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) == SEQ_MAGIC {
                "sequence"
            } else {
                "other"
            }
        }
        _ => "other",
    }
}

fn fork_name(fork: ForkNumber) -> &'static str {
    match fork {
        ForkNumber::Main => "main",
        ForkNumber::Fsm => "fsm",
        ForkNumber::VisibilityMap => "vm",
        ForkNumber::Init => "init",
    }
}

/// A small value's image at `lsn`.
fn image_at(store: &TimelineStore, key: Key, lsn: Lsn) -> Option<Vec<u8>> {
    let data = store.get(key, lsn).expect("store read");
    assert!(data.deltas.is_empty(), "{key:?} has deltas");
    data.image.map(|(_, bytes)| bytes.to_vec())
}

/// `(tablespace, database, directory)` of `global/` and each `base/<oid>/`.
fn database_dirs(data_dir: &Path) -> Vec<(u32, u32, PathBuf)> {
    let mut dirs = vec![(GLOBALTABLESPACE_OID, 0, data_dir.join("global"))];
    for entry in fs::read_dir(data_dir.join("base")).expect("list base") {
        let entry = entry.expect("list base");
        if let Some(db) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        {
            dirs.push((DEFAULTTABLESPACE_OID, db, entry.path()));
        }
    }
    dirs.sort();
    dirs
}

/// The relation forks in a database directory and their sizes in blocks.
fn relation_forks(dir: &Path) -> io::Result<BTreeMap<(u32, ForkNumber), u32>> {
    let mut forks: BTreeMap<(u32, ForkNumber), u32> = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (stem, segment) = match name.split_once('.') {
            Some((stem, segment)) => match segment.parse::<u32>() {
                Ok(segment) => (stem, segment),
                Err(_) => continue,
            },
            None => (name, 0),
        };
        let (rel, fork) = match stem.split_once('_') {
            Some((rel, "vm")) => (rel, ForkNumber::VisibilityMap),
            Some((rel, "fsm")) => (rel, ForkNumber::Fsm),
            Some((rel, "init")) => (rel, ForkNumber::Init),
            Some(_) => continue,
            None => (stem, ForkNumber::Main),
        };
        let Ok(rel) = rel.parse::<u32>() else {
            continue;
        };
        let len = entry.metadata()?.len();
        assert_eq!(len % BLCKSZ as u64, 0, "{name}: not whole pages");
        let blocks = segment * RELSEG_BLOCKS + (len / BLCKSZ as u64) as u32;
        let entry = forks.entry((rel, fork)).or_default();
        *entry = (*entry).max(blocks);
    }
    Ok(forks)
}

/// The cost of an image against a delta in the store: put, freeze and flush of
/// [`MEASURE_VALUES`] values of each kind into a scratch store (the write side of
/// pushdown; the read side is the replay time per delta of the reports above).
fn measure_pushdown_costs(dir: &Path) -> String {
    let mut store =
        TimelineStore::create(dir, Lsn(0), StoreConfig::default()).expect("scratch store");
    let rel = RelFileNode {
        spc_node: DEFAULTTABLESPACE_OID,
        db_node: 1,
        rel_node: 1,
    };
    let time = |store: &mut TimelineStore, base: u64, value: &dyn Fn() -> Value| {
        let start = Instant::now();
        for i in 0..MEASURE_VALUES {
            let key = Key::rel_block(rel, ForkNumber::Main, i);
            store
                .put(key, Lsn(base + u64::from(i)), value())
                .expect("put");
        }
        store.freeze(store.last_lsn()).expect("freeze");
        store.flush().expect("flush");
        start.elapsed().as_nanos() as f64 / f64::from(MEASURE_VALUES)
    };
    let image_ns = time(&mut store, 1, &|| Value::Image(vec![0x5Au8; BLCKSZ].into()));
    let delta_ns = time(&mut store, 1_000_000, &|| Value::Delta {
        will_init: false,
        record: vec![0xA5u8; 200].into(),
    });
    format!(
        "pushdown measurement: writing an 8 KiB image costs {:.1} us (put + flush), a 200-byte \
         delta {:.1} us",
        image_ns / 1000.0,
        delta_ns / 1000.0
    )
}

/// The first WAL segment file's number.
fn first_segment(wal_dir: &Path, segment_size_bytes: u64) -> u64 {
    let segments_per_xlogid = 0x1_0000_0000 / segment_size_bytes;
    fs::read_dir(wal_dir)
        .expect("list pg_wal")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let log = u64::from_str_radix(&name[8..16], 16).ok()?;
            let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
            Some(log * segments_per_xlogid + seg)
        })
        .min()
        .expect("a WAL segment")
}
