//! WAL durability end to end, as a user of `tarn up` sees it, with real PostgreSQL 15:
//! pgbench through the quorum, safekeepers and the proposer killed with SIGKILL and
//! restarted from `tarn.json`, and a safekeeper whose last segment was torn. What is
//! checked is what a user could check: commits complete or visibly wait (`SyncRep`),
//! every commit a client saw acknowledged is in the table afterwards, and each
//! safekeeper's segment files hold exactly the bytes of Postgres's own `pg_wal`.
//!
//! Needs the binary: `cargo build --bin tarn` before `cargo test`. Each test runs its
//! own cluster on free ports in a temporary directory and stops everything it started.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tarn_tests::{
    ClusterLayout, ClusterManifest, OwnedChild, PgCluster, PostgresError, SqlConnection, SqlError,
    TarnUp, TempDir, free_port, free_port_range, process_is_running, run_tarn, send_signal,
    spawn_tarn, wait_for,
};
use tarn_wal::format::{RecordBoundaryTracker, WalStreamParams, segment_file_name};
use tarn_wal::protocol::TimelineStatus;
use tarn_wal::safekeeper::{ControlState, query_status};
use tarn_wal::{Lsn, SystemId, Term};

const SEGMENT_SIZE_BYTES: u64 = 16 << 20;
/// Postgres timeline of a fresh initdb, which the safekeepers' segment names use too.
const POSTGRES_TIMELINE: u32 = 1;
/// Bound on one SQL statement that is expected to finish promptly.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a commit while a quorum of safekeepers is up. Generous for 2 loaded cores;
/// commits normally take milliseconds.
const QUORUM_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// A commit that waits for the quorum's return: the test restarts a component within
/// this and expects the commit to finish, so hitting it is a failure.
const BLOCKED_COMMIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a commit must stay unfinished to count as blocked. Proving that something
/// does not happen needs a window; nothing in the test waits on this to synchronise.
const BLOCKED_WINDOW: Duration = Duration::from_secs(3);
/// Bound on the quorum coming back after a restart: the proposer reconnects with at
/// most 2 s backoff, then an election or catch-up runs.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a restarted safekeeper catching up with the others.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on a killed process disappearing and a started one listening.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a safekeeper status query.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a pgbench invocation (initialisation or a timed run, plus the time its
/// clients may wait on blocked commits).
const PGBENCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Commits the tally must see before a test injects a fault, so the fault hits a
/// running workload.
const COMMITS_BEFORE_FAULT: u64 = 50;
/// Commits the tally must see after a recovery to call the cluster live again.
const COMMITS_AFTER_RECOVERY: u64 = 50;

/// A `tarn up` cluster and the components the test restarted by hand. Fields drop in
/// order: `tarn up` (Postgres, proposer, its safekeepers) first, then the restarted
/// components, then the directory.
struct Cluster {
    up: TarnUp,
    restarted: Vec<OwnedChild>,
    manifest: ClusterManifest,
    layout: ClusterLayout,
    dir: TempDir,
}

impl Cluster {
    fn start(name: &str) -> Cluster {
        let dir = TempDir::new(name);
        let port = free_port_range(5).to_string();
        let up = TarnUp::start(&dir.join("cluster"), &["--port", &port])
            .unwrap_or_else(|error| panic!("{error}"));
        let manifest = up.manifest();
        let layout = up.layout().clone();
        let cluster = Cluster {
            up,
            restarted: Vec::new(),
            manifest,
            layout,
            dir,
        };
        cluster
            .sql()
            .query(
                "CREATE TABLE tally (id bigint PRIMARY KEY, client int NOT NULL)",
                QUERY_TIMEOUT,
            )
            .expect("create the tally table");
        cluster
    }

    fn postgres(&self) -> PgCluster {
        self.up.postgres()
    }

    fn sql(&self) -> SqlConnection {
        SqlConnection::connect(self.manifest.postgres_port, "tarn_test", QUERY_TIMEOUT)
            .unwrap_or_else(|error| panic!("cannot connect to Postgres: {error}"))
    }

    fn sql_value(&self, sql: &str) -> String {
        self.sql()
            .query_value(sql, QUERY_TIMEOUT)
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
    }

    /// `pg_current_wal_flush_lsn()`: everything the walsender may send.
    fn postgres_flush_lsn(&self) -> Lsn {
        self.sql_value("SELECT pg_current_wal_flush_lsn()")
            .parse()
            .expect("an LSN")
    }

    /// `(application_name, state, sync_state)` of each row of `pg_stat_replication`.
    fn replication(&self) -> Vec<(String, String, String)> {
        self.sql()
            .query(
                "SELECT application_name, state, sync_state FROM pg_stat_replication",
                QUERY_TIMEOUT,
            )
            .expect("pg_stat_replication")
            .into_iter()
            .map(|row| {
                let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
                (text(0), text(1), text(2))
            })
            .collect()
    }

