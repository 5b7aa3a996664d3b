//! The `tarn` command line, run as a user would: argument errors, the checks `tarn up`
//! makes before it starts anything, `tarn status`, and a whole cluster's life.
//!
//! Needs the binary: `cargo build --bin tarn` before `cargo test`.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use tarn_tests::{
    ClusterLayout, ClusterManifest, ComponentRecord, PgCluster, StopMode, TarnUp, TempDir,
    free_port_range, pg, run_tarn, wait_for,
};
use tarn_wal::TimelineId;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts `tarn` failed with exit code 1 and exactly one `error:` line, which is the last
/// line of stderr, and returns that line.
fn single_error_line(output: &Output) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{text}");
    let error_lines: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(error_lines.len(), 1, "stderr:\n{text}");
    assert_eq!(text.lines().last(), Some(error_lines[0]), "stderr:\n{text}");
    error_lines[0].to_string()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

#[test]
fn up_rejects_bad_arguments_before_touching_anything() {
    let dir = TempDir::new("cliargs");
    let cluster_dir = dir.join("cluster");
    let d = path_arg(&cluster_dir);
    let cases: &[(&[&str], &str)] = &[
        (&["up", "--dir", d, "--port", "notaport"], "notaport"),
        (&["up", "--dir", d, "--port", "0"], "--port"),
        (
            &["up", "--dir", d, "--safekeeper-ports", "7001,7002"],
            "expected 3 ports",
        ),
        (
            &["up", "--dir", d, "--safekeeper-ports", "7001,x,7003"],
            "\"x\" is not a port number",
        ),
        (&["up", "--dir", d, "--port", "65534"], "leaves no room"),
        (
            &[
                "up",
                "--dir",
                d,
                "--port",
                "7000",
                "--safekeeper-ports",
                "7001,7000,7003",
            ],
            "port 7000 is given to two components",
        ),
        (&["up", "--dir", d, "--no-such-flag"], "--no-such-flag"),
        (&["no-such-command"], "no-such-command"),
    ];
    for (args, expected) in cases {
        let output = run_tarn(args);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "tarn {args:?}: {text}");
        assert!(
            text.contains(expected),
            "tarn {args:?}: expected {expected:?} in:\n{text}"
        );
    }
    assert!(
        !cluster_dir.exists(),
        "argument errors must not create the directory"
    );
}

#[test]
fn up_names_the_port_that_is_in_use() {
    let dir = TempDir::new("cliport");
    let base = free_port_range(5);
    let cluster_dir = dir.join("cluster");
    let port_arg = base.to_string();
    let args = ["up", "--dir", path_arg(&cluster_dir), "--port", &port_arg];

    let postgres_port = TcpListener::bind(("127.0.0.1", base)).expect("bind");
    let line = single_error_line(&run_tarn(&args));
    assert_eq!(line, format!("error: port {base} (postgres) is in use"));
    drop(postgres_port);

    let safekeeper_port = TcpListener::bind(("127.0.0.1", base + 2)).expect("bind");
    let line = single_error_line(&run_tarn(&args));
    assert_eq!(
        line,
        format!("error: port {} (safekeeper-2) is in use", base + 2)
    );
    drop(safekeeper_port);

    assert!(
        !cluster_dir.join("postgres").exists(),
        "a busy port is found before initdb"
    );
}

/// A cluster directory holding an initdb'd `postgres/` and a `tarn.json` that records
/// `recorded_system_id`.
fn prepare_cluster_dir(
    layout: &ClusterLayout,
    recorded_system_id: Option<u64>,
    base: u16,
) -> PgCluster {
    let cluster = PgCluster::init(&pg(), &layout.postgres_data_dir()).expect("initdb");
    let system_id = cluster.system_id().expect("system id");
    let manifest = ClusterManifest {
        format_version: tarn_server::manifest::FORMAT_VERSION,
        system_id: recorded_system_id.unwrap_or(system_id),
        timeline_id: TimelineId(0xfeed),
        postgres_port: base,
        safekeeper_ports: vec![base + 1, base + 2, base + 3],
        pageserver_port: None,
        supervisor_pid: None,
        components: BTreeMap::new(),
    };
    manifest.write(layout).expect("write tarn.json");
    cluster
}

