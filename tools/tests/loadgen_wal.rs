//! `tarn loadgen wal` against three real `tarn safekeeper` processes: the load reaches
//! a majority, every safekeeper ends up holding all of it, and bad input is a one-line
//! error.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use tarn_tests::{TempDir, free_port, run_tarn, tarn_binary, terminate, wait_for};
use tarn_wal::safekeeper::query_status;
use tarn_wal::{Lsn, TimelineId};

/// Bound on a safekeeper starting to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the last safekeeper reporting the flush a majority already acknowledged.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one status query.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Grace between SIGTERM and SIGKILL when stopping a safekeeper.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Three safekeepers on free ports; stopped when dropped.
struct Safekeepers {
    children: Vec<Child>,
    addrs: Vec<SocketAddr>,
}

impl Safekeepers {
    fn start(dir: &TempDir) -> Safekeepers {
        let mut set = Safekeepers {
            children: Vec::new(),
            addrs: Vec::new(),
        };
        for id in 1..=3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = File::create(dir.join(format!("sk{id}.log"))).expect("create log");
            let log_err = log.try_clone().expect("clone log");
            let child = Command::new(tarn_binary())
                .args(["safekeeper", "--id", &id.to_string(), "--listen"])
                .arg(addr.to_string())
                .arg("--dir")
                .arg(dir.join(format!("sk{id}")))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .expect("spawn tarn safekeeper");
            set.children.push(child);
            set.addrs.push(addr);
        }
        for addr in &set.addrs {
            wait_for(
                &format!("safekeeper at {addr} to listen"),
                LISTEN_TIMEOUT,
                || TcpStream::connect_timeout(addr, Duration::from_millis(200)).ok(),
            );
        }
        set
    }

    fn list(&self) -> String {
        self.addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Safekeepers {
    fn drop(&mut self) {
        for child in &mut self.children {
            terminate(child, STOP_GRACE);
        }
    }
}

fn loadgen(args: &[&str]) -> std::process::Output {
    let mut all = vec!["loadgen", "wal"];
    all.extend_from_slice(args);
    run_tarn(&all)
}

#[test]
fn loadgen_appends_reach_every_safekeeper() {
    let dir = TempDir::new("loadgen");
    let safekeepers = Safekeepers::start(&dir);
    let list = safekeepers.list();
    let timeline = "0123456789abcdef0123456789abcdef";
    let out = loadgen(&[
        "--safekeepers",
        &list,
        "--duration",
        "1",
        "--warmup",
        "0",
        "--record-size",
        "8k",
        "--in-flight",
        "4",
        "--timeline-id",
        timeline,
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen failed: {stderr}\nstdout: {stdout}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    let appends = report["appends"].as_u64().expect("appends");
    assert!(appends > 0, "no appends completed: {report}");
    assert!(report["latency"]["p50_us"].as_f64().expect("p50") > 0.0);
    assert_eq!(report["latency"]["count"].as_u64(), Some(appends));
    let stream = &report["timelines"][0];
    assert_eq!(stream["timeline_id"].as_str(), Some(timeline));
    let end = Lsn::from_str(stream["end_lsn"].as_str().expect("end_lsn")).expect("an LSN");
    let start = Lsn::from_str(stream["start_lsn"].as_str().expect("start_lsn")).expect("an LSN");
    assert!(end > start, "no WAL generated: {report}");

    let timeline_id = TimelineId::from_str(timeline).expect("timeline id");
    for addr in &safekeepers.addrs {
        let flush = wait_for(
            &format!("safekeeper {addr} to flush up to {end}"),
            CATCH_UP_TIMEOUT,
            || {
                let status = query_status(*addr, STATUS_TIMEOUT).ok()?;
                let t = status
                    .timelines
                    .into_iter()
                    .find(|t| t.timeline_id == timeline_id)?;
                (t.flush_lsn >= end).then_some(t.flush_lsn)
            },
        );
        assert_eq!(flush, end, "safekeeper {addr} holds more WAL than was sent");
    }

    // The same timeline again is refused before any WAL is sent.
    let again = loadgen(&[
        "--safekeepers",
        &list,
        "--duration",
        "1",
        "--warmup",
        "0",
        "--timeline-id",
        timeline,
    ]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(stderr.contains("already holds WAL"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn unreachable_safekeeper_is_a_one_line_error() {
    let port = free_port();
    let out = loadgen(&[
        "--safekeepers",
        &format!("127.0.0.1:{port}"),
        "--duration",
        "1",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot connect to safekeeper 127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
