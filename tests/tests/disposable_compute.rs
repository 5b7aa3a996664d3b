//! The primary compute is disposable: `tarn up` runs Postgres with `fsync=off` and
//! `full_page_writes=off`. While pgbench and tally clients commit through it, the
//! postmaster is killed with SIGKILL and its data directory deleted. `tarn endpoint
//! start main` then boots a fresh Postgres from the pageserver at the end of the quorum's
//! WAL: every acknowledged commit is there (and nothing nobody committed), pgbench's
//! balances add up, `amcheck` and `pg_visibility` find no corruption, the boot did no
//! WAL replay, and pgbench goes on. A restarted `tarn up` rebuilds its compute the
//! same way and still holds everything.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tarn_tests::sql::{SqlConnection, SqlError};
use tarn_tests::{TarnUp, TempDir, free_port, free_port_range, pg, psql_at, run_tarn, wait_for};

const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
const CLIENTS: i64 = 3;
/// Commits acknowledged before the crash.
const COMMITS_BEFORE_CRASH: u64 = 300;

/// Clients inserting `tally` rows; each knows which of its inserts were acknowledged.
struct Tally {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    clients: Vec<JoinHandle<(Vec<i64>, Vec<i64>)>>,
}

impl Tally {
    fn start(port: u16) -> Tally {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let clients = (0..CLIENTS)
            .map(|client| {
                let (stop, committed) = (stop.clone(), committed.clone());
                thread::spawn(move || {
                    let (mut acked, mut unknown) = (Vec::new(), Vec::new());
                    let Ok(mut sql) = SqlConnection::connect(port, "tally", QUERY_TIMEOUT) else {
                        return (acked, unknown);
                    };
                    for sequence in 1.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let id = client + CLIENTS * sequence;
                        let insert = format!("INSERT INTO tally VALUES ({id}, {client})");
                        match sql.query(&insert, QUERY_TIMEOUT) {
                            Ok(_) => {
                                acked.push(id);
                                committed.fetch_add(1, Ordering::Relaxed);
                            }
                            // The server went away: the commit may or may not have
                            // happened.
                            Err(SqlError::Server(_)) | Err(_) => {
                                unknown.push(id);
                                break;
                            }
                        }
                    }
                    (acked, unknown)
                })
            })
            .collect();
        Tally {
            stop,
            committed,
            clients,
        }
    }

    fn finish(mut self) -> (BTreeSet<i64>, BTreeSet<i64>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut acked, mut unknown) = (BTreeSet::new(), BTreeSet::new());
        for client in self.clients.drain(..) {
            let (a, u) = client.join().expect("tally client");
            acked.extend(a);
            unknown.extend(u);
        }
        (acked, unknown)
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pgbench(port: u16, args: &[&str]) -> Command {
    let mut command = Command::new(pg().tool("pgbench"));
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// What every check of a rebuilt compute asserts.
fn check_compute(port: u16, acked: &BTreeSet<i64>, unknown: &BTreeSet<i64>) {
    let present: BTreeSet<i64> = psql_at(port, "SELECT id FROM tally ORDER BY id")
        .lines()
        .map(|line| line.parse().expect("an id"))
        .collect();
    let lost: Vec<&i64> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );
    let phantom: Vec<&i64> = present
        .iter()
        .filter(|id| !acked.contains(id) && !unknown.contains(id))
        .collect();
    assert!(phantom.is_empty(), "rows nobody committed: {phantom:?}");
    // Every pgbench transaction moves the same delta into all four tables.
    let sums = psql_at(
        port,
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches), \
         (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let sums: Vec<&str> = sums.split('|').collect();
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "pgbench balances disagree: {sums:?}"
    );
    psql_at(port, "CREATE EXTENSION IF NOT EXISTS amcheck");
    psql_at(port, "CREATE EXTENSION IF NOT EXISTS pg_visibility");
    let checked = psql_at(
        port,
        "SELECT count(bt_index_check(c.oid, true)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_am am ON am.oid = c.relam WHERE am.amname = 'btree' AND c.relpersistence = 'p'",
    );
    assert!(
        checked.parse::<u32>().expect("a count") > 10,
        "{checked} indexes checked"
    );
    let bad = psql_at(
        port,
        "SELECT count(*) FROM pg_class c, LATERAL (SELECT * FROM pg_check_visible(c.oid) \
         UNION ALL SELECT * FROM pg_check_frozen(c.oid)) t WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p'",
    );
    assert_eq!(bad, "0", "pg_visibility found corrupt visibility map bits");
}

