//! Reading what a PostgreSQL 15 cluster left on disk, shared by the tests that compare
//! tarn against it: `pg_controldata` and `pg_waldump` output, WAL segment listings,
//! relation files in a data directory, and descriptions of how two pages differ.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::{Command, Output};

use tarn_pages::ingest::GLOBALTABLESPACE_OID;
use tarn_pages::{BLCKSZ, Page, RedoSettings};
use tarn_server::postgres::{PgBinaries, PgCluster};
use tarn_wal::decode::{ForkNumber, RelFileNode};
use tarn_wal::format::WalStreamParams;
use tarn_wal::format::parse_segment_file_name;
use tarn_wal::{Lsn, SystemId};

use crate::{TempDir, free_port, pg};

/// Blocks per relation segment file (RELSEG_SIZE).
pub const RELSEG_BLOCKS: u32 = 131_072;

/// Settings that keep every WAL segment (no removal or recycling at checkpoints) and
/// leave out timed checkpoints in the middle of a workload.
const KEEP_WAL_SETTINGS: [(&str, &str); 4] = [
    ("wal_keep_size", "1GB"),
    ("max_wal_size", "1GB"),
    ("checkpoint_timeout", "1h"),
    ("fsync", "off"),
];

/// A fresh cluster in `dir/data` that keeps all of its WAL, with `extra` settings after
/// those, started on a free port.
pub fn start_wal_keeping_cluster(dir: &TempDir, extra: &[(&str, &str)]) -> (PgBinaries, PgCluster) {
    let bins = pg();
    let mut cluster = PgCluster::init(&bins, &dir.join("data")).expect("initdb");
    let settings: Vec<(&str, &str)> = KEEP_WAL_SETTINGS.iter().chain(extra).copied().collect();
    cluster.set_settings(&settings).expect("settings");
    cluster.start(free_port()).expect("start");
    (bins, cluster)
}

/// Runs `pg_controldata -D data_dir` (in the C locale).
pub fn run_pg_controldata(tool: &Path, data_dir: &Path) -> Output {
    Command::new(tool)
        .arg("-D")
        .arg(data_dir)
        .env("LC_ALL", "C")
        .output()
        .expect("run pg_controldata")
}