#[test]
fn up_refuses_a_data_directory_that_belongs_to_another_cluster() {
    let dir = TempDir::new("cliforeign");
    let layout = ClusterLayout::new(dir.join("cluster"));
    fs::create_dir_all(&layout.dir).expect("mkdir");
    let base = free_port_range(5);
    let mut cluster = prepare_cluster_dir(&layout, None, base);
    let actual = cluster.system_id().expect("system id");
    let port_arg = base.to_string();
    let args = ["up", "--dir", path_arg(&layout.dir), "--port", &port_arg];

    // A Postgres left running in the directory (tarn up was killed) is named, with the
    // command that stops it.
    cluster.start(base).expect("start");
    let pid = cluster.postmaster_pid().expect("pid");
    let line = single_error_line(&run_tarn(&args));
    assert!(
        line.contains(&format!(
            "still running in {}",
            layout.postgres_data_dir().display()
        )) && line.contains(&format!("(pid {pid})"))
            && line.contains("pg_ctl stop"),
        "{line}"
    );
    cluster.stop(StopMode::Fast).expect("stop");

    let expected = actual.wrapping_add(1);
    let mut manifest = ClusterManifest::read(&layout)
        .expect("read")
        .expect("present");
    manifest.system_id = expected;
    manifest.write(&layout).expect("rewrite tarn.json");
    let line = single_error_line(&run_tarn(&args));
    assert_eq!(
        line,
        format!(
            "error: data directory {} belongs to another cluster (system id {actual}, expected {expected})",
            layout.dir.display()
        )
    );
    assert!(!cluster.is_running(), "nothing was started");
}

#[test]
fn up_explains_an_incomplete_cluster_directory() {
    let dir = TempDir::new("clihalf");
    let base = free_port_range(5);
    let port_arg = base.to_string();

    // initdb ran but tarn.json was never written.
    let half = ClusterLayout::new(dir.join("half"));
    fs::create_dir_all(half.postgres_data_dir()).expect("mkdir");
    let line = single_error_line(&run_tarn(&[
        "up",
        "--dir",
        path_arg(&half.dir),
        "--port",
        &port_arg,
    ]));
    assert!(
        line.contains("remove") && line.contains("to start over"),
        "{line}"
    );

    // tarn.json is there but no pageserver was ever seeded: the compute cannot be
    // rebuilt (a cluster with one rebuilds a lost data directory from it).
    let orphan = ClusterLayout::new(dir.join("orphan"));
    fs::create_dir_all(&orphan.dir).expect("mkdir");
    ClusterManifest {
        format_version: tarn_server::manifest::FORMAT_VERSION,
        system_id: 1,
        timeline_id: TimelineId(1),
        postgres_port: base,
        safekeeper_ports: vec![base + 1, base + 2, base + 3],
        pageserver_port: None,
        supervisor_pid: None,
        components: BTreeMap::new(),
    }
    .write(&orphan)
    .expect("write tarn.json");
    let line = single_error_line(&run_tarn(&[
        "up",
        "--dir",
        path_arg(&orphan.dir),
        "--port",
        &port_arg,
    ]));
    assert!(line.contains("cannot be rebuilt"), "{line}");
}

#[test]
fn status_needs_a_cluster_directory() {
    let dir = TempDir::new("clinostatus");
    let line = single_error_line(&run_tarn(&["status", "--dir", path_arg(dir.path())]));
    assert!(line.contains("no tarn cluster in"), "{line}");
}