    fn assert_proposer_is_sync_standby(&self) {
        let rows = self.replication();
        assert!(
            rows.iter()
                .any(|(name, state, sync)| name == "tarn_proposer"
                    && state == "streaming"
                    && sync == "sync"),
            "pg_stat_replication: {rows:?}"
        );
    }

    fn safekeeper_addr(&self, id: usize) -> SocketAddr {
        let port = self.manifest.safekeeper_ports[id - 1];
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    /// The cluster's timeline as safekeeper `id` reports it; `None` if it is down.
    fn safekeeper_status(&self, id: usize) -> Option<TimelineStatus> {
        timeline_status_at(self.safekeeper_addr(id), &self.manifest)
    }

    fn flush_lsn(&self, id: usize) -> Option<Lsn> {
        self.safekeeper_status(id).map(|status| status.flush_lsn)
    }

    /// Waits until every safekeeper's flush LSN is at least `lsn` and all three are
    /// equal; returns that flush LSN.
    fn wait_until_safekeepers_agree_at(&self, lsn: Lsn) -> Lsn {
        wait_for(
            &format!("all safekeepers to reach {lsn} and agree"),
            CATCH_UP_TIMEOUT,
            || {
                let flushes: Vec<Lsn> = (1..=3)
                    .map(|id| self.flush_lsn(id))
                    .collect::<Option<_>>()?;
                (flushes[0] >= lsn && flushes.iter().all(|f| *f == flushes[0]))
                    .then_some(flushes[0])
            },
        )
    }

    /// Waits until safekeeper `id` holds WAL at least up to `lsn`.
    fn wait_until_safekeeper_reaches(&self, id: usize, lsn: Lsn) -> Lsn {
        wait_for(
            &format!("safekeeper-{id} to reach {lsn}"),
            CATCH_UP_TIMEOUT,
            || self.flush_lsn(id).filter(|flush| *flush >= lsn),
        )
    }

    /// The highest flush LSN among running safekeepers.
    fn highest_flush_lsn(&self) -> Lsn {
        (1..=3)
            .filter_map(|id| self.flush_lsn(id))
            .max()
            .expect("some safekeeper answers")
    }

    /// SIGKILLs component `name` (as `tarn up` started it, or as the test restarted
    /// it) and waits until it is gone.
    fn kill(&mut self, name: &str) {
        if let Some(index) = self.restarted.iter().position(|c| c.name() == name) {
            self.restarted.remove(index).kill();
            return;
        }
        let pid = self
            .manifest
            .component(name)
            .and_then(|record| record.pid)
            .unwrap_or_else(|| panic!("{name} has no pid in tarn.json"));
        assert!(process_is_running(pid), "{name} (pid {pid}) is not running");
        send_signal(pid, libc::SIGKILL);
        wait_for(&format!("{name} to die"), PROCESS_TIMEOUT, || {
            (!process_is_running(pid)).then_some(())
        });
    }

    /// Restarts `name` from its command line in `tarn.json`; for a safekeeper, waits
    /// until it answers status queries.
    fn restart(&mut self, name: &str) {
        let child = OwnedChild::new(name, self.up.respawn(name));
        self.restarted.push(child);
        if let Some(id) = name.strip_prefix("safekeeper-") {
            let addr = self.safekeeper_addr(id.parse().expect("safekeeper id"));
            wait_for(&format!("{name} to listen"), PROCESS_TIMEOUT, || {
                query_status(addr, STATUS_TIMEOUT).ok()
            });
        }
    }

    fn safekeeper_timeline_dir(&self, id: usize) -> PathBuf {
        self.layout
            .safekeeper_dir(id)
            .join("timelines")
            .join(self.manifest.timeline_id.to_string())
    }

    fn pg_wal_dir(&self) -> PathBuf {
        self.layout.postgres_data_dir().join("pg_wal")
    }

    fn stream_params(&self) -> WalStreamParams {
        WalStreamParams::new(SEGMENT_SIZE_BYTES, Some(SystemId(self.manifest.system_id)))
            .expect("stream parameters")
    }

    /// Asserts that safekeeper `id`'s WAL, from the timeline's start to its flush LSN,
    /// is byte for byte Postgres's `pg_wal`; returns the number of bytes compared.
    fn assert_wal_matches_postgres(&self, id: usize) -> u64 {
        let status = self
            .safekeeper_status(id)
            .unwrap_or_else(|| panic!("safekeeper-{id} does not answer"));
        let start = status.timeline_start_lsn;
        let end = status.flush_lsn;
        assert!(
            start != Lsn::INVALID && start.segment_offset(SEGMENT_SIZE_BYTES) == 0,
            "safekeeper-{id}: timeline start {start} is not a segment start"
        );
        assert!(
            end <= self.postgres_flush_lsn(),
            "safekeeper-{id} holds WAL Postgres has not flushed"
        );
        compare_wal(
            &self.safekeeper_timeline_dir(id),
            &self.pg_wal_dir(),
            start,
            end,
        )
        .unwrap_or_else(|difference| panic!("safekeeper-{id}: {difference}"));
        end.0 - start.0
    }

    /// `tarn status --json`.
    fn status_json(&self) -> serde_json::Value {
        let dir = self.layout.dir.to_str().expect("UTF-8 path");
        let output = run_tarn(&["status", "--dir", dir, "--json"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("tarn status --json prints JSON")
    }

    /// Ids in the tally table.
    fn tally_ids(&self) -> BTreeSet<i64> {
        self.sql()
            .query("SELECT id FROM tally", QUERY_TIMEOUT)
            .expect("read the tally")
            .into_iter()
            .map(|row| {
                row.first()
                    .cloned()
                    .flatten()
                    .and_then(|id| id.parse().ok())
                    .expect("an id")
            })
            .collect()
    }

    /// Waits until `count` sessions wait in `SyncRep` (their commits wait for the
    /// synchronous standby).
    fn wait_for_sync_rep_waiters(&self, count: usize) {
        let mut sql = self.sql();
        wait_for(
            &format!("{count} sessions waiting in SyncRep"),
            PROCESS_TIMEOUT,
            || {
                let waiting: usize = sql
                    .query_value(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                        QUERY_TIMEOUT,
                    )
                    .ok()?
                    .parse()
                    .ok()?;
                (waiting >= count).then_some(())
            },
        );
    }
}

fn timeline_status_at(addr: SocketAddr, manifest: &ClusterManifest) -> Option<TimelineStatus> {
    query_status(addr, STATUS_TIMEOUT)
        .ok()?
        .timelines
        .into_iter()
        .find(|t| t.timeline_id == manifest.timeline_id)
}

fn segment_path(dir: &Path, segment_no: u64) -> PathBuf {
    dir.join(segment_file_name(
        POSTGRES_TIMELINE,
        segment_no,
        SEGMENT_SIZE_BYTES,
    ))
}

/// Reads WAL `[start, start + len)` (within one segment) from the segment files in `dir`.
fn read_wal(dir: &Path, start: Lsn, len: usize) -> Result<Vec<u8>, String> {
    let path = segment_path(dir, start.segment_number(SEGMENT_SIZE_BYTES));
    let file = File::open(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, start.segment_offset(SEGMENT_SIZE_BYTES))
        .map_err(|error| {
            format!(
                "reading {len} bytes at {start} from {}: {error}",
                path.display()
            )
        })?;
    Ok(bytes)
}

/// Compares the WAL `[start, end)` of two directories of Postgres-named segments.
fn compare_wal(ours: &Path, postgres: &Path, start: Lsn, end: Lsn) -> Result<(), String> {
    let mut at = start;
    while at < end {
        let segment_left = SEGMENT_SIZE_BYTES - at.segment_offset(SEGMENT_SIZE_BYTES);
        let len = segment_left.min(end.0 - at.0) as usize;
        let a = read_wal(ours, at, len)?;
        let b = read_wal(postgres, at, len)?;
        if let Some(offset) = a.iter().zip(&b).position(|(x, y)| x != y) {
            return Err(format!(
                "WAL differs from pg_wal at {} (comparing {start}..{end})",
                at.plus(offset as u64)
            ));
        }
        at = at.plus(len as u64);
    }
    Ok(())
}

/// Every complete record in the WAL of `dir` from `start` (a segment start) to the
/// first invalid or missing byte: `(start, end)` of each.
fn scan_records(dir: &Path, start: Lsn, params: WalStreamParams) -> Vec<(Lsn, Lsn)> {
    let mut tracker = RecordBoundaryTracker::new(start, None, params).expect("tracker");
    let mut records = Vec::new();
    let mut at = start;
    // Bounded by the segment files present: every round consumes one whole segment.
    while let Ok(bytes) = read_wal(dir, at, SEGMENT_SIZE_BYTES as usize) {
        let fed = tracker.feed_with(&bytes, |record| records.push((record.start, record.end)));
        if fed.is_err() {
            break;
        }
        at = at.plus(SEGMENT_SIZE_BYTES);
    }
    records
}

/// What one client of the tally saw.
#[derive(Debug, Default)]
struct ClientLog {
    /// Ids whose commit was acknowledged.
    committed: Vec<i64>,
    /// Ids whose commit timed out or lost its connection: maybe committed.
    unknown: Vec<i64>,
    errors: Vec<String>,
    slowest_commit: Duration,
}

/// Clients that each insert one row per transaction, with ids unique across clients,
/// and record which commits were acknowledged.
struct Tally {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    clients: Vec<JoinHandle<ClientLog>>,
}

/// The tally's result.
struct TallyLog {
    committed: BTreeSet<i64>,
    unknown: BTreeSet<i64>,
    errors: Vec<String>,
    slowest_commit: Duration,
}

impl Tally {
    fn start(cluster: &Cluster, clients: i64, commit_timeout: Duration) -> Tally {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let port = cluster.manifest.postgres_port;
        let clients = (0..clients)
            .map(|client| {
                let stop = stop.clone();
                let committed = committed.clone();
                thread::spawn(move || {
                    run_tally_client(port, client, clients, commit_timeout, &stop, &committed)
                })
            })
            .collect();
        Tally {
            stop,
            committed,
            clients,
        }
    }

    /// Commits acknowledged so far.
    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Waits until `count` more commits than `since` were acknowledged.
    fn wait_for_commits(&self, since: u64, count: u64, timeout: Duration) {
        wait_for(
            &format!("{count} commits after the first {since}"),
            timeout,
            || (self.committed() >= since + count).then_some(()),
        );
    }

    fn finish(mut self) -> TallyLog {
        self.stop.store(true, Ordering::Relaxed);
        let mut log = TallyLog {
            committed: BTreeSet::new(),
            unknown: BTreeSet::new(),
            errors: Vec::new(),
            slowest_commit: Duration::ZERO,
        };
        for client in self.clients.drain(..) {
            let client = client.join().expect("tally client panicked");
            log.committed.extend(client.committed);
            log.unknown.extend(client.unknown);
            log.errors.extend(client.errors);
            log.slowest_commit = log.slowest_commit.max(client.slowest_commit);
        }
        log
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        // On a failed test the clients stop after their current commit.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run_tally_client(
    port: u16,
    client: i64,
    clients: i64,
    commit_timeout: Duration,
    stop: &AtomicBool,
    committed: &AtomicU64,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut connection: Option<SqlConnection> = None;
    let mut sequence = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let sql = match &mut connection {
            Some(sql) => sql,
            None => match SqlConnection::connect(port, "tarn_tally", QUERY_TIMEOUT) {
                Ok(sql) => connection.insert(sql),
                Err(error) => {
                    log.errors.push(format!("client {client}: {error}"));
                    return log;
                }
            },
        };
        sequence += 1;
        let id = client + clients * sequence;
        let started = Instant::now();
        match sql.query(
            &format!("INSERT INTO tally (id, client) VALUES ({id}, {client})"),
            commit_timeout,
        ) {
            Ok(_) => {
                log.committed.push(id);
                log.slowest_commit = log.slowest_commit.max(started.elapsed());
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Err(SqlError::Server(error)) => {
                log.errors
                    .push(format!("client {client}, id {id}: {error}"));
            }
            Err(error) => {
                // The commit may yet happen: its session stays in Postgres.
                log.unknown.push(id);
                log.errors
                    .push(format!("client {client}, id {id}: {error}"));
                connection = None;
            }
        }
    }
    log
}

/// Asserts the durability tally: every acknowledged commit is in the table, and the
/// table holds nothing but acknowledged or in-doubt rows (`extra` are rows the test
/// inserted itself).
fn assert_tally(cluster: &Cluster, log: &TallyLog, extra: &[i64]) {
    assert!(
        log.errors.is_empty(),
        "tally clients failed: {:?}",
        log.errors
    );
    let present = cluster.tally_ids();
    let lost: Vec<&i64> = log.committed.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits are missing, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let expected: BTreeSet<i64> = log
        .committed
        .iter()
        .chain(&log.unknown)
        .chain(extra)
        .copied()
        .collect();
    let phantom: Vec<&i64> = present.difference(&expected).collect();
    assert!(phantom.is_empty(), "rows nobody committed: {phantom:?}");
}

/// A pgbench run in the background.
struct Pgbench {
    thread: JoinHandle<Result<Output, PostgresError>>,
}

impl Pgbench {
    fn start(postgres: PgCluster, args: &[&str]) -> Pgbench {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        Pgbench {
            thread: thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                postgres.pgbench_with_timeout(&args, PGBENCH_TIMEOUT)
            }),
        }
    }

    fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Waits for pgbench to finish; returns its report (stdout) and progress (stderr).
    fn finish(self) -> PgbenchReport {
        let output = self
            .thread
            .join()
            .expect("pgbench thread panicked")
            .unwrap_or_else(|error| panic!("pgbench failed: {error}"));
        PgbenchReport {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

struct PgbenchReport {
    stdout: String,
    stderr: String,
}

impl PgbenchReport {
    /// "number of transactions actually processed: N".
    fn transactions(&self) -> u64 {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix("number of transactions actually processed: "))
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no transaction count in:\n{}", self.stdout))
    }

    fn assert_no_failures(&self) {
        assert!(
            self.stdout.contains("number of failed transactions: 0 "),
            "pgbench reports failed transactions:\n{}",
            self.stdout
        );
    }

    /// `(seconds, tps)` of each `--progress` line.
    fn progress(&self) -> Vec<(f64, f64)> {
        self.stderr
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("progress: ")?;
                let mut fields = rest.split(", ");
                let seconds = fields.next()?.strip_suffix(" s")?.parse().ok()?;
                let tps = fields.next()?.strip_suffix(" tps")?.parse().ok()?;
                Some((seconds, tps))
            })
            .collect()
    }
}

/// pgbench through `tarn up`: the proposer is Postgres's synchronous standby during
/// the run, every transaction pgbench counted is in `pgbench_history`, and each
/// safekeeper's segments equal `pg_wal` byte for byte from the timeline's start to
/// its flush LSN, which reaches Postgres's flush LSN.
#[test]
fn pgbench_commits_through_the_quorum_and_safekeepers_hold_pg_wal() {
    let cluster = Cluster::start("walbench");
    let postgres = cluster.postgres();
    postgres
        .pgbench_with_timeout(&["-i", "-s", "5", "-q"], PGBENCH_TIMEOUT)
        .unwrap_or_else(|error| panic!("pgbench -i: {error}"));
    let bench = Pgbench::start(
        cluster.postgres(),
        &["-c", "4", "-j", "2", "-T", "15", "-P", "5"],
    );
    // While pgbench commits: the proposer is the synchronous standby.
    wait_for("pgbench to commit", PROCESS_TIMEOUT, || {
        let rows: u64 = cluster
            .sql_value("SELECT count(*) FROM pgbench_history")
            .parse()
            .ok()?;
        (rows > 100).then_some(())
    });
    cluster.assert_proposer_is_sync_standby();
    let report = bench.finish();
    report.assert_no_failures();
    let transactions = report.transactions();
    assert!(transactions > 100, "{}", report.stdout);
    assert_eq!(
        cluster.sql_value("SELECT count(*) FROM pgbench_history"),
        transactions.to_string(),
        "every transaction pgbench counted is in pgbench_history"
    );
    cluster.assert_proposer_is_sync_standby();

    let postgres_flush = cluster.postgres_flush_lsn();
    let flush = cluster.wait_until_safekeepers_agree_at(postgres_flush);
    let status = cluster.status_json();
    for report in status["safekeepers"].as_array().expect("safekeepers") {
        let reported: Lsn = report["status"]["flush_lsn"]
            .as_str()
            .and_then(|lsn| lsn.parse().ok())
            .unwrap_or_else(|| panic!("tarn status shows no flush LSN: {report}"));
        assert!(reported >= flush, "{report}");
    }
    eprintln!("pgbench: {transactions} transactions; safekeepers agree at {flush}");
    for id in 1..=3 {
        let compared = cluster.assert_wal_matches_postgres(id);
        eprintln!("safekeeper-{id}: {compared} bytes of WAL equal to pg_wal");
        // pgbench -i -s 5 alone writes far more than two segments.
        assert!(
            compared > 2 * SEGMENT_SIZE_BYTES,
            "safekeeper-{id}: only {compared} bytes of WAL"
        );
    }
}

/// One safekeeper SIGKILLed during pgbench: commits go on with two of three (pgbench's
/// throughput never drops to zero, and no tally commit waits long), and once
/// restarted the safekeeper catches up and holds the same WAL as Postgres.
#[test]
fn commits_continue_without_one_safekeeper_which_catches_up_after_restart() {
    let mut cluster = Cluster::start("walkill1");
    cluster
        .postgres()
        .pgbench_with_timeout(&["-i", "-s", "1", "-q"], PGBENCH_TIMEOUT)
        .unwrap_or_else(|error| panic!("pgbench -i: {error}"));
    let bench = Pgbench::start(
        cluster.postgres(),
        &["-c", "2", "-j", "2", "-T", "20", "-P", "1"],
    );
    let tally = Tally::start(&cluster, 2, QUORUM_COMMIT_TIMEOUT);
    tally.wait_for_commits(0, COMMITS_BEFORE_FAULT, RECOVERY_TIMEOUT);

    cluster.kill("safekeeper-2");
    let at_kill = tally.committed();
    tally.wait_for_commits(at_kill, 3 * COMMITS_AFTER_RECOVERY, RECOVERY_TIMEOUT);
    cluster.assert_proposer_is_sync_standby();
    let status = cluster.status_json();
    let down = &status["safekeepers"][1];
    assert!(
        down["status"].is_null() && down["error"].is_string(),
        "tarn status shows safekeeper-2 unreachable: {down}"
    );

    // Restarted while the load runs, it catches up with where the others were.
    let others = cluster.highest_flush_lsn();
    cluster.restart("safekeeper-2");
    cluster.wait_until_safekeeper_reaches(2, others);
    assert!(
        bench.is_running(),
        "the kill, restart and catch-up happened while pgbench ran"
    );

    let log = tally.finish();
    let report = bench.finish();
    report.assert_no_failures();
    let progress = report.progress();
    assert!(progress.len() >= 15, "pgbench progress:\n{}", report.stderr);
    assert!(
        progress.iter().all(|(_, tps)| *tps > 0.0),
        "pgbench committed in every second, the kill included:\n{}",
        report.stderr
    );
    assert_eq!(
        cluster.sql_value("SELECT count(*) FROM pgbench_history"),
        report.transactions().to_string()
    );
    assert!(
        log.unknown.is_empty(),
        "commits timed out: {:?}",
        log.unknown
    );
    assert!(
        log.slowest_commit < QUORUM_COMMIT_TIMEOUT,
        "slowest commit {:?}",
        log.slowest_commit
    );
    assert_tally(&cluster, &log, &[]);

    cluster.wait_until_safekeepers_agree_at(cluster.postgres_flush_lsn());
    cluster.assert_wal_matches_postgres(2);
}

/// Two safekeepers SIGKILLed: no commit completes (sessions wait in `SyncRep`, a new
/// commit does not finish), and when one comes back the waiting commits complete and
/// new ones follow. Every acknowledged commit is in the table.
#[test]
fn commits_wait_without_a_quorum_and_resume_when_one_safekeeper_returns() {
    let mut cluster = Cluster::start("walkill2");
    let clients = 3;
    let tally = Tally::start(&cluster, clients, BLOCKED_COMMIT_TIMEOUT);
    tally.wait_for_commits(0, COMMITS_BEFORE_FAULT, RECOVERY_TIMEOUT);

    cluster.kill("safekeeper-1");
    cluster.kill("safekeeper-3");
    let mut probe = cluster.sql();
    probe
        .send_query("INSERT INTO tally (id, client) VALUES (-1, -1)")
        .expect("send the probe");
    // The probe and every tally client wait for the synchronous standby ...
    cluster.wait_for_sync_rep_waiters(clients as usize + 1);
    assert_eq!(
        cluster.sql_value(&format!(
            "SELECT wait_event_type || '/' || wait_event FROM pg_stat_activity WHERE pid = {}",
            probe.backend_pid()
        )),
        "IPC/SyncRep"
    );
    // ... and none of them finishes.
    let blocked_at = tally.committed();
    assert_eq!(
        probe.finish_query(BLOCKED_WINDOW),
        Err(SqlError::Timeout),
        "a commit finished without a quorum"
    );
    assert_eq!(
        tally.committed(),
        blocked_at,
        "commits finished without a quorum"
    );

    cluster.restart("safekeeper-1");
    probe
        .finish_query(RECOVERY_TIMEOUT)
        .expect("the waiting commit completes once a quorum is back");
    tally.wait_for_commits(blocked_at, COMMITS_AFTER_RECOVERY, RECOVERY_TIMEOUT);
    cluster.assert_proposer_is_sync_standby();

    cluster.restart("safekeeper-3");
    let log = tally.finish();
    assert!(
        log.unknown.is_empty(),
        "commits timed out: {:?}",
        log.unknown
    );
    assert_tally(&cluster, &log, &[-1]);
    cluster.wait_until_safekeepers_agree_at(cluster.postgres_flush_lsn());
    for id in [1, 3] {
        cluster.assert_wal_matches_postgres(id);
    }
}

/// The proposer SIGKILLed: Postgres has no synchronous standby and commits wait; the
/// restarted proposer wins a new term, commits resume, and the safekeepers' WAL is
/// still exactly `pg_wal` (nothing lost or written twice across the terms).
#[test]
fn commits_wait_for_a_killed_proposer_and_resume_in_a_new_term() {
    let mut cluster = Cluster::start("walproposer");
    let clients = 3;
    let tally = Tally::start(&cluster, clients, BLOCKED_COMMIT_TIMEOUT);
    tally.wait_for_commits(0, COMMITS_BEFORE_FAULT, RECOVERY_TIMEOUT);
    let term_before = cluster.safekeeper_status(1).expect("safekeeper-1").term;

    cluster.kill("proposer");
    wait_for("the walsender to go", PROCESS_TIMEOUT, || {
        cluster.replication().is_empty().then_some(())
    });
    let mut probe = cluster.sql();
    probe
        .send_query("INSERT INTO tally (id, client) VALUES (-1, -1)")
        .expect("send the probe");
    cluster.wait_for_sync_rep_waiters(clients as usize + 1);
    let blocked_at = tally.committed();
    assert_eq!(
        probe.finish_query(BLOCKED_WINDOW),
        Err(SqlError::Timeout),
        "a commit finished without the proposer"
    );
    assert_eq!(
        tally.committed(),
        blocked_at,
        "commits finished without the proposer"
    );

    cluster.restart("proposer");
    probe
        .finish_query(RECOVERY_TIMEOUT)
        .expect("the waiting commit completes with the new proposer");
    tally.wait_for_commits(blocked_at, COMMITS_AFTER_RECOVERY, RECOVERY_TIMEOUT);
    cluster.assert_proposer_is_sync_standby();

    let log = tally.finish();
    assert!(
        log.unknown.is_empty(),
        "commits timed out: {:?}",
        log.unknown
    );
    assert_tally(&cluster, &log, &[-1]);
    cluster.wait_until_safekeepers_agree_at(cluster.postgres_flush_lsn());
    for id in 1..=3 {
        let status = cluster.safekeeper_status(id).expect("status");
        assert!(status.term > term_before, "safekeeper-{id}: {status:?}");
        let last = status.term_history.0.last().expect("a term history");
        assert_eq!(last.term, status.term, "safekeeper-{id}: {status:?}");
        cluster.assert_wal_matches_postgres(id);
    }
}

/// How a test damages the tail of a safekeeper's newest segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    /// Pseudo-random bytes from the cut to the end of the segment file.
    Garbage,
    /// The file truncated at the cut, then (after the safekeeper refused to start on
    /// it) extended back to full size, i.e. zeros from the cut on.
    TruncatedThenZeroed,
}

/// A safekeeper SIGKILLed under load whose newest segment is then cut inside a record
/// (above the control file's recovery hint, where a crash can leave a torn write):
/// on restart it recovers exactly to the end of the last complete record before the
/// cut, erases the rest, and then re-syncs with the others to Postgres's exact WAL.
#[test]
fn a_safekeeper_with_a_torn_last_segment_recovers_to_the_last_complete_record() {
    let mut cluster = Cluster::start("waltorn");
    let tally = Tally::start(&cluster, 3, QUORUM_COMMIT_TIMEOUT);
    tally.wait_for_commits(0, COMMITS_BEFORE_FAULT, RECOVERY_TIMEOUT);

    for (id, damage) in [(1, Damage::Garbage), (2, Damage::TruncatedThenZeroed)] {
        let name = format!("safekeeper-{id}");
        let (cut, expected_end) = kill_and_cut(&mut cluster, id, damage);

        // Started on a port the proposer does not know, its recovered state is
        // visible before anyone re-syncs it.
        let recovered = recovered_flush_lsn(&cluster, id);
        assert!(
            recovered <= cut,
            "{name}: recovered to {recovered}, past the cut at {cut}"
        );
        assert_eq!(
            recovered, expected_end,
            "{name}: recovers to the end of the last complete record before the cut at {cut}"
        );
        let tail_len = (SEGMENT_SIZE_BYTES - recovered.segment_offset(SEGMENT_SIZE_BYTES)) as usize;
        let tail = read_wal(&cluster.safekeeper_timeline_dir(id), recovered, tail_len)
            .expect("read the recovered segment");
        assert!(
            tail.iter().all(|byte| *byte == 0),
            "{name}: the torn tail after {recovered} is erased"
        );

        let others = cluster.highest_flush_lsn();
        cluster.restart(&name);
        let at_restart = tally.committed();
        cluster.wait_until_safekeeper_reaches(id, others);
        tally.wait_for_commits(at_restart, COMMITS_AFTER_RECOVERY, RECOVERY_TIMEOUT);
    }

    let log = tally.finish();
    assert!(
        log.unknown.is_empty(),
        "commits timed out: {:?}",
        log.unknown
    );
    assert_tally(&cluster, &log, &[]);
    cluster.wait_until_safekeepers_agree_at(cluster.postgres_flush_lsn());
    for id in 1..=3 {
        cluster.assert_wal_matches_postgres(id);
    }
}

/// Attempts at finding a torn-write candidate; an attempt fails only if the kill
/// landed right after a control-file checkpoint with no record written since.
const MAX_CUT_ATTEMPTS: usize = 3;

/// SIGKILLs safekeeper `id` while the tally writes, then damages its newest segment
/// from a cut inside a record above the recovery hint. Returns the cut and the end
/// of the last complete record before it.
fn kill_and_cut(cluster: &mut Cluster, id: usize, damage: Damage) -> (Lsn, Lsn) {
    let name = format!("safekeeper-{id}");
    let dir = cluster.safekeeper_timeline_dir(id);
    let mut attempt = 0;
    let (records, hint, record_start, record_end) = loop {
        attempt += 1;
        cluster.kill(&name);
        let control = ControlState::load(&dir)
            .unwrap_or_else(|error| panic!("{name}: {error}"))
            .unwrap_or_else(|| panic!("{name} has no control file"));
        let hint = control.flush_lsn_hint;
        let records = scan_records(&dir, control.timeline_start_lsn, cluster.stream_params());
        if let Some((start, end)) = torn_write_candidate(&records, hint) {
            break (records, hint, start, end);
        }
        assert!(
            attempt < MAX_CUT_ATTEMPTS,
            "{name}: no record above the recovery hint {hint} in {attempt} attempts"
        );
        eprintln!("{name}: no record above the recovery hint {hint}; killing it again later");
        let others = cluster.highest_flush_lsn();
        cluster.restart(&name);
        cluster.wait_until_safekeeper_reaches(id, others);
    };
    assert!(
        record_end.0 - record_start.0 >= 16,
        "records are at least 24 bytes"
    );
    let cut = Lsn(record_start.0 + (record_end.0 - record_start.0) / 2);
    let expected_end = records
        .iter()
        .map(|(_, end)| *end)
        .filter(|end| *end <= cut)
        .max()
        .expect("a record before the cut");
    assert!(expected_end < cut, "the cut is inside a record");
    eprintln!(
        "{name}: {} records, recovery hint {hint}, cut at {cut} inside the record {record_start}..{record_end} ({damage:?})",
        records.len()
    );

    let path = segment_path(&dir, cut.segment_number(SEGMENT_SIZE_BYTES));
    let offset = cut.segment_offset(SEGMENT_SIZE_BYTES);
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    match damage {
        Damage::Garbage => {
            let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ offset;
            let garbage: Vec<u8> = (offset..SEGMENT_SIZE_BYTES)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            file.write_all_at(&garbage, offset).expect("write garbage");
        }
        Damage::TruncatedThenZeroed => {
            file.set_len(offset).expect("truncate");
            let refused = start_spare_safekeeper(cluster, id);
            let output = wait_for_exit(refused);
            assert!(!output.0.success(), "{name} started on a truncated segment");
            // A segment shorter than its preallocated size was cut behind the
            // safekeeper's back: it refuses to start, naming the file.
            for expected in [
                path.display().to_string(),
                format!(
                    "segment file is {offset} bytes, expected segment_size_bytes {SEGMENT_SIZE_BYTES}"
                ),
            ] {
                assert!(
                    output.1.contains(&expected),
                    "{name}: the refusal names the short segment ({expected}):\n{}",
                    output.1
                );
            }
            file.set_len(SEGMENT_SIZE_BYTES).expect("extend with zeros");
        }
    }
    file.sync_all().expect("sync the damaged segment");
    (cut, expected_end)
}

/// The record to cut in two: the one holding a point a few hundred bytes before the
/// end of WAL, or failing that the first one in the newest segment, as long as it
/// starts at or above the control file's recovery hint `hint` (below it the WAL was
/// known durable when the hint was written, so a cut there is not a torn write but
/// damage to acknowledged WAL, which recovery does not scan).
fn torn_write_candidate(records: &[(Lsn, Lsn)], hint: Lsn) -> Option<(Lsn, Lsn)> {
    let &(_, end) = records.last()?;
    let newest_segment = Lsn(end.0 - 1).segment_number(SEGMENT_SIZE_BYTES);
    let candidates: Vec<(Lsn, Lsn)> = records
        .iter()
        .filter(|(start, _)| {
            *start >= hint && start.segment_number(SEGMENT_SIZE_BYTES) == newest_segment
        })
        .copied()
        .collect();
    let target = Lsn(end.0.saturating_sub(300));
    candidates
        .iter()
        .rev()
        .find(|(start, _)| *start <= target)
        .or(candidates.first())
        .copied()
}

/// Runs safekeeper `id` from its directory on a spare port, so no proposer finds it.
fn start_spare_safekeeper(cluster: &Cluster, id: usize) -> (OwnedChild, SocketAddr, PathBuf) {
    let port = free_port();
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let log = cluster
        .dir
        .join(format!("spare-safekeeper-{id}-{port}.log"));
    let child = spawn_tarn(
        "spare safekeeper",
        &[
            "safekeeper",
            "--id",
            &id.to_string(),
            "--listen",
            &addr.to_string(),
            "--dir",
            cluster
                .layout
                .safekeeper_dir(id)
                .to_str()
                .expect("UTF-8 path"),
        ],
        &log,
    );
    (child, addr, log)
}

/// Waits for a spare safekeeper that must fail to start; returns its status and log.
fn wait_for_exit(spare: (OwnedChild, SocketAddr, PathBuf)) -> (std::process::ExitStatus, String) {
    let (mut child, _, log) = spare;
    let status = wait_for("the safekeeper to refuse to start", PROCESS_TIMEOUT, || {
        child.try_exit_status()
    });
    (status, fs::read_to_string(log).unwrap_or_default())
}

/// The flush LSN safekeeper `id` recovers to, seen from a run on a spare port (stopped
/// again before returning).
fn recovered_flush_lsn(cluster: &Cluster, id: usize) -> Lsn {
    let (mut child, addr, log) = start_spare_safekeeper(cluster, id);
    let status = wait_for("the spare safekeeper to answer", PROCESS_TIMEOUT, || {
        if let Some(exit) = child.try_exit_status() {
            panic!(
                "safekeeper-{id} exited ({exit}):\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        timeline_status_at(addr, &cluster.manifest)
    });
    child.stop();
    assert!(status.term >= Term(1), "{status:?}");
    status.flush_lsn
}