/// `pg_controldata` output's "name: value" lines as a map.
pub fn parse_controldata(stdout: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// `pg_controldata` as a map of its "name: value" lines.
pub fn pg_controldata(tool: &Path, data_dir: &Path) -> BTreeMap<String, String> {
    let output = run_pg_controldata(tool, data_dir);
    assert!(output.status.success(), "pg_controldata failed: {output:?}");
    parse_controldata(&output.stdout)
}

/// The standard output of `pg_waldump -p wal_dir -s start` followed by `extra`. It reads
/// until the end of WAL, then exits with an error describing where WAL ends, which is
/// expected.
pub fn pg_waldump_output(tool: &Path, wal_dir: &Path, start: Lsn, extra: &[&str]) -> String {
    let output = Command::new(tool)
        .arg("-p")
        .arg(wal_dir)
        .arg("-s")
        .arg(start.to_string())
        .args(extra)
        .env("LC_ALL", "C")
        .output()
        .expect("run pg_waldump");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error in WAL record") || output.status.success(),
        "pg_waldump: {stderr}"
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The lowest-numbered segment of `timeline` in `pg_wal`.
pub fn first_segment_of_timeline(wal_dir: &Path, segment_size_bytes: u64, timeline: u32) -> u64 {
    fs::read_dir(wal_dir)
        .expect("list pg_wal")
        .filter_map(|entry| {
            let name = entry.expect("pg_wal entry").file_name();
            parse_segment_file_name(name.to_str()?, segment_size_bytes).ok()
        })
        .filter(|name| name.timeline == timeline)
        .map(|name| name.segno)
        .min()
        .expect("pg_wal holds segments")
}

/// Copies a directory tree (regular files and directories).
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if entry.file_type()?.is_file() {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The file holding block `blk` of `rel`'s `fork` in a data directory (or a copy of its
/// base/ and global/): global/ for the global tablespace, base/<db>/ otherwise.
pub fn relation_path(data_dir: &Path, rel: RelFileNode, fork: ForkNumber, blk: u32) -> PathBuf {
    let dir = match rel.spc_node {
        GLOBALTABLESPACE_OID => data_dir.join("global"),
        _ => data_dir.join("base").join(rel.db_node.to_string()),
    };
    let suffix = match fork {
        ForkNumber::Main => "",
        ForkNumber::Fsm => "_fsm",
        ForkNumber::VisibilityMap => "_vm",
        ForkNumber::Init => "_init",
    };
    let segment = blk / RELSEG_BLOCKS;
    if segment == 0 {
        dir.join(format!("{}{suffix}", rel.rel_node))
    } else {
        dir.join(format!("{}{suffix}.{segment}", rel.rel_node))
    }
}

/// Block `blk` of `rel`'s `fork` from a data directory: `None` if the file ends before
/// the block does; an error if the file cannot be opened.
pub fn read_block(
    data_dir: &Path,
    rel: RelFileNode,
    fork: ForkNumber,
    blk: u32,
) -> io::Result<Option<Page>> {
    let file = File::open(relation_path(data_dir, rel, fork, blk))?;
    let mut buf = vec![0u8; BLCKSZ];
    let offset = u64::from(blk % RELSEG_BLOCKS) * BLCKSZ as u64;
    let mut filled = 0;
    while filled < BLCKSZ {
        match file.read_at(&mut buf[filled..], offset + filled as u64)? {
            0 => return Ok(None),
            n => filled += n,
        }
    }
    Ok(Page::from_bytes(&buf))
}

/// How [`describe_diff`] names the two pages and how much of them it shows.
pub struct DiffFormat {
    /// The pages' names in the header (page headers of each).
    pub names: (&'static str, &'static str),
    /// The pages' names in each differing run.
    pub run_names: (&'static str, &'static str),
    /// Differing runs shown.
    pub max_runs: usize,
    /// Bytes shown of each run, at most.
    pub run_bytes: usize,
}

/// Differing byte runs of two pages, with offsets: the first `format.max_runs`.
pub fn describe_diff(left: &Page, right: &Page, format: &DiffFormat) -> String {
    let (a, b) = (left.as_bytes(), right.as_bytes());
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while at < BLCKSZ {
        if a[at] != b[at] {
            let start = at;
            while at < BLCKSZ && a[at] != b[at] {
                at += 1;
            }
            runs.push((start, at));
        } else {
            at += 1;
        }
    }
    let total: usize = runs.iter().map(|(s, e)| e - s).sum();
    let (left_name, right_name) = format.names;
    let mut out = format!(
        "{total} bytes differ in {} runs ({left_name} lower {} upper {} flags {:#x}; {right_name} lower {} upper {} flags {:#x})",
        runs.len(),
        left.lower(),
        left.upper(),
        left.flags(),
        right.lower(),
        right.upper(),
        right.flags()
    );
    let (left_run, right_run) = format.run_names;
    for (start, end) in runs.iter().take(format.max_runs) {
        let shown = (*end).min(start + format.run_bytes);
        let _ = write!(
            out,
            "; @{start}..{end}: {left_run} {:02x?} {right_run} {:02x?}",
            &a[*start..shown],
            &b[*start..shown]
        );
    }
    out
}

/// The redo settings a cluster runs with, from its `pg_controldata` output.
pub fn redo_settings(control: &BTreeMap<String, String>) -> RedoSettings {
    RedoSettings {
        data_checksums: control["Data page checksum version"] != "0",
        wal_log_hints: control["wal_log_hints setting"] == "on",
    }
}

/// The WAL stream parameters (segment size, system id) of a cluster, from its
/// `pg_controldata` output.
pub fn wal_stream_params(control: &BTreeMap<String, String>) -> WalStreamParams {
    let segment_size_bytes: u64 = control["Bytes per WAL segment"]
        .parse()
        .expect("segment size");
    let system_id: u64 = control["Database system identifier"]
        .parse()
        .expect("system id");
    WalStreamParams::new(segment_size_bytes, Some(SystemId(system_id))).expect("stream params")
}

/// Runs a server-side tool (pg_resetwal, pg_checksums, ...) as the owner of the data
/// directories: `postgres` when we are root (those tools refuse root, or would leave
/// root-owned files), else ourselves.
pub fn run_as_owner(tool: &Path, args: &[&str]) -> Output {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(tool);
        command
    } else {
        Command::new(tool)
    };
    command
        .args(args)
        .env("LC_ALL", "C")
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()))
}
