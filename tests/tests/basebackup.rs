//! Basebackups from the page store boot vanilla PostgreSQL 15 with no WAL replay.
//!
//! `basebackup_boots_at_any_lsn`: a cluster with data checksums runs a workload
//! (pgbench, a table whose first rows are committed before a recorded LSN, a sequence,
//! an unlogged table, multixacts from a share lock and an update in a subtransaction,
//! CREATE DATABASE) and stops cleanly. A store seeded with initdb's files is fed all
//! its WAL. Then:
//! - (a) a basebackup at the original's shutdown checkpoint (the start of that
//!   record) is compared with the original data directory: pg_xact and pg_multixact
//!   segments, relmap files and PG_VERSIONs byte for byte; the same relation files
//!   (no FSM), sizes equal up to blocks Postgres added without WAL; every page equal
//!   after the consistency-check masks (sequences excepted: nextval runs ahead of its
//!   WAL by design; unlogged tables boot empty); `pg_controldata` equal but for the
//!   fields listed in [`CONTROLDATA_MAY_DIFFER`]; `pg_checksums --check` passes. Postgres
//!   starts on it, logs that it was shut down (no redo), shows the data, takes writes,
//!   a CHECKPOINT and a clean stop;
//! - (b) a basebackup at the LSN recorded mid-workload boots and shows exactly what was
//!   committed before it;
//! - (c) LSNs that put the checkpoint record at a page start, a segment start, across a
//!   page and across two segments: pg_waldump finds the record from its page's start,
//!   and each boots without replay;
//! - the tar stream of (a), unpacked by GNU tar, is the same tree as (a)'s directory;
//! - an LSN beyond the ingested WAL is refused with the message users see.
//!
//! Differences the checks accept, each counted in the report: blocks and empty
//! visibility map forks Postgres adds without WAL (bulk extension, vm_extend), VM bits
//! lost by CREATE DATABASE's WAL_LOG copy (as in Postgres's own replay), and unlogged
//! relations reset to their init forks.
//!
//! `basebackup_from_tarn_up_pageserver`: the same through `tarn up`'s pageserver and
//! the `tarn basebackup` command: a tar stream on stdout at the newest LSN, and `-D`
//! at an older one, each booted and queried; an LSN the WAL never reaches is an error
//! after the pageserver's wait.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::BufWriter;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tarn_pages::basebackup::{
    BasebackupOptions, BasebackupSummary, DirectorySink, EndpointConfig, TarWriter,
    write_basebackup,
};
use tarn_pages::ingest::import::import_data_dir;
use tarn_pages::ingest::{DEFAULT_IMAGE_THRESHOLD_DELTAS, IngestConfig, Ingester};
use tarn_pages::mask::{btree_mask, heap_mask, mask_page_lsn_and_checksum};
use tarn_pages::reconstruct::materializer;
use tarn_pages::store::{StoreConfig, TimelineStore};
use tarn_pages::{BLCKSZ, Page};
use tarn_tests::pgdata::{
    DiffFormat, copy_tree, describe_diff, pg_controldata, pg_waldump_output, redo_settings,
    run_as_owner, wal_stream_params,
};
use tarn_tests::{
    PgCluster, StopMode, TarnUp, TempDir, free_port, free_port_range, pg, run_tarn, wait_for,
};
use tarn_wal::Lsn;
use tarn_wal::decode::{PgWalDir, WalRecordReader};
use tarn_wal::format::{ScanStop, XLOG_BLCKSZ};

/// Timeline of a freshly initialised cluster.
const TIMELINE: u32 = 1;
const FREEZE_AT_BYTES: usize = 32 << 20;
const SETTINGS: [(&str, &str); 7] = [
    ("wal_keep_size", "1GB"),
    ("max_wal_size", "1GB"),
    ("checkpoint_timeout", "1h"),
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("autovacuum", "off"),
    ("synchronous_commit", "off"),
];
/// Rows of `marks` committed before the recorded LSN, and in all.
const MARKS_BEFORE: u32 = 100;
const MARKS_ALL: u32 = 250;
/// nextval calls on the sequence.
const SEQUENCE_CALLS: u64 = 42;
/// SEQ_LOG_VALS (sequence.c): nextval logs this many values ahead.
const SEQ_LOG_VALS: u64 = 32;
const PGBENCH_ACCOUNTS: u32 = 200_000;
/// `pg_controldata` fields that legitimately differ between the original and a
/// basebackup at the original's shutdown checkpoint: the times, and the OID counter
/// (tracked from XLOG_NEXTOID records, which log it 8192 ahead, as crash recovery
/// would also restore it; checked to be at least the original's).
const CONTROLDATA_MAY_DIFFER: [&str; 3] = [
    "pg_control last modified",
    "Time of latest checkpoint",
    "Latest checkpoint's NextOID",
];
/// sizeof(BTPageOpaqueData) and the sequence page's special space.
const BTREE_SPECIAL_BYTES: usize = 16;
const SEQ_SPECIAL_BYTES: usize = 8;
const MAX_REPORTED_FAILURES: usize = 20;
const DIFF: DiffFormat = DiffFormat {
    names: ("backup", "original"),
    run_names: ("backup", "orig"),
    max_runs: 6,
    run_bytes: 12,
};
const INGEST_TIMEOUT: Duration = Duration::from_secs(90);

