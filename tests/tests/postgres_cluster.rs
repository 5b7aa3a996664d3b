//! `tarn_server::postgres` against a real PostgreSQL 15: initdb, settings, start on a
//! chosen port, psql and pgbench, stop, reopen, and the errors a user sees.

use std::fs;
use std::net::TcpListener;

use tarn_tests::{PgCluster, PostgresError, StopMode, TempDir, free_port, pg};

#[test]
fn a_cluster_inits_starts_answers_queries_runs_pgbench_and_stops() {
    let dir = TempDir::new("pg");
    let bins = pg();
    let data_dir = dir.join("data");
    let mut cluster = PgCluster::init(&bins, &data_dir).expect("initdb");
    cluster
        .set_settings(&[
            ("max_connections", "20"),
            ("application_name", "tarn's test"),
        ])
        .expect("settings");
    let port = free_port();
    cluster.start(port).expect("start");
    assert!(cluster.is_running());
    let pid = cluster.postmaster_pid().expect("postmaster pid");
    assert_eq!(cluster.port(), port);
    assert_eq!(
        cluster.connstring(),
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
    );

    assert_eq!(cluster.psql("SHOW max_connections").expect("show"), "20");
    assert_eq!(cluster.psql("SHOW application_name").expect("show"), "psql");
    assert_eq!(cluster.psql("SHOW fsync").expect("show"), "on");
    let script = "CREATE TABLE t (id int PRIMARY KEY, v text);
                  INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;
                  SELECT count(*), max(id) FROM t";
    assert_eq!(cluster.psql(script).expect("script"), "100|100");
    cluster
        .psql("CREATE DATABASE other")
        .expect("create database");
    assert_eq!(
        cluster
            .psql_db("other", "SELECT current_database()")
            .expect("other db"),
        "other"
    );

    let error = cluster
        .psql("SELECT 1; SELECT * FROM no_such_table; SELECT 2")
        .expect_err("a missing table is an error");
    let message = error.to_string();
    assert!(
        message.contains("no_such_table") && message.contains("does not exist"),
        "{message}"
    );

    let system_id = cluster.system_id().expect("system id");
    assert_ne!(system_id, 0);
    assert_eq!(cluster.system_id().expect("system id again"), system_id);

    cluster
        .pgbench(&["-i", "-s", "1", "-q"])
        .expect("pgbench -i");
    let run = cluster
        .pgbench(&["-c", "2", "-T", "2"])
        .expect("pgbench run");
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(report.contains("tps = "), "{report}");

    cluster.stop(StopMode::Fast).expect("stop");
    assert!(!cluster.is_running());
    assert_eq!(cluster.postmaster_pid(), None);
    assert!(!process_exists(pid));
    cluster
        .stop(StopMode::Fast)
        .expect("stopping a stopped cluster succeeds");
    let log = fs::read_to_string(cluster.log_path()).expect("server log");
    assert!(log.contains("database system is shut down"), "{log}");

    // Reopened, it remembers its port and keeps its data; dropping the handle that
    // started it stops it.
    drop(cluster);
    let mut reopened = PgCluster::open(&bins, &data_dir).expect("open");
    assert_eq!(reopened.port(), port);
    assert_eq!(reopened.system_id().expect("system id"), system_id);
    reopened.start(port).expect("restart");
    assert_eq!(
        reopened.psql("SELECT count(*) FROM t").expect("count"),
        "100"
    );
    let pid = reopened.postmaster_pid().expect("pid");
    drop(reopened);
    let observer = PgCluster::open(&bins, &data_dir).expect("open");
    assert!(
        !observer.is_running(),
        "dropping the handle stops the server"
    );
    assert!(!process_exists(pid));
}

#[test]
fn start_names_a_port_that_is_in_use() {
    let dir = TempDir::new("pgport");
    let port = free_port();
    let _listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let mut cluster = PgCluster::init(&pg(), &dir.join("data")).expect("initdb");
    let error = cluster.start(port).expect_err("port is taken");
    assert!(
        matches!(error, PostgresError::PortInUse { port: p } if p == port),
        "{error:?}"
    );
    assert_eq!(error.to_string(), format!("port {port} is in use"));
    assert!(!cluster.is_running());
}

#[test]
fn open_refuses_what_is_not_a_postgres_15_data_directory() {
    let dir = TempDir::new("pgopen");
    let error = PgCluster::open(&pg(), dir.path()).expect_err("empty directory");
    assert!(
        matches!(error, PostgresError::NotADataDirectory { .. }),
        "{error:?}"
    );

    fs::write(dir.join("PG_VERSION"), "14\n").expect("write PG_VERSION");
    let error = PgCluster::open(&pg(), dir.path()).expect_err("wrong version");
    assert!(error.to_string().contains("PostgreSQL 14"), "{error}");
}

#[test]
fn settings_are_validated_and_replaced_as_a_whole() {
    let dir = TempDir::new("pgset");
    let cluster = PgCluster::init(&pg(), &dir.join("data")).expect("initdb");
    assert!(cluster.set_settings(&[("Bad Name", "1")]).is_err());
    assert!(
        cluster
            .set_settings(&[("work_mem", "1\nfsync = off")])
            .is_err()
    );
    cluster
        .set_settings(&[("work_mem", "8MB")])
        .expect("first settings");
    cluster
        .set_settings(&[("maintenance_work_mem", "64MB")])
        .expect("second settings");
    let conf = fs::read_to_string(cluster.data_dir().join("tarn.conf")).expect("tarn.conf");
    assert!(conf.contains("maintenance_work_mem = '64MB'"), "{conf}");
    assert!(!conf.contains("work_mem = '8MB'"), "{conf}");
}

/// True if `pid` is a live process (a zombie waiting for init to reap it is not).
fn process_exists(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}