#[test]
fn a_killed_compute_with_its_data_directory_deleted_loses_no_acknowledged_commit() {
    let dir = TempDir::new("disposable");
    let port = free_port_range(5);
    let cluster_dir = dir.join("cluster");
    let cluster = cluster_dir.to_string_lossy().into_owned();
    let up = TarnUp::start(&cluster_dir, &["--port", &port.to_string()])
        .unwrap_or_else(|e| panic!("tarn up: {e}"));
    assert_eq!(psql_at(port, "SHOW fsync"), "off");
    assert_eq!(psql_at(port, "SHOW full_page_writes"), "off");
    psql_at(
        port,
        "CREATE TABLE tally (id bigint PRIMARY KEY, client int)",
    );
    let init = pgbench(port, &["-i", "-s", "2", "-q"])
        .status()
        .expect("pgbench -i");
    assert!(init.success());

    let tally = Tally::start(port);
    let mut load: Child = pgbench(port, &["-n", "-c", "2", "-T", "600"])
        .spawn()
        .expect("pgbench");
    wait_for("commits before the crash", QUERY_TIMEOUT, || {
        (tally.committed.load(Ordering::Relaxed) >= COMMITS_BEFORE_CRASH).then_some(())
    });
    let postmaster = up
        .manifest()
        .component("postgres")
        .and_then(|c| c.pid)
        .expect("postmaster pid");
    tarn_tests::send_signal(postmaster, libc::SIGKILL);
    std::fs::remove_dir_all(up.layout().postgres_data_dir()).expect("delete the data directory");
    let (acked, unknown) = tally.finish();
    let _ = tarn_tests::wait_child(&mut load, QUERY_TIMEOUT);
    let _ = load.kill();
    let _ = load.wait();
    assert!(acked.len() as u64 >= COMMITS_BEFORE_CRASH);

    let endpoint_port = free_port();
    let started = run_tarn(&[
        "endpoint",
        "start",
        "main",
        "--port",
        &endpoint_port.to_string(),
        "--dir",
        &cluster,
    ]);
    let stop_endpoint = || {
        let _ = run_tarn(&["endpoint", "stop", "main", "--dir", &cluster]);
    };
    if !started.status.success() {
        stop_endpoint();
        panic!(
            "endpoint start main: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }
    let log_path = cluster_dir.join("endpoints/main/pgdata/log/postgres.log");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("database system was shut down at"), "{log}");
    assert!(!log.contains("redo starts at"), "{log}");
    check_compute(endpoint_port, &acked, &unknown);
    // pgbench goes on on the new compute.
    let more = pgbench(endpoint_port, &["-n", "-c", "2", "-t", "200"])
        .status()
        .expect("pgbench on the new compute");
    assert!(more.success());
    psql_at(endpoint_port, "INSERT INTO tally VALUES (-1, -1)");
    stop_endpoint();
    drop(up);

    // tarn up rebuilds its own compute from the pageserver on restart.
    let again = TarnUp::start(&cluster_dir, &["--port", &port.to_string()])
        .unwrap_or_else(|e| panic!("second tarn up: {e}"));
    let mut extra = unknown.clone();
    extra.insert(-1);
    check_compute(port, &acked, &extra);
    assert_eq!(
        psql_at(port, "SELECT count(*) FROM tally WHERE id = -1"),
        "1"
    );
    assert!(again.stop().success());
}