fn lsn(text: &str) -> Lsn {
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an LSN: {e:?}"))
}

fn count(cluster: &PgCluster, db: &str, sql: &str) -> u64 {
    cluster
        .psql_db(db, sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .parse()
        .unwrap_or_else(|e| panic!("{sql} is not a count: {e}"))
}

/// What the workload left that the checks need.
struct Facts {
    /// pg_current_wal_insert_lsn() after the first MARKS_BEFORE rows were committed.
    mid_lsn: Lsn,
    history_rows: u64,
    unlogged_oid: u32,
}

/// The uid and gid owning `path`.
fn owner_of(path: &Path) -> (u32, u32) {
    let metadata = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (metadata.uid(), metadata.gid())
}

/// Gives a tree to `owner` (Postgres runs as the data directory's owner).
fn chown_tree(path: &Path, owner: (u32, u32)) {
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in fs::read_dir(path).expect("list") {
            chown_tree(&entry.expect("entry").path(), owner);
        }
    }
}

fn run_workload(cluster: &PgCluster) -> Facts {
    // An online checkpoint first: the store's checkpoint state then carries this run's
    // settings (full_page_writes off), as the final shutdown checkpoint does.
    cluster.psql("CHECKPOINT").expect("checkpoint");
    cluster
        .pgbench(&["-i", "-s", "2", "-q"])
        .expect("pgbench -i");
    cluster
        .pgbench(&["-c", "2", "-j", "2", "-t", "300"])
        .expect("pgbench run");
    cluster
        .psql(&format!(
            "CREATE TABLE marks (id int PRIMARY KEY, note text); \
             INSERT INTO marks SELECT g, 'before ' || g FROM generate_series(1, {MARKS_BEFORE}) g"
        ))
        .expect("first marks");
    // The insert position is a record boundary: the next record starts there.
    let mid_lsn = lsn(&cluster
        .psql("SELECT pg_current_wal_insert_lsn()")
        .expect("insert LSN"));
    let first_after = MARKS_BEFORE + 1;
    cluster
        .psql(&format!(
            "INSERT INTO marks SELECT g, 'after ' || g FROM generate_series({first_after}, {MARKS_ALL}) g; \
             CREATE SEQUENCE s; SELECT count(nextval('s')) FROM generate_series(1, {SEQUENCE_CALLS}); \
             CREATE UNLOGGED TABLE u (id int PRIMARY KEY, v text); \
             INSERT INTO u SELECT g, 'unlogged' FROM generate_series(1, 500) g; \
             CREATE TABLE locked (id int PRIMARY KEY, v int); \
             INSERT INTO locked SELECT g, 0 FROM generate_series(1, 10) g"
        ))
        .expect("second part");
    // A share lock, then an update of the same rows by a subtransaction: each row's
    // xmax becomes a multixact of the two.
    cluster
        .psql(
            "BEGIN; SELECT count(*) FROM (SELECT * FROM locked WHERE id <= 5 FOR SHARE) l; \
             SAVEPOINT a; UPDATE locked SET v = v + 1 WHERE id <= 5; COMMIT",
        )
        .expect("multixacts");
    cluster
        .psql("CREATE DATABASE db2")
        .expect("create database");
    cluster
        .psql_db(
            "db2",
            "CREATE TABLE t2 (id int PRIMARY KEY, v text); \
             INSERT INTO t2 SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
        )
        .expect("db2 data");
    Facts {
        mid_lsn,
        history_rows: count(cluster, "postgres", "SELECT count(*) FROM pgbench_history"),
        unlogged_oid: count(cluster, "postgres", "SELECT pg_relation_filenode('u')") as u32,
    }
}