#[test]
fn status_reports_components_postgres_and_the_proposer_state() {
    let dir = TempDir::new("clistatus");
    let layout = ClusterLayout::new(dir.join("cluster"));
    fs::create_dir_all(&layout.dir).expect("mkdir");
    let base = free_port_range(5);
    let mut cluster = prepare_cluster_dir(&layout, None, base);
    let mut manifest = ClusterManifest::read(&layout)
        .expect("read")
        .expect("present");
    // This test process stands in for a live proposer; safekeeper-1 was stopped.
    manifest.components.insert(
        "proposer".into(),
        ComponentRecord {
            pid: Some(std::process::id()),
            argv: vec!["tarn".into(), "proposer".into()],
            log_path: layout.log_path("proposer"),
        },
    );
    manifest.components.insert(
        "safekeeper-1".into(),
        ComponentRecord {
            pid: None,
            argv: vec!["tarn".into(), "safekeeper".into()],
            log_path: layout.log_path("safekeeper-1"),
        },
    );
    manifest.write(&layout).expect("write tarn.json");
    fs::write(
        layout.proposer_state_file(),
        r#"{"term": 3, "commit_lsn": "0/16B3748"}"#,
    )
    .expect("write proposer.json");
    cluster.start(base).expect("start");

    let output = run_tarn(&["status", "--dir", path_arg(&layout.dir), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let status: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(status["system_id"], manifest.system_id);
    assert_eq!(status["timeline_id"], "0000000000000000000000000000feed");
    let components = status["components"].as_array().expect("components");
    let alive = |name: &str| {
        components
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {components:?}"))["alive"]
            .clone()
    };
    assert_eq!(alive("proposer"), true);
    assert_eq!(alive("safekeeper-1"), false);
    assert_eq!(status["postgres"]["running"], true);
    assert_eq!(status["postgres"]["replication"], serde_json::json!([]));
    assert_eq!(status["proposer_state"]["state"]["term"], 3);
    assert_eq!(status["safekeepers"].as_array().map(Vec::len), Some(3));

    let output = run_tarn(&["status", "--dir", path_arg(&layout.dir)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "no standby connected",
        "term: 3",
        "safekeeper-3",
        "commit_lsn",
    ] {
        assert!(table.contains(expected), "{expected:?} in:\n{table}");
    }

    cluster.stop(StopMode::Fast).expect("stop");
    let output = run_tarn(&["status", "--dir", path_arg(&layout.dir), "--json"]);
    let status: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(status["postgres"]["running"], false);
}

/// A whole cluster: up, a committed write, status, a safekeeper killed and restarted from
/// its recorded command line, a clean stop that leaves nothing running, and a second
/// `tarn up` on the same directory that finds the data again.
#[test]
fn up_runs_a_cluster_that_commits_restarts_and_stops_cleanly() {
    let dir = TempDir::new("cliup");
    let cluster_dir = dir.join("cluster");
    let d = path_arg(&cluster_dir);
    let base = free_port_range(5);
    let port_arg = base.to_string();
    let up = TarnUp::start(&cluster_dir, &["--port", &port_arg])
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        up.connect_line,
        format!("psql \"host=127.0.0.1 port={base} user=postgres\"")
    );
    let postgres = up.postgres();
    postgres
        .psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .expect("a commit acknowledged by the quorum");

    let manifest = up.manifest();
    assert_eq!(manifest.supervisor_pid, Some(up.pid()));
    let mut pids = Vec::new();
    for name in [
        "postgres",
        "proposer",
        "safekeeper-1",
        "safekeeper-2",
        "safekeeper-3",
    ] {
        let record = manifest
            .component(name)
            .unwrap_or_else(|| panic!("{name} recorded"));
        pids.push(record.pid.unwrap_or_else(|| panic!("{name} has a pid")));
    }

    let status = status_json(d);
    let replication = &status["postgres"]["replication"][0];
    assert_eq!(replication["application_name"], "tarn_proposer");
    assert_eq!(replication["sync_state"], "sync");
    for safekeeper in status["safekeepers"].as_array().expect("safekeepers") {
        assert!(
            safekeeper["status"]["term"].as_u64() >= Some(1),
            "{safekeeper}"
        );
    }

    // Kill a safekeeper: commits go on with 2 of 3. Restart it from tarn.json: it
    // catches up with the others.
    let safekeeper_pid = manifest
        .component("safekeeper-2")
        .and_then(|record| record.pid)
        .expect("pid");
    tarn_tests::send_signal(safekeeper_pid, libc::SIGKILL);
    postgres
        .psql("INSERT INTO t VALUES (2)")
        .expect("commit with 2 of 3");
    let mut restarted = up.respawn("safekeeper-2");
    postgres
        .psql("INSERT INTO t VALUES (3)")
        .expect("commit after restart");
    wait_for("safekeeper-2 to catch up", Duration::from_secs(30), || {
        let status = status_json(d);
        let flush = |index: usize| status["safekeepers"][index]["status"]["flush_lsn"].clone();
        (flush(1).is_string() && flush(1) == flush(0)).then_some(())
    });

    let exit = up.stop();
    assert!(exit.success(), "tarn up exits 0 on SIGTERM");
    assert!(!postgres.is_running());
    tarn_tests::terminate(&mut restarted, Duration::from_secs(10));
    for pid in pids {
        assert!(
            !process_is_running(pid),
            "pid {pid} still runs after tarn up stopped"
        );
    }
    let manifest = ClusterManifest::read(&ClusterLayout::new(&cluster_dir))
        .expect("read")
        .expect("present");
    assert_eq!(manifest.supervisor_pid, None);

    let again = TarnUp::start(&cluster_dir, &["--port", &port_arg])
        .unwrap_or_else(|error| panic!("second tarn up: {error}"));
    assert_eq!(
        again
            .postgres()
            .psql("SELECT count(*) FROM t")
            .expect("count"),
        "3"
    );
    assert!(again.stop().success());
}

fn status_json(dir: &str) -> serde_json::Value {
    let output = run_tarn(&["status", "--dir", dir, "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("tarn status --json prints one JSON object")
}

/// True if `pid` is a live process (a zombie waiting to be reaped is not).
fn process_is_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}