/// A store seeded with `base` (at its checkpoint) with every record of `wal_dir` from
/// there ingested. Returns the store and each record's start LSN, in order.
fn ingest_everything(
    dir: &TempDir,
    base: &Path,
    wal_dir: &Path,
    control: &BTreeMap<String, String>,
) -> (TimelineStore, Vec<Lsn>) {
    let base_lsn =
        lsn(&pg_controldata(&pg().tool("pg_controldata"), base)["Latest checkpoint location"]);
    let params = wal_stream_params(control);
    let mut store = TimelineStore::create(
        &dir.join("store"),
        Lsn(base_lsn.0 - 1),
        StoreConfig {
            image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
            ..StoreConfig::default()
        },
    )
    .expect("create store");
    import_data_dir(&mut store, base, base_lsn).expect("import initdb's files");
    let mut ingester = Ingester::new(IngestConfig {
        settings: redo_settings(control),
        image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
    });
    let mut reader = WalRecordReader::new(
        PgWalDir::new(wal_dir, TIMELINE, params.segment_size_bytes),
        base_lsn,
        None,
        params,
    )
    .expect("WAL reader");
    let mut starts = Vec::new();
    let mut materialize = materializer();
    while let Some(raw) = reader.next_raw_record().expect("read WAL") {
        ingester
            .ingest(&mut store, &raw)
            .unwrap_or_else(|e| panic!("ingest failed: {e}"));
        starts.push(raw.lsn);
        if store.open_layer_bytes() > FREEZE_AT_BYTES {
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
    store.freeze(store.last_lsn()).expect("freeze");
    store.flush().expect("flush");
    (store, starts)
}

/// The record before the one starting at `lsn` (a real xl_prev for the checkpoint).
fn record_before(starts: &[Lsn], lsn: Lsn) -> Option<Lsn> {
    starts.iter().copied().filter(|start| *start < lsn).max()
}

fn options(port: u16, prev: Option<Lsn>) -> BasebackupOptions {
    BasebackupOptions {
        prev_record_lsn: prev,
        time: Some(1_750_000_000),
        ..BasebackupOptions::for_endpoint(&EndpointConfig {
            port,
            fsync: false,
            full_page_writes: false,
            ..EndpointConfig::default()
        })
    }
}

fn backup_to_dir(
    store: &TimelineStore,
    at: Lsn,
    options: &BasebackupOptions,
    target: &Path,
    owner: (u32, u32),
) -> BasebackupSummary {
    let mut sink = DirectorySink::create(target)
        .and_then(|sink| sink.with_owner(owner.0, owner.1))
        .expect("backup directory");
    write_basebackup(store, at, options, &mut sink)
        .unwrap_or_else(|e| panic!("basebackup at {at}: {e}"))
}

/// Starts Postgres on a backup and checks that it did not replay WAL.
fn boot(data_dir: &Path) -> PgCluster {
    let mut cluster = PgCluster::open(&pg(), data_dir).expect("open the backup");
    cluster.start(free_port()).unwrap_or_else(|e| {
        panic!(
            "Postgres does not start on the backup {}: {e}",
            data_dir.display()
        )
    });
    let log = fs::read_to_string(cluster.log_path()).expect("postgres log");
    assert!(
        log.contains("database system was shut down at"),
        "the log does not say the system was shut down cleanly:\n{log}"
    );
    for replay in [
        "redo starts",
        "not properly shut down",
        "automatic recovery",
        "interrupted",
    ] {
        assert!(!log.contains(replay), "the log mentions {replay:?}:\n{log}");
    }
    cluster
}

/// Writes, a CHECKPOINT and a clean stop on a booted backup.
fn write_checkpoint_and_stop(cluster: &mut PgCluster) {
    cluster
        .psql(
            "CREATE TABLE after_boot AS SELECT g AS id FROM generate_series(1, 1000) g; \
               UPDATE marks SET note = note || '!' WHERE id % 7 = 0; CHECKPOINT",
        )
        .expect("writes and a checkpoint on the booted backup");
    assert_eq!(
        count(cluster, "postgres", "SELECT count(*) FROM after_boot"),
        1000
    );
    cluster
        .stop(StopMode::Fast)
        .expect("clean stop of the booted backup");
    let control = pg_controldata(&pg().tool("pg_controldata"), cluster.data_dir());
    assert_eq!(control["Database cluster state"], "shut down");
}

#[test]
fn basebackup_boots_at_any_lsn() {
    let dir = TempDir::new("basebackup");
    let bins = pg();
    let controldata = bins.tool("pg_controldata");
    let mut cluster = PgCluster::init(&bins, &dir.join("data")).expect("initdb");
    let checksums = run_as_owner(
        &bins.tool("pg_checksums"),
        &["--enable", "-D", &cluster.data_dir().to_string_lossy()],
    );
    assert!(
        checksums.status.success(),
        "pg_checksums --enable: {checksums:?}"
    );
    let base = dir.join("base");
    copy_tree(cluster.data_dir(), &base).expect("copy initdb's data directory");
    let owner = owner_of(cluster.data_dir());

    cluster.set_settings(&SETTINGS).expect("settings");
    cluster.start(free_port()).expect("start");
    let facts = run_workload(&cluster);
    cluster.stop(StopMode::Fast).expect("clean stop");
    let original = cluster.data_dir().to_path_buf();
    let control = pg_controldata(&controldata, &original);
    assert_eq!(control["Database cluster state"], "shut down");
    assert_eq!(control["Data page checksum version"], "1");
    assert_ne!(
        control["Latest checkpoint's NextMultiXactId"], "1",
        "multixacts were made"
    );
    let shutdown_checkpoint = lsn(&control["Latest checkpoint location"]);

    let (store, starts) = ingest_everything(&dir, &base, &original.join("pg_wal"), &control);
    assert_eq!(starts.last(), Some(&shutdown_checkpoint));

    // ---- an LSN beyond the ingested WAL ---------------------------------------------
    let beyond = Lsn(store.last_lsn().0 + (1 << 20));
    let error = write_basebackup(
        &store,
        beyond,
        &options(5432, None),
        &mut DirectorySink::create(&dir.join("never")).expect("dir"),
    )
    .expect_err("an LSN beyond the WAL");
    assert_eq!(
        error.to_string(),
        format!(
            "{beyond} is beyond the last ingested LSN {}",
            store.last_lsn()
        )
    );

    // ---- (a) at the original's shutdown checkpoint -------------------------------------
    let at_end = dir.join("backup-end");
    let end_options = options(5432, record_before(&starts, shutdown_checkpoint));
    let summary = backup_to_dir(&store, shutdown_checkpoint, &end_options, &at_end, owner);
    eprintln!("basebackup at the shutdown checkpoint: {summary:?}");
    assert_eq!(summary.checkpoint_lsn, shutdown_checkpoint);
    assert!(summary.data_checksums && summary.unlogged_relations >= 2);

    let mut report = String::new();
    compare_with_original(&at_end, &original, facts.unlogged_oid, &mut report);
    compare_controldata(
        &pg_controldata(&controldata, &at_end),
        &control,
        &mut report,
    );
    let checked = run_as_owner(
        &bins.tool("pg_checksums"),
        &["--check", "-D", &at_end.to_string_lossy()],
    );
    assert!(
        checked.status.success(),
        "pg_checksums --check of the backup: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    eprintln!("{report}");
    assert!(
        !report.contains("FAIL"),
        "the backup differs from the original:\n{report}"
    );

    // The tar stream is the same tree (same options, so the same times).
    let tar_path = dir.join("backup-end.tar");
    let mut tar = TarWriter::new(
        BufWriter::new(fs::File::create(&tar_path).expect("tar file")),
        1_750_000_000,
    );
    write_basebackup(&store, shutdown_checkpoint, &end_options, &mut tar).expect("tar basebackup");
    drop(tar.into_inner());
    let untarred = dir.join("backup-end-untarred");
    fs::create_dir(&untarred).expect("untar target");
    let tar_run = Command::new("tar")
        .arg("-xf")
        .arg(&tar_path)
        .arg("-C")
        .arg(&untarred)
        .arg("--no-same-owner")
        .output()
        .expect("run tar");
    assert!(tar_run.status.success(), "tar -x: {tar_run:?}");
    assert_same_tree(&untarred, &at_end);

    {
        let mut booted = boot(&at_end);
        assert_eq!(
            count(&booted, "postgres", "SELECT count(*) FROM pgbench_accounts"),
            u64::from(PGBENCH_ACCOUNTS)
        );
        assert_eq!(
            count(&booted, "postgres", "SELECT count(*) FROM pgbench_history"),
            facts.history_rows
        );
        assert_eq!(
            count(&booted, "postgres", "SELECT count(*) FROM marks"),
            u64::from(MARKS_ALL)
        );
        let next = count(&booted, "postgres", "SELECT nextval('s')");
        assert!(
            next > SEQUENCE_CALLS && next <= SEQUENCE_CALLS + SEQ_LOG_VALS + 1,
            "the sequence continues after the values handed out (as after a crash): {next}"
        );
        assert_eq!(
            count(&booted, "postgres", "SELECT count(*) FROM u"),
            0,
            "unlogged tables boot empty"
        );
        assert_eq!(
            count(
                &booted,
                "postgres",
                "SELECT count(*) FROM locked WHERE v = 1"
            ),
            5
        );
        assert_eq!(count(&booted, "db2", "SELECT count(*) FROM t2"), 1000);
        // Catalog, index and checksum sanity: an index scan, and every page read.
        assert_eq!(
            count(
                &booted,
                "postgres",
                "SET enable_seqscan = off; SELECT count(*) FROM marks WHERE id > 200"
            ),
            50
        );
        write_checkpoint_and_stop(&mut booted);
    }

    // ---- (b) at the LSN recorded mid-workload ------------------------------------------
    let at_mid = dir.join("backup-mid");
    let summary = backup_to_dir(
        &store,
        facts.mid_lsn,
        &options(5432, record_before(&starts, facts.mid_lsn)),
        &at_mid,
        owner,
    );
    eprintln!("basebackup at {}: {summary:?}", facts.mid_lsn);
    {
        let mut booted = boot(&at_mid);
        assert_eq!(
            count(&booted, "postgres", "SELECT count(*) FROM marks"),
            u64::from(MARKS_BEFORE)
        );
        assert_eq!(
            count(
                &booted,
                "postgres",
                "SELECT count(*) FROM marks WHERE note LIKE 'after%'"
            ),
            0
        );
        assert_eq!(
            count(
                &booted,
                "postgres",
                "SELECT count(*) FROM pg_class WHERE relname IN ('s', 'u', 'locked')"
            ),
            0
        );
        assert_eq!(
            count(
                &booted,
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname = 'db2'"
            ),
            0
        );
        assert_eq!(
            count(&booted, "postgres", "SELECT count(*) FROM pgbench_accounts"),
            u64::from(PGBENCH_ACCOUNTS)
        );
        write_checkpoint_and_stop(&mut booted);
    }

    // ---- (c) where the WAL layout is awkward -------------------------------------------
    // Any LSN is a consistent state (the records ending at or before it); these put the
    // checkpoint at a page start (after its header), across a page boundary, at a
    // segment start (after the long header) and across a segment boundary (two segment
    // files).
    let page = XLOG_BLCKSZ;
    let segment = wal_stream_params(&control).segment_size_bytes;
    let page_start = Lsn(shutdown_checkpoint.0 - shutdown_checkpoint.0 % page);
    let segment_start = Lsn(shutdown_checkpoint.0 - shutdown_checkpoint.0 % segment);
    let mut awkward = vec![
        ("a page start", page_start, Lsn(page_start.0 + 24), 1),
        (
            "across a page",
            Lsn(page_start.0 - 48),
            Lsn(page_start.0 - 48),
            1,
        ),
    ];
    if segment_start > facts.mid_lsn {
        awkward.push((
            "a segment start",
            segment_start,
            Lsn(segment_start.0 + 40),
            1,
        ));
        awkward.push((
            "across segments",
            Lsn(segment_start.0 - 16),
            Lsn(segment_start.0 - 16),
            2,
        ));
    }
    for (n, (what, at, checkpoint, wal_segments)) in awkward.into_iter().enumerate() {
        let target = dir.join(format!("backup-awkward-{n}"));
        let summary = backup_to_dir(&store, at, &options(5432, None), &target, owner);
        assert_eq!(summary.checkpoint_lsn, checkpoint, "{what}");
        assert_eq!(summary.wal_segments, wal_segments, "{what}");
        // pg_waldump, reading from the start of the record's page, finds it.
        let record_page = Lsn(checkpoint.0 - checkpoint.0 % page);
        let dump = pg_waldump_output(
            &bins.tool("pg_waldump"),
            &target.join("pg_wal"),
            record_page,
            &[],
        );
        assert!(
            dump.contains("CHECKPOINT_SHUTDOWN") && dump.contains(&format!("redo {checkpoint}")),
            "{what}: pg_waldump from {record_page}:\n{dump}"
        );
        let mut booted = boot(&target);
        assert_eq!(
            count(&booted, "postgres", "SELECT count(*) FROM pgbench_accounts"),
            u64::from(PGBENCH_ACCOUNTS),
            "{what}"
        );
        write_checkpoint_and_stop(&mut booted);
    }
}

/// Files under `dir`, by relative path.
fn files_of(dir: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("under the root");
                out.insert(relative.to_string_lossy().into_owned(), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn directories_of(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                out.insert(
                    path.strip_prefix(root)
                        .expect("under the root")
                        .to_string_lossy()
                        .into_owned(),
                );
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Two trees with the same directories and files, byte for byte.
fn assert_same_tree(a: &Path, b: &Path) {
    assert_eq!(directories_of(a), directories_of(b), "directories");
    let (files_a, files_b) = (files_of(a), files_of(b));
    assert_eq!(
        files_a.keys().collect::<Vec<_>>(),
        files_b.keys().collect::<Vec<_>>(),
        "file names"
    );
    for (name, path) in &files_a {
        let same = fs::read(path).expect("read") == fs::read(&files_b[name]).expect("read");
        assert!(
            same,
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// A relation file name: `(relfilenode, fork suffix, segment)`.
fn relation_file(name: &str) -> Option<(u32, &str, u32)> {
    let (stem, segment) = match name.split_once('.') {
        Some((stem, segment)) => (stem, segment.parse().ok()?),
        None => (name, 0),
    };
    let (rel, fork) = match stem.split_once('_') {
        Some((rel, fork)) if ["vm", "fsm", "init"].contains(&fork) => (rel, fork),
        Some(_) => return None,
        None => (stem, "main"),
    };
    if rel.is_empty() || !rel.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((rel.parse().ok()?, fork, segment))
}

/// How a page is masked for comparison, from its fork and special space.
fn page_kind(fork: &str, page: &Page) -> &'static str {
    if fork == "vm" {
        return "vm";
    }
    if page.as_bytes().iter().all(|b| *b == 0) {
        return "zero";
    }
    match BLCKSZ.checked_sub(usize::from(page.special())) {
        Some(0) => "heap",
        Some(BTREE_SPECIAL_BYTES) => "btree",
        Some(SEQ_SPECIAL_BYTES) => "sequence",
        _ => "other",
    }
}

/// Whether a block Postgres added beyond what WAL knows is one it adds without WAL: a
/// zero page (bulk extension) or an empty visibility map page (vm_extend).
fn unlogged_extension(fork: &str, page: &[u8]) -> bool {
    page.iter().all(|b| *b == 0) || (fork == "vm" && page[24..].iter().all(|b| *b == 0))
}

fn fail(report: &mut String, failures: &mut usize, message: String) {
    *failures += 1;
    if *failures <= MAX_REPORTED_FAILURES {
        let _ = writeln!(report, "FAIL {message}");
    }
}

/// The non-relation files byte for byte, the relation files by name, size and masked
/// pages. Appends to `report`; failures are lines starting with FAIL.
fn compare_with_original(backup: &Path, original: &Path, unlogged_oid: u32, report: &mut String) {
    let ours = files_of(backup);
    let theirs = files_of(original);
    let mut failures = 0;
    let mut compared = BTreeMap::<String, u64>::new();
    let exact = |name: &str, report: &mut String, failures: &mut usize| match (
        ours.get(name),
        theirs.get(name),
    ) {
        (Some(a), Some(b)) => {
            if fs::read(a).expect("read") != fs::read(b).expect("read") {
                fail(report, failures, format!("{name} differs"));
            }
        }
        (a, b) => fail(
            report,
            failures,
            format!(
                "{name}: in backup {}, in original {}",
                a.is_some(),
                b.is_some()
            ),
        ),
    };
    // SLRUs, relmaps and PG_VERSIONs: the same files, byte for byte.
    let byte_equal: BTreeSet<&String> = ours
        .keys()
        .chain(theirs.keys())
        .filter(|name| {
            name.starts_with("pg_xact/")
                || name.starts_with("pg_multixact/")
                || name.ends_with("pg_filenode.map")
                || name.ends_with("PG_VERSION")
        })
        .collect();
    for name in &byte_equal {
        exact(name, report, &mut failures);
    }
    *compared.entry("byte-equal files".into()).or_default() += byte_equal.len() as u64;

    // Relation files: (dir, rel, fork) -> (ours bytes, theirs bytes).
    let relation_files =
        |files: &BTreeMap<String, PathBuf>| -> BTreeMap<(String, u32, String), Vec<PathBuf>> {
            let mut out: BTreeMap<(String, u32, String), Vec<PathBuf>> = BTreeMap::new();
            for (name, path) in files {
                let Some((dir, file)) = name.rsplit_once('/') else {
                    continue;
                };
                if dir != "global" && !dir.starts_with("base/") {
                    continue;
                }
                let Some((rel, fork, segment)) = relation_file(file) else {
                    continue;
                };
                if fork == "fsm" {
                    continue;
                }
                let paths = out
                    .entry((dir.to_string(), rel, fork.to_string()))
                    .or_default();
                assert_eq!(paths.len() as u32, segment, "{name}: segments in order");
                paths.push(path.clone());
            }
            out
        };
    let (our_rels, their_rels) = (relation_files(&ours), relation_files(&theirs));
    let names: BTreeSet<&(String, u32, String)> =
        our_rels.keys().chain(their_rels.keys()).collect();
    let mut lsn_mismatches = 0u64;
    let mut extension_blocks = 0u64;
    let mut vm_bits_lost = 0u64;
    for key in names {
        let (dir, rel, fork) = key;
        let what = format!("{dir}/{rel}_{fork}");
        let read = |paths: Option<&Vec<PathBuf>>| -> Option<Vec<u8>> {
            paths.map(|paths| {
                paths
                    .iter()
                    .flat_map(|p| fs::read(p).expect("read"))
                    .collect()
            })
        };
        let (a, b) = (read(our_rels.get(key)), read(their_rels.get(key)));
        if let (None, Some(theirs)) = (&a, &b)
            && fork == "vm"
        {
            // An unlogged relation's visibility map is not in the backup (reset), and
            // vacuum creates a visibility map of empty pages without WAL (vm_extend):
            // Postgres creates it again when it needs it.
            if *rel == unlogged_oid {
                continue;
            }
            if theirs
                .chunks(BLCKSZ)
                .all(|page| unlogged_extension(fork, page))
            {
                *compared
                    .entry("empty VM forks created without WAL".into())
                    .or_default() += 1;
                continue;
            }
        }
        let (Some(a), Some(b)) = (a, b) else {
            fail(
                report,
                &mut failures,
                format!(
                    "{what}: in backup {}, in original {}",
                    our_rels.contains_key(key),
                    their_rels.contains_key(key)
                ),
            );
            continue;
        };
        let unlogged = their_rels.contains_key(&(dir.clone(), *rel, "init".to_string()));
        if unlogged && fork != "init" {
            // Reset from the init fork, as after a crash: the original kept its rows.
            let init = read(our_rels.get(&(dir.clone(), *rel, "init".to_string())));
            if fork == "main" && init.as_ref() != Some(&a) {
                fail(
                    report,
                    &mut failures,
                    format!("{what}: the unlogged main fork is not its init fork"),
                );
            }
            *compared.entry("unlogged forks reset".into()).or_default() += 1;
            continue;
        }
        if a.len() > b.len() || (b.len() - a.len()) % BLCKSZ != 0 {
            fail(
                report,
                &mut failures,
                format!(
                    "{what}: {} bytes in the backup, {} in the original",
                    a.len(),
                    b.len()
                ),
            );
            continue;
        }
        for extra in b[a.len()..].chunks(BLCKSZ) {
            if unlogged_extension(fork, extra) {
                extension_blocks += 1;
            } else {
                fail(
                    report,
                    &mut failures,
                    format!(
                        "{what}: the original has a block beyond the backup's size that WAL did not add"
                    ),
                );
            }
        }
        for (blk, (page_a, page_b)) in a.chunks(BLCKSZ).zip(b.chunks(BLCKSZ)).enumerate() {
            let (mut ours, mut theirs) = (
                Page::from_bytes(page_a).expect("page"),
                Page::from_bytes(page_b).expect("page"),
            );
            let kind = page_kind(fork, &theirs);
            *compared.entry(format!("{fork}/{kind} pages")).or_default() += 1;
            let lsns = (ours.lsn(), theirs.lsn());
            let blk = blk as u32;
            let masked = match kind {
                "heap" => heap_mask(&mut ours, blk).and_then(|()| heap_mask(&mut theirs, blk)),
                "btree" => btree_mask(&mut ours, blk).and_then(|()| btree_mask(&mut theirs, blk)),
                // nextval changes the page without WAL between the records it logs
                // every SEQ_LOG_VALS values: the file is ahead by design.
                "sequence" => continue,
                _ => {
                    mask_page_lsn_and_checksum(&mut ours);
                    mask_page_lsn_and_checksum(&mut theirs);
                    Ok(())
                }
            };
            if let Err(error) = masked {
                fail(
                    report,
                    &mut failures,
                    format!("{what} block {blk}: cannot mask: {error}"),
                );
                continue;
            }
            if ours != theirs {
                let subset = kind == "vm"
                    && ours
                        .as_bytes()
                        .iter()
                        .zip(theirs.as_bytes())
                        .all(|(a, b)| a & !b == 0);
                if subset {
                    // A WAL_LOG copy (CREATE DATABASE) logs VM pages as standard pages:
                    // their bits are the image's hole, lost in replay as in Postgres's.
                    vm_bits_lost += 1;
                } else {
                    fail(
                        report,
                        &mut failures,
                        format!(
                            "{what} block {blk} ({kind}): {}",
                            describe_diff(&ours, &theirs, &DIFF)
                        ),
                    );
                }
            }
            // Init forks are written before they are logged: the file keeps pd_lsn 0.
            if fork != "init" && matches!(kind, "heap" | "btree" | "vm") && lsns.0 != lsns.1 {
                lsn_mismatches += 1;
                fail(
                    report,
                    &mut failures,
                    format!(
                        "{what} block {blk}: pd_lsn {} in the backup, {} in the original",
                        lsns.0, lsns.1
                    ),
                );
            }
        }
    }
    let _ = writeln!(
        report,
        "compared: {compared:?}; blocks only in the original (added without WAL): {extension_blocks}; \
         VM pages with bits lost by WAL_LOG copies: {vm_bits_lost}; pd_lsn mismatches: {lsn_mismatches}; failures: {failures}"
    );
}

/// `pg_controldata` of the backup against the original's.
fn compare_controldata(
    ours: &BTreeMap<String, String>,
    theirs: &BTreeMap<String, String>,
    report: &mut String,
) {
    let names: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    for name in names {
        let (a, b) = (ours.get(name), theirs.get(name));
        if CONTROLDATA_MAY_DIFFER.contains(&name.as_str()) {
            let _ = writeln!(
                report,
                "pg_controldata {name}: backup {a:?}, original {b:?} (may differ)"
            );
            continue;
        }
        if a != b {
            let _ = writeln!(
                report,
                "FAIL pg_controldata {name}: backup {a:?}, original {b:?}"
            );
        }
    }
    let next_oid = |map: &BTreeMap<String, String>| -> u64 {
        map["Latest checkpoint's NextOID"].parse().expect("an OID")
    };
    if next_oid(ours) < next_oid(theirs) {
        let _ = writeln!(
            report,
            "FAIL NextOID went backwards: {} < {}",
            next_oid(ours),
            next_oid(theirs)
        );
    }
}

// ---- through tarn up's pageserver and the CLI --------------------------------------

#[test]
fn basebackup_from_tarn_up_pageserver() {
    let dir = TempDir::new("basebackup-up");
    let port = free_port_range(5);
    let cluster_dir = dir.join("cluster");
    let up = TarnUp::start(&cluster_dir, &["--port", &port.to_string()])
        .unwrap_or_else(|e| panic!("tarn up: {e}"));
    let pageserver = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + 4)).to_string();
    let postgres = up.postgres();
    let owner = owner_of(postgres.data_dir());

    postgres
        .psql(
            "CREATE TABLE t (id int PRIMARY KEY, v text); \
               INSERT INTO t SELECT g, 'first' FROM generate_series(1, 300) g",
        )
        .expect("first rows");
    let mid = lsn(&postgres
        .psql("SELECT pg_current_wal_insert_lsn()")
        .expect("LSN"));
    postgres
        .psql("INSERT INTO t SELECT g, 'second' FROM generate_series(301, 1000) g")
        .expect("more rows");
    let after = lsn(&postgres
        .psql("SELECT pg_current_wal_insert_lsn()")
        .expect("LSN"));
    let cluster = cluster_dir.to_string_lossy().into_owned();
    wait_for(
        "the pageserver to ingest the inserts",
        INGEST_TIMEOUT,
        || {
            let out = run_tarn(&["status", "--dir", &cluster, "--json"]);
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let ingested = status["pageserver"]["last_ingested_lsn"].as_str()?;
            (lsn(ingested) >= after).then_some(())
        },
    );

    // The newest LSN, as a tar stream on stdout, unpacked by tar.
    let out = run_tarn(&["basebackup", "--pageserver", &pageserver]);
    assert!(
        out.status.success(),
        "tarn basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar_path = dir.join("latest.tar");
    fs::write(&tar_path, &out.stdout).expect("write the tar");
    let latest = dir.join("latest");
    fs::create_dir(&latest).expect("untar target");
    let tar_run = Command::new("tar")
        .arg("-xf")
        .arg(&tar_path)
        .arg("-C")
        .arg(&latest)
        .arg("--no-same-owner")
        .output()
        .expect("run tar");
    assert!(tar_run.status.success(), "tar -x: {tar_run:?}");
    chown_tree(&latest, owner);
    fs::set_permissions(&latest, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    {
        let mut booted = boot(&latest);
        assert_eq!(count(&booted, "postgres", "SELECT count(*) FROM t"), 1000);
        booted.stop(StopMode::Fast).expect("stop");
    }

    // An older LSN, unpacked by tarn into a directory.
    let older = dir.join("older");
    let out = run_tarn(&[
        "basebackup",
        "--pageserver",
        &pageserver,
        "--lsn",
        &mid.to_string(),
        "-D",
        &older.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "tarn basebackup -D: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    chown_tree(&older, owner);
    {
        let mut booted = boot(&older);
        assert_eq!(count(&booted, "postgres", "SELECT count(*) FROM t"), 300);
        booted.stop(StopMode::Fast).expect("stop");
    }

    // An LSN the WAL never reaches: the pageserver waits for it, then says why not.
    let far = Lsn(after.0 + (1 << 30));
    let out = run_tarn(&[
        "basebackup",
        "--pageserver",
        &pageserver,
        "--lsn",
        &far.to_string(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("timed out waiting for WAL") && stderr.contains(&far.to_string()),
        "{stderr}"
    );
    drop(postgres);
    let status = up.stop();
    assert!(status.success(), "tarn up exit: {status}");
}
